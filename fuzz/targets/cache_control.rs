//! `Cache-Control` (and `Pragma`) of requests and responses: the directive
//! list grammar, delta-seconds, field-name lists.
use meshguard::cache::directives::{self, RequestDirectives, ResponseDirectives};

pub fn run(data: &[u8]) {
    let _ = directives::parse_list(data.split(|b| *b == b'\n'));
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = directives::delta_seconds(s);
    }
    let mut h = super::common::fields(data);
    if h.is_empty() {
        h.push(("cache-control".to_string(), data.to_vec()));
    }
    let r = ResponseDirectives::parse(&h);
    let _ = (r.has_explicit_max_age(), r.forbids_stale());
    let _ = RequestDirectives::parse(&h);
    let one = vec![
        ("cache-control".to_string(), data.to_vec()),
        ("pragma".to_string(), data.to_vec()),
    ];
    let _ = ResponseDirectives::parse(&one);
    let _ = RequestDirectives::parse(&one);
}
