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

/// The filter state key of the verdict line (`wasm.meshguard` in Envoy).
pub const FILTER_STATE_KEY: &str = "meshguard";
/// The prefix of published claims' keys (`wasm.meshguard.claim.<name>`).
pub const CLAIM_KEY_PREFIX: &str = "meshguard.claim.";

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

/// What meshguard decided about a stream, for the mesh to see: published
/// as one line of filter state (`wasm.meshguard`, see [`Verdict::line`])
/// when the request goes upstream or meshguard replies, and as the
/// `Proxy-Status` of meshguard's replies.
#[derive(Debug, Default)]
pub struct Verdict {
    /// `allowed`, `denied` (JWT), `limited` (429), `unavailable` (503),
    /// `cached` (a stored response served); empty until decided.
    pub decision: &'static str,
    /// The policy that decided: `jwt`, `ratelimit`, `breaker`, `cache`.
    pub policy: &'static str,
    /// Why (a short token: `missing_token`, `rate_limited`, ...).
    pub reason: &'static str,
    /// Detail for `Proxy-Status` and the log line (a limit's name, the
    /// JWT error description).
    pub detail: String,
    /// The JWT provider that verified the token, and its `sub`.
    pub jwt: Option<(String, Option<String>)>,
    /// The tightest local limit and what it has left (admitted requests).
    pub limit: Option<(String, u64)>,
    /// The breaker's state as the request passed it: `closed`, `probe`
    /// (a HALF_OPEN probe) or `open`.
    pub breaker: Option<&'static str>,
    /// The request's `Cache-Status`.
    pub cache: Option<String>,
}

impl Verdict {
    pub fn decide(&mut self, decision: &'static str, policy: &'static str, reason: &'static str) {
        self.decision = decision;
        self.policy = policy;
        self.reason = reason;
    }

    /// The filter state line: space-separated `key=value` pairs, values
    /// without spaces or quotes (`-`: none): `route`, `decision`, `policy`,
    /// `reason`, then those that apply of `provider`, `sub`, `limit`,
    /// `remaining`, `breaker`, `cache`.
    pub fn line(&self, route: &str) -> String {
        let mut out = String::with_capacity(96);
        push_pair(&mut out, "route", route);
        push_pair(&mut out, "decision", self.decision);
        push_pair(&mut out, "policy", self.policy);
        push_pair(&mut out, "reason", self.reason);
        if !self.detail.is_empty() {
            push_pair(&mut out, "detail", &self.detail);
        }
        if let Some((provider, sub)) = &self.jwt {
            push_pair(&mut out, "provider", provider);
            push_pair(&mut out, "sub", sub.as_deref().unwrap_or("-"));
        }
        if let Some((name, remaining)) = &self.limit {
            push_pair(&mut out, "limit", name);
            push_pair(&mut out, "remaining", &remaining.to_string());
        }
        if let Some(b) = self.breaker {
            push_pair(&mut out, "breaker", b);
        }
        if let Some(c) = &self.cache {
            push_pair(&mut out, "cache", c);
        }
        out
    }

    /// The RFC 9209 `Proxy-Status` value of a reply meshguard generated:
    /// `meshguard; error=<type>; details="<policy>: <reason> ..."` (no
    /// `error` for a stored response served).
    pub fn proxy_status(&self, status: u32) -> String {
        let error = match (self.decision, status) {
            ("cached", _) | ("purged", _) => None,
            ("limited", _) | ("denied", _) => Some("http_request_denied"),
            ("unavailable", _) if self.policy == "breaker" => Some("destination_unavailable"),
            ("unavailable", _) => Some("proxy_internal_error"),
            (_, 400) => Some("http_request_error"),
            (_, s) if s >= 500 => Some("proxy_internal_error"),
            _ => Some("http_request_denied"),
        };
        // One string, written in place (no `format!`: this runs on every
        // reply, a cache hit's included).
        let mut out =
            String::with_capacity(48 + self.policy.len() + self.reason.len() + self.detail.len());
        out.push_str("meshguard; ");
        if let Some(e) = error {
            out.push_str("error=");
            out.push_str(e);
            out.push_str("; ");
        }
        out.push_str("details=");
        let words = [dash(self.policy), " ", dash(self.reason)];
        let detail = [" ", self.detail.as_str()];
        let extra: &[&str] = if self.detail.is_empty() { &[] } else { &detail };
        push_sf_string(&mut out, words.iter().chain(extra).copied());
        out
    }
}

fn dash(v: &str) -> &str {
    if v.is_empty() {
        "-"
    } else {
        v
    }
}

/// Appends ` key=value`, the value with anything but visible ASCII
/// other than `"` and `\` replaced by `_` (a log line stays one line of
/// fields whatever a token's `sub` holds).
fn push_pair(out: &mut String, key: &str, value: &str) {
    if !out.is_empty() {
        out.push(' ');
    }
    out.push_str(key);
    out.push('=');
    if value.is_empty() {
        out.push('-');
    }
    for c in value.chars() {
        out.push(if c.is_ascii_graphic() && c != '"' && c != '\\' {
            c
        } else {
            '_'
        });
    }
}

/// Appends the parts, joined, as one structured-field String (RFC 8941
/// 3.3.3): quoted, `"` and `\` escaped, anything outside printable ASCII
/// replaced by `?`.
fn push_sf_string<'a>(out: &mut String, parts: impl IntoIterator<Item = &'a str>) {
    out.push('"');
    for c in parts.into_iter().flat_map(str::chars) {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('?'),
        }
    }
    out.push('"');
}

/// How [`StreamState::reply_map`] hands a reply to the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendAs {
    /// Meshguard's own answer (a refusal, an error, a response sent in
    /// place of the upstream's): the host's local reply.
    LocalReply,
    /// A stored response sent before the request went upstream (a cache
    /// hit): as the origin's response where the host can
    /// ([`Stream::send_stored_response`]).
    Stored,
}

/// How far a request got with its route's leased global limits.
#[derive(Debug, Default)]
pub struct LeaseProgress {
    /// Bit i: global limit i is settled.
    pub done: u32,
    /// Every leased limit is settled.
    pub settled: bool,
    /// A leased limit's service could not be reached and no lease was left.
    pub unavailable: bool,
    pub statuses: Vec<(usize, rls::LimitStatus)>,
    pub spent: Vec<(String, u64)>,
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
    /// Boxed: ~460 bytes, only on cache routes (the state is created per
    /// request on every route with a policy).
    pub cache: Option<Box<MissContext>>,
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
    /// Leased global limits (`ratelimit::lease`): the ones settled for
    /// this request (bit i = global limit i), their statuses, and the
    /// leases spent from (identity, cost; given back on a refusal).
    pub lease: Option<Box<LeaseProgress>>,
    /// What was decided, for the mesh (`observability`).
    pub verdict: Verdict,
    /// Limits with a usage-based cost, settled when the response ends.
    pub usage: Option<Box<ratelimit::usage::Usage>>,
    /// The cache's full request after a mismatched 304 (its call token).
    pub refetch_token: Option<u32>,
    /// A revalidating request's headers as forwarded (the host's
    /// serialized map), for that full request.
    pub revalidation_request: Option<Vec<u8>>,
}

/// The request's buffers serve the thread's next request
/// (`request::spare`), whoever drops the state.
impl Drop for StreamState {
    fn drop(&mut self) {
        crate::request::spare::give(std::mem::take(&mut self.req));
    }
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
            lease: None,
            verdict: Verdict::default(),
            usage: None,
            refetch_token: None,
            revalidation_request: None,
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
        self.reply_map(io, status, map, body, SendAs::LocalReply)
    }

    /// [`StreamState::reply`] with the reply's own headers already in a
    /// [`HeaderMap`] (a cached response's, as stored bytes); the rate-limit
    /// headers and meshguard's other response headers follow them; `how`
    /// says whether it goes as a local reply or as a stored response.
    pub fn reply_map(
        &mut self,
        io: &impl Stream,
        status: u32,
        mut map: HeaderMap,
        body: &[u8],
        how: SendAs,
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
            let obs = &self.rt.config.observability;
            if obs.proxy_status {
                map.add(
                    b"proxy-status",
                    self.verdict.proxy_status(status).as_bytes(),
                );
            }
            self.publish(io);
            let sent = match how {
                SendAs::Stored => {
                    io.send_stored_response(status, &map, body, self.req.method == "HEAD")
                }
                SendAs::LocalReply => io.send_local_reply(status, &map, body),
            };
            if !sent {
                log::warn!("meshguard: the host refused a local {status} reply");
            }
        }
        Step::Replied
    }

    /// Publishes the verdict as filter state `wasm.meshguard` (see
    /// [`Verdict::line`]), when `observability.filter_state` is on.
    pub fn publish(&self, io: &impl Stream) {
        if !self.rt.config.observability.filter_state {
            return;
        }
        let route = self
            .rt
            .config
            .routes
            .get(self.route)
            .map_or("", |r| r.name.as_str());
        io.set_filter_state(FILTER_STATE_KEY, self.verdict.line(route).as_bytes());
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
            return self.reply_map(io, 200, map, &body, SendAs::LocalReply);
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
            || self.usage.is_some()
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
