//! A rate-limit bucket as read back from shared data: the slot value
//! decoder, and takes / refunds over corrupt, truncated or foreign values
//! (an older or newer module version) written into the slot table.
use meshguard::host::fake::FakeHost;
use meshguard::ratelimit::bucket::BucketParams;
use meshguard::ratelimit::store;

pub fn run(data: &[u8]) {
    let _ = store::decode(data);
    let mut r = super::common::Bytes(data);
    let slots = u32::from(r.u8() % 8) + 1;
    let cost = u64::from(r.u8());
    let now = r.u64();
    let host = FakeHost::new(now);
    for s in 0..slots {
        let v = r.slice(256);
        if !v.is_empty() {
            host.put_raw(store::slot_key(s).as_str(), v);
        }
    }
    let p = BucketParams {
        capacity: 5,
        refill_tokens: 1,
        refill_interval_ns: 1_000_000_000,
    };
    for id in ["a", "b", "client-1"] {
        let slot = match store::take(&host, slots, id, &p, cost) {
            Ok(t) => t.slot,
            Err(_) => u32::from(r.u8()) % slots,
        };
        host.advance(std::time::Duration::from_millis(u64::from(r.u16())));
        let _ = store::refund(&host, slot, id, &p, cost);
    }
}
