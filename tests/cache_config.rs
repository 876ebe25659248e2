//! The `cache` section through the whole configuration parser.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use meshguard::plan::Config;

#[test]
fn a_cache_route_compiles_with_defaults() {
    let cfg = Config::from_bytes(
        br#"{ "routes": [ { "name": "api", "cache": {} } ],
              "cache_store": { "max_bytes": 1048576, "max_entry_bytes": 65536 } }"#,
    )
    .unwrap();
    let p = cfg.routes[0].cache.as_ref().unwrap();
    assert!(p.cache_get && p.cache_head);
    assert_eq!(
        p.vary_allowlist,
        vec!["accept", "accept-encoding", "accept-language"]
    );
}

#[test]
fn bad_cache_values_name_their_json_path() {
    let cases: [(&str, &str); 4] = [
        (
            r#"{"methods": ["GET", "POST"]}"#,
            "routes[0].cache.methods[1]",
        ),
        (
            r#"{"vary_allowlist": ["ok", "not ok"]}"#,
            "routes[0].cache.vary_allowlist[1]",
        ),
        (
            r#"{"key_headers": ["x", "X"]}"#,
            "routes[0].cache.key_headers[1]",
        ),
        (r#"{"default_ttl": "10ms"}"#, "routes[0].cache.default_ttl"),
    ];
    for (cache, path) in cases {
        let doc = format!(r#"{{ "routes": [ {{ "name": "api", "cache": {cache} }} ] }}"#);
        let e = Config::from_bytes(doc.as_bytes()).expect_err(cache);
        assert_eq!(e.path, path, "{cache}: {e}");
    }
    let e = Config::from_bytes(br#"{ "routes": [ { "name": "api", "cache": { "ttl": "1s" } } ] }"#)
        .err()
        .unwrap();
    assert!(e.to_string().contains("ttl"), "{e}");
}
