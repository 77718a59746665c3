//! A logger for unit tests that check what is said and how often: every
//! line of the test binary, once a test called [`capture`]. Used by both
//! binaries' unit tests (the receiver's through `#[path]`).

use std::sync::Mutex;

/// The log lines of every test of this binary once one called
/// [`capture`]: tests pick their own by a word of their own (a
/// `--to`).
static LOGGED: Mutex<Vec<(log::Level, String)>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, r: &log::Record) {
        LOGGED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((r.level(), r.args().to_string()));
    }
    fn flush(&self) {}
}

/// Keeps this test binary's log lines, debug ones too.
pub fn capture() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        log::set_logger(&Capture).expect("no other logger in the unit tests");
        log::set_max_level(log::LevelFilter::Debug);
    });
}

/// The lines logged so far that contain `word`, with their levels.
pub fn lines_with(word: &str) -> Vec<(log::Level, String)> {
    LOGGED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|(_, l)| l.contains(word))
        .cloned()
        .collect()
}
