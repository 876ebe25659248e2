//! libFuzzer entry of `targets/cache_entry.rs` (see there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meshguard_fuzz::cache_entry::run(data));
