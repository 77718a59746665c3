//! Fused thresholding and bit packing of 8-bit images into 1-bit masks.
//!
//! This crate turns pixels into packed mask bits in one pass, with no
//! intermediate boolean image and no allocation per frame: the caller owns
//! every buffer. The packed layout is the *wire layout* of bitmask:
//!
//! * bit order MSB-first (pixel 0 of a group of 8 is bit 7, as
//!   `numpy.packbits(..., bitorder='big')`),
//! * each row padded to a whole byte, `stride = ceil(width / 8)`,
//! * padding bits are 0.
//!
//! That is byte for byte `numpy.packbits(mask, axis=1)`, PBM P4 (with the
//! polarity inverted: PBM's 1 is black) and Pillow mode `"1"` raw data.
//!
//! ```
//! use bitmask_core::{threshold_pack, packed_len, Channel, ImageRef, Params, PixelFormat};
//!
//! // 2x1 RGB image: a bright blue pixel and a dark one.
//! let rgb = [0, 0, 200, 0, 0, 10];
//! let img = ImageRef::new(&rgb, 2, 1, PixelFormat::Rgb8).unwrap();
//! let mut out = vec![0u8; packed_len(2, 1)];
//! threshold_pack(&img, &Params::new(Channel::Blue, 170), &mut out).unwrap();
//! assert_eq!(out, [0b1000_0000]);
//! ```
//!
//! The crate does no I/O. Hot loops use SSE2, SSSE3 and AVX2 on x86-64
//! (detected at run time where needed) and portable code everywhere else
//! (SWAR, eight pixels per `u64`, or a compare per pixel on 32-bit ARM
//! without the flags below). On ARMv7 the NEON kernels are built
//! only with `RUSTFLAGS="-C target-cpu=cortex-a7
//! -C target-feature=+neon,+vfp4,+d32 --cfg bitmask_neon"` (what bitmask's
//! `cargo xtask dist` uses for the Pi 2/3); a plain armv7 build gets the
//! portable code. On any ARMv6 or later CPU, `--cfg bitmask_armv6` (both of
//! bitmask's Pi builds) thresholds gray pixels four at a time with ARMv6's
//! media instructions (`usub8`, `sel`, `usad8`); without it, a compare per
//! pixel (the flag would be wrong for an ARMv5 build). With `bitmask_neon`
//! gray pixels, one RGB/RGBA channel (de-interleaved by `vld3`/`vld4`) and
//! luma's packing go sixteen at a time through NEON loops (`asm!`: NEON
//! intrinsics are unstable on 32-bit ARM).
#![deny(missing_docs)]
#![forbid(unsafe_op_in_unsafe_fn)]

mod kernels;
mod otsu;
mod pack;

pub use otsu::{histogram, otsu_threshold};
pub use pack::{
    pack_bits, pack_rows, repack_rows_to_flat, unpack_bits, unpack_rows, unpack_rows_gray8,
    BitOrder,
};

use std::fmt;

/// Errors from the functions of this crate. Each carries the offending values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CoreError {
    /// Width or height is zero or over [`MAX_DIMENSION`], or the image has
    /// more than [`MAX_PIXELS`] pixels.
    #[error(
        "invalid image dimensions {width}x{height}: width and height must be 1 to {MAX_DIMENSION} \
         and width x height at most {MAX_PIXELS} pixels"
    )]
    InvalidDimensions {
        /// The width given.
        width: usize,
        /// The height given.
        height: usize,
    },
    /// The row stride is smaller than one row of pixels.
    #[error("row stride {stride} B is smaller than a row of {min} B")]
    StrideTooSmall {
        /// The stride given.
        stride: usize,
        /// The smallest stride that holds one row.
        min: usize,
    },
    /// The row stride is so large that the image's rows would span more
    /// bytes than the address space holds (`stride * (height - 1)` plus a
    /// row overflows `usize`).
    #[error("row stride {stride} B over {height} rows spans more bytes than memory holds")]
    StrideTooLarge {
        /// The stride given.
        stride: usize,
        /// The height given.
        height: usize,
    },
    /// A buffer has the wrong length.
    #[error("{what} buffer holds {actual} B, expected {expected} B")]
    BufferSize {
        /// Which buffer.
        what: &'static str,
        /// The length needed.
        expected: usize,
        /// The length given.
        actual: usize,
    },
    /// A buffer is shorter than its contents need (a longer one is fine).
    #[error("{what} buffer holds {actual} B, needs at least {needed} B")]
    BufferTooShort {
        /// Which buffer.
        what: &'static str,
        /// The fewest bytes that hold it.
        needed: usize,
        /// The length given.
        actual: usize,
    },
}

/// Layout of the pixels of an 8-bit image.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PixelFormat {
    /// One byte per pixel.
    Gray8,
    /// Three bytes per pixel: red, green, blue.
    Rgb8,
    /// Three bytes per pixel: blue, green, red (OpenCV, `ffmpeg -pix_fmt bgr24`).
    Bgr8,
    /// Four bytes per pixel: red, green, blue, alpha (alpha is ignored).
    Rgba8,
}

impl PixelFormat {
    /// Bytes per pixel.
    pub const fn bytes_per_pixel(self) -> usize {
        match self {
            PixelFormat::Gray8 => 1,
            PixelFormat::Rgb8 | PixelFormat::Bgr8 => 3,
            PixelFormat::Rgba8 => 4,
        }
    }
}

impl fmt::Display for PixelFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PixelFormat::Gray8 => "gray8",
            PixelFormat::Rgb8 => "rgb8",
            PixelFormat::Bgr8 => "bgr8",
            PixelFormat::Rgba8 => "rgba8",
        })
    }
}

/// Which value of a pixel is compared with the threshold.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Channel {
    /// The red byte (for gray images: the gray value).
    Red,
    /// The green byte (for gray images: the gray value).
    Green,
    /// The blue byte (for gray images: the gray value).
    Blue,
    /// ITU-R 601 luma exactly as Pillow's `convert('L')`:
    /// `(19595 R + 38470 G + 7471 B + 32768) >> 16`.
    #[default]
    Luma,
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Channel::Red => "red",
            Channel::Green => "green",
            Channel::Blue => "blue",
            Channel::Luma => "luma",
        })
    }
}

/// Pillow's `convert('L')` luma of one RGB pixel.
#[inline(always)]
pub const fn luma(r: u8, g: u8, b: u8) -> u8 {
    ((19595 * r as u32 + 38470 * g as u32 + 7471 * b as u32 + 32768) >> 16) as u8
}

/// How pixels become bits: `bit = value >= threshold`, or its inverse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    /// The value compared.
    pub channel: Channel,
    /// `bit = value >= threshold`. 0 makes every bit 1; 256 makes every bit 0.
    pub threshold: u16,
    /// Invert the rule: `bit = value < threshold`. Padding bits stay 0.
    pub invert: bool,
}

impl Params {
    /// `bit = channel >= threshold`, not inverted.
    pub const fn new(channel: Channel, threshold: u16) -> Self {
        Params {
            channel,
            threshold,
            invert: false,
        }
    }
}

/// A borrowed 8-bit image: `height` rows of `stride` bytes, each holding
/// `width` pixels of `format` at its start.
#[derive(Debug, Clone, Copy)]
pub struct ImageRef<'a> {
    data: &'a [u8],
    width: usize,
    height: usize,
    stride: usize,
    format: PixelFormat,
}

/// Largest width or height accepted anywhere.
pub const MAX_DIMENSION: usize = 1 << 20;

/// Most pixels in one image (`u32::MAX`): with [`MAX_DIMENSION`] this keeps
/// all size arithmetic (pixel counts, packed lengths, histogram counts)
/// from overflowing, on 32-bit targets too.
pub const MAX_PIXELS: usize = u32::MAX as usize;

impl<'a> ImageRef<'a> {
    /// An image whose rows are packed tightly (`stride = width * bytes_per_pixel`).
    pub fn new(
        data: &'a [u8],
        width: usize,
        height: usize,
        format: PixelFormat,
    ) -> Result<Self, CoreError> {
        Self::with_stride(
            data,
            width,
            height,
            width.saturating_mul(format.bytes_per_pixel()),
            format,
        )
    }

    /// An image whose rows start `stride` bytes apart (camera buffers pad rows).
    /// The last row needs only `width * bytes_per_pixel` bytes.
    pub fn with_stride(
        data: &'a [u8],
        width: usize,
        height: usize,
        stride: usize,
        format: PixelFormat,
    ) -> Result<Self, CoreError> {
        check_dims(width, height)?;
        let row = width * format.bytes_per_pixel();
        if stride < row {
            return Err(CoreError::StrideTooSmall { stride, min: row });
        }
        let need = stride
            .checked_mul(height - 1)
            .and_then(|n| n.checked_add(row))
            .ok_or(CoreError::StrideTooLarge { stride, height })?;
        if data.len() < need {
            return Err(CoreError::BufferTooShort {
                what: "image",
                needed: need,
                actual: data.len(),
            });
        }
        Ok(ImageRef {
            data,
            width,
            height,
            stride,
            format,
        })
    }

    /// Width in pixels.
    pub fn width(&self) -> usize {
        self.width
    }
    /// Height in pixels.
    pub fn height(&self) -> usize {
        self.height
    }
    /// Bytes from one row's start to the next.
    pub fn stride(&self) -> usize {
        self.stride
    }
    /// Pixel format.
    pub fn format(&self) -> PixelFormat {
        self.format
    }
    /// The pixels of row `y` (exactly `width * bytes_per_pixel` bytes).
    ///
    /// # Panics
    /// If `y >= height` (as slice indexing does).
    pub fn row(&self, y: usize) -> &'a [u8] {
        let start = y * self.stride;
        &self.data[start..start + self.width * self.format.bytes_per_pixel()]
    }
}

/// Checks that a `width` x `height` mask is one the packing functions take
/// (at least 1 a side, at most [`MAX_DIMENSION`] a side and [`MAX_PIXELS`]
/// in all): what they would refuse with [`CoreError::InvalidDimensions`],
/// told before the pixels are read.
pub fn check_dims(width: usize, height: usize) -> Result<(), CoreError> {
    // saturating: two usize dimensions can pass u64 (checked only below)
    let pixels = (width as u64).saturating_mul(height as u64);
    if width == 0
        || height == 0
        || width > MAX_DIMENSION
        || height > MAX_DIMENSION
        || pixels > MAX_PIXELS as u64
    {
        return Err(CoreError::InvalidDimensions { width, height });
    }
    Ok(())
}

/// Bytes per packed row: `ceil(width / 8)`.
#[inline]
pub const fn packed_stride(width: usize) -> usize {
    width.div_ceil(8)
}

/// Bytes of a packed `width` x `height` mask in the wire layout.
///
/// For dimensions the packing functions accept (at most [`MAX_DIMENSION`]
/// a side and [`MAX_PIXELS`] in all) it cannot overflow, even with a
/// 32-bit `usize`; past them the product can overflow (a panic in debug
/// builds, a wrapped value in release): check untrusted dimensions first.
#[inline]
pub const fn packed_len(width: usize, height: usize) -> usize {
    packed_stride(width) * height
}

pub(crate) fn check_len(
    what: &'static str,
    expected: usize,
    actual: usize,
) -> Result<(), CoreError> {
    if expected != actual {
        return Err(CoreError::BufferSize {
            what,
            expected,
            actual,
        });
    }
    Ok(())
}

/// Thresholds `img` and packs the bits into `out` (wire layout, see the crate
/// docs) in one pass. `out.len()` must be [`packed_len`]`(width, height)`.
///
/// For gray images every channel, luma included, is the gray value.
pub fn threshold_pack(
    img: &ImageRef<'_>,
    params: &Params,
    out: &mut [u8],
) -> Result<(), CoreError> {
    let stride = packed_stride(img.width);
    check_len("output", stride * img.height, out.len())?;
    let kernel = kernels::RowKernel::select(img.format, params.channel);
    let bpp = img.format.bytes_per_pixel();
    if img.width % 8 == 0 && img.stride == img.width * bpp {
        // Rows follow each other with no padding on either side: one long row.
        let n = img.width * img.height;
        kernel.run(
            &img.data[..n * bpp],
            n,
            params.threshold,
            params.invert,
            out,
        );
        return Ok(());
    }
    for (y, dst) in out.chunks_exact_mut(stride).enumerate() {
        kernel.run(img.row(y), img.width, params.threshold, params.invert, dst);
    }
    Ok(())
}

#[cfg(test)]
mod tests;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
