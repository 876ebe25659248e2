//! The rate limit service's gRPC answer (`RateLimitResponse` protobuf),
//! raw and as meshguard reads it for 0 to 3 global limits.
use meshguard::ratelimit::rls::{self, proto::RateLimitResponse};

pub fn run(data: &[u8]) {
    let _ = RateLimitResponse::decode(data);
    for n in 0..4 {
        if let Ok(v) = rls::decode(data, n) {
            assert_eq!(v.statuses.len(), n);
        }
    }
}
