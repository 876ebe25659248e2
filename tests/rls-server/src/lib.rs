//! An Envoy rate limit service (`envoy.service.ratelimit.v3.RateLimitService`)
//! on limitador, for meshguard's end-to-end tests of global rate limits. See
//! README.md.

pub mod grpc;
pub mod limits;
pub mod proto;
pub mod server;
pub mod service;
