//! libFuzzer entry of `targets/cache_control.rs` (see there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meshguard_fuzz::cache_control::run(data));
