//! The request side: [`lookup`] decides hit, miss, revalidation, wait or
//! bypass, and builds the [`MissContext`] the response side needs.

use super::directives::{RequestDirectives, ResponseDirectives};
use super::entry::{self, Entry, EntryView};
use super::policy::CachePolicy;
use super::store::{self, CacheStoreConfig, LockGuard, LockOutcome, Probe, Store};
use super::{freshness, storable, vary};
use crate::cache::key::is_safe;
use crate::cache::key::Keys;
use crate::cache::respond::fwd_status;
use crate::cache::respond::gateway_timeout;
use crate::cache::respond::hit_status;
use crate::cache::respond::respond_in_place;
use crate::cache::respond::respond_range_in_place;
use crate::cache::respond::shareable_with_authorization;
use crate::cache::respond::validators;
use crate::cache::respond::with_body;
use crate::cache::CacheMetrics;
use crate::cache::CachedResponse;
use crate::cache::Identity;
use crate::host::Host;
use crate::request::Request;

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
pub(crate) const MAX_KEPT_HEADERS: usize = 64;

/// Everything the cache needs to know about the route a request matched.
#[derive(Debug, Clone, Copy)]
pub struct CacheRoute<'a> {
    pub name: &'a str,
    pub policy: &'a CachePolicy,
    pub store: &'a CacheStoreConfig,
    pub metrics: &'a CacheMetrics,
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
    /// `on_response_headers` (it invalidates after unsafe methods and
    /// gives the `Cache-Status`).
    Bypass { ctx: MissContext },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Fill,
    Revalidate,
    Bypass,
    Invalidate,
}

/// Per-request state between the request and the response callbacks.
#[derive(Debug)]
pub struct MissContext {
    pub(crate) mode: Mode,
    pub(crate) fwd: &'static str,
    pub(crate) detail: Option<&'static str>,
    pub(crate) head: bool,
    pub(crate) authority: String,
    pub(crate) uri: [u8; 32],
    pub(crate) primary: [u8; 32],
    pub(crate) request_headers: Vec<(String, Vec<u8>)>,
    /// Names in `vary_allowlist` with a line `request_headers` could not
    /// keep (over `MAX_HEADER_VALUE`, or past `MAX_KEPT_HEADERS` lines): a
    /// response varying on one is not stored, since its secondary key
    /// could not be computed exactly.
    pub(crate) unkept_vary: Vec<String>,
    pub(crate) authenticated: bool,
    /// The request had one of [`storable::CONDITIONS`].
    pub(crate) conditional: bool,
    /// The request carried credentials: `Authorization`, a token, or a
    /// `Cookie`. Its response gets no configured freshness (`default_ttl`,
    /// heuristic) unless it is `public`.
    pub(crate) credentials: bool,
    pub(crate) req_cc: RequestDirectives,
    pub(crate) request_time_ns: u64,
    pub(crate) response_time_ns: u64,
    pub(crate) lock: Option<LockGuard>,
    pub(crate) stale: Option<Entry>,
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

    pub(crate) fn request_facts(&self) -> storable::RequestFacts {
        storable::RequestFacts {
            authenticated: self.authenticated,
            no_store: self.req_cc.no_store,
            conditional: self.conditional,
        }
    }
}

pub(crate) fn context(
    route: &CacheRoute,
    req: &Request,
    now: u64,
    identity: Identity,
) -> MissContext {
    context_from(route, req, now, Keys::of(route, req, identity))
}

/// The request's state for the response side (built only when the request
/// goes upstream: a hit needs none of it).
pub(crate) fn context_from(route: &CacheRoute, req: &Request, now: u64, keys: Keys) -> MissContext {
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
    let (payload, meta) = match probe(host, &store, route, &keys, req) {
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

/// A `PURGE` the filter authorised (the route's `purge` claim rules held
/// for the request's verified token): drops every stored variant of the
/// request's URI (route, host, path and query unless `ignore_query`) and
/// records an invalidation, so that a fill in flight is not stored.
/// Returns how many stored responses were dropped (counted in `purged`).
pub fn purge(host: &impl Host, route: &CacheRoute, req: &Request) -> usize {
    let keys = Keys::of(route, req, Identity::default());
    let n = Store::new(host, route.store).invalidate(&keys.uri);
    host.increment_metric(route.metrics.purged, n as i64);
    log::info!(
        "meshguard: cache: {}: purge dropped {n} entries",
        route.name
    );
    n
}

/// What an authorised `PURGE` did ([`purge_request`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PurgeOutcome {
    /// By URL: how many stored responses were dropped.
    Url(usize),
    /// By path prefix (`Meshguard-Purge: prefix`): the prefix (the path).
    Prefix(String),
    /// By tag (`Meshguard-Purge-Tag`): the tags.
    Tags(Vec<String>),
    /// The request asks for a purge the route does not offer, or is malformed.
    BadRequest(&'static str),
    /// The purge log could not be written: nothing was purged.
    Unavailable,
}

/// An authorised `PURGE` (see [`purge`](super::purge)): by tag with
/// `Meshguard-Purge-Tag: t1 t2` (space- or comma-separated, at most
/// `MAX_TAGS_PER_PURGE`, routes with
/// `purge.tag_header`), by path prefix with `Meshguard-Purge: prefix` (the
/// request's path and host, routes with `purge.prefix`), else by URL
/// ([`purge`]). Counted in `purged_prefix` / `purged_tag` / `purged`.
pub fn purge_request(host: &impl Host, route: &CacheRoute, req: &Request) -> PurgeOutcome {
    use super::purge::{self as pl, Record};
    let mode = req.header("meshguard-purge");
    let tag_lines: Vec<&[u8]> = req.header_all("meshguard-purge-tag").collect();
    let now = host.now_nanos();
    if !tag_lines.is_empty() {
        if mode.is_some() {
            return PurgeOutcome::BadRequest("one kind of purge per request");
        }
        if route.policy.purge_tag_header.is_none() {
            return PurgeOutcome::BadRequest(
                "purge by tag needs the route's cache.purge.tag_header",
            );
        }
        let mut tags: Vec<&[u8]> = Vec::new();
        for line in tag_lines {
            for t in line.split(|b| matches!(b, b' ' | b',' | b'\t')) {
                if !t.is_empty() && !tags.contains(&t) {
                    tags.push(t);
                }
            }
        }
        if tags.is_empty() || tags.len() > pl::MAX_TAGS_PER_PURGE {
            return PurgeOutcome::BadRequest("Meshguard-Purge-Tag: 1 to 16 tags");
        }
        let records: Vec<Record> = tags.iter().map(|t| Record::tag(now, t)).collect();
        if !pl::append(host, route.name, now, &records) {
            return PurgeOutcome::Unavailable;
        }
        host.increment_metric(route.metrics.purged_tag, 1);
        log::info!(
            "meshguard: cache: {}: purged {} tags",
            route.name,
            tags.len()
        );
        return PurgeOutcome::Tags(
            tags.iter()
                .map(|t| String::from_utf8_lossy(t).into_owned())
                .collect(),
        );
    }
    match mode {
        None => PurgeOutcome::Url(purge(host, route, req)),
        Some(m) if m.eq_ignore_ascii_case(b"prefix") => {
            if !route.policy.purge_prefix {
                return PurgeOutcome::BadRequest(
                    "purge by prefix needs the route's cache.purge.prefix",
                );
            }
            if req.path.len() > pl::MAX_PREFIX_BYTES {
                return PurgeOutcome::BadRequest("prefix over 4096 bytes");
            }
            let r = Record::prefix(now, &req.authority, &req.path);
            if !pl::append(host, route.name, now, &[r]) {
                return PurgeOutcome::Unavailable;
            }
            host.increment_metric(route.metrics.purged_prefix, 1);
            log::info!(
                "meshguard: cache: {}: purged prefix {}",
                route.name,
                req.path
            );
            PurgeOutcome::Prefix(req.path.clone())
        }
        Some(_) => PurgeOutcome::BadRequest("Meshguard-Purge: only \"prefix\""),
    }
}

/// A `PURGE` the filter refused (counted in `purge_denied`).
pub fn purge_denied(host: &impl Host, route: &CacheRoute) {
    host.increment_metric(route.metrics.purge_denied, 1);
}

/// Nothing stored answers the request (`fwd`: `uri-miss` or `vary-miss`).
pub(crate) fn miss(
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

/// The stored entry of the request's key whose `Vary` values match it,
/// unless a purge by prefix or tag hid it (read from the route's purge log,
/// one shared-data read, only on routes that purge so: see
/// [`purge`](super::purge)). A hidden entry makes a `Nothing`.
pub(crate) fn probe(
    host: &impl Host,
    store: &Store<'_, impl Host>,
    route: &CacheRoute,
    keys: &Keys,
    req: &Request,
) -> Probe {
    let log = route
        .policy
        .reads_purge_log()
        .then(|| super::purge::PurgeLog::read(host, route.name))
        .filter(|l| !l.is_empty());
    let mut hidden = false;
    let found = store.probe(&keys.uri, &keys.primary, |e| {
        if e.secondary != vary::secondary_key_of(e.vary_names(), &req.headers) {
            return false;
        }
        let Some(log) = &log else {
            return true;
        };
        let tags = || match &route.policy.purge_tag_header {
            Some(name) => super::purge::tag_hashes(
                e.headers()
                    .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v),
            ),
            None => (Vec::new(), false),
        };
        let gone = log.hides(e.response_time_ns, &req.authority, &req.path, tags);
        hidden |= gone;
        !gone
    });
    match found {
        Probe::Rejected if hidden => Probe::Nothing,
        other => other,
    }
}

/// What a stored entry is worth to this request at `now`.
pub(crate) struct Judged {
    cc: ResponseDirectives,
    age: u64,
    usability: freshness::Usability,
    /// False when the request carries `Authorization` or a token and the
    /// entry may not answer it (RFC 9111 3.5).
    shareable: bool,
}

pub(crate) fn judge(route: &CacheRoute, keys: &Keys, view: &EntryView<'_>, now: u64) -> Judged {
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
pub(crate) fn hit(
    host: &impl Host,
    route: &CacheRoute,
    req: &Request,
    payload: store::Payload,
    meta: entry::EntryMeta,
    age_now: (u64, u64),
    cache_status: Vec<u8>,
) -> Lookup {
    host.increment_metric(route.metrics.hit, 1);
    let view = EntryView::again(payload.bytes(), meta);
    // One pass over the request for what the response depends on: its
    // conditions and its range.
    let (mut conditional, mut range) = (false, None);
    for (n, v) in req.headers.raw_iter() {
        // By length first: most names are none of the three.
        match n.len() {
            5 if range.is_none() && n.eq_ignore_ascii_case(b"range") => range = Some(v),
            13 if n.eq_ignore_ascii_case(b"if-none-match") => conditional = true,
            17 if n.eq_ignore_ascii_case(b"if-modified-since") => conditional = true,
            _ => {}
        }
    }
    let parts = match range {
        Some(r) if req.method == "GET" => {
            respond_range_in_place(&view, &req.headers, conditional, r, age_now, cache_status)
        }
        _ => respond_in_place(&view, &req.headers, conditional, age_now, cache_status),
    };
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
pub(crate) fn look_again(
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
    let Probe::Found(payload, meta) = probe(host, store, route, keys, req) else {
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
pub(crate) fn fill_lock(store: &Store<'_, impl Host>, keys: &Keys) -> LockOutcome {
    if keys.head || keys.req_cc.no_store {
        return LockOutcome::Unavailable;
    }
    store.try_lock(&keys.primary)
}

pub(crate) fn go_upstream(mut ctx: MissContext, entry: Entry) -> Lookup {
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

pub(crate) fn release(store: &Store<'_, impl Host>, ctx: &mut MissContext) {
    if let Some(g) = ctx.lock.take() {
        store.unlock(g);
    }
}

/// Releases the fill lock as "pass": nothing was stored (the origin failed,
/// or the response is not storable), so the requests waiting for the key go
/// upstream together rather than taking the lock one after another (during
/// an outage, one origin timeout each).
pub(crate) fn release_pass(store: &Store<'_, impl Host>, ctx: &mut MissContext) {
    if let Some(g) = ctx.lock.take() {
        store.unlock_pass(g);
    }
}
