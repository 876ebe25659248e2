//! libFuzzer entry of `targets/http_date.rs` (see there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meshguard_fuzz::http_date::run(data));
