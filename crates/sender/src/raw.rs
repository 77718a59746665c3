//! Raw camera frames from stdin, a FIFO or a file (`--input-format`).
//!
//! A raw stream is frames back to back with no header, as `rpicam-vid
//! --codec yuv420 -o -`, `raspividyuv -o -` and `ffmpeg -f rawvideo` write
//! them. Every frame has the same layout, so the sender reads exactly one
//! frame's bytes into one buffer allocated at start-up and thresholds the
//! pixels in place (no allocation per frame).
//!
//! Layout of one frame (`stride` bytes per stored row, `padded_height` rows
//! per stored plane; both default to the tight values):
//!
//! * gray8: `padded_height` rows of `stride` bytes, the first `width` bytes
//!   of each of the first `height` rows are the pixels.
//! * rgb24 / bgr24: the same with 3 bytes per pixel (`stride >= 3 * width`).
//! * yuv420 (I420, planar): the Y plane as gray8, then the U plane and the V
//!   plane, each `ceil(padded_height / 2)` rows of `ceil(stride / 2)` bytes.
//!   Only Y is thresholded; U and V are read and skipped.
//!
//! See docs/CAMERA.md for the padding the Pi camera tools apply.

use crate::input::{now_us, threshold_view, Mask, MaskParams, Source};
use anyhow::{bail, Context, Result};
use bitmask_core::{ImageRef, PixelFormat, MAX_DIMENSION};
use clap::ValueEnum;
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// Pixel layout of a raw input stream.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum RawFormat {
    /// One byte per pixel (`ffmpeg -pix_fmt gray`).
    Gray8,
    /// Planar YUV 4:2:0, I420 (`rpicam-vid --codec yuv420`, `raspividyuv`,
    /// `ffmpeg -pix_fmt yuv420p`); the Y plane is used.
    Yuv420,
    /// Red, green, blue bytes (`ffmpeg -pix_fmt rgb24`).
    Rgb24,
    /// Blue, green, red bytes (`ffmpeg -pix_fmt bgr24`, OpenCV).
    Bgr24,
}

impl RawFormat {
    fn pixel_format(self) -> PixelFormat {
        match self {
            RawFormat::Gray8 | RawFormat::Yuv420 => PixelFormat::Gray8,
            RawFormat::Rgb24 => PixelFormat::Rgb8,
            RawFormat::Bgr24 => PixelFormat::Bgr8,
        }
    }
}

impl fmt::Display for RawFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RawFormat::Gray8 => "gray8",
            RawFormat::Yuv420 => "yuv420",
            RawFormat::Rgb24 => "rgb24",
            RawFormat::Bgr24 => "bgr24",
        })
    }
}

/// Largest raw frame accepted (bytes), far above any Pi camera mode.
const MAX_FRAME: usize = 1 << 30;

/// Geometry of every frame of a raw stream.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct RawLayout {
    /// Pixel layout.
    pub format: RawFormat,
    /// Pixels per row.
    pub width: usize,
    /// Rows of pixels.
    pub height: usize,
    /// Bytes from one stored row to the next (Y plane for yuv420).
    pub stride: usize,
    /// Rows stored per plane (>= height).
    pub padded_height: usize,
    /// Bytes of one whole frame, computed (overflow-checked) by [`RawLayout::new`].
    frame_len: usize,
}

impl RawLayout {
    /// Checks and completes a layout: `stride` defaults to the tight row,
    /// `padded_height` to `height`.
    pub fn new(
        format: RawFormat,
        width: usize,
        height: usize,
        stride: Option<usize>,
        padded_height: Option<usize>,
    ) -> Result<Self> {
        if width == 0 || height == 0 || width > MAX_DIMENSION || height > MAX_DIMENSION {
            bail!("--size {width}x{height}: width and height must be 1..={MAX_DIMENSION}");
        }
        let row = width * format.pixel_format().bytes_per_pixel();
        let stride = stride.unwrap_or(row);
        if stride < row {
            bail!(
                "--stride {stride} is smaller than one row of {width} {format} pixels ({row} bytes)"
            );
        }
        let padded_height = padded_height.unwrap_or(height);
        if padded_height < height {
            bail!("--padded-height {padded_height} is smaller than the height {height}");
        }
        let mut layout = RawLayout {
            format,
            width,
            height,
            stride,
            padded_height,
            frame_len: 0,
        };
        match layout.checked_frame_len() {
            Some(n) if n <= MAX_FRAME => {
                layout.frame_len = n;
                Ok(layout)
            }
            _ => bail!(
                "a {format} frame of stride {stride} and {padded_height} rows is over {MAX_FRAME} \
                 bytes (1 GiB), more than this sender reads: check --size, --stride and \
                 --padded-height"
            ),
        }
    }

    fn checked_frame_len(&self) -> Option<usize> {
        let plane = self.stride.checked_mul(self.padded_height)?;
        match self.format {
            RawFormat::Yuv420 => {
                let chroma = self
                    .stride
                    .div_ceil(2)
                    .checked_mul(self.padded_height.div_ceil(2))?;
                plane.checked_add(chroma.checked_mul(2)?)
            }
            _ => Some(plane),
        }
    }

    /// Bytes of one whole frame as stored in the stream.
    pub fn frame_len(&self) -> usize {
        self.frame_len
    }
}

impl fmt::Display for RawLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}x{}, stride {} B, {} stored rows, {} B per frame",
            self.format,
            self.width,
            self.height,
            self.stride,
            self.padded_height,
            self.frame_len()
        )
    }
}

/// Parses `WxH` (`--size`).
pub fn parse_size(s: &str) -> Result<(usize, usize), String> {
    let (w, h) = s
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("{s:?} is not WxH"))?;
    match (w.trim().parse::<usize>(), h.trim().parse::<usize>()) {
        (Ok(w), Ok(h)) if w > 0 && h > 0 => Ok((w, h)),
        _ => Err(format!("{s:?} is not WxH with positive numbers")),
    }
}

/// Frames read one by one from a byte stream.
pub struct RawFrames {
    reader: Box<dyn Read>,
    name: String,
    layout: RawLayout,
    /// One whole frame, allocated once.
    buf: Vec<u8>,
    /// Index of the next frame to read.
    index: u64,
    ended: bool,
    /// The input is a pipe or FIFO a program writes (stdin or a path that
    /// is no regular file), not a recording or `--input-command`.
    pipe: bool,
}

/// Opens `path` (`-` = stdin) and names it for messages, with its length
/// when it is a regular file (fstat: a named file, or stdin redirected from
/// one). Opening a FIFO waits for its writer.
fn open(path: &Path) -> Result<(Box<dyn Read>, String, Option<u64>)> {
    let file_len =
        |m: io::Result<std::fs::Metadata>| m.ok().filter(|m| m.is_file()).map(|m| m.len());
    if path.as_os_str() == "-" {
        let stdin = io::stdin().lock();
        let len = {
            use std::os::fd::AsFd;
            stdin
                .as_fd()
                .try_clone_to_owned()
                .map(File::from)
                .and_then(|f| f.metadata())
        };
        return Ok((Box::new(stdin), "stdin".into(), file_len(len)));
    }
    // (opening a FIFO waits for its writer: said, or the sender would wait
    // without a word)
    if std::fs::metadata(path).is_ok_and(|m| {
        use std::os::unix::fs::FileTypeExt;
        m.file_type().is_fifo()
    }) {
        log::info!("waiting for a writer on the FIFO {}", path.display());
    }
    let f =
        File::open(path).with_context(|| format!("cannot open raw input {}", path.display()))?;
    let len = file_len(f.metadata());
    Ok((Box::new(f), path.display().to_string(), len))
}

/// The warning for a raw input that is a regular file of `file_len` bytes
/// when that is not a whole number of frames: the layout (`--size`,
/// `--stride`, `--padded-height`) is likely wrong. (Only a warning: a file
/// still being written may end in a part-frame.)
pub fn misfit(name: &str, file_len: u64, layout: &RawLayout) -> Option<String> {
    let frame = layout.frame_len() as u64;
    let over = file_len % frame;
    (over != 0).then(|| {
        format!(
            "{name} is {file_len} bytes, not a whole number of frames of {frame} bytes \
             ({layout}): {} whole frame(s) and {over} bytes over; check --size, --stride and \
             --padded-height (unless the file is still being written)",
            file_len / frame
        )
    })
}

impl RawFrames {
    /// The source for `--input-format F --size WxH [--stride N]
    /// [--padded-height H] INPUT` where INPUT is `-` (stdin), a FIFO or a file.
    pub fn from_cli(
        format: RawFormat,
        size: Option<(usize, usize)>,
        stride: Option<usize>,
        padded_height: Option<usize>,
        inputs: &[PathBuf],
        command: Option<&str>,
        looping: bool,
    ) -> Result<Self> {
        let (w, h) = size.context("--input-format needs --size WxH")?;
        let layout = RawLayout::new(format, w, h, stride, padded_height)?;
        if looping {
            bail!("--loop works with image files, not with a raw --input-format stream");
        }
        // Asked for before the camera starts, and refused with a message
        // rather than the abort of a failed allocation (a Pi has 0.5-1 GiB).
        // (Linux grants an allocation up to its RAM and swap, then kills the
        // process that touches it: half the memory available is the most.)
        let len = layout.frame_len();
        let too_much = || {
            anyhow::anyhow!(
                "--size {w}x{h} ({layout}) needs {len} bytes per frame, more memory than this \
                 machine gives (half of what is available now at most): a smaller --size"
            )
        };
        if crate::input::memory_available().is_some_and(|m| len > m / 2) {
            return Err(too_much());
        }
        let mut buf = Vec::new();
        buf.try_reserve_exact(len).map_err(|_| too_much())?;
        buf.resize(len, 0);
        let mut pipe = false;
        let (reader, name): (Box<dyn Read>, String) = match (command, inputs) {
            (Some(_), [_, ..]) => bail!(
                "--input-command is the input: drop the INPUT argument(s) ({})",
                inputs
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            // A stop before the camera started (while the name claim
            // waited, say): nothing is started, nothing read.
            (Some(cmd), []) if crate::pipeline::stop_requested().is_some() => {
                (Box::new(io::empty()), format!("--input-command `{cmd}`"))
            }
            (Some(cmd), []) => {
                let reader = crate::command::CommandReader::spawn(cmd)?;
                let name = reader.name();
                (Box::new(reader), name)
            }
            (None, [p]) => {
                let (reader, name, len) = open(p)?;
                if let Some(warning) = len.and_then(|n| misfit(&name, n, &layout)) {
                    log::warn!("{warning}");
                }
                pipe = len.is_none();
                (reader, name)
            }
            (None, _) => bail!(
                "--input-format reads one stream: give `-` for stdin, or one FIFO or file path (got {} inputs)",
                inputs.len()
            ),
        };
        log::info!("reading raw frames from {name}: {layout}");
        let mut frames = Self::with_buf(reader, name, layout, buf);
        frames.pipe = pipe;
        Ok(frames)
    }

    /// Frames from any reader; `name` appears in messages.
    #[cfg(test)]
    pub fn from_reader(reader: Box<dyn Read>, name: String, layout: RawLayout) -> Self {
        Self::with_buf(reader, name, layout, vec![0; layout.frame_len()])
    }

    /// As [`Self::from_reader`], with `buf` (`layout.frame_len()` bytes) for the frames.
    fn with_buf(reader: Box<dyn Read>, name: String, layout: RawLayout, buf: Vec<u8>) -> Self {
        RawFrames {
            reader,
            name,
            layout,
            buf,
            index: 0,
            ended: false,
            pipe: false,
        }
    }

    /// Reads one whole frame into `buf`. `Ok(false)` at the end of the
    /// stream; a partial last frame is reported and dropped.
    fn read_frame(&mut self) -> Result<bool> {
        let len = self.buf.len();
        let mut filled = 0;
        while filled < len {
            match self.reader.read(&mut self.buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                // (a stop signal interrupts a read that waits: the stop, not
                // the producer, decides)
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    if crate::pipeline::stop_requested().is_some() {
                        break;
                    }
                }
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!(
                            "reading frame {} from {} (after {filled} of {len} bytes)",
                            self.index, self.name
                        )
                    })
                }
            }
        }
        if filled == len {
            return Ok(true);
        }
        self.ended = true;
        if self.index == 0 && crate::pipeline::stop_requested().is_some() {
            // stopped before the first frame came: nothing to send, nothing wrong
            log::info!("{}: stopped before its first whole frame", self.name);
        } else if self.index == 0 {
            // A camera pipeline that failed (its errors are above) looks
            // like a short stream: not a success.
            bail!(
                "{} ended before its first whole frame: got {filled} of {len} bytes, nothing \
                 to send (did the program writing it fail? check --size, --stride and \
                 --padded-height)",
                self.name
            );
        } else if let (0, Some(sig)) = (filled, crate::pipeline::stop_requested()) {
            crate::pipeline::say_stopping(sig);
            log::info!("{}: stopped after {} whole frame(s)", self.name, self.index);
        } else if filled == 0 {
            log::info!("end of {} after {} whole frame(s)", self.name, self.index);
        } else if crate::pipeline::stop_requested().is_some() {
            // the stop ended the producer too (systemd stops the whole unit)
            log::info!(
                "end of {} after {} whole frame(s) (the stop cut frame {} short: dropped)",
                self.name,
                self.index,
                self.index
            );
        } else {
            let why = if self.pipe {
                "the program writing it stopped inside a frame: did it fail? (its messages \
                 are above; in a shell, `set -o pipefail` makes its exit status the \
                 pipeline's, and --input-command reports it); if it did not, a wrong \
                 --size, --stride or --padded-height shows so"
            } else if self.name.starts_with("--input-command") {
                "the command exited 0 inside a frame; a wrong --size, --stride or \
                 --padded-height shows so"
            } else {
                "if the input is a recording, a wrong --size, --stride or --padded-height \
                 shows as a part-frame at its end"
            };
            log::warn!(
                "{} ended in the middle of frame {}: got {filled} of {len} bytes; \
                 that partial frame is dropped, the {} whole frame(s) before it were read \
                 ({why})",
                self.name,
                self.index,
                self.index
            );
        }
        Ok(false)
    }
}

impl Source for RawFrames {
    fn skip(&mut self) -> Result<bool> {
        if self.ended || !self.read_frame()? {
            return Ok(false);
        }
        self.index += 1;
        Ok(true)
    }

    fn next_mask(&mut self, params: &MaskParams, mask: &mut Mask) -> Result<bool> {
        if self.ended || !self.read_frame()? {
            return Ok(false);
        }
        // The frame's last byte has just arrived: that is its capture time here.
        mask.timestamp_us = now_us();
        let l = &self.layout;
        let view = ImageRef::with_stride(
            &self.buf,
            l.width,
            l.height,
            l.stride,
            l.format.pixel_format(),
        )?;
        threshold_view(&view, params, mask)
            .with_context(|| format!("cannot threshold frame {} of {}", self.index, self.name))?;
        self.index += 1;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ThresholdArg;
    use bitmask_core::Channel;

    fn params(channel: Channel, t: u16) -> MaskParams {
        MaskParams {
            channel,
            threshold: ThresholdArg::Fixed(t),
            invert: false,
        }
    }

    #[test]
    fn a_file_that_is_not_whole_frames_is_named_with_its_layout() {
        let l = RawLayout::new(RawFormat::Gray8, 64, 48, None, None).unwrap();
        assert_eq!(misfit("rec.raw", 0, &l), None);
        assert_eq!(misfit("rec.raw", 4 * 3072, &l), None);
        let w = misfit("rec.raw", 4 * 3072 + 1000, &l).expect("a part-frame");
        assert!(
            w.starts_with(
                "rec.raw is 13288 bytes, not a whole number of frames of 3072 bytes (gray8 \
                 64x48, stride 64 B, 48 stored rows, 3072 B per frame): 4 whole frame(s) and \
                 1000 bytes over; check --size"
            ),
            "{w}"
        );
    }

    #[test]
    fn frame_lengths() {
        let l = RawLayout::new(RawFormat::Yuv420, 780, 590, Some(832), Some(592)).unwrap();
        assert_eq!(l.frame_len(), 832 * 592 + 2 * 416 * 296);
        // ffmpeg's odd sizes: chroma planes are ceil(w/2) x ceil(h/2).
        let l = RawLayout::new(RawFormat::Yuv420, 5, 3, None, None).unwrap();
        assert_eq!(l.frame_len(), 15 + 2 * 3 * 2);
        let l = RawLayout::new(RawFormat::Bgr24, 4, 2, None, None).unwrap();
        assert_eq!(l.frame_len(), 24);
        let l = RawLayout::new(RawFormat::Gray8, 4, 2, Some(8), Some(3)).unwrap();
        assert_eq!(l.frame_len(), 24);
    }

    #[test]
    fn bad_layouts_name_the_value() {
        let e = RawLayout::new(RawFormat::Rgb24, 10, 2, Some(20), None).unwrap_err();
        assert!(e.to_string().contains("--stride 20"), "{e}");
        let e = RawLayout::new(RawFormat::Gray8, 10, 20, None, Some(19)).unwrap_err();
        assert!(e.to_string().contains("--padded-height 19"), "{e}");
        let e = RawLayout::new(RawFormat::Gray8, 0, 20, None, None).unwrap_err();
        assert!(e.to_string().contains("0x20"), "{e}");
        assert!(parse_size("12x").is_err());
        assert_eq!(parse_size("780x590"), Ok((780, 590)));
    }

    #[test]
    fn padded_yuv_uses_y_only_and_reports_partial_frame() {
        // 3x2 pixels, stride 4, 4 stored rows: Y plane 16 B, U and V 2x2 each.
        let l = RawLayout::new(RawFormat::Yuv420, 3, 2, Some(4), Some(4)).unwrap();
        assert_eq!(l.frame_len(), 16 + 8);
        let mut f0 = vec![255u8; 24]; // padding and chroma all bright
        f0[..3].copy_from_slice(&[10, 200, 10]);
        f0[4..7].copy_from_slice(&[200, 10, 200]);
        let mut stream = f0.clone();
        stream.extend_from_slice(&f0[..5]); // a partial second frame
        let mut src = RawFrames::from_reader(Box::new(io::Cursor::new(stream)), "t".into(), l);
        let mut m = Mask::default();
        let p = params(Channel::Luma, 128);
        assert!(src.next_mask(&p, &mut m).unwrap());
        assert_eq!((m.width, m.height), (3, 2));
        assert_eq!(m.bits, [0b0100_0000, 0b1010_0000]);
        assert!(m.timestamp_us > 0);
        assert!(!src.next_mask(&p, &mut m).unwrap());
        assert!(!src.next_mask(&p, &mut m).unwrap());
        assert_eq!(src.index, 1);
    }

    #[test]
    fn bgr_blue_is_blue() {
        let l = RawLayout::new(RawFormat::Bgr24, 2, 1, None, None).unwrap();
        let data = vec![200, 0, 0, 0, 0, 200]; // pixel 0 blue, pixel 1 red
        let mut src = RawFrames::from_reader(Box::new(io::Cursor::new(data)), "t".into(), l);
        let mut m = Mask::default();
        assert!(src.next_mask(&params(Channel::Blue, 170), &mut m).unwrap());
        assert_eq!(m.bits, [0b1000_0000]);
    }
}
