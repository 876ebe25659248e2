//! limits.json: a JSON list of limits, each mapped to a limitador `Limit`.
//!
//! ```json
//! [{"name": "per-client", "namespace": "meshguard", "max_value": 5, "seconds": 60,
//!   "conditions": ["descriptors[0].route == 'api'"],
//!   "variables": ["descriptors[0].client_ip"]}]
//! ```
//!
//! Conditions and variables are CEL expressions (limitador 0.14) over a context
//! whose `descriptors` is a list holding the ONE descriptor being evaluated, as
//! a map from entry key to entry value (so always `descriptors[0]`).

use limitador::limit::{Context, Expression, Limit, Predicate};
use serde::Deserialize;
use std::collections::{HashMap, HashSet};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitSpec {
    #[serde(default)]
    name: Option<String>,
    namespace: String,
    max_value: u64,
    seconds: u64,
    #[serde(default)]
    conditions: Vec<String>,
    #[serde(default)]
    variables: Vec<String>,
}

/// Parses and checks limits.json text.
pub fn parse(text: &str) -> Result<Vec<Limit>, String> {
    let specs: Vec<LimitSpec> =
        serde_json::from_str(text).map_err(|e| format!("limits: bad JSON: {e}"))?;
    let mut seen = HashSet::new();
    let mut limits = Vec::with_capacity(specs.len());
    for (i, spec) in specs.into_iter().enumerate() {
        let what = match &spec.name {
            Some(name) => format!("limits[{i}] ({name:?})"),
            None => format!("limits[{i}]"),
        };
        if spec.seconds == 0 {
            return Err(format!("{what}: seconds must be > 0"));
        }
        let mut conditions = Vec::with_capacity(spec.conditions.len());
        for source in &spec.conditions {
            let predicate = Predicate::parse(source)
                .map_err(|e| format!("{what}: condition {source:?}: {e}"))?;
            // limitador unwraps condition results: one that evaluates to a
            // non-boolean would panic at request time, so refuse it now.
            if let Err(e) = predicate.test(&probe_context()) {
                return Err(format!(
                    "{what}: condition {source:?} is not a boolean: {e}"
                ));
            }
            conditions.push(predicate);
        }
        let mut variables = Vec::with_capacity(spec.variables.len());
        for source in &spec.variables {
            variables.push(
                Expression::parse(source)
                    .map_err(|e| format!("{what}: variable {source:?}: {e}"))?,
            );
        }
        let mut limit = Limit::new(
            spec.namespace.as_str(),
            spec.max_value,
            spec.seconds,
            conditions,
            variables,
        );
        if let Some(name) = spec.name {
            limit.set_name(name);
        }
        // limitador identifies a limit (and its counters) by namespace, seconds,
        // conditions and variables: not by name or max_value.
        if !seen.insert(limit.clone()) {
            return Err(format!(
                "{what}: same namespace, seconds, conditions and variables as an earlier limit \
                 (limitador would merge them); change one of those"
            ));
        }
        limits.push(limit);
    }
    Ok(limits)
}

/// The context for one descriptor: `descriptors` = [ {key: value, ...} ].
pub fn context_for(entries: HashMap<String, String>) -> Context<'static> {
    let mut ctx = Context::default();
    ctx.list_binding("descriptors".to_string(), vec![entries]);
    ctx
}

fn probe_context() -> Context<'static> {
    context_for(HashMap::new())
}

/// The longest window, for the reservation ttl ceiling.
pub fn longest_window(limits: &[Limit]) -> u64 {
    limits.iter().map(Limit::seconds).max().unwrap_or(1).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_limit() {
        let limits = parse(
            r#"[{"name": "n", "namespace": "meshguard", "max_value": 5, "seconds": 60,
                "conditions": ["descriptors[0].route == 'r'"],
                "variables": ["descriptors[0].client_ip"]}]"#,
        )
        .unwrap();
        assert_eq!(limits.len(), 1);
        assert_eq!(limits[0].name(), Some("n"));
        assert_eq!(limits[0].max_value(), 5);
        let ctx = context_for(HashMap::from([
            ("route".to_string(), "r".to_string()),
            ("client_ip".to_string(), "1.2.3.4".to_string()),
        ]));
        assert!(limits[0].applies(&ctx));
        let other = context_for(HashMap::from([
            ("route".to_string(), "x".to_string()),
            ("client_ip".to_string(), "1.2.3.4".to_string()),
        ]));
        assert!(!limits[0].applies(&other));
        // The variable's entry missing: limitador makes no counter, so the
        // limit does not apply.
        let no_ip = context_for(HashMap::from([("route".to_string(), "r".to_string())]));
        let counter = limitador::counter::Counter::new(limits[0].clone(), &no_ip);
        assert!(counter.unwrap().is_none());
    }

    #[test]
    fn rejects_bad_limits() {
        let bad = |text: &str| parse(text).unwrap_err();
        assert!(bad("{}").contains("bad JSON"));
        assert!(bad(r#"[{"namespace": "a", "max_value": 1, "seconds": 0}]"#).contains("seconds"));
        assert!(
            bad(r#"[{"namespace": "a", "max_value": 1, "seconds": 1, "extra": 1}]"#)
                .contains("unknown field")
        );
        assert!(
            bad(r#"[{"namespace": "a", "max_value": 1, "seconds": 1, "conditions": ["=="]}]"#)
                .contains("condition")
        );
        assert!(
            bad(r#"[{"namespace": "a", "max_value": 1, "seconds": 1, "conditions": ["42"]}]"#)
                .contains("not a boolean")
        );
        assert!(bad(r#"[{"namespace": "a", "max_value": 1, "seconds": 1},
                {"namespace": "a", "max_value": 2, "seconds": 1}]"#)
        .contains("earlier limit"));
    }
}
