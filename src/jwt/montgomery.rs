//! Arithmetic modulo an odd number in Montgomery form, on little-endian
//! 32-bit limbs (wasm multiplies 32 x 32 -> 64 bits natively): the one
//! big-number kernel of the signature checks written here, RSA (`rsassa`:
//! moduli of 512..=8192 bits) and ECDSA (`ecdsa`: the P-256 and P-384 field
//! and group orders).
//!
//! Nothing here runs in constant time: signature verification handles no
//! secret. Numbers are limb slices as long as the modulus (or longer: the
//! limbs above it are ignored on input and left alone on output), each below
//! the modulus unless a function says otherwise.
//!
//! `mul`, `add` and `sub` are never inlined: one copy of each for every
//! caller (inlined into the point formulas of `ecdsa` they made 15 KB more
//! module, for no speed V8 showed).

/// Largest modulus handled (bits).
pub const MAX_BITS: usize = 8192;
const MAX_LIMBS: usize = MAX_BITS / 32;

/// An odd modulus prepared for Montgomery products (R = 2^(32 * limbs)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Modulus {
    /// The modulus, little-endian limbs, the top one non-zero.
    n: Vec<u32>,
    /// -n^-1 mod 2^32.
    n0inv: u32,
    /// R^2 mod n: brings a number into Montgomery form.
    rr: Vec<u32>,
    /// Size of n in bits.
    bits: usize,
}

impl Modulus {
    /// From big-endian bytes (leading zeros allowed): an odd number of
    /// 2..=8192 bits; `None` otherwise.
    pub fn new(be: &[u8]) -> Option<Modulus> {
        let be = strip_zeros(be);
        let bits = bit_len(be);
        if !(2..=MAX_BITS).contains(&bits) {
            return None;
        }
        let mut n = vec![0u32; bits.div_ceil(32)];
        if !to_limbs(be, &mut n) || n.first().is_none_or(|l| l & 1 == 0) {
            return None;
        }
        // Newton's iteration for n0^-1 mod 2^32: each step doubles the
        // correct low bits (n0 * n0 = 1 mod 8 for odd n0: 3 bits to start).
        let n0 = *n.first()?;
        let mut inv = n0;
        for _ in 0..4 {
            inv = inv.wrapping_mul(2u32.wrapping_sub(n0.wrapping_mul(inv)));
        }
        let mut m = Modulus {
            rr: Vec::new(),
            n,
            n0inv: inv.wrapping_neg(),
            bits,
        };
        m.rr = m.r_squared();
        Some(m)
    }

    /// R^2 mod n with no big-number library: R mod n by doubling
    /// 2^(bits - 1) (which is below n) up to R; that is 1 in Montgomery
    /// form, and doubling it `limbs` more times gives 2^limbs in Montgomery
    /// form; five Montgomery squarings raise that to 2^(32 * limbs) = R,
    /// whose Montgomery form R * R mod n is the result.
    fn r_squared(&self) -> Vec<u32> {
        let l = self.n.len();
        let mut x = vec![0u32; l];
        let top = self.bits - 1;
        if let Some(limb) = x.get_mut(top / 32) {
            *limb = 1 << (top % 32);
        }
        for _ in 0..(32 * l - top) + l {
            double_mod(&mut x, &self.n);
        }
        let mut tmp = vec![0u32; l];
        for _ in 0..5 {
            self.mul(&x, &x, &mut tmp);
            std::mem::swap(&mut x, &mut tmp);
        }
        x
    }

    /// Size of the modulus in bits.
    pub fn bits(&self) -> usize {
        self.bits
    }

    /// Number of limbs of the modulus (and of every number modulo it).
    pub fn limbs(&self) -> usize {
        self.n.len()
    }

    /// `a` < n?
    pub fn below(&self, a: &[u32]) -> bool {
        less_than(a, &self.n)
    }

    /// Montgomery product `a * b / R mod n` (CIOS), into `out`.
    #[inline(never)]
    pub fn mul(&self, a: &[u32], b: &[u32], out: &mut [u32]) {
        let n = &self.n;
        let l = n.len();
        let mut buf = [0u32; MAX_LIMBS + 2];
        // t: the l low limbs, hi: the two above them. `new` admits at most
        // MAX_LIMBS limbs and at least one, so neither `else` is taken.
        let Some((t, hi)) = buf
            .get_mut(..l + 2)
            .and_then(|b| b.split_last_chunk_mut::<2>())
        else {
            return;
        };
        let Some((&n0, n_rest)) = n.split_first() else {
            return;
        };
        for &ai in a.iter().take(l) {
            let ai = u64::from(ai);
            let mut c: u64 = 0;
            for (tj, &bj) in t.iter_mut().zip(b.iter()) {
                let s = u64::from(*tj) + ai * u64::from(bj) + c;
                *tj = s as u32;
                c = s >> 32;
            }
            let s = u64::from(hi[0]) + c;
            hi[0] = s as u32;
            hi[1] = (s >> 32) as u32;
            // Reduction: t = (t + m * n) / 2^32, each limb written one
            // place down (`dst` trails the limb read by one).
            let mut limbs = t.iter_mut();
            let Some(mut dst) = limbs.next() else {
                return;
            };
            let m = u64::from(dst.wrapping_mul(self.n0inv));
            let mut c = (u64::from(*dst) + m * u64::from(n0)) >> 32;
            for (tj, &nj) in limbs.zip(n_rest) {
                let s = u64::from(*tj) + m * u64::from(nj) + c;
                *dst = s as u32;
                c = s >> 32;
                dst = tj;
            }
            let s = u64::from(hi[0]) + c;
            *dst = s as u32;
            hi[0] = hi[1] + (s >> 32) as u32;
        }
        // t < 2n: one conditional subtraction.
        if hi[0] != 0 || !less_than(t, n) {
            sub_into(t, n, out);
        } else {
            for (o, &tj) in out.iter_mut().zip(t.iter()) {
                *o = tj;
            }
        }
    }

    /// `a` into Montgomery form (a * R mod n), into `out`.
    pub fn to_mont(&self, a: &[u32], out: &mut [u32]) {
        self.mul(a, &self.rr, out);
    }

    /// `a` out of Montgomery form (a / R mod n): a product with 1.
    pub fn out_of_mont(&self, a: &[u32], out: &mut [u32]) {
        let mut one = [0u32; MAX_LIMBS];
        one[0] = 1;
        self.mul(a, &one, out);
    }

    /// `a + b mod n`, into `out`.
    #[inline(never)]
    pub fn add(&self, a: &[u32], b: &[u32], out: &mut [u32]) {
        let l = self.n.len();
        let mut carry = 0u64;
        for ((o, &x), &y) in out.iter_mut().zip(a).zip(b).take(l) {
            let v = u64::from(x) + u64::from(y) + carry;
            *o = v as u32;
            carry = v >> 32;
        }
        // a + b < 2n: at most one subtraction.
        if carry != 0 || !less_than(out, &self.n) {
            sub_in_place(out, &self.n);
        }
    }

    /// `a - b mod n`, into `out`.
    #[inline(never)]
    pub fn sub(&self, a: &[u32], b: &[u32], out: &mut [u32]) {
        let l = self.n.len();
        let mut borrow: i64 = 0;
        for ((o, &x), &y) in out.iter_mut().zip(a).zip(b).take(l) {
            let v = i64::from(x) - i64::from(y) + borrow;
            *o = v as u32;
            borrow = v >> 32;
        }
        if borrow != 0 {
            // a < b: the difference wrapped; adding n brings it back.
            let mut carry = 0u64;
            for (o, &nj) in out.iter_mut().zip(&self.n) {
                let v = u64::from(*o) + u64::from(nj) + carry;
                *o = v as u32;
                carry = v >> 32;
            }
        }
    }

    /// `a` minus n once if `a` >= n, into `out`: reduces a number below 2n
    /// (and as long as n) modulo n.
    pub fn reduce_once(&self, a: &[u32], out: &mut [u32]) {
        if less_than(a, &self.n) {
            out.iter_mut().zip(a).for_each(|(o, &x)| *o = x);
        } else {
            sub_into(a, &self.n, out);
        }
    }

    /// `a^(n - 2) mod n` for `a` in Montgomery form, result in Montgomery
    /// form: the inverse of a non-zero `a` when n is prime (Fermat), by
    /// square-and-multiply from the exponent's top bit.
    pub fn invert_prime(&self, a: &[u32], out: &mut [u32]) {
        let l = self.n.len();
        // The exponent n - 2 (n is odd and above 2: no borrow past it).
        let mut e = self.n.clone();
        let mut borrow = 2u32;
        for x in e.iter_mut() {
            let (v, b) = x.overflowing_sub(borrow);
            *x = v;
            borrow = u32::from(b);
        }
        let mut acc = [0u32; MAX_LIMBS];
        let mut tmp = [0u32; MAX_LIMBS];
        acc[0] = 1;
        let one = acc;
        self.to_mont(&one, &mut acc);
        for bit in (0..self.bits).rev() {
            self.mul(&acc, &acc, &mut tmp);
            if e.get(bit / 32)
                .is_some_and(|limb| limb >> (bit % 32) & 1 == 1)
            {
                self.mul(&tmp, a, &mut acc);
            } else {
                acc.iter_mut().zip(&tmp).take(l).for_each(|(x, &t)| *x = t);
            }
        }
        out.iter_mut().zip(&acc).take(l).for_each(|(o, &x)| *o = x);
    }
}

/// `a - b` into `out`, for a >= b or a wrapped above the limbs by exactly
/// the borrow this subtraction produces (a sum with its carry dropped).
fn sub_into(a: &[u32], b: &[u32], out: &mut [u32]) {
    let mut borrow: i64 = 0;
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        let d = i64::from(x) - i64::from(y) + borrow;
        *o = d as u32;
        borrow = d >> 32;
    }
}

/// `x -= n` over n's limbs, the final borrow dropped (x >= n, or x wrapped
/// above its limbs by exactly that borrow).
fn sub_in_place(x: &mut [u32], n: &[u32]) {
    let mut borrow: i64 = 0;
    for (xi, &ni) in x.iter_mut().zip(n) {
        let d = i64::from(*xi) - i64::from(ni) + borrow;
        *xi = d as u32;
        borrow = d >> 32;
    }
}

/// Big-endian bytes without their leading zeros.
pub fn strip_zeros(mut b: &[u8]) -> &[u8] {
    while let [0, rest @ ..] = b {
        b = rest;
    }
    b
}

/// Size in bits of a big-endian number given without leading zeros.
pub fn bit_len(n: &[u8]) -> usize {
    match n.first() {
        Some(&top) => 8 * n.len() - top.leading_zeros() as usize,
        None => 0,
    }
}

/// A big-endian number into the little-endian limbs `out` (zeroed first);
/// false if it does not fit them.
pub fn to_limbs(be: &[u8], out: &mut [u32]) -> bool {
    out.iter_mut().for_each(|l| *l = 0);
    for (i, b) in be.iter().rev().enumerate() {
        match out.get_mut(i / 4) {
            Some(l) => *l |= u32::from(*b) << (8 * (i % 4)),
            None if *b == 0 => {}
            None => return false,
        }
    }
    true
}

/// Little-endian limbs into exactly `out.len()` big-endian bytes (the
/// number's low bytes).
pub fn to_bytes(limbs: &[u32], out: &mut [u8]) {
    for (i, o) in out.iter_mut().rev().enumerate() {
        *o = limbs.get(i / 4).map_or(0, |l| (l >> (8 * (i % 4))) as u8);
    }
}

/// x = 2x mod n, for x < n (little-endian limbs of the same length).
fn double_mod(x: &mut [u32], n: &[u32]) {
    let mut carry = 0u32;
    for limb in x.iter_mut() {
        let next = *limb >> 31;
        *limb = *limb << 1 | carry;
        carry = next;
    }
    // 2x < 2n: at most one subtraction (with the carry, 2x exceeds the
    // limbs and the difference fits them).
    if carry != 0 || !less_than(x, n) {
        sub_in_place(x, n);
    }
}

/// a < b, compared over b's limbs (a's limbs above them are ignored).
fn less_than(a: &[u32], b: &[u32]) -> bool {
    for (x, y) in a.iter().take(b.len()).rev().zip(b.iter().rev()) {
        if x != y {
            return x < y;
        }
    }
    false
}

/// A xorshift stream: deterministic test bytes (the big-number and
/// signature tests' inputs).
#[cfg(test)]
pub(crate) fn test_bytes(seed: &mut u64, n: usize) -> Vec<u8> {
    (0..n)
        .map(|_| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            *seed as u8
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::test_bytes as bytes;
    use super::*;
    use rsa::BigUint;

    /// An odd modulus of exactly `bits` bits.
    fn modulus(seed: &mut u64, bits: usize) -> BigUint {
        let mut nb = bytes(seed, bits.div_ceil(8));
        let top = bits - 8 * (nb.len() - 1);
        nb[0] = (nb[0] | 0x80) >> (8 - top);
        *nb.last_mut().unwrap() |= 1;
        let n = BigUint::from_bytes_be(&nb);
        assert_eq!(n.bits(), bits);
        n
    }

    fn limbs(x: &BigUint, len: usize) -> Vec<u32> {
        let mut out = vec![0u32; len];
        assert!(to_limbs(&x.to_bytes_be(), &mut out));
        out
    }

    fn big(limbs: &[u32]) -> BigUint {
        let mut be = vec![0u8; 4 * limbs.len()];
        to_bytes(limbs, &mut be);
        BigUint::from_bytes_be(&be)
    }

    #[test]
    fn r_squared_equals_the_big_number_remainder() {
        let mut seed = 0x0123_4567_89ab_cdef;
        for bits in [
            2usize, 31, 32, 33, 256, 384, 512, 513, 1023, 2048, 2049, 2056, 3072, 4095, 4096, 8192,
        ] {
            for _ in 0..4 {
                let n = modulus(&mut seed, bits);
                let m = Modulus::new(&n.to_bytes_be()).unwrap();
                let l = bits.div_ceil(32);
                let want = (BigUint::from(1u32) << (64 * l)) % &n;
                assert_eq!(m.rr, limbs(&want, l), "{bits} bits");
                assert_eq!((m.bits(), m.limbs()), (bits, l));
            }
        }
        // The smallest odd modulus of a size: 2^(bits-1) + 1.
        let n = (BigUint::from(1u32) << 2047) + BigUint::from(1u32);
        let want = (BigUint::from(1u32) << 4096) % &n;
        let m = Modulus::new(&n.to_bytes_be()).unwrap();
        assert_eq!(m.rr, limbs(&want, 64));
    }

    #[test]
    fn operations_equal_the_big_number_ones() {
        let mut seed = 0x5555_aaaa_1234_9876;
        for bits in [33usize, 256, 384, 521, 2048] {
            let n = modulus(&mut seed, bits);
            let m = Modulus::new(&n.to_bytes_be()).unwrap();
            let l = m.limbs();
            let r = BigUint::from(1u32) << (32 * l);
            for round in 0..20 {
                let a = BigUint::from_bytes_be(&bytes(&mut seed, bits.div_ceil(8))) % &n;
                let b = if round == 0 {
                    &n - BigUint::from(1u32)
                } else {
                    BigUint::from_bytes_be(&bytes(&mut seed, bits.div_ceil(8))) % &n
                };
                let (al, bl) = (limbs(&a, l), limbs(&b, l));
                let mut out = vec![0u32; l];
                m.mul(&al, &bl, &mut out);
                // out = a * b / R: out * R = a * b (mod n), out < n.
                assert!(big(&out) < n);
                assert_eq!((big(&out) * &r) % &n, (&a * &b) % &n, "mul, {bits} bits");
                m.add(&al, &bl, &mut out);
                assert_eq!(big(&out), (&a + &b) % &n, "add, {bits} bits");
                m.sub(&al, &bl, &mut out);
                assert_eq!(big(&out), (&a + &n - &b) % &n, "sub, {bits} bits");
                m.to_mont(&al, &mut out);
                assert_eq!(big(&out), (&a * &r) % &n, "to_mont, {bits} bits");
                let am = out.clone();
                m.out_of_mont(&am, &mut out);
                assert_eq!(big(&out), a, "out_of_mont, {bits} bits");
                // a + n fits the limbs when n's top limb leaves room.
                let an = &a + &n;
                if an.bits() <= 32 * l {
                    m.reduce_once(&limbs(&an, l), &mut out);
                    assert_eq!(big(&out), a, "reduce_once, {bits} bits");
                }
                m.reduce_once(&al, &mut out);
                assert_eq!(big(&out), a);
            }
        }
    }

    #[test]
    fn inversion_modulo_a_prime() {
        // The P-256 and P-384 field primes and group orders, and a small one.
        for hex in [
            "ffffffff00000001000000000000000000000000ffffffffffffffffffffffff",
            "ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551",
            "fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffeffffffff0000000000000000ffffffff",
            "ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf581a0db248b0a77aecec196accc52973",
            "65",
        ] {
            let n = BigUint::parse_bytes(hex.as_bytes(), 16).unwrap();
            let m = Modulus::new(&n.to_bytes_be()).unwrap();
            let l = m.limbs();
            let mut seed = 7;
            for k in 0..8 {
                let a = BigUint::from_bytes_be(&bytes(&mut seed, 48)) % &n;
                let a = if k == 0 { BigUint::from(1u32) } else { a };
                if a == BigUint::from(0u32) {
                    continue;
                }
                let (mut am, mut inv, mut plain) = (vec![0u32; l], vec![0u32; l], vec![0u32; l]);
                m.to_mont(&limbs(&a, l), &mut am);
                m.invert_prime(&am, &mut inv);
                m.out_of_mont(&inv, &mut plain);
                assert_eq!((big(&plain) * &a) % &n, BigUint::from(1u32), "{hex}");
            }
        }
    }

    #[test]
    fn unusable_moduli_and_numbers_too_long_are_refused() {
        assert!(Modulus::new(&[]).is_none(), "no modulus");
        assert!(Modulus::new(&[0; 40]).is_none(), "zero");
        assert!(Modulus::new(&[1]).is_none(), "one bit");
        assert!(Modulus::new(&[0, 0x10]).is_none(), "even");
        let huge = (BigUint::from(1u32) << 8200) + BigUint::from(1u32);
        assert!(
            Modulus::new(&huge.to_bytes_be()).is_none(),
            "over 8192 bits"
        );
        assert!(Modulus::new(&[0, 0, 3]).is_some(), "leading zeros");
        let mut out = [0u32; 2];
        assert!(to_limbs(&[0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8], &mut out));
        assert_eq!(out, [0x0506_0708, 0x0102_0304]);
        assert!(!to_limbs(&[1, 0, 0, 0, 0, 0, 0, 0, 0], &mut out));
        assert_eq!(strip_zeros(&[0, 0, 5, 0]), &[5, 0]);
        assert_eq!(bit_len(&[0x01, 0]), 9);
        assert_eq!(bit_len(&[]), 0);
    }
}
