//! `--input-command 'CMD'`: raw frames from a program the sender starts
//! itself, such as a camera tool writing to its stdout (`rpicam-vid ... -o -`).
//!
//! The command runs through `sh -c` with its stdout a pipe into the sender,
//! its stdin `/dev/null` and its stderr the sender's (so its messages land in
//! the same log or journal). It has its own process group, and the kernel
//! sends it SIGTERM if the sender dies (`PR_SET_PDEATHSIG`), so no camera is
//! left running behind a killed sender.
//!
//! - The sender stopping (SIGINT, SIGTERM) sends the command's group SIGTERM at
//!   once ([`stop`]): its stdout then ends, and the sender sends what it has
//!   queued and exits 0, without waiting for a frame that will not come.
//! - The sender ending for any other reason (`--count`, an error) does the
//!   same when the reader is dropped, then SIGKILL after [`KILL_AFTER`].
//! - The command ending by itself: its exit status is checked when its
//!   stdout ends. Success is the end of the input (the frames read are sent,
//!   exit 0); a failure is an error naming the command and its status (exit
//!   1), so a service manager restarts the pair.

use std::io::{self, Read};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering::SeqCst};
use std::time::{Duration, Instant};

/// How long the command may take to exit after SIGTERM (or after closing
/// its stdout) before its process group is sent SIGKILL.
const KILL_AFTER: Duration = Duration::from_secs(2);

/// The running command's process group (its pid), 0 when there is none.
static GROUP: AtomicI32 = AtomicI32::new(0);

/// Set when the sender stopped the command itself: its end by a signal is
/// then not a failure.
static STOPPED: AtomicBool = AtomicBool::new(false);

/// Sends the running input command's process group SIGTERM (the sender is
/// stopping). Nothing when no command runs. Async-signal-unsafe parts: none
/// (an atomic load and kill(2)), though it is called from a normal thread.
pub fn stop() {
    STOPPED.store(true, SeqCst);
    let group = GROUP.load(SeqCst);
    if group > 0 {
        // SAFETY: kill(2) on the process group of our own child, which has
        // not been reaped yet (GROUP is cleared before it is).
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(-group, libc::SIGTERM)
        };
    }
}

/// The input command's stdout as a reader; owns the child.
pub struct CommandReader {
    cmd: String,
    child: Child,
    stdout: ChildStdout,
    /// Set once the child has been reaped.
    status: Option<ExitStatus>,
}

impl CommandReader {
    /// Starts `sh -c CMD` with its stdout a pipe to the returned reader.
    pub fn spawn(cmd: &str) -> anyhow::Result<Self> {
        use anyhow::Context;
        if cmd.trim().is_empty() {
            anyhow::bail!("--input-command is empty: give the program that writes the raw frames, e.g. 'rpicam-vid -t 0 -n --codec yuv420 --width 640 --height 480 -o -'");
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
        // SAFETY: runs in the forked child before exec; prctl is async-signal-safe.
        #[allow(unsafe_code)]
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start --input-command `{cmd}` with sh -c"))?;
        let stdout = child.stdout.take().context("no stdout pipe")?;
        GROUP.store(child.id() as i32, SeqCst);
        log::info!("--input-command: started `{cmd}` (pid {})", child.id());
        Ok(CommandReader {
            cmd: cmd.to_owned(),
            child,
            stdout,
            status: None,
        })
    }

    /// A name for messages.
    pub fn name(&self) -> String {
        format!("--input-command `{}`", self.cmd)
    }

    /// Waits up to `limit` for the child to exit (polling), then reaps it.
    fn wait_for(&mut self, limit: Duration) -> Option<ExitStatus> {
        if self.status.is_some() {
            return self.status;
        }
        let t = Instant::now();
        loop {
            match self.child.try_wait() {
                Ok(Some(st)) => {
                    GROUP.store(0, SeqCst);
                    self.status = Some(st);
                    return self.status;
                }
                Ok(None) if t.elapsed() < limit => std::thread::sleep(Duration::from_millis(10)),
                Ok(None) => return None,
                Err(e) => {
                    log::warn!("{}: cannot wait for it: {e}", self.name());
                    return None;
                }
            }
        }
    }

    /// Signals the child's group (not reaped yet, so the group is ours).
    fn signal(&self, sig: libc::c_int) {
        if self.status.is_none() {
            // SAFETY: kill(2) on the process group of our own unreaped child.
            #[allow(unsafe_code)]
            unsafe {
                libc::kill(-(self.child.id() as libc::pid_t), sig)
            };
        }
    }

    /// Ends the child: SIGTERM to its group, SIGKILL after [`KILL_AFTER`].
    fn end(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.signal(libc::SIGTERM);
            if self.wait_for(KILL_AFTER).is_none() {
                log::warn!(
                    "{} did not exit within {} s of SIGTERM: killing it",
                    self.name(),
                    KILL_AFTER.as_secs()
                );
                self.signal(libc::SIGKILL);
                self.wait_for(KILL_AFTER);
            }
        }
        self.status
    }

    /// The stream has ended: is the way the child ended an error?
    fn check_end(&mut self) -> io::Result<()> {
        // A command that closed its stdout but runs on is ended here.
        let st = match self.wait_for(KILL_AFTER) {
            Some(st) => st,
            None => {
                log::warn!(
                    "{} closed its output but did not exit within {} s: stopping it",
                    self.name(),
                    KILL_AFTER.as_secs()
                );
                self.end();
                return Ok(());
            }
        };
        if st.success() {
            log::info!("{} exited with status 0", self.name());
            return Ok(());
        }
        // Killed by the stop that is ending the sender too (systemd signals
        // the whole unit at once): the sender's handler may still be running.
        let stop_sig = matches!(
            st.signal().or(st.code().map(|c| c - 128)),
            Some(libc::SIGINT | libc::SIGTERM | libc::SIGPIPE)
        );
        if stop_sig {
            for _ in 0..50 {
                if STOPPED.load(SeqCst) || crate::pipeline::stop_requested().is_some() {
                    log::info!("{} stopped ({st})", self.name());
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let hint = match st.code() {
            Some(127) => " (127: command not found; its message is above)",
            Some(126) => " (126: not executable)",
            _ => "",
        };
        Err(io::Error::other(format!(
            "{} failed: {}{hint}",
            self.name(),
            describe(st)
        )))
    }
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
        if self.status.is_some() {
            return Ok(0);
        }
        match self.stdout.read(buf)? {
            0 if !buf.is_empty() => {
                self.check_end()?;
                Ok(0)
            }
            n => Ok(n),
        }
    }
}

impl Drop for CommandReader {
    fn drop(&mut self) {
        if self.status.is_none() {
            STOPPED.store(true, SeqCst);
            if let Some(st) = self.end() {
                log::info!("{} stopped ({st})", self.name());
            }
        }
    }
}
