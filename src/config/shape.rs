//! Places where the document must have a JSON object, checked before the
//! typed parse.
//!
//! serde's derived structs also accept an *array* of their fields in
//! declaration order, so without this check `"match": ["/api/"]` would
//! silently mean `{"path_prefix": "/api/"}`, and `"headers": [["x-env",
//! "prod"]]` a header rule by position: a config that "validates" and does
//! something else than it says. These places are objects (or absent or
//! `null` where optional) in the JSON Schema; `tests/schema.rs` derives the
//! same list from the generated schema, so a new struct-typed field cannot
//! be forgotten here.
//!
//! Pattern syntax: `.`-separated keys, `[]` for every element of an array,
//! `*` for every value of an object.

use serde_json::Value;

/// Every place where the schema has an object and never an array.
pub const OBJECT_PLACES: [&str; 24] = [
    "cache_store",
    "client_ip",
    "jwt_providers",
    "jwt_providers.*",
    "jwt_providers.*.claims_to_headers[]",
    "jwt_providers.*.from[]",
    "jwt_providers.*.jwks",
    "jwt_providers.*.jwks.remote",
    "observability",
    "path_normalization",
    "rate_limit_service",
    "routes[]",
    "routes[].cache",
    "routes[].cache.purge",
    "routes[].cache.purge.claims[]",
    "routes[].circuit_breaker",
    "routes[].jwt",
    "routes[].jwt.claims[]",
    "routes[].match",
    "routes[].match.grpc",
    "routes[].match.headers[]",
    "routes[].rate_limit[]",
    "routes[].rate_limit[].key[]",
    "routes[].rate_limit[].usage",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step<'a> {
    Key(&'a str),
    Items,
    Values,
}

fn steps(place: &str) -> Vec<Step<'_>> {
    let mut out = Vec::new();
    for part in place.split('.') {
        let (name, items) = match part.strip_suffix("[]") {
            Some(n) => (n, true),
            None => (part, false),
        };
        out.push(if name == "*" {
            Step::Values
        } else {
            Step::Key(name)
        });
        if items {
            out.push(Step::Items);
        }
    }
    out
}

/// The JSON path (as in other config errors: `routes[0].match`) of the
/// first array found where [`OBJECT_PLACES`] expects an object.
pub fn array_where_object(doc: &Value) -> Option<String> {
    OBJECT_PLACES
        .iter()
        .find_map(|place| find(doc, &steps(place), String::new()))
}

fn find(v: &Value, steps: &[Step<'_>], path: String) -> Option<String> {
    let Some((step, rest)) = steps.split_first() else {
        return v.is_array().then_some(path);
    };
    let join = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    match (step, v) {
        (Step::Key(k), Value::Object(m)) => m.get(*k).and_then(|c| find(c, rest, join(k))),
        (Step::Values, Value::Object(m)) => m.iter().find_map(|(k, c)| find(c, rest, join(k))),
        (Step::Items, Value::Array(a)) => a
            .iter()
            .enumerate()
            .find_map(|(i, c)| find(c, rest, format!("{path}[{i}]"))),
        // Absent, null or another type: the typed parse reports it.
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn patterns_parse_into_steps() {
        assert_eq!(
            steps("routes[].match.headers[]"),
            vec![
                Step::Key("routes"),
                Step::Items,
                Step::Key("match"),
                Step::Key("headers"),
                Step::Items
            ]
        );
        assert_eq!(
            steps("jwt_providers.*.jwks"),
            vec![Step::Key("jwt_providers"), Step::Values, Step::Key("jwks")]
        );
    }

    #[test]
    fn arrays_in_object_places_are_found_with_their_path() {
        for (doc, want) in [
            (
                json!({"routes": [{"name": "a", "match": ["/api/"]}]}),
                "routes[0].match",
            ),
            (
                json!({"routes": [{"name": "a"}, {"name": "b", "match": {"headers": [{"name": "x"}, ["x-env", "prod"]]}}]}),
                "routes[1].match.headers[1]",
            ),
            (json!({"routes": [["a"]]}), "routes[0]"),
            (json!({"cache_store": [1, 2]}), "cache_store"),
            (
                json!({"jwt_providers": {"idp": {"jwks": {"remote": ["idp", "/jwks.json"]}}}}),
                "jwt_providers.idp.jwks.remote",
            ),
            (
                json!({"jwt_providers": {"a": {}, "b": []}}),
                "jwt_providers.b",
            ),
            (
                json!({"routes": [{"rate_limit": [{"key": [["header", "x"]]}]}]}),
                "routes[0].rate_limit[0].key[0]",
            ),
        ] {
            assert_eq!(array_where_object(&doc).as_deref(), Some(want), "{doc}");
        }
    }

    #[test]
    fn objects_nulls_and_other_types_are_left_to_the_typed_parse() {
        for doc in [
            json!({}),
            json!({"routes": []}),
            json!({"routes": [{"name": "a", "match": {"path_prefix": "/"}, "cache": null}]}),
            json!({"routes": "nope"}),
            json!({"routes": [{"match": 5}]}),
            json!({"routes": [{"rate_limit": [{"key": ["client_ip", {"header": "x"}]}]}]}),
        ] {
            assert_eq!(array_where_object(&doc), None, "{doc}");
        }
    }
}
