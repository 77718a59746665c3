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
  dist              Pi builds: target/dist/{armv6,armv7,host} + SHA256SUMS, arch-checked
  qemu [all|unit|e2e|sigill|deploy]
                    prove the Pi builds under qemu-user (arm1176 / cortex-a7)
  netbed [TEST..]   two-host streaming tests over network namespaces (root):
                    throughput, restart, linkdown, slow, hostile
  bench link        fps, Mbit/s, latency for TCP/UDP on 100 Mbit and Wi-Fi-like links
  bench pi          instructions per 1024x768 frame on arm1176/cortex-a7, est. Pi fps
  bench view        receiver throughput with and without the live view (--http) and a
                    browser attached, as ratios; writes docs/BENCHMARKS.md `## Live view`
  deploy            copy the Pi builds over SSH and run them (deploy.toml; --help)
  vectors           regenerate the committed numpy test vectors
  help              this text
";

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
        "vectors" => ci::vectors(),
        "help" | "--help" | "-h" => {
            print!("{HELP}");
            Ok(())
        }
        other => bail!("unknown task {other:?}\n\n{HELP}"),
    }
}
