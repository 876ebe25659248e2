//! Reading the parsed JSON `Value` into the raw document (`raw`), by hand.
//!
//! *Why by hand.* serde's derived `Deserialize` compiles a visitor, a field
//! identifier and its error paths for every raw type, monomorphised again
//! through the path-tracking deserializer that named the JSON path of an
//! error: reading the configuration was 168 KB of the module's code (17%;
//! 157 KB and 45 KB of it the path tracking at opt-level "s"), and Envoy's V8 compiles every byte of it
//! with TurboFan before the filter serves (~29 MiB of RSS per MB of module,
//! load time likewise; docs/performance.md, "Footprint"). This reader is
//! small functions over `serde_json::Value`, one per raw type, sharing the object, array and number readers below:
//! module 1,039,320 -> 982,558 bytes after wasm-opt, configuration reading
//! 168 -> 111 KB of code of which this reader is 53 KB and serde_json's
//! parser (shared with JWKS and tokens) 41 KB (docs/performance.md,
//! "Footprint").
//!
//! *Same contract as the derives it replaces.* It accepts exactly the
//! documents they accepted, with the same defaults, and fails with the
//! same message at the same JSON path: an object's members are read in the
//! `Value`'s (sorted) key order, the first unknown or ill-typed member
//! wins, then required members are checked in declaration order; the
//! messages are serde's own (`invalid type: ...`, `unknown field ...`,
//! `missing field ...`, made by serde_json's error constructors), which
//! `config::humanize` rewrites as before. The derives are still compiled
//! in tests, where a differential test (`tests` below) reads every JSON
//! document of the repository and ~31,600 mutations of them both ways and
//! requires the same result or the same error.
//!
//! The text reaches this reader through `json::parse`, which refuses an
//! object naming a member twice (the derives' map types took the last)
//! and, unlike serde_json's `Value` visitor, gives no key a special
//! meaning.
//!
//! One difference, on purpose: serde_json's `Value` visitor, which the
//! derives used for the opaque values (`jwks.inline`, claim rules'
//! `equals`/`one_of`/`contains`, `rate_limit_grpc_status`, breaker
//! statuses), read an object whose first key in sorted order is
//! `$serde_json::private::RawValue` as the JSON text of that member's
//! string; the reader copies the value as written.
//!
//! Adding a field: add it to the raw type (serde attributes as before: the
//! schema and the tests' derive read them) and to its reader here, with
//! its name in the type's `FIELDS` list in declaration order and its arm
//! at that index. A field forgotten here fails the differential test: an
//! unknown key added to every object lists the type's fields in the
//! derive's message (a new raw *type* must also appear in `everything()`
//! below).

use super::duration::{Duration, EXPECTED as DURATION_EXPECTED};
use super::json::Step;
use super::raw::*;
use serde::de::Unexpected;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// A reading error: serde's wording (humanized by the caller) and where.
pub(super) struct Error {
    steps: Vec<Step>,
    pub msg: String,
}

impl Error {
    fn new(msg: String) -> Self {
        Error {
            steps: Vec::new(),
            msg,
        }
    }

    fn key(mut self, k: &str) -> Self {
        self.steps.push(Step::Key(k.to_string()));
        self
    }

    fn index(mut self, i: usize) -> Self {
        self.steps.push(Step::Index(i));
        self
    }

    /// `a.b[0].c`: keys joined by dots, indexes in brackets (`steps`
    /// holds the innermost first, as the error went up).
    pub fn path(&self) -> String {
        super::json::show_path(self.steps.iter().rev())
    }
}

type R<T> = Result<T, Error>;

/// What the value is, for an error (serde_json shows it).
fn unexpected(v: &Value) -> Unexpected<'_> {
    match v {
        Value::Null => Unexpected::Unit,
        Value::Bool(b) => Unexpected::Bool(*b),
        Value::Number(n) => number(n),
        Value::String(s) => Unexpected::Str(s),
        Value::Array(_) => Unexpected::Seq,
        Value::Object(_) => Unexpected::Map,
    }
}

fn number(n: &serde_json::Number) -> Unexpected<'static> {
    match (n.as_u64(), n.as_i64()) {
        (Some(u), _) => Unexpected::Unsigned(u),
        (None, Some(i)) => Unexpected::Signed(i),
        _ => Unexpected::Float(n.as_f64().unwrap_or(f64::NAN)),
    }
}

/// serde_json's wording, which shows `null` and floats its own way.
fn invalid(type_: bool, got: Unexpected<'_>, expected: &str) -> Error {
    use serde::de::Error as _;
    let e = if type_ {
        serde_json::Error::invalid_type(got, &expected)
    } else {
        serde_json::Error::invalid_value(got, &expected)
    };
    Error::new(e.to_string())
}

fn invalid_type(v: &Value, expected: &str) -> Error {
    invalid(true, unexpected(v), expected)
}

// ------------------------------------------------------------ scalars

#[inline(never)]
fn string(v: &Value) -> R<String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        _ => Err(invalid_type(v, "a string")),
    }
}

#[inline(never)]
fn boolean(v: &Value) -> R<bool> {
    match v {
        Value::Bool(b) => Ok(*b),
        _ => Err(invalid_type(v, "a boolean")),
    }
}

/// An unsigned integer of at most `max`, serde's `name` (`u8`, `u32`...).
#[inline(never)]
fn unsigned(v: &Value, max: u64, name: &str) -> R<u64> {
    let Value::Number(n) = v else {
        return Err(invalid_type(v, name));
    };
    match number(n) {
        Unexpected::Unsigned(u) if u <= max => Ok(u),
        got @ (Unexpected::Unsigned(_) | Unexpected::Signed(_)) => Err(invalid(false, got, name)),
        got => Err(invalid(true, got, name)),
    }
}

#[inline(never)]
fn u8_(v: &Value) -> R<u8> {
    unsigned(v, u8::MAX.into(), "u8").map(|u| u as u8)
}

#[inline(never)]
fn u32_(v: &Value) -> R<u32> {
    unsigned(v, u32::MAX.into(), "u32").map(|u| u as u32)
}

#[inline(never)]
fn u64_(v: &Value) -> R<u64> {
    unsigned(v, u64::MAX, "u64")
}

#[inline(never)]
fn i64_(v: &Value) -> R<i64> {
    let Value::Number(n) = v else {
        return Err(invalid_type(v, "i64"));
    };
    match (n.as_i64(), number(n)) {
        (Some(i), _) => Ok(i),
        (None, got @ Unexpected::Unsigned(_)) => Err(invalid(false, got, "i64")),
        (None, got) => Err(invalid(true, got, "i64")),
    }
}

/// serde's `f64` takes integers too (converted with `as`).
#[inline(never)]
fn f64_(v: &Value) -> R<f64> {
    match v {
        Value::Number(n) => Ok(n.as_f64().unwrap_or(f64::NAN)),
        _ => Err(invalid_type(v, "f64")),
    }
}

#[inline(never)]
fn duration(v: &Value) -> R<Duration> {
    match v {
        Value::String(s) => Duration::parse(s).ok_or_else(|| {
            Error::new(format!(
                "expected {DURATION_EXPECTED}, got {}",
                super::error::show_str(s)
            ))
        }),
        _ => Err(invalid_type(v, DURATION_EXPECTED)),
    }
}

#[inline(never)]
fn any(v: &Value) -> R<Value> {
    Ok(v.clone())
}

// ------------------------------------------------------------ containers

/// `null` is `None` (also for a member with a default).
#[inline(never)]
fn option<T>(v: &Value, read: fn(&Value) -> R<T>) -> R<Option<T>> {
    match v {
        Value::Null => Ok(None),
        _ => read(v).map(Some),
    }
}

#[inline(never)]
fn array<T>(v: &Value, read: fn(&Value) -> R<T>) -> R<Vec<T>> {
    let Value::Array(items) = v else {
        return Err(invalid_type(v, "a sequence"));
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        out.push(read(item).map_err(|e| e.index(i))?);
    }
    Ok(out)
}

#[inline(never)]
fn opt_array<T>(v: &Value, read: fn(&Value) -> R<T>) -> R<Option<Vec<T>>> {
    match v {
        Value::Null => Ok(None),
        _ => array(v, read).map(Some),
    }
}

#[inline(never)]
fn strings(v: &Value) -> R<Option<Vec<String>>> {
    opt_array(v, string)
}

#[inline(never)]
fn opt_string(v: &Value) -> R<Option<String>> {
    option(v, string)
}

#[inline(never)]
fn opt_bool(v: &Value) -> R<Option<bool>> {
    option(v, boolean)
}

#[inline(never)]
fn opt_i64(v: &Value) -> R<Option<i64>> {
    option(v, i64_)
}

#[inline(never)]
fn opt_duration(v: &Value) -> R<Option<Duration>> {
    option(v, duration)
}

#[inline(never)]
fn map<T>(v: &Value, read: fn(&Value) -> R<T>) -> R<BTreeMap<String, T>> {
    let Value::Object(m) = v else {
        return Err(invalid_type(v, "a map"));
    };
    let mut out = BTreeMap::new();
    for (k, x) in m {
        out.insert(k.clone(), read(x).map_err(|e| e.key(k))?);
    }
    Ok(out)
}

/// Reads the members of the object `v` (serde's `struct <Name>`): a key
/// not in `fields` (the type's members in declaration order, as serde
/// names them) is refused, naming them; `member` reads the others, given
/// their index in `fields`.
fn object(
    v: &Value,
    name: &str,
    fields: &[&str],
    member: &mut dyn FnMut(usize, &Value) -> R<()>,
) -> R<()> {
    let Value::Object(m) = v else {
        return Err(invalid_type(v, &format!("struct {name}")));
    };
    for (k, x) in m {
        let Some(i) = fields.iter().position(|f| f == k) else {
            return Err(unknown_field(k, fields).key(k));
        };
        member(i, x).map_err(|e| e.key(k))?;
    }
    Ok(())
}

fn unknown_field(k: &str, fields: &[&str]) -> Error {
    let mut msg = format!("unknown field `{k}`, expected ");
    match fields {
        [one] => msg.push_str(&format!("`{one}`")),
        [a, b] => msg.push_str(&format!("`{a}` or `{b}`")),
        _ => {
            msg.push_str("one of ");
            for (i, f) in fields.iter().enumerate() {
                if i > 0 {
                    msg.push_str(", ");
                }
                msg.push('`');
                msg.push_str(f);
                msg.push('`');
            }
        }
    }
    Error::new(msg)
}

/// A required member, checked after every member was read.
fn required<T>(value: Option<T>, key: &str) -> R<T> {
    value.ok_or_else(|| Error::new(format!("missing field `{key}`")))
}

// ------------------------------------------------------------ the document

/// The document (an object: `config::parse` checked it).
pub(super) fn config(v: &Value) -> R<RawConfig> {
    const FIELDS: &[&str] = &[
        "$schema",
        "jwt_providers",
        "routes",
        "rate_limit_headers",
        "client_ip",
        "path_normalization",
        "cache_store",
        "rate_limit_service",
        "max_rate_limit_keys",
        "metrics_flush_interval",
        "observability",
    ];
    let mut c = RawConfig::default();
    object(v, "RawConfig", FIELDS, &mut |i, x| {
        match i {
            0 => c.schema = opt_string(x)?,
            1 => c.jwt_providers = map(x, provider)?,
            2 => c.routes = array(x, route)?,
            3 => c.rate_limit_headers = opt_string(x)?,
            4 => c.client_ip = option(x, client_ip)?,
            5 => c.path_normalization = option(x, path_normalization)?,
            6 => c.cache_store = option(x, cache_store)?,
            7 => c.rate_limit_service = option(x, rate_limit_service)?,
            8 => c.max_rate_limit_keys = option(x, u64_)?,
            9 => c.metrics_flush_interval = opt_duration(x)?,
            10 => c.observability = option(x, observability)?,
            _ => {}
        }
        Ok(())
    })?;
    Ok(c)
}

fn observability(v: &Value) -> R<RawObservability> {
    const FIELDS: &[&str] = &[
        "filter_state",
        "claims",
        "proxy_status",
        "trace_propagation",
    ];
    let mut o = RawObservability::default();
    object(v, "RawObservability", FIELDS, &mut |i, x| {
        match i {
            0 => o.filter_state = opt_bool(x)?,
            1 => o.claims = array(x, string)?,
            2 => o.proxy_status = opt_bool(x)?,
            3 => o.trace_propagation = opt_bool(x)?,
            _ => {}
        }
        Ok(())
    })?;
    Ok(o)
}

fn client_ip(v: &Value) -> R<RawClientIp> {
    const FIELDS: &[&str] = &["xff_trusted_hops", "ipv6_prefix"];
    let mut c = RawClientIp::default();
    object(v, "RawClientIp", FIELDS, &mut |i, x| {
        match i {
            0 => c.xff_trusted_hops = u32_(x)?,
            1 => c.ipv6_prefix = option(x, u8_)?,
            _ => {}
        }
        Ok(())
    })?;
    Ok(c)
}

fn path_normalization(v: &Value) -> R<RawPathNormalization> {
    const FIELDS: &[&str] = &["enabled", "escaped_slashes"];
    let mut p = RawPathNormalization::default();
    object(v, "RawPathNormalization", FIELDS, &mut |i, x| {
        match i {
            0 => p.enabled = opt_bool(x)?,
            1 => p.escaped_slashes = opt_string(x)?,
            _ => {}
        }
        Ok(())
    })?;
    Ok(p)
}

fn cache_store(v: &Value) -> R<RawCacheStore> {
    const FIELDS: &[&str] = &["max_bytes", "max_entry_bytes"];
    let mut c = RawCacheStore {
        max_bytes: None,
        max_entry_bytes: None,
    };
    object(v, "RawCacheStore", FIELDS, &mut |i, x| {
        match i {
            0 => c.max_bytes = option(x, u64_)?,
            1 => c.max_entry_bytes = option(x, u64_)?,
            _ => {}
        }
        Ok(())
    })?;
    Ok(c)
}

fn route(v: &Value) -> R<RawRoute> {
    const FIELDS: &[&str] = &[
        "name",
        "match",
        "jwt",
        "rate_limit",
        "rate_limit_grpc_status",
        "circuit_breaker",
        "cache",
    ];
    let mut name = None;
    let mut r = RawRoute {
        name: String::new(),
        matcher: None,
        jwt: None,
        rate_limit: None,
        rate_limit_grpc_status: None,
        circuit_breaker: None,
        cache: None,
    };
    object(v, "RawRoute", FIELDS, &mut |i, x| {
        match i {
            0 => name = Some(string(x)?),
            1 => r.matcher = option(x, matcher)?,
            2 => r.jwt = option(x, route_jwt)?,
            3 => r.rate_limit = opt_array(x, rate_limit)?,
            4 => r.rate_limit_grpc_status = option(x, any)?,
            5 => r.circuit_breaker = option(x, breaker)?,
            6 => r.cache = option(x, cache)?,
            _ => {}
        }
        Ok(())
    })?;
    r.name = required(name, "name")?;
    Ok(r)
}

fn matcher(v: &Value) -> R<RawMatch> {
    const FIELDS: &[&str] = &[
        "path_prefix",
        "path_exact",
        "methods",
        "hosts",
        "headers",
        "grpc",
        "case_sensitive",
    ];
    let mut m = RawMatch::default();
    object(v, "RawMatch", FIELDS, &mut |i, x| {
        match i {
            0 => m.path_prefix = opt_string(x)?,
            1 => m.path_exact = opt_string(x)?,
            2 => m.methods = strings(x)?,
            3 => m.hosts = strings(x)?,
            4 => m.headers = opt_array(x, header_match)?,
            5 => m.grpc = option(x, grpc_match)?,
            6 => m.case_sensitive = opt_bool(x)?,
            _ => {}
        }
        Ok(())
    })?;
    Ok(m)
}

fn grpc_match(v: &Value) -> R<RawGrpcMatch> {
    const FIELDS: &[&str] = &["service", "method"];
    let (mut service, mut method) = (None, None);
    object(v, "RawGrpcMatch", FIELDS, &mut |i, x| {
        match i {
            0 => service = Some(string(x)?),
            1 => method = opt_string(x)?,
            _ => {}
        }
        Ok(())
    })?;
    Ok(RawGrpcMatch {
        service: required(service, "service")?,
        method,
    })
}

fn header_match(v: &Value) -> R<RawHeaderMatch> {
    const FIELDS: &[&str] = &["name", "exact", "present"];
    let (mut name, mut exact, mut present) = (None, None, None);
    object(v, "RawHeaderMatch", FIELDS, &mut |i, x| {
        match i {
            0 => name = Some(string(x)?),
            1 => exact = opt_string(x)?,
            2 => present = opt_bool(x)?,
            _ => {}
        }
        Ok(())
    })?;
    Ok(RawHeaderMatch {
        name: required(name, "name")?,
        exact,
        present,
    })
}

// ------------------------------------------------------------ JWT

fn provider(v: &Value) -> R<RawProvider> {
    const FIELDS: &[&str] = &[
        "issuer",
        "audiences",
        "algorithms",
        "jwks",
        "from",
        "clock_skew",
        "require_exp",
        "max_lifetime",
        "forward",
        "claims_to_headers",
        "payload_header",
    ];
    let (mut issuer, mut jwks_) = (None, None);
    let mut p = RawProvider {
        issuer: String::new(),
        audiences: None,
        algorithms: None,
        jwks: RawJwks {
            inline: None,
            inline_string: None,
            remote: None,
        },
        from: None,
        clock_skew: None,
        require_exp: None,
        max_lifetime: None,
        forward: None,
        claims_to_headers: None,
        payload_header: None,
    };
    object(v, "RawProvider", FIELDS, &mut |i, x| {
        match i {
            0 => issuer = Some(string(x)?),
            1 => p.audiences = strings(x)?,
            2 => p.algorithms = strings(x)?,
            3 => jwks_ = Some(jwks(x)?),
            4 => p.from = opt_array(x, token_source)?,
            5 => p.clock_skew = opt_duration(x)?,
            6 => p.require_exp = opt_bool(x)?,
            7 => p.max_lifetime = opt_duration(x)?,
            8 => p.forward = opt_bool(x)?,
            9 => p.claims_to_headers = opt_array(x, claim_to_header)?,
            10 => p.payload_header = opt_string(x)?,
            _ => {}
        }
        Ok(())
    })?;
    p.issuer = required(issuer, "issuer")?;
    p.jwks = required(jwks_, "jwks")?;
    Ok(p)
}

fn jwks(v: &Value) -> R<RawJwks> {
    const FIELDS: &[&str] = &["inline", "inline_string", "remote"];
    let mut j = RawJwks {
        inline: None,
        inline_string: None,
        remote: None,
    };
    object(v, "RawJwks", FIELDS, &mut |i, x| {
        match i {
            0 => j.inline = option(x, any)?,
            1 => j.inline_string = opt_string(x)?,
            2 => j.remote = option(x, remote_jwks)?,
            _ => {}
        }
        Ok(())
    })?;
    Ok(j)
}

fn remote_jwks(v: &Value) -> R<RawRemoteJwks> {
    const FIELDS: &[&str] = &["cluster", "authority", "path", "timeout", "cache_duration"];
    let (mut cluster, mut path) = (None, None);
    let (mut authority, mut timeout, mut cache_duration) = (None, None, None);
    object(v, "RawRemoteJwks", FIELDS, &mut |i, x| {
        match i {
            0 => cluster = Some(string(x)?),
            1 => authority = opt_string(x)?,
            2 => path = Some(string(x)?),
            3 => timeout = opt_duration(x)?,
            4 => cache_duration = opt_duration(x)?,
            _ => {}
        }
        Ok(())
    })?;
    Ok(RawRemoteJwks {
        cluster: required(cluster, "cluster")?,
        authority,
        path: required(path, "path")?,
        timeout,
        cache_duration,
    })
}

fn token_source(v: &Value) -> R<RawTokenSource> {
    const FIELDS: &[&str] = &["header", "prefix", "cookie", "query"];
    let mut t = RawTokenSource {
        header: None,
        prefix: None,
        cookie: None,
        query: None,
    };
    object(v, "RawTokenSource", FIELDS, &mut |i, x| {
        match i {
            0 => t.header = opt_string(x)?,
            1 => t.prefix = opt_string(x)?,
            2 => t.cookie = opt_string(x)?,
            3 => t.query = opt_string(x)?,
            _ => {}
        }
        Ok(())
    })?;
    Ok(t)
}

fn claim_to_header(v: &Value) -> R<RawClaimToHeader> {
    const FIELDS: &[&str] = &["claim", "header"];
    let (mut claim, mut header) = (None, None);
    object(v, "RawClaimToHeader", FIELDS, &mut |i, x| {
        match i {
            0 => claim = Some(string(x)?),
            1 => header = Some(string(x)?),
            _ => {}
        }
        Ok(())
    })?;
    Ok(RawClaimToHeader {
        claim: required(claim, "claim")?,
        header: required(header, "header")?,
    })
}

fn route_jwt(v: &Value) -> R<RawRouteJwt> {
    const FIELDS: &[&str] = &[
        "providers",
        "allow_missing",
        "reject_multiple_tokens",
        "claims",
    ];
    let mut providers = None;
    let (mut allow_missing, mut reject_multiple_tokens) = (false, false);
    let mut claims = Vec::new();
    object(v, "RawRouteJwt", FIELDS, &mut |i, x| {
        match i {
            0 => providers = Some(array(x, string)?),
            1 => allow_missing = boolean(x)?,
            2 => reject_multiple_tokens = boolean(x)?,
            3 => claims = array(x, claim_rule)?,
            _ => {}
        }
        Ok(())
    })?;
    Ok(RawRouteJwt {
        providers: required(providers, "providers")?,
        allow_missing,
        reject_multiple_tokens,
        claims,
    })
}

fn claim_rule(v: &Value) -> R<RawClaimRule> {
    const FIELDS: &[&str] = &["claim", "equals", "one_of", "contains"];
    let mut claim = None;
    let (mut equals, mut one_of, mut contains) = (None, None, None);
    object(v, "RawClaimRule", FIELDS, &mut |i, x| {
        match i {
            0 => claim = Some(string(x)?),
            1 => equals = option(x, any)?,
            2 => one_of = opt_array(x, any)?,
            3 => contains = option(x, any)?,
            _ => {}
        }
        Ok(())
    })?;
    Ok(RawClaimRule {
        claim: required(claim, "claim")?,
        equals,
        one_of,
        contains,
    })
}

// ------------------------------------------------------------ rate limit

fn rate_limit(v: &Value) -> R<RawRateLimit> {
    const FIELDS: &[&str] = &[
        "name",
        "key",
        "scope",
        "capacity",
        "refill_tokens",
        "refill_interval",
        "cost",
        "shadow",
        "lease",
        "usage",
    ];
    let mut l = RawRateLimit {
        name: None,
        key: Vec::new(),
        scope: None,
        capacity: None,
        refill_tokens: None,
        refill_interval: None,
        cost: None,
        shadow: false,
        lease: None,
        usage: None,
    };
    object(v, "RawRateLimit", FIELDS, &mut |i, x| {
        match i {
            0 => l.name = opt_string(x)?,
            1 => l.key = array(x, key_part)?,
            2 => l.scope = opt_string(x)?,
            3 => l.capacity = opt_i64(x)?,
            4 => l.refill_tokens = opt_i64(x)?,
            5 => l.refill_interval = opt_duration(x)?,
            6 => l.cost = opt_i64(x)?,
            7 => l.shadow = boolean(x)?,
            8 => l.lease = opt_i64(x)?,
            9 => l.usage = option(x, usage)?,
            _ => {}
        }
        Ok(())
    })?;
    Ok(l)
}

fn usage(v: &Value) -> R<RawUsage> {
    const FIELDS: &[&str] = &["header", "json", "sse_json", "max_body_bytes"];
    let mut u = RawUsage::default();
    object(v, "RawUsage", FIELDS, &mut |i, x| {
        match i {
            0 => u.header = opt_string(x)?,
            1 => u.json = opt_string(x)?,
            2 => u.sse_json = opt_string(x)?,
            3 => u.max_body_bytes = opt_i64(x)?,
            _ => {}
        }
        Ok(())
    })?;
    Ok(u)
}

fn rate_limit_service(v: &Value) -> R<RawRateLimitService> {
    const FIELDS: &[&str] = &["cluster", "domain", "timeout", "failure_mode"];
    let mut cluster = None;
    let (mut domain, mut timeout, mut failure_mode) = (None, None, None);
    object(v, "RawRateLimitService", FIELDS, &mut |i, x| {
        match i {
            0 => cluster = Some(string(x)?),
            1 => domain = opt_string(x)?,
            2 => timeout = opt_duration(x)?,
            3 => failure_mode = opt_string(x)?,
            _ => {}
        }
        Ok(())
    })?;
    Ok(RawRateLimitService {
        cluster: required(cluster, "cluster")?,
        domain,
        timeout,
        failure_mode,
    })
}

/// `#[serde(untagged)]`: a string, or an object of strings; anything else
/// is serde's untagged error.
fn key_part(v: &Value) -> R<RawKeyPart> {
    match v {
        Value::String(s) => Ok(RawKeyPart::Simple(s.clone())),
        Value::Object(m) => string_map(m)
            .map(RawKeyPart::Object)
            .ok_or_else(no_key_part),
        _ => Err(no_key_part()),
    }
}

/// Inserted one by one: collecting into a `BTreeMap` sorts a `Vec` first,
/// which compiled a stable sort (6 KB) into the module for this alone.
fn string_map(m: &Map<String, Value>) -> Option<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for (k, x) in m {
        out.insert(k.clone(), x.as_str()?.to_string());
    }
    Some(out)
}

fn no_key_part() -> Error {
    Error::new("data did not match any variant of untagged enum RawKeyPart".to_string())
}

// ------------------------------------------------------------ breaker

fn breaker(v: &Value) -> R<RawBreaker> {
    const FIELDS: &[&str] = &[
        "failure_statuses",
        "grpc_failure_statuses",
        "consecutive_failures",
        "failure_ratio",
        "min_requests",
        "window",
        "slow_call",
        "open_duration",
        "max_open_duration",
        "half_open_requests",
        "success_threshold",
        "scope",
    ];
    let mut b = RawBreaker {
        failure_statuses: None,
        grpc_failure_statuses: None,
        consecutive_failures: None,
        failure_ratio: None,
        min_requests: None,
        window: None,
        slow_call: None,
        open_duration: None,
        max_open_duration: None,
        half_open_requests: None,
        success_threshold: None,
        scope: None,
    };
    object(v, "RawBreaker", FIELDS, &mut |i, x| {
        match i {
            0 => b.failure_statuses = opt_array(x, any)?,
            1 => b.grpc_failure_statuses = opt_array(x, any)?,
            2 => b.consecutive_failures = opt_i64(x)?,
            3 => b.failure_ratio = option(x, f64_)?,
            4 => b.min_requests = opt_i64(x)?,
            5 => b.window = opt_duration(x)?,
            6 => b.slow_call = opt_duration(x)?,
            7 => b.open_duration = opt_duration(x)?,
            8 => b.max_open_duration = opt_duration(x)?,
            9 => b.half_open_requests = opt_i64(x)?,
            10 => b.success_threshold = opt_i64(x)?,
            11 => b.scope = opt_string(x)?,
            _ => {}
        }
        Ok(())
    })?;
    Ok(b)
}

// ------------------------------------------------------------ cache

fn cache(v: &Value) -> R<RawCache> {
    const FIELDS: &[&str] = &[
        "methods",
        "vary_allowlist",
        "key_headers",
        "ignore_query",
        "default_ttl",
        "heuristic_freshness",
        "set_cookie",
        "targeted_cache_control",
        "stale_on_error",
        "purge",
    ];
    let mut c = RawCache {
        methods: None,
        vary_allowlist: None,
        key_headers: None,
        ignore_query: false,
        default_ttl: None,
        heuristic_freshness: false,
        set_cookie: None,
        targeted_cache_control: None,
        stale_on_error: None,
        purge: None,
    };
    object(v, "RawCache", FIELDS, &mut |i, x| {
        match i {
            0 => c.methods = strings(x)?,
            1 => c.vary_allowlist = strings(x)?,
            2 => c.key_headers = strings(x)?,
            3 => c.ignore_query = boolean(x)?,
            4 => c.default_ttl = opt_duration(x)?,
            5 => c.heuristic_freshness = boolean(x)?,
            6 => c.set_cookie = opt_string(x)?,
            7 => c.targeted_cache_control = strings(x)?,
            8 => c.stale_on_error = opt_duration(x)?,
            9 => c.purge = option(x, cache_purge)?,
            _ => {}
        }
        Ok(())
    })?;
    Ok(c)
}

fn cache_purge(v: &Value) -> R<RawCachePurge> {
    const FIELDS: &[&str] = &["claims", "prefix", "tag_header"];
    let mut claims = None;
    let (mut prefix, mut tag_header) = (false, None);
    object(v, "RawCachePurge", FIELDS, &mut |i, x| {
        match i {
            0 => claims = Some(array(x, claim_rule)?),
            1 => prefix = boolean(x)?,
            2 => tag_header = opt_string(x)?,
            _ => {}
        }
        Ok(())
    })?;
    Ok(RawCachePurge {
        claims: required(claims, "claims")?,
        prefix,
        tag_header,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::super::{humanize, humanize_serde, json, path, shape, ConfigError};
    use super::*;
    use serde_json::json;

    /// The document read by hand: its `Debug` form, or the error.
    fn by_hand(doc: &Value) -> Result<String, ConfigError> {
        config(doc)
            .map(|raw| format!("{raw:?}"))
            .map_err(|e| ConfigError::new(e.path(), humanize(e.msg)))
    }

    /// The document read by serde's derives through the path-tracking
    /// deserializer, as `config::parse` did before the reader.
    fn by_derive(doc: &Value) -> Result<String, ConfigError> {
        path::from_value::<RawConfig>(doc)
            .map(|raw| format!("{raw:?}"))
            .map_err(|(path, e)| ConfigError::new(path, humanize_serde(&e)))
    }

    /// Both readers agree on `doc` (documents with an array where an
    /// object belongs never reach them: `config::parse` refuses them
    /// first). Returns whether it was read without error.
    fn same(doc: &Value) -> Option<bool> {
        if !doc.is_object() || shape::array_where_object(doc).is_some() {
            return None;
        }
        let (hand, derive) = (by_hand(doc), by_derive(doc));
        assert_eq!(hand, derive, "{doc}");
        Some(hand.is_ok())
    }

    /// Every field of every raw type, valid.
    fn everything() -> Value {
        json!({
            "$schema": "x.json",
            "jwt_providers": {
                "a": {
                    "issuer": "https://a", "audiences": ["x"], "algorithms": ["RS256"],
                    "jwks": { "inline": {"keys": []}, "inline_string": "{}",
                              "remote": { "cluster": "idp", "authority": "h", "path": "/j",
                                          "timeout": "2s", "cache_duration": "10m" } },
                    "from": [ { "header": "authorization", "prefix": "Bearer ",
                                "cookie": "c", "query": "q" } ],
                    "clock_skew": "30s", "require_exp": true, "max_lifetime": "1h",
                    "forward": false,
                    "claims_to_headers": [ { "claim": "sub", "header": "x-user" } ],
                    "payload_header": "x-p"
                },
                "b": { "issuer": "b", "jwks": {} }
            },
            "routes": [
                {
                    "name": "r",
                    "match": { "path_prefix": "/a", "path_exact": "/b", "methods": ["GET"],
                               "hosts": ["h"], "headers": [ { "name": "x", "exact": "y",
                                                             "present": true } ],
                               "grpc": { "service": "s.v1.S", "method": "M" },
                               "case_sensitive": false },
                    "jwt": { "providers": ["a"], "allow_missing": true,
                             "reject_multiple_tokens": true,
                             "claims": [ { "claim": "c", "equals": 1, "one_of": [1, "x", null],
                                           "contains": "y" } ] },
                    "rate_limit": [
                        { "name": "l", "key": ["client_ip", { "header": "x-k" }], "scope": "local",
                          "capacity": 10, "refill_tokens": 5, "refill_interval": "1.5s",
                          "cost": 2, "shadow": true, "lease": 3,
                          "usage": { "header": "h", "json": "a.b", "sse_json": "c",
                                     "max_body_bytes": 1024 } }
                    ],
                    "rate_limit_grpc_status": "UNAVAILABLE",
                    "circuit_breaker": { "failure_statuses": [500, "5xx"],
                                         "grpc_failure_statuses": ["UNAVAILABLE", 14],
                                         "consecutive_failures": 5, "failure_ratio": 0.5,
                                         "min_requests": 10, "window": "10s", "slow_call": "1s",
                                         "open_duration": "5s", "max_open_duration": "1m",
                                         "half_open_requests": 1, "success_threshold": 2,
                                         "scope": "route" },
                    "cache": { "methods": ["GET"], "vary_allowlist": ["accept"],
                               "key_headers": ["x"], "ignore_query": true, "default_ttl": "1m",
                               "heuristic_freshness": true, "set_cookie": "strip",
                               "targeted_cache_control": [], "stale_on_error": "1h",
                               "purge": { "claims": [ { "claim": "scope" } ], "prefix": true,
                                          "tag_header": "surrogate-key" } }
                },
                { "name": "bare" }
            ],
            "rate_limit_headers": "both",
            "client_ip": { "xff_trusted_hops": 1, "ipv6_prefix": 64 },
            "path_normalization": { "enabled": true, "escaped_slashes": "keep" },
            "cache_store": { "max_bytes": 1, "max_entry_bytes": 2 },
            "rate_limit_service": { "cluster": "rls", "domain": "d", "timeout": "20ms",
                                    "failure_mode": "deny" },
            "max_rate_limit_keys": 10,
            "metrics_flush_interval": "0s",
            "observability": { "filter_state": true, "claims": ["sub"], "proxy_status": false,
                               "trace_propagation": false }
        })
    }

    /// The repository's configurations: examples and the ```json blocks
    /// of the README and docs.
    fn corpus() -> Vec<Value> {
        let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let mut out = vec![everything()];
        for entry in std::fs::read_dir(root.join("examples")).unwrap() {
            let p = entry.unwrap().path();
            if p.extension().is_some_and(|e| e == "json") {
                // As `config::parse` reads them (no member named twice).
                out.push(json::parse(&std::fs::read_to_string(&p).unwrap()).unwrap());
            }
        }
        let mut texts = vec![std::fs::read_to_string(root.join("README.md")).unwrap()];
        for entry in std::fs::read_dir(root.join("docs")).unwrap() {
            let p = entry.unwrap().path();
            if p.extension().is_some_and(|e| e == "md") {
                texts.push(std::fs::read_to_string(&p).unwrap());
            }
        }
        for text in texts {
            let mut block: Option<String> = None;
            for line in text.lines() {
                match (&mut block, line.trim()) {
                    (None, "```json") => block = Some(String::new()),
                    (Some(b), "```") => {
                        if let Ok(v) = json::parse(b) {
                            out.push(v);
                        }
                        block = None;
                    }
                    (Some(b), _) => {
                        b.push_str(line);
                        b.push('\n');
                    }
                    (None, _) => {}
                }
            }
        }
        out
    }

    /// Values put in every place of a document.
    fn replacements() -> Vec<Value> {
        let mut out = vec![
            json!(null),
            json!(true),
            json!(false),
            json!(0),
            json!(1),
            json!(-1),
            json!(1.5),
            json!(255),
            json!(256),
            json!(4294967295u64),
            json!(4294967296u64),
            json!(9223372036854775807i64),
            json!(9223372036854775808u64),
            json!(18446744073709551615u64),
            json!(-9223372036854775808i64),
            json!(1e300),
            json!(""),
            json!("x"),
            json!("5s"),
            json!("1.5m"),
            json!("5 minutes"),
            json!("a, expected b"),
            json!("unknown field `q`, expected one of `x`"),
            json!("é\"\\\n"),
            json!("x".repeat(100)),
            json!([]),
            json!(["x"]),
            json!({}),
            json!({ "a": "b" }),
            json!({ "header": 5 }),
        ];
        // `-0` is a float to serde_json.
        out.push(serde_json::from_str("-0").unwrap());
        out
    }

    /// Every place of `v`, as steps from the root.
    fn places(v: &Value, at: &mut Vec<Place>, out: &mut Vec<Vec<Place>>) {
        out.push(at.clone());
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    at.push(Place::Key(k.clone()));
                    places(x, at, out);
                    at.pop();
                }
            }
            Value::Array(a) => {
                for (i, x) in a.iter().enumerate() {
                    at.push(Place::Index(i));
                    places(x, at, out);
                    at.pop();
                }
            }
            _ => {}
        }
    }

    #[derive(Clone)]
    enum Place {
        Key(String),
        Index(usize),
    }

    fn at<'v>(v: &'v mut Value, place: &[Place]) -> &'v mut Value {
        place.iter().fold(v, |v, step| match step {
            Place::Key(k) => v.get_mut(k.as_str()).unwrap(),
            Place::Index(i) => v.get_mut(*i).unwrap(),
        })
    }

    #[test]
    fn every_field_is_read_as_the_derives_read_it() {
        assert_eq!(same(&everything()), Some(true));
        assert_eq!(same(&json!({})), Some(true));
        let hand = by_hand(&everything()).unwrap();
        // Spot checks that the comparison compares something.
        for part in [
            "ipv6_prefix: Some(64)",
            "failure_ratio: Some(0.5)",
            "Object({\"header\": \"x-k\"})",
            "Duration(1500000000)",
            "tag_header: Some(\"surrogate-key\")",
        ] {
            assert!(hand.contains(part), "{part} in {hand}");
        }
    }

    /// The differential test: every repository document, and every
    /// document obtained from one by replacing any value with another of
    /// any type, adding an unknown member to any object or removing any
    /// member, is read with the same result or the same error (path and
    /// message) by hand and by the derives. Both read a `Value`, where a
    /// member cannot repeat: a repeated member is refused before either
    /// runs (`config::json`; the derives reading text would take the last
    /// member of a map such as `jwt_providers` and refuse a struct's field
    /// named twice), tested by
    /// `every_object_refuses_a_repeated_member_with_its_path` below.
    #[test]
    fn mutated_documents_read_the_same_by_hand_and_by_the_derives() {
        let (mut ok, mut err) = (0, 0);
        let mut tally = |r: Option<bool>| match r {
            Some(true) => ok += 1,
            Some(false) => err += 1,
            None => {}
        };
        let docs = corpus();
        assert!(docs.len() > 20, "{} documents", docs.len());
        for doc in &docs {
            tally(same(doc));
            let mut all = Vec::new();
            places(doc, &mut Vec::new(), &mut all);
            for place in &all {
                for r in replacements() {
                    let mut d = doc.clone();
                    *at(&mut d, place) = r;
                    tally(same(&d));
                }
                let mut d = doc.clone();
                if let Value::Object(m) = at(&mut d, place) {
                    let keys: Vec<String> = m.keys().cloned().collect();
                    for k in keys {
                        let mut d = d.clone();
                        if let Value::Object(m) = at(&mut d, place) {
                            m.remove(&k);
                        }
                        tally(same(&d));
                    }
                    for k in ["zzz", "$schema", "", "Name", "a.b"] {
                        let mut d = d.clone();
                        if let Value::Object(m) = at(&mut d, place) {
                            m.entry(k).or_insert(json!(1));
                        }
                        tally(same(&d));
                    }
                }
            }
        }
        // Both outcomes were exercised, many times.
        assert!(ok > 1_000 && err > 1_000, "ok {ok}, errors {err}");
    }

    #[test]
    fn messages_and_paths_are_the_contract_s() {
        let e = |doc: Value| {
            let e = config(&doc).map(|_| ()).unwrap_err();
            format!("{} | {}", e.path(), humanize(e.msg))
        };
        assert_eq!(
            e(
                json!({"routes": [{"name": "a"}, {"name": "b", "rate_limit": [{"capacity": -1.5}]}]})
            ),
            "routes[1].rate_limit[0].capacity | expected an integer, got floating point `-1.5`"
        );
        assert_eq!(
            e(json!({"client_ip": {"ipv6_prefix": 300}})),
            "client_ip.ipv6_prefix | expected a non-negative integer, got integer `300`"
        );
        assert_eq!(
            e(json!({"routes": [{"name": "a", "jwt": {"providers": ["p"], "zzz": 1}}]})),
            "routes[0].jwt.zzz | unknown key `zzz`: expected one of `providers`, \
             `allow_missing`, `reject_multiple_tokens`, `claims`"
        );
        assert_eq!(
            e(json!({"routes": [{"name": "a", "match": {"grpc": {"service": "s", "x": 1}}}]})),
            "routes[0].match.grpc.x | unknown key `x`: expected `service` or `method`"
        );
        assert_eq!(
            e(json!({"jwt_providers": {"p": {"jwks": {}}}})),
            "jwt_providers.p | missing required key `issuer`"
        );
        assert_eq!(
            e(json!({"routes": ["a"]})),
            "routes[0] | expected struct RawRoute, got string \"a\""
        );
        assert_eq!(
            e(json!({"metrics_flush_interval": "soon"})),
            "metrics_flush_interval | expected a duration string like \"250ms\", \"2s\", \
             \"1.5s\", \"5m\" or \"1h\", got \"soon\""
        );
        assert_eq!(
            e(json!({"routes": [{"name": "a", "rate_limit": [{"key": [{"header": 5}]}]}]})),
            "routes[0].rate_limit[0].key[0] | data did not match any variant of untagged enum RawKeyPart"
        );
        assert_eq!(
            e(json!({"routes": [{"name": "a", "cache": {"ignore_query": null}}]})),
            "routes[0].cache.ignore_query | expected true or false, got null"
        );
    }

    /// Where the derives went through serde_json's `Value` visitor, a
    /// member named `$serde_json::private::RawValue` (first in key order)
    /// made it parse the member's string as JSON text; the reader copies
    /// the value as it is (no configuration uses such a key).
    #[test]
    fn opaque_values_are_copied_as_they_are() {
        let doc = json!({"routes": [{"name": "a", "rate_limit_grpc_status":
            {"a": 1, "$serde_json::private::RawValue": "2"}}]});
        let raw = config(&doc).map_err(|e| e.msg).unwrap();
        assert_eq!(
            raw.routes[0].rate_limit_grpc_status,
            Some(json!({"a": 1, "$serde_json::private::RawValue": "2"}))
        );
    }
    /// The document's text with the first member of the object at `place`
    /// written twice (the second time as written first).
    fn with_repeat(doc: &Value, place: &[Place]) -> Option<String> {
        let Value::Object(m) = at(&mut doc.clone(), place).clone() else {
            return None;
        };
        let (k, v) = m.iter().next()?;
        // (No brace in a literal here: tests/layers.rs counts them.)
        const OPEN: char = '\x7b';
        let members = serde_json::to_string(&m).unwrap();
        let mut repeated = String::from(OPEN);
        repeated.push_str(&format!("{}:{v},", serde_json::to_string(k).unwrap()));
        repeated.push_str(members.strip_prefix(OPEN).unwrap());
        let mut d = doc.clone();
        let mark = "\u{1}repeat\u{1}";
        *at(&mut d, place) = json!(mark);
        let text = d.to_string();
        let quoted = serde_json::to_string(mark).unwrap();
        assert_eq!(text.matches(&quoted).count(), 1);
        Some(text.replace(&quoted, &repeated))
    }

    fn show(place: &[Place]) -> String {
        json::show_path(
            &place
                .iter()
                .map(|p| match p {
                    Place::Key(k) => json::Step::Key(k.clone()),
                    Place::Index(i) => json::Step::Index(*i),
                })
                .collect::<Vec<_>>(),
        )
    }

    /// Every object of every repository document, its first member
    /// written twice: `config::parse` refuses the document, naming the
    /// object's path and the member (never the last one winning, as
    /// serde_json's `Value` would).
    #[test]
    fn every_object_refuses_a_repeated_member_with_its_path() {
        let mut n = 0;
        for doc in corpus() {
            let mut all = Vec::new();
            places(&doc, &mut Vec::new(), &mut all);
            for place in &all {
                let Some(text) = with_repeat(&doc, place) else {
                    continue;
                };
                let first = at(&mut doc.clone(), place)
                    .as_object()
                    .and_then(|m| m.keys().next().cloned())
                    .unwrap();
                // serde_json alone takes the text (last wins).
                assert!(serde_json::from_str::<Value>(&text).is_ok());
                let e = super::super::parse(text.as_bytes()).unwrap_err();
                assert_eq!(e.path, show(place), "{text}");
                let want = format!("duplicate member {first:?} at line 1 column ");
                assert!(e.msg.starts_with(&want), "{text}: {e}");
                n += 1;
            }
        }
        assert!(n > 200, "{n} objects");
    }

    #[test]
    fn a_repeated_member_is_refused_at_every_depth_and_spelling() {
        let e = |text: &str| {
            super::super::parse(text.as_bytes())
                .unwrap_err()
                .to_string()
        };
        let cases = [
            // The top level.
            (
                r#"{"routes":[],"routes":[]}"#,
                r#"invalid config: duplicate member "routes" at line 1 column 21"#,
            ),
            // A nested object.
            (
                r#"{"client_ip":{"xff_trusted_hops":1,"xff_trusted_hops":0}}"#,
                r#"invalid config at client_ip: duplicate member "xff_trusted_hops" at line 1 column 53"#,
            ),
            // Inside an array element: a route's jwt, then null.
            (
                r#"{"routes":[{"name":"r","jwt":{"providers":["p"]},"jwt":null}]}"#,
                r#"invalid config at routes[0]: duplicate member "jwt" at line 1 column 54"#,
            ),
            // Two rate limit lists.
            (
                r#"{"routes":[{"name":"a"},{"name":"r","rate_limit":[],"rate_limit":[]}]}"#,
                r#"invalid config at routes[1]: duplicate member "rate_limit" at line 1 column 64"#,
            ),
            // The escaped spelling is the same member.
            (
                r#"{"routes":[{"name":"r","\u006a\u0077\u0074":null,"jwt":{}}]}"#,
                r#"invalid config at routes[0]: duplicate member "jwt" at line 1 column 54"#,
            ),
            // A map (two providers of one name) and an opaque value (JWKS).
            (
                r#"{"jwt_providers":{"a":{"issuer":"x","jwks":{}},"a":{"issuer":"y","jwks":{}}}}"#,
                r#"invalid config at jwt_providers: duplicate member "a" at line 1 column 50"#,
            ),
            (
                r#"{"jwt_providers":{"a":{"issuer":"x","jwks":{"inline":{"keys":[{"kty":"oct","k":"AA","k":"AB"}]}}}}}"#,
                r#"invalid config at jwt_providers.a.jwks.inline.keys[0]: duplicate member "k" at line 1 column 87"#,
            ),
        ];
        for (text, want) in cases {
            let got = e(text);
            // The column is the repeat's closing quote.
            let col: usize = got.rsplit(' ').next().unwrap().parse().unwrap();
            assert!(text.get(..col).unwrap().ends_with('"'), "{text}");
            assert_eq!(got, want, "{text}");
        }
        // The same documents without the repeat are read.
        assert!(
            super::super::parse(br#"{"routes":[{"name":"r","jwt":null,"rate_limit":[]}]}"#).is_ok()
        );
    }
}
