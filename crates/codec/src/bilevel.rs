//! Codec 1, "bilevel": 2-D run coding relative to a reference row in the
//! spirit of CCITT G4 (READ), with a per-row choice of reference (the row
//! above or the co-located row of the previous frame), and static per-frame
//! rANS. The format is specified in `docs/CODEC.md`.
//!
//! Every row is turned into its list of *transitions* (the columns where a
//! pixel differs from the one on its left, pixel -1 being 0) with XOR, shift
//! and leading-zero counts on 64-bit words. A row is coded as an edit of
//! its reference's list: *vertical* symbols move the next reference
//! transition by -7..=7 pixels, *pass* drops two, *horizontal* inserts two
//! (with run lengths). The edit symbols of a frame are context-free and
//! sit in their own four-lane rANS stream, so the decoder decodes them all
//! in one branch-free pass and then applies them row by row with no
//! search and no entropy decoding on the common path.

use crate::bits::{get_varint, put_varint, BitReader, BitWriter};
use crate::lanes::{self, Lanes};
use crate::rans::{
    encode_lanes, normalize, step, write_model, DecTables, EncSym, RansDec, MAX_ALPHABET,
    MODEL_SLOTS, TABLE_LEN,
};

/// Largest |a1 - b1| coded as a vertical mode.
const VMAX: i32 = 7;
/// Mode symbols: `0..=2*VMAX` vertical with offset `sym - VMAX`, then pass and horizontal.
const SYM_PASS: u8 = 2 * VMAX as u8 + 1;
const SYM_HORIZ: u8 = SYM_PASS + 1;
const MODE_ALPHABET: usize = SYM_HORIZ as usize + 1;
/// Ends the decoder's arrays of mode symbols (never coded).
const SYM_END: u8 = 0xFF;
/// Run-length classes: 0..=15 literal, then two classes per octave.
const RUN_ALPHABET: usize = 50;
/// Row modes.
const ROW_SPATIAL: u32 = 0;
const ROW_TEMPORAL: u32 = 1;
const ROW_COPY_PREV: u32 = 2;
const ROW_COPY_ABOVE: u32 = 3;
const ROW_ALPHABET: usize = 4;

/// Model indices: 4 row-mode contexts, white runs, black runs (these three
/// kinds in the side stream), then the mode symbols of rows coded against
/// the row above and of rows coded against the previous frame (the mode stream).
const M_ROW: usize = 0;
const M_RUN: usize = 4; // + colour of the run (0 white, 1 black)
const M_MODE_S: usize = 6;
const M_MODE_T: usize = 7;
pub(crate) const N_MODELS: usize = 8;

fn alphabet(model: usize) -> usize {
    match model {
        M_ROW..M_RUN => ROW_ALPHABET,
        M_RUN..M_MODE_S => RUN_ALPHABET,
        _ => MODE_ALPHABET,
    }
}

/// Payload kinds (first byte).
const KIND_KEY: u8 = 0;
const KIND_DELTA: u8 = 1;

/// In the encoder's combined mode array, temporal-row symbols are stored
/// with this offset (one coder table for both models).
const T_OFFSET: u8 = 32;

/// A side-stream record: model (4 bits), symbol (6 bits), extra-bit value (22 bits).
#[inline]
fn rec(model: usize, sym: u32, extra: u32) -> u32 {
    ((model as u32) << 28) | (sym << 22) | extra
}

/// Run length -> (class, extra bit count, extra bits).
#[inline]
fn run_class(v: u32) -> (u32, u32, u32) {
    if v < 16 {
        (v, 0, 0)
    } else {
        let nb = 32 - v.leading_zeros(); // >= 5
        let sub = (v >> (nb - 2)) & 1;
        (16 + (nb - 5) * 2 + sub, nb - 2, v & ((1 << (nb - 2)) - 1))
    }
}

/// Extra bits of a run class.
#[inline]
fn run_extra_bits(class: u32) -> u32 {
    if class < 16 {
        0
    } else {
        (class - 16) / 2 + 3
    }
}

/// Run length from class and extra bits.
#[inline]
fn run_value(class: u32, extra: u32) -> u32 {
    if class < 16 {
        class
    } else {
        let k = class - 16;
        let nb = k / 2 + 5;
        (1 << (nb - 1)) | ((k & 1) << (nb - 2)) | extra
    }
}

/// Rough cost in 1/16 bit of a mode symbol, used only to choose a row's reference.
#[inline]
const fn est_mode_cost(sym: u8) -> u32 {
    match sym {
        s if s == VMAX as u8 => 12,
        s if s == VMAX as u8 - 1 || s == VMAX as u8 + 1 => 48,
        SYM_PASS => 64,
        SYM_HORIZ => 48,
        s => 80 + 16 * (s as i32 - VMAX).unsigned_abs(),
    }
}

#[inline]
fn est_run_cost(v: u32) -> u32 {
    let (_, nb, _) = run_class(v);
    64 + 16 * nb
}

/// Sentinels (copies of the width) after each row's transition list (the
/// coders read a reference through [`at`], which also yields the width
/// past the end; the sentinels spare that for the coded row's own list).
const SENTINELS: usize = 3;

/// Transition lists of all rows of a frame. Each row's list is followed by
/// [`SENTINELS`] sentinels equal to the width.
#[derive(Debug, Default, Clone)]
pub(crate) struct Transitions {
    pub(crate) tr: Vec<u32>,
    /// `off[y]..off[y + 1]` is row `y` (sentinels included).
    pub(crate) off: Vec<usize>,
    pub(crate) width: u32,
    pub(crate) height: u32,
}

impl Transitions {
    #[inline]
    pub(crate) fn row(&self, y: usize) -> &[u32] {
        &self.tr[self.off[y]..self.off[y + 1]]
    }

    /// Extracts the transitions of every row of a packed frame.
    pub(crate) fn extract(&mut self, packed: &[u8], width: u32, height: u32) {
        #[cfg(target_arch = "x86_64")]
        if x86::available() {
            // SAFETY: the CPU has the features `x86::extract` is compiled for (checked just now).
            #[allow(unsafe_code)]
            unsafe {
                x86::extract(self, packed, width, height)
            };
            return;
        }
        self.extract_any::<0>(packed, width, height);
    }

    /// [`Transitions::extract`] for any CPU (inlined into each variant),
    /// with [`put_bits`] for `K`.
    #[inline(always)]
    fn extract_any<const K: usize>(&mut self, packed: &[u8], width: u32, height: u32) {
        let stride = (width as usize).div_ceil(8);
        self.off.clear();
        self.off.push(0);
        self.width = width;
        self.height = height;
        // Rows are written in place into `tr`, grown as needed (never shrunk
        // between frames, so no allocation once warm).
        let mut start = 0usize;
        for row in packed.chunks_exact(stride).take(height as usize) {
            let need = start + stride * 8 + 64 + SENTINELS;
            if self.tr.len() < need {
                self.tr.resize(need.max(self.tr.len() * 2), 0);
            }
            let out = &mut self.tr[start..];
            let n = row_transitions_into::<K>(row, width, out);
            out[n..n + SENTINELS].fill(width);
            start += n + SENTINELS;
            self.off.push(start);
        }
        // `tr` keeps its length (zeroing it again next frame would cost more than the frame).
    }

    /// Forgets the rows (`tr` keeps its length, see [`Transitions::extract`]).
    pub(crate) fn clear(&mut self) {
        self.off.clear();
        self.off.push(0);
    }
}

#[inline]
fn push_sentinels(v: &mut Vec<u32>, width: u32) {
    v.extend_from_slice(&[width; SENTINELS]);
}

/// The temporal reference of row `y` under global motion `(dx, dy)`: row
/// `y - dy` of the previous frame (an empty row outside the frame) moved
/// `dx` pixels right, pixels entering from outside being 0. Written with
/// sentinels into `out`.
#[inline]
fn motion_ref(prev: &Transitions, y: usize, dx: i32, dy: i32, out: &mut Vec<u32>) {
    out.clear();
    if let Some(sy) = source_row(y, dy, prev.height) {
        let r = prev.row(sy);
        shift_row(&r[..r.len() - SENTINELS], prev.width, dx, out);
    }
    push_sentinels(out, prev.width);
}

/// Row `y - dy` of a frame `height` rows high, if inside it.
#[inline(always)]
fn source_row(y: usize, dy: i32, height: u32) -> Option<usize> {
    let sy = y as i64 - dy as i64;
    (0..height as i64).contains(&sy).then_some(sy as usize)
}

/// Appends the transitions `r` (no sentinels) moved `dx` pixels right and
/// cut to `0..width`, pixels entering from outside being 0.
#[inline(always)]
fn shift_row(r: &[u32], width: u32, dx: i32, out: &mut Vec<u32>) {
    let w = width as i32;
    // Transitions that land at or left of 0 only set the colour of pixel 0.
    let mut k = 0;
    while k < r.len() && r[k] as i32 + dx <= 0 {
        k += 1;
    }
    if k % 2 == 1 {
        out.push(0);
    }
    for &t in &r[k..] {
        let t = t as i32 + dx;
        if t >= w {
            break;
        }
        out.push(t as u32);
    }
}

/// A decoder's reference frame: its transition lists, or (when those
/// would take more memory than the decoder allows, or the frame came from
/// another codec) its packed rows, whose transitions are found row by row
/// as temporal rows need them.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Reference<'a> {
    /// Every row's transitions.
    Lists(&'a Transitions),
    /// The packed frame (`ceil(width / 8) * height` bytes).
    Packed {
        packed: &'a [u8],
        width: u32,
        height: u32,
    },
}

impl Reference<'_> {
    fn dimensions(&self) -> (u32, u32) {
        match *self {
            Reference::Lists(t) => (t.width, t.height),
            Reference::Packed { width, height, .. } => (width, height),
        }
    }

    /// [`motion_ref`] of this reference; `scratch` holds a row's
    /// transitions for packed references.
    #[inline(always)]
    fn motion_ref(&self, y: usize, dx: i32, dy: i32, out: &mut Vec<u32>, scratch: &mut Vec<u32>) {
        match *self {
            Reference::Lists(t) => motion_ref(t, y, dx, dy, out),
            Reference::Packed {
                packed,
                width,
                height,
            } => packed_motion_ref(packed, width, height, y, dx, dy, out, scratch),
        }
    }
}

/// [`motion_ref`] of a packed reference (kept out of the row loop: the
/// lists are the common case).
#[inline(never)]
#[allow(clippy::too_many_arguments)]
fn packed_motion_ref(
    packed: &[u8],
    width: u32,
    height: u32,
    y: usize,
    dx: i32,
    dy: i32,
    out: &mut Vec<u32>,
    scratch: &mut Vec<u32>,
) {
    out.clear();
    let stride = (width as usize).div_ceil(8);
    let row = source_row(y, dy, height).and_then(|sy| packed.get(sy * stride..(sy + 1) * stride));
    if let Some(row) = row {
        shift_row(row_transitions_in(row, width, scratch), width, dx, out);
    }
    push_sentinels(out, width);
}

/// Appends the transitions of one packed row (positions `< width`).
#[cfg(test)]
pub(crate) fn row_transitions(row: &[u8], width: u32, out: &mut Vec<u32>) {
    out.extend_from_slice(row_transitions_in(row, width, &mut Vec::new()));
}

/// The transitions of one packed row (positions `< width`), found in
/// `scratch` (grown to what [`row_transitions_into`] needs, then reused).
fn row_transitions_in<'s>(row: &[u8], width: u32, scratch: &'s mut Vec<u32>) -> &'s [u32] {
    let need = row.len() * 8 + 64;
    if scratch.len() < need {
        scratch.resize(need, 0);
    }
    let n = row_transitions_into::<0>(row, width, scratch);
    &scratch[..n]
}

/// Writes the transitions of one packed row (positions `< width`) to the
/// start of `out` (at least `8 * row.len() + 64` entries); returns how many.
/// `K` as for [`put_bits`].
#[inline(always)]
fn row_transitions_into<const K: usize>(row: &[u8], width: u32, out: &mut [u32]) -> usize {
    let mut n = 0usize;
    let mut carry = 0u64;
    let mut base = 0u32;
    let mut chunks = row.chunks_exact(8);
    for ch in &mut chunks {
        let mut b = [0u8; 8];
        b.copy_from_slice(ch);
        let w = u64::from_be_bytes(b);
        let x = w ^ ((w >> 1) | (carry << 63));
        carry = w & 1;
        n = put_bits::<K>(x, base, out, n);
        base += 64;
    }
    let rem = chunks.remainder();
    if !rem.is_empty() {
        let mut b = [0u8; 8];
        b[..rem.len()].copy_from_slice(rem);
        let w = u64::from_be_bytes(b);
        n = put_bits::<K>(w ^ ((w >> 1) | (carry << 63)), base, out, n);
    }
    // Padding bits (0 by contract) can only add transitions at or past the width.
    while n > 0 && out[n - 1] >= width {
        n -= 1;
    }
    n
}

/// Writes `base + i` for every set bit `i` (from the MSB) of `x` at
/// `out[n..]` (`K` more entries past the end may be overwritten); returns
/// the new `n`.
///
/// `K == 0`: one entry per loop round. Otherwise, for CPUs with single
/// instructions for leading zeros and population counts: a word with
/// transitions gets `K` entries written without a branch (those past its
/// count are overwritten later), the loop only for more than `K`. The
/// branch per entry of the loop is mispredicted at every word's end;
/// writing always (`K` entries even for the many words without any
/// transition) measured slower than the one branch on zero words.
#[inline(always)]
fn put_bits<const K: usize>(mut x: u64, base: u32, out: &mut [u32], n: usize) -> usize {
    if K == 0 {
        let mut n = n;
        while x != 0 {
            let lz = x.leading_zeros();
            out[n] = base + lz;
            n += 1;
            x &= !((1u64 << 63) >> lz);
        }
        return n;
    }
    if x == 0 {
        return n;
    }
    let count = x.count_ones() as usize;
    for e in &mut out[n..n + K] {
        let lz = x.leading_zeros();
        *e = base + lz;
        // For x == 0 (lz == 64) this clears bit 63 of 0.
        x &= !((1u64 << 63).wrapping_shr(lz));
    }
    if count > K {
        put_bits::<0>(x, base, out, n + K);
    }
    n + count
}

/// Renders a transition list (sentinels allowed at the end) into a packed row.
#[cfg(test)]
pub(crate) fn render_row(tr: &[u32], width: u32, row: &mut [u8]) {
    let n = tr.iter().take_while(|&&t| t < width).count();
    render_toggles(&tr[..n], width, &mut vec![0; row.len().div_ceil(8)], row);
}

/// Renders a transition list (entries `< width`, increasing) into a packed
/// row without data-dependent branches: each transition flips the pixels
/// from it to the end of its 64-pixel word, accumulated in a register and
/// stored to `words` (scratch) whenever the word changes, then a sweep
/// carries the colour from word to word; the padding bits are cleared.
///
/// `words` holds at least `ceil(row.len() / 8)` zeros and is left zeroed.
fn render_toggles(tr: &[u32], width: u32, words: &mut [u64], row: &mut [u8]) {
    let mut cur = 0u64;
    let mut cw = 0usize;
    for &t in tr {
        let wi = (t >> 6) as usize;
        // Store the word being built (complete once `wi` moves on).
        if let Some(w) = words.get_mut(cw) {
            *w = cur;
        }
        let same = ((wi == cw) as u64).wrapping_neg();
        cur = (cur & same) ^ (!0u64 >> (t & 63));
        cw = wi;
    }
    if let Some(w) = words.get_mut(cw) {
        *w = cur;
    }
    // The colour entering a word is the parity of the toggles before it,
    // and a word's own parity is its last bit: the carried chain is one XOR.
    let mut parity = 0u64;
    let mut chunks = row.chunks_exact_mut(8);
    let mut it = words.iter_mut();
    for (d, w) in (&mut chunks).zip(&mut it) {
        let x = *w;
        *w = 0;
        let v = x ^ parity.wrapping_neg();
        parity ^= x & 1;
        d.copy_from_slice(&v.to_be_bytes());
    }
    let rem = chunks.into_remainder();
    if !rem.is_empty() {
        if let Some(w) = it.next() {
            let v = *w ^ parity.wrapping_neg();
            *w = 0;
            let n = rem.len();
            rem.copy_from_slice(&v.to_be_bytes()[..n]);
        }
    }
    let pad = (row.len() * 8).saturating_sub(width as usize);
    if let Some(last) = row.last_mut() {
        *last &= (0xFFu16 << pad.min(8)) as u8;
    }
}

/// Entry `k` of a reference list: the list, then the width forever.
#[inline(always)]
fn at(r: &[u32], k: usize, width: u32) -> i32 {
    r.get(k).copied().unwrap_or(width) as i32
}

/// An output buffer written by index: `buf[..len]` is the content, and
/// `buf` keeps its largest length across frames (no per-element length
/// update, no zeroing once warm).
#[derive(Debug, Default)]
struct Out<T> {
    buf: Vec<T>,
    len: usize,
}

impl<T: Copy + Default> Out<T> {
    fn clear(&mut self) {
        self.len = 0;
    }

    /// The free space past the content, at least `extra` entries.
    #[inline]
    fn room(&mut self, extra: usize) -> &mut [T] {
        let need = self.len + extra;
        if self.buf.len() < need {
            self.buf.resize(need.max(2 * self.buf.len()), T::default());
        }
        &mut self.buf[self.len..]
    }

    #[inline]
    fn as_slice(&self) -> &[T] {
        &self.buf[..self.len]
    }
}

/// [`est_mode_cost`] of every mode symbol.
const MODE_COST: [u32; MODE_ALPHABET] = {
    let mut t = [0; MODE_ALPHABET];
    let mut s = 0;
    while s < MODE_ALPHABET {
        t[s] = est_mode_cost(s as u8);
        s += 1;
    }
    t
};

/// Codes the transitions `c` of a row (with sentinels) against the
/// reference `r` (with sentinels): writes mode symbols to the start of
/// `modes` (room for `r.len() + c.len() + 2`) and run records to the start
/// of `side` (room for `c.len()`); returns how many of each and the
/// estimated cost when `COST` (else 0).
///
/// The rules (docs/CODEC.md 1.6, from the encoder's side), with `a1` the
/// next transition to code, `b1 = R[k]`, `b2 = R[k + 1]`: pass when
/// `b2 < a1`; vertical when `|a1 - b1| <= 7`; horizontal otherwise. The
/// reference index follows [`after_vertical`] and [`resync`].
///
/// The lists are indexed directly (no [`at`]): with `R` of `m` transitions
/// and its sentinels at `m..m + 3`, `k <= m + 1` at the top of the loop.
/// A pass needs `R[k + 1] < a1 <= width`, so moves to `k + 2 <= m`; a
/// vertical mode with `R[k]` a sentinel and `k > m` always steps back
/// (`R[k - 1]` is a sentinel too, past `a1`), else moves to the first entry
/// past `a1 < width` on its side, at most `m + 1`; after a horizontal mode
/// the resync stops at `k` or at the first entry past `a0 < width` of its
/// parity, at most `m + 1`. And `c[n]`, `c[n + 1]` stay within the list
/// and its sentinels as `n` only passes transitions below the width.
#[inline(always)]
fn code_row<const COST: bool>(
    r: &[u32],
    c: &[u32],
    width: u32,
    modes: &mut [u8],
    side: &mut [u32],
) -> (usize, usize, u32) {
    let w = width as i32;
    let mut a0: i32 = -1;
    let mut k = 0usize;
    let mut n = 0usize;
    let mut cost = 0u32;
    let (mut nm, mut ns) = (0usize, 0usize);
    let mut a1 = c[0] as i32;
    loop {
        let b2 = r[k + 1] as i32;
        if b2 < a1 {
            modes[nm] = SYM_PASS;
            nm += 1;
            if COST {
                cost += MODE_COST[SYM_PASS as usize];
            }
            a0 = a0.max(b2);
            k += 2;
            continue;
        }
        let d = a1 - r[k] as i32;
        if (d + VMAX) as u32 <= 2 * VMAX as u32 {
            let s = (d + VMAX) as u8;
            modes[nm] = s;
            nm += 1;
            if COST {
                cost += MODE_COST[s as usize];
            }
            if a1 >= w {
                return (nm, ns, cost);
            }
            a0 = a1;
            n += 1;
            // `after_vertical`, knowing `R[k + 1] = b2 >= a1`.
            if k > 0 && r[k - 1] as i32 > a1 {
                k -= 1;
            } else {
                k += 1;
                if b2 <= a1 {
                    k += 2;
                    while r[k] as i32 <= a1 {
                        k += 2;
                    }
                }
            }
            a1 = c[n] as i32;
        } else {
            modes[nm] = SYM_HORIZ;
            nm += 1;
            let a2 = c[n + 1] as i32;
            let r1 = (a1 - a0.max(0)) as u32;
            let r2 = (a2 - a1) as u32;
            let colour = n & 1;
            let (c1, _, e1) = run_class(r1);
            let (c2, _, e2) = run_class(r2);
            side[ns] = rec(M_RUN + colour, c1, e1);
            side[ns + 1] = rec(M_RUN + (colour ^ 1), c2, e2);
            ns += 2;
            if COST {
                cost += est_mode_cost(SYM_HORIZ) + est_run_cost(r1) + est_run_cost(r2);
            }
            if a2 >= w {
                return (nm, ns, cost);
            }
            a0 = a2;
            n += 2;
            k = resync(r, k, a0, n, width);
            a1 = c[n] as i32;
        }
    }
}

/// After a vertical mode placed `a1` against reference entry `k`: the next
/// reference index, G4's `b1` (the first entry past `a1` of the other
/// parity). That is `k - 1` when the coded transition went left of the
/// entry before (`R[k - 1] > a1`), else `k + 1` moved on by pairs while its
/// entry is not past `a1`.
#[inline(always)]
fn after_vertical(r: &[u32], k: usize, a1: i32, width: u32) -> usize {
    if k > 0 && at(r, k - 1, width) > a1 {
        return k - 1;
    }
    let mut k = k + 1;
    while at(r, k, width) <= a1 {
        k += 2;
    }
    k
}

/// After a horizontal mode: the first reference index `>= k` whose entry is
/// past `a0` and whose parity is that of `n` (the colour).
#[inline]
fn resync(r: &[u32], mut k: usize, a0: i32, n: usize, width: u32) -> usize {
    while at(r, k, width) <= a0 || (k ^ n) & 1 != 0 {
        k += 1;
    }
    k
}

/// Symbol counts per side model and the extra-bit stream of a frame.
#[derive(Debug)]
struct Tally {
    counts: [[u32; MAX_ALPHABET]; MODEL_SLOTS],
    bits: BitWriter,
}

impl Default for Tally {
    fn default() -> Self {
        Tally {
            counts: [[0; MAX_ALPHABET]; MODEL_SLOTS],
            bits: BitWriter::default(),
        }
    }
}

/// Encoder state of the bilevel codec (buffers reused across frames).
#[derive(Debug, Default)]
pub(crate) struct BilevelEncoder {
    /// Row modes and run classes of the frame, in decoding order.
    side: Out<u32>,
    /// Mode symbols of spatial rows, then (for coding) those of temporal
    /// rows offset by [`T_OFFSET`]; filled in two buffers, joined for coding.
    modes_s: Out<u8>,
    modes_t: Out<u8>,
    /// Run records of a row coded against the previous frame (until chosen).
    side_t: Vec<u32>,
    /// Output of the rows coded only for their cost (motion search).
    scratch_modes: Vec<u8>,
    scratch_side: Vec<u32>,
    rans: Vec<u8>,
    /// rANS coder entries of the side models, by `model << 6 | symbol`.
    syms: Vec<EncSym>,
    tally: Tally,
    empty: Vec<u32>,
    tref: Vec<u32>,
    /// Global motion found for the last delta frame (the search starts there).
    motion: (i32, i32),
}

impl BilevelEncoder {
    /// Appends the payload of `cur` to `out`, as a delta frame against
    /// `(prev, prev_seq)` when given; returns whether it is a delta frame.
    pub(crate) fn encode(
        &mut self,
        cur: &Transitions,
        prev: Option<(&Transitions, u64)>,
        out: &mut Vec<u8>,
    ) -> bool {
        #[cfg(target_arch = "x86_64")]
        if x86::available() {
            // SAFETY: the CPU has the features `x86::encode` is compiled for (checked just now).
            #[allow(unsafe_code)]
            return unsafe { x86::encode(self, cur, prev, out) };
        }
        self.encode_any(cur, prev, out)
    }

    /// [`BilevelEncoder::encode`] for any CPU (inlined into each variant).
    #[inline(always)]
    fn encode_any(
        &mut self,
        cur: &Transitions,
        prev: Option<(&Transitions, u64)>,
        out: &mut Vec<u8>,
    ) -> bool {
        let w = cur.width;
        self.empty.clear();
        push_sentinels(&mut self.empty, w);
        let (dx, dy) = match prev {
            Some((p, _)) => self.search_motion(cur, p),
            None => (0, 0),
        };
        let mut prev = prev;
        if let Some((p, _)) = prev {
            if !self.code_delta(cur, p, dx, dy) {
                // Not clearly cheaper than a key frame (the split statistics
                // cost model bytes): code a key frame instead.
                prev = None;
            }
        }
        if prev.is_none() {
            self.code_key(cur);
        }
        // Header.
        match prev {
            Some((_, seq)) => {
                out.push(KIND_DELTA);
                out.extend_from_slice(&seq.to_le_bytes());
                out.push(dx as i8 as u8);
                out.push(dy as i8 as u8);
                self.motion = (dx, dy);
            }
            None => out.push(KIND_KEY),
        }
        // Side statistics and extra bits.
        let t = &mut self.tally;
        t.counts = [[0; MAX_ALPHABET]; MODEL_SLOTS];
        t.bits.clear();
        for &r in self.side.as_slice() {
            let model = (r >> 28) as usize;
            let sym = (r >> 22) & 63;
            t.counts[model % MODEL_SLOTS][sym as usize] += 1;
            // Row modes carry no extra bits (their extra field is 0).
            let nb = run_extra_bits(sym) & ((model >= M_RUN) as u32).wrapping_neg();
            t.bits.put(r & 0x3F_FFFF, nb);
        }
        t.bits.finish();
        histogram(self.modes_s.as_slice(), &mut t.counts[M_MODE_S]);
        histogram(self.modes_t.as_slice(), &mut t.counts[M_MODE_T]);
        // Models, and the coder entries for both streams.
        self.syms
            .resize(MODEL_SLOTS * MAX_ALPHABET, EncSym::default());
        let mut mode_syms = [EncSym::default(); 64];
        let mut freq = [0u32; MAX_ALPHABET];
        for m in 0..N_MODELS {
            let n = alphabet(m);
            normalize(&t.counts[m][..n], &mut freq[..n]);
            write_model(out, &freq[..n]);
            let mut start = 0;
            for (s, &f) in freq[..n].iter().enumerate() {
                if f > 0 {
                    let e = EncSym::new(start, f);
                    match m {
                        M_MODE_S => mode_syms[s] = e,
                        M_MODE_T => mode_syms[s + T_OFFSET as usize] = e,
                        _ => self.syms[m * MAX_ALPHABET + s] = e,
                    }
                    start += f;
                }
            }
        }
        put_varint(out, self.modes_s.len as u64);
        put_varint(out, self.modes_t.len as u64);
        // Side stream (two lanes, contexts), backwards from the end of the buffer.
        let len = 2 * self.side.len + 16;
        if self.rans.len() < len {
            self.rans.resize(len, 0);
        }
        let syms = &self.syms[..MODEL_SLOTS * MAX_ALPHABET];
        let start = encode_lanes(self.side.as_slice(), &mut self.rans[..len], |r| {
            &syms[(r >> 22) as usize % (MODEL_SLOTS * MAX_ALPHABET)]
        });
        put_varint(out, (len - start) as u64);
        out.extend_from_slice(&self.rans[start..len]);
        // Mode stream (four lanes, no contexts): spatial rows' symbols, then
        // temporal rows' (offset into the second half of the coder table).
        let nt = self.modes_t.len;
        for (d, &s) in self.modes_s.room(nt)[..nt]
            .iter_mut()
            .zip(self.modes_t.as_slice())
        {
            *d = s + T_OFFSET;
        }
        self.modes_s.len += nt;
        let len = 2 * self.modes_s.len + 4 * lanes::LANES;
        if self.rans.len() < len {
            self.rans.resize(len, 0);
        }
        let start = lanes::encode(self.modes_s.as_slice(), &mode_syms, &mut self.rans[..len]);
        put_varint(out, (len - start) as u64);
        out.extend_from_slice(&self.rans[start..len]);
        out.extend_from_slice(&self.tally.bits.buf);
        prev.is_some()
    }

    /// Codes every row against the row above.
    #[inline(always)]
    fn code_key(&mut self, cur: &Transitions) {
        self.side.clear();
        self.modes_s.clear();
        self.modes_t.clear();
        let w = cur.width;
        let mut row_ctx = 0usize;
        for y in 0..cur.height as usize {
            let c = cur.row(y);
            let above: &[u32] = if y == 0 { &self.empty } else { cur.row(y - 1) };
            let mode = if c == above {
                ROW_COPY_ABOVE
            } else {
                ROW_SPATIAL
            };
            let side = self.side.room(c.len() + 1);
            side[0] = rec(M_ROW + row_ctx, mode, 0);
            let mut ns = 1;
            if mode == ROW_SPATIAL {
                let modes = self.modes_s.room(c.len() + above.len() + 2);
                let (nm, nr, _) = code_row::<false>(above, c, w, modes, &mut side[1..]);
                self.modes_s.len += nm;
                ns += nr;
            }
            self.side.len += ns;
            row_ctx = mode as usize;
        }
    }

    /// Codes every row against the better of the row above and the moved
    /// previous frame; false (nothing usable) when the estimate is not at
    /// least 3% below coding every row against the row above.
    #[inline(always)]
    fn code_delta(&mut self, cur: &Transitions, p: &Transitions, dx: i32, dy: i32) -> bool {
        self.side.clear();
        self.modes_s.clear();
        self.modes_t.clear();
        let w = cur.width;
        let mut est_spatial = 0u64;
        let mut est_chosen = 0u64;
        let mut row_ctx = 0usize;
        for y in 0..cur.height as usize {
            let c = cur.row(y);
            let above: &[u32] = if y == 0 { &self.empty } else { cur.row(y - 1) };
            motion_ref(p, y, dx, dy, &mut self.tref);
            let pr = &self.tref[..];
            // The row against the row above, in place (kept if chosen).
            let side = self.side.room(c.len() + 1);
            let (ms, ss, cs) = if c == above {
                (0, 0, 0)
            } else {
                let modes = self.modes_s.room(c.len() + above.len() + 2);
                code_row::<true>(above, c, w, modes, &mut side[1..])
            };
            est_spatial += cs as u64 + 4;
            let (mut mt, mut st) = (0, 0);
            let mode = if c == pr {
                est_chosen += 1;
                ROW_COPY_PREV
            } else if c == above {
                est_chosen += 4;
                ROW_COPY_ABOVE
            } else {
                if self.side_t.len() < c.len() {
                    self.side_t.resize(c.len(), 0);
                }
                let modes = self.modes_t.room(c.len() + pr.len() + 2);
                let ct;
                (mt, st, ct) = code_row::<true>(pr, c, w, modes, &mut self.side_t);
                est_chosen += ct.min(cs) as u64 + 4;
                if ct < cs {
                    ROW_TEMPORAL
                } else {
                    ROW_SPATIAL
                }
            };
            side[0] = rec(M_ROW + row_ctx, mode, 0);
            row_ctx = mode as usize;
            match mode {
                ROW_SPATIAL => {
                    self.modes_s.len += ms;
                    self.side.len += 1 + ss;
                }
                ROW_TEMPORAL => {
                    side[1..1 + st].copy_from_slice(&self.side_t[..st]);
                    self.modes_t.len += mt;
                    self.side.len += 1 + st;
                }
                _ => self.side.len += 1,
            }
        }
        est_chosen * 100 <= est_spatial * 97
    }

    /// Global motion `(dx, dy)` of `cur` relative to `prev`: a greedy step
    /// from the last frame's motion, judged by the estimated cost of coding
    /// every 32nd row against the moved reference.
    #[inline(always)]
    fn search_motion(&mut self, cur: &Transitions, prev: &Transitions) -> (i32, i32) {
        let h = cur.height as usize;
        let step = if h >= 128 { 32 } else { (h / 4).max(1) };
        let cost = |dx: i32, dy: i32, this: &mut Self| -> u64 {
            let mut total = 0u64;
            let mut y = step / 2;
            while y < h {
                motion_ref(prev, y, dx, dy, &mut this.tref);
                let c = cur.row(y);
                let nm = this.tref.len() + c.len() + 2;
                if this.scratch_modes.len() < nm {
                    this.scratch_modes.resize(nm, 0);
                }
                if this.scratch_side.len() < c.len() {
                    this.scratch_side.resize(c.len(), 0);
                }
                let (_, _, cost) = code_row::<true>(
                    &this.tref,
                    c,
                    cur.width,
                    &mut this.scratch_modes,
                    &mut this.scratch_side,
                );
                total += cost as u64;
                y += step;
            }
            total
        };
        let (mut bx, mut by) = self.motion;
        let mut best = cost(bx, by, self);
        if (bx, by) != (0, 0) {
            let c0 = cost(0, 0, self);
            if c0 <= best {
                (bx, by, best) = (0, 0, c0);
            }
        }
        // Up to 4 greedy rounds over the 8 neighbours.
        for _ in 0..4 {
            let (cx, cy) = (bx, by);
            for (ex, ey) in [
                (-1, 0),
                (1, 0),
                (0, -1),
                (0, 1),
                (-1, -1),
                (1, 1),
                (-1, 1),
                (1, -1),
            ] {
                let (nx, ny) = (cx + ex, cy + ey);
                if nx.abs() > 64 || ny.abs() > 64 {
                    continue;
                }
                let c = cost(nx, ny, self);
                if c < best {
                    (bx, by, best) = (nx, ny, c);
                }
            }
            if (bx, by) == (cx, cy) {
                break;
            }
        }
        (bx, by)
    }
}

/// The encoder compiled a second time for the x86-64 CPUs with BMI1, BMI2,
/// LZCNT and POPCNT (every x86-64-v3 CPU), chosen at run time: single
/// instructions for the bit scans and counts of the transition extraction,
/// the run classes and the coders. Same code, same output.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod x86 {
    use super::{BilevelEncoder, Transitions};

    /// Whether the CPU has the features of this module's functions.
    #[inline]
    pub(super) fn available() -> bool {
        std::is_x86_feature_detected!("bmi1")
            && std::is_x86_feature_detected!("bmi2")
            && std::is_x86_feature_detected!("lzcnt")
            && std::is_x86_feature_detected!("popcnt")
    }

    /// [`Transitions::extract`].
    ///
    /// # Safety
    /// The CPU must support BMI1, BMI2, LZCNT and POPCNT ([`available`]).
    #[target_feature(enable = "bmi1,bmi2,lzcnt,popcnt")]
    pub(super) unsafe fn extract(t: &mut Transitions, packed: &[u8], width: u32, height: u32) {
        t.extract_any::<5>(packed, width, height)
    }

    /// [`BilevelEncoder::encode`].
    ///
    /// # Safety
    /// The CPU must support BMI1, BMI2, LZCNT and POPCNT ([`available`]).
    #[target_feature(enable = "bmi1,bmi2,lzcnt,popcnt")]
    pub(super) unsafe fn encode(
        e: &mut BilevelEncoder,
        cur: &Transitions,
        prev: Option<(&Transitions, u64)>,
        out: &mut Vec<u8>,
    ) -> bool {
        e.encode_any(cur, prev, out)
    }
}

/// The x86 variants against the portable code: same transitions, same payloads.
#[cfg(all(test, target_arch = "x86_64"))]
mod x86_tests {
    use super::{x86, BilevelEncoder, Transitions};

    /// The masks of a corpus directory (`corpus.tsv`: file, width, height,
    /// group), as streams: stills alone, each sequence group in order.
    fn streams(dir: &std::path::Path) -> Vec<Vec<(Vec<u8>, u32, u32)>> {
        let Ok(manifest) = std::fs::read_to_string(dir.join("corpus.tsv")) else {
            return Vec::new();
        };
        let mut out: Vec<Vec<(Vec<u8>, u32, u32)>> = Vec::new();
        let mut last = String::new();
        for line in manifest.lines().skip(1).filter(|l| !l.trim().is_empty()) {
            let f: Vec<&str> = line.split('\t').collect();
            let bits = std::fs::read(dir.join(f[0])).unwrap();
            let m = (bits, f[1].parse().unwrap(), f[2].parse().unwrap());
            if f[3] == last && !matches!(f[3], "otsu" | "blue170") {
                out.last_mut().unwrap().push(m);
            } else {
                out.push(vec![m]);
            }
            last = f[3].to_owned();
        }
        out
    }

    /// `m` cropped (or extended with 0) to `w x h` from `(x0, y0)`.
    fn crop(m: &(Vec<u8>, u32, u32), x0: u32, y0: u32, w: u32, h: u32) -> (Vec<u8>, u32, u32) {
        let (s0, s) = ((m.1 as usize).div_ceil(8), (w as usize).div_ceil(8));
        let mut out = vec![0u8; s * h as usize];
        for y in 0..h {
            for x in 0..w {
                let (sx, sy) = (x0 + x, y0 + y);
                if sx < m.1
                    && sy < m.2
                    && m.0[sy as usize * s0 + sx as usize / 8] << (sx % 8) & 0x80 != 0
                {
                    out[y as usize * s + x as usize / 8] |= 0x80 >> (x % 8);
                }
            }
        }
        (out, w, h)
    }

    #[test]
    fn x86_variants_match_portable() {
        if !x86::available() {
            use std::io::Write;
            let msg = "SKIP: x86_variants_match_portable: the CPU lacks the x86 variants' features";
            let _ = writeln!(std::io::stderr(), "{msg}");
            // (a failure in the bitmask repository's CI only: not where
            // the crate's package is tested on another machine)
            let in_repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../xtask/Cargo.toml")
                .exists();
            assert!(
                !(in_repo && std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")),
                "{msg} (CI=true: skipping is a failure)"
            );
            return;
        }
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut all = streams(&root.join("tests/vectors"));
        let corpus = match std::env::var_os("CARGO_TARGET_DIR") {
            Some(t) if !t.is_empty() => std::path::PathBuf::from(t).join("codec-corpus"),
            _ => root.join("../../target/codec-corpus"),
        };
        all.extend(streams(&corpus));
        // Odd sizes (partial words, partial bytes) from the same content.
        let sizes = [
            (1, 1),
            (7, 3),
            (63, 5),
            (65, 17),
            (333, 101),
            (1023, 767),
            (2049, 50),
        ];
        let odd: Vec<Vec<_>> = all
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let (w, h) = sizes[i % sizes.len()];
                let o = (i as u32 * 37) % 200;
                s.iter().map(|m| crop(m, o, o / 2, w, h)).collect()
            })
            .collect();
        all.extend(odd);
        assert!(all.len() >= 10);
        for s in &all {
            let (mut enc_a, mut enc_b) = (BilevelEncoder::default(), BilevelEncoder::default());
            let (mut prev_a, mut prev_b) = (Transitions::default(), Transitions::default());
            let (mut cur_a, mut cur_b) = (Transitions::default(), Transitions::default());
            for (i, (bits, w, h)) in s.iter().enumerate() {
                cur_a.extract_any::<0>(bits, *w, *h);
                // SAFETY: the CPU has the features (checked above).
                #[allow(unsafe_code)]
                unsafe {
                    x86::extract(&mut cur_b, bits, *w, *h)
                };
                for y in 0..*h as usize {
                    assert_eq!(cur_a.row(y), cur_b.row(y), "row {y} of a {w}x{h} mask");
                }
                // Each frame as a key frame, then as a delta frame of the one before.
                for delta in [false, true] {
                    let seq = (i as u64).wrapping_sub(1);
                    let pa = (delta && i > 0).then_some((&prev_a, seq));
                    let pb = (delta && i > 0).then_some((&prev_b, seq));
                    let (mut out_a, mut out_b) = (Vec::new(), Vec::new());
                    let da = enc_a.encode_any(&cur_a, pa, &mut out_a);
                    // SAFETY: as above.
                    #[allow(unsafe_code)]
                    let db = unsafe { x86::encode(&mut enc_b, &cur_b, pb, &mut out_b) };
                    assert_eq!((da, &out_a), (db, &out_b), "frame {i} of a {w}x{h} stream");
                }
                std::mem::swap(&mut cur_a, &mut prev_a);
                std::mem::swap(&mut cur_b, &mut prev_b);
            }
        }
    }
}

/// Adds the symbol counts of `syms` to `counts` (four partial tables, so
/// runs of one symbol do not wait on each other's increments).
fn histogram(syms: &[u8], counts: &mut [u32; MAX_ALPHABET]) {
    let mut part = [[0u32; 256]; 4];
    let mut chunks = syms.chunks_exact(4);
    for c in &mut chunks {
        part[0][c[0] as usize] += 1;
        part[1][c[1] as usize] += 1;
        part[2][c[2] as usize] += 1;
        part[3][c[3] as usize] += 1;
    }
    for &s in chunks.remainder() {
        part[0][s as usize] += 1;
    }
    for (s, c) in counts.iter_mut().enumerate() {
        *c += part[0][s] + part[1][s] + part[2][s] + part[3][s];
    }
}

/// Why a payload was rejected.
pub(crate) type Reason = &'static str;

/// Decodes one coded row against `r` into `out` (at least `width + 1`
/// entries): mode symbols from `syms[*si..]` (which ends with [`SYM_END`]),
/// run classes from the side stream. Returns the number of transitions.
#[inline(never)]
#[allow(clippy::too_many_arguments)]
fn decode_row(
    r: &[u32],
    width: u32,
    syms: &[u8],
    si: &mut usize,
    models: &[u32; TABLE_LEN],
    side: &mut RansDec<'_>,
    bits: &mut BitReader<'_>,
    out: &mut [u32],
) -> Result<usize, Reason> {
    let w = width as i32;
    let mut a0: i32 = -1;
    let mut k = 0usize;
    let mut n = 0usize;
    let mut i = *si;
    let result = loop {
        let s = syms.get(i).copied().unwrap_or(SYM_END);
        i += 1;
        if s < SYM_PASS {
            // Vertical: the next reference transition, moved.
            let a1 = at(r, k, width) + s as i32 - VMAX;
            if a1 <= a0 || a1 > w {
                break Err("vertical mode out of order");
            }
            if a1 == w {
                break Ok(n);
            }
            let Some(o) = out.get_mut(n) else {
                break Err("row longer than its width");
            };
            *o = a1 as u32;
            n += 1;
            a0 = a1;
            k = after_vertical(r, k, a0, width);
        } else if s == SYM_PASS {
            let b2 = at(r, k + 1, width);
            if b2 >= w {
                break Err("pass mode past the end of the row");
            }
            a0 = a0.max(b2);
            k += 2;
        } else if s == SYM_HORIZ {
            let colour = n & 1;
            let (mut x0, mut x1, mut pos) = (side.x0, side.x1, side.pos);
            let (n0, n1, np, e) = step(models, M_RUN + colour, x0, x1, side.words, pos);
            (x0, x1, pos) = (n0, n1, np);
            let class = e & 63;
            let r1 = run_value(class, bits.get(run_extra_bits(class))) as i32;
            let (n0, n1, np, e) = step(models, M_RUN + (colour ^ 1), x0, x1, side.words, pos);
            (side.x0, side.x1, side.pos) = (n0, n1, np);
            let class = e & 63;
            let r2 = run_value(class, bits.get(run_extra_bits(class))) as i32;
            if a0 >= 0 && r1 == 0 {
                break Err("zero first run in horizontal mode");
            }
            let a1 = a0.max(0) + r1;
            let a2 = a1 + r2;
            if a2 > w || (r2 == 0 && a1 < w) {
                break Err("horizontal mode runs past the end of the row");
            }
            if a1 < w {
                let Some(o) = out.get_mut(n) else {
                    break Err("row longer than its width");
                };
                *o = a1 as u32;
                n += 1;
            }
            if a2 >= w {
                break Ok(n);
            }
            let Some(o) = out.get_mut(n) else {
                break Err("row longer than its width");
            };
            *o = a2 as u32;
            n += 1;
            a0 = a2;
            k = resync(r, k, a0, n, width);
        } else {
            break Err("more coded rows than mode symbols");
        }
    };
    *si = i;
    result
}

/// What a bilevel payload says about its reference.
pub(crate) fn payload_reference(payload: &[u8]) -> Result<Option<u64>, Reason> {
    match payload.first() {
        Some(&KIND_KEY) => Ok(None),
        Some(&KIND_DELTA) => {
            let b: [u8; 8] = payload
                .get(1..9)
                .and_then(|b| b.try_into().ok())
                .ok_or("truncated reference sequence")?;
            Ok(Some(u64::from_le_bytes(b)))
        }
        Some(_) => Err("unknown payload kind"),
        None => Err("empty payload"),
    }
}

/// Decoder state of the bilevel codec.
#[derive(Debug)]
pub(crate) struct BilevelDecoder {
    models: DecTables,
    above: Vec<u32>,
    tref: Vec<u32>,
    side_words: Vec<u16>,
    mode_words: Vec<u16>,
    /// Decoded mode symbols: those of spatial rows and [`SYM_END`], then
    /// those of temporal rows and [`SYM_END`] (one buffer, so that what it
    /// keeps across frames is bounded by one frame's symbol count).
    syms: Vec<u8>,
    /// Toggle masks of the row being rendered, one u64 per 64 pixels.
    words: Vec<u64>,
    /// Two row slots for the rows past the memory budget (see `decode`).
    ring: Vec<u32>,
    /// A reference row's transitions, for packed references.
    ref_row: Vec<u32>,
}

impl Default for BilevelDecoder {
    fn default() -> Self {
        BilevelDecoder {
            models: DecTables::new(),
            above: Vec::new(),
            tref: Vec::new(),
            side_words: Vec::new(),
            mode_words: Vec::new(),
            syms: Vec::new(),
            words: Vec::new(),
            ring: Vec::new(),
            ref_row: Vec::new(),
        }
    }
}

/// Reads a varint length and splits that many bytes off `payload` at `*pos`.
fn take<'p>(payload: &'p [u8], pos: &mut usize, what: Reason) -> Result<&'p [u8], (usize, Reason)> {
    let at = *pos;
    let len = get_varint(payload, pos).ok_or((at, what))?;
    let rest = payload.get(*pos..).unwrap_or(&[]);
    if len > rest.len() as u64 {
        return Err((at, what));
    }
    *pos += len as usize;
    Ok(&rest[..len as usize])
}

impl BilevelDecoder {
    /// Bytes held for mode symbols (tests of the memory bound).
    #[cfg(test)]
    pub(crate) fn symbol_capacity(&self) -> usize {
        self.syms.capacity()
    }

    /// Decodes `payload` into `out` (packed rows) and `cur` (transitions).
    /// `prev` must be given for delta payloads (checked by the caller).
    ///
    /// `cur` keeps at most about `budget` entries: a frame with more
    /// transitions (a payload of a few dozen bytes can describe one with a
    /// transition at every pixel) is decoded with its rows alternating
    /// between two slots instead, and the result is `Ok(false)`: `cur` is
    /// then not the frame's lists, and the caller keeps `out` as the next
    /// reference. `Ok(true)` when `cur` holds every row.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn decode(
        &mut self,
        payload: &[u8],
        width: u32,
        height: u32,
        prev: Option<Reference<'_>>,
        cur: &mut Transitions,
        out: &mut [u8],
        budget: usize,
    ) -> Result<bool, (usize, Reason)> {
        // The caller checked these (`check_frame`, the reference's size);
        // refused here too, before any work, rather than decoding part of
        // a frame.
        if Some(out.len()) != (width as usize).div_ceil(8).checked_mul(height as usize) {
            return Err((0, "output buffer does not fit the dimensions"));
        }
        if prev.is_some_and(|p| p.dimensions() != (width, height)) {
            return Err((0, "reference of other dimensions"));
        }
        let mut pos = match payload.first() {
            Some(&KIND_KEY) => 1,
            Some(&KIND_DELTA) => 11,
            _ => return Err((0, "unknown payload kind")),
        };
        if payload[0] == KIND_DELTA && prev.is_none() {
            return Err((0, "delta payload without a reference"));
        }
        for m in 0..N_MODELS {
            self.models
                .read(m, payload, &mut pos, alphabet(m), |_| 0)
                .map_err(|e| (pos, e))?;
        }
        // A row has at most one mode symbol per pixel, per pass and the
        // end: bound the counts before allocating for them.
        let limit = height as u64 * (2 * width as u64 + 2);
        let at_n = pos;
        let n_s = get_varint(payload, &mut pos).ok_or((at_n, "truncated symbol count"))?;
        let n_t = get_varint(payload, &mut pos).ok_or((at_n, "truncated symbol count"))?;
        if n_s.saturating_add(n_t) > limit {
            return Err((at_n, "more mode symbols than the frame can hold"));
        }
        if payload[0] == KIND_KEY && n_t != 0 {
            return Err((at_n, "temporal mode symbols in a key frame"));
        }
        let side = take(
            payload,
            &mut pos,
            "side stream length past the end of the payload",
        )?;
        let at_modes = pos;
        let modes = take(
            payload,
            &mut pos,
            "mode stream length past the end of the payload",
        )?;
        let extra = &payload[pos.min(payload.len())..];

        // All mode symbols at once (room for them and their end markers
        // reserved fallibly: on a 32-bit target the bound can pass what an
        // allocation may ask for).
        let too_many = (at_n, "more mode symbols than this machine can hold");
        let (Ok(n_s), Ok(n_t)) = (usize::try_from(n_s), usize::try_from(n_t)) else {
            return Err(too_many);
        };
        let Some(total) = n_s.checked_add(n_t).and_then(|n| n.checked_add(2)) else {
            return Err(too_many);
        };
        // The lanes write every symbol: only the end markers need setting
        // (no per-frame fill of a buffer that is reused).
        if total > self.syms.len() {
            self.syms
                .try_reserve_exact(total - self.syms.len())
                .map_err(|_| too_many)?;
        }
        self.syms.resize(total, SYM_END);
        self.syms[n_s] = SYM_END;
        self.syms[total - 1] = SYM_END;
        let (syms_s, syms_t) = self.syms.split_at_mut(n_s + 1);
        let models = &*self.models.table;
        if n_s + n_t > 0 {
            let nl = lanes::lanes_for(n_s + n_t);
            Lanes::pad(modes, nl, &mut self.mode_words);
            let mut lanes = Lanes::new(modes, nl, &self.mode_words).map_err(|e| (at_modes, e))?;
            lanes.decode(models, M_MODE_S, &mut syms_s[..n_s]);
            lanes.decode(models, M_MODE_T, &mut syms_t[..n_t]);
            if !lanes.finished_cleanly() {
                return Err((at_modes, "mode stream does not end where it should"));
            }
        } else if !modes.is_empty() {
            return Err((at_modes, "mode stream without mode symbols"));
        }
        let (syms_s, syms_t) = (&*syms_s, &*syms_t);
        // Every symbol is in its model's alphabet (`DecTables::read` refuses
        // others), and `decode_row` treats anything above as the end.

        RansDec::pad(side, &mut self.side_words);
        let mut dec = RansDec::new(side, &self.side_words).map_err(|e| (pos, e))?;
        let mut bits = BitReader::new(extra);
        let (dx, dy) = match payload.get(9..11) {
            Some(m) if payload[0] == KIND_DELTA => (m[0] as i8 as i32, m[1] as i8 as i32),
            _ => (0, 0),
        };
        let stride = (width as usize).div_ceil(8);
        let wu = width as usize;
        cur.clear();
        cur.width = width;
        cur.height = height;
        self.above.clear();
        push_sentinels(&mut self.above, width);
        let (mut si, mut ti) = (0usize, 0usize);
        let mut row_ctx = 0usize;
        // Rows are decoded straight into `cur.tr`, the row above being the
        // previous list there (grown as needed, never shrunk).
        let mut start = 0usize;
        let mut above_start = usize::MAX;
        let nw = stride.div_ceil(8);
        if self.words.len() < nw {
            self.words.resize(nw, 0);
        }
        // Past the budget, rows alternate between two slots of `ring` (row
        // `y` in slot `y % 2`, the row above in the other, `above_len`
        // entries): memory stays O(width) whatever the payload describes.
        let slot = wu + 8;
        let mut lists = true;
        let mut above_len = 0usize;
        for y in 0..height as usize {
            let (rows_done, rows_rest) = out.split_at_mut(y * stride);
            let Some(dst) = rows_rest.get_mut(..stride) else {
                return Err((pos, "output buffer does not fit the dimensions"));
            };
            let need = start + slot;
            // Grow the lists up to the budget (fallibly: a failed allocation
            // is one more reason to go on in the ring).
            if lists && need > cur.tr.len() {
                let cap = budget.max(slot);
                let len = need.max(cur.tr.len().saturating_mul(2)).min(cap);
                if need <= cap && cur.tr.try_reserve_exact(len - cur.tr.len()).is_ok() {
                    cur.tr.resize(len, 0);
                } else {
                    lists = false;
                    if self.ring.len() < 2 * slot {
                        self.ring.resize(2 * slot, 0);
                    }
                    // The row above (or the empty row) into the other slot.
                    let a: &[u32] = if above_start == usize::MAX {
                        &self.above
                    } else {
                        &cur.tr[above_start..start]
                    };
                    above_len = a.len();
                    let other = (1 - y % 2) * slot;
                    self.ring[other..other + above_len].copy_from_slice(a);
                }
            }
            let (above, rest): (&[u32], &mut [u32]) = if lists {
                let (done, rest) = cur.tr.split_at_mut(start);
                let above: &[u32] = if above_start == usize::MAX {
                    &self.above
                } else {
                    &done[above_start..]
                };
                (above, rest)
            } else {
                let (s0, s1) = self.ring[..2 * slot].split_at_mut(slot);
                if y % 2 == 0 {
                    (&s1[..above_len], s0)
                } else {
                    (&s0[..above_len], s1)
                }
            };
            let mode = dec.get(models, M_ROW + row_ctx) & 63;
            let n = match mode {
                ROW_SPATIAL => decode_row(
                    above,
                    width,
                    syms_s,
                    &mut si,
                    models,
                    &mut dec,
                    &mut bits,
                    &mut rest[..wu + 1],
                )
                .map_err(|e| (pos, e))?,
                ROW_TEMPORAL => {
                    let p = prev.ok_or((pos, "temporal row in a key frame"))?;
                    p.motion_ref(y, dx, dy, &mut self.tref, &mut self.ref_row);
                    decode_row(
                        &self.tref,
                        width,
                        syms_t,
                        &mut ti,
                        models,
                        &mut dec,
                        &mut bits,
                        &mut rest[..wu + 1],
                    )
                    .map_err(|e| (pos, e))?
                }
                ROW_COPY_PREV => {
                    let p = prev.ok_or((pos, "copied row in a key frame"))?;
                    p.motion_ref(y, dx, dy, &mut self.tref, &mut self.ref_row);
                    let r = &self.tref[..self.tref.len() - SENTINELS];
                    rest[..r.len()].copy_from_slice(r);
                    r.len()
                }
                _ => {
                    let a = &above[..above.len() - SENTINELS];
                    rest[..a.len()].copy_from_slice(a);
                    a.len()
                }
            };
            rest[n..n + SENTINELS].fill(width);
            match rows_done.get(rows_done.len().wrapping_sub(stride)..) {
                // A copy of the row above: copy its bytes.
                Some(a) if mode == ROW_COPY_ABOVE => dst.copy_from_slice(a),
                _ => render_toggles(&rest[..n], width, &mut self.words, dst),
            }
            if lists {
                above_start = start;
                start += n + SENTINELS;
                cur.off.push(start);
            } else {
                above_len = n + SENTINELS;
            }
            row_ctx = mode as usize;
        }
        if !lists {
            // Not the frame's lists: nothing may read them as such.
            cur.clear();
        }
        if si != n_s || ti != n_t {
            return Err((at_modes, "mode symbols left over after the last row"));
        }
        if !dec.finished_cleanly() {
            return Err((pos, "side stream does not end where it should"));
        }
        if !bits.exhausted_exactly() {
            return Err((pos, "extra-bit stream does not end where it should"));
        }
        Ok(lists)
    }
}
