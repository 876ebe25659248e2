//! HTTP dates (IMF-fixdate, RFC 850, asctime): parsing, and formatting
//! round trips.
use meshguard::cache::httpdate;

pub fn run(data: &[u8]) {
    if let Some(secs) = httpdate::parse(data) {
        let text = httpdate::format(secs);
        assert_eq!(httpdate::parse(text.as_bytes()), Some(secs), "{text}");
    }
    let secs = super::common::Bytes(data).u64();
    let text = httpdate::format(secs);
    if let Some(back) = httpdate::parse(text.as_bytes()) {
        assert_eq!(back, secs, "{text}");
    }
}
