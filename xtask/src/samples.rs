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
        let img = image::RgbImage::from_fn(w, h, |x, y| {
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
            image::Rgb([r, g, b])
        });
        img.save(&path)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
