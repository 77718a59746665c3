//! Deterministic sample images: a moving scene, so the demo needs no files in the repo.

use anyhow::{Context, Result};
use std::path::Path;

/// Writes `n` 1024x768 RGB PNGs `scene-NNN.png` into `dir` (kept if already there).
/// The scene: a dim gradient with a few saturated blue discs that move from
/// frame to frame, and some pixel noise, so `--channel blue --threshold 170`
/// yields discs.
pub fn scene(dir: &Path, n: usize) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (w, h) = (1024u32, 768u32);
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for i in 0..n {
        let path = dir.join(format!("scene-{i:03}.png"));
        if path.exists() {
            continue;
        }
        let t = i as f64 / n.max(1) as f64;
        #[allow(clippy::approx_constant)] // 6.28 (not TAU) keeps the samples as they were
        let discs = [
            (200.0 + 500.0 * t, 300.0, 120.0),
            (800.0 - 300.0 * t, 500.0 + 100.0 * (t * 6.28).sin(), 90.0),
            (512.0, 150.0 + 400.0 * t, 60.0),
        ];
        let mut rgb = Vec::with_capacity(w as usize * h as usize * 3);
        for (x, y) in (0..h).flat_map(|y| (0..w).map(move |x| (x, y))) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let noise = (seed % 24) as i32 - 12;
            let (xf, yf) = (x as f64, y as f64);
            let inside = discs
                .iter()
                .any(|&(cx, cy, r)| (xf - cx).powi(2) + (yf - cy).powi(2) <= r * r);
            let base_b = if inside {
                220
            } else {
                (60.0 + 80.0 * xf / w as f64) as i32
            };
            let b = (base_b + noise).clamp(0, 255) as u8;
            let r = (40.0 + 150.0 * yf / h as f64) as u8;
            let g = (80 + noise).clamp(0, 255) as u8;
            rgb.extend_from_slice(&[r, g, b]);
        }
        write_rgb_png(&path, w, h, &rgb)?;
    }
    Ok(())
}

/// Writes an 8-bit RGB PNG (the `png` crate alone: xtask builds without
/// `image` and its colour management, which the binaries need and xtask
/// does not).
fn write_rgb_png(path: &Path, w: u32, h: u32, rgb: &[u8]) -> Result<()> {
    let what = || format!("writing {}", path.display());
    let f = std::fs::File::create(path).with_context(what)?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(f), w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut wr = enc.write_header().with_context(what)?;
    wr.write_image_data(rgb).with_context(what)?;
    wr.finish().with_context(what)
}

/// Reads an 8-bit RGB PNG such as [`scene`] writes: (width, height, pixels).
pub fn read_rgb_png(path: &Path) -> Result<(u32, u32, Vec<u8>)> {
    let what = || format!("reading {}", path.display());
    let f = std::fs::File::open(path).with_context(what)?;
    let mut r = png::Decoder::new(std::io::BufReader::new(f))
        .read_info()
        .with_context(what)?;
    let mut buf = vec![0; r.output_buffer_size().context("PNG too large")?];
    let info = r.next_frame(&mut buf).with_context(what)?;
    anyhow::ensure!(
        (info.color_type, info.bit_depth) == (png::ColorType::Rgb, png::BitDepth::Eight),
        "{}: {:?} {:?}, not 8-bit RGB",
        path.display(),
        info.color_type,
        info.bit_depth
    );
    buf.truncate(info.buffer_size());
    Ok((info.width, info.height, buf))
}
