//! The TCP side of the sender: connect, handshake, write whole frames.

use anyhow::{Context, Result};
use bitmask_wire::Hello;
use socket2::{SockRef, TcpKeepalive};
use std::io::{self, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::time::Duration;

/// Unsent bytes the kernel may hold for us (`TCP_NOTSENT_LOWAT`): about one
/// 1024x768 mask. Bytes in flight (sent, not yet acknowledged) are not
/// limited, so throughput is kept, but frames cannot pile up in the socket
/// buffer behind a slow link: they wait (and get replaced) in the sender's
/// queue instead, which keeps latency bounded.
const NOTSENT_LOWAT: i32 = 128 << 10;

/// This host's name (for the stream handshake), or "sender".
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "sender".into())
}

/// One persistent connection to a receiver.
pub struct Connection {
    stream: TcpStream,
}

impl Connection {
    /// Connects (trying each resolved address), sets socket options and sends the hello.
    pub fn connect(addr: &str, name: &str, timeout: Duration) -> Result<Self> {
        let addrs: Vec<_> = addr
            .to_socket_addrs()
            .with_context(|| format!("cannot resolve {addr:?} (expected HOST:PORT)"))?
            .collect();
        let mut last = None;
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
                    let mut c = Connection { stream };
                    let hello =
                        Hello::new(name).with_context(|| format!("sender name {name:?}"))?;
                    c.stream
                        .write_all(&hello.encode())
                        .context("sending hello")?;
                    return Ok(c);
                }
                Err(e) => last = Some((a, e)),
            }
        }
        match last {
            Some((a, e)) => Err(e).with_context(|| format!("cannot connect to {a}")),
            None => anyhow::bail!("{addr:?} resolved to no address"),
        }
    }

    /// Writes one whole wire frame.
    pub fn write_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        self.stream.write_all(frame)
    }

    /// Flushes and closes the sending side cleanly.
    pub fn finish(self) -> Result<()> {
        self.stream.shutdown(Shutdown::Write).ok();
        Ok(())
    }
}

impl crate::pipeline::Link for Connection {
    fn send_frame(&mut self, frame: &[u8], _sequence: u64) -> io::Result<()> {
        self.write_frame(frame)
    }
    fn closed_by_peer(&mut self) -> Option<String> {
        // The receiver never sends a byte: anything readable is its end of
        // stream (or a reset). One non-blocking peek, no state changed.
        let mut b = [std::mem::MaybeUninit::<u8>::uninit()];
        match SockRef::from(&self.stream)
            .recv_with_flags(&mut b, libc::MSG_PEEK | libc::MSG_DONTWAIT)
        {
            Ok(0) => Some("end of stream".into()),
            Ok(_) => None,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => None,
            Err(e) => Some(e.to_string()),
        }
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
