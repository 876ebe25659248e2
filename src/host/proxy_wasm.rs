//! The adapter to the real host: the ONLY file that calls proxy-wasm host
//! functions. Every call returns a `Result` that is handled here, mapping
//! SDK statuses to the domain errors of `host` (never a panic: the SDK's
//! own trait helpers unwrap, so we call `hostcalls` directly).

use super::header_map::HeaderMap;
use super::{Host, HostError, MetricId, MetricKind, SetError, SharedValue};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType, MetricType, Status};
use std::time::{Duration, UNIX_EPOCH};

/// The real host (Envoy). Zero-sized: state lives in the host.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProxyWasmHost;

fn status(s: Status) -> String {
    format!("host status {s:?}")
}

impl Host for ProxyWasmHost {
    fn now_nanos(&self) -> u64 {
        match hostcalls::get_current_time() {
            Ok(t) => t
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0),
            Err(_) => 0,
        }
    }

    fn shared_get(&self, key: &str) -> Result<SharedValue, HostError> {
        match hostcalls::get_shared_data(key) {
            Ok(v) => Ok(v),
            Err(Status::NotFound) => Ok((None, None)),
            Err(s) => Err(HostError(status(s))),
        }
    }

    fn shared_set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SetError> {
        match hostcalls::set_shared_data(key, Some(value), cas) {
            Ok(()) => Ok(()),
            Err(Status::CasMismatch) => Err(SetError::CasMismatch),
            Err(s) => Err(SetError::Host(status(s))),
        }
    }

    fn random_bytes(&self, buf: &mut [u8]) -> Result<(), HostError> {
        getrandom::getrandom(buf).map_err(|e| HostError(format!("getrandom: {e}")))
    }

    fn define_metric(&self, kind: MetricKind, name: &str) -> Result<MetricId, HostError> {
        let t = match kind {
            MetricKind::Counter => MetricType::Counter,
            MetricKind::Gauge => MetricType::Gauge,
            MetricKind::Histogram => MetricType::Histogram,
        };
        hostcalls::define_metric(t, name)
            .map(MetricId)
            .map_err(|s| HostError(status(s)))
    }

    fn call_foreign(&self, name: &str, args: &[u8]) -> Result<Option<Vec<u8>>, HostError> {
        call_foreign_function(name, args)
    }

    fn increment_metric(&self, id: MetricId, delta: i64) {
        if id != MetricId::NONE {
            let _ = hostcalls::increment_metric(id.0, delta);
        }
    }

    fn record_metric(&self, id: MetricId, value: u64) {
        if id != MetricId::NONE {
            let _ = hostcalls::record_metric(id.0, value);
        }
    }
}

// ------------------------------------------------------------------ streams
// Per-stream calls used by `filter`. Each one is valid only inside the
// callback of the stream's context (the SDK sets the effective context).

/// All request headers (one host call), names lower case, values as bytes.
pub fn request_headers() -> Vec<(String, Vec<u8>)> {
    hostcalls::get_map_bytes(MapType::HttpRequestHeaders).unwrap_or_default()
}

pub fn response_headers() -> Vec<(String, Vec<u8>)> {
    hostcalls::get_map_bytes(MapType::HttpResponseHeaders).unwrap_or_default()
}

pub fn response_header(name: &str) -> Option<Vec<u8>> {
    hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, name)
        .ok()
        .flatten()
}

pub fn set_request_header(name: &str, value: Option<&[u8]>) {
    let _ = hostcalls::set_map_value_bytes(MapType::HttpRequestHeaders, name, value);
}

pub fn remove_request_header(name: &str) {
    let _ = hostcalls::remove_map_value(MapType::HttpRequestHeaders, name);
}

pub fn set_response_header(name: &str, value: &[u8]) {
    let _ = hostcalls::set_map_value_bytes(MapType::HttpResponseHeaders, name, Some(value));
}

pub fn add_response_header(name: &str, value: &[u8]) {
    let _ = hostcalls::add_map_value_bytes(MapType::HttpResponseHeaders, name, value);
}

pub fn remove_response_header(name: &str) {
    let _ = hostcalls::remove_map_value(MapType::HttpResponseHeaders, name);
}

pub fn response_body(start: usize, size: usize) -> Option<Vec<u8>> {
    hostcalls::get_buffer(BufferType::HttpResponseBody, start, size)
        .ok()
        .flatten()
}

pub fn http_call_response_headers() -> Vec<(String, Vec<u8>)> {
    hostcalls::get_map_bytes(MapType::HttpCallResponseHeaders).unwrap_or_default()
}

pub fn http_call_response_body(size: usize) -> Option<Vec<u8>> {
    hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, size)
        .ok()
        .flatten()
}

/// A property (e.g. `["source", "address"]`) as bytes.
pub fn property(path: &[&str]) -> Option<Vec<u8>> {
    hostcalls::get_property(path.to_vec()).ok().flatten()
}

/// A property as UTF-8 text.
pub fn property_str(path: &[&str]) -> Option<String> {
    property(path).and_then(|b| String::from_utf8(b).ok())
}

/// A property that Envoy serialises as a little-endian integer.
pub fn property_u64(path: &[&str]) -> Option<u64> {
    let b = property(path)?;
    let mut a = [0u8; 8];
    let n = b.len().min(8);
    a[..n].copy_from_slice(&b[..n]);
    Some(u64::from_le_bytes(a))
}

/// Sends a local reply with headers already in the ABI's map format;
/// returns false if the host refused it. Through meshguard's own import:
/// the SDK's `send_http_response` panics (aborting the VM) on any status
/// but Ok, and needs `&str` pairs.
pub fn send_local_reply_map(status: u32, headers: &HeaderMap, body: &[u8]) -> bool {
    let map = headers.finish();
    // SAFETY: every pointer/size pair describes a live slice for the call.
    let st = unsafe {
        proxy_send_local_response(
            status,
            std::ptr::null(),
            0,
            body.as_ptr(),
            body.len(),
            map.as_ptr(),
            map.len(),
            -1,
        )
    };
    st == Status::Ok as u32
}

pub fn resume_request() {
    let _ = hostcalls::resume_http_request();
}

pub fn resume_response() {
    let _ = hostcalls::resume_http_response();
}

/// Dispatches an HTTP call to an Envoy cluster; returns the token.
pub fn dispatch_http_call(
    cluster: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<u32, HostError> {
    hostcalls::dispatch_http_call(cluster, headers.to_vec(), body, vec![], timeout)
        .map_err(|s| HostError(status(s)))
}

/// Makes `context_id` the context later calls act on (the root resuming a
/// parked stream). False when that context no longer exists.
pub fn set_effective_context(context_id: u32) -> bool {
    hostcalls::set_effective_context(context_id).is_ok()
}

/// Sets the root context's tick period (0 disables).
pub fn set_tick_period(period: Duration) {
    let _ = hostcalls::set_tick_period(period);
}

/// Reads the plugin configuration buffer.
pub fn plugin_configuration() -> Option<Vec<u8>> {
    hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
        .ok()
        .flatten()
}

/// Calls a host foreign function (e.g. Envoy's `verify_signature`).
pub fn call_foreign_function(name: &str, args: &[u8]) -> Result<Option<Vec<u8>>, HostError> {
    hostcalls::call_foreign_function(name, Some(args)).map_err(|s| HostError(status(s)))
}

/// Sends a unary gRPC call owned by `owner_context` (the root: the host
/// keeps the call and its answer there), then makes `current_context`
/// effective again; returns the call's token. `grpc_service` is a
/// serialized `envoy.config.core.v3.GrpcService` (see
/// `ratelimit::rls::grpc_service`): Envoy always parses it, so no cluster
/// name can be mistaken for a proto. The SDK panics on statuses Envoy's
/// `grpcCall` does not return for a well-formed service (only `Ok`,
/// `ParseFailure`, `BadArgument` for a client it cannot build, and
/// `InternalFailure` exist there); a valid `GrpcService` keeps us on the
/// `Ok` / `InternalFailure` paths.
pub fn dispatch_grpc_call_from(
    owner_context: u32,
    current_context: u32,
    grpc_service: &[u8],
    service: &str,
    method: &str,
    message: &[u8],
    timeout: Duration,
) -> Result<u32, HostError> {
    // The SDK takes the service as `&str` and passes its bytes through.
    // The descriptor is ASCII (an ASCII cluster name of at most 120 bytes,
    // checked by the configuration, and one-byte tags and lengths); anything
    // else is refused here and the caller applies its failure mode.
    let upstream = std::str::from_utf8(grpc_service)
        .map_err(|_| HostError("gRPC service descriptor is not UTF-8".into()))?;
    // The host attaches the call (and later its answer) to the effective
    // context: make it `owner_context`, then give the stream back its own.
    set_effective_context(owner_context);
    let r =
        hostcalls::dispatch_grpc_call(upstream, service, method, vec![], Some(message), timeout)
            .map_err(|s| HostError(status(s)));
    set_effective_context(current_context);
    r
}

/// The body of the gRPC response being delivered (in its callback).
pub fn grpc_call_response_body(size: usize) -> Option<Vec<u8>> {
    hostcalls::get_buffer(BufferType::GrpcReceiveBuffer, 0, size)
        .ok()
        .flatten()
}

/// Cancels an outstanding gRPC call (unknown tokens are ignored).
pub fn cancel_grpc_call(token: u32) {
    let _ = hostcalls::cancel_grpc_call(token);
}

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_send_local_response(
        status_code: u32,
        status_code_details_data: *const u8,
        status_code_details_size: usize,
        body_data: *const u8,
        body_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
    fn proxy_get_status(
        return_code: *mut u32,
        return_message_data: *mut *mut u8,
        return_message_size: *mut usize,
    ) -> Status;
}

/// The message of the gRPC status being delivered (in its callback), for
/// logs. The SDK's own reader panics on a non-UTF-8 message; this one
/// never does.
pub fn grpc_status_message() -> Option<String> {
    let mut code: u32 = 0;
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: the host writes a buffer it allocated through the module's
    // exported allocator (the SDK's `proxy_on_memory_allocate`), so taking
    // ownership with the global allocator's `Vec::from_raw_parts` is how the
    // SDK itself frees such buffers.
    unsafe {
        match proxy_get_status(&mut code, &mut data, &mut size) {
            Status::Ok if !data.is_null() => {
                let bytes = Vec::from_raw_parts(data, size, size);
                Some(String::from_utf8_lossy(&bytes).into_owned())
            }
            _ => None,
        }
    }
}
