//! Frame sources: image files (decoded with `image`) turned into packed masks.

use crate::ThresholdArg;
use anyhow::{bail, Context, Result};
use bitmask_core::{
    histogram, otsu_threshold, packed_len, threshold_pack, Channel, ImageRef, Params, PixelFormat,
};
use image::DynamicImage;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// How pixels become bits.
#[derive(Debug, Clone, Copy)]
pub struct MaskParams {
    /// Channel compared.
    pub channel: Channel,
    /// Fixed threshold or Otsu.
    pub threshold: ThresholdArg,
    /// Invert the rule.
    pub invert: bool,
}

/// One packed mask, its buffer reused from frame to frame.
#[derive(Debug, Default)]
pub struct Mask {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Capture time, microseconds since the Unix epoch.
    pub timestamp_us: u64,
    /// Packed bits, wire layout.
    pub bits: Vec<u8>,
}

/// Microseconds since the Unix epoch, now.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

const EXTENSIONS: &[&str] = &[
    "png", "bmp", "pbm", "pgm", "ppm", "pnm", "tif", "tiff", "jpg", "jpeg",
];

fn is_image(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .map(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        .unwrap_or(false)
}

/// Expands directories to their image files in name order; checks every path exists.
pub fn expand(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for p in inputs {
        if p.as_os_str() == "-" {
            bail!(
                "`-` (stdin) is a stream of raw frames: give --input-format and --size \
                 (docs/CAMERA.md); image files are named by path"
            );
        }
        let meta =
            std::fs::metadata(p).with_context(|| format!("cannot read input {}", p.display()))?;
        if meta.is_dir() {
            let mut v: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("cannot list directory {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && is_image(p))
                .collect();
            if v.is_empty() {
                bail!(
                    "directory {} holds no image files ({})",
                    p.display(),
                    EXTENSIONS.join(", ")
                );
            }
            v.sort();
            files.extend(v);
        } else {
            files.push(p.clone());
        }
    }
    Ok(files)
}

/// Anything that yields masks one after another (image files, raw camera frames).
pub trait Source {
    /// Produces the next mask into `mask` (its buffer reused); `Ok(false)` at the end of input.
    /// Sets `mask.timestamp_us` to the capture time.
    fn next_mask(&mut self, params: &MaskParams, mask: &mut Mask) -> Result<bool>;

    /// Reads the next frame and leaves it (no mask made): a camera's
    /// frames between two that `--fps` keeps. `Ok(false)` at the end of
    /// input. Sources read at their consumer's pace have nothing to skip.
    fn skip(&mut self) -> Result<bool> {
        Ok(true)
    }
}

/// Image files, in order, optionally looping. Decoded images are kept when
/// looping so that later rounds cost only thresholding.
pub struct ImageFiles {
    files: Vec<PathBuf>,
    looping: bool,
    next: usize,
    cache: Vec<Option<DynamicImage>>,
    /// With `--loop`, files that could not be read (skipped, said once).
    unreadable: Vec<bool>,
    /// Bytes of decoded images kept at most ([`cache_limit`]).
    cache_limit: usize,
}

/// Decoded images kept for `--loop` at most (bytes of pixels).
const CACHE_LIMIT: usize = 512 << 20;

/// What `--loop` keeps of decoded images: [`CACHE_LIMIT`], or a quarter of
/// the memory available now if that is less (a Pi Zero has 512 MB in all).
fn cache_limit() -> usize {
    let available = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| mem_available(&m));
    available.map_or(CACHE_LIMIT, |b| CACHE_LIMIT.min(b / 4))
}

/// `MemAvailable` of a `/proc/meminfo` text, in bytes.
fn mem_available(meminfo: &str) -> Option<usize> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    kb.checked_mul(1024)
}

impl ImageFiles {
    /// A source over `files`.
    pub fn new(files: Vec<PathBuf>, looping: bool) -> Self {
        let n = files.len();
        ImageFiles {
            files,
            looping,
            next: 0,
            cache: (0..n).map(|_| None).collect(),
            unreadable: vec![false; n],
            cache_limit: if looping { cache_limit() } else { 0 },
        }
    }
}

impl Source for ImageFiles {
    fn next_mask(&mut self, params: &MaskParams, mask: &mut Mask) -> Result<bool> {
        // A file that cannot be read ends a batch with an error; going
        // round with --loop (a directory a camera or a copy fills) it is
        // skipped, with a warning the first time.
        let mut skipped = 0;
        let decoded;
        let (i, img) = loop {
            if self.next == self.files.len() {
                if !self.looping || self.files.is_empty() {
                    return Ok(false);
                }
                self.next = 0;
            }
            let i = self.next;
            self.next += 1;
            if self.cache[i].is_some() {
                break (i, None);
            }
            match open_image(&self.files[i]) {
                Ok(img) => break (i, Some(img)),
                Err(e) if self.looping => {
                    if !self.unreadable[i] {
                        self.unreadable[i] = true;
                        log::warn!("{e:#}; skipped (--loop)");
                    }
                    skipped += 1;
                    if skipped >= self.files.len() {
                        bail!("none of the {} input image(s) can be read: {e:#}", skipped);
                    }
                }
                Err(e) => return Err(e),
            }
        };
        let path = &self.files[i];
        self.unreadable[i] = false;
        let img = match img {
            None => self.cache[i].as_ref().expect("cached"),
            Some(img) => {
                decoded = img;
                let kept: usize = self
                    .cache
                    .iter()
                    .flatten()
                    .map(|c| c.as_bytes().len())
                    .sum();
                if self.looping && kept + decoded.as_bytes().len() <= self.cache_limit {
                    self.cache[i] = Some(decoded);
                    self.cache[i].as_ref().unwrap()
                } else {
                    &decoded
                }
            }
        };
        mask.timestamp_us = now_us();
        threshold_image(img, params, mask)
            .with_context(|| format!("cannot threshold {}", path.display()))?;
        Ok(true)
    }
}

/// Decodes an image file (format from its content, else its extension). An
/// image too large to decode (the `image` crate refuses to allocate more than
/// 512 MiB: a decompression bomb, or a real 16k x 16k scan) is named with its
/// dimensions.
pub fn open_image(path: &Path) -> Result<DynamicImage> {
    let what = || format!("cannot read image {}", path.display());
    let reader = || -> Result<image::ImageReader<std::io::BufReader<std::fs::File>>> {
        Ok(image::ImageReader::open(path)?.with_guessed_format()?)
    };
    match reader().with_context(what)?.decode() {
        Ok(img) => Ok(img),
        Err(image::ImageError::Limits(e)) => {
            let dims = reader()
                .ok()
                .and_then(|r| r.into_dimensions().ok())
                .map_or_else(String::new, |(w, h)| {
                    format!(
                        "it is {w}x{h} ({:.0} megapixels), ",
                        w as f64 * h as f64 / 1e6
                    )
                });
            Err(anyhow::anyhow!(
                "{}: {dims}more than the image decoder may allocate (512 MiB): {e}",
                what()
            ))
        }
        // (`image`'s errors repeat their cause in their text: not chained)
        Err(e) => Err(anyhow::anyhow!("{}: {e}", what())),
    }
}

/// Thresholds a decoded image into `mask`.
pub fn threshold_image(img: &DynamicImage, params: &MaskParams, mask: &mut Mask) -> Result<()> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let converted;
    let (data, format): (&[u8], PixelFormat) = match img {
        DynamicImage::ImageLuma8(g) => (g.as_raw(), PixelFormat::Gray8),
        DynamicImage::ImageRgb8(c) => (c.as_raw(), PixelFormat::Rgb8),
        DynamicImage::ImageRgba8(c) => (c.as_raw(), PixelFormat::Rgba8),
        other => {
            log::debug!("converting {:?} to rgb8", other.color());
            converted = other.to_rgb8();
            (converted.as_raw(), PixelFormat::Rgb8)
        }
    };
    let view = ImageRef::new(data, w, h, format)?;
    threshold_view(&view, params, mask)
}

/// Thresholds any pixel view into `mask` (Otsu computed on the view when asked).
pub fn threshold_view(view: &ImageRef<'_>, params: &MaskParams, mask: &mut Mask) -> Result<()> {
    let threshold = match params.threshold {
        ThresholdArg::Fixed(t) => t,
        ThresholdArg::Otsu => {
            let t = otsu_threshold(&histogram(view, params.channel)).unwrap_or(127);
            log::debug!("otsu threshold {t}: bit = value > {t}");
            t as u16 + 1
        }
    };
    mask.width = u32::try_from(view.width()).context("width over u32")?;
    mask.height = u32::try_from(view.height()).context("height over u32")?;
    mask.bits.resize(packed_len(view.width(), view.height()), 0);
    let p = Params {
        channel: params.channel,
        threshold,
        invert: params.invert,
    };
    threshold_pack(view, &p, &mut mask.bits)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loop_cache_fits_the_memory_available() {
        let pi_zero =
            "MemTotal:         439800 kB\nMemFree:  100 kB\nMemAvailable:     301212 kB\n";
        assert_eq!(mem_available(pi_zero), Some(301_212 * 1024));
        assert_eq!(mem_available("MemTotal: 1 kB\n"), None);
        assert_eq!(mem_available("MemAvailable: lots kB\n"), None);
        let limit = cache_limit();
        assert!(limit > 0 && limit <= CACHE_LIMIT, "{limit}");
    }
}
