//! `bitmask-recv`: accepts bitmask streams over TCP and writes each mask to disk or stdout.

mod exec;
mod output;
mod stats;

use anyhow::{Context, Result};
use bitmask_wire::{FrameReader, Limits, WireError, CODEC_RAW};
use clap::Parser;
use output::{Format, Output};
use socket2::{Domain, Socket, Type};
use stats::Stats;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

/// Receive bitmask frames over TCP and write each mask as a file.
///
/// Listens on ADDR, accepts senders one after another, and writes every
/// frame as DIR/frame-NNNNNN.EXT (NNNNNN = the frame's sequence number),
/// atomically (written to a temporary name, then renamed). A corrupt frame
/// is logged and skipped; a broken stream closes that connection only; the
/// receiver keeps listening until --count frames have arrived (or forever).
#[derive(Parser, Debug)]
#[command(name = "bitmask-recv", version, verbatim_doc_comment)]
#[command(after_help = "Formats:
  raw  the mask bits as sent: MSB-first, rows padded to whole bytes
       (= numpy.packbits(mask, axis=1).tobytes())
  pbm  PBM P4; shows the mask like the PNG (so its bits are the inverse of raw)
  png  1-bit grayscale PNG, bit 1 = white (like imsave of a 0/1 array)
  gray8  one byte per pixel, 0 or 255, no header (ffmpeg -f rawvideo -pix_fmt gray,
       numpy.fromfile(f, numpy.uint8).reshape(h, w)); streams (--out -, --exec) take
       raw or gray8

Examples:
  bitmask-recv --listen 0.0.0.0:5000 --out masks --format png
  bitmask-recv --listen 127.0.0.1:5000 --out - | python3 consume.py
  bitmask-recv --listen 0.0.0.0:5000 --latest /run/mask.png --format png
  bitmask-recv --listen 0.0.0.0:5000 --format gray8 --exec 'python3 docs/python/read_stream.py 640x480'")]
struct Cli {
    /// Address to listen on, HOST:PORT (port 0 picks a free port; the log says which).
    #[arg(long, value_name = "HOST:PORT")]
    listen: String,

    /// Output directory (created if missing), or `-` for masks back to back on stdout (raw or gray8).
    #[arg(long, value_name = "DIR|-")]
    out: Option<PathBuf>,

    /// One file always holding the newest mask, replaced atomically (readers never see half a file).
    #[arg(long, value_name = "FILE")]
    latest: Option<PathBuf>,

    /// Start CMD once (via sh -c) and write every mask to its stdin, back to back (raw or gray8); exits 3 if it dies.
    #[arg(long, value_name = "CMD")]
    exec: Option<String>,

    /// File format of each mask.
    #[arg(long, value_enum, default_value_t = Format::Raw)]
    format: Format,

    /// Exit 0 after N frames have been written.
    #[arg(long, value_name = "N")]
    count: Option<u64>,

    /// Largest frame accepted, WxH; bigger headers are refused before any allocation.
    #[arg(long, default_value = "4096x4096", value_parser = parse_size, value_name = "WxH")]
    max_size: (u32, u32),

    /// Seconds a connected sender may stay silent before it is dropped.
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    timeout: f64,

    /// More log output (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

fn parse_size(s: &str) -> Result<(u32, u32), String> {
    let (w, h) = s
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("{s:?} is not WxH"))?;
    match (w.parse::<u32>(), h.parse::<u32>()) {
        (Ok(w), Ok(h)) if w > 0 && h > 0 && w <= 65536 && h <= 65536 => Ok((w, h)),
        _ => Err(format!("{s:?} is not WxH with 1..=65536 each")),
    }
}

fn main() {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_timestamp_millis()
        .init();
    match run(cli) {
        Ok(()) => {}
        Err(e) => {
            eprintln!("bitmask-recv: error: {e:#}");
            std::process::exit(1);
        }
    }
}

fn bind(addr: &str) -> Result<TcpListener> {
    let sa: SocketAddr = addr
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve listen address {addr:?} (expected HOST:PORT)"))?
        .next()
        .with_context(|| format!("{addr:?} resolved to no address"))?;
    let sock = Socket::new(Domain::for_address(sa), Type::STREAM, None)?;
    sock.set_reuse_address(true)?;
    sock.set_recv_buffer_size(1 << 20)?;
    sock.bind(&sa.into())
        .with_context(|| format!("cannot listen on {sa}"))?;
    sock.listen(16)
        .with_context(|| format!("cannot listen on {sa}"))?;
    Ok(sock.into())
}

fn run(cli: Cli) -> Result<()> {
    let mut out = Output::open(
        cli.out.as_deref(),
        cli.latest.as_deref(),
        cli.exec.as_deref(),
        cli.format,
    )?;
    let listener = bind(&cli.listen)?;
    log::info!("listening on {}", listener.local_addr()?);
    let limits = Limits::for_dimensions(cli.max_size.0, cli.max_size.1);
    let timeout = Duration::from_secs_f64(cli.timeout.max(0.001));
    let mut stats = Stats::new();
    loop {
        let (stream, peer) = match listener.accept() {
            Ok(x) => x,
            Err(e) => {
                log::warn!("accept failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        log::info!("sender connected from {peer}");
        let done = serve(
            stream, peer, &limits, timeout, &mut out, &mut stats, cli.count,
        );
        match done {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => log::warn!("connection from {peer}: {e:#}"),
        }
    }
    out.finish()?;
    eprintln!("bitmask-recv: {}", stats.summary());
    Ok(())
}

/// Reads one sender's stream to its end. Returns `Ok(true)` when `--count` is reached.
#[allow(clippy::too_many_arguments)]
fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    limits: &Limits,
    timeout: Duration,
    out: &mut Output,
    stats: &mut Stats,
    count: Option<u64>,
) -> Result<bool> {
    stream.set_read_timeout(Some(timeout))?;
    let mut reader = FrameReader::new(stream, *limits);
    let name = match reader.read_hello()? {
        Some(h) => h.name,
        None => peer.to_string(),
    };
    log::info!("stream from {name:?} ({peer})");
    stats.new_stream();
    loop {
        let frame = match reader.read_frame() {
            Ok(Some(f)) => f,
            Ok(None) => {
                log::info!("sender {name:?} closed the stream");
                return Ok(false);
            }
            Err(e) if e.is_recoverable() => {
                stats.corrupt += 1;
                log::warn!("{name}: skipping frame: {e}");
                continue;
            }
            Err(WireError::Io(e))
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                anyhow::bail!(
                    "{name}: no data for {:.1} s, closing",
                    timeout.as_secs_f64()
                );
            }
            Err(e) => return Err(e).context(format!("{name}: stream broken")),
        };
        let h = frame.header;
        let bits: &[u8] = if h.codec == CODEC_RAW {
            frame.payload
        } else {
            stats.corrupt += 1;
            log::warn!(
                "{name}: frame {}: codec {} is not supported by this build, skipped",
                h.sequence,
                h.codec
            );
            continue;
        };
        out.write(&h, bits)
            .with_context(|| format!("writing frame {}", h.sequence))?;
        stats.frame(&h, bits.len(), frame.payload.len());
        if count.is_some_and(|n| stats.frames >= n) {
            return Ok(true);
        }
    }
}
