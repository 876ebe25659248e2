//! Root context (one per worker VM): configuration, metrics definitions,
//! remote JWKS fetches, and the timer that resumes parked streams.

use super::http::Stream;
use super::pipeline::{self, Step, StreamState};
use crate::breaker;
use crate::cache::CacheMetrics;
use crate::config::Config;
use crate::host::proxy_wasm::{self as adapter, ProxyWasmHost};
use crate::host::{Host, MetricId, MetricKind};
use crate::jwt::{FetchFailure, JwtMetrics, TokenCache};
use crate::ratelimit::{self, Limiter};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

/// Everything a stream needs, immutable after `on_configure`.
pub struct Runtime {
    pub config: Config,
    pub limiter: Limiter,
    /// Per route: does any rate-limit key need the peer address?
    pub needs_peer_ip: Vec<bool>,
    pub jwt_metrics: Vec<Option<JwtMetrics>>,
    pub cache_metrics: Vec<CacheMetrics>,
    pub has_remote_jwks: bool,
}

impl Runtime {
    pub fn new(host: &impl Host, mut config: Config) -> Runtime {
        let evictions = host
            .define_metric(MetricKind::Counter, "meshguard.ratelimit.evictions")
            .unwrap_or(MetricId::NONE);
        let mut jwt_metrics = Vec::new();
        let mut cache_metrics = Vec::new();
        for r in config.routes.iter_mut() {
            ratelimit::define_metrics(host, &r.name, &mut r.rate_limits);
            if let Some(b) = r.breaker.as_mut() {
                b.metrics = breaker::BreakerMetrics::define(host, &r.name);
            }
            jwt_metrics.push(r.jwt.as_ref().map(|_| JwtMetrics::define(host, &r.name)));
            cache_metrics.push(match r.cache {
                Some(_) => CacheMetrics::define(host, &r.name),
                None => CacheMetrics::NONE,
            });
        }
        let needs_peer_ip = config
            .routes
            .iter()
            .map(|r| {
                config.xff_trusted_hops > 0
                    || r.rate_limits
                        .iter()
                        .any(|l| l.key.contains(&ratelimit::KeyPart::ClientIp))
            })
            .collect();
        let limiter = Limiter {
            slots: config.max_rate_limit_keys,
            style: config.rate_limit_headers,
            xff_trusted_hops: config.xff_trusted_hops,
            evictions,
        };
        let has_remote_jwks =
            (0..config.jwt_providers.len()).any(|i| config.jwt_providers.remote(i).is_some());
        Runtime {
            config,
            limiter,
            needs_peer_ip,
            jwt_metrics,
            cache_metrics,
            has_remote_jwks,
        }
    }
}

/// State shared by the root context and the streams of one worker VM.
#[derive(Default)]
pub struct Worker {
    pub runtime: RefCell<Option<Rc<Runtime>>>,
    /// Verified tokens (per worker: no locking, no shared-data cost).
    pub tokens: RefCell<TokenCache>,
    /// Streams paused until a condition (keys, cache fill) or a deadline.
    pub parked: RefCell<Vec<(u32, Rc<RefCell<StreamState>>)>>,
    /// Outstanding JWKS fetches: (call token, runtime, provider).
    jwks_calls: RefCell<Vec<(u32, Rc<Runtime>, usize)>>,
    next_jwks_poll_ns: Cell<u64>,
    fast_tick: Cell<bool>,
}

/// Tick while streams are parked.
const FAST_TICK: Duration = Duration::from_millis(10);
/// Tick otherwise, when remote JWKS need refreshing.
const SLOW_TICK: Duration = Duration::from_millis(500);

impl Worker {
    /// Parks a stream; the root's fast tick will run it again.
    pub fn park(&self, context_id: u32, state: Rc<RefCell<StreamState>>) {
        if let Ok(mut p) = self.parked.try_borrow_mut() {
            p.push((context_id, state));
        }
        if !self.fast_tick.replace(true) {
            // Sets the tick of this VM's root context (from any context).
            adapter::set_tick_period(FAST_TICK);
        }
    }

    pub fn unpark(&self, context_id: u32) {
        if let Ok(mut p) = self.parked.try_borrow_mut() {
            p.retain(|(id, _)| *id != context_id);
        }
    }

    /// Asks for an early JWKS poll (a request waits for keys).
    pub fn poll_jwks_soon(&self) {
        self.next_jwks_poll_ns.set(0);
    }
}

/// The root context of one worker VM.
pub struct Root {
    context_id: u32,
    worker: Rc<Worker>,
}

impl Root {
    pub fn new(context_id: u32) -> Self {
        Root {
            context_id,
            worker: Rc::new(Worker::default()),
        }
    }

    fn poll_jwks(&self, host: &ProxyWasmHost, rt: &Rc<Runtime>) {
        let now = host.now_nanos();
        if !rt.has_remote_jwks || now < self.worker.next_jwks_poll_ns.get() {
            return;
        }
        self.worker.next_jwks_poll_ns.set(now + 1_000_000_000);
        // Calls are answered to the context that dispatched them: the root.
        adapter::set_effective_context(self.context_id);
        for f in rt.config.jwt_providers.poll(host) {
            let headers = [
                (":method", "GET"),
                (":path", f.path.as_str()),
                (":authority", f.authority.as_str()),
                ("accept", "application/json"),
            ];
            match adapter::dispatch_http_call(&f.cluster, &headers, None, f.timeout) {
                Ok(token) => {
                    self.worker
                        .jwks_calls
                        .borrow_mut()
                        .push((token, rt.clone(), f.provider))
                }
                Err(e) => {
                    log::warn!(
                        "meshguard: JWKS fetch to cluster {} could not be sent: {e}",
                        f.cluster
                    );
                    rt.config.jwt_providers.on_fetch_result(
                        host,
                        f.provider,
                        Err(FetchFailure::NoResponse),
                    );
                }
            }
        }
    }

    fn run_parked(&self) {
        let parked = std::mem::take(&mut *self.worker.parked.borrow_mut());
        let mut keep = Vec::new();
        for (id, state) in parked {
            if !adapter::set_effective_context(id) {
                continue; // the stream is gone
            }
            let step = match state.try_borrow_mut() {
                Ok(mut s) => pipeline::run(&mut s, &self.worker),
                Err(_) => Step::Park,
            };
            match step {
                Step::Continue => adapter::resume_request(),
                Step::Replied => {}
                Step::Park => keep.push((id, state)),
            }
        }
        self.worker.parked.borrow_mut().extend(keep);
    }

    fn set_tick(&self, rt: Option<&Rc<Runtime>>) {
        let parked = !self.worker.parked.borrow().is_empty();
        self.worker.fast_tick.set(parked);
        let period = if parked {
            FAST_TICK
        } else if rt.is_some_and(|r| r.has_remote_jwks) {
            SLOW_TICK
        } else {
            Duration::ZERO
        };
        adapter::set_effective_context(self.context_id);
        adapter::set_tick_period(period);
    }
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        let call = {
            let mut calls = self.worker.jwks_calls.borrow_mut();
            calls
                .iter()
                .position(|(t, _, _)| *t == token)
                .map(|i| calls.swap_remove(i))
        };
        let Some((_, rt, provider)) = call else {
            return;
        };
        let host = ProxyWasmHost;
        let status = adapter::http_call_response_headers()
            .into_iter()
            .find(|(n, _)| n == ":status")
            .and_then(|(_, v)| {
                std::str::from_utf8(&v)
                    .ok()
                    .and_then(|s| s.parse::<u32>().ok())
            });
        let result = match status {
            Some(200) => {
                let body = adapter::http_call_response_body(body_size).unwrap_or_default();
                rt.config
                    .jwt_providers
                    .on_fetch_result(&host, provider, Ok(&body))
            }
            Some(s) => rt.config.jwt_providers.on_fetch_result(
                &host,
                provider,
                Err(FetchFailure::Status(s)),
            ),
            None => rt.config.jwt_providers.on_fetch_result(
                &host,
                provider,
                Err(FetchFailure::NoResponse),
            ),
        };
        if result {
            log::info!("meshguard: JWKS for provider #{provider} refreshed");
        }
    }
}

impl RootContext for Root {
    fn on_vm_start(&mut self, _size: usize) -> bool {
        log::info!(
            "meshguard {} ({}) started",
            env!("CARGO_PKG_VERSION"),
            crate::GIT_HASH
        );
        true
    }

    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = adapter::plugin_configuration().unwrap_or_default();
        match Config::from_bytes(&bytes) {
            Ok(config) => {
                let routes = config.routes.len();
                let rt = Rc::new(Runtime::new(&ProxyWasmHost, config));
                if rt.has_remote_jwks {
                    // First fetch as soon as the cluster manager is up.
                    self.worker.poll_jwks_soon();
                    adapter::set_tick_period(FAST_TICK);
                }
                *self.worker.runtime.borrow_mut() = Some(rt);
                log::info!("meshguard: configuration loaded ({routes} routes)");
                true
            }
            Err(e) => {
                log::error!("meshguard: {e}");
                false
            }
        }
    }

    fn on_tick(&mut self) {
        let rt = self.worker.runtime.borrow().clone();
        let host = ProxyWasmHost;
        if let Some(rt) = &rt {
            self.poll_jwks(&host, rt);
        }
        self.run_parked();
        self.set_tick(rt.as_ref());
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let rt = self.worker.runtime.borrow().clone();
        Some(Box::new(Stream::new(context_id, rt, self.worker.clone())))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
