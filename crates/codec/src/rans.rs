//! Static (per frame) rANS with 11-bit probabilities and byte-wise
//! renormalisation, after Fabian Giesen's public-domain `rans_byte.h`.
//!
//! The encoder counts the symbols of a frame, normalises the counts to
//! frequencies summing to [`PROB_SCALE`], sends the frequencies, then codes
//! the symbols in reverse so the decoder reads them forward.

use crate::bits::{get_varint, put_varint};

/// Probability precision in bits.
pub(crate) const PROB_BITS: u32 = 11;
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

/// rANS encoder writing bytes in reverse into `buf` (reverse it when done).
#[derive(Debug)]
pub(crate) struct RansEnc {
    x: u32,
}

impl RansEnc {
    pub(crate) fn new() -> Self {
        RansEnc { x: RANS_L }
    }

    #[inline]
    pub(crate) fn put(&mut self, buf: &mut Vec<u8>, s: &EncSym) {
        let mut x = self.x;
        if x >= s.x_max {
            // One 16-bit word, little-endian once the buffer is reversed.
            buf.push((x >> 8) as u8);
            buf.push(x as u8);
            x >>= 16;
        }
        let q = (((x as u64) * s.rcp_freq as u64) >> 32) as u32 >> s.rcp_shift;
        self.x = x + s.bias + q * s.cmpl_freq;
    }

    /// Writes the final state; the decoder reads it first, little-endian.
    pub(crate) fn flush(self, buf: &mut Vec<u8>) {
        buf.extend_from_slice(&self.x.to_be_bytes());
    }
}

/// The decoder's models, flat: model `m` is `table[m * PROB_SCALE..][..PROB_SCALE]`,
/// one entry per slot: `freq << 17 | (slot - start) << 6 | symbol`. An empty
/// model's entries are 0, which the decoder flags as an error.
#[derive(Debug, Clone)]
pub(crate) struct DecTables {
    pub(crate) table: Vec<u32>,
}

impl DecTables {
    pub(crate) fn new(models: usize) -> Self {
        DecTables {
            table: vec![0u32; models * PROB_SCALE as usize],
        }
    }

    /// Reads model `m`, written by [`write_model`] for an alphabet of
    /// `alphabet` symbols. `Err` carries a reason.
    pub(crate) fn read(
        &mut self,
        m: usize,
        data: &[u8],
        pos: &mut usize,
        alphabet: usize,
    ) -> Result<(), &'static str> {
        let table = &mut self.table[m * PROB_SCALE as usize..][..PROB_SCALE as usize];
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
            for (k, e) in table[start as usize..(start + f) as usize]
                .iter_mut()
                .enumerate()
            {
                *e = f << 17 | (k as u32) << 6 | s as u32;
            }
            start += f;
        }
        Ok(())
    }
}

/// rANS decoder over a byte slice. Past the end it reads zeros and the
/// final check fails; the state always stays in `[RANS_L, 2^31)`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RansDec<'a> {
    x: u32,
    buf: &'a [u8],
    pos: usize,
    /// Set when a symbol came from an empty model.
    bad: bool,
}

impl<'a> RansDec<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Result<Self, &'static str> {
        let head: [u8; 4] = buf
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .ok_or("rANS stream shorter than its 4-byte state")?;
        let x = u32::from_le_bytes(head);
        if !(RANS_L..1 << 31).contains(&x) {
            return Err("rANS initial state out of range");
        }
        Ok(RansDec {
            x,
            buf,
            pos: 4,
            bad: false,
        })
    }

    /// Decodes one symbol of model `m` of `t`.
    #[inline(always)]
    pub(crate) fn get(&mut self, t: &[u32], m: usize) -> usize {
        let e = t[m * PROB_SCALE as usize + (self.x & (PROB_SCALE - 1)) as usize];
        self.bad |= e == 0;
        self.x = (e >> 17) * (self.x >> PROB_BITS) + ((e >> 6) & 0x7FF);
        // x >= 16 here, so one 16-bit word always restores x >= RANS_L.
        let w = match self.buf.get(self.pos..self.pos + 2) {
            Some(b) => u16::from_le_bytes([b[0], b[1]]) as u32,
            None => self.buf.get(self.pos).copied().unwrap_or(0) as u32,
        };
        let need = self.x < RANS_L;
        self.x = if need { (self.x << 16) | w } else { self.x };
        self.pos += 2 * need as usize;
        (e & 63) as usize
    }

    /// True when the stream was consumed exactly and ended in the encoder's initial state.
    pub(crate) fn finished_cleanly(&self) -> bool {
        !self.bad && self.pos == self.buf.len() && self.x == RANS_L
    }
}
