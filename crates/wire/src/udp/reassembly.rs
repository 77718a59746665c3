//! [`Reassembler`]: one stream's frames put back together from their
//! fragment datagrams.

use super::Datagram;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Frames in reassembly per stream at most: a fragment of a new frame when
/// all are taken gives the oldest up (or is dropped, when it is older
/// still).
pub const MAX_PARTIAL: usize = 3;

/// How far ahead of the last frame delivered a sequence number may be and
/// still be this stream's: no sender skips 2^32 frames.
pub const MAX_GAP: u64 = 1 << 32;

/// Frames given up, remembered per stream so that their late datagrams are
/// ignored (not reassembled and given up again).
pub const GIVEN_UP: usize = 64;

/// Why a frame was given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum GiveUp {
    /// [`MAX_PARTIAL`] frames were in reassembly and a newer one began.
    TooMany,
    /// A later frame completed first.
    LaterCompleted,
    /// No datagram for the time given to [`Reassembler::expire`].
    Silent(Duration),
    /// [`Reassembler::give_up_all`] (the caller's reason).
    All,
}

impl std::fmt::Display for GiveUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GiveUp::TooMany => f.write_str("too many frames in reassembly"),
            GiveUp::LaterCompleted => f.write_str("a later frame completed first"),
            GiveUp::Silent(gap) => write!(f, "no datagram for {} ms", gap.as_millis()),
            GiveUp::All => f.write_str("all given up"),
        }
    }
}

/// A frame given up, told to the caller (to count it, and give back the
/// memory its `admit` reserved).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GivenUp {
    /// Its sequence number.
    pub sequence: u64,
    /// Its length, as its datagrams said (what `admit` was asked for).
    pub frame_len: u32,
    /// Its datagrams.
    pub count: u16,
    /// Of them, never received.
    pub missing: u16,
    /// Why.
    pub why: GiveUp,
}

/// A frame whose every datagram came: its bytes, not yet read as a frame.
/// The caller reads it (`parse_frame`), tells the reassembler
/// ([`Reassembler::delivered`] or [`Reassembler::forget`]) and gives the
/// buffer back ([`Reassembler::recycle`]).
#[derive(Debug)]
pub struct Whole {
    /// The sequence number its datagrams carried.
    pub sequence: u64,
    /// Its length, as its datagrams said.
    pub frame_len: u32,
    buf: Vec<u8>,
}

impl Whole {
    /// The frame's bytes (`frame_len` of them).
    pub fn bytes(&self) -> &[u8] {
        &self.buf[..self.frame_len as usize]
    }

    /// The buffer, for [`Reassembler::recycle`] (it may be longer than the
    /// frame).
    pub fn into_buffer(self) -> Vec<u8> {
        self.buf
    }
}

/// What [`Reassembler::push`] did with a fragment.
#[derive(Debug)]
#[non_exhaustive]
pub enum Push {
    /// Stored: its frame waits for more datagrams.
    Pending,
    /// Its frame is whole.
    Complete(Whole),
    /// Its frame was delivered or given up already (or one within
    /// [`MAX_GAP`] after it was delivered): dropped.
    Late,
    /// More than [`MAX_GAP`] ahead of the last frame delivered: not this
    /// stream's; dropped.
    TooFar,
    /// Older than every frame in reassembly when [`MAX_PARTIAL`] are:
    /// dropped.
    Straggler,
    /// The caller's `admit` refused its frame (now counted as given up by
    /// the caller, and its later datagrams late).
    Refused,
    /// Its `frame_len`, `stride` or `count` differs from its frame's first
    /// fragment's: dropped.
    Disagrees,
    /// A copy of a fragment already stored: dropped.
    Duplicate,
    /// Not a fragment as [`Datagram::parse`](super::Datagram::parse)
    /// passes them (its kind, numbering, `count` against `frame_len` and
    /// `stride`, or its data's length): dropped before anything is stored.
    Malformed,
}

struct Partial {
    sequence: u64,
    frame_len: u32,
    stride: u16,
    got: Vec<bool>,
    missing: usize,
    buf: Vec<u8>,
    last: Instant,
}

impl Partial {
    fn given_up(&self, why: GiveUp) -> GivenUp {
        GivenUp {
            sequence: self.sequence,
            frame_len: self.frame_len,
            count: self.got.len() as u16,
            missing: self.missing as u16,
            why,
        }
    }
}

/// One stream's frames put back together from their fragment datagrams
/// (docs/PROTOCOL.md, "UDP transport", its receiving rules).
///
/// A [`Reassembler`] holds the frames of one stream (one source address and
/// `stream_id`) in reassembly, in order of their sequence numbers: when a
/// frame completes, older incomplete ones are given up; one that gets no
/// datagram for a while is given up by [`Reassembler::expire`]. Only a
/// frame the caller read whole ([`Reassembler::delivered`]) moves the point
/// below which datagrams are late, and only by at most [`MAX_GAP`]: a number
/// more than that ahead of it is not this stream's ([`Push::TooFar`]), and
/// one made-up datagram (say sequence 2^64 - 1) never makes later frames
/// late. Memory: at most [`MAX_PARTIAL`] frames, each no larger than its
/// `frame_len` (which [`Datagram::parse`](super::Datagram::parse) capped),
/// allocated only once the caller's `admit` agreed, and buffers reused.
///
/// No clock is read and nothing is logged: the caller passes the time and
/// is told each frame given up ([`GivenUp`]).
///
/// ```
/// use bitmask_wire::udp::{fragments, Datagram, Push, Reassembler};
/// use bitmask_wire::Limits;
/// use std::time::Instant;
///
/// let frame = vec![7u8; 3000]; // (a wire frame's bytes, in practice)
/// let mut r = Reassembler::new();
/// let mut whole = None;
/// for (header, data) in fragments(&frame, 42, 0, 1400).unwrap() {
///     let dgram = [&header.encode()[..], data].concat();
///     // ... sent, received ...
///     let (d, data) = Datagram::parse(&dgram, &Limits::default()).unwrap();
///     if let Push::Complete(w) = r.push(&d, data, Instant::now(), |_, _| true, |_| {}) {
///         whole = Some(w);
///     }
/// }
/// let w = whole.unwrap();
/// assert_eq!(w.bytes(), &frame[..]);
/// r.delivered(w.sequence); // (read as a frame whole: parse_frame)
/// r.recycle(w.into_buffer());
/// ```
#[derive(Default)]
pub struct Reassembler {
    partial: Vec<Partial>,
    done_upto: Option<u64>,
    given_up: VecDeque<u64>,
    spare: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Reassembler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reassembler")
            .field(
                "partial",
                &self.partial.iter().map(|p| p.sequence).collect::<Vec<_>>(),
            )
            .field("done_upto", &self.done_upto)
            .finish()
    }
}

impl Reassembler {
    /// Nothing in reassembly, nothing delivered.
    pub fn new() -> Reassembler {
        Reassembler::default()
    }

    /// Takes one fragment (a datagram of kind
    /// [`KIND_FRAGMENT`](super::KIND_FRAGMENT) checked by
    /// [`Datagram::parse`](super::Datagram::parse), and the data it
    /// carries) received at `now`. A fragment of a frame not yet in
    /// reassembly asks `admit(sequence, frame_len)` first (a memory
    /// budget); frames given up on the way are told to `gave_up`.
    pub fn push(
        &mut self,
        d: &Datagram,
        data: &[u8],
        now: Instant,
        admit: impl FnOnce(u64, u32) -> bool,
        mut gave_up: impl FnMut(GivenUp),
    ) -> Push {
        if d.check_fragment(data.len(), None).is_err() {
            return Push::Malformed;
        }
        if self.late(d.sequence) {
            return Push::Late;
        }
        if self.too_far(d.sequence) {
            return Push::TooFar;
        }
        let i = match self.partial.iter().position(|p| p.sequence == d.sequence) {
            Some(i) => i,
            None => {
                if self.partial.len() >= MAX_PARTIAL {
                    let oldest = (0..self.partial.len())
                        .min_by_key(|&i| self.partial[i].sequence)
                        .expect("MAX_PARTIAL > 0");
                    if d.sequence < self.partial[oldest].sequence {
                        return Push::Straggler;
                    }
                    gave_up(self.give_up(oldest, GiveUp::TooMany));
                }
                if !admit(d.sequence, d.frame_len) {
                    self.forget(d.sequence); // (its other datagrams are late)
                    return Push::Refused;
                }
                // Neither cleared nor shrunk: the fragments cover every
                // byte of `..frame_len` before the frame is whole (checked
                // above: count, stride and each fragment's length, and
                // below: each fragment agrees with the first),
                // so nothing stale is ever read, and a datagram claiming a
                // large frame costs no memset of it (once the buffer grew).
                let mut buf = self.spare.pop().unwrap_or_default();
                if buf.len() < d.frame_len as usize {
                    // exactly: a doubling growth would allocate past the cap
                    buf.reserve_exact(d.frame_len as usize - buf.len());
                    buf.resize(d.frame_len as usize, 0);
                }
                self.partial.push(Partial {
                    sequence: d.sequence,
                    frame_len: d.frame_len,
                    stride: d.stride,
                    got: vec![false; d.count as usize],
                    missing: d.count as usize,
                    buf,
                    last: now,
                });
                self.partial.len() - 1
            }
        };
        let p = &mut self.partial[i];
        // (`count` follows from these two: checked above)
        if p.frame_len != d.frame_len || p.stride != d.stride {
            return Push::Disagrees;
        }
        p.last = now;
        if p.got[d.index as usize] {
            return Push::Duplicate;
        }
        p.got[d.index as usize] = true;
        p.missing -= 1;
        // (in bounds: checked above, and `frame_len` agrees)
        let off = d.index as usize * d.stride as usize;
        p.buf[off..off + data.len()].copy_from_slice(data);
        if p.missing > 0 {
            return Push::Pending;
        }
        let p = self.partial.swap_remove(i);
        while let Some(j) = self.partial.iter().position(|q| q.sequence < p.sequence) {
            gave_up(self.give_up(j, GiveUp::LaterCompleted));
        }
        Push::Complete(Whole {
            sequence: p.sequence,
            frame_len: p.frame_len,
            buf: p.buf,
        })
    }

    /// Frame `sequence` was read whole (its CRC, length and header's
    /// sequence number checked): datagrams of it, and of frames up to
    /// [`MAX_GAP`] before it, are late from now on.
    pub fn delivered(&mut self, sequence: u64) {
        self.done_upto = Some(sequence);
    }

    /// The last frame [`delivered`](Self::delivered).
    pub fn last_delivered(&self) -> Option<u64> {
        self.done_upto
    }

    /// Makes the later datagrams of frame `sequence` late: one whose bytes
    /// were not a whole frame (its copies are not reassembled again), or
    /// one the caller counted otherwise (over its size cap).
    pub fn forget(&mut self, sequence: u64) {
        if self.given_up.len() == GIVEN_UP {
            self.given_up.pop_front();
        }
        self.given_up.push_back(sequence);
    }

    /// Gives a buffer back ([`Whole::into_buffer`]) for the next frames.
    pub fn recycle(&mut self, buf: Vec<u8>) {
        if self.spare.len() < MAX_PARTIAL {
            self.spare.push(buf);
        }
    }

    /// Whether a datagram of frame `sequence` comes too late: that frame
    /// or a later one (by at most [`MAX_GAP`]) was delivered, or that frame
    /// was given up or forgotten.
    pub fn late(&self, sequence: u64) -> bool {
        self.done_upto
            .is_some_and(|u| sequence <= u && u - sequence <= MAX_GAP)
            || self.given_up.contains(&sequence)
    }

    /// Whether frame `sequence` is more than [`MAX_GAP`] ahead of the last
    /// one delivered: no sender skips that many, so it is not this stream's.
    pub fn too_far(&self, sequence: u64) -> bool {
        self.done_upto
            .is_some_and(|u| sequence > u && sequence - u > MAX_GAP)
    }

    /// Gives up the frames that got no datagram for longer than `gap`
    /// before `now`.
    pub fn expire(&mut self, now: Instant, gap: Duration, mut gave_up: impl FnMut(GivenUp)) {
        while let Some(i) = self
            .partial
            .iter()
            .position(|p| now.saturating_duration_since(p.last) > gap)
        {
            gave_up(self.give_up(i, GiveUp::Silent(gap)));
        }
    }

    /// Gives up every frame in reassembly (the stream ends).
    pub fn give_up_all(&mut self, mut gave_up: impl FnMut(GivenUp)) {
        while !self.partial.is_empty() {
            gave_up(self.give_up(0, GiveUp::All));
        }
    }

    /// Moves every frame's last datagram `spent` later: time the caller
    /// spent elsewhere (writing a frame) and not reading datagrams does
    /// not count towards [`expire`](Self::expire)'s gap.
    pub fn credit(&mut self, spent: Duration) {
        for p in &mut self.partial {
            p.last += spent;
        }
    }

    /// The sequence numbers of the frames in reassembly (at most
    /// [`MAX_PARTIAL`]).
    pub fn pending(&self) -> impl Iterator<Item = u64> + '_ {
        self.partial.iter().map(|p| p.sequence)
    }

    /// The capacity of each buffer held, by frames in reassembly or spare
    /// for the next ones: at most [`MAX_PARTIAL`] buffers (unless more were
    /// given to [`recycle`](Self::recycle) than it handed out), none
    /// larger than the largest `frame_len` admitted.
    pub fn buffers(&self) -> impl Iterator<Item = usize> + '_ {
        self.partial
            .iter()
            .map(|p| p.buf.capacity())
            .chain(self.spare.iter().map(Vec::capacity))
    }

    fn give_up(&mut self, i: usize, why: GiveUp) -> GivenUp {
        let p = self.partial.swap_remove(i);
        let g = p.given_up(why);
        self.forget(p.sequence);
        self.recycle(p.buf);
        g
    }
}

#[cfg(test)]
mod tests {
    use super::super::{fragments, Datagram, DatagramError};
    use super::*;
    use crate::{Limits, WireError};

    /// The datagrams of a frame of `len` bytes (byte i = i * 7 + seq),
    /// `stride` bytes each, as parsed by a receiver.
    fn dgrams(seq: u64, len: usize, stride: u16) -> (Vec<u8>, Vec<(Datagram, Vec<u8>)>) {
        let frame: Vec<u8> = (0..len).map(|i| (i * 7) as u8 ^ seq as u8).collect();
        let v = fragments(&frame, 9, seq, stride)
            .unwrap()
            .map(|(d, data)| {
                let b = [&d.encode()[..], data].concat();
                let (d, data) = Datagram::parse(&b, &Limits::default()).unwrap();
                (d, data.to_vec())
            })
            .collect();
        (frame, v)
    }

    fn push(r: &mut Reassembler, d: &(Datagram, Vec<u8>), gave: &mut Vec<GivenUp>) -> Push {
        r.push(&d.0, &d.1, Instant::now(), |_, _| true, |g| gave.push(g))
    }

    /// Feeds `ds`; returns the frames completed, delivering each.
    fn feed(
        r: &mut Reassembler,
        ds: &[&(Datagram, Vec<u8>)],
        gave: &mut Vec<GivenUp>,
    ) -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        for d in ds {
            if let Push::Complete(w) = push(r, d, gave) {
                out.push((w.sequence, w.bytes().to_vec()));
                r.delivered(w.sequence);
                r.recycle(w.into_buffer());
            }
        }
        out
    }

    #[test]
    fn fragments_cover_the_frame_and_refuse_what_cannot_be_numbered() {
        let (frame, ds) = dgrams(3, 1000, 300);
        assert_eq!(ds.len(), 4);
        assert_eq!(
            ds.iter().map(|d| d.1.len()).collect::<Vec<_>>(),
            [300, 300, 300, 100]
        );
        assert_eq!(
            ds.iter().map(|d| d.1.clone()).collect::<Vec<_>>().concat(),
            frame
        );
        assert!(ds
            .iter()
            .enumerate()
            .all(|(i, d)| d.0.index as usize == i && d.0.count == 4));
        let big = vec![0u8; 65536];
        for (frame, stride, count) in [(&big[..], 1, 65536), (&big[..0], 10, 0), (&big[..10], 0, 0)]
        {
            let e = fragments(frame, 1, 0, stride).unwrap_err();
            assert!(
                matches!(
                    &e,
                    WireError::BadDatagram(DatagramError::CannotFragment { frame_len: l, stride: s, count: c })
                        if *l == frame.len() && *s == stride && *c == count
                ),
                "{e:?}"
            );
        }
        assert_eq!(fragments(&big[..65535], 1, 0, 1).unwrap().len(), 65535);
    }

    #[test]
    fn frames_complete_in_any_order_and_copies_are_dropped() {
        let mut r = Reassembler::new();
        let mut gave = Vec::new();
        let (f0, d0) = dgrams(0, 1000, 100);
        let (f1, d1) = dgrams(1, 50, 100);
        // frame 0 backwards, a copy of one of its fragments, frame 1 after
        let mut order: Vec<&(Datagram, Vec<u8>)> = d0.iter().rev().collect();
        order.insert(3, &d0[7]);
        assert!(matches!(push(&mut r, order[0], &mut gave), Push::Pending));
        let mut kinds = Vec::new();
        for d in &order[1..4] {
            kinds.push(push(&mut r, d, &mut gave));
        }
        assert!(matches!(kinds[2], Push::Duplicate), "{kinds:?}");
        let got = feed(&mut r, &order[4..], &mut gave);
        assert_eq!(got, [(0, f0)]);
        assert_eq!(feed(&mut r, &[&d1[0]], &mut gave), [(1, f1)]);
        // their copies come late
        assert!(matches!(push(&mut r, &d0[0], &mut gave), Push::Late));
        assert!(gave.is_empty());
        assert_eq!(r.pending().count(), 0);
    }

    #[test]
    fn a_later_frame_completing_gives_the_older_up_and_its_datagrams_are_late() {
        let mut r = Reassembler::new();
        let mut gave = Vec::new();
        let (_, d5) = dgrams(5, 300, 100);
        let (f6, d6) = dgrams(6, 300, 100);
        push(&mut r, &d5[0], &mut gave);
        let got = feed(&mut r, &d6.iter().collect::<Vec<_>>(), &mut gave);
        assert_eq!(got, [(6, f6)]);
        assert_eq!(
            gave,
            [GivenUp {
                sequence: 5,
                frame_len: 300,
                count: 3,
                missing: 2,
                why: GiveUp::LaterCompleted
            }]
        );
        assert!(matches!(push(&mut r, &d5[1], &mut gave), Push::Late));
    }

    #[test]
    fn at_most_max_partial_frames_and_older_stragglers_are_dropped() {
        let mut r = Reassembler::new();
        let mut gave = Vec::new();
        let ds: Vec<_> = (10..10 + MAX_PARTIAL as u64 + 1)
            .map(|s| dgrams(s, 200, 100).1)
            .collect();
        for d in &ds[..MAX_PARTIAL] {
            assert!(matches!(push(&mut r, &d[0], &mut gave), Push::Pending));
        }
        assert!(gave.is_empty());
        push(&mut r, &ds[MAX_PARTIAL][0], &mut gave);
        assert_eq!(r.pending().count(), MAX_PARTIAL);
        assert_eq!(
            (gave.len(), gave[0].sequence, gave[0].why),
            (1, 10, GiveUp::TooMany)
        );
        // older than all in reassembly: neither stored nor giving one up
        let (_, d9) = dgrams(9, 200, 100);
        assert!(matches!(push(&mut r, &d9[0], &mut gave), Push::Straggler));
        assert_eq!(gave.len(), 1);
        r.give_up_all(|g| gave.push(g));
        assert_eq!(r.pending().count(), 0);
        let mut seqs: Vec<u64> = gave[1..].iter().map(|g| g.sequence).collect();
        seqs.sort();
        assert_eq!(seqs, [11, 12, 13]);
    }

    #[test]
    fn silence_gives_a_frame_up_and_credited_time_does_not_count() {
        let mut r = Reassembler::new();
        let mut gave = Vec::new();
        let (_, d) = dgrams(1, 200, 100);
        let t0 = Instant::now();
        r.push(&d[0].0, &d[0].1, t0, |_, _| true, |_| {});
        let gap = Duration::from_millis(250);
        r.expire(t0 + gap, gap, |g| gave.push(g));
        assert!(gave.is_empty());
        r.credit(Duration::from_millis(400));
        r.expire(t0 + gap * 2, gap, |g| gave.push(g));
        assert!(gave.is_empty());
        r.expire(t0 + Duration::from_millis(651), gap, |g| gave.push(g));
        assert_eq!(gave.len(), 1);
        assert_eq!(gave[0].why, GiveUp::Silent(gap));
        assert_eq!(gave[0].why.to_string(), "no datagram for 250 ms");
    }

    #[test]
    fn only_a_delivered_frame_makes_older_datagrams_late_and_far_ones_foreign() {
        let mut r = Reassembler::new();
        let mut gave = Vec::new();
        // a made-up number, never completed: later frames are not late
        let (_, forged) = dgrams(u64::MAX, 300, 100);
        push(&mut r, &forged[0], &mut gave);
        let (f3, d3) = dgrams(3, 100, 100);
        assert_eq!(feed(&mut r, &[&d3[0]], &mut gave), [(3, f3)]);
        assert_eq!(r.last_delivered(), Some(3));
        // a whole frame completing gave the forged one up? No: it is newer
        // by number; it is left to expire (or the cap)
        assert!(gave.is_empty());
        let (_, far) = dgrams(3 + MAX_GAP + 1, 100, 100);
        assert!(matches!(push(&mut r, &far[0], &mut gave), Push::TooFar));
        let (f4, d4) = dgrams(3 + MAX_GAP, 100, 100);
        assert_eq!(feed(&mut r, &[&d4[0]], &mut gave), [(3 + MAX_GAP, f4)]);
        // MAX_GAP below the last delivered is late, further below a new
        // numbering (a sender restarted with the same stream id)
        assert!(matches!(push(&mut r, &d3[0], &mut gave), Push::Late));
        let (f2, d2) = dgrams(2, 100, 100);
        assert_eq!(feed(&mut r, &[&d2[0]], &mut gave), [(2, f2)]);
    }

    #[test]
    fn a_refused_frame_allocates_nothing_and_its_datagrams_are_late() {
        let mut r = Reassembler::new();
        let (_, d) = dgrams(7, 300, 100);
        let mut asked = None;
        let p = r.push(
            &d[0].0,
            &d[0].1,
            Instant::now(),
            |s, l| {
                asked = Some((s, l));
                false
            },
            |_| {},
        );
        assert!(matches!(p, Push::Refused));
        assert_eq!(asked, Some((7, 300)));
        assert_eq!(r.pending().count(), 0);
        assert!(matches!(push(&mut r, &d[1], &mut Vec::new()), Push::Late));
    }

    #[test]
    fn a_fragment_disagreeing_with_its_frame_is_dropped() {
        let mut r = Reassembler::new();
        let (_, a) = dgrams(1, 300, 100);
        let (_, b) = dgrams(1, 400, 100);
        push(&mut r, &a[0], &mut Vec::new());
        assert!(matches!(
            push(&mut r, &b[1], &mut Vec::new()),
            Push::Disagrees
        ));
        // hand-made datagrams that Datagram::parse refuses: dropped, no
        // panic, nothing stored
        let mut r = Reassembler::new();
        for edit in [
            (|d: &mut Datagram| d.index = 5) as fn(&mut Datagram),
            |d| d.count = 0,
            |d| (d.count, d.index) = (0, 0),
            |d| d.stride = 0,
            |d| d.frame_len = 0,
            |d| d.frame_len = 1000,
            |d| d.kind = 1,
        ] {
            let mut odd = a[1].clone();
            edit(&mut odd.0);
            assert!(
                matches!(push(&mut r, &odd, &mut Vec::new()), Push::Malformed),
                "{:?}",
                odd.0
            );
        }
        let mut short = a[1].clone();
        short.1.pop();
        assert!(matches!(
            push(&mut r, &short, &mut Vec::new()),
            Push::Malformed
        ));
        assert_eq!(r.pending().count(), 0);
        assert_eq!(r.buffers().count(), 0);
    }

    impl Reassembler {
        /// The module's invariants.
        fn check(&self, max_len: usize) {
            assert!(self.partial.len() <= MAX_PARTIAL, "frames in reassembly");
            assert!(self.buffers().count() <= MAX_PARTIAL, "buffers");
            assert!(
                self.buffers().all(|c| c <= max_len),
                "a buffer over the cap"
            );
            assert!(self.given_up.len() <= GIVEN_UP);
            let mut seqs = std::collections::HashSet::new();
            for p in &self.partial {
                assert!(seqs.insert(p.sequence), "frame {} twice", p.sequence);
                assert!(p.buf.len() >= p.frame_len as usize);
                assert_eq!(
                    p.got.len(),
                    (p.frame_len as usize).div_ceil(p.stride as usize)
                );
                assert_eq!(p.missing, p.got.iter().filter(|g| !**g).count());
                assert!(p.missing > 0, "a complete frame left in reassembly");
                assert!(!self.late(p.sequence), "frame {} late yet held", p.sequence);
            }
        }
    }

    /// Byte `i` of frame `seq` of `len` bytes.
    fn content(seq: u64, len: usize, i: usize) -> u8 {
        (seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (len as u64 * 31) ^ (i as u64 * 131))
            .to_le_bytes()[i % 8]
    }

    proptest::proptest! {
        /// Random frames, cut at random strides (several variants of one
        /// number), their datagrams dropped, copied and shuffled, time
        /// passing: the invariants hold after every step, and every frame
        /// completed is the frame its datagrams came from.
        #[test]
        fn random_datagrams_keep_the_bounds_and_never_make_a_wrong_frame(
            frames in proptest::collection::vec(
                (proptest::prop_oneof![0u64..12, proptest::strategy::Just(u64::MAX), (MAX_GAP - 2)..(MAX_GAP + 12)],
                 1usize..1500, 64u16..400),
                1..12),
            ops in proptest::collection::vec((0usize..1000, 0u8..20), 0..600),
        ) {
            let mut pool: Vec<(Datagram, Vec<u8>)> = Vec::new();
            let mut max_len = 0;
            for &(seq, len, stride) in &frames {
                let frame: Vec<u8> = (0..len).map(|i| content(seq, len, i)).collect();
                max_len = max_len.max(len);
                for (d, data) in fragments(&frame, 1, seq, stride).unwrap() {
                    pool.push((d, data.to_vec()));
                }
            }
            let mut r = Reassembler::new();
            let t0 = Instant::now();
            let mut now = t0;
            for (pick, what) in ops {
                match what {
                    0 => {
                        now += Duration::from_millis(300);
                        r.expire(now, Duration::from_millis(250), |_| {});
                    }
                    1 => r.give_up_all(|_| {}),
                    _ => {
                        let (d, data) = &pool[pick % pool.len()];
                        let refuse = what == 2;
                        if let Push::Complete(w) = r.push(d, data, now, |_, _| !refuse, |_| {}) {
                            let len = w.frame_len as usize;
                            proptest::prop_assert!(
                                (0..len).all(|i| w.bytes()[i] == content(w.sequence, len, i)),
                                "frame {} of {len} B: not its bytes",
                                w.sequence
                            );
                            if what % 3 == 0 {
                                r.forget(w.sequence)
                            } else {
                                r.delivered(w.sequence)
                            }
                            r.recycle(w.into_buffer());
                        }
                    }
                }
                r.check(max_len);
            }
        }
    }

    #[test]
    fn reused_buffers_leave_nothing_stale() {
        let mut r = Reassembler::new();
        let mut gave = Vec::new();
        for (seq, len) in [(0, 5000), (1, 700), (2, 3000), (3, 1)] {
            let (f, d) = dgrams(seq, len, 256);
            let got = feed(&mut r, &d.iter().collect::<Vec<_>>(), &mut gave);
            assert_eq!(got, [(seq, f)]);
        }
    }
}
