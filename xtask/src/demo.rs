//! `cargo xtask demo`: a receiver and a sender on loopback, sample images in, masks out.

use crate::util::{build_bins, root, wait_listening};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Starts `bitmask-recv` with `args` plus `--listen 127.0.0.1:0`, forwards its
/// stderr, and returns the child with the address it listens on.
pub fn start_receiver(bin: &Path, args: &[&str]) -> Result<(Child, String)> {
    let mut child = Command::new(bin.join("bitmask-recv"))
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .stderr(Stdio::piped())
        .spawn()
        .context("starting bitmask-recv")?;
    let (addr, _log) = wait_listening(
        &mut child,
        "bitmask-recv",
        Duration::from_secs(20),
        Some("  [recv] "),
    )?;
    Ok((child, addr))
}

/// The demo's job: `bitmask-send` to `addr` with the sample images in
/// `input` (blue >= 170, looping, `count` frames, none dropped), plus
/// `extra` arguments; `quiet` keeps its log to warnings. Kills `recv` when
/// the sender fails.
pub fn send_samples(
    bin: &Path,
    addr: &str,
    input: &Path,
    count: &str,
    extra: &[&str],
    quiet: bool,
    recv: &mut Child,
) -> Result<()> {
    let mut cmd = Command::new(bin.join("bitmask-send"));
    cmd.args(["--to", addr, "--channel", "blue", "--threshold", "170"])
        .args(["--loop", "--count", count, "--no-drop"])
        .args(extra)
        .arg(input);
    if quiet {
        cmd.env("RUST_LOG", "warn");
    }
    let st = cmd.status().context("starting bitmask-send")?;
    if !st.success() {
        let _ = recv.kill();
        bail!("bitmask-send failed: {st}");
    }
    Ok(())
}

/// `cargo xtask demo [--frames N] [--dev]`: runs the demo and prints its summary.
pub fn run(args: &[String]) -> Result<()> {
    let mut frames = 240u64;
    let mut release = true;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--frames" => {
                let n = it.next().context("--frames needs a number")?;
                frames = match n.parse() {
                    Ok(n) if n > 0 => n,
                    _ => bail!("--frames {n:?}: give a number of frames, at least 1"),
                };
            }
            "--dev" => release = false,
            _ => bail!("{a:?}: usage: cargo xtask demo [--frames N] [--dev]"),
        }
    }
    demo(frames, release)
}

/// The demo: `frames` frames through the release binaries, or the debug
/// ones (`release` false: what `cargo xtask ci` runs, on the binaries it
/// built already). An error unless every mask was written.
pub fn demo(frames: u64, release: bool) -> Result<()> {
    let bin = build_bins(release)?;
    let demo = root().join("target/demo");
    let input = demo.join("in");
    let out = demo.join("out");
    eprintln!("generating sample images in {}", input.display());
    crate::samples::scene(&input, 24)?;
    if out.exists() {
        std::fs::remove_dir_all(&out)?;
    }
    let count = frames.to_string();
    let out_s = out.to_string_lossy().into_owned();
    let (mut recv, addr) = start_receiver(
        &bin,
        &["--out", &out_s, "--format", "png", "--count", &count],
    )?;
    eprintln!("receiver listening on {addr}; sending {frames} frames (blue >= 170, looping over 24 images)");
    send_samples(&bin, &addr, &input, &count, &[], false, &mut recv)?;
    let rs = wait_timeout(&mut recv, Duration::from_secs(60))?;
    if !rs.success() {
        bail!("bitmask-recv failed: {rs}");
    }
    let written = std::fs::read_dir(&out)?.filter(|e| e.is_ok()).count();
    if written as u64 != frames {
        bail!("{written} files in {} after {frames} frames", out.display());
    }
    let sample: PathBuf = out.join("frame-000000.png");
    println!(
        "demo: {written} masks written to {} (e.g. {}); each mask is {} bytes packed vs {} bytes of RGB",
        out.display(),
        sample.display(),
        1024 * 768 / 8,
        1024 * 768 * 3
    );
    Ok(())
}

/// Waits for `child` at most `limit`, killing it after that.
pub fn wait_timeout(child: &mut Child, limit: Duration) -> Result<std::process::ExitStatus> {
    let start = std::time::Instant::now();
    loop {
        if let Some(st) = child.try_wait()? {
            return Ok(st);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            bail!(
                "process {} did not end within {limit:?}; killed",
                child.id()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
