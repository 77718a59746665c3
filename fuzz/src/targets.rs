//! The bodies of the fuzz targets and their helpers, shared by the
//! libFuzzer binaries (`fuzz/fuzz_targets/*.rs`, through `src/lib.rs`, run
//! by `cargo xtask fuzz`) and by the corpus replay test of the main test run
//! (`tests/tests/fuzz_corpus.rs`, stable Rust, no libFuzzer), which includes
//! this file with `#[path]`. Whoever includes it installs [`Counting`] as
//! the global allocator (the targets check how much a decode allocates).
#![allow(dead_code, missing_docs, clippy::all)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

pub struct Counting;
static CUR: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = System.alloc(l);
        if !p.is_null() {
            let c = CUR.fetch_add(l.size(), Relaxed) + l.size();
            PEAK.fetch_max(c, Relaxed);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(l);
        if !p.is_null() {
            let c = CUR.fetch_add(l.size(), Relaxed) + l.size();
            PEAK.fetch_max(c, Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l);
        CUR.fetch_sub(l.size(), Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        let q = System.realloc(p, l, n);
        if !q.is_null() {
            if n >= l.size() {
                let c = CUR.fetch_add(n - l.size(), Relaxed) + n - l.size();
                PEAK.fetch_max(c, Relaxed);
            } else {
                CUR.fetch_sub(l.size() - n, Relaxed);
            }
        }
        q
    }
}

/// Starts a measurement: returns the current live bytes, peak reset to it.
pub fn mem_start() -> usize {
    let c = CUR.load(Relaxed);
    PEAK.store(c, Relaxed);
    c
}
/// Bytes allocated at most since `mem_start` returned `base`.
pub fn mem_peak_since(base: usize) -> usize {
    PEAK.load(Relaxed).saturating_sub(base)
}

/// Reads values off the fuzz input; zeros once it is used up.
pub struct Bytes<'a> {
    pub d: &'a [u8],
}
impl<'a> Bytes<'a> {
    pub fn new(d: &'a [u8]) -> Self {
        Bytes { d }
    }
    pub fn u8(&mut self) -> u8 {
        match self.d.split_first() {
            Some((&b, r)) => {
                self.d = r;
                b
            }
            None => 0,
        }
    }
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    pub fn u64(&mut self) -> u64 {
        (self.u32() as u64) | ((self.u32() as u64) << 32)
    }
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.d.len());
        let (a, b) = self.d.split_at(n);
        self.d = b;
        a
    }
    pub fn rest(&mut self) -> &'a [u8] {
        let r = self.d;
        self.d = &[];
        r
    }
    pub fn is_empty(&self) -> bool {
        self.d.is_empty()
    }
}

pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9E3779B97F4A7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        z ^ (z >> 31)
    }
}

pub fn stride(w: u32) -> usize {
    (w as usize).div_ceil(8)
}

pub fn set(m: &mut [u8], w: u32, x: usize, y: usize, v: bool) {
    let i = y * stride(w) + x / 8;
    let b = 0x80u8 >> (x % 8);
    if v {
        m[i] |= b
    } else {
        m[i] &= !b
    }
}
pub fn get(m: &[u8], w: u32, x: usize, y: usize) -> bool {
    m[y * stride(w) + x / 8] & (0x80 >> (x % 8)) != 0
}

pub fn clear_padding(m: &mut [u8], w: u32) {
    let s = stride(w);
    if w % 8 != 0 {
        let keep = 0xFFu8 << (8 - w % 8);
        for r in m.chunks_exact_mut(s) {
            r[s - 1] &= keep;
        }
    }
}

pub fn padding_is_zero(m: &[u8], w: u32) -> bool {
    let s = stride(w);
    if w % 8 == 0 {
        return true;
    }
    let keep = 0xFFu8 << (8 - w % 8);
    m.chunks_exact(s).all(|r| r[s - 1] & !keep == 0)
}

/// A mask of `kind`: 0 empty, 1 full, 2 noise, 3 runs (density), 4 stripes
/// (transition at every pixel), 5 blobs (rectangles), 6 checkerboard rows, 7 vertical stripes.
pub fn gen_mask(rng: &mut Rng, w: u32, h: u32, kind: u8, density: u8) -> Vec<u8> {
    let s = stride(w);
    let mut m = vec![0u8; s * h as usize];
    match kind % 8 {
        0 => {}
        1 => m.fill(0xFF),
        2 => m.iter_mut().for_each(|b| *b = rng.next() as u8),
        3 => {
            for y in 0..h as usize {
                let mut bit = rng.next() & 1 == 1;
                let mut x = 0usize;
                while x < w as usize {
                    let run = 1 + (rng.next() % (1u64 << ((density % 12) + 1))) as usize;
                    for p in x..(x + run).min(w as usize) {
                        if bit {
                            set(&mut m, w, p, y, true);
                        }
                    }
                    x += run;
                    bit = !bit;
                }
            }
        }
        4 => m.fill(0xAA),
        5 => {
            let n = 1 + density as usize % 8;
            for _ in 0..n {
                let x0 = (rng.next() % w as u64) as usize;
                let y0 = (rng.next() % h as u64) as usize;
                let x1 = (x0 + 1 + (rng.next() % w as u64) as usize).min(w as usize);
                let y1 = (y0 + 1 + (rng.next() % h as u64) as usize).min(h as usize);
                for y in y0..y1 {
                    for x in x0..x1 {
                        set(&mut m, w, x, y, true);
                    }
                }
            }
        }
        6 => {
            for y in 0..h as usize {
                let v = if y % 2 == 0 { 0xAA } else { 0x55 };
                m[y * s..(y + 1) * s].fill(v);
            }
        }
        _ => {
            for y in 0..h as usize {
                for x in 0..w as usize {
                    if (x / (1 + density as usize % 16)) % 2 == 1 {
                        set(&mut m, w, x, y, true);
                    }
                }
            }
        }
    }
    clear_padding(&mut m, w);
    m
}

/// `m` moved by (dx, dy); pixels entering are `fill`.
pub fn shift(m: &[u8], w: u32, h: u32, dx: i32, dy: i32, fill: bool) -> Vec<u8> {
    let mut o = vec![0u8; m.len()];
    for y in 0..h as i32 {
        for x in 0..w as i32 {
            let (sx, sy) = (x - dx, y - dy);
            let v = if sx >= 0 && sy >= 0 && sx < w as i32 && sy < h as i32 {
                get(m, w, sx as usize, sy as usize)
            } else {
                fill
            };
            if v {
                set(&mut o, w, x as usize, y as usize, true);
            }
        }
    }
    o
}

/// A generated mask and the same moved by `(dx, dy)` with a few bytes of
/// noise: two consecutive frames of a stream.
pub fn moved_pair(
    w: u32,
    h: u32,
    kind: u8,
    dens: u8,
    seed: u16,
    dx: i32,
    dy: i32,
) -> (Vec<u8>, Vec<u8>) {
    let mut rng = Rng(seed as u64);
    let m0 = gen_mask(&mut rng, w, h, kind, dens);
    let mut m1 = shift(&m0, w, h, dx, dy, kind & 0x80 != 0);
    for _ in 0..(dens % 4) {
        let i = (rng.next() % m1.len() as u64) as usize;
        m1[i] ^= rng.next() as u8;
    }
    clear_padding(&mut m1, w);
    (m0, m1)
}

/// Dimensions from two bytes, biased to edge cases.
pub fn dims(b: &mut Bytes) -> (u32, u32) {
    let a = b.u8();
    let c = b.u8();
    match a % 8 {
        0 => (1, 1 + c as u32 % 64),
        1 => (1 + c as u32 % 64, 1),
        // (rarely a large frame: the decoders' large-frame bounds)
        2 if c == 255 => (2048, 512),
        2 => (4096, 1 + c as u32 % 2),
        3 => (8 * (1 + c as u32 % 16), 1 + (a as u32 >> 3)),
        4 => (1 + c as u32, 1 + (a as u32 >> 3)),
        5 => (1 + c as u32 % 8, 1 + (a as u32 >> 3)),
        6 => (63 + c as u32 % 4, 2 + (a as u32 >> 4)),
        _ => (
            1 + ((c as u32) << 2 | (a as u32 >> 3) & 3),
            1 + (a as u32 >> 5) * 8,
        ),
    }
}

pub const OBJECT_00_BITS: &[u8] = include_bytes!("../../crates/codec/tests/vectors/object_00.bits");
pub const OBJECT_00_BLV: &[u8] = include_bytes!("../../crates/codec/tests/vectors/object_00.blv");

/// Milliseconds above which a target reports a slow decode (BITMASK_SLOW_MS, default 200).
pub fn slow_ms() -> u128 {
    static V: std::sync::OnceLock<u128> = std::sync::OnceLock::new();
    *V.get_or_init(|| {
        std::env::var("BITMASK_SLOW_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(200)
    })
}

/// Any payload, any codec id / flags, with and without a reference.
pub mod codec_decode {
    use super::*;
    use bitmask_codec::{Choice, Decoder, Encoder, FrameInfo, CODEC_BILEVEL, CODEC_RAW};
    use std::time::Instant;

    pub fn run(data: &[u8]) {
        let mut b = Bytes::new(data);
        let sel = b.u8();
        let codec = if sel < 128 { sel % 4 } else { sel };
        let flags = b.u8();
        let refmode = b.u8();
        let (w, h) = if refmode % 8 == 3 {
            (256, 192)
        } else {
            dims(&mut b)
        };
        let kind = b.u8();
        let dens = b.u8();
        let forge = b.u8();
        let mut payload = Vec::new();
        if codec == CODEC_BILEVEL && forge & 1 == 1 {
            payload.push(1u8);
            payload.extend_from_slice(&5u64.to_le_bytes());
            payload.push(b.u8());
            payload.push(b.u8());
        }
        payload.extend_from_slice(b.rest());
        // The reference's sequence number: the one the payload names (so no guessing).
        let held = if payload.len() >= 9 && payload[0] == 1 {
            u64::from_le_bytes(payload[1..9].try_into().unwrap())
        } else {
            5
        };
        let len = stride(w) * h as usize;
        let mut dec = Decoder::new();
        let mut out = vec![0xA5u8; len];
        let mut rng = Rng(dens as u64 * 7919 + kind as u64);
        match refmode % 8 {
            1 | 4 | 6 => {
                let k = if refmode % 8 == 4 {
                    4
                } else if refmode % 8 == 6 {
                    6
                } else {
                    kind
                };
                let m = gen_mask(&mut rng, w, h, k, dens);
                let mut p = Vec::new();
                let e = Encoder::new(Choice::Bilevel, 1)
                    .encode(&m, w, h, held, &mut p)
                    .unwrap();
                dec.decode(&e, &p, &mut out).unwrap();
                assert_eq!(out, m);
            }
            2 => {
                let m = gen_mask(&mut rng, w, h, kind, dens);
                dec.decode(
                    &FrameInfo {
                        codec: CODEC_RAW,
                        flags: 0,
                        sequence: held,
                        width: w,
                        height: h,
                    },
                    &m,
                    &mut out,
                )
                .unwrap();
            }
            3 => {
                dec.decode(
                    &FrameInfo {
                        codec: CODEC_BILEVEL,
                        flags: 0,
                        sequence: held,
                        width: 256,
                        height: 192,
                    },
                    OBJECT_00_BLV,
                    &mut out,
                )
                .unwrap();
                assert_eq!(out, OBJECT_00_BITS);
            }
            5 => {
                // reference of other dimensions
                let (w2, h2) = (w + 1, h);
                let m = gen_mask(&mut rng, w2, h2, kind, dens);
                let mut o2 = vec![0u8; m.len()];
                dec.decode(
                    &FrameInfo {
                        codec: CODEC_RAW,
                        flags: 0,
                        sequence: held,
                        width: w2,
                        height: h2,
                    },
                    &m,
                    &mut o2,
                )
                .unwrap();
            }
            _ => {}
        }
        let base = mem_start();
        let t = Instant::now();
        let r = dec.decode(
            &FrameInfo {
                codec,
                flags,
                sequence: held.wrapping_add(1),
                width: w,
                height: h,
            },
            &payload,
            &mut out,
        );
        let el = t.elapsed();
        let peak = mem_peak_since(base);
        // CODEC.md 1.8: transition lists capped at about 33x the packed
        // frame, plus per-row and payload-sized buffers
        let cap = 36 * len + 64 * (w as usize + 72) + 2 * payload.len() + 8192;
        assert!(
            peak <= cap,
            "decode allocated {peak} B (cap {cap}) for a {w}x{h} frame ({len} B packed), payload {} B",
            payload.len()
        );
        if el.as_millis() > slow_ms() {
            eprintln!(
                "SLOW decode {:?} {w}x{h} codec {codec} payload {} B",
                el,
                payload.len()
            );
        }
        assert_eq!(out.len(), len);
        if r.is_ok() {
            assert!(
                padding_is_zero(&out, w),
                "padding bits set after Ok decode {w}x{h} codec {codec}"
            );
            assert_eq!(dec.reference(), Some(held.wrapping_add(1)));
        } else {
            // reference unchanged on error
            if refmode % 8 != 0 && refmode % 8 != 7 {
                assert_eq!(dec.reference(), Some(held));
            }
        }
    }
}

/// Structure-aware: valid key + delta payloads of generated masks, then edits.
pub mod codec_mutate {
    use super::*;
    use bitmask_codec::{Choice, Decoder, Encoder, FrameInfo, CODEC_BILEVEL};
    use std::time::Instant;

    /// Applies up to `n` edits read off `b` to payload `p`.
    pub fn edit(p: &mut Vec<u8>, b: &mut Bytes, n: u8) {
        for _ in 0..n {
            if b.is_empty() {
                break;
            }
            let op = b.u8();
            let at = b.u16() as usize;
            let v = b.u8();
            if p.is_empty() {
                p.push(v);
                continue;
            }
            let i = at % p.len();
            match op % 8 {
                0 | 1 => p[i] ^= v | 1,
                2 => p[i] = v,
                3 => p.insert(i, v),
                4 => {
                    p.remove(i);
                }
                5 => p.truncate(i.max(1)),
                6 => {
                    // bump a little-endian u16 (rANS state / word)
                    if i + 1 < p.len() {
                        let x = u16::from_le_bytes([p[i], p[i + 1]]).wrapping_add(v as u16 * 257);
                        p[i..i + 2].copy_from_slice(&x.to_le_bytes());
                    }
                }
                _ => p[i] = p[i].wrapping_add(v % 3).wrapping_sub(1),
            }
        }
    }

    pub fn run(data: &[u8]) {
        let mut b = Bytes::new(data);
        let (w, h) = dims(&mut b);
        let kind = b.u8();
        let dens = b.u8();
        let seed = b.u16();
        let dx = (b.u8() as i8 as i32) % 9;
        let dy = (b.u8() as i8 as i32) % 9;
        let nk = b.u8() % 5;
        let nd = b.u8() % 5;
        let (m0, m1) = moved_pair(w, h, kind, dens, seed, dx, dy);
        let mut enc = Encoder::new(Choice::Bilevel, 0);
        let (mut p0, mut p1) = (Vec::new(), Vec::new());
        let e0 = enc.encode(&m0, w, h, 10, &mut p0).unwrap();
        let e1 = enc.encode(&m1, w, h, 11, &mut p1).unwrap();
        let (o0, o1) = (p0.clone(), p1.clone());
        edit(&mut p0, &mut b, nk);
        edit(&mut p1, &mut b, nd);
        let len = m0.len();
        let mut dec = Decoder::new();
        let mut out = vec![0xA5u8; len];
        let base = mem_start();
        let t = Instant::now();
        let r0 = dec.decode(&e0, &p0, &mut out);
        if p0 == o0 {
            r0.clone().unwrap();
            assert_eq!(out, m0, "key frame {w}x{h} decoded wrongly");
        }
        if r0.is_ok() {
            assert!(padding_is_zero(&out, w));
        }
        // The delta: with the header's flags as the encoder said, and the other flag too.
        let r1 = dec.decode(&e1, &p1, &mut out);
        if p0 == o0 && p1 == o1 {
            r1.clone().unwrap();
            assert_eq!(
                out, m1,
                "delta frame {w}x{h} dx {dx} dy {dy} decoded wrongly"
            );
        }
        if r1.is_ok() {
            assert!(padding_is_zero(&out, w));
        }
        if e1.codec == CODEC_BILEVEL {
            let _ = dec.decode(
                &FrameInfo {
                    flags: e1.flags ^ 1,
                    sequence: 12,
                    width: w,
                    height: h,
                    ..e1
                },
                &p1,
                &mut out,
            );
        }
        let el = t.elapsed();
        let peak = mem_peak_since(base);
        assert!(
            peak <= 40 * len + (1 << 20),
            "decode allocated {peak} B for {w}x{h}"
        );
        if el.as_millis() > slow_ms() {
            eprintln!("SLOW mutate {:?} {w}x{h}", el);
        }
    }
}

/// Masks (edge-case dimensions) -> every encoder (streams with delta coding
/// and global motion) -> decoder: bit-exact, payload <= raw. A second decoder
/// that lost one frame must never return a wrong mask.
pub mod roundtrip {
    use super::*;
    use bitmask_codec::{Choice, CodecError, Decoder, Encoder, CODEC_RAW, FLAG_DELTA};
    use std::time::Duration;

    pub fn run(data: &[u8]) {
        let mut b = Bytes::new(data);
        let (w, h) = dims(&mut b);
        let interval = (b.u8() % 5) as u32;
        let budget = match b.u8() % 3 {
            0 => Duration::ZERO,
            1 => Duration::from_millis(5),
            _ => Duration::from_secs(100),
        };
        let zl = 1 + (b.u8() % 4) as i32;
        let nframes = 1 + b.u8() as usize % 6;
        let lose = b.u8() as usize % 8;
        let mut rng = Rng(b.u64());
        // The frames
        let mut frames: Vec<Vec<u8>> = Vec::new();
        let mut force = Vec::new();
        for f in 0..nframes {
            let op = b.u8();
            let a = b.u8();
            let c = b.u8();
            let m = match (op % 6, frames.last()) {
                (1, Some(p)) => {
                    let mut m = shift(
                        p,
                        w,
                        h,
                        (a as i8 as i32) % 70,
                        (c as i8 as i32) % 70,
                        op & 0x40 != 0,
                    );
                    clear_padding(&mut m, w);
                    m
                }
                (2, Some(p)) => {
                    let mut m = p.clone();
                    for _ in 0..1 + a % 4 {
                        let i = (rng.next() % m.len() as u64) as usize;
                        m[i] ^= rng.next() as u8 | 1;
                    }
                    clear_padding(&mut m, w);
                    m
                }
                (3, Some(p)) => p.clone(),
                (4, Some(p)) => {
                    // motion plus edit
                    let mut m = shift(p, w, h, (a % 9) as i32 - 4, (c % 9) as i32 - 4, false);
                    let i = (rng.next() % m.len() as u64) as usize;
                    m[i] ^= 0x3C;
                    clear_padding(&mut m, w);
                    m
                }
                _ => gen_mask(&mut rng, w, h, a, c),
            };
            force.push(op & 0x80 != 0 && f > 0);
            frames.push(m);
        }
        for &choice in Choice::ALL {
            let mut enc = Encoder::new(choice, interval);
            enc.set_auto_budget(budget);
            enc.set_zstd_level(zl);
            let mut dec = Decoder::new();
            let mut lossy = Decoder::new();
            let mut out = Vec::new();
            for (f, m) in frames.iter().enumerate() {
                let seq = 1000 + f as u64;
                if force[f] {
                    enc.force_keyframe();
                }
                out.clear();
                out.extend_from_slice(&[0xEE; 3]);
                let e = enc.encode(m, w, h, seq, &mut out).unwrap();
                assert_eq!(&out[..3], &[0xEE; 3]);
                let p = &out[3..];
                assert!(
                    p.len() <= m.len(),
                    "{choice} {w}x{h} frame {f}: payload {} > raw {}",
                    p.len(),
                    m.len()
                );
                assert!(!p.is_empty());
                if e.codec == CODEC_RAW {
                    assert_eq!(p, &m[..]);
                }
                let mut back = vec![0x5Au8; m.len()];
                dec.decode(&e, p, &mut back).unwrap_or_else(|err| {
                    panic!(
                        "{choice} {w}x{h} frame {f} codec {} flags {}: {err}",
                        e.codec, e.flags
                    )
                });
                assert!(
                    back == *m,
                    "{choice} {w}x{h} frame {f} codec {} flags {}: not bit-exact",
                    e.codec,
                    e.flags
                );
                if f != lose {
                    let mut back2 = vec![0x5Au8; m.len()];
                    match lossy.decode(&e, p, &mut back2) {
                        Ok(()) => assert!(
                            back2 == *m,
                            "{choice} {w}x{h} frame {f}: wrong mask after a lost frame"
                        ),
                        Err(CodecError::MissingReference { .. }) => {
                            assert!(e.flags & FLAG_DELTA != 0)
                        }
                        Err(err) => panic!("{choice} {w}x{h} frame {f}: lossy decoder: {err}"),
                    }
                }
            }
        }
    }
}

/// FrameReader over an arbitrary stream (chunked reads, EINTR), Header::decode,
/// Datagram::parse. Every frame returned must be exactly the bytes consumed.
pub mod wire_reader {
    use super::*;
    use bitmask_wire::udp::{
        Datagram, DGRAM_HEADER_LEN, HELLO_MAX_LEN, KIND_END, KIND_FRAGMENT, KIND_HELLO,
    };
    use bitmask_wire::{
        crc, encode_frame, Ack, AckReader, FrameReader, Header, Limits, ACK_LEN, HEADER_LEN,
        HELLO_MAGIC, MAGIC,
    };
    use std::io::{self, Read};

    struct Chunky<'a> {
        d: &'a [u8],
        pos: usize,
        rng: Rng,
        intr: u8,
    }
    impl Read for Chunky<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let r = self.rng.next();
            if self.intr != 0 && r % 8 == 0 {
                return Err(io::Error::from(io::ErrorKind::Interrupted));
            }
            let n = ((r >> 8) as usize % 70 + 1)
                .min(buf.len())
                .min(self.d.len() - self.pos);
            buf[..n].copy_from_slice(&self.d[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    fn fix_crcs(s: &mut [u8]) {
        let mut pos = 0;
        if s.len() >= 8 && s[..4] == HELLO_MAGIC {
            pos = 8 + u16::from_le_bytes([s[6], s[7]]) as usize;
        }
        while pos + HEADER_LEN <= s.len() && s[pos..pos + 4] == MAGIC {
            let len = u32::from_le_bytes(s[pos + 32..pos + 36].try_into().unwrap()) as usize;
            if pos + HEADER_LEN + len > s.len() {
                break;
            }
            let c = crc(
                &s[pos..pos + 36],
                &s[pos + HEADER_LEN..pos + HEADER_LEN + len],
            );
            s[pos + 36..pos + 40].copy_from_slice(&c.to_le_bytes());
            pos += HEADER_LEN + len;
        }
    }

    pub fn run(data: &[u8]) {
        let mut b = Bytes::new(data);
        let lm = b.u8();
        let limits = match lm % 4 {
            0 => Limits::default(),
            1 => Limits::for_dimensions(1 + b.u8() as u32, 1 + b.u8() as u32),
            2 => Limits {
                max_width: b.u32(),
                max_height: b.u32(),
                max_payload: b.u32() % (1 << 22),
            },
            _ => Limits::for_dimensions(1 << 16, 128),
        };
        let chunk_seed = b.u8();
        let intr = b.u8() & 1;
        let mut stream = b.rest().to_vec();
        if lm & 0x10 != 0 {
            fix_crcs(&mut stream);
        }
        // Acknowledgements from the same bytes, in pieces: never a panic;
        // a good one re-encodes to its bytes (reserved ones aside).
        let mut acks = AckReader::default();
        for (i, piece) in stream.chunks(1 + chunk_seed as usize % 23).enumerate() {
            match acks.push(piece) {
                Ok(Some(a)) => {
                    let e = a.encode();
                    assert_eq!((&e[..4], e[4]), (&b"BMAK"[..], 1));
                    assert_eq!(e[8..], a.next.to_le_bytes());
                }
                Ok(None) => {}
                Err(_) => break,
            }
            assert!(acks.pending() < ACK_LEN, "piece {i}");
        }
        if stream.len() >= ACK_LEN {
            let ab: [u8; ACK_LEN] = stream[..ACK_LEN].try_into().unwrap();
            if let Ok(a) = Ack::decode(&ab) {
                let e = a.encode();
                assert_eq!((&e[..5], &e[8..]), (&ab[..5], &ab[8..]));
            }
        }
        // Datagram parse on the same bytes: each kind by its own rule.
        if let Ok((d, carried)) = Datagram::parse(&stream, &limits) {
            assert_eq!(&stream[..DGRAM_HEADER_LEN], &d.encode());
            match d.kind {
                // a stream's end: its header alone, no frame
                KIND_END => {
                    assert_eq!(d, Datagram::end(d.stream_id, d.sequence));
                    assert!(carried.is_empty());
                }
                // a hello: one datagram whatever the frame cap
                KIND_HELLO => {
                    assert!((1..=HELLO_MAX_LEN).contains(&carried.len()));
                    assert_eq!(carried.len(), d.frame_len as usize);
                    assert_eq!((d.index, d.count, d.stride as u32), (0, 1, d.frame_len));
                }
                _ => {
                    assert_eq!(d.kind, KIND_FRAGMENT);
                    let off = d.index as usize * d.stride as usize;
                    assert!(off < d.frame_len as usize);
                    assert_eq!(
                        carried.len(),
                        (d.frame_len as usize - off).min(d.stride as usize)
                    );
                    assert!(d.frame_len as u64 <= HEADER_LEN as u64 + limits.max_payload as u64);
                }
            }
        }
        if stream.len() >= HEADER_LEN {
            let hb: [u8; HEADER_LEN] = stream[..HEADER_LEN].try_into().unwrap();
            if let Ok((h, _)) = Header::decode(&hb, &limits) {
                assert!(
                    h.width >= 1
                        && h.height >= 1
                        && h.width <= limits.max_width
                        && h.height <= limits.max_height
                );
                assert!(h.payload_len <= limits.max_payload);
            }
        }
        if !stream.is_empty() {
            // parse_frame on the bytes says what a reader says of them
            let by_reader = FrameReader::new(&stream[..], limits)
                .read_frame()
                .map(|f| f.map(|f| (f.header, f.payload.to_vec())))
                .map_err(|e| e.to_string());
            let parsed = bitmask_wire::parse_frame(&stream, &limits)
                .map(|f| Some((f.header, f.payload.to_vec())))
                .map_err(|e| e.to_string());
            assert_eq!(parsed, by_reader, "parse_frame and FrameReader disagree");
        }
        let rd = Chunky {
            d: &stream,
            pos: 0,
            rng: Rng(chunk_seed as u64),
            intr,
        };
        let mut r = FrameReader::new(rd, limits);
        let base = mem_start();
        let mut consumed = 0usize;
        match r.read_hello() {
            Ok(Some(hello)) => {
                consumed = r.get_ref().pos;
                // flags included: a reader keeps bits it does not know
                assert_eq!(&stream[..consumed], &hello.encode()[..]);
            }
            Ok(None) => {}
            Err(_) => return,
        }
        let mut frames = 0;
        loop {
            let before = r.get_ref().pos;
            match r.read_frame() {
                Ok(Some(f)) => {
                    let h = f.header;
                    assert!(limits.check(&h).is_ok());
                    assert_eq!(f.payload.len(), h.payload_len as usize);
                    let mut enc = Vec::new();
                    encode_frame(&h, f.payload, &mut enc);
                    let pend = if frames == 0 { before - consumed } else { 0 };
                    let start = before - pend;
                    let _ = start;
                    let end = r.get_ref().pos;
                    // the frame's bytes are the ones between the last frame's end and here
                    let mut got = stream[consumed..end].to_vec();
                    // reserved byte 7: ignored by readers, covered by the CRC
                    assert_eq!(
                        crc(&got[..36], &got[HEADER_LEN..]),
                        u32::from_le_bytes(got[36..40].try_into().unwrap())
                    );
                    got[7] = 0;
                    let c = crc(&got[..36], &got[HEADER_LEN..]);
                    got[36..40].copy_from_slice(&c.to_le_bytes());
                    assert_eq!(
                        &got[..],
                        &enc[..],
                        "frame bytes differ from its re-encoding"
                    );
                    consumed = end;
                    frames += 1;
                }
                Ok(None) => {
                    assert_eq!(r.get_ref().pos, stream.len());
                    assert_eq!(consumed, stream.len(), "clean EOF reported mid-stream");
                    break;
                }
                Err(e) => {
                    if e.is_recoverable() {
                        consumed = r.get_ref().pos;
                        continue;
                    }
                    break;
                }
            }
        }
        let peak = mem_peak_since(base);
        assert!(
            peak <= limits.max_payload as usize + 4096,
            "reader allocated {peak} B, cap {}",
            limits.max_payload
        );
    }
}

/// Differential: a delta frame decoded against a reference held as
/// transition lists and against the same reference held packed (a decoder
/// that was given it as a raw frame; CODEC.md 1.8) must agree, in success
/// and in output, on valid, edited and forged payloads.
pub mod codec_diff {
    use super::codec_mutate::edit;
    use super::*;
    use bitmask_codec::{Choice, Decoder, Encoder, FrameInfo, CODEC_BILEVEL, CODEC_RAW};

    pub fn run(data: &[u8]) {
        let mut b = Bytes::new(data);
        let (w, h) = dims(&mut b);
        let (kind, dens, seed) = (b.u8(), b.u8(), b.u16());
        let dx = (b.u8() as i8 as i32) % 9;
        let dy = (b.u8() as i8 as i32) % 9;
        let mode = b.u8();
        let n1 = b.u8() % 6;
        let n2 = b.u8() % 6;
        let (m0, m1) = moved_pair(w, h, kind, dens, seed, dx, dy);
        let mut m2 = shift(&m1, w, h, -dy, dx, false);
        clear_padding(&mut m2, w);
        let mut enc = Encoder::new(Choice::Bilevel, 0);
        let (mut p0, mut p1, mut p2) = (Vec::new(), Vec::new(), Vec::new());
        let e0 = enc.encode(&m0, w, h, 10, &mut p0).unwrap();
        let e1 = enc.encode(&m1, w, h, 11, &mut p1).unwrap();
        let e2 = enc.encode(&m2, w, h, 12, &mut p2).unwrap();
        let (o1, o2) = (p1.clone(), p2.clone());
        if mode & 1 == 0 || e1.codec != CODEC_BILEVEL {
            edit(&mut p1, &mut b, n1);
        } else {
            // a forged delta frame: reference 10, then fuzz bytes
            p1.clear();
            p1.push(1);
            p1.extend_from_slice(&10u64.to_le_bytes());
            p1.extend_from_slice(b.take(2 + (mode as usize >> 1)));
            let body = b.take(b.d.len() / 2).to_vec();
            p1.extend_from_slice(&body);
        }
        edit(&mut p2, &mut b, n2);
        let len = m0.len();
        let (mut a, mut c) = (Decoder::new(), Decoder::new());
        let (mut oa, mut oc) = (vec![0u8; len], vec![0x5Au8; len]);
        a.decode(&e0, &p0, &mut oa).unwrap();
        assert_eq!(oa, m0);
        // the same frame 10 held packed
        c.decode(
            &FrameInfo {
                codec: CODEC_RAW,
                flags: 0,
                sequence: 10,
                width: w,
                height: h,
            },
            &m0,
            &mut oc,
        )
        .unwrap();
        let f1 = (p1.first() == Some(&1)) as u8;
        let i1 = FrameInfo {
            codec: CODEC_BILEVEL,
            flags: f1,
            sequence: 11,
            width: w,
            height: h,
        };
        let ra = a.decode(&i1, &p1, &mut oa);
        let rc = c.decode(&i1, &p1, &mut oc);
        assert_eq!(
            ra.is_ok(),
            rc.is_ok(),
            "{w}x{h}: lists reference {ra:?} vs packed reference {rc:?}"
        );
        if ra.is_err() {
            return;
        }
        assert!(
            oa == oc && padding_is_zero(&oa, w),
            "{w}x{h}: outputs differ"
        );
        if p1 == o1 && e1.codec == CODEC_BILEVEL {
            assert!(oa == m1, "{w}x{h}: frame 11 not bit-exact");
        }
        let f2 = (p2.first() == Some(&1)) as u8;
        let i2 = FrameInfo { flags: f2, ..e2 }; // (e2: sequence 12, w x h)
        let ra = a.decode(&i2, &p2, &mut oa);
        let rc = c.decode(&i2, &p2, &mut oc);
        assert_eq!(ra.is_ok(), rc.is_ok(), "frame 12: {ra:?} vs {rc:?}");
        if ra.is_ok() {
            assert!(oa == oc, "{w}x{h}: frame 12 outputs differ");
            if p1 == o1 && p2 == o2 {
                assert!(oa == m2, "{w}x{h}: frame 12 not bit-exact");
            }
        }
    }
}

/// The wire's small messages: UDP datagram headers (a consistent one is
/// accepted and its payload bounded), hellos (a valid name round-trips,
/// an invalid one is refused), acknowledgements (encode/decode, and a
/// reader fed in pieces agrees with one fed at once).
pub mod wire_msgs {
    use super::*;
    use bitmask_wire::udp::{Datagram, DGRAM_HEADER_LEN};
    use bitmask_wire::{
        Ack, AckReader, FrameReader, Hello, Limits, ACK_LEN, HEADER_LEN, MAX_RECORD_ID,
    };

    pub fn run(data: &[u8]) {
        let mut b = Bytes::new(data);
        let sel = b.u8();
        let limits = match sel % 3 {
            0 => Limits::default(),
            1 => Limits::for_dimensions(1 + b.u16() as u32, 1 + b.u16() as u32),
            _ => Limits {
                max_width: b.u32(),
                max_height: b.u32(),
                max_payload: b.u32(),
            },
        };
        let mut d = Datagram {
            kind: b.u8() % 3,
            index: b.u16(),
            count: b.u16(),
            stride: b.u16(),
            stream_id: b.u32(),
            sequence: b.u64(),
            frame_len: b.u32(),
        };
        // made consistent (count, index, length within the limits)
        let fix = sel & 0x10 != 0;
        if fix && d.kind == 1 {
            // a hello: one datagram, its length whatever the frame cap
            d.frame_len = 1 + d.frame_len % bitmask_wire::udp::HELLO_MAX_LEN as u32;
            d.stride = d.frame_len as u16;
            (d.index, d.count) = (0, 1);
        } else if fix {
            d.stride = d.stride.max(1);
            let cap = HEADER_LEN as u64 + limits.max_payload as u64;
            d.frame_len = (1 + d.frame_len as u64 % cap.min(1 << 26)) as u32;
            let cnt = (d.frame_len as u64).div_ceil(d.stride as u64);
            if cnt <= u16::MAX as u64 {
                d.count = cnt as u16;
                d.index %= d.count;
            }
        }
        let off = d.index as usize * d.stride as usize;
        let want = if (d.frame_len as usize) > off {
            (d.frame_len as usize - off).min(d.stride as usize)
        } else {
            0
        };
        let delta = (b.u8() as i8 as isize) % 3;
        let dlen = if sel & 0x20 != 0 {
            (want as isize + delta).max(0) as usize
        } else {
            b.u8() as usize
        };
        let mut dg = d.encode().to_vec();
        dg.resize(DGRAM_HEADER_LEN + dlen, 0xC3);
        match Datagram::parse(&dg, &limits) {
            Ok((p, carried)) => {
                assert_eq!(p, d);
                assert_eq!(carried.len(), dlen);
                let off = p.index as usize * p.stride as usize;
                assert!(off + carried.len() <= p.frame_len as usize);
                if p.kind == 1 {
                    assert_eq!((p.index, p.count, p.stride as u32), (0, 1, p.frame_len));
                    assert!(p.frame_len as usize <= bitmask_wire::udp::HELLO_MAX_LEN);
                } else {
                    assert!(p.frame_len as u64 <= HEADER_LEN as u64 + limits.max_payload as u64);
                }
                if p.index + 1 == p.count {
                    assert_eq!(off + carried.len(), p.frame_len as usize);
                } else {
                    assert_eq!(carried.len(), p.stride as usize);
                }
            }
            Err(e) => {
                if fix
                    && d.kind <= 1
                    && dlen == want
                    && (d.frame_len as u64).div_ceil(d.stride as u64) <= u16::MAX as u64
                {
                    panic!("consistent datagram {d:?} refused: {e}")
                }
            }
        }
        // a hello, as sent or with its version, flags, length forged
        let n = b.u8() as usize;
        let flags = b.u8();
        let name = b.take(n).to_vec();
        let mut hb = b"BMHI".to_vec();
        hb.push(if sel & 0x40 != 0 { b.u8() } else { 1 });
        hb.push(flags);
        let ln = if sel & 0x80 != 0 {
            b.u16()
        } else {
            name.len() as u16
        };
        hb.extend_from_slice(&ln.to_le_bytes());
        hb.extend_from_slice(&name);
        let tail = b.take(3).to_vec();
        hb.extend_from_slice(&tail);
        let mut r = FrameReader::new(&hb[..], limits);
        match r.read_hello() {
            Ok(Some(hl)) => {
                assert_eq!(hl.flags, flags);
                let e = hl.encode();
                assert_eq!(&hb[..e.len()], &e[..]);
                assert_eq!(Hello::new(hl.name()).unwrap().with_flags(flags), hl);
                assert_eq!(hl.resumes(), flags & 3 == 3);
                let _ = r.read_frame();
            }
            Ok(None) => panic!("hello magic but no hello"),
            Err(e) => {
                if let Ok(s) = std::str::from_utf8(&name) {
                    if ln as usize == name.len() && hb[4] == 1 {
                        assert!(Hello::new(s).is_err(), "{s:?} refused: {e}");
                    }
                }
            }
        }
        if let Ok(Ok(hl)) = std::str::from_utf8(&name).map(Hello::new) {
            let hl = hl.with_flags(flags);
            let e = hl.encode();
            let mut r = FrameReader::new(&e[..], limits);
            assert_eq!(r.read_hello().unwrap(), Some(hl));
            assert!(r.read_frame().unwrap().is_none());
        }
        // acknowledgements
        let a = Ack {
            next: b.u64(),
            record: b.u32(),
            new_record: b.u8() & 1 == 1,
        };
        let back = Ack::decode(&a.encode()).unwrap();
        assert_eq!(
            (back.next, back.record, back.new_record),
            (a.next, a.record & MAX_RECORD_ID, a.new_record)
        );
        let raw = b.rest();
        let mut whole = AckReader::default();
        let rw = whole.push(raw);
        let mut parts = AckReader::default();
        let (mut newest, mut err) = (None, false);
        for piece in raw.chunks(1 + sel as usize % 17) {
            match parts.push(piece) {
                Ok(Some(x)) => newest = Some(x),
                Ok(None) => {}
                Err(_) => {
                    err = true;
                    break;
                }
            }
        }
        match rw {
            Ok(x) => {
                assert!(!err);
                assert_eq!(x, newest);
                assert_eq!(whole.pending(), parts.pending());
                assert_eq!(whole.pending(), raw.len() % ACK_LEN);
            }
            Err(_) => assert!(err),
        }
    }
}

/// The UDP reassembler (`bitmask_wire::udp::Reassembler`): frames cut into
/// datagrams, those picked in any order, copied, dropped, refused by the
/// caller's budget, mixed with forged fragments, time passing: no panic,
/// at most `MAX_PARTIAL` frames and buffers, none larger than the largest
/// frame, a frame in reassembly never late, and every frame completed from
/// real datagrams is the frame they came from.
pub mod wire_reassembly {
    use super::*;
    use bitmask_wire::udp::{
        fragments, Datagram, Push, Reassembler, KIND_FRAGMENT, MAX_GAP, MAX_PARTIAL,
    };
    use std::time::{Duration, Instant};

    /// Byte `i` of the real frame numbered `seq` of `len` bytes.
    fn byte(seq: u64, len: usize, i: usize) -> u8 {
        (seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (len as u64).wrapping_mul(31) ^ (i as u64 * 131))
            .to_le_bytes()[i % 8]
    }

    /// Forged fragments are numbered from here (no real frame is), so that
    /// a frame they complete is not taken for a real one.
    const FORGED: u64 = 1 << 40;

    pub fn run(data: &[u8]) {
        let mut b = Bytes::new(data);
        let mut pool: Vec<(Datagram, Vec<u8>)> = Vec::new();
        let mut max_len = 0usize;
        for _ in 0..1 + b.u8() % 8 {
            let seq = match b.u8() % 4 {
                0 => b.u8() as u64 % 16,
                1 => u64::MAX - b.u8() as u64 % 4,
                2 => MAX_GAP - 2 + b.u8() as u64 % 16,
                _ => b.u64() % FORGED,
            };
            let len = 1 + b.u16() as usize % 4000;
            let stride = 1 + b.u16() % 600;
            let frame: Vec<u8> = (0..len).map(|i| byte(seq, len, i)).collect();
            max_len = max_len.max(len);
            for (d, piece) in fragments(&frame, 1, seq, stride).unwrap() {
                pool.push((d, piece.to_vec()));
            }
        }
        let mut r = Reassembler::new();
        let base = mem_start();
        let mut now = Instant::now();
        let gap = Duration::from_millis(250);
        while !b.is_empty() {
            let op = b.u8();
            let forged;
            let (d, piece): (Datagram, &[u8]) = match op % 8 {
                0 => {
                    now += Duration::from_millis(b.u8() as u64 * 4);
                    r.expire(now, gap, |g| assert!(g.missing > 0 && g.missing <= g.count));
                    continue;
                }
                1 => {
                    r.give_up_all(|g| assert!(g.missing > 0));
                    continue;
                }
                2 => {
                    r.credit(Duration::from_millis(b.u8() as u64));
                    continue;
                }
                3 => {
                    // fields as they come (not checked by Datagram::parse), a
                    // frame of at most 64 KiB
                    let mut d = Datagram {
                        kind: KIND_FRAGMENT,
                        index: b.u16() % 64,
                        count: b.u16() % 64,
                        stride: b.u16() % 2048,
                        stream_id: 1,
                        sequence: FORGED + b.u8() as u64 % 8,
                        frame_len: b.u16() as u32,
                    };
                    let mut n = b.u16() as usize % 2048;
                    if op & 0x20 != 0 {
                        // made consistent, as Datagram::parse would pass it
                        d.stride = d.stride.max(1);
                        d.frame_len = d.frame_len.max(1);
                        d.count = d.frame_len.div_ceil(d.stride as u32) as u16;
                        d.index %= d.count;
                        let off = d.index as usize * d.stride as usize;
                        n = (d.frame_len as usize - off).min(d.stride as usize);
                    }
                    forged = b.take(n);
                    (d, forged)
                }
                _ => {
                    let (d, piece) = &pool[b.u16() as usize % pool.len()];
                    (*d, &piece[..])
                }
            };
            let refuse = op & 0x80 != 0;
            let pushed = r.push(
                &d,
                piece,
                now,
                |_, _| !refuse,
                |g| assert!(g.missing > 0 && g.missing <= g.count),
            );
            // (a forged frame taken in may size a buffer; one refused as
            // malformed must not)
            if !matches!(pushed, Push::Malformed) {
                max_len = max_len.max(d.frame_len as usize);
            }
            if let Push::Complete(w) = pushed {
                let len = w.frame_len as usize;
                assert_eq!(w.bytes().len(), len);
                if !(FORGED..FORGED + 8).contains(&w.sequence) {
                    assert!(
                        (0..len).all(|i| w.bytes()[i] == byte(w.sequence, len, i)),
                        "frame {} of {len} B: not the frame its datagrams came from",
                        w.sequence
                    );
                }
                if op & 0x40 != 0 {
                    r.forget(w.sequence);
                } else {
                    r.delivered(w.sequence);
                }
                r.recycle(w.into_buffer());
            }
            assert!(r.pending().count() <= MAX_PARTIAL, "frames in reassembly");
            let mut seen = Vec::new();
            for q in r.pending() {
                assert!(!seen.contains(&q), "frame {q} twice");
                assert!(!r.late(q), "frame {q} late yet held");
                seen.push(q);
            }
            assert!(r.buffers().count() <= MAX_PARTIAL, "buffers held");
            for cap in r.buffers() {
                assert!(
                    cap <= max_len,
                    "a buffer of {cap} B for frames of {max_len} B at most"
                );
            }
        }
        // (the frames' buffers and their datagram maps)
        let peak = mem_peak_since(base);
        assert!(
            peak <= MAX_PARTIAL * (max_len + 65_536) + 4096,
            "{peak} B allocated for frames of {max_len} B"
        );
    }
}
