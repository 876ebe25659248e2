//! How long `config::json::parse` (the configuration's parse, refusing
//! repeated members) takes against serde_json's own `Value` parse,
//! interleaved (twins, median of 5), on examples/full.json and on a
//! document of 2,000 routes. Prints the figures; asserts nothing.
//!
//! ```sh
//! cargo bench --bench config_parse
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use meshguard::config::json::parse;
use serde_json::Value;

fn main() {
    use std::time::Instant;
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let full = std::fs::read_to_string(root.join("examples/full.json")).unwrap();
    let routes: Vec<String> = (0..2000)
        .map(|i| {
            format!(
                r#"{{"name":"r{i}","match":{{"path_prefix":"/r{i}/","methods":["GET","POST"]}},"rate_limit":[{{"name":"l","capacity":{i},"refill_tokens":1,"refill_interval":"1s","key":["client_ip",{{"header":"x-k"}}]}}]}}"#
            )
        })
        .collect();
    let big = format!(r#"{{"routes":[{}]}}"#, routes.join(","));
    for (name, text, n) in [("full.json", &full, 20_000), ("2000 routes", &big, 40)] {
        let (mut theirs, mut ours) = (Vec::new(), Vec::new());
        for _ in 0..5 {
            let t = Instant::now();
            for _ in 0..n {
                std::hint::black_box(serde_json::from_str::<Value>(text).unwrap());
            }
            theirs.push(t.elapsed().as_secs_f64() / n as f64);
            let t = Instant::now();
            for _ in 0..n {
                std::hint::black_box(parse(text).unwrap());
            }
            ours.push(t.elapsed().as_secs_f64() / n as f64);
        }
        let med = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (t, o) = (med(&mut theirs), med(&mut ours));
        println!(
            "{name} ({} bytes): serde_json {:.1} us, json::parse {:.1} us, ratio {:.3}",
            text.len(),
            t * 1e6,
            o * 1e6,
            o / t
        );
    }
}
