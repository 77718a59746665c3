//! Fuzz targets of bitmask (cargo-fuzz; `cargo xtask fuzz`): the decoders of
//! every codec on hostile payloads, structure-aware mutations of valid
//! payloads, encoder/decoder round trips of edge-case masks and streams, and
//! the wire reader on arbitrary streams. The bodies live in `targets.rs`.

#[path = "targets.rs"]
mod targets;
pub use targets::*;

#[global_allocator]
static A: Counting = Counting;
