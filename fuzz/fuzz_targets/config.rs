#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sahara::fuzz_targets::config(data));
