//! Client addresses as rate-limit identities: one spelling per client.
//!
//! `::1`, `0:0:0:0:0:0:0:1` and `[::1]` are one client, so are `1.2.3.4`
//! and `::ffff:1.2.3.4`; `001.002.003.004` is no address at all. An
//! address is parsed (brackets and a port around it are accepted, as
//! proxies write them) and written canonically: IPv4 dotted decimal,
//! IPv4-mapped IPv6 as IPv4, IPv6 as RFC 5952 text. With `ipv6_prefix`
//! (`client_ip.ipv6_prefix`, e.g. 64) an IPv6 client is its prefix
//! (`2001:db8:1:2::/64`), since one client commonly holds a whole /64 and
//! could otherwise rotate through buckets at will.
//!
//! Text that is not an address (a forged `X-Forwarded-For` entry, a zone
//! id, leading zeros) is the one identity [`UNPARSED`]: every such
//! request shares one bucket, never a fresh one per spelling.

use crate::config::raw::RawClientIp;
use crate::config::ConfigError;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// How the client address is found and written (`client_ip` in the
/// configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIpRule {
    /// 0: the peer address; N: the N-th `X-Forwarded-For` entry from the right.
    pub xff_trusted_hops: u32,
    /// IPv6 clients are identified by this prefix (128: whole addresses).
    pub ipv6_prefix: u8,
}

impl ClientIpRule {
    /// The top-level `client_ip` section (absent: the peer address, whole
    /// IPv6 addresses).
    pub fn compile(raw: Option<&RawClientIp>) -> Result<ClientIpRule, ConfigError> {
        let mut rule = ClientIpRule::default();
        let Some(ip) = raw else {
            return Ok(rule);
        };
        if ip.xff_trusted_hops > 64 {
            return Err(ConfigError::expected(
                "client_ip.xff_trusted_hops",
                "an integer from 0 to 64",
                ip.xff_trusted_hops,
            ));
        }
        rule.xff_trusted_hops = ip.xff_trusted_hops;
        if let Some(p) = ip.ipv6_prefix {
            if !(1..=128).contains(&p) {
                return Err(ConfigError::expected(
                    "client_ip.ipv6_prefix",
                    "a prefix length from 1 to 128",
                    p,
                ));
            }
            rule.ipv6_prefix = p;
        }
        Ok(rule)
    }
}

impl Default for ClientIpRule {
    fn default() -> Self {
        ClientIpRule {
            xff_trusted_hops: 0,
            ipv6_prefix: 128,
        }
    }
}

impl ClientIpRule {
    /// The rule with `hops` trusted hops, whole IPv6 addresses.
    pub fn hops(hops: u32) -> ClientIpRule {
        ClientIpRule {
            xff_trusted_hops: hops,
            ..ClientIpRule::default()
        }
    }
}

/// The identity of every client address that does not parse.
pub const UNPARSED: &str = "unparsed";

/// Parses an address as found in `X-Forwarded-For` or `source.address`:
/// `1.2.3.4`, `1.2.3.4:80`, `::1`, `[::1]`, `[::1]:80`.
pub fn parse(text: &str) -> Option<IpAddr> {
    let t = text.trim();
    if let Some(rest) = t.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        if !(after.is_empty()
            || after
                .strip_prefix(':')
                .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())))
        {
            return None;
        }
        return inside.parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    }
    if let Ok(ip) = t.parse::<IpAddr>() {
        return Some(ip);
    }
    // `a.b.c.d:port`
    let (host, port) = t.rsplit_once(':')?;
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    host.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
}

/// The canonical identity of `text` (see the module docs); `ipv6_prefix`
/// of 128 keeps whole IPv6 addresses.
pub fn canonical(text: &str, ipv6_prefix: u8) -> String {
    match parse(text) {
        None => UNPARSED.to_string(),
        Some(ip) => canonical_ip(ip, ipv6_prefix),
    }
}

/// [`canonical`] of a parsed address.
pub fn canonical_ip(ip: IpAddr, ipv6_prefix: u8) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None if ipv6_prefix >= 128 => v6.to_string(),
            None => {
                let bits = u128::from(v6);
                let keep = u32::from(ipv6_prefix.min(128));
                let mask = u128::MAX.checked_shl(128 - keep).unwrap_or(0);
                format!("{}/{}", Ipv6Addr::from(bits & mask), keep)
            }
        },
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_of_an_address_is_one_identity() {
        let groups: &[(&str, &[&str])] = &[
            (
                "::1",
                &[
                    "::1",
                    "0:0:0:0:0:0:0:1",
                    "[::1]",
                    "[::1]:8080",
                    " ::1 ",
                    "0::1",
                ],
            ),
            (
                "1.2.3.4",
                &[
                    "1.2.3.4",
                    "::ffff:1.2.3.4",
                    "::FFFF:102:304",
                    "[::ffff:1.2.3.4]:443",
                    "1.2.3.4:5678",
                ],
            ),
            (
                "2001:db8::1",
                &["2001:DB8::1", "2001:0db8:0000:0000:0000:0000:0000:0001"],
            ),
        ];
        for (want, spellings) in groups {
            for s in *spellings {
                assert_eq!(canonical(s, 128), *want, "{s}");
            }
        }
    }

    #[test]
    fn text_that_is_not_an_address_is_one_shared_identity() {
        for s in [
            "001.002.003.004",
            "1.2.3",
            "1.2.3.4.5",
            "256.1.1.1",
            "fe80::1%eth0",
            "[::1",
            "[::1]x",
            "[::1]:",
            "1.2.3.4:",
            "1.2.3.4:x",
            "localhost",
            "",
            "unknown",
            "0x7f.1",
        ] {
            assert_eq!(canonical(s, 128), UNPARSED, "{s:?}");
        }
    }

    #[test]
    fn ipv6_clients_can_be_aggregated_by_prefix() {
        assert_eq!(canonical("2001:db8:1:2:aaaa::1", 64), "2001:db8:1:2::/64");
        assert_eq!(canonical("2001:db8:1:2:bbbb::9", 64), "2001:db8:1:2::/64");
        assert_eq!(canonical("2001:db8:1:3::1", 64), "2001:db8:1:3::/64");
        assert_eq!(canonical("2001:db8:1:2::1", 48), "2001:db8:1::/48");
        assert_eq!(canonical("2001:db8::1", 0), "::/0");
        // IPv4 (mapped or not) is never aggregated.
        assert_eq!(canonical("::ffff:1.2.3.4", 64), "1.2.3.4");
        assert_eq!(canonical("1.2.3.4", 64), "1.2.3.4");
    }
}
