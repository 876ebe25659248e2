//! State shared by the root context and the streams of one worker VM: the
//! runtime in force, the verified-token cache, the streams paused until a
//! condition or a deadline, the calls in flight, the root's tick; and
//! [`Worker::settle`], the one place a pipeline [`Step`] becomes its
//! effect.

use super::runtime::Runtime;
use super::state::{Step, StreamState};
use crate::host::{Host, Stream};
use crate::jwt::TokenCache;
use crate::ratelimit::rls::CallError;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

/// Tick while streams are parked.
pub const FAST_TICK: Duration = Duration::from_millis(10);
/// Tick otherwise, when remote JWKS need refreshing.
pub const SLOW_TICK: Duration = Duration::from_millis(500);
/// The longest tick: streams whose end the filter did not see are looked
/// for at every tick (`dispatch`), so there is always one.
pub const SWEEP_TICK: Duration = Duration::from_secs(1);

/// See the module docs.
#[derive(Default)]
pub struct Worker {
    pub runtime: RefCell<Option<Rc<Runtime>>>,
    /// Verified tokens (per worker: no locking, no shared-data cost).
    pub tokens: RefCell<TokenCache>,
    /// Streams paused until a condition (keys, cache fill) or a deadline.
    pub parked: RefCell<Vec<(u32, Rc<RefCell<StreamState>>)>>,
    /// Outstanding JWKS fetches: (call token, runtime, provider).
    pub jwks_calls: RefCell<Vec<(u32, Rc<Runtime>, usize)>>,
    /// Streams waiting for the rate limit service, by call token. A short
    /// vector (one entry per call in flight on this worker): no hash map
    /// code in the module for it.
    pub rls_calls: RefCell<Vec<(u32, RlsWait)>>,
    /// Lease refills in flight (`ratelimit::lease`), by call token: no
    /// stream waits on them; their answers go to shared data.
    pub lease_calls: RefCell<Vec<(u32, LeaseCall)>>,
    /// Streams waiting for the cache's full request (see
    /// `pipeline::on_refetch_answer`): (call token, context, state).
    #[allow(clippy::type_complexity)]
    pub refetch_calls: RefCell<Vec<(u32, u32, Rc<RefCell<StreamState>>)>>,
    /// When the last rate-limit-service warning was logged (one a second).
    last_rls_warning_ns: Cell<u64>,
    pub next_jwks_poll_ns: Cell<u64>,
    /// The trace headers of the first request waiting for keys since the
    /// last JWKS fetch: the next fetch carries them (joins its trace).
    pub jwks_trace: RefCell<Vec<(&'static str, Vec<u8>)>>,
    pub fast_tick: Cell<bool>,
    /// The root's tick period as last set (zero: no tick).
    pub tick_period: Cell<Duration>,
    /// The root context of this VM: it owns the calls to the rate limit
    /// service.
    pub root_context_id: Cell<u32>,
}

/// A lease refill in flight: the worker's runtime and what its answer
/// updates.
pub struct LeaseCall {
    pub rt: Rc<Runtime>,
    pub refill: LeaseRefill,
}

/// What a lease refill's answer updates: plain data, so the native module
/// can hand it to the main thread that sends the refill there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRefill {
    pub route: usize,
    /// Index in the route's global limits.
    pub limit: usize,
    pub identity: String,
    pub asked: u64,
    pub sent_ns: u64,
    /// The refill flag's end (send time + timeout + `GRACE_NS`).
    pub deadline_ns: u64,
}

/// A stream waiting for the rate limit service.
pub struct RlsWait {
    pub context_id: u32,
    pub state: Rc<RefCell<StreamState>>,
    pub deadline_ns: u64,
}

impl Worker {
    /// Turns a step of stream `context_id`'s pipeline into its effect:
    /// `Continue` resumes the request when it was paused (`paused`; in
    /// the request's own callback the callback's answer lets it go on),
    /// `Park` parks it for the fast tick, `AwaitRls` hands it to the wait
    /// for the rate limit service's answer; `Replied` needs nothing more.
    pub fn settle(
        &self,
        io: &impl Stream,
        context_id: u32,
        state: Rc<RefCell<StreamState>>,
        step: Step,
        paused: bool,
    ) {
        match step {
            Step::Continue if paused => io.resume_request(),
            Step::Continue | Step::Replied => {}
            Step::Park => self.park(io, context_id, state),
            Step::AwaitRls { token, deadline_ns } => {
                self.await_rls(io, context_id, state, token, deadline_ns)
            }
        }
    }

    /// Parks a stream; the root's fast tick will run it again.
    pub fn park(&self, io: &impl Stream, context_id: u32, state: Rc<RefCell<StreamState>>) {
        if let Ok(mut p) = self.parked.try_borrow_mut() {
            p.push((context_id, state));
        }
        if !self.fast_tick.replace(true) {
            self.tick_every(io, FAST_TICK);
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
        io: &impl Stream,
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
            self.tick_every(io, FAST_TICK);
        }
    }

    /// Sets the tick of this worker's root context (callable from any of
    /// its contexts: the host applies it to the caller's root), calling the
    /// host only when the period changes.
    pub fn tick_every(&self, io: &impl Stream, period: Duration) {
        if self.tick_period.replace(period) != period {
            io.set_tick_period(period);
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

    /// Stream `context_id` waits for the answer of HTTP call `token`.
    pub fn await_refetch(&self, token: u32, context_id: u32, state: Rc<RefCell<StreamState>>) {
        if let Ok(mut calls) = self.refetch_calls.try_borrow_mut() {
            calls.push((token, context_id, state));
        }
    }

    /// Takes the stream waiting for HTTP call `token`, if any.
    pub fn take_refetch(&self, token: u32) -> Option<(u32, Rc<RefCell<StreamState>>)> {
        let mut calls = self.refetch_calls.try_borrow_mut().ok()?;
        let i = calls.iter().position(|(t, _, _)| *t == token)?;
        let (_, id, state) = calls.swap_remove(i);
        Some((id, state))
    }

    /// Forgets the full request of a stream that ended.
    pub fn forget_refetch(&self, token: u32) {
        drop(self.take_refetch(token));
    }

    /// Takes the wait of call `token` (its answer came).
    pub fn take_rls(&self, token: u32) -> Option<RlsWait> {
        let mut calls = self.rls_calls.try_borrow_mut().ok()?;
        let i = calls.iter().position(|(t, _)| *t == token)?;
        Some(calls.swap_remove(i).1)
    }

    /// Keeps a lease refill until its answer or its deadline.
    pub fn add_lease_call(&self, io: &impl Stream, token: u32, call: LeaseCall) {
        if let Ok(mut calls) = self.lease_calls.try_borrow_mut() {
            calls.push((token, call));
        }
        if !self.fast_tick.replace(true) {
            self.tick_every(io, FAST_TICK);
        }
    }

    /// Takes lease refill `token` (its answer came).
    pub fn take_lease_call(&self, token: u32) -> Option<LeaseCall> {
        let mut calls = self.lease_calls.try_borrow_mut().ok()?;
        let i = calls.iter().position(|(t, _)| *t == token)?;
        Some(calls.swap_remove(i).1)
    }

    /// Takes the lease refills past their deadline.
    pub fn take_expired_lease_calls(&self, now: u64) -> Vec<(u32, LeaseCall)> {
        match self.lease_calls.try_borrow_mut() {
            Ok(mut calls) if calls.iter().any(|(_, c)| now >= c.refill.deadline_ns) => {
                let (gone, keep) = std::mem::take(&mut *calls)
                    .into_iter()
                    .partition(|(_, c)| now >= c.refill.deadline_ns);
                *calls = keep;
                gone
            }
            _ => Vec::new(),
        }
    }

    /// Takes the waits past their deadline (the host never answered).
    pub fn take_expired_rls(&self, now: u64) -> Vec<(u32, RlsWait)> {
        match self.rls_calls.try_borrow_mut() {
            Ok(mut calls) if calls.iter().any(|(_, w)| now >= w.deadline_ns) => {
                let (gone, keep) = std::mem::take(&mut *calls)
                    .into_iter()
                    .partition(|(_, w)| now >= w.deadline_ns);
                *calls = keep;
                gone
            }
            _ => Vec::new(),
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

    /// Keeps a waiting request's trace headers for the next JWKS fetch
    /// (the first request's: later ones wait for the same fetch).
    pub fn note_jwks_trace(&self, headers: Vec<(&'static str, Vec<u8>)>) {
        if let Ok(mut t) = self.jwks_trace.try_borrow_mut() {
            if t.is_empty() {
                *t = headers;
            }
        }
    }

    /// Asks for an early JWKS poll (a request waits for keys).
    pub fn poll_jwks_soon(&self) {
        self.next_jwks_poll_ns.set(0);
    }
}
