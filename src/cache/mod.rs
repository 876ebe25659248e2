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
//! | `must-understand`, `no-transform`, `immutable` | response | parsed; no effect (meshguard never transforms, understands every status it stores) |
//!
//! Duplicate directives: the first value wins (`max-age=10, max-age=99` is
//! 10); flags count wherever they appear. A `Cache-Control` that cannot be
//! read completely (over 16 KiB, more than 64 directives, an unterminated
//! quoted string) is not stored. Also: `Vary: *` and unlisted
//! `Vary` names are not stored; `Set-Cookie` responses are not stored unless
//! `public` or `s-maxage`, and then without their `Set-Cookie` lines;
//! requests with `Authorization` are only served entries whose response
//! allowed storing them under 3.5 (`public`, `s-maxage`, `must-revalidate`);
//! 206 and 304 are never stored; hop-by-hop fields are stripped.
//! Unsafe methods (anything but GET, HEAD, OPTIONS, TRACE) answered with a
//! 2xx/3xx invalidate the target URI and the `Location` /
//! `Content-Location` URIs on the same host (4.4), every variant; a fill
//! whose request was looked up before such an invalidation is not stored.
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
//!   not stored (`detail=conditional`). See [`storable`].
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
//!   304 names another representation than the stored one: the entry is
//!   dropped and the client gets that 304 only if its own `If-None-Match` /
//!   `If-Modified-Since` make it valid for it, else a 502 with
//!   `Retry-After: 0`; the retry is a miss and fetches the full response).
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
//!    `DontStore`: nothing more. In
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
pub mod headers;
pub mod httpdate;
pub mod policy;
pub mod storable;
pub mod store;
pub mod vary;

pub use policy::CachePolicy;

use crate::config::CacheStoreConfig;
use crate::host::header_map::HeaderMap;
use crate::host::{Host, MetricId, MetricKind};
use crate::request::{strip_port, Request};
use directives::{RequestDirectives, ResponseDirectives};
use entry::{Entry, EntryView};
use sha2::{Digest, Sha256};
use store::{LockGuard, LockOutcome, Probe, Store, WriteOutcome};

/// The name meshguard uses in `Cache-Status`.
pub const CACHE_NAME: &str = "meshguard";
/// Longest poll interval suggested to waiting requests.
pub const WAIT_POLL_MS: u64 = 25;
/// The client's own conditions, never forwarded when meshguard revalidates
/// a stored response with its validators: an origin answering 304 to the
/// client's `If-None-Match: *` would otherwise refresh (and pin) a stored
/// response it never judged. `Range` goes with `If-Range` (without it, a
/// client asking "the range if unchanged, else everything" would get a
/// range of a changed representation); a full response is also what
/// refreshes the entry. A cache ignores the origin-only `If-Match` and
/// `If-Unmodified-Since` (RFC 9111 4.3.2), as hits do.
pub const CLIENT_CONDITIONS: &[&str] = &[
    "if-none-match",
    "if-modified-since",
    "if-match",
    "if-unmodified-since",
    "if-range",
    "range",
];
/// Most request headers a [`MissContext`] keeps.
const MAX_KEPT_HEADERS: usize = 64;
const NS: u64 = 1_000_000_000;

/// The counters of one route: `meshguard.cache.<route>.{hit,miss,stored,evicted,bypass}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheMetrics {
    pub hit: MetricId,
    pub miss: MetricId,
    pub stored: MetricId,
    pub evicted: MetricId,
    pub bypass: MetricId,
}

impl CacheMetrics {
    pub const NONE: CacheMetrics = CacheMetrics {
        hit: MetricId::NONE,
        miss: MetricId::NONE,
        stored: MetricId::NONE,
        evicted: MetricId::NONE,
        bypass: MetricId::NONE,
    };

    /// Defines the route's counters (call once, at configuration time). A
    /// counter the host refuses is `MetricId::NONE` (recording is a no-op).
    pub fn define(host: &impl Host, route: &str) -> CacheMetrics {
        let d = |what: &str| {
            host.define_metric(
                MetricKind::Counter,
                &format!("meshguard.cache.{route}.{what}"),
            )
            .unwrap_or(MetricId::NONE)
        };
        CacheMetrics {
            hit: d("hit"),
            miss: d("miss"),
            stored: d("stored"),
            evicted: d("evicted"),
            bypass: d("bypass"),
        }
    }
}

/// Everything the cache needs to know about the route a request matched.
#[derive(Debug, Clone, Copy)]
pub struct CacheRoute<'a> {
    pub name: &'a str,
    pub policy: &'a CachePolicy,
    pub store: &'a CacheStoreConfig,
    pub metrics: &'a CacheMetrics,
}

/// A complete response for the filter to send as a local reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedResponse {
    pub status: u32,
    /// Includes `Age` and `Cache-Status`; already in the host's header-map
    /// format, written straight from the stored bytes (no copy per header).
    pub headers: HeaderMap,
    /// Empty for a 304. For HEAD, the stored body all the same: the filter
    /// hands it to Envoy's local reply, which answers a HEAD request with
    /// the headers only and sets `Content-Length` from it (given no body,
    /// Envoy drops `Content-Length` and `Content-Type`).
    pub body: Vec<u8>,
}

impl CachedResponse {
    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.get(name)
    }
}

/// What to do with a request (see the module docs).
#[derive(Debug)]
pub enum Lookup {
    /// Answer with this response (200 / 304 / other stored status).
    Hit(CachedResponse),
    /// `only-if-cached` and nothing usable: answer with this 504.
    OnlyIfCachedMiss(CachedResponse),
    /// Go upstream; the fill lock is held when `ctx.holds_fill_lock()`.
    Miss { ctx: MissContext },
    /// Go upstream without the request headers `remove_request_headers`
    /// (the client's own conditions, [`CLIENT_CONDITIONS`]) and with
    /// `add_request_headers` SET: the stored validators (`if-none-match`,
    /// `if-modified-since`). The origin then judges the stored response
    /// only; the client's `If-None-Match` / `If-Modified-Since` are
    /// evaluated against the result (RFC 9111 4.3.2).
    Revalidate {
        remove_request_headers: &'static [&'static str],
        add_request_headers: Vec<(String, Vec<u8>)>,
        ctx: MissContext,
    },
    /// Another request is filling this entry: retry [`lookup`] later.
    Wait { retry_after_ms: u64 },
    /// Not cacheable (method, ...): go upstream; still call
    /// [`on_response_headers`] (it invalidates after unsafe methods and
    /// gives the `Cache-Status`).
    Bypass { ctx: MissContext },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Fill,
    Revalidate,
    Bypass,
    Invalidate,
}

/// Per-request state between the request and the response callbacks.
#[derive(Debug)]
pub struct MissContext {
    mode: Mode,
    fwd: &'static str,
    detail: Option<&'static str>,
    head: bool,
    authority: String,
    uri: [u8; 32],
    primary: [u8; 32],
    request_headers: Vec<(String, Vec<u8>)>,
    /// Names in `vary_allowlist` with a line `request_headers` could not
    /// keep (over `MAX_HEADER_VALUE`, or past `MAX_KEPT_HEADERS` lines): a
    /// response varying on one is not stored, since its secondary key
    /// could not be computed exactly.
    unkept_vary: Vec<String>,
    authenticated: bool,
    /// The request had one of [`storable::CONDITIONS`].
    conditional: bool,
    /// The request carried credentials: `Authorization`, a token, or a
    /// `Cookie`. Its response gets no configured freshness (`default_ttl`,
    /// heuristic) unless it is `public`.
    credentials: bool,
    req_cc: RequestDirectives,
    request_time_ns: u64,
    response_time_ns: u64,
    lock: Option<LockGuard>,
    stale: Option<Entry>,
}

impl MissContext {
    /// Whether this request holds the fill lock (others wait for it).
    pub fn holds_fill_lock(&self) -> bool {
        self.lock.is_some()
    }
    /// The `Cache-Status` to use if the request ends without a response.
    pub fn cache_status(&self) -> String {
        fwd_status(self.fwd, None, false, self.detail, None)
    }

    fn request_facts(&self) -> storable::RequestFacts {
        storable::RequestFacts {
            authenticated: self.authenticated,
            no_store: self.req_cc.no_store,
            conditional: self.conditional,
        }
    }
}

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
}

fn fwd_status(
    fwd: &str,
    status: Option<u32>,
    stored: bool,
    detail: Option<&str>,
    ttl: Option<i64>,
) -> String {
    let mut s = format!("{CACHE_NAME}; fwd={fwd}");
    if let Some(st) = status {
        s.push_str(&format!("; fwd-status={st}"));
    }
    if stored {
        s.push_str("; stored");
    }
    if let Some(t) = ttl {
        s.push_str(&format!("; ttl={t}"));
    }
    if let Some(d) = detail {
        s.push_str(&format!("; detail={d}"));
    }
    s
}

/// Our `Cache-Status` member for a hit (built without `core::fmt`).
fn hit_status(ttl: i64, detail: Option<&str>) -> Vec<u8> {
    let mut s = Vec::with_capacity(48);
    s.extend_from_slice(CACHE_NAME.as_bytes());
    s.extend_from_slice(b"; hit; ttl=");
    headers::push_i64(&mut s, ttl);
    if let Some(d) = detail {
        s.extend_from_slice(b"; detail=");
        s.extend_from_slice(d.as_bytes());
    }
    s
}

/// The path as keyed: fragment dropped, query dropped with `ignore_query`.
fn key_path(path: &str, ignore_query: bool) -> &str {
    let cut = if ignore_query {
        path.find(['?', '#'])
    } else {
        path.find('#')
    };
    match cut {
        Some(i) => &path[..i],
        None => path,
    }
}

/// Domain prefix of [`uri_hash`].
const URI_HASH_PREFIX: &[u8] = b"meshguard/v1/cache/uri\0GET\0";

/// Hash of (method GET, route, authority, path): all variants of a URI.
/// The authority is lower-cased (without allocating).
pub fn uri_hash(route: &str, authority: &str, path: &str) -> [u8; 32] {
    let mut key = vec![0u8; uri_key_len(route, authority, path)];
    write_uri_key(route, authority, path, &mut key);
    hash_uri_key(&key)
}

/// Length of the bytes [`uri_hash`] hashes after its prefix.
fn uri_key_len(route: &str, authority: &str, path: &str) -> usize {
    12 + route.len() + authority.len() + path.len()
}

/// Writes the bytes [`uri_hash`] hashes after its prefix into `key`
/// ([`uri_key_len`] long): each part's length (u32 LE) and bytes, the
/// authority lower-cased.
fn write_uri_key(route: &str, authority: &str, path: &str, key: &mut [u8]) {
    let mut n = 0;
    for part in [route, authority, path] {
        let end = n + 4 + part.len();
        if let Some(dst) = key.get_mut(n..end) {
            let (len, bytes) = dst.split_at_mut(4);
            len.copy_from_slice(&(part.len() as u32).to_le_bytes());
            bytes.copy_from_slice(part.as_bytes());
        }
        n = end;
    }
    let a = 4 + route.len() + 4;
    if let Some(auth) = key.get_mut(a..a + authority.len()) {
        auth.make_ascii_lowercase();
    }
}

/// SHA-256 of [`URI_HASH_PREFIX`] then `key` (one copy of the hashing code).
#[inline(never)]
fn hash_uri_key(key: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(URI_HASH_PREFIX);
    h.update(key);
    h.finalize().into()
}

/// Keys of [`UriMemo`] (the bytes [`uri_hash`] hashes after its prefix)
/// longer than this are hashed every time.
const URI_MEMO_MAX_KEY: usize = 256;
/// Slots of [`UriMemo`].
const URI_MEMO_SLOTS: usize = 128;

/// Recent URI hashes of this worker (a VM runs one thread; natively, each
/// thread has its own): SHA-256 is the largest cost of a hit, and hot URIs
/// repeat. Direct-mapped, bounded (at most [`URI_MEMO_SLOTS`] keys of at
/// most [`URI_MEMO_MAX_KEY`] bytes, ~40 KiB); the whole key is compared,
/// so a memoised hash is always the hash of the key.
/// (key, hash); an empty key is a free slot (a key is never empty).
type UriMemo = Vec<(Vec<u8>, [u8; 32])>;

thread_local! {
    static URI_MEMO: std::cell::RefCell<UriMemo> = const { std::cell::RefCell::new(Vec::new()) };
}

/// [`uri_hash`] through this worker's [`UriMemo`].
pub fn uri_hash_memo(route: &str, authority: &str, path: &str) -> [u8; 32] {
    let mut buf = [0u8; URI_MEMO_MAX_KEY];
    let Some(key) = buf.get_mut(..uri_key_len(route, authority, path)) else {
        return uri_hash(route, authority, path);
    };
    write_uri_key(route, authority, path, key);
    let key = &*key;
    let slot = store::checksum(key) as usize % URI_MEMO_SLOTS;
    URI_MEMO.with(|memo| {
        let Ok(mut memo) = memo.try_borrow_mut() else {
            return hash_uri_key(key);
        };
        if memo.is_empty() {
            memo.resize_with(URI_MEMO_SLOTS, Default::default);
        }
        let Some((k, h)) = memo.get_mut(slot) else {
            return hash_uri_key(key);
        };
        if !crate::bytes::eq(k, key) {
            k.clear();
            k.extend_from_slice(key);
            *h = hash_uri_key(key);
        }
        *h
    })
}

/// Primary key: the URI hash plus the `key_headers` values; the URI hash
/// itself when the route has no `key_headers` (one hash less per lookup).
pub fn primary_hash(
    uri: &[u8; 32],
    key_headers: &[String],
    request: &(impl headers::HeaderList + ?Sized),
) -> [u8; 32] {
    if key_headers.is_empty() {
        return *uri;
    }
    let mut h = Sha256::new();
    h.update(uri);
    h.update(vary::secondary_key(key_headers, request));
    h.finalize().into()
}

fn is_safe(method: &str) -> bool {
    matches!(method, "GET" | "HEAD" | "OPTIONS" | "TRACE")
}

/// What meshguard knows of a request's identity beyond the header fields
/// the cache reads itself (`Authorization`, `Cookie`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Identity {
    /// The request carried a token at a location of one of the route's JWT
    /// providers (header, cookie or query; verified or not, and possibly
    /// removed before forwarding): it is authenticated, as with
    /// `Authorization` (RFC 9111 3.5).
    pub token: bool,
}

/// What a lookup knows of the request before reading the store.
struct Keys {
    uri: [u8; 32],
    primary: [u8; 32],
    req_cc: RequestDirectives,
    /// `Authorization` or a token: RFC 9111 3.5 applies.
    authenticated: bool,
    head: bool,
}

impl Keys {
    fn of(route: &CacheRoute, req: &Request, identity: Identity) -> Keys {
        let path = key_path(&req.path, route.policy.ignore_query);
        let uri = uri_hash_memo(route.name, &req.authority, path);
        Keys {
            uri,
            primary: primary_hash(&uri, &route.policy.key_headers, &req.headers),
            req_cc: RequestDirectives::parse(&req.headers),
            authenticated: identity.token || req.header("authorization").is_some(),
            head: req.method == "HEAD",
        }
    }
}

fn context(route: &CacheRoute, req: &Request, now: u64, identity: Identity) -> MissContext {
    context_from(route, req, now, Keys::of(route, req, identity))
}

/// The request's state for the response side (built only when the request
/// goes upstream: a hit needs none of it).
fn context_from(route: &CacheRoute, req: &Request, now: u64, keys: Keys) -> MissContext {
    let mut request_headers = Vec::new();
    let mut unkept_vary = Vec::new();
    for (n, v) in req.headers.iter() {
        let n = n.to_ascii_lowercase();
        let varied = route.policy.vary_allowlist.contains(&n);
        if !(varied || n == "if-none-match" || n == "if-modified-since") {
            continue;
        }
        if v.len() <= crate::request::MAX_HEADER_VALUE && request_headers.len() < MAX_KEPT_HEADERS {
            request_headers.push((n, v.to_vec()));
        } else if varied && !unkept_vary.contains(&n) {
            unkept_vary.push(n);
        }
    }
    MissContext {
        mode: Mode::Fill,
        fwd: "miss",
        detail: None,
        head: keys.head,
        authority: req.authority.to_ascii_lowercase(),
        uri: keys.uri,
        primary: keys.primary,
        request_headers,
        unkept_vary,
        authenticated: keys.authenticated,
        conditional: storable::CONDITIONS.iter().any(|n| req.header(n).is_some()),
        credentials: keys.authenticated || req.header("cookie").is_some(),
        req_cc: keys.req_cc,
        request_time_ns: now,
        response_time_ns: now,
        lock: None,
        stale: None,
    }
}

/// Whether an entry may answer a request carrying `Authorization` (3.5).
fn shareable_with_authorization(cc: &ResponseDirectives) -> bool {
    cc.public || cc.s_maxage.is_some() || cc.must_revalidate
}

/// Fields kept in a 304 built from a stored response.
const KEEP_304: [&str; 7] = [
    "cache-control",
    "content-location",
    "date",
    "etag",
    "expires",
    "vary",
    "last-modified",
];

/// Builds the response sent from an entry: 304 when the request's own
/// conditions hold (2xx entries only).
fn respond(
    entry: &Entry,
    request: &(impl headers::HeaderList + ?Sized),
    age: u64,
    now: u64,
    cache_status: Vec<u8>,
) -> CachedResponse {
    let (mut response, with_body) = respond_headers(
        entry.status,
        entry
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_slice())),
        entry.headers.len(),
        entry.response_time_ns,
        request,
        (age, now),
        cache_status,
    );
    if with_body {
        response.body = entry.body.clone();
    }
    response
}

/// [`respond`] for an entry read in place (a hit), without its body: the
/// body's place in the payload when it is to be sent (see [`with_body`]).
fn respond_in_place(
    view: &EntryView<'_>,
    request: &(impl headers::HeaderList + ?Sized),
    age_now: (u64, u64),
    cache_status: Vec<u8>,
) -> (CachedResponse, Option<(usize, usize)>) {
    let (response, with_body) = respond_headers(
        view.status,
        view.headers(),
        view.header_count(),
        view.response_time_ns,
        request,
        age_now,
        cache_status,
    );
    (
        response,
        with_body.then_some((view.body_offset, view.body_len)),
    )
}

/// Completes [`respond_in_place`]: the body is moved out of the buffer the
/// store read (no copy).
fn with_body(
    (mut response, body): (CachedResponse, Option<(usize, usize)>),
    payload: store::Payload,
) -> CachedResponse {
    if let Some((offset, len)) = body {
        response.body = payload.into_range(offset, len);
    }
    response
}

/// The status and headers of [`respond`] from the stored headers, in
/// order: all but `Age` and `Cache-Status` (only [`KEEP_304`] for a 304),
/// then `Age`, then `Cache-Status` (the stored one's members, then ours).
/// One pass over the stored headers (two for a conditional request: its
/// validators first), written into the host's header-map format. The body
/// is left empty; `true` when it should be sent. `(age, now)`: the
/// entry's current age (s) and the time (ns).
#[allow(clippy::too_many_arguments)]
fn respond_headers<'a>(
    status: u16,
    stored: impl Iterator<Item = (&'a str, &'a [u8])> + Clone,
    count: usize,
    response_time_ns: u64,
    request: &(impl headers::HeaderList + ?Sized),
    (age, now): (u64, u64),
    cache_status: Vec<u8>,
) -> (CachedResponse, bool) {
    let not_modified = (200..300).contains(&status) && etag::is_conditional(request) && {
        let mut validators = etag::StoredValidators::default();
        for (n, v) in stored.clone() {
            validators.see(n, v);
        }
        etag::answer_304_by(request, &validators, response_time_ns / NS, now / NS)
    };
    let mut upstream_status: Vec<u8> = Vec::new();
    let mut upstream_lines = 0usize;
    let mut out = HeaderMap::with_capacity(count + 2, 64 * count + 64);
    for (n, v) in stored {
        if n.eq_ignore_ascii_case("cache-status") && v.len() <= crate::request::MAX_HEADER_VALUE {
            if upstream_lines > 0 {
                upstream_status.extend_from_slice(b", ");
            }
            upstream_status.extend_from_slice(v);
            upstream_lines += 1;
        }
        if n == "age" || n == "cache-status" || (not_modified && !KEEP_304.contains(&n)) {
            continue;
        }
        out.add(n.as_bytes(), v);
    }
    let mut age_value = Vec::with_capacity(20);
    headers::push_u64(&mut age_value, age);
    out.add(b"age", &age_value);
    let existing = (!upstream_status.is_empty()).then_some(upstream_status.as_slice());
    out.add(
        b"cache-status",
        &headers::append_cache_status_owned(existing, cache_status),
    );
    let response = CachedResponse {
        status: if not_modified { 304 } else { status as u32 },
        headers: out,
        body: Vec::new(),
    };
    (response, !not_modified)
}

fn entry_times(entry: &Entry, policy: &CachePolicy, now: u64) -> (ResponseDirectives, u64, u64) {
    let cc = ResponseDirectives::parse(&entry.headers);
    let (life, _) = freshness::lifetime(
        entry.status as u32,
        &entry.headers,
        &cc,
        entry.response_time_ns / NS,
        policy.freshness(),
    );
    let age = freshness::current_age(
        &entry.headers,
        entry.request_time_ns,
        entry.response_time_ns,
        now,
    );
    (cc, life, age)
}

fn validators(entry: &Entry) -> Vec<(String, Vec<u8>)> {
    let mut v = Vec::new();
    if let Some(e) = headers::first(&entry.headers, "etag") {
        v.push(("if-none-match".to_string(), e.to_vec()));
    }
    if let Some(lm) = headers::first(&entry.headers, "last-modified") {
        v.push(("if-modified-since".to_string(), lm.to_vec()));
    }
    v
}

/// The 504 for `only-if-cached` (RFC 9111 5.2.1.7) when nothing stored may
/// answer; `why` tells the client which case it was.
fn gateway_timeout(why: &str) -> CachedResponse {
    CachedResponse {
        status: 504,
        headers: HeaderMap::from_pairs(&[
            ("content-type", "text/plain".to_string()),
            (
                "cache-status",
                fwd_status("bypass", None, false, Some("only-if-cached"), None),
            ),
        ]),
        body: format!("only-if-cached: {why}\n").into_bytes(),
    }
}

/// The 502 sent when a revalidation's 304 cannot be used for the client.
fn validator_mismatch(cache_status: String) -> CachedResponse {
    CachedResponse {
        status: 502,
        headers: HeaderMap::from_pairs(&[
            ("content-type", "text/plain"),
            ("retry-after", "0"),
            ("cache-status", cache_status.as_str()),
        ]),
        body: b"the origin answered 304 for another representation than the stored one\n".to_vec(),
    }
}

/// Step 1, on the request headers (see the module docs).
///
/// A hit reads the store once when the entry sits in its URI's first slot
/// and fits one chunk, parses no stored header (the entry carries its
/// [`freshness::Facts`]) and copies no body.
pub fn lookup(host: &impl Host, route: &CacheRoute, req: &Request) -> Lookup {
    lookup_as(host, route, req, Identity::default())
}

/// [`lookup`] for a request whose [`Identity`] meshguard knows more of
/// (the filter: a JWT route's token locations).
pub fn lookup_as(
    host: &impl Host,
    route: &CacheRoute,
    req: &Request,
    identity: Identity,
) -> Lookup {
    let now = host.now_nanos();
    let m = route.metrics;
    if !route.policy.caches_method(&req.method) {
        let mut ctx = context(route, req, now, identity);
        host.increment_metric(m.bypass, 1);
        ctx.mode = if is_safe(&req.method) {
            Mode::Bypass
        } else {
            Mode::Invalidate
        };
        ctx.fwd = "method";
        return Lookup::Bypass { ctx };
    }
    let keys = Keys::of(route, req, identity);
    let store = Store::new(host, route.store);
    let (payload, meta) = match probe(&store, &keys, req) {
        Probe::Found(p, meta) => (p, meta),
        Probe::Rejected => return miss(host, &store, route, req, now, keys, "vary-miss"),
        Probe::Nothing => return miss(host, &store, route, req, now, keys, "uri-miss"),
    };
    let view = EntryView::again(payload.bytes(), meta);
    let Judged {
        cc,
        age,
        usability,
        shareable,
    } = judge(route, &keys, &view, now);
    if !shareable {
        host.increment_metric(m.miss, 1);
        if keys.req_cc.only_if_cached {
            return Lookup::OnlyIfCachedMiss(gateway_timeout(
                "the stored response may not answer a request with Authorization",
            ));
        }
        let mut ctx = context_from(route, req, now, keys);
        ctx.fwd = "request";
        ctx.detail = Some("authorization");
        return Lookup::Miss { ctx };
    }
    match usability {
        freshness::Usability::Fresh { ttl } | freshness::Usability::StaleAllowed { ttl } => hit(
            host,
            route,
            req,
            payload,
            meta,
            (age, now),
            hit_status(ttl, None),
        ),
        // HEAD never takes the fill lock: its response cannot refill the entry.
        freshness::Usability::StaleWhileRevalidate { ttl } => match fill_lock(&store, &keys) {
            LockOutcome::Acquired(g) => {
                if let Some(hit) = look_again(host, &store, route, req, &keys, &g) {
                    store.unlock(g);
                    return hit;
                }
                let entry = view.to_entry();
                let mut ctx = context_from(route, req, now, keys);
                ctx.lock = Some(g);
                host.increment_metric(m.miss, 1);
                ctx.fwd = "stale";
                go_upstream(ctx, entry)
            }
            _ => {
                let status = hit_status(ttl, Some("stale-while-revalidate"));
                hit(host, route, req, payload, meta, (age, now), status)
            }
        },
        freshness::Usability::MustValidate { ttl } => {
            if keys.req_cc.only_if_cached {
                host.increment_metric(m.miss, 1);
                return Lookup::OnlyIfCachedMiss(gateway_timeout(
                    "the stored response would need validating with the origin",
                ));
            }
            let entry_itself_stale = ttl <= 0 || cc.no_cache;
            let mut lock = None;
            if entry_itself_stale {
                match fill_lock(&store, &keys) {
                    LockOutcome::Acquired(g) => {
                        if let Some(hit) = look_again(host, &store, route, req, &keys, &g) {
                            store.unlock(g);
                            return hit;
                        }
                        lock = Some(g)
                    }
                    LockOutcome::HeldByOther { remaining_ns } => {
                        return Lookup::Wait {
                            retry_after_ms: (remaining_ns / 1_000_000).clamp(1, WAIT_POLL_MS),
                        }
                    }
                    LockOutcome::Unavailable => {}
                }
            }
            host.increment_metric(m.miss, 1);
            let entry = view.to_entry();
            let mut ctx = context_from(route, req, now, keys);
            ctx.lock = lock;
            ctx.fwd = if entry_itself_stale {
                "stale"
            } else {
                "request"
            };
            go_upstream(ctx, entry)
        }
    }
}

/// Nothing stored answers the request (`fwd`: `uri-miss` or `vary-miss`).
fn miss(
    host: &impl Host,
    store: &Store<'_, impl Host>,
    route: &CacheRoute,
    req: &Request,
    now: u64,
    keys: Keys,
    fwd: &'static str,
) -> Lookup {
    if keys.req_cc.only_if_cached {
        host.increment_metric(route.metrics.miss, 1);
        return Lookup::OnlyIfCachedMiss(gateway_timeout("no stored response"));
    }
    let lock = fill_lock(store, &keys);
    if let LockOutcome::Acquired(g) = lock {
        if let Some(hit) = look_again(host, store, route, req, &keys, &g) {
            store.unlock(g);
            return hit;
        }
    }
    host.increment_metric(route.metrics.miss, 1);
    let mut ctx = context_from(route, req, now, keys);
    ctx.fwd = fwd;
    match lock {
        LockOutcome::Acquired(g) => ctx.lock = Some(g),
        LockOutcome::HeldByOther { remaining_ns } => {
            return Lookup::Wait {
                retry_after_ms: (remaining_ns / 1_000_000).clamp(1, WAIT_POLL_MS),
            }
        }
        LockOutcome::Unavailable => {}
    }
    Lookup::Miss { ctx }
}

/// The stored entry of the request's key whose `Vary` values match it.
fn probe(store: &Store<'_, impl Host>, keys: &Keys, req: &Request) -> Probe {
    store.probe(&keys.uri, &keys.primary, |e| {
        e.secondary == vary::secondary_key_of(e.vary_names(), &req.headers)
    })
}

/// What a stored entry is worth to this request at `now`.
struct Judged {
    cc: ResponseDirectives,
    age: u64,
    usability: freshness::Usability,
    /// False when the request carries `Authorization` or a token and the
    /// entry may not answer it (RFC 9111 3.5).
    shareable: bool,
}

fn judge(route: &CacheRoute, keys: &Keys, view: &EntryView<'_>, now: u64) -> Judged {
    let cc = view.facts.directives();
    let (life, _) = view
        .facts
        .lifetime(view.status as u32, route.policy.freshness());
    let age = freshness::age_at(view.facts.initial_age, view.response_time_ns, now);
    Judged {
        usability: freshness::usability(life, age, &cc, &keys.req_cc),
        shareable: !keys.authenticated || shareable_with_authorization(&cc),
        cc,
        age,
    }
}

/// A hit from the entry read in place: counted, its body moved out of the
/// buffer the store read.
fn hit(
    host: &impl Host,
    route: &CacheRoute,
    req: &Request,
    payload: store::Payload,
    meta: entry::EntryMeta,
    age_now: (u64, u64),
    cache_status: Vec<u8>,
) -> Lookup {
    host.increment_metric(route.metrics.hit, 1);
    let parts = respond_in_place(
        &EntryView::again(payload.bytes(), meta),
        &req.headers,
        age_now,
        cache_status,
    );
    Lookup::Hit(with_body(parts, payload))
}

/// Called right after this request took the fill lock, having found the
/// entry missing or stale. The previous holder of this key's lock stores
/// (or refreshes) the entry and *then* releases the lock, so between our
/// read of the store and our lock it may have made the entry fresh: read
/// once more, and answer from it if it now may be served without going
/// upstream (else the caller goes upstream holding the lock). Skipped when
/// nobody locked this key before (a first fill): nothing can have changed.
/// Without this, concurrent requests arriving as a revalidation completes
/// could revalidate the same key twice.
fn look_again(
    host: &impl Host,
    store: &Store<'_, impl Host>,
    route: &CacheRoute,
    req: &Request,
    keys: &Keys,
    guard: &LockGuard,
) -> Option<Lookup> {
    if !guard.key_locked_before {
        return None;
    }
    let Probe::Found(payload, meta) = probe(store, keys, req) else {
        return None;
    };
    let now = host.now_nanos();
    let judged = judge(route, keys, &EntryView::again(payload.bytes(), meta), now);
    match judged.usability {
        freshness::Usability::Fresh { ttl } | freshness::Usability::StaleAllowed { ttl }
            if judged.shareable =>
        {
            let status = hit_status(ttl, None);
            Some(hit(
                host,
                route,
                req,
                payload,
                meta,
                (judged.age, now),
                status,
            ))
        }
        _ => None,
    }
}

/// Takes the fill lock, unless this request's response can never fill the
/// entry (HEAD, request `no-store`).
fn fill_lock(store: &Store<'_, impl Host>, keys: &Keys) -> LockOutcome {
    if keys.head || keys.req_cc.no_store {
        return LockOutcome::Unavailable;
    }
    store.try_lock(&keys.primary)
}

fn go_upstream(mut ctx: MissContext, entry: Entry) -> Lookup {
    let add = validators(&entry);
    ctx.stale = Some(entry);
    if add.is_empty() {
        Lookup::Miss { ctx }
    } else {
        ctx.mode = Mode::Revalidate;
        Lookup::Revalidate {
            remove_request_headers: CLIENT_CONDITIONS,
            add_request_headers: add,
            ctx,
        }
    }
}

fn release(store: &Store<'_, impl Host>, ctx: &mut MissContext) {
    if let Some(g) = ctx.lock.take() {
        store.unlock(g);
    }
}

/// Releases the fill lock as "pass": nothing was stored (the origin failed,
/// or the response is not storable), so the requests waiting for the key go
/// upstream together rather than taking the lock one after another (during
/// an outage, one origin timeout each).
fn release_pass(store: &Store<'_, impl Host>, ctx: &mut MissContext) {
    if let Some(g) = ctx.lock.take() {
        store.unlock_pass(g);
    }
}

/// Path of a `Location` / `Content-Location` value when it names the same
/// host as the request.
fn same_host_path(value: &[u8], authority: &str) -> Option<String> {
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

fn serve_stale_if_error(
    host: &impl Host,
    route: &CacheRoute,
    ctx: &MissContext,
    upstream_status: Option<u32>,
) -> Option<CachedResponse> {
    let stale = ctx.stale.as_ref()?;
    let now = host.now_nanos();
    let (cc, life, age) = entry_times(stale, route.policy, now);
    if !freshness::stale_if_error_allows(life, age, &cc, &ctx.req_cc) {
        return None;
    }
    host.increment_metric(route.metrics.hit, 1);
    let ttl = life as i64 - age as i64;
    let status = fwd_status(
        ctx.fwd,
        upstream_status,
        false,
        Some("stale-if-error"),
        Some(ttl),
    );
    Some(respond(
        stale,
        &ctx.request_headers,
        age,
        now,
        status.into_bytes(),
    ))
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
            // client's own conditions make it valid for the client. Anyone
            // else gets a 502 (a retry, now a miss, fetches the full
            // response); a bodiless 304 to an unconditional GET would be
            // taken for an empty representation.
            None => {
                let cache_status =
                    fwd_status(ctx.fwd, Some(304), false, Some("validator-mismatch"), None);
                if etag::answer_304(&ctx.request_headers, response, now / NS, now / NS) {
                    ResponseDecision::DontStore { cache_status }
                } else {
                    ResponseDecision::Replace {
                        response: validator_mismatch(cache_status),
                    }
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
fn storable_now(
    route: &CacheRoute,
    ctx: &MissContext,
    status: u32,
    response: &[(String, Vec<u8>)],
    now: u64,
) -> Result<usize, &'static str> {
    if ctx.head {
        return Err("head");
    }
    let cc = ResponseDirectives::parse(response);
    let vary_names = storable::check(
        status,
        response,
        &cc,
        ctx.request_facts(),
        &route.policy.vary_allowlist,
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
        headers: storable::strip_for_storage(response),
        ..Entry::default()
    };
    let max = usize::try_from(route.store.max_entry_bytes).unwrap_or(usize::MAX);
    let max_body = max.checked_sub(skeleton.encoded_len()).ok_or("too-big")?;
    let declared = headers::first(response, "content-length")
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|s| s.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > max_body as u64) {
        return Err("too-big");
    }
    Ok(max_body)
}

/// Refreshes the stored entry from a 304 (RFC 9111 4.3.4) and builds the
/// response to send. `None` when the 304 does not match the stored entry.
fn revalidated(
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
    let mut merged = stale.clone();
    // The stored Age described the old response; the 304 brings its own.
    merged.headers.retain(|(n, _)| n != "age");
    let update: Vec<(String, Vec<u8>)> = storable::strip_for_storage(response)
        .into_iter()
        .filter(|(n, _)| n != "content-length")
        .collect();
    for (name, _) in &update {
        merged.headers.retain(|(n, _)| n != name);
    }
    merged.headers.extend(update);
    merged.request_time_ns = ctx.request_time_ns;
    merged.response_time_ns = ctx.response_time_ns;
    let cc = ResponseDirectives::parse(&merged.headers);
    let keep = storable::check(
        merged.status as u32,
        &merged.headers,
        &cc,
        ctx.request_facts(),
        &route.policy.vary_allowlist,
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
fn write_fill(
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

fn record_write(host: &impl Host, route: &CacheRoute, outcome: WriteOutcome) -> bool {
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
            let cc = ResponseDirectives::parse(response);
            match storable::check(
                status,
                response,
                &cc,
                ctx.request_facts(),
                &route.policy.vary_allowlist,
            ) {
                Ok(vary_names) => {
                    let entry = Entry {
                        primary: ctx.primary,
                        secondary: vary::secondary_key(&vary_names, &ctx.request_headers),
                        request_time_ns: ctx.request_time_ns,
                        response_time_ns: ctx.response_time_ns,
                        status: status as u16,
                        vary_names,
                        headers: storable::strip_for_storage(response),
                        body: body.to_vec(),
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    /// Headers as the API takes them.
    fn h(v: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        v.iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    /// A 1 MiB store with 64 KiB entries.
    fn store_1mib() -> CacheStoreConfig {
        CacheStoreConfig {
            max_bytes: 1 << 20,
            max_entry_bytes: 65536,
        }
    }

    /// Route "r" over `policy` and `store`, without metrics.
    fn test_route<'a>(policy: &'a CachePolicy, store: &'a CacheStoreConfig) -> CacheRoute<'a> {
        CacheRoute {
            name: "r",
            policy,
            store,
            metrics: &CacheMetrics::NONE,
        }
    }

    /// A GET of `a/x` with these headers.
    fn get(headers: &[(&str, &str)]) -> Request {
        Request {
            method: "GET".into(),
            path: "/x".into(),
            authority: "a".into(),
            headers: h(headers).into(),
            peer_ip: String::new(),
            norm_path: None,
        }
    }

    /// A miss for `r` (with `identity`) answered 200 with `response`:
    /// `Ok` when it was stored, else `Err(Cache-Status)`.
    fn fill_as(
        host: &impl Host,
        route: &CacheRoute,
        r: &Request,
        identity: Identity,
        response: &[(String, Vec<u8>)],
    ) -> Result<(), String> {
        let Lookup::Miss { mut ctx } = lookup_as(host, route, r, identity) else {
            panic!("expected a miss")
        };
        match on_response_headers(host, route, &mut ctx, 200, response) {
            ResponseDecision::Store { .. } => {
                assert!(store(host, route, &mut ctx, 200, response, b"body"));
                Ok(())
            }
            ResponseDecision::DontStore { cache_status } => Err(cache_status),
            other => panic!("{other:?}"),
        }
    }

    /// `r` at path `path`.
    fn at(path: &str, r: Request) -> Request {
        Request {
            path: path.into(),
            ..r
        }
    }

    #[test]
    fn key_paths_drop_fragments_and_optionally_queries() {
        assert_eq!(key_path("/a?b=1#f", false), "/a?b=1");
        assert_eq!(key_path("/a?b=1#f", true), "/a");
        assert_ne!(uri_hash("r", "h", "/a"), uri_hash("r", "h", "/b"));
        assert_ne!(uri_hash("r", "h", "/a"), uri_hash("s", "h", "/a"));
        assert_eq!(uri_hash("r", "H.com", "/a"), uri_hash("r", "h.com", "/a"));
    }

    #[test]
    fn the_uri_hash_is_sha256_of_the_length_prefixed_parts() {
        let mut m = b"meshguard/v1/cache/uri\0GET\0".to_vec();
        for part in [&b"r"[..], b"a.com:80", b"/P?q"] {
            m.extend_from_slice(&(part.len() as u32).to_le_bytes());
            m.extend_from_slice(part);
        }
        let want: [u8; 32] = Sha256::digest(&m).into();
        assert_eq!(uri_hash("r", "A.Com:80", "/P?q"), want);
        assert_eq!(uri_hash_memo("r", "A.Com:80", "/P?q"), want);
    }

    #[test]
    fn memoised_uri_hashes_are_the_hashes() {
        let long = "/".repeat(URI_MEMO_MAX_KEY);
        let cases = [
            ("r", "a.com", "/x"),
            ("r", "A.Com:8080", "/x?q=1"),
            ("route", "b", ""),
            ("r", "a.com", long.as_str()),
        ];
        for round in 0..3 {
            for (r, a, p) in cases {
                assert_eq!(uri_hash_memo(r, a, p), uri_hash(r, a, p), "{round} {r} {a}");
            }
            // Many keys: slots are shared and overwritten.
            for i in 0..(3 * URI_MEMO_SLOTS) {
                let p = format!("/p/{i}");
                assert_eq!(uri_hash_memo("r", "H", &p), uri_hash("r", "h", &p));
            }
        }
        assert_ne!(uri_hash_memo("r", "a", "/x"), uri_hash_memo("r", "a", "/y"));
        assert_ne!(uri_hash_memo("ra", "", "/x"), uri_hash_memo("r", "a", "/x"));
    }

    #[test]
    fn without_key_headers_the_primary_key_is_the_uri_hash() {
        let uri = uri_hash("r", "a", "/x");
        let req = h(&[("x-tenant", "1")]);
        assert_eq!(primary_hash(&uri, &[], &req), uri);
        let tenant = primary_hash(&uri, &["x-tenant".to_string()], &req);
        assert_ne!(tenant, uri);
        assert_ne!(
            tenant,
            primary_hash(&uri, &["x-tenant".to_string()], &h(&[("x-tenant", "2")]))
        );
    }

    #[test]
    fn a_hit_reads_the_store_once_and_copies_the_body_once() {
        use crate::host::fake::FakeHost;
        let host = FakeHost::new(1_700_000_000 * NS);
        let (policy, store_cfg) = (CachePolicy::default(), store_1mib());
        let route = test_route(&policy, &store_cfg);
        let mut stored = h(&[
            ("cache-control", "max-age=60"),
            ("etag", "\"v1\""),
            ("age", "3"),
            ("cache-status", "origin; hit"),
        ]);
        // Not UTF-8: sent as the bytes stored.
        stored.push(("x-raw".into(), vec![b'o', 0xe9, 0xff]));
        let Lookup::Miss { mut ctx } = lookup(&host, &route, &get(&[])) else {
            panic!("expected a miss")
        };
        on_response_headers(&host, &route, &mut ctx, 200, &stored);
        assert!(store(&host, &route, &mut ctx, 200, &stored, b"body"));
        host.advance(std::time::Duration::from_secs(2));
        let reads = std::cell::Cell::new(0);
        let counting = store::counting(&host, &reads);
        let Lookup::Hit(r) = lookup(&counting, &route, &get(&[("accept", "x")])) else {
            panic!("expected a hit")
        };
        assert_eq!(reads.get(), 1);
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"body");
        let mut want = h(&[
            ("cache-control", "max-age=60"),
            ("etag", "\"v1\""),
            ("x-raw", ""),
            ("age", "5"),
            ("cache-status", "origin; hit, meshguard; hit; ttl=55"),
        ]);
        want[2].1 = vec![b'o', 0xe9, 0xff];
        assert_eq!(r.headers.to_pairs(), want);
        // Conditional: a 304 with the kept fields only.
        let Lookup::Hit(r) = lookup(&counting, &route, &get(&[("if-none-match", "\"v1\"")])) else {
            panic!("expected a hit")
        };
        assert_eq!((r.status, r.body.len()), (304, 0));
        assert_eq!(
            r.headers.to_pairs(),
            h(&[
                ("cache-control", "max-age=60"),
                ("etag", "\"v1\""),
                ("age", "5"),
                ("cache-status", "origin; hit, meshguard; hit; ttl=55"),
            ])
        );
        // A validator that does not match: the full response.
        let Lookup::Hit(r) = lookup(&counting, &route, &get(&[("if-none-match", "\"v0\"")])) else {
            panic!("expected a hit")
        };
        assert_eq!((r.status, r.body.as_slice()), (200, &b"body"[..]));
        assert_eq!(r.headers.len(), 5);
    }

    #[test]
    fn a_token_is_a_credential_like_authorization() {
        use crate::host::fake::FakeHost;
        let host = FakeHost::new(1_700_000_000 * NS);
        let (policy, store_cfg) = (CachePolicy::default(), store_1mib());
        let route = test_route(&policy, &store_cfg);
        let (anonymous, token) = (Identity::default(), Identity { token: true });
        let private = h(&[("cache-control", "max-age=60")]);
        // Not stored from a request with a token...
        let refused = fill_as(&host, &route, &get(&[]), token, &private);
        assert_eq!(
            refused,
            Err("meshguard; fwd=uri-miss; fwd-status=200; detail=authorization".into())
        );
        // ... and an anonymous entry is not served to one.
        assert_eq!(
            fill_as(&host, &route, &get(&[]), anonymous, &private),
            Ok(())
        );
        assert!(matches!(lookup(&host, &route, &get(&[])), Lookup::Hit(_)));
        match lookup_as(&host, &route, &get(&[]), token) {
            Lookup::Miss { ctx } => assert_eq!(
                ctx.cache_status(),
                "meshguard; fwd=request; detail=authorization"
            ),
            other => panic!("{other:?}"),
        }
        // A response that allows sharing is shared.
        let shared = h(&[("cache-control", "s-maxage=60")]);
        let r = at("/shared", get(&[]));
        assert_eq!(fill_as(&host, &route, &r, token, &shared), Ok(()));
        assert!(matches!(
            lookup_as(&host, &route, &r, token),
            Lookup::Hit(_)
        ));
    }

    #[test]
    fn a_varied_header_too_big_to_keep_is_never_keyed_as_absent() {
        use crate::host::fake::FakeHost;
        let host = FakeHost::new(1_700_000_000 * NS);
        let (policy, store_cfg) = (CachePolicy::default(), store_1mib());
        let route = test_route(&policy, &store_cfg);
        let varies = h(&[("cache-control", "max-age=60"), ("vary", "accept-encoding")]);
        let plain = h(&[("cache-control", "max-age=60")]);
        let huge = format!("gzip, {}", "x".repeat(17_000));
        let many: Vec<(&str, &str)> = vec![("accept-encoding", "gzip"); MAX_KEPT_HEADERS + 1];
        for (name, attack) in [
            ("huge", vec![("accept-encoding", huge.as_str())]),
            ("many", many),
        ] {
            let r = at(&format!("/{name}"), get(&attack));
            let refused = fill_as(&host, &route, &r, Identity::default(), &varies);
            assert!(
                refused.is_err_and(|cs| cs.ends_with("detail=vary-request-too-big")),
                "{name}"
            );
            // A response that does not vary on it is stored as usual.
            assert_eq!(
                fill_as(&host, &route, &r, Identity::default(), &plain),
                Ok(()),
                "{name}"
            );
        }
    }

    #[test]
    fn a_revalidation_replaces_the_clients_conditions_with_the_stored_validators() {
        use crate::host::fake::FakeHost;
        let host = FakeHost::new(1_700_000_000 * NS);
        let (policy, store_cfg) = (CachePolicy::default(), store_1mib());
        let route = test_route(&policy, &store_cfg);
        let lm = "Sun, 06 Nov 1994 08:49:37 GMT";
        let stored = h(&[("cache-control", "max-age=1"), ("last-modified", lm)]);
        let Lookup::Miss { mut ctx } = lookup(&host, &route, &get(&[])) else {
            panic!("expected a miss")
        };
        on_response_headers(&host, &route, &mut ctx, 200, &stored);
        assert!(store(&host, &route, &mut ctx, 200, &stored, b"v1"));
        host.advance(std::time::Duration::from_secs(5));
        let client = get(&[
            ("if-none-match", "*"),
            ("if-match", "\"x\""),
            ("if-unmodified-since", lm),
            ("if-range", "\"x\""),
            ("range", "bytes=0-1"),
        ]);
        let Lookup::Revalidate {
            remove_request_headers,
            add_request_headers,
            mut ctx,
        } = lookup(&host, &route, &client)
        else {
            panic!("expected a revalidation")
        };
        for n in [
            "if-none-match",
            "if-modified-since",
            "if-match",
            "if-unmodified-since",
            "if-range",
            "range",
        ] {
            assert!(remove_request_headers.contains(&n), "{n}");
        }
        assert_eq!(add_request_headers, h(&[("if-modified-since", lm)]));
        // The origin's 304 answers meshguard's validator; the client's
        // `If-None-Match: *` is then evaluated against the refreshed entry.
        let ResponseDecision::Replace { response } = on_response_headers(
            &host,
            &route,
            &mut ctx,
            304,
            &h(&[("cache-control", "max-age=60")]),
        ) else {
            panic!("expected the refreshed entry")
        };
        assert_eq!((response.status, response.body.len()), (304, 0));
    }

    #[test]
    fn configured_freshness_never_applies_to_a_request_with_credentials() {
        use crate::host::fake::FakeHost;
        let host = FakeHost::new(1_700_000_000 * NS);
        let policy = CachePolicy {
            default_ttl_secs: Some(60),
            heuristic_freshness: true,
            ..CachePolicy::default()
        };
        let store_cfg = store_1mib();
        let route = test_route(&policy, &store_cfg);
        let lm = "Sun, 06 Nov 1994 08:49:37 GMT";
        let (anonymous, token) = (Identity::default(), Identity { token: true });
        let cookie = get(&[("cookie", "session=victim")]);
        let basic = get(&[("authorization", "Basic x")]);
        let must_revalidate = h(&[("cache-control", "must-revalidate")]);
        // (request, identity, response, why not stored): 3.5 refuses first
        // when it applies (not with must-revalidate).
        let cases = [
            (&cookie, anonymous, h(&[]), "credentials"),
            (
                &cookie,
                anonymous,
                h(&[("last-modified", lm)]),
                "credentials",
            ),
            (&cookie, anonymous, must_revalidate.clone(), "credentials"),
            (&basic, anonymous, h(&[]), "authorization"),
            (&basic, anonymous, must_revalidate.clone(), "credentials"),
            (
                &get(&[]),
                token,
                h(&[("last-modified", lm)]),
                "authorization",
            ),
            (&get(&[]), token, must_revalidate, "credentials"),
        ];
        for (i, (r, identity, response, why)) in cases.into_iter().enumerate() {
            let r = at(&format!("/{i}"), r.clone());
            let refused = fill_as(&host, &route, &r, identity, &response);
            assert!(
                refused
                    .as_ref()
                    .is_err_and(|cs| cs.ends_with(&format!("detail={why}"))),
                "{i}: {refused:?}"
            );
            // `public` allows it (and then 3.5 too).
            let public = h(&[("cache-control", "public")]);
            assert_eq!(
                fill_as(
                    &host,
                    &route,
                    &at(&format!("/public/{i}"), r),
                    identity,
                    &public
                ),
                Ok(()),
                "{i}"
            );
        }
        // Without credentials, default_ttl applies.
        assert_eq!(
            fill_as(&host, &route, &at("/anonymous", get(&[])), anonymous, &[]),
            Ok(())
        );
    }

    #[test]
    fn a_fill_overlapping_an_invalidation_is_not_stored() {
        use crate::host::fake::FakeHost;
        let host = FakeHost::new(1_700_000_000 * NS);
        let (policy, store_cfg) = (CachePolicy::default(), store_1mib());
        let route = test_route(&policy, &store_cfg);
        let cc = h(&[("cache-control", "max-age=60")]);
        let unsafe_request = |host: &FakeHost| {
            let post = Request {
                method: "POST".into(),
                ..get(&[])
            };
            let Lookup::Bypass { mut ctx } = lookup(host, &route, &post) else {
                panic!("expected a bypass")
            };
            on_response_headers(host, &route, &mut ctx, 200, &[]);
        };
        // The GET is looked up, the POST's 2xx invalidates, the GET's
        // response arrives: not stored.
        let Lookup::Miss { mut ctx } = lookup(&host, &route, &get(&[])) else {
            panic!("expected a miss")
        };
        host.advance(std::time::Duration::from_millis(100));
        unsafe_request(&host);
        host.advance(std::time::Duration::from_millis(100));
        on_response_headers(&host, &route, &mut ctx, 200, &cc);
        assert!(!store(
            &host,
            &route,
            &mut ctx,
            200,
            &cc,
            b"before the POST"
        ));
        // A GET looked up after the invalidation stores.
        host.advance(std::time::Duration::from_millis(1));
        let Lookup::Miss { mut ctx } = lookup(&host, &route, &get(&[])) else {
            panic!("expected a miss")
        };
        on_response_headers(&host, &route, &mut ctx, 200, &cc);
        assert!(store(&host, &route, &mut ctx, 200, &cc, b"after the POST"));
        // An invalidation recorded between the check and the write: the
        // check after the write drops the entry.
        let r = Request {
            path: "/race".into(),
            ..get(&[])
        };
        let Lookup::Miss { mut ctx } = lookup(&host, &route, &r) else {
            panic!("expected a miss")
        };
        on_response_headers(&host, &route, &mut ctx, 200, &cc);
        let inv_reads = std::cell::Cell::new(0);
        let uri = ctx.uri;
        let racing = store::Spy {
            host: &host,
            before_get: |key: &str| {
                if key.starts_with("meshguard/v1/cache/inv/") {
                    inv_reads.set(inv_reads.get() + 1);
                    if inv_reads.get() == 2 {
                        // Another worker, between recording and dropping.
                        Store::new(&host, &store_cfg).record_invalidation(&uri);
                    }
                }
            },
        };
        assert!(!store(&racing, &route, &mut ctx, 200, &cc, b"raced"));
        assert_eq!(inv_reads.get(), 2);
        assert!(matches!(lookup(&host, &route, &r), Lookup::Miss { .. }));
    }

    #[test]
    fn location_on_same_host_only() {
        assert_eq!(same_host_path(b"/x", "a.com").as_deref(), Some("/x"));
        assert_eq!(
            same_host_path(b"https://A.com:443/y?q", "a.com").as_deref(),
            Some("/y?q")
        );
        assert_eq!(
            same_host_path(b"http://a.com", "a.com:8080").as_deref(),
            Some("/")
        );
        assert_eq!(same_host_path(b"https://b.com/y", "a.com"), None);
        assert_eq!(same_host_path(b"//b.com/y", "a.com"), None);
        assert_eq!(same_host_path(b"rel/y", "a.com"), None);
    }

    #[test]
    fn a_mismatched_304_is_a_502_unless_the_client_asked_for_it() {
        use crate::host::fake::FakeHost;
        let host = FakeHost::new(1_700_000_000 * NS);
        let (policy, store_cfg) = (CachePolicy::default(), store_1mib());
        let route = test_route(&policy, &store_cfg);
        let stored = h(&[("cache-control", "max-age=1"), ("etag", "\"v1\"")]);
        let answer = h(&[("etag", "\"v2\"")]);
        for (client, want_502) in [(vec![], true), (vec![("if-none-match", "\"v2\"")], false)] {
            let Lookup::Miss { mut ctx } = lookup(&host, &route, &get(&[])) else {
                panic!("expected a miss")
            };
            assert!(matches!(
                on_response_headers(&host, &route, &mut ctx, 200, &stored),
                ResponseDecision::Store { .. }
            ));
            assert!(store(&host, &route, &mut ctx, 200, &stored, b"body"));
            host.advance(std::time::Duration::from_secs(5));
            let Lookup::Revalidate { mut ctx, .. } = lookup(&host, &route, &get(&client)) else {
                panic!("expected a revalidation")
            };
            match on_response_headers(&host, &route, &mut ctx, 304, &answer) {
                ResponseDecision::Replace { response } => {
                    assert!(want_502);
                    assert_eq!(response.status, 502);
                    assert_eq!(
                        response.header("cache-status"),
                        Some(
                            &b"meshguard; fwd=stale; fwd-status=304; detail=validator-mismatch"[..]
                        )
                    );
                }
                ResponseDecision::DontStore { cache_status } => {
                    assert!(!want_502);
                    assert!(cache_status.ends_with("detail=validator-mismatch"));
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn a_request_forced_revalidation_reports_fwd_request() {
        use crate::host::fake::FakeHost;
        let host = FakeHost::new(1_700_000_000 * NS);
        let (policy, store_cfg) = (CachePolicy::default(), store_1mib());
        let route = test_route(&policy, &store_cfg);
        let stored = h(&[
            ("cache-control", "max-age=60, stale-if-error=60"),
            ("etag", "\"v1\""),
        ]);
        let Lookup::Miss { mut ctx } = lookup(&host, &route, &get(&[])) else {
            panic!("expected a miss")
        };
        on_response_headers(&host, &route, &mut ctx, 200, &stored);
        assert!(store(&host, &route, &mut ctx, 200, &stored, b"body"));
        let no_cache = get(&[("cache-control", "no-cache")]);
        // Fresh entry, origin 304: fwd=request, not fwd=stale.
        let Lookup::Revalidate { mut ctx, .. } = lookup(&host, &route, &no_cache) else {
            panic!("expected a revalidation")
        };
        let ResponseDecision::Replace { response } =
            on_response_headers(&host, &route, &mut ctx, 304, &h(&[("etag", "\"v1\"")]))
        else {
            panic!("expected the refreshed entry")
        };
        assert_eq!(
            response.header("cache-status"),
            Some(&b"meshguard; fwd=request; fwd-status=304; stored; ttl=60"[..])
        );
        // Fresh entry, origin 503 within stale-if-error: fwd=request too.
        let Lookup::Revalidate { mut ctx, .. } = lookup(&host, &route, &no_cache) else {
            panic!("expected a revalidation")
        };
        let ResponseDecision::Replace { response } =
            on_response_headers(&host, &route, &mut ctx, 503, &[])
        else {
            panic!("expected the stored entry")
        };
        assert_eq!(
            response.header("cache-status"),
            Some(&b"meshguard; fwd=request; fwd-status=503; ttl=60; detail=stale-if-error"[..])
        );
    }

    #[test]
    fn a_too_big_body_lets_waiters_go_upstream_together() {
        use crate::host::fake::FakeHost;
        let host = FakeHost::new(1_700_000_000 * NS);
        let (policy, store_cfg) = (CachePolicy::default(), store_1mib());
        let route = test_route(&policy, &store_cfg);
        let get = |path: &str| Request {
            method: "GET".into(),
            path: path.into(),
            authority: "a".into(),
            headers: Default::default(),
            peer_ip: String::new(),
            norm_path: None,
        };
        let miss = |path: &str| match lookup(&host, &route, &get(path)) {
            Lookup::Miss { ctx } => Some(ctx),
            Lookup::Wait { .. } => None,
            other => panic!("{other:?}"),
        };
        let cc = vec![("cache-control".to_string(), b"max-age=60".to_vec())];
        for (path, too_big) in [("/big", true), ("/reset", false)] {
            let mut first = miss(path).expect("the first request misses");
            assert!(first.holds_fill_lock());
            assert!(matches!(
                on_response_headers(&host, &route, &mut first, 200, &cc),
                ResponseDecision::Store { .. }
            ));
            assert!(miss(path).is_none(), "others wait for the filler");
            if too_big {
                abandon_too_big(&host, &route, &mut first);
                // Everyone goes upstream at once, no one takes the lock.
                for _ in 0..3 {
                    assert!(!miss(path).expect("no waiting").holds_fill_lock());
                }
            } else {
                abandon(&host, &route, &mut first);
                // A reset says nothing about the response: the next one fills.
                assert!(miss(path).expect("no waiting").holds_fill_lock());
                assert!(miss(path).is_none());
            }
        }
    }

    #[test]
    fn origin_failures_let_waiters_go_upstream_together() {
        use crate::host::fake::FakeHost;
        let host = FakeHost::new(1_700_000_000 * NS);
        let (policy, store_cfg) = (CachePolicy::default(), store_1mib());
        let route = test_route(&policy, &store_cfg);
        let get = |path: &str| Request {
            method: "GET".into(),
            path: path.into(),
            authority: "a".into(),
            headers: Default::default(),
            peer_ip: String::new(),
            norm_path: None,
        };
        let cc = vec![(
            "cache-control".to_string(),
            b"max-age=1, stale-if-error=60".to_vec(),
        )];
        for (path, failure) in [("/reset", None), ("/503", Some(503))] {
            let Lookup::Miss { mut ctx } = lookup(&host, &route, &get(path)) else {
                panic!("expected a miss")
            };
            on_response_headers(&host, &route, &mut ctx, 200, &cc);
            assert!(store(&host, &route, &mut ctx, 200, &cc, b"good"));
            host.advance(std::time::Duration::from_secs(5));
            let Lookup::Miss { mut ctx } = lookup(&host, &route, &get(path)) else {
                panic!("expected a stale miss")
            };
            assert!(ctx.holds_fill_lock());
            assert!(matches!(
                lookup(&host, &route, &get(path)),
                Lookup::Wait { .. }
            ));
            let stale = match failure {
                None => on_upstream_failure(&host, &route, &mut ctx),
                Some(st) => match on_response_headers(&host, &route, &mut ctx, st, &[]) {
                    ResponseDecision::Replace { response } => Some(response),
                    other => panic!("{other:?}"),
                },
            };
            assert_eq!(stale.map(|r| r.body), Some(b"good".to_vec()));
            for _ in 0..3 {
                match lookup(&host, &route, &get(path)) {
                    Lookup::Miss { ctx } => assert!(!ctx.holds_fill_lock()),
                    other => panic!("{path}: {other:?}"),
                }
            }
        }
    }

    /// A worker's host that lets another worker act (`between`, once) right
    /// after this worker read the store and before it reads the fill lock.
    fn acts_before_lock_read<'a>(
        host: &'a crate::host::fake::FakeHost,
        between: &'a std::cell::RefCell<Option<impl FnOnce()>>,
    ) -> store::Spy<'a, impl Fn(&str) + 'a> {
        store::Spy {
            host,
            before_get: move |key: &str| {
                if key.starts_with("meshguard/v1/cache/lock/") {
                    if let Some(act) = between.borrow_mut().take() {
                        act();
                    }
                }
            },
        }
    }

    #[test]
    fn a_request_that_locks_after_a_revalidation_completed_is_a_hit() {
        use crate::host::fake::FakeHost;
        let host = FakeHost::new(1_700_000_000 * NS);
        let (policy, store_cfg) = (CachePolicy::default(), store_1mib());
        let route = test_route(&policy, &store_cfg);
        let first = h(&[("cache-control", "max-age=1"), ("etag", "\"k\"")]);
        let Lookup::Miss { mut ctx } = lookup(&host, &route, &get(&[])) else {
            panic!("expected a miss")
        };
        on_response_headers(&host, &route, &mut ctx, 200, &first);
        assert!(store(&host, &route, &mut ctx, 200, &first, b"kept"));
        host.advance(std::time::Duration::from_secs(3));
        // Worker B revalidates; worker A reads the stale entry, then B's 304
        // lands (entry refreshed, lock released) before A reaches the lock.
        let Lookup::Revalidate { ctx: b_ctx, .. } = lookup(&host, &route, &get(&[])) else {
            panic!("expected a revalidation")
        };
        assert!(b_ctx.holds_fill_lock());
        let b_ctx = std::cell::RefCell::new(b_ctx);
        let not_modified = h(&[("cache-control", "max-age=60"), ("etag", "\"k\"")]);
        let between = std::cell::RefCell::new(Some(|| {
            let mut b = b_ctx.borrow_mut();
            let d = on_response_headers(&host, &route, &mut b, 304, &not_modified);
            assert!(matches!(d, ResponseDecision::Replace { .. }), "{d:?}");
        }));
        let worker_a = acts_before_lock_read(&host, &between);
        match lookup(&worker_a, &route, &get(&[])) {
            Lookup::Hit(r) => assert_eq!((r.status, r.body), (200, b"kept".to_vec())),
            other => panic!("A must not revalidate again: {other:?}"),
        }
        assert!(between.borrow().is_none(), "B acted");
        // A released the lock it took: once stale again, the next request
        // takes it (and does not wait for A).
        host.advance(std::time::Duration::from_secs(61));
        match lookup(&host, &route, &get(&[])) {
            Lookup::Revalidate { ctx, .. } => assert!(ctx.holds_fill_lock()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_request_that_locks_after_a_fill_completed_is_a_hit() {
        use crate::host::fake::FakeHost;
        let host = FakeHost::new(1_700_000_000 * NS);
        let (policy, store_cfg) = (CachePolicy::default(), store_1mib());
        let route = test_route(&policy, &store_cfg);
        let cc = h(&[("cache-control", "max-age=60")]);
        let Lookup::Miss { ctx: b_ctx } = lookup(&host, &route, &get(&[])) else {
            panic!("expected a miss")
        };
        assert!(b_ctx.holds_fill_lock());
        let b_ctx = std::cell::RefCell::new(b_ctx);
        let between = std::cell::RefCell::new(Some(|| {
            let mut b = b_ctx.borrow_mut();
            on_response_headers(&host, &route, &mut b, 200, &cc);
            assert!(store(&host, &route, &mut b, 200, &cc, b"filled"));
        }));
        let worker_a = acts_before_lock_read(&host, &between);
        match lookup(&worker_a, &route, &get(&[])) {
            Lookup::Hit(r) => assert_eq!(r.body, b"filled"),
            other => panic!("A must not fetch again: {other:?}"),
        }
        assert!(between.borrow().is_none(), "B acted");
        // A key nobody locked before is not read twice: a plain miss.
        match lookup(
            &host,
            &route,
            &Request {
                path: "/other".into(),
                ..get(&[])
            },
        ) {
            Lookup::Miss { ctx } => assert!(ctx.holds_fill_lock()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn cache_status_strings() {
        assert_eq!(hit_status(42, None), b"meshguard; hit; ttl=42");
        assert_eq!(
            hit_status(-3, Some("stale-while-revalidate")),
            b"meshguard; hit; ttl=-3; detail=stale-while-revalidate"
        );
        assert_eq!(
            fwd_status("uri-miss", Some(200), true, None, None),
            "meshguard; fwd=uri-miss; fwd-status=200; stored"
        );
        assert_eq!(
            fwd_status("stale", Some(503), false, Some("stale-if-error"), Some(-5)),
            "meshguard; fwd=stale; fwd-status=503; ttl=-5; detail=stale-if-error"
        );
    }
}
