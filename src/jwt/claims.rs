//! Registered claims (`iss`, `aud`, `exp`, `nbf`, `iat`) and route claim
//! rules (`equals`, `one_of`, `contains`) over dotted claim paths.

use crate::config::raw::RawClaimRule;
use crate::config::{show_str, ConfigError};
use serde_json::Value;

/// Time rules of a provider, in seconds.
#[derive(Debug, Clone)]
pub struct TimePolicy {
    pub skew: u64,
    pub require_exp: bool,
    pub max_lifetime: Option<u64>,
}

/// A JSON numeric date as whole seconds (fractions truncated).
fn numeric_date(claims: &Value, name: &str) -> Result<Option<i64>, &'static str> {
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
pub fn check_times(claims: &Value, p: &TimePolicy, now: i64) -> Result<Option<i64>, &'static str> {
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
pub fn audience_ok(claims: &Value, want: &[String]) -> bool {
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
pub fn lookup<'a>(claims: &'a Value, path: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(path) {
        return Some(v);
    }
    let mut cur = claims;
    for part in path.split('.') {
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
    pub fn matches(&self, claims: &Value) -> bool {
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

    fn policy(skew: u64, require_exp: bool, max_lifetime: Option<u64>) -> TimePolicy {
        TimePolicy {
            skew,
            require_exp,
            max_lifetime,
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
            assert_eq!(check_times(&c, p, now), want, "{c}");
        }
        let lax = policy(0, false, None);
        assert_eq!(check_times(&json!({}), &lax, now), Ok(None));
        let bounded = policy(0, false, Some(3600));
        assert_eq!(
            check_times(&json!({}), &bounded, now),
            Err("missing exp claim")
        );
        assert_eq!(
            check_times(&json!({"iat": now, "exp": now + 3601}), &bounded, now),
            Err("token lifetime exceeds max_lifetime")
        );
        assert_eq!(
            check_times(&json!({"iat": now - 100, "exp": now + 3500}), &bounded, now),
            Ok(Some(now + 3500))
        );
        assert_eq!(
            check_times(&json!({"exp": now + 3601}), &bounded, now),
            Err("token lifetime exceeds max_lifetime")
        );
    }

    #[test]
    fn audience_string_or_array() {
        let want = vec!["api".to_string(), "web".to_string()];
        assert!(audience_ok(&json!({"aud": "web"}), &want));
        assert!(audience_ok(&json!({"aud": ["x", "api"]}), &want));
        assert!(!audience_ok(&json!({"aud": ["x"]}), &want));
        assert!(!audience_ok(&json!({"aud": 1}), &want));
        assert!(!audience_ok(&json!({}), &want));
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
            assert_eq!(rule(r.clone()).unwrap().matches(&claims), want, "{r}");
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
