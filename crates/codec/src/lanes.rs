//! The mode stream of the bilevel codec: interleaved rANS lanes over one
//! stream, context-free (one model per run of symbols), so the decoder
//! decodes every mode symbol of a frame in one pass: sixteen lanes at a
//! time (two AVX2 vectors, whose table gathers overlap) where the CPU has
//! AVX2, one lane after the other otherwise. Both give the same symbols and
//! the same errors.
//!
//! Stream: the lanes' final encoder states (`4 * lanes` bytes, lane 0
//! first, u32 LE), then 16-bit LE words. Symbol `i` uses lane `i % lanes`;
//! after decoding a symbol its lane takes the next word when its state fell
//! below [`RANS_L`] (docs/CODEC.md 1.3). A frame of fewer than
//! [`MANY`] symbols uses [`FEW_LANES`] lanes (less state to send), others
//! [`LANES`].

use crate::rans::{
    put, EncSym, BIAS_SHIFT, FREQ_SHIFT, MODEL_SLOTS, PROB_BITS, PROB_SCALE, RANS_L, TABLE_LEN,
};

/// Number of interleaved lanes of a frame with at least [`MANY`] symbols.
pub(crate) const LANES: usize = 16;
/// Number of lanes of a frame with fewer.
pub(crate) const FEW_LANES: usize = 4;
/// See [`LANES`].
pub(crate) const MANY: usize = 4096;

/// Number of lanes for a frame of `n` mode symbols.
pub(crate) fn lanes_for(n: usize) -> usize {
    if n >= MANY {
        LANES
    } else {
        FEW_LANES
    }
}

/// Codes `syms` (symbol `i` with lane `i % lanes`, last to first, `lanes`
/// from [`lanes_for`]) writing the stream backwards into `buf` (at least
/// `2 * syms.len() + 4 * LANES` bytes) from its end; returns where the
/// stream starts. `table[s]` is the coder entry of symbol byte `s`.
/// Nothing is written for no symbols.
pub(crate) fn encode(syms: &[u8], table: &[EncSym; 64], buf: &mut [u8]) -> usize {
    match lanes_for(syms.len()) {
        LANES => {
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("popcnt") {
                // SAFETY: the CPU has AVX2 and POPCNT (checked just now).
                #[allow(unsafe_code)]
                return unsafe { x86_enc::encode16(syms, table, buf) };
            }
            encode_n::<LANES>(syms, table, buf)
        }
        _ => encode_n::<FEW_LANES>(syms, table, buf),
    }
}

fn encode_n<const N: usize>(syms: &[u8], table: &[EncSym; 64], buf: &mut [u8]) -> usize {
    let mut p = buf.len();
    if syms.is_empty() {
        return p;
    }
    let mut x = [RANS_L; N];
    let mut i = head(syms, table, buf, &mut x, &mut p);
    while i >= N {
        let g = &syms[i - N..i];
        for j in (0..N).rev() {
            x[j] = put(x[j], buf, &mut p, &table[g[j] as usize % 64]);
        }
        i -= N;
    }
    finish(x, buf, p)
}

/// Codes the top `syms.len() % N` symbols (so the rest comes in whole
/// groups); returns how many symbols are left.
#[inline(always)]
fn head<const N: usize>(
    syms: &[u8],
    table: &[EncSym; 64],
    buf: &mut [u8],
    x: &mut [u32; N],
    p: &mut usize,
) -> usize {
    let mut i = syms.len();
    while i % N != 0 {
        i -= 1;
        x[i % N] = put(x[i % N], buf, p, &table[syms[i] as usize % 64]);
    }
    i
}

/// Writes the final states below `p`; returns where the stream starts.
#[inline(always)]
fn finish<const N: usize>(x: [u32; N], buf: &mut [u8], mut p: usize) -> usize {
    p -= 4 * N;
    for (j, s) in x.into_iter().enumerate() {
        buf[p + 4 * j..p + 4 * j + 4].copy_from_slice(&s.to_le_bytes());
    }
    p
}

/// The sixteen-lane encoder with AVX2: eight lanes per vector, the coder
/// entries looked up for a block of symbols ahead (faster than gathering
/// them here), the renormalisation words of a group written with one store
/// per vector. Same arithmetic and same bytes as [`encode_n`].
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod x86_enc {
    use super::{finish, head, LANES};
    use crate::rans::{EncSym, RANS_L};
    use std::arch::x86_64::*;

    /// For each mask of the lanes (of eight) that give out a word: those
    /// lanes in order at the top of the vector (the rest 0).
    const COMPRESS: [[u32; 8]; 256] = {
        let mut t = [[0u32; 8]; 256];
        let mut m = 0;
        while m < 256 {
            let mut k = 8 - (m as u32).count_ones() as usize;
            let mut j = 0;
            while j < 8 {
                if (m >> j) & 1 == 1 {
                    t[m][k] = j as u32;
                    k += 1;
                }
                j += 1;
            }
            m += 1;
        }
        t
    };

    /// [`super::encode_n`] for [`LANES`] lanes.
    ///
    /// # Safety
    /// The CPU must support AVX2 and POPCNT.
    #[target_feature(enable = "avx2,popcnt")]
    pub(super) unsafe fn encode16(syms: &[u8], table: &[EncSym; 64], buf: &mut [u8]) -> usize {
        let mut p = buf.len();
        if syms.is_empty() {
            return p;
        }
        let mut x = [RANS_L; LANES];
        let mut i = head(syms, table, buf, &mut x, &mut p);
        // The entries as two tables: reciprocals, and frequency | bias << 10 | shift << 20.
        let mut rcp = [0u32; 64];
        let mut packed = [0u32; 64];
        for (s, e) in table.iter().enumerate() {
            let (r, shift, bias, freq) = e.parts();
            rcp[s] = r;
            packed[s] = freq | bias << 10 | shift << 20;
        }
        // SAFETY (all intrinsics below): the CPU has AVX2; loads and stores
        // go through slices of the right length (bounds-checked).
        unsafe {
            let m10 = _mm256_set1_epi32(0x3FF);
            let scale = _mm256_set1_epi32(512);
            // The low 16 bits of each 32-bit element to the low 8 bytes of each 128-bit half.
            let pick = _mm256_setr_epi8(
                0, 1, 4, 5, 8, 9, 12, 13, -1, -1, -1, -1, -1, -1, -1, -1, 0, 1, 4, 5, 8, 9, 12, 13,
                -1, -1, -1, -1, -1, -1, -1, -1,
            );
            // One symbol on each of eight lanes: the words of the lanes that
            // renormalise go just below `p` (lane order upwards), then the state update.
            let step =
                |x: __m256i, r: __m256i, k: __m256i, buf: &mut [u8], p: &mut usize| -> __m256i {
                    let freq = _mm256_and_si256(k, m10);
                    // x >= x_max (unsigned: x_max is 2^31 for a lone symbol).
                    let x_max = _mm256_slli_epi32::<22>(freq);
                    let need = _mm256_cmpeq_epi32(_mm256_max_epu32(x, x_max), x);
                    let m = _mm256_movemask_ps(_mm256_castsi256_ps(need)) as usize;
                    let perm = _mm256_loadu_si256(COMPRESS[m].as_ptr() as *const __m256i);
                    let w = _mm256_shuffle_epi8(_mm256_permutevar8x32_epi32(x, perm), pick);
                    let w = _mm256_castsi256_si128(_mm256_permute4x64_epi64::<0b1000>(w));
                    let dst: &mut [u8] = &mut buf[*p - 16..*p];
                    _mm_storeu_si128(dst.as_mut_ptr() as *mut __m128i, w);
                    *p -= 2 * m.count_ones() as usize;
                    let x = _mm256_blendv_epi8(x, _mm256_srli_epi32::<16>(x), need);
                    // q = (x * rcp) >> 32 >> shift, even and odd elements apart.
                    let even = _mm256_srli_epi64::<32>(_mm256_mul_epu32(x, r));
                    let odd =
                        _mm256_mul_epu32(_mm256_srli_epi64::<32>(x), _mm256_srli_epi64::<32>(r));
                    let q = _mm256_blend_epi32::<0b1010_1010>(even, odd);
                    let q = _mm256_srlv_epi32(q, _mm256_srli_epi32::<20>(k));
                    let bias = _mm256_and_si256(_mm256_srli_epi32::<10>(k), m10);
                    let cmpl = _mm256_sub_epi32(scale, freq);
                    _mm256_add_epi32(_mm256_add_epi32(x, bias), _mm256_mullo_epi32(q, cmpl))
                };
            let mut xa = _mm256_loadu_si256(x.as_ptr() as *const __m256i);
            let mut xb = _mm256_loadu_si256(x[8..].as_ptr() as *const __m256i);
            // The entries of the symbols of up to `BLK / LANES` groups, in symbol order.
            const BLK: usize = 256;
            let mut er = [0u32; BLK];
            let mut ek = [0u32; BLK];
            while i >= LANES {
                let lo = i - (i / LANES).min(BLK / LANES) * LANES;
                for ((s, r), k) in syms[lo..i].iter().zip(&mut er).zip(&mut ek) {
                    *r = rcp[*s as usize & 63];
                    *k = packed[*s as usize & 63];
                }
                let mut j = i - lo;
                while j >= LANES {
                    let ra = _mm256_loadu_si256(er[j - 16..j - 8].as_ptr() as *const __m256i);
                    let rb = _mm256_loadu_si256(er[j - 8..j].as_ptr() as *const __m256i);
                    let ka = _mm256_loadu_si256(ek[j - 16..j - 8].as_ptr() as *const __m256i);
                    let kb = _mm256_loadu_si256(ek[j - 8..j].as_ptr() as *const __m256i);
                    // Lanes 15 to 8 first (their words end up above those of lanes 7 to 0).
                    xb = step(xb, rb, kb, buf, &mut p);
                    xa = step(xa, ra, ka, buf, &mut p);
                    j -= LANES;
                }
                i = lo;
            }
            _mm256_storeu_si256(x.as_mut_ptr() as *mut __m256i, xa);
            _mm256_storeu_si256(x[8..].as_mut_ptr() as *mut __m256i, xb);
        }
        finish(x, buf, p)
    }

    #[cfg(test)]
    mod tests {
        use super::super::{encode_n, LANES};
        use crate::rans::{normalize, EncSym};

        /// Same bytes as the scalar coder: skewed, flat and one-symbol
        /// alphabets (frequencies 1 and 512 included), every group phase.
        #[test]
        fn avx2_encoder_matches_scalar() {
            if !std::is_x86_feature_detected!("avx2") {
                return;
            }
            let mut seed = 0x2545_F491_4F6C_DD1Du64;
            let mut rnd = || {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed
            };
            for (n, kind) in [
                (4096, 0),
                (4097, 1),
                (5000, 2),
                (20011, 0),
                (9999, 3),
                (4111, 1),
            ] {
                let syms: Vec<u8> = (0..n)
                    .map(|_| match kind {
                        // Mostly one symbol, a few rare ones (frequency 1), both halves of the table.
                        0 => match rnd() % 2000 {
                            0 => 40,
                            1 => 3,
                            v if v < 1200 => 7,
                            v => (v % 17) as u8 + 32 * (v % 2) as u8,
                        },
                        1 => (rnd() % 64) as u8,
                        2 => 5,
                        _ => (rnd() % 3 + rnd() % 5) as u8,
                    })
                    .collect();
                let mut counts = [0u32; 64];
                for &s in &syms {
                    counts[s as usize] += 1;
                }
                let mut freq = [0u32; 64];
                normalize(&counts, &mut freq);
                let mut table = [EncSym::default(); 64];
                let mut start = 0;
                for (s, &f) in freq.iter().enumerate() {
                    if f > 0 {
                        table[s] = EncSym::new(start, f);
                        start += f;
                    }
                }
                let len = 2 * n + 4 * LANES;
                let (mut a, mut b) = (vec![0u8; len], vec![0u8; len]);
                let sa = encode_n::<LANES>(&syms, &table, &mut a);
                // SAFETY: the CPU has AVX2 (checked above).
                #[allow(unsafe_code)]
                let sb = unsafe { super::encode16(&syms, &table, &mut b) };
                assert_eq!(sa, sb, "{n} {kind}");
                assert!(a[sa..] == b[sb..], "{n} {kind}");
            }
        }
    }
}

/// Decoder of a mode stream.
#[derive(Debug, Clone)]
pub(crate) struct Lanes<'a> {
    x: [u32; LANES],
    /// Number of lanes.
    nl: usize,
    /// The stream's words, then [`LANES`] zeros (room for vector loads).
    words: &'a [u16],
    /// Number of real words.
    n: usize,
    pos: usize,
    /// Symbols decoded so far (which lane is next).
    done: usize,
    /// A symbol was asked of an empty model.
    bad: bool,
    even: bool,
}

impl<'a> Lanes<'a> {
    /// Splits `stream` after the states of `nl` lanes into little-endian
    /// words in `padded`, followed by [`LANES`] zero words.
    pub(crate) fn pad(stream: &[u8], nl: usize, padded: &mut Vec<u16>) {
        crate::rans::words_after(stream, 4 * nl, padded);
        padded.extend_from_slice(&[0; LANES]);
    }

    /// A decoder of `nl` lanes over `stream`, whose words [`Lanes::pad`] put in `padded`.
    pub(crate) fn new(stream: &[u8], nl: usize, padded: &'a [u16]) -> Result<Self, &'static str> {
        let nl = nl.clamp(1, LANES);
        let head = stream
            .get(..4 * nl)
            .ok_or("mode stream shorter than its lane states")?;
        let mut x = [RANS_L; LANES];
        for (s, b) in x.iter_mut().zip(head.chunks_exact(4)) {
            *s = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            if !(RANS_L..1 << 31).contains(s) {
                return Err("rANS initial state out of range");
            }
        }
        Ok(Lanes {
            x,
            nl,
            words: padded,
            n: padded.len().saturating_sub(LANES),
            pos: 0,
            done: 0,
            bad: false,
            even: stream.len() % 2 == 0,
        })
    }

    /// Decodes `out.len()` symbols of model `m` of `t` into `out`.
    pub(crate) fn decode(&mut self, t: &[u32; TABLE_LEN], m: usize, out: &mut [u8]) {
        if out.is_empty() {
            return;
        }
        let base = (m % MODEL_SLOTS) << PROB_BITS;
        // An empty model's entries are all 0; a used one's never are.
        if t[base] == 0 {
            self.bad = true;
            out.fill(0);
            return;
        }
        let model: &[u32; PROB_SCALE as usize] = t[base..base + PROB_SCALE as usize]
            .try_into()
            .expect("one model");
        // One lane at a time up to a group boundary, then whole groups
        // (sixteen lanes at once when the CPU can), then the rest.
        let nl = self.nl;
        let head = ((nl - self.done % nl) % nl).min(out.len());
        let (first, rest) = out.split_at_mut(head);
        self.scalar(model, first);
        #[cfg(target_arch = "x86_64")]
        let done = if nl == LANES
            && std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("popcnt")
        {
            // SAFETY: the CPU has AVX2 and POPCNT (checked just now).
            #[allow(unsafe_code)]
            let n = unsafe { x86::groups(model, &mut self.x, self.words, &mut self.pos, rest) };
            self.done += n;
            n
        } else {
            0
        };
        #[cfg(not(target_arch = "x86_64"))]
        let done = 0;
        self.scalar(model, &mut rest[done..]);
    }

    /// Decodes `out.len()` symbols one lane after the other.
    fn scalar(&mut self, model: &[u32; PROB_SCALE as usize], out: &mut [u8]) {
        let words = self.words;
        let mut pos = self.pos;
        let mut l = self.done % self.nl;
        for o in out.iter_mut() {
            let x = self.x[l];
            let e = model[(x & (PROB_SCALE - 1)) as usize];
            let f = (e >> FREQ_SHIFT) & ((2 << PROB_BITS) - 1);
            let v = f * (x >> PROB_BITS) + ((e >> BIAS_SHIFT) & (PROB_SCALE - 1));
            self.x[l] = if v < RANS_L {
                let w = words.get(pos).copied().unwrap_or(0) as u32;
                pos += 1;
                (v << 16) | w
            } else {
                v
            };
            *o = e as u8 & 63;
            l += 1;
            if l == self.nl {
                l = 0;
            }
        }
        self.done += out.len();
        self.pos = pos;
    }

    /// True when the stream was consumed exactly, no symbol came from an
    /// empty model and every lane ended in the encoder's initial state.
    pub(crate) fn finished_cleanly(&self) -> bool {
        self.even && !self.bad && self.pos == self.n && self.x == [RANS_L; LANES]
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod x86 {
    use super::LANES;
    use crate::rans::{BIAS_SHIFT, FREQ_SHIFT, PROB_SCALE, RANS_L};
    use std::arch::x86_64::*;

    /// For each mask of lanes that take a word, the index (among the
    /// group's words) of the word each lane takes: the number of lanes
    /// below it that take one.
    const PERM: [[u32; 8]; 256] = {
        let mut t = [[0u32; 8]; 256];
        let mut m = 0;
        while m < 256 {
            let mut j = 0;
            let mut c = 0;
            while j < 8 {
                t[m][j] = c;
                c += (m >> j) as u32 & 1;
                j += 1;
            }
            m += 1;
        }
        t
    };

    /// Decodes whole groups of [`LANES`] symbols (lane 0 first) while
    /// [`LANES`] words can be loaded; returns how many symbols it decoded.
    /// Same arithmetic as the scalar decoder, one lane per 32-bit element in
    /// two vectors (lanes 0-7, 8-15) whose table gathers overlap; the lanes
    /// that take a word take them in lane order.
    ///
    /// # Safety
    /// The CPU must support AVX2 and POPCNT.
    #[target_feature(enable = "avx2,popcnt")]
    pub(super) unsafe fn groups(
        model: &[u32; PROB_SCALE as usize],
        x: &mut [u32; LANES],
        words: &[u16],
        pos: &mut usize,
        out: &mut [u8],
    ) -> usize {
        let mut p = *pos;
        let mut done = 0;
        // SAFETY (all loads and stores below): `x` holds 16 u32; gathers
        // index `model` with `slot < PROB_SCALE`; 16 words are read at `p`
        // only when `p + 16 <= words.len()`; 16 bytes are stored at `done`
        // only when `done + 16 <= out.len()`.
        unsafe {
            let mut xa = _mm256_loadu_si256(x.as_ptr() as *const __m256i);
            let mut xb = _mm256_loadu_si256(x.as_ptr().add(8) as *const __m256i);
            let slot_mask = _mm256_set1_epi32((PROB_SCALE - 1) as i32);
            let freq_mask = _mm256_set1_epi32((2 * PROB_SCALE - 1) as i32);
            let sym_mask = _mm256_set1_epi32(63);
            let l = _mm256_set1_epi32(RANS_L as i32);
            // Byte 0 of each 32-bit element to the low 4 bytes of each 128-bit half.
            let pick = _mm256_setr_epi8(
                0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 0, 4, 8, 12, -1, -1,
                -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
            );
            let table = model.as_ptr() as *const i32;
            while done + LANES <= out.len() && p + LANES <= words.len() {
                let ea = _mm256_i32gather_epi32::<4>(table, _mm256_and_si256(xa, slot_mask));
                let eb = _mm256_i32gather_epi32::<4>(table, _mm256_and_si256(xb, slot_mask));
                let va = _mm256_add_epi32(
                    _mm256_mullo_epi32(
                        _mm256_and_si256(_mm256_srli_epi32::<{ FREQ_SHIFT as i32 }>(ea), freq_mask),
                        _mm256_srli_epi32::<9>(xa),
                    ),
                    _mm256_and_si256(_mm256_srli_epi32::<{ BIAS_SHIFT as i32 }>(ea), slot_mask),
                );
                let vb = _mm256_add_epi32(
                    _mm256_mullo_epi32(
                        _mm256_and_si256(_mm256_srli_epi32::<{ FREQ_SHIFT as i32 }>(eb), freq_mask),
                        _mm256_srli_epi32::<9>(xb),
                    ),
                    _mm256_and_si256(_mm256_srli_epi32::<{ BIAS_SHIFT as i32 }>(eb), slot_mask),
                );
                // v < 2^31, so the signed compare is v < L.
                let na = _mm256_cmpgt_epi32(l, va);
                let nb = _mm256_cmpgt_epi32(l, vb);
                let ma = _mm256_movemask_ps(_mm256_castsi256_ps(na)) as usize;
                let mb = _mm256_movemask_ps(_mm256_castsi256_ps(nb)) as usize;
                let wa =
                    _mm256_cvtepu16_epi32(_mm_loadu_si128(words.as_ptr().add(p) as *const __m128i));
                let pb = p + ma.count_ones() as usize;
                let wb = _mm256_cvtepu16_epi32(_mm_loadu_si128(
                    words.as_ptr().add(pb) as *const __m128i
                ));
                p = pb + mb.count_ones() as usize;
                let wa = _mm256_permutevar8x32_epi32(
                    wa,
                    _mm256_loadu_si256(PERM[ma].as_ptr() as *const __m256i),
                );
                let wb = _mm256_permutevar8x32_epi32(
                    wb,
                    _mm256_loadu_si256(PERM[mb].as_ptr() as *const __m256i),
                );
                xa = _mm256_blendv_epi8(va, _mm256_or_si256(_mm256_slli_epi32::<16>(va), wa), na);
                xb = _mm256_blendv_epi8(vb, _mm256_or_si256(_mm256_slli_epi32::<16>(vb), wb), nb);
                let sa = _mm256_shuffle_epi8(_mm256_and_si256(ea, sym_mask), pick);
                let sb = _mm256_shuffle_epi8(_mm256_and_si256(eb, sym_mask), pick);
                let lo = _mm_unpacklo_epi32(
                    _mm256_castsi256_si128(sa),
                    _mm256_extracti128_si256::<1>(sa),
                );
                let hi = _mm_unpacklo_epi32(
                    _mm256_castsi256_si128(sb),
                    _mm256_extracti128_si256::<1>(sb),
                );
                _mm_storeu_si128(
                    out.as_mut_ptr().add(done) as *mut __m128i,
                    _mm_unpacklo_epi64(lo, hi),
                );
                done += LANES;
            }
            _mm256_storeu_si256(x.as_mut_ptr() as *mut __m256i, xa);
            _mm256_storeu_si256(x.as_mut_ptr().add(8) as *mut __m256i, xb);
        }
        *pos = p;
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rans::{normalize, DecTables, EncSym, MAX_ALPHABET};

    /// Random-ish symbols, coded and decoded in two segments of two models
    /// (as the bilevel codec does), with every segment length around the
    /// group size; the scalar and the vector paths must agree with the encoder.
    #[test]
    fn lanes_roundtrip_segments() {
        let mut seed = 0x1234_5678u32;
        let mut rnd = || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        for (n_a, n_b) in [
            (0, 1),
            (1, 0),
            (7, 9),
            (8, 8),
            (13, 0),
            (100, 37),
            (1000, 999),
            (5, 3000),
            (4095, 1),
            (4000, 4000),
            (17, 20000),
        ] {
            let a: Vec<u8> = (0..n_a).map(|_| (rnd() % 5 + rnd() % 4) as u8).collect();
            let b: Vec<u8> = (0..n_b).map(|_| (rnd() % 17) as u8).collect();
            let mut tables = DecTables::new();
            let mut enc = [EncSym::default(); 64];
            let mut payload = Vec::new();
            for (m, syms, off) in [(0usize, &a, 0usize), (1, &b, 32)] {
                let mut counts = [0u32; 17];
                for &s in syms.iter() {
                    counts[s as usize] += 1;
                }
                let mut freq = [0u32; 17];
                normalize(&counts, &mut freq);
                let mut model = Vec::new();
                crate::rans::write_model(&mut model, &freq);
                let mut pos = 0;
                tables.read(m, &model, &mut pos, 17, |_| 0).unwrap();
                let mut start = 0;
                for (s, &f) in freq.iter().enumerate() {
                    if f > 0 {
                        enc[s + off] = EncSym::new(start, f);
                        start += f;
                    }
                }
                payload.push(model);
            }
            let mut all = a.clone();
            all.extend(b.iter().map(|s| s + 32));
            let mut buf = vec![0u8; 2 * all.len() + 4 * LANES + 8];
            let len = buf.len();
            let start = encode(&all, &enc, &mut buf);
            let stream = &buf[start..len];
            assert_eq!(stream.is_empty(), all.is_empty());
            if all.is_empty() {
                continue;
            }
            let nl = lanes_for(all.len());
            let mut padded = Vec::new();
            Lanes::pad(stream, nl, &mut padded);
            let mut dec = Lanes::new(stream, nl, &padded).unwrap();
            let (mut da, mut db) = (vec![0u8; n_a], vec![0u8; n_b]);
            dec.decode(&tables.table, 0, &mut da);
            dec.decode(&tables.table, 1, &mut db);
            assert_eq!(da, a, "{n_a} {n_b}");
            assert_eq!(db, b, "{n_a} {n_b}");
            assert!(dec.finished_cleanly());
            // The scalar path alone gives the same.
            let mut dec = Lanes::new(stream, nl, &padded).unwrap();
            let model0: &[u32; PROB_SCALE as usize] =
                tables.table[..PROB_SCALE as usize].try_into().unwrap();
            let model1: &[u32; PROB_SCALE as usize] = tables.table
                [PROB_SCALE as usize..2 * PROB_SCALE as usize]
                .try_into()
                .unwrap();
            let (mut sa, mut sb) = (vec![0u8; n_a], vec![0u8; n_b]);
            dec.scalar(model0, &mut sa);
            dec.scalar(model1, &mut sb);
            assert_eq!((sa, sb), (a, b));
            assert!(dec.finished_cleanly());
            let _ = MAX_ALPHABET;
        }
    }
}
