//! The memory the receiver's streams may hold in all (`--max-memory`).
//!
//! Each stream's memory is bounded by the size of its frames (its decoder
//! holds at most about 33 packed frames whatever a payload describes,
//! docs/CODEC.md 1.8), but `--max-senders` such streams at `--max-size` can
//! be more than a Pi has: 32 streams of 4096x4096 frames, about 2.3 GiB. So
//! a stream reserves its worst case from one budget before its first frame
//! of a size is decoded ([`Budget::reserve`]); a frame whose stream cannot
//! reserve it is refused with the numbers, and the streams already taking
//! frames keep theirs. The reservation is given back when the stream ends.

use std::sync::Mutex;

/// Bytes in a MiB.
pub const MIB: u64 = 1 << 20;

/// Packed frames' worth a decoder holds at most (docs/CODEC.md 1.8).
const DECODER_FRAMES: u64 = 33;

/// The most a stream of `width` x `height` frames holds: its decoder, the
/// decoded frame, the live view's copy, and the frame being read. (A UDP
/// stream's frames in reassembly are reserved apart, each for as long as
/// it is reassembled: [`crate::session::StreamCtx::admit_datagrams`].)
pub fn stream_bytes(width: u32, height: u32) -> u64 {
    let packed = (width as u64).div_ceil(8) * height as u64;
    packed.saturating_mul(DECODER_FRAMES + 3)
}

/// The budget: a limit and what the open streams have reserved of it.
pub struct Budget(Mutex<State>);

struct State {
    limit: u64,
    used: u64,
    /// Streams holding a reservation.
    streams: u32,
}

/// Why [`Budget::reserve`] refused.
#[derive(Debug, PartialEq, Eq)]
pub struct Refused {
    /// Bytes the stream asked for in all.
    pub need: u64,
    /// Bytes the other streams hold.
    pub used: u64,
    /// How many streams hold them.
    pub streams: u32,
    /// The budget.
    pub limit: u64,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "needs up to {}, ", mib(self.need))?;
        if self.need > self.limit {
            write!(f, "more than")?;
        } else {
            write!(
                f,
                "and {} stream(s) hold {} of",
                self.streams,
                mib(self.used)
            )?;
        }
        write!(f, " the receiver's {} (--max-memory)", mib(self.limit))
    }
}

/// `bytes` in MiB for a message, rounded up (never "0 MiB").
pub fn mib(bytes: u64) -> String {
    format!("{} MiB", bytes.div_ceil(MIB))
}

impl Budget {
    /// A budget of `limit` bytes.
    pub fn new(limit: u64) -> Self {
        Budget(Mutex::new(State {
            limit,
            used: 0,
            streams: 0,
        }))
    }

    /// Sets the limit, in bytes (at the start, before any stream).
    pub fn set_limit(&self, limit: u64) {
        crate::session::lock(&self.0).limit = limit;
    }

    /// Grows a stream's reservation from `*held` bytes to `need` (nothing
    /// when it holds that much already). Refused when the budget cannot
    /// give it; `*held` is then unchanged.
    pub fn reserve(&self, held: &mut u64, need: u64) -> Result<(), Refused> {
        if need <= *held {
            return Ok(());
        }
        let mut s = crate::session::lock(&self.0);
        let others = s.used - *held;
        if others.saturating_add(need) > s.limit {
            return Err(Refused {
                need,
                used: others,
                streams: s.streams - u32::from(*held > 0),
                limit: s.limit,
            });
        }
        if *held == 0 {
            s.streams += 1;
        }
        s.used = others + need;
        *held = need;
        Ok(())
    }

    /// Shrinks a stream's reservation from `*held` bytes to `to` (nothing
    /// when it holds no more than that).
    pub fn shrink(&self, held: &mut u64, to: u64) {
        if to >= *held {
            return;
        }
        if to == 0 {
            return self.release(held);
        }
        let mut s = crate::session::lock(&self.0);
        s.used -= *held - to;
        *held = to;
    }

    /// Bytes not reserved.
    pub fn free(&self) -> u64 {
        let s = crate::session::lock(&self.0);
        s.limit.saturating_sub(s.used)
    }

    /// Gives a stream's reservation back (at its end).
    pub fn release(&self, held: &mut u64) {
        if *held > 0 {
            let mut s = crate::session::lock(&self.0);
            s.used -= *held;
            s.streams -= 1;
            *held = 0;
        }
    }
}

/// The memory available now (`MemAvailable`), where the system says; at
/// most what one process can address (a 32-bit Pi OS on an 8 GB Pi 4).
pub fn available() -> Option<u64> {
    let m = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = m.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb.saturating_mul(1024).min(isize::MAX as u64))
}

/// The default `--max-memory`: half the memory available at the start, or
/// no limit where the system does not say.
pub fn default_limit() -> u64 {
    available().map_or(u64::MAX, |b| b / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_reserve_within_the_limit_and_give_back() {
        let per = stream_bytes(1024, 768);
        assert_eq!(per, 98_304 * 36);
        let b = Budget::new(2 * per + per / 2);
        let (mut a, mut c, mut d) = (0, 0, 0);
        b.reserve(&mut a, per).unwrap();
        b.reserve(&mut a, per).unwrap(); // held already: no second share
        b.reserve(&mut c, per).unwrap();
        let e = b.reserve(&mut d, per).unwrap_err();
        assert_eq!(
            e,
            Refused {
                need: per,
                used: 2 * per,
                streams: 2,
                limit: 2 * per + per / 2
            }
        );
        assert_eq!(d, 0);
        assert_eq!(
            e.to_string(),
            "needs up to 4 MiB, and 2 stream(s) hold 7 MiB of the receiver's 9 MiB \
             (--max-memory)"
        );
        // A stream growing counts its own share as its own.
        let e = b.reserve(&mut a, 2 * per).unwrap_err();
        assert_eq!((e.used, e.streams), (per, 1));
        b.release(&mut c);
        assert_eq!(c, 0);
        b.reserve(&mut a, per + per / 2).unwrap();
        b.reserve(&mut d, per).unwrap();
        b.release(&mut a);
        b.release(&mut a); // twice: nothing more
        b.release(&mut d);
        let s = crate::session::lock(&b.0);
        assert_eq!((s.used, s.streams), (0, 0));
    }

    #[test]
    fn a_stream_larger_than_the_whole_budget_says_so() {
        let b = Budget::new(10 * MIB);
        let e = b.reserve(&mut 0, stream_bytes(4096, 4096)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "needs up to 72 MiB, more than the receiver's 10 MiB (--max-memory)"
        );
    }
}
