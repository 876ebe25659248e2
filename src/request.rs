//! The request as the features see it: plain data, read once from the host.
//!
//! Header names are lower case (HTTP/2 and Envoy normalise them); values are
//! bytes, since HTTP does not promise UTF-8.

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
    pub headers: Vec<(String, Vec<u8>)>,
    /// Downstream peer IP (no port), from `source.address`.
    pub peer_ip: String,
}

impl Request {
    /// First value of a header (names compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    /// First value of a header as UTF-8 text, if it is text.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.header(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// All values of a header, in order.
    pub fn header_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    /// Path without the query string.
    pub fn path_only(&self) -> &str {
        match self.path.find(['?', '#']) {
            Some(i) => &self.path[..i],
            None => &self.path,
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
    pub fn host_no_port(&self) -> String {
        strip_port(&self.authority).to_ascii_lowercase()
    }

    /// Client IP: the peer address, or with `xff_trusted_hops = N > 0` the
    /// N-th address from the right of `X-Forwarded-For` (all headers joined).
    /// Falls back to the peer address when the header has fewer entries.
    pub fn client_ip(&self, xff_trusted_hops: u32) -> String {
        if xff_trusted_hops == 0 {
            return self.peer_ip.clone();
        }
        let mut addrs: Vec<&str> = Vec::new();
        for v in self.header_all("x-forwarded-for") {
            if let Ok(v) = std::str::from_utf8(v) {
                addrs.extend(v.split(',').map(str::trim).filter(|s| !s.is_empty()));
            }
        }
        let n = xff_trusted_hops as usize;
        if addrs.len() >= n {
            addrs[addrs.len() - n].to_string()
        } else {
            self.peer_ip.clone()
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

/// Extracts the IP from Envoy's `source.address` (`1.2.3.4:5678`, `[::1]:80`).
pub fn ip_of_address(addr: &str) -> String {
    let host = strip_port(addr);
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .to_string()
}

/// Percent-decodes `s` (`+` as space, as in forms); `None` if not UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(b[i + 1]), hex(b[i + 2])) {
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
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                .collect(),
            peer_ip: "10.0.0.9".into(),
        }
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
        assert_eq!(r.client_ip(0), "10.0.0.9");
        assert_eq!(r.client_ip(1), "3.3.3.3");
        assert_eq!(r.client_ip(3), "1.1.1.1");
        // Fewer entries than trusted hops: the peer is the best we know.
        assert_eq!(r.client_ip(4), "10.0.0.9");
    }

    #[test]
    fn ports_are_stripped_from_hosts_and_addresses() {
        assert_eq!(strip_port("a.com:80"), "a.com");
        assert_eq!(strip_port("a.com"), "a.com");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(ip_of_address("127.0.0.1:5555"), "127.0.0.1");
        assert_eq!(ip_of_address("[::1]:5555"), "::1");
        assert_eq!(req(&[]).host_no_port(), "api.example.com");
    }

    #[test]
    fn percent_decoding_keeps_bad_escapes() {
        assert_eq!(percent_decode("a%2Fb").as_deref(), Some("a/b"));
        assert_eq!(percent_decode("100%").as_deref(), Some("100%"));
        assert_eq!(percent_decode("%zz").as_deref(), Some("%zz"));
        assert_eq!(percent_decode("%ff"), None);
    }
}
