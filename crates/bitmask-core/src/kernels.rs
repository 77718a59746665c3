//! Row kernels: one row of pixels in, one packed row out.
//!
//! Every path computes the same function; `tests.rs` checks each path
//! against a plain scalar reference on random rows of every width 1..=200.

use crate::{luma, Channel, PixelFormat};

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

/// One output byte per group of `group` input bytes (8 pixels): `full` of
/// each whole group, then `part` of a short last group (whose bits start at
/// the top, the others 0) when there is one and `dst` has room for it.
#[inline(always)]
fn per_byte(
    values: &[u8],
    group: usize,
    dst: &mut [u8],
    full: impl Fn(&[u8]) -> u8,
    part: impl Fn(&[u8]) -> u8,
) {
    let mut groups = values.chunks_exact(group);
    let mut out = dst.iter_mut();
    for (g, o) in (&mut groups).zip(&mut out) {
        *o = full(g);
    }
    let rest = groups.remainder();
    if !rest.is_empty() {
        if let Some(o) = out.next() {
            *o = part(rest);
        }
    }
}

/// `dst[i] = MSB-first bits of (values[8i..8i+8] >= t)`; a short last group
/// leaves its low bits 0. `dst.len() == values.len().div_ceil(8)`.
#[inline(always)]
fn gray_bits_swar(values: &[u8], t: u8, dst: &mut [u8]) {
    let tt = u64::from_ne_bytes([t; 8]);
    per_byte(
        values,
        8,
        dst,
        |g| gather_msb_first(swar_ge(u64::from_le_bytes(g.try_into().unwrap()), tt)),
        |rest| scalar_bits(rest, t),
    );
}

/// ARMv6 media instructions (also in ARMv7, A32 and T32): `usub8` compares
/// four bytes at once (its GE flags: byte >= threshold), `sel` keeps each
/// pixel's bit weight where the flag is set, and `usad8`/`usada8` add the
/// weights of eight pixels into their packed byte. About 9 instructions
/// per 8 pixels, against 4 a pixel for a compare each.
#[cfg(all(target_arch = "arm", target_endian = "little", bitmask_armv6))]
pub(crate) mod armv6 {
    /// MSB-first bits of `(values[8i..8i+8] >= t)` into `dst[i]` (`t >= 1`;
    /// a short last group leaves its low bits 0).
    #[inline(always)]
    pub(crate) fn gray_bits(values: &[u8], t: u8, dst: &mut [u8]) {
        let tt = u32::from_ne_bytes([t; 4]);
        // Word loads where the pixels start on a word (rows of a Vec do,
        // at widths that are a multiple of 4): one `ldr` for four pixels,
        // where LLVM builds an unaligned word from four byte loads on
        // ARMv6. (The words of a little-endian ARM hold pixel 0 in the low
        // byte.)
        // SAFETY: any 4 bytes are a valid u32.
        let (before, words, _) = unsafe { values.align_to::<u32>() };
        let mut done = 0;
        if before.is_empty() {
            for (w, o) in words.chunks_exact(2).zip(dst.iter_mut()) {
                *o = ge8(w[0], w[1], tt);
                done += 8;
            }
        }
        super::per_byte(
            &values[done..],
            8,
            &mut dst[done / 8..],
            |g| {
                let lo = u32::from_le_bytes([g[0], g[1], g[2], g[3]]);
                let hi = u32::from_le_bytes([g[4], g[5], g[6], g[7]]);
                ge8(lo, hi, tt)
            },
            |rest| super::scalar_bits(rest, t),
        );
    }

    /// The packed byte of eight pixels, `first` holding pixels 0-3 (pixel 0
    /// in its low byte) and `second` pixels 4-7: bit 7 - i set when pixel
    /// i >= the threshold byte of `tt` (the same in all four bytes).
    #[inline(always)]
    pub(crate) fn ge8(first: u32, second: u32, tt: u32) -> u8 {
        let out: u32;
        // SAFETY: register-only ARMv6 media instructions (the build has
        // them: `--cfg bitmask_armv6`); they set the GE flags, which `sel`
        // reads and nothing else relies on (no `preserves_flags`).
        unsafe {
            core::arch::asm!(
                "usub8 {x}, {first}, {tt}",
                "sel {x}, {w0}, {zero}",
                "usad8 {out}, {x}, {zero}",
                "usub8 {x}, {second}, {tt}",
                "sel {x}, {w1}, {zero}",
                "usada8 {out}, {x}, {zero}, {out}",
                first = in(reg) first,
                second = in(reg) second,
                tt = in(reg) tt,
                // bit weights of pixels 0-3 and 4-7, pixel 0 in the low byte
                w0 = in(reg) 0x1020_4080u32,
                w1 = in(reg) 0x0102_0408u32,
                zero = in(reg) 0u32,
                x = out(reg) _,
                out = out(reg) out,
                options(pure, nomem, nostack),
            );
        }
        out as u8
    }
}

/// NEON (ARMv7 builds with `--cfg bitmask_neon`), in `asm!`: NEON
/// intrinsics are unstable on 32-bit ARM, and so are its vector register
/// types, so the loop keeps its vectors in fixed registers.
#[cfg(all(target_arch = "arm", target_endian = "little", bitmask_neon))]
pub(crate) mod neon {
    /// The bit weight of each of 16 pixels in its packed byte.
    static WEIGHTS: [u8; 16] = [128, 64, 32, 16, 8, 4, 2, 1, 128, 64, 32, 16, 8, 4, 2, 1];

    /// The loop of [`gray_bits16`] and [`channel_bits16`]: `$ld` loads 16
    /// pixels (`ld3`/`ld4`: de-interleaved, their channels in q0-q3),
    /// `$ch` is the register of the values compared.
    macro_rules! channel_loop {
        (ld3, $($rest:tt)*) => {
            channel_loop!(
                "vld3.8 {{d0, d2, d4}}, [{src}]!\nvld3.8 {{d1, d3, d5}}, [{src}]!",
                $($rest)*
            )
        };
        (ld4, $($rest:tt)*) => {
            channel_loop!(
                "vld4.8 {{d0, d2, d4, d6}}, [{src}]!\nvld4.8 {{d1, d3, d5, d7}}, [{src}]!",
                $($rest)*
            )
        };
        ($ld:literal, $ch:literal, $t:expr, $src:expr, $dst:expr, $n:expr) => {
            core::arch::asm!(
                "vdup.8 q8, {t}",
                "vld1.8 {{d18-d19}}, [{w}]",
                "2:",
                $ld,
                concat!("vcge.u8 q10, ", $ch, ", q8"),
                "vand q10, q10, q9",
                "vpadd.i8 d20, d20, d21",
                "vpadd.i8 d20, d20, d20",
                "vpadd.i8 d20, d20, d20",
                "vst1.16 {{d20[0]}}, [{dst}]!",
                "subs {n}, {n}, #1",
                "bne 2b",
                t = in(reg) $t as u32,
                w = in(reg) WEIGHTS.as_ptr(),
                src = inout(reg) $src => _,
                dst = inout(reg) $dst => _,
                n = inout(reg) $n => _,
                out("q0") _,
                out("q1") _,
                out("q2") _,
                out("q3") _,
                out("q8") _,
                out("q9") _,
                out("q10") _,
                options(nostack),
            )
        };
    }

    /// MSB-first bits of `values >= t` for the whole groups of 16 pixels
    /// (two output bytes each, into `dst`); returns the pixels done.
    /// `vcge` marks each pixel 0xff or 0, `vand` keeps its bit weight,
    /// three pairwise adds sum each 8 into a byte.
    pub(crate) fn gray_bits16(values: &[u8], t: u8, dst: &mut [u8]) -> usize {
        let n = (values.len() / 16).min(dst.len() / 2);
        if n == 0 {
            return 0;
        }
        let (src, out) = (values.as_ptr(), dst.as_mut_ptr());
        // SAFETY: reads 16 * n bytes of `values` and writes 2 * n of `dst`,
        // both within their slices (n bounded by both above); the vector
        // registers used are declared clobbered; NEON is in the build.
        unsafe { channel_loop!("vld1.8 {{d0-d1}}, [{src}]!", "q0", t, src, out, n) };
        n * 16
    }

    /// MSB-first bits of `channel >= t` for the whole groups of 16 pixels
    /// of `bpp` (3 or 4) bytes, the channel at byte `offset` (`< bpp`),
    /// into `dst` (two bytes a group); returns the pixels done. `vld3` /
    /// `vld4` put each channel of 16 pixels in a register of its own.
    pub(crate) fn channel_bits16(
        row: &[u8],
        bpp: usize,
        offset: usize,
        t: u8,
        dst: &mut [u8],
    ) -> usize {
        let n = (row.len() / (16 * bpp)).min(dst.len() / 2);
        if n == 0 || !matches!(bpp, 3 | 4) || offset >= bpp {
            return 0;
        }
        let (src, out) = (row.as_ptr(), dst.as_mut_ptr());
        // SAFETY: reads 16 * bpp * n bytes of `row` and writes 2 * n of
        // `dst`, within both (n bounded by both above); the vector
        // registers used are declared clobbered; NEON is in the build.
        unsafe {
            match (bpp, offset) {
                (3, 0) => channel_loop!(ld3, "q0", t, src, out, n),
                (3, 1) => channel_loop!(ld3, "q1", t, src, out, n),
                (3, _) => channel_loop!(ld3, "q2", t, src, out, n),
                (_, 0) => channel_loop!(ld4, "q0", t, src, out, n),
                (_, 1) => channel_loop!(ld4, "q1", t, src, out, n),
                (_, 2) => channel_loop!(ld4, "q2", t, src, out, n),
                _ => channel_loop!(ld4, "q3", t, src, out, n),
            }
        }
        n * 16
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
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

    /// The byte shuffle that reverses each group of 8 bytes, so that a
    /// movemask of the shuffled compare gives MSB-first bits in byte order
    /// (one shuffle per 32 pixels instead of reversing the bits of the mask).
    ///
    /// # Safety
    /// The CPU must have AVX2. (An `unsafe fn`: a safe one with
    /// `#[target_feature]` needs Rust 1.86, past this crate's MSRV.)
    #[target_feature(enable = "avx2")]
    unsafe fn group_reversal() -> __m256i {
        // SAFETY: AVX2, as the caller promises. (Rust 1.87 made the
        // intrinsic safe to call here; the MSRV's needs the block.)
        #[allow(unused_unsafe)]
        unsafe {
            _mm256_setr_epi8(
                7, 6, 5, 4, 3, 2, 1, 0, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 15,
                14, 13, 12, 11, 10, 9, 8,
            )
        }
    }

    /// AVX2: 64 pixels per step with two 32-byte compares.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn gray_bits_avx2(values: &[u8], t: u8, dst: &mut [u8]) {
        let n64 = values.len() / 64;
        // SAFETY: AVX2 checked by the caller; each `v` is exactly 64 bytes
        // (`chunks_exact(64)`), so the unaligned 32-byte loads at `p` and
        // `p.add(1)` stay inside it.
        unsafe {
            let tv = _mm256_set1_epi8(t as i8);
            let rev = group_reversal();
            for (v, d) in values.chunks_exact(64).zip(dst.chunks_exact_mut(8)) {
                let p = v.as_ptr() as *const __m256i;
                let a = _mm256_loadu_si256(p);
                let b = _mm256_loadu_si256(p.add(1));
                let ga = _mm256_cmpeq_epi8(_mm256_max_epu8(a, tv), a);
                let gb = _mm256_cmpeq_epi8(_mm256_max_epu8(b, tv), b);
                let m = (_mm256_movemask_epi8(_mm256_shuffle_epi8(ga, rev)) as u32 as u64)
                    | ((_mm256_movemask_epi8(_mm256_shuffle_epi8(gb, rev)) as u32 as u64) << 32);
                d.copy_from_slice(&m.to_le_bytes());
            }
        }
        super::gray_bits_swar(&values[n64 * 64..], t, &mut dst[n64 * 8..]);
    }

    /// AVX2: nonzero bytes to bits, 64 per step.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn nonzero_bits_avx2(values: &[u8], dst: &mut [u8]) -> usize {
        let n64 = values.len() / 64;
        // SAFETY: AVX2 checked by the caller; each `v` is exactly 64 bytes
        // (`chunks_exact(64)`), so the unaligned 32-byte loads at `p` and
        // `p.add(1)` stay inside it. (Iterated without an index, as
        // `gray_bits_avx2`: the indexed loop ran slower than numpy's.)
        unsafe {
            let zero = _mm256_setzero_si256();
            let rev = group_reversal();
            for (v, d) in values.chunks_exact(64).zip(dst.chunks_exact_mut(8)) {
                let p = v.as_ptr() as *const __m256i;
                let za = _mm256_cmpeq_epi8(_mm256_loadu_si256(p), zero);
                let zb = _mm256_cmpeq_epi8(_mm256_loadu_si256(p.add(1)), zero);
                let m = !((_mm256_movemask_epi8(_mm256_shuffle_epi8(za, rev)) as u32 as u64)
                    | ((_mm256_movemask_epi8(_mm256_shuffle_epi8(zb, rev)) as u32 as u64) << 32));
                d.copy_from_slice(&m.to_le_bytes());
            }
        }
        n64 * 64
    }

    /// AVX2: unpacks whole groups of 4 bytes of `packed` into 32 bytes of 0/`one`.
    /// Returns the number of packed bytes done.
    #[target_feature(enable = "avx2")]
    pub(crate) unsafe fn unpack_avx2(packed: &[u8], one: u8, out: &mut [u8]) -> usize {
        let quads = (packed.len() / 4).min(out.len() / 32);
        // SAFETY: AVX2 checked by the caller; 4-byte reads and 32-byte stores in bounds.
        unsafe {
            let spread = _mm256_setr_epi8(
                0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3,
                3, 3, 3, 3,
            );
            let bitsel = _mm256_set1_epi64x(0x0102_0408_1020_4080);
            let onev = _mm256_set1_epi8(one as i8);
            for i in 0..quads {
                let four = (packed.as_ptr().add(4 * i) as *const u32).read_unaligned();
                let x = _mm256_shuffle_epi8(_mm256_set1_epi32(four as i32), spread);
                let set = _mm256_cmpeq_epi8(_mm256_and_si256(x, bitsel), bitsel);
                _mm256_storeu_si256(
                    out.as_mut_ptr().add(32 * i) as *mut __m256i,
                    _mm256_and_si256(set, onev),
                );
            }
        }
        quads * 4
    }

    /// SSE2: unpacks whole bytes of `packed` into 8 bytes each of 0/`one`.
    /// Returns the number of packed bytes done (pairs).
    pub(crate) fn unpack_sse2(packed: &[u8], one: u8, out: &mut [u8]) -> usize {
        let pairs = (packed.len() / 2).min(out.len() / 16);
        // SAFETY: SSE2 is baseline; stores are unaligned and in bounds (16 * pairs <= out.len()).
        unsafe {
            let bitsel = _mm_set_epi8(1, 2, 4, 8, 16, 32, 64, -128, 1, 2, 4, 8, 16, 32, 64, -128);
            let onev = _mm_set1_epi8(one as i8);
            for i in 0..pairs {
                let two = u16::from_le_bytes([packed[2 * i], packed[2 * i + 1]]) as i32;
                let mut x = _mm_cvtsi32_si128(two);
                x = _mm_unpacklo_epi8(x, x);
                x = _mm_unpacklo_epi16(x, x);
                x = _mm_unpacklo_epi32(x, x);
                let set = _mm_cmpeq_epi8(_mm_and_si128(x, bitsel), bitsel);
                _mm_storeu_si128(
                    out.as_mut_ptr().add(16 * i) as *mut __m128i,
                    _mm_and_si128(set, onev),
                );
            }
        }
        pairs * 2
    }

    /// Shuffle masks that pick byte `offset` of each of 16 pixels of `bpp`
    /// bytes out of `bpp` consecutive 16-byte loads, each group of 8
    /// pixels in reverse lane order: a movemask of the compare then gives
    /// MSB-first bits in byte order (no bit reversal of the mask after).
    fn shuffle_masks(bpp: usize, offset: usize) -> [[i8; 16]; 4] {
        let mut masks = [[-128i8; 16]; 4];
        for i in 0..16 {
            let p = i * bpp + offset;
            masks[p / 16][i ^ 7] = (p % 16) as i8;
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
        let n64 = width / 64;
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
            for i in 0..n64 {
                let mut bits = 0u64;
                for k in 0..4 {
                    let p = row.as_ptr().add((i * 4 + k) * 16 * bpp) as *const __m128i;
                    let mut v = _mm_shuffle_epi8(_mm_loadu_si128(p), m[0]);
                    v = _mm_or_si128(v, _mm_shuffle_epi8(_mm_loadu_si128(p.add(1)), m[1]));
                    v = _mm_or_si128(v, _mm_shuffle_epi8(_mm_loadu_si128(p.add(2)), m[2]));
                    if bpp == 4 {
                        v = _mm_or_si128(v, _mm_shuffle_epi8(_mm_loadu_si128(p.add(3)), m[3]));
                    }
                    let ge = _mm_cmpeq_epi8(_mm_max_epu8(v, tv), v);
                    bits |= ((_mm_movemask_epi8(ge) as u32 as u64) & 0xffff) << (16 * k);
                }
                dst[i * 8..i * 8 + 8].copy_from_slice(&bits.to_le_bytes());
            }
        }
        n64 * 64
    }

    /// AVX2: one channel of 64 RGB/BGR/RGBA pixels per step; each 256-bit
    /// register holds the same 16-byte slice of two 16-pixel groups, so the
    /// in-lane shuffles of SSSE3 work unchanged.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn channel_bits_avx2(
        row: &[u8],
        bpp: usize,
        offset: usize,
        width: usize,
        t: u8,
        dst: &mut [u8],
    ) -> usize {
        let masks = shuffle_masks(bpp, offset);
        let n64 = width / 64;
        // SAFETY (whole block): AVX2 checked by the caller; every load reads
        // 16 bytes inside a 16-pixel group that lies inside `row`.
        unsafe {
            let m: [__m256i; 4] = core::array::from_fn(|k| {
                let half = _mm_loadu_si128(masks[k].as_ptr() as *const __m128i);
                _mm256_set_m128i(half, half)
            });
            let tv = _mm256_set1_epi8(t as i8);
            let group = 16 * bpp; // bytes per 16 pixels
            for i in 0..n64 {
                let mut bits = 0u64;
                for pair in 0..2 {
                    let lo = row.as_ptr().add((i * 4 + pair * 2) * group);
                    let hi = lo.add(group);
                    let load = |k: usize| {
                        _mm256_set_m128i(
                            _mm_loadu_si128(hi.add(16 * k) as *const __m128i),
                            _mm_loadu_si128(lo.add(16 * k) as *const __m128i),
                        )
                    };
                    let mut v = _mm256_shuffle_epi8(load(0), m[0]);
                    v = _mm256_or_si256(v, _mm256_shuffle_epi8(load(1), m[1]));
                    v = _mm256_or_si256(v, _mm256_shuffle_epi8(load(2), m[2]));
                    if bpp == 4 {
                        v = _mm256_or_si256(v, _mm256_shuffle_epi8(load(3), m[3]));
                    }
                    let ge = _mm256_cmpeq_epi8(_mm256_max_epu8(v, tv), v);
                    bits |= (_mm256_movemask_epi8(ge) as u32 as u64) << (32 * pair);
                }
                dst[i * 8..i * 8 + 8].copy_from_slice(&bits.to_le_bytes());
            }
        }
        n64 * 64
    }

    /// Luma rows compiled with AVX2 so the 32-bit arithmetic vectorises.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn luma_row_avx2<const BPP: usize>(
        row: &[u8],
        bgr: bool,
        t: u8,
        dst: &mut [u8],
    ) {
        let (mut row, mut dst) = (row, dst);
        if BPP == 3 {
            // SAFETY: this function is compiled for AVX2, which the caller checked.
            let pack = |g: &[u8], o: &mut [u8]| unsafe { gray_bits_avx2(g, 1, o) };
            let done = if bgr {
                super::vector_shapes::luma_chunks::<true>(row, t, dst, pack)
            } else {
                super::vector_shapes::luma_chunks::<false>(row, t, dst, pack)
            };
            (row, dst) = (&row[done * 3..], &mut dst[done / 8..]);
        }
        if bgr {
            super::luma_row::<BPP, true>(row, t, dst)
        } else {
            super::luma_row::<BPP, false>(row, t, dst)
        }
    }
}

/// [`gray_bits`] for a whole row, out of line (see `RowKernel::channel_row`).
#[inline(never)]
fn gray_row(values: &[u8], t: u8, dst: &mut [u8]) {
    #[allow(unused_mut)]
    let (mut values, mut dst) = (values, dst);
    // NEON where the build has it (`--cfg bitmask_neon`: the ARMv7 build),
    // 16 pixels at a time.
    #[cfg(all(target_arch = "arm", target_endian = "little", bitmask_neon))]
    {
        let done = neon::gray_bits16(values, t, dst);
        (values, dst) = (&values[done..], &mut dst[done / 8..]);
    }
    // ARMv6's SIMD-in-a-register instructions where the build says it has
    // them (`--cfg bitmask_armv6`: both Pi builds): 4 pixels an instruction.
    #[cfg(all(target_arch = "arm", target_endian = "little", bitmask_armv6))]
    if t >= 1 {
        return armv6::gray_bits(values, t, dst);
    }
    // On ARM builds with neither flag (a plain armv7 or ARMv6 build) a
    // compare per pixel beats SWAR on 64-bit words, which are pairs of
    // 32-bit operations there.
    if cfg!(all(target_arch = "arm", not(bitmask_neon))) {
        channel_rest::<1>(values, 0, t, dst);
    } else {
        gray_bits(values, t, dst)
    }
}

#[inline(always)]
fn gray_bits(values: &[u8], t: u8, dst: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if values.len() >= 64 && std::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 detected.
        unsafe { x86::gray_bits_avx2(values, t, dst) };
    } else {
        x86::gray_bits(values, t, dst);
    }
    #[cfg(not(target_arch = "x86_64"))]
    gray_bits_swar(values, t, dst);
}

/// MSB-first bits of `luma >= t` for up to 8 pixels of `BPP` bytes, without
/// computing the luma itself: `(S + 32768) >> 16 >= t` is `S >= (t << 16) - 32768`
/// with `S = 19595 R + 38470 G + 7471 B` (exact; `t >= 1` here).
#[inline(always)]
fn luma_bits<const BPP: usize, const BGR: bool>(px: &[u8], k: u32) -> u8 {
    let (ri, bi) = if BGR { (2, 0) } else { (0, 2) };
    let mut b = 0u8;
    for (i, p) in px.chunks_exact(BPP).enumerate() {
        let s = 19595 * p[ri] as u32 + 38470 * p[1] as u32 + 7471 * p[bi] as u32;
        b |= ((s >= k) as u8) << (7 - i);
    }
    b
}

/// MSB-first bits of `channel >= t` for up to 8 pixels of `BPP` bytes
/// (`offset < BPP`).
#[inline(always)]
fn channel_bits<const BPP: usize>(px: &[u8], offset: usize, t: u8) -> u8 {
    let mut b = 0u8;
    for (i, p) in px.chunks_exact(BPP).enumerate() {
        b |= ((p[offset] >= t) as u8) << (7 - i);
    }
    b
}

#[derive(Debug, Clone, Copy)]
enum Source {
    Gray,
    Channel { bpp: usize, offset: usize },
    Luma { bpp: usize, bgr: bool },
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
            (_, Channel::Luma) => Source::Luma {
                bpp,
                bgr: format == PixelFormat::Bgr8,
            },
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
    pub(crate) fn portable(self) -> Self {
        RowKernel {
            #[cfg(target_arch = "x86_64")]
            ssse3: false,
            #[cfg(target_arch = "x86_64")]
            avx2: false,
            ..self
        }
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
                Source::Gray => gray_row(row, t, dst),
                Source::Channel { bpp, offset } => {
                    self.channel_row(row, bpp, offset, width, t, dst)
                }
                Source::Luma { bpp, bgr } => self.luma_row(row, bpp, bgr, t, dst),
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

    // Each source's row function is its own (never inlined into `run`), so
    // that how one is compiled does not move with the others.
    #[inline(never)]
    fn channel_row(
        &self,
        row: &[u8],
        bpp: usize,
        offset: usize,
        width: usize,
        t: u8,
        dst: &mut [u8],
    ) {
        // The width only bounds the x86 vector paths, which index without
        // checks: never past the row or the destination, whatever a caller
        // says.
        #[cfg(not(target_arch = "x86_64"))]
        let _ = width;
        #[cfg(target_arch = "x86_64")]
        let width = width.min(row.len() / bpp).min(dst.len() * 8);
        #[allow(unused_mut)]
        let mut done = 0;
        #[cfg(target_arch = "x86_64")]
        if self.avx2 {
            // SAFETY: AVX2 was detected at run time.
            done = unsafe { x86::channel_bits_avx2(row, bpp, offset, width, t, dst) };
        } else if self.ssse3 {
            // SAFETY: SSSE3 was detected at run time.
            done = unsafe { x86::channel_bits_ssse3(row, bpp, offset, width, t, dst) };
        }
        // NEON's de-interleaving loads (the ARMv7 build): 16 pixels a loop
        #[cfg(all(target_arch = "arm", target_endian = "little", bitmask_neon))]
        {
            done += neon::channel_bits16(&row[done * bpp..], bpp, offset, t, &mut dst[done / 8..]);
        }
        let (row, dst) = (&row[done * bpp..], &mut dst[done / 8..]);
        match bpp {
            3 => channel_rest::<3>(row, offset, t, dst),
            _ => channel_rest::<4>(row, offset, t, dst),
        }
    }

    #[inline(never)]
    fn luma_row(&self, row: &[u8], bpp: usize, bgr: bool, t: u8, dst: &mut [u8]) {
        #[cfg(target_arch = "x86_64")]
        if self.avx2 {
            // SAFETY: AVX2 was detected at run time.
            unsafe {
                match bpp {
                    3 => x86::luma_row_avx2::<3>(row, bgr, t, dst),
                    _ => x86::luma_row_avx2::<4>(row, bgr, t, dst),
                }
            }
            return;
        }
        #[allow(unused_mut)]
        let (mut row, mut dst) = (row, dst);
        #[cfg(bitmask_neon)]
        if bpp == 3 {
            let done = vector_shapes::luma_chunks_out_of_line(row, bgr, t, dst);
            (row, dst) = (&row[done * 3..], &mut dst[done / 8..]);
        }
        match bpp {
            3 if bgr => luma_row::<3, true>(row, t, dst),
            3 => luma_row::<3, false>(row, t, dst),
            _ if bgr => luma_row::<4, true>(row, t, dst),
            _ => luma_row::<4, false>(row, t, dst),
        }
    }
}

/// A loop shape that LLVM vectorises: with AVX2 inside the x86-64 luma
/// path, and as NEON code (`vld3` de-interleaving, widening
/// multiply-accumulate, compares) in builds with NEON enabled:
/// the ARMv7 build of `cargo xtask dist` passes `--cfg bitmask_neon` with
/// `-C target-feature=+neon` (NEON intrinsics are not stable on 32-bit ARM,
/// and `cfg(target_feature = "neon")` is not set there). It turns 64
/// pixels at a time into one byte per pixel, packed like gray pixels; on
/// an ARM without NEON the same shape is slower than the direct per-pixel
/// path; for one channel of RGB the direct path beat it with NEON too
/// (`cargo xtask bench pi`: 3.6 M against 4.9 M instructions per frame),
/// and the NEON build now takes `neon::channel_bits16` (0.49 M).
#[cfg(any(bitmask_neon, target_arch = "x86_64"))]
mod vector_shapes {

    /// [`luma_chunks`] in a function of its own (NEON builds).
    #[cfg(bitmask_neon)]
    #[inline(never)]
    pub(super) fn luma_chunks_out_of_line(row: &[u8], bgr: bool, t: u8, dst: &mut [u8]) -> usize {
        // (the 0/1 bytes of 64 pixels packed 16 at a time on 32-bit ARM)
        let pack = |g: &[u8], o: &mut [u8]| {
            #[cfg(all(target_arch = "arm", target_endian = "little"))]
            let done = super::neon::gray_bits16(g, 1, o);
            #[cfg(not(all(target_arch = "arm", target_endian = "little")))]
            let done = 0;
            super::gray_bits_swar(&g[done..], 1, &mut o[done / 8..]);
        };
        if bgr {
            luma_chunks::<true>(row, t, dst, pack)
        } else {
            luma_chunks::<false>(row, t, dst, pack)
        }
    }

    /// Luma of RGB (or BGR) pixels `>= t` (the same exact test as
    /// [`super::luma_bits`]), for the whole 64-pixel chunks of `row`, the
    /// 0/1 bytes of each chunk packed by `pack` (values, threshold 1);
    /// returns the pixels done.
    #[inline(always)]
    pub(super) fn luma_chunks<const BGR: bool>(
        row: &[u8],
        t: u8,
        dst: &mut [u8],
        pack: impl Fn(&[u8], &mut [u8]),
    ) -> usize {
        let k = ((t as u32) << 16) - 32768;
        let (ri, bi) = if BGR { (2, 0) } else { (0, 2) };
        let mut ge = [0u8; 64];
        let mut n = 0;
        for (px, out) in row.chunks_exact(64 * 3).zip(dst.chunks_exact_mut(8)) {
            let px = &px[..64 * 3];
            for (i, g) in ge.iter_mut().enumerate() {
                let s = 19595 * px[3 * i + ri] as u32
                    + 38470 * px[3 * i + 1] as u32
                    + 7471 * px[3 * i + bi] as u32;
                *g = (s >= k) as u8;
            }
            pack(&ge, out);
            n += 64;
        }
        n
    }
}

/// The pixels of a row that the vector paths left (all of it without
/// them): one comparison per pixel straight from the interleaved bytes, no
/// gathering pass (on ARM a load, a compare and a conditional OR per pixel).
#[inline(always)]
fn channel_rest<const BPP: usize>(row: &[u8], offset: usize, t: u8, dst: &mut [u8]) {
    debug_assert!(offset < BPP);
    // (A no-op that spares the per-pixel index checks.)
    let offset = offset.min(BPP - 1);
    let bits = |g: &[u8]| channel_bits::<BPP>(g, offset, t);
    per_byte(row, 8 * BPP, dst, bits, bits);
}

#[inline(always)]
fn luma_row<const BPP: usize, const BGR: bool>(row: &[u8], t: u8, dst: &mut [u8]) {
    let k = ((t as u32) << 16) - 32768;
    let bits = |g: &[u8]| luma_bits::<BPP, BGR>(g, k);
    per_byte(row, 8 * BPP, dst, bits, bits);
}

/// Gathers the nonzero-ness of 8 bytes into one byte, MSB-first (numpy `packbits`).
#[inline(always)]
pub(crate) fn nonzero_msb_first(x: u64) -> u8 {
    // (x_lo7 + 0x7f) sets bit 7 iff x_lo7 != 0; or-ing x adds x's own bit 7.
    gather_msb_first((((x & !H) + !H) | x) & H)
}

/// `dst[i]` = MSB-first nonzero bits of `values[8i..8i+8]` (short last group padded with 0).
pub(crate) fn nonzero_bits(values: &[u8], dst: &mut [u8]) {
    // (nonzero is >= 1)
    #[cfg(all(target_arch = "arm", target_endian = "little", bitmask_neon))]
    let (values, dst) = {
        let done = neon::gray_bits16(values, 1, dst);
        (&values[done..], &mut dst[done / 8..])
    };
    #[cfg(all(target_arch = "arm", target_endian = "little", bitmask_armv6))]
    return armv6::gray_bits(values, 1, dst);
    #[cfg(not(target_arch = "x86_64"))]
    #[allow(unreachable_code)]
    let done = 0;
    #[cfg(target_arch = "x86_64")]
    let done = if std::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 detected.
        unsafe { x86::nonzero_bits_avx2(values, dst) }
    } else {
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
    per_byte(
        values,
        8,
        dst,
        |g| nonzero_msb_first(u64::from_le_bytes(g.try_into().unwrap())),
        |rest| {
            let mut b = 0u8;
            for (i, &v) in rest.iter().enumerate() {
                b |= ((v != 0) as u8) << (7 - i);
            }
            b
        },
    );
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

#[cfg(test)]
mod path_tests {
    use super::*;

    fn scalar(values: &[u8], t: u8) -> Vec<u8> {
        values.chunks(8).map(|c| scalar_bits(c, t)).collect()
    }

    /// The SSSE3 and AVX2 channel kernels alone (threshold_pack prefers AVX2 when present).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn channel_paths_agree() {
        let row: Vec<u8> = (0..300 * 4).map(|i| ((i * 7919) % 251) as u8).collect();
        for bpp in [3usize, 4] {
            for offset in 0..3 {
                for width in [64usize, 128, 192, 255, 300] {
                    let px = &row[..width * bpp];
                    let vals: Vec<u8> = px.chunks_exact(bpp).map(|p| p[offset]).collect();
                    for t in [1u8, 100, 128, 200, 255] {
                        let want = scalar(&vals, t);
                        let mut got = vec![0u8; want.len()];
                        if std::is_x86_feature_detected!("ssse3") {
                            let done = unsafe {
                                x86::channel_bits_ssse3(px, bpp, offset, width, t, &mut got)
                            };
                            assert_eq!(
                                got[..done / 8],
                                want[..done / 8],
                                "ssse3 bpp={bpp} off={offset} w={width}"
                            );
                        }
                        if std::is_x86_feature_detected!("avx2") {
                            let done = unsafe {
                                x86::channel_bits_avx2(px, bpp, offset, width, t, &mut got)
                            };
                            assert_eq!(
                                got[..done / 8],
                                want[..done / 8],
                                "avx2 bpp={bpp} off={offset} w={width}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// The NEON channel loop alone (the ARMv7 build), each pixel size and
    /// channel, every length 0..300: the bits of its whole groups, nothing
    /// written past them.
    #[cfg(all(target_arch = "arm", target_endian = "little", bitmask_neon))]
    #[test]
    fn neon_channel_paths_agree() {
        let bytes = random_bytes(0x2545_F491_4F6C_DD1D, 4 * 300);
        for bpp in [3usize, 4] {
            for offset in 0..bpp {
                for px in 0..300 {
                    let row = &bytes[..px * bpp];
                    for t in [1u8, 77, 128, 170, 255] {
                        let values: Vec<u8> = (0..px).map(|i| row[i * bpp + offset]).collect();
                        let want = scalar(&values, t);
                        let mut got = vec![0xa5u8; want.len() + 2];
                        let done =
                            neon::channel_bits16(row, bpp, offset, t, &mut got[..want.len()]);
                        assert_eq!(done, px / 16 * 16);
                        assert_eq!(
                            got[..done / 8],
                            want[..done / 8],
                            "bpp={bpp} ch={offset} px={px} t={t}"
                        );
                        assert!(
                            got[done / 8..].iter().all(|&b| b == 0xa5),
                            "bpp={bpp} px={px}"
                        );
                    }
                }
            }
        }
    }

    /// `n` bytes of xorshift from `seed`.
    fn random_bytes(mut x: u64, n: usize) -> Vec<u8> {
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// Each gray kernel (SWAR, SSE2, AVX2, NEON, ARMv6) alone, on every
    /// length 0..300 and many thresholds.
    #[test]
    fn gray_paths_agree() {
        let values = random_bytes(0x9E37_79B9_7F4A_7C15, 300);
        for len in 0..300 {
            let v = &values[..len];
            for t in [1u8, 2, 77, 127, 128, 129, 200, 255] {
                let want = scalar(v, t);
                let mut got = vec![0xa5u8; want.len()];
                gray_bits_swar(v, t, &mut got);
                assert_eq!(got, want, "swar len={len} t={t}");
                #[cfg(all(target_arch = "arm", target_endian = "little", bitmask_neon))]
                {
                    // written exactly: nothing past what it did
                    let mut n = vec![0xa5u8; want.len() + 4];
                    let done = neon::gray_bits16(v, t, &mut n[..want.len()]);
                    assert_eq!(done, len / 16 * 16);
                    assert_eq!(n[..done / 8], want[..done / 8], "neon len={len} t={t}");
                    assert!(n[done / 8..].iter().all(|&b| b == 0xa5), "neon len={len}");
                    // a destination shorter than the pixels bounds it
                    if len >= 32 {
                        let mut short = [0xa5u8; 3];
                        let done = neon::gray_bits16(v, t, &mut short[..2]);
                        assert_eq!(done, 16);
                        assert_eq!(short[..2], want[..2]);
                        assert_eq!(short[2], 0xa5);
                    }
                }
                #[cfg(all(target_arch = "arm", target_endian = "little", bitmask_armv6))]
                {
                    got.fill(0xa5); // (every byte must be written)
                    armv6::gray_bits(v, t, &mut got);
                    assert_eq!(got, want, "armv6 len={len} t={t}");
                    // pixels that do not start on a word: byte loads
                    if len > 1 {
                        let v1 = &values[1..len];
                        let want1 = scalar(v1, t);
                        let mut got1 = vec![0u8; want1.len()];
                        armv6::gray_bits(v1, t, &mut got1);
                        assert_eq!(got1, want1, "armv6 unaligned len={len} t={t}");
                    }
                }
                #[cfg(target_arch = "x86_64")]
                {
                    got.fill(0xa5);
                    x86::gray_bits(v, t, &mut got);
                    assert_eq!(got, want, "sse2 len={len} t={t}");
                    if std::is_x86_feature_detected!("avx2") {
                        got.fill(0xa5);
                        unsafe { x86::gray_bits_avx2(v, t, &mut got) };
                        assert_eq!(got, want, "avx2 len={len} t={t}");
                    }
                }
            }
            // nonzero: SWAR tail alone vs SIMD paths through nonzero_bits
            let want: Vec<u8> = v
                .chunks(8)
                .map(|c| {
                    c.iter()
                        .enumerate()
                        .fold(0u8, |b, (i, &p)| b | (((p != 0) as u8) << (7 - i)))
                })
                .collect();
            let mut got = vec![0u8; want.len()];
            nonzero_bits(v, &mut got);
            assert_eq!(got, want, "nonzero len={len}");
            for (g, c) in got.iter_mut().zip(v.chunks_exact(8)) {
                *g = nonzero_msb_first(u64::from_le_bytes(c.try_into().unwrap()));
            }
            assert_eq!(got[..len / 8], want[..len / 8], "nonzero swar len={len}");
            // unpack: SSE2 and AVX2 against the definition
            #[cfg(target_arch = "x86_64")]
            {
                let packed = &values[..len / 8 * 8 / 8 + len % 3];
                let want: Vec<u8> = packed
                    .iter()
                    .flat_map(|&b| (0..8).map(move |i| (b >> (7 - i)) & 1))
                    .collect();
                let mut got = vec![7u8; want.len()];
                let done = x86::unpack_sse2(packed, 1, &mut got);
                assert_eq!(got[..done * 8], want[..done * 8], "unpack sse2 len={len}");
                if std::is_x86_feature_detected!("avx2") {
                    let done = unsafe { x86::unpack_avx2(packed, 1, &mut got) };
                    assert_eq!(got[..done * 8], want[..done * 8], "unpack avx2 len={len}");
                }
            }
        }
    }
}
