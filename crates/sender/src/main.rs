//! `bitmask-send`: thresholds images into 1-bit masks and streams them as
//! bitmask frames over one TCP connection (or as UDP datagrams).

/// `eprintln!` that cannot panic: a closed stderr (a `| head` that ended,
/// a dropped ssh session) must not turn a finished run into exit 101.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod claim;
mod codec;
mod command;
mod input;
mod net;
mod pipeline;
mod raw;
mod udp;

/// A logger for the unit tests that check what is said and how often
/// (the receiver's tests use this file too).
#[cfg(test)]
mod test_log;

use anyhow::{Context, Result};
use bitmask_core::Channel;
use clap::{CommandFactory, FromArgMatches, Parser, ValueEnum};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Threshold images into 1-bit masks and stream them to a `bitmask-recv`.
///
/// Each INPUT image becomes one frame (frames 0, 1, 2, ... in the order
/// given; directories expand to their image files in name order, hidden
/// files and subdirectories left out). Pixels become bits by
/// `bit = value >= threshold` on the chosen channel, so the original numpy
/// recipe `img[:,:,2] >= 170` is `--channel blue --threshold 170`.
/// Frames go over one TCP connection, or as UDP datagrams with
/// --transport udp (nothing confirmed or sent again). An image that cannot be read (a
/// JPEG cut short too) is skipped with a warning, its frame number left
/// unused (a gap the receiver counts as lost after its first frame), and
/// the others are sent; the run then ends with an error (with --loop it
/// is tried each round).
#[derive(Parser, Debug)]
#[command(
    name = "bitmask-send",
    version,
    verbatim_doc_comment,
    allow_negative_numbers = true
)]
#[command(after_help = "Examples:
  bitmask-send --to 192.168.1.20:5000 --channel blue --threshold 170 frames/
  bitmask-send --to 127.0.0.1:5000 --threshold otsu --loop --fps 30 a.png b.png
  RUST_LOG=debug bitmask-send --to pi2:5000 in.png
  rpicam-vid -t 0 -n --verbose=0 --flush --codec yuv420 \\
    --width 640 --height 480 -o - \\
    | bitmask-send --to pi2:5000 --input-format yuv420 --size 640x480 -
  CAM='exec rpicam-vid -t 0 -n --verbose=0 --flush --codec yuv420'
  CAM=\"$CAM --width 640 --height 480 -o -\"
  bitmask-send --to pi2:5000 --input-format yuv420 --size 640x480 \\
    --input-command \"$CAM\"
  (raw input layouts and Pi camera padding: docs/CAMERA.md)

Exit status: 0 when the input is sent (a camera, a pipe or an endless --loop:
also when stopped by Ctrl-C, SIGTERM or a hangup (SIGHUP, unless under
nohup), each a clean stop); 1 on an error (the summary line
says what was delivered before it; an image that could not be read is
one, and so, with --transport udp, are frames of image files or a
recorded file that the receiver's host refused: nothing listened at that
port); 2 on a command line that cannot be parsed; 128+N when signal N
(Ctrl-C: 130) stopped image files or a recorded file before all of it was
read and delivered.")]
struct Cli {
    /// Receiver address, HOST:PORT (a name that does not resolve yet, e.g.
    /// at boot, is retried like an unreachable receiver). A name with
    /// several addresses: TCP tries each; UDP sends to its first IPv4 one.
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_to)]
    to: String,

    /// The value compared with the threshold: one channel, or luma as Pillow's convert('L').
    #[arg(long, value_enum, default_value_t = ChannelArg::Luma)]
    channel: ChannelArg,

    /// Threshold 0..=256 (`bit = value >= N`), or `otsu` to pick one per frame (bit = value > otsu).
    #[arg(long, default_value = "128", value_parser = parse_threshold)]
    threshold: ThresholdArg,

    /// Invert the mask: `bit = value < threshold`.
    #[arg(long)]
    invert: bool,

    /// Send at most N frames per second (default: as fast as the link allows).
    /// Raw frames from a pipe, FIFO or --input-command (a camera) are read as
    /// they come and one per 1/N s is kept, the newest, the others skipped
    /// (counted); a camera's own frame-rate option (rpicam-vid --framerate)
    /// saves it the work. A recording or decoder on a pipe: add --no-drop to
    /// send every frame, read at N a second. Image files and a recorded raw
    /// file are paced, and every frame is sent (a batch); image files
    /// repeated by --loop stand in for a camera, and frames the link is too
    /// slow for are dropped.
    #[arg(long, value_name = "N", value_parser = parse_fps)]
    fps: Option<f64>,

    /// Start over after the last input, until interrupted (image files only:
    /// a raw --input-format stream cannot be looped). Without --count
    /// it never ends by itself: an unreachable receiver is waited for, as
    /// for a live source (a batch gives up after 10 s; either gives up on
    /// a receiver that confirms no frame for 10 s). Decoded images are
    /// kept for the next rounds, up to 512 MiB or a quarter of the memory
    /// available at the start, whichever is less (the rest are read again).
    #[arg(long = "loop")]
    looping: bool,

    /// Stop after N frames (with --loop: go round the inputs until N are sent).
    /// A live source counts frames captured: those the link was too slow
    /// for are dropped and counted (add --no-drop to send all N). Image
    /// files without --loop: frames 0..N, i.e. the first N files (one that
    /// cannot be read uses its number).
    #[arg(long, value_name = "N", value_parser = parse_count::<u64>)]
    count: Option<u64>,

    /// Read raw frames back to back (stdin, FIFO or file) instead of image files; yuv420 thresholds the Y plane.
    #[arg(long, value_enum, value_name = "FORMAT")]
    input_format: Option<raw::RawFormat>,

    /// Start CMD with `sh -c` and read the raw frames from its stdout (instead
    /// of INPUT), e.g. a camera tool (rpicam-vid: the last example below). The
    /// sender stops it when it stops; a command that fails ends the sender
    /// with an error (exit 1).
    #[arg(long, value_name = "CMD", requires = "input_format")]
    input_command: Option<String>,

    /// Size of each raw frame in pixels, WxH (with --input-format).
    #[arg(long, value_parser = raw::parse_size, value_name = "WxH", requires = "input_format",
          allow_hyphen_values = true)]
    size: Option<(usize, usize)>,

    /// Bytes from one stored row to the next (Y plane for yuv420, whose chroma rows are ceil(N/2)); default: tight rows.
    #[arg(long, value_name = "N", requires = "input_format")]
    stride: Option<usize>,

    /// Rows stored per plane when the producer pads the height (default: the height).
    #[arg(long, value_name = "H", requires = "input_format")]
    padded_height: Option<usize>,

    /// Payload codec: raw (none), bilevel (this project's 2-D/temporal mask codec),
    /// zstd, lz4, or auto (per frame the smallest of those it tries within a time budget:
    /// LZ4 and zstd are tried less often while they lose; raw when compression does not
    /// pay).
    #[arg(long, default_value = "auto", value_name = "CODEC")]
    codec: bitmask_codec::Choice,

    /// A key frame (coded without reference to earlier frames) every N frames;
    /// 1 = every frame coded alone. A receiver that joins late recovers at the next one.
    #[arg(long, default_value_t = 30, value_name = "N", value_parser = parse_count::<u32>)]
    keyframe_interval: u32,

    /// Sender name announced to the receiver (default: this host's name).
    /// Each sender of one receiver needs its own: Pis cloned from one SD
    /// card share a host name (the receiver then keeps the frames of the
    /// host that did not use it first apart, as NAME@ADDR, and warns). A
    /// second sender of one name and receiver on one host goes on as
    /// NAME-pidPID from its start (after waiting 3 s for the first to end),
    /// and warns; the first keeps its name.
    #[arg(long)]
    name: Option<String>,

    /// Connect timeout in seconds. Also how long a write may stall, or the
    /// receiver confirm nothing while the window of frames in flight is full,
    /// before the link counts as lost and the sender reconnects. While the receiver's host still answers (its
    /// TCP acknowledges, nothing is retransmitted) the receiver is only slow,
    /// and the sender waits for it (logged) up to 10 s, or SECS if longer.
    /// At least 0.1 (less is shorter than a round trip over Wi-Fi).
    #[arg(long, default_value = "1", value_name = "SECS", value_parser = parse_timeout)]
    timeout: f64,

    /// Frames waiting between capture and network, at most. When the link or
    /// the receiver is slower than the source, the oldest waiting frame is
    /// dropped (counted), and at most 8 frames are in flight unconfirmed, so
    /// latency stays bounded: the latest frame wins (after a wait, for a
    /// connection say, the newest waiting frame is sent and those before it
    /// dropped; --no-drop sends them all). Lowered (said) when
    /// that many masks, with --no-drop's 64 kept until confirmed, would take
    /// more than half the memory available (1024 masks of a 12 MP photo:
    /// 1.5 GB).
    #[arg(long, default_value_t = 2, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    queue: u32,

    /// Never drop a frame: slow the source down to what the link takes instead,
    /// and after a broken connection send again what the receiver had not
    /// confirmed (it skips what it already wrote; up to 64 frames are kept, fewer
    /// when their masks would take more than half the memory available).
    /// Implied unless the source is live (--input-command, raw frames from a
    /// pipe or FIFO, image files repeated by --loop at --fps): image files
    /// and a recorded raw file are a batch and are all sent, at --fps too.
    /// With --transport udp only the first half
    /// holds: no frame is dropped in the sender, but nothing is sent again
    /// (UDP confirms nothing; a datagram lost on the way loses its frame).
    #[arg(long)]
    no_drop: bool,

    /// Longest wait between reconnect attempts, in seconds (backoff 50 ms, doubling up to this).
    #[arg(long, default_value = "0.5", value_name = "SECS", value_parser = parse_secs)]
    retry_max: f64,

    /// tcp: one connection; udp: datagrams, no retransmission (see docs/PROTOCOL.md).
    #[arg(long, value_enum, default_value_t = pipeline::Transport::Tcp)]
    transport: pipeline::Transport,

    /// Path MTU for --transport udp, in bytes (IP header included); with TCP it is refused.
    /// A frame may take at most 65,535 datagrams: one larger (a 4 MB frame at --mtu 120) is
    /// not sent, said and counted dropped (with --no-drop the run then fails at its end).
    #[arg(long, default_value_t = 1500, value_name = "BYTES",
          value_parser = clap::value_parser!(u16).range(udp::MIN_MTU as i64..))]
    mtu: u16,

    /// Pace --transport udp to at most this many Mbit/s (UDP has no congestion
    /// control: above the link's rate, or the receiver's, whole frames are
    /// lost). Default: only the local queue's back-pressure, which on a batch
    /// (image files, a recording, without --fps) is faster than most
    /// receivers: it warns then. At least 0.12 at --mtu 1500 (full
    /// datagrams 100 ms apart: a receiver gives up a frame after 250 ms
    /// without one). With TCP (which paces itself) it is refused.
    #[arg(long, value_name = "MBIT", value_parser = parse_mbit)]
    rate: Option<f64>,

    /// Log the progress line (counts, and fps and Mbit/s over the interval)
    /// every SECS seconds. A service that runs for weeks: 60 (one line a
    /// second is about 15 MB of journal a day).
    #[arg(long, default_value = "1", value_name = "SECS", value_parser = parse_secs)]
    log_every: f64,

    /// More log output (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,

    /// Image files (PNG, BMP, PNM, TIFF, JPEG) or directories of them; with
    /// --input-format one raw stream: `-` (stdin), a FIFO or a file (or --input-command).
    #[arg(required_unless_present = "input_command", value_name = "INPUT")]
    inputs: Vec<PathBuf>,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum ChannelArg {
    Red,
    Green,
    Blue,
    Luma,
}

impl From<ChannelArg> for Channel {
    fn from(c: ChannelArg) -> Channel {
        match c {
            ChannelArg::Red => Channel::Red,
            ChannelArg::Green => Channel::Green,
            ChannelArg::Blue => Channel::Blue,
            ChannelArg::Luma => Channel::Luma,
        }
    }
}

/// A fixed threshold or Otsu's per frame.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ThresholdArg {
    /// `bit = value >= N`.
    Fixed(u16),
    /// Otsu's threshold of each frame.
    Otsu,
}

fn parse_threshold(s: &str) -> Result<ThresholdArg, String> {
    if s.eq_ignore_ascii_case("otsu") {
        return Ok(ThresholdArg::Otsu);
    }
    match s.parse::<u16>() {
        Ok(n) if n <= 256 => Ok(ThresholdArg::Fixed(n)),
        _ => Err(format!("{s:?} is not a number 0..=256 or \"otsu\"")),
    }
}

/// A finite number in `lo..=hi`, or the message for `what`.
fn parse_in(s: &str, lo: f64, hi: f64, what: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (lo..=hi).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not {what} in [{lo}, {hi}]")),
    }
}

/// `HOST:PORT` with a port 1..=65535: the mistakes no retry can mend are
/// refused at once (a name that does not resolve may still, later).
fn parse_to(s: &str) -> Result<String, String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?} has no port: give HOST:PORT, e.g. receiver-pi:5000"))?;
    if host.is_empty() || host == "[]" {
        return Err(format!("{s:?} has no host: give HOST:PORT"));
    }
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return Err(format!(
            "{s:?}: an IPv6 address goes in brackets, e.g. [::1]:5000"
        ));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(s.to_string()),
        _ => Err(format!("{s:?}: the port must be a number 1..=65535")),
    }
}

/// A whole number of 1 or more (clap's own range message spells out the
/// type's maximum).
fn parse_count<T: std::str::FromStr + Default + PartialEq>(s: &str) -> Result<T, String> {
    match s.parse::<T>() {
        Ok(n) if n != T::default() => Ok(n),
        _ => Err(format!("{s:?} is not a whole number of 1 or more")),
    }
}

fn parse_fps(s: &str) -> Result<f64, String> {
    parse_in(s, 0.001, 100_000.0, "a frame rate")
}

fn parse_secs(s: &str) -> Result<f64, String> {
    parse_in(s, 0.001, 86_400.0, "a number of seconds")
}

fn parse_timeout(s: &str) -> Result<f64, String> {
    parse_in(s, 0.1, 86_400.0, "a number of seconds")
}

fn parse_mbit(s: &str) -> Result<f64, String> {
    parse_in(s, 0.01, 1_000_000.0, "a rate in Mbit/s")
}

fn main() {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    check_udp_only(&matches, &cli);
    init_logging(cli.verbose);
    pipeline::stop_on_signals();
    if let Err(e) = run(cli) {
        say!("bitmask-send: error: {e:#}");
        std::process::exit(1);
    }
}

/// `--mtu` and `--rate` shape datagrams: given with TCP they would do
/// nothing, so they are a usage error there (exit 2), as clap's own.
fn check_udp_only(matches: &clap::ArgMatches, cli: &Cli) {
    if cli.transport == pipeline::Transport::Udp {
        return;
    }
    for (id, what) in [
        ("mtu", "sizes datagrams"),
        ("rate", "paces datagrams (TCP paces itself)"),
    ] {
        if matches.value_source(id) == Some(clap::parser::ValueSource::CommandLine) {
            Cli::command()
                .error(
                    clap::error::ErrorKind::ArgumentConflict,
                    format!(
                        "--{id} {what}: it applies to --transport udp only, and the transport \
                         is tcp; add --transport udp, or leave --{id} out"
                    ),
                )
                .exit();
        }
    }
}

fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_timestamp_millis()
        .init();
}

/// Whether the input is live (a camera: frames dropped when the link is
/// slower): `--input-command`, a raw stream from a pipe, FIFO or device,
/// or image files repeated by `--loop` at `--fps` (a camera stand-in).
/// Image files read once and a regular raw file (named, or on stdin) are a
/// batch, `--fps` or not: `--fps` paces them, and every frame is sent.
/// (`paced`: [`producer_paced`].)
fn live_source(cli: &Cli, paced: bool) -> bool {
    cli.input_command.is_some() || paced || (cli.looping && cli.fps.is_some())
}

/// Whether frames come on their producer's clock: raw frames from a pipe
/// or `--input-command` (a camera), not from a file (a recording, read at
/// `--fps`).
fn producer_paced(cli: &Cli) -> bool {
    if cli.input_format.is_none() {
        return false;
    }
    if cli.input_command.is_some() {
        return true;
    }
    let path = match cli.inputs.first() {
        Some(p) if p.as_os_str() != "-" => p.as_path(),
        _ => std::path::Path::new("/dev/stdin"),
    };
    !std::fs::metadata(path).is_ok_and(|m| m.is_file())
}

fn run(cli: Cli) -> Result<()> {
    // Image files or a recorded file end by themselves (a stop signal that
    // cuts them short is an exit status of its own); an endless --loop, a
    // pipe or a camera end only by a signal.
    let paced = producer_paced(&cli);
    let endless = cli.looping && cli.count.is_none();
    pipeline::set_finite_input(cli.input_command.is_none() && !paced && !endless);
    // checked before the input starts (a camera command would start for nothing)
    let name = cli.name.clone().unwrap_or_else(net::hostname);
    bitmask_wire::Hello::new(&name).with_context(|| format!("--name {name:?}"))?;
    // Raw gray or YUV frames carry no colours to pick from: a colour
    // channel asked for there would silently threshold the luma instead.
    if let (Some(f @ (raw::RawFormat::Gray8 | raw::RawFormat::Yuv420)), c) =
        (cli.input_format, cli.channel)
    {
        if c != ChannelArg::Luma {
            anyhow::bail!(
                "--channel {} needs colour frames, but --input-format {} carries luma only{}: \
                 use --channel luma, or rgb24/bgr24 frames (e.g. ffmpeg -pix_fmt rgb24)",
                Channel::from(c),
                f.to_possible_value()
                    .map_or("?".into(), |v| v.get_name().to_owned()),
                if f == raw::RawFormat::Yuv420 {
                    " (the sender reads its Y plane)"
                } else {
                    ""
                }
            );
        }
    }
    if cli.no_drop && cli.transport == pipeline::Transport::Udp {
        log::info!(
            "--no-drop with --transport udp: no frame is dropped in the sender (the source \
             is slowed to what the socket takes), but none is sent again: UDP confirms nothing"
        );
    }
    // (--rate with TCP is refused by check_udp_only)
    if let (pipeline::Transport::Udp, Some(r)) = (cli.transport, cli.rate) {
        udp::check_rate(cli.mtu.into(), r)?;
    }
    // One sender per name and receiver on this host (claim.rs), before the
    // input starts (a camera command would wait on a full pipe meanwhile);
    // held to the end of the process.
    let (name, _claim) = match claim::claim(&name, &cli.to, claim::WAIT) {
        Ok(Some(c)) => (name, Some(c)),
        Ok(None) => {
            let own = pipeline::own_name(&name, std::process::id());
            log::warn!(
                "another bitmask-send on this host sends as {name:?} to {}: this one goes on \
                 as {own:?}, so that neither ends the other's connections nor shares its \
                 directory (give each sender its own --name; the default is the host name)",
                cli.to
            );
            (own, None)
        }
        Err(why) => {
            log::info!(
                "no claim on the name {name:?} (another sender of it on this host is not \
                 seen): {why}"
            );
            (name, None)
        }
    };
    // (image files without --loop: their number, for a summary of a run
    // that ends before they do)
    let mut inputs = None;
    let source: Box<dyn input::Source> = match cli.input_format {
        Some(format) => Box::new(raw::RawFrames::from_cli(
            format,
            cli.size,
            cli.stride,
            cli.padded_height,
            &cli.inputs,
            cli.input_command.as_deref(),
            cli.looping,
        )?),
        None => {
            let files = input::expand(&cli.inputs)?;
            log::info!("{} input image(s)", files.len());
            if !cli.looping {
                let n = files.len() as u64;
                inputs = Some(cli.count.map_or(n, |c| c.min(n)));
            }
            Box::new(input::ImageFiles::new(files, cli.looping, cli.count))
        }
    };
    let params = input::MaskParams {
        channel: cli.channel.into(),
        threshold: cli.threshold,
        invert: cli.invert,
    };
    let live = live_source(&cli, paced);
    if cli.transport == pipeline::Transport::Udp && !live && cli.fps.is_none() && cli.rate.is_none()
    {
        log::warn!(
            "a batch over --transport udp without --fps or --rate goes as fast as the local \
             socket takes it: a receiver or link slower than that loses whole frames, and UDP \
             cannot tell (the receiver counts them as lost); give --rate MBIT (e.g. 50 on a \
             100 Mbit/s link) or use TCP"
        );
    }
    let cfg = pipeline::Config {
        to: cli.to.clone(),
        name,
        transport: cli.transport,
        queue: cli.queue as usize,
        // A batch (image files, a recorded raw file; at --fps too) is not
        // a live source: send it all.
        no_drop: cli.no_drop || !live,
        batch: !live,
        // (an endless --loop waits for an unreachable receiver, as a live
        // source does)
        endless,
        fps: cli.fps,
        // (--no-drop: every frame is sent, the source slowed to --fps)
        producer_paced: paced && !cli.no_drop,
        count: cli.count,
        inputs,
        // parse_secs keeps these finite and in range
        timeout: Duration::from_secs_f64(cli.timeout),
        retry_max: Duration::from_secs_f64(cli.retry_max),
        mtu: cli.mtu.into(),
        rate_mbit: cli.rate,
        log_every: Duration::from_secs_f64(cli.log_every),
    };
    let encoder: Box<dyn pipeline::FrameEncoder> =
        Box::new(codec::CodecEncoder::new(cli.codec, cli.keyframe_interval));
    let start = Instant::now();
    match pipeline::run(cfg, source, params, encoder) {
        Ok(counters) => {
            say!("bitmask-send: {}", counters.summary(start.elapsed()));
            match counters.status_after_stop() {
                0 => Ok(()),
                status => std::process::exit(status),
            }
        }
        Err(e) => {
            // what was done before the error, then the error
            if let Some(c) = pipeline::counters() {
                say!("bitmask-send: {}", c.summary_at_exit(start.elapsed()));
            }
            Err(e)
        }
    }
}
