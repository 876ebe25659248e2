//! Root context (one per worker VM): configuration, metrics definitions,
//! remote JWKS fetches, the answers of the rate limit service, and the
//! timer that resumes parked streams.

use super::http::HttpStream;
use super::pipeline;
use super::runtime::Runtime;
use super::state::Step;
use super::worker::{RlsWait, Worker, FAST_TICK, SLOW_TICK, SWEEP_TICK};
use crate::host::{Host, OneClock, Stream};
use crate::jwt::FetchFailure;
use crate::plan::{Config, DEFAULT_METRICS_FLUSH_INTERVAL_NS};
use crate::ratelimit::rls::{self, CallError};
use std::rc::Rc;
use std::time::Duration;

/// The answer (or gRPC error) of call `token`, in the host's callback.
pub fn on_rls_response<P: Host + Stream>(
    px: &P,
    w: &Worker,
    token: u32,
    grpc_status: u32,
    size: usize,
) {
    if let Some(call) = w.take_lease_call(token) {
        px.set_effective_context(w.root_context_id());
        let result = read_answer(px, grpc_status, size);
        pipeline::lease_answer(px, w, call, result);
        // Streams waiting for that lease go on now, not at the next tick.
        run_parked(px, w);
        return;
    }
    let Some(wait) = w.take_rls(token) else {
        return;
    };
    // The answer lives on the root context in the host (which owns the
    // call): read it there, whichever context was called back, then
    // resume the stream in its own context.
    px.set_effective_context(w.root_context_id());
    let result = read_answer(px, grpc_status, size);
    if !px.set_effective_context(wait.context_id) {
        return; // the stream is gone
    }
    resume_rls(px, w, token, wait, result);
}

/// A call's answer, read on the root context.
fn read_answer<P: Host + Stream>(
    px: &P,
    grpc_status: u32,
    size: usize,
) -> Result<Vec<u8>, CallError> {
    match grpc_status {
        0 => match px.grpc_call_response_body(size) {
            Some(body) => Ok(body),
            None if size == 0 => Ok(Vec::new()),
            None => Err(CallError::BadResponse(
                "the answer could not be read".into(),
            )),
        },
        rls::GRPC_DEADLINE_EXCEEDED => Err(CallError::Timeout),
        code => Err(CallError::Status(code, px.grpc_status_message())),
    }
}

/// Gives up on lease refills past their deadline (recorded as failed).
fn expire_lease_calls<P: Host + Stream>(px: &P, w: &Worker, now: u64) {
    let gone = w.take_expired_lease_calls(now);
    if gone.is_empty() {
        return;
    }
    for (token, call) in gone {
        px.set_effective_context(w.root_context_id());
        px.cancel_grpc_call(token);
        pipeline::lease_answer(px, w, call, Err(CallError::Timeout));
    }
}

/// Runs the parked streams' pipelines again (each in its context).
fn run_parked<P: Host + Stream>(px: &P, w: &Worker) {
    let parked = match w.parked.try_borrow_mut() {
        Ok(mut p) => std::mem::take(&mut *p),
        Err(_) => return,
    };
    for (id, state) in parked {
        if !px.set_effective_context(id) {
            continue; // the stream is gone
        }
        let step = match state.try_borrow_mut() {
            Ok(mut s) => pipeline::run(&mut s, w, px),
            Err(_) => Step::Park,
        };
        w.settle(px, id, state, step, true);
    }
}

/// Gives up on calls past their deadline (the host never answered).
fn expire_rls<P: Host + Stream>(px: &P, w: &Worker, now: u64) {
    for (token, wait) in w.take_expired_rls(now) {
        px.set_effective_context(w.root_context_id());
        px.cancel_grpc_call(token);
        if !px.set_effective_context(wait.context_id) {
            continue; // the stream is gone
        }
        resume_rls(px, w, token, wait, Err(CallError::Timeout));
    }
}

fn resume_rls<P: Host + Stream>(
    px: &P,
    w: &Worker,
    token: u32,
    wait: RlsWait,
    result: Result<Vec<u8>, CallError>,
) {
    let step = match wait.state.try_borrow_mut() {
        Ok(mut s) => {
            s.rls_token = None;
            s.rls_result = Some(result);
            Some(pipeline::run(&mut s, w, px))
        }
        Err(_) => None,
    };
    let Some(step) = step else {
        // The stream is busy in another callback (not expected): keep
        // it waiting with its deadline passed, so the next tick applies
        // the failure mode instead of leaving it paused.
        w.await_rls(px, wait.context_id, wait.state, token, 0);
        return;
    };
    w.settle(px, wait.context_id, wait.state, step, true);
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
    pub fn new_stream(&self, context_id: u32) -> HttpStream {
        let rt = self.worker.runtime.borrow().clone();
        HttpStream::new(context_id, rt, self.worker.clone())
    }

    fn poll_jwks(&self, px: &impl Stream, host: &impl Host, rt: &Rc<Runtime>) {
        let now = host.now_nanos();
        if !rt.has_remote_jwks || now < self.worker.next_jwks_poll_ns.get() {
            return;
        }
        self.worker.next_jwks_poll_ns.set(now + 1_000_000_000);
        // Calls are answered to the context that dispatched them: the root.
        px.set_effective_context(self.context_id);
        let fetches = rt.config.jwt_providers.poll(host);
        // The trace of a request waiting for keys, if one does: taken at
        // every poll (a waiting request notes it again at each retry), so
        // a later refresh never carries an old request's trace.
        let trace = self
            .worker
            .jwks_trace
            .try_borrow_mut()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default();
        let trace: Vec<(&str, String)> = trace
            .iter()
            .filter_map(|(n, v)| Some((*n, String::from_utf8(v.clone()).ok()?)))
            .collect();
        for f in fetches {
            let mut headers = vec![
                (":method", "GET"),
                (":path", f.path.as_str()),
                (":authority", f.authority.as_str()),
                ("accept", "application/json"),
            ];
            headers.extend(trace.iter().map(|(n, v)| (*n, v.as_str())));
            host.increment_metric(rt.jwks_fetches, 1);
            match px.dispatch_http_call(&f.cluster, &headers, None, f.timeout) {
                Ok(token) => {
                    self.worker
                        .jwks_calls
                        .borrow_mut()
                        .push((token, rt.clone(), f.provider))
                }
                Err(e) => {
                    host.increment_metric(rt.jwks_fetch_failures, 1);
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

    /// Runs the parked streams' pipelines again (each in its context).
    fn run_parked<P: Host + Stream>(&self, px: &P) {
        run_parked(px, &self.worker);
    }

    /// The tick this root needs now: fast while streams wait, else the
    /// shortest of the metrics flush interval, the JWKS refresh poll and
    /// the stream sweep's second. The host is only called when the period
    /// changes.
    fn set_tick(&self, px: &impl Stream, rt: Option<&Rc<Runtime>>) {
        let parked = !self.worker.parked.borrow().is_empty()
            || !self.worker.rls_calls.borrow().is_empty()
            || !self.worker.lease_calls.borrow().is_empty();
        self.worker.fast_tick.set(parked);
        let flush = match rt.map_or(0, |r| r.config.metrics_flush_interval_ns) {
            0 if px.metric_batch().ever_used() => {
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
            px.set_effective_context(self.context_id);
            self.worker.tick_every(px, period);
        }
    }
}

/// The HTTP call answer being delivered: status, headers, and the body
/// when it is at most `max` bytes (else, or without a status, `None`).
fn read_full_response(
    px: &impl Stream,
    body_size: usize,
    max: u64,
) -> Option<crate::cache::refetch::FullResponse> {
    let headers = px.http_call_response_headers();
    let status = headers
        .iter()
        .find(|(n, _)| n == ":status")
        .and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse::<u32>().ok())?;
    if body_size as u64 > max {
        return None;
    }
    let body = match body_size {
        0 => Vec::new(),
        n => px.http_call_response_body(n)?,
    };
    Some((status, headers, body))
}

/// The host's callbacks of a root context (`dispatch` routes them here).
impl Root {
    /// A JWKS fetch's answer.
    pub fn on_http_call_response<P: Host + Stream>(
        &mut self,
        px: &P,
        token: u32,
        body_size: usize,
    ) {
        // The cache's full request for a stream: read the answer here (it
        // is the root's), then act in the stream's context.
        if let Some((id, state)) = self.worker.take_refetch(token) {
            let max = state
                .try_borrow()
                .map_or(0, |s| s.rt.config.cache_store.max_entry_bytes);
            let answer = read_full_response(px, body_size, max);
            if px.set_effective_context(id) {
                if let Ok(mut s) = state.try_borrow_mut() {
                    pipeline::on_refetch_answer(&mut s, px, token, answer);
                }
                px.set_effective_context(self.context_id);
            }
            return;
        }
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
        let host = px;
        let status = px
            .http_call_response_headers()
            .into_iter()
            .find(|(n, _)| n == ":status")
            .and_then(|(_, v)| {
                std::str::from_utf8(&v)
                    .ok()
                    .and_then(|s| s.parse::<u32>().ok())
            });
        if status != Some(200) {
            host.increment_metric(rt.jwks_fetch_failures, 1);
        }
        let result = match status {
            Some(200) => {
                let body = px.http_call_response_body(body_size).unwrap_or_default();
                rt.config
                    .jwt_providers
                    .on_fetch_result(host, provider, Ok(&body))
            }
            Some(s) => rt.config.jwt_providers.on_fetch_result(
                host,
                provider,
                Err(FetchFailure::Status(s)),
            ),
            None => rt.config.jwt_providers.on_fetch_result(
                host,
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

    /// A configuration (the plugin configuration's bytes) to load.
    pub fn on_configure<P: Host + Stream>(&mut self, px: &P, bytes: &[u8]) -> bool {
        // Its own time goes into the log line (issue #22: start-up is the
        // compilation of the module, not this; the line lets anyone check).
        let start = px.now_nanos();
        match Config::from_bytes(bytes) {
            Ok(config) => {
                let routes = config.routes.len();
                let rt = Rc::new(Runtime::new(px, config));
                if rt.has_remote_jwks {
                    // First fetch as soon as the cluster manager is up.
                    self.worker.poll_jwks_soon();
                    self.worker.tick_every(px, FAST_TICK);
                } else {
                    self.set_tick(px, Some(&rt));
                }
                *self.worker.runtime.borrow_mut() = Some(rt);
                let us = px.now_nanos().saturating_sub(start) / 1000;
                log::info!("meshguard: configuration loaded ({routes} routes) in {us} us");
                true
            }
            Err(e) => {
                log::error!("meshguard: {e}");
                false
            }
        }
    }

    pub fn on_tick<P: Host + Stream>(&mut self, px: &P) {
        px.metric_batch().flush(px);
        let rt = self.worker.runtime.borrow().clone();
        // At most one clock reading; none on a tick that only flushes.
        let host = OneClock::new(px);
        if let Some(rt) = rt.as_ref().filter(|r| r.has_remote_jwks) {
            self.poll_jwks(px, &host, rt);
        }
        // Expired lease refills first: the streams waiting for them then
        // see the failure.
        if !self.worker.lease_calls.borrow().is_empty() {
            expire_lease_calls(px, &self.worker, host.now_nanos());
        }
        self.run_parked(px);
        if !self.worker.rls_calls.borrow().is_empty() {
            expire_rls(px, &self.worker, host.now_nanos());
        }
        self.set_tick(px, rt.as_ref());
    }
}
