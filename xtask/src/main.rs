//! `cargo xtask`: the project's automation, in plain Rust (no shell scripts).
//!
//! Run `cargo xtask help` for the list of tasks.

mod bench;
mod browser;
mod ci;
mod codecs;
mod demo;
mod deploy;
mod deps;
mod dist;
mod fuzz;
mod msrv;
mod netbed;
mod pibench;
mod samples;
mod util;
mod viewbench;

use anyhow::{bail, Result};

const HELP: &str = "\
cargo xtask <task> [args]

Tasks:
  demo              receiver + sender on loopback over generated sample images;
                    masks land in target/demo/out, a summary is printed
  ci                the full test run: fmt, clippy -D warnings, all tests, numpy
                    interop (installs numpy into target/venv when missing)
  bench [core]      threshold/pack/unpack/CRC vs numpy on this machine, loopback fps
  bench codecs      every codec on a corpus of real masks (sizes, µs, targets);
                    writes target/codec-bench/report.md
  dist              Pi builds: target/dist/{armv6,armv7,host} + SHA256SUMS, arch-checked
  qemu [all|unit|e2e|sigill|deploy]
                    prove the Pi builds under qemu-user (arm1176 / cortex-a7)
  netbed [TEST..]   two-host streaming tests over network namespaces (root):
                    throughput, restart, restart-nodrop, linkdown, slow, stall, hostile
  bench link        fps, Mbit/s, latency for TCP/UDP on 100 Mbit and Wi-Fi-like links
  bench pi          instructions per 1024x768 frame on arm1176/cortex-a7, est. Pi fps
  bench view        receiver throughput with and without the live view (--http) and a
                    browser attached, as ratios; writes docs/BENCHMARKS.md `## Live view`
  deploy            copy the Pi builds over SSH and run them (deploy.toml; --help)
  msrv              check the workspace with the Rust of Cargo.toml's rust-version
                    (installed by rustup when missing)
  fuzz [TARGET..]   libFuzzer on the decoders and the wire reader (fuzz/; nightly)
  vectors           regenerate the committed numpy test vectors
  help              this text

`cargo xtask TASK --help` says more about one task.
";

/// Usage of the tasks that do not parse `--help` themselves.
fn usage(task: &str, rest: &[String]) -> Option<&'static str> {
    let sub = rest.first().map(String::as_str);
    Some(match (task, sub) {
        ("demo", _) => {
            "cargo xtask demo [--frames N] [--dev]\n\
             builds the binaries, generates sample images in target/demo/in, runs a receiver\n\
             and a sender on loopback for N frames (default 240, --loop over the images) and\n\
             prints fps, bytes and compression; the masks land in target/demo/out as PNG\n\
             --dev: the debug binaries (cargo xtask ci runs it so, with --frames 48)\n"
        }
        ("ci", _) => {
            "cargo xtask ci\n\
             the full test run (what .ci/run calls): rustfmt, clippy -D warnings, every test\n\
             (numpy interop, camera input with ffmpeg, the live view in headless Chromium),\n\
             the two-host netbed tests, the Pi builds proven under qemu-user (built in the\n\
             background at nice 19 from the start; log: target/ci-pi-build.log), the MSRV check\n\
             (`cargo xtask msrv`, in the background beside the Pi proofs; log:\n\
             target/ci-msrv.log). Installs what it needs (rustup targets, rust-src and the\n\
             rust-version toolchain; zig and cargo-zigbuild from PyPI in target/zig-venv unless\n\
             on PATH at the pinned versions; Debian packages in one apt-get when root, Chromium\n\
             in a second; numpy in target/venv) or says\n\
             exactly what is missing; a test that cannot run here fails the run, with or\n\
             without CI=true (nothing is skipped)\n"
        }
        ("fuzz", _) => fuzz::HELP,
        ("vectors", _) => {
            "cargo xtask vectors\n\
             regenerates the committed numpy test vectors\n\
             (crates/bitmask-core/tests/numpy_vectors.txt) with numpy in target/venv\n"
        }
        ("bench", Some("codecs")) => {
            "cargo xtask bench codecs [--reps N] [--corpus DIR] [--regen]\n\
             every codec (bilevel, auto, G4, zstd-1/3, lz4, zlib-6) on the codec corpus (built\n\
             on first use by tools/corpus/make_corpus.py into target/codec-corpus; --regen\n\
             rebuilds it): bytes, encode and decode µs (fastest of N passes, default 5), the\n\
             numbers the issue's targets are checked against; writes target/codec-bench/report.md and masks.csv\n"
        }
        ("bench", Some("view")) => {
            "cargo xtask bench view [--frames N] [--rounds N]\n\
             receiver throughput with and without the live view and a browser attached, as\n\
             ratios; writes docs/BENCHMARKS.md `## Live view`\n"
        }
        ("bench", Some("link")) => {
            "cargo xtask bench link [--secs N] [--fps N] [--codec NAME].. [--profile ethernet|wifi]\n\
             fps, Mbit/s and latency over TCP and UDP between two network namespaces on a\n\
             shaped link (root needed)\n"
        }
        ("bench", Some("pi")) => return None, // parses --help itself
        ("bench", _) => {
            "cargo xtask bench [core]\n\
             threshold/pack/unpack/CRC against numpy on this machine, and loopback fps, as\n\
             ratios within one run. Others: bench codecs|pi|view|link (each has --help)\n"
        }
        _ => return None,
    })
}

fn main() {
    if let Err(e) = run() {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (task, rest) = match args.split_first() {
        Some((t, r)) => (t.as_str(), r),
        None => ("help", &[][..]),
    };
    if rest.iter().any(|a| a == "--help" || a == "-h") {
        if let Some(u) = usage(task, rest) {
            print!("{u}");
            return Ok(());
        }
    }
    match task {
        "demo" => demo::run(rest),
        "ci" => ci::run_ci(rest),
        "bench" if rest.first().map(String::as_str) == Some("codecs") => codecs::run(&rest[1..]),
        "bench" if rest.first().map(String::as_str) == Some("pi") => pibench::run(&rest[1..]),
        "bench" if rest.first().map(String::as_str) == Some("view") => viewbench::run(&rest[1..]),
        "bench" if rest.first().map(String::as_str) == Some("link") => {
            netbed::bench_link(&rest[1..])
        }
        "netbed" => netbed::run(rest),
        "bench" => bench::run(rest),
        "dist" => dist::run_dist(rest),
        "qemu" => dist::run_qemu(rest),
        "deploy" => deploy::run(rest),
        "fuzz" => fuzz::run_fuzz(rest),
        "vectors" => ci::vectors(),
        "msrv" => msrv::run_msrv(rest),
        // what `cargo xtask ci` runs in the background (dist.rs, `Background`)
        "ci-background" => dist::run_background(rest),
        "help" | "--help" | "-h" => {
            print!("{HELP}");
            Ok(())
        }
        other => bail!("unknown task {other:?}\n\n{HELP}"),
    }
}
