//! Packing 0/1 bytes into bits and unpacking them again (numpy interop).

use crate::{check_dims, check_len, kernels, packed_len, packed_stride, CoreError};

/// Order of the 8 pixels within a byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BitOrder {
    /// Pixel 0 is bit 7 (numpy `bitorder='big'`, the default, and the wire layout).
    #[default]
    MsbFirst,
    /// Pixel 0 is bit 0 (numpy `bitorder='little'`).
    LsbFirst,
}

/// `LUT[b]` = the 8 bytes 0/1 of byte `b`, MSB first, as a little-endian u64.
static UNPACK_LUT: [u64; 256] = {
    let mut t = [0u64; 256];
    let mut b = 0;
    while b < 256 {
        let mut v = 0u64;
        let mut i = 0;
        while i < 8 {
            v |= (((b >> (7 - i)) & 1) as u64) << (8 * i);
            i += 1;
        }
        t[b] = v;
        b += 1;
    }
    t
};

/// Packs `bits` (one byte per pixel, nonzero = 1) into `out`, 8 pixels per
/// byte, as `numpy.packbits(bits, bitorder=...)` on a 1-D array: the last byte
/// is padded with 0 bits. `out.len()` must be `ceil(bits.len() / 8)`.
pub fn pack_bits(bits: &[u8], order: BitOrder, out: &mut [u8]) -> Result<(), CoreError> {
    check_len("output", bits.len().div_ceil(8), out.len())?;
    kernels::nonzero_bits(bits, out);
    if order == BitOrder::LsbFirst {
        out.iter_mut().for_each(|b| *b = b.reverse_bits());
    }
    Ok(())
}

/// Packs a `width` x `height` array of 0/nonzero bytes into the wire layout
/// (`numpy.packbits(bits.reshape(height, width), axis=1)`).
pub fn pack_rows(
    bits: &[u8],
    width: usize,
    height: usize,
    out: &mut [u8],
) -> Result<(), CoreError> {
    check_dims(width, height)?;
    check_len("input", width * height, bits.len())?;
    check_len("output", packed_len(width, height), out.len())?;
    if width % 8 == 0 {
        // Rows end on byte boundaries: one run over the whole frame (a
        // dispatch per row cost 15% of a 1024x768 frame).
        kernels::nonzero_bits(bits, out);
        return Ok(());
    }
    let stride = packed_stride(width);
    for (row, dst) in bits.chunks_exact(width).zip(out.chunks_exact_mut(stride)) {
        kernels::nonzero_bits(row, dst);
    }
    Ok(())
}

/// Unpacks the first `out.len()` bits of `packed` into 0/1 bytes, as
/// `numpy.unpackbits(packed, count=out.len(), bitorder=...)`.
pub fn unpack_bits(packed: &[u8], order: BitOrder, out: &mut [u8]) -> Result<(), CoreError> {
    let need = out.len().div_ceil(8);
    if packed.len() < need {
        // (a longer input is fine: only its first bits are read)
        return Err(CoreError::BufferTooShort {
            what: "packed input",
            needed: need,
            actual: packed.len(),
        });
    }
    unpack_into(packed, order, 1, out);
    Ok(())
}

fn unpack_into(packed: &[u8], order: BitOrder, one: u8, out: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    let (packed, out) = if order == BitOrder::MsbFirst {
        let done = if std::is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 detected.
            unsafe { kernels::x86::unpack_avx2(packed, one, out) }
        } else {
            kernels::x86::unpack_sse2(packed, one, out)
        };
        (&packed[done..], &mut out[done * 8..])
    } else {
        (packed, out)
    };
    let scale = one as u64; // 0/1 bytes times 1 or 255: no carries
    let full = out.len() / 8;
    let mut chunks = out.chunks_exact_mut(8);
    for (dst, &b) in (&mut chunks).zip(packed) {
        let b = if order == BitOrder::LsbFirst {
            b.reverse_bits()
        } else {
            b
        };
        dst.copy_from_slice(&(UNPACK_LUT[b as usize] * scale).to_le_bytes());
    }
    let rest = chunks.into_remainder();
    if !rest.is_empty() {
        let b = packed[full];
        let b = if order == BitOrder::LsbFirst {
            b.reverse_bits()
        } else {
            b
        };
        let v = (UNPACK_LUT[b as usize] * scale).to_le_bytes();
        let n = rest.len();
        rest.copy_from_slice(&v[..n]);
    }
}

/// Unpacks a wire-layout mask into `width * height` bytes of 0/1
/// (`numpy.unpackbits(packed, axis=1, count=width)`).
pub fn unpack_rows(
    packed: &[u8],
    width: usize,
    height: usize,
    out: &mut [u8],
) -> Result<(), CoreError> {
    unpack_rows_scaled(packed, width, height, 1, out)
}

/// Unpacks a wire-layout mask into `width * height` gray bytes: 1 → 255, 0 → 0.
pub fn unpack_rows_gray8(
    packed: &[u8],
    width: usize,
    height: usize,
    out: &mut [u8],
) -> Result<(), CoreError> {
    unpack_rows_scaled(packed, width, height, 255, out)
}

fn unpack_rows_scaled(
    packed: &[u8],
    width: usize,
    height: usize,
    one: u8,
    out: &mut [u8],
) -> Result<(), CoreError> {
    check_dims(width, height)?;
    check_len("packed input", packed_len(width, height), packed.len())?;
    check_len("output", width * height, out.len())?;
    let stride = packed_stride(width);
    for (src, dst) in packed.chunks_exact(stride).zip(out.chunks_exact_mut(width)) {
        unpack_into(src, BitOrder::MsbFirst, one, dst);
    }
    Ok(())
}

/// Converts a wire-layout mask (rows padded to bytes) into the flat layout of
/// `numpy.packbits(mask.ravel())`: rows follow each other with no padding,
/// only the very end is padded. `out.len()` must be `ceil(width*height/8)`.
pub fn repack_rows_to_flat(
    packed: &[u8],
    width: usize,
    height: usize,
    out: &mut [u8],
) -> Result<(), CoreError> {
    check_dims(width, height)?;
    check_len("packed input", packed_len(width, height), packed.len())?;
    check_len("output", (width * height).div_ceil(8), out.len())?;
    let stride = packed_stride(width);
    if width % 8 == 0 {
        out.copy_from_slice(packed);
        return Ok(());
    }
    out.fill(0);
    let mut bit = 0usize; // next output bit position
    for row in packed.chunks_exact(stride) {
        let mut left = width;
        for &b in row {
            let n = left.min(8);
            let v = b >> (8 - n); // the row's next n bits, right-aligned
            let (byte, off) = (bit / 8, bit % 8);
            // place n bits starting at bit `off` (MSB-first) of out[byte], spilling into the next byte
            let wide = (v as u16) << (16 - off - n);
            out[byte] |= (wide >> 8) as u8;
            if off + n > 8 {
                out[byte + 1] |= wide as u8;
            }
            bit += n;
            left -= n;
        }
    }
    Ok(())
}
