//! Helpers shared by the fuzz targets (each target includes this file).

/// Header fields from fuzz bytes: one field per `\n`-separated line,
/// `name:value`; names are lower-cased (as Envoy hands them over), values
/// are raw bytes (not necessarily UTF-8).
pub fn fields(data: &[u8]) -> Vec<(String, Vec<u8>)> {
    data.split(|b| *b == b'\n')
        .filter_map(|line| {
            let at = line.iter().position(|b| *b == b':')?;
            let name = String::from_utf8_lossy(&line[..at]).to_ascii_lowercase();
            let mut value = &line[at + 1..];
            while let [b' ', rest @ ..] = value {
                value = rest;
            }
            Some((name, value.to_vec()))
        })
        .collect()
}

/// A little-endian reader over fuzz bytes that yields zeros when empty.
pub struct Bytes<'a>(pub &'a [u8]);

impl<'a> Bytes<'a> {
    pub fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    pub fn u64(&mut self) -> u64 {
        (u64::from(self.u32())) | (u64::from(self.u32()) << 32)
    }
    /// Up to `max` bytes, the length taken from the input.
    pub fn slice(&mut self, max: usize) -> &'a [u8] {
        let n = (self.u16() as usize).min(max).min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }
}
