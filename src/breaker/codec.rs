//! Fixed binary encoding of a [`BreakerState`] in shared data.
//!
//! Layout, little-endian, [`ENCODED_LEN`] = 210 bytes:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | version = [`VERSION`] (1) |
//! | 1 | 1 | phase: 0 CLOSED, 1 OPEN, 2 HALF_OPEN |
//! | 2 | 4 | consecutive_failures (u32) |
//! | 6 | 4 | trips (u32) |
//! | 10 | 8 | opened_at (u64 ns) |
//! | 18 | 8 | open_until (u64 ns) |
//! | 26 | 4 | half_open_in_flight (u32) |
//! | 30 | 4 | half_open_successes (u32) |
//! | 34 | 8 | probe_at (u64 ns) |
//! | 42 | 8 | bucket_width (u64 ns) |
//! | 50 | 16 x 10 | buckets: start (u64), total (u32), failures (u32) |
//!
//! [`decode`] returns `None` for anything else: wrong length, unknown
//! version or phase, `open_until < opened_at`, a bucket with more failures
//! than requests. Callers then reset the key to CLOSED (and log it).

use super::state::{BreakerState, Bucket, Phase, BUCKETS};

pub const VERSION: u8 = 1;
const HEADER_LEN: usize = 50;
const BUCKET_LEN: usize = 16;
pub const ENCODED_LEN: usize = HEADER_LEN + BUCKETS * BUCKET_LEN;

pub fn encode(s: &BreakerState) -> Vec<u8> {
    let mut out = Vec::with_capacity(ENCODED_LEN);
    out.push(VERSION);
    out.push(s.phase as u8);
    out.extend_from_slice(&s.consecutive_failures.to_le_bytes());
    out.extend_from_slice(&s.trips.to_le_bytes());
    out.extend_from_slice(&s.opened_at.to_le_bytes());
    out.extend_from_slice(&s.open_until.to_le_bytes());
    out.extend_from_slice(&s.half_open_in_flight.to_le_bytes());
    out.extend_from_slice(&s.half_open_successes.to_le_bytes());
    out.extend_from_slice(&s.probe_at.to_le_bytes());
    out.extend_from_slice(&s.bucket_width.to_le_bytes());
    for b in &s.buckets {
        out.extend_from_slice(&b.start.to_le_bytes());
        out.extend_from_slice(&b.total.to_le_bytes());
        out.extend_from_slice(&b.failures.to_le_bytes());
    }
    out
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.buf.split_first_chunk::<N>()?;
        self.buf = rest;
        Some(*head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take::<1>().map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.take::<4>().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take::<8>().map(u64::from_le_bytes)
    }
}

pub fn decode(bytes: &[u8]) -> Option<BreakerState> {
    if bytes.len() != ENCODED_LEN {
        return None;
    }
    let mut r = Reader { buf: bytes };
    if r.u8()? != VERSION {
        return None;
    }
    let phase = Phase::from_u8(r.u8()?)?;
    let mut s = BreakerState {
        phase,
        consecutive_failures: r.u32()?,
        trips: r.u32()?,
        opened_at: r.u64()?,
        open_until: r.u64()?,
        half_open_in_flight: r.u32()?,
        half_open_successes: r.u32()?,
        probe_at: r.u64()?,
        bucket_width: r.u64()?,
        buckets: [Bucket::default(); BUCKETS],
    };
    for b in s.buckets.iter_mut() {
        *b = Bucket {
            start: r.u64()?,
            total: r.u32()?,
            failures: r.u32()?,
        };
        if b.failures > b.total {
            return None;
        }
    }
    if s.open_until < s.opened_at {
        return None;
    }
    Some(s)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn sample() -> BreakerState {
        let mut s = BreakerState {
            phase: Phase::HalfOpen,
            consecutive_failures: 3,
            trips: 7,
            opened_at: 1_700_000_000_000_000_000,
            open_until: 1_700_000_005_000_000_000,
            half_open_in_flight: 2,
            half_open_successes: 1,
            probe_at: 1_700_000_006_000_000_000,
            bucket_width: 1_000_000_000,
            buckets: [Bucket::default(); BUCKETS],
        };
        for (i, b) in s.buckets.iter_mut().enumerate() {
            *b = Bucket {
                start: 1_700_000_000 + i as u64,
                total: 100 + i as u32,
                failures: i as u32,
            };
        }
        s
    }

    #[test]
    fn round_trips_every_field() {
        for s in [BreakerState::new(), sample()] {
            let bytes = encode(&s);
            assert_eq!(bytes.len(), ENCODED_LEN);
            assert_eq!(decode(&bytes), Some(s));
        }
        for phase in [Phase::Closed, Phase::Open, Phase::HalfOpen] {
            let s = BreakerState { phase, ..sample() };
            assert_eq!(decode(&encode(&s)), Some(s));
        }
    }

    #[test]
    fn layout_is_fixed_little_endian() {
        let bytes = encode(&sample());
        assert_eq!(ENCODED_LEN, 210);
        assert_eq!(bytes[0], VERSION);
        assert_eq!(bytes[1], 2);
        assert_eq!(&bytes[2..6], &[3, 0, 0, 0]);
        assert_eq!(&bytes[6..10], &[7, 0, 0, 0]);
        assert_eq!(&bytes[10..18], &1_700_000_000_000_000_000u64.to_le_bytes());
        assert_eq!(&bytes[50..58], &1_700_000_000u64.to_le_bytes());
        assert_eq!(&bytes[58..62], &100u32.to_le_bytes());
    }

    #[test]
    fn rejects_short_long_versioned_and_corrupt_inputs() {
        let good = encode(&sample());
        assert_eq!(decode(&[]), None);
        assert_eq!(decode(&good[..ENCODED_LEN - 1]), None);
        assert_eq!(decode(&good[..1]), None);
        let mut long = good.clone();
        long.push(0);
        assert_eq!(decode(&long), None);
        for v in [0u8, 2, 255] {
            let mut b = good.clone();
            b[0] = v;
            assert_eq!(decode(&b), None, "version {v}");
        }
        let mut b = good.clone();
        b[1] = 3;
        assert_eq!(decode(&b), None, "unknown phase");
        let mut b = good.clone();
        // failures (offset 62) > total (100)
        b[62..66].copy_from_slice(&1000u32.to_le_bytes());
        assert_eq!(decode(&b), None, "failures > total");
        let mut b = good.clone();
        b[18..26].copy_from_slice(&0u64.to_le_bytes());
        assert_eq!(decode(&b), None, "open_until < opened_at");
        assert_eq!(decode(&[0xff; ENCODED_LEN]), None);
        assert_eq!(decode(b"CLOSED"), None);
    }
}
