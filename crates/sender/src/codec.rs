//! The codec seam of the pipeline filled by `bitmask-codec`.

use crate::input::Mask;
use crate::pipeline::FrameEncoder;
use anyhow::Result;
use bitmask_codec::{Choice, Encoder};

/// `--codec` / `--keyframe-interval` as a [`FrameEncoder`].
pub struct CodecEncoder(Encoder);

impl CodecEncoder {
    /// An encoder for `choice` with a key frame every `keyframe_interval` frames.
    pub fn new(choice: Choice, keyframe_interval: u32) -> Self {
        CodecEncoder(Encoder::new(choice, keyframe_interval.max(1)))
    }
}

impl FrameEncoder for CodecEncoder {
    fn encode(&mut self, mask: &Mask, sequence: u64, out: &mut Vec<u8>) -> Result<(u8, u8)> {
        // (build_frame says which frame)
        let e = self
            .0
            .encode(&mask.bits, mask.width, mask.height, sequence, out)?;
        Ok((e.codec, e.flags))
    }

    fn force_keyframe(&mut self) {
        self.0.force_keyframe();
    }
}
