//! Deterministic randomized hostile-input tests of UDP reassembly
//! ([`on_dgram`], [`sweep`], on top of `bitmask_wire::udp::Datagram::parse`).
//!
//! Real frames (every codec, delta frames too) of several senders are cut
//! into datagrams as the sender does, then dropped, duplicated, reordered,
//! byte-flipped, truncated, extended, given other fields (index, count,
//! stride, frame length, kind, sequence, stream id, source address), mixed
//! with garbage and with other frames under the same numbers, and fed to
//! the receiver's reassembly with time passing now and then. After every
//! datagram the documented bounds are checked (streams, frames in
//! reassembly, buffers, remembered numbers), and every frame delivered must
//! be exactly one that was sent: same header, same decoded mask bit for bit.

use super::*;
use crate::session::{FrameObserver, Sinks};
use crate::stats::SenderHandle;
use crate::test_rng::Rng;
use bitmask_codec::{Choice, Encoder};
use bitmask_wire::udp::{KIND_FRAGMENT, MAX_GAP, MAX_PARTIAL};
use bitmask_wire::{encode_frame, Header, Hello};
use std::collections::HashSet;
use std::sync::Mutex;

/// Every frame delivered to the data path: sender name, header, decoded mask.
#[derive(Default)]
struct Delivered(Mutex<Vec<(String, Header, Vec<u8>)>>);

impl FrameObserver for Delivered {
    fn frame(&self, sender: &str, header: &Header, mask: &[u8], _: &SenderHandle) {
        self.0
            .lock()
            .unwrap()
            .push((sender.into(), *header, mask.to_vec()));
    }
}

fn hub(limits: Limits, max_conns: usize) -> (Arc<Hub>, Arc<Delivered>) {
    let (tx, _rx) = std::sync::mpsc::channel();
    let sinks = Sinks {
        shared: None,
        per_sender: None,
    };
    let hub = Hub::new(limits, Duration::from_secs(10), sinks, None, max_conns, tx);
    let seen = Arc::new(Delivered::default());
    hub.observe(seen.clone());
    (hub, seen)
}

/// A `w`x`h` mask in the wire layout, padding bits 0: blobs and noise, so
/// that every codec has something to do (and delta frames something to
/// change).
fn mask(rng: &mut Rng, w: u32, h: u32) -> Vec<u8> {
    let stride = w.div_ceil(8) as usize;
    let mut m = vec![0u8; stride * h as usize];
    let style = rng.below(4);
    for y in 0..h as usize {
        for x in 0..w as usize {
            let on = match style {
                0 => rng.pct(50),
                1 => (x / 5 + y / 3) % 2 == 0,
                2 => x * x + y * y < (w as usize * h as usize) / 3,
                _ => rng.pct(3),
            };
            if on {
                m[y * stride + x / 8] |= 0x80 >> (x % 8);
            }
        }
    }
    m
}

/// A datagram header followed by `data`.
fn dgram(d: Dgram, data: &[u8]) -> Vec<u8> {
    let mut b = d.encode().to_vec();
    b.extend_from_slice(data);
    b
}

/// `frame` cut into fragments of `stride` bytes, as the sender cuts it.
fn cut(frame: &[u8], stream_id: u32, sequence: u64, stride: usize) -> Vec<Vec<u8>> {
    let count = frame.len().div_ceil(stride);
    assert!(count <= u16::MAX as usize && stride <= u16::MAX as usize);
    frame
        .chunks(stride)
        .enumerate()
        .map(|(i, chunk)| {
            let d = Dgram {
                kind: KIND_FRAGMENT,
                index: i as u16,
                count: count as u16,
                stride: stride as u16,
                stream_id,
                sequence,
                frame_len: frame.len() as u32,
            };
            dgram(d, chunk)
        })
        .collect()
}

fn hello_dgram(stream_id: u32, name: &str) -> Vec<u8> {
    let hello = Hello::new(name).unwrap().encode();
    let d = Dgram {
        kind: KIND_HELLO,
        index: 0,
        count: 1,
        stride: hello.len() as u16,
        stream_id,
        sequence: 0,
        frame_len: hello.len() as u32,
    };
    dgram(d, &hello)
}

/// One datagram on the wire: where it comes from, its bytes, and whether a
/// mutation moved it to another sender's stream (it may then deliver a
/// sent frame under that sender's name: UDP is not authenticated).
#[derive(Clone)]
struct Wire {
    from: SocketAddr,
    bytes: Vec<u8>,
    moved: bool,
}

/// What was sent, by timestamp (unique per frame): sender name, header,
/// mask. Only these may come out.
type Sent = HashMap<u64, (String, Header, Vec<u8>)>;

/// One sender process: its address, stream id, encoder, numbering.
struct Sender {
    from: SocketAddr,
    name: String,
    stream_id: u32,
    encoder: Encoder,
    next_seq: u64,
    stride: usize,
    /// Whether its frames may be delta frames: other frames are never
    /// injected under its numbers (an injected frame with the number of a
    /// delta frame's reference would make the next delta frame decode to
    /// something never sent, which UDP's lack of authentication allows).
    delta: bool,
}

struct Scenario {
    limits: Limits,
    max_conns: usize,
    senders: Vec<Sender>,
    wire: Vec<Wire>,
    sent: Sent,
    /// Frames the receiver must deliver when the wire is left alone.
    deliverable: Vec<u64>,
    next_ts: u64,
}

impl Scenario {
    fn new(rng: &mut Rng, n_senders: usize) -> Scenario {
        let dims = [(64, 32), (200, 50), (33, 17), (512, 8), (16, 300)];
        let (mw, mh) = dims[rng.below(dims.len() as u64) as usize];
        let choices = [
            Choice::Raw,
            Choice::Bilevel,
            Choice::Lz4,
            Choice::Zstd,
            Choice::Auto,
        ];
        let senders = (0..n_senders)
            .map(|k| {
                let choice = choices[rng.below(choices.len() as u64) as usize];
                let stride = match rng.below(4) {
                    0 => rng.range(1, 16),
                    1 => rng.range(17, 200),
                    2 => rng.range(200, 1444),
                    _ => 1444,
                } as usize;
                Sender {
                    from: format!("10.0.0.{}:{}", k + 1, 5000 + k).parse().unwrap(),
                    name: format!("cam{k}"),
                    stream_id: rng.next() as u32,
                    encoder: Encoder::new(choice, rng.range(0, 5) as u32),
                    // disjoint numbering per sender (within MAX_GAP of each other)
                    next_seq: (k as u64 + 1) * 1_000_000 + rng.below(1000),
                    stride,
                    delta: matches!(choice, Choice::Bilevel | Choice::Auto),
                }
            })
            .collect();
        Scenario {
            limits: Limits::for_dimensions(mw, mh),
            max_conns: n_senders + rng.below(3) as usize,
            senders,
            wire: Vec::new(),
            sent: HashMap::new(),
            deliverable: Vec::new(),
            next_ts: 1_700_000_000_000_000 + rng.below(1 << 40),
        }
    }

    fn hello(&mut self, k: usize) {
        let s = &self.senders[k];
        self.wire.push(Wire {
            from: s.from,
            bytes: hello_dgram(s.stream_id, &s.name),
            moved: false,
        });
    }

    /// Sender `k`'s next frame onto the wire (a gap in its numbering now and then).
    fn frame(&mut self, rng: &mut Rng, k: usize) {
        let (mw, mh) = (self.limits.max_width, self.limits.max_height);
        // now and then a frame over this receiver's --max-size
        let big = rng.pct(4);
        let w = if big {
            mw + 1
        } else {
            rng.range(1, mw as u64) as u32
        };
        let h = if big {
            mh
        } else {
            rng.range(1, mh as u64) as u32
        };
        let m = mask(rng, w, h);
        let ts = self.next_ts;
        self.next_ts += 1 + rng.below(50_000);
        let s = &mut self.senders[k];
        if rng.pct(5) {
            s.next_seq += rng.range(1, 3); // frames it dropped itself
        }
        let seq = s.next_seq;
        s.next_seq += 1;
        let mut payload = Vec::new();
        let info = s.encoder.encode(&m, w, h, seq, &mut payload).unwrap();
        let mut hdr = Header::new(w, h, seq, info.codec, payload.len() as u32);
        hdr.flags = info.flags;
        hdr.timestamp_us = ts;
        let mut frame = Vec::new();
        encode_frame(&hdr, &payload, &mut frame);
        self.sent.insert(ts, (s.name.clone(), hdr, m));
        if big {
            // the receiver refuses it: the next frame must not refer to it
            s.encoder.force_keyframe();
        } else {
            self.deliverable.push(ts);
        }
        for bytes in cut(&frame, s.stream_id, seq, s.stride) {
            self.wire.push(Wire {
                from: s.from,
                bytes,
                moved: false,
            });
        }
    }

    /// Sender `k` restarts: a new stream id, a new numbering, key frame first.
    fn restart(&mut self, rng: &mut Rng, k: usize) {
        let s = &mut self.senders[k];
        s.stream_id = rng.next() as u32;
        // (a numbering of its own, so that a delta frame moved from the
        // old stream to the new one never finds a reference there)
        s.next_seq = (s.next_seq / 100_000 + 1) * 100_000 + rng.below(1000);
        s.encoder.force_keyframe();
    }

    /// The frames and hellos of every sender, interleaved.
    fn play(&mut self, rng: &mut Rng, frames: usize) {
        for k in 0..self.senders.len() {
            self.hello(k);
        }
        for _ in 0..frames {
            let k = rng.below(self.senders.len() as u64) as usize;
            if rng.pct(3) {
                self.restart(rng, k);
                self.hello(k);
            }
            self.frame(rng, k);
            if rng.pct(20) {
                self.hello(k);
            }
        }
    }
}

/// Rewrites a field of a datagram header in place (the datagram may have
/// been cut shorter than its header by an earlier mutation).
fn set_field(b: &mut [u8], at: usize, v: &[u8]) {
    if b.len() >= at + v.len() {
        b[at..at + v.len()].copy_from_slice(v);
    }
}

/// A hostile copy of `wire`: every kind of damage, in proportions drawn
/// per scenario so that some are mild and some are a storm.
fn mutate(rng: &mut Rng, sc: &Scenario) -> Vec<Wire> {
    let rate = [0, 2, 10, 30, 70][rng.below(5) as usize];
    let real_ids: Vec<(SocketAddr, u32)> =
        sc.senders.iter().map(|s| (s.from, s.stream_id)).collect();
    let mut out: Vec<Wire> = Vec::with_capacity(sc.wire.len() * 2);
    for w in &sc.wire {
        if !rng.pct(rate) {
            out.push(w.clone());
            continue;
        }
        let mut w = w.clone();
        let b = &mut w.bytes;
        match rng.below(20) {
            0 => continue, // lost
            1 => {
                out.push(w.clone()); // duplicated (again below)
            }
            2 => {
                // a flipped bit or byte anywhere
                if !b.is_empty() {
                    let i = rng.below(b.len() as u64) as usize;
                    b[i] ^= if rng.pct(50) {
                        1 << rng.below(8)
                    } else {
                        rng.byte() | 1
                    };
                }
            }
            3 => {
                // a byte of the datagram header
                let i = rng.below(DGRAM_HEADER_LEN as u64) as usize;
                if i < b.len() {
                    b[i] = rng.byte();
                }
            }
            4 => {
                let n = rng.below(b.len() as u64 + 1) as usize;
                b.truncate(n);
            }
            5 => {
                let n = rng.range(1, 64) as usize;
                let extra = rng.bytes(n);
                b.extend_from_slice(&extra);
            }
            6 => {
                let v = [rng.below(3), rng.next()][rng.below(2) as usize] as u16;
                set_field(b, 6, &v.to_le_bytes()); // index
            }
            7 => {
                let v = [rng.below(4), rng.next()][rng.below(2) as usize] as u16;
                set_field(b, 8, &v.to_le_bytes()); // count
            }
            8 => {
                let v = [rng.range(1, 4), rng.next()][rng.below(2) as usize] as u16;
                set_field(b, 10, &v.to_le_bytes()); // stride
            }
            9 => {
                // the frame length, and the count and stride that fit it
                let len = rng.range(1, 2000) as u32;
                let stride = rng.range(1, 1500) as u16;
                let count = len.div_ceil(stride as u32) as u16;
                let index = rng.below(count as u64) as u16;
                set_field(b, 6, &index.to_le_bytes());
                set_field(b, 8, &count.to_le_bytes());
                set_field(b, 10, &stride.to_le_bytes());
                set_field(b, 24, &len.to_le_bytes());
            }
            10 => {
                // another sequence number: near, far, the edges
                if b.len() >= 24 {
                    let q = u64::from_le_bytes(b[16..24].try_into().unwrap());
                    let v = match rng.below(6) {
                        0 => q.wrapping_add(1),
                        1 => q.wrapping_sub(1),
                        2 => u64::MAX - rng.below(2),
                        3 => rng.below(4),
                        4 => q.wrapping_add(MAX_GAP + rng.below(3)),
                        _ => rng.next(),
                    };
                    b[16..24].copy_from_slice(&v.to_le_bytes());
                }
            }
            11 => {
                // another stream id: a fresh one, or another sender's
                if rng.pct(50) {
                    set_field(b, 12, &(rng.next() as u32).to_le_bytes());
                } else {
                    let (from, id) = real_ids[rng.below(real_ids.len() as u64) as usize];
                    set_field(b, 12, &id.to_le_bytes());
                    w.from = from;
                    w.moved = true;
                }
            }
            12 => {
                // another source port (a NAT rebinding), or another host
                let port = rng.range(1, 65535) as u16;
                w.from = if rng.pct(50) {
                    SocketAddr::new(w.from.ip(), port)
                } else {
                    format!("10.9.{}.{}:{port}", rng.below(4), rng.below(4))
                        .parse()
                        .unwrap()
                };
            }
            13 => {
                let v = rng.below(3) as u8;
                set_field(b, 5, &[v]); // kind
            }
            14 => {
                // garbage, short or long, after this one
                let n = rng.below(1600) as usize;
                let mut g = rng.bytes(n);
                if rng.pct(50) && g.len() >= 5 {
                    g[..4].copy_from_slice(&DGRAM_MAGIC);
                    g[4] = DGRAM_VERSION;
                }
                out.push(Wire {
                    from: w.from,
                    bytes: g,
                    moved: false,
                });
            }
            15 => {
                // a datagram that parses, with made-up data, of a frame
                // near this one's number
                if b.len() >= DGRAM_HEADER_LEN {
                    let mut d = Dgram::parse(b, &Limits::for_dimensions(1 << 14, 1 << 14))
                        .map(|(d, _)| d)
                        .unwrap_or(Dgram {
                            kind: KIND_FRAGMENT,
                            index: 0,
                            count: 1,
                            stride: 1,
                            stream_id: 0,
                            sequence: 0,
                            frame_len: 1,
                        });
                    d.frame_len = rng.range(1, 1200) as u32;
                    d.stride = rng.range(1, 600) as u16;
                    d.count = d.frame_len.div_ceil(d.stride as u32) as u16;
                    d.index = rng.below(d.count as u64) as u16;
                    d.sequence = d.sequence.wrapping_add(rng.below(5)).wrapping_sub(2);
                    let off = d.index as usize * d.stride as usize;
                    let n = (d.frame_len as usize - off).min(d.stride as usize);
                    let data = rng.bytes(n);
                    *b = dgram(d, &data);
                }
            }
            16 => {
                // much later (reordered far)
                let at = out.len().saturating_sub(rng.below(40) as usize);
                out.insert(at, w);
                continue;
            }
            17 => {
                // an empty datagram, or the header alone
                b.truncate([0, DGRAM_HEADER_LEN][rng.below(2) as usize]);
            }
            18 => {
                // magic or version
                let i = rng.below(5) as usize;
                if i < b.len() {
                    b[i] ^= 0x20;
                }
            }
            _ => {
                // a replay of an earlier datagram of the wire
                if !out.is_empty() {
                    let j = rng.below(out.len() as u64) as usize;
                    let again = out[j].clone();
                    out.push(again);
                }
            }
        }
        out.push(w);
    }
    // local reordering: swaps within a short window
    let swaps = out.len() * rate as usize / 100;
    for _ in 0..swaps {
        if out.len() < 2 {
            break;
        }
        let i = rng.below(out.len() as u64 - 1) as usize;
        let j = (i + 1 + rng.below(8) as usize).min(out.len() - 1);
        out.swap(i, j);
    }
    out
}

/// Frames under the numbers of sender `k`'s frames, other content, same
/// length and cut (an injector, or a restarted sender reusing its stream
/// id): whichever of the two is delivered, it must be one of them whole,
/// never a mix. Only for senders without delta frames (see [`Sender::delta`]).
fn conflicting(rng: &mut Rng, sc: &mut Scenario) {
    let mut extra = Vec::new();
    let mut originals: Vec<(u64, String, Header)> = sc
        .sent
        .iter()
        .map(|(ts, (n, h, _))| (*ts, n.clone(), *h))
        .collect();
    originals.sort_by_key(|o| o.0); // (the same draws in every run)
    for (_, name, h) in originals {
        let Some(s) = sc.senders.iter().find(|s| s.name == name) else {
            continue;
        };
        if s.delta || !rng.pct(15) || h.codec != bitmask_wire::CODEC_RAW {
            continue;
        }
        let m = mask(rng, h.width, h.height);
        let mut hdr = h;
        hdr.timestamp_us = sc.next_ts;
        sc.next_ts += 1;
        let mut frame = Vec::new();
        encode_frame(&hdr, &m, &mut frame);
        sc.sent.insert(hdr.timestamp_us, (name.clone(), hdr, m));
        // (its stream id may be the restarted one's: then it is a frame
        // the receiver takes as any other, under the same name)
        for bytes in cut(&frame, s.stream_id, h.sequence, s.stride) {
            extra.push(Wire {
                from: s.from,
                bytes,
                moved: false,
            });
        }
    }
    for w in extra {
        let at = rng.below(sc.wire.len() as u64 + 1) as usize;
        sc.wire.insert(at, w);
    }
}

/// The receiver's UDP side under test, with every check after each datagram.
struct Bench {
    hub: Arc<Hub>,
    seen: Arc<Delivered>,
    streams: HashMap<(SocketAddr, u32), Stream>,
    logs: Logs,
    max_len: usize,
    delivered: usize,
    /// A datagram moved to another sender's stream was fed (a hello among
    /// them may have named a stream after another sender).
    moved: bool,
}

impl Bench {
    fn new(limits: Limits, max_conns: usize) -> Bench {
        let (hub, seen) = hub(limits, max_conns);
        Bench {
            hub,
            seen,
            streams: HashMap::new(),
            logs: Logs::default(),
            max_len: HEADER_LEN + limits.max_payload as usize,
            delivered: 0,
            moved: false,
        }
    }

    /// What `serve_udp` does with one received datagram, then the checks.
    fn feed(&mut self, w: &Wire, sent: &Sent) {
        let Ok((d, data)) = parse(&w.bytes, &self.hub.limits) else {
            self.check();
            return;
        };
        let key = (w.from, d.stream_id);
        self.moved |= w.moved;
        let before = self.streams.get(&key).map(|s| s.reasm.last_delivered());
        on_dgram(
            &self.hub,
            &mut self.streams,
            &mut self.logs,
            w.from,
            d,
            data,
            None,
        );
        let got = self.seen.0.lock().unwrap();
        assert!(got.len() <= self.delivered + 1, "one datagram, one frame");
        if got.len() == self.delivered + 1 {
            let (name, h, m) = &got[self.delivered];
            let Some((sent_name, sent_h, sent_m)) = sent.get(&h.timestamp_us) else {
                panic!("delivered a frame never sent: {h:?} from {}", w.from);
            };
            assert_eq!(h, sent_h, "a header never sent");
            assert!(
                m == sent_m,
                "frame {} of {name}: not the mask sent",
                h.sequence
            );
            assert_eq!(h.sequence, d.sequence, "delivered under another number");
            if !self.moved && w.from.ip().to_string().starts_with("10.0.0.") {
                assert!(
                    name == sent_name || name.starts_with(&format!("{sent_name}@")),
                    "{sent_name}'s frame {} delivered as {name}'s",
                    h.sequence
                );
            }
            let s = &self.streams[&key];
            assert_eq!(s.reasm.last_delivered(), Some(h.sequence));
            assert_eq!(s.ctx.as_ref().map(|c| c.name()), Some(name.as_str()));
            // in order within a stream (or a new numbering far below)
            if let Some(Some(prev)) = before {
                assert!(
                    h.sequence > prev || prev - h.sequence > MAX_GAP,
                    "frame {} delivered after frame {prev}",
                    h.sequence
                );
            }
            self.delivered += 1;
        }
        drop(got);
        self.check();
    }

    /// The documented bounds.
    fn check(&self) {
        assert!(self.streams.len() <= self.hub.max_conns, "--max-senders");
        for s in self.streams.values() {
            // (the reassembler's own invariants are checked by its tests
            // in bitmask-wire; here what the receiver relies on)
            assert!(
                s.reasm.pending().count() <= MAX_PARTIAL,
                "frames in reassembly"
            );
            assert!(s.reasm.buffers().count() <= MAX_PARTIAL, "buffers held");
            for cap in s.reasm.buffers() {
                assert!(cap <= self.max_len, "buffer capacity {cap}");
            }
            let mut seqs = HashSet::new();
            for q in s.reasm.pending() {
                assert!(seqs.insert(q), "frame {q} twice");
                assert!(!s.reasm.late(q), "frame {q} late yet held");
            }
        }
    }

    /// Time passes: `what` 0 ages frames in reassembly past
    /// [`FRAGMENT_GAP`], 1 also makes streams quiet ([`QUIET`]), 2 silent
    /// past `--timeout`; then the sweep `serve_udp` does every 50 ms.
    fn pass_time(&mut self, what: u64) {
        let gap = FRAGMENT_GAP + Duration::from_millis(1);
        let quiet = match what {
            0 => None,
            1 => Some(QUIET + Duration::from_millis(1)),
            _ => Some(self.hub.timeout.max(QUIET) + Duration::from_millis(1)),
        };
        let back = |t: &mut Instant, d: Duration| {
            if let Some(e) = t.checked_sub(d) {
                *t = e;
            }
        };
        for s in self.streams.values_mut() {
            if let Some(q) = quiet {
                back(&mut s.last_seen, q);
            }
        }
        // (the frames in reassembly judged `gap` later; the streams'
        // silence as moved back above, plus `gap`)
        sweep(&self.hub, &mut self.streams, Instant::now() + gap);
        self.check();
        if what == 2 {
            assert!(self.streams.is_empty(), "silent streams closed");
        }
        for s in self.streams.values() {
            assert_eq!(
                s.reasm.pending().count(),
                0,
                "frames past FRAGMENT_GAP given up"
            );
        }
    }
}

/// Feeds `wire`; time passes after about one datagram in `time_every` (never with 0).
fn run(rng: &mut Rng, sc: &Scenario, wire: &[Wire], time_every: u64) -> Bench {
    let mut b = Bench::new(sc.limits, sc.max_conns);
    for w in wire {
        b.feed(w, &sc.sent);
        if time_every > 0 && rng.below(time_every) == 0 {
            let what = [0, 0, 0, 1, 2][rng.below(5) as usize];
            b.pass_time(what);
        }
    }
    b.pass_time(0);
    b
}

#[test]
fn untouched_datagrams_deliver_every_frame_bit_exact() {
    // The harness itself: every frame within --max-size comes out once, in
    // order, whole, whatever the stride and codec (a restarted sender too).
    let t = Instant::now();
    for seed in 0..150u64 {
        let mut rng = Rng(seed);
        let n = rng.range(1, 3) as usize;
        let mut sc = Scenario::new(&mut rng, n);
        sc.max_conns = 2 * n + 8; // room for restarted senders' new streams
        let frames = rng.range(1, 12) as usize;
        sc.play(&mut rng, frames);
        let b = run(&mut rng, &sc, &sc.wire, 0);
        let got = b.seen.0.lock().unwrap();
        let got: Vec<u64> = got.iter().map(|(_, h, _)| h.timestamp_us).collect();
        assert_eq!(got, sc.deliverable, "seed {seed}");
    }
    eprintln!("untouched: {:?}", t.elapsed());
}

#[test]
fn hostile_datagrams_never_deliver_a_wrong_frame_nor_break_a_bound() {
    let t = Instant::now();
    let (mut fed, mut delivered) = (0, 0);
    for seed in 0..600u64 {
        let mut rng = Rng(0xb17 ^ seed.wrapping_mul(0x1000_0001));
        let n = rng.range(1, 4) as usize;
        let mut sc = Scenario::new(&mut rng, n);
        let frames = rng.range(1, 16) as usize;
        sc.play(&mut rng, frames);
        if rng.pct(30) {
            conflicting(&mut rng, &mut sc);
        }
        let wire = mutate(&mut rng, &sc);
        fed += wire.len();
        let time_every = [0, 7, 40, 200][rng.below(4) as usize];
        let b = run(&mut rng, &sc, &wire, time_every);
        delivered += b.delivered;
    }
    eprintln!(
        "hostile: {fed} datagrams, {delivered} frames delivered, {:?}",
        t.elapsed()
    );
    assert!(delivered > 1000, "the mutations left some frames whole");
}

#[test]
fn random_datagrams_with_valid_headers_are_bounded() {
    // Datagrams that pass `parse` (every field in range) with random
    // numbers and data, many streams from many hosts, one hello among them:
    // nothing is delivered (no valid CRC), every bound holds.
    let mut rng = Rng(42);
    let limits = Limits::for_dimensions(256, 64);
    let max_len = HEADER_LEN + limits.max_payload as usize;
    let mut b = Bench::new(limits, 3);
    let sent = Sent::new();
    let mut ids = vec![1u32, 2, 3];
    for i in 0..20_000u64 {
        let from: SocketAddr = format!("10.1.0.{}:{}", rng.below(4), 7000 + rng.below(3))
            .parse()
            .unwrap();
        if rng.pct(1) {
            ids.push(rng.next() as u32);
        }
        let stream_id = ids[rng.below(ids.len() as u64) as usize];
        if rng.pct(2) {
            b.feed(
                &Wire {
                    from,
                    bytes: hello_dgram(stream_id, "x"),
                    moved: false,
                },
                &sent,
            );
            continue;
        }
        let frame_len = match rng.below(3) {
            0 => rng.range(1, 64),
            1 => rng.range(1, max_len as u64),
            _ => max_len as u64,
        } as u32;
        let stride = rng.range(1, frame_len.min(u16::MAX as u32) as u64) as u16;
        let count = frame_len.div_ceil(stride as u32);
        if count > u16::MAX as u32 {
            continue;
        }
        let d = Dgram {
            kind: KIND_FRAGMENT,
            index: rng.below(count as u64) as u16,
            count: count as u16,
            stride,
            stream_id,
            sequence: match rng.below(4) {
                0 => rng.below(8),
                1 => u64::MAX - rng.below(8),
                2 => i / 4,
                _ => rng.next(),
            },
            frame_len,
        };
        let off = d.index as usize * stride as usize;
        let n = (frame_len as usize - off).min(stride as usize);
        let data = if rng.pct(50) {
            vec![0; n]
        } else {
            rng.bytes(n)
        };
        b.feed(
            &Wire {
                from,
                bytes: dgram(d, &data),
                moved: false,
            },
            &sent,
        );
        if rng.pct(1) {
            b.pass_time(rng.below(3));
        }
    }
    assert_eq!(b.delivered, 0);
}

/// A reassembly buffer reused for a larger frame grew by `Vec`'s
/// doubling, so its allocation passed the documented cap ("each no larger
/// than a frame of `--max-size`") by up to twice: a 200 B frame's buffer,
/// taken for a 296 B one (the cap), held 400 B. At the default 4096x4096,
/// a 1.1 MiB frame then a 2 MiB one left 2.2 MiB allocated, three buffers
/// a stream.
#[test]
fn reassembly_buffers_stay_within_the_frame_cap() {
    let limits = Limits::for_dimensions(64, 32);
    let max_len = HEADER_LEN + limits.max_payload as usize;
    assert_eq!(max_len, 296);
    let mut b = Bench::new(limits, 1);
    let from: SocketAddr = "10.0.0.1:5000".parse().unwrap();
    let sent = Sent::new();
    let wire = |bytes| Wire {
        from,
        bytes,
        moved: false,
    };
    b.feed(&wire(hello_dgram(1, "cam")), &sent);
    // one fragment of a 200 B frame, never completed: given up
    b.feed(&wire(cut(&[0; 200], 1, 5, 100).remove(0)), &sent);
    b.pass_time(0);
    // one fragment of a frame of the cap: the same buffer, grown
    b.feed(&wire(cut(&[0; 296], 1, 6, 100).remove(0)), &sent);
    let caps: Vec<usize> = b.streams.values().next().unwrap().reasm.buffers().collect();
    assert_eq!(caps.len(), 1, "one buffer, reused");
    let cap = caps[0];
    assert!(
        cap <= max_len,
        "{cap} B allocated for frames of {max_len} B at most"
    );
}

/// One UDP stream into a fresh hub, its hello sent: datagrams fed one at a
/// time, each as if it had waited that long in the socket.
struct OneStream {
    hub: Arc<Hub>,
    seen: Arc<Delivered>,
    streams: HashMap<(SocketAddr, u32), Stream>,
    logs: Logs,
}

impl OneStream {
    const FROM: &'static str = "10.0.0.9:5000";
    const ID: u32 = 7;

    fn new(name: &str, flags: u8) -> OneStream {
        let (hub, seen) = hub(Limits::default(), 4);
        let mut s = OneStream {
            hub,
            seen,
            streams: HashMap::new(),
            logs: Logs::default(),
        };
        let hello = Hello::new(name).unwrap().with_flags(flags).encode();
        let mut dg = bitmask_wire::udp::Datagram::hello(Self::ID, &hello)
            .encode()
            .to_vec();
        dg.extend_from_slice(&hello);
        s.feed(&dg, Duration::ZERO);
        s
    }

    fn feed(&mut self, b: &[u8], waited: Duration) {
        let (d, data) = parse(b, &self.hub.limits).unwrap();
        let from = Self::FROM.parse().unwrap();
        on_dgram(
            &self.hub,
            &mut self.streams,
            &mut self.logs,
            from,
            d,
            data,
            Some(SystemTime::now() - waited),
        );
    }

    /// Frame `seq` (header `hdr`, `payload`) in datagrams of 40 bytes.
    fn frame(&mut self, hdr: &Header, payload: &[u8], waited: Duration) {
        let mut frame = Vec::new();
        encode_frame(hdr, payload, &mut frame);
        for (d, data) in bitmask_wire::udp::fragments(&frame, Self::ID, hdr.sequence, 40).unwrap() {
            self.feed(&[&d.encode()[..], data].concat(), waited);
        }
    }
}

#[test]
fn frames_that_waited_too_long_are_decoded_not_written_and_their_deltas_still_decode() {
    // Outputs slower than the stream: datagrams pile up in the socket. A
    // frame whose last datagram waited over MAX_LAG is passed over
    // (counted behind, not lost) but decoded, so that the delta frames
    // after it, written again once the receiver caught up, decode right.
    let mut one = OneStream::new("slow", 0);
    // a disc moving a pixel a frame: frame 0 a key frame, then deltas
    let (w, h) = (64u32, 32u32);
    let mask = |k: u32| {
        let mut m = vec![0u8; (w / 8 * h) as usize];
        for y in 0..h {
            for x in 0..w {
                let (dx, dy) = (x as i32 - 20 - k as i32, y as i32 - 16);
                if dx * dx + dy * dy < 80 {
                    m[(y * w / 8 + x / 8) as usize] |= 0x80 >> (x % 8);
                }
            }
        }
        m
    };
    let mut enc = Encoder::new(Choice::Bilevel, 100);
    let mut code = |seq: u64, key: bool| {
        if key {
            enc.force_keyframe();
        }
        let mut payload = Vec::new();
        let info = enc
            .encode(&mask(seq as u32), w, h, seq, &mut payload)
            .unwrap();
        assert_eq!(info.flags == 0, seq == 0 || key, "frame {seq}: {info:?}");
        let mut hdr = Header::new(w, h, seq, info.codec, payload.len() as u32);
        hdr.flags = info.flags;
        (hdr, payload)
    };
    let waited = [0, 0, 300, 250, 0, 0];
    for (seq, &ms) in waited.iter().enumerate() {
        let (hdr, payload) = code(seq as u64, false);
        one.frame(&hdr, &payload, Duration::from_millis(ms));
    }
    // Frame 6 lost on the way: 7 and 8 lack their reference (corrupt),
    // key frame 9 decodes again, and says so.
    crate::test_log::capture();
    for seq in 6..10u64 {
        let (hdr, payload) = code(seq, seq == 9);
        if seq != 6 {
            one.frame(&hdr, &payload, Duration::ZERO);
        }
    }
    let said = crate::test_log::lines_with("slow: decoding again from frame 9 on");
    assert_eq!(said.len(), 1, "{said:?}");
    assert!(said[0].1.contains("(2 delta frame(s)"), "{said:?}");
    let got = one.seen.0.lock().unwrap();
    let written: Vec<u64> = got.iter().map(|(_, h, _)| h.sequence).collect();
    assert_eq!(written, [0, 1, 4, 5, 9], "frames 2 and 3 waited too long");
    for (_, h, m) in got.iter() {
        assert_eq!(
            *m,
            mask(h.sequence as u32),
            "frame {} decoded wrong",
            h.sequence
        );
    }
    let s = crate::stats::lock(&one.hub.stats.sender("slow")).snapshot();
    assert_eq!((s.received, s.behind, s.lost, s.corrupt), (5, 2, 1, 2));
}

#[test]
fn a_sender_that_drops_no_frame_has_every_frame_written_however_late() {
    // Its hello says HELLO_NO_DROP (a batch, --no-drop): no frame of its
    // stream is passed over for having waited in the socket.
    let mut one = OneStream::new("batch", bitmask_wire::HELLO_NO_DROP);
    for seq in 0..4u64 {
        let hdr = Header::new(16, 2, seq, 0, 4);
        one.frame(&hdr, &[seq as u8; 4], Duration::from_secs(2));
    }
    assert_eq!(one.seen.0.lock().unwrap().len(), 4);
    let s = crate::stats::lock(&one.hub.stats.sender("batch")).snapshot();
    assert_eq!((s.received, s.behind), (4, 0));
}
