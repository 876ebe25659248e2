//! The response side: what to do with the upstream response (store,
//! refresh from a 304, serve stale on error), writing entries, abandoning
//! a fill.

use super::directives::{self, ResponseDirectives};
use super::entry::Entry;
use super::storable::SetCookie;
use super::store::{Store, WriteOutcome};
use super::{etag, freshness, headers, storable, vary};
use crate::cache::key::key_path;
use crate::cache::lookup::release;
use crate::cache::lookup::release_pass;
use crate::cache::lookup::Mode;
use crate::cache::respond::entry_times;
use crate::cache::respond::fwd_status;
use crate::cache::respond::respond;
use crate::cache::respond::NS;
use crate::cache::uri_hash;
use crate::cache::CacheRoute;
use crate::cache::CachedResponse;
use crate::cache::MissContext;
use crate::host::Host;
use crate::request::strip_port;

/// What to do with the upstream response.
#[derive(Debug)]
pub enum ResponseDecision {
    /// Send this instead of the upstream response.
    Replace { response: CachedResponse },
    /// Copy up to `max_body` body bytes, then call [`store()`].
    Store {
        max_body: usize,
        cache_status: String,
    },
    /// Pass the response through, with this `Cache-Status`.
    DontStore { cache_status: String },
    /// The origin's 304 names another representation than the stored one
    /// and does not answer the client's own conditions: pause the
    /// response, send the request again unconditionally (see
    /// [`refetch`](super::refetch)) and answer with [`super::on_refetch`].
    Refetch,
}

/// Path of a `Location` / `Content-Location` value when it names the same
/// host as the request.
pub(crate) fn same_host_path(value: &[u8], authority: &str) -> Option<String> {
    let s = std::str::from_utf8(value).ok()?.trim();
    if s.starts_with('/') && !s.starts_with("//") {
        return Some(s.to_string());
    }
    let lower = s.get(..8).map(str::to_ascii_lowercase).unwrap_or_default();
    let rest = if lower.starts_with("https://") {
        &s[8..]
    } else if lower.starts_with("http://") {
        &s[7..]
    } else {
        return None;
    };
    let (auth, path) = match rest.find(['/', '?', '#']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    strip_port(auth)
        .eq_ignore_ascii_case(strip_port(authority))
        .then_some(path)
}

pub(crate) fn serve_stale_if_error(
    host: &impl Host,
    route: &CacheRoute,
    ctx: &MissContext,
    upstream_status: Option<u32>,
) -> Option<CachedResponse> {
    serve_stale_instead(host, route, ctx, upstream_status, "stale-if-error")
}

/// The stored stale response, if `stale-if-error` (the response's, the
/// request's or the route's `stale_on_error`) allows it, with `detail`.
pub(crate) fn serve_stale_instead(
    host: &impl Host,
    route: &CacheRoute,
    ctx: &MissContext,
    upstream_status: Option<u32>,
    detail: &'static str,
) -> Option<CachedResponse> {
    let stale = ctx.stale.as_ref()?;
    let now = host.now_nanos();
    let (cc, life, age) = entry_times(stale, route.policy, now);
    if !freshness::stale_if_error_allows(
        life,
        age,
        &cc,
        &ctx.req_cc,
        route.policy.stale_on_error_secs,
    ) {
        return None;
    }
    host.increment_metric(route.metrics.hit, 1);
    let ttl = life as i64 - age as i64;
    let status = fwd_status(ctx.fwd, upstream_status, false, Some(detail), Some(ttl));
    Some(respond(
        stale,
        &ctx.request_headers,
        age,
        now,
        status.into_bytes(),
    ))
}

/// Whether stored responses keep their `Set-Cookie` lines.
fn keeps_cookies(route: &CacheRoute) -> bool {
    route.policy.set_cookie == SetCookie::Store
}

/// Step 2, on the upstream response headers (see the module docs).
pub fn on_response_headers(
    host: &impl Host,
    route: &CacheRoute,
    ctx: &mut MissContext,
    status: u32,
    response: &[(String, Vec<u8>)],
) -> ResponseDecision {
    let store = Store::new(host, route.store);
    let now = host.now_nanos();
    ctx.response_time_ns = now;
    match ctx.mode {
        Mode::Bypass => {
            return ResponseDecision::DontStore {
                cache_status: fwd_status(ctx.fwd, Some(status), false, ctx.detail, None),
            }
        }
        Mode::Invalidate => {
            if (200..400).contains(&status) {
                let mut n = store.invalidate(&ctx.uri);
                for name in ["location", "content-location"] {
                    if let Some(p) = headers::first(response, name)
                        .and_then(|v| same_host_path(v, &ctx.authority))
                    {
                        let path = key_path(&p, route.policy.ignore_query);
                        n += store.invalidate(&uri_hash(route.name, &ctx.authority, path));
                    }
                }
                if n > 0 {
                    log::debug!("meshguard: cache: {}: invalidated {n} entries", route.name);
                }
            }
            return ResponseDecision::DontStore {
                cache_status: fwd_status(ctx.fwd, Some(status), false, None, None),
            };
        }
        Mode::Fill | Mode::Revalidate => {}
    }
    if matches!(status, 500 | 502 | 503 | 504) {
        if let Some(r) = serve_stale_if_error(host, route, ctx, Some(status)) {
            release_pass(&store, ctx);
            return ResponseDecision::Replace { response: r };
        }
    }
    if status == 304 && ctx.mode == Mode::Revalidate {
        let replaced = revalidated(host, &store, route, ctx, response);
        release(&store, ctx);
        return match replaced {
            Some(r) => ResponseDecision::Replace { response: r },
            // The 304 is for another representation than the stored one
            // (4.3.4): the entry was dropped. The 304 answers the cache's
            // validators, not the client's: it goes through only when the
            // client's own conditions make it valid for the client; for
            // anyone else the full response is fetched (a bodiless 304 to
            // an unconditional GET would be taken for an empty
            // representation).
            None => {
                if etag::answer_304(&ctx.request_headers, response, now / NS, now / NS) {
                    ResponseDecision::DontStore {
                        cache_status: fwd_status(
                            ctx.fwd,
                            Some(304),
                            false,
                            Some("validator-mismatch"),
                            None,
                        ),
                    }
                } else {
                    ResponseDecision::Refetch
                }
            }
        };
    }
    match storable_now(route, ctx, status, response, now) {
        Ok(max_body) => ResponseDecision::Store {
            max_body,
            cache_status: fwd_status(ctx.fwd, Some(status), true, ctx.detail, None),
        },
        Err(why) => {
            if let Some(g) = ctx.lock.take() {
                store.unlock_pass(g);
            }
            ResponseDecision::DontStore {
                cache_status: fwd_status(
                    ctx.fwd,
                    Some(status),
                    false,
                    Some(ctx.detail.unwrap_or(why)),
                    None,
                ),
            }
        }
    }
}

/// All storage checks that the headers allow; `Ok(max body bytes)`.
pub(crate) fn storable_now(
    route: &CacheRoute,
    ctx: &MissContext,
    status: u32,
    response: &[(String, Vec<u8>)],
    now: u64,
) -> Result<usize, &'static str> {
    if ctx.head {
        return Err("head");
    }
    let original = response;
    // RFC 9213: a targeted field present replaces Cache-Control / Expires.
    let targeted = directives::as_targeted(original, &route.policy.targeted);
    let response: &[(String, Vec<u8>)] = targeted.as_deref().unwrap_or(original);
    let cc = ResponseDirectives::parse(response);
    let vary_names = storable::check(
        status,
        response,
        &cc,
        ctx.request_facts(),
        &route.policy.vary_allowlist,
        route.policy.set_cookie,
    )?;
    if vary_names.iter().any(|n| ctx.unkept_vary.contains(n)) {
        return Err("vary-request-too-big");
    }
    // A response to a request with credentials may be that user's own: it
    // is not given a lifetime the origin did not (unless `public`).
    let configured = route.policy.freshness();
    let personal = ctx.credentials && !cc.public;
    let cfg = if personal {
        freshness::FreshnessConfig::default()
    } else {
        configured
    };
    let (life, _) = freshness::lifetime(status, response, &cc, now / NS, cfg);
    let has_validator = headers::has(response, "etag") || headers::has(response, "last-modified");
    let explicit = cc.has_explicit_max_age() || headers::has(response, "expires") || cc.no_cache;
    if life == 0 && !(has_validator && explicit) {
        let denied =
            personal && freshness::lifetime(status, response, &cc, now / NS, configured).0 > 0;
        return Err(if denied {
            "credentials"
        } else {
            "no-freshness"
        });
    }
    let skeleton = Entry {
        status: 0,
        vary_names,
        headers: storable::strip_for_storage(original, keeps_cookies(route)),
        ..Entry::default()
    };
    let max = usize::try_from(route.store.max_entry_bytes).unwrap_or(usize::MAX);
    let max_body = max.checked_sub(skeleton.encoded_len()).ok_or("too-big")?;
    let declared = headers::first(original, "content-length")
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|s| s.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > max_body as u64) {
        return Err("too-big");
    }
    Ok(max_body)
}

/// Refreshes the stored entry from a 304 (RFC 9111 4.3.4) and builds the
/// response to send. `None` when the 304 does not match the stored entry.
pub(crate) fn revalidated(
    host: &impl Host,
    store: &Store<'_, impl Host>,
    route: &CacheRoute,
    ctx: &MissContext,
    response: &[(String, Vec<u8>)],
) -> Option<CachedResponse> {
    let stale = ctx.stale.as_ref()?;
    // A 304 naming a different strong validator is for another representation.
    if let (Some(new), Some(old)) = (
        headers::first(response, "etag").and_then(etag::parse),
        headers::first(&stale.headers, "etag").and_then(etag::parse),
    ) {
        if !etag::weak_eq(&new, &old) {
            store.drop_uri(&ctx.uri);
            return None;
        }
    }
    // Without an ETag, a Last-Modified other than the stored one names
    // another representation too.
    if !headers::has(response, "etag") {
        let lm = |h: &[(String, Vec<u8>)]| {
            headers::first(h, "last-modified").map(|v| super::httpdate::parse(v).ok_or(()))
        };
        if let (Some(new), Some(old)) = (lm(response), lm(&stale.headers)) {
            if new != old {
                store.drop_uri(&ctx.uri);
                return None;
            }
        }
    }
    let mut merged = stale.clone();
    // The stored Age described the old response; the 304 brings its own.
    merged.headers.retain(|(n, _)| n != "age");
    // Every field of the 304 replaces the stored ones of that name (3.2),
    // except Content-Length (the stored body's) and what is never stored.
    let update: Vec<(String, Vec<u8>)> =
        storable::strip_for_storage(response, keeps_cookies(route))
            .into_iter()
            .filter(|(n, _)| n != "content-length")
            .collect();
    for (name, _) in &update {
        merged.headers.retain(|(n, _)| n != name);
    }
    merged.headers.extend(update);
    merged.request_time_ns = ctx.request_time_ns;
    merged.response_time_ns = ctx.response_time_ns;
    merged.control =
        directives::targeted_field(&merged.headers, &route.policy.targeted).map(str::to_string);
    let targeted = directives::as_targeted(&merged.headers, &route.policy.targeted);
    let judged: &[(String, Vec<u8>)] = targeted.as_deref().unwrap_or(&merged.headers);
    let cc = ResponseDirectives::parse(judged);
    let keep = storable::check(
        merged.status as u32,
        judged,
        &cc,
        ctx.request_facts(),
        &route.policy.vary_allowlist,
        route.policy.set_cookie,
    )
    .is_ok()
        && merged.encoded_len() as u64 <= route.store.max_entry_bytes;
    let stored = keep && write_fill(host, route, store, ctx, &merged);
    if !keep {
        store.drop_uri(&ctx.uri);
    }
    let now = host.now_nanos();
    let (_, life, age) = entry_times(&merged, route.policy, now);
    let ttl = life as i64 - age as i64;
    // `fwd=stale`, or `fwd=request` when the entry was fresh but the
    // request's own directives (`no-cache`, `max-age`...) sent it upstream.
    let status = fwd_status(ctx.fwd, Some(304), stored, None, Some(ttl));
    Some(respond(
        &merged,
        &ctx.request_headers,
        age,
        now,
        status.into_bytes(),
    ))
}

/// Writes the entry a request filled (or refreshed), unless an unsafe
/// method invalidated its URI since the request was looked up: the
/// response may predate the change. Checked before writing, and after
/// (an invalidation in between drops what was written; a later one drops
/// it itself), see the [`store`](mod@store) module.
pub(crate) fn write_fill(
    host: &impl Host,
    route: &CacheRoute,
    store: &Store<'_, impl Host>,
    ctx: &MissContext,
    entry: &Entry,
) -> bool {
    let invalidated = || store.invalidated_since(&ctx.uri, ctx.request_time_ns);
    if invalidated() {
        log::debug!(
            "meshguard: cache: {}: not stored: invalidated while filling",
            route.name
        );
        return false;
    }
    let outcome = store.write(&ctx.uri, entry);
    if matches!(outcome, WriteOutcome::Stored { .. }) && invalidated() {
        store.drop_uri(&ctx.uri);
        log::debug!(
            "meshguard: cache: {}: dropped: invalidated while storing",
            route.name
        );
        return false;
    }
    record_write(host, route, outcome)
}

pub(crate) fn record_write(host: &impl Host, route: &CacheRoute, outcome: WriteOutcome) -> bool {
    match outcome {
        WriteOutcome::Stored { evicted, .. } => {
            host.increment_metric(route.metrics.stored, 1);
            if evicted > 0 {
                host.increment_metric(route.metrics.evicted, evicted as i64);
            }
            true
        }
        other => {
            log::debug!("meshguard: cache: {}: not stored: {other:?}", route.name);
            false
        }
    }
}

/// Step 2b, at end of stream after `Store`: stores the response (the same
/// headers given to [`on_response_headers`], the whole body). Returns
/// whether it was stored. Always releases the fill lock.
pub fn store(
    host: &impl Host,
    route: &CacheRoute,
    ctx: &mut MissContext,
    status: u32,
    response: &[(String, Vec<u8>)],
    body: &[u8],
) -> bool {
    let store = Store::new(host, route.store);
    let ok = match storable_now(route, ctx, status, response, ctx.response_time_ns) {
        Ok(max_body) if body.len() <= max_body => {
            let control = directives::targeted_field(response, &route.policy.targeted);
            let targeted = control.map(|f| directives::controlled_by(response, f));
            let judged: &[(String, Vec<u8>)] = targeted.as_deref().unwrap_or(response);
            let cc = ResponseDirectives::parse(judged);
            match storable::check(
                status,
                judged,
                &cc,
                ctx.request_facts(),
                &route.policy.vary_allowlist,
                route.policy.set_cookie,
            ) {
                Ok(vary_names) => {
                    let entry = Entry {
                        primary: ctx.primary,
                        secondary: vary::secondary_key(&vary_names, &ctx.request_headers),
                        request_time_ns: ctx.request_time_ns,
                        response_time_ns: ctx.response_time_ns,
                        status: status as u16,
                        vary_names,
                        headers: storable::strip_for_storage(response, keeps_cookies(route)),
                        body: body.to_vec(),
                        control: control.map(str::to_string),
                    };
                    write_fill(host, route, &store, ctx, &entry)
                }
                Err(_) => false,
            }
        }
        _ => false,
    };
    release(&store, ctx);
    ok
}

/// The upstream failed before sending headers (reset, connect failure,
/// timeout): the stale response to send instead, if `stale-if-error`
/// allows. Releases the fill lock as "pass" (waiting requests go upstream
/// together, each can still get the stale response).
pub fn on_upstream_failure(
    host: &impl Host,
    route: &CacheRoute,
    ctx: &mut MissContext,
) -> Option<CachedResponse> {
    let r = match ctx.mode {
        Mode::Fill | Mode::Revalidate => serve_stale_if_error(host, route, ctx, None),
        _ => None,
    };
    release_pass(&Store::new(host, route.store), ctx);
    r
}

/// The route's circuit breaker is open: the request will not go upstream.
/// The stale response to send instead of the breaker's 503, if
/// `stale-if-error` or the route's `stale_on_error` allows it
/// (`Cache-Status: meshguard; fwd=stale; ttl=-N; detail=circuit-open`).
/// Releases the fill lock as "pass" (see [`on_upstream_failure`]).
pub fn on_circuit_open(
    host: &impl Host,
    route: &CacheRoute,
    ctx: &mut MissContext,
) -> Option<CachedResponse> {
    let r = match ctx.mode {
        Mode::Fill | Mode::Revalidate => {
            serve_stale_instead(host, route, ctx, None, "circuit-open")
        }
        _ => None,
    };
    release_pass(&Store::new(host, route.store), ctx);
    r
}

/// The stream ended without [`store()`] (reset, client gone...): releases
/// the fill lock so waiting requests go upstream at once (one of them takes
/// the lock and may still fill the entry).
pub fn abandon(host: &impl Host, route: &CacheRoute, ctx: &mut MissContext) {
    release(&Store::new(host, route.store), ctx);
}

/// The body grew past `max_body` (no `Content-Length` announced it): the
/// response will not be stored. Releases the fill lock as "pass", like any
/// other unstorable response, so the requests waiting for this key go
/// upstream together instead of taking the lock one after another.
pub fn abandon_too_big(host: &impl Host, route: &CacheRoute, ctx: &mut MissContext) {
    if let Some(g) = ctx.lock.take() {
        Store::new(host, route.store).unlock_pass(g);
    }
}
