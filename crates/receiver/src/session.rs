//! The receiver's streaming architecture: an accept loop that gives every
//! TCP connection its own thread (and `udp.rs` a thread for all datagram
//! streams), all feeding one per-frame data path, [`StreamCtx::frame`]:
//!
//! ```text
//!  bytes ─► FrameReader (limits, CRC) ─► decode (codec hook) ─► Sinks (files / stdout /
//!           --latest / --exec) ─► stats ─► live view feed ─► FrameObservers
//! ```
//!
//! Isolation: each connection has its own reader, buffer and decoder; any
//! error in its bytes closes that connection only. Resources are capped:
//! `--max-senders` connections at once, each buffering at most one frame of
//! `--max-size`, each frame due within `--timeout` of its first byte
//! (slow-loris), each connection dropped after `--timeout` of silence.

use crate::output::{Format, MountWatch, Output, Written};
use crate::stats::{self, SenderHandle, StatsRegistry};
use crate::MAX_SIDE;
use anyhow::{Context, Result};
use bitmask_wire::{FrameReader, Header, Limits, WireError};
use std::collections::HashMap;
use std::io::{self, Read};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{
    AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst,
};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Something that wants to see every frame written (a live view, a metrics
/// exporter...). Called on the connection's thread right after the frame was
/// written: keep it quick and never block.
pub trait FrameObserver: Send + Sync {
    /// A frame of `sender` was written; `mask` is the decoded packed mask
    /// (wire layout) and `stats` that sender's numbers including this frame.
    fn frame(&self, sender: &str, header: &Header, mask: &[u8], stats: &SenderHandle);
    /// A stream of `sender` opened.
    fn connected(&self, _sender: &str, _peer: &str) {}
    /// A stream of `sender` closed.
    fn disconnected(&self, _sender: &str) {}
}

/// Locks `m`, also when a thread panicked holding it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// First come, first served turns at the shared output (a plain mutex
/// lets the thread that just wrote take it again at once, starving the
/// others); a waiter can leave the line. Only the next in line is woken.
#[derive(Default)]
pub struct Turns {
    state: Mutex<TurnState>,
}

#[derive(Default)]
struct TurnState {
    next: u64,
    serving: u64,
    left: std::collections::BTreeSet<u64>,
    /// Waiting threads by ticket, to wake the one whose turn comes.
    waiting: HashMap<u64, std::thread::Thread>,
}

impl TurnState {
    /// Moves on to the next ticket still in line; returns its thread.
    fn advance(&mut self) -> Option<std::thread::Thread> {
        self.serving += 1;
        while self.left.remove(&self.serving) {
            self.serving += 1;
        }
        self.waiting.get(&self.serving).cloned()
    }
}

/// How often a waiter checks whether it should leave the line.
const TURN_POLL: Duration = Duration::from_millis(200);

/// How often a connection waiting for its sender's writer lock (an older
/// connection of the sender still writing) looks again.
const WRITER_POLL: Duration = Duration::from_millis(10);

impl Turns {
    /// Waits for this caller's turn (held until the [`Turn`] is dropped);
    /// `None`, its place given up, once `gone()` (checked every
    /// [`TURN_POLL`] while waiting, and when the turn comes).
    pub fn wait(&self, gone: impl Fn() -> bool) -> Option<Turn<'_>> {
        let t = {
            let mut s = lock(&self.state);
            let t = s.next;
            s.next += 1;
            t
        };
        loop {
            let mut s = lock(&self.state);
            if gone() {
                s.waiting.remove(&t);
                let wake = if s.serving == t {
                    s.advance()
                } else {
                    s.left.insert(t);
                    None
                };
                drop(s);
                if let Some(w) = wake {
                    w.unpark();
                }
                return None;
            }
            if s.serving == t {
                s.waiting.remove(&t);
                return Some(Turn(self));
            }
            s.waiting.entry(t).or_insert_with(std::thread::current);
            drop(s);
            std::thread::park_timeout(TURN_POLL);
        }
    }
}

/// A turn at the shared output; the next waiter's turn comes when it is dropped.
pub struct Turn<'a>(&'a Turns);

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let wake = lock(&self.0.state).advance();
        if let Some(w) = wake {
            w.unpark();
        }
    }
}

/// Where frames go.
pub struct Sinks {
    /// One output for every sender (the single-sender layout, stdout,
    /// `--latest`, `--exec`), or None.
    pub shared: Option<Mutex<Output>>,
    /// `--per-sender`: files go to DIR/<name>/ in this format, not while
    /// DIR was a mount point and is not one now, kept to `--keep N`'s
    /// bound if given.
    pub per_sender: Option<(PathBuf, Format, MountWatch, Option<Arc<crate::keep::Keep>>)>,
}

/// Everything the sessions share. Built once in `main`.
pub struct Hub {
    /// Frame limits (`--max-size`).
    pub limits: Limits,
    /// Silence allowed on a stream, and time allowed for one frame.
    pub timeout: Duration,
    /// Output.
    pub sinks: Sinks,
    /// Per-sender numbers.
    pub stats: StatsRegistry,
    /// Subscribers to the frame path.
    pub observers: Mutex<Vec<Arc<dyn FrameObserver>>>,
    /// `--count`: stop after this many frames (all senders).
    pub count: Option<u64>,
    /// Connections open at most (`--max-senders`).
    pub max_conns: usize,
    written: AtomicU64,
    conns: AtomicUsize,
    next_id: AtomicU64,
    /// Live TCP connections by stream: the announced sender name and, for
    /// a stream kept apart ([`Hub::name_for`]), its host; their id in
    /// `open`. (Not by the name shown: a hello announcing `cam@10.0.0.2` is
    /// not the stream kept apart under that name.)
    live: Mutex<HashMap<(String, Option<IpAddr>), u64>>,
    /// Every open TCP connection by id, for making room when all
    /// `--max-senders` slots are taken ([`make_room`]).
    open: Mutex<HashMap<u64, OpenConn>>,
    /// When the hub was made: the clock of [`ConnState::last_byte_ms`].
    epoch: Instant,
    /// Refused or replaced connections, for a log line a second at most.
    refusals: Throttle,
    /// Connections that closed before saying who they are, likewise.
    handshakes: Throttle,
    /// Connections whose first frame was refused or cut short, likewise
    /// per kind of error.
    first_frames: KeyedThrottle<(std::mem::Discriminant<WireError>, Option<io::ErrorKind>)>,
    /// Takeovers of a sender name by a new connection, likewise; and per
    /// name, since when and how often (many: two senders share the name).
    takeovers: Throttle,
    /// UDP streams' damaged frames and new numberings, for all of them at
    /// once: a host may open a stream per datagram pair (a new stream id
    /// each), so a per-stream throttle would let it log a line per pair.
    udp_lines: Throttle,
    takeover_counts: Mutex<HashMap<String, (Instant, u32)>>,
    /// Which host each sender name belongs to ([`Hub::name_for`]).
    owners: Mutex<HashMap<String, Owner>>,
    /// Names found in use by two hosts, and the other host (each pair is
    /// warned about once; see [`Hub::name_for`]).
    shared_names: Mutex<std::collections::HashSet<(String, IpAddr)>>,
    /// When the write in progress to the shared output began (ms after
    /// `epoch`, plus one; 0 when none is), for [`report_until_done`]'s
    /// warning about a stream reader that stopped taking masks.
    shared_busy_since: AtomicU64,
    /// Turns at the shared output, in arrival order.
    turns: Turns,
    /// Where each sender's handled frames end, for resumed connections.
    handled: Mutex<crate::acks::Handled>,
    done: Mutex<Option<mpsc::Sender<String>>>,
    /// Set by [`Hub::stop`]: no frame is handled from then on.
    stopping: AtomicBool,
    /// Frames being handled now (see [`Hub::settle`]).
    in_frame: AtomicUsize,
    /// What the streams may hold in all (`--max-memory`; no limit unless
    /// set).
    pub memory: crate::memory::Budget,
    /// Connections closed by [`make_memory`], until their streams have
    /// given their memory back (`held` 0).
    memory_freeing: Mutex<Vec<Arc<ConnState>>>,
    /// `--stats-json` failures (one a second: a line a minute once it
    /// goes on).
    stats_json_log: Throttle,
}

/// Frames of a resumed connection looked for in the output directory when
/// this receiver holds no record of its sender (the `--no-drop` window).
const ON_DISK_FRAMES: u32 = 64;

/// How a frame found by [`ON_DISK_FRAMES`]'s check was handled before.
const ON_DISK_HOW: &str = "its file is in the output directory already (written before a restart)";

/// Takeovers of one sender name within [`TAKEOVER_SPAN`] that mean two
/// senders share it (a reconnecting sender takes over once per break).
const TAKEOVERS_SHARED: u32 = 5;
/// See [`TAKEOVERS_SHARED`].
const TAKEOVER_SPAN: Duration = Duration::from_secs(30);

/// A [`Throttle`] per key (a key from a small set: kinds of error).
pub struct KeyedThrottle<K>(Mutex<HashMap<K, Throttle>>);

impl<K> Default for KeyedThrottle<K> {
    fn default() -> Self {
        KeyedThrottle(Mutex::new(HashMap::new()))
    }
}

impl<K: std::hash::Hash + Eq> KeyedThrottle<K> {
    /// [`Throttle::hit`] for `key`'s events.
    pub fn hit(&self, key: K) -> Option<u64> {
        lock(&self.0).entry(key).or_default().hit()
    }
}

/// Counts events and says when one may be logged: the first, then at most
/// one a second with the number passed over since (a flood of connections or
/// datagrams must not flood the log); once events have come without a
/// pause of [`FLOOD_PAUSE`] for [`FLOOD_LONG`], one a minute, until they
/// pause (a full disk at 30 fps for days: the journal keeps the line that
/// said why).
#[derive(Default)]
pub struct Throttle(Mutex<Option<ThrottleState>>);

/// See [`Throttle`].
struct ThrottleState {
    /// When the last line was said.
    at: Instant,
    /// Events passed over since.
    n: u64,
    /// The last event.
    last: Instant,
    /// Since when events have come without a pause.
    flood: Instant,
}

/// See [`Throttle`].
const FLOOD_LONG: Duration = Duration::from_secs(60);
/// See [`Throttle`] (as long as [`FLOOD_LONG`]: a slow sender's every
/// frame failing is a flood too).
const FLOOD_PAUSE: Duration = FLOOD_LONG;

impl Throttle {
    /// One more event: `Some(n)` when it should be logged, `n` events having
    /// gone unlogged since the last line; `None` to stay quiet.
    pub fn hit(&self) -> Option<u64> {
        self.hit_at(Instant::now())
    }

    fn hit_at(&self, now: Instant) -> Option<u64> {
        let mut g = lock(&self.0);
        let since = |t: Instant| now.saturating_duration_since(t);
        let flooding = |s: &ThrottleState| since(s.last) < FLOOD_PAUSE;
        match &mut *g {
            Some(s)
                if flooding(s)
                    && since(s.at)
                        < if since(s.flood) >= FLOOD_LONG {
                            FLOOD_LONG
                        } else {
                            Duration::from_secs(1)
                        } =>
            {
                s.n += 1;
                s.last = now;
                None
            }
            other => {
                let skipped = other.as_ref().map_or(0, |s| s.n);
                let flood = match other {
                    Some(s) if flooding(s) => s.flood,
                    _ => now,
                };
                *other = Some(ThrottleState {
                    at: now,
                    n: 0,
                    last: now,
                    flood,
                });
                Some(skipped)
            }
        }
    }

    /// The events gone unlogged since the last line (then 0): for a last
    /// line when what they came from ends.
    pub fn take_unsaid(&self) -> u64 {
        lock(&self.0)
            .as_mut()
            .map_or(0, |s| std::mem::take(&mut s.n))
    }
}

/// `" (and N more like it in the last second)"`, or nothing.
pub fn more_like_it(n: u64) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(" (and {n} more like it since the last such line)")
    }
}

impl Hub {
    /// The name a stream from `ip` whose hello says `name` is kept under,
    /// and, while the stream lives, its hold on that name.
    ///
    /// Two hosts may announce one name by mistake: the default is the host
    /// name, the same on Pis cloned from one SD card. Were they one stream,
    /// each connection would take over the other's (closing it, giving up
    /// what it held), and the two cameras' frames would share one
    /// directory, stats and live view. So a name belongs to the host that
    /// used it first: its streams are `name`, and those of any other host
    /// `name@ip`, with one warning per name and host. The owner keeps the
    /// name while it has a stream open and for [`OWNER_HOLD`] after its
    /// last one ended (a Pi rebooting, a sender restarting); after that the
    /// next host to use it owns it. A new receiver has no owners: the first
    /// host to say its hello owns the name.
    ///
    /// Returns the name shown (stats, directory, live view), the host a
    /// stream kept apart is kept apart for (`None` for the owner's), and
    /// the hold.
    pub fn name_for(
        self: &Arc<Self>,
        name: &str,
        ip: IpAddr,
    ) -> (String, Option<IpAddr>, NameHold) {
        self.name_for_at(name, ip, Instant::now())
    }

    /// [`Hub::name_for`] as at `now` (tests look past [`OWNER_HOLD`]).
    fn name_for_at(
        self: &Arc<Self>,
        name: &str,
        ip: IpAddr,
        now: Instant,
    ) -> (String, Option<IpAddr>, NameHold) {
        let ip = ip.to_canonical();
        // A name of the form this receiver gives streams kept apart
        // (`cam@10.0.0.2`), or streams without a hello (their address,
        // `10.0.0.2:41234`), from another host than that address would
        // land in that stream's directory, stats and live view (and close
        // its connection, taken for the same sender's older one): it is
        // kept apart from that host's in turn.
        let claims = name
            .rsplit_once('@')
            .and_then(|(_, a)| a.parse::<IpAddr>().ok())
            .or_else(|| name.parse::<SocketAddr>().ok().map(|a| a.ip()))
            .map(|a| a.to_canonical());
        if claims.is_some_and(|c| c != ip) {
            let apart = with_host(name, ip);
            if self.say_shared(name, ip) {
                log::warn!(
                    "a sender on {ip} announces the name {name:?}, the form of a name this \
                     receiver gives another host's streams: its frames are kept apart as \
                     {apart:?}"
                );
            }
            return (apart, Some(ip), NameHold(None));
        }
        let mut owners = lock(&self.owners);
        let lapsed =
            |o: &Owner| o.streams == 0 && now.saturating_duration_since(o.since) >= OWNER_HOLD;
        let other = match owners.get_mut(name) {
            Some(o) if o.ip == ip || lapsed(o) => {
                if o.ip != ip {
                    *o = Owner {
                        ip,
                        streams: 0,
                        since: now,
                    };
                }
                o.streams += 1;
                None
            }
            Some(o) => Some(o.ip),
            None => {
                // A host with many names (a burst of new ones) gives up its
                // own oldest unused one, and cannot take another host's.
                let (mut mine, mut oldest_mine) = (0, None::<(Instant, &String)>);
                for (k, o) in owners.iter().filter(|(_, o)| o.ip == ip) {
                    mine += 1;
                    if o.streams == 0 && oldest_mine.is_none_or(|(t, _)| o.since < t) {
                        oldest_mine = Some((o.since, k));
                    }
                }
                let drop_mine = (mine >= NAMES_PER_HOST)
                    .then(|| oldest_mine.map(|(_, k)| k.clone()))
                    .flatten();
                if let Some(k) = drop_mine {
                    owners.remove(&k);
                }
                if owners.len() >= crate::acks::RECORDS {
                    owners.retain(|_, o| !lapsed(o));
                }
                // Still full (many hosts): the name left longest ago.
                if owners.len() >= crate::acks::RECORDS {
                    let oldest = owners
                        .iter()
                        .filter(|(_, o)| o.streams == 0)
                        .min_by_key(|(_, o)| o.since)
                        .map(|(k, _)| k.clone());
                    if let Some(k) = oldest {
                        owners.remove(&k);
                    }
                }
                owners.insert(
                    name.to_owned(),
                    Owner {
                        ip,
                        streams: 1,
                        since: now,
                    },
                );
                None
            }
        };
        drop(owners);
        let Some(other) = other else {
            let hold = NameHold(Some((self.clone(), name.to_owned(), ip)));
            return (name.to_owned(), None, hold);
        };
        let apart = with_host(name, ip);
        if self.say_shared(name, ip) {
            log::warn!(
                "senders on two hosts share the name {name:?} ({other} and {ip}): frames from \
                 {ip} are kept apart as {apart:?} (give each its own --name; the default is \
                 the host name, the same on Pis cloned from one SD card)"
            );
        }
        (apart, Some(ip), NameHold(None))
    }

    /// Whether the warning about `name` announced from `ip` is still to be
    /// said (once per name and host; remembered for so many pairs at most).
    fn say_shared(&self, name: &str, ip: IpAddr) -> bool {
        let mut said = lock(&self.shared_names);
        if said.len() >= crate::acks::RECORDS {
            said.clear();
        }
        said.insert((name.to_owned(), ip))
    }

    /// A hub; `done` receives one message when the receiver should stop.
    pub fn new(
        limits: Limits,
        timeout: Duration,
        sinks: Sinks,
        count: Option<u64>,
        max_conns: usize,
        done: mpsc::Sender<String>,
    ) -> Arc<Self> {
        Arc::new(Hub {
            limits,
            timeout,
            sinks,
            stats: StatsRegistry::new(),
            observers: Mutex::new(Vec::new()),
            count,
            max_conns: max_conns.max(1),
            written: AtomicU64::new(0),
            conns: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            live: Mutex::new(HashMap::new()),
            open: Mutex::new(HashMap::new()),
            epoch: Instant::now(),
            refusals: Throttle::default(),
            handshakes: Throttle::default(),
            first_frames: KeyedThrottle::default(),
            takeovers: Throttle::default(),
            udp_lines: Throttle::default(),
            takeover_counts: Mutex::new(HashMap::new()),
            owners: Mutex::default(),
            shared_names: Mutex::default(),
            shared_busy_since: AtomicU64::new(0),
            turns: Turns::default(),
            handled: Mutex::default(),
            done: Mutex::new(Some(done)),
            stopping: AtomicBool::new(false),
            in_frame: AtomicUsize::new(0),
            memory: crate::memory::Budget::new(u64::MAX),
            memory_freeing: Mutex::default(),
            stats_json_log: Throttle::default(),
        })
    }

    /// Subscribes `o` to every frame from now on (the hook for live views
    /// and exporters; nothing in this binary subscribes yet).
    #[allow(dead_code)]
    pub fn observe(&self, o: Arc<dyn FrameObserver>) {
        lock(&self.observers).push(o);
    }

    /// Asks the receiver to stop (first call wins). Frames that come after
    /// it are not handled (nor acknowledged: a `--no-drop` sender sends
    /// them again to the next receiver).
    pub fn stop(&self, why: String) {
        self.stopping.store(true, SeqCst);
        crate::exec::stopping();
        if let Some(tx) = lock(&self.done).take() {
            let _ = tx.send(why);
        }
    }

    /// Counts the caller as handling frames until the guard is dropped, so
    /// that [`Hub::settle`] waits for it: the UDP loop, whose frames in
    /// reassembly are counted when it sees the stop.
    pub fn hold(&self) -> Leave<'_> {
        self.in_frame.fetch_add(1, SeqCst);
        Leave(&self.in_frame)
    }

    /// Whether [`Hub::stop`] was called: no frame is handled from then on.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(SeqCst)
    }

    /// After [`Hub::stop`]: waits (at most `limit`) until no frame is being
    /// handled, so that the final numbers, the stats file and the outputs
    /// agree. False when frames were still being written at `limit`.
    pub fn settle(&self, limit: Duration) -> bool {
        let t = Instant::now();
        while self.in_frame.load(SeqCst) > 0 {
            if t.elapsed() >= limit {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }

    /// Flushes the shared output (at exit); fails when its stream sinks'
    /// reader is gone ([`crate::output::Output::is_dead`]).
    pub fn finish(&self) -> Result<()> {
        if let Some(o) = &self.sinks.shared {
            lock(o).finish()?;
        }
        Ok(())
    }
}

/// Counts a frame out of [`Hub::in_frame`] however its handling ends.
pub struct Leave<'a>(&'a AtomicUsize);

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

/// One sender's stream (a TCP connection or a UDP stream): its outputs, its
/// stats, the per-frame data path.
pub struct StreamCtx {
    hub: Arc<Hub>,
    /// The TCP connection carrying the stream: a frame waiting for the
    /// shared output is given up once a newer connection replaced it.
    conn: Option<Arc<ConnState>>,
    /// The last frame's sequence number on this stream (duplicates).
    last_seq: Option<u64>,
    /// Damaged frames, and frames that could not be written, for a log
    /// line a second at most each (one lost delta frame makes every frame
    /// up to the next key frame undecodable).
    corrupt_log: Throttle,
    write_log: Throttle,
    /// UDP frames decoded and not written, the outputs behind (`frame_or_decode`).
    behind_log: Throttle,
    /// Delta frames since the last frame decoded that lacked their
    /// reference (said when a key frame ends the run).
    without_reference: u64,
    name: String,
    stats: SenderHandle,
    own: Option<Output>,
    decoded: Vec<u8>,
    /// `decoded` holds the frame last given to `feed`.
    decoded_shown: bool,
    decoder: bitmask_codec::Decoder,
    feed: Option<crate::http::Feed>,
    /// For a sender that asked for acknowledgements: where they go, and its
    /// place in the record of handled frames. A frame below the record (a
    /// resumed connection sends again what was not confirmed) is decoded, as
    /// later delta frames may refer to it, but not written or counted again.
    acks: Option<(crate::acks::AckWriter, crate::acks::Lineage)>,
    /// Frames skipped so.
    skipped: u64,
    /// For a resumed connection this receiver holds no record of (it was
    /// restarted): how many of its frames (the most a sender sends again,
    /// the `--no-drop` window) are looked for in the output directory
    /// first (`output::written_before`); one found was written before the
    /// restart and is skipped like one in the record.
    on_disk: u32,
    /// Over UDP.
    udp: bool,
    /// Bytes reserved of the receiver's `--max-memory`: [`Self::admit`]'s
    /// for the stream's frames, and `reassembly` on top.
    memory: u64,
    /// Of `memory`, the bytes of UDP frames in reassembly
    /// ([`Self::admit_datagrams`]).
    pub(crate) reassembly: u64,
    /// Frames refused for memory, for a log line a second at most (UDP).
    memory_log: Throttle,
}

impl StreamCtx {
    /// Opens sender `name`'s stream from `peer` (its `--per-sender`
    /// directory is made when its first frame is written).
    pub fn open(hub: Arc<Hub>, name: &str, peer: &str, transport: &'static str) -> Result<Self> {
        let stats = hub.stats.stream_opened(name, peer, transport);
        for o in lock(&hub.observers).iter() {
            o.connected(name, peer);
        }
        Ok(StreamCtx {
            feed: crate::http::feed(name),
            hub,
            conn: None,
            last_seq: None,
            corrupt_log: Throttle::default(),
            write_log: Throttle::default(),
            behind_log: Throttle::default(),
            without_reference: 0,
            name: name.to_string(),
            stats,
            own: None,
            decoded: Vec::new(),
            decoded_shown: false,
            decoder: bitmask_codec::Decoder::new(),
            acks: None,
            skipped: 0,
            on_disk: 0,
            udp: transport == "udp",
            memory: 0,
            reassembly: 0,
            memory_log: Throttle::default(),
        })
    }

    /// Reserves what a stream of frames of `h`'s size may hold from the
    /// receiver's `--max-memory` ([`crate::memory`]), before its first
    /// such frame is decoded: `Ok(true)` once it is reserved.
    ///
    /// A TCP stream that holds nothing yet waits for other streams to give
    /// memory back (said once; like a slow receiver to its sender), closing
    /// one that holds memory and has been silent for `--timeout` between
    /// frames ([`make_memory`]), and gives the frame up (`Ok(false)`) at a
    /// stop or when its connection is replaced or evicted. Refused for good (frames too large for all of
    /// `--max-memory`), or growing from a smaller size, the error closes
    /// the connection (which gives its memory back; its sender sends the
    /// frame again on its next connection if it asked for
    /// acknowledgements). Over UDP a refused frame is counted incomplete
    /// and the refusal logged, a line a second at most, and the error only
    /// tells the caller.
    pub fn admit(&mut self, h: &Header) -> Result<bool> {
        if self.holds_room_for(h) {
            return Ok(true); // (every frame of a stream after its first)
        }
        let need = crate::memory::stream_bytes(h.width, h.height) + self.reassembly;
        let conn = self.conn.clone();
        let c = conn.as_deref();
        let mut waited = false;
        let mut looked = Instant::now();
        loop {
            let why = match self.hub.memory.reserve(&mut self.memory, need) {
                Ok(()) => {
                    if let Some(c) = c {
                        c.held.store(self.memory, Relaxed);
                    }
                    if waited {
                        log::info!(
                            "{}: frame {} taken: memory was given back",
                            self.name,
                            h.sequence
                        );
                    }
                    return Ok(true);
                }
                Err(why) => why,
            };
            let refused = anyhow::anyhow!(
                "{}: frame {} refused: a stream of {}x{} frames {why}; give a larger \
                 --max-memory, or a smaller --max-size to refuse such frames at once",
                self.name,
                h.sequence,
                h.width,
                h.height
            );
            if self.udp {
                self.incomplete(1);
                if let Some(n) = self.memory_log.hit() {
                    log::warn!("{refused:#}{}", more_like_it(n));
                }
                return Err(refused);
            }
            if why.need > why.limit || self.memory > 0 {
                return Err(refused);
            }
            // (not marked busy: a waiter holds no memory, and may yield its
            // slot to a new connection like an idle one)
            if self.hub.stopping.load(SeqCst)
                || c.is_some_and(|c| c.replaced.load(Relaxed) || c.evicted.load(Relaxed))
            {
                return Ok(false);
            }
            if !waited {
                log::warn!(
                    "{}: frame {} waits for memory: a stream of {}x{} frames {why}",
                    self.name,
                    h.sequence,
                    h.width,
                    h.height
                );
                waited = true;
            }
            // A stream that holds memory and has gone silent for --timeout
            // makes room (looked for twice a second at most).
            if looked.elapsed() >= Duration::from_millis(500) {
                looked = Instant::now();
                if let Some(closed) = make_memory(&self.hub, need) {
                    log::info!(
                        "{}: frame {} waits for memory: {closed}, to make room",
                        self.name,
                        h.sequence
                    );
                }
            }
            std::thread::sleep(WRITER_POLL);
        }
    }

    /// Whether the stream holds the memory frames of `h`'s size need, so
    /// that [`Self::admit`] returns at once.
    fn holds_room_for(&self, h: &Header) -> bool {
        crate::memory::stream_bytes(h.width, h.height) + self.reassembly <= self.memory
    }

    /// Over UDP, before a buffer is made to reassemble a frame of
    /// `frame_len` bytes: reserves them from `--max-memory` for as long as
    /// the frame is in reassembly ([`Self::reassembled`] gives them back),
    /// so that datagrams claiming large frames cannot make the receiver
    /// allocate outside it, nor hold more of it than their frames.
    /// `false`: refused, counted incomplete and logged as `admit` does.
    pub fn admit_datagrams(&mut self, sequence: u64, frame_len: u32) -> bool {
        let need = self.memory + frame_len as u64;
        match self.hub.memory.reserve(&mut self.memory, need) {
            Ok(()) => {
                self.reassembly += frame_len as u64;
                true
            }
            Err(why) => {
                self.incomplete(1);
                if let Some(n) = self.memory_log.hit() {
                    log::warn!(
                        "{}: frame {sequence} refused: a stream of {frame_len}-byte frames \
                         {why}; give a larger --max-memory, or a smaller --max-size to refuse \
                         such frames at once{}",
                        self.name,
                        more_like_it(n)
                    );
                }
                false
            }
        }
    }

    /// A UDP frame of `frame_len` bytes left reassembly (handled, or given
    /// up): its reservation ([`Self::admit_datagrams`]) is given back.
    pub fn reassembled(&mut self, frame_len: u32) {
        let n = (frame_len as u64).min(self.reassembly);
        self.reassembly -= n;
        let to = self.memory - n;
        self.hub.memory.shrink(&mut self.memory, to);
    }

    /// The sender's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Ties the stream to its TCP connection (see [`StreamCtx::frame`]).
    fn on_connection(mut self, conn: Arc<ConnState>) -> Self {
        self.conn = Some(conn);
        self
    }

    /// Counts a damaged frame whose sequence number is known (a UDP
    /// frame's datagrams say it): corrupt, and not also lost in the gap
    /// before the next frame.
    pub fn corrupt_numbered(&mut self, sequence: u64, why: &dyn std::fmt::Display) {
        self.corrupt(why);
        let restarted = stats::lock(&self.stats).sequence_seen(sequence);
        say_new_numbering(&self.hub, &self.name, self.udp, restarted, sequence);
    }

    /// Counts a damaged frame.
    pub fn corrupt(&mut self, why: &dyn std::fmt::Display) {
        // (a UDP stream's with all UDP streams': see Hub::udp_lines)
        let log = if self.udp {
            &self.hub.udp_lines
        } else {
            &self.corrupt_log
        };
        if let Some(n) = log.hit() {
            log::warn!("{}: skipping frame: {why}{}", self.name, more_like_it(n));
        }
        stats::lock(&self.stats).corrupt();
        if let Some(f) = &self.feed {
            f.corrupt();
        }
    }

    /// The per-frame data path: decode, write, count, notify.
    ///
    /// A frame that cannot be written (a full or read-only disk) is logged
    /// (a line a second at most) and counted as unwritten (the receiver then
    /// exits non-zero); the stream goes on. A frame waiting for the shared
    /// output when a newer connection of its sender took over is given up
    /// (written late it would come after newer frames). An error ends the
    /// stream: the shared stream output's reader is gone, and the receiver
    /// stops.
    ///
    /// `Ok(true)` when the frame was handled (written, skipped as one handled
    /// before, or counted as damaged or unwritten), `Ok(false)` when it was
    /// given up: only handled frames are acknowledged.
    pub fn frame(&mut self, h: &Header, payload: &[u8]) -> Result<bool> {
        self.frame_or_decode(h, payload, true)
    }

    /// [`StreamCtx::frame`], or with `write` false (a UDP frame that waited
    /// too long in the socket: the outputs are behind the stream) decoded
    /// only, so that the frames after it have their reference, and counted
    /// `behind` instead of written.
    pub fn frame_or_decode(&mut self, h: &Header, payload: &[u8], write: bool) -> Result<bool> {
        // (counted in before the stop is checked: Hub::settle then sees
        // every frame that got past the check)
        let hub = self.hub.clone();
        hub.in_frame.fetch_add(1, SeqCst);
        let _out = Leave(&hub.in_frame);
        if hub.stopping.load(SeqCst) {
            return Ok(false);
        }
        // One connection of a sender handles a frame at a time: an older
        // connection still writing, and the record of what it wrote, come
        // before the check of a newer one's frame.
        let writer = self.acks.as_ref().map(|(_, l)| l.writer.clone());
        let _turn = match writer.as_deref() {
            None => None,
            Some(w) => match self.writer_turn(w) {
                Some(g) => Some(g),
                None => {
                    log::debug!(
                        "{}: frame {} given up: a newer connection took over",
                        self.name,
                        h.sequence
                    );
                    return Ok(false);
                }
            },
        };
        // The lineage's on-disk checks as its record holds them now, under
        // the writer lock: an older connection of the sender may have
        // ended them since this one opened. (Once none are left none come
        // back, a lineage's record never gives more: no lock per frame.)
        if let Some((_, l)) = self.acks.as_ref().filter(|_| self.on_disk > 0) {
            self.on_disk = lock(&self.hub.handled).on_disk(&l.key, l.id);
        }
        let checks = self.on_disk;
        let handled = self.handle(h, payload, write);
        if self.on_disk != checks {
            // what is left of the lineage's on-disk checks, for its next
            // connection
            if let Some((_, l)) = &self.acks {
                lock(&self.hub.handled).set_on_disk(&l.key, l.id, self.on_disk);
            }
        }
        let handled = handled?;
        if handled {
            self.acknowledge(h.sequence);
        }
        Ok(handled)
    }

    /// The error that closes a connection at `what`, not acknowledged, so
    /// that its sender, which asked for acknowledgements, sends it again on
    /// its next connection (a `--no-drop` one: a live one goes on from a
    /// key frame); the acknowledgements of the frames before it go out
    /// first. Not counted here: sent again it is received, else the gap
    /// before the next frame counts it lost.
    fn send_again(&mut self, what: &dyn std::fmt::Display) -> anyhow::Error {
        if let Some((a, _)) = self.acks.as_mut() {
            a.finish(Duration::from_secs(1));
        }
        anyhow::anyhow!(
            "{}: {what}: not acknowledged; connection closed, so that its sender sends it \
             again",
            self.name
        )
    }

    /// Frame `h`, sent again after a reconnect, was handled before (`how`
    /// says where that is known from): skipped, counted as sent again.
    fn skip_resent(&mut self, h: &Header, how: &str) -> bool {
        self.skipped += 1;
        stats::lock(&self.stats).resent();
        log::debug!(
            "{}: frame {} sent again after a reconnect: {how}, skipped",
            self.name,
            h.sequence
        );
        true
    }

    /// The sender name's writer lock; `None` (the frame is given up) once
    /// this connection was replaced: its sender connected again and sends
    /// again what this one did not confirm. While it waits (it then holds a
    /// frame, so it is not idle), being evicted gives the frame up too.
    fn writer_turn<'w>(&self, w: &'w Mutex<()>) -> Option<MutexGuard<'w, ()>> {
        let _busy = AtOutput::new(self.conn.as_deref());
        let c = self.conn.as_deref();
        let replaced = || c.is_some_and(|c| c.replaced.load(Relaxed));
        loop {
            let g = match w.try_lock() {
                Ok(g) => g,
                Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => {
                    if replaced()
                        || c.is_some_and(|c| c.evicted.load(Relaxed))
                        || self.hub.stopping.load(SeqCst)
                    {
                        return None;
                    }
                    std::thread::sleep(WRITER_POLL);
                    continue;
                }
            };
            return (!replaced()).then_some(g);
        }
    }

    fn handle(&mut self, h: &Header, payload: &[u8], write: bool) -> Result<bool> {
        if self.last_seq == Some(h.sequence) {
            // A sender never sends a frame twice on one connection.
            self.corrupt(&format_args!(
                "frame {} again on the same connection (a duplicate)",
                h.sequence
            ));
            return Ok(true);
        }
        self.last_seq = Some(h.sequence);
        self.decoded_shown = false; // (about to be overwritten)
        let mask: &[u8] = match decode(&mut self.decoder, h, payload, &mut self.decoded) {
            Ok(m) => m,
            Err(why) => {
                // (one sent again that was handled before is that, whatever
                // its decoding says: its number must not rewind the count)
                if let Some((_, l)) = &self.acks {
                    if h.sequence < lock(&self.hub.handled).next(&l.key, l.id) {
                        return Ok(self.skip_resent(h, "handled before"));
                    }
                }
                if why.reference && self.acks.is_some() {
                    // (a frame before it was lost: sent again from a key
                    // frame, it decodes)
                    return Err(self.send_again(&why.why));
                }
                if why.reference {
                    self.without_reference += 1;
                }
                self.corrupt(&why.why);
                // (its header passed the CRC: its number is the sender's, so
                // the frame is corrupt, not also lost in the gap before the
                // next one)
                let restarted = stats::lock(&self.stats).sequence_seen(h.sequence);
                say_new_numbering(&self.hub, &self.name, self.udp, restarted, h.sequence);
                return Ok(true);
            }
        };
        if let Some((_, l)) = &self.acks {
            if h.sequence < lock(&self.hub.handled).next(&l.key, l.id) {
                return Ok(self.skip_resent(h, "handled before"));
            }
        }
        if self.without_reference > 0 {
            log::info!(
                "{}: decoding again from frame {} on ({} delta frame(s) before it lacked their \
                 reference, counted corrupt)",
                self.name,
                h.sequence,
                std::mem::take(&mut self.without_reference)
            );
        }
        if self.skipped > 0 {
            log::info!(
                "{}: resumed at frame {} ({} frame(s) sent again were handled before and skipped)",
                self.name,
                h.sequence,
                self.skipped
            );
            self.skipped = 0;
        }
        if !write {
            let restarted = stats::lock(&self.stats).behind(h);
            say_new_numbering(&self.hub, &self.name, self.udp, restarted, h.sequence);
            if let Some(n) = self.behind_log.hit() {
                log::warn!(
                    "{}: frame {} passed over (decoded, not written, counted as behind): its \
                     datagrams waited over {} ms in the socket, the outputs are slower than \
                     the stream{}",
                    self.name,
                    h.sequence,
                    crate::udp::MAX_LAG.as_millis(),
                    more_like_it(n)
                );
            }
            return Ok(true);
        }
        // Every sink is tried; the frame counts as written when one took it.
        let mut took = false;
        // (some output failed to take it)
        let mut partly = false;
        let mut given_up = false;
        let mut failed: Option<anyhow::Error> = None;
        if self.own.is_none() {
            // Created with the first frame, not at the hello: a name alone
            // leaves no directory behind.
            match open_own(&self.hub, &self.name) {
                Ok(o) => self.own = o,
                Err(e) => failed = Some(e),
            }
        }
        // (Looked in until the first frame written now, whatever the
        // reason: a frame not found, or one that cannot be vouched for (frame
        // 0), breaks the chain of files of one run that vouches for the
        // next frame's file.)
        let mut on_disk = self.on_disk > 0;
        self.on_disk = self.on_disk.saturating_sub(1);
        let mut before = false;
        if let Some(o) = &mut self.own {
            let mut r = o.write(h, mask, on_disk);
            if let (Err(_), Some((dir, ..))) = (&r, &self.hub.sinks.per_sender) {
                // The base directory deleted while running (`rm -rf DIR`):
                // made again by a new open, where its watch allows, and the
                // frame written there (a sender's own directory alone is
                // made again by its output).
                if !dir.exists() {
                    log::warn!(
                        "{}: output directory {} is gone (deleted while running?): opening it \
                         again",
                        self.name,
                        dir.display()
                    );
                    self.own = None;
                    r = open_own(&self.hub, &self.name).and_then(|o| {
                        let o = self.own.insert(o.expect("--per-sender"));
                        o.write(h, mask, on_disk)
                    });
                }
            }
            // (any result but "found" ends the check: a write that failed
            // leaves the chain broken too)
            if on_disk && !matches!(r, Ok(Written::Before)) {
                self.on_disk = 0;
            }
            match r {
                // The stream outputs (--exec, --latest) still get it: the
                // receiver may have died between the file and them (at
                // least once).
                Ok(Written::Before) if self.hub.sinks.shared.is_some() => before = true,
                Ok(Written::Before) => return Ok(self.skip_resent(h, ON_DISK_HOW)),
                Ok(Written::Now) => took = true,
                Ok(Written::Partly) => (took, partly) = (true, true),
                Err(e) => failed = Some(e),
            }
            on_disk = false;
        }
        if let Some(o) = &self.hub.sinks.shared {
            let conn = self.conn.as_deref();
            let _at_output = AtOutput::new(conn);
            let stopping = &self.hub.stopping;
            // (Once its own directory took the frame it is not given up
            // for a newer connection, which waits for this one's writer
            // lock: given up, it would be confirmed without reaching the
            // stream outputs.)
            let yields = !took && !before;
            match self.hub.turns.wait(|| {
                (yields && conn.is_some_and(|c| c.replaced.load(Relaxed))) || stopping.load(SeqCst)
            }) {
                None => given_up = true,
                Some(_turn) => {
                    let mut o = lock(o);
                    let busy = &self.hub.shared_busy_since;
                    busy.store(self.hub.epoch.elapsed().as_millis() as u64 + 1, Relaxed);
                    let r = o.write(h, mask, on_disk);
                    busy.store(0, Relaxed);
                    if on_disk && !matches!(r, Ok(Written::Before)) {
                        self.on_disk = 0;
                    }
                    match r {
                        Ok(Written::Before) => before = true,
                        Ok(Written::Now) => took = true,
                        Ok(Written::Partly) => (took, partly) = (true, true),
                        Err(e) if o.is_dead() => {
                            // No sender can be served any more: stop (and,
                            // as `finish` fails, exit with an error).
                            self.hub.stop(format!("{e:#}"));
                            return Err(e)
                                .context(format!("writing frame {} of {}", h.sequence, self.name));
                        }
                        Err(e) => {
                            failed.get_or_insert(e);
                        }
                    }
                }
            }
        }
        if given_up {
            // Its sender's newer connection took over (written now it would
            // come after newer frames: the gap counts it as lost), or the
            // stop came, maybe while a frame its own directory took (or
            // held) waited for the stream outputs: not confirmed, so that
            // it is sent again, and a receiver started again gives it to
            // them.
            log::debug!(
                "{}: frame {} given up{}: not confirmed",
                self.name,
                h.sequence,
                if took || before {
                    " before --exec/--latest took it, at the stop"
                } else {
                    ": a newer connection took over, or the stop"
                }
            );
            return Ok(false);
        }
        if before {
            return Ok(self.skip_resent(h, ON_DISK_HOW));
        }
        if let Some(e) = failed {
            let n = self.write_log.hit();
            if !took {
                stats::lock(&self.stats).unwritten(h);
                if let Some(n) = n {
                    log::warn!(
                        "{}: frame {} NOT WRITTEN (counted as unwritten): {e:#}{}",
                        self.name,
                        h.sequence,
                        more_like_it(n)
                    );
                }
                return Ok(true);
            }
            if let Some(n) = n {
                log::warn!(
                    "{}: frame {}: {e:#} (it went to the other outputs){}",
                    self.name,
                    h.sequence,
                    more_like_it(n)
                );
            }
            partly = true;
        }
        let restarted = {
            let mut s = stats::lock(&self.stats);
            if partly {
                s.partly_written();
            }
            s.frame(h, mask.len(), stats::now_us())
        };
        say_new_numbering(&self.hub, &self.name, self.udp, restarted, h.sequence);
        if let Some(f) = &mut self.feed {
            f.publish(h, mask);
            self.decoded_shown = true;
        }
        for o in lock(&self.hub.observers).iter() {
            o.frame(&self.name, h, mask, &self.stats);
        }
        let n = self.hub.written.fetch_add(1, Relaxed) + 1;
        if self.hub.count.is_some_and(|c| n >= c) {
            // acknowledged first: the receiver may exit at once
            self.acknowledge(h.sequence);
            self.hub.stop(format!("{n} frames written (--count)"));
        }
        Ok(true)
    }

    /// Acknowledges frame `sequence` and all before it, if the sender asked
    /// for acknowledgements (and this connection was not replaced).
    fn acknowledge(&mut self, sequence: u64) {
        let Some((a, l)) = self.acks.as_mut() else {
            return;
        };
        lock(&self.hub.handled).done(&l.key, l.id, sequence);
        if a.sent.is_some_and(|s| s > sequence) {
            return; // already
        }
        a.ack(sequence.saturating_add(1));
    }

    /// Counts UDP frames given up on.
    pub fn incomplete(&mut self, n: u64) {
        stats::lock(&self.stats).incomplete(n);
    }

    /// The sender ended the stream, its last frame read `last`, with frames
    /// numbered below `next` ([`stats::SenderStats::ended`]).
    pub fn ended(&mut self, last: u64, next: u64) {
        stats::lock(&self.stats).ended(last, next);
    }

    /// `n` frames reached this UDP stream before its sender's hello and
    /// were dropped; `first` is its first frame read since
    /// ([`stats::SenderStats::dropped_before_hello`]).
    pub fn dropped_before_hello(&mut self, n: u64, first: u64) {
        stats::lock(&self.stats).dropped_before_hello(n, first);
    }
}

impl Drop for StreamCtx {
    fn drop(&mut self) {
        // (a burst's count, else said only with the next such line, if any)
        let n = self.corrupt_log.take_unsaid();
        if n > 0 {
            log::warn!(
                "{}: {n} more frame(s) skipped as damaged since the last such line",
                self.name
            );
        }
        let n = self.write_log.take_unsaid();
        if n > 0 {
            log::warn!(
                "{}: {n} more frame(s) not written since the last such line",
                self.name
            );
        }
        let n = self.behind_log.take_unsaid();
        if n > 0 {
            log::warn!(
                "{}: {n} more frame(s) passed over, the outputs behind, since the last such line",
                self.name
            );
        }
        // The stream's last frame, if the view's rate limit passed it over.
        if let (Some(f), true) = (&mut self.feed, self.decoded_shown) {
            f.show_last(&self.decoded);
        }
        stats::lock(&self.stats).disconnected();
        for o in lock(&self.hub.observers).iter() {
            o.disconnected(&self.name);
        }
        if let Some(o) = &mut self.own {
            let _ = o.finish();
        }
        self.hub.memory.release(&mut self.memory);
        if let Some(c) = self.conn.as_deref() {
            // (after the release: make_memory counts it as giving back
            // until then)
            c.held.store(0, Relaxed);
        }
    }
}

/// Sender `name`'s own `--per-sender` directory, opened where its mount
/// watch allows (`None` without `--per-sender`).
fn open_own(hub: &Hub, name: &str) -> Result<Option<Output>> {
    let Some((dir, format, watch, keep)) = &hub.sinks.per_sender else {
        return Ok(None);
    };
    let d = dir.join(name);
    let mut o = watch
        .check()
        .and_then(|()| Output::open(Some(&d), None, None, *format))
        .map_err(|e| e.context(format!("output directory {}", d.display())))?;
    o.watch(watch);
    if let Some(k) = keep {
        o.keep(k.clone());
    }
    Ok(Some(o))
}

/// Why [`decode`] failed.
struct Undecodable {
    why: String,
    /// For want of the right reference frame (one before it was lost):
    /// sent again after a key frame, it decodes.
    reference: bool,
}

/// Turns a payload into the packed mask: raw payloads as they are, anything
/// else through the stream's codec decoder (which holds the reference frame
/// for delta frames and refuses one whose reference it does not hold).
fn decode<'a>(
    decoder: &mut bitmask_codec::Decoder,
    h: &Header,
    payload: &[u8],
    out: &'a mut Vec<u8>,
) -> Result<&'a [u8], Undecodable> {
    // Raw frames go through the decoder too: it keeps them as references.
    let len = usize::try_from(h.raw_len()).map_err(|_| Undecodable {
        why: format!(
            "frame {}: {}x{} is too large for this machine",
            h.sequence, h.width, h.height
        ),
        reference: false,
    })?;
    out.resize(len, 0);
    let frame = bitmask_codec::FrameInfo {
        codec: h.codec,
        flags: h.flags,
        width: h.width,
        height: h.height,
        sequence: h.sequence,
    };
    decoder
        .decode(&frame, payload, out)
        .map_err(|e| Undecodable {
            why: format!("frame {}: {e}", h.sequence),
            reference: matches!(
                e,
                bitmask_codec::CodecError::MissingReference { .. }
                    | bitmask_codec::CodecError::ReferenceDimensions { .. }
            ),
        })?;
    Ok(out)
}

/// A socket reader that also enforces a deadline per frame: once a frame's
/// first byte is in, the rest must follow within `frame_limit` (against a
/// slow-loris trickle, which a plain read timeout never catches).
struct DeadlineReader {
    stream: TcpStream,
    frame_limit: Duration,
    /// When the current frame's first byte came (shared with the
    /// connection's loop, which resets it between frames while
    /// `FrameReader` holds the reader).
    started: std::rc::Rc<std::cell::Cell<Option<Instant>>>,
    /// Where the time of the last byte is kept for the accept loop.
    state: Arc<ConnState>,
    epoch: Instant,
}

impl Read for DeadlineReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(t) = self.started.get() {
            if t.elapsed() > self.frame_limit {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "frame not complete {:.1} s after its first byte (slow peer)",
                        self.frame_limit.as_secs_f64()
                    ),
                ));
            }
        }
        let n = self.stream.read(buf)?;
        if n > 0 {
            let ms = self.epoch.elapsed().as_millis() as u64;
            self.state.last_byte_ms.store(ms, Relaxed);
            if self.started.get().is_none() {
                self.started.set(Some(Instant::now()));
            }
        }
        Ok(n)
    }
}

/// Accepts connections forever, a thread each (at most `max_conns` at once).
pub fn accept_loop(hub: Arc<Hub>, listener: TcpListener) {
    // (out of descriptors, accept fails ten times a second)
    let failed = Throttle::default();
    loop {
        let (stream, peer) = match listener.accept() {
            Ok(x) => x,
            Err(e) => {
                if let Some(n) = failed.hit() {
                    log::warn!("accept failed: {e}{}", more_like_it(n));
                }
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if hub.conns.load(Relaxed) >= hub.max_conns {
            match make_room(&hub) {
                Some(why) => {
                    if let Some(n) = hub.refusals.hit() {
                        log::warn!(
                            "--max-senders {} reached: {why}, for a new one from {peer}{}",
                            hub.max_conns,
                            more_like_it(n)
                        );
                    }
                }
                None => {
                    drop(stream);
                    if let Some(n) = hub.refusals.hit() {
                        log::warn!(
                            "refusing connection from {peer}: already {} open (--max-senders), \
                             none idle{}",
                            hub.max_conns,
                            more_like_it(n)
                        );
                    }
                    continue;
                }
            }
        }
        let id = hub.next_id.fetch_add(1, Relaxed);
        let state = Arc::new(ConnState {
            identified: AtomicBool::new(false),
            framed: AtomicBool::new(false),
            evicted: AtomicBool::new(false),
            replaced: AtomicBool::new(false),
            at_output: AtomicU32::new(0),
            held: AtomicU64::new(0),
            memory_evicted: AtomicBool::new(false),
            last_byte_ms: AtomicU64::new(0),
        });
        match stream.try_clone() {
            Ok(c) => {
                let conn = OpenConn {
                    stream: c,
                    peer,
                    accepted: Instant::now(),
                    state: state.clone(),
                };
                lock(&hub.open).insert(id, conn);
            }
            Err(e) => log::debug!("connection from {peer}: cannot keep a handle: {e}"),
        }
        let slot = Slot::take(&hub, id);
        let spawned = std::thread::Builder::new()
            .name(format!("conn {peer}"))
            .spawn(move || {
                // `slot` is given back when this thread ends, even by a panic.
                if let Err(e) = serve_tcp(&slot.0, stream, peer, id, state) {
                    log::warn!("connection from {peer} closed: {e:#}");
                }
            });
        if let Err(e) = spawned {
            log::warn!("cannot start a thread for {peer}: {e}");
        }
    }
}

/// How long a sender name stays its host's after the host's last stream
/// of it ended ([`Hub::name_for`]): well past a Pi's reboot.
const OWNER_HOLD: Duration = Duration::from_secs(300);

/// Sender names one host may own at once ([`Hub::name_for`]); past this
/// its own oldest unused one is forgotten.
const NAMES_PER_HOST: usize = 32;

/// The host a sender name belongs to ([`Hub::name_for`]).
struct Owner {
    ip: IpAddr,
    /// Its streams open under the name.
    streams: u32,
    /// When it got the name, or its last stream of it ended.
    since: Instant,
}

/// A stream's hold on its host's sender name ([`Hub::name_for`]), given
/// back when dropped; empty for a stream kept apart as `name@ip`.
pub struct NameHold(Option<(Arc<Hub>, String, IpAddr)>);

impl Drop for NameHold {
    fn drop(&mut self) {
        if let Some((hub, name, ip)) = self.0.take() {
            if let Some(o) = lock(&hub.owners).get_mut(&name).filter(|o| o.ip == ip) {
                o.streams = o.streams.saturating_sub(1);
                if o.streams == 0 {
                    o.since = Instant::now();
                }
            }
        }
    }
}

/// `name@ip`, the name shortened (at a character boundary) to keep it
/// within the protocol's 255 bytes.
fn with_host(name: &str, ip: IpAddr) -> String {
    bitmask_wire::name_with_suffix(name, &format!("@{ip}"))
}

/// An open TCP connection as the accept loop sees it.
struct OpenConn {
    stream: TcpStream,
    peer: SocketAddr,
    accepted: Instant,
    state: Arc<ConnState>,
}

/// What a connection's thread tells the accept loop.
pub struct ConnState {
    /// Its hello (or first frame header) has been read.
    identified: AtomicBool,
    /// It has delivered a whole frame.
    framed: AtomicBool,
    /// Its slot was given to a newer connection.
    evicted: AtomicBool,
    /// Its sender connected again (a takeover): what it still has to
    /// deliver is older than the new connection's frames, and given up.
    replaced: AtomicBool,
    /// Its thread holds a whole frame (handling it, waiting for the shared
    /// output's turn, or writing): not idle, whatever its socket says. A
    /// count: the guards nest ([`AtOutput`]).
    at_output: AtomicU32,
    /// Bytes of `--max-memory` its stream holds ([`make_memory`]).
    held: AtomicU64,
    /// It was closed to make room for a stream waiting for memory.
    memory_evicted: AtomicBool,
    /// When its last byte arrived, ms after the hub's epoch.
    last_byte_ms: AtomicU64,
}

/// Marks a connection as holding a frame for the shared output (not idle,
/// for [`make_room`]) while it lives.
struct AtOutput<'a>(Option<&'a ConnState>);

impl<'a> AtOutput<'a> {
    fn new(conn: Option<&'a ConnState>) -> Self {
        if let Some(c) = conn {
            c.at_output.fetch_add(1, Relaxed);
        }
        AtOutput(conn)
    }
}

impl Drop for AtOutput<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.0 {
            c.at_output.fetch_sub(1, Relaxed);
        }
    }
}

/// All slots taken: closes the connection that is least a sender, and says
/// which, or `None` when every one is busy. First one that has not said who
/// it is (oldest first; not one whose first bytes are already waiting in its
/// socket, only its thread has not read them yet), else the sender silent
/// longest between frames, once it has been silent for `--timeout`.
fn make_room(hub: &Hub) -> Option<String> {
    let mut open = lock(&hub.open);
    let unnamed = open
        .iter()
        .filter(|(_, c)| !c.state.identified.load(Relaxed) && !bytes_waiting(c))
        .min_by_key(|(_, c)| c.accepted)
        .map(|(id, c)| {
            (
                *id,
                format!(
                    "closed the connection from {}, which had not said who it is",
                    c.peer
                ),
            )
        });
    let (id, why) = unnamed.or_else(|| idle_longest(hub, &open, |_| true))?;
    evict(&mut open, id);
    Some(why)
}

/// A stream waits for `need` bytes of memory ([`StreamCtx::admit`]):
/// closes the connection holding a share of `--max-memory` that has been
/// silent longest between frames, once it has been silent for `--timeout`
/// or more (a sender that paused, or a peer that sent one large frame and
/// nothing since, must not hold out a sender that streams), and says
/// which; `None` when none is. Only one whose share, with what is free and
/// what connections closed so are still giving back, makes `need` fit: no
/// connection is closed for nothing, nor while one closed earlier is still
/// giving its share back.
fn make_memory(hub: &Hub, need: u64) -> Option<String> {
    let mut open = lock(&hub.open);
    let mut freeing = lock(&hub.memory_freeing);
    freeing.retain(|c| c.held.load(Relaxed) > 0);
    if !freeing.is_empty() || hub.memory.free() >= need {
        return None;
    }
    let short = need - hub.memory.free();
    let (id, why) = idle_longest(hub, &open, |c| c.state.held.load(Relaxed) >= short)?;
    if let Some(c) = open.get(&id) {
        c.state.memory_evicted.store(true, Relaxed);
        freeing.push(c.state.clone());
    }
    evict(&mut open, id);
    Some(why)
}

/// Whether bytes wait in `c`'s socket that its thread has yet to read.
fn bytes_waiting(c: &OpenConn) -> bool {
    let mut b = [std::mem::MaybeUninit::<u8>::uninit()];
    socket2::SockRef::from(&c.stream)
        .recv_with_flags(&mut b, libc::MSG_PEEK | libc::MSG_DONTWAIT)
        .is_ok_and(|n| n > 0)
}

/// Of the connections `also` picks, the one silent longest between frames
/// (not mid-frame: its bytes come within --timeout of each other; nothing
/// waiting that its thread has yet to read), once silent for `--timeout`:
/// its id and what closing it is.
fn idle_longest(
    hub: &Hub,
    open: &HashMap<u64, OpenConn>,
    also: impl Fn(&OpenConn) -> bool,
) -> Option<(u64, String)> {
    let now_ms = hub.epoch.elapsed().as_millis() as u64;
    open.iter()
        .filter_map(|(id, c)| {
            let silent = now_ms.saturating_sub(c.state.last_byte_ms.load(Relaxed));
            (c.state.framed.load(Relaxed)
                && c.state.at_output.load(Relaxed) == 0
                && silent >= hub.timeout.as_millis() as u64
                && also(c)
                && !bytes_waiting(c))
            .then_some((*id, silent, c.peer))
        })
        .max_by_key(|&(_, silent, _)| silent)
        .map(|(id, silent, peer)| {
            let why = format!(
                "closed the connection from {peer}, silent for {:.1} s between frames",
                silent as f64 / 1000.0
            );
            (id, why)
        })
}

/// Closes connection `id` (its thread sees `evicted` and ends).
fn evict(open: &mut HashMap<u64, OpenConn>, id: u64) {
    if let Some(c) = open.remove(&id) {
        c.state.evicted.store(true, Relaxed);
        let _ = c.stream.shutdown(Shutdown::Both);
    }
}

/// One of the `--max-senders` connection slots, held while connection `.1`
/// is open (and given back, with its entry in the hub, however it ends).
struct Slot(Arc<Hub>, u64);

impl Slot {
    fn take(hub: &Arc<Hub>, id: u64) -> Self {
        hub.conns.fetch_add(1, Relaxed);
        Slot(hub.clone(), id)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        lock(&self.0.open).remove(&self.1);
        self.0.conns.fetch_sub(1, Relaxed);
    }
}

/// Reads one TCP connection to its end; `id` is its entry in the hub's
/// open connections, `state` what it tells the accept loop.
pub fn serve_tcp(
    hub: &Arc<Hub>,
    stream: TcpStream,
    peer: SocketAddr,
    id: u64,
    state: Arc<ConnState>,
) -> Result<()> {
    log::debug!("connection from {peer}");
    stream.set_read_timeout(Some(hub.timeout))?;
    // Acknowledgements go out at once: with Nagle's algorithm a 16-byte
    // ack waits for the sender's TCP to acknowledge the one before, which
    // its delayed ACKs can hold up to 40 ms (the sender's window of frames
    // in flight waits on them).
    if let Err(e) = stream.set_nodelay(true) {
        log::debug!("connection from {peer}: no TCP_NODELAY: {e}");
    }
    // A sender between frames may be silent for long (a time-lapse): it is
    // kept while TCP keepalive finds its host (a vanished one is noticed in
    // about 16 s: probes after 10 s idle, every 2 s, 3 unanswered).
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(10))
        .with_interval(Duration::from_secs(2))
        .with_retries(3);
    if let Err(e) = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive) {
        log::debug!("connection from {peer}: no TCP keepalive: {e}");
    }
    // For acknowledgements, if the hello asks for them.
    let ack_sock = stream.try_clone();
    let started = std::rc::Rc::new(std::cell::Cell::new(None));
    let mut reader = FrameReader::new(
        DeadlineReader {
            stream,
            frame_limit: hub.timeout,
            started: started.clone(),
            state: state.clone(),
            epoch: hub.epoch,
        },
        hub.limits,
    );
    let hello = reader.read_hello();
    state.identified.store(true, Relaxed);
    let (name, hello) = match hello {
        Ok(Some(h)) => (h.name().to_owned(), Some(h)),
        Ok(None) => (peer.to_string(), None),
        Err(e) => {
            // Junk or a silent socket: throttled, a scan must not flood the log.
            if let Some(n) = hub.handshakes.hit() {
                log::warn!(
                    "connection from {peer} closed: handshake: {:#}{}",
                    explain(e, hub.timeout, None),
                    more_like_it(n)
                );
            }
            return Ok(());
        }
    };
    started.set(None);
    // A sender that reconnects takes over from its old connection, which
    // may not have noticed yet that the sender is gone; only from one of
    // its own host, as a name belongs to one host ([`Hub::name_for`]).
    let announced = name;
    let (name, apart, _hold) = match &hello {
        Some(_) => hub.name_for(&announced, peer.ip()),
        None => (announced.clone(), None, NameHold(None)), // its address: unique
    };
    let key = (announced.clone(), apart);
    let olds = {
        let mut live = lock(&hub.live);
        let old = live.insert(key.clone(), id);
        // This host's connection from before it owned the name, if open.
        let before = match apart {
            None => live.remove(&(announced.clone(), Some(peer.ip().to_canonical()))),
            Some(_) => None,
        };
        [old, before]
    };
    for old in olds.into_iter().flatten() {
        let Some(old) = lock(&hub.open).remove(&old) else {
            continue;
        };
        // A reconnect now and then is normal; many in a short time are two
        // senders taking the name from each other.
        let often = {
            let mut m = lock(&hub.takeover_counts);
            if m.len() >= crate::acks::RECORDS {
                m.retain(|_, (t, _)| t.elapsed() < TAKEOVER_SPAN);
            }
            let e = m.entry(name.clone()).or_insert((Instant::now(), 0));
            if e.0.elapsed() >= TAKEOVER_SPAN {
                *e = (Instant::now(), 0);
            }
            e.1 += 1;
            (e.1 == TAKEOVERS_SHARED).then_some(e.1)
        };
        if let Some(k) = often {
            log::warn!(
                "sender {name:?} took over its own connection {k} times within {} s: two \
                 senders share this --name (give each its own; the default is the host name, \
                 the same on Pis cloned from one SD card)",
                TAKEOVER_SPAN.as_secs()
            );
        }
        if let Some(n) = hub.takeovers.hit() {
            log::info!(
                "sender {name:?} connected again from {peer}; closing its previous connection \
                 from {}{}",
                old.peer,
                more_like_it(n)
            );
        }
        old.state.replaced.store(true, Relaxed);
        old.state.evicted.store(true, Relaxed);
        let _ = old.stream.shutdown(Shutdown::Both);
    }
    // Acknowledgements (PROTOCOL.md section 6): the first says where a
    // resumed connection's frames become new.
    let mut acks = None;
    let mut on_disk = 0;
    if let Some(h) = hello.as_ref().filter(|h| h.wants_acks()) {
        match ack_sock {
            Ok(s) => {
                let key = crate::acks::record_key(&announced, peer.ip());
                let mut handled = lock(&hub.handled);
                let (l, next, new) = handled.open(&key, h.resumes());
                // A sender resuming where this receiver holds no record (it
                // restarted): what it sends again first may be on disk. (Its
                // record holds the checks left: a reconnect goes on where
                // the last connection left.)
                if h.resumes() && new {
                    handled.set_on_disk(&key, l.id, ON_DISK_FRAMES);
                }
                on_disk = handled.on_disk(&key, l.id);
                drop(handled);
                let mut a = crate::acks::AckWriter::new(s, &l, new);
                a.ack(next);
                acks = Some((a, l));
            }
            Err(e) => log::warn!("{name}: cannot acknowledge frames: {e}"),
        }
    }
    let result = (|| -> Result<()> {
        // A peer without a hello gets stats (named by its address) only
        // once it sent something that is a frame, so junk leaves no trace.
        let open = || -> Result<StreamCtx> {
            let ctx = StreamCtx::open(hub.clone(), &name, &peer.to_string(), "tcp")?
                .on_connection(state.clone());
            log::info!("state: stream from {name:?} ({peer}) open");
            if hub.sinks.per_sender.is_none() && lock(&hub.live).len() > 1 {
                log::warn!(
                    "{} senders connected without --per-sender: their frames share one directory \
                     (their files of one number cannot be told apart: after a receiver restart \
                     one's file may be taken for another's frame; use --per-sender)",
                    lock(&hub.live).len()
                );
            }
            Ok(ctx)
        };
        let mut ctx = if hello.is_some() {
            let mut c = open()?;
            c.acks = acks.take();
            c.on_disk = on_disk;
            Some(c)
        } else {
            None
        };
        let mut framed = false;
        loop {
            if state.replaced.load(Relaxed) {
                // What its socket still holds is older than the frames of
                // the sender's new connection.
                log::info!(
                    "state: stream from {name:?} ({peer}) closed: its sender connected again"
                );
                return Ok(());
            }
            // With a stream open (after a hello, or a first frame), the
            // header first: the frame's memory is reserved from
            // --max-memory before its payload is read into a buffer of the
            // header's payload length (a frame waiting for memory must not
            // hold it). (Before that the reader's buffer grows only with
            // the bytes that came.)
            let mut admitted = None;
            let res = match ctx.as_mut() {
                Some(c) => match reader.read_header() {
                    Ok(Some(h)) => {
                        // (the clock only when admit may wait: a stream's
                        // first frame of a size)
                        let t = (!c.holds_room_for(&h)).then(Instant::now);
                        admitted = Some(c.admit(&h)?);
                        // (a wait for memory is not the peer's slowness:
                        // the frame's deadline moves on by it)
                        if let (Some(t), Some(s)) = (t, started.get()) {
                            started.set(Some(s + t.elapsed()));
                        }
                        reader.read_frame()
                    }
                    Ok(None) => Ok(None),
                    Err(e) => Err(e),
                },
                None => reader.read_frame(),
            };
            match res {
                Ok(Some(f)) => {
                    let h = f.header;
                    if ctx.is_none() {
                        ctx = Some(open()?);
                    }
                    framed = true;
                    state.framed.store(true, Relaxed);
                    let c = ctx.as_mut().expect("opened");
                    let admitted = match admitted {
                        Some(a) => a,
                        None => c.admit(&h)?,
                    };
                    if admitted {
                        // (busy until handled: not closed as silent while
                        // it decodes or writes; a wait in admit is not busy)
                        let _busy = AtOutput::new(Some(&state));
                        c.frame(&h, f.payload)?;
                    }
                }
                // Silent for --timeout between two frames (no byte of the
                // next one yet) after at least one frame: a slow sender,
                // kept (keepalive notices a vanished one).
                Err(WireError::Io(e))
                    if framed
                        && e.kind() == io::ErrorKind::WouldBlock
                        && e.get_ref().is_none()
                        && started.get().is_none() =>
                {
                    log::debug!("{name}: no frame for {:.1} s", hub.timeout.as_secs_f64());
                    continue;
                }
                Ok(None) => {
                    if state.evicted.load(Relaxed) {
                        // Throttled unless it was a sender (a flood of
                        // hellos must not flood the log).
                        let n = if framed {
                            Some(0)
                        } else {
                            hub.handshakes.hit()
                        };
                        if let Some(n) = n {
                            log::info!(
                                "state: stream from {name:?} closed: {}{}",
                                if state.memory_evicted.load(Relaxed) {
                                    "silent, it made room for a stream waiting for memory"
                                } else {
                                    "its slot went to a new connection"
                                },
                                more_like_it(n)
                            );
                        }
                    } else if let Some(c) = ctx.as_mut() {
                        if let Some((a, _)) = c.acks.as_mut() {
                            // the sender waits for this last one
                            a.finish(Duration::from_secs(1));
                        }
                        log::info!("state: sender {name:?} closed the stream");
                    } else {
                        // Said nothing at all (a port scan, or replaced while idle).
                        log::debug!("connection from {peer} closed without a byte");
                    }
                    return Ok(());
                }
                Err(e) if e.is_recoverable() => {
                    if ctx.is_none() {
                        ctx = Some(open()?);
                    }
                    let c = ctx.as_mut().expect("opened");
                    // Damaged past TCP's checksum: a sender that asked for
                    // acknowledgements sends it again (from a key frame, so
                    // the delta frames after it decode) on its next
                    // connection; this one's next frames would refer to it.
                    if c.acks.is_some() {
                        return Err(c.send_again(&format_args!("a damaged frame ({e})")));
                    }
                    c.corrupt(&e);
                }
                Err(e) if !framed => {
                    // Junk (another protocol, a scan), or silence before its
                    // first frame (a hello and nothing else, a stalled first
                    // frame), throttled like a handshake; a first frame
                    // refused or cut short (`BMSK` and a close, a client
                    // with a bug that redials at once), likewise per kind
                    // of error: a flood of such connections is cheap. The
                    // first of each kind in a second is said at once; the
                    // others are counted in the next line of that kind.
                    let junk = match &e {
                        // another protocol (an HTTP request, a scan)
                        WireError::BadMagic { .. } => true,
                        WireError::Io(e) => {
                            e.get_ref().is_none()
                                && matches!(
                                    e.kind(),
                                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                                )
                        }
                        _ => false,
                    };
                    let said = if junk {
                        hub.handshakes.hit()
                    } else {
                        let io = match &e {
                            WireError::Io(e) => Some(e.kind()),
                            _ => None,
                        };
                        hub.first_frames.hit((std::mem::discriminant(&e), io))
                    };
                    if let Some(n) = said {
                        // (a name only when it said one: else the name is the address)
                        let named = if hello.is_some() {
                            format!(" ({name:?})")
                        } else {
                            String::new()
                        };
                        log::warn!(
                            "connection from {peer}{named} closed before its first frame: \
                             {:#}{}",
                            explain(e, hub.timeout, reader.partial()),
                            more_like_it(n)
                        );
                    }
                    return Ok(());
                }
                Err(e) => {
                    return Err(explain(e, hub.timeout, reader.partial())).context(name.clone())
                }
            }
            started.set(None); // the next frame's clock starts at its first byte
        }
    })();
    let mut live = lock(&hub.live);
    if live.get(&key) == Some(&id) {
        live.remove(&key);
    }
    result
}

/// Says that frame `sequence` of sender `name` started a new numbering
/// (`restarted`: the number before it); a UDP stream's line is throttled
/// with all UDP streams' ([`Hub::udp_lines`]).
fn say_new_numbering(hub: &Hub, name: &str, udp: bool, restarted: Option<u64>, sequence: u64) {
    let Some(prev) = restarted else { return };
    let n = if udp {
        match hub.udp_lines.hit() {
            Some(n) => n,
            None => return,
        }
    } else {
        0
    };
    log::info!(
        "{name}: sequence went from {prev} to {sequence}: a new numbering (sender \
         restarted), not counted as lost{}",
        more_like_it(n)
    );
}

/// The message for a connection's error; `partial`: where in a frame the
/// reader was (a stall or deadline names the frame and its bytes).
fn explain(
    e: WireError,
    timeout: Duration,
    partial: Option<bitmask_wire::Partial>,
) -> anyhow::Error {
    let inside = partial.map_or_else(String::new, |p| format!(" {p}"));
    match e {
        // Our own deadline (DeadlineReader), with its message.
        WireError::Io(io) if io.get_ref().is_some() && io.kind() == io::ErrorKind::TimedOut => {
            anyhow::anyhow!("{io}{inside}")
        }
        // The socket's read timeout.
        WireError::Io(io) if io.kind() == io::ErrorKind::WouldBlock => {
            anyhow::anyhow!("no data for {:.1} s{inside}", timeout.as_secs_f64())
        }
        // ETIMEDOUT from the kernel: keepalive probes went unanswered.
        WireError::Io(io) if io.kind() == io::ErrorKind::TimedOut => {
            anyhow::anyhow!("the sender's host stopped answering (TCP keepalive): {io}{inside}")
        }
        // A frame larger than this receiver takes: say which option allows it.
        WireError::InvalidDimensions {
            width,
            height,
            max_width,
            max_height,
        } if width > 0 && height > 0 && width <= MAX_SIDE && height <= MAX_SIDE => {
            anyhow::anyhow!(
                "a {width}x{height} frame, larger than --max-size {max_width}x{max_height}: give \
                 a larger --max-size if the sender means such frames"
            )
        }
        WireError::InvalidDimensions { width, height, .. } if width > 0 && height > 0 => {
            anyhow::anyhow!(
                "a {width}x{height} frame, larger than any --max-size takes \
                 ({MAX_SIDE}x{MAX_SIDE}): the sender's --size, or not a bitmask sender"
            )
        }
        other => other.into(),
    }
}

/// How long a write to the stream output may block before it is reported.
const STUCK_WARN: Duration = Duration::from_secs(5);

/// Logs every active sender's numbers once a second and refreshes
/// `--stats-json`, until the hub is told to stop; returns why.
pub fn report_until_done(
    hub: &Hub,
    done: &mpsc::Receiver<String>,
    json: Option<&std::path::Path>,
    log_every: Duration,
) -> String {
    let mut stuck_warned: Option<Instant> = None;
    // Lines every `log_every`: the senders active or connected in the
    // interval, with its rates (from the counts at the last lines).
    let mut last_lines = Instant::now();
    let mut at_last: HashMap<String, (u64, u64)> = HashMap::new();
    let mut shown: std::collections::BTreeSet<String> = Default::default();
    loop {
        match done.recv_timeout(Duration::from_secs(1)) {
            Ok(why) => return why,
            Err(mpsc::RecvTimeoutError::Disconnected) => return "hub gone".into(),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        let ticked = hub.stats.tick();
        if log_every <= Duration::from_secs(1) {
            for s in ticked {
                log::info!("{}", s.line(true));
            }
        } else {
            shown.extend(ticked.into_iter().map(|s| s.name));
            if last_lines.elapsed() + Duration::from_millis(100) >= log_every {
                let secs = last_lines.elapsed().as_secs_f64().max(1e-3);
                last_lines = Instant::now();
                for mut s in hub.stats.snapshot() {
                    let (r, b) = at_last.get(&s.name).copied().unwrap_or((0, 0));
                    at_last.insert(s.name.clone(), (s.received, s.wire_bytes));
                    if shown.remove(&s.name) {
                        s.fps = s.received.saturating_sub(r) as f64 / secs;
                        s.mbps = s.wire_bytes.saturating_sub(b) as f64 * 8.0 / secs / 1e6;
                        log::info!("{}", s.line(true));
                    }
                }
                shown.clear();
            }
        }
        // A write to the stream output that does not end: its reader
        // stopped taking masks (said while it lasts, every 10 s).
        let since = hub.shared_busy_since.load(Relaxed);
        let now = hub.epoch.elapsed().as_millis() as u64 + 1;
        let stuck = Duration::from_millis(now.saturating_sub(since));
        if since != 0
            && stuck >= STUCK_WARN
            && stuck_warned.is_none_or(|w| w.elapsed() >= STUCK_WARN * 2)
        {
            stuck_warned = Some(Instant::now());
            log::warn!(
                "writing one mask to the output has taken {:.0} s so far: the program reading \
                 the masks (--exec, --out -) takes none, or the disk is stuck; every sender \
                 waits, and live senders drop frames meanwhile",
                stuck.as_secs_f64()
            );
        }
        write_stats_json(hub, json, false);
    }
}

/// Writes `--stats-json` (atomically); a failure is logged, not fatal (as
/// [`Throttle`] allows, and always at the `last` write, at the exit).
pub fn write_stats_json(hub: &Hub, path: Option<&std::path::Path>, last: bool) {
    if let Some(p) = path {
        if let Err(e) = crate::output::write_atomic(p, hub.stats.to_json().as_bytes()) {
            // (the last write, at the exit, is always said)
            let said = hub.stats_json_log.hit();
            if let Some(n) = said.or_else(|| last.then(|| hub.stats_json_log.take_unsaid())) {
                log::warn!("--stats-json: {e:#}{}", more_like_it(n));
            }
        }
    }
}

/// SIGINT and SIGTERM, blocked in every thread so that only the waiter of
/// [`stop_on_signals`] takes them.
pub struct StopSignals(libc::sigset_t);

/// After a stop signal, when the receiver says that it is still stopping.
const STOP_HINT: Duration = Duration::from_secs(3);
/// After a stop signal, when a receiver whose outputs do not take the frames
/// in hand exits anyway (after `--exec`'s own 10 s SIGTERM to its child).
const STOP_LIMIT: Duration = Duration::from_secs(15);
/// A stop signal this soon after the first is the same stop, not a second
/// one: `timeout(1)` sends SIGTERM to the process and then to its process
/// group, so the process gets it twice, microseconds apart.
pub const SAME_STOP: Duration = Duration::from_millis(500);

/// Waits up to `limit` for one of the blocked signals in `set`.
fn wait_signal(set: &libc::sigset_t, limit: Duration) -> Option<libc::c_int> {
    let ts = libc::timespec {
        tv_sec: limit.as_secs() as _,
        tv_nsec: limit.subsec_nanos() as _,
    };
    loop {
        // SAFETY: sigtimedwait on a valid set and timespec; no siginfo wanted.
        let r = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &ts) };
        if r > 0 {
            return Some(r);
        }
        if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return None;
        }
    }
}

/// Blocks SIGINT, SIGTERM and SIGHUP (unless ignored) in the calling
/// (main) thread. Call it before
/// any other thread starts (an `--exec` watcher, the live view's workers):
/// threads inherit the mask, and a thread that does not block them would
/// take a signal with its default action and kill the receiver mid-frame.
/// (Children inherit it too: `--exec` gives its child an empty mask.)
pub fn block_stop_signals() -> Option<StopSignals> {
    // SAFETY: plain libc signal-mask calls on a zeroed sigset_t owned here.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        // A hangup (the ssh session it was started from went away) too,
        // unless ignored (nohup): blocked, an ignored signal would still
        // reach sigwait.
        let mut old: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(libc::SIGHUP, std::ptr::null(), &mut old) == 0
            && old.sa_sigaction != libc::SIG_IGN
        {
            libc::sigaddset(&mut set, libc::SIGHUP);
        }
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            log::debug!("cannot block SIGINT/SIGTERM: they will kill the receiver");
            return None;
        }
        Some(StopSignals(set))
    }
}

/// Ends the process if the stop now under way has not ended it within
/// [`STOP_LIMIT`] and 5 s more: a stop that no signal began (`--count`, an
/// `--exec` program that died) has no signal thread to end it when an
/// output takes no data (a program reading stdout that stalled holds the
/// output's lock for ever). (After a signal, the signal thread ends it
/// first.)
pub fn exit_if_the_stop_hangs() {
    let limit = STOP_LIMIT + Duration::from_secs(5);
    let _ = std::thread::Builder::new()
        .name("stop-limit".into())
        .spawn(move || {
            std::thread::sleep(limit);
            exit_now(format!(
                "the stop has waited {} s for the outputs to take the frames in hand (is the \
                 program reading stdout or --exec stalled?): exiting now, without them",
                limit.as_secs()
            ))
        });
}

/// Ends the process at once with status 1 (3 when the `--exec` program
/// died: [`crate::exec::EXIT_CHILD_DIED`]), after SIGKILL to the `--exec`
/// program, saying `why` first if stderr takes it within 1 s: a stop that
/// cannot finish may be one whose stderr nobody reads (a stalled log
/// collector), and its line must not hold the exit. (Said before the
/// SIGKILL: that unblocks the stop, whose summary must not come first.)
fn exit_now(why: String) -> ! {
    // (once: the signal thread and the stop's time limit may both get here)
    static EXITING: AtomicBool = AtomicBool::new(false);
    if EXITING.swap(true, SeqCst) {
        loop {
            std::thread::park();
        }
    }
    // The numbers as they are, a service stopped this way keeps its
    // summary: the stats file and the lines each from a thread of its own
    // (a stuck disk or a stderr nobody reads holds only its own), within
    // 1 s in all.
    let last = LAST_WORDS.get();
    let (said, heard) = mpsc::channel();
    let file_said = said.clone();
    let _ = std::thread::Builder::new()
        .name("last stats".into())
        .spawn(move || {
            if let Some((hub, json)) = last {
                write_stats_json(hub, json.as_deref(), true);
            }
            let _ = file_said.send(());
        });
    let _ = std::thread::Builder::new()
        .name("last words".into())
        .spawn(move || {
            log::error!("{why}");
            if let Some((hub, _)) = last {
                for line in summary_lines(hub) {
                    say!("{line}");
                }
            }
            let _ = said.send(());
        });
    let until = Instant::now() + Duration::from_secs(1);
    for _ in 0..2 {
        let _ = heard.recv_timeout(until.saturating_duration_since(Instant::now()));
    }
    crate::exec::kill_now();
    let status = if crate::exec::died() {
        crate::exec::EXIT_CHILD_DIED
    } else {
        1
    };
    // SAFETY: _exit(2) ends the process without running anything more
    // (nothing may wait on a blocked stdout either).
    unsafe { libc::_exit(status) }
}

/// What a forced exit ([`exit_now`]) still writes: the hub's numbers, and
/// where `--stats-json` goes.
static LAST_WORDS: std::sync::OnceLock<(Arc<Hub>, Option<std::path::PathBuf>)> =
    std::sync::OnceLock::new();

/// Keeps the hub and the `--stats-json` path for a forced exit's summary
/// ([`exit_now`]).
pub fn keep_for_last_words(hub: &Arc<Hub>, json: Option<&std::path::Path>) {
    let _ = LAST_WORDS.set((hub.clone(), json.map(std::path::Path::to_path_buf)));
}

/// The summary's lines: one per sender, then the total.
pub fn summary_lines(hub: &Hub) -> Vec<String> {
    let mut lines: Vec<String> = hub
        .stats
        .snapshot()
        .iter()
        .map(|s| format!("bitmask-recv: {}", s.line(false)))
        .collect();
    lines.push(format!("bitmask-recv: {}", hub.stats.total().line(false)));
    lines
}

/// SIGINT and SIGTERM end the receiver cleanly (outputs flushed, final
/// summary and stats written) instead of killing it mid-frame: a thread
/// waits for the signals [`block_stop_signals`] blocked.
pub fn stop_on_signals(hub: &Arc<Hub>, signals: Option<StopSignals>) {
    let Some(StopSignals(set)) = signals else {
        return;
    };
    let h = hub.clone();
    let spawned = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut sig: libc::c_int = 0;
            // SAFETY: sigwait on a valid set and an owned out-parameter.
            if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                return;
            }
            h.stop(format!("signal {sig}"));
            // The stop waits for the frames in hand to be written: an output
            // that takes no data (stdout read by a program that stalled, an
            // --exec child that ignores SIGTERM) would hold it for ever. A
            // second signal, or STOP_LIMIT, ends the process.
            let t = Instant::now();
            let mut hinted = false;
            loop {
                let wait = if hinted { STOP_LIMIT } else { STOP_HINT };
                let left = wait.saturating_sub(t.elapsed());
                match wait_signal(&set, left) {
                    Some(again) if t.elapsed() < SAME_STOP => {
                        log::debug!("signal {again} again at once: the same stop");
                    }
                    Some(again) => exit_now(format!(
                        "signal {again} while stopping: exiting now, without waiting for the \
                         outputs (frames in hand are not written)"
                    )),
                    None if hinted => exit_now(format!(
                        "the stop has waited {} s for the outputs to take the frames in hand \
                         (is the program reading stdout or --exec stalled?): exiting now, \
                         without them",
                        STOP_LIMIT.as_secs()
                    )),
                    None => {
                        hinted = true;
                        log::warn!(
                            "still stopping after {} s, waiting for the outputs to take the \
                             frames in hand: a second signal ends the receiver now, else it \
                             exits at {} s",
                            STOP_HINT.as_secs(),
                            STOP_LIMIT.as_secs()
                        );
                    }
                }
            }
        });
    if spawned.is_err() {
        // SAFETY: as in block_stop_signals.
        unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttles_unsaid_count_can_be_said_last() {
        let t = Throttle::default();
        assert_eq!(t.hit(), Some(0));
        for _ in 0..3 {
            assert_eq!(t.hit(), None);
        }
        assert_eq!(t.take_unsaid(), 3);
        assert_eq!(t.take_unsaid(), 0);
        assert_eq!(Throttle::default().take_unsaid(), 0);
    }

    #[test]
    fn a_throttle_says_a_long_flood_once_a_minute_until_it_pauses() {
        let t = Throttle::default();
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // 10 events a second for 3 minutes: a line a second for the first
        // minute, then one a minute
        let mut said = Vec::new();
        for i in 0..1800u64 {
            if let Some(n) = t.hit_at(at(i * 100)) {
                said.push((i * 100, n));
            }
        }
        assert_eq!(said[0], (0, 0));
        assert_eq!(said[1], (1000, 9));
        let slow: Vec<_> = said.iter().filter(|(ms, _)| *ms > 60_000).collect();
        assert_eq!(slow, [&(119_000, 599), &(179_000, 599)], "{said:?}");
        assert_eq!(said.len(), 62, "{said:?}");
        // less than a minute apart is the same flood (a slow sender's
        // frames); a pause of a minute: a line at once, then a line a
        // second again
        assert_eq!(t.hit_at(at(230_000)), None);
        assert_eq!(t.hit_at(at(290_001)), Some(10));
        assert_eq!(t.hit_at(at(290_500)), None);
        assert_eq!(t.hit_at(at(291_001)), Some(1));
    }

    #[test]
    fn a_sender_name_belongs_to_the_host_that_used_it_first() {
        let hub = hub_with(Sinks {
            shared: None,
            per_sender: None,
        });
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let (n, apart, a1) = hub.name_for("cam", a);
        assert_eq!((n.as_str(), apart), ("cam", None));
        let (n, apart, b1) = hub.name_for("cam", b);
        assert_eq!((n.as_str(), apart), ("cam@10.0.0.2", Some(b)));
        let (n, _, a2) = hub.name_for("cam", a);
        assert_eq!(n, "cam", "a second stream of the owner");
        drop((a1, a2, b1));
        // the owner's streams ended: the name stays its host's a while
        let (n, _, b2) = hub.name_for("cam", b);
        assert_eq!(n, "cam@10.0.0.2");
        drop(b2);
        let (n, _, a3) = hub.name_for("cam", a);
        assert_eq!(n, "cam");
        // not while one of its streams is open, however long ago it began
        let later = Instant::now() + OWNER_HOLD + Duration::from_secs(1);
        assert_eq!(hub.name_for_at("cam", b, later).0, "cam@10.0.0.2");
        drop(a3);
        // OWNER_HOLD after its last stream: the next host to use it owns it
        let (n, apart, _b3) = hub.name_for_at("cam", b, later);
        assert_eq!((n.as_str(), apart), ("cam", None));
        assert_eq!(hub.name_for("cam", a).0, "cam@10.0.0.1");
    }

    #[test]
    fn a_flood_of_new_names_takes_no_other_hosts_name() {
        let hub = hub_with(Sinks {
            shared: None,
            per_sender: None,
        });
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        drop(hub.name_for("cam", a));
        std::thread::sleep(Duration::from_millis(2));
        for i in 0..crate::acks::RECORDS + 100 {
            drop(hub.name_for(&format!("junk{i}"), "10.0.0.9".parse().unwrap()));
        }
        assert!(lock(&hub.owners).len() <= NAMES_PER_HOST + 1);
        assert_eq!(hub.name_for("cam", b).0, "cam@10.0.0.2", "still 10.0.0.1's");
    }

    #[test]
    fn a_name_kept_apart_stays_a_valid_name() {
        let ip: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(with_host("cam", ip), "cam@10.0.0.2");
        let v6: IpAddr = "fe80::1".parse().unwrap();
        assert_eq!(with_host("cam", v6), "cam@fe80::1");
        // a receiver on [::] sees IPv4 peers mapped: named as IPv4
        let hub = hub_with(Sinks {
            shared: None,
            per_sender: None,
        });
        let mapped: IpAddr = "::ffff:10.0.0.2".parse().unwrap();
        let _owner = hub.name_for("cam", "10.0.0.1".parse().unwrap());
        assert_eq!(hub.name_for("cam", mapped).0, "cam@10.0.0.2");
        // 255 bytes, two-byte characters from offset 1: cut at a boundary
        let long = format!("a{}", "é".repeat(127));
        assert_eq!(long.len(), 255);
        let apart = with_host(&long, ip);
        assert!(apart.len() <= bitmask_wire::MAX_NAME_LEN, "{}", apart.len());
        assert!(apart.ends_with("é@10.0.0.2"), "{apart}");
        bitmask_wire::Hello::new(&apart).expect("a valid name");
    }

    #[test]
    fn a_name_in_the_kept_apart_form_of_another_host_is_kept_apart() {
        // hosts .1 and .2 share "cam": .2 is "cam@10.0.0.2". A third host
        // announcing "cam@10.0.0.2" must not land in .2's directory.
        let hub = hub_with(Sinks {
            shared: None,
            per_sender: None,
        });
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        let _a = hub.name_for("cam", ip("10.0.0.1"));
        let (n, _, _b) = hub.name_for("cam", ip("10.0.0.2"));
        assert_eq!(n, "cam@10.0.0.2");
        let (n, apart, _c) = hub.name_for("cam@10.0.0.2", ip("10.0.0.3"));
        assert_eq!(
            (n.as_str(), apart),
            ("cam@10.0.0.2@10.0.0.3", Some(ip("10.0.0.3")))
        );
        // its own address (or one that is not an address) is an ordinary name
        let (n, apart, _d) = hub.name_for("cam@10.0.0.3", ip("10.0.0.3"));
        assert_eq!((n.as_str(), apart), ("cam@10.0.0.3", None));
        let (n, _, _e) = hub.name_for("cam@::ffff:10.0.0.4", ip("10.0.0.4"));
        assert_eq!(n, "cam@::ffff:10.0.0.4");
        let (n, apart, _f) = hub.name_for("me@home", ip("10.0.0.5"));
        assert_eq!((n.as_str(), apart), ("me@home", None));
        let (n, _, _g) = hub.name_for("cam@fe80::1", ip("10.0.0.5"));
        assert_eq!(n, "cam@fe80::1@10.0.0.5");
        // the name of another host's stream without a hello (its address):
        // kept apart, it cannot close that stream's connection
        let (n, apart, _h) = hub.name_for("10.0.0.5:34567", ip("10.0.0.9"));
        assert_eq!(
            (n.as_str(), apart),
            ("10.0.0.5:34567@10.0.0.9", Some(ip("10.0.0.9")))
        );
        let (n, _, _i) = hub.name_for("[fe80::1]:5", ip("10.0.0.9"));
        assert_eq!(n, "[fe80::1]:5@10.0.0.9");
        // its own host's: an ordinary name
        let (n, apart, _j) = hub.name_for("10.0.0.5:34567", ip("10.0.0.5"));
        assert_eq!((n.as_str(), apart), ("10.0.0.5:34567", None));
    }
    use bitmask_wire::{Header, CODEC_RAW};

    struct Seen(Mutex<Vec<(String, u64, usize, u64)>>);

    impl FrameObserver for Seen {
        fn frame(&self, sender: &str, header: &Header, mask: &[u8], stats: &SenderHandle) {
            let received = stats::lock(stats).snapshot().received;
            lock(&self.0).push((sender.into(), header.sequence, mask.len(), received));
        }
    }

    #[test]
    fn observers_see_every_decoded_frame_with_its_stats() {
        let (tx, rx) = mpsc::channel();
        let sinks = Sinks {
            shared: None,
            per_sender: None,
        };
        let hub = Hub::new(
            Limits::default(),
            Duration::from_secs(1),
            sinks,
            Some(2),
            4,
            tx,
        );
        let seen = Arc::new(Seen(Mutex::new(Vec::new())));
        hub.observe(seen.clone());
        let mut ctx = StreamCtx::open(hub.clone(), "cam", "peer", "tcp").unwrap();
        let payload = [0xf0u8, 0x0f];
        ctx.frame(&Header::new(16, 1, 4, CODEC_RAW, 2), &payload)
            .unwrap();
        // a codec id nobody knows is counted as corrupt, not shown
        ctx.frame(&Header::new(16, 1, 5, 200, 2), &payload).unwrap();
        ctx.frame(&Header::new(16, 1, 7, CODEC_RAW, 2), &payload)
            .unwrap();
        assert_eq!(
            *lock(&seen.0),
            [("cam".to_string(), 4, 2, 1), ("cam".to_string(), 7, 2, 2)]
        );
        let s = &hub.stats.snapshot()[0];
        // frame 5 is corrupt (not also lost), frame 6 lost
        assert_eq!((s.received, s.lost, s.corrupt), (2, 1, 1));
        assert!(s.connected);
        drop(ctx);
        assert!(!hub.stats.snapshot()[0].connected);
        assert!(
            rx.try_recv().unwrap().contains("--count"),
            "two frames reach --count 2"
        );
    }

    fn hub_with(sinks: Sinks) -> Arc<Hub> {
        let (tx, _rx) = mpsc::channel();
        Hub::new(
            Limits::default(),
            Duration::from_secs(1),
            sinks,
            None,
            4,
            tx,
        )
    }

    /// A hub whose shared output is a fresh directory `bitmask-TAG-PID`.
    fn hub_writing_to(tag: &str) -> (Arc<Hub>, PathBuf) {
        let dir = std::env::temp_dir().join(format!("bitmask-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let out = Output::open(Some(&dir), None, None, Format::Raw).unwrap();
        let hub = hub_with(Sinks {
            shared: Some(Mutex::new(out)),
            per_sender: None,
        });
        (hub, dir)
    }

    /// A connection `id` of `hub` with state `st` (a socket pair on
    /// loopback); returns the client's end, to be kept open.
    fn open_conn(hub: &Hub, id: u64, st: &Arc<ConnState>) -> TcpStream {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (stream, peer) = l.accept().unwrap();
        lock(&hub.open).insert(
            id,
            OpenConn {
                stream,
                peer,
                accepted: Instant::now(),
                state: st.clone(),
            },
        );
        client
    }

    fn state() -> Arc<ConnState> {
        Arc::new(ConnState {
            identified: AtomicBool::new(true),
            framed: AtomicBool::new(true),
            evicted: AtomicBool::new(false),
            replaced: AtomicBool::new(false),
            at_output: AtomicU32::new(0),
            held: AtomicU64::new(0),
            memory_evicted: AtomicBool::new(false),
            last_byte_ms: AtomicU64::new(0),
        })
    }

    #[test]
    fn a_frame_waiting_for_a_stuck_output_is_given_up_when_its_connection_is_replaced() {
        let (hub, dir) = hub_writing_to("stuck");
        let st = state();
        let mut ctx = StreamCtx::open(hub.clone(), "cam", "peer", "tcp")
            .unwrap()
            .on_connection(st.clone());
        let payload = [0xf0u8, 0x0f];
        ctx.frame(&Header::new(16, 1, 1, CODEC_RAW, 2), &payload)
            .unwrap();
        // Another thread is stuck writing (a reader that takes nothing).
        let stuck = hub.turns.wait(|| false).unwrap();
        let waiting = std::thread::spawn(move || {
            let r = ctx.frame(&Header::new(16, 1, 2, CODEC_RAW, 2), &payload);
            (r.is_ok(), ctx)
        });
        std::thread::sleep(Duration::from_millis(100));
        assert!(!waiting.is_finished(), "waits while the output is busy");
        st.replaced.store(true, Relaxed);
        let t = Instant::now();
        while !waiting.is_finished() {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "still waiting after the takeover"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(stuck);
        let (ok, ctx) = waiting.join().unwrap();
        assert!(ok);
        // Given up: not written, not counted.
        assert!(!dir.join("frame-000002.raw").exists());
        assert!(dir.join("frame-000001.raw").exists());
        assert_eq!(hub.stats.snapshot()[0].received, 1);
        // Replaced, with the output free: still given up, and the turn
        // it left is not waited for by the next writer.
        let mut ctx = ctx;
        ctx.frame(&Header::new(16, 1, 3, CODEC_RAW, 2), &payload)
            .unwrap();
        assert!(!dir.join("frame-000003.raw").exists());
        let mut other = StreamCtx::open(hub.clone(), "cam2", "peer", "tcp").unwrap();
        other
            .frame(&Header::new(16, 1, 9, CODEC_RAW, 2), &payload)
            .unwrap();
        assert!(dir.join("frame-000009.raw").exists());
        drop(ctx);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn turns_at_the_shared_output_are_first_come_first_served() {
        let turns = Arc::new(Turns::default());
        let order = Arc::new(Mutex::new(Vec::new()));
        let first = turns.wait(|| false).unwrap();
        let mut threads = Vec::new();
        for i in 0..4 {
            let (t, o) = (turns.clone(), order.clone());
            threads.push(std::thread::spawn(move || {
                let _turn = t.wait(|| false).unwrap();
                lock(&o).push(i);
            }));
            // Queued in this order.
            let t0 = Instant::now();
            while lock(&turns.state).next < i as u64 + 2 {
                assert!(t0.elapsed() < Duration::from_secs(5));
                std::thread::yield_now();
            }
        }
        // A waiter that leaves the line does not hold up those behind it.
        let gone = AtomicBool::new(false);
        std::thread::scope(|sc| {
            let h = sc.spawn(|| turns.wait(|| gone.load(Relaxed)).is_none());
            std::thread::sleep(Duration::from_millis(20));
            gone.store(true, Relaxed);
            assert!(h.join().unwrap());
        });
        drop(first);
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(*lock(&order), [0, 1, 2, 3]);
        assert!(turns.wait(|| false).is_some(), "the line is free again");
    }

    #[test]
    fn unwritable_frames_and_duplicates_do_not_end_the_stream() {
        let (hub, dir) = hub_writing_to("unwritable");
        let mut ctx = StreamCtx::open(hub.clone(), "cam", "peer", "tcp").unwrap();
        let payload = [0xf0u8, 0x0f];
        let h = |seq| Header::new(16, 1, seq, CODEC_RAW, 2);
        ctx.frame(&h(1), &payload).unwrap();
        // The same frame again on one connection: a duplicate, not written.
        ctx.frame(&h(1), &payload).unwrap();
        assert!(!dir.join("frame-000001.1.raw").exists());
        // The directory fails (a file in its place, as a disk that fails;
        // a directory merely deleted is made again): frames 2 and 3 cannot
        // be written, the stream goes on.
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::write(&dir, b"").unwrap();
        ctx.frame(&h(2), &payload).unwrap();
        ctx.frame(&h(3), &payload).unwrap();
        std::fs::remove_file(&dir).unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        ctx.frame(&h(4), &payload).unwrap();
        assert!(dir.join("frame-000004.raw").exists());
        let s = &hub.stats.snapshot()[0];
        assert_eq!((s.received, s.lost, s.corrupt, s.unwritten), (2, 0, 1, 2));
        drop(ctx);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_connection_holding_a_frame_for_the_output_is_not_idle() {
        let hub = hub_with(Sinks {
            shared: None,
            per_sender: None,
        });
        let st = state();
        // Silent for far longer than --timeout (1 s here) since its frame.
        st.last_byte_ms.store(0, Relaxed);
        st.at_output.store(1, Relaxed);
        let _client = open_conn(&hub, 1, &st);
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(make_room(&hub), None, "a frame waits for the output");
        st.at_output.store(0, Relaxed);
        assert!(make_room(&hub).is_some_and(|why| why.contains("silent")));
        assert!(st.evicted.load(Relaxed));
    }

    #[test]
    fn a_waiter_closes_an_idle_holder_only_if_its_share_makes_room_and_one_at_a_time() {
        const MIB: u64 = 1 << 20;
        let hub = hub_with(Sinks {
            shared: None,
            per_sender: None,
        });
        hub.memory.set_limit(10 * MIB);
        let mut busy = 0;
        hub.memory.reserve(&mut busy, 5 * MIB).unwrap(); // 5 MiB free
        let st = state();
        st.last_byte_ms.store(0, Relaxed); // silent since long before --timeout (1 s)
        st.held.store(3 * MIB, Relaxed);
        let _client = open_conn(&hub, 1, &st);
        std::thread::sleep(Duration::from_millis(1100));
        // its 3 MiB with the 5 free are not 9: it is left alone
        assert_eq!(make_memory(&hub, 9 * MIB), None);
        assert!(!st.evicted.load(Relaxed));
        // room for 4 MiB there is already
        assert_eq!(make_memory(&hub, 4 * MIB), None);
        // 7 MiB: its share makes room
        assert!(make_memory(&hub, 7 * MIB).is_some_and(|why| why.contains("silent")));
        assert!(st.evicted.load(Relaxed) && st.memory_evicted.load(Relaxed));
        // while it gives its share back, no other is closed
        let other = state();
        other.held.store(3 * MIB, Relaxed);
        let _c2 = open_conn(&hub, 2, &other);
        assert_eq!(make_memory(&hub, 7 * MIB), None);
        st.held.store(0, Relaxed); // given back
        assert!(make_memory(&hub, 7 * MIB).is_some());
        assert!(other.evicted.load(Relaxed));
    }

    #[test]
    fn turns_never_admit_two_and_always_move_on() {
        let turns = Arc::new(Turns::default());
        let inside = Arc::new(AtomicUsize::new(0));
        let served = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..16u64)
            .map(|i| {
                let (turns, inside, served) = (turns.clone(), inside.clone(), served.clone());
                std::thread::spawn(move || {
                    for k in 0..200u64 {
                        // Every 7th wait leaves the line at once.
                        let leave = (i * 200 + k) % 7 == 0;
                        if let Some(_t) = turns.wait(|| leave) {
                            assert_eq!(inside.fetch_add(1, Relaxed), 0, "two inside");
                            std::hint::spin_loop();
                            inside.fetch_sub(1, Relaxed);
                            served.fetch_add(1, Relaxed);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let expect = (0..16 * 200).filter(|n| n % 7 != 0).count();
        assert_eq!(served.load(Relaxed), expect);
        let s = lock(&turns.state);
        assert_eq!((s.next, s.serving), (16 * 200, 16 * 200));
        assert!(s.left.is_empty() && s.waiting.is_empty());
    }
}
