//! meshguard: a proxy-wasm filter for Envoy that protects services with four
//! policies configured by one JSON document: token-bucket rate limiting
//! exact across worker threads, JWT bearer verification, circuit breaking
//! with state shared by all workers, and an RFC 9111 response cache.
//!
//! Layout: `config` (the JSON contract), `host` (the port to Envoy),
//! `route` (matching), one folder per feature, and `filter` (the glue that
//! turns feature verdicts into proxy-wasm actions).

pub mod breaker;
pub mod bytes;
pub mod cache;
pub mod config;
pub mod grpc;
pub mod host;
pub mod jwt;
pub mod plan;
pub mod ratelimit;
pub mod request;
pub mod route;

pub mod filter;

/// The git commit this module was built from (`unknown` outside a checkout).
pub const GIT_HASH: &str = env!("MESHGUARD_GIT_HASH");
