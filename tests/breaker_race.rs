//! Several "workers" (clones of one FakeHost = one shared-data store, as
//! Envoy's worker VMs share one process) racing the breaker, on real
//! threads: HALF_OPEN admits exactly `half_open_requests` probes in total,
//! and the probes' successes close it for everyone.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use meshguard::breaker::{
    admit, record, release, snapshot, Admission, BreakerMetrics, BreakerPolicy, Outcome, Phase,
    RatioRule,
};
use meshguard::host::fake::FakeHost;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Barrier, Mutex, Once};
use std::time::Duration;

const S: u64 = 1_000_000_000;
const T0: u64 = 1_700_000_000 * S;
const WORKERS: usize = 8;

static LOGS: Mutex<Vec<String>> = Mutex::new(Vec::new());
struct Capture;
impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, r: &log::Record) {
        LOGS.lock()
            .unwrap()
            .push(format!("{} {}", r.level(), r.args()));
    }
    fn flush(&self) {}
}
static CAPTURE: Capture = Capture;
static INIT: Once = Once::new();

fn logs(needle: &str) -> Vec<String> {
    INIT.call_once(|| {
        let _ = log::set_logger(&CAPTURE);
        log::set_max_level(log::LevelFilter::Trace);
    });
    LOGS.lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains(needle))
        .cloned()
        .collect()
}

fn policy(
    host: &FakeHost,
    route: &str,
    half_open: u32,
    threshold: u32,
) -> (BreakerPolicy, BreakerMetrics) {
    logs("");
    let p = BreakerPolicy {
        consecutive_failures: 3,
        half_open_requests: half_open,
        success_threshold: threshold,
        ..BreakerPolicy::default()
    };
    (p, BreakerMetrics::define(host, route))
}

fn trip_and_wait(host: &FakeHost, p: &BreakerPolicy, m: &BreakerMetrics, key: &str) {
    for _ in 0..p.consecutive_failures {
        record(host, p, m, key, Outcome::Failure, false);
    }
    let s = snapshot(host, key).unwrap();
    assert_eq!(s.phase, Phase::Open);
    host.set_now(s.open_until);
}

/// Every worker calls `admit` `per_worker` times at once; returns the
/// admissions of each worker.
fn race_admit(
    host: &FakeHost,
    p: &BreakerPolicy,
    m: &BreakerMetrics,
    key: &str,
    per_worker: usize,
) -> Vec<Vec<Admission>> {
    let barrier = Barrier::new(WORKERS);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..WORKERS)
            .map(|_| {
                let worker = host.clone();
                let barrier = &barrier;
                scope.spawn(move || {
                    barrier.wait();
                    (0..per_worker)
                        .map(|_| admit(&worker, p, m, key))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn probes(results: &[Vec<Admission>]) -> usize {
    results
        .iter()
        .flatten()
        .filter(|a| **a == Admission::Allowed { probe: true })
        .count()
}

#[test]
fn half_open_admits_exactly_half_open_requests_probes_across_workers() {
    for half_open in [1u32, 3, 7] {
        let route = format!("race{half_open}");
        let host = FakeHost::new(T0);
        let (p, m) = policy(&host, &route, half_open, half_open);
        trip_and_wait(&host, &p, &m, &route);

        let results = race_admit(&host, &p, &m, &route, 50);
        let fail_open = logs(&format!("route={route}: "))
            .iter()
            .filter(|l| l.contains("fail open"))
            .count();
        let non_probes = results
            .iter()
            .flatten()
            .filter(|a| **a == Admission::Allowed { probe: false })
            .count();
        assert_eq!(
            probes(&results),
            half_open as usize,
            "half_open={half_open}"
        );
        // Only the documented fallback admits non-probes, and it logs.
        assert_eq!(non_probes, fail_open);
        let s = snapshot(&host, &route).unwrap();
        assert_eq!(s.phase, Phase::HalfOpen);
        assert_eq!(s.half_open_in_flight, half_open);
        assert_eq!(
            host.metric(&format!("meshguard.breaker.{route}.probes")),
            Some(i64::from(half_open))
        );

        // The winners report success from their own workers: closed for all.
        std::thread::scope(|scope| {
            for _ in 0..half_open {
                let worker = host.clone();
                let (p, m, route) = (&p, &m, &route);
                scope.spawn(move || record(&worker, p, m, route, Outcome::Success, true));
            }
        });
        let s = snapshot(&host, &route).unwrap();
        assert_eq!(s.phase, Phase::Closed);
        assert_eq!(s.trips, 0);
        for r in race_admit(&host, &p, &m, &route, 10).iter().flatten() {
            assert_eq!(*r, Admission::Allowed { probe: false });
        }
        assert_eq!(
            host.metric(&format!("meshguard.breaker.{route}.state")),
            Some(0)
        );
    }
}

#[test]
fn probe_failure_on_one_worker_reopens_for_all_with_longer_time() {
    let host = FakeHost::new(T0);
    let (p, m) = policy(&host, "reopen", 2, 2);
    trip_and_wait(&host, &p, &m, "reopen");
    let (a, b) = (host.clone(), host.clone());
    assert_eq!(
        admit(&a, &p, &m, "reopen"),
        Admission::Allowed { probe: true }
    );
    assert_eq!(
        admit(&b, &p, &m, "reopen"),
        Admission::Allowed { probe: true }
    );
    record(&a, &p, &m, "reopen", Outcome::Success, true);
    record(&b, &p, &m, "reopen", Outcome::Failure, true);
    let s = snapshot(&host, "reopen").unwrap();
    assert_eq!((s.phase, s.trips), (Phase::Open, 2));
    assert!((10 * S..=11 * S).contains(&(s.open_until - s.opened_at)));
    for w in [&a, &b, &host] {
        assert!(matches!(
            admit(w, &p, &m, "reopen"),
            Admission::Rejected {
                retry_after_secs: 10 | 11
            }
        ));
    }
    assert_eq!(host.metric("meshguard.breaker.reopen.trips"), Some(2));
    assert_eq!(host.metric("meshguard.breaker.reopen.rejected"), Some(3));
}

#[test]
fn released_probe_slot_goes_to_another_worker() {
    let host = FakeHost::new(T0);
    let (p, m) = policy(&host, "cancel", 1, 1);
    trip_and_wait(&host, &p, &m, "cancel");
    let (a, b) = (host.clone(), host.clone());
    assert_eq!(
        admit(&a, &p, &m, "cancel"),
        Admission::Allowed { probe: true }
    );
    assert!(matches!(
        admit(&b, &p, &m, "cancel"),
        Admission::Rejected { .. }
    ));
    release(&a, &m, "cancel", true);
    assert_eq!(
        admit(&b, &p, &m, "cancel"),
        Admission::Allowed { probe: true }
    );
    record(&b, &p, &m, "cancel", Outcome::Success, true);
    assert_eq!(snapshot(&host, "cancel").unwrap().phase, Phase::Closed);
}

#[test]
fn concurrent_failures_are_counted_exactly_or_logged() {
    let host = FakeHost::new(T0);
    logs("");
    let p = BreakerPolicy {
        consecutive_failures: 1_000_000,
        ratio: Some(RatioRule {
            failure_ratio: 1.0,
            min_requests: 1_000_000,
            window_ns: 10 * S,
        }),
        ..BreakerPolicy::default()
    };
    let m = &BreakerMetrics::define(&host, "count");
    let per_worker = 100u64;
    let barrier = Barrier::new(WORKERS);
    std::thread::scope(|scope| {
        for _ in 0..WORKERS {
            let worker = host.clone();
            let (p, barrier) = (&p, &barrier);
            scope.spawn(move || {
                barrier.wait();
                for _ in 0..per_worker {
                    record(&worker, p, m, "count", Outcome::Failure, false);
                }
            });
        }
    });
    let lost = logs("route=count: ")
        .iter()
        .filter(|l| l.contains("outcome not counted"))
        .count() as u64;
    let s = snapshot(&host, "count").unwrap();
    let total = WORKERS as u64 * per_worker;
    assert_eq!(u64::from(s.consecutive_failures), total - lost);
    assert_eq!(u64::from(s.window_totals(T0).0), total - lost);
}

#[test]
fn workers_with_a_moving_clock_trip_once() {
    // Many workers failing at once trip the breaker exactly once (one
    // CLOSED -> OPEN transition, one trips count), whatever the interleaving.
    let host = FakeHost::new(T0);
    let (p, m) = policy(&host, "once", 1, 1);
    let ticks = AtomicU64::new(0);
    let barrier = Barrier::new(WORKERS);
    std::thread::scope(|scope| {
        for _ in 0..WORKERS {
            let worker = host.clone();
            let (p, m, barrier, ticks) = (&p, &m, &barrier, &ticks);
            scope.spawn(move || {
                barrier.wait();
                for _ in 0..20 {
                    if ticks.fetch_add(1, Ordering::SeqCst) % 7 == 0 {
                        worker.advance(Duration::from_millis(1));
                    }
                    record(&worker, p, m, "once", Outcome::Failure, false);
                }
            });
        }
    });
    assert_eq!(snapshot(&host, "once").unwrap().phase, Phase::Open);
    assert_eq!(host.metric("meshguard.breaker.once.trips"), Some(1));
    assert_eq!(logs("route=once CLOSED -> OPEN").len(), 1);
}
