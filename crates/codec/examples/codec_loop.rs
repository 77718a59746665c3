//! Encodes and decodes the masks of a corpus in a loop (for profilers):
//! `cargo run --release -p bitmask-codec --example codec_loop -- target/codec-corpus [enc|dec|both|median|each] [choice]`
use bitmask_codec::{Choice, Decoder, Encoder, FrameInfo};
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = std::path::PathBuf::from(args.first().map_or("target/codec-corpus", |s| s.as_str()));
    let what = args.get(1).map_or("both", |s| s.as_str());
    let choice: Choice = match args.get(2).map_or("bilevel", |s| s.as_str()).parse() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("codec_loop: {e}");
            std::process::exit(2);
        }
    };
    let tsv = dir.join("corpus.tsv");
    let manifest = match std::fs::read_to_string(&tsv) {
        Ok(m) => m,
        Err(e) => {
            eprintln!(
                "codec_loop: cannot read {}: {e}\n(a corpus directory: `cargo xtask bench codecs` \
                 makes target/codec-corpus in the bitmask repository; \
                 crates/codec/tests/vectors is a small one)",
                tsv.display()
            );
            std::process::exit(2);
        }
    };
    let mut masks = Vec::new();
    for l in manifest.lines().skip(1) {
        let f: Vec<&str> = l.split('\t').collect();
        // All masks (as `cargo xtask bench codecs` does), or only the still
        // photos with BITMASK_STILLS=1.
        let stills_only = std::env::var_os("BITMASK_STILLS").is_some();
        if f.len() < 5 || stills_only && f[3] != "otsu" && f[3] != "blue170" {
            continue;
        }
        // Or one group with BITMASK_GROUP=pan (or noisy, object, otsu, blue170).
        if std::env::var("BITMASK_GROUP").is_ok_and(|g| g != f[3]) {
            continue;
        }
        masks.push((
            std::fs::read(dir.join(f[0])).unwrap(),
            f[1].parse::<u32>().unwrap(),
            f[2].parse::<u32>().unwrap(),
        ));
    }
    let mut enc = Encoder::new(choice, 1);
    let mut dec = Decoder::new();
    let payloads: Vec<(Vec<u8>, FrameInfo)> = masks
        .iter()
        .map(|(m, w, h)| {
            let mut out = Vec::new();
            let e = enc.encode(m, *w, *h, 0, &mut out).unwrap();
            (out, e)
        })
        .collect();
    let mut sizes: Vec<usize> = payloads.iter().map(|p| p.0.len()).collect();
    sizes.sort();
    println!(
        "payload bytes: median {}, total {}",
        sizes[sizes.len() / 2],
        sizes.iter().sum::<usize>()
    );
    let mut out = Vec::new();
    if masks.is_empty() {
        eprintln!("codec_loop: no masks in {}", tsv.display());
        std::process::exit(2);
    }
    let mut back = vec![0u8; masks.iter().map(|m| m.0.len()).max().unwrap_or(0)];
    let t = Instant::now();
    let n = 20;
    for _ in 0..n {
        for ((m, w, h), (p, e)) in masks.iter().zip(&payloads) {
            if what != "dec" {
                out.clear();
                enc.encode(m, *w, *h, 0, &mut out).unwrap();
            }
            if what != "enc" {
                dec.decode(e, p, &mut back[..m.len()]).unwrap();
            }
        }
    }
    let per = t.elapsed().as_secs_f64() * 1e6 / (n * masks.len()) as f64;
    println!("{what}: {per:.1} µs per mask ({} masks)", masks.len());
    if what == "each" || what == "median" {
        let (mut es, mut ds) = (Vec::new(), Vec::new());
        for ((m, w, h), (p, e)) in masks.iter().zip(&payloads) {
            let (mut be, mut bd) = (f64::MAX, f64::MAX);
            for _ in 0..20 {
                out.clear();
                let t = Instant::now();
                enc.encode(m, *w, *h, 0, &mut out).unwrap();
                be = be.min(t.elapsed().as_secs_f64() * 1e6);
                let t = Instant::now();
                dec.decode(e, p, &mut back[..m.len()]).unwrap();
                bd = bd.min(t.elapsed().as_secs_f64() * 1e6);
            }
            if what == "each" {
                println!("{:>7} B  enc {be:7.1} µs  dec {bd:7.1} µs", p.len());
            }
            es.push(be);
            ds.push(bd);
        }
        es.sort_by(f64::total_cmp);
        ds.sort_by(f64::total_cmp);
        println!(
            "median of per-mask minimum: enc {:.1} µs, dec {:.1} µs",
            es[es.len() / 2],
            ds[ds.len() / 2]
        );
    }
}
