//! [`authenticate`]: a request against its route's JWT requirements.

use super::cache::{self, TokenCache};
use super::headers::{claim_header_value, HeaderOp};
use super::policy::{JwtProviders, Keys, Provider, RouteJwt};
use super::{claims, extract, jose, verify};
use crate::host::Host;
use crate::request::Request;
use serde_json::Value;
use std::borrow::Cow;
use std::sync::Arc;

/// A token without `kid` is tried against at most this many keys.
pub const MAX_KEY_TRIES: usize = 8;

/// The verdict of [`authenticate`].
#[derive(Debug, Clone, PartialEq)]
pub enum AuthOutcome<'a> {
    /// Continue upstream after applying `header_ops`. `claims` is `None`
    /// only when the token was missing and the route allows that.
    Allowed {
        claims: Option<Arc<claims::Claims>>,
        provider: Option<usize>,
        cache_hit: bool,
        header_ops: Vec<HeaderOp<'a>>,
    },
    /// Reply locally with `status` (401 or 403), `WWW-Authenticate` and a
    /// JSON body (`content-type: application/json`).
    Denied {
        status: u32,
        www_authenticate: String,
        body: String,
    },
    /// A remote provider has no keys yet: pause, make sure
    /// [`JwtProviders::poll`] runs, and retry.
    KeysPending { provider: usize },
}

/// The `(provider, source index)` pairs that found one token: nearly
/// always one, kept without an allocation.
enum Holders {
    One([(usize, usize); 1]),
    Many(Vec<(usize, usize)>),
}

impl Holders {
    fn push(&mut self, h: (usize, usize)) {
        match self {
            Holders::One([first]) => *self = Holders::Many(vec![*first, h]),
            Holders::Many(v) => v.push(h),
        }
    }

    fn as_slice(&self) -> &[(usize, usize)] {
        match self {
            Holders::One(one) => one,
            Holders::Many(v) => v,
        }
    }
}

/// The distinct tokens found in the request, in the order found, each with
/// its [`Holders`]. The first is kept inline: a request with one token (the
/// usual one) allocates nothing here.
#[derive(Default)]
struct Candidates<'r> {
    first: Option<(Cow<'r, [u8]>, Holders)>,
    more: Vec<(Cow<'r, [u8]>, Holders)>,
}

impl<'r> Candidates<'r> {
    fn add(&mut self, tok: Cow<'r, [u8]>, holder: (usize, usize)) {
        if self.first.is_none() {
            self.first = Some((tok, Holders::One([holder])));
            return;
        }
        let known = self
            .first
            .iter_mut()
            .chain(self.more.iter_mut())
            .find(|(t, _)| *t == tok);
        match known {
            Some((_, holders)) => holders.push(holder),
            None => self.more.push((tok, Holders::One([holder]))),
        }
    }

    fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    fn iter(&self) -> impl Iterator<Item = (&[u8], &[(usize, usize)])> + '_ {
        self.first
            .iter()
            .chain(self.more.iter())
            .map(|(t, h)| (t.as_ref(), h.as_slice()))
    }
}

/// Why one token failed.
enum Failure {
    Invalid(&'static str),
    Pending(usize),
}

fn quote_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c == '"' || c == '\\' || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect()
}

fn deny_missing(route: &str) -> AuthOutcome<'static> {
    AuthOutcome::Denied {
        status: 401,
        www_authenticate: format!("Bearer realm=\"{}\"", quote_safe(route)),
        body: serde_json::json!({"error": "missing_token", "error_description": "a bearer token is required"})
            .to_string(),
    }
}

fn deny(route: &str, status: u32, error: &str, reason: &str) -> AuthOutcome<'static> {
    AuthOutcome::Denied {
        status,
        www_authenticate: format!(
            "Bearer realm=\"{}\", error=\"{error}\", error_description=\"{}\"",
            quote_safe(route),
            quote_safe(reason)
        ),
        body: serde_json::json!({"error": error, "error_description": reason}).to_string(),
    }
}

/// Checks the request against the route's JWT requirements (see module docs).
pub fn authenticate<'a>(
    host: &impl Host,
    providers: &'a JwtProviders,
    route: &'a RouteJwt,
    route_name: &str,
    req: &Request,
    cache: &mut TokenCache,
) -> AuthOutcome<'a> {
    let now = host.now_nanos();

    // 1. Extraction: (token, [(provider, source index)]).
    let mut candidates = Candidates::default();
    for &p in &route.providers {
        let Some(prov) = providers.providers.get(p) else {
            continue;
        };
        for (si, s) in prov.sources.iter().enumerate() {
            if let Some(tok) = s.find(req) {
                candidates.add(tok, (p, si));
                break;
            }
        }
    }
    if candidates.is_empty() {
        if route.allow_missing {
            return AuthOutcome::Allowed {
                claims: None,
                provider: None,
                cache_hit: false,
                header_ops: Vec::new(),
            };
        }
        return deny_missing(route_name);
    }
    if route.reject_multiple_tokens && carries_several_tokens(route, req) {
        return deny(
            route_name,
            400,
            "invalid_request",
            "more than one token in the request",
        );
    }

    let mut invalid: Option<&'static str> = None;
    let mut pending: Option<usize> = None;
    let mut scope_failure: Option<String> = None;
    for (tok, holders) in candidates.iter() {
        let (v, cache_hit) = match check_token(host, providers, tok, holders, cache, now) {
            Ok(x) => x,
            Err(Failure::Invalid(r)) => {
                invalid.get_or_insert(r);
                continue;
            }
            Err(Failure::Pending(p)) => {
                pending.get_or_insert(p);
                continue;
            }
        };
        if let Some(rule) = route.rules.iter().find(|r| !r.matches(&v.claims)) {
            scope_failure
                .get_or_insert_with(|| format!("claim {} requirement not met", rule.claim));
            continue;
        }
        let Some(prov) = providers.providers.get(v.provider) else {
            continue;
        };
        // The upstream gets the verified token (`forward: true`) or none,
        // never a token from another location nobody verified.
        let verified_at = holders
            .iter()
            .find(|(p, _)| *p == v.provider)
            .and_then(|(_, si)| prov.sources.get(*si));
        let kept = verified_at.filter(|_| prov.forward);
        let mut ops = extract::scrub(&route.sources, kept, req);
        for (claim, header) in &prov.claims_to_headers {
            if let Some(val) = claims::lookup(&v.claims, claim).and_then(claim_header_value) {
                ops.push(HeaderOp::Set(Cow::Borrowed(header), val));
            }
        }
        if let Some(h) = &prov.payload_header {
            ops.push(HeaderOp::Set(
                Cow::Borrowed(h),
                v.payload_b64.as_bytes().to_vec(),
            ));
        }
        return AuthOutcome::Allowed {
            claims: Some(v.claims),
            provider: Some(v.provider),
            cache_hit,
            header_ops: ops,
        };
    }
    if let Some(why) = scope_failure {
        return deny(route_name, 403, "insufficient_scope", &why);
    }
    if let Some(p) = pending {
        return AuthOutcome::KeysPending { provider: p };
    }
    deny(
        route_name,
        401,
        "invalid_token",
        invalid.unwrap_or("invalid token"),
    )
}

/// Whether the request carries more than one distinct token across every
/// location of the route's providers (several values in one location
/// count).
fn carries_several_tokens(route: &RouteJwt, req: &Request) -> bool {
    let mut first: Option<Cow<'_, [u8]>> = None;
    for s in &route.sources {
        for t in s.find_all(req) {
            match &first {
                None => first = Some(t),
                Some(f) if *f != t => return true,
                Some(_) => {}
            }
        }
    }
    false
}

/// Verifies one token for the providers that found it (cache first).
fn check_token(
    host: &impl Host,
    providers: &JwtProviders,
    tok: &[u8],
    holders: &[(usize, usize)],
    cache: &mut TokenCache,
    now: u64,
) -> Result<(cache::Verified, bool), Failure> {
    if tok.len() > jose::MAX_TOKEN_BYTES {
        return Err(Failure::Invalid("token too large"));
    }
    if let Some(v) = cache.get(tok, now) {
        if holders.iter().any(|(p, _)| *p == v.provider) {
            match key_still_trusted(host, providers, &v) {
                KeyTrust::Same => {
                    cache.stats.hits += 1;
                    return Ok((v, true));
                }
                KeyTrust::Moved(to) => {
                    cache.rebind(tok, to);
                    cache.stats.hits += 1;
                    return Ok((v, true));
                }
                // Verified again below, against the current keys.
                KeyTrust::Gone => cache.forget(tok),
            }
        }
    }
    cache.stats.misses += 1;
    let mut jws = jose::parse(tok).map_err(Failure::Invalid)?;
    let iss = jws
        .claims
        .get("iss")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let mut first: Option<Failure> = None;
    let mut matched = false;
    for &(p, _) in holders {
        let Some(prov) = providers.providers.get(p) else {
            continue;
        };
        if Some(prov.issuer.as_str()) != iss.as_deref() {
            continue;
        }
        matched = true;
        match check_with_provider(host, prov, &jws, cache, now) {
            Ok((exp, key)) => {
                let v = cache::Verified {
                    key,
                    provider: p,
                    claims: Arc::new(std::mem::take(&mut jws.claims)),
                    payload_b64: Arc::from(jws.payload_b64),
                };
                cache.insert(tok, v.clone(), exp, now);
                return Ok((v, false));
            }
            Err(f) => {
                // An invalid verdict beats "pending" from another provider.
                match (&first, &f) {
                    (None, _) | (Some(Failure::Pending(_)), Failure::Invalid(_)) => first = Some(f),
                    _ => {}
                }
            }
        }
    }
    if !matched {
        return Err(Failure::Invalid("issuer not accepted"));
    }
    Err(first.unwrap_or(Failure::Invalid("invalid token")))
}

/// Whether a cached token's verifying key is still in its provider's keys.
enum KeyTrust {
    /// Inline keys, or the same key set as when it was verified.
    Same,
    /// The JWKS was refetched and still holds the key (here).
    Moved(cache::KeyRef),
    /// The key left the JWKS: verify the token again.
    Gone,
}

fn key_still_trusted(host: &impl Host, providers: &JwtProviders, v: &cache::Verified) -> KeyTrust {
    let Some(was) = &v.key else {
        return KeyTrust::Same;
    };
    let Some(Keys::Remote(r)) = providers.providers.get(v.provider).map(|p| &p.keys) else {
        return KeyTrust::Same;
    };
    let Some(now) = r.keys(host) else {
        return KeyTrust::Same;
    };
    if Arc::ptr_eq(&now, &was.set) {
        return KeyTrust::Same;
    }
    let Some(old) = was.set.keys.get(was.index) else {
        return KeyTrust::Gone;
    };
    match now.keys.iter().position(|k| k.same_key(old)) {
        Some(index) => KeyTrust::Moved(cache::KeyRef { set: now, index }),
        None => KeyTrust::Gone,
    }
}

/// Checks a parsed token against one provider: `(exp, the verifying key
/// when it came from a remote JWKS)`.
fn check_with_provider(
    host: &impl Host,
    prov: &Provider,
    jws: &jose::Jws<'_>,
    cache: &mut TokenCache,
    now: u64,
) -> Result<(Option<i64>, Option<cache::KeyRef>), Failure> {
    if !prov.algorithms.contains(jws.alg) {
        return Err(Failure::Invalid("algorithm not allowed"));
    }
    let keys = match &prov.keys {
        Keys::Inline(k) => k.clone(),
        Keys::Remote(r) => match r.keys(host) {
            Some(k) => k,
            None => return Err(Failure::Pending(r.provider_index)),
        },
    };
    let mut tried = 0;
    let mut ok = None;
    for key in keys
        .candidates(jws.alg, jws.kid.as_deref())
        .take(MAX_KEY_TRIES)
    {
        tried += 1;
        if verify::verify(
            host,
            &mut cache.native,
            &mut cache.stats.verify,
            jws.alg,
            key,
            jws.signing_input,
            &jws.signature,
        ) {
            ok = Some(key);
            break;
        }
    }
    if tried == 0 {
        return Err(Failure::Invalid(match jws.kid.as_deref() {
            Some(kid) if !keys.has_kid(kid) => {
                if let Keys::Remote(r) = &prov.keys {
                    r.request_refresh(host);
                }
                "unknown key id"
            }
            _ => "no matching key",
        }));
    }
    let Some(verified_by) = ok else {
        return Err(Failure::Invalid("invalid signature"));
    };
    let key = match &prov.keys {
        Keys::Inline(_) => None,
        Keys::Remote(_) => keys
            .keys
            .iter()
            .position(|k| std::ptr::eq(k, verified_by))
            .map(|index| cache::KeyRef {
                set: keys.clone(),
                index,
            }),
    };
    if let Some(aud) = &prov.audiences {
        if !claims::audience_ok(&jws.claims, aud) {
            return Err(Failure::Invalid("audience not accepted"));
        }
    }
    let now_secs = i64::try_from(now / 1_000_000_000).unwrap_or(i64::MAX);
    let exp = claims::check_times(&jws.claims, &prov.times, now_secs).map_err(Failure::Invalid)?;
    Ok((exp, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    type Found = Vec<(Vec<u8>, Vec<(usize, usize)>)>;

    fn tokens(c: &Candidates) -> Found {
        c.iter().map(|(t, h)| (t.to_vec(), h.to_vec())).collect()
    }

    #[test]
    fn candidates_keep_distinct_tokens_in_order_with_every_holder() {
        let mut c = Candidates::default();
        assert!(c.is_empty());
        c.add(Cow::Borrowed(b"A"), (0, 0));
        assert!(!c.is_empty());
        assert!(c.more.capacity() == 0, "one token allocates nothing");
        c.add(Cow::Borrowed(b"B"), (1, 2));
        c.add(Cow::Owned(b"A".to_vec()), (2, 0));
        c.add(Cow::Borrowed(b"C"), (3, 1));
        c.add(Cow::Borrowed(b"B"), (4, 0));
        c.add(Cow::Borrowed(b"A"), (5, 3));
        assert_eq!(
            tokens(&c),
            vec![
                (b"A".to_vec(), vec![(0, 0), (2, 0), (5, 3)]),
                (b"B".to_vec(), vec![(1, 2), (4, 0)]),
                (b"C".to_vec(), vec![(3, 1)]),
            ]
        );
    }
}
