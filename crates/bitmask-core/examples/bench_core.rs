//! Times the core kernels on one 1024x768 frame; used by `cargo xtask bench`.
//!
//! Usage: bench_core RGB_FILE WIDTH HEIGHT
//! RGB_FILE holds WIDTH*HEIGHT*3 bytes. Prints `name median_us` lines.

use bitmask_core::*;
use std::hint::black_box;
use std::time::Instant;

fn median_us(mut f: impl FnMut()) -> f64 {
    // calibrate to ~20 ms per sample, 15 samples, median
    let mut iters = 1u32;
    loop {
        let t = Instant::now();
        for _ in 0..iters {
            f();
        }
        if t.elapsed().as_secs_f64() > 0.02 || iters > 1 << 20 {
            break;
        }
        iters *= 2;
    }
    let mut v: Vec<f64> = (0..15)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..iters {
                f();
            }
            t.elapsed().as_secs_f64() * 1e6 / iters as f64
        })
        .collect();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: bench_core RGB_FILE WIDTH HEIGHT");
        std::process::exit(2);
    }
    let fail = |why: String| -> ! {
        eprintln!("bench_core: {why}");
        std::process::exit(2)
    };
    let rgb = std::fs::read(&args[1]).unwrap_or_else(|e| fail(format!("{}: {e}", args[1])));
    let (w, h): (usize, usize) = match (args[2].parse(), args[3].parse()) {
        (Ok(w), Ok(h)) => (w, h),
        _ => fail(format!("{}x{}: not a size", args[2], args[3])),
    };
    match w.checked_mul(h).and_then(|n| n.checked_mul(3)) {
        Some(n) if n == rgb.len() && n > 0 => {}
        n => fail(format!(
            "{} holds {} B, a {w}x{h} RGB image {}",
            args[1],
            rgb.len(),
            n.map_or("more than memory holds".into(), |n| format!("{n} B"))
        )),
    }
    let gray: Vec<u8> = rgb.chunks_exact(3).map(|p| p[2]).collect();
    let bits01: Vec<u8> = gray.iter().map(|&v| (v >= 170) as u8).collect();
    let mut packed = vec![0u8; packed_len(w, h)];
    let mut unpacked = vec![0u8; w * h];

    let gimg = ImageRef::new(&gray, w, h, PixelFormat::Gray8).unwrap();
    let cimg = ImageRef::new(&rgb, w, h, PixelFormat::Rgb8).unwrap();
    let blue = Params::new(Channel::Blue, 170);
    let luma = Params::new(Channel::Luma, 128);

    let r = median_us(|| threshold_pack(black_box(&gimg), &blue, &mut packed).unwrap());
    println!("threshold_pack_gray8 {r:.2}");
    let r = median_us(|| threshold_pack(black_box(&cimg), &blue, &mut packed).unwrap());
    println!("threshold_pack_rgb8_blue {r:.2}");
    let r = median_us(|| threshold_pack(black_box(&cimg), &luma, &mut packed).unwrap());
    println!("threshold_pack_rgb8_luma {r:.2}");
    let r = median_us(|| pack_rows(black_box(&bits01), w, h, &mut packed).unwrap());
    println!("pack_rows_01 {r:.2}");
    threshold_pack(&cimg, &blue, &mut packed).unwrap();
    let r = median_us(|| unpack_rows(black_box(&packed), w, h, &mut unpacked).unwrap());
    println!("unpack_rows {r:.2}");
    let r = median_us(|| {
        black_box(crc32fast::hash(black_box(&packed)));
    });
    println!("crc32 {r:.2}");
}
