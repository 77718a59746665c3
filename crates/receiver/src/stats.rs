//! Per-sender counters of a receiver: frames, losses, corruption, rates,
//! compression and latency, with a cloneable [`SenderSnapshot`] for anyone
//! who wants to show them (the once-a-second log, `--stats-json`, a live view).

use bitmask_wire::{Header, HEADER_LEN};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch, now.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Log-linear histogram of microsecond values: exact below 64 µs, then 32
/// buckets per power of two (about 3% resolution). Fixed size, no allocation
/// per sample.
#[derive(Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    n: u64,
}

const SUB: u32 = 32;
const LINEAR: u64 = 64;
const BUCKETS: usize = LINEAR as usize + (64 - 6) * SUB as usize;

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            n: 0,
        }
    }
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Histogram(n={})", self.n)
    }
}

impl Histogram {
    fn index(v: u64) -> usize {
        if v < LINEAR {
            return v as usize;
        }
        let e = 63 - v.leading_zeros(); // >= 6
        let sub = (v >> (e - 5)) as u32 & (SUB - 1);
        LINEAR as usize + (e - 6) as usize * SUB as usize + sub as usize
    }

    /// The middle of bucket `i`.
    fn value(i: usize) -> u64 {
        if i < LINEAR as usize {
            return i as u64;
        }
        let k = i - LINEAR as usize;
        let e = (k / SUB as usize) as u32 + 6;
        let sub = (k % SUB as usize) as u64;
        let lo = (1u64 << e) + (sub << (e - 5));
        lo + (1u64 << (e - 5)) / 2
    }

    /// Adds one value.
    pub fn record(&mut self, v: u64) {
        self.counts[Self::index(v)] += 1;
        self.n += 1;
    }

    /// Adds the samples of `other`.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.n += other.n;
    }

    /// The `q` quantile (0..=1), None when empty.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.n == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.n as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(Self::value(i));
            }
        }
        None
    }

    fn clear(&mut self) {
        if self.n > 0 {
            self.counts.iter_mut().for_each(|c| *c = 0);
            self.n = 0;
        }
    }
}

/// A copy of one sender's numbers at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SenderSnapshot {
    /// The sender's name (from its hello, else its address).
    pub name: String,
    /// Address of its current (or last) connection.
    pub peer: String,
    /// `"tcp"` or `"udp"`.
    pub transport: &'static str,
    /// A stream of it is open now.
    pub connected: bool,
    /// Connections (TCP) or streams (UDP) seen from it.
    pub connections: u64,
    /// Frames received and written.
    pub received: u64,
    /// Frames missing from gaps in the sequence numbers.
    pub lost: u64,
    /// Frames that arrived damaged (CRC) or undecodable, skipped.
    pub corrupt: u64,
    /// UDP frames dropped because some datagrams never came.
    pub incomplete: u64,
    /// Frames that arrived whole but could not be written (a full or
    /// read-only disk): in neither `received` nor `lost`.
    pub unwritten: u64,
    /// Frames written (in `received`) that some of the outputs failed to
    /// take (`--out DIR` on a full card while `--latest` took it, say).
    pub partly: u64,
    /// UDP frames that arrived whole and were decoded but not written: the
    /// outputs were behind the stream (its datagrams waited too long in the
    /// socket). In neither `received` nor `lost`.
    pub behind: u64,
    /// Frames sent again after a reconnect that had been handled before
    /// the connection dropped: skipped, not written twice (in no other
    /// count).
    pub resent: u64,
    /// Bytes on the wire for received frames (headers included).
    pub wire_bytes: u64,
    /// Bytes of the decoded masks.
    pub mask_bytes: u64,
    /// Frames per second over the last interval.
    pub fps: f64,
    /// Mbit/s of wire bytes over the last interval.
    pub mbps: f64,
    /// Frames per second since its first frame.
    pub avg_fps: f64,
    /// Mbit/s since its first frame.
    pub avg_mbps: f64,
    /// Mask bytes / wire bytes, overall (1.0 is about raw).
    pub compression_ratio: f64,
    /// Latency (capture timestamp to frame written), last interval, ms.
    pub latency_p50_ms: Option<f64>,
    /// 99th percentile of the same.
    pub latency_p99_ms: Option<f64>,
    /// Latency p50 since the start, ms.
    pub total_latency_p50_ms: Option<f64>,
    /// Latency p99 since the start, ms.
    pub total_latency_p99_ms: Option<f64>,
    /// Sequence number of the last frame.
    pub last_sequence: Option<u64>,
    /// Set when the sender's clock is too far from this host's for latency
    /// to mean anything: about how far, in seconds (positive: the sender's
    /// clock is ahead). Latency is not measured while it is set; it is
    /// cleared when the clocks agree again.
    pub clock_offset_s: Option<f64>,
}

impl SenderSnapshot {
    /// One line for the log.
    pub fn line(&self, interval: bool) -> String {
        let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
        let (fps, mbps, p50, p99) = if interval {
            (
                self.fps,
                self.mbps,
                self.latency_p50_ms,
                self.latency_p99_ms,
            )
        } else {
            (
                self.avg_fps,
                self.avg_mbps,
                self.total_latency_p50_ms,
                self.total_latency_p99_ms,
            )
        };
        let latency = match self.clock_offset_s {
            Some(off) if off.abs() < 10.0 => {
                format!("latency not measured (clocks {:.2} s apart)", off.abs())
            }
            Some(off) => format!("latency not measured (clocks {:.0} s apart)", off.abs()),
            None => format!("latency p50 {} ms p99 {} ms", ms(p50), ms(p99)),
        };
        // (", N what" when there are any)
        let some = |n: u64, what: &str| {
            if n > 0 {
                format!(", {n} {what}")
            } else {
                String::new()
            }
        };
        format!(
            "{}: {} frames ({} lost, {} corrupt, {} incomplete{}{}{}{}), {:.1} fps, {:.1} Mbit/s, \
             ratio {:.2}, {latency}{}",
            self.name,
            self.received,
            self.lost,
            self.corrupt,
            self.incomplete,
            some(self.unwritten, "NOT WRITTEN"),
            some(self.partly, "NOT WRITTEN TO EVERY OUTPUT"),
            some(self.resent, "sent again and skipped"),
            some(self.behind, "passed over, the outputs behind"),
            fps,
            mbps,
            self.compression_ratio,
            if self.connected {
                ""
            } else {
                " (disconnected)"
            }
        )
    }
}

/// One sender's live counters (behind a mutex in the [`StatsRegistry`]).
#[derive(Debug)]
pub struct SenderStats {
    snap: SenderSnapshot,
    /// Streams of this sender open now (a reconnecting sender briefly has two).
    open: u32,
    last_sequence: Option<u64>,
    first_frame: Option<Instant>,
    last_frame: Option<Instant>,
    total: Histogram,
    window: Histogram,
    window_start: Instant,
    window_frames: u64,
    window_bytes: u64,
    /// Tells latencies from a sender clock far from this host's.
    clock: ClockJudge,
}

/// A sender whose clock is ahead of this host's by more than this (µs)
/// gives negative latencies: its clock is off, not the network fast.
const CLOCK_AHEAD_US: i128 = 100_000;
/// Once a sender was found ahead, it agrees again at a latency above this
/// (µs): below the ahead limit, so the verdict does not flap there.
const CLOCK_AHEAD_AGAIN_US: i128 = -20_000;
/// A latency above this (µs) is suspect: a sender clock behind this host's,
/// or frames that really waited (held by a `--no-drop` sender while the
/// receiver was away, or behind a stalled output). Suspect latencies at a
/// connection's start, after this host's clock was set, or after a jump
/// of this size, are held back until a plausible one comes (they were real,
/// and are counted) or [`JUDGE_TIME`] passes with none (the clocks are apart).
const CLOCK_BEHIND_US: i128 = 30_000_000;
/// How long suspect latencies are held back at most.
const JUDGE_TIME: Duration = Duration::from_secs(5);
/// Latencies held back at most (the rest of a judgement only counts).
const JUDGE_MAX: usize = 1024;
/// One clock warning per sender in this time at most.
const CLOCK_WARN_EVERY: Duration = Duration::from_secs(60);

/// Times this host's clock was seen being set (wall clock against the
/// monotonic one), for every sender's [`ClockJudge`].
static HOST_CLOCK_STEPS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// This host's wall clock minus its monotonic clock, µs (`i64::MIN`: not yet).
static WALL_MINUS_MONO: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(i64::MIN);

/// What [`host_clock_steps`] adds for a step larger than
/// [`CLOCK_BEHIND_US`] (1 for a smaller one): the count's high half counts
/// the steps that can pass for a wait.
const BIG_STEP: u64 = 1 << 32;

/// Counts a step of this host's clock since the last call (more than 1 s
/// between its wall clock `wall_us` and its monotonic clock `now`) and
/// returns the steps so far (see [`BIG_STEP`]).
fn host_clock_steps(wall_us: u64, now: Instant) -> u64 {
    use std::sync::atomic::Ordering::SeqCst;
    static MONO: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let mono = now.duration_since(*MONO.get_or_init(|| now)).as_micros() as i64;
    let now = wall_us as i64 - mono;
    let before = WALL_MINUS_MONO.swap(now, SeqCst);
    if before != i64::MIN && (now - before).abs() > 1_000_000 {
        log::info!(
            "this host's clock was set ({:+.1} s): judging the senders' clocks again",
            (now - before) as f64 / 1e6
        );
        let step = if (now - before).abs() as i128 > CLOCK_BEHIND_US {
            BIG_STEP
        } else {
            1
        };
        return HOST_CLOCK_STEPS.fetch_add(step, SeqCst) + step;
    }
    HOST_CLOCK_STEPS.load(SeqCst)
}

/// Microseconds as milliseconds.
fn us_to_ms(v: Option<u64>) -> Option<f64> {
    v.map(|us| us as f64 / 1000.0)
}

/// Frames per second and Mbit/s of `received` frames (`wire_bytes` in all)
/// whose first and last came `span` apart; zeros for fewer than two frames.
fn overall_rates(received: u64, wire_bytes: u64, span: Duration) -> (f64, f64) {
    let secs = span.as_secs_f64();
    if secs <= 0.0 || received < 2 {
        return (0.0, 0.0);
    }
    let n = (received - 1) as f64;
    let fps = n / secs;
    (fps, fps * (wire_bytes as f64 / received as f64) * 8.0 / 1e6)
}

/// Where a sender's clock stands against this host's.
#[derive(Debug)]
enum ClockState {
    /// Latencies are counted.
    Agree,
    /// Suspect latencies held back since `since`; `stepped`: since this
    /// host's clock was set (what is held then measured the step, e.g. a
    /// receiver set years ahead by NTP before its sender was: dropped,
    /// not counted, when a plausible one follows).
    Judging {
        since: Instant,
        held: Vec<i128>,
        stepped: bool,
    },
    /// Too far apart: nothing is counted; `snap.clock_offset_s` says how far.
    Apart,
}

/// Tells latencies from clock offsets for one sender (see the constants).
#[derive(Debug)]
struct ClockJudge {
    state: ClockState,
    last_d: Option<i128>,
    host_steps: u64,
    warned_at: Option<Instant>,
    /// This disagreement was warned about (so its end is said too).
    warned: bool,
}

impl ClockJudge {
    fn new() -> Self {
        ClockJudge {
            state: ClockState::Agree,
            last_d: None,
            host_steps: HOST_CLOCK_STEPS.load(std::sync::atomic::Ordering::SeqCst),
            warned_at: None,
            warned: false,
        }
    }

    /// Hold back what comes next until it is judged.
    fn rejudge(&mut self, now: Instant, stepped: bool) {
        if stepped || !matches!(self.state, ClockState::Judging { .. }) {
            self.state = ClockState::Judging {
                since: now,
                held: Vec::new(),
                stepped,
            };
        }
    }
}

impl SenderStats {
    fn new(name: &str) -> Self {
        SenderStats {
            snap: SenderSnapshot {
                name: name.to_string(),
                ..Default::default()
            },
            open: 0,
            last_sequence: None,
            first_frame: None,
            last_frame: None,
            total: Histogram::default(),
            window: Histogram::default(),
            window_start: Instant::now(),
            window_frames: 0,
            window_bytes: 0,
            clock: ClockJudge::new(),
        }
    }

    /// A stream (connection) of this sender opened.
    pub fn connected(&mut self, peer: &str, transport: &'static str) {
        self.snap.peer = peer.to_string();
        self.snap.transport = transport;
        self.snap.connections += 1;
        self.open += 1;
        self.snap.connected = true;
        // judge the clocks again: they may have been set right meanwhile
        self.clock.rejudge(Instant::now(), false);
        self.clock.last_d = None;
    }

    /// One of its streams closed.
    pub fn disconnected(&mut self) {
        self.open = self.open.saturating_sub(1);
        self.snap.connected = self.open > 0;
    }

    /// Counts one frame written; `payload_len` as on the wire, `mask_len`
    /// decoded. Returns `Some(previous)` when the sequence went backwards
    /// (the sender restarted) or jumped ahead by more than [`MAX_GAP`],
    /// which starts a new numbering.
    pub fn frame(&mut self, h: &Header, mask_len: usize, written_at_us: u64) -> Option<u64> {
        let now = Instant::now();
        self.first_frame.get_or_insert(now);
        self.last_frame = Some(now);
        let s = &mut self.snap;
        s.received += 1;
        let wire = (HEADER_LEN + h.payload_len as usize) as u64;
        s.wire_bytes += wire;
        s.mask_bytes += mask_len as u64;
        self.window_frames += 1;
        self.window_bytes += wire;
        let restarted = self.sequence_seen(h.sequence);
        if h.timestamp_us != 0 {
            // receiver minus sender clock: the latency plus any clock offset
            let steps = host_clock_steps(written_at_us, now);
            self.clock_sample(written_at_us as i128 - h.timestamp_us as i128, steps, now);
        }
        restarted
    }

    /// One frame's receiver-minus-sender time `d` (µs) at `now`: a latency,
    /// unless the two clocks disagree (see [`CLOCK_AHEAD_US`],
    /// [`CLOCK_BEHIND_US`]). `host_steps`: [`host_clock_steps`].
    fn clock_sample(&mut self, d: i128, host_steps: u64, now: Instant) {
        let c = &mut self.clock;
        if host_steps != c.host_steps {
            // (what is held was measured against a step only if it was
            // large enough to pass for a wait)
            let big = host_steps / BIG_STEP != c.host_steps / BIG_STEP;
            c.host_steps = host_steps;
            c.rejudge(now, big);
        }
        let jumped = c.last_d.is_some_and(|prev| d - prev > CLOCK_BEHIND_US);
        c.last_d = Some(d);
        if d < -CLOCK_AHEAD_US {
            c.state = ClockState::Apart;
            self.clocks_apart(d, now);
            return;
        }
        if jumped && matches!(c.state, ClockState::Agree) {
            c.rejudge(now, false);
        }
        match &mut c.state {
            ClockState::Agree => self.record_latency(d),
            ClockState::Judging {
                since,
                held,
                stepped,
            } => {
                if held.len() < JUDGE_MAX {
                    held.push(d);
                }
                if d <= CLOCK_BEHIND_US {
                    // plausible: what was held back really waited (unless
                    // this host's clock was set meanwhile: then it
                    // measured the step)
                    let held = if *stepped {
                        vec![d]
                    } else {
                        std::mem::take(held)
                    };
                    self.clock.state = ClockState::Agree;
                    self.clocks_agree();
                    for d in held {
                        self.record_latency(d);
                    }
                } else if now.duration_since(*since) >= JUDGE_TIME && held.len() >= 2 {
                    let min = held.iter().copied().min().unwrap_or(d);
                    self.clock.state = ClockState::Apart;
                    self.clocks_apart(min, now);
                }
            }
            ClockState::Apart => {
                let ahead = self.snap.clock_offset_s.is_some_and(|o| o > 0.0);
                if d <= CLOCK_BEHIND_US && (!ahead || d >= CLOCK_AHEAD_AGAIN_US) {
                    self.clock.state = ClockState::Agree;
                    self.clocks_agree();
                    self.record_latency(d);
                } else if ahead && d > CLOCK_BEHIND_US {
                    // was ahead, now far behind: judge that afresh
                    self.clock.state = ClockState::Judging {
                        since: now,
                        held: vec![d],
                        stepped: false,
                    };
                }
            }
        }
    }

    fn clocks_apart(&mut self, d: i128, now: Instant) {
        let c = &mut self.clock;
        if !c.warned
            && c.warned_at
                .is_none_or(|t| now.duration_since(t) >= CLOCK_WARN_EVERY)
        {
            c.warned = true;
            c.warned_at = Some(now);
            log::warn!(
                "{}: its clock is about {:.1} s {} this host's: latency is not measured \
                 until both clocks agree (NTP; two Pis without internet: see \"Clocks\" \
                 in docs/DEPLOY.md)",
                self.snap.name,
                (d as f64 / 1e6).abs(),
                if d < 0 { "ahead of" } else { "behind" }
            );
        }
        self.snap.clock_offset_s = Some(-d as f64 / 1e6);
    }

    fn clocks_agree(&mut self) {
        if self.snap.clock_offset_s.take().is_some() && std::mem::take(&mut self.clock.warned) {
            log::info!(
                "{}: the clocks agree again; measuring latency",
                self.snap.name
            );
        }
    }

    fn record_latency(&mut self, d: i128) {
        // a few ms ahead (clocks close, not equal) count as 0
        let lat = d.clamp(0, u64::MAX as i128) as u64;
        self.total.record(lat);
        self.window.record(lat);
    }

    /// Counts a frame that arrived whole but could not be written; its
    /// sequence number counts as seen (not lost).
    pub fn unwritten(&mut self, h: &Header) {
        self.sequence_seen(h.sequence);
        self.snap.unwritten += 1;
    }

    /// Counts a frame decoded and not written, the outputs behind the
    /// stream; its sequence number counts as seen (not lost). As
    /// [`SenderStats::sequence_seen`].
    pub fn behind(&mut self, h: &Header) -> Option<u64> {
        self.snap.behind += 1;
        self.sequence_seen(h.sequence)
    }

    /// Counts a frame written that some outputs failed to take (counted in
    /// `received` by [`SenderStats::frame`] too).
    pub fn partly_written(&mut self) {
        self.snap.partly += 1;
    }

    /// Moves the numbering on to `seq`: frames skipped since the last one
    /// count as lost; `Some(previous)` when `seq` starts a new numbering (it
    /// went back, or jumped ahead by more than [`MAX_GAP`]).
    pub fn sequence_seen(&mut self, seq: u64) -> Option<u64> {
        let s = &mut self.snap;
        let mut restarted = None;
        if let Some(prev) = self.last_sequence {
            match seq.checked_sub(prev) {
                // Frames between two sequence numbers never arrived.
                Some(gap @ 1..=MAX_GAP) => s.lost = s.lost.saturating_add(gap - 1),
                // Back (or still): the sender restarted. So far ahead that no
                // sender could have lost that many frames: a new numbering too.
                _ => restarted = Some(prev),
            }
        }
        self.last_sequence = Some(seq);
        s.last_sequence = Some(seq);
        restarted
    }

    /// `n` frames reached a UDP stream before its sender's hello and were
    /// dropped; `first` is the stream's first frame read since. They count
    /// as lost, unless the sender's numbering goes on into `first` from a
    /// frame counted before (the gap before `first` counts them then).
    pub fn dropped_before_hello(&mut self, n: u64, first: u64) {
        let goes_on = self
            .last_sequence
            .is_some_and(|prev| matches!(first.checked_sub(prev), Some(1..=MAX_GAP)));
        if !goes_on {
            self.snap.lost = self.snap.lost.saturating_add(n);
        }
    }

    /// The sender ended its stream, whose last frame read was `last`, with
    /// frames numbered below `next` (a UDP end datagram): those after
    /// `last` never arrived and count as lost, as a gap before a later
    /// frame would. Nothing when `next` is not ahead of `last` by at most
    /// [`MAX_GAP`]. (The stream is closed then: its end is counted once.)
    pub fn ended(&mut self, last: u64, next: u64) {
        if let Some(gap @ 2..=MAX_GAP) = next.checked_sub(last) {
            self.snap.lost = self.snap.lost.saturating_add(gap - 1);
        }
    }

    /// Counts a frame sent again after a reconnect and skipped: it was
    /// handled before (its sequence number was seen then).
    pub fn resent(&mut self) {
        self.snap.resent += 1;
    }

    /// Counts a damaged or undecodable frame.
    pub fn corrupt(&mut self) {
        self.snap.corrupt += 1;
    }

    /// Counts a UDP frame given up on.
    pub fn incomplete(&mut self, n: u64) {
        self.snap.incomplete += n;
    }

    /// The numbers now (interval rates as of the last [`StatsRegistry::tick`]).
    pub fn snapshot(&self) -> SenderSnapshot {
        let mut s = self.snap.clone();
        s.total_latency_p50_ms = us_to_ms(self.total.quantile(0.50));
        s.total_latency_p99_ms = us_to_ms(self.total.quantile(0.99));
        if let (Some(a), Some(b)) = (self.first_frame, self.last_frame) {
            (s.avg_fps, s.avg_mbps) = overall_rates(s.received, s.wire_bytes, b - a);
        }
        if s.wire_bytes > 0 {
            s.compression_ratio = s.mask_bytes as f64 / s.wire_bytes as f64;
        }
        s
    }

    /// Closes the current interval: rates and latency over it.
    fn roll(&mut self) -> bool {
        let secs = self.window_start.elapsed().as_secs_f64().max(1e-6);
        let active = self.window_frames > 0;
        self.snap.fps = self.window_frames as f64 / secs;
        self.snap.mbps = self.window_bytes as f64 * 8.0 / secs / 1e6;
        self.snap.latency_p50_ms = us_to_ms(self.window.quantile(0.50));
        self.snap.latency_p99_ms = us_to_ms(self.window.quantile(0.99));
        self.window.clear();
        self.window_frames = 0;
        self.window_bytes = 0;
        self.window_start = Instant::now();
        active
    }
}

/// Shared handle to one sender's stats.
pub type SenderHandle = Arc<Mutex<SenderStats>>;

/// Locks a sender's stats (a panicked holder does not poison the numbers).
pub fn lock(h: &SenderHandle) -> MutexGuard<'_, SenderStats> {
    h.lock().unwrap_or_else(|p| p.into_inner())
}

/// All senders' stats, by name. Cheap to clone.
#[derive(Clone, Default)]
pub struct StatsRegistry {
    senders: Arc<Mutex<BTreeMap<String, SenderHandle>>>,
    /// The numbers of senders forgotten (past [`MAX_REMEMBERED`]), still in
    /// the total (and so in the exit status), with the span of their frames.
    retired: Arc<Mutex<Retired>>,
}

/// Forgotten senders' numbers, and the span of their frames.
type Retired = (SenderSnapshot, Option<(Instant, Instant)>);

/// Most senders remembered; the longest-disconnected are forgotten first.
const MAX_REMEMBERED: usize = 256;

/// A jump forward in sequence numbers above this (a day at 50,000 frames/s)
/// is taken as a new numbering, not as that many lost frames. (The UDP
/// reassembler's bound, so that a frame it takes for this stream's is
/// counted so too.)
pub(crate) const MAX_GAP: u64 = bitmask_wire::udp::MAX_GAP;

impl StatsRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    fn map(&self) -> MutexGuard<'_, BTreeMap<String, SenderHandle>> {
        self.senders.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The stats of sender `name` (created on first use; a sender that
    /// reconnects keeps its numbers, so frames lost in between are
    /// counted) for a stream of it that opened from `peer`, marked connected before the
    /// registry is let go (else another sender's first use could forget
    /// them meanwhile, as one that sent nothing: its numbers would go on
    /// out of the registry, missing from the summary and the exit status).
    pub fn stream_opened(&self, name: &str, peer: &str, transport: &'static str) -> SenderHandle {
        let mut m = self.map();
        let h = self.entry(&mut m, name);
        lock(&h).connected(peer, transport);
        h
    }

    /// The stats of sender `name`, created on first use (the tests').
    #[cfg(test)]
    pub fn sender(&self, name: &str) -> SenderHandle {
        let mut m = self.map();
        self.entry(&mut m, name)
    }

    fn entry(
        &self,
        m: &mut MutexGuard<'_, BTreeMap<String, SenderHandle>>,
        name: &str,
    ) -> SenderHandle {
        if !m.contains_key(name) && m.len() >= MAX_REMEMBERED {
            // (the one whose last frame is oldest; one that sent none first)
            let gone = m
                .iter()
                .filter(|(_, h)| !lock(h).snap.connected)
                .min_by_key(|(_, h)| lock(h).last_frame)
                .map(|(k, _)| k.clone());
            if let Some(h) = gone.and_then(|k| m.remove(&k)) {
                let s = lock(&h);
                let mut r = self.retired.lock().unwrap_or_else(|p| p.into_inner());
                add_counts(&mut r.0, &s.snapshot());
                widen(&mut r.1, &s);
            }
        }
        m.entry(name.to_string())
            .or_insert_with(|| Arc::new(Mutex::new(SenderStats::new(name))))
            .clone()
    }

    /// Every sender's numbers, by name.
    pub fn snapshot(&self) -> Vec<SenderSnapshot> {
        let handles: Vec<SenderHandle> = self.map().values().cloned().collect();
        handles.iter().map(|h| lock(h).snapshot()).collect()
    }

    /// Closes the interval for every sender; returns the snapshots of those
    /// that received frames in it or are connected.
    pub fn tick(&self) -> Vec<SenderSnapshot> {
        let handles: Vec<SenderHandle> = self.map().values().cloned().collect();
        handles
            .iter()
            .filter_map(|h| {
                let mut s = lock(h);
                let active = s.roll();
                (active || s.snap.connected).then(|| s.snapshot())
            })
            .collect()
    }

    /// Sum over all senders (name "total"); its latency is over all their
    /// frames since the start (the per-interval latency is left out).
    pub fn total(&self) -> SenderSnapshot {
        let handles: Vec<SenderHandle> = self.map().values().cloned().collect();
        let mut latency = Histogram::default();
        let (retired, mut span) = self
            .retired
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        // the span from the first frame of any sender to the last of any
        let all: Vec<SenderSnapshot> = handles
            .iter()
            .map(|h| {
                let s = lock(h);
                latency.merge(&s.total);
                widen(&mut span, &s);
                s.snapshot()
            })
            .collect();
        let mut t = SenderSnapshot {
            name: "total".into(),
            total_latency_p50_ms: us_to_ms(latency.quantile(0.50)),
            total_latency_p99_ms: us_to_ms(latency.quantile(0.99)),
            ..Default::default()
        };
        add_counts(&mut t, &retired);
        for s in &all {
            t.connected |= s.connected;
            add_counts(&mut t, s);
            t.fps += s.fps;
            t.mbps += s.mbps;
        }
        // Overall rates over the whole span (a sum of the senders' own
        // rates would count senders that ran one after another as parallel).
        if let Some((a, b)) = span {
            (t.avg_fps, t.avg_mbps) = overall_rates(t.received, t.wire_bytes, b - a);
        }
        if t.wire_bytes > 0 {
            t.compression_ratio = t.mask_bytes as f64 / t.wire_bytes as f64;
        }
        t
    }

    /// `--stats-json`: `{"time_unix_ms": T, "senders": [...], "total": {...}}`.
    pub fn to_json(&self) -> String {
        let mut out = format!(
            "{{\n  \"time_unix_ms\": {},\n  \"senders\": [",
            now_us() / 1000
        );
        for (i, s) in self.snapshot().iter().enumerate() {
            out.push_str(if i == 0 { "\n    " } else { ",\n    " });
            json_obj(s, &mut out);
        }
        out.push_str("\n  ],\n  \"total\": ");
        json_obj(&self.total(), &mut out);
        out.push_str("\n}\n");
        out
    }
}

/// Widens `span` to take in the frames of `s`.
fn widen(span: &mut Option<(Instant, Instant)>, s: &SenderStats) {
    if let (Some(a), Some(b)) = (s.first_frame, s.last_frame) {
        *span = Some(span.map_or((a, b), |(x, y)| (x.min(a), y.max(b))));
    }
}

/// Adds `s`'s counts (not its rates) to `t`'s.
fn add_counts(t: &mut SenderSnapshot, s: &SenderSnapshot) {
    t.connections += s.connections;
    t.received += s.received;
    t.lost += s.lost;
    t.corrupt += s.corrupt;
    t.incomplete += s.incomplete;
    t.unwritten += s.unwritten;
    t.partly += s.partly;
    t.resent += s.resent;
    t.behind += s.behind;
    t.wire_bytes += s.wire_bytes;
    t.mask_bytes += s.mask_bytes;
}

/// Appends `s` as a JSON string (also what the live view's `/stats.json` uses).
pub(crate) fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            // Also U+2028/2029, which JSON allows raw but JavaScript source does not.
            c if (c as u32) < 0x20 || c == '\u{2028}' || c == '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn json_num(v: f64, out: &mut String) {
    if v.is_finite() {
        let _ = write!(out, "{}", (v * 1000.0).round() / 1000.0);
    } else {
        out.push_str("null");
    }
}

fn json_obj(s: &SenderSnapshot, out: &mut String) {
    out.push_str("{\"name\": ");
    json_str(out, &s.name);
    out.push_str(", \"peer\": ");
    json_str(out, &s.peer);
    let _ = write!(
        out,
        ", \"transport\": \"{}\", \"connected\": {}, \"connections\": {}, \"received\": {}, \
         \"lost\": {}, \"corrupt\": {}, \"incomplete\": {}, \"unwritten\": {}, \
         \"partly_written\": {}, \"resent\": {}, \"behind\": {}, \"wire_bytes\": {}, \
         \"mask_bytes\": {}",
        s.transport,
        s.connected,
        s.connections,
        s.received,
        s.lost,
        s.corrupt,
        s.incomplete,
        s.unwritten,
        s.partly,
        s.resent,
        s.behind,
        s.wire_bytes,
        s.mask_bytes
    );
    for (k, v) in [
        ("fps", Some(s.fps)),
        ("mbps", Some(s.mbps)),
        ("avg_fps", Some(s.avg_fps)),
        ("avg_mbps", Some(s.avg_mbps)),
        ("compression_ratio", Some(s.compression_ratio)),
        ("clock_offset_s", s.clock_offset_s),
        ("latency_p50_ms", s.latency_p50_ms),
        ("latency_p99_ms", s.latency_p99_ms),
        ("total_latency_p50_ms", s.total_latency_p50_ms),
        ("total_latency_p99_ms", s.total_latency_p99_ms),
    ] {
        let _ = write!(out, ", \"{k}\": ");
        match v {
            Some(v) => json_num(v, out),
            None => out.push_str("null"),
        }
    }
    match s.last_sequence {
        Some(q) => {
            let _ = write!(out, ", \"last_sequence\": {q}}}");
        }
        None => out.push_str(", \"last_sequence\": null}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_are_within_three_percent() {
        let mut h = Histogram::default();
        for v in 1..=10_000u64 {
            h.record(v * 10);
        }
        let p50 = h.quantile(0.5).unwrap() as f64;
        let p99 = h.quantile(0.99).unwrap() as f64;
        assert!((p50 / 50_000.0 - 1.0).abs() < 0.03, "p50 {p50}");
        assert!((p99 / 99_000.0 - 1.0).abs() < 0.03, "p99 {p99}");
        assert_eq!(Histogram::default().quantile(0.5), None);
        let mut small = Histogram::default();
        small.record(7);
        assert_eq!(small.quantile(0.99), Some(7));
        small.record(u64::MAX);
        assert!(small.quantile(1.0).unwrap() > 1 << 62);
    }

    #[test]
    fn the_total_rate_is_over_the_whole_span() {
        let reg = StatsRegistry::new();
        let t0 = Instant::now();
        // two senders of 11 frames each, 1 s each, one after the other
        for (name, start) in [("a", 0u64), ("b", 2)] {
            let h = reg.sender(name);
            let mut s = lock(&h);
            s.frame(&Header::new(8, 1, 0, 0, 1), 1, 0);
            s.first_frame = Some(t0 + Duration::from_secs(start));
            s.last_frame = Some(t0 + Duration::from_secs(start + 1));
            s.snap.received = 11;
        }
        let each = reg.snapshot()[0].avg_fps;
        assert!((each - 10.0).abs() < 1e-9, "{each}");
        // 22 frames over 3 s, not 10 + 10 fps
        let t = reg.total();
        assert!((t.avg_fps - 7.0).abs() < 1e-9, "{}", t.avg_fps);
    }

    #[test]
    fn forgotten_senders_stay_in_the_total_and_the_oldest_goes_first() {
        let reg = StatsRegistry::new();
        let t0 = Instant::now();
        // MAX_REMEMBERED disconnected senders, each with an unwritten frame;
        // "s0100" sent its last frame first
        for i in 0..MAX_REMEMBERED {
            let h = reg.sender(&format!("s{i:04}"));
            let mut s = lock(&h);
            s.unwritten(&Header::new(8, 1, 0, 0, 1));
            s.snap.received = 1;
            let age = if i == 100 { 0 } else { 10 };
            s.first_frame = Some(t0 + Duration::from_secs(age));
            s.last_frame = Some(t0 + Duration::from_secs(age + 1));
        }
        let _new = reg.sender("new");
        let names: Vec<String> = reg.snapshot().into_iter().map(|s| s.name).collect();
        assert_eq!(names.len(), MAX_REMEMBERED);
        assert!(
            !names.contains(&"s0100".to_string()),
            "the oldest forgotten"
        );
        assert!(names.contains(&"s0000".to_string()));
        // its numbers are still counted: the receiver still exits non-zero
        let t = reg.total();
        assert_eq!(
            (t.unwritten, t.received),
            (MAX_REMEMBERED as u64, MAX_REMEMBERED as u64)
        );
        // and its frames' span is the total's: 256 frames (255 intervals)
        // over 11 s
        assert!(
            (t.avg_fps - (MAX_REMEMBERED - 1) as f64 / 11.0).abs() < 1e-6,
            "{}",
            t.avg_fps
        );
    }

    #[test]
    fn the_total_merges_the_senders_latencies() {
        let reg = StatsRegistry::new();
        let now = 1_000_000_000_000u64;
        for (name, lat_ms) in [("a", 2u64), ("b", 40)] {
            let h = reg.sender(name);
            let mut s = lock(&h);
            for seq in 0..10 {
                let mut hd = Header::new(8, 1, seq, 0, 1);
                hd.timestamp_us = now - lat_ms * 1000;
                s.frame(&hd, 1, now);
            }
        }
        let t = reg.total();
        assert_eq!(t.received, 20);
        let p50 = t.total_latency_p50_ms.expect("merged p50");
        let p99 = t.total_latency_p99_ms.expect("merged p99");
        assert!(
            (1.9..2.1).contains(&p50) || (38.0..42.0).contains(&p50),
            "{p50}"
        );
        assert!((38.0..42.0).contains(&p99), "{p99}");
        assert!(t.line(false).contains("latency p50"), "{}", t.line(false));
        assert!(!t.line(false).contains("p99 - ms"), "{}", t.line(false));
    }

    #[test]
    fn gaps_count_as_lost_and_a_restart_is_reported() {
        let reg = StatsRegistry::new();
        let h = reg.sender("cam");
        let mut s = lock(&h);
        let mk = |seq| Header::new(8, 1, seq, 0, 1);
        assert_eq!(s.frame(&mk(0), 1, 0), None);
        assert_eq!(s.frame(&mk(3), 1, 0), None);
        assert_eq!(s.frame(&mk(1), 1, 0), Some(3));
        s.corrupt();
        drop(s);
        let snap = &reg.snapshot()[0];
        assert_eq!((snap.received, snap.lost, snap.corrupt), (3, 2, 1));
        let json = reg.to_json();
        assert!(json.contains("\"name\": \"cam\""), "{json}");
        assert!(json.contains("\"lost\": 2"), "{json}");
    }

    /// Feeds `d_ms` (receiver minus sender, ms) at `t` s after `base`.
    fn feed(s: &mut SenderStats, base: Instant, t: f64, d_ms: f64) {
        let steps = s.clock.host_steps;
        s.clock_sample(
            (d_ms * 1000.0) as i128,
            steps,
            base + Duration::from_secs_f64(t),
        );
    }

    #[test]
    fn a_sender_clock_far_off_is_reported_not_measured() {
        let reg = StatsRegistry::new();
        let h = reg.sender("cam");
        let mut s = lock(&h);
        let b = Instant::now();
        let p99 = |s: &SenderStats| s.snapshot().total_latency_p99_ms;
        // the sender's clock 5 s ahead: every latency would be negative
        s.connected("a:1", "tcp");
        feed(&mut s, b, 0.0, -5000.0);
        feed(&mut s, b, 0.1, -5000.0);
        let snap = s.snapshot();
        assert_eq!(snap.clock_offset_s, Some(5.0));
        assert_eq!(snap.total_latency_p50_ms, None);
        assert!(
            snap.line(false)
                .contains("latency not measured (clocks 5.00 s apart)"),
            "{}",
            snap.line(false)
        );
        // its clock set right (an NTP step): measured again
        feed(&mut s, b, 0.2, 2.0);
        assert_eq!(s.snapshot().clock_offset_s, None);
        assert!(p99(&s).is_some_and(|v| (v - 2.0).abs() < 0.1));
        // just past the ahead limit and back a little: no flapping
        feed(&mut s, b, 0.3, -100.5);
        assert!(s.snapshot().clock_offset_s.is_some());
        feed(&mut s, b, 0.4, -99.0);
        assert!(s.snapshot().clock_offset_s.is_some(), "hysteresis");
        feed(&mut s, b, 0.5, -5.0);
        assert_eq!(s.snapshot().clock_offset_s, None);

        // an hour behind from the start of a connection: judged after 5 s
        s.connected("a:2", "tcp");
        for k in 0..8 {
            feed(&mut s, b, 1.0 + k as f64 * 0.5, 3_600_000.0);
            assert_eq!(s.snapshot().clock_offset_s, None, "still judging");
        }
        feed(&mut s, b, 6.1, 3_600_000.0);
        assert_eq!(s.snapshot().clock_offset_s, Some(-3600.0));
        assert!(p99(&s).is_some_and(|v| v < 10.0), "no hour in the latency");
        // and set right later: agree, counted again
        feed(&mut s, b, 7.0, 3.0);
        assert_eq!(s.snapshot().clock_offset_s, None);
    }

    #[test]
    fn frames_that_really_waited_are_latency_not_a_clock() {
        let reg = StatsRegistry::new();
        let h = reg.sender("cam");
        let mut s = lock(&h);
        let b = Instant::now();
        let p99 = |s: &SenderStats| s.snapshot().total_latency_p99_ms.unwrap_or(0.0);
        // six frames held 35 s by a --no-drop sender while the receiver was
        // away, then fresh ones: all counted, no clock verdict
        s.connected("a:1", "tcp");
        for k in 0..6 {
            feed(&mut s, b, 0.01 * k as f64, 35_000.0 - 200.0 * k as f64);
        }
        assert_eq!(s.snapshot().total_latency_p99_ms, None, "held back");
        feed(&mut s, b, 0.1, 3.0);
        assert_eq!(s.snapshot().clock_offset_s, None);
        assert!(p99(&s) > 34_000.0, "held frames are real latency");
        // a stall of 40 s mid-stream: a jump, then shrinking waits
        for k in 0..8 {
            feed(
                &mut s,
                b,
                50.0 + 0.01 * k as f64,
                40_000.0 - 5_000.0 * k as f64,
            );
        }
        assert_eq!(s.snapshot().clock_offset_s, None);
        assert!(p99(&s) > 39_000.0);
    }

    #[test]
    fn clock_steps_mid_stream_are_judged_again() {
        let reg = StatsRegistry::new();
        let h = reg.sender("cam");
        let mut s = lock(&h);
        let b = Instant::now();
        s.connected("a:1", "tcp");
        feed(&mut s, b, 0.0, 5.0);
        // this host's clock jumps an hour ahead (seen as a host step)
        let steps = s.clock.host_steps + 1;
        for k in 0..12 {
            let t = b + Duration::from_secs_f64(1.0 + 0.5 * k as f64);
            s.clock_sample(3_600_005_000, steps, t);
        }
        assert_eq!(s.snapshot().clock_offset_s, Some(-3600.005));
        // back: agree
        feed(&mut s, b, 10.0, 4.0);
        assert_eq!(s.snapshot().clock_offset_s, None);
        // the sender's clock steps an hour back mid-stream: a jump, judged
        for k in 0..12 {
            feed(&mut s, b, 20.0 + 0.5 * k as f64, 3_600_004.0);
        }
        assert_eq!(s.snapshot().clock_offset_s, Some(-3600.004));
        let snap = s.snapshot();
        assert!(
            snap.total_latency_p99_ms.is_some_and(|v| v < 10.0),
            "{snap:?}"
        );
    }

    #[test]
    fn samples_held_after_this_hosts_clock_was_set_are_not_latency() {
        // Both Pis booted with their clocks in 1970 (they agree); NTP sets
        // the receiver's years ahead, the sender's a second later: what
        // was held meanwhile measured the step, not a wait.
        let reg = StatsRegistry::new();
        let h = reg.sender("cam");
        let mut s = lock(&h);
        let b = Instant::now();
        s.connected("a:1", "tcp");
        feed(&mut s, b, 0.0, 4.0);
        let steps = s.clock.host_steps + BIG_STEP;
        let years = 56.0 * 365.0 * 86_400_000.0;
        for k in 0..10 {
            let t = b + Duration::from_secs_f64(0.1 + 0.1 * k as f64);
            s.clock_sample((years * 1000.0) as i128, steps, t);
        }
        feed(&mut s, b, 1.5, 5.0);
        let snap = s.snapshot();
        assert_eq!(snap.clock_offset_s, None);
        assert!(
            snap.total_latency_p99_ms.is_some_and(|v| v < 10.0),
            "{snap:?}"
        );
        // A small correction (2 s: it cannot pass for a 30 s wait) while a
        // --no-drop backlog of 40 s waits is drained: those are counted.
        s.connected("a:2", "tcp");
        let (b, small) = (Instant::now(), s.clock.host_steps + 1);
        for k in 0..6 {
            let t = b + Duration::from_secs_f64(0.01 * k as f64);
            s.clock_sample(40_000_000 - 100_000 * k as i128, small, t);
        }
        feed(&mut s, b, 0.1, 5.0);
        assert!(
            s.snapshot()
                .total_latency_p99_ms
                .is_some_and(|v| v > 39_000.0),
            "{:?}",
            s.snapshot()
        );
    }

    #[test]
    fn a_takeover_does_not_cancel_the_new_connections_judgement() {
        let reg = StatsRegistry::new();
        let h = reg.sender("cam");
        let mut s = lock(&h);
        let b = Instant::now();
        s.connected("a:1", "tcp");
        s.connected("a:2", "tcp"); // the sender reconnected first
        s.disconnected(); // then the old stream noticed
        for k in 0..12 {
            feed(&mut s, b, 0.5 * k as f64, 3_600_000.0);
        }
        let snap = s.snapshot();
        assert_eq!(snap.clock_offset_s, Some(-3600.0));
        assert_eq!(snap.total_latency_p50_ms, None);
    }

    #[test]
    fn absurd_jumps_are_a_new_numbering_not_losses() {
        let reg = StatsRegistry::new();
        let h = reg.sender("hostile");
        let mut s = lock(&h);
        let mk = |seq| Header::new(8, 1, seq, 0, 1);
        assert_eq!(s.frame(&mk(0), 1, 0), None);
        for _ in 0..3 {
            assert_eq!(s.frame(&mk(u64::MAX - 1), 1, 0), Some(0));
            assert_eq!(s.frame(&mk(0), 1, 0), Some(u64::MAX - 1));
        }
        assert_eq!(s.frame(&mk(u64::MAX - 1), 1, 0), Some(0));
        assert_eq!(s.frame(&mk(u64::MAX), 1, 0), None);
        assert_eq!(s.frame(&mk(MAX_GAP), 1, 0), Some(u64::MAX));
        assert_eq!(s.frame(&mk(2 * MAX_GAP), 1, 0), None);
        assert_eq!(s.snapshot().lost, MAX_GAP - 1);
    }

    #[test]
    fn a_takeover_keeps_the_sender_connected() {
        let reg = StatsRegistry::new();
        let h = reg.sender("cam");
        let mut s = lock(&h);
        s.connected("a:1", "tcp");
        s.connected("a:2", "tcp"); // reconnect before the old stream noticed
        s.disconnected(); // the old one closes
        assert!(s.snapshot().connected);
        s.disconnected();
        assert!(!s.snapshot().connected);
        assert_eq!(s.snapshot().connections, 2);
    }

    #[test]
    fn json_escapes_names() {
        let mut out = String::new();
        json_str(&mut out, "a\"b\\c\u{1}");
        assert_eq!(out, "\"a\\\"b\\\\c\\u0001\"");
    }
}
