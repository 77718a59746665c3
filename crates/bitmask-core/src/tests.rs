//! Every fast path against a plain scalar reference.

use super::*;
use crate::kernels::RowKernel;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// The definition, one pixel at a time.
fn reference(img: &ImageRef<'_>, p: &Params) -> Vec<u8> {
    let stride = packed_stride(img.width());
    let mut out = vec![0u8; stride * img.height()];
    let bpp = img.format().bytes_per_pixel();
    for y in 0..img.height() {
        for x in 0..img.width() {
            let px = &img.row(y)[x * bpp..x * bpp + bpp];
            let v = kernels::luma_of(px, img.format(), p.channel) as u16;
            let bit = (v >= p.threshold) != p.invert;
            if bit {
                out[y * stride + x / 8] |= 0x80 >> (x % 8);
            }
        }
    }
    out
}

const FORMATS: [PixelFormat; 4] = [
    PixelFormat::Gray8,
    PixelFormat::Rgb8,
    PixelFormat::Bgr8,
    PixelFormat::Rgba8,
];
const CHANNELS: [Channel; 4] = [Channel::Red, Channel::Green, Channel::Blue, Channel::Luma];

#[test]
fn every_path_matches_reference() {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    for width in (1..=200).chain([255, 256, 257, 1023, 1024]) {
        for &format in &FORMATS {
            let bpp = format.bytes_per_pixel();
            let height = 3;
            let stride = width * bpp + (rng.next() % 5) as usize;
            let data = rng.bytes(stride * height);
            let img = ImageRef::with_stride(&data, width, height, stride, format).unwrap();
            for &channel in &CHANNELS {
                for threshold in [0u16, 1, 2, 127, 128, 129, 170, 254, 255, 256] {
                    for invert in [false, true] {
                        let p = Params {
                            channel,
                            threshold,
                            invert,
                        };
                        let want = reference(&img, &p);
                        let mut got = vec![0xAAu8; want.len()];
                        threshold_pack(&img, &p, &mut got).unwrap();
                        assert_eq!(
                            got, want,
                            "{format} {channel} w={width} t={threshold} inv={invert}"
                        );
                        // and the portable (ARM) path
                        let k = RowKernel::select(format, channel).portable();
                        let ps = packed_stride(width);
                        let mut got2 = vec![0x55u8; want.len()];
                        for (y, dst) in got2.chunks_exact_mut(ps).enumerate() {
                            k.run(img.row(y), width, threshold, invert, dst);
                        }
                        assert_eq!(
                            got2, want,
                            "portable {format} {channel} w={width} t={threshold}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn gray_compare_is_exact_for_all_byte_pairs() {
    for t in 1..=255u16 {
        let vals: Vec<u8> = (0..=255).collect();
        let img = ImageRef::new(&vals, 256, 1, PixelFormat::Gray8).unwrap();
        let mut got = [0u8; 32];
        let k = RowKernel::select(PixelFormat::Gray8, Channel::Luma).portable();
        k.run(img.row(0), 256, t, false, &mut got);
        assert_eq!(
            got.to_vec(),
            reference(&img, &Params::new(Channel::Luma, t)),
            "t={t}"
        );
    }
}

#[test]
fn pack_unpack_roundtrip_and_numpy_semantics() {
    let mut rng = Rng(99);
    for n in 0..300usize {
        // numpy.packbits treats any nonzero byte as 1
        let bits: Vec<u8> = (0..n)
            .map(|_| {
                if rng.next() % 3 == 0 {
                    0
                } else {
                    rng.next() as u8 | 1
                }
            })
            .collect();
        let mut packed = vec![0u8; n.div_ceil(8)];
        pack_bits(&bits, BitOrder::MsbFirst, &mut packed).unwrap();
        let mut back = vec![9u8; n];
        unpack_bits(&packed, BitOrder::MsbFirst, &mut back).unwrap();
        let want: Vec<u8> = bits.iter().map(|&b| (b != 0) as u8).collect();
        assert_eq!(back, want);
        // LSB-first is the bit-reversal of MSB-first per byte
        let mut lsb = vec![0u8; packed.len()];
        pack_bits(&bits, BitOrder::LsbFirst, &mut lsb).unwrap();
        for (a, b) in lsb.iter().zip(&packed) {
            assert_eq!(a.reverse_bits(), *b);
        }
        unpack_bits(&lsb, BitOrder::LsbFirst, &mut back).unwrap();
        assert_eq!(back, want);
    }
    // a longer input is fine, a shorter one says how short
    let mut back = [0u8; 9];
    unpack_bits(&[0xff, 0x80, 0x55], BitOrder::MsbFirst, &mut back).unwrap();
    assert_eq!(back, [1; 9]);
    assert!(matches!(
        unpack_bits(&[0xff], BitOrder::MsbFirst, &mut back),
        Err(CoreError::BufferTooShort {
            needed: 2,
            actual: 1,
            ..
        })
    ));
}

#[test]
fn rows_flat_and_gray8() {
    let mut rng = Rng(7);
    for (w, h) in [(1, 1), (7, 3), (9, 2), (8, 4), (13, 5), (64, 2), (67, 3)] {
        let bits: Vec<u8> = (0..w * h).map(|_| (rng.next() & 1) as u8).collect();
        let mut rows = vec![0u8; packed_len(w, h)];
        pack_rows(&bits, w, h, &mut rows).unwrap();
        let mut flat = vec![0u8; (w * h).div_ceil(8)];
        repack_rows_to_flat(&rows, w, h, &mut flat).unwrap();
        let mut flat_ref = vec![0u8; flat.len()];
        pack_bits(&bits, BitOrder::MsbFirst, &mut flat_ref).unwrap();
        assert_eq!(flat, flat_ref, "{w}x{h}");
        let mut un = vec![0u8; w * h];
        unpack_rows(&rows, w, h, &mut un).unwrap();
        assert_eq!(un, bits);
        unpack_rows_gray8(&rows, w, h, &mut un).unwrap();
        assert!(un.iter().zip(&bits).all(|(g, b)| *g == *b * 255));
        // padding bits are zero
        let s = packed_stride(w);
        if w % 8 != 0 {
            for r in rows.chunks(s) {
                assert_eq!(r[s - 1] & (0xff >> (w % 8)), 0);
            }
        }
    }
}

#[test]
fn pixel_counts_past_the_limit_are_refused_before_any_arithmetic() {
    // 2^20 x 2^20 would wrap a 32-bit usize to 0 (and an empty buffer
    // would then "fit").
    let big = MAX_DIMENSION;
    let e = pack_rows(&[], big, big, &mut []).unwrap_err();
    assert_eq!(
        e,
        CoreError::InvalidDimensions {
            width: big,
            height: big
        }
    );
    assert!(e.to_string().contains("at most 4294967295 pixels"), "{e}");
    assert!(unpack_rows(&[], 1 << 16, 1 << 16, &mut []).is_err());
    // dimensions whose product passes u64 (usize::MAX x 2 on a 64-bit
    // target): refused, not an overflow panic in a debug build
    for (w, h) in [(usize::MAX, 2), (2, usize::MAX), (usize::MAX, usize::MAX)] {
        let want = CoreError::InvalidDimensions {
            width: w,
            height: h,
        };
        assert_eq!(pack_rows(&[], w, h, &mut []).unwrap_err(), want);
        assert_eq!(
            ImageRef::new(&[], w, h, PixelFormat::Gray8).unwrap_err(),
            want
        );
        assert_eq!(unpack_rows(&[], w, h, &mut []).unwrap_err(), want);
    }
    // one row less fits the limit: the buffers are what is wrong then
    assert!(matches!(
        repack_rows_to_flat(&[], 1 << 16, (1 << 16) - 1, &mut []).unwrap_err(),
        CoreError::BufferSize { .. }
    ));
}

#[test]
fn errors_carry_values() {
    let d = [0u8; 10];
    assert_eq!(
        ImageRef::new(&d, 0, 5, PixelFormat::Gray8).unwrap_err(),
        CoreError::InvalidDimensions {
            width: 0,
            height: 5
        }
    );
    assert_eq!(
        ImageRef::new(&d, 4, 3, PixelFormat::Gray8).unwrap_err(),
        CoreError::BufferTooShort {
            what: "image",
            needed: 12,
            actual: 10
        }
    );
    assert_eq!(
        ImageRef::new(&d, 4, 3, PixelFormat::Gray8)
            .unwrap_err()
            .to_string(),
        "image buffer holds 10 B, needs at least 12 B"
    );
    assert_eq!(
        ImageRef::with_stride(&d, 4, 2, 3, PixelFormat::Gray8).unwrap_err(),
        CoreError::StrideTooSmall { stride: 3, min: 4 }
    );
    // (10x2 is a fine size: the stride is what cannot be)
    assert_eq!(
        ImageRef::with_stride(&d, 10, 2, usize::MAX, PixelFormat::Gray8).unwrap_err(),
        CoreError::StrideTooLarge {
            stride: usize::MAX,
            height: 2
        }
    );
    let img = ImageRef::new(&d, 5, 2, PixelFormat::Gray8).unwrap();
    let mut out = [0u8; 3];
    assert_eq!(
        threshold_pack(&img, &Params::new(Channel::Luma, 1), &mut out).unwrap_err(),
        CoreError::BufferSize {
            what: "output",
            expected: 2,
            actual: 3
        }
    );
}

#[test]
fn otsu_bimodal_and_constant() {
    let mut h = [0u32; 256];
    h[10] = 100;
    h[200] = 100;
    let t = otsu_threshold(&h).unwrap();
    assert!((10..200).contains(&t), "{t}");
    let mut c = [0u32; 256];
    c[42] = 5;
    assert_eq!(otsu_threshold(&c), Some(42));
    assert_eq!(otsu_threshold(&[0; 256]), None);
}

/// Vectors made by numpy itself (`cargo xtask vectors`), committed so that
/// `cargo test` checks bit-exactness without Python.
#[test]
fn numpy_vectors() {
    let text = include_str!("../tests/numpy_vectors.txt");
    let mut n = 0;
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        // w h threshold gray_hex packbits_axis1_hex packbits_flat_hex
        let f: Vec<&str> = line.split_whitespace().collect();
        let (w, h, t): (usize, usize, u16) = (
            f[0].parse().unwrap(),
            f[1].parse().unwrap(),
            f[2].parse().unwrap(),
        );
        let gray = hex(f[3]);
        let img = ImageRef::new(&gray, w, h, PixelFormat::Gray8).unwrap();
        let mut rows = vec![0u8; packed_len(w, h)];
        threshold_pack(&img, &Params::new(Channel::Luma, t), &mut rows).unwrap();
        assert_eq!(rows, hex(f[4]), "axis=1 {w}x{h}");
        let mut flat = vec![0u8; (w * h).div_ceil(8)];
        repack_rows_to_flat(&rows, w, h, &mut flat).unwrap();
        assert_eq!(flat, hex(f[5]), "flat {w}x{h}");
        n += 1;
    }
    assert!(n >= 5, "only {n} vectors");
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}
