//! libFuzzer entry of `targets/rls_response.rs` (see there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meshguard_fuzz::rls_response::run(data));
