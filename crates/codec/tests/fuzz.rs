//! Hostile-input suite for the decoders (proptest): random, truncated and
//! mutated payloads for every codec id, with and without a reference frame.
//! Decoding must return (Ok or Err) without panicking, touching only `out`.
//! The committed golden payloads in tests/vectors are the mutation seeds;
//! proptest keeps any failing case in proptest-regressions/.

mod common;

use bitmask_codec::{Choice, Decoder, Encoder, FrameInfo, CODEC_BILEVEL, FLAG_DELTA};
use common::{load, vectors_dir};
use proptest::prelude::*;

/// Width, height, frame 0, its key payload, frame 1, its delta payload.
type Seed = (u32, u32, Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>);

/// Valid (key, delta) pairs of payloads and the frames they code.
fn seeds() -> Vec<Seed> {
    let masks = load(&vectors_dir()).unwrap();
    let pairs = [
        ("object_00", "object_01"),
        ("pan_00", "pan_01"),
        ("noisy_00", "noisy_01"),
    ];
    pairs
        .iter()
        .map(|(a, b)| {
            let a = masks.iter().find(|m| m.name == *a).unwrap();
            let b = masks.iter().find(|m| m.name == *b).unwrap();
            let mut enc = Encoder::new(Choice::Bilevel, 0);
            let (mut pa, mut pb) = (Vec::new(), Vec::new());
            enc.encode(&a.bits, a.width, a.height, 0, &mut pa).unwrap();
            let e = enc.encode(&b.bits, b.width, b.height, 1, &mut pb).unwrap();
            assert_eq!(e.flags, FLAG_DELTA);
            (a.width, a.height, a.bits.clone(), pa, b.bits.clone(), pb)
        })
        .collect()
}

/// A decoder that holds frame 0 of seed `i`.
/// The header of a seed's key frame (sequence 0) ...
fn key(width: u32, height: u32) -> FrameInfo {
    FrameInfo {
        codec: CODEC_BILEVEL,
        flags: 0,
        sequence: 0,
        width,
        height,
    }
}

/// ... and of its delta frame (sequence 1).
fn delta(width: u32, height: u32) -> FrameInfo {
    FrameInfo {
        flags: FLAG_DELTA,
        sequence: 1,
        ..key(width, height)
    }
}

fn primed(seed: &Seed) -> Decoder {
    let (w, h, _, pa, _, _) = seed;
    let mut d = Decoder::new();
    let mut out = vec![0u8; (*w as usize).div_ceil(8) * *h as usize];
    d.decode(&key(*w, *h), pa, &mut out).unwrap();
    d
}

#[test]
fn every_prefix_of_valid_payloads_is_rejected_or_decoded_without_panic() {
    for seed in seeds() {
        let (w, h, _, pa, _, pb) = &seed;
        let len = (*w as usize).div_ceil(8) * *h as usize;
        let mut out = vec![0u8; len];
        let (_, _, fa, _, fb, _) = &seed;
        for cut in 0..pa.len() {
            let mut d = Decoder::new();
            assert!(d.decode(&key(*w, *h), &pa[..cut], &mut out).is_err());
            if cut % 97 == 0 {
                // the failed decode left the decoder usable
                d.decode(&key(*w, *h), pa, &mut out).unwrap();
                assert!(&out == fa, "key frame after a cut at {cut}");
            }
        }
        for cut in 0..pb.len() {
            let mut d = primed(&seed);
            assert!(d.decode(&delta(*w, *h), &pb[..cut], &mut out).is_err());
            if cut % 97 == 0 {
                // ... and its reference intact: the whole delta still decodes
                d.decode(&delta(*w, *h), pb, &mut out).unwrap();
                assert!(&out == fb, "delta frame after a cut at {cut}");
            }
        }
    }
}

/// Cases per property: 400, or `BITMASK_FUZZ_CASES` for a longer soak
/// (e.g. `BITMASK_FUZZ_CASES=100000 cargo test --release -p bitmask-codec --test fuzz`).
fn cases() -> u32 {
    std::env::var("BITMASK_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn random_payloads_never_panic(
        codec in 0u8..6,
        flags in 0u8..2,
        w in 1u32..300,
        h in 1u32..40,
        payload in proptest::collection::vec(any::<u8>(), 0..600),
        with_ref in any::<bool>(),
    ) {
        let mut d = Decoder::new();
        let len = (w as usize).div_ceil(8) * h as usize;
        let mut out = vec![0u8; len];
        if with_ref {
            let mut p = Vec::new();
            let e = Encoder::new(Choice::Bilevel, 1).encode(&vec![0x0Fu8; len], w, h, 5, &mut p).unwrap();
            d.decode(&e, &p, &mut out).unwrap();
        }
        // Random bytes, and random bytes behind a plausible bilevel header.
        let _ = d.decode(&FrameInfo { codec, flags, sequence: 6, width: w, height: h }, &payload, &mut out);
        // kind, reference sequence 5 (u64 LE), motion dx = 1, dy = -1
        let mut forged = vec![flags, 5, 0, 0, 0, 0, 0, 0, 0, 1, 0xFF];
        forged.truncate(if flags == 1 { 11 } else { 1 });
        forged.extend_from_slice(&payload);
        let _ = d.decode(&FrameInfo { codec: CODEC_BILEVEL, flags, sequence: 7, width: w, height: h }, &forged, &mut out);
        // Whatever that did, the decoder still decodes a valid frame exactly.
        let good: Vec<u8> = (0..len).map(|i| (i * 37 % 251) as u8).collect();
        let mut p = Vec::new();
        let e = Encoder::new(Choice::Bilevel, 1).encode(&good, w, h, 8, &mut p).unwrap();
        d.decode(&e, &p, &mut out).unwrap();
        // (bits past the width of each row are padding, cleared by the decoder)
        let stride = (w as usize).div_ceil(8);
        let pad = if w % 8 == 0 { 0xFF } else { !(0xFFu8 >> (w % 8)) };
        for (y, (a, b)) in out.chunks(stride).zip(good.chunks(stride)).enumerate() {
            prop_assert_eq!(&a[..stride - 1], &b[..stride - 1], "row {}", y);
            prop_assert_eq!(a[stride - 1], b[stride - 1] & pad, "row {} end", y);
        }
    }

    #[test]
    fn mutated_payloads_never_panic(
        which in 0usize..3,
        delta in any::<bool>(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..6),
    ) {
        let seeds = seeds();
        let seed = &seeds[which];
        let (w, h, _, pa, _, pb) = seed;
        let mut p = if delta { pb.clone() } else { pa.clone() };
        for (at, v, kind) in &edits {
            let i = at.index(p.len());
            match kind {
                0 => p[i] ^= v | 1,
                1 => p.insert(i, *v),
                _ => { p.remove(i); }
            }
            if p.is_empty() { p.push(*v); }
        }
        let mut d = if delta { primed(seed) } else { Decoder::new() };
        let mut out = vec![0u8; (*w as usize).div_ceil(8) * *h as usize];
        let flags = if delta { FLAG_DELTA } else { 0 };
        let _ = d.decode(&FrameInfo { codec: CODEC_BILEVEL, flags, sequence: 1, width: *w, height: *h }, &p, &mut out);
        // Wrong dimensions for the same payload must not panic either.
        let mut small = vec![0u8; 3 * 7];
        let _ = d.decode(&FrameInfo { codec: CODEC_BILEVEL, flags, sequence: 2, width: 17, height: 7 }, &p, &mut small);
    }

    #[test]
    fn random_masks_roundtrip(
        w in 1u32..200,
        h in 1u32..24,
        seed in any::<u64>(),
        density in 0u32..6,
        frames in 1usize..4,
        choice in prop::sample::select(Choice::available().collect::<Vec<_>>()),
    ) {
        // Runs of random length: from noise (density 0) to long runs.
        let stride = (w as usize).div_ceil(8);
        let mut x = seed | 1;
        let mut rnd = move || { x ^= x << 13; x ^= x >> 7; x ^= x << 17; x };
        let mut enc = Encoder::new(choice, 2);
        let mut dec = Decoder::new();
        let mut prev: Option<Vec<u8>> = None;
        for f in 0..frames {
            let mut m = vec![0u8; stride * h as usize];
            for y in 0..h as usize {
                let mut bit = rnd() & 1 == 1;
                let mut xpos = 0usize;
                while xpos < w as usize {
                    let run = 1 + (rnd() % (1u64 << (density * 2 + 1))) as usize;
                    for p in xpos..(xpos + run).min(w as usize) {
                        if bit { m[y * stride + p / 8] |= 0x80 >> (p % 8); }
                    }
                    xpos += run;
                    bit = !bit;
                }
            }
            if let (Some(p), true) = (&prev, f % 2 == 1) {
                // Half the frames: the previous one with a few bytes changed.
                m = p.clone();
                let i = (rnd() as usize) % m.len();
                m[i] ^= 0x18;
                if w % 8 != 0 { let keep = 0xFFu8 << (8 - w % 8); for r in m.chunks_exact_mut(stride) { r[stride - 1] &= keep; } }
            }
            let mut out = Vec::new();
            let e = enc.encode(&m, w, h, f as u64, &mut out).unwrap();
            prop_assert!(out.len() <= m.len());
            let mut back = vec![0u8; m.len()];
            dec.decode(&e, &out, &mut back).unwrap();
            prop_assert_eq!(&back, &m);
            prev = Some(m);
        }
    }
}
