//! The bitmask frame format (protocol v1), specified byte by byte in
//! `PROTOCOL.md`, shipped in this crate's package (`docs/PROTOCOL.md` in
//! the bitmask repository).
//!
//! A stream is an optional [`Hello`] followed by frames. A frame is a fixed
//! 40-byte [`Header`] (little-endian) followed by `payload_len` payload bytes.
//! The header's last field is a CRC-32 (IEEE, as zlib's `crc32`) over the
//! first 36 header bytes and the payload.
//!
//! The crate does no I/O of its own: it encodes into byte slices and reads
//! from any [`std::io::Read`]. [`FrameReader`] treats its input as hostile:
//! every field is validated before anything is allocated, the payload buffer
//! never grows past [`Limits::max_payload`], and a clean end of stream is told
//! apart from a truncated frame.
//!
//! ```
//! use bitmask_wire::{encode_frame, FrameReader, Header, Limits, CODEC_RAW};
//!
//! let payload = [0b1010_0000u8, 0b0100_0000]; // a 3x2 mask, rows padded to a byte
//! let header = Header::new(3, 2, 7, CODEC_RAW, payload.len() as u32);
//! let mut stream = Vec::new();
//! encode_frame(&header, &payload, &mut stream);
//!
//! let mut reader = FrameReader::new(&stream[..], Limits::default());
//! let frame = reader.read_frame().unwrap().expect("one frame");
//! assert_eq!((frame.header.width, frame.header.sequence), (3, 7));
//! assert_eq!(frame.payload, payload);
//! assert!(reader.read_frame().unwrap().is_none()); // clean end of stream
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

use std::io::{self, Read};

pub mod udp;

/// The first four bytes of every frame.
pub const MAGIC: [u8; 4] = *b"BMSK";
/// The first four bytes of the optional stream handshake.
pub const HELLO_MAGIC: [u8; 4] = *b"BMHI";
/// The protocol version this crate speaks.
pub const VERSION: u8 = 1;
/// Bytes in a frame header.
pub const HEADER_LEN: usize = 40;
/// Longest sender name in a [`Hello`], in bytes of UTF-8.
pub const MAX_NAME_LEN: usize = 255;

/// Codec id 0: the payload is the packed mask itself, `ceil(width/8) * height` bytes.
pub const CODEC_RAW: u8 = 0;

/// Header flag bit 0: the payload is coded relative to an earlier frame of
/// the same stream (which one is named inside the codec's payload). Frames
/// without it decode on their own (key frames).
pub const FLAG_DELTA: u8 = 0b0000_0001;
/// All flag bits defined in v1; any other bit set is rejected.
pub const KNOWN_FLAGS: u8 = FLAG_DELTA;

/// Errors of the wire format. Each carries the offending values.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The underlying reader failed (timeouts included). Its message is
    /// part of this one (not also given as the source, which would print
    /// it twice in an error chain).
    #[error("read failed: {0}")]
    Io(io::Error),
    /// The stream ended inside a frame.
    #[error(
        "stream ended inside {}: got {got} of {expected} bytes",
        if *.part == "hello" { "the hello" } else if *.part == "header" { "a frame's header" } else { "a frame's payload" }
    )]
    Truncated {
        /// `"header"`, `"payload"` or `"hello"`.
        part: &'static str,
        /// Bytes that were needed.
        expected: usize,
        /// Bytes that arrived.
        got: usize,
    },
    /// The frame does not start with `BMSK`.
    #[error(
        "bad magic {found:02x?} = {:?} (expected \"BMSK\"{})",
        String::from_utf8_lossy(.found),
        magic_hint(.found)
    )]
    BadMagic {
        /// The four bytes found.
        found: [u8; 4],
    },
    /// A version this crate does not speak.
    #[error("unsupported protocol version {found} in a {what} (this build speaks {VERSION})")]
    UnsupportedVersion {
        /// `"frame"`, `"hello"` or `"acknowledgement"`.
        what: &'static str,
        /// The version byte found.
        found: u8,
    },
    /// Flag bits that v1 does not define.
    #[error("unknown flag bits {flags:#04x}")]
    UnknownFlags {
        /// The flags byte found.
        flags: u8,
    },
    /// Zero dimensions, or larger than the reader's limits.
    #[error("invalid dimensions {width}x{height} (limit {max_width}x{max_height})")]
    InvalidDimensions {
        /// Width in the header.
        width: u32,
        /// Height in the header.
        height: u32,
        /// The reader's width limit.
        max_width: u32,
        /// The reader's height limit.
        max_height: u32,
    },
    /// The payload length does not fit the dimensions and codec.
    #[error(
        "payload length {len} B does not fit a {width}x{height} frame with codec {codec}: {rule}"
    )]
    PayloadLength {
        /// Length in the header.
        len: u32,
        /// Width in the header.
        width: u32,
        /// Height in the header.
        height: u32,
        /// Codec id in the header.
        codec: u8,
        /// What was expected, in words.
        rule: String,
    },
    /// The CRC over header and payload does not match.
    #[error(
        "CRC mismatch on frame {sequence}: header says {stored:#010x}, data gives {computed:#010x}"
    )]
    CrcMismatch {
        /// Sequence number in the (possibly damaged) header.
        sequence: u64,
        /// CRC in the header.
        stored: u32,
        /// CRC computed.
        computed: u32,
    },
    /// A malformed stream handshake.
    #[error("bad hello: {0}")]
    BadHello(HelloError),
    /// An acknowledgement (see [`Ack`]) that does not start with `BMAK`.
    #[error(
        "bad acknowledgement: bad magic {found:02x?} = {:?} (expected \"BMAK\"{})",
        String::from_utf8_lossy(.found),
        ack_hint(.found)
    )]
    BadAck {
        /// The four bytes found.
        found: [u8; 4],
    },
    /// A malformed UDP datagram (see [`udp`]).
    #[error("{0}")]
    BadDatagram(udp::DatagramError),
    /// A UDP datagram of a kind this version does not know (a later
    /// version's, perhaps: a receiver may ignore it quietly).
    #[error("unknown datagram kind {kind}")]
    UnknownDatagramKind {
        /// Its kind byte.
        kind: u8,
    },
    /// A UDP datagram of a frame longer than the reader's [`Limits`] allow.
    #[error("frame length {frame_len} B is over this receiver's cap of {cap} B")]
    DatagramOverCap {
        /// The frame's length in the datagram.
        frame_len: u32,
        /// The longest frame the limits allow (header and payload).
        cap: u64,
    },
    /// A [`FrameReader`] was asked for a frame after an error that left
    /// its stream out of step (all but [`WireError::Io`] and
    /// [`WireError::CrcMismatch`]): no frame can be found in it any more.
    #[error("the stream is out of step since an earlier error: {first}")]
    OutOfStep {
        /// That error, as text.
        first: String,
    },
}

/// What is wrong with a hello ([`WireError::BadHello`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HelloError {
    /// The name's length is 0 or over [`MAX_NAME_LEN`] bytes.
    #[error("name length {len} is not 1..={MAX_NAME_LEN}")]
    NameLength {
        /// Its length in bytes.
        len: usize,
    },
    /// The name is `.`, `..`, or holds `/`, `\\` or a control character:
    /// not usable as a directory name.
    #[error("name {name:?} is not usable as a directory name")]
    NameNotUsable {
        /// The name.
        name: String,
    },
    /// The name's bytes are not UTF-8.
    #[error("name is not UTF-8: {error}")]
    NotUtf8 {
        /// Where and why.
        error: std::str::Utf8Error,
    },
}

impl From<io::Error> for WireError {
    fn from(e: io::Error) -> Self {
        WireError::Io(e)
    }
}

impl WireError {
    /// True when the whole frame was consumed, so a reader may go on to the
    /// next frame (only a CRC mismatch). The stream is then still in step
    /// unless the damage was in the header's payload length (the CRC cannot
    /// tell): then the next read fails too, most likely with
    /// [`WireError::BadMagic`], or (a length damaged upwards) this one waited
    /// for bytes of the next frames, and the stream is lost from there.
    pub fn is_recoverable(&self) -> bool {
        matches!(self, WireError::CrcMismatch { .. })
    }
}

/// A frame header. The CRC is not stored here: it is computed on encode and
/// checked on decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Flag bits ([`FLAG_DELTA`]).
    pub flags: u8,
    /// Codec id ([`CODEC_RAW`] or a codec's own id).
    pub codec: u8,
    /// Mask width in pixels, >= 1.
    pub width: u32,
    /// Mask height in pixels, >= 1.
    pub height: u32,
    /// Frame number in the stream, from 0; gaps mean frames were lost or dropped.
    pub sequence: u64,
    /// Capture time, microseconds since the Unix epoch (0 if unknown).
    pub timestamp_us: u64,
    /// Bytes of payload that follow the header.
    pub payload_len: u32,
}

impl Header {
    /// A header with no flags and a zero timestamp.
    pub fn new(width: u32, height: u32, sequence: u64, codec: u8, payload_len: u32) -> Self {
        Header {
            flags: 0,
            codec,
            width,
            height,
            sequence,
            timestamp_us: 0,
            payload_len,
        }
    }

    /// Bytes of the packed (raw) mask: `ceil(width/8) * height`.
    pub fn raw_len(&self) -> u64 {
        (self.width as u64).div_ceil(8) * self.height as u64
    }

    /// The 36 bytes before the CRC.
    fn encode_fields(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&MAGIC);
        b[4] = VERSION;
        b[5] = self.flags;
        b[6] = self.codec;
        b[7] = 0; // reserved
        b[8..12].copy_from_slice(&self.width.to_le_bytes());
        b[12..16].copy_from_slice(&self.height.to_le_bytes());
        b[16..24].copy_from_slice(&self.sequence.to_le_bytes());
        b[24..32].copy_from_slice(&self.timestamp_us.to_le_bytes());
        b[32..36].copy_from_slice(&self.payload_len.to_le_bytes());
        b
    }

    /// Encodes the header for `payload`, CRC included.
    ///
    /// # Panics
    /// If `payload.len()` differs from `payload_len` (a caller bug, not bad input).
    pub fn encode(&self, payload: &[u8]) -> [u8; HEADER_LEN] {
        assert_eq!(
            payload.len(),
            self.payload_len as usize,
            "payload_len must match the payload"
        );
        let mut b = self.encode_fields();
        let crc = crc(&b[..36], payload);
        b[36..40].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Parses and validates the 40 header bytes against `limits`. The CRC
    /// cannot be checked until the payload is read; it is returned as well.
    pub fn decode(b: &[u8; HEADER_LEN], limits: &Limits) -> Result<(Header, u32), WireError> {
        let magic: [u8; 4] = b[0..4].try_into().unwrap();
        if magic != MAGIC {
            return Err(WireError::BadMagic { found: magic });
        }
        if b[4] != VERSION {
            return Err(WireError::UnsupportedVersion {
                what: "frame",
                found: b[4],
            });
        }
        if b[5] & !KNOWN_FLAGS != 0 {
            return Err(WireError::UnknownFlags { flags: b[5] });
        }
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
        let h = Header {
            flags: b[5],
            codec: b[6],
            width: u32_at(8),
            height: u32_at(12),
            sequence: u64_at(16),
            timestamp_us: u64_at(24),
            payload_len: u32_at(32),
        };
        limits.check(&h)?;
        Ok((h, u32_at(36)))
    }
}

/// CRC-32 (IEEE) over the header's first 36 bytes then the payload.
pub fn crc(header36: &[u8], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(header36);
    hasher.update(payload);
    hasher.finalize()
}

/// Appends a whole frame (header, then payload) to `out`.
///
/// The header is written as it is: a writer that wants frames every
/// reader accepts checks them with [`Limits::check`] first.
///
/// # Panics
/// If `payload.len()` differs from `header.payload_len` (see
/// [`Header::encode`]; [`finish_frame_in_place`] sets it for you).
pub fn encode_frame(header: &Header, payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&header.encode(payload));
    out.extend_from_slice(payload);
}

/// Writes a whole frame (header, then payload) to `w`, as [`encode_frame`]
/// does to a vector, in two writes; a payload whose length is not
/// `header.payload_len` is an [`std::io::ErrorKind::InvalidInput`] error
/// (nothing written), not a panic.
///
/// ```
/// use bitmask_wire::{write_frame, FrameReader, Header, Limits, CODEC_RAW};
///
/// let mut stream = Vec::new();
/// write_frame(&mut stream, &Header::new(16, 1, 0, CODEC_RAW, 2), &[0xf0, 0x0f]).unwrap();
/// let mut r = FrameReader::new(&stream[..], Limits::default());
/// assert_eq!(r.read_frame().unwrap().unwrap().payload, [0xf0, 0x0f]);
/// assert!(r.read_frame().unwrap().is_none()); // a clean end
/// ```
pub fn write_frame<W: std::io::Write>(
    w: &mut W,
    header: &Header,
    payload: &[u8],
) -> std::io::Result<()> {
    if payload.len() != header.payload_len as usize {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "frame {}: payload_len {} but a {}-byte payload",
                header.sequence,
                header.payload_len,
                payload.len()
            ),
        ));
    }
    w.write_all(&header.encode(payload))?;
    w.write_all(payload)
}

/// Writes the header into `buf[..HEADER_LEN]` for the payload already in
/// `buf[HEADER_LEN..]`, so a sender can encode straight into one buffer and
/// send it with a single write. Sets `header.payload_len` from the buffer.
///
/// # Panics
/// If `buf` is shorter than [`HEADER_LEN`] or the payload is over 4 GiB.
pub fn finish_frame_in_place(header: &mut Header, buf: &mut [u8]) {
    assert!(
        buf.len() >= HEADER_LEN,
        "finish_frame_in_place: a {} B buffer has no room for the {HEADER_LEN} B header",
        buf.len()
    );
    let (head, payload) = buf.split_at_mut(HEADER_LEN);
    header.payload_len = u32::try_from(payload.len()).expect("payload over 4 GiB");
    head.copy_from_slice(&header.encode(payload));
}

/// What a reader accepts. Nothing larger is ever allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest width accepted.
    pub max_width: u32,
    /// Largest height accepted.
    pub max_height: u32,
    /// Largest payload accepted, in bytes.
    pub max_payload: u32,
}

impl Default for Limits {
    /// 4096x4096: a 2 MiB raw payload.
    fn default() -> Self {
        Limits::for_dimensions(4096, 4096)
    }
}

impl Limits {
    /// Limits that admit frames up to `max_width` x `max_height`.
    pub fn for_dimensions(max_width: u32, max_height: u32) -> Self {
        let raw = (max_width as u64).div_ceil(8) * max_height as u64;
        Limits {
            max_width,
            max_height,
            max_payload: raw.min(u32::MAX as u64) as u32,
        }
    }

    /// Checks a header's dimensions and payload length.
    ///
    /// Rule for the payload length: with [`CODEC_RAW`] it is exactly
    /// `ceil(width/8) * height`; with any other codec it is from 1 to that
    /// many bytes (a sender sends raw whenever compression does not pay).
    pub fn check(&self, h: &Header) -> Result<(), WireError> {
        if h.width == 0 || h.height == 0 || h.width > self.max_width || h.height > self.max_height {
            return Err(WireError::InvalidDimensions {
                width: h.width,
                height: h.height,
                max_width: self.max_width,
                max_height: self.max_height,
            });
        }
        let raw = h.raw_len();
        let bad = |rule: String| WireError::PayloadLength {
            len: h.payload_len,
            width: h.width,
            height: h.height,
            codec: h.codec,
            rule,
        };
        let len = h.payload_len as u64;
        if h.codec == CODEC_RAW {
            if len != raw {
                return Err(bad(format!("raw needs exactly {raw} B")));
            }
        } else if len == 0 || len > raw {
            return Err(bad(format!("a compressed payload is 1..={raw} B")));
        }
        if h.payload_len > self.max_payload {
            return Err(bad(format!(
                "over this reader's cap of {} B",
                self.max_payload
            )));
        }
        Ok(())
    }
}

/// Hello flag bit 0: the sender reads [`Ack`]s on this connection, and the
/// receiver should send them (PROTOCOL.md section 6). A receiver that does
/// not know the bit ignores it and sends nothing.
pub const HELLO_ACKS: u8 = 0b0000_0001;
/// Hello flag bit 1 (with [`HELLO_ACKS`]): this connection continues an
/// earlier connection of the same sender process, whose frames from the
/// first unacknowledged one on are sent again. A receiver that has already
/// handled some of them under this name skips them (decoded, not written).
/// Without it the receiver forgets what it handled of this name.
pub const HELLO_RESUME: u8 = 0b0000_0010;
/// Hello flag bit 2: the sender drops no frame (a batch, or `--no-drop`):
/// a receiver that passes late frames over to keep up (over UDP, frames
/// whose datagrams waited too long in its socket) writes every frame of
/// this stream instead, however late. A receiver that does not know the
/// bit ignores it.
pub const HELLO_NO_DROP: u8 = 0b0000_0100;

/// The optional first message of a stream: who is sending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Private: only a validated name can be encoded ([`Hello::new`]).
    name: String,
    /// Flag bits ([`HELLO_ACKS`], [`HELLO_RESUME`]); a reader keeps bits it
    /// does not know and ignores them.
    pub flags: u8,
}

impl Hello {
    /// A hello for `name`, validated, with no flags.
    pub fn new(name: &str) -> Result<Self, WireError> {
        validate_name(name)?;
        Ok(Hello {
            name: name.to_owned(),
            flags: 0,
        })
    }

    /// The sender's name (UTF-8, 1..=255 bytes, no `/`, `\`, NUL or control
    /// characters, not `.` or `..`, so it is safe as a directory name on
    /// Linux and other Unix systems; Windows refuses more, e.g. `CON`,
    /// `a:b`, `a*b` or a trailing `.`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The same hello with `flags` set.
    pub fn with_flags(mut self, flags: u8) -> Self {
        self.flags = flags;
        self
    }

    /// Whether the sender asks for [`Ack`]s.
    pub fn wants_acks(&self) -> bool {
        self.flags & HELLO_ACKS != 0
    }

    /// Whether the connection resumes an earlier one ([`HELLO_RESUME`], with
    /// [`HELLO_ACKS`]).
    pub fn resumes(&self) -> bool {
        self.wants_acks() && self.flags & HELLO_RESUME != 0
    }

    /// Whether the sender drops no frame ([`HELLO_NO_DROP`]).
    pub fn no_drop(&self) -> bool {
        self.flags & HELLO_NO_DROP != 0
    }

    /// `BMHI`, version, flags, name length (u16 LE), name.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(8 + self.name.len());
        v.extend_from_slice(&HELLO_MAGIC);
        v.push(VERSION);
        v.push(self.flags);
        v.extend_from_slice(&(self.name.len() as u16).to_le_bytes());
        v.extend_from_slice(self.name.as_bytes());
        v
    }
}

/// The first four bytes of an acknowledgement.
pub const ACK_MAGIC: [u8; 4] = *b"BMAK";
/// Bytes in an [`Ack`].
pub const ACK_LEN: usize = 16;

/// An acknowledgement, the only message from receiver to sender, sent only
/// on a connection whose [`Hello`] asked for it ([`HELLO_ACKS`]): every frame
/// of the sender with a sequence number below `next` that the receiver will
/// get has been handled (written out, or counted as damaged or unwritable).
///
/// ```
/// use bitmask_wire::{Ack, AckReader};
///
/// let bytes = Ack::new(42).encode();
/// let mut r = AckReader::default();
/// assert_eq!(r.push(&bytes[..5]).unwrap(), None); // acks may arrive in pieces
/// assert_eq!(r.push(&bytes[5..]).unwrap(), Some(Ack::new(42)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    /// One past the last frame handled.
    pub next: u64,
    /// The receiver's record of handled frames that this connection
    /// follows (PROTOCOL.md section 6): an id, 1..=[`MAX_RECORD_ID`]; 0 when
    /// the receiver does not say (an older one). The same in every
    /// acknowledgement of a connection.
    pub record: u32,
    /// This connection started that record (a hello without
    /// `HELLO_RESUME`, or one the receiver held no record for); else it
    /// joined a record that existed.
    pub new_record: bool,
}

/// The largest record id an [`Ack`] carries (23 bits).
pub const MAX_RECORD_ID: u32 = (1 << 23) - 1;

impl Ack {
    /// An acknowledgement of every frame below `next`, naming no record.
    pub fn new(next: u64) -> Self {
        Ack {
            next,
            record: 0,
            new_record: false,
        }
    }

    /// `BMAK`, version, the record (u24 LE: id in bits 0..=22, bit 23
    /// set when the connection started it), `next` (u64 LE). An id over
    /// [`MAX_RECORD_ID`] is cut to its low 23 bits.
    pub fn encode(&self) -> [u8; ACK_LEN] {
        let mut b = [0u8; ACK_LEN];
        b[..4].copy_from_slice(&ACK_MAGIC);
        b[4] = VERSION;
        let r = (self.record & MAX_RECORD_ID) | if self.new_record { 1 << 23 } else { 0 };
        b[5..8].copy_from_slice(&r.to_le_bytes()[..3]);
        b[8..].copy_from_slice(&self.next.to_le_bytes());
        b
    }

    /// Parses one acknowledgement.
    pub fn decode(b: &[u8; ACK_LEN]) -> Result<Ack, WireError> {
        if b[..4] != ACK_MAGIC {
            return Err(WireError::BadAck {
                found: [b[0], b[1], b[2], b[3]],
            });
        }
        if b[4] != VERSION {
            return Err(WireError::UnsupportedVersion {
                what: "acknowledgement",
                found: b[4],
            });
        }
        let mut n = [0u8; 8];
        n.copy_from_slice(&b[8..]);
        let r = u32::from_le_bytes([b[5], b[6], b[7], 0]);
        Ok(Ack {
            next: u64::from_le_bytes(n),
            record: r & MAX_RECORD_ID,
            new_record: r & (1 << 23) != 0,
        })
    }
}

/// Parses acknowledgements from bytes that arrive in pieces of any size (a
/// sender reads whatever its socket holds without blocking).
#[derive(Debug, Default, Clone)]
pub struct AckReader {
    buf: [u8; ACK_LEN],
    len: usize,
}

impl AckReader {
    /// Takes the next bytes of the stream; returns the newest complete
    /// acknowledgement among them, if any. An error (not an acknowledgement)
    /// means the peer speaks something else: the connection should be closed.
    pub fn push(&mut self, mut bytes: &[u8]) -> Result<Option<Ack>, WireError> {
        let mut newest = None;
        while !bytes.is_empty() {
            let n = (ACK_LEN - self.len).min(bytes.len());
            self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
            self.len += n;
            bytes = &bytes[n..];
            if self.len == ACK_LEN {
                self.len = 0;
                newest = Some(Ack::decode(&self.buf)?);
            }
        }
        Ok(newest)
    }

    /// Bytes of an unfinished acknowledgement held (a stream that ends with
    /// some is truncated).
    pub fn pending(&self) -> usize {
        self.len
    }
}

/// `name` followed by `suffix`, `name` shortened (at a character boundary)
/// so that the whole stays within [`MAX_NAME_LEN`] bytes: a name derived
/// from a sender's, such as a receiver's `cam@10.0.0.2` for a second host
/// announcing `cam`.
///
/// ```
/// assert_eq!(bitmask_wire::name_with_suffix("cam", "@10.0.0.2"), "cam@10.0.0.2");
/// let long = "é".repeat(127); // 254 bytes
/// let named = bitmask_wire::name_with_suffix(&long, "-2");
/// assert_eq!(named.len(), 254); // 126 characters kept, then "-2"
/// // a suffix too long alone is cut too
/// assert_eq!(bitmask_wire::name_with_suffix("cam", &"x".repeat(300)).len(), 255);
/// ```
pub fn name_with_suffix(name: &str, suffix: &str) -> String {
    let mut end = MAX_NAME_LEN.saturating_sub(suffix.len()).min(name.len());
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    let mut named = format!("{}{suffix}", &name[..end]);
    // (a suffix that is too long alone is cut too)
    let mut cut = named.len().min(MAX_NAME_LEN);
    while !named.is_char_boundary(cut) {
        cut -= 1;
    }
    named.truncate(cut);
    named
}

fn validate_name(name: &str) -> Result<(), WireError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(WireError::BadHello(HelloError::NameLength {
            len: name.len(),
        }));
    }
    if name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == '\\' || c.is_control())
    {
        return Err(WireError::BadHello(HelloError::NameNotUsable {
            name: name.to_owned(),
        }));
    }
    Ok(())
}

/// Reads the frame at the start of `bytes` (a frame reassembled from
/// datagrams, say: no [`FrameReader`], no copy): its header checked against
/// `limits`, its CRC checked, its payload borrowed from `bytes`. Bytes
/// after the frame are not looked at (compare `HEADER_LEN +
/// payload.len()` with `bytes.len()` to refuse them). Errors are those of
/// [`FrameReader::read_frame`] on the same bytes: [`WireError::Truncated`]
/// when `bytes` ends inside the frame.
pub fn parse_frame<'a>(bytes: &'a [u8], limits: &Limits) -> Result<FrameRef<'a>, WireError> {
    let truncated = |part, expected, got| WireError::Truncated {
        part,
        expected,
        got,
    };
    if bytes.len() >= 4 && bytes[..4] != MAGIC {
        return Err(WireError::BadMagic {
            found: bytes[..4].try_into().expect("4 bytes"),
        });
    }
    let head: &[u8; HEADER_LEN] = bytes
        .get(..HEADER_LEN)
        .and_then(|h| h.try_into().ok())
        .ok_or_else(|| truncated("header", HEADER_LEN, bytes.len()))?;
    let (header, stored) = Header::decode(head, limits)?;
    let len = header.payload_len as usize;
    let payload = bytes[HEADER_LEN..]
        .get(..len)
        .ok_or_else(|| truncated("payload", len, bytes.len() - HEADER_LEN))?;
    check_crc(head, &header, stored, payload)?;
    Ok(FrameRef { header, payload })
}

/// Checks a frame's `stored` CRC against its header bytes `head` and
/// `payload` ([`parse_frame`] and [`FrameReader`]).
fn check_crc(
    head: &[u8; HEADER_LEN],
    header: &Header,
    stored: u32,
    payload: &[u8],
) -> Result<(), WireError> {
    let computed = crc(&head[..36], payload);
    if computed != stored {
        return Err(WireError::CrcMismatch {
            sequence: header.sequence,
            stored,
            computed,
        });
    }
    Ok(())
}

/// A frame borrowed from a [`FrameReader`]'s buffer (or from the bytes
/// given to [`parse_frame`]).
#[derive(Debug, Clone, Copy)]
pub struct FrameRef<'a> {
    /// The validated header.
    pub header: Header,
    /// The payload, its CRC checked.
    pub payload: &'a [u8],
}

/// Where a [`FrameReader`] stopped inside a frame, after a
/// [`WireError::Io`] (a read timeout, say): what a message about a stalled
/// stream names. Its `Display` reads "inside frame 7's payload: got 5000 of
/// 60000 bytes".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partial {
    /// The frame's sequence number, once its header is in.
    pub sequence: Option<u64>,
    /// `"header"` or `"payload"`.
    pub part: &'static str,
    /// Bytes of that part read so far.
    pub got: usize,
    /// Bytes of that part in all.
    pub expected: usize,
}

impl std::fmt::Display for Partial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.sequence {
            Some(s) => write!(f, "inside frame {s}'s {}", self.part)?,
            None => write!(f, "inside a frame's {}", self.part)?,
        }
        write!(f, ": got {} of {} bytes", self.got, self.expected)
    }
}

/// Reads whole frames from a byte stream, reusing one buffer. The buffer
/// grows as a payload comes (at most doubling, from 64 KiB), so a header
/// that claims a large payload costs what was sent, not what it claims;
/// never past [`Limits`]'s `max_payload`.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    limits: Limits,
    buf: Vec<u8>,
    /// Bytes already read of the next header (after a hello probe).
    pending: [u8; 4],
    pending_len: usize,
    /// The part of a hello after its magic read so far (kept across a
    /// read that failed, so that asking again goes on).
    hello: Vec<u8>,
    /// Something was read (the hello is no longer where the stream is).
    started: bool,
    /// The frame being read, kept across a read that failed
    /// ([`WireError::Io`]) so that asking again goes on: its header bytes,
    /// and once they are all in, the header and the payload bytes read.
    head: [u8; HEADER_LEN],
    head_len: usize,
    frame: Option<(Header, u32)>,
    payload_got: usize,
    /// The error that put the stream out of step, if one did.
    broken: Option<String>,
}

impl<R: Read> FrameReader<R> {
    /// A reader of `inner` that accepts frames within `limits`.
    pub fn new(inner: R, limits: Limits) -> Self {
        FrameReader {
            inner,
            limits,
            buf: Vec::new(),
            pending: [0; 4],
            pending_len: 0,
            hello: Vec::new(),
            started: false,
            head: [0; HEADER_LEN],
            head_len: 0,
            frame: None,
            payload_got: 0,
            broken: None,
        }
    }

    /// The reader's limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The underlying reader.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// The underlying reader, mutably (to set a timeout, say: a read that
    /// times out is [`WireError::Io`], and the next call goes on where it
    /// stopped). Bytes read from it directly are not frames to this reader
    /// any more.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// The underlying reader. What this reader read of a frame and has not
    /// returned yet (the up to 4 bytes [`read_hello`](Self::read_hello) reads
    /// ahead, a frame cut short by a failed read) is lost with it.
    pub fn into_inner(self) -> R {
        self.inner
    }

    /// Reads the stream's optional [`Hello`]. Call once, before the first
    /// frame: returns `Ok(None)` when the stream starts straight with a frame
    /// (whose bytes are kept for [`read_frame`](Self::read_frame)) or is empty.
    /// Called again, or after a frame, it reads nothing and returns
    /// `Ok(None)` (a hello only comes first). After a read that failed
    /// ([`WireError::Io`], a socket timeout say) ask again: it goes on where
    /// it stopped, nothing read is lost. After a hello that was read whole
    /// but is wrong (its name) frames follow; after one whose end is unknown
    /// (cut short, another version, a bad name length)
    /// [`read_frame`](Self::read_frame) returns [`WireError::OutOfStep`].
    pub fn read_hello(&mut self) -> Result<Option<Hello>, WireError> {
        if self.started {
            return Ok(None);
        }
        // The first 4 bytes go to `pending`, the rest of a hello to
        // `hello`: a read that fails (a timeout, say) keeps what it got,
        // and asked again the reader goes on there.
        while self.pending_len < 4 {
            match self.inner.read(&mut self.pending[self.pending_len..]) {
                Ok(0) => break,
                Ok(k) => self.pending_len += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        if self.pending_len < 4 || self.pending != HELLO_MAGIC {
            // (the stream's first bytes: a frame's, kept for read_frame)
            self.started = true;
            return Ok(None);
        }
        let r = match self.read_hello_rest() {
            // asked again, it goes on
            Err(WireError::Io(e)) => return Err(WireError::Io(e)),
            // A hello whose end is unknown (cut short, of another version,
            // with a bad name length): no frame can be found after it.
            Err(e) => {
                self.broken = Some(e.to_string());
                Err(e)
            }
            // read whole (only its name may be wrong): the stream is in step
            Ok(named) => named,
        };
        // done with the hello, or it is wrong: the stream goes on after it
        self.started = true;
        self.pending_len = 0;
        self.hello = Vec::new();
        r.map(Some)
    }

    /// The hello after its magic ([`read_hello`](Self::read_hello)): an
    /// error where its end is not known, else the hello read whole, or why
    /// its name is refused.
    fn read_hello_rest(&mut self) -> Result<Result<Hello, WireError>, WireError> {
        if !fill(&mut self.inner, &mut self.hello, 4)? {
            return Err(WireError::Truncated {
                part: "hello",
                expected: 8,
                got: 4 + self.hello.len(),
            });
        }
        let rest = [self.hello[0], self.hello[1], self.hello[2], self.hello[3]];
        if rest[0] != VERSION {
            return Err(WireError::UnsupportedVersion {
                what: "hello",
                found: rest[0],
            });
        }
        let n = u16::from_le_bytes([rest[2], rest[3]]) as usize;
        if n == 0 || n > MAX_NAME_LEN {
            return Err(WireError::BadHello(HelloError::NameLength { len: n }));
        }
        if !fill(&mut self.inner, &mut self.hello, 4 + n)? {
            return Err(WireError::Truncated {
                part: "hello",
                expected: 8 + n,
                got: 4 + self.hello.len(),
            });
        }
        let name = match std::str::from_utf8(&self.hello[4..4 + n]) {
            Ok(name) => name,
            Err(error) => return Ok(Err(WireError::BadHello(HelloError::NotUtf8 { error }))),
        };
        Ok(validate_name(name).map(|()| Hello {
            name: name.to_owned(),
            flags: rest[1],
        }))
    }

    /// Where the reader is inside a frame: `None` between frames (and
    /// before the first). After a [`WireError::Io`] this says how much of
    /// the frame had come, which the error itself cannot.
    pub fn partial(&self) -> Option<Partial> {
        match self.frame {
            Some((h, _)) => Some(Partial {
                sequence: Some(h.sequence),
                part: "payload",
                got: self.payload_got,
                expected: h.payload_len as usize,
            }),
            None if self.head_len + self.pending_len > 0 => Some(Partial {
                sequence: None,
                part: "header",
                got: self.head_len + self.pending_len,
                expected: HEADER_LEN,
            }),
            None => None,
        }
    }

    /// Reads the next frame. `Ok(None)` is a clean end of stream (it ended
    /// exactly between frames); a stream that ends inside a frame is
    /// [`WireError::Truncated`].
    ///
    /// After [`WireError::Io`] (a socket timeout, say) ask again: the reader
    /// goes on where it stopped, nothing read is lost. After a
    /// [`recoverable`](WireError::is_recoverable) error (a CRC mismatch) the
    /// next call reads the next frame. Any other error leaves the stream out
    /// of step, and every later call returns [`WireError::OutOfStep`].
    pub fn read_frame(&mut self) -> Result<Option<FrameRef<'_>>, WireError> {
        if let Some(first) = &self.broken {
            return Err(WireError::OutOfStep {
                first: first.clone(),
            });
        }
        match self.next_frame() {
            Ok(Some(header)) => Ok(Some(FrameRef {
                header,
                payload: &self.buf[..header.payload_len as usize],
            })),
            Ok(None) => Ok(None),
            Err(e) => {
                // (after Io the frame read so far is kept; a CRC mismatch
                // was a whole frame, and the next one follows)
                if !matches!(e, WireError::Io(_)) && !e.is_recoverable() {
                    self.broken = Some(e.to_string());
                }
                Err(e)
            }
        }
    }

    /// Reads the next frame's header, checked against the limits, and not
    /// its payload: a caller can then reserve memory for the frame (or
    /// refuse it) before [`read_frame`](Self::read_frame) reads the
    /// payload into a buffer of `payload_len` bytes. `Ok(None)` is a clean
    /// end of stream. Asked again before `read_frame`, it returns the same
    /// header; `read_frame` then returns that frame.
    ///
    /// Errors are [`read_frame`](Self::read_frame)'s: after
    /// [`WireError::Io`] ask again; anything else leaves the stream out of
    /// step.
    pub fn read_header(&mut self) -> Result<Option<Header>, WireError> {
        if let Some(first) = &self.broken {
            return Err(WireError::OutOfStep {
                first: first.clone(),
            });
        }
        match self.next_header() {
            Ok(h) => Ok(h.map(|(h, _)| h)),
            Err(e) => {
                if !matches!(e, WireError::Io(_)) {
                    self.broken = Some(e.to_string());
                }
                Err(e)
            }
        }
    }

    /// [`read_frame`](Self::read_frame)'s work: the next frame's header, its
    /// payload in `buf`; on [`WireError::Io`] what was read stays in `self`.
    fn next_frame(&mut self) -> Result<Option<Header>, WireError> {
        let Some((header, stored)) = self.next_header()? else {
            return Ok(None);
        };
        let len = header.payload_len as usize; // <= limits.max_payload, checked
        while self.payload_got < len {
            if self.buf.len() <= self.payload_got {
                // Grown as the payload comes, at most doubling: a peer's
                // header alone (or a payload that stops short) makes the
                // reader hold about twice what came, not what it claims.
                let grown = (self.buf.len() * 2).max(GROW_FROM).min(len);
                // (exactly: resize alone may round the capacity up past
                // max_payload)
                self.buf.reserve_exact(grown - self.buf.len());
                self.buf.resize(grown, 0);
            }
            let end = self.buf.len().min(len);
            match self.inner.read(&mut self.buf[self.payload_got..end]) {
                Ok(0) => {
                    return Err(WireError::Truncated {
                        part: "payload",
                        expected: len,
                        got: self.payload_got,
                    })
                }
                Ok(k) => self.payload_got += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        // the whole frame is in: the next call reads the next one
        self.frame = None;
        self.head_len = 0;
        check_crc(&self.head, &header, stored, &self.buf[..len])?;
        Ok(Some(header))
    }

    /// The header of the frame being read (read now if it is not in yet,
    /// `None` at a clean end of stream) and its stored CRC; on
    /// [`WireError::Io`] what was read stays in `self`.
    fn next_header(&mut self) -> Result<Option<(Header, u32)>, WireError> {
        self.started = true;
        if self.frame.is_none() {
            if self.pending_len > 0 {
                // the stream's first bytes, read by read_hello
                let p = self.pending_len;
                self.head[..p].copy_from_slice(&self.pending[..p]);
                self.head_len = p;
                self.pending_len = 0;
            }
            while self.head_len < HEADER_LEN {
                // A bad magic is reported as soon as its 4 bytes are in.
                if self.head_len >= 4 && self.head[..4] != MAGIC {
                    break;
                }
                match self.inner.read(&mut self.head[self.head_len..]) {
                    Ok(0) => break,
                    Ok(k) => self.head_len += k,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e.into()),
                }
            }
            let got = self.head_len;
            if got == 0 {
                return Ok(None);
            }
            if got >= 4 && self.head[..4] != MAGIC {
                return Err(WireError::BadMagic {
                    found: self.head[..4].try_into().unwrap(),
                });
            }
            if got < HEADER_LEN {
                return Err(WireError::Truncated {
                    part: "header",
                    expected: HEADER_LEN,
                    got,
                });
            }
            let (header, stored) = Header::decode(&self.head, &self.limits)?;
            self.frame = Some((header, stored));
            self.payload_got = 0;
        }
        Ok(self.frame)
    }
}

/// A [`FrameReader`]'s first payload buffer, at most (it then doubles as
/// the payload comes, up to the payload's length).
const GROW_FROM: usize = 64 << 10;

/// Appends to `v` until it holds `want` bytes (`true`) or the stream ends
/// (`false`). What was read stays in `v` when a read fails.
fn fill<R: Read>(r: &mut R, v: &mut Vec<u8>, want: usize) -> io::Result<bool> {
    let mut chunk = [0u8; 64];
    while v.len() < want {
        let k = (want - v.len()).min(chunk.len());
        match r.read(&mut chunk[..k]) {
            Ok(0) => return Ok(false),
            Ok(k) => v.extend_from_slice(&chunk[..k]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests;

/// What [`WireError::BadMagic`] adds when the bytes are another message's.
fn magic_hint(found: &[u8; 4]) -> &'static str {
    if *found == HELLO_MAGIC {
        ": these are a hello's, which a sender sends first: read it with \
         FrameReader::read_hello before the frames"
    } else if [b"GET ", b"HEAD", b"POST", b"PUT ", b"OPTI"].contains(&found) {
        ": an HTTP request: a browser, or a client given this port instead of \
         bitmask-recv's --http port"
    } else {
        ""
    }
}

/// What a bad acknowledgement's magic says of the peer.
fn ack_hint(found: &[u8; 4]) -> &'static str {
    if found == b"HTTP" {
        ": that port answers HTTP, not a bitmask receiver: a web server, or \
         bitmask-recv's --http port instead of its --listen port"
    } else {
        ""
    }
}

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
