//! A cache entry's encoding (what a slot run holds once reassembled):
//! `Entry::decode` / `EntryView::parse` and every accessor, on raw bytes
//! and on valid encodings with one corruption.
use meshguard::cache::entry::{Entry, EntryView};

fn walk(b: &[u8]) {
    if let Ok(v) = EntryView::parse(b) {
        let n = v.vary_names().count();
        assert!(n <= v.vary_names().count());
        assert_eq!(v.headers().count(), v.header_count());
        let _ = v.body();
        let e = v.to_entry();
        // What decodes re-encodes to an encoding that decodes the same (not
        // always to the same bytes: the stored freshness facts are derived
        // from the headers again).
        let again_bytes = e.encode();
        assert_eq!(
            again_bytes.as_deref().map(Entry::decode),
            Some(Ok(e.clone()))
        );
        let again = EntryView::again(b, v.meta());
        assert_eq!(again.to_entry(), e);
    }
    let _ = Entry::decode(b);
}

pub fn run(data: &[u8]) {
    walk(data);
    // Structured: a valid entry from the input, then one corruption.
    let mut r = super::common::Bytes(data);
    let mut e = Entry {
        request_time_ns: r.u64(),
        response_time_ns: r.u64(),
        status: r.u16(),
        ..Default::default()
    };
    for _ in 0..(r.u8() % 4) {
        e.vary_names
            .push(String::from_utf8_lossy(r.slice(16)).into_owned());
    }
    for _ in 0..(r.u8() % 6) {
        let n = String::from_utf8_lossy(r.slice(16)).to_ascii_lowercase();
        let v = r.slice(64).to_vec();
        e.headers.push((n, v));
    }
    let (at, x, cut) = (r.u16() as usize, r.u8(), r.u8());
    e.body = r.rest().to_vec();
    let Some(mut b) = e.encode() else { return };
    assert_eq!(b.len(), e.encoded_len());
    assert_eq!(Entry::decode(&b).as_ref(), Ok(&e));
    if !b.is_empty() {
        let i = at % b.len();
        b[i] ^= x;
        if cut & 1 == 1 {
            b.truncate(i);
        }
    }
    walk(&b);
}
