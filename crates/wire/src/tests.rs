use super::*;
use proptest::prelude::*;

fn frame(w: u32, h: u32, seq: u64) -> (Header, Vec<u8>) {
    let len = (w as usize).div_ceil(8) * h as usize;
    let payload: Vec<u8> = (0..len).map(|i| (i * 31 + seq as usize) as u8).collect();
    let mut hd = Header::new(w, h, seq, CODEC_RAW, len as u32);
    hd.timestamp_us = 1_700_000_000_000_000 + seq;
    (hd, payload)
}

#[test]
fn roundtrip_many_frames_and_clean_eof() {
    let mut s = Vec::new();
    for (i, (w, h)) in [(1, 1), (7, 3), (9, 2), (1024, 768)].iter().enumerate() {
        let (hd, p) = frame(*w, *h, i as u64);
        encode_frame(&hd, &p, &mut s);
    }
    let mut r = FrameReader::new(&s[..], Limits::default());
    for (i, (w, h)) in [(1, 1), (7, 3), (9, 2), (1024, 768)].iter().enumerate() {
        let (hd, p) = frame(*w, *h, i as u64);
        let f = r.read_frame().unwrap().unwrap();
        assert_eq!(f.header, hd);
        assert_eq!(f.payload, &p[..]);
    }
    assert!(r.read_frame().unwrap().is_none());
    assert!(r.read_frame().unwrap().is_none());
}

#[test]
fn in_place_equals_encode_frame() {
    let (mut hd, p) = frame(13, 5, 3);
    let mut a = Vec::new();
    encode_frame(&hd, &p, &mut a);
    let mut b = vec![0u8; HEADER_LEN];
    b.extend_from_slice(&p);
    finish_frame_in_place(&mut hd, &mut b);
    assert_eq!(a, b);
}

#[test]
fn truncation_at_every_offset_is_reported() {
    let (hd, p) = frame(9, 2, 0);
    let mut s = Vec::new();
    encode_frame(&hd, &p, &mut s);
    for cut in 1..s.len() {
        let mut r = FrameReader::new(&s[..cut], Limits::default());
        match r.read_frame() {
            Err(WireError::Truncated {
                part,
                expected,
                got,
            }) => {
                if cut < HEADER_LEN {
                    assert_eq!((part, expected, got), ("header", HEADER_LEN, cut));
                } else {
                    assert_eq!(
                        (part, expected, got),
                        ("payload", p.len(), cut - HEADER_LEN)
                    );
                }
            }
            other => panic!("cut {cut}: {other:?}"),
        }
    }
}

fn header_bytes(mutate: impl FnOnce(&mut [u8; HEADER_LEN])) -> Vec<u8> {
    let (hd, p) = frame(16, 2, 5);
    let mut s = Vec::new();
    encode_frame(&hd, &p, &mut s);
    let mut h: [u8; HEADER_LEN] = s[..HEADER_LEN].try_into().unwrap();
    mutate(&mut h);
    s[..HEADER_LEN].copy_from_slice(&h);
    s
}

fn first_err(s: &[u8]) -> WireError {
    FrameReader::new(s, Limits::default())
        .read_frame()
        .map(|_| ())
        .unwrap_err()
}

#[test]
fn a_frame_read_where_a_hello_is_says_to_read_the_hello() {
    let mut stream = Hello::new("cam").unwrap().encode();
    write_frame(&mut stream, &Header::new(8, 1, 0, CODEC_RAW, 1), &[1]).unwrap();
    let e = FrameReader::new(&stream[..], Limits::default())
        .read_frame()
        .unwrap_err();
    assert!(matches!(e, WireError::BadMagic { .. }), "{e:?}");
    assert!(e.to_string().contains("read_hello"), "{e}");
    let other = first_err(&header_bytes(|h| h[0] = b'X')).to_string();
    assert!(!other.contains("hello"), "{other}");
    assert!(other.contains("\"XMSK\""), "{other}");
    // a browser at the frames' port
    let e = FrameReader::new(
        &b"GET / HTTP/1.1\r\nHost: pi\r\n\r\n"[..],
        Limits::default(),
    )
    .read_frame()
    .unwrap_err()
    .to_string();
    assert!(e.contains("\"GET \"") && e.contains("HTTP request"), "{e}");
}

#[test]
fn each_bad_field_has_its_error() {
    assert!(
        matches!(first_err(&header_bytes(|h| h[0] = b'X')), WireError::BadMagic { found } if &found == b"XMSK")
    );
    assert!(matches!(
        first_err(&header_bytes(|h| h[4] = 9)),
        WireError::UnsupportedVersion {
            what: "frame",
            found: 9
        }
    ));
    assert!(matches!(
        first_err(&header_bytes(|h| h[5] = 0x80)),
        WireError::UnknownFlags { flags: 0x80 }
    ));
    assert!(matches!(
        first_err(&header_bytes(
            |h| h[8..12].copy_from_slice(&0u32.to_le_bytes())
        )),
        WireError::InvalidDimensions {
            width: 0,
            height: 2,
            ..
        }
    ));
    assert!(matches!(
        first_err(&header_bytes(
            |h| h[12..16].copy_from_slice(&100_000u32.to_le_bytes())
        )),
        WireError::InvalidDimensions {
            height: 100_000,
            max_height: 4096,
            ..
        }
    ));
    // raw payload must be exact
    assert!(matches!(
        first_err(&header_bytes(
            |h| h[32..36].copy_from_slice(&5u32.to_le_bytes())
        )),
        WireError::PayloadLength {
            len: 5,
            width: 16,
            height: 2,
            codec: 0,
            ..
        }
    ));
    // a header claiming a 4 GB payload is refused before anything is allocated
    assert!(matches!(
        first_err(&header_bytes(
            |h| h[32..36].copy_from_slice(&u32::MAX.to_le_bytes())
        )),
        WireError::PayloadLength { len: u32::MAX, .. }
    ));
    // compressed payload may not exceed raw
    assert!(matches!(
        first_err(&header_bytes(|h| {
            h[6] = 1;
            h[32..36].copy_from_slice(&5u32.to_le_bytes());
        })),
        WireError::PayloadLength {
            codec: 1,
            len: 5,
            ..
        }
    ));
    let e = first_err(&header_bytes(|h| h[20] ^= 1));
    assert!(
        matches!(e, WireError::CrcMismatch { .. }) && e.is_recoverable(),
        "{e}"
    );
}

#[test]
fn crc_error_leaves_stream_in_step() {
    let (hd, p) = frame(16, 2, 1);
    let mut s = Vec::new();
    encode_frame(&hd, &p, &mut s);
    s[HEADER_LEN + 1] ^= 0x10; // damage the payload
    encode_frame(&hd, &p, &mut s);
    let mut r = FrameReader::new(&s[..], Limits::default());
    assert!(r.read_frame().unwrap_err().is_recoverable());
    assert_eq!(r.read_frame().unwrap().unwrap().payload, &p[..]);
}

#[test]
fn hello_names_are_checked_before_they_can_be_encoded() {
    // the name is private: a 65,539-byte one (whose u16 length would wrap
    // to 3) cannot be made
    let long = "x".repeat(65_539);
    assert!(matches!(
        Hello::new(&long),
        Err(WireError::BadHello(HelloError::NameLength { len: 65_539 }))
    ));
    let h = Hello::new("pi-cam").unwrap();
    assert_eq!(h.name(), "pi-cam");
    assert_eq!(h.encode()[6..8], [6, 0]);
}

#[test]
fn a_hello_read_that_failed_can_be_tried_again() {
    // a socket read that times out before, or within, the first 4 bytes:
    // what was read is kept, asked again the reader goes on from there
    struct Late {
        fail_at: usize,
        failed: bool,
        data: Vec<u8>,
        at: usize,
    }
    impl std::io::Read for Late {
        fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
            if self.at == self.fail_at && !self.failed {
                self.failed = true;
                return Err(std::io::ErrorKind::WouldBlock.into());
            }
            let end = if self.failed {
                self.data.len()
            } else {
                self.fail_at
            };
            let n = b.len().min(end - self.at);
            b[..n].copy_from_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }
    let late = |fail_at, data: Vec<u8>| Late {
        fail_at,
        failed: false,
        data,
        at: 0,
    };
    let (hd, p) = frame(8, 1, 0);
    let mut plain = Vec::new();
    encode_frame(&hd, &p, &mut plain);
    let mut hello = Hello::new("late").unwrap().encode();
    encode_frame(&hd, &p, &mut hello);
    for fail_at in 0..12 {
        let mut r = FrameReader::new(late(fail_at, hello.clone()), Limits::default());
        assert!(r.read_hello().is_err());
        assert_eq!(r.read_hello().unwrap().unwrap().name(), "late", "{fail_at}");
        assert_eq!(r.read_frame().unwrap().unwrap().header, hd, "{fail_at}");
        if fail_at >= 4 {
            continue;
        }
        // no hello: the frame's first bytes are kept for read_frame
        let mut r = FrameReader::new(late(fail_at, plain.clone()), Limits::default());
        assert!(r.read_hello().is_err());
        assert!(r.read_hello().unwrap().is_none());
        assert_eq!(r.read_frame().unwrap().unwrap().header, hd, "{fail_at}");
    }
}

#[test]
fn hello_is_optional() {
    let (hd, p) = frame(8, 1, 0);
    let mut with = Hello::new("pi-cam").unwrap().encode();
    encode_frame(&hd, &p, &mut with);
    let mut r = FrameReader::new(&with[..], Limits::default());
    assert_eq!(r.read_hello().unwrap().unwrap().name, "pi-cam");
    assert_eq!(r.read_frame().unwrap().unwrap().header, hd);

    let mut without = Vec::new();
    encode_frame(&hd, &p, &mut without);
    let mut r = FrameReader::new(&without[..], Limits::default());
    assert!(r.read_hello().unwrap().is_none());
    // asked again: nothing read, the frame's first bytes kept
    assert!(r.read_hello().unwrap().is_none());
    assert_eq!(r.read_frame().unwrap().unwrap().header, hd);
    // a hello after a frame is not looked for
    let mut twice = Vec::new();
    encode_frame(&hd, &p, &mut twice);
    encode_frame(&hd, &p, &mut twice);
    let mut r = FrameReader::new(&twice[..], Limits::default());
    assert!(r.read_frame().unwrap().is_some());
    assert!(r.read_hello().unwrap().is_none());
    assert!(r.read_frame().unwrap().is_some());
    // an empty stream and a 2-byte one
    assert!(FrameReader::new(&[][..], Limits::default())
        .read_hello()
        .unwrap()
        .is_none());
    let mut r = FrameReader::new(&b"BM"[..], Limits::default());
    assert!(r.read_hello().unwrap().is_none());
    assert!(matches!(
        r.read_frame(),
        Err(WireError::Truncated {
            part: "header",
            got: 2,
            ..
        })
    ));
}

#[test]
fn bad_names_are_refused() {
    for n in ["", ".", "..", "a/b", "a\\b", "a\nb"] {
        assert!(Hello::new(n).is_err(), "{n:?}");
    }
    assert!(Hello::new(&"x".repeat(256)).is_err());
    let mut raw = HELLO_MAGIC.to_vec();
    raw.extend_from_slice(&[1, 0, 2, 0, b'.', b'.']);
    assert!(matches!(
        FrameReader::new(&raw[..], Limits::default()).read_hello(),
        Err(WireError::BadHello(HelloError::NameNotUsable { name })) if name == ".."
    ));
}

#[test]
fn hello_flags_travel_and_an_old_hello_has_none() {
    let h = Hello::new("cam")
        .unwrap()
        .with_flags(HELLO_ACKS | HELLO_RESUME);
    let b = h.encode();
    assert_eq!(b[5], 0b11);
    let got = FrameReader::new(&b[..], Limits::default())
        .read_hello()
        .unwrap()
        .unwrap();
    assert_eq!(got, h);
    assert!(got.wants_acks() && got.resumes());
    // a v1 hello from before the flags (byte 5 was reserved, written 0)
    let old = Hello::new("cam").unwrap().encode();
    let got = FrameReader::new(&old[..], Limits::default())
        .read_hello()
        .unwrap()
        .unwrap();
    assert!(!got.wants_acks() && !got.resumes());
    // RESUME means nothing without ACKS; unknown bits are kept, not refused
    let b = Hello::new("cam").unwrap().with_flags(0xf2).encode();
    let got = FrameReader::new(&b[..], Limits::default())
        .read_hello()
        .unwrap()
        .unwrap();
    assert_eq!(got.flags, 0xf2);
    assert!(!got.resumes());
}

#[test]
fn acks_round_trip_in_any_pieces_and_junk_is_refused() {
    let mut stream = Vec::new();
    for next in [0u64, 1, 7, u64::MAX] {
        stream.extend_from_slice(&Ack::new(next).encode());
    }
    assert_eq!(&stream[..4], b"BMAK");
    assert_eq!(stream[4], 1);
    for piece in 1..=ACK_LEN + 3 {
        let mut r = AckReader::default();
        let mut seen = Vec::new();
        for c in stream.chunks(piece) {
            if let Some(a) = r.push(c).unwrap() {
                seen.push(a.next);
            }
        }
        assert_eq!(r.pending(), 0);
        // the newest of each piece: always ends with the last one
        assert_eq!(seen.last(), Some(&u64::MAX), "pieces of {piece}");
        if piece <= ACK_LEN {
            assert_eq!(seen, [0, 1, 7, u64::MAX], "pieces of {piece}");
        }
    }
    let mut r = AckReader::default();
    assert_eq!(r.push(&stream[..20]).unwrap(), Some(Ack::new(0)));
    assert_eq!(r.pending(), 4);
    let mut bad = Ack::new(3).encode();
    bad[0] = b'X';
    let e = AckReader::default().push(&bad).unwrap_err();
    assert!(
        matches!(e, WireError::BadAck { found } if found == *b"XMAK"),
        "{e:?}"
    );
    assert!(e.to_string().contains("(expected \"BMAK\")"), "{e}");
    // an HTTP server's answer is named for what it is
    let e = AckReader::default()
        .push(b"HTTP/1.1 400 Bad Request\r\n")
        .unwrap_err();
    assert!(e.to_string().contains("\"HTTP\""), "{e}");
    assert!(e.to_string().contains("--http port"), "{e}");
    // the record travels in the bytes that were reserved; an older
    // receiver's zeros read as "no record named"
    let a = Ack {
        next: 9,
        record: MAX_RECORD_ID,
        new_record: true,
    };
    let b = a.encode();
    assert_eq!(b[5..8], [0xff, 0xff, 0xff]);
    assert_eq!(Ack::decode(&b).unwrap(), a);
    let old = Ack::new(9).encode();
    assert_eq!(old[5..8], [0, 0, 0]);
    let a = Ack::decode(&old).unwrap();
    assert_eq!((a.record, a.new_record), (0, false));
    let mut v2 = Ack::new(3).encode();
    v2[4] = 2;
    assert!(matches!(
        Ack::decode(&v2),
        Err(WireError::UnsupportedVersion {
            what: "acknowledgement",
            found: 2
        })
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    /// Arbitrary bytes never panic, and never make the reader hold more than its cap.
    #[test]
    fn hostile_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..300), magic in any::<bool>()) {
        let mut data = data;
        if magic && data.len() >= 5 { data[..4].copy_from_slice(&MAGIC); data[4] = VERSION; }
        let limits = Limits::for_dimensions(64, 64);
        let mut r = FrameReader::new(&data[..], limits);
        let _ = r.read_hello();
        for _ in 0..4 {
            match r.read_frame() {
                Ok(Some(f)) => prop_assert!(f.payload.len() <= limits.max_payload as usize),
                Ok(None) => break,
                Err(e) if e.is_recoverable() => {}
                Err(_) => break,
            }
        }
        prop_assert!(r.buf.len() <= limits.max_payload as usize);
    }

    /// parse_frame says what FrameReader::read_frame says of the same bytes
    /// (a frame, damaged or cut anywhere, or junk).
    #[test]
    fn parse_frame_agrees_with_the_reader(
        junk in proptest::collection::vec(any::<u8>(), 1..120),
        flip in proptest::option::of(0usize..(HEADER_LEN + 8) * 8),
        cut in proptest::option::of(1usize..(HEADER_LEN + 8)),
        as_frame in any::<bool>(),
    ) {
        let mut s = Vec::new();
        if as_frame {
            let (hd, p) = frame(61, 1, 9);
            encode_frame(&hd, &p, &mut s);
            if let Some(bit) = flip { s[bit / 8] ^= 1 << (bit % 8); }
            if let Some(c) = cut { s.truncate(c); }
        } else {
            s = junk;
        }
        let limits = Limits::for_dimensions(64, 64);
        let by_reader = FrameReader::new(&s[..], limits)
            .read_frame()
            .map(|f| f.map(|f| (f.header, f.payload.to_vec())))
            .map_err(|e| e.to_string());
        let parsed = parse_frame(&s, &limits)
            .map(|f| Some((f.header, f.payload.to_vec())))
            .map_err(|e| e.to_string());
        prop_assert_eq!(parsed, by_reader);
    }

    /// Any single flipped bit in a frame is caught.
    #[test]
    fn any_bit_flip_is_detected(bit in 0usize..((HEADER_LEN + 4) * 8)) {
        let (hd, p) = frame(32, 1, 77);
        let mut s = Vec::new();
        encode_frame(&hd, &p, &mut s);
        s[bit / 8] ^= 1 << (bit % 8);
        let res = FrameReader::new(&s[..], Limits::default()).read_frame().map(|f| f.map(|f| f.header));
        prop_assert!(res.is_err(), "flip of bit {} went unnoticed: {:?}", bit, res);
    }
}

/// A reader that fails with `WouldBlock` (a socket timeout) before every
/// byte offset in `stops`, once each, and hands out at most `chunk` bytes
/// per read.
struct Stalling {
    data: Vec<u8>,
    at: usize,
    stops: Vec<usize>,
    chunk: usize,
}

impl Read for Stalling {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        if self.stops.first() == Some(&self.at) {
            self.stops.remove(0);
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let next_stop = self.stops.first().copied().unwrap_or(self.data.len());
        let n = b.len().min(self.chunk).min(next_stop - self.at);
        b[..n].copy_from_slice(&self.data[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// A reader of `data` through [`Stalling`] (`stops`, `chunk`).
fn stalling_reader(data: &[u8], stops: Vec<usize>, chunk: usize) -> FrameReader<Stalling> {
    FrameReader::new(
        Stalling {
            data: data.to_vec(),
            at: 0,
            stops,
            chunk,
        },
        Limits::default(),
    )
}

/// Three small frames and the stream of their bytes.
fn three_frames() -> (Vec<(Header, Vec<u8>)>, Vec<u8>) {
    let frames: Vec<_> = [(9, 2), (16, 3), (1, 1)]
        .iter()
        .enumerate()
        .map(|(i, (w, h))| frame(*w, *h, i as u64))
        .collect();
    let mut s = Vec::new();
    for (hd, p) in &frames {
        encode_frame(hd, p, &mut s);
    }
    (frames, s)
}

#[test]
fn a_read_that_times_out_mid_frame_loses_nothing_when_asked_again() {
    let (frames, s) = three_frames();
    // a timeout before every offset (inside headers and payloads alike),
    // and before some only, in chunks of 1 and 7 bytes
    for (stops, chunk) in [
        ((0..s.len()).collect::<Vec<_>>(), 1),
        ((0..s.len()).step_by(5).collect(), 7),
        (vec![3, 41, 44, 60], 64),
    ] {
        let n = stops.len();
        let mut r = stalling_reader(&s, stops.clone(), chunk);
        // where each stop is: between frames, or inside frame k's header
        // or payload
        let where_at = |at: usize| -> Option<Partial> {
            let mut start = 0;
            for (hd, p) in &frames {
                let end = start + HEADER_LEN + p.len();
                if at > start && at < end {
                    return Some(if at - start < HEADER_LEN {
                        Partial {
                            sequence: None,
                            part: "header",
                            got: at - start,
                            expected: HEADER_LEN,
                        }
                    } else {
                        Partial {
                            sequence: Some(hd.sequence),
                            part: "payload",
                            got: at - start - HEADER_LEN,
                            expected: p.len(),
                        }
                    });
                }
                start = end;
            }
            None
        };
        let (mut got, mut timeouts) = (Vec::new(), 0);
        loop {
            match r.read_frame() {
                Ok(Some(f)) => got.push((f.header, f.payload.to_vec())),
                Ok(None) => break,
                Err(WireError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    assert_eq!(
                        r.partial(),
                        where_at(stops[timeouts]),
                        "stop {}",
                        stops[timeouts]
                    );
                    timeouts += 1
                }
                Err(e) => panic!("chunk {chunk}: {e}"),
            }
        }
        assert_eq!(timeouts, n, "chunk {chunk}");
        assert_eq!(got, frames, "chunk {chunk}");
    }
}

#[test]
fn after_an_error_that_loses_step_no_frame_and_no_clean_end_is_made_up() {
    let (hd, p) = frame(9, 2, 0);
    let mut one = Vec::new();
    encode_frame(&hd, &p, &mut one);
    let mut two = one.clone();
    encode_frame(&hd, &p, &mut two);
    let mut bad_len = two.clone();
    bad_len[32] ^= 1; // payload_len 4 -> 5 B: not what a raw 9x2 frame holds
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", one[..one.len() - 1].to_vec()),
        ("bad magic", [b"XXXX".as_slice(), &one].concat()),
        ("bad length", bad_len),
    ];
    for (what, s) in cases {
        let mut r = FrameReader::new(&s[..], Limits::default());
        let first = r.read_frame().unwrap_err();
        assert!(!first.is_recoverable(), "{what}: {first}");
        for _ in 0..2 {
            match r.read_frame() {
                Err(WireError::OutOfStep { first: f }) => assert_eq!(f, first.to_string()),
                other => panic!("{what}: after {first}: {other:?}"),
            }
        }
    }
    // a CRC mismatch is a whole frame: the next one is read
    let mut s = two.clone();
    let last = one.len() - 1;
    s[last] ^= 0x80;
    let mut r = FrameReader::new(&s[..], Limits::default());
    assert!(r.read_frame().unwrap_err().is_recoverable());
    assert_eq!(r.read_frame().unwrap().unwrap().payload, &p[..]);
    assert!(r.read_frame().unwrap().is_none());
}

#[test]
fn after_a_hello_without_a_known_end_no_frame_is_made_up() {
    let (hd, p) = frame(9, 2, 0);
    let mut f = Vec::new();
    encode_frame(&hd, &p, &mut f);
    let hello = Hello::new("cam").unwrap().encode(); // BMHI, 1, flags, len 3, "cam"
    let mut v2 = hello.clone();
    v2[4] = 2;
    let mut zero_len = hello.clone();
    zero_len[6..8].copy_from_slice(&0u16.to_le_bytes());
    // a name that holds a whole frame: read as a frame if the reader went on
    let mut long = Hello::new("cam").unwrap().encode()[..8].to_vec();
    long[6..8].copy_from_slice(&(f.len() as u16).to_le_bytes());
    long[4] = 2;
    long.extend_from_slice(&f);
    for (what, s) in [
        ("cut short", hello[..6].to_vec()),
        ("cut short in the name", hello[..9].to_vec()),
        ("another version", [v2, f.clone()].concat()),
        ("name length 0", [zero_len, f.clone()].concat()),
        ("another version, a frame in its name", long),
    ] {
        let mut r = FrameReader::new(&s[..], Limits::default());
        let e = r.read_hello().unwrap_err();
        match r.read_frame() {
            Err(WireError::OutOfStep { first }) => assert_eq!(first, e.to_string(), "{what}"),
            other => panic!("{what}: after {e}: {other:?}"),
        }
    }
    // a hello read whole whose name is wrong: the frames after it are read
    let mut bad_name = hello.clone();
    bad_name[8] = b'/';
    let s = [bad_name, f.clone()].concat();
    let mut r = FrameReader::new(&s[..], Limits::default());
    assert!(matches!(r.read_hello(), Err(WireError::BadHello(_))));
    assert_eq!(r.read_frame().unwrap().unwrap().header, hd);
    assert!(r.read_frame().unwrap().is_none());
}

#[test]
fn write_frame_refuses_a_payload_of_another_length_without_writing() {
    let mut out = Vec::new();
    let e = write_frame(&mut out, &Header::new(8, 1, 7, CODEC_RAW, 2), &[1]).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    assert_eq!(e.to_string(), "frame 7: payload_len 2 but a 1-byte payload");
    assert!(out.is_empty());
}

#[test]
fn a_header_is_read_alone_before_its_payload_is_buffered() {
    let (hd, p) = frame(1024, 768, 5);
    let (hd2, p2) = frame(9, 2, 6);
    let mut s = Vec::new();
    encode_frame(&hd, &p, &mut s);
    encode_frame(&hd2, &p2, &mut s);
    let mut r = FrameReader::new(&s[..], Limits::default());
    assert_eq!(r.read_header().unwrap(), Some(hd));
    // not a byte of the payload read, nor a buffer made for it
    assert_eq!(r.get_ref().len(), s.len() - HEADER_LEN);
    assert_eq!(r.buf.capacity(), 0);
    assert_eq!(r.read_header().unwrap(), Some(hd), "asked again");
    let f = r.read_frame().unwrap().unwrap();
    assert_eq!((f.header, f.payload), (hd, &p[..]));
    // read_frame alone still reads header and payload
    let f = r.read_frame().unwrap().unwrap();
    assert_eq!((f.header, f.payload), (hd2, &p2[..]));
    assert_eq!(r.read_header().unwrap(), None);
    // a header over the limits puts the stream out of step, as in read_frame
    let (big, bp) = frame(64, 64, 0);
    let mut s = Vec::new();
    encode_frame(&big, &bp, &mut s);
    let mut r = FrameReader::new(&s[..], Limits::for_dimensions(32, 32));
    let e = r.read_header().unwrap_err();
    assert!(e.to_string().contains("64"), "{e}");
    assert!(matches!(r.read_frame(), Err(WireError::OutOfStep { .. })));
    assert!(matches!(r.read_header(), Err(WireError::OutOfStep { .. })));
}

#[test]
fn headers_then_payloads_read_through_timeouts_lose_nothing() {
    let (frames, s) = three_frames();
    for (stops, chunk) in [
        ((0..s.len()).collect::<Vec<_>>(), 1),
        (vec![3, 41, 44, 60], 64),
    ] {
        let n = stops.len();
        let mut r = stalling_reader(&s, stops, chunk);
        let (mut got, mut timeouts) = (Vec::new(), 0);
        let timeout =
            |e: &WireError| matches!(e, WireError::Io(e) if e.kind() == io::ErrorKind::WouldBlock);
        loop {
            match r.read_header() {
                Ok(Some(h)) => match r.read_frame() {
                    Ok(Some(f)) => {
                        assert_eq!(f.header, h);
                        got.push((f.header, f.payload.to_vec()));
                    }
                    Err(e) if timeout(&e) => timeouts += 1,
                    other => panic!("chunk {chunk}: {:?}", other.map(|f| f.map(|f| f.header))),
                },
                Ok(None) => break,
                Err(e) if timeout(&e) => timeouts += 1,
                Err(e) => panic!("chunk {chunk}: {e}"),
            }
        }
        assert_eq!(timeouts, n, "chunk {chunk}");
        assert_eq!(got, frames, "chunk {chunk}");
    }
}

#[test]
fn a_payload_that_stops_short_holds_about_what_came_not_what_it_claims() {
    let (hd, p) = frame(4096, 4096, 1); // 2 MiB claimed
    let mut s = Vec::new();
    encode_frame(&hd, &p, &mut s);
    for (sent, most) in [(0, 64 << 10), (1000, 64 << 10), (300_000, 512 << 10)] {
        let mut r = FrameReader::new(&s[..HEADER_LEN + sent], Limits::default());
        let e = r.read_frame().unwrap_err();
        assert!(
            matches!(e, WireError::Truncated { got, .. } if got == sent),
            "{e}"
        );
        assert!(
            r.buf.len() <= most,
            "{sent} bytes sent: {} held",
            r.buf.len()
        );
    }
    // the whole frame, then a smaller one: one buffer, not grown again
    let (hd2, p2) = frame(64, 64, 2);
    encode_frame(&hd2, &p2, &mut s);
    let mut r = FrameReader::new(&s[..], Limits::default());
    assert_eq!(r.read_frame().unwrap().unwrap().payload, &p[..]);
    let held = r.buf.len();
    assert_eq!(held, p.len());
    assert_eq!(r.read_frame().unwrap().unwrap().payload, &p2[..]);
    assert_eq!(r.buf.len(), held);
}
