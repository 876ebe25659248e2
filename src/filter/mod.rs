//! The proxy-wasm glue: a root context per worker VM that owns the validated
//! configuration, and one HTTP context per stream that reads the request
//! once, runs the features in order and turns their verdicts into actions
//! and local replies. No policy logic lives here.
//!
//! Request path: route match -> JWT -> rate limit -> cache lookup -> breaker
//! admit -> upstream. Response path: breaker records the outcome (a gRPC
//! call's `grpc-status`: from the headers, else at the trailers) -> cache
//! stores -> rate-limit and cache headers are added. A refusal to a gRPC or
//! gRPC-Web call is a gRPC status (`state::grpc_reply`). At most one local reply
//! is sent per stream; a reply meshguard generated is never counted by the
//! breaker nor stored by the cache.
//!
//! Pauses: a request waiting for a remote JWKS (startup) or for another
//! request filling the same cache entry is parked; the root context's timer
//! (10 ms while anything is parked) runs its pipeline again (a request
//! waiting for a fill looks at the cache again only once the time the
//! cache suggested has passed: `cache::Lookup::Wait`), and every park has
//! a deadline (`pipeline::JWKS_WAIT_NS`, `pipeline::CACHE_WAIT_NS`).

//!
//! Layout (imports run one way, down this list): `dispatch` (the ABI
//! entry points, wasm only) -> `root` (root context, the timer, answers of
//! calls) -> `http` (one stream's callbacks) -> `pipeline` (the stages and
//! the response side) -> `worker` (state shared by a worker VM's contexts;
//! a step becomes its effect) -> `state` (one stream's state and local
//! replies) -> `runtime` (the configuration and its metric handles). All
//! but `dispatch` talk to the proxy through the `host::Host` and
//! `host::Stream` ports, so they compile natively and are tested against
//! `host::fake_stream`.

#[cfg(target_os = "wasi")]
mod dispatch;
pub(crate) mod http;
pub(crate) mod pipeline;
pub(crate) mod root;
pub(crate) mod runtime;
pub(crate) mod state;
pub(crate) mod worker;

#[cfg(test)]
mod tests;
