//! docs/CODEC.md section 1 is a specification: `docs/python/bilevel_decode.py`,
//! a second decoder written from it alone (pure Python), must decode the
//! committed golden payloads of `crates/codec/tests/vectors` bit-exactly,
//! and reject a malformed one with a message (no traceback).
//!
//! Needs target/venv (`cargo xtask ci` makes it); the script itself uses
//! only the standard library.

use bitmask_tests::*;
use std::path::{Path, PathBuf};
use std::process::Command;

fn vectors() -> PathBuf {
    root().join("crates/codec/tests/vectors")
}

fn decoder_py() -> PathBuf {
    root().join("docs/python/bilevel_decode.py")
}

/// Width and height of a vector, from `corpus.tsv`.
fn dims(name: &str) -> (u32, u32) {
    let tsv = std::fs::read_to_string(vectors().join("corpus.tsv")).expect("corpus.tsv");
    for line in tsv.lines().skip(1) {
        let f: Vec<&str> = line.split('\t').collect();
        if f[0] == format!("{name}.bits") {
            return (f[1].parse().unwrap(), f[2].parse().unwrap());
        }
    }
    panic!("{name}.bits is not in corpus.tsv");
}

/// Runs the Python decoder on `payload` (with `--ref` when given), writing `out`.
fn decode(py: &Path, payload: &Path, name: &str, reference: Option<&Path>, out: &Path) -> Finished {
    let (w, h) = dims(name);
    let mut cmd = Command::new(py);
    cmd.arg(decoder_py())
        .arg(payload)
        .args([w.to_string(), h.to_string()])
        .arg("--out")
        .arg(out);
    if let Some(r) = reference {
        cmd.arg("--ref").arg(r);
    }
    run(&mut cmd)
}

#[test]
fn python_spec_decoder_decodes_the_golden_payloads() {
    let Some(py) = python() else { return };
    let dir = TempDir::new("codec-spec");
    let v = vectors();
    // (payload, mask it decodes to, reference frame)
    let cases = [
        ("otsu_camera.blv", "otsu_camera", None),
        ("otsu_page.blv", "otsu_page", None),
        ("object_00.blv", "object_00", None),
        ("object_01.delta.blv", "object_01", Some("object_00")),
    ];
    for (payload, name, reference) in cases {
        let out = dir.join(&format!("{name}.bits"));
        let reference = reference.map(|r| v.join(format!("{r}.bits")));
        let f = decode(&py, &v.join(payload), name, reference.as_deref(), &out);
        assert!(
            f.status.success(),
            "bilevel_decode.py {payload}: {}\n{}",
            f.status,
            f.stderr
        );
        let got = std::fs::read(&out).expect("decoded mask");
        let want = std::fs::read(v.join(format!("{name}.bits"))).expect("vector");
        assert_eq!(got.len(), want.len(), "{payload}: decoded length");
        if let Some(i) = got.iter().zip(&want).position(|(a, b)| a != b) {
            panic!("{payload}: decoded mask differs from {name}.bits first at byte {i}");
        }
    }
}

#[test]
fn python_spec_decoder_rejects_malformed_payloads() {
    let Some(py) = python() else { return };
    let dir = TempDir::new("codec-spec-bad");
    let v = vectors();
    let good = std::fs::read(v.join("otsu_page.blv")).expect("golden payload");
    // Truncated in the middle (a stream length past the end) and by its last
    // byte (the extra-bit stream runs out), then a delta payload without its reference.
    let half = dir.join("half.blv");
    std::fs::write(&half, &good[..good.len() / 2]).unwrap();
    let short = dir.join("short.blv");
    std::fs::write(&short, &good[..good.len() - 1]).unwrap();
    let cases = [
        (half, "otsu_page"),
        (short, "otsu_page"),
        (v.join("object_01.delta.blv"), "object_01"),
    ];
    for (payload, name) in cases {
        let out = dir.join("out.bits");
        let f = decode(&py, &payload, name, None, &out);
        assert!(
            !f.status.success(),
            "{} was accepted; stderr:\n{}",
            payload.display(),
            f.stderr
        );
        assert!(
            f.stderr.contains("bilevel_decode:") && !f.stderr.contains("Traceback"),
            "{}: expected a one-line reason, got:\n{}",
            payload.display(),
            f.stderr
        );
        assert!(
            !out.exists(),
            "a mask was written for {}",
            payload.display()
        );
    }
}

/// `pan_00` cut to `w` columns (rows then end inside a byte), the scene
/// moved `dx` pixels right and `dy` rows down (pixels entering are 0).
fn cut_and_moved(w: usize, dx: i32, dy: i32) -> Vec<u8> {
    let (sw, h) = dims("pan_00");
    let (sw, h) = (sw as usize, h as usize);
    let src = read(&vectors().join("pan_00.bits"));
    let (ss, stride) = (sw.div_ceil(8), w.div_ceil(8));
    let mut out = vec![0u8; stride * h];
    for y in 0..h {
        for x in 0..w {
            let (sx, sy) = (x as i32 - dx, y as i32 - dy);
            if sx < 0 || sy < 0 || sx as usize >= sw || sy as usize >= h {
                continue;
            }
            let (sx, sy) = (sx as usize, sy as usize);
            if src[sy * ss + sx / 8] & (0x80 >> (sx % 8)) != 0 {
                out[y * stride + x / 8] |= 0x80 >> (x % 8);
            }
        }
    }
    out
}

#[test]
fn python_spec_decoder_decodes_odd_widths_and_global_motion() {
    // The committed vectors are all 256 pixels wide and their delta frame
    // has no motion: here a 61-pixel-wide key frame and a delta frame of
    // the scene moved 3 right and 2 up, encoded by the Rust encoder now.
    use bitmask_codec::{Choice, Encoder, FLAG_DELTA};
    let Some(py) = python() else { return };
    let dir = TempDir::new("codec-spec-odd");
    let (w, h) = (61usize, dims("pan_00").1 as usize);
    let (a, b) = (cut_and_moved(w, 0, 0), cut_and_moved(w, 3, -2));
    let mut enc = Encoder::new(Choice::Bilevel, 0);
    let (mut pa, mut pb) = (Vec::new(), Vec::new());
    enc.encode(&a, w as u32, h as u32, 0, &mut pa).unwrap();
    let f = enc.encode(&b, w as u32, h as u32, 1, &mut pb).unwrap();
    assert_eq!(f.flags, FLAG_DELTA);
    assert_eq!(
        (pb[9] as i8, pb[10] as i8),
        (3, -2),
        "the delta frame's motion"
    );
    let run = |payload: &[u8], reference: Option<&Path>, tag: &str| -> Vec<u8> {
        let (p, out) = (
            dir.join(&format!("{tag}.blv")),
            dir.join(&format!("{tag}.bits")),
        );
        std::fs::write(&p, payload).unwrap();
        let mut cmd = Command::new(&py);
        cmd.arg(decoder_py())
            .arg(&p)
            .args([w.to_string(), h.to_string()])
            .arg("--out")
            .arg(&out);
        if let Some(r) = reference {
            cmd.arg("--ref").arg(r);
        }
        let f = run(&mut cmd);
        assert!(f.status.success(), "{tag}: {}\n{}", f.status, f.stderr);
        read(&out)
    };
    assert!(
        run(&pa, None, "key") == a,
        "the 61-wide key frame decodes to another mask"
    );
    let key = dir.join("key.bits");
    assert!(
        run(&pb, Some(&key), "delta") == b,
        "the moved delta frame decodes to another mask"
    );
}
