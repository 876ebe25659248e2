//! Registered claims (`iss`, `aud`, `exp`, `nbf`, `iat`) and route claim
//! rules (`equals`, `one_of`, `contains`) over dotted claim paths.

use crate::config::raw::RawClaimRule;
use crate::config::{json, show_str, ConfigError};
use serde::de::{Deserializer as _, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Value;
use std::sync::OnceLock;

/// A token's claims: the payload's JSON text, its top-level members
/// indexed, and each member's value parsed into a [`Value`] only when
/// something asks for it (then kept). A distinct token costs one pass that
/// validates the JSON and finds the members (no allocation per member
/// name or string), plus the members the provider and route look at
/// (`iss`, `aud`, times, rule and header claims). Building a whole
/// `serde_json::Value` tree and dropping it again was ~40% of meshguard's
/// own work per new token; this way a new token costs ~26% fewer
/// instructions (callgrind, `benches/jwt_hit.rs miss`: ~39k -> ~29k), in
/// Envoy -1.7 us per distinct RS256 token (`bench/ab.py` twins).
#[derive(Default)]
pub struct Claims {
    json: Box<str>,
    members: Vec<Member>,
}

struct Member {
    name: Name,
    /// Where the member's raw JSON value is in `json`.
    value: (usize, usize),
    parsed: OnceLock<Value>,
}

/// A member's name: where it is in `json`, or decoded (it had escapes).
enum Name {
    At(usize, usize),
    Decoded(Box<str>),
}

impl Claims {
    /// Parses a payload: it must be a JSON object (RFC 7519 7.2).
    pub fn parse(payload: Vec<u8>) -> Result<Claims, &'static str> {
        const BAD: &str = "malformed token payload";
        let json = String::from_utf8(payload).map_err(|_| BAD)?;
        // Values are kept as raw text and parsed on first use, and the
        // parser does not check `\u` escapes when it only skips a value:
        // check them here, or a lone surrogate ("\ud800admin") would make
        // a claim read as absent instead of the token invalid.
        if !escapes_are_text(json.as_bytes()) {
            return Err(BAD);
        }
        let base = json.as_ptr() as usize;
        let at = |s: &str| (s.as_ptr() as usize - base, s.len());
        let found = members(&json).map_err(|_| BAD)?;
        // A claim named twice is refused (RFC 7519 4 allows either that
        // or the last one winning; parsers taking different ones is an
        // attack surface: `{"sub":"alice","sub":"admin"}`), names compared
        // decoded, at every depth (claim rules and claim headers read
        // dotted paths into object values).
        if !json::unique(found.iter().map(|(k, _)| k.as_str())) {
            return Err(DUPLICATE);
        }
        let mut members = Vec::with_capacity(found.len());
        for (name, value) in found {
            // An object or array value is checked now, building nothing
            // (it is parsed when read); the text is valid JSON, so the only
            // failures are a repeat and nesting deeper than the parser's
            // recursion limit.
            if value.get().starts_with(['{', '[']) {
                json::check(value.get()).map_err(|e| if e.is_data() { DUPLICATE } else { BAD })?;
            }
            members.push(Member {
                name: match name {
                    Key::Borrowed(n) => {
                        let (a, l) = at(n);
                        Name::At(a, l)
                    }
                    Key::Owned(n) => Name::Decoded(n.into_boxed_str()),
                },
                value: at(value.get()),
                parsed: OnceLock::new(),
            });
        }
        Ok(Claims {
            json: json.into_boxed_str(),
            members,
        })
    }

    /// The claims of a JSON value (tests, tools); `None` unless an object.
    pub fn from_value(v: &Value) -> Option<Claims> {
        v.is_object()
            .then(|| Claims::parse(v.to_string().into_bytes()).ok())
            .flatten()
    }

    /// The payload's JSON text.
    pub fn json(&self) -> &str {
        &self.json
    }

    fn text(&self, (at, len): (usize, usize)) -> &str {
        self.json.get(at..at + len).unwrap_or_default()
    }

    fn name<'a>(&'a self, m: &'a Member) -> &'a str {
        match &m.name {
            Name::At(a, l) => self.text((*a, *l)),
            Name::Decoded(n) => n,
        }
    }

    /// A top-level claim (names are unique: `parse` refused repeats).
    pub fn get(&self, name: &str) -> Option<&Value> {
        let m = self.members.iter().find(|m| self.name(m) == name)?;
        // The text was validated by the parse (syntax, and every `\u`
        // escape by `escapes_are_text`, repeats and depth of objects and
        // arrays by `json::check`): this does not fail.
        Some(
            m.parsed
                .get_or_init(|| json::parse(self.text(m.value)).unwrap_or(Value::Null)),
        )
    }
}

/// Why a token whose claims name a member twice (at any depth) is
/// refused.
pub const DUPLICATE: &str = "duplicate claim name";

/// The members of a JSON object text, values left as raw JSON text.
fn members(json: &str) -> Result<Vec<(Key<'_>, &RawValue)>, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(json);
    let found = de.deserialize_map(MembersVisitor)?;
    de.end()?;
    Ok(found)
}

/// Whether every `\u` escape in a (syntactically valid) JSON text is
/// text: a UTF-16 high surrogate is followed by a `\u` low surrogate, and
/// no low surrogate stands alone. Outside strings a valid JSON text has no
/// backslash, so scanning escapes from every backslash is exact.
fn escapes_are_text(json: &[u8]) -> bool {
    let unit = |at: usize| -> Option<u16> {
        let hex = json.get(at..at + 4)?;
        u16::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
    };
    let mut i = 0;
    while let Some(off) = json
        .get(i..)
        .and_then(|r| r.iter().position(|&b| b == b'\\'))
    {
        let at = i + off;
        match json.get(at + 1) {
            Some(b'u') => {
                let Some(u) = unit(at + 2) else {
                    return false;
                };
                match u {
                    0xD800..=0xDBFF => {
                        let low = (json.get(at + 6..at + 8) == Some(b"\\u"))
                            .then(|| unit(at + 8))
                            .flatten();
                        if !matches!(low, Some(0xDC00..=0xDFFF)) {
                            return false;
                        }
                        i = at + 12;
                    }
                    0xDC00..=0xDFFF => return false,
                    _ => i = at + 6,
                }
            }
            // Any other escape is two bytes.
            Some(_) => i = at + 2,
            None => return false,
        }
    }
    true
}

impl std::fmt::Debug for Claims {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Claims").field(&self.json).finish()
    }
}

/// Claims compare by their payload's text (the same token's claims are
/// equal).
impl PartialEq for Claims {
    fn eq(&self, other: &Claims) -> bool {
        self.json == other.json
    }
}

impl std::ops::Index<&str> for Claims {
    type Output = Value;
    /// As `serde_json::Value` indexes: `Null` when absent.
    fn index(&self, name: &str) -> &Value {
        static NULL: Value = Value::Null;
        self.get(name).unwrap_or(&NULL)
    }
}

/// A member name as the parser gave it: borrowed from the text when it
/// had no escapes.
enum Key<'de> {
    Borrowed(&'de str),
    Owned(String),
}

impl Key<'_> {
    fn as_str(&self) -> &str {
        match self {
            Key::Borrowed(s) => s,
            Key::Owned(s) => s,
        }
    }
}

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key::Borrowed(s))
            }
            fn visit_str<E>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key::Owned(s.to_owned()))
            }
            fn visit_string<E>(self, s: String) -> Result<Key<'de>, E> {
                Ok(Key::Owned(s))
            }
        }
        d.deserialize_str(V)
    }
}

/// The members of a JSON object, values left as raw JSON text.
struct MembersVisitor;

impl<'de> Visitor<'de> for MembersVisitor {
    type Value = Vec<(Key<'de>, &'de RawValue)>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::with_capacity(map.size_hint().unwrap_or(8).min(64));
        while let Some(k) = map.next_key::<Key<'de>>()? {
            out.push((k, map.next_value::<&'de RawValue>()?));
        }
        Ok(out)
    }
}

/// Time rules of a provider, in seconds.
#[derive(Debug, Clone)]
pub struct TimePolicy {
    pub skew: u64,
    pub require_exp: bool,
    pub max_lifetime: Option<u64>,
}

/// A JSON numeric date as whole seconds (fractions truncated).
fn numeric_date(claims: &Claims, name: &str) -> Result<Option<i64>, &'static str> {
    match claims.get(name) {
        None => Ok(None),
        Some(v) => match (v.as_i64(), v.as_f64()) {
            (Some(i), _) => Ok(Some(i)),
            (None, Some(f)) if f.is_finite() => Ok(Some(f as i64)),
            _ => Err("malformed time claim"),
        },
    }
}

/// Checks `exp`, `nbf`, `iat` and `max_lifetime` at `now` (seconds).
/// Returns `exp` when present (the cache uses it).
pub fn check_times(claims: &Claims, p: &TimePolicy, now: i64) -> Result<Option<i64>, &'static str> {
    let skew = i64::try_from(p.skew).unwrap_or(i64::MAX);
    let exp = numeric_date(claims, "exp")?;
    let nbf = numeric_date(claims, "nbf")?;
    let iat = numeric_date(claims, "iat")?;
    match exp {
        Some(exp) if now >= exp.saturating_add(skew) => return Err("token expired"),
        None if p.require_exp || p.max_lifetime.is_some() => return Err("missing exp claim"),
        _ => {}
    }
    if nbf.is_some_and(|nbf| now.saturating_add(skew) < nbf) {
        return Err("token not yet valid");
    }
    if iat.is_some_and(|iat| iat > now.saturating_add(skew)) {
        return Err("token issued in the future");
    }
    if let (Some(max), Some(exp)) = (p.max_lifetime, exp) {
        let from = iat.unwrap_or(now);
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        if exp.saturating_sub(from) > max {
            return Err("token lifetime exceeds max_lifetime");
        }
    }
    Ok(exp)
}

/// `aud` (a string or an array of strings) contains one of `want`.
pub fn audience_ok(claims: &Claims, want: &[String]) -> bool {
    match claims.get("aud") {
        Some(Value::String(a)) => want.iter().any(|w| w == a),
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(Value::as_str)
            .any(|a| want.iter().any(|w| w == a)),
        _ => false,
    }
}

/// Looks up a claim: the whole name as a top-level key first (claim names
/// like `https://example.com/roles` contain dots), then as a dotted path
/// into nested objects (`org.id`).
pub fn lookup<'a>(claims: &'a Claims, path: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(path) {
        return Some(v);
    }
    let mut parts = path.split('.');
    let mut cur = claims.get(parts.next()?)?;
    for part in parts {
        cur = cur.get(part)?;
    }
    Some(cur)
}

#[derive(Debug, Clone)]
enum Op {
    Equals(Value),
    OneOf(Vec<Value>),
    Contains(Value),
}

/// One route claim requirement.
#[derive(Debug, Clone)]
pub struct ClaimRule {
    pub claim: String,
    op: Op,
}

/// Longest claim path accepted in config.
const MAX_CLAIM_PATH: usize = 256;

/// Validates a claim path from config (also used by `claims_to_headers`).
pub fn check_claim_path(claim: &str, path: &str) -> Result<(), ConfigError> {
    if claim.is_empty()
        || claim.len() > MAX_CLAIM_PATH
        || claim.split('.').any(str::is_empty)
        || claim
            .chars()
            .any(|c| c.is_control() || c == '"' || c == '\\')
    {
        return Err(ConfigError::expected(
            path,
            "a claim name or dotted path like \"org.id\" (no empty segments, quotes or control characters)",
            show_str(claim),
        ));
    }
    Ok(())
}

impl ClaimRule {
    pub fn compile(raw: &RawClaimRule, path: &str) -> Result<ClaimRule, ConfigError> {
        check_claim_path(&raw.claim, &format!("{path}.claim"))?;
        let op = match (&raw.equals, &raw.one_of, &raw.contains) {
            (Some(v), None, None) => Op::Equals(v.clone()),
            (None, Some(list), None) => {
                if list.is_empty() {
                    return Err(ConfigError::expected(
                        format!("{path}.one_of"),
                        "a non-empty array of values",
                        "[]",
                    ));
                }
                Op::OneOf(list.clone())
            }
            (None, None, Some(v)) => Op::Contains(v.clone()),
            _ => {
                return Err(ConfigError::new(
                    path,
                    "expected exactly one of \"equals\", \"one_of\", \"contains\"",
                ))
            }
        };
        Ok(ClaimRule {
            claim: raw.claim.clone(),
            op,
        })
    }

    /// Does the verified claim set satisfy this rule? A missing claim never does.
    pub fn matches(&self, claims: &Claims) -> bool {
        let Some(v) = lookup(claims, &self.claim) else {
            return false;
        };
        match &self.op {
            Op::Equals(want) => v == want,
            Op::OneOf(list) => list.iter().any(|w| w == v),
            Op::Contains(want) => match v {
                Value::Array(items) => items.iter().any(|i| i == want),
                // OAuth `scope`: space-separated words.
                Value::String(s) => want
                    .as_str()
                    .is_some_and(|w| s.split(' ').any(|word| word == w)),
                _ => false,
            },
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cl(v: serde_json::Value) -> Claims {
        Claims::from_value(&v).unwrap()
    }

    fn policy(skew: u64, require_exp: bool, max_lifetime: Option<u64>) -> TimePolicy {
        TimePolicy {
            skew,
            require_exp,
            max_lifetime,
        }
    }

    #[test]
    fn claims_read_every_member_as_a_full_parse_would() {
        for text in [
            r#"{}"#,
            r#"{"iss":"https://i.test","aud":["a","b"],"exp":1700000000,"iat":1.5e9,"nbf":-1}"#,
            r#"{"org":{"id":42,"tags":["x",{"y":null}]},"ok":true,"no":false,"n":null}"#,
            r#" { "sp ace" : "v" , "uni\u00e9" : "\u00e9\n\"q\"" , "big" : 12345678901234567890 } "#,
            r#"{"a\u0062":1,"ab2":2}"#,
            r#"{"x":{"dup":1},"y":[{"dup":2},{"dup":3}],"dup":4}"#,
        ] {
            let value: Value = serde_json::from_str(text).unwrap();
            let claims = Claims::parse(text.as_bytes().to_vec()).unwrap();
            let map = value.as_object().unwrap();
            for (name, v) in map {
                assert_eq!(claims.get(name), Some(v), "{text} {name}");
                assert_eq!(&claims[name.as_str()], v);
            }
            assert_eq!(claims.get("absent"), None);
            assert_eq!(claims["absent"], Value::Null);
            assert_eq!(claims.json(), text);
        }
        // An escaped name is found by its decoded text.
        let c = Claims::parse(br#"{"a\u0062":1,"dup":1}"#.to_vec()).unwrap();
        assert_eq!(c.get("ab"), Some(&json!(1)));
        assert_eq!(
            lookup(&cl(json!({"org": {"id": "acme"}})), "org.id"),
            Some(&json!("acme"))
        );
        assert_eq!(
            lookup(&cl(json!({"a.b": 1, "a": {"b": 2}})), "a.b"),
            Some(&json!(1))
        );
    }

    #[test]
    fn payloads_that_are_not_json_objects_are_refused() {
        for bad in [
            &b""[..],
            b"[]",
            b"1",
            b"\"s\"",
            b"null",
            b"{",
            b"{}x",
            b"{} {}",
            b"{\"a\":}",
            b"{\"a\":1,}",
            b"{'a':1}",
            b"\xff{}",
            b"{\"a\":\"\xff\"}",
        ] {
            assert_eq!(
                Claims::parse(bad.to_vec()).err(),
                Some("malformed token payload"),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(Claims::from_value(&json!([1])).is_none());
        assert!(Claims::from_value(&json!({"a": 1})).is_some());
    }

    #[test]
    fn repeated_claims_are_refused_at_every_depth() {
        let many: String = (0..40).map(|i| format!("\"c{i}\":{i},")).collect();
        for bad in [
            r#"{"sub":"alice","sub":"admin"}"#.to_string(),
            r#"{"sub":"alice","sub":"alice"}"#.to_string(),
            r#"{"exp":1,"iss":"i","exp":9999999999}"#.to_string(),
            // Spelled differently, the same name.
            r#"{"sub":"alice","\u0073ub":"admin"}"#.to_string(),
            r#"{"\u0073\u0075\u0062":"alice","sub":"admin"}"#.to_string(),
            // Many names (sorted, not compared pairwise).
            format!(r#"{{{many}"c7":0}}"#),
            format!(r#"{{"c39":0,{many}"z":0}}"#),
            // Nested: claim rules and claim headers read dotted paths.
            r#"{"org":{"id":1,"id":2}}"#.to_string(),
            r#"{"org":{"a":{"id":1,"\u0069d":2}}}"#.to_string(),
            r#"{"roles":[{"r":1},{"r":1,"r":2}]}"#.to_string(),
        ] {
            assert_eq!(
                Claims::parse(bad.clone().into_bytes()).err(),
                Some(DUPLICATE),
                "{bad}"
            );
        }
        for good in [
            format!(r#"{{{many}"z":0}}"#),
            r#"{"sub":"a","Sub":"b","s\u0075b2":"c"}"#.to_string(),
            r#"{"org":{"id":1},"id":2,"x":[{"id":1},{"id":1}]}"#.to_string(),
        ] {
            let c = Claims::parse(good.clone().into_bytes()).expect(&good);
            let full: Value = serde_json::from_str(&good).unwrap();
            for (k, v) in full.as_object().unwrap() {
                assert_eq!(c.get(k), Some(v), "{good}");
            }
        }
        // Deeper than the parser goes is malformed, not a repeat.
        let deep = format!(r#"{{"a":{}1{}}}"#, "[".repeat(200), "]".repeat(200));
        assert_eq!(
            Claims::parse(deep.into_bytes()).err(),
            Some("malformed token payload")
        );
    }

    #[test]
    fn payloads_with_text_that_is_not_unicode_are_refused() {
        for bad in [
            r#"{"sub":"\ud800admin"}"#,
            r#"{"sub":"admin\udc00"}"#,
            r#"{"sub":"\ud800\u0041"}"#,
            r#"{"sub":"\ud800\ud800"}"#,
            r#"{"sub":"\uDBFF"}"#,
            r#"{"a":{"deep":["\ud800"]}}"#,
            r#"{"\ud800":1}"#,
        ] {
            assert_eq!(
                Claims::parse(bad.as_bytes().to_vec()).err(),
                Some("malformed token payload"),
                "{bad}"
            );
        }
        // Real text, escaped or not, is fine: pairs, BMP escapes, escaped
        // backslashes before a "u".
        for good in [
            r#"{"sub":"\ud83d\ude00"}"#,
            r#"{"sub":"\u00e9\n\"\\"}"#,
            r#"{"sub":"\\ud800"}"#,
            r#"{"sub":"😀é"}"#,
        ] {
            let c = Claims::parse(good.as_bytes().to_vec()).expect(good);
            let full: Value = serde_json::from_str(good).unwrap();
            assert_eq!(c.get("sub"), full.get("sub"), "{good}");
        }
    }

    #[test]
    fn time_claims_table() {
        let now = 1_000_000;
        let p = policy(60, true, None);
        let cases = [
            (json!({"exp": now + 10}), &p, Ok(Some(now + 10))),
            (json!({"exp": now - 30}), &p, Ok(Some(now - 30))), // within skew
            (json!({"exp": now - 60}), &p, Err("token expired")),
            (
                json!({"exp": (now + 10) as f64 + 0.5}),
                &p,
                Ok(Some(now + 10)),
            ),
            (json!({"exp": "soon"}), &p, Err("malformed time claim")),
            (json!({}), &p, Err("missing exp claim")),
            (
                json!({"exp": now + 10, "nbf": now + 30}),
                &p,
                Ok(Some(now + 10)),
            ),
            (
                json!({"exp": now + 10, "nbf": now + 61}),
                &p,
                Err("token not yet valid"),
            ),
            (
                json!({"exp": now + 10, "iat": now + 61}),
                &p,
                Err("token issued in the future"),
            ),
            (
                json!({"exp": now + 10, "iat": now + 59}),
                &p,
                Ok(Some(now + 10)),
            ),
        ];
        for (c, p, want) in cases {
            assert_eq!(check_times(&cl(c.clone()), p, now), want, "{c}");
        }
        let lax = policy(0, false, None);
        assert_eq!(check_times(&cl(json!({})), &lax, now), Ok(None));
        let bounded = policy(0, false, Some(3600));
        assert_eq!(
            check_times(&cl(json!({})), &bounded, now),
            Err("missing exp claim")
        );
        assert_eq!(
            check_times(&cl(json!({"iat": now, "exp": now + 3601})), &bounded, now),
            Err("token lifetime exceeds max_lifetime")
        );
        assert_eq!(
            check_times(
                &cl(json!({"iat": now - 100, "exp": now + 3500})),
                &bounded,
                now
            ),
            Ok(Some(now + 3500))
        );
        assert_eq!(
            check_times(&cl(json!({"exp": now + 3601})), &bounded, now),
            Err("token lifetime exceeds max_lifetime")
        );
    }

    #[test]
    fn audience_string_or_array() {
        let want = vec!["api".to_string(), "web".to_string()];
        assert!(audience_ok(&cl(json!({"aud": "web"})), &want));
        assert!(audience_ok(&cl(json!({"aud": ["x", "api"]})), &want));
        assert!(!audience_ok(&cl(json!({"aud": ["x"]})), &want));
        assert!(!audience_ok(&cl(json!({"aud": 1})), &want));
        assert!(!audience_ok(&cl(json!({})), &want));
    }

    fn rule(v: serde_json::Value) -> Result<ClaimRule, ConfigError> {
        let raw: RawClaimRule = serde_json::from_value(v).unwrap();
        ClaimRule::compile(&raw, "r")
    }

    #[test]
    fn claim_rules_table() {
        let claims = json!({
            "scope": "orders:read orders:write", "roles": ["admin", "dev"],
            "org": {"id": "acme", "tier": 2}, "email_verified": true,
            "https://x.test/group": "g1"
        });
        let cases = [
            (json!({"claim": "scope", "contains": "orders:read"}), true),
            (json!({"claim": "scope", "contains": "orders"}), false),
            (json!({"claim": "roles", "contains": "admin"}), true),
            (json!({"claim": "roles", "contains": "ops"}), false),
            (json!({"claim": "roles", "one_of": ["ops", "admin"]}), false),
            (json!({"claim": "org.id", "one_of": ["x", "acme"]}), true),
            (json!({"claim": "org.tier", "equals": 2}), true),
            (json!({"claim": "org.tier", "equals": "2"}), false),
            (
                json!({"claim": "org", "equals": {"id": "acme", "tier": 2}}),
                true,
            ),
            (json!({"claim": "email_verified", "equals": true}), true),
            (json!({"claim": "missing", "equals": "x"}), false),
            (json!({"claim": "org.id.deeper", "equals": "acme"}), false),
            (
                json!({"claim": "https://x.test/group", "equals": "g1"}),
                true,
            ),
        ];
        for (r, want) in cases {
            assert_eq!(
                rule(r.clone()).unwrap().matches(&cl(claims.clone())),
                want,
                "{r}"
            );
        }
    }

    #[test]
    fn bad_rules_are_config_errors() {
        for r in [
            json!({"claim": "a"}),
            json!({"claim": "a", "equals": 1, "contains": 1}),
            json!({"claim": "a", "one_of": []}),
            json!({"claim": "", "equals": 1}),
            json!({"claim": "a..b", "equals": 1}),
            json!({"claim": "a\"b", "equals": 1}),
        ] {
            assert!(rule(r.clone()).is_err(), "{r}");
        }
    }
}
