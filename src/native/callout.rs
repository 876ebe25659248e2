//! Calls to other services from the native module: JWKS fetches (HTTP) and
//! rate limit service calls (unary gRPC over HTTP/2, framed here).
//!
//! The filter layer sends both from a worker's root context (no stream).
//! The 1.40 ABI has two ways to call out: per configuration
//! (`..._http_filter_config_http_callout`), whose pending calls live in one
//! map of the configuration object that every worker would touch without
//! a lock (safe on the main thread only), and per stream
//! (`..._http_filter_http_callout`), answered on the stream's worker and
//! cancelled if the stream ends first. This module uses the per-stream
//! call on the *carrier*: the stream whose hook is running (a request that
//! waits for keys, the request the rate limit call is for, or the request
//! whose arrival ran a due tick). When the carrier ends before the answer,
//! the call is reported as failed (no response) to the filter, as Envoy
//! reports a call it could not complete; JWKS fetch leases expire on their
//! own (`jwt/remote.rs`), so the next poll fetches again.
//!
//! gRPC: the call is a POST of the length-prefixed message with
//! `content-type: application/grpc` and `te: trailers` to a cluster that
//! must speak HTTP/2 (as for Envoy's own gRPC client). The ABI's one-shot
//! callout hands over the answer's headers and body but not its trailers:
//! a `grpc-status` in the headers (trailers-only answers: every error) is
//! read there; an answer without one is OK when its body holds one whole
//! message, else a broken answer (`grpc-status` 13, INTERNAL).

use super::abi::{self, EnvoyBuffer, EnvoyHeader, FilterEnvoyPtr, ModuleBuffer, ModuleHeader};
use crate::host::HostError;
use std::cell::{Cell, RefCell};
use std::time::Duration;

/// What a pending call is.
/// An HTTP callout's answer, as its hook delivered it.
#[derive(Default)]
pub struct Answer {
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
    pub grpc_message: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Http,
    Grpc,
}

#[derive(Clone, Copy)]
struct Pending {
    carrier: u32,
    callout_id: u64,
    token: u32,
    kind: Kind,
}

thread_local! {
    /// The stream whose hook is running: (context id, Envoy filter).
    static CARRIER: Cell<(u32, usize)> = const { Cell::new((0, 0)) };
    static PENDING: RefCell<Vec<Pending>> = const { RefCell::new(Vec::new()) };
    static NEXT_TOKEN: Cell<u32> = const { Cell::new(0) };
    /// On the main thread, in a configuration's hook: its Envoy pointer
    /// (calls then go through the configuration's own callout).
    static MAIN: Cell<usize> = const { Cell::new(0) };
}

/// The carrier id of calls sent by a configuration on the main thread.
pub const MAIN_CARRIER: u32 = 0;

pub fn set_main(config: abi::ConfigEnvoyPtr) {
    MAIN.with(|m| m.set(config as usize));
}

pub fn clear_main() {
    MAIN.with(|m| m.set(0));
}

/// Whether calls carried by `carrier` wait for their answer.
pub fn has_pending(carrier: u32) -> bool {
    PENDING.with(|p| p.borrow().iter().any(|c| c.carrier == carrier))
}

/// Makes the stream of the running hook the carrier; returns the one
/// before (hooks nest: a local reply runs the response hooks at once).
pub fn set_carrier(context_id: u32, filter: FilterEnvoyPtr) -> (u32, usize) {
    CARRIER.with(|c| c.replace((context_id, filter as usize)))
}

pub fn restore_carrier(previous: (u32, usize)) {
    CARRIER.with(|c| c.set(previous));
}

fn send(
    carrier: Option<(u32, FilterEnvoyPtr)>,
    cluster: &str,
    headers: &[(&str, &[u8])],
    body: &[u8],
    timeout: Duration,
    kind: Kind,
) -> Result<u32, HostError> {
    let (carrier, filter) = match carrier {
        Some((id, f)) => (id, f as usize),
        None => CARRIER.with(|c| c.get()),
    };
    let main = MAIN.with(|m| m.get());
    if filter == 0 && main == 0 {
        return Err(HostError(
            "no stream to carry the call (the native module calls out on a request's behalf)"
                .into(),
        ));
    }
    let carrier = if filter == 0 { MAIN_CARRIER } else { carrier };
    let hs: Vec<ModuleHeader> = headers
        .iter()
        .map(|(n, v)| ModuleHeader {
            key_ptr: n.as_ptr(),
            key_len: n.len(),
            value_ptr: v.as_ptr(),
            value_len: v.len(),
        })
        .collect();
    let mut callout_id = 0u64;
    let timeout_ms = u64::try_from(timeout.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    // SAFETY: the carrier's filter (or the configuration, on the main
    // thread) is live during its hook; every buffer outlives the call
    // (Envoy copies them).
    let r = unsafe {
        if filter != 0 {
            abi::envoy_dynamic_module_callback_http_filter_http_callout(
                filter as FilterEnvoyPtr,
                &mut callout_id,
                ModuleBuffer::of(cluster.as_bytes()),
                hs.as_ptr(),
                hs.len(),
                ModuleBuffer::of(body),
                timeout_ms,
            )
        } else {
            abi::envoy_dynamic_module_callback_http_filter_config_http_callout(
                main as abi::ConfigEnvoyPtr,
                &mut callout_id,
                ModuleBuffer::of(cluster.as_bytes()),
                hs.as_ptr(),
                hs.len(),
                ModuleBuffer::of(body),
                timeout_ms,
            )
        }
    };
    if r != abi::callout_init::SUCCESS {
        let why = match r {
            abi::callout_init::MISSING_REQUIRED_HEADERS => "missing required headers",
            abi::callout_init::CLUSTER_NOT_FOUND => "cluster not found",
            abi::callout_init::DUPLICATE_CALLOUT_ID => "duplicate callout id",
            _ => "Envoy could not create the request",
        };
        return Err(HostError(format!("call to cluster {cluster}: {why}")));
    }
    let token = NEXT_TOKEN.with(|t| {
        let v = t.get().wrapping_add(1).max(1);
        t.set(v);
        v
    });
    PENDING.with(|p| {
        p.borrow_mut().push(Pending {
            carrier,
            callout_id,
            token,
            kind,
        })
    });
    Ok(token)
}

pub fn http_call(
    cluster: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<u32, HostError> {
    let hs: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (*n, v.as_bytes())).collect();
    send(
        None,
        cluster,
        &hs,
        body.unwrap_or_default(),
        timeout,
        Kind::Http,
    )
}

/// The cluster of a serialized `GrpcService { envoy_grpc { cluster_name } }`.
fn grpc_cluster(service: &[u8]) -> Option<String> {
    fn field(b: &[u8], want: u8) -> Option<&[u8]> {
        let mut i = 0usize;
        while i < b.len() {
            let tag = *b.get(i)?;
            let mut len = 0usize;
            let mut shift = 0;
            i += 1;
            loop {
                let byte = *b.get(i)?;
                i += 1;
                len |= usize::from(byte & 0x7f) << shift;
                shift += 7;
                if byte & 0x80 == 0 || shift > 28 {
                    break;
                }
            }
            if tag & 7 != 2 {
                return None;
            }
            let v = b.get(i..i.checked_add(len)?)?;
            if tag >> 3 == want {
                return Some(v);
            }
            i += len;
        }
        None
    }
    let envoy_grpc = field(service, 1)?;
    String::from_utf8(field(envoy_grpc, 1)?.to_vec()).ok()
}

#[allow(clippy::too_many_arguments)]
/// `carrier`: the stream the call is for (it carries its own call: the
/// call ends with it), else the running hook's.
pub fn grpc_call(
    carrier: Option<(u32, FilterEnvoyPtr)>,
    grpc_service: &[u8],
    service: &str,
    method: &str,
    metadata: &[(&str, &[u8])],
    message: &[u8],
    timeout: Duration,
) -> Result<u32, HostError> {
    let cluster = grpc_cluster(grpc_service)
        .ok_or_else(|| HostError("the gRPC service names no cluster".into()))?;
    let path = format!("/{service}/{method}");
    let len =
        u32::try_from(message.len()).map_err(|_| HostError("gRPC message too large".into()))?;
    let mut body = Vec::with_capacity(message.len() + 5);
    body.push(0);
    body.extend_from_slice(&len.to_be_bytes());
    body.extend_from_slice(message);
    let mut headers: Vec<(&str, &[u8])> = vec![
        (":method", b"POST"),
        (":path", path.as_bytes()),
        (":authority", cluster.as_bytes()),
        ("content-type", b"application/grpc"),
        ("te", b"trailers"),
    ];
    headers.extend(metadata.iter().copied());
    send(carrier, &cluster, &headers, &body, timeout, Kind::Grpc)
}

/// Forgets a call (its answer, if one comes, is dropped).
pub fn forget(token: u32) {
    PENDING.with(|p| p.borrow_mut().retain(|c| c.token != token));
}

/// The call a carrier's `callout_done` answers: (token, kind), forgotten.
fn take(carrier: u32, callout_id: u64) -> Option<(u32, Kind)> {
    PENDING.with(|p| {
        let mut p = p.borrow_mut();
        let i = p
            .iter()
            .position(|c| c.carrier == carrier && c.callout_id == callout_id)?;
        let c = p.swap_remove(i);
        Some((c.token, c.kind))
    })
}

/// The calls a carrier that ended still had (Envoy cancelled them).
pub fn take_all(carrier: u32) -> Vec<(u32, Kind)> {
    PENDING.with(|p| {
        let mut p = p.borrow_mut();
        let (gone, keep): (Vec<Pending>, Vec<Pending>) =
            p.drain(..).partition(|c| c.carrier == carrier);
        *p = keep;
        gone.into_iter().map(|c| (c.token, c.kind)).collect()
    })
}

/// A gRPC answer read from an HTTP one: (grpc status, message body).
pub fn grpc_answer(a: &Answer, success: bool) -> (u32, Vec<u8>) {
    const INTERNAL: u32 = 13;
    const UNAVAILABLE: u32 = 14;
    if !success {
        return (UNAVAILABLE, Vec::new());
    }
    let header = |n: &str| {
        a.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    };
    if let Some(s) = header("grpc-status") {
        let code = s.trim().parse::<u32>().unwrap_or(INTERNAL);
        if code != 0 {
            return (code, Vec::new());
        }
    }
    match header(":status").as_deref() {
        Some("200") => {}
        _ => return (UNAVAILABLE, Vec::new()),
    }
    // One length-prefixed, uncompressed message.
    let b = &a.body;
    match (b.first(), b.get(1..5), b.get(5..)) {
        (Some(0), Some(len), Some(msg))
            if len.try_into().map(u32::from_be_bytes).ok() == u32::try_from(msg.len()).ok() =>
        {
            (0, msg.to_vec())
        }
        _ => (INTERNAL, Vec::new()),
    }
}

/// Reads a callout's answer into an [`Answer`] and finds its call.
///
/// # Safety
/// The pointers are Envoy's, live for the hook (or null with length 0).
pub unsafe fn answer(
    carrier: u32,
    callout_id: u64,
    headers: *const EnvoyHeader,
    headers_len: usize,
    body: *const EnvoyBuffer,
    body_len: usize,
) -> Option<(u32, Kind, Answer)> {
    let (token, kind) = take(carrier, callout_id)?;
    let mut a = Answer::default();
    // SAFETY: the caller's promise.
    unsafe {
        if !headers.is_null() {
            for h in std::slice::from_raw_parts(headers, headers_len) {
                let k = EnvoyBuffer {
                    ptr: h.key_ptr,
                    len: h.key_len,
                };
                let v = EnvoyBuffer {
                    ptr: h.value_ptr,
                    len: h.value_len,
                };
                a.headers.push((
                    String::from_utf8_lossy(&k.to_vec()).into_owned(),
                    v.to_vec(),
                ));
            }
        }
        if !body.is_null() {
            for c in std::slice::from_raw_parts(body, body_len) {
                a.body.extend_from_slice(&c.to_vec());
            }
        }
    }
    Some((token, kind, a))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_cluster_of_the_filter_layers_grpc_service() {
        let s = crate::ratelimit::rls::grpc_service("ratelimit");
        assert_eq!(grpc_cluster(&s).as_deref(), Some("ratelimit"));
        assert_eq!(
            grpc_cluster(b"\x0a\x05\x0a\x09abc"),
            None,
            "length past the end"
        );
        assert_eq!(grpc_cluster(b""), None);
    }

    #[test]
    fn grpc_answers_from_headers_and_body() {
        let ok = Answer {
            headers: vec![(":status".into(), b"200".to_vec())],
            body: vec![0, 0, 0, 0, 2, 8, 1],
            grpc_message: None,
        };
        assert_eq!(grpc_answer(&ok, true), (0, vec![8, 1]));
        let mut short = ok.body.clone();
        short.pop();
        let broken = Answer {
            body: short,
            ..Answer {
                headers: ok.headers.clone(),
                ..Default::default()
            }
        };
        assert_eq!(grpc_answer(&broken, true).0, 13);
        let denied = Answer {
            headers: vec![
                (":status".into(), b"200".to_vec()),
                ("grpc-status".into(), b"7".to_vec()),
            ],
            ..Default::default()
        };
        assert_eq!(grpc_answer(&denied, true).0, 7);
        assert_eq!(grpc_answer(&ok, false).0, 14);
    }
}
