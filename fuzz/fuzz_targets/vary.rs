//! libFuzzer entry of `targets/vary.rs` (see there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meshguard_fuzz::vary::run(data));
