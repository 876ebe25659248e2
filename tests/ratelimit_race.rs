//! Several "workers" (threads, each with its own clone of one fake host, as
//! Envoy's worker VMs share one process's shared data) race on one bucket:
//! compare-and-swap keeps the count exact.
#![allow(clippy::panic)]

use meshguard::host::fake::FakeHost;
use meshguard::ratelimit::bucket::BucketParams;
use meshguard::ratelimit::store;
use std::sync::{Arc, Barrier};
use std::thread;

const SEC: u64 = 1_000_000_000;

fn race(
    workers: usize,
    per_worker: usize,
    capacity: u64,
    slots: u32,
    keys: usize,
) -> (usize, FakeHost) {
    let host = FakeHost::new(SEC);
    let barrier = Arc::new(Barrier::new(workers));
    let p = BucketParams {
        capacity,
        refill_tokens: 1,
        refill_interval_ns: 3600 * SEC,
    };
    let handles: Vec<_> = (0..workers)
        .map(|w| {
            let h = host.clone();
            let b = barrier.clone();
            thread::spawn(move || {
                b.wait();
                let mut admitted = 0;
                for i in 0..per_worker {
                    let key = format!("api\u{1f}all\u{1f}{}", (i + w) % keys);
                    match store::take(&h, slots, &key, &p, 1) {
                        Ok(t) if t.take.allowed => admitted += 1,
                        Ok(_) => {}
                        Err(e) => return Err(format!("take failed: {e:?}")),
                    }
                }
                Ok(admitted)
            })
        })
        .collect();
    let total = handles
        .into_iter()
        .map(|h| match h.join() {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => panic!("{e}"),
            Err(_) => panic!("worker thread panicked"),
        })
        .sum();
    (total, host)
}

#[test]
fn four_workers_admit_exactly_capacity() {
    for _ in 0..20 {
        let (admitted, _) = race(4, 100, 50, 1000, 1);
        assert_eq!(admitted, 50);
    }
}

#[test]
fn racing_creation_of_many_keys_stays_exact() {
    // 8 keys created concurrently by 8 workers: each key admits exactly 3.
    let (admitted, host) = race(8, 64, 3, 1000, 8);
    assert_eq!(admitted, 8 * 3);
    assert!(host.shared_len() <= 8);
}

#[test]
fn a_full_table_under_contention_never_grows() {
    let (_, host) = race(4, 2000, 5, 16, 2000);
    assert!(host.shared_len() <= 16, "{} keys", host.shared_len());
}
