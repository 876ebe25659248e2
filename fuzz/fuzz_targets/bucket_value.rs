//! libFuzzer entry of `targets/bucket_value.rs` (see there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meshguard_fuzz::bucket_value::run(data));
