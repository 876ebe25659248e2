//! Just enough gRPC over HTTP/2 (h2c, prior knowledge) for one unary method:
//! the 5-byte message prefix, status codes, and `grpc-message` encoding. The
//! server side is in `server.rs`; [`Client`] is the matching client, used by the
//! tests.

use bytes::{BufMut, Bytes, BytesMut};
use std::fmt;

/// `:path` of the one method served.
pub const SHOULD_RATE_LIMIT: &str = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";

/// Largest request message accepted (Envoy's are a few hundred bytes).
pub const MAX_MESSAGE: usize = 4 << 20;

/// gRPC status codes used here.
pub mod code {
    pub const OK: u32 = 0;
    pub const INVALID_ARGUMENT: u32 = 3;
    pub const RESOURCE_EXHAUSTED: u32 = 8;
    pub const UNIMPLEMENTED: u32 = 12;
    pub const INTERNAL: u32 = 13;
    pub const UNAVAILABLE: u32 = 14;
}

/// A non-OK gRPC status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub code: u32,
    pub message: String,
}

impl Status {
    pub fn new(code: u32, message: impl Into<String>) -> Self {
        Status {
            code,
            message: message.into(),
        }
    }

    pub fn code_name(&self) -> &'static str {
        match self.code {
            code::OK => "OK",
            1 => "CANCELLED",
            2 => "UNKNOWN",
            code::INVALID_ARGUMENT => "INVALID_ARGUMENT",
            4 => "DEADLINE_EXCEEDED",
            code::RESOURCE_EXHAUSTED => "RESOURCE_EXHAUSTED",
            code::UNIMPLEMENTED => "UNIMPLEMENTED",
            code::INTERNAL => "INTERNAL",
            code::UNAVAILABLE => "UNAVAILABLE",
            _ => "OTHER",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.code_name(), self.code, self.message)
    }
}

impl std::error::Error for Status {}

/// One length-prefixed, uncompressed message.
pub fn frame(message: &impl prost::Message) -> Bytes {
    let len = message.encoded_len();
    let mut buf = BytesMut::with_capacity(5 + len);
    buf.put_u8(0);
    buf.put_u32(len as u32);
    message.encode(&mut buf).expect("BytesMut grows as needed");
    buf.freeze()
}

/// The payload of a body that holds exactly one uncompressed message.
pub fn unframe(body: &[u8]) -> Result<&[u8], Status> {
    if body.len() < 5 {
        return Err(Status::new(
            code::INVALID_ARGUMENT,
            format!("body of {} bytes: no gRPC message prefix", body.len()),
        ));
    }
    let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    match body[0] {
        0 => {}
        1 => {
            return Err(Status::new(
                code::UNIMPLEMENTED,
                "compressed messages are not supported",
            ))
        }
        flag => {
            return Err(Status::new(
                code::INVALID_ARGUMENT,
                format!("bad gRPC compressed-flag byte {flag}"),
            ))
        }
    }
    if body.len() != 5 + len {
        return Err(Status::new(
            code::INVALID_ARGUMENT,
            format!(
                "gRPC prefix announces {len} bytes but the body holds {} after it (one message expected)",
                body.len() - 5
            ),
        ));
    }
    Ok(&body[5..])
}

/// `grpc-message` value: percent-encode everything outside printable ASCII, and '%'.
pub fn encode_message(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for b in message.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Inverse of [`encode_message`] (lenient: a bad escape is kept as is).
pub fn decode_message(value: &[u8]) -> String {
    let mut out = Vec::with_capacity(value.len());
    let mut i = 0;
    while i < value.len() {
        if value[i] == b'%' && i + 2 < value.len() {
            let hex = std::str::from_utf8(&value[i + 1..i + 3]).ok();
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(value[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The status carried by `grpc-status`/`grpc-message` in a header map, if any.
pub fn status_of(headers: &http::HeaderMap) -> Option<Result<(), Status>> {
    let code: u32 = headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    if code == code::OK {
        return Some(Ok(()));
    }
    let message = headers
        .get("grpc-message")
        .map(|v| decode_message(v.as_bytes()))
        .unwrap_or_default();
    Some(Err(Status::new(code, message)))
}

/// A gRPC client for `ShouldRateLimit` over one HTTP/2 connection (calls may
/// run concurrently). For tests and tools.
#[derive(Clone)]
pub struct Client {
    send: h2::client::SendRequest<Bytes>,
    authority: String,
}

impl Client {
    pub async fn connect(addr: std::net::SocketAddr) -> std::io::Result<Client> {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let (send, conn) = h2::client::handshake(tcp)
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Client {
            send,
            authority: addr.to_string(),
        })
    }

    /// One call with a typed request.
    pub async fn should_rate_limit(
        &self,
        request: &crate::proto::RateLimitRequest,
    ) -> Result<crate::proto::RateLimitResponse, Status> {
        let payload = self.call_raw(frame(request)).await?;
        let payload = unframe(&payload)?;
        prost::Message::decode(payload)
            .map_err(|e| Status::new(code::INTERNAL, format!("client: bad response: {e}")))
    }

    /// One call with an arbitrary request body; returns the response body
    /// (still framed) when the status is OK. Transport failures come back as
    /// UNAVAILABLE with a "client:" message.
    pub async fn call_raw(&self, body: Bytes) -> Result<Bytes, Status> {
        let transport = |e: h2::Error| Status::new(code::UNAVAILABLE, format!("client: {e}"));
        let request = http::Request::builder()
            .method("POST")
            .uri(format!("http://{}{}", self.authority, SHOULD_RATE_LIMIT))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .expect("valid request");
        let mut send = self.send.clone().ready().await.map_err(transport)?;
        let (response, mut stream) = send.send_request(request, false).map_err(transport)?;
        stream.send_data(body, true).map_err(transport)?;
        let response = response.await.map_err(transport)?;
        if response.status() != http::StatusCode::OK {
            return Err(Status::new(
                code::UNAVAILABLE,
                format!("client: HTTP status {}", response.status()),
            ));
        }
        // Trailers-only response: the status is in the headers.
        if let Some(status) = status_of(response.headers()) {
            status?;
        }
        let mut recv = response.into_body();
        let mut body = BytesMut::new();
        while let Some(chunk) = recv.data().await {
            let chunk = chunk.map_err(transport)?;
            let _ = recv.flow_control().release_capacity(chunk.len());
            body.extend_from_slice(&chunk);
        }
        let trailers = recv.trailers().await.map_err(transport)?;
        match trailers.as_ref().and_then(status_of) {
            Some(Ok(())) => Ok(body.freeze()),
            Some(Err(status)) => Err(status),
            None => Err(Status::new(code::INTERNAL, "client: no grpc-status")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_encoding_round_trips() {
        let text = "redis: connection refused (100%)\nnext line é";
        let encoded = encode_message(text);
        assert!(encoded.bytes().all(|b| (0x20..=0x7e).contains(&b)));
        assert_eq!(decode_message(encoded.as_bytes()), text);
        assert_eq!(decode_message(b"50%"), "50%");
    }

    #[test]
    fn unframe_checks_the_prefix() {
        let msg = crate::proto::UInt64Value { value: 7 };
        let framed = frame(&msg);
        assert_eq!(unframe(&framed).unwrap().len(), framed.len() - 5);
        assert_eq!(unframe(b"\0\0").unwrap_err().code, code::INVALID_ARGUMENT);
        assert_eq!(
            unframe(b"\0\0\0\0\x09abc").unwrap_err().code,
            code::INVALID_ARGUMENT
        );
        assert_eq!(
            unframe(b"\x01\0\0\0\0").unwrap_err().code,
            code::UNIMPLEMENTED
        );
    }
}
