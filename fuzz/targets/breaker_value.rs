//! A circuit breaker's state as read back from shared data: the codec,
//! and admit / record / release over a corrupt, truncated or foreign value.
use meshguard::breaker::{self, codec, BreakerPolicy, Outcome};
use meshguard::host::fake::FakeHost;

pub fn run(data: &[u8]) {
    if let Some(s) = codec::decode(data) {
        // What decodes re-encodes to the same bytes.
        assert_eq!(codec::encode(&s), data);
    }
    let mut r = super::common::Bytes(data);
    let host = FakeHost::new(r.u64());
    let policy = BreakerPolicy::default();
    let metrics = breaker::BreakerMetrics::none();
    host.put_raw(&breaker::shared_key("k"), r.rest());
    for i in 0..4u8 {
        let (adm, ticket) = breaker::admit_ticket(&host, &policy, &metrics, "k");
        let _ = adm;
        match i % 3 {
            0 => breaker::record(&host, &policy, &metrics, "k", Outcome::Failure, ticket),
            1 => breaker::record(&host, &policy, &metrics, "k", Outcome::Success, ticket),
            _ => breaker::release(&host, &metrics, "k", ticket),
        }
        host.advance(std::time::Duration::from_secs(3));
    }
    let _ = breaker::snapshot(&host, "k");
}
