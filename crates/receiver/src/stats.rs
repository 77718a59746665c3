//! Counters of a receiver: frames, bytes, losses, corruption.

use bitmask_wire::{Header, HEADER_LEN};
use std::time::Instant;

/// What the receiver has seen so far.
#[derive(Debug)]
pub struct Stats {
    /// Frames written.
    pub frames: u64,
    /// Frames skipped because their CRC did not match (or could not be decoded).
    pub corrupt: u64,
    /// Frames missing from sequence gaps.
    pub lost: u64,
    /// Bytes received on the wire (headers included).
    pub wire_bytes: u64,
    /// Bytes of decoded masks.
    pub mask_bytes: u64,
    last_sequence: Option<u64>,
    first_frame: Option<Instant>,
    last_frame: Option<Instant>,
}

impl Stats {
    /// Empty counters.
    pub fn new() -> Self {
        Stats {
            frames: 0,
            corrupt: 0,
            lost: 0,
            wire_bytes: 0,
            mask_bytes: 0,
            last_sequence: None,
            first_frame: None,
            last_frame: None,
        }
    }

    /// Counts one frame written.
    pub fn frame(&mut self, h: &Header, mask_len: usize, payload_len: usize) {
        let now = Instant::now();
        self.first_frame.get_or_insert(now);
        self.last_frame = Some(now);
        self.frames += 1;
        self.mask_bytes += mask_len as u64;
        self.wire_bytes += (HEADER_LEN + payload_len) as u64;
        if let Some(prev) = self.last_sequence {
            if h.sequence > prev + 1 {
                self.lost += h.sequence - prev - 1;
            }
        }
        self.last_sequence = Some(h.sequence);
    }

    /// Forgets the last sequence number (a new stream starts its own numbering).
    pub fn new_stream(&mut self) {
        self.last_sequence = None;
    }

    /// One line: frames, losses, bytes, rates.
    pub fn summary(&self) -> String {
        let secs = match (self.first_frame, self.last_frame) {
            (Some(a), Some(b)) => (b - a).as_secs_f64(),
            _ => 0.0,
        };
        // rates over the frames after the first (the first only starts the clock)
        let (fps, mbps) = if secs > 0.0 && self.frames > 1 {
            let n = (self.frames - 1) as f64;
            let per = self.wire_bytes as f64 / self.frames as f64;
            (n / secs, n * per * 8.0 / secs / 1e6)
        } else {
            (0.0, 0.0)
        };
        format!(
            "received {} frames ({} lost, {} corrupt), {} bytes in {:.2} s: {:.1} fps, {:.1} Mbit/s",
            self.frames, self.lost, self.corrupt, self.wire_bytes, secs, fps, mbps
        )
    }
}
