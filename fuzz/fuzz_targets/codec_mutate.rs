#![no_main]
//! See `bitmask_fuzz::codec_mutate`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| bitmask_fuzz::codec_mutate::run(data));
