//! Codec 1, "bilevel": 2-D run coding relative to a reference row in the
//! spirit of CCITT G4 (READ), with a per-row choice of reference (the row
//! above or the co-located row of the previous frame), and static per-frame
//! rANS over context-split models. The format is specified in `docs/CODEC.md`.
//!
//! Every row is turned into its list of *transitions* (the columns where a
//! pixel differs from the one on its left, pixel -1 being 0) with XOR, shift
//! and leading-zero counts on 64-bit words. Rows are coded as transition
//! lists and rendered back with byte fills.

use crate::bits::{get_varint, put_varint, BitReader, BitWriter};
use crate::rans::{
    encode_lanes, normalize, step, write_model, DecTables, EncSym, RansDec, MAX_ALPHABET,
    MODEL_SLOTS, NEXT_SHIFT, TABLE_LEN,
};

/// Largest |a1 - b1| coded as a vertical mode.
const VMAX: i32 = 7;
/// Mode symbols: `0..=2*VMAX` vertical with offset `sym - VMAX`, then pass and horizontal.
const SYM_PASS: u32 = 2 * VMAX as u32 + 1;
const SYM_HORIZ: u32 = SYM_PASS + 1;
const MODE_ALPHABET: usize = SYM_HORIZ as usize + 1;
/// Run-length classes: 0..=15 literal, then two classes per octave.
const RUN_ALPHABET: usize = 50;
/// Row modes.
const ROW_SPATIAL: u32 = 0;
const ROW_TEMPORAL: u32 = 1;
const ROW_COPY_PREV: u32 = 2;
const ROW_COPY_ABOVE: u32 = 3;
const ROW_ALPHABET: usize = 4;

/// Model indices: 4 row-mode contexts, 4 spatial mode contexts, 4 temporal
/// mode contexts, white runs, black runs.
const M_ROW: usize = 0;
const M_MODE_S: usize = 4;
const M_MODE_T: usize = 8;
const M_RUN: usize = 12; // + colour of the run (0 white, 1 black)
pub(crate) const N_MODELS: usize = 14;

fn alphabet(model: usize) -> usize {
    match model {
        M_ROW..M_MODE_S => ROW_ALPHABET,
        M_MODE_S..M_RUN => MODE_ALPHABET,
        _ => RUN_ALPHABET,
    }
}

/// Payload kinds (first byte).
const KIND_KEY: u8 = 0;
const KIND_DELTA: u8 = 1;

/// Context after a mode symbol: 1 after V0, 2 after V+-1, 3 after anything else (0 at row start).
#[inline(always)]
fn next_ctx(sym: u32) -> usize {
    NEXT_CTX[sym as usize & 31] as usize
}

/// [`next_ctx`] as a table.
const NEXT_CTX: [u8; 32] = {
    let mut t = [3u8; 32];
    let mut s = 0;
    while s < 32 {
        let d = (s as i32 - VMAX).unsigned_abs();
        t[s] = 1 + (d != 0) as u8 + (d > 1) as u8;
        s += 1;
    }
    t
};

/// A symbol record: model (4 bits), symbol (6 bits), extra-bit value (22 bits).
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
fn est_mode_cost(sym: u32) -> u32 {
    match sym {
        s if s == VMAX as u32 => 12,
        s if s == VMAX as u32 - 1 || s == VMAX as u32 + 1 => 48,
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

/// Sentinels (copies of the width) after each row's transition list: the
/// decoder reads up to 2 entries past the first one.
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
            let n = row_transitions_into(row, width, out);
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
fn motion_ref(prev: &Transitions, y: usize, dx: i32, dy: i32, out: &mut Vec<u32>) {
    out.clear();
    let w = prev.width as i32;
    let sy = y as i64 - dy as i64;
    if sy >= 0 && sy < prev.height as i64 {
        let r = prev.row(sy as usize);
        let r = &r[..r.len() - SENTINELS];
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
    push_sentinels(out, prev.width);
}

/// Appends the transitions of one packed row (positions `< width`).
#[cfg(test)]
pub(crate) fn row_transitions(row: &[u8], width: u32, out: &mut Vec<u32>) {
    let mut buf = vec![0u32; row.len() * 8 + 64];
    let n = row_transitions_into(row, width, &mut buf);
    out.extend_from_slice(&buf[..n]);
}

/// Writes the transitions of one packed row (positions `< width`) to the
/// start of `out` (at least `8 * row.len() + 64` entries); returns how many.
#[inline]
fn row_transitions_into(row: &[u8], width: u32, out: &mut [u32]) -> usize {
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
        n = put_bits(x, base, out, n);
        base += 64;
    }
    let rem = chunks.remainder();
    if !rem.is_empty() {
        let mut b = [0u8; 8];
        b[..rem.len()].copy_from_slice(rem);
        let w = u64::from_be_bytes(b);
        n = put_bits(w ^ ((w >> 1) | (carry << 63)), base, out, n);
    }
    // Padding bits (0 by contract) can only add transitions at or past the width.
    while n > 0 && out[n - 1] >= width {
        n -= 1;
    }
    n
}

/// Writes `base + i` for every set bit `i` (from the MSB) of `x` at `out[n..]`; returns the new `n`.
#[inline(always)]
fn put_bits(mut x: u64, base: u32, out: &mut [u32], mut n: usize) -> usize {
    while x != 0 {
        let lz = x.leading_zeros();
        out[n] = base + lz;
        n += 1;
        x &= !((1u64 << 63) >> lz);
    }
    n
}

/// Renders a transition list (sentinels allowed at the end) into a packed row.
#[cfg(test)]
pub(crate) fn render_row(tr: &[u32], width: u32, row: &mut [u8]) {
    let n = tr.iter().take_while(|&&t| t < width).count();
    render_toggles(&tr[..n], width, &mut vec![0; row.len().div_ceil(8)], row);
}

/// Renders a transition list (entries `< width`, increasing) into a packed
/// row without data-dependent branches: each transition flips the pixels
/// from it to the end of its 64-pixel word (`words`, scratch), then a sweep
/// carries the colour from word to word; the padding bits are cleared.
///
/// `words` holds at least `ceil(row.len() / 8)` zeros and is left zeroed.
fn render_toggles(tr: &[u32], width: u32, words: &mut [u64], row: &mut [u8]) {
    for &t in tr {
        if let Some(w) = words.get_mut((t >> 6) as usize) {
            *w ^= !0u64 >> (t & 63);
        }
    }
    let mut carry = 0u64;
    let mut chunks = row.chunks_exact_mut(8);
    let mut it = words.iter_mut();
    for (d, w) in (&mut chunks).zip(&mut it) {
        let v = *w ^ carry;
        *w = 0;
        carry = (v & 1).wrapping_neg();
        d.copy_from_slice(&v.to_be_bytes());
    }
    let rem = chunks.into_remainder();
    if !rem.is_empty() {
        if let Some(w) = it.next() {
            let v = *w ^ carry;
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

/// Codes the transitions `c` of a row against the reference `r` (both with
/// sentinels). Appends records, returns the estimated cost.
fn code_row(r: &[u32], c: &[u32], width: u32, mode_base: usize, recs: &mut Vec<u32>) -> u32 {
    code_row_g::<true>(r, c, width, mode_base, recs, None)
}

/// Symbol counts per model and the extra-bit stream of a frame's records.
#[derive(Debug)]
pub(crate) struct Tally {
    /// By model (a power-of-two number of slots, so indexing masks rather than divides).
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

impl Tally {
    fn clear(&mut self) {
        self.counts = [[0; MAX_ALPHABET]; MODEL_SLOTS];
        self.bits.clear();
    }

    /// Counts record `r` and writes its extra bits.
    #[inline(always)]
    fn add(&mut self, r: u32) {
        let model = (r >> 28) as usize;
        let sym = (r >> 22) & 63;
        self.counts[model % MODEL_SLOTS][sym as usize] += 1;
        // Mode and row symbols carry no extra bits (their extra field is 0).
        let nb = run_extra_bits(sym) & ((model >= M_RUN) as u32).wrapping_neg();
        self.bits.put(r & 0x3F_FFFF, nb);
    }
}

/// [`code_row`], with the cost estimate only when `COST` (key frames do not
/// need it), and with `tally` when given: the records' symbol counts and
/// extra bits, as [`Tally::add`] would make them from the records later.
#[inline]
fn code_row_g<const COST: bool>(
    r: &[u32],
    c: &[u32],
    width: u32,
    mode_base: usize,
    recs: &mut Vec<u32>,
    mut tally: Option<&mut Tally>,
) -> u32 {
    let w = width as i32;
    let mut a0: i32 = -1;
    let mut color = 0usize;
    let mut ia = 0usize;
    let mut kb = 0usize;
    let mut ctx = 0usize;
    let mut cost = 0u32;
    // At most 3 records per changing element of either row, plus the end.
    recs.reserve(3 * (r.len() + c.len()) + 8);
    loop {
        let n = (r[kb] as i32 <= a0) as usize
            + (r[kb + 1] as i32 <= a0) as usize
            + (r[kb + 2] as i32 <= a0) as usize;
        kb += n;
        if n == 3 {
            while r[kb] as i32 <= a0 {
                kb += 1;
            }
        }
        let k1 = kb + ((kb ^ color) & 1);
        let b1 = r[k1] as i32;
        let b2 = r[k1 + 1] as i32;
        let a1 = c[ia] as i32;
        let sym;
        if b2 < a1 {
            sym = SYM_PASS;
            recs.push(rec(mode_base + ctx, sym, 0));
            if let Some(t) = tally.as_deref_mut() {
                t.counts[(mode_base + ctx) % MODEL_SLOTS][sym as usize] += 1;
            }
            a0 = b2;
        } else {
            let d = a1 - b1;
            if (-VMAX..=VMAX).contains(&d) {
                sym = (d + VMAX) as u32;
                recs.push(rec(mode_base + ctx, sym, 0));
                if let Some(t) = tally.as_deref_mut() {
                    t.counts[(mode_base + ctx) % MODEL_SLOTS][sym as usize] += 1;
                }
                a0 = a1;
                color ^= 1;
                ia += 1;
            } else {
                sym = SYM_HORIZ;
                recs.push(rec(mode_base + ctx, sym, 0));
                let a2 = c[ia + 1] as i32;
                let r1 = (a1 - a0.max(0)) as u32;
                let r2 = (a2 - a1) as u32;
                let (c1, _, e1) = run_class(r1);
                let (c2, _, e2) = run_class(r2);
                recs.push(rec(M_RUN + color, c1, e1));
                recs.push(rec(M_RUN + (color ^ 1), c2, e2));
                if let Some(t) = tally.as_deref_mut() {
                    t.counts[(mode_base + ctx) % MODEL_SLOTS][sym as usize] += 1;
                    t.counts[M_RUN + color][c1 as usize % MAX_ALPHABET] += 1;
                    t.counts[M_RUN + (color ^ 1)][c2 as usize % MAX_ALPHABET] += 1;
                    let (n1, n2) = (run_extra_bits(c1), run_extra_bits(c2));
                    t.bits.put(e1, n1);
                    t.bits.put(e2, n2);
                }
                if COST {
                    cost += est_run_cost(r1) + est_run_cost(r2);
                }
                a0 = a2;
                ia += 2;
            }
        }
        if COST {
            cost += est_mode_cost(sym);
        }
        ctx = next_ctx(sym);
        if a0 >= w {
            return cost;
        }
    }
}

/// Why a payload was rejected.
pub(crate) type Reason = &'static str;

/// The model after a symbol of model `m` in the decoder's context chain:
/// for mode models, the mode model of the same kind in the context the
/// symbol leads to ([`next_ctx`]); for others, unused (0).
fn next_model(m: usize, sym: usize) -> usize {
    match m {
        M_MODE_S..M_MODE_T => M_MODE_S + next_ctx(sym as u32),
        M_MODE_T..M_RUN => M_MODE_T + next_ctx(sym as u32),
        _ => 0,
    }
}

/// Decodes one coded row against `r` (validated, with sentinels) into
/// `out` (at least `width + 2` entries), returns the number of transitions
/// (without sentinels).
#[inline(never)]
fn decode_row(
    r: &[u32],
    width: u32,
    mode_base: usize,
    models: &[u32; TABLE_LEN],
    dec: &mut RansDec<'_>,
    bits: &mut BitReader<'_>,
    out: &mut [u32],
) -> Result<usize, Reason> {
    // The rANS states live in locals (registers) for the row.
    let words = dec.words;
    let (mut x0, mut x1, mut pos) = (dec.x0, dec.x1, dec.pos);
    macro_rules! get {
        ($m:expr) => {{
            let (n0, n1, np, e) = step(models, $m, x0, x1, words, pos);
            (x0, x1, pos) = (n0, n1, np);
            e
        }};
    }
    let w = width as i32;
    let mut a0: i32 = -1;
    let mut color = 0usize;
    let mut kb = 0usize;
    // The mode model: context 0 at the start of the row, then the one the
    // table entry of the last mode symbol names.
    let mut m = mode_base;
    let mut n = 0usize;
    let result = loop {
        // The reference is sorted: count the entries <= a0 among the next
        // three at once (usually 0-2 steps), loop for the rest.
        let c = (r[kb] as i32 <= a0) as usize
            + (r[kb + 1] as i32 <= a0) as usize
            + (r[kb + 2] as i32 <= a0) as usize;
        kb += c;
        if c == 3 {
            while r[kb] as i32 <= a0 {
                kb += 1;
            }
        }
        let k1 = kb + ((kb ^ color) & 1);
        let b1 = r[k1] as i32;
        let e = get!(m);
        m = (e >> NEXT_SHIFT) as usize;
        let sym = e & 63;
        if sym < SYM_PASS {
            let a1 = b1 + sym as i32 - VMAX;
            if a1 <= a0 || a1 > w {
                break Err("vertical mode out of order");
            }
            out[n] = a1 as u32;
            n += 1;
            a0 = a1;
            color ^= 1;
        } else if sym == SYM_PASS {
            let b2 = r[k1 + 1] as i32;
            if b2 >= w {
                break Err("pass mode past the end of the row");
            }
            a0 = b2;
        } else {
            let class = get!(M_RUN + color) & 63;
            let r1 = run_value(class, bits.get(run_extra_bits(class))) as i32;
            let class = get!(M_RUN + (color ^ 1)) & 63;
            let r2 = run_value(class, bits.get(run_extra_bits(class))) as i32;
            if a0 >= 0 && r1 == 0 {
                break Err("zero first run in horizontal mode");
            }
            let a1 = a0.max(0) + r1;
            let a2 = a1 + r2;
            if a2 > w || (r2 == 0 && a1 < w) {
                break Err("horizontal mode runs past the end of the row");
            }
            out[n] = a1 as u32;
            n += (a1 < w) as usize;
            out[n] = a2 as u32;
            n += 1;
            a0 = a2;
        }
        if a0 >= w {
            // Only the last entry can be the width (the end of the row).
            if n > 0 && out[n - 1] >= width {
                n -= 1;
            }
            break Ok(n);
        }
    };
    (dec.x0, dec.x1, dec.pos) = (x0, x1, pos);
    result
}

/// Encoder state of the bilevel codec (buffers reused across frames).
#[derive(Debug, Default)]
pub(crate) struct BilevelEncoder {
    recs: Vec<u32>,
    tmp_s: Vec<u32>,
    tmp_t: Vec<u32>,
    rans: Vec<u8>,
    /// rANS coder entries of the frame's models, by `model << 6 | symbol`.
    syms: Vec<EncSym>,
    tally: Tally,
    empty: Vec<u32>,
    tref: Vec<u32>,
    scratch: Vec<u32>,
    /// Global motion found for the last delta frame (the search starts there).
    motion: (i32, i32),
}

impl BilevelEncoder {
    /// Appends the payload of `cur` to `out`, as a delta frame against
    /// `(prev, prev_seq)` when given.
    pub(crate) fn encode(
        &mut self,
        cur: &Transitions,
        prev: Option<(&Transitions, u64)>,
        out: &mut Vec<u8>,
    ) -> bool {
        let w = cur.width;
        self.recs.clear();
        self.empty.clear();
        push_sentinels(&mut self.empty, w);
        let (dx, dy) = match prev {
            Some((p, _)) => self.search_motion(cur, p),
            None => (0, 0),
        };
        let mut prev = prev;
        // Key frames count symbols and write extra bits while coding; delta
        // frames only once the rows' references are chosen.
        self.tally.clear();
        let mut tallied = prev.is_none();
        let mut est_spatial = 0u64;
        let mut est_chosen = 0u64;
        let mut row_ctx = 0usize;
        for y in 0..cur.height as usize {
            let c = cur.row(y);
            let above: &[u32] = if y == 0 { &self.empty } else { cur.row(y - 1) };
            let mode = match prev {
                Some((p, _)) => {
                    motion_ref(p, y, dx, dy, &mut self.tref);
                    let pr = &self.tref[..];
                    self.tmp_s.clear();
                    let cs = if c == above {
                        0
                    } else {
                        code_row(above, c, w, M_MODE_S, &mut self.tmp_s)
                    };
                    est_spatial += cs as u64 + 4;
                    if c == pr {
                        est_chosen += 1;
                        ROW_COPY_PREV
                    } else if c == above {
                        est_chosen += 4;
                        ROW_COPY_ABOVE
                    } else {
                        self.tmp_t.clear();
                        let ct = code_row(pr, c, w, M_MODE_T, &mut self.tmp_t);
                        est_chosen += ct.min(cs) as u64 + 4;
                        if ct < cs {
                            ROW_TEMPORAL
                        } else {
                            ROW_SPATIAL
                        }
                    }
                }
                None => {
                    if c == above {
                        ROW_COPY_ABOVE
                    } else {
                        ROW_SPATIAL
                    }
                }
            };
            self.recs.push(rec(M_ROW + row_ctx, mode, 0));
            if tallied {
                self.tally.counts[M_ROW + row_ctx][mode as usize] += 1;
            }
            row_ctx = mode as usize;
            match (mode, prev) {
                (ROW_TEMPORAL, _) => self.recs.extend_from_slice(&self.tmp_t),
                (ROW_SPATIAL, Some(_)) => self.recs.extend_from_slice(&self.tmp_s),
                (ROW_SPATIAL, None) => {
                    code_row_g::<false>(
                        above,
                        c,
                        w,
                        M_MODE_S,
                        &mut self.recs,
                        Some(&mut self.tally),
                    );
                }
                _ => {}
            }
        }

        // A delta frame that is not clearly cheaper than a key frame (the
        // split statistics cost model bytes) is coded as a key frame.
        if prev.is_some() && est_chosen * 100 > est_spatial * 97 {
            prev = None;
            self.recs.clear();
            self.tally.clear();
            tallied = true;
            let mut row_ctx = 0usize;
            for y in 0..cur.height as usize {
                let c = cur.row(y);
                let above: &[u32] = if y == 0 { &self.empty } else { cur.row(y - 1) };
                let mode = if c == above {
                    ROW_COPY_ABOVE
                } else {
                    ROW_SPATIAL
                };
                self.recs.push(rec(M_ROW + row_ctx, mode, 0));
                self.tally.counts[M_ROW + row_ctx][mode as usize] += 1;
                row_ctx = mode as usize;
                if mode == ROW_SPATIAL {
                    code_row_g::<false>(
                        above,
                        c,
                        w,
                        M_MODE_S,
                        &mut self.recs,
                        Some(&mut self.tally),
                    );
                }
            }
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
        // Histograms and extra bits (forward), unless done while coding.
        if !tallied {
            for &r in &self.recs {
                self.tally.add(r);
            }
        }
        self.tally.bits.finish();
        let counts = &self.tally.counts;
        // Coder entries by `model << 6 | symbol` (the record's bits 22..32).
        self.syms
            .resize(MODEL_SLOTS * MAX_ALPHABET, EncSym::default());
        let mut freq = [0u32; MAX_ALPHABET];
        for (m, cnt) in counts.iter().enumerate().take(N_MODELS) {
            let n = alphabet(m);
            normalize(&cnt[..n], &mut freq[..n]);
            write_model(out, &freq[..n]);
            let mut start = 0;
            let entries = &mut self.syms[m * MAX_ALPHABET..][..n];
            for (e, &f) in entries.iter_mut().zip(&freq[..n]) {
                if f > 0 {
                    *e = EncSym::new(start, f);
                    start += f;
                }
            }
        }
        // rANS, backwards from the end of the buffer.
        let len = 2 * self.recs.len() + 16;
        if self.rans.len() < len {
            self.rans.resize(len, 0);
        }
        let syms = &self.syms[..MODEL_SLOTS * MAX_ALPHABET];
        let start = encode_lanes(&self.recs, &mut self.rans[..len], |r| {
            &syms[(r >> 22) as usize % (MODEL_SLOTS * MAX_ALPHABET)]
        });
        let stream = &self.rans[start..len];
        put_varint(out, stream.len() as u64);
        out.extend_from_slice(stream);
        out.extend_from_slice(&self.tally.bits.buf);
        prev.is_some()
    }

    /// Global motion `(dx, dy)` of `cur` relative to `prev`: a greedy step
    /// from the last frame's motion, judged by the estimated cost of coding
    /// every 32nd row against the moved reference.
    fn search_motion(&mut self, cur: &Transitions, prev: &Transitions) -> (i32, i32) {
        let h = cur.height as usize;
        let step = if h >= 128 { 32 } else { (h / 4).max(1) };
        let cost = |dx: i32, dy: i32, this: &mut Self| -> u64 {
            let mut total = 0u64;
            let mut y = step / 2;
            while y < h {
                motion_ref(prev, y, dx, dy, &mut this.tref);
                this.scratch.clear();
                total += code_row(
                    &this.tref,
                    cur.row(y),
                    cur.width,
                    M_MODE_T,
                    &mut this.scratch,
                ) as u64;
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
    rans: Vec<u16>,
    /// Toggle masks of the row being rendered, one u64 per 64 pixels.
    words: Vec<u64>,
}

impl Default for BilevelDecoder {
    fn default() -> Self {
        BilevelDecoder {
            models: DecTables::new(),
            above: Vec::new(),
            tref: Vec::new(),
            rans: Vec::new(),
            words: Vec::new(),
        }
    }
}

impl BilevelDecoder {
    /// Decodes `payload` into `out` (packed rows) and `cur` (transitions).
    /// `prev` must be given for delta payloads (checked by the caller).
    pub(crate) fn decode(
        &mut self,
        payload: &[u8],
        width: u32,
        height: u32,
        prev: Option<&Transitions>,
        cur: &mut Transitions,
        out: &mut [u8],
    ) -> Result<(), (usize, Reason)> {
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
                .read(m, payload, &mut pos, alphabet(m), |s| next_model(m, s))
                .map_err(|e| (pos, e))?;
        }
        let rans_len = get_varint(payload, &mut pos).ok_or((pos, "truncated rANS length"))?;
        let rest = &payload[pos.min(payload.len())..];
        if rans_len > rest.len() as u64 {
            return Err((pos, "rANS length past the end of the payload"));
        }
        let (rans, extra) = rest.split_at(rans_len as usize);
        RansDec::pad(rans, &mut self.rans);
        let mut dec = RansDec::new(rans, &self.rans).map_err(|e| (pos, e))?;
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
        let models = &*self.models.table;
        let mut row_ctx = 0usize;
        // Rows are decoded straight into `cur.tr`, the row above being the
        // previous list there (grown as needed, never shrunk).
        let mut start = 0usize;
        let mut above_start = usize::MAX;
        let nw = stride.div_ceil(8);
        if self.words.len() < nw {
            self.words.resize(nw, 0);
        }
        for y in 0..height as usize {
            let (rows_done, rows_rest) = out.split_at_mut(y * stride);
            let Some(dst) = rows_rest.get_mut(..stride) else {
                break;
            };
            let need = start + wu + 8;
            if cur.tr.len() < need {
                cur.tr.resize(need.max(cur.tr.len() * 2), 0);
            }
            let (done, rest) = cur.tr.split_at_mut(start);
            let above: &[u32] = if above_start == usize::MAX {
                &self.above
            } else {
                &done[above_start..]
            };
            let mode = dec.get(models, M_ROW + row_ctx) & 63;
            let n = match mode {
                ROW_SPATIAL => {
                    decode_row(above, width, M_MODE_S, models, &mut dec, &mut bits, rest)
                        .map_err(|e| (pos, e))?
                }
                ROW_TEMPORAL => {
                    let p = prev.ok_or((pos, "temporal row in a key frame"))?;
                    motion_ref(p, y, dx, dy, &mut self.tref);
                    decode_row(
                        &self.tref, width, M_MODE_T, models, &mut dec, &mut bits, rest,
                    )
                    .map_err(|e| (pos, e))?
                }
                ROW_COPY_PREV => {
                    let p = prev.ok_or((pos, "copied row in a key frame"))?;
                    motion_ref(p, y, dx, dy, &mut self.tref);
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
            above_start = start;
            start += n + SENTINELS;
            cur.off.push(start);
            row_ctx = mode as usize;
        }
        if !dec.finished_cleanly() {
            return Err((pos, "rANS stream does not end where it should"));
        }
        if !bits.exhausted_exactly() {
            return Err((
                pos + rans.len(),
                "extra-bit stream does not end where it should",
            ));
        }
        Ok(())
    }
}
