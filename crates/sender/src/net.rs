//! The TCP side of the sender: connect, handshake, write whole frames.

use anyhow::{Context, Result};
use bitmask_wire::{AckReader, Hello, HELLO_ACKS, HELLO_RESUME};
use socket2::{SockRef, TcpKeepalive};
use std::cell::Cell;
use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// Unsent bytes the kernel may hold for us (`TCP_NOTSENT_LOWAT`): about one
/// 1024x768 mask. Bytes in flight (sent, not yet acknowledged) are not
/// limited, so throughput is kept, but frames cannot pile up in the socket
/// buffer behind a slow link: they wait (and get replaced) in the sender's
/// queue instead, which keeps latency bounded.
const NOTSENT_LOWAT: i32 = 128 << 10;

/// How often a sender waiting for a slow receiver says so, at most.
pub const SLOW_NOTE: Duration = Duration::from_secs(10);

/// How long a receiver whose host answers (its output behind) is waited
/// for, taking no data or confirming no frame, before the link counts as
/// lost after all (`--timeout` when longer).
pub const SLOW_LIMIT: Duration = Duration::from_secs(10);

/// `TCP_ESTABLISHED` of the kernel's `tcpi_state`.
const TCP_ESTABLISHED: u8 = 1;

/// This host's name (for the stream handshake), or "sender".
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "sender".into())
}

/// Resolves `HOST:PORT`. When the C library cannot, as a static (musl)
/// build cannot resolve mDNS names such as `pi2.local`, asks the system's
/// `getent ahosts HOST`, which uses the host's own resolver set-up
/// (nss-mdns on Raspberry Pi OS).
pub fn resolve(addr: &str) -> Result<Vec<SocketAddr>> {
    let err = match addr.to_socket_addrs() {
        Ok(a) => {
            let v: Vec<SocketAddr> = a.collect();
            anyhow::ensure!(!v.is_empty(), "{addr:?} resolved to no address");
            return Ok(v);
        }
        Err(e) => e,
    };
    let Some((host, port)) = addr.rsplit_once(':') else {
        anyhow::bail!("{addr:?} is not HOST:PORT: {err}");
    };
    let Ok(port) = port.parse::<u16>() else {
        anyhow::bail!("{addr:?}: port {port:?} is not a number from 0 to 65535");
    };
    if let Some(a) = scoped_v6(host, port)? {
        return Ok(vec![a]);
    }
    if !host.is_empty() && !host.starts_with('-') {
        if let Some(v) = getent(host, port) {
            log::debug!("{host:?} resolved by getent: {v:?}");
            return Ok(v);
        }
    }
    let hint = if host.ends_with(".local") {
        " (an mDNS name: this build cannot resolve those itself, and `getent ahosts` \
         could not either; give the receiver's IP address, or add the name to /etc/hosts)"
    } else {
        ""
    };
    Err(err).with_context(|| format!("cannot resolve host {host:?} of {addr:?}{hint}"))
}

/// `[fe80::1%eth0]`: an IPv6 link-local address with its interface named
/// (two Pis on one cable and no DHCP have these only; std takes only a
/// number after the `%`). `None` when `host` is no such form.
fn scoped_v6(host: &str, port: u16) -> Result<Option<SocketAddr>> {
    let Some((ip, scope)) = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .and_then(|h| h.split_once('%'))
    else {
        return Ok(None);
    };
    let Ok(ip) = ip.parse::<std::net::Ipv6Addr>() else {
        return Ok(None);
    };
    let id = match scope.parse::<u32>() {
        Ok(n) => n,
        Err(_) => {
            let index = (!scope.is_empty() && !scope.contains('/') && !scope.starts_with('.'))
                .then(|| std::fs::read_to_string(format!("/sys/class/net/{scope}/ifindex")).ok())
                .flatten()
                .and_then(|t| t.trim().parse::<u32>().ok());
            match index {
                Some(n) => n,
                None => anyhow::bail!(
                    "{host}: this host has no network interface {scope:?} (see `ip link`)"
                ),
            }
        }
    };
    Ok(Some(SocketAddr::V6(std::net::SocketAddrV6::new(
        ip, port, 0, id,
    ))))
}

/// `getent ahosts HOST`, given [`GETENT_LIMIT`] (an mDNS lookup of a host
/// that is away can hang): its addresses, or `None`.
fn getent(host: &str, port: u16) -> Option<Vec<SocketAddr>> {
    use std::process::{Command, Stdio};
    let mut child = Command::new("getent")
        .args(["ahosts", host])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let t = std::time::Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if t.elapsed() < GETENT_LIMIT => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                log::debug!("getent ahosts {host:?}: no answer in {GETENT_LIMIT:?}");
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
    let out = child.wait_with_output().ok()?;
    let v = getent_addrs(&String::from_utf8_lossy(&out.stdout), port);
    (out.status.success() && !v.is_empty()).then_some(v)
}

/// How long `getent` may take.
const GETENT_LIMIT: Duration = Duration::from_secs(3);

/// The addresses in `getent ahosts` output (first column), each once, in
/// order, IPv4 first (a link-local IPv6 address needs a scope to be used).
fn getent_addrs(out: &str, port: u16) -> Vec<SocketAddr> {
    let mut v: Vec<SocketAddr> = Vec::new();
    for ip in out.lines().filter_map(|l| {
        l.split_whitespace()
            .next()?
            .parse::<std::net::IpAddr>()
            .ok()
    }) {
        let a = SocketAddr::new(ip, port);
        if !v.contains(&a) {
            v.push(a);
        }
    }
    v.sort_by_key(|a| a.is_ipv6()); // stable: the order within each family stays
    v
}

/// One persistent connection to a receiver.
pub struct Connection {
    stream: TcpStream,
    acks: AckReader,
    /// One past the last frame the receiver confirmed (its newest ack).
    acked: Option<u64>,
    /// The receiver's record this connection follows, from its
    /// acknowledgements (id, started by this connection); `None` while
    /// none came or the receiver does not say.
    record: Option<(u32, bool)>,
    /// The write timeout (`--timeout`).
    timeout: Duration,
    /// When a stalled write last said so (a line per [`SLOW_NOTE`] per
    /// connection, however many frames stall).
    slow_said: Option<Instant>,
    /// Stalled writes are said at debug level ([`Link::set_quiet`]).
    quiet: bool,
    /// When a look at `TCP_INFO` last found the receiver's host answering
    /// (see [`host_answers`]).
    answered_at: Cell<Option<Instant>>,
}

/// How recently the receiver's host must have answered (an acknowledgement
/// came, or a look found it answering) for a look that finds a
/// retransmission under way to count it as answering still.
const ANSWER_GRACE: Duration = Duration::from_secs(1);

/// Whether a TCP connection's peer host answers, from its `TCP_INFO`
/// (`state`, consecutive `retransmits`, unanswered window `probes`,
/// milliseconds since the last acknowledgement came, `last_ack_ms`) and
/// how long ago an earlier look found it answering (`answered_ago`).
///
/// Established, nothing retransmitted and at most one probe unanswered:
/// it answers. A retransmission, or probes, under way are no verdict
/// while an acknowledgement came, or a look found it answering, within
/// [`ANSWER_GRACE`]: a loaded machine's own loopback retransmits at times
/// (its 200 ms timer runs out before the peer's acknowledgement is
/// handled), and one look then took a stalled receiver for a gone one.
fn host_answers(
    state: u8,
    retransmits: u8,
    probes: u8,
    last_ack_ms: u32,
    answered_ago: Option<Duration>,
) -> bool {
    let grace = ANSWER_GRACE.as_millis() as u32;
    state == TCP_ESTABLISHED
        && ((retransmits == 0 && probes <= 1)
            || last_ack_ms < grace
            || answered_ago.is_some_and(|d| d < ANSWER_GRACE))
}

impl Connection {
    /// Connects (trying each resolved address), sets socket options and
    /// sends the hello, asking for acknowledgements; `resume` says that
    /// this connection continues an earlier one of this process (frames it
    /// did not confirm are sent again).
    pub fn connect(addr: &str, name: &str, timeout: Duration, resume: bool) -> Result<Self> {
        let addrs = resolve(addr)?;
        let mut failed = Vec::new();
        for a in &addrs {
            match TcpStream::connect_timeout(a, timeout) {
                Ok(s) => {
                    let stream = s;
                    stream.set_nodelay(true)?;
                    stream.set_write_timeout(Some(timeout))?;
                    set_notsent_lowat(&stream, NOTSENT_LOWAT);
                    let sock = SockRef::from(&stream);
                    sock.set_tcp_keepalive(
                        &TcpKeepalive::new().with_time(Duration::from_secs(10)),
                    )?;
                    log::debug!("connected to {a} as {name:?}");
                    let mut c = Connection {
                        stream,
                        acks: AckReader::default(),
                        acked: None,
                        record: None,
                        timeout,
                        slow_said: None,
                        quiet: false,
                        answered_at: Cell::new(None),
                    };
                    let flags = HELLO_ACKS | if resume { HELLO_RESUME } else { 0 };
                    let hello = Hello::new(name)
                        .with_context(|| format!("sender name {name:?}"))?
                        .with_flags(flags);
                    c.stream
                        .write_all(&hello.encode())
                        .context("sending hello")?;
                    return Ok(c);
                }
                Err(e) => failed.push((a, e)),
            }
        }
        // Each address's error: of a name with an IPv4 and an unroutable
        // IPv6 address, the last alone would hide "connection refused".
        match failed.len() {
            0 => anyhow::bail!("{addr:?} resolved to no address"),
            1 => {
                let (a, e) = failed.pop().expect("one");
                Err(e).with_context(|| format!("cannot connect to {a}"))
            }
            _ => {
                let each: Vec<String> = failed.iter().map(|(a, e)| format!("{a}: {e}")).collect();
                anyhow::bail!("cannot connect to {addr} ({})", each.join("; "))
            }
        }
    }

    /// Writes one whole wire frame.
    ///
    /// A write that stalls for the socket's write timeout (`--timeout`)
    /// fails when the receiver's host stopped answering (a pulled cable, a
    /// host gone: TCP retransmits), and goes on waiting while it answers:
    /// a receiver whose output is behind (a slow SD card, a stalled pipe)
    /// closes its TCP window but is not a lost link, and a new connection
    /// would meet the same full buffers. The wait is logged every
    /// [`SLOW_NOTE`] and lasts [`SLOW_LIMIT`] at most (`--timeout` if
    /// longer); a stop signal ends it.
    ///
    /// A frame whose write takes longer than `--timeout` is said too,
    /// however much of it got in: a blocking write comes back short,
    /// without an error, only when the write timeout ran out with part of
    /// it taken (or a stop signal came). Counting only writes that took
    /// nothing left such waits unsaid: the first write of a frame that
    /// meets full buffers takes part of it, so a closed window was said a
    /// `--timeout` late, one that opened before a second `--timeout` ran
    /// out not at all, nor one that opens a little at a time; and the
    /// confirmations that come once it opens hide the wait from
    /// [`crate::pipeline`]'s note.
    pub fn write_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        let began = Instant::now();
        let mut rest = frame;
        // when the wait began (one write timeout in); whether it was said
        let (mut slow, mut warned): (Option<Instant>, bool) = (None, false);
        while !rest.is_empty() {
            match self.stream.write(rest) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    rest = &rest[n..];
                    if !rest.is_empty()
                        && crate::pipeline::stop_requested().is_none()
                        && self.slow_said.is_none_or(|t| t.elapsed() >= SLOW_NOTE)
                        && self.peer_answers()
                    {
                        // (short: the write timeout ran out, or a signal came)
                        self.slow_said = Some(Instant::now());
                        warned = true;
                        log::log!(
                            self.slow_level(),
                            "state: receiver {} has taken only {} of a {}-byte frame in {:.1} s, \
                             but its host answers: its output or the link is slow; waiting for it",
                            self.peer(),
                            frame.len() - rest.len(),
                            frame.len(),
                            began.elapsed().as_secs_f64()
                        );
                    }
                    if let Some(since) = slow.take() {
                        let level = if std::mem::take(&mut warned) && !self.quiet {
                            log::Level::Info
                        } else {
                            log::Level::Debug
                        };
                        log::log!(
                            level,
                            "state: receiver {} takes data again after {:.1} s",
                            self.peer(),
                            (since.elapsed() + self.timeout).as_secs_f64()
                        );
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) && crate::pipeline::stop_requested().is_none()
                        && self.peer_answers() =>
                {
                    let since = *slow.get_or_insert_with(Instant::now);
                    let stalled = since.elapsed() + self.timeout;
                    if stalled >= SLOW_LIMIT.max(self.timeout) {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!(
                                "the receiver took no data for {:.0} s (its output is \
                                 stalled, or its host went away while its window was closed)",
                                stalled.as_secs_f64()
                            ),
                        ));
                    }
                    if self.slow_said.is_none_or(|t| t.elapsed() >= SLOW_NOTE) {
                        self.slow_said = Some(Instant::now());
                        warned = true;
                        log::log!(
                            self.slow_level(),
                            "state: receiver {} has taken no data for {:.0} s, but its host \
                             answers: its output is behind; waiting for it (up to {} s)",
                            self.peer(),
                            stalled.as_secs_f64(),
                            SLOW_LIMIT.max(self.timeout).as_secs()
                        );
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The level of a stalled write's line.
    fn slow_level(&self) -> log::Level {
        if self.quiet {
            log::Level::Debug
        } else {
            log::Level::Warn
        }
    }

    /// The receiver's address, for log lines.
    fn peer(&self) -> String {
        self.stream
            .peer_addr()
            .map_or_else(|_| "(gone)".into(), |a| a.to_string())
    }

    /// Whether the receiver's host still answers on this connection: the
    /// connection is established, nothing is being retransmitted, and its
    /// closed window (if closed) answers the probes (`TCP_INFO`), or it
    /// answered within the last second ([`host_answers`]). False when that
    /// cannot be read.
    fn peer_answers(&self) -> bool {
        self.peer_verdict().0
    }

    /// [`Connection::peer_answers`], and its reasons in words, from one look.
    fn peer_verdict(&self) -> (bool, String) {
        let Some((i, len)) = self.tcp_info() else {
            return (false, "cannot be asked about (TCP_INFO)".into());
        };
        // (tcpi_last_ack_recv is at bytes 56..60, in every kernel since 2.6)
        let last_ack_ms = if len >= 60 {
            i.tcpi_last_ack_recv
        } else {
            u32::MAX
        };
        let now = Instant::now();
        let ago = self.answered_at.get().map(|t| now.duration_since(t));
        let answers = host_answers(
            i.tcpi_state,
            i.tcpi_retransmits,
            i.tcpi_probes,
            last_ack_ms,
            ago,
        );
        if answers && i.tcpi_retransmits == 0 && i.tcpi_probes <= 1 {
            self.answered_at.set(Some(now));
        }
        let last = match last_ack_ms {
            u32::MAX => String::new(),
            ms => format!(", last acknowledgement {:.1} s ago", f64::from(ms) / 1000.0),
        };
        (
            answers,
            format!(
                "does not answer (TCP state {}, {} retransmission(s), {} window probe(s) \
                 unanswered{last})",
                i.tcpi_state, i.tcpi_retransmits, i.tcpi_probes
            ),
        )
    }

    /// The connection's `TCP_INFO`, when it can be read.
    fn tcp_info(&self) -> Option<(libc::tcp_info, usize)> {
        // SAFETY: tcp_info is plain integers, valid zeroed.
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        // SAFETY: getsockopt on a socket this stream owns, into a live
        // buffer of the length given.
        let r = unsafe {
            libc::getsockopt(
                self.stream.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&mut info as *mut libc::tcp_info).cast(),
                &mut len,
            )
        };
        // (state, retransmits and probes are in every kernel's first 8
        // bytes; tcpi_last_ack_recv is checked against the length read)
        (r == 0 && len >= 8).then_some((info, len as usize))
    }

    /// Flushes and closes the sending side cleanly.
    pub fn finish(self) -> Result<()> {
        self.stream.shutdown(Shutdown::Write).ok();
        Ok(())
    }

    /// Reads what the receiver sent: acknowledgements (kept in `acked`), or
    /// its end. Without `wait` it never blocks; with it, it waits that long
    /// for the first byte. `Some(why)` when the connection is over.
    fn read_acks(&mut self, wait: Option<Duration>) -> Option<String> {
        let mut buf = [0u8; 256];
        let mut wait = wait;
        loop {
            let r = match wait.take() {
                Some(limit) => {
                    let _ = self
                        .stream
                        .set_read_timeout(Some(limit.max(Duration::from_millis(1))));
                    io::Read::read(&mut self.stream, &mut buf)
                }
                None => recv_nowait(&self.stream, &mut buf),
            };
            match r {
                Ok(0) => {
                    return Some(if self.acks.pending() > 0 {
                        "end of stream inside an acknowledgement".into()
                    } else {
                        "end of stream".into()
                    })
                }
                Ok(n) => match self.acks.push(&buf[..n]) {
                    Ok(Some(a)) => {
                        self.acked = Some(self.acked.map_or(a.next, |p| p.max(a.next)));
                        if a.record != 0 {
                            self.record = Some((a.record, a.new_record));
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        return Some(format!(
                            "it sent something other than acknowledgements: {e}"
                        ))
                    }
                },
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) =>
                {
                    return None
                }
                Err(e) => return Some(e.to_string()),
            }
        }
    }
}

/// One `recv` that does not block (`MSG_DONTWAIT`), leaving the socket as it is.
fn recv_nowait(stream: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: recv into a live, writable buffer of the length given, on a
    // socket this stream owns.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

impl crate::pipeline::Link for Connection {
    fn send_frame(&mut self, frame: &[u8], _sequence: u64) -> io::Result<()> {
        self.write_frame(frame)
    }
    fn closed_by_peer(&mut self) -> Option<String> {
        // The receiver sends nothing but acknowledgements (and only when
        // asked): anything else readable is its end of stream, or a reset.
        self.read_acks(None)
    }
    fn record(&self) -> Option<(u32, bool)> {
        self.record
    }
    fn acked(&self) -> Option<u64> {
        self.acked
    }
    fn wait_acks(&mut self, limit: Duration) -> Option<String> {
        let why = self.read_acks(Some(limit));
        why.or_else(|| self.read_acks(None))
    }
    fn peer_answers(&self) -> bool {
        Connection::peer_answers(self)
    }
    fn peer_verdict(&self) -> (bool, String) {
        Connection::peer_verdict(self)
    }
    fn set_quiet(&mut self, quiet: bool) {
        self.quiet = quiet;
    }
    fn finish(self: Box<Self>) {
        let _ = Connection::finish(*self);
    }
}

fn set_notsent_lowat(stream: &TcpStream, bytes: i32) {
    // SAFETY: setsockopt on a valid, owned socket with a pointer to a live c_int.
    let r = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NOTSENT_LOWAT,
            &bytes as *const i32 as *const libc::c_void,
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if r != 0 {
        log::debug!("TCP_NOTSENT_LOWAT not set: {}", io::Error::last_os_error());
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_connection_says_what_its_tcp_knows_of_the_peer() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let c = super::Connection::connect(&addr, "t", std::time::Duration::from_secs(1), false)
            .unwrap();
        let _peer = l.accept().unwrap();
        assert!(c.peer_answers());
        let (answers, s) = c.peer_verdict();
        assert!(answers);
        // (1: TCP_ESTABLISHED)
        assert!(
            s.contains("TCP state 1, 0 retransmission(s), 0 window probe(s)"),
            "{s}"
        );
    }

    #[test]
    fn a_retransmission_is_no_verdict_on_a_host_that_answered_a_moment_ago() {
        use super::host_answers;
        use std::time::Duration;
        let ms = Duration::from_millis;
        // answering: established, nothing retransmitted, a probe at most
        assert!(host_answers(1, 0, 1, 60_000, None));
        assert!(!host_answers(7, 0, 0, 0, Some(ms(0))), "closed");
        // a retransmission (or probes) under way: no verdict while an
        // acknowledgement came, or a look found it answering, within 1 s
        assert!(host_answers(1, 1, 0, 300, None));
        assert!(host_answers(1, 2, 3, 5_000, Some(ms(400))));
        assert!(!host_answers(1, 1, 0, 1_000, Some(ms(1_000))));
        assert!(!host_answers(1, 0, 2, u32::MAX, None));
    }

    #[test]
    fn a_link_local_address_may_name_its_interface() {
        let a = super::resolve("[fe80::1%lo]:5000").unwrap();
        let lo: u32 = std::fs::read_to_string("/sys/class/net/lo/ifindex")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        match a[..] {
            [std::net::SocketAddr::V6(v6)] => {
                assert_eq!((v6.scope_id(), v6.port()), (lo, 5000));
                assert_eq!(v6.ip().segments()[0], 0xfe80);
            }
            _ => panic!("{a:?}"),
        }
        let e = super::resolve("[fe80::1%nosuchif0]:5000").unwrap_err();
        assert!(
            format!("{e:#}").contains("no network interface \"nosuchif0\""),
            "{e:#}"
        );
    }

    use super::*;

    #[test]
    fn a_frame_written_a_little_at_a_time_past_the_timeout_is_said() {
        // A receiver whose window opens a little at a time (it reads at
        // most 16 KiB every 20 ms: under 1 MB/s, however fast the machine)
        // takes a 1 MiB frame in over a second: as a rule no write goes a
        // whole --timeout (250 ms) without progress, so none fails, but the
        // first comes back short when it runs out; the wait must be said.
        use socket2::{Domain, Socket, Type};
        let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        sock.set_recv_buffer_size(16 << 10).unwrap();
        sock.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        sock.listen(1).unwrap();
        let l: std::net::TcpListener = sock.into();
        let addr = l.local_addr().unwrap().to_string();
        let reader = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let (mut buf, mut got) = (vec![0u8; 16 << 10], 0usize);
            loop {
                std::thread::sleep(Duration::from_millis(20));
                match io::Read::read(&mut s, &mut buf) {
                    Ok(0) | Err(_) => return got,
                    Ok(n) => got += n,
                }
            }
        });
        let mut c = Connection::connect(&addr, "cam", Duration::from_millis(250), false).unwrap();
        let frame = vec![0u8; 1 << 20];
        c.write_frame(&frame).unwrap();
        let said = c.slow_said;
        c.finish().unwrap();
        let got = reader.join().unwrap();
        assert!(got > frame.len(), "{got} bytes arrived");
        assert!(
            said.is_some(),
            "a frame written for over --timeout was not said"
        );
    }

    #[test]
    fn getent_output_gives_each_address_once() {
        let out = "fe80::1         STREAM pi2.local\n10.213.7.2      STREAM \n\
                   10.213.7.2      DGRAM  \n";
        let v = getent_addrs(out, 5000);
        assert_eq!(
            v,
            [
                "10.213.7.2:5000".parse::<SocketAddr>().unwrap(),
                "[fe80::1]:5000".parse().unwrap()
            ]
        );
        assert!(getent_addrs("", 1).is_empty());
    }

    #[test]
    fn unresolvable_names_say_what_to_do() {
        let e = format!("{:#}", resolve("no-such-pi.local:5000").unwrap_err());
        assert!(
            e.contains("\"no-such-pi.local\"") && e.contains("IP address"),
            "{e}"
        );
        let e = format!("{:#}", resolve("pi2.local:http").unwrap_err());
        assert!(e.contains("port \"http\""), "{e}");
    }
}
