//! Envoy's `verify_signature` foreign function (PLATFORM.md): native
//! BoringSSL RSA PKCS#1 v1.5 verification, about 12x cheaper than pure-Rust
//! RSA inside wasm.
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

fn get_varint(b: &[u8], i: &mut usize) -> Option<u64> {
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
}
