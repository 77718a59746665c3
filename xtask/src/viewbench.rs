//! `cargo xtask bench view`: receiver throughput with and without the live
//! view (`--http`) and a browser attached, on loopback, as ratios against the
//! receiver without `--http` measured in the same run (rounds interleaved, so
//! machine noise hits every configuration alike). Writes the table into
//! docs/BENCHMARKS.md under `## Live view`.

use crate::util::{build_bins, root};
use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

const HEADING: &str = "## Live view";

#[derive(Clone, Copy, PartialEq)]
enum Setup {
    /// No `--http`.
    Plain,
    /// `--http`, a client doing exactly what the page does (polls
    /// /stats.json and fetches each new /latest.png, at --http-fps).
    Page,
    /// `--http` with headless Chromium showing the page.
    Chromium,
    /// `--http` with 100 connections that send half a request and never read.
    Stalled,
}

impl Setup {
    fn label(self) -> &'static str {
        match self {
            Setup::Plain => "no --http (baseline)",
            Setup::Page => "--http, one client polling like the page (10 Hz)",
            Setup::Chromium => "--http, headless Chromium showing the page",
            Setup::Stalled => "--http, 100 stalled connections",
        }
    }
}

struct Sample {
    fps: f64,
    mbps: f64,
    /// The receiver process's CPU time (user + system, all threads), seconds.
    cpu_s: f64,
    /// HTTP requests served, PNGs encoded, 503s during the stream.
    http: Option<(u64, u64, u64)>,
}

/// `cargo xtask bench view`: what the live view costs the receiver.
pub fn run(args: &[String]) -> Result<()> {
    let mut frames = 4000u64;
    let mut rounds = 3usize;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--frames" => frames = it.next().context("--frames N")?.parse()?,
            "--rounds" => rounds = it.next().context("--rounds N")?.parse()?,
            other => {
                bail!("usage: cargo xtask bench view [--frames N] [--rounds N] (got {other:?})")
            }
        }
    }
    let bin = build_bins(true)?;
    let input = root().join("target/demo/in");
    crate::samples::scene(&input, 24)?;
    let mut no_browser = None;
    let chromium = match crate::browser::ensure() {
        Ok(p) => Some(p),
        Err(e) => {
            eprintln!("xtask: {e:#}\nxtask: the Chromium row is left out");
            no_browser = Some(format!("{e:#}"));
            None
        }
    };
    let mut setups = vec![Setup::Plain, Setup::Page];
    if chromium.is_some() {
        setups.push(Setup::Chromium);
    }
    setups.push(Setup::Stalled);
    let mut results: Vec<Vec<Sample>> = setups.iter().map(|_| Vec::new()).collect();
    for r in 0..rounds {
        for (i, s) in setups.iter().enumerate() {
            eprintln!("xtask: round {}/{rounds}: {}", r + 1, s.label());
            let sample = measure(&bin, &input, *s, frames, chromium.as_deref())?;
            eprintln!(
                "xtask:   {:.1} fps, {:.1} Mbit/s, receiver CPU {:.2} s{}",
                sample.fps,
                sample.mbps,
                sample.cpu_s,
                sample
                    .http
                    .map(|(q, p, b)| format!(", {q} HTTP requests, {p} PNGs, {b} x 503"))
                    .unwrap_or_default()
            );
            results[i].push(sample);
        }
    }
    let base = median(results[0].iter().map(|s| s.fps).collect());
    let cpu_per_k =
        |res: &Vec<Sample>| median(res.iter().map(|x| x.cpu_s * 1e6 / frames as f64).collect());
    let base_cpu = cpu_per_k(&results[0]);
    let mut table = format!(
        "Receiver throughput on loopback with and without the live view: release build, \
         {frames} 1024x768 frames per run, uncompressed (sender `--codec raw --no-drop` as fast \
         as it goes: the heaviest data path per frame), receiver `--out -` to /dev/null, {rounds} interleaved rounds, medians; \
         {} cores shared by sender, receiver and browser. `cargo xtask bench view --frames {frames} --rounds {rounds}`.\n\n\
         | receiver | fps | Mbit/s | throughput vs no --http | receiver CPU ms per 1000 frames | CPU vs no --http | HTTP requests / PNGs encoded / 503 during the run |\n\
         |---|---:|---:|---:|---:|---:|---|\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for (s, res) in setups.iter().zip(&results) {
        let fps = median(res.iter().map(|x| x.fps).collect());
        let mbps = median(res.iter().map(|x| x.mbps).collect());
        let http = if res.iter().all(|x| x.http.is_some()) {
            let q = median(res.iter().map(|x| x.http.unwrap().0 as f64).collect());
            let p = median(res.iter().map(|x| x.http.unwrap().1 as f64).collect());
            let b = median(res.iter().map(|x| x.http.unwrap().2 as f64).collect());
            format!("{q:.0} / {p:.0} / {b:.0}")
        } else {
            "—".into()
        };
        let cpu = cpu_per_k(res);
        table += &format!(
            "| {} | {fps:.0} | {mbps:.0} | {:.3} | {cpu:.0} | {:.3} | {http} |\n",
            s.label(),
            fps / base,
            cpu / base_cpu
        );
    }
    table += "\nThroughput is the receiver's own summary (first to last frame); it \
              moves with whatever else runs on the machine, so compare rows of one run only. \
              Receiver CPU is user + system time of the whole receiver process (view threads \
              included) from `wait4`, per 1000 frames: what the view costs the receiver, \
              independent of the machine's load. The view copies at most --http-fps (10) \
              masks per second per sender, encodes PNGs on its own threads (nice 10) and \
              only when asked; the Chromium row also pays for the browser's own CPU on the \
              same cores (on a Pi the browser runs on another machine). In the stalled row \
              the view's counters cannot be read: the stalled connections hold the pool, \
              which is the point.\n";
    if let Some(why) = no_browser {
        // (said in what is written to docs/BENCHMARKS.md too, not only on stderr)
        table += &format!("\nNo Chromium row in this run: {why}\n");
    }
    println!("{table}");
    write_section(&table)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

/// One run: a receiver (with or without the view), its watchers, a sender.
fn measure(
    bin: &Path,
    input: &Path,
    setup: Setup,
    frames: u64,
    chromium: Option<&Path>,
) -> Result<Sample> {
    let mut cmd = Command::new(bin.join("bitmask-recv"));
    cmd.args(["--listen", "127.0.0.1:0", "--out", "-", "--count"])
        .arg(frames.to_string())
        .env("RUST_LOG", "warn,bitmask_recv=info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if setup != Setup::Plain {
        cmd.args(["--http", "127.0.0.1:0"]);
    }
    let mut recv = cmd.spawn().context("starting bitmask-recv")?;
    let stderr = recv.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel::<(&'static str, String)>();
    let reader = std::thread::spawn(move || {
        let mut summary = String::new();
        for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
            if let Some(p) = line.find("listening on ") {
                let a = line[p + 13..].split_whitespace().next().unwrap_or("");
                let _ = tx.send(("listen", a.to_string()));
            }
            if let Some(p) = line.find("live view at http://") {
                let a = line[p + 20..].split('/').next().unwrap_or("");
                let _ = tx.send(("http", a.to_string()));
            }
            if let Some(s) = line.strip_prefix("bitmask-recv: bench: ") {
                summary = s.to_string();
            }
        }
        summary
    });
    let (mut addr, mut web) = (None, None);
    let deadline = Instant::now() + Duration::from_secs(20);
    while addr.is_none() || (setup != Setup::Plain && web.is_none()) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(("listen", a)) => addr = Some(a),
            Ok((_, a)) => web = Some(a),
            Err(_) => {
                let _ = recv.kill();
                bail!("bitmask-recv did not report its addresses within 20 s");
            }
        }
    }
    let addr = addr.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let mut watchers = Vec::new();
    let mut browser = None;
    let mut stalled = Vec::new();
    if let Some(web) = &web {
        match setup {
            Setup::Page => {
                let (w, s) = (web.clone(), stop.clone());
                watchers.push(std::thread::spawn(move || page_client(&w, &s)));
            }
            Setup::Chromium => {
                let profile = root().join("target/bench/chromium-profile");
                browser = Some(crate::browser::Attached::open(
                    chromium.context("no chromium")?,
                    &profile,
                    &format!("http://{web}/"),
                )?);
                // the page is up once it polls /stats.json by itself
                let t = Instant::now();
                while http_counts(web).map_or(0, |c| c.0) < 5 {
                    if t.elapsed() > Duration::from_secs(30) {
                        bail!("Chromium did not load the page within 30 s");
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
            Setup::Stalled => {
                for _ in 0..100 {
                    if let Ok(mut s) = TcpStream::connect(web) {
                        let _ = s.write_all(b"GET /latest.png HTTP/1.1\r\nHost: x\r\n");
                        stalled.push(s);
                    }
                }
            }
            Setup::Plain => {}
        }
    }
    let before = web.as_deref().and_then(http_counts);
    // The view's counters, read just before the receiver exits (the last read wins).
    let last = Arc::new(std::sync::Mutex::new(before));
    if let Some(w) = web.clone() {
        let (s, l) = (stop.clone(), last.clone());
        watchers.push(std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Some(c) = http_counts(&w) {
                    *l.lock().unwrap() = Some(c);
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        }));
    }
    let sent = Command::new(bin.join("bitmask-send"))
        .args(["--to", &addr, "--name", "bench", "--channel", "blue"])
        .args([
            "--threshold",
            "170",
            "--codec",
            "raw",
            "--loop",
            "--no-drop",
            "--count",
        ])
        .arg(frames.to_string())
        .arg(input)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("starting bitmask-send")?;
    let (st, cpu_s) = wait_cpu(&mut recv, Duration::from_secs(300))?;
    stop.store(true, Ordering::Relaxed);
    for w in watchers {
        let _ = w.join();
    }
    if let Some(mut b) = browser {
        b.close();
    }
    drop(stalled);
    let summary = reader.join().unwrap_or_default();
    if !sent.success() || !st {
        bail!("run failed: sender {sent}, receiver exit ok: {st}");
    }
    let (fps, mbps) = parse_rates(&summary)
        .with_context(|| format!("no rates in the receiver's summary {summary:?}"))?;
    let http = match (before, *last.lock().unwrap()) {
        (Some(b), Some(a)) => Some((a.0 - b.0, a.1 - b.1, a.2 - b.2)),
        _ => None,
    };
    Ok(Sample {
        fps,
        mbps,
        cpu_s,
        http,
    })
}

/// Waits (at most `limit`) for `child` and reaps it with `wait4`, returning
/// whether it exited 0 and the CPU seconds (user + system) it used.
fn wait_cpu(child: &mut std::process::Child, limit: Duration) -> Result<(bool, f64)> {
    let pid = child.id() as libc::pid_t;
    let start = Instant::now();
    loop {
        let mut status = 0;
        // SAFETY: rusage is plain old data; wait4 only writes into the two out-pointers.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut ru) };
        if r == pid {
            let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
            let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
            return Ok((ok, tv(ru.ru_utime) + tv(ru.ru_stime)));
        }
        if r < 0 {
            bail!("wait4({pid}): {}", std::io::Error::last_os_error());
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            bail!("bitmask-recv {pid} did not end within {limit:?}; killed");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `... , F fps, M Mbit/s, ...` from a summary line.
fn parse_rates(s: &str) -> Option<(f64, f64)> {
    let fps = s
        .split(", ")
        .find_map(|p| p.strip_suffix(" fps"))?
        .parse()
        .ok()?;
    let mbps = s
        .split(", ")
        .find_map(|p| p.strip_suffix(" Mbit/s"))?
        .parse()
        .ok()?;
    Some((fps, mbps))
}

fn get(web: &str, path: &str) -> Option<Vec<u8>> {
    let mut s = TcpStream::connect(web).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {web}\r\n\r\n").as_bytes())
        .ok()?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).ok()?;
    if !resp.starts_with(b"HTTP/1.1 200") {
        return None;
    }
    let at = resp.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    Some(resp[at..].to_vec())
}

/// The number after `"key":` in `json`.
fn field(json: &str, key: &str) -> Option<u64> {
    let at = json.find(&format!("\"{key}\":"))? + key.len() + 3;
    let digits: String = json[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

/// (requests, PNGs encoded, 503s) from /stats.json.
fn http_counts(web: &str) -> Option<(u64, u64, u64)> {
    let body = String::from_utf8(get(web, "/stats.json")?).ok()?;
    Some((
        field(&body, "requests")?,
        field(&body, "pngs_encoded")?,
        field(&body, "busy_503")?,
    ))
}

/// What app.js does: poll /stats.json at --http-fps (10), fetch the image when it changed.
fn page_client(web: &str, stop: &AtomicBool) {
    let mut shown = 0;
    while !stop.load(Ordering::Relaxed) {
        if let Some(body) = get(web, "/stats.json") {
            let body = String::from_utf8_lossy(&body);
            if let Some(v) = field(&body, "image_version").filter(|v| *v != shown) {
                if get(web, &format!("/latest.png?sender=bench&v={v}")).is_some() {
                    shown = v;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn write_section(table: &str) -> Result<()> {
    crate::util::write_bench_section(HEADING, table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_summary_rates_and_json_fields() {
        let s =
            "6000 frames (0 lost, 0 corrupt, 0 incomplete), 2345.6 fps, 1844.2 Mbit/s, ratio 1.00";
        assert_eq!(parse_rates(s), Some((2345.6, 1844.2)));
        assert_eq!(parse_rates("garbage"), None);
        let j = r#"{"http":{"requests":12,"pngs_encoded":3,"busy_503":0},"image_version":7}"#;
        assert_eq!(field(j, "requests"), Some(12));
        assert_eq!(field(j, "image_version"), Some(7));
        assert_eq!(field(j, "nope"), None);
    }
}
