//! The headers meshguard sets from verified claims, their names and
//! spellings, and the changes made to a request ([`HeaderOp`]).

use crate::request::Request;
use serde_json::Value;
use std::borrow::Cow;

/// Claim values longer than this are not forwarded as headers.
pub const MAX_CLAIM_HEADER_BYTES: usize = 4096;

pub(crate) const HEADER_EXPECTED: &str =
    "a header name of 1 to 128 token characters (letters, digits, -, _ ...), not a pseudo-header";

/// HTTP header field-name (RFC 9110 token), bounded; no pseudo-headers.
pub(crate) fn valid_header_name(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 128
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A header name as the family of its spellings: lower case, `_` as `-`
/// (Envoy lets `x_user` through by default and many frameworks read it as
/// `x-user`).
pub fn header_family(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'_' => '-',
            b => b.to_ascii_lowercase() as char,
        })
        .collect()
}

/// Whether header `name` is a spelling of `family` ([`header_family`]).
pub fn in_header_family(name: &[u8], family: &str) -> bool {
    name.len() == family.len()
        && name.iter().zip(family.bytes()).all(|(&a, f)| {
            let a = if a == b'_' {
                b'-'
            } else {
                a.to_ascii_lowercase()
            };
            a == f
        })
}

/// The names of the request's headers that are a spelling of one of
/// `families` (from [`super::JwtProviders::claim_headers`]), once each, as sent:
/// a client's attempt to set a header meshguard sets from verified
/// claims. The filter removes them from every request.
pub fn injected_claim_headers(families: &[String], req: &Request) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (name, _) in req.headers.raw_iter() {
        if families.iter().any(|f| in_header_family(name, f))
            && !out.iter().any(|o| o.as_bytes() == name)
        {
            out.push(String::from_utf8_lossy(name).into_owned());
        }
    }
    out
}

/// A change to the request headers, applied in order. `Set` replaces every
/// value of the header (`:path` included). Names are borrowed from the
/// configuration (or static): no copy per request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderOp<'a> {
    Remove(Cow<'a, str>),
    Set(Cow<'a, str>, Vec<u8>),
}

/// Renders a claim as a header value; `None` when it should not be sent.
pub fn claim_header_value(v: &Value) -> Option<Vec<u8>> {
    let s = match v {
        Value::String(s) => s.clone(),
        Value::Number(_) | Value::Bool(_) => v.to_string(),
        Value::Array(items) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join(","),
        Value::Object(_) => v.to_string(),
        Value::Null => return None,
    };
    if s.len() > MAX_CLAIM_HEADER_BYTES || s.chars().any(|c| c.is_control() && c != '\t') {
        return None;
    }
    Some(s.into_bytes())
}
