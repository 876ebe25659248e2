use super::*;
use crate::host::fake::FakeHost;

const S: u64 = 1_000_000_000;
const TTL: u64 = 70_000_000;

fn ok(remaining: u64, reset: u64) -> LimitStatus {
    LimitStatus {
        over: false,
        limit: Some((100, 60)),
        remaining,
        reset_secs: Some(reset),
    }
}

fn over(reset: Option<u64>) -> LimitStatus {
    LimitStatus {
        over: true,
        limit: Some((100, 60)),
        remaining: 0,
        reset_secs: reset,
    }
}

#[test]
fn codec_round_trips_and_keeps_the_identity() {
    let st = LeaseState {
        tokens: 7,
        window_end_ns: 11,
        denied_until_ns: 12,
        inflight_until_ns: 13,
        granted: 50,
        spent: 43,
        limit: 100,
        unit_secs: 60,
        svc_remaining: 9,
        cap: 4,
        gen: 3,
        failed: true,
    };
    let v = encode("api\u{1f}quota\u{1f}alice", &st);
    assert_eq!(v.len(), HEADER_LEN + "api\u{1f}quota\u{1f}alice".len());
    let (back, id) = decode(&v).unwrap();
    assert_eq!(back, st);
    assert_eq!(id, "api\u{1f}quota\u{1f}alice".as_bytes());
}

#[test]
fn truncated_or_garbage_values_decode_as_no_lease() {
    let v = encode(
        "id",
        &LeaseState {
            tokens: 5,
            ..Default::default()
        },
    );
    for n in 0..HEADER_LEN {
        assert!(decode(&v[..n]).is_none(), "truncated to {n} bytes");
    }
    let mut wrong_version = v.clone();
    wrong_version[0] = 2;
    assert!(decode(&wrong_version).is_none());
    let mut bad_flag = v.clone();
    bad_flag[HEADER_LEN - 1] = 7;
    assert!(decode(&bad_flag).is_none());
    // Arbitrary bytes never panic.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for len in 0..200 {
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let _ = decode(&bytes);
    }
}

#[test]
fn garbage_in_the_slot_grants_nothing_and_is_replaced() {
    let host = FakeHost::new(0);
    let id = identity("api", "quota", &["alice".into()]);
    host.shared_set(&slot_key(&id, 16), b"\x01garbage", None)
        .unwrap();
    let (spend, _) = update(&host, 16, &id, |st, replaced| {
        assert_eq!(replaced, 0);
        (spend(st, 10, 1, 5 * S, TTL), true)
    })
    .unwrap();
    // No hits from garbage: the caller must refill first.
    assert_eq!(
        spend,
        Spend::Empty {
            refill: Some(10),
            failed: false,
            gen: 0
        }
    );
    assert!(peek(&host, 16, &id).is_some());
}

#[test]
fn first_spend_takes_the_flag_and_others_wait() {
    let mut st = LeaseState::default();
    let (s, _) = spend(&mut st, 50, 1, S, TTL);
    assert_eq!(
        s,
        Spend::Empty {
            refill: Some(50),
            failed: false,
            gen: 0
        }
    );
    // A second request while the refill is in flight waits; no second call.
    let (s, _) = spend(&mut st, 50, 1, S + 1, TTL);
    assert_eq!(
        s,
        Spend::Empty {
            refill: None,
            failed: false,
            gen: 0
        }
    );
    // An abandoned call blocks nobody past its deadline.
    let (s, _) = spend(&mut st, 50, 1, S + TTL, TTL);
    assert!(matches!(
        s,
        Spend::Empty {
            refill: Some(50),
            ..
        }
    ));
}

#[test]
fn a_grant_is_spent_then_refilled_at_half_once() {
    let mut st = LeaseState::default();
    let now = S;
    let _ = spend(&mut st, 10, 1, now, TTL);
    let r = record(&mut st, 10, 1, Ok(&ok(90, 60)), now);
    assert_eq!(
        r,
        Recorded {
            granted: 10,
            dropped: 0
        }
    );
    let mut refills = 0;
    for i in 0..10 {
        let (s, _) = spend(&mut st, 10, 1, now + i, TTL);
        match s {
            Spend::Admitted { remaining, refill } => {
                assert_eq!(remaining, 9 - i);
                refills += usize::from(refill.is_some());
                if remaining == 5 {
                    // Ran low inside its window: twice the grant, capped
                    // at what keeps the hits held within the lease.
                    assert_eq!(refill, Some(5));
                }
            }
            other => panic!("spend {i}: {other:?}"),
        }
    }
    assert_eq!(refills, 1, "one refill in flight at a time");
    let (s, _) = spend(&mut st, 10, 1, now + 20, TTL);
    assert!(matches!(s, Spend::Empty { refill: None, .. }));
    // The refill lands: 5 more in the same window.
    let r = record(&mut st, 5, 1, Ok(&ok(80, 59)), now + 30);
    assert_eq!(r.granted, 5);
    assert_eq!(st.tokens, 5);
}

#[test]
fn over_limit_denies_until_reset_and_drops_the_remainder() {
    let mut st = LeaseState::default();
    let _ = spend(&mut st, 10, 1, S, TTL);
    record(&mut st, 10, 1, Ok(&ok(50, 30)), S);
    let _ = spend(&mut st, 10, 1, S, TTL);
    // Refused a batch of 10: only that it did not fit; ask for half next,
    // keep the 9 hits left.
    let r = record(&mut st, 10, 1, Ok(&over(Some(3))), 2 * S);
    assert_eq!(
        r,
        Recorded {
            granted: 0,
            dropped: 0
        }
    );
    assert_eq!((st.tokens, st.cap, st.inflight_until_ns), (9, 5, 0));
    assert_eq!(next_ask(&st, 10, 1, 2 * S), 5);
    // Refused a single request's worth: denied until the reset, the rest
    // is dropped.
    let r = record(&mut st, 1, 1, Ok(&over(Some(3))), 2 * S);
    assert_eq!(
        r,
        Recorded {
            granted: 0,
            dropped: 9
        }
    );
    assert_eq!(st.cap, 0);
    let (s, _) = spend(&mut st, 10, 1, 2 * S + 1, TTL);
    assert_eq!(
        s,
        Spend::Denied {
            retry_after_secs: 3
        }
    );
    // After the reset the next request refills again.
    let (s, _) = spend(&mut st, 10, 1, 5 * S, TTL);
    assert!(matches!(
        s,
        Spend::Empty {
            refill: Some(_),
            ..
        }
    ));
}

#[test]
fn over_limit_without_reset_uses_the_unit_else_one_second() {
    let mut st = LeaseState::default();
    record(&mut st, 1, 1, Ok(&over(None)), S);
    assert_eq!(st.denied_until_ns, S + 60 * S);
    let mut st = LeaseState::default();
    let bare = LimitStatus {
        over: true,
        limit: None,
        remaining: 0,
        reset_secs: None,
    };
    record(&mut st, 1, 1, Ok(&bare), S);
    assert_eq!(st.denied_until_ns, 2 * S);
}

#[test]
fn a_lease_expires_with_its_window() {
    let mut st = LeaseState::default();
    record(&mut st, 10, 1, Ok(&ok(50, 2)), S);
    let (s, _) = spend(&mut st, 10, 1, 2 * S, TTL);
    assert!(matches!(s, Spend::Admitted { remaining: 9, .. }));
    // Past the window: the 9 left are dropped and reported.
    let (s, dropped) = spend(&mut st, 10, 1, 3 * S, TTL);
    assert_eq!(dropped, 9);
    assert!(matches!(
        s,
        Spend::Empty {
            refill: Some(_),
            ..
        }
    ));
}

#[test]
fn the_batch_adapts_to_the_rate_and_never_exceeds_the_lease() {
    let mut st = LeaseState::default();
    assert_eq!(next_ask(&st, 50, 1, S), 50);
    record(&mut st, 50, 1, Ok(&ok(1000, 1)), S);
    // Only 3 spent before the window ended: ask for 6 next.
    for _ in 0..3 {
        let _ = spend(&mut st, 50, 1, S, TTL);
    }
    let (s, dropped) = spend(&mut st, 50, 1, 3 * S, TTL);
    assert_eq!(dropped, 47);
    assert_eq!(
        s,
        Spend::Empty {
            refill: Some(6),
            failed: false,
            gen: 1
        }
    );
    record(&mut st, 6, 1, Ok(&ok(1000, 1)), 3 * S);
    // Running low inside the window: doubles (12, 24, 48, then 50 cap).
    let mut asks = Vec::new();
    let mut now = 3 * S;
    while asks.len() < 4 {
        now += 1;
        let (s, _) = spend(&mut st, 50, 1, now, TTL);
        match s {
            Spend::Admitted {
                refill: Some(a), ..
            }
            | Spend::Empty {
                refill: Some(a), ..
            } => {
                asks.push(a);
                record(&mut st, a, 1, Ok(&ok(1000, 1)), now);
            }
            _ => {}
        }
    }
    // (each also capped at `lease` minus the hits still held)
    assert_eq!(asks, vec![12, 24, 38, 31]);
    assert!(st.tokens <= 50);
    // Never more than the service said was left in the window.
    record(&mut st, 50, 1, Ok(&ok(4, 1)), now);
    assert_eq!(next_ask(&st, 50, 1, now), 4);
    // Cost is the floor.
    assert_eq!(next_ask(&st, 50, 7, now), 7);
}

#[test]
fn a_failed_refill_keeps_hits_left_and_backs_off_when_none() {
    let mut st = LeaseState::default();
    record(&mut st, 4, 1, Ok(&ok(50, 60)), S);
    let _ = spend(&mut st, 4, 1, S, TTL);
    let _ = spend(&mut st, 4, 1, S, TTL); // takes the flag at 2 left
    record(&mut st, 4, 1, Err(()), S + 10);
    assert!(st.failed);
    let (s, _) = spend(&mut st, 4, 1, S + 11, TTL);
    assert!(matches!(s, Spend::Admitted { remaining: 1, .. }));
    let (s, _) = spend(&mut st, 4, 1, S + 12, TTL);
    assert!(matches!(s, Spend::Admitted { remaining: 0, .. }));
    // None left, backing off: failure mode at once.
    let (s, _) = spend(&mut st, 4, 1, S + 13, TTL);
    assert_eq!(
        s,
        Spend::Empty {
            refill: None,
            failed: true,
            gen: 2
        }
    );
    // After the backoff, one request tries again.
    let (s, _) = spend(&mut st, 4, 1, S + 10 + FAILURE_BACKOFF_NS, TTL);
    assert!(matches!(
        s,
        Spend::Empty {
            refill: Some(_),
            failed: false,
            ..
        }
    ));
}

#[test]
fn give_back_only_within_the_window() {
    let mut st = LeaseState::default();
    record(&mut st, 5, 1, Ok(&ok(50, 1)), S);
    let _ = spend(&mut st, 5, 2, S, TTL);
    give_back(&mut st, 2, S + 1);
    assert_eq!(st.tokens, 5);
    give_back(&mut st, 2, 3 * S);
    assert_eq!(st.tokens, 5);
}

#[test]
fn another_identity_in_the_slot_is_replaced_and_its_hits_dropped() {
    let host = FakeHost::new(0);
    // Slots = 1: every identity shares the one slot.
    let a = identity("api", "q", &["alice".into()]);
    let b = identity("api", "q", &["bob".into()]);
    update(&host, 1, &a, |st, _| {
        record(st, 8, 1, Ok(&ok(50, 60)), S);
        ((), true)
    })
    .unwrap();
    let replaced = update(&host, 1, &b, |_, replaced| (replaced, true)).unwrap();
    assert_eq!(replaced, 8);
    assert!(peek(&host, 1, &a).is_none());
    assert!(peek(&host, 1, &b).is_some());
}

#[test]
fn identities_separate_routes_limits_and_values() {
    let ids = [
        identity("a", "b", &["c".into()]),
        identity("a", "b", &["c".into(), "".into()]),
        identity("a", "b", &["".into(), "c".into()]),
    ];
    for (i, x) in ids.iter().enumerate() {
        for y in ids.iter().skip(i + 1) {
            assert_ne!(x, y);
        }
    }
}

#[test]
fn lease_configuration_errors_name_their_path() {
    use crate::config::raw::RawRateLimit;
    use crate::ratelimit::policy::RouteLimits;
    let compile = |limits: serde_json::Value| {
        let raw: Vec<RawRateLimit> = serde_json::from_value(limits).unwrap();
        RouteLimits::compile(Some(&raw), "api", false, true, "routes[0]")
    };
    let ok = compile(serde_json::json!([{ "scope": "global", "lease": 50, "cost": 2 }])).unwrap();
    assert_eq!((ok.global[0].lease, ok.global[0].cost), (50, 2));
    let none = compile(serde_json::json!([{ "scope": "global" }])).unwrap();
    assert_eq!(none.global[0].lease, 0);
    for (limits, words) in [
        (
            serde_json::json!([{ "capacity": 5, "refill_interval": "1s", "lease": 5 }]),
            "local limit",
        ),
        (
            serde_json::json!([{ "scope": "global", "lease": 0 }]),
            "from 1 to 1000000",
        ),
        (
            serde_json::json!([{ "scope": "global", "lease": -3 }]),
            "from 1 to 1000000",
        ),
        (
            serde_json::json!([{ "scope": "global", "lease": 1000001 }]),
            "from 1 to 1000000",
        ),
        (
            serde_json::json!([{ "scope": "global", "lease": 2, "cost": 3 }]),
            "at least cost (3)",
        ),
    ] {
        let e = compile(limits.clone()).expect_err("refused");
        assert_eq!(e.path, "routes[0].rate_limit[0].lease", "{limits}: {e}");
        assert!(e.msg.contains(words), "{limits}: {e}");
    }
    // A leased limit cannot settle a usage-based cost: refused at `usage`.
    let e = compile(serde_json::json!([{ "scope": "global", "lease": 10,
        "usage": { "header": "x-usage-tokens" } }]))
    .expect_err("lease with usage refused");
    assert_eq!(e.path, "routes[0].rate_limit[0].usage", "{e}");
    assert!(e.msg.contains("leased limit"), "{e}");
    // Not an integer: serde's error, never a panic.
    assert!(
        serde_json::from_value::<RawRateLimit>(serde_json::json!({ "lease": "lots" })).is_err()
    );
}

#[test]
fn a_batch_too_large_for_what_is_left_halves_down_to_cost() {
    let mut st = LeaseState::default();
    let mut asks = Vec::new();
    let mut now = S;
    // The service has 3 left: 16, 8, 4 are refused, 2 fits.
    loop {
        let (s, _) = spend(&mut st, 16, 1, now, TTL);
        let ask = match s {
            Spend::Empty {
                refill: Some(a), ..
            }
            | Spend::Admitted {
                refill: Some(a), ..
            } => a,
            Spend::Admitted { .. } => break,
            other => panic!("{other:?}"),
        };
        asks.push(ask);
        let answer = if ask <= 3 {
            ok(3 - ask, 30)
        } else {
            over(Some(30))
        };
        record(&mut st, ask, 1, Ok(&answer), now);
        now += 1;
        if !answer.over {
            break;
        }
    }
    assert_eq!(asks, vec![16, 8, 4, 2]);
    // The cap lasts for the window, then is gone.
    assert_eq!(st.cap, 2);
    let (s, _) = spend(&mut st, 16, 1, now + 31 * S, TTL);
    assert!(matches!(
        s,
        Spend::Empty {
            refill: Some(_),
            ..
        }
    ));
    assert_eq!(st.cap, 0);
}

#[test]
fn a_process_never_holds_more_than_the_lease() {
    let mut st = LeaseState::default();
    let mut now = S;
    let mut pending: Option<u64> = None;
    for i in 0..10_000u64 {
        now += 1_000;
        let (s, _) = spend(&mut st, 20, 1, now, TTL);
        if let Spend::Admitted {
            refill: Some(a), ..
        }
        | Spend::Empty {
            refill: Some(a), ..
        } = s
        {
            pending = Some(a);
        }
        // Answers land a few requests later (hits keep being spent).
        if i % 7 == 0 {
            if let Some(a) = pending.take() {
                record(&mut st, a, 1, Ok(&ok(1_000_000, 60)), now);
            }
        }
        assert!(st.tokens <= 20, "holds {} at {i}", st.tokens);
    }
}
