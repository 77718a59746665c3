//! `cargo xtask msrv`: proves the workspace's `rust-version` true.
//!
//! Cargo.toml promises that every crate builds with the Rust of
//! `[workspace.package] rust-version` (1.85: the `rustc` Debian 13
//! packages, for a build on a Pi itself). Nothing else checks that
//! promise: the toolchain here is newer, and a dependency's update can
//! quietly raise the minimum (the lockfile once held image 0.25.10, which
//! needs 1.88). This task installs that exact toolchain (rustup, minimal
//! profile) and checks every target of the workspace with it, against the
//! committed lockfile. The workspace's `resolver = "3"` keeps `cargo update`
//! to versions that this Rust builds. The library crates are also checked
//! for the Pi 2's ARMv7 target, plain (`cargo build` on a Pi) and with the
//! dist build's flags: bitmask-core's ARM code compiles only there; and for
//! wasm32-unknown-unknown without zstd, which their docs promise.

use crate::util::{ensure_target, ensure_toolchain, have, root, run};
use anyhow::{bail, Context, Result};
use std::process::Command;
use std::time::Instant;

const HELP: &str = "\
cargo xtask msrv
installs the toolchain named by Cargo.toml's rust-version (1.85 means 1.85.0; rustup,
minimal profile) and
runs `cargo check --workspace --all-targets --locked` with it (target dir target/msrv),
then checks the library crates for armv7-unknown-linux-gnueabihf (its std added to that
toolchain), plain and with the ARMv7 dist build's RUSTFLAGS, and for wasm32-unknown-unknown
without the zstd feature
";

/// `cargo xtask msrv`.
pub fn run_msrv(args: &[String]) -> Result<()> {
    if let Some(a) = args.first() {
        if !matches!(a.as_str(), "-h" | "--help") {
            bail!("unknown argument {a:?}\n\n{HELP}");
        }
        print!("{HELP}");
        return Ok(());
    }
    check()
}

/// The `rust-version` of `[workspace.package]` in the root Cargo.toml.
pub fn declared() -> Result<String> {
    let path = root().join("Cargo.toml");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let doc: toml::Table =
        toml::from_str(&text).with_context(|| format!("{} is not TOML", path.display()))?;
    doc.get("workspace")
        .and_then(|w| w.get("package"))
        .and_then(|p| p.get("rust-version"))
        .and_then(|v| v.as_str())
        .map(str::to_owned)
        .with_context(|| format!("{}: no [workspace.package] rust-version", path.display()))
}

/// Installs the declared toolchain when missing and checks the workspace with it.
pub fn check() -> Result<()> {
    let t = Instant::now();
    let declared = declared()?;
    // "1.85" promises 1.85.0 (Debian 13's), not the latest 1.85.x rustup
    // would install for "1.85"
    let version = if declared.split('.').count() == 2 {
        format!("{declared}.0")
    } else {
        declared.clone()
    };
    if !have("rustup") {
        bail!(
            "rustup is needed to install Rust {version} (Cargo.toml's rust-version) for the \
             MSRV check"
        );
    }
    // "rustc 1.85.0 (...)"
    let found = ensure_toolchain(&version)?;
    if found.split_whitespace().nth(1) != Some(version.as_str()) {
        bail!("rustup run {version} rustc says {found:?}, not Rust {version}");
    }
    eprintln!("xtask: checking the workspace with {found} (rust-version = {declared:?})");
    let mut c = cargo_of(&version);
    c.args(["check", "--workspace", "--all-targets", "--locked"]);
    run(&mut c).with_context(|| {
        format!(
            "the workspace does not build with Rust {version}, which Cargo.toml's rust-version \
             promises: use older APIs or dependencies (resolver 3 picks them on `cargo update`), \
             or raise rust-version"
        )
    })?;
    // The libraries' ARM code (bitmask-core's kernels), as a Pi compiles it.
    let arch = crate::dist::Arch::V7;
    let target = arch.triple();
    ensure_target(Some(&version), target)?;
    // (without zstd's C library, which needs a C cross compiler; lz4 is Rust)
    for flags in ["", arch.rustflags()] {
        eprintln!("xtask: RUSTFLAGS={flags:?}");
        check_libraries(&version, target, flags)?;
    }
    // And for wasm32-unknown-unknown, whose std has no clock (the codec's
    // `auto` reads none there) and no C compiler for zstd: what the crates'
    // docs promise a wasm user.
    let wasm = "wasm32-unknown-unknown";
    ensure_target(Some(&version), wasm)?;
    check_libraries(&version, wasm, "")?;
    eprintln!(
        "xtask: the workspace builds with Rust {version}, and the library crates for {target} \
         and {wasm} ({:.0} s)",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Checks the library crates for `target` with Rust `version` and
/// `RUSTFLAGS` `flags`, without zstd (its C library needs a C cross
/// compiler; lz4 is Rust).
fn check_libraries(version: &str, target: &str, flags: &str) -> Result<()> {
    let mut c = cargo_of(version);
    c.args([
        "check",
        "--locked",
        "--target",
        target,
        "--no-default-features",
        "-p",
        "bitmask-core",
        "-p",
        "bitmask-wire",
        "-p",
        "bitmask-codec",
    ])
    .env("RUSTFLAGS", flags);
    run(&mut c)
        .with_context(|| {
            format!("the library crates do not build for {target} with Rust {version}")
        })
        .map(drop)
}

/// `cargo` of toolchain `version`, in the workspace, building into target/msrv.
fn cargo_of(version: &str) -> Command {
    let mut c = Command::new("rustup");
    c.args(["run", version, "cargo"])
        .current_dir(root())
        .env("CARGO_TARGET_DIR", root().join("target/msrv"));
    // what `cargo xtask` was started with must not pick the compiler or
    // its flags (-D warnings would fail on a lint only this Rust has;
    // CARGO_ENCODED_RUSTFLAGS would win over the flags set here)
    for var in [
        "RUSTUP_TOOLCHAIN",
        "CARGO",
        "RUSTC",
        "RUSTDOC",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
    ] {
        c.env_remove(var);
    }
    c.env("RUSTFLAGS", "");
    c
}
