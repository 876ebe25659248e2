//! The module's exports: the proxy-wasm ABI 0.2.1 callbacks meshguard
//! handles, and the table of live contexts they are routed to.
//!
//! Only what meshguard uses is exported (see `host/abi.rs` for why this is
//! not the Rust SDK's dispatcher): Envoy enters the VM only for exported
//! callbacks, so every callback left out is one VM entry less per request
//! (measured in Envoy: ~0.8 us of CPU per request for `proxy_on_log`).
//!
//! | callback | for |
//! |---|---|
//! | `proxy_on_vm_start`, `proxy_on_configure`, `proxy_on_tick` | root contexts |
//! | `proxy_on_context_create` | a stream's root (a VM can hold several configurations) |
//! | `proxy_on_request_headers`, `proxy_on_response_headers`, `proxy_on_response_body` | the pipeline; the response's end also ends the stream |
//! | `proxy_on_response_trailers` | the end of a response that has trailers (gRPC: every response) |
//! | `proxy_on_http_call_response`, `proxy_on_grpc_receive`, `proxy_on_grpc_close` | JWKS fetches, rate limit service calls |
//!
//! Not exported, so never entered: `proxy_on_log`, `proxy_on_done` and
//! `proxy_on_delete`, request bodies and trailers, gRPC metadata, queues,
//! foreign-function callbacks and TCP (network filter) callbacks.
//!
//! # The end of a stream
//!
//! A stream is forgotten (its breaker outcome recorded if still pending,
//! cache locks released, waits cancelled) when the response's last byte
//! passes: `end_of_stream` on the response headers or on a body frame, or
//! the response's trailers (Envoy enters the VM for those only when a
//! response has them). A stream whose end never passes through the filter
//! (the client or the upstream reset it) is found by the root's tick
//! ([`Contexts::sweep`]): `proxy_set_effective_context` fails for a
//! context Envoy has deleted. The sweep looks at a stream first after
//! [`FIRST_CHECK_NS`], then at doubling intervals up to [`MAX_CHECK_NS`],
//! so long-lived streams (websockets, long polls) cost one cheap host call
//! now and then. A stream found gone this way had no response through the
//! filter: for the breaker it was cancelled (it never counts; a probe is
//! given back); the counter `meshguard.streams_reset` counts them. A root context Envoy has deleted is found the same way,
//! when another root is configured.
use super::http::{Action, HttpStream};
use super::root::{self, Root};
use crate::host::abi::action;
use crate::host::proxy_wasm::{self as adapter, ProxyWasmHost};
use crate::host::IdHasher;
use crate::host::{Host, MetricId};
use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::BuildHasherDefault;

#[derive(Default)]
struct Contexts {
    /// Root contexts: one per configuration loaded into this VM (usually one).
    roots: Vec<Root>,
    streams: HashMap<u32, (HttpStream, Liveness), BuildHasherDefault<IdHasher>>,
    /// The earliest `check_at_ns` among the streams the sweep has seen:
    /// until then, and unless a stream was created since, a tick has
    /// nothing to sweep (the tick runs every 10 ms while streams wait, and
    /// a stream is first checked after 200 ms).
    sweep_due_ns: u64,
    /// A stream was created since the last sweep (it has no check time yet).
    unseen: bool,
}

/// When the sweep next asks the host whether a stream still exists.
#[derive(Default, Clone, Copy)]
struct Liveness {
    /// Zero until the first sweep that sees the stream (no clock reading
    /// per stream).
    check_at_ns: u64,
    wait_ns: u64,
}

/// The host's answer for a stream callback.
fn abi(a: Action) -> u32 {
    match a {
        Action::Continue => action::CONTINUE,
        Action::Pause => action::PAUSE,
    }
}

/// A stream is first checked this long after a sweep first saw it: most
/// requests are over by then, and their end was seen.
pub const FIRST_CHECK_NS: u64 = 200_000_000;
/// Longest wait between two checks of a stream still alive.
pub const MAX_CHECK_NS: u64 = 10_000_000_000;

thread_local! {
    static CONTEXTS: RefCell<Contexts> = RefCell::new(Contexts::default());
}

/// Runs `f` on the context table; `None` if it is busy (a re-entrant call,
/// which the host does not make: every host call that could call back is
/// deferred until the running callback returns).
fn with<R>(f: impl FnOnce(&mut Contexts) -> R) -> Option<R> {
    CONTEXTS.with(|c| c.try_borrow_mut().ok().map(|mut c| f(&mut c)))
}

impl Contexts {
    fn root(&mut self, id: u32) -> &mut Root {
        let i = match self.roots.iter().position(|r| r.context_id() == id) {
            Some(i) => i,
            None => {
                self.roots.push(Root::new(id));
                self.roots.len() - 1
            }
        };
        // In bounds: `i` was found in `roots`, or is the last index after the push.
        #[allow(clippy::indexing_slicing)]
        &mut self.roots[i]
    }

    /// Drops roots the host has deleted (no `proxy_on_delete` export):
    /// `proxy_set_effective_context` fails for a context that is gone.
    /// Leaves `current` effective.
    fn forget_deleted_roots(&mut self, current: u32) {
        if self.roots.len() < 2 {
            return;
        }
        let before = self.roots.len();
        self.roots.retain(|r| {
            r.context_id() == current || adapter::set_effective_context(r.context_id())
        });
        adapter::set_effective_context(current);
        let dropped = before - self.roots.len();
        if dropped > 0 {
            log::info!(
                "meshguard: forgot {dropped} configuration(s) Envoy has deleted ({} loaded in this VM)",
                self.roots.len()
            );
        }
    }

    /// After a response callback: the stream ends with the response's last
    /// byte, unless the filter paused it (it is sending its own response
    /// instead, whose end passes later).
    fn end_if_last(&mut self, context_id: u32, end_of_stream: bool, action: Action) {
        if end_of_stream && action == Action::Continue {
            if let Some((mut s, _)) = self.streams.remove(&context_id) {
                s.on_end(&ProxyWasmHost, true);
            }
        }
    }

    /// Forgets the streams Envoy has deleted without their end passing
    /// through the filter (see the module doc), counted on `reset`. Leaves
    /// `current` (the ticking root) effective.
    fn sweep(&mut self, current: u32, now_ns: u64, reset: MetricId) {
        if !self.unseen && now_ns < self.sweep_due_ns {
            return;
        }
        self.unseen = false;
        let mut due = u64::MAX;
        let mut asked = false;
        let mut gone = Vec::new();
        for (id, (_, l)) in self.streams.iter_mut() {
            if l.check_at_ns == 0 {
                l.wait_ns = FIRST_CHECK_NS;
                l.check_at_ns = now_ns.saturating_add(FIRST_CHECK_NS);
            } else if now_ns >= l.check_at_ns {
                asked = true;
                if !adapter::set_effective_context(*id) {
                    gone.push(*id);
                    continue;
                }
                l.wait_ns = l.wait_ns.saturating_mul(2).min(MAX_CHECK_NS);
                l.check_at_ns = now_ns.saturating_add(l.wait_ns);
            }
            due = due.min(l.check_at_ns);
        }
        self.sweep_due_ns = due;
        if asked {
            adapter::set_effective_context(current);
        }
        if !gone.is_empty() {
            ProxyWasmHost.increment_metric(reset, gone.len() as i64);
        }
        for id in gone {
            if let Some((mut s, _)) = self.streams.remove(&id) {
                s.on_end(&ProxyWasmHost, false);
            }
        }
    }
}

#[no_mangle]
pub extern "C" fn proxy_abi_version_0_2_1() {}

#[cfg(target_os = "wasi")]
extern "C" {
    fn __wasm_call_ctors();
}

/// The WASI reactor's entry point, called once when the VM starts.
#[no_mangle]
pub extern "C" fn _initialize() {
    // SAFETY: the linker's constructor function, called once, first.
    unsafe { __wasm_call_ctors() };
    adapter::init_logging();
}

#[no_mangle]
pub extern "C" fn proxy_on_vm_start(root_id: u32, _vm_configuration_size: usize) -> u32 {
    with(|c| c.root(root_id).on_vm_start()).unwrap_or(false) as u32
}

#[no_mangle]
pub extern "C" fn proxy_on_configure(root_id: u32, _configuration_size: usize) -> u32 {
    with(|c| {
        c.forget_deleted_roots(root_id);
        let bytes = adapter::plugin_configuration().unwrap_or_default();
        c.root(root_id).on_configure(&ProxyWasmHost, &bytes)
    })
    .unwrap_or(false) as u32
}

#[no_mangle]
pub extern "C" fn proxy_on_tick(root_id: u32) {
    with(|c| {
        let root = c.root(root_id);
        root.on_tick(&ProxyWasmHost);
        // (A root without a configuration has no streams of its own.)
        let reset = root
            .worker()
            .runtime
            .borrow()
            .as_ref()
            .map_or(MetricId::NONE, |rt| rt.streams_reset);
        if !c.streams.is_empty() {
            c.sweep(root_id, ProxyWasmHost.now_nanos(), reset);
        }
    });
}

#[no_mangle]
pub extern "C" fn proxy_on_context_create(context_id: u32, parent_id: u32) {
    with(|c| {
        if parent_id == 0 {
            c.root(context_id);
        } else {
            let stream = c.root(parent_id).new_stream(context_id);
            c.streams.insert(context_id, (stream, Liveness::default()));
            c.unseen = true;
        }
    });
}

#[no_mangle]
pub extern "C" fn proxy_on_request_headers(context_id: u32, _headers: usize, _eos: u32) -> u32 {
    with(|c| match c.streams.get_mut(&context_id) {
        Some((s, _)) => abi(s.on_request_headers(&ProxyWasmHost)),
        None => action::CONTINUE,
    })
    .unwrap_or(action::CONTINUE)
}

#[no_mangle]
pub extern "C" fn proxy_on_response_headers(context_id: u32, _headers: usize, eos: u32) -> u32 {
    with(|c| {
        let Some((s, _)) = c.streams.get_mut(&context_id) else {
            return action::CONTINUE;
        };
        let a = s.on_response_headers(&ProxyWasmHost, eos != 0);
        c.end_if_last(context_id, eos != 0, a);
        abi(a)
    })
    .unwrap_or(action::CONTINUE)
}

#[no_mangle]
pub extern "C" fn proxy_on_response_body(context_id: u32, body_size: usize, eos: u32) -> u32 {
    with(|c| {
        let Some((s, _)) = c.streams.get_mut(&context_id) else {
            return action::CONTINUE;
        };
        let a = s.on_response_body(&ProxyWasmHost, body_size, eos != 0);
        c.end_if_last(context_id, eos != 0, a);
        abi(a)
    })
    .unwrap_or(action::CONTINUE)
}

/// Trailers end the response (and the stream); they pass unchanged. A
/// gRPC call's breaker outcome may be in them (`grpc-status`).
#[no_mangle]
pub extern "C" fn proxy_on_response_trailers(context_id: u32, _trailers: usize) -> u32 {
    with(|c| {
        if let Some((s, _)) = c.streams.get_mut(&context_id) {
            s.on_response_trailers(&ProxyWasmHost);
        }
        c.end_if_last(context_id, true, Action::Continue)
    });
    action::CONTINUE
}

#[no_mangle]
pub extern "C" fn proxy_on_http_call_response(
    context_id: u32,
    token: u32,
    _headers: usize,
    body_size: usize,
    _trailers: usize,
) {
    with(|c| {
        if let Some(r) = c.roots.iter_mut().find(|r| r.context_id() == context_id) {
            r.on_http_call_response(&ProxyWasmHost, token, body_size);
        }
    });
}

/// A gRPC call's answer (unary: the one message).
#[no_mangle]
pub extern "C" fn proxy_on_grpc_receive(context_id: u32, token: u32, size: usize) {
    grpc_answer(context_id, token, 0, size);
}

/// A gRPC call's failure (or the end of a call already answered).
#[no_mangle]
pub extern "C" fn proxy_on_grpc_close(context_id: u32, token: u32, status: u32) {
    grpc_answer(context_id, token, status, 0);
}

fn grpc_answer(context_id: u32, token: u32, status: u32, size: usize) {
    with(|c| {
        let worker = match c.roots.iter().find(|r| r.context_id() == context_id) {
            Some(r) => r.worker(),
            None => match c.streams.get(&context_id) {
                Some((s, _)) => s.worker(),
                None => return,
            },
        };
        root::on_rls_response(&ProxyWasmHost, worker, token, status, size);
    });
}
