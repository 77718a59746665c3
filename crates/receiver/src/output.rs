//! Where masks go: files in a directory (raw, gray8, PBM, PNG), a stream on
//! stdout, one `--latest` file replaced atomically, and an `--exec` child.
//!
//! Any combination of those may be used at once; each frame is encoded once
//! in `--format` for every sink, and once more for `--latest` when its
//! extension names another format.

use crate::exec::Exec;
use anyhow::{bail, Context, Result};
use bitmask_core::unpack_rows_gray8;
use bitmask_wire::Header;
use clap::ValueEnum;
use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// File format of each mask.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Packed bits as on the wire (numpy.packbits(mask, axis=1)).
    Raw,
    /// One byte per pixel, 0 or 255, no header (ffmpeg -pix_fmt gray, numpy fromfile);
    /// 8 times the packed frame in memory while it is written.
    Gray8,
    /// PBM P4 (1 = black, so bits are inverted to show like the PNG).
    Pbm,
    /// 1-bit grayscale PNG, 1 = white.
    Png,
}

impl Format {
    /// The file name extension of its frame files.
    pub fn ext(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Gray8 => "gray",
            Format::Pbm => "pbm",
            Format::Png => "png",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Format::Gray8 => "gray8",
            other => other.ext(),
        }
    }

    /// The format a file name's extension names (`.raw`, `.gray`, `.pbm`,
    /// `.png`), if any.
    pub fn for_extension(p: &Path) -> Option<Format> {
        let ext = p.extension()?.to_str()?.to_ascii_lowercase();
        Format::value_variants()
            .iter()
            .copied()
            .find(|f| f.ext() == ext)
    }

    /// Whether masks in this format can follow each other in one byte stream
    /// with no framing (every mask of a stream has the same size).
    fn streams(self) -> bool {
        matches!(self, Format::Raw | Format::Gray8)
    }
}

/// What [`Output::write`] did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// Written to every sink.
    Now,
    /// Written to some sinks; the others failed (logged, a line a second
    /// at most).
    Partly,
    /// Found in the output directory already, as it is: nothing written.
    Before,
}

/// Every sink a frame goes to.
pub struct Output {
    format: Format,
    /// One file per frame in this directory.
    dir: Option<PathBuf>,
    /// Masks back to back on stdout: its file descriptor, unbuffered (one
    /// `write_all` a mask; std's `Stdout` would copy each mask into its
    /// buffer and scan it for newlines).
    stdout: Option<fs::File>,
    /// The device of the directory holding `dir`, at the start: `dir` is
    /// made again only there (not under an unmounted disk's mount point).
    dir_parent_dev: Option<u64>,
    /// Mount points frames must not be written past once their disk is
    /// gone: `dir`, and with `--per-sender` the base directory.
    watches: Vec<MountWatch>,
    /// One file always holding the newest mask, in its own format.
    latest: Option<(PathBuf, Format)>,
    /// Encoding buffer of `--latest` when its format differs, reused.
    latest_buf: Vec<u8>,
    /// A long-running consumer fed on its stdin.
    exec: Option<Exec>,
    /// Encoding buffer, reused.
    buf: Vec<u8>,
    /// Why the stream sinks (stdout, `--exec`) can take no more masks: their
    /// reader is gone. Nothing is written after that.
    dead: Option<String>,
    /// When a slow stream reader was last warned about.
    slow_warned: Option<Instant>,
    /// Whether a frame file had to take another name (warned once).
    renumbered: bool,
    /// `--latest` failures beside other outputs, logged a line a second at most.
    latest_log: crate::session::Throttle,
    /// The files this output wrote while checking for frames written
    /// before a restart ([`RECENT`] at most): not taken for such frames
    /// ([`written_before`]). Nothing is kept on the ordinary path.
    recent: std::collections::VecDeque<PathBuf>,
    /// `--keep N`: the bound on the frame files in `dir`.
    keep: Option<std::sync::Arc<crate::keep::Keep>>,
}

/// Files an [`Output`] remembers having written.
const RECENT: usize = 256;

/// A write to stdout or `--exec` slower than this is logged: the reader is
/// not keeping up, and every sender waits for it.
const SLOW_WRITE: Duration = Duration::from_secs(1);

impl Output {
    /// The sinks of `--out DIR|-`, `--latest FILE` and `--exec CMD` (at least one).
    pub fn open(
        out: Option<&Path>,
        latest: Option<&Path>,
        exec: Option<&str>,
        format: Format,
    ) -> Result<Self> {
        if out.is_none() && latest.is_none() && exec.is_none() {
            bail!("nowhere to put the masks: give --out DIR|-, --latest FILE or --exec CMD");
        }
        let stream_check = |what: &str| -> Result<()> {
            if !format.streams() {
                bail!(
                    "{what} writes masks back to back, which needs --format raw or gray8 (not {})",
                    format.name()
                );
            }
            Ok(())
        };
        // (before the --out directory is made, what can be told without
        // it: a refused --latest or --exec leaves no directory behind; the
        // --latest file's own directory may be the one about to be made)
        if let Some(p) = latest {
            latest_format(p, format)?;
        }
        if exec.is_some() {
            stream_check("--exec")?;
        }
        let mut o = Output {
            format,
            dir: None,
            dir_parent_dev: None,
            watches: Vec::new(),
            stdout: None,
            latest: None,
            exec: None,
            buf: Vec::new(),
            latest_buf: Vec::new(),
            dead: None,
            slow_warned: None,
            renumbered: false,
            latest_log: Default::default(),
            recent: Default::default(),
            keep: None,
        };
        let mut made = None;
        match out {
            Some(p) if p.as_os_str() == "-" => {
                stream_check("--out -")?;
                let fd = io::stdout()
                    .as_fd()
                    .try_clone_to_owned()
                    .context("--out -: cannot use stdout")?;
                o.stdout = Some(fs::File::from(fd));
            }
            Some(p) => {
                made = Some(check_dir_target(p)?);
                o.dir_parent_dev = parent_dev(p);
                o.watches.push(MountWatch::new(p));
                o.dir = Some(p.to_path_buf());
            }
            None => {}
        }
        if let Some(p) = latest {
            // (a --latest FILE whose own directory is missing: the --out
            // directories just made for nothing are removed again)
            let f =
                check_latest(p, format).inspect_err(|_| made.iter().for_each(MadeDirs::undo))?;
            if f != format {
                log::info!(
                    "--latest {}: written as {} (its extension names it), the other outputs as {}",
                    p.display(),
                    f.name(),
                    format.name()
                );
            }
            o.latest = Some((p.to_path_buf(), f));
        }
        if let Some(cmd) = exec {
            stream_check("--exec")?;
            o.exec = Some(Exec::spawn(cmd, o.stdout.is_some())?);
        }
        Ok(o)
    }

    /// Refuses frames while `w` fails, besides the output's own directory
    /// (`--per-sender`'s base directory for a sender's own directory).
    pub fn watch(&mut self, w: &MountWatch) {
        self.watches.push(w.clone());
    }

    /// Keeps the frame files of the output's directory to `k`'s bound
    /// (`--keep N`), the oldest removed as new ones are written.
    pub fn keep(&mut self, k: std::sync::Arc<crate::keep::Keep>) {
        self.keep = Some(k);
    }

    /// Writes one decoded mask (wire layout) of the frame `h` to every sink.
    /// With `check`, first looks in the output directory: when it holds the
    /// frame's file already, byte for byte (written before the receiver
    /// restarted), nothing is written.
    pub fn write(&mut self, h: &Header, bits: &[u8], check: bool) -> Result<Written> {
        let data: &[u8] = match self.format {
            Format::Raw => bits,
            Format::Gray8 => {
                // (every byte rewritten: the buffer is only cleared, and
                // zero-filled, when the size changes)
                let n = gray8_len(h.width, h.height)?;
                if self.buf.len() != n {
                    self.buf.clear();
                    encode(self.format, h.width, h.height, bits, &mut self.buf)?;
                } else {
                    unpack_rows_gray8(bits, h.width as usize, h.height as usize, &mut self.buf)?;
                }
                &self.buf
            }
            Format::Pbm | Format::Png => {
                self.buf.clear();
                encode(self.format, h.width, h.height, bits, &mut self.buf)?;
                &self.buf
            }
        };
        if let Some(why) = &self.dead {
            bail!("{why}");
        }
        if let (true, Some(dir)) = (check, &self.dir) {
            if written_before(dir, h.sequence, self.format.ext(), data, &self.recent) {
                return Ok(Written::Before);
            }
        }
        let t = Instant::now();
        if let Some(exec) = self.exec.as_mut() {
            if let Err(e) = exec.write_frame(data) {
                let why = format!("{e:#}");
                self.dead = Some(why.clone());
                bail!(why);
            }
        }
        if let Some(w) = self.stdout.as_mut() {
            if let Err(e) = w.write_all(data) {
                let why = if e.kind() == io::ErrorKind::BrokenPipe {
                    "stdout was closed: the program reading the masks (--out -) is gone".to_string()
                } else {
                    format!("cannot write the masks to stdout (--out -): {e}")
                };
                self.dead = Some(why.clone());
                bail!(why);
            }
        }
        let took = t.elapsed();
        if took > SLOW_WRITE
            && self
                .slow_warned
                .is_none_or(|w| w.elapsed() > SLOW_WRITE * 10)
        {
            self.slow_warned = Some(Instant::now());
            log::warn!(
                "writing one mask to {} took {:.1} s: its reader is not keeping up, and every \
                 sender waits for it",
                if self.exec.is_some() {
                    "--exec"
                } else {
                    "stdout"
                },
                took.as_secs_f64()
            );
        }
        // Every file sink is tried; the frame is written when one took it
        // (the stream sinks took it above).
        let mut took = self.exec.is_some() || self.stdout.is_some();
        let mut failed: Option<anyhow::Error> = None;
        if let Some(dir) = &self.dir {
            let name = format!("frame-{:06}", h.sequence);
            let mut r = self
                .watches
                .iter()
                .try_for_each(MountWatch::check)
                .and_then(|()| write_new(dir, &name, self.format.ext(), data));
            // Deleted while running (a clean-up script, a user): made again,
            // in the same place only: a disk unmounted under it is a failure,
            // and so is a mount point (made again, it would be on the card).
            if r.is_err()
                && !dir.exists()
                && self.dir_parent_dev.is_some()
                && !self.watches.iter().any(MountWatch::was_mount)
                && parent_dev(dir) == self.dir_parent_dev
                && fs::create_dir(dir).is_ok()
            {
                log::warn!(
                    "output directory {} was gone (deleted while running): made it again",
                    dir.display()
                );
                r = write_new(dir, &name, self.format.ext(), data);
            }
            match r {
                Err(e) => failed = Some(e),
                Ok(path) => {
                    took = true;
                    if let Some(k) = &self.keep {
                        k.wrote(dir, &path);
                    }
                    if check {
                        if self.recent.len() >= RECENT {
                            self.recent.pop_front();
                        }
                        self.recent.push_back(path.clone());
                    }
                    if path.file_stem().is_some_and(|s| s != name.as_str()) && !self.renumbered {
                        self.renumbered = true;
                        log::warn!(
                            "{} already exists (a sender that restarted its numbering, or an \
                             earlier run into this directory): writing {} instead; no mask is \
                             overwritten",
                            dir.join(format!("{name}.{}", self.format.ext())).display(),
                            path.display()
                        );
                    }
                }
            }
        }
        if let Some((p, f)) = &self.latest {
            let r = (|| -> Result<()> {
                let bytes = if *f == self.format {
                    data
                } else {
                    self.latest_buf.clear();
                    encode(*f, h.width, h.height, bits, &mut self.latest_buf)?;
                    &self.latest_buf
                };
                write_atomic(p, bytes)
            })();
            match (r, failed.take()) {
                (Ok(()), d) => {
                    took = true;
                    failed = d;
                }
                (Err(e), None) => failed = Some(e),
                (Err(e), Some(d)) => failed = Some(anyhow::anyhow!("{d:#}; and {e:#}")),
            }
        }
        match failed {
            None => Ok(Written::Now),
            Some(e) if took => {
                if let Some(n) = self.latest_log.hit() {
                    log::warn!(
                        "{e:#} (frame {} went to the other outputs){}",
                        h.sequence,
                        crate::session::more_like_it(n)
                    );
                }
                Ok(Written::Partly)
            }
            Some(e) => Err(e),
        }
    }

    /// Whether the stream sinks' reader is gone (see [`Output::write`]'s error).
    pub fn is_dead(&self) -> bool {
        self.dead.is_some()
    }

    /// Flushes what is buffered; ends the `--exec` child (closes its stdin and waits).
    pub fn finish(&mut self) -> Result<()> {
        // The --exec program is ended in order (its stdin closed, its exit
        // waited for, SIGTERM then SIGKILL past its time) however the
        // other outputs ended: a dead stdout must not leave it running.
        let flushed = match &self.dead {
            Some(why) => Err(anyhow::anyhow!("{why}")),
            None => Ok(()),
        };
        let exec = self.exec.as_mut().map_or(Ok(()), Exec::finish);
        match (flushed, exec) {
            (Err(a), Err(b)) => bail!("{a:#}; and {b:#}"),
            (Err(e), Ok(())) | (Ok(()), Err(e)) => Err(e),
            (Ok(()), Ok(())) => Ok(()),
        }
    }
}

/// Refuses, at startup, a path given to `flag` that cannot take a file
/// replaced atomically: its directory missing or closed to new files, a
/// directory itself, or anything but a regular file (a device such as
/// `/dev/null`, a FIFO: replacing it by a file would break whatever uses
/// it). A symbolic link is followed ([`follow_links`]), at every write too.
pub fn check_file_target(flag: &str, given: &Path) -> Result<()> {
    let p = follow_links(given).with_context(|| format!("{flag} {}", given.display()))?;
    let shown = if p == given {
        given.display().to_string()
    } else {
        format!("{} (a link to {})", given.display(), p.display())
    };
    let parent = parent_of(&p);
    if !parent.is_dir() {
        bail!(
            "{flag} {shown}: directory {} does not exist",
            parent.display()
        );
    }
    if p.is_dir() {
        bail!("{flag} {shown} is a directory; give a file name");
    }
    if let Ok(m) = fs::metadata(&p) {
        if !m.is_file() {
            bail!(
                "{flag} {shown} exists and is not a regular file (a device, FIFO or socket); \
                 it would be replaced by a file on every write: give the name of a regular \
                 or a new file"
            );
        }
    }
    probe_dir(parent).with_context(|| {
        format!(
            "{flag} {shown}: cannot create files in {}",
            parent.display()
        )
    })
}

/// `p` with its symbolic links followed, hop by hop (a relative one from
/// its link's directory), to a path that is no link: an existing file or
/// directory, or a name still free (a link into an empty tmpfs after a
/// reboot is fine). Read at every write, so a link pointed elsewhere
/// while the receiver runs is honoured.
pub fn follow_links(p: &Path) -> Result<PathBuf> {
    let mut p = p.to_path_buf();
    for _ in 0..40 {
        match fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                let to = fs::read_link(&p)
                    .with_context(|| format!("cannot read the link {}", p.display()))?;
                p = match p.parent() {
                    Some(d) if to.is_relative() => d.join(to),
                    _ => to,
                };
            }
            _ => return Ok(p),
        }
    }
    bail!("{}: more than 40 symbolic links in a row", p.display())
}

/// Checks `--latest FILE` (its directory exists, it is not a directory or
/// a device) and picks its format ([`latest_format`]).
pub fn check_latest(p: &Path, format: Format) -> Result<Format> {
    check_file_target("--latest", p)?;
    latest_format(p, format)
}

/// The format `--latest FILE` is written in: its extension's, else
/// `format`; an image extension the receiver does not write is refused.
fn latest_format(p: &Path, format: Format) -> Result<Format> {
    // `--latest mask.png` is a PNG whatever --format the other
    // outputs use (a stream needs raw or gray8).
    let ext = p
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    let f = match (Format::for_extension(p), ext.as_deref()) {
        (Some(f), _) => f,
        // an image format this receiver does not write: not raw bits under its name
        (
            None,
            Some(
                e @ ("jpg" | "jpeg" | "gif" | "bmp" | "tif" | "tiff" | "webp" | "pgm" | "ppm"
                | "pnm" | "pam"),
            ),
        ) => {
            anyhow::bail!(
                "--latest {}: .{e} is not a format the receiver writes; name the file \
                 .png, .pbm, .raw or .gray",
                p.display()
            )
        }
        (None, _) => format,
    };
    Ok(f)
}

/// The directories [`check_dir_target`] made: [`MadeDirs::undo`] removes
/// them again (a start refused after them leaves none behind).
pub struct MadeDirs {
    dir: PathBuf,
    /// The outermost one made ([`first_missing`]); `None`: none made.
    top: Option<PathBuf>,
}

impl MadeDirs {
    /// Removes the directories made, if they are still empty.
    pub fn undo(&self) {
        if let Some(top) = &self.top {
            remove_made(&self.dir, top);
        }
    }
}

/// Makes the output directory `dir` (and its parents) and checks, at
/// startup, that it takes new files: a read-only card is refused before
/// any sender is told its frames were handled. Returns what it made.
pub fn check_dir_target(dir: &Path) -> Result<MadeDirs> {
    if fs::metadata(dir).is_ok_and(|m| !m.is_dir()) {
        bail!(
            "output directory {} is a file, not a directory: --out takes a directory \
             (--latest FILE keeps one file)",
            dir.display()
        );
    }
    let top = first_missing(dir);
    fs::create_dir_all(dir)
        .with_context(|| format!("cannot create output directory {}", dir.display()))?;
    probe_dir(dir)
        .with_context(|| format!("cannot create files in output directory {}", dir.display()))?;
    Ok(MadeDirs {
        dir: dir.to_path_buf(),
        top,
    })
}

/// The outermost directory of `dir` that does not exist yet (the first
/// that `create_dir_all` makes); `None` when `dir` exists, or when its
/// path has a `..`.
fn first_missing(dir: &Path) -> Option<PathBuf> {
    // (through a `..` the ancestors are not what is made: none removed)
    if dir
        .components()
        .any(|c| c == std::path::Component::ParentDir)
    {
        return None;
    }
    let mut missing = None;
    for a in dir.ancestors().filter(|a| !a.as_os_str().is_empty()) {
        if fs::symlink_metadata(a).is_ok() {
            break;
        }
        missing = Some(a.to_path_buf());
    }
    missing
}

/// Removes the empty directories from `dir` up to `top`, both included
/// (what [`check_dir_target`] made, [`first_missing`]); stops at the
/// first that is not empty.
fn remove_made(dir: &Path, top: &Path) {
    for a in dir.ancestors() {
        if fs::remove_dir(a).is_err() || a == top {
            break;
        }
    }
}

/// Temporary files ([`write_temp`]) older than this are left over (a
/// power cut or a kill between a write and its rename).
const STALE_TEMP: Duration = Duration::from_secs(600);

/// The process id in a temporary file's name (`.NAME.PID.N.tmp`,
/// [`write_temp`]).
fn temp_pid(name: &str) -> Option<u32> {
    name.strip_suffix(".tmp")?.rsplit('.').nth(1)?.parse().ok()
}

/// Removes the temporary files an earlier run left in `dir` and, with
/// `deeper`, in the directories in it (`--per-sender`): `.frame-*.tmp` and
/// `.probe.*.tmp` last modified over [`STALE_TEMP`] ago (nothing writes
/// them for longer than a frame takes). Returns how many it removed.
/// (Left by a crash in this run, they wait for the next start.)
pub fn sweep_temp(dir: &Path, deeper: bool) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    let own = std::process::id();
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        let Ok(kind) = e.file_type() else { continue };
        if kind.is_dir() && deeper {
            removed += sweep_temp(&e.path(), false);
        } else if kind.is_file()
            && (name.starts_with(".frame-") || name.starts_with(".probe."))
            // (not this run's: the clock may have been stepped since it
            // wrote one)
            && temp_pid(&name) != Some(own)
            && name.ends_with(".tmp")
            && e.metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|a| a > STALE_TEMP))
            && fs::remove_file(e.path()).is_ok()
        {
            removed += 1;
        }
    }
    removed
}

/// The directory that holds `p` (`.` for a bare file name).
fn parent_of(p: &Path) -> &Path {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// The device of the directory that holds `dir`.
fn parent_dev(dir: &Path) -> Option<u64> {
    dev_of(parent_of(dir))
}

/// The device `p` is on (following links), if it exists.
fn dev_of(p: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(p).ok().map(|m| m.dev())
}

/// Watches whether a directory is a mount point. Once it has been one (at
/// the start, or at a check since: a disk mounted after the receiver
/// started), a check fails while it is not: its disk was unmounted, and
/// files would go to the card underneath. A disk mounted there again, on
/// any device, passes. Clones share what was seen.
#[derive(Clone, Debug)]
pub struct MountWatch {
    dir: PathBuf,
    /// The directory holding `dir`, symbolic links resolved at the start.
    parent: PathBuf,
    /// The device of `parent` at the start (read once, not at every frame).
    parent_dev: Option<u64>,
    was_mount: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl MountWatch {
    /// Starts watching `dir` (which should exist) as it is now.
    pub fn new(dir: &Path) -> MountWatch {
        let real = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
        let parent = match real.parent() {
            None => real.clone(), // the root directory
            Some(_) => parent_of(&real).to_path_buf(),
        };
        let w = MountWatch {
            dir: dir.to_path_buf(),
            parent_dev: dev_of(&parent),
            parent,
            was_mount: Default::default(),
        };
        let _ = w.check();
        w
    }

    /// Fails when the directory was a mount point and is not one now; or
    /// is gone, and was a mount point, or its parent is gone too or on
    /// another device than at the start (`--out /mnt/usb/masks` with the
    /// disk on `/mnt/usb` unmounted, or on `/media/pi/LABEL`, which the
    /// automounter removes: made again, it would be on the card).
    pub fn check(&self) -> Result<()> {
        let Some(parent) = self.parent_dev else {
            return Ok(()); // unreadable: the write itself says so
        };
        let Some(dev) = dev_of(&self.dir) else {
            let now = dev_of(&self.parent);
            if self.was_mount() || now != Some(parent) {
                bail!(
                    "{} is gone, and {}: its disk was unmounted? Mount it again; or restart \
                     the receiver to write to the card underneath",
                    self.dir.display(),
                    match now {
                        _ if self.was_mount() => "it was a mount point".to_string(),
                        None => format!("so is {}", self.parent.display()),
                        Some(now) => format!(
                            "{} is on another device than at the start ({} then, {} now)",
                            self.parent.display(),
                            show_dev(parent),
                            show_dev(now)
                        ),
                    }
                );
            }
            return Ok(()); // gone: made again where it was
        };
        if dev != parent {
            self.was_mount.store(true, Ordering::Relaxed);
        } else if self.was_mount() {
            bail!(
                "{} was a mount point and is not one now (it is on the device of {}, {}): \
                 its disk was unmounted? Mount it again; or restart the receiver to write \
                 to the directory underneath",
                self.dir.display(),
                self.parent.display(),
                show_dev(dev)
            );
        }
        Ok(())
    }

    /// Whether the directory has been seen as a mount point.
    pub fn was_mount(&self) -> bool {
        self.was_mount.load(Ordering::Relaxed)
    }
}

/// A device number as `ls -l` and `/proc/self/mountinfo` show it: `major:minor`.
fn show_dev(dev: u64) -> String {
    let dev = dev as libc::dev_t;
    format!("{}:{}", libc::major(dev), libc::minor(dev))
}

/// Creates and removes an empty file in `dir` (where frames are written
/// under a temporary name before they are renamed).
fn probe_dir(dir: &Path) -> Result<()> {
    let probe = write_temp(dir, "probe", b"", false)?;
    let _ = fs::remove_file(probe);
    Ok(())
}

/// The bytes of a `width` x `height` gray8 image, or an error when they do
/// not fit a `usize`.
fn gray8_len(width: u32, height: u32) -> Result<usize> {
    (width as usize)
        .checked_mul(height as usize)
        .with_context(|| {
            format!(
                "a {width}x{height} gray8 image (a byte per pixel) does not fit in this \
                 machine's memory"
            )
        })
}

/// Encodes a mask as `format` into `buf`.
pub fn encode(
    format: Format,
    width: u32,
    height: u32,
    bits: &[u8],
    buf: &mut Vec<u8>,
) -> Result<()> {
    match format {
        Format::Raw => buf.extend_from_slice(bits),
        Format::Gray8 => {
            let (w, h) = (width as usize, height as usize);
            let start = buf.len();
            // (a byte per pixel: 4 GiB at --max-size 65536x65536, more than
            // a 32-bit usize, or than the memory, holds: an error, not a
            // wrapped size or an abort)
            let n = w
                .checked_mul(h)
                .filter(|n| buf.try_reserve(*n).is_ok() && start.checked_add(*n).is_some());
            let Some(n) = n else {
                anyhow::bail!(
                    "a {width}x{height} gray8 image (a byte per pixel) does not fit in this \
                     machine's memory"
                );
            };
            buf.resize(start + n, 0);
            unpack_rows_gray8(bits, w, h, &mut buf[start..])?;
        }
        Format::Pbm => {
            write!(buf, "P4\n{width} {height}\n")?;
            let stride = (width as usize).div_ceil(8);
            let tail = width % 8;
            let keep = if tail == 0 {
                0xff
            } else {
                0xffu8 << (8 - tail)
            };
            for row in bits.chunks_exact(stride) {
                buf.extend(row.iter().map(|b| !b));
                if let Some(last) = buf.last_mut() {
                    *last &= keep;
                }
            }
        }
        Format::Png => {
            let mut enc = png::Encoder::new(&mut *buf, width, height);
            enc.set_color(png::ColorType::Grayscale);
            enc.set_depth(png::BitDepth::One);
            // fdeflate's fast mode and the Sub filter: what png 0.17's
            // `Compression::Fast` did (0.18's adds adaptive filtering)
            enc.set_deflate_compression(png::DeflateCompression::FdeflateUltraFast);
            enc.set_filter(png::Filter::Sub);
            let mut w = enc.write_header()?;
            w.write_image_data(bits)?;
            w.finish()?;
        }
    }
    Ok(())
}

/// Writes `data` as `dir/NAME.EXT` without ever replacing a file: when that
/// name is taken (a sender restarted its sequence numbers, or an earlier run
/// wrote here), as `NAME.1.EXT`, `NAME.2.EXT`, ... the first that is free
/// (the search starts from the last suffix this process used in `dir`).
/// Atomic like [`write_atomic`]: the data is written under a temporary name,
/// then renamed into place with `RENAME_NOREPLACE` (a directory watcher sees
/// the usual moved-to event); where the filesystem lacks that, hard-linked
/// into place (also fails rather than replace), and where it lacks links
/// (FAT) a name is checked, then renamed.
pub fn write_new(dir: &Path, name: &str, ext: &str, data: &[u8]) -> Result<PathBuf> {
    static NEXT: Mutex<Option<HashMap<PathBuf, u32>>> = Mutex::new(None);
    let tmp = write_temp(dir, name, data, SYNC.load(Ordering::Relaxed))?;
    let next = |k: Option<u32>| {
        let mut g = NEXT.lock().unwrap_or_else(|p| p.into_inner());
        let m = g.get_or_insert_with(HashMap::new);
        match k {
            Some(k) => {
                m.insert(dir.to_path_buf(), k);
                k
            }
            None => m.get(dir).copied().unwrap_or(1),
        }
    };
    let mut k = 0u32;
    loop {
        let path = if k == 0 {
            dir.join(format!("{name}.{ext}"))
        } else {
            dir.join(format!("{name}.{k}.{ext}"))
        };
        match place(&tmp, &path) {
            Ok(true) => {
                if k > 0 {
                    next(Some(k));
                }
                if let Err(e) = sync_dir(dir) {
                    // (not durable, so not written: nor left to be found
                    // after a restart as one that was)
                    let _ = fs::remove_file(&path);
                    return Err(e);
                }
                return Ok(path);
            }
            Ok(false) => {
                k = if k == 0 {
                    next(None)
                } else {
                    k.saturating_add(1)
                };
                if k == u32::MAX {
                    let _ = fs::remove_file(&tmp);
                    bail!("{}: no free name for {name}.*.{ext}", dir.display());
                }
            }
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
        }
    }
}

/// Moves `tmp` to `path` unless `path` exists: `Ok(false)` when it does.
fn place(tmp: &Path, path: &Path) -> Result<bool> {
    use std::os::unix::ffi::OsStrExt;
    // 0: renameat2(RENAME_NOREPLACE), 1: link + unlink, 2: check + rename;
    // lowered for good the first time a way is not supported here.
    static WAY: AtomicU8 = AtomicU8::new(0);
    let unsupported = |e: &io::Error| {
        matches!(
            e.raw_os_error(),
            Some(libc::EINVAL | libc::ENOSYS | libc::EPERM | libc::EOPNOTSUPP)
        )
    };
    if WAY.load(Ordering::Relaxed) == 0 {
        let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes());
        let (from, to) = (c(tmp)?, c(path)?);
        // SAFETY: renameat2 with two NUL-terminated paths that outlive the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_renameat2,
                libc::AT_FDCWD,
                from.as_ptr(),
                libc::AT_FDCWD,
                to.as_ptr(),
                libc::RENAME_NOREPLACE,
            )
        };
        if r == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::AlreadyExists {
            return Ok(false);
        }
        if !unsupported(&e) {
            return Err(e)
                .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()));
        }
        WAY.store(1, Ordering::Relaxed);
    }
    if WAY.load(Ordering::Relaxed) == 1 {
        match fs::hard_link(tmp, path) {
            Ok(()) => {
                let _ = fs::remove_file(tmp);
                return Ok(true);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
            Err(e) if unsupported(&e) => WAY.store(2, Ordering::Relaxed),
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("cannot link {} to {}", tmp.display(), path.display())
                })
            }
        }
    }
    if path.exists() {
        return Ok(false);
    }
    rename(tmp, path).map(|()| true)
}

/// See [`written_before`] (frames of a sender slower than one a minute
/// are written again after a receiver restart: at least once).
const BEFORE_GAP: Duration = Duration::from_secs(60);
/// See [`written_before`] (a receiver restarted by its service comes back
/// within seconds).
const BEFORE_AGE: Duration = Duration::from_secs(600);

/// Whether frame `seq` was written to `dir` by the run that wrote frame
/// `seq - 1` (a receiver that died before confirming it): leaving out the
/// files this output has just written (`recent`: frames sent again that it
/// wrote again), the newest file of frame `seq` (any `.N` variant) holds
/// `data` byte for byte and is no older than the newest of frame `seq - 1`.
/// A file of an earlier run under the same number (a sender that restarted
/// its numbering; a blank mask is the same bytes every time) is older than
/// that, so it is not taken for this frame. File times come from a clock
/// a Pi may have had wrong (no battery clock: booted behind, stepped by NTP
/// later), so the two files must also be at most [`BEFORE_GAP`] apart and
/// the older at most [`BEFORE_AGE`] old: an earlier run's files rarely
/// match that. Frame 0, or one whose predecessor is not there, or files
/// that do not pass, are never taken as written (the frame is written
/// again: at least once).
pub fn written_before(
    dir: &Path,
    seq: u64,
    ext: &str,
    data: &[u8],
    recent: &std::collections::VecDeque<PathBuf>,
) -> bool {
    if seq == 0 {
        return false;
    }
    // One pass over the directory: the newest file of `seq` and of `seq - 1`.
    type Newest = Option<(std::time::SystemTime, u64, PathBuf)>;
    let (mut this, mut prev): (Newest, Newest) = (None, None);
    let Ok(entries) = fs::read_dir(dir) else {
        return false;
    };
    for e in entries.flatten() {
        let Some(q) = frame_number(&e.file_name().to_string_lossy(), ext)
            .filter(|&q| q.saturating_add(1) >= seq && q <= seq)
        else {
            continue;
        };
        let path = e.path();
        let Some(m) = e.metadata().ok().filter(|_| !recent.contains(&path)) else {
            continue;
        };
        let Ok(t) = m.modified() else { continue };
        let slot = if q == seq { &mut this } else { &mut prev };
        // (the newest; of equal times the greatest name, as before)
        if slot
            .as_ref()
            .is_none_or(|(t0, _, p0)| (t, &path) > (*t0, p0))
        {
            *slot = Some((t, m.len(), path));
        }
    }
    let (Some((t, len, path)), Some((t_prev, ..))) = (this, prev) else {
        return false;
    };
    t.duration_since(t_prev).is_ok_and(|gap| gap <= BEFORE_GAP)
        && t_prev.elapsed().is_ok_and(|age| age <= BEFORE_AGE)
        && len == data.len() as u64
        && fs::read(&path).is_ok_and(|b| b == data)
}

/// The frame number of a frame file's name, `frame-NNNNNN.EXT` or
/// `frame-NNNNNN.K.EXT` (the names [`write_new`] gives frames); `None` for
/// any other name.
pub fn frame_number(name: &str, ext: &str) -> Option<u64> {
    let rest = name
        .strip_prefix("frame-")?
        .strip_suffix(ext)?
        .strip_suffix('.')?;
    let (n, k) = rest.split_once('.').unwrap_or((rest, "1"));
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (all_digits(n) && all_digits(k)).then(|| n.parse().ok())?
}

/// Writes `data` to a new temporary file `dir/.NAME.PID.N.tmp` (unique per
/// process and call, so concurrent writers never share one); removed again
/// when the write fails.
fn write_temp(dir: &Path, name: &str, data: &[u8], sync: bool) -> Result<PathBuf> {
    static SERIAL: AtomicU64 = AtomicU64::new(0);
    let n = SERIAL.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.{}.{n}.tmp", std::process::id()));
    let written = if sync {
        // (its bytes on the card before its name is: a power cut cannot
        // leave an empty file under the final name)
        fs::File::create(&tmp).and_then(|mut f| {
            use std::io::Write;
            f.write_all(data)?;
            f.sync_data()
        })
    } else {
        fs::write(&tmp, data)
    };
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write {}", tmp.display()));
    }
    Ok(tmp)
}

/// `--sync`: files are made durable before they count as written
/// ([`set_sync`]).
static SYNC: AtomicBool = AtomicBool::new(false);
/// Directories synced so far (for tests).
static DIR_SYNCS: AtomicU64 = AtomicU64::new(0);

/// `--sync`: from now on every frame's file ([`write_new`]; not
/// [`write_atomic`]'s `--latest` and `--stats-json`) is on the card before
/// it counts as written: its data synced before it is renamed into place,
/// its directory after.
pub fn set_sync(on: bool) {
    SYNC.store(on, Ordering::Relaxed);
}

/// With `--sync`, syncs directory `dir` (a rename into it made durable).
fn sync_dir(dir: &Path) -> Result<()> {
    if !SYNC.load(Ordering::Relaxed) {
        return Ok(());
    }
    DIR_SYNCS.fetch_add(1, Ordering::Relaxed);
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync directory {} (--sync)", dir.display()))
}

/// Renames `from` to `to`; removes `from` when that fails.
fn rename(from: &Path, to: &Path) -> Result<()> {
    fs::rename(from, to).with_context(|| {
        let _ = fs::remove_file(from);
        format!("cannot rename {} to {}", from.display(), to.display())
    })
}

/// Writes `data` to a temporary name beside `path` ([`write_temp`]), then
/// renames it into place, so a reader never sees half a file. A symbolic
/// link at `path` is followed: the file it leads to is replaced, the link
/// stays.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let path = &follow_links(path)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("frame");
    // (not synced with --sync: --latest and --stats-json are rewritten
    // every frame and second, and a frame never counts on them alone)
    let tmp = write_temp(parent_of(path), name, data, false)?;
    rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gray8_image_too_large_for_memory_is_an_error() {
        // (2^32-1)^2 bytes: no allocation can hold it, nor can a 32-bit usize
        let mut buf = Vec::new();
        let e = encode(Format::Gray8, u32::MAX, u32::MAX, &[], &mut buf).unwrap_err();
        assert!(e.to_string().contains("does not fit"), "{e}");
        assert!(buf.capacity() < 1 << 20);
    }

    #[test]
    fn gray8_frames_of_changing_sizes_are_each_whole() {
        // (the gray8 buffer is reused without clearing while the size stays)
        let dir = std::env::temp_dir().join(format!("bitmask-gray8-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let mut o = Output::open(Some(&dir), None, None, Format::Gray8).unwrap();
        let frames: [(u32, u32, u8); 4] = [(16, 2, 0xa5), (16, 2, 0x0f), (9, 3, 0xff), (16, 2, 0)];
        for (i, &(w, h, fill)) in frames.iter().enumerate() {
            let stride = (w as usize).div_ceil(8);
            let bits = vec![fill; stride * h as usize];
            let mut want = vec![0u8; (w * h) as usize];
            unpack_rows_gray8(&bits, w as usize, h as usize, &mut want).unwrap();
            let head = Header::new(w, h, i as u64, bitmask_wire::CODEC_RAW, bits.len() as u32);
            o.write(&head, &bits, false).unwrap();
            let got = fs::read(dir.join(format!("frame-{i:06}.gray"))).unwrap();
            assert_eq!(got, want, "frame {i}");
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn frame_files_are_never_overwritten() {
        let dir = std::env::temp_dir().join(format!("bitmask-write-new-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let a = write_new(&dir, "frame-000000", "raw", b"first").unwrap();
        let b = write_new(&dir, "frame-000000", "raw", b"second").unwrap();
        let c = write_new(&dir, "frame-000000", "raw", b"third").unwrap();
        assert_eq!(a, dir.join("frame-000000.raw"));
        assert_eq!(b, dir.join("frame-000000.1.raw"));
        assert_eq!(c, dir.join("frame-000000.2.raw"));
        assert_eq!(fs::read(&a).unwrap(), b"first");
        assert_eq!(fs::read(&b).unwrap(), b"second");
        assert_eq!(fs::read(&c).unwrap(), b"third");
        // no temporary file left behind
        let mut names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "frame-000000.1.raw",
                "frame-000000.2.raw",
                "frame-000000.raw"
            ]
        );
        // a failed rename leaves no temporary file either (it is made
        // beside the target, here in the directory's parent)
        assert!(
            write_atomic(&dir, b"x").is_err(),
            "a directory is in the way"
        );
        let stem = format!(".{}.", dir.file_name().unwrap().to_str().unwrap());
        let left: Vec<_> = fs::read_dir(std::env::temp_dir())
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with(&stem))
            .collect();
        assert!(left.is_empty(), "{left:?}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_frame_counts_as_written_when_one_sink_took_it() {
        let base = std::env::temp_dir().join(format!("bitmask-sinks-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        let (dir, ldir) = (base.join("out"), base.join("latest"));
        fs::create_dir_all(&ldir).unwrap();
        let latest = ldir.join("m.raw");
        let mut o = Output::open(Some(&dir), Some(&latest), None, Format::Raw).unwrap();
        let h = |seq| Header::new(8, 1, seq, bitmask_wire::CODEC_RAW, 1);
        o.write(&h(0), &[0xa5], false).unwrap();
        // The directory fails (a file in its place; a directory merely
        // deleted is made again): --latest took it.
        fs::remove_dir_all(&dir).unwrap();
        fs::write(&dir, b"").unwrap();
        o.write(&h(1), &[0x5a], false).unwrap();
        assert_eq!(fs::read(&latest).unwrap(), [0x5a]);
        // Both fail: an error.
        fs::remove_dir_all(&ldir).unwrap();
        assert!(o.write(&h(2), &[0x11], false).is_err());
        // --latest fails, the directory takes it.
        fs::remove_file(&dir).unwrap();
        fs::create_dir_all(&dir).unwrap();
        o.write(&h(3), &[0x22], false).unwrap();
        assert_eq!(fs::read(dir.join("frame-000003.raw")).unwrap(), [0x22]);
        let _ = fs::remove_dir_all(&base);
    }

    #[test]
    fn temporary_files_an_earlier_run_left_are_swept_and_nothing_else() {
        let base = std::env::temp_dir().join(format!("bitmask-sweep-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        fs::create_dir_all(base.join("cam")).unwrap();
        let old = std::time::SystemTime::now() - STALE_TEMP - Duration::from_secs(5);
        let make = |p: &Path, stale: bool| {
            fs::write(p, b"x").unwrap();
            if stale {
                fs::File::options()
                    .write(true)
                    .open(p)
                    .unwrap()
                    .set_modified(old)
                    .unwrap();
            }
        };
        // (an earlier run's process id: not this one's)
        let other = std::process::id().wrapping_add(1);
        let gone = [
            base.join(format!(".frame-000001.{other}.0.tmp")),
            base.join(format!(".probe.{other}.4.tmp")),
            base.join(format!("cam/.frame-000002.{other}.1.tmp")),
        ];
        let own = base.join(format!(".frame-000004.{}.0.tmp", std::process::id()));
        assert_eq!(temp_pid(".frame-000009.1.raw.77.5.tmp"), Some(77));
        let kept = [
            own.clone(), // this run's, however old it looks (a clock set since)
            base.join(format!(".frame-000003.{other}.2.tmp")), // being written (new)
            base.join("frame-000001.raw"),
            base.join(".notes.tmp"), // not ours
            base.join("cam/frame-000002.raw"),
        ];
        for p in &gone {
            make(p, true);
        }
        make(&kept[1], false);
        for p in kept.iter().filter(|p| **p != kept[1]) {
            make(p, true);
        }
        // without `deeper`, the sender's directories are left alone
        assert_eq!(sweep_temp(&base, false), 2);
        assert!(gone[2].exists());
        assert_eq!(sweep_temp(&base, true), 1);
        assert!(gone.iter().all(|p| !p.exists()));
        assert!(kept.iter().all(|p| p.exists()));
        let _ = fs::remove_dir_all(&base);
    }

    #[test]
    fn with_sync_a_frame_is_synced_with_its_directory() {
        let dir = std::env::temp_dir().join(format!("bitmask-sync-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let before = DIR_SYNCS.load(Ordering::Relaxed);
        set_sync(true);
        let r = write_new(&dir, "frame-000001", "raw", &[7]);
        set_sync(false);
        assert_eq!(fs::read(r.unwrap()).unwrap(), [7]);
        assert!(DIR_SYNCS.load(Ordering::Relaxed) > before);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_deleted_out_directory_is_made_again_only_where_it_was() {
        let base = std::env::temp_dir().join(format!("bitmask-remake-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        let dir = base.join("disk").join("frames");
        let mut o = Output::open(Some(&dir), None, None, Format::Raw).unwrap();
        let h = |seq| Header::new(8, 1, seq, bitmask_wire::CODEC_RAW, 1);
        o.write(&h(0), &[1], false).unwrap();
        // its parent gone too (a disk unmounted with its mount point, say):
        // not made again, the frame is not written
        fs::remove_dir_all(base.join("disk")).unwrap();
        assert!(o.write(&h(1), &[2], false).is_err());
        assert!(!base.join("disk").exists());
        // the parent back, the directory alone gone: made again
        fs::create_dir_all(base.join("disk")).unwrap();
        o.write(&h(2), &[3], false).unwrap();
        assert_eq!(fs::read(dir.join("frame-000002.raw")).unwrap(), [3]);
        let _ = fs::remove_dir_all(&base);
    }

    #[test]
    fn an_out_directory_that_was_a_mount_point_takes_no_frame_once_it_is_not() {
        let base = std::env::temp_dir().join(format!("bitmask-mountpoint-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        let dir = base.join("usb");
        let mut o = Output::open(Some(&dir), None, None, Format::Raw).unwrap();
        let h = |seq| Header::new(8, 1, seq, bitmask_wire::CODEC_RAW, 1);
        // not a mount point: written, whatever its device
        o.write(&h(0), &[1], false).unwrap();
        // As if a disk had been mounted on `dir` (seen at a check) and was
        // unmounted since: `dir` is on its parent's device again.
        o.watches[0].was_mount.store(true, Ordering::Relaxed);
        let e = format!("{:#}", o.write(&h(1), &[2], false).unwrap_err());
        assert!(e.contains("was a mount point and is not one now"), "{e}");
        let dev = dev_of(&base).unwrap();
        assert!(e.contains(&show_dev(dev)), "{e}");
        assert!(!dir.join("frame-000001.raw").exists());
        // and a mount point deleted is not made again on the parent's device
        fs::remove_dir_all(&dir).unwrap();
        assert!(o.write(&h(2), &[3], false).is_err());
        assert!(!dir.exists());
        // --per-sender: a sender's directory under a base that was a mount point
        fs::create_dir_all(base.join("base/cam")).unwrap();
        let w = MountWatch::new(&base.join("base"));
        assert!(!w.was_mount());
        w.check().unwrap();
        let mut own = Output::open(Some(&base.join("base/cam")), None, None, Format::Raw).unwrap();
        own.watch(&w);
        own.write(&h(3), &[4], false).unwrap();
        w.clone().was_mount.store(true, Ordering::Relaxed); // clones share it
        assert!(own.write(&h(4), &[5], false).is_err());
        assert!(w.check().is_err());
        // gone, having been a mount point: not made again
        fs::remove_dir_all(base.join("base")).unwrap();
        assert!(w.check().is_err());
        // gone, its parent on another device than at the start (the disk
        // holding the parent unmounted): likewise; on the same one, passes
        fs::create_dir_all(base.join("b2")).unwrap();
        let mut w2 = MountWatch::new(&base.join("b2"));
        fs::remove_dir(base.join("b2")).unwrap();
        w2.check().unwrap();
        w2.parent_dev = w2.parent_dev.map(|d| d + 1);
        let e = format!("{:#}", w2.check().unwrap_err());
        assert!(e.contains("is on another device than at the start"), "{e}");
        assert!(e.contains(&format!("{} now", show_dev(dev))), "{e}");
        // gone with its parent (an automounter's /media/pi/LABEL): likewise
        fs::create_dir_all(base.join("p3/b3")).unwrap();
        let w3 = MountWatch::new(&base.join("p3/b3"));
        fs::remove_dir_all(base.join("p3")).unwrap();
        let e = format!("{:#}", w3.check().unwrap_err());
        assert!(e.contains("is gone, and so is"), "{e}");
        fs::create_dir_all(base.join("base")).unwrap();
        // a symbolic link to a directory: its parent is the target's
        std::os::unix::fs::symlink(base.join("base"), base.join("link")).unwrap();
        let l = MountWatch::new(&base.join("link"));
        assert_eq!(l.parent, fs::canonicalize(&base).unwrap());
        l.check().unwrap();
        assert_eq!(show_dev(0x0801), "8:1");
        // glibc makedev(259, 300): an NVMe partition past minor 255
        assert_eq!(show_dev(0x0011_032c), "259:300");
        let _ = fs::remove_dir_all(&base);
    }

    #[test]
    fn a_checked_frame_already_on_disk_as_it_is_is_not_written_again() {
        for format in [Format::Raw, Format::Png, Format::Pbm] {
            let dir = std::env::temp_dir().join(format!(
                "bitmask-before-{}-{}",
                format.name(),
                std::process::id()
            ));
            let _ = fs::remove_dir_all(&dir);
            let mut o = Output::open(Some(&dir), None, None, format).unwrap();
            let h = |seq| Header::new(8, 1, seq, bitmask_wire::CODEC_RAW, 1);
            let ext = format.ext();
            // (file times set, not slept for: a file system may keep
            // whole seconds)
            let now = std::time::SystemTime::now();
            let age = |seq: u32, secs: u64| {
                fs::File::options()
                    .write(true)
                    .open(dir.join(format!("frame-{seq:06}.{ext}")))
                    .unwrap()
                    .set_modified(now - Duration::from_secs(secs))
                    .unwrap()
            };
            // an earlier run's frame 7 (a sender that restarted its numbering)
            assert_eq!(o.write(&h(7), &[0xa5], false).unwrap(), Written::Now);
            age(7, 40);
            // the run before: frames 4 and 5 written, then the receiver restarts
            assert_eq!(o.write(&h(4), &[0x11], true).unwrap(), Written::Now);
            assert_eq!(o.write(&h(5), &[0xa5], true).unwrap(), Written::Now);
            age(4, 30);
            age(5, 30);
            o.recent.clear(); // a restart
                              // 5 again: written before, as it is (after 4): not again
            assert_eq!(o.write(&h(5), &[0xa5], true).unwrap(), Written::Before);
            assert!(!dir.join(format!("frame-000005.1.{ext}")).exists());
            // frame 0 has no predecessor to vouch for it: written again
            assert_eq!(o.write(&h(0), &[0x01], false).unwrap(), Written::Now);
            assert_eq!(o.write(&h(0), &[0x01], true).unwrap(), Written::Now);
            // unchecked, or another mask under the same number: a new file
            assert_eq!(o.write(&h(5), &[0xa5], false).unwrap(), Written::Now);
            assert_eq!(o.write(&h(5), &[0x5a], true).unwrap(), Written::Now);
            assert!(dir.join(format!("frame-000005.2.{ext}")).exists());
            // the newest file written before the restart is the one compared
            // (files of this run are not: a repeat written now is not one
            // written before)
            o.recent.clear(); // a restart
            assert_eq!(o.write(&h(5), &[0x5a], true).unwrap(), Written::Before);
            // frame 6 of the run before, then 7: the earlier run's frame 7
            // has the same bytes but is older than 6: not that run's, written
            assert_eq!(o.write(&h(6), &[0x22], false).unwrap(), Written::Now);
            o.recent.clear(); // a restart
            assert_eq!(o.write(&h(7), &[0xa5], true).unwrap(), Written::Now);
            let sevens = fs::read_dir(&dir)
                .unwrap()
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("frame-000007."))
                .count();
            assert_eq!(sevens, 2);
            // The run before had its clock behind (a Pi booted before NTP
            // set it): an earlier run's frame 9 is newer than its 8, but
            // over a minute after it: not that run's, written
            assert_eq!(o.write(&h(9), &[0x33], false).unwrap(), Written::Now);
            assert_eq!(o.write(&h(8), &[0x44], false).unwrap(), Written::Now);
            age(8, 200);
            age(9, 100);
            o.recent.clear(); // a restart
            assert_eq!(o.write(&h(9), &[0x33], true).unwrap(), Written::Now);
            // files over ten minutes old vouch for nothing either
            assert_eq!(o.write(&h(10), &[0x55], false).unwrap(), Written::Now);
            assert_eq!(o.write(&h(11), &[0x66], false).unwrap(), Written::Now);
            age(10, 700);
            age(11, 700);
            o.recent.clear(); // a restart
            assert_eq!(o.write(&h(11), &[0x66], true).unwrap(), Written::Now);
            let _ = fs::remove_dir_all(&dir);
        }
    }
}
