use super::*;
use crate::bilevel::{render_row, row_transitions};

/// Deterministic xorshift for test data.
pub(crate) struct Rng(u64);
impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn stride(w: u32) -> usize {
    (w as usize).div_ceil(8)
}

/// A blobby mask: a few discs plus some noise.
fn blobs(w: u32, h: u32, seed: u64, noise: u32) -> Vec<u8> {
    let mut rng = Rng(seed | 1);
    let discs: Vec<(i64, i64, i64)> = (0..6)
        .map(|_| {
            (
                (rng.next() % w as u64) as i64,
                (rng.next() % h as u64) as i64,
                (rng.next() % (w.max(h) as u64 / 3 + 2)) as i64,
            )
        })
        .collect();
    let mut m = vec![0u8; stride(w) * h as usize];
    for y in 0..h as i64 {
        for x in 0..w as i64 {
            let mut on = discs
                .iter()
                .any(|&(cx, cy, r)| (x - cx).pow(2) + (y - cy).pow(2) <= r * r);
            if noise > 0 && rng.next() % 1000 < noise as u64 {
                on = !on;
            }
            if on {
                m[y as usize * stride(w) + x as usize / 8] |= 0x80 >> (x % 8);
            }
        }
    }
    m
}

/// Encodes `frames` as a stream and decodes it with the default decoder and
/// with two whose transition-list budget forces rows into the two-slot ring
/// and references kept packed (always, and for the busier frames): every
/// decoder must give back every frame.
fn roundtrip(choice: Choice, frames: &[Vec<u8>], w: u32, h: u32, interval: u32) -> Vec<usize> {
    let mut enc = Encoder::new(choice, interval);
    let mut dec = Decoder::new();
    let mut lean = [Decoder::new(), Decoder::new()];
    lean[0].set_list_budget(1);
    lean[1].set_list_budget((w as usize * h as usize / 16).max(1));
    let mut sizes = Vec::new();
    for (i, f) in frames.iter().enumerate() {
        let mut out = vec![0xAA; 40];
        let e = enc.encode(f, w, h, i as u64 * 3, &mut out).unwrap();
        assert_eq!(&out[..40], &[0xAA; 40][..]);
        let payload = &out[40..];
        assert!(payload.len() <= f.len());
        if e.codec == CODEC_RAW {
            assert_eq!(payload, &f[..]);
        }
        let mut back = vec![0x55u8; f.len()];
        dec.decode(&e, payload, &mut back)
            .unwrap_or_else(|err| panic!("frame {i} {e:?}: {err}"));
        assert_eq!(&back, f, "frame {i} codec {e:?}");
        for (k, d) in lean.iter_mut().enumerate() {
            back.fill(0x55);
            d.decode(&e, payload, &mut back)
                .unwrap_or_else(|err| panic!("budget {k}, frame {i} {e:?}: {err}"));
            assert_eq!(&back, f, "budget {k}, frame {i} codec {e:?}");
        }
        sizes.push(payload.len());
    }
    sizes
}

#[test]
fn transitions_and_render() {
    for w in [1u32, 7, 8, 9, 63, 64, 65, 130] {
        let mut rng = Rng(w as u64 + 11);
        for _ in 0..50 {
            let mut row: Vec<u8> = (0..stride(w)).map(|_| rng.next() as u8).collect();
            clear_padding(&mut row, w);
            let mut tr = Vec::new();
            row_transitions(&row, w, &mut tr);
            // Compare with a pixel loop.
            let mut expect = Vec::new();
            let mut last = 0;
            for x in 0..w as usize {
                let b = (row[x / 8] >> (7 - x % 8)) & 1;
                if b != last {
                    expect.push(x as u32);
                    last = b;
                }
            }
            assert_eq!(tr, expect);
            let mut back = vec![0xA5u8; row.len()];
            render_row(&tr, w, &mut back);
            assert_eq!(back, row);
        }
    }
}

#[test]
fn all_choices_roundtrip_odd_sizes() {
    for (w, h) in [(1u32, 1u32), (3, 2), (9, 5), (64, 64), (100, 37), (257, 19)] {
        let frames: Vec<Vec<u8>> = (0..5)
            .map(|k| {
                let mut m = blobs(w, h, 7 + k / 2, if k == 4 { 50 } else { 0 });
                clear_padding(&mut m, w);
                m
            })
            .collect();
        for c in Choice::available() {
            for interval in [0, 1, 2, 30] {
                roundtrip(c, &frames, w, h, interval);
            }
        }
    }
}

#[test]
fn extreme_content() {
    let (w, h) = (200u32, 50u32);
    let s = stride(w);
    let mut check = vec![0u8; s * h as usize];
    for y in 0..h as usize {
        for b in 0..s {
            check[y * s + b] = if y % 2 == 0 { 0xAA } else { 0x55 };
        }
    }
    clear_padding(&mut check, w);
    let mut full = vec![0xFFu8; s * h as usize];
    clear_padding(&mut full, w);
    let empty = vec![0u8; s * h as usize];
    let mut noise: Vec<u8> = {
        let mut r = Rng(99);
        (0..s * h as usize).map(|_| r.next() as u8).collect()
    };
    clear_padding(&mut noise, w);
    let frames = vec![check, full, empty.clone(), noise, empty];
    for c in Choice::available() {
        roundtrip(c, &frames, w, h, 0);
    }
}

/// A few dozen bytes can describe a frame with a transition at every
/// pixel (identical rows of stripes): the decoder must not hold it as
/// transition lists (4 bytes per transition, for the frame and again for
/// its reference) but as packed rows, and delta frames against it must
/// still decode.
#[test]
fn busy_frames_are_kept_packed() {
    let (w, h) = (1024u32, 256u32);
    let s = stride(w);
    let stripes = vec![0xAAu8; s * h as usize];
    let shifted = vec![0x55u8; s * h as usize];
    let mut enc = Encoder::new(Choice::Bilevel, 0);
    let mut dec = Decoder::new();
    let mut back = vec![0u8; stripes.len()];
    for (i, f) in [&stripes, &shifted, &stripes].into_iter().enumerate() {
        let mut p = Vec::new();
        let e = enc.encode(f, w, h, i as u64, &mut p).unwrap();
        assert_eq!(e.flags != 0, i > 0, "frame {i} is a delta frame");
        assert!(p.len() < 200, "frame {i}: {} B", p.len());
        dec.decode(&e, &p, &mut back).unwrap();
        assert_eq!(&back, f, "frame {i}");
        // 262,144 transitions; the lists keep at most twice the frame's
        // bytes in entries (plus one row), and the reference is packed.
        let cap = 2 * stripes.len() + w as usize + 8;
        assert!(dec.cur.tr.len() <= cap, "{} entries", dec.cur.tr.len());
        assert!(dec.prev.tr.len() <= cap, "{} entries", dec.prev.tr.len());
        assert!(dec.prev_packed, "frame {i}");
        assert_eq!(dec.reference(), Some(i as u64));
    }
    // A frame with few transitions is kept as lists again.
    let mut calm = vec![0u8; s * h as usize];
    calm[s * 10] = 0x80;
    let mut p = Vec::new();
    let e = enc.encode(&calm, w, h, 3, &mut p).unwrap();
    dec.decode(&e, &p, &mut back).unwrap();
    assert_eq!(back, calm);
    assert!(!dec.prev_packed);
}

/// Hostile payloads through the two-slot ring and packed references (the
/// fuzz suite's decoders keep lists): mutated key and delta payloads must
/// give Ok or Err, never a panic, with the reference held packed.
#[test]
fn mutated_payloads_on_packed_references() {
    let (w, h) = (96u32, 40u32);
    let frames: Vec<Vec<u8>> = (0..3).map(|k| blobs(w, h, 7 + k, 30)).collect();
    let mut enc = Encoder::new(Choice::Bilevel, 0);
    let payloads: Vec<(Vec<u8>, FrameInfo)> = frames
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let mut p = Vec::new();
            let e = enc.encode(f, w, h, i as u64, &mut p).unwrap();
            (p, e)
        })
        .collect();
    assert!(payloads[1].1.flags != 0 && payloads[2].1.flags != 0);
    let mut rng = Rng(12345);
    let mut back = vec![0u8; frames[0].len()];
    for round in 0..3000 {
        let i = 1 + round % 2;
        let mut d = Decoder::new();
        d.set_list_budget(1 + (round % 3) * 200);
        d.decode(
            &FrameInfo {
                codec: CODEC_BILEVEL,
                flags: 0,
                sequence: 0,
                width: w,
                height: h,
            },
            &payloads[0].0,
            &mut back,
        )
        .unwrap();
        if i == 2 {
            let (p, e) = &payloads[1];
            d.decode(e, p, &mut back).unwrap();
        }
        let (p, e) = &payloads[i];
        let mut p = p.clone();
        for _ in 0..1 + rng.next() % 4 {
            let at = (rng.next() as usize) % p.len();
            match rng.next() % 3 {
                0 => p[at] ^= (rng.next() as u8) | 1,
                1 => p.insert(at, rng.next() as u8),
                _ => {
                    p.remove(at);
                }
            }
            if p.is_empty() {
                p.push(1);
            }
        }
        let _ = d.decode(e, &p, &mut back);
        assert_eq!(back.len(), frames[0].len());
    }
}

#[test]
fn temporal_is_smaller_on_motion() {
    let (w, h) = (320u32, 240u32);
    let frames: Vec<Vec<u8>> = (0..8)
        .map(|k| {
            let mut m = vec![0u8; stride(w) * h as usize];
            for y in 40..200usize {
                for x in (60 + k * 2)..(200 + k * 2) {
                    if (x as i64 - 130 - k as i64 * 2).pow(2) + (y as i64 - 120).pow(2) < 70 * 70 {
                        m[y * stride(w) + x / 8] |= 0x80 >> (x % 8);
                    }
                }
            }
            m
        })
        .collect();
    let intra: usize = roundtrip(Choice::Bilevel, &frames, w, h, 1).iter().sum();
    let delta: usize = roundtrip(Choice::Bilevel, &frames, w, h, 0).iter().sum();
    assert!(delta < intra, "delta {delta} intra {intra}");
}

#[test]
fn missing_reference_is_rejected() {
    let (w, h) = (64u32, 64u32);
    let f0 = blobs(w, h, 1, 0);
    let mut f1 = f0.clone();
    f1[100] ^= 0x10;
    let mut enc = Encoder::new(Choice::Bilevel, 0);
    let mut p0 = Vec::new();
    let e0 = enc.encode(&f0, w, h, 10, &mut p0).unwrap();
    let mut p1 = Vec::new();
    let e1 = enc.encode(&f1, w, h, 12, &mut p1).unwrap();
    assert_eq!(e1.flags, FLAG_DELTA);
    let mut out = vec![0u8; f0.len()];
    let mut dec = Decoder::new();
    assert_eq!(
        dec.decode(&e1, &p1, &mut out),
        Err(CodecError::MissingReference {
            frame: 12,
            needed: 10,
            held: None
        })
    );
    let e = dec.decode(&e1, &p1, &mut out).unwrap_err().to_string();
    assert!(
        e.starts_with("delta frame 12 needs reference frame 10, and the decoder holds no frame"),
        "{e}"
    );
    let e = dec
        .decode(
            &FrameInfo {
                codec: CODEC_LZ4,
                flags: 0,
                sequence: 12,
                width: w,
                height: h,
            },
            &[0xf0],
            &mut out,
        )
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("codec 3 (lz4): 1 B payload: "), "{e}");
    dec.decode(&e0, &p0, &mut out).unwrap();
    dec.decode(&e1, &p1, &mut out).unwrap();
    assert_eq!(out, f1);
    // Held 12 now; replaying the delta (which needs 10) fails.
    assert_eq!(
        dec.decode(&e1, &p1, &mut out),
        Err(CodecError::MissingReference {
            frame: 12,
            needed: 10,
            held: Some(12)
        })
    );
    // Flag stripped: mismatch, not a wrong image.
    assert!(matches!(
        dec.decode(
            &FrameInfo {
                flags: 0,
                sequence: 12,
                width: w,
                height: h,
                ..e1
            },
            &p1,
            &mut out
        ),
        Err(CodecError::FlagMismatch { .. })
    ));
    // A flag bit no codec defines: refused whatever the codec, even on a
    // payload that would decode (here a key frame's).
    for codec in [CODEC_RAW, CODEC_BILEVEL, CODEC_LZ4, 9] {
        let info = FrameInfo {
            codec,
            flags: 0x02,
            ..e0
        };
        assert_eq!(
            dec.decode(&info, &p0, &mut out),
            Err(CodecError::UnknownFlags { codec, flags: 0x02 })
        );
    }
    assert_eq!(dec.reference(), Some(12), "unchanged by the refusals");
    // Reset forgets.
    dec.reset();
    assert!(matches!(
        dec.decode(&e1, &p1, &mut out),
        Err(CodecError::MissingReference { held: None, .. })
    ));
}

#[test]
fn force_keyframe_and_interval() {
    let (w, h) = (64u32, 16u32);
    let f = blobs(w, h, 3, 0);
    let mut enc = Encoder::new(Choice::Bilevel, 3);
    let mut flags = Vec::new();
    for i in 0..7 {
        if i == 5 {
            enc.force_keyframe();
        }
        let mut out = Vec::new();
        flags.push(enc.encode(&f, w, h, i, &mut out).unwrap().flags);
    }
    assert_eq!(flags, [0, 1, 1, 0, 1, 0, 1]);
}

#[test]
fn choice_parse_display() {
    for &c in Choice::ALL {
        assert_eq!(c.to_string().parse::<Choice>().unwrap(), c);
    }
    assert!("gzip".parse::<Choice>().is_err());
    assert_eq!(Choice::default(), Choice::Auto);
}

#[test]
fn bad_arguments() {
    let mut enc = Encoder::new(Choice::Auto, 1);
    let mut out = Vec::new();
    assert!(matches!(
        enc.encode(&[0u8; 3], 8, 2, 0, &mut out),
        Err(CodecError::BufferSize { .. })
    ));
    assert!(matches!(
        enc.encode(&[], 0, 2, 0, &mut out),
        Err(CodecError::InvalidDimensions { .. })
    ));
    let mut dec = Decoder::new();
    let mut o = [0u8; 2];
    assert!(matches!(
        dec.decode(
            &FrameInfo {
                codec: 9,
                flags: 0,
                sequence: 0,
                width: 8,
                height: 2
            },
            &[1],
            &mut o
        ),
        Err(CodecError::UnknownCodec { codec: 9 })
    ));
    // Dimensions whose packed size passes u32 (2^17 * (2^15 + 1) bytes): a
    // clear error with the values on every target, not an overflow (on a
    // 32-bit target, as the Pi builds, the size does not fit a usize at all;
    // before, a wrapped product could match a small buffer).
    let (w, h) = (1u32 << 20, (1u32 << 15) + 1);
    let wrapped = ((w as u64 / 8 * h as u64) % (1u64 << 32)) as usize;
    let mut small = vec![0u8; wrapped];
    for codec in [CODEC_RAW, CODEC_BILEVEL] {
        let err = dec
            .decode(
                &FrameInfo {
                    codec,
                    flags: 0,
                    sequence: 0,
                    width: w,
                    height: h,
                },
                &[0],
                &mut small,
            )
            .unwrap_err();
        if usize::BITS == 32 {
            assert!(
                matches!(err, CodecError::InvalidDimensions { width, height } if (width, height) == (w, h)),
                "{err}"
            );
        } else {
            assert!(
                matches!(err, CodecError::BufferSize { expected, actual, .. }
                    if expected as u64 == w as u64 / 8 * h as u64 && actual == wrapped),
                "{err}"
            );
        }
    }
    assert!(matches!(
        enc.encode(&small, w, h, 0, &mut out),
        Err(CodecError::InvalidDimensions { .. } | CodecError::BufferSize { .. })
    ));
}

/// A payload of a few dozen bytes may claim the most mode symbols a frame
/// can hold (single-symbol models code them in zero bits): the decoder
/// decodes them (bounded: height * (2 * width + 2)), finds symbols left
/// over after the last row, and refuses the frame; one more is refused
/// before anything is decoded.
#[test]
fn tiny_payload_claiming_every_mode_symbol_is_refused() {
    let (w, h) = (1024u32, 768u32);
    let limit = h as u64 * (2 * w as u64 + 2);
    // A key frame (or a delta frame against sequence 0, no motion) whose
    // models each hold one symbol: V0 (symbol 7) for spatial rows and for
    // temporal ones; runs empty.
    let payload = |n_s: u64, n_t: u64| {
        let mut p = vec![(n_t > 0) as u8];
        if n_t > 0 {
            p.extend_from_slice(&[0; 10]);
        }
        // Models 0-7 (bitmaps; a lone symbol needs no frequency): row mode
        // 0 (spatial) in a key frame; in a delta frame 1 (temporal), also
        // after a temporal row (row-mode context 1).
        if n_t > 0 {
            crate::bits::put_varint(&mut p, 2);
            crate::bits::put_varint(&mut p, 2);
        } else {
            crate::bits::put_varint(&mut p, 1);
            crate::bits::put_varint(&mut p, 0);
        }
        for _ in 2..6 {
            crate::bits::put_varint(&mut p, 0);
        }
        crate::bits::put_varint(&mut p, 1 << 7);
        crate::bits::put_varint(&mut p, if n_t > 0 { 1 << 7 } else { 0 });
        crate::bits::put_varint(&mut p, n_s);
        crate::bits::put_varint(&mut p, n_t);
        // Side stream: two lanes at 2^15 (a lone symbol never moves them).
        crate::bits::put_varint(&mut p, 8);
        for _ in 0..2 {
            p.extend_from_slice(&(1u32 << 15).to_le_bytes());
        }
        // Mode stream: its lanes (16, or 4 below 4096 symbols) at 2^15.
        let lanes = crate::lanes::lanes_for((n_s + n_t) as usize);
        crate::bits::put_varint(&mut p, 4 * lanes as u64);
        for _ in 0..lanes {
            p.extend_from_slice(&(1u32 << 15).to_le_bytes());
        }
        p
    };
    let mut dec = Decoder::new();
    let mut out = vec![0u8; stride(w) * h as usize];
    let key = FrameInfo {
        codec: CODEC_BILEVEL,
        flags: 0,
        sequence: 0,
        width: w,
        height: h,
    };
    for n_s in [limit, limit + 1] {
        let p = payload(n_s, 0);
        assert!(p.len() < 100, "{} B", p.len());
        let err = dec.decode(&key, &p, &mut out).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("left over") || text.contains("more mode symbols"),
            "n_s {n_s}: {text}"
        );
    }
    // The same payload with exactly one symbol per row (each row: V0 on the
    // empty reference = an empty row) is a valid all-zero mask.
    let p = payload(h as u64, 0);
    out.fill(0xFF);
    dec.decode(&key, &p, &mut out).unwrap();
    assert!(out.iter().all(|&b| b == 0));
    // Then a delta frame claiming every symbol for temporal rows: refused,
    // and the symbols of both frames share one buffer (held at most once).
    let p = payload(0, limit);
    assert!(p.len() < 100, "{} B", p.len());
    let err = dec
        .decode(
            &FrameInfo {
                codec: CODEC_BILEVEL,
                flags: FLAG_DELTA,
                sequence: 1,
                width: w,
                height: h,
            },
            &p,
            &mut out,
        )
        .unwrap_err();
    assert!(err.to_string().contains("left over"), "{err}");
    let held = dec.bilevel.symbol_capacity() as u64;
    assert!(
        held <= limit + 2 + 64,
        "{held} B held for mode symbols, limit {limit}"
    );
    assert_eq!(dec.reference(), Some(0));
}

/// A 61x40 mask (3 padding bits per row) and a copy with them set in every row.
fn padding_set_61x40() -> (u32, u32, Vec<u8>, Vec<u8>) {
    let (w, h) = (61u32, 40u32);
    let mask = blobs(w, h, 7, 0);
    let mut dirty = mask.clone();
    for row in dirty.chunks_exact_mut(stride(w)) {
        row[stride(w) - 1] |= 0x07;
    }
    (w, h, mask, dirty)
}

#[test]
fn padding_bits_given_to_the_encoder_are_coded_as_zero() {
    // Width 61: 3 padding bits per row, set in every row, or in one row
    // only. Every codec codes them as 0, raw included (the wire layout has
    // them 0, so a third-party reader never sees them), and the mask decodes
    // with them 0.
    let (w, h, mask, dirty) = padding_set_61x40();
    let mut one_row = mask.clone();
    one_row[39 * stride(w) + 7] |= 0x01;
    for input in [&dirty, &one_row] {
        assert_ne!(input, &mask);
        for choice in Choice::available() {
            let mut enc = Encoder::new(choice, 10);
            let mut dec = Decoder::new();
            let mut out = vec![0u8; mask.len()];
            for seq in 0..3 {
                let mut p = Vec::new();
                let e = enc.encode(input, w, h, seq, &mut p).unwrap();
                if e.codec == CODEC_RAW {
                    assert_eq!(p, mask, "{choice}: a raw payload");
                }
                dec.decode(&e, &p, &mut out).unwrap();
                assert_eq!(out, mask, "{choice}, frame {seq}");
            }
            // and a clean mask after them, as a delta frame where it can be
            let mut p = Vec::new();
            let e = enc.encode(&mask, w, h, 3, &mut p).unwrap();
            dec.decode(&e, &p, &mut out).unwrap();
            assert_eq!(out, mask, "{choice}, a clean frame after them");
        }
    }
}

#[test]
fn padding_bits_set_by_a_payload_are_cleared() {
    // Width 61: 3 padding bits per row. A raw (or zstd, lz4) payload may
    // set them; the decoded mask, and the reference a delta frame is
    // decoded against, have them 0.
    let (w, h, mask, dirty) = padding_set_61x40();
    assert_ne!(dirty, mask);
    let mut out = vec![0u8; mask.len()];
    // (made by the libraries directly: the Encoder clears padding bits)
    let payloads = [
        Some((CODEC_RAW, dirty.clone())),
        Some((CODEC_LZ4, lz4_flex::block::compress(&dirty))),
        #[cfg(feature = "zstd")]
        Some((CODEC_ZSTD, zstd::bulk::compress(&dirty, 1).unwrap())),
    ];
    for (codec, payload) in payloads.iter().flatten() {
        let codec = *codec;
        let mut dec = Decoder::new();
        dec.decode(
            &FrameInfo {
                codec,
                flags: 0,
                sequence: 5,
                width: w,
                height: h,
            },
            payload,
            &mut out,
        )
        .unwrap();
        assert_eq!(out, mask, "codec {codec}");
        // A bilevel delta frame against it decodes to the clean next mask.
        let mut next = mask.clone();
        next[10 * stride(w)..11 * stride(w)].copy_from_slice(&[0xf0; 8]);
        let mut enc = Encoder::new(Choice::Bilevel, 100);
        let mut p = Vec::new();
        enc.encode(&mask, w, h, 5, &mut p).unwrap();
        p.clear();
        let e = enc.encode(&next, w, h, 6, &mut p).unwrap();
        assert_eq!(e.flags & FLAG_DELTA, FLAG_DELTA, "a delta frame");
        dec.decode(&e, &p, &mut out).unwrap();
        assert_eq!(out, next, "codec {codec}, then a delta frame");
    }
}

#[test]
#[cfg(feature = "zstd")]
fn a_zstd_payload_is_one_frame_and_nothing_after_it() {
    // The decompressor alone takes a second frame, or a skippable frame,
    // after the first: bytes that ride along unseen.
    let (w, h, mask, _) = padding_set_61x40();
    let one = zstd::bulk::compress(&mask, 1).unwrap();
    let info = FrameInfo {
        codec: CODEC_ZSTD,
        flags: 0,
        sequence: 0,
        width: w,
        height: h,
    };
    let mut out = vec![0u8; mask.len()];
    Decoder::new().decode(&info, &one, &mut out).unwrap();
    assert_eq!(out, mask);
    let half = mask.len() / 2;
    let two = [
        zstd::bulk::compress(&mask[..half], 1).unwrap(),
        zstd::bulk::compress(&mask[half..], 1).unwrap(),
    ]
    .concat();
    let skippable = [&one[..], &[0x50, 0x2a, 0x4d, 0x18, 0, 0, 0, 0]].concat();
    let garbage = [&one[..], &[0u8][..]].concat();
    for (what, payload) in [
        ("two frames", two),
        ("skippable", skippable),
        ("a zero", garbage),
    ] {
        let e = Decoder::new()
            .decode(&info, &payload, &mut out)
            .expect_err(what)
            .to_string();
        assert!(e.contains("zstd") || e.contains("codec 2"), "{what}: {e}");
    }
}

#[test]
fn the_lz4_bound_is_lz4_flexs_or_none_where_it_would_wrap() {
    for len in [0, 1, 98_304, 1 << 20, 39_045_157] {
        assert_eq!(
            lz4_bound(len),
            Some(lz4_flex::block::get_maximum_output_size(len)),
            "{len}"
        );
    }
    assert_eq!(lz4_bound(usize::MAX / 100), None);
    #[cfg(target_pointer_width = "32")]
    assert_eq!(lz4_bound(39_045_158), None);
}

/// On a 32-bit target (the Pi builds' unit tests under qemu) a mask whose
/// LZ4 bound wraps a `usize`: lz4_flex's own check then passed a buffer
/// too small, and the sender panicked (aborted, in the Pi builds). Sent
/// raw instead.
#[cfg(target_pointer_width = "32")]
#[test]
fn lz4_of_a_40_mb_mask_on_32_bits_is_raw_not_a_panic() {
    let (w, h) = (20_000u32, 16_000u32);
    let mut rng = Rng(0x9e37_79b9);
    let m: Vec<u8> = (0..2_500 * 16_000).map(|_| rng.next() as u8).collect();
    let mut out = Vec::new();
    let f = Encoder::new(Choice::Lz4, 1)
        .encode(&m, w, h, 0, &mut out)
        .unwrap();
    assert_eq!((f.codec, out.len()), (CODEC_RAW, m.len()));
    assert!(out == m);
}

#[test]
fn auto_tries_lz4_and_zstd_less_often_while_they_lose_and_at_once_after_a_win() {
    // Noise: bilevel and the general-purpose codecs all lose (raw). A
    // frame bilevel codes to over an eighth of raw on which they lose.
    let (w, h) = (256u32, 64u32);
    let mut rng = Rng(7);
    let noise: Vec<u8> = (0..stride(w) * h as usize)
        .map(|_| rng.next() as u8)
        .collect();
    let mut e = Encoder::new(Choice::Auto, 1);
    e.set_auto_budget(Duration::from_secs(3600));
    let mut out = Vec::new();
    let mut tried = Vec::new();
    for i in 0..80u64 {
        let skip_before = e.general_skip;
        out.clear();
        let f = e.encode(&noise, w, h, i, &mut out).unwrap();
        assert_eq!(f.codec, CODEC_RAW);
        if skip_before == 0 {
            tried.push(i);
        }
    }
    // 4 in a row, then every 2nd, 4th, 8th, 16th, 32nd frame
    assert_eq!(tried, [0, 1, 2, 3, 5, 9, 17, 33, 65]);
    // a dither that repeats along each row (8 random bytes, 4 times), on
    // which LZ4 and zstd win: tried at the next due frame, then on every
    // such frame again
    let board: Vec<u8> = (0..h as usize)
        .flat_map(|_| {
            let chunk: Vec<u8> = (0..8).map(|_| rng.next() as u8).collect();
            (0..stride(w)).map(move |x| chunk[x % 8])
        })
        .collect();
    let mut won = Vec::new();
    for i in 80..120u64 {
        out.clear();
        let f = e.encode(&board, w, h, i, &mut out).unwrap();
        if matches!(f.codec, CODEC_LZ4 | CODEC_ZSTD) {
            won.push(i);
        }
    }
    // (the 33-frame gap after frame 65 ends at frame 97)
    assert_eq!(won, (97..120).collect::<Vec<_>>());
}
