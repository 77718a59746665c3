//! Static (per frame) rANS with 9-bit probabilities and 16-bit
//! renormalisation, two lanes interleaved, after Fabian Giesen's
//! public-domain `rans_byte.h` / `rans_word_sse41.h`.
//!
//! The encoder counts the symbols of a frame, normalises the counts to
//! frequencies summing to [`PROB_SCALE`], sends the frequencies, then codes
//! the symbols in reverse so the decoder reads them forward. 9-bit
//! probabilities cost almost nothing on these alphabets and make the
//! frequency tables smaller (in the payload and in the decoder's cache).

use crate::bits::{get_varint, put_varint};

/// Probability precision in bits.
pub(crate) const PROB_BITS: u32 = 9;
/// Sum of the frequencies of a model.
pub(crate) const PROB_SCALE: u32 = 1 << PROB_BITS;
/// Lower bound of the normalised state interval `[RANS_L, 2^31)`; the
/// state is renormalised 16 bits at a time.
pub(crate) const RANS_L: u32 = 1 << 15;
/// Largest alphabet of any model.
pub(crate) const MAX_ALPHABET: usize = 64;

/// Normalises `counts` (all of the model's symbols) to frequencies that sum to
/// [`PROB_SCALE`], every used symbol keeping at least 1. All zero: all zero.
pub(crate) fn normalize(counts: &[u32], freq: &mut [u32]) {
    let total: u64 = counts.iter().map(|&c| c as u64).sum();
    if total == 0 {
        freq.iter_mut().for_each(|f| *f = 0);
        return;
    }
    let mut sum = 0u32;
    let mut best = 0usize;
    for (s, (&c, f)) in counts.iter().zip(freq.iter_mut()).enumerate() {
        *f = if c == 0 {
            0
        } else {
            ((c as u64 * PROB_SCALE as u64) / total).max(1) as u32
        };
        sum += *f;
        if c > counts[best] {
            best = s;
        }
    }
    if sum < PROB_SCALE {
        freq[best] += PROB_SCALE - sum;
    }
    while sum > PROB_SCALE {
        // Take from the largest frequency (always > 1 here: alphabets are far below PROB_SCALE).
        let (i, _) = freq
            .iter()
            .enumerate()
            .max_by_key(|&(_, &f)| f)
            .expect("non-empty");
        let take = (sum - PROB_SCALE).min(freq[i] - 1);
        freq[i] -= take;
        sum -= take;
    }
}

/// Appends a model's frequencies: a bitmap of the used symbols (LEB128),
/// then the frequency of each used symbol but the last (LEB128); the last
/// gets what remains of [`PROB_SCALE`].
pub(crate) fn write_model(out: &mut Vec<u8>, freq: &[u32]) {
    let mut bitmap = 0u64;
    for (s, &f) in freq.iter().enumerate() {
        if f > 0 {
            bitmap |= 1 << s;
        }
    }
    put_varint(out, bitmap);
    let used = bitmap.count_ones();
    let mut seen = 0;
    for &f in freq {
        if f > 0 {
            seen += 1;
            if seen < used {
                put_varint(out, f as u64);
            }
        }
    }
}

/// One symbol's encoder parameters: division-free through a reciprocal
/// (as `RansEncSymbolInit` in `rans_byte.h`; exact for states below 2^31).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct EncSym {
    x_max: u32,
    rcp_freq: u32,
    rcp_shift: u32,
    bias: u32,
    cmpl_freq: u32,
}

impl EncSym {
    pub(crate) fn new(start: u32, freq: u32) -> Self {
        debug_assert!((1..=PROB_SCALE).contains(&freq));
        let x_max = ((RANS_L >> PROB_BITS) << 16) * freq;
        let cmpl_freq = PROB_SCALE - freq;
        if freq < 2 {
            EncSym {
                x_max,
                rcp_freq: !0,
                rcp_shift: 0,
                bias: start + PROB_SCALE - 1,
                cmpl_freq,
            }
        } else {
            let mut shift = 0;
            while freq > (1u32 << shift) {
                shift += 1;
            }
            EncSym {
                x_max,
                rcp_freq: (1u64 << (shift + 31)).div_ceil(freq as u64) as u32,
                rcp_shift: shift - 1,
                bias: start,
                cmpl_freq,
            }
        }
    }
}

impl EncSym {
    /// The fields a vector coder looks up: reciprocal, its shift, bias and
    /// frequency (the rest follows from the frequency).
    #[cfg(target_arch = "x86_64")]
    pub(crate) fn parts(&self) -> (u32, u32, u32, u32) {
        (
            self.rcp_freq,
            self.rcp_shift,
            self.bias,
            self.x_max / ((RANS_L >> PROB_BITS) << 16),
        )
    }
}

/// Codes `recs` (symbol `i` with lane `i % 2`, last to first) with two
/// interleaved rANS lanes, writing the stream backwards into `buf` (at
/// least `2 * recs.len() + 8` bytes) from its end; returns where the
/// stream starts. `sym(r)` is the coder entry of record `r`.
#[inline]
pub(crate) fn encode_lanes<'s>(
    recs: &[u32],
    buf: &mut [u8],
    sym: impl Fn(u32) -> &'s EncSym,
) -> usize {
    let mut p = buf.len();
    let (mut x0, mut x1) = (RANS_L, RANS_L);
    let mut i = recs.len();
    if i % 2 == 1 {
        i -= 1;
        x0 = put(x0, buf, &mut p, sym(recs[i]));
    }
    while i >= 2 {
        x1 = put(x1, buf, &mut p, sym(recs[i - 1]));
        x0 = put(x0, buf, &mut p, sym(recs[i - 2]));
        i -= 2;
    }
    // The final states, lane 0's first, little-endian.
    p -= 8;
    buf[p..p + 4].copy_from_slice(&x0.to_le_bytes());
    buf[p + 4..p + 8].copy_from_slice(&x1.to_le_bytes());
    p
}

/// Encodes one symbol on state `x`, writing a renormalisation word below `*p`.
#[inline(always)]
pub(crate) fn put(x: u32, buf: &mut [u8], p: &mut usize, s: &EncSym) -> u32 {
    // Branch-free renormalisation: the word is always written below the
    // start; when not needed it is overwritten later (or by the final states).
    let need = (x >= s.x_max) as usize;
    let q = *p - 2;
    buf[q..q + 2].copy_from_slice(&(x as u16).to_le_bytes());
    *p -= 2 * need;
    let x = x >> (16 * need as u32);
    let q = (((x as u64) * s.rcp_freq as u64) >> 32) as u32 >> s.rcp_shift;
    x + s.bias + q * s.cmpl_freq
}

/// Number of model slots of a [`DecTables`] (model indices are masked with `MODEL_SLOTS - 1`).
pub(crate) const MODEL_SLOTS: usize = 16;
/// Entries of all decoder models together.
pub(crate) const TABLE_LEN: usize = MODEL_SLOTS << PROB_BITS;
/// Decoder table entry fields: symbol (6 bits), `slot - start`
/// (`PROB_BITS` bits), frequency (`PROB_BITS + 1` bits), next model (4 bits).
pub(crate) const BIAS_SHIFT: u32 = 6;
pub(crate) const FREQ_SHIFT: u32 = BIAS_SHIFT + PROB_BITS;
pub(crate) const NEXT_SHIFT: u32 = FREQ_SHIFT + PROB_BITS + 1;

/// The decoder's models, flat: model `m` is `table[m << PROB_BITS..][..PROB_SCALE]`,
/// one entry per slot (fields above). Each entry also carries the model of
/// the symbol that follows it in its context chain (chosen by the caller),
/// so the decoder's next table address does not wait for more arithmetic.
/// An empty model's entries are 0, which the decoder flags as an error.
#[derive(Debug, Clone)]
pub(crate) struct DecTables {
    pub(crate) table: Box<[u32; TABLE_LEN]>,
}

impl DecTables {
    pub(crate) fn new() -> Self {
        DecTables {
            table: Box::new([0u32; TABLE_LEN]),
        }
    }

    /// Reads model `m`, written by [`write_model`] for an alphabet of
    /// `alphabet` symbols; `next(s)` is the model after symbol `s` (< 16).
    /// `Err` carries a reason.
    pub(crate) fn read(
        &mut self,
        m: usize,
        data: &[u8],
        pos: &mut usize,
        alphabet: usize,
        next: impl Fn(usize) -> usize,
    ) -> Result<(), &'static str> {
        let table = &mut self.table[(m % MODEL_SLOTS) << PROB_BITS..][..PROB_SCALE as usize];
        let bitmap = get_varint(data, pos).ok_or("truncated model bitmap")?;
        if alphabet < 64 && bitmap >> alphabet != 0 {
            return Err("model uses a symbol outside its alphabet");
        }
        let used = bitmap.count_ones();
        if used == 0 {
            table.fill(0);
            return Ok(());
        }
        let mut start = 0u32;
        let mut seen = 0;
        for s in 0..alphabet {
            if bitmap >> s & 1 == 0 {
                continue;
            }
            seen += 1;
            let f = if seen < used {
                let f = get_varint(data, pos).ok_or("truncated model frequency")?;
                if f == 0 || f >= (PROB_SCALE - start) as u64 {
                    return Err("model frequency out of range");
                }
                f as u32
            } else {
                PROB_SCALE - start
            };
            let hi = ((next(s) % MODEL_SLOTS) as u32) << NEXT_SHIFT | f << FREQ_SHIFT | s as u32;
            for (k, e) in table[start as usize..(start + f) as usize]
                .iter_mut()
                .enumerate()
            {
                *e = hi | (k as u32) << BIAS_SHIFT;
            }
            start += f;
        }
        Ok(())
    }
}

/// Two interleaved rANS decoders (lanes) sharing one stream: 8 bytes of
/// initial states (lane 0, lane 1), then 16-bit words. Past the end the
/// decoder reads zeros, and the final check fails. Hot loops copy the
/// fields into locals and call [`step`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct RansDec<'a> {
    /// State of the lane that decodes the next symbol, then the other one.
    pub(crate) x0: u32,
    pub(crate) x1: u32,
    /// The stream's words.
    pub(crate) words: &'a [u16],
    /// Index of the next word, with [`BAD`] set once a symbol came from an
    /// empty model (so the final check fails without another variable).
    pub(crate) pos: usize,
    /// Number of whole words in the stream.
    n: usize,
    /// Whether the stream had a whole number of words.
    even: bool,
}

/// Set in a decoder's word index when a symbol comes from an empty model
/// (never reached by a real index: the payload would need 2^(bits - 2) words).
const BAD: usize = 1 << (usize::BITS - 2);

/// Bytes of initial state in front of the words.
const STATE_BYTES: usize = 8;

/// Replaces `words` with the little-endian 16-bit words of a rANS stream
/// after its `state_bytes` bytes of lane states (an odd last byte is left
/// out; the decoders check the stream's parity themselves).
pub(crate) fn words_after(stream: &[u8], state_bytes: usize, words: &mut Vec<u16>) {
    words.clear();
    if let Some(rest) = stream.get(state_bytes..) {
        words.extend(
            rest.chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]])),
        );
    }
}

impl<'a> RansDec<'a> {
    /// Splits `stream` after its states into little-endian words in `padded`.
    pub(crate) fn pad(stream: &[u8], padded: &mut Vec<u16>) {
        words_after(stream, STATE_BYTES, padded);
    }

    /// A decoder over `stream`, whose words [`RansDec::pad`] put in `padded`.
    pub(crate) fn new(stream: &[u8], padded: &'a [u16]) -> Result<Self, &'static str> {
        let head: [u8; STATE_BYTES] = stream
            .get(..STATE_BYTES)
            .and_then(|b| b.try_into().ok())
            .ok_or("rANS stream shorter than its 8-byte state")?;
        let x0 = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        let x1 = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        if !(RANS_L..1 << 31).contains(&x0) || !(RANS_L..1 << 31).contains(&x1) {
            return Err("rANS initial state out of range");
        }
        let n = (stream.len() - STATE_BYTES) / 2;
        Ok(RansDec {
            x0,
            x1,
            words: padded,
            pos: 0,
            n,
            even: stream.len() % 2 == 0,
        })
    }

    /// Decodes one symbol of model `m` of `t`; returns its table entry.
    #[inline(always)]
    pub(crate) fn get(&mut self, t: &[u32; TABLE_LEN], m: usize) -> u32 {
        let (x0, x1, pos, e) = step(t, m, self.x0, self.x1, self.words, self.pos);
        (self.x0, self.x1, self.pos) = (x0, x1, pos);
        e
    }

    /// True when the stream was consumed exactly and both lanes ended in the encoder's initial state.
    pub(crate) fn finished_cleanly(&self) -> bool {
        self.even && self.pos == self.n && self.x0 == RANS_L && self.x1 == RANS_L
    }
}

/// One decoding step on explicit state (so hot loops keep it in
/// registers): decodes with lane state `x0`, and returns the states in the
/// order of the next step (`x1`, then the new one), the new word index and
/// the table entry (symbol in the low 6 bits, next model from [`NEXT_SHIFT`]).
#[inline(always)]
pub(crate) fn step(
    t: &[u32; TABLE_LEN],
    m: usize,
    x0: u32,
    x1: u32,
    words: &[u16],
    pos: usize,
) -> (u32, u32, usize, u32) {
    let e = t[((m << PROB_BITS) | (x0 & (PROB_SCALE - 1)) as usize) & (TABLE_LEN - 1)];
    let f = (e >> FREQ_SHIFT) & ((2 << PROB_BITS) - 1);
    let x = f * (x0 >> PROB_BITS) + ((e >> BIAS_SHIFT) & (PROB_SCALE - 1));
    // x >= 1 here, so one 16-bit word always restores x >= RANS_L.
    // Branch-free: the refill is taken about every fifth symbol, unpredictably.
    let need = (x < RANS_L) as u32;
    let w = words.get(pos).copied().unwrap_or(0) as u32;
    let x = (x << (need * 16)) | (w & need.wrapping_neg());
    let pos = (pos + need as usize) | ((e == 0) as usize * BAD);
    (x1, x, pos, e)
}
