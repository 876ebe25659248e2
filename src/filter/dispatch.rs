//! The module's exports: the proxy-wasm ABI 0.2.1 callbacks meshguard
//! handles, and the table of live contexts they are routed to.
//!
//! Only what meshguard uses is exported (see `host/abi.rs` for why this is
//! not the Rust SDK's dispatcher): Envoy enters the VM only for exported
//! callbacks, so every callback left out is one VM entry less per request.
//!
//! | callback | for |
//! |---|---|
//! | `proxy_on_vm_start`, `proxy_on_configure`, `proxy_on_tick` | root contexts |
//! | `proxy_on_context_create` | a stream's root (a VM can hold several configurations) |
//! | `proxy_on_request_headers`, `proxy_on_response_headers`, `proxy_on_response_body` | the pipeline |
//! | `proxy_on_log` | the stream's end (breaker outcome of resets, cleanup) |
//! | `proxy_on_http_call_response`, `proxy_on_grpc_receive`, `proxy_on_grpc_close` | JWKS fetches, rate limit service calls |
//!
//! Not exported, so never entered: `proxy_on_done` and `proxy_on_delete`
//! (a stream is forgotten at `proxy_on_log`, which Envoy calls once at the
//! end of every stream it created a context for; a root context that Envoy
//! has deleted is found and dropped when another root is configured, by
//! `proxy_set_effective_context` failing for it), request bodies and
//! trailers, response trailers, gRPC metadata, queues, foreign-function
//! callbacks and TCP (network filter) callbacks.

use super::http::Stream;
use super::root::Root;
use crate::host::abi::action;
use crate::host::proxy_wasm as adapter;
use crate::host::IdHasher;
use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::BuildHasherDefault;

#[derive(Default)]
struct Contexts {
    /// Root contexts: one per configuration loaded into this VM (usually one).
    roots: Vec<Root>,
    streams: HashMap<u32, Stream, BuildHasherDefault<IdHasher>>,
}

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
        c.root(root_id).on_configure()
    })
    .unwrap_or(false) as u32
}

#[no_mangle]
pub extern "C" fn proxy_on_tick(root_id: u32) {
    with(|c| c.root(root_id).on_tick());
}

#[no_mangle]
pub extern "C" fn proxy_on_context_create(context_id: u32, parent_id: u32) {
    with(|c| {
        if parent_id == 0 {
            c.root(context_id);
        } else {
            let stream = c.root(parent_id).new_stream(context_id);
            c.streams.insert(context_id, stream);
        }
    });
}

#[no_mangle]
pub extern "C" fn proxy_on_request_headers(context_id: u32, _headers: usize, _eos: u32) -> u32 {
    with(|c| match c.streams.get_mut(&context_id) {
        Some(s) => s.on_request_headers(),
        None => action::CONTINUE,
    })
    .unwrap_or(action::CONTINUE)
}

#[no_mangle]
pub extern "C" fn proxy_on_response_headers(context_id: u32, _headers: usize, eos: u32) -> u32 {
    with(|c| match c.streams.get_mut(&context_id) {
        Some(s) => s.on_response_headers(eos != 0),
        None => action::CONTINUE,
    })
    .unwrap_or(action::CONTINUE)
}

#[no_mangle]
pub extern "C" fn proxy_on_response_body(context_id: u32, body_size: usize, eos: u32) -> u32 {
    with(|c| match c.streams.get_mut(&context_id) {
        Some(s) => s.on_response_body(body_size, eos != 0),
        None => action::CONTINUE,
    })
    .unwrap_or(action::CONTINUE)
}

#[no_mangle]
pub extern "C" fn proxy_on_log(context_id: u32) {
    with(|c| {
        if let Some(mut s) = c.streams.remove(&context_id) {
            s.on_log();
        }
    });
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
            r.on_http_call_response(token, body_size);
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
                Some(s) => s.worker(),
                None => return,
            },
        };
        worker.on_rls_response(token, status, size);
    });
}
