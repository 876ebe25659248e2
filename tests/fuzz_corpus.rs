//! The fuzz targets' bodies (`fuzz/targets/`, the very code libFuzzer runs
//! under `make fuzz`) run natively, on the stable toolchain, over each
//! target's checked-in corpus (`fuzz/seeds/<target>/`: hand-made seeds,
//! then inputs the coverage-guided runs found, minimised), and then over
//! deterministic mutations of it for a short time budget. This is the fuzz
//! smoke of `make test`: a decoder that starts to panic, trap or break a
//! round-trip property on any known input fails here in seconds, without
//! the nightly toolchain or an instrumented build.
//!
//! `MESHGUARD_FUZZ_SMOKE_MS`: mutation budget per target (default 1500).
//! A failing input is written to `target/fuzz-smoke-failures/` and named in
//! the panic message; replay it with the libFuzzer binary of `make fuzz`.

#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../fuzz/targets/mod.rs"]
mod targets;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn corpus(name: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(ROOT).join("fuzz/seeds").join(name);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let inputs: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    assert!(!inputs.is_empty(), "no seeds in {}", dir.display());
    inputs
}

/// xorshift64*: the same mutations on every run.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

const INTERESTING: &[u8] = b"\x00\x01\x7f\x80\xff\"\\,;=:.{}[]-09 \n";

fn mutate(rng: &mut Rng, input: &mut Vec<u8>, other: &[u8]) {
    for _ in 0..1 + rng.below(4) {
        let len = input.len();
        match rng.below(7) {
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                input[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            2 => {
                let i = rng.below(len + 1);
                input.insert(i, INTERESTING[rng.below(INTERESTING.len())]);
            }
            3 if len > 0 => {
                let a = rng.below(len);
                let b = (a + 1 + rng.below(16)).min(len);
                input.drain(a..b);
            }
            4 if len > 0 => {
                let a = rng.below(len);
                let b = (a + 1 + rng.below(64)).min(len);
                let chunk = input[a..b].to_vec();
                let at = rng.below(len + 1);
                input.splice(at..at, chunk);
            }
            5 => input.truncate(rng.below(len + 1)),
            _ if !other.is_empty() => {
                let a = rng.below(other.len());
                let b = (a + 1 + rng.below(256)).min(other.len());
                let at = rng.below(len + 1);
                input.splice(at..at, other[a..b].iter().copied());
            }
            _ => {}
        }
    }
}

fn run_one(name: &str, run: fn(&[u8]), input: &[u8]) {
    if catch_unwind(AssertUnwindSafe(|| run(input))).is_err() {
        let dir = Path::new(ROOT).join("target/fuzz-smoke-failures");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}-{:016x}", fnv(input)));
        std::fs::write(&path, input).unwrap();
        panic!("fuzz target {name} failed on {}", path.display());
    }
}

fn fnv(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325, |h, x| {
        (h ^ u64::from(*x)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn smoke(name: &str, run: fn(&[u8])) {
    let inputs = corpus(name);
    for input in &inputs {
        run_one(name, run, input);
    }
    let budget = Duration::from_millis(
        std::env::var("MESHGUARD_FUZZ_SMOKE_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1500),
    );
    let mut rng = Rng(fnv(name.as_bytes()) | 1);
    let start = Instant::now();
    let mut runs = inputs.len();
    while start.elapsed() < budget {
        let mut input = inputs[rng.below(inputs.len())].clone();
        let other = &inputs[rng.below(inputs.len())];
        mutate(&mut rng, &mut input, other);
        input.truncate(65_536);
        run_one(name, run, &input);
        runs += 1;
    }
    println!(
        "fuzz smoke {name}: {} corpus inputs, {runs} runs",
        inputs.len()
    );
}

macro_rules! smoke_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                smoke(stringify!($name), targets::$name::run);
            }
        )*

        /// Every target under `fuzz/targets/` has a smoke test here.
        #[test]
        fn every_fuzz_target_is_smoked() {
            let listed: Vec<&str> = vec![$(stringify!($name)),*];
            let dir = Path::new(ROOT).join("fuzz/targets");
            for e in std::fs::read_dir(dir).unwrap() {
                let f = e.unwrap().file_name().into_string().unwrap();
                let n = f.trim_end_matches(".rs");
                if n != "mod" && n != "common" {
                    assert!(listed.contains(&n), "fuzz target {n} has no smoke test");
                }
            }
        }
    };
}

smoke_tests!(
    age_freshness,
    breaker_value,
    bucket_value,
    cache_control,
    cache_entry,
    cache_store,
    config,
    etag,
    header_map,
    http_date,
    jwks,
    jwks_lease,
    jwt_claims,
    jwt_token,
    native_result,
    rls_response,
    vary,
);
