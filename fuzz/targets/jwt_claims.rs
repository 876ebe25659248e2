//! A JWT payload (claims JSON): parsing, numeric dates (`exp`, `nbf`,
//! `iat`, any number), audience, dotted claim look-ups, claim values
//! turned into header values.
use meshguard::jwt::claims::{self, Claims, TimePolicy};

pub fn run(data: &[u8]) {
    let Ok(c) = Claims::parse(data.to_vec()) else {
        return;
    };
    for now in [0, 1_700_000_000, i64::MAX, i64::MIN] {
        for p in [
            TimePolicy {
                skew: 60,
                require_exp: true,
                max_lifetime: Some(3600),
            },
            TimePolicy {
                skew: u64::MAX,
                require_exp: false,
                max_lifetime: Some(u64::MAX),
            },
        ] {
            let _ = claims::check_times(&c, &p, now);
        }
    }
    let _ = claims::audience_ok(&c, &["api".to_string()]);
    for path in ["sub", "org.id", "a.b.c.d", "https://x/roles", ".", "..", ""] {
        if let Some(v) = claims::lookup(&c, path) {
            let _ = meshguard::jwt::claim_header_value(v);
        }
    }
    let _ = c.json();
}
