//! The fuzz targets' bodies, one module per decoder: `run(data)` feeds it
//! untrusted bytes. Shared by the libFuzzer entries (`fuzz_targets/`, via
//! `src/lib.rs`) and the corpus replay of `make test`
//! (`tests/fuzz_corpus.rs` in the main crate), so both run the same code.
#![allow(dead_code)]

pub mod age_freshness;
pub mod breaker_value;
pub mod bucket_value;
pub mod cache_control;
pub mod cache_entry;
pub mod cache_store;
pub mod common;
pub mod config;
pub mod etag;
pub mod header_map;
pub mod http_date;
pub mod jwks;
pub mod jwks_lease;
pub mod jwt_claims;
pub mod jwt_token;
pub mod native_result;
pub mod rls_response;
pub mod vary;
