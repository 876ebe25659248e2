//! `meshguard.schema.json` is generated from the configuration types and
//! must be regenerated when they change (`make schema`).

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
