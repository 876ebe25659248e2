//! Leased global limits: a global limit with `"lease": N` asks the rate
//! limit service for a batch of hits at once (one `ShouldRateLimit` call
//! with `hits_addend` = the batch) and spends it locally, across all
//! workers of the Envoy process, through proxy-wasm shared data
//! (compare-and-swap, like the local buckets of `store.rs`).
//!
//! - One lease per (route, limit, descriptor values) per process, in slot
//!   `meshguard/v1/lease/<fnv1a(identity) % max_rate_limit_keys>` (one
//!   slot per identity; another identity hashing to the same slot takes it
//!   over and the unused hits of the one it replaces are dropped, counted in
//!   `lease_dropped`: memory stays bounded, the error is under-admission).
//! - Refill: when a spend leaves at most half of the last grant, or nothing
//!   is left, the spending worker takes the refill flag (`inflight_until`, a
//!   deadline: timeout + grace, so an abandoned call blocks nobody for
//!   longer) and sends one call; at most one refill is in flight per
//!   process and identity. A request that finds no hits left waits (parked)
//!   for the refill's answer, at most the call's deadline.
//! - Batch size ([`next_ask`]): the first ask is `lease`; then, when a lease
//!   ran low before its window ended, twice the last grant; when it expired
//!   with hits unused, twice the hits spent from it (at least `cost`); never
//!   more than `lease` minus the hits still held (a process never holds
//!   more than `lease`: the accuracy bound), and never more than the
//!   service said was left in the window (`limit_remaining`) while that
//!   window lasts.
//! - Expiry: a lease is valid only in the window it was granted for: until
//!   `now + duration_until_reset` of the answer (else the limit's unit from
//!   `current_limit`, else 1 s). Hits left at the end are dropped.
//! - `OVER_LIMIT` for a batch larger than `cost`: the batch did not fit;
//!   the next refill asks for half (down to `cost`, [`LeaseState::cap`]).
//!   For `cost` hits: the process denies locally until the window resets
//!   (same rule for the time) and drops what it had left.
//! - The call fails (error, timeout): the hits left are still spent; when
//!   none are left, `failure_mode` applies, and new refills wait
//!   [`FAILURE_BACKOFF_NS`] (requests meanwhile get `failure_mode` at once,
//!   instead of each waiting for a timeout).
//!
//! Value layout (little endian), version 1:
//! `[1u8][tokens u64][window_end u64][denied_until u64][inflight_until u64]
//! [granted u64][spent u64][limit u64][unit_secs u64][svc_remaining u64]
//! [cap u64][gen u32][failed u8][identity bytes]`. A value that is too short, of
//! another version or with a bad flag byte decodes as no lease (fail
//! closed: it never grants a hit; the next writer replaces it).

use super::rls::LimitStatus;
use super::store::{fnv1a, MAX_CAS_RETRIES};
use super::text::Decimal;
use crate::host::{Host, MetricId, MetricKind, SetError, CREATE_CAS};

pub const VERSION: u8 = 1;
pub const KEY_PREFIX: &str = "meshguard/v1/lease/";
pub const HEADER_LEN: usize = 1 + 10 * 8 + 4 + 1;
/// How long new refills wait after a failed one.
pub const FAILURE_BACKOFF_NS: u64 = 250_000_000;
const SEC: u64 = 1_000_000_000;

/// One process's lease on one descriptor set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LeaseState {
    /// Hits left to spend.
    pub tokens: u64,
    /// The hits are valid until then (0: no lease).
    pub window_end_ns: u64,
    /// `OVER_LIMIT`: refuse until then.
    pub denied_until_ns: u64,
    /// A refill is in flight (or, after a failure, held back) until then.
    pub inflight_until_ns: u64,
    /// The size of the last grant.
    pub granted: u64,
    /// Hits spent since the last grant.
    pub spent: u64,
    /// The service's `current_limit` (requests per unit, unit seconds), 0
    /// when unknown.
    pub limit: u64,
    pub unit_secs: u64,
    /// The service's `limit_remaining` in the window of the last grant.
    pub svc_remaining: u64,
    /// The most to ask for next (0: no cap): halved by each batch the
    /// service refused as too large.
    pub cap: u64,
    /// Answers recorded (a waiting request sees one came).
    pub gen: u32,
    /// The last refill failed.
    pub failed: bool,
}

pub fn encode(identity: &str, st: &LeaseState) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER_LEN + identity.len());
    v.push(VERSION);
    for n in [
        st.tokens,
        st.window_end_ns,
        st.denied_until_ns,
        st.inflight_until_ns,
        st.granted,
        st.spent,
        st.limit,
        st.unit_secs,
        st.svc_remaining,
        st.cap,
    ] {
        v.extend_from_slice(&n.to_le_bytes());
    }
    v.extend_from_slice(&st.gen.to_le_bytes());
    v.push(u8::from(st.failed));
    v.extend_from_slice(identity.as_bytes());
    v
}

/// Decodes a slot value: the state and the identity it belongs to. `None`
/// for anything that is not a complete version-1 value.
pub fn decode(v: &[u8]) -> Option<(LeaseState, &[u8])> {
    if v.len() < HEADER_LEN || v.first() != Some(&VERSION) {
        return None;
    }
    let u64_at = |i: usize| -> Option<u64> {
        Some(u64::from_le_bytes(
            v.get(1 + 8 * i..9 + 8 * i)?.try_into().ok()?,
        ))
    };
    let gen = u32::from_le_bytes(v.get(81..85)?.try_into().ok()?);
    let failed = match v.get(85)? {
        0 => false,
        1 => true,
        _ => return None,
    };
    let st = LeaseState {
        tokens: u64_at(0)?,
        window_end_ns: u64_at(1)?,
        denied_until_ns: u64_at(2)?,
        inflight_until_ns: u64_at(3)?,
        granted: u64_at(4)?,
        spent: u64_at(5)?,
        limit: u64_at(6)?,
        unit_secs: u64_at(7)?,
        svc_remaining: u64_at(8)?,
        cap: u64_at(9)?,
        gen,
        failed,
    };
    Some((st, v.get(HEADER_LEN..)?))
}

/// What a request got from a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spend {
    /// Admitted; `remaining` hits left. `refill`: this caller took the
    /// refill flag and must ask the service for that many hits.
    Admitted { remaining: u64, refill: Option<u64> },
    /// The service said `OVER_LIMIT`: refused for that many seconds.
    Denied { retry_after_secs: u64 },
    /// No hits left. `refill`: as above (the caller sends the call, then
    /// waits); else a refill is in flight (wait for answer `gen` + 1) or,
    /// when `failed`, the last one failed and the service is left alone for
    /// a moment (apply `failure_mode`).
    Empty {
        refill: Option<u64>,
        failed: bool,
        gen: u32,
    },
}

/// The batch to ask for next (see the module docs).
pub fn next_ask(st: &LeaseState, lease: u64, cost: u64, now: u64) -> u64 {
    let lease = lease.max(cost);
    let want = if st.granted == 0 {
        lease
    } else if st.window_end_ns != 0 && now < st.window_end_ns {
        // Running low within its window: demand exceeds the grant.
        st.granted.saturating_mul(2)
    } else {
        st.spent.saturating_mul(2)
    };
    let mut ask = want.clamp(cost, lease);
    if st.window_end_ns != 0 && now < st.window_end_ns && st.limit != 0 {
        // The service said how much is left in this window: asking for
        // more is refused whole.
        ask = ask.min(st.svc_remaining.max(cost));
    }
    if st.cap != 0 {
        ask = ask.min(st.cap.max(cost));
    }
    ask
}

/// Drops a lease whose window ended; returns the hits dropped.
pub fn expire(st: &mut LeaseState, now: u64) -> u64 {
    if st.window_end_ns != 0 && now >= st.window_end_ns {
        let dropped = st.tokens;
        st.tokens = 0;
        st.window_end_ns = 0;
        st.cap = 0;
        dropped
    } else {
        0
    }
}

/// Spends `cost` hits (see [`Spend`]); `flag_ttl_ns`: how long a refill
/// taken now may stay in flight. Returns the hits a lease expiry dropped
/// too.
pub fn spend(
    st: &mut LeaseState,
    lease: u64,
    cost: u64,
    now: u64,
    flag_ttl_ns: u64,
) -> (Spend, u64) {
    if now < st.denied_until_ns {
        let secs = (st.denied_until_ns - now).div_ceil(SEC).max(1);
        return (
            Spend::Denied {
                retry_after_secs: secs,
            },
            0,
        );
    }
    let dropped = expire(st, now);
    let flag_free = now >= st.inflight_until_ns;
    let take_flag = |st: &mut LeaseState| -> u64 {
        // Never hold more than `lease` once the batch lands (the bound).
        let room = lease.max(cost).saturating_sub(st.tokens).max(cost);
        let ask = next_ask(st, lease, cost, now).min(room);
        st.inflight_until_ns = now.saturating_add(flag_ttl_ns);
        st.failed = false;
        ask
    };
    if st.tokens >= cost {
        st.tokens -= cost;
        st.spent = st.spent.saturating_add(cost);
        let low = st.tokens < cost || st.tokens.saturating_mul(2) <= st.granted;
        let refill = (low && flag_free).then(|| take_flag(st));
        return (
            Spend::Admitted {
                remaining: st.tokens,
                refill,
            },
            dropped,
        );
    }
    let failed = st.failed && !flag_free;
    let refill = flag_free.then(|| take_flag(st));
    (
        Spend::Empty {
            refill,
            failed,
            gen: st.gen,
        },
        dropped,
    )
}

/// How an answer changed a lease, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Recorded {
    /// Hits granted (0 when refused or failed).
    pub granted: u64,
    /// Unused hits dropped (expired, or refused by `OVER_LIMIT`).
    pub dropped: u64,
}

/// The window end of an answer given now.
fn window_end(status: &LimitStatus, now: u64) -> u64 {
    let secs = status
        .reset_secs
        .filter(|s| *s > 0)
        .or(status.limit.map(|(_, unit)| unit))
        .unwrap_or(1)
        .max(1);
    now.saturating_add(secs.saturating_mul(SEC))
}

/// Records the answer to a refill that asked for `asked` hits (`cost`: the
/// limit's): `Ok(status)` from the service, `Err(())` when the call failed.
///
/// `OVER_LIMIT` for a batch larger than `cost` only says the batch did not
/// fit: the next refill asks for half as much (down to `cost`), the hits
/// left are kept. `OVER_LIMIT` for `cost` hits denies until the reset and
/// drops what is left.
pub fn record(
    st: &mut LeaseState,
    asked: u64,
    cost: u64,
    answer: Result<&LimitStatus, ()>,
    now: u64,
) -> Recorded {
    let mut out = Recorded {
        dropped: expire(st, now),
        ..Recorded::default()
    };
    st.gen = st.gen.wrapping_add(1);
    let status = match answer {
        Err(()) => {
            st.failed = true;
            st.inflight_until_ns = now.saturating_add(FAILURE_BACKOFF_NS);
            return out;
        }
        Ok(s) => s,
    };
    st.failed = false;
    st.inflight_until_ns = 0;
    if let Some((limit, unit)) = status.limit {
        st.limit = limit;
        st.unit_secs = unit;
    }
    let end = window_end(status, now);
    if status.over && asked > cost {
        st.cap = (asked / 2).max(cost);
        // What the service said was left is stale now: the cap decides.
        st.svc_remaining = u64::MAX;
        if st.window_end_ns == 0 {
            // No grant in this window yet: the cap lasts until the reset.
            st.window_end_ns = end;
        }
        return out;
    }
    if status.over {
        st.cap = 0;
        out.dropped += st.tokens;
        st.tokens = 0;
        st.window_end_ns = 0;
        st.denied_until_ns = end;
        st.svc_remaining = 0;
        return out;
    }
    // A grant for a later window than the hits left: those end first,
    // and one window is kept per lease, so they are dropped.
    if st.window_end_ns != 0 && end > st.window_end_ns.saturating_add(SEC / 2) {
        out.dropped += st.tokens;
        st.tokens = 0;
    }
    st.window_end_ns = match st.window_end_ns {
        w if w != 0 && st.tokens != 0 => w.min(end),
        _ => end,
    };
    st.tokens = st.tokens.saturating_add(asked);
    st.granted = asked;
    st.spent = 0;
    st.denied_until_ns = 0;
    st.svc_remaining = if status.limit.is_some() {
        status.remaining
    } else {
        u64::MAX
    };
    out.granted = asked;
    out
}

/// Gives `cost` hits back (a later limit refused the request), if the lease
/// is still in its window.
pub fn give_back(st: &mut LeaseState, cost: u64, now: u64) {
    if st.window_end_ns != 0 && now < st.window_end_ns {
        st.tokens = st.tokens.saturating_add(cost);
        st.spent = st.spent.saturating_sub(cost);
    }
}

/// The shared-data key of a lease slot.
pub fn slot_key(identity: &str, slots: u32) -> String {
    let slot = fnv1a(identity.as_bytes()) % u64::from(slots.max(1));
    let mut k = String::with_capacity(KEY_PREFIX.len() + 10);
    k.push_str(KEY_PREFIX);
    k.push_str(std::str::from_utf8(Decimal::new(slot).as_bytes()).unwrap_or("0"));
    k
}

/// A lease's identity: `route \x1f limit \x1f value \x1f value...`.
pub fn identity(route: &str, limit: &str, values: &[String]) -> String {
    let mut id = String::with_capacity(
        route.len() + limit.len() + 2 + values.iter().map(|v| v.len() + 1).sum::<usize>(),
    );
    id.push_str(route);
    id.push('\u{1f}');
    id.push_str(limit);
    for v in values {
        id.push('\u{1f}');
        id.push_str(v);
    }
    id
}

/// Per leased limit counters: `meshguard.ratelimit.<route>.<limit>.`
/// `lease_obtained` (grants received), `lease_hits` (hits spent from
/// leases), `lease_dropped` (unused hits: expired, dropped on
/// `OVER_LIMIT`, or lost with a reused slot), `lease_failed` (refill calls
/// that failed or timed out).
#[derive(Debug, Clone, Copy)]
pub struct LeaseMetrics {
    pub obtained: MetricId,
    pub hits: MetricId,
    pub dropped: MetricId,
    pub failed: MetricId,
}

impl LeaseMetrics {
    pub const NONE: LeaseMetrics = LeaseMetrics {
        obtained: MetricId::NONE,
        hits: MetricId::NONE,
        dropped: MetricId::NONE,
        failed: MetricId::NONE,
    };

    pub fn define(host: &impl Host, route: &str, limit: &str) -> LeaseMetrics {
        let def = |what: &str| {
            host.define_metric(
                MetricKind::Counter,
                &format!("meshguard.ratelimit.{route}.{limit}.{what}"),
            )
            .unwrap_or(MetricId::NONE)
        };
        LeaseMetrics {
            obtained: def("lease_obtained"),
            hits: def("lease_hits"),
            dropped: def("lease_dropped"),
            failed: def("lease_failed"),
        }
    }
}

/// Why a shared-data update failed (the caller applies `failure_mode`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreFailed(pub String);

/// Runs `f` on the lease of `identity` (a fresh one when the slot is empty,
/// unreadable or another identity's: `f`'s second argument then says how
/// many hits of the replaced lease are dropped) and writes the result back
/// with compare-and-swap, retrying on a lost race. `f` returns what to
/// report and whether to write.
pub fn update<R>(
    host: &impl Host,
    slots: u32,
    identity: &str,
    mut f: impl FnMut(&mut LeaseState, u64) -> (R, bool),
) -> Result<R, StoreFailed> {
    let mut out = None;
    update_dyn(host, slots, identity, &mut |st, replaced| {
        let (r, write) = f(st, replaced);
        out = Some(r);
        write
    })?;
    out.ok_or_else(|| StoreFailed("no attempt".into()))
}

/// [`update`]'s loop, compiled once (not once per closure).
#[inline(never)]
fn update_dyn(
    host: &impl Host,
    slots: u32,
    identity: &str,
    f: &mut dyn FnMut(&mut LeaseState, u64) -> bool,
) -> Result<(), StoreFailed> {
    let key = slot_key(identity, slots);
    for _ in 0..MAX_CAS_RETRIES {
        let (value, cas) = host.shared_get(&key).map_err(|e| StoreFailed(e.0))?;
        let (mut st, replaced) = match value.as_deref().map(decode) {
            Some(Some((st, id))) if id == identity.as_bytes() => (st, 0),
            Some(Some((other, _))) => (LeaseState::default(), other.tokens),
            Some(None) | None => (LeaseState::default(), 0),
        };
        if !f(&mut st, replaced) {
            return Ok(());
        }
        match host.shared_set(
            &key,
            &encode(identity, &st),
            Some(cas.unwrap_or(CREATE_CAS)),
        ) {
            Ok(()) => return Ok(()),
            Err(SetError::CasMismatch) => continue,
            Err(SetError::Host(e)) => return Err(StoreFailed(e)),
        }
    }
    Err(StoreFailed("compare-and-swap contention".into()))
}

/// Reads the lease of `identity` without changing it (`None`: no lease of
/// that identity in its slot).
pub fn peek(host: &impl Host, slots: u32, identity: &str) -> Option<LeaseState> {
    let (value, _) = host.shared_get(&slot_key(identity, slots)).ok()?;
    let v = value?;
    match decode(&v) {
        Some((st, id)) if id == identity.as_bytes() => Some(st),
        _ => None,
    }
}

/// The status a spend from a lease reports, like the service's own answer
/// would: `remaining` is what the service had left at the last grant plus
/// this process's unspent hits (already counted there).
pub fn status(st: &LeaseState, now: u64) -> LimitStatus {
    LimitStatus {
        over: false,
        limit: (st.limit != 0 && st.unit_secs != 0).then_some((st.limit, st.unit_secs)),
        remaining: st.svc_remaining.saturating_add(st.tokens).min(st.limit),
        reset_secs: (st.window_end_ns > now).then(|| (st.window_end_ns - now).div_ceil(SEC)),
    }
}

#[cfg(test)]
mod tests;
