//! `--keep N`: at most N frame files in each output directory, the oldest
//! removed as new ones are written, so that a receiver left running for
//! days does not fill its card.
//!
//! One [`Keep`] serves every output directory (`--out DIR`, and with
//! `--per-sender` each sender's directory): the files of a directory are
//! kept in one list, oldest first, whichever connection wrote them (a
//! sender that reconnects, or restarts its numbering, goes on from the
//! same list). The list starts from what the directory held when this
//! receiver first wrote into it (frame files of earlier runs, oldest by
//! modification time first), so that a restarted receiver keeps the bound
//! too. Only frame files of the output's format are counted or removed:
//! `frame-NNNNNN.EXT` and `frame-NNNNNN.K.EXT` (the names
//! [`crate::output::write_new`] gives); nothing else in the directory is
//! touched.

use crate::session::{lock, more_like_it, Throttle};
use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

/// Old files removed at most per frame written: a directory found with
/// many more than N files (a first run with `--keep` over a full one) is
/// brought down to N over the next frames, not in one long stall of the
/// stream.
pub const CATCH_UP: usize = 64;

/// The bound of `--keep N` and each directory's frame files.
pub struct Keep {
    n: usize,
    ext: &'static str,
    /// Each directory's frame files, oldest first, by file name (a path
    /// each would double the memory: `--keep 108000` is about 5 MB so on
    /// a Pi).
    dirs: Mutex<HashMap<PathBuf, VecDeque<OsString>>>,
    /// Files that could not be removed, logged a line a second at most.
    failed: Throttle,
}

impl Keep {
    /// At most `n` (at least 1) frame files named `*.ext` per directory.
    pub fn new(n: usize, ext: &'static str) -> Keep {
        Keep {
            n: n.max(1),
            ext,
            dirs: Mutex::new(HashMap::new()),
            failed: Throttle::default(),
        }
    }

    /// `path` was just written into `dir`: removes the oldest frame files
    /// of `dir` past the bound ([`CATCH_UP`] at most). Returns how many it
    /// removed. A file already gone (deleted by someone else) counts as
    /// removed; one that cannot be removed is logged and forgotten.
    pub fn wrote(&self, dir: &Path, path: &Path) -> usize {
        let mut g = lock(&self.dirs);
        let files = match g.get_mut(dir) {
            Some(f) => {
                f.push_back(path.file_name().unwrap_or_default().to_os_string());
                f
            }
            None => {
                // (the scan finds `path` too, the newest)
                let found = self.scan(dir, path);
                if found.len() > self.n {
                    log::info!(
                        "--keep {}: {} holds {} frame files (.{}), earlier ones included: \
                         removing the oldest as new frames come",
                        self.n,
                        dir.display(),
                        found.len(),
                        self.ext
                    );
                }
                g.entry(dir.to_path_buf()).or_insert(found)
            }
        };
        let mut removed = 0;
        while files.len() > self.n && removed < CATCH_UP {
            let Some(old) = files.pop_front() else { break };
            let old = dir.join(old);
            removed += 1;
            match fs::remove_file(&old) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    if let Some(n) = self.failed.hit() {
                        log::warn!(
                            "--keep {}: cannot remove {}: {e} (left in place){}",
                            self.n,
                            old.display(),
                            more_like_it(n)
                        );
                    }
                }
            }
        }
        removed
    }

    /// The frame files in `dir`, oldest first (by modification time, then
    /// name), with `newest` last whatever its time says.
    fn scan(&self, dir: &Path, newest: &Path) -> VecDeque<OsString> {
        let newest = newest.file_name().unwrap_or_default().to_os_string();
        let mut found: Vec<(SystemTime, OsString)> = Vec::new();
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) => {
                log::warn!(
                    "--keep {}: cannot list {}: {e}; only the files written from now on \
                     are counted",
                    self.n,
                    dir.display()
                );
                return VecDeque::from([newest]);
            }
        };
        for e in entries.flatten() {
            let name = e.file_name();
            if name == newest || !name.to_str().is_some_and(|n| is_frame_file(n, self.ext)) {
                continue;
            }
            // (a directory or link under such a name is not ours)
            let Ok(m) = e.metadata() else { continue };
            if m.is_file() {
                found.push((m.modified().unwrap_or(SystemTime::UNIX_EPOCH), name));
            }
        }
        found.sort();
        let mut files: VecDeque<OsString> = found.into_iter().map(|(_, n)| n).collect();
        files.push_back(newest);
        files
    }
}

/// Whether `name` is a frame file's name: `frame-` digits (`.` digits) `.ext`.
pub fn is_frame_file(name: &str, ext: &str) -> bool {
    let Some(rest) = name.strip_prefix("frame-") else {
        return false;
    };
    let Some(stem) = rest.strip_suffix(ext).and_then(|s| s.strip_suffix('.')) else {
        return false;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match stem.split_once('.') {
        None => digits(stem),
        Some((seq, k)) => digits(seq) && digits(k),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("bitmask-keep-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    fn set_age(p: &Path, secs_ago: u64) {
        let f = fs::File::options().write(true).open(p).unwrap();
        f.set_modified(SystemTime::now() - Duration::from_secs(secs_ago))
            .unwrap();
    }

    #[test]
    fn frame_file_names() {
        for ok in [
            "frame-000001.png",
            "frame-1234567.png",
            "frame-000001.12.png",
        ] {
            assert!(is_frame_file(ok, "png"), "{ok}");
        }
        for no in [
            "frame-000001.raw",
            "frame-.png",
            "frame-00a001.png",
            "frame-000001..png",
            "frame-000001.1.2.png",
            "frame-000001.png.tmp",
            ".frame-000001.png.123.tmp",
            "xframe-000001.png",
            "frame-000001png",
            "notes.png",
        ] {
            assert!(!is_frame_file(no, "png"), "{no}");
        }
    }

    #[test]
    fn the_oldest_go_first_earlier_runs_included_and_nothing_else() {
        let d = tmp("old");
        // An earlier run's frames (numbered higher than this run's, but
        // older), another format's frames and a file of the user's.
        for (name, age) in [
            ("frame-000900.png", 300),
            ("frame-000100.png", 200),
            ("frame-000500.png", 100),
            ("frame-000001.raw", 400),
            ("notes.png", 500),
        ] {
            fs::write(d.join(name), b"x").unwrap();
            set_age(&d.join(name), age);
        }
        let k = Keep::new(3, "png");
        let write = |seq: u32| {
            let p = d.join(format!("frame-{seq:06}.png"));
            fs::write(&p, b"y").unwrap();
            k.wrote(&d, &p)
        };
        // 4 frame files now: the oldest (frame-000900, 300 s) goes.
        assert_eq!(write(0), 1);
        assert_eq!(
            names(&d),
            [
                "frame-000000.png",
                "frame-000001.raw",
                "frame-000100.png",
                "frame-000500.png",
                "notes.png"
            ]
        );
        assert_eq!(write(1), 1);
        assert_eq!(write(2), 1);
        assert_eq!(
            names(&d),
            [
                "frame-000000.png",
                "frame-000001.png",
                "frame-000001.raw",
                "frame-000002.png",
                "notes.png"
            ]
        );
        // Deleted by someone else meanwhile: counted as gone, no error.
        fs::remove_file(d.join("frame-000000.png")).unwrap();
        assert_eq!(write(3), 1);
        assert_eq!(
            names(&d),
            [
                "frame-000001.png",
                "frame-000001.raw",
                "frame-000002.png",
                "frame-000003.png",
                "notes.png"
            ]
        );
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn a_full_directory_is_brought_down_a_few_files_a_frame() {
        let d = tmp("full");
        let before = CATCH_UP * 2 + 10;
        for i in 0..before {
            let p = d.join(format!("frame-{i:06}.1.raw"));
            fs::write(&p, b"x").unwrap();
            set_age(&p, 1000 - i as u64);
        }
        let k = Keep::new(5, "raw");
        let mut count = before;
        let mut seq = 0;
        while count > 5 || seq == 0 {
            let p = d.join(format!("frame-{seq:06}.raw"));
            fs::write(&p, b"y").unwrap();
            let removed = k.wrote(&d, &p);
            assert_eq!(removed, (count + 1).saturating_sub(5).min(CATCH_UP));
            count = count + 1 - removed;
            assert_eq!(names(&d).len(), count);
            seq += 1;
        }
        // Three frames: 139 + 1 - 64, + 1 - 64, + 1 - 9. Left: this run's
        // three and the two youngest of the others.
        assert_eq!(seq, 3);
        let mut want: Vec<String> = (0..3).map(|i| format!("frame-{i:06}.raw")).collect();
        want.extend((before - 2..before).map(|i| format!("frame-{i:06}.1.raw")));
        want.sort();
        assert_eq!(names(&d), want);
        let _ = fs::remove_dir_all(&d);
    }
}
