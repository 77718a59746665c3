//! `--http ADDR`: a read-only live view of the receiver in a browser.
//!
//! How it stays off the data path:
//!
//! * The receive loop calls [`Feed::publish`] for every frame. That call
//!   stores the time in an atomic and, at most `--http-fps` times per second
//!   per sender, copies the mask into the sender's slot under a `try_lock`:
//!   if the HTTP side holds the lock at that instant, the copy is skipped,
//!   never waited for. No allocation after the first copy, no syscall, no
//!   channel. The numbers shown are the receiver's own [`StatsRegistry`]
//!   (the same as its log lines and final summary), read on the HTTP side.
//! * Everything else runs on the view's own threads: one accept thread, a
//!   fixed pool of [`WORKERS`] HTTP workers fed by a queue of [`QUEUE`]
//!   requests, and a 1 Hz sampler that keeps the 60 s history. PNG
//!   encoding happens on a worker, at most once per copied mask however many
//!   browsers ask (the PNG is cached with the copy's version number, and
//!   viewers asking at once wait for one encoding).
//! * The accept thread reads request heads itself, without blocking (`poll`,
//!   up to [`MAX_PENDING`] connections; past that the oldest is closed,
//!   or served if its whole head came meanwhile), and
//!   queues only whole heads; a connection past [`HEAD_DEADLINE`] (for the
//!   whole head, so trickling bytes does not extend it) gets its `408` from
//!   the accept thread, and one closed before a whole head nothing: idle or
//!   trickling connections hold no worker. Requests beyond pool + queue
//!   are answered `503` at once (both without blocking).
//!   Sending a whole response has its own deadline ([`IO_TIMEOUT`]), and
//!   each connection carries exactly one request (`Connection: close`): a
//!   browser that stops reading holds one worker for a bounded time, and a
//!   hundred of them cost the stream nothing (other viewers may wait or get
//!   `503` while they fill the pool).
//! * Memory: the view keeps one mask copy (and its PNG once asked for) per
//!   sender; of disconnected senders, at most [`MAX_SENDERS`] slots and
//!   [`GONE_BYTES`] bytes, the ones with the oldest last frame forgotten
//!   first.
//! * The page polls `/stats.json` and re-fetches `/latest.png` only after the
//!   previous image has loaded: a browser that stops reading stops asking, so
//!   it cannot build up back-pressure (unlike a never-ending
//!   `multipart/x-mixed-replace` response, which would pin a worker).
//! * Shown masks lag the newest frame by at most 1/`--http-fps` s while a
//!   stream runs; when a stream ends, its last frame is copied if it was
//!   passed over ([`Feed::show_last`], from the stream's end, off the
//!   frame path).
//! * The view's threads run at nice 10, below the receive path.
//!
//! Requests are parsed by `httparse`; only `GET`/`HEAD` of the listed paths
//! are served, everything else gets a 4xx. Nothing over HTTP changes state.

use crate::output::{encode, Format};
use crate::stats::{json_str, SenderSnapshot, StatsRegistry};
use anyhow::{Context, Result};
use bitmask_wire::Header;
use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock};
use std::time::{Duration, Instant};

/// HTTP worker threads (each serves one request at a time).
pub const WORKERS: usize = 4;
/// Accepted connections that may wait for a worker before new ones get `503`.
pub const QUEUE: usize = 32;
/// Time allowed for sending a whole response (a reader that stops or
/// trickles; a deadline for the whole response, not per write).
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Time from accept to a complete request head (against slow-loris trickles:
/// the deadline is for the whole head, not per read).
pub const HEAD_DEADLINE: Duration = Duration::from_secs(2);
/// Largest request head accepted (request line + headers).
const MAX_HEAD: usize = 8 * 1024;
/// Seconds of history kept for the plot.
const HISTORY: usize = 60;
/// Senders whose image the view keeps; beyond this the disconnected one
/// whose last frame is oldest is forgotten (its numbers stay in the stats).
const MAX_SENDERS: usize = 64;
/// Bytes of masks and PNGs the view keeps of disconnected senders (about
/// 60 of 1024x768 with their PNGs; a 4096x4096 mask is 2 MiB packed);
/// beyond this the disconnected ones whose last frame is oldest are
/// forgotten.
const GONE_BYTES: usize = 16 << 20;
/// A connected sender silent for this long is shown as `idle`.
const IDLE_AFTER: Duration = Duration::from_secs(2);

const INDEX_HTML: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");
const STYLE_CSS: &str = include_str!("../assets/style.css");

/// Parses `--http-fps`: a positive number of frames per second.
pub fn parse_fps(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if f.is_finite() && (0.01..=1000.0).contains(&f) => Ok(f),
        _ => Err(format!("{s:?} is not a frame rate from 0.01 to 1000")),
    }
}

// ---------------------------------------------------------------- per-sender slot

/// The newest copied mask of a sender, and its PNG once some browser asked.
#[derive(Default)]
struct Latest {
    header: Option<Header>,
    bits: Vec<u8>,
    /// Copies made so far: names the image (sequence numbers restart per connection).
    version: u64,
    /// The PNG of copy `.0`.
    png: Option<(u64, Arc<Vec<u8>>)>,
}

/// What the view keeps of one sender besides its numbers (those live in the
/// receiver's [`StatsRegistry`]).
struct Slot {
    /// Live connections feeding this slot.
    connections: AtomicUsize,
    /// Nanoseconds since the view's epoch of the last frame (0 = none yet).
    last_frame_ns: AtomicU64,
    /// Earliest time (ns since epoch) the next mask copy may happen.
    next_copy_ns: AtomicU64,
    latest: Mutex<Latest>,
    /// Held while a PNG of this slot is encoded, so that viewers asking at
    /// once wait for one encoding instead of each making their own.
    encoding: Mutex<()>,
    /// Last 60 s, one entry a second: (fps, latency p50 ms), oldest first.
    history: Mutex<VecDeque<(f64, Option<f64>)>>,
    /// Frames received at the previous sample ([`UNSAMPLED`] before the
    /// first: a slot made for a sender whose numbers already count frames,
    /// one forgotten and back, must not plot them all as one second's).
    prev_received: AtomicU64,
}

/// [`Slot::prev_received`] before the slot's first sample.
const UNSAMPLED: u64 = u64::MAX;

impl Slot {
    fn new() -> Slot {
        Slot {
            connections: AtomicUsize::new(0),
            last_frame_ns: AtomicU64::new(0),
            next_copy_ns: AtomicU64::new(0),
            latest: Mutex::new(Latest::default()),
            encoding: Mutex::new(()),
            history: Mutex::new(VecDeque::with_capacity(HISTORY + 1)),
            prev_received: AtomicU64::new(UNSAMPLED),
        }
    }
}

impl Slot {
    /// Bytes it holds: its mask copy and its PNG.
    fn bytes(&self) -> usize {
        let l = lock(&self.latest);
        l.bits.capacity() + l.png.as_ref().map_or(0, |(_, p)| p.capacity())
    }
}

/// Forgets disconnected senders' slots, those whose last frame is oldest
/// first, while there are more than [`MAX_SENDERS`] slots or theirs hold
/// more than [`GONE_BYTES`].
fn forget_gone(map: &mut BTreeMap<String, Arc<Slot>>) {
    let mut gone: Vec<(u64, String, usize)> = map
        .iter()
        .filter(|(_, s)| s.connections.load(Relaxed) == 0)
        .map(|(k, s)| (s.last_frame_ns.load(Relaxed), k.clone(), s.bytes()))
        .collect();
    gone.sort_unstable();
    let mut held: usize = gone.iter().map(|g| g.2).sum();
    for (_, k, bytes) in gone {
        if map.len() <= MAX_SENDERS && held <= GONE_BYTES {
            break;
        }
        map.remove(&k);
        held -= bytes;
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------- the view

struct Shared {
    epoch: Instant,
    interval_ns: u64,
    http_fps: f64,
    stats: StatsRegistry,
    slots: RwLock<BTreeMap<String, Arc<Slot>>>,
    /// Requests answered by the workers.
    requests: AtomicU64,
    /// PNGs encoded (at most one per copied mask, whatever the number of viewers).
    pngs: AtomicU64,
    /// Connections turned away with 503 because pool and queue were full.
    busy: AtomicU64,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        // +1 so that 0 can mean "never"
        self.epoch.elapsed().as_nanos() as u64 + 1
    }

    fn slot(&self, name: &str) -> Option<Arc<Slot>> {
        self.slots
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }
}

/// A running live view: HTTP threads plus the per-sender image slots.
#[derive(Clone)]
pub struct View {
    shared: Arc<Shared>,
    addr: SocketAddr,
}

/// The data path's handle for one sender's connection. Dropping it marks the
/// connection closed.
pub struct Feed {
    slot: Arc<Slot>,
    shared: Arc<Shared>,
    /// The newest frame published, when it was not copied (the rate limit,
    /// or a reader held the slot), and its time in the slot's
    /// `last_frame_ns`: [`Feed::show_last`] copies it.
    passed_over: Option<(Header, u64)>,
}

impl View {
    /// Binds `addr` and starts the accept thread, the workers and the sampler.
    /// `http_fps` limits how often a sender's mask is copied for the view;
    /// the numbers shown are `stats`'s. (The tests'; the receiver binds
    /// first, [`bind`], and calls [`View::serve`].)
    #[cfg(test)]
    pub fn start(addr: &str, http_fps: f64, stats: StatsRegistry) -> Result<View> {
        View::serve(bind(addr, None)?, http_fps, stats)
    }

    /// [`View::start`] on a socket [`bind`] made.
    pub fn serve(listener: TcpListener, http_fps: f64, stats: StatsRegistry) -> Result<View> {
        let local = listener.local_addr()?;
        let shared = Arc::new(Shared {
            epoch: Instant::now(),
            interval_ns: (1e9 / http_fps) as u64,
            http_fps,
            stats,
            slots: RwLock::new(BTreeMap::new()),
            requests: AtomicU64::new(0),
            pngs: AtomicU64::new(0),
            busy: AtomicU64::new(0),
        });
        let (tx, rx) = sync_channel::<Request>(QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..WORKERS {
            let (rx, shared) = (rx.clone(), shared.clone());
            std::thread::Builder::new()
                .name(format!("http-{i}"))
                .spawn(move || worker(&rx, &shared))
                .context("cannot start an HTTP worker thread")?;
        }
        let s = shared.clone();
        std::thread::Builder::new()
            .name("http-accept".into())
            .spawn(move || accept_loop(listener, tx, &s))
            .context("cannot start the HTTP accept thread")?;
        let s = shared.clone();
        std::thread::Builder::new()
            .name("http-sampler".into())
            .spawn(move || {
                lower_priority();
                loop {
                    std::thread::sleep(Duration::from_secs(1));
                    sample(&s);
                }
            })
            .context("cannot start the HTTP sampler thread")?;
        Ok(View {
            shared,
            addr: local,
        })
    }

    /// The address the view serves on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Registers a new connection of sender `name` (same names as the stats registry).
    pub fn feed(&self, name: &str) -> Feed {
        let mut map = self.shared.slots.write().unwrap_or_else(|e| e.into_inner());
        let slot = map
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(Slot::new()))
            .clone();
        slot.connections.fetch_add(1, Relaxed);
        if map.len() > MAX_SENDERS {
            forget_gone(&mut map);
        }
        Feed {
            slot,
            shared: self.shared.clone(),
            passed_over: None,
        }
    }
}

impl Feed {
    /// Called by the data path for every written frame. Never blocks and
    /// never allocates after the first copy: notes the time and, if
    /// 1/`--http-fps` s passed since the last copy and the slot is not being
    /// read at this instant (`try_lock`), copies the mask for the view.
    pub fn publish(&mut self, h: &Header, bits: &[u8]) {
        let now = self.shared.now_ns();
        self.slot.last_frame_ns.store(now, Relaxed);
        self.passed_over = Some((*h, now));
        if now < self.slot.next_copy_ns.load(Relaxed) {
            return;
        }
        if let Ok(mut l) = self.slot.latest.try_lock() {
            copy(&mut l, h, bits);
            self.passed_over = None;
            self.slot
                .next_copy_ns
                .store(now.saturating_add(self.shared.interval_ns), Relaxed);
        }
    }

    /// At the end of a stream: copies its last frame, `bits` (the mask of
    /// the frame last given to [`Feed::publish`]), if that one was passed
    /// over and no other stream of the sender (a newer connection) has
    /// published since, so that the view does not keep showing an older
    /// one. Waits for the slot's lock (the stream is over: no frame of it
    /// waits).
    pub fn show_last(&mut self, bits: &[u8]) {
        if let Some((h, at)) = self.passed_over.take() {
            if self.slot.last_frame_ns.load(Relaxed) == at
                && usize::try_from(h.raw_len()).is_ok_and(|n| n == bits.len())
            {
                copy(&mut lock(&self.slot.latest), &h, bits);
            }
        }
    }

    /// A skipped frame. The numbers come from the stats registry, so the
    /// view has nothing to count; kept so the data path reports every event.
    pub fn corrupt(&self) {}
}

/// Makes `bits`, frame `h`, the slot's newest copy.
fn copy(l: &mut Latest, h: &Header, bits: &[u8]) {
    l.header = Some(*h);
    l.version += 1;
    l.bits.clear();
    l.bits.extend_from_slice(bits);
}

impl Drop for Feed {
    fn drop(&mut self) {
        if self.slot.connections.fetch_sub(1, Relaxed) == 1 {
            // Its sender is gone: keep what the view holds of such senders bounded.
            let mut map = self.shared.slots.write().unwrap_or_else(|e| e.into_inner());
            forget_gone(&mut map);
        }
    }
}

// ---------------------------------------------------------------- process-wide view

static VIEW: OnceLock<View> = OnceLock::new();

/// Starts the process's view (`--http`) showing `stats`; logs and returns its address.
pub fn start(listener: TcpListener, http_fps: f64, stats: StatsRegistry) -> Result<SocketAddr> {
    let v = View::serve(listener, http_fps, stats)?;
    let a = v.local_addr();
    log::info!("live view at http://{a}/ (masks sampled at up to {http_fps} fps)");
    if VIEW.set(v).is_err() {
        anyhow::bail!("the live view was started twice");
    }
    Ok(a)
}

/// A [`Feed`] for a new connection of `name`, or None when `--http` is off.
pub fn feed(name: &str) -> Option<Feed> {
    VIEW.get().map(|v| v.feed(name))
}

/// The live view's socket on `addr` (`--http`): taken at the start, before
/// any `--exec` program starts, so that a port in use starts none.
/// `frames`: the frames' port and `--listen`, for the error that it is
/// that port.
pub fn bind(addr: &str, frames: Option<(u16, &str)>) -> Result<TcpListener> {
    let sa: SocketAddr = addr
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve --http address {addr:?} (expected HOST:PORT)"))?
        .next()
        .with_context(|| format!("--http {addr:?} resolved to no address"))?;
    TcpListener::bind(sa)
        .map_err(|e| crate::in_use_hint(e, sa.port(), frames))
        .with_context(|| format!("cannot serve --http on {sa}"))
}

// ---------------------------------------------------------------- sampler

/// Once a second: fps over the last second (from the registry's frame
/// counts) and the registry's latest interval p50, into each sender's history.
fn sample(shared: &Shared) {
    for snap in shared.stats.snapshot() {
        let slot = {
            let mut map = shared.slots.write().unwrap_or_else(|e| e.into_inner());
            if map.len() >= MAX_SENDERS && !map.contains_key(&snap.name) {
                continue;
            }
            map.entry(snap.name.clone())
                .or_insert_with(|| Arc::new(Slot::new()))
                .clone()
        };
        let prev = slot.prev_received.swap(snap.received, Relaxed);
        if prev == UNSAMPLED {
            continue;
        }
        let fps = snap.received.saturating_sub(prev) as f64;
        let mut h = lock(&slot.history);
        h.push_back((fps, if fps > 0.0 { snap.latency_p50_ms } else { None }));
        while h.len() > HISTORY {
            h.pop_front();
        }
    }
}

// ---------------------------------------------------------------- JSON

fn json_num(out: &mut String, key: &str, v: Option<f64>, decimals: usize) {
    let _ = write!(out, ",\"{key}\":");
    match v {
        Some(x) if x.is_finite() => {
            let _ = write!(out, "{x:.decimals$}");
        }
        _ => out.push_str("null"),
    }
}

/// The state shown for a sender.
fn state(snap: &SenderSnapshot, slot: Option<&Slot>, now_ns: u64) -> &'static str {
    if !snap.connected {
        return "disconnected";
    }
    let last = slot.map_or(0, |s| s.last_frame_ns.load(Relaxed));
    if last == 0 || now_ns.saturating_sub(last) > IDLE_AFTER.as_nanos() as u64 {
        "idle"
    } else {
        "connected"
    }
}

/// `/stats.json`: every sender's numbers (the receiver's stats registry, the
/// same numbers as its log and summary), plus what the view shows.
fn stats_json(shared: &Shared) -> String {
    let snaps = shared.stats.snapshot();
    let now = shared.now_ns();
    let mut o = String::with_capacity(512 + snaps.len() * 2048);
    let _ = write!(
        o,
        "{{\"http_fps\":{},\"uptime_s\":{:.1},\"http\":{{\"requests\":{},\"pngs_encoded\":{},\"busy_503\":{}}},\"senders\":[",
        shared.http_fps,
        now as f64 / 1e9,
        shared.requests.load(Relaxed),
        shared.pngs.load(Relaxed),
        shared.busy.load(Relaxed),
    );
    for (i, s) in snaps.iter().enumerate() {
        if i > 0 {
            o.push(',');
        }
        let slot = shared.slot(&s.name);
        let (w, h, seq, version) = match &slot {
            Some(slot) => {
                let l = lock(&slot.latest);
                match l.header {
                    Some(h) => (h.width, h.height, Some(h.sequence), l.version),
                    None => (0, 0, None, 0),
                }
            }
            None => (0, 0, None, 0),
        };
        o.push_str("{\"name\":");
        json_str(&mut o, &s.name);
        o.push_str(",\"peer\":");
        json_str(&mut o, &s.peer);
        let _ = write!(
            o,
            ",\"transport\":\"{}\",\"state\":\"{}\",\"connections\":{},\"width\":{w},\"height\":{h},\
             \"frames\":{},\"lost\":{},\"corrupt\":{},\"incomplete\":{},\"unwritten\":{},\"partly_written\":{},\"resent\":{},\"behind\":{},\"wire_bytes\":{},\"mask_bytes\":{},\
             \"image_version\":{version},\"shown_sequence\":",
            s.transport,
            state(s, slot.as_deref(), now),
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
            s.mask_bytes,
        );
        match seq {
            Some(q) => {
                let _ = write!(o, "{q}");
            }
            None => o.push_str("null"),
        }
        json_num(&mut o, "fps", Some(s.fps), 1);
        json_num(&mut o, "mbps", Some(s.mbps), 2);
        json_num(&mut o, "avg_fps", Some(s.avg_fps), 1);
        json_num(&mut o, "avg_mbps", Some(s.avg_mbps), 2);
        json_num(
            &mut o,
            "ratio",
            (s.wire_bytes > 0).then_some(s.compression_ratio),
            3,
        );
        json_num(&mut o, "latency_p50_ms", s.latency_p50_ms, 2);
        json_num(&mut o, "latency_p99_ms", s.latency_p99_ms, 2);
        json_num(&mut o, "total_latency_p50_ms", s.total_latency_p50_ms, 2);
        json_num(&mut o, "total_latency_p99_ms", s.total_latency_p99_ms, 2);
        json_num(&mut o, "clock_offset_s", s.clock_offset_s, 3);
        // The names `--stats-json` uses too, so a script reads either.
        let _ = write!(
            o,
            ",\"received\":{},\"connected\":{}",
            s.received, s.connected
        );
        json_num(&mut o, "compression_ratio", Some(s.compression_ratio), 3);
        match s.last_sequence {
            Some(q) => {
                let _ = write!(o, ",\"last_sequence\":{q}");
            }
            None => o.push_str(",\"last_sequence\":null"),
        }
        o.push_str(",\"history\":{\"fps\":[");
        let hist: Vec<(f64, Option<f64>)> = slot
            .as_ref()
            .map(|s| lock(&s.history).iter().copied().collect())
            .unwrap_or_default();
        for (k, (f, _)) in hist.iter().enumerate() {
            if k > 0 {
                o.push(',');
            }
            let _ = write!(o, "{f:.1}");
        }
        o.push_str("],\"latency_ms\":[");
        for (k, (_, l)) in hist.iter().enumerate() {
            if k > 0 {
                o.push(',');
            }
            match l {
                Some(v) if v.is_finite() => {
                    let _ = write!(o, "{v:.2}");
                }
                _ => o.push_str("null"),
            }
        }
        o.push_str("]}}");
    }
    o.push_str("]}");
    o
}

// ---------------------------------------------------------------- HTTP

/// Nice value of the view's threads: on a busy single-core Pi the
/// scheduler then gives the receive path the CPU first.
const VIEW_NICE: i32 = 10;

/// Lowers the calling thread's scheduling priority to [`VIEW_NICE`] (on
/// Linux `setpriority(PRIO_PROCESS, 0, ..)` applies to the calling thread
/// only). Best effort: failure only means equal priority.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: plain syscall wrapper with constant arguments; no memory involved.
        let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, VIEW_NICE) };
        if r != 0 {
            log::debug!(
                "http: cannot lower thread priority: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// A connection for a worker: the socket, when it was accepted, and the
/// bytes of its request head read so far (the whole head, unless its
/// [`HEAD_DEADLINE`] passed).
type Request = (TcpStream, Instant, Vec<u8>);

/// Connections whose request head the accept thread is still reading; past
/// this the oldest is closed (served if its whole head came, [`admit`]).
const MAX_PENDING: usize = 128;

/// Descriptors the view holds at most: its listener, the connections whose
/// heads it reads, those queued and those the workers serve.
pub const FDS: usize = 1 + MAX_PENDING + QUEUE + WORKERS;

/// A connection whose request head is not complete yet.
struct Pending {
    stream: TcpStream,
    accepted: Instant,
    head: Vec<u8>,
}

/// What the accept thread does with a [`Pending`] connection.
#[derive(Debug, PartialEq)]
enum Next {
    /// Its head is not complete: wait for more.
    Wait,
    /// A head for a worker: complete, too long or malformed.
    Serve,
    /// Closed (or failed) before a whole request: nothing to answer.
    Drop,
    /// Its [`HEAD_DEADLINE`] passed: `408`.
    Late,
}

impl Pending {
    /// Reads what has arrived (`readable`: poll said so), and says what next.
    fn next(&mut self, readable: bool) -> Next {
        let mut chunk = [0u8; 2048];
        if readable {
            loop {
                match self.stream.read(&mut chunk) {
                    Ok(0) => return Next::Drop,
                    Ok(n) => {
                        self.head.extend_from_slice(&chunk[..n]);
                        let mut headers = [httparse::EMPTY_HEADER; 32];
                        let mut req = httparse::Request::new(&mut headers);
                        match req.parse(&self.head) {
                            Ok(httparse::Status::Partial) if self.head.len() < MAX_HEAD => {}
                            _ => return Next::Serve,
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => return Next::Drop,
                }
            }
        }
        if self.accepted.elapsed() >= HEAD_DEADLINE {
            Next::Late
        } else {
            Next::Wait
        }
    }
}

/// Accepts connections and reads their request heads, all without blocking
/// (`poll`), and hands each whole head to a worker: a connection that is
/// silent or trickles its head costs a slot in a list, not a worker, so a
/// browser's idle preconnected socket or a slow-loris client does not hold
/// up other viewers.
fn accept_loop(listener: TcpListener, tx: SyncSender<Request>, shared: &Shared) {
    use std::os::fd::AsRawFd;
    lower_priority();
    if let Err(e) = listener.set_nonblocking(true) {
        log::warn!("http: cannot make the listening socket non-blocking: {e}");
    }
    let mut pending: VecDeque<Pending> = VecDeque::new();
    let mut fds: Vec<libc::pollfd> = Vec::new();
    loop {
        fds.clear();
        fds.push(libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
        fds.extend(pending.iter().map(|p| libc::pollfd {
            fd: p.stream.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }));
        // until the next head deadline, 1 s at most
        let wait = pending
            .iter()
            .map(|p| HEAD_DEADLINE.saturating_sub(p.accepted.elapsed()))
            .min()
            .unwrap_or(Duration::from_secs(1))
            .min(Duration::from_secs(1));
        let ms = wait.as_millis() as libc::c_int + 1;
        // SAFETY: `fds` is a valid, initialised array of `fds.len()` pollfds.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != ErrorKind::Interrupted {
                log::debug!("http: poll failed: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
            continue;
        }
        // Heads that are complete: to the workers; late ones answered here.
        let mut k = 0;
        for f in &fds[1..] {
            let next = pending[k].next(f.revents != 0);
            if next == Next::Wait {
                k += 1;
                continue;
            }
            let mut p = pending.remove(k).expect("in range");
            match next {
                Next::Serve => {
                    if !hand_over(&tx, shared, p) {
                        return;
                    }
                }
                Next::Late => too_late(&mut p.stream),
                Next::Drop | Next::Wait => {}
            }
        }
        if fds[0].revents != 0 {
            loop {
                match listener.accept() {
                    Ok((stream, _)) => {
                        if let Err(e) = stream.set_nonblocking(true) {
                            log::debug!("http: {e}");
                            continue;
                        }
                        let p = Pending {
                            stream,
                            accepted: Instant::now(),
                            head: Vec::new(),
                        };
                        if let Some(oldest) = admit(&mut pending, p) {
                            if !hand_over(&tx, shared, oldest) {
                                return;
                            }
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    // (a peer that left before it was accepted; a signal)
                    Err(e)
                        if matches!(
                            e.kind(),
                            ErrorKind::ConnectionAborted | ErrorKind::Interrupted
                        ) => {}
                    Err(e) => {
                        log::debug!("http: accept failed: {e}");
                        std::thread::sleep(Duration::from_millis(50));
                        break;
                    }
                }
            }
        }
    }
}

/// Adds `p` to the connections whose heads are read; past [`MAX_PENDING`]
/// the oldest leaves them: returned when its whole head has come since the
/// last look (a request sent just before a burst of connections: to be
/// served), closed otherwise.
fn admit(pending: &mut VecDeque<Pending>, p: Pending) -> Option<Pending> {
    let mut served = None;
    if pending.len() >= MAX_PENDING {
        let mut oldest = pending.pop_front().expect("full");
        match oldest.next(true) {
            Next::Serve => served = Some(oldest),
            Next::Late => too_late(&mut oldest.stream),
            Next::Wait | Next::Drop => {}
        }
    }
    pending.push_back(p);
    served
}

/// Answers `408` to a connection whose head did not come in time, without
/// waiting (what the socket takes).
fn too_late(stream: &mut TcpStream) {
    let r = text(408, "request not received in time\n".into());
    let _ = stream.write(&response_head(&r, r.body.bytes().len()));
    let _ = stream.write(r.body.bytes());
}

/// Queues `p` for a worker, or answers `503` at once when the workers and
/// the queue are full; false when the workers are gone.
fn hand_over(tx: &SyncSender<Request>, shared: &Shared, p: Pending) -> bool {
    if let Err(e) = p.stream.set_nonblocking(false) {
        log::debug!("http: {e}");
        return true;
    }
    match tx.try_send((p.stream, p.accepted, p.head)) {
        Ok(()) => true,
        Err(TrySendError::Full((mut s, _, _))) => {
            // All workers busy and the queue full: say so without waiting.
            shared.busy.fetch_add(1, Relaxed);
            let _ = s.set_nonblocking(true);
            let _ = s.write(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nRetry-After: 1\r\nConnection: close\r\n\r\n",
            );
            true
        }
        Err(TrySendError::Disconnected(_)) => false,
    }
}

fn worker(rx: &Mutex<Receiver<Request>>, shared: &Shared) {
    lower_priority();
    loop {
        let (stream, accepted, mut head) = match rx.lock().unwrap_or_else(|e| e.into_inner()).recv()
        {
            Ok(s) => s,
            Err(_) => return,
        };
        if let Err(e) = serve_one(stream, accepted, shared, &mut head) {
            log::debug!("http: {e}");
        }
    }
}

/// One response: status, content type, body, and whether to send the body.
struct Reply {
    status: u16,
    ctype: &'static str,
    body: Body,
    allow: bool,
}

enum Body {
    Static(&'static [u8]),
    Owned(Vec<u8>),
    Shared(Arc<Vec<u8>>),
}

impl Body {
    fn bytes(&self) -> &[u8] {
        match self {
            Body::Static(b) => b,
            Body::Owned(b) => b,
            Body::Shared(b) => b,
        }
    }
}

fn text(status: u16, msg: String) -> Reply {
    Reply {
        status,
        ctype: "text/plain; charset=utf-8",
        body: Body::Owned(msg.into_bytes()),
        allow: status == 405,
    }
}

/// The status line and headers of `reply`, whose body is `len` bytes.
fn response_head(reply: &Reply, len: usize) -> Vec<u8> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n",
        reply.status,
        reason(reply.status),
        reply.ctype,
        len
    );
    if reply.allow {
        head.push_str("Allow: GET, HEAD\r\n");
    }
    head.push_str("\r\n");
    head.into_bytes()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// Serves the connection `accepted` at that instant. The head deadline runs
/// from the accept, not from when a worker got to it: connections that
/// waited in the queue past it (trickling or silent ones, queued behind each
/// other) get one last short read, so a real request already in the socket
/// is still served at once and a stale one is answered 408 without waiting.
fn serve_one(
    mut stream: TcpStream,
    accepted: Instant,
    shared: &Shared,
    buf: &mut Vec<u8>,
) -> std::io::Result<()> {
    let deadline = accepted + HEAD_DEADLINE;
    let _ = stream.set_nodelay(true);
    let mut chunk = [0u8; 2048];
    // `buf` holds what the accept thread read: usually the whole head.
    let mut n = buf.len();
    let too_long = || text(431, format!("request head longer than {MAX_HEAD} bytes\n"));
    // (`settled`: a whole request head and nothing after it, none declared)
    let (reply, head_only, settled) = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let last = left.is_zero();
        if n == 0 {
            stream.set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
            n = match stream.read(&mut chunk) {
                Ok(0) => return Ok(()), // closed before a whole request: nothing to answer
                Ok(n) => n,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    break (
                        text(408, "request not received in time\n".into()),
                        false,
                        false,
                    );
                }
                Err(e) => return Err(e),
            };
            buf.extend_from_slice(&chunk[..n]);
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(buf) {
            // (a head that came in pieces can pass the bound in its last)
            Ok(httparse::Status::Complete(len)) if len > MAX_HEAD => {
                break (too_long(), false, false)
            }
            Ok(httparse::Status::Complete(len)) => {
                shared.requests.fetch_add(1, Relaxed);
                let method = req.method.unwrap_or("");
                let path = req.path.unwrap_or("");
                let body = req.headers.iter().any(|h| {
                    h.name.eq_ignore_ascii_case("transfer-encoding")
                        || h.name.eq_ignore_ascii_case("content-length")
                            && h.value.iter().any(|&b| (b'1'..=b'9').contains(&b))
                });
                let settled = len == buf.len() && !body;
                break (route(shared, method, path), method == "HEAD", settled);
            }
            // Past the deadline: whatever was already waiting (a head of more
            // than one chunk is read on), then no more.
            Ok(httparse::Status::Partial) if last && n < chunk.len() => {
                break (
                    text(408, "request not received in time\n".into()),
                    false,
                    false,
                );
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {
                n = 0;
                continue;
            }
            Ok(httparse::Status::Partial) => break (too_long(), false, false),
            Err(httparse::Error::TooManyHeaders) => {
                break (
                    text(431, "more than 32 request headers\n".into()),
                    false,
                    false,
                )
            }
            Err(e) => break (text(400, format!("malformed request: {e}\n")), false, false),
        }
    };
    let body = reply.body.bytes();
    let head = response_head(&reply, body.len());
    let deadline = Instant::now() + IO_TIMEOUT;
    write_by(&mut stream, &head, deadline)?;
    if !head_only {
        write_by(&mut stream, body, deadline)?;
    }
    // Half-close, then drain briefly (200 ms, 64 KiB at most), so an unread
    // request body does not turn our close into a reset that eats the response.
    // Not for a client too slow to send its request (408): it would only
    // hold the worker longer. Nor after a whole request with nothing after
    // it and no body declared, unless bytes are already waiting: a client
    // that keeps its end open held a worker 200 ms a request. And it ends
    // once the client is quiet for DRAIN_QUIET: a body declared and never
    // sent (or a bad request, then silence) holds the worker that long.
    let _ = stream.shutdown(Shutdown::Write);
    if reply.status == 408 {
        return Ok(());
    }
    let mut sink = [0u8; 4096];
    let mut drained = 0;
    if settled {
        stream.set_nonblocking(true)?;
        let r = stream.read(&mut sink);
        stream.set_nonblocking(false)?;
        match r {
            Ok(n) if n > 0 => drained = n,
            _ => return Ok(()),
        }
    }
    let deadline = Instant::now() + Duration::from_millis(200);
    while drained < 64 * 1024 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero()
            || stream
                .set_read_timeout(Some(left.min(DRAIN_QUIET)))
                .is_err()
        {
            break;
        }
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
    Ok(())
}

/// The drain after an answer ends when the client sends nothing for this
/// long (see [`serve_one`]).
const DRAIN_QUIET: Duration = Duration::from_millis(20);

/// `write_all`, but all of it by `deadline` (a client reading one byte at a
/// time cannot stretch it).
fn write_by(stream: &mut TcpStream, mut data: &[u8], deadline: Instant) -> std::io::Result<()> {
    while !data.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                ErrorKind::TimedOut,
                "client too slow to take the response",
            ));
        }
        stream.set_write_timeout(Some(left))?;
        match stream.write(data) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A request target's path and query. The absolute form
/// `http://HOST:PORT/p?q`, which RFC 9112 has servers accept (a proxy in
/// between sends it), is read as `/p?q`; a missing path is `/`.
fn path_and_query(target: &str) -> (&str, &str) {
    let scheme = ["http://", "https://"].into_iter().find(|p| {
        target
            .get(..p.len())
            .is_some_and(|s| s.eq_ignore_ascii_case(p))
    });
    let target = match scheme {
        Some(p) => {
            let rest = &target[p.len()..];
            match rest.find(['/', '?']) {
                Some(i) if rest.as_bytes()[i] == b'/' => &rest[i..],
                Some(i) => return ("/", &rest[i + 1..]),
                None => return ("/", ""),
            }
        }
        None => target,
    };
    target.split_once('?').unwrap_or((target, ""))
}

fn route(shared: &Shared, method: &str, target: &str) -> Reply {
    let (path, query) = path_and_query(target);
    let known = matches!(
        path,
        "/" | "/index.html" | "/app.js" | "/style.css" | "/stats.json" | "/latest.png"
    );
    if !known {
        return text(404, format!("no such page: {path}\n"));
    }
    if method != "GET" && method != "HEAD" {
        return text(
            405,
            format!("method {method} not allowed: this view is read-only (GET, HEAD)\n"),
        );
    }
    let ok = |ctype: &'static str, body: Body| Reply {
        status: 200,
        ctype,
        body,
        allow: false,
    };
    match path {
        "/" | "/index.html" => ok(
            "text/html; charset=utf-8",
            Body::Static(INDEX_HTML.as_bytes()),
        ),
        "/app.js" => ok(
            "text/javascript; charset=utf-8",
            Body::Static(APP_JS.as_bytes()),
        ),
        "/style.css" => ok(
            "text/css; charset=utf-8",
            Body::Static(STYLE_CSS.as_bytes()),
        ),
        "/stats.json" => ok(
            "application/json",
            Body::Owned(stats_json(shared).into_bytes()),
        ),
        _ => match latest_png(shared, query) {
            Ok(png) => ok("image/png", Body::Shared(png)),
            Err(r) => r,
        },
    }
}

/// Decodes `%XX` and `+` of a query value.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b.get(i + 1..i + 3)?;
                // (from_str_radix alone would take a sign: "%+5")
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return None;
                }
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// `/latest.png[?sender=NAME]`: the newest copied mask as a 1-bit PNG.
/// Without `sender`, the most recently active sender's.
fn latest_png(shared: &Shared, query: &str) -> Result<Arc<Vec<u8>>, Reply> {
    let mut sender = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v)
            .ok_or_else(|| text(400, format!("bad percent-encoding in {pair:?}\n")))?;
        if k == "sender" {
            sender = Some(v);
        }
        // other keys (cache busters) are ignored
    }
    let slot = match &sender {
        Some(name) => shared.slot(name),
        None => shared
            .slots
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .max_by_key(|s| s.last_frame_ns.load(Relaxed))
            .cloned(),
    };
    let Some(slot) = slot else {
        return Err(match sender {
            Some(n) => text(404, format!("unknown sender {n:?}\n")),
            None => text(404, "no sender yet\n".into()),
        });
    };
    // One encoding at a time per slot: viewers asking at once get its PNG.
    let _encoding = lock(&slot.encoding);
    // Copy out under the lock (a memcpy), encode outside it.
    let (h, version, bits) = {
        let l = slot.latest.lock().unwrap_or_else(|e| e.into_inner());
        let Some(h) = l.header else {
            return Err(text(404, "no frame from this sender yet\n".into()));
        };
        if let Some((v, png)) = &l.png {
            if *v == l.version {
                return Ok(png.clone());
            }
        }
        (h, l.version, l.bits.clone())
    };
    let mut png = Vec::with_capacity(bits.len() / 4 + 128);
    if let Err(e) = encode(Format::Png, h.width, h.height, &bits, &mut png) {
        return Err(text(500, format!("PNG encoding failed: {e:#}\n")));
    }
    shared.pngs.fetch_add(1, Relaxed);
    png.shrink_to_fit();
    let png = Arc::new(png);
    let mut l = slot.latest.lock().unwrap_or_else(|e| e.into_inner());
    if l.version == version {
        l.png = Some((version, png.clone()));
    }
    drop(l);
    // A gone sender's PNG counts towards what the view keeps of gone senders.
    if slot.connections.load(Relaxed) == 0 {
        forget_gone(&mut shared.slots.write().unwrap_or_else(|e| e.into_inner()));
    }
    Ok(png)
}

#[cfg(test)]
mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats;

    fn get(addr: SocketAddr, raw: &[u8]) -> (u16, String, Vec<u8>) {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(raw).unwrap();
        let mut resp = Vec::new();
        let _ = s.read_to_end(&mut resp);
        let split = resp
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a response head");
        let head = String::from_utf8_lossy(&resp[..split]).into_owned();
        let status = head[9..12].parse().unwrap();
        (status, head, resp[split + 4..].to_vec())
    }

    fn req(addr: SocketAddr, method: &str, path: &str) -> (u16, String, Vec<u8>) {
        get(
            addr,
            format!("{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
        )
    }

    /// What the data path does for one frame: stats, then the view.
    fn frame(reg: &StatsRegistry, feed: &mut Feed, name: &str, h: &Header, bits: &[u8]) {
        stats::lock(&reg.sender(name)).frame(h, bits.len(), stats::now_us());
        feed.publish(h, bits);
    }

    #[test]
    fn the_oldest_waiting_connection_is_served_if_its_head_came() {
        // A whole request sent just before more connections than the
        // accept thread keeps waiting: served, not closed unanswered.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = l.local_addr().unwrap();
        let mut clients = Vec::new();
        let mut pending = VecDeque::new();
        let conn = |clients: &mut Vec<TcpStream>| {
            clients.push(TcpStream::connect(a).unwrap());
            let (s, _) = l.accept().unwrap();
            s.set_nonblocking(true).unwrap();
            Pending {
                stream: s,
                accepted: Instant::now(),
                head: Vec::new(),
            }
        };
        for _ in 0..MAX_PENDING {
            let p = conn(&mut clients);
            assert!(admit(&mut pending, p).is_none());
        }
        let p = conn(&mut clients);
        let served = admit(&mut pending, p);
        assert!(served.is_none(), "a silent oldest is closed");
        assert_eq!(pending.len(), MAX_PENDING);
        // the oldest now is clients[1]'s: its head comes
        clients[1].write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let p = conn(&mut clients);
        let served = admit(&mut pending, p).expect("the oldest, its head in");
        assert_eq!(served.head, b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(pending.len(), MAX_PENDING);
    }

    #[test]
    fn routes_and_edge_cases() {
        let reg = StatsRegistry::new();
        let v = View::start("127.0.0.1:0", 1000.0, reg.clone()).unwrap();
        let a = v.local_addr();
        let (st, head, body) = req(a, "GET", "/");
        assert_eq!(st, 200);
        assert!(head.contains("text/html"));
        assert!(String::from_utf8_lossy(&body).contains("app.js"));
        assert_eq!(req(a, "GET", "/app.js").0, 200);
        assert_eq!(req(a, "GET", "/style.css").0, 200);
        let (st, _, body) = req(a, "HEAD", "/");
        assert_eq!((st, body.len()), (200, 0));
        assert_eq!(req(a, "GET", "/nope").0, 404);
        assert_eq!(req(a, "GET", "/../etc/passwd").0, 404);
        // the absolute form, as a proxy sends it
        let (st, head, _) = req(a, "GET", &format!("http://{a}/stats.json"));
        assert_eq!(st, 200);
        assert!(head.contains("application/json"), "{head}");
        assert_eq!(req(a, "GET", &format!("HTTP://{a}")).0, 200);
        assert_eq!(req(a, "GET", "http://x/nope").0, 404);
        let (st, head, _) = req(a, "POST", "/stats.json");
        assert_eq!(st, 405);
        assert!(head.contains("Allow: GET, HEAD"));
        assert_eq!(req(a, "DELETE", "/latest.png").0, 405);
        assert_eq!(req(a, "GET", "/latest.png").0, 404);
        assert_eq!(req(a, "GET", "/latest.png?sender=ghost").0, 404);
        assert_eq!(req(a, "GET", "/latest.png?sender=%zz").0, 400);
        assert_eq!(get(a, b"\x00\x01garbage\r\n\r\n").0, 400);
        assert_eq!(get(a, b"GET / HTTP/1.1\r\nbad header line\r\n\r\n").0, 400);
        // half a request, then silence: answered 408 at the head deadline
        assert_eq!(get(a, b"GET / HTTP/1.1\r\nHost: x\r\n").0, 408);
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(MAX_HEAD));
        assert_eq!(get(a, long.as_bytes()).0, 431);
        // ... also when it comes in two pieces, the bound passed in the
        // second (it was 200: only an incomplete head was measured)
        let mut s = TcpStream::connect(a).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(&long.as_bytes()[..MAX_HEAD - 100]).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        s.write_all(&long.as_bytes()[MAX_HEAD - 100..]).unwrap();
        let mut resp = Vec::new();
        let _ = s.read_to_end(&mut resp);
        assert!(
            resp.starts_with(b"HTTP/1.1 431"),
            "{:?}",
            &resp[..resp.len().min(40)]
        );
        // A request whose body is unread when the answer is written gets
        // its answer. (The body is drained before the close, which would
        // otherwise reset the connection; over loopback that reset comes
        // after the answer and the end, so it cannot be seen here.)
        let mut s = TcpStream::connect(a).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut post = b"POST /stats.json HTTP/1.1\r\nContent-Length: 40000\r\n\r\n".to_vec();
        post.extend_from_slice(&[b'x'; 40_000]);
        s.write_all(&post).unwrap();
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).expect("the answer, not a reset");
        assert!(
            resp.starts_with(b"HTTP/1.1 405"),
            "{:?}",
            &resp[..resp.len().min(40)]
        );

        // a sender appears, sends a 10x2 mask twice (two frames lost between)
        let name = "cam \"one\"";
        stats::lock(&reg.sender(name)).connected("127.0.0.1:1", "tcp");
        let mut feed = v.feed(name);
        let mut h = Header::new(10, 2, 0, 0, 4);
        h.timestamp_us = stats::now_us();
        frame(&reg, &mut feed, name, &h, &[0xff, 0xc0, 0x00, 0x00]);
        h.sequence = 3;
        std::thread::sleep(Duration::from_millis(5));
        frame(&reg, &mut feed, name, &h, &[0x00, 0x00, 0xff, 0xc0]);
        let (st, head, png) = req(a, "GET", "/latest.png?sender=cam+%22one%22");
        assert_eq!(st, 200, "{head}");
        assert!(head.contains("image/png"));
        let mut dec = png::Decoder::new(std::io::Cursor::new(&png[..]))
            .read_info()
            .unwrap();
        let mut px = vec![0; dec.output_buffer_size().unwrap()];
        dec.next_frame(&mut px).unwrap();
        assert_eq!((dec.info().width, dec.info().height), (10, 2));
        assert_eq!(&px[..4], &[0x00, 0x00, 0xff, 0xc0], "the newest mask");
        assert_eq!(req(a, "GET", "/latest.png").0, 200);
        let (_, _, json) = req(a, "GET", "/stats.json");
        let json = String::from_utf8(json).unwrap();
        assert!(json.contains(r#""name":"cam \"one\"""#), "{json}");
        assert!(json.contains(r#""state":"connected""#), "{json}");
        // two requests of the same copy: encoded once
        assert!(json.contains(r#""pngs_encoded":1,"#), "{json}");
        assert!(
            json.contains(r#""frames":2,"lost":2,"corrupt":0"#),
            "{json}"
        );
        assert!(
            json.contains(r#""image_version":2,"shown_sequence":3"#),
            "{json}"
        );
        // every key of a sender in --stats-json is in /stats.json too
        let file = reg.to_json();
        let sender = file.split("\"total\"").next().unwrap();
        let keys: Vec<&str> = sender
            .split("\": ")
            .filter_map(|a| a.rsplit('"').next())
            .filter(|k| !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
            .collect();
        assert!(keys.len() > 20, "{keys:?} from {file}");
        for k in keys
            .iter()
            .filter(|k| !["time_unix_ms", "senders"].contains(k))
        {
            assert!(json.contains(&format!("\"{k}\":")), "{k} missing in {json}");
        }
        stats::lock(&reg.sender(name)).disconnected();
        drop(feed);
        let (_, _, json) = req(a, "GET", "/stats.json");
        let json = String::from_utf8(json).unwrap();
        assert!(json.contains(r#""state":"disconnected""#), "{json}");
    }

    #[test]
    fn silent_connections_do_not_hold_up_a_request() {
        // More silent connections than workers (a browser's idle
        // preconnected sockets, a slow-loris client, one trickling): a
        // request is answered before any of them gets its 408.
        // (The peeks must come before the silent ones' deadline: a test
        // thread that ran later than that tries again, three times at most;
        // a request held until the deadline, the fault, fails the third.)
        let mut tries = 0;
        let (_v, mut silent) = loop {
            tries += 1;
            let v = View::start("127.0.0.1:0", 10.0, StatsRegistry::new()).unwrap();
            let a = v.local_addr();
            let t0 = Instant::now();
            let mut silent: Vec<TcpStream> = (0..WORKERS + 4)
                .map(|_| TcpStream::connect(a).unwrap())
                .collect();
            silent[0].write_all(b"GET / HT").unwrap();
            std::thread::sleep(Duration::from_millis(100)); // all accepted first
            let (st, _, _) = req(a, "GET", "/stats.json");
            assert_eq!(st, 200);
            let got: Vec<_> = silent
                .iter()
                .map(|s| {
                    s.set_nonblocking(true).unwrap();
                    s.peek(&mut [0u8; 1])
                })
                .collect();
            if t0.elapsed() >= HEAD_DEADLINE - Duration::from_millis(200) && tries < 3 {
                continue;
            }
            for (i, got) in got.iter().enumerate() {
                assert!(
                    matches!(&got, Err(e) if e.kind() == ErrorKind::WouldBlock),
                    "silent connection {i} was answered first: {got:?} (try {tries})"
                );
            }
            break (v, silent);
        };
        // and each still gets its 408 at the head deadline
        for s in &mut silent {
            s.set_nonblocking(false).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut resp = Vec::new();
            let _ = s.read_to_end(&mut resp);
            assert!(
                resp.starts_with(b"HTTP/1.1 408"),
                "{:?}",
                String::from_utf8_lossy(&resp)
            );
        }
    }

    #[test]
    fn viewers_asking_at_once_share_one_png_encoding() {
        let v = View::start("127.0.0.1:0", 1000.0, StatsRegistry::new()).unwrap();
        let mut feed = v.feed("a");
        let (w, h) = (2048u32, 2048u32);
        let bits: Vec<u8> = (0..w as usize * h as usize / 8)
            .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0])
            .collect();
        feed.publish(&Header::new(w, h, 0, 0, bits.len() as u32), &bits);
        let a = v.local_addr();
        let asks: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(move || req(a, "GET", "/latest.png?sender=a")))
            .collect();
        let pngs: Vec<Vec<u8>> = asks
            .into_iter()
            .map(|t| {
                let (st, head, png) = t.join().unwrap();
                assert_eq!(st, 200, "{head}");
                png
            })
            .collect();
        assert!(pngs.iter().all(|p| p == &pngs[0]));
        assert_eq!(
            v.shared.pngs.load(Relaxed),
            1,
            "one encoding for four viewers"
        );
    }

    #[test]
    fn the_view_forgets_the_oldest_gone_senders_past_its_byte_cap() {
        let v = View::start("127.0.0.1:0", 1000.0, StatsRegistry::new()).unwrap();
        // 2 MiB masks (4096x4096), one sender after another, each then gone
        let big = vec![0x5au8; 4096 * 4096 / 8];
        for i in 0..12 {
            let mut feed = v.feed(&format!("s{i:02}"));
            feed.publish(&Header::new(4096, 4096, 0, 0, big.len() as u32), &big);
            drop(feed);
        }
        let map = v.shared.slots.read().unwrap();
        let kept: Vec<&String> = map.keys().collect();
        let held: usize = map.values().map(|s| s.bytes()).sum();
        assert!(held <= GONE_BYTES, "{held} bytes kept: {kept:?}");
        assert_eq!(kept.len(), GONE_BYTES / big.len(), "{kept:?}");
        assert!(
            kept.contains(&&"s11".to_string()),
            "the newest kept: {kept:?}"
        );
        assert!(
            !kept.contains(&&"s00".to_string()),
            "the oldest forgotten: {kept:?}"
        );
        drop(map);
        // their PNGs, once viewed, count too (masks that do not compress:
        // each PNG about as large as its mask)
        let v = View::start("127.0.0.1:0", 1000.0, StatsRegistry::new()).unwrap();
        let mut x = 1u32;
        let noise: Vec<u8> = (0..big.len())
            .map(|_| {
                x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (x >> 24) as u8
            })
            .collect();
        for i in 0..6 {
            let mut feed = v.feed(&format!("n{i}"));
            feed.publish(&Header::new(4096, 4096, 0, 0, noise.len() as u32), &noise);
        }
        let a = v.local_addr();
        for i in 0..6 {
            let (st, _, png) = req(a, "GET", &format!("/latest.png?sender=n{i}"));
            assert!(st == 200 || st == 404, "{st}");
            assert!(st == 404 || png.len() > noise.len() / 2, "{}", png.len());
        }
        let map = v.shared.slots.read().unwrap();
        let held: usize = map.values().map(|s| s.bytes()).sum();
        assert!(
            held <= GONE_BYTES,
            "{held} bytes kept after the PNGs were viewed"
        );
        assert!(map.len() >= 3, "{:?}", map.keys().collect::<Vec<_>>());
        drop(map);
        // a connected sender is never forgotten, however old its frame
        let v = View::start("127.0.0.1:0", 1000.0, StatsRegistry::new()).unwrap();
        let mut live = v.feed("live");
        live.publish(&Header::new(8, 1, 0, 0, 1), &[1]);
        for i in 0..MAX_SENDERS + 5 {
            std::thread::sleep(Duration::from_micros(50));
            let mut feed = v.feed(&format!("g{i:02}"));
            feed.publish(&Header::new(8, 1, 0, 0, 1), &[1]);
        }
        let map = v.shared.slots.read().unwrap();
        assert!(map.len() <= MAX_SENDERS + 1, "{}", map.len());
        assert!(map.contains_key("live"));
        drop(map);
        drop(live);
    }

    #[test]
    fn publish_copies_at_most_http_fps() {
        let v = View::start("127.0.0.1:0", 1.0, StatsRegistry::new()).unwrap();
        let mut feed = v.feed("a");
        for seq in 0..100 {
            feed.publish(&Header::new(8, 1, seq, 0, 1), &[seq as u8]);
        }
        let slot = v.shared.slot("a").unwrap();
        let l = lock(&slot.latest);
        assert_eq!(l.header.map(|h| h.sequence), Some(0), "one copy within 1 s");
        assert_eq!((l.version, l.bits.as_slice()), (1, &[0u8][..]));
    }

    #[test]
    fn a_streams_last_frame_is_shown_when_it_ends() {
        let v = View::start("127.0.0.1:0", 1.0, StatsRegistry::new()).unwrap();
        let mut feed = v.feed("a");
        for seq in 0..5 {
            feed.publish(&Header::new(8, 1, seq, 0, 1), &[seq as u8]);
        }
        let slot = v.shared.slot("a").unwrap();
        assert_eq!(lock(&slot.latest).header.map(|h| h.sequence), Some(0));
        feed.show_last(&[4]);
        let l = lock(&slot.latest);
        assert_eq!(
            l.header.map(|h| h.sequence),
            Some(4),
            "the last one, at the end"
        );
        assert_eq!((l.version, l.bits.as_slice()), (2, &[4u8][..]));
        drop(l);
        // nothing passed over since: nothing to do (and a mask of the
        // wrong size is never taken for the frame)
        feed.show_last(&[9]);
        let mut other = v.feed("b");
        other.publish(&Header::new(8, 1, 0, 0, 1), &[1]);
        other.publish(&Header::new(8, 1, 1, 0, 1), &[2]);
        other.show_last(&[2, 2]);
        assert_eq!(lock(&slot.latest).version, 2);
        let b = v.shared.slot("b").unwrap();
        assert_eq!(lock(&b.latest).header.map(|h| h.sequence), Some(0));
        // an old stream of a sender that a newer one has published since
        // (a UDP stream swept after its sender restarted) shows nothing
        let mut old = v.feed("c");
        let mut new = v.feed("c");
        old.publish(&Header::new(8, 1, 0, 0, 1), &[1]);
        old.publish(&Header::new(8, 1, 1, 0, 1), &[2]);
        std::thread::sleep(Duration::from_millis(2));
        new.publish(&Header::new(8, 1, 0, 0, 1), &[7]);
        old.show_last(&[2]);
        let c = v.shared.slot("c").unwrap();
        assert_eq!(lock(&c.latest).bits, [1], "not the old stream's last");
        new.show_last(&[7]);
        assert_eq!(lock(&c.latest).bits, [7], "the newer stream's, at its end");
    }

    #[test]
    fn publish_skips_rather_than_waits_for_a_reader() {
        let v = View::start("127.0.0.1:0", 1000.0, StatsRegistry::new()).unwrap();
        let mut feed = v.feed("a");
        let slot = v.shared.slot("a").unwrap();
        let held = lock(&slot.latest); // an HTTP worker reading right now
                                       // (a blocking lock here would deadlock this thread: returning at all is the test)
        feed.publish(&Header::new(8, 1, 0, 0, 1), &[1]);
        assert!(
            held.header.is_none(),
            "nothing copied while the slot is held"
        );
        drop(held);
        std::thread::sleep(Duration::from_millis(2));
        feed.publish(&Header::new(8, 1, 1, 0, 1), &[2]);
        assert_eq!(lock(&slot.latest).header.map(|h| h.sequence), Some(1));
    }

    #[test]
    fn state_connected_idle_disconnected() {
        let slot = Slot::new();
        let mut snap = SenderSnapshot {
            connected: true,
            ..Default::default()
        };
        let sec = 1_000_000_000u64;
        assert_eq!(state(&snap, Some(&slot), 10 * sec), "idle", "no frame yet");
        slot.last_frame_ns.store(9 * sec, Relaxed);
        assert_eq!(state(&snap, Some(&slot), 10 * sec), "connected");
        assert_eq!(state(&snap, Some(&slot), 12 * sec), "idle", "silent > 2 s");
        snap.connected = false;
        assert_eq!(state(&snap, Some(&slot), 10 * sec), "disconnected");
    }

    #[test]
    fn fps_argument() {
        assert_eq!(parse_fps("10"), Ok(10.0));
        assert!(parse_fps("0").is_err());
        assert!(parse_fps("nan").is_err());
        assert!(parse_fps("-1").is_err());
        assert!(
            parse_fps("0.001").is_err(),
            "a copy every 1000 s or more is no view"
        );
        assert_eq!(parse_fps("0.01"), Ok(0.01));
    }
}
