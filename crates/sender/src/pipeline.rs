//! The sender's streaming architecture: a capture thread and a network thread
//! joined by a small bounded queue.
//!
//! ```text
//!  capture (caller's thread)          network thread
//!  Source::next_mask ──► FrameQueue ──► FrameEncoder::encode ──► Link (TCP | UDP)
//!       ▲   (cap N; full: drop oldest,        │ on error: log, reconnect with
//!       │    or block with --no-drop)         │ capped exponential backoff,
//!       └──────── free masks recycled ◄───────┘ force_keyframe() on reconnect
//! ```
//!
//! Sequence numbers are given at capture, so every frame the sender drops
//! shows up at the receiver as a gap (counted as lost there) as well as in
//! the sender's own `dropped` counter. Frames are encoded only after the
//! drop decision, just before they are written, so a temporal codec never
//! references a frame that was dropped.
//!
//! Over TCP the receiver acknowledges the frames it handled (PROTOCOL.md
//! section 6): the network thread keeps the frames in flight ([`WINDOW`]
//! with `--no-drop`, their masks included) until confirmed. When a
//! connection breaks, `--no-drop` sends them again on the next one (with
//! `HELLO_RESUME`, so the receiver skips those it had handled); otherwise
//! they are counted as unconfirmed. At the end of the input the thread waits
//! for the last confirmations before it closes the stream.
//!
//! Hooks for other work:
//! - frame sources: anything implementing [`crate::input::Source`];
//! - codecs: implement [`FrameEncoder`] (the codec's `force_keyframe()` is
//!   called through [`FrameEncoder::force_keyframe`] after every reconnect).

use crate::input::{Mask, MaskParams, Source};
use crate::{net, udp};
use anyhow::{Context, Result};
use bitmask_wire::{finish_frame_in_place, Header, HEADER_LEN};
use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How frames travel.
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    /// One TCP connection (reliable, in order; back-pressure reaches the queue).
    Tcp,
    /// Datagrams under the path MTU (docs/PROTOCOL.md, "UDP transport").
    Udp,
}

/// Everything the pipeline needs besides the source and the encoder.
#[derive(Clone, Debug)]
pub struct Config {
    /// Receiver address, HOST:PORT.
    pub to: String,
    /// Name announced in the hello.
    pub name: String,
    /// TCP or UDP.
    pub transport: Transport,
    /// Frames waiting between capture and network, at most (>= 1).
    pub queue: usize,
    /// Never drop: slow the source down instead.
    pub no_drop: bool,
    /// The input is a batch (image files, a recorded file), not a live
    /// source: an unreachable receiver is given up after [`LINGER`] (unless
    /// `endless`), and so is one that confirms nothing for that long.
    pub batch: bool,
    /// The input never ends by itself (`--loop` without `--count`): an
    /// unreachable receiver is waited for, as by a live source.
    pub endless: bool,
    /// Capture at most this many frames per second.
    pub fps: Option<f64>,
    /// Frames come on their producer's clock (a camera on a pipe or
    /// `--input-command`) and may be dropped (no `--no-drop`): every frame
    /// is read as it comes and `--fps` keeps one per period
    /// ([`Source::skip`] for the others). Slowing the reads instead would
    /// fill the pipe with ever older frames.
    pub producer_paced: bool,
    /// Stop after this many captured frames.
    pub count: Option<u64>,
    /// Inputs the run reads, when known (image files without `--loop`):
    /// the summary of a run that ends before its input names those not read.
    pub inputs: Option<u64>,
    /// Connect timeout and stalled-write limit.
    pub timeout: Duration,
    /// Longest wait between reconnect attempts.
    pub retry_max: Duration,
    /// Path MTU for UDP datagrams (IP header included).
    pub mtu: usize,
    /// UDP pacing, Mbit/s.
    pub rate_mbit: Option<f64>,
    /// How often the progress line is logged.
    pub log_every: Duration,
}

/// Turns a mask into a frame payload. The seam where codecs plug in.
pub trait FrameEncoder: Send {
    /// Appends the payload for `mask` (frame `sequence`) to `out` and returns
    /// the header's `(codec, flags)`.
    fn encode(&mut self, mask: &Mask, sequence: u64, out: &mut Vec<u8>) -> Result<(u8, u8)>;
    /// Called after every (re)connect: the next frame must decode on its own
    /// (a key frame), since the receiver may have lost the reference.
    fn force_keyframe(&mut self);
}

/// A captured frame waiting to be sent.
struct Slot {
    mask: Mask,
    sequence: u64,
    /// Links the receiver ended at it so far (`--no-drop`, [`MAX_TRIES`]).
    tries: u8,
}

struct QueueState {
    items: VecDeque<Slot>,
    free: Vec<Mask>,
    closed: bool,
}

/// The bounded queue between capture and network, with a free list so
/// mask buffers are reused (memory stays flat whatever the link does).
struct FrameQueue {
    /// Frames waiting at most (lowered by [`fit_memory`]).
    cap: AtomicUsize,
    no_drop: bool,
    state: Mutex<QueueState>,
    items: Condvar,
    space: Condvar,
}

impl FrameQueue {
    fn new(cap: usize, no_drop: bool) -> Self {
        FrameQueue {
            cap: AtomicUsize::new(cap.max(1)),
            no_drop,
            state: Mutex::new(QueueState {
                items: VecDeque::new(),
                free: Vec::new(),
                closed: false,
            }),
            items: Condvar::new(),
            space: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cap(&self) -> usize {
        self.cap.load(Relaxed)
    }

    fn take_free(&self) -> Mask {
        self.lock().free.pop().unwrap_or_default()
    }

    fn recycle(&self, mask: Mask) {
        let mut s = self.lock();
        if s.free.len() <= self.cap() + 2 {
            s.free.push(mask);
        }
    }

    /// Queues a frame. Full: drops the oldest waiting one (returns 1), or
    /// with `no_drop` waits for room.
    fn push(&self, slot: Slot) -> u64 {
        let mut s = self.lock();
        let mut dropped = 0;
        if self.no_drop {
            while s.items.len() >= self.cap() && !s.closed {
                s = self.space.wait(s).unwrap_or_else(|p| p.into_inner());
            }
            if s.closed {
                // the network side ended (an error): nothing more is sent
                s.free.push(slot.mask);
                return 1;
            }
        } else {
            while s.items.len() >= self.cap() {
                let old = s.items.pop_front().unwrap();
                log::trace!("queue full: dropping frame {}", old.sequence);
                s.free.push(old.mask);
                dropped += 1;
            }
        }
        s.items.push_back(slot);
        self.items.notify_one();
        dropped
    }

    /// The oldest waiting frame; `None` once closed and empty.
    fn pop(&self) -> Option<Slot> {
        let mut s = self.lock();
        loop {
            if let Some(slot) = s.items.pop_front() {
                self.space.notify_one();
                return Some(slot);
            }
            if s.closed {
                return None;
            }
            s = self.items.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// The newest waiting frame, and how many older ones it replaced
    /// (taken off the queue, their masks kept for reuse as [`Self::recycle`]
    /// does); `None` when none waits, or once the input has ended (every
    /// frame left is sent then). Never blocks.
    fn pop_newest(&self) -> Option<(Slot, u64)> {
        let mut s = self.lock();
        if s.closed {
            return None;
        }
        let newest = s.items.pop_back()?;
        let older = s.items.len() as u64;
        while let Some(o) = s.items.pop_front() {
            if s.free.len() <= self.cap() + 2 {
                s.free.push(o.mask);
            }
        }
        self.space.notify_all();
        Some((newest, older))
    }

    /// Whether [`Self::close`] was called.
    fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Closed by the capture side when the input ends, by the network side
    /// when it ends (then a blocked `push` returns, dropping its frame).
    fn close(&self) {
        self.lock().closed = true;
        self.items.notify_all();
        self.space.notify_all();
    }
}

/// Counters shared by both threads, read for the log lines.
#[derive(Default)]
pub struct Counters {
    /// Frames taken from the source.
    pub captured: AtomicU64,
    /// `--no-drop` frames kept unconfirmed at most, when [`fit_memory`]
    /// lowered it from [`WINDOW`] (0: not lowered).
    window: AtomicUsize,
    /// Frames read and left by `--fps` (a producer faster than it:
    /// [`Config::producer_paced`]).
    pub skipped: AtomicU64,
    /// Frames written to the link in full.
    pub sent: AtomicU64,
    /// Bytes of those frames (headers included).
    pub sent_bytes: AtomicU64,
    /// Frames dropped unsent (queue full, or no receiver to send to).
    pub dropped: AtomicU64,
    /// Frames whose write failed part way (the connection broke).
    pub failed: AtomicU64,
    /// Successful connects after the first.
    pub reconnects: AtomicU64,
    /// Frames the receiver confirmed (acknowledged as handled).
    pub confirmed: AtomicU64,
    /// Frames written to a connection that ended before the receiver
    /// confirmed them (they may or may not have arrived).
    pub unconfirmed: AtomicU64,
    /// Frames written again after a reconnect (`--no-drop`).
    pub resent: AtomicU64,
    /// Inputs passed over, their frame numbers left unused (image files
    /// that could not be read).
    pub unreadable: AtomicU64,
    /// Frames written (and not confirmed) that were then given up: counted
    /// in `dropped`, not in `unconfirmed`.
    pub written_dropped: AtomicU64,
    /// The receiver acknowledges frames (it has at least once).
    pub acks: AtomicBool,
    /// The run is `--no-drop`.
    pub no_drop: AtomicBool,
    /// The input came to its end (or `--count`), rather than being cut
    /// short by a stop signal or an error.
    pub input_ended: AtomicBool,
    /// A link is up now.
    pub connected: AtomicBool,
    /// Inputs the run reads, 0 when not known ([`Config::inputs`]).
    pub inputs: AtomicU64,
    /// Frames encoded, and the nanoseconds that took (what tells a CPU
    /// too slow from a link too slow, [`DropNote`]).
    pub encoded: AtomicU64,
    /// See [`Counters::encoded`].
    pub encode_ns: AtomicU64,
}

/// Says why a live sender drops frames, once a minute at most: the input
/// gives more than is sent while connected, and either this process takes
/// most of the CPU it can use (encoding on the network thread, or all of
/// it: a Pi Zero at 1024x768), or it does not (the link or the receiver
/// is slow). Judged over a window that starts at the first frame, restarts
/// after 10 s without drops and at every reconnect or time unconnected,
/// and only when at least 3 frames and 5% of those captured were dropped.
struct DropNote {
    /// Since when the window runs, and the counts then ([`Self::counts`]).
    since: Instant,
    at: [u64; 6],
    /// The process's CPU seconds then.
    cpu_at: f64,
    said: Option<Instant>,
    /// The cores this process may use (read once: it reads cgroup files).
    cores: usize,
}

/// The process's user + system CPU seconds, all threads (`getrusage`).
fn process_cpu_s() -> f64 {
    // SAFETY: rusage is plain integers, valid zeroed.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the live struct it is given.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return 0.0;
    }
    let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    s(u.ru_utime) + s(u.ru_stime)
}

/// The calling thread's CPU nanoseconds (`CLOCK_THREAD_CPUTIME_ID`): what
/// encoding a frame costs, without the time other threads and processes
/// took the core meanwhile.
fn thread_cpu_ns() -> u64 {
    // SAFETY: timespec is plain integers, valid zeroed.
    let mut t: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: clock_gettime writes into the live timespec it is given.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) } != 0 {
        return 0;
    }
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

impl DropNote {
    fn new(c: &Counters) -> Self {
        DropNote {
            since: Instant::now(),
            at: Self::counts(c),
            cpu_at: process_cpu_s(),
            said: None,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }

    /// dropped, captured, encoded, encode_ns, reconnects, and 1 while
    /// unconnected.
    fn counts(c: &Counters) -> [u64; 6] {
        [
            c.dropped.load(Relaxed),
            c.captured.load(Relaxed),
            c.encoded.load(Relaxed),
            c.encode_ns.load(Relaxed),
            c.reconnects.load(Relaxed),
            u64::from(!c.connected.load(Relaxed)),
        ]
    }

    /// After a frame is queued: the line to log, if one is due.
    fn check(&mut self, c: &Counters) -> Option<String> {
        self.check_at(Instant::now(), Self::counts(c), process_cpu_s)
    }

    fn restart(&mut self, now: Instant, n: [u64; 6], cpu: f64) {
        (self.since, self.at, self.cpu_at) = (now, n, cpu);
    }

    /// [`Self::check`] at `now`, with the counts then and the process's CPU
    /// seconds (read only when a line may be due).
    fn check_at(&mut self, now: Instant, n: [u64; 6], cpu: impl Fn() -> f64) -> Option<String> {
        let d = |i: usize| n[i].saturating_sub(self.at[i]);
        let dt = now.saturating_duration_since(self.since).as_secs_f64();
        // the window starts at the first frame; restarts at a reconnect,
        // while unconnected (those drops are no receiver's), and after
        // 10 s without a drop (an old quiet stretch would dilute the rates)
        if n[5] == 1 && self.at[5] == 1 {
            // (still unconnected: restarted when that began, and again
            // when it ends)
            return None;
        }
        if self.at[1] == 0 || d(4) > 0 || n[5] != self.at[5] || (d(0) == 0 && dt > 10.0) {
            self.restart(now, n, cpu());
            return None;
        }
        let (dropped, captured) = (d(0), d(1));
        if dt < 2.0
            || dropped < 3
            || dropped * 20 < captured
            || self
                .said
                .is_some_and(|t| now.duration_since(t) < Duration::from_secs(60))
        {
            return None;
        }
        let cpu_now = cpu();
        // (the sender's two busy threads: capture and network)
        let usable = self.cores.clamp(1, 2) as f64;
        let cpu_share = (cpu_now - self.cpu_at) / dt / usable;
        let line = drop_cause(
            n[0],
            captured as f64 / dt,
            (d(2) > 0).then(|| d(3) as f64 / d(2) as f64 / 1e6),
            cpu_share,
        );
        self.restart(now, n, cpu_now);
        self.said = Some(now);
        Some(line)
    }
}

/// The line [`DropNote`] logs: `dropped` frames so far, the input's frames
/// a second, the CPU milliseconds encoding one took (if any was), and the
/// share of the CPU the process could use that it did.
fn drop_cause(dropped: u64, input_fps: f64, encode_ms: Option<f64>, cpu_share: f64) -> String {
    let busy = encode_ms.map_or(0.0, |ms| ms * input_fps / 1000.0);
    let cost = match encode_ms {
        Some(ms) => format!(
            "; encoding one takes {ms:.1} ms of CPU here (so {:.0} a second at most), the \
             sender used {:.0}% of the CPU it can use",
            1000.0 / ms,
            cpu_share * 100.0
        ),
        None => String::new(),
    };
    if busy >= 0.8 || cpu_share >= 0.8 {
        format!(
            "dropping frames ({dropped} so far): the input gives {input_fps:.1} frames a second{cost}: \
             this CPU, not the link, cannot keep up; a lower --fps (or the camera's own frame \
             rate), a smaller camera resolution and --size, gray or yuv420 input instead of \
             RGB, or a cheaper --codec (lz4; raw where the link has room) helps"
        )
    } else {
        format!(
            "dropping frames ({dropped} so far): the input gives {input_fps:.1} frames a second, \
             more than the link or the receiver takes{cost}; a lower --fps (or the camera's own \
             frame rate) helps, or --no-drop to slow the input instead"
        )
    }
}

impl Counters {
    /// One line for the log and the final summary.
    pub fn summary(&self, elapsed: Duration) -> String {
        self.line(elapsed, 0, 0)
    }

    /// The once-a-second log line: the counts so far, with the rates over
    /// the last interval (`last`: frames and bytes sent, and when, at the
    /// previous line; updated), not since the start (which hardly moves
    /// after a day, and hides a receiver that has been away for a minute).
    pub fn progress(&self, elapsed: Duration, last: &mut (u64, u64, Instant)) -> String {
        let (sent, bytes) = (self.sent.load(Relaxed), self.sent_bytes.load(Relaxed));
        let s = last.2.elapsed().as_secs_f64().max(1e-9);
        let fps = sent.saturating_sub(last.0) as f64 / s;
        let mbps = bytes.saturating_sub(last.1) as f64 * 8.0 / s / 1e6;
        *last = (sent, bytes, Instant::now());
        self.line_with(elapsed, 0, 0, Some((s, fps, mbps)))
    }

    /// The summary of a process that exits now: frames never written (still
    /// queued, or held to be sent again) count as dropped, frames written
    /// and not confirmed as unconfirmed.
    pub fn summary_at_exit(&self, elapsed: Duration) -> String {
        let (never, open) = self.left_at_exit();
        self.line(elapsed, never, open)
    }

    /// The exit status after a run that ended without an error: 0, or
    /// 128 + the signal (130 for Ctrl-C, 143 for SIGTERM) when a stop
    /// signal cut a batch short (its input not all read, or frames of it
    /// not delivered), so that a script can tell an interrupted batch from
    /// a finished one. A live source or an endless `--loop` stopped by a
    /// signal has ended as it should: 0 ([`FINITE`]). A non-zero status is
    /// logged with its reason.
    pub fn status_after_stop(&self) -> i32 {
        match stop_requested() {
            Some(sig) if FINITE.load(Relaxed) && !self.batch_delivered() => {
                log::warn!(
                    "signal {sig} stopped the batch before {}: exit status {}",
                    if self.input_ended.load(Relaxed) {
                        "every frame of it was delivered"
                    } else {
                        "all of its input was read"
                    },
                    128 + sig
                );
                128 + sig
            }
            _ => 0,
        }
    }

    /// Whether the batch's input was read to its end and every frame of it
    /// delivered: none dropped, none left unsent, none unconfirmed.
    fn batch_delivered(&self) -> bool {
        let (never, open) = self.left_at_exit();
        self.input_ended.load(Relaxed)
            && never
                + open
                + self.dropped.load(Relaxed)
                + self.unconfirmed.load(Relaxed)
                + crate::udp::refused_frames()
                == 0
    }

    /// For a process that exits now: (frames never written, frames written
    /// and neither confirmed nor counted yet).
    fn left_at_exit(&self) -> (u64, u64) {
        // (a failed write loses its frame unless --no-drop sends it again)
        let lost_writes = if self.no_drop.load(Relaxed) {
            0
        } else {
            self.failed.load(Relaxed)
        };
        // frames written at least once
        let written = self
            .sent
            .load(Relaxed)
            .saturating_sub(self.resent.load(Relaxed));
        // (a frame given up after being written is in `written` and `dropped`)
        let written_dropped = self.written_dropped.load(Relaxed);
        let never = self.captured.load(Relaxed).saturating_sub(
            written + self.dropped.load(Relaxed).saturating_sub(written_dropped) + lost_writes,
        );
        let open = if self.acks.load(Relaxed) {
            written.saturating_sub(
                self.confirmed.load(Relaxed) + self.unconfirmed.load(Relaxed) + written_dropped,
            )
        } else {
            0 // nothing could be confirmed
        };
        (never, open)
    }

    /// The line, with `never` frames more dropped and `open` more unconfirmed.
    fn line(&self, elapsed: Duration, never: u64, open: u64) -> String {
        self.line_with(elapsed, never, open, None)
    }

    /// [`Counters::line`], with the rates over the last interval
    /// (`(seconds, fps, Mbit/s)`) instead of since the start when given.
    fn line_with(
        &self,
        elapsed: Duration,
        never: u64,
        open: u64,
        interval: Option<(f64, f64, f64)>,
    ) -> String {
        let s = elapsed.as_secs_f64().max(1e-9);
        let sent = self.sent.load(Relaxed);
        let bytes = self.sent_bytes.load(Relaxed);
        let again = match self.resent.load(Relaxed) {
            0 => String::new(),
            n => format!(" ({n} sent again)"),
        };
        let mut confirmed = if self.acks.load(Relaxed) {
            format!("confirmed {}", self.confirmed.load(Relaxed))
        } else {
            "confirmed -".into()
        };
        let u = self.unconfirmed.load(Relaxed) + open;
        if u > 0 {
            confirmed += &format!(", unconfirmed {u}");
        }
        // (frames sent over UDP that the receiver's host refused: 0 over TCP)
        if let n @ 1.. = crate::udp::refused_frames() {
            confirmed += &format!(", at least {n} refused by the receiver's host");
        }
        let rates = match interval {
            None => format!(
                "{:.1} fps, {:.1} Mbit/s",
                sent as f64 / s,
                bytes as f64 * 8.0 / s / 1e6
            ),
            Some((win, fps, mbps)) => format!("last {win:.1} s {fps:.1} fps, {mbps:.1} Mbit/s"),
        };
        let mut skipped = match self.skipped.load(Relaxed) {
            0 => String::new(),
            n => format!(" (and {n} skipped for --fps)"),
        };
        if let n @ 1.. = self.unreadable.load(Relaxed) {
            skipped += &format!(" (and {n} input(s) unreadable, their frame numbers unused)");
        }
        // (in the summary of a run that ended before its input did: a batch
        // that gave up, or a stop)
        let inputs = self.inputs.load(Relaxed);
        if interval.is_none() && inputs > 0 && !self.input_ended.load(Relaxed) {
            let read = self.captured.load(Relaxed) + self.unreadable.load(Relaxed);
            if let n @ 1.. = inputs.saturating_sub(read) {
                skipped += &format!(" ({n} of {inputs} inputs not read)");
            }
        }
        format!(
            "captured {}{skipped}, sent {sent} frames{again}, {bytes} bytes in {s:.2} s: {rates}; \
             {confirmed}; dropped {}, failed {}, reconnects {}",
            self.captured.load(Relaxed),
            self.dropped.load(Relaxed) + never,
            self.failed.load(Relaxed),
            self.reconnects.load(Relaxed),
        )
    }
}

/// A connected way to the receiver.
pub trait Link: Send {
    /// Writes one whole wire frame.
    fn send_frame(&mut self, frame: &[u8], sequence: u64) -> io::Result<()>;
    /// Whether the receiver has already closed this link (checked before a
    /// frame is written: a frame written into a connection the receiver has
    /// closed is lost without an error).
    /// (With acknowledgements, this also reads them.)
    fn closed_by_peer(&mut self) -> Option<String> {
        None
    }
    /// One past the last frame the receiver has confirmed on this link
    /// (PROTOCOL.md section 6); `None` while it has confirmed nothing (as
    /// a receiver that does not acknowledge, or UDP, never does).
    fn acked(&self) -> Option<u64> {
        None
    }
    /// The receiver's record of handled frames this link follows, as its
    /// acknowledgements name it: (id, this link started it); `None` while
    /// none came, or from a receiver that does not say.
    fn record(&self) -> Option<(u32, bool)> {
        None
    }
    /// Waits up to `limit` for acknowledgements; `Some(why)` when the link
    /// is over, as [`Link::closed_by_peer`].
    fn wait_acks(&mut self, limit: Duration) -> Option<String> {
        std::thread::sleep(limit);
        None
    }
    /// Whether the receiver's host still answers (its TCP acknowledges
    /// what was sent): a receiver that confirms nothing for a while on such
    /// a link is slow, not gone.
    fn peer_answers(&self) -> bool {
        false
    }
    /// [`Link::peer_answers`], with what the link knows of the receiver's
    /// host when it does not (TCP: its state and retransmissions, from the
    /// same look); the text may be empty.
    fn peer_verdict(&self) -> (bool, String) {
        (self.peer_answers(), String::new())
    }
    /// Whether the receiver lost frames that the link knows of without a
    /// reconnect (UDP: its host refused datagrams, a receiver restarted or
    /// away): the next frame should be a key frame, or every delta until
    /// the scheduled one is undecodable there. Cleared by the call.
    fn take_keyframe_hint(&mut self) -> bool {
        false
    }
    /// Whether the link's own warnings (a stalled write) are debug lines:
    /// set on a link made after [`QUIET_AFTER`] links in a row without
    /// progress, whose losses a [`Reminder`] says.
    fn set_quiet(&mut self, _quiet: bool) {}
    /// Ends the stream cleanly.
    fn finish(self: Box<Self>);
}

fn connect(cfg: &Config, name: &str, resume: bool) -> Result<Box<dyn Link>> {
    Ok(match cfg.transport {
        Transport::Tcp => Box::new(net::Connection::connect(
            &cfg.to,
            name,
            cfg.timeout,
            resume,
        )?),
        Transport::Udp => Box::new(udp::UdpLink::connect(
            &cfg.to,
            name,
            cfg.mtu,
            cfg.rate_mbit,
            cfg.no_drop,
        )?),
    })
}

/// `name-pidPID`: the name a sender goes on under once another sender
/// uses its name at the receiver, shortened (at a character boundary) to
/// keep it within the protocol's 255 bytes.
pub fn own_name(name: &str, pid: u32) -> String {
    bitmask_wire::name_with_suffix(name, &format!("-pid{pid}"))
}

/// How long a connection must have lasted for a frame sent on it to reset
/// the reconnect backoff.
const STABLE: Duration = Duration::from_secs(1);

/// Capped exponential backoff: 50 ms, 100 ms, ... up to `max`.
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(50);
    fn new(max: Duration) -> Self {
        Backoff {
            next: Self::FIRST.min(max),
            max,
        }
    }
    fn reset(&mut self) {
        self.next = Self::FIRST.min(self.max);
    }
    fn step(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }
}

/// After the input ends, how long queued frames may wait for a receiver
/// (and how long a batch waits for an unreachable one).
const LINGER: Duration = Duration::from_secs(10);
/// Links in a row without an acknowledgement, after the receiver sent some,
/// before it is taken for one that sends none ([`Delivery::may_be_dark`]).
const DARK_LINKS: u32 = 2;
/// How often an unreachable receiver is said again.
const REMIND: Duration = Duration::from_secs(30);
/// The longest gap of a [`Reminder`].
const REMIND_MAX: Duration = Duration::from_secs(600);
/// Links since the receiver last confirmed a frame from which a link's
/// own lines (connected, lost, frames not confirmed) are debug only, and a
/// [`Reminder`] says it instead: a receiver that ends every connection
/// (frames over its --max-size or --max-memory, all its slots taken) must
/// not fill the journal with three lines every half second for hours.
const QUIET_AFTER: u32 = 3;

/// A line said again while its condition lasts: at once, then after
/// [`REMIND`] (or the first gap given), the gap doubling up to
/// [`REMIND_MAX`]; the occasions passed over in between are counted for
/// the next line. A condition that gave no occasion for [`REMIND_MAX`]
/// after a line was due is over: the next occasion starts again from the
/// first gap (so a trouble that comes back after a calm hour is said as
/// promptly as the first time, and one that recurs every few minutes
/// still goes quiet).
#[derive(Debug)]
pub(crate) struct Reminder {
    next: Option<Instant>,
    gap: Duration,
    first: Duration,
    passed: u64,
}

impl Default for Reminder {
    fn default() -> Self {
        Reminder::after(REMIND)
    }
}

/// The tail of a reminded line: how many occasions were not said since
/// the last line, and that it is said at longer intervals.
pub(crate) fn said_again(passed: u64) -> String {
    if passed == 0 {
        String::new()
    } else {
        format!(" ({passed} more time(s) since the last such line; said at longer intervals while it lasts)")
    }
}

impl Reminder {
    /// A reminder whose second line comes `first` after the first.
    pub(crate) fn after(first: Duration) -> Self {
        Reminder {
            next: None,
            gap: first,
            first,
            passed: 0,
        }
    }

    /// One more occasion: `Some(passed over since the last line)` when it
    /// is to be said.
    pub(crate) fn hit(&mut self) -> Option<u64> {
        self.hit_at(Instant::now())
    }

    fn hit_at(&mut self, now: Instant) -> Option<u64> {
        match self.next {
            Some(t) if now < t => {
                self.passed += 1;
                None
            }
            next => {
                self.gap = match next {
                    Some(t) if now.saturating_duration_since(t) < REMIND_MAX => {
                        (self.gap * 2).min(REMIND_MAX)
                    }
                    _ => self.first,
                };
                self.next = Some(now + self.gap);
                Some(std::mem::take(&mut self.passed))
            }
        }
    }
}

/// Runs capture on this thread and the network on another until the source
/// ends (or `--count`). Returns the counters for the final summary.
pub fn run(
    cfg: Config,
    mut source: Box<dyn Source + '_>,
    params: MaskParams,
    encoder: Box<dyn FrameEncoder>,
) -> Result<Arc<Counters>> {
    let queue = Arc::new(FrameQueue::new(cfg.queue, cfg.no_drop));
    let counters = Arc::new(Counters::default());
    counters.no_drop.store(cfg.no_drop, Relaxed);
    counters.inputs.store(cfg.inputs.unwrap_or(0), Relaxed);
    let start = Instant::now();
    let _ = RUNNING.set((counters.clone(), start));
    let net_thread = {
        let (q, c, cfg) = (queue.clone(), counters.clone(), cfg.clone());
        std::thread::Builder::new()
            .name("network".into())
            .spawn(move || {
                let r = network_loop(&cfg, &q, &c, encoder);
                // (a capture blocked on a full --no-drop queue must not wait for ever)
                q.close();
                r
            })
            .context("starting the network thread")?
    };
    let period = cfg
        .fps
        .filter(|f| *f > 0.0)
        .map(|f| Duration::from_secs_f64(1.0 / f));
    let mut next_due = Instant::now();
    let mut sequence = 0u64;
    let mut last_report = (0u64, 0u64, Instant::now());
    let mut drop_note = DropNote::new(&counters);
    // `--fps` on frames that come on their producer's clock (a camera)
    let keep_newest = period.filter(|_| cfg.producer_paced);
    // There: the camera's period, estimated from the time between two
    // frames read (a moving average; each sample at most the --fps
    // period, so a stall does not make the sender keep frames early).
    let mut camera = CameraClock::default();
    // What masks may take: half the memory available before they grew
    // ([`fit_memory`], at each frame larger than any before).
    let budget = crate::input::memory_available().map_or(usize::MAX, |b| b / 2);
    let mut largest = 0;
    // What the input passed over (unreadable images): an error after
    // delivery, unless the delivery failed itself.
    let mut skipped = None;
    let result = (|| -> Result<()> {
        loop {
            if cfg.count.is_some_and(|n| sequence >= n) {
                skipped = input_ended(&counters, &mut *source);
                break;
            }
            if let Some(p) = keep_newest {
                // Frames until the next one due are read and left: the one
                // kept is the camera's newest, not one that waited in the pipe.
                // (The next one is due a period after this one arrives, or
                // on the grid when it is on time: see below.)
                // A frame is skipped when the one after it comes nearer
                // to the time due: the frame kept is the first about due,
                // not the one after it (which halved the rate of a 30 fps
                // camera at --fps 20 or 30).
                // (nothing is skipped before the camera's period is known: a
                // camera as slow as --fps loses no frame at the start)
                while !camera.period.is_zero()
                    && Instant::now() + camera.period * 3 / 2 < next_due
                    && stop_requested().is_none()
                {
                    if !source.skip()? {
                        break; // the end of input (or a stop): seen below
                    }
                    camera.read(p);
                    if counters.skipped.fetch_add(1, Relaxed) == 0 {
                        log::warn!(
                            "--fps {}: the input makes frames faster; each is read as it \
                             comes and one per {:.0} ms is kept, the others skipped (a \
                             camera's own frame-rate option saves it the work; a recording \
                             or a decoder on a pipe: add --no-drop to send every frame)",
                            cfg.fps.unwrap_or_default(),
                            p.as_secs_f64() * 1e3
                        );
                    }
                }
            } else if let Some(p) = period {
                let now = Instant::now();
                if next_due > now {
                    // in steps, so that a stop does not wait out a long period
                    while stop_requested().is_none() {
                        let left = next_due.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            break;
                        }
                        std::thread::sleep(left.min(Duration::from_millis(100)));
                    }
                } else if now - next_due > p {
                    next_due = now; // fell behind by more than a frame: don't burst to catch up
                }
                next_due += p;
            }
            if let Some(sig) = stop_requested() {
                say_stopping(sig);
                break;
            }
            let mut mask = queue.take_free();
            let more = source.next_mask(&params, &mut mask)?;
            // Inputs the source passed over (image files that could not be
            // read) keep their numbers: frame N stays input N, and the
            // receiver counts the gap as lost.
            let passed = source.passed_over();
            if passed > 0 {
                counters.unreadable.fetch_add(passed, Relaxed);
                sequence += passed;
            }
            if !more {
                queue.recycle(mask);
                skipped = input_ended(&counters, &mut *source);
                break;
            }
            if cfg.count.is_some_and(|n| sequence >= n) {
                // (the skipped inputs took the numbers up to --count)
                queue.recycle(mask);
                skipped = input_ended(&counters, &mut *source);
                break;
            }
            if let Some(p) = keep_newest {
                camera.read(p);
                // Due a period after this frame, or on the grid when it came
                // on time: after a slow start or a stall, no second frame
                // follows at once.
                let arrived = Instant::now();
                next_due = if arrived > next_due + p {
                    arrived + p
                } else {
                    next_due + p
                };
            }
            if mask.bits.len() > largest {
                largest = mask.bits.len();
                fit_memory(&cfg, &queue, &counters, &mask, budget);
            }
            if counters.captured.load(Relaxed) == 0 && (mask.width > 4096 || mask.height > 4096) {
                // (bitmask-recv's --max-size: 65536 a side at most)
                let most = if mask.width > 65536 || mask.height > 65536 {
                    ", and at most 65536x65536 with any"
                } else {
                    ""
                };
                log::warn!(
                    "frames are {}x{}: a receiver refuses frames over its --max-size, \
                     4096x4096 unless started with a larger one{most}",
                    mask.width,
                    mask.height
                );
            }
            counters.captured.fetch_add(1, Relaxed);
            let dropped = queue.push(Slot {
                mask,
                sequence,
                tries: 0,
            });
            counters.dropped.fetch_add(dropped, Relaxed);
            sequence += 1;
            if !cfg.no_drop {
                if let Some(line) = drop_note.check(&counters) {
                    log::warn!("{line}");
                }
            }
            if last_report.2.elapsed() >= cfg.log_every {
                log::info!("{}", counters.progress(start.elapsed(), &mut last_report));
            }
            // The network side ended (a batch that gave up): no more input
            // is read. (It closes the queue before its thread ends: a
            // capture let go by that close must not read on meanwhile.)
            if queue.is_closed() || net_thread.is_finished() {
                break;
            }
        }
        Ok(())
    })();
    // The input ends now (a camera command stops) even if the network still
    // has frames to deliver, or waits for an absent receiver.
    drop(source);
    queue.close();
    let net_result = net_thread
        .join()
        .map_err(|_| anyhow::anyhow!("the network thread panicked"))?;
    // The input's own failure (a camera command that died, a read error)
    // is the error, as it comes first; what it passed over yields to the
    // network's error, and is then said before it.
    result?;
    // A batch over UDP whose frames the receiver's host refused (nothing
    // listened at that port, for a while at least) is not sent. (A live
    // source goes on, as it always does.)
    let refused = crate::udp::refused_frames();
    let net_result = match net_result {
        Ok(()) if refused > 0 && FINITE.load(Relaxed) && stop_requested().is_none() => {
            Err(anyhow::anyhow!(
                "at least {refused} of {} frame(s) did not arrive: the host of {} refused \
                 them (ICMP port unreachable: is the receiver running, on that port?); it \
                 reports some refusals only (the kernel limits them), so others may be lost \
                 too (TCP confirms every frame)",
                counters.sent.load(Relaxed),
                cfg.to
            ))
        }
        r => r,
    };
    match (net_result, skipped) {
        (Ok(()), None) => Ok(counters),
        (Err(e), None) | (Ok(()), Some(e)) => Err(e),
        (Err(net), Some(passed)) => {
            log::error!("{passed:#}");
            Err(net)
        }
    }
}

/// The input came to its end (or to `--count`): says so in `counters`;
/// the error for what the source passed over on the way, if any
/// ([`Source::finish`]).
fn input_ended(counters: &Counters, source: &mut dyn Source) -> Option<anyhow::Error> {
    counters.input_ended.store(true, Relaxed);
    source.finish().err()
}

/// The stop signal received (SIGINT, SIGTERM), 0 for none.
static STOP: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);
/// When the first stop signal came (`CLOCK_MONOTONIC`, ns), 0 before.
static STOP_AT: AtomicU64 = AtomicU64::new(0);

/// `CLOCK_MONOTONIC` in ns (`clock_gettime` is async-signal-safe).
fn monotonic_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime with a valid clock and an owned out-parameter.
    #[allow(unsafe_code)]
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t)
    };
    (t.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(t.tv_nsec as u64)
        .max(1)
}

/// The first stop signal starts the stop (the watchdog and the pipeline
/// look at [`STOP`]). A later one, past [`SAME_STOP`], ends the process
/// here and now, as the signal's default action, after SIGKILL to the
/// camera command we started: nothing but async-signal-safe calls, so it
/// works while every thread is blocked (on a stderr nobody reads, say).
extern "C" fn on_stop_signal(sig: libc::c_int) {
    let now = monotonic_ns();
    if STOP.compare_exchange(0, sig, SeqCst, SeqCst).is_ok() {
        STOP_AT.store(now, SeqCst);
        return;
    }
    let first = STOP_AT.load(SeqCst);
    if first == 0 || now.saturating_sub(first) < SAME_STOP.as_nanos() as u64 {
        return; // the same stop, signalled twice
    }
    crate::command::kill_now();
    // (nothing said: a write to a stderr nobody reads would block here;
    // the first signal's line says that a second ends it without more)
    // SAFETY: signal(2) and raise(3) are async-signal-safe.
    #[allow(unsafe_code)]
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
}

/// A stop signal this soon after the first is the same stop, not a second
/// one: `timeout(1)` sends SIGTERM to the process and then to its process
/// group, so the process gets it twice, microseconds apart.
const SAME_STOP: Duration = Duration::from_millis(500);

/// The input ends by itself: image files or a recorded raw file, paced by
/// `--fps` or not, but not an endless `--loop` (a signal is its end), a
/// pipe or a camera. A stop signal that cuts such an input short makes the
/// exit status 128 + the signal ([`Counters::status_after_stop`]). Set by
/// the binary before the input is opened ([`set_finite_input`]), so that a
/// stop during a long start-up knows it too.
static FINITE: AtomicBool = AtomicBool::new(false);

/// Says whether the input ends by itself (see [`FINITE`]).
pub fn set_finite_input(finite: bool) {
    FINITE.store(finite, Relaxed);
}

/// The exit status of a process that a stop signal ends now: as
/// [`Counters::status_after_stop`], or, before the pipeline started, 128 +
/// the signal for an input that ends by itself.
fn status_now() -> i32 {
    match (RUNNING.get(), stop_requested()) {
        (Some((c, _)), _) => c.status_after_stop(),
        (None, Some(sig)) if FINITE.load(Relaxed) => 128 + sig,
        _ => 0,
    }
}

/// The running pipeline's counters and start, for a stop that cannot wait.
static RUNNING: std::sync::OnceLock<(Arc<Counters>, Instant)> = std::sync::OnceLock::new();

/// The counters of the pipeline that ran (for a summary after an error).
pub fn counters() -> Option<&'static Counters> {
    RUNNING.get().map(|(c, _)| &**c)
}

/// Whether signal `sig` is ignored (`nohup` ignores SIGHUP).
fn ignored(sig: libc::c_int) -> bool {
    // SAFETY: sigaction with no new action only reads the current one into
    // a zeroed struct owned here.
    #[allow(unsafe_code)]
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(sig, std::ptr::null(), &mut old) == 0 && old.sa_sigaction == libc::SIG_IGN
    }
}

/// How long a stop waits for the input and the network to wind down.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// Makes SIGINT, SIGTERM and SIGHUP (Ctrl-C, `systemctl stop`, the ssh
/// session gone; not SIGHUP under `nohup`) end the input like
/// its end: the frames queued are sent and the summary printed. When that
/// does not happen within [`STOP_GRACE`] (the input blocked reading, a
/// long `--fps` period, a receiver away), the summary is printed and the
/// process exits anyway, with the status of [`Counters::status_after_stop`].
/// A second signal (past [`SAME_STOP`]) ends the process at once, as the
/// signal's default action would, after the camera command we started
/// ([`on_stop_signal`]).
pub fn stop_on_signals() {
    let watchdog = std::thread::Builder::new()
        .name("stop".into())
        .spawn(|| loop {
            std::thread::sleep(Duration::from_millis(50));
            if let Some(sig) = stop_requested() {
                // said at once, whatever the input (a pipe's read ends as
                // if the pipe did: said as a stop, not as the camera's end),
                // from a thread of its own: a stderr nobody reads must not
                // hold the grace's clock
                let _ = std::thread::Builder::new()
                    .name("stopping".into())
                    .spawn(move || say_stopping(sig));
                // a producer we started ends now: the capture need not wait for its next frame
                crate::command::stop();
                std::thread::sleep(STOP_GRACE);
                // nothing of a camera command may outlive us (it would hold
                // the camera): first, before a line to a stderr that nobody
                // reads could hold the exit (the camera may share it); the
                // lines, the status's among them, then from a thread given
                // 1 s
                crate::command::kill_now();
                let (said, heard) = std::sync::mpsc::channel();
                let _ = std::thread::Builder::new()
                    .name("last words".into())
                    .spawn(move || {
                        log::warn!(
                            "stopping: signal {sig}, and the input or the link did not end \
                             within {} s; exiting now",
                            STOP_GRACE.as_secs()
                        );
                        if let Some((c, start)) = RUNNING.get() {
                            say!("bitmask-send: {}", c.summary_at_exit(start.elapsed()));
                        }
                        let _ = said.send(status_now());
                    });
                // (unsaid: a batch cut short is 128 + the signal)
                let status = heard
                    .recv_timeout(Duration::from_secs(1))
                    .unwrap_or(if FINITE.load(Relaxed) { 128 + sig } else { 0 });
                std::process::exit(status);
            }
        });
    if let Err(e) = watchdog {
        log::debug!("no stop watchdog: {e}");
    }
    // (and a hangup: the ssh session a sender was started from went away,
    // unless it was started under nohup, which ignores it)
    let hup = (!ignored(libc::SIGHUP)).then_some(libc::SIGHUP);
    for sig in [libc::SIGINT, libc::SIGTERM].into_iter().chain(hup) {
        // SAFETY: the handler only stores to an atomic (async-signal-safe);
        // the sigaction struct is fully initialised before the call.
        #[allow(unsafe_code)]
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_stop_signal as *const () as libc::sighandler_t;
            sa.sa_flags = 0; // (no SA_RESTART: a blocked read returns EINTR)
            libc::sigemptyset(&mut sa.sa_mask);
            if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
                log::debug!(
                    "cannot handle signal {sig}: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
    }
}

/// Says, once, that the stop began: by the watchdog within 50 ms of the
/// signal, or by the capture loop or the raw reader if it saw it first.
pub(crate) fn say_stopping(sig: i32) {
    // (a later caller waits for the line: the summary never comes first)
    static SAID: std::sync::Once = std::sync::Once::new();
    SAID.call_once(|| {
        log::info!(
            "stopping: signal {sig}; sending what is queued, for at most {} s (a second \
             signal ends it at once, without the summary)",
            STOP_GRACE.as_secs()
        )
    });
}

/// The stop signal received so far, if any.
pub(crate) fn stop_requested() -> Option<i32> {
    match STOP.load(Relaxed) {
        0 => None,
        s => Some(s),
    }
}

/// Frames a `--no-drop` sender keeps until the receiver confirms them, at
/// most: past this it waits for acknowledgements before writing more.
const WINDOW: usize = 64;
/// Masks held besides the queue's and the window's: the one being
/// captured, the one being sent, and the free list's spares.
const SPARE_MASKS: usize = 3;

/// Fits the queue (`--queue`) and the `--no-drop` window ([`WINDOW`]) to
/// `budget` bytes of masks like `mask` (half the memory available): at
/// 4000x3000 a mask is 1.5 MB, and `--queue 1024` would take 1.5 GB, more
/// than a Pi has (the kernel kills the sender minutes into the run, when
/// the link falls behind). Lowered (said once for each size that needs
/// it), the queue drops or waits sooner and the window waits for
/// confirmations sooner; no frame is lost that the options would keep.
fn fit_memory(cfg: &Config, queue: &FrameQueue, counters: &Counters, mask: &Mask, budget: usize) {
    let bytes = mask.bits.len().max(1);
    let kept = cfg.no_drop && cfg.transport == Transport::Tcp;
    let window = if kept { WINDOW } else { 0 };
    let fit = budget / bytes;
    if cfg.queue + window + SPARE_MASKS <= fit {
        return;
    }
    // Half of what fits for each, at least one.
    let room = fit.saturating_sub(SPARE_MASKS);
    let w = if kept { (room / 2).clamp(1, WINDOW) } else { 0 };
    let q = room.saturating_sub(w).clamp(1, cfg.queue);
    queue.cap.store(q, Relaxed);
    if kept {
        counters.window.store(w, Relaxed);
    }
    let mb = |b: usize| format!("{:.1} MB", b as f64 / 1e6);
    log::warn!(
        "masks of {}x{} take {} each: {} of them fit in half the memory available ({}): \
         --queue {} lowered to {q}{}",
        mask.width,
        mask.height,
        mb(bytes),
        fit,
        mb(budget),
        cfg.queue,
        if kept {
            format!(", frames kept until confirmed {WINDOW} lowered to {w}")
        } else {
            String::new()
        }
    );
}
/// Frames a live sender has in flight unconfirmed, at most. When the
/// receiver (its output, say) is slower than the source, frames then wait
/// in the sender's queue, where the oldest is dropped, rather than in the
/// sockets' buffers (hundreds of compressed frames: seconds of latency,
/// growing). Enough for a round trip of 250 ms at 30 fps.
const LIVE_WINDOW: usize = 8;
/// Sequence numbers in flight remembered without `--no-drop` (for the
/// confirmed count only; no mask is kept).
const WINDOW_LIVE: usize = 4096;
/// How long a new link may go without its first acknowledgement before
/// the receiver is taken for one that sends none (an older bitmask-recv).
const ACK_GRACE: Duration = Duration::from_secs(2);
/// Said when the receiver keeps ending connections without confirming:
/// the reason is in its log, not on the wire.
const REFUSED_HINT: &str = "; the receiver's log says why it ends the connections (more \
                            senders than its --max-senders?)";
/// Links the receiver may end at a `--no-drop` frame without confirming
/// it before the frame is given up (see [`Delivery::link_lost`]).
const MAX_TRIES: u8 = 5;
/// After a stop signal, how long the final wait for confirmations may last
/// (the stop watchdog ends the process at [`STOP_GRACE`]).
const STOP_CONFIRM: Duration = Duration::from_secs(2);
/// How long a resumed link waits for the receiver's first acknowledgement
/// (where its record of handled frames ends) before sending again.
const RESUME_WAIT: Duration = Duration::from_secs(1);

/// A frame written and not yet confirmed.
struct InFlight {
    sequence: u64,
    /// When it was written.
    sent_at: Instant,
    /// Links the receiver ended at it so far (see [`MAX_TRIES`]).
    tries: u8,
    /// Kept with `--no-drop`, to be sent again if the link breaks.
    mask: Option<Mask>,
}

/// What the network thread knows of frames in flight on its link.
#[derive(Default)]
struct Delivery {
    inflight: VecDeque<InFlight>,
    /// Frames to write (again) before anything else, oldest first: those a
    /// broken link did not confirm (`--no-drop`), and the frame that was
    /// about to be written when the link broke or could not be made.
    resend: VecDeque<Slot>,
    /// Whether this link's frames are tracked: false on UDP and once a
    /// receiver turned out not to acknowledge.
    tracking: bool,
    /// Links in a row that ended without an acknowledgement: past
    /// [`DARK_LINKS`] the receiver is taken for one that no longer sends
    /// any (replaced by an older bitmask-recv, say).
    dark_links: u32,
    /// When the network thread first saw a stop signal.
    stop_seen: Option<Instant>,
    /// The newest frame ever given back for sending again.
    resend_through: Option<u64>,
    /// Frames a `--no-drop` sender gave up after [`MAX_TRIES`] connections.
    given_up: u64,
    /// Frames given up past the tenth, said ([`Reminder`]).
    given_up_said: Reminder,
    /// The "sends no acknowledgements" warning was given.
    warned_no_acks: bool,
    /// Frames confirmed on the current link.
    link_confirmed: u64,
    /// When the receiver last confirmed a frame.
    last_progress: Option<Instant>,
    /// Links in a row the receiver ended without confirming a frame
    /// written on them (it may refuse the frames), and when that was last
    /// said.
    refused: (u32, Reminder),
    /// A frame was written (or its write tried) on the current link.
    wrote: bool,
    /// A receiver whose host answers but that confirms nothing for over
    /// `--timeout`, said ([`Reminder`]: a receiver slower than the camera
    /// for hours is not a line every few seconds), whether with a full
    /// window ([`make_room`]) or with room in it
    /// ([`Delivery::note_unconfirmed`]).
    slow_said: Reminder,
    /// Links made since the receiver last confirmed a frame (or, when it
    /// confirms none, since a frame was last written).
    links_since_progress: u32,
    /// Links lost since then, said ([`QUIET_AFTER`]).
    lost_said: Reminder,
    /// The newest frame written (the whole frame) on any link.
    written_max: Option<u64>,
    /// The current link's acknowledgements are another sender's: it
    /// follows another sender's record of this name (two senders share a
    /// `--name`), under which this one's frames are skipped as handled.
    /// The link is dropped and the next one starts a new record (a hello
    /// without `HELLO_RESUME`). See [`Delivery::judge`].
    foreign: bool,
    /// The record (as acknowledgements name it) this sender's links started.
    own_record: Option<u32>,
    /// A link ended before its acknowledgements named its record: the
    /// receiver may have started a record of this sender's there (a link
    /// that does not resume, or one to a restarted receiver) whose id it
    /// never learnt, so a record other than [`Delivery::own_record`] is no
    /// longer certainly another sender's. Cleared when a record is learnt.
    own_unsure: bool,
    /// The name this sender announces from now on, once another sender
    /// turned out to use `--name` at the receiver (see [`Delivery::judge`]).
    renamed: Option<String>,
    /// The current link's record was looked at.
    link_judged: bool,
    /// That said ([`Reminder`]).
    foreign_said: Reminder,
}

impl Delivery {
    /// No confirmation for [`LINGER`] (the cheap half of [`Self::out_of_time`]).
    fn stalled(&self) -> bool {
        self.last_progress.is_none_or(|t| t.elapsed() > LINGER)
    }

    /// Whether the end of the run has waited long enough: [`LINGER`] since
    /// the input ended (`closed_at`) and since the last confirmation.
    fn out_of_time(&self, closed_at: Option<Instant>) -> bool {
        closed_at.is_some_and(|t| t.elapsed() > LINGER) && self.stalled()
    }

    /// Whether the current link's acknowledgements are another sender's
    /// (sets [`Delivery::foreign`]): they name a record of handled frames
    /// that this sender did not start (a resumed link that joined another
    /// sender's record of its name), or, from a receiver that names no
    /// record, they reach past the newest frame this sender wrote.
    fn judge(&mut self, l: &dyn Link, cfg: &Config) -> bool {
        if self.foreign {
            return true;
        }
        let mut why = None;
        // Whether the record joined is certainly another sender's (this
        // one knows its own): only then does it take a name of its own.
        let mut certain = false;
        if !self.link_judged {
            if let Some((id, new)) = l.record() {
                self.link_judged = true;
                let unsure = std::mem::take(&mut self.own_unsure);
                if new {
                    self.own_record = Some(id);
                } else if self.own_record != Some(id) {
                    // (With none known, or after a link that ended before
                    // its first acknowledgement was read, that link may
                    // have started this one.)
                    certain = self.own_record.is_some() && !unsure;
                    why = Some(format!(
                        "it joined the receiver's record {id} of this name, not this sender's ({})",
                        self.own_record
                            .map_or("none yet".to_string(), |r| r.to_string())
                    ));
                }
            }
        }
        if let Some(next) = l
            .acked()
            .filter(|&n| n > self.written_max.map_or(0, |w| w + 1))
        {
            why.get_or_insert(format!(
                "the receiver counts frames up to {} as handled, past the newest this sender \
                 wrote ({})",
                next - 1,
                self.written_max
                    .map_or("none".to_string(), |w| w.to_string())
            ));
        }
        let Some(why) = why else { return false };
        // Another sender of this name is at the receiver now (a process
        // that connected without resuming since this one's links started
        // their record, on this host as records are per host: two cameras
        // of one Pi with the default name, or a restart overlapping the
        // old process's end). Each would end the other's connections at
        // every reconnect, so this one goes on under a name of its own.
        if self.renamed.is_none() && certain {
            let renamed = own_name(&cfg.name, std::process::id());
            log::warn!(
                "receiver {}: {why}: another sender uses --name {:?} there; this one goes on \
                 as {renamed:?}, so that neither ends the other's connections (give each \
                 sender its own --name)",
                cfg.to,
                cfg.name
            );
            self.foreign_said.hit();
            self.renamed = Some(renamed);
        } else if self.foreign_said.hit().is_some() {
            log::warn!(
                "receiver {}: {why}: another sender may use --name {:?} there (give each its \
                 own); reconnecting as a new sender so that this one's frames are not skipped \
                 as handled",
                cfg.to,
                self.renamed.as_deref().unwrap_or(&cfg.name)
            );
        }
        self.foreign = true;
        true
    }

    /// Forgets what the receiver confirmed on link `l` (nothing when its
    /// acknowledgements are another sender's); returns whether they are
    /// ([`Delivery::judge`]).
    fn release(
        &mut self,
        l: &dyn Link,
        cfg: &Config,
        queue: &FrameQueue,
        counters: &Counters,
    ) -> bool {
        let Some(next) = l.acked() else {
            return self.foreign;
        };
        if self.judge(l, cfg) {
            return true;
        }
        counters.acks.store(true, Relaxed);
        self.dark_links = 0;
        let before = self.link_confirmed;
        while self.inflight.front().is_some_and(|f| f.sequence < next) {
            let f = self.inflight.pop_front().expect("checked");
            self.link_confirmed += 1;
            if let Some(m) = f.mask {
                queue.recycle(m);
            }
        }
        if self.link_confirmed > before {
            counters
                .confirmed
                .fetch_add(self.link_confirmed - before, Relaxed);
            self.last_progress = Some(Instant::now());
            self.links_since_progress = 0;
            self.lost_said = Reminder::default();
        }
        false
    }

    /// How long the receiver has confirmed nothing while frames are in
    /// flight: since the last confirmation or since the oldest frame in
    /// flight was written, whichever is later, until `now` (zero with none
    /// in flight).
    fn unconfirmed_for(&self, now: Instant) -> Duration {
        self.inflight.front().map_or(Duration::ZERO, |oldest| {
            now.saturating_duration_since(
                self.last_progress
                    .map_or(oldest.sent_at, |p| p.max(oldest.sent_at)),
            )
        })
    }

    /// Says (as [`Delivery::slow_said`] allows) that the receiver has
    /// confirmed no frame for over `--timeout` while frames are in flight
    /// and its host answers. Only a note: the window is not full, so the
    /// sender goes on writing (a full one is [`make_room`]'s to judge).
    /// Without it a receiver whose output stalls while its TCP window
    /// still opens a little at a time (the kernel packing its receive
    /// queue) would be waited for without a word.
    fn note_unconfirmed(&mut self, l: &dyn Link, cfg: &Config) {
        let Some(newest) = self.inflight.back() else {
            return;
        };
        // (after a pause of the input the newest frame may just be
        // unconfirmed, say an undecodable one: the next confirmation covers
        // it; a damaged one ends the connection)
        // (one clock read: this runs before every frame written)
        let now = Instant::now();
        if !self.tracking
            || l.acked().is_none()
            || now.saturating_duration_since(newest.sent_at) > cfg.timeout
        {
            return;
        }
        let waited = self.unconfirmed_for(now);
        if waited <= cfg.timeout || !l.peer_answers() {
            return;
        }
        let Some(passed) = self.slow_said.hit() else {
            return;
        };
        log::warn!(
            "state: receiver {} has confirmed no frame for {:.1} s ({} in flight), but its \
             host answers: its output or the link is slow{}",
            cfg.to,
            waited.as_secs_f64(),
            self.inflight.len(),
            said_again(passed)
        );
    }

    /// A link that has not acknowledged its hello within [`ACK_GRACE`]
    /// belongs to a receiver that sends no acknowledgements: stops tracking
    /// (and says so once). True when it did. Not once the receiver
    /// acknowledged on an earlier link: this one is slow or dark, and its
    /// frames stay tracked (sent again after it breaks, or counted).
    fn acks_overdue(
        &mut self,
        l: &dyn Link,
        connected_at: Instant,
        cfg: &Config,
        queue: &FrameQueue,
        counters: &Counters,
    ) -> bool {
        if l.acked().is_some() || connected_at.elapsed() <= ACK_GRACE || self.may_be_dark(counters)
        {
            return false;
        }
        self.no_acks(cfg, queue);
        true
    }

    /// Whether a link without acknowledgements is taken for a slow or dark
    /// one (its frames tracked until it breaks), not for a receiver that
    /// sends none: the receiver acknowledged in this run (`counters.acks`),
    /// and fewer than [`DARK_LINKS`] links since ended without a word.
    fn may_be_dark(&self, counters: &Counters) -> bool {
        counters.acks.load(Relaxed) && self.dark_links < DARK_LINKS
    }

    /// Frames in flight or waiting to be written again that were written
    /// at least once: unconfirmed when the run gives up on them.
    fn written_unconfirmed(&self) -> u64 {
        self.inflight.len() as u64
            + self
                .resend
                .iter()
                .filter(|s| self.resend_marks(s.sequence))
                .count() as u64
    }

    /// Drops the link, which ended (`by_peer`: the receiver ended it, not a
    /// timeout of ours; `failed_write`: the frame whose write failed is at
    /// the front of `resend`), and deals with what was in flight on it.
    fn drop_link(
        &mut self,
        link: &mut Option<Box<dyn Link>>,
        cfg: &Config,
        queue: &FrameQueue,
        counters: &Counters,
        by_peer: bool,
        failed_write: bool,
    ) {
        let Some(l) = link.take() else { return };
        if !self.link_judged {
            match l.record() {
                Some((id, true)) => {
                    self.own_record = Some(id);
                    self.own_unsure = false;
                }
                Some((_, false)) => {}
                None => self.own_unsure = true,
            }
        }
        let how = Ended {
            by_peer,
            acked: l.acked().is_some(),
            progress: self.link_confirmed > 0,
            failed_write,
        };
        if !how.acked {
            self.dark_links += 1;
        }
        counters.connected.store(false, Relaxed);
        self.link_lost(cfg, queue, counters, how);
    }

    /// On a resumed link: waits (at most [`RESUME_WAIT`]) for the
    /// receiver's first acknowledgement and forgets the frames to send
    /// again that it says it handled. `Some(why)` when the link ends.
    fn await_resume_point(
        &mut self,
        cfg: &Config,
        l: &mut dyn Link,
        queue: &FrameQueue,
        counters: &Counters,
    ) -> Option<String> {
        let t = Instant::now();
        while l.acked().is_none() && t.elapsed() < RESUME_WAIT.min(cfg.timeout) {
            if let Some(why) = l.wait_acks(Duration::from_millis(20)) {
                return Some(format!("the receiver ended it ({why})"));
            }
        }
        // (no acknowledgement yet: everything is sent again)
        let next = l.acked()?;
        if self.judge(l, cfg) {
            return Some("its record of this name is another sender's".into());
        }
        counters.acks.store(true, Relaxed);
        self.dark_links = 0;
        let mut skipped = 0u64;
        while self.resend.front().is_some_and(|s| s.sequence < next) {
            let s = self.resend.pop_front().expect("checked");
            queue.recycle(s.mask);
            skipped += 1;
        }
        if skipped > 0 {
            counters.confirmed.fetch_add(skipped, Relaxed);
            self.last_progress = Some(Instant::now());
            self.links_since_progress = 0;
            self.lost_said = Reminder::default();
            log::info!(
                "the receiver had handled {skipped} of the frames not confirmed before: \
                 not sent again"
            );
        }
        None
    }

    /// Whether frame `sequence` was written before (and is written again).
    fn resend_marks(&self, sequence: u64) -> bool {
        self.resend_through.is_some_and(|t| sequence <= t)
    }

    /// Stops tracking: the receiver confirms nothing.
    fn untrack(&mut self, queue: &FrameQueue) {
        self.tracking = false;
        for f in self.inflight.drain(..) {
            if let Some(m) = f.mask {
                queue.recycle(m);
            }
        }
    }

    /// The receiver confirmed nothing within [`ACK_GRACE`] of the connect:
    /// one that sends no acknowledgements. Said once per run.
    fn no_acks(&mut self, cfg: &Config, queue: &FrameQueue) {
        if !self.warned_no_acks {
            self.warned_no_acks = true;
            log::warn!(
                "receiver {} sends no acknowledgements (an older bitmask-recv, or another \
                 reader): frames cannot be confirmed, or sent again after a break",
                cfg.to
            );
        }
        self.untrack(queue);
    }

    /// Says that the link to the receiver was lost (`why`): at info while
    /// links confirm frames, else through [`Delivery::lost_said`], with how
    /// many links ended since the receiver last confirmed a frame.
    fn say_lost(&mut self, cfg: &Config, why: &str) {
        if self.links_since_progress < QUIET_AFTER {
            log::info!("state: connection to {} lost: {why}; reconnecting", cfg.to);
            return;
        }
        log::debug!("state: connection to {} lost: {why}; reconnecting", cfg.to);
        if let Some(n) = self.lost_said.hit() {
            log::warn!(
                "state: connection to {} lost again: {why}; {} connections since the receiver \
                 last confirmed a frame{}; reconnecting (said at longer intervals while it \
                 lasts){REFUSED_HINT}",
                cfg.to,
                self.links_since_progress,
                if n > 0 {
                    format!(", {n} lost so since the last such line")
                } else {
                    String::new()
                }
            );
        }
    }

    /// The link broke with frames in flight: with `--no-drop` they are
    /// written again on the next link (the receiver skips those it had
    /// handled); otherwise they are counted as unconfirmed.
    ///
    /// `how` says how the link ended. With `--no-drop` the oldest frame not
    /// confirmed (where the receiver stopped) is given up once [`MAX_TRIES`]
    /// links ended at it that way: the receiver ended them after
    /// acknowledging the hello, without confirming a single frame written
    /// on them (a receiver that refuses the frame, over its `--max-size`,
    /// say). Refusals at the door, a proxy with no receiver behind it, the
    /// sender's own timeouts and links that made progress do not count.
    /// With `how.failed_write`, the frame whose write failed is already at
    /// the front of `resend`.
    fn link_lost(&mut self, cfg: &Config, queue: &FrameQueue, counters: &Counters, how: Ended) {
        let n = self.inflight.len();
        if how.progress {
            self.refused = (0, Reminder::default());
        } else if how.by_peer && how.acked && std::mem::take(&mut self.wrote) {
            self.refused.0 += 1;
            let (k, said) = &mut self.refused;
            if *k >= MAX_TRIES as u32 && said.hit().is_some() {
                log::warn!(
                    "the receiver {} ended {k} connections in a row without confirming a frame \
                     written on them: it may refuse the frames or this sender (see its log, \
                     e.g. frames over its --max-size, more senders than its --max-senders)",
                    cfg.to
                );
            }
        }
        if !self.tracking || (n == 0 && !how.failed_write) {
            return;
        }
        // (quiet when every link ends so: said by the lost line's reminder)
        let level = if self.links_since_progress >= QUIET_AFTER {
            log::Level::Debug
        } else {
            log::Level::Info
        };
        if !cfg.no_drop {
            if n > 0 {
                log::log!(
                    level,
                    "{n} frame(s) from {} on were not confirmed when the connection ended \
                     (they may be lost)",
                    self.inflight[0].sequence
                );
            }
            counters.unconfirmed.fetch_add(n as u64, Relaxed);
            self.untrack(queue);
            return;
        }
        // (frames of a link that never acknowledged are sent again too, as
        // it may be a receiver that refused us at the door; one that never
        // acknowledges is found out on a link that lasts, and the end of
        // the run is bounded by LINGER)
        if n > 0 {
            let newest = self.inflight.back().expect("n > 0").sequence;
            self.resend_through = Some(self.resend_through.map_or(newest, |t| t.max(newest)));
            log::log!(
                level,
                "{n} frame(s) from {} on were not confirmed when the connection ended: \
                 they are sent again",
                self.inflight[0].sequence
            );
        }
        for f in self.inflight.drain(..).rev() {
            self.resend.push_front(Slot {
                mask: f.mask.expect("--no-drop keeps the masks in flight"),
                sequence: f.sequence,
                tries: f.tries,
            });
        }
        if !(how.by_peer && how.acked && !how.progress) {
            return;
        }
        let Some(head) = self.resend.front_mut() else {
            return;
        };
        head.tries += 1;
        if head.tries < MAX_TRIES {
            return;
        }
        let head = self.resend.pop_front().expect("front exists");
        if self.resend_marks(head.sequence) {
            counters.written_dropped.fetch_add(1, Relaxed);
        }
        queue.recycle(head.mask);
        self.given_up += 1;
        counters.dropped.fetch_add(1, Relaxed);
        // (each of the first ten said; then at longer intervals, counted:
        // a live --no-drop source the receiver refuses gives one up every
        // few seconds for as long as it runs)
        let said = if self.given_up <= 10 {
            Some(0)
        } else {
            self.given_up_said.hit()
        };
        match said {
            Some(n) => log::warn!(
                "frame {} given up: the receiver ended {MAX_TRIES} connections at it without \
                 confirming it (see its log: it may refuse it, e.g. over its --max-size){}",
                head.sequence,
                if n > 0 {
                    format!("; {n} more given up since the last such line")
                } else {
                    String::new()
                }
            ),
            None => log::debug!("frame {} given up", head.sequence),
        }
    }
}

/// How a link ended, for [`Delivery::link_lost`].
#[derive(Clone, Copy)]
struct Ended {
    /// The receiver ended it (end of stream, reset, junk), not a timeout of
    /// the sender's.
    by_peer: bool,
    /// It acknowledged the connection (its first acknowledgement came).
    acked: bool,
    /// It confirmed at least one frame written on it.
    progress: bool,
    /// A write failed on it (its frame was written in part).
    failed_write: bool,
}

/// What the final wait for confirmations says.
enum Confirm {
    /// Every frame confirmed, or nothing can be: the stream may end.
    Done,
    /// More to do (acks came, or the link broke and frames are to be sent again).
    Again,
}

fn network_loop(
    cfg: &Config,
    queue: &FrameQueue,
    counters: &Counters,
    encoder: Box<dyn FrameEncoder>,
) -> Result<()> {
    network_loop_via(cfg, queue, counters, encoder, &mut |resume, name| {
        connect(cfg, name, resume)
    })
}

/// How [`network_loop_via`] connects: (resume, the name to announce).
type Dial<'a> = dyn FnMut(bool, &str) -> Result<Box<dyn Link>> + 'a;

/// [`network_loop`] with its way of connecting given (`resume`: a
/// connection after the first; the name to announce), so tests can put a
/// scripted link there.
fn network_loop_via(
    cfg: &Config,
    queue: &FrameQueue,
    counters: &Counters,
    mut encoder: Box<dyn FrameEncoder>,
    dial: &mut Dial<'_>,
) -> Result<()> {
    let mut link: Option<Box<dyn Link>> = None;
    let mut backoff = Backoff::new(cfg.retry_max);
    let mut buf: Vec<u8> = Vec::new();
    let mut ever_connected = false;
    let mut failing_since: Option<Instant> = None;
    let mut closed_at: Option<Instant> = None;
    let mut connected_at = Instant::now();
    let mut d = Delivery::default();
    let started = Instant::now();
    // "connected" log line, said once the frame it resumes at is known.
    let mut resumed: Option<String> = None;
    // An unreachable receiver ("cannot reach receiver"), said at once, then at longer intervals
    // while it lasts (a receiver Pi off for a weekend).
    let mut unreachable = Reminder::default();
    // Since when every frame's send failed (none succeeded), and when that
    // was last said.
    let mut send_failing: Option<Instant> = None;
    let mut send_reminded: Option<Instant> = None;
    // Frames too large for UDP at this --mtu, and when that was last said.
    let mut too_big = 0u64;
    let mut too_big_said = Reminder::default();
    loop {
        if failing_since.is_none()
            && (!d.resend.is_empty() || !d.inflight.is_empty())
            && d.stalled()
            && queue_closed(queue, &mut closed_at)
            && d.out_of_time(closed_at)
        {
            // The input ended long ago, the receiver is reachable, and frames
            // still go round without progress (a peer that accepts and ends
            // every connection before confirming). (An unreachable receiver
            // is the connect path's.)
            let written = d.written_unconfirmed();
            let never = d.resend.len() as u64 + d.inflight.len() as u64 - written + drain(queue);
            counters.unconfirmed.fetch_add(written, Relaxed);
            counters.dropped.fetch_add(never, Relaxed);
            let msg = format!(
                "input ended and the receiver {} confirmed nothing for {} s: {written} frame(s) \
                 written and not confirmed, {never} not written{REFUSED_HINT}",
                cfg.to,
                LINGER.as_secs()
            );
            if cfg.no_drop {
                anyhow::bail!("{msg}");
            }
            log::warn!("{msg}");
            break;
        }
        if cfg.batch
            && failing_since.is_none()
            && d.links_since_progress >= 2
            && !queue_closed(queue, &mut closed_at)
            && d.last_progress.unwrap_or(started).elapsed() > LINGER
        {
            // A batch whose receiver is reachable but takes nothing (a peer
            // that accepts and ends every connection, a receiver stuck for
            // good): its input cannot end while the queue is full, so the
            // rule above never applies. (A new link after a stalled one is
            // given its chance first; the summary counts the frames not
            // written as dropped.)
            let written = d.written_unconfirmed();
            counters.unconfirmed.fetch_add(written, Relaxed);
            anyhow::bail!(
                "the receiver {} confirmed no frame for {} s: giving up on the batch \
                 ({written} frame(s) written and not confirmed; what was not written is \
                 counted as dropped){REFUSED_HINT}",
                cfg.to,
                LINGER.as_secs()
            );
        }
        let slot = match d.resend.pop_front() {
            Some(s) => s,
            None => match queue.pop() {
                Some(s) => s,
                None => {
                    match confirm_rest(
                        cfg,
                        &mut link,
                        &mut d,
                        queue,
                        counters,
                        connected_at,
                        &mut closed_at,
                        &mut backoff,
                    )? {
                        Confirm::Done => break,
                        Confirm::Again => continue,
                    }
                }
            },
        };
        if link.is_none() {
            // (after another sender's record: a new record, not a resumed one)
            let resume = ever_connected && !std::mem::take(&mut d.foreign);
            match dial(resume, d.renamed.as_deref().unwrap_or(&cfg.name)) {
                Ok(mut l) => {
                    d.links_since_progress += 1;
                    // (a link's own lines: the lost line's reminder speaks
                    // for a run of links without progress)
                    l.set_quiet(d.links_since_progress >= QUIET_AFTER);
                    link = Some(l);
                    connected_at = Instant::now();
                    d.tracking = cfg.transport == Transport::Tcp;
                    d.link_confirmed = 0;
                    d.link_judged = false;
                    d.wrote = false;
                    counters.connected.store(true, Relaxed);
                    if ever_connected {
                        counters.reconnects.fetch_add(1, Relaxed);
                    }
                    let down = failing_since
                        .take()
                        .map(|t| {
                            format!(
                                " after {:.2} s without a receiver",
                                t.elapsed().as_secs_f64()
                            )
                        })
                        .unwrap_or_default();
                    resumed = Some(format!(
                        "state: connected to {} over {}{down}",
                        cfg.to,
                        match cfg.transport {
                            Transport::Tcp => "tcp",
                            Transport::Udp => "udp",
                        }
                    ));
                    // (with nothing to send again too: the first acknowledgement
                    // says whose record the link joined, before a frame of this
                    // sender could be handled under another sender's)
                    let resuming = ever_connected && d.tracking;
                    ever_connected = true;
                    // (the backoff is reset by a frame sent, not by a
                    // connect: a receiver that accepts and closes at once
                    // must not be redialled in a tight loop)
                    on_reconnect(encoder.as_mut());
                    if resuming {
                        // What the receiver says it handled need not be
                        // sent again: wait for its first acknowledgement.
                        d.resend.push_front(slot);
                        let l = link.as_mut().expect("just connected");
                        if let Some(why) = d.await_resume_point(cfg, l.as_mut(), queue, counters) {
                            d.say_lost(cfg, &why);
                            d.drop_link(&mut link, cfg, queue, counters, true, false);
                            std::thread::sleep(backoff.step());
                        }
                        continue;
                    }
                }
                Err(e) => {
                    if e.downcast_ref::<udp::MtuTooSmall>().is_some() {
                        // (not a receiver away: a setting no retry mends)
                        return Err(e);
                    }
                    let wait = backoff.step();
                    let first = failing_since.is_none();
                    let down = *failing_since.get_or_insert_with(Instant::now);
                    if cfg.batch && !cfg.endless && down.elapsed() > LINGER {
                        anyhow::bail!(
                            "the receiver {} stayed unreachable for {} s ({e:#}): giving up on \
                             the batch (what was not sent is counted as dropped)",
                            cfg.to,
                            LINGER.as_secs()
                        );
                    }
                    if first {
                        unreachable = Reminder::default();
                    }
                    if unreachable.hit().is_some() {
                        log::warn!(
                            "state: cannot reach receiver {}{}: {e:#}; retrying every \
                             {:.2}..{:.2} s{}",
                            cfg.to,
                            if first {
                                String::new()
                            } else {
                                format!(" for {} s", down.elapsed().as_secs())
                            },
                            wait.as_secs_f64(),
                            cfg.retry_max.as_secs_f64(),
                            if cfg.batch && !cfg.endless {
                                format!(" (a batch gives up after {} s)", LINGER.as_secs())
                            } else {
                                String::new()
                            }
                        );
                    } else {
                        log::debug!("connect attempt failed: {e:#}; next in {wait:?}");
                    }
                    if queue_closed(queue, &mut closed_at) {
                        if closed_at.is_some_and(|t| t.elapsed() > LINGER) {
                            // (frames written before count as unconfirmed)
                            let written = std::iter::once(slot.sequence)
                                .chain(d.resend.iter().map(|s| s.sequence))
                                .filter(|&q| d.resend_marks(q))
                                .count() as u64;
                            let left = 1 + d.resend.len() as u64 + drain(queue);
                            counters.unconfirmed.fetch_add(written, Relaxed);
                            counters.dropped.fetch_add(left - written, Relaxed);
                            anyhow::bail!(
                                "input ended and the receiver {} stayed unreachable for {} s: \
                                 {left} queued frame(s) not delivered",
                                cfg.to,
                                LINGER.as_secs()
                            );
                        }
                        // the input is over: wait for a receiver
                        d.resend.push_front(slot);
                    } else if cfg.no_drop {
                        d.resend.push_front(slot);
                    } else {
                        counters.dropped.fetch_add(1, Relaxed);
                        queue.recycle(slot.mask);
                    }
                    std::thread::sleep(wait);
                    continue;
                }
            }
        }
        // Latest frame wins: a frame held through connect attempts is stale
        // when newer ones are waiting.
        let slot = latest(cfg, queue, counters, slot, closed_at.is_some());
        if let Some(line) = resumed.take() {
            if cfg.transport == Transport::Udp
                && send_failing.is_some()
                && send_reminded.is_some_and(|t| t.elapsed() < REMIND)
            {
                // (UDP's "connect" after each failed send: said with the
                // failures; a TCP reconnect is news)
                log::debug!("{line}; resuming at frame {}", slot.sequence);
            } else if d.links_since_progress >= QUIET_AFTER {
                // (said by the lost line's reminder)
                log::debug!("{line}; resuming at frame {}", slot.sequence);
            } else {
                log::info!("{line}; resuming at frame {}", slot.sequence);
            }
        }
        let l = link.as_mut().expect("connected above");
        let mut gone = l
            .closed_by_peer()
            .map(|why| (format!("the receiver ended it ({why})"), true));
        if !d.tracking && cfg.transport == Transport::Tcp && l.acked().is_some() {
            // a receiver whose first acknowledgement came late: tracked
            // from now on
            d.tracking = true;
        }
        if d.release(&**l, cfg, queue, counters) && gone.is_none() {
            gone = Some(("its record of this name is another sender's".into(), false));
        }
        if gone.is_none() && d.tracking {
            d.acks_overdue(l.as_ref(), connected_at, cfg, queue, counters);
        }
        if gone.is_none() && d.tracking {
            gone = make_room(cfg, l.as_mut(), &mut d, queue, counters, connected_at);
        }
        if gone.is_none() {
            d.note_unconfirmed(l.as_ref(), cfg);
        }
        if let Some((why, by_peer)) = gone {
            // Nothing was written: the frame goes first on the next
            // connection (where a newer one replaces it, as above, unless
            // --no-drop), after what this one did not confirm.
            d.say_lost(cfg, &why);
            d.resend.push_front(slot);
            d.drop_link(&mut link, cfg, queue, counters, by_peer, false);
            std::thread::sleep(backoff.step());
            continue;
        }
        // Latest frame wins again: newer ones came while there was no room.
        let slot = latest(cfg, queue, counters, slot, closed_at.is_some());
        if l.take_keyframe_hint() {
            encoder.force_keyframe();
        }
        let t = thread_cpu_ns();
        build_frame(encoder.as_mut(), &slot, &mut buf)?;
        counters
            .encode_ns
            .fetch_add(thread_cpu_ns().saturating_sub(t), Relaxed);
        counters.encoded.fetch_add(1, Relaxed);
        d.wrote = true;
        match l.send_frame(&buf, slot.sequence) {
            // A frame too large for UDP at this --mtu: nothing was sent, and
            // the link is as good as before (a new one would be no better,
            // and each would leave a stream open at the receiver). That
            // frame is dropped (never sent); the next may fit, as a key
            // frame: the encoder took the dropped one for its reference.
            Err(e) if udp::TooManyDatagrams::is(&e) => {
                if let Some(passed) = too_big_said.hit() {
                    log::warn!(
                        "frame {} not sent: {e}; dropped{}",
                        slot.sequence,
                        said_again(passed)
                    );
                }
                too_big += 1;
                counters.dropped.fetch_add(1, Relaxed);
                encoder.force_keyframe();
                queue.recycle(slot.mask);
            }
            Ok(()) => {
                send_failing = None;
                // A write only says the kernel took the bytes: a receiver
                // that refuses us takes a frame or two too. Only a
                // connection that has lasted ends the backoff.
                if connected_at.elapsed() >= STABLE {
                    backoff.reset();
                }
                counters.sent.fetch_add(1, Relaxed);
                counters.sent_bytes.fetch_add(buf.len() as u64, Relaxed);
                d.written_max = d.written_max.max(Some(slot.sequence));
                if !d.tracking {
                    // (nothing is confirmed: a frame written is all the
                    // progress there is to see)
                    d.last_progress = Some(Instant::now());
                    d.links_since_progress = 0;
                    d.lost_said = Reminder::default();
                }
                if d.resend_marks(slot.sequence) {
                    counters.resent.fetch_add(1, Relaxed);
                }
                if d.tracking {
                    let mask = if cfg.no_drop {
                        Some(slot.mask)
                    } else {
                        queue.recycle(slot.mask);
                        None
                    };
                    d.inflight.push_back(InFlight {
                        sequence: slot.sequence,
                        sent_at: Instant::now(),
                        tries: slot.tries,
                        mask,
                    });
                    if !cfg.no_drop && d.inflight.len() > WINDOW_LIVE {
                        // no longer followed: its fate is not known
                        d.inflight.pop_front();
                        counters.unconfirmed.fetch_add(1, Relaxed);
                    }
                } else {
                    queue.recycle(slot.mask);
                }
                // (a frame sent again that the receiver had already handled
                // is below what it confirmed on connecting)
                d.release(&**l, cfg, queue, counters);
            }
            Err(e) => {
                // Said once per run of failures, then every REMIND: a send
                // that fails each time (a firewall's EPERM on UDP, whose
                // "connect" always succeeds) would say it twice a second.
                // From the QUIET_AFTER-th link without progress, the lost
                // line's reminder says it: a receiver whose output stays
                // stalled makes a link fail every SLOW_LIMIT for hours, each
                // (a successful write before it) a new run of failures.
                let now = Instant::now();
                let since = *send_failing.get_or_insert(now);
                let say = since == now || send_reminded.is_none_or(|t| t.elapsed() >= REMIND);
                let what = describe_io(&e, cfg.timeout);
                if d.links_since_progress >= QUIET_AFTER {
                    d.say_lost(
                        cfg,
                        &format!("sending frame {} failed: {what}", slot.sequence),
                    );
                } else if say {
                    send_reminded = Some(now);
                    log::warn!(
                        "state: connection to {} lost while sending frame {}: {what}; reconnecting",
                        cfg.to,
                        slot.sequence,
                    );
                } else {
                    log::debug!("sending frame {} failed again: {what}", slot.sequence);
                }
                // what the receiver confirmed while the write was blocked
                let _ = l.closed_by_peer();
                d.release(&**l, cfg, queue, counters);
                let stalled = matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                );
                counters.failed.fetch_add(1, Relaxed);
                failing_since = Some(Instant::now());
                if cfg.no_drop {
                    d.resend.push_front(slot); // sent again after the reconnect
                } else {
                    queue.recycle(slot.mask);
                }
                d.drop_link(&mut link, cfg, queue, counters, !stalled, cfg.no_drop);
                if cfg.batch
                    && !cfg.endless
                    && since.elapsed() > LINGER
                    && d.last_progress.unwrap_or(started).elapsed() > LINGER
                {
                    // Every send failed for LINGER, though each connect
                    // succeeded (so the connect path's rule never applied):
                    // a batch gives up as on an unreachable receiver.
                    // (drop_link left nothing in flight)
                    counters
                        .unconfirmed
                        .fetch_add(d.written_unconfirmed(), Relaxed);
                    anyhow::bail!(
                        "every frame sent to the receiver {} for {} s failed ({what}): giving up \
                         on the batch (what was not sent is counted as dropped)",
                        cfg.to,
                        LINGER.as_secs()
                    );
                }
                std::thread::sleep(backoff.step());
            }
        }
    }
    if let Some(l) = link {
        l.finish();
        log::info!("state: input done, stream to {} closed", cfg.to);
    }

    if !cfg.no_drop
        && d.refused.0 > 0
        && counters.confirmed.load(Relaxed) == 0
        && counters.sent.load(Relaxed) + counters.failed.load(Relaxed) > 0
    {
        anyhow::bail!(
            "the receiver {} confirmed none of the frames written to it, and ended the \
             connections (see its log: it may refuse them, e.g. over its --max-size)",
            cfg.to
        );
    }
    if cfg.no_drop && too_big > 0 {
        anyhow::bail!(
            "{too_big} frame(s) too large for UDP at --mtu {} were not sent (see above): raise \
             --mtu, or use TCP",
            cfg.mtu
        );
    }
    if cfg.no_drop && d.given_up > 0 {
        anyhow::bail!(
            "{} frame(s) never confirmed by the receiver {} after {MAX_TRIES} connections each, \
             given up (see its log)",
            d.given_up,
            cfg.to
        );
    }
    Ok(())
}

/// A camera's frame period as a sender reading its frames sees it.
#[derive(Default)]
struct CameraClock {
    /// The estimate (zero before two frames were read).
    period: Duration,
    /// When the last frame was read.
    last: Option<Instant>,
}

impl CameraClock {
    /// A frame was read now; `cap`: the most one sample may say (the
    /// --fps period: a camera at least that slow is never skipped anyway).
    fn read(&mut self, cap: Duration) {
        let now = Instant::now();
        if let Some(last) = self.last.replace(now) {
            let d = now.saturating_duration_since(last).min(cap);
            self.period = if self.period.is_zero() {
                d
            } else {
                (self.period * 7 + d) / 8
            };
        }
    }
}

/// Latest frame wins (a live source): `slot`, or the newest frame waiting
/// in the queue instead (`slot` and the frames between then count as
/// dropped), unless the input has ended.
fn latest(cfg: &Config, queue: &FrameQueue, counters: &Counters, slot: Slot, ended: bool) -> Slot {
    if cfg.no_drop || ended {
        return slot;
    }
    match queue.pop_newest() {
        Some((newest, older)) => {
            counters.dropped.fetch_add(1 + older, Relaxed);
            queue.recycle(slot.mask);
            newest
        }
        None => slot,
    }
}

/// Waits until fewer than [`WINDOW`] frames (`--no-drop`) or
/// [`LIVE_WINDOW`] (a live source) are in flight. `Some(why)` when the link
/// is to be given up.
fn make_room(
    cfg: &Config,
    l: &mut dyn Link,
    d: &mut Delivery,
    queue: &FrameQueue,
    counters: &Counters,
    connected_at: Instant,
) -> Option<(String, bool)> {
    if !cfg.no_drop && l.acked().is_none() {
        // a live source waits for nothing from a receiver that has not
        // acknowledged yet (one that never does is found out by ACK_GRACE)
        return None;
    }
    let window = match counters.window.load(Relaxed) {
        _ if !cfg.no_drop => LIVE_WINDOW,
        0 => WINDOW,
        w => w,
    };
    let entered = Instant::now();
    while d.tracking && d.inflight.len() >= window {
        if stop_requested().is_some() {
            // the final wait for confirmations is the stop's (a new
            // connection would only send the window again)
            return None;
        }
        let why = l.wait_acks(Duration::from_millis(100));
        let foreign = d.release(l, cfg, queue, counters);
        if let Some(why) = why {
            return Some((format!("the receiver ended it ({why})"), true));
        }
        if foreign {
            return Some(("its record of this name is another sender's".into(), false));
        }
        if l.acked().is_none() && !d.may_be_dark(counters) {
            d.acks_overdue(l, connected_at, cfg, queue, counters);
            continue;
        }
        // (SLOW_LIMIT counts from the last confirmation, or the write of
        // the oldest frame in flight: a window that opened a little at a
        // time while the receiver stalled may have filled long after
        // either)
        let waited = d.unconfirmed_for(Instant::now());
        let limit = net::SLOW_LIMIT.max(cfg.timeout);
        // (a host that does not answer is judged after a --timeout of this
        // wait, or since a confirmation in it: one look at TCP_INFO during
        // a retransmission is no verdict)
        let since = d.last_progress.map_or(entered, |p| p.max(entered));
        if waited > cfg.timeout && (waited >= limit || since.elapsed() > cfg.timeout) {
            // A receiver whose host answers is given SLOW_LIMIT: its
            // output may be behind (a new connection would not help). Its
            // TCP acknowledging the frames does not prove that they are
            // read, so past that a new connection is tried after all.
            let (slow, state) = if waited < limit {
                l.peer_verdict()
            } else {
                (false, String::new())
            };
            if !slow {
                // (its host not answering, when that was the verdict)
                let state = match state {
                    s if waited < limit && !s.is_empty() => format!(" and its host {s}"),
                    _ => String::new(),
                };
                return Some((
                    format!(
                        "the receiver confirmed no frame for {:.1} s{state}",
                        waited.as_secs_f64()
                    ),
                    false,
                ));
            }
            if let Some(passed) = d.slow_said.hit() {
                log::warn!(
                    "state: receiver {} has confirmed no frame for {:.1} s, but its host \
                     answers: its output may be behind; waiting for it (up to {} s){}",
                    cfg.to,
                    waited.as_secs_f64(),
                    limit.as_secs(),
                    said_again(passed)
                );
            }
        }
    }
    None
}

/// The input is over and every frame written: waits (at most [`LINGER`]
/// in all, [`STOP_CONFIRM`] after a stop signal) for the receiver to
/// confirm the frames in flight.
#[allow(clippy::too_many_arguments)]
fn confirm_rest(
    cfg: &Config,
    link: &mut Option<Box<dyn Link>>,
    d: &mut Delivery,
    queue: &FrameQueue,
    counters: &Counters,
    connected_at: Instant,
    closed_at: &mut Option<Instant>,
    backoff: &mut Backoff,
) -> Result<Confirm> {
    let Some(l) = link.as_mut() else {
        return Ok(Confirm::Done);
    };
    if !d.tracking || d.inflight.is_empty() {
        return Ok(Confirm::Done);
    }
    queue_closed(queue, closed_at); // (it is: the time the input ended)
    let why = l.wait_acks(Duration::from_millis(100));
    let foreign = d.release(&**l, cfg, queue, counters);
    if d.inflight.is_empty() {
        return Ok(Confirm::Done);
    }
    if why.is_none() && foreign {
        log::info!(
            "state: connection to {} dropped: its record of this name is another sender's; \
             reconnecting",
            cfg.to
        );
        d.drop_link(link, cfg, queue, counters, false, false);
        return Ok(Confirm::Again);
    }
    if let Some(why) = why {
        log::info!(
            "state: connection to {} lost before every frame was confirmed: the receiver \
             ended it ({why})",
            cfg.to
        );
        d.drop_link(link, cfg, queue, counters, true, false);
        if d.resend.is_empty() {
            return Ok(Confirm::Done);
        }
        std::thread::sleep(backoff.step());
        return Ok(Confirm::Again);
    }
    if d.acks_overdue(l.as_ref(), connected_at, cfg, queue, counters) {
        return Ok(Confirm::Done);
    }
    let stopped = stop_requested().is_some();
    if stopped {
        if d.stop_seen.get_or_insert_with(Instant::now).elapsed() < STOP_CONFIRM {
            return Ok(Confirm::Again);
        }
    } else if !d.out_of_time(*closed_at) {
        return Ok(Confirm::Again);
    }
    let n = d.inflight.len() as u64;
    let first = d.inflight[0].sequence;
    counters.unconfirmed.fetch_add(n, Relaxed);
    d.untrack(queue);
    let waited = if stopped { STOP_CONFIRM } else { LINGER };
    let msg = format!(
        "the receiver {} did not confirm {n} frame(s) from {first} on within {} s{}{}",
        cfg.to,
        waited.as_secs(),
        if stopped {
            " of the stop"
        } else {
            " of the input's end"
        },
        // (its TCP still takes the bytes: they are in its socket or its
        // output, not lost on the way)
        if l.peer_answers() {
            "; its host still answers, so they may still arrive: the receiver is slow or \
             stalled (its output behind, e.g. a stalled --exec consumer)"
        } else {
            ""
        }
    );
    if cfg.no_drop && !stopped {
        anyhow::bail!("{msg}");
    }
    log::warn!("{msg}");
    Ok(Confirm::Done)
}

/// The reconnect hook: the receiver may have lost the reference frame, so
/// the codec must start over with a key frame.
fn on_reconnect(encoder: &mut dyn FrameEncoder) {
    encoder.force_keyframe();
}

fn build_frame(encoder: &mut dyn FrameEncoder, slot: &Slot, buf: &mut Vec<u8>) -> Result<()> {
    let m = &slot.mask;
    buf.clear();
    buf.resize(HEADER_LEN, 0);
    let (codec, flags) = encoder
        .encode(m, slot.sequence, buf)
        .with_context(|| format!("encoding frame {}", slot.sequence))?;
    let mut h = Header::new(m.width, m.height, slot.sequence, codec, 0);
    h.flags = flags;
    h.timestamp_us = m.timestamp_us;
    finish_frame_in_place(&mut h, buf);
    Ok(())
}

fn queue_closed(queue: &FrameQueue, closed_at: &mut Option<Instant>) -> bool {
    if closed_at.is_none() && queue.lock().closed {
        *closed_at = Some(Instant::now());
    }
    closed_at.is_some()
}

fn drain(queue: &FrameQueue) -> u64 {
    let mut s = queue.lock();
    let n = s.items.len() as u64;
    s.items.clear();
    n
}

fn describe_io(e: &io::Error, timeout: Duration) -> String {
    if e.get_ref().is_some() {
        return e.to_string(); // our own message
    }
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => format!(
            "write stalled for {:.1} s (--timeout)",
            timeout.as_secs_f64()
        ),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_are_blamed_on_the_cpu_only_when_encoding_fills_the_time() {
        // 30 frames a second, 30 ms of CPU each: 90% of the time encoding
        let cpu = drop_cause(12, 30.0, Some(30.0), 0.5);
        assert!(cpu.contains("this CPU, not the link"), "{cpu}");
        assert!(
            cpu.contains("12 so far") && cpu.contains("33 a second at most"),
            "{cpu}"
        );
        // 2 ms each, but the process uses 90% of its CPU (thresholding)
        let all = drop_cause(12, 30.0, Some(2.0), 0.9);
        assert!(
            all.contains("this CPU") && all.contains("used 90% of the CPU"),
            "{all}"
        );
        // 2 ms each, 30% of the CPU: the link or the receiver
        let link = drop_cause(5, 30.0, Some(2.0), 0.3);
        assert!(link.contains("the link or the receiver takes"), "{link}");
        assert!(!link.contains("this CPU"), "{link}");
    }

    #[test]
    fn the_drop_note_judges_a_window_of_lasting_drops_while_connected() {
        let t0 = Instant::now();
        let s = |x: f64| t0 + Duration::from_secs_f64(x);
        // [dropped, captured, encoded, encode_ns, reconnects, unconnected]
        let mut n = DropNote {
            since: t0,
            at: [0; 6],
            cpu_at: 0.0,
            said: None,
            cores: 1,
        };
        // a look at time t (s) with counts c, 0.2 s of CPU
        let look = |n: &mut DropNote, t: f64, c: [u64; 6]| n.check_at(s(t), c, || 0.2);
        // the window starts at the first frame: drops before it do not count
        assert!(look(&mut n, 0.5, [5, 1, 0, 0, 0, 0]).is_none());
        // 30 fps for 3 s, 2 dropped: too few
        assert!(look(&mut n, 3.5, [7, 91, 89, 89_000_000, 0, 0]).is_none());
        // unconnected: the window restarts, nothing said
        assert!(look(&mut n, 4.0, [20, 100, 89, 89_000_000, 0, 1]).is_none());
        assert!(look(&mut n, 4.5, [21, 115, 89, 89_000_000, 0, 0]).is_none());
        assert_eq!(n.since, s(4.5), "restarted once connected again");
        // connected, 3 s at 30 fps, 30 dropped, 1 ms of CPU each: the link
        let line = look(&mut n, 7.5, [51, 205, 149, 149_000_000, 0, 0]).expect("lasting drops");
        assert!(
            line.contains("51 so far") && line.contains("30.0 frames a second"),
            "{line}"
        );
        assert!(line.contains("the link or the receiver"), "{line}");
        // then quiet for a minute: nothing (once a minute at most)
        assert!(look(&mut n, 20.0, [90, 600, 400, 400_000_000, 0, 0]).is_none());
        // a reconnect restarts the window
        assert!(look(&mut n, 80.0, [200, 2000, 1700, 1_700_000_000, 1, 0]).is_none());
        assert_eq!(n.since, s(80.0));
        // 10 s without drops restart it too
        assert!(look(&mut n, 91.0, [200, 2330, 2030, 2_030_000_000, 1, 0]).is_none());
        assert_eq!(n.since, s(91.0));
        // 3 s, 30 of 90 dropped, 30 ms of CPU each: this CPU
        let line = n
            .check_at(s(94.0), [230, 2420, 2090, 3_830_000_000, 1, 0], || 3.0)
            .expect("lasting drops");
        assert!(line.contains("this CPU, not the link"), "{line}");
    }

    fn slot(seq: u64) -> Slot {
        Slot {
            tries: 0,
            mask: Mask::default(),
            sequence: seq,
        }
    }

    #[test]
    fn the_progress_line_gives_the_last_intervals_rates() {
        let c = Counters::default();
        c.sent.store(1000, Relaxed);
        c.sent_bytes.store(1_000_000, Relaxed);
        // nothing sent in the last 2 s (a receiver away): 0 fps now,
        // however many frames went before
        let t = Instant::now() - Duration::from_secs(2);
        let mut last = (1000, 1_000_000, t);
        let line = c.progress(Duration::from_secs(100), &mut last);
        assert!(
            line.contains("in 100.00 s: last 2.0 s 0.0 fps, 0.0 Mbit/s;"),
            "{line}"
        );
        assert_eq!((last.0, last.1), (1000, 1_000_000));
        assert!(last.2 > t);
        // the final summary keeps the rate since the start
        assert!(c
            .summary(Duration::from_secs(100))
            .contains(": 10.0 fps, 0.1 Mbit/s;"));
    }

    #[test]
    fn a_summary_before_the_inputs_end_names_the_inputs_not_read() {
        let c = Counters::default();
        c.inputs.store(30, Relaxed);
        c.captured.store(3, Relaxed);
        c.unreadable.store(1, Relaxed);
        let line = c.summary_at_exit(Duration::from_secs(1));
        assert!(
            line.contains(
                "captured 3 (and 1 input(s) unreadable, their frame numbers unused) \
                 (26 of 30 inputs not read), sent 0"
            ),
            "{line}"
        );
        // (not in the progress line: the input is still being read)
        let mut last = (0, 0, Instant::now());
        assert!(!c
            .progress(Duration::from_secs(1), &mut last)
            .contains("not read"));
        // nor once the input has ended (or with their number not known)
        c.input_ended.store(true, Relaxed);
        assert!(!c.summary(Duration::from_secs(1)).contains("not read"));
        let u = Counters::default();
        u.captured.store(3, Relaxed);
        assert!(!u.summary(Duration::from_secs(1)).contains("not read"));
    }

    #[test]
    fn the_summary_at_exit_accounts_for_every_frame() {
        let c = Counters::default();
        let set = |a: &AtomicU64, v| a.store(v, Relaxed);
        // 10 captured; 9 writes, 1 of them a frame sent again (8 frames
        // written); 5 confirmed, 1 unconfirmed on a link that broke, so 2
        // written and not confirmed (in flight); 1 dropped, so 1 never
        // written (queued)
        set(&c.captured, 10);
        set(&c.sent, 9);
        set(&c.resent, 1);
        set(&c.confirmed, 5);
        set(&c.unconfirmed, 1);
        set(&c.dropped, 1);
        c.acks.store(true, Relaxed);
        let line = c.summary_at_exit(Duration::from_secs(1));
        assert!(line.contains("confirmed 5, unconfirmed 3;"), "{line}");
        assert!(line.contains("dropped 2,"), "{line}");
        // a failed write loses its frame (not queued, then) unless
        // --no-drop keeps it to send again
        set(&c.failed, 1);
        let line = c.summary_at_exit(Duration::from_secs(1));
        assert!(line.contains("dropped 1,"), "{line}");
        c.no_drop.store(true, Relaxed);
        let line = c.summary_at_exit(Duration::from_secs(1));
        assert!(line.contains("dropped 2,"), "{line}");
        // a frame written and then given up is dropped, not unconfirmed too
        let g = Counters::default();
        set(&g.captured, 3);
        set(&g.sent, 15);
        set(&g.resent, 12);
        set(&g.dropped, 3);
        set(&g.written_dropped, 3);
        g.acks.store(true, Relaxed);
        g.no_drop.store(true, Relaxed);
        let line = g.summary_at_exit(Duration::from_secs(1));
        assert!(line.contains("confirmed 0; dropped 3,"), "{line}");
        // no acknowledgements: nothing is said confirmed or not
        c.acks.store(false, Relaxed);
        let line = c.summary_at_exit(Duration::from_secs(1));
        assert!(line.contains("confirmed -, unconfirmed 1;"), "{line}");
        assert!(line.contains("dropped 2,"), "{line}");
    }

    #[test]
    fn full_queue_drops_the_oldest() {
        let q = FrameQueue::new(2, false);
        assert_eq!(q.push(slot(0)), 0);
        assert_eq!(q.push(slot(1)), 0);
        assert_eq!(q.push(slot(2)), 1);
        assert_eq!(q.pop().unwrap().sequence, 1);
        assert_eq!(q.pop().unwrap().sequence, 2);
        q.close();
        assert!(q.pop().is_none());
    }

    #[test]
    fn the_latest_frame_wins_over_every_older_one() {
        let q = FrameQueue::new(4, false);
        let c = Counters::default();
        let live = cfg(false);
        // nothing newer: the frame in hand stays
        assert_eq!(latest(&live, &q, &c, slot(0), false).sequence, 0);
        for s in 1..=3 {
            q.push(slot(s));
        }
        // the newest of three waiting, the frame in hand and two dropped
        assert_eq!(latest(&live, &q, &c, slot(0), false).sequence, 3);
        assert_eq!(c.dropped.load(Relaxed), 3);
        assert!(q.pop_newest().is_none());
        // --no-drop, or after the input ended: nothing is replaced
        q.push(slot(4));
        assert_eq!(latest(&cfg(true), &q, &c, slot(1), false).sequence, 1);
        assert_eq!(latest(&live, &q, &c, slot(1), true).sequence, 1);
        assert_eq!(c.dropped.load(Relaxed), 3);
    }

    #[test]
    fn no_drop_queue_blocks_the_producer() {
        let q = Arc::new(FrameQueue::new(1, true));
        q.push(slot(0));
        let q2 = q.clone();
        let t = std::thread::spawn(move || q2.push(slot(1)));
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            !t.is_finished(),
            "push into a full --no-drop queue must wait"
        );
        assert_eq!(q.pop().unwrap().sequence, 0);
        assert_eq!(t.join().unwrap(), 0);
        assert_eq!(q.pop().unwrap().sequence, 1);
    }

    /// What the scripted links saw: per connection, whether it resumed and
    /// the frames written to it.
    #[derive(Default)]
    struct Script {
        conns: Vec<(bool, Vec<u64>)>,
        /// The first connection breaks at its write number `break_at`.
        break_at: usize,
        /// The second connection breaks at this write number.
        then_break_at: Option<usize>,
        /// The receiver confirms all but the newest `lag` frames.
        lag: usize,
        /// Dials that fail after the first connection.
        fail_dials: usize,
        /// The record of handled frames each connection's acknowledgements
        /// name (none past the end).
        records: Vec<Option<(u32, bool)>>,
        /// The name each connection announced.
        names: Vec<String>,
    }

    struct ScriptedLink(Arc<Mutex<Script>>, usize);

    impl Link for ScriptedLink {
        fn send_frame(&mut self, _frame: &[u8], sequence: u64) -> io::Result<()> {
            let mut s = self.0.lock().unwrap();
            let brk = match self.1 {
                0 => Some(s.break_at),
                1 => s.then_break_at,
                _ => None,
            };
            let c = &mut s.conns[self.1].1;
            if brk == Some(c.len()) {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            c.push(sequence);
            Ok(())
        }
        fn acked(&self) -> Option<u64> {
            let s = self.0.lock().unwrap();
            let c = &s.conns[self.1].1;
            Some(match c.len().checked_sub(s.lag + 1) {
                Some(i) => c[i] + 1,
                None => 0,
            })
        }
        fn record(&self) -> Option<(u32, bool)> {
            self.0
                .lock()
                .unwrap()
                .records
                .get(self.1)
                .copied()
                .flatten()
        }
        fn wait_acks(&mut self, _limit: Duration) -> Option<String> {
            // at the end the receiver catches up
            self.0.lock().unwrap().lag = 0;
            None
        }
        fn finish(self: Box<Self>) {}
    }

    /// A receiver that confirms nothing past its first acknowledgement;
    /// its host answers or not.
    struct Silent {
        answers: bool,
    }

    impl Link for Silent {
        fn send_frame(&mut self, _frame: &[u8], _sequence: u64) -> io::Result<()> {
            Ok(())
        }
        fn acked(&self) -> Option<u64> {
            Some(0)
        }
        fn wait_acks(&mut self, _limit: Duration) -> Option<String> {
            std::thread::sleep(Duration::from_millis(1));
            None
        }
        fn peer_answers(&self) -> bool {
            self.answers
        }
        fn finish(self: Box<Self>) {}
    }

    /// A link that takes every write and acknowledges nothing (the
    /// receiver's host took the connection; the receiver is stopped, or
    /// the link went dark), until it ends `ends_after` after it was made.
    struct Dark {
        made: Instant,
        ends_after: Duration,
        written: Arc<Mutex<Vec<u64>>>,
    }

    impl Link for Dark {
        fn send_frame(&mut self, _frame: &[u8], sequence: u64) -> io::Result<()> {
            self.written.lock().unwrap().push(sequence);
            Ok(())
        }
        fn closed_by_peer(&mut self) -> Option<String> {
            (self.made.elapsed() >= self.ends_after).then(|| "reset".into())
        }
        fn wait_acks(&mut self, limit: Duration) -> Option<String> {
            std::thread::sleep(limit.min(Duration::from_millis(20)));
            self.closed_by_peer()
        }
        fn finish(self: Box<Self>) {}
    }

    /// 20 frames, `--no-drop`: link 1 acknowledges frames, then breaks at
    /// its tenth write; the next `dark` links take frames and acknowledge
    /// nothing for longer than ACK_GRACE, then end (a reconnect to a
    /// stopped receiver, say); any link after them confirms all. Returns
    /// the script, the counters, the dials and the frames the dark links
    /// took.
    fn after_dark_links(dark: usize) -> (Script, Counters, usize, Vec<u64>) {
        let q = FrameQueue::new(64, true);
        for i in 0..20 {
            q.push(slot(i));
        }
        q.close();
        let script = Arc::new(Mutex::new(Script {
            break_at: 10,
            lag: 3,
            ..Script::default()
        }));
        let taken = Arc::new(Mutex::new(Vec::new()));
        let counters = Counters::default();
        let (sc, dk) = (script.clone(), taken.clone());
        let mut dials = 0;
        network_loop_via(
            &cfg(true),
            &q,
            &counters,
            Box::new(CountingEncoder(Arc::new(AtomicU64::new(0)))),
            &mut |resume, name| {
                dials += 1;
                if (2..2 + dark).contains(&dials) {
                    // (the last of several is judged at ACK_GRACE: it
                    // lasts, so that a test thread that runs late does
                    // not see it end first)
                    let last = dark > 1 && dials == 1 + dark;
                    return Ok(Box::new(Dark {
                        made: Instant::now(),
                        ends_after: ACK_GRACE
                            + Duration::from_millis(if last { 5000 } else { 500 }),
                        written: dk.clone(),
                    }));
                }
                let mut s = sc.lock().unwrap();
                s.conns.push((resume, Vec::new()));
                s.names.push(name.to_owned());
                Ok(Box::new(ScriptedLink(sc.clone(), s.conns.len() - 1)))
            },
        )
        .unwrap();
        let s = std::mem::take(&mut *script.lock().unwrap());
        let taken = std::mem::take(&mut *taken.lock().unwrap());
        (s, counters, dials, taken)
    }

    #[test]
    fn no_drop_sends_again_what_a_dark_link_after_acknowledgements_took() {
        // Link 2's frames were dropped from tracking at ACK_GRACE (the
        // receiver taken for one that never acknowledges): lost, and the
        // run said nothing.
        let (s, counters, _, taken) = after_dark_links(1);
        assert!(!taken.is_empty(), "the dark link took frames");
        assert_eq!(s.conns.len(), 2, "{:?}", s.conns);
        // every frame the first link did not confirm is written again on the last
        let last = &s.conns[1].1;
        assert_eq!(last.last(), Some(&19), "{:?}", s.conns);
        assert_eq!(counters.confirmed.load(Relaxed), 20, "{:?}", s.conns);
    }

    #[test]
    fn after_dark_links_in_a_row_the_receiver_is_taken_for_one_that_sends_no_acknowledgements() {
        // DARK_LINKS links in a row ended without a word: the third is taken
        // for a receiver that sends none (one replaced by an older
        // bitmask-recv), whose frames are not tracked, rather than sent
        // again on link after link for ever.
        let (s, counters, dials, _) = after_dark_links(DARK_LINKS as usize + 1);
        assert_eq!(dials, 1 + DARK_LINKS as usize + 1, "{:?}", s.conns);
        // (its frames written, not confirmed: unconfirmed in the summary)
        let (_, open) = counters.left_at_exit();
        assert!(
            counters.confirmed.load(Relaxed) < 20 && open > 0,
            "{}",
            counters.summary_at_exit(Duration::from_secs(1))
        );
    }

    /// A full `--no-drop` window whose oldest frame was written `age` ago
    /// (the rest just now), nothing confirmed: what `make_room` says and
    /// how long it took.
    fn full_window(age: Duration, answers: bool) -> (Option<(String, bool)>, Duration) {
        let now = Instant::now();
        let mut d = Delivery {
            tracking: true,
            ..Delivery::default()
        };
        for sequence in 0..WINDOW as u64 {
            d.inflight.push_back(InFlight {
                sequence,
                sent_at: if sequence == 0 {
                    now.checked_sub(age).expect("the clock has run that long")
                } else {
                    now
                },
                tries: 0,
                mask: None,
            });
        }
        let q = FrameQueue::new(64, true);
        let t = Instant::now();
        let r = make_room(
            &cfg(true),
            &mut Silent { answers },
            &mut d,
            &q,
            &Counters::default(),
            now,
        );
        (r, t.elapsed())
    }

    #[test]
    fn the_slow_limit_counts_from_the_oldest_unconfirmed_write_not_from_a_full_window() {
        // (a window that opened a little at a time while the receiver
        // stalled fills long after it stopped confirming)
        let (r, _) = full_window(Duration::from_secs(11), true);
        let (why, by_peer) = r.expect("given up");
        // (11 s and what the test itself took: a busy machine adds some)
        assert!((11.0..14.0).contains(&silent_for(&why)), "{why}");
        assert!(!by_peer);
    }

    #[test]
    fn a_host_that_does_not_answer_is_judged_after_a_timeout_of_waiting_not_at_once() {
        // unconfirmed for 2 s (over --timeout) when the window fills, and
        // TCP_INFO says "retransmitting": one look is no verdict
        let (r, took) = full_window(Duration::from_secs(2), false);
        let (why, _) = r.expect("given up");
        assert!(took >= cfg(true).timeout, "gave up after {took:?}: {why}");
        // (2 s before, 1 s of waiting)
        assert!((3.0..6.0).contains(&silent_for(&why)), "{why}");
    }

    /// The seconds in "the receiver confirmed no frame for N s...".
    fn silent_for(why: &str) -> f64 {
        why.strip_prefix("the receiver confirmed no frame for ")
            .and_then(|r| r.split(' ').next())
            .and_then(|n| n.trim_end_matches('s').parse().ok())
            .unwrap_or_else(|| panic!("{why}"))
    }

    /// The final wait for confirmations, run out: what it says of `n`
    /// frames in flight on a link whose host answers or not.
    fn unconfirmed_at_the_end(answers: bool) -> String {
        let mut d = Delivery {
            tracking: true,
            ..Delivery::default()
        };
        for sequence in 1..30 {
            d.inflight.push_back(InFlight {
                sequence,
                sent_at: Instant::now(),
                tries: 0,
                mask: None,
            });
        }
        let mut link: Option<Box<dyn Link>> = Some(Box::new(Silent { answers }));
        let ended = Instant::now()
            .checked_sub(LINGER * 2)
            .expect("the clock has run that long");
        let r = confirm_rest(
            &cfg(true),
            &mut link,
            &mut d,
            &FrameQueue::new(64, true),
            &Counters::default(),
            Instant::now(),
            &mut Some(ended),
            &mut Backoff::new(Duration::from_millis(1)),
        );
        match r {
            Err(e) => e.to_string(),
            Ok(_) => panic!("--no-drop: an error expected"),
        }
    }

    #[test]
    fn frames_unconfirmed_at_the_end_may_still_arrive_while_the_receivers_host_answers() {
        let e = unconfirmed_at_the_end(true);
        assert!(
            e.starts_with(
                "the receiver scripted did not confirm 29 frame(s) from 1 on within 10 s of the \
                 input's end; its host still answers, so they may still arrive: the receiver is \
                 slow or stalled"
            ),
            "{e}"
        );
        let e = unconfirmed_at_the_end(false);
        assert!(e.ends_with("within 10 s of the input's end"), "{e}");
    }

    struct CountingEncoder(Arc<AtomicU64>);

    impl FrameEncoder for CountingEncoder {
        fn encode(&mut self, _m: &Mask, _seq: u64, out: &mut Vec<u8>) -> Result<(u8, u8)> {
            out.push(0);
            Ok((0, 0))
        }
        fn force_keyframe(&mut self) {
            self.0.fetch_add(1, Relaxed);
        }
    }

    fn cfg(no_drop: bool) -> Config {
        Config {
            producer_paced: false,
            to: "scripted".into(),
            name: "t".into(),
            transport: Transport::Tcp,
            queue: 64,
            no_drop,
            batch: false,
            endless: false,
            fps: None,
            count: None,
            inputs: None,
            timeout: Duration::from_secs(1),
            retry_max: Duration::from_millis(1),
            mtu: 1500,
            rate_mbit: None,
            log_every: Duration::from_secs(1),
        }
    }

    #[test]
    fn a_reminder_says_at_once_then_less_and_less_often_with_a_count() {
        let mut r = Reminder::default();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        // an occasion every second for an hour
        let said: Vec<(u64, u64)> = (0..3600)
            .filter_map(|s| r.hit_at(at(s)).map(|n| (s, n)))
            .collect();
        assert_eq!(
            said,
            [
                (0, 0),
                (30, 29),
                (90, 59),
                (210, 119),
                (450, 239),
                (930, 479),
                (1530, 599),
                (2130, 599),
                (2730, 599),
                (3330, 599)
            ]
        );
        // an occasion 599 s after the line was due (3930): the same
        // episode, the gap stays 600 s; then calm for REMIND_MAX past the
        // due line (5129): a new episode, from the first gap again
        assert_eq!(r.hit_at(at(3930 + 599)), Some(269));
        assert_eq!(r.hit_at(at(4529 + 600 + 600)), Some(0));
        assert_eq!(r.hit_at(at(5729 + 29)), None);
        assert_eq!(r.hit_at(at(5729 + 30)), Some(1));
        // from a connection that confirms, said at once again
        r = Reminder::default();
        assert_eq!(r.hit_at(at(4000)), Some(0));
    }

    #[test]
    fn the_queue_and_window_are_fitted_to_the_memory_for_masks() {
        let mask = Mask {
            width: 1024,
            height: 768,
            bits: vec![0; 98_304],
            ..Mask::default()
        };
        let fitted = |no_drop: bool, frames: usize| {
            let (c, q, n) = (
                cfg(no_drop),
                FrameQueue::new(64, no_drop),
                Counters::default(),
            );
            fit_memory(&c, &q, &n, &mask, 98_304 * frames);
            (q.cap(), n.window.load(Relaxed))
        };
        // --queue 64 and 64 frames kept until confirmed: 131 masks fit
        assert_eq!(fitted(true, 131), (64, 0));
        // 40: 37 past the spares, half each
        assert_eq!(fitted(true, 40), (19, 18));
        // none: one each still
        assert_eq!(fitted(true, 1), (1, 1));
        // a live sender keeps no frames until confirmed: the queue only
        assert_eq!(fitted(false, 67), (64, 0));
        assert_eq!(fitted(false, 20), (17, 0));
    }

    /// A link whose every write fails, as a firewall's EPERM makes UDP's
    /// (whose "connect" always succeeds).
    struct Refused;

    impl Link for Refused {
        fn send_frame(&mut self, _frame: &[u8], _sequence: u64) -> io::Result<()> {
            Err(io::ErrorKind::PermissionDenied.into())
        }
        fn finish(self: Box<Self>) {}
    }

    #[test]
    fn a_batch_whose_every_send_fails_gives_up() {
        let q = FrameQueue::new(64, true);
        for i in 0..3 {
            q.push(slot(i));
        }
        q.close();
        let counters = Counters::default();
        let mut dials = 0;
        let t = Instant::now();
        let e = network_loop_via(
            &Config {
                batch: true,
                transport: Transport::Udp,
                ..cfg(true)
            },
            &q,
            &counters,
            Box::new(CountingEncoder(Arc::new(AtomicU64::new(0)))),
            &mut |_, _| {
                dials += 1;
                Ok(Box::new(Refused))
            },
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("failed") && e.contains("giving up on the batch"),
            "{e}"
        );
        assert!(t.elapsed() >= LINGER, "{:?}", t.elapsed());
        assert!(dials > 1, "{dials}");
    }

    /// A receiver whose output stays stalled: each connection takes one
    /// frame (into the kernel's buffers), then a write stalls past the
    /// sender's limit, while its host answers and confirms nothing.
    struct StalledOutput {
        writes: usize,
    }

    impl Link for StalledOutput {
        fn send_frame(&mut self, _frame: &[u8], _sequence: u64) -> io::Result<()> {
            self.writes += 1;
            if self.writes == 1 {
                Ok(())
            } else {
                Err(io::ErrorKind::TimedOut.into())
            }
        }
        fn acked(&self) -> Option<u64> {
            Some(0)
        }
        fn peer_answers(&self) -> bool {
            true
        }
        fn finish(self: Box<Self>) {}
    }

    #[test]
    fn a_receiver_whose_output_stays_stalled_is_said_at_longer_intervals() {
        // Each link fails within seconds, after one successful write (a new
        // run of failures): said at every link before, some 1,000 warnings
        // an hour from one stalled receiver.
        crate::test_log::capture();
        let q = FrameQueue::new(64, false);
        for i in 0..60 {
            q.push(slot(i));
        }
        q.close();
        let to = "stalled-output-receiver";
        let counters = Counters::default();
        let mut dials = 0;
        let _ = network_loop_via(
            &Config {
                to: to.into(),
                ..cfg(false)
            },
            &q,
            &counters,
            Box::new(CountingEncoder(Arc::new(AtomicU64::new(0)))),
            &mut |_, _| {
                dials += 1;
                Ok(Box::new(StalledOutput { writes: 0 }))
            },
        );
        let ours = crate::test_log::lines_with(to);
        let warned: Vec<&String> = ours
            .iter()
            .filter(|(level, l)| *level <= log::Level::Warn && l.contains("lost"))
            .map(|(_, l)| l)
            .collect();
        assert!(dials >= 20, "{dials} links");
        // the first two links' lines, then the reminder's (at once)
        assert!(
            warned.len() <= 3,
            "{} of {dials} links said: {warned:#?}",
            warned.len()
        );
        assert!(
            warned
                .iter()
                .any(|l| l.contains("lost again") && l.contains("sending frame")),
            "{warned:#?}"
        );
        // every link still said, at debug level
        let all = ours.iter().filter(|(_, l)| l.contains("lost")).count();
        assert!(all >= dials - 1, "{all} lines of {dials} links");
    }

    /// Runs 20 queued frames through scripted links: the first breaks at
    /// its write number `break_at` while the receiver lags 3 frames behind.
    fn scripted(no_drop: bool, break_at: usize) -> (Script, Counters, u64) {
        scripted_with(no_drop, break_at, 0)
    }

    fn scripted_with(no_drop: bool, break_at: usize, fail_dials: usize) -> (Script, Counters, u64) {
        scripted_records(no_drop, break_at, fail_dials, Vec::new())
    }

    /// [`scripted_with`], the connections' acknowledgements naming `records`.
    fn scripted_records(
        no_drop: bool,
        break_at: usize,
        fail_dials: usize,
        records: Vec<Option<(u32, bool)>>,
    ) -> (Script, Counters, u64) {
        scripted_script(
            no_drop,
            Script {
                break_at,
                fail_dials,
                records,
                ..Script::default()
            },
        )
    }

    /// Runs 20 queued frames through the links of `script`, the receiver
    /// lagging 3 frames behind.
    fn scripted_script(no_drop: bool, script: Script) -> (Script, Counters, u64) {
        let q = FrameQueue::new(64, true);
        for i in 0..20 {
            q.push(slot(i));
        }
        q.close();
        let script = Arc::new(Mutex::new(Script { lag: 3, ..script }));
        let keys = Arc::new(AtomicU64::new(0));
        let counters = Counters::default();
        let sc = script.clone();
        network_loop_via(
            &cfg(no_drop),
            &q,
            &counters,
            Box::new(CountingEncoder(keys.clone())),
            &mut |resume, name| {
                let mut s = sc.lock().unwrap();
                if resume && s.fail_dials > 0 {
                    s.fail_dials -= 1;
                    anyhow::bail!("scripted: connection refused");
                }
                s.conns.push((resume, Vec::new()));
                s.names.push(name.to_owned());
                Ok(Box::new(ScriptedLink(sc.clone(), s.conns.len() - 1)))
            },
        )
        .unwrap();
        let s = std::mem::take(&mut *script.lock().unwrap());
        (s, counters, keys.load(Relaxed))
    }

    #[test]
    fn a_sender_that_finds_another_ones_record_goes_on_under_its_own_name() {
        // The first link starts record 1; the resumed one joins record 2,
        // which another sender of this name started meanwhile: dropped,
        // and the next link is a new sender with a name of its own.
        let (s, c, _) = scripted_records(
            true,
            10,
            0,
            vec![Some((1, true)), Some((2, false)), Some((3, true))],
        );
        assert_eq!(s.conns.len(), 3, "{:?}", s.conns);
        let own = format!("t-pid{}", std::process::id());
        assert_eq!(s.names, ["t", "t", own.as_str()]);
        assert!(s.conns[1].0 && !s.conns[2].0, "{:?}", s.conns);
        assert!(
            s.conns[1].1.is_empty(),
            "nothing sent under another's record"
        );
        assert_eq!(s.conns[2].1, (7..20).collect::<Vec<u64>>());
        assert_eq!(c.confirmed.load(Relaxed), 20);
    }

    #[test]
    fn a_sender_that_never_learnt_its_record_keeps_its_name() {
        // The first link ended before its acknowledgement named the record
        // it started; the resumed link joins that record: maybe this
        // sender's own, so it starts a new record, under its own name.
        let (s, c, _) =
            scripted_records(true, 10, 0, vec![None, Some((1, false)), Some((2, true))]);
        assert_eq!(s.conns.len(), 3, "{:?}", s.conns);
        assert_eq!(s.names, ["t", "t", "t"]);
        assert!(s.conns[1].0 && !s.conns[2].0, "{:?}", s.conns);
        assert_eq!(c.confirmed.load(Relaxed), 20);
    }

    /// Frames 0-9 on a link that starts record 7, then a resumed link that
    /// ends at its third write before its acknowledgements named a
    /// record, then links whose acknowledgements name `then`.
    fn a_link_ends_before_its_record(then: &[Option<(u32, bool)>]) -> (Script, Counters) {
        let mut records = vec![Some((7, true)), None];
        records.extend_from_slice(then);
        let (s, c, _) = scripted_script(
            true,
            Script {
                break_at: 10,
                then_break_at: Some(2),
                records,
                ..Script::default()
            },
        );
        (s, c)
    }

    #[test]
    fn a_link_that_ends_before_its_record_was_named_leaves_the_name_alone() {
        // The receiver restarted: the second link (resumed) started record
        // 1 of the new receiver, whose acknowledgement never came; the
        // third joins it. It is not certainly another sender's (it was
        // taken for one: the sender renamed itself): a new record, under
        // its own name.
        let (s, c) = a_link_ends_before_its_record(&[Some((1, false)), Some((2, true))]);
        assert_eq!(s.names, ["t", "t", "t", "t"], "{:?}", s.conns);
        assert!(s.conns[2].0 && !s.conns[3].0, "{:?}", s.conns);
        assert_eq!(c.confirmed.load(Relaxed), 20);
        // The same receiver: the second link joined record 7 again, and so
        // does the third, which goes on.
        let (s, c) = a_link_ends_before_its_record(&[Some((7, false))]);
        assert_eq!(s.names, ["t", "t", "t"], "{:?}", s.conns);
        assert!(s.conns[2].0, "{:?}", s.conns);
        assert_eq!(c.confirmed.load(Relaxed), 20);
    }

    #[test]
    fn an_own_name_stays_a_valid_name() {
        assert_eq!(own_name("cam", 42), "cam-pid42");
        let long = format!("a{}", "é".repeat(127));
        let own = own_name(&long, 4_000_000);
        assert!(own.len() <= bitmask_wire::MAX_NAME_LEN, "{}", own.len());
        assert!(own.ends_with("é-pid4000000"), "{own}");
        bitmask_wire::Hello::new(&own).expect("a valid name");
    }

    #[test]
    fn no_drop_sends_unconfirmed_frames_again_in_order_on_a_resumed_link() {
        let (s, c, keys) = scripted(true, 10);
        assert_eq!(s.conns.len(), 2);
        assert_eq!(s.conns[0], (false, (0..10).collect::<Vec<u64>>()));
        // 7, 8, 9 were not confirmed; 10 failed mid-write
        assert_eq!(s.conns[1], (true, (7..20).collect::<Vec<u64>>()));
        assert_eq!(keys, 2, "a key frame starts each connection");
        assert_eq!(c.confirmed.load(Relaxed), 20);
        assert_eq!(c.resent.load(Relaxed), 3);
        assert_eq!(c.failed.load(Relaxed), 1);
        assert_eq!(c.unconfirmed.load(Relaxed), 0);
        assert!(c.summary(Duration::from_secs(1)).contains("confirmed 20;"));
    }

    #[test]
    fn no_drop_loses_nothing_when_reconnecting_fails_first() {
        // (the frame about to be written must not be lost while the frames
        // to send again wait for a receiver)
        let (s, c, _) = scripted_with(true, 10, 3);
        assert_eq!(s.conns.len(), 2);
        assert_eq!(s.conns[1], (true, (7..20).collect::<Vec<u64>>()));
        assert_eq!(c.confirmed.load(Relaxed), 20);
        assert_eq!(c.dropped.load(Relaxed), 0);
    }

    #[test]
    fn without_no_drop_unconfirmed_frames_are_counted_not_sent_again() {
        // (live: the newest queued frame wins, so frames are skipped too)
        let (s, c, _) = scripted(false, 5);
        assert_eq!(s.conns.len(), 2, "{:?}", s.conns);
        let (first, later) = (&s.conns[0].1, &s.conns[1].1);
        assert_eq!(first.len(), 5);
        let last = *first.last().unwrap();
        assert!(
            later.iter().all(|&q| q > last + 1),
            "nothing sent again, the failed write's frame is lost: {first:?} {later:?}"
        );
        assert_eq!(c.unconfirmed.load(Relaxed), 3);
        assert_eq!(c.resent.load(Relaxed), 0);
        assert_eq!(c.failed.load(Relaxed), 1);
        let confirmed = 2 + later.len() as u64;
        assert_eq!(c.confirmed.load(Relaxed), confirmed);
        let line = c.summary(Duration::from_secs(1));
        assert!(
            line.contains(&format!("confirmed {confirmed}, unconfirmed 3;")),
            "{line}"
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(300));
        let steps: Vec<u128> = (0..5).map(|_| b.step().as_millis()).collect();
        assert_eq!(steps, [50, 100, 200, 300, 300]);
        b.reset();
        assert_eq!(b.step().as_millis(), 50);
    }
}
