//! libFuzzer entry of `targets/header_map.rs` (see there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meshguard_fuzz::header_map::run(data));
