//! Debian packages the tests need besides Rust and the Python venv:
//! `ffmpeg`, the real raw-video producer of `tests/tests/camera.rs`.
//! Installed with apt-get when missing and running as root; otherwise the
//! error says exactly what to run.

use crate::util::{have, output, run};
use anyhow::{bail, Context, Result};
use std::process::Command;

/// The exact fix, for messages.
pub const FFMPEG_FIX: &str = "apt-get update && apt-get install -y ffmpeg";

fn is_root() -> bool {
    output(Command::new("id").arg("-u")).is_ok_and(|s| s.trim() == "0")
}

/// `ffmpeg` on PATH, installed from Debian's package first when missing.
pub fn ensure_ffmpeg() -> Result<()> {
    if have("ffmpeg") {
        return Ok(());
    }
    if !is_root() || !have("apt-get") {
        bail!(
            "ffmpeg is missing (tests/tests/camera.rs pipes its raw video through bitmask-send); \
             as root run: {FFMPEG_FIX}"
        );
    }
    let install = || {
        run(Command::new("apt-get")
            .args(["install", "-y", "ffmpeg"])
            .env("DEBIAN_FRONTEND", "noninteractive"))
    };
    if install().is_err() {
        // A fresh machine has no package lists yet.
        run(Command::new("apt-get")
            .arg("update")
            .env("DEBIAN_FRONTEND", "noninteractive"))
        .context("apt-get update failed")?;
        install()
            .with_context(|| format!("installing ffmpeg failed; try by hand: {FFMPEG_FIX}"))?;
    }
    if !have("ffmpeg") {
        bail!("apt-get installed ffmpeg but it is not on PATH");
    }
    Ok(())
}
