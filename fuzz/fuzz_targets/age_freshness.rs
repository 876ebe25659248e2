//! libFuzzer entry of `targets/age_freshness.rs` (see there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meshguard_fuzz::age_freshness::run(data));
