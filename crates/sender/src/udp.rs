//! `--transport udp`: each wire frame split into datagrams that fit the path
//! MTU, each behind a 28-byte datagram header (docs/PROTOCOL.md, "UDP
//! transport"). No retransmission: a frame missing a datagram is dropped by
//! the receiver after its deadline and shows up there as lost.

use anyhow::{Context, Result};
use bitmask_wire::Hello;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use bitmask_wire::udp::{Datagram, DGRAM_HEADER_LEN, KIND_FRAGMENT, KIND_HELLO};

/// The smallest `--mtu`: IPv4 and UDP headers, the datagram header, 64
/// bytes of frame (IPv6 needs 20 more, checked when connecting).
pub const MIN_MTU: usize = 28 + DGRAM_HEADER_LEN + 64;

const HELLO_EVERY: Duration = Duration::from_secs(1);

/// Socket send buffer for datagrams (the kernel doubles it). Small, so a
/// full local queue blocks the sender instead of silently dropping
/// datagrams (which loses whole frames) once the qdisc is full.
const UDP_SNDBUF: usize = 32 << 10;

/// Spaces datagrams to a bit rate.
struct Pacer {
    ns_per_byte: f64,
    next: Instant,
}

impl Pacer {
    fn wait(&mut self, bytes: usize) {
        let now = Instant::now();
        if self.next < now {
            self.next = now; // idle time is not saved up as a burst
        }
        let ahead = self.next - now;
        if ahead > Duration::from_millis(1) {
            std::thread::sleep(ahead);
        }
        self.next += Duration::from_nanos((bytes as f64 * self.ns_per_byte) as u64);
    }
}

/// Encodes a datagram header (format in bitmask_wire::udp).
#[allow(clippy::too_many_arguments)]
fn dgram_header(
    kind: u8,
    index: u16,
    count: u16,
    stride: u16,
    stream_id: u32,
    sequence: u64,
    frame_len: u32,
) -> [u8; DGRAM_HEADER_LEN] {
    Datagram {
        kind,
        index,
        count,
        stride,
        stream_id,
        sequence,
        frame_len,
    }
    .encode()
}

/// A "connected" UDP socket to the receiver.
pub struct UdpLink {
    sock: UdpSocket,
    stream_id: u32,
    hello: Vec<u8>,
    last_hello: Option<Instant>,
    stride: usize,
    dgram: Vec<u8>,
    refused_at: Option<Instant>,
    pacer: Option<Pacer>,
}

impl UdpLink {
    /// Resolves `addr` and prepares datagrams of at most `mtu` bytes (IP header included).
    pub fn connect(addr: &str, name: &str, mtu: usize, rate_mbit: Option<f64>) -> Result<Self> {
        let to: SocketAddr = crate::net::resolve(addr)?[0];
        let local: SocketAddr = if to.is_ipv4() {
            "0.0.0.0:0".parse().unwrap()
        } else {
            "[::]:0".parse().unwrap()
        };
        let sock = UdpSocket::bind(local).context("binding a UDP socket")?;
        sock.connect(to)
            .with_context(|| format!("cannot reach {to} over UDP"))?;
        socket2::SockRef::from(&sock).set_send_buffer_size(UDP_SNDBUF)?;
        let ip_udp = if to.is_ipv4() { 28 } else { 48 };
        let stride = mtu
            .checked_sub(ip_udp + DGRAM_HEADER_LEN)
            .filter(|s| *s >= 64)
            .with_context(|| {
                format!(
                    "--mtu {mtu} is too small for UDP (minimum {})",
                    ip_udp + DGRAM_HEADER_LEN + 64
                )
            })?
            .min(u16::MAX as usize);
        let hello = Hello::new(name)
            .with_context(|| format!("sender name {name:?}"))?
            .encode();
        Ok(UdpLink {
            sock,
            stream_id: stream_id(),
            hello,
            last_hello: None,
            stride,
            dgram: Vec::with_capacity(DGRAM_HEADER_LEN + stride),
            refused_at: None,
            pacer: rate_mbit.map(|r| Pacer {
                // IP + UDP headers count against the link too
                ns_per_byte: 8.0 * 1e3 / r,
                next: Instant::now(),
            }),
        })
    }

    fn send_dgram(&mut self) -> io::Result<()> {
        if let Some(p) = &mut self.pacer {
            p.wait(self.dgram.len() + 28);
        }
        loop {
            match self.sock.send(&self.dgram) {
                Ok(_) => return Ok(()),
                // ICMP port unreachable from an earlier datagram: nobody
                // listens (yet). UDP cannot tell when it is back: keep sending.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    if self
                        .refused_at
                        .is_none_or(|t| t.elapsed() > Duration::from_secs(5))
                    {
                        log::warn!("state: receiver refuses datagrams (not running?); sending on");
                    }
                    self.refused_at = Some(Instant::now());
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

    /// Sends the frame's bytes as fragments (and the hello when it is due).
    pub fn send(&mut self, frame: &[u8], sequence: u64) -> io::Result<()> {
        if self.last_hello.is_none_or(|t| t.elapsed() >= HELLO_EVERY) {
            self.last_hello = Some(Instant::now());
            let h = dgram_header(
                KIND_HELLO,
                0,
                1,
                self.hello.len() as u16,
                self.stream_id,
                0,
                self.hello.len() as u32,
            );
            self.dgram.clear();
            self.dgram.extend_from_slice(&h);
            self.dgram.extend_from_slice(&self.hello);
            self.send_dgram()?;
        }
        let count = frame.len().div_ceil(self.stride);
        let count = u16::try_from(count).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "frame of {} B needs {count} datagrams (max 65535): raise --mtu",
                    frame.len()
                ),
            )
        })?;
        for (i, chunk) in frame.chunks(self.stride).enumerate() {
            let h = dgram_header(
                KIND_FRAGMENT,
                i as u16,
                count,
                self.stride as u16,
                self.stream_id,
                sequence,
                frame.len() as u32,
            );
            self.dgram.clear();
            self.dgram.extend_from_slice(&h);
            self.dgram.extend_from_slice(chunk);
            self.send_dgram()?;
        }
        Ok(())
    }
}

impl crate::pipeline::Link for UdpLink {
    fn send_frame(&mut self, frame: &[u8], sequence: u64) -> io::Result<()> {
        self.send(frame, sequence)
    }
    fn finish(self: Box<Self>) {}
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
