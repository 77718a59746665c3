//! Bit and varint helpers: an MSB-first bit writer/reader and LEB128.

/// Writes bits MSB-first into a byte vector.
#[derive(Debug, Default)]
pub(crate) struct BitWriter {
    pub(crate) buf: Vec<u8>,
    acc: u64,
    n: u32,
}

impl BitWriter {
    pub(crate) fn clear(&mut self) {
        self.buf.clear();
        self.acc = 0;
        self.n = 0;
    }

    /// Appends the low `nb` bits of `v` (`nb <= 32`; 0 appends nothing).
    #[inline]
    pub(crate) fn put(&mut self, v: u32, nb: u32) {
        // `acc` holds `n < 32` pending bits (its higher bits are stale).
        self.acc = (self.acc << nb) | (v as u64 & ((1u64 << nb) - 1));
        self.n += nb;
        if self.n >= 32 {
            self.n -= 32;
            self.buf
                .extend_from_slice(&((self.acc >> self.n) as u32).to_be_bytes());
        }
    }

    /// Writes the pending bits, the last byte padded with zero bits.
    pub(crate) fn finish(&mut self) {
        while self.n >= 8 {
            self.n -= 8;
            self.buf.push((self.acc >> self.n) as u8);
        }
        if self.n > 0 {
            self.buf.push((self.acc << (8 - self.n)) as u8);
            self.n = 0;
        }
        self.acc = 0;
    }
}

/// Reads bits MSB-first; past the end it yields zeros and remembers the overrun.
#[derive(Debug)]
pub(crate) struct BitReader<'a> {
    data: &'a [u8],
    i: usize,
    acc: u64,
    n: u32,
    pub(crate) overrun: bool,
}

impl<'a> BitReader<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        BitReader {
            data,
            i: 0,
            acc: 0,
            n: 0,
            overrun: false,
        }
    }

    /// Reads `nb <= 24` bits.
    #[inline]
    pub(crate) fn get(&mut self, nb: u32) -> u32 {
        while self.n < nb {
            let b = match self.data.get(self.i) {
                Some(&b) => {
                    self.i += 1;
                    b
                }
                None => {
                    self.overrun = true;
                    0
                }
            };
            self.acc = (self.acc << 8) | b as u64;
            self.n += 8;
        }
        self.n -= nb;
        ((self.acc >> self.n) & ((1u64 << nb) - 1)) as u32
    }

    /// True when every byte was read and nothing past the end.
    pub(crate) fn exhausted_exactly(&self) -> bool {
        !self.overrun && self.i == self.data.len()
    }
}

/// Appends `v` as LEB128.
pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads a LEB128 value of at most 10 bytes at `*pos`; `None` if truncated or too long.
pub(crate) fn get_varint(data: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for k in 0..10 {
        let b = *data.get(*pos)?;
        *pos += 1;
        let part = (b & 0x7f) as u64;
        if k == 9 && part > 1 {
            return None;
        }
        v |= part << (7 * k);
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reader returns what the writer wrote, for every width 0..=24
    /// at every bit offset, then zeros past the end, and says whether it
    /// stopped exactly at the end.
    #[test]
    fn reader_reads_what_the_writer_wrote() {
        let mut w = BitWriter::default();
        let mut expect = Vec::new();
        for nb in 0..=24u32 {
            for off in 0..8u32 {
                let v = (0x9E37_79B9u32.rotate_left(nb * 8 + off)) & ((1u32 << nb) - 1);
                w.put(v, nb);
                expect.push((v, nb));
                w.put(off & 1, 1);
                expect.push((off & 1, 1));
            }
        }
        w.finish();
        let mut r = BitReader::new(&w.buf);
        for &(v, nb) in &expect {
            assert_eq!(r.get(nb), v, "{nb} bits");
        }
        assert!(r.exhausted_exactly(), "stops in the last byte");
        // Past the end: zeros, and no longer exact.
        assert_eq!(r.get(24), 0);
        assert_eq!(r.get(24), 0);
        assert!(!r.exhausted_exactly());
        // An empty stream is exhausted; one bit from it is an overrun.
        let mut r = BitReader::new(&[]);
        assert!(r.exhausted_exactly());
        assert_eq!(r.get(0), 0);
        assert!(r.exhausted_exactly());
        assert_eq!(r.get(1), 0);
        assert!(!r.exhausted_exactly());
        // A whole byte left unread is not exact either.
        let mut r = BitReader::new(&[0xA5, 0xFF]);
        assert_eq!(r.get(8), 0xA5);
        assert!(!r.exhausted_exactly());
    }
}
