//! Root context (one per worker VM): configuration, metrics definitions,
//! remote JWKS fetches, and the timer that resumes parked streams.

use super::http::Stream;
use super::pipeline::{self, Step, StreamState};
use crate::breaker;
use crate::cache::CacheMetrics;
use crate::host::batch::Batched;
use crate::host::proxy_wasm::{self as adapter, ProxyWasmHost};
use crate::host::{Host, MetricId, MetricKind, OneClock};
use crate::jwt::{FetchFailure, JwtMetrics, TokenCache};
use crate::plan::{Config, DEFAULT_METRICS_FLUSH_INTERVAL_NS};
use crate::ratelimit::rls::{self, CallError, RlsMetrics};
use crate::ratelimit::{self, Limiter};
use crate::request::ClientIpRule;
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
    /// Per route: counters of its calls to the rate limit service.
    pub rls_metrics: Vec<RlsMetrics>,
    pub has_remote_jwks: bool,
    /// `meshguard.path_rejected`: requests refused for a path that cannot
    /// be normalised (`request::path`).
    pub path_rejected: MetricId,
    /// `meshguard.claim_headers_removed`: requests that carried their own
    /// copy of a header meshguard sets from claims (removed).
    pub claim_headers_removed: MetricId,
}

impl Runtime {
    /// The host a stream's work uses: Envoy, with counter increments
    /// batched in the VM unless `metrics_flush_interval` is "0s" (the
    /// root's tick flushes them; see `host::batch`).
    pub fn host(&self) -> Batched<'static, ProxyWasmHost> {
        Batched::new(
            &ProxyWasmHost,
            (self.config.metrics_flush_interval_ns > 0).then(adapter::metric_batch),
        )
    }

    pub fn new(host: &impl Host, mut config: Config) -> Runtime {
        let evictions = host
            .define_metric(MetricKind::Counter, "meshguard.ratelimit.evictions")
            .unwrap_or(MetricId::NONE);
        let mut jwt_metrics = Vec::new();
        let mut cache_metrics = Vec::new();
        let mut rls_metrics = Vec::new();
        for r in config.routes.iter_mut() {
            ratelimit::define_metrics(host, &r.name, &mut r.rate_limits);
            ratelimit::define_metrics(host, &r.name, &mut r.global_limits);
            rls_metrics.push(if r.global_limits.is_empty() {
                RlsMetrics::NONE
            } else {
                RlsMetrics::define(host, &r.name)
            });
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
                        .chain(&r.global_limits)
                        .any(|l| l.key.contains(&ratelimit::KeyPart::ClientIp))
            })
            .collect();
        let limiter = Limiter {
            slots: config.max_rate_limit_keys,
            style: config.rate_limit_headers,
            client_ip: ClientIpRule {
                xff_trusted_hops: config.xff_trusted_hops,
                ipv6_prefix: config.ipv6_prefix,
            },
            evictions,
        };
        let counter = |name: &str| {
            host.define_metric(MetricKind::Counter, name)
                .unwrap_or(MetricId::NONE)
        };
        let path_rejected = counter("meshguard.path_rejected");
        let claim_headers_removed = counter("meshguard.claim_headers_removed");
        let has_remote_jwks =
            (0..config.jwt_providers.len()).any(|i| config.jwt_providers.remote(i).is_some());
        Runtime {
            config,
            limiter,
            needs_peer_ip,
            jwt_metrics,
            cache_metrics,
            rls_metrics,
            has_remote_jwks,
            path_rejected,
            claim_headers_removed,
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
    /// Streams waiting for the rate limit service, by call token. A short
    /// vector (one entry per call in flight on this worker): no hash map
    /// code in the module for it.
    rls_calls: RefCell<Vec<(u32, RlsWait)>>,
    /// When the last rate-limit-service warning was logged (one a second).
    last_rls_warning_ns: Cell<u64>,
    next_jwks_poll_ns: Cell<u64>,
    fast_tick: Cell<bool>,
    /// The root's tick period as last set (zero: no tick).
    tick_period: Cell<Duration>,
    /// The root context of this VM: it owns the calls to the rate limit
    /// service.
    root_context_id: Cell<u32>,
}

struct RlsWait {
    context_id: u32,
    state: Rc<RefCell<StreamState>>,
    deadline_ns: u64,
}

/// Tick while streams are parked.
const FAST_TICK: Duration = Duration::from_millis(10);
/// Tick otherwise, when remote JWKS need refreshing.
const SLOW_TICK: Duration = Duration::from_millis(500);
/// The longest tick: streams whose end the filter did not see are looked
/// for at every tick (`dispatch`), so there is always one.
const SWEEP_TICK: Duration = Duration::from_secs(1);

impl Worker {
    /// Parks a stream; the root's fast tick will run it again.
    pub fn park(&self, context_id: u32, state: Rc<RefCell<StreamState>>) {
        if let Ok(mut p) = self.parked.try_borrow_mut() {
            p.push((context_id, state));
        }
        if !self.fast_tick.replace(true) {
            self.tick_every(FAST_TICK);
        }
    }

    pub fn unpark(&self, context_id: u32) {
        if let Ok(mut p) = self.parked.try_borrow_mut() {
            p.retain(|(id, _)| *id != context_id);
        }
    }

    /// Pauses a stream until the rate limit service answers call `token`,
    /// or until `deadline_ns` (the fast tick checks).
    pub fn await_rls(
        &self,
        context_id: u32,
        state: Rc<RefCell<StreamState>>,
        token: u32,
        deadline_ns: u64,
    ) {
        if let Ok(mut calls) = self.rls_calls.try_borrow_mut() {
            calls.retain(|(t, _)| *t != token);
            calls.push((
                token,
                RlsWait {
                    context_id,
                    state,
                    deadline_ns,
                },
            ));
        }
        if !self.fast_tick.replace(true) {
            self.tick_every(FAST_TICK);
        }
    }

    /// Sets the tick of this worker's root context (callable from any of
    /// its contexts: the host applies it to the caller's root), calling the
    /// host only when the period changes.
    fn tick_every(&self, period: Duration) {
        if self.tick_period.replace(period) != period {
            adapter::set_tick_period(period);
        }
    }

    pub fn root_context_id(&self) -> u32 {
        self.root_context_id.get()
    }

    /// Forgets a call whose stream ended: its answer, when it comes, is
    /// dropped (the call is the root's, so it completes normally and
    /// `dispatch` finds no stream waiting for it).
    pub fn forget_rls(&self, token: u32) {
        if let Ok(mut calls) = self.rls_calls.try_borrow_mut() {
            if let Some(i) = calls.iter().position(|(t, _)| *t == token) {
                calls.swap_remove(i);
            }
        }
    }

    /// The answer (or gRPC error) of call `token`, in the host's callback.
    pub fn on_rls_response(&self, token: u32, grpc_status: u32, size: usize) {
        let wait = match self.rls_calls.try_borrow_mut() {
            Ok(mut calls) => calls
                .iter()
                .position(|(t, _)| *t == token)
                .map(|i| calls.swap_remove(i).1),
            Err(_) => None,
        };
        let Some(wait) = wait else {
            return;
        };
        // The answer lives on the root context in the host (which owns the
        // call): read it there, whichever context was called back, then
        // resume the stream in its own context.
        adapter::set_effective_context(self.root_context_id.get());
        let result = match grpc_status {
            0 => match adapter::grpc_call_response_body(size) {
                Some(body) => Ok(body),
                None if size == 0 => Ok(Vec::new()),
                None => Err(CallError::BadResponse(
                    "the answer could not be read".into(),
                )),
            },
            rls::GRPC_DEADLINE_EXCEEDED => Err(CallError::Timeout),
            code => Err(CallError::Status(code, adapter::grpc_status_message())),
        };
        if !adapter::set_effective_context(wait.context_id) {
            return; // the stream is gone
        }
        self.resume_rls(token, wait, result);
    }

    /// Gives up on calls past their deadline (the host never answered).
    fn expire_rls(&self, now: u64) {
        let expired: Vec<(u32, RlsWait)> = match self.rls_calls.try_borrow_mut() {
            Ok(mut calls) if calls.iter().any(|(_, w)| now >= w.deadline_ns) => {
                let (gone, keep) = std::mem::take(&mut *calls)
                    .into_iter()
                    .partition(|(_, w)| now >= w.deadline_ns);
                *calls = keep;
                gone
            }
            _ => Vec::new(),
        };
        for (token, wait) in expired {
            adapter::set_effective_context(self.root_context_id.get());
            adapter::cancel_grpc_call(token);
            if !adapter::set_effective_context(wait.context_id) {
                continue; // the stream is gone
            }
            self.resume_rls(token, wait, Err(CallError::Timeout));
        }
    }

    fn resume_rls(&self, token: u32, wait: RlsWait, result: Result<Vec<u8>, CallError>) {
        let step = match wait.state.try_borrow_mut() {
            Ok(mut s) => {
                s.rls_token = None;
                s.rls_result = Some(result);
                Some(pipeline::run(&mut s, self))
            }
            Err(_) => None,
        };
        let Some(step) = step else {
            // The stream is busy in another callback (not expected): keep
            // it waiting with its deadline passed, so the next tick applies
            // the failure mode instead of leaving it paused.
            self.await_rls(wait.context_id, wait.state, token, 0);
            return;
        };
        match step {
            Step::Continue => adapter::resume_request(),
            Step::Replied => {}
            Step::Park => self.park(wait.context_id, wait.state),
            Step::AwaitRls { token, deadline_ns } => {
                self.await_rls(wait.context_id, wait.state, token, deadline_ns)
            }
        }
    }

    /// Logs a failed call at warn level, at most once a second per worker
    /// (metrics count every one).
    pub fn warn_rls(
        &self,
        host: &impl Host,
        route: &str,
        cluster: &str,
        e: &CallError,
        elapsed_ms: u64,
        deny: bool,
    ) {
        let now = host.now_nanos();
        if now.saturating_sub(self.last_rls_warning_ns.get()) < 1_000_000_000 {
            return;
        }
        self.last_rls_warning_ns.set(now);
        let what = match e {
            CallError::Dispatch(m) => format!("could not be sent ({m})"),
            CallError::Status(code, msg) => format!(
                "failed after {elapsed_ms} ms with gRPC status {code}{}",
                msg.as_deref().map(|m| format!(": {m}")).unwrap_or_default()
            ),
            CallError::Timeout => format!("timed out after {elapsed_ms} ms"),
            CallError::BadResponse(m) => format!("gave an unusable answer ({m})"),
        };
        log::warn!(
            "meshguard: route {route}: rate limit service call to cluster {cluster} {what}; failure_mode {}",
            if deny { "deny: answering 503" } else { "allow: letting the request through" }
        );
    }

    /// Asks for an early JWKS poll (a request waits for keys).
    pub fn poll_jwks_soon(&self) {
        self.next_jwks_poll_ns.set(0);
    }
}

/// The root context of one configuration in a worker VM.
pub struct Root {
    context_id: u32,
    worker: Rc<Worker>,
}

impl Root {
    pub fn new(context_id: u32) -> Self {
        let worker = Worker::default();
        worker.root_context_id.set(context_id);
        Root {
            context_id,
            worker: Rc::new(worker),
        }
    }

    pub fn context_id(&self) -> u32 {
        self.context_id
    }

    pub fn worker(&self) -> &Worker {
        &self.worker
    }

    /// A new stream of this configuration (the one loaded now: a stream
    /// keeps it to its end, even if a new one is loaded meanwhile).
    pub fn new_stream(&self, context_id: u32) -> Stream {
        let rt = self.worker.runtime.borrow().clone();
        Stream::new(context_id, rt, self.worker.clone())
    }

    fn poll_jwks(&self, host: &impl Host, rt: &Rc<Runtime>) {
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
                Step::AwaitRls { token, deadline_ns } => {
                    self.worker.await_rls(id, state, token, deadline_ns)
                }
            }
        }
        self.worker.parked.borrow_mut().extend(keep);
    }

    /// The tick this root needs now: fast while streams wait, else the
    /// shortest of the metrics flush interval, the JWKS refresh poll and
    /// the stream sweep's second. The host is only called when the period
    /// changes.
    fn set_tick(&self, rt: Option<&Rc<Runtime>>) {
        let parked =
            !self.worker.parked.borrow().is_empty() || !self.worker.rls_calls.borrow().is_empty();
        self.worker.fast_tick.set(parked);
        let flush = match rt.map_or(0, |r| r.config.metrics_flush_interval_ns) {
            0 if adapter::metric_batch().ever_used() => {
                Some(Duration::from_nanos(DEFAULT_METRICS_FLUSH_INTERVAL_NS))
            }
            0 => None,
            n => Some(Duration::from_nanos(n)),
        };
        let jwks = rt.is_some_and(|r| r.has_remote_jwks).then_some(SLOW_TICK);
        let period = if parked {
            FAST_TICK
        } else {
            [flush, jwks]
                .into_iter()
                .flatten()
                .fold(SWEEP_TICK, Duration::min)
        };
        if self.worker.tick_period.get() != period {
            // A parked stream's callback may have left another context
            // effective.
            adapter::set_effective_context(self.context_id);
            self.worker.tick_every(period);
        }
    }
}

/// The host's callbacks of a root context (`dispatch` routes them here).
impl Root {
    /// A JWKS fetch's answer.
    pub fn on_http_call_response(&mut self, token: u32, body_size: usize) {
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

    pub fn on_vm_start(&mut self) -> bool {
        log::info!(
            "meshguard {} ({}) started",
            env!("CARGO_PKG_VERSION"),
            crate::GIT_HASH
        );
        true
    }

    pub fn on_configure(&mut self) -> bool {
        let bytes = adapter::plugin_configuration().unwrap_or_default();
        match Config::from_bytes(&bytes) {
            Ok(config) => {
                let routes = config.routes.len();
                let rt = Rc::new(Runtime::new(&ProxyWasmHost, config));
                if rt.has_remote_jwks {
                    // First fetch as soon as the cluster manager is up.
                    self.worker.poll_jwks_soon();
                    self.worker.tick_every(FAST_TICK);
                } else {
                    self.set_tick(Some(&rt));
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

    pub fn on_tick(&mut self) {
        adapter::flush_metrics();
        let rt = self.worker.runtime.borrow().clone();
        // At most one clock reading; none on a tick that only flushes.
        let host = OneClock::new(&ProxyWasmHost);
        if let Some(rt) = rt.as_ref().filter(|r| r.has_remote_jwks) {
            self.poll_jwks(&host, rt);
        }
        self.run_parked();
        if !self.worker.rls_calls.borrow().is_empty() {
            self.worker.expire_rls(host.now_nanos());
        }
        self.set_tick(rt.as_ref());
    }
}
