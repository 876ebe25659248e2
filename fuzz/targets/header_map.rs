//! The host's serialized header map (request and response headers as Envoy
//! hands them to the module), the request built from it, and the request
//! helpers that read untrusted parts (query, cookies, client IP, percent
//! decoding, authority).
use meshguard::host::header_map::{self, HeaderMap};
use meshguard::request::{self, Headers, Request};

pub fn run(data: &[u8]) {
    let pairs = header_map::decode_pairs(data);
    let count = header_map::pair_count(data);
    let mut visited = 0;
    let v = header_map::visit_pairs(data, |_, _| visited += 1);
    if let Some(p) = &pairs {
        assert_eq!(v, Some(p.len()));
        // What decodes re-encodes to a map that decodes the same.
        let m = HeaderMap::from_pairs(p);
        assert_eq!(header_map::decode_pairs(&m.finish()).as_ref(), Some(p));
    }
    let _ = count;
    let mut req = Request::default();
    let headers = Headers::from_serialized(data.to_vec(), |n, v| match n {
        b":path" => req.path = String::from_utf8_lossy(v).into_owned(),
        b":authority" => req.authority = String::from_utf8_lossy(v).into_owned(),
        b":method" => req.method = String::from_utf8_lossy(v).into_owned(),
        _ => {}
    });
    for (n, v) in headers.iter() {
        let _ = (n.len(), v.len());
    }
    req.headers = headers;
    let text = String::from_utf8_lossy(data);
    if req.path.is_empty() {
        req.path = text.to_string();
    }
    let _ = req.path_only();
    let _ = req.query();
    let _ = req.query_param("a");
    let _ = req.cookie("a");
    let _ = req.host_no_port();
    for hops in [0, 1, 5] {
        for ipv6_prefix in [128, 64] {
            let _ = req.client_ip(request::ClientIpRule {
                xff_trusted_hops: hops,
                ipv6_prefix,
            });
        }
    }
    let _ = request::ip::canonical(&text, 64);
    let _ = request::path::normalize(&text, request::path::EscapedSlashes::Reject);
    let _ = request::path::normalize(&text, request::path::EscapedSlashes::Keep);
    let mut r2 = req.clone();
    let _ = r2.normalize_path(request::path::EscapedSlashes::Keep);
    r2.fold_path_case();
    let _ = r2.match_path();
    let _ = request::percent_decode(&text);
    let _ = request::strip_port(&text);
}
