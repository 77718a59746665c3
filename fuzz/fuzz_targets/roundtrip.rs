#![no_main]
//! See `bitmask_fuzz::roundtrip`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| bitmask_fuzz::roundtrip::run(data));
