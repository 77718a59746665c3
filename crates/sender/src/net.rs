//! The TCP side of the sender: connect, handshake, write whole frames.

use crate::input::Mask;
use anyhow::{Context, Result};
use bitmask_wire::{finish_frame_in_place, Header, Hello, CODEC_RAW, HEADER_LEN};
use socket2::{SockRef, TcpKeepalive};
use std::io::Write;
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Socket send buffer asked for: a few frames of 1024x768 in flight.
const SEND_BUFFER: usize = 1 << 20;

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
    buf: Vec<u8>,
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
                    let sock = SockRef::from(&stream);
                    sock.set_send_buffer_size(SEND_BUFFER)?;
                    sock.set_tcp_keepalive(
                        &TcpKeepalive::new().with_time(Duration::from_secs(10)),
                    )?;
                    log::info!("connected to {a} as {name:?}");
                    let mut c = Connection {
                        stream,
                        buf: Vec::new(),
                    };
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

    /// Sends one mask as a raw frame; returns the bytes written.
    pub fn send_raw(&mut self, mask: &Mask, sequence: u64) -> Result<usize> {
        self.buf.clear();
        self.buf.resize(HEADER_LEN, 0);
        self.buf.extend_from_slice(&mask.bits);
        let mut h = Header::new(mask.width, mask.height, sequence, CODEC_RAW, 0);
        h.timestamp_us = mask.timestamp_us;
        finish_frame_in_place(&mut h, &mut self.buf);
        self.stream.write_all(&self.buf)?;
        Ok(self.buf.len())
    }

    /// Flushes and closes the sending side cleanly.
    pub fn finish(self) -> Result<()> {
        self.stream.shutdown(Shutdown::Write).ok();
        Ok(())
    }
}
