//! Token-bucket rate limiting (placeholder docs; see below once complete).

pub mod policy;

pub use policy::{KeyPart, LimitPolicy};

/// Which rate-limit response headers to send (`rate_limit_headers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderStyle {
    Ietf,
    Legacy,
    Both,
    None,
}

impl HeaderStyle {
    pub fn parse(s: &str) -> Option<HeaderStyle> {
        match s {
            "ietf" => Some(HeaderStyle::Ietf),
            "legacy" => Some(HeaderStyle::Legacy),
            "both" => Some(HeaderStyle::Both),
            "none" => Some(HeaderStyle::None),
            _ => None,
        }
    }
}
