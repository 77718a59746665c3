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
            // Hidden files (`.*`: macOS's `._NAME.png` metadata files,
            // editors' and copiers' temporary files) are left out, as a
            // shell's `*` does; subdirectories are not entered. Both are
            // said, so that nothing is left out unnoticed.
            let (mut v, mut hidden, mut subdirs, mut other) = (Vec::new(), 0, 0, 0);
            for e in std::fs::read_dir(p)
                .with_context(|| format!("cannot list directory {}", p.display()))?
            {
                let e = e.with_context(|| format!("cannot list directory {}", p.display()))?;
                let path = e.path();
                // An entry that cannot be looked at (a dangling link, a
                // directory without search permission) is taken for the
                // image file its name says: its read error is then said,
                // and counted, like any other unreadable image's.
                let meta = std::fs::metadata(&path);
                if meta.as_ref().is_ok_and(|m| m.is_dir()) {
                    subdirs += 1;
                } else if meta.as_ref().map_or(true, |m| m.is_file()) && is_image(&path) {
                    if e.file_name().as_encoded_bytes().starts_with(b".") {
                        hidden += 1;
                    } else {
                        v.push(path);
                    }
                } else {
                    other += 1;
                }
            }
            if other > 0 {
                log::info!(
                    "{}: left out {other} file(s) not named as images ({})",
                    p.display(),
                    EXTENSIONS.join(", ")
                );
            }
            if hidden + subdirs > 0 {
                log::info!(
                    "{}: left out {hidden} hidden image file(s) (named .*) and {subdirs} \
                     subdirectory(ies); name them to send them",
                    p.display()
                );
            }
            if v.is_empty() {
                bail!(
                    "directory {} holds no image files ({}){}",
                    p.display(),
                    EXTENSIONS.join(", "),
                    match (hidden, subdirs) {
                        (0, 0) => String::new(),
                        _ => format!(
                            " but {hidden} hidden one(s) (named .*) and {subdirs} \
                             subdirectory(ies), which are not sent unless named"
                        ),
                    }
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

    /// Inputs passed over since the last call, whose frame numbers are to
    /// stay unused (image files of a batch that could not be read).
    fn passed_over(&mut self) -> u64 {
        0
    }

    /// Called once when the input has ended (or `--count` was reached):
    /// an error for what the source passed over on the way (image files it
    /// could not read), after every frame it did produce has been sent.
    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}

/// Image files, in order, optionally looping. Decoded images are kept when
/// looping so that later rounds cost only thresholding.
pub struct ImageFiles {
    files: Vec<PathBuf>,
    looping: bool,
    next: usize,
    cache: Vec<Option<DynamicImage>>,
    /// Files that could not be read (skipped, said once).
    unreadable: Vec<bool>,
    /// Batch (no `--loop`): how many files could not be read, and the
    /// first one's error (reported by [`Source::finish`]).
    failed: (usize, Option<String>),
    /// Of those, how many [`Source::passed_over`] has not said yet.
    passed: u64,
    /// `--count`: in a batch, file `i` is frame `i`, so no file at or past
    /// it is opened (an unreadable one before it uses up its number).
    count: Option<u64>,
    /// Bytes of decoded images kept at most ([`cache_limit`]).
    cache_limit: usize,
}

/// Decoded images kept for `--loop` at most (bytes of pixels).
const CACHE_LIMIT: usize = 512 << 20;

/// What `--loop` keeps of decoded images: [`CACHE_LIMIT`], or a quarter of
/// the memory available now if that is less (a Pi Zero has 512 MB in all).
fn cache_limit() -> usize {
    memory_available().map_or(CACHE_LIMIT, |b| CACHE_LIMIT.min(b / 4))
}

/// The memory available now (`MemAvailable`), where the system says.
pub fn memory_available() -> Option<usize> {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| mem_available(&m))
}

/// `MemAvailable` of a `/proc/meminfo` text, in bytes.
fn mem_available(meminfo: &str) -> Option<usize> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    // At most what one process can address (a 32-bit Raspberry Pi OS on an
    // 8 GB Pi 4 says more than a usize holds).
    let bytes = usize::try_from(kb.saturating_mul(1024)).unwrap_or(usize::MAX);
    Some(bytes.min(isize::MAX as usize))
}

impl ImageFiles {
    /// A source over `files`; `count`: `--count` (frame numbers used at
    /// most).
    pub fn new(files: Vec<PathBuf>, looping: bool, count: Option<u64>) -> Self {
        let n = files.len();
        ImageFiles {
            files,
            looping,
            next: 0,
            cache: (0..n).map(|_| None).collect(),
            unreadable: vec![false; n],
            failed: (0, None),
            passed: 0,
            count,
            cache_limit: if looping { cache_limit() } else { 0 },
        }
    }
}

impl Source for ImageFiles {
    fn next_mask(&mut self, params: &MaskParams, mask: &mut Mask) -> Result<bool> {
        // A file that cannot be read is skipped with a warning: in a batch
        // the others are still sent, and the run then ends with an error
        // ([`Source::finish`]); going round with --loop (a directory a
        // camera or a copy fills) it is tried again each round, and warned
        // about the first time.
        let mut skipped = 0;
        let decoded;
        let (i, img) = loop {
            if self.next == self.files.len() {
                if !self.looping || self.files.is_empty() {
                    return Ok(false);
                }
                self.next = 0;
            }
            if !self.looping && self.count.is_some_and(|n| self.next as u64 >= n) {
                return Ok(false); // (frame numbers 0..n used: the pipeline stops there)
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
                Err(e) => {
                    self.passed += 1;
                    let (n, first) = &mut self.failed;
                    *n += 1;
                    if *n <= UNREADABLE_NAMED {
                        log::warn!("{e:#}; skipped, not sent (its frame number left unused)");
                    } else if *n == UNREADABLE_NAMED + 1 {
                        log::warn!(
                            "more input images cannot be read: skipped, counted, not named \
                             one by one"
                        );
                    }
                    first.get_or_insert_with(|| format!("{e:#}"));
                }
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

    fn passed_over(&mut self) -> u64 {
        std::mem::take(&mut self.passed)
    }

    fn finish(&mut self) -> Result<()> {
        // (a batch opens its files in order: `next` of them were tried)
        let tried = self.next;
        match &self.failed {
            (0, _) => Ok(()),
            (n, first) if *n == tried => bail!(
                "none of the {n} input image(s) can be read: {}",
                first.as_deref().unwrap_or("?")
            ),
            (n, first) => bail!(
                "{n} of the {}{tried} input images could not be read and were skipped (their \
                 frame numbers unused); the first: {}",
                if tried < self.files.len() {
                    "first "
                } else {
                    ""
                },
                first.as_deref().unwrap_or("?")
            ),
        }
    }
}

/// Unreadable images of a batch warned about one by one, at most.
const UNREADABLE_NAMED: usize = 10;

/// The most the image decoder may allocate for one image: the `image`
/// crate's 512 MiB, or half the memory available now if that is less (a
/// Pi Zero has 512 MB in all: a larger image would get the sender killed
/// by the kernel, not skipped).
fn decode_budget() -> u64 {
    const DEFAULT: u64 = 512 << 20;
    memory_available().map_or(DEFAULT, |b| DEFAULT.min(b as u64 / 2))
}

/// Decodes an image file (format from its content, else its extension). An
/// image too large to decode ([`decode_budget`]: a decompression bomb, a
/// real 16k x 16k scan, or a large photo on a Pi Zero) or larger than a
/// mask may be is refused before its pixels are allocated, named with its
/// dimensions. A JPEG file cut short (still being written or copied) is an
/// error, as other formats' are: the JPEG decoder would fill in the missing
/// part and make a wrong mask ([`jpeg_cut_short`]).
pub fn open_image(path: &Path) -> Result<DynamicImage> {
    open_image_within(path, decode_budget())
}

/// [`open_image`], the decoder allowed `budget` bytes.
fn open_image_within(path: &Path, budget: u64) -> Result<DynamicImage> {
    let what = || format!("cannot read image {}", path.display());
    let limits = || {
        let mut l = image::Limits::default();
        let side = bitmask_core::MAX_DIMENSION.min(u32::MAX as usize) as u32;
        l.max_image_width = Some(side);
        l.max_image_height = Some(side);
        l.max_alloc = Some(budget);
        l
    };
    let reader = || -> Result<image::ImageReader<std::io::BufReader<std::fs::File>>> {
        Ok(image::ImageReader::open(path)?.with_guessed_format()?)
    };
    let first = reader().with_context(what)?;
    let decoded = if first.format() == Some(image::ImageFormat::Jpeg) {
        drop(first);
        let len = std::fs::metadata(path).with_context(what)?.len();
        if len > MAX_JPEG_FILE {
            bail!(
                "{}: a JPEG file of {len} bytes, more than the {} MiB read at most",
                what(),
                MAX_JPEG_FILE >> 20
            );
        }
        let data = std::fs::read(path).with_context(what)?;
        if let Some(why) = jpeg_cut_short(&data) {
            bail!(
                "{}: {why}: the file is cut short (still being written or copied?)",
                what()
            );
        }
        let mut r =
            image::ImageReader::with_format(std::io::Cursor::new(&data), image::ImageFormat::Jpeg);
        r.limits(limits());
        r.decode()
    } else {
        let mut first = first;
        first.limits(limits());
        first.decode()
    };
    match decoded {
        Ok(img) => {
            // (refused here, it is skipped like any image that cannot be
            // read, not an error that ends the run when thresholded)
            let (w, h) = (img.width() as usize, img.height() as usize);
            if bitmask_core::check_dims(w, h).is_err() {
                bail!("{}: {}", what(), too_large_for_a_mask(w, h));
            }
            Ok(img)
        }
        Err(image::ImageError::Limits(e)) => {
            let dims = reader().ok().and_then(|r| r.into_dimensions().ok());
            if let Some((w, h)) =
                dims.filter(|&(w, h)| bitmask_core::check_dims(w as usize, h as usize).is_err())
            {
                bail!(
                    "{}: {}",
                    what(),
                    too_large_for_a_mask(w as usize, h as usize)
                );
            }
            let dims = dims.map_or_else(String::new, |(w, h)| {
                format!(
                    "it is {w}x{h} ({:.0} megapixels), ",
                    w as f64 * h as f64 / 1e6
                )
            });
            Err(anyhow::anyhow!(
                "{}: {dims}more than the image decoder may allocate ({} MiB: 512 MiB, or half \
                 the memory available if less): {e}",
                what(),
                budget >> 20
            ))
        }
        // A layout the decoder does not take (a YCbCr or CMYK TIFF, say):
        // what to do about it.
        Err(e @ image::ImageError::Unsupported(_)) => Err(anyhow::anyhow!(
            "{}: {e} (saved again as 8-bit RGB or gray, e.g. as PNG, it can be read)",
            what()
        )),
        // (`image`'s errors repeat their cause in their text: not chained)
        Err(e) => Err(anyhow::anyhow!("{}: {e}", what())),
    }
}

/// Why a `w` x `h` image cannot be a mask.
fn too_large_for_a_mask(w: usize, h: usize) -> String {
    format!(
        "it is {w}x{h}, larger than a mask may be (at most {} pixels a side and {} in all)",
        bitmask_core::MAX_DIMENSION,
        bitmask_core::MAX_PIXELS
    )
}

/// A JPEG file larger than this is refused before it is read into memory.
const MAX_JPEG_FILE: u64 = 256 << 20;

/// Why a JPEG file (`data` from its first byte) ends before its
/// end-of-image marker, or `None` when it is whole. The `image` crate's
/// JPEG decoder takes a cut-short file for a whole one (the missing rows
/// come out grey or as copies), so the markers are walked here: segments
/// by their lengths, entropy-coded data up to the next marker (a 0xFF in
/// it is followed by 0x00 or a restart marker), until EOI. Data after EOI
/// (a camera's trailer) is not looked at. Malformed structure that is not
/// an early end is left to the decoder to judge.
pub fn jpeg_cut_short(data: &[u8]) -> Option<String> {
    const SOI: u8 = 0xD8;
    const EOI: u8 = 0xD9;
    const SOS: u8 = 0xDA;
    if data.len() < 2 || data[0] != 0xFF || data[1] != SOI {
        return None; // not a JPEG stream: the decoder says what it is
    }
    let ends = |at: usize, inside: &str| {
        Some(format!(
            "the JPEG data ends at byte {} inside {inside}, before its end-of-image marker",
            at.min(data.len())
        ))
    };
    let mut i = 2;
    loop {
        // a marker: 0xFF, fill bytes 0xFF, then its code
        match data.get(i) {
            None => return ends(i, "the marker list"),
            Some(0xFF) => {}
            Some(_) => return None, // not a marker: malformed, the decoder's to judge
        }
        while data.get(i) == Some(&0xFF) {
            i += 1;
        }
        let Some(&code) = data.get(i) else {
            return ends(i, "a marker");
        };
        i += 1;
        match code {
            EOI => return None,
            0xD0..=0xD7 | 0x01 => continue, // no length field
            _ => {}
        }
        let Some(len) = data
            .get(i..i + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
        else {
            return ends(i, &format!("the length of marker 0x{code:02X}"));
        };
        if len < 2 {
            return None; // malformed: the decoder's to judge
        }
        i += len;
        if i > data.len() {
            return ends(data.len(), &format!("the segment of marker 0x{code:02X}"));
        }
        if code == SOS {
            // entropy-coded data up to the next marker that is not a
            // stuffed 0xFF00 or a restart marker (either may follow fill
            // bytes 0xFF)
            loop {
                let Some(j) = data[i..].iter().position(|&b| b == 0xFF).map(|j| i + j) else {
                    return ends(data.len(), "the compressed image data");
                };
                let mut k = j + 1;
                while data.get(k) == Some(&0xFF) {
                    k += 1;
                }
                match data.get(k) {
                    None => return ends(data.len(), "the compressed image data"),
                    Some(0x00 | 0xD0..=0xD7) => i = k + 1,
                    Some(_) => {
                        i = j;
                        break;
                    }
                }
            }
        }
    }
}

/// Thresholds a decoded image into `mask`.
pub fn threshold_image(img: &DynamicImage, params: &MaskParams, mask: &mut Mask) -> Result<()> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (gray, rgb);
    let (data, format): (&[u8], PixelFormat) = match img {
        DynamicImage::ImageLuma8(g) => (g.as_raw(), PixelFormat::Gray8),
        DynamicImage::ImageRgb8(c) => (c.as_raw(), PixelFormat::Rgb8),
        DynamicImage::ImageRgba8(c) => (c.as_raw(), PixelFormat::Rgba8),
        // Gray with alpha or 16 bits: a byte a pixel (every channel, and
        // luma, of a gray pixel is its gray value), not the three of rgb8
        // (half again the decoded image's memory, outside its budget).
        other if !other.color().has_color() => {
            log::debug!("converting {:?} to gray8", other.color());
            gray = other.to_luma8();
            (gray.as_raw(), PixelFormat::Gray8)
        }
        other => {
            log::debug!("converting {:?} to rgb8", other.color());
            rgb = other.to_rgb8();
            (rgb.as_raw(), PixelFormat::Rgb8)
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
    fn gray_images_with_alpha_or_16_bits_threshold_as_through_rgb8() {
        use image::{ImageBuffer, Luma, LumaA};
        let (w, h) = (37u32, 5u32);
        let v = |x: u32, y: u32| ((x * 73 + y * 151) % 65536) as u16 * 17;
        let g16: ImageBuffer<Luma<u16>, Vec<u16>> =
            ImageBuffer::from_fn(w, h, |x, y| Luma([v(x, y)]));
        let ga8: ImageBuffer<LumaA<u8>, Vec<u8>> =
            ImageBuffer::from_fn(w, h, |x, y| LumaA([(v(x, y) >> 8) as u8, (x * 7) as u8]));
        for img in [
            DynamicImage::ImageLuma16(g16),
            DynamicImage::ImageLumaA8(ga8),
        ] {
            let via_rgb = DynamicImage::ImageRgb8(img.to_rgb8());
            for channel in [Channel::Red, Channel::Green, Channel::Blue, Channel::Luma] {
                for threshold in [ThresholdArg::Fixed(100), ThresholdArg::Otsu] {
                    let params = MaskParams {
                        channel,
                        threshold,
                        invert: false,
                    };
                    let (mut a, mut b) = (Mask::default(), Mask::default());
                    threshold_image(&img, &params, &mut a).unwrap();
                    threshold_image(&via_rgb, &params, &mut b).unwrap();
                    assert_eq!(a.bits, b.bits, "{:?} {channel:?}", img.color());
                }
            }
        }
    }

    #[test]
    fn an_image_over_the_decoders_budget_is_refused_with_its_size() {
        // (a Pi Zero with 300 MB free and a 12000x9000 photo, made small)
        let dir = std::env::temp_dir().join(format!("bitmask-budget-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("big.png");
        image::GrayImage::new(2000, 1500).save(&path).unwrap();
        let err = open_image_within(&path, 1 << 20).unwrap_err().to_string();
        assert!(
            err.contains("it is 2000x1500") && err.contains("may allocate (1 MiB"),
            "{err}"
        );
        assert!(open_image_within(&path, 4 << 20).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_loop_cache_fits_the_memory_available() {
        let pi_zero =
            "MemTotal:         439800 kB\nMemFree:  100 kB\nMemAvailable:     301212 kB\n";
        assert_eq!(mem_available(pi_zero), Some(301_212 * 1024));
        assert_eq!(mem_available("MemTotal: 1 kB\n"), None);
        assert_eq!(mem_available("MemAvailable: lots kB\n"), None);
        // more than a process can address: what it can (a 32-bit Pi OS on
        // an 8 GB Pi 4; any size on a 64-bit host)
        assert_eq!(
            mem_available("MemAvailable: 18446744073709551615 kB\n"),
            Some(isize::MAX as usize)
        );
        let limit = cache_limit();
        assert!(limit > 0 && limit <= CACHE_LIMIT, "{limit}");
    }

    /// A baseline JPEG of a gradient with an edge, as `image` writes it.
    fn jpeg() -> Vec<u8> {
        let img = image::RgbImage::from_fn(48, 40, |x, y| {
            image::Rgb([(x * 5) as u8, if x > 20 { 255 } else { 0 }, (y * 6) as u8])
        });
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
            .encode_image(&img)
            .unwrap();
        out
    }

    #[test]
    fn a_whole_jpeg_passes_and_every_cut_short_one_is_caught() {
        // (RST markers in the marker list, outside a scan, are skipped too)
        assert_eq!(
            jpeg_cut_short(&[0xFF, 0xD8, 0xFF, 0xD0, 0xFF, 0xFF, 0xD9]),
            None
        );
        let whole = jpeg();
        assert_eq!(jpeg_cut_short(&whole), None);
        // the decoder itself accepts most of these cut-short files
        for len in 2..whole.len() {
            let why = jpeg_cut_short(&whole[..len]);
            assert!(
                why.as_deref()
                    .is_some_and(|w| w.contains("before its end-of-image marker")),
                "cut at {len} of {}: {why:?}",
                whole.len()
            );
        }
        // data after EOI (a camera's trailer) is not looked at
        let mut trailer = whole.clone();
        trailer.extend_from_slice(&[0xFF, 0xDA, 0x00, 0x10, 1, 2, 3]);
        assert_eq!(jpeg_cut_short(&trailer), None);
        // not a JPEG, or malformed: the decoder's to judge
        assert_eq!(jpeg_cut_short(b"\x89PNG"), None);
        assert_eq!(jpeg_cut_short(&[0xFF, 0xD8, 0x12]), None);
    }

    #[test]
    fn restart_markers_and_fill_bytes_are_not_the_end() {
        // SOI, a 4-byte APP0, SOS (length 3 + 1 byte), data with a stuffed
        // 0xFF00 and RST0, fill bytes, EOI
        let mut j = vec![0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x04, 0xAA, 0xBB];
        j.extend_from_slice(&[0xFF, 0xDA, 0x00, 0x03, 0x01]);
        j.extend_from_slice(&[0x12, 0xFF, 0x00, 0x34, 0xFF, 0xD0, 0x56]);
        // fill bytes before a restart marker, inside the scan
        j.extend_from_slice(&[0x78, 0xFF, 0xFF, 0xD1, 0x9A]);
        j.extend_from_slice(&[0xFF, 0xFF, 0xFF, 0xD9]);
        assert_eq!(jpeg_cut_short(&j), None);
        for len in 2..j.len() {
            assert!(jpeg_cut_short(&j[..len]).is_some(), "cut at {len}");
        }
    }

    #[test]
    fn a_cut_short_jpeg_file_is_an_error_naming_it() {
        let dir = std::env::temp_dir().join(format!("bitmask-jpeg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let whole = jpeg();
        let (ok, cut) = (dir.join("whole.jpg"), dir.join("cut.jpg"));
        std::fs::write(&ok, &whole).unwrap();
        std::fs::write(&cut, &whole[..whole.len() * 2 / 3]).unwrap();
        let img = open_image(&ok).unwrap();
        assert_eq!((img.width(), img.height()), (48, 40));
        // (the `image` crate alone, 0.25, decodes the cut file without an
        // error: what this check is for)
        let e = format!("{:#}", open_image(&cut).unwrap_err());
        assert!(e.contains("cut.jpg") && e.contains("cut short"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
