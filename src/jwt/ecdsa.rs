//! ECDSA verification for ES256 (P-256 with SHA-256) and ES384 (P-384 with
//! SHA-384) when the host has no native `verify_signature` (FIPS 186-5
//! 6.4.2, SEC 1 4.1.4), from the JWK's affine coordinates (`jwk.rs`).
//!
//! Written here, not taken from the `p256` / `p384` crates, for size: their
//! arithmetic is fiat-crypto's, unrolled per curve and per operation, about
//! 170 KB of the wasm module with `ecdsa`, `elliptic-curve` and
//! `primeorder` (p384 alone 108 KB). Envoy's V8 compiles every function of
//! the module with TurboFan before the proxy is ready, in every proxy: code
//! never run costs start-up time and about 29 MiB of RSS per MB
//! (docs/performance.md, "Footprint"). Here both curves share one loop of
//! Montgomery products (`montgomery`, RSA's too), a few KB of code. On
//! Envoy these are fallbacks (ES256/384 go to the host's BoringSSL once its
//! self-test passed, `verify.rs`), and a verified token is cached, so this
//! code runs once per distinct token on other hosts only. Its speed in V8
//! (Node 20, the unit-test module, one verification, three runs, 12-07):
//! P-256 1.5-1.8 ms (the `p256` crate 1.5-2.0 ms), P-384 3.3-4.4 ms (the
//! `p384` crate 8.4-11.6 ms: 64-bit limbs, whose 128-bit products wasm
//! emulates).
//!
//! Verification uses no secret: nothing here needs to run in constant time.
//! Points are in Jacobian coordinates (X, Y, Z) = (X/Z^2, Y/Z^3), the point
//! at infinity Z = 0; u1*G + u2*Q is one pass of doublings over both
//! scalars' bits (Shamir's trick). Both curves have a = -3. The unit tests
//! check the verdicts against the `p256` / `p384` crates (dev-dependencies).

use super::montgomery::{to_limbs, Limb, Modulus, LIMB_BITS};
use super::native::Curve;
use sha2::{Digest, Sha256, Sha384};
use std::sync::OnceLock;

/// Limbs of the largest number handled (P-384: 12 x 32 or 6 x 64 bits).
const LIMBS: usize = 384 / LIMB_BITS;
/// A number modulo p or n: little-endian limbs, those above the modulus 0.
type Num = [Limb; LIMBS];

/// A curve's constants (SEC 2 2.4.2 and 2.5.1, FIPS 186-5 / SP 800-186),
/// big-endian hex: field prime p, group order n, b, generator G.
struct Constants {
    p: &'static str,
    n: &'static str,
    b: &'static str,
    gx: &'static str,
    gy: &'static str,
}

const P256: Constants = Constants {
    p: "ffffffff00000001000000000000000000000000ffffffffffffffffffffffff",
    n: "ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551",
    b: "5ac635d8aa3a93e7b3ebbd55769886bc651d06b0cc53b0f63bce3c3e27d2604b",
    gx: "6b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296",
    gy: "4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5",
};

const P384: Constants = Constants {
    p: "fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffeffffffff0000000000000000ffffffff",
    n: "ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf581a0db248b0a77aecec196accc52973",
    b: "b3312fa7e23ee7e4988e056be3f82d19181d9c6efe8141120314088f5013875ac656398d8a2ed19d2a85c8edd3ec2aef",
    gx: "aa87ca22be8b05378eb1c71ef320ad746e1d3b628ba79b9859f741e082542a385502f25dbf55296c3a545e3872760ab7",
    gy: "3617de4a96262c6f5d9e98bf9292dc29f8f41dbd289a147ce9da3113b5f0b8c00a60b1ce1d7e819d7a431d7c90ea0e5f",
};

/// A curve ready for arithmetic: p and n prepared, b and G in Montgomery
/// form modulo p.
struct Params {
    p: Modulus,
    n: Modulus,
    b: Num,
    g: Affine,
}

/// A point (x, y), coordinates in Montgomery form modulo p.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Affine {
    x: Num,
    y: Num,
}

/// A point in Jacobian coordinates, Montgomery form; Z = 0 is infinity.
#[derive(Clone, Copy)]
struct Jacobian {
    x: Num,
    y: Num,
    z: Num,
}

fn hex_bytes(hex: &str) -> Vec<u8> {
    hex.as_bytes()
        .chunks(2)
        .map(|pair| {
            pair.iter().fold(0u8, |acc, c| {
                acc << 4 | (*c as char).to_digit(16).unwrap_or(0) as u8
            })
        })
        .collect()
}

fn num(be: &[u8]) -> Num {
    let mut out = [0 as Limb; LIMBS];
    to_limbs(be, &mut out);
    out
}

impl Params {
    fn build(c: &Constants) -> Option<Params> {
        let p = Modulus::new(&hex_bytes(c.p))?;
        let n = Modulus::new(&hex_bytes(c.n))?;
        let mont = |hex: &str| {
            let mut out = [0 as Limb; LIMBS];
            p.to_mont(&num(&hex_bytes(hex)), &mut out);
            out
        };
        let (b, x, y) = (mont(c.b), mont(c.gx), mont(c.gy));
        Some(Params {
            b,
            g: Affine { x, y },
            p,
            n,
        })
    }

    /// The constants of `curve`, prepared once per process.
    fn of(curve: Curve) -> Option<&'static Params> {
        static CURVES: [OnceLock<Option<Params>>; 2] = [OnceLock::new(), OnceLock::new()];
        let (slot, constants) = match curve {
            Curve::P256 => (&CURVES[0], &P256),
            Curve::P384 => (&CURVES[1], &P384),
        };
        slot.get_or_init(|| Params::build(constants)).as_ref()
    }

    fn mul(&self, a: &Num, b: &Num) -> Num {
        let mut out = [0 as Limb; LIMBS];
        self.p.mul(a, b, &mut out);
        out
    }

    fn add(&self, a: &Num, b: &Num) -> Num {
        let mut out = [0 as Limb; LIMBS];
        self.p.add(a, b, &mut out);
        out
    }

    fn sub(&self, a: &Num, b: &Num) -> Num {
        let mut out = [0 as Limb; LIMBS];
        self.p.sub(a, b, &mut out);
        out
    }

    /// Is (x, y) on the curve: y^2 = x^3 - 3x + b?
    fn on_curve(&self, pt: &Affine) -> bool {
        let x2 = self.mul(&pt.x, &pt.x);
        let x3 = self.mul(&x2, &pt.x);
        let three_x = self.add(&self.add(&pt.x, &pt.x), &pt.x);
        let rhs = self.add(&self.sub(&x3, &three_x), &self.b);
        self.mul(&pt.y, &pt.y) == rhs
    }

    /// 1 in Montgomery form modulo p.
    fn one(&self) -> Num {
        let mut one = [0 as Limb; LIMBS];
        one[0] = 1;
        let mut out = [0 as Limb; LIMBS];
        self.p.to_mont(&one, &mut out);
        out
    }

    fn jacobian(&self, pt: &Affine) -> Jacobian {
        Jacobian {
            x: pt.x,
            y: pt.y,
            z: self.one(),
        }
    }

    /// 2P (dbl-2001-b, a = -3).
    fn double(&self, pt: &Jacobian) -> Jacobian {
        if is_zero(&pt.z) || is_zero(&pt.y) {
            return INFINITY;
        }
        let delta = self.mul(&pt.z, &pt.z);
        let gamma = self.mul(&pt.y, &pt.y);
        let beta = self.mul(&pt.x, &gamma);
        let t = self.mul(&self.sub(&pt.x, &delta), &self.add(&pt.x, &delta));
        let alpha = self.add(&self.add(&t, &t), &t);
        let beta4 = self.add(&beta, &beta);
        let beta4 = self.add(&beta4, &beta4);
        let beta8 = self.add(&beta4, &beta4);
        let x = self.sub(&self.mul(&alpha, &alpha), &beta8);
        let yz = self.add(&pt.y, &pt.z);
        let z = self.sub(&self.sub(&self.mul(&yz, &yz), &gamma), &delta);
        let gamma2 = self.mul(&gamma, &gamma);
        let g2 = self.add(&gamma2, &gamma2);
        let g4 = self.add(&g2, &g2);
        let g8 = self.add(&g4, &g4);
        let y = self.sub(&self.mul(&alpha, &self.sub(&beta4, &x)), &g8);
        Jacobian { x, y, z }
    }

    /// P + Q (add-2007-bl), doubling when P = Q.
    fn add_points(&self, a: &Jacobian, b: &Jacobian) -> Jacobian {
        if is_zero(&a.z) {
            return *b;
        }
        if is_zero(&b.z) {
            return *a;
        }
        let z1z1 = self.mul(&a.z, &a.z);
        let z2z2 = self.mul(&b.z, &b.z);
        let u1 = self.mul(&a.x, &z2z2);
        let u2 = self.mul(&b.x, &z1z1);
        let s1 = self.mul(&self.mul(&a.y, &b.z), &z2z2);
        let s2 = self.mul(&self.mul(&b.y, &a.z), &z1z1);
        if u1 == u2 {
            return if s1 == s2 { self.double(a) } else { INFINITY };
        }
        let h = self.sub(&u2, &u1);
        let h2 = self.add(&h, &h);
        let i = self.mul(&h2, &h2);
        let j = self.mul(&h, &i);
        let r = self.sub(&s2, &s1);
        let r = self.add(&r, &r);
        let v = self.mul(&u1, &i);
        let x = self.sub(&self.sub(&self.mul(&r, &r), &j), &self.add(&v, &v));
        let s1j = self.mul(&s1, &j);
        let y = self.sub(&self.mul(&r, &self.sub(&v, &x)), &self.add(&s1j, &s1j));
        let zz = self.add(&a.z, &b.z);
        let z = self.mul(&self.sub(&self.sub(&self.mul(&zz, &zz), &z1z1), &z2z2), &h);
        Jacobian { x, y, z }
    }

    /// u1 * G + u2 * Q (plain integers below n).
    fn shamir(&self, u1: &Num, q: &Affine, u2: &Num) -> Jacobian {
        let g = self.jacobian(&self.g);
        let q = self.jacobian(q);
        let both = self.add_points(&g, &q);
        let mut acc = INFINITY;
        for bit in (0..self.n.bits()).rev() {
            acc = self.double(&acc);
            let pick = (bit_of(u1, bit), bit_of(u2, bit));
            let add = match pick {
                (true, true) => &both,
                (true, false) => &g,
                (false, true) => &q,
                (false, false) => continue,
            };
            acc = self.add_points(&acc, add);
        }
        acc
    }
}

const INFINITY: Jacobian = Jacobian {
    x: [0; LIMBS],
    y: [0; LIMBS],
    z: [0; LIMBS],
};

fn is_zero(a: &Num) -> bool {
    a.iter().all(|l| *l == 0)
}

fn bit_of(a: &Num, bit: usize) -> bool {
    a.get(bit / LIMB_BITS)
        .is_some_and(|l| l >> (bit % LIMB_BITS) & 1 == 1)
}

/// An ECDSA public key: a point of the curve other than infinity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EcKey {
    curve: Curve,
    q: Affine,
}

impl EcKey {
    /// From the big-endian affine coordinates (each exactly the curve's
    /// size, below p); `None` unless (x, y) is on the curve.
    pub fn new(curve: Curve, x: &[u8], y: &[u8]) -> Option<EcKey> {
        let c = Params::of(curve)?;
        let size = curve.scalar_len();
        if x.len() != size || y.len() != size {
            return None;
        }
        let (x, y) = (num(x), num(y));
        if !c.p.below(&x) || !c.p.below(&y) {
            return None;
        }
        let mut q = Affine {
            x: [0; LIMBS],
            y: [0; LIMBS],
        };
        c.p.to_mont(&x, &mut q.x);
        c.p.to_mont(&y, &mut q.y);
        // Infinity has no affine coordinates, and every point of these
        // curves other than it has order n: on the curve is enough.
        c.on_curve(&q).then_some(EcKey { curve, q })
    }

    pub fn curve(&self) -> Curve {
        self.curve
    }

    /// Is `sig` (r || s, each the curve's size, big-endian) a signature of
    /// `msg` by this key? The message is hashed with the curve's JWS hash.
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        let Some(c) = Params::of(self.curve) else {
            return false;
        };
        let size = self.curve.scalar_len();
        if sig.len() != 2 * size {
            return false;
        }
        let (r, s) = sig.split_at(size);
        let (r, s) = (num(r), num(s));
        // 1 <= r, s < n.
        if is_zero(&r) || is_zero(&s) || !c.n.below(&r) || !c.n.below(&s) {
            return false;
        }
        // e: the hash, as long as n here (SHA-256 for P-256, SHA-384 for
        // P-384), below 2^bits(n) < 2n: one subtraction reduces it.
        let digest = match self.curve {
            Curve::P256 => Sha256::digest(msg).to_vec(),
            Curve::P384 => Sha384::digest(msg).to_vec(),
        };
        let mut e = [0 as Limb; LIMBS];
        c.n.reduce_once(&num(&digest), &mut e);
        // w = s^-1 mod n; u1 = e * w, u2 = r * w (mod n, plain form).
        let n = &c.n;
        let (mut sm, mut w, mut tmp) = ([0 as Limb; LIMBS], [0 as Limb; LIMBS], [0 as Limb; LIMBS]);
        n.to_mont(&s, &mut sm);
        n.invert_prime(&sm, &mut w);
        // (x * R) * (w * R) / R = x * w * R: out of Montgomery form after.
        let (mut u1, mut u2) = ([0 as Limb; LIMBS], [0 as Limb; LIMBS]);
        n.to_mont(&e, &mut tmp);
        n.mul(&tmp, &w, &mut sm);
        n.out_of_mont(&sm, &mut u1);
        n.to_mont(&r, &mut tmp);
        n.mul(&tmp, &w, &mut sm);
        n.out_of_mont(&sm, &mut u2);
        let pt = c.shamir(&u1, &self.q, &u2);
        if is_zero(&pt.z) {
            return false;
        }
        // x = X / Z^2, out of Montgomery form, then mod n (x < p < 2n).
        let mut zinv = [0 as Limb; LIMBS];
        c.p.invert_prime(&pt.z, &mut zinv);
        let x = c.mul(&pt.x, &c.mul(&zinv, &zinv));
        let (mut plain, mut xn) = ([0 as Limb; LIMBS], [0 as Limb; LIMBS]);
        c.p.out_of_mont(&x, &mut plain);
        c.n.reduce_once(&plain, &mut xn);
        xn == r
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::jwt::montgomery::test_bytes as bytes;
    use p256::ecdsa::signature::Signer;

    fn p256_key(sk: &p256::ecdsa::SigningKey) -> EcKey {
        let pt = sk.verifying_key().to_encoded_point(false);
        EcKey::new(Curve::P256, pt.x().unwrap(), pt.y().unwrap()).unwrap()
    }

    fn p384_key(sk: &p384::ecdsa::SigningKey) -> EcKey {
        let pt = sk.verifying_key().to_encoded_point(false);
        EcKey::new(Curve::P384, pt.x().unwrap(), pt.y().unwrap()).unwrap()
    }

    #[test]
    fn the_generators_are_on_their_curves() {
        for curve in [Curve::P256, Curve::P384] {
            let c = Params::of(curve).unwrap();
            assert!(c.on_curve(&c.g), "{curve:?}");
            let mut moved = c.g;
            moved.y = c.add(&moved.y, &c.one());
            assert!(!c.on_curve(&moved), "{curve:?}");
        }
    }

    #[test]
    fn p256_verdicts_equal_the_p256_crate() {
        use p256::ecdsa::signature::Verifier;
        let mut seed = 0x1234_5678_9abc_def1;
        for round in 0..12 {
            let sk = p256::ecdsa::SigningKey::from_slice(&bytes(&mut seed, 32)).unwrap();
            let key = p256_key(&sk);
            let msg = bytes(&mut seed, round * 7);
            let sig: p256::ecdsa::Signature = sk.sign(&msg);
            let raw = sig.to_bytes();
            assert!(key.verify(&msg, &raw), "round {round}");
            assert!(sk.verifying_key().verify(&msg, &sig).is_ok());
            // Every single-bit change of the signature and the message.
            for i in [0, 5, 31, 32, 40, 63] {
                let mut bad = raw.to_vec();
                bad[i] ^= 1 << (round % 8);
                let want = p256::ecdsa::Signature::from_slice(&bad)
                    .is_ok_and(|s| sk.verifying_key().verify(&msg, &s).is_ok());
                assert_eq!(key.verify(&msg, &bad), want, "round {round} byte {i}");
                assert!(!want);
            }
            let mut other = msg.clone();
            other.push(1);
            assert!(!key.verify(&other, &raw));
            // The high-s twin (n - s) is valid ECDSA too: both agree.
            let (r, s) = raw.split_at(32);
            let c = Params::of(Curve::P256).unwrap();
            let (mut neg, mut plain) = ([0 as Limb; LIMBS], [0u8; 32]);
            c.n.sub(&[0; LIMBS], &num(s), &mut neg);
            crate::jwt::montgomery::to_bytes(&neg, &mut plain);
            let twin = [r, &plain[..]].concat();
            let want = p256::ecdsa::Signature::from_slice(&twin)
                .is_ok_and(|s| sk.verifying_key().verify(&msg, &s).is_ok());
            assert_eq!(key.verify(&msg, &twin), want);
        }
    }

    #[test]
    fn p384_verdicts_equal_the_p384_crate() {
        use p384::ecdsa::signature::Verifier;
        let mut seed = 0x0fed_cba9_8765_4321;
        for round in 0..6 {
            let sk = p384::ecdsa::SigningKey::from_slice(&bytes(&mut seed, 48)).unwrap();
            let key = p384_key(&sk);
            let msg = bytes(&mut seed, 1 + round * 33);
            let sig: p384::ecdsa::Signature = sk.sign(&msg);
            let raw = sig.to_bytes();
            assert!(key.verify(&msg, &raw), "round {round}");
            for i in [0, 47, 48, 95] {
                let mut bad = raw.to_vec();
                bad[i] ^= 0x80 >> (round % 8);
                let want = p384::ecdsa::Signature::from_slice(&bad)
                    .is_ok_and(|s| sk.verifying_key().verify(&msg, &s).is_ok());
                assert_eq!(key.verify(&msg, &bad), want, "round {round} byte {i}");
            }
            assert!(!key.verify(b"other", &raw));
            // The other curve's key with the same scalar refuses it.
            let sk256 = p256::ecdsa::SigningKey::from_slice(&raw[..32]).unwrap();
            assert!(!p256_key(&sk256).verify(&msg, &raw[..64]));
        }
    }

    #[test]
    fn out_of_range_signatures_are_refused() {
        let mut seed = 42;
        let sk = p256::ecdsa::SigningKey::from_slice(&bytes(&mut seed, 32)).unwrap();
        let key = p256_key(&sk);
        let msg = b"m";
        let sig: p256::ecdsa::Signature = sk.sign(msg);
        let raw = sig.to_bytes();
        let n = hex_bytes(P256.n);
        let zero = [0u8; 32];
        let ff = [0xffu8; 32];
        for (r, s) in [
            (&zero[..], &raw[32..]),
            (&raw[..32], &zero[..]),
            (&n[..], &raw[32..]),
            (&raw[..32], &n[..]),
            (&ff[..], &raw[32..]),
            (&raw[..32], &ff[..]),
        ] {
            assert!(!key.verify(msg, &[r, s].concat()));
        }
        // r + n (below 2^256): the same x mod n, but not a valid encoding.
        let c = Params::of(Curve::P256).unwrap();
        let (mut sum, mut carry) = ([0u8; 32], 0u16);
        for i in (0..32).rev() {
            let v = u16::from(raw[i]) + u16::from(n[i]) + carry;
            sum[i] = v as u8;
            carry = v >> 8;
        }
        if carry == 0 {
            assert!(!key.verify(msg, &[&sum[..], &raw[32..]].concat()));
        }
        assert!(!c.p.below(&num(&hex_bytes(P256.p))));
        // Wrong lengths.
        assert!(!key.verify(msg, &raw[..63]));
        assert!(!key.verify(msg, &[&raw[..], &[0][..]].concat()));
        assert!(!key.verify(msg, &[]));
    }

    #[test]
    fn keys_off_the_curve_or_out_of_range_are_refused() {
        let c = Params::of(Curve::P256).unwrap();
        let (mut gx, mut gy) = ([0 as Limb; LIMBS], [0 as Limb; LIMBS]);
        c.p.out_of_mont(&c.g.x, &mut gx);
        c.p.out_of_mont(&c.g.y, &mut gy);
        let (mut x, mut y) = ([0u8; 32], [0u8; 32]);
        crate::jwt::montgomery::to_bytes(&gx, &mut x);
        crate::jwt::montgomery::to_bytes(&gy, &mut y);
        assert!(EcKey::new(Curve::P256, &x, &y).is_some(), "G itself");
        let mut y1 = y;
        y1[31] ^= 1;
        assert!(EcKey::new(Curve::P256, &x, &y1).is_none(), "off the curve");
        assert!(EcKey::new(Curve::P256, &[0; 32], &[0; 32]).is_none());
        assert!(EcKey::new(Curve::P256, &x[1..], &y).is_none(), "short");
        assert!(
            EcKey::new(Curve::P384, &x, &y).is_none(),
            "other curve's size"
        );
        // y + p: the same residue, not a canonical coordinate.
        let p = hex_bytes(P256.p);
        let p_limbs = num(&p);
        assert!(!c.p.below(&p_limbs));
        assert!(EcKey::new(Curve::P256, &x, &p).is_none(), "y = p");
        // The same point from the crate agrees.
        let sk = p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).unwrap();
        let pt = sk.verifying_key().to_encoded_point(false);
        let ours = EcKey::new(Curve::P256, pt.x().unwrap(), pt.y().unwrap()).unwrap();
        assert_eq!(ours, p256_key(&sk));
        assert_eq!(ours.curve(), Curve::P256);
    }

    /// A strict-DER `SEQUENCE { INTEGER r, INTEGER s }` as JWS `r || s` of
    /// `size`-byte integers; `None` when it is not minimal DER, or an
    /// integer is negative or longer than `size` (no JWS spelling).
    fn der_to_jws(der: &[u8], size: usize) -> Option<Vec<u8>> {
        fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
            let (&tag, b) = b.split_first()?;
            let (&first, b) = b.split_first()?;
            let (len, b) = match first {
                0..=0x7f => (usize::from(first), b),
                0x81 => {
                    let (&l, b) = b.split_first()?;
                    (l >= 0x80).then_some((usize::from(l), b))?
                }
                _ => return None,
            };
            (b.len() >= len).then(|| (tag, &b[..len], &b[len..]))
        }
        fn fixed(int: &[u8], size: usize) -> Option<Vec<u8>> {
            match int {
                [] => None,
                [b, ..] if b & 0x80 != 0 => None,
                [0, next, ..] if next & 0x80 == 0 => None,
                _ => {
                    let int = strip(int);
                    (int.len() <= size).then(|| [vec![0; size - int.len()], int.to_vec()].concat())
                }
            }
        }
        fn strip(mut b: &[u8]) -> &[u8] {
            while let [0, rest @ ..] = b {
                b = rest;
            }
            b
        }
        let (0x30, body, []) = tlv(der)? else {
            return None;
        };
        let (2, r, rest) = tlv(body)? else {
            return None;
        };
        let (2, s, []) = tlv(rest)? else {
            return None;
        };
        Some([fixed(r, size)?, fixed(s, size)?].concat())
    }

    /// Project Wycheproof's vectors (tests/fixtures/wycheproof): every one
    /// whose signature has a JWS spelling gets Wycheproof's verdict.
    #[test]
    fn wycheproof_vectors() {
        for (curve, data, want) in [
            (
                Curve::P256,
                &include_bytes!("../../tests/fixtures/wycheproof/ecdsa_p256_sha256.blb")[..],
                (218, 147, 168),
            ),
            (
                Curve::P384,
                &include_bytes!("../../tests/fixtures/wycheproof/ecdsa_p384_sha384.blb")[..],
                (239, 168, 168),
            ),
        ] {
            let size = curve.scalar_len();
            let (mut checked, mut valid, mut skipped) = (0, 0, 0);
            for (i, row) in blobby::Blob5Iterator::new(data).unwrap().enumerate() {
                let [wx, wy, msg, sig, status] = row.unwrap();
                let pass = status == [1];
                let pad = |c: &[u8]| {
                    let c = &c[c.len().saturating_sub(size)..];
                    [vec![0; size - c.len()], c.to_vec()].concat()
                };
                let key = EcKey::new(curve, &pad(wx), &pad(wy))
                    .unwrap_or_else(|| panic!("{curve:?} vector {i}: key refused"));
                let Some(jws) = der_to_jws(sig, size) else {
                    assert!(!pass, "{curve:?} vector {i}: a valid signature not decoded");
                    skipped += 1;
                    continue;
                };
                assert_eq!(key.verify(msg, &jws), pass, "{curve:?} vector {i}");
                checked += 1;
                valid += usize::from(pass);
            }
            // Checked (of them valid), and skipped (DER-only cases).
            assert_eq!((checked, valid, skipped), want, "{curve:?}");
        }
    }
}
