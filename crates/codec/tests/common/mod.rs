//! Shared helpers of the integration tests: corpus loading and stream round trips.
#![allow(dead_code)]

use bitmask_codec::{Choice, Decoder, Encoder, CODEC_RAW};
use std::path::{Path, PathBuf};

pub struct Mask {
    pub name: String,
    pub width: u32,
    pub height: u32,
    pub group: String,
    pub bits: Vec<u8>,
}

pub fn vectors_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

/// Where `cargo xtask` builds the corpus: `codec-corpus` in the target
/// directory (`CARGO_TARGET_DIR` when set, else the workspace's `target`).
pub fn corpus_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(t) if !t.is_empty() => PathBuf::from(t).join("codec-corpus"),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/codec-corpus"),
    }
}

/// Reports a test that cannot run here: says why on the process's stderr
/// (the harness's capture would hide `eprintln!`) and, under `CI=true` in
/// the bitmask repository, fails instead (nothing may be skipped there;
/// the crate's tests run from its package elsewhere, where `cargo xtask`
/// cannot make the corpus, only say so).
pub fn skip(why: &str) {
    use std::io::Write;
    let msg = format!("SKIP: {why}");
    let _ = writeln!(std::io::stderr(), "{msg}");
    let in_repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../xtask/Cargo.toml")
        .exists();
    if in_repo && std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("{msg} (CI=true: skipping is a failure)");
    }
}

/// Reads a corpus made by `tools/corpus/make_corpus.py` (`None` if absent).
pub fn load(dir: &Path) -> Option<Vec<Mask>> {
    let manifest = std::fs::read_to_string(dir.join("corpus.tsv")).ok()?;
    let mut out = Vec::new();
    for line in manifest.lines().skip(1).filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split('\t').collect();
        let (width, height) = (f[1].parse().unwrap(), f[2].parse().unwrap());
        let bits = std::fs::read(dir.join(f[0])).unwrap();
        assert_eq!(
            bits.len(),
            (width as usize).div_ceil(8) * height as usize,
            "{}",
            f[0]
        );
        out.push(Mask {
            name: f[0].trim_end_matches(".bits").to_owned(),
            width,
            height,
            group: f[3].to_owned(),
            bits,
        });
    }
    Some(out)
}

/// Codes `frames` as one stream with `choice`, decodes each frame, checks
/// it is bit-exact and no longer than raw. Returns the payload sizes.
pub fn stream_roundtrip(choice: Choice, interval: u32, frames: &[&Mask]) -> Vec<usize> {
    let mut enc = Encoder::new(choice, interval);
    let mut dec = Decoder::new();
    let mut out = Vec::new();
    let mut back = Vec::new();
    let mut sizes = Vec::new();
    for (i, m) in frames.iter().enumerate() {
        out.clear();
        out.extend_from_slice(&[7u8; 40]); // a header in front, as the sender does
        let e = enc
            .encode(&m.bits, m.width, m.height, 100 + i as u64, &mut out)
            .unwrap();
        assert_eq!(&out[..40], &[7u8; 40]);
        let payload = &out[40..];
        assert!(
            payload.len() <= m.bits.len(),
            "{} {choice}: payload over raw",
            m.name
        );
        if e.codec == CODEC_RAW {
            assert_eq!(payload, &m.bits[..]);
        }
        back.clear();
        back.resize(m.bits.len(), 0xA5);
        dec.decode(&e, payload, &mut back)
            .unwrap_or_else(|err| panic!("{} {choice} interval {interval}: {err}", m.name));
        assert!(
            back == m.bits,
            "{} {choice} interval {interval}: not bit-exact",
            m.name
        );
        sizes.push(payload.len());
    }
    sizes
}

/// Streams of a corpus: each still alone, each sequence group in order.
pub fn streams(masks: &[Mask]) -> Vec<Vec<&Mask>> {
    let mut out: Vec<Vec<&Mask>> = Vec::new();
    for m in masks {
        match out.last_mut() {
            Some(s) if s[0].group == m.group && !matches!(m.group.as_str(), "otsu" | "blue170") => {
                s.push(m)
            }
            _ => out.push(vec![m]),
        }
    }
    out
}
