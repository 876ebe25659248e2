//! The adapter to the real host: the ONLY file that calls proxy-wasm host
//! functions (declared in `abi.rs`), for both ports ([`Host`] and
//! [`super::stream::Stream`]). Every call's status is handled here and
//! mapped to the domain errors of `host`; nothing here panics, whatever the
//! host returns.

use super::abi::{self, buffer, map, status};
use super::batch::MetricBatch;
use super::header_map::{decode_pairs, HeaderMap};
use super::{Host, HostError, MetricId, MetricKind, SetError, SharedValue};
use std::mem::MaybeUninit;
use std::ptr::{null, null_mut};
use std::time::Duration;

/// The allocator the host uses for every buffer it returns (the ABI's
/// `proxy_on_memory_allocate`): a boxed slice of exactly `size` bytes, so
/// [`take`] can own it as a `Vec` of that length and capacity.
#[no_mangle]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    let mut slice: Box<[MaybeUninit<u8>]> = Box::new_uninit_slice(size);
    let ptr = slice.as_mut_ptr() as *mut u8;
    std::mem::forget(slice);
    ptr
}

/// Owns a buffer the host wrote through [`proxy_on_memory_allocate`].
///
/// # Safety
/// `data` is null or was returned by `proxy_on_memory_allocate(size)` and
/// filled by the host.
unsafe fn take(data: *mut u8, size: usize) -> Option<Vec<u8>> {
    if data.is_null() {
        None
    } else {
        Some(Vec::from_raw_parts(data, size, size))
    }
}

fn host_status(code: u32) -> String {
    format!("host status {code}")
}

/// Calls a host function that returns one buffer: its status, and the
/// buffer if the host wrote one (owned, so it is freed whatever the status).
fn read_raw(call: impl FnOnce(*mut *mut u8, *mut usize) -> u32) -> (u32, Option<Vec<u8>>) {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    let st = call(&mut data, &mut size);
    // SAFETY: the host sets data/size only through our allocator.
    (st, unsafe { take(data, size) })
}

/// [`read_raw`] for lookups: `Ok(None)` when the host says not found or
/// returns nothing.
fn read(call: impl FnOnce(*mut *mut u8, *mut usize) -> u32) -> Result<Option<Vec<u8>>, u32> {
    match read_raw(call) {
        (status::OK, bytes) => Ok(bytes),
        (status::NOT_FOUND, _) => Ok(None),
        (other, _) => Err(other),
    }
}

thread_local! {
    /// The VM's pending counter increments (a worker VM runs one thread;
    /// leaked once so streams and root contexts share it as `'static`).
    static METRICS: &'static MetricBatch = Box::leak(Box::default());
}

/// This VM's counter batch (see `host::batch`), shared by all its root
/// contexts: metric ids belong to the VM, so any root's tick may flush it.
pub fn metric_batch() -> &'static MetricBatch {
    METRICS.with(|m| *m)
}

/// The real host (Envoy). Zero-sized: state lives in the host.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProxyWasmHost;

impl Host for ProxyWasmHost {
    fn now_nanos(&self) -> u64 {
        let mut t: u64 = 0;
        // SAFETY: the host writes one u64.
        match unsafe { abi::proxy_get_current_time_nanoseconds(&mut t) } {
            status::OK => t,
            _ => 0,
        }
    }

    fn shared_get(&self, key: &str) -> Result<SharedValue, HostError> {
        let mut cas: u32 = 0;
        // SAFETY: key is a live slice; the host writes through our allocator.
        let r = read(|d, s| unsafe {
            abi::proxy_get_shared_data(key.as_ptr(), key.len(), d, s, &mut cas)
        });
        match r {
            Ok(Some(v)) => Ok((Some(v), (cas != 0).then_some(cas))),
            Ok(None) => Ok((None, (cas != 0).then_some(cas))),
            Err(s) => Err(HostError(host_status(s))),
        }
    }

    fn shared_set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SetError> {
        // SAFETY: both slices are live for the call.
        let st = unsafe {
            abi::proxy_set_shared_data(
                key.as_ptr(),
                key.len(),
                value.as_ptr(),
                value.len(),
                cas.unwrap_or(0),
            )
        };
        match st {
            status::OK => Ok(()),
            status::CAS_MISMATCH => Err(SetError::CasMismatch),
            s => Err(SetError::Host(host_status(s))),
        }
    }

    fn random_bytes(&self, buf: &mut [u8]) -> Result<(), HostError> {
        getrandom::getrandom(buf).map_err(|e| HostError(format!("getrandom: {e}")))
    }

    fn define_metric(&self, kind: MetricKind, name: &str) -> Result<MetricId, HostError> {
        let t = match kind {
            MetricKind::Counter => abi::metric::COUNTER,
            MetricKind::Gauge => abi::metric::GAUGE,
            MetricKind::Histogram => abi::metric::HISTOGRAM,
        };
        let mut id: u32 = 0;
        // SAFETY: name is live; the host writes one u32.
        match unsafe { abi::proxy_define_metric(t, name.as_ptr(), name.len(), &mut id) } {
            status::OK => Ok(MetricId(id)),
            s => Err(HostError(host_status(s))),
        }
    }

    fn call_foreign(&self, name: &str, args: &[u8]) -> Result<Option<Vec<u8>>, HostError> {
        call_foreign_function(name, args)
    }

    fn increment_metric(&self, id: MetricId, delta: i64) {
        if id != MetricId::NONE {
            // SAFETY: plain values.
            unsafe { abi::proxy_increment_metric(id.0, delta) };
        }
    }

    fn record_metric(&self, id: MetricId, value: u64) {
        if id != MetricId::NONE {
            // SAFETY: plain values.
            unsafe { abi::proxy_record_metric(id.0, value) };
        }
    }
}

// ------------------------------------------------------------------ streams
// Per-stream calls used by `filter`. Each one acts on the host's effective
// context: the stream whose callback is running, or the one the root made
// effective with `set_effective_context`.

fn map_pairs(map_type: u32) -> Vec<(String, Vec<u8>)> {
    // SAFETY: the host writes through our allocator.
    match read(|d, s| unsafe { abi::proxy_get_header_map_pairs(map_type, d, s) }) {
        Ok(Some(b)) => decode_pairs(&b).unwrap_or_default(),
        _ => Vec::new(),
    }
}

fn map_value(map_type: u32, name: &str) -> Option<Vec<u8>> {
    // SAFETY: name is live; the host writes through our allocator.
    read(|d, s| unsafe {
        abi::proxy_get_header_map_value(map_type, name.as_ptr(), name.len(), d, s)
    })
    .ok()
    .flatten()
}

/// `proxy_replace_header_map_value` or `proxy_add_header_map_value`.
type MapWrite = unsafe extern "C" fn(u32, *const u8, usize, *const u8, usize) -> u32;

fn map_write(write: MapWrite, map_type: u32, name: &str, value: &[u8]) {
    // SAFETY: both slices are live for the call.
    unsafe {
        write(
            map_type,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        )
    };
}

fn map_replace(map_type: u32, name: &str, value: &[u8]) {
    map_write(abi::proxy_replace_header_map_value, map_type, name, value);
}

fn map_add(map_type: u32, name: &str, value: &[u8]) {
    map_write(abi::proxy_add_header_map_value, map_type, name, value);
}

fn map_remove(map_type: u32, name: &str) {
    // SAFETY: name is live for the call.
    unsafe { abi::proxy_remove_header_map_value(map_type, name.as_ptr(), name.len()) };
}

fn buffer_bytes(buffer_type: u32, start: usize, size: usize) -> Option<Vec<u8>> {
    // SAFETY: the host writes through our allocator.
    read(|d, s| unsafe { abi::proxy_get_buffer_bytes(buffer_type, start, size, d, s) })
        .ok()
        .flatten()
}

/// The request headers as the host serialized them (one host call), for
/// [`super::header_map::visit_pairs`]; `None` when the host gives none.
pub fn request_headers_raw() -> Option<Vec<u8>> {
    // SAFETY: the host writes through our allocator.
    read(|d, s| unsafe { abi::proxy_get_header_map_pairs(map::REQUEST_HEADERS, d, s) })
        .ok()
        .flatten()
}

pub fn response_headers() -> Vec<(String, Vec<u8>)> {
    map_pairs(map::RESPONSE_HEADERS)
}

pub fn response_header(name: &str) -> Option<Vec<u8>> {
    map_value(map::RESPONSE_HEADERS, name)
}

/// A response trailer's value (read for gRPC calls' `grpc-status`).
pub fn response_trailer(name: &str) -> Option<Vec<u8>> {
    map_value(map::RESPONSE_TRAILERS, name)
}

/// Sets (replaces) a request header; `None` removes it.
pub fn set_request_header(name: &str, value: Option<&[u8]>) {
    match value {
        Some(v) => map_replace(map::REQUEST_HEADERS, name, v),
        None => map_remove(map::REQUEST_HEADERS, name),
    }
}

pub fn remove_request_header(name: &str) {
    map_remove(map::REQUEST_HEADERS, name);
}

pub fn set_response_header(name: &str, value: &[u8]) {
    map_replace(map::RESPONSE_HEADERS, name, value);
}

pub fn add_response_header(name: &str, value: &[u8]) {
    map_add(map::RESPONSE_HEADERS, name, value);
}

pub fn response_body(start: usize, size: usize) -> Option<Vec<u8>> {
    buffer_bytes(buffer::RESPONSE_BODY, start, size)
}

pub fn http_call_response_headers() -> Vec<(String, Vec<u8>)> {
    map_pairs(map::HTTP_CALL_RESPONSE_HEADERS)
}

pub fn http_call_response_body(size: usize) -> Option<Vec<u8>> {
    buffer_bytes(buffer::HTTP_CALL_RESPONSE_BODY, 0, size)
}

/// A property (e.g. `["source", "address"]`) as bytes. The ABI's path is
/// the segments joined by NULs.
pub fn property(path: &[&str]) -> Option<Vec<u8>> {
    let serialized = path.join("\0");
    // SAFETY: the path is live; the host writes through our allocator.
    read(|d, s| unsafe { abi::proxy_get_property(serialized.as_ptr(), serialized.len(), d, s) })
        .ok()
        .flatten()
}

/// Sends a local reply with headers already in the ABI's map format;
/// returns false if the host refused it.
pub fn send_local_reply_map(status: u32, headers: &HeaderMap, body: &[u8]) -> bool {
    let map = headers.finish();
    // SAFETY: every pointer/size pair describes a live slice for the call.
    let st = unsafe {
        abi::proxy_send_local_response(
            status,
            null(),
            0,
            body.as_ptr(),
            body.len(),
            map.as_ptr(),
            map.len(),
            -1,
        )
    };
    st == status::OK
}

pub fn resume_request() {
    // SAFETY: plain value.
    unsafe { abi::proxy_continue_stream(abi::stream::REQUEST) };
}

fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

/// Dispatches an HTTP call to an Envoy cluster; returns the token.
pub fn dispatch_http_call(
    cluster: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<u32, HostError> {
    let headers = HeaderMap::from_pairs(headers).finish();
    let trailers = HeaderMap::default().finish();
    let body = body.unwrap_or_default();
    let mut token: u32 = 0;
    // SAFETY: every pointer/size pair describes a live slice for the call.
    let st = unsafe {
        abi::proxy_http_call(
            cluster.as_ptr(),
            cluster.len(),
            headers.as_ptr(),
            headers.len(),
            body.as_ptr(),
            body.len(),
            trailers.as_ptr(),
            trailers.len(),
            millis(timeout),
            &mut token,
        )
    };
    match st {
        status::OK => Ok(token),
        s => Err(HostError(host_status(s))),
    }
}

/// Makes `context_id` the context later calls act on (the root resuming a
/// parked stream). False when that context no longer exists.
pub fn set_effective_context(context_id: u32) -> bool {
    // SAFETY: plain value.
    unsafe { abi::proxy_set_effective_context(context_id) == status::OK }
}

/// Sets the root context's tick period (0 disables).
pub fn set_tick_period(period: Duration) {
    // SAFETY: plain value.
    unsafe { abi::proxy_set_tick_period_milliseconds(millis(period)) };
}

/// Reads the plugin configuration buffer.
pub fn plugin_configuration() -> Option<Vec<u8>> {
    buffer_bytes(buffer::PLUGIN_CONFIGURATION, 0, usize::MAX)
}

/// Calls a host foreign function (e.g. Envoy's `verify_signature`). A
/// host without it answers not found: an error, so the caller falls back.
pub fn call_foreign_function(name: &str, args: &[u8]) -> Result<Option<Vec<u8>>, HostError> {
    // SAFETY: both slices are live; the host writes through our allocator.
    let (st, bytes) = read_raw(|d, s| unsafe {
        abi::proxy_call_foreign_function(name.as_ptr(), name.len(), args.as_ptr(), args.len(), d, s)
    });
    match st {
        status::OK => Ok(bytes),
        s => Err(HostError(host_status(s))),
    }
}

/// Sends a unary gRPC call owned by `owner_context` (the root: the host
/// keeps the call and its answer there), then makes `current_context`
/// effective again; returns the call's token. `grpc_service` is a
/// serialized `envoy.config.core.v3.GrpcService` (see
/// `ratelimit::rls::grpc_service`): Envoy always parses it, so no cluster
/// name can be mistaken for a proto.
pub fn dispatch_grpc_call_from(
    owner_context: u32,
    current_context: u32,
    grpc_service: &[u8],
    service: &str,
    method: &str,
    message: &[u8],
    timeout: Duration,
) -> Result<u32, HostError> {
    let metadata = HeaderMap::default().finish();
    let mut token: u32 = 0;
    // The host attaches the call (and later its answer) to the effective
    // context: make it `owner_context`, then give the stream back its own.
    set_effective_context(owner_context);
    // SAFETY: every pointer/size pair describes a live slice for the call.
    let st = unsafe {
        abi::proxy_grpc_call(
            grpc_service.as_ptr(),
            grpc_service.len(),
            service.as_ptr(),
            service.len(),
            method.as_ptr(),
            method.len(),
            metadata.as_ptr(),
            metadata.len(),
            message.as_ptr(),
            message.len(),
            millis(timeout),
            &mut token,
        )
    };
    set_effective_context(current_context);
    match st {
        status::OK => Ok(token),
        s => Err(HostError(host_status(s))),
    }
}

/// The body of the gRPC response being delivered (in its callback).
pub fn grpc_call_response_body(size: usize) -> Option<Vec<u8>> {
    buffer_bytes(buffer::GRPC_RECEIVE, 0, size)
}

/// Cancels an outstanding gRPC call (unknown tokens are ignored).
pub fn cancel_grpc_call(token: u32) {
    // SAFETY: plain value.
    unsafe { abi::proxy_grpc_cancel(token) };
}

/// The message of the gRPC status being delivered (in its callback), for
/// logs, whatever its bytes.
pub fn grpc_status_message() -> Option<String> {
    let mut code: u32 = 0;
    // SAFETY: the host writes one u32 and a buffer through our allocator.
    let bytes = read(|d, s| unsafe { abi::proxy_get_status(&mut code, d, s) })
        .ok()
        .flatten()?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

impl super::stream::Stream for ProxyWasmHost {
    fn request_headers_raw(&self) -> Option<Vec<u8>> {
        request_headers_raw()
    }
    fn set_request_header(&self, name: &str, value: Option<&[u8]>) {
        set_request_header(name, value)
    }
    fn remove_request_header(&self, name: &str) {
        remove_request_header(name)
    }
    fn response_headers(&self) -> Vec<(String, Vec<u8>)> {
        response_headers()
    }
    fn response_header(&self, name: &str) -> Option<Vec<u8>> {
        response_header(name)
    }
    fn response_trailer(&self, name: &str) -> Option<Vec<u8>> {
        response_trailer(name)
    }
    fn set_response_header(&self, name: &str, value: &[u8]) {
        set_response_header(name, value)
    }
    fn add_response_header(&self, name: &str, value: &[u8]) {
        add_response_header(name, value)
    }
    fn response_body(&self, start: usize, size: usize) -> Option<Vec<u8>> {
        response_body(start, size)
    }
    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        property(path)
    }
    fn send_local_reply(&self, status: u32, headers: &HeaderMap, body: &[u8]) -> bool {
        send_local_reply_map(status, headers, body)
    }
    fn resume_request(&self) {
        resume_request()
    }
    fn set_effective_context(&self, context_id: u32) -> bool {
        set_effective_context(context_id)
    }
    fn set_tick_period(&self, period: Duration) {
        set_tick_period(period)
    }
    fn metric_batch(&self) -> &MetricBatch {
        metric_batch()
    }
    fn dispatch_grpc_call_from(
        &self,
        owner_context: u32,
        current_context: u32,
        grpc_service: &[u8],
        service: &str,
        method: &str,
        message: &[u8],
        timeout: Duration,
    ) -> Result<u32, HostError> {
        dispatch_grpc_call_from(
            owner_context,
            current_context,
            grpc_service,
            service,
            method,
            message,
            timeout,
        )
    }
    fn cancel_grpc_call(&self, token: u32) {
        cancel_grpc_call(token)
    }
    fn grpc_call_response_body(&self, size: usize) -> Option<Vec<u8>> {
        grpc_call_response_body(size)
    }
    fn grpc_status_message(&self) -> Option<String> {
        grpc_status_message()
    }
    fn dispatch_http_call(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<u32, HostError> {
        dispatch_http_call(cluster, headers, body, timeout)
    }
    fn http_call_response_headers(&self) -> Vec<(String, Vec<u8>)> {
        http_call_response_headers()
    }
    fn http_call_response_body(&self, size: usize) -> Option<Vec<u8>> {
        http_call_response_body(size)
    }
}

// ------------------------------------------------------------------ logging

/// `log` records go to the host's log (`proxy_log`), at the host's level
/// filter; `init_logging` installs it once per VM, with a panic hook that
/// says why before `panic = "abort"` ends the VM.
struct HostLogger;

static LOGGER: HostLogger = HostLogger;

impl log::Log for HostLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = match record.level() {
            log::Level::Trace => abi::level::TRACE,
            log::Level::Debug => abi::level::DEBUG,
            log::Level::Info => abi::level::INFO,
            log::Level::Warn => abi::level::WARN,
            log::Level::Error => abi::level::ERROR,
        };
        let message = record.args().to_string();
        // SAFETY: the message is live for the call.
        unsafe { abi::proxy_log(level, message.as_ptr(), message.len()) };
    }

    fn flush(&self) {}
}

/// Installs the host logger (info and above) and the panic hook.
pub fn init_logging() {
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
        std::panic::set_hook(Box::new(|info| log::error!("meshguard: panic: {info}")));
    }
}
