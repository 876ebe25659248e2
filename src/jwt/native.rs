//! Envoy's `verify_signature` foreign function (a function of Envoy's wasm
//! host that modules call by name with `proxy_call_foreign_function`): native
//! BoringSSL verification, for RSA PKCS#1 v1.5 (RS*) about 3x cheaper than
//! RSA inside wasm (`rsassa`; 12x cheaper than the `rsa` crate), and for
//! ECDSA (ES256, ES384) about 9x cheaper than ECDSA inside wasm (measured
//! with the `p256` crate, as fast under V8 as `ecdsa` for P-256).
//!
//! Envoy hands the key to BoringSSL's generic `EVP_DigestVerify`, so any
//! key type it can parse from a DER SubjectPublicKeyInfo works with the
//! default padding: RSA PKCS#1 v1.5 and ECDSA, not RSA-PSS (the padding
//! cannot be chosen) nor Ed25519 (it needs no digest, and the function
//! requires one). For ECDSA it expects the signature DER-encoded (X9.62
//! `ECDSA-Sig-Value`), while JWS carries `r || s` as fixed-size integers
//! (RFC 7518 3.4): [`ecdsa_der`] converts, [`ec_spki_der`] builds the key.
//! Whether a host verifies ECDSA at all is learned once per worker with a
//! known-good signature (`verify::self_test`): its `false` alone cannot tell an
//! invalid signature from a key type it does not support.
//!
//! The protobuf encoding is written by hand (varint and length-delimited
//! fields only): there are exactly two tiny messages, and this avoids
//! `prost` and its build-time dependencies (protoc / build scripts) in a
//! crate that must stay easy to build for wasm.
//!
//! ```text
//! message VerifySignatureArguments {
//!   string hash_function = 1; bytes public_key = 2; bytes signature = 3; bytes text = 4;
//! }
//! message VerifySignatureResult { bool result = 1; string error = 2; }
//! ```

/// Foreign function name.
pub const FUNCTION: &str = "verify_signature";

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_bytes(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    put_varint(out, (u64::from(field) << 3) | 2);
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// Encodes `VerifySignatureArguments`.
pub fn encode_args(
    hash_function: &str,
    public_key_der: &[u8],
    signature: &[u8],
    text: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        16 + hash_function.len() + public_key_der.len() + signature.len() + text.len(),
    );
    put_bytes(&mut out, 1, hash_function.as_bytes());
    put_bytes(&mut out, 2, public_key_der);
    put_bytes(&mut out, 3, signature);
    put_bytes(&mut out, 4, text);
    out
}

pub(crate) fn get_varint(b: &[u8], i: &mut usize) -> Option<u64> {
    let mut v: u64 = 0;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*i)?;
        *i += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// The decoded `VerifySignatureResult`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VerifyResult {
    pub result: bool,
    pub error: String,
}

/// Decodes `VerifySignatureResult`; unknown fields are skipped.
pub fn decode_result(b: &[u8]) -> Option<VerifyResult> {
    let mut out = VerifyResult::default();
    let mut i = 0;
    while i < b.len() {
        let tag = get_varint(b, &mut i)?;
        let (field, wire) = (tag >> 3, tag & 7);
        match wire {
            0 => {
                let v = get_varint(b, &mut i)?;
                if field == 1 {
                    out.result = v != 0;
                }
            }
            2 => {
                let len = usize::try_from(get_varint(b, &mut i)?).ok()?;
                let end = i.checked_add(len)?;
                let data = b.get(i..end)?;
                if field == 2 {
                    out.error = String::from_utf8_lossy(data).into_owned();
                }
                i = end;
            }
            1 => i = i.checked_add(8).filter(|e| *e <= b.len())?,
            5 => i = i.checked_add(4).filter(|e| *e <= b.len())?,
            _ => return None,
        }
    }
    Some(out)
}

/// The curves of JWS ECDSA (RFC 7518 3.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curve {
    P256,
    P384,
}

impl Curve {
    /// Bytes of one coordinate, and of each of `r` and `s`.
    pub const fn scalar_len(self) -> usize {
        match self {
            Curve::P256 => 32,
            Curve::P384 => 48,
        }
    }

    /// The hash of its JWS algorithm (ES256, ES384), as Envoy names it.
    pub const fn hash_name(self) -> &'static str {
        match self {
            Curve::P256 => "sha256",
            Curve::P384 => "sha384",
        }
    }

    /// The DER of a SubjectPublicKeyInfo (RFC 5480) up to the uncompressed
    /// point: SEQUENCE { SEQUENCE { id-ecPublicKey, the curve's OID },
    /// BIT STRING (no unused bits) }. Lengths are fixed by the curve.
    const fn spki_prefix(self) -> &'static [u8] {
        match self {
            Curve::P256 => &[
                0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06,
                0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
            ],
            Curve::P384 => &[
                0x30, 0x76, 0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06,
                0x05, 0x2b, 0x81, 0x04, 0x00, 0x22, 0x03, 0x62, 0x00,
            ],
        }
    }
}

/// DER SubjectPublicKeyInfo of an EC public key given as an uncompressed
/// SEC1 point (`04 || x || y`); `None` for a point of the wrong form.
pub fn ec_spki_der(curve: Curve, point: &[u8]) -> Option<Vec<u8>> {
    if point.len() != 1 + 2 * curve.scalar_len() || point.first() != Some(&0x04) {
        return None;
    }
    let prefix = curve.spki_prefix();
    let mut out = Vec::with_capacity(prefix.len() + point.len());
    out.extend_from_slice(prefix);
    out.extend_from_slice(point);
    Some(out)
}

/// DER SubjectPublicKeyInfo of an RSA public key (RFC 8017 A.1.1 inside
/// RFC 5280's SubjectPublicKeyInfo, algorithm rsaEncryption with NULL
/// parameters), from the big-endian modulus and exponent without leading
/// zeros (as `jwk.rs` hands them).
pub fn rsa_spki_der(n: &[u8], e: &[u8]) -> Vec<u8> {
    /// AlgorithmIdentifier { rsaEncryption (1.2.840.113549.1.1.1), NULL }.
    const ALGORITHM: [u8; 15] = [
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    let mut key = Vec::with_capacity(n.len() + e.len() + 16);
    der_unsigned(&mut key, n);
    der_unsigned(&mut key, e);
    let mut bits = Vec::with_capacity(key.len() + 5);
    bits.push(0); // no unused bits
    der_tlv(&mut bits, 0x30, &key);
    let mut body = Vec::with_capacity(ALGORITHM.len() + bits.len() + 5);
    body.extend_from_slice(&ALGORITHM);
    der_tlv(&mut body, 0x03, &bits);
    let mut out = Vec::with_capacity(body.len() + 5);
    der_tlv(&mut out, 0x30, &body);
    out
}

/// Appends a DER INTEGER of the unsigned big-endian `v` (minimal: leading
/// zeros dropped, one 0x00 added when the top bit is set; zero is `00`).
fn der_unsigned(out: &mut Vec<u8>, v: &[u8]) {
    let mut v = v;
    while let [0, rest @ ..] = v {
        v = rest;
    }
    let pad = v.first().is_none_or(|&b| b & 0x80 != 0);
    der_header(out, 0x02, v.len() + usize::from(pad));
    if pad {
        out.push(0);
    }
    out.extend_from_slice(v);
}

/// Appends tag, DER length and `content`.
fn der_tlv(out: &mut Vec<u8>, tag: u8, content: &[u8]) {
    der_header(out, tag, content.len());
    out.extend_from_slice(content);
}

/// Appends a tag and a definite length (short form below 128, else the
/// long form with the fewest bytes).
fn der_header(out: &mut Vec<u8>, tag: u8, len: usize) {
    out.push(tag);
    if len < 0x80 {
        out.push(len as u8);
        return;
    }
    // len >= 0x80: at least one byte is left.
    let bytes = len.to_be_bytes();
    let mut b = bytes.as_slice();
    while let [0, rest @ ..] = b {
        b = rest;
    }
    out.push(0x80 | b.len() as u8);
    out.extend_from_slice(b);
}

/// A JWS ECDSA signature (`r || s`, each `scalar_len` bytes, big endian)
/// as DER `SEQUENCE { INTEGER r, INTEGER s }`, each integer minimal and
/// non-negative. `None` when the length is not exactly twice the scalar
/// length (such a signature is invalid, RFC 7518 3.4). A zero or
/// out-of-range `r` or `s` is encoded as given: the verifier rejects it.
pub fn ecdsa_der(curve: Curve, sig: &[u8]) -> Option<Vec<u8>> {
    let n = curve.scalar_len();
    if sig.len() != 2 * n {
        return None;
    }
    let (r, s) = sig.split_at(n);
    let mut ints = Vec::with_capacity(2 * (3 + n));
    der_unsigned(&mut ints, r);
    der_unsigned(&mut ints, s);
    let mut out = Vec::with_capacity(ints.len() + 3);
    der_tlv(&mut out, 0x30, &ints);
    Some(out)
}

/// A known-good signature per curve (made with an independent ECDSA
/// implementation; the unit tests check it with the `p256` / `p384`
/// crates): the uncompressed public point and the JWS `r || s` signature
/// of [`SELF_TEST_MESSAGE`]. Both `r` and `s` have their top bit set, so
/// the DER conversion's padding is exercised by the host itself.
pub const SELF_TEST_MESSAGE: &[u8] = b"meshguard: is ECDSA verified by the host?";

pub fn self_test_vector(curve: Curve) -> (&'static [u8], &'static [u8]) {
    match curve {
        Curve::P256 => (&P256_POINT, &P256_SIG),
        Curve::P384 => (&P384_POINT, &P384_SIG),
    }
}

const P256_POINT: [u8; 65] = [
    0x04, 0xc2, 0x7e, 0x51, 0x0b, 0x3d, 0x27, 0x9d, 0x7c, 0x25, 0x07, 0xaa, 0x70, 0x5c, 0xf2, 0x5e,
    0x63, 0x91, 0xc7, 0xbb, 0xf3, 0x68, 0xd0, 0xa1, 0x33, 0x0a, 0xff, 0x4c, 0x2e, 0xfd, 0x82, 0xe7,
    0xb8, 0x26, 0x97, 0xdb, 0xa9, 0x31, 0x4c, 0xe8, 0x20, 0x31, 0xf7, 0x34, 0x62, 0x6c, 0x66, 0xb5,
    0x81, 0xfe, 0x8f, 0x6f, 0x85, 0x6f, 0x5e, 0xb1, 0xab, 0x44, 0xcc, 0x69, 0xd2, 0x0a, 0x9b, 0xd8,
    0xd5,
];
const P256_SIG: [u8; 64] = [
    0x82, 0x41, 0xbe, 0x3d, 0xb8, 0x6d, 0x20, 0x59, 0x90, 0xe2, 0xc2, 0xf2, 0x2f, 0xec, 0x7c, 0xdb,
    0xd2, 0x85, 0xab, 0x2d, 0x4b, 0xfc, 0xbf, 0xfd, 0x10, 0xac, 0x7b, 0x0a, 0x9f, 0xf2, 0x2f, 0xf8,
    0xa2, 0x7a, 0xf3, 0x8b, 0x2f, 0xbe, 0x90, 0x0b, 0x3b, 0x5e, 0x1b, 0x3f, 0x58, 0x9a, 0xd2, 0x6e,
    0x68, 0x73, 0x93, 0x7f, 0x12, 0x95, 0x72, 0x4f, 0xf8, 0x31, 0xbf, 0x95, 0xb2, 0xb0, 0xab, 0x45,
];
const P384_POINT: [u8; 97] = [
    0x04, 0xbc, 0xf7, 0x97, 0x6d, 0x09, 0xc7, 0x6d, 0xb2, 0x2d, 0x18, 0x0d, 0xa9, 0x6c, 0xab, 0x33,
    0xbc, 0x30, 0x16, 0xb3, 0x5f, 0xb7, 0x71, 0xb0, 0xaa, 0x18, 0x14, 0x5d, 0x81, 0x77, 0x5f, 0x7e,
    0x57, 0x64, 0x84, 0xde, 0xa5, 0x7f, 0x37, 0x43, 0xf6, 0x51, 0xf4, 0xbf, 0x1d, 0x4f, 0xd1, 0x80,
    0x95, 0x7f, 0x7c, 0xef, 0x23, 0xaf, 0x72, 0x5b, 0xc8, 0x23, 0x84, 0x25, 0x27, 0x2a, 0x74, 0xe7,
    0x80, 0xe3, 0x26, 0xf5, 0xaa, 0x19, 0x1d, 0x01, 0xb3, 0x94, 0x4f, 0xac, 0xa9, 0xe6, 0xee, 0xd7,
    0x0b, 0x19, 0x48, 0x51, 0xed, 0x95, 0x13, 0x2d, 0x46, 0xa1, 0x07, 0xc5, 0x32, 0x38, 0xfb, 0xad,
    0x2e,
];
const P384_SIG: [u8; 96] = [
    0xfb, 0x9b, 0x34, 0x03, 0x41, 0xed, 0xb5, 0xc3, 0x7b, 0xee, 0x15, 0x45, 0xc3, 0x22, 0xc9, 0x1c,
    0x1e, 0x5d, 0x74, 0x36, 0x11, 0xb7, 0x93, 0x42, 0x2a, 0x4d, 0xfc, 0x06, 0x17, 0xd0, 0x1b, 0xfe,
    0x43, 0xc2, 0xb6, 0x24, 0xcc, 0x07, 0x40, 0x4e, 0x4b, 0x8f, 0xda, 0xc3, 0x59, 0x55, 0x5e, 0x46,
    0x98, 0x8c, 0xd9, 0x31, 0x71, 0x70, 0x84, 0xd8, 0xce, 0xec, 0x1a, 0xa8, 0x9d, 0x81, 0xaf, 0xca,
    0xd6, 0x00, 0x78, 0xe3, 0xfa, 0xd5, 0x92, 0x88, 0xf6, 0x21, 0x01, 0xbe, 0x3a, 0x4f, 0xb8, 0x7e,
    0x38, 0xed, 0x9e, 0xd7, 0x6d, 0x69, 0x6f, 0xc5, 0xb2, 0x63, 0xb9, 0x4b, 0x27, 0x71, 0xa7, 0x00,
];

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn args_encoding_matches_protobuf_wire_format() {
        let b = encode_args("sha256", &[1, 2], &[3], b"ab");
        assert_eq!(
            b,
            vec![
                0x0a, 6, b's', b'h', b'a', b'2', b'5', b'6', 0x12, 2, 1, 2, 0x1a, 1, 3, 0x22, 2,
                b'a', b'b'
            ]
        );
    }

    #[test]
    fn rsa_spki_equals_the_rsa_crate_encoding() {
        use rsa::pkcs8::EncodePublicKey;
        use rsa::BigUint;
        let mut seed = 0x5eed_u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        };
        // Sizes around the DER length boundaries (content of 128 and 256
        // bytes and more), exponents short, long and with the top bit set.
        for bits in [2048usize, 2049, 2056, 2047 + 8, 3072, 4096] {
            for e in [3u64, 65537, 0x8000_0001, (1 << 33) - 1] {
                let mut nb: Vec<u8> = (0..bits.div_ceil(8)).map(|_| next()).collect();
                let top = bits - 8 * (nb.len() - 1);
                nb[0] = (nb[0] | 0x80) >> (8 - top);
                *nb.last_mut().unwrap() |= 1;
                let eb = BigUint::from(e).to_bytes_be();
                let want = rsa::RsaPublicKey::new(BigUint::from_bytes_be(&nb), BigUint::from(e))
                    .unwrap()
                    .to_public_key_der()
                    .unwrap()
                    .into_vec();
                assert_eq!(rsa_spki_der(&nb, &eb), want, "{bits} bits, e = {e}");
            }
        }
    }

    #[test]
    fn der_integers_are_minimal_and_non_negative() {
        let enc = |v: &[u8]| {
            let mut out = Vec::new();
            der_unsigned(&mut out, v);
            out
        };
        assert_eq!(enc(&[]), [2, 1, 0]);
        assert_eq!(enc(&[0, 0]), [2, 1, 0]);
        assert_eq!(enc(&[0, 0x7f]), [2, 1, 0x7f]);
        assert_eq!(enc(&[0x80]), [2, 2, 0, 0x80]);
        let mut long = vec![0x02, 0x82, 0x01, 0x01, 0x00];
        long.extend([0xff; 256]);
        assert_eq!(enc(&[0xff; 256]), long);
    }

    #[test]
    fn long_fields_use_multi_byte_lengths() {
        let text = vec![7u8; 300];
        let b = encode_args("sha512", &[], &[], &text);
        // field 4 tag, then 300 = 0xAC 0x02
        let at = b.iter().position(|&x| x == 0x22).unwrap();
        assert_eq!(&b[at..at + 3], &[0x22, 0xac, 0x02]);
        assert_eq!(b.len(), at + 3 + 300);
    }

    #[test]
    fn result_decoding() {
        let cases: Vec<(Vec<u8>, Option<VerifyResult>)> = vec![
            (vec![], Some(VerifyResult::default())),
            (
                vec![0x08, 1],
                Some(VerifyResult {
                    result: true,
                    error: String::new(),
                }),
            ),
            (
                vec![0x08, 0, 0x12, 3, b'b', b'a', b'd'],
                Some(VerifyResult {
                    result: false,
                    error: "bad".into(),
                }),
            ),
            // unknown fixed64 and fixed32 fields are skipped
            (
                vec![0x19, 0, 0, 0, 0, 0, 0, 0, 0, 0x25, 0, 0, 0, 0, 0x08, 1],
                Some(VerifyResult {
                    result: true,
                    error: String::new(),
                }),
            ),
            (vec![0x12, 5, b'a'], None), // truncated
            (vec![0x08], None),          // missing varint
            (vec![0x0b], None),          // group wire type
            (
                vec![
                    0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
                ],
                None,
            ),
        ];
        for (bytes, want) in cases {
            assert_eq!(decode_result(&bytes), want, "{bytes:?}");
        }
    }

    fn unhex(h: &str) -> Vec<u8> {
        (0..h.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
            .collect()
    }

    /// What Python `cryptography` (OpenSSL) gave for the self-test keys and
    /// signatures: SubjectPublicKeyInfo DER and DER signatures.
    const P256_SPKI: &str = "3059301306072a8648ce3d020106082a8648ce3d03010703420004c27e510b3d279d7c2507aa705cf25e6391c7bbf368d0a1330aff4c2efd82e7b82697dba9314ce82031f734626c66b581fe8f6f856f5eb1ab44cc69d20a9bd8d5";
    const P256_DER: &str = "30460221008241be3db86d205990e2c2f22fec7cdbd285ab2d4bfcbffd10ac7b0a9ff22ff8022100a27af38b2fbe900b3b5e1b3f589ad26e6873937f1295724ff831bf95b2b0ab45";
    const P384_SPKI: &str = "3076301006072a8648ce3d020106052b8104002203620004bcf7976d09c76db22d180da96cab33bc3016b35fb771b0aa18145d81775f7e576484dea57f3743f651f4bf1d4fd180957f7cef23af725bc8238425272a74e780e326f5aa191d01b3944faca9e6eed70b194851ed95132d46a107c53238fbad2e";
    const P384_DER: &str = "3066023100fb9b340341edb5c37bee1545c322c91c1e5d743611b793422a4dfc0617d01bfe43c2b624cc07404e4b8fdac359555e46023100988cd931717084d8ceec1aa89d81afcad60078e3fad59288f62101be3a4fb87e38ed9ed76d696fc5b263b94b2771a700";

    #[test]
    fn ec_keys_and_signatures_encode_as_openssl_does() {
        for (curve, spki, der) in [
            (Curve::P256, P256_SPKI, P256_DER),
            (Curve::P384, P384_SPKI, P384_DER),
        ] {
            let (point, sig) = self_test_vector(curve);
            assert_eq!(ec_spki_der(curve, point).unwrap(), unhex(spki), "{curve:?}");
            assert_eq!(ecdsa_der(curve, sig).unwrap(), unhex(der), "{curve:?}");
        }
    }

    #[test]
    fn the_self_test_signatures_are_valid_and_bound_to_their_message() {
        use p256::ecdsa::signature::Verifier;
        let (point, sig) = self_test_vector(Curve::P256);
        let k = p256::ecdsa::VerifyingKey::from_sec1_bytes(point).unwrap();
        let s = p256::ecdsa::Signature::from_slice(sig).unwrap();
        assert!(k.verify(SELF_TEST_MESSAGE, &s).is_ok());
        assert!(k.verify(b"another message", &s).is_err());
        let (point, sig) = self_test_vector(Curve::P384);
        let k = p384::ecdsa::VerifyingKey::from_sec1_bytes(point).unwrap();
        let s = p384::ecdsa::Signature::from_slice(sig).unwrap();
        assert!(k.verify(SELF_TEST_MESSAGE, &s).is_ok());
        assert!(k.verify(b"another message", &s).is_err());
    }

    #[test]
    fn ecdsa_der_matches_the_curve_crates_for_many_signatures() {
        // Deterministic (RFC 6979) signatures of 1500 messages (P-384: 300):
        // about half
        // have a top bit set in r or s (a 0x00 pad), ~1 in 128 a leading
        // zero byte (a shorter integer).
        use p256::ecdsa::signature::Signer;
        let sk256 = p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).unwrap();
        let sk384 = p384::ecdsa::SigningKey::from_slice(&[9u8; 48]).unwrap();
        let (mut short, mut padded) = (0, 0);
        for i in 0..1500u32 {
            let msg = i.to_be_bytes();
            let s: p256::ecdsa::Signature = sk256.sign(&msg);
            let der = ecdsa_der(Curve::P256, &s.to_bytes()).unwrap();
            assert_eq!(der, s.to_der().as_bytes(), "P-256 message {i}");
            short += usize::from(s.to_bytes()[0] == 0 || s.to_bytes()[32] == 0);
            padded += usize::from(der.len() > 70 - 2);
            if i % 5 != 0 {
                continue; // P-384 signing is slow in debug builds
            }
            let s: p384::ecdsa::Signature = sk384.sign(&msg);
            let der = ecdsa_der(Curve::P384, &s.to_bytes()).unwrap();
            assert_eq!(der, s.to_der().as_bytes(), "P-384 message {i}");
        }
        assert!(
            short > 3 && padded > 300,
            "cases covered: {short} short, {padded} padded"
        );
    }

    #[test]
    fn ecdsa_der_edge_cases() {
        // Wrong lengths are refused (the caller answers "invalid").
        for len in [0, 1, 63, 65, 96] {
            assert_eq!(ecdsa_der(Curve::P256, &vec![1u8; len]), None, "{len}");
        }
        assert_eq!(ecdsa_der(Curve::P384, &[1u8; 64]), None);
        // Zeros stay one zero byte (the verifier refuses r = 0 or s = 0).
        let zero = ecdsa_der(Curve::P256, &[0u8; 64]).unwrap();
        assert_eq!(zero, vec![0x30, 6, 2, 1, 0, 2, 1, 0]);
        // Leading zero bytes are dropped; a top bit set gets a 0x00 pad.
        let mut sig = [0u8; 64];
        sig[31] = 0x80;
        sig[32] = 0xff;
        let der = ecdsa_der(Curve::P256, &sig).unwrap();
        assert_eq!(&der[..7], &[0x30, 0x27, 2, 2, 0, 0x80, 2]);
        assert_eq!(der[7], 33);
        assert_eq!(der.len(), 2 + 0x27);
        // Points: uncompressed only, of the curve's size.
        let (p256_point, _) = self_test_vector(Curve::P256);
        assert_eq!(ec_spki_der(Curve::P384, p256_point), None);
        let mut compressed = p256_point.to_vec();
        compressed[0] = 0x02;
        assert_eq!(ec_spki_der(Curve::P256, &compressed), None);
    }
}
