//! `--exec 'CMD'`: one long-running consumer process fed every mask on its stdin.
//!
//! The command runs once, through `sh -c`, with its stdin a pipe from the
//! receiver and its stdout/stderr inherited. Each frame is written to that
//! pipe whole, back to back, in the chosen stream format (raw or gray8). A
//! slow consumer slows the receiver down (and, through TCP, the sender): no
//! frame is dropped silently.
//!
//! If the child exits while the receiver is still running, a watcher thread
//! reports it and stops the receiver at once, even when no frame is
//! arriving: through the hook given to [`on_death`] (the receiver's normal
//! stop, whose summary is then printed, and exit status
//! [`EXIT_CHILD_DIED`]), or, before there is one, by ending the process. At the end of the stream (`--count` reached) the
//! pipe is closed so the child sees end of file, and the receiver waits for
//! it; a non-zero exit then is an error too.

use anyhow::{bail, Context, Result};
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::process::{ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

/// Exit status of the receiver when the `--exec` child dies early.
pub const EXIT_CHILD_DIED: i32 = 3;

/// The running `--exec` child.
pub struct Exec {
    cmd: String,
    stdin: Option<ChildStdin>,
    status: mpsc::Receiver<io::Result<ExitStatus>>,
    finishing: Arc<AtomicBool>,
    frames: Arc<AtomicU64>,
    pid: u32,
}

/// How long the child may take to exit once its stdin is closed before it
/// is sent SIGTERM.
const EXIT_GRACE: Duration = Duration::from_secs(10);

/// Set once the receiver is stopping (a signal, `--count`): the child ending
/// then, even by the same signal (systemd signals the whole cgroup), is part
/// of the stop, not a death that ends the receiver early.
static STOPPING: AtomicBool = AtomicBool::new(false);

/// The running child's process group (its pid), 0 when there is none.
static CHILD_GROUP: AtomicI32 = AtomicI32::new(0);

/// Set when the child died while the receiver was running ([`died`]).
static DIED: AtomicBool = AtomicBool::new(false);

/// Set once [`Exec::finish`] closes the child's stdin: its own
/// [`EXIT_GRACE`] runs from there, and [`stopping`]'s timer leaves the
/// child alone.
static FINISHING: AtomicBool = AtomicBool::new(false);

/// Set when [`stopping`]'s timer sent the child SIGTERM: its death by that
/// signal is then not a clean stop (it had not taken its input to the end).
static STOP_KILLED: AtomicBool = AtomicBool::new(false);

/// What stops the receiver when the child dies ([`on_death`]).
type DeathHook = Box<dyn Fn(String) + Send + Sync>;
static ON_DEATH: std::sync::OnceLock<DeathHook> = std::sync::OnceLock::new();

/// Sets how the receiver is stopped when the child dies while it runs
/// (`stop` is given the reason): its normal stop, so that the frames in
/// hand settle and the summary is printed. Until this is set, a death ends
/// the process at once with [`EXIT_CHILD_DIED`]. Set once; later calls are
/// ignored.
pub fn on_death(stop: impl Fn(String) + Send + Sync + 'static) {
    let _ = ON_DEATH.set(Box::new(stop));
}

/// Whether the child died while the receiver was running (said already):
/// the receiver should then exit with [`EXIT_CHILD_DIED`].
pub fn died() -> bool {
    DIED.load(Ordering::SeqCst)
}

/// Says that the receiver is stopping (see [`STOPPING`]). The first call
/// also starts a timer: a child still running [`EXIT_GRACE`] later whose
/// stdin was not closed yet is sent SIGTERM (its whole group), whatever the
/// receiver is blocked on (a write into a pipe the child no longer reads
/// holds the output's lock, so the end of its input may never come). Once
/// its stdin is closed, [`Exec::finish`] gives it its own [`EXIT_GRACE`].
pub fn stopping() {
    if STOPPING.swap(true, Ordering::SeqCst) || CHILD_GROUP.load(Ordering::SeqCst) == 0 {
        return;
    }
    let _ = std::thread::Builder::new()
        .name("exec-stop".into())
        .spawn(|| {
            std::thread::sleep(EXIT_GRACE);
            let group = CHILD_GROUP.load(Ordering::SeqCst);
            if group != 0 && !FINISHING.load(Ordering::SeqCst) {
                STOP_KILLED.store(true, Ordering::SeqCst);
                log::warn!(
                    "--exec child (pid {group}) still running {} s after the stop began: \
                     sending its process group SIGTERM",
                    EXIT_GRACE.as_secs()
                );
                // SAFETY: kill(2) on our child's process group, not reaped
                // yet (the watcher clears CHILD_GROUP when it has been).
                unsafe { libc::kill(-group, libc::SIGTERM) };
            }
        });
}

/// Ends the running `--exec` child's process group at once (SIGKILL): the
/// receiver is exiting without waiting for it.
pub fn kill_now() {
    let group = CHILD_GROUP.load(Ordering::SeqCst);
    if group != 0 {
        log::warn!("--exec child (pid {group}) still running: sending its process group SIGKILL");
        // SAFETY: kill(2) on our child's process group, not reaped yet.
        unsafe { libc::kill(-group, libc::SIGKILL) };
    }
}

impl Exec {
    /// Starts `sh -c CMD` with a pipe on its stdin and a thread that watches it.
    /// `stdout_is_data`: the receiver's stdout carries masks (`--out -`): the
    /// program's stdout goes to stderr instead, so its lines cannot land
    /// between the frames.
    pub fn spawn(cmd: &str, stdout_is_data: bool) -> Result<Self> {
        let mut command = Command::new("sh");
        if stdout_is_data {
            command.stdout(Stdio::from(
                io::stderr()
                    .as_fd()
                    .try_clone_to_owned()
                    .context("--exec: cannot give the program stderr as its stdout")?,
            ));
        }
        // Its own process group: Ctrl-C at a terminal reaches the receiver
        // only, which then ends the child by closing its stdin (and, if it
        // does not exit, signals the whole group: pipelines too).
        command
            .arg("-c")
            .arg(cmd)
            .stdin(Stdio::piped())
            .process_group(0);
        // The receiver blocks SIGINT and SIGTERM in all its threads (a signal
        // thread waits for them), and a child inherits that mask: give the
        // child the default, so Ctrl-C and SIGTERM reach it.
        // And SIGTERM when the receiver dies (killed, or crashed) without
        // stopping it: a program that does not end at the end of its input
        // (a loop in sh) must not outlive it. (Spawned by the main thread,
        // which lives as long as the receiver: the signal follows the
        // thread that made the child.)
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: runs in the forked child before exec; sigemptyset,
        // sigprocmask, prctl and getppid are async-signal-safe and touch
        // only this stack's set.
        unsafe {
            command.pre_exec(move || {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                if libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) != 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // the receiver died before the line above took effect
                if libc::getppid() != parent {
                    return Err(io::Error::other("the receiver is gone"));
                }
                Ok(())
            });
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start --exec command `{cmd}` with sh -c"))?;
        let stdin = child.stdin.take();
        let pid = child.id();
        CHILD_GROUP.store(pid as i32, Ordering::SeqCst);
        log::info!("--exec: started `{cmd}` (pid {pid})");
        let finishing = Arc::new(AtomicBool::new(false));
        let frames = Arc::new(AtomicU64::new(0));
        let (tx, rx) = mpsc::channel();
        {
            let finishing = finishing.clone();
            let frames = frames.clone();
            let cmd = cmd.to_owned();
            std::thread::Builder::new()
                .name("exec-watch".into())
                .spawn(move || {
                    let st = child.wait();
                    CHILD_GROUP.store(0, Ordering::SeqCst);
                    // Killed by the signal that is stopping the receiver too
                    // (a cgroup stopped as one): the receiver's signal thread
                    // may take a moment to say so (5 s at most).
                    if matches!(&st, Ok(s) if stop_signal(s)) {
                        for _ in 0..500 {
                            if STOPPING.load(Ordering::SeqCst) {
                                break;
                            }
                            std::thread::sleep(Duration::from_millis(10));
                        }
                    }
                    if !finishing.load(Ordering::SeqCst) && !STOPPING.load(Ordering::SeqCst) {
                        let why = format!(
                            "--exec child `{cmd}` {} after {} frame(s)",
                            describe(&st),
                            frames.load(Ordering::SeqCst)
                        );
                        say!("bitmask-recv: error: {why}; stopping");
                        DIED.store(true, Ordering::SeqCst);
                        match ON_DEATH.get() {
                            Some(stop) => stop(why),
                            None => std::process::exit(EXIT_CHILD_DIED),
                        }
                    }
                    let _ = tx.send(st);
                })
                .context("cannot start the --exec watcher thread")?;
        }
        Ok(Exec {
            cmd: cmd.to_owned(),
            stdin,
            status: rx,
            finishing,
            frames,
            pid,
        })
    }

    /// Writes one whole frame to the child's stdin.
    pub fn write_frame(&mut self, data: &[u8]) -> Result<()> {
        let Some(stdin) = self.stdin.as_mut() else {
            bail!("--exec child `{}` was already finished", self.cmd);
        };
        if let Err(e) = stdin.write_all(data) {
            // Usually the child has exited: let the watcher report its status
            // (it ends the process); if it is still alive it closed its stdin.
            if let Ok(st) = self.status.recv_timeout(Duration::from_secs(2)) {
                bail!(
                    "--exec child `{}` {} after {} frame(s)",
                    self.cmd,
                    describe(&st),
                    self.frames.load(Ordering::SeqCst)
                );
            }
            bail!(
                "--exec child `{}` stopped reading its stdin after {} frame(s): {e}",
                self.cmd,
                self.frames.load(Ordering::SeqCst)
            );
        }
        self.frames.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// Closes the child's stdin and waits for it to exit; fails when it exits non-zero.
    /// (Nothing to wait for, and nothing more to say, when it died while the
    /// receiver was running: see [`died`].)
    pub fn finish(&mut self) -> Result<()> {
        if self.stdin.is_none() {
            return Ok(());
        }
        if died() {
            drop(self.stdin.take());
            return Ok(());
        }
        self.finishing.store(true, Ordering::SeqCst);
        FINISHING.store(true, Ordering::SeqCst);
        drop(self.stdin.take());
        let st = match self.status.recv_timeout(EXIT_GRACE) {
            Ok(st) => st,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                // A child that does not read its stdin never sees its end:
                // do not wait for it forever (at Ctrl-C, SIGTERM).
                // SAFETY: kill(2) on the process group of our own child
                // (its pid, process_group(0)), which the watcher has not
                // reaped yet (it would have sent its status).
                unsafe { libc::kill(-(self.pid as libc::pid_t), libc::SIGTERM) };
                let st = self.status.recv_timeout(Duration::from_secs(2));
                let then = match st {
                    Ok(st) => format!(", then it {}", describe(&st)),
                    Err(_) => {
                        // It ignores SIGTERM: nothing of it may outlive the
                        // receiver (a service manager or deploy would find
                        // it still holding its files, its camera, its port).
                        // SAFETY: as above.
                        unsafe { libc::kill(-(self.pid as libc::pid_t), libc::SIGKILL) };
                        let _ = self.status.recv_timeout(Duration::from_secs(1));
                        ", which it ignored; 2 s later SIGKILL to its process group".into()
                    }
                };
                bail!(
                    "--exec child `{}` (pid {}) had not exited {} s after its stdin was closed; \
                     sent it SIGTERM{then}",
                    self.cmd,
                    self.pid,
                    EXIT_GRACE.as_secs(),
                )
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                bail!("the --exec watcher thread is gone")
            }
        };
        match st {
            Ok(s) if s.success() => {
                log::info!("--exec child `{}` exited cleanly", self.cmd);
                Ok(())
            }
            // Ended by the stop's timer: it had not taken its input to the
            // end (a frame in hand, or its stdin, never came through).
            Ok(s) if STOP_KILLED.load(Ordering::SeqCst) && stop_signal(&s) => bail!(
                "--exec child `{}` was still running {} s after the stop began, its input not \
                 taken to the end: it was sent SIGTERM and {s}",
                self.cmd,
                EXIT_GRACE.as_secs()
            ),
            // Signalled with the receiver (a whole cgroup or group stopped).
            Ok(s) if STOPPING.load(Ordering::SeqCst) && stop_signal(&s) => {
                log::info!(
                    "--exec child `{}` stopped with the receiver ({s})",
                    self.cmd
                );
                Ok(())
            }
            other => bail!(
                "--exec child `{}` {} at the end of the stream",
                self.cmd,
                describe(&other)
            ),
        }
    }
}

/// Whether the child was ended by SIGINT or SIGTERM.
fn stop_signal(s: &ExitStatus) -> bool {
    use std::os::unix::process::ExitStatusExt;
    matches!(s.signal(), Some(libc::SIGINT | libc::SIGTERM))
}

fn describe(st: &io::Result<ExitStatus>) -> String {
    match st {
        Ok(s) => format!("exited ({s})"),
        Err(e) => format!("could not be waited for ({e})"),
    }
}
