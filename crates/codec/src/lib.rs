//! Lossless compression of packed 1-bit masks for the bitmask wire format.
//!
//! Input and output are masks in the *wire layout* (MSB-first bits, rows
//! padded to whole bytes, `stride = ceil(width / 8)`, padding bits 0). The
//! codec id and the delta flag travel in the frame header of
//! `bitmask_wire`; everything else is inside the payload.
//!
//! | id | name      | payload |
//! |----|-----------|---------|
//! | 0  | `raw`     | the packed mask itself |
//! | 1  | `bilevel` | this crate's codec: 2-D (G4/READ-like) run coding against the row above or the previous frame's row, static per-frame rANS; format in `docs/CODEC.md` |
//! | 2  | `zstd`    | one zstd frame (level 1 by default) of the packed mask |
//! | 3  | `lz4`     | one LZ4 block (no size prefix) of the packed mask |
//!
//! ```
//! use bitmask_codec::{Choice, CodecError, Decoder, Encoder, CODEC_BILEVEL, FLAG_DELTA};
//!
//! // A 256x64 mask (32 B per packed row): a white square, then the same
//! // square 16 px further right.
//! let (w, h) = (256u32, 64u32);
//! let square = |x: usize| {
//!     let mut m = vec![0u8; 32 * 64];
//!     for row in 16..48 {
//!         m[row * 32 + x / 8..row * 32 + x / 8 + 4].fill(0xff);
//!     }
//!     m
//! };
//! let (first, second) = (square(64), square(80));
//! let mut enc = Encoder::new(Choice::Bilevel, 30); // a key frame every 30
//! let mut dec = Decoder::new();
//! let (mut p1, mut p2) = (Vec::new(), Vec::new());
//! let f1 = enc.encode(&first, w, h, 0, &mut p1).unwrap();
//! let f2 = enc.encode(&second, w, h, 1, &mut p2).unwrap();
//! assert_eq!((f1.codec, f1.flags), (CODEC_BILEVEL, 0)); // a key frame
//! assert_eq!((f2.codec, f2.flags), (CODEC_BILEVEL, FLAG_DELTA)); // coded against frame 0
//! assert!(p1.len() < first.len() / 10 && p2.len() < first.len() / 10);
//!
//! // `FrameInfo` carries what the frame header does: codec, flags, size, sequence.
//! let mut back = vec![0u8; first.len()];
//! dec.decode(&f1, &p1, &mut back).unwrap();
//! assert_eq!(back, first);
//! dec.decode(&f2, &p2, &mut back).unwrap();
//! assert_eq!(back, second);
//!
//! // A decoder that missed frame 0 refuses frame 1 rather than guess.
//! let err = Decoder::new().decode(&f2, &p2, &mut back).unwrap_err();
//! assert!(matches!(err, CodecError::MissingReference { needed: 0, .. }));
//! ```
//!
//! The crate does no I/O. Decoders treat payloads as hostile: output is
//! bounded by the caller's buffer, nothing is read out of bounds and nothing
//! panics. A delta frame whose reference the decoder does not hold is
//! rejected with [`CodecError::MissingReference`], never decoded wrongly.
//! A [`Decoder`] holds at most about 33 times the packed frame in memory,
//! whatever a payload describes (docs/CODEC.md 1.8): bound it through the
//! dimensions you accept. (An [`Encoder`]'s memory grows with the edges of
//! the masks it is given: see there.)
//!
//! Cargo feature `zstd` (on by default) builds codec 2 with the C libzstd
//! (through the `cc` crate: a cross build needs a C cross compiler).
//! Without it, encoding with [`Choice::Zstd`] or decoding a zstd payload
//! returns [`CodecError::Unsupported`], and `auto` leaves zstd out.
//!
//! The formats are specified in `CODEC.md`, shipped in this crate's
//! package (`docs/CODEC.md` in the bitmask repository; the frame format
//! that carries them in `docs/PROTOCOL.md` there and in the bitmask-wire
//! package), precisely enough to write a second decoder. (`docs/CODEC.md
//! 1.8` and the like below are its sections.)
#![deny(missing_docs)]
// Unsafe code only where a module allows it: the AVX2 decoder and encoder of `lanes`
// and the x86 variants of the bilevel encoder (target features).
#![deny(unsafe_code)]

mod bilevel;
mod bits;
mod lanes;
mod rans;

use bilevel::{BilevelDecoder, BilevelEncoder, Reference, Transitions};
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

/// The row stride and the mask of the padding bits in each row's last
/// byte of a `width`-pixel mask in the wire layout; `None` without padding.
fn padding(width: u32) -> Option<(usize, u8)> {
    let tail = width % 8;
    (tail != 0).then(|| ((width as usize).div_ceil(8), 0xffu8 >> tail))
}

/// True if a row of `mask` (the wire layout, its size checked) has bits
/// set past `width`.
fn padding_set(mask: &[u8], width: u32) -> bool {
    padding(width)
        .is_some_and(|(stride, pad)| mask.chunks_exact(stride).any(|r| r[stride - 1] & pad != 0))
}

/// Clears the padding bits (past `width` in each row's last byte) of a mask
/// in the wire layout.
fn clear_padding(mask: &mut [u8], width: u32) {
    if let Some((stride, pad)) = padding(width) {
        for row in mask.chunks_exact_mut(stride) {
            row[stride - 1] &= !pad;
        }
    }
}

/// Codec id 0: the payload is the packed mask (same as `bitmask_wire::CODEC_RAW`).
pub const CODEC_RAW: u8 = 0;
/// Codec id 1: the bilevel codec of this crate (`docs/CODEC.md`).
pub const CODEC_BILEVEL: u8 = 1;
/// Codec id 2: a zstd frame of the packed mask.
pub const CODEC_ZSTD: u8 = 2;
/// Codec id 3: an LZ4 block (no size prefix) of the packed mask.
pub const CODEC_LZ4: u8 = 3;
/// Header flag bit 0 (same as `bitmask_wire::FLAG_DELTA`): the payload references an earlier frame.
pub const FLAG_DELTA: u8 = 1;
/// Largest width or height accepted (as `bitmask_core::MAX_DIMENSION`).
pub const MAX_DIMENSION: u32 = 1 << 20;
/// Default zstd level of [`Choice::Zstd`] and of [`Choice::Auto`].
pub const DEFAULT_ZSTD_LEVEL: i32 = 1;
/// [`Choice::Auto`]: frames in a row on which LZ4 and zstd lost to bilevel
/// before they are tried less often.
pub const GENERAL_PATIENCE: u32 = 4;
/// [`Choice::Auto`]: at most this many frames skipped between two tries of
/// LZ4 and zstd.
const GENERAL_SKIP_MAX: u32 = 31;

/// Default time budget of [`Choice::Auto`] per frame.
pub const DEFAULT_AUTO_BUDGET: Duration = Duration::from_millis(5);

/// Name of a codec id, for logs.
pub fn codec_name(codec: u8) -> &'static str {
    match codec {
        CODEC_RAW => "raw",
        CODEC_BILEVEL => "bilevel",
        CODEC_ZSTD => "zstd",
        CODEC_LZ4 => "lz4",
        _ => "unknown",
    }
}

/// Errors of encoding and decoding. Each carries the offending values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// Width or height is zero or above [`MAX_DIMENSION`].
    #[error("invalid mask dimensions {width}x{height} (1..={MAX_DIMENSION} each)")]
    InvalidDimensions {
        /// Width given.
        width: u32,
        /// Height given.
        height: u32,
    },
    /// A buffer does not hold exactly one packed mask.
    #[error("{what} buffer holds {actual} B, a {width}x{height} mask needs {expected} B")]
    BufferSize {
        /// `"packed"` or `"output"`.
        what: &'static str,
        /// Bytes needed.
        expected: usize,
        /// Bytes given.
        actual: usize,
        /// Width given.
        width: u32,
        /// Height given.
        height: u32,
    },
    /// A codec id this build does not know.
    #[error("unknown codec id {codec}")]
    UnknownCodec {
        /// The id.
        codec: u8,
    },
    /// A codec this build was compiled without.
    #[error("codec {codec} ({name}) is not compiled into this build (cargo feature {name:?})")]
    Unsupported {
        /// The id.
        codec: u8,
        /// Its name.
        name: &'static str,
    },
    /// Header flags with a bit set that no codec defines (only
    /// [`FLAG_DELTA`] is; `bitmask_wire`'s reader refuses such a header
    /// too, this is for payloads carried some other way).
    #[error("codec {codec}: header flags {flags:#04x} set a bit other than the delta flag (0x01)")]
    UnknownFlags {
        /// The codec id.
        codec: u8,
        /// Flags from the header.
        flags: u8,
    },
    /// The delta flag and the payload disagree (or a codec without delta frames has the flag).
    #[error("codec {codec}: header flags {flags:#04x} do not match the payload (payload is a {payload} frame)")]
    FlagMismatch {
        /// The codec id.
        codec: u8,
        /// Flags from the header.
        flags: u8,
        /// `"key"`, `"delta"` or `"non-delta"`.
        payload: &'static str,
    },
    /// A delta frame whose reference frame this decoder does not hold.
    #[error(
        "delta frame {frame} needs reference frame {needed}, and the decoder holds {} (a lost \
         or skipped frame, or a stream joined after its key frame: the next key frame recovers)",
        held_text(.held)
    )]
    MissingReference {
        /// Sequence number of the delta frame.
        frame: u64,
        /// Sequence number of the frame the payload references.
        needed: u64,
        /// Sequence number of the frame held, if any.
        held: Option<u64>,
    },
    /// The reference frame held has other dimensions than the delta frame.
    #[error(
        "delta frame {width}x{height} references frame {needed}, which is {ref_width}x{ref_height}"
    )]
    ReferenceDimensions {
        /// Sequence number of the reference.
        needed: u64,
        /// Width of the delta frame.
        width: u32,
        /// Height of the delta frame.
        height: u32,
        /// Width of the reference held.
        ref_width: u32,
        /// Height of the reference held.
        ref_height: u32,
    },
    /// The payload is malformed.
    #[error("corrupt {len}-byte payload for codec {codec} near byte {offset}: {reason}")]
    Corrupt {
        /// The codec id.
        codec: u8,
        /// Payload length.
        len: usize,
        /// Where the problem was noticed (approximate for entropy-coded data).
        offset: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// A general-purpose codec failed or decoded to the wrong size.
    #[error("codec {codec} ({}): {detail} (the mask is {expected} B)", codec_name(*.codec))]
    Backend {
        /// The codec id.
        codec: u8,
        /// The library's message or the size found.
        detail: String,
        /// Bytes of the packed mask.
        expected: usize,
    },
}

fn held_text(held: &Option<u64>) -> String {
    match held {
        Some(q) => format!("frame {q}"),
        None => "no frame".into(),
    }
}

/// Which codec an [`Encoder`] uses.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Choice {
    /// No compression.
    Raw,
    /// The bilevel codec, with delta frames between key frames.
    Bilevel,
    /// zstd, each frame alone.
    Zstd,
    /// LZ4, each frame alone.
    Lz4,
    /// Per frame, the smallest of bilevel, LZ4 and zstd that fits the time budget, else raw.
    /// LZ4 and zstd are tried only on frames bilevel codes to more than an
    /// eighth of raw; once they have lost to bilevel on
    /// [`GENERAL_PATIENCE`] such frames in a row, only on every 2nd, 4th,
    /// ... up to every 32nd such frame, until one wins (on a Pi they cost
    /// milliseconds a frame, and on grainy camera masks bilevel wins).
    /// It reads the clock (`std::time::Instant`) for that budget, except on
    /// wasm32-unknown-unknown, whose std has none (reading it panics): there every
    /// codec is tried. (zstd's C library does not build for that target: use
    /// `default-features = false`.)
    #[default]
    Auto,
}

impl Choice {
    /// All choices, in CLI order (a slice: more may come).
    pub const ALL: &'static [Choice] = &[
        Choice::Raw,
        Choice::Bilevel,
        Choice::Zstd,
        Choice::Lz4,
        Choice::Auto,
    ];

    /// Whether this build can encode with it: all but [`Choice::Zstd`]
    /// without the `zstd` feature (which then fails with
    /// [`CodecError::Unsupported`]; `auto` leaves zstd out).
    pub const fn is_available(self) -> bool {
        !matches!(self, Choice::Zstd) || cfg!(feature = "zstd")
    }

    /// The choices this build can encode with ([`Choice::is_available`]).
    pub fn available() -> impl Iterator<Item = Choice> {
        Choice::ALL.iter().copied().filter(|c| c.is_available())
    }

    /// CLI name.
    pub const fn name(self) -> &'static str {
        match self {
            Choice::Raw => "raw",
            Choice::Bilevel => "bilevel",
            Choice::Zstd => "zstd",
            Choice::Lz4 => "lz4",
            Choice::Auto => "auto",
        }
    }
}

impl fmt::Display for Choice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A codec name that is not one of `raw`, `bilevel`, `zstd`, `lz4`, `auto`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown codec {0:?} (expected raw, bilevel, zstd, lz4 or auto)")]
pub struct ParseChoiceError(pub String);

impl FromStr for Choice {
    type Err = ParseChoiceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Choice::ALL
            .iter()
            .copied()
            .find(|c| c.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| ParseChoiceError(s.to_owned()))
    }
}

/// One frame as its header describes it: what [`Encoder::encode`] returns
/// and what [`Decoder::decode`] needs beside the payload. The fields are
/// those of the same names in `bitmask_wire::Header`, so the sender copies
/// them into the header and the receiver copies them out of it; named
/// fields, as several of them are integers that would mix up unnoticed as
/// positional arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameInfo {
    /// Codec id ([`CODEC_RAW`], [`CODEC_BILEVEL`], [`CODEC_ZSTD`], [`CODEC_LZ4`]).
    pub codec: u8,
    /// Header flags ([`FLAG_DELTA`] or 0).
    pub flags: u8,
    /// Mask width in pixels.
    pub width: u32,
    /// Mask height in pixels.
    pub height: u32,
    /// The frame's sequence number (delta frames name their reference by it).
    pub sequence: u64,
}

impl FrameInfo {
    /// The bytes of this frame's packed mask, `ceil(width/8) * height`:
    /// the length of [`Decoder::decode`]'s `out`. An error for dimensions
    /// a decoder refuses (zero, or over [`MAX_DIMENSION`]), or a mask
    /// larger than this target's memory.
    ///
    /// ```
    /// # use bitmask_codec::{FrameInfo, CODEC_RAW};
    /// let info = FrameInfo { codec: CODEC_RAW, flags: 0, width: 1024, height: 768, sequence: 0 };
    /// assert_eq!(info.mask_len().unwrap(), 98_304);
    /// ```
    pub fn mask_len(&self) -> Result<usize, CodecError> {
        mask_len(self.width, self.height)
    }
}

fn mask_len(width: u32, height: u32) -> Result<usize, CodecError> {
    if width == 0 || height == 0 || width > MAX_DIMENSION || height > MAX_DIMENSION {
        return Err(CodecError::InvalidDimensions { width, height });
    }
    // In u64: on a 32-bit target the product of two dimensions up to
    // MAX_DIMENSION can pass usize::MAX.
    let bytes = (width as u64).div_ceil(8) * height as u64;
    usize::try_from(bytes).map_err(|_| CodecError::InvalidDimensions { width, height })
}

fn check_frame(width: u32, height: u32, len: usize, what: &'static str) -> Result<(), CodecError> {
    let expected = mask_len(width, height)?;
    if len != expected {
        return Err(CodecError::BufferSize {
            what,
            expected,
            actual: len,
            width,
            height,
        });
    }
    Ok(())
}

/// Encodes a stream of masks. Keeps the last frame as the reference of the
/// next delta frame; all buffers are reused across frames.
///
/// Memory: the bilevel codec (and `auto`, which tries it) keeps the
/// transitions of the current and the previous frame, 4 bytes each, so an
/// encoder's buffers grow with the masks' edges: a camera mask at 1024x768
/// needs well under a megabyte, but a mask whose every pixel is an edge (a
/// one-pixel checkerboard) about 8 bytes per pixel, and up to twice that
/// while the buffers grow (measured: 190 MB at 4096x4096, 91 times the
/// packed frame). zstd and lz4 need about one packed frame. Bound it
/// through the dimensions you accept.
pub struct Encoder {
    choice: Choice,
    keyframe_interval: u32,
    since_key: u32,
    force_key: bool,
    zstd_level: i32,
    budget: Duration,
    cur: Transitions,
    prev: Transitions,
    prev_seq: Option<u64>,
    bilevel: BilevelEncoder,
    scratch: Vec<u8>,
    /// A copy of a mask whose padding bits were set, with them cleared.
    clean: Vec<u8>,
    /// [`Choice::Auto`]: tries in a row on which LZ4 and zstd lost, and
    /// frames still to pass over before the next try ([`GENERAL_PATIENCE`]).
    general_lost: u32,
    general_skip: u32,
    #[cfg(feature = "zstd")]
    zstd: Option<zstd::bulk::Compressor<'static>>,
}

impl fmt::Debug for Encoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Encoder")
            .field("choice", &self.choice)
            .field("keyframe_interval", &self.keyframe_interval)
            .field("since_key", &self.since_key)
            .field("prev_seq", &self.prev_seq)
            .finish_non_exhaustive()
    }
}

impl Encoder {
    /// An encoder using `choice`. With [`Choice::Bilevel`] and
    /// [`Choice::Auto`] a frame is coded alone (a key frame) every
    /// `keyframe_interval` frames: 1 codes every frame alone, 0 no
    /// schedule (the first frame, those after
    /// [`force_keyframe`](Self::force_keyframe), and any frame that codes
    /// smaller alone than as a delta are key frames).
    pub fn new(choice: Choice, keyframe_interval: u32) -> Self {
        Encoder {
            choice,
            keyframe_interval,
            since_key: 0,
            force_key: true,
            zstd_level: DEFAULT_ZSTD_LEVEL,
            budget: DEFAULT_AUTO_BUDGET,
            cur: Transitions::default(),
            prev: Transitions::default(),
            prev_seq: None,
            bilevel: BilevelEncoder::default(),
            scratch: Vec::new(),
            clean: Vec::new(),
            general_lost: 0,
            general_skip: 0,
            #[cfg(feature = "zstd")]
            zstd: None,
        }
    }

    /// The codec choice.
    pub fn choice(&self) -> Choice {
        self.choice
    }

    /// Sets the zstd level (1..=22; default [`DEFAULT_ZSTD_LEVEL`]; a level
    /// outside is clamped into that range, so zstd's negative "fast" levels
    /// are not offered).
    pub fn set_zstd_level(&mut self, level: i32) {
        self.zstd_level = level.clamp(1, 22);
        #[cfg(feature = "zstd")]
        {
            self.zstd = None;
        }
    }

    /// Sets [`Choice::Auto`]'s time budget per frame (default
    /// [`DEFAULT_AUTO_BUDGET`]): the general-purpose codecs are tried only
    /// while the time spent on the frame is below it.
    pub fn set_auto_budget(&mut self, budget: Duration) {
        self.budget = budget;
    }

    /// Makes the next frame a key frame (after a reconnect, or when a receiver joins).
    pub fn force_keyframe(&mut self) {
        self.force_key = true;
    }

    /// Appends the payload for one packed frame to `out` (which is not
    /// cleared) and returns the codec id and header flags to send with it.
    ///
    /// The payload is never longer than `packed` (raw is sent when nothing
    /// else pays), as the wire format requires. `packed` must be the wire
    /// layout. Bits past `width` in a row's last byte are padding, not
    /// pixels: they are coded as 0 whatever they hold (the wire layout has
    /// them 0, as `numpy.packbits` pads), so the mask decodes with them 0.
    /// The [`FrameInfo`] returned is the frame header's codec, flags,
    /// dimensions and sequence number. No allocation per frame once the
    /// buffers have grown to the frame size (except LZ4, whose hash table
    /// `lz4_flex` allocates per call).
    ///
    /// `sequence` names the frame: a delta frame names its reference by it
    /// alone, so the frames of one stream must have different numbers (a
    /// frame header's sequence number, counting up), or a decoder that
    /// missed a frame could take another of the same number for the
    /// reference and decode a wrong image.
    pub fn encode(
        &mut self,
        packed: &[u8],
        width: u32,
        height: u32,
        sequence: u64,
        out: &mut Vec<u8>,
    ) -> Result<FrameInfo, CodecError> {
        check_frame(width, height, packed.len(), "packed")?;
        if !padding_set(packed, width) {
            return self.encode_clean(packed, width, height, sequence, out);
        }
        // A copy with the padding cleared (only for such masks).
        let mut clean = std::mem::take(&mut self.clean);
        clean.clear();
        clean.extend_from_slice(packed);
        clear_padding(&mut clean, width);
        let r = self.encode_clean(&clean, width, height, sequence, out);
        self.clean = clean;
        r
    }

    /// [`encode`](Self::encode) of a mask whose padding bits are 0.
    fn encode_clean(
        &mut self,
        packed: &[u8],
        width: u32,
        height: u32,
        sequence: u64,
        out: &mut Vec<u8>,
    ) -> Result<FrameInfo, CodecError> {
        // (the clock only for auto's time budget: std has none on
        // wasm32-unknown-unknown, where reading it panics; there the budget
        // is never used up)
        const NO_CLOCK: bool = cfg!(all(target_arch = "wasm32", target_os = "unknown"));
        let t0 = (self.choice == Choice::Auto && !NO_CLOCK).then(Instant::now);
        let budget = self.budget;
        let in_budget = || t0.is_none_or(|t| t.elapsed() < budget);
        let base = out.len();
        let limit = packed.len();
        let uses_bilevel = matches!(self.choice, Choice::Bilevel | Choice::Auto);
        let mut result = FrameInfo {
            codec: CODEC_RAW,
            flags: 0,
            width,
            height,
            sequence,
        };
        if uses_bilevel {
            self.cur.extract(packed, width, height);
            let key = self.force_key
                || self.prev_seq.is_none()
                || self.prev.width != width
                || self.prev.height != height
                || (self.keyframe_interval > 0 && self.since_key >= self.keyframe_interval);
            let prev = if key {
                None
            } else {
                self.prev_seq.map(|s| (&self.prev, s))
            };
            let delta = self.bilevel.encode(&self.cur, prev, out);
            if out.len() - base <= limit {
                result.codec = CODEC_BILEVEL;
                result.flags = if delta { FLAG_DELTA } else { 0 };
            } else {
                out.truncate(base);
            }
        }
        match self.choice {
            Choice::Zstd => {
                if self.try_zstd(packed, limit)? {
                    out.extend_from_slice(&self.scratch);
                    result.codec = CODEC_ZSTD;
                }
            }
            Choice::Lz4 => {
                if self.try_lz4(packed, limit) {
                    out.extend_from_slice(&self.scratch);
                    result.codec = CODEC_LZ4;
                }
            }
            Choice::Auto => {
                // General-purpose codecs win only on content with little run
                // structure (dithering, checkerboards): try them when the
                // bilevel codec did not reach 8:1 and time is left.
                let mut best = if result.codec == CODEC_BILEVEL {
                    out.len() - base
                } else {
                    limit
                };
                let wanted = best > limit / 8;
                // (they lost on the frames before: tried less often)
                let skipped = wanted && self.general_skip > 0;
                if skipped {
                    self.general_skip -= 1;
                }
                // (a frame whose time ran out before them is not one they lost)
                let tried = wanted && !skipped && in_budget();
                if tried && self.try_lz4(packed, best) {
                    best = self.scratch.len();
                    out.truncate(base);
                    out.extend_from_slice(&self.scratch);
                    (result.codec, result.flags) = (CODEC_LZ4, 0);
                }
                if cfg!(feature = "zstd")
                    && tried
                    && best > limit / 8
                    && in_budget()
                    && self.try_zstd(packed, best)?
                {
                    out.truncate(base);
                    out.extend_from_slice(&self.scratch);
                    (result.codec, result.flags) = (CODEC_ZSTD, 0);
                }
                if tried {
                    if matches!(result.codec, CODEC_LZ4 | CODEC_ZSTD) {
                        self.general_lost = 0;
                    } else {
                        self.general_lost = self.general_lost.saturating_add(1);
                        if let Some(k) = self.general_lost.checked_sub(GENERAL_PATIENCE) {
                            // (every 2nd such frame, 4th, ... 32nd)
                            self.general_skip = ((2u32 << k.min(4)) - 1).min(GENERAL_SKIP_MAX);
                        }
                    }
                }
            }
            Choice::Raw | Choice::Bilevel => {}
        }
        if result.codec == CODEC_RAW {
            out.truncate(base);
            out.extend_from_slice(packed);
        }
        if result.flags & FLAG_DELTA != 0 {
            self.since_key = self.since_key.saturating_add(1);
        } else {
            self.since_key = 1;
        }
        self.force_key = false;
        if uses_bilevel {
            std::mem::swap(&mut self.cur, &mut self.prev);
            self.prev_seq = Some(sequence);
        } else {
            self.prev_seq = None;
        }
        Ok(result)
    }

    /// LZ4 into `scratch`; true if it is shorter than `limit`... or equal.
    /// Not tried on a mask whose LZ4 bound does not fit a `usize`
    /// ([`lz4_bound`]).
    fn try_lz4(&mut self, packed: &[u8], limit: usize) -> bool {
        let Some(bound) = lz4_bound(packed.len()) else {
            return false;
        };
        if self.scratch.len() < bound {
            self.scratch.resize(bound, 0);
        }
        self.scratch.truncate(bound.max(self.scratch.len()));
        match lz4_flex::block::compress_into(packed, &mut self.scratch[..bound]) {
            Ok(n) if n <= limit => {
                self.scratch.truncate(n);
                true
            }
            _ => false,
        }
    }

    /// zstd into `scratch`; true if it fits in `limit` bytes.
    #[cfg(feature = "zstd")]
    fn try_zstd(&mut self, packed: &[u8], limit: usize) -> Result<bool, CodecError> {
        let level = self.zstd_level;
        let backend = |e: std::io::Error| CodecError::Backend {
            codec: CODEC_ZSTD,
            detail: e.to_string(),
            expected: packed.len(),
        };
        if self.zstd.is_none() {
            self.zstd = Some(zstd::bulk::Compressor::new(level).map_err(backend)?);
        }
        let c = self.zstd.as_mut().expect("just set");
        if self.scratch.len() < limit {
            self.scratch.resize(limit, 0);
        }
        // A destination of `limit` bytes: zstd fails when the frame does not fit.
        match c.compress_to_buffer(packed, &mut self.scratch[..limit]) {
            Ok(n) => {
                self.scratch.truncate(n);
                Ok(true)
            }
            Err(_) => Ok(false),
        }
    }

    #[cfg(not(feature = "zstd"))]
    fn try_zstd(&mut self, _packed: &[u8], _limit: usize) -> Result<bool, CodecError> {
        if self.choice == Choice::Zstd {
            return Err(CodecError::Unsupported {
                codec: CODEC_ZSTD,
                name: "zstd",
            });
        }
        Ok(false)
    }
}

/// lz4_flex's worst-case output size for `len` input bytes
/// (`get_maximum_output_size`), `None` where it overflows: lz4_flex computes
/// `len * 110 / 100 + 20` unchecked, which wraps on a 32-bit target from
/// about 39 MB (a 20000x16000 mask), where its own check then passes a
/// buffer too small (a panic, an abort in the Pi builds), and in a debug
/// build panics outright.
fn lz4_bound(len: usize) -> Option<usize> {
    len.checked_mul(110).map(|n| n / 100 + 20)
}

/// Decodes a stream of masks. Holds the last decoded frame (any codec) as
/// the reference of delta frames.
///
/// One decoder per stream: a delta frame names its reference by sequence
/// number only, so a decoder kept across two streams (a reconnect, a
/// restarted sender whose numbers start again) could take the old
/// stream's frame for the new one's reference. Call [`Decoder::reset`]
/// when a stream starts again. The payload carries no checksum: check it
/// before decoding (the wire frame's CRC-32 does), as a damaged payload may
/// decode to a wrong image.
pub struct Decoder {
    bilevel: BilevelDecoder,
    cur: Transitions,
    prev: Transitions,
    /// The reference's packed rows, when it is held that way (`prev_packed`):
    /// frames of other codecs, and bilevel frames whose lists would pass
    /// `list_budget`. `prev.width`, `prev.height` are its dimensions.
    prev_bits: Vec<u8>,
    prev_packed: bool,
    prev_seq: Option<u64>,
    /// Most transition-list entries kept per frame (`cur`, `prev`), or 0 for
    /// the default (twice the packed frame's bytes).
    list_budget: usize,
    #[cfg(feature = "zstd")]
    zstd: Option<zstd::bulk::Decompressor<'static>>,
}

impl fmt::Debug for Decoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decoder")
            .field("reference", &self.prev_seq)
            .finish_non_exhaustive()
    }
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    /// A decoder holding no reference.
    pub fn new() -> Self {
        Decoder {
            bilevel: BilevelDecoder::default(),
            cur: Transitions::default(),
            prev: Transitions::default(),
            prev_bits: Vec::new(),
            prev_packed: false,
            prev_seq: None,
            list_budget: 0,
            #[cfg(feature = "zstd")]
            zstd: None,
        }
    }

    /// Forgets the reference frame (the next delta frame is rejected until a key frame arrives).
    pub fn reset(&mut self) {
        self.prev_seq = None;
        self.prev_packed = false;
    }

    /// Sets the most transition-list entries kept per frame, at least one
    /// row's (tests force the ring and packed references with 1).
    #[cfg(test)]
    pub(crate) fn set_list_budget(&mut self, entries: usize) {
        self.list_budget = entries.max(1);
    }

    /// Sequence number of the reference frame held, if any.
    pub fn reference(&self) -> Option<u64> {
        self.prev_seq
    }

    /// Decodes the payload of the frame `frame` describes into `out`,
    /// exactly `ceil(width/8) * height` bytes in the wire layout. On success
    /// the frame becomes the reference for later delta frames; on error
    /// `out` is unspecified and the reference is unchanged.
    pub fn decode(
        &mut self,
        frame: &FrameInfo,
        payload: &[u8],
        out: &mut [u8],
    ) -> Result<(), CodecError> {
        let FrameInfo {
            codec,
            flags,
            width,
            height,
            sequence,
        } = *frame;
        check_frame(width, height, out.len(), "output")?;
        if flags & !FLAG_DELTA != 0 {
            return Err(CodecError::UnknownFlags { codec, flags });
        }
        let delta = flags & FLAG_DELTA != 0;
        if codec != CODEC_BILEVEL && delta && codec <= CODEC_LZ4 {
            return Err(CodecError::FlagMismatch {
                codec,
                flags,
                payload: "non-delta",
            });
        }
        let corrupt = |offset: usize, reason: &'static str| CodecError::Corrupt {
            codec,
            len: payload.len(),
            offset,
            reason,
        };
        let expected = out.len();
        let backend = |detail: String| CodecError::Backend {
            codec,
            detail: format!("{} B payload: {detail}", payload.len()),
            expected,
        };
        match codec {
            CODEC_RAW => {
                if payload.len() != out.len() {
                    return Err(backend("not the mask's size".into()));
                }
                out.copy_from_slice(payload);
            }
            CODEC_LZ4 => match lz4_flex::block::decompress_into(payload, out) {
                Ok(n) if n == out.len() => {}
                Ok(n) => return Err(backend(format!("decoded {n} B"))),
                Err(e) => return Err(backend(e.to_string())),
            },
            CODEC_ZSTD => self.decode_zstd(payload, out)?,
            CODEC_BILEVEL => {
                let reference = bilevel::payload_reference(payload).map_err(|r| corrupt(0, r))?;
                if reference.is_some() != delta {
                    return Err(CodecError::FlagMismatch {
                        codec,
                        flags,
                        payload: if reference.is_some() { "delta" } else { "key" },
                    });
                }
                let prev = match reference {
                    None => None,
                    Some(needed) => {
                        if self.prev_seq != Some(needed) {
                            return Err(CodecError::MissingReference {
                                frame: sequence,
                                needed,
                                held: self.prev_seq,
                            });
                        }
                        if (self.prev.width, self.prev.height) != (width, height) {
                            return Err(CodecError::ReferenceDimensions {
                                needed,
                                width,
                                height,
                                ref_width: self.prev.width,
                                ref_height: self.prev.height,
                            });
                        }
                        Some(if self.prev_packed {
                            Reference::Packed {
                                packed: &self.prev_bits,
                                width: self.prev.width,
                                height: self.prev.height,
                            }
                        } else {
                            Reference::Lists(&self.prev)
                        })
                    }
                };
                // Lists of at most twice the packed frame's bytes in entries
                // (8x its memory): more only for masks with transitions almost
                // everywhere, which are then kept packed.
                let budget = match self.list_budget {
                    0 => out.len().saturating_mul(2),
                    b => b,
                };
                let lists = self
                    .bilevel
                    .decode(payload, width, height, prev, &mut self.cur, out, budget)
                    .map_err(|(o, r)| corrupt(o, r))?;
                if lists {
                    std::mem::swap(&mut self.cur, &mut self.prev);
                    self.prev_seq = Some(sequence);
                    self.prev_packed = false;
                    return Ok(());
                }
            }
            other => return Err(CodecError::UnknownCodec { codec: other }),
        }
        // Padding bits are 0 in the wire layout; a payload of a byte codec
        // can set them (the bilevel renderer never does): clear them, so the
        // mask written and the reference kept are the canonical ones.
        clear_padding(out, width);
        // A frame of another codec, or a bilevel frame past the list budget:
        // keep its packed rows (a delta frame finds a row's transitions when
        // it needs them).
        self.prev_bits.clear();
        self.prev_bits.extend_from_slice(out);
        self.prev.clear();
        self.prev.width = width;
        self.prev.height = height;
        self.prev_packed = true;
        self.prev_seq = Some(sequence);
        Ok(())
    }

    #[cfg(feature = "zstd")]
    fn decode_zstd(&mut self, payload: &[u8], out: &mut [u8]) -> Result<(), CodecError> {
        let expected = out.len();
        let backend = |detail: String| CodecError::Backend {
            codec: CODEC_ZSTD,
            detail: format!("{} B payload: {detail}", payload.len()),
            expected,
        };
        if self.zstd.is_none() {
            self.zstd = Some(zstd::bulk::Decompressor::new().map_err(|e| backend(e.to_string()))?);
        }
        // One zstd frame and nothing after it (the decompressor would also
        // take more frames, and skippable ones: data riding along unseen).
        match zstd::zstd_safe::find_frame_compressed_size(payload) {
            Ok(n) if n == payload.len() => {}
            Ok(n) => {
                return Err(backend(format!(
                    "{} B after its zstd frame of {n} B",
                    payload.len() - n
                )))
            }
            Err(code) => return Err(backend(zstd::zstd_safe::get_error_name(code).to_owned())),
        }
        let d = self.zstd.as_mut().expect("just set");
        match d.decompress_to_buffer(payload, out) {
            Ok(n) if n == expected => Ok(()),
            Ok(n) => Err(backend(format!("decoded {n} B"))),
            Err(e) => Err(backend(e.to_string())),
        }
    }

    #[cfg(not(feature = "zstd"))]
    fn decode_zstd(&mut self, _payload: &[u8], _out: &mut [u8]) -> Result<(), CodecError> {
        Err(CodecError::Unsupported {
            codec: CODEC_ZSTD,
            name: "zstd",
        })
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod long_lived_tests;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
