//! The HTTP/2 (h2c, prior knowledge) gRPC server: one unary method.

use crate::grpc::{self, code, Status, MAX_MESSAGE, SHOULD_RATE_LIMIT};
use crate::proto::RateLimitRequest;
use crate::service::{describe_request, describe_response, Service};
use bytes::{Bytes, BytesMut};
use h2::server::SendResponse;
use h2::RecvStream;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};

pub struct Server {
    pub service: Arc<Service>,
    /// Sleep this long before answering each ShouldRateLimit call.
    pub delay: Duration,
}

impl Server {
    /// Accepts connections forever. Prints `listening on ADDR` to stdout once bound.
    pub async fn run(self: Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
        let addr = listener.local_addr()?;
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "listening on {addr}")?;
            out.flush()?;
        }
        loop {
            match listener.accept().await {
                Ok((tcp, _)) => {
                    let server = Arc::clone(&self);
                    tokio::spawn(async move { server.connection(tcp).await });
                }
                Err(e) => {
                    // Out of descriptors and the like: wait, do not spin.
                    eprintln!("rls: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    async fn connection(self: Arc<Self>, tcp: TcpStream) {
        let _ = tcp.set_nodelay(true);
        let mut conn = match h2::server::handshake(tcp).await {
            Ok(conn) => conn,
            Err(e) => {
                eprintln!("rls: HTTP/2 handshake: {e}");
                return;
            }
        };
        // Polling accept() also drives the connection.
        while let Some(stream) = conn.accept().await {
            match stream {
                Ok((request, respond)) => {
                    let server = Arc::clone(&self);
                    tokio::spawn(async move { server.stream(request, respond).await });
                }
                Err(e) => {
                    if !e.is_go_away() && !e.is_io() {
                        eprintln!("rls: HTTP/2 connection: {e}");
                    }
                    break;
                }
            }
        }
    }

    async fn stream(&self, request: Request<RecvStream>, mut respond: SendResponse<Bytes>) {
        let started = Instant::now();
        if !is_grpc(request.headers()) {
            eprintln!(
                "rls: {} {}: not gRPC (content-type {:?}) -> HTTP 415",
                request.method(),
                request.uri().path(),
                request.headers().get("content-type")
            );
            let response = Response::builder()
                .status(StatusCode::UNSUPPORTED_MEDIA_TYPE)
                .body(())
                .expect("valid response");
            let _ = respond.send_response(response, true);
            return;
        }
        let (summary, result) = match self.decode(request).await {
            Err((summary, status)) => (summary, Err(status)),
            Ok(request) => {
                let summary = describe_request(&request);
                if !self.delay.is_zero() {
                    tokio::time::sleep(self.delay).await;
                }
                // In a task of its own so that a panic inside limitador becomes
                // INTERNAL instead of a reset stream.
                let service = Arc::clone(&self.service);
                let result = tokio::spawn(async move { service.should_rate_limit(&request).await })
                    .await
                    .unwrap_or_else(|e| {
                        Err(Status::new(
                            code::INTERNAL,
                            format!("rate limit check failed: {e}"),
                        ))
                    });
                (summary, result)
            }
        };
        let elapsed = started.elapsed().as_secs_f64() * 1000.0;
        match &result {
            Ok(response) => eprintln!(
                "rls: {summary} -> {} ({elapsed:.1} ms)",
                describe_response(response)
            ),
            Err(status) => eprintln!("rls: {summary} -> {status} ({elapsed:.1} ms)"),
        }
        let sent = match result {
            Ok(response) => send_message(&mut respond, grpc::frame(&response)),
            Err(status) => send_status(&mut respond, &status),
        };
        if let Err(e) = sent {
            // Typically the client gave up (deadline) and reset the stream.
            eprintln!("rls: sending the answer: {e}");
        }
    }

    /// The request message, or a status with a short description for the log.
    async fn decode(
        &self,
        request: Request<RecvStream>,
    ) -> Result<RateLimitRequest, (String, Status)> {
        let path = request.uri().path().to_string();
        if request.method() != http::Method::POST || path != SHOULD_RATE_LIMIT {
            let status = Status::new(
                code::UNIMPLEMENTED,
                format!("unknown method {} {path}", request.method()),
            );
            return Err((path, status));
        }
        let body = read_body(request.into_body())
            .await
            .map_err(|s| ("(body)".to_string(), s))?;
        let payload = grpc::unframe(&body).map_err(|s| ("(body)".to_string(), s))?;
        prost::Message::decode(payload).map_err(|e| {
            (
                "(body)".to_string(),
                Status::new(
                    code::INVALID_ARGUMENT,
                    format!("not a RateLimitRequest: {e}"),
                ),
            )
        })
    }
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v == "application/grpc"
                || v.starts_with("application/grpc+")
                || v.starts_with("application/grpc;")
        })
}

async fn read_body(mut body: RecvStream) -> Result<Bytes, Status> {
    let mut buf = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk
            .map_err(|e| Status::new(code::UNAVAILABLE, format!("reading the request: {e}")))?;
        let _ = body.flow_control().release_capacity(chunk.len());
        buf.extend_from_slice(&chunk);
        if buf.len() > MAX_MESSAGE + 5 {
            return Err(Status::new(
                code::RESOURCE_EXHAUSTED,
                format!("request larger than {MAX_MESSAGE} bytes"),
            ));
        }
    }
    Ok(buf.freeze())
}

fn grpc_headers() -> Response<()> {
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/grpc")
        .body(())
        .expect("valid response")
}

fn send_message(respond: &mut SendResponse<Bytes>, message: Bytes) -> Result<(), h2::Error> {
    let mut stream = respond.send_response(grpc_headers(), false)?;
    stream.send_data(message, false)?;
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    stream.send_trailers(trailers)
}

/// A trailers-only response: the status in the one HEADERS frame.
fn send_status(respond: &mut SendResponse<Bytes>, status: &Status) -> Result<(), h2::Error> {
    let mut response = grpc_headers();
    let headers = response.headers_mut();
    headers.insert("grpc-status", HeaderValue::from(status.code));
    if let Ok(message) = HeaderValue::from_str(&grpc::encode_message(&status.message)) {
        headers.insert("grpc-message", message);
    }
    respond.send_response(response, true).map(|_| ())
}
