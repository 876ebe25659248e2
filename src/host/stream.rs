//! The stream port: everything the filter does with the proxy besides what
//! [`Host`](super::Host) covers. A stream's request and response (headers,
//! trailers, body chunks), its local reply, its resumption and properties;
//! and the calls a worker makes on its streams' behalf (which context is
//! effective, the root's tick, calls to other services and their answers).
//!
//! Every per-stream call acts on the host's effective context: the stream
//! whose callback is running, or the one made effective with
//! [`Stream::set_effective_context`] (the root resuming a parked stream).
//!
//! `proxy_wasm.rs` implements it for Envoy; `fake_stream.rs` is an
//! in-memory proxy for native tests of the filter.

use super::batch::MetricBatch;
use super::header_map::HeaderMap;
use super::HostError;
use std::time::Duration;

/// What [`Stream::visit_request_headers`] hands the headers to.
pub trait HeaderVisitor {
    /// Room for `count` fields of `bytes` bytes of names and values.
    fn reserve(&mut self, count: usize, bytes: usize);
    /// One field, as the host holds it (names lower case, not checked).
    fn pair(&mut self, name: &[u8], value: &[u8]);
    /// One field whose value the host already knows to be UTF-8 (an
    /// ASCII check of the bytes it holds): a reader keeping the value as
    /// text need not check it again. The same field as [`Self::pair`]
    /// otherwise.
    fn pair_text(&mut self, name: &[u8], value: &str) {
        self.pair(name, value.as_bytes());
    }
}

/// See the module docs.
pub trait Stream {
    // ----------------------------------------------------------- request
    /// The request headers as the host serialized them (one call), for
    /// [`super::header_map::visit_pairs`]; `None` when the host gives none.
    fn request_headers_raw(&self) -> Option<Vec<u8>>;
    /// The request headers read in place from the host's own buffers, in
    /// order, pseudo-headers included: `v.reserve` once with the count
    /// and the bytes of names and values of the fields other than
    /// pseudo-headers (which readers keep apart), then `v.pair` for each
    /// field, pseudo-headers too. False
    /// (nothing visited) when the host has no such access: the reader then
    /// takes [`Stream::request_headers_raw`]. A host that can (the native
    /// module) saves building a serialized map only to index it again.
    fn visit_request_headers(&self, v: &mut dyn HeaderVisitor) -> bool {
        let _ = v;
        false
    }
    /// Sets (replaces) a request header; `None` removes it.
    fn set_request_header(&self, name: &str, value: Option<&[u8]>);
    fn remove_request_header(&self, name: &str) {
        self.set_request_header(name, None);
    }

    // ---------------------------------------------------------- response
    fn response_headers(&self) -> Vec<(String, Vec<u8>)>;
    fn response_header(&self, name: &str) -> Option<Vec<u8>>;
    /// A response trailer's value (read for gRPC calls' `grpc-status`).
    fn response_trailer(&self, name: &str) -> Option<Vec<u8>>;
    fn set_response_header(&self, name: &str, value: &[u8]);
    fn add_response_header(&self, name: &str, value: &[u8]);
    /// `size` bytes of the response body chunk being delivered, from `start`.
    fn response_body(&self, start: usize, size: usize) -> Option<Vec<u8>>;

    // ------------------------------------------------------------ stream
    /// A property (e.g. `["source", "address"]`) as bytes.
    fn property(&self, path: &[&str]) -> Option<Vec<u8>>;
    /// A property as UTF-8 text.
    fn property_str(&self, path: &[&str]) -> Option<String> {
        self.property(path).and_then(|b| String::from_utf8(b).ok())
    }
    /// A property the host serialises as a little-endian integer.
    fn property_u64(&self, path: &[&str]) -> Option<u64> {
        let b = self.property(path)?;
        let mut a = [0u8; 8];
        for (d, s) in a.iter_mut().zip(&b) {
            *d = *s;
        }
        Some(u64::from_le_bytes(a))
    }
    /// Sets a value in the stream's filter state, where Envoy's access
    /// logs (`%FILTER_STATE(wasm.<key>:PLAIN)%`), its RBAC filter
    /// (`filter_state` matcher, key `wasm.<key>`) and later filters read
    /// it (Envoy prefixes the key with `wasm.`). False when the host
    /// refused it.
    fn set_filter_state(&self, key: &str, value: &[u8]) -> bool;
    /// Sends a local reply; false if the host refused it.
    fn send_local_reply(&self, status: u32, headers: &HeaderMap, body: &[u8]) -> bool;
    /// Sends a stored response (a cache hit, while the request has not
    /// gone upstream) as the origin's response rather than as a local
    /// reply: a host that can encode a response itself does (Envoy's
    /// dynamic modules: no local-reply processing, no `content-type`
    /// added, `Content-Length` from `body`); `head_request`: the headers
    /// only, `Content-Length` still the body's. The default is
    /// [`Stream::send_local_reply`] (proxy-wasm has nothing else; Envoy's
    /// local reply drops a HEAD request's body itself). False if the
    /// host refused it.
    fn send_stored_response(
        &self,
        status: u32,
        headers: &HeaderMap,
        body: &[u8],
        head_request: bool,
    ) -> bool {
        let _ = head_request;
        self.send_local_reply(status, headers, body)
    }
    /// Lets a paused request go on.
    fn resume_request(&self);

    // ------------------------------------------------------------ worker
    /// Makes `context_id` the context later calls act on. False when that
    /// context no longer exists.
    fn set_effective_context(&self, context_id: u32) -> bool;
    /// Sets the root context's tick period.
    fn set_tick_period(&self, period: Duration);
    /// The VM's counter batch (see `host::batch`), shared by all its
    /// contexts: metric ids belong to the VM.
    fn metric_batch(&self) -> &MetricBatch;
    /// Whether a request's counter increments should go through
    /// [`Stream::metric_batch`] (when `metrics_flush_interval` is not
    /// "0s"): true where each increment crosses out of a VM; a host whose
    /// increments are plain calls (the native module) answers false, and
    /// they go straight to it.
    fn batches_counters(&self) -> bool {
        true
    }

    // ------------------------------------------------------------- calls
    /// Sends a unary gRPC call owned by `owner_context` (the host keeps the
    /// call and its answer there), then makes `current_context` effective
    /// again; returns the call's token. `metadata`: the call's initial
    /// metadata (trace headers).
    #[allow(clippy::too_many_arguments)]
    fn dispatch_grpc_call_from(
        &self,
        owner_context: u32,
        current_context: u32,
        grpc_service: &[u8],
        service: &str,
        method: &str,
        metadata: &[(&str, &[u8])],
        message: &[u8],
        timeout: Duration,
    ) -> Result<u32, HostError>;
    /// Cancels an outstanding gRPC call (unknown tokens are ignored).
    fn cancel_grpc_call(&self, token: u32);
    /// The body of the gRPC answer being delivered (in its callback).
    fn grpc_call_response_body(&self, size: usize) -> Option<Vec<u8>>;
    /// The message of the gRPC status being delivered (in its callback).
    fn grpc_status_message(&self) -> Option<String>;
    /// Sends an HTTP call to a cluster; returns its token.
    fn dispatch_http_call(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<u32, HostError>;
    /// The headers of the HTTP answer being delivered (in its callback).
    fn http_call_response_headers(&self) -> Vec<(String, Vec<u8>)>;
    /// The body of the HTTP answer being delivered (in its callback).
    fn http_call_response_body(&self, size: usize) -> Option<Vec<u8>>;
}
