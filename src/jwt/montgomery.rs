//! Arithmetic modulo an odd number in Montgomery form, on little-endian
//! limbs of the target's word: 32 bits in wasm (which multiplies 32 x 32 ->
//! 64 bits natively), 64 bits on 64-bit targets (the native module: 64 x 64
//! -> 128-bit products, a quarter of the limb products for a 2048-bit
//! modulus). The one big-number kernel of the signature checks written
//! here, RSA (`rsassa`: moduli of 512..=8192 bits) and ECDSA (`ecdsa`: the
//! P-256 and P-384 field and group orders). The unit tests run on the
//! 64-bit limbs; `tests/wasm_jwt.rs` checks the 32-bit ones in wasm.
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

/// One limb: the target's word.
#[cfg(target_pointer_width = "64")]
pub type Limb = u64;
/// Twice a limb: a limb product with its carries.
#[cfg(target_pointer_width = "64")]
type Wide = u128;
/// A signed twice-a-limb: a limb difference with its borrow.
#[cfg(target_pointer_width = "64")]
type SignedWide = i128;
/// One limb: the target's word.
#[cfg(not(target_pointer_width = "64"))]
pub type Limb = u32;
/// Twice a limb: a limb product with its carries.
#[cfg(not(target_pointer_width = "64"))]
type Wide = u64;
/// A signed twice-a-limb: a limb difference with its borrow.
#[cfg(not(target_pointer_width = "64"))]
type SignedWide = i64;

/// Bits of a limb.
pub const LIMB_BITS: usize = Limb::BITS as usize;
/// Bytes of a limb.
const LIMB_BYTES: usize = LIMB_BITS / 8;
const MAX_LIMBS: usize = MAX_BITS / LIMB_BITS;

/// An odd modulus prepared for Montgomery products (R = 2^(LIMB_BITS * limbs)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Modulus {
    /// The modulus, little-endian limbs, the top one non-zero.
    n: Vec<Limb>,
    /// -n^-1 mod 2^LIMB_BITS.
    n0inv: Limb,
    /// R^2 mod n: brings a number into Montgomery form.
    rr: Vec<Limb>,
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
        let mut n = vec![0 as Limb; bits.div_ceil(LIMB_BITS)];
        if !to_limbs(be, &mut n) || n.first().is_none_or(|l| l & 1 == 0) {
            return None;
        }
        // Newton's iteration for n0^-1 mod 2^LIMB_BITS: each step doubles
        // the correct low bits (n0 * n0 = 1 mod 8 for odd n0: 3 bits to
        // start; five steps give 96 >= 64).
        let n0 = *n.first()?;
        let mut inv = n0;
        for _ in 0..5 {
            inv = inv.wrapping_mul((2 as Limb).wrapping_sub(n0.wrapping_mul(inv)));
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
    /// form; log2(LIMB_BITS) Montgomery squarings (5 or 6) raise that to
    /// 2^(LIMB_BITS * limbs) = R, whose Montgomery form R * R mod n is the
    /// result.
    fn r_squared(&self) -> Vec<Limb> {
        let l = self.n.len();
        let mut x = vec![0 as Limb; l];
        let top = self.bits - 1;
        if let Some(limb) = x.get_mut(top / LIMB_BITS) {
            *limb = 1 << (top % LIMB_BITS);
        }
        for _ in 0..(LIMB_BITS * l - top) + l {
            double_mod(&mut x, &self.n);
        }
        let mut tmp = vec![0 as Limb; l];
        for _ in 0..LIMB_BITS.trailing_zeros() {
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
    pub fn below(&self, a: &[Limb]) -> bool {
        less_than(a, &self.n)
    }

    /// Montgomery product `a * b / R mod n` (CIOS), into `out`.
    #[inline(never)]
    pub fn mul(&self, a: &[Limb], b: &[Limb], out: &mut [Limb]) {
        let n = &self.n;
        let l = n.len();
        let mut buf = [0 as Limb; MAX_LIMBS + 2];
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
            let ai = Wide::from(ai);
            let mut c: Wide = 0;
            for (tj, &bj) in t.iter_mut().zip(b.iter()) {
                let s = Wide::from(*tj) + ai * Wide::from(bj) + c;
                *tj = s as Limb;
                c = s >> LIMB_BITS;
            }
            let s = Wide::from(hi[0]) + c;
            hi[0] = s as Limb;
            hi[1] = (s >> LIMB_BITS) as Limb;
            // Reduction: t = (t + m * n) / 2^LIMB_BITS, each limb written one
            // place down (`dst` trails the limb read by one).
            let mut limbs = t.iter_mut();
            let Some(mut dst) = limbs.next() else {
                return;
            };
            let m = Wide::from(dst.wrapping_mul(self.n0inv));
            let mut c = (Wide::from(*dst) + m * Wide::from(n0)) >> LIMB_BITS;
            for (tj, &nj) in limbs.zip(n_rest) {
                let s = Wide::from(*tj) + m * Wide::from(nj) + c;
                *dst = s as Limb;
                c = s >> LIMB_BITS;
                dst = tj;
            }
            let s = Wide::from(hi[0]) + c;
            *dst = s as Limb;
            hi[0] = hi[1] + (s >> LIMB_BITS) as Limb;
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
    pub fn to_mont(&self, a: &[Limb], out: &mut [Limb]) {
        self.mul(a, &self.rr, out);
    }

    /// `a` out of Montgomery form (a / R mod n): a product with 1.
    pub fn out_of_mont(&self, a: &[Limb], out: &mut [Limb]) {
        let mut one = [0 as Limb; MAX_LIMBS];
        one[0] = 1;
        self.mul(a, &one, out);
    }

    /// `a + b mod n`, into `out`.
    #[inline(never)]
    pub fn add(&self, a: &[Limb], b: &[Limb], out: &mut [Limb]) {
        let l = self.n.len();
        let mut carry: Wide = 0;
        for ((o, &x), &y) in out.iter_mut().zip(a).zip(b).take(l) {
            let v = Wide::from(x) + Wide::from(y) + carry;
            *o = v as Limb;
            carry = v >> LIMB_BITS;
        }
        // a + b < 2n: at most one subtraction.
        if carry != 0 || !less_than(out, &self.n) {
            sub_in_place(out, &self.n);
        }
    }

    /// `a - b mod n`, into `out`.
    #[inline(never)]
    pub fn sub(&self, a: &[Limb], b: &[Limb], out: &mut [Limb]) {
        let l = self.n.len();
        let mut borrow: SignedWide = 0;
        for ((o, &x), &y) in out.iter_mut().zip(a).zip(b).take(l) {
            let v = SignedWide::from(x) - SignedWide::from(y) + borrow;
            *o = v as Limb;
            borrow = v >> LIMB_BITS;
        }
        if borrow != 0 {
            // a < b: the difference wrapped; adding n brings it back.
            let mut carry: Wide = 0;
            for (o, &nj) in out.iter_mut().zip(&self.n) {
                let v = Wide::from(*o) + Wide::from(nj) + carry;
                *o = v as Limb;
                carry = v >> LIMB_BITS;
            }
        }
    }

    /// `a` minus n once if `a` >= n, into `out`: reduces a number below 2n
    /// (and as long as n) modulo n.
    pub fn reduce_once(&self, a: &[Limb], out: &mut [Limb]) {
        if less_than(a, &self.n) {
            out.iter_mut().zip(a).for_each(|(o, &x)| *o = x);
        } else {
            sub_into(a, &self.n, out);
        }
    }

    /// `a^(n - 2) mod n` for `a` in Montgomery form, result in Montgomery
    /// form: the inverse of a non-zero `a` when n is prime (Fermat), by
    /// square-and-multiply from the exponent's top bit.
    pub fn invert_prime(&self, a: &[Limb], out: &mut [Limb]) {
        let l = self.n.len();
        // The exponent n - 2 (n is odd and above 2: no borrow past it).
        let mut e = self.n.clone();
        let mut borrow: Limb = 2;
        for x in e.iter_mut() {
            let (v, b) = x.overflowing_sub(borrow);
            *x = v;
            borrow = Limb::from(b);
        }
        let mut acc = [0 as Limb; MAX_LIMBS];
        let mut tmp = [0 as Limb; MAX_LIMBS];
        acc[0] = 1;
        let one = acc;
        self.to_mont(&one, &mut acc);
        for bit in (0..self.bits).rev() {
            self.mul(&acc, &acc, &mut tmp);
            if e.get(bit / LIMB_BITS)
                .is_some_and(|limb| limb >> (bit % LIMB_BITS) & 1 == 1)
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
fn sub_into(a: &[Limb], b: &[Limb], out: &mut [Limb]) {
    let mut borrow: SignedWide = 0;
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        let d = SignedWide::from(x) - SignedWide::from(y) + borrow;
        *o = d as Limb;
        borrow = d >> LIMB_BITS;
    }
}

/// `x -= n` over n's limbs, the final borrow dropped (x >= n, or x wrapped
/// above its limbs by exactly that borrow).
fn sub_in_place(x: &mut [Limb], n: &[Limb]) {
    let mut borrow: SignedWide = 0;
    for (xi, &ni) in x.iter_mut().zip(n) {
        let d = SignedWide::from(*xi) - SignedWide::from(ni) + borrow;
        *xi = d as Limb;
        borrow = d >> LIMB_BITS;
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
pub fn to_limbs(be: &[u8], out: &mut [Limb]) -> bool {
    out.iter_mut().for_each(|l| *l = 0);
    for (i, b) in be.iter().rev().enumerate() {
        match out.get_mut(i / LIMB_BYTES) {
            Some(l) => *l |= Limb::from(*b) << (8 * (i % LIMB_BYTES)),
            None if *b == 0 => {}
            None => return false,
        }
    }
    true
}

/// Little-endian limbs into exactly `out.len()` big-endian bytes (the
/// number's low bytes).
pub fn to_bytes(limbs: &[Limb], out: &mut [u8]) {
    for (i, o) in out.iter_mut().rev().enumerate() {
        *o = limbs
            .get(i / LIMB_BYTES)
            .map_or(0, |l| (l >> (8 * (i % LIMB_BYTES))) as u8);
    }
}

/// x = 2x mod n, for x < n (little-endian limbs of the same length).
fn double_mod(x: &mut [Limb], n: &[Limb]) {
    let mut carry: Limb = 0;
    for limb in x.iter_mut() {
        let next = *limb >> (LIMB_BITS - 1);
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
fn less_than(a: &[Limb], b: &[Limb]) -> bool {
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

    fn limbs(x: &BigUint, len: usize) -> Vec<Limb> {
        let mut out = vec![0 as Limb; len];
        assert!(to_limbs(&x.to_bytes_be(), &mut out));
        out
    }

    fn big(limbs: &[Limb]) -> BigUint {
        let mut be = vec![0u8; LIMB_BYTES * limbs.len()];
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
                let l = bits.div_ceil(LIMB_BITS);
                let want = (BigUint::from(1u32) << (2 * LIMB_BITS * l)) % &n;
                assert_eq!(m.rr, limbs(&want, l), "{bits} bits");
                assert_eq!((m.bits(), m.limbs()), (bits, l));
            }
        }
        // The smallest odd modulus of a size: 2^(bits-1) + 1.
        let n = (BigUint::from(1u32) << 2047) + BigUint::from(1u32);
        let want = (BigUint::from(1u32) << 4096) % &n;
        let m = Modulus::new(&n.to_bytes_be()).unwrap();
        assert_eq!(m.rr, limbs(&want, 2048 / LIMB_BITS));
    }

    #[test]
    fn operations_equal_the_big_number_ones() {
        let mut seed = 0x5555_aaaa_1234_9876;
        for bits in [33usize, 256, 384, 521, 2048] {
            let n = modulus(&mut seed, bits);
            let m = Modulus::new(&n.to_bytes_be()).unwrap();
            let l = m.limbs();
            let r = BigUint::from(1u32) << (LIMB_BITS * l);
            for round in 0..20 {
                let a = BigUint::from_bytes_be(&bytes(&mut seed, bits.div_ceil(8))) % &n;
                let b = if round == 0 {
                    &n - BigUint::from(1u32)
                } else {
                    BigUint::from_bytes_be(&bytes(&mut seed, bits.div_ceil(8))) % &n
                };
                let (al, bl) = (limbs(&a, l), limbs(&b, l));
                let mut out = vec![0 as Limb; l];
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
                if an.bits() <= LIMB_BITS * l {
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
                let (mut am, mut inv, mut plain) = (vec![0 as Limb; l], vec![0 as Limb; l], vec![0 as Limb; l]);
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
        let mut out = [0 as Limb; 2];
        assert!(to_limbs(&[0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8], &mut out));
        assert_eq!(out[0].to_le_bytes()[..4], [8, 7, 6, 5]);
        let mut back = [0u8; 2 * LIMB_BYTES];
        to_bytes(&out, &mut back);
        let (high, low) = back.split_at(2 * LIMB_BYTES - 8);
        assert!(high.iter().all(|b| *b == 0));
        assert_eq!(low, [1, 2, 3, 4, 5, 6, 7, 8]);
        // One byte more than the limbs hold, non-zero: refused.
        let mut long = vec![0u8; 2 * LIMB_BYTES + 1];
        long[0] = 1;
        assert!(!to_limbs(&long, &mut out));
        long[0] = 0;
        assert!(to_limbs(&long, &mut out));
        assert_eq!(strip_zeros(&[0, 0, 5, 0]), &[5, 0]);
        assert_eq!(bit_len(&[0x01, 0]), 9);
        assert_eq!(bit_len(&[]), 0);
    }
}
