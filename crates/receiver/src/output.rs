//! Where masks go: files (raw, PBM, PNG) written atomically, or stdout.

use anyhow::{bail, Context, Result};
use bitmask_wire::Header;
use clap::ValueEnum;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// File format of each mask.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Packed bits as on the wire (numpy.packbits(mask, axis=1)).
    Raw,
    /// PBM P4 (1 = black, so bits are inverted to show like the PNG).
    Pbm,
    /// 1-bit grayscale PNG, 1 = white.
    Png,
}

impl Format {
    fn ext(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Pbm => "pbm",
            Format::Png => "png",
        }
    }
}

/// A mask sink.
pub enum Output {
    /// One file per frame in a directory.
    Dir {
        /// The directory.
        dir: PathBuf,
        /// Format of the files.
        format: Format,
        /// Encoding buffer, reused.
        buf: Vec<u8>,
    },
    /// Masks back to back on stdout.
    Stdout(io::BufWriter<io::Stdout>),
}

impl Output {
    /// A sink for `--out PATH --format F`.
    pub fn new(path: &Path, format: Format) -> Result<Self> {
        if path.as_os_str() == "-" {
            if format != Format::Raw {
                bail!(
                    "--out - writes raw masks back to back; --format {} needs a directory",
                    format.ext()
                );
            }
            return Ok(Output::Stdout(io::BufWriter::with_capacity(
                1 << 20,
                io::stdout(),
            )));
        }
        fs::create_dir_all(path)
            .with_context(|| format!("cannot create output directory {}", path.display()))?;
        Ok(Output::Dir {
            dir: path.to_path_buf(),
            format,
            buf: Vec::new(),
        })
    }

    /// Writes one decoded mask (wire layout) of the frame `h`.
    pub fn write(&mut self, h: &Header, bits: &[u8]) -> Result<()> {
        match self {
            Output::Stdout(w) => {
                w.write_all(bits)?;
                w.flush()?;
                Ok(())
            }
            Output::Dir { dir, format, buf } => {
                buf.clear();
                encode(*format, h.width, h.height, bits, buf)?;
                let name = format!("frame-{:06}.{}", h.sequence, format.ext());
                write_atomic(&dir.join(&name), buf)
            }
        }
    }

    /// Flushes what is buffered.
    pub fn finish(&mut self) -> Result<()> {
        if let Output::Stdout(w) = self {
            w.flush()?;
        }
        Ok(())
    }
}

/// Encodes a mask as `format` into `buf`.
pub fn encode(
    format: Format,
    width: u32,
    height: u32,
    bits: &[u8],
    buf: &mut Vec<u8>,
) -> Result<()> {
    match format {
        Format::Raw => buf.extend_from_slice(bits),
        Format::Pbm => {
            write!(buf, "P4\n{width} {height}\n")?;
            let stride = (width as usize).div_ceil(8);
            let tail = width % 8;
            let keep = if tail == 0 {
                0xff
            } else {
                0xffu8 << (8 - tail)
            };
            for row in bits.chunks_exact(stride) {
                buf.extend(row.iter().map(|b| !b));
                if let Some(last) = buf.last_mut() {
                    *last &= keep;
                }
            }
        }
        Format::Png => {
            let mut enc = png::Encoder::new(&mut *buf, width, height);
            enc.set_color(png::ColorType::Grayscale);
            enc.set_depth(png::BitDepth::One);
            enc.set_compression(png::Compression::Fast);
            let mut w = enc.write_header()?;
            w.write_image_data(bits)?;
            w.finish()?;
        }
    }
    Ok(())
}

/// Writes `data` to a temporary name beside `path`, then renames it into
/// place, so a reader never sees half a file.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("frame");
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    fs::write(&tmp, data).with_context(|| format!("cannot write {}", tmp.display()))?;
    fs::rename(&tmp, path)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))?;
    Ok(())
}
