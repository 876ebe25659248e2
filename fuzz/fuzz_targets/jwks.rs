//! libFuzzer entry of `targets/jwks.rs` (see there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meshguard_fuzz::jwks::run(data));
