//! `meshguard-validate` prints exactly the filter's error line and exits non-zero.
#![cfg(feature = "cli")]
#![allow(clippy::expect_used)]

use std::process::Command;

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_meshguard-validate"))
        .args(args)
        .output()
        .expect("runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn valid_examples_pass() {
    let dir = env!("CARGO_MANIFEST_DIR");
    let (code, out) = run(&[
        &format!("{dir}/examples/full.json"),
        &format!("{dir}/examples/demo.json"),
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("full.json: ok (2 routes)"), "{out}");
}

#[test]
fn invalid_config_prints_the_filter_error_and_fails() {
    let dir = std::env::temp_dir().join(format!("mg-validate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    let bad = dir.join("bad.json");
    std::fs::write(
        &bad,
        r#"{"routes": [{"name": "a", "rate_limit": [{"capacity": 0, "refill_interval": "1s"}]}]}"#,
    )
    .expect("write");
    let (code, out) = run(&[bad.to_str().expect("path")]);
    assert_eq!(code, 1);
    assert!(
        out.contains("meshguard: invalid config at routes[0].rate_limit[0].capacity: expected an integer from 1 to 1000000000, got 0"),
        "{out}"
    );
    let (code, out) = run(&["/nonexistent/meshguard.json"]);
    assert_eq!(code, 1);
    assert!(out.contains("cannot read"), "{out}");
    let (code, _) = run(&[]);
    assert_eq!(code, 2);
}

#[test]
fn a_member_named_twice_is_refused() {
    let dir = std::env::temp_dir().join(format!("mg-validate-dup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    let bad = dir.join("dup.json");
    // The escaped spelling of "jwt" is the same member: the filter would
    // otherwise apply the last one (no JWT check at all).
    std::fs::write(
        &bad,
        r#"{"jwt_providers": {"p": {"issuer": "i", "jwks": {"inline": {"keys": []}}}},
 "routes": [{"name": "a", "jwt": {"providers": ["p"]}, "\u006awt": null}]}"#,
    )
    .expect("write");
    let (code, out) = run(&[bad.to_str().expect("path")]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(
            "meshguard: invalid config at routes[0]: duplicate member \"jwt\" at line 2 column 65"
        ),
        "{out}"
    );
}
