//! `cargo xtask fuzz`: libFuzzer campaigns on the targets in `fuzz/`
//! (cargo-fuzz, nightly). The committed corpus is replayed on stable in every
//! test run (`tests/tests/fuzz_corpus.rs`); this task looks for new inputs.

use crate::util::{have, output, root, run};
use anyhow::{bail, Context, Result};
use std::process::Command;

const TARGETS: [&str; 7] = [
    "codec_decode",
    "codec_mutate",
    "roundtrip",
    "wire_reader",
    "codec_diff",
    "wire_msgs",
    "wire_reassembly",
];

/// `cargo xtask fuzz --help`.
pub const HELP: &str = "\
cargo xtask fuzz [--secs N] [--replay | --minimise] [TARGET...]

Fuzzes the targets in fuzz/ (all by default) one after the other, N seconds each
(default 60), with libFuzzer (cargo-fuzz, AddressSanitizer, debug assertions and
overflow checks), starting from the committed corpus fuzz/corpus/TARGET, to which it adds the inputs
that reach new code (commit them after --minimise).

Targets:
  codec_decode   any payload, any codec id and flags, with or without a reference
  codec_mutate   valid key and delta payloads of generated masks, then edited
  roundtrip      edge-case masks and streams through every codec: bit-exact back,
                 and a decoder that lost a frame never returns a wrong mask
  wire_reader    the frame reader on arbitrary streams, header and datagram parsing
  codec_diff     delta frames against a reference held as lists and held packed:
                 the two decodes agree (valid, edited and forged payloads)
  wire_msgs      datagram headers (consistent ones accepted, payload bounded),
                 hellos (valid names round-trip), acknowledgements in pieces
  wire_reassembly  the UDP reassembler: real and forged fragments in any order,
                 copies, refusals, time passing: bounded, never a wrong frame

  --replay       run each corpus input once (no fuzzing)
  --minimise     shrink each corpus to the inputs that keep its coverage (cargo fuzz cmin)
  --secs N       seconds per target (default 60)

Needs the nightly toolchain and cargo-fuzz: installed when missing. A finding
(panic, timeout, leak, out of memory) ends the run with an error; its input is in
fuzz/artifacts/TARGET/ (reproduce: cd fuzz && cargo +nightly fuzz run -O TARGET FILE).
";

/// Runs the task.
pub fn run_fuzz(args: &[String]) -> Result<()> {
    let mut secs = 60u64;
    let mut mode = "fuzz";
    let mut targets = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--secs" => {
                let v = it.next().context("--secs needs a number of seconds")?;
                secs = v
                    .parse()
                    .ok()
                    .filter(|s| *s > 0)
                    .with_context(|| format!("--secs {v:?}: not a positive whole number"))?;
            }
            "--replay" => mode = "replay",
            "--minimise" | "--minimize" => mode = "minimise",
            t if TARGETS.contains(&t) => targets.push(t),
            other => bail!(
                "unknown argument {other:?}: targets are {}\n\n{HELP}",
                TARGETS.join(", ")
            ),
        }
    }
    if targets.is_empty() {
        targets = TARGETS.to_vec();
    }
    ensure_tools()?;
    let dir = root().join("fuzz");
    for t in targets {
        let corpus = format!("corpus/{t}");
        let mut c = Command::new("cargo");
        c.current_dir(&dir).args(["+nightly", "fuzz"]);
        match mode {
            "minimise" => {
                let before = std::fs::read_dir(dir.join(&corpus))?.count();
                run(c.args(["cmin", "-O", "-a", t, &corpus]))?;
                let after = std::fs::read_dir(dir.join(&corpus))?.count();
                eprintln!("xtask: fuzz {t}: corpus {before} -> {after} inputs");
                continue;
            }
            "replay" => {
                c.args(["run", "-O", "-a", t, &corpus, "--", "-runs=0"]);
            }
            _ => {
                let art = format!("artifacts/{t}/");
                std::fs::create_dir_all(dir.join(&art))?;
                c.args([
                    "run",
                    "-O",
                    // (-O alone turns debug assertions and overflow checks off)
                    "-a",
                    t,
                    &corpus,
                    "--",
                    &format!("-max_total_time={secs}"),
                    "-rss_limit_mb=2048",
                    "-timeout=5",
                    "-max_len=65536",
                    "-print_final_stats=1",
                    &format!("-artifact_prefix={art}"),
                ]);
            }
        }
        run(&mut c).with_context(|| {
            format!(
                "fuzz target {t} found a problem: its input is in fuzz/artifacts/{t}/ \
                 (reproduce: cd fuzz && cargo +nightly fuzz run -O {t} FILE)"
            )
        })?;
        eprintln!(
            "xtask: fuzz {t}: {} inputs in fuzz/{corpus}, no finding",
            std::fs::read_dir(dir.join(&corpus))?.count()
        );
    }
    Ok(())
}

/// The nightly toolchain and cargo-fuzz, installed when missing.
fn ensure_tools() -> Result<()> {
    if !have("rustup") {
        bail!("rustup is needed for the nightly toolchain that cargo-fuzz uses");
    }
    crate::util::ensure_toolchain("nightly")?;
    let version = || output(Command::new("cargo").args(["+nightly", "fuzz", "--version"]));
    let v = match version() {
        Ok(v) => v,
        Err(_) => {
            run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))?;
            version()?
        }
    };
    eprintln!("xtask: {}", v.trim());
    Ok(())
}
