//! Every shipped example configuration loads, and each shows the feature it
//! is named after.
#![allow(clippy::panic, clippy::expect_used)]

use meshguard::plan::Config;
use std::fs;

fn load(name: &str) -> Config {
    let path = format!("{}/examples/{name}", env!("CARGO_MANIFEST_DIR"));
    let bytes = fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    Config::from_bytes(&bytes).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn every_example_file_loads() {
    let dir = format!("{}/examples", env!("CARGO_MANIFEST_DIR"));
    let mut n = 0;
    for entry in fs::read_dir(&dir).expect("examples dir") {
        let name = entry
            .expect("entry")
            .file_name()
            .into_string()
            .expect("utf8 name");
        if name.ends_with(".json") {
            load(&name);
            n += 1;
        }
    }
    assert!(
        n >= 6,
        "expected the demo, one example per feature and a full one, found {n}"
    );
}

#[test]
fn examples_configure_their_feature() {
    assert_eq!(load("ratelimit.json").routes[0].rate_limits.len(), 3);
    assert!(load("jwt.json").routes[0].jwt.is_some());
    assert!(load("breaker.json").routes[0].breaker.is_some());
    assert!(load("cache.json").routes[0].cache.is_some());
    let global = load("global-ratelimit.json");
    assert!(global.rate_limit_service.is_some());
    assert_eq!(global.routes[0].rate_limits.len(), 1);
    assert_eq!(global.routes[0].global_limits.len(), 2);
    let grpc = load("grpc.json");
    let orders = &grpc.routes[1];
    assert!(orders.jwt.is_some() && orders.breaker.is_some() && !orders.rate_limits.is_empty());
    assert_eq!(
        orders.rate_limit_grpc_status,
        meshguard::grpc::Code::RESOURCE_EXHAUSTED
    );
    assert_eq!(
        orders.rate_limits[0].key,
        [
            meshguard::ratelimit::KeyPart::GrpcMethod,
            meshguard::ratelimit::KeyPart::Claim(vec!["sub".into()])
        ]
    );
    let full = load("full.json");
    let r = &full.routes[1];
    assert!(
        r.jwt.is_some() && r.breaker.is_some() && r.cache.is_some() && !r.rate_limits.is_empty()
    );
}
