//! `cargo xtask bench codecs`: mask compression on a corpus of real masks.
//!
//! Builds the corpus with `tools/corpus/make_corpus.py` (scikit-image's
//! sample photos, in target/venv) into `target/codec-corpus` when missing,
//! then times, on every mask, bitmask-codec's `bilevel` and `auto` against
//! CCITT G4 (the `fax` crate), zstd 1 and 3, LZ4 (lz4_flex) and zlib 6
//! (flate2), checking that each one round-trips. Sequences are also coded
//! as streams (temporal) and frame by frame. Prints a Markdown report and
//! writes it with a per-mask CSV to `target/codec-bench/`.
//!
//! Options: `--corpus DIR`, `--reps N` (timing repetitions per mask, the
//! minimum is kept; default 5), `--regen` (rebuild the corpus).

use anyhow::{bail, ensure, Context, Result};
use bitmask_codec::{codec_name, Choice, Decoder, Encoder, FrameInfo};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::util;

struct Mask {
    name: String,
    width: u32,
    height: u32,
    group: String,
    bits: Vec<u8>,
}

fn stride(w: u32) -> usize {
    (w as usize).div_ceil(8)
}

fn load_corpus(dir: &Path) -> Result<Vec<Mask>> {
    let manifest = std::fs::read_to_string(dir.join("corpus.tsv"))
        .with_context(|| format!("reading {}", dir.join("corpus.tsv").display()))?;
    let mut out = Vec::new();
    for line in manifest.lines().skip(1).filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split('\t').collect();
        ensure!(f.len() >= 5, "bad manifest line {line:?}");
        let (width, height): (u32, u32) = (f[1].parse()?, f[2].parse()?);
        let bits = std::fs::read(dir.join(f[0]))?;
        ensure!(
            bits.len() == stride(width) * height as usize,
            "{}: {} B for {width}x{height}",
            f[0],
            bits.len()
        );
        out.push(Mask {
            name: f[0].trim_end_matches(".bits").to_owned(),
            width,
            height,
            group: f[3].to_owned(),
            bits,
        });
    }
    Ok(out)
}

/// Where `bench codecs` builds its corpus by default.
pub fn corpus_dir() -> std::path::PathBuf {
    util::root().join("target/codec-corpus")
}

/// Makes the corpus with the committed script when it is missing.
pub fn ensure_corpus(dir: &Path, regen: bool) -> Result<()> {
    if dir.join("corpus.tsv").exists() && !regen {
        return Ok(());
    }
    let py = util::venv_python(&["scikit-image"])?;
    util::run(
        Command::new(py)
            .arg(util::root().join("tools/corpus/make_corpus.py"))
            .arg(dir),
    )
}

/// One baseline or codec under test: encode into a buffer, decode into a mask.
trait Codec {
    fn name(&self) -> String;
    fn encode(&mut self, m: &Mask, seq: u64, out: &mut Vec<u8>) -> Result<(u8, u8)>;
    fn decode(
        &mut self,
        m: &Mask,
        seq: u64,
        tag: (u8, u8),
        data: &[u8],
        out: &mut [u8],
    ) -> Result<()>;
}

struct Ours {
    choice: Choice,
    interval: u32,
    enc: Encoder,
    dec: Decoder,
}

impl Ours {
    fn new(choice: Choice, interval: u32) -> Self {
        Ours {
            choice,
            interval,
            enc: Encoder::new(choice, interval),
            dec: Decoder::new(),
        }
    }
}

impl Codec for Ours {
    fn name(&self) -> String {
        match self.interval {
            1 => self.choice.to_string(),
            _ => format!("{} (temporal)", self.choice),
        }
    }
    fn encode(&mut self, m: &Mask, seq: u64, out: &mut Vec<u8>) -> Result<(u8, u8)> {
        let e = self.enc.encode(&m.bits, m.width, m.height, seq, out)?;
        Ok((e.codec, e.flags))
    }
    fn decode(
        &mut self,
        m: &Mask,
        seq: u64,
        t: (u8, u8),
        data: &[u8],
        out: &mut [u8],
    ) -> Result<()> {
        Ok(self.dec.decode(
            &FrameInfo {
                codec: t.0,
                flags: t.1,
                sequence: seq,
                width: m.width,
                height: m.height,
            },
            data,
            out,
        )?)
    }
}

struct Zstd {
    level: i32,
    c: zstd::bulk::Compressor<'static>,
    d: zstd::bulk::Decompressor<'static>,
}

impl Codec for Zstd {
    fn name(&self) -> String {
        format!("zstd-{}", self.level)
    }
    fn encode(&mut self, m: &Mask, _: u64, out: &mut Vec<u8>) -> Result<(u8, u8)> {
        out.resize(zstd::zstd_safe::compress_bound(m.bits.len()), 0);
        let n = self.c.compress_to_buffer(&m.bits, &mut out[..])?;
        out.truncate(n);
        Ok((0, 0))
    }
    fn decode(&mut self, _: &Mask, _: u64, _: (u8, u8), data: &[u8], out: &mut [u8]) -> Result<()> {
        let n = self.d.decompress_to_buffer(data, out)?;
        ensure!(n == out.len(), "zstd decoded {n} B");
        Ok(())
    }
}

struct Lz4;

impl Codec for Lz4 {
    fn name(&self) -> String {
        "lz4".into()
    }
    fn encode(&mut self, m: &Mask, _: u64, out: &mut Vec<u8>) -> Result<(u8, u8)> {
        out.resize(lz4_flex::block::get_maximum_output_size(m.bits.len()), 0);
        let n = lz4_flex::block::compress_into(&m.bits, &mut out[..])?;
        out.truncate(n);
        Ok((0, 0))
    }
    fn decode(&mut self, _: &Mask, _: u64, _: (u8, u8), data: &[u8], out: &mut [u8]) -> Result<()> {
        let n = lz4_flex::block::decompress_into(data, out)?;
        ensure!(n == out.len(), "lz4 decoded {n} B");
        Ok(())
    }
}

struct Zlib {
    c: flate2::Compress,
    d: flate2::Decompress,
}

impl Codec for Zlib {
    fn name(&self) -> String {
        "zlib-6".into()
    }
    fn encode(&mut self, m: &Mask, _: u64, out: &mut Vec<u8>) -> Result<(u8, u8)> {
        self.c.reset();
        out.reserve(m.bits.len() + 1024);
        let st = self
            .c
            .compress_vec(&m.bits, out, flate2::FlushCompress::Finish)?;
        ensure!(st == flate2::Status::StreamEnd, "zlib did not finish");
        Ok((0, 0))
    }
    fn decode(&mut self, _: &Mask, _: u64, _: (u8, u8), data: &[u8], out: &mut [u8]) -> Result<()> {
        self.d.reset(true);
        let st = self
            .d
            .decompress(data, out, flate2::FlushDecompress::Finish)?;
        ensure!(
            st == flate2::Status::StreamEnd && self.d.total_out() as usize == out.len(),
            "zlib decoded {} B",
            self.d.total_out()
        );
        Ok(())
    }
}

/// CCITT Group 4 (T.6) with the `fax` crate: a 1 bit is black, lines start white, EOFB at the end.
struct G4;

impl Codec for G4 {
    fn name(&self) -> String {
        "G4 (fax)".into()
    }
    fn encode(&mut self, m: &Mask, _: u64, out: &mut Vec<u8>) -> Result<(u8, u8)> {
        use fax::{encoder::Encoder as FaxEncoder, Color, VecWriter};
        let mut enc = FaxEncoder::new(VecWriter::with_capacity(m.bits.len() * 8));
        let s = stride(m.width);
        for row in m.bits.chunks_exact(s) {
            let pels = (0..m.width as usize).map(|x| {
                if row[x / 8] >> (7 - x % 8) & 1 == 1 {
                    Color::Black
                } else {
                    Color::White
                }
            });
            enc.encode_line(pels, m.width as u16)
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        }
        *out = enc.finish().map_err(|e| anyhow::anyhow!("{e:?}"))?.finish();
        Ok((0, 0))
    }
    fn decode(&mut self, m: &Mask, _: u64, _: (u8, u8), data: &[u8], out: &mut [u8]) -> Result<()> {
        let s = stride(m.width);
        let mut y = 0usize;
        out.fill(0);
        fax::decoder::decode_g4(
            data.iter().copied(),
            m.width as u16,
            Some(m.height as u16),
            |tr| {
                if let Some(row) = out.get_mut(y * s..(y + 1) * s) {
                    for pair in tr.chunks(2) {
                        let a = pair[0] as usize;
                        let b = pair.get(1).map_or(m.width as usize, |&b| b as usize);
                        for x in a..b.min(m.width as usize) {
                            row[x / 8] |= 0x80 >> (x % 8);
                        }
                    }
                }
                y += 1;
            },
        )
        .context("G4 decode failed")?;
        Ok(())
    }
}

#[derive(Clone, Default)]
struct Sample {
    bytes: usize,
    enc_us: f64,
    dec_us: f64,
}

/// Codes `frames` in order as one stream (so temporal codecs see the
/// previous frame), `reps` times with the same codec instance, as a
/// long-running sender and receiver would (buffers warm, no allocation);
/// keeps the fastest time per frame and the sizes of the first pass.
/// Checks every frame round-trips.
fn run_stream(
    make: &dyn Fn() -> Box<dyn Codec>,
    frames: &[&Mask],
    reps: usize,
) -> Result<Vec<Sample>> {
    let mut best = vec![
        Sample {
            bytes: 0,
            enc_us: f64::MAX,
            dec_us: f64::MAX
        };
        frames.len()
    ];
    let mut buf = Vec::new();
    let mut back = Vec::new();
    let mut c = make();
    let mut seq = 0u64;
    for rep in 0..reps.max(1) {
        for (i, m) in frames.iter().enumerate() {
            buf.clear();
            let t = Instant::now();
            let tag = c.encode(m, seq, &mut buf)?;
            let enc = t.elapsed().as_secs_f64() * 1e6;
            back.clear();
            back.resize(m.bits.len(), 0);
            let t = Instant::now();
            c.decode(m, seq, tag, &buf, &mut back)
                .with_context(|| format!("{} on {}", c.name(), m.name))?;
            let dec = t.elapsed().as_secs_f64() * 1e6;
            seq += 1;
            if back != m.bits {
                bail!(
                    "{} does not round-trip {} (codec {})",
                    c.name(),
                    m.name,
                    codec_name(tag.0)
                );
            }
            let b = &mut best[i];
            if rep == 0 {
                b.bytes = buf.len();
            }
            b.enc_us = b.enc_us.min(enc);
            b.dec_us = b.dec_us.min(dec);
        }
    }
    Ok(best)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_owned());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!(
        "{cpu}, {cores} cores, {} {}",
        std::env::consts::OS,
        std::env::consts::ARCH
    )
}

/// Frames per second of `bytes` payloads (+ the 40-byte header) on a 94 Mbit/s link.
fn fps_94(bytes: f64) -> f64 {
    94e6 / ((bytes + 40.0) * 8.0)
}

type Factory = Box<dyn Fn() -> Box<dyn Codec>>;

fn still_codecs() -> Vec<(String, Factory)> {
    let mk = |name: &str, f: Factory| (name.to_owned(), f);
    vec![
        mk(
            "bilevel",
            Box::new(|| Box::new(Ours::new(Choice::Bilevel, 1))),
        ),
        mk("auto", Box::new(|| Box::new(Ours::new(Choice::Auto, 1)))),
        mk("G4 (fax)", Box::new(|| Box::new(G4))),
        mk(
            "zstd-1",
            Box::new(|| {
                Box::new(Zstd {
                    level: 1,
                    c: zstd::bulk::Compressor::new(1).unwrap(),
                    d: zstd::bulk::Decompressor::new().unwrap(),
                })
            }),
        ),
        mk(
            "zstd-3",
            Box::new(|| {
                Box::new(Zstd {
                    level: 3,
                    c: zstd::bulk::Compressor::new(3).unwrap(),
                    d: zstd::bulk::Decompressor::new().unwrap(),
                })
            }),
        ),
        mk("lz4", Box::new(|| Box::new(Lz4))),
        mk(
            "zlib-6",
            Box::new(|| {
                Box::new(Zlib {
                    c: flate2::Compress::new(flate2::Compression::new(6), true),
                    d: flate2::Decompress::new(true),
                })
            }),
        ),
    ]
}

/// `cargo xtask bench codecs [--reps N] [--corpus DIR] [--regen]`: the codec table.
pub fn run(args: &[String]) -> Result<()> {
    // Timings mean nothing in a debug build: run again in release.
    if cfg!(debug_assertions) {
        let mut c = util::cargo();
        c.args([
            "run",
            "--release",
            "--quiet",
            "-p",
            "xtask",
            "--",
            "bench",
            "codecs",
        ])
        .args(args);
        return util::run(&mut c);
    }
    let mut corpus = corpus_dir();
    let mut reps = 5usize;
    let mut regen = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--corpus" => corpus = PathBuf::from(it.next().context("--corpus DIR")?),
            "--reps" => reps = it.next().context("--reps N")?.parse()?,
            "--regen" => regen = true,
            other => {
                bail!("bench codecs: unknown option {other:?} (--corpus DIR, --reps N, --regen)")
            }
        }
    }
    ensure_corpus(&corpus, regen)?;
    let masks = load_corpus(&corpus)?;
    ensure!(!masks.is_empty(), "empty corpus in {}", corpus.display());

    let stills: Vec<&Mask> = masks.iter().collect();
    let codecs = still_codecs();
    let mut results: Vec<(String, Vec<Sample>)> = Vec::new();
    for (name, make) in &codecs {
        eprintln!("coding {} masks with {name}", stills.len());
        // Every mask coded alone (key frames), by one warm codec instance.
        results.push((name.clone(), run_stream(make.as_ref(), &stills, reps)?));
    }

    let mut report = String::new();
    let raw_len = stills[0].bits.len();
    writeln!(report, "Measured with `cargo xtask bench codecs` (release build; each codec is one warm instance, as in a running sender/receiver; times are the fastest of `--reps {reps}` passes per mask) on: {}.", machine())?;
    writeln!(report)?;
    writeln!(
        report,
        "### Single masks ({} masks, {}x{} = {} B packed; every mask coded alone)\n",
        stills.len(),
        stills[0].width,
        stills[0].height,
        raw_len
    )?;
    writeln!(report, "| codec | median B | mean B | median ratio | median encode µs | median decode µs | fps at 94 Mbit/s (median size) |")?;
    writeln!(report, "|---|---:|---:|---:|---:|---:|---:|")?;
    let g4 = results
        .iter()
        .find(|r| r.0.starts_with("G4"))
        .map(|r| r.1.clone());
    for (name, s) in &results {
        let mut b: Vec<f64> = s.iter().map(|x| x.bytes as f64).collect();
        let mean = b.iter().sum::<f64>() / b.len() as f64;
        let mut ratio: Vec<f64> = s
            .iter()
            .zip(&stills)
            .map(|(x, m)| m.bits.len() as f64 / x.bytes as f64)
            .collect();
        let mut e: Vec<f64> = s.iter().map(|x| x.enc_us).collect();
        let mut d: Vec<f64> = s.iter().map(|x| x.dec_us).collect();
        let mb = median(&mut b);
        writeln!(
            report,
            "| {name} | {mb:.0} | {mean:.0} | {:.1}x | {:.0} | {:.0} | {:.0} |",
            median(&mut ratio),
            median(&mut e),
            median(&mut d),
            fps_94(mb)
        )?;
    }
    writeln!(
        report,
        "| raw | {raw_len} | {raw_len} | 1.0x | 0 | 0 | {:.0} |",
        fps_94(raw_len as f64)
    )?;
    if let Some(g4) = &g4 {
        let ours = &results[0].1;
        let smaller = ours
            .iter()
            .zip(g4)
            .filter(|(a, b)| a.bytes <= b.bytes)
            .count();
        let worst = ours
            .iter()
            .zip(&stills)
            .map(|(a, m)| a.bytes as f64 / m.bits.len() as f64)
            .fold(0.0, f64::max);
        writeln!(
            report,
            "\nbilevel is at most G4's size on {smaller} of {} masks; its largest payload is {:.1}% of raw.",
            ours.len(),
            worst * 100.0
        )?;
    }

    // Speed by group, against zstd-1 (where the medians come from).
    if let Some(z) = results.iter().find(|r| r.0 == "zstd-1") {
        let ours = &results[0];
        writeln!(
            report,
            "\n{} against zstd-1 by group (medians over the group's masks, each coded alone):\n",
            ours.0
        )?;
        writeln!(report, "| group | masks | {0} median B | {0} encode µs | zstd-1 encode µs | {0} decode µs | zstd-1 decode µs | decode time vs zstd-1 |", ours.0)?;
        writeln!(report, "|---|---:|---:|---:|---:|---:|---:|---:|")?;
        let mut names: Vec<&str> = Vec::new();
        for m in &stills {
            if !names.contains(&m.group.as_str()) {
                names.push(&m.group);
            }
        }
        for g in names {
            let pick = |s: &[Sample], f: &dyn Fn(&Sample) -> f64| {
                let mut v: Vec<f64> = s
                    .iter()
                    .zip(&stills)
                    .filter(|(_, m)| m.group == g)
                    .map(|(x, _)| f(x))
                    .collect();
                (v.len(), median(&mut v))
            };
            let (n, b) = pick(&ours.1, &|x| x.bytes as f64);
            let (_, oe) = pick(&ours.1, &|x| x.enc_us);
            let (_, ze) = pick(&z.1, &|x| x.enc_us);
            let (_, od) = pick(&ours.1, &|x| x.dec_us);
            let (_, zd) = pick(&z.1, &|x| x.dec_us);
            writeln!(
                report,
                "| {g} | {n} | {b:.0} | {oe:.0} | {ze:.0} | {od:.0} | {zd:.0} | {:.2}x |",
                od / zd.max(1e-9)
            )?;
        }
    }

    // Streams.
    writeln!(report, "\n### Sequences (bytes per frame; frames after the first, so temporal frames are deltas)\n")?;
    writeln!(report, "| sequence | frames | bilevel alone | bilevel temporal | gain | auto temporal | zstd-1 | temporal encode µs | temporal decode µs |")?;
    writeln!(report, "|---|---:|---:|---:|---:|---:|---:|---:|---:|")?;
    let mut groups: Vec<&str> = masks
        .iter()
        .filter(|m| !matches!(m.group.as_str(), "otsu" | "blue170"))
        .map(|m| m.group.as_str())
        .collect();
    groups.dedup();
    for g in groups {
        let frames: Vec<&Mask> = masks.iter().filter(|m| m.group == g).collect();
        let alone = run_stream(&|| Box::new(Ours::new(Choice::Bilevel, 1)), &frames, reps)?;
        let temporal = run_stream(&|| Box::new(Ours::new(Choice::Bilevel, 0)), &frames, reps)?;
        let auto = run_stream(&|| Box::new(Ours::new(Choice::Auto, 0)), &frames, reps)?;
        let z = run_stream(codecs[3].1.as_ref(), &frames, 1)?;
        let mean = |s: &[Sample], f: &dyn Fn(&Sample) -> f64| {
            s[1..].iter().map(f).sum::<f64>() / (s.len() - 1).max(1) as f64
        };
        let by = |s: &Sample| s.bytes as f64;
        let (a, t) = (mean(&alone, &by), mean(&temporal, &by));
        let mut te: Vec<f64> = temporal[1..].iter().map(|s| s.enc_us).collect();
        let mut td: Vec<f64> = temporal[1..].iter().map(|s| s.dec_us).collect();
        writeln!(
            report,
            "| {g} | {} | {a:.0} | {t:.0} | {:.2}x | {:.0} | {:.0} | {:.0} | {:.0} |",
            frames.len(),
            a / t,
            mean(&auto, &by),
            mean(&z, &by),
            median(&mut te),
            median(&mut td)
        )?;
    }

    // Per-mask sizes.
    let mut csv = String::from("mask,group");
    for (name, _) in &results {
        write!(csv, ",{name} B,{name} enc us,{name} dec us")?;
    }
    csv.push('\n');
    writeln!(report, "\n<details><summary>Bytes per mask</summary>\n")?;
    write!(report, "| mask |")?;
    for (name, _) in &results {
        write!(report, " {name} |")?;
    }
    writeln!(report)?;
    writeln!(report, "|---|{}", "---:|".repeat(results.len()))?;
    for (i, m) in stills.iter().enumerate() {
        write!(report, "| {} |", m.name)?;
        write!(csv, "{},{}", m.name, m.group)?;
        for (_, s) in &results {
            write!(report, " {} |", s[i].bytes)?;
            write!(csv, ",{},{:.1},{:.1}", s[i].bytes, s[i].enc_us, s[i].dec_us)?;
        }
        writeln!(report)?;
        csv.push('\n');
    }
    writeln!(report, "\n</details>")?;

    let out_dir = util::root().join("target/codec-bench");
    std::fs::create_dir_all(&out_dir)?;
    std::fs::write(out_dir.join("report.md"), &report)?;
    std::fs::write(out_dir.join("masks.csv"), &csv)?;
    println!("{report}");
    eprintln!("written to {}", out_dir.display());
    Ok(())
}
