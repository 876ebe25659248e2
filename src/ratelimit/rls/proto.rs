//! The protobuf messages of Envoy's rate limit service protocol, with a
//! small hand-written codec.
//!
//! Why by hand: the module must stay well under 1 MB, and the messages are
//! few and fixed (two encoded, one decoded), so a general protobuf runtime
//! buys nothing: `prost` and its derives cost about 5.5 KB of the optimised
//! module (946 KB with them, 941 KB with this codec, when it replaced
//! them). `prost` is still used by the tests (as a dev-dependency only), to
//! cross-check this codec against an independent implementation.
//!
//! Only the fields meshguard reads or writes are declared. Field numbers
//! follow `envoy/service/ratelimit/v3/rls.proto`,
//! `envoy/extensions/common/ratelimit/v3/ratelimit.proto`,
//! `envoy/config/core/v3/grpc_service.proto` and the well-known types.
//!
//! What the codec supports:
//!
//! - Encoding ([`RateLimitRequest::encode`], [`GrpcService::encode`]):
//!   proto3 semantics, fields in field-number order (the same bytes as
//!   `prost` and protoc's generated code): scalar and string fields equal to
//!   their default (0, "") are left out, each element of a repeated message
//!   field is one length-delimited record, an optional message (including
//!   the `UInt64Value` wrapper) is written, possibly empty, exactly when it
//!   is `Some`. Varints are LEB128.
//! - Decoding ([`RateLimitResponse::decode`]): wire types 0 (varint, at most
//!   10 bytes and within 64 bits), 1 (fixed64), 2 (length-delimited, length
//!   checked against what is left) and 5 (fixed32). Fields this file does
//!   not declare are skipped whatever their (valid) wire type, so newer
//!   services (`quota`, `dynamic_metadata`, `raw_body`...) stay compatible.
//!   Errors: truncated input, an overlong varint, a key over 32 bits, field
//!   number 0, wire types 3 and 4 (groups, unused in proto3) and 6 and 7, a
//!   declared field with another wire type than its own (as `prost` does),
//!   a string that is not UTF-8. As in proto3, a scalar field seen twice
//!   keeps the last value, a message field seen twice is merged, int32
//!   fields (enums included) are the low 32 bits of the varint (negative
//!   values come as 10-byte varints), uint32 the low 32 bits too. Unknown
//!   enum values are kept as numbers.
//! - Decoding never panics. Nesting is that of the fixed messages (at most 3
//!   deep) and unknown fields are skipped without recursion (no groups), so
//!   no depth limit is needed.

use std::fmt;

/// `envoy.service.ratelimit.v3.RateLimitRequest`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RateLimitRequest {
    /// Field 1.
    pub domain: String,
    /// Field 2.
    pub descriptors: Vec<RateLimitDescriptor>,
    /// Field 3: 0 means 1.
    pub hits_addend: u32,
}

/// `envoy.extensions.common.ratelimit.v3.RateLimitDescriptor`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RateLimitDescriptor {
    /// Field 1.
    pub entries: Vec<Entry>,
    /// Field 3, a `google.protobuf.UInt64Value`: this descriptor's own
    /// addend (newer services), when limits of one request cost
    /// differently.
    pub hits_addend: Option<UInt64Value>,
}

/// `RateLimitDescriptor.Entry`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Entry {
    /// Field 1.
    pub key: String,
    /// Field 2.
    pub value: String,
}

/// `google.protobuf.UInt64Value`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct UInt64Value {
    /// Field 1.
    pub value: u64,
}

/// `RateLimitResponse.Code`.
pub const CODE_OK: i32 = 1;
pub const CODE_OVER_LIMIT: i32 = 2;

/// `envoy.service.ratelimit.v3.RateLimitResponse`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RateLimitResponse {
    /// Field 1: a `Code` (UNKNOWN = 0).
    pub overall_code: i32,
    /// Field 2.
    pub statuses: Vec<DescriptorStatus>,
    /// Field 3.
    pub response_headers_to_add: Vec<HeaderValue>,
    /// Field 4.
    pub request_headers_to_add: Vec<HeaderValue>,
}

/// `RateLimitResponse.DescriptorStatus`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DescriptorStatus {
    /// Field 1: a `Code`.
    pub code: i32,
    /// Field 2.
    pub current_limit: Option<RateLimit>,
    /// Field 3.
    pub limit_remaining: u32,
    /// Field 4.
    pub duration_until_reset: Option<ProtoDuration>,
}

/// `RateLimitResponse.RateLimit`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RateLimit {
    /// Field 1.
    pub requests_per_unit: u32,
    /// Field 2: SECOND=1 MINUTE=2 HOUR=3 DAY=4 MONTH=5 YEAR=6 WEEK=7.
    pub unit: i32,
    /// Field 3.
    pub name: String,
}

impl RateLimit {
    /// The unit in seconds (months and years as 30 and 365 days), or None
    /// for UNKNOWN.
    pub fn unit_secs(&self) -> Option<u64> {
        match self.unit {
            1 => Some(1),
            2 => Some(60),
            3 => Some(3600),
            4 => Some(86_400),
            5 => Some(30 * 86_400),
            6 => Some(365 * 86_400),
            7 => Some(7 * 86_400),
            _ => None,
        }
    }
}

/// `google.protobuf.Duration`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ProtoDuration {
    /// Field 1.
    pub seconds: i64,
    /// Field 2.
    pub nanos: i32,
}

impl ProtoDuration {
    /// Whole seconds, rounded up; negative durations are 0.
    pub fn ceil_secs(&self) -> u64 {
        let s = self.seconds.max(0) as u64;
        if self.nanos > 0 {
            s.saturating_add(1)
        } else {
            s
        }
    }
}

/// `envoy.config.core.v3.HeaderValue` (`raw_value` = 3 not read: values
/// sent by services are text).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HeaderValue {
    /// Field 1.
    pub key: String,
    /// Field 2.
    pub value: String,
}

/// `envoy.config.core.v3.GrpcService` with only `envoy_grpc` (= 1).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GrpcService {
    /// Field 1.
    pub envoy_grpc: Option<EnvoyGrpc>,
}

/// `GrpcService.EnvoyGrpc`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EnvoyGrpc {
    /// Field 1.
    pub cluster_name: String,
}

// ---------------------------------------------------------------- wire types

const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LEN: u32 = 2;
const FIXED32: u32 = 5;

// ------------------------------------------------------------------ encoding

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_key(out: &mut Vec<u8>, field: u32, wire: u32) {
    put_varint(out, u64::from(field << 3 | wire));
}

/// A varint scalar (uint32, uint64), left out when 0.
fn put_uint(out: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        put_key(out, field, VARINT);
        put_varint(out, v);
    }
}

/// A length-delimited record, always written (messages).
fn put_bytes(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    put_key(out, field, LEN);
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// A string, left out when empty.
fn put_string(out: &mut Vec<u8>, field: u32, s: &str) {
    if !s.is_empty() {
        put_bytes(out, field, s.as_bytes());
    }
}

impl RateLimitRequest {
    /// The serialized message.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        put_string(&mut out, 1, &self.domain);
        for d in &self.descriptors {
            put_bytes(&mut out, 2, &d.encode());
        }
        put_uint(&mut out, 3, u64::from(self.hits_addend));
        out
    }
}

impl RateLimitDescriptor {
    /// The serialized message.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for e in &self.entries {
            let mut entry = Vec::new();
            put_string(&mut entry, 1, &e.key);
            put_string(&mut entry, 2, &e.value);
            put_bytes(&mut out, 1, &entry);
        }
        if let Some(UInt64Value { value }) = self.hits_addend {
            let mut wrapper = Vec::new();
            put_uint(&mut wrapper, 1, value);
            put_bytes(&mut out, 3, &wrapper);
        }
        out
    }
}

impl GrpcService {
    /// The serialized message.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if let Some(g) = &self.envoy_grpc {
            let mut inner = Vec::new();
            put_string(&mut inner, 1, &g.cluster_name);
            put_bytes(&mut out, 1, &inner);
        }
        out
    }
}

// ------------------------------------------------------------------ decoding

/// Why bytes are not a message we can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeError(&'static str);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for DecodeError {}

/// The unread rest of one message's bytes.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut v = 0u64;
        for i in 0..10 {
            let Some((&b, rest)) = self.rest.split_first() else {
                return Err(DecodeError("truncated varint"));
            };
            self.rest = rest;
            // The 10th byte holds bit 63 only.
            if i == 9 && b > 1 {
                return Err(DecodeError("varint over 64 bits"));
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(DecodeError("varint over 10 bytes"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let (head, rest) = self
            .rest
            .split_at_checked(n)
            .ok_or(DecodeError("field past the end of its message"))?;
        self.rest = rest;
        Ok(head)
    }

    /// The next field's number and wire type, None at the end.
    fn key(&mut self) -> Result<Option<(u32, u32)>, DecodeError> {
        if self.rest.is_empty() {
            return Ok(None);
        }
        let key = u32::try_from(self.varint()?).map_err(|_| DecodeError("key over 32 bits"))?;
        let wire = key & 7;
        if key >> 3 == 0 {
            return Err(DecodeError("field number 0"));
        }
        match wire {
            VARINT | FIXED64 | LEN | FIXED32 => Ok(Some((key >> 3, wire))),
            3 | 4 => Err(DecodeError("group (wire type 3 or 4)")),
            _ => Err(DecodeError("wire type 6 or 7")),
        }
    }

    /// Skips a field this file does not declare.
    fn skip(&mut self, wire: u32) -> Result<(), DecodeError> {
        match wire {
            VARINT => self.varint().map(drop),
            FIXED64 => self.take(8).map(drop),
            LEN => self.bytes(LEN).map(drop),
            _ => self.take(4).map(drop),
        }
    }

    fn expect(wire: u32, want: u32) -> Result<(), DecodeError> {
        if wire == want {
            Ok(())
        } else {
            Err(DecodeError("wrong wire type for a known field"))
        }
    }

    /// A varint field's value (int32 and uint32 keep the low 32 bits).
    fn uint(&mut self, wire: u32) -> Result<u64, DecodeError> {
        Self::expect(wire, VARINT)?;
        self.varint()
    }

    /// A length-delimited field's bytes (a message or a string).
    fn bytes(&mut self, wire: u32) -> Result<&'a [u8], DecodeError> {
        Self::expect(wire, LEN)?;
        let n = self.varint()?;
        self.take(usize::try_from(n).unwrap_or(usize::MAX))
    }

    fn string(&mut self, wire: u32) -> Result<String, DecodeError> {
        std::str::from_utf8(self.bytes(wire)?)
            .map(str::to_owned)
            .map_err(|_| DecodeError("string is not UTF-8"))
    }
}

/// One element of a repeated message field.
fn push<T: Default>(
    list: &mut Vec<T>,
    bytes: &[u8],
    merge: fn(&mut T, &[u8]) -> Result<(), DecodeError>,
) -> Result<(), DecodeError> {
    let mut m = T::default();
    merge(&mut m, bytes)?;
    list.push(m);
    Ok(())
}

impl RateLimitResponse {
    /// Reads a serialized message.
    pub fn decode(buf: &[u8]) -> Result<RateLimitResponse, DecodeError> {
        let mut m = RateLimitResponse::default();
        m.merge(buf)?;
        Ok(m)
    }

    fn merge(&mut self, buf: &[u8]) -> Result<(), DecodeError> {
        let mut r = Reader { rest: buf };
        while let Some((field, wire)) = r.key()? {
            match field {
                1 => self.overall_code = r.uint(wire)? as i32,
                2 => push(&mut self.statuses, r.bytes(wire)?, DescriptorStatus::merge)?,
                3 => push(
                    &mut self.response_headers_to_add,
                    r.bytes(wire)?,
                    HeaderValue::merge,
                )?,
                4 => push(
                    &mut self.request_headers_to_add,
                    r.bytes(wire)?,
                    HeaderValue::merge,
                )?,
                _ => r.skip(wire)?,
            }
        }
        Ok(())
    }
}

impl DescriptorStatus {
    fn merge(&mut self, buf: &[u8]) -> Result<(), DecodeError> {
        let mut r = Reader { rest: buf };
        while let Some((field, wire)) = r.key()? {
            match field {
                1 => self.code = r.uint(wire)? as i32,
                2 => self
                    .current_limit
                    .get_or_insert_with(RateLimit::default)
                    .merge(r.bytes(wire)?)?,
                3 => self.limit_remaining = r.uint(wire)? as u32,
                4 => self
                    .duration_until_reset
                    .get_or_insert_with(ProtoDuration::default)
                    .merge(r.bytes(wire)?)?,
                _ => r.skip(wire)?,
            }
        }
        Ok(())
    }
}

impl RateLimit {
    fn merge(&mut self, buf: &[u8]) -> Result<(), DecodeError> {
        let mut r = Reader { rest: buf };
        while let Some((field, wire)) = r.key()? {
            match field {
                1 => self.requests_per_unit = r.uint(wire)? as u32,
                2 => self.unit = r.uint(wire)? as i32,
                3 => self.name = r.string(wire)?,
                _ => r.skip(wire)?,
            }
        }
        Ok(())
    }
}

impl ProtoDuration {
    fn merge(&mut self, buf: &[u8]) -> Result<(), DecodeError> {
        let mut r = Reader { rest: buf };
        while let Some((field, wire)) = r.key()? {
            match field {
                1 => self.seconds = r.uint(wire)? as i64,
                2 => self.nanos = r.uint(wire)? as i32,
                _ => r.skip(wire)?,
            }
        }
        Ok(())
    }
}

impl HeaderValue {
    fn merge(&mut self, buf: &[u8]) -> Result<(), DecodeError> {
        let mut r = Reader { rest: buf };
        while let Some((field, wire)) = r.key()? {
            match field {
                1 => self.key = r.string(wire)?,
                2 => self.value = r.string(wire)?,
                _ => r.skip(wire)?,
            }
        }
        Ok(())
    }
}
