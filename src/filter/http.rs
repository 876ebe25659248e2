//! One HTTP stream: reads the request once, runs the features, applies
//! their verdicts.

use super::root::Runtime;
use crate::breaker::{self, Admission};
use crate::host::proxy_wasm::{self as adapter, ProxyWasmHost};
use crate::host::Host;
use crate::ratelimit;
use crate::request::{ip_of_address, Request};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use std::rc::Rc;

pub struct Stream {
    runtime: Option<Rc<Runtime>>,
    /// Index of the matched route.
    route: Option<usize>,
    /// Set once meshguard answered the request itself.
    local_reply: bool,
    /// Headers to add to the upstream's response.
    response_headers: Vec<(&'static str, String)>,
    /// The breaker admitted this request and waits for its outcome.
    breaker: Option<BreakerTicket>,
}

/// A request the breaker let through, until its outcome is recorded.
struct BreakerTicket {
    key: String,
    probe: bool,
    started_ns: u64,
}

impl Stream {
    pub fn new(runtime: Option<Rc<Runtime>>) -> Self {
        Stream {
            runtime,
            route: None,
            local_reply: false,
            response_headers: Vec::new(),
            breaker: None,
        }
    }

    fn read_request(&self, rt: &Runtime) -> Request {
        let mut req = Request::default();
        let mut headers = adapter::request_headers();
        headers.retain(|(name, value)| {
            let take = |slot: &mut String| *slot = String::from_utf8_lossy(value).into_owned();
            match name.as_str() {
                ":method" => take(&mut req.method),
                ":path" => take(&mut req.path),
                ":authority" => take(&mut req.authority),
                _ => return !name.starts_with(':'),
            }
            false
        });
        req.headers = headers;
        let _ = rt;
        req
    }

    /// Sends a local reply (once per stream).
    fn reply(&mut self, status: u32, headers: &[(&str, &str)], body: &str) -> Action {
        if !self.local_reply {
            self.local_reply = true;
            if !adapter::send_local_reply(status, headers, body.as_bytes()) {
                log::warn!("meshguard: the host refused a local {status} reply");
            }
        }
        Action::Pause
    }

    fn rate_limit_reply(&mut self, route: &str, d: &ratelimit::Decision) -> Action {
        let retry = d.retry_after_secs.to_string();
        let body = d.body(route);
        let mut h: Vec<(&str, &str)> = vec![
            ("content-type", "application/json"),
            ("retry-after", &retry),
        ];
        h.extend(d.headers.iter().map(|(n, v)| (*n, v.as_str())));
        let h: Vec<(String, String)> = h
            .into_iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        let refs: Vec<(&str, &str)> = h.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        self.reply(429, &refs, &body)
    }
}

impl Stream {
    /// Records the outcome of a request the breaker admitted, once. Called at
    /// response headers (`have_response`), or at the end of the stream when
    /// no response came (reset, client gone).
    fn record_breaker_outcome(&mut self, have_response: bool) {
        let Some(ticket) = self.breaker.take() else {
            return;
        };
        let Some(rt) = self.runtime.clone() else {
            return;
        };
        let Some(policy) = self
            .route
            .and_then(|i| rt.config.routes.get(i))
            .and_then(|r| r.breaker.as_ref())
        else {
            return;
        };
        let host = ProxyWasmHost;
        let status = if have_response {
            adapter::response_header(":status").and_then(|v| {
                std::str::from_utf8(&v)
                    .ok()
                    .and_then(|s| s.parse::<u32>().ok())
            })
        } else {
            None
        };
        let flags = adapter::property_u64(&["response", "flags"]).unwrap_or(0);
        let upstream_failure = breaker::upstream_failure_from_response_flags(flags);
        let cancelled = breaker::client_cancelled_from_response_flags(flags)
            || (!have_response && !upstream_failure);
        let elapsed = host.now_nanos().saturating_sub(ticket.started_ns);
        match breaker::classify(policy, status, upstream_failure, elapsed, false, cancelled) {
            Some(outcome) => breaker::record(&host, policy, &ticket.key, outcome, ticket.probe),
            None if ticket.probe => breaker::release(&host, policy, &ticket.key),
            None => {}
        }
    }
}

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(rt) = self.runtime.clone() else {
            return Action::Continue;
        };
        if rt.config.routes.is_empty() {
            return Action::Continue;
        }
        let mut req = self.read_request(&rt);
        let Some((idx, route)) = crate::route::find(&rt.config.routes, &req, |r| &r.matcher) else {
            return Action::Continue;
        };
        self.route = Some(idx);
        if rt.needs_peer_ip.get(idx).copied().unwrap_or(false) {
            req.peer_ip = adapter::property_str(&["source", "address"])
                .map(|a| ip_of_address(&a))
                .unwrap_or_default();
        }
        let host = ProxyWasmHost;

        if !route.rate_limits.is_empty() {
            let d = ratelimit::check(
                &host,
                &rt.limiter,
                &route.name,
                &route.rate_limits,
                &req,
                None,
            );
            if !d.allowed {
                return self.rate_limit_reply(&route.name, &d);
            }
            self.response_headers.extend(d.headers);
        }

        if let Some(policy) = &route.breaker {
            let cluster = match policy.scope {
                breaker::Scope::Upstream => adapter::property_str(&["xds", "cluster_name"]),
                breaker::Scope::Route => None,
            };
            let key = breaker::breaker_key(policy, &route.name, cluster.as_deref()).to_string();
            match breaker::admit(&host, policy, &key) {
                Admission::Allowed { probe } => {
                    self.breaker = Some(BreakerTicket {
                        key,
                        probe,
                        started_ns: host.now_nanos(),
                    });
                }
                Admission::Rejected { retry_after_secs } => {
                    let body = serde_json::json!({
                        "error": "circuit_open",
                        "route": route.name,
                        "retry_after": retry_after_secs,
                    })
                    .to_string();
                    let retry = retry_after_secs.to_string();
                    let mut h = vec![
                        ("content-type".to_string(), "application/json".to_string()),
                        ("retry-after".to_string(), retry),
                    ];
                    h.extend(
                        self.response_headers
                            .iter()
                            .map(|(n, v)| (n.to_string(), v.clone())),
                    );
                    let refs: Vec<(&str, &str)> =
                        h.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
                    return self.reply(503, &refs, &body);
                }
            }
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        // The stream ended; a request still holding a ticket got no response.
        self.record_breaker_outcome(false);
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.local_reply {
            return Action::Continue;
        }
        self.record_breaker_outcome(true);
        for (name, value) in &self.response_headers {
            adapter::set_response_header(name, value.as_bytes());
        }
        Action::Continue
    }
}
