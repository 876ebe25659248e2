//! Where tokens come from (`from`), and how to remove them (`forward: false`).

use super::headers::{valid_header_name, HeaderOp, HEADER_EXPECTED};
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
                if !valid_header_name(h) {
                    return Err(ConfigError::expected(
                        format!("{path}.header"),
                        HEADER_EXPECTED,
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
                        let (head, rest) = v.split_at_checked(p.len())?;
                        if !head.eq_ignore_ascii_case(p) {
                            return None;
                        }
                        rest
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

    /// Every token at this location: each value of the header (with the
    /// prefix), each cookie or query parameter of that name; empty values
    /// hold none.
    pub fn find_all<'r>(&self, req: &'r Request) -> Vec<Cow<'r, [u8]>> {
        let mut out: Vec<Cow<'r, [u8]>> = Vec::new();
        match self {
            Source::Header { name, prefix } => {
                let values = req
                    .headers
                    .raw_iter()
                    .filter(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
                    .map(|(_, v)| v);
                for v in values {
                    let rest = match prefix {
                        Some(p) => match v.get(..p.len()) {
                            Some(head) if head.eq_ignore_ascii_case(p.as_bytes()) => {
                                v.get(p.len()..).unwrap_or_default()
                            }
                            _ => continue,
                        },
                        None => v,
                    };
                    out.push(Cow::Borrowed(trim(rest)));
                }
            }
            Source::Cookie(name) => {
                for (k, v, _) in cookie_pairs(req) {
                    if k == name {
                        out.push(Cow::Owned(v.trim_matches('"').as_bytes().to_vec()));
                    }
                }
            }
            Source::Query(name) => {
                for pair in req.query().into_iter().flat_map(|q| q.split('&')) {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    if percent_decode(k).as_deref() == Some(name.as_str()) {
                        if let Some(v) = percent_decode(v) {
                            out.push(Cow::Owned(v.into_bytes()));
                        }
                    }
                }
            }
        }
        out.retain(|t| !t.is_empty());
        out
    }
}

/// The cookies of every `Cookie` header in order, as `(name, value, the
/// pair as sent)`, trimmed (headers that are not text hold none).
fn cookie_pairs(req: &Request) -> impl Iterator<Item = (&str, &str, &str)> + '_ {
    req.header_all("cookie")
        .filter_map(|v| std::str::from_utf8(v).ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(|c| match c.split_once('=') {
            Some((k, v)) => (k.trim(), v.trim(), c),
            None => (c, "", c),
        })
}

/// The header operations that leave the upstream exactly one token: the
/// one in `kept` (a provider with `forward: true`; its location keeps only
/// its first value, the one verified), and no other token location of
/// `sources` (every location of every provider of the route). A location
/// absent from the request costs nothing.
pub fn scrub<'a>(sources: &'a [Source], kept: Option<&Source>, req: &Request) -> Vec<HeaderOp<'a>> {
    let mut ops = Vec::new();
    let kept_header = match kept {
        Some(Source::Header { name, .. }) => Some(name.as_str()),
        _ => None,
    };
    // Headers, each name once (the first source naming it decides).
    for (i, s) in sources.iter().enumerate() {
        if let Source::Header { name, .. } = s {
            let named_before = sources.get(..i).is_some_and(|before| {
                before
                    .iter()
                    .any(|b| matches!(b, Source::Header { name: n, .. } if n == name))
            });
            if named_before {
                continue;
            }
            if Some(name.as_str()) == kept_header {
                let mut values = req.header_all(name);
                if let (Some(first), Some(_)) = (values.next(), values.next()) {
                    ops.push(HeaderOp::Set(Cow::Borrowed(name), first.to_vec()));
                }
            } else if req.header(name).is_some() {
                ops.push(HeaderOp::Remove(Cow::Borrowed(name)));
            }
        }
    }
    // Cookies: one rewrite of the `Cookie` header for all of them.
    let kept_cookie = match kept {
        Some(Source::Cookie(n)) => Some(n.as_str()),
        _ => None,
    };
    let drop_cookie = |k: &str| {
        sources
            .iter()
            .any(|s| matches!(s, Source::Cookie(n) if n == k) && Some(k) != kept_cookie)
    };
    if sources.iter().any(|s| matches!(s, Source::Cookie(_))) && req.header("cookie").is_some() {
        let mut kept_pairs: Vec<&str> = Vec::new();
        let (mut changed, mut seen_kept) = (false, false);
        for (k, _, pair) in cookie_pairs(req) {
            let dup_of_kept = Some(k) == kept_cookie && std::mem::replace(&mut seen_kept, true);
            if drop_cookie(k) || dup_of_kept {
                changed = true;
            } else {
                kept_pairs.push(pair);
            }
        }
        // Several `Cookie` lines are joined into one when anything changes.
        if changed {
            ops.push(if kept_pairs.is_empty() {
                HeaderOp::Remove("cookie".into())
            } else {
                HeaderOp::Set("cookie".into(), kept_pairs.join("; ").into_bytes())
            });
        }
    }
    // Query parameters: one rewrite of `:path` for all of them.
    let kept_query = match kept {
        Some(Source::Query(n)) => Some(n.as_str()),
        _ => None,
    };
    if let Some(q) = req.query() {
        if sources.iter().any(|s| matches!(s, Source::Query(_))) {
            let mut seen_kept = false;
            let mut changed = false;
            let kept_params: Vec<&str> = q
                .split('&')
                .filter(|pair| {
                    let k = pair.split_once('=').map_or(*pair, |(k, _)| k);
                    let Some(k) = percent_decode(k) else {
                        return true;
                    };
                    let keep = if Some(k.as_str()) == kept_query {
                        !std::mem::replace(&mut seen_kept, true)
                    } else {
                        !sources
                            .iter()
                            .any(|s| matches!(s, Source::Query(n) if *n == k))
                    };
                    changed |= !keep;
                    keep
                })
                .collect();
            if changed {
                let frag = req.path.find('#').map_or("", |i| &req.path[i..]);
                let mut path = req.path_only().to_string();
                if !kept_params.is_empty() {
                    path.push('?');
                    path.push_str(&kept_params.join("&"));
                }
                path.push_str(frag);
                ops.push(HeaderOp::Set(":path".into(), path.into_bytes()));
            }
        }
    }
    ops
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
    // Leading and trailing `u8::is_ascii_whitespace` bytes removed.
    b.trim_ascii()
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
        let q = Source::Query("access_token".into());
        let c = Source::Cookie("at".into());
        let h = header("authorization", Some("Bearer "));
        let r = req(
            "/p?a=1&access_token=q1&b=2#f",
            &[("cookie", b"a=1; at=tok; b=2")],
        );
        assert_eq!(
            scrub(std::slice::from_ref(&q), None, &r),
            vec![HeaderOp::Set(":path".into(), b"/p?a=1&b=2#f".to_vec())]
        );
        assert_eq!(
            scrub(std::slice::from_ref(&c), None, &r),
            vec![HeaderOp::Set("cookie".into(), b"a=1; b=2".to_vec())]
        );
        let only = req("/p?access_token=q1", &[("cookie", b"at=tok")]);
        assert_eq!(
            scrub(std::slice::from_ref(&c), None, &only),
            vec![HeaderOp::Remove("cookie".into())]
        );
        assert_eq!(
            scrub(std::slice::from_ref(&q), None, &only),
            vec![HeaderOp::Set(":path".into(), b"/p".to_vec())]
        );
        // A header named by several providers: one operation, the first
        // source naming it decides (kept there, kept everywhere).
        let h2 = header("authorization", None);
        let x = header("x-token", None);
        let two = req("/", &[("authorization", b"Bearer a"), ("x-token", b"t")]);
        assert_eq!(
            scrub(&[h.clone(), x.clone(), h2.clone(), x.clone()], None, &two),
            vec![
                HeaderOp::Remove("authorization".into()),
                HeaderOp::Remove("x-token".into())
            ]
        );
        assert_eq!(
            scrub(&[h.clone(), x.clone(), h2.clone()], Some(&h2), &two),
            vec![HeaderOp::Remove("x-token".into())]
        );
        // Absent locations cost nothing.
        assert_eq!(
            scrub(&[h.clone(), q.clone(), c.clone()], None, &req("/p", &[])),
            vec![]
        );
        assert_eq!(
            scrub(
                std::slice::from_ref(&h),
                None,
                &req("/", &[("authorization", b"Bearer x")])
            ),
            vec![HeaderOp::Remove("authorization".into())]
        );
    }

    #[test]
    fn every_other_token_location_is_scrubbed_and_the_kept_one_holds_one_value() {
        let h = header("authorization", Some("Bearer "));
        let c = Source::Cookie("at".into());
        let s = Source::Cookie("session".into());
        let q = Source::Query("token".into());
        let r = req(
            "/p?token=A&x=1&token=B",
            &[
                ("authorization", b"Bearer good"),
                ("authorization", b"Bearer forged"),
                ("cookie", b"at=forged; keep=1"),
                ("cookie", b"session=s1; session=s2"),
            ],
        );
        let all = [h.clone(), c.clone(), s.clone(), q.clone()];
        // forward: true through the header: its first value only, the rest gone.
        let ops = scrub(&all, Some(&h), &r);
        assert_eq!(
            ops,
            vec![
                HeaderOp::Set("authorization".into(), b"Bearer good".to_vec()),
                HeaderOp::Set("cookie".into(), b"keep=1".to_vec()),
                HeaderOp::Set(":path".into(), b"/p?x=1".to_vec()),
            ]
        );
        // forward: true through a cookie: later copies of it dropped.
        let ops = scrub(&all, Some(&s), &r);
        assert_eq!(
            ops,
            vec![
                HeaderOp::Remove("authorization".into()),
                HeaderOp::Set("cookie".into(), b"keep=1; session=s1".to_vec()),
                HeaderOp::Set(":path".into(), b"/p?x=1".to_vec()),
            ]
        );
        // forward: true through the query: its first occurrence stays.
        let ops = scrub(&all, Some(&q), &r);
        assert_eq!(
            ops.last(),
            Some(&HeaderOp::Set(":path".into(), b"/p?token=A&x=1".to_vec()))
        );
        // An encoded parameter name is the same parameter.
        let enc = req("/p?t%6Fken=A&x=1", &[]);
        assert_eq!(
            scrub(std::slice::from_ref(&q), None, &enc),
            vec![HeaderOp::Set(":path".into(), b"/p?x=1".to_vec())]
        );
    }

    #[test]
    fn every_token_at_a_location_is_found() {
        let h = header("authorization", Some("Bearer "));
        let r = req(
            "/p?token=A&token=&token=B%2E",
            &[
                ("authorization", b"Bearer one"),
                ("authorization", b"Basic two"),
                ("authorization", b"bearer three "),
                ("cookie", b"at=c1; at=\"c2\""),
                ("cookie", b"at=c3"),
            ],
        );
        let all = |s: &Source| -> Vec<Vec<u8>> {
            s.find_all(&r).into_iter().map(|t| t.into_owned()).collect()
        };
        assert_eq!(all(&h), vec![b"one".to_vec(), b"three".to_vec()]);
        assert_eq!(
            all(&Source::Cookie("at".into())),
            vec![b"c1".to_vec(), b"c2".to_vec(), b"c3".to_vec()]
        );
        assert_eq!(
            all(&Source::Query("token".into())),
            vec![b"A".to_vec(), b"B.".to_vec()]
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
