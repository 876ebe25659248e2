//! Response cache: a shared HTTP cache per RFC 9111, with bounded memory in
//! proxy-wasm shared data and RFC 9211 `Cache-Status` on every response.
//!
//! # Configuration
//!
//! Per route (`routes[i].cache`, see docs/configuration.md, "Cache") and once per process
//! (`cache_store`):
//!
//! ```json
//! { "routes": [ { "name": "catalog", "match": { "path_prefix": "/catalog/" },
//!                 "cache": { "methods": ["GET", "HEAD"],
//!                            "vary_allowlist": ["accept", "accept-encoding", "accept-language"],
//!                            "key_headers": [],
//!                            "ignore_query": false,
//!                            "default_ttl": null,
//!                            "heuristic_freshness": false } } ],
//!   "cache_store": { "max_bytes": 67108864, "max_entry_bytes": 1048576 } }
//! ```
//!
//! - `methods`: a non-empty subset of `GET`, `HEAD` (default both). GET
//!   responses are stored; HEAD is answered from stored GET responses
//!   (with the GET's `Content-Length` and `Content-Type`) and its own
//!   responses are never stored.
//! - `vary_allowlist`: lower-cased header names a response may `Vary` on.
//!   A response varying on anything else, or on `*`, is not stored.
//! - `key_headers`: request headers whose values are part of the primary
//!   key (e.g. a tenant header that the origin does not put in `Vary`).
//! - `ignore_query`: the query string is not part of the key.
//! - `default_ttl`: freshness for responses without explicit freshness
//!   (statuses cacheable by default, or `public`). Off by default. Never
//!   for a request with credentials nor for an error status (see
//!   [Cache safety](#cache-safety)).
//! - `heuristic_freshness`: RFC 9111 4.2.2 heuristic, 10% of
//!   `Date - Last-Modified`, capped at `default_ttl` or one day.
//! - `cache_store.max_bytes`: the whole process's budget (all routes, all
//!   workers), never exceeded: the table of shared-data keys is fixed when
//!   configured and full slots are overwritten, oldest stored first among
//!   a URI's 4 candidate slots. `max_entry_bytes`: responses whose stored
//!   form (status, kept headers, body, ~150 bytes of bookkeeping) is larger
//!   are never stored.
//! - At most 4 variants of one URI (different `Vary` values or
//!   `key_headers` values) are kept at once; a fifth replaces the oldest.
//! - The primary key is (route, GET, authority, path with or without the
//!   query, `key_headers` values); HEAD uses the GET key. Keys read the
//!   request as forwarded (see [Cache safety](#cache-safety)).
//!
//! # What meshguard does with each directive
//!
//! | Directive | Where | meshguard |
//! |---|---|---|
//! | `max-age=N` | response | freshness lifetime N s (unless `s-maxage`); a bad value (`max-age=x`) makes the response stale (4.2.1) |
//! | `s-maxage=N` | response | freshness lifetime N s, wins over everything; implies `proxy-revalidate`; allows storing with `Authorization` (or a token), `Set-Cookie`, and error statuses |
//! | `Expires` | response | lifetime `Expires - Date` when no max-age; invalid or repeated means already stale |
//! | `no-store` | both | not stored (a request `no-store` may still be served a hit) |
//! | `no-cache` | response | stored, but every use is revalidated; `no-cache="f"` is treated as plain `no-cache` |
//! | `no-cache` / `Pragma: no-cache` | request | forward with the stored validators (the `Pragma` only without `Cache-Control`) |
//! | `private` | response | never stored (shared cache); `private="f"` too |
//! | `public` | response | storable status-independent; allows storing with `Authorization` (or a token) / `Set-Cookie`, configured freshness for requests with credentials, and (with `max-age` / `Expires`) error statuses |
//! | `must-revalidate`, `proxy-revalidate` | response | never served stale (no max-stale, no stale-while-revalidate, no stale-if-error) |
//! | `must-revalidate` | response | also allows storing with `Authorization` (3.5) |
//! | `stale-while-revalidate=N` | response | within N s of expiry: the first request revalidates (holding the fill lock), the others get the stale copy at once |
//! | `stale-if-error=N` | both | within N s of expiry, a 500/502/503/504 or a failed upstream is answered with the stale copy |
//! | `max-age=N` | request | a stored response older than N s is revalidated |
//! | `max-stale[=N]` | request | stale responses (by at most N s) are acceptable, unless the response forbids it |
//! | `min-fresh=N` | request | needs at least N s of freshness left |
//! | `only-if-cached` | request | no usable stored response means 504, never upstream |
//! | `must-understand` | response | a status outside RFC 9110 is not stored; an understood one is stored despite `no-store` (`storable::understood`) |
//! | `no-transform`, `immutable` | response | parsed; no effect (meshguard never transforms) |
//! | targeted fields | response | `CDN-Cache-Control` or the route's `targeted_cache_control` (RFC 9213): the first present replaces `Cache-Control` and `Expires` for every decision; stored and sent unchanged |
//!
//! Duplicate directives: the first value wins (`max-age=10, max-age=99` is
//! 10); flags count wherever they appear. A `Cache-Control` that cannot be
//! read completely (over 16 KiB, more than 64 directives, an unterminated
//! quoted string) is not stored. Also: `Vary: *` and unlisted
//! `Vary` names are not stored; `Set-Cookie` responses follow the route's
//! `set_cookie` ([`policy::SetCookie`]; by default not stored unless
//! `public` or `s-maxage`, and then without their `Set-Cookie` lines);
//! requests with `Authorization` are only served entries whose response
//! allowed storing them under 3.5 (`public`, `s-maxage`, `must-revalidate`);
//! 206 and 304 are never stored; hop-by-hop fields are stripped.
//! Unsafe methods (anything but GET, HEAD, OPTIONS, TRACE) answered with a
//! 2xx/3xx invalidate the target URI and the `Location` /
//! `Content-Location` URIs on the same host (4.4), every variant; a fill
//! whose request was looked up before such an invalidation is not stored.
//!
//! Freshness is counted in whole clock seconds ([`freshness::age_at`]);
//! an unreadable `Age` is [`freshness::UNKNOWN_AGE`] (stale on arrival).
//! A GET with one byte `Range` is answered from a stored 200 (`range`).
//! `Vary` compares the content-negotiation headers as sets
//! ([`vary::negotiation`]). A 304 that revalidates replaces the stored
//! fields of its names (but `Content-Length`). When the route's circuit
//! breaker is open, [`on_circuit_open`] serves what `stale-if-error` or
//! the route's `stale_on_error` allows.
//!
//! `PURGE` ([`purge_request`], the filter checks the claims): by URL drops
//! the URI's entries; by path prefix and by tag (the response's
//! `purge.tag_header`) appends to a bounded per-route purge log read with
//! each lookup on such routes, failing towards purging more (see
//! `purge`).
//!
//! # Cache safety
//!
//! No response of one user may reach another, and no client may choose
//! what others are served:
//!
//! - **The request as forwarded.** The filter hands [`lookup_as`] the
//!   request after meshguard's own changes (the JWT stage's
//!   `claims_to_headers`, with the client's copies and the token removed):
//!   `Vary` and `key_headers` read what the upstream receives, so
//!   `Vary: x-user` keyed by a verified claim gives each user their entry
//!   and a client-sent `x-user` chooses nothing.
//! - **Authenticated requests** (RFC 9111 3.5): `Authorization`, or a token
//!   at any location of the route's JWT providers ([`Identity::token`],
//!   verified or not, even once removed) are neither stored for nor served
//!   from entries without `public`, `s-maxage` or `must-revalidate`.
//! - **Credentials** (the above, or a `Cookie`): no configured freshness
//!   (`default_ttl`, heuristic) unless `public` (`detail=credentials`).
//! - **Exact keys.** Header values of any length are keyed exactly; a
//!   varied header the miss context could not keep (over 16 KiB, past 64
//!   lines) makes a response varying on it unstored
//!   (`detail=vary-request-too-big`).
//! - **Fail closed on what cannot be read**: an incomplete `Cache-Control`
//!   (`detail=cache-control-unparsed`; `no-store` on a request), an
//!   unreadable `Vary`, `Expires` or invalidation record.
//! - **Unkeyed causes.** 4xx and 5xx other than 404 and 410 may be caused by
//!   a request header the key does not cover: stored only with `s-maxage`,
//!   or `public` with `max-age` / `Expires` (`detail=error-status`); 206,
//!   304, 412 and 416 answering a request with a condition or a range are
//!   not stored (`detail=conditional`). See `storable`.
//! - **Revalidation** sends only meshguard's validators
//!   ([`CLIENT_CONDITIONS`] are removed); the client's `If-None-Match` /
//!   `If-Modified-Since` are evaluated against the result. An
//!   `If-Modified-Since` later than the cache's clock is ignored.
//! - **Invalidation wins over fills in flight** (see [`store`](mod@store)).
//!
//! What the route must key: everything else the response depends on
//! (`key_headers` for request headers the origin does not list in `Vary`;
//! the identity, when per-user responses are to be shared by one user's
//! requests; cookies are never keyed, so cookie-dependent responses must
//! be `private`).
//!
//! # Reading `Cache-Status`
//!
//! Every response of a cache route carries one member named `meshguard`
//! (appended after any member from caches closer to the origin):
//!
//! - `meshguard; hit; ttl=42`: served from the cache, fresh for 42 s more.
//!   A negative `ttl` is a stale response served by `max-stale`,
//!   `stale-while-revalidate` (`detail=stale-while-revalidate`).
//! - `meshguard; fwd=uri-miss; stored`: nothing stored for the URI; went
//!   upstream; the response is being stored. `fwd=vary-miss`: stored
//!   variants exist but none matched the request's `Vary` headers.
//! - `meshguard; fwd=stale; fwd-status=304; stored; ttl=60`: a stale entry
//!   was revalidated upstream, the origin answered 304, the refreshed entry
//!   was served. `fwd=stale; fwd-status=503; detail=stale-if-error`: the
//!   origin failed and the stale entry was served.
//! - `meshguard; fwd=request`: the request's own directives (`no-cache`,
//!   `max-age`, `min-fresh`, `Authorization` or a token) required going
//!   upstream.
//! - `meshguard; fwd=method`: the method is not cached (unsafe methods also
//!   invalidate). `meshguard; fwd=bypass; detail=only-if-cached`: 504.
//! - `fwd-status=N`: the upstream status; `detail=...` why a response was
//!   not stored (`no-store`, `private`, `authorization`, `set-cookie`,
//!   `vary-star`, `vary-not-allowed`, `status`, `no-freshness`, `too-big`,
//!   `head`, `request-no-store`, `cache-control-unparsed`, `credentials`,
//!   `error-status`, `conditional`, `vary-request-too-big`,
//!   `validator-mismatch` when a revalidation's
//!   304 names another representation than the stored one (4.3.4: another
//!   `ETag`, or without one another `Last-Modified`): the entry is
//!   dropped and the client gets that 304 only if its own `If-None-Match` /
//!   `If-Modified-Since` make it valid for it; anyone else gets the full
//!   response, fetched again without conditions ([`refetch`](mod@refetch):
//!   `fwd-status=200; stored; detail=validator-mismatch`), or a 502 with
//!   `Retry-After: 0` and `detail=validator-mismatch-refetch-failed` when
//!   that fails).
//!
//! # The filter's side (API)
//!
//! Build a [`CacheRoute`] per route (with [`CacheMetrics::define`] called
//! once in `on_configure`), then per request:
//!
//! 1. `on_http_request_headers`, after meshguard's own request changes:
//!    [`lookup_as`] (with the request's [`Identity`]; [`lookup`] for a
//!    request with none). `Hit` / `OnlyIfCachedMiss`:
//!    send that local reply. `Wait`: pause, set a timer of
//!    `retry_after_ms`, look up again when it fires (it turns into
//!    `Hit`, or `Miss` once the other worker's lock expires). `Miss`,
//!    `Revalidate` (remove the listed request headers, the client's own
//!    conditions, then set the listed ones, meshguard's validators),
//!    `Bypass`: continue upstream and keep the [`MissContext`].
//! 2. `on_http_response_headers`: [`on_response_headers`] with the context.
//!    `Replace`: send that response instead of the upstream one (the
//!    upstream body is discarded). `Store { max_body }`: copy the body as it
//!    streams (never pause); at end of stream call [`store()`]; as soon as
//!    it outgrows `max_body`, call [`abandon_too_big`] and stop copying.
//!    `DontStore`: nothing more. `Refetch`: pause the response and send
//!    the full request ([`refetch`](mod@refetch)). In
//!    every case add the returned `cache_status` as a `Cache-Status` field
//!    line after the upstream's (a list: recipients combine the lines, and
//!    the upstream's member is kept; the filter does not read it first).
//!    A key whose response was not storable is not locked for the next 5 s
//!    (no queueing behind uncacheable URLs). The filter should still cap
//!    the total time it keeps a request waiting (e.g. 5 s).
//! 3. An upstream reset / connect failure / timeout before headers:
//!    [`on_upstream_failure`]; `Some(response)` is sent instead of the
//!    error. A stream that ends early otherwise: [`abandon`] (the fill lock
//!    also expires on its own after 5 s).
//!
//! Storage layout and the memory bound: see the [`store`](mod@store) module.

pub mod directives;
pub mod entry;
pub mod etag;
pub mod freshness;
pub(crate) mod headers;
pub mod httpdate;
pub(crate) mod key;
pub(crate) mod lookup;
pub(crate) mod metrics;
pub mod policy;
pub(crate) mod purge;
pub(crate) mod range;
pub mod refetch;
pub(crate) mod respond;
pub(crate) mod response;
pub(crate) mod storable;
pub mod store;
pub mod vary;

pub use key::{primary_hash, uri_hash, uri_hash_memo, Identity};
pub use lookup::{
    lookup, lookup_as, purge, purge_denied, purge_request, CacheRoute, Lookup, MissContext,
    PurgeOutcome, CLIENT_CONDITIONS, WAIT_POLL_MS,
};
pub use metrics::CacheMetrics;
pub use policy::CachePolicy;
pub use refetch::{on_refetch, refetch_request, REFETCH_TIMEOUT_MS};
pub use respond::{CachedResponse, CACHE_NAME};
pub use response::{
    abandon, abandon_too_big, on_circuit_open, on_response_headers, on_upstream_failure, store,
    ResponseDecision,
};

pub use store::CacheStoreConfig;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests;
