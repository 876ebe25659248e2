//! `meshguard.schema.json` is generated from the configuration types and
//! must be regenerated when they change (`make schema`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[test]
fn committed_schema_is_fresh() {
    let path = format!("{}/meshguard.schema.json", env!("CARGO_MANIFEST_DIR"));
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    let fresh = meshguard::config::json_schema();
    assert!(
        committed == fresh,
        "meshguard.schema.json is stale: run `make schema` and commit it"
    );
}

#[test]
fn schema_rejects_unknown_keys_and_names_the_contract_fields() {
    let s: serde_json::Value =
        serde_json::from_str(&meshguard::config::json_schema()).unwrap_or_default();
    assert_eq!(s["additionalProperties"], serde_json::json!(false));
    for key in [
        "routes",
        "jwt_providers",
        "rate_limit_headers",
        "client_ip",
        "cache_store",
        "max_rate_limit_keys",
        "$schema",
    ] {
        assert!(s["properties"].get(key).is_some(), "{key}");
    }
}

/// Where the schema has an object and never an array: the walk of
/// `meshguard::config::shape` must cover exactly these places.
fn object_places(schema: &serde_json::Value) -> Vec<String> {
    fn resolve<'a>(
        defs: &'a serde_json::Value,
        mut n: &'a serde_json::Value,
    ) -> &'a serde_json::Value {
        while let Some(r) = n.get("$ref").and_then(|r| r.as_str()) {
            n = &defs[r.rsplit('/').next().unwrap_or_default()];
        }
        n
    }
    fn walk(defs: &serde_json::Value, n: &serde_json::Value, path: &str, out: &mut Vec<String>) {
        let n = resolve(defs, n);
        let alts: Vec<&serde_json::Value> = match n.get("anyOf").or(n.get("oneOf")) {
            Some(a) => a
                .as_array()
                .unwrap()
                .iter()
                .map(|a| resolve(defs, a))
                .collect(),
            None => vec![n],
        };
        let mut types = Vec::new();
        for a in &alts {
            match a.get("type") {
                Some(serde_json::Value::String(t)) => types.push(t.clone()),
                Some(serde_json::Value::Array(ts)) => {
                    types.extend(ts.iter().filter_map(|t| t.as_str().map(str::to_string)))
                }
                _ => {}
            }
        }
        if !path.is_empty()
            && types.iter().any(|t| t == "object")
            && !types.iter().any(|t| t == "array")
        {
            out.push(path.to_string());
        }
        for a in alts {
            if let Some(props) = a.get("properties").and_then(|p| p.as_object()) {
                for (k, v) in props {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    walk(defs, v, &p, out);
                }
            }
            if let Some(ap) = a.get("additionalProperties").filter(|ap| ap.is_object()) {
                walk(defs, ap, &format!("{path}.*"), out);
            }
            if let Some(items) = a.get("items") {
                walk(defs, items, &format!("{path}[]"), out);
            }
        }
    }
    let mut out = Vec::new();
    walk(&schema["$defs"], schema, "", &mut out);
    out.sort();
    out.dedup();
    out
}

#[test]
fn every_object_place_of_the_schema_refuses_arrays() {
    let s: serde_json::Value = serde_json::from_str(&meshguard::config::json_schema()).unwrap();
    let mut listed: Vec<String> = meshguard::config::shape::OBJECT_PLACES
        .iter()
        .map(|p| p.to_string())
        .collect();
    listed.sort();
    assert_eq!(object_places(&s), listed);
}

#[test]
fn an_array_given_for_an_object_is_a_clear_error() {
    for (doc, path) in [
        (
            r#"{"routes":[{"name":"a","match":["/"]}]}"#,
            "routes[0].match",
        ),
        (
            r#"{"routes":[{"name":"a","circuit_breaker":[5,"5s"]}]}"#,
            "routes[0].circuit_breaker",
        ),
        (
            r#"{"routes":[{"name":"a","match":{"headers":[["x-env","prod"]]}}]}"#,
            "routes[0].match.headers[0]",
        ),
        (r#"{"cache_store":[1048576,65536]}"#, "cache_store"),
    ] {
        let e = meshguard::plan::Config::from_bytes(doc.as_bytes())
            .err()
            .unwrap_or_else(|| panic!("accepted: {doc}"));
        assert_eq!(e.path, path, "{doc}");
        assert_eq!(e.msg, "expected an object, got an array", "{doc}");
    }
}
