//! In-memory proxy for native tests of the filter: a [`FakeHost`] (shared
//! data, clock, metrics) plus the [`Stream`] port, with one record per
//! context (its request and response, local reply, resumptions) and the
//! calls sent to other services.
//!
//! Like Envoy, every per-stream call acts on the effective context: tests
//! make a stream's context effective (as Envoy does before its callback)
//! with [`FakeProxy::enter`]. Two `FakeProxy` built on clones of one
//! `FakeHost` are two worker VMs of one process: shared data, metrics and
//! clock are common, streams and calls are not.

use super::batch::MetricBatch;
use super::fake::FakeHost;
use super::header_map::{decode_pairs, HeaderMap};
use super::stream::Stream;
use super::{Host, HostError, MetricId, MetricKind, SetError, SharedValue};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::time::Duration;

/// A local reply the filter sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u32,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
    /// Sent with [`Stream::send_stored_response`] (a stored response),
    /// not as a local reply.
    pub stored: bool,
}

impl Reply {
    /// A header's value as text (the first one of that name).
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// What one context (a stream) holds in the fake proxy.
#[derive(Debug, Default, Clone)]
pub struct Context {
    pub request_headers: Vec<(String, Vec<u8>)>,
    pub response_headers: Vec<(String, Vec<u8>)>,
    pub response_trailers: Vec<(String, Vec<u8>)>,
    /// The response body chunk being delivered.
    pub response_body: Vec<u8>,
    /// Properties by path (segments joined with `.`).
    pub properties: HashMap<String, Vec<u8>>,
    /// Filter state the filter set, by key (without Envoy's `wasm.`).
    pub filter_state: HashMap<String, Vec<u8>>,
    /// Every local reply sent (the filter must send at most one).
    pub replies: Vec<Reply>,
    /// How many times the request was resumed.
    pub resumed: u32,
    /// Deleted by the host: it can no longer be made effective.
    pub gone: bool,
}

impl Context {
    fn header<'a>(list: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a Vec<u8>> {
        list.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// A request header's value as text, as the upstream would get it.
    pub fn request_header(&self, name: &str) -> Option<String> {
        Self::header(&self.request_headers, name).map(|v| String::from_utf8_lossy(v).into_owned())
    }

    /// A filter state value as text.
    pub fn filter_state(&self, key: &str) -> Option<String> {
        self.filter_state
            .get(key)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    /// Every value of a response header, as text, in order.
    pub fn response_header_values(&self, name: &str) -> Vec<String> {
        self.response_headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .collect()
    }
}

/// A call sent to another service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub token: u32,
    /// The context the call belongs to (its answer comes there).
    pub owner: u32,
    /// gRPC: `service/method`; HTTP: the cluster.
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub message: Vec<u8>,
    pub timeout: Duration,
}

/// The answer a call's callback reads: headers (HTTP calls), body, gRPC
/// status message.
type Answer = (Vec<(String, Vec<u8>)>, Vec<u8>, Option<String>);

/// See the module docs.
pub struct FakeProxy {
    pub host: FakeHost,
    batch: MetricBatch,
    effective: Cell<u32>,
    contexts: RefCell<HashMap<u32, Context>>,
    grpc_calls: RefCell<Vec<Call>>,
    http_calls: RefCell<Vec<Call>>,
    cancelled: RefCell<Vec<u32>>,
    next_token: Cell<u32>,
    /// When set, calls fail to dispatch with this error.
    refuse_calls: RefCell<Option<String>>,
    /// The answer being delivered to a call's callback.
    call_answer: RefCell<Answer>,
    tick: Cell<Duration>,
    /// Whether local replies are refused (a host that cannot send one).
    refuse_replies: Cell<bool>,
    /// What `batches_counters` answers (true, as proxy-wasm's host).
    pub batches: Cell<bool>,
}

impl FakeProxy {
    pub fn new(host: FakeHost) -> Self {
        FakeProxy {
            host,
            batch: MetricBatch::default(),
            batches: Cell::new(true),
            effective: Cell::new(0),
            contexts: RefCell::new(HashMap::new()),
            grpc_calls: RefCell::new(Vec::new()),
            http_calls: RefCell::new(Vec::new()),
            cancelled: RefCell::new(Vec::new()),
            next_token: Cell::new(1),
            refuse_calls: RefCell::new(None),
            call_answer: RefCell::new((Vec::new(), Vec::new(), None)),
            tick: Cell::new(Duration::ZERO),
            refuse_replies: Cell::new(false),
        }
    }

    /// Creates context `id` with these request headers (pseudo-headers
    /// included) and makes it effective, as Envoy does before a stream's
    /// first callback.
    pub fn open(&self, id: u32, request_headers: &[(&str, &str)]) {
        let ctx = Context {
            request_headers: request_headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                .collect(),
            ..Context::default()
        };
        self.contexts.borrow_mut().insert(id, ctx);
        self.effective.set(id);
    }

    /// Makes context `id` effective (the host entering one of its callbacks).
    pub fn enter(&self, id: u32) {
        self.effective.set(id);
    }

    /// Deletes a context (the client or the upstream reset the stream).
    pub fn delete(&self, id: u32) {
        if let Some(c) = self.contexts.borrow_mut().get_mut(&id) {
            c.gone = true;
        }
    }

    /// A copy of context `id`'s record.
    pub fn context(&self, id: u32) -> Context {
        self.contexts.borrow().get(&id).cloned().unwrap_or_default()
    }

    /// Edits context `id`'s record (a test playing the upstream).
    pub fn with_context<R>(&self, id: u32, f: impl FnOnce(&mut Context) -> R) -> R {
        let mut all = self.contexts.borrow_mut();
        f(all.entry(id).or_default())
    }

    /// Sets the response headers (and clears the trailers) of context `id`.
    pub fn set_response(&self, id: u32, headers: &[(&str, &str)]) {
        self.with_context(id, |c| {
            c.response_headers = headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                .collect();
            c.response_trailers.clear();
        });
    }

    /// Sets the response body chunk being delivered to context `id`.
    pub fn set_body_chunk(&self, id: u32, chunk: &[u8]) {
        self.with_context(id, |c| c.response_body = chunk.to_vec());
    }

    pub fn set_trailers(&self, id: u32, trailers: &[(&str, &str)]) {
        self.with_context(id, |c| {
            c.response_trailers = trailers
                .iter()
                .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                .collect();
        });
    }

    /// The gRPC calls sent so far.
    pub fn grpc_calls(&self) -> Vec<Call> {
        self.grpc_calls.borrow().clone()
    }

    /// The HTTP calls sent so far.
    pub fn http_calls(&self) -> Vec<Call> {
        self.http_calls.borrow().clone()
    }

    /// The calls cancelled so far.
    pub fn cancelled(&self) -> Vec<u32> {
        self.cancelled.borrow().clone()
    }

    /// Makes later calls fail to dispatch (`Some(reason)`), or succeed.
    pub fn refuse_calls(&self, reason: Option<&str>) {
        *self.refuse_calls.borrow_mut() = reason.map(str::to_string);
    }

    /// The answer the next call callback reads: headers (HTTP calls), body,
    /// and gRPC status message.
    pub fn set_call_answer(
        &self,
        headers: &[(&str, &str)],
        body: &[u8],
        grpc_message: Option<&str>,
    ) {
        *self.call_answer.borrow_mut() = (
            headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                .collect(),
            body.to_vec(),
            grpc_message.map(str::to_string),
        );
    }

    fn current<R>(&self, f: impl FnOnce(&mut Context) -> R) -> Option<R> {
        let mut all = self.contexts.borrow_mut();
        all.get_mut(&self.effective.get())
            .filter(|c| !c.gone)
            .map(f)
    }

    /// A reply recorded on the effective context (see [`Reply`]).
    fn reply(&self, status: u32, headers: &HeaderMap, body: &[u8], stored: bool) -> bool {
        if self.refuse_replies.get() {
            return false;
        }
        let headers = decode_pairs(&headers.finish()).unwrap_or_default();
        self.current(|c| {
            c.replies.push(Reply {
                status,
                headers,
                body: body.to_vec(),
                stored,
            })
        })
        .is_some()
    }

    fn token(&self) -> u32 {
        let t = self.next_token.get();
        self.next_token.set(t + 1);
        t
    }
}

fn set_in(list: &mut Vec<(String, Vec<u8>)>, name: &str, value: Option<&[u8]>) {
    list.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    if let Some(v) = value {
        list.push((name.to_string(), v.to_vec()));
    }
}

impl Stream for FakeProxy {
    fn request_headers_raw(&self) -> Option<Vec<u8>> {
        self.current(|c| HeaderMap::from_pairs(&c.request_headers).finish())
    }
    fn set_request_header(&self, name: &str, value: Option<&[u8]>) {
        self.current(|c| set_in(&mut c.request_headers, name, value));
    }
    fn response_headers(&self) -> Vec<(String, Vec<u8>)> {
        self.current(|c| c.response_headers.clone())
            .unwrap_or_default()
    }
    fn response_header(&self, name: &str) -> Option<Vec<u8>> {
        self.current(|c| Context::header(&c.response_headers, name).cloned())
            .flatten()
    }
    fn response_trailer(&self, name: &str) -> Option<Vec<u8>> {
        self.current(|c| Context::header(&c.response_trailers, name).cloned())
            .flatten()
    }
    fn set_response_header(&self, name: &str, value: &[u8]) {
        self.current(|c| set_in(&mut c.response_headers, name, Some(value)));
    }
    fn add_response_header(&self, name: &str, value: &[u8]) {
        self.current(|c| c.response_headers.push((name.to_string(), value.to_vec())));
    }
    fn response_body(&self, start: usize, size: usize) -> Option<Vec<u8>> {
        self.current(|c| {
            let end = start.saturating_add(size).min(c.response_body.len());
            c.response_body.get(start..end).map(<[u8]>::to_vec)
        })
        .flatten()
    }
    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        let key = path.join(".");
        self.current(|c| c.properties.get(&key).cloned()).flatten()
    }
    fn set_filter_state(&self, key: &str, value: &[u8]) -> bool {
        self.current(|c| c.filter_state.insert(key.to_string(), value.to_vec()))
            .is_some()
    }
    fn send_local_reply(&self, status: u32, headers: &HeaderMap, body: &[u8]) -> bool {
        self.reply(status, headers, body, false)
    }
    fn send_stored_response(
        &self,
        status: u32,
        headers: &HeaderMap,
        body: &[u8],
        _head_request: bool,
    ) -> bool {
        self.reply(status, headers, body, true)
    }
    fn resume_request(&self) {
        self.current(|c| c.resumed += 1);
    }
    fn set_effective_context(&self, context_id: u32) -> bool {
        let known = self
            .contexts
            .borrow()
            .get(&context_id)
            .is_none_or(|c| !c.gone);
        if known {
            self.effective.set(context_id);
        }
        known
    }
    fn set_tick_period(&self, period: Duration) {
        self.tick.set(period);
    }
    fn metric_batch(&self) -> &MetricBatch {
        &self.batch
    }
    fn batches_counters(&self) -> bool {
        self.batches.get()
    }
    fn dispatch_grpc_call_from(
        &self,
        owner_context: u32,
        current_context: u32,
        _grpc_service: &[u8],
        service: &str,
        method: &str,
        metadata: &[(&str, &[u8])],
        message: &[u8],
        timeout: Duration,
    ) -> Result<u32, HostError> {
        self.effective.set(current_context);
        if let Some(reason) = self.refuse_calls.borrow().clone() {
            return Err(HostError(reason));
        }
        let token = self.token();
        self.grpc_calls.borrow_mut().push(Call {
            token,
            owner: owner_context,
            target: format!("{service}/{method}"),
            headers: metadata
                .iter()
                .map(|(n, v)| (n.to_string(), String::from_utf8_lossy(v).into_owned()))
                .collect(),
            message: message.to_vec(),
            timeout,
        });
        Ok(token)
    }
    fn cancel_grpc_call(&self, token: u32) {
        self.cancelled.borrow_mut().push(token);
    }
    fn grpc_call_response_body(&self, size: usize) -> Option<Vec<u8>> {
        let a = self.call_answer.borrow();
        a.1.get(..size.min(a.1.len())).map(<[u8]>::to_vec)
    }
    fn grpc_status_message(&self) -> Option<String> {
        self.call_answer.borrow().2.clone()
    }
    fn dispatch_http_call(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<u32, HostError> {
        if let Some(reason) = self.refuse_calls.borrow().clone() {
            return Err(HostError(reason));
        }
        let token = self.token();
        self.http_calls.borrow_mut().push(Call {
            token,
            owner: self.effective.get(),
            target: cluster.to_string(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            message: body.unwrap_or_default().to_vec(),
            timeout,
        });
        Ok(token)
    }
    fn http_call_response_headers(&self) -> Vec<(String, Vec<u8>)> {
        self.call_answer.borrow().0.clone()
    }
    fn http_call_response_body(&self, size: usize) -> Option<Vec<u8>> {
        let a = self.call_answer.borrow();
        a.1.get(..size.min(a.1.len())).map(<[u8]>::to_vec)
    }
}

impl Host for FakeProxy {
    fn now_nanos(&self) -> u64 {
        self.host.now_nanos()
    }
    fn shared_get(&self, key: &str) -> Result<SharedValue, HostError> {
        self.host.shared_get(key)
    }
    fn shared_set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SetError> {
        self.host.shared_set(key, value, cas)
    }
    fn random_bytes(&self, buf: &mut [u8]) -> Result<(), HostError> {
        self.host.random_bytes(buf)
    }
    fn define_metric(&self, kind: MetricKind, name: &str) -> Result<MetricId, HostError> {
        self.host.define_metric(kind, name)
    }
    fn increment_metric(&self, id: MetricId, delta: i64) {
        self.host.increment_metric(id, delta)
    }
    fn record_metric(&self, id: MetricId, value: u64) {
        self.host.record_metric(id, value)
    }
    fn call_foreign(&self, name: &str, args: &[u8]) -> Result<Option<Vec<u8>>, HostError> {
        self.host.call_foreign(name, args)
    }
}
