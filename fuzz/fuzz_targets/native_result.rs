//! libFuzzer entry of `targets/native_result.rs` (see there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meshguard_fuzz::native_result::run(data));
