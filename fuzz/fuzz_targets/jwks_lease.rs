//! libFuzzer entry of `targets/jwks_lease.rs` (see there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meshguard_fuzz::jwks_lease::run(data));
