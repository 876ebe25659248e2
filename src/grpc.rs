//! gRPC awareness (docs/configuration.md, "gRPC"): the pure rules meshguard follows for
//! gRPC and gRPC-Web calls, with no host and no feature behind them.
//!
//! - [`Kind::of`]: whether a request is gRPC (`content-type`
//!   `application/grpc`, `application/grpc+proto`, `application/grpc+json`,
//!   ...) or gRPC-Web (`application/grpc-web`, `application/grpc-web+proto`,
//!   `application/grpc-web-text`, ...).
//! - [`Code`]: the 17 status codes, by number and by name (configuration
//!   accepts both), and [`Code::for_reply`]: the code of each reply
//!   meshguard generates (400 `INVALID_ARGUMENT`, 401 `UNAUTHENTICATED`,
//!   403 `PERMISSION_DENIED`, 429 `RESOURCE_EXHAUSTED` unless the route
//!   chose another, 503 `UNAVAILABLE`).
//! - [`encode_message`]: `grpc-message` percent-encoding (every byte outside
//!   printable ASCII, and `%`, as `%XX`), capped at [`MAX_MESSAGE`] bytes.
//! - [`parse_status`]: a `grpc-status` value from an upstream, which may be
//!   anything: malformed values are a [`Status::Malformed`], never a panic.
//! - [`service_method`]: `/pkg.Service/Method` split into its two names.
//!
//! A reply to a gRPC call is *trailers-only* (HTTP 200, no body, the status
//! in `grpc-status` / `grpc-message` headers), which every gRPC client reads
//! as the call's final status. A reply to a gRPC-Web call carries the same
//! headers with the request's own gRPC-Web `content-type`, and its body is
//! one gRPC-Web trailers frame with the same status ([`web_trailers_frame`],
//! base64 for `-text`): clients that read the status from the headers and
//! clients that wait for the trailers frame both find it, and the body
//! keeps hosts that drop the `content-type` of an empty local reply (Envoy
//! does) from dropping it.

/// How a request speaks gRPC, from its `content-type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `application/grpc` and its `+<format>` subtypes.
    Grpc,
    /// `application/grpc-web` / `application/grpc-web-text` and their
    /// `+<format>` subtypes; `text`: the `-text` (base64) form.
    GrpcWeb { text: bool },
}

impl Kind {
    /// The gRPC kind of a request with this `content-type` (first value),
    /// `None` for anything else. The media type is compared ignoring ASCII
    /// case; parameters (`; charset=...`) are allowed.
    pub fn of(content_type: Option<&[u8]>) -> Option<Kind> {
        let ct = media_type(content_type?);
        let rest = strip_prefix_ignore_case(ct, b"application/grpc")?;
        let subtype_ends = |r: &[u8]| r.first().is_none_or(|&c| c == b'+');
        if subtype_ends(rest) {
            return Some(Kind::Grpc);
        }
        let web = strip_prefix_ignore_case(rest, b"-web")?;
        if subtype_ends(web) {
            return Some(Kind::GrpcWeb { text: false });
        }
        let text = strip_prefix_ignore_case(web, b"-text")?;
        subtype_ends(text).then_some(Kind::GrpcWeb { text: true })
    }

    /// The `content-type` of a reply to a request of this kind: gRPC's
    /// `application/grpc`; gRPC-Web echoes the request's media type (so a
    /// `-text` client reads the `-text` form), which [`Kind::of`] accepted.
    pub fn reply_content_type<'a>(&self, request_content_type: Option<&'a [u8]>) -> &'a [u8] {
        match self {
            Kind::Grpc => b"application/grpc",
            Kind::GrpcWeb { .. } => request_content_type
                .map(media_type)
                .unwrap_or(b"application/grpc-web"),
        }
    }
}

/// A `content-type` value without parameters and surrounding spaces.
fn media_type(v: &[u8]) -> &[u8] {
    let before_params = v.split(|&b| b == b';').next().unwrap_or_default();
    before_params.trim_ascii()
}

fn strip_prefix_ignore_case<'a>(v: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    let (head, rest) = v.split_at_checked(prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then_some(rest)
}

/// A gRPC status code (0..=16).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Code(u8);

/// The codes' names, by number (the gRPC specification's spelling).
const NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

impl Code {
    pub const OK: Code = Code(0);
    pub const CANCELLED: Code = Code(1);
    pub const UNKNOWN: Code = Code(2);
    pub const INVALID_ARGUMENT: Code = Code(3);
    pub const DEADLINE_EXCEEDED: Code = Code(4);
    pub const PERMISSION_DENIED: Code = Code(7);
    pub const RESOURCE_EXHAUSTED: Code = Code(8);
    pub const UNIMPLEMENTED: Code = Code(12);
    pub const INTERNAL: Code = Code(13);
    pub const UNAVAILABLE: Code = Code(14);
    pub const DATA_LOSS: Code = Code(15);
    pub const UNAUTHENTICATED: Code = Code(16);

    /// The code with this number, if there is one.
    pub fn from_number(n: u64) -> Option<Code> {
        (n < NAMES.len() as u64).then_some(Code(n as u8))
    }

    /// The code with this name (`"UNAVAILABLE"`), ignoring ASCII case.
    pub fn from_name(name: &str) -> Option<Code> {
        NAMES
            .iter()
            .position(|n| n.eq_ignore_ascii_case(name))
            .map(|i| Code(i as u8))
    }

    /// A configuration value: a name (`"UNAVAILABLE"`), a number (`14`) or
    /// a number in a string (`"14"`).
    pub fn from_json(v: &serde_json::Value) -> Option<Code> {
        match v {
            serde_json::Value::Number(n) => Code::from_number(n.as_u64()?),
            serde_json::Value::String(s) => match s.parse::<u64>() {
                Ok(n) => Code::from_number(n),
                Err(_) => Code::from_name(s),
            },
            _ => None,
        }
    }

    pub fn number(self) -> u32 {
        u32::from(self.0)
    }

    pub fn name(self) -> &'static str {
        NAMES.get(usize::from(self.0)).copied().unwrap_or("UNKNOWN")
    }

    /// The `grpc-status` value (the number in decimal).
    pub fn header_value(self) -> &'static str {
        const DIGITS: [&str; 17] = [
            "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15",
            "16",
        ];
        DIGITS.get(usize::from(self.0)).copied().unwrap_or("2")
    }

    /// The code of a reply meshguard generates, by the HTTP status the
    /// same refusal has over HTTP: 400 `INVALID_ARGUMENT`, 401
    /// `UNAUTHENTICATED`, 403 `PERMISSION_DENIED`, 429 `rate_limited` (the
    /// route's choice, `RESOURCE_EXHAUSTED` by default), 503 (breaker
    /// open, rate limit service unavailable, signing keys unavailable)
    /// `UNAVAILABLE`; anything else as gRPC maps HTTP statuses (404
    /// `UNIMPLEMENTED`, 502/504 `UNAVAILABLE`, else `UNKNOWN`).
    pub fn for_reply(http_status: u32, rate_limited: Code) -> Code {
        match http_status {
            400 => Code::INVALID_ARGUMENT,
            401 => Code::UNAUTHENTICATED,
            403 => Code::PERMISSION_DENIED,
            404 => Code::UNIMPLEMENTED,
            429 => rate_limited,
            502..=504 => Code::UNAVAILABLE,
            _ => Code::UNKNOWN,
        }
    }
}

/// A set of codes (a bit per code).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CodeSet(u32);

impl CodeSet {
    /// `UNKNOWN`, `DEADLINE_EXCEEDED`, `INTERNAL`, `UNAVAILABLE`,
    /// `DATA_LOSS`: what a breaker counts as failures by default (the
    /// server or the path to it failed; the other codes are answers about
    /// the call itself).
    pub const SERVER_FAILURES: CodeSet = CodeSet(
        1 << Code::UNKNOWN.0
            | 1 << Code::DEADLINE_EXCEEDED.0
            | 1 << Code::INTERNAL.0
            | 1 << Code::UNAVAILABLE.0
            | 1 << Code::DATA_LOSS.0,
    );

    pub fn insert(&mut self, c: Code) {
        self.0 |= 1 << c.0;
    }

    pub fn contains(&self, c: Code) -> bool {
        self.0 & (1 << c.0) != 0
    }
}

/// A `grpc-status` value as an upstream sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// A code (a number above 16 reads as `UNKNOWN`, as gRPC clients do).
    Code(Code),
    /// Not a decimal number (empty, signs, spaces, letters, more than 10
    /// digits...): the response is broken, which counts as a failure.
    Malformed,
}

/// Parses a `grpc-status` value: 1 to 10 ASCII digits.
pub fn parse_status(v: &[u8]) -> Status {
    if v.is_empty() || v.len() > 10 || !v.iter().all(u8::is_ascii_digit) {
        return Status::Malformed;
    }
    let n = v.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
    Status::Code(Code::from_number(n).unwrap_or(Code::UNKNOWN))
}

/// Longest `grpc-message` meshguard sends (bytes before encoding).
pub const MAX_MESSAGE: usize = 512;

/// Percent-encodes a `grpc-message` (gRPC over HTTP/2: bytes outside
/// 0x20..=0x7E, and `%`, become `%XX` with upper-case hex), cut at
/// [`MAX_MESSAGE`] bytes on a character boundary.
pub fn encode_message(msg: &str) -> String {
    let mut end = msg.len().min(MAX_MESSAGE);
    while !msg.is_char_boundary(end) {
        end -= 1;
    }
    // An upper-case hex digit of a nibble (0..=15: never the fallback).
    let hex = |n: u8| {
        char::from_digit(u32::from(n), 16)
            .unwrap_or('0')
            .to_ascii_uppercase()
    };
    let mut out = String::with_capacity(end + 8);
    for &b in msg.as_bytes().get(..end).unwrap_or_default() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(hex(b >> 4));
            out.push(hex(b & 0xf));
        }
    }
    out
}

/// A gRPC-Web trailers frame (flag byte `0x80`, 4-byte big-endian length,
/// then `grpc-status:<n>\r\ngrpc-message:<encoded>\r\n`), in base64 for
/// the `-text` form. `encoded_message` is [`encode_message`]'s output.
pub fn web_trailers_frame(code: Code, encoded_message: &str, text: bool) -> Vec<u8> {
    let block = format!(
        "grpc-status:{}\r\ngrpc-message:{encoded_message}\r\n",
        code.header_value()
    );
    let mut frame = Vec::with_capacity(block.len() + 5);
    frame.push(0x80);
    frame.extend_from_slice(&(block.len() as u32).to_be_bytes());
    frame.extend_from_slice(block.as_bytes());
    if text {
        use base64::Engine;
        return base64::engine::general_purpose::STANDARD
            .encode(&frame)
            .into_bytes();
    }
    frame
}

/// The text of a reply's `grpc-message`, from the JSON body the same reply
/// has over HTTP (`{"error": ..., "error_description": ..., ...}`):
/// `<error>: <error_description>`, or `<error>` followed by the other
/// fields (`rate_limited (limit=per-client, retry_after=3, route=api)`).
/// A body that is not such an object is used as it is.
pub fn message_from_json(body: &str) -> String {
    let Ok(serde_json::Value::Object(map)) = crate::config::json::parse(body) else {
        return body.to_string();
    };
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let Some(error) = map.get("error").map(text) else {
        return body.to_string();
    };
    if let Some(d) = map.get("error_description") {
        return format!("{error}: {}", text(d));
    }
    let rest: Vec<String> = map
        .iter()
        .filter(|(k, _)| k.as_str() != "error")
        .map(|(k, v)| format!("{k}={}", text(v)))
        .collect();
    if rest.is_empty() {
        error
    } else {
        format!("{error} ({})", rest.join(", "))
    }
}

/// The service and method of a gRPC path (`/pkg.Service/Method`): exactly
/// two non-empty segments; `None` for any other path.
pub fn service_method(path: &str) -> Option<(&str, &str)> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    if service.is_empty() || method.is_empty() || method.contains('/') {
        return None;
    }
    Some((service, method))
}

/// Whether a configured service or method name is plausible: non-empty,
/// printable ASCII without `/`, spaces or `?`/`#` (which a path could not
/// carry before its query).
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 256
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'/' | b'?' | b'#'))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn content_types_tell_grpc_from_grpc_web_and_others() {
        let cases: &[(&str, Option<Kind>)] = &[
            ("application/grpc", Some(Kind::Grpc)),
            ("application/grpc+proto", Some(Kind::Grpc)),
            ("application/grpc+json", Some(Kind::Grpc)),
            ("Application/GRPC+proto; charset=utf-8", Some(Kind::Grpc)),
            ("  application/grpc ", Some(Kind::Grpc)),
            ("application/grpc-web", Some(Kind::GrpcWeb { text: false })),
            (
                "application/grpc-web+proto",
                Some(Kind::GrpcWeb { text: false }),
            ),
            (
                "application/grpc-web-text",
                Some(Kind::GrpcWeb { text: true }),
            ),
            (
                "application/grpc-web-text+proto",
                Some(Kind::GrpcWeb { text: true }),
            ),
            ("application/grpcx", None),
            ("application/grpc-webx", None),
            ("application/grpc-web-textual", None),
            ("application/grpc-other", None),
            ("application/json", None),
            ("application/grp", None),
            ("", None),
            ("text/plain; x=application/grpc", None),
        ];
        for (ct, want) in cases {
            assert_eq!(Kind::of(Some(ct.as_bytes())), *want, "{ct}");
        }
        assert_eq!(Kind::of(None), None);
        assert_eq!(Kind::of(Some(&[0xff, 0xfe])), None);
    }

    #[test]
    fn replies_echo_the_grpc_web_content_type() {
        let ct = b"application/grpc-web-text+proto; x=1".as_slice();
        assert_eq!(
            Kind::GrpcWeb { text: true }.reply_content_type(Some(ct)),
            b"application/grpc-web-text+proto"
        );
        assert_eq!(Kind::Grpc.reply_content_type(Some(ct)), b"application/grpc");
        assert_eq!(
            Kind::GrpcWeb { text: true }.reply_content_type(None),
            b"application/grpc-web"
        );
    }

    #[test]
    fn grpc_web_trailers_frames() {
        let f = web_trailers_frame(Code::UNAUTHENTICATED, "no%20token", false);
        let block = b"grpc-status:16\r\ngrpc-message:no%20token\r\n";
        assert_eq!(f[0], 0x80);
        assert_eq!(f[1..5], (block.len() as u32).to_be_bytes());
        assert_eq!(&f[5..], block);
        let t = web_trailers_frame(Code::UNAUTHENTICATED, "no%20token", true);
        use base64::Engine;
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(&t)
                .unwrap(),
            f
        );
    }

    #[test]
    fn codes_by_name_number_and_json() {
        assert_eq!(Code::from_name("unavailable"), Some(Code::UNAVAILABLE));
        assert_eq!(Code::from_name("RESOURCE_EXHAUSTED"), Some(Code(8)));
        assert_eq!(Code::from_name("NOPE"), None);
        assert_eq!(Code::from_number(16), Some(Code::UNAUTHENTICATED));
        assert_eq!(Code::from_number(17), None);
        for (v, want) in [
            (serde_json::json!(14), Some(Code::UNAVAILABLE)),
            (serde_json::json!("14"), Some(Code::UNAVAILABLE)),
            (serde_json::json!("DATA_LOSS"), Some(Code::DATA_LOSS)),
            (serde_json::json!(-1), None),
            (serde_json::json!(1.5), None),
            (serde_json::json!("99"), None),
            (serde_json::json!(true), None),
        ] {
            assert_eq!(Code::from_json(&v), want, "{v}");
        }
        for n in 0..17u64 {
            let c = Code::from_number(n).unwrap();
            assert_eq!(Code::from_name(c.name()), Some(c));
            assert_eq!(c.header_value(), n.to_string());
            assert_eq!(c.number() as u64, n);
        }
    }

    #[test]
    fn replies_map_to_codes() {
        let rl = Code::RESOURCE_EXHAUSTED;
        assert_eq!(Code::for_reply(400, rl), Code::INVALID_ARGUMENT);
        assert_eq!(Code::for_reply(401, rl), Code::UNAUTHENTICATED);
        assert_eq!(Code::for_reply(403, rl), Code::PERMISSION_DENIED);
        assert_eq!(Code::for_reply(429, rl), Code::RESOURCE_EXHAUSTED);
        assert_eq!(
            Code::for_reply(429, Code::UNAVAILABLE),
            Code::UNAVAILABLE,
            "the route's choice"
        );
        assert_eq!(Code::for_reply(503, rl), Code::UNAVAILABLE);
        assert_eq!(Code::for_reply(404, rl), Code::UNIMPLEMENTED);
        assert_eq!(Code::for_reply(500, rl), Code::UNKNOWN);
    }

    #[test]
    fn default_failure_set() {
        let s = CodeSet::SERVER_FAILURES;
        for c in [2, 4, 13, 14, 15] {
            assert!(s.contains(Code(c)), "{c}");
        }
        for c in [0, 1, 3, 5, 6, 7, 8, 9, 10, 11, 12, 16] {
            assert!(!s.contains(Code(c)), "{c}");
        }
        let mut t = CodeSet::default();
        t.insert(Code::OK);
        assert!(t.contains(Code::OK) && !t.contains(Code::CANCELLED));
    }

    #[test]
    fn malformed_statuses_never_panic() {
        assert_eq!(parse_status(b"0"), Status::Code(Code::OK));
        assert_eq!(parse_status(b"14"), Status::Code(Code::UNAVAILABLE));
        assert_eq!(parse_status(b"016"), Status::Code(Code::UNAUTHENTICATED));
        // Numbers beyond the table read as UNKNOWN, as clients do.
        assert_eq!(parse_status(b"17"), Status::Code(Code::UNKNOWN));
        assert_eq!(parse_status(b"9999999999"), Status::Code(Code::UNKNOWN));
        for bad in [
            &b""[..],
            b" 14",
            b"14 ",
            b"-1",
            b"+1",
            b"1e3",
            b"UNAVAILABLE",
            b"99999999999999999999999999",
            b"\xff\xfe",
            b"1\x00",
        ] {
            assert_eq!(parse_status(bad), Status::Malformed, "{bad:?}");
        }
    }

    #[test]
    fn messages_are_percent_encoded_and_capped() {
        assert_eq!(encode_message("rate limited"), "rate limited");
        assert_eq!(encode_message("100%"), "100%25");
        assert_eq!(encode_message("a\nb\tc"), "a%0Ab%09c");
        assert_eq!(encode_message("café"), "caf%C3%A9");
        assert_eq!(encode_message("\u{7f}~"), "%7F~");
        let long = "é".repeat(MAX_MESSAGE);
        let enc = encode_message(&long);
        // Cut on a character boundary: whole "%C3%A9" units only.
        assert_eq!(enc.len() % 6, 0);
        assert!(enc.len() <= MAX_MESSAGE * 3);
        assert!(encode_message(&"x".repeat(10_000)).len() == MAX_MESSAGE);
    }

    #[test]
    fn messages_read_the_json_bodies() {
        assert_eq!(
            message_from_json(
                r#"{"error":"missing_token","error_description":"a bearer token is required"}"#
            ),
            "missing_token: a bearer token is required"
        );
        assert_eq!(
            message_from_json(
                r#"{"error":"rate_limited","route":"api","limit":"all","retry_after":3}"#
            ),
            "rate_limited (limit=all, retry_after=3, route=api)"
        );
        assert_eq!(message_from_json(r#"{"error":"x"}"#), "x");
        assert_eq!(message_from_json("not json"), "not json");
        assert_eq!(message_from_json(r#"{"other":1}"#), r#"{"other":1}"#);
    }

    #[test]
    fn paths_split_into_service_and_method() {
        assert_eq!(
            service_method("/pkg.Service/Method"),
            Some(("pkg.Service", "Method"))
        );
        assert_eq!(service_method("/S/M"), Some(("S", "M")));
        for bad in [
            "",
            "/",
            "/pkg.Service",
            "/pkg.Service/",
            "//M",
            "/a/b/c",
            "x/a/b",
        ] {
            assert_eq!(service_method(bad), None, "{bad}");
        }
        assert!(valid_name("pkg.v1.Service"));
        for bad in ["", "a/b", "a b", "a?b", "a#b", "é"] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
