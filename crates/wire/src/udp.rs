//! Datagrams of the UDP transport (docs/PROTOCOL.md, "UDP transport"): a
//! wire frame split into fragments that fit the path MTU, each behind a
//! 28-byte little-endian datagram header, plus the sender's hello.

use crate::{Limits, WireError, HEADER_LEN};

/// First bytes of every datagram.
pub const DGRAM_MAGIC: [u8; 4] = *b"BMUD";
/// Datagram format version.
pub const DGRAM_VERSION: u8 = 1;
/// Bytes of the datagram header.
pub const DGRAM_HEADER_LEN: usize = 28;
/// Datagram kind: a fragment of a frame.
pub const KIND_FRAGMENT: u8 = 0;
/// Datagram kind: the sender's hello (its name), repeated every second.
pub const KIND_HELLO: u8 = 1;
/// Datagram kind: the end of the stream, sent when the sender ends it
/// cleanly; its `sequence` is one past the last frame sent (0: none), its
/// other fields are 0 and it carries nothing ([`Datagram::end`]).
pub const KIND_END: u8 = 2;

/// What is wrong with a datagram ([`WireError::BadDatagram`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DatagramError {
    /// Shorter than the 28-byte header.
    #[error("datagram of {len} B is shorter than its header")]
    TooShort {
        /// Its length.
        len: usize,
    },
    /// Its first bytes are not `BMUD`.
    #[error("bad datagram magic {found:02x?}")]
    BadMagic {
        /// The four bytes found.
        found: [u8; 4],
    },
    /// A datagram version this crate does not speak.
    #[error("unsupported datagram version {found}")]
    UnsupportedVersion {
        /// The version byte found.
        found: u8,
    },
    /// An end or hello datagram whose fields break its rule (PROTOCOL.md).
    #[error(
        "{} datagram with index {index} count {count} stride {stride} frame length {frame_len} \
         and {data_len} B ({})",
        if *.kind == KIND_END { "end" } else { "hello" },
        if *.kind == KIND_END { "all must be 0".to_string() } else {
            format!("must be 0, 1, its length, 1..={HELLO_MAX_LEN}, its length")
        }
    )]
    BadFields {
        /// [`KIND_END`] or [`KIND_HELLO`].
        kind: u8,
        /// Its index field.
        index: u16,
        /// Its count field.
        count: u16,
        /// Its stride field.
        stride: u16,
        /// Its frame length field.
        frame_len: u32,
        /// The bytes it carries.
        data_len: usize,
    },
    /// A fragment whose index, count or stride cannot be.
    #[error("bad fragment numbering: index {index} count {count} stride {stride}")]
    BadNumbering {
        /// Its index.
        index: u16,
        /// Its count.
        count: u16,
        /// Its stride.
        stride: u16,
    },
    /// A fragment of a frame of 0 bytes.
    #[error("frame length 0 B: a datagram carries part of a frame")]
    EmptyFrame,
    /// `count` is not `ceil(frame_len / stride)`.
    #[error("{count} fragments of {stride} B do not make a {frame_len} B frame")]
    CountMismatch {
        /// Its count.
        count: u16,
        /// Its stride.
        stride: u16,
        /// Its frame length.
        frame_len: u32,
    },
    /// A fragment that carries other than its share of the frame.
    #[error("fragment {index} carries {len} B, expected {expected}")]
    FragmentLength {
        /// Its index.
        index: u16,
        /// The bytes it carries.
        len: usize,
        /// The bytes it should.
        expected: usize,
    },
    /// A frame that cannot be cut into fragments of this stride
    /// ([`fragments`]): more than 65,535 of them, a frame of 0 bytes or of
    /// 4 GiB or more, or a stride of 0.
    #[error("a frame of {frame_len} B cannot go in fragments of {stride} B (it needs {count}; 1..=65535 can be numbered)")]
    CannotFragment {
        /// The frame's bytes.
        frame_len: usize,
        /// The stride asked for.
        stride: u16,
        /// The fragments it would need.
        count: usize,
    },
}

/// The longest hello datagram's data: a hello (section 2 of PROTOCOL.md)
/// with a name of [`MAX_NAME_LEN`](crate::MAX_NAME_LEN) bytes.
pub const HELLO_MAX_LEN: usize = 8 + crate::MAX_NAME_LEN;

/// A datagram header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Datagram {
    /// [`KIND_FRAGMENT`], [`KIND_HELLO`] or [`KIND_END`].
    pub kind: u8,
    /// Fragment number within the frame, from 0.
    pub index: u16,
    /// Fragments in the frame.
    pub count: u16,
    /// Bytes per fragment (the last may be shorter).
    pub stride: u16,
    /// The sender's random stream id (a restarted sender gets a new one).
    pub stream_id: u32,
    /// The frame's sequence number.
    pub sequence: u64,
    /// Bytes of the whole wire frame (header + payload) being carried.
    pub frame_len: u32,
}

impl Datagram {
    /// The hello datagram of stream `stream_id` carrying `hello` (an
    /// encoded [`Hello`](crate::Hello), at most [`HELLO_MAX_LEN`] bytes:
    /// longer is cut to that, and refused by receivers): send its
    /// [`encode`](Self::encode)d header, then `hello`.
    pub fn hello(stream_id: u32, hello: &[u8]) -> Datagram {
        let len = hello.len().min(HELLO_MAX_LEN);
        Datagram {
            kind: KIND_HELLO,
            index: 0,
            count: 1,
            stride: len as u16,
            stream_id,
            sequence: 0,
            frame_len: len as u32,
        }
    }

    /// The end of stream `stream_id`, whose frames were numbered below
    /// `next` ([`KIND_END`]); the whole datagram is its 28 header bytes.
    pub fn end(stream_id: u32, next: u64) -> Datagram {
        Datagram {
            kind: KIND_END,
            index: 0,
            count: 0,
            stride: 0,
            stream_id,
            sequence: next,
            frame_len: 0,
        }
    }

    /// The 28 header bytes.
    pub fn encode(&self) -> [u8; DGRAM_HEADER_LEN] {
        let mut b = [0u8; DGRAM_HEADER_LEN];
        b[0..4].copy_from_slice(&DGRAM_MAGIC);
        b[4] = DGRAM_VERSION;
        b[5] = self.kind;
        b[6..8].copy_from_slice(&self.index.to_le_bytes());
        b[8..10].copy_from_slice(&self.count.to_le_bytes());
        b[10..12].copy_from_slice(&self.stride.to_le_bytes());
        b[12..16].copy_from_slice(&self.stream_id.to_le_bytes());
        b[16..24].copy_from_slice(&self.sequence.to_le_bytes());
        b[24..28].copy_from_slice(&self.frame_len.to_le_bytes());
        b
    }

    /// Reads the header at the start of `b` (its magic and version checked,
    /// its fields not), whatever follows it: the header of a datagram
    /// returned cut short, as in an ICMP error about it.
    pub fn parse_header(b: &[u8]) -> Result<Datagram, WireError> {
        let bad = |e: DatagramError| Err(WireError::BadDatagram(e));
        if b.len() < DGRAM_HEADER_LEN {
            return bad(DatagramError::TooShort { len: b.len() });
        }
        if b[0..4] != DGRAM_MAGIC {
            return bad(DatagramError::BadMagic {
                found: [b[0], b[1], b[2], b[3]],
            });
        }
        if b[4] != DGRAM_VERSION {
            return bad(DatagramError::UnsupportedVersion { found: b[4] });
        }
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
        Ok(Datagram {
            kind: b[5],
            index: u16_at(6),
            count: u16_at(8),
            stride: u16_at(10),
            stream_id: u32_at(12),
            sequence: u64::from_le_bytes(b[16..24].try_into().unwrap()),
            frame_len: u32_at(24),
        })
    }

    /// Parses and checks a whole datagram against `limits`; returns the
    /// header and the bytes it carries. Nothing is allocated.
    pub fn parse<'a>(b: &'a [u8], limits: &Limits) -> Result<(Datagram, &'a [u8]), WireError> {
        let bad = |e: DatagramError| Err(WireError::BadDatagram(e));
        let d = Datagram::parse_header(b)?;
        let data = &b[DGRAM_HEADER_LEN..];
        let max_len = HEADER_LEN as u64 + limits.max_payload as u64;
        // A datagram of one kind whose fields break its rule, all said.
        let bad_fields = || {
            bad(DatagramError::BadFields {
                kind: d.kind,
                index: d.index,
                count: d.count,
                stride: d.stride,
                frame_len: d.frame_len,
                data_len: data.len(),
            })
        };
        if d.kind == KIND_END {
            if Datagram::end(d.stream_id, d.sequence) != d || !data.is_empty() {
                return bad_fields();
            }
            return Ok((d, data));
        }
        if d.kind == KIND_HELLO {
            // (one datagram, whatever the frame cap: a hello is not a frame)
            let most = HELLO_MAX_LEN as u32;
            if d.index != 0
                || d.count != 1
                || d.stride as u32 != d.frame_len
                || !(1..=most).contains(&d.frame_len)
                || data.len() != d.frame_len as usize
            {
                return bad_fields();
            }
            return Ok((d, data));
        }
        d.check_fragment(data.len(), Some(max_len))?;
        Ok((d, data))
    }

    /// Checks a fragment's fields and the length of the data it carries,
    /// and with `cap` its `frame_len` against it (the rules of
    /// [`Datagram::parse`], in its order; [`Reassembler::push`] checks
    /// them without the cap).
    pub(crate) fn check_fragment(
        &self,
        data_len: usize,
        cap: Option<u64>,
    ) -> Result<(), WireError> {
        let d = self;
        let bad = |e: DatagramError| Err(WireError::BadDatagram(e));
        if d.kind != KIND_FRAGMENT {
            return Err(WireError::UnknownDatagramKind { kind: d.kind });
        }
        if d.stride == 0 || d.count == 0 || d.index >= d.count {
            return bad(DatagramError::BadNumbering {
                index: d.index,
                count: d.count,
                stride: d.stride,
            });
        }
        if d.frame_len == 0 {
            return bad(DatagramError::EmptyFrame);
        }
        if let Some(cap) = cap.filter(|&c| d.frame_len as u64 > c) {
            return Err(WireError::DatagramOverCap {
                frame_len: d.frame_len,
                cap,
            });
        }
        if (d.frame_len as usize).div_ceil(d.stride as usize) != d.count as usize {
            return bad(DatagramError::CountMismatch {
                count: d.count,
                stride: d.stride,
                frame_len: d.frame_len,
            });
        }
        let off = d.index as usize * d.stride as usize;
        let want = (d.frame_len as usize - off).min(d.stride as usize);
        if data_len != want {
            return bad(DatagramError::FragmentLength {
                index: d.index,
                len: data_len,
                expected: want,
            });
        }
        Ok(())
    }
}

/// The fragments of one wire frame (header and payload, as
/// [`encode_frame`](crate::encode_frame) wrote it), numbered `sequence`, of
/// stream `stream_id`, `stride` data bytes each but the last: for each
/// datagram, its header (send its [`encode`](Datagram::encode)d 28 bytes)
/// and the frame's bytes that follow it. Pick `stride` so that a datagram
/// fits the path MTU: MTU - 20 (IPv4; 40 for IPv6) - 8 (UDP) - 28.
pub fn fragments(
    frame: &[u8],
    stream_id: u32,
    sequence: u64,
    stride: u16,
) -> Result<Fragments<'_>, WireError> {
    let count = if stride == 0 {
        0
    } else {
        frame.len().div_ceil(stride as usize)
    };
    let frame_len = u32::try_from(frame.len()).ok();
    match (u16::try_from(count), frame_len) {
        (Ok(c @ 1..), Some(frame_len)) => Ok(Fragments {
            chunks: frame.chunks(stride as usize),
            next: Datagram {
                kind: KIND_FRAGMENT,
                index: 0,
                count: c,
                stride,
                stream_id,
                sequence,
                frame_len,
            },
        }),
        _ => Err(WireError::BadDatagram(DatagramError::CannotFragment {
            frame_len: frame.len(),
            stride,
            count,
        })),
    }
}

/// The iterator of [`fragments`].
#[derive(Debug, Clone)]
pub struct Fragments<'a> {
    chunks: std::slice::Chunks<'a, u8>,
    next: Datagram,
}

impl<'a> Iterator for Fragments<'a> {
    type Item = (Datagram, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let data = self.chunks.next()?;
        let d = self.next;
        self.next.index = self.next.index.wrapping_add(1);
        Some((d, data))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.chunks.size_hint()
    }
}

impl ExactSizeIterator for Fragments<'_> {}

mod reassembly;
pub use reassembly::{GiveUp, GivenUp, Push, Reassembler, Whole, GIVEN_UP, MAX_GAP, MAX_PARTIAL};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hello_is_one_datagram_whatever_the_frame_cap() {
        // (a receiver of 8x8 masks takes at most 48 B frames; a hello with a
        // 41-byte name is 49 B)
        let l = Limits::for_dimensions(8, 8);
        let hello = crate::Hello::new(&"n".repeat(41)).unwrap().encode();
        let d = |index: u16, count: u16, stride: u16, len: u32| Datagram {
            kind: KIND_HELLO,
            index,
            count,
            stride,
            stream_id: 1,
            sequence: 0,
            frame_len: len,
        };
        let n = hello.len();
        let with = |d: Datagram, data: &[u8]| [&d.encode()[..], data].concat();
        let b = with(d(0, 1, n as u16, n as u32), &hello);
        let (got, data) = Datagram::parse(&b, &l).unwrap();
        assert_eq!((got.kind, data), (KIND_HELLO, &hello[..]));
        // in two fragments, longer than a hello may be, or not its length
        for (bad, data) in [
            (d(0, 2, 30, n as u32), &hello[..30]),
            (d(0, 1, 300, 300), &[0; 300][..]),
            (d(0, 1, n as u16, n as u32), &hello[..n - 1]),
        ] {
            let e = Datagram::parse(&with(bad, data), &l).unwrap_err();
            assert!(e.to_string().contains("hello datagram"), "{e}");
        }
    }

    #[test]
    fn encode_parse_roundtrip_and_refusals() {
        let l = Limits::for_dimensions(64, 64);
        let d = Datagram {
            kind: KIND_FRAGMENT,
            index: 1,
            count: 2,
            stride: 100,
            stream_id: 7,
            sequence: 3,
            frame_len: 150,
        };
        let mut b = d.encode().to_vec();
        b.extend_from_slice(&[9; 50]);
        let (got, data) = Datagram::parse(&b, &l).unwrap();
        assert_eq!((got, data.len()), (d, 50));
        b.push(0);
        assert!(Datagram::parse(&b, &l)
            .unwrap_err()
            .to_string()
            .contains("carries 51 B"));
        let huge = Datagram {
            count: 65535,
            stride: 65535,
            frame_len: u32::MAX,
            index: 0,
            ..d
        };
        let e = Datagram::parse(&huge.encode(), &l).unwrap_err();
        assert!(e.to_string().contains("cap"), "{e}");
        // typed, for a caller to match
        assert!(
            matches!(e, WireError::DatagramOverCap { frame_len, cap }
                if frame_len == huge.frame_len && cap == HEADER_LEN as u64 + l.max_payload as u64),
            "{e:?}"
        );
        let odd = Datagram { kind: 9, ..d };
        let e = Datagram::parse(&odd.encode(), &l).unwrap_err();
        assert!(e.to_string().contains("kind 9"), "{e}");
        assert!(
            matches!(e, WireError::UnknownDatagramKind { kind: 9 }),
            "{e:?}"
        );
        let empty = Datagram {
            frame_len: 0,
            count: 1,
            index: 0,
            ..d
        };
        let e = Datagram::parse(&empty.encode(), &l).unwrap_err();
        assert!(
            matches!(e, WireError::BadDatagram(DatagramError::EmptyFrame)),
            "{e:?}"
        );
        let e = e.to_string();
        assert!(e.contains("frame length 0 B") && !e.contains("cap"), "{e}");
        // the end of a stream: the header alone, its fields 0 but the
        // stream and the next number
        let end = Datagram::end(7, 12);
        let bytes = end.encode();
        let (got, data) = Datagram::parse(&bytes, &l).unwrap();
        assert_eq!((got, data.len()), (end, 0));
        let mut b = end.encode().to_vec();
        b.push(0);
        assert!(Datagram::parse(&b, &l).is_err());
        for odd in [
            Datagram { count: 1, ..end },
            Datagram { stride: 1, ..end },
            Datagram {
                frame_len: 1,
                ..end
            },
            Datagram { index: 1, ..end },
        ] {
            let e = Datagram::parse(&odd.encode(), &l).unwrap_err().to_string();
            assert!(e.contains("all must be 0"), "{e}");
        }
    }
}
