//! Headless Chromium for the live-view test (`tests/tests/http_view.rs`) and
//! `cargo xtask bench view`: found, or installed from Debian's `chromium`
//! package when running as root.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// Where Debian puts it.
const CANDIDATES: &[&str] = &["/usr/bin/chromium", "/usr/bin/chromium-browser"];

/// The variable naming a Chromium or Chrome binary to use instead.
pub const ENV: &str = "BITMASK_CHROMIUM";

/// The Chromium binary ([`ENV`] overrides), if installed. (Ubuntu's
/// `/usr/bin/chromium-browser` is a script that runs the snap, which a
/// container without snapd cannot: not counted.)
pub fn find() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(ENV) {
        return Some(PathBuf::from(p));
    }
    let snap_wrapper = |p: &Path| {
        use std::io::Read;
        let mut head = Vec::new();
        std::fs::File::open(p)
            .and_then(|f| f.take(16 << 10).read_to_end(&mut head))
            .is_ok()
            && head.starts_with(b"#!")
            && head.windows(10).any(|w| w == b"/snap/bin/")
    };
    CANDIDATES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists() && !snap_wrapper(p))
}

/// Chromium, installed with apt-get first when missing and running as root
/// (in an apt-get of its own: some distributions have no such package);
/// otherwise an error that says exactly what to run, and names [`ENV`].
pub fn ensure() -> Result<PathBuf> {
    if let Some(p) = find() {
        return Ok(p);
    }
    crate::dist::install_missing(&[("chromium", "the live-view test's headless browser")])
        .map_err(|e| {
            e.context(format!(
                "no Chromium: install one, or point {ENV} at a Chromium or Chrome binary"
            ))
        })?;
    find().with_context(|| format!("chromium installed but not found at {CANDIDATES:?}"))
}

/// Headless Chromium with the project's flags and a fresh profile in `profile`.
pub fn headless(chromium: &Path, profile: &Path) -> Command {
    let mut c = Command::new(chromium);
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    c
}

/// A browser kept open on `url` (until [`Attached::close`] or drop), in its
/// own process group so that its helper processes end with it.
pub struct Attached {
    child: Child,
}

impl Attached {
    /// Opens `url` in headless Chromium with a fresh profile under `profile`.
    pub fn open(chromium: &Path, profile: &Path, url: &str) -> Result<Attached> {
        use std::os::unix::process::CommandExt;
        if profile.exists() {
            std::fs::remove_dir_all(profile)?;
        }
        let child = headless(chromium, profile)
            .args(["--remote-debugging-port=0", "--window-size=1000,700", url])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .context("starting chromium")?;
        Ok(Attached { child })
    }

    /// Ends the browser's process group (which this process created).
    pub fn close(&mut self) {
        let pgid = self.child.id();
        let _ = Command::new("kill")
            .args(["-TERM", "--", &format!("-{pgid}")])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.close();
        }
    }
}
