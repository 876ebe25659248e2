//! The benchmark's reference filter. With an empty configuration it reads
//! the `x-api-key` request header and continues: the floor cost of "any wasm
//! filter". `bench.py --diag` also loads it with a comma-separated list of
//! extra operations, one per request, to price individual host calls:
//! `all_headers` (read every request header), `status` (read `:status` of
//! the response), `flags` (read the `response.flags` property), `metric`
//! (increment a counter), `shared` (shared-data get + compare-and-swap set),
//! `shared_absent` (a shared-data read of a key never written: what a
//! healthy breaker's reads find), `remove_auth` (remove the
//! `authorization` request header), `time` (read
//! the clock), `add_resp_header` (add a response header), `rl_headers` (add
//! the two IETF rate-limit response headers meshguard sends on the bench's
//! rate-limit route, same names and values), `hit_floor` (what a cache hit
//! must do, with no lookup: read every request header, read the clock, read
//! a 558-byte shared-data value (a stored entry's size), and answer with
//! the 8 headers and the body meshguard's hit sends), `reply` (answer
//! every request itself with a 200 and the upstream's 30-byte body, like a
//! cache hit: the floor of any wasm filter that answers). `op*N` repeats an
//! operation N times per request, so one call's price stands out of the
//! run-to-run noise.
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};
use std::rc::Rc;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { ops: Rc::new(Ops::default()) }) });
}}

#[derive(Default)]
struct Ops {
    all_headers: u32,
    status: u32,
    flags: u32,
    metric: Option<(u32, u32)>,
    shared: u32,
    shared_absent: u32,
    remove_auth: u32,
    time: u32,
    add_resp_header: u32,
    rl_headers: u32,
    hit_floor: bool,
    reply: bool,
}

/// The shared-data key of `hit_floor`'s stand-in entry.
const ENTRY_KEY: &str = "trivial/entry";

struct Root {
    ops: Rc<Ops>,
}

impl Context for Root {}
impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let text = self
            .get_plugin_configuration()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let mut ops = Ops::default();
        for op in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (op, n) = match op.split_once('*') {
                Some((op, n)) => match n.parse::<u32>() {
                    Ok(n) => (op, n),
                    Err(_) => return false,
                },
                None => (op, 1),
            };
            match op {
                "hdr" => {}
                "all_headers" => ops.all_headers = n,
                "status" => ops.status = n,
                "flags" => ops.flags = n,
                "metric" => {
                    ops.metric = hostcalls::define_metric(MetricType::Counter, "trivial.requests")
                        .ok()
                        .map(|m| (m, n))
                }
                "shared" => ops.shared = n,
                "shared_absent" => ops.shared_absent = n,
                "remove_auth" => ops.remove_auth = n,
                "time" => ops.time = n,
                "add_resp_header" => ops.add_resp_header = n,
                "rl_headers" => ops.rl_headers = n,
                "reply" => ops.reply = true,
                "hit_floor" => {
                    ops.hit_floor = true;
                    if hostcalls::set_shared_data(ENTRY_KEY, Some(&[b'e'; 558]), None).is_err() {
                        return false;
                    }
                }
                _ => return false,
            }
        }
        self.ops = Rc::new(ops);
        true
    }
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Trivial {
            ops: self.ops.clone(),
        }))
    }
}

struct Trivial {
    ops: Rc<Ops>,
}
impl Context for Trivial {}
impl HttpContext for Trivial {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let _ = self.get_http_request_header("x-api-key");
        let ops = &self.ops;
        for _ in 0..ops.all_headers {
            let _ = hostcalls::get_map_bytes(proxy_wasm::types::MapType::HttpRequestHeaders);
        }
        if let Some((m, n)) = ops.metric {
            for _ in 0..n {
                let _ = hostcalls::increment_metric(m, 1);
            }
        }
        for _ in 0..ops.shared {
            if let Ok((v, cas)) = hostcalls::get_shared_data("trivial/k") {
                let mut n = v
                    .as_deref()
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_le_bytes)
                    .unwrap_or(0);
                n = n.wrapping_add(1);
                let _ = hostcalls::set_shared_data("trivial/k", Some(&n.to_le_bytes()), cas);
            }
        }
        for _ in 0..ops.shared_absent {
            let _ = hostcalls::get_shared_data("trivial/never-written");
        }
        for _ in 0..ops.remove_auth {
            let _ = hostcalls::remove_map_value(
                proxy_wasm::types::MapType::HttpRequestHeaders,
                "authorization",
            );
        }
        for _ in 0..ops.time {
            let _ = hostcalls::get_current_time();
        }
        if ops.hit_floor {
            let _ = hostcalls::get_map_bytes(proxy_wasm::types::MapType::HttpRequestHeaders);
            let _ = hostcalls::get_current_time();
            let _ = hostcalls::get_shared_data(ENTRY_KEY);
            let _ = hostcalls::send_http_response(
                200,
                vec![
                    ("content-length", "30"),
                    ("content-type", "text/plain"),
                    ("date", "Wed, 02 Dec 2026 06:00:00 GMT"),
                    ("server", "envoy"),
                    ("x-envoy-upstream-service-time", "0"),
                    ("cache-control", "public, max-age=600"),
                    ("age", "1"),
                    ("cache-status", "meshguard; hit; ttl=599"),
                ],
                Some(b"hello from the bench upstream\n"),
            );
            return Action::Pause;
        }
        if ops.reply {
            let _ = hostcalls::send_http_response(
                200,
                vec![
                    ("content-type", "text/plain"),
                    ("cache-control", "public, max-age=600"),
                ],
                Some(b"hello from the bench upstream\n"),
            );
            return Action::Pause;
        }
        Action::Continue
    }
    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        for _ in 0..self.ops.status {
            let _ = hostcalls::get_map_value_bytes(
                proxy_wasm::types::MapType::HttpResponseHeaders,
                ":status",
            );
        }
        for _ in 0..self.ops.flags {
            let _ = hostcalls::get_property(vec!["response", "flags"]);
        }
        for _ in 0..self.ops.add_resp_header {
            let _ = hostcalls::add_map_value(
                proxy_wasm::types::MapType::HttpResponseHeaders,
                "x-diag",
                "1",
            );
        }
        for _ in 0..self.ops.rl_headers {
            let map = proxy_wasm::types::MapType::HttpResponseHeaders;
            let _ = hostcalls::add_map_value(map, "ratelimit-policy", "\"all\";q=1000000000;w=1");
            let _ = hostcalls::add_map_value(map, "ratelimit", "\"all\";r=999999999;t=1");
        }
        Action::Continue
    }
}
