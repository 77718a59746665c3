//! `--input-command 'CMD'`: raw frames from a program the sender starts
//! itself, such as a camera tool writing to its stdout (`rpicam-vid ... -o -`).
//!
//! The command runs through `sh -c` with its stdout a pipe into the sender,
//! its stdin `/dev/null` and its stderr the sender's (so its messages land in
//! the same log or journal). It has its own process group, and the kernel
//! sends the shell SIGTERM if the sender dies (`PR_SET_PDEATHSIG`); a camera
//! program the shell started dies at its next write into the closed pipe.
//!
//! - The sender stopping (SIGINT, SIGTERM) sends the command's group SIGTERM
//!   at once ([`stop`]) and ends the input without waiting for the next
//!   frame: the sender sends what it has queued and exits 0, however the
//!   command then exits.
//! - The sender ending for any other reason (`--count`, an error) ends the
//!   command when the reader is dropped: SIGTERM to its group, the pipe
//!   drained meanwhile (a camera blocked on a full pipe can then exit
//!   cleanly), SIGKILL to whatever is left after [`KILL_AFTER`].
//! - The command ending by itself: its exit status is checked when its
//!   output ends. Success is the end of the input (the frames read are sent,
//!   exit 0); a failure is an error naming the status (exit 1), so a service
//!   manager restarts the pair. A command that exits while something it
//!   started keeps the pipe open (a process left in the background) ends
//!   the input [`KILL_AFTER`] later; one that closes its output but does
//!   not exit is stopped [`KILL_AFTER`] later, an error.
//! - The command stalling: silence after it has written is said
//!   ([`STALL_SAID`]), while the sender goes on waiting.

use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering::SeqCst};
use std::time::{Duration, Instant};

/// How long the command may take to exit after SIGTERM before its process
/// group is sent SIGKILL; also how long a pipe may stay open after the
/// command itself has exited.
const KILL_AFTER: Duration = Duration::from_secs(2);

/// How often a read waiting for the command looks at the stop flag and at
/// whether the command is still there.
const POLL: Duration = Duration::from_millis(100);

/// The command's process group (the shell's pid) while any of it may be
/// alive, 0 otherwise.
static GROUP: AtomicI32 = AtomicI32::new(0);

/// Set when the sender is stopping the command: however it ends then is
/// the stop, not a failure.
static STOPPED: AtomicBool = AtomicBool::new(false);

/// Set once the group was sent SIGTERM (a second one makes some programs,
/// ffmpeg among them, quit without finishing their output).
static TERM_SENT: AtomicBool = AtomicBool::new(false);

/// SIGTERM to the command's group, once (none is used up while there is
/// no group: a stop before the command started).
fn terminate_group() {
    if GROUP.load(SeqCst) > 0 && !TERM_SENT.swap(true, SeqCst) {
        signal_group(libc::SIGTERM);
    }
}

fn stopping() -> bool {
    STOPPED.load(SeqCst) || crate::pipeline::stop_requested().is_some()
}

/// Sends `sig` to the running command's process group, if any.
fn signal_group(sig: libc::c_int) {
    let group = GROUP.load(SeqCst);
    if group > 0 {
        // SAFETY: kill(2) on the process group of our child; GROUP is
        // cleared only once no member of it is left.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(-group, sig)
        };
    }
}

/// The sender is stopping: SIGTERM to the command's process group (its
/// reader then ends the input at once). Nothing when no command runs.
pub fn stop() {
    STOPPED.store(true, SeqCst);
    terminate_group();
}

/// The sender exits now: SIGKILL to whatever is left of the command.
pub fn kill_now() {
    signal_group(libc::SIGKILL);
}

/// Whether any process of group `g` is left (zombies of ours included).
fn group_alive(g: i32) -> bool {
    // SAFETY: kill(2) with signal 0 only checks for existence.
    #[allow(unsafe_code)]
    let r = unsafe { libc::kill(-g, 0) };
    r == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// The input command's stdout as a reader; owns the child.
pub struct CommandReader {
    cmd: String,
    child: Child,
    stdout: ChildStdout,
    group: i32,
    /// The shell's status once reaped.
    status: Option<ExitStatus>,
    /// When the shell was seen gone while its output stayed open.
    exited_at: Option<Instant>,
    /// The input has ended (end of output, a stop, or an error reported).
    ended: bool,
    /// When it was started, until its first byte (then `None`).
    silent_since: Option<Instant>,
    /// Its silence was reported ([`FIRST_BYTE_SAID`]).
    silence_said: bool,
    /// After its first byte: when bytes last came, the longest silence
    /// between them so far, how many came, and when a silence was last
    /// said ([`STALL_SAID`]).
    last_data: Instant,
    longest_gap: Duration,
    bytes: u64,
    /// While a stall lasts, when it is said (`Reminder`: at once, then
    /// after 30 s, doubling up to 10 min).
    stall: Option<crate::pipeline::Reminder>,
}

/// A command that wrote, then has written nothing for this long (or four
/// times its longest silence so far: a time-lapse is quiet between
/// frames) is said to, and again after 30 s, at doubling intervals up to
/// 10 minutes, while it lasts: a
/// camera that stopped delivering (its front end timed out, a USB camera
/// unplugged under a reader blocked in the device) leaves the sender
/// waiting, its progress line still.
const STALL_SAID: Duration = Duration::from_secs(10);

/// A command that has written nothing this long after its start is
/// reported (once): a camera another program holds, a command waiting for
/// input, a typo in an option that the tool answers by waiting.
const FIRST_BYTE_SAID: Duration = Duration::from_secs(5);

impl CommandReader {
    /// Starts `sh -c CMD` with its stdout a pipe to the returned reader.
    pub fn spawn(cmd: &str) -> anyhow::Result<Self> {
        use anyhow::Context;
        if cmd.trim().is_empty() {
            anyhow::bail!("--input-command is empty: give the program that writes the raw frames, e.g. 'rpicam-vid -t 0 -n --verbose=0 --flush --codec yuv420 --width 640 --height 480 -o -'");
        }
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(cmd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0);
        // (The sender blocks no signals, unlike the receiver, so the child's
        // mask needs no reset; handlers are reset by exec.)
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: runs in the forked child before exec; prctl and getppid
        // are async-signal-safe.
        #[allow(unsafe_code)]
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // the sender died before the line above took effect
                if libc::getppid() != parent {
                    return Err(io::Error::other("the sender is gone"));
                }
                Ok(())
            });
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start --input-command `{cmd}` with sh -c"))?;
        let stdout = child.stdout.take().context("no stdout pipe")?;
        let group = child.id() as i32;
        GROUP.store(group, SeqCst);
        log::info!("--input-command: started `{cmd}` (pid {group})");
        Ok(CommandReader {
            cmd: cmd.to_owned(),
            child,
            stdout,
            group,
            status: None,
            exited_at: None,
            ended: false,
            silent_since: Some(Instant::now()),
            silence_said: false,
            last_data: Instant::now(),
            longest_gap: Duration::ZERO,
            bytes: 0,
            stall: None,
        })
    }

    /// A name for messages.
    pub fn name(&self) -> String {
        format!("--input-command `{}`", self.cmd)
    }

    /// Reaps the shell if it has exited.
    fn poll_exit(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            if let Ok(Some(st)) = self.child.try_wait() {
                self.status = Some(st);
            }
        }
        self.status
    }

    /// Waits up to `limit` for the output to have data or end.
    fn readable(&self, limit: Duration) -> io::Result<bool> {
        let mut p = libc::pollfd {
            fd: self.stdout.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        #[allow(unsafe_code)]
        let r = unsafe { libc::poll(&mut p, 1, limit.as_millis() as libc::c_int) };
        match r {
            r if r > 0 => Ok(true),
            0 => Ok(false),
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    Ok(false)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Ends the whole process group: SIGTERM, the pipe drained while it
    /// exits, SIGKILL to what is left after [`KILL_AFTER`]. Returns the
    /// shell's status.
    fn end_group(&mut self) -> Option<ExitStatus> {
        if GROUP.load(SeqCst) != self.group {
            return self.poll_exit(); // already ended
        }
        STOPPED.store(true, SeqCst);
        terminate_group();
        let t = Instant::now();
        let mut sink = [0u8; 16384];
        let mut open = true;
        loop {
            self.poll_exit();
            if !group_alive(self.group) {
                break;
            }
            if t.elapsed() >= KILL_AFTER {
                log::warn!(
                    "{} had not exited {} s after SIGTERM: killing its process group",
                    self.name(),
                    KILL_AFTER.as_secs()
                );
                signal_group(libc::SIGKILL);
                if self.status.is_none() {
                    self.status = self.child.wait().ok();
                }
                break;
            }
            // keep taking its output, so a writer blocked on a full pipe can finish
            if open && self.readable(Duration::from_millis(10)).unwrap_or(false) {
                open = !matches!(self.stdout.read(&mut sink), Ok(0) | Err(_));
            } else {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        GROUP.store(0, SeqCst);
        self.status
    }

    /// The output has ended: is the way the command ended an error?
    fn check_end(&mut self) -> io::Result<()> {
        let t = Instant::now();
        while self.poll_exit().is_none() && t.elapsed() < KILL_AFTER {
            std::thread::sleep(Duration::from_millis(10));
        }
        let Some(st) = self.status else {
            log::warn!(
                "{} closed its output but did not exit within {} s: stopping it",
                self.name(),
                KILL_AFTER.as_secs()
            );
            // (ending the group counts as a stop: asked first)
            let stop = stopping();
            let st = self.end_group();
            if stop {
                return Ok(());
            }
            // (a camera whose output side failed while its main loop hung
            // has not ended well: not a success for a service manager)
            return Err(io::Error::other(format!(
                "the command closed its output but did not exit, and had to be stopped ({})",
                st.map_or("status unknown".into(), describe)
            )));
        };
        // Killed by the stop that is ending the sender too (systemd signals
        // the whole unit at once): the sender's own handler may take a moment.
        for _ in 0..50 {
            if st.success() || stopping() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if stopping() {
            log::info!("{} stopped ({st})", self.name());
            return Ok(());
        }
        if st.success() {
            log::info!("{} exited with status 0", self.name());
            return Ok(());
        }
        Err(failure(st))
    }
}

/// The error for a command that ended with `st`, not success.
fn failure(st: ExitStatus) -> io::Error {
    let hint = match st.code() {
        Some(127) => " (127: command not found; its message is above)",
        Some(126) => " (126: not executable)",
        _ => "",
    };
    io::Error::other(format!("the command failed: {}{hint}", describe(st)))
}

/// "exit status 3", "killed by signal 9".
fn describe(st: ExitStatus) -> String {
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => format!("{st}"),
    }
}

impl Read for CommandReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.ended || buf.is_empty() {
            return Ok(0);
        }
        // (a silence is the time waited here: while the sender was not
        // reading, a full queue, say, the camera's bytes wait in the pipe)
        if self.silent_since.is_none() && self.stall.is_none() {
            self.last_data = Instant::now();
        }
        loop {
            if self.readable(POLL)? {
                let n = self.stdout.read(buf)?;
                if n > 0 {
                    if let Some(t) = self.silent_since.take() {
                        if self.silence_said {
                            log::info!(
                                "{} wrote its first bytes after {:.0} s",
                                self.name(),
                                t.elapsed().as_secs_f64()
                            );
                        }
                    } else {
                        let gap = self.last_data.elapsed();
                        if self.stall.take().is_some() {
                            log::info!(
                                "{} writes again after {:.0} s",
                                self.name(),
                                gap.as_secs_f64()
                            );
                        } else {
                            // (a stall said is not a time-lapse's period)
                            self.longest_gap = self.longest_gap.max(gap);
                        }
                    }
                    self.last_data = Instant::now();
                    self.bytes += n as u64;
                    return Ok(n);
                }
                self.ended = true;
                self.check_end()?;
                return Ok(0);
            }
            if let Some(t) = self.silent_since {
                if !self.silence_said && t.elapsed() >= FIRST_BYTE_SAID {
                    self.silence_said = true;
                    log::warn!(
                        "{} has written nothing in {} s (a camera held by another program, \
                         or a command waiting for input, shows this; so does a slow \
                         time-lapse; its own messages, if any, are above)",
                        self.name(),
                        FIRST_BYTE_SAID.as_secs()
                    );
                }
            }
            let quiet = self.last_data.elapsed();
            if self.silent_since.is_none()
                && quiet >= STALL_SAID.max(self.longest_gap * 4)
                && self
                    .stall
                    .get_or_insert_with(Default::default)
                    .hit()
                    .is_some()
            {
                log::warn!(
                    "{} has written nothing for {:.0} s, after {} bytes (a camera that stopped \
                     delivering frames shows this, or a time-lapse slower than that; the sender \
                     waits for it; its own messages, if any, are above)",
                    self.name(),
                    quiet.as_secs_f64(),
                    self.bytes
                );
            }
            if stopping() {
                // the stop: the frame being read will not be finished
                self.ended = true;
                let st = self.end_group();
                log::info!(
                    "{} stopped ({})",
                    self.name(),
                    st.map_or("status unknown".into(), describe)
                );
                return Ok(0);
            }
            if self.poll_exit().is_some() {
                let since = *self.exited_at.get_or_insert_with(Instant::now);
                if since.elapsed() >= KILL_AFTER {
                    log::warn!(
                        "{} exited, but something it started keeps its output open (a process \
                         left in the background?): ending the input",
                        self.name()
                    );
                    self.ended = true;
                    self.end_group();
                    return match self.status {
                        Some(st) if !st.success() => Err(failure(st)),
                        _ => Ok(0),
                    };
                }
            }
        }
    }
}

impl Drop for CommandReader {
    fn drop(&mut self) {
        if GROUP.load(SeqCst) == self.group {
            self.poll_exit();
            let running = group_alive(self.group);
            let st = self.end_group();
            if running {
                log::info!(
                    "{} stopped ({})",
                    self.name(),
                    st.map_or("status unknown".into(), describe)
                );
            }
        }
    }
}
