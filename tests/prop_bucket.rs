//! Property: a token bucket shared by competing workers never admits more
//! than `capacity + refill` over any interval, whatever the interleaving
//! of their compare-and-swap writes, the costs and the clock's steps.
//!
//! Workers are clones of one `FakeHost` (one shared-data store); a racing
//! worker's whole take lands between another's read and its CAS write
//! (see `prop_support`). Bound, in exact integer arithmetic (tokens x ns):
//! for every pair of admitted takes at times `ta <= tb`, the tokens admitted
//! at times in `[ta, tb]` satisfy
//! `admitted x interval <= capacity x interval + refill x (tb - ta)`.
//! Case count: MESHGUARD_PROP_CASES (default 256).

#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod prop_support;

use meshguard::host::fake::FakeHost;
use meshguard::host::Host;
use meshguard::ratelimit::bucket::BucketParams;
use meshguard::ratelimit::store;
use prop_support::{cases, Racing};
use proptest::prelude::*;
use std::cell::RefCell;
use std::time::Duration;

const T0: u64 = 1_700_000_000_000_000_000;

#[derive(Debug, Clone)]
struct Step {
    /// Which worker takes (0..3).
    worker: usize,
    /// Clock step before it, in ms.
    advance_ms: u64,
    cost: u64,
    /// Races of this take's writes (true: the rival takes first).
    plan: Vec<bool>,
    rival_cost: u64,
}

fn step() -> impl Strategy<Value = Step> {
    (
        0usize..3,
        prop_oneof![Just(0u64), 0u64..50, 0u64..2_000],
        1u64..4,
        proptest::collection::vec(any::<bool>(), 0..4),
        1u64..4,
    )
        .prop_map(|(worker, advance_ms, cost, plan, rival_cost)| Step {
            worker,
            advance_ms,
            cost,
            plan,
            rival_cost,
        })
}

fn params() -> impl Strategy<Value = BucketParams> {
    (
        1u64..20,
        1u64..10,
        prop_oneof![Just(1_000u64), Just(250), 1u64..5_000],
    )
        .prop_map(|(capacity, refill_tokens, interval_ms)| BucketParams {
            capacity,
            refill_tokens,
            refill_interval_ns: interval_ms * 1_000_000,
        })
}

/// Checks the bound over every interval between two admitted takes.
fn check_bound(admitted: &[(u64, u64)], p: &BucketParams) -> Result<(), TestCaseError> {
    let mut a = admitted.to_vec();
    a.sort();
    for i in 0..a.len() {
        let mut tokens: u128 = 0;
        for j in i..a.len() {
            tokens += a[j].1 as u128;
            let dt = (a[j].0 - a[i].0) as u128;
            let lhs = tokens * p.refill_interval_ns as u128;
            let rhs =
                p.capacity as u128 * p.refill_interval_ns as u128 + p.refill_tokens as u128 * dt;
            prop_assert!(
                lhs <= rhs,
                "{tokens} tokens admitted in [{}, {}] ns (capacity {}, {} per {} ns)",
                a[i].0 - T0,
                a[j].0 - T0,
                p.capacity,
                p.refill_tokens,
                p.refill_interval_ns
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(256)))]

    #[test]
    fn a_shared_bucket_never_admits_more_than_capacity_plus_refill(
        p in params(),
        steps in proptest::collection::vec(step(), 1..80),
        slots in 1u32..4,
    ) {
        let store_host = FakeHost::new(T0);
        let workers: Vec<FakeHost> = (0..3).map(|_| store_host.clone()).collect();
        // (time ns, tokens) of every admitted take, whoever took it.
        let admitted: RefCell<Vec<(u64, u64)>> = RefCell::new(Vec::new());
        for s in &steps {
            store_host.advance(Duration::from_millis(s.advance_ms));
            let me = Racing::new(workers[s.worker].clone());
            let rival_host = workers[(s.worker + 1) % 3].clone();
            let rival_cost = s.rival_cost;
            let adm = &admitted;
            let prm = p;
            me.race(&s.plan, move || {
                if let Ok(t) = store::take(&rival_host, slots, "client", &prm, rival_cost) {
                    if t.take.allowed {
                        adm.borrow_mut().push((rival_host.now_nanos(), rival_cost));
                    }
                }
            });
            match store::take(&me, slots, "client", &p, s.cost) {
                Ok(t) => {
                    prop_assert!(!t.evicted, "one identity never evicts itself");
                    if t.take.allowed {
                        admitted.borrow_mut().push((me.now_nanos(), s.cost));
                    }
                }
                // Contention past the retry bound: the caller fails open,
                // the store admitted nothing.
                Err(store::StoreError::Contention) => {}
                Err(e) => prop_assert!(false, "store error {e:?}"),
            }
            me.calm();
        }
        check_bound(&admitted.borrow(), &p)?;
    }
}

/// The bound is tight, so the property can fail: a bucket that forgot one
/// write (two takes from the same read) breaks it.
#[test]
fn the_bound_catches_a_lost_update() {
    let p = BucketParams {
        capacity: 2,
        refill_tokens: 1,
        refill_interval_ns: 1_000_000_000,
    };
    // Three tokens at the same instant from a bucket of two.
    let r = check_bound(&[(T0, 1), (T0, 1), (T0, 1)], &p);
    assert!(r.is_err());
    assert!(check_bound(&[(T0, 1), (T0, 1), (T0 + 1_000_000_000, 1)], &p).is_ok());
}
