//! The rate-limit core compiled to wasm and run in Node (wasm-bindgen-test):
//! the bucket arithmetic and the CAS slot table behave as natively.
#![cfg(all(target_arch = "wasm32", target_os = "unknown"))]

use meshguard::host::fake::FakeHost;
use meshguard::ratelimit::bucket::{BucketParams, BucketState};
use meshguard::ratelimit::store;
use wasm_bindgen_test::wasm_bindgen_test;

const SEC: u64 = 1_000_000_000;

#[wasm_bindgen_test]
fn bucket_admits_exactly_capacity_then_refills() {
    let p = BucketParams {
        capacity: 5,
        refill_tokens: 5,
        refill_interval_ns: SEC,
    };
    let mut b = BucketState::full(&p, 0);
    assert_eq!((0..10).filter(|_| b.take(&p, 1, 0).allowed).count(), 5);
    assert!(!b.take(&p, 1, SEC / 5 - 1).allowed);
    assert!(b.take(&p, 1, SEC / 5).allowed);
}

#[wasm_bindgen_test]
fn u128_arithmetic_is_exact_in_wasm() {
    let p = BucketParams {
        capacity: 1_000_000_000,
        refill_tokens: 7,
        refill_interval_ns: 366 * 24 * 3600 * SEC,
    };
    let mut b = BucketState::full(&p, 0);
    let t = b.take(&p, 999_999_999, 0);
    assert!(t.allowed);
    assert_eq!(t.remaining, 1);
}

#[wasm_bindgen_test]
fn two_workers_share_one_bucket_through_cas() {
    let a = FakeHost::new(SEC);
    let b = a.clone();
    let p = BucketParams {
        capacity: 4,
        refill_tokens: 1,
        refill_interval_ns: 3600 * SEC,
    };
    let mut admitted = 0;
    for i in 0..20 {
        let h = if i % 2 == 0 { &a } else { &b };
        if store::take(h, 100, "route\u{1f}l\u{1f}k", &p, 1)
            .map(|t| t.take.allowed)
            .unwrap_or(false)
        {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 4);
}
