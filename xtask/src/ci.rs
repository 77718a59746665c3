//! `cargo xtask ci`: the full test run.

use crate::util::{cargo, root, run, venv_python};
use anyhow::{bail, Result};
use std::process::Command;
use std::time::Instant;

/// `cargo xtask ci`: every step of the full test run, in order; fails at the first that fails.
pub fn run_ci(_args: &[String]) -> Result<()> {
    let start = Instant::now();
    step("rustfmt", || {
        // (rustup's minimal profile, as in the rust Docker images, has neither)
        crate::util::ensure_components(&["rustfmt", "clippy"], "the rustfmt and clippy steps")?;
        run(cargo().args(["fmt", "--all", "--", "--check"]))
    })?;
    // The ARM builds take minutes of CPU; started now, in the background at
    // the lowest priority, they use what the host steps leave idle (they
    // install their Rust tools themselves, and no Debian package: binutils,
    // which they use at the end, comes with the apt-get below).
    let (mut pi_builds, mut msrv) = (None, None);
    step(
        "Pi builds started in the background (the MSRV check waits beside them)",
        || {
            use crate::dist::{Background, Job};
            pi_builds = Some(Background::start(Job::PiBuilds)?);
            // (made now, from this xtask binary, which a later step may rebuild)
            msrv = Some(Background::start(Job::Msrv)?);
            Ok(())
        },
    )?;
    // qemu-user and the armhf libc for the Pi step, sshd for its deploy
    // test, ffmpeg and Chromium for the tests (binutils where gcc did not
    // bring it): one apt-get, beside the builds
    step(
        "Debian packages (qemu-user, armhf libc, sshd, ffmpeg, iproute2, python3-venv, Chromium)",
        crate::deps::ensure_for_ci,
    )?;
    check_background(&mut pi_builds, &mut msrv)?;
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
    check_background(&mut pi_builds, &mut msrv)?;
    // scikit-image: tests/tests/numpy_interop.rs checks Otsu against skimage.filters.threshold_otsu
    step("python venv with numpy", || {
        venv_python(&["scikit-image"]).map(|_| ())
    })?;
    check_background(&mut pi_builds, &mut msrv)?;
    // the photo masks of tools/corpus/make_corpus.py: crates/codec/tests/corpus.rs
    // round-trips every one (issue 3: "a test over the whole corpus, in the test run")
    step("codec corpus", || {
        crate::codecs::ensure_corpus(&crate::codecs::corpus_dir(), false)
    })?;
    check_background(&mut pi_builds, &mut msrv)?;
    step("build binaries", || {
        run(cargo().args(["build", "--workspace"]))
    })?;
    check_background(&mut pi_builds, &mut msrv)?;
    // the README's first command, on the binaries just built
    step(
        "demo (the README's first command; debug binaries, 48 frames)",
        || crate::demo::demo(48, false),
    )?;
    check_background(&mut pi_builds, &mut msrv)?;
    let mut tally = Tally::default();
    step("tests", || {
        let mut c = cargo();
        // (every failing test binary is shown, not only the first)
        c.args(["test", "--workspace", "--no-fail-fast"]);
        // (a test that cannot run here fails instead of skipping, with
        // or without CI=true: this is the full test run)
        c.env("CI", "true");
        // Most of the integration tests wait: on timeouts that are part of
        // what they test (a receiver given up on after 10 s, say), on
        // processes they started. Eight at a time per test binary instead
        // of one per core: 108 s instead of 174 s for this step's tests on
        // two cores, the same CPU time.
        if std::env::var_os("RUST_TEST_THREADS").is_none() {
            c.env("RUST_TEST_THREADS", TEST_THREADS);
        }
        tally = run_tests(&mut c)?;
        Ok(())
    })?;
    check_background(&mut pi_builds, &mut msrv)?;
    // bitmask-codec as a user without a C compiler builds it (its library
    // and its own tests: the zstd cases are left out, nothing else; not
    // its doctests and examples, which the step above ran, to keep the
    // run short)
    step("codec tests without the zstd feature", || {
        let mut c = cargo();
        c.args([
            "test",
            "-p",
            "bitmask-codec",
            "--no-default-features",
            "--lib",
            "--tests",
            "--no-fail-fast",
        ])
        .env("CI", "true");
        let t = run_tests(&mut c)?;
        tally.passed += t.passed;
        tally.failed += t.failed;
        Ok(())
    })?;
    check_background(&mut pi_builds, &mut msrv)?;
    // Before the Pi step: these tests mostly wait on timers and a shaped
    // link, while the ARM builds go on at nice 19 (checked: 99.8% of bulk
    // TCP with two busy loops at nice 19 beside them).
    step(
        "two-host streaming tests (netns + tc; slow receiver 15 s)",
        crate::netbed::ci_step,
    )?;
    check_background(&mut pi_builds, &mut msrv)?;
    step(
        "Pi builds under qemu (dist, unit, sigill, e2e, deploy; the MSRV check starts beside them)",
        || match msrv.as_mut() {
            Some(m) => crate::dist::ci_step(pi_builds, m),
            None => bail!("the MSRV check was not made ready"),
        },
    )?;
    // bitmask-core's ARM kernels (asm!) exist only in the Pi builds: linted
    // as the ARMv7 build compiles them (the NEON and the ARMv6 ones), and
    // with the ARMv6 build's cfg alone (its std is built from source, so on
    // the ARMv7 target); after the Pi step, whose job installed the target
    // (two rustups adding one target at once could clash)
    step("clippy for the Pi builds' kernels (bitmask-core)", || {
        use crate::dist::Arch;
        crate::util::ensure_target(None, Arch::V7.triple())?;
        for flags in [Arch::V7.rustflags(), "--cfg bitmask_armv6"] {
            eprintln!("xtask: RUSTFLAGS for {}: {flags}", Arch::V7.triple());
            run(cargo()
                .args(["clippy", "-p", "bitmask-core", "--all-targets", "--target"])
                .arg(Arch::V7.triple())
                .args(["--", "-D", "warnings"])
                // (RUSTFLAGS would win over the target's own)
                .env_remove("RUSTFLAGS")
                .env_remove("CARGO_ENCODED_RUSTFLAGS")
                .env(
                    format!("CARGO_TARGET_{}_RUSTFLAGS", Arch::V7.env_key()),
                    flags,
                ))?;
        }
        Ok(())
    })?;
    step(
        "MSRV check (the Rust of Cargo.toml's rust-version: `cargo xtask msrv`)",
        || msrv.map_or(Ok(()), crate::dist::Background::wait),
    )?;
    eprintln!(
        "xtask ci: all steps passed in {:.0} s",
        start.elapsed().as_secs_f64()
    );
    println!("tests: {} passed, {} failed", tally.passed, tally.failed);
    Ok(())
}

/// Fails when a background job has failed already (a tool it needs is
/// missing, say): said at the next step, not at the step that waits for it.
fn check_background(
    pi_builds: &mut Option<crate::dist::Background>,
    msrv: &mut Option<crate::dist::Background>,
) -> Result<()> {
    for job in [pi_builds, msrv].into_iter().flatten() {
        job.check()?;
    }
    Ok(())
}

/// Tests run at once per test binary in the CI's test step (see there).
const TEST_THREADS: &str = "8";

/// Test counts summed over every `test result:` line of a cargo test run.
#[derive(Default, Debug, Clone, Copy)]
struct Tally {
    passed: u64,
    failed: u64,
    ignored: u64,
}

/// Runs `cargo test`, echoing its output, and sums its result lines. Fails
/// when it fails, when no test ran, or when a test is ignored (nothing is
/// skipped quietly).
fn run_tests(cmd: &mut Command) -> Result<Tally> {
    use std::io::{BufRead, BufReader};
    eprintln!("$ {}", crate::util::show(cmd));
    let mut child = cmd.stdout(std::process::Stdio::piped()).spawn()?;
    let mut t = Tally::default();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            let num = |what: &str| -> u64 {
                rest.split(';')
                    .find_map(|p| {
                        p.trim()
                            .strip_suffix(what)
                            .and_then(|n| n.trim().rsplit(' ').next()?.parse().ok())
                    })
                    .unwrap_or(0)
            };
            t.passed += num("passed");
            t.failed += num("failed");
            t.ignored += num("ignored");
        }
    }
    let st = child.wait()?;
    eprintln!(
        "cargo test: {} passed, {} failed, {} ignored",
        t.passed, t.failed, t.ignored
    );
    anyhow::ensure!(st.success(), "cargo test failed: {st}");
    anyhow::ensure!(t.passed > 0, "cargo test ran no test");
    anyhow::ensure!(
        t.ignored == 0,
        "{} test(s) were ignored: nothing may be skipped quietly",
        t.ignored
    );
    Ok(t)
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
