//! The panic guard at the FFI edge: every `extern "C"` hook Envoy calls
//! runs its body through one of the functions here, inside
//! [`std::panic::catch_unwind`] (the native module is built with
//! `panic = "unwind"`: the `native` cargo profile). A panic in meshguard's
//! code (a bug, an input no test covered) then costs the request it
//! happened in, not the Envoy process: without the guard a panic is an
//! abort (unwinding out of an `extern "C"` function aborts too).
//!
//! After a panic the guard, for the hook that panicked:
//!
//! - logs it once, at error level, with the hook's name and the panic's
//!   message and place (at most one such line per second and thread; the
//!   next line says how many were not logged), and counts it in the
//!   counter `meshguard.panics` of the configuration (native only: the
//!   wasm build has no such event, V8 traps the VM);
//! - returns what fails closed for that hook:
//!
//! | hook | after a panic |
//! |---|---|
//! | `config_new` | the configuration is refused (null), as a bad one is |
//! | `filter_new` | the stream is created failed: its request gets the 500 below |
//! | request headers | a local reply `500 {"error":"internal_error",...}` (a gRPC call: `INTERNAL`), the request stops there |
//! | response headers, body, trailers | what is there passes; the policies' response side is skipped for that stream (no cache fill, no breaker outcome, no usage report) |
//! | `filter_destroy` | the stream's memory is freed without running meshguard code |
//! | a callout's answer, a scheduled event of a stream | the event is dropped; the stream gets the 500 (a request paused for that event would wait forever; Envoy resets a stream whose response has begun) |
//! | a main-thread event of a configuration | the event is dropped |
//!
//! - cuts the stream off: it is marked failed (every later hook of it
//!   returns at once, without running meshguard code, so the local reply's
//!   own response hooks pass too), its `HttpStream` and waker are dropped
//!   (memory only; the box is freed at its destroy) and its context is
//!   forgotten, so a worker tick
//!   finds it gone (as a reset stream); calls it carried are forgotten
//!   (Envoy cancels them with the stream). What it held in shared data (a
//!   cache fill lock, a breaker's half-open probe) is freed by the same
//!   expiry that frees what a crashed proxy held (`LOCK_TTL_NS`, the
//!   breaker's lost-probe rule).
//!
//! Thread-local state a panic leaves half-updated: every `RefCell` borrow
//! is released by unwinding (the worker's table, the calls, the shared
//! answers); the effective stream and the call carrier are the hook's
//! `NativeHost`'s, gone with it; the answer being delivered is cleared. A
//! box Envoy destroys while the worker is busy is ended and freed after
//! the outer hook (`DESTROYED`), as the hook itself does.
//! An end seen while the table was busy and calls not yet routed stay
//! queued: the next hook on the thread routes them as usual. The process-wide locks
//! (`store.rs`, `callout.rs`, `timer.rs`, the dead-configuration list)
//! recover from poisoning with `into_inner`: under each, only whole values
//! are pushed, replaced or removed.
//!
//! The panic hook ([`init`], installed once when Envoy loads the module)
//! keeps the message for the guard instead of printing to stderr; a panic
//! outside any hook (the module's own timer thread) is logged by the hook
//! itself. Both go to Envoy's log (`dynamic_modules` logger).
//!
//! A panic while a panic unwinds (in a `Drop`), or an allocation failure,
//! still aborts: Rust cannot unwind those.
//!
//! Feature `panic-test` (never in the shipped module: `make native-panic-test`
//! builds `target/panic-test/libmeshguard.so`): a request header
//! `x-meshguard-test-panic: <hook>` makes that hook of its stream panic,
//! with the worker's table borrowed and the stream's filter current, as a
//! bug deep in the pipeline would (`tests/e2e/test_native_panic.py`).

use super::abi::{self, EnvoyBuffer, FilterEnvoyPtr, ModuleBuffer};
use super::config::ModuleConfig;
use super::host::{self, NativeHost};
use super::metrics::PANICS as METRIC;
use super::{callout, StreamBox, StreamEntry};
use crate::host::header_map::HeaderMap;
use crate::host::Host;
use std::any::Any;
use std::cell::{Cell, RefCell};
use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The body of the 500 a request gets when a hook of its stream panicked.
pub(super) const BODY: &str =
    r#"{"error":"internal_error","error_description":"meshguard failed on this request"}"#;

thread_local! {
    /// The last panic's message and place on this thread (the panic hook
    /// writes it, the guard takes it).
    static MESSAGE: RefCell<Option<String>> = const { RefCell::new(None) };
    /// Guarded hooks running on this thread (nested: a local reply's
    /// response hooks run inside the request's hook).
    static DEPTH: Cell<u32> = const { Cell::new(0) };
    /// Streams of this thread cut off after a panic, by their handle.
    static FAILED: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
    /// (second of the last panic logged, panics not logged since).
    static LOGGED: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
}

/// Installs the panic hook (once per process; see the module docs).
pub(super) fn init() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let what = payload_text(info.payload());
            let text = match info.location() {
                Some(l) => format!("{what} (at {}:{})", l.file(), l.line()),
                None => what,
            };
            if DEPTH.with(Cell::get) > 0 {
                MESSAGE.with(|m| {
                    if let Ok(mut m) = m.try_borrow_mut() {
                        *m = Some(text);
                    }
                });
            } else {
                let thread = std::thread::current();
                log::error!(
                    "meshguard: panic outside any Envoy hook (thread {}): {text}",
                    thread.name().unwrap_or("unnamed")
                );
            }
        }));
    });
}

fn payload_text(p: &(dyn Any + Send)) -> String {
    match (p.downcast_ref::<&str>(), p.downcast_ref::<String>()) {
        (Some(s), _) => (*s).to_owned(),
        (_, Some(s)) => s.clone(),
        _ => "a panic without a message".to_owned(),
    }
}

/// What a hook leaves on its thread, put back after a panic (the
/// effective stream and the carrier are its `NativeHost`'s, gone with it).
struct Saved;

impl Saved {
    fn take() -> Self {
        Saved
    }

    fn restore(self) {
        host::ANSWER.with(|a| {
            if let Ok(mut a) = a.try_borrow_mut() {
                *a = None;
            }
        });
    }
}

/// Runs `f`; a panic's message (and place) as the error.
fn run<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    DEPTH.with(|d| d.set(d.get().saturating_add(1)));
    let r = catch_unwind(AssertUnwindSafe(f));
    DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
    r.map_err(|payload| {
        MESSAGE
            .with(|m| m.try_borrow_mut().ok().and_then(|mut m| m.take()))
            .unwrap_or_else(|| payload_text(payload.as_ref()))
    })
}

/// Work after a panic: never unwinds out (a second panic is dropped).
fn quietly(f: impl FnOnce()) {
    let _ = run(f);
}

/// Logs (rate-limited) and counts a panic caught in `hook`.
fn report(hook: &str, cfg: Option<&ModuleConfig>, message: &str) {
    quietly(|| {
        if let Some(cfg) = cfg {
            if let Some(id) = cfg.metrics.get(METRIC) {
                NativeHost::new(cfg).increment_metric(*id, 1);
            }
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let (last, skipped) = LOGGED.with(Cell::get);
        if now == last {
            LOGGED.with(|l| l.set((last, skipped.saturating_add(1))));
            return;
        }
        LOGGED.with(|l| l.set((now, 0)));
        let more = match skipped {
            0 => String::new(),
            n => format!(" ({n} more panics in the last second not logged)"),
        };
        log::error!(
            "meshguard: panic in hook {hook} (caught: only its stream or event fails): {message}{more}"
        );
    });
}

/// The handle and configuration of a stream hook's `module` pointer.
fn stream_of<'a>(module: *const c_void) -> Option<(&'a StreamBox, &'a ModuleConfig)> {
    // SAFETY: Envoy passes back the pointer `..._filter_new` returned,
    // live until `..._filter_destroy`.
    unsafe { super::stream_box(module) }
}

/// Streams cut off in the whole process (each thread's `FAILED` lists its
/// own): while none is, `is_failed` needs no thread-local (every hook of
/// every stream asks).
static FAILED_ANYWHERE: AtomicUsize = AtomicUsize::new(0);

fn is_failed(module: *const c_void) -> bool {
    if FAILED_ANYWHERE.load(Ordering::Relaxed) == 0 {
        return false;
    }
    FAILED.with(|f| f.try_borrow().is_ok_and(|f| f.contains(&(module as usize))))
}

/// Marks the stream failed and takes it out of the worker's table (when
/// the table is free: a nested hook leaves that to the stream's destroy).
fn cut_off(module: *const c_void) {
    quietly(|| {
        FAILED.with(|f| {
            let mut f = f.borrow_mut();
            if !f.contains(&(module as usize)) {
                f.push(module as usize);
                FAILED_ANYWHERE.fetch_add(1, Ordering::Relaxed);
            }
        });
        let Some((b, _)) = stream_of(module) else {
            return;
        };
        let id = b.context_id;
        if id == 0 {
            // A stream created failed (`filter_new`): nothing of it is in
            // the tables (0 is the main thread's carrier, never a stream's).
            return;
        }
        super::with(|w| {
            // SAFETY: Envoy's box, live in its hook (or its destroy).
            let e = unsafe { w.streams.get(b) };
            if e.waker.take().is_some() {
                w.waking.retain(|p| !std::ptr::eq(*p, b));
            }
            drop(e.stream.take());
        });
        drop(callout::take_all(id));
        host::forget_context(id);
        super::HELD_RESPONSES.with(|r| r.borrow_mut().retain(|x| *x != id));
        super::ENDED.with(|r| r.borrow_mut().retain(|x| *x != id));
    });
}

/// A hook without a stream or configuration (`program_init`,
/// `config_new`, `config_destroy`): `f`'s value, `fallback` after a panic.
pub(super) fn hook<R>(name: &str, fallback: R, f: impl FnOnce() -> R) -> R {
    let saved = Saved::take();
    match run(f) {
        Ok(r) => r,
        Err(message) => {
            saved.restore();
            report(name, None, &message);
            fallback
        }
    }
}

/// A configuration's main-thread hook (`module` is the pointer
/// `config_new` returned): the event is dropped after a panic.
pub(super) fn config(name: &str, module: *const c_void, f: impl FnOnce()) {
    let saved = Saved::take();
    if let Err(message) = run(f) {
        saved.restore();
        callout::clear_main();
        // SAFETY: Envoy passes back the pointer `config_new` returned.
        let cfg = unsafe { module.cast::<ModuleConfig>().as_ref() };
        report(name, cfg, &message);
    }
}

/// A hook of one stream: `fallback` at once for a stream cut off, and
/// after a panic (which cuts it off).
pub(super) fn stream<R>(
    name: &str,
    filter: FilterEnvoyPtr,
    module: *const c_void,
    fallback: R,
    f: impl FnOnce() -> R,
) -> R {
    if is_failed(module) {
        return fallback;
    }
    let saved = Saved::take();
    let r = run(|| {
        #[cfg(feature = "panic-test")]
        test_panic::check(name, filter, module);
        #[cfg(not(feature = "panic-test"))]
        let _ = filter;
        f()
    });
    match r {
        Ok(r) => r,
        Err(message) => {
            saved.restore();
            cut_off(module);
            report(name, stream_of(module).map(|(_, c)| c), &message);
            fallback
        }
    }
}

/// A stream's event (a scheduled tick, a callout's answer): dropped after a
/// panic, and the stream, cut off, is answered with the 500 (it may be a
/// request paused for that event: nothing would resume it; when its
/// response has begun, Envoy resets it instead).
pub(super) fn stream_event(
    name: &str,
    filter: FilterEnvoyPtr,
    module: *const c_void,
    f: impl FnOnce(),
) {
    if is_failed(module) {
        return;
    }
    let saved = Saved::take();
    let r = run(|| {
        #[cfg(feature = "panic-test")]
        test_panic::check(name, filter, module);
        f()
    });
    if let Err(message) = r {
        saved.restore();
        cut_off(module);
        report(name, stream_of(module).map(|(_, c)| c), &message);
        fail_request(filter);
    }
}

/// The request-headers hook: a stream cut off, or a panic, answers the
/// request with the 500 (see the module docs).
pub(super) fn request_headers(
    filter: FilterEnvoyPtr,
    module: *const c_void,
    f: impl FnOnce() -> u32,
) -> u32 {
    const FAILED: u32 = u32::MAX;
    match stream("request_headers", filter, module, FAILED, f) {
        FAILED => {
            fail_request(filter);
            abi::status::STOP_ALL_AND_WATERMARK
        }
        status => status,
    }
}

/// `filter_new`: after a panic the stream is created failed (its request
/// gets the 500), or null without a configuration.
pub(super) fn filter_new(cfg: *const c_void, f: impl FnOnce() -> *const c_void) -> *const c_void {
    let saved = Saved::take();
    match run(f) {
        Ok(p) => p,
        Err(message) => {
            saved.restore();
            let cfg = cfg.cast::<ModuleConfig>();
            // SAFETY: Envoy passes the pointer `config_new` returned.
            report("filter_new", unsafe { cfg.as_ref() }, &message);
            if cfg.is_null() {
                return std::ptr::null();
            }
            // Context 0 is never a stream's (`Worker::next_id`).
            let h = Box::into_raw(failed_box(cfg)) as *const c_void;
            cut_off(h);
            h
        }
    }
}

/// A stream box with no stream (context 0: in no table).
fn failed_box(cfg: *const ModuleConfig) -> Box<StreamBox> {
    Box::new(StreamBox {
        context_id: 0,
        cfg,
        // SAFETY: Envoy passes the pointer `config_new` returned.
        cfg_id: unsafe { cfg.as_ref() }.map_or(0, |c| c.id),
        filter: std::ptr::null_mut(),
        idle: std::cell::Cell::new(false),
        end_seen: std::cell::Cell::new(false),
        entry: std::cell::UnsafeCell::new(StreamEntry {
            stream: None,
            deferred: false,
            held: false,
            waker: None,
        }),
    })
}

/// `filter_destroy`: a stream cut off is freed without meshguard code;
/// after a panic, what is left of it too.
///
/// # Safety
/// `module` is a pointer `..._filter_new` returned, destroyed once.
pub(super) unsafe fn destroy(module: *const c_void, f: impl FnOnce()) {
    if !is_failed(module) {
        let saved = Saved::take();
        let r = run(|| {
            #[cfg(feature = "panic-test")]
            test_panic::check("filter_destroy", std::ptr::null_mut(), module);
            f()
        });
        let Err(message) = r else {
            return;
        };
        saved.restore();
        report(
            "filter_destroy",
            stream_of(module).map(|(_, c)| c),
            &message,
        );
    }
    // Cut off (again: the table may have been busy at the panic), then
    // forgotten and freed.
    cut_off(module);
    FAILED.with(|f| {
        if let Ok(mut f) = f.try_borrow_mut() {
            let before = f.len();
            f.retain(|m| *m != module as usize);
            FAILED_ANYWHERE.fetch_sub(before - f.len(), Ordering::Relaxed);
        }
    });
    if module.is_null() {
        return;
    }
    // A panic after the hook deferred the box (`DESTROYED`) leaves it there.
    super::DESTROYED.with(|d| {
        if let Ok(mut d) = d.try_borrow_mut() {
            d.retain(|p| *p != module as usize);
        }
    });
    if super::with(|_| ()).is_none() {
        // The worker is busy (a nested hook): the box may still be in its
        // `waking` list; ended (no stream left: nothing of meshguard's
        // runs) and freed after the outer hook, as the hook would.
        super::DESTROYED.with(|d| d.borrow_mut().push(module as usize));
        super::DEFERRED.with(|d| d.set(true));
        return;
    }
    // SAFETY: ours, from `new_box`, not freed (the hook frees it as its
    // last step, which cannot panic), out of every list.
    unsafe { super::free_box(module as *mut StreamBox) };
}

/// A request header, as Envoy has it (only the first value).
fn request_header(filter: FilterEnvoyPtr, name: &str) -> Option<Vec<u8>> {
    if filter.is_null() {
        return None;
    }
    let mut out = EnvoyBuffer::NULL;
    // SAFETY: the live filter of the running hook; Envoy writes `out`.
    let ok = unsafe {
        abi::envoy_dynamic_module_callback_http_get_header(
            filter,
            abi::header_type::REQUEST_HEADERS,
            ModuleBuffer::of(name.as_bytes()),
            &mut out,
            0,
            std::ptr::null_mut(),
        )
    };
    // SAFETY: Envoy's buffer, live until the hook returns.
    (ok && !out.ptr.is_null()).then(|| unsafe { out.to_vec() })
}

/// Answers the request with meshguard's 500 (a gRPC call: `INTERNAL`).
fn fail_request(filter: FilterEnvoyPtr) {
    let reply = run(|| {
        let ct = request_header(filter, "content-type");
        match crate::grpc::Kind::of(ct.as_deref()) {
            Some(kind) => {
                let code = crate::grpc::Code::INTERNAL;
                let message = "internal_error: meshguard failed on this request";
                let (map, body) =
                    crate::filter::state::grpc_reply(kind, ct.as_deref(), code, message, &[]);
                (200, map, body)
            }
            None => json_500(),
        }
    });
    let (status, map, body) = reply.unwrap_or_else(|_| json_500());
    let sent = run(|| host::send_response(filter, status, &map, &body, b"meshguard_panic"));
    if !matches!(sent, Ok(true)) {
        log::warn!("meshguard: the host refused the local 500 reply after a panic");
    }
}

/// The plain 500 after a panic (a request that is not gRPC, or when
/// building the gRPC reply failed too).
fn json_500() -> (u32, HeaderMap, Vec<u8>) {
    let mut map = HeaderMap::with_capacity(1, 32);
    map.add(b"content-type", b"application/json");
    (500, map, BODY.as_bytes().to_vec())
}

// ---------------------------------------------------------------- exports
//
// The symbols Envoy resolves: each runs the hook of the same name in
// `mod.rs` inside the guard.

use super as hooks;
use super::abi::{ConfigEnvoyPtr, EnvoyHeader};

const GO: u32 = abi::status::CONTINUE;

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const u8 {
    hook("program_init", std::ptr::null(), || {
        init();
        hooks::envoy_dynamic_module_on_program_init()
    })
}

/// # Safety
/// Envoy's buffers are live for the call.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    config_envoy: ConfigEnvoyPtr,
    name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> *const c_void {
    hook("config_new", std::ptr::null(), || {
        // SAFETY: the caller's promise.
        unsafe { hooks::envoy_dynamic_module_on_http_filter_config_new(config_envoy, name, config) }
    })
}

/// # Safety
/// `p` is a pointer `..._config_new` returned.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(p: *const c_void) {
    // SAFETY: the caller's promise.
    hook("config_destroy", (), || unsafe {
        hooks::envoy_dynamic_module_on_http_filter_config_destroy(p)
    })
}

/// # Safety
/// `cfg` is a pointer `..._config_new` returned.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_new(
    cfg: *const c_void,
    filter: FilterEnvoyPtr,
) -> *const c_void {
    // SAFETY: the caller's promise.
    filter_new(cfg, || unsafe {
        hooks::envoy_dynamic_module_on_http_filter_new(cfg, filter)
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    filter: FilterEnvoyPtr,
    module: *const c_void,
    end_of_stream: bool,
) -> u32 {
    request_headers(filter, module, || {
        hooks::envoy_dynamic_module_on_http_filter_request_headers(filter, module, end_of_stream)
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    filter: FilterEnvoyPtr,
    module: *const c_void,
    end_of_stream: bool,
) -> u32 {
    stream("request_body", filter, module, GO, || {
        hooks::envoy_dynamic_module_on_http_filter_request_body(filter, module, end_of_stream)
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
    filter: FilterEnvoyPtr,
    module: *const c_void,
) -> u32 {
    stream("request_trailers", filter, module, GO, || {
        hooks::envoy_dynamic_module_on_http_filter_request_trailers(filter, module)
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    filter: FilterEnvoyPtr,
    module: *const c_void,
    end_of_stream: bool,
) -> u32 {
    stream("response_headers", filter, module, GO, || {
        hooks::envoy_dynamic_module_on_http_filter_response_headers(filter, module, end_of_stream)
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
    filter: FilterEnvoyPtr,
    module: *const c_void,
    end_of_stream: bool,
) -> u32 {
    stream("response_body", filter, module, GO, || {
        hooks::envoy_dynamic_module_on_http_filter_response_body(filter, module, end_of_stream)
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(
    filter: FilterEnvoyPtr,
    module: *const c_void,
) -> u32 {
    stream("response_trailers", filter, module, GO, || {
        hooks::envoy_dynamic_module_on_http_filter_response_trailers(filter, module)
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(
    filter: FilterEnvoyPtr,
    module: *const c_void,
) {
    stream("stream_complete", filter, module, (), || {
        hooks::envoy_dynamic_module_on_http_filter_stream_complete(filter, module)
    })
}

/// # Safety
/// `module` is a pointer `..._filter_new` returned; Envoy destroys it once.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_destroy(module: *const c_void) {
    // SAFETY: the caller's promise.
    unsafe {
        destroy(module, || {
            hooks::envoy_dynamic_module_on_http_filter_destroy(module)
        })
    }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(
    filter: FilterEnvoyPtr,
    module: *const c_void,
    event_id: u64,
) {
    stream_event("scheduled", filter, module, || {
        hooks::envoy_dynamic_module_on_http_filter_scheduled(filter, module, event_id)
    })
}

#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
    filter: FilterEnvoyPtr,
    module: *const c_void,
    callout_id: u64,
    result: u32,
    headers: *const EnvoyHeader,
    headers_len: usize,
    body: *const EnvoyBuffer,
    body_len: usize,
) {
    stream_event("http_callout_done", filter, module, || {
        hooks::envoy_dynamic_module_on_http_filter_http_callout_done(
            filter,
            module,
            callout_id,
            result,
            headers,
            headers_len,
            body,
            body_len,
        )
    })
}

/// # Safety
/// `module` is a pointer `..._config_new` returned.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_scheduled(
    config_envoy: ConfigEnvoyPtr,
    module: *const c_void,
    event_id: u64,
) {
    // SAFETY: the caller's promise.
    config("config_scheduled", module, || unsafe {
        hooks::envoy_dynamic_module_on_http_filter_config_scheduled(config_envoy, module, event_id)
    })
}

/// # Safety
/// `module` is a pointer `..._config_new` returned; Envoy's buffers are
/// live for the call.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_http_callout_done(
    config_envoy: ConfigEnvoyPtr,
    module: *const c_void,
    callout_id: u64,
    result: u32,
    headers: *const EnvoyHeader,
    headers_len: usize,
    body: *const EnvoyBuffer,
    body_len: usize,
) {
    // SAFETY: the caller's promise.
    config("config_http_callout_done", module, || unsafe {
        hooks::envoy_dynamic_module_on_http_filter_config_http_callout_done(
            config_envoy,
            module,
            callout_id,
            result,
            headers,
            headers_len,
            body,
            body_len,
        )
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers(
    filter: FilterEnvoyPtr,
    module: *const c_void,
    stream_id: u64,
    headers: *const EnvoyHeader,
    headers_len: usize,
    end_stream: bool,
) {
    stream("http_stream_headers", filter, module, (), || {
        hooks::envoy_dynamic_module_on_http_filter_http_stream_headers(
            filter,
            module,
            stream_id,
            headers,
            headers_len,
            end_stream,
        )
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data(
    filter: FilterEnvoyPtr,
    module: *const c_void,
    stream_id: u64,
    data: *const EnvoyBuffer,
    data_len: usize,
    end_stream: bool,
) {
    stream("http_stream_data", filter, module, (), || {
        hooks::envoy_dynamic_module_on_http_filter_http_stream_data(
            filter, module, stream_id, data, data_len, end_stream,
        )
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers(
    filter: FilterEnvoyPtr,
    module: *const c_void,
    stream_id: u64,
    trailers: *const EnvoyHeader,
    trailers_len: usize,
) {
    stream("http_stream_trailers", filter, module, (), || {
        hooks::envoy_dynamic_module_on_http_filter_http_stream_trailers(
            filter,
            module,
            stream_id,
            trailers,
            trailers_len,
        )
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete(
    filter: FilterEnvoyPtr,
    module: *const c_void,
    stream_id: u64,
) {
    stream("http_stream_complete", filter, module, (), || {
        hooks::envoy_dynamic_module_on_http_filter_http_stream_complete(filter, module, stream_id)
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset(
    filter: FilterEnvoyPtr,
    module: *const c_void,
    stream_id: u64,
    reason: u32,
) {
    stream("http_stream_reset", filter, module, (), || {
        hooks::envoy_dynamic_module_on_http_filter_http_stream_reset(
            filter, module, stream_id, reason,
        )
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
    filter: FilterEnvoyPtr,
    module: *const c_void,
) {
    stream(
        "downstream_above_write_buffer_high_watermark",
        filter,
        module,
        (),
        || {
            hooks::envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
                filter, module,
            )
        },
    )
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
    filter: FilterEnvoyPtr,
    module: *const c_void,
) {
    stream(
        "downstream_below_write_buffer_low_watermark",
        filter,
        module,
        (),
        || {
            hooks::envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
                filter, module,
            )
        },
    )
}

#[cfg(feature = "panic-test")]
mod test_panic {
    use super::*;

    /// The request header naming the hook to panic in.
    pub const HEADER: &str = "x-meshguard-test-panic";

    thread_local! {
        /// Streams whose destroy panics (the header is not readable there).
        static AT_DESTROY: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
    }

    /// Panics in `hook` when the stream's request asks for it: with the
    /// worker's table borrowed and the stream's filter current, as a bug
    /// deep in a hook would.
    #[allow(clippy::panic)]
    pub fn check(hook: &str, filter: FilterEnvoyPtr, module: *const c_void) {
        let asked = match hook {
            "filter_destroy" => AT_DESTROY.with(|d| {
                let mut d = d.borrow_mut();
                let at = d.iter().position(|m| *m == module as usize);
                at.map(|i| d.swap_remove(i)).is_some()
            }),
            _ => {
                let Some(v) = request_header(filter, HEADER) else {
                    return;
                };
                if hook == "request_headers" && v == b"filter_destroy" {
                    AT_DESTROY.with(|d| d.borrow_mut().push(module as usize));
                }
                v == hook.as_bytes()
            }
        };
        if asked {
            super::super::with(|_| panic!("meshguard test panic in {hook} ({HEADER})"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::abi::ModuleHeader;
    use super::*;
    use crate::host::MetricKind;

    thread_local! {
        /// Counter increments the stub below was asked for: (config, id, value).
        static COUNTED: RefCell<Vec<(usize, usize, u64)>> = const { RefCell::new(Vec::new()) };
    }

    #[no_mangle]
    extern "C" fn envoy_dynamic_module_callback_http_filter_config_increment_counter(
        config: abi::ConfigEnvoyPtr,
        id: usize,
        _labels: *const ModuleBuffer,
        _labels_len: usize,
        value: u64,
    ) -> u32 {
        COUNTED.with(|c| c.borrow_mut().push((config as usize, id, value)));
        0
    }

    /// Reached by the code under test (metric kinds, a stream's waker, a
    /// configuration's ticker), never called with these values.
    #[no_mangle]
    extern "C" fn envoy_dynamic_module_callback_http_filter_config_increment_gauge(
        _c: abi::ConfigEnvoyPtr,
        _id: usize,
        _l: *const ModuleBuffer,
        _ll: usize,
        _v: u64,
    ) -> u32 {
        0
    }

    #[no_mangle]
    extern "C" fn envoy_dynamic_module_callback_http_filter_config_decrement_gauge(
        _c: abi::ConfigEnvoyPtr,
        _id: usize,
        _l: *const ModuleBuffer,
        _ll: usize,
        _v: u64,
    ) -> u32 {
        0
    }

    #[no_mangle]
    extern "C" fn envoy_dynamic_module_callback_http_filter_scheduler_delete(
        _s: abi::SchedulerPtr,
    ) {
    }

    // (`..._config_scheduler_delete`: stubbed in `host.rs`'s tests.)

    thread_local! {
        /// Local replies the stub below was asked for: (status, headers, body).
        #[allow(clippy::type_complexity)]
        static REPLIES: RefCell<Vec<(u32, Vec<(String, String)>, String)>> =
            const { RefCell::new(Vec::new()) };
    }

    /// No request header (not a gRPC call).
    #[no_mangle]
    extern "C" fn envoy_dynamic_module_callback_http_get_header(
        _f: FilterEnvoyPtr,
        _kind: u32,
        _key: ModuleBuffer,
        _out: *mut EnvoyBuffer,
        _index: usize,
        _count: *mut usize,
    ) -> bool {
        false
    }

    #[no_mangle]
    extern "C" fn envoy_dynamic_module_callback_http_send_response(
        _f: FilterEnvoyPtr,
        status: u32,
        headers: *const ModuleHeader,
        headers_len: usize,
        body: ModuleBuffer,
        _details: ModuleBuffer,
    ) {
        let text = |p: *const u8, n: usize| {
            // SAFETY: the module's buffers, live for the call.
            String::from_utf8_lossy(unsafe { std::slice::from_raw_parts(p, n) }).into_owned()
        };
        // SAFETY: the module's array, live for the call.
        let hs = unsafe { std::slice::from_raw_parts(headers, headers_len) };
        let hs = hs
            .iter()
            .map(|h| (text(h.key_ptr, h.key_len), text(h.value_ptr, h.value_len)))
            .collect();
        REPLIES.with(|r| r.borrow_mut().push((status, hs, text(body.ptr, body.len))));
    }

    fn config_with_metric() -> ModuleConfig {
        let mut metrics = std::collections::HashMap::new();
        metrics.insert(
            METRIC.to_owned(),
            host::encode_metric(MetricKind::Counter, 7),
        );
        ModuleConfig {
            id: 1,
            envoy: 0x40,
            bytes: Vec::new(),
            metrics,
            _ticker: None,
        }
    }

    /// A live stream box of context `id`, its stream already ended.
    fn test_box(id: u32, cfg: &ModuleConfig) -> Box<StreamBox> {
        let mut b = failed_box(cfg);
        b.context_id = id;
        b
    }

    #[test]
    #[allow(clippy::panic)]
    fn a_panicking_hook_gives_its_fallback_and_the_thread_state_back() {
        let r = hook("config_new", 7u32, || {
            host::ANSWER.with(|a| *a.borrow_mut() = Some(Default::default()));
            // The worker's table borrowed when the panic unwinds.
            super::super::with(|_| panic!("boom"));
            1
        });
        assert_eq!(r, 7);
        assert!(
            host::ANSWER.with(|a| a.borrow().is_none()),
            "no answer left being delivered"
        );
        assert!(
            super::super::with(|_| ()).is_some(),
            "the table is free again"
        );
        assert_eq!(DEPTH.with(Cell::get), 0);
        // Without a panic: the closure's value.
        assert_eq!(hook("config_new", 7u32, || 1), 1);
    }

    #[test]
    #[allow(clippy::panic)]
    fn a_panic_in_a_configuration_hook_is_counted_in_its_metric() {
        let cfg = config_with_metric();
        let module = &cfg as *const ModuleConfig as *const c_void;
        COUNTED.with(|c| c.borrow_mut().clear());
        config("config_scheduled", module, || panic!("boom"));
        config("config_scheduled", module, || {});
        let id = host::encode_metric(MetricKind::Counter, 7).0 as usize & ((1 << 30) - 1);
        assert_eq!(COUNTED.with(|c| c.borrow().clone()), vec![(0x40, id, 1)]);
    }

    #[test]
    #[allow(clippy::panic)]
    fn a_stream_that_panicked_is_cut_off_and_its_later_hooks_do_nothing() {
        let cfg = config_with_metric();
        let h = Box::into_raw(test_box(4242, &cfg)) as *const c_void;
        host::register_context(4242, 0x50 as FilterEnvoyPtr, h as *mut c_void);
        COUNTED.with(|c| c.borrow_mut().clear());
        let r = stream("response_headers", std::ptr::null_mut(), h, 0u32, || {
            panic!("boom")
        });
        assert_eq!(r, 0);
        assert_eq!(COUNTED.with(|c| c.borrow().len()), 1, "counted once");
        assert!(is_failed(h));
        assert_eq!(host::filter_of(4242), None, "its context is forgotten");
        let mut ran = false;
        let r = stream("response_body", std::ptr::null_mut(), h, 0u32, || {
            ran = true;
            1
        });
        assert_eq!((r, ran), (0, false), "a later hook does nothing");
        // Destroy frees it without running the hook's body.
        let mut ran = false;
        // SAFETY: `h` is ours, destroyed once.
        unsafe { destroy(h, || ran = true) };
        assert!(!ran);
        assert!(!is_failed(h));
        assert_eq!(COUNTED.with(|c| c.borrow().len()), 1);
    }

    #[test]
    #[allow(clippy::panic)]
    fn a_panic_in_request_headers_answers_500_and_the_stream_is_done() {
        let cfg = config_with_metric();
        let h = Box::into_raw(test_box(4444, &cfg)) as *const c_void;
        let filter = 0x60 as FilterEnvoyPtr;
        REPLIES.with(|r| r.borrow_mut().clear());
        let status = request_headers(filter, h, || panic!("boom"));
        assert_eq!(status, abi::status::STOP_ALL_AND_WATERMARK);
        let replies = REPLIES.with(|r| r.borrow().clone());
        assert_eq!(
            replies,
            vec![(
                500,
                vec![("content-type".into(), "application/json".into())],
                BODY.into()
            )]
        );
        // The reply's own response hooks, and any later one, pass.
        let mut ran = false;
        let r = stream("response_headers", filter, h, abi::status::CONTINUE, || {
            ran = true;
            abi::status::STOP_ITERATION
        });
        assert_eq!((r, ran), (abi::status::CONTINUE, false));
        // Without a panic: the hook's own status, no reply.
        let g = Box::into_raw(test_box(4445, &cfg)) as *const c_void;
        assert_eq!(request_headers(filter, g, || 0), 0);
        assert_eq!(REPLIES.with(|r| r.borrow().len()), 1);
        // SAFETY: ours, destroyed once.
        unsafe {
            destroy(h, || {});
            destroy(g, || {});
        }
    }

    #[test]
    #[allow(clippy::panic)]
    fn a_stream_created_in_a_panic_is_failed_and_answered_500() {
        let cfg = config_with_metric();
        let cfg_ptr = &cfg as *const ModuleConfig as *const c_void;
        let h = filter_new(cfg_ptr, || panic!("boom"));
        assert!(!h.is_null() && is_failed(h));
        REPLIES.with(|r| r.borrow_mut().clear());
        let status = request_headers(0x70 as FilterEnvoyPtr, h, || 0);
        assert_eq!(status, abi::status::STOP_ALL_AND_WATERMARK);
        assert_eq!(REPLIES.with(|r| r.borrow().len()), 1);
        assert!(filter_new(std::ptr::null(), || panic!("boom")).is_null());
        // SAFETY: ours, destroyed once.
        unsafe { destroy(h, || {}) };
    }

    #[test]
    #[allow(clippy::panic)]
    fn a_panic_in_destroy_frees_the_stream() {
        let cfg = config_with_metric();
        let h = Box::into_raw(test_box(4343, &cfg)) as *const c_void;
        COUNTED.with(|c| c.borrow_mut().clear());
        // SAFETY: `h` is ours, destroyed once (the guard frees it).
        unsafe { destroy(h, || panic!("boom")) };
        assert_eq!(COUNTED.with(|c| c.borrow().len()), 1);
        assert!(!is_failed(h));
    }

    #[test]
    fn a_panic_message_is_read_from_either_payload() {
        let s: Box<dyn Any + Send> = Box::new("static");
        assert_eq!(payload_text(s.as_ref()), "static");
        let s: Box<dyn Any + Send> = Box::new(String::from("owned"));
        assert_eq!(payload_text(s.as_ref()), "owned");
        let s: Box<dyn Any + Send> = Box::new(3u8);
        assert_eq!(payload_text(s.as_ref()), "a panic without a message");
    }
}
