//! `seeds DIR`: writes the seed inputs of every target into `DIR/<target>/`:
//! the committed codec vectors, key and delta payloads of every codec for
//! edge-case dimensions, small structured inputs, a wire stream.
use bitmask_codec::{Choice, Encoder};
use bitmask_fuzz::*;
use std::fs;

fn put(t: &str, name: &str, d: &[u8]) {
    let dir = format!("{}/{t}", out());
    fs::create_dir_all(&dir).unwrap();
    fs::write(format!("{dir}/{name}"), d).unwrap();
}

fn out() -> String {
    std::env::args().nth(1).expect("usage: seeds DIR")
}

fn main() {
    let v = concat!(env!("CARGO_MANIFEST_DIR"), "/../crates/codec/tests/vectors");
    let mut n = 0;
    // codec_decode: [sel, flags, refmode, kind, dens, forge] + payload  (refmode 3 = object_00, 256x192)
    for f in ["object_00.blv", "otsu_camera.blv", "otsu_page.blv"] {
        let p = fs::read(format!("{v}/{f}")).unwrap();
        let mut s = vec![1u8, 0, 3, 0, 0, 0];
        s.extend_from_slice(&p);
        put("codec_decode", f, &s);
    }
    let p = fs::read(format!("{v}/object_01.delta.blv")).unwrap();
    let mut s = vec![1u8, 1, 3, 0, 0, 0];
    s.extend_from_slice(&p);
    put("codec_decode", "object_01.delta", &s);
    // generated: key + delta payloads of every codec, dims via dims()
    for (a, c) in [
        (0u8, 5u8),
        (1, 9),
        (2, 0),
        (3, 3),
        (4, 100),
        (5, 3),
        (6, 1),
        (7, 40),
        (0x1C, 7),
        (0x64, 200),
    ] {
        let ac = [a, c];
        let mut bb = Bytes::new(&ac);
        let (w, h) = dims(&mut bb);
        for choice in [Choice::Bilevel, Choice::Zstd, Choice::Lz4, Choice::Raw] {
            let mut rng = Rng(n as u64);
            let m0 = gen_mask(&mut rng, w, h, 5, 3);
            let mut m1 = shift(&m0, w, h, 1, 1, false);
            clear_padding(&mut m1, w);
            let mut enc = Encoder::new(choice, 0);
            let (mut p0, mut p1) = (Vec::new(), Vec::new());
            let e0 = enc.encode(&m0, w, h, 4, &mut p0).unwrap();
            let e1 = enc.encode(&m1, w, h, 5, &mut p1).unwrap();
            // key frame alone; delta against a bilevel key (refmode 1) of the same generator
            let mut s = vec![e0.codec, e0.flags, 0, a, c, 5, 3, 0];
            s.extend_from_slice(&p0);
            put("codec_decode", &format!("gen{n}_key"), &s);
            let mut s = vec![e1.codec, e1.flags, 1, a, c, 5, 3, 0];
            s.extend_from_slice(&p1);
            put("codec_decode", &format!("gen{n}_delta"), &s);
            n += 1;
        }
    }
    // codec_mutate / roundtrip / codec_diff / wire_msgs: small structured seeds
    for i in 0..40u8 {
        let s: Vec<u8> = (0..24u8)
            .map(|k| i.wrapping_mul(37).wrapping_add(k.wrapping_mul(11)))
            .collect();
        put("codec_mutate", &format!("s{i}"), &s);
        put("roundtrip", &format!("s{i}"), &s);
        put("codec_diff", &format!("s{i}"), &s);
        let long: Vec<u8> = (0..64u8)
            .map(|k| i.wrapping_mul(53).wrapping_add(k.wrapping_mul(29)))
            .collect();
        put("wire_msgs", &format!("s{i}"), &long);
    }
    // wire_reassembly: two or three frames (small, a MAX_GAP one, one near
    // 2^64), their datagrams in order, backwards, interleaved, with time
    // passing and a refusal; op 4 picks pool[u16]
    for i in 0..12u16 {
        let mut s = vec![2u8];
        for (sel, seq, len, stride) in [
            (0u8, i as u8, 300 + i * 40, 100u16),
            (2, 1, 900, 128),
            (1, 0, 64, 30),
        ] {
            s.extend_from_slice(&[sel, seq]);
            s.extend_from_slice(&(len - 1).to_le_bytes());
            s.extend_from_slice(&(stride - 1).to_le_bytes());
        }
        let n = 24u16;
        for k in 0..n {
            let pick = match i % 3 {
                0 => k,
                1 => n - 1 - k,
                _ => (k * 7) % n,
            };
            let op = if k == 5 && i % 4 == 3 { 0x84u8 } else { 4 };
            s.push(op);
            s.extend_from_slice(&pick.to_le_bytes());
            if k == 12 && i % 5 == 4 {
                s.extend_from_slice(&[0, 70]); // 280 ms pass
            }
        }
        put("wire_reassembly", &format!("s{i}"), &s);
    }
    // wire: a stream of frames with a hello
    let mut st = vec![0x10u8, 0, 0];
    st.extend_from_slice(&bitmask_wire::Hello::new("cam").unwrap().encode());
    for k in 0..3u64 {
        let payload = vec![0xA5u8; 2 * 3];
        let hd = bitmask_wire::Header::new(9, 3, k, 0, payload.len() as u32);
        bitmask_wire::encode_frame(&hd, &payload, &mut st);
        let hd = bitmask_wire::Header::new(64, 2, k, 1, 5);
        bitmask_wire::encode_frame(&hd, &[1, 2, 3, 4, 5], &mut st);
    }
    put("wire_reader", "stream", &st);
    let mut d = vec![0x01u8, 64, 64, 0, 0];
    d.extend_from_slice(
        &bitmask_wire::udp::Datagram {
            kind: 0,
            index: 1,
            count: 2,
            stride: 30,
            stream_id: 1,
            sequence: 2,
            frame_len: 50,
        }
        .encode(),
    );
    d.extend_from_slice(&[0; 20]);
    put("wire_reader", "dgram", &d);
    println!("{n} generated codec seeds");
}
