#![no_main]
//! See `bitmask_fuzz::codec_diff`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| bitmask_fuzz::codec_diff::run(data));
