//! proxy-wasm's serialized header map, written straight from byte slices.
//!
//! The ABI's format (little-endian): the pair count (u32), then each pair's
//! name size and value size (u32 each), then each name and value, each
//! followed by a NUL. Building it here lets a local reply go from the
//! stored bytes to the host in one buffer, instead of through
//! `Vec<(&str, &str)>` copies, UTF-8 checks and a serializer of pairs
//! (three allocations and a pass per header less on every cache hit).
//! [`decode_pairs`] reads the same format back from the host. Header values are bytes: Envoy's own header values (what a
//! cached response carries) need not be UTF-8.

/// A header map being written; [`HeaderMap::finish`] gives the bytes.
/// Pairs keep their order; names are compared as given (meshguard's are
/// lower case).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HeaderMap {
    sizes: Vec<(u32, u32)>,
    data: Vec<u8>,
}

impl HeaderMap {
    /// Room for `pairs` headers of `bytes` name and value bytes in all.
    pub fn with_capacity(pairs: usize, bytes: usize) -> Self {
        HeaderMap {
            sizes: Vec::with_capacity(pairs),
            data: Vec::with_capacity(bytes + 2 * pairs),
        }
    }

    /// Adds one header. A name or value over 4 GiB (impossible for a
    /// header Envoy accepted) is skipped rather than truncated.
    pub fn add(&mut self, name: &[u8], value: &[u8]) {
        let (Ok(n), Ok(v)) = (u32::try_from(name.len()), u32::try_from(value.len())) else {
            return;
        };
        self.sizes.push((n, v));
        self.data.extend_from_slice(name);
        self.data.push(0);
        self.data.extend_from_slice(value);
        self.data.push(0);
    }

    /// A map of these pairs, in order.
    pub fn from_pairs<N: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(N, V)]) -> Self {
        let bytes = pairs
            .iter()
            .map(|(n, v)| n.as_ref().len() + v.as_ref().len())
            .sum();
        let mut m = HeaderMap::with_capacity(pairs.len(), bytes);
        for (n, v) in pairs {
            m.add(n.as_ref(), v.as_ref());
        }
        m
    }

    /// The pairs, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        let mut pos = 0usize;
        self.sizes.iter().map(move |&(n, v)| {
            let (n, v) = (n as usize, v as usize);
            // In bounds: `add` wrote each pair's bytes with its sizes.
            let name = self.data.get(pos..pos + n).unwrap_or_default();
            let value = self
                .data
                .get(pos + n + 1..pos + n + 1 + v)
                .unwrap_or_default();
            pos += n + v + 2;
            (name, value)
        })
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.iter()
            .find(|(n, _)| *n == name.as_bytes())
            .map(|(_, v)| v)
    }

    /// The pairs as owned text names and byte values (tests, logs).
    pub fn to_pairs(&self) -> Vec<(String, Vec<u8>)> {
        self.iter()
            .map(|(n, v)| (String::from_utf8_lossy(n).into_owned(), v.to_vec()))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.sizes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sizes.is_empty()
    }

    /// The serialized map.
    pub fn finish(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + 8 * self.sizes.len() + self.data.len());
        out.extend_from_slice(&(self.sizes.len() as u32).to_le_bytes());
        for (n, v) in &self.sizes {
            out.extend_from_slice(&n.to_le_bytes());
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&self.data);
        out
    }
}

/// The serialized map of `pairs`, in order, in one allocation (two passes
/// over `pairs`: sizes, then bytes): what `HeaderMap` builds, without its
/// two vectors and the copy of `finish`, for a caller that has every pair
/// at hand (the native module reading Envoy's request headers). A pair
/// over 4 GiB is skipped, as `HeaderMap::add` does.
pub fn serialize<'a, I>(pairs: I) -> Vec<u8>
where
    I: Iterator<Item = (&'a [u8], &'a [u8])> + Clone,
{
    let fits =
        |(n, v): &(&[u8], &[u8])| u32::try_from(n.len()).is_ok() && u32::try_from(v.len()).is_ok();
    let (count, bytes) = pairs
        .clone()
        .filter(fits)
        .fold((0usize, 0usize), |(c, b), (n, v)| {
            (c + 1, b + n.len() + v.len() + 2)
        });
    let mut out = Vec::with_capacity(4 + 8 * count + bytes);
    out.extend_from_slice(&(count as u32).to_le_bytes());
    for (n, v) in pairs.clone().filter(fits) {
        out.extend_from_slice(&(n.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (n, v) in pairs.filter(fits) {
        out.extend_from_slice(n);
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

/// Reads a serialized map the host returned: `(name, value)` pairs, names
/// as text (lossy: Envoy's names are lower-case ASCII), values as bytes.
/// A malformed buffer (truncated, sizes past its end, missing NULs) gives
/// `None`: the host's bytes are checked, never trusted to index with.
pub fn decode_pairs(b: &[u8]) -> Option<Vec<(String, Vec<u8>)>> {
    // Every pair takes at least 10 bytes (two sizes, two NULs): a count
    // larger than that allows is refused below, never allocated for.
    let mut out = Vec::with_capacity(pair_count(b).unwrap_or(0).min(b.len() / 10));
    visit_pairs(b, |name, value| {
        out.push((String::from_utf8_lossy(name).into_owned(), value.to_vec()))
    })?;
    Some(out)
}

/// The number of pairs a serialized map announces (unchecked).
pub fn pair_count(b: &[u8]) -> Option<usize> {
    let w: [u8; 4] = b.get(..4)?.try_into().ok()?;
    Some(u32::from_le_bytes(w) as usize)
}

/// Calls `f(name, value)` for each pair of a serialized map, in order, with
/// slices of `b` (no copy): for callers that keep only some pairs, or keep
/// them their own way. The whole buffer is checked first: a malformed one
/// calls `f` for nothing and gives `None`; else the number of pairs.
pub fn visit_pairs<'a>(b: &'a [u8], mut f: impl FnMut(&'a [u8], &'a [u8])) -> Option<usize> {
    let n = pair_count(b)?;
    let first = 8usize.checked_mul(n)?.checked_add(4)?;
    if first > b.len() {
        return None;
    }
    let mut pos = first;
    for i in 0..n {
        pos = pair_at(b, i, pos)?.2;
    }
    let mut pos = first;
    for i in 0..n {
        let (name, value, next) = pair_at(b, i, pos)?;
        f(name, value);
        pos = next;
    }
    Some(n)
}

/// Pair `i`, whose name starts at `pos`: its name, its value, and where the
/// next pair's name starts. `None` if the sizes run past the buffer or a
/// terminating NUL is missing.
fn pair_at(b: &[u8], i: usize, pos: usize) -> Option<(&[u8], &[u8], usize)> {
    let u32_at = |at: usize| -> Option<usize> {
        let w: [u8; 4] = b.get(at..at.checked_add(4)?)?.try_into().ok()?;
        Some(u32::from_le_bytes(w) as usize)
    };
    let (ns, vs) = (u32_at(4 + 8 * i)?, u32_at(8 + 8 * i)?);
    let name = b.get(pos..pos.checked_add(ns)?)?;
    let pos = pos + ns;
    if b.get(pos) != Some(&0) {
        return None;
    }
    let value = b.get(pos + 1..(pos + 1).checked_add(vs)?)?;
    let pos = pos + 1 + vs;
    if b.get(pos) != Some(&0) {
        return None;
    }
    Some((name, value, pos + 1))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    /// The ABI's decoding, written independently of the encoder.
    fn decode(b: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap()) as usize;
        let n = u32_at(0);
        let mut pos = 4 + 8 * n;
        let mut out = Vec::new();
        for i in 0..n {
            let (ns, vs) = (u32_at(4 + 8 * i), u32_at(8 + 8 * i));
            let name = b[pos..pos + ns].to_vec();
            assert_eq!(b[pos + ns], 0, "name NUL");
            pos += ns + 1;
            let value = b[pos..pos + vs].to_vec();
            assert_eq!(b[pos + vs], 0, "value NUL");
            pos += vs + 1;
            out.push((name, value));
        }
        assert_eq!(pos, b.len(), "nothing after the last pair");
        out
    }

    /// `serialize` writes exactly what `HeaderMap` writes for the same
    /// pairs (in order, any bytes, duplicates kept, the empty map).
    #[test]
    fn serialize_in_one_pass_equals_the_header_map() {
        let cases: Vec<Vec<(&[u8], &[u8])>> = vec![
            vec![],
            vec![
                (b":path", b"/a?b"),
                (b"x-dup", b"1"),
                (b"x-dup", b""),
                (b"x-bin", &[0, 0xff, b'a']),
            ],
            vec![(b"", b"")],
        ];
        for pairs in cases {
            let one = serialize(pairs.iter().copied());
            assert_eq!(one, HeaderMap::from_pairs(&pairs).finish());
            let back: Vec<(Vec<u8>, Vec<u8>)> = pairs
                .iter()
                .map(|(n, v)| (n.to_vec(), v.to_vec()))
                .collect();
            assert_eq!(decode(&one), back);
        }
    }

    #[test]
    fn an_empty_map_is_a_zero_count() {
        let m = HeaderMap::default();
        assert!(m.is_empty());
        assert_eq!(m.finish(), vec![0, 0, 0, 0]);
    }

    #[test]
    fn pairs_round_trip_in_order_with_any_bytes() {
        let pairs: Vec<(&[u8], &[u8])> = vec![
            (b"content-type", b"text/plain"),
            (b"x-empty", b""),
            (b"x-latin1", &[b'o', 0xe9, 0xff]),
            (b"cache-status", b"meshguard; hit; ttl=42"),
        ];
        let mut m = HeaderMap::with_capacity(2, 8);
        for (n, v) in &pairs {
            m.add(n, v);
        }
        assert_eq!(m.len(), 4);
        let want: Vec<(Vec<u8>, Vec<u8>)> = pairs
            .iter()
            .map(|(n, v)| (n.to_vec(), v.to_vec()))
            .collect();
        assert_eq!(decode(&m.finish()), want);
    }

    #[test]
    fn pairs_read_back_and_the_first_value_wins() {
        let m = HeaderMap::from_pairs(&[("a", "1"), ("b", ""), ("a", "2")]);
        let got: Vec<(&[u8], &[u8])> = m.iter().collect();
        assert_eq!(got, vec![(&b"a"[..], &b"1"[..]), (b"b", b""), (b"a", b"2")]);
        assert_eq!(m.get("a"), Some(&b"1"[..]));
        assert_eq!(m.get("b"), Some(&b""[..]));
        assert_eq!(m.get("c"), None);
        assert_eq!(
            m.to_pairs(),
            vec![
                ("a".to_string(), b"1".to_vec()),
                ("b".to_string(), Vec::new()),
                ("a".to_string(), b"2".to_vec())
            ]
        );
        assert_eq!(
            decode(&m.finish()),
            m.iter()
                .map(|(n, v)| (n.to_vec(), v.to_vec()))
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn decode_pairs_reads_what_finish_writes() {
        let m = HeaderMap::from_pairs(&[
            (&b":path"[..], &b"/a?b"[..]),
            (b"x-empty", b""),
            (b"x-bytes", &[0xff, 0, 1]),
        ]);
        assert_eq!(decode_pairs(&m.finish()), Some(m.to_pairs()));
        assert_eq!(decode_pairs(&[0, 0, 0, 0]), Some(Vec::new()));
    }

    #[test]
    fn decode_pairs_refuses_malformed_buffers_without_panicking() {
        let good = HeaderMap::from_pairs(&[("name", "value"), ("b", "c")]).finish();
        // Every truncation is refused.
        for cut in 0..good.len() {
            assert_eq!(decode_pairs(&good[..cut]), None, "cut at {cut}");
        }
        // A missing NUL is refused.
        let mut bad = good.clone();
        let nul = 4 + 16 + 4; // after "name"
        bad[nul] = b'x';
        assert_eq!(decode_pairs(&bad), None);
        // Sizes and counts past the end (or overflowing) are refused.
        let mut huge = good.clone();
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode_pairs(&huge), None);
        let mut count = good;
        count[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode_pairs(&count), None);
    }

    #[test]
    fn visit_pairs_lends_every_pair_in_order_or_none_of_a_malformed_buffer() {
        let good = HeaderMap::from_pairs(&[(":path", "/x"), ("a", ""), ("b", "c")]).finish();
        let mut seen: Vec<(&[u8], &[u8])> = Vec::new();
        assert_eq!(visit_pairs(&good, |n, v| seen.push((n, v))), Some(3));
        assert_eq!(
            seen,
            vec![
                (&b":path"[..], &b"/x"[..]),
                (&b"a"[..], &b""[..]),
                (&b"b"[..], &b"c"[..])
            ]
        );
        // A buffer whose last pair is broken: not even the good pairs
        // before it are visited.
        let mut calls = 0;
        let cut = &good[..good.len() - 1];
        assert_eq!(visit_pairs(cut, |_, _| calls += 1), None);
        assert_eq!(calls, 0);
        let odd = HeaderMap::from_pairs(&[(&[b'a', 0xff][..], &b"v"[..])]).finish();
        assert_eq!(decode_pairs(&odd).unwrap()[0].0, "a\u{fffd}");
    }

    #[test]
    fn matches_the_layout_of_the_sdk_serializer() {
        // One pair, byte by byte: count, sizes, "a\0bc\0".
        let mut m = HeaderMap::default();
        m.add(b"a", b"bc");
        assert_eq!(
            m.finish(),
            vec![1, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, b'a', 0, b'b', b'c', 0]
        );
    }
}
