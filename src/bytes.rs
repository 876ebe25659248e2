//! Byte-slice helpers for hot paths.
//!
//! Why [`eq`] exists: in a wasm32 build, `==` on byte slices calls the C
//! library's `memcmp`, which compares one byte per step (wasi-libc's, like
//! compiler-builtins', is a plain byte loop): measured with
//! `bench/v8prof.cjs`, matching a ~700-byte bearer token against the
//! verified-token cache cost ~400 ns per request. Comparing 8 bytes per
//! step is several times cheaper there. Natively (the dynamic module) the
//! C library's `memcmp` is vectorised and cheaper still, so `eq` is `==`.

/// Whether `a` and `b` hold the same bytes, compared 8 bytes at a time.
#[cfg(target_arch = "wasm32")]
pub fn eq(a: &[u8], b: &[u8]) -> bool {
    eq_by_words(a, b)
}

/// Whether `a` and `b` hold the same bytes: natively the C library's
/// `memcmp` (vectorised, 32 bytes a step with AVX2), which the native
/// module measured ~10x cheaper than [`eq_by_words`] on a repeated
/// bearer token (~600 instructions -> ~60 per request under callgrind).
#[cfg(not(target_arch = "wasm32"))]
pub fn eq(a: &[u8], b: &[u8]) -> bool {
    a == b
}

/// The word-at-a-time comparison of the wasm build (see the module docs).
#[cfg_attr(not(any(test, target_arch = "wasm32")), allow(dead_code))]
fn eq_by_words(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let word = |w: &[u8]| {
        let mut x = [0u8; 8];
        x.copy_from_slice(w);
        u64::from_ne_bytes(x)
    };
    let (wa, wb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (wa.remainder(), wb.remainder());
    wa.zip(wb).all(|(x, y)| word(x) == word(y)) && ra == rb
}

#[cfg(test)]
mod tests {
    use super::{eq, eq_by_words};

    /// Both comparisons (the build's `eq` and the wasm build's word-wise
    /// one, tested natively too).
    #[test]
    fn equal_exactly_when_the_bytes_are() {
        let base: Vec<u8> = (0..100u8).map(|i| i.wrapping_mul(37)).collect();
        for eq in [eq as fn(&[u8], &[u8]) -> bool, eq_by_words] {
            for len in 0..base.len() {
                let a = &base[..len];
                // Another buffer with the same bytes.
                let copy = a.to_owned();
                assert!(eq(a, copy.as_slice()));
                // Every single changed byte, in the words and in the tail.
                for i in 0..len {
                    let mut b = a.to_vec();
                    b[i] ^= 0x80;
                    assert!(!eq(a, &b), "len {len}, byte {i}");
                }
                // Other lengths never compare equal.
                assert!(!eq(a, &base[..len + 1]));
            }
            assert!(eq(b"", b""));
        }
    }
}
