//! The per-stream pipeline: request stages in order (JWT, rate limit,
//! cache, breaker), resumable after a pause, and the response side.
//!
//! A stage returns when it either lets the request go on, answers it
//! locally (at most once per stream), or parks it (the root's timer runs
//! [`run`] again: JWKS still loading, or another request filling the cache
//! entry). Every park has a deadline, so no request can hang.

use super::runtime::{RouteRuntime, Runtime};
use super::state::{
    self, BreakerTicket, Capture, SendAs, Stage, Step, StreamState, CLAIM_KEY_PREFIX,
};
use super::worker::{LeaseCall, LeaseRefill, Worker};
use crate::breaker::{self, Admission};
use crate::cache::{self, CacheRoute, Lookup, ResponseDecision};
use crate::grpc;
use crate::host::{Host, OneClock, Stream};
use crate::jwt::{self, AuthOutcome, HeaderOp};
use crate::plan::Route;
use crate::ratelimit::lease::{self, LeaseMetrics};
use crate::ratelimit::{self, rls, LocalOutcome};
use crate::request::Request;

/// How long a request may wait for a remote JWKS at startup.
pub const JWKS_WAIT_NS: u64 = 5_000_000_000;
/// How long a request may wait for another request filling the cache.
pub const CACHE_WAIT_NS: u64 = 6_000_000_000;

fn cache_route<'a>(rt: &'a Runtime, route: &'a Route, idx: usize) -> Option<CacheRoute<'a>> {
    Some(CacheRoute {
        name: &route.name,
        policy: route.cache.as_ref()?,
        store: &rt.config.cache_store,
        metrics: &rt.route(idx)?.cache,
    })
}

/// Runs the request stages from where the stream stands.
pub fn run<P: Host + Stream>(s: &mut StreamState, w: &Worker, px: &P) -> Step {
    // One clock reading for the whole pass (JWT expiry, buckets, breaker).
    let rt = s.rt.clone();
    let batched = rt.host(px);
    let host = OneClock::new(&batched);
    // The route and its runtime handles (built together, same index).
    let Some((route, rr)) = rt.config.routes.get(s.route).zip(rt.route(s.route)) else {
        return Step::Continue;
    };
    loop {
        match s.stage {
            Stage::Jwt => {
                if let Some(j) = &route.jwt {
                    let auth = |cache: &mut jwt::TokenCache| {
                        let before = cache.stats.verify;
                        let outcome = jwt::authenticate(
                            &host,
                            &rt.config.jwt_providers,
                            j,
                            &route.name,
                            &s.req,
                            cache,
                        );
                        (outcome, cache.stats.verify.since(before))
                    };
                    let (outcome, checks) = match w.tokens.try_borrow_mut() {
                        Ok(mut cache) => auth(&mut cache),
                        Err(_) => auth(&mut jwt::TokenCache::new(1)),
                    };
                    let metrics = rr.jwt;
                    // A parked request is re-run on every fast tick: count
                    // `keys_pending` once per request, not once per retry.
                    let retry = s.park_deadline_ns != 0;
                    if let Some(m) = &metrics {
                        if !(retry && matches!(outcome, AuthOutcome::KeysPending { .. })) {
                            m.record(&host, &outcome);
                        }
                        m.record_checks(&host, checks);
                    }
                    match outcome {
                        AuthOutcome::Allowed {
                            claims,
                            header_ops,
                            provider,
                            ..
                        } => {
                            note_jwt(s, px, &rt, provider, claims.as_deref());
                            for op in &header_ops {
                                match op {
                                    HeaderOp::Remove(n) => px.remove_request_header(n),
                                    HeaderOp::Set(n, v) => px.set_request_header(n, Some(v)),
                                }
                            }
                            forward_header_ops(&mut s.req, &header_ops);
                            s.claims = claims;
                        }
                        AuthOutcome::Denied {
                            status,
                            www_authenticate,
                            body,
                        } => {
                            note_jwt_denied(&mut s.verdict, &body);
                            return s.json_reply(
                                px,
                                status,
                                &[("www-authenticate", &www_authenticate)],
                                &body,
                            );
                        }
                        AuthOutcome::KeysPending { provider } => {
                            w.poll_jwks_soon();
                            if rt.config.observability.trace_propagation {
                                w.note_jwks_trace(trace_headers(&s.req));
                            }
                            if s.park_until(host.now_nanos(), JWKS_WAIT_NS) {
                                return Step::Park;
                            }
                            log::warn!("meshguard: route {}: no keys for JWT provider #{provider} after waiting; answering 503", route.name);
                            let body = serde_json::json!({
                                "error": "jwks_unavailable",
                                "route": route.name,
                                "error_description": "the signing keys could not be fetched yet",
                            })
                            .to_string();
                            if let Some(m) = &metrics {
                                host.increment_metric(m.denied, 1);
                            }
                            s.verdict.decide("unavailable", "jwt", "jwks_unavailable");
                            return s.json_reply(px, 503, &[("retry-after", "1")], &body);
                        }
                    }
                }
                s.park_deadline_ns = 0;
                s.stage = Stage::RateLimit;
            }
            Stage::RateLimit => {
                s.stage = Stage::Cache;
                if route.rate_limits.is_empty() && route.global_limits.is_empty() {
                    continue;
                }
                // Local limits first: a request they refuse costs no call
                // to the rate limit service.
                let d = match ratelimit::check_local(
                    &host,
                    &rt.limiter,
                    &route.name,
                    &route.rate_limits,
                    &rr.limits,
                    &s.req,
                    s.claims.as_deref(),
                ) {
                    LocalOutcome::Refused(d) => d,
                    LocalOutcome::Admitted(a) if !route.global_limits.is_empty() => {
                        s.rl_admitted = Some(a);
                        s.stage = Stage::GlobalRateLimit;
                        continue;
                    }
                    LocalOutcome::Admitted(a) => {
                        if rt.config.observability.filter_state {
                            s.verdict.limit = a.tightest.as_ref().and_then(|t| match t.of {
                                ratelimit::LimitRef::Local(i) => route
                                    .rate_limits
                                    .get(i)
                                    .map(|l| (l.name.clone(), t.remaining)),
                                ratelimit::LimitRef::Global(_) => None,
                            });
                        }
                        // Written at response time (on_response_headers, reply).
                        s.rl_headers = a.header_values(rt.limiter.style);
                        s.usage = ratelimit::usage::Usage::begin(
                            &route.rate_limits,
                            &route.global_limits,
                            &a.taken,
                            false,
                            &[],
                        )
                        .map(Box::new);
                        continue;
                    }
                };
                if let Some(step) = apply_decision(s, px, d, &route.name) {
                    return step;
                }
            }
            Stage::GlobalRateLimit => {
                if let Some(step) = global_rate_limit(s, w, px, &rt, route, rr) {
                    return step;
                }
                s.stage = Stage::Cache;
            }
            Stage::Cache => {
                if let Some(cr) = cache_route(&rt, route, s.route) {
                    if s.req.method == "PURGE" && cr.policy.purge.is_some() {
                        return purge(s, px, &host, &cr);
                    }
                    // Waiting behind another request's fill: not before the
                    // time the cache said to look again (the fast tick
                    // comes sooner; never past the wait's deadline).
                    if s.cache_retry_at_ns != 0 && host.now_nanos() < s.cache_retry_at_ns {
                        return Step::Park;
                    }
                    let identity = cache::Identity {
                        token: s.claims.is_some() || carries_token(&rt, route, &s.req),
                    };
                    match cache::lookup_as(&host, &cr, &s.req, identity) {
                        Lookup::Hit(resp) => {
                            return send_cached(s, px, resp, "hit", SendAs::Stored);
                        }
                        Lookup::OnlyIfCachedMiss(resp) => {
                            return send_cached(
                                s,
                                px,
                                resp,
                                "only_if_cached_miss",
                                SendAs::LocalReply,
                            );
                        }
                        Lookup::Wait { retry_after_ms } => {
                            let now = host.now_nanos();
                            if s.park_until(now, CACHE_WAIT_NS) {
                                s.cache_retry_at_ns = now
                                    .saturating_add(retry_after_ms.saturating_mul(1_000_000))
                                    .min(s.park_deadline_ns);
                                return Step::Park;
                            }
                            // Waited long enough: go upstream uncached.
                            s.response_headers.push((
                                "cache-status",
                                format!("{}; fwd=miss; detail=wait-timeout", cache::CACHE_NAME),
                            ));
                        }
                        Lookup::Miss { ctx } | Lookup::Bypass { ctx } => {
                            s.cache = Some(Box::new(ctx))
                        }
                        Lookup::Revalidate {
                            remove_request_headers,
                            add_request_headers,
                            ctx,
                        } => {
                            for n in remove_request_headers {
                                px.remove_request_header(n);
                            }
                            for (n, v) in &add_request_headers {
                                px.set_request_header(n, Some(v));
                            }
                            // Kept for a full request, should the origin's
                            // 304 name another representation (`refetch`).
                            s.revalidation_request = px.request_headers_raw();
                            s.cache = Some(Box::new(ctx));
                        }
                    }
                }
                s.park_deadline_ns = 0;
                s.cache_retry_at_ns = 0;
                s.stage = Stage::Breaker;
            }
            Stage::Breaker => {
                if let Some(policy) = &route.breaker {
                    let cluster = match policy.scope {
                        breaker::Scope::Upstream => px.property_str(&["xds", "cluster_name"]),
                        breaker::Scope::Route => None,
                    };
                    let key = breaker::breaker_key(policy, &route.name, cluster.as_deref());
                    let (admission, probe) = breaker::admit_ticket(&host, policy, &rr.breaker, key);
                    match admission {
                        Admission::Allowed { .. } => {
                            s.verdict.breaker = Some(if probe.probe { "probe" } else { "closed" });
                            s.breaker = Some(BreakerTicket {
                                key: (key != route.name).then(|| key.to_string()),
                                probe,
                                // Only `slow_call` needs the time to response headers.
                                started_ns: match policy.slow_call_ns {
                                    Some(_) => host.now_nanos(),
                                    None => 0,
                                },
                                grpc_headers_elapsed_ns: None,
                            });
                        }
                        Admission::Rejected { retry_after_secs } => {
                            // The verdict says the breaker is open even when a
                            // stale response answers instead of the 503.
                            s.verdict.breaker = Some("open");
                            if let Some(step) = stale_when_circuit_open(s, px) {
                                return step;
                            }
                            s.verdict.decide("unavailable", "breaker", "circuit_open");
                            let body = serde_json::json!({
                                "error": "circuit_open",
                                "route": route.name,
                                "retry_after": retry_after_secs,
                            })
                            .to_string();
                            let retry = retry_after_secs.to_string();
                            return s.json_reply(px, 503, &[("retry-after", &retry)], &body);
                        }
                    }
                }
                s.stage = Stage::Upstream;
            }
            Stage::Upstream => {
                s.verdict.decision = "allowed";
                s.publish(px);
                return Step::Continue;
            }
        }
    }
}

/// Records a verified token in the verdict (provider, `sub`) and
/// publishes the claims `observability.claims` names as filter state
/// `meshguard.claim.<name>` (see [`claim_value`]).
fn note_jwt(
    s: &mut StreamState,
    io: &impl Stream,
    rt: &Runtime,
    provider: Option<usize>,
    claims: Option<&jwt::claims::Claims>,
) {
    let obs = &rt.config.observability;
    let Some(claims) = claims else {
        return;
    };
    if obs.filter_state {
        let name = provider
            .and_then(|p| rt.config.jwt_providers.providers.get(p))
            .map_or_else(String::new, |p| p.name.clone());
        let sub = claims
            .get("sub")
            .and_then(|v| v.as_str())
            .map(str::to_string);
        s.verdict.jwt = Some((name, sub));
    }
    for name in &obs.claims {
        if let Some(v) = jwt::claims::lookup(claims, name) {
            let key = format!("{CLAIM_KEY_PREFIX}{name}");
            io.set_filter_state(&key, claim_value(name, v).as_bytes());
        }
    }
}

/// A claim as published: a string as its text, anything else (arrays,
/// objects, numbers, booleans) as its JSON; `scope` and `scp` are always a
/// JSON list (a space-separated string is split, RFC 8693 4.2).
pub fn claim_value(name: &str, v: &serde_json::Value) -> String {
    let last = name.rsplit('.').next().unwrap_or(name);
    match v {
        serde_json::Value::String(text) if last == "scope" || last == "scp" => {
            serde_json::Value::from(text.split_whitespace().collect::<Vec<_>>()).to_string()
        }
        serde_json::Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// A JWT refusal in the verdict: its `error` and `error_description`
/// (read back from the refusal's JSON body).
fn note_jwt_denied(v: &mut state::Verdict, body: &str) {
    let parsed: Option<serde_json::Value> = crate::config::json::parse(body).ok();
    let field = |k: &str| {
        parsed
            .as_ref()
            .and_then(|p| p.get(k))
            .and_then(|e| e.as_str())
            .map(str::to_string)
    };
    let reason = match field("error").as_deref() {
        Some("missing_token") => "missing_token",
        Some("insufficient_scope") => "insufficient_scope",
        _ => "invalid_token",
    };
    v.decide("denied", "jwt", reason);
    v.detail = field("error_description").unwrap_or_default();
}

/// The trace headers of a request (W3C Trace Context, B3, Envoy's
/// `x-request-id`), copied onto meshguard's calls on its behalf so that
/// they join its trace.
pub fn trace_headers(req: &Request) -> Vec<(&'static str, Vec<u8>)> {
    TRACE_HEADERS
        .iter()
        .filter_map(|&n| req.header(n).map(|v| (n, v.to_vec())))
        .collect()
}

/// The headers [`trace_headers`] copies.
pub const TRACE_HEADERS: [&str; 10] = [
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "x-request-id",
    "x-ot-span-context",
];

/// Makes `req` the request as forwarded after the JWT stage's header
/// changes (claim headers set, client copies and tokens removed), so that
/// the later stages (rate-limit keys, the cache's `Vary` and `key_headers`)
/// read what the upstream receives, never the client's own copies.
fn forward_header_ops(req: &mut Request, ops: &[HeaderOp]) {
    for op in ops {
        match op {
            HeaderOp::Remove(n) => req.forward_header(n, None),
            HeaderOp::Set(n, v) => req.forward_header(n, Some(v)),
        }
    }
}

/// Whether the request (as forwarded) still holds a token at a location of
/// one of the route's JWT providers. Asked only when no token was verified:
/// a verified one is known from the claims, even once removed.
fn carries_token(rt: &Runtime, route: &Route, req: &Request) -> bool {
    let Some(j) = &route.jwt else {
        return false;
    };
    j.providers.iter().any(|&p| {
        rt.config
            .jwt_providers
            .providers
            .get(p)
            .is_some_and(|prov| prov.sources.iter().any(|src| src.find(req).is_some()))
    })
}

/// Adds a rate-limit decision's headers; answers 429 if it refuses.
fn apply_decision(
    s: &mut StreamState,
    io: &impl Stream,
    mut d: ratelimit::Decision,
    route: &str,
) -> Option<Step> {
    s.response_headers.append(&mut d.headers);
    s.service_headers.append(&mut d.service_headers);
    if d.allowed {
        return None;
    }
    s.verdict.decide("limited", "ratelimit", "rate_limited");
    s.verdict.detail = d.refused_by.clone().unwrap_or_default();
    let retry = d.retry_after_secs.to_string();
    Some(s.json_reply(io, 429, &[("retry-after", &retry)], &d.body(route)))
}

/// The global limits of a route: sends the call to the rate limit service,
/// waits for it, applies its verdict or the failure mode. `None` when the
/// request goes on.
fn global_rate_limit<P: Host + Stream>(
    s: &mut StreamState,
    w: &Worker,
    px: &P,
    rt: &Runtime,
    route: &Route,
    rr: &RouteRuntime,
) -> Option<Step> {
    let host = rt.host(px);
    let svc = rt.config.rate_limit_service.as_ref()?;
    let (metrics, global_metrics) = (rr.rls, rr.global_limits.as_slice());
    if s.rls_token.is_none()
        && s.rls_result.is_none()
        && route.global_limits.iter().any(|l| l.lease != 0)
    {
        if let Some(step) = leased_limits(s, w, px, rt, route, rr) {
            return Some(step);
        }
        let unavailable = s.lease.as_ref().is_some_and(|p| p.unavailable);
        if unavailable {
            if let Some(step) = lease_failure(s, px, rt, route, rr) {
                return Some(step);
            }
        }
        let refused = s.lease.as_ref().is_some_and(|p| {
            p.statuses
                .iter()
                .any(|(i, st)| st.over && route.global_limits.get(*i).is_some_and(|l| !l.shadow))
        });
        if refused || rls::per_request_count(&route.global_limits) == 0 {
            let admitted = s.rl_admitted.take().unwrap_or_default();
            let v = merged_verdict(s, route, None);
            let d = ratelimit::apply_verdict(
                &host,
                rt.limiter.style,
                &route.name,
                &route.rate_limits,
                &route.global_limits,
                global_metrics,
                &admitted,
                &v,
            );
            if !d.allowed {
                give_back_leases(s, rt, &host);
            }
            return apply_decision(s, px, d, &route.name);
        }
    }
    let result = match s.rls_result.take() {
        Some(r) => r,
        None => {
            if let Some(token) = s.rls_token {
                // Still waiting: the worker resumes us on the answer or at
                // the deadline (registering again is harmless).
                return Some(Step::AwaitRls {
                    token,
                    deadline_ns: s.rls_deadline_ns,
                });
            }
            let msg = rls::request(
                &svc.domain,
                &route.name,
                &route.global_limits,
                &s.req,
                s.claims.as_deref(),
                rt.limiter.client_ip,
            );
            let trace = match rt.config.observability.trace_propagation {
                true => trace_headers(&s.req),
                false => Vec::new(),
            };
            let metadata: Vec<(&str, &[u8])> =
                trace.iter().map(|(n, v)| (*n, v.as_slice())).collect();
            // The call belongs to the root context (it outlives the stream:
            // an answer arriving after the client left is simply dropped,
            // and nothing is left behind: the module keeps no table of
            // calls besides the worker's list of waiting streams).
            match px.dispatch_grpc_call_from(
                w.root_context_id(),
                s.context_id,
                &svc.grpc_service,
                rls::SERVICE,
                rls::METHOD,
                &metadata,
                &msg,
                std::time::Duration::from_nanos(svc.timeout_ns),
            ) {
                Ok(token) => {
                    let now = host.now_nanos();
                    let deadline_ns = now.saturating_add(svc.timeout_ns + rls::GRACE_NS);
                    s.rls_token = Some(token);
                    s.rls_sent_ns = now;
                    s.rls_deadline_ns = deadline_ns;
                    return Some(Step::AwaitRls { token, deadline_ns });
                }
                Err(e) => Err(rls::CallError::Dispatch(e.0)),
            }
        }
    };
    // Envoy reports its own deadline as UNAVAILABLE ("upstream request
    // timeout"), not DEADLINE_EXCEEDED: an error saying so, or arriving
    // when the timeout has (nearly: Envoy's timer and this clock differ by
    // a few milliseconds) passed, is a timeout.
    let elapsed = host.now_nanos().saturating_sub(s.rls_sent_ns);
    let result = result.map_err(|e| match e {
        rls::CallError::Status(_, ref msg)
            if elapsed >= svc.timeout_ns / 10 * 9
                || msg
                    .as_deref()
                    .is_some_and(|m| m.to_ascii_lowercase().contains("timeout")) =>
        {
            rls::CallError::Timeout
        }
        e => e,
    });
    let admitted = s.rl_admitted.take().unwrap_or_default();
    let per_request = rls::per_request_count(&route.global_limits);
    let verdict = result.and_then(|body| rls::decode(&body, per_request));
    // What the service said is left of each global limit, by the route's
    // global limit index (the call carries only the limits without a
    // lease, in order), for the usage settlement's cap.
    let mut remaining: Vec<Option<u64>> = Vec::new();
    let d = match verdict {
        Ok(v) => {
            if route.global_limits.iter().any(|l| l.usage.is_some()) {
                let mut statuses = v.statuses.iter();
                remaining = route
                    .global_limits
                    .iter()
                    .map(|l| match l.lease {
                        0 => statuses
                            .next()
                            .and_then(|st| st.limit.map(|_| st.remaining)),
                        _ => None,
                    })
                    .collect();
            }
            let v = match s.lease.is_some() {
                true => merged_verdict(s, route, Some(v)),
                false => v,
            };
            let over = v.statuses.iter().any(|st| st.over);
            host.increment_metric(if over { metrics.over_limit } else { metrics.ok }, 1);
            for (name, value) in &v.request_headers {
                px.set_request_header(name, Some(value.as_bytes()));
                s.req.forward_header(name, Some(value.as_bytes()));
            }
            ratelimit::apply_verdict(
                &host,
                rt.limiter.style,
                &route.name,
                &route.rate_limits,
                &route.global_limits,
                global_metrics,
                &admitted,
                &v,
            )
        }
        Err(e) => {
            host.increment_metric(
                if e.is_timeout() {
                    metrics.timeout
                } else {
                    metrics.error
                },
                1,
            );
            w.warn_rls(
                &host,
                &route.name,
                &svc.cluster,
                &e,
                elapsed / 1_000_000,
                svc.deny_on_failure,
            );
            let deny = svc.deny_on_failure;
            host.increment_metric(
                if deny {
                    metrics.failure_mode_denied
                } else {
                    metrics.failure_mode_allowed
                },
                1,
            );
            let d = ratelimit::apply_failure(
                &host,
                rt.limiter.style,
                &route.name,
                &route.rate_limits,
                &route.global_limits,
                global_metrics,
                &admitted,
                deny,
            );
            if deny {
                give_back_leases(s, rt, &host);
                return Some(unavailable_reply(s, px, &route.name));
            }
            d
        }
    };
    if !d.allowed {
        give_back_leases(s, rt, &host);
    } else {
        s.usage = ratelimit::usage::Usage::begin(
            &route.rate_limits,
            &route.global_limits,
            &admitted.taken,
            true,
            &remaining,
        )
        .map(Box::new);
    }
    apply_decision(s, px, d, &route.name)
}

/// The route's leased global limits (`ratelimit::lease`): spends `cost`
/// from each one's lease, starting a refill when one runs low, and parks
/// the request while a lease it needs is on its way. `None` when every
/// leased limit is settled (`s.lease`).
fn leased_limits<P: Host + Stream>(
    s: &mut StreamState,
    w: &Worker,
    px: &P,
    rt: &Runtime,
    route: &Route,
    rr: &RouteRuntime,
) -> Option<Step> {
    let svc = rt.config.rate_limit_service.as_ref()?;
    let host = rt.host(px);
    let now = host.now_nanos();
    let ttl = svc.timeout_ns.saturating_add(rls::GRACE_NS);
    let mut progress = s.lease.take().unwrap_or_default();
    if progress.settled {
        s.lease = Some(progress);
        return None;
    }
    if s.park_deadline_ns != 0 && now >= s.park_deadline_ns {
        // Waited the call's deadline: no refill now, the failure mode decides.
        progress.unavailable = true;
        progress.settled = true;
        s.park_deadline_ns = 0;
        s.lease = Some(progress);
        return None;
    }
    let mut waiting = false;
    for (i, l) in route.global_limits.iter().enumerate() {
        let bit = 1u32 << (i as u32 % 32);
        if l.lease == 0 || progress.done & bit != 0 {
            continue;
        }
        let m = rr.leases.get(i).copied().unwrap_or(LeaseMetrics::NONE);
        let values: Vec<String> = l
            .key
            .iter()
            .map(|p| p.value(&s.req, s.claims.as_deref(), rt.limiter.client_ip))
            .collect();
        let id = lease::identity(&route.name, &l.name, &values);
        let r = lease::update(&host, rt.limiter.slots, &id, |st, replaced| {
            let (spend, dropped) = lease::spend(st, l.lease, l.cost, now, ttl);
            let write = replaced != 0
                || dropped != 0
                || !matches!(
                    spend,
                    lease::Spend::Denied { .. } | lease::Spend::Empty { refill: None, .. }
                );
            ((spend, dropped + replaced, lease::status(st, now)), write)
        });
        let (spend, dropped, status) = match r {
            Ok(r) => r,
            Err(e) => {
                log::warn!(
                    "meshguard: lease {}/{}: shared data failed: {}",
                    route.name,
                    l.name,
                    e.0
                );
                progress.done |= bit;
                progress.unavailable = true;
                continue;
            }
        };
        if dropped != 0 {
            host.increment_metric(m.dropped, dropped as i64);
        }
        let refill = match spend {
            lease::Spend::Admitted { refill, .. } => {
                host.increment_metric(m.hits, l.cost as i64);
                progress.done |= bit;
                progress.statuses.push((i, status));
                progress.spent.push((id.clone(), l.cost));
                refill
            }
            lease::Spend::Denied { retry_after_secs } => {
                progress.done |= bit;
                progress.statuses.push((
                    i,
                    rls::LimitStatus {
                        over: true,
                        remaining: 0,
                        reset_secs: Some(retry_after_secs),
                        ..status
                    },
                ));
                if !l.shadow {
                    // Refused whatever the other limits say.
                    waiting = false;
                    break;
                }
                None
            }
            lease::Spend::Empty {
                refill: None,
                failed: true,
                ..
            } => {
                progress.done |= bit;
                progress.unavailable = true;
                None
            }
            lease::Spend::Empty { refill, .. } => {
                waiting = true;
                refill
            }
        };
        if let Some(ask) = refill {
            send_refill(s, w, px, rt, route, i, id, values, ask, &m);
        }
    }
    if waiting {
        if s.park_until(now, ttl.saturating_add(rls::GRACE_NS)) {
            s.lease = Some(progress);
            return Some(Step::Park);
        }
        // The lease never came: the failure mode decides.
        progress.unavailable = true;
    }
    s.park_deadline_ns = 0;
    progress.settled = true;
    s.lease = Some(progress);
    None
}

/// Sends a lease refill asking for `ask` hits; the worker keeps it and
/// [`lease_answer`] records its answer. A refill that cannot be sent is
/// recorded as failed at once.
#[allow(clippy::too_many_arguments)]
fn send_refill<P: Host + Stream>(
    s: &StreamState,
    w: &Worker,
    px: &P,
    rt: &Runtime,
    route: &Route,
    limit: usize,
    identity: String,
    values: Vec<String>,
    ask: u64,
    m: &LeaseMetrics,
) {
    let (Some(svc), Some(l)) = (
        rt.config.rate_limit_service.as_ref(),
        route.global_limits.get(limit),
    ) else {
        return;
    };
    let host = rt.host(px);
    let msg = rls::lease_request(&svc.domain, &route.name, l, values, ask);
    match px.dispatch_grpc_call_from(
        w.root_context_id(),
        s.context_id,
        &svc.grpc_service,
        rls::SERVICE,
        rls::METHOD,
        &[],
        &msg,
        std::time::Duration::from_nanos(svc.timeout_ns),
    ) {
        Ok(token) => {
            let now = host.now_nanos();
            w.add_lease_call(
                px,
                token,
                LeaseCall {
                    rt: s.rt.clone(),
                    refill: LeaseRefill {
                        route: s.route,
                        limit,
                        identity,
                        asked: ask,
                        sent_ns: now,
                        deadline_ns: now.saturating_add(svc.timeout_ns + rls::GRACE_NS),
                    },
                },
            );
        }
        Err(e) => {
            host.increment_metric(m.failed, 1);
            w.warn_rls(
                &host,
                &route.name,
                &svc.cluster,
                &rls::CallError::Dispatch(e.0),
                0,
                svc.deny_on_failure,
            );
            let now = host.now_nanos();
            let _ = lease::update(&host, rt.limiter.slots, &identity, |st, _| {
                (lease::record(st, ask, l.cost, Err(()), now), true)
            });
        }
    }
}

/// Records the answer to a lease refill (or its failure) in shared data.
pub fn lease_answer<P: Host + Stream>(
    px: &P,
    w: &Worker,
    call: LeaseCall,
    result: Result<Vec<u8>, rls::CallError>,
) {
    let LeaseCall { rt, refill: call } = call;
    let rt = &rt;
    let host = rt.host(px);
    let (Some(route), Some(rr), Some(svc)) = (
        rt.config.routes.get(call.route),
        rt.route(call.route),
        rt.config.rate_limit_service.as_ref(),
    ) else {
        return;
    };
    let m = rr
        .leases
        .get(call.limit)
        .copied()
        .unwrap_or(LeaseMetrics::NONE);
    let now = host.now_nanos();
    let status = result.and_then(|body| rls::decode(&body, 1)).and_then(|v| {
        v.statuses
            .into_iter()
            .next()
            .ok_or_else(|| rls::CallError::BadResponse("no status".into()))
    });
    if let Err(e) = &status {
        host.increment_metric(m.failed, 1);
        w.warn_rls(
            &host,
            &route.name,
            &svc.cluster,
            e,
            now.saturating_sub(call.sent_ns) / 1_000_000,
            svc.deny_on_failure,
        );
    }
    let answer = status.as_ref().map_err(|_| ());
    let cost = route.global_limits.get(call.limit).map_or(1, |l| l.cost);
    match lease::update(&host, rt.limiter.slots, &call.identity, |st, replaced| {
        (
            (lease::record(st, call.asked, cost, answer, now), replaced),
            true,
        )
    }) {
        Ok((rec, replaced)) => {
            if rec.granted != 0 {
                host.increment_metric(m.obtained, 1);
            }
            if rec.dropped + replaced != 0 {
                host.increment_metric(m.dropped, (rec.dropped + replaced) as i64);
            }
        }
        Err(e) => {
            log::warn!(
                "meshguard: lease {}: shared data failed: {}",
                route.name,
                e.0
            );
            if answer.is_ok_and(|s| !s.over) {
                host.increment_metric(m.dropped, call.asked as i64);
            }
        }
    }
}

/// A leased limit could not be settled (no lease left and the service
/// unreachable): `failure_mode` decides. `Some` when it answers 503.
fn lease_failure<P: Host + Stream>(
    s: &mut StreamState,
    px: &P,
    rt: &Runtime,
    route: &Route,
    rr: &RouteRuntime,
) -> Option<Step> {
    let svc = rt.config.rate_limit_service.as_ref()?;
    let host = rt.host(px);
    if !svc.deny_on_failure {
        host.increment_metric(rr.rls.failure_mode_allowed, 1);
        return None;
    }
    host.increment_metric(rr.rls.failure_mode_denied, 1);
    let admitted = s.rl_admitted.take().unwrap_or_default();
    let _ = ratelimit::apply_failure(
        &host,
        rt.limiter.style,
        &route.name,
        &route.rate_limits,
        &route.global_limits,
        &rr.global_limits,
        &admitted,
        true,
    );
    give_back_leases(s, rt, &host);
    Some(unavailable_reply(s, px, &route.name))
}

/// The 503 of `failure_mode` `deny`.
fn unavailable_reply(s: &mut StreamState, px: &impl Stream, route: &str) -> Step {
    s.verdict
        .decide("unavailable", "ratelimit", "rate_limit_unavailable");
    let body = serde_json::json!({
        "error": "rate_limit_unavailable",
        "route": route,
        "retry_after": 1,
    })
    .to_string();
    s.json_reply(px, 503, &[("retry-after", "1")], &body)
}

/// The statuses of every global limit of the route: leased ones from the
/// request's progress (a leased limit left unsettled by an allowed failure
/// counts as admitted), the others from the service's verdict `v`.
fn merged_verdict(s: &StreamState, route: &Route, v: Option<rls::Verdict>) -> rls::Verdict {
    let (mut rest, response_headers, request_headers) = match v {
        Some(v) => (
            v.statuses.into_iter(),
            v.response_headers,
            v.request_headers,
        ),
        None => (Vec::new().into_iter(), Vec::new(), Vec::new()),
    };
    let leased = s.lease.as_ref();
    let statuses = route
        .global_limits
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let none = rls::LimitStatus {
                over: false,
                limit: None,
                remaining: 0,
                reset_secs: None,
            };
            if l.lease == 0 {
                return rest.next().unwrap_or(none);
            }
            leased
                .and_then(|p| p.statuses.iter().find(|(j, _)| *j == i))
                .map_or(none, |(_, st)| st.clone())
        })
        .collect();
    rls::Verdict {
        statuses,
        response_headers,
        request_headers,
    }
}

/// Gives back the hits a refused request spent from leases.
fn give_back_leases(s: &mut StreamState, rt: &Runtime, host: &impl Host) {
    let Some(p) = s.lease.as_mut() else {
        return;
    };
    let now = host.now_nanos();
    for (id, cost) in std::mem::take(&mut p.spent) {
        let _ = lease::update(host, rt.limiter.slots, &id, |st, replaced| {
            if replaced == 0 {
                lease::give_back(st, cost, now);
            }
            ((), replaced == 0)
        });
    }
}

/// A `PURGE` on a route with `cache.purge`: answered by meshguard, never
/// forwarded. Allowed only to a token the route's JWT stage verified whose
/// claims satisfy every `purge.claims` rule (200 `{"purged": n}`); anyone
/// else, with a token or without, gets 403.
fn purge<P: Host + Stream>(s: &mut StreamState, px: &P, host: &impl Host, cr: &CacheRoute) -> Step {
    let allowed = match (&cr.policy.purge, &s.claims) {
        (Some(rules), Some(claims)) => rules.allow(claims),
        _ => false,
    };
    if !allowed {
        cache::purge_denied(host, cr);
        s.verdict.decide("denied", "cache", "purge_denied");
        let body = serde_json::json!({
            "error": "forbidden",
            "reason": "PURGE needs a verified token satisfying the route's cache.purge.claims",
        })
        .to_string();
        return s.json_reply(px, 403, &[], &body);
    }
    // The bodies are built by hand: `serde_json::json!` costs ~2 KB of
    // wasm per object.
    let body = match cache::purge_request(host, cr, &s.req) {
        cache::PurgeOutcome::Url(n) => format!("{{\"purged\":{n}}}"),
        cache::PurgeOutcome::Prefix(p) => {
            let mut b = String::from("{\"purged_prefix\":");
            json_str(&mut b, &p);
            b.push('}');
            b
        }
        cache::PurgeOutcome::Tags(t) => {
            let mut b = String::from("{\"purged_tags\":[");
            for (i, tag) in t.iter().enumerate() {
                if i > 0 {
                    b.push(',');
                }
                json_str(&mut b, tag);
            }
            b.push_str("]}");
            b
        }
        cache::PurgeOutcome::BadRequest(why) => {
            s.verdict.decide("denied", "cache", "purge_invalid");
            let mut b = String::from("{\"error\":\"bad_request\",\"reason\":");
            json_str(&mut b, why);
            b.push('}');
            return s.json_reply(px, 400, &[], &b);
        }
        cache::PurgeOutcome::Unavailable => {
            s.verdict
                .decide("unavailable", "cache", "purge_unavailable");
            let b = "{\"error\":\"purge_unavailable\"}";
            return s.json_reply(px, 503, &[("retry-after", "1")], b);
        }
    };
    s.verdict.decide("purged", "cache", "purged");
    s.json_reply(px, 200, &[], &body)
}

/// Appends `v` as a JSON string.
fn json_str(out: &mut String, v: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    for c in v.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 => {
                out.push_str("\\u00");
                for d in [(c as usize) >> 4, (c as usize) & 15] {
                    out.push(char::from(HEX.get(d).copied().unwrap_or(b'0')));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The breaker refused the request: a stored stale response that
/// `stale-if-error` / `stale_on_error` allows answers instead of the 503
/// (`Some`); else the cache fill lock is released (`None`).
fn stale_when_circuit_open<P: Host + Stream>(s: &mut StreamState, px: &P) -> Option<Step> {
    let rt = s.rt.clone();
    let stale = match (s.cache.take(), rt.config.routes.get(s.route)) {
        (Some(mut ctx), Some(route)) => cache_route(&rt, route, s.route)
            .and_then(|cr| cache::on_circuit_open(&rt.host(px), &cr, &mut ctx)),
        _ => None,
    };
    s.capture = None;
    stale.map(|resp| send_cached(s, px, resp, "stale_circuit_open", SendAs::LocalReply))
}

/// Releases the cache fill lock of a request that will not be stored.
pub fn abandon_cache<P: Host + Stream>(s: &mut StreamState, px: &P) {
    let rt = s.rt.clone();
    if let (Some(mut ctx), Some(route)) = (s.cache.take(), rt.config.routes.get(s.route)) {
        if let Some(cr) = cache_route(&rt, route, s.route) {
            cache::abandon(&rt.host(px), &cr, &mut ctx);
        }
    }
    s.capture = None;
}

/// Records the outcome of a request the breaker admitted, once. Called at
/// response headers (`status` known), or at the end of the stream when no
/// response came (reset, client gone).
pub fn record_breaker<P: Host + Stream>(
    s: &mut StreamState,
    px: &P,
    status: Option<u32>,
    flags: u64,
) {
    record_outcome(s, px, |policy, ticket, now| {
        let upstream_failure = breaker::upstream_failure_from_response_flags(flags);
        let cancelled = breaker::client_cancelled_from_response_flags(flags)
            || (status.is_none() && !upstream_failure);
        let elapsed = match policy.slow_call_ns {
            Some(_) => now().saturating_sub(ticket.started_ns),
            None => 0,
        };
        breaker::classify(policy, status, upstream_failure, elapsed, false, cancelled)
    });
}

/// Records the outcome of a gRPC call the breaker admitted, once (see
/// `breaker::classify_grpc`): `status` is its `grpc-status` (`None`: the
/// response ended without one), `flags` Envoy's response flags when read.
pub fn record_grpc<P: Host + Stream>(
    s: &mut StreamState,
    px: &P,
    status: Option<grpc::Status>,
    flags: u64,
) {
    record_outcome(s, px, |policy, ticket, now| {
        let upstream_failure = breaker::upstream_failure_from_response_flags(flags);
        let cancelled = breaker::client_cancelled_from_response_flags(flags);
        let elapsed = match (policy.slow_call_ns, ticket.grpc_headers_elapsed_ns) {
            (None, _) => 0,
            (Some(_), Some(at_headers)) => at_headers,
            (Some(_), None) => now().saturating_sub(ticket.started_ns),
        };
        breaker::classify_grpc(policy, status, upstream_failure, elapsed, cancelled)
    });
}

/// The response headers of a gRPC call (HTTP 200) the breaker admitted:
/// a `grpc-status` among them (trailers-only) decides now; none, and the
/// response goes on, waits for the trailers; none at the end of the stream
/// is a broken response. Envoy's flags are read only for a status that is
/// not OK (an upstream failure Envoy answered itself). A gRPC-Web response
/// carries its trailers in its body, which meshguard does not parse: without
/// a `grpc-status` header it is judged as HTTP (a 200).
fn grpc_outcome_at_headers<P: Host + Stream>(
    s: &mut StreamState,
    px: &P,
    end_of_stream: bool,
    web: bool,
) {
    match px.response_header("grpc-status") {
        Some(v) => {
            let status = grpc::parse_status(&v);
            let flags = match status {
                grpc::Status::Code(grpc::Code::OK) => 0,
                _ => px.property_u64(&["response", "flags"]).unwrap_or(0),
            };
            record_grpc(s, px, Some(status), flags);
        }
        None if web => record_breaker(s, px, Some(200), 0),
        None if end_of_stream => record_grpc(s, px, None, 0),
        None => {
            let rt = s.rt.clone();
            let slow_call = rt
                .config
                .routes
                .get(s.route)
                .and_then(|r| r.breaker.as_ref())
                .and_then(|p| p.slow_call_ns);
            if let Some(ticket) = s.breaker.as_mut() {
                ticket.grpc_headers_elapsed_ns = Some(match slow_call {
                    Some(_) => rt.host(px).now_nanos().saturating_sub(ticket.started_ns),
                    None => 0,
                });
            }
        }
    }
}

/// Response trailers: the outcome of a gRPC call waiting for them. Read
/// only for such a call; trailers pass unchanged.
pub fn on_response_trailers<P: Host + Stream>(s: &mut StreamState, px: &P) {
    if s.breaker
        .as_ref()
        .is_some_and(|t| t.grpc_headers_elapsed_ns.is_some())
    {
        let status = px
            .response_trailer("grpc-status")
            .map(|v| grpc::parse_status(&v));
        record_grpc(s, px, status, 0);
    }
}

/// Takes the stream's breaker ticket and records what `judge` makes of it
/// (nothing: a probe gives its slot back).
fn record_outcome<P: Host + Stream>(
    s: &mut StreamState,
    px: &P,
    judge: impl FnOnce(
        &breaker::BreakerPolicy,
        &BreakerTicket,
        &dyn Fn() -> u64,
    ) -> Option<breaker::Outcome>,
) {
    let Some(ticket) = s.breaker.take() else {
        return;
    };
    let rt = s.rt.clone();
    let Some((route, policy, metrics)) = rt
        .config
        .routes
        .get(s.route)
        .zip(rt.route(s.route))
        .and_then(|(r, rr)| Some((r, r.breaker.as_ref()?, &rr.breaker)))
    else {
        return;
    };
    let key = ticket.key.as_deref().unwrap_or(&route.name);
    // At most one clock reading, shared by the elapsed time and the
    // breaker's own update, and none when neither needs it (no `slow_call`,
    // a success without the ratio rule).
    let batched = rt.host(px);
    let host = OneClock::new(&batched);
    match judge(policy, &ticket, &|| host.now_nanos()) {
        Some(outcome) => breaker::record(&host, policy, metrics, key, outcome, ticket.probe),
        None if ticket.probe.probe => breaker::release(&host, metrics, key, ticket.probe),
        None => {}
    }
}

/// Response headers from upstream (or from Envoy for upstream failures).
/// Returns true when meshguard replaced the response with its own.
pub fn on_response_headers<P: Host + Stream>(
    s: &mut StreamState,
    px: &P,
    end_of_stream: bool,
) -> bool {
    // Status and flags are two host calls: only the breaker and the cache
    // need them, and the flags only on responses that may be Envoy's own
    // reply to an upstream failure.
    let (status, flags) = if s.breaker.is_some() || s.cache.is_some() {
        let status = px.response_header(":status").and_then(|v| {
            std::str::from_utf8(&v)
                .ok()
                .and_then(|t| t.parse::<u32>().ok())
        });
        let flags = if breaker::response_flags_matter(status) {
            px.property_u64(&["response", "flags"]).unwrap_or(0)
        } else {
            0
        };
        (status, flags)
    } else {
        (None, 0)
    };
    // A gRPC call answers 200 whatever its outcome: its `grpc-status`
    // decides (any other status is judged as HTTP).
    // (The request headers are looked at only then.)
    let grpc = match (&s.breaker, status) {
        (Some(_), Some(200)) => s.grpc_kind(),
        _ => None,
    };
    match grpc {
        Some(kind) => grpc_outcome_at_headers(s, px, end_of_stream, kind != grpc::Kind::Grpc),
        None => record_breaker(s, px, status, flags),
    }

    let mut cache_status: Option<String> = None;
    let rt = s.rt.clone();
    if let (Some(mut ctx), Some(route)) = (s.cache.take(), rt.config.routes.get(s.route)) {
        if let Some(cr) = cache_route(&rt, route, s.route) {
            let host = rt.host(px);
            if breaker::upstream_failure_from_response_flags(flags) {
                if let Some(stale) = cache::on_upstream_failure(&host, &cr, &mut ctx) {
                    send_cached(s, px, stale, "stale_if_error", SendAs::LocalReply);
                    return true;
                }
                cache_status = Some(ctx.cache_status());
            } else {
                let headers = px.response_headers();
                match cache::on_response_headers(
                    &host,
                    &cr,
                    &mut ctx,
                    status.unwrap_or(0),
                    &headers,
                ) {
                    ResponseDecision::Replace { response } => {
                        send_cached(s, px, response, "revalidated", SendAs::LocalReply);
                        return true;
                    }
                    ResponseDecision::Store {
                        max_body,
                        cache_status: cs,
                    } => {
                        cache_status = Some(cs);
                        if end_of_stream {
                            cache::store(&host, &cr, &mut ctx, status.unwrap_or(0), &headers, &[]);
                        } else {
                            s.capture = Some(Capture {
                                body: Vec::new(),
                                max_body,
                                status: status.unwrap_or(0),
                                headers,
                            });
                            s.cache = Some(ctx);
                        }
                    }
                    ResponseDecision::DontStore { cache_status: cs } => cache_status = Some(cs),
                    ResponseDecision::Refetch => return refetch(s, px, &host, &cr, *ctx),
                }
            }
        }
    }
    let rl = s.rl_headers.zip(rt.config.routes.get(s.route));
    add_response_headers(px, rl, &s.response_headers, &s.service_headers);
    if let Some(cs) = cache_status {
        // A list field: our member goes after the upstream's (see
        // `add_response_headers`), without reading theirs first.
        px.add_response_header("cache-status", cs.as_bytes());
        if rt.config.observability.filter_state {
            // `meshguard; fwd=uri-miss; stored` -> `fwd=uri-miss;stored`.
            let member = cs.strip_prefix("meshguard; ").unwrap_or(&cs);
            s.verdict.cache = Some(member.replace("; ", ";"));
            s.publish(px);
        }
    }
    false
}

/// A revalidation's 304 named another representation (see
/// `cache::refetch`): the request goes again, unconditionally, to the
/// route's cluster as an HTTP call owned by the stream; the response stays
/// paused until [`on_refetch_answer`]. Returns true (the response is
/// replaced either way).
fn refetch<P: Host + Stream>(
    s: &mut StreamState,
    px: &P,
    host: &impl Host,
    cr: &CacheRoute,
    mut ctx: cache::MissContext,
) -> bool {
    let cluster = px.property_str(&["xds", "cluster_name"]);
    // The request headers as forwarded, kept at the revalidation (the host
    // gives no request headers once the request went on).
    let headers = s
        .revalidation_request
        .take()
        .and_then(|raw| crate::host::header_map::decode_pairs(&raw))
        .and_then(|h| cache::refetch_request(&h));
    let sent = match (cluster, headers) {
        (Some(cluster), Some(headers)) => {
            let pairs: Vec<(&str, &str)> = headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            px.dispatch_http_call(
                &cluster,
                &pairs,
                None,
                std::time::Duration::from_millis(cache::REFETCH_TIMEOUT_MS),
            )
            .ok()
        }
        _ => None,
    };
    match sent {
        Some(token) => {
            s.refetch_token = Some(token);
            s.cache = Some(Box::new(ctx));
        }
        None => {
            log::warn!("meshguard: cache: could not send the full request after a mismatched 304");
            let resp = cache::on_refetch(host, cr, &mut ctx, None);
            send_cached(s, px, resp, "refetch_failed", SendAs::LocalReply);
        }
    }
    true
}

/// The answer of the stream's full request (see [`refetch`]), read by
/// the root (`None`: failed, or over the cache's object size): sends what
/// the cache makes of it. Other tokens are ignored.
pub fn on_refetch_answer<P: Host + Stream>(
    s: &mut StreamState,
    px: &P,
    token: u32,
    answer: Option<cache::refetch::FullResponse>,
) {
    if s.refetch_token != Some(token) {
        return;
    }
    s.refetch_token = None;
    let rt = s.rt.clone();
    let (Some(mut ctx), Some(route)) = (s.cache.take(), rt.config.routes.get(s.route)) else {
        return;
    };
    let Some(cr) = cache_route(&rt, route, s.route) else {
        return;
    };
    let ok = answer.is_some();
    let resp = cache::on_refetch(&rt.host(px), &cr, &mut ctx, answer);
    send_cached(
        s,
        px,
        resp,
        if ok { "refetched" } else { "refetch_failed" },
        SendAs::LocalReply,
    );
}

/// Adds meshguard's own response headers (rate-limit headers, ...) and the
/// ones the rate limit service asked for.
///
/// `RateLimit`, `RateLimit-Policy` (IETF httpapi draft) and `Cache-Status`
/// (RFC 9211) are structured-field Lists: one member per quota policy or
/// per cache. Ours is added as a field line of its own, after any the
/// upstream sent, which a recipient combines into one list (RFC 9110
/// 5.3): the upstream's own members are kept, and adding costs ~1.6 us
/// less per header than replacing (measured, twins). The single-valued
/// legacy `X-RateLimit-*` fields replace the upstream's.
pub fn add_response_headers(
    io: &impl Stream,
    rl: Option<(ratelimit::HeaderValues, &Route)>,
    own: &[(&'static str, String)],
    service: &[(String, String)],
) {
    if let Some((v, route)) = rl {
        v.for_each(&route.rate_limits, |name, value| {
            if is_list_field(name) {
                io.add_response_header(name, value);
            } else {
                io.set_response_header(name, value);
            }
        });
    }
    for (name, value) in own {
        if is_list_field(name) {
            io.add_response_header(name, value.as_bytes());
        } else {
            io.set_response_header(name, value.as_bytes());
        }
    }
    for (name, value) in service {
        io.add_response_header(name, value.as_bytes());
    }
}

/// Response fields whose value is a list of members (see
/// [`add_response_headers`]). Names are lower case.
pub fn is_list_field(name: &str) -> bool {
    matches!(name, "ratelimit" | "ratelimit-policy" | "cache-status")
}

/// Sends a stored response as meshguard's reply: a cache hit (`how`:
/// [`SendAs::Stored`], sent as the origin's where the host can), or
/// instead of the upstream's response (revalidated 304, stale-if-error:
/// a local reply; the upstream's response is already being encoded). Header values
/// go to the host as the bytes stored (Envoy accepted them from the origin;
/// they need not be UTF-8).
fn send_cached(
    s: &mut StreamState,
    io: &impl Stream,
    resp: cache::CachedResponse,
    reason: &'static str,
    how: SendAs,
) -> Step {
    s.verdict.decide("cached", "cache", reason);
    s.verdict.cache = Some(reason.to_string());
    s.reply_map(io, resp.status, resp.headers, &resp.body, how)
}

/// A response body chunk passing through: copied for the cache, never held.
pub fn on_response_body<P: Host + Stream>(
    s: &mut StreamState,
    px: &P,
    size: usize,
    end_of_stream: bool,
) {
    let Some(cap) = s.capture.as_mut() else {
        return;
    };
    if size > 0 {
        if cap.body.len() + size > cap.max_body {
            // Too big to store (no Content-Length said so up front): release
            // the fill lock as "pass" so waiting requests go upstream
            // together instead of queueing one by one.
            let rt = s.rt.clone();
            if let (Some(mut ctx), Some(route)) = (s.cache.take(), rt.config.routes.get(s.route)) {
                if let Some(cr) = cache_route(&rt, route, s.route) {
                    cache::abandon_too_big(&rt.host(px), &cr, &mut ctx);
                }
            }
            s.capture = None;
            return;
        }
        match px.response_body(0, size) {
            Some(chunk) => cap.body.extend_from_slice(&chunk),
            None => {
                abandon_cache(s, px);
                return;
            }
        }
    }
    if end_of_stream {
        let rt = s.rt.clone();
        if let (Some(cap), Some(mut ctx), Some(route)) = (
            s.capture.take(),
            s.cache.take(),
            rt.config.routes.get(s.route),
        ) {
            if let Some(cr) = cache_route(&rt, route, s.route) {
                cache::store(
                    &rt.host(px),
                    &cr,
                    &mut ctx,
                    cap.status,
                    &cap.headers,
                    &cap.body,
                );
            }
        }
    }
}

/// The stream ended: record a breaker outcome still pending, release locks.
/// `context_alive`: the stream's context is the effective one (its end
/// passed through the filter), so its response flags can be read; a
/// stream Envoy already deleted had no response through the filter and
/// counts as cancelled.
pub fn on_stream_end<P: Host + Stream>(s: &mut StreamState, px: &P, context_alive: bool) {
    if let Some(ticket) = &s.breaker {
        let awaiting_grpc_status = ticket.grpc_headers_elapsed_ns.is_some();
        let flags = if context_alive {
            px.property_u64(&["response", "flags"]).unwrap_or(0)
        } else {
            0
        };
        if awaiting_grpc_status && context_alive {
            // A gRPC response that ended without trailers: broken (unless
            // the client left).
            record_grpc(s, px, None, flags);
        } else {
            // Gone without its end passing the filter: for a gRPC stream
            // too, a cancel (see `dispatch`).
            record_breaker(s, px, None, flags);
        }
    }
    abandon_cache(s, px);
}

/// Response headers of a request with usage-based limits: header sources
/// are read; settles when nothing more is to be read.
pub fn usage_headers<P: Host + Stream>(s: &mut StreamState, w: &Worker, px: &P, end: bool) {
    if s.usage.is_none() {
        return;
    }
    let rt = s.rt.clone();
    let (Some(u), Some(route)) = (s.usage.as_mut(), rt.config.routes.get(s.route)) else {
        return;
    };
    u.on_headers(&route.rate_limits, &route.global_limits, |name| {
        px.response_header(name)
    });
    if end || !u.wants_body() {
        settle_usage(s, w, px);
    }
}

/// A response body chunk of a request with usage-based limits: scanned as
/// it passes (never held); settles at the end of the response.
pub fn usage_body<P: Host + Stream>(
    s: &mut StreamState,
    w: &Worker,
    px: &P,
    size: usize,
    end: bool,
) {
    if s.usage.is_none() {
        return;
    }
    let rt = s.rt.clone();
    let (Some(u), Some(route)) = (s.usage.as_mut(), rt.config.routes.get(s.route)) else {
        return;
    };
    if size > 0 && u.wants_body() {
        if let Some(chunk) = px.response_body(0, size) {
            u.on_body(&route.rate_limits, &route.global_limits, &chunk);
        }
    }
    if end {
        settle_usage(s, w, px);
    }
}

/// Settles the usage-based limits of a request (once): local buckets at
/// once, the extra of global limits reported to the rate limit service
/// (the answer is not waited for, and ignored).
pub fn settle_usage<P: Host + Stream>(s: &mut StreamState, w: &Worker, px: &P) {
    let Some(mut u) = s.usage.take() else {
        return;
    };
    if s.local_reply {
        return; // answered by meshguard (a cache hit...): the estimate stands
    }
    let rt = s.rt.clone();
    let (Some(route), Some(rr)) = (rt.config.routes.get(s.route), rt.route(s.route)) else {
        return;
    };
    let host = rt.host(px);
    let extra = ratelimit::usage::settle(
        &host,
        &route.name,
        &route.rate_limits,
        &route.global_limits,
        &rr.usage,
        &mut u,
    );
    let Some(svc) = rt
        .config
        .rate_limit_service
        .as_ref()
        .filter(|_| !extra.is_empty())
    else {
        return;
    };
    let msg = ratelimit::usage::report(
        &svc.domain,
        &route.name,
        &route.global_limits,
        &extra,
        &s.req,
        s.claims.as_deref(),
        rt.limiter.client_ip,
    );
    if let Err(e) = px.dispatch_grpc_call_from(
        w.root_context_id(),
        s.context_id,
        &svc.grpc_service,
        rls::SERVICE,
        rls::METHOD,
        &[],
        &msg,
        std::time::Duration::from_nanos(svc.timeout_ns),
    ) {
        log::warn!(
            "meshguard: usage report of route {} to the rate limit service failed: {}",
            route.name,
            e.0
        );
        for (i, _) in &extra {
            if let Some(Some(m)) = rr.usage.global.get(*i) {
                host.increment_metric(m.failures, 1);
            }
        }
    }
}
