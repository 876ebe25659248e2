//! Token-bucket arithmetic, exact and in integers.
//!
//! The level is kept in "token-nanoseconds": `tokens x refill_interval_ns`.
//! Refill then adds `elapsed_ns x refill_tokens` exactly, with no rounding
//! and no drift, however often the bucket is updated. A bucket holds at most
//! `capacity` tokens and starts full.

/// The parameters of one limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketParams {
    pub capacity: u64,
    pub refill_tokens: u64,
    pub refill_interval_ns: u64,
}

/// The state of one bucket as stored in shared data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketState {
    /// Tokens x `scale_ns`.
    pub level: u128,
    /// Time of the last refill (never moves backwards).
    pub last_ns: u64,
    /// The refill interval the level is scaled by (the limit's interval when
    /// it was written; a config change rescales it).
    pub scale_ns: u64,
}

/// The outcome of [`BucketState::take`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Take {
    pub allowed: bool,
    /// Whole tokens left after this request.
    pub remaining: u64,
    /// Nanoseconds until `cost` tokens are available (0 when allowed).
    pub retry_after_ns: u64,
    /// Nanoseconds until the bucket is full again.
    pub reset_ns: u64,
}

impl BucketParams {
    fn cap_level(&self) -> u128 {
        self.capacity as u128 * self.refill_interval_ns as u128
    }
    fn tokens_level(&self, n: u64) -> u128 {
        n as u128 * self.refill_interval_ns as u128
    }
    /// Nanoseconds for the refill to add `level` token-nanoseconds.
    fn ns_to_refill(&self, level: u128) -> u64 {
        let ns = level.div_ceil(self.refill_tokens.max(1) as u128);
        ns.min(u64::MAX as u128) as u64
    }
}

impl BucketState {
    /// A full bucket.
    pub fn full(p: &BucketParams, now_ns: u64) -> Self {
        BucketState {
            level: p.cap_level(),
            last_ns: now_ns,
            scale_ns: p.refill_interval_ns,
        }
    }

    /// Brings the state to `now_ns` under parameters `p`: rescales a level
    /// written under another interval, refills, clamps to capacity. A clock
    /// that went backwards adds nothing and keeps `last_ns`.
    pub fn refill(&mut self, p: &BucketParams, now_ns: u64) {
        if self.scale_ns != p.refill_interval_ns && self.scale_ns != 0 {
            self.level =
                self.level.saturating_mul(p.refill_interval_ns as u128) / self.scale_ns as u128;
            self.scale_ns = p.refill_interval_ns;
        }
        if now_ns > self.last_ns {
            let elapsed = (now_ns - self.last_ns) as u128;
            self.level = self
                .level
                .saturating_add(elapsed.saturating_mul(p.refill_tokens as u128));
            self.last_ns = now_ns;
        }
        self.level = self.level.min(p.cap_level());
    }

    /// Is the bucket full at `now_ns` (an idle bucket, free to reuse)?
    pub fn is_full(&self, p: &BucketParams, now_ns: u64) -> bool {
        let mut s = *self;
        s.refill(p, now_ns);
        s.level >= p.cap_level()
    }

    /// Fraction of capacity held at `now_ns`, in parts per million.
    pub fn fill_ppm(&self, p: &BucketParams, now_ns: u64) -> u64 {
        let mut s = *self;
        s.refill(p, now_ns);
        let cap = p.cap_level().max(1);
        (s.level.saturating_mul(1_000_000) / cap) as u64
    }

    /// Takes `cost` tokens if available.
    pub fn take(&mut self, p: &BucketParams, cost: u64, now_ns: u64) -> Take {
        self.refill(p, now_ns);
        let need = p.tokens_level(cost);
        let allowed = self.level >= need;
        let mut retry_after_ns = 0;
        if allowed {
            self.level -= need;
        } else {
            retry_after_ns = p.ns_to_refill(need - self.level);
        }
        Take {
            allowed,
            remaining: (self.level / p.refill_interval_ns.max(1) as u128) as u64,
            retry_after_ns,
            reset_ns: p.ns_to_refill(p.cap_level() - self.level),
        }
    }

    /// Gives back `cost` tokens (a later limit of the same request refused it).
    pub fn refund(&mut self, p: &BucketParams, cost: u64, now_ns: u64) {
        self.refill(p, now_ns);
        self.level = self
            .level
            .saturating_add(p.tokens_level(cost))
            .min(p.cap_level());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn p(capacity: u64, refill_tokens: u64, interval: u64) -> BucketParams {
        BucketParams {
            capacity,
            refill_tokens,
            refill_interval_ns: interval,
        }
    }

    #[test]
    fn starts_full_and_admits_exactly_capacity() {
        let p = p(5, 1, 3600 * SEC);
        let mut b = BucketState::full(&p, 0);
        let admitted = (0..20).filter(|_| b.take(&p, 1, 0).allowed).count();
        assert_eq!(admitted, 5);
    }

    #[test]
    fn refill_is_continuous_and_exact() {
        let p = p(10, 10, SEC); // 10 tokens per second = one per 100 ms
        let mut b = BucketState::full(&p, 0);
        for _ in 0..10 {
            assert!(b.take(&p, 1, 0).allowed);
        }
        assert!(!b.take(&p, 1, 0).allowed);
        // 99 ms later: still nothing; 100 ms: exactly one.
        assert!(!b.take(&p, 1, 99_999_999).allowed);
        let t = b.take(&p, 1, 100_000_000);
        assert!(t.allowed);
        assert_eq!(t.remaining, 0);
        // Many small steps accumulate without rounding loss: 1000 steps of 1 ms = 10 tokens.
        let mut now = 100_000_000;
        for _ in 0..1000 {
            now += 1_000_000;
            b.refill(&p, now);
        }
        assert_eq!(b.take(&p, 1, now).remaining, 9);
    }

    #[test]
    fn refill_never_exceeds_capacity() {
        let p = p(3, 100, SEC);
        let mut b = BucketState::full(&p, 0);
        b.take(&p, 3, 0);
        b.refill(&p, 1000 * SEC);
        assert_eq!(b.level, p.cap_level());
        assert_eq!(b.take(&p, 1, 1000 * SEC).remaining, 2);
    }

    #[test]
    fn retry_after_and_reset_are_exact() {
        let p = p(4, 2, SEC); // 2 tokens/s = one per 500 ms
        let mut b = BucketState::full(&p, 0);
        let t = b.take(&p, 4, 0);
        assert!(t.allowed);
        assert_eq!(t.reset_ns, 2 * SEC);
        let t = b.take(&p, 3, 0);
        assert!(!t.allowed);
        assert_eq!(t.retry_after_ns, 1_500_000_000);
        assert_eq!(t.remaining, 0);
    }

    #[test]
    fn clock_going_backwards_adds_nothing_and_keeps_last() {
        let p = p(2, 1, SEC);
        let mut b = BucketState::full(&p, 10 * SEC);
        b.take(&p, 2, 10 * SEC);
        let t = b.take(&p, 1, 5 * SEC);
        assert!(!t.allowed);
        assert_eq!(b.last_ns, 10 * SEC);
        assert!(b.take(&p, 1, 11 * SEC).allowed);
    }

    #[test]
    fn rescales_when_the_interval_changes() {
        let old = p(10, 10, SEC);
        let mut b = BucketState::full(&old, 0);
        b.take(&old, 6, 0); // 4 left
        let new = p(10, 10, 60 * SEC);
        let t = b.take(&new, 1, 0);
        assert!(t.allowed);
        assert_eq!(t.remaining, 3);
        assert_eq!(b.scale_ns, 60 * SEC);
    }

    #[test]
    fn capacity_shrink_clamps_level() {
        let big = p(100, 1, SEC);
        let mut b = BucketState::full(&big, 0);
        let small = p(5, 1, SEC);
        assert_eq!(b.take(&small, 1, 0).remaining, 4);
    }

    #[test]
    fn refund_restores_but_never_overfills() {
        let p = p(3, 1, 3600 * SEC);
        let mut b = BucketState::full(&p, 0);
        b.take(&p, 2, 0);
        b.refund(&p, 2, 0);
        assert_eq!(b.level, p.cap_level());
        b.refund(&p, 5, 0);
        assert_eq!(b.level, p.cap_level());
    }

    #[test]
    fn extreme_values_do_not_overflow() {
        let p = p(1_000_000_000, 1_000_000_000, 366 * 24 * 3600 * SEC);
        let mut b = BucketState::full(&p, 0);
        let t = b.take(&p, 1_000_000_000, u64::MAX);
        assert!(t.allowed);
        b.refill(&p, u64::MAX);
        assert!(b.fill_ppm(&p, u64::MAX) <= 1_000_000);
    }
}
