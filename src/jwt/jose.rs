//! Compact JWS parsing: `base64url(header) . base64url(payload) . base64url(sig)`.
//!
//! Everything here is bounded by [`MAX_TOKEN_BYTES`] and returns a short,
//! fixed reason string on failure (safe to put in `WWW-Authenticate`; it
//! never contains any part of the token).

use crate::config::json::{unique, Name};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use sha2::{Digest, Sha256, Sha384, Sha512};
use std::borrow::Cow;

/// Largest token accepted (bytes). Larger tokens are rejected unparsed.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// A JWS algorithm meshguard supports. `none` is not one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alg {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
    HS256,
    HS384,
    HS512,
}

/// SHA-2 variant used by an algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hash {
    Sha256,
    Sha384,
    Sha512,
}

impl Hash {
    /// Name used by Envoy's `verify_signature` foreign function.
    pub fn envoy_name(self) -> &'static str {
        match self {
            Hash::Sha256 => "sha256",
            Hash::Sha384 => "sha384",
            Hash::Sha512 => "sha512",
        }
    }
}

impl Alg {
    pub const ALL: [Alg; 12] = [
        Alg::RS256,
        Alg::RS384,
        Alg::RS512,
        Alg::PS256,
        Alg::PS384,
        Alg::PS512,
        Alg::ES256,
        Alg::ES384,
        Alg::EdDSA,
        Alg::HS256,
        Alg::HS384,
        Alg::HS512,
    ];

    pub fn from_name(s: &str) -> Option<Alg> {
        Alg::ALL.iter().copied().find(|a| a.name() == s)
    }

    pub fn name(self) -> &'static str {
        match self {
            Alg::RS256 => "RS256",
            Alg::RS384 => "RS384",
            Alg::RS512 => "RS512",
            Alg::PS256 => "PS256",
            Alg::PS384 => "PS384",
            Alg::PS512 => "PS512",
            Alg::ES256 => "ES256",
            Alg::ES384 => "ES384",
            Alg::EdDSA => "EdDSA",
            Alg::HS256 => "HS256",
            Alg::HS384 => "HS384",
            Alg::HS512 => "HS512",
        }
    }

    /// HMAC algorithms share a secret; everything else is asymmetric.
    pub fn is_symmetric(self) -> bool {
        matches!(self, Alg::HS256 | Alg::HS384 | Alg::HS512)
    }

    pub fn hash(self) -> Hash {
        match self {
            Alg::RS256 | Alg::PS256 | Alg::ES256 | Alg::HS256 | Alg::EdDSA => Hash::Sha256,
            Alg::RS384 | Alg::PS384 | Alg::ES384 | Alg::HS384 => Hash::Sha384,
            Alg::RS512 | Alg::PS512 | Alg::HS512 => Hash::Sha512,
        }
    }

    /// Bit for [`AlgSet`].
    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

/// A set of algorithms (a provider's allowlist).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AlgSet(u16);

impl AlgSet {
    /// The default allowlist: every asymmetric algorithm.
    pub fn asymmetric() -> AlgSet {
        let mut s = AlgSet::default();
        for a in Alg::ALL.iter().filter(|a| !a.is_symmetric()) {
            s.insert(*a);
        }
        s
    }
    pub fn insert(&mut self, a: Alg) {
        self.0 |= a.bit();
    }
    pub fn contains(self, a: Alg) -> bool {
        self.0 & a.bit() != 0
    }
    pub fn iter(self) -> impl Iterator<Item = Alg> {
        Alg::ALL.into_iter().filter(move |a| self.contains(*a))
    }
}

/// The parts of a token meshguard uses. Borrowed from the token text.
#[derive(Debug)]
pub struct Jws<'a> {
    pub alg: Alg,
    pub kid: Option<String>,
    /// `header.payload`: the bytes the signature covers.
    pub signing_input: &'a [u8],
    /// The payload segment, still base64url (for `payload_header`).
    pub payload_b64: &'a str,
    pub signature: Vec<u8>,
    /// The decoded payload; always a JSON object.
    pub claims: super::claims::Claims,
}

/// Decodes unpadded base64url (RFC 7515 section 2); padding or any other
/// alphabet is an error.
pub fn b64url_decode(s: &[u8]) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(s).ok()
}

pub fn b64url_encode(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

/// The JOSE header members meshguard reads, decoded straight into fields
/// (other members are skipped, no map is built: this runs once per new
/// token). `alg` must be a string; `kid` a string and `crit` an array when
/// present (`null` is neither).
struct Header<'a> {
    alg: Cow<'a, str>,
    kid: Option<String>,
    crit: Option<Vec<IgnoredAny>>,
    /// A member was named twice (RFC 7515 4: "MUST either reject ... or
    /// use ... the lexically last"; rejecting is the safer choice): any
    /// member, not only those read, names compared decoded.
    repeated: bool,
}

impl<'de> Deserialize<'de> for Header<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(HeaderVisitor)
    }
}

struct HeaderVisitor;

impl<'de> Visitor<'de> for HeaderVisitor {
    type Value = Header<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JOSE header object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Header<'de>, A::Error> {
        let (mut alg, mut kid, mut crit) = (None, None, None);
        let mut repeated = false;
        let mut names: Vec<Name<'de>> = Vec::new();
        while let Some(name) = map.next_key::<Name<'de>>()? {
            // A read member named again is skipped (the whole header is
            // refused below), never read twice.
            match &*name.0 {
                "alg" if alg.is_none() => alg = Some(map.next_value::<CowStr<'de>>()?.0),
                "kid" if kid.is_none() => kid = Some(map.next_value::<String>()?),
                "crit" if crit.is_none() => crit = Some(map.next_value::<Vec<IgnoredAny>>()?),
                "alg" | "kid" | "crit" => {
                    repeated = true;
                    map.next_value::<IgnoredAny>()?;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            names.push(name);
        }
        repeated |= !unique(names.iter().map(|n| &*n.0));
        let alg = alg.ok_or_else(|| serde::de::Error::missing_field("alg"))?;
        Ok(Header {
            alg,
            kid,
            crit,
            repeated,
        })
    }
}

/// A string borrowed from the text when it has no escapes.
struct CowStr<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for CowStr<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Name::deserialize(d).map(|n| CowStr(n.0))
    }
}

/// Why a token whose header names a member twice is refused.
pub const DUPLICATE_HEADER: &str = "duplicate header parameter";

/// The header, which must be a JSON object (serde would also read a struct
/// from an array of its fields in order) naming no member twice.
fn parse_header(json: &[u8]) -> Result<Header<'_>, &'static str> {
    const BAD: &str = "malformed token header";
    // UTF-8 throughout (serde_json does not check skipped strings of bytes).
    let text = std::str::from_utf8(json).map_err(|_| BAD)?;
    let first = text.bytes().find(|b| !b.is_ascii_whitespace()).ok_or(BAD)?;
    if first != b'{' {
        return Err(BAD);
    }
    let header: Header<'_> = serde_json::from_str(text).map_err(|_| BAD)?;
    if header.repeated {
        return Err(DUPLICATE_HEADER);
    }
    Ok(header)
}

/// Parses a compact JWS. Does NOT verify the signature.
pub fn parse(token: &[u8]) -> Result<Jws<'_>, &'static str> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err("token too large");
    }
    let text = std::str::from_utf8(token).map_err(|_| "malformed token")?;
    let mut parts = text.split('.');
    let (h, p, s) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(h), Some(p), Some(s), None) => (h, p, s),
        _ => return Err("malformed token"),
    };
    if h.is_empty() || p.is_empty() {
        return Err("malformed token");
    }
    let header_bytes = b64url_decode(h.as_bytes()).ok_or("malformed token header")?;
    let header = parse_header(&header_bytes)?;
    let alg = Alg::from_name(&header.alg).ok_or("unsupported algorithm")?;
    // RFC 7515 4.1.11: a recipient MUST reject a token whose `crit` lists an
    // extension it does not understand; meshguard understands none.
    if header.crit.is_some_and(|c| !c.is_empty()) {
        return Err("crit header parameter not supported");
    }
    let kid = header.kid;
    let payload = b64url_decode(p.as_bytes()).ok_or("malformed token payload")?;
    let claims = super::claims::Claims::parse(payload)?;
    let signature = b64url_decode(s.as_bytes()).ok_or("malformed signature")?;
    if signature.is_empty() {
        return Err("malformed signature");
    }
    Ok(Jws {
        alg,
        kid,
        signing_input: token
            .get(..h.len() + 1 + p.len())
            .ok_or("malformed token")?,
        payload_b64: p,
        signature,
        claims,
    })
}

/// `hash(msg)`.
pub(crate) fn digest(hash: Hash, msg: &[u8]) -> Vec<u8> {
    match hash {
        Hash::Sha256 => Sha256::digest(msg).to_vec(),
        Hash::Sha384 => Sha384::digest(msg).to_vec(),
        Hash::Sha512 => Sha512::digest(msg).to_vec(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn tok(header: &str, payload: &str, sig: &[u8]) -> String {
        format!(
            "{}.{}.{}",
            b64url_encode(header.as_bytes()),
            b64url_encode(payload.as_bytes()),
            b64url_encode(sig)
        )
    }

    #[test]
    fn parses_a_well_formed_token() {
        let t = tok(r#"{"alg":"ES256","kid":"k"}"#, r#"{"sub":"a"}"#, b"sig");
        let j = parse(t.as_bytes()).unwrap();
        assert_eq!(j.alg, Alg::ES256);
        assert_eq!(j.kid.as_deref(), Some("k"));
        assert_eq!(j.claims["sub"], "a");
        assert_eq!(j.signature, b"sig");
        assert_eq!(j.signing_input, t.rsplit_once('.').unwrap().0.as_bytes());
    }

    #[test]
    fn rejections_have_short_reasons() {
        let ok_h = r#"{"alg":"RS256"}"#;
        let many: String = (0..40).map(|i| format!("\"x{i}\":{i},")).collect();
        let big = "a".repeat(MAX_TOKEN_BYTES + 1);
        let cases: Vec<(String, &str)> = vec![
            (big, "token too large"),
            ("a.b".into(), "malformed token"),
            ("a.b.c.d".into(), "malformed token"),
            (".b.c".into(), "malformed token"),
            ("%%%.b.c".into(), "malformed token header"),
            (tok("not json", "{}", b"s"), "malformed token header"),
            (tok("[1]", "{}", b"s"), "malformed token header"),
            (tok(r#"{"kid":"x"}"#, "{}", b"s"), "malformed token header"),
            (
                tok(r#"{"alg":"none"}"#, "{}", b"s"),
                "unsupported algorithm",
            ),
            (
                tok(r#"{"alg":"rs256"}"#, "{}", b"s"),
                "unsupported algorithm",
            ),
            (
                tok(r#"{"alg":"RS256","kid":7}"#, "{}", b"s"),
                "malformed token header",
            ),
            (
                tok(r#"{"alg":"RS256","crit":["b64"]}"#, "{}", b"s"),
                "crit header parameter not supported",
            ),
            (
                tok(r#"{"alg":"RS256","crit":"b64"}"#, "{}", b"s"),
                "malformed token header",
            ),
            (
                tok(r#"{"alg":"RS256","crit":null}"#, "{}", b"s"),
                "malformed token header",
            ),
            (
                tok(r#"{"alg":"RS256","kid":null}"#, "{}", b"s"),
                "malformed token header",
            ),
            (tok(r#"{"alg":null}"#, "{}", b"s"), "malformed token header"),
            (tok(r#"{"alg":256}"#, "{}", b"s"), "malformed token header"),
            // A repeated member, whichever (RFC 7515 4), however spelled.
            (
                tok(r#"{"alg":"none","alg":"RS256"}"#, "{}", b"s"),
                "duplicate header parameter",
            ),
            (
                tok(r#"{"alg":"RS256","kid":"a","kid":"b"}"#, "{}", b"s"),
                "duplicate header parameter",
            ),
            (
                tok(r#"{"alg":"RS256","typ":"JWT","typ":"at+jwt"}"#, "{}", b"s"),
                "duplicate header parameter",
            ),
            (
                tok(r#"{"alg":"RS256","\u0061lg":"HS256"}"#, "{}", b"s"),
                "duplicate header parameter",
            ),
            (
                tok(r#"{"alg":"RS256","crit":[],"crit":["b64"]}"#, "{}", b"s"),
                "duplicate header parameter",
            ),
            // The repeat is refused whatever its value.
            (
                tok(r#"{"kid":"a","alg":"RS256","kid":5}"#, "{}", b"s"),
                "duplicate header parameter",
            ),
            // Many members (sorted, not compared pairwise).
            (
                tok(&format!(r#"{{"alg":"RS256",{many}"x7":0}}"#), "{}", b"s"),
                "duplicate header parameter",
            ),
            (
                tok(&format!(r#"{{"alg":"RS256",{many}"y":0}}"#), "[]", b"x"),
                "malformed token payload",
            ),
            (
                tok(ok_h, r#"{"sub":"alice","sub":"admin"}"#, b"s"),
                "duplicate claim name",
            ),
            (
                format!(
                    "{}.{}.aa",
                    b64url_encode(b"{\"alg\":\"RS256\",\"x\":\"\xff\"}"),
                    b64url_encode(b"{}")
                ),
                "malformed token header",
            ),
            (tok(r#"["RS256"]"#, "{}", b"s"), "malformed token header"),
            (tok(r#" ["RS256"]"#, "{}", b"s"), "malformed token header"),
            (
                tok(r#"{"alg":"RS256"} x"#, "{}", b"s"),
                "malformed token header",
            ),
            (tok("", "{}", b"s"), "malformed token"),
            (tok(ok_h, "[]", b"s"), "malformed token payload"),
            (tok(ok_h, "{", b"s"), "malformed token payload"),
            (tok(ok_h, "{}", b""), "malformed signature"),
            (
                format!(
                    "{}.{}.a=",
                    b64url_encode(ok_h.as_bytes()),
                    b64url_encode(b"{}")
                ),
                "malformed signature",
            ),
            (
                format!(
                    "{}=.{}.aa",
                    b64url_encode(ok_h.as_bytes()),
                    b64url_encode(b"{}")
                ),
                "malformed token header",
            ),
        ];
        for (t, want) in cases {
            assert_eq!(parse(t.as_bytes()).err(), Some(want), "token {t:.60}");
        }
        assert_eq!(
            parse(&[0xff, b'.', b'a', b'.', b'b']).err(),
            Some("malformed token")
        );
    }

    #[test]
    fn header_members_are_read_whatever_their_order_spacing_or_escapes() {
        let t = tok(
            " {\"typ\" : \"JWT\", \"x5t\": {\"a\": [1, 2]}, \"kid\":\"k\\/1\", \"alg\":\"E\\u0053256\"}\n",
            "{}",
            b"s",
        );
        let j = parse(t.as_bytes()).unwrap();
        assert_eq!(j.alg, Alg::ES256);
        assert_eq!(j.kid.as_deref(), Some("k/1"));
    }

    #[test]
    fn empty_crit_is_accepted() {
        let t = tok(r#"{"alg":"RS256","crit":[]}"#, "{}", b"s");
        assert!(parse(t.as_bytes()).is_ok());
    }

    #[test]
    fn default_allowlist_is_asymmetric_only() {
        let s = AlgSet::asymmetric();
        assert_eq!(s.iter().count(), 9);
        assert!(!s.contains(Alg::HS256));
        assert!(s.contains(Alg::EdDSA));
    }
}
