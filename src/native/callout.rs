//! Calls to other services from the native module: JWKS fetches (HTTP) and
//! rate limit service calls (unary gRPC over HTTP/2, framed here).
//!
//! The filter layer sends both from a worker's root context (no stream).
//! The 1.40 ABI has two ways to call out: per configuration
//! (`..._http_filter_config_http_callout`), whose pending calls live in one
//! map of the configuration object that every worker would touch without
//! a lock (safe on the main thread only), and per stream
//! (`..._http_filter_http_callout`), answered on the stream's worker and
//! cancelled if the stream ends first (Envoy resets the call: its answer
//! never comes, and the service may or may not have counted it).
//!
//! # Which call goes where
//!
//! A gRPC call sent in a worker's hook is kept (*unsent*) until the hook
//! returns ([`take_unsent`]); `mod.rs` then looks at what the filter layer
//! did with its token:
//!
//! - a stream waits for it (the worker's `rls_calls`: a request's own
//!   rate limit call): it goes on that stream, the *carrier*; when the
//!   stream ends first the call is moot and dropped with it;
//! - a lease refill (the worker's `lease_calls`): it concerns every
//!   request of the process, not the one whose spend started it, so it
//!   must not die with that request (reset, answered locally, destroyed).
//!   It is *relayed* ([`relay`]): taken out of the worker, queued for its
//!   configuration and sent by the main thread through the
//!   configuration's own callout after a scheduler hop (the
//!   configuration's scheduler may be committed from any thread); the
//!   main thread's root records the answer in the process-wide store
//!   exactly as the worker would have, and the waiting streams of every
//!   worker see it at their next tick (woken at once, `timer::wake_all`);
//! - anything else (a usage settlement's report, sent at a stream's end
//!   and never waited for) is relayed too, its answer ignored.
//!
//! Why the main thread rather than re-sending a refill on another stream
//! when its carrier dies: a re-send would reach the service twice when the
//! first call had already been counted there (the service spends the
//! batch, nobody gets it: under-admission), it needs a live stream that
//! can wait (there may be none: the carrier was the worker's last), and it
//! repeats for every carrier that dies. A relayed call has no carrier: it
//! is sent once and answered once (or fails once, by Envoy's timeout). The
//! cost is one hop to the main thread per refill (microseconds; refills
//! come once per half batch) and no request waits for a refill it did not
//! need (the carrier used to be held until the answer). Exactness is
//! kept: the main thread sends a refill only within the lease's in-flight
//! deadline ([`relay_timeout`]: the time left of the call's own timeout),
//! so its answer lands while the refill flag is still held and no second
//! refill can be in flight (the bound of `replicas x lease`); a refill
//! whose time ran out in the queue is recorded as failed, as a timeout.
//!
//! HTTP calls (JWKS fetches, the cache's full request) are sent at once on
//! the carrier: the stream waits for them (`deferred` in `mod.rs`, or
//! parked). When the carrier ends before the answer, the call is reported
//! as failed (no response) to the filter, as Envoy reports a call it could
//! not complete: nothing waits forever. For a JWKS refresh that means one
//! `jwks_fetch_failures`, the keys held are kept, and the next fetch comes
//! after the first failure's backoff (0.5 to 1 s, `jwt/remote.rs`);
//! requests waiting for a provider's first keys wait up to 5 s, so they
//! still get them. Relaying fetches too was left out: a fetch is not lost,
//! only retried a second later.
//!
//! gRPC: the call is a POST of the length-prefixed message with
//! `content-type: application/grpc` and `te: trailers` to a cluster that
//! must speak HTTP/2 (as for Envoy's own gRPC client). The ABI's one-shot
//! callout hands over the answer's headers and body but not its trailers:
//! a `grpc-status` in the headers (trailers-only answers: every error) is
//! read there; an answer without one is OK when its body holds one whole
//! message, else a broken answer (`grpc-status` 13, INTERNAL).

use super::abi::{self, EnvoyBuffer, EnvoyHeader, FilterEnvoyPtr, ModuleBuffer, ModuleHeader};
use crate::filter::worker::LeaseRefill;
use crate::host::HostError;
use crate::ratelimit::rls::GRACE_NS;
use std::cell::{Cell, RefCell};
use std::sync::Mutex;
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
    /// The configuration whose callout sent it (main thread; 0: a
    /// stream's): Envoy numbers callouts per configuration.
    config: usize,
    callout_id: u64,
    token: u32,
    kind: Kind,
}

/// A gRPC call sent in a worker's hook, not yet handed to Envoy (see
/// "Which call goes where").
pub struct Unsent {
    pub token: u32,
    /// The stream it was sent for (its context id and filter; 0: none).
    pub carrier: u32,
    filter: usize,
    cluster: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    timeout: Duration,
}

/// A call queued for the main thread.
pub struct Relayed {
    pub cfg: u64,
    pub call: Unsent,
    /// `None`: a report, its answer ignored.
    pub lease: Option<LeaseRefill>,
}

/// Calls queued for the main thread, of every configuration.
static RELAYED: Mutex<Vec<Relayed>> = Mutex::new(Vec::new());

thread_local! {
    static PENDING: RefCell<Vec<Pending>> = const { RefCell::new(Vec::new()) };
    static UNSENT: RefCell<Vec<Unsent>> = const { RefCell::new(Vec::new()) };
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

fn new_token() -> u32 {
    NEXT_TOKEN.with(|t| {
        let v = t.get().wrapping_add(1).max(1);
        t.set(v);
        v
    })
}

fn send(
    carrier: (u32, usize),
    cluster: &str,
    headers: &[(&str, &[u8])],
    body: &[u8],
    timeout: Duration,
    kind: Kind,
) -> Result<u32, HostError> {
    let token = new_token();
    send_as(token, carrier, cluster, headers, body, timeout, kind)?;
    Ok(token)
}

/// Hands a call to Envoy: on `carrier` (context id, Envoy filter), else
/// (zeros), on the main thread, through the configuration's own callout.
fn send_as(
    token: u32,
    (carrier, filter): (u32, usize),
    cluster: &str,
    headers: &[(&str, &[u8])],
    body: &[u8],
    timeout: Duration,
    kind: Kind,
) -> Result<(), HostError> {
    let main = MAIN.with(|m| m.get());
    if filter == 0 && main == 0 {
        return Err(HostError(
            "no stream to carry the call (the native module calls out on a request's behalf)"
                .into(),
        ));
    }
    let (carrier, config) = match filter {
        0 => (MAIN_CARRIER, main),
        _ => (carrier, 0),
    };
    let hs: Vec<ModuleHeader> = headers
        .iter()
        .map(|(n, v)| ModuleHeader::of(n.as_bytes(), v))
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
    PENDING.with(|p| {
        p.borrow_mut().push(Pending {
            carrier,
            config,
            callout_id,
            token,
            kind,
        })
    });
    Ok(())
}

/// `carrier`: the stream whose hook runs (`NativeHost::carrier`; zeros:
/// none, the main thread).
pub fn http_call(
    carrier: (u32, usize),
    cluster: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<u32, HostError> {
    let hs: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (*n, v.as_bytes())).collect();
    send(
        carrier,
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
/// call ends with it), else `running`, the running hook's
/// (`NativeHost::carrier`).
pub fn grpc_call(
    carrier: Option<(u32, FilterEnvoyPtr)>,
    running: (u32, usize),
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
    if MAIN.with(|m| m.get()) != 0 {
        // A configuration's own call on the main thread: sent at once.
        return send(running, &cluster, &headers, &body, timeout, Kind::Grpc);
    }
    // In a worker's hook: kept until the hook returns (see "Which call
    // goes where").
    let (carrier, filter) = match carrier {
        Some((id, f)) => (id, f as usize),
        None => running,
    };
    let token = new_token();
    UNSENT.with(|u| {
        u.borrow_mut().push(Unsent {
            token,
            carrier,
            filter,
            cluster: cluster.clone(),
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), v.to_vec()))
                .collect(),
            body,
            timeout,
        })
    });
    Ok(token)
}

/// Whether gRPC calls of the running hook wait to be routed.
pub fn has_unsent() -> bool {
    UNSENT.with(|u| u.try_borrow().is_ok_and(|u| !u.is_empty()))
}

/// The gRPC calls sent in the hooks that returned, to route now.
pub fn take_unsent() -> Vec<Unsent> {
    UNSENT.with(|u| std::mem::take(&mut *u.borrow_mut()))
}

impl Relayed {
    /// The timeout the filter layer gave the call.
    pub fn call_timeout(&self) -> Duration {
        self.call.timeout
    }
}

impl Unsent {
    fn send(&self, carrier: (u32, usize), timeout: Duration) -> Result<(), HostError> {
        let hs: Vec<(&str, &[u8])> = self
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_slice()))
            .collect();
        send_as(
            self.token,
            carrier,
            &self.cluster,
            &hs,
            &self.body,
            timeout,
            Kind::Grpc,
        )
    }

    /// Sends the call on its stream (it waits for it). The caller checked
    /// that the stream is live.
    pub fn send_on_carrier(&self) -> Result<(), HostError> {
        if self.filter == 0 {
            return Err(HostError(
                "no stream to carry the call (the native module calls out on a request's behalf)"
                    .into(),
            ));
        }
        self.send((self.carrier, self.filter), self.timeout)
    }

    /// The Envoy filter of the stream it was sent for (null: none).
    pub fn filter(&self) -> FilterEnvoyPtr {
        self.filter as FilterEnvoyPtr
    }
}

/// Queues a call for the main thread and wakes it (the configuration's
/// scheduler). `Err` gives the call back when `cfg` has no scheduler (its
/// configuration is gone, or Envoy gave it none).
pub fn relay(cfg: u64, call: Unsent, lease: Option<LeaseRefill>) -> Result<(), Unsent> {
    let mut queue = RELAYED.lock().unwrap_or_else(|e| e.into_inner());
    // Committed under the queue's lock: the main thread, which takes the
    // queue under it, finds the call when the event runs.
    if !super::timer::relay_commit(cfg) {
        return Err(call);
    }
    queue.push(Relayed { cfg, call, lease });
    Ok(())
}

/// The calls queued for `cfg` (on the main thread).
pub fn take_relayed(cfg: u64) -> Vec<Relayed> {
    let mut queue = RELAYED.lock().unwrap_or_else(|e| e.into_inner());
    if !queue.iter().any(|r| r.cfg == cfg) {
        return Vec::new();
    }
    let (mine, others) = std::mem::take(&mut *queue)
        .into_iter()
        .partition(|r| r.cfg == cfg);
    *queue = others;
    mine
}

/// The timeout a relayed call is sent with on the main thread at `now`:
/// a report's own; a lease refill's is what is left of its own timeout
/// since the worker sent it, so that the answer lands (or Envoy gives up)
/// before the refill flag the worker took is released (`GRACE_NS` before
/// `deadline_ns`). `None`: too late, the refill counts as failed.
pub fn relay_timeout(lease: Option<&LeaseRefill>, timeout: Duration, now: u64) -> Option<Duration> {
    let Some(l) = lease else {
        return Some(timeout);
    };
    let left = l.deadline_ns.saturating_sub(GRACE_NS).saturating_sub(now);
    // Below a millisecond Envoy's timer cannot help.
    (left >= 1_000_000).then(|| timeout.min(Duration::from_nanos(left)))
}

/// Sends a relayed call on the main thread (in a configuration's hook):
/// its token there.
pub fn send_relayed(call: &Unsent, timeout: Duration) -> Result<u32, HostError> {
    let token = new_token();
    let hs: Vec<(&str, &[u8])> = call
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_slice()))
        .collect();
    send_as(
        token,
        // No stream: through the configuration's callout (`set_main`).
        (0, 0),
        &call.cluster,
        &hs,
        &call.body,
        timeout,
        Kind::Grpc,
    )?;
    Ok(token)
}

/// Forgets a call (its answer, if one comes, is dropped).
pub fn forget(token: u32) {
    PENDING.with(|p| p.borrow_mut().retain(|c| c.token != token));
}

/// The call a carrier's `callout_done` answers: (token, kind), forgotten.
fn take(carrier: u32, config: usize, callout_id: u64) -> Option<(u32, Kind)> {
    PENDING.with(|p| {
        let mut p = p.borrow_mut();
        let i = p.iter().position(|c| {
            c.carrier == carrier && c.config == config && c.callout_id == callout_id
        })?;
        let c = p.swap_remove(i);
        Some((c.token, c.kind))
    })
}

/// The calls a carrier that ended still had (Envoy cancelled them).
pub fn take_all(carrier: u32) -> Vec<(u32, Kind)> {
    PENDING.with(|p| {
        let mut p = p.borrow_mut();
        // Most streams carried nothing: no pass that rebuilds the list.
        if !p.iter().any(|c| c.carrier == carrier) {
            return Vec::new();
        }
        let mut gone = Vec::new();
        p.retain(|c| match c.carrier == carrier {
            true => {
                gone.push((c.token, c.kind));
                false
            }
            false => true,
        });
        gone
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
    config: usize,
    callout_id: u64,
    headers: *const EnvoyHeader,
    headers_len: usize,
    body: *const EnvoyBuffer,
    body_len: usize,
) -> Option<(u32, Kind, Answer)> {
    let (token, kind) = take(carrier, config, callout_id)?;
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

    thread_local! {
        /// The callouts the stubs below were asked for: (stream filter or
        /// configuration pointer, on a stream?, cluster, timeout ms).
        static SENT: RefCell<Vec<(usize, bool, String, u64)>> = const { RefCell::new(Vec::new()) };
    }

    /// Envoy's callouts, for the tests: recorded, answered `SUCCESS` with
    /// the next callout id (`CLUSTER_NOT_FOUND` for cluster "missing").
    fn stub(
        target: usize,
        on_stream: bool,
        id: *mut u64,
        cluster: ModuleBuffer,
        timeout_ms: u64,
    ) -> u32 {
        // SAFETY: the module's own buffer, live for the call.
        let cluster = unsafe { std::slice::from_raw_parts(cluster.ptr, cluster.len) };
        let cluster = String::from_utf8_lossy(cluster).into_owned();
        if cluster == "missing" {
            return abi::callout_init::CLUSTER_NOT_FOUND;
        }
        SENT.with(|s| {
            let mut s = s.borrow_mut();
            s.push((target, on_stream, cluster, timeout_ms));
            // SAFETY: the module's out pointer.
            unsafe { *id = s.len() as u64 };
        });
        abi::callout_init::SUCCESS
    }

    #[no_mangle]
    extern "C" fn envoy_dynamic_module_callback_http_filter_http_callout(
        filter: FilterEnvoyPtr,
        id: *mut u64,
        cluster: ModuleBuffer,
        _h: *const ModuleHeader,
        _hl: usize,
        _body: ModuleBuffer,
        timeout_ms: u64,
    ) -> u32 {
        stub(filter as usize, true, id, cluster, timeout_ms)
    }

    #[no_mangle]
    extern "C" fn envoy_dynamic_module_callback_http_filter_config_http_callout(
        config: abi::ConfigEnvoyPtr,
        id: *mut u64,
        cluster: ModuleBuffer,
        _h: *const ModuleHeader,
        _hl: usize,
        _body: ModuleBuffer,
        timeout_ms: u64,
    ) -> u32 {
        stub(config as usize, false, id, cluster, timeout_ms)
    }

    #[test]
    fn a_streams_own_call_goes_on_it_and_a_relayed_one_from_the_main_thread() {
        let service = crate::ratelimit::rls::grpc_service("ratelimit");
        let stream = 0x20 as FilterEnvoyPtr;
        let t = Duration::from_millis(400);
        let own = grpc_call(Some((9, stream)), (0, 0), &service, "s", "M", &[], b"", t).unwrap();
        let refill = grpc_call(Some((9, stream)), (0, 0), &service, "s", "M", &[], b"", t).unwrap();
        assert!(
            SENT.with(|s| s.borrow().is_empty()),
            "nothing sent in the hook"
        );
        let mut calls = take_unsent();
        let r = calls.pop().unwrap();
        let o = calls.pop().unwrap();
        assert_eq!((o.token, r.token), (own, refill));
        // The stream's own call: on its stream, answered there.
        o.send_on_carrier().unwrap();
        assert!(has_pending(9));
        assert_eq!(take(9, 0, 1), Some((own, Kind::Grpc)));
        assert!(!has_pending(9));
        // The refill (the stream went away meanwhile: it does not matter):
        // on the main thread, through the configuration's callout, with
        // what is left of its timeout; answered to the main thread.
        let main = 0x30 as abi::ConfigEnvoyPtr;
        set_main(main);
        let token = send_relayed(&r, Duration::from_millis(250)).unwrap();
        clear_main();
        assert!(!has_pending(9));
        assert!(has_pending(MAIN_CARRIER));
        // Envoy numbers callouts per configuration: another's id 2 is not it.
        assert_eq!(take(MAIN_CARRIER, 0x31, 2), None);
        assert_eq!(take(MAIN_CARRIER, 0x30, 2).map(|(t, _)| t), Some(token));
        SENT.with(|s| {
            assert_eq!(
                *s.borrow(),
                [
                    (0x20, true, "ratelimit".to_owned(), 400),
                    (0x30, false, "ratelimit".to_owned(), 250)
                ]
            )
        });
        // Without a configuration hook a relayed call is not sent.
        assert!(send_relayed(&r, t).is_err());
        // Envoy's refusal is an error, naming the cause; nothing pending.
        let missing = Unsent {
            cluster: "missing".into(),
            ..r
        };
        let e = missing.send_on_carrier().unwrap_err();
        assert!(e.0.contains("cluster not found"), "{}", e.0);
        assert!(!has_pending(9));
    }

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
    fn a_workers_grpc_call_waits_for_its_hook_to_return() {
        let service = crate::ratelimit::rls::grpc_service("ratelimit");
        let filter = 0x10 as FilterEnvoyPtr; // never dereferenced here
        let token = grpc_call(
            Some((7, filter)),
            (3, 0x11),
            &service,
            "svc",
            "M",
            &[("x-a", b"1")],
            b"msg",
            Duration::from_millis(300),
        )
        .unwrap();
        // Not on the stream (nothing would hold it): routed after the hook.
        assert!(!has_pending(7));
        assert!(has_unsent());
        let unsent = take_unsent();
        assert!(!has_unsent());
        let [u] = unsent.as_slice() else {
            panic!("one call")
        };
        assert_eq!((u.token, u.carrier, u.filter()), (token, 7, filter));
        assert_eq!(u.cluster, "ratelimit");
        assert_eq!(u.body, [0, 0, 0, 0, 3, b'm', b's', b'g']);
        assert!(u
            .headers
            .iter()
            .any(|(n, v)| n == ":path" && v.as_slice() == b"/svc/M"));
        assert!(u.headers.iter().any(|(n, v)| n == "x-a" && v == b"1"));
        // Tokens stay unique per thread.
        let next = grpc_call(None, (0, 0), &service, "svc", "M", &[], b"", Duration::ZERO).unwrap();
        assert_ne!(next, token);
        let unsent = take_unsent();
        let [u] = unsent.as_slice() else {
            panic!("one call")
        };
        assert_eq!(
            (u.carrier, u.filter()),
            (0, std::ptr::null_mut()),
            "no hook: no carrier"
        );
        assert!(
            u.send_on_carrier().is_err(),
            "a call for no stream is not sent on one"
        );
        // Without a stream of its own, a call is for the running hook's
        // stream (the host's carrier), not any other.
        let t = grpc_call(
            None,
            (4, 0x12),
            &service,
            "svc",
            "M",
            &[],
            b"",
            Duration::ZERO,
        )
        .unwrap();
        let unsent = take_unsent();
        let [u] = unsent.as_slice() else {
            panic!("one call")
        };
        assert_eq!((u.token, u.carrier, u.filter() as usize), (t, 4, 0x12));
    }

    /// An HTTP call goes at once on the running hook's stream (the host's
    /// carrier), and is pending there; with no stream and no
    /// configuration hook it is refused.
    #[test]
    fn an_http_call_goes_on_the_running_hooks_stream() {
        let t = Duration::from_millis(700);
        let token = http_call((6, 0x16), "jwks", &[(":path", "/k")], None, t).unwrap();
        assert!(has_pending(6));
        assert!(!has_pending(7));
        SENT.with(|s| {
            assert_eq!(
                s.borrow().last(),
                Some(&(0x16, true, "jwks".to_owned(), 700))
            )
        });
        assert_eq!(take_all(6), [(token, Kind::Http)]);
        let e = http_call((0, 0), "jwks", &[], None, t).unwrap_err();
        assert!(e.0.contains("no stream"), "{}", e.0);
    }

    #[test]
    fn a_relayed_refill_gets_what_is_left_of_its_timeout() {
        const MS: u64 = 1_000_000;
        let timeout = Duration::from_millis(500);
        let sent = 1_000 * MS;
        let l = LeaseRefill {
            route: 0,
            limit: 0,
            identity: "i".into(),
            asked: 8,
            sent_ns: sent,
            deadline_ns: sent + 500 * MS + GRACE_NS,
        };
        // At once: its own timeout.
        assert_eq!(relay_timeout(Some(&l), timeout, sent), Some(timeout));
        // 200 ms later (a busy main thread): what is left, so the answer
        // lands before the refill flag is released.
        assert_eq!(
            relay_timeout(Some(&l), timeout, sent + 200 * MS),
            Some(Duration::from_millis(300))
        );
        // The flag's time is (almost) gone: not sent, failed.
        assert_eq!(relay_timeout(Some(&l), timeout, sent + 500 * MS), None);
        assert_eq!(relay_timeout(Some(&l), timeout, sent + 499 * MS + 1), None);
        assert_eq!(relay_timeout(Some(&l), timeout, u64::MAX), None);
        // A report keeps its own.
        assert_eq!(relay_timeout(None, timeout, u64::MAX), Some(timeout));
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
