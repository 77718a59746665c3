//! `cargo xtask ci`: the full test run.

use crate::util::{cargo, is_ci, root, run, venv_python};
use anyhow::Result;
use std::process::Command;
use std::time::Instant;

pub fn run_ci(_args: &[String]) -> Result<()> {
    let start = Instant::now();
    step("rustfmt", || {
        run(cargo().args(["fmt", "--all", "--", "--check"]))
    })?;
    step("clippy", || {
        run(cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))
    })?;
    step("python venv with numpy", || venv_python(&[]).map(|_| ()))?;
    step("build binaries", || {
        run(cargo().args(["build", "--workspace"]))
    })?;
    step("headless Chromium for the live-view test", || {
        crate::browser::ensure().map(|_| ())
    })?;
    step("tests", || {
        let mut c = cargo();
        c.args(["test", "--workspace"]);
        if is_ci() {
            c.env("CI", "true");
        }
        run(&mut c)
    })?;
    step("Pi builds under qemu (dist, unit, sigill, e2e, deploy)", crate::dist::ci_step)?;
    step(
        "two-host streaming tests (netns + tc; slow receiver 15 s)",
        crate::netbed::ci_step,
    )?;
    eprintln!(
        "xtask ci: all steps passed in {:.0} s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn step(name: &str, f: impl FnOnce() -> Result<()>) -> Result<()> {
    let t = Instant::now();
    eprintln!("==> {name}");
    let r = f();
    eprintln!(
        "<== {name}: {} in {:.1} s",
        if r.is_ok() { "ok" } else { "FAILED" },
        t.elapsed().as_secs_f64()
    );
    r
}

/// `cargo xtask vectors`: regenerate the committed numpy test vectors.
pub fn vectors() -> Result<()> {
    let py = venv_python(&[])?;
    let script = root().join("crates/bitmask-core/tests/make_numpy_vectors.py");
    let out = crate::util::output(Command::new(py).arg(script))?;
    let dest = root().join("crates/bitmask-core/tests/numpy_vectors.txt");
    std::fs::write(&dest, out)?;
    eprintln!("wrote {}", dest.display());
    Ok(())
}
