//! `--transport udp`: each wire frame split into datagrams that fit the path
//! MTU, each behind a 28-byte datagram header (docs/PROTOCOL.md, "UDP
//! transport"). No retransmission: a frame missing a datagram is dropped by
//! the receiver after its deadline and shows up there as lost.

use anyhow::{Context, Result};
use bitmask_wire::{Hello, HELLO_NO_DROP};
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use bitmask_wire::udp::{fragments, Datagram, DGRAM_HEADER_LEN};

/// The smallest `--mtu`: IPv4 and UDP headers, the datagram header, 64
/// bytes of frame (IPv6 needs 20 more, checked when connecting).
pub const MIN_MTU: usize = 28 + DGRAM_HEADER_LEN + 64;

/// The hello is repeated this often, frames or not (a thread of the link's):
/// a receiver that starts late learns the name, and a sender of a frame a
/// minute keeps its stream, and the decoder's reference frame, open there.
const HELLO_EVERY: Duration = Duration::from_secs(1);

/// The end datagram's three copies are sent this far apart, the first
/// this long after the last frame.
const END_SPACING: Duration = Duration::from_millis(20);

/// The longest `--rate` may space two full datagrams: a receiver gives up a
/// frame that gets no datagram for 250 ms (its `FRAGMENT_GAP`).
const MAX_SPACING: Duration = Duration::from_millis(100);

/// Refuses a `--rate` that spaces datagrams of `mtu` bytes wider than
/// [`MAX_SPACING`]: every frame of more than one datagram would be lost.
pub fn check_rate(mtu: usize, rate_mbit: f64) -> Result<()> {
    let spacing = mtu as f64 * 8.0 / (rate_mbit * 1e6);
    if spacing <= MAX_SPACING.as_secs_f64() {
        return Ok(());
    }
    let min_rate = mtu as f64 * 8.0 / MAX_SPACING.as_secs_f64() / 1e6;
    let max_mtu = (rate_mbit * 1e6 * MAX_SPACING.as_secs_f64() / 8.0) as usize;
    // (IPv4's minimum; IPv6 needs 20 bytes more, checked when connecting)
    let smaller = if max_mtu >= MIN_MTU {
        format!(", or --mtu {max_mtu} or less")
    } else {
        String::new()
    };
    anyhow::bail!(
        "--rate {rate_mbit} spaces datagrams of --mtu {mtu} bytes {:.1} ms apart, more than the \
         {} ms allowed (a receiver gives up a frame when its next datagram takes over 250 ms): \
         give --rate {:.2} or more{smaller}",
        spacing * 1e3,
        MAX_SPACING.as_millis(),
        (min_rate * 100.0).ceil() / 100.0
    )
}

/// Socket send buffer for datagrams (the kernel doubles it). Small, so a
/// full local queue blocks the sender instead of silently dropping
/// datagrams (which loses whole frames) once the qdisc is full.
const UDP_SNDBUF: usize = 32 << 10;

/// Refusals are logged again after this long, with their count.
const REFUSALS_SAID: Duration = Duration::from_secs(5);
/// A receiver that refused datagrams and then none for this long is
/// taken to listen again (ICMP errors come back within milliseconds).
const REFUSALS_OVER: Duration = Duration::from_secs(2);

/// Spaces datagrams to a bit rate.
struct Pacer {
    ns_per_byte: f64,
    next: Instant,
    /// IP and UDP header bytes per datagram (28 over IPv4, 48 over IPv6),
    /// which count against the link too.
    ip_udp: usize,
}

impl Pacer {
    /// Waits for the link's time for a datagram of `bytes` UDP data bytes.
    fn wait(&mut self, bytes: usize) {
        let ahead = self.book(bytes, Instant::now());
        if ahead > Duration::from_millis(1) {
            std::thread::sleep(ahead);
        }
    }

    /// Books a datagram of `bytes` UDP data bytes at `now`: how long to
    /// wait before sending it.
    fn book(&mut self, bytes: usize, now: Instant) -> Duration {
        if self.next < now {
            self.next = now; // idle time is not saved up as a burst
        }
        let ahead = self.next - now;
        let bytes = bytes + self.ip_udp;
        self.next += Duration::from_nanos((bytes as f64 * self.ns_per_byte) as u64);
        ahead
    }
}

/// A "connected" UDP socket to the receiver.
pub struct UdpLink {
    sock: UdpSocket,
    to: SocketAddr,
    stream_id: u32,
    stride: usize,
    dgram: Vec<u8>,
    refused: Option<Refusals>,
    /// When refusals are said: at once, then [`REFUSALS_SAID`] later,
    /// doubling up to 10 min while they go on (a receiver down for hours
    /// is not a line every 5 s), across episodes (a time-lapse sender
    /// whose frames come further apart than [`REFUSALS_OVER`] to a
    /// receiver that is not running has an episode per frame).
    refusals_said: crate::pipeline::Reminder,
    /// The last refusal ([`KEYS_AFTER_REFUSAL`]).
    last_refusal: Option<Instant>,
    /// A refusal came since the last frame was encoded: the next is a key
    /// frame.
    key_due: bool,
    pacer: Option<Pacer>,
    /// The hello thread: dropping the sender ends it.
    hellos: Option<(std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>)>,
    /// One past the newest frame sent (the end datagram's number).
    next: u64,
}

/// Frames are key frames for this long after a datagram was refused (and
/// the first frame after a refusal is one, however long after): the
/// receiver lost what it carried, and one that has just come back drops
/// frames until its stream's hello (sent every [`HELLO_EVERY`]), so the
/// first frame it keeps must decode alone. (Its host's ICMP messages come
/// about once a second at most, off loopback: the last refusal seen may
/// be a second older than the receiver's return.)
const KEYS_AFTER_REFUSAL: Duration =
    Duration::from_millis(1000 + HELLO_EVERY.as_millis() as u64 + 1500);

/// Datagrams the receiver's host refused (ICMP port unreachable: nobody
/// listens), for the log.
struct Refusals {
    /// The last refusal.
    last: Instant,
    /// The last line about them in this episode, if one was said.
    said: Option<Instant>,
}

/// The hello datagram of stream `stream_id`.
fn hello_dgram(hello: &[u8], stream_id: u32) -> Vec<u8> {
    [&Datagram::hello(stream_id, hello).encode()[..], hello].concat()
}

/// `--mtu` below what UDP needs to the receiver's address (IPv6 headers
/// are 20 bytes longer than IPv4's, so only the address tells): no retry
/// can mend it.
#[derive(Debug)]
pub struct MtuTooSmall {
    mtu: usize,
    to: SocketAddr,
    min: usize,
}

impl std::fmt::Display for MtuTooSmall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "--mtu {} is too small for UDP to {} (minimum {} for an IPv{} address)",
            self.mtu,
            self.to,
            self.min,
            if self.to.is_ipv4() { 4 } else { 6 }
        )
    }
}

impl std::error::Error for MtuTooSmall {}

/// A frame that needs more datagrams than a frame may have (65,535) at
/// this `--mtu`: that frame cannot be sent, whatever the link; the next
/// (smaller, compressed better) may be. Inside the `io::Error` of
/// [`UdpLink::send`](crate::udp::UdpLink::send).
#[derive(Debug)]
pub struct TooManyDatagrams {
    /// The frame's bytes.
    pub len: usize,
    /// The datagrams it would need.
    pub count: usize,
}

impl std::fmt::Display for TooManyDatagrams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "a frame of {} B needs {} datagrams at this --mtu (at most 65535): raise --mtu",
            self.len, self.count
        )
    }
}

impl std::error::Error for TooManyDatagrams {}

impl TooManyDatagrams {
    /// Whether `e` is one.
    pub fn is(e: &io::Error) -> bool {
        e.get_ref().is_some_and(|r| r.is::<TooManyDatagrams>())
    }
}

/// The address of a name's several that datagrams go to: the first IPv4
/// one, else the first. There is no handshake to try each with, as TCP
/// does: `localhost` is `::1` first on most systems, where a receiver
/// listening on `0.0.0.0` (its examples) refuses every datagram, while one
/// on `[::]` takes IPv4 too.
fn pick_address(addr: &str, all: Vec<SocketAddr>) -> Result<SocketAddr> {
    let to = all
        .iter()
        .copied()
        .find(SocketAddr::is_ipv4)
        .or(all.first().copied())
        .with_context(|| format!("{addr:?} resolved to no address"))?;
    if all.len() > 1 {
        log::debug!("{addr} is {all:?}: datagrams go to {to}");
    }
    Ok(to)
}

impl UdpLink {
    /// Resolves `addr` and prepares datagrams of at most `mtu` bytes (IP header included).
    /// `no_drop`: the sender drops no frame (a batch, `--no-drop`), said in
    /// the hello ([`HELLO_NO_DROP`]): the receiver then writes every frame,
    /// however late.
    pub fn connect(
        addr: &str,
        name: &str,
        mtu: usize,
        rate_mbit: Option<f64>,
        no_drop: bool,
    ) -> Result<Self> {
        let to = pick_address(addr, crate::net::resolve(addr)?)?;
        let local: SocketAddr = if to.is_ipv4() {
            "0.0.0.0:0".parse().unwrap()
        } else {
            "[::]:0".parse().unwrap()
        };
        // (before the socket: a setting no retry mends, whatever connect says)
        let ip_udp = if to.is_ipv4() { 28 } else { 48 };
        let stride = mtu
            .checked_sub(ip_udp + DGRAM_HEADER_LEN)
            .filter(|s| *s >= 64)
            .ok_or(MtuTooSmall {
                mtu,
                to,
                min: ip_udp + DGRAM_HEADER_LEN + 64,
            })?
            .min(u16::MAX as usize);
        let sock = UdpSocket::bind(local).context("binding a UDP socket")?;
        sock.connect(to)
            .with_context(|| format!("cannot reach {to} over UDP"))?;
        socket2::SockRef::from(&sock).set_send_buffer_size(UDP_SNDBUF)?;
        let hello = Hello::new(name)
            .with_context(|| format!("sender name {name:?}"))?
            .with_flags(if no_drop { HELLO_NO_DROP } else { 0 })
            .encode();
        let stream_id = stream_id();
        let hello = hello_dgram(&hello, stream_id);
        // Refusals (ICMP port unreachable) are queued with the datagram
        // they refused, so that a refused frame is told from a refused
        // hello (refused_frames).
        errqueue::enable(&sock, to.is_ipv4());
        // The first hello before any frame, the others from a thread, every
        // HELLO_EVERY until the link is dropped. (Its errors are ignored:
        // the frames' datagrams report an unreachable receiver, and the
        // error queue which datagrams were refused.)
        let hello_sock = sock.try_clone().context("cloning the UDP socket")?;
        let send_hello = move || {
            let _ = hello_sock.send(&hello);
        };
        send_hello();
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("udp-hello".into())
            .spawn(move || {
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(HELLO_EVERY)
                {
                    send_hello();
                }
            })
            .context("starting the UDP hello thread")?;
        Ok(UdpLink {
            sock,
            to,
            stream_id,
            stride,
            dgram: Vec::with_capacity(DGRAM_HEADER_LEN + stride),
            refused: None,
            refusals_said: crate::pipeline::Reminder::after(REFUSALS_SAID),
            last_refusal: None,
            key_due: false,
            pacer: rate_mbit.map(|r| Pacer {
                ns_per_byte: 8.0 * 1e3 / r,
                next: Instant::now(),
                ip_udp,
            }),
            hellos: Some((stop, thread)),
            next: 0,
        })
    }

    /// A datagram was refused (ICMP port unreachable, reported on a later
    /// send: this link's or the hello thread's).
    fn note_refusal(&mut self) {
        let now = Instant::now();
        self.last_refusal = Some(now);
        self.key_due = true;
        let say = self.refusals_said.hit();
        match &mut self.refused {
            None => {
                let (level, again) = match say {
                    Some(n) => (log::Level::Warn, crate::pipeline::said_again(n)),
                    None => (log::Level::Debug, String::new()),
                };
                log::log!(
                    level,
                    "state: receiver {} refuses datagrams (not running?); sending on{again}",
                    self.to
                );
                self.refused = Some(Refusals {
                    last: now,
                    said: say.map(|_| now),
                });
            }
            Some(r) => {
                r.last = now;
                if let Some(passed) = say {
                    let since = r.said.map_or(String::new(), |t| {
                        format!(" in the last {} s", (now - t).as_secs())
                    });
                    log::warn!(
                        "state: receiver {} still refuses datagrams: {} refused{since}; \
                         frames sent meanwhile are lost",
                        self.to,
                        passed + 1,
                    );
                    r.said = Some(now);
                }
            }
        }
    }

    /// After a datagram went out: with no refusal for [`REFUSALS_OVER`],
    /// someone listens again (or the ICMP messages stopped coming).
    fn refusals_over(&mut self) {
        if self
            .refused
            .as_ref()
            .is_some_and(|r| r.last.elapsed() > REFUSALS_OVER)
        {
            // (said when the refusals were)
            let level = match self.refused.take() {
                Some(Refusals { said: Some(_), .. }) => log::Level::Info,
                _ => log::Level::Debug,
            };
            log::log!(
                level,
                "state: receiver {} no longer refuses datagrams (none for {} s)",
                self.to,
                REFUSALS_OVER.as_secs()
            );
        }
    }

    fn send_dgram(&mut self) -> io::Result<()> {
        if let Some(p) = &mut self.pacer {
            p.wait(self.dgram.len());
        }
        let mut retried = false;
        loop {
            match self.sock.send(&self.dgram) {
                Ok(_) => {
                    self.refusals_over();
                    return Ok(());
                }
                // ICMP port unreachable from an earlier datagram: nobody
                // listens (yet). UDP cannot tell when it is back: keep sending.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => self.note_refusal(),
                // An ICMP error about an earlier datagram (a host or net
                // unreachable on the way: with IP_RECVERR every ICMP error
                // is reported so): this one is not sent yet, try it again,
                // once; a second is this send's own (no route here).
                Err(e)
                    if !retried
                        && matches!(
                            e.raw_os_error(),
                            Some(
                                libc::EHOSTUNREACH
                                    | libc::ENETUNREACH
                                    | libc::EHOSTDOWN
                                    | libc::EPROTO
                            )
                        ) =>
                {
                    retried = true;
                }
                // The local queue is full: give the link a moment.
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    std::thread::sleep(Duration::from_micros(200));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends the frame's bytes as fragments.
    pub fn send(&mut self, frame: &[u8], sequence: u64) -> io::Result<()> {
        // (the stride fits a u16: `connect` made it from an --mtu that does)
        let pieces =
            fragments(frame, self.stream_id, sequence, self.stride as u16).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    TooManyDatagrams {
                        len: frame.len(),
                        count: frame.len().div_ceil(self.stride),
                    },
                )
            })?;
        // (a frame begun is one the end datagram counts)
        self.next = self.next.max(sequence.saturating_add(1));
        for (d, chunk) in pieces {
            self.dgram.clear();
            self.dgram.extend_from_slice(&d.encode());
            self.dgram.extend_from_slice(chunk);
            self.send_dgram()?;
        }
        // (the refusals in the error queue are read before the next frame,
        // by take_keyframe_hint, and at the end by finish: once a frame)
        Ok(())
    }
}

impl crate::pipeline::Link for UdpLink {
    fn send_frame(&mut self, frame: &[u8], sequence: u64) -> io::Result<()> {
        self.send(frame, sequence)
    }
    fn take_keyframe_hint(&mut self) -> bool {
        // (the hellos' refusals since the last frame: a sender of a frame
        // every few seconds would otherwise see them only after the next
        // frame went out, as a delta frame the returned receiver cannot
        // decode)
        for _ in 0..errqueue::drain(&self.sock) {
            self.note_refusal();
        }
        std::mem::take(&mut self.key_due)
            || self
                .last_refusal
                .is_some_and(|t| t.elapsed() < KEYS_AFTER_REFUSAL)
    }
    /// Ends the hello thread (a hello after the end datagram would open
    /// the stream again), then sends the end datagram
    /// ([`bitmask_wire::udp::KIND_END`]) three times, [`END_SPACING`] apart
    /// (the receiver then closes the stream at once and counts the frames
    /// below its number that never came), reading the refusals of the last
    /// frames before each and after the last: those whose ICMP message is
    /// back within 80 ms, as on a LAN.
    fn finish(mut self: Box<Self>) {
        if let Some((stop, thread)) = self.hellos.take() {
            drop(stop);
            let _ = thread.join();
        }
        let end = Datagram::end(self.stream_id, self.next).encode();
        for _ in 0..3 {
            std::thread::sleep(END_SPACING);
            // (the end datagrams' own refusals name no frame)
            errqueue::drain(&self.sock);
            // (a refusal or an unreachable host: nothing more to tell it)
            let _ = self.sock.send(&end);
        }
        std::thread::sleep(END_SPACING);
        errqueue::drain(&self.sock);
    }
}

/// The distinct frames (sequence numbers) whose datagrams the receiver's
/// host refused, as far as its ICMP messages told (the kernel sends at
/// most about one a second to a host after a short burst, so frames may be
/// lost without one). Process-wide: a sender has one receiver.
/// (A count, and the last few numbers counted: a frame's datagrams may
/// be refused more than once, and numbers only repeat for a frame sent
/// again soon after.)
static REFUSED: std::sync::Mutex<(u64, std::collections::VecDeque<u64>)> =
    std::sync::Mutex::new((0, std::collections::VecDeque::new()));

/// How many frames the receiver's host refused ([`REFUSED`]).
pub fn refused_frames() -> u64 {
    REFUSED.lock().unwrap_or_else(|e| e.into_inner()).0
}

fn note_refused_frame(sequence: u64) {
    let mut r = REFUSED.lock().unwrap_or_else(|e| e.into_inner());
    if !r.1.contains(&sequence) {
        r.0 += 1;
        if r.1.len() == 64 {
            r.1.pop_front();
        }
        r.1.push_back(sequence);
    }
}

/// The socket's error queue (Linux `IP_RECVERR`): each refused datagram's
/// ICMP message comes back with the datagram's first bytes, so its header
/// says whether it carried a frame (and which) or a hello.
#[cfg(target_os = "linux")]
mod errqueue {
    use bitmask_wire::udp::{Datagram, KIND_FRAGMENT};
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    pub fn enable(sock: &UdpSocket, ipv4: bool) {
        // (an IPv6 socket to an IPv4-mapped address gets ICMPv4 errors:
        // it needs IP_RECVERR too, which then queues them as IPv6's)
        let mut opts = vec![(libc::IPPROTO_IP, libc::IP_RECVERR)];
        if !ipv4 {
            opts.push((libc::IPPROTO_IPV6, libc::IPV6_RECVERR));
        }
        for (level, opt) in opts {
            let one: libc::c_int = 1;
            // SAFETY: a valid socket and a c_int option of its size.
            let r = unsafe {
                libc::setsockopt(
                    sock.as_raw_fd(),
                    level,
                    opt,
                    (&one as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if r != 0 {
                log::debug!(
                    "no UDP error queue ({level}/{opt}): {}: refused frames are not counted",
                    std::io::Error::last_os_error()
                );
            }
        }
    }

    /// Reads every queued error, noting the frames refused; returns how
    /// many refusals (of any datagram) it read.
    pub fn drain(sock: &UdpSocket) -> u64 {
        let mut refusals = 0;
        loop {
            let mut data = [0u8; 64];
            let mut ctrl = [0u64; 64]; // (aligned for cmsghdr)
            let mut iov = libc::iovec {
                iov_base: data.as_mut_ptr().cast(),
                iov_len: data.len(),
            };
            // SAFETY: zeroed msghdr is valid; its pointers are set below
            // to buffers that outlive the call.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = ctrl.as_mut_ptr().cast();
            msg.msg_controllen = std::mem::size_of_val(&ctrl) as _;
            // SAFETY: msg points to valid buffers of the given lengths.
            let n = unsafe {
                libc::recvmsg(
                    sock.as_raw_fd(),
                    &mut msg,
                    libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                return refusals; // (EAGAIN: the queue is empty)
            }
            let mut refused = false;
            // SAFETY: the CMSG macros walk the control buffer recvmsg filled.
            unsafe {
                let mut c = libc::CMSG_FIRSTHDR(&msg);
                while !c.is_null() {
                    let h = &*c;
                    let whole = h.cmsg_len as usize
                        >= libc::CMSG_LEN(std::mem::size_of::<libc::sock_extended_err>() as u32)
                            as usize;
                    if whole
                        && ((h.cmsg_level == libc::SOL_IP && h.cmsg_type == libc::IP_RECVERR)
                            || (h.cmsg_level == libc::SOL_IPV6
                                && h.cmsg_type == libc::IPV6_RECVERR))
                    {
                        let e: libc::sock_extended_err =
                            std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                        refused |= e.ee_errno == libc::ECONNREFUSED as u32;
                    }
                    c = libc::CMSG_NXTHDR(&msg, c);
                }
            }
            refusals += refused as u64;
            let d = &data[..(n as usize).min(data.len())];
            match Datagram::parse_header(d) {
                Ok(h) if refused && h.kind == KIND_FRAGMENT => {
                    super::note_refused_frame(h.sequence)
                }
                _ => {}
            }
        }
    }
}

/// Without Linux's error queue no refused frame is counted.
#[cfg(not(target_os = "linux"))]
mod errqueue {
    pub fn enable(_: &std::net::UdpSocket, _: bool) {}
    pub fn drain(_: &std::net::UdpSocket) -> u64 {
        0
    }
}

/// A stream id that differs between sender runs (and between senders on one host).
fn stream_id() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let x = t ^ ((std::process::id() as u64) << 32) ^ 0x9e37_79b9_7f4a_7c15;
    let x = (x ^ (x >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
    (x ^ (x >> 29)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_go_to_a_names_first_ipv4_address() {
        let a = |s: &str| -> SocketAddr { s.parse().unwrap() };
        // `localhost` as most systems list it: a receiver on 0.0.0.0 takes this
        let to = pick_address("localhost:5000", vec![a("[::1]:5000"), a("127.0.0.1:5000")]);
        assert_eq!(to.unwrap(), a("127.0.0.1:5000"));
        let to = pick_address("h:1", vec![a("[fe80::2]:1"), a("[::3]:1")]);
        assert_eq!(to.unwrap(), a("[fe80::2]:1"));
        let e = pick_address("h:1", vec![]).unwrap_err().to_string();
        assert!(e.contains("\"h:1\" resolved to no address"), "{e}");
    }

    #[test]
    fn refusals_that_come_and_go_are_said_at_longer_intervals() {
        // A time-lapse sender to a receiver that is not running: its
        // frames come further apart than REFUSALS_OVER, so each meets the
        // refusals anew. Two lines a frame before, for as long as it lasted.
        crate::test_log::capture();
        let port = {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            s.local_addr().unwrap().port()
        };
        let mut l = UdpLink::connect(&format!("127.0.0.1:{port}"), "t", 1500, None, false).unwrap();
        let to = l.to.to_string();
        for _ in 0..20 {
            l.note_refusal();
            let r = l.refused.as_mut().unwrap();
            r.last -= REFUSALS_OVER + Duration::from_millis(1);
            l.refusals_over();
            assert!(l.refused.is_none());
        }
        let lines = crate::test_log::lines_with(&to);
        let said = |what: &str| {
            lines
                .iter()
                .filter(|(level, l)| *level <= log::Level::Info && l.contains(what))
                .count()
        };
        // the first episode only: the reminder's next line is 5 s on
        assert_eq!(said("refuses datagrams (not running?)"), 1, "{lines:#?}");
        assert_eq!(said("no longer refuses"), 1, "{lines:#?}");
        // each still at debug level
        assert!(lines.len() >= 40, "{lines:#?}");
    }

    #[test]
    fn after_refused_hellos_the_next_frames_are_key_frames() {
        // A receiver not running (its port closed): the hellos are
        // refused. A slow sender's next frame must be a key frame, before
        // any frame of its own was refused (the receiver may be back by
        // then, and keep that frame).
        let port = {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            s.local_addr().unwrap().port()
        };
        let mut l = UdpLink::connect(&format!("127.0.0.1:{port}"), "t", 1500, None, false).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        use crate::pipeline::Link;
        if cfg!(target_os = "linux") {
            assert!(l.take_keyframe_hint(), "the refused hello is not seen");
        }
        // The first frame after a refusal however long ago, then no more
        // (the hellos stopped: none refused meanwhile).
        if let Some((stop, thread)) = l.hellos.take() {
            drop(stop);
            thread.join().unwrap();
        }
        l.note_refusal();
        l.last_refusal = Some(Instant::now() - KEYS_AFTER_REFUSAL - Duration::from_secs(60));
        assert!(l.take_keyframe_hint());
        let _ = errqueue::drain(&l.sock);
        l.last_refusal = Some(Instant::now() - KEYS_AFTER_REFUSAL - Duration::from_secs(60));
        l.key_due = false;
        assert!(!l.take_keyframe_hint());
    }

    #[test]
    fn the_pace_counts_the_ip_headers_of_the_address() {
        // 10 Mbit/s: 1 µs of link a bit; 1,000 datagrams of 100 data bytes
        // are 128,000 (IPv4) or 148,000 (IPv6) bytes on the link
        for (ip_udp, ms) in [(28, 102.4), (48, 118.4)] {
            let t0 = Instant::now();
            let mut p = Pacer {
                ns_per_byte: 8.0 * 1e3 / 10.0,
                next: t0,
                ip_udp,
            };
            // (all booked at once: the wait before the 1,001st)
            for _ in 0..1000 {
                p.book(100, t0);
            }
            let got = p.book(100, t0).as_secs_f64() * 1e3;
            assert!((got - ms).abs() < 0.01, "{ip_udp}: {got} ms");
        }
    }

    #[test]
    fn a_rate_that_spaces_datagrams_past_the_receivers_gap_is_refused() {
        let e = check_rate(1500, 0.02).unwrap_err().to_string();
        assert!(
            e.contains("600.0 ms apart, more than the 100 ms allowed"),
            "{e}"
        );
        assert!(e.contains("--rate 0.12 or more"), "{e}");
        assert!(e.contains("--mtu 250 or less"), "{e}");
        check_rate(1500, 0.12).unwrap();
        check_rate(576, 0.05).unwrap();
        // just above the limit: not shown as "100 ms"
        let e = check_rate(1500, 0.1199).unwrap_err().to_string();
        assert!(e.contains("100.1 ms apart"), "{e}");
        // the smallest --mtu is suggested while it is enough
        let e = check_rate(1500, 0.01).unwrap_err().to_string();
        assert!(e.contains("--mtu 125 or less"), "{e}");
        let e = check_rate(1500, 0.009).unwrap_err().to_string();
        assert!(!e.contains("or less"), "{e}");
    }
}
