//! Responses built from stored entries: hits, 304s, `Cache-Status`
//! values, and the 504 of `only-if-cached`.

use super::directives::ResponseDirectives;
use super::entry::{Entry, EntryView};
use super::policy::CachePolicy;
use super::store::{self};
use super::{etag, freshness, headers, range};
use crate::host::header_map::HeaderMap;

/// The name meshguard uses in `Cache-Status`.
pub const CACHE_NAME: &str = "meshguard";
pub(crate) const NS: u64 = 1_000_000_000;

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

pub(crate) fn fwd_status(
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
pub(crate) fn hit_status(ttl: i64, detail: Option<&str>) -> Vec<u8> {
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

/// Whether an entry may answer a request carrying `Authorization` (3.5).
pub(crate) fn shareable_with_authorization(cc: &ResponseDirectives) -> bool {
    cc.public || cc.s_maxage.is_some() || cc.must_revalidate
}

/// Fields kept in a 304 built from a stored response.
pub(crate) const KEEP_304: [&str; 7] = [
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
pub(crate) fn respond(
    entry: &Entry,
    request: &(impl headers::HeaderList + ?Sized),
    age: u64,
    now: u64,
    cache_status: Vec<u8>,
) -> CachedResponse {
    let conditional = etag::is_conditional(request);
    let (mut response, with_body) = respond_headers(
        entry.status,
        entry
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_slice())),
        entry.headers.len(),
        entry.response_time_ns,
        request,
        conditional,
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
/// `conditional`: the request has `If-None-Match` / `If-Modified-Since`
/// ([`etag::is_conditional`], found by the caller's one pass).
pub(crate) fn respond_in_place(
    view: &EntryView<'_>,
    request: &(impl headers::HeaderList + ?Sized),
    conditional: bool,
    age_now: (u64, u64),
    cache_status: Vec<u8>,
) -> (CachedResponse, Option<(usize, usize)>) {
    let (response, with_body) = respond_headers(
        view.status,
        view.headers(),
        view.header_count(),
        view.response_time_ns,
        request,
        conditional,
        age_now,
        cache_status,
    );
    (
        response,
        with_body.then_some((view.body_offset, view.body_len)),
    )
}

/// [`respond_in_place`] for a GET with a `Range` (see [`range`]): a 206
/// of the part asked, a 416, or (several ranges, an unreadable one, an
/// `If-Range` that does not hold, a stored status other than 200) the
/// whole response. A request whose own conditions make it a 304 gets the
/// 304.
pub(crate) fn respond_range_in_place(
    view: &EntryView<'_>,
    request: &(impl headers::HeaderList + ?Sized),
    conditional: bool,
    range_value: &[u8],
    age_now: (u64, u64),
    cache_status: Vec<u8>,
) -> (CachedResponse, Option<(usize, usize)>) {
    let len = view.body_len as u64;
    let applies = view.status == 200
        && headers::first(request, "if-range")
            .is_none_or(|v| range::if_range_holds(v, view.headers()));
    let ask = if applies {
        range::ask(range_value, len)
    } else {
        range::RangeAsk::Whole
    };
    let partial = match ask {
        range::RangeAsk::Whole => {
            return respond_in_place(view, request, conditional, age_now, cache_status)
        }
        range::RangeAsk::Part { .. } => 206,
        range::RangeAsk::Unsatisfiable => 416,
    };
    let (mut response, whole) = respond_in_place(view, request, conditional, age_now, cache_status);
    let with_body = whole.is_some();
    if response.status != 304 {
        // The part's own length and range replace the whole's.
        let mut out = HeaderMap::with_capacity(response.headers.len() + 1, 64);
        for (n, v) in response.headers.iter() {
            if n != b"content-length" && n != b"content-range" {
                out.add(n, v);
            }
        }
        out.add(b"content-range", &range::content_range(ask, len));
        response.headers = out;
        response.status = partial;
    }
    let body = match ask {
        range::RangeAsk::Part { first, last } if with_body && response.status == 206 => Some((
            view.body_offset + first as usize,
            (last - first + 1) as usize,
        )),
        _ if response.status == 304 || response.status == 416 => None,
        _ => whole,
    };
    (response, body)
}

/// Completes [`respond_in_place`]: the body is moved out of the buffer the
/// store read (no copy).
pub(crate) fn with_body(
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
pub(crate) fn respond_headers<'a>(
    status: u16,
    stored: impl Iterator<Item = (&'a str, &'a [u8])> + Clone,
    count: usize,
    response_time_ns: u64,
    request: &(impl headers::HeaderList + ?Sized),
    conditional: bool,
    (age, now): (u64, u64),
    cache_status: Vec<u8>,
) -> (CachedResponse, bool) {
    let not_modified = (200..300).contains(&status) && conditional && {
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

pub(crate) fn entry_times(
    entry: &Entry,
    policy: &CachePolicy,
    now: u64,
) -> (ResponseDirectives, u64, u64) {
    let targeted = super::directives::as_targeted(&entry.headers, &policy.targeted);
    let headers: &[(String, Vec<u8>)] = targeted.as_deref().unwrap_or(&entry.headers);
    let cc = ResponseDirectives::parse(headers);
    let (life, _) = freshness::lifetime(
        entry.status as u32,
        headers,
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

pub(crate) fn validators(entry: &Entry) -> Vec<(String, Vec<u8>)> {
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
pub(crate) fn gateway_timeout(why: &str) -> CachedResponse {
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
pub(crate) fn validator_mismatch(cache_status: String) -> CachedResponse {
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
