//! One decoder kept across many streams, as a receiver keeps one per
//! connection: frames of changing sizes, key and delta frames, valid and
//! damaged payloads. It must agree with a fresh decoder and with one given
//! the reference as a raw frame (both Ok with the same mask, or both Err),
//! and a payload left alone must decode bit-exactly. (The fuzz targets and
//! tests/fuzz.rs start from a fresh decoder for every input; state left behind
//! by an earlier stream of another size is what this looks for. A unit
//! test, so that the ARM builds run it under qemu too: 32-bit, scalar lanes.)

use crate::{Choice, Decoder, Encoder, FrameInfo, CODEC_RAW};

/// splitmix64: a fixed, seedable sequence (no dependency, the same on every
/// target, so a failure reproduces from its stream number).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, k: u64) -> u64 {
        self.next() % k
    }
}

fn stride(w: u32) -> usize {
    (w as usize).div_ceil(8)
}

fn set(m: &mut [u8], w: u32, x: usize, y: usize) {
    m[y * stride(w) + x / 8] |= 0x80 >> (x % 8);
}

fn get(m: &[u8], w: u32, x: usize, y: usize) -> bool {
    m[y * stride(w) + x / 8] & (0x80 >> (x % 8)) != 0
}

fn clear_padding(m: &mut [u8], w: u32) {
    if w % 8 != 0 {
        let s = stride(w);
        for row in m.chunks_exact_mut(s) {
            row[s - 1] &= 0xFFu8 << (8 - w % 8);
        }
    }
}

/// A mask of one of several kinds: empty, full, noise, stripes, a
/// checkerboard, rectangles, random runs.
fn mask(r: &mut Rng, w: u32, h: u32) -> Vec<u8> {
    let (wu, hu) = (w as usize, h as usize);
    let s = stride(w);
    let mut m = vec![0u8; s * hu];
    match r.below(7) {
        0 => {}
        1 => m.fill(0xFF),
        2 => m.iter_mut().for_each(|b| *b = r.next() as u8),
        3 => m.fill(0xAA),
        4 => {
            for (y, row) in m.chunks_exact_mut(s).enumerate() {
                row.fill(if y % 2 == 0 { 0xAA } else { 0x55 });
            }
        }
        5 => {
            for _ in 0..1 + r.below(6) {
                let (x0, y0) = (r.below(w as u64) as usize, r.below(h as u64) as usize);
                let x1 = (x0 + 1 + r.below(w as u64) as usize).min(wu);
                let y1 = (y0 + 1 + r.below(h as u64) as usize).min(hu);
                for y in y0..y1 {
                    for x in x0..x1 {
                        set(&mut m, w, x, y);
                    }
                }
            }
        }
        _ => {
            let p = 1 + r.below(40);
            for y in 0..hu {
                let mut x = r.below(p) as usize;
                let mut on = r.next() & 1 == 1;
                while x < wu {
                    let run = 1 + r.below(p) as usize;
                    if on {
                        for xx in x..(x + run).min(wu) {
                            set(&mut m, w, xx, y);
                        }
                    }
                    x += run;
                    on = !on;
                }
            }
        }
    }
    clear_padding(&mut m, w);
    m
}

/// `m` moved by (dx, dy), what moves out dropped.
fn shifted(m: &[u8], w: u32, h: u32, dx: i64, dy: i64) -> Vec<u8> {
    let mut o = vec![0u8; m.len()];
    for y in 0..h as i64 {
        for x in 0..w as i64 {
            let (sx, sy) = (x - dx, y - dy);
            if (0..w as i64).contains(&sx)
                && (0..h as i64).contains(&sy)
                && get(m, w, sx as usize, sy as usize)
            {
                set(&mut o, w, x as usize, y as usize);
            }
        }
    }
    o
}

fn raw(w: u32, h: u32, sequence: u64) -> FrameInfo {
    FrameInfo {
        codec: CODEC_RAW,
        flags: 0,
        sequence,
        width: w,
        height: h,
    }
}

#[test]
fn a_decoder_kept_across_streams_agrees_with_fresh_ones() {
    let streams = 5000;
    let mut r = Rng(1);
    let mut long = Decoder::new();
    let (mut seq, mut frames, mut damaged_ok) = (0u64, 0u64, 0u64);
    for stream in 0..streams {
        let (w, h) = match r.below(6) {
            0 => (1 + r.below(8) as u32, 1 + r.below(8) as u32),
            1 => (1 + r.below(300) as u32, 1 + r.below(40) as u32),
            2 => (1024 + r.below(70) as u32, 1 + r.below(4) as u32),
            3 => (1, 1 + r.below(200) as u32),
            4 => (256 + r.below(9) as u32, 64 + r.below(9) as u32),
            _ => (8 * (1 + r.below(20) as u32), 1 + r.below(30) as u32),
        };
        // (not Auto: its choice depends on the time taken)
        let choice = [Choice::Bilevel, Choice::Raw, Choice::Zstd, Choice::Lz4][stream % 4];
        // (zstd only where this build has it)
        let choice = if choice.is_available() {
            choice
        } else {
            Choice::Lz4
        };
        let mut enc = Encoder::new(choice, r.below(4) as u32);
        let mut fresh = Decoder::new();
        let mut prev = mask(&mut r, w, h);
        for f in 0..1 + r.below(5) {
            let m = if f == 0 {
                prev.clone()
            } else {
                match r.below(3) {
                    0 => mask(&mut r, w, h),
                    1 => {
                        let (dx, dy) = (r.below(13) as i64 - 6, r.below(13) as i64 - 6);
                        let mut x = shifted(&prev, w, h, dx, dy);
                        for _ in 0..r.below(4) {
                            let i = r.below(x.len() as u64) as usize;
                            x[i] ^= r.next() as u8;
                        }
                        clear_padding(&mut x, w);
                        x
                    }
                    _ => prev.clone(),
                }
            };
            seq += 1;
            frames += 1;
            let mut p = Vec::new();
            let e = enc.encode(&m, w, h, seq, &mut p).unwrap();
            let damaged = r.below(3) == 0;
            if damaged {
                for _ in 0..1 + r.below(3) {
                    if p.is_empty() {
                        break;
                    }
                    let i = r.below(p.len() as u64) as usize;
                    match r.below(4) {
                        0 => p[i] ^= 1 << r.below(8),
                        1 => p[i] = r.next() as u8,
                        2 => {
                            p.remove(i);
                        }
                        _ => p.insert(i, r.next() as u8),
                    }
                }
            }
            // a decoder given the reference as a raw frame
            let mut primed = Decoder::new();
            let mut o3 = vec![0u8; m.len()];
            if f > 0 {
                primed.decode(&raw(w, h, seq - 1), &prev, &mut o3).unwrap();
            }
            let (mut o1, mut o2) = (vec![0x5Au8; m.len()], vec![0xA5u8; m.len()]);
            let r1 = long.decode(&e, &p, &mut o1);
            let r2 = fresh.decode(&e, &p, &mut o2);
            let r3 = primed.decode(&e, &p, &mut o3);
            let at = format!("stream {stream} ({choice:?}, {w}x{h}), frame {f}");
            assert_eq!(r1.is_ok(), r2.is_ok(), "{at}: kept {r1:?}, fresh {r2:?}");
            assert_eq!(r1.is_ok(), r3.is_ok(), "{at}: kept {r1:?}, primed {r3:?}");
            if r1.is_ok() {
                assert!(o1 == o2 && o1 == o3, "{at}: the decoders' masks differ");
            }
            if !damaged {
                r1.unwrap_or_else(|e| panic!("{at}: {e}"));
                assert!(o1 == m, "{at}: not bit-exact");
            } else {
                damaged_ok += r1.is_ok() as u64;
                // the sender's answer to a frame the receiver refused: a
                // raw key frame both decoders take, and a key frame next
                seq += 1;
                let mut t = vec![0u8; m.len()];
                long.decode(&raw(w, h, seq), &m, &mut t).unwrap();
                fresh.decode(&raw(w, h, seq), &m, &mut t).unwrap();
                enc.force_keyframe();
            }
            prev = m;
        }
    }
    // (a damaged payload that still decodes is possible: a bit flipped in
    // a run that no mode reads; it is the same mask for all three)
    assert!(frames > streams as u64, "{frames} frames");
    eprintln!("{streams} streams, {frames} frames, {damaged_ok} damaged payloads decoded");
}
