//! Cache keys: the request URI hash (with a per-worker memo), the
//! primary key with its audience, and what a lookup knows before it reads
//! the store.

use super::directives::RequestDirectives;
use super::store::{self};
use super::{headers, vary};
use crate::cache::CacheRoute;
use crate::request::Request;
use sha2::{Digest, Sha256};

/// The path as keyed: fragment dropped, query dropped with `ignore_query`.
pub(crate) fn key_path(path: &str, ignore_query: bool) -> &str {
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
pub(crate) const URI_HASH_PREFIX: &[u8] = b"meshguard/v1/cache/uri\0GET\0";

/// Hash of (method GET, route, authority, path): all variants of a URI.
/// The authority is lower-cased (without allocating).
pub fn uri_hash(route: &str, authority: &str, path: &str) -> [u8; 32] {
    let mut key = vec![0u8; uri_key_len(route, authority, path)];
    write_uri_key(route, authority, path, &mut key);
    hash_uri_key(&key)
}

/// Length of the bytes [`uri_hash`] hashes after its prefix.
pub(crate) fn uri_key_len(route: &str, authority: &str, path: &str) -> usize {
    12 + route.len() + authority.len() + path.len()
}

/// Writes the bytes [`uri_hash`] hashes after its prefix into `key`
/// ([`uri_key_len`] long): each part's length (u32 LE) and bytes, the
/// authority lower-cased.
pub(crate) fn write_uri_key(route: &str, authority: &str, path: &str, key: &mut [u8]) {
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
pub(crate) fn hash_uri_key(key: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(URI_HASH_PREFIX);
    h.update(key);
    h.finalize().into()
}

/// Keys of [`UriMemo`] (the bytes [`uri_hash`] hashes after its prefix)
/// longer than this are hashed every time.
pub(crate) const URI_MEMO_MAX_KEY: usize = 256;
/// Slots of [`UriMemo`].
pub(crate) const URI_MEMO_SLOTS: usize = 128;

/// Recent URI hashes of this worker (a VM runs one thread; natively, each
/// thread has its own): SHA-256 is the largest cost of a hit, and hot URIs
/// repeat. Direct-mapped, bounded (at most [`URI_MEMO_SLOTS`] keys of at
/// most [`URI_MEMO_MAX_KEY`] bytes, ~40 KiB); the whole key is compared,
/// so a memoised hash is always the hash of the key.
/// (key, hash); an empty key is a free slot (a key is never empty).
pub(crate) type UriMemo = Vec<(Vec<u8>, [u8; 32])>;

thread_local! {
    static URI_MEMO: std::cell::RefCell<UriMemo> = const { std::cell::RefCell::new(Vec::new()) };
}

/// [`uri_hash`] through this worker's `UriMemo`.
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

pub(crate) fn is_safe(method: &str) -> bool {
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
pub(crate) struct Keys {
    pub(crate) uri: [u8; 32],
    pub(crate) primary: [u8; 32],
    pub(crate) req_cc: RequestDirectives,
    /// `Authorization` or a token: RFC 9111 3.5 applies.
    pub(crate) authenticated: bool,
    pub(crate) head: bool,
}

impl Keys {
    pub(crate) fn of(route: &CacheRoute, req: &Request, identity: Identity) -> Keys {
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
