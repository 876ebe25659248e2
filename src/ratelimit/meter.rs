//! Reading a request's usage-based cost from its response as it passes
//! (see `usage.rs` for the settlement): the compiled `usage` section of a
//! limit, the number rules, a streaming JSON scan for a dotted path and a
//! server-sent-events reader that keeps one event.

use crate::config::raw::RawUsage;
use crate::config::{show_str, ConfigError};

/// Default `max_body_bytes`.
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;
/// Largest `max_body_bytes` accepted.
pub const MAX_MAX_BODY_BYTES: i64 = 16 * 1024 * 1024;
/// Most segments of a dotted path.
pub const MAX_PATH_SEGMENTS: usize = 16;
/// Longest segment of a dotted path (and longest key compared).
pub const MAX_SEGMENT: usize = 256;
/// Largest cost a response may report (as `cost`: `policy::MAX_TOKENS`).
pub const MAX_COST: u64 = 1_000_000_000;

/// Where the cost is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A response header (lower case).
    Header(String),
    /// A dotted path in a JSON body.
    Json(Vec<String>),
    /// A dotted path in the JSON data of server-sent events.
    SseJson(Vec<String>),
}

/// A limit's compiled `usage`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsagePolicy {
    pub source: Source,
    pub max_body_bytes: usize,
}

impl UsagePolicy {
    /// Compiles `raw` (at JSON path `path`, the `usage` object).
    pub fn compile(raw: &RawUsage, path: &str) -> Result<UsagePolicy, ConfigError> {
        let given = [
            raw.header.is_some(),
            raw.json.is_some(),
            raw.sse_json.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if given != 1 {
            return Err(ConfigError::new(
                path,
                format!(
                    "expected exactly one of \"header\", \"json\", \"sse_json\" (found {given})"
                ),
            ));
        }
        let max_body_bytes = match raw.max_body_bytes {
            None => DEFAULT_MAX_BODY_BYTES,
            Some(n) if (1..=MAX_MAX_BODY_BYTES).contains(&n) => n as usize,
            Some(n) => {
                return Err(ConfigError::expected(
                    format!("{path}.max_body_bytes"),
                    &format!("an integer from 1 to {MAX_MAX_BODY_BYTES}"),
                    n,
                ))
            }
        };
        let source = if let Some(h) = &raw.header {
            let valid = !h.is_empty()
                && h.len() <= MAX_SEGMENT
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            if !valid {
                return Err(ConfigError::expected(
                    format!("{path}.header"),
                    "a header name (letters, digits and !#$%&'*+-.^_`|~, at most 256 bytes)",
                    show_str(h),
                ));
            }
            Source::Header(h.to_ascii_lowercase())
        } else if let Some(p) = &raw.json {
            Source::Json(dotted(p, &format!("{path}.json"))?)
        } else if let Some(p) = &raw.sse_json {
            Source::SseJson(dotted(p, &format!("{path}.sse_json"))?)
        } else {
            return Err(ConfigError::new(path, "expected a usage source"));
        };
        Ok(UsagePolicy {
            source,
            max_body_bytes,
        })
    }
}

/// A dotted path: 1 to 16 non-empty segments of at most 256 bytes, without
/// quotes, backslashes or control characters.
fn dotted(p: &str, path: &str) -> Result<Vec<String>, ConfigError> {
    let segs: Vec<String> = p.split('.').map(str::to_string).collect();
    let ok = segs.len() <= MAX_PATH_SEGMENTS
        && segs.iter().all(|s| {
            !s.is_empty()
                && s.len() <= MAX_SEGMENT
                && s.chars().all(|c| !c.is_control() && c != '"' && c != '\\')
        });
    if !ok {
        return Err(ConfigError::expected(
            path,
            "a dotted path of 1 to 16 object keys such as \"usage.total_tokens\" (no empty key, no quote or backslash)",
            show_str(p),
        ));
    }
    Ok(segs)
}

/// What a response said about its cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reading {
    /// The cost, in tokens.
    Cost(u64),
    /// No header, no field (or no event carrying it).
    Missing,
    /// A value that is not a cost: not a number, negative, above 10^9.
    Invalid,
    /// A body that is not JSON (or SSE data that is not).
    Malformed,
    /// A body (JSON) or one event (SSE) over `max_body_bytes`.
    Oversize,
}

impl Reading {
    pub fn reason(&self) -> &'static str {
        match self {
            Reading::Cost(_) => "ok",
            Reading::Missing => "missing",
            Reading::Invalid => "invalid",
            Reading::Malformed => "malformed",
            Reading::Oversize => "oversize",
        }
    }
}

/// Parses a cost: a non-negative JSON number (or header value) of at most
/// [`MAX_COST`]; a fraction rounds up. `None` for anything else. Integer
/// arithmetic only (no float parser in the module: it is large in wasm).
pub fn parse_cost(b: &[u8]) -> Option<u64> {
    let s = trim(b);
    if s.is_empty() || s.len() > 64 {
        return None;
    }
    // digits [. digits] [(e|E) [+|-] digits], as JSON writes numbers (a
    // sign is refused: negative; leading zeros are harmless).
    const KEEP: u128 = 10u128.pow(30);
    let mut i = 0;
    let (mut m, mut scale, mut dropped) = (0u128, 0i64, false);
    let digit = |i: usize| s.get(i).filter(|c| c.is_ascii_digit()).map(|c| c - b'0');
    let start = i;
    while let Some(d) = digit(i) {
        if m < KEEP {
            m = m * 10 + u128::from(d);
        } else {
            scale += 1;
            dropped |= d != 0;
        }
        i += 1;
    }
    if i == start {
        return None;
    }
    if s.get(i) == Some(&b'.') {
        i += 1;
        let frac = i;
        while let Some(d) = digit(i) {
            if m < KEEP {
                m = m * 10 + u128::from(d);
                scale -= 1;
            } else {
                dropped |= d != 0;
            }
            i += 1;
        }
        if i == frac {
            return None;
        }
    }
    if matches!(s.get(i), Some(b'e' | b'E')) {
        i += 1;
        let negative = match s.get(i) {
            Some(b'-') => {
                i += 1;
                true
            }
            Some(b'+') => {
                i += 1;
                false
            }
            _ => false,
        };
        let first = i;
        let mut e: i64 = 0;
        while let Some(d) = digit(i) {
            e = (e * 10 + i64::from(d)).min(100_000);
            i += 1;
        }
        if i == first {
            return None;
        }
        scale += if negative { -e } else { e };
    }
    if i != s.len() {
        return None;
    }
    if m == 0 {
        return Some(u64::from(dropped));
    }
    let v = if scale >= 0 {
        // m >= 1: past 10^9 at once when scale > 9.
        if scale > 9 {
            return None;
        }
        m.checked_mul(10u128.pow(scale as u32))?
    } else if scale < -38 {
        1 // 0 < value < 1: rounds up to 1
    } else {
        let p = 10u128.pow((-scale) as u32);
        m / p + u128::from(m % p != 0 || dropped)
    };
    u64::try_from(v).ok().filter(|v| *v <= MAX_COST)
}

fn trim(b: &[u8]) -> &[u8] {
    let ws = |c: &u8| *c == b' ' || *c == b'\t';
    let start = b.iter().position(|c| !ws(c)).unwrap_or(b.len());
    let end = b.iter().rposition(|c| !ws(c)).map_or(start, |e| e + 1);
    b.get(start..end).unwrap_or_default()
}

/// A streaming scan of a JSON document for the number at a dotted path of
/// object keys: constant memory besides the nesting stack (one byte per
/// level), any chunking. Duplicate keys: the largest value counts.
#[derive(Debug, Default, Clone)]
pub struct JsonScan {
    /// One entry per open container: true for an object.
    stack: Vec<bool>,
    /// Containers `1..=on_path` are the path's objects so far.
    on_path: usize,
    expect_key: bool,
    /// The key just read is the next path segment (at `on_path` depth).
    key_matched: bool,
    in_string: bool,
    escape: bool,
    string_is_key: bool,
    key: Vec<u8>,
    key_too_long: bool,
    in_scalar: bool,
    capturing: bool,
    scalar: Vec<u8>,
    /// A root value was complete.
    root_done: bool,
    malformed: bool,
    found: Option<u64>,
    invalid: bool,
}

impl JsonScan {
    pub fn feed(&mut self, path: &[String], chunk: &[u8]) {
        for &b in chunk {
            if self.malformed {
                return;
            }
            self.byte(path, b);
        }
    }

    fn byte(&mut self, path: &[String], b: u8) {
        if self.in_string {
            if self.escape {
                self.escape = false;
            } else if b == b'\\' {
                self.escape = true;
            } else if b == b'"' {
                self.in_string = false;
                if self.string_is_key {
                    let depth = self.stack.len();
                    self.key_matched = depth == self.on_path
                        && !self.key_too_long
                        && path
                            .get(depth.wrapping_sub(1))
                            .is_some_and(|seg| seg.as_bytes() == self.key.as_slice());
                } else {
                    self.value_done();
                }
                return;
            }
            if self.string_is_key {
                if self.key.len() < MAX_SEGMENT {
                    self.key.push(b);
                } else {
                    self.key_too_long = true;
                }
            }
            return;
        }
        if self.in_scalar {
            if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'+' | b'-') {
                if self.capturing && self.scalar.len() < 64 {
                    self.scalar.push(b);
                } else if self.capturing {
                    self.invalid = true;
                    self.capturing = false;
                }
                return;
            }
            self.in_scalar = false;
            if self.capturing {
                self.capturing = false;
                match parse_cost(&self.scalar) {
                    Some(v) => self.found = Some(self.found.map_or(v, |f| f.max(v))),
                    None => self.invalid = true,
                }
            }
            self.value_done();
        }
        match b {
            b' ' | b'\t' | b'\n' | b'\r' => {}
            b'{' | b'[' => {
                let depth = self.stack.len();
                if !self.value_start() {
                    return;
                }
                if self.is_target(path) {
                    self.invalid = true; // an object or array where a number belongs
                }
                if b == b'{' && depth == self.on_path && depth < path.len() {
                    // The root object, or the value of a matching key.
                    if depth == 0 || self.key_matched {
                        self.on_path = depth + 1;
                    }
                }
                self.key_matched = false;
                self.stack.push(b == b'{');
                self.expect_key = b == b'{';
            }
            b'}' | b']' => {
                let depth = self.stack.len();
                match self.stack.pop() {
                    Some(obj) if obj == (b == b'}') => {}
                    _ => {
                        self.malformed = true;
                        return;
                    }
                }
                if self.on_path == depth {
                    self.on_path = depth - 1;
                }
                self.expect_key = false;
                self.value_done();
            }
            b':' => {
                if self.stack.last() != Some(&true) {
                    self.malformed = true;
                }
                self.expect_key = false;
            }
            b',' => match self.stack.last() {
                Some(true) => self.expect_key = true,
                Some(false) => {}
                None => self.malformed = true,
            },
            b'"' => {
                self.in_string = true;
                if self.expect_key && self.stack.last() == Some(&true) {
                    self.string_is_key = true;
                    self.key.clear();
                    self.key_too_long = false;
                    self.expect_key = false;
                } else {
                    self.string_is_key = false;
                    if !self.value_start() {
                        return;
                    }
                    if self.is_target(path) {
                        self.invalid = true; // a string where a number belongs
                    }
                    self.key_matched = false;
                }
            }
            _ if b.is_ascii_alphanumeric() || b == b'-' => {
                if !self.value_start() {
                    return;
                }
                self.in_scalar = true;
                self.capturing = self.is_target(path);
                self.scalar.clear();
                if self.capturing {
                    self.scalar.push(b);
                }
                self.key_matched = false;
            }
            _ => self.malformed = true,
        }
    }

    /// A value begins: not after a complete root value.
    fn value_start(&mut self) -> bool {
        if self.stack.is_empty() && self.root_done {
            self.malformed = true;
            return false;
        }
        true
    }

    /// The value beginning now is the path's target.
    fn is_target(&self, path: &[String]) -> bool {
        self.key_matched && self.stack.len() == self.on_path && self.on_path == path.len()
    }

    fn value_done(&mut self) {
        if self.stack.is_empty() {
            self.root_done = true;
        }
    }

    /// The document ended: what it said.
    pub fn finish(&mut self, path: &[String]) -> Reading {
        // A number at the very end of a document has no byte after it.
        if self.in_scalar && !self.malformed {
            self.byte(path, b' ');
        }
        if self.malformed || self.in_string || !self.stack.is_empty() || !self.root_done {
            return Reading::Malformed;
        }
        if self.invalid {
            return Reading::Invalid;
        }
        match self.found {
            Some(v) => Reading::Cost(v),
            None => Reading::Missing,
        }
    }
}

/// Reads server-sent events as they pass, keeping one event's data (at
/// most `max` bytes) and the reading of the last event whose JSON data
/// carries the path.
#[derive(Debug, Default, Clone)]
pub struct SseScan {
    line: Vec<u8>,
    line_over: bool,
    data: Vec<u8>,
    has_data: bool,
    event_over: bool,
    after_cr: bool,
    last: Option<Reading>,
    oversize: bool,
}

impl SseScan {
    pub fn feed(&mut self, path: &[String], max: usize, chunk: &[u8]) {
        let mut rest = chunk;
        while !rest.is_empty() {
            if self.after_cr {
                self.after_cr = false;
                if let Some((b'\n', r)) = rest.split_first() {
                    rest = r;
                    continue;
                }
            }
            match rest.iter().position(|b| *b == b'\n' || *b == b'\r') {
                Some(i) => {
                    let (part, tail) = rest.split_at(i);
                    self.push_line(part, max);
                    if tail.first() == Some(&b'\r') {
                        self.after_cr = true;
                    }
                    rest = tail.get(1..).unwrap_or_default();
                    self.end_line(path, max);
                }
                None => {
                    self.push_line(rest, max);
                    rest = &[];
                }
            }
        }
    }

    fn push_line(&mut self, part: &[u8], max: usize) {
        // A data line longer than the event bound cannot fit the event.
        if self.line_over || self.line.len() + part.len() > max + 6 {
            self.line_over = true;
            self.line.clear();
        } else {
            self.line.extend_from_slice(part);
        }
    }

    fn end_line(&mut self, path: &[String], max: usize) {
        let line = std::mem::take(&mut self.line);
        let over = std::mem::take(&mut self.line_over);
        if line.is_empty() && !over {
            self.dispatch(path);
        } else if over {
            // Only a data line can be that long to matter; any long line
            // makes the event unreadable rather than misread.
            self.event_over = true;
        } else if let Some(v) = field(&line, b"data") {
            if self.has_data {
                self.data.push(b'\n');
            }
            self.has_data = true;
            if self.data.len() + v.len() > max {
                self.event_over = true;
            } else if !self.event_over {
                self.data.extend_from_slice(v);
            }
        }
        self.line = line;
        self.line.clear();
    }

    fn dispatch(&mut self, path: &[String]) {
        if self.event_over {
            self.oversize = true;
        } else if self.has_data {
            let mut scan = JsonScan::default();
            scan.feed(path, &self.data);
            // `[DONE]` and events without the field say nothing.
            if let r @ (Reading::Cost(_) | Reading::Invalid) = scan.finish(path) {
                self.last = Some(r);
            }
        }
        self.data.clear();
        self.has_data = false;
        self.event_over = false;
    }

    /// The stream ended (an unterminated last event still counts).
    pub fn finish(&mut self, path: &[String], max: usize) -> Reading {
        if !self.line.is_empty() || self.line_over {
            self.end_line(path, max);
        }
        if self.has_data || self.event_over {
            self.dispatch(path);
        }
        match self.last {
            Some(r) => r,
            None if self.oversize => Reading::Oversize,
            None => Reading::Missing,
        }
    }
}

/// The value of field `name` in an SSE line (`name:value`, one optional
/// space after the colon).
fn field<'a>(line: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let rest = line.strip_prefix(name)?;
    let v = rest.strip_prefix(b":")?;
    Some(v.strip_prefix(b" ").unwrap_or(v))
}

/// Reads one limit's cost from a response.
#[derive(Debug, Clone)]
pub enum Meter {
    Header(Option<Reading>),
    Json {
        scan: JsonScan,
        seen: usize,
        over: bool,
    },
    Sse(SseScan),
}

impl Meter {
    pub fn new(p: &UsagePolicy) -> Meter {
        match p.source {
            Source::Header(_) => Meter::Header(None),
            Source::Json(_) => Meter::Json {
                scan: JsonScan::default(),
                seen: 0,
                over: false,
            },
            Source::SseJson(_) => Meter::Sse(SseScan::default()),
        }
    }

    /// Response headers: a header source reads its value.
    pub fn on_headers(&mut self, p: &UsagePolicy, header: impl Fn(&str) -> Option<Vec<u8>>) {
        if let (Meter::Header(r), Source::Header(name)) = (self, &p.source) {
            *r = Some(match header(name) {
                Some(v) => match parse_cost(&v) {
                    Some(c) => Reading::Cost(c),
                    None => Reading::Invalid,
                },
                None => Reading::Missing,
            });
        }
    }

    /// Does this meter read the body?
    pub fn wants_body(&self) -> bool {
        match self {
            Meter::Header(_) => false,
            Meter::Json { over, .. } => !over,
            Meter::Sse(_) => true,
        }
    }

    /// A body chunk passing.
    pub fn on_body(&mut self, p: &UsagePolicy, chunk: &[u8]) {
        match (self, &p.source) {
            (Meter::Json { scan, seen, over }, Source::Json(path)) => {
                if *over {
                    return;
                }
                *seen = seen.saturating_add(chunk.len());
                if *seen > p.max_body_bytes {
                    *over = true;
                    *scan = JsonScan::default(); // free the stack
                    return;
                }
                scan.feed(path, chunk);
            }
            (Meter::Sse(scan), Source::SseJson(path)) => scan.feed(path, p.max_body_bytes, chunk),
            _ => {}
        }
    }

    /// The response ended (or the stream did): the reading.
    pub fn finish(&mut self, p: &UsagePolicy) -> Reading {
        match (self, &p.source) {
            (Meter::Header(r), _) => r.unwrap_or(Reading::Missing),
            (Meter::Json { over: true, .. }, _) => Reading::Oversize,
            (Meter::Json { scan, .. }, Source::Json(path)) => scan.finish(path),
            (Meter::Sse(scan), Source::SseJson(path)) => scan.finish(path, p.max_body_bytes),
            _ => Reading::Missing,
        }
    }
}
