//! meshguard: a proxy-wasm filter for Envoy that protects services with four
//! policies configured by one JSON document: token-bucket rate limiting
//! exact across worker threads, JWT bearer verification, circuit breaking
//! with state shared by all workers, and an RFC 9111 response cache.
//!
//! Layers, lowest first (imports run one way; `tests/layers.rs` checks it):
//! `config` (the raw JSON document, errors, durations; imports nothing of
//! meshguard) -> `bytes`, `grpc`, `host` (the ports to Envoy: `Host`,
//! `Stream`) -> `request` -> one folder per feature (`route`, `breaker`,
//! `cache`, `jwt`, `ratelimit`), each compiling its own configuration
//! section -> `plan` (the immutable configuration assembled) -> `filter`
//! (the pipeline and the proxy-wasm glue; private to the crate) -> `native`
//! (the same filter as an Envoy dynamic module, feature `native`). The user
//! documentation is in `docs/`.

// No indexing or slicing that can panic in library code (`get`, patterns,
// `split_at_checked`, iterators instead): enforced by `make clippy`, which
// checks this crate with and without `cfg(test)` (unit tests may index).
// `unwrap`/`expect`/`panic!` are denied in Cargo.toml `[lints.clippy]`.
#![cfg_attr(not(test), deny(clippy::indexing_slicing))]

pub mod breaker;
pub(crate) mod bytes;
pub mod cache;
pub mod config;
pub mod grpc;
pub mod host;
pub mod jwt;
pub mod plan;
pub mod ratelimit;
pub mod request;
pub mod route;

// Natively the glue is only reached by its tests (Envoy calls it through the
// wasm exports): its dead code is reported by the wasm32-wasip1 build.
#[cfg_attr(not(target_os = "wasi"), allow(dead_code))]
mod filter;
#[cfg(feature = "native")]
mod native;

/// The git commit this module was built from (`unknown` outside a checkout).
pub const GIT_HASH: &str = env!("MESHGUARD_GIT_HASH");
