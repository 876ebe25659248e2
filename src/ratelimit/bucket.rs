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
    /// [`Self::ns_to_refill`] of a level that fits in 64 bits: the same
    /// value (the quotient is at most `level`, so never clamped), with a
    /// native division instead of a 128-bit one.
    fn ns_to_refill_u64(&self, level: u64) -> u64 {
        level.div_ceil(self.refill_tokens.max(1))
    }
}

/// `a x b` when it fits in 64 bits. The common case is decided by leading
/// zeros alone: wasm32 has no 64x64->128 multiply, so an overflow-checked
/// multiply is a call into a 128-bit helper there.
#[inline]
fn mul_u64(a: u64, b: u64) -> Option<u64> {
    if a.leading_zeros() + b.leading_zeros() >= 64 {
        // a < 2^(64-za) and b < 2^(64-zb): the product is below 2^64.
        Some(a.wrapping_mul(b))
    } else {
        a.checked_mul(b)
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
        if !self.refill_u64(p, now_ns) {
            self.refill_u128(p, now_ns);
        }
    }

    /// [`Self::refill`] in 64-bit arithmetic, when the interval is unchanged
    /// and both the level and the capacity level fit in 64 bits (every
    /// limit whose `capacity x refill_interval` is below 1.8e19 token-ns,
    /// e.g. 10^9 tokens per second). Returns false, changing nothing,
    /// otherwise. Same result as the 128-bit path: a sum or product that
    /// does not fit in 64 bits exceeds the capacity level, which is what
    /// both paths then clamp to.
    fn refill_u64(&mut self, p: &BucketParams, now_ns: u64) -> bool {
        if self.scale_ns != p.refill_interval_ns {
            return false;
        }
        let (Ok(mut level), Some(cap)) = (
            u64::try_from(self.level),
            mul_u64(p.capacity, p.refill_interval_ns),
        ) else {
            return false;
        };
        if now_ns > self.last_ns {
            let elapsed = now_ns - self.last_ns;
            let added = mul_u64(elapsed, p.refill_tokens).unwrap_or(u64::MAX);
            level = level.saturating_add(added);
            self.last_ns = now_ns;
        }
        self.level = level.min(cap) as u128;
        true
    }

    /// [`Self::refill`] in 128-bit arithmetic (any parameters).
    fn refill_u128(&mut self, p: &BucketParams, now_ns: u64) {
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

    /// Fraction of capacity held at `now_ns`, in parts per million.
    pub fn fill_ppm(&self, p: &BucketParams, now_ns: u64) -> u64 {
        let mut s = *self;
        s.refill(p, now_ns);
        let cap = p.cap_level().max(1);
        (s.level.saturating_mul(1_000_000) / cap) as u64
    }

    /// Takes `cost` tokens if available.
    pub fn take(&mut self, p: &BucketParams, cost: u64, now_ns: u64) -> Take {
        let mut t = self.take_now(p, cost, now_ns);
        // A bucket in debt (see [`Self::charge`]) refills from `last_ns`:
        // waits count from then.
        if self.last_ns > now_ns {
            let wait = self.last_ns - now_ns;
            if !t.allowed {
                t.retry_after_ns = t.retry_after_ns.saturating_add(wait);
            }
            t.reset_ns = t.reset_ns.saturating_add(wait);
        }
        t
    }

    fn take_now(&mut self, p: &BucketParams, cost: u64, now_ns: u64) -> Take {
        self.refill(p, now_ns);
        // After the refill the level is at most the capacity level: when
        // that and the cost fit in 64 bits, so does everything below.
        if let (Ok(level), Some(cap), Some(need)) = (
            u64::try_from(self.level),
            mul_u64(p.capacity, p.refill_interval_ns),
            mul_u64(cost, p.refill_interval_ns),
        ) {
            if level <= cap {
                return self.take_u64(p, level, cap, need);
            }
        }
        self.take_u128(p, cost)
    }

    /// The 64-bit body of [`Self::take`] (`level <= cap`): the same results
    /// as [`Self::take_u128`], with native divisions.
    fn take_u64(&mut self, p: &BucketParams, mut level: u64, cap: u64, need: u64) -> Take {
        let allowed = level >= need;
        let mut retry_after_ns = 0;
        if allowed {
            level -= need;
        } else {
            retry_after_ns = p.ns_to_refill_u64(need - level);
        }
        self.level = level as u128;
        Take {
            allowed,
            remaining: level / p.refill_interval_ns.max(1),
            retry_after_ns,
            reset_ns: p.ns_to_refill_u64(cap - level),
        }
    }

    /// The 128-bit body of [`Self::take`] (any parameters; already refilled).
    fn take_u128(&mut self, p: &BucketParams, cost: u64) -> Take {
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

    /// Charges `extra` more tokens whatever the level (a usage-based cost
    /// above its estimate): what the bucket does not hold becomes debt,
    /// kept exactly as a `last_ns` in the future: the bucket refills
    /// nothing until the refill has paid it, so requests wait (their
    /// retry-after counts the wait). Returns the whole tokens of debt
    /// after the charge (rounded up).
    pub fn charge(&mut self, p: &BucketParams, extra: u64, now_ns: u64) -> u64 {
        self.refill(p, now_ns);
        let need = p.tokens_level(extra);
        if self.level >= need {
            self.level -= need;
        } else {
            // Refill runs from `last_ns` (now, or later when already in
            // debt): it must first add `deficit`, which takes `shift` ns;
            // what that adds beyond the deficit stays in the level.
            let deficit = need - self.level;
            let rate = p.refill_tokens.max(1) as u128;
            let shift = deficit.div_ceil(rate);
            self.level = shift * rate - deficit;
            self.last_ns = self
                .last_ns
                .saturating_add(shift.min(u64::MAX as u128) as u64);
        }
        self.debt(p, now_ns)
    }

    /// Gives back `tokens` (a usage-based cost below its estimate): debt
    /// first (`last_ns` moves back, never before `now_ns`), then up to
    /// capacity. The level at any later time is what it would have been
    /// had the tokens never been charged (up to the capacity).
    pub fn credit(&mut self, p: &BucketParams, tokens: u64, now_ns: u64) {
        self.refill(p, now_ns);
        let mut add = p.tokens_level(tokens);
        if self.last_ns > now_ns {
            let rate = p.refill_tokens.max(1) as u128;
            let back = ((self.last_ns - now_ns) as u128).min(add / rate);
            self.last_ns -= back as u64;
            add -= back * rate;
        }
        self.level = self.level.saturating_add(add).min(p.cap_level());
    }

    /// Whole tokens of debt at `now_ns` (rounded up; 0 when not in debt).
    pub fn debt(&self, p: &BucketParams, now_ns: u64) -> u64 {
        if self.last_ns <= now_ns {
            return 0;
        }
        let owed = ((self.last_ns - now_ns) as u128)
            .saturating_mul(p.refill_tokens.max(1) as u128)
            .saturating_sub(self.level);
        owed.div_ceil(p.refill_interval_ns.max(1) as u128)
            .min(u64::MAX as u128) as u64
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
    fn charge_goes_into_debt_exactly_and_requests_wait_for_it() {
        let p = p(10, 10, SEC); // one token per 100 ms
        let mut b = BucketState::full(&p, 0);
        assert!(b.take(&p, 1, 0).allowed);
        // The response said 25: 24 more, 9 in the bucket, 15 of debt.
        assert_eq!(b.charge(&p, 24, 0), 15);
        assert_eq!(b.debt(&p, 0), 15);
        let t = b.take(&p, 1, 0);
        assert!(!t.allowed);
        // 15 tokens of debt + the one asked for: 1.6 s.
        assert_eq!(t.retry_after_ns, 1_600_000_000);
        assert_eq!(t.reset_ns, 1_500_000_000 + SEC);
        assert!(!b.take(&p, 1, 1_599_999_999).allowed);
        assert_eq!(b.debt(&p, 1_000_000_000), 5);
        let t = b.take(&p, 1, 1_600_000_000);
        assert!(t.allowed && t.remaining == 0, "{t:?}");
        // More debt on top of debt adds up.
        assert_eq!(b.charge(&p, 3, 1_600_000_000), 3);
        assert_eq!(b.charge(&p, 2, 1_600_000_000), 5);
        assert!(!b.take(&p, 1, 2_099_999_999).allowed);
        assert!(b.take(&p, 1, 2_200_000_000).allowed);
    }

    #[test]
    fn charge_without_debt_and_fractional_rates_stay_exact() {
        // 3 tokens per 7 s: a rate that divides nothing evenly.
        let p = p(5, 3, 7 * SEC);
        let mut b = BucketState::full(&p, 0);
        assert_eq!(b.charge(&p, 2, 0), 0);
        assert_eq!(b.take(&p, 1, 0).remaining, 2);
        assert_eq!(b.charge(&p, 4, 0), 2);
        // 2 tokens of debt + 1 token: 3 tokens = 7 s exactly.
        assert!(!b.take(&p, 1, 7 * SEC - 1).allowed);
        assert!(b.take(&p, 1, 7 * SEC).allowed);
    }

    #[test]
    fn credit_pays_debt_first_and_never_overfills() {
        let p = p(10, 10, SEC);
        let mut b = BucketState::full(&p, 0);
        b.take(&p, 10, 0);
        b.charge(&p, 20, 0); // 20 of debt: empty until 2 s
        b.credit(&p, 15, 0); // 5 of debt left: empty until 0.5 s
        assert_eq!(b.debt(&p, 0), 5);
        assert!(!b.take(&p, 1, 599_999_999).allowed);
        assert!(b.take(&p, 1, 600_000_000).allowed);
        // A credit larger than the debt fills up to capacity only.
        let mut b = BucketState::full(&p, 0);
        b.charge(&p, 12, 0);
        b.credit(&p, 100, 0);
        assert_eq!((b.level, b.last_ns), (p.cap_level(), 0));
        // Credit then charge of the same amount changes nothing.
        let mut b = BucketState::full(&p, 0);
        b.take(&p, 4, 0);
        let before = b;
        b.credit(&p, 3, 0);
        b.charge(&p, 3, 0);
        assert_eq!(b, before);
    }

    #[test]
    fn extreme_debts_saturate_without_panicking() {
        let p = p(1, 1, 366 * 24 * 3600 * SEC);
        let mut b = BucketState::full(&p, u64::MAX - 10);
        let d = b.charge(&p, 1_000_000_000, u64::MAX - 10);
        assert!(d > 0);
        assert!(!b.take(&p, 1, u64::MAX).allowed);
        b.credit(&p, 1_000_000_000, u64::MAX);
    }

    /// The arithmetic before the 64-bit paths, verbatim: the reference the
    /// fast paths must match bit for bit.
    mod reference {
        use super::super::{BucketParams, BucketState, Take};

        fn cap_level(p: &BucketParams) -> u128 {
            p.capacity as u128 * p.refill_interval_ns as u128
        }
        fn ns_to_refill(p: &BucketParams, level: u128) -> u64 {
            let ns = level.div_ceil(p.refill_tokens.max(1) as u128);
            ns.min(u64::MAX as u128) as u64
        }
        pub fn refill(s: &mut BucketState, p: &BucketParams, now_ns: u64) {
            if s.scale_ns != p.refill_interval_ns && s.scale_ns != 0 {
                s.level = s.level.saturating_mul(p.refill_interval_ns as u128) / s.scale_ns as u128;
                s.scale_ns = p.refill_interval_ns;
            }
            if now_ns > s.last_ns {
                let elapsed = (now_ns - s.last_ns) as u128;
                s.level = s
                    .level
                    .saturating_add(elapsed.saturating_mul(p.refill_tokens as u128));
                s.last_ns = now_ns;
            }
            s.level = s.level.min(cap_level(p));
        }
        pub fn take(s: &mut BucketState, p: &BucketParams, cost: u64, now_ns: u64) -> Take {
            refill(s, p, now_ns);
            let need = cost as u128 * p.refill_interval_ns as u128;
            let allowed = s.level >= need;
            let mut retry_after_ns = 0;
            if allowed {
                s.level -= need;
            } else {
                retry_after_ns = ns_to_refill(p, need - s.level);
            }
            // (Added with usage-based debt: a refill that starts later
            // makes every wait that much longer.)
            let wait = s.last_ns.saturating_sub(now_ns);
            if !allowed {
                retry_after_ns = retry_after_ns.saturating_add(wait);
            }
            Take {
                allowed,
                remaining: (s.level / p.refill_interval_ns.max(1) as u128) as u64,
                retry_after_ns,
                reset_ns: ns_to_refill(p, cap_level(p) - s.level).saturating_add(wait),
            }
        }
        pub fn refund(s: &mut BucketState, p: &BucketParams, cost: u64, now_ns: u64) {
            refill(s, p, now_ns);
            s.level = s
                .level
                .saturating_add(cost as u128 * p.refill_interval_ns as u128)
                .min(cap_level(p));
        }
    }

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        /// Values of every magnitude, with the edges over-represented.
        fn any(&mut self) -> u64 {
            let x = self.next();
            match x % 8 {
                0 => 0,
                1 => 1,
                2 => u64::MAX - (x >> 60),
                3 => 1u64 << (x >> 58),
                _ => self.next() >> (x % 64),
            }
        }
        /// Parameters in the configured range (and some beyond).
        fn params(&mut self) -> BucketParams {
            let pick = |r: &mut Rng, max: u64| match r.next() % 4 {
                0 => max,
                1 => 1 + r.next() % 10,
                _ => 1 + r.next() % max,
            };
            let interval = match self.next() % 5 {
                0 => SEC,
                1 => 60 * SEC,
                2 => 3600 * SEC,
                3 => 366 * 24 * 3600 * SEC,
                _ => 1_000_000 + self.next() % (366 * 24 * 3600 * SEC),
            };
            let mut p = BucketParams {
                capacity: pick(self, 1_000_000_000),
                refill_tokens: pick(self, 1_000_000_000),
                refill_interval_ns: interval,
            };
            if self.next() % 16 == 0 {
                // Out of the configured range: anything must still match.
                p = BucketParams {
                    capacity: self.any(),
                    refill_tokens: self.any(),
                    refill_interval_ns: self.any(),
                };
            }
            p
        }
    }

    #[test]
    fn fast_paths_match_the_128_bit_arithmetic() {
        let mut r = Rng(0x2545_F491_4F6C_DD1D);
        let mut fast_takes = 0;
        for _ in 0..200_000 {
            let p = r.params();
            // A state as stored: written under these or other parameters.
            let written = if r.next() % 4 == 0 { r.params() } else { p };
            let cap = written.capacity as u128 * written.refill_interval_ns as u128;
            let level = match r.next() % 4 {
                0 => cap,
                1 => 0,
                2 => (r.any() as u128) << (r.next() % 64),
                _ => cap / (1 + (r.next() % 1000) as u128),
            };
            let start = BucketState {
                level,
                last_ns: r.any(),
                scale_ns: if r.next() % 64 == 0 {
                    0
                } else {
                    written.refill_interval_ns
                },
            };
            let now = match r.next() % 4 {
                0 => start.last_ns.wrapping_add(r.next() % 2_000_000_000),
                1 => start.last_ns.wrapping_sub(r.next() % 1000),
                2 => start.last_ns,
                _ => r.any(),
            };
            let cost = match r.next() % 3 {
                0 => 1,
                1 => p.capacity,
                _ => r.any() % p.capacity.saturating_add(2),
            };

            let (mut a, mut b) = (start, start);
            a.refill(&p, now);
            reference::refill(&mut b, &p, now);
            assert_eq!(a, b, "refill {start:?} {p:?} now={now}");

            let (mut a, mut b) = (start, start);
            let ta = a.take(&p, cost, now);
            let tb = reference::take(&mut b, &p, cost, now);
            assert_eq!(
                (ta, a),
                (tb, b),
                "take {start:?} {p:?} cost={cost} now={now}"
            );
            if u64::try_from(b.level).is_ok()
                && p.capacity.checked_mul(p.refill_interval_ns).is_some()
            {
                fast_takes += 1;
            }

            let (mut a, mut b) = (start, start);
            a.refund(&p, cost, now);
            reference::refund(&mut b, &p, cost, now);
            assert_eq!(a, b, "refund {start:?} {p:?} cost={cost} now={now}");
        }
        assert!(
            fast_takes > 50_000,
            "the 64-bit path was exercised: {fast_takes}"
        );
    }

    #[test]
    fn fast_paths_match_over_a_bucket_lifetime() {
        // A sequence of takes and refunds on one bucket, as traffic does.
        let mut r = Rng(7);
        for _ in 0..2000 {
            let p = r.params();
            let start = BucketState::full(&p, r.next() >> 2);
            let (mut a, mut b) = (start, start);
            let mut now = start.last_ns;
            for _ in 0..50 {
                now = match r.next() % 8 {
                    0 => now.saturating_sub(r.next() % 1_000_000),
                    1 => {
                        now.saturating_add(r.next() % p.refill_interval_ns.saturating_mul(2).max(1))
                    }
                    _ => now.saturating_add(r.next() % 10_000),
                };
                let cost = 1 + r.next() % p.capacity.clamp(1, 5);
                if r.next() % 5 == 0 {
                    a.refund(&p, cost, now);
                    reference::refund(&mut b, &p, cost, now);
                } else {
                    let ta = a.take(&p, cost, now);
                    let tb = reference::take(&mut b, &p, cost, now);
                    assert_eq!(ta, tb, "{p:?}");
                }
                assert_eq!(a, b, "{p:?}");
            }
        }
    }

    #[test]
    fn mul_u64_is_checked_multiplication() {
        let mut r = Rng(99);
        for _ in 0..100_000 {
            let (a, b) = (r.any(), r.any());
            assert_eq!(mul_u64(a, b), a.checked_mul(b), "{a} x {b}");
        }
        assert_eq!(mul_u64(1 << 32, 1 << 32), None);
        assert_eq!(mul_u64(1 << 31, 1 << 32), Some(1 << 63));
        assert_eq!(mul_u64(u64::MAX, 1), Some(u64::MAX));
        assert_eq!(mul_u64(u64::MAX, 0), Some(0));
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
