//! UDP transport, receiving side: datagrams (docs/PROTOCOL.md, "UDP
//! transport") reassembled into wire frames per stream, then handed to the
//! same data path as TCP frames ([`StreamCtx::frame`]).
//!
//! A stream is (source address, stream id). Its frames are reassembled in
//! sequence order: when a frame completes, older incomplete ones are given
//! up; a frame that gets no datagram for [`FRAGMENT_GAP`] is given up too.
//! Both count as `incomplete`. Only a frame read whole (its CRC, its length
//! and its header's sequence number checked) moves the point below which
//! datagrams are late, and only by at most
//! [`MAX_GAP`](bitmask_wire::udp::MAX_GAP); a number more than that below
//! it starts a new numbering. One datagram with a made-up sequence number
//! (say 2^64 - 1), never completed or even a whole frame, must not make
//! every later frame of the stream "late". (The reassembly itself is
//! [`Reassembler`]'s, in bitmask-wire; this module keeps the streams.)
//! Memory is capped: `--max-senders` streams (as many as TCP connections,
//! counted apart), [`MAX_PARTIAL`](bitmask_wire::udp::MAX_PARTIAL) frames
//! in reassembly each, each no larger than a frame of `--max-size`,
//! allocated only after the datagram header was checked. When all are taken, a new
//! stream replaces the quietest one that has never delivered a frame, or
//! that has sent nothing for [`QUIET`]; a stream of a sender (one that has
//! delivered a frame and still sends, if only its hello every second) is
//! never replaced, so datagrams from elsewhere cannot push it out, and the
//! new stream is ignored instead.

use crate::session::{more_like_it, Hub, NameHold, StreamCtx, Throttle};
use bitmask_wire::udp::{GivenUp, Push, Reassembler};
use bitmask_wire::{FrameReader, Limits, HEADER_LEN};
use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bitmask_wire::udp::{Datagram as Dgram, KIND_END, KIND_HELLO};
#[cfg(test)]
use bitmask_wire::udp::{DGRAM_HEADER_LEN, DGRAM_MAGIC, DGRAM_VERSION, KIND_FRAGMENT};

/// A frame with no new datagram for this long is given up.
pub const FRAGMENT_GAP: Duration = Duration::from_millis(250);
/// A frame whose last datagram waited longer than this in the socket
/// (outputs slower than the stream: datagrams pile up in the socket's
/// buffer, megabytes, which would grow the latency to seconds) is decoded,
/// so that later delta frames have their reference, but not written:
/// counted `behind`. Over TCP the sender drops instead (its queue); over
/// UDP nothing tells it. Not for a sender that drops no frame (its
/// hello's `HELLO_NO_DROP`: a batch, `--no-drop`), and a frame a second is
/// written all the same (the decoding itself may be what is behind).
pub const MAX_LAG: Duration = Duration::from_millis(200);
/// A stream that has delivered a frame is kept, when all `--max-senders`
/// are taken, while it sends anything (a sender repeats its hello every
/// second, so a slow one too); silent this long it may be replaced. A
/// stream is closed only when silent for `--timeout` and for this long (a
/// sender of a frame a minute keeps its stream, and its decoder's
/// reference frame, by its hellos).
pub const QUIET: Duration = Duration::from_secs(3);
/// Frame numbers remembered per stream of the fragments dropped before its
/// hello (a second of frames at 1,000 fps).
const EARLY_MAX: usize = 1000;

/// Parses and checks one datagram (bitmask_wire::udp); the error is the log text.
fn parse<'a>(b: &'a [u8], limits: &Limits) -> Result<(Dgram, &'a [u8]), String> {
    Dgram::parse(b, limits).map_err(|e| e.to_string())
}

struct Stream {
    ctx: Option<StreamCtx>,
    /// Its hold on its sender name (`Hub::name_for`), once its hello came.
    hold: Option<NameHold>,
    /// Its frames in reassembly, and which datagrams are late.
    reasm: Reassembler,
    last_seen: Instant,
    /// When it last delivered a frame.
    delivered: Option<Instant>,
    /// When it last had a frame written (not passed over, see [`MAX_LAG`]).
    written: Option<Instant>,
    /// Its sender drops no frame (its hello's `HELLO_NO_DROP`): none is
    /// passed over.
    no_drop: bool,
    warned_no_hello: bool,
    /// The frame numbers of the fragments dropped before the hello
    /// ([`EARLY_MAX`] at most), counted lost at the stream's first frame
    /// ([`StreamCtx::dropped_before_hello`]).
    early: std::collections::BTreeSet<u64>,
}

impl Stream {
    /// Gives up every frame in reassembly (counted incomplete).
    fn give_up_all(&mut self, why: &str) {
        let ctx = &mut self.ctx;
        self.reasm.give_up_all(|g| gave_up(ctx, g, &why));
    }
}

/// Counts a frame given up as incomplete, and gives back what its
/// reassembly held of the memory budget.
fn gave_up(ctx: &mut Option<StreamCtx>, g: GivenUp, why: &dyn std::fmt::Display) {
    if let Some(ctx) = ctx {
        log::debug!(
            "{}: frame {} incomplete ({} of {} datagrams missing): {why}",
            ctx.name(),
            g.sequence,
            g.missing,
            g.count
        );
        ctx.incomplete(1);
        ctx.reassembled(g.frame_len);
    }
}

/// Receives datagrams on `sock` forever.
pub fn serve_udp(hub: Arc<Hub>, sock: UdpSocket) {
    // (the stop's numbers wait for this loop's last counts)
    let _held = hub.hold();
    let _ = sock.set_read_timeout(Some(Duration::from_millis(50)));
    // (without the kernel's arrival times no frame is taken for late)
    let stamped = match stamp_arrivals(&sock) {
        Ok(()) => true,
        Err(e) => {
            log::warn!(
                "udp: no arrival times from the kernel ({e}): a receiver whose outputs are \
                 slower than its senders falls behind them, unbounded"
            );
            false
        }
    };
    let mut streams: HashMap<(SocketAddr, u32), Stream> = HashMap::new();
    let mut buf = vec![0u8; 65536];
    let mut last_sweep = Instant::now();
    let mut logs = Logs::default();
    loop {
        if hub.is_stopping() {
            // Nothing more is written: the socket closes, so the kernel
            // refuses what comes now (the sender counts that), and the
            // frames in reassembly are counted incomplete, not dropped
            // without a word.
            for s in streams.values_mut() {
                s.give_up_all("the receiver is stopping");
            }
            return;
        }
        match recv_stamped(&sock, &mut buf, stamped) {
            Ok((n, from, arrived)) => match parse(&buf[..n], &hub.limits) {
                Ok((d, data)) => on_dgram(&hub, &mut streams, &mut logs, from, d, data, arrived),
                Err(why) => {
                    if !over_the_cap(&hub, &mut streams, from, &buf[..n]) && logs.bad(from) {
                        log::warn!("udp from {from}: dropped: {why}");
                    }
                }
            },
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock
                    || e.kind() == io::ErrorKind::TimedOut
                    || e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                log::warn!("udp receive failed: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        if last_sweep.elapsed() >= Duration::from_millis(50) {
            last_sweep = Instant::now();
            sweep(&hub, &mut streams, last_sweep);
        }
    }
}

/// Asks the kernel for each datagram's arrival time (Linux only).
#[cfg(not(target_os = "linux"))]
fn stamp_arrivals(_: &UdpSocket) -> io::Result<()> {
    Err(io::Error::other("not on this system"))
}

/// Asks the kernel for each datagram's arrival time (`SO_TIMESTAMPNS`).
#[cfg(target_os = "linux")]
fn stamp_arrivals(sock: &UdpSocket) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: setsockopt on an open socket with a live c_int of the size given.
    #[allow(unsafe_code)]
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `recv_from`, with the datagram's arrival time (the kernel's; `None`
/// when not `stamped`, or not said).
fn recv_stamped(
    sock: &UdpSocket,
    buf: &mut [u8],
    stamped: bool,
) -> io::Result<(usize, SocketAddr, Option<SystemTime>)> {
    #[cfg(target_os = "linux")]
    if stamped {
        return recv_stamped_linux(sock, buf);
    }
    let _ = stamped;
    let (n, from) = sock.recv_from(buf)?;
    Ok((n, from, None))
}

/// How long a datagram that arrived at `arrived` has waited, as of now
/// (zero when not known; a stamp an hour old is not one the socket's
/// buffer could hold: a clock stepped, or a layout misread).
fn waited_since(arrived: Option<SystemTime>) -> Duration {
    arrived
        .and_then(|at| SystemTime::now().duration_since(at).ok())
        .filter(|w| *w < Duration::from_secs(3600))
        .unwrap_or_default()
}

/// [`recv_stamped`] with the kernel's arrival time.
#[cfg(target_os = "linux")]
fn recv_stamped_linux(
    sock: &UdpSocket,
    buf: &mut [u8],
) -> io::Result<(usize, SocketAddr, Option<SystemTime>)> {
    use std::os::fd::AsRawFd;
    // (room for one timestamp message: a header and two 64-bit words)
    let mut control = [0u64; 8];
    // SAFETY: all-zero is a valid sockaddr_storage, iovec and msghdr.
    #[allow(unsafe_code)]
    let (mut addr, mut iov, mut msg): (libc::sockaddr_storage, libc::iovec, libc::msghdr) =
        unsafe { std::mem::zeroed() };
    iov.iov_base = buf.as_mut_ptr().cast();
    iov.iov_len = buf.len();
    msg.msg_name = (&mut addr as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: every pointer in `msg` is to a live buffer of the length given.
    #[allow(unsafe_code)]
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: recvmsg filled `addr` with `msg_namelen` bytes of an address.
    #[allow(unsafe_code)]
    let from = unsafe { socket2::SockAddr::new(addr, msg.msg_namelen) }
        .as_socket()
        .ok_or_else(|| io::Error::other("a datagram from a non-IP address"))?;
    let mut arrived = None;
    // SAFETY: the CMSG_* walk stays within `msg_controllen` bytes of
    // `control`, which the kernel wrote; the data is read unaligned.
    #[allow(unsafe_code)]
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let data = libc::CMSG_DATA(c);
                let len = ((*c).cmsg_len as usize).saturating_sub(data as usize - c as usize);
                // (a timespec of two longs: 32 bits each on 32-bit ARM's
                // old layout, whose seconds are read unsigned: past 2038)
                let (sec, nsec) = if len >= 16 {
                    let t = data.cast::<[i64; 2]>().read_unaligned();
                    (t[0], t[1])
                } else if len >= 8 {
                    let t = data.cast::<[i32; 2]>().read_unaligned();
                    (t[0] as u32 as i64, t[1] as i64)
                } else {
                    (0, -1)
                };
                if let (Ok(sec), Ok(nsec @ 0..1_000_000_000)) =
                    (u64::try_from(sec), u32::try_from(nsec))
                {
                    arrived = Some(SystemTime::UNIX_EPOCH + Duration::new(sec, nsec));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok((n as usize, from, arrived))
}

/// Counts a fragment of a frame over this receiver's `--max-size` from a
/// stream whose hello came as damaged (once per frame, logged as such):
/// such a frame is never reassembled, and over TCP its sender would be
/// told. Returns whether the datagram was one.
fn over_the_cap(
    hub: &Hub,
    streams: &mut HashMap<(SocketAddr, u32), Stream>,
    from: SocketAddr,
    b: &[u8],
) -> bool {
    // (the datagram as it would parse without the cap)
    let any = Limits {
        max_width: u32::MAX,
        max_height: u32::MAX,
        max_payload: u32::MAX,
    };
    let Ok((d, _)) = parse(b, &any) else {
        return false;
    };
    let cap = HEADER_LEN as u64 + hub.limits.max_payload as u64;
    if d.kind == KIND_HELLO || d.frame_len as u64 <= cap {
        return false;
    }
    let Some(s) = streams.get_mut(&(from, d.stream_id)) else {
        return false;
    };
    if s.ctx.is_none() {
        return false;
    }
    if !s.reasm.late(d.sequence) && !s.reasm.too_far(d.sequence) {
        let ctx = s.ctx.as_mut().expect("checked above");
        ctx.corrupt_numbered(
            d.sequence,
            &format_args!(
                "frame {} is {} B, over this receiver's cap of {cap} B (--max-size {}x{})",
                d.sequence, d.frame_len, hub.limits.max_width, hub.limits.max_height
            ),
        );
        s.reasm.forget(d.sequence);
    }
    s.last_seen = Instant::now();
    true
}

/// A stream its sender ended, with frames numbered below `next`: frames
/// in reassembly are given up, those never delivered count as lost, and
/// the stream closes now rather than after `--timeout` of silence.
fn end(mut s: Stream, from: SocketAddr, next: u64) {
    s.give_up_all("its sender ended the stream");
    if let Some(ctx) = &mut s.ctx {
        // (against what this stream delivered, not the name's numbers,
        // which may be another stream's: none delivered, nothing counted)
        if let Some(last) = s.reasm.last_delivered() {
            ctx.ended(last, next);
        }
        log::info!(
            "state: udp stream of {:?} from {from} ended by its sender (its frames: below {next})",
            ctx.name()
        );
    }
}

/// Time this thread spent handling a datagram (decoding and writing the
/// frame it completed: a slow SD card, `--sync`, a full `--exec` pipe, a
/// wait behind a TCP stream's writes) is time it did not read the socket:
/// it does not count against the other streams' frames in reassembly.
/// Without it a 400 ms write made [`sweep`] give up another stream's frame
/// whose last datagrams were waiting in the socket, and count it
/// incomplete. (Not against a stream's silence, `--timeout` and at least 3
/// s, which such writes do not reach, and which must end a dead stream
/// however busy the thread is; its frames in reassembly are at most three,
/// their memory reserved.)
fn credit(streams: &mut HashMap<(SocketAddr, u32), Stream>, spent: Duration) {
    if spent < Duration::from_millis(10) {
        return;
    }
    for s in streams.values_mut() {
        s.reasm.credit(spent);
    }
}

/// Gives up the frames that got no datagram for [`FRAGMENT_GAP`], and
/// closes the streams silent for `--timeout` (and [`QUIET`]), as of `now`.
fn sweep(hub: &Hub, streams: &mut HashMap<(SocketAddr, u32), Stream>, now: Instant) {
    for s in streams.values_mut() {
        let ctx = &mut s.ctx;
        s.reasm
            .expire(now, FRAGMENT_GAP, |g| gave_up(ctx, g, &g.why));
    }
    streams.retain(|(from, _), s| {
        let keep = now - s.last_seen < hub.timeout.max(QUIET);
        if !keep {
            if let Some(ctx) = &s.ctx {
                log::info!(
                    "state: udp stream of {:?} from {from} silent, closed",
                    ctx.name()
                );
            }
        }
        keep
    });
}

/// The UDP side's log throttles: datagrams are cheap to send (and to spoof),
/// so none of their complaints may flood the log.
#[derive(Default)]
struct Logs {
    /// "--max-senders streams open": once a second.
    full: Throttle,
    /// Bad datagrams and bad hellos: once a second per source host (by
    /// address, not port: a new port each time must not get past it).
    bad: Said<std::net::IpAddr>,
    /// Frames before a stream's hello: the same, apart.
    early: Said<std::net::IpAddr>,
    /// Streams opened: once a second per host and sender name (two
    /// cameras on one host are both named).
    opened: Said<(std::net::IpAddr, String)>,
    /// All of the above: at most [`LINES_PER_SECOND`] lines a second in
    /// all (many hosts, or one IPv6 host's many addresses).
    budget: Option<(Instant, u32)>,
}

/// See [`Logs::budget`].
const LINES_PER_SECOND: u32 = 20;

/// When a line was last said for each key (forgotten past 1,024 keys).
struct Said<K>(HashMap<K, Instant>);

impl<K> Default for Said<K> {
    fn default() -> Self {
        Said(HashMap::new())
    }
}

impl<K: std::hash::Hash + Eq> Said<K> {
    /// Whether a line for `key` is due (none in the last second).
    fn due(&self, key: &K) -> bool {
        self.0
            .get(key)
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
    }

    fn said(&mut self, key: K) {
        if self.0.len() >= 1024 {
            self.0.clear();
        }
        self.0.insert(key, Instant::now());
    }

    /// Whether a line for `key` is to be said now (due, and `budget` not
    /// spent); if so, it counts as said.
    fn hit(&mut self, key: K, budget: &mut Option<(Instant, u32)>) -> bool {
        let due = self.due(&key) && spend(budget);
        if due {
            self.said(key);
        }
        due
    }
}

impl Logs {
    /// Whether a bad datagram from `from` is to be logged now.
    fn bad(&mut self, from: SocketAddr) -> bool {
        self.bad.hit(from.ip(), &mut self.budget)
    }

    /// Whether frames before a stream's hello from `from` are to be logged now.
    fn early(&mut self, from: SocketAddr) -> bool {
        self.early.hit(from.ip(), &mut self.budget)
    }

    /// Whether the stream of sender `name` from `from` opening is to be logged now.
    fn opened(&mut self, from: SocketAddr, name: &str) -> bool {
        self.opened
            .hit((from.ip(), name.to_string()), &mut self.budget)
    }
}

/// Takes one line from `budget` ([`Logs::budget`]); false when it is spent.
fn spend(budget: &mut Option<(Instant, u32)>) -> bool {
    match budget {
        Some((at, n)) if at.elapsed() < Duration::from_secs(1) => {
            *n += 1;
            *n <= LINES_PER_SECOND
        }
        other => {
            *other = Some((Instant::now(), 1));
            true
        }
    }
}

fn on_dgram(
    hub: &Arc<Hub>,
    streams: &mut HashMap<(SocketAddr, u32), Stream>,
    logs: &mut Logs,
    from: SocketAddr,
    d: Dgram,
    data: &[u8],
    arrived: Option<SystemTime>,
) {
    let key = (from, d.stream_id);
    if d.kind == KIND_END {
        // (its copies, and the end of a stream never opened, are ignored)
        if let Some(s) = streams.remove(&key) {
            end(s, from, d.sequence);
        }
        return;
    }
    if !streams.contains_key(&key) {
        if streams.len() >= hub.max_conns {
            let quietest = streams
                .iter()
                .filter(|(_, s)| s.delivered.is_none() || s.last_seen.elapsed() > QUIET)
                .min_by_key(|(_, s)| s.last_seen)
                .map(|(k, _)| *k);
            let n = logs.full.hit();
            match quietest {
                Some(k) => {
                    if let Some(n) = n {
                        log::warn!(
                            "udp: {} streams open (--max-senders), forgetting a quiet one from {} \
                             for one from {from}{}",
                            hub.max_conns,
                            k.0,
                            more_like_it(n)
                        );
                    }
                    if let Some(mut s) = streams.remove(&k) {
                        // (its frames in reassembly are counted, not lost
                        // without a word)
                        s.give_up_all("its stream was forgotten for a new one");
                    }
                }
                None => {
                    if let Some(n) = n {
                        log::warn!(
                            "udp: {} streams delivering frames (--max-senders): ignoring a new one \
                             from {from}{}",
                            hub.max_conns,
                            more_like_it(n)
                        );
                    }
                    return;
                }
            }
        }
        streams.insert(
            key,
            Stream {
                ctx: None,
                hold: None,
                reasm: Reassembler::new(),
                last_seen: Instant::now(),
                delivered: None,
                warned_no_hello: false,
                early: Default::default(),
                written: None,
                no_drop: false,
            },
        );
    }
    let s = streams.get_mut(&key).expect("inserted above");
    let now = Instant::now();
    s.last_seen = now;
    if d.kind == KIND_HELLO {
        if s.ctx.is_none() {
            let mut r = FrameReader::new(data, hub.limits);
            match r.read_hello() {
                Ok(Some(h)) => {
                    // Two hosts sending under one name are kept apart, as
                    // over TCP.
                    let (name, _, hold) = hub.name_for(h.name(), from.ip());
                    let s = streams.get_mut(&key).expect("inserted above");
                    s.hold = Some(hold);
                    s.no_drop = h.no_drop();
                    match StreamCtx::open(hub.clone(), &name, &from.to_string(), "udp") {
                        Ok(ctx) => {
                            let kept = if name == h.name() {
                                String::new()
                            } else {
                                format!(" as {name:?}")
                            };
                            let level = if logs.opened(from, h.name()) {
                                log::Level::Info
                            } else {
                                log::Level::Debug
                            };
                            log::log!(
                                level,
                                "state: udp stream from {:?} ({from}) open{kept}",
                                h.name()
                            );
                            s.ctx = Some(ctx);
                        }
                        Err(e) => log::warn!("udp from {from}: {e:#}"),
                    }
                }
                Ok(None) => {
                    if logs.bad(from) {
                        log::warn!("udp from {from}: hello datagram without a hello");
                    }
                }
                Err(e) => {
                    if logs.bad(from) {
                        log::warn!("udp from {from}: bad hello: {e}");
                    }
                }
            }
        }
        return;
    }
    if s.ctx.is_none() {
        if s.early.len() < EARLY_MAX {
            s.early.insert(d.sequence);
        }
        if !s.warned_no_hello && logs.early(from) {
            s.warned_no_hello = true;
            log::info!(
                "udp from {from}: frames before the sender's hello are dropped until it comes \
                 (every second), and counted lost once a frame follows"
            );
        }
        return;
    }
    // (both callbacks count on the stream; a frame given up for a new one
    // gives its memory back before the new one asks for its own)
    let ctx = std::cell::RefCell::new(&mut s.ctx);
    let pushed = s.reasm.push(
        &d,
        data,
        now,
        // (refused for memory: counted and logged there, once: its other
        // datagrams are late)
        |seq, len| {
            ctx.borrow_mut()
                .as_mut()
                .is_some_and(|c| c.admit_datagrams(seq, len))
        },
        |g| gave_up(&mut ctx.borrow_mut(), g, &g.why),
    );
    let whole = match pushed {
        Push::Complete(w) => w,
        Push::TooFar => {
            log::debug!(
                "udp from {from}: frame {} is too far ahead of frame {:?}, the last delivered",
                d.sequence,
                s.reasm.last_delivered()
            );
            return;
        }
        Push::Disagrees => {
            log::debug!(
                "udp from {from}: fragment disagrees with its frame {}",
                d.sequence
            );
            return;
        }
        // (pending, late or a copy, a straggler, refused)
        _ => return,
    };
    let len = whole.frame_len as usize;
    let mut spent = Duration::ZERO;
    // (read in place: no copy of the frame into a reader's buffer)
    let got = bitmask_wire::parse_frame(whole.bytes(), &hub.limits);
    let is_whole = |f: &bitmask_wire::FrameRef| {
        f.header.sequence == whole.sequence && HEADER_LEN + f.payload.len() == len
    };
    if !matches!(&got, Ok(f) if is_whole(f)) {
        s.reasm.forget(whole.sequence); // (its duplicates are not reassembled again)
    }
    let ctx = s.ctx.as_mut().expect("checked above");
    if !s.early.is_empty() {
        // The stream's first frame read: the frames dropped before its
        // hello, numbered below it, were lost. (Counted distinct and
        // capped: a forged early fragment adds one at most.)
        let n = std::mem::take(&mut s.early).range(..whole.sequence).count();
        ctx.dropped_before_hello(n as u64, whole.sequence);
    }
    match got {
        // (damaged: counted corrupt under the number its datagrams say,
        // not also lost in the gap before the next frame)
        Ok(f) if f.header.sequence != whole.sequence => ctx.corrupt_numbered(
            whole.sequence,
            &format_args!(
                "its datagrams say frame {}, its header {}",
                whole.sequence, f.header.sequence
            ),
        ),
        Ok(f) if !is_whole(&f) => ctx.corrupt_numbered(
            whole.sequence,
            &format_args!(
                "frame {}: its datagrams carry {len} bytes, the frame {}",
                whole.sequence,
                HEADER_LEN + f.payload.len()
            ),
        ),
        Ok(f) => {
            // (a frame the data path refuses was still delivered whole)
            s.reasm.delivered(whole.sequence);
            let began = Instant::now();
            s.delivered = Some(began);
            let h = f.header;
            // (refused for memory: counted and logged there)
            // (the outputs behind: decoded, not written; see MAX_LAG. A
            // frame a second at least is written all the same: where the
            // decoding itself cannot keep up, passing frames over gains
            // nothing, and the outputs must not go silent.)
            let write = s.no_drop
                || waited_since(arrived) <= MAX_LAG
                || s.written
                    .is_none_or(|t| began - t >= Duration::from_secs(1));
            if write {
                s.written = Some(began);
            }
            match ctx
                .admit(&h)
                .map(|_| ctx.frame_or_decode(&h, f.payload, write))
            {
                Err(_) => {}
                Ok(Ok(true)) => {}
                // (over UDP only the stop gives a whole frame up: counted,
                // as those still in reassembly are)
                Ok(Ok(false)) => ctx.incomplete(1),
                Ok(Err(e)) => log::warn!("{}: {e:#}", ctx.name()),
            }
            spent = began.elapsed();
        }
        Err(e) => ctx.corrupt_numbered(whole.sequence, &e),
    }
    ctx.reassembled(whole.frame_len);
    s.reasm.recycle(whole.into_buffer());
    // (a frame delivered to a slow output: see `credit`; the clock read
    // once a frame, not once a datagram)
    credit(streams, spent);
}

#[cfg(test)]
mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;
    use bitmask_wire::udp::MAX_GAP;

    fn dgram(index: u16, count: u16, stride: u16, frame_len: u32, data: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; DGRAM_HEADER_LEN];
        b[0..4].copy_from_slice(&DGRAM_MAGIC);
        b[4] = DGRAM_VERSION;
        b[5] = KIND_FRAGMENT;
        b[6..8].copy_from_slice(&index.to_le_bytes());
        b[8..10].copy_from_slice(&count.to_le_bytes());
        b[10..12].copy_from_slice(&stride.to_le_bytes());
        b[12..16].copy_from_slice(&7u32.to_le_bytes());
        b[16..24].copy_from_slice(&3u64.to_le_bytes());
        b[24..28].copy_from_slice(&frame_len.to_le_bytes());
        b.extend_from_slice(data);
        b
    }

    fn datagram(kind: u8, stream: u32, seq: u64, data: &[u8]) -> Vec<u8> {
        let mut b = dgram(0, 1, data.len() as u16, data.len() as u32, data);
        b[5] = kind;
        b[12..16].copy_from_slice(&stream.to_le_bytes());
        b[16..24].copy_from_slice(&seq.to_le_bytes());
        b
    }

    #[test]
    fn a_stream_delivering_frames_is_never_pushed_out() {
        use bitmask_wire::{encode_frame, Header, Hello, CODEC_RAW};
        let hub = test_hub(2);
        let mut streams = HashMap::new();
        let mut logs = Logs::default();
        type Streams = HashMap<(SocketAddr, u32), Stream>;
        let mut feed = |streams: &mut Streams, from: &str, stream: u32, kind: u8, data: &[u8]| {
            let b = datagram(kind, stream, 0, data);
            let (d, data) = parse(&b, &hub.limits).unwrap();
            on_dgram(
                &hub,
                streams,
                &mut logs,
                from.parse().unwrap(),
                d,
                data,
                None,
            );
        };
        let mut frame = Vec::new();
        encode_frame(&Header::new(8, 1, 0, CODEC_RAW, 1), &[0xa5], &mut frame);
        let cam = "10.0.0.1:5000";
        feed(
            &mut streams,
            cam,
            1,
            KIND_HELLO,
            &Hello::new("cam").unwrap().encode(),
        );
        feed(&mut streams, cam, 1, KIND_FRAGMENT, &frame);
        // A flood of new streams from elsewhere: they replace each other
        // (one slot is free for them), never the stream delivering frames.
        for i in 0..100 {
            feed(
                &mut streams,
                "10.0.0.9:7",
                100 + i,
                KIND_HELLO,
                &Hello::new("x").unwrap().encode(),
            );
            assert_eq!(streams.len(), 2);
            assert!(
                streams.contains_key(&(cam.parse().unwrap(), 1)),
                "round {i}"
            );
        }
        // Both slots delivering frames: a new stream is ignored.
        let spam: SocketAddr = "10.0.0.9:7".parse().unwrap();
        let (&k, _) = streams.iter().find(|(k, _)| k.0 == spam).unwrap();
        feed(&mut streams, "10.0.0.9:7", k.1, KIND_FRAGMENT, &frame);
        feed(
            &mut streams,
            "10.0.0.8:1",
            5,
            KIND_HELLO,
            &Hello::new("late").unwrap().encode(),
        );
        assert!(!streams.contains_key(&("10.0.0.8:1".parse().unwrap(), 5)));
        // Once one has sent nothing for QUIET, a new stream may take its place.
        for s in streams.values_mut() {
            s.last_seen -= QUIET + Duration::from_millis(1);
        }
        feed(
            &mut streams,
            "10.0.0.8:1",
            5,
            KIND_HELLO,
            &Hello::new("late").unwrap().encode(),
        );
        assert!(streams.contains_key(&("10.0.0.8:1".parse().unwrap(), 5)));
        assert_eq!(streams.len(), 2);
    }

    /// A hub with no outputs, `max_conns` streams at most.
    fn test_hub(max_conns: usize) -> Arc<Hub> {
        use crate::session::Sinks;
        let (tx, _rx) = std::sync::mpsc::channel();
        let sinks = Sinks {
            shared: None,
            per_sender: None,
        };
        Hub::new(
            Limits::default(),
            Duration::from_secs(10),
            sinks,
            None,
            max_conns,
            tx,
        )
    }

    /// `frame` cut into datagrams of `stride` data bytes, as the sender does.
    fn fragments(frame: &[u8], stream_id: u32, sequence: u64, stride: usize) -> Vec<Vec<u8>> {
        let count = frame.len().div_ceil(stride) as u16;
        frame
            .chunks(stride)
            .enumerate()
            .map(|(i, chunk)| {
                let mut b = Dgram {
                    kind: KIND_FRAGMENT,
                    index: i as u16,
                    count,
                    stride: stride as u16,
                    stream_id,
                    sequence,
                    frame_len: frame.len() as u32,
                }
                .encode()
                .to_vec();
                b.extend_from_slice(chunk);
                b
            })
            .collect()
    }

    /// A raw `w`x`h` frame numbered `sequence`, its bits from `seed`.
    fn raw_frame(w: u32, h: u32, sequence: u64, seed: u8) -> Vec<u8> {
        use bitmask_wire::{encode_frame, Header, CODEC_RAW};
        let len = (w.div_ceil(8) * h) as usize;
        let payload: Vec<u8> = (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect();
        let mut frame = Vec::new();
        encode_frame(
            &Header::new(w, h, sequence, CODEC_RAW, len as u32),
            &payload,
            &mut frame,
        );
        frame
    }

    /// A hub with its UDP streams and log throttles, fed datagrams from one address.
    struct Bed {
        hub: Arc<Hub>,
        streams: HashMap<(SocketAddr, u32), Stream>,
        logs: Logs,
        from: SocketAddr,
        /// How much later than the clock [`Bed::sweep`] runs ([`Bed::age`]).
        ahead: Duration,
    }

    impl Bed {
        /// Every frame in reassembly, at the next [`Bed::sweep`], as if its
        /// last datagram came `by` earlier.
        fn age(&mut self, by: Duration) {
            self.ahead += by;
        }

        /// `serve_udp`'s sweep, [`Bed::age`] later than the clock (then
        /// nothing is aged any more).
        fn sweep(&mut self) {
            sweep(&self.hub, &mut self.streams, Instant::now() + self.ahead);
            self.ahead = Duration::ZERO;
        }

        fn new() -> Bed {
            Bed {
                hub: test_hub(4),
                streams: HashMap::new(),
                logs: Logs::default(),
                from: "10.0.0.1:5000".parse().unwrap(),
                ahead: Duration::ZERO,
            }
        }

        fn feed(&mut self, b: &[u8]) {
            let (d, data) = parse(b, &self.hub.limits).unwrap();
            on_dgram(
                &self.hub,
                &mut self.streams,
                &mut self.logs,
                self.from,
                d,
                data,
                None,
            );
        }

        /// The hello of stream `stream_id`, sender `name`.
        fn hello(&mut self, stream_id: u32, name: &str) {
            let hello = bitmask_wire::Hello::new(name).unwrap().encode();
            let mut h = fragments(&hello, stream_id, 0, hello.len()).remove(0);
            h[5] = KIND_HELLO;
            self.feed(&h);
        }

        fn stream(&self, stream_id: u32) -> &Stream {
            &self.streams[&(self.from, stream_id)]
        }
    }

    #[test]
    fn streams_of_one_name_from_two_hosts_are_kept_apart() {
        let mut bed = Bed::new();
        bed.hello(1, "twin");
        let other: SocketAddr = "10.0.0.2:5000".parse().unwrap();
        let first = bed.from;
        bed.from = other;
        bed.hello(3, "twin");
        bed.hello(4, "solo");
        // the first host's sender restarted: still its name
        bed.from = first;
        bed.hello(5, "twin");
        let name = |bed: &Bed, from, id| {
            bed.streams[&(from, id)]
                .ctx
                .as_ref()
                .map(|c| c.name().to_owned())
        };
        assert_eq!(name(&bed, first, 1).as_deref(), Some("twin"));
        assert_eq!(name(&bed, other, 3).as_deref(), Some("twin@10.0.0.2"));
        assert_eq!(name(&bed, other, 4).as_deref(), Some("solo"));
        assert_eq!(name(&bed, first, 5).as_deref(), Some("twin"));
    }

    #[test]
    fn frames_over_the_cap_are_counted_once_each_as_corrupt() {
        let mut bed = Bed::new();
        bed.hello(7, "big");
        let cap = HEADER_LEN as u32 + bed.hub.limits.max_payload;
        let fragment = |sequence: u64, index: u16| {
            let (stride, frame_len) = (1000u16, cap + 1);
            let mut b = Dgram {
                kind: KIND_FRAGMENT,
                index,
                count: frame_len.div_ceil(stride as u32) as u16,
                stride,
                stream_id: 7,
                sequence,
                frame_len,
            }
            .encode()
            .to_vec();
            b.extend_from_slice(&[0; 1000]);
            b
        };
        assert!(parse(&fragment(0, 0), &bed.hub.limits).is_err());
        let from = bed.from;
        for (q, i) in [(0, 0), (0, 1), (1, 0), (0, 2), (1, 5)] {
            assert!(over_the_cap(
                &bed.hub,
                &mut bed.streams,
                from,
                &fragment(q, i)
            ));
        }
        // another stream's, or one without a hello: not this receiver's to count
        let other: SocketAddr = "10.0.0.9:1".parse().unwrap();
        assert!(!over_the_cap(
            &bed.hub,
            &mut bed.streams,
            other,
            &fragment(2, 0)
        ));
        let s = crate::stats::lock(&bed.hub.stats.sender("big")).snapshot();
        assert_eq!((s.received, s.corrupt), (0, 2));
        // a frame within the cap is delivered after them
        for d in fragments(&raw_frame(64, 8, 2, 1), 7, 2, 30) {
            bed.feed(&d);
        }
        let s = crate::stats::lock(&bed.hub.stats.sender("big")).snapshot();
        assert_eq!((s.received, s.lost, s.corrupt), (1, 0, 2));
    }

    #[test]
    fn a_stream_per_datagram_pair_does_not_flood_the_log() {
        // A host opening a stream per pair of datagrams (a hello with a new
        // stream id, then a damaged frame, numbered 0 each time): each
        // stream's own throttle allowed a line per pair.
        crate::test_log::capture();
        let mut bed = Bed {
            hub: test_hub(2),
            streams: HashMap::new(),
            logs: Logs::default(),
            from: "10.0.0.77:5000".parse().unwrap(),
            ahead: Duration::ZERO,
        };
        let name = "flood-77";
        for i in 0..200u32 {
            bed.hello(1000 + i, name);
            let mut bad = raw_frame(64, 8, 0, 1);
            bad[HEADER_LEN + 5] ^= 1;
            for d in fragments(&bad, 1000 + i, 0, 30) {
                bed.feed(&d);
            }
        }
        let s = crate::stats::lock(&bed.hub.stats.sender(name)).snapshot();
        assert_eq!(s.corrupt, 200);
        let lines = crate::test_log::lines_with(name);
        let said = lines
            .iter()
            .filter(|(level, l)| *level <= log::Level::Info && l.contains("skipping frame"))
            .count();
        assert!(said <= 2, "{said} lines: {lines:#?}");
    }

    #[test]
    fn a_damaged_frame_between_two_is_corrupt_and_not_also_lost() {
        let mut bed = Bed::new();
        bed.hello(7, "cam");
        let deliver = |bed: &mut Bed, q: u64| {
            for d in fragments(&raw_frame(64, 8, q, 1), 7, q, 30) {
                bed.feed(&d);
            }
        };
        deliver(&mut bed, 0);
        // frame 1 over the cap
        let cap = HEADER_LEN as u32 + bed.hub.limits.max_payload;
        let mut b = Dgram {
            kind: KIND_FRAGMENT,
            index: 0,
            count: (cap + 1).div_ceil(1000) as u16,
            stride: 1000,
            stream_id: 7,
            sequence: 1,
            frame_len: cap + 1,
        }
        .encode()
        .to_vec();
        b.extend_from_slice(&[0; 1000]);
        let from = bed.from;
        assert!(over_the_cap(&bed.hub, &mut bed.streams, from, &b));
        deliver(&mut bed, 2);
        // frame 3 damaged past the datagrams (its CRC fails)
        let mut bad = raw_frame(64, 8, 3, 1);
        bad[HEADER_LEN + 5] ^= 1;
        for d in fragments(&bad, 7, 3, 30) {
            bed.feed(&d);
        }
        deliver(&mut bed, 4);
        let s = crate::stats::lock(&bed.hub.stats.sender("cam")).snapshot();
        assert_eq!((s.received, s.corrupt, s.lost), (3, 2, 0));
    }

    #[test]
    fn an_ended_stream_closes_at_once_and_counts_what_never_came() {
        let mut bed = Bed::new();
        bed.hello(4, "cam");
        for q in 0..2 {
            for d in fragments(&raw_frame(64, 8, q, 1), 4, q, 30) {
                bed.feed(&d);
            }
        }
        // frame 2 half there, frames 3 and 4 never
        bed.feed(&fragments(&raw_frame(64, 8, 2, 1), 4, 2, 30)[0]);
        let snap = |bed: &Bed| crate::stats::lock(&bed.hub.stats.sender("cam")).snapshot();
        for _ in 0..3 {
            bed.feed(&Dgram::end(4, 5).encode());
            assert!(!bed.streams.contains_key(&(bed.from, 4)));
            let s = snap(&bed);
            assert_eq!(
                (s.received, s.lost, s.incomplete, s.connected),
                (2, 3, 1, false)
            );
        }
        // the end of a stream never opened leaves no trace
        bed.feed(&Dgram::end(99, 7).encode());
        assert!(bed.streams.is_empty());
        // a stream that ends right after its last frame lost nothing
        bed.hello(5, "two");
        for d in fragments(&raw_frame(64, 8, 0, 1), 5, 0, 30) {
            bed.feed(&d);
        }
        bed.feed(&Dgram::end(5, 1).encode());
        let s = crate::stats::lock(&bed.hub.stats.sender("two")).snapshot();
        assert_eq!((s.received, s.lost, s.connected), (1, 0, false));
    }

    #[test]
    fn datagrams_of_a_frame_over_the_memory_budget_make_no_buffer() {
        let mut bed = Bed::new();
        bed.hub.memory.set_limit(1 << 20);
        bed.hello(1, "cam");
        // one datagram of a 2 MiB frame (within --max-size): no 2 MiB
        // buffer, the frame counted incomplete once
        let big = raw_frame(4096, 4096, 0, 1);
        let d = fragments(&big, 1, 0, 1400);
        bed.feed(&d[0]);
        bed.feed(&d[1]);
        assert_eq!(bed.stream(1).reasm.pending().count(), 0);
        let s = crate::stats::lock(&bed.hub.stats.sender("cam")).snapshot();
        assert_eq!(s.incomplete, 1);
        // a frame that fits is reassembled and delivered
        for d in fragments(&raw_frame(64, 8, 1, 1), 1, 1, 30) {
            bed.feed(&d);
        }
        let s = crate::stats::lock(&bed.hub.stats.sender("cam")).snapshot();
        assert_eq!((s.received, s.incomplete), (1, 1));
        // frames out of reassembly hold nothing of it: handled, or given up
        let held = |bed: &Bed| bed.stream(1).ctx.as_ref().unwrap().reassembly;
        assert_eq!(held(&bed), 0);
        let free = bed.hub.memory.free();
        bed.feed(&fragments(&raw_frame(64, 8, 2, 1), 1, 2, 30)[0]);
        assert_eq!(held(&bed), raw_frame(64, 8, 2, 1).len() as u64);
        assert!(bed.hub.memory.free() < free);
        bed.streams
            .get_mut(&(bed.from, 1))
            .unwrap()
            .give_up_all("test");
        assert_eq!(held(&bed), 0);
        assert_eq!(bed.hub.memory.free(), free);
    }

    #[test]
    fn time_spent_writing_a_frame_is_not_another_streams_silence() {
        // Stream 1's frame half there; stream 2's frame completes and its
        // output blocks 400 ms (a slow card, --sync); stream 1's last
        // datagram waited in the socket meanwhile.
        let mut bed = Bed::new();
        bed.hello(1, "a");
        bed.hello(2, "b");
        let a = fragments(&raw_frame(64, 8, 0, 1), 1, 0, 30);
        bed.feed(&a[0]);
        for d in fragments(&raw_frame(64, 8, 0, 2), 2, 0, 30) {
            bed.feed(&d);
        }
        let spent = Duration::from_millis(400);
        bed.age(spent); // (as if the write had taken it)
        credit(&mut bed.streams, spent);
        bed.sweep();
        for d in &a[1..] {
            bed.feed(d);
        }
        let s = crate::stats::lock(&bed.hub.stats.sender("a")).snapshot();
        assert_eq!((s.received, s.incomplete, s.lost), (1, 0, 0));
        // without the credit the frame was given up: the sweep still does
        // give up a frame whose datagrams stopped
        bed.feed(&fragments(&raw_frame(64, 8, 1, 1), 1, 1, 30)[0]);
        bed.age(FRAGMENT_GAP + Duration::from_millis(1));
        credit(&mut bed.streams, Duration::from_millis(5)); // (not a slow write)
        bed.sweep();
        let s = crate::stats::lock(&bed.hub.stats.sender("a")).snapshot();
        assert_eq!(s.incomplete, 1);
    }

    #[test]
    fn only_a_delivered_frame_makes_older_datagrams_late() {
        let mut bed = Bed::new();
        bed.hello(9, "cam");
        for q in 0..3 {
            for d in fragments(&raw_frame(64, 8, q, 1), 9, q, 30) {
                bed.feed(&d);
            }
        }
        assert_eq!(bed.stream(9).reasm.last_delivered(), Some(2));
        // One datagram numbered 2^64 - 1 (of a frame of three), never
        // completed, given up after its 250 ms.
        let lone = fragments(&raw_frame(64, 8, 0, 2), 9, u64::MAX, 30).remove(1);
        bed.feed(&lone);
        bed.age(FRAGMENT_GAP + Duration::from_millis(1));
        bed.sweep();
        assert_eq!(bed.stream(9).reasm.pending().count(), 0);
        // The frames after it are delivered; its late datagrams are not
        // reassembled again.
        for q in 3..6 {
            for d in fragments(&raw_frame(64, 8, q, 3), 9, q, 30) {
                bed.feed(&d);
            }
        }
        assert_eq!(bed.stream(9).reasm.last_delivered(), Some(5));
        bed.feed(&lone);
        assert_eq!(bed.stream(9).reasm.pending().count(), 0);
        // A frame whose datagrams say another number than its header is
        // not delivered, and moves nothing.
        for d in fragments(&raw_frame(64, 8, 7, 4), 9, 6, 30) {
            bed.feed(&d);
        }
        assert_eq!(bed.stream(9).reasm.last_delivered(), Some(5));
        assert!(bed.stream(9).reasm.late(6));
        for d in fragments(&raw_frame(64, 8, 7, 4), 9, 7, 30) {
            bed.feed(&d);
        }
        assert_eq!(bed.stream(9).reasm.last_delivered(), Some(7));
        // A whole frame in one datagram (a valid CRC is no proof of its
        // sender) more than MAX_GAP ahead of the last delivered: ignored.
        let one = |stream: u32, q: u64| fragments(&raw_frame(8, 1, q, 5), stream, q, 100).remove(0);
        bed.feed(&one(9, 8 + MAX_GAP));
        assert_eq!(bed.stream(9).reasm.last_delivered(), Some(7));
        bed.feed(&one(9, 8));
        assert_eq!(bed.stream(9).reasm.last_delivered(), Some(8));
        // A stream whose first frame was such a one: its own frames, more
        // than MAX_GAP below it, are a new numbering, not late. (Within
        // MAX_GAP they would be: UDP is not authenticated, and a sender's
        // address and stream id are enough to inject frames.)
        bed.hello(10, "cam");
        bed.feed(&one(10, u64::MAX - 1));
        bed.feed(&one(10, 0));
        assert_eq!(bed.stream(10).reasm.last_delivered(), Some(0));
        // Bytes after the frame in its datagrams: corrupt, not delivered.
        let mut long = raw_frame(8, 1, 10, 5);
        long.extend_from_slice(&[0xee; 5]);
        bed.feed(&fragments(&long, 9, 10, 100).remove(0));
        assert_eq!(bed.stream(9).reasm.last_delivered(), Some(8));
        assert!(bed.stream(9).reasm.late(10));
        // Reassembly full (frames 20-22 half there): a straggler older than
        // all of them is ignored, not let in by giving up frame 20.
        for q in 20..23 {
            bed.feed(&fragments(&raw_frame(64, 8, q, 6), 9, q, 30)[0]);
        }
        bed.feed(&fragments(&raw_frame(64, 8, 15, 6), 9, 15, 30)[0]);
        let mut held: Vec<u64> = bed.stream(9).reasm.pending().collect();
        held.sort();
        assert_eq!(held, [20, 21, 22]);
    }

    #[test]
    fn frames_dropped_before_the_hello_count_as_lost() {
        // A receiver that starts while a sender streams (or whose first
        // hello was lost): frames 4 and 5 come before the hello and are
        // dropped; frame 6 is the first delivered. 4 and 5 are lost.
        let mut bed = Bed::new();
        for q in [5, 4] {
            for d in fragments(&raw_frame(64, 8, q, 1), 3, q, 30) {
                bed.feed(&d);
            }
        }
        bed.hello(3, "late");
        for d in fragments(&raw_frame(64, 8, 6, 1), 3, 6, 30) {
            bed.feed(&d);
        }
        let s = crate::stats::lock(&bed.hub.stats.sender("late")).snapshot();
        assert_eq!((s.received, s.lost), (1, 2));
        // a sender whose hello came first loses nothing so
        bed.hello(4, "early");
        for q in 7..9 {
            for d in fragments(&raw_frame(64, 8, q, 1), 4, q, 30) {
                bed.feed(&d);
            }
        }
        let s = crate::stats::lock(&bed.hub.stats.sender("early")).snapshot();
        assert_eq!((s.received, s.lost), (2, 0));
        // A forged early fragment numbered far below: one frame more, not
        // the whole span.
        bed.feed(&fragments(&raw_frame(64, 8, 0, 9), 5, 0, 30)[0]);
        for q in [1000, 1001] {
            bed.feed(&fragments(&raw_frame(64, 8, q, 1), 5, q, 30)[0]);
        }
        bed.hello(5, "forged");
        for d in fragments(&raw_frame(64, 8, 1002, 1), 5, 1002, 30) {
            bed.feed(&d);
        }
        let s = crate::stats::lock(&bed.hub.stats.sender("forged")).snapshot();
        assert_eq!((s.received, s.lost), (1, 3));
        // A new stream of "late" whose numbering goes on from its frame 6:
        // frame 7, dropped before the hello, is counted once, by the gap.
        bed.feed(&fragments(&raw_frame(64, 8, 7, 1), 6, 7, 30)[0]);
        bed.hello(6, "late");
        for d in fragments(&raw_frame(64, 8, 8, 1), 6, 8, 30) {
            bed.feed(&d);
        }
        let s = crate::stats::lock(&bed.hub.stats.sender("late")).snapshot();
        assert_eq!((s.received, s.lost), (2, 3));
    }

    #[test]
    fn reused_buffers_leave_nothing_stale_in_a_frame() {
        // Reassembly buffers are reused without being cleared: frames of
        // other lengths, their datagrams in reverse order, must still come
        // out whole (their CRC checked: a stale byte would make them corrupt).
        let mut bed = Bed::new();
        bed.hello(9, "cam");
        for (q, (w, hgt)) in [(256, 64), (64, 8), (128, 40), (8, 1), (256, 64)]
            .into_iter()
            .enumerate()
        {
            let q = q as u64;
            let mut ds = fragments(&raw_frame(w, hgt, q, q as u8 * 17), 9, q, 100);
            ds.reverse();
            for d in ds {
                bed.feed(&d);
            }
            assert_eq!(
                bed.stream(9).reasm.last_delivered(),
                Some(q),
                "frame {q}: {w}x{hgt}"
            );
        }
        let s = crate::stats::lock(&bed.hub.stats.sender("cam")).snapshot();
        assert_eq!((s.received, s.incomplete, s.corrupt), (5, 0, 0));
    }

    #[test]
    fn parse_checks_every_field() {
        let l = Limits::for_dimensions(64, 64);
        let ok = dgram(1, 2, 100, 150, &[0; 50]);
        let (d, data) = parse(&ok, &l).unwrap();
        assert_eq!(
            (d.index, d.count, d.sequence, d.stream_id, data.len()),
            (1, 2, 3, 7, 50)
        );
        assert!(parse(&ok[..20], &l).unwrap_err().contains("shorter"));
        assert!(parse(&dgram(2, 2, 100, 150, &[0; 50]), &l).is_err());
        assert!(parse(&dgram(0, 3, 100, 150, &[0; 100]), &l)
            .unwrap_err()
            .contains("do not make"));
        assert!(parse(&dgram(0, 2, 100, 150, &[0; 99]), &l)
            .unwrap_err()
            .contains("carries"));
        let huge = dgram(0, 65535, 65535, u32::MAX, &[]);
        assert!(parse(&huge, &l).unwrap_err().contains("cap"));
        let mut bad = ok.clone();
        bad[0] = b'X';
        assert!(parse(&bad, &l).unwrap_err().contains("magic"));
    }
}
