//! Calls to other services from the native module: JWKS fetches (HTTP) and
//! rate limit service calls (gRPC).
//!
//! Not available natively in this version: the filter layer sends both
//! from the root context (a worker's configuration, no stream), and the
//! ABI's only per-worker way to call out without a stream,
//! `envoy_dynamic_module_callback_http_filter_config_http_callout`, keeps
//! its pending calls in one map of the configuration object that every
//! worker would share without a lock; the per-stream callout
//! (`..._http_filter_http_callout`) is cancelled when its stream ends,
//! which a JWKS refresh or a call shared by streams must survive. A
//! dispatch therefore fails, and the filter applies what it applies when
//! the host cannot send a call: a remote JWKS provider has no keys (401),
//! a global rate limit takes its `failure_mode`. `docs/native.md` lists it.

use crate::host::HostError;
use std::time::Duration;

const WHY: &str = "calls to other services are not available in the native module \
(docs/native.md, \"What is wasm-only\")";

#[allow(clippy::too_many_arguments)]
pub fn grpc_call(
    _current_context: u32,
    _grpc_service: &[u8],
    _service: &str,
    _method: &str,
    _metadata: &[(&str, &[u8])],
    _message: &[u8],
    _timeout: Duration,
) -> Result<u32, HostError> {
    Err(HostError(WHY.into()))
}

pub fn http_call(
    _cluster: &str,
    _headers: &[(&str, &str)],
    _body: Option<&[u8]>,
    _timeout: Duration,
) -> Result<u32, HostError> {
    Err(HostError(WHY.into()))
}

/// Forgets a call (its answer, if one comes, is dropped).
pub fn forget(_token: u32) {}
