//! Row kernels: one row of pixels in, one packed row out.
//!
//! Every path computes the same function; `tests.rs` checks each path
//! against a plain scalar reference on random rows of every width 1..=200.

use crate::{luma, Channel, PixelFormat};

/// Pixels handled per step when a row is first turned into 8-bit values
/// (a channel gathered out of RGB, or luma). A multiple of 8 so that each
/// chunk fills whole output bytes; small enough to live in registers/L1.
const CHUNK: usize = 64;

const H: u64 = 0x8080_8080_8080_8080;
const LSB_MAGIC_MSB_FIRST: u64 = 0x8040_2010_0804_0201;

/// Per byte of `x`: bit 7 set iff that byte of `x` >= the byte of `t` (t broadcast).
#[inline(always)]
fn swar_ge(x: u64, t: u64) -> u64 {
    // (x | 0x80) - (t & 0x7f) never borrows across bytes; its bit 7 is x_lo >= t_lo.
    let d = (x | H) - (t & !H);
    let xh = x & H;
    let th = t & H;
    ((xh & !th) | (!(xh ^ th) & d)) & H
}

/// Gathers bit 7 of each byte (byte 0 first) into one MSB-first byte.
#[inline(always)]
pub(crate) fn gather_msb_first(m: u64) -> u8 {
    ((m >> 7).wrapping_mul(LSB_MAGIC_MSB_FIRST) >> 56) as u8
}

#[inline(always)]
fn scalar_bits(values: &[u8], t: u8) -> u8 {
    let mut b = 0u8;
    for (i, &v) in values.iter().enumerate() {
        b |= ((v >= t) as u8) << (7 - i);
    }
    b
}

/// `dst[i] = MSB-first bits of (values[8i..8i+8] >= t)`; a short last group
/// leaves its low bits 0. `dst.len() == values.len().div_ceil(8)`.
#[inline(always)]
fn gray_bits_swar(values: &[u8], t: u8, dst: &mut [u8]) {
    let tt = u64::from_ne_bytes([t; 8]);
    let mut groups = values.chunks_exact(8);
    let mut out = dst.iter_mut();
    for (g, o) in (&mut groups).zip(&mut out) {
        let x = u64::from_le_bytes(g.try_into().unwrap());
        *o = gather_msb_first(swar_ge(x, tt));
    }
    let rest = groups.remainder();
    if !rest.is_empty() {
        if let Some(o) = out.next() {
            *o = scalar_bits(rest, t);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Per-byte bit reversal: bit i of byte k becomes bit 7-i of byte k.
    #[inline(always)]
    pub(super) fn rev_bytes_bits(m: u64) -> u64 {
        m.reverse_bits().swap_bytes()
    }

    /// SSE2 (x86-64 baseline): 64 pixels per step, SWAR for the rest.
    #[inline(always)]
    pub(super) fn gray_bits(values: &[u8], t: u8, dst: &mut [u8]) {
        let n64 = values.len() / 64;
        // SAFETY: SSE2 is part of the x86-64 baseline; loads are unaligned and in bounds.
        unsafe {
            let tv = _mm_set1_epi8(t as i8);
            for i in 0..n64 {
                let p = values.as_ptr().add(i * 64) as *const __m128i;
                let mut m = 0u64;
                for k in 0..4 {
                    let x = _mm_loadu_si128(p.add(k));
                    let ge = _mm_cmpeq_epi8(_mm_max_epu8(x, tv), x);
                    m |= ((_mm_movemask_epi8(ge) as u32 as u64) & 0xffff) << (16 * k);
                }
                dst[i * 8..i * 8 + 8].copy_from_slice(&rev_bytes_bits(m).to_le_bytes());
            }
        }
        super::gray_bits_swar(&values[n64 * 64..], t, &mut dst[n64 * 8..]);
    }

    /// Shuffle masks that pick byte `offset` of each of 16 pixels of `bpp`
    /// bytes out of `bpp` consecutive 16-byte loads.
    fn shuffle_masks(bpp: usize, offset: usize) -> [[i8; 16]; 4] {
        let mut masks = [[-128i8; 16]; 4];
        for i in 0..16 {
            let p = i * bpp + offset;
            masks[p / 16][i] = (p % 16) as i8;
        }
        masks
    }

    /// SSSE3: one channel of 16 RGB/BGR/RGBA pixels per step.
    #[target_feature(enable = "ssse3")]
    pub(super) unsafe fn channel_bits_ssse3(
        row: &[u8],
        bpp: usize,
        offset: usize,
        width: usize,
        t: u8,
        dst: &mut [u8],
    ) -> usize {
        let masks = shuffle_masks(bpp, offset);
        let n16 = width / 16;
        // SAFETY (whole block): the caller checked SSSE3; every load reads
        // bytes [16*k, 16*k+16) of a 16-pixel group that lies inside `row`.
        unsafe {
            let m: [__m128i; 4] = [
                _mm_loadu_si128(masks[0].as_ptr() as *const __m128i),
                _mm_loadu_si128(masks[1].as_ptr() as *const __m128i),
                _mm_loadu_si128(masks[2].as_ptr() as *const __m128i),
                _mm_loadu_si128(masks[3].as_ptr() as *const __m128i),
            ];
            let tv = _mm_set1_epi8(t as i8);
            for i in 0..n16 {
                let p = row.as_ptr().add(i * 16 * bpp) as *const __m128i;
                let mut v = _mm_shuffle_epi8(_mm_loadu_si128(p), m[0]);
                v = _mm_or_si128(v, _mm_shuffle_epi8(_mm_loadu_si128(p.add(1)), m[1]));
                v = _mm_or_si128(v, _mm_shuffle_epi8(_mm_loadu_si128(p.add(2)), m[2]));
                if bpp == 4 {
                    v = _mm_or_si128(v, _mm_shuffle_epi8(_mm_loadu_si128(p.add(3)), m[3]));
                }
                let ge = _mm_cmpeq_epi8(_mm_max_epu8(v, tv), v);
                let bits = (_mm_movemask_epi8(ge) as u32 as u16).reverse_bits();
                dst[i * 2..i * 2 + 2].copy_from_slice(&bits.to_be_bytes());
            }
        }
        n16 * 16
    }

    /// Luma of a chunk, compiled with AVX2 so the 32-bit arithmetic vectorises.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn luma_chunk_avx2(px: &[u8], bpp: usize, rgb: [usize; 3], out: &mut [u8]) {
        super::luma_chunk(px, bpp, rgb, out)
    }
}

#[inline(always)]
fn gray_bits(values: &[u8], t: u8, dst: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    x86::gray_bits(values, t, dst);
    #[cfg(not(target_arch = "x86_64"))]
    gray_bits_swar(values, t, dst);
}

#[inline(always)]
fn luma_chunk(px: &[u8], bpp: usize, [r, g, b]: [usize; 3], out: &mut [u8]) {
    for (o, p) in out.iter_mut().zip(px.chunks_exact(bpp)) {
        *o = luma(p[r], p[g], p[b]);
    }
}

#[inline(always)]
fn gather_chunk(px: &[u8], bpp: usize, offset: usize, out: &mut [u8]) {
    for (o, p) in out.iter_mut().zip(px.chunks_exact(bpp)) {
        *o = p[offset];
    }
}

#[derive(Debug, Clone, Copy)]
enum Source {
    Gray,
    Channel { bpp: usize, offset: usize },
    Luma { bpp: usize, rgb: [usize; 3] },
}

/// A row kernel chosen once per frame for a pixel format and channel.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RowKernel {
    source: Source,
    #[cfg(target_arch = "x86_64")]
    ssse3: bool,
    #[cfg(target_arch = "x86_64")]
    avx2: bool,
}

impl RowKernel {
    pub(crate) fn select(format: PixelFormat, channel: Channel) -> Self {
        let bpp = format.bytes_per_pixel();
        let rgb = match format {
            PixelFormat::Bgr8 => [2, 1, 0],
            _ => [0, 1, 2],
        };
        let source = match (format, channel) {
            (PixelFormat::Gray8, _) => Source::Gray,
            (_, Channel::Red) => Source::Channel {
                bpp,
                offset: rgb[0],
            },
            (_, Channel::Green) => Source::Channel {
                bpp,
                offset: rgb[1],
            },
            (_, Channel::Blue) => Source::Channel {
                bpp,
                offset: rgb[2],
            },
            (_, Channel::Luma) => Source::Luma { bpp, rgb },
        };
        RowKernel {
            source,
            #[cfg(target_arch = "x86_64")]
            ssse3: std::is_x86_feature_detected!("ssse3"),
            #[cfg(target_arch = "x86_64")]
            avx2: std::is_x86_feature_detected!("avx2"),
        }
    }

    /// A kernel that uses only the portable code (for tests and benchmarks).
    #[cfg(test)]
    pub(crate) fn portable(mut self) -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            self.ssse3 = false;
            self.avx2 = false;
        }
        self
    }

    /// Packs one row. `row` holds exactly `width` pixels; `dst` is `ceil(width/8)` bytes.
    pub(crate) fn run(
        &self,
        row: &[u8],
        width: usize,
        threshold: u16,
        invert: bool,
        dst: &mut [u8],
    ) {
        if threshold == 0 || threshold > 255 {
            dst.fill(if (threshold == 0) != invert { 0xff } else { 0 });
        } else {
            let t = threshold as u8;
            match self.source {
                Source::Gray => gray_bits(row, t, dst),
                Source::Channel { bpp, offset } => {
                    self.channel_row(row, bpp, offset, width, t, dst)
                }
                Source::Luma { bpp, rgb } => self.luma_row(row, bpp, rgb, t, dst),
            }
            if invert {
                dst.iter_mut().for_each(|b| *b = !*b);
            }
        }
        let tail = width % 8;
        if tail != 0 {
            if let Some(last) = dst.last_mut() {
                *last &= 0xffu8 << (8 - tail);
            }
        }
    }

    #[inline(always)]
    fn channel_row(
        &self,
        row: &[u8],
        bpp: usize,
        offset: usize,
        width: usize,
        t: u8,
        dst: &mut [u8],
    ) {
        #[allow(unused_mut)]
        let mut done = 0;
        #[cfg(target_arch = "x86_64")]
        if self.ssse3 {
            // SAFETY: SSSE3 was detected at run time.
            done = unsafe { x86::channel_bits_ssse3(row, bpp, offset, width, t, dst) };
        }
        let mut buf = [0u8; CHUNK];
        for (px, out) in row[done * bpp..]
            .chunks(CHUNK * bpp)
            .zip(dst[done / 8..].chunks_mut(CHUNK / 8))
        {
            let n = px.len() / bpp;
            gather_chunk(px, bpp, offset, &mut buf[..n]);
            gray_bits(&buf[..n], t, out);
        }
    }

    #[inline(always)]
    fn luma_row(&self, row: &[u8], bpp: usize, rgb: [usize; 3], t: u8, dst: &mut [u8]) {
        let mut buf = [0u8; CHUNK];
        for (px, out) in row.chunks(CHUNK * bpp).zip(dst.chunks_mut(CHUNK / 8)) {
            let n = px.len() / bpp;
            #[cfg(target_arch = "x86_64")]
            if self.avx2 {
                // SAFETY: AVX2 was detected at run time.
                unsafe { x86::luma_chunk_avx2(px, bpp, rgb, &mut buf[..n]) };
                gray_bits(&buf[..n], t, out);
                continue;
            }
            luma_chunk(px, bpp, rgb, &mut buf[..n]);
            gray_bits(&buf[..n], t, out);
        }
    }
}

/// Gathers the nonzero-ness of 8 bytes into one byte, MSB-first (numpy `packbits`).
#[inline(always)]
pub(crate) fn nonzero_msb_first(x: u64) -> u8 {
    // (x_lo7 + 0x7f) sets bit 7 iff x_lo7 != 0; or-ing x adds x's own bit 7.
    gather_msb_first((((x & !H) + !H) | x) & H)
}

/// `dst[i]` = MSB-first nonzero bits of `values[8i..8i+8]` (short last group padded with 0).
pub(crate) fn nonzero_bits(values: &[u8], dst: &mut [u8]) {
    #[cfg(not(target_arch = "x86_64"))]
    let done = 0;
    #[cfg(target_arch = "x86_64")]
    let done = {
        use std::arch::x86_64::*;
        let n64 = values.len() / 64;
        // SAFETY: SSE2 is baseline on x86-64; loads are unaligned and in bounds.
        unsafe {
            let zero = _mm_setzero_si128();
            for i in 0..n64 {
                let p = values.as_ptr().add(i * 64) as *const __m128i;
                let mut m = 0u64;
                for k in 0..4 {
                    let z = _mm_cmpeq_epi8(_mm_loadu_si128(p.add(k)), zero);
                    m |= ((!_mm_movemask_epi8(z) as u32 as u64) & 0xffff) << (16 * k);
                }
                dst[i * 8..i * 8 + 8].copy_from_slice(&x86::rev_bytes_bits(m).to_le_bytes());
            }
        }
        n64 * 64
    };
    let values = &values[done..];
    let dst = &mut dst[done / 8..];
    let mut groups = values.chunks_exact(8);
    let mut out = dst.iter_mut();
    for (g, o) in (&mut groups).zip(&mut out) {
        *o = nonzero_msb_first(u64::from_le_bytes(g.try_into().unwrap()));
    }
    let rest = groups.remainder();
    if !rest.is_empty() {
        if let Some(o) = out.next() {
            let mut b = 0u8;
            for (i, &v) in rest.iter().enumerate() {
                b |= ((v != 0) as u8) << (7 - i);
            }
            *o = b;
        }
    }
}

/// The value `channel` takes for one pixel `p` of `format` (used by the histogram).
#[inline(always)]
pub(crate) fn luma_of(p: &[u8], format: PixelFormat, channel: Channel) -> u8 {
    let [r, g, b] = match format {
        PixelFormat::Gray8 => return p[0],
        PixelFormat::Bgr8 => [p[2], p[1], p[0]],
        _ => [p[0], p[1], p[2]],
    };
    match channel {
        Channel::Red => r,
        Channel::Green => g,
        Channel::Blue => b,
        Channel::Luma => luma(r, g, b),
    }
}
