//! A stored response and its fixed little-endian binary encoding.
//!
//! ```text
//! u8      version (ENTRY_VERSION)
//! [32]    primary key hash (detects slot collisions)
//! [32]    secondary key hash (Vary)
//! u64     request_time  (ns since epoch, host clock)
//! u64     response_time (ns since epoch, host clock)
//! u16     status
//! u16     number of vary names,  then each: u16 len, bytes
//! u16     number of headers,     then each: u16 name len, name, u32 value len, value
//! u32     body len, body
//! ```
//! Decoding checks every length against what is left; any mismatch, an
//! unknown version or trailing bytes make the entry corrupt (dropped).

/// Bumped whenever the layout changes: old entries are then dropped.
pub const ENTRY_VERSION: u8 = 1;
/// Most headers kept in one entry.
pub const MAX_HEADERS: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Entry {
    pub primary: [u8; 32],
    pub secondary: [u8; 32],
    pub request_time_ns: u64,
    pub response_time_ns: u64,
    pub status: u16,
    pub vary_names: Vec<String>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl Entry {
    /// Encoded size, without encoding.
    pub fn encoded_len(&self) -> usize {
        1 + 32
            + 32
            + 8
            + 8
            + 2
            + 2
            + self.vary_names.iter().map(|n| 2 + n.len()).sum::<usize>()
            + 2
            + self
                .headers
                .iter()
                .map(|(n, v)| 2 + n.len() + 4 + v.len())
                .sum::<usize>()
            + 4
            + self.body.len()
    }

    /// Encodes; `None` when a field is too long for its length prefix.
    pub fn encode(&self) -> Option<Vec<u8>> {
        if self.vary_names.len() > u16::MAX as usize
            || self.headers.len() > MAX_HEADERS
            || self.body.len() > u32::MAX as usize
        {
            return None;
        }
        let mut out = Vec::with_capacity(self.encoded_len());
        out.push(ENTRY_VERSION);
        out.extend_from_slice(&self.primary);
        out.extend_from_slice(&self.secondary);
        out.extend_from_slice(&self.request_time_ns.to_le_bytes());
        out.extend_from_slice(&self.response_time_ns.to_le_bytes());
        out.extend_from_slice(&self.status.to_le_bytes());
        out.extend_from_slice(&(self.vary_names.len() as u16).to_le_bytes());
        for n in &self.vary_names {
            put_u16_bytes(&mut out, n.as_bytes())?;
        }
        out.extend_from_slice(&(self.headers.len() as u16).to_le_bytes());
        for (n, v) in &self.headers {
            put_u16_bytes(&mut out, n.as_bytes())?;
            out.extend_from_slice(&u32::try_from(v.len()).ok()?.to_le_bytes());
            out.extend_from_slice(v);
        }
        out.extend_from_slice(&(self.body.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.body);
        Some(out)
    }

    /// Decodes; `Err` names what is wrong (for the warning log line).
    pub fn decode(b: &[u8]) -> Result<Entry, &'static str> {
        let mut r = Reader { b, i: 0 };
        let version = r.u8()?;
        if version != ENTRY_VERSION {
            return Err("unknown entry version");
        }
        let mut e = Entry {
            primary: r.array()?,
            secondary: r.array()?,
            request_time_ns: r.u64()?,
            response_time_ns: r.u64()?,
            status: r.u16()?,
            ..Entry::default()
        };
        let n = r.u16()? as usize;
        for _ in 0..n {
            let len = r.u16()? as usize;
            let s = std::str::from_utf8(r.take(len)?).map_err(|_| "vary name not UTF-8")?;
            e.vary_names.push(s.to_string());
        }
        let n = r.u16()? as usize;
        if n > MAX_HEADERS {
            return Err("too many headers");
        }
        for _ in 0..n {
            let len = r.u16()? as usize;
            let name = std::str::from_utf8(r.take(len)?).map_err(|_| "header name not UTF-8")?;
            let vlen = r.u32()? as usize;
            e.headers.push((name.to_string(), r.take(vlen)?.to_vec()));
        }
        let blen = r.u32()? as usize;
        e.body = r.take(blen)?.to_vec();
        if r.i != b.len() {
            return Err("trailing bytes");
        }
        Ok(e)
    }
}

fn put_u16_bytes(out: &mut Vec<u8>, s: &[u8]) -> Option<()> {
    out.extend_from_slice(&u16::try_from(s.len()).ok()?.to_le_bytes());
    out.extend_from_slice(s);
    Some(())
}

struct Reader<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        let end = self.i.checked_add(n).ok_or("length overflow")?;
        let s = self.b.get(self.i..end).ok_or("truncated")?;
        self.i = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, &'static str> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, &'static str> {
        let mut a = [0u8; 2];
        a.copy_from_slice(self.take(2)?);
        Ok(u16::from_le_bytes(a))
    }
    fn u32(&mut self) -> Result<u32, &'static str> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(a))
    }
    fn u64(&mut self) -> Result<u64, &'static str> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    fn array(&mut self) -> Result<[u8; 32], &'static str> {
        let mut a = [0u8; 32];
        a.copy_from_slice(self.take(32)?);
        Ok(a)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn sample() -> Entry {
        Entry {
            primary: [7; 32],
            secondary: [9; 32],
            request_time_ns: 1,
            response_time_ns: 2,
            status: 200,
            vary_names: vec!["accept".into()],
            headers: vec![
                ("etag".into(), b"\"x\"".to_vec()),
                ("x-bin".into(), vec![0xff, 0]),
            ],
            body: b"hello".to_vec(),
        }
    }

    #[test]
    fn round_trips_and_predicts_its_size() {
        let e = sample();
        let b = e.encode().unwrap_or_default();
        assert_eq!(b.len(), e.encoded_len());
        assert_eq!(Entry::decode(&b), Ok(e));
    }

    #[test]
    fn every_truncation_and_bad_version_is_rejected() {
        let b = sample().encode().unwrap_or_default();
        for n in 0..b.len() {
            assert!(Entry::decode(&b[..n]).is_err(), "prefix {n}");
        }
        let mut v = b.clone();
        v[0] = 99;
        assert_eq!(Entry::decode(&v), Err("unknown entry version"));
        let mut t = b.clone();
        t.push(0);
        assert_eq!(Entry::decode(&t), Err("trailing bytes"));
    }
}
