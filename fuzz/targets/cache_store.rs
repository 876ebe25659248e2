//! The cache's slot table as read back from shared data: heads, chunk
//! runs, checksums and fill locks, over raw values and over entries really
//! written then corrupted (a byte changed, a chunk truncated or replaced by
//! another version's bytes).
use meshguard::cache::entry::Entry;
use meshguard::cache::store::{self, SlotState, Store, WriteOutcome};
use meshguard::cache::CacheStoreConfig;
use meshguard::host::fake::FakeHost;
use meshguard::host::Host;

pub fn run(data: &[u8]) {
    let mut r = super::common::Bytes(data);
    let host = FakeHost::new(1_700_000_000_000_000_000);
    let cfg = CacheStoreConfig {
        max_bytes: 8192,
        max_entry_bytes: 4096,
    };
    let st = Store::new(&host, &cfg);
    let slots = st.layout.slots;
    let mode = r.u8();
    let mut written = None;
    if mode & 1 == 0 {
        // Raw values in the first slots and lock keys.
        for i in 0..8u32.min(slots) {
            let v = r.slice(600);
            if !v.is_empty() {
                host.put_raw(&store::chunk_key(i), v);
            }
        }
        for i in 0..2u32.min(st.layout.locks) {
            let v = r.slice(64);
            if !v.is_empty() {
                host.put_raw(&store::lock_key(i), v);
            }
        }
    } else {
        let mut uri = [0u8; 32];
        uri[0] = r.u8();
        let e = Entry {
            primary: [r.u8(); 32],
            secondary: [r.u8(); 32],
            status: 200,
            headers: vec![("etag".into(), r.slice(40).to_vec())],
            body: r.slice(3000).to_vec(),
            ..Default::default()
        };
        if let WriteOutcome::Stored { slot, .. } = st.write(&uri, &e) {
            written = Some((uri, slot, e));
        }
        // Corruptions: (slot, byte, xor, truncate).
        for _ in 0..(r.u8() % 3) {
            let slot = u32::from(r.u8()) % slots.max(1);
            let key = store::chunk_key(slot);
            if let Ok((Some(mut v), _)) = host.shared_get(&key) {
                if !v.is_empty() {
                    let i = r.u16() as usize % v.len();
                    v[i] ^= r.u8() | 1;
                    if r.u8() & 1 == 1 {
                        v.truncate(i);
                    }
                    host.put_raw(&key, &v);
                }
            }
            written = None;
        }
    }
    for slot in 0..slots {
        if let (SlotState::Head(h), _) = st.read_head(slot) {
            if let Some(e) = st.read_entry(slot, &h) {
                let _ = e.encoded_len();
            }
            let _ = st.probe(&h.uri, &h.primary, |v| {
                v.headers().count() == v.header_count()
                    && v.vary_names().count() <= 16
                    && !v.body().is_empty()
            });
            let _ = st.matching_heads(&h.uri, None);
        }
    }
    // An entry written and untouched reads back exactly.
    if let Some((uri, slot, e)) = written {
        if let (SlotState::Head(h), _) = st.read_head(slot) {
            assert_eq!(h.uri, uri);
            assert_eq!(st.read_entry(slot, &h).as_ref(), Some(&e));
        }
    }
    let _ = st.try_lock(&[r.u8(); 32]);
    let _ = st.invalidate(&[0u8; 32]);
}
