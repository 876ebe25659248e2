//! libFuzzer entry of `targets/jwt_claims.rs` (see there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meshguard_fuzz::jwt_claims::run(data));
