//! Signature verification at native speed: the native module's answer to
//! the `Host` port's `verify_signature` foreign function (the one Envoy's
//! wasm host implements with BoringSSL, `jwt/native.rs`), with AWS-LC
//! (`aws-lc-rs`, BoringSSL's sibling).
//!
//! The JWT code is the same in both builds: `jwt/verify.rs` hands RS256/
//! 384/512 and ES256/384 checks to the host as Envoy's
//! `VerifySignatureArguments` (hash name, DER SubjectPublicKeyInfo,
//! signature, text; ECDSA signatures DER-encoded) and reads a
//! `VerifySignatureResult`. Here the arguments are decoded and the key's
//! algorithm read from its SubjectPublicKeyInfo:
//!
//! | key (SPKI algorithm) | hash | AWS-LC algorithm |
//! |---|---|---|
//! | rsaEncryption | sha256 / sha384 / sha512 | `RSA_PKCS1_2048_8192_SHA*` (RSASSA-PKCS1-v1_5), the key kept parsed |
//! | id-ecPublicKey, P-256 | sha256 / sha384 | `ECDSA_P256_SHA*_ASN1` |
//! | id-ecPublicKey, P-384 | sha256 / sha384 | `ECDSA_P384_SHA*_ASN1` |
//!
//! RSA keys are kept parsed per worker (`ParsedPublicKey`, at most
//! [`PREPARED_KEYS`] per hash, the table emptied when full), as Envoy's
//! `jwt_authn` keeps its keys: an RSA key's Montgomery context (R^2 mod n)
//! is then computed once, not on every verification. `ring`, used here
//! before, takes a key's bytes on every call and prepares them every time:
//! `callgrind` counted ~135k of its ~400k instructions per distinct RS256
//! token in that preparation.
//!
//! Anything else (another hash, key type or curve, arguments that do not
//! decode) is an error, not a `false`: the caller then verifies in pure
//! Rust, which is always correct. PS* (RSA-PSS), EdDSA and HS* never come
//! here (Envoy's function cannot do them, and `jwt/verify.rs` does not
//! ask); they stay pure Rust in both builds.
//!
//! Same verdicts as the pure Rust path (`jwt/rsassa.rs`, `jwt/ecdsa.rs`)
//! for every key `jwt/jwk.rs` accepts (RSA 2048..4096 bits, odd exponent
//! 3..2^33-1; P-256 / P-384 points on the curve): AWS-LC wants the
//! signature exactly as long as the modulus and below it, the PKCS#1 v1.5
//! encoding byte for byte (DigestInfo with NULL parameters), and ECDSA
//! `r`, `s` in 1..n-1. The differential test below checks both paths over
//! many keys and good and bad signatures.
//!
//! Only in the native build (feature `native`): AWS-LC brings C and
//! assembly that the wasm module must not carry (built by `aws-lc-sys`
//! with the system C compiler; its symbols stay inside the module).

use crate::host::HostError;
use crate::jwt::native::{get_varint, FUNCTION};
use aws_lc_rs::signature::{
    self, ParsedPublicKey, RsaParameters, UnparsedPublicKey, VerificationAlgorithm,
};
use std::cell::RefCell;
use std::collections::HashMap;

/// RSA keys kept parsed per worker and hash, at most: a JWKS rarely holds
/// more than a few; past this many the table is emptied and refills with
/// the keys in use (a 2048-bit key with its Montgomery context ~1 KB).
pub const PREPARED_KEYS: usize = 256;

/// A worker's parsed RSA keys, by their DER RSAPublicKey, one table per
/// hash (a parsed key verifies with one algorithm).
type Prepared = [HashMap<Box<[u8]>, ParsedPublicKey>; 3];

thread_local! {
    static PREPARED: RefCell<Prepared> = RefCell::new(Default::default());
}

/// The host's foreign functions: `verify_signature`, nothing else.
pub fn call_foreign(name: &str, args: &[u8]) -> Result<Option<Vec<u8>>, HostError> {
    if name != FUNCTION {
        return Err(HostError(format!("foreign function {name} not available")));
    }
    let valid = verify_signature(args).map_err(|why| HostError(why.to_string()))?;
    // VerifySignatureResult { bool result = 1; }
    Ok(Some(vec![0x08, u8::from(valid)]))
}

/// Decodes `VerifySignatureArguments` and verifies: `Ok(valid)`, or `Err`
/// when this cannot be verified here (the caller falls back).
pub fn verify_signature(args: &[u8]) -> Result<bool, &'static str> {
    let a = Args::decode(args).ok_or("arguments do not decode")?;
    Ok(
        match algorithm(a.hash, a.key).ok_or("unsupported hash or key")? {
            Verifier::Rsa(table, alg, key) => rsa_verify(table, alg, key, a.text, a.signature),
            Verifier::Other(alg, key) => UnparsedPublicKey::new(alg, key)
                .verify(a.text, a.signature)
                .is_ok(),
        },
    )
}

/// RSASSA-PKCS1-v1_5 with the DER RSAPublicKey `der`, parsed once per
/// worker and hash (`table`). A key AWS-LC refuses (malformed, a modulus
/// outside 2048..=8192 bits, an even exponent or one outside 3..2^33)
/// verifies nothing; one it cannot parse is not kept.
fn rsa_verify(
    table: usize,
    alg: &'static RsaParameters,
    der: &[u8],
    msg: &[u8],
    sig: &[u8],
) -> bool {
    PREPARED.with(|prepared| {
        let Ok(mut prepared) = prepared.try_borrow_mut() else {
            // Not re-entered in practice; if it were, verify without keeping.
            return UnparsedPublicKey::new(alg, der).verify(msg, sig).is_ok();
        };
        let Some(keys) = prepared.get_mut(table) else {
            return false;
        };
        if let Some(key) = keys.get(der) {
            return key.verify_sig(msg, sig).is_ok();
        }
        let Ok(key) = ParsedPublicKey::new(alg, der) else {
            return false;
        };
        let valid = key.verify_sig(msg, sig).is_ok();
        if keys.len() >= PREPARED_KEYS {
            keys.clear();
        }
        keys.insert(der.into(), key);
        valid
    })
}

/// `VerifySignatureArguments`, borrowed from the encoded message.
#[derive(Debug, Default, PartialEq, Eq)]
struct Args<'a> {
    hash: &'a [u8],
    key: &'a [u8],
    signature: &'a [u8],
    text: &'a [u8],
}

impl<'a> Args<'a> {
    /// Length-delimited fields 1..4; unknown fields are skipped.
    fn decode(b: &'a [u8]) -> Option<Args<'a>> {
        let mut out = Args::default();
        let mut i = 0;
        while i < b.len() {
            let tag = get_varint(b, &mut i)?;
            match tag & 7 {
                0 => {
                    get_varint(b, &mut i)?;
                }
                1 => i = i.checked_add(8).filter(|e| *e <= b.len())?,
                5 => i = i.checked_add(4).filter(|e| *e <= b.len())?,
                2 => {
                    let len = usize::try_from(get_varint(b, &mut i)?).ok()?;
                    let end = i.checked_add(len)?;
                    let data = b.get(i..end)?;
                    match tag >> 3 {
                        1 => out.hash = data,
                        2 => out.key = data,
                        3 => out.signature = data,
                        4 => out.text = data,
                        _ => {}
                    }
                    i = end;
                }
                _ => return None,
            }
        }
        Some(out)
    }
}

/// OID contents (DER, without tag and length).
const RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];

/// Who verifies a signature, with the key's bytes.
enum Verifier<'k> {
    /// RSASSA-PKCS1-v1_5: the table of parsed keys for the hash, the
    /// algorithm, the DER RSAPublicKey.
    Rsa(usize, &'static RsaParameters, &'k [u8]),
    /// ECDSA: the algorithm and the uncompressed point.
    Other(&'static dyn VerificationAlgorithm, &'k [u8]),
}

/// The verifier for `hash` and the key of this DER SubjectPublicKeyInfo.
fn algorithm<'k>(hash: &[u8], spki: &'k [u8]) -> Option<Verifier<'k>> {
    let (tag, body, rest) = tlv(spki)?;
    if tag != 0x30 || !rest.is_empty() {
        return None;
    }
    let (tag, alg_id, rest) = tlv(body)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, bits, rest) = tlv(rest)?;
    if tag != 0x03 || !rest.is_empty() {
        return None;
    }
    // A BIT STRING of whole bytes.
    let [0, key @ ..] = bits else {
        return None;
    };
    let (tag, oid, params) = tlv(alg_id)?;
    if tag != 0x06 {
        return None;
    }
    let alg: &'static dyn VerificationAlgorithm = if oid == RSA_ENCRYPTION {
        if params != [0x05, 0x00] {
            return None;
        }
        let (table, alg) = match hash {
            b"sha256" => (0, &signature::RSA_PKCS1_2048_8192_SHA256),
            b"sha384" => (1, &signature::RSA_PKCS1_2048_8192_SHA384),
            b"sha512" => (2, &signature::RSA_PKCS1_2048_8192_SHA512),
            _ => return None,
        };
        return Some(Verifier::Rsa(table, alg, key));
    } else if oid == EC_PUBLIC_KEY {
        let (tag, curve, rest) = tlv(params)?;
        if tag != 0x06 || !rest.is_empty() {
            return None;
        }
        match (curve, hash) {
            (P256, b"sha256") => &signature::ECDSA_P256_SHA256_ASN1,
            (P256, b"sha384") => &signature::ECDSA_P256_SHA384_ASN1,
            (P384, b"sha256") => &signature::ECDSA_P384_SHA256_ASN1,
            (P384, b"sha384") => &signature::ECDSA_P384_SHA384_ASN1,
            _ => return None,
        }
    } else {
        return None;
    };
    Some(Verifier::Other(alg, key))
}

/// One DER TLV: (tag, content, the bytes after it). Definite lengths only,
/// up to four length bytes.
fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, b) = b.split_first()?;
    let (&first, mut b) = b.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if !(1..=4).contains(&n) {
            return None;
        }
        let (bytes, rest) = b.split_at_checked(n)?;
        b = rest;
        bytes
            .iter()
            .fold(0usize, |acc, &x| acc << 8 | usize::from(x))
    };
    let (content, rest) = b.split_at_checked(len)?;
    Some((tag, content, rest))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::host::{Host, MetricId, MetricKind, SetError, SharedValue};
    use crate::jwt::jose::{b64url_decode, Alg};
    use crate::jwt::jwk::{parse_jwk, Jwk, KeyMaterial};
    use crate::jwt::native::{ecdsa_der, encode_args, rsa_spki_der, Curve};
    use crate::jwt::verify::{verify, NativePaths, NativeState, VerifyStats};
    use serde_json::Value;

    /// A host whose `verify_signature` is this module's (`native: true`, as
    /// `NativeHost`) or missing (`false`: the pure Rust path).
    struct TestHost {
        native: bool,
    }

    impl Host for TestHost {
        fn now_nanos(&self) -> u64 {
            0
        }
        fn shared_get(&self, _key: &str) -> Result<SharedValue, HostError> {
            Ok((None, None))
        }
        fn shared_set(&self, _key: &str, _value: &[u8], _cas: Option<u32>) -> Result<(), SetError> {
            Ok(())
        }
        fn random_bytes(&self, _buf: &mut [u8]) -> Result<(), HostError> {
            Ok(())
        }
        fn define_metric(&self, _kind: MetricKind, _name: &str) -> Result<MetricId, HostError> {
            Ok(MetricId::NONE)
        }
        fn increment_metric(&self, _id: MetricId, _delta: i64) {}
        fn record_metric(&self, _id: MetricId, _value: u64) {}
        fn call_foreign(&self, name: &str, args: &[u8]) -> Result<Option<Vec<u8>>, HostError> {
            if self.native {
                call_foreign(name, args)
            } else {
                Err(HostError("none".into()))
            }
        }
    }

    /// Both paths' verdicts; panics when the native path did not answer
    /// through the host (a silent fallback would make the test vacuous).
    struct Both {
        native: (TestHost, NativePaths, VerifyStats),
        pure: (TestHost, NativePaths, VerifyStats),
        native_expected: u64,
    }

    impl Both {
        fn new() -> Both {
            let none = NativePaths {
                rsa: NativeState::Unavailable,
                p256: NativeState::Unavailable,
                p384: NativeState::Unavailable,
            };
            Both {
                native: (
                    TestHost { native: true },
                    NativePaths::default(),
                    VerifyStats::default(),
                ),
                pure: (TestHost { native: false }, none, VerifyStats::default()),
                native_expected: 0,
            }
        }

        fn check(&mut self, alg: Alg, key: &Jwk, msg: &[u8], sig: &[u8], what: &str) -> bool {
            let (h, n, s) = &mut self.native;
            let fast = verify(h, n, s, alg, key, msg, sig);
            let (h, n, s) = &mut self.pure;
            let slow = verify(h, n, s, alg, key, msg, sig);
            assert_eq!(fast, slow, "{what}: native {fast}, pure Rust {slow}");
            assert_eq!(self.pure.2.native_calls, 0);
            // RS* always go to the host; ES* when `r || s` has the curve's size.
            let native = matches!(alg, Alg::RS256 | Alg::RS384 | Alg::RS512)
                || (alg == Alg::ES256 && sig.len() == 64)
                || (alg == Alg::ES384 && sig.len() == 96);
            self.native_expected += u64::from(native && key.supports(alg));
            assert_eq!(self.native.2.native_calls, self.native_expected, "{what}");
            fast
        }
    }

    fn set(v: &mut [u8], at: usize, f: impl Fn(u8) -> u8) -> Vec<u8> {
        let mut v = v.to_vec();
        if let Some(b) = v.get_mut(at) {
            *b = f(*b);
        }
        v
    }

    /// The differential test: every key and signature of
    /// `tests/fixtures/jwt/differential.json` (RSA 2048..4096 bits incl.
    /// odd sizes, exponents 3, 65537, 2^32 + 15, 2^33 - 1; P-256, P-384;
    /// signed by Python `cryptography`, with hand-made bad encodings),
    /// each signature also altered (bit flips, lengths, zero, all ones,
    /// the modulus, r or s zero or the order, swapped halves), the message
    /// altered, and checked under the family's other algorithms: AWS-LC's
    /// verdict must equal the pure Rust one every time, and the fixture's.
    #[test]
    fn aws_lc_and_pure_rust_agree_on_every_key_and_signature() {
        let doc: Value =
            serde_json::from_str(include_str!("../../tests/fixtures/jwt/differential.json"))
                .unwrap();
        let mut both = Both::new();
        let (mut checks, mut good) = (0usize, 0usize);
        for k in doc["rsa"]
            .as_array()
            .unwrap()
            .iter()
            .chain(doc["ec"].as_array().unwrap())
        {
            let key = parse_jwk(k).unwrap();
            let is_rsa = k["kty"] == "RSA";
            let n_bytes = b64url_decode(k["n"].as_str().unwrap_or("").as_bytes()).unwrap();
            let order: &[u8] = match k["crv"].as_str() {
                Some("P-256") => &P256_ORDER,
                Some("P-384") => &P384_ORDER,
                _ => &[],
            };
            for c in k["cases"].as_array().unwrap() {
                let alg = Alg::from_name(c["alg"].as_str().unwrap()).unwrap();
                let msg = c["msg"].as_str().unwrap().as_bytes();
                let sig = b64url_decode(c["sig"].as_str().unwrap().as_bytes()).unwrap();
                let what = match k["bits"].as_u64() {
                    Some(bits) => format!("RSA {bits} bits e {}", k["e"]),
                    None => format!("{} x {}", k["crv"], k["x"]),
                } + &format!(" {} {}", c["alg"], c["what"]);
                let want = c["valid"].as_bool().unwrap();
                assert_eq!(both.check(alg, &key, msg, &sig, &what), want, "{what}");
                good += usize::from(want);
                checks += 1;
                let family: &[Alg] = if is_rsa {
                    &[
                        Alg::RS256,
                        Alg::RS384,
                        Alg::RS512,
                        Alg::PS256,
                        Alg::PS384,
                        Alg::PS512,
                    ]
                } else {
                    &[Alg::ES256, Alg::ES384]
                };
                for &other in family.iter().filter(|&&a| a != alg) {
                    // (A bad case may be good under another algorithm:
                    // the SHA-384 DigestInfo under RS256 is a valid RS384.)
                    let v = both.check(other, &key, msg, &sig, &format!("{what} as {other:?}"));
                    assert!(!(v && want), "{what} as {other:?}: accepted");
                    checks += 1;
                }
                if !want {
                    continue;
                }
                let len = sig.len();
                let mut bad: Vec<(String, Vec<u8>)> = vec![
                    ("empty".into(), vec![]),
                    ("one byte short".into(), sig[..len - 1].to_vec()),
                    ("a zero byte in front".into(), [&[0u8][..], &sig].concat()),
                    ("a zero byte after".into(), [&sig[..], &[0u8][..]].concat()),
                    ("zero".into(), vec![0; len]),
                    ("all ones".into(), vec![0xff; len]),
                    ("one".into(), set(&mut vec![0; len], len - 1, |_| 1)),
                ];
                for at in [0, 1, len / 2 - 1, len / 2, len - 1] {
                    bad.push((
                        format!("bit flip at {at}"),
                        set(&mut sig.clone(), at, |b| b ^ 0x10),
                    ));
                }
                if is_rsa {
                    let mut n = vec![0u8; len - n_bytes.len()];
                    n.extend_from_slice(&n_bytes);
                    bad.push(("the modulus".into(), n.clone()));
                    bad.push(("the modulus - 1".into(), set(&mut n, len - 1, |b| b - 1)));
                } else {
                    let h = len / 2;
                    let (r, s) = sig.split_at(h);
                    bad.push(("r = 0".into(), [&vec![0; h][..], s].concat()));
                    bad.push(("s = 0".into(), [r, &vec![0; h][..]].concat()));
                    bad.push(("r = n".into(), [order, s].concat()));
                    bad.push(("s = n".into(), [r, order].concat()));
                    bad.push(("swapped".into(), [s, r].concat()));
                }
                for (how, b) in &bad {
                    let v = both.check(alg, &key, msg, b, &format!("{what}, {how}"));
                    assert!(!v, "{what}, {how}: accepted");
                    checks += 1;
                }
                let mut other_msg = msg.to_vec();
                other_msg[3] ^= 1;
                assert!(!both.check(alg, &key, &other_msg, &sig, &format!("{what}, message")));
            }
        }
        eprintln!(
            "{good} good, {checks} checks, {} through AWS-LC",
            both.native_expected
        );
        assert!(
            good >= 100 && checks >= 3000,
            "{good} good, {checks} checks"
        );
        assert!(both.native_expected >= 1000, "{}", both.native_expected);
    }

    fn prepared() -> usize {
        PREPARED.with(|t| t.borrow().iter().map(HashMap::len).sum())
    }

    /// An odd number of `bits` bits, big endian: a modulus to prepare
    /// (verification needs no primes).
    fn odd(seed: &mut u64, bits: usize) -> Vec<u8> {
        let mut n = crate::jwt::montgomery::test_bytes(seed, bits / 8);
        n[0] |= 0x80;
        *n.last_mut().unwrap() |= 1;
        n
    }

    /// Each RSA key is prepared once per worker, then found by its bytes;
    /// the table never holds more than `PREPARED_KEYS` keys, and a key
    /// found there gives the verdicts of a fresh one.
    #[test]
    fn rsa_keys_are_prepared_once_and_the_table_is_bounded() {
        let jwks: Value =
            serde_json::from_str(include_str!("../../tests/fixtures/jwt/differential.json"))
                .unwrap();
        let k = &jwks["rsa"][0];
        let key = parse_jwk(k).unwrap();
        let KeyMaterial::Rsa { spki_der, .. } = &key.material else {
            panic!("not RSA");
        };
        let case = k["cases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["valid"] == true && c["alg"] == "RS256")
            .unwrap();
        let msg = case["msg"].as_str().unwrap().as_bytes();
        let sig = b64url_decode(case["sig"].as_str().unwrap().as_bytes()).unwrap();
        let mut bad = sig.clone();
        bad[10] ^= 1;
        let answer = |s: &[u8]| verify_signature(&encode_args("sha256", spki_der, s, msg));
        assert_eq!(prepared(), 0);
        for round in 0..3 {
            assert_eq!(answer(&sig), Ok(true), "round {round}");
            assert_eq!(answer(&bad), Ok(false), "round {round}");
            assert_eq!(prepared(), 1, "round {round}");
        }
        // Other keys fill the table up to its bound, then it starts over.
        let mut seed = 0x0bad_cafe_f00d_u64;
        for i in 1..PREPARED_KEYS {
            let other = rsa_spki_der(&odd(&mut seed, 2048), &[1, 0, 1]);
            assert_eq!(
                verify_signature(&encode_args("sha256", &other, &sig, msg)),
                Ok(false)
            );
            assert_eq!(prepared(), i + 1);
        }
        let one_more = rsa_spki_der(&odd(&mut seed, 2048), &[1, 0, 1]);
        assert_eq!(
            verify_signature(&encode_args("sha256", &one_more, &sig, msg)),
            Ok(false)
        );
        assert_eq!(prepared(), 1);
        // The first key, prepared again: the same verdicts.
        assert_eq!(answer(&sig), Ok(true));
        assert_eq!(answer(&bad), Ok(false));
        assert_eq!(prepared(), 2);
    }

    /// RSA keys AWS-LC refuses verify nothing: a modulus under 2048 bits
    /// (even with a valid signature), an even, too small or too large
    /// exponent, malformed DER, a negative INTEGER. (`jwt/jwk.rs` refuses them
    /// before they get here; this is the module's own guard.)
    #[test]
    fn rsa_keys_aws_lc_refuses_verify_nothing() {
        let mut seed = 77;
        let n = odd(&mut seed, 2048);
        let sig = vec![1u8; 256];
        let der_of = |n: &[u8], e: &[u8]| {
            let spki = rsa_spki_der(n, e);
            let Some(Verifier::Rsa(_, _, der)) = algorithm(b"sha256", &spki) else {
                panic!("not RSA");
            };
            der.to_vec()
        };
        let parses =
            |der: &[u8]| ParsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, der).is_ok();
        assert!(parses(&der_of(&n, &[1, 0, 1])));
        assert!(parses(&der_of(&n, &[3])));
        assert!(parses(&der_of(&n, &[1, 0xff, 0xff, 0xff, 0xff])));
        // A 1024-bit key and a valid signature of it (OpenSSL): valid for
        // the pure Rust arithmetic, refused here.
        let small_n = hex(SMALL_N);
        let small_sig = hex(SMALL_SIG);
        let small = crate::jwt::rsassa::RsaKey::new(&small_n, &[1, 0, 1]).unwrap();
        assert!(small.verify_pkcs1(crate::jwt::jose::Hash::Sha256, SMALL_MSG, &small_sig));
        let small_der = der_of(&small_n, &[1, 0, 1]);
        assert!(!rsa_verify(
            0,
            &signature::RSA_PKCS1_2048_8192_SHA256,
            &small_der,
            SMALL_MSG,
            &small_sig
        ));
        let mut refused = vec![
            der_of(&odd(&mut seed, 2040), &[1, 0, 1]),
            der_of(&n, &[1, 0, 0]),
            der_of(&n, &[1]),
            der_of(&n, &[2, 0, 0, 0, 1]),
            vec![],
            vec![0x30, 0x00],
        ];
        let good = der_of(&n, &[1, 0, 1]);
        refused.push(good[..good.len() - 1].to_vec());
        refused.push([&good[..], &[0]].concat());
        // n's INTEGER with its leading zero dropped: negative.
        let mut negative = good.clone();
        assert_eq!(&negative[4..8], &[0x02, 0x82, 0x01, 0x01]);
        negative.remove(8);
        negative[7] = 0x00;
        negative[3] -= 1;
        refused.push(negative);
        for der in &refused {
            assert!(
                !rsa_verify(0, &signature::RSA_PKCS1_2048_8192_SHA256, der, b"m", &sig),
                "{der:02x?}"
            );
        }
        // The 1024- and 2040-bit keys parse (AWS-LC checks the size when
        // verifying) and are kept; the malformed ones are not.
        assert_eq!(prepared(), 2);
    }

    /// A 1024-bit RSA key (e = 65537) and its RS256 signature of
    /// `SMALL_MSG` (`openssl genrsa 1024`, `openssl dgst -sha256 -sign`).
    const SMALL_N: &str = "af6d144297a8dcf6a4104e0b5e02bd1e3dcfbfd19d37cea5388d571ce4379532ce3891554e04a39d1f3f8eb8c58fdf9060fb6f5eb134c893d16595bbd75526e8ff05b3c0be2f4a592e302df89cc4ce03ced0d196df189b837ce27b73ca90dbc325d5a6769c8574516b7355c6842bb72ddc44da3afc43b94ab3af5419ca993c35";
    const SMALL_SIG: &str = "5f5ca2432ddde7144e563c700a61873a472aa5a2fce861cef58c974694bb08520737c0196f52e9740c897bbbcd6e8994b6d9a15d80ad19ad9b23fb2aebba9f07d72908eb7b25af9a3dbc25d543e28ef8f205ecc36b21450c9c8f5131839f32c6b09f26f2c71dd3e9b6d6990a4ce14c5f717e202686780f394a8bdc2d180e5ca5";
    const SMALL_MSG: &[u8] = b"meshguard small key";

    /// The group orders (big endian).
    const P256_ORDER: [u8; 32] = [
        0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63,
        0x25, 0x51,
    ];
    const P384_ORDER: [u8; 48] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xc7, 0x63, 0x4d, 0x81, 0xf4, 0x37,
        0x2d, 0xdf, 0x58, 0x1a, 0x0d, 0xb2, 0x48, 0xb0, 0xa7, 0x7a, 0xec, 0xec, 0x19, 0x6a, 0xcc,
        0xc5, 0x29, 0x73,
    ];

    #[test]
    fn only_verify_signature_is_answered() {
        let args = encode_args("sha256", &[], &[], b"");
        assert!(call_foreign("verify_signature_v2", &args).is_err());
        assert!(call_foreign("", &args).is_err());
    }

    /// What this module cannot verify is an error (the caller falls back
    /// to pure Rust), never a verdict.
    #[test]
    fn unsupported_or_malformed_arguments_are_errors() {
        let rsa = rsa_spki_der(&[0xc5; 256], &[1, 0, 1]);
        let (point, sig) = crate::jwt::native::self_test_vector(Curve::P256);
        let p256 = crate::jwt::native::ec_spki_der(Curve::P256, point).unwrap();
        let der = ecdsa_der(Curve::P256, sig).unwrap();
        let msg = crate::jwt::native::SELF_TEST_MESSAGE;
        assert_eq!(
            verify_signature(&encode_args("sha256", &p256, &der, msg)),
            Ok(true)
        );
        for (hash, key) in [
            ("sha1", &rsa),
            ("SHA256", &rsa),
            ("sha512", &p256),
            ("md5", &p256),
            ("", &rsa),
        ] {
            assert!(
                verify_signature(&encode_args(hash, key, &der, msg)).is_err(),
                "{hash}"
            );
        }
        let mut bad_keys = vec![
            vec![],
            rsa[..rsa.len() - 1].to_vec(),
            [&rsa[..], &[0]].concat(),
        ];
        // Another OID (Ed25519), another curve (P-521), RSA with absent
        // parameters, a BIT STRING with unused bits.
        bad_keys.push(
            hex("302a300506032b6570032100")
                .into_iter()
                .chain([7; 32])
                .collect(),
        );
        let mut p521 = p256.clone();
        p521.splice(18..26, hex("2b81040023"));
        p521[1] -= 3;
        p521[3] -= 3;
        p521[5] -= 3;
        bad_keys.push(p521);
        let mut unused = p256.clone();
        unused[25] = 1;
        bad_keys.push(unused);
        for key in &bad_keys {
            assert!(
                verify_signature(&encode_args("sha256", key, &der, msg)).is_err(),
                "{key:02x?}"
            );
        }
        // Truncated arguments; a group wire type.
        let args = encode_args("sha256", &p256, &der, msg);
        assert!(verify_signature(&args[..args.len() - 1]).is_err());
        assert!(verify_signature(&[0x0b]).is_err());
        // Unknown fields are skipped, field order does not matter.
        let mut extra = vec![0x28, 0x05, 0x31, 0, 0, 0, 0, 0, 0, 0, 0];
        extra.extend(encode_args("sha256", &p256, &der, msg));
        assert_eq!(verify_signature(&extra), Ok(true));
    }

    fn hex(h: &str) -> Vec<u8> {
        (0..h.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
            .collect()
    }

    /// `jwt::verify` learns once per worker whether the host verifies
    /// ECDSA (a known-good signature, then an altered one): AWS-LC does.
    #[test]
    fn the_ecdsa_self_test_passes_with_aws_lc() {
        let mut native = NativePaths::default();
        let mut stats = VerifyStats::default();
        let host = TestHost { native: true };
        let k: Value =
            serde_json::from_str(include_str!("../../tests/fixtures/jwt/jwks.json")).unwrap();
        for key in k["keys"].as_array().unwrap() {
            if key["kty"] == "EC" {
                let jwk = parse_jwk(key).unwrap();
                let alg = if key["crv"] == "P-256" {
                    Alg::ES256
                } else {
                    Alg::ES384
                };
                assert!(!verify(
                    &host,
                    &mut native,
                    &mut stats,
                    alg,
                    &jwk,
                    b"m",
                    &[1; 96]
                ));
            }
        }
        assert_eq!(native.p256, NativeState::Available);
        assert_eq!(native.p384, NativeState::Available);
    }
}
