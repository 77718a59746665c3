//! `cargo xtask bench [core]`: the core kernels beside numpy, and loopback throughput.
//!
//! Every number is measured in this run on this machine; speed is reported as
//! a ratio against numpy measured in the same run (the machine is shared and noisy).

use crate::util::{build_bins, cargo, output, root, run as sh, venv_python, wait_listening};
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::process::{Command, Stdio};

/// `cargo xtask bench [core]`: the core kernels beside numpy (main.rs routes the other benchmarks).
pub fn run(args: &[String]) -> Result<()> {
    match args.first().map(String::as_str) {
        None | Some("core") => core(),
        Some(other) => bail!("unknown benchmark {other:?} (core)"),
    }
}

fn parse(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

fn core() -> Result<()> {
    let dir = root().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let samples = root().join("target/demo/in");
    crate::samples::scene(&samples, 24)?;
    let (w, h, rgb) = crate::samples::read_rgb_png(&samples.join("scene-000.png"))?;
    let rgb_path = dir.join("frame.rgb");
    std::fs::write(&rgb_path, &rgb)?;

    sh(cargo().args([
        "build",
        "--release",
        "-p",
        "bitmask-core",
        "--example",
        "bench_core",
    ]))?;
    let exe = crate::util::target_dir()?.join("release/examples/bench_core");
    let args = [
        rgb_path.to_string_lossy().into_owned(),
        w.to_string(),
        h.to_string(),
    ];
    let ours = parse(&output(Command::new(&exe).args(&args))?);
    let py = venv_python(&[])?;
    let numpy = parse(&output(
        Command::new(py)
            .arg(root().join("tools/bench/numpy_core.py"))
            .args(&args)
            .env_remove("OPENBLAS_CORETYPE")
            .env_remove("OPENBLAS_L2_SIZE"),
    )?);

    let rows = [
        (
            "threshold+pack gray8 (>= 170)",
            "threshold_pack_gray8",
            "np.packbits(gray >= 170, axis=1)",
        ),
        (
            "threshold+pack rgb8, blue >= 170",
            "threshold_pack_rgb8_blue",
            "np.packbits(rgb[:,:,2] >= 170)",
        ),
        (
            "threshold+pack rgb8, blue >= 170",
            "threshold_pack_rgb8_blue",
            "original recipe (copy, 2 masks, packbits)",
        ),
        (
            "threshold+pack rgb8, luma >= 128",
            "threshold_pack_rgb8_luma",
            "",
        ),
        (
            "pack 0/1 bytes",
            "pack_rows_01",
            "np.packbits(bits, axis=1)",
        ),
        (
            "unpack to 0/1 bytes",
            "unpack_rows",
            "np.unpackbits(packed, axis=1, count=w)",
        ),
        ("CRC-32 of 98,304 B", "crc32", "zlib.crc32"),
    ];
    let mut table = format!(
        "Frame {w}x{h}, numpy {}; medians of 15 samples, µs per frame.\n\n| job | bitmask µs | numpy job | numpy µs | speed-up |\n|---|---:|---|---:|---:|\n",
        numpy.get("numpy_version").map(String::as_str).unwrap_or("?")
    );
    for (i, (job, key, np_job)) in rows.iter().enumerate() {
        let r: f64 = ours
            .get(*key)
            .context(format!("bench_core printed no {key}"))?
            .parse()?;
        let np_key = if i == 2 { "original_recipe" } else { key };
        if np_job.is_empty() {
            // (no numpy counterpart)
            table += &format!("| {job} | {r:.1} | — | — | — |\n");
            continue;
        }
        let n: f64 = numpy
            .get(np_key)
            .and_then(|v| v.parse().ok())
            .with_context(|| {
                format!("the numpy run printed no {np_key} (tools/bench/numpy_core.py)")
            })?;
        table += &format!("| {job} | {r:.1} | `{np_job}` | {n:.1} | {:.1}x |\n", n / r);
    }
    table += "\nLoopback, release build, 2000 frames of the sample scene (blue >= 170), receiver writing to /dev/null:\n\n";
    for codec in ["raw", "auto"] {
        let lb = loopback(codec)?;
        table += &format!("- `--codec {codec}`: {lb}\n");
    }
    println!("{table}");
    std::fs::write(dir.join("core.md"), &table)?;
    eprintln!("(also written to {})", dir.join("core.md").display());
    Ok(())
}

/// Streams 2000 frames sender -> receiver on loopback; returns the receiver's summary.
fn loopback(codec: &str) -> Result<String> {
    let bin = build_bins(true)?;
    let input = root().join("target/demo/in");
    let mut recv = Command::new(bin.join("bitmask-recv"))
        .args(["--listen", "127.0.0.1:0", "--out", "-", "--count", "2000"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let (addr, log) = wait_listening(
        &mut recv,
        "bitmask-recv",
        std::time::Duration::from_secs(20),
        None,
    )?;
    let codec_arg = ["--codec", codec];
    crate::demo::send_samples(&bin, &addr, &input, "2000", &codec_arg, true, &mut recv)?;
    let st = crate::demo::wait_timeout(&mut recv, std::time::Duration::from_secs(120))?;
    let log = log.join().unwrap_or_default();
    anyhow::ensure!(
        st.success(),
        "bitmask-recv --codec {codec} run: {st}\n{log}"
    );
    log.lines()
        .find_map(|l| l.strip_prefix("bitmask-recv: total: "))
        .map(str::to_string)
        .with_context(|| format!("bitmask-recv printed no total line:\n{log}"))
}
