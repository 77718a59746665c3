//! Keeps docs/PROTOCOL.md honest: its worked example (the hex between the
//! `protocol-example` marker lines, and the byte table of the header) must
//! decode with `FrameReader` to the documented fields, and encoding those
//! fields must give exactly those bytes.

use bitmask_wire::{encode_frame, FrameReader, Header, Hello, Limits, CODEC_RAW, HEADER_LEN};

/// The documented fields of the example.
const NAME: &str = "pi-cam";
const WIDTH: u32 = 10;
const HEIGHT: u32 = 3;
const SEQUENCE: u64 = 5;
const TIMESTAMP_US: u64 = 1_700_000_000_000_000;
const CRC: u32 = 0xD593_7D2A;
/// The 10x3 mask of the example, row by row, packed MSB-first with rows padded to a byte.
const MASK: [&str; 3] = ["1011001111", "0100000001", "1111111111"];

fn doc() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/PROTOCOL.md");
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

fn parse_hex(text: &str) -> Vec<u8> {
    text.split_whitespace()
        .map(|t| u8::from_str_radix(t, 16).unwrap_or_else(|_| panic!("not a hex byte: {t:?}")))
        .collect()
}

/// The messages between the markers, one per blank-line-separated paragraph.
fn example_messages(doc: &str) -> Vec<Vec<u8>> {
    let begin = "<!-- protocol-example:begin -->";
    let end = "<!-- protocol-example:end -->";
    let start = doc.find(begin).expect("begin marker in PROTOCOL.md") + begin.len();
    let stop = start + doc[start..].find(end).expect("end marker in PROTOCOL.md");
    let body = doc[start..stop].replace("```", "");
    body.split("\n\n")
        .map(parse_hex)
        .filter(|m| !m.is_empty())
        .collect()
}

fn pack(mask: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    for row in mask {
        let mut bytes = vec![0u8; row.len().div_ceil(8)];
        for (i, c) in row.bytes().enumerate() {
            if c == b'1' {
                bytes[i / 8] |= 0x80 >> (i % 8);
            }
        }
        out.extend(bytes);
    }
    out
}

fn documented_header() -> Header {
    let mut h = Header::new(WIDTH, HEIGHT, SEQUENCE, CODEC_RAW, 6);
    h.timestamp_us = TIMESTAMP_US;
    h
}

#[test]
fn example_decodes_to_the_documented_fields() {
    let msgs = example_messages(&doc());
    assert_eq!(
        msgs.len(),
        2,
        "expected a hello and a frame, got {msgs:02x?}"
    );
    let stream: Vec<u8> = msgs.concat();
    let mut r = FrameReader::new(&stream[..], Limits::default());
    let hello = r
        .read_hello()
        .unwrap()
        .expect("the example starts with a hello");
    assert_eq!(hello.name(), NAME);
    let f = r.read_frame().unwrap().expect("one frame");
    assert_eq!(f.header, documented_header());
    assert_eq!(f.payload, &pack(&MASK)[..]);
    assert_eq!(f.payload, [0xb3, 0xc0, 0x40, 0x40, 0xff, 0xc0]);
    let frame = &msgs[1];
    assert_eq!(
        u32::from_le_bytes(frame[36..40].try_into().unwrap()),
        CRC,
        "the CRC stated in the text"
    );
    assert!(
        r.read_frame().unwrap().is_none(),
        "clean end after the frame"
    );
}

#[test]
fn encoding_the_documented_fields_gives_the_example_bytes() {
    let msgs = example_messages(&doc());
    assert_eq!(Hello::new(NAME).unwrap().encode(), msgs[0]);
    let mut out = Vec::new();
    encode_frame(&documented_header(), &pack(&MASK), &mut out);
    assert_eq!(out, msgs[1]);
    assert_eq!(out.len(), HEADER_LEN + 6);
}

#[test]
fn header_byte_table_matches_the_example() {
    let doc = doc();
    let msgs = example_messages(&doc);
    let frame = &msgs[1];
    let section = &doc[doc
        .find("## Worked example")
        .expect("worked example section")..];
    let mut covered = 0;
    for line in section.lines() {
        // rows like: | 8      | `0a 00 00 00`             | width 10 |
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let (Some(off), Some(hex)) = (cells.get(1), cells.get(2)) else {
            continue;
        };
        let (Ok(off), Some(hex)) = (off.parse::<usize>(), hex.strip_prefix('`')) else {
            continue;
        };
        let bytes = parse_hex(hex.trim_end_matches('`'));
        assert_eq!(
            &frame[off..off + bytes.len()],
            &bytes[..],
            "table row at offset {off}: {line}"
        );
        covered += bytes.len();
    }
    assert_eq!(covered, frame.len(), "the table covers every byte once");
}
