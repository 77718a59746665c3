//! The Debian packages of `cargo xtask ci` besides Rust: qemu-user and the
//! armhf libc (the Pi step), sshd (its deploy test), `ffmpeg` (the
//! raw-video producer of `tests/tests/camera.rs`), `ip`/`tc` (the
//! two-host tests), `kill` (the tests stop what they start), python3 with
//! venv (numpy, the corpus, zig) and Chromium (`tests/tests/http_view.rs`).
//! Installed with one apt-get when missing and running as root (Chromium
//! with a second: some distributions have no such package, and the rest
//! must not fail with it); otherwise the error says exactly what to run.

use crate::util::{have, have_program};
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
    if !have_program("ip") || !have_program("tc") {
        need.push((
            "iproute2",
            "ip and tc: the two-host tests' namespaces and link",
        ));
    }
    if !have_program("kill") {
        need.push(("procps", "kill(1): the tests stop the processes they start"));
    }
    if !have("python3") {
        need.push(("python3", "numpy, the codec corpus and zig come from PyPI"));
    }
    if !crate::util::venv_possible() {
        need.push(("python3-venv", "the venvs under target/ (ensurepip)"));
    }
    let chromium = crate::browser::find().is_none();
    if need.is_empty() && !chromium {
        eprintln!("xtask: every Debian package the run needs is installed");
    }
    crate::dist::install_missing(&need)?;
    if chromium {
        crate::browser::ensure()?;
    }
    Ok(())
}
