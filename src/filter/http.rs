//! One HTTP stream: reads the request once, runs the features, applies
//! their verdicts.

use super::root::Runtime;
use crate::host::proxy_wasm::{self as adapter, ProxyWasmHost};
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
}

impl Stream {
    pub fn new(runtime: Option<Rc<Runtime>>) -> Self {
        Stream {
            runtime,
            route: None,
            local_reply: false,
            response_headers: Vec::new(),
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
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.local_reply {
            return Action::Continue;
        }
        for (name, value) in &self.response_headers {
            adapter::set_response_header(name, value.as_bytes());
        }
        Action::Continue
    }
}
