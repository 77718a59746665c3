//! bitmask against numpy itself, driven from Rust (data passes through files
//! in target/tmp):
//! (a) numpy's packbits/unpackbits vs bitmask-core's pack/unpack, both ways;
//! (b) frames from `bitmask-send`, decoded by docs/python/bitmask_wire.py,
//!     equal the original numpy recipe on the same image;
//! (c) frames made by bitmask_wire.py are written bit-exactly by `bitmask-recv`;
//! (d) Otsu's threshold equals scikit-image's `threshold_otsu`.
//!
//! Needs target/venv (numpy, Pillow, scikit-image), which `cargo xtask ci` makes.

use bitmask_core::{
    histogram, otsu_threshold, pack_bits, pack_rows, packed_len, repack_rows_to_flat, unpack_bits,
    unpack_rows, unpack_rows_gray8, BitOrder, ImageRef, PixelFormat,
};
use bitmask_tests::*;
use image::DynamicImage;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs `py -c script args...`, returning stdout; panics with stderr on failure.
fn py_run(py: &Path, script: &str, args: &[&str]) -> String {
    let f = run(Command::new(py).arg("-c").arg(script).args(args));
    assert!(
        f.status.success(),
        "python failed: {}\n{}",
        f.status,
        f.stderr
    );
    String::from_utf8(f.stdout).expect("python printed UTF-8")
}

const SHAPES: &[(usize, usize)] = &[
    (1, 1),
    (7, 3),
    (9, 2),
    (8, 1),
    (1, 64),
    (13, 5),
    (15, 17),
    (3, 1000),
    (4097, 3),
    (1023, 767),
    (1024, 768),
    (1920, 1080),
];

/// Writes, for each WxH: the mask (0/nonzero bytes) and numpy's four packings of it.
const NUMPY_PACK: &str = r#"
import sys, numpy as np
out, shapes = sys.argv[1], [tuple(map(int, s.split("x"))) for s in sys.argv[2:]]
rng = np.random.default_rng(20261125)
for i, (w, h) in enumerate(shapes):
    if w == 13:                      # all ones: padding bits must still be 0
        m = np.ones((h, w), np.uint8)
    elif i % 3 == 0:                 # 0/1
        m = rng.integers(0, 2, (h, w), dtype=np.uint8)
    elif i % 3 == 1:                 # sparse 0/1
        m = (rng.random((h, w)) < 0.05).astype(np.uint8)
    else:                            # any nonzero byte counts as 1
        m = rng.integers(0, 256, (h, w), dtype=np.uint8)
        m[rng.random((h, w)) < 0.5] = 0
    b = f"{out}/{w}x{h}"
    m.tofile(b + ".mask")
    np.packbits(m, axis=1).tofile(b + ".rows-big")
    np.packbits(m, axis=1, bitorder="little").tofile(b + ".rows-little")
    np.packbits(m).tofile(b + ".flat-big")
    np.packbits(m, bitorder="little").tofile(b + ".flat-little")
print(len(shapes))
"#;

/// Checks bitmask-core's packings (written by the Rust side) with numpy's unpackbits.
const NUMPY_CHECK: &str = r#"
import sys, numpy as np
out, shapes = sys.argv[1], [tuple(map(int, s.split("x"))) for s in sys.argv[2:]]
for w, h in shapes:
    b = f"{out}/{w}x{h}"
    m = np.fromfile(b + ".mask", np.uint8).reshape(h, w) != 0
    rows = np.fromfile(b + ".core-rows", np.uint8).reshape(h, (w + 7) // 8)
    assert np.array_equal(np.unpackbits(rows, axis=1, count=w).astype(bool), m), b
    assert np.array_equal(rows, np.packbits(m, axis=1)), b
    flat = np.fromfile(b + ".core-flat-little", np.uint8)
    assert np.array_equal(np.unpackbits(flat, count=w * h, bitorder="little").reshape(h, w).astype(bool), m), b
    gray = np.fromfile(b + ".core-gray8", np.uint8).reshape(h, w)
    assert np.array_equal(gray, m.astype(np.uint8) * 255), b
print(f"verified {len(shapes)} shapes")
"#;

#[test]
fn numpy_packbits_and_bitmask_core_agree_both_ways() {
    let Some(py) = python() else { return };
    let dir = TempDir::new("numpy-pack");
    let names: Vec<String> = SHAPES.iter().map(|(w, h)| format!("{w}x{h}")).collect();
    let mut args = vec![dir.str()];
    args.extend(names.iter().map(String::as_str));
    assert_eq!(
        py_run(&py, NUMPY_PACK, &args).trim(),
        SHAPES.len().to_string()
    );

    for (&(w, h), name) in SHAPES.iter().zip(&names) {
        let file = |ext: &str| read(&dir.join(&format!("{name}.{ext}")));
        let mask = file("mask");
        let bits01: Vec<u8> = mask.iter().map(|&b| (b != 0) as u8).collect();
        let stride = w.div_ceil(8);

        // numpy -> bitmask-core: same bytes from the same mask
        let mut rows = vec![0u8; packed_len(w, h)];
        pack_rows(&mask, w, h, &mut rows).unwrap();
        assert!(
            rows == file("rows-big"),
            "{name}: pack_rows vs packbits(axis=1)"
        );
        let mut rows_little = vec![0u8; packed_len(w, h)];
        for (src, dst) in mask.chunks(w).zip(rows_little.chunks_mut(stride)) {
            pack_bits(src, BitOrder::LsbFirst, dst).unwrap();
        }
        assert!(
            rows_little == file("rows-little"),
            "{name}: per-row LSB-first vs packbits(axis=1, bitorder='little')"
        );
        let mut flat = vec![0u8; (w * h).div_ceil(8)];
        pack_bits(&mask, BitOrder::MsbFirst, &mut flat).unwrap();
        assert!(
            flat == file("flat-big"),
            "{name}: pack_bits vs packbits(ravel)"
        );
        let mut flat_little = vec![0u8; (w * h).div_ceil(8)];
        pack_bits(&mask, BitOrder::LsbFirst, &mut flat_little).unwrap();
        assert!(flat_little == file("flat-little"), "{name}: LSB-first flat");
        let mut reflat = vec![0u8; (w * h).div_ceil(8)];
        repack_rows_to_flat(&file("rows-big"), w, h, &mut reflat).unwrap();
        assert!(reflat == file("flat-big"), "{name}: repack_rows_to_flat");

        // numpy's packings -> bitmask-core's unpack: the mask again
        let mut un = vec![9u8; w * h];
        unpack_rows(&file("rows-big"), w, h, &mut un).unwrap();
        assert!(un == bits01, "{name}: unpack_rows of packbits(axis=1)");
        unpack_bits(&file("flat-big"), BitOrder::MsbFirst, &mut un).unwrap();
        assert!(
            un == bits01,
            "{name}: unpack_bits MSB-first of packbits(ravel)"
        );
        unpack_bits(&file("flat-little"), BitOrder::LsbFirst, &mut un).unwrap();
        assert!(un == bits01, "{name}: unpack_bits LSB-first");

        // bitmask-core's packings -> numpy checks them below
        let mut gray = vec![0u8; w * h];
        unpack_rows_gray8(&rows, w, h, &mut gray).unwrap();
        std::fs::write(dir.join(&format!("{name}.core-rows")), &rows).unwrap();
        std::fs::write(dir.join(&format!("{name}.core-flat-little")), &flat_little).unwrap();
        std::fs::write(dir.join(&format!("{name}.core-gray8")), &gray).unwrap();
    }
    assert_eq!(
        py_run(&py, NUMPY_CHECK, &args).trim(),
        format!("verified {} shapes", SHAPES.len())
    );
}

/// Test images: RGB noise of odd and large sizes, one RGBA and one BMP.
fn test_images(dir: &TempDir) -> Vec<(PathBuf, DynamicImage)> {
    let mut v = Vec::new();
    for (i, &(w, h)) in [(1, 1), (7, 3), (9, 2), (1023, 767), (1024, 768)]
        .iter()
        .enumerate()
    {
        v.push((
            dir.join(&format!("img-{i}.png")),
            DynamicImage::ImageRgb8(noise_image(w, h, 100 + i as u64)),
        ));
    }
    let rgba = image::RgbaImage::from_raw(33, 5, noise(33 * 5 * 4, 7)).unwrap();
    v.push((dir.join("img-5.png"), DynamicImage::ImageRgba8(rgba)));
    v.push((
        dir.join("img-6.bmp"),
        DynamicImage::ImageRgb8(noise_image(17, 4, 8)),
    ));
    for (p, img) in &v {
        save_image(img, p);
    }
    v
}

/// The original numpy recipe on each image vs the frames bitmask_wire.py decoded.
const RECIPE_CHECK: &str = r#"
import sys, numpy as np
from PIL import Image
out, paths = sys.argv[1], sys.argv[2:]
for i, p in enumerate(paths):
    image = np.array(Image.open(p))     # imread
    image = image[:, :, 2].copy()       # blue
    image[image < 170] = 0
    image[image != 0] = 1
    got = np.load(f"{out}/frame-{i:06d}.npy")
    assert got.dtype == np.uint8 and got.shape == image.shape, (p, got.dtype, got.shape, image.shape)
    assert np.array_equal(got, image), (p, int((got != image).sum()), "pixels differ")
print(f"matched {len(paths)} frames")
"#;

#[test]
fn python_decodes_sender_frames_equal_to_the_numpy_recipe() {
    let Some(py) = python() else { return };
    let dir = TempDir::new("numpy-recipe");
    let out = TempDir::new("numpy-recipe-out");
    let imgs = test_images(&dir);
    let n = imgs.len().to_string();
    let mut recv = start_listening(Command::new(&py).arg(wire_py()).args([
        "recv",
        "127.0.0.1:0",
        out.str(),
        "--count",
        &n,
    ]));
    let sent = run(Command::new(bin("bitmask-send"))
        .args([
            "--to",
            &recv.addr,
            "--no-drop",
            "--codec",
            "raw",
            "--channel",
            "blue",
            "--threshold",
            "170",
        ])
        .args(imgs.iter().map(|(p, _)| p)));
    assert!(sent.status.success(), "bitmask-send: {}", sent.stderr);
    // the Python reference acknowledges each frame it wrote, as bitmask-recv does
    assert!(
        sent.stderr.contains(&format!("confirmed {n};")),
        "{}",
        sent.stderr
    );
    let got = recv.proc.wait(LIMIT);
    assert!(got.status.success(), "bitmask_wire.py recv: {}", got.stderr);
    assert!(
        got.stderr.contains(&format!("received {n} frames")),
        "{}",
        got.stderr
    );
    let mut args = vec![out.str()];
    args.extend(imgs.iter().map(|(p, _)| p.to_str().unwrap()));
    assert_eq!(
        py_run(&py, RECIPE_CHECK, &args).trim(),
        format!("matched {n} frames")
    );
    // Another codec (the default, auto, sends bilevel unless compression
    // does not pay): the Python reference says so and stops (it used to
    // skip every frame and wait for more, forever).
    let mut recv = start_listening(Command::new(&py).arg(wire_py()).args([
        "recv",
        "127.0.0.1:0",
        out.str(),
        "--count",
        "1",
    ]));
    let scene = dir.join("scene.png");
    save_image(&DynamicImage::ImageRgb8(scene_image(256, 192, 3)), &scene);
    let _ = run(Command::new(bin("bitmask-send"))
        .args(["--to", &recv.addr, "--no-drop", "--codec", "bilevel"])
        .arg(&scene));
    let got = recv.proc.wait(LIMIT);
    assert!(!got.status.success());
    assert!(got.stderr.contains("--codec raw"), "{}", got.stderr);
}

#[test]
fn bitmask_recv_writes_python_frames_bit_exactly() {
    let Some(py) = python() else { return };
    let dir = TempDir::new("python-send");
    let mut imgs = test_images(&dir);
    let gray = image::GrayImage::from_raw(31, 7, noise(31 * 7, 9)).unwrap();
    imgs.push((dir.join("img-7.png"), DynamicImage::ImageLuma8(gray)));
    save_image(&imgs[7].1, &imgs[7].0);
    let cases: [(&[&str], Params); 2] = [
        // luma: Pillow's convert('L') on the Python side, bitmask-core's luma on the Rust side
        (
            &["--channel", "luma", "--threshold", "128"],
            Params::new(Channel::Luma, 128),
        ),
        (
            &["--channel", "green", "--threshold", "77", "--invert"],
            Params {
                channel: Channel::Green,
                threshold: 77,
                invert: true,
            },
        ),
    ];
    for (args, params) in cases {
        let out = TempDir::new("python-send-out");
        let n = imgs.len().to_string();
        let mut recv = start_receiver(&["--out", out.str(), "--format", "raw", "--count", &n]);
        let sent = run(Command::new(&py)
            .arg(wire_py())
            .args(["send", &recv.addr])
            .args(args)
            .args(imgs.iter().map(|(p, _)| p)));
        assert!(
            sent.status.success(),
            "bitmask_wire.py send: {}",
            sent.stderr
        );
        let got = recv.proc.wait(LIMIT);
        assert!(got.status.success(), "bitmask-recv: {}", got.stderr);
        assert!(
            got.stderr
                .contains(&format!("{n} frames (0 lost, 0 corrupt")),
            "{}",
            got.stderr
        );
        assert!(
            got.stderr.contains("stream from \"python\""),
            "{}",
            got.stderr
        );
        for (i, (p, img)) in imgs.iter().enumerate() {
            let file = out.join(&format!("frame-{i:06}.raw"));
            assert!(
                read(&file) == expected_mask(img, &params),
                "{} with {args:?}: bitmask-recv wrote other bits than bitmask-core makes",
                p.display()
            );
        }
    }
}

/// Gray test images for Otsu, and skimage's threshold of each: lines `name w h t`.
const OTSU_IMAGES: &str = r#"
import sys, numpy as np
from skimage.filters import threshold_otsu
out = sys.argv[1]
rng = np.random.default_rng(7)
def bimodal(n, a, sa, b, sb, p):
    x = np.where(rng.random(n) < p, rng.normal(a, sa, n), rng.normal(b, sb, n))
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)
imgs = {
    "bimodal": bimodal(640 * 480, 60, 20, 190, 25, 0.5).reshape(480, 640),
    "skewed": bimodal(333 * 77, 30, 5, 220, 10, 0.9).reshape(77, 333),
    "narrow": bimodal(101 * 99, 120, 3, 130, 3, 0.3).reshape(99, 101),
    "uniform": rng.integers(0, 256, (64, 48), dtype=np.uint8),
    "two-values": np.where(rng.random((10, 10)) < 0.3, 17, 200).astype(np.uint8),
    "constant": np.full((5, 7), 99, np.uint8),
    "one-pixel": np.array([[3]], np.uint8),
}
for name, img in imgs.items():
    t = threshold_otsu(img)
    assert t == int(t), (name, t)
    img.tofile(f"{out}/{name}.gray")
    print(name, img.shape[1], img.shape[0], int(t))
"#;

#[test]
fn otsu_threshold_equals_skimage() {
    let Some(py) = python() else { return };
    if !python_has(&py, "skimage") {
        skip("scikit-image is not in target/venv");
        return;
    }
    let dir = TempDir::new("otsu");
    let listing = py_run(&py, OTSU_IMAGES, &[dir.str()]);
    let mut checked = 0;
    for line in listing.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [name, w, h, t] = f[..] else {
            panic!("bad line {line:?}")
        };
        let (w, h, t): (usize, usize, u8) =
            (w.parse().unwrap(), h.parse().unwrap(), t.parse().unwrap());
        let px = read(&dir.join(&format!("{name}.gray")));
        let img = ImageRef::new(&px, w, h, PixelFormat::Gray8).unwrap();
        let ours = otsu_threshold(&histogram(&img, Channel::Luma));
        assert_eq!(
            ours,
            Some(t),
            "{name}: bitmask-core vs skimage.filters.threshold_otsu"
        );
        checked += 1;
    }
    assert_eq!(checked, 7, "{listing}");
}

/// The Python reader on PROTOCOL.md's worked example and on broken variants
/// of it: the documented fields, then the right exception for each defect.
const PY_READER: &str = r#"
import io, sys, struct, zlib
sys.path.insert(0, sys.argv[1])
import bitmask_wire as bw
doc = open(sys.argv[2]).read()
body = doc.split("<!-- protocol-example:begin -->")[1].split("<!-- protocol-example:end -->")[0]
hello, frame = [bytes.fromhex(p.replace("```", "")) for p in body.strip().strip("`").split("\n\n")]
f = io.BytesIO(hello + frame)
name, rest = bw.read_hello(f)
fr = bw.read_frame(f, rest)
assert name == "pi-cam" and bw.read_frame(f) is None
print(fr.width, fr.height, fr.sequence, fr.timestamp_us, fr.codec, fr.flags, fr.payload.hex())
assert bw.hello("pi-cam") + bw.encode_frame(fr.payload, 10, 3, 5, fr.timestamp_us) == hello + frame
assert bw.pack(bw.unpack(fr.payload, 10, 3)) == fr.payload

def patched(off, fmt, value, fix_crc=True):
    b = bytearray(frame)
    struct.pack_into(fmt, b, off, value)
    if fix_crc:
        struct.pack_into("<I", b, 36, zlib.crc32(bytes(b[:36]) + bytes(b[40:])))
    return bytes(b)

cases = {
    "bad magic": (patched(0, "4s", b"XMSK"), bw.WireError, "bad magic"),
    "version": (patched(4, "B", 2), bw.WireError, "version 2"),
    "flags": (patched(5, "B", 0x80), bw.WireError, "0x80"),
    "zero width": (patched(8, "<I", 0), bw.WireError, "0x3"),
    "huge": (patched(12, "<I", 100000), bw.WireError, "10x100000"),
    "raw length": (patched(32, "<I", 5), bw.WireError, "exactly 6 B"),
    "4 GiB": (patched(32, "<I", 0xFFFFFFFF), bw.WireError, "4294967295"),
    "crc": (frame[:-1] + b"\x00", bw.CrcMismatch, "CRC mismatch on frame 5"),
    "cut header": (frame[:20], bw.Truncated, "got 20 of 40"),
    "cut payload": (frame[:43], bw.Truncated, "got 3 of 6"),
}
for what, (data, exc, text) in cases.items():
    try:
        bw.read_frame(io.BytesIO(data))
    except exc as e:
        assert text in str(e), (what, str(e))
    else:
        raise AssertionError(f"{what}: no {exc.__name__}")
print(f"rejected {len(cases)}")

# names the Rust side refuses (PROTOCOL.md section 2), refused here too
bad_names = ["a/b", "a\\b", ".", "..", "x\x07", "x" * 256]
for n in bad_names:
    b = n.encode()
    raw = bw.HELLO_MAGIC + struct.pack("<BBH", 1, 0, len(b)) + b
    try:
        bw.read_hello(io.BytesIO(raw))
    except bw.WireError as e:
        assert "bad hello" in str(e), (n, str(e))
    else:
        raise AssertionError(f"hello name {n!r} accepted")
    try:
        bw.hello(n)
    except bw.WireError:
        pass
    else:
        raise AssertionError(f"hello({n!r}) made")
assert bw.read_hello(io.BytesIO(bw.hello("pi cam é")))[0] == "pi cam é"
print(f"names refused {len(bad_names)}")

# 16-bit images, which Pillow clips (gray) or cuts to their high byte
# (colour, opened as mode RGB), are refused, not thresholded otherwise
# than bitmask-send does
import os, tempfile
def chunk(t, d):
    return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
def png16(path, colour):
    w, h, n = 4, 2, 3 if colour else 1
    raw = b"".join(b"\0" + bytes(range(2 * w * n)) for _ in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2 if colour else 0, 0, 0, 0)
    open(path, "wb").write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                           + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
def tiff16(path):
    # (4x2 RGB, 16 bits a sample, uncompressed: Pillow opens it as RGB)
    w, h = 4, 2
    data = bytes(range(w * h * 6))
    bps = struct.pack("<HHH", 16, 16, 16)
    data_off = 8 + len(bps)
    tags = [(256, 3, 1, w), (257, 3, 1, h), (258, 3, 3, 8), (259, 3, 1, 1), (262, 3, 1, 2),
            (273, 4, 1, data_off), (277, 3, 1, 3), (278, 3, 1, h), (279, 4, 1, len(data))]
    b = b"II*\0" + struct.pack("<I", data_off + len(data)) + bps + data
    b += struct.pack("<H", len(tags))
    for tag, kind, n, v in tags:
        short = kind == 3 and n == 1
        b += struct.pack("<HHIHH", tag, kind, n, v, 0) if short else struct.pack("<HHII", tag, kind, n, v)
    open(path, "wb").write(b + struct.pack("<I", 0))
refused = 0
with tempfile.TemporaryDirectory() as d:
    for colour in (False, True):
        p = os.path.join(d, f"{colour}.png")
        png16(p, colour)
        try:
            bw.threshold(p)
        except ValueError as e:
            assert "8-bit images only" in str(e), str(e)
            refused += 1
    p = os.path.join(d, "rgb16.tif")
    tiff16(p)
    try:
        bw.threshold(p)
    except ValueError as e:
        assert "8-bit images only" in str(e), str(e)
        refused += 1
print(f"16-bit refused {refused}")
"#;

#[test]
fn python_reader_agrees_with_the_protocol_doc_and_rejects_bad_frames() {
    let Some(py) = python() else { return };
    let doc = root().join("docs/PROTOCOL.md");
    let module_dir = wire_py().parent().unwrap().to_path_buf();
    let out = py_run(
        &py,
        PY_READER,
        &[module_dir.to_str().unwrap(), doc.to_str().unwrap()],
    );
    assert_eq!(
        out,
        "10 3 5 1700000000000000 0 0 b3c04040ffc0\nrejected 10\nnames refused 6\n16-bit refused 3\n",
        "fields of the worked example, then every broken variant rejected"
    );
}
