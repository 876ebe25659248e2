//! A revalidation answered by a 304 for another representation than the
//! stored one (RFC 9111 4.3.4: the 304 must not update it) is resolved
//! with a full request: the filter sends the request again to the route's
//! upstream cluster as an HTTP call, without any condition, and answers
//! the client with what it gets ([`on_refetch`]).
//!
//! - [`ResponseDecision::Refetch`](super::ResponseDecision::Refetch):
//!   pause the response, send [`refetch_request`] of the request headers
//!   as forwarded (after the route's own changes; the cache's validators
//!   and every client condition and `Range` removed) to the route's
//!   cluster with a body limit of the route's `max_entry_bytes`, then call
//!   [`on_refetch`] with the answer (`None` when the call could not be
//!   sent, failed, timed out, or its body is over the limit) and send the
//!   response it returns.
//! - The full response is stored when storable, and answers the client's
//!   own `If-None-Match` / `If-Modified-Since` (a 304 when they match it).
//! - No full response: a 502 with `Retry-After: 0` and
//!   `Cache-Status: meshguard; fwd=stale; fwd-status=304;
//!   detail=validator-mismatch-refetch-failed`, counted in
//!   `refetch_failed` (the entry was dropped: a retry is a miss).

use super::etag;
use super::respond::{fwd_status, validator_mismatch, NS};
use super::response::store;
use super::storable;
use super::{CacheRoute, CachedResponse, MissContext, CLIENT_CONDITIONS};
use crate::host::header_map::HeaderMap;
use crate::host::Host;

/// The full request's answer: status, headers, body.
pub type FullResponse = (u32, Vec<(String, Vec<u8>)>, Vec<u8>);

/// How long the full request may take.
pub const REFETCH_TIMEOUT_MS: u64 = 10_000;

/// Request headers a refetch never sends: hop-by-hop and body framing,
/// and Envoy's per-attempt headers (the call gets its own).
const NOT_RESENT: &[&str] = &[
    "connection",
    "keep-alive",
    "te",
    "transfer-encoding",
    "upgrade",
    "trailer",
    "content-length",
    "expect",
];

/// The headers of the full request, from the request headers as forwarded
/// (pseudo-headers included): without the cache's validators, the
/// client's conditions and `Range` ([`CLIENT_CONDITIONS`]), hop-by-hop
/// fields and `x-envoy-*`. `None` when a value is not UTF-8 (the call
/// port takes text; leaving it out could change the response).
pub fn refetch_request(forwarded: &[(String, Vec<u8>)]) -> Option<Vec<(String, String)>> {
    let mut out = Vec::with_capacity(forwarded.len());
    for (n, v) in forwarded {
        let n = n.to_ascii_lowercase();
        if CLIENT_CONDITIONS.contains(&n.as_str())
            || NOT_RESENT.contains(&n.as_str())
            || n.starts_with("x-envoy-")
        {
            continue;
        }
        out.push((n, String::from_utf8(v.clone()).ok()?));
    }
    let has = |p: &str| out.iter().any(|(n, _)| n == p);
    (has(":method") && has(":path") && has(":authority")).then_some(out)
}

/// The full request's answer (`Some((status, headers, body))`, headers
/// with `:status`), or `None` when there is none: the response to send the
/// client (see the module docs). Stores the full response when storable.
/// A 304 (or 1xx) to the unconditional request counts as no answer.
pub fn on_refetch(
    host: &impl Host,
    route: &CacheRoute,
    ctx: &mut MissContext,
    answer: Option<FullResponse>,
) -> CachedResponse {
    let max = usize::try_from(route.store.max_entry_bytes).unwrap_or(usize::MAX);
    let Some((status, headers, body)) =
        answer.filter(|(s, _, b)| *s >= 200 && *s != 304 && b.len() <= max)
    else {
        host.increment_metric(route.metrics.refetch_failed, 1);
        return validator_mismatch(fwd_status(
            ctx.fwd,
            Some(304),
            false,
            Some("validator-mismatch-refetch-failed"),
            None,
        ));
    };
    host.increment_metric(route.metrics.refetched, 1);
    let now = host.now_nanos();
    ctx.response_time_ns = now;
    let headers: Vec<(String, Vec<u8>)> = storable::strip_for_storage(&headers, true)
        .into_iter()
        .filter(|(n, _)| n != "content-length")
        .collect();
    let stored = status == 200 && store(host, route, ctx, status, &headers, &body);
    let cache_status = fwd_status(
        ctx.fwd,
        Some(status),
        stored,
        Some("validator-mismatch"),
        None,
    );
    // The client's own conditions are judged against the full response.
    let not_modified =
        status == 200 && etag::answer_304(&ctx.request_headers, &headers, now / NS, now / NS);
    let mut map = HeaderMap::with_capacity(headers.len() + 1, 512);
    for (n, v) in &headers {
        map.add(n.as_bytes(), v);
    }
    map.add(b"cache-status", cache_status.as_bytes());
    if not_modified {
        return CachedResponse {
            status: 304,
            headers: map,
            body: Vec::new(),
        };
    }
    CachedResponse {
        status,
        headers: map,
        body: if ctx.head { Vec::new() } else { body },
    }
}
