//! The native adapter of the two ports: [`Host`] and [`Stream`] over the
//! dynamic-module ABI (`abi.rs`), the counterpart of `host/proxy_wasm.rs`.
//!
//! Contexts: the filter layer speaks proxy-wasm's model (a root context per
//! configuration and worker, one context per stream, "the effective
//! context" that per-stream calls act on). Natively each worker thread
//! numbers its streams and roots itself; [`NativeHost::set_effective`]
//! makes a stream's Envoy filter pointer the one later calls use (a root has none:
//! per-stream calls then do nothing), and fails for a stream that is gone,
//! exactly as `proxy_set_effective_context` does.
//!
//! Metrics are defined once per configuration, on the main thread, when
//! Envoy hands the configuration over (`metrics.rs`: Envoy freezes metric
//! creation after that hook); a worker's `define_metric` finds the id by
//! name. Shared data is the process-wide [`Store`].

use super::abi::{self, EnvoyBuffer, EnvoyHeader, FilterEnvoyPtr, ModuleBuffer, ModuleHeader};
use super::callout::Answer;
use super::config::ModuleConfig;
use super::store::Store;
use crate::host::batch::MetricBatch;
use crate::host::header_map::{self, HeaderMap};
use crate::host::{
    HeaderVisitor, Host, HostError, IdHasher, MetricId, MetricKind, SetError, SharedValue, Stream,
};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::mem::MaybeUninit;
use std::time::Duration;

thread_local! {
    /// Live contexts of this thread: ids to their Envoy filter and the
    /// stream's box (`mod.rs`); roots map to nulls. Looked up only by id
    /// (a root resuming a parked stream, a call's carrier, a waker): the
    /// hooks reach their stream through the pointer Envoy hands back.
    static CONTEXTS: RefCell<HashMap<u32, Context, BuildHasherDefault<IdHasher>>> =
        RefCell::new(HashMap::default());
    /// This thread's counter batch: the `Stream` port's, left empty (the
    /// native host does not batch, `batches_counters`).
    static BATCH: &'static MetricBatch = Box::leak(Box::default());
    /// The answer of the callout being delivered (its hook sets it).
    pub(super) static ANSWER: RefCell<Option<Answer>> = const { RefCell::new(None) };
}

/// A live context: its Envoy filter and its stream's box (0: a root).
#[derive(Clone, Copy)]
struct Context {
    filter: usize,
    entry: usize,
}

/// Registers a live context: a stream's Envoy filter and box (`mod.rs`),
/// or nulls for a root.
pub fn register_context(id: u32, filter: FilterEnvoyPtr, entry: *mut std::ffi::c_void) {
    CONTEXTS.with(|c| {
        if let Ok(mut c) = c.try_borrow_mut() {
            c.insert(
                id,
                Context {
                    filter: filter as usize,
                    entry: entry as usize,
                },
            );
        }
    });
}

pub fn forget_context(id: u32) {
    CONTEXTS.with(|c| {
        if let Ok(mut c) = c.try_borrow_mut() {
            c.remove(&id);
        }
    });
}

fn context(id: u32) -> Option<Context> {
    CONTEXTS.with(|c| c.try_borrow().ok().and_then(|c| c.get(&id).copied()))
}

/// The Envoy filter of a live stream context.
pub fn filter_of(id: u32) -> Option<FilterEnvoyPtr> {
    context(id)
        .map(|c| c.filter)
        .filter(|f| *f != 0)
        .map(|f| f as FilterEnvoyPtr)
}

/// The box of a live stream context (`mod.rs`), as registered.
pub fn entry_of(id: u32) -> Option<*mut std::ffi::c_void> {
    context(id)
        .map(|c| c.entry)
        .filter(|e| *e != 0)
        .map(|e| e as *mut std::ffi::c_void)
}

/// Metric ids carry their kind in the top two bits (Envoy numbers each
/// kind separately).
pub fn encode_metric(kind: MetricKind, envoy_id: usize) -> MetricId {
    let tag = match kind {
        MetricKind::Counter => 0u32,
        MetricKind::Gauge => 1,
        MetricKind::Histogram => 2,
    };
    match u32::try_from(envoy_id) {
        Ok(id) if id < (1 << 30) => MetricId((tag << 30) | id),
        _ => MetricId::NONE,
    }
}

fn decode_metric(id: MetricId) -> Option<(MetricKind, usize)> {
    if id == MetricId::NONE {
        return None;
    }
    let kind = match id.0 >> 30 {
        0 => MetricKind::Counter,
        1 => MetricKind::Gauge,
        2 => MetricKind::Histogram,
        _ => return None,
    };
    Some((kind, (id.0 & ((1 << 30) - 1)) as usize))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// # Safety
/// The buffer must be live (Envoy's, within its hook).
unsafe fn slice<'a>(ptr: *const u8, len: usize) -> &'a [u8] {
    if ptr.is_null() || len == 0 {
        &[]
    } else {
        // SAFETY: the caller's promise.
        unsafe { std::slice::from_raw_parts(ptr, len) }
    }
}

/// Bytes `[start, start + size)` of a body read chunk by chunk: only
/// those bytes are copied, once (not the whole body, then the range).
struct BodyRange {
    start: usize,
    end: usize,
    /// The offset of the next chunk in the body.
    pos: usize,
    out: Vec<u8>,
}

impl BodyRange {
    /// `None` when the range's end overflows (as `proxy_get_buffer_bytes`).
    fn new(start: usize, size: usize) -> Option<Self> {
        Some(BodyRange {
            start,
            end: start.checked_add(size)?,
            pos: 0,
            out: Vec::new(),
        })
    }

    fn push(&mut self, chunk: &[u8]) {
        let (from, to) = (self.pos, self.pos.saturating_add(chunk.len()));
        self.pos = to;
        let (a, b) = (self.start.max(from), self.end.min(to));
        if a < b {
            self.out
                .extend_from_slice(chunk.get(a - from..b - from).unwrap_or_default());
        }
    }
}

/// The native host of one configuration, for one event hook (see the
/// module docs). It carries the hook's effective context and carrier
/// (what proxy-wasm keeps in the host): a hook nested in another (a local
/// reply) has its own host, so neither is saved nor restored around it.
pub struct NativeHost<'a> {
    pub cfg: &'a ModuleConfig,
    /// The Envoy filter of the effective context (null: a root, or none).
    current: Cell<FilterEnvoyPtr>,
    /// The stream whose hook runs (context id, Envoy filter; zeros: none):
    /// the carrier of the calls sent without one (`callout.rs`).
    carrier: Cell<(u32, usize)>,
}

impl<'a> NativeHost<'a> {
    /// A host with no stream (main thread, a stream's creation or end).
    pub fn new(cfg: &'a ModuleConfig) -> Self {
        NativeHost {
            cfg,
            current: Cell::new(std::ptr::null_mut()),
            carrier: Cell::new((0, 0)),
        }
    }

    /// The host of a stream's hook: the stream effective and the carrier.
    pub fn for_stream(cfg: &'a ModuleConfig, context_id: u32, filter: FilterEnvoyPtr) -> Self {
        NativeHost {
            cfg,
            current: Cell::new(filter),
            carrier: Cell::new((context_id, filter as usize)),
        }
    }

    /// The Envoy filter of the effective context (null: none).
    pub fn current(&self) -> FilterEnvoyPtr {
        self.current.get()
    }

    pub fn set_current(&self, filter: FilterEnvoyPtr) {
        self.current.set(filter);
    }

    /// The stream of the running hook, as a call's carrier.
    pub fn carrier(&self) -> (u32, usize) {
        self.carrier.get()
    }

    /// The hook's own work is done: what follows (`after_hook`) runs with
    /// no stream effective and no carrier.
    pub fn leave_stream(&self) {
        self.current.set(std::ptr::null_mut());
        self.carrier.set((0, 0));
    }

    /// See the module docs.
    pub fn set_effective(&self, id: u32) -> bool {
        match context(id) {
            Some(c) => {
                self.set_current(c.filter as FilterEnvoyPtr);
                true
            }
            None => false,
        }
    }

    fn filter(&self) -> Option<FilterEnvoyPtr> {
        let f = self.current.get();
        (!f.is_null()).then_some(f)
    }

    fn headers(&self, kind: u32) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        self.visit_headers(kind, |n, v| out.push((text(n), v.to_vec())));
        out
    }

    /// Runs `f` on every header of `kind`, as Envoy's buffers (no copy):
    /// one call for the count, one for the headers. Returns the count, 0
    /// when there is no stream or Envoy gave none.
    fn visit_headers(&self, kind: u32, mut f: impl FnMut(&[u8], &[u8])) -> usize {
        self.with_headers(kind, |hs| {
            for h in hs {
                // SAFETY: Envoy's buffers, live until the hook returns.
                f(unsafe { slice(h.key_ptr, h.key_len) }, unsafe {
                    slice(h.value_ptr, h.value_len)
                });
            }
            hs.len()
        })
        .unwrap_or(0)
    }

    /// Runs `f` on the headers `kind` as Envoy's array of pointers (into
    /// the stack for a few, else a vector): one call for the count, one
    /// for the headers. `None` when there is no stream or Envoy gave none.
    fn with_headers<R>(&self, kind: u32, f: impl FnOnce(&[EnvoyHeader]) -> R) -> Option<R> {
        let f_ptr = self.filter()?;
        /// Headers read into the stack; more go through a vector.
        const INLINE: usize = 32;
        // SAFETY: `f_ptr` is the live filter of the running hook; the
        // array or vector has room for the count Envoy gave; the buffers
        // are Envoy's, live until the hook returns.
        unsafe {
            let n = abi::envoy_dynamic_module_callback_http_get_headers_size(f_ptr, kind);
            if n == 0 {
                return None;
            }
            // Not zeroed first (32 headers are 1 KiB): Envoy writes the
            // `n` entries it counted, and only those are read.
            let mut inline = [const { MaybeUninit::<EnvoyHeader>::uninit() }; INLINE];
            let mut heap: Vec<MaybeUninit<EnvoyHeader>> = Vec::new();
            let buf: &mut [MaybeUninit<EnvoyHeader>] = if n <= INLINE {
                inline.get_mut(..n).unwrap_or_default()
            } else {
                heap.resize_with(n, MaybeUninit::uninit);
                &mut heap
            };
            if !abi::envoy_dynamic_module_callback_http_get_headers(
                f_ptr,
                kind,
                buf.as_mut_ptr().cast::<EnvoyHeader>(),
            ) {
                return None;
            }
            // Envoy has written all `n` (its promise for a count it gave).
            Some(f(std::slice::from_raw_parts(
                buf.as_ptr().cast::<EnvoyHeader>(),
                buf.len(),
            )))
        }
    }

    /// The received response body's size (the chunks' lengths, no copy).
    pub fn response_body_size(&self) -> usize {
        let mut size = 0usize;
        self.visit_body(abi::body_type::RECEIVED_RESPONSE, |c| size += c.len());
        size
    }

    /// Runs `f` on every chunk of the body `kind`, as Envoy's buffers.
    fn visit_body(&self, kind: u32, mut f: impl FnMut(&[u8])) -> Option<()> {
        let fp = self.filter()?;
        const INLINE: usize = 8;
        // SAFETY: live filter; the array or vector has room for the count
        // given; Envoy's buffers, live until the hook returns.
        unsafe {
            let n = abi::envoy_dynamic_module_callback_http_get_body_chunks_size(fp, kind);
            if n == 0 {
                return Some(());
            }
            let mut inline = [EnvoyBuffer::NULL; INLINE];
            let mut heap = Vec::new();
            let buf: &mut [EnvoyBuffer] = if n <= INLINE {
                inline.get_mut(..n).unwrap_or_default()
            } else {
                heap.resize(n, EnvoyBuffer::NULL);
                &mut heap
            };
            if !abi::envoy_dynamic_module_callback_http_get_body_chunks(fp, kind, buf.as_mut_ptr())
            {
                return None;
            }
            for c in buf.iter() {
                f(slice(c.ptr, c.len));
            }
        }
        Some(())
    }

    fn header(&self, kind: u32, name: &str) -> Option<Vec<u8>> {
        let f = self.filter()?;
        let mut out = EnvoyBuffer::NULL;
        // SAFETY: live filter; `out` is written by Envoy.
        let ok = unsafe {
            abi::envoy_dynamic_module_callback_http_get_header(
                f,
                kind,
                ModuleBuffer::of(name.as_bytes()),
                &mut out,
                0,
                std::ptr::null_mut(),
            )
        };
        if !ok || out.ptr.is_null() {
            return None;
        }
        // SAFETY: Envoy's buffer, live until the hook returns.
        Some(unsafe { out.to_vec() })
    }

    fn set_header(&self, kind: u32, name: &str, value: Option<&[u8]>, add: bool) {
        let Some(f) = self.filter() else {
            return;
        };
        let v = value.map_or(ModuleBuffer::NULL, ModuleBuffer::of);
        // SAFETY: live filter and buffers.
        unsafe {
            if add {
                abi::envoy_dynamic_module_callback_http_add_header(
                    f,
                    kind,
                    ModuleBuffer::of(name.as_bytes()),
                    v,
                );
            } else {
                abi::envoy_dynamic_module_callback_http_set_header(
                    f,
                    kind,
                    ModuleBuffer::of(name.as_bytes()),
                    v,
                );
            }
        }
    }

    fn attribute_string(&self, id: u32) -> Option<Vec<u8>> {
        let f = self.filter()?;
        let mut out = EnvoyBuffer::NULL;
        // SAFETY: live filter; `out` is written by Envoy.
        let ok = unsafe {
            abi::envoy_dynamic_module_callback_http_filter_get_attribute_string(f, id, &mut out)
        };
        // SAFETY: Envoy's buffer, live until the hook returns.
        ok.then(|| unsafe { out.to_vec() })
    }

    fn attribute_int(&self, id: u32) -> Option<u64> {
        let f = self.filter()?;
        let mut out = 0u64;
        // SAFETY: live filter; `out` is written by Envoy.
        let ok = unsafe {
            abi::envoy_dynamic_module_callback_http_filter_get_attribute_int(f, id, &mut out)
        };
        ok.then_some(out)
    }
}

fn random_u64_seeded(counter: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    thread_local! {
        static SEED: std::collections::hash_map::RandomState = std::collections::hash_map::RandomState::new();
    }
    SEED.with(|s| {
        let mut h = s.build_hasher();
        h.write_u64(counter);
        h.finish()
    })
}

/// Wall-clock nanoseconds since the Unix epoch (0 before it): the native
/// module's one clock (its hosts' `now_nanos`).
///
/// On 64-bit Linux straight from `clock_gettime(CLOCK_REALTIME)` (the
/// vDSO): `SystemTime::now().duration_since(UNIX_EPOCH)` computes the same
/// value through a checked `Timespec` subtraction and a `Duration`, ~90
/// instructions more per rate-limited request (callgrind,
/// `bench.py --by-line`). Elsewhere, `SystemTime`.
#[cfg(all(target_os = "linux", target_pointer_width = "64"))]
pub(super) fn wall_clock_nanos() -> u64 {
    /// `struct timespec` of 64-bit Linux (x86_64 and aarch64 alike).
    #[repr(C)]
    struct Timespec {
        tv_sec: i64,
        tv_nsec: i64,
    }
    extern "C" {
        fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
    }
    /// `CLOCK_REALTIME` on Linux.
    const CLOCK_REALTIME: i32 = 0;
    let mut ts = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable `struct timespec`; libc's
    // `clock_gettime` writes it or fails.
    if unsafe { clock_gettime(CLOCK_REALTIME, &mut ts) } != 0 {
        return system_time_nanos();
    }
    match (u64::try_from(ts.tv_sec), u64::try_from(ts.tv_nsec)) {
        (Ok(s), Ok(n)) => s.saturating_mul(1_000_000_000).saturating_add(n),
        _ => 0, // before the epoch, as `SystemTime` gives it
    }
}

#[cfg(not(all(target_os = "linux", target_pointer_width = "64")))]
pub(super) fn wall_clock_nanos() -> u64 {
    system_time_nanos()
}

fn system_time_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl Host for NativeHost<'_> {
    fn now_nanos(&self) -> u64 {
        wall_clock_nanos()
    }

    fn shared_get(&self, key: &str) -> Result<SharedValue, HostError> {
        Store::global().get(key)
    }

    fn shared_read<R>(
        &self,
        key: &str,
        f: impl FnOnce(Option<&[u8]>, Option<u32>) -> R,
    ) -> Result<R, HostError> {
        Store::global().read(key, f)
    }

    fn shared_set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SetError> {
        Store::global().set(key, value, cas)
    }

    fn random_bytes(&self, buf: &mut [u8]) -> Result<(), HostError> {
        thread_local! {
            static N: Cell<u64> = const { Cell::new(0) };
        }
        for chunk in buf.chunks_mut(8) {
            let n = N.with(|n| {
                let v = n.get().wrapping_add(1);
                n.set(v);
                v
            });
            let r = random_u64_seeded(n ^ self.now_nanos()).to_le_bytes();
            for (d, s) in chunk.iter_mut().zip(r) {
                *d = s;
            }
        }
        Ok(())
    }

    fn define_metric(&self, kind: MetricKind, name: &str) -> Result<MetricId, HostError> {
        match self.cfg.metrics.get(name) {
            Some(id) if decode_metric(*id).map(|(k, _)| k) == Some(kind) => Ok(*id),
            _ => Err(HostError(format!(
                "metric {name} was not defined when the configuration was loaded"
            ))),
        }
    }

    fn increment_metric(&self, id: MetricId, delta: i64) {
        let Some((kind, envoy_id)) = decode_metric(id) else {
            return;
        };
        let cfg = self.cfg.envoy();
        // SAFETY: the configuration outlives its streams and hooks.
        unsafe {
            match kind {
                MetricKind::Counter if delta > 0 => {
                    abi::envoy_dynamic_module_callback_http_filter_config_increment_counter(
                        cfg,
                        envoy_id,
                        std::ptr::null(),
                        0,
                        delta as u64,
                    );
                }
                MetricKind::Gauge if delta > 0 => {
                    abi::envoy_dynamic_module_callback_http_filter_config_increment_gauge(
                        cfg,
                        envoy_id,
                        std::ptr::null(),
                        0,
                        delta as u64,
                    );
                }
                MetricKind::Gauge if delta < 0 => {
                    abi::envoy_dynamic_module_callback_http_filter_config_decrement_gauge(
                        cfg,
                        envoy_id,
                        std::ptr::null(),
                        0,
                        delta.unsigned_abs(),
                    );
                }
                _ => {}
            }
        }
    }

    fn record_metric(&self, id: MetricId, value: u64) {
        let Some((kind, envoy_id)) = decode_metric(id) else {
            return;
        };
        let cfg = self.cfg.envoy();
        // SAFETY: the configuration outlives its streams and hooks.
        unsafe {
            match kind {
                MetricKind::Gauge => {
                    abi::envoy_dynamic_module_callback_http_filter_config_set_gauge(
                        cfg,
                        envoy_id,
                        std::ptr::null(),
                        0,
                        value,
                    );
                }
                MetricKind::Histogram => {
                    abi::envoy_dynamic_module_callback_http_filter_config_record_histogram_value(
                        cfg,
                        envoy_id,
                        std::ptr::null(),
                        0,
                        value,
                    );
                }
                MetricKind::Counter => {}
            }
        }
    }

    /// `verify_signature` natively (`crypto.rs`, AWS-LC), as Envoy's wasm
    /// host does with BoringSSL.
    fn call_foreign(&self, name: &str, args: &[u8]) -> Result<Option<Vec<u8>>, HostError> {
        super::crypto::call_foreign(name, args)
    }
}

impl Stream for NativeHost<'_> {
    fn request_headers_raw(&self) -> Option<Vec<u8>> {
        // Straight from Envoy's buffers into the serialised map, sized
        // first and written in one allocation (names made valid UTF-8 as
        // `headers` does: through a `HeaderMap` when one is not ASCII).
        let raw = self.with_headers(abi::header_type::REQUEST_HEADERS, |hs| {
            // SAFETY: Envoy's buffers, live until the hook returns.
            let pair = |h: &EnvoyHeader| unsafe {
                (slice(h.key_ptr, h.key_len), slice(h.value_ptr, h.value_len))
            };
            if hs.iter().any(|h| !pair(h).0.is_ascii()) {
                let mut map = HeaderMap::with_capacity(hs.len(), 512);
                for (n, v) in hs.iter().map(pair) {
                    map.add(String::from_utf8_lossy(n).as_bytes(), v);
                }
                return map.finish();
            }
            header_map::serialize(hs.iter().map(pair))
        });
        Some(raw.unwrap_or_else(|| HeaderMap::default().finish()))
    }

    fn visit_request_headers(&self, v: &mut dyn HeaderVisitor) -> bool {
        // Envoy's buffers straight into the request's fields: one pass for
        // the sizes, one for the fields (no serialized map in between).
        self.with_headers(abi::header_type::REQUEST_HEADERS, |hs| {
            // SAFETY: Envoy's buffers, live until the hook returns.
            let pair = |h: &EnvoyHeader| unsafe {
                (slice(h.key_ptr, h.key_len), slice(h.value_ptr, h.value_len))
            };
            // Room for the fields only: pseudo-headers are kept apart (a
            // long `:path` must not size the header buffer too).
            let (count, bytes) = hs.iter().filter(|h| !pair(h).0.starts_with(b":")).fold(
                (0usize, 0usize),
                |(c, n), h| {
                    (
                        c + 1,
                        n.saturating_add(h.key_len).saturating_add(h.value_len),
                    )
                },
            );
            v.reserve(count, bytes);
            for (n, val) in hs.iter().map(pair) {
                if n.first() == Some(&b':') && val.is_ascii() {
                    // SAFETY: ASCII is UTF-8. Checked here, a word at a
                    // time, so the reader keeping pseudo-headers as text
                    // (`Request`) does not run `str::from_utf8` on them:
                    // ~80 instructions each on short values (callgrind,
                    // `bench.py --by-line`).
                    v.pair_text(n, unsafe { std::str::from_utf8_unchecked(val) });
                } else {
                    v.pair(n, val);
                }
            }
        });
        // No headers (none given, or Envoy refused): an empty request, as
        // `request_headers_raw` reads then.
        true
    }

    fn set_request_header(&self, name: &str, value: Option<&[u8]>) {
        self.set_header(abi::header_type::REQUEST_HEADERS, name, value, false);
    }

    fn response_headers(&self) -> Vec<(String, Vec<u8>)> {
        self.headers(abi::header_type::RESPONSE_HEADERS)
    }

    fn response_header(&self, name: &str) -> Option<Vec<u8>> {
        self.header(abi::header_type::RESPONSE_HEADERS, name)
    }

    fn response_trailer(&self, name: &str) -> Option<Vec<u8>> {
        self.header(abi::header_type::RESPONSE_TRAILERS, name)
    }

    fn set_response_header(&self, name: &str, value: &[u8]) {
        self.set_header(abi::header_type::RESPONSE_HEADERS, name, Some(value), false);
    }

    fn add_response_header(&self, name: &str, value: &[u8]) {
        self.set_header(abi::header_type::RESPONSE_HEADERS, name, Some(value), true);
    }

    fn response_body(&self, start: usize, size: usize) -> Option<Vec<u8>> {
        let mut range = BodyRange::new(start, size)?;
        self.visit_body(abi::body_type::RECEIVED_RESPONSE, |c| range.push(c))?;
        Some(range.out)
    }

    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        match path {
            ["source", "address"] => self.attribute_string(abi::attribute::SOURCE_ADDRESS),
            ["xds", "cluster_name"] => self.attribute_string(abi::attribute::XDS_CLUSTER_NAME),
            ["response", "flags"] => self
                .attribute_int(abi::attribute::RESPONSE_FLAGS)
                .map(|v| v.to_le_bytes().to_vec()),
            _ => None,
        }
    }

    fn set_filter_state(&self, key: &str, value: &[u8]) -> bool {
        let Some(f) = self.filter() else {
            return false;
        };
        // The key the wasm build's values have (Envoy prefixes proxy-wasm
        // keys with `wasm.`), so access-log formats and RBAC matchers
        // written for one runtime read the other's.
        let key = format!("wasm.{key}");
        // SAFETY: live filter and buffers.
        unsafe {
            abi::envoy_dynamic_module_callback_http_set_filter_state_bytes(
                f,
                ModuleBuffer::of(key.as_bytes()),
                ModuleBuffer::of(value),
            )
        }
    }

    fn send_local_reply(&self, status: u32, headers: &HeaderMap, body: &[u8]) -> bool {
        match self.filter() {
            Some(f) => send_response(f, status, headers, body, b"meshguard"),
            None => false,
        }
    }

    fn send_stored_response(
        &self,
        status: u32,
        headers: &HeaderMap,
        body: &[u8],
        head_request: bool,
    ) -> bool {
        match self.filter() {
            Some(f) => encode_response(f, status, headers, body, head_request),
            None => false,
        }
    }

    fn resume_request(&self) {
        if let Some(f) = self.filter() {
            // SAFETY: live filter.
            unsafe { abi::envoy_dynamic_module_callback_http_filter_continue_decoding(f) };
        }
    }

    fn set_effective_context(&self, context_id: u32) -> bool {
        self.set_effective(context_id)
    }

    fn set_tick_period(&self, _period: Duration) {
        // Natively a worker ticks while one of its streams waits (see
        // `native/mod.rs`, "Timers"); counters are not batched.
    }

    fn metric_batch(&self) -> &MetricBatch {
        BATCH.with(|b| *b)
    }

    /// An increment is one C call into Envoy (an atomic add there): a
    /// batch would only add a map insert and a flush per hook (~120
    /// instructions per request).
    fn batches_counters(&self) -> bool {
        false
    }

    fn dispatch_grpc_call_from(
        &self,
        _owner_context: u32,
        current_context: u32,
        grpc_service: &[u8],
        service: &str,
        method: &str,
        metadata: &[(&str, &[u8])],
        message: &[u8],
        timeout: Duration,
    ) -> Result<u32, HostError> {
        let carrier = filter_of(current_context).map(|f| (current_context, f));
        let r = super::callout::grpc_call(
            carrier,
            self.carrier(),
            grpc_service,
            service,
            method,
            metadata,
            message,
            timeout,
        );
        self.set_effective(current_context);
        r
    }

    fn cancel_grpc_call(&self, token: u32) {
        super::callout::forget(token);
    }

    fn grpc_call_response_body(&self, _size: usize) -> Option<Vec<u8>> {
        ANSWER.with(|a| a.borrow().as_ref().map(|a| a.body.clone()))
    }

    fn grpc_status_message(&self) -> Option<String> {
        ANSWER.with(|a| a.borrow().as_ref().and_then(|a| a.grpc_message.clone()))
    }

    fn dispatch_http_call(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<u32, HostError> {
        super::callout::http_call(self.carrier(), cluster, headers, body, timeout)
    }

    fn http_call_response_headers(&self) -> Vec<(String, Vec<u8>)> {
        ANSWER.with(|a| {
            a.borrow()
                .as_ref()
                .map(|a| a.headers.clone())
                .unwrap_or_default()
        })
    }

    fn http_call_response_body(&self, _size: usize) -> Option<Vec<u8>> {
        ANSWER.with(|a| a.borrow().as_ref().map(|a| a.body.clone()))
    }
}

/// Answers the stream of `filter` (live, the running hook's) with a local
/// reply; `details` names the reply in Envoy's access log
/// (`%RESPONSE_CODE_DETAILS%`). Whether it could be sent (no filter: no).
pub(crate) fn send_response(
    filter: FilterEnvoyPtr,
    status: u32,
    headers: &HeaderMap,
    body: &[u8],
    details: &'static [u8],
) -> bool {
    if filter.is_null() {
        return false;
    }
    let hs: Vec<ModuleHeader> = headers
        .iter()
        .map(|(n, v)| ModuleHeader::of(n, v))
        .collect();
    // SAFETY: the caller's live filter; `headers` and `body` outlive the call.
    unsafe {
        abi::envoy_dynamic_module_callback_http_send_response(
            filter,
            status,
            hs.as_ptr(),
            hs.len(),
            ModuleBuffer::of(body),
            ModuleBuffer::of(details),
        );
    }
    true
}

/// Answers the stream of `filter` (live, the running hook's, whose
/// request has not gone upstream) with a response Envoy encodes as if
/// it came from the origin (`send_response_headers`, `send_response_data`:
/// the encoder filters run, Envoy's local-reply processing does not: no
/// local reply mapper, no `content-type` added, no `%RESPONSE_CODE_DETAILS%`):
/// `:status`, then `headers` without any `Content-Length` (nor a
/// pseudo-header: the status is `status`), then the body's
/// own length when there is a body (a HEAD request: its length, and the
/// headers end the stream). Cheaper than a local reply (see
/// docs/performance.md, "Native module cost"). Whether it could be sent.
pub(crate) fn encode_response(
    filter: FilterEnvoyPtr,
    status: u32,
    headers: &HeaderMap,
    body: &[u8],
    head_request: bool,
) -> bool {
    if filter.is_null() || !(100..=999).contains(&status) {
        return false;
    }
    let (mut code, mut length) = ([0u8; 20], [0u8; 20]);
    let code = decimal(u64::from(status), &mut code);
    let length = decimal(body.len() as u64, &mut length);
    let mut hs: Vec<ModuleHeader> = Vec::with_capacity(headers.len() + 2);
    hs.push(ModuleHeader::of(b":status", code));
    hs.extend(
        headers
            .iter()
            .filter(|(n, _)| n.first() != Some(&b':') && !n.eq_ignore_ascii_case(b"content-length"))
            .map(|(n, v)| ModuleHeader::of(n, v)),
    );
    if !body.is_empty() {
        hs.push(ModuleHeader::of(b"content-length", length));
    }
    let with_body = !body.is_empty() && !head_request;
    // SAFETY: the caller's live filter; `hs` (and what it points into) and
    // `body` outlive the calls. Envoy ignores both calls on a filter it has
    // destroyed meanwhile (a client gone while the headers were written).
    unsafe {
        abi::envoy_dynamic_module_callback_http_send_response_headers(
            filter,
            hs.as_ptr(),
            hs.len(),
            !with_body,
        );
        if with_body {
            abi::envoy_dynamic_module_callback_http_send_response_data(
                filter,
                ModuleBuffer::of(body),
                true,
            );
        }
    }
    true
}

/// `v` in decimal, written at the end of `buf` (no allocation: a hit's
/// status and length).
fn decimal(mut v: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        if let Some(d) = buf.get_mut(at) {
            *d = b'0' + (v % 10) as u8;
        }
        v /= 10;
        if v == 0 || at == 0 {
            break;
        }
    }
    buf.get(at..).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The direct clock reads what `SystemTime` reads: bracketed by two
    /// `SystemTime` readings (the wall clock may step, so a few tries).
    #[test]
    fn the_wall_clock_agrees_with_system_time() {
        let agrees = (0..5).any(|_| {
            let before = system_time_nanos();
            let t = wall_clock_nanos();
            let after = system_time_nanos();
            before <= t && t <= after
        });
        assert!(agrees);
        // Nanoseconds, not seconds or microseconds: after 2020-01-01.
        assert!(wall_clock_nanos() > 1_577_836_800 * 1_000_000_000);
    }

    #[test]
    fn decimal_is_the_number_in_decimal() {
        for v in [0, 7, 10, 200, 304, 999, 65_536, u64::MAX] {
            let mut b = [0u8; 20];
            assert_eq!(decimal(v, &mut b), v.to_string().as_bytes());
        }
    }

    #[test]
    fn metric_ids_keep_their_kind() {
        for kind in [
            MetricKind::Counter,
            MetricKind::Gauge,
            MetricKind::Histogram,
        ] {
            let id = encode_metric(kind, 7);
            assert_eq!(decode_metric(id), Some((kind, 7)));
        }
        assert_eq!(decode_metric(MetricId::NONE), None);
        assert_eq!(encode_metric(MetricKind::Counter, 1 << 30), MetricId::NONE);
    }

    /// The range read chunk by chunk is what the old reading gave (the
    /// whole body joined, then the range), whatever the chunking: empty
    /// chunks, a range across chunks, past the end, an overflowing size.
    #[test]
    fn a_body_range_read_by_chunks_is_the_range_of_the_joined_body() {
        let body: Vec<u8> = (0u8..23).collect();
        let chunkings: [&[usize]; 5] = [&[23], &[0, 5, 0, 18], &[1; 23], &[10, 13], &[7, 7, 9]];
        for cuts in chunkings {
            let mut chunks = Vec::new();
            let mut at = 0;
            for n in cuts {
                chunks.push(&body[at..at + n]);
                at += n;
            }
            for start in [0usize, 1, 6, 7, 10, 22, 23, 24, 100] {
                for size in [0, 1, 3, 7, 16, 23, 1000, usize::MAX] {
                    let joined = start.checked_add(size).map(|e| {
                        let end = e.min(body.len());
                        body[start.min(end)..end].to_vec()
                    });
                    let mut r = BodyRange::new(start, size);
                    if let Some(r) = r.as_mut() {
                        for c in &chunks {
                            r.push(c);
                        }
                    }
                    assert_eq!(r.map(|r| r.out), joined, "{cuts:?} {start} {size}");
                }
            }
        }
    }

    /// Linked by `ModuleConfig`'s ticker (none here): never called.
    #[no_mangle]
    extern "C" fn envoy_dynamic_module_callback_http_filter_config_scheduler_delete(
        _scheduler: abi::SchedulerPtr,
    ) {
        unreachable!("no configuration scheduler in these tests")
    }

    /// What the two stubs below were asked to encode, in order.
    #[derive(Debug, PartialEq)]
    enum Encoded {
        Headers(Vec<(String, String)>, bool),
        Data(String, bool),
    }

    thread_local! {
        static ENCODED: std::cell::RefCell<Vec<Encoded>> = const { std::cell::RefCell::new(Vec::new()) };
    }

    fn text(p: *const u8, n: usize) -> String {
        // SAFETY: the module's buffers, live for the call.
        String::from_utf8_lossy(unsafe { std::slice::from_raw_parts(p, n) }).into_owned()
    }

    #[no_mangle]
    extern "C" fn envoy_dynamic_module_callback_http_send_response_headers(
        _f: FilterEnvoyPtr,
        headers: *const ModuleHeader,
        headers_len: usize,
        end_stream: bool,
    ) {
        // SAFETY: the module's array, live for the call.
        let hs = unsafe { std::slice::from_raw_parts(headers, headers_len) };
        let hs = hs
            .iter()
            .map(|h| (text(h.key_ptr, h.key_len), text(h.value_ptr, h.value_len)))
            .collect();
        ENCODED.with(|e| e.borrow_mut().push(Encoded::Headers(hs, end_stream)));
    }

    #[no_mangle]
    extern "C" fn envoy_dynamic_module_callback_http_send_response_data(
        _f: FilterEnvoyPtr,
        data: ModuleBuffer,
        end_stream: bool,
    ) {
        ENCODED.with(|e| {
            e.borrow_mut()
                .push(Encoded::Data(text(data.ptr, data.len), end_stream))
        });
    }

    fn encoded(
        status: u32,
        headers: &[(&str, &str)],
        body: &str,
        head: bool,
    ) -> (bool, Vec<Encoded>) {
        let mut map = HeaderMap::with_capacity(headers.len(), 64);
        for (n, v) in headers {
            map.add(n.as_bytes(), v.as_bytes());
        }
        ENCODED.with(|e| e.borrow_mut().clear());
        let sent = encode_response(0x40 as FilterEnvoyPtr, status, &map, body.as_bytes(), head);
        (sent, ENCODED.with(|e| e.take()))
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    /// A stored response goes to Envoy as `:status`, its headers in order
    /// without any stored `Content-Length` (a range's part, a body of
    /// another length), the body's own length, then the body ending the
    /// stream; a HEAD request and an empty body end with the headers.
    #[test]
    fn a_stored_response_is_encoded_with_its_own_length() {
        let stored = [
            (":status", "404"),
            ("content-type", "text/plain"),
            ("Content-Length", "999"),
            ("age", "3"),
            ("content-length", "7"),
        ];
        let (sent, calls) = encoded(200, &stored, "hello", false);
        assert!(sent);
        let hs = [
            (":status", "200"),
            ("content-type", "text/plain"),
            ("age", "3"),
            ("content-length", "5"),
        ];
        assert_eq!(
            calls,
            vec![
                Encoded::Headers(pairs(&hs), false),
                Encoded::Data("hello".into(), true)
            ]
        );
        // HEAD: the same headers (the body's length), no body.
        let (sent, calls) = encoded(200, &stored, "hello", true);
        assert!(sent);
        assert_eq!(calls, vec![Encoded::Headers(pairs(&hs), true)]);
        // A 304: no body, no length.
        let (_, calls) = encoded(
            304,
            &[("etag", "\"a\""), ("content-length", "5")],
            "",
            false,
        );
        assert_eq!(
            calls,
            vec![Encoded::Headers(
                pairs(&[(":status", "304"), ("etag", "\"a\"")]),
                true
            )]
        );
        // A status Envoy could not take, or no filter: nothing sent.
        for bad in [0, 99, 1000, u32::MAX] {
            assert_eq!(encoded(bad, &[], "x", false), (false, vec![]), "{bad}");
        }
        let map = HeaderMap::with_capacity(0, 0);
        assert!(!encode_response(
            std::ptr::null_mut(),
            200,
            &map,
            b"x",
            false
        ));
        assert!(ENCODED.with(|e| e.borrow().is_empty()));
    }

    fn config() -> ModuleConfig {
        ModuleConfig {
            id: 1,
            envoy: 0,
            bytes: Vec::new(),
            metrics: Default::default(),
            _ticker: None,
        }
    }

    #[test]
    fn effective_context_fails_for_a_context_that_is_gone() {
        let cfg = config();
        let filter = 0x40 as FilterEnvoyPtr;
        let host = NativeHost::for_stream(&cfg, 6, filter);
        register_context(5, std::ptr::null_mut(), std::ptr::null_mut());
        assert!(host.set_effective(5));
        assert!(host.current().is_null());
        forget_context(5);
        assert!(!host.set_effective(5));
        assert!(host.current().is_null());
        register_context(6, filter, 0x80 as *mut std::ffi::c_void);
        assert!(host.set_effective(6));
        assert_eq!(host.current(), filter);
        assert_eq!(filter_of(6), Some(filter));
        assert_eq!(entry_of(6), Some(0x80 as *mut std::ffi::c_void));
        assert_eq!(entry_of(5), None);
        forget_context(6);
        assert_eq!(filter_of(6), None);
    }

    /// Each hook's host has its own effective context and carrier: a
    /// nested hook (a local reply) leaves the outer one's untouched, and
    /// `leave_stream` clears both for `after_hook`.
    #[test]
    fn a_hosts_effective_context_is_its_own() {
        let cfg = config();
        let outer = NativeHost::for_stream(&cfg, 7, 0x40 as FilterEnvoyPtr);
        let inner = NativeHost::for_stream(&cfg, 8, 0x50 as FilterEnvoyPtr);
        inner.set_current(std::ptr::null_mut());
        assert_eq!(outer.current(), 0x40 as FilterEnvoyPtr);
        assert_eq!(outer.carrier(), (7, 0x40));
        assert_eq!(inner.carrier(), (8, 0x50));
        outer.leave_stream();
        assert!(outer.current().is_null());
        assert_eq!(outer.carrier(), (0, 0));
        assert!(NativeHost::new(&cfg).current().is_null());
    }
}
