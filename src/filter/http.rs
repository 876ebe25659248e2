//! One HTTP stream: reads the request once, runs the pipeline, maps its
//! steps to the callbacks' answers ([`Action`]). The state of a stream
//! that waits or whose response needs it lives in an `Rc<RefCell<_>>` so
//! the root's timer can resume a parked stream; every borrow is a
//! `try_borrow_mut` (a re-entrant host callback must never panic). A
//! request that goes straight upstream with nothing for the response side
//! keeps its state on the stack.

use super::pipeline;
use super::runtime::Runtime;
use super::state::{self, Step, StreamState};
use super::worker::Worker;
use crate::host::header_map::HeaderMap;
use crate::host::{Host, Stream};
use crate::plan::Observability;
use crate::request::path::PathError;
use crate::request::{ip, spare, Headers, Request};
use std::cell::RefCell;
use std::rc::Rc;

/// What a stream callback answers the host (`dispatch` turns it into the
/// ABI's action value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Continue,
    Pause,
}

pub struct HttpStream {
    context_id: u32,
    runtime: Option<Rc<Runtime>>,
    worker: Rc<Worker>,
    state: Option<Rc<RefCell<StreamState>>>,
    /// Response headers to add, for a stream whose state was released
    /// because the response side had nothing else to do.
    headers_only: Option<ResponseHeaders>,
}

/// What a released stream still adds to the response: the rate-limit
/// headers (route index, values), meshguard's other headers, the rate
/// limit service's.
struct ResponseHeaders {
    rl: Option<(usize, crate::ratelimit::HeaderValues)>,
    own: Vec<(&'static str, String)>,
    service: Vec<(String, String)>,
}

impl HttpStream {
    pub fn new(context_id: u32, runtime: Option<Rc<Runtime>>, worker: Rc<Worker>) -> Self {
        HttpStream {
            context_id,
            runtime,
            worker,
            state: None,
            headers_only: None,
        }
    }

    /// The request went upstream and the response side has nothing to do
    /// but add headers: keeps those, the caller drops the state.
    fn keep_response_headers(&mut self, s: &mut StreamState) {
        if s.rl_headers.is_some() || !s.response_headers.is_empty() || !s.service_headers.is_empty()
        {
            self.headers_only = Some(ResponseHeaders {
                rl: s.rl_headers.map(|v| (s.route, v)),
                own: std::mem::take(&mut s.response_headers),
                service: std::mem::take(&mut s.service_headers),
            });
        }
    }
}

/// Reads the request headers once: pseudo-headers into fields, the others
/// indexed (`request::Headers`): in place from the host's buffers when it
/// can (`Stream::visit_request_headers`), else left in the host's
/// serialized map. A malformed buffer reads as no headers at all.
fn read_request(io: &impl Stream) -> Request {
    let mut req = spare::take();
    if io.visit_request_headers(&mut req) {
        return req;
    }
    let Some(raw) = io.request_headers_raw() else {
        return req;
    };
    req.headers = Headers::from_serialized(raw, |name, value| req.set_pseudo(name, value));
    req
}

/// Refuses a request whose path cannot be normalised (400, a short JSON
/// body; see `request::path`); a gRPC call gets `INVALID_ARGUMENT`.
fn reject_path(io: &impl Stream, e: PathError, req: &Request, obs: &Observability) {
    let body = serde_json::json!({"error": "invalid_path", "error_description": e.reason()});
    let ct = req.header("content-type");
    let (status, mut map, body) = match crate::grpc::Kind::of(ct) {
        Some(kind) => {
            let message = format!("invalid_path: {}", e.reason());
            let code = crate::grpc::Code::INVALID_ARGUMENT;
            let (map, body) = state::grpc_reply(kind, ct, code, &message, &[]);
            (200, map, body)
        }
        None => {
            let mut map = HeaderMap::with_capacity(1, 32);
            map.add(b"content-type", b"application/json");
            (400, map, body.to_string().into_bytes())
        }
    };
    if obs.proxy_status {
        map.add(
            b"proxy-status",
            b"meshguard; error=http_request_error; details=\"path invalid_path\"",
        );
    }
    if obs.filter_state {
        io.set_filter_state(
            state::FILTER_STATE_KEY,
            b"route=- decision=denied policy=path reason=invalid_path",
        );
    }
    if !io.send_local_reply(status, &map, &body) {
        log::warn!("meshguard: the host refused a local {status} reply");
    }
}

/// What the request headers' callback does before any policy runs: strips
/// clients' copies of claim headers, normalises the path (a path that
/// cannot be normalised is refused here), picks the route and reads what
/// its policies need (the path folded, the peer's address). `Ok`: the
/// index of a route with a policy; `Err`: the callback's answer, nothing
/// more to do for this request.
fn prepare<P: Host + Stream>(px: &P, rt: &Runtime, req: &mut Request) -> Result<usize, Action> {
    let config = &rt.config;
    // A client's own copy of a header meshguard sets from verified
    // claims, in any spelling, on every request: the upstream must
    // never take one for a verified identity.
    if !config.claim_headers.is_empty() {
        let injected = crate::jwt::injected_claim_headers(&config.claim_headers, req);
        if !injected.is_empty() {
            for name in &injected {
                px.remove_request_header(name);
            }
            req.headers
                .remove_where(|n| injected.iter().any(|i| i.as_bytes() == n));
            px.increment_metric(rt.claim_headers_removed, 1);
        }
    }
    if config.routes.is_empty() {
        return Err(Action::Continue);
    }
    // Routes match, and keys read, one spelling of the path.
    if let Some(slashes) = config.path_normalization {
        if let Err(e) = req.normalize_path(slashes) {
            px.increment_metric(rt.path_rejected, 1);
            reject_path(px, e, req, &config.observability);
            return Err(Action::Pause);
        }
    }
    let Some((idx, route)) = config.route_index.find(&config.routes, req, |r| &r.matcher) else {
        return Err(Action::Continue);
    };
    if !route.has_policy() {
        return Err(Action::Continue);
    }
    if route.matcher.ignores_case() {
        req.fold_path_case();
    }
    if rt.route(idx).is_some_and(|r| r.needs_peer_ip) {
        req.peer_ip = px
            .property_str(&["source", "address"])
            .map(|a| ip::canonical(&a, rt.limiter.client_ip.ipv6_prefix))
            .unwrap_or_default();
    }
    Ok(idx)
}

/// The host's callbacks of a stream (`dispatch` routes them here).
impl HttpStream {
    pub fn worker(&self) -> &Worker {
        &self.worker
    }

    pub fn on_request_headers<P: Host + Stream>(&mut self, px: &P) -> Action {
        let Some(rt) = self.runtime.clone() else {
            return Action::Continue;
        };
        let config = &rt.config;
        if config.routes.is_empty() && config.claim_headers.is_empty() {
            return Action::Continue;
        }
        let mut req = read_request(px);
        let idx = match prepare(px, &rt, &mut req) {
            Ok(idx) => idx,
            Err(a) => {
                // Nothing of the request is kept: its buffers serve the next.
                spare::give(req);
                return a;
            }
        };
        // The state lives on the stack for the first pass: most requests
        // (admitted by a local limit, a verified token) go upstream with
        // nothing left for the response side, and then it never reaches
        // the heap. It moves into an `Rc` only when the stream waits (a
        // park, the rate limit service), replied, or its response needs it.
        let mut s = StreamState::new(self.context_id, rt, idx, req);
        let step = pipeline::run(&mut s, &self.worker, px);
        if step == Step::Continue && !s.needs_response_side() {
            self.keep_response_headers(&mut s);
            return Action::Continue;
        }
        let state = Rc::new(RefCell::new(s));
        self.state = Some(state.clone());
        self.worker.settle(px, self.context_id, state, step, false);
        if step != Step::Continue {
            return Action::Pause;
        }
        Action::Continue
    }

    pub fn on_response_headers<P: Host + Stream>(&mut self, px: &P, end_of_stream: bool) -> Action {
        if let Some(h) = self.headers_only.take() {
            let rt = self.runtime.as_deref();
            let rl =
                h.rl.and_then(|(route, v)| Some((v, rt?.config.routes.get(route)?)));
            pipeline::add_response_headers(px, rl, &h.own, &h.service);
            return Action::Continue;
        }
        let Some(state) = &self.state else {
            return Action::Continue;
        };
        let Ok(mut s) = state.try_borrow_mut() else {
            return Action::Continue;
        };
        if s.local_reply {
            return Action::Continue;
        }
        pipeline::usage_headers(&mut s, &self.worker, px, end_of_stream);
        if pipeline::on_response_headers(&mut s, px, end_of_stream) {
            // The cache's full request: its answer comes to the root.
            if let Some(token) = s.refetch_token {
                self.worker
                    .await_refetch(token, self.context_id, state.clone());
            }
            return Action::Pause;
        }
        Action::Continue
    }

    pub fn on_response_body<P: Host + Stream>(
        &mut self,
        px: &P,
        body_size: usize,
        end_of_stream: bool,
    ) -> Action {
        if let Some(state) = &self.state {
            if let Ok(mut s) = state.try_borrow_mut() {
                if !s.local_reply {
                    pipeline::usage_body(&mut s, &self.worker, px, body_size, end_of_stream);
                    pipeline::on_response_body(&mut s, px, body_size, end_of_stream);
                }
            }
        }
        Action::Continue
    }

    /// Whether the stream has nothing left to do: its request went on
    /// with no state kept and no headers to add, so the response
    /// callbacks do nothing and its end only looks for a park it is not
    /// in (`on_end`). A runtime may then skip the response callbacks and
    /// the end (the native module does; a reset is still counted).
    #[cfg_attr(not(any(test, feature = "native")), allow(dead_code))]
    pub fn is_idle(&self) -> bool {
        self.state.is_none() && self.headers_only.is_none()
    }

    /// Whether `on_response_body` has anything to do with this stream (a
    /// usage meter or a cache fill reads the body): a runtime that must
    /// work to learn a body's size (the native module) asks first.
    #[cfg_attr(not(any(test, feature = "native")), allow(dead_code))]
    pub fn needs_response_body(&self) -> bool {
        self.state.as_ref().is_some_and(|state| {
            state
                .try_borrow()
                .is_ok_and(|s| !s.local_reply && (s.usage.is_some() || s.capture.is_some()))
        })
    }

    /// Response trailers: a gRPC call's outcome may wait for them.
    pub fn on_response_trailers<P: Host + Stream>(&mut self, px: &P) {
        if let Some(state) = &self.state {
            if let Ok(mut s) = state.try_borrow_mut() {
                if !s.local_reply {
                    pipeline::on_response_trailers(&mut s, px);
                }
            }
        }
    }

    /// The stream is over: `seen` when its response's end passed through
    /// the filter, false when the sweep found it deleted by Envoy (reset,
    /// or ended past the filter; see `dispatch`).
    pub fn on_end<P: Host + Stream>(&mut self, px: &P, seen: bool) {
        self.worker.unpark(self.context_id);
        if let Some(state) = &self.state {
            if let Ok(mut s) = state.try_borrow_mut() {
                if let Some(token) = s.rls_token.take() {
                    self.worker.forget_rls(token);
                }
                pipeline::settle_usage(&mut s, &self.worker, px);
                if let Some(token) = s.refetch_token.take() {
                    self.worker.forget_refetch(token);
                }
                pipeline::on_stream_end(&mut s, px, seen);
            }
        }
    }
}
