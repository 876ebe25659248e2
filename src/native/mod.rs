//! meshguard as an Envoy dynamic module: the same filter, built as a native
//! shared library (`make native`: `target/release/libmeshguard.so`) that
//! Envoy loads with `envoy.filters.http.dynamic_modules` instead of running
//! the wasm module in V8. See `docs/native.md` for when to choose it.
//!
//! What is here, and what it maps to in the wasm build:
//!
//! | file | role | wasm counterpart |
//! |---|---|---|
//! | `abi.rs` | the C ABI of Envoy 1.40's dynamic modules, declared by hand | `host/abi.rs` |
//! | `mod.rs` (this file) | the event hooks Envoy calls; each worker's roots, each stream's box | `filter/dispatch.rs` |
//! | `host.rs` | the `Host` and `Stream` ports over the ABI | `host/proxy_wasm.rs` |
//! | `config.rs` | a configuration Envoy handed over, with its metric ids | the root's configuration |
//! | `store.rs` | process-wide shared data (CAS), for all workers | Envoy's shared data |
//! | `metrics.rs` | metrics defined on the main thread when the configuration loads | `proxy_define_metric` |
//! | `callout.rs` | calls to other services: on the stream they are for, or from the main thread (lease refills, reports; see there) | `proxy_http_call`, `proxy_grpc_call` |
//! | `crypto.rs` | `verify_signature` (RS*, ES*) with AWS-LC, RSA keys kept parsed | Envoy's `verify_signature` foreign function |
//! | `guard.rs` | the exported hook symbols: each runs its hook here inside `catch_unwind`; a panic fails that stream closed, is logged and counted (`meshguard.panics`) | none: a panic traps the wasm VM |
//!
//! The policy code (`filter::root`, `filter::http`, `filter::pipeline` and
//! every feature) runs unchanged: each worker thread keeps, per
//! configuration, one `Root` (as a wasm worker VM does) and one
//! `HttpStream` per stream, and drives them through the same callbacks.
//!
//! # Event hooks
//!
//! `envoy_dynamic_module_on_http_filter_config_new` (main thread) parses
//! and validates the configuration (a bad one is refused: Envoy rejects
//! the listener, naming the JSON path in its log) and defines every metric.
//! `..._filter_new` creates the stream (and the worker's root on its first
//! stream); request headers run the pipeline; response headers, body and
//! trailers run the response side; the response's last byte ends the
//! stream as in the wasm build; `..._filter_destroy` ends a stream whose
//! end never passed (reset), counted in `meshguard.streams_reset`.
//!
//! # Streams
//!
//! A stream is one allocation: `..._filter_new` boxes its `StreamBox` (the
//! `HttpStream`, its flags, its waker, its Envoy filter and configuration)
//! and hands Envoy the box's address as the filter's module pointer, so
//! every hook reaches its stream at once, with no lookup; the box is freed
//! in `..._filter_destroy`. What the filter layer knows by context id (a
//! root resuming a parked stream, a call's carrier) finds it in the one
//! table by id, `host.rs`'s contexts (id to filter and box, one insert and
//! one removal per stream). A stream that waits holds a waker and is
//! listed in its worker's `waking` (a few raw pointers, left when the
//! stream ends, before its box is freed). A hook's effective context and
//! carrier live in its `NativeHost` (what proxy-wasm's host keeps), not in
//! thread-locals: nothing is saved or restored around a hook. A stream
//! whose request went on with nothing left for its response (no state
//! kept, no headers to add, no call, no waker: `StreamBox::idle`) skips
//! the response hooks' work; its destroy frees it without the worker once
//! its end was seen (a reset still takes the full way and is counted).
//!
//! # Timers
//!
//! The HTTP filter ABI has no per-worker timer. A stream that waits (for a
//! cache fill by another request, for JWKS, for a rate limit answer) gets an
//! Envoy scheduler of its own; one process-wide thread commits every such
//! scheduler each 10 ms (the wasm build's fast tick), and the scheduled
//! hook, on the stream's worker thread, runs that worker root's tick (at
//! most once per 5 ms per worker), which resumes whatever waits there.
//! The slow tick (JWKS refresh polls, 500 ms) runs in a request's hook when
//! due, and on the main thread from a configuration scheduler (`timer.rs`,
//! `callout.rs`). Counters go to Envoy as they are incremented (no batch,
//! no flush timer).
//!
//! # Calls
//!
//! A gRPC call the filter sends in a worker's hook is routed when the hook
//! returns (`after_hook`, `callout.rs`; a hook that sent none and
//! deferred no end does nothing more): a request's own rate limit call
//! goes on its stream; a lease refill and a usage report go to the main
//! thread (a configuration scheduler's event `timer::RELAY_EVENT`), which
//! sends them through the configuration's callout and records a refill's
//! answer with its own root (the store is process-wide). JWKS fetches go on
//! the stream whose hook runs (it waits for them).
//!
//! # Re-entrancy
//!
//! Envoy runs a local reply through the encoder filters at once, inside
//! `send_response`: the response hooks of the stream that is replying are
//! entered while its own hook runs. They find the worker busy (its
//! `RefCell` borrowed) and pass, touching neither the worker nor their
//! stream's box; an end of stream seen that way is applied when the outer
//! hook returns (`ENDED`, by id). A stream's mutable state is reached only
//! through the worker's `Streams` key (`&mut`, so one entry at a time on
//! a thread, and never in a nested hook): no two `&mut` to one stream are
//! ever live (see `StreamBox`).

pub(crate) mod abi;
mod callout;
pub(crate) mod config;
pub(crate) mod crypto;
mod guard;
pub(crate) mod host;
mod metrics;
pub(crate) mod store;
mod timer;

use crate::filter::http::{Action, HttpStream};
use crate::filter::root::Root;
use crate::filter::worker::LeaseCall;
use crate::host::{Host, HostError, MetricId, Stream};
use crate::plan::Config;
use crate::ratelimit::rls::CallError;
use abi::{ConfigEnvoyPtr, EnvoyBuffer, FilterEnvoyPtr};
use config::ModuleConfig;
use host::NativeHost;
use std::cell::{Cell, RefCell, UnsafeCell};
use std::ffi::c_void;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicU64, Ordering};

/// What Envoy holds for one stream: the stream itself, in the one
/// allocation a stream makes here (`..._filter_new` boxes it,
/// `..._filter_destroy` frees it). Hooks reach it through the pointer
/// Envoy hands back; by id (`host::entry_of`) only what is looked up by id
/// anyway: a stream whose end was seen in a nested hook (`ENDED`), a
/// stream that waits (`Worker::sync_wakers`).
///
/// Safety: the fields outside `entry` never change after creation, so a
/// `&StreamBox` may be held anywhere on its worker thread (Envoy calls a
/// stream's hooks on the worker that created it). `entry` is mutated only
/// through [`Streams::get`], which needs the thread's `&mut Streams` (one
/// per thread, in the worker's `RefCell`): at most one `&mut StreamEntry`
/// of this thread is live at a time, even when hooks nest (a nested hook
/// finds the worker borrowed and does not touch its stream).
struct StreamBox {
    context_id: u32,
    cfg: *const ModuleConfig,
    /// `cfg`'s id (the key of the worker's roots).
    cfg_id: u64,
    filter: FilterEnvoyPtr,
    /// The filter let the request go with nothing left to do on the
    /// response side (`HttpStream::is_idle`): the response hooks only
    /// note its end, and `..._filter_destroy` frees it without the
    /// worker. Set in the request hook, never cleared.
    idle: Cell<bool>,
    /// An idle stream's response end passed (else its destroy is a reset,
    /// counted as any other).
    end_seen: Cell<bool>,
    entry: UnsafeCell<StreamEntry>,
}

struct StreamEntry {
    /// `None` once the stream has ended (its box lives until destroyed).
    stream: Option<HttpStream>,
    /// Its request waits for the answer of a call it carries (`callout.rs`).
    deferred: bool,
    /// Its request was let through by the filter but carries a call sent
    /// in that hook without waiting for it: held until the answer, or
    /// Envoy would cancel the call when the request ends. A safety net:
    /// the calls sent for others (lease refills, usage reports) go out
    /// from the main thread (`callout.rs`), so no call is carried that way
    /// now (the same holds for `HELD_RESPONSES`).
    held: bool,
    waker: Option<timer::Waker>,
}

/// The key to the thread's stream boxes (see [`StreamBox`]): not `Clone`,
/// one per thread (in its `Worker`).
#[derive(Default)]
struct Streams(());

impl Streams {
    /// The mutable part of a stream's box, for as long as `self` is
    /// borrowed.
    ///
    /// # Safety
    /// `b` is a live box of this thread (Envoy's pointer in its hook, or
    /// found by id in `host::CONTEXTS`, where it is registered from its
    /// creation to its destruction), and it is not freed while the result
    /// is held (boxes are freed in `..._filter_destroy`, after the
    /// worker's borrow ends).
    #[allow(clippy::mut_from_ref)]
    unsafe fn get<'s>(&'s mut self, b: &StreamBox) -> &'s mut StreamEntry {
        // SAFETY: the caller's promise for the box; `&mut self` is unique
        // on this thread, so no other `&mut` to any entry is live.
        unsafe { &mut *b.entry.get() }
    }
}

/// # Safety
/// `p` is a box registered in `host::CONTEXTS` (live).
unsafe fn box_at<'a>(p: *mut c_void) -> &'a StreamBox {
    // SAFETY: the caller's promise.
    unsafe { &*p.cast::<StreamBox>() }
}

#[derive(Default)]
struct Worker {
    roots: Vec<(u64, Root, u64)>,
    streams: Streams,
    next_id: u32,
    /// The `DEAD_GENERATION` this worker has pruned its roots for.
    dead_seen: u64,
    /// The streams of this worker holding a waker (removed when they end,
    /// before their box is freed).
    waking: Vec<*const StreamBox>,
}

thread_local! {
    static WORKER: RefCell<Worker> = RefCell::new(Worker::default());
    /// Streams whose end was seen while the table was busy (re-entrancy).
    static ENDED: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
    /// Streams whose response headers wait for the calls they carry
    /// (see `..._response_headers`).
    static HELD_RESPONSES: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
    /// Stream boxes Envoy destroyed while the worker was busy: ended and
    /// freed after the outer hook (never seen: Envoy defers deletions).
    static DESTROYED: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
    /// Something waits in `ENDED` or `DESTROYED` (`after_hook` looks at
    /// neither list otherwise).
    static DEFERRED: Cell<bool> = const { Cell::new(false) };
}

/// Freed stream boxes kept for this thread's next streams: a malloc and a
/// free fewer per request (~220 instructions under callgrind). At most
/// this many per thread; their contents are dropped when freed.
const SPARE_BOXES: usize = 64;

thread_local! {
    // Boxes, not values: each is a stream's allocation, its address given
    // to Envoy, kept whole for the next stream.
    #[allow(clippy::vec_box)]
    static SPARE: RefCell<Vec<Box<MaybeUninit<StreamBox>>>> = const { RefCell::new(Vec::new()) };
}

/// A stream's box: a spare one of this thread when there is one.
fn new_box(b: StreamBox) -> *mut StreamBox {
    let spare = SPARE.with(|s| s.try_borrow_mut().ok().and_then(|mut s| s.pop()));
    match spare {
        Some(room) => {
            let p = Box::into_raw(room).cast::<StreamBox>();
            // SAFETY: a spare box's memory, uninitialised, sized and
            // aligned for a `StreamBox`: written whole once, then owned by
            // the stream (freed by `free_box`).
            unsafe { p.write(b) };
            p
        }
        None => Box::into_raw(Box::new(b)),
    }
}

/// Frees a stream's box: its contents now, its memory kept for the next
/// stream (up to [`SPARE_BOXES`]).
///
/// # Safety
/// `p` is ours, from [`new_box`], and no one uses it again.
unsafe fn free_box(p: *mut StreamBox) {
    // SAFETY: the caller's promise: a live box, dropped in place once,
    // then only its memory is kept (as uninitialised).
    let room = unsafe {
        std::ptr::drop_in_place(p);
        Box::from_raw(p.cast::<MaybeUninit<StreamBox>>())
    };
    SPARE.with(|s| {
        if let Ok(mut s) = s.try_borrow_mut() {
            if s.len() < SPARE_BOXES {
                s.push(room);
            }
        }
    });
}

/// Defers the end of stream `id` to `after_hook` (see `ENDED`).
fn defer_end(id: u32) {
    ENDED.with(|e| e.borrow_mut().push(id));
    DEFERRED.with(|d| d.set(true));
}

fn with<R>(f: impl FnOnce(&mut Worker) -> R) -> Option<R> {
    WORKER.with(|w| w.try_borrow_mut().ok().map(|mut w| f(&mut w)))
}

static NEXT_CONFIG: AtomicU64 = AtomicU64::new(1);
/// Configurations Envoy has destroyed: each worker drops its roots of them
/// when it next creates a stream (one atomic read per stream otherwise).
static DEAD: std::sync::Mutex<Vec<u64>> = std::sync::Mutex::new(Vec::new());
static DEAD_GENERATION: AtomicU64 = AtomicU64::new(0);

impl Worker {
    fn next_id(&mut self) -> u32 {
        self.next_id = self.next_id.wrapping_add(1).max(1);
        self.next_id
    }

    /// Drops the roots of configurations Envoy has destroyed.
    fn forget_dead_roots(&mut self) {
        let generation = DEAD_GENERATION.load(Ordering::Acquire);
        if generation == self.dead_seen {
            return;
        }
        self.dead_seen = generation;
        // Poisoned (a panic caught while it was held): ids are only pushed.
        let dead = DEAD.lock().unwrap_or_else(|e| e.into_inner());
        let before = self.roots.len();
        self.roots.retain(|(id, root, _)| {
            let keep = !dead.contains(id);
            if !keep {
                host::forget_context(root.context_id());
            }
            keep
        });
        let dropped = before - self.roots.len();
        if dropped > 0 {
            log::info!(
                "meshguard: forgot {dropped} configuration(s) Envoy has deleted ({} loaded in this worker)",
                self.roots.len()
            );
        }
    }

    /// This worker's root of `cfg`, created (and configured) on first use.
    fn root(&mut self, cfg: &ModuleConfig, host: &NativeHost<'_>) -> Option<&mut Root> {
        if !self.roots.iter().any(|(id, _, _)| *id == cfg.id) {
            let rid = self.next_id();
            host::register_context(rid, std::ptr::null_mut(), std::ptr::null_mut());
            let mut root = Root::new(rid);
            root.on_vm_start();
            let saved = host.current();
            host.set_current(std::ptr::null_mut());
            let ok = root.on_configure(host, &cfg.bytes);
            host.set_current(saved);
            if !ok {
                host::forget_context(rid);
                return None;
            }
            self.roots.push((cfg.id, root, 0));
        }
        self.roots
            .iter_mut()
            .find(|(id, _, _)| *id == cfg.id)
            .map(|(_, r, _)| r)
    }

    /// Runs the worker's tick for `cfg` (rate-limited to one per 5 ms).
    fn tick(&mut self, cfg: &ModuleConfig, host: &NativeHost<'_>) {
        let now = host.now_nanos();
        let Some((_, root, last)) = self.roots.iter_mut().find(|(id, _, _)| *id == cfg.id) else {
            return;
        };
        if now.saturating_sub(*last) < 5_000_000 {
            return;
        }
        *last = now;
        let saved = host.current();
        root.on_tick(host);
        host.set_current(saved);
    }

    /// The slow tick (JWKS refresh polls), driven by traffic: run from a
    /// request's hook when the last tick of a configuration with remote
    /// keys is 500 ms old (the wasm build's `SLOW_TICK`).
    fn tick_if_due(&mut self, cfg: &ModuleConfig, host: &NativeHost<'_>) {
        let due = self.roots.iter().any(|(id, root, last)| {
            *id == cfg.id
                && root
                    .worker()
                    .runtime
                    .borrow()
                    .as_ref()
                    .is_some_and(|rt| rt.has_remote_jwks)
                && host.now_nanos().saturating_sub(*last) >= 500_000_000
        });
        if due {
            self.tick(cfg, host);
        }
    }

    /// Hands a call's answer (or failure) to the root that sent it.
    fn deliver(
        &mut self,
        host: &NativeHost<'_>,
        token: u32,
        kind: callout::Kind,
        mut answer: callout::Answer,
        success: bool,
    ) {
        let Some((_, root, _)) = self.roots.iter_mut().find(|(id, _, _)| *id == host.cfg.id) else {
            return;
        };
        let saved = host.current();
        match kind {
            callout::Kind::Http => {
                if !success {
                    answer.headers.clear();
                }
                let size = answer.body.len();
                host::ANSWER.with(|a| *a.borrow_mut() = Some(answer));
                root.on_http_call_response(host, token, size);
            }
            callout::Kind::Grpc => {
                let (status, body) = callout::grpc_answer(&answer, success);
                let message = answer
                    .headers
                    .iter()
                    .find(|(k, _)| k == "grpc-message")
                    .map(|(_, v)| String::from_utf8_lossy(v).into_owned());
                let size = body.len();
                host::ANSWER.with(|a| {
                    *a.borrow_mut() = Some(callout::Answer {
                        headers: answer.headers,
                        body,
                        grpc_message: message,
                    })
                });
                crate::filter::root::on_rls_response(host, root.worker(), token, status, size);
            }
        }
        host::ANSWER.with(|a| *a.borrow_mut() = None);
        host.set_current(saved);
    }

    /// Gives every stream of `cfg` that waits a waker, and takes it from
    /// one that no longer waits.
    fn sync_wakers(&mut self, cfg: u64) {
        let Some((_, root, _)) = self.roots.iter().find(|(id, _, _)| *id == cfg) else {
            return;
        };
        let w = root.worker();
        let waiting: Vec<u32> = w
            .parked
            .borrow()
            .iter()
            .map(|(id, _)| *id)
            .chain(w.rls_calls.borrow().iter().map(|(_, r)| r.context_id))
            .collect();
        if waiting.is_empty() && self.waking.is_empty() {
            return;
        }
        for id in &waiting {
            let Some(p) = host::entry_of(*id) else {
                continue;
            };
            // SAFETY: registered, so live.
            let b = unsafe { box_at(p) };
            // SAFETY: as above; the entry is dropped before the next.
            let e = unsafe { self.streams.get(b) };
            if b.cfg_id != cfg || e.stream.is_none() || e.waker.is_some() {
                continue;
            }
            e.waker = timer::Waker::new(b.filter);
            if e.waker.is_some() {
                self.waking.push(b);
            }
        }
        let mut i = 0;
        while let Some(&p) = self.waking.get(i) {
            // SAFETY: a stream leaves `waking` when it ends, before its
            // box is freed.
            let b = unsafe { &*p };
            if b.cfg_id != cfg || waiting.contains(&b.context_id) {
                i += 1;
                continue;
            }
            // SAFETY: as above.
            drop(unsafe { self.streams.get(b) }.waker.take());
            self.waking.swap_remove(i);
        }
    }

    /// Routes the gRPC calls sent in the hook that returned (see "Which
    /// call goes where" in `callout.rs`): a stream's own call goes on that
    /// stream; a lease refill and a report go to the main thread.
    fn route_calls(&mut self, host: &NativeHost<'_>) {
        for call in callout::take_unsent() {
            let token = call.token;
            let own = self.roots.iter().any(|(_, r, _)| {
                r.worker()
                    .rls_calls
                    .try_borrow()
                    .is_ok_and(|c| c.iter().any(|(t, _)| *t == token))
            });
            let cfg = self
                .roots
                .iter()
                .find(|(_, r, _)| {
                    r.worker()
                        .lease_calls
                        .try_borrow()
                        .is_ok_and(|c| c.iter().any(|(t, _)| *t == token))
                })
                .map_or(host.cfg.id, |(id, _, _)| *id);
            let call = match own || !timer::has_relay(cfg) {
                true => call,
                false => {
                    let lease = self
                        .roots
                        .iter()
                        .find(|(id, _, _)| *id == cfg)
                        .and_then(|(_, r, _)| r.worker().take_lease_call(token))
                        .map(|c| c.refill);
                    // Refused only when the configuration is going away.
                    let _ = callout::relay(cfg, call, lease);
                    continue;
                }
            };
            // The stream's own call (or no main thread to relay to).
            let live =
                !call.filter().is_null() && host::filter_of(call.carrier) == Some(call.filter());
            let sent = match live {
                true => call.send_on_carrier(),
                false => Err(HostError("the stream the call was for has ended".into())),
            };
            if let Err(e) = sent {
                // Reported at once (UNAVAILABLE, saying why), as the wasm
                // build reports a call Envoy could not send.
                let why = format!("could not be sent ({})", e.0);
                let answer = callout::Answer {
                    headers: vec![("grpc-message".into(), why.into_bytes())],
                    ..Default::default()
                };
                let saved = host.current();
                self.deliver(host, token, callout::Kind::Grpc, answer, false);
                host.set_current(saved);
            }
        }
    }

    /// Sends a call a worker relayed (on the main thread, in `cfg`'s hook).
    fn send_relayed(&mut self, cfg: &ModuleConfig, host: &NativeHost<'_>, r: callout::Relayed) {
        let Some((_, root, _)) = self.roots.iter().find(|(id, _, _)| *id == cfg.id) else {
            return;
        };
        let w = root.worker();
        let now = host.now_nanos();
        let sent = match callout::relay_timeout(r.lease.as_ref(), r.call_timeout(), now) {
            Some(t) => callout::send_relayed(&r.call, t),
            None => Err(HostError(
                "the lease refill's time ran out before the main thread could send it".into(),
            )),
        };
        let rt = w.runtime.borrow().clone();
        let lease = r.lease.zip(rt).map(|(refill, rt)| LeaseCall { rt, refill });
        match (sent, lease) {
            (Ok(token), Some(call)) => w.add_lease_call(host, token, call),
            (Ok(_), None) => {}
            (Err(e), Some(call)) => {
                log::debug!("meshguard: lease refill not sent: {}", e.0);
                crate::filter::pipeline::lease_answer(host, w, call, Err(CallError::Dispatch(e.0)));
            }
            (Err(e), None) => log::warn!(
                "meshguard: a report to the rate limit service could not be sent: {}",
                e.0
            ),
        }
    }

    /// Ends a stream (its response's last byte passed, or Envoy destroyed
    /// it); a stream that already ended is left alone.
    fn end(&mut self, b: &StreamBox, seen: bool, host: &NativeHost<'_>) {
        self.end_calls(b.context_id, host);
        // SAFETY: the caller's box, live; dropped before `self.roots` is
        // used.
        let e = unsafe { self.streams.get(b) };
        if e.waker.take().is_some() {
            self.waking.retain(|p| !std::ptr::eq(*p, b));
        }
        let Some(mut stream) = e.stream.take() else {
            return;
        };
        if !seen {
            let reset = self
                .roots
                .iter()
                .find(|(id, _, _)| *id == b.cfg_id)
                .and_then(|(_, r, _)| {
                    r.worker()
                        .runtime
                        .borrow()
                        .as_ref()
                        .map(|rt| rt.streams_reset)
                })
                .unwrap_or(MetricId::NONE);
            host.increment_metric(reset, 1);
        }
        stream.on_end(host, seen);
    }

    /// The calls a stream carried, at its end.
    fn end_calls(&mut self, context_id: u32, host: &NativeHost<'_>) {
        // Calls this stream carried: Envoy cancels them with it. A JWKS
        // fetch is reported as unanswered; a rate limit call is the
        // stream's own and ends with it (lease refills and reports are
        // never carried: `callout.rs`).
        for (token, kind) in callout::take_all(context_id) {
            if kind == callout::Kind::Http {
                let saved = host.current();
                host.set_current(std::ptr::null_mut());
                self.deliver(host, token, kind, callout::Answer::default(), false);
                host.set_current(saved);
            }
        }
    }

    /// Ends the stream of `context_id`, if it is still live.
    fn end_id(&mut self, context_id: u32, seen: bool, host: &NativeHost<'_>) {
        match host::entry_of(context_id) {
            // SAFETY: registered, so live.
            Some(p) => self.end(unsafe { box_at(p) }, seen, host),
            None => self.end_calls(context_id, host),
        }
    }
}

/// Applies the ends seen while the table was busy, then routes the gRPC
/// calls the hook sent (`callout.rs`). Counters need nothing here: they
/// reached Envoy as they were incremented (`batches_counters`).
fn after_hook(host: &NativeHost<'_>) {
    // Nothing deferred, no call to route: most hooks.
    if !DEFERRED.with(|d| d.get()) && !callout::has_unsent() {
        return;
    }
    // An end sends a report, a failed call's delivery may end a stream
    // (a local reply): a few rounds settle both.
    for _ in 0..4 {
        DEFERRED.with(|d| d.set(false));
        let mut ended = ENDED.with(|e| std::mem::take(&mut *e.borrow_mut()));
        if !ended.is_empty() {
            with(|w| {
                for id in ended.drain(..) {
                    w.end_id(id, true, host);
                }
            });
        }
        let mut destroyed = DESTROYED.with(|d| std::mem::take(&mut *d.borrow_mut()));
        if !destroyed.is_empty() {
            with(|w| {
                for p in destroyed.drain(..) {
                    // SAFETY: a box Envoy destroyed, not yet freed; forgotten
                    // by id already, so only this list reaches it.
                    unsafe { w.end(box_at(p as *mut c_void), false, host) };
                    // SAFETY: ours, from `new_box`, freed once.
                    unsafe { free_box(p as *mut StreamBox) };
                }
            });
        }
        if !ended.is_empty() || !destroyed.is_empty() {
            // Busy (this hook is nested in another): the outer one's turn.
            ENDED.with(|e| e.borrow_mut().append(&mut ended));
            DESTROYED.with(|d| d.borrow_mut().append(&mut destroyed));
            DEFERRED.with(|d| d.set(true));
        }
        // Busy (a nested hook, a local reply): the outer hook routes them.
        if !callout::has_unsent() || with(|w| w.route_calls(host)).is_none() {
            break;
        }
    }
}

/// # Safety
/// `p` is a pointer this module gave Envoy for a stream, still live.
unsafe fn stream_box<'a>(p: *const c_void) -> Option<(&'a StreamBox, &'a ModuleConfig)> {
    let b = p.cast::<StreamBox>();
    if b.is_null() {
        return None;
    }
    // SAFETY: the caller's promise; the configuration outlives its streams.
    unsafe {
        let b = &*b;
        let cfg = b.cfg.as_ref()?;
        Some((b, cfg))
    }
}

// ---------------------------------------------------------------- hooks
// Envoy's symbols of these are in `guard.rs`: each runs its hook here
// inside `catch_unwind` (a panic fails its stream, not Envoy).

fn envoy_dynamic_module_on_program_init() -> *const u8 {
    host_log::init();
    log::info!(
        "meshguard {} ({}) started (native module, Envoy dynamic-module ABI {})",
        env!("CARGO_PKG_VERSION"),
        crate::GIT_HASH,
        String::from_utf8_lossy(abi::ABI_VERSION.strip_suffix(b"\0").unwrap_or_default())
    );
    abi::ABI_VERSION.as_ptr()
}

/// # Safety
/// Envoy's buffers are live for the call.
unsafe fn envoy_dynamic_module_on_http_filter_config_new(
    config_envoy: ConfigEnvoyPtr,
    name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> *const c_void {
    // SAFETY: Envoy's buffers, live for the call.
    let (name, bytes) = unsafe { (name.to_vec(), config.to_vec()) };
    let config = match Config::from_bytes(&bytes) {
        Ok(c) => c,
        Err(e) => {
            log::error!("meshguard: {e}");
            return std::ptr::null();
        }
    };
    let routes = config.routes.len();
    let remote_jwks =
        (0..config.jwt_providers.len()).any(|i| config.jwt_providers.remote(i).is_some());
    let has_rls = config.rate_limit_service.is_some();
    let metrics = metrics::define_all(config_envoy, config);
    log::info!(
        "meshguard: configuration loaded ({routes} routes) by the native module (filter {}, {} metrics)",
        String::from_utf8_lossy(&name),
        metrics.len()
    );
    let id = NEXT_CONFIG.fetch_add(1, Ordering::Relaxed);
    // Lease refills and usage reports go out from the main thread
    // (`callout.rs`): a worker wakes it with this scheduler.
    if has_rls && !timer::relay_register(id, config_envoy) {
        log::warn!(
            "meshguard: no main-thread scheduler: lease refills and usage reports ride on requests"
        );
    }
    let cfg = Box::new(ModuleConfig {
        id,
        envoy: config_envoy as usize,
        bytes,
        metrics,
        _ticker: if remote_jwks {
            timer::ConfigTicker::new(config_envoy)
        } else {
            None
        },
    });
    Box::into_raw(cfg) as *const c_void
}

/// # Safety
/// `p` is a pointer `..._config_new` returned.
unsafe fn envoy_dynamic_module_on_http_filter_config_destroy(p: *const c_void) {
    if !p.is_null() {
        // SAFETY: ours, from `Box::into_raw`, destroyed once by Envoy.
        let cfg = unsafe { Box::from_raw(p as *mut ModuleConfig) };
        timer::relay_unregister(cfg.id);
        drop(callout::take_relayed(cfg.id));
        DEAD.lock().unwrap_or_else(|e| e.into_inner()).push(cfg.id);
        DEAD_GENERATION.fetch_add(1, Ordering::Release);
        drop(cfg);
        // The main thread's own roots (configurations with remote keys).
        with(|w| w.forget_dead_roots());
    }
}

/// # Safety
/// `cfg` is a pointer `..._config_new` returned.
unsafe fn envoy_dynamic_module_on_http_filter_new(
    cfg: *const c_void,
    filter: FilterEnvoyPtr,
) -> *const c_void {
    // SAFETY: Envoy's promise.
    let Some(cfg_ref) = (unsafe { cfg.cast::<ModuleConfig>().as_ref() }) else {
        return std::ptr::null();
    };
    let host = NativeHost::new(cfg_ref);
    let b = with(|w| {
        w.forget_dead_roots();
        let id = w.next_id();
        let stream = w.root(cfg_ref, &host)?.new_stream(id);
        let b = new_box(StreamBox {
            context_id: id,
            cfg: cfg_ref,
            cfg_id: cfg_ref.id,
            filter,
            idle: Cell::new(false),
            end_seen: Cell::new(false),
            entry: UnsafeCell::new(StreamEntry {
                stream: Some(stream),
                deferred: false,
                held: false,
                waker: None,
            }),
        });
        host::register_context(id, filter, b.cast());
        Some(b)
    })
    .flatten();
    b.map_or(std::ptr::null(), |b| b as *const c_void)
}

/// Runs `f` on the stream of `module` (its box) with its filter effective
/// and as the carrier of the calls sent, then `after_hook` with neither.
/// `default` when the worker is busy (a nested hook).
fn on_stream<R>(
    filter: FilterEnvoyPtr,
    module: *const c_void,
    default: R,
    f: impl FnOnce(&mut Worker, &StreamBox, &NativeHost<'_>) -> R,
) -> R {
    // SAFETY: Envoy passes back the pointer `..._filter_new` returned.
    let Some((b, cfg)) = (unsafe { stream_box(module) }) else {
        return default;
    };
    let host = NativeHost::for_stream(cfg, b.context_id, filter);
    let r = with(|w| f(w, b, &host));
    host.leave_stream();
    after_hook(&host);
    r.unwrap_or(default)
}

fn headers_status(a: Action) -> u32 {
    match a {
        Action::Continue => abi::status::CONTINUE,
        Action::Pause => abi::status::STOP_ALL_AND_WATERMARK,
    }
}

fn envoy_dynamic_module_on_http_filter_request_headers(
    filter: FilterEnvoyPtr,
    module: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    on_stream(filter, module, abi::status::CONTINUE, |w, b, host| {
        w.tick_if_due(host.cfg, host);
        let id = b.context_id;
        // SAFETY: Envoy's box, live for the hook; dropped before `w` is
        // used again.
        let e = unsafe { w.streams.get(b) };
        let Some(stream) = e.stream.as_mut() else {
            return abi::status::CONTINUE;
        };
        if callout::has_pending(id) {
            // The tick sent a call on this request: it waits for the answer.
            e.deferred = true;
            return abi::status::STOP_ALL_AND_WATERMARK;
        }
        let a = stream.on_request_headers(host);
        let a = match a == Action::Continue && callout::has_pending(id) {
            true => {
                e.held = true;
                Action::Pause
            }
            false => a,
        };
        // Nothing left for the response hooks: they only note the end
        // (no call carried, no waker, nothing held or deferred).
        if a == Action::Continue && stream.is_idle() && !e.held && !e.deferred && e.waker.is_none()
        {
            b.idle.set(true);
        }
        w.sync_wakers(b.cfg_id);
        headers_status(a)
    })
}

fn envoy_dynamic_module_on_http_filter_request_body(
    _filter: FilterEnvoyPtr,
    _module: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    abi::status::CONTINUE
}

fn envoy_dynamic_module_on_http_filter_request_trailers(
    _filter: FilterEnvoyPtr,
    _module: *const c_void,
) -> u32 {
    abi::status::CONTINUE
}

/// A response hook: `f` runs the stream's callback; the stream ends with
/// the response's last byte (unless the filter paused it).
fn response_hook(
    filter: FilterEnvoyPtr,
    module: *const c_void,
    end_of_stream: bool,
    f: impl FnOnce(&mut HttpStream, &NativeHost<'_>) -> Action,
) -> Action {
    // SAFETY: Envoy passes back the pointer `..._filter_new` returned.
    let found = unsafe { stream_box(module) };
    if let Some((b, _)) = found.filter(|(b, _)| b.idle.get()) {
        // An idle stream (see `StreamBox::idle`): its end is all there is.
        if end_of_stream {
            b.end_seen.set(true);
        }
        return Action::Continue;
    }
    let context_id = found.map(|(b, _)| b.context_id);
    let r = on_stream(filter, module, None, |w, b, host| {
        // SAFETY: Envoy's box, live for the hook; dropped before `w` is
        // used again.
        let stream = unsafe { w.streams.get(b) }.stream.as_mut()?;
        let a = f(stream, host);
        if end_of_stream && a == Action::Continue {
            w.end(b, true, host);
        }
        Some(a)
    });
    match r {
        Some(a) => a,
        None => {
            // The table was busy (a local reply of this stream passing
            // through): its end is applied after the outer hook.
            if let (true, Some(id)) = (end_of_stream, context_id) {
                defer_end(id);
            }
            Action::Continue
        }
    }
}

fn envoy_dynamic_module_on_http_filter_response_headers(
    filter: FilterEnvoyPtr,
    module: *const c_void,
    end_of_stream: bool,
) -> u32 {
    let a = response_hook(filter, module, end_of_stream, |s, host| {
        s.on_response_headers(host, end_of_stream)
    });
    // SAFETY: Envoy passes back the pointer `..._filter_new` returned.
    let id = unsafe { stream_box(module) }.map(|(b, _)| b.context_id);
    match (a, id) {
        (Action::Continue, Some(id)) if callout::has_pending(id) => {
            // This stream carries a call it did not wait for (a lease
            // refill sent while a woken request went on): Envoy cancels a
            // stream's calls when it ends, so its response waits for the
            // answer (usually already there: the call left before the
            // upstream request).
            HELD_RESPONSES.with(|h| h.borrow_mut().push(id));
            abi::status::STOP_ITERATION
        }
        (Action::Continue, _) => abi::status::CONTINUE,
        (Action::Pause, _) => abi::status::STOP_ITERATION,
    }
}

fn envoy_dynamic_module_on_http_filter_response_body(
    filter: FilterEnvoyPtr,
    module: *const c_void,
    end_of_stream: bool,
) -> u32 {
    response_hook(filter, module, end_of_stream, |s, host| {
        if !s.needs_response_body() {
            return Action::Continue;
        }
        let size = host.response_body_size();
        s.on_response_body(host, size, end_of_stream)
    });
    abi::status::CONTINUE
}

fn envoy_dynamic_module_on_http_filter_response_trailers(
    filter: FilterEnvoyPtr,
    module: *const c_void,
) -> u32 {
    response_hook(filter, module, true, |s, host| {
        s.on_response_trailers(host);
        Action::Continue
    });
    abi::status::CONTINUE
}

fn envoy_dynamic_module_on_http_filter_stream_complete(
    _filter: FilterEnvoyPtr,
    _module: *const c_void,
) {
}

/// # Safety
/// `module` is a pointer `..._filter_new` returned; Envoy destroys it once.
unsafe fn envoy_dynamic_module_on_http_filter_destroy(module: *const c_void) {
    // SAFETY: Envoy's promise.
    let Some((b, cfg)) = (unsafe { stream_box(module) }) else {
        return;
    };
    let id = b.context_id;
    if b.idle.get() && b.end_seen.get() {
        // An idle stream whose response ended: nothing of it is listed
        // anywhere but the contexts table (no call, no waker, nothing
        // held), and its end has nothing to do (`HttpStream::is_idle`).
        host::forget_context(id);
        // SAFETY: ours, from `new_box`; Envoy never uses it again.
        unsafe { free_box(module as *mut StreamBox) };
        return;
    }
    let host = NativeHost::new(cfg);
    HELD_RESPONSES.with(|held| held.borrow_mut().retain(|x| *x != id));
    let ended = with(|w| w.end(b, false, &host)).is_some();
    host::forget_context(id);
    if !ended {
        // The worker is busy (never seen: Envoy defers deletions): ended
        // and freed after the outer hook.
        DESTROYED.with(|d| d.borrow_mut().push(module as usize));
        DEFERRED.with(|d| d.set(true));
    }
    after_hook(&host);
    if ended {
        // SAFETY: ours, from `new_box`; Envoy never uses it again, and no
        // list holds it (it left `waking` when it ended).
        unsafe { free_box(module as *mut StreamBox) };
    }
}

/// A waker's event: the worker's tick, on the stream's thread.
fn envoy_dynamic_module_on_http_filter_scheduled(
    filter: FilterEnvoyPtr,
    module: *const c_void,
    _event_id: u64,
) {
    on_stream(filter, module, (), |w, _b, host| {
        w.tick(host.cfg, host);
        w.sync_wakers(host.cfg.id);
    });
}

/// The answer of a call this stream carried (`callout.rs`).
#[allow(clippy::too_many_arguments)]
fn envoy_dynamic_module_on_http_filter_http_callout_done(
    filter: FilterEnvoyPtr,
    module: *const c_void,
    callout_id: u64,
    result: u32,
    headers: *const abi::EnvoyHeader,
    headers_len: usize,
    body: *const EnvoyBuffer,
    body_len: usize,
) {
    on_stream(filter, module, (), |w, b, host| {
        let id = b.context_id;
        // SAFETY: Envoy's buffers, live for this hook.
        let found =
            unsafe { callout::answer(id, 0, callout_id, headers, headers_len, body, body_len) };
        let Some((token, kind, answer)) = found else {
            return;
        };
        w.deliver(
            host,
            token,
            kind,
            answer,
            result == abi::callout_result::SUCCESS,
        );
        // A request that waited for the call it carried runs now.
        if !callout::has_pending(id) {
            // SAFETY: Envoy's box, live for the hook; dropped before `w`
            // is used again.
            let e = unsafe { w.streams.get(b) };
            if e.stream.is_some() && e.held {
                // Its own verdict was Continue: it only waited for the call.
                e.held = false;
                host.set_current(filter);
                host.resume_request();
            }
            let held = HELD_RESPONSES.with(|h| {
                let mut h = h.borrow_mut();
                let found = h.iter().position(|x| *x == id);
                found.map(|i| h.swap_remove(i)).is_some()
            });
            if held {
                // SAFETY: the filter of the running hook.
                unsafe { abi::envoy_dynamic_module_callback_http_filter_continue_encoding(filter) };
            }
            // SAFETY: as above.
            let e = unsafe { w.streams.get(b) };
            if let Some(stream) = e.stream.as_mut().filter(|_| e.deferred) {
                e.deferred = false;
                host.set_current(filter);
                if stream.on_request_headers(host) == Action::Continue {
                    host.resume_request();
                }
            }
        }
        w.sync_wakers(host.cfg.id);
    });
}

/// The main-thread tick of a configuration with remote keys (`timer.rs`).
///
/// # Safety
/// `module` is a pointer `..._config_new` returned.
unsafe fn envoy_dynamic_module_on_http_filter_config_scheduled(
    _config_envoy: ConfigEnvoyPtr,
    module: *const c_void,
    event_id: u64,
) {
    // SAFETY: Envoy's promise.
    let Some(cfg) = (unsafe { module.cast::<ModuleConfig>().as_ref() }) else {
        return;
    };
    // Calls workers relayed (`callout.rs`): whatever the event, none waits
    // longer than needed.
    let relayed = callout::take_relayed(cfg.id);
    on_main(cfg, |host| {
        with(|w| {
            if w.root(cfg, host).is_none() {
                return;
            }
            if event_id != timer::RELAY_EVENT {
                w.tick(cfg, host);
            }
            for r in relayed {
                w.send_relayed(cfg, host, r);
            }
        });
    });
}

/// Runs `f` in a configuration's main-thread hook: no stream current,
/// calls sent through the configuration's own callout.
fn on_main(cfg: &ModuleConfig, f: impl FnOnce(&NativeHost<'_>)) {
    let host = NativeHost::new(cfg);
    callout::set_main(cfg.envoy());
    f(&host);
    callout::clear_main();
    after_hook(&host);
}

/// The answer of a call a configuration sent on the main thread.
///
/// # Safety
/// `module` is a pointer `..._config_new` returned; Envoy's buffers are
/// live for the call.
#[allow(clippy::too_many_arguments)]
unsafe fn envoy_dynamic_module_on_http_filter_config_http_callout_done(
    _config_envoy: ConfigEnvoyPtr,
    module: *const c_void,
    callout_id: u64,
    result: u32,
    headers: *const abi::EnvoyHeader,
    headers_len: usize,
    body: *const EnvoyBuffer,
    body_len: usize,
) {
    // SAFETY: Envoy's promise.
    let Some(cfg) = (unsafe { module.cast::<ModuleConfig>().as_ref() }) else {
        return;
    };
    on_main(cfg, |host| {
        // SAFETY: Envoy's buffers, live for this hook.
        let found = unsafe {
            callout::answer(
                callout::MAIN_CARRIER,
                // As `on_main` set it (`callout::set_main`).
                cfg.envoy,
                callout_id,
                headers,
                headers_len,
                body,
                body_len,
            )
        };
        if let Some((token, kind, answer)) = found {
            let refill = with(|w| {
                let refill = w.roots.iter().any(|(_, r, _)| {
                    r.worker()
                        .lease_calls
                        .try_borrow()
                        .is_ok_and(|c| c.iter().any(|(t, _)| *t == token))
                });
                w.deliver(
                    host,
                    token,
                    kind,
                    answer,
                    result == abi::callout_result::SUCCESS,
                );
                refill
            });
            if refill == Some(true) {
                // A relayed lease refill's answer is in the store: the
                // streams waiting for it, on any worker, look now (not
                // for a report's answer: one per settled request).
                timer::wake_all();
            }
        }
    });
}

fn envoy_dynamic_module_on_http_filter_http_stream_headers(
    _filter: FilterEnvoyPtr,
    _module: *const c_void,
    _stream_id: u64,
    _headers: *const abi::EnvoyHeader,
    _headers_len: usize,
    _end_stream: bool,
) {
}

fn envoy_dynamic_module_on_http_filter_http_stream_data(
    _filter: FilterEnvoyPtr,
    _module: *const c_void,
    _stream_id: u64,
    _data: *const EnvoyBuffer,
    _data_len: usize,
    _end_stream: bool,
) {
}

fn envoy_dynamic_module_on_http_filter_http_stream_trailers(
    _filter: FilterEnvoyPtr,
    _module: *const c_void,
    _stream_id: u64,
    _trailers: *const abi::EnvoyHeader,
    _trailers_len: usize,
) {
}

fn envoy_dynamic_module_on_http_filter_http_stream_complete(
    _filter: FilterEnvoyPtr,
    _module: *const c_void,
    _stream_id: u64,
) {
}

fn envoy_dynamic_module_on_http_filter_http_stream_reset(
    _filter: FilterEnvoyPtr,
    _module: *const c_void,
    _stream_id: u64,
    _reason: u32,
) {
}

fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
    _filter: FilterEnvoyPtr,
    _module: *const c_void,
) {
}

fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
    _filter: FilterEnvoyPtr,
    _module: *const c_void,
) {
}

/// Logging through Envoy's `dynamic_modules` logger.
mod host_log {
    use super::abi;

    struct EnvoyLogger;

    static LOGGER: EnvoyLogger = EnvoyLogger;

    impl log::Log for EnvoyLogger {
        fn enabled(&self, metadata: &log::Metadata) -> bool {
            metadata.level() <= log::max_level()
        }

        fn log(&self, record: &log::Record) {
            if !self.enabled(record.metadata()) {
                return;
            }
            let level = match record.level() {
                log::Level::Trace => abi::log_level::TRACE,
                log::Level::Debug => abi::log_level::DEBUG,
                log::Level::Info => abi::log_level::INFO,
                log::Level::Warn => abi::log_level::WARN,
                log::Level::Error => abi::log_level::ERROR,
            };
            let message = record.args().to_string();
            // SAFETY: the message is live for the call.
            unsafe {
                abi::envoy_dynamic_module_callback_log(
                    level,
                    abi::ModuleBuffer::of(message.as_bytes()),
                )
            };
        }

        fn flush(&self) {}
    }

    /// Installs the logger (info and above) once per process.
    pub fn init() {
        if log::set_logger(&LOGGER).is_ok() {
            log::set_max_level(log::LevelFilter::Info);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::http::HttpStream;
    use std::rc::Rc;

    fn a_box(id: u32, worker: &Rc<crate::filter::worker::Worker>) -> StreamBox {
        StreamBox {
            context_id: id,
            cfg: std::ptr::null(),
            cfg_id: 0,
            filter: std::ptr::null_mut(),
            idle: Cell::new(false),
            end_seen: Cell::new(false),
            entry: UnsafeCell::new(StreamEntry {
                stream: Some(HttpStream::new(id, None, worker.clone())),
                deferred: false,
                held: false,
                waker: None,
            }),
        }
    }

    /// A freed box's contents are dropped at once (the stream's hold on
    /// its worker ends), its memory serves the next stream of the thread,
    /// and no more than `SPARE_BOXES` are kept.
    #[test]
    fn freed_stream_boxes_drop_their_stream_and_serve_the_next() {
        SPARE.with(|s| s.borrow_mut().clear());
        let worker = Rc::new(crate::filter::worker::Worker::default());
        let p = new_box(a_box(1, &worker));
        assert_eq!(Rc::strong_count(&worker), 2);
        // SAFETY: from `new_box`, freed once.
        unsafe { free_box(p) };
        assert_eq!(Rc::strong_count(&worker), 1, "the stream was dropped");
        let q = new_box(a_box(2, &worker));
        assert_eq!(q, p, "the spare memory is reused");
        // SAFETY: a live box of this thread.
        assert_eq!(unsafe { box_at(q.cast()) }.context_id, 2);
        let many: Vec<_> = (0..SPARE_BOXES + 8)
            .map(|i| new_box(a_box(i as u32, &worker)))
            .collect();
        for b in many.into_iter().chain([q]) {
            // SAFETY: each from `new_box`, freed once.
            unsafe { free_box(b) };
        }
        assert_eq!(Rc::strong_count(&worker), 1);
        assert_eq!(SPARE.with(|s| s.borrow().len()), SPARE_BOXES);
        SPARE.with(|s| s.borrow_mut().clear());
    }
}
