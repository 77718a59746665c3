//! `bitmask-pibench OP N`: runs one operation N times on a 1024x768 frame, for
//! instruction counting under qemu (`cargo xtask bench pi`). The setup (test images,
//! masks, encoded payloads) does not depend on N, so
//! `(count(N) - count(0)) / N` is the cost of one frame.
//!
//! Built by xtask (xtask/src/pibench.rs) as its own little package under
//! target/pibench; it is not part of the Pi binaries.

use bitmask_core::{packed_len, threshold_pack, Channel, ImageRef, Params, PixelFormat};
use std::hint::black_box;

const W: usize = 1024;
const H: usize = 768;
/// Distinct frames in the moving test scene.
const K: usize = 8;

fn scene(k: usize, rgb: bool) -> Vec<u8> {
    let mut seed = 0x2545_f491_4f6c_dd1du64 ^ k as u64;
    let ch = if rgb { 3 } else { 1 };
    let mut v = Vec::with_capacity(W * H * ch);
    let (cx, cy, r2) = (300 + 9 * k as i64, 380 - 5 * k as i64, 160i64 * 160);
    for y in 0..H {
        for x in 0..W {
            let (dx, dy) = (x as i64 - cx, y as i64 - cy);
            let lit = dx * dx + dy * dy < r2 || ((x / 96 + y / 96) % 5 == 0 && x > 600);
            for c in 0..ch {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let base = if lit { 170 } else { 60 } + (x * 30 / W) as u64 + 10 * c as u64;
                v.push((base + seed % 24).min(255) as u8);
            }
        }
    }
    v
}

fn mask(gray: &[u8]) -> Vec<u8> {
    let img = ImageRef::new(gray, W, H, PixelFormat::Gray8).unwrap();
    let mut out = vec![0u8; packed_len(W, H)];
    threshold_pack(&img, &Params::new(Channel::Luma, 128), &mut out).unwrap();
    out
}

/// The codec ops: `cycle` (1024x768 masks in stream order) coded with
/// codec `name` and a key frame every `interval` frames, the round trip
/// checked (setup, independent of `n`); then `n` frames of the cycle,
/// repeated, encoded (`op` contains "enc-") or decoded from those payloads.
/// Returns a checksum.
#[cfg(feature = "codec")]
fn codec_loop(
    op: &str,
    name: &str,
    interval: u32,
    cycle: &[&[u8]],
    n: usize,
    out: &mut [u8],
) -> u64 {
    use bitmask_codec::{Choice, Decoder, Encoder};
    let choice: Choice = name.parse().expect("codec name");
    let frames = cycle.len();
    let mut enc = Encoder::new(choice, interval);
    let mut payloads = Vec::new();
    for (i, m) in cycle.iter().enumerate() {
        let mut p = Vec::new();
        // (the size as data, as a sender has it: constants here would be
        // folded into the codec's code, which the shipped binaries cannot do)
        let e = enc
            .encode(
                m,
                black_box(W as u32),
                black_box(H as u32),
                i as u64,
                &mut p,
            )
            .unwrap();
        payloads.push((p, e));
    }
    let mut dec = Decoder::new();
    for (i, (p, e)) in payloads.iter().enumerate() {
        dec.decode(e, p, out).unwrap();
        assert!(out == cycle[i], "decode mismatch");
    }
    let total: usize = payloads.iter().map(|(p, _)| p.len()).sum();
    eprintln!("pibench: {op}: {} B per frame on average", total / frames);
    let mut check = 0u64;
    if op.contains("enc-") {
        let mut enc = Encoder::new(choice, interval);
        let mut p = Vec::new();
        for i in 0..n {
            p.clear();
            enc.encode(
                black_box(cycle[i % frames]),
                black_box(W as u32),
                black_box(H as u32),
                i as u64,
                &mut p,
            )
            .unwrap();
            check += p.len() as u64;
        }
    } else {
        let mut dec = Decoder::new();
        for i in 0..n {
            let (p, e) = &payloads[i % frames];
            if i % frames == 0 {
                dec.reset();
            }
            // (frame i % frames was encoded as sequence i % frames)
            dec.decode(e, black_box(p), out).unwrap();
            check += out[i % out.len()] as u64;
        }
    }
    check
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let op = args.first().map(String::as_str).unwrap_or("list");
    let n: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1);
    let gray: Vec<Vec<u8>> = (0..K).map(|k| scene(k, false)).collect();
    let masks: Vec<Vec<u8>> = gray.iter().map(|g| mask(g)).collect();
    let mut out = vec![0u8; packed_len(W, H)];
    let mut check = 0u64;
    match op {
        "thresh-gray8" => {
            for i in 0..n {
                let img = ImageRef::new(&gray[i % K], W, H, PixelFormat::Gray8).unwrap();
                threshold_pack(black_box(&img), &Params::new(Channel::Luma, 128), &mut out)
                    .unwrap();
                check += black_box(&out)[i % out.len()] as u64;
            }
        }
        "thresh-rgb8-luma" | "thresh-rgb8-blue" => {
            let rgb: Vec<Vec<u8>> = (0..2).map(|k| scene(k, true)).collect();
            let ch = if op.ends_with("luma") {
                Channel::Luma
            } else {
                Channel::Blue
            };
            for i in 0..n {
                let img = ImageRef::new(&rgb[i % 2], W, H, PixelFormat::Rgb8).unwrap();
                threshold_pack(black_box(&img), &Params::new(ch, 128), &mut out).unwrap();
                check += black_box(&out)[i % out.len()] as u64;
            }
        }
        "crc" => {
            let header = [7u8; 36];
            for i in 0..n {
                check += bitmask_wire::crc(black_box(&header), black_box(&masks[i % K])) as u64;
            }
        }
        #[cfg(feature = "codec")]
        op if op.starts_with("enc-") || op.starts_with("dec-") => {
            // One ping-pong cycle of the scene, a key frame every 30 frames
            // (a sender at 30 fps with a 1 s key interval).
            let cycle: Vec<&[u8]> = (0..2 * K)
                .map(|j| masks[if j < K { j } else { 2 * K - 1 - j }].as_slice())
                .collect();
            check = codec_loop(op, &op[4..], 30, &cycle, n, &mut out);
        }
        #[cfg(feature = "codec")]
        op if op.starts_with("corpus-enc-") || op.starts_with("corpus-dec-") => {
            // Masks of the codec corpus (`cargo xtask bench codecs`), each
            // coded alone as that benchmark does: paths in BITMASK_PIBENCH_MASKS,
            // separated by ':', each a packed 1024x768 mask.
            let list = std::env::var("BITMASK_PIBENCH_MASKS").expect("BITMASK_PIBENCH_MASKS");
            let corpus: Vec<Vec<u8>> = list
                .split(':')
                .map(|p| {
                    let m = std::fs::read(p).unwrap_or_else(|e| panic!("{p}: {e}"));
                    assert_eq!(m.len(), packed_len(W, H), "{p}: not a packed 1024x768 mask");
                    m
                })
                .collect();
            let cycle: Vec<&[u8]> = corpus.iter().map(Vec::as_slice).collect();
            check = codec_loop(op, &op[11..], 1, &cycle, n, &mut out);
        }
        "setup" => {}
        _ => {
            let mut ops = vec![
                "thresh-gray8",
                "thresh-rgb8-luma",
                "thresh-rgb8-blue",
                "crc",
            ];
            if cfg!(feature = "codec") {
                ops.extend([
                    "enc-bilevel",
                    "dec-bilevel",
                    "enc-zstd",
                    "dec-zstd",
                    "enc-lz4",
                    "dec-lz4",
                ]);
            }
            println!("{}", ops.join(" "));
            return;
        }
    }
    eprintln!("pibench: {op} x{n} done ({check})");
}
