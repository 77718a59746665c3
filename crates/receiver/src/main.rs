//! `bitmask-recv`: accepts bitmask streams over TCP and UDP and writes each mask to disk,
//! stdout or a program.

/// `eprintln!` that cannot panic: a closed stderr (a `| head` that ended,
/// a dropped ssh session) must not turn a finished run into exit 101.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod acks;
mod exec;
mod http;
mod keep;
mod memory;
mod output;
mod session;
mod stats;
mod udp;

#[cfg(test)]
mod test_rng;

/// The sender's test logger (one file for both binaries' unit tests).
#[cfg(test)]
#[path = "../../sender/src/test_log.rs"]
mod test_log;

use anyhow::{Context, Result};
use bitmask_wire::Limits;
use clap::Parser;
use output::{Format, Output};
use socket2::{Domain, Socket, Type};
use std::net::{SocketAddr, TcpListener, ToSocketAddrs, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Receive bitmask frames over TCP or UDP and write each mask as a file (or to stdout or a
/// program).
///
/// Listens on ADDR (TCP, and UDP on the same port), serves many senders at
/// once (a thread each), and writes every frame as DIR/frame-NNNNNN.EXT
/// (DIR/<name>/... with --per-sender; NNNNNN = the frame's sequence number),
/// atomically (written to a temporary name, then renamed into place), and
/// never over an existing file (a sender that restarted its numbering gets
/// frame-NNNNNN.1.EXT, ...). A corrupt frame
/// is logged and skipped (over TCP, a frame damaged on the way or a delta
/// frame without its reference closes the connection unacknowledged, and a
/// --no-drop sender sends it again); a broken stream closes that connection only; the
/// receiver keeps listening until --count frames have arrived (or forever).
#[derive(Parser, Debug)]
#[command(
    name = "bitmask-recv",
    version,
    verbatim_doc_comment,
    allow_negative_numbers = true
)]
#[command(after_help = "Formats:
  raw  the mask bits as sent: MSB-first, rows padded to whole bytes
       (= numpy.packbits(mask, axis=1).tobytes())
  pbm  PBM P4; shows the mask like the PNG (so its bits are the inverse of raw)
  png  1-bit grayscale PNG, bit 1 = white (like imsave of a 0/1 array)
  gray8  one byte per pixel, 0 or 255, no header (ffmpeg -f rawvideo -pix_fmt gray,
       numpy.fromfile(f, numpy.uint8).reshape(h, w)); streams (--out -, --exec) take
       raw or gray8

Several senders: --out -, --exec and --latest carry the masks of all of them in
arrival order, each mask whole (one writer at a time; dimensions may differ
between masks); --out DIR --per-sender keeps each sender's frames apart.

A frame that cannot be written (a full or read-only disk) is logged, a line a
second at most (a line a minute once it has gone on for a minute), and counted
as NOT WRITTEN; the receiver goes on, writes again
once it can, and at exit fails (status 1) if any frame was not written. (With
several outputs, a frame one of them took counts as written, and as NOT
WRITTEN TO EVERY OUTPUT, which also fails the exit; the others' failures are
logged.) A
program reading the masks (--out -, --exec) that stops taking them holds up
every sender: the log says so every 10 s while it lasts.

Examples:
  bitmask-recv --listen 0.0.0.0:5000 --out masks --format png
  bitmask-recv --listen 127.0.0.1:5000 --out - | python3 consume.py
  bitmask-recv --listen 0.0.0.0:5000 --latest /dev/shm/mask.png --format png
  bitmask-recv --listen 0.0.0.0:5000 --format gray8 \\
    --exec 'python3 docs/python/read_stream.py 640x480'")]
struct Cli {
    /// Address to listen on, HOST:PORT (port 0 picks a free port; the log says which).
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_listen)]
    listen: String,

    /// Output directory (created if missing, and again if deleted while
    /// running; it must take files at the start; a disk mounted on it, or
    /// on the directory holding it, and unmounted while running is an
    /// error, not files on the card underneath; temporary files an earlier
    /// run left, older than 10 minutes, are removed at the start), or `-`
    /// for masks back to back on
    /// stdout (raw or gray8).
    #[arg(long, value_name = "DIR|-")]
    out: Option<PathBuf>,

    /// One file always holding the newest mask, replaced atomically (readers
    /// never see half a file); in the format its extension names (.png, .pbm,
    /// .raw, .gray), else --format. A symbolic link is followed (its target
    /// replaced, at each write); a device or FIFO there is refused.
    #[arg(long, value_name = "FILE")]
    latest: Option<PathBuf>,

    /// Start CMD once (via sh -c) and write every mask to its stdin, back to back (raw or gray8); exits 3 if it dies.
    #[arg(long, value_name = "CMD", value_parser = non_blank)]
    exec: Option<String>,

    /// Make every frame's file in --out DIR durable before the frame counts
    /// as written and is acknowledged: its data synced to the card before
    /// it is renamed into place, its directory after (fsync; not --latest or
    /// --stats-json). A power cut on the receiver then loses no file it had
    /// written, nor leaves an empty one under a frame's name (without it the
    /// kernel writes files back within about 30 s), and a --no-drop sender
    /// is told only of frames that are on the card. Each frame waits for the
    /// card: check that the receiver still keeps up with your --fps.
    #[arg(long)]
    sync: bool,

    /// File format of each mask.
    #[arg(long, value_enum, default_value_t = Format::Raw)]
    format: Format,

    /// Stop after N frames have been written (exit 0; 1 if any was NOT
    /// WRITTEN, or NOT WRITTEN TO EVERY OUTPUT, or if the --exec program then
    /// exits non-zero or is still running 10 s after its stdin was closed).
    #[arg(long, value_name = "N", value_parser = parse_count)]
    count: Option<u64>,

    /// Largest frame accepted, WxH; bigger headers are refused before any allocation.
    #[arg(long, default_value = "4096x4096", value_parser = parse_size, value_name = "WxH",
          allow_hyphen_values = true)]
    max_size: (u32, u32),

    /// Seconds a connection may stay silent before its first frame, and the
    /// most one frame may take to arrive once it has started (slow peers).
    /// Between frames a sender may be silent for as long as it likes (a
    /// time-lapse; unless its slot or memory is wanted by a new sender: see
    /// --max-senders, --max-memory): TCP keepalive notices a vanished host
    /// in about 16 s. A
    /// UDP stream is closed when its sender ends it (an end datagram), or
    /// when silent this long and at least 3 s (its sender repeats its hello
    /// every second). At least 0.1 (a frame takes longer to arrive whole).
    #[arg(long, default_value = "10", value_name = "SECS", value_parser = parse_timeout)]
    timeout: f64,

    /// Write each sender's frames to DIR/<name>/frame-NNNNNN.EXT (name from
    /// the sender's --name); without it all frames go to DIR/ as before.
    #[arg(long)]
    per_sender: bool,

    /// Keep only the newest N frame files in --out DIR (in each sender's
    /// directory with --per-sender), removing the oldest as new ones are
    /// written, so that a receiver left running does not fill its card
    /// (10,000 masks of 1024x768 are 983 MB as raw, and some 40-520 MB as
    /// PNG on the card, the grainier the larger).
    /// Frame files earlier runs left there count too, oldest first by
    /// modification time (listed in the background, the first time a
    /// frame is written there; a Pi whose clock starts behind, without
    /// network time, can make a later run's files look older); only
    /// frame-*.EXT files of this --format are counted or removed. With
    /// --keep 1 a restarted receiver cannot tell frames a --no-drop sender
    /// sends again (their predecessor is gone): they are written again, as
    /// frame-NNNNNN.1.EXT.
    #[arg(long, value_name = "N", value_parser = parse_count)]
    keep: Option<u64>,

    /// Log each sender's line (frames, losses, fps and Mbit/s over the
    /// interval, latency over its last second) every SECS seconds (the
    /// receiver counts in whole seconds: 1.5 is every 2 s). A service that runs for weeks:
    /// 60 (a line a second per sender is about 15 MB of journal a day each).
    /// --stats-json and the live view are updated every second regardless.
    #[arg(long, default_value = "1", value_name = "SECS", value_parser = parse_secs)]
    log_every: f64,

    /// Rewrite FILE (atomically) every second and at exit with every sender's
    /// numbers as JSON (keys: received, lost, corrupt, incomplete, unwritten,
    /// partly_written (to some outputs only), resent (sent again after a
    /// reconnect, handled before, skipped), behind (UDP frames decoded and
    /// not written: the outputs slower than the stream, its datagrams
    /// waiting over 200 ms), wire_bytes, mask_bytes, fps and
    /// mbps (over the last second), avg_fps, avg_mbps, compression_ratio,
    /// latency_p50_ms and latency_p99_ms (last second), total_latency_p50_ms
    /// and total_latency_p99_ms, clock_offset_s (when the clocks disagree)).
    #[arg(long, value_name = "FILE")]
    stats_json: Option<PathBuf>,

    /// Connections served at once, and as many UDP streams (each holds at
    /// most one frame of --max-size in memory, three for UDP, and its decoder
    /// about 33 times one packed frame of --max-size at most: 66 MiB at
    /// 4096x4096, 3 MiB at 1024x768; see --max-memory). When all are taken, a new connection
    /// replaces one that has not said who it is yet, else one silent for
    /// --timeout or more between frames, else it is refused.
    /// Anyone who can reach the port can send: use it on a trusted network.
    #[arg(long, default_value_t = 32, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    max_senders: u32,

    /// Memory all streams may hold at once, in MiB. Default: half the
    /// memory available at the start (a Pi 2 has about 900 MiB in all). A
    /// stream reserves what frames of its size may need (about 36 packed
    /// frames: 3.4 MiB at 1024x768, 72 MiB at 4096x4096) before it reads
    /// the first one's payload, and over UDP a frame's bytes while it is reassembled. Over TCP a new stream that does not fit waits (said
    /// once) until others end and give theirs back, closing one silent for
    /// --timeout between frames; frames too large for all of it close the
    /// connection with the numbers. Over UDP a frame
    /// that does not fit is refused and counted incomplete.
    #[arg(long, value_name = "MIB",
          value_parser = clap::value_parser!(u64).range(1..=1 << 40))]
    max_memory: Option<u64>,

    /// Serve a read-only live view (page, /stats.json, /latest.png) on HOST:PORT, e.g. 0.0.0.0:8080.
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_listen)]
    http: Option<String>,

    /// Frames per second per sender copied for the live view, 0.01 to 1000 (it never slows
    /// the stream).
    #[arg(long, default_value = "10", value_parser = http::parse_fps, value_name = "N",
          requires = "http")]
    http_fps: f64,

    /// More log output (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

/// The largest `--max-size` side.
pub(crate) const MAX_SIDE: u32 = 65536;

fn parse_size(s: &str) -> Result<(u32, u32), String> {
    let (w, h) = s
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("{s:?} is not WxH"))?;
    match (w.parse::<u32>(), h.parse::<u32>()) {
        (Ok(w), Ok(h)) if w > 0 && h > 0 && w <= MAX_SIDE && h <= MAX_SIDE => Ok((w, h)),
        _ => Err(format!("{s:?} is not WxH with 1..={MAX_SIDE} each")),
    }
}

/// A whole number of 1 or more (clap's own range message spells out the
/// type's maximum).
fn parse_count(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{s:?} is not a whole number of 1 or more")),
    }
}

fn parse_secs(s: &str) -> Result<f64, String> {
    parse_secs_in(s, 0.001)
}

fn parse_timeout(s: &str) -> Result<f64, String> {
    parse_secs_in(s, 0.1)
}

fn parse_secs_in(s: &str, lo: f64) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (lo..=86_400.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a number of seconds in [{lo}, 86400]")),
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
            say!("bitmask-recv: error: {e:#}");
            std::process::exit(1);
        }
    }
}

/// Each connection holds three descriptors (its socket, the handle the
/// hub keeps to close it, and the acknowledgement writer's), the live view
/// (`view`) up to [`http::FDS`], the rest (outputs, files being written,
/// the UDP socket) fewer than 128: raises the soft limit on open files
/// (often 1024) towards the hard one when that needs more.
fn raise_fd_limit(max_senders: u64, view: bool) {
    let want = 3 * max_senders + 128 + if view { http::FDS as u64 } else { 0 };
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        let mut l: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) != 0 || l.rlim_cur as u64 >= want {
            return;
        }
        let soft = l.rlim_cur;
        l.rlim_cur = (want as libc::rlim_t).min(l.rlim_max);
        let now = if libc::setrlimit(libc::RLIMIT_NOFILE, &l) == 0 {
            l.rlim_cur
        } else {
            soft
        };
        if (now as u64) < want {
            log::warn!(
                "--max-senders {max_senders} needs about {want} open files; the limit is {now} \
                 (ulimit -n): connections past it fail"
            );
        }
    }
}

/// A HOST:PORT to listen on (resolved when bound: a name may not resolve
/// yet): the forms a user gets wrong, refused with an example.
fn parse_listen(s: &str) -> Result<String, String> {
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(format!(
            "{s:?} is not HOST:PORT, e.g. 0.0.0.0:{} (every interface) or 127.0.0.1:{0}",
            if s.parse::<u16>().is_ok() { s } else { "5000" }
        ));
    };
    if host.is_empty() {
        return Err(format!(
            "{s:?} has no host: e.g. 0.0.0.0{s} (every interface) or 127.0.0.1{s}"
        ));
    }
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return Err(format!(
            "{s:?}: an IPv6 address goes in brackets, e.g. [::]:5000"
        ));
    }
    match port.parse::<u16>() {
        Ok(_) => Ok(s.to_owned()),
        _ => Err(format!(
            "{s:?}: the port must be a number 0..=65535 (0: any free port)"
        )),
    }
}

/// A command that is not empty or blanks only.
fn non_blank(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        Err("the command is empty".into())
    } else {
        Ok(s.to_owned())
    }
}

fn bind(addr: &str) -> Result<TcpListener> {
    let sa: SocketAddr = addr
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve listen address {addr:?} (expected HOST:PORT)"))?
        .next()
        .with_context(|| format!("{addr:?} resolved to no address"))?;
    // (IPv6 off on the host, too few open files: said with the address)
    let cannot = || format!("cannot listen on {sa} (--listen {addr})");
    let sock = Socket::new(Domain::for_address(sa), Type::STREAM, None).with_context(cannot)?;
    sock.set_reuse_address(true).with_context(cannot)?;
    // Small enough that frames cannot queue for long behind a slow writer
    // (the sender's queue drops them instead), big enough for 100 Mbit/s.
    sock.set_recv_buffer_size(256 << 10).with_context(cannot)?;
    sock.bind(&sa.into())
        .map_err(|e| in_use_hint(e, sa.port(), None))
        .with_context(cannot)?;
    sock.listen(64).with_context(cannot)?;
    Ok(sock.into())
}

/// An address in use, with what to do about it. `frames`: the port and
/// `--listen` of this receiver's frames, when binding the live view (its
/// own port is no other program's).
pub(crate) fn in_use_hint(
    e: std::io::Error,
    port: u16,
    frames: Option<(u16, &str)>,
) -> anyhow::Error {
    if e.kind() != std::io::ErrorKind::AddrInUse {
        return e.into();
    }
    let hint = match frames {
        Some((p, listen)) if p == port => format!(
            "port {port} is the frames' port (--listen {listen}): give the live view a port of \
             its own, e.g. --http 0.0.0.0:8080"
        ),
        _ => format!(
            "another program listens there (another bitmask-recv, or its service: \
             `ss -ltnp 'sport = :{port}'` names it); stop it or pick another port"
        ),
    };
    anyhow::Error::new(e).context(hint)
}

/// `--max-memory` in bytes, or its default; says how many streams of
/// `--max-size` frames it holds when fewer than `--max-senders`.
fn memory_limit(cli: &Cli) -> u64 {
    let limit = cli
        .max_memory
        .map_or_else(memory::default_limit, |m| m << 20);
    let (w, h) = cli.max_size;
    let per = memory::stream_bytes(w, h);
    let fit = limit / per;
    if fit < cli.max_senders as u64 {
        // (none at all: said louder, frames of that size will be refused)
        let level = if fit == 0 {
            log::Level::Warn
        } else {
            log::Level::Info
        };
        log::log!(
            level,
            "memory: a stream of {w}x{h} frames (--max-size) may hold up to {}; {} holds {fit} \
             such stream(s) at once, fewer than --max-senders {} (smaller frames fit more; a \
             frame that does not fit is refused, see --help)",
            memory::mib(per),
            if cli.max_memory.is_some() {
                format!("--max-memory {}", memory::mib(limit))
            } else {
                format!(
                    "--max-memory (default, half the memory available: {})",
                    memory::mib(limit)
                )
            },
            cli.max_senders
        );
    }
    limit
}

fn run(cli: Cli) -> Result<()> {
    // First, before `--exec` or the live view start threads of their own.
    let signals = session::block_stop_signals();
    output::set_sync(cli.sync);
    if let Some(p) = &cli.stats_json {
        output::check_file_target("--stats-json", p)?;
    }
    raise_fd_limit(cli.max_senders as u64, cli.http.is_some());
    // Before the outputs: a port in use (--listen, --http) starts no --exec
    // program.
    let listener = bind(&cli.listen)?;
    let local = listener.local_addr()?;
    let view = cli
        .http
        .as_deref()
        .map(|a| http::bind(a, Some((local.port(), &cli.listen))))
        .transpose()?;
    // Datagrams (--transport udp on the sender) arrive on the same port.
    let udp = UdpSocket::bind(local)
        .map_err(|e| log::warn!("no UDP on {local}: {e}"))
        .ok();
    if let Some(u) = &udp {
        // Room for datagrams that come while a frame is written: the
        // kernel's default is about one raw 1024x768 frame. (Capped by
        // net.core.rmem_max, 208 KiB by default: the kernel doubles it.)
        let _ = socket2::SockRef::from(u).set_recv_buffer_size(4 << 20);
    }
    // --out DIR, not --out -
    let out_dir = cli.out.as_deref().filter(|d| d.as_os_str() != "-");
    let keep = match (cli.keep, out_dir) {
        (None, _) => None,
        (Some(n), Some(_)) => Some(std::sync::Arc::new(keep::Keep::new(
            usize::try_from(n).unwrap_or(usize::MAX),
            cli.format.ext(),
        ))),
        (Some(n), _) => anyhow::bail!(
            "--keep {n} needs --out DIR (a directory, not -): it bounds the frame files there"
        ),
    };
    // (at the stop: the listings of the output directories a short run
    // started are let finish, a while)
    let keep_at_stop = keep.clone();
    let sinks = if cli.per_sender {
        let Some(dir) = out_dir.map(Path::to_path_buf) else {
            anyhow::bail!("--per-sender needs --out DIR (a directory, not -)");
        };
        let made = output::check_dir_target(&dir)?;
        let shared = if cli.latest.is_some() || cli.exec.is_some() {
            // (a --latest or --exec refused: the directory just made for
            // nothing is removed again)
            Some(
                Output::open(None, cli.latest.as_deref(), cli.exec.as_deref(), cli.format)
                    .inspect_err(|_| made.undo())?,
            )
        } else {
            None
        };
        session::Sinks {
            shared: shared.map(std::sync::Mutex::new),
            per_sender: Some((dir.clone(), cli.format, output::MountWatch::new(&dir), keep)),
        }
    } else {
        let mut shared = Output::open(
            cli.out.as_deref(),
            cli.latest.as_deref(),
            cli.exec.as_deref(),
            cli.format,
        )?;
        if let Some(k) = keep {
            shared.keep(k);
        }
        session::Sinks {
            shared: Some(std::sync::Mutex::new(shared)),
            per_sender: None,
        }
    };
    if let Some(dir) = out_dir.map(Path::to_path_buf) {
        // In the background: a directory of millions of frames takes a while.
        let deeper = cli.per_sender;
        let _ = std::thread::Builder::new()
            .name("sweep".into())
            .spawn(move || {
                let n = output::sweep_temp(&dir, deeper);
                if n > 0 {
                    log::info!(
                        "removed {n} temporary file(s) an earlier run left in {} (a power cut \
                         or a kill while writing)",
                        dir.display()
                    );
                }
            });
    }
    log::info!(
        "listening on {local}{}",
        if udp.is_some() { " (tcp and udp)" } else { "" }
    );
    let limits = Limits::for_dimensions(cli.max_size.0, cli.max_size.1);
    let timeout = Duration::from_secs_f64(cli.timeout); // in range: parse_secs
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let hub = session::Hub::new(
        limits,
        timeout,
        sinks,
        cli.count,
        cli.max_senders as usize,
        done_tx,
    );
    hub.memory.set_limit(memory_limit(&cli));
    session::keep_for_last_words(&hub, cli.stats_json.as_deref());
    session::stop_on_signals(&hub, signals);
    {
        // An --exec program that dies stops the receiver, summary printed.
        let h = hub.clone();
        exec::on_death(move |why| h.stop(why));
    }
    if let Some(view) = view {
        http::start(view, cli.http_fps, hub.stats.clone())?;
    }
    if let Some(sock) = udp {
        let h = hub.clone();
        std::thread::Builder::new()
            .name("udp".into())
            .spawn(move || udp::serve_udp(h, sock))?;
    }
    {
        let h = hub.clone();
        std::thread::Builder::new()
            .name("accept".into())
            .spawn(move || session::accept_loop(h, listener))?;
    }
    let why = session::report_until_done(
        &hub,
        &done_rx,
        cli.stats_json.as_deref(),
        Duration::from_secs_f64(cli.log_every),
    );
    log::info!("stopping: {why}");
    session::exit_if_the_stop_hangs();
    // Frames being written finish first, so the numbers below, the stats
    // file and the outputs agree (an output that takes nothing is the
    // signal thread's to end).
    if !hub.settle(Duration::from_secs(5)) {
        log::warn!("frames were still being written 5 s after the stop; the numbers may miss them");
    }
    if let Some(k) = &keep_at_stop {
        if !k.wait_listings(Duration::from_secs(3)) {
            log::info!(
                "--keep: an output directory's earlier files were still being listed 3 s after \
                 the stop: the next run goes on with them"
            );
        }
    }
    // The numbers are written however the outputs end.
    let finished = hub.finish();
    session::write_stats_json(&hub, cli.stats_json.as_deref(), true);
    for line in session::summary_lines(&hub) {
        say!("{line}");
    }
    let total = hub.stats.total();
    if exec::died() {
        // (said when it died; the frames after it were not acknowledged)
        std::process::exit(exec::EXIT_CHILD_DIED);
    }
    finished?;
    anyhow::ensure!(
        total.unwritten == 0,
        "{} frame(s) arrived but could not be written (see the warnings above)",
        total.unwritten
    );
    anyhow::ensure!(
        total.partly == 0,
        "{} frame(s) were written to some outputs but not to every one (see the warnings above)",
        total.partly
    );
    Ok(())
}
