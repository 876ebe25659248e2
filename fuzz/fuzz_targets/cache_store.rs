//! libFuzzer entry of `targets/cache_store.rs` (see there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meshguard_fuzz::cache_store::run(data));
