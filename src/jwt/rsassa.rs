//! RSA signature verification: RS256/384/512 (RSASSA-PKCS1-v1_5) when the
//! host has no native `verify_signature`, and PS256/384/512 (RSASSA-PSS)
//! always, from the key's bytes (`jwk.rs`).
//!
//! Written here, not taken from the `rsa` crate, for speed and size: the crate
//! raises to the power with `num-bigint-dig`'s generic windowed
//! exponentiation (about 39 Montgomery products for the usual exponent
//! 65537, each allocating), which costs 664 us per 2048-bit operation under
//! V8 (Node, measured) where square-and-multiply in place (16 squarings and
//! one product for 65537) costs 146 us. Verification uses no secret, so
//! nothing here needs to run in constant time. Without the crate the module
//! also sheds `num-bigint-dig` and the DER encoders (the key's
//! SubjectPublicKeyInfo is built in `native.rs`). The arithmetic is
//! `montgomery`'s, shared with ECDSA (`ecdsa`). The unit tests check the
//! arithmetic against `num-bigint-dig` and the verdicts against the `rsa`
//! crate (RFC 8017: RSAVP1 5.2.2, EMSA-PSS-VERIFY 9.1.2 with the salt as
//! long as the hash (RFC 7518 3.5), EMSA-PKCS1-v1_5 9.2).

use super::jose::{digest, Hash};
use super::montgomery::{bit_len, strip_zeros, to_bytes, to_limbs, Limb, Modulus, MAX_BITS};
use sha2::{Digest, Sha256, Sha384, Sha512};

/// An RSA public key prepared for Montgomery arithmetic (`montgomery`).
#[derive(Clone)]
pub struct RsaKey {
    /// n.
    n: Modulus,
    /// The public exponent (odd, >= 3).
    e: u64,
    /// Size of n in bytes (k).
    bytes: usize,
}

impl RsaKey {
    /// From the big-endian bytes of the modulus and the exponent (leading
    /// zeros allowed), for an odd modulus of 512..=8192 bits and an odd
    /// exponent from 3 to 2^64 - 1; `None` otherwise (not a usable RSA key).
    pub fn new(n: &[u8], e: &[u8]) -> Option<RsaKey> {
        let e = strip_zeros(e);
        if e.len() > 8 {
            return None;
        }
        let e = e.iter().fold(0u64, |acc, b| acc << 8 | u64::from(*b));
        if e < 3 || e % 2 == 0 {
            return None;
        }
        let n = strip_zeros(n);
        let bits = bit_len(n);
        if !(512..=MAX_BITS).contains(&bits) {
            return None;
        }
        Some(RsaKey {
            n: Modulus::new(n)?,
            e,
            bytes: bits.div_ceil(8),
        })
    }

    /// Size of the modulus in bits.
    pub fn bits(&self) -> usize {
        self.n.bits()
    }

    /// The public exponent.
    pub fn exponent(&self) -> u64 {
        self.e
    }

    /// RSAVP1: `sig^e mod n` as k big-endian bytes, by square-and-multiply
    /// from the exponent's top bit. `None` when `sig` is not exactly k bytes
    /// or not below n.
    pub fn public_op(&self, sig: &[u8]) -> Option<Vec<u8>> {
        if sig.len() != self.bytes {
            return None;
        }
        let n = &self.n;
        let mut s = vec![0 as Limb; n.limbs()];
        if !to_limbs(sig, &mut s) || !n.below(&s) {
            return None;
        }
        let mut xm = vec![0 as Limb; s.len()];
        n.to_mont(&s, &mut xm);
        let mut acc = xm.clone();
        let mut tmp = s;
        let top = 63 - self.e.leading_zeros();
        for bit in (0..top).rev() {
            n.mul(&acc, &acc, &mut tmp);
            std::mem::swap(&mut acc, &mut tmp);
            if self.e >> bit & 1 == 1 {
                n.mul(&acc, &xm, &mut tmp);
                std::mem::swap(&mut acc, &mut tmp);
            }
        }
        n.out_of_mont(&acc, &mut tmp);
        let mut out = vec![0u8; self.bytes];
        to_bytes(&tmp, &mut out);
        Some(out)
    }

    /// RSASSA-PKCS1-v1_5 verification of `sig` over `msg`.
    pub fn verify_pkcs1(&self, hash: Hash, msg: &[u8], sig: &[u8]) -> bool {
        match self.public_op(sig) {
            Some(em) => pkcs1_em_ok(&em, hash, msg),
            None => false,
        }
    }

    /// RSASSA-PSS verification of `sig` over `msg` (MGF1 with the same
    /// hash, salt as long as the hash).
    pub fn verify_pss(&self, hash: Hash, msg: &[u8], sig: &[u8]) -> bool {
        match self.public_op(sig) {
            Some(em) => match hash {
                Hash::Sha256 => pss_em_ok::<Sha256>(&em, self.bits(), msg),
                Hash::Sha384 => pss_em_ok::<Sha384>(&em, self.bits(), msg),
                Hash::Sha512 => pss_em_ok::<Sha512>(&em, self.bits(), msg),
            },
            None => false,
        }
    }
}

/// DER `DigestInfo` prefixes (RFC 8017 9.2, note 1).
fn digest_info_prefix(hash: Hash) -> &'static [u8] {
    match hash {
        Hash::Sha256 => &[
            0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
            0x01, 0x05, 0x00, 0x04, 0x20,
        ],
        Hash::Sha384 => &[
            0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
            0x02, 0x05, 0x00, 0x04, 0x30,
        ],
        Hash::Sha512 => &[
            0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
            0x03, 0x05, 0x00, 0x04, 0x40,
        ],
    }
}

/// EMSA-PKCS1-v1_5: `em` (k bytes) must be exactly
/// `00 01 FF..FF 00 || DigestInfo(H(msg))` with at least 8 `FF`.
pub fn pkcs1_em_ok(em: &[u8], hash: Hash, msg: &[u8]) -> bool {
    let prefix = digest_info_prefix(hash);
    let h = digest(hash, msg);
    let t_len = prefix.len() + h.len();
    if em.len() < t_len + 11 {
        return false;
    }
    // `00 01 PS 00` (at least 11 bytes, checked above), then T.
    let Some((head, t)) = em.split_at_checked(em.len() - t_len) else {
        return false;
    };
    let [0x00, 0x01, ps @ .., 0x00] = head else {
        return false;
    };
    let Some((t_prefix, t_hash)) = t.split_at_checked(prefix.len()) else {
        return false;
    };
    ps.iter().all(|&b| b == 0xff) && t_prefix == prefix && t_hash == h.as_slice()
}

/// EMSA-PSS-VERIFY (RFC 8017 9.1.2): `em_k` is the k-byte RSAVP1 output,
/// `mod_bits` the modulus size; salt length = hash length.
pub fn pss_em_ok<D: Digest>(em_k: &[u8], mod_bits: usize, msg: &[u8]) -> bool {
    let h_len = <D as Digest>::output_size();
    let s_len = h_len;
    let Some(em_bits) = mod_bits.checked_sub(1) else {
        return false;
    };
    let em_len = em_bits.div_ceil(8);
    // I2OSP(m, emLen): the bytes above emLen must be zero.
    let Some(skip) = em_k.len().checked_sub(em_len) else {
        return false;
    };
    let Some((zeros, em)) = em_k.split_at_checked(skip) else {
        return false;
    };
    if zeros.iter().any(|&b| b != 0) {
        return false;
    }
    if em_len < h_len + s_len + 2 || em.last() != Some(&0xbc) {
        return false;
    }
    let Some((masked_db, rest)) = em.split_at_checked(em_len - h_len - 1) else {
        return false;
    };
    let Some(h) = rest.get(..h_len) else {
        return false;
    };
    let top_bits = 8 * em_len - em_bits;
    let top_mask = 0xffu8 >> top_bits;
    if masked_db.first().is_none_or(|&b| b & !top_mask != 0) {
        return false;
    }
    // DB = maskedDB xor MGF1(H, emLen - hLen - 1), one hash per h_len bytes
    // (h_len > 0: SHA-256/384/512).
    let mut db = masked_db.to_vec();
    for (chunk, counter) in db.chunks_mut(h_len.max(1)).zip(0u32..) {
        let block = D::new()
            .chain_update(h)
            .chain_update(counter.to_be_bytes())
            .finalize();
        for (d, m) in chunk.iter_mut().zip(block.iter()) {
            *d ^= m;
        }
    }
    if let Some(first) = db.first_mut() {
        *first &= top_mask;
    }
    // DB = PS (zeros) || 01 || salt (s_len bytes).
    let ps_len = em_len - h_len - s_len - 2;
    let Some((ps, rest)) = db.split_at_checked(ps_len) else {
        return false;
    };
    let [0x01, salt @ ..] = rest else {
        return false;
    };
    if ps.iter().any(|&b| b != 0) || salt.len() != s_len {
        return false;
    }
    let m_hash = D::digest(msg);
    let h2 = D::new()
        .chain_update([0u8; 8])
        .chain_update(m_hash)
        .chain_update(salt)
        .finalize();
    *h2 == *h
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::jwt::montgomery::test_bytes as bytes;
    use rsa::BigUint;

    fn key(n: &BigUint, e: &BigUint) -> Option<RsaKey> {
        RsaKey::new(&n.to_bytes_be(), &e.to_bytes_be())
    }

    #[test]
    fn the_public_operation_equals_num_bigint_modpow() {
        let mut seed = 0x9e37_79b9_7f4a_7c15;
        let e = BigUint::from(65537u32);
        for bits in [512usize, 1024, 2048, 2049, 2056, 3072, 4096] {
            let mut nb = bytes(&mut seed, bits.div_ceil(8));
            let top = bits - 8 * (nb.len() - 1);
            nb[0] = (nb[0] | 0x80) >> (8 - top);
            *nb.last_mut().unwrap() |= 1;
            let n = BigUint::from_bytes_be(&nb);
            assert_eq!(n.bits(), bits);
            let m = key(&n, &e).unwrap();
            for _ in 0..40 {
                let s = BigUint::from_bytes_be(&bytes(&mut seed, nb.len())) % &n;
                let mut sb = s.to_bytes_be();
                while sb.len() < nb.len() {
                    sb.insert(0, 0);
                }
                let want = s.modpow(&e, &n);
                let got = BigUint::from_bytes_be(&m.public_op(&sb).unwrap());
                assert_eq!(got, want, "{bits} bits");
            }
            // Other exponents: the smallest, a small one with several bits
            // set, and the largest.
            for other in [3u64, 0x1_0003, u64::MAX] {
                let e = BigUint::from(other);
                let k = key(&n, &e).unwrap();
                for _ in 0..3 {
                    let s = BigUint::from_bytes_be(&bytes(&mut seed, nb.len())) % &n;
                    let mut sb = s.to_bytes_be();
                    while sb.len() < nb.len() {
                        sb.insert(0, 0);
                    }
                    let got = BigUint::from_bytes_be(&k.public_op(&sb).unwrap());
                    assert_eq!(got, s.modpow(&e, &n), "{bits} bits, e = {other}");
                }
            }
            // Out of range or of the wrong size: no result.
            assert!(m.public_op(&nb).is_none(), "s = n");
            assert!(m.public_op(&vec![0xff; nb.len()]).is_none(), "s > n");
            assert!(m.public_op(&nb[1..]).is_none(), "short");
            let mut long = nb.clone();
            long.insert(0, 0);
            assert!(m.public_op(&long).is_none(), "long");
        }
    }

    #[test]
    fn leading_zero_bytes_do_not_change_the_key() {
        let n = (BigUint::from(1u32) << 2047) + BigUint::from(12345u32);
        let plain = RsaKey::new(&n.to_bytes_be(), &[1, 0, 1]).unwrap();
        let mut padded_n = vec![0, 0];
        padded_n.extend(n.to_bytes_be());
        let padded = RsaKey::new(&padded_n, &[0, 0, 0, 1, 0, 1]).unwrap();
        assert_eq!(padded.bits(), 2048);
        assert_eq!((plain.n, plain.e), (padded.n, padded.e));
        assert!(RsaKey::new(&[], &[1, 0, 1]).is_none(), "no modulus");
        assert!(RsaKey::new(&[0; 300], &[1, 0, 1]).is_none(), "zero modulus");
        assert!(RsaKey::new(&padded_n, &[]).is_none(), "no exponent");
    }

    #[test]
    fn unusable_keys_are_refused() {
        let e = BigUint::from(65537u32);
        assert!(key(&BigUint::from(65537u32), &e).is_none());
        let even = BigUint::from(1u32) << 2047;
        assert!(key(&even, &e).is_none());
        let huge = (BigUint::from(1u32) << 8200) + BigUint::from(1u32);
        assert!(key(&huge, &e).is_none());
        let n = (BigUint::from(1u32) << 2047) + BigUint::from(1u32);
        assert!(key(&n, &e).is_some());
        for bad_e in [
            BigUint::from(1u32),
            BigUint::from(65536u32),
            BigUint::from(1u32) << 64,
        ] {
            assert!(key(&n, &bad_e).is_none(), "e = {bad_e}");
        }
    }

    /// EMSA-PSS-ENCODE (RFC 8017 9.1.1), for the tests only.
    fn pss_encode<D: Digest>(msg: &[u8], salt: &[u8], mod_bits: usize, k: usize) -> Vec<u8> {
        let h_len = <D as Digest>::output_size();
        let em_bits = mod_bits - 1;
        let em_len = em_bits.div_ceil(8);
        let m_hash = D::digest(msg);
        let h = D::new()
            .chain_update([0u8; 8])
            .chain_update(&m_hash)
            .chain_update(salt)
            .finalize();
        let mut db = vec![0u8; em_len - h_len - 1];
        let ps = db.len() - salt.len() - 1;
        db[ps] = 1;
        db[ps + 1..].copy_from_slice(salt);
        let mut mask = Vec::new();
        let mut c: u32 = 0;
        while mask.len() < db.len() {
            mask.extend_from_slice(
                &D::new()
                    .chain_update(&h)
                    .chain_update(c.to_be_bytes())
                    .finalize(),
            );
            c += 1;
        }
        for (d, m) in db.iter_mut().zip(mask) {
            *d ^= m;
        }
        db[0] &= 0xff >> (8 * em_len - em_bits);
        let mut em = vec![0u8; k - em_len];
        em.extend_from_slice(&db);
        em.extend_from_slice(&h);
        em.push(0xbc);
        em
    }

    #[test]
    fn pss_decoding_accepts_its_encoding_and_refuses_every_changed_byte() {
        let mut seed = 7;
        for (mod_bits, k) in [(2048, 256), (2049, 257), (2055, 257), (3072, 384)] {
            let salt = bytes(&mut seed, 32);
            let em = pss_encode::<Sha256>(b"hello", &salt, mod_bits, k);
            assert!(pss_em_ok::<Sha256>(&em, mod_bits, b"hello"), "{mod_bits}");
            assert!(!pss_em_ok::<Sha256>(&em, mod_bits, b"hellO"));
            // A salt of another length is refused (RFC 7518: hash length).
            let short = pss_encode::<Sha256>(b"hello", &salt[..20], mod_bits, k);
            assert!(!pss_em_ok::<Sha256>(&short, mod_bits, b"hello"));
            for i in 0..em.len() {
                for bit in [0x01u8, 0x80] {
                    let mut bad = em.clone();
                    bad[i] ^= bit;
                    // The bits above emBits are not part of the encoding
                    // only when they are masked off; any other change fails.
                    assert!(
                        !pss_em_ok::<Sha256>(&bad, mod_bits, b"hello"),
                        "{mod_bits} byte {i} bit {bit:#x}"
                    );
                }
            }
        }
        let em = pss_encode::<Sha512>(b"m", &bytes(&mut seed, 64), 2048, 256);
        assert!(pss_em_ok::<Sha512>(&em, 2048, b"m"));
        assert!(!pss_em_ok::<Sha384>(&em, 2048, b"m"));
    }

    #[test]
    fn pkcs1_decoding_is_exact() {
        let h = Sha256::digest(b"msg");
        let mut em = vec![0x00, 0x01];
        em.extend(std::iter::repeat_n(0xff, 256 - 3 - 19 - 32));
        em.push(0);
        em.extend_from_slice(digest_info_prefix(Hash::Sha256));
        em.extend_from_slice(&h);
        assert_eq!(em.len(), 256);
        assert!(pkcs1_em_ok(&em, Hash::Sha256, b"msg"));
        assert!(!pkcs1_em_ok(&em, Hash::Sha256, b"msG"));
        assert!(!pkcs1_em_ok(&em, Hash::Sha384, b"msg"));
        for i in 0..em.len() {
            let mut bad = em.clone();
            bad[i] ^= 0x10;
            assert!(!pkcs1_em_ok(&bad, Hash::Sha256, b"msg"), "byte {i}");
        }
        assert!(!pkcs1_em_ok(&em[..40], Hash::Sha256, b"msg"));
    }

    /// The `rsa` crate's RSASSA-PKCS1-v1_5: the reference.
    fn verify_rsa_pkcs1(key: &rsa::RsaPublicKey, hash: Hash, msg: &[u8], sig: &[u8]) -> bool {
        let scheme = match hash {
            Hash::Sha256 => rsa::Pkcs1v15Sign::new::<Sha256>(),
            Hash::Sha384 => rsa::Pkcs1v15Sign::new::<Sha384>(),
            Hash::Sha512 => rsa::Pkcs1v15Sign::new::<Sha512>(),
        };
        key.verify(scheme, &digest(hash, msg), sig).is_ok()
    }

    /// The `rsa` crate's RSASSA-PSS (salt = hash length): the reference.
    fn verify_rsa_pss(key: &rsa::RsaPublicKey, hash: Hash, msg: &[u8], sig: &[u8]) -> bool {
        let scheme = match hash {
            Hash::Sha256 => rsa::Pss::new::<Sha256>(),
            Hash::Sha384 => rsa::Pss::new::<Sha384>(),
            Hash::Sha512 => rsa::Pss::new::<Sha512>(),
        };
        key.verify(scheme, &digest(hash, msg), sig).is_ok()
    }

    /// The fixture tokens (signed by Python `cryptography`) through both
    /// implementations: the same verdict for the real signature and for
    /// every altered one, altered message, or other hash.
    #[test]
    fn verdicts_equal_the_rsa_crate_on_real_tokens() {
        use crate::jwt::jose::b64url_decode;
        let jwks: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/fixtures/jwt/jwks.json")).unwrap();
        let tokens: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/fixtures/jwt/tokens.json")).unwrap();
        let mut checked = 0;
        for (name, hash, pss) in [
            ("valid_RS256", Hash::Sha256, false),
            ("valid_RS384", Hash::Sha384, false),
            ("valid_RS512", Hash::Sha512, false),
            ("valid_PS256", Hash::Sha256, true),
            ("valid_PS384", Hash::Sha384, true),
            ("valid_PS512", Hash::Sha512, true),
        ] {
            let t = tokens[name].as_str().unwrap();
            let header: serde_json::Value = serde_json::from_slice(
                &b64url_decode(t.split('.').next().unwrap().as_bytes()).unwrap(),
            )
            .unwrap();
            let key = jwks["keys"]
                .as_array()
                .unwrap()
                .iter()
                .find(|k| k["kid"] == header["kid"])
                .unwrap();
            let int = |f: &str| {
                BigUint::from_bytes_be(&b64url_decode(key[f].as_str().unwrap().as_bytes()).unwrap())
            };
            let public = rsa::RsaPublicKey::new(int("n"), int("e")).unwrap();
            let m = RsaKey::new(&int("n").to_bytes_be(), &int("e").to_bytes_be()).unwrap();
            let dot = t.rfind('.').unwrap();
            let (msg, sig) = (
                &t.as_bytes()[..dot],
                b64url_decode(&t.as_bytes()[dot + 1..]).unwrap(),
            );
            let both = |h: Hash, msg: &[u8], sig: &[u8]| {
                if pss {
                    (
                        m.verify_pss(h, msg, sig),
                        verify_rsa_pss(&public, h, msg, sig),
                    )
                } else {
                    (
                        m.verify_pkcs1(h, msg, sig),
                        verify_rsa_pkcs1(&public, h, msg, sig),
                    )
                }
            };
            assert_eq!(both(hash, msg, &sig), (true, true), "{name}");
            let other = if hash == Hash::Sha256 {
                Hash::Sha512
            } else {
                Hash::Sha256
            };
            assert_eq!(both(other, msg, &sig), (false, false), "{name} other hash");
            let mut bad_msg = msg.to_vec();
            bad_msg[10] ^= 1;
            assert_eq!(both(hash, &bad_msg, &sig), (false, false), "{name} message");
            for i in (0..sig.len()).step_by(7) {
                let mut bad = sig.clone();
                bad[i] ^= 1 << (i % 8);
                let (fast, crate_) = both(hash, msg, &bad);
                assert_eq!(fast, crate_, "{name} byte {i}");
                assert!(!fast, "{name} byte {i}");
                checked += 1;
            }
            assert_eq!(both(hash, msg, &sig[1..]), (false, false), "{name} short");
        }
        assert!(checked > 200);
    }
}
