//! Route matching (docs/configuration.md, "Routes" and "Matching"): every `match` field is optional and
//! they are ANDed; an empty `match` matches everything; routes are tried in
//! order and the first match wins.
//!
//! - `path_prefix` / `path_exact` compare against the normalised path
//!   without its query (`request::path`: dot segments, merged slashes,
//!   decoded unreserved characters), byte for byte, or ignoring ASCII case
//!   with `"case_sensitive": false`.
//! - `methods`: exact, case-sensitive (HTTP methods are case-sensitive).
//! - `hosts`: `api.example.com` or `*.example.com` (any non-empty label
//!   sequence before the suffix), compared case-insensitively, port and the
//!   trailing dot of a fully qualified name (`api.example.com.`) ignored.
//! - `headers`: `{"name", "exact"}` compares the first value byte for byte;
//!   `{"name", "present": true|false}` checks presence.
//! - `grpc`: `{"service": "pkg.v1.Orders", "method": "Get"}` (method
//!   optional) matches the gRPC path `/pkg.v1.Orders/Get` (any method of
//!   the service without `method`), compared exactly, in its normalised
//!   form like `path_*`. The content-type is not looked at: a client cannot
//!   step around the route by sending another one.

use crate::config::raw::RawMatch;
use crate::config::{show_str, ConfigError};
use crate::request::Request;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default)]
pub struct RouteMatch {
    path_prefix: Option<String>,
    path_exact: Option<String>,
    methods: Vec<String>,
    hosts: Vec<HostPattern>,
    headers: Vec<HeaderMatch>,
    /// `grpc`: the service, and the method if one was given.
    grpc: Option<(String, Option<String>)>,
    /// `"case_sensitive": false`.
    ignore_case: bool,
}

#[derive(Debug, Clone, PartialEq)]
enum HostPattern {
    Exact(String),
    /// `*.example.com` stored as `.example.com`.
    Suffix(String),
}

#[derive(Debug, Clone)]
struct HeaderMatch {
    name: String,
    rule: HeaderRule,
}

#[derive(Debug, Clone)]
enum HeaderRule {
    Exact(Vec<u8>),
    Present(bool),
}

impl RouteMatch {
    pub fn compile(raw: &RawMatch, path: &str) -> Result<RouteMatch, ConfigError> {
        for (field, v) in [
            ("path_prefix", &raw.path_prefix),
            ("path_exact", &raw.path_exact),
        ] {
            if let Some(p) = v {
                if !p.starts_with('/') {
                    return Err(ConfigError::expected(
                        format!("{path}.{field}"),
                        "a path starting with \"/\"",
                        show_str(p),
                    ));
                }
            }
        }
        let mut methods = Vec::new();
        for (i, m) in raw.methods.iter().flatten().enumerate() {
            if m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphabetic()) {
                return Err(ConfigError::expected(
                    format!("{path}.methods[{i}]"),
                    "an HTTP method such as \"GET\"",
                    show_str(m),
                ));
            }
            methods.push(m.to_ascii_uppercase());
        }
        let mut hosts = Vec::new();
        for (i, h) in raw.hosts.iter().flatten().enumerate() {
            let lower = h.to_ascii_lowercase();
            let pat = if let Some(suffix) = lower.strip_prefix("*.") {
                HostPattern::Suffix(format!(".{suffix}"))
            } else {
                HostPattern::Exact(crate::request::strip_port(&lower).to_string())
            };
            let body = match &pat {
                HostPattern::Exact(s) => s.as_str(),
                HostPattern::Suffix(s) => &s[1..],
            };
            if body.is_empty() || body.contains('*') || body.contains('/') || body.contains(' ') {
                return Err(ConfigError::expected(
                    format!("{path}.hosts[{i}]"),
                    "a host name such as \"api.example.com\" or \"*.example.com\"",
                    show_str(h),
                ));
            }
            hosts.push(pat);
        }
        let mut headers = Vec::new();
        for (i, hm) in raw.headers.iter().flatten().enumerate() {
            let hp = format!("{path}.headers[{i}]");
            if hm.name.is_empty() || hm.name.bytes().any(|b| b <= b' ' || b == b':' || b >= 0x7f) {
                return Err(ConfigError::expected(
                    format!("{hp}.name"),
                    "a header name",
                    show_str(&hm.name),
                ));
            }
            let rule = match (&hm.exact, hm.present) {
                (Some(v), None) => HeaderRule::Exact(v.as_bytes().to_vec()),
                (None, Some(p)) => HeaderRule::Present(p),
                _ => {
                    return Err(ConfigError::new(
                        hp,
                        "expected exactly one of \"exact\" or \"present\"",
                    ))
                }
            };
            headers.push(HeaderMatch {
                name: hm.name.to_ascii_lowercase(),
                rule,
            });
        }
        let grpc = match &raw.grpc {
            None => None,
            Some(g) => {
                let gp = format!("{path}.grpc");
                if !crate::grpc::valid_name(&g.service) {
                    return Err(ConfigError::expected(
                        format!("{gp}.service"),
                        "a gRPC service name such as \"pkg.v1.Orders\"",
                        show_str(&g.service),
                    ));
                }
                if let Some(m) = g.method.as_deref().filter(|m| !crate::grpc::valid_name(m)) {
                    return Err(ConfigError::expected(
                        format!("{gp}.method"),
                        "a gRPC method name such as \"Get\"",
                        show_str(m),
                    ));
                }
                Some((g.service.clone(), g.method.clone()))
            }
        };
        Ok(RouteMatch {
            path_prefix: raw.path_prefix.clone(),
            path_exact: raw.path_exact.clone(),
            methods,
            hosts,
            headers,
            grpc,
            ignore_case: raw.case_sensitive == Some(false),
        })
    }

    /// Whether paths are compared ignoring ASCII case (the route's keys
    /// then read the path lower-cased: `Request::fold_path_case`).
    pub fn ignores_case(&self) -> bool {
        self.ignore_case
    }

    pub fn matches(&self, req: &Request) -> bool {
        let path = req.match_path().as_bytes();
        let same = |a: &[u8], b: &[u8]| match self.ignore_case {
            true => a.eq_ignore_ascii_case(b),
            false => a == b,
        };
        if let Some(p) = &self.path_exact {
            if !same(path, p.as_bytes()) {
                return false;
            }
        }
        if let Some(p) = &self.path_prefix {
            if !path
                .get(..p.len())
                .is_some_and(|head| same(head, p.as_bytes()))
            {
                return false;
            }
        }
        if let Some((service, method)) = &self.grpc {
            let Some((s, m)) = crate::grpc::service_method(req.match_path()) else {
                return false;
            };
            if s != service || method.as_ref().is_some_and(|want| want != m) {
                return false;
            }
        }
        if !self.methods.is_empty() && !self.methods.contains(&req.method) {
            return false;
        }
        if !self.hosts.is_empty() {
            let host = req.host_no_port();
            let ok = self.hosts.iter().any(|p| match p {
                HostPattern::Exact(h) => *h == host,
                HostPattern::Suffix(s) => host.len() > s.len() && host.ends_with(s.as_str()),
            });
            if !ok {
                return false;
            }
        }
        self.headers.iter().all(|hm| match &hm.rule {
            HeaderRule::Exact(v) => req.header(&hm.name) == Some(v.as_slice()),
            HeaderRule::Present(p) => req.header(&hm.name).is_some() == *p,
        })
    }
}

/// Index of the first route whose matcher accepts `req` (a linear scan:
/// [`RouteIndex::find`] is the same answer in time that does not grow
/// with the number of routes).
pub fn find<'a, T>(
    routes: &'a [T],
    req: &Request,
    matcher: impl Fn(&T) -> &RouteMatch,
) -> Option<(usize, &'a T)> {
    routes
        .iter()
        .enumerate()
        .find(|(_, r)| matcher(r).matches(req))
}

/// Below this many routes a linear scan is cheaper than the index's
/// look-ups.
const INDEX_FROM: usize = 16;

/// Where routes are found by what they require, so that choosing one costs
/// a few look-ups whatever the number of routes, first match still
/// winning. Each route is filed under ONE condition every request it
/// matches must meet (the most selective it has: an exact path, an exact
/// header value, an exact host, a path prefix), or among the routes tried
/// for every request. A request's candidates are the routes filed under
/// its own path, header values, host and path prefixes, plus those; they
/// are tried in configuration order with the full matcher, so the answer
/// is exactly [`find`]'s.
#[derive(Debug, Default)]
pub struct RouteIndex {
    /// Too few routes: scan.
    linear: bool,
    exact_path: BTreeMap<String, Vec<usize>>,
    /// Routes with `"case_sensitive": false`, paths lower-cased.
    exact_path_ci: BTreeMap<String, Vec<usize>>,
    /// By header name, then first value.
    header: Vec<(String, RoutesByValue)>,
    host: BTreeMap<String, Vec<usize>>,
    prefix: BTreeMap<String, Vec<usize>>,
    prefix_ci: BTreeMap<String, Vec<usize>>,
    /// The distinct prefix lengths (bytes), for the look-ups.
    prefix_lens: Vec<usize>,
    prefix_ci_lens: Vec<usize>,
    /// Routes with nothing to file them under.
    always: Vec<usize>,
}

impl RouteIndex {
    pub fn new<'a>(matchers: impl ExactSizeIterator<Item = &'a RouteMatch>) -> RouteIndex {
        let mut ix = RouteIndex {
            linear: matchers.len() < INDEX_FROM,
            ..RouteIndex::default()
        };
        if ix.linear {
            return ix;
        }
        for (i, m) in matchers.enumerate() {
            let exact_header = m.headers.iter().find_map(|h| match &h.rule {
                HeaderRule::Exact(v) => Some((h.name.clone(), v.clone())),
                HeaderRule::Present(_) => None,
            });
            // Every host exact: filed under each.
            let exact_hosts: Option<Vec<&String>> = (!m.hosts.is_empty())
                .then(|| {
                    m.hosts
                        .iter()
                        .map(|h| match h {
                            HostPattern::Exact(h) => Some(h),
                            HostPattern::Suffix(_) => None,
                        })
                        .collect()
                })
                .flatten();
            if let Some(p) = &m.path_exact {
                match m.ignore_case {
                    true => &mut ix.exact_path_ci,
                    false => &mut ix.exact_path,
                }
                .entry(fold(p, m.ignore_case))
                .or_default()
                .push(i);
            } else if let Some((name, value)) = exact_header {
                let at = match ix.header.iter().position(|(n, _)| *n == name) {
                    Some(at) => at,
                    None => {
                        ix.header.push((name, BTreeMap::new()));
                        ix.header.len() - 1
                    }
                };
                if let Some((_, by_value)) = ix.header.get_mut(at) {
                    by_value.entry(value).or_default().push(i);
                }
            } else if let Some(hosts) = exact_hosts {
                for h in hosts {
                    ix.host.entry(h.clone()).or_default().push(i);
                }
            } else if let Some(p) = &m.path_prefix {
                let (map, lens) = match m.ignore_case {
                    true => (&mut ix.prefix_ci, &mut ix.prefix_ci_lens),
                    false => (&mut ix.prefix, &mut ix.prefix_lens),
                };
                map.entry(fold(p, m.ignore_case)).or_default().push(i);
                if !lens.contains(&p.len()) {
                    lens.push(p.len());
                }
            } else {
                ix.always.push(i);
            }
        }
        ix
    }

    /// The first route whose matcher accepts `req`: [`find`]'s answer.
    pub fn find<'a, T>(
        &self,
        routes: &'a [T],
        req: &Request,
        matcher: impl Fn(&T) -> &RouteMatch,
    ) -> Option<(usize, &'a T)> {
        if self.linear {
            return find(routes, req, matcher);
        }
        let mut cands: Vec<usize> = self.always.clone();
        let path = req.match_path();
        let mut add = |v: Option<&Vec<usize>>| {
            if let Some(v) = v {
                cands.extend_from_slice(v);
            }
        };
        add(self.exact_path.get(path));
        let lower = (!self.exact_path_ci.is_empty() || !self.prefix_ci.is_empty())
            .then(|| path.to_ascii_lowercase());
        if let Some(l) = &lower {
            add(self.exact_path_ci.get(l.as_str()));
            for &n in &self.prefix_ci_lens {
                add(l.get(..n).and_then(|head| self.prefix_ci.get(head)));
            }
        }
        for &n in &self.prefix_lens {
            add(path.get(..n).and_then(|head| self.prefix.get(head)));
        }
        for (name, by_value) in &self.header {
            if let Some(v) = req.header(name) {
                add(by_value.get(v));
            }
        }
        if !self.host.is_empty() {
            add(self.host.get(req.host_no_port().as_str()));
        }
        cands.sort_unstable();
        cands.dedup();
        cands.into_iter().find_map(|i| {
            let r = routes.get(i)?;
            matcher(r).matches(req).then_some((i, r))
        })
    }
}

/// Routes (indices) by the exact value they require.
type RoutesByValue = BTreeMap<Vec<u8>, Vec<usize>>;

fn fold(s: &str, ignore_case: bool) -> String {
    match ignore_case {
        true => s.to_ascii_lowercase(),
        false => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(json: &str) -> RouteMatch {
        let raw: RawMatch = serde_json::from_str(json).expect("json");
        RouteMatch::compile(&raw, "m").expect("compile")
    }

    fn req(method: &str, path: &str, host: &str, headers: &[(&str, &str)]) -> Request {
        Request {
            method: method.into(),
            path: path.into(),
            authority: host.into(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                .collect(),
            peer_ip: "127.0.0.1".into(),
            norm_path: None,
        }
    }

    #[test]
    fn empty_match_matches_everything() {
        assert!(m("{}").matches(&req("DELETE", "/x", "h", &[])));
    }

    #[test]
    fn path_prefix_and_exact_ignore_query() {
        let p = m(r#"{"path_prefix": "/api/"}"#);
        assert!(p.matches(&req("GET", "/api/orders?x=1", "h", &[])));
        assert!(!p.matches(&req("GET", "/apix", "h", &[])));
        let e = m(r#"{"path_exact": "/api/orders"}"#);
        assert!(e.matches(&req("GET", "/api/orders?page=2", "h", &[])));
        assert!(!e.matches(&req("GET", "/api/orders/1", "h", &[])));
    }

    #[test]
    fn paths_match_in_their_normalised_form() {
        let admin = m(r#"{"path_prefix": "/admin"}"#);
        for p in [
            "/admin/users",
            "//admin/users",
            "/%61dmin/users",
            "/x/../admin/users",
            "/./admin/users",
        ] {
            let mut r = req("GET", p, "h", &[]);
            r.normalize_path(crate::request::path::EscapedSlashes::Reject)
                .unwrap();
            assert!(admin.matches(&r), "{p}");
        }
        // Unnormalised (normalisation off), the raw path is matched.
        assert!(!admin.matches(&req("GET", "//admin/users", "h", &[])));
    }

    #[test]
    fn case_insensitive_paths_when_asked() {
        let ci = m(r#"{"path_prefix": "/Admin/", "case_sensitive": false}"#);
        assert!(ci.ignores_case());
        assert!(ci.matches(&req("GET", "/ADMIN/x", "h", &[])));
        assert!(ci.matches(&req("GET", "/admin/x", "h", &[])));
        assert!(!ci.matches(&req("GET", "/admi", "h", &[])));
        let exact = m(r#"{"path_exact": "/a/B", "case_sensitive": false}"#);
        assert!(exact.matches(&req("GET", "/A/b?x", "h", &[])));
        let cs = m(r#"{"path_prefix": "/Admin/"}"#);
        assert!(!cs.ignores_case());
        assert!(!cs.matches(&req("GET", "/admin/x", "h", &[])));
        // Multi-byte text never splits a character or panics.
        assert!(!ci.matches(&req("GET", "/é", "h", &[])));
    }

    #[test]
    fn methods_are_anded_with_paths() {
        let p = m(r#"{"path_prefix": "/api/", "methods": ["GET", "POST"]}"#);
        assert!(p.matches(&req("POST", "/api/a", "h", &[])));
        assert!(!p.matches(&req("PUT", "/api/a", "h", &[])));
        assert!(!p.matches(&req("GET", "/other", "h", &[])));
    }

    #[test]
    fn hosts_support_wildcards_and_ignore_ports_and_case() {
        let p = m(r#"{"hosts": ["api.example.com", "*.example.org"]}"#);
        assert!(p.matches(&req("GET", "/", "API.example.com:8443", &[])));
        assert!(p.matches(&req("GET", "/", "a.b.example.org", &[])));
        assert!(!p.matches(&req("GET", "/", "example.org", &[])));
        assert!(!p.matches(&req("GET", "/", "evil-example.org", &[])));
        assert!(!p.matches(&req("GET", "/", "other.com", &[])));
    }

    #[test]
    fn headers_exact_and_present() {
        let p = m(
            r#"{"headers": [{"name": "X-Env", "exact": "prod"}, {"name": "x-debug", "present": false}]}"#,
        );
        assert!(p.matches(&req("GET", "/", "h", &[("x-env", "prod")])));
        assert!(!p.matches(&req("GET", "/", "h", &[("x-env", "dev")])));
        assert!(!p.matches(&req(
            "GET",
            "/",
            "h",
            &[("x-env", "prod"), ("x-debug", "1")]
        )));
        assert!(!p.matches(&req("GET", "/", "h", &[])));
    }

    #[test]
    fn grpc_service_and_method() {
        let svc = m(r#"{"grpc": {"service": "pkg.v1.Orders"}}"#);
        let one = m(r#"{"grpc": {"service": "pkg.v1.Orders", "method": "Get"}}"#);
        let grpc = [("content-type", "application/grpc")];
        let get = req("POST", "/pkg.v1.Orders/Get", "h", &grpc);
        let list = req("POST", "/pkg.v1.Orders/List", "h", &grpc);
        assert!(svc.matches(&get) && svc.matches(&list));
        assert!(one.matches(&get) && !one.matches(&list));
        // Whatever the content-type: no way around the route.
        assert!(one.matches(&req("POST", "/pkg.v1.Orders/Get", "h", &[])));
        for p in [
            "/pkg.v1.Orders",
            "/pkg.v1.Orders/",
            "/pkg.v1.Orders/Get/x",
            "/pkg.v1.OrdersX/Get",
            "/pkg.v1/Orders/Get",
            "/other.Svc/Get",
            "/",
        ] {
            assert!(!svc.matches(&req("POST", p, "h", &grpc)), "{p}");
        }
        // The normalised path is matched, like path_prefix.
        let mut r = req("POST", "/x/../pkg.v1.Orders/%47et", "h", &grpc);
        r.normalize_path(crate::request::path::EscapedSlashes::Reject)
            .unwrap();
        assert!(one.matches(&r));
        // Query strings do not belong to the method.
        assert!(one.matches(&req("POST", "/pkg.v1.Orders/Get?x=1", "h", &grpc)));
    }

    #[test]
    fn bad_matchers_are_config_errors_with_paths() {
        let cases = [
            (r#"{"path_prefix": "api"}"#, "m.path_prefix"),
            (r#"{"methods": ["GE T"]}"#, "m.methods[0]"),
            (r#"{"hosts": ["*"]}"#, "m.hosts[0]"),
            (r#"{"headers": [{"name": "x"}]}"#, "m.headers[0]"),
            (
                r#"{"headers": [{"name": "x", "exact": "a", "present": true}]}"#,
                "m.headers[0]",
            ),
            (r#"{"grpc": {"service": ""}}"#, "m.grpc.service"),
            (r#"{"grpc": {"service": "a/b"}}"#, "m.grpc.service"),
            (
                r#"{"grpc": {"service": "a.B", "method": "x y"}}"#,
                "m.grpc.method",
            ),
        ];
        for (json, path) in cases {
            let raw: RawMatch = serde_json::from_str(json).expect("json");
            let err = RouteMatch::compile(&raw, "m").expect_err(json);
            assert_eq!(err.path, path, "{json}");
        }
    }

    /// The index answers exactly as the linear scan, over random route
    /// tables (every kind of condition, overlapping, case-insensitive) and
    /// random requests.
    #[test]
    fn the_index_finds_what_the_scan_finds() {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut rnd = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let paths = ["/a", "/a/b", "/A/b", "/b", "/b/c/d", "/", "/é", "/ab"];
        let hosts = ["x.com", "y.com", "Z.com"];
        let vals = ["1", "2", "3"];
        for _ in 0..300 {
            let n = 16 + rnd(40) as usize;
            let mut routes = Vec::new();
            for _ in 0..n {
                let mut m = serde_json::Map::new();
                let pick = |r: u64, xs: &[&str]| xs[r as usize % xs.len()].to_string();
                match rnd(6) {
                    0 => drop(m.insert("path_exact".into(), pick(rnd(8), &paths).into())),
                    1 => drop(m.insert("path_prefix".into(), pick(rnd(8), &paths).into())),
                    _ => {}
                }
                if rnd(3) == 0 {
                    m.insert("case_sensitive".into(), false.into());
                }
                if rnd(3) == 0 {
                    let hs: Vec<String> = (0..1 + rnd(2)).map(|_| pick(rnd(3), &hosts)).collect();
                    let hs = if rnd(4) == 0 {
                        vec!["*.com".to_string()]
                    } else {
                        hs
                    };
                    m.insert("hosts".into(), hs.into());
                }
                if rnd(2) == 0 {
                    let rule = if rnd(4) == 0 {
                        serde_json::json!({"name": "x-t", "present": rnd(2) == 0})
                    } else {
                        let name = ["x-t", "x-u"][rnd(2) as usize];
                        serde_json::json!({"name": name, "exact": pick(rnd(3), &vals)})
                    };
                    m.insert("headers".into(), vec![rule].into());
                }
                if rnd(5) == 0 {
                    m.insert("methods".into(), vec!["POST"].into());
                }
                let raw: RawMatch = serde_json::from_value(m.into()).unwrap();
                routes.push(RouteMatch::compile(&raw, "m").unwrap());
            }
            let ix = RouteIndex::new(routes.iter());
            assert!(!ix.linear);
            for _ in 0..50 {
                let mut hs: Vec<(&str, &str)> = Vec::new();
                if rnd(2) == 0 {
                    hs.push(("x-t", vals[rnd(3) as usize]));
                }
                if rnd(2) == 0 {
                    hs.push(("x-u", vals[rnd(3) as usize]));
                }
                let method = if rnd(4) == 0 { "POST" } else { "GET" };
                let path = format!(
                    "{}{}",
                    paths[rnd(8) as usize],
                    ["", "/x", "?q"][rnd(3) as usize]
                );
                let r = req(method, &path, hosts[rnd(3) as usize], &hs);
                let want = find(&routes, &r, |x| x).map(|(i, _)| i);
                let got = ix.find(&routes, &r, |x| x).map(|(i, _)| i);
                assert_eq!(got, want, "{path} {hs:?} {routes:?}");
            }
        }
    }

    #[test]
    fn first_matching_route_wins() {
        let routes = [m(r#"{"path_prefix": "/api/"}"#), m("{}")];
        let r = req("GET", "/api/x", "h", &[]);
        assert_eq!(find(&routes, &r, |x| x).map(|(i, _)| i), Some(0));
        let r = req("GET", "/web", "h", &[]);
        assert_eq!(find(&routes, &r, |x| x).map(|(i, _)| i), Some(1));
    }
}
