//! libFuzzer entry of `targets/etag.rs` (see there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meshguard_fuzz::etag::run(data));
