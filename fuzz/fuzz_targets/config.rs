//! libFuzzer entry of `targets/config.rs` (see there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meshguard_fuzz::config::run(data));
