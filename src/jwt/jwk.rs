//! JWKS (RFC 7517) to verification keys.
//!
//! Entries meshguard cannot use (unknown `kty`, bad key material, an
//! unsupported curve, `use` other than `sig`, an unknown `alg`) are skipped
//! with one `warn` line naming the provider and the `kid`; the others are
//! kept, so one odd key published by an IdP never locks everybody out.

use super::ecdsa::EcKey;
use super::jose::{b64url_decode, Alg};
use super::montgomery::{bit_len, strip_zeros};
use super::native::{ec_spki_der, rsa_spki_der, Curve};
use super::rsassa::RsaKey;
use crate::config::json::{self, Step};
use serde_json::Value;

/// At most this many keys of one JWKS are kept (the rest are skipped).
pub const MAX_KEYS: usize = 64;
/// Smallest RSA modulus accepted (bits).
pub const MIN_RSA_BITS: usize = 2048;
/// Largest RSA modulus accepted (bits): verification cost grows with the
/// cube of the size, and 4096 is the common ceiling (BoringSSL, the `rsa`
/// crate).
pub const MAX_RSA_BITS: usize = 4096;
/// Largest RSA public exponent accepted: 2^33 - 1, the bound of BoringSSL
/// (Envoy's native `verify_signature` would refuse every signature of a
/// key above it) and of the `rsa` crate.
pub const MAX_RSA_EXPONENT: u64 = (1 << 33) - 1;
/// Smallest HMAC secret accepted (bytes): RFC 7518 3.2 wants at least the
/// hash size; 32 bytes is the floor for HS256.
pub const MIN_OCT_BYTES: usize = 32;

/// Public key material (or an HMAC secret) ready to verify.
pub enum KeyMaterial {
    Rsa {
        /// Ready for verification in wasm (`rsassa`).
        key: super::rsassa::RsaKey,
        /// DER SubjectPublicKeyInfo, for Envoy's native `verify_signature`.
        spki_der: Vec<u8>,
    },
    /// A P-256 or P-384 point (`ecdsa`); `spki_der`: DER
    /// SubjectPublicKeyInfo, for the native `verify_signature`.
    Ec {
        key: super::ecdsa::EcKey,
        spki_der: Vec<u8>,
    },
    Ed25519(ed25519_dalek::VerifyingKey),
    Oct(Vec<u8>),
}

impl std::fmt::Debug for KeyMaterial {
    // Never print key material (oct keys are secrets).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KeyMaterial::Rsa { .. } => "Rsa",
            KeyMaterial::Ec { key, .. } => match key.curve() {
                Curve::P256 => "P256",
                Curve::P384 => "P384",
            },
            KeyMaterial::Ed25519(_) => "Ed25519",
            KeyMaterial::Oct(_) => "Oct(<secret>)",
        })
    }
}

/// One usable JWK.
#[derive(Debug)]
pub struct Jwk {
    pub kid: Option<String>,
    /// The JWK's own `alg`, when it pins one.
    pub alg: Option<Alg>,
    pub material: KeyMaterial,
}

impl Jwk {
    /// Is `other` the same key: same `kid`, same pinned `alg`, same
    /// material? (A refetched JWKS parses into new values; this is how a
    /// cached token finds the key that verified it in the new set.)
    pub fn same_key(&self, other: &Jwk) -> bool {
        self.kid == other.kid
            && self.alg == other.alg
            && match (&self.material, &other.material) {
                (KeyMaterial::Rsa { spki_der: a, .. }, KeyMaterial::Rsa { spki_der: b, .. }) => {
                    a == b
                }
                (KeyMaterial::Ec { key: a, .. }, KeyMaterial::Ec { key: b, .. }) => a == b,
                (KeyMaterial::Ed25519(a), KeyMaterial::Ed25519(b)) => a == b,
                (KeyMaterial::Oct(a), KeyMaterial::Oct(b)) => a == b,
                _ => false,
            }
    }

    /// Can this key verify `alg`? Key type must match the algorithm family
    /// (so an RSA public key is never an HMAC secret), and a pinned `alg`
    /// must be equal.
    pub fn supports(&self, alg: Alg) -> bool {
        if self.alg.is_some_and(|a| a != alg) {
            return false;
        }
        match (&self.material, alg) {
            (KeyMaterial::Ec { key, .. }, Alg::ES256) => key.curve() == Curve::P256,
            (KeyMaterial::Ec { key, .. }, Alg::ES384) => key.curve() == Curve::P384,
            (material, alg) => matches!(
                (material, alg),
                (
                    KeyMaterial::Rsa { .. },
                    Alg::RS256 | Alg::RS384 | Alg::RS512 | Alg::PS256 | Alg::PS384 | Alg::PS512,
                ) | (KeyMaterial::Ed25519(_), Alg::EdDSA)
                    | (KeyMaterial::Oct(_), Alg::HS256 | Alg::HS384 | Alg::HS512)
            ),
        }
    }
}

/// The usable keys of one JWKS.
#[derive(Debug, Default)]
pub struct KeySet {
    pub keys: Vec<Jwk>,
}

impl KeySet {
    /// Parses JWKS JSON text; see [`KeySet::from_value`]. A key that names
    /// a member twice (two `"n"`, two `"kty"`, at any depth inside it) is
    /// skipped as other malformed keys are, never read with the last
    /// (or first) one winning; a member repeated anywhere else (two
    /// `"keys"`) refuses the document.
    pub fn from_text(text: &[u8], provider: &str) -> Result<KeySet, &'static str> {
        const NOT_JSON: &str = "JWKS is not valid JSON";
        let text = std::str::from_utf8(text).map_err(|_| NOT_JSON)?;
        let (v, repeats) = json::parse_marking(text).map_err(|_| NOT_JSON)?;
        let mut repeating = Vec::new();
        for at in &repeats {
            match at.as_slice() {
                [Step::Key(k), Step::Index(i), ..] if k == "keys" => repeating.push(*i),
                _ => return Err("JWKS names a member twice outside its keys"),
            }
        }
        KeySet::read(&v, provider, &repeating)
    }

    /// Parses a JWKS object, skipping (with a warning) entries it cannot use.
    /// Errors only when the document itself is not a JWKS.
    pub fn from_value(v: &Value, provider: &str) -> Result<KeySet, &'static str> {
        KeySet::read(v, provider, &[])
    }

    /// [`KeySet::from_value`], also skipping the keys at `repeating`
    /// (indexes of keys that named a member twice).
    fn read(v: &Value, provider: &str, repeating: &[usize]) -> Result<KeySet, &'static str> {
        let keys = v
            .get("keys")
            .and_then(Value::as_array)
            .ok_or("a JWKS object with a \"keys\" array")?;
        let mut out = KeySet::default();
        for (i, k) in keys.iter().enumerate() {
            let kid = k.get("kid").and_then(Value::as_str);
            if out.keys.len() >= MAX_KEYS {
                log::warn!("meshguard: jwt provider {provider}: more than {MAX_KEYS} keys in JWKS, the rest are skipped");
                break;
            }
            let parsed = if repeating.contains(&i) {
                Err("a member is named twice")
            } else {
                parse_jwk(k)
            };
            match parsed {
                Ok(jwk) => out.keys.push(jwk),
                Err(why) => log::warn!(
                    "meshguard: jwt provider {provider}: skipping JWKS key {} (kid {:?}): {why}",
                    i,
                    kid.unwrap_or("<none>")
                ),
            }
        }
        Ok(out)
    }

    /// Keys that may verify a token with this `alg` and `kid`. A token
    /// without `kid` is tried against every compatible key.
    pub fn candidates<'a>(
        &'a self,
        alg: Alg,
        kid: Option<&'a str>,
    ) -> impl Iterator<Item = &'a Jwk> + 'a {
        self.keys.iter().filter(move |k| {
            k.supports(alg)
                && match kid {
                    Some(kid) => k.kid.as_deref() == Some(kid),
                    None => true,
                }
        })
    }

    /// Does any key carry this `kid` (whatever its type)?
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }
}

fn field<'a>(k: &'a Value, name: &str) -> Result<&'a str, &'static str> {
    k.get(name)
        .and_then(Value::as_str)
        .ok_or("missing or non-string key parameter")
}

fn b64(k: &Value, name: &str) -> Result<Vec<u8>, &'static str> {
    b64url_decode(field(k, name)?.as_bytes()).ok_or("key parameter is not base64url")
}

/// Parses one JWK into a usable key, or says why it cannot be used.
pub fn parse_jwk(k: &Value) -> Result<Jwk, &'static str> {
    if !k.is_object() {
        return Err("not an object");
    }
    if let Some(u) = k.get("use") {
        if u.as_str() != Some("sig") {
            return Err("\"use\" is not \"sig\"");
        }
    }
    let alg = match k.get("alg") {
        None => None,
        Some(a) => Some(
            a.as_str()
                .and_then(Alg::from_name)
                .ok_or("unsupported \"alg\"")?,
        ),
    };
    let kid = match k.get("kid") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err("\"kid\" is not a string"),
    };
    let material = match field(k, "kty")? {
        "RSA" => {
            let n = b64(k, "n")?;
            let e = b64(k, "e")?;
            let (n, e) = (strip_zeros(&n), strip_zeros(&e));
            let bits = bit_len(n);
            if bits < MIN_RSA_BITS {
                return Err("RSA key shorter than 2048 bits");
            }
            if bits > MAX_RSA_BITS {
                return Err("RSA key longer than 4096 bits");
            }
            let key = RsaKey::new(n, e)
                .filter(|k| k.exponent() <= MAX_RSA_EXPONENT)
                .ok_or("invalid RSA key")?;
            let spki_der = rsa_spki_der(n, e);
            KeyMaterial::Rsa { key, spki_der }
        }
        "EC" => {
            let crv = field(k, "crv")?;
            let (x, y) = (b64(k, "x")?, b64(k, "y")?);
            let size = match crv {
                "P-256" => 32,
                "P-384" => 48,
                _ => return Err("unsupported EC curve"),
            };
            if x.len() != size || y.len() != size {
                return Err("EC coordinates have the wrong length");
            }
            let mut sec1 = Vec::with_capacity(1 + 2 * size);
            sec1.push(0x04);
            sec1.extend_from_slice(&x);
            sec1.extend_from_slice(&y);
            let curve = if size == 32 { Curve::P256 } else { Curve::P384 };
            let spki_der =
                ec_spki_der(curve, &sec1).ok_or("EC coordinates have the wrong length")?;
            KeyMaterial::Ec {
                key: EcKey::new(curve, &x, &y).ok_or("EC point not on the curve")?,
                spki_der,
            }
        }
        "OKP" => {
            if field(k, "crv")? != "Ed25519" {
                return Err("unsupported OKP curve");
            }
            let x: [u8; 32] = b64(k, "x")?
                .try_into()
                .map_err(|_| "Ed25519 key is not 32 bytes")?;
            KeyMaterial::Ed25519(
                ed25519_dalek::VerifyingKey::from_bytes(&x).map_err(|_| "invalid Ed25519 key")?,
            )
        }
        "oct" => {
            let secret = b64(k, "k")?;
            if secret.len() < MIN_OCT_BYTES {
                return Err("HMAC secret shorter than 32 bytes");
            }
            KeyMaterial::Oct(secret)
        }
        _ => return Err("unsupported \"kty\""),
    };
    let jwk = Jwk { kid, alg, material };
    if let Some(a) = alg {
        if !jwk.supports(a) {
            return Err("\"alg\" does not match the key type");
        }
    }
    Ok(jwk)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bad_entries_are_skipped_and_good_ones_kept() {
        let text = include_str!("../../tests/fixtures/jwt/jwks_mixed.json");
        let ks = KeySet::from_text(text.as_bytes(), "t").unwrap();
        assert_eq!(ks.keys.len(), 1);
        assert_eq!(ks.keys[0].kid.as_deref(), Some("rsa-1"));
    }

    #[test]
    fn every_fixture_key_parses() {
        let text = include_str!("../../tests/fixtures/jwt/jwks.json");
        let ks = KeySet::from_text(text.as_bytes(), "t").unwrap();
        assert_eq!(ks.keys.len(), 6);
    }

    #[test]
    fn rsa_spki_der_matches_an_independent_encoder() {
        use base64::Engine;
        let text = include_str!("../../tests/fixtures/jwt/jwks.json");
        let ks = KeySet::from_text(text.as_bytes(), "t").unwrap();
        let want = base64::engine::general_purpose::STANDARD
            .decode(include_str!("../../tests/fixtures/jwt/rsa_spki_der.b64").trim())
            .unwrap();
        match &ks.keys[0].material {
            KeyMaterial::Rsa { spki_der, .. } => assert_eq!(spki_der, &want),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rejected_entries_say_why() {
        let cases = [
            (
                json!({"kty": "oct", "k": "c2hvcnQ"}),
                "HMAC secret shorter than 32 bytes",
            ),
            (
                json!({"kty": "RSA", "n": crate::jwt::jose::b64url_encode(&[0xff; 128]), "e": "AQAB"}),
                "RSA key shorter than 2048 bits",
            ),
            (
                json!({"kty": "RSA", "n": crate::jwt::jose::b64url_encode(&[0xff; 513]), "e": "AQAB"}),
                "RSA key longer than 4096 bits",
            ),
            (
                // e = 2^33 + 1: above BoringSSL's bound.
                json!({"kty": "RSA", "n": crate::jwt::jose::b64url_encode(&[0xff; 256]),
                       "e": crate::jwt::jose::b64url_encode(&[2, 0, 0, 0, 1])}),
                "invalid RSA key",
            ),
            (
                json!({"kty": "RSA", "n": crate::jwt::jose::b64url_encode(&[0xff; 256]), "e": "AAE"}),
                "invalid RSA key",
            ),
            (
                // An even modulus.
                json!({"kty": "RSA", "n": crate::jwt::jose::b64url_encode(&[0xfe; 256]), "e": "AQAB"}),
                "invalid RSA key",
            ),
            (
                json!({"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}),
                "EC coordinates have the wrong length",
            ),
            (
                json!({"kty": "OKP", "crv": "Ed448", "x": "AA"}),
                "unsupported OKP curve",
            ),
            (
                json!({"kty": "oct", "use": "enc", "k": "AA"}),
                "\"use\" is not \"sig\"",
            ),
            (
                json!({"kty": "oct", "alg": "none", "k": "AA"}),
                "unsupported \"alg\"",
            ),
            (json!({"kty": "dsa"}), "unsupported \"kty\""),
            (json!({"n": "x"}), "missing or non-string key parameter"),
            (json!("x"), "not an object"),
        ];
        for (k, want) in cases {
            assert_eq!(parse_jwk(&k).err(), Some(want), "{k}");
        }
        let secret = "A".repeat(43);
        let pinned = json!({"kty": "oct", "alg": "ES256", "k": secret});
        assert_eq!(
            parse_jwk(&pinned).err(),
            Some("\"alg\" does not match the key type")
        );
    }

    /// The fixture JWKS with `extra` written first in key `i`.
    fn with_extra(i: usize, extra: &str) -> String {
        let text = include_str!("../../tests/fixtures/jwt/jwks.json");
        let v: Value = serde_json::from_str(text).unwrap();
        let keys: Vec<String> = v["keys"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
            .map(|(j, k)| {
                let k = k.to_string();
                if i == j {
                    format!("{{{extra},{}", &k[1..])
                } else {
                    k
                }
            })
            .collect();
        format!("{{\"keys\":[{}]}}", keys.join(","))
    }

    fn kids(ks: &KeySet) -> Vec<&str> {
        ks.keys.iter().filter_map(|k| k.kid.as_deref()).collect()
    }

    #[test]
    fn a_key_naming_a_member_twice_is_skipped() {
        let all = ["rsa-1", "rsa-2", "ec-256", "ec-384", "ed-1", "hs-1"];
        let other_n = crate::jwt::jose::b64url_encode(&[0xc5; 256]);
        let cases = [
            (0, format!(r#""n":"{other_n}""#)),
            (1, format!(r#""\u006e":"{other_n}""#)),
            (2, r#""kty":"oct""#.to_string()),
            (3, r#""crv":"P-256""#.to_string()),
            (4, r#""kid":"rsa-1""#.to_string()),
            (
                5,
                r#""k":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA""#.to_string(),
            ),
            // Deeper inside the key.
            (0, r#""oth":[{"r":"AQ","r":"AQ"}]"#.to_string()),
        ];
        for (i, extra) in cases {
            let text = with_extra(i, &extra);
            let ks = KeySet::from_text(text.as_bytes(), "t").unwrap();
            let want: Vec<&str> = all
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, k)| *k)
                .collect();
            assert_eq!(kids(&ks), want, "{extra}");
        }
        // An unrepeated extra member changes nothing.
        let text = with_extra(0, r#""x5t":"abc""#);
        assert_eq!(kids(&KeySet::from_text(text.as_bytes(), "t").unwrap()), all);
        // A repeat outside the keys refuses the document.
        for text in [
            r#"{"keys":[],"keys":[]}"#,
            r#"{"keys":[],"\u006beys":[]}"#,
            r#"{"keys":[],"x":{"a":1,"a":2}}"#,
        ] {
            assert_eq!(
                KeySet::from_text(text.as_bytes(), "t").err(),
                Some("JWKS names a member twice outside its keys"),
                "{text}"
            );
        }
    }

    #[test]
    fn not_a_jwks_is_an_error() {
        assert!(KeySet::from_text(b"{}", "t").is_err());
        assert!(KeySet::from_text(b"nope", "t").is_err());
    }
}
