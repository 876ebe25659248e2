//! A remote JWKS as read back from shared data: the fetch lease and the
//! shared key-set record (fetched-at + JSON), corrupt or foreign, through
//! poll / fetch result / keys as a worker does.
use meshguard::host::fake::FakeHost;
use meshguard::jwt::remote::{self, FetchFailure, RemoteJwks};

pub fn run(data: &[u8]) {
    let _ = remote::decode_record(data);
    let mut r = super::common::Bytes(data);
    let host = FakeHost::new(r.u64());
    let jwks = RemoteJwks::new(
        0,
        "p",
        "idp",
        "idp",
        "/jwks",
        1_000_000_000,
        600_000_000_000,
    );
    let lease = r.slice(64);
    host.put_raw(&jwks.lease_key(), lease);
    let record = r.slice(4096);
    if !record.is_empty() {
        host.put_raw(&jwks.record_key(), record);
    }
    let fetched = r.rest();
    for step in 0..4u8 {
        let _ = jwks.keys(&host);
        if jwks.poll(&host).is_some() {
            let result = match step % 2 {
                0 => Ok(fetched),
                _ => Err(FetchFailure::Status(500)),
            };
            let _ = jwks.on_fetch_result(&host, result);
        }
        jwks.request_refresh(&host);
        host.advance(std::time::Duration::from_secs(400));
    }
}
