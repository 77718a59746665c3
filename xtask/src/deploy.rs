//! `cargo xtask deploy` (in progress).
use anyhow::{bail, Result};

pub fn run(_args: &[String]) -> Result<()> {
    bail!("deploy: not implemented yet")
}
