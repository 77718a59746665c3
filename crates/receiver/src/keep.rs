//! `--keep N`: at most N frame files in each output directory, the oldest
//! removed as new ones are written, so that a receiver left running for
//! days does not fill its card.
//!
//! One [`Keep`] serves every output directory (`--out DIR`, and with
//! `--per-sender` each sender's directory): the files of a directory are
//! kept in one list, oldest first, whichever connection wrote them (a
//! sender that reconnects, or restarts its numbering, goes on from the
//! same list). The first frame written into a directory starts a thread
//! that lists what it held before (frame files of earlier runs, oldest by
//! modification time first, the newest N kept in memory and the older
//! removed as it goes), so that a restarted receiver keeps the bound too,
//! and a directory of millions of files costs no stall of the streams and
//! no memory beyond N entries. Only frame files of the output's format are
//! counted or removed: `frame-NNNNNN.EXT` and `frame-NNNNNN.K.EXT` (the
//! names [`crate::output::write_new`] gives); nothing else in the
//! directory is touched.

use crate::output::frame_number;
use crate::session::{lock, more_like_it, Throttle};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime};

/// Old files removed at most per frame written: a list longer than N (the
/// files a directory's listing added) is brought down over the next
/// frames, not in one long stall of the stream.
pub const CATCH_UP: usize = 64;

/// A file as written: its modification time (ns) and length. A name taken
/// again by a newer file (a sender that restarted its numbering after the
/// old file was deleted) is another file: only the file an entry was made
/// for is removed. (Not the inode number: FAT and exFAT, a USB stick, make
/// one up each time the kernel reads the file's entry again.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Id {
    mtime_ns: i128,
    len: u64,
}

impl Id {
    fn of(m: &fs::Metadata) -> Id {
        Id {
            mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
            len: m.len(),
        }
    }
}

/// One directory's frame files.
#[derive(Default)]
struct Files {
    /// Oldest first: those earlier runs left (once listed), then this
    /// run's in the order written. An entry whose name now counts for
    /// another file (see `live`) is passed over.
    order: VecDeque<(OsString, Id)>,
    /// The file each name counts for: a directory holds one file of a
    /// name, so this is what the bound counts (an entry made twice for one
    /// file, by the listing and by its writer, counts once).
    live: HashMap<OsString, Id>,
}

impl Files {
    fn add(&mut self, name: OsString, id: Id) {
        if self.live.get(&name) != Some(&id) {
            self.live.insert(name.clone(), id);
            self.order.push_back((name, id));
        }
    }

    /// Takes the oldest entries off while more than `n` names count, `most`
    /// at most: the files to remove (nothing is removed here, under the
    /// lock).
    fn over(&mut self, n: usize, most: usize) -> Vec<(OsString, Id)> {
        let mut out = Vec::new();
        while self.live.len() > n && out.len() < most {
            let Some((name, id)) = self.order.pop_front() else {
                break;
            };
            if self.live.get(&name) == Some(&id) {
                self.live.remove(&name);
                out.push((name, id));
            }
        }
        out
    }
}

/// The bound of `--keep N` and each directory's frame files.
pub struct Keep {
    n: usize,
    ext: &'static str,
    /// Each directory's frame files: a name and an [`Id`] an entry, about
    /// 100 bytes on a Pi, 11 MB at `--keep 108000`.
    dirs: Mutex<HashMap<PathBuf, Files>>,
    /// Listings running ([`Keep::wait_listings`]).
    listings: (Mutex<usize>, Condvar),
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
            listings: (Mutex::new(0), Condvar::new()),
            failed: Throttle::default(),
        }
    }

    /// `path` was just written into `dir`: removes the oldest frame files
    /// of `dir` past the bound ([`CATCH_UP`] at most). Returns how many
    /// entries it took off the list (a file already gone, deleted by
    /// someone else, or that could not be removed, logged, counts too).
    /// The first file written into a directory starts a thread that lists
    /// what the directory held before ([`Keep::list_earlier`]), off the
    /// frames' path.
    pub fn wrote(self: &Arc<Self>, dir: &Path, path: &Path) -> usize {
        let Ok(m) = fs::symlink_metadata(path) else {
            return 0; // (gone already)
        };
        let name = path.file_name().unwrap_or_default().to_os_string();
        let mut g = lock(&self.dirs);
        let first = !g.contains_key(dir);
        let files = g.entry(dir.to_path_buf()).or_default();
        files.add(name, Id::of(&m));
        let victims = files.over(self.n, CATCH_UP);
        drop(g);
        for (name, id) in &victims {
            self.remove(&dir.join(name), *id);
        }
        if first {
            *lock(&self.listings.0) += 1;
            let (k, d) = (self.clone(), dir.to_path_buf());
            let started = std::thread::Builder::new()
                .name("keep".into())
                .spawn(move || {
                    k.list_earlier(&d);
                    *lock(&k.listings.0) -= 1;
                    k.listings.1.notify_all();
                });
            if let Err(e) = started {
                *lock(&self.listings.0) -= 1;
                log::warn!(
                    "--keep {}: cannot list {} ({e}): only the files written from now on \
                     are counted",
                    self.n,
                    dir.display()
                );
            }
        }
        victims.len()
    }

    /// Removes `path` if it is still the file `id`; whether it did.
    fn remove(&self, path: &Path, id: Id) -> bool {
        let r = match fs::symlink_metadata(path) {
            Ok(m) if m.is_file() && Id::of(&m) == id => fs::remove_file(path),
            // (another file under that name now, or none: not this one's)
            Ok(_) => return false,
            Err(e) => Err(e),
        };
        match r {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => {
                if let Some(n) = self.failed.hit() {
                    log::warn!(
                        "--keep {}: cannot remove {}: {e} (left in place){}",
                        self.n,
                        path.display(),
                        more_like_it(n)
                    );
                }
                false
            }
        }
    }

    /// Lists the frame files `dir` held before this run wrote into it (a
    /// thread of its own): keeps the newest N of them in a heap, and
    /// removes at once each that N newer ones push out (memory for N
    /// entries, however many the directory holds); then puts those N in
    /// front of the directory's list, oldest first, and removes what is
    /// over the bound (the list's lock is held only to change the list,
    /// never while removing files). A file pushed out that was changed
    /// since shortly before the listing began (by its modification time)
    /// may be one of this run's whose writer has not said so yet: it is
    /// removed at the end unless a writer has.
    fn list_earlier(&self, dir: &Path) {
        // (by this run's clock, however wrong: a Pi without a clock may
        // boot behind the time an earlier run's files were written)
        let recent = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128)
            - 2_000_000_000;
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) => {
                log::warn!(
                    "--keep {}: cannot list {}: {e}; only the files written from now on \
                     are counted",
                    self.n,
                    dir.display()
                );
                return;
            }
        };
        let mut newest: BinaryHeap<Reverse<(Id, OsString, bool)>> = BinaryHeap::new();
        let (mut found, mut removed) = (0usize, 0usize);
        let mut held_back: Vec<(OsString, Id)> = Vec::new();
        for e in entries.flatten() {
            let name = e.file_name();
            if name
                .to_str()
                .and_then(|n| frame_number(n, self.ext))
                .is_none()
            {
                continue;
            }
            // (a directory or link under such a name is not ours)
            let Ok(m) = e.metadata() else { continue };
            if !m.is_file() {
                continue;
            }
            found += 1;
            let id = Id::of(&m);
            newest.push(Reverse((id, name, id.mtime_ns >= recent)));
            if newest.len() > self.n {
                let Some(Reverse((id, name, fresh))) = newest.pop() else {
                    continue;
                };
                // (one of this run's, older than N others: its entry in
                // the list removes it in turn)
                let ours = lock(&self.dirs)
                    .get(dir)
                    .is_some_and(|f| f.live.contains_key(&name));
                if ours {
                    continue;
                }
                if fresh {
                    // (maybe this run's, its writer yet to say so: judged
                    // at the end; a couple of seconds of frames at most)
                    held_back.push((name, id));
                } else if self.remove(&dir.join(&name), id) {
                    removed += 1;
                }
            }
        }
        let mut g = lock(&self.dirs);
        let files = g.entry(dir.to_path_buf()).or_default();
        // (newest first, each put in front: the oldest ends up first)
        for Reverse((id, name, _)) in newest.into_sorted_vec() {
            if !files.live.contains_key(&name) {
                files.live.insert(name.clone(), id);
                files.order.push_front((name, id));
            }
        }
        let mut victims = files.over(self.n, usize::MAX);
        // (those held back that no writer of this run has claimed since)
        victims.extend(
            held_back
                .into_iter()
                .filter(|(name, _)| !files.live.contains_key(name)),
        );
        drop(g);
        for (name, id) in victims {
            if self.remove(&dir.join(name), id) {
                removed += 1;
            }
        }
        if removed > 0 {
            log::info!(
                "--keep {}: removed the {removed} oldest of the {found} frame files (.{}) in {}, \
                 earlier runs' included",
                self.n,
                self.ext,
                dir.display()
            );
        }
    }

    /// Waits, `limit` at most, for the listings still running (at exit:
    /// so that a short run leaves its directories within the bound).
    /// Whether none is left.
    pub fn wait_listings(&self, limit: Duration) -> bool {
        let g = lock(&self.listings.0);
        let (g, _) = self
            .listings
            .1
            .wait_timeout_while(g, limit, |n| *n > 0)
            .unwrap_or_else(|p| p.into_inner());
        *g == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

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
            assert!(frame_number(ok, "png").is_some(), "{ok}");
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
            assert!(frame_number(no, "png").is_none(), "{no}");
        }
    }

    /// Writes `name` in `dir` (its time `secs_ago`, if given) and tells `k`.
    fn write(k: &Arc<Keep>, d: &Path, name: &str, secs_ago: Option<u64>) -> usize {
        let p = d.join(name);
        fs::write(&p, b"y").unwrap();
        if let Some(s) = secs_ago {
            set_age(&p, s);
        }
        k.wrote(d, &p)
    }

    /// The files counted: every one on the list once.
    fn entries(k: &Keep, d: &Path) -> usize {
        let g = lock(&k.dirs);
        let f = &g[d];
        for (name, id) in &f.live {
            let n = f
                .order
                .iter()
                .filter(|e| (&e.0, &e.1) == (name, id))
                .count();
            assert_eq!(n, 1, "{name:?} on the list {n} times");
        }
        f.live.len()
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
        let k = Arc::new(Keep::new(3, "png"));
        // 4 frame files now: the listing removes the oldest (frame-000900, 300 s).
        assert_eq!(write(&k, &d, "frame-000000.png", None), 0);
        assert!(k.wait_listings(Duration::from_secs(20)), "never listed");
        assert_eq!(entries(&k, &d), 3);
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
        assert_eq!(write(&k, &d, "frame-000001.png", None), 1);
        assert_eq!(write(&k, &d, "frame-000002.png", None), 1);
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
        assert_eq!(write(&k, &d, "frame-000003.png", None), 1);
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
    fn a_name_taken_again_by_a_newer_file_is_not_removed_for_the_old_one() {
        // A user clears the directory, the sender restarts its numbering:
        // frames 0-2 again under the old names. The old entries must not
        // remove the new files (they are other files: times set apart, as
        // a filesystem whose clock ticks coarsely might not).
        let d = tmp("reuse");
        let k = Arc::new(Keep::new(3, "raw"));
        for (i, name) in ["frame-000000.raw", "frame-000001.raw", "frame-000002.raw"]
            .iter()
            .enumerate()
        {
            write(&k, &d, name, Some(100 - i as u64));
        }
        assert!(k.wait_listings(Duration::from_secs(20)), "never listed");
        for e in fs::read_dir(&d).unwrap() {
            fs::remove_file(e.unwrap().path()).unwrap();
        }
        // (in another order: the old entries' order must not decide)
        for (i, name) in ["frame-000002.raw", "frame-000001.raw", "frame-000000.raw"]
            .iter()
            .enumerate()
        {
            // (the name counts for the new file now: nothing over the bound)
            assert_eq!(write(&k, &d, name, Some(50 - i as u64)), 0);
            assert_eq!(names(&d).len(), i + 1, "{:?}", names(&d));
        }
        assert_eq!(entries(&k, &d), 3);
        // and the next frame takes the oldest new one (frame 2), passing
        // the old entries over
        assert_eq!(write(&k, &d, "frame-000003.raw", Some(40)), 1);
        assert_eq!(
            names(&d),
            ["frame-000000.raw", "frame-000001.raw", "frame-000003.raw"]
        );
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn a_full_directory_is_listed_aside_and_keeps_the_newest() {
        let d = tmp("full");
        let before = 2 * CATCH_UP + 10;
        for i in 0..before {
            let p = d.join(format!("frame-{i:06}.1.raw"));
            fs::write(&p, b"x").unwrap();
            set_age(&p, 1000 - i as u64);
        }
        let k = Arc::new(Keep::new(5, "raw"));
        assert_eq!(write(&k, &d, "frame-000000.raw", None), 0);
        assert!(k.wait_listings(Duration::from_secs(20)), "never listed");
        // This run's frame and the four youngest of the others.
        let mut want = vec!["frame-000000.raw".to_string()];
        want.extend((before - 4..before).map(|i| format!("frame-{i:06}.1.raw")));
        want.sort();
        assert_eq!(names(&d), want);
        assert_eq!(entries(&k, &d), 5);
        // and the next frame takes the oldest of those
        assert_eq!(write(&k, &d, "frame-000001.raw", None), 1);
        assert!(!names(&d).contains(&format!("frame-{:06}.1.raw", before - 4)));
        let _ = fs::remove_dir_all(&d);
    }
}
