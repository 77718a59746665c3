//! Round trips over the committed vectors, the golden payloads that pin the
//! bilevel format, and the full benchmark corpus when it has been built
//! (`cargo xtask bench codecs` makes it in target/codec-corpus).

mod common;

use bitmask_codec::{Choice, Decoder, Encoder, FrameInfo, CODEC_BILEVEL, FLAG_DELTA};
use common::{corpus_dir, load, skip, stream_roundtrip, streams, vectors_dir};

#[test]
fn committed_vectors_roundtrip_with_every_choice() {
    let masks = load(&vectors_dir()).expect("committed vectors");
    assert!(masks.len() >= 10);
    for s in streams(&masks) {
        for choice in Choice::available() {
            for interval in [1, 0, 3] {
                stream_roundtrip(choice, interval, &s);
            }
        }
    }
}

#[test]
fn bilevel_beats_zstd_and_temporal_pays_on_vectors() {
    let masks = load(&vectors_dir()).expect("committed vectors");
    for s in streams(&masks) {
        let alone: usize = stream_roundtrip(Choice::Bilevel, 1, &s)[1..].iter().sum();
        let temporal: usize = stream_roundtrip(Choice::Bilevel, 0, &s)[1..].iter().sum();
        // (a build without the zstd feature has nothing to compare with)
        if Choice::Zstd.is_available() {
            let zstd: usize = stream_roundtrip(Choice::Zstd, 1, &s).iter().sum();
            let bilevel_all: usize = stream_roundtrip(Choice::Bilevel, 1, &s).iter().sum();
            assert!(
                bilevel_all <= zstd,
                "{}: bilevel {bilevel_all} zstd {zstd}",
                s[0].name
            );
        }
        if s.len() > 1 {
            // Never larger with temporal coding, and clearly smaller on the moving object.
            assert!(
                temporal <= alone,
                "{}: temporal {temporal} alone {alone}",
                s[0].group
            );
            if s[0].group == "object" {
                assert!(
                    temporal * 3 < alone * 2,
                    "object: temporal {temporal} alone {alone}"
                );
            }
        }
    }
}

/// Golden payloads: `<name>.blv` is the bilevel key frame of a vector and
/// `object_01.delta.blv` the delta frame of object_01 against object_00
/// (sequence numbers 0 and 1). Set BITMASK_REGEN_VECTORS=1 to rewrite them
/// after a deliberate format change.
#[test]
fn golden_payloads_decode() {
    let dir = vectors_dir();
    let masks = load(&dir).expect("committed vectors");
    let find = |n: &str| masks.iter().find(|m| m.name == n).unwrap();
    let regen = std::env::var_os("BITMASK_REGEN_VECTORS").is_some();
    let mut dec = Decoder::new();
    for name in ["otsu_camera", "otsu_page", "object_00"] {
        let m = find(name);
        let path = dir.join(format!("{name}.blv"));
        if regen {
            let mut p = Vec::new();
            let e = Encoder::new(Choice::Bilevel, 1)
                .encode(&m.bits, m.width, m.height, 0, &mut p)
                .unwrap();
            assert_eq!(e.codec, CODEC_BILEVEL);
            std::fs::write(&path, &p).unwrap();
        }
        let p = std::fs::read(&path).unwrap();
        let mut out = vec![0u8; m.bits.len()];
        dec.decode(
            &FrameInfo {
                codec: CODEC_BILEVEL,
                flags: 0,
                sequence: 0,
                width: m.width,
                height: m.height,
            },
            &p,
            &mut out,
        )
        .unwrap();
        assert!(
            out == m.bits,
            "{name}: golden payload decodes to another mask"
        );
    }
    let (m0, m1) = (find("object_00"), find("object_01"));
    let path = dir.join("object_01.delta.blv");
    if regen {
        let mut enc = Encoder::new(Choice::Bilevel, 0);
        let mut p = Vec::new();
        enc.encode(&m0.bits, m0.width, m0.height, 0, &mut p)
            .unwrap();
        p.clear();
        let e = enc
            .encode(&m1.bits, m1.width, m1.height, 1, &mut p)
            .unwrap();
        assert_eq!(e.flags, FLAG_DELTA);
        std::fs::write(&path, &p).unwrap();
    }
    let p = std::fs::read(&path).unwrap();
    let mut out = vec![0u8; m1.bits.len()];
    // The decoder holds object_00 as frame 0 from the loop above.
    dec.decode(
        &FrameInfo {
            codec: CODEC_BILEVEL,
            flags: FLAG_DELTA,
            sequence: 1,
            width: m1.width,
            height: m1.height,
        },
        &p,
        &mut out,
    )
    .unwrap();
    assert!(out == m1.bits);
}

#[test]
fn full_corpus_roundtrip() {
    let dir = corpus_dir();
    let Some(masks) = load(&dir) else {
        skip(&format!(
            "no corpus in {} (cargo xtask ci and cargo xtask bench codecs build it)",
            dir.display()
        ));
        return;
    };
    assert!(
        masks.len() >= 100,
        "{} masks in {}",
        masks.len(),
        dir.display()
    );
    for s in streams(&masks) {
        stream_roundtrip(Choice::Bilevel, 1, &s);
        stream_roundtrip(Choice::Bilevel, 0, &s);
        stream_roundtrip(Choice::Auto, 30, &s);
    }
    eprintln!("{} corpus masks round-trip", masks.len());
}
