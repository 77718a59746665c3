//! `cargo xtask bench pi` (in progress).
use anyhow::{bail, Result};

pub fn run(_args: &[String]) -> Result<()> {
    bail!("bench pi: not implemented yet")
}
