//! A response's freshness facts: `Age`, `Date`, `Expires`,
//! `Last-Modified`, `Cache-Control` together (RFC 9111 4.2), the current
//! age at any clock (backwards included) and what the entry may serve.
use meshguard::cache::directives::RequestDirectives;
use meshguard::cache::freshness::{self, Facts, FreshnessConfig};

pub fn run(data: &[u8]) {
    let mut r = super::common::Bytes(data);
    let (t_req, t_resp, now) = (r.u64(), r.u64(), r.u64());
    let status = u32::from(r.u16());
    let h = super::common::fields(r.rest());
    let _ = freshness::age_header(&h);
    let _ = freshness::date_secs(&h);
    let _ = freshness::current_age(&h, t_req, t_resp, now);
    let facts = Facts::of(&h, t_req, t_resp);
    for cfg in [
        FreshnessConfig {
            default_ttl_secs: None,
            heuristic: true,
        },
        FreshnessConfig {
            default_ttl_secs: Some(u64::MAX),
            heuristic: false,
        },
    ] {
        let (lifetime, _) = facts.lifetime(status, cfg);
        let age = freshness::age_at(facts.initial_age, t_resp, now);
        let resp = facts.directives();
        let req = RequestDirectives::parse(&h);
        let u = freshness::usability(lifetime, age, &resp, &req);
        let _ = u.ttl();
        let _ = freshness::stale_if_error_allows(lifetime, age, &resp, &req, None);
    }
}
