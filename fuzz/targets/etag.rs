//! Entity tags, `If-None-Match` lists and `If-Modified-Since` against a
//! stored response's validators.
use meshguard::cache::etag;

pub fn run(data: &[u8]) {
    let (a, b) = data.split_at(data.iter().position(|c| *c == 0).unwrap_or(data.len()));
    let b = b.get(1..).unwrap_or_default();
    if let (Some(x), Some(y)) = (etag::parse(a), etag::parse(b)) {
        if etag::strong_eq(&x, &y) {
            assert!(etag::weak_eq(&x, &y));
        }
    }
    let list = etag::parse_list(a);
    assert!(list.len() <= a.len() + 1);
    let stored = vec![
        ("etag".to_string(), b.to_vec()),
        ("last-modified".to_string(), b.to_vec()),
        ("date".to_string(), b.to_vec()),
    ];
    let _ = etag::if_none_match_hits(&[a], &stored);
    let _ = etag::not_modified_since(a, &stored, 1_700_000_000, 1_700_000_100);
    let req = super::common::fields(data);
    let _ = etag::is_conditional(&req);
    let _ = etag::answer_304(&req, &stored, 1_700_000_000, 1_700_000_100);
}
