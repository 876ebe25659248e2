//! `meshguard-validate <file.json>...`: checks meshguard configuration files
//! exactly as the filter does in `on_configure`, for users' CI pipelines.
//! Prints the same one-line error the filter would log (JSON path, value,
//! expectation) and exits 1 if any file is invalid, 2 on usage errors.
//!
//! `meshguard-validate --print-schema` prints the JSON Schema of the
//! configuration (the committed `meshguard.schema.json`).

// As in the library (`src/lib.rs`): no indexing or slicing that can panic.
#![deny(clippy::indexing_slicing)]

use meshguard::plan::Config;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() || args.iter().any(|a| a == "-h" || a == "--help") {
        eprintln!("usage: meshguard-validate <config.json>... | --print-schema");
        return ExitCode::from(2);
    }
    if args == ["--print-schema"] {
        print!("{}", meshguard::config::json_schema());
        return ExitCode::SUCCESS;
    }
    let mut ok = true;
    for path in &args {
        match std::fs::read(path) {
            Err(e) => {
                eprintln!("{path}: cannot read: {e}");
                ok = false;
            }
            Ok(bytes) => match Config::from_bytes(&bytes) {
                Ok(c) => println!("{path}: ok ({} routes)", c.routes.len()),
                Err(e) => {
                    println!("{path}: meshguard: {e}");
                    ok = false;
                }
            },
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
