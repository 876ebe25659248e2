//! Where tokens come from (`from`), and how to remove them (`forward: false`).

use super::HeaderOp;
use crate::config::raw::RawTokenSource;
use crate::config::{show_str, ConfigError};
use crate::request::{percent_decode, Request};
use std::borrow::Cow;

/// One configured token location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A header; with a prefix (an auth scheme like `Bearer `), values that
    /// do not start with it (compared case-insensitively) hold no token.
    Header {
        name: String,
        prefix: Option<String>,
    },
    Cookie(String),
    Query(String),
}

/// At most this many sources per provider.
pub const MAX_SOURCES: usize = 8;

impl Source {
    /// The default: `Authorization: Bearer <token>`.
    pub fn default_list() -> Vec<Source> {
        vec![Source::Header {
            name: "authorization".into(),
            prefix: Some("Bearer ".into()),
        }]
    }

    pub fn compile(raw: &RawTokenSource, path: &str) -> Result<Source, ConfigError> {
        let one = "exactly one of \"header\", \"cookie\", \"query\"";
        let src = match (&raw.header, &raw.cookie, &raw.query) {
            (Some(h), None, None) => {
                if !super::valid_header_name(h) {
                    return Err(ConfigError::expected(
                        format!("{path}.header"),
                        super::HEADER_EXPECTED,
                        show_str(h),
                    ));
                }
                Source::Header {
                    name: h.to_ascii_lowercase(),
                    prefix: raw.prefix.clone().filter(|p| !p.is_empty()),
                }
            }
            (None, Some(c), None) => Source::Cookie(non_empty(c, &format!("{path}.cookie"))?),
            (None, None, Some(q)) => Source::Query(non_empty(q, &format!("{path}.query"))?),
            _ => return Err(ConfigError::new(path, format!("expected {one}"))),
        };
        if raw.prefix.is_some() && !matches!(src, Source::Header { .. }) {
            return Err(ConfigError::new(
                format!("{path}.prefix"),
                "expected \"prefix\" only together with \"header\"",
            ));
        }
        Ok(src)
    }

    /// The token at this location, if any (empty values hold no token).
    pub fn find<'r>(&self, req: &'r Request) -> Option<Cow<'r, [u8]>> {
        let tok: Cow<'r, [u8]> = match self {
            // Borrowed: a header token (the usual case) is not copied.
            Source::Header { name, prefix } => {
                let v = req.header(name)?;
                let rest = match prefix {
                    Some(p) => {
                        let p = p.as_bytes();
                        if v.len() < p.len() || !v[..p.len()].eq_ignore_ascii_case(p) {
                            return None;
                        }
                        &v[p.len()..]
                    }
                    None => v,
                };
                Cow::Borrowed(trim(rest))
            }
            Source::Cookie(name) => Cow::Owned(req.cookie(name)?.into_bytes()),
            Source::Query(name) => Cow::Owned(req.query_param(name)?.into_bytes()),
        };
        (!tok.is_empty()).then_some(tok)
    }

    /// The header operation that removes the token at this location (none
    /// for a query token in a request without a query).
    pub fn removal(&self, req: &Request) -> Option<HeaderOp> {
        match self {
            Source::Header { name, .. } => Some(HeaderOp::Remove(name.clone())),
            Source::Cookie(name) => {
                let mut kept: Vec<String> = Vec::new();
                for v in req.header_all("cookie") {
                    let Ok(v) = std::str::from_utf8(v) else {
                        continue;
                    };
                    for c in v.split(';') {
                        let c = c.trim();
                        let cname = c.split_once('=').map_or(c, |(k, _)| k).trim();
                        if !c.is_empty() && cname != name {
                            kept.push(c.to_string());
                        }
                    }
                }
                if kept.is_empty() {
                    Some(HeaderOp::Remove("cookie".into()))
                } else {
                    Some(HeaderOp::Set("cookie".into(), kept.join("; ").into_bytes()))
                }
            }
            Source::Query(name) => {
                let q = req.query()?;
                let kept: Vec<&str> = q
                    .split('&')
                    .filter(|pair| {
                        let k = pair.split_once('=').map_or(*pair, |(k, _)| k);
                        percent_decode(k).as_deref() != Some(name.as_str())
                    })
                    .collect();
                let frag = req.path.find('#').map_or("", |i| &req.path[i..]);
                let mut path = req.path_only().to_string();
                if !kept.is_empty() {
                    path.push('?');
                    path.push_str(&kept.join("&"));
                }
                path.push_str(frag);
                Some(HeaderOp::Set(":path".into(), path.into_bytes()))
            }
        }
    }
}

fn non_empty(s: &str, path: &str) -> Result<String, ConfigError> {
    if s.is_empty() || s.len() > 256 {
        return Err(ConfigError::expected(
            path,
            "a name of 1 to 256 characters",
            show_str(s),
        ));
    }
    Ok(s.to_string())
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &b[start..end.max(start)]
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn req(path: &str, headers: &[(&str, &[u8])]) -> Request {
        Request {
            method: "GET".into(),
            path: path.into(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_vec()))
                .collect(),
            ..Default::default()
        }
    }

    fn header(name: &str, prefix: Option<&str>) -> Source {
        Source::Header {
            name: name.into(),
            prefix: prefix.map(Into::into),
        }
    }

    #[test]
    fn finding_tokens() {
        let bearer = header("authorization", Some("Bearer "));
        let cases: Vec<(Source, Request, Option<&[u8]>)> = vec![
            (
                bearer.clone(),
                req("/", &[("authorization", b"Bearer abc")]),
                Some(b"abc"),
            ),
            (
                bearer.clone(),
                req("/", &[("authorization", b"bearer abc ")]),
                Some(b"abc"),
            ),
            (
                bearer.clone(),
                req("/", &[("authorization", b"BEARER  abc")]),
                Some(b"abc"),
            ),
            (
                bearer.clone(),
                req("/", &[("authorization", b"Basic abc")]),
                None,
            ),
            (
                bearer.clone(),
                req("/", &[("authorization", b"Bearer ")]),
                None,
            ),
            (
                bearer.clone(),
                req("/", &[("authorization", b"Bearer")]),
                None,
            ),
            (bearer.clone(), req("/", &[]), None),
            (
                header("x-token", None),
                req("/", &[("x-token", b" t1 ")]),
                Some(b"t1"),
            ),
            (
                Source::Cookie("at".into()),
                req("/", &[("cookie", b"a=1; at=tok")]),
                Some(b"tok"),
            ),
            (
                Source::Cookie("at".into()),
                req("/", &[("cookie", b"at=")]),
                None,
            ),
            (
                Source::Query("access_token".into()),
                req("/p?x=1&access_token=q1", &[]),
                Some(b"q1"),
            ),
            (
                Source::Query("access_token".into()),
                req("/p?x=1", &[]),
                None,
            ),
        ];
        for (src, r, want) in cases {
            assert_eq!(src.find(&r).as_deref(), want, "{src:?} {:?}", r.headers);
        }
    }

    #[test]
    fn removing_tokens() {
        let r = req(
            "/p?a=1&access_token=q1&b=2#f",
            &[("cookie", b"a=1; at=tok; b=2")],
        );
        assert_eq!(
            Source::Query("access_token".into()).removal(&r),
            Some(HeaderOp::Set(":path".into(), b"/p?a=1&b=2#f".to_vec()))
        );
        assert_eq!(
            Source::Cookie("at".into()).removal(&r),
            Some(HeaderOp::Set("cookie".into(), b"a=1; b=2".to_vec()))
        );
        let only = req("/p?access_token=q1", &[("cookie", b"at=tok")]);
        assert_eq!(
            Source::Cookie("at".into()).removal(&only),
            Some(HeaderOp::Remove("cookie".into()))
        );
        assert_eq!(
            Source::Query("access_token".into()).removal(&only),
            Some(HeaderOp::Set(":path".into(), b"/p".to_vec()))
        );
        assert_eq!(
            header("authorization", Some("Bearer ")).removal(&only),
            Some(HeaderOp::Remove("authorization".into()))
        );
        assert_eq!(
            Source::Query("access_token".into()).removal(&req("/p", &[])),
            None
        );
    }

    #[test]
    fn source_config_errors() {
        let bad = [
            r#"{}"#,
            r#"{"header":"a","cookie":"b"}"#,
            r#"{"cookie":"b","prefix":"Bearer "}"#,
            r#"{"header":"Bad Header"}"#,
            r#"{"query":""}"#,
        ];
        for b in bad {
            let raw: RawTokenSource = serde_json::from_str(b).unwrap();
            assert!(Source::compile(&raw, "p").is_err(), "{b}");
        }
        let raw: RawTokenSource =
            serde_json::from_str(r#"{"header":"X-Tok","prefix":"Tok "}"#).unwrap();
        assert_eq!(
            Source::compile(&raw, "p").unwrap(),
            header("x-tok", Some("Tok "))
        );
    }
}
