//! Route matching (README "Routes"): every `match` field is optional and
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

/// Index of the first route whose matcher accepts `req`.
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

    #[test]
    fn first_matching_route_wins() {
        let routes = [m(r#"{"path_prefix": "/api/"}"#), m("{}")];
        let r = req("GET", "/api/x", "h", &[]);
        assert_eq!(find(&routes, &r, |x| x).map(|(i, _)| i), Some(0));
        let r = req("GET", "/web", "h", &[]);
        assert_eq!(find(&routes, &r, |x| x).map(|(i, _)| i), Some(1));
    }
}
