//! libFuzzer entry of `targets/breaker_value.rs` (see there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meshguard_fuzz::breaker_value::run(data));
