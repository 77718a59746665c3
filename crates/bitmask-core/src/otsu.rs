//! Histogram and Otsu's threshold, as scikit-image computes it.

use crate::{kernels::luma_of, Channel, ImageRef, PixelFormat};

/// Histogram of the values `channel` takes over `img` (luma as in [`crate::luma`]).
pub fn histogram(img: &ImageRef<'_>, channel: Channel) -> [u32; 256] {
    let mut h = [0u32; 256];
    let bpp = img.format().bytes_per_pixel();
    for y in 0..img.height() {
        let row = img.row(y);
        if img.format() == PixelFormat::Gray8 {
            row.iter().for_each(|&v| h[v as usize] += 1);
        } else {
            for p in row.chunks_exact(bpp) {
                h[luma_of(p, img.format(), channel) as usize] += 1;
            }
        }
    }
    h
}

/// Otsu's threshold of a histogram, exactly as `skimage.filters.threshold_otsu`
/// on a uint8 image: returns `t` such that the foreground is `value > t`,
/// so the bitmask rule `value >= threshold` takes `threshold = t + 1`.
/// Returns `None` for an empty histogram. A single-valued image returns that value.
pub fn otsu_threshold(hist: &[u32; 256]) -> Option<u8> {
    let lo = hist.iter().position(|&c| c > 0)?;
    let hi = hist.iter().rposition(|&c| c > 0)?;
    if lo == hi {
        return Some(lo as u8);
    }
    let counts = &hist[lo..=hi];
    let n = counts.len();
    // weight1/mean1 from the left, weight2/mean2 from the right, in f64 as numpy does
    // (on the stack: n <= 256, no allocation per frame).
    let mut w1 = [0f64; 256];
    let mut m1 = [0f64; 256];
    let (mut cw, mut cm) = (0f64, 0f64);
    for i in 0..n {
        cw += counts[i] as f64;
        cm += counts[i] as f64 * (lo + i) as f64;
        w1[i] = cw;
        m1[i] = cm / cw;
    }
    let mut w2 = [0f64; 256];
    let mut m2 = [0f64; 256];
    let (mut cw, mut cm) = (0f64, 0f64);
    for i in (0..n).rev() {
        cw += counts[i] as f64;
        cm += counts[i] as f64 * (lo + i) as f64;
        w2[i] = cw;
        m2[i] = cm / cw;
    }
    let mut best = 0usize;
    let mut best_v = f64::NEG_INFINITY;
    for i in 0..n - 1 {
        let d = m1[i] - m2[i + 1];
        // same operation order as skimage: (weight1 * weight2) * (mean1 - mean2)**2
        let v = (w1[i] * w2[i + 1]) * (d * d);
        // numpy.argmax: the first maximum wins
        if v > best_v {
            best_v = v;
            best = i;
        }
    }
    Some((lo + best) as u8)
}
