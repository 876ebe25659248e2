//! The request as the features see it: plain data, read once from the host.
//!
//! Header names are lower case (HTTP/2 and Envoy normalise them); values are
//! bytes, since HTTP does not promise UTF-8.

use crate::host::header_map::{pair_count, visit_pairs};
use crate::host::HeaderVisitor;

pub mod ip;
pub mod path;
pub mod spare;

pub use ip::ClientIpRule;

/// Longest header value meshguard looks at (bytes); longer values are
/// treated as absent by the features that parse them.
pub const MAX_HEADER_VALUE: usize = 16 * 1024;

#[derive(Debug, Clone, Default)]
pub struct Request {
    pub method: String,
    /// `:path` as sent, query string included.
    pub path: String,
    /// `:authority` (Host), port included if sent.
    pub authority: String,
    /// Header fields other than the pseudo-headers, in order.
    pub headers: Headers,
    /// Downstream peer IP (no port), from `source.address`, written
    /// canonically ([`ip::canonical`]).
    pub peer_ip: String,
    /// The normalised path ([`path::normalize`]) when it differs from
    /// [`Request::path_only`]; what routes match and `path` keys read.
    pub norm_path: Option<String>,
}

/// A request's header fields, in order, as `(name, value bytes)`: names
/// and values stay where the host's serialized map put them (or are
/// appended to the same buffer), found through an index of spans. Reading
/// a request therefore costs the host's buffer and the index whatever the
/// number of headers, instead of two allocations per header (profiled with
/// `bench/v8prof.cjs`: with a browser's dozen headers, the owned pairs
/// were two thirds of a no-policy request's wasm time).
#[derive(Clone, Default)]
pub struct Headers {
    buf: Vec<u8>,
    spans: Vec<Span>,
}

/// Where one field's name and value are in [`Headers::buf`].
#[derive(Clone, Copy)]
struct Span {
    name: (usize, usize),
    value: (usize, usize),
}

impl Headers {
    /// Takes the host's serialized header map (see `host::header_map`)
    /// without copying it: pseudo-headers (`:method`, ...) go to `pseudo`
    /// and are not kept as fields; the others are indexed. A name that is
    /// not UTF-8 (HTTP codecs do not let one through) is kept in its lossy
    /// form. A malformed buffer gives no headers at all.
    pub fn from_serialized(buf: Vec<u8>, mut pseudo: impl FnMut(&[u8], &[u8])) -> Headers {
        let base = buf.as_ptr() as usize;
        let at = |s: &[u8]| (s.as_ptr() as usize - base, s.len());
        // Sized once: the map's pair count (pseudo-headers included), at
        // most one pair per 10 bytes of the buffer.
        let count = pair_count(&buf).unwrap_or(0);
        let mut spans = Vec::with_capacity(count.min(buf.len() / 10));
        let mut lossy: Vec<(usize, String)> = Vec::new();
        visit_pairs(&buf, |name, value| {
            if name.first() == Some(&b':') {
                pseudo(name, value);
                return;
            }
            if !name.is_ascii() && std::str::from_utf8(name).is_err() {
                lossy.push((spans.len(), String::from_utf8_lossy(name).into_owned()));
            }
            spans.push(Span {
                name: at(name),
                value: at(value),
            });
        });
        let mut h = Headers { buf, spans };
        for (i, name) in lossy {
            let start = h.buf.len();
            h.buf.extend_from_slice(name.as_bytes());
            if let Some(s) = h.spans.get_mut(i) {
                s.name = (start, name.len());
            }
        }
        h
    }

    /// Room for `count` more fields of `bytes` bytes of names and values.
    pub fn reserve(&mut self, count: usize, bytes: usize) {
        self.spans.reserve(count);
        self.buf.reserve(bytes);
    }

    /// Appends a field as the host holds it: a name that is not UTF-8
    /// (HTTP codecs do not let one through) is kept in its lossy form, as
    /// [`Headers::from_serialized`] does.
    pub fn push_raw(&mut self, name: &[u8], value: &[u8]) {
        // ASCII (every name in practice) is UTF-8: checked word by word,
        // cheaper than `from_utf8` on short names.
        if name.is_ascii() {
            return self.push_bytes(name, value);
        }
        match std::str::from_utf8(name) {
            Ok(n) => self.push(n, value),
            Err(_) => self.push(&String::from_utf8_lossy(name), value),
        }
    }

    /// Appends a field.
    pub fn push(&mut self, name: &str, value: &[u8]) {
        self.push_bytes(name.as_bytes(), value);
    }

    /// Appends a field whose name is known to be UTF-8 (`name()` relies
    /// on it).
    fn push_bytes(&mut self, name: &[u8], value: &[u8]) {
        let name_at = self.buf.len();
        self.buf.extend_from_slice(name);
        let value_at = self.buf.len();
        self.buf.extend_from_slice(value);
        self.spans.push(Span {
            name: (name_at, name.len()),
            value: (value_at, value.len()),
        });
    }

    /// Drops every field whose name (as bytes) `drop` accepts.
    pub fn remove_where(&mut self, mut drop: impl FnMut(&[u8]) -> bool) {
        let Headers { buf, spans } = self;
        spans.retain(|s| {
            let name = buf.get(s.name.0..s.name.0 + s.name.1).unwrap_or_default();
            !drop(name)
        });
    }

    /// Removes every field named `name` (compared case-insensitively).
    /// Their bytes stay in the buffer until the headers are dropped.
    pub fn remove(&mut self, name: &str) {
        self.remove_where(|n| same_name(n, name.as_bytes()));
    }

    /// Replaces every field named `name` with one field of this value.
    pub fn set(&mut self, name: &str, value: &[u8]) {
        self.remove(name);
        self.push(name, value);
    }

    /// Drops every field, keeping the buffers.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.spans.clear();
    }

    /// The bytes the buffers hold room for (names and values, and the
    /// index).
    pub fn capacity_bytes(&self) -> usize {
        self.buf.capacity() + self.spans.capacity() * std::mem::size_of::<Span>()
    }

    /// Number of fields.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    fn bytes(&self, (at, len): (usize, usize)) -> &[u8] {
        self.buf.get(at..at + len).unwrap_or_default()
    }

    /// Whether the field's name is `name`, compared case-insensitively:
    /// the lengths first, from the span (most fields differ there, and
    /// then no bytes are read).
    fn is_named(&self, s: &Span, name: &[u8]) -> bool {
        s.name.1 == name.len() && same_name(self.bytes(s.name), name)
    }

    fn name(&self, s: &Span) -> &str {
        // Every name was checked (or made) UTF-8 when it was stored.
        std::str::from_utf8(self.bytes(s.name)).unwrap_or_default()
    }

    /// The fields in order, as `(name, value)`.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        self.spans
            .iter()
            .map(|s| (self.name(s), self.bytes(s.value)))
    }

    /// The fields in order, names as bytes (for comparisons: no UTF-8
    /// check).
    pub fn raw_iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.spans
            .iter()
            .map(|s| (self.bytes(s.name), self.bytes(s.value)))
    }

    /// All values of a header (names compared case-insensitively), in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.spans
            .iter()
            .filter(move |s| self.is_named(s, name.as_bytes()))
            .map(|s| self.bytes(s.value))
    }

    /// First value of a header.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.spans
            .iter()
            .find(|s| self.is_named(s, name.as_bytes()))
            .map(|s| self.bytes(s.value))
    }
}

/// Whether two header names are the same, compared case-insensitively.
/// Bytes equal first: hosts hand names in lower case (HTTP/2 requires it,
/// Envoy's HTTP/1 codec lowers them) and meshguard names them in lower
/// case, so the usual match is exact, found a word (natively a vector) at
/// a time; `eq_ignore_ascii_case`, a byte at a time (~200 instructions for
/// `authorization`), decides only the rest.
fn same_name(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && (crate::bytes::eq(a, b) || a.eq_ignore_ascii_case(b))
}

impl<N: AsRef<str>, V: AsRef<[u8]>> FromIterator<(N, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(pairs: I) -> Headers {
        let mut h = Headers::default();
        for (n, v) in pairs {
            h.push(n.as_ref(), v.as_ref());
        }
        h
    }
}

impl From<Vec<(String, Vec<u8>)>> for Headers {
    fn from(pairs: Vec<(String, Vec<u8>)>) -> Headers {
        pairs.into_iter().collect()
    }
}

impl std::fmt::Debug for Headers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.iter().map(|(n, v)| (n, String::from_utf8_lossy(v))))
            .finish()
    }
}

/// Reads a request straight from the host's buffers
/// ([`Stream::visit_request_headers`](crate::host::Stream::visit_request_headers)):
/// pseudo-headers into their fields, the others appended to `headers`.
impl HeaderVisitor for Request {
    fn reserve(&mut self, count: usize, bytes: usize) {
        self.headers.reserve(count, bytes);
    }

    fn pair(&mut self, name: &[u8], value: &[u8]) {
        if name.first() == Some(&b':') {
            self.set_pseudo(name, value);
        } else {
            self.headers.push_raw(name, value);
        }
    }

    fn pair_text(&mut self, name: &[u8], value: &str) {
        match self.pseudo_field(name) {
            Some(field) => {
                field.clear();
                field.push_str(value);
            }
            None => self.pair(name, value.as_bytes()),
        }
    }
}

impl Request {
    /// This request with every field empty, its buffers kept, for reuse
    /// ([`spare`]); `None` when its buffers hold more than `max_bytes`.
    /// Every field is named: a field added to `Request` must be emptied
    /// here too, or this stops compiling.
    pub fn emptied(mut self, max_bytes: usize) -> Option<Request> {
        let Request {
            method,
            path,
            authority,
            headers,
            peer_ip,
            norm_path,
        } = &mut self;
        let bytes = method.capacity()
            + path.capacity()
            + authority.capacity()
            + peer_ip.capacity()
            + headers.capacity_bytes();
        if bytes > max_bytes {
            return None;
        }
        method.clear();
        path.clear();
        authority.clear();
        peer_ip.clear();
        headers.clear();
        *norm_path = None;
        Some(self)
    }

    /// Keeps a pseudo-header's value: `:method`, `:path` and `:authority`
    /// (in their lossy UTF-8 form when they are not UTF-8); the others are
    /// not needed.
    pub fn set_pseudo(&mut self, name: &[u8], value: &[u8]) {
        let Some(field) = self.pseudo_field(name) else {
            return;
        };
        // Written into the field's own buffer (a spare request's, see
        // `spare`). `from_utf8` first: the lossy decoder's chunk iterator
        // costs more, and pseudo-header values are ASCII in practice.
        field.clear();
        match std::str::from_utf8(value) {
            Ok(t) => field.push_str(t),
            Err(_) => field.push_str(&String::from_utf8_lossy(value)),
        }
    }

    /// The field a pseudo-header is kept in (`:method`, `:path`,
    /// `:authority`); `None` for the others (and for any other name).
    fn pseudo_field(&mut self, name: &[u8]) -> Option<&mut String> {
        match name {
            b":method" => Some(&mut self.method),
            b":path" => Some(&mut self.path),
            b":authority" => Some(&mut self.authority),
            _ => None,
        }
    }

    /// First value of a header (names compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.get(name)
    }

    /// All values of a header, in order.
    pub fn header_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers.get_all(name)
    }

    /// Applies a change meshguard makes to the request it forwards, so that
    /// later stages see the request as the upstream will: `value` `None`
    /// removes every field named `name`, `Some` replaces them all with one.
    /// `:path` changes [`Request::path`] (a value that is not UTF-8 is kept
    /// in its lossy form); other pseudo-headers are not fields here and are
    /// ignored.
    pub fn forward_header(&mut self, name: &str, value: Option<&[u8]>) {
        if name.eq_ignore_ascii_case(":path") {
            if let Some(v) = value {
                self.set_pseudo(b":path", v);
            }
            return;
        }
        if name.starts_with(':') {
            return;
        }
        match value {
            Some(v) => self.headers.set(name, v),
            None => self.headers.remove(name),
        }
    }

    /// Path without the query string.
    pub fn path_only(&self) -> &str {
        // A byte search: a `char` pattern set costs ~10x more per request.
        match self.path.bytes().position(|b| b == b'?' || b == b'#') {
            Some(i) => self.path.get(..i).unwrap_or_default(),
            None => &self.path,
        }
    }

    /// The path routes match and `path` key parts read: normalised
    /// ([`path::normalize`]), or as sent when normalisation is off.
    pub fn match_path(&self) -> &str {
        self.norm_path
            .as_deref()
            .unwrap_or_else(|| self.path_only())
    }

    /// Normalises the path (once, when the request is read); the reason
    /// when it must be refused.
    pub fn normalize_path(&mut self, slashes: path::EscapedSlashes) -> Result<(), path::PathError> {
        if let std::borrow::Cow::Owned(p) = path::normalize(self.path_only(), slashes)? {
            self.norm_path = Some(p);
        }
        Ok(())
    }

    /// Lower-cases the path routes and keys read (a route matched with
    /// `"case_sensitive": false`: its keys must not tell `/A` from `/a`).
    pub fn fold_path_case(&mut self) {
        if self.match_path().bytes().any(|b| b.is_ascii_uppercase()) {
            self.norm_path = Some(self.match_path().to_ascii_lowercase());
        }
    }

    /// Raw query string (without `?`), if any.
    pub fn query(&self) -> Option<&str> {
        let q = self.path.split_once('?')?.1;
        Some(q.split_once('#').map_or(q, |(q, _)| q))
    }

    /// Value of a query parameter (first occurrence), percent-decoded.
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query()?.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k).as_deref() == Some(name)).then(|| percent_decode(v))?
        })
    }

    /// Value of a cookie (first occurrence across all `cookie` headers).
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.header_all("cookie").find_map(|v| {
            let v = std::str::from_utf8(v).ok()?;
            v.split(';').find_map(|c| {
                let (k, val) = c.trim().split_once('=')?;
                (k.trim() == name).then(|| val.trim().trim_matches('"').to_string())
            })
        })
    }

    /// Host without port, lower case.
    /// Host without port, lower case, without the trailing dot of a fully
    /// qualified name (`api.example.com.` is `api.example.com`).
    pub fn host_no_port(&self) -> String {
        let h = strip_port(&self.authority);
        h.strip_suffix('.').unwrap_or(h).to_ascii_lowercase()
    }

    /// Client IP, written canonically ([`ip`]): the peer address, or with
    /// `xff_trusted_hops = N > 0` the N-th address from the right of
    /// `X-Forwarded-For` (all headers joined; an entry that is not an
    /// address is [`ip::UNPARSED`]). Falls back to the peer address when
    /// the header has fewer entries.
    pub fn client_ip(&self, rule: ClientIpRule) -> String {
        if rule.xff_trusted_hops == 0 {
            return self.peer_ip.clone();
        }
        let mut addrs: Vec<&str> = Vec::new();
        for v in self.header_all("x-forwarded-for") {
            match std::str::from_utf8(v) {
                Ok(v) => addrs.extend(v.split(',').map(str::trim).filter(|s| !s.is_empty())),
                // Not text: one entry that is no address.
                Err(_) => addrs.push(""),
            }
        }
        let n = rule.xff_trusted_hops as usize;
        match addrs.len().checked_sub(n).and_then(|i| addrs.get(i)) {
            Some(a) => ip::canonical(a, rule.ipv6_prefix),
            None => self.peer_ip.clone(),
        }
    }
}

/// `host:port` -> `host`; `[v6]:port` -> `[v6]`.
pub fn strip_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        return match authority.find(']') {
            Some(i) => &authority[..=i],
            None => authority,
        };
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) && !h.contains(':') => h,
        _ => authority,
    }
}

/// Percent-decodes `s` (`+` as space, as in forms); `None` if not UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        match c {
            b'%' => {
                let hex = |c: Option<&u8>| c.and_then(|&c| (c as char).to_digit(16));
                match (hex(b.get(i + 1)), hex(b.get(i + 2))) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> Request {
        Request {
            method: "GET".into(),
            path: "/a/b?x=1&api_key=k%20y&x=2#frag".into(),
            authority: "api.example.com:8080".into(),
            headers: headers.iter().copied().collect(),
            peer_ip: "10.0.0.9".into(),
            norm_path: None,
        }
    }

    fn serialized(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
        crate::host::header_map::HeaderMap::from_pairs(pairs).finish()
    }

    #[test]
    fn headers_from_the_host_buffer_keep_order_and_skip_pseudo_headers() {
        let buf = serialized(&[
            (b":method", b"GET"),
            (b"x-a", b"1"),
            (b":path", b"/p"),
            (b"Cookie", b"a=1"),
            (b"x-a", b"2"),
            (b"empty", b""),
        ]);
        let mut pseudo = Vec::new();
        let h = Headers::from_serialized(buf, |n, v| pseudo.push((n.to_vec(), v.to_vec())));
        assert_eq!(
            pseudo,
            vec![
                (b":method".to_vec(), b"GET".to_vec()),
                (b":path".to_vec(), b"/p".to_vec())
            ]
        );
        let fields: Vec<(&str, &[u8])> = h.iter().collect();
        assert_eq!(
            fields,
            vec![
                ("x-a", &b"1"[..]),
                ("Cookie", b"a=1"),
                ("x-a", b"2"),
                ("empty", b"")
            ]
        );
        let raw: Vec<(&[u8], &[u8])> = h.raw_iter().collect();
        let as_bytes: Vec<(&[u8], &[u8])> =
            fields.iter().map(|(n, v)| (n.as_bytes(), *v)).collect();
        assert_eq!(raw, as_bytes);
        assert_eq!(h.len(), 4);
        assert_eq!(h.get("X-A"), Some(&b"1"[..]));
        assert_eq!(h.get("cookie"), Some(&b"a=1"[..]));
        assert_eq!(h.get_all("x-a").collect::<Vec<_>>(), vec![b"1", b"2"]);
        assert_eq!(h.get("empty"), Some(&b""[..]));
        assert_eq!(h.get("missing"), None);
        // A name of the same length that differs (exactly or in case).
        assert_eq!(h.get("x-b"), None);
        assert_eq!(h.get("X-B"), None);
        assert_eq!(h.get("COOKIE"), Some(&b"a=1"[..]));
    }

    /// A request read pair by pair from the host's buffers
    /// (`HeaderVisitor`, the native module) equals the one read from the
    /// serialized map (the wasm build): same pseudo-header fields, same
    /// fields in the same order, names that are not UTF-8 in the same
    /// lossy form, pseudo-header values that are not UTF-8 too.
    #[test]
    fn a_request_visited_in_place_equals_one_read_from_the_serialized_map() {
        let long = vec![b'v'; 20_000];
        let cases: Vec<Vec<(&[u8], &[u8])>> = vec![
            vec![],
            vec![
                (b":method", b"GET"),
                (b":path", b"/a?b=c"),
                (b":authority", b"h:8"),
            ],
            vec![
                (b":authority", b"h"),
                (b":method", b"POST"),
                (b":path", b"/p\xff"),
                (b":scheme", b"https"),
                (b"x-a", b"1"),
                (b"b\xffad", b"name not UTF-8"),
                (b"x-a", b"2"),
                (b"empty", b""),
                (b"c", &long),
                (b"v", b"\xff\xfe"),
                (b":path", b"/second"),
            ],
        ];
        for pairs in cases {
            let mut visited = Request::default();
            let bytes = pairs.iter().map(|(n, v)| n.len() + v.len()).sum();
            visited.reserve(pairs.len(), bytes);
            for (n, v) in &pairs {
                visited.pair(n, v);
            }
            // The native module hands values it found ASCII as text
            // (`pair_text`): every value that is UTF-8 that way here, the
            // others as bytes; the same request.
            let mut texts = Request::default();
            texts.reserve(pairs.len(), bytes);
            for (n, v) in &pairs {
                match std::str::from_utf8(v) {
                    Ok(t) => texts.pair_text(n, t),
                    Err(_) => texts.pair(n, v),
                }
            }
            let mut read = Request::default();
            read.headers =
                Headers::from_serialized(serialized(&pairs), |n, v| read.set_pseudo(n, v));
            assert_eq!(
                (&visited.method, &visited.path, &visited.authority),
                (&read.method, &read.path, &read.authority)
            );
            assert_eq!(
                (&texts.method, &texts.path, &texts.authority),
                (&read.method, &read.path, &read.authority)
            );
            assert_eq!(
                texts.headers.raw_iter().collect::<Vec<_>>(),
                read.headers.raw_iter().collect::<Vec<_>>()
            );
            let v: Vec<(&[u8], &[u8])> = visited.headers.raw_iter().collect();
            let r: Vec<(&[u8], &[u8])> = read.headers.raw_iter().collect();
            assert_eq!(v, r);
            assert_eq!(
                visited.headers.iter().collect::<Vec<_>>(),
                read.headers.iter().collect::<Vec<_>>()
            );
        }
        // The lossy name and value, spelled out once.
        let mut r = Request::default();
        r.pair(b"b\xffad", b"x");
        r.pair(b":path", b"/p\xff");
        assert_eq!(r.headers.get("b\u{fffd}ad"), Some(&b"x"[..]));
        assert_eq!(r.path, "/p\u{fffd}");
        assert!(r.method.is_empty() && r.authority.is_empty());
    }

    #[test]
    fn headers_agree_with_the_owned_decoding() {
        // Same fields, same order as `decode_pairs` gives them (minus the
        // pseudo-headers), for values of every length class and bytes that
        // are not UTF-8.
        let long = vec![b'v'; 20_000];
        let pairs: Vec<(&[u8], &[u8])> = vec![
            (b":authority", b"h"),
            (b"a", b""),
            (b"b", b"\xff\xfe"),
            (b"c", &long),
            (b"d", b"x y z"),
        ];
        let buf = serialized(&pairs);
        let owned = crate::host::header_map::decode_pairs(&buf).expect("well-formed");
        let h = Headers::from_serialized(buf, |_, _| {});
        let want: Vec<(String, Vec<u8>)> = owned
            .into_iter()
            .filter(|(n, _)| !n.starts_with(':'))
            .collect();
        let got: Vec<(String, Vec<u8>)> =
            h.iter().map(|(n, v)| (n.to_string(), v.to_vec())).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn a_name_that_is_not_utf8_is_kept_lossy_and_the_rest_is_intact() {
        let buf = serialized(&[(b"x-\xff", b"v1"), (b"y", b"v2")]);
        let h = Headers::from_serialized(buf, |_, _| {});
        let fields: Vec<(&str, &[u8])> = h.iter().collect();
        assert_eq!(fields, vec![("x-\u{fffd}", &b"v1"[..]), ("y", b"v2")]);
    }

    #[test]
    fn a_malformed_host_buffer_gives_no_headers_and_no_pseudo_headers() {
        let good = serialized(&[(b":path", b"/"), (b"a", b"1")]);
        for cut in 0..good.len() {
            let mut called = false;
            let h = Headers::from_serialized(good[..cut].to_vec(), |_, _| called = true);
            assert!(h.is_empty() && !called, "cut at {cut}");
        }
        // A count far past the buffer.
        let mut bad = good.clone();
        bad[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Headers::from_serialized(bad, |_, _| {}).is_empty());
    }

    #[test]
    fn headers_built_by_hand_read_back() {
        let mut h: Headers = vec![("a".to_string(), b"1".to_vec())].into();
        h.push("B", b"2");
        assert_eq!(
            h.iter().collect::<Vec<_>>(),
            vec![("a", &b"1"[..]), ("B", b"2")]
        );
        assert_eq!(h.get("b"), Some(&b"2"[..]));
        assert_eq!(format!("{h:?}"), r#"[("a", "1"), ("B", "2")]"#);
        assert!(Headers::default().is_empty());
    }

    #[test]
    fn forwarded_changes_replace_and_remove_every_copy() {
        let mut r = req(&[
            ("X-User", "mallory"),
            ("cookie", "a=1"),
            ("x-user", "eve"),
            ("accept", "*/*"),
            ("X-Usex", "kept: same length, another name"),
        ]);
        r.forward_header("x-user", Some(b"alice"));
        assert_eq!(r.header_all("x-user").collect::<Vec<_>>(), vec![b"alice"]);
        r.forward_header("COOKIE", None);
        assert_eq!(r.header("cookie"), None);
        r.forward_header("x-absent", None);
        r.forward_header(":path", Some(b"/a/b?x=1"));
        r.forward_header(":authority", Some(b"evil"));
        assert_eq!(
            (r.path.as_str(), r.authority.as_str()),
            ("/a/b?x=1", "api.example.com:8080")
        );
        let fields: Vec<(&str, &[u8])> = r.headers.iter().collect();
        assert_eq!(
            fields,
            vec![
                ("accept", &b"*/*"[..]),
                ("X-Usex", b"kept: same length, another name"),
                ("x-user", b"alice")
            ]
        );
    }

    #[test]
    fn query_params_decode_and_take_first() {
        let r = req(&[]);
        assert_eq!(r.query_param("x").as_deref(), Some("1"));
        assert_eq!(r.query_param("api_key").as_deref(), Some("k y"));
        assert_eq!(r.query_param("missing"), None);
        assert_eq!(r.path_only(), "/a/b");
    }

    #[test]
    fn cookies_across_headers() {
        let r = req(&[("cookie", "a=1; sid=abc"), ("cookie", "sid=zzz; b=\"q\"")]);
        assert_eq!(r.cookie("sid").as_deref(), Some("abc"));
        assert_eq!(r.cookie("b").as_deref(), Some("q"));
        assert_eq!(r.cookie("nope"), None);
    }

    #[test]
    fn client_ip_from_xff_counts_from_the_right() {
        let r = req(&[
            ("x-forwarded-for", "1.1.1.1, 2.2.2.2"),
            ("x-forwarded-for", "3.3.3.3"),
        ]);
        let hops = ClientIpRule::hops;
        assert_eq!(r.client_ip(hops(0)), "10.0.0.9");
        assert_eq!(r.client_ip(hops(1)), "3.3.3.3");
        assert_eq!(r.client_ip(hops(3)), "1.1.1.1");
        // Fewer entries than trusted hops: the peer is the best we know.
        assert_eq!(r.client_ip(hops(4)), "10.0.0.9");
    }

    #[test]
    fn client_ips_from_xff_are_canonical() {
        let cases = [
            ("::1", "::1"),
            ("0:0:0:0:0:0:0:1", "::1"),
            ("[::1]", "::1"),
            ("::ffff:1.2.3.4", "1.2.3.4"),
            ("1.2.3.4:999", "1.2.3.4"),
            ("001.002.003.004", ip::UNPARSED),
            ("not-an-ip", ip::UNPARSED),
        ];
        for (xff, want) in cases {
            let r = req(&[("x-forwarded-for", xff)]);
            assert_eq!(r.client_ip(ClientIpRule::hops(1)), want, "{xff}");
        }
        let r = req(&[("x-forwarded-for", "2001:db8:0:1:2:3:4:5")]);
        let rule = ClientIpRule {
            xff_trusted_hops: 1,
            ipv6_prefix: 64,
        };
        assert_eq!(r.client_ip(rule), "2001:db8:0:1::/64");
        let r = req(&[("x-forwarded-for", "1.1.1.1")]);
        let mut r2 = r.clone();
        r2.headers = vec![("x-forwarded-for".to_string(), b"\xff\xfe".to_vec())].into();
        assert_eq!(r2.client_ip(ClientIpRule::hops(1)), ip::UNPARSED);
        assert_eq!(r.client_ip(ClientIpRule::hops(1)), "1.1.1.1");
    }

    #[test]
    fn the_match_path_is_normalised_and_folded_on_demand() {
        let mut r = req(&[]);
        r.path = "/x/../A%62c//d?q=%2F".into();
        assert_eq!(r.match_path(), "/x/../A%62c//d");
        r.normalize_path(path::EscapedSlashes::Reject).unwrap();
        assert_eq!(r.match_path(), "/Abc/d");
        assert_eq!(
            r.path, "/x/../A%62c//d?q=%2F",
            "the path sent upstream is unchanged"
        );
        r.fold_path_case();
        assert_eq!(r.match_path(), "/abc/d");
        let mut bad = req(&[]);
        bad.path = "/a%2Fb".into();
        assert_eq!(
            bad.normalize_path(path::EscapedSlashes::Reject),
            Err(path::PathError::EscapedSlash)
        );
    }

    #[test]
    fn ports_are_stripped_from_hosts_and_addresses() {
        assert_eq!(strip_port("a.com:80"), "a.com");
        assert_eq!(strip_port("a.com"), "a.com");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(req(&[]).host_no_port(), "api.example.com");
        let mut fqdn = req(&[]);
        fqdn.authority = "API.example.com.:8443".into();
        assert_eq!(fqdn.host_no_port(), "api.example.com");
        fqdn.authority = "api.example.com.".into();
        assert_eq!(fqdn.host_no_port(), "api.example.com");
    }

    #[test]
    fn percent_decoding_keeps_bad_escapes() {
        assert_eq!(percent_decode("a%2Fb").as_deref(), Some("a/b"));
        assert_eq!(percent_decode("100%").as_deref(), Some("100%"));
        assert_eq!(percent_decode("%zz").as_deref(), Some("%zz"));
        // An escape cut by the end of the value stays as it is.
        assert_eq!(percent_decode("a%4").as_deref(), Some("a%4"));
        assert_eq!(percent_decode("a%41").as_deref(), Some("aA"));
        assert_eq!(percent_decode("%ff"), None);
    }
}
