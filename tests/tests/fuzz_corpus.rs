//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/*`, minimised
//! from libFuzzer campaigns: `cargo xtask fuzz`) through the same target
//! bodies, on stable Rust, in every test run: each input must pass the
//! target's own checks (no panic, bounded allocation, bit-exact round trips,
//! the right errors).

#[path = "../../fuzz/src/targets.rs"]
mod targets;

use std::path::Path;

#[global_allocator]
static A: targets::Counting = targets::Counting;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(
        files.len() >= 10,
        "{}: only {} inputs",
        dir.display(),
        files.len()
    );
    for f in &files {
        let data = std::fs::read(f).unwrap();
        let r = std::panic::catch_unwind(|| run(&data));
        assert!(r.is_ok(), "fuzz input {} fails its target", f.display());
    }
    eprintln!("{target}: {} corpus inputs replayed", files.len());
}

// One test, the targets one after the other: the allocation checks read a
// process-wide counter, which tests running in parallel would disturb.
#[test]
fn committed_fuzz_corpus_passes_every_target() {
    replay("codec_decode", targets::codec_decode::run);
    replay("codec_mutate", targets::codec_mutate::run);
    replay("roundtrip", targets::roundtrip::run);
    replay("wire_reader", targets::wire_reader::run);
    replay("codec_diff", targets::codec_diff::run);
    replay("wire_msgs", targets::wire_msgs::run);
    replay("wire_reassembly", targets::wire_reassembly::run);
}
