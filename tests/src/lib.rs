//! Shared helpers for the workspace integration tests (`tests/tests/*.rs`),
//! which run the real binaries and the Python reference module together.
//!
//! One test file per topic; each uses these helpers:
//!
//! | helper | what it does |
//! |---|---|
//! | [`bin`]`("bitmask-send")` | path of `target/debug/<name>`; the first call in a test process runs `cargo build -p bitmask-sender -p bitmask-receiver` (a no-op when up to date), so tests never run stale binaries |
//! | [`python`]`()` | `target/venv/bin/python` if it imports numpy and Pillow, else [`skip`] (`None`) |
//! | [`python_has`]`(py, "skimage")` | whether the venv imports an optional module |
//! | [`skip`]`(why)` | prints `SKIP: <why>; run `cargo xtask ci``, and panics when `CI=true` (as `cargo xtask ci` sets it) |
//! | [`wire_py`]`()` | path of `docs/python/bitmask_wire.py` |
//! | [`TempDir::new`]`("tag")` | a fresh directory under `target/tmp`, removed on drop unless the test failed |
//! | [`Proc::spawn`] / [`Proc::wait`] / [`run`] | a child process with stdout and stderr collected, killed on drop, waited with a time limit |
//! | [`start_receiver`]`(&args)` | `bitmask-recv --listen 127.0.0.1:0 <args>`, returns once it logged `listening on ADDR` |
//! | [`start_listening`]`(cmd)` | the same for any command that logs `listening on ADDR` (e.g. `bitmask_wire.py recv`) |
//! | [`noise_image`] / [`scene_image`] / [`save_image`] / [`expected_mask`] | test images (incompressible / compressible) and the mask bitmask-core makes of them |
//!
//! ```no_run
//! use bitmask_tests::*;
//! let dir = TempDir::new("example");
//! let mut recv = start_receiver(&["--out", dir.str(), "--count", "1"]);
//! let sent = run(std::process::Command::new(bin("bitmask-send")).args(["--to", &recv.addr, "in.png"]));
//! assert!(sent.status.success(), "{}", sent.stderr);
//! assert!(recv.proc.wait(LIMIT).status.success());
//! ```
//!
//! Every process is started with `RUST_LOG` removed (so the `listening on`
//! line is logged at the default level) and stdin closed.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use bitmask_core::{Channel, Params};

/// A generous limit for one process of a test to finish (debug builds, 2 shared cores).
pub const LIMIT: Duration = Duration::from_secs(60);

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The cargo target directory the tests were built in.
pub fn target_dir() -> PathBuf {
    // A test binary is <target>/<profile>/deps/<name>: wherever cargo was
    // told to build (CARGO_TARGET_DIR, build.target-dir), it is there.
    std::env::current_exe()
        .ok()
        .and_then(|e| Some(e.parent()?.parent()?.parent()?.to_path_buf()))
        .filter(|t| t.join("debug").is_dir())
        .unwrap_or_else(|| root().join("target"))
}

/// True under CI (`CI=true` or `CI=1`).
pub fn is_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Reports a skipped test: prints `SKIP: <why>; run `cargo xtask ci`` and,
/// under CI, fails instead (nothing may be skipped there).
pub fn skip(why: &str) {
    let msg = format!("SKIP: {why}; run `cargo xtask ci`");
    // Straight to the process's stderr: the test harness's capture would hide eprintln!.
    let _ = writeln!(std::io::stderr(), "{msg}");
    if is_ci() {
        panic!("{msg} (CI=true: skipping is a failure)");
    }
}

/// Path of a workspace binary in `target/debug`, built on first use in this process.
///
/// # Panics
/// When the build fails or the binary is still missing after it.
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        if std::env::var_os("BITMASK_TESTS_NO_BUILD").is_some() {
            return Ok(());
        }
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let out = Command::new(cargo)
            .current_dir(root())
            // `--workspace` with the two binaries picked out: the
            // dependencies' features are the whole workspace's, as in
            // `cargo build --workspace` (cargo xtask ci's build step), so
            // nothing is compiled again (`-p` would rebuild libc and all
            // above it with fewer features).
            .args([
                "build",
                "--quiet",
                "--workspace",
                "--bin",
                "bitmask-send",
                "--bin",
                "bitmask-recv",
            ])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run cargo: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "cargo build of the binaries failed: {}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    });
    if let Err(e) = built {
        panic!("{e}");
    }
    let path = target_dir()
        .join("debug")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "{} is missing after the build",
        path.display()
    );
    path
}

/// `docs/python/bitmask_wire.py`, the Python reference module.
pub fn wire_py() -> PathBuf {
    root().join("docs/python/bitmask_wire.py")
}

/// The venv's Python with numpy and Pillow (`target/venv/bin/python`, made by
/// `cargo xtask ci`), or `None` after [`skip`] when it is missing.
pub fn python() -> Option<PathBuf> {
    // (where `cargo xtask ci` makes it, whatever CARGO_TARGET_DIR says)
    let py = root().join("target/venv/bin/python");
    if !py.exists() {
        skip(&format!("{} is missing", py.display()));
        return None;
    }
    if !python_has(&py, "numpy") || !python_has(&py, "PIL") {
        skip(&format!("{} lacks numpy or Pillow", py.display()));
        return None;
    }
    Some(py)
}

/// Whether `py` can import `module`.
pub fn python_has(py: &Path, module: &str) -> bool {
    Command::new(py)
        .args(["-c", &format!("import {module}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A fresh directory under `target/tmp`, removed on drop unless the test is
/// failing (then it is kept, and its path printed, for a look).
pub struct TempDir(PathBuf);

impl TempDir {
    /// `target/tmp/<tag>-<pid>-<n>`, created empty.
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = target_dir()
            .join("tmp")
            .join(format!("{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        TempDir(dir)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// The directory as UTF-8, for command lines.
    pub fn str(&self) -> &str {
        self.0.to_str().expect("target dir path is UTF-8")
    }

    /// `self/name`.
    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept {} for inspection", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// What a finished process left.
#[derive(Debug)]
pub struct Finished {
    /// Exit status.
    pub status: ExitStatus,
    /// Everything written to stdout.
    pub stdout: Vec<u8>,
    /// Everything written to stderr (lossy UTF-8).
    pub stderr: String,
}

/// A stderr collected line by line while the process runs.
#[derive(Default)]
struct Log {
    text: Mutex<(String, bool)>, // (text so far, stream ended)
    changed: Condvar,
}

/// A child process with stdout and stderr collected in the background,
/// killed (and reaped) on drop.
pub struct Proc {
    child: Child,
    what: String,
    stdout: Option<JoinHandle<Vec<u8>>>,
    stderr: Arc<Log>,
    stderr_thread: Option<JoinHandle<()>>,
}

impl Proc {
    /// Starts `cmd` with stdin closed, stdout and stderr piped, `RUST_LOG`
    /// removed, log lines without colour (`RUST_LOG_STYLE=never`: tests read
    /// them).
    pub fn spawn(cmd: &mut Command) -> Proc {
        use std::os::unix::process::CommandExt;
        let what = show(cmd);
        // (a group of its own: a test that fails ends what it started with
        // it, a pipeline's or a shell's children too; see Drop. Out of the
        // test binary's group, Ctrl-C on `cargo test` no longer reaches it:
        // it gets SIGKILL when the test binary dies instead.)
        // SAFETY: prctl(2) in the child before exec: async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd
            .process_group(0)
            .env_remove("RUST_LOG")
            .env("RUST_LOG_STYLE", "never")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        let mut out = child.stdout.take().unwrap();
        let stdout = std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = out.read_to_end(&mut v);
            v
        });
        let mut err = child.stderr.take().unwrap();
        let log = Arc::new(Log::default());
        let log2 = Arc::clone(&log);
        let stderr_thread = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                let n = err.read(&mut buf).unwrap_or(0);
                let mut g = log2.text.lock().unwrap();
                if n == 0 {
                    g.1 = true;
                } else {
                    g.0.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
                log2.changed.notify_all();
                if n == 0 {
                    break;
                }
            }
        });
        Proc {
            child,
            what,
            stdout: Some(stdout),
            stderr: log,
            stderr_thread: Some(stderr_thread),
        }
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running (not exited).
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.text.lock().unwrap().0.clone()
    }

    /// Waits until stderr contains `needle`; returns the first line holding it.
    ///
    /// # Panics
    /// When `limit` passes or stderr ends first (the message shows stderr).
    pub fn wait_for_stderr(&self, needle: &str, limit: Duration) -> String {
        self.wait_for_stderr_lines(&format!("{needle:?}"), 1, |l| l.contains(needle), limit)
            .remove(0)
    }

    /// Waits until `n` whole lines of stderr (each ended by its newline, or
    /// by the end of stderr) satisfy `pred`; returns the first `n` of them.
    /// `what` names them in the panic message.
    ///
    /// # Panics
    /// When `limit` passes or stderr ends first (the message shows stderr).
    pub fn wait_for_stderr_lines(
        &self,
        what: &str,
        n: usize,
        pred: impl Fn(&str) -> bool,
        limit: Duration,
    ) -> Vec<String> {
        let deadline = Instant::now() + limit;
        let mut g = self.stderr.text.lock().unwrap();
        loop {
            // (a line still being written is not read: its end may be missing)
            let whole = match g.1 {
                true => &g.0[..],
                false => &g.0[..g.0.rfind('\n').map_or(0, |i| i + 1)],
            };
            let found: Vec<String> = whole
                .lines()
                .filter(|l| pred(l))
                .take(n)
                .map(str::to_string)
                .collect();
            if found.len() == n {
                return found;
            }
            let now = Instant::now();
            if g.1 || now >= deadline {
                panic!(
                    "{} did not log {n} line(s) of {what} ({}); stderr:\n{}",
                    self.what,
                    if g.1 { "stderr closed" } else { "timed out" },
                    g.0
                );
            }
            g = self
                .stderr
                .changed
                .wait_timeout(g, deadline - now)
                .unwrap()
                .0;
        }
    }

    /// Sends SIGTERM (with `kill(1)`: no unsafe code here) and waits for the
    /// process to exit, at most `limit`.
    pub fn terminate(&mut self, limit: Duration) -> Finished {
        let st = Command::new("kill")
            .args(["-TERM", &self.id().to_string()])
            .status()
            .expect("kill(1)");
        assert!(st.success(), "kill -TERM {} failed", self.id());
        self.wait(limit)
    }

    /// Waits for the process to exit, at most `limit` (then kills it and panics).
    pub fn wait(&mut self, limit: Duration) -> Finished {
        let start = Instant::now();
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(st)) => break st,
                Ok(None) if start.elapsed() < limit => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Ok(None) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    panic!(
                        "{} did not exit within {limit:?}; killed. stderr:\n{}",
                        self.what,
                        self.stderr()
                    );
                }
                Err(e) => panic!("waiting for {}: {e}", self.what),
            }
        };
        let stdout = self
            .stdout
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        if let Some(h) = self.stderr_thread.take() {
            let _ = h.join();
        }
        Finished {
            status,
            stdout,
            stderr: self.stderr(),
        }
    }
}

impl Drop for Proc {
    /// A process still running (a test that failed before it ended) is
    /// killed with its whole process group: the commands of a `sh -c "a |
    /// b"` too. (Not a receiver's `--exec` program, in a group of its own:
    /// the receiver's death sends it SIGTERM.)
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // (the group of our own child, not reaped yet: try_wait saw it
            // running; its pid is its group's id)
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", self.child.id())])
                .stderr(Stdio::null())
                .status();
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Runs `cmd` to its end (at most [`LIMIT`]) and returns what it left.
pub fn run(cmd: &mut Command) -> Finished {
    Proc::spawn(cmd).wait(LIMIT)
}

/// A command line as text, for messages.
pub fn show(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// A process that listens on a TCP address it logged.
pub struct Listening {
    /// The process.
    pub proc: Proc,
    /// `HOST:PORT` from its `listening on HOST:PORT` log line.
    pub addr: String,
}

/// Starts `cmd` and waits (20 s at most) for it to log `listening on ADDR` on stderr.
pub fn start_listening(cmd: &mut Command) -> Listening {
    let proc = Proc::spawn(cmd);
    let line = proc.wait_for_stderr("listening on ", Duration::from_secs(20));
    let addr = line
        .split("listening on ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_string();
    Listening { proc, addr }
}

/// Starts `bitmask-recv --listen 127.0.0.1:0 <args>` and waits until it listens.
pub fn start_receiver(args: &[&str]) -> Listening {
    start_listening(
        Command::new(bin("bitmask-recv"))
            .args(["--listen", "127.0.0.1:0"])
            .args(args),
    )
}

/// Waits until `path` exists (a receiver wrote that frame).
///
/// # Panics
/// After 20 s without it, saying `what`.
pub fn wait_for_file(path: &Path, what: &str) {
    let t0 = std::time::Instant::now();
    while !path.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "{what}: no {} after 20 s",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A number of bitmask-send's final summary line (`bitmask-send: captured
/// N, sent N frames ...; dropped N, ...`): the one after the word `what`.
///
/// # Panics
/// When there is no such line or number (the message shows stderr).
pub fn summary_count(stderr: &str, what: &str) -> u64 {
    let last = stderr
        .lines()
        .rfind(|l| l.starts_with("bitmask-send: captured"))
        .unwrap_or_else(|| panic!("no summary line in:\n{stderr}"));
    last.split(what)
        .nth(1)
        .and_then(|r| r.trim_start().split([' ', ',', ';']).next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {what:?} count in {last}"))
}

/// `--input-command` for a camera stand-in: `n` gray8 frames of `w` x `h`
/// zeros, `fps` a second, on its own clock (a live source).
pub fn paced_camera(w: u32, h: u32, n: u32, fps: u32) -> String {
    format!(
        "exec python3 -c 'import sys, time\n\
         out, t0, f = sys.stdout.buffer, time.time(), bytes({w} * {h})\n\
         for k in range({n}):\n    \
         out.write(f); out.flush()\n    \
         time.sleep(max(0, t0 + (k + 1) / {fps} - time.time()))'"
    )
}

/// A loopback address where nothing listens (a port just bound and released).
pub fn closed_port() -> String {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let addr = l.local_addr().unwrap().to_string();
    drop(l);
    addr
}

/// Deterministic pseudo-random bytes (xorshift64*), for test images.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

/// A `width` x `height` RGB8 image of noise.
pub fn noise_image(width: u32, height: u32, seed: u64) -> image::RgbImage {
    image::RgbImage::from_raw(
        width,
        height,
        noise(width as usize * height as usize * 3, seed),
    )
    .expect("buffer fits")
}

/// A `width` x `height` RGB8 image that compresses well (gradients, bars and
/// a disc), so a sender's codecs have something to do, unlike [`noise_image`].
pub fn scene_image(width: u32, height: u32, seed: u64) -> image::RgbImage {
    let (cx, cy, r) = (
        width as i64 / 2,
        height as i64 / 2,
        (width.min(height) / 3) as i64,
    );
    image::RgbImage::from_fn(width, height, |x, y| {
        let (xi, yi) = (x as i64, y as i64);
        let inside = (xi - cx).pow(2) + (yi - cy).pow(2) <= r * r;
        let bar = ((x as u64 + seed * 7) / 16) % 2 == 0;
        image::Rgb([
            (x * 255 / width.max(1)) as u8,
            if bar { 200 } else { 40 },
            if inside {
                250
            } else {
                (y * 255 / height.max(1)) as u8
            },
        ])
    })
}

/// Saves `img` (format from the extension of `path`), panicking with the path on failure.
pub fn save_image(img: &image::DynamicImage, path: &Path) {
    img.save(path)
        .unwrap_or_else(|e| panic!("cannot save {}: {e}", path.display()));
}

/// The mask bitmask-core makes of `img` (wire layout, `ceil(w/8)*h` bytes).
pub fn expected_mask(img: &image::DynamicImage, params: &Params) -> Vec<u8> {
    use bitmask_core::{packed_len, threshold_pack, ImageRef, PixelFormat};
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (data, format) = match img {
        image::DynamicImage::ImageLuma8(g) => (g.as_raw().clone(), PixelFormat::Gray8),
        image::DynamicImage::ImageRgba8(c) => (c.as_raw().clone(), PixelFormat::Rgba8),
        other => (other.to_rgb8().into_raw(), PixelFormat::Rgb8),
    };
    let view = ImageRef::new(&data, w, h, format).expect("valid image");
    let mut out = vec![0u8; packed_len(w, h)];
    threshold_pack(&view, params, &mut out).expect("threshold_pack");
    out
}

/// Saves three images made by `make(w, h, seed + i)` as `dir/in-{i}.png`;
/// returns the masks a sender makes of them with its defaults (luma >= 128).
pub fn three_inputs(
    dir: &Path,
    w: u32,
    h: u32,
    seed: u64,
    make: fn(u32, u32, u64) -> image::RgbImage,
) -> Vec<Vec<u8>> {
    std::fs::create_dir_all(dir).unwrap();
    let params = Params {
        channel: Channel::Luma,
        threshold: 128,
        invert: false,
    };
    (0..3)
        .map(|i| {
            let img = image::DynamicImage::ImageRgb8(make(w, h, seed + i));
            save_image(&img, &dir.join(format!("in-{i}.png")));
            expected_mask(&img, &params)
        })
        .collect()
}

/// A number from `--stats-json` text `json` for sender `name`.
pub fn stat(json: &str, name: &str, key: &str) -> f64 {
    let v: serde_json::Value = serde_json::from_str(json).expect("stats json parses");
    let s = v["senders"]
        .as_array()
        .expect("senders array")
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no sender {name:?} in {json}"));
    s[key]
        .as_f64()
        .unwrap_or_else(|| panic!("no number {key} for {name} in {json}"))
}

/// Reads a file, panicking with its path.
pub fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The file names in `dir`, sorted.
pub fn list(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// `p` quoted for `sh -c` (a checkout's path may hold spaces).
pub fn sh_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}

/// The number (digits and a decimal point) that follows the first `before`
/// in `line`: `number_after("captured 57, sent 56 frames", ", sent ")` is
/// 56.
pub fn number_after(line: &str, before: &str) -> Option<f64> {
    let rest = &line[line.find(before)? + before.len()..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// The time of day, in seconds, in a log line of the binaries
/// (`[2026-11-28T09:11:49.866Z INFO ...`: env_logger's millisecond stamp).
pub fn log_time(line: &str) -> Option<f64> {
    let t = line.strip_prefix('[')?.split_whitespace().next()?;
    let clock = t.split('T').nth(1)?.strip_suffix('Z')?;
    let mut parts = clock.split(':');
    let (h, m, s) = (parts.next()?, parts.next()?, parts.next()?);
    Some(h.parse::<f64>().ok()? * 3600.0 + m.parse::<f64>().ok()? * 60.0 + s.parse::<f64>().ok()?)
}

/// Seconds from log line `a` to log line `b` ([`log_time`]; across midnight
/// too).
///
/// # Panics
/// When `b` is stamped before `a`.
pub fn log_gap(a: &str, b: &str) -> f64 {
    let (ta, tb) = (
        log_time(a).unwrap_or_else(|| panic!("no time in {a}")),
        log_time(b).unwrap_or_else(|| panic!("no time in {b}")),
    );
    let gap = match tb - ta {
        d if d < -43_200.0 => d + 86_400.0, // (over midnight)
        d => d,
    };
    assert!(gap >= 0.0, "{b:?} is stamped before {a:?}");
    gap
}
