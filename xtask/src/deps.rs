//! The Debian packages of `cargo xtask ci` besides Rust and the Python
//! venvs: qemu-user and the armhf libc (the Pi step), sshd (its deploy
//! test), `ffmpeg` (the raw-video producer of `tests/tests/camera.rs`) and
//! Chromium (`tests/tests/http_view.rs`). Installed with one apt-get when
//! missing and running as root; otherwise the error says exactly what to run.

use crate::util::have;
use anyhow::Result;
use std::path::Path;

/// Where Debian's sshd is (the deploy test runs two).
pub const SSHD: [&str; 2] = ["/usr/sbin/sshd", "/usr/bin/sshd"];

/// `cargo xtask ci`: every Debian package of the run that is missing,
/// installed in one apt-get call (one package-list update on a fresh
/// machine, one dpkg run), while the ARM builds go on in the background.
pub fn ensure_for_ci() -> Result<()> {
    let mut need = crate::dist::qemu_missing();
    if !SSHD.iter().any(|p| Path::new(p).exists()) {
        need.push(("openssh-server", "the deploy test's two stand-in Pis"));
    }
    if !have("ffmpeg") {
        need.push(("ffmpeg", "the camera-input tests' raw video"));
    }
    if crate::browser::find().is_none() {
        need.push(("chromium", "the live-view test's headless browser"));
    }
    if need.is_empty() {
        eprintln!("xtask: every Debian package the run needs is installed");
    }
    crate::dist::install_missing(&need)
}
