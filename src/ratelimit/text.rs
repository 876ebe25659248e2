//! Small text builders for the request path, without `core::fmt` (whose
//! machinery is a large share of a request's instructions in wasm).

/// "00" to "99".
const PAIRS: &[u8; 200] = b"\
0001020304050607080910111213141516171819\
2021222324252627282930313233343536373839\
4041424344454647484950515253545556575859\
6061626364656667686970717273747576777879\
8081828384858687888990919293949596979899";

/// A `u64` in decimal, on the stack.
pub struct Decimal {
    buf: [u8; 20],
    start: usize,
}

impl Decimal {
    pub fn new(n: u64) -> Decimal {
        // u64::MAX has 20 digits and every pair index is below 200, so
        // every `get` below is `Some` (written checked all the same).
        let mut buf = [b'0'; 20];
        let mut start = buf.len();
        let put_pair = |buf: &mut [u8; 20], start: usize, d: usize| {
            if let (Some(dst), Some(src)) = (buf.get_mut(start..start + 2), PAIRS.get(d..d + 2)) {
                dst.copy_from_slice(src);
            }
        };
        // Above 2^32 a digit at a time (64-bit division: a hardware divide
        // in wasm); below, two digits per 32-bit division by a constant
        // (a multiply).
        let mut n64 = n;
        while n64 > u32::MAX as u64 {
            start -= 1;
            if let Some(b) = buf.get_mut(start) {
                *b = b'0' + (n64 % 10) as u8;
            }
            n64 /= 10;
        }
        let mut m = n64 as u32;
        while m >= 100 {
            let d = (m % 100) as usize * 2;
            m /= 100;
            start -= 2;
            put_pair(&mut buf, start, d);
        }
        if m >= 10 {
            start -= 2;
            put_pair(&mut buf, start, m as usize * 2);
        } else {
            start -= 1;
            if let Some(b) = buf.get_mut(start) {
                *b = b'0' + m as u8;
            }
        }
        Decimal { buf, start }
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.buf.get(self.start..).unwrap_or(&[])
    }

    /// Number of digits.
    pub fn len(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Never: a number has at least one digit.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends the digits to `out` (ASCII: one `char` each, no UTF-8
    /// validation).
    pub fn push_to(&self, out: &mut String) {
        out.reserve(self.len());
        for &b in self.as_bytes() {
            out.push(char::from(b));
        }
    }

    #[cfg(test)]
    pub fn as_str(&self) -> &str {
        // Only ASCII digits are ever written.
        std::str::from_utf8(self.as_bytes()).unwrap_or("0")
    }
}

/// `n` in decimal, in a `String` of exactly its size.
pub fn u64_string(n: u64) -> String {
    let d = Decimal::new(n);
    let mut s = String::with_capacity(d.len());
    d.push_to(&mut s);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_to_string_on_edges_and_many_values() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut values = vec![0, 1, 9, 10, 99, 100, 12345, u64::MAX - 1, u64::MAX];
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Spread over every magnitude.
            values.push(x >> (x % 64));
        }
        for p in 0..20 {
            values.push(10u64.pow(p));
            values.push(10u64.pow(p) - 1);
        }
        for v in [u32::MAX as u64 - 1, u32::MAX as u64, u32::MAX as u64 + 1] {
            values.push(v);
        }
        values.extend(0..1000);
        for v in values {
            assert_eq!(u64_string(v), v.to_string());
            let d = Decimal::new(v);
            assert_eq!(
                (d.as_str(), d.len()),
                (v.to_string().as_str(), v.to_string().len())
            );
            assert!(!d.is_empty());
            let mut s = String::from("a=");
            Decimal::new(v).push_to(&mut s);
            assert_eq!(s, format!("a={v}"));
        }
    }
}
