//! What one stream carries between callbacks ([`StreamState`]), where its
//! request stands ([`Stage`]), what a pass over its stages asks for next
//! ([`Step`]), and its local replies (at most one per stream).

use super::runtime::Runtime;
use crate::breaker;
use crate::cache::MissContext;
use crate::grpc;
use crate::host::header_map::HeaderMap;
use crate::host::Stream;
use crate::ratelimit::{self, rls};
use crate::request::Request;
use std::rc::Rc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Jwt,
    RateLimit,
    /// Global limits: the call to the rate limit service, its wait, its
    /// verdict.
    GlobalRateLimit,
    Cache,
    Breaker,
    Upstream,
}

/// What the callback should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Continue,
    Replied,
    Park,
    /// Paused until the rate limit service answers call `token` (or its
    /// deadline passes): the caller hands the stream to
    /// `Worker::await_rls`.
    AwaitRls {
        token: u32,
        deadline_ns: u64,
    },
}

/// A request the breaker let through, until its outcome is recorded.
pub struct BreakerTicket {
    /// The breaker key when it is not the route's name (`"scope":
    /// "upstream"`: the cluster); `None` (no copy per request) for the route.
    pub key: Option<String>,
    /// Whether it is a probe, and of which HALF_OPEN round.
    pub probe: breaker::ProbeTicket,
    pub started_ns: u64,
    /// A gRPC call whose response headers (HTTP 200, no `grpc-status`)
    /// passed: its outcome waits for the trailers. The time those headers
    /// took (what `slow_call` judges; 0 without `slow_call`).
    pub grpc_headers_elapsed_ns: Option<u64>,
}

/// A response being copied into the cache as it streams through.
pub struct Capture {
    pub body: Vec<u8>,
    pub max_body: usize,
    pub status: u32,
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Everything one stream carries between callbacks.
pub struct StreamState {
    /// The stream's context id in the host.
    pub context_id: u32,
    pub rt: Rc<Runtime>,
    pub route: usize,
    pub req: Request,
    pub stage: Stage,
    pub claims: Option<std::sync::Arc<crate::jwt::claims::Claims>>,
    /// Set once meshguard answered the request itself.
    pub local_reply: bool,
    /// Headers to add to the upstream's response.
    pub response_headers: Vec<(&'static str, String)>,
    /// The rate-limit headers of a request the local limits admitted (on
    /// routes without global limits), kept as numbers and written before
    /// `response_headers`.
    pub rl_headers: Option<ratelimit::HeaderValues>,
    pub breaker: Option<BreakerTicket>,
    pub cache: Option<MissContext>,
    /// The response being copied for the cache.
    pub capture: Option<Capture>,
    /// Deadline of the current park (0: not parked yet).
    pub park_deadline_ns: u64,
    /// A request waiting for another one's cache fill: the cache is not
    /// looked at again before this time (its `Lookup::Wait` hint).
    pub cache_retry_at_ns: u64,
    /// Local rate-limit tokens taken, kept while the global limits are
    /// decided (given back if the service refuses).
    pub rl_admitted: Option<ratelimit::Admitted>,
    /// The outstanding call to the rate limit service, and its deadline.
    pub rls_token: Option<u32>,
    pub rls_sent_ns: u64,
    pub rls_deadline_ns: u64,
    /// Its outcome: the answer's bytes, or why there is none.
    pub rls_result: Option<Result<Vec<u8>, rls::CallError>>,
    /// Headers the rate limit service asked to add to the response.
    pub service_headers: Vec<(String, String)>,
}

impl StreamState {
    pub fn new(context_id: u32, rt: Rc<Runtime>, route: usize, req: Request) -> Self {
        StreamState {
            context_id,
            rt,
            route,
            req,
            stage: Stage::Jwt,
            claims: None,
            local_reply: false,
            response_headers: Vec::new(),
            rl_headers: None,
            breaker: None,
            cache: None,
            capture: None,
            park_deadline_ns: 0,
            cache_retry_at_ns: 0,
            rl_admitted: None,
            rls_token: None,
            rls_sent_ns: 0,
            rls_deadline_ns: 0,
            rls_result: None,
            service_headers: Vec::new(),
        }
    }

    /// Sends a local reply (once per stream) with the rate-limit headers
    /// gathered so far.
    pub fn reply(
        &mut self,
        io: &impl Stream,
        status: u32,
        extra: &[(&str, &str)],
        body: &[u8],
    ) -> Step {
        let mut map = HeaderMap::with_capacity(extra.len() + 4, 256);
        for (n, v) in extra {
            map.add(n.as_bytes(), v.as_bytes());
        }
        self.reply_map(io, status, map, body)
    }

    /// [`StreamState::reply`] with the reply's own headers already in a
    /// [`HeaderMap`] (a cached response's, as stored bytes); the rate-limit
    /// headers and meshguard's other response headers follow them.
    pub fn reply_map(
        &mut self,
        io: &impl Stream,
        status: u32,
        mut map: HeaderMap,
        body: &[u8],
    ) -> Step {
        if !self.local_reply {
            self.local_reply = true;
            if let (Some(v), Some(route)) = (self.rl_headers, self.rt.config.routes.get(self.route))
            {
                v.for_each(&route.rate_limits, |n, b| map.add(n.as_bytes(), b));
            }
            for (n, v) in &self.response_headers {
                map.add(n.as_bytes(), v.as_bytes());
            }
            for (n, v) in &self.service_headers {
                map.add(n.as_bytes(), v.as_bytes());
            }
            if !io.send_local_reply(status, &map, body) {
                log::warn!("meshguard: the host refused a local {status} reply");
            }
        }
        Step::Replied
    }

    /// How the request speaks gRPC, if it does (read from the request's
    /// headers when a reply or an outcome needs it, not per request).
    pub fn grpc_kind(&self) -> Option<grpc::Kind> {
        grpc::Kind::of(self.req.header("content-type"))
    }

    /// One of meshguard's refusals: over HTTP, `status` with a JSON body;
    /// to a gRPC or gRPC-Web call, the same refusal as a trailers-only
    /// gRPC status ([`grpc_reply`]).
    pub fn json_reply(
        &mut self,
        io: &impl Stream,
        status: u32,
        extra: &[(&str, &str)],
        body: &str,
    ) -> Step {
        if let Some(kind) = self.grpc_kind() {
            let rate_limited = self
                .rt
                .config
                .routes
                .get(self.route)
                .map_or(grpc::Code::RESOURCE_EXHAUSTED, |r| r.rate_limit_grpc_status);
            let code = grpc::Code::for_reply(status, rate_limited);
            let message = grpc::message_from_json(body);
            let (map, body) =
                grpc_reply(kind, self.req.header("content-type"), code, &message, extra);
            return self.reply_map(io, 200, map, &body);
        }
        let mut h = vec![("content-type", "application/json")];
        h.extend_from_slice(extra);
        self.reply(io, status, &h, body.as_bytes())
    }

    /// Starts (at the first park) or checks the current park's deadline:
    /// true while it has not passed.
    pub fn park_until(&mut self, now: u64, wait_ns: u64) -> bool {
        if self.park_deadline_ns == 0 {
            self.park_deadline_ns = now.saturating_add(wait_ns);
        }
        now < self.park_deadline_ns
    }

    /// After the request stages let a request go upstream: whether the
    /// response side has anything to do besides adding headers (a breaker
    /// outcome to record, a cache entry to fill or release, a call to
    /// forget). When not, the stream keeps only its headers to add and
    /// drops the rest at once: the response callbacks and the end of the
    /// stream then cost nothing (measured: ~1-2 us per request).
    pub fn needs_response_side(&self) -> bool {
        self.breaker.is_some()
            || self.cache.is_some()
            || self.capture.is_some()
            || self.rls_token.is_some()
            || self.local_reply
    }
}

/// A gRPC (or gRPC-Web) reply, sent with HTTP status 200: its headers and
/// body. Headers: `content-type` (`application/grpc`, or the request's
/// gRPC-Web type), `grpc-status`, the percent-encoded `grpc-message`, then
/// the headers the HTTP reply would carry (`extra`: `www-authenticate`,
/// `retry-after`...; their `content-type` is dropped). With a
/// `retry-after`, `grpc-retry-pushback-ms` says the same to gRPC retry
/// policies (a client configured to retry that code waits that long).
/// Body: none for gRPC (trailers-only), the same status as a trailers
/// frame for gRPC-Web (see `grpc`).
pub fn grpc_reply(
    kind: grpc::Kind,
    request_content_type: Option<&[u8]>,
    code: grpc::Code,
    message: &str,
    extra: &[(&str, &str)],
) -> (HeaderMap, Vec<u8>) {
    let mut map = HeaderMap::with_capacity(extra.len() + 8, 256);
    map.add(
        b"content-type",
        kind.reply_content_type(request_content_type),
    );
    let message = grpc::encode_message(message);
    map.add(b"grpc-status", code.header_value().as_bytes());
    map.add(b"grpc-message", message.as_bytes());
    for (n, v) in extra {
        if n.eq_ignore_ascii_case("content-type") {
            continue;
        }
        map.add(n.as_bytes(), v.as_bytes());
        if n.eq_ignore_ascii_case("retry-after") {
            if let Ok(secs) = v.parse::<u64>() {
                let ms = secs.saturating_mul(1000).to_string();
                map.add(b"grpc-retry-pushback-ms", ms.as_bytes());
            }
        }
    }
    let body = match kind {
        grpc::Kind::Grpc => Vec::new(),
        grpc::Kind::GrpcWeb { text } => grpc::web_trailers_frame(code, &message, text),
    };
    (map, body)
}
