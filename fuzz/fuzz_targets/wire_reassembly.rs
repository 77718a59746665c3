#![no_main]
//! See `bitmask_fuzz::wire_reassembly`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| bitmask_fuzz::wire_reassembly::run(data));
