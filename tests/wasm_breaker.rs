//! The breaker's pure core compiled to wasm (wasm32-unknown-unknown) and run
//! by wasm-bindgen-test in Node:
//! `CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner cargo test --target wasm32-unknown-unknown --test wasm_breaker`.
//! Natively this file compiles to nothing.
#![cfg(all(target_arch = "wasm32", target_os = "unknown"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use meshguard::breaker::{admit, record, snapshot, BreakerMetrics};
use meshguard::breaker::{codec, Admission, BreakerPolicy, BreakerState, Outcome, Phase};
use meshguard::host::fake::FakeHost;
use wasm_bindgen_test::wasm_bindgen_test;

const S: u64 = 1_000_000_000;
const T0: u64 = 1_700_000_000 * S;

#[wasm_bindgen_test]
fn state_machine_full_cycle_in_wasm() {
    let p = BreakerPolicy {
        consecutive_failures: 2,
        ..BreakerPolicy::default()
    };
    let mut s = BreakerState::new();
    s.on_failure(&p, T0, false, u64::MAX);
    s.on_failure(&p, T0, false, u64::MAX);
    assert_eq!(s.phase, Phase::Open);
    let open = s.open_until - T0;
    assert!((5 * S..=5 * S + S / 2).contains(&open));
    assert_eq!(
        s.admit(&p, T0),
        Admission::Rejected {
            retry_after_secs: open.div_ceil(S)
        }
    );
    assert_eq!(
        s.admit(&p, s.open_until),
        Admission::Allowed { probe: true }
    );
    s.on_outcome(&p, Outcome::Success, true, s.open_until, 0);
    assert_eq!(s, BreakerState::new());
}

#[wasm_bindgen_test]
fn codec_and_shared_store_in_wasm() {
    let p = BreakerPolicy {
        consecutive_failures: 1,
        ..BreakerPolicy::default()
    };
    let host = FakeHost::new(T0);
    record(
        &host,
        &p,
        &BreakerMetrics::none(),
        "wasm",
        Outcome::Failure,
        false,
    );
    let s = snapshot(&host, "wasm").unwrap();
    assert_eq!(s.phase, Phase::Open);
    assert_eq!(codec::decode(&codec::encode(&s)), Some(s.clone()));
    assert!(matches!(
        admit(&host, &p, &BreakerMetrics::none(), "wasm"),
        Admission::Rejected { .. }
    ));
    host.set_now(s.open_until);
    assert_eq!(
        admit(&host, &p, &BreakerMetrics::none(), "wasm"),
        Admission::Allowed { probe: true }
    );
}
