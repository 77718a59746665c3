//! End to end on loopback: `bitmask-send` -> `bitmask-recv`, every output
//! format checked bit for bit against bitmask-core; exit codes and one-line
//! errors; hostile peers that the receiver must survive.

use bitmask_tests::*;
use bitmask_wire::{encode_frame, Header, Hello, CODEC_RAW, HEADER_LEN};
use image::DynamicImage;
use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The sizes every format is checked on: 1 pixel, widths below, above and at a byte, and large ones.
const SIZES: [(u32, u32); 5] = [(1, 1), (7, 3), (9, 2), (1023, 767), (1024, 768)];

/// The sender's default mask: luma >= 128.
const LUMA128: bitmask_core::Params = bitmask_core::Params {
    channel: bitmask_core::Channel::Luma,
    threshold: 128,
    invert: false,
};

/// Images of `sizes` saved as PNG in `dir`, in sending order: noise at even
/// indices, compressible scenes at odd ones (so the sender's default codec
/// choice sends some frames compressed and the receiver must decode them).
fn images(dir: &TempDir, sizes: &[(u32, u32)]) -> Vec<(PathBuf, DynamicImage)> {
    sizes
        .iter()
        .enumerate()
        .map(|(i, &(w, h))| {
            let img = DynamicImage::ImageRgb8(if i % 2 == 0 {
                noise_image(w, h, i as u64 + 1)
            } else {
                scene_image(w, h, i as u64)
            });
            let path = dir.join(&format!("img-{i}.png"));
            save_image(&img, &path);
            (path, img)
        })
        .collect()
}

/// Runs `bitmask-send --to addr --no-drop args files` (`--no-drop`: every input
/// becomes a frame even when the receiver is slower than the decoding).
fn send<P: AsRef<std::ffi::OsStr>>(addr: &str, args: &[&str], files: &[P]) -> Finished {
    run(Command::new(bin("bitmask-send"))
        .args(["--to", addr, "--no-drop"])
        .args(args)
        .args(files))
}

fn assert_ok(what: &str, f: &Finished) {
    assert!(
        f.status.success(),
        "{what} failed: {}\n{}",
        f.status,
        f.stderr
    );
}

/// `P4\n<w> <h>\n` + rows with the mask bits inverted and padding kept 0.
fn expected_pbm(w: u32, h: u32, raw: &[u8]) -> Vec<u8> {
    let mut v = format!("P4\n{w} {h}\n").into_bytes();
    let stride = (w as usize).div_ceil(8);
    let keep = if w % 8 == 0 {
        0xff
    } else {
        0xffu8 << (8 - w % 8)
    };
    for row in raw.chunks(stride) {
        for (i, b) in row.iter().enumerate() {
            v.push(if i + 1 == stride { !b & keep } else { !b });
        }
    }
    v
}

/// Decodes a PNG, checking it is 1-bit grayscale, non-interlaced; returns its packed rows.
fn png_rows(path: &Path) -> (u32, u32, Vec<u8>) {
    let file = std::fs::File::open(path).unwrap();
    let mut dec = png::Decoder::new(std::io::BufReader::new(file));
    dec.set_transformations(png::Transformations::IDENTITY);
    let mut reader = dec.read_info().unwrap();
    let info = reader.info();
    assert_eq!(info.color_type, png::ColorType::Grayscale, "{path:?}");
    assert_eq!(info.bit_depth, png::BitDepth::One, "{path:?}");
    assert!(!info.interlaced, "{path:?}");
    let (w, h) = (info.width, info.height);
    let mut buf = vec![
        0;
        reader
            .output_buffer_size()
            .expect("a frame that fits memory")
    ];
    let frame = reader.next_frame(&mut buf).unwrap();
    assert_eq!(frame.line_size, (w as usize).div_ceil(8));
    buf.truncate(frame.buffer_size());
    (w, h, buf)
}

#[test]
fn every_format_is_bit_exact_over_odd_and_large_sizes() {
    let dir = TempDir::new("e2e-formats");
    let imgs = images(&dir, &SIZES);
    let files: Vec<PathBuf> = imgs.iter().map(|(p, _)| p.clone()).collect();
    let cases: [(&str, &[&str], Params); 3] = [
        (
            "raw",
            &["--channel", "blue", "--threshold", "170"],
            Params::new(Channel::Blue, 170),
        ),
        ("pbm", &[], Params::new(Channel::Luma, 128)), // the defaults
        (
            "png",
            &["--channel", "red", "--threshold", "100", "--invert"],
            Params {
                channel: Channel::Red,
                threshold: 100,
                invert: true,
            },
        ),
    ];
    for (format, args, params) in cases {
        let out = TempDir::new(&format!("e2e-out-{format}"));
        let n = imgs.len().to_string();
        // (png also with --sync: every file synced, the bits the same)
        let sync: &[&str] = if format == "png" { &["--sync"] } else { &[] };
        let mut recv = start_receiver(
            &[
                &["--out", out.str(), "--format", format, "--count", &n][..],
                sync,
            ]
            .concat(),
        );
        let sent = send(&recv.addr, args, &files);
        assert_ok("bitmask-send", &sent);
        assert!(
            sent.stderr.contains(&format!("sent {n} frames")),
            "{}",
            sent.stderr
        );
        let got = recv.proc.wait(LIMIT);
        assert_ok("bitmask-recv", &got);
        assert!(
            got.stderr
                .contains(&format!("{n} frames (0 lost, 0 corrupt")),
            "{}",
            got.stderr
        );
        assert!(got.stdout.is_empty(), "nothing on stdout with --out DIR");
        let names: Vec<String> = (0..imgs.len())
            .map(|i| format!("frame-{i:06}.{format}"))
            .collect();
        assert_eq!(list(out.path()), names, "exactly the frames, no temp files");
        for ((_, img), name) in imgs.iter().zip(&names) {
            let (w, h) = (img.width(), img.height());
            let want = expected_mask(img, &params);
            let file = out.join(name);
            match format {
                "raw" => assert_eq!(read(&file), want, "{name} ({w}x{h})"),
                "pbm" => assert_eq!(read(&file), expected_pbm(w, h, &want), "{name}"),
                _ => assert_eq!(png_rows(&file), (w, h, want), "{name}"),
            }
        }
    }
}

#[test]
fn out_dash_streams_raw_masks_to_stdout_and_nothing_else() {
    let dir = TempDir::new("e2e-stdout");
    let imgs = images(&dir, &[(7, 3), (9, 2), (1, 1), (1023, 767)]);
    let files: Vec<PathBuf> = imgs.iter().map(|(p, _)| p.clone()).collect();
    let want: Vec<u8> = imgs
        .iter()
        .flat_map(|(_, img)| expected_mask(img, &Params::new(Channel::Luma, 128)))
        .collect();
    // with an --exec program that prints (as docs/python/read_stream.py
    // does): its lines go to stderr, not between the frames
    let printing = "echo consumer says hello; cat > /dev/null; echo consumer says bye";
    for extra in [&[][..], &["--exec", printing][..]] {
        let mut recv = start_receiver(&[&["--out", "-", "--count", "4"][..], extra].concat());
        assert_ok("bitmask-send", &send(&recv.addr, &[], &files));
        let got = recv.proc.wait(LIMIT);
        assert_ok("bitmask-recv", &got);
        assert_eq!(got.stdout.len(), want.len(), "{extra:?}");
        assert!(
            got.stdout == want,
            "{extra:?}: stdout differs from the masks"
        );
        assert!(got.stderr.contains("4 frames (0 lost"), "{}", got.stderr);
        if !extra.is_empty() {
            assert!(
                got.stderr.contains("consumer says hello")
                    && got.stderr.contains("consumer says bye"),
                "{}",
                got.stderr
            );
        }
    }
}

#[test]
fn count_and_loop_send_exactly_n_frames_over_one_connection() {
    let dir = TempDir::new("e2e-loop");
    let imgs = images(&dir, &[(9, 2), (7, 3)]);
    let out = TempDir::new("e2e-loop-out");
    let mut recv = start_receiver(&["--out", out.str(), "--count", "7"]);
    let sent = send(
        &recv.addr,
        &["--loop", "--count", "7", "--channel", "green"],
        &[dir.path().to_path_buf()], // a directory expands to its images in name order
    );
    assert_ok("bitmask-send", &sent);
    assert!(sent.stderr.contains("sent 7 frames"), "{}", sent.stderr);
    let got = recv.proc.wait(LIMIT);
    assert_ok("bitmask-recv", &got);
    assert_eq!(
        got.stderr.matches("stream from").count(),
        1,
        "one persistent connection: {}",
        got.stderr
    );
    let files = list(out.path());
    assert_eq!(files.len(), 7, "{files:?}");
    for (i, name) in files.iter().enumerate() {
        assert_eq!(name, &format!("frame-{i:06}.raw"));
        let want = expected_mask(&imgs[i % 2].1, &Params::new(Channel::Green, 128));
        assert_eq!(read(&out.join(name)), want, "{name}");
    }
}

/// A failed run: non-zero exit and the error as the last stderr line, naming `needle`.
fn assert_one_line_error(f: &Finished, prog: &str, needle: &str) {
    assert!(
        !f.status.success(),
        "{prog} should fail; stderr:\n{}",
        f.stderr
    );
    let last = f.stderr.lines().last().unwrap_or("");
    assert!(
        last.starts_with(&format!("{prog}: error: ")) && last.contains(needle),
        "last stderr line should be `{prog}: error: ...{needle}...`, stderr:\n{}",
        f.stderr
    );
    let errors = f.stderr.lines().filter(|l| l.contains(": error")).count();
    assert_eq!(errors, 1, "one error line: {}", f.stderr);
}

/// A 2x2 uncompressed TIFF whose pixels are YCbCr (photometric 6), which
/// the image decoder does not take.
fn ycbcr_tiff() -> Vec<u8> {
    let short = |tag: u16, v: u16| {
        [
            &tag.to_le_bytes()[..],
            &[3, 0, 1, 0, 0, 0],
            &v.to_le_bytes(),
            &[0, 0],
        ]
        .concat()
    };
    let long = |tag: u16, kind: u16, n: u32, v: u32| {
        [
            &tag.to_le_bytes()[..],
            &kind.to_le_bytes(),
            &n.to_le_bytes(),
            &v.to_le_bytes(),
        ]
        .concat()
    };
    // header, bits per sample (3 x 8) at 8, 12 zero bytes of pixels at 14, the IFD at 26
    let mut t = b"II*\0".to_vec();
    t.extend(26u32.to_le_bytes());
    t.extend([8, 0, 8, 0, 8, 0]);
    t.extend([0; 12]);
    t.extend(9u16.to_le_bytes());
    for e in [
        short(256, 2),
        short(257, 2),
        long(258, 3, 3, 8),
        short(259, 1),
        short(262, 6),
        long(273, 4, 1, 14),
        short(277, 3),
        short(278, 2),
        long(279, 4, 1, 12),
    ] {
        t.extend(e);
    }
    t.extend(0u32.to_le_bytes());
    t
}

/// A command-line usage error from clap: exit 2, stderr opening with `error: `
/// and naming `needle` before the usage line.
fn assert_usage_error(f: &Finished, needle: &str) {
    assert_eq!(f.status.code(), Some(2), "stderr:\n{}", f.stderr);
    let message = f.stderr.split("Usage:").next().unwrap_or("");
    assert!(
        message.starts_with("error: ") && message.contains(needle),
        "the error should name {needle:?}: {}",
        f.stderr
    );
}

#[test]
fn directories_leave_out_hidden_files_and_a_cut_short_jpeg_is_not_sent() {
    let dir = TempDir::new("e2e-hidden-jpeg");
    let inp = dir.join("in");
    std::fs::create_dir_all(inp.join("sub")).unwrap();
    let (good, img) = images(&dir, &[(40, 30)]).remove(0);
    std::fs::copy(&good, inp.join("a.png")).unwrap();
    std::fs::copy(&good, inp.join("sub").join("b.png")).unwrap();
    // macOS's metadata file beside it: not an image at all
    std::fs::write(inp.join("._a.png"), b"\x00\x05\x16\x07 AppleDouble").unwrap();
    // a JPEG still being copied: the decoder alone would make a mask of it
    let mut jpeg = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut jpeg),
        image::ImageFormat::Jpeg,
    )
    .unwrap();
    // (the `image` crate, 0.25, decodes it without an error)
    let cut = &jpeg[..jpeg.len() / 2];
    std::fs::write(inp.join("c.jpg"), cut).unwrap();
    let out = dir.join("out");
    let recv = start_receiver(&["--out", out.to_str().unwrap()]);
    let f = send(&recv.addr, &[], &[&inp]);
    assert_one_line_error(&f, "bitmask-send", "c.jpg");
    assert!(f.stderr.contains("cut short"), "{}", f.stderr);
    assert!(
        f.stderr
            .contains("left out 1 hidden image file(s) (named .*) and 1 subdirectory(ies)"),
        "{}",
        f.stderr
    );
    assert!(f.stderr.contains("confirmed 1;"), "{}", f.stderr);
    drop(recv);
    // only a.png's mask was written
    let t = std::time::Instant::now();
    while list(&out).is_empty() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(list(&out), vec!["frame-000000.raw".to_string()]);
}

#[test]
fn sender_errors_exit_non_zero_with_one_line() {
    let dir = TempDir::new("e2e-send-errors");
    let good = images(&dir, &[(7, 3)]).remove(0).0;
    let bad = dir.join("bad.png");
    std::fs::write(&bad, b"this is not a PNG").unwrap();

    // unreadable image: skipped with a warning naming it, the others sent,
    // and then an error naming it
    let recv = start_receiver(&["--out", dir.join("out").to_str().unwrap()]);
    let f = send(&recv.addr, &[], &[&bad, &good, &bad, &good]);
    assert_one_line_error(&f, "bitmask-send", bad.to_str().unwrap());
    assert!(
        f.stderr
            .contains("2 of the 4 input images could not be read and were skipped"),
        "{}",
        f.stderr
    );
    assert!(
        f.stderr
            .contains("(and 2 input(s) unreadable, their frame numbers unused)")
            && f.stderr.contains("sent 2 frames")
            && f.stderr.contains("confirmed 2"),
        "{}",
        f.stderr
    );
    assert_eq!(
        f.stderr.matches("skipped, not sent").count(),
        2,
        "{}",
        f.stderr
    );
    // frame N is still input N
    assert_eq!(
        list(&dir.join("out")),
        ["frame-000001.raw", "frame-000003.raw"]
    );
    // --count 2 is frames 0 and 1: inputs past them are not opened
    let f = send(
        &recv.addr,
        &["--count", "2", "--name", "counted"],
        &[&good, &bad, &bad, &bad, &good],
    );
    assert_one_line_error(
        &f,
        "bitmask-send",
        "1 of the first 2 input images could not be read",
    );
    assert!(
        f.stderr.contains("(and 1 input(s) unreadable") && f.stderr.contains("sent 1 frames"),
        "{}",
        f.stderr
    );
    assert!(
        !f.stderr.contains("signature.: Invalid"),
        "the cause is said once: {}",
        f.stderr
    );
    let f = send(&recv.addr, &[], &[&bad]);
    assert_one_line_error(&f, "bitmask-send", "none of the 1 input image(s)");
    // a dangling link in a directory (a USB stick not mounted): an image
    // that cannot be read, said and counted, not left out unnoticed
    let linked = dir.join("linked");
    std::fs::create_dir(&linked).unwrap();
    std::fs::copy(&good, linked.join("b.png")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/a.png", linked.join("a.png")).unwrap();
    let f = send(&recv.addr, &["--name", "linked"], &[&linked]);
    assert_one_line_error(
        &f,
        "bitmask-send",
        "1 of the 2 input images could not be read and were skipped",
    );
    assert!(
        f.stderr.contains("a.png") && f.stderr.contains("sent 1 frames"),
        "{}",
        f.stderr
    );
    // an image that decodes but is wider than a mask may be: skipped like
    // one that cannot be read, the others sent (it ended the run before)
    let wide = dir.join("wide.png");
    image::GrayImage::new(bitmask_core::MAX_DIMENSION as u32 + 1, 1)
        .save(&wide)
        .unwrap();
    let f = send(&recv.addr, &["--name", "wide"], &[&wide, &good]);
    assert_one_line_error(
        &f,
        "bitmask-send",
        "1 of the 2 input images could not be read and were skipped",
    );
    assert!(
        f.stderr
            .contains("it is 1048577x1, larger than a mask may be")
            && f.stderr.contains("sent 1 frames"),
        "{}",
        f.stderr
    );
    // with the receiver away too, the error is that; the image is said before
    let f = send(&closed_port(), &[], &[&good, &bad]);
    assert_one_line_error(&f, "bitmask-send", "stayed unreachable");
    assert!(
        f.stderr
            .contains("1 of the 2 input images could not be read"),
        "{}",
        f.stderr
    );
    // ... but going round with --loop it is skipped, with one warning
    let f = send(&recv.addr, &["--loop", "--count", "5"], &[&good, &bad]);
    assert_ok("--loop past an unreadable image", &f);
    assert!(f.stderr.contains("sent 5 frames"), "{}", f.stderr);
    assert_eq!(
        f.stderr.matches("skipped (--loop)").count(),
        1,
        "{}",
        f.stderr
    );
    // and when none can be read, that is an error
    let f = send(&recv.addr, &["--loop", "--count", "5"], &[&bad]);
    assert_one_line_error(&f, "bitmask-send", "none of the 1 input image(s)");
    // an image in a layout the decoder does not take says what to do
    let ycc = dir.join("ycbcr.tif");
    std::fs::write(&ycc, ycbcr_tiff()).unwrap();
    let f = send(&recv.addr, &["--loop", "--count", "5"], &[&ycc]);
    assert_one_line_error(&f, "bitmask-send", "saved again as 8-bit RGB or gray");
    drop(recv);

    // --count 0 would send nothing; a negative number is a value out of
    // range, not an unknown option
    for (flag, v, says) in [
        ("--count", "0", "\"0\" is not a whole number of 1 or more"),
        ("--count", "-3", "\"-3\" is not a whole number of 1 or more"),
        ("--threshold", "-1", "\"-1\" is not a number 0..=256"),
        ("--fps", "-1", "\"-1\" is not a frame rate"),
    ] {
        let f = send(&closed_port(), &[flag, v], &[&good]);
        assert_usage_error(&f, says);
    }
    // `-` without --input-format, and a stream with no frame at all
    let f = send(&closed_port(), &[], &["-"]);
    assert_one_line_error(&f, "bitmask-send", "--input-format");
    let f = send(
        &closed_port(),
        &["--input-format", "gray8", "--size", "8x2"],
        &["-"],
    );
    assert_one_line_error(&f, "bitmask-send", "before its first whole frame");
    // a colour channel of frames that carry luma only
    for format in ["gray8", "yuv420"] {
        let f = send(
            &closed_port(),
            &[
                "--input-format",
                format,
                "--size",
                "8x2",
                "--channel",
                "blue",
            ],
            &["-"],
        );
        assert_one_line_error(
            &f,
            "bitmask-send",
            &format!("--channel blue needs colour frames, but --input-format {format}"),
        );
    }

    // missing input
    let missing = dir.join("missing.png");
    let f = send(&closed_port(), &[], &[&missing]);
    assert_one_line_error(&f, "bitmask-send", missing.to_str().unwrap());

    // refused connection
    let addr = closed_port();
    let f = send(&addr, &[], &[&good]);
    assert_one_line_error(&f, "bitmask-send", &addr);

    // bad arguments
    let f = send("127.0.0.1:1", &["--threshold", "300"], &[&good]);
    assert_usage_error(&f, "300");
    let f = send("127.0.0.1:1", &["--channel", "purple"], &[&good]);
    assert_usage_error(&f, "purple");
    let f = run(Command::new(bin("bitmask-send")).arg(&good));
    assert_usage_error(&f, "--to");
    // addresses no retry can mend, numbers that cannot be a duration (they
    // panicked) or make no sense
    for to in ["127.0.0.1", "127.0.0.1:0", "::1:5000"] {
        let f = run(Command::new(bin("bitmask-send"))
            .args(["--to", to])
            .arg(&good));
        assert_usage_error(&f, to);
    }
    for (flag, v) in [
        ("--mtu", "50"),
        ("--fps", "1e-30"),
        ("--fps", "nan"),
        ("--timeout", "inf"),
        ("--timeout", "-5"),
        ("--timeout", "0.01"),
        ("--retry-max", "1e30"),
        ("--rate", "nan"),
    ] {
        let f = send("127.0.0.1:1", &[flag, v], &[&good]);
        assert_usage_error(&f, v);
    }

    // a decompression bomb: a PNG header claiming 60000x60000 pixels
    let bomb = dir.join("bomb.png");
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8], data: &[u8]| {
        png.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let body = [kind, data].concat();
        png.extend_from_slice(&body);
        png.extend_from_slice(&bitmask_wire::crc(&body, &[]).to_be_bytes()); // CRC-32, as PNG's
    };
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&60000u32.to_be_bytes());
    ihdr.extend_from_slice(&60000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(b"IHDR", &ihdr);
    // an empty zlib stream (one stored block): the limit trips before it matters
    chunk(b"IDAT", &[0x78, 0x01, 0x01, 0, 0, 0xff, 0xff, 0, 0, 0, 1]);
    chunk(b"IEND", &[]);
    std::fs::write(&bomb, &png).unwrap();
    let f = send(&closed_port(), &[], &[&bomb]);
    assert_one_line_error(&f, "bitmask-send", "60000x60000");
}

#[test]
fn receiver_errors_exit_non_zero_with_one_line() {
    let dir = TempDir::new("e2e-recv-errors");
    let out = dir.str();
    let recv = |args: &[&str]| run(Command::new(bin("bitmask-recv")).args(args));

    let f = recv(&["--listen", "127.0.0.1:0", "--out", out, "--format", "bmp"]);
    assert_usage_error(&f, "bmp");
    let f = recv(&["--listen", "127.0.0.1:0", "--out", out, "--max-size", "0x5"]);
    assert_usage_error(&f, "0x5");
    // the forms of --listen no lookup can mend, with an example; a name
    // that does not resolve, when bound
    for (v, says) in [
        ("nonsense", "is not HOST:PORT, e.g. 0.0.0.0:5000"),
        ("5000", "e.g. 0.0.0.0:5000"),
        (":5000", "has no host: e.g. 0.0.0.0:5000"),
        ("::1:5000", "goes in brackets"),
        ("host:port", "the port must be a number"),
    ] {
        let f = recv(&["--listen", v, "--out", out]);
        assert_usage_error(&f, says);
    }
    let f = recv(&["--listen", "no-such-host.invalid:5000", "--out", out]);
    assert_one_line_error(&f, "bitmask-recv", "no-such-host.invalid:5000");
    // a port in use, and the live view given the frames' own port
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let f = recv(&["--listen", &addr, "--out", out]);
    assert_one_line_error(&f, "bitmask-recv", "another program listens there");
    drop(held);
    let f = recv(&["--listen", &addr, "--http", &addr, "--out", out]);
    assert_one_line_error(&f, "bitmask-recv", "is the frames' port");
    let f = recv(&["--listen", "127.0.0.1:0", "--out", "-", "--format", "png"]);
    assert_one_line_error(&f, "bitmask-recv", "png");
    for v in ["inf", "nan", "-5", "1e30", "0.01"] {
        let f = recv(&["--listen", "127.0.0.1:0", "--out", out, "--timeout", v]);
        assert_usage_error(&f, v);
    }
    for flag in ["--count", "--max-senders"] {
        let f = recv(&["--listen", "127.0.0.1:0", "--out", out, flag, "0"]);
        assert_usage_error(&f, flag);
    }
    let f = recv(&["--listen", "127.0.0.1:0", "--exec", " "]);
    assert_usage_error(&f, "the command is empty");
    // a port in use: no --exec program started
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().to_string();
    let marker = dir.join("exec-started");
    let cmd = format!("touch {}; cat > /dev/null", sh_quote(&marker));
    // (a program started would have made the marker in this time)
    let settle = Duration::from_millis(300);
    let f = recv(&["--listen", &port, "--exec", &cmd]);
    assert_one_line_error(&f, "bitmask-recv", &port);
    std::thread::sleep(settle);
    assert!(!marker.exists(), "--exec started before the port was taken");
    let f = recv(&["--listen", "127.0.0.1:0", "--http", &port, "--exec", &cmd]);
    assert_one_line_error(&f, "bitmask-recv", &port);
    std::thread::sleep(settle);
    assert!(
        !marker.exists(),
        "--exec started before the --http port was taken"
    );
    // an option of the live view without the live view does nothing
    let f = recv(&["--listen", "127.0.0.1:0", "--out", out, "--http-fps", "5"]);
    assert_usage_error(&f, "--http");
    // a --stats-json that can never be written is refused at the start
    let f = recv(&["--listen", "127.0.0.1:0", "--out", out, "--stats-json", out]);
    assert_one_line_error(&f, "bitmask-recv", "is a directory");

    // outputs that would break something, or never take a file, are refused
    // at the start (a socket file stands in for a device or a FIFO)
    let sock = dir.join("sock");
    let _sock = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    for flag in ["--latest", "--stats-json"] {
        let f = recv(&[
            "--listen",
            "127.0.0.1:0",
            "--out",
            out,
            flag,
            sock.to_str().unwrap(),
        ]);
        assert_one_line_error(&f, "bitmask-recv", "is not a regular file");
    }
    let f = recv(&[
        "--listen",
        "127.0.0.1:0",
        "--latest",
        &format!("{out}/m.pgm"),
    ]);
    assert_one_line_error(&f, "bitmask-recv", ".pgm is not a format");
    // /proc takes no new files, not even from root
    let f = recv(&["--listen", "127.0.0.1:0", "--out", "/proc"]);
    assert_one_line_error(
        &f,
        "bitmask-recv",
        "cannot create files in output directory /proc",
    );

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let f = recv(&["--listen", &addr, "--out", out]);
    assert_one_line_error(&f, "bitmask-recv", &addr);
}

/// What happens to the outputs while the receiver runs: an `--out`
/// directory deleted is made again (frames are not lost until a restart),
/// and a `--latest` symbolic link is followed at every write (relative, to
/// a file that does not exist yet, pointed elsewhere while running; the
/// format is the one the link's own name says; the link stays).
#[test]
fn a_deleted_out_directory_is_made_again_and_latest_follows_a_symlink() {
    let dir = TempDir::new("e2e-out-gone");
    let out = dir.join("out");
    std::fs::create_dir_all(dir.join("shm")).unwrap();
    let link = dir.join("latest.png");
    std::os::unix::fs::symlink("shm/mask", &link).unwrap();
    let imgs = images(&dir, &[(16, 8), (16, 8)]);
    let mut recv = start_receiver(&[
        "--out",
        out.to_str().unwrap(),
        "--latest",
        link.to_str().unwrap(),
    ]);
    assert_ok(
        "first send",
        &send(&recv.addr, &["--name", "a"], &[&imgs[0].0]),
    );
    assert_eq!(list(&out), ["frame-000000.raw"]);
    let first = read(&dir.join("shm/mask"));
    assert!(
        first.starts_with(b"\x89PNG"),
        "--latest latest.png is a PNG"
    );
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink("shm/mask2", &link).unwrap();
    std::fs::remove_dir_all(&out).unwrap();
    // a sender's run ends when the receiver confirmed its frame, written
    assert_ok(
        "second send",
        &send(&recv.addr, &["--name", "b"], &[&imgs[1].0]),
    );
    let f = recv.proc.terminate(Duration::from_secs(20));
    assert!(
        f.stderr
            .contains("was gone (deleted while running): made it again"),
        "{}",
        f.stderr
    );
    assert_eq!(list(&out), ["frame-000000.raw"], "{}", f.stderr);
    let second = expected_mask(&imgs[1].1, &LUMA128);
    assert!(
        read(&out.join("frame-000000.raw")) == second,
        "the frame differs"
    );
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink(),
        "--latest replaced the symbolic link by a file"
    );
    assert!(
        read(&dir.join("shm/mask")) == first,
        "the old target was written again"
    );
    let (w, h, rows) = png_rows(&dir.join("shm/mask2"));
    assert_eq!((w, h), (16, 8));
    assert!(
        rows == second,
        "--latest did not follow the link pointed elsewhere"
    );
}

/// `--out DIR` failing (a file in its place) while `--latest` takes the
/// frames: they count as written, and as not written to every output, in
/// the summary, `--stats-json` and the exit status (a service archiving
/// nothing for days exited 0 with every count clean).
#[test]
fn frames_only_some_outputs_took_are_counted_and_fail_the_exit() {
    let dir = TempDir::new("e2e-partly");
    let out = dir.join("out");
    let stats = dir.join("stats.json");
    let imgs = images(&dir, &[(16, 8), (16, 8)]);
    let mut recv = start_receiver(&[
        "--out",
        out.to_str().unwrap(),
        "--latest",
        dir.join("latest.raw").to_str().unwrap(),
        "--stats-json",
        stats.to_str().unwrap(),
    ]);
    assert_ok(
        "first send",
        &send(&recv.addr, &["--name", "a"], &[&imgs[0].0]),
    );
    std::fs::remove_dir_all(&out).unwrap();
    std::fs::write(&out, b"not a directory").unwrap();
    assert_ok(
        "second send",
        &send(&recv.addr, &["--name", "a"], &[&imgs[1].0]),
    );
    let f = recv.proc.terminate(Duration::from_secs(20));
    assert_eq!(f.status.code(), Some(1), "{}", f.stderr);
    assert!(
        f.stderr.contains("went to the other outputs"),
        "{}",
        f.stderr
    );
    assert!(
        f.stderr
            .contains("1 frame(s) were written to some outputs but not to every one"),
        "{}",
        f.stderr
    );
    assert!(
        f.stderr
            .contains("2 frames (0 lost, 0 corrupt, 0 incomplete, 1 NOT WRITTEN TO EVERY OUTPUT)"),
        "{}",
        f.stderr
    );
    let json = std::fs::read_to_string(&stats).unwrap();
    assert_eq!(stat(&json, "a", "partly_written"), 1.0, "{json}");
    assert_eq!(stat(&json, "a", "received"), 2.0, "{json}");
    assert_eq!(
        read(&dir.join("latest.raw")),
        expected_mask(&imgs[1].1, &LUMA128)
    );
}

/// A header as a hostile peer may write it: any fields, a CRC over the 36 bytes only.
fn raw_header(width: u32, height: u32, codec: u8, payload_len: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(HEADER_LEN);
    b.extend_from_slice(b"BMSK");
    b.extend_from_slice(&[1, 0, codec, 0]);
    b.extend_from_slice(&width.to_le_bytes());
    b.extend_from_slice(&height.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(&payload_len.to_le_bytes());
    let crc = bitmask_wire::crc(&b, &[]);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

fn peer(addr: &str, bytes: &[u8], close: bool) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(bytes).unwrap();
    if close {
        // (the receiver may have closed a junk connection already:
        // NotConnected then, which is what the test wants anyway)
        let _ = s.shutdown(Shutdown::Write);
    }
    s
}

/// Peak resident memory of a process, in KiB (Linux).
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn receiver_survives_hostile_peers_and_serves_the_next_sender() {
    let dir = TempDir::new("e2e-hostile");
    let out = TempDir::new("e2e-hostile-out");
    let recv = start_receiver(&["--out", out.str(), "--count", "2"]);
    let wait = |needle: &str| recv.proc.wait_for_stderr(needle, Duration::from_secs(20));

    // 1. garbage (an HTTP request)
    let _s = peer(&recv.addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", true);
    let line = wait("bad magic");
    assert!(
        line.contains("47, 45, 54, 20"),
        "the offending bytes: {line}"
    );

    // 2. a header claiming a 4 GiB payload; the connection stays open: the
    //    receiver must refuse it from the header alone, allocating nothing
    let mut hello_then = Hello::new("hostile").unwrap().encode();
    hello_then.extend(raw_header(4096, 4096, CODEC_RAW, u32::MAX));
    let _s = peer(&recv.addr, &hello_then, false);
    let line = wait("payload length 4294967295");
    assert!(line.contains("4096x4096"), "{line}");
    // 3. absurd dimensions, past any --max-size (within it, the message
    //    names the option: delivery.rs's 64x48 frames to a 32x32 receiver)
    let _s = peer(&recv.addr, &raw_header(100_000, 100_000, 1, 1 << 30), false);
    wait("a 100000x100000 frame, larger than any --max-size takes (65536x65536)");
    if let Some(kib) = peak_rss_kib(recv.proc.id()) {
        assert!(
            kib < 64 * 1024,
            "receiver peak RSS {kib} KiB after hostile headers"
        );
    }

    // 4. a stream cut inside a payload
    let mut cut = Vec::new();
    encode_frame(
        &Header::new(16, 16, 0, CODEC_RAW, 32),
        &[0xAA; 32],
        &mut cut,
    );
    cut.truncate(HEADER_LEN + 10);
    let _s = peer(&recv.addr, &cut, true);
    wait("stream ended inside a frame's payload: got 10 of 32 bytes");

    // 5. a damaged frame is skipped, the stream goes on with the next
    let mut s = Hello::new("noisy").unwrap().encode();
    encode_frame(&Header::new(9, 2, 0, CODEC_RAW, 4), &[1, 2, 3, 4], &mut s);
    let n = s.len();
    s[n - 1] ^= 0x80; // flip a payload bit of frame 0
    encode_frame(
        &Header::new(9, 2, 1, CODEC_RAW, 4),
        &[0xFF, 0x80, 0x0F, 0x00],
        &mut s,
    );
    let _s = peer(&recv.addr, &s, true);
    wait("CRC mismatch on frame 0");

    // 6. the real sender is still served
    let img = images(&dir, &[(7, 3)]).remove(0);
    assert_ok(
        "bitmask-send",
        &send(&recv.addr, &["--channel", "blue"], &[img.0]),
    );
    let mut recv = recv;
    let got = recv.proc.wait(LIMIT);
    assert_ok("bitmask-recv", &got);
    assert!(got.stderr.contains("1 corrupt"), "{}", got.stderr);
    assert_eq!(list(out.path()), ["frame-000000.raw", "frame-000001.raw"]);
    assert_eq!(
        read(&out.join("frame-000001.raw")),
        [0xFF, 0x80, 0x0F, 0x00]
    );
    assert_eq!(
        read(&out.join("frame-000000.raw")),
        expected_mask(&img.1, &Params::new(Channel::Blue, 128))
    );
}

#[test]
fn a_stalled_frame_is_reported_with_its_sequence_and_bytes() {
    // A sender that stops inside a frame: the log names the frame and how
    // much of it came (it said only "no data for 1.0 s").
    let out = TempDir::new("e2e-stall");
    let recv = start_receiver(&["--out", out.str(), "--timeout", "1"]);
    let wait = |needle: &str| recv.proc.wait_for_stderr(needle, Duration::from_secs(20));
    let mut s = Hello::new("stalls").unwrap().encode();
    encode_frame(&Header::new(16, 16, 0, CODEC_RAW, 32), &[0xAA; 32], &mut s);
    encode_frame(&Header::new(16, 16, 1, CODEC_RAW, 32), &[0x55; 32], &mut s);
    s.truncate(s.len() - 22);
    let _a = peer(&recv.addr, &s, false);
    let line = wait("inside frame 1's payload: got 10 of 32 bytes");
    assert!(line.contains("stalls"), "{line}");
    // before its first frame: inside the header
    let mut s = Hello::new("stalls-early").unwrap().encode();
    s.extend_from_slice(&raw_header(16, 16, CODEC_RAW, 32)[..20]);
    let _b = peer(&recv.addr, &s, false);
    let line = wait("inside a frame's header: got 20 of 40 bytes");
    assert!(line.contains("before its first frame"), "{line}");
}

#[test]
fn a_flood_of_junk_does_not_flood_the_log() {
    use bitmask_wire::udp::{Datagram, KIND_HELLO};
    // 100 connections speaking HTTP and 100 datagrams with a bad hello,
    // within about a second: a line a second for each kind, with a count.
    let out = TempDir::new("e2e-flood");
    let mut recv = start_receiver(&["--out", out.str()]);
    let junk = (0..100)
        .map(|_| peer(&recv.addr, b"GET / HTTP/1.0\r\n\r\n", true))
        .collect::<Vec<_>>();
    for i in 0..100u32 {
        // (a new source port each time: the throttle is per host)
        let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let d = Datagram {
            kind: KIND_HELLO,
            index: 0,
            count: 1,
            stride: 8,
            stream_id: i,
            sequence: 0,
            frame_len: 8,
        };
        let mut b = d.encode().to_vec();
        b.extend_from_slice(b"BMHI\x09\x00\x00\x00"); // version 9: bad
        u.send_to(&b, &recv.addr).unwrap();
    }
    for said in ["bad hello", "bad magic"] {
        recv.proc.wait_for_stderr(said, Duration::from_secs(10));
    }
    // and 100 that start a frame and close (a client with a bug redialling
    // at once): a line a second too. (After the junk is closed: with its
    // 100 connections held open, a loaded receiver still had 32, its
    // --max-senders, and refused every one of these: seen on CI.)
    // Ten at a time until the first is said (at most 10 s).
    drop(junk);
    let mut cut = Vec::new();
    let t = Instant::now();
    while !recv.proc.stderr().contains("got 4 of 40 bytes") {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "no frame cut short said in 10 s:\n{}",
            recv.proc.stderr()
        );
        cut.extend((0..10).map(|_| peer(&recv.addr, b"BMSK", true)));
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(cut);
    let got = recv.proc.terminate(LIMIT);
    let cut = got.stderr.matches("got 4 of 40 bytes").count();
    assert!(
        (1..=5).contains(&cut),
        "{cut} lines for 100 frames cut short:\n{}",
        got.stderr
    );
    let tcp = got.stderr.matches("bad magic").count();
    let udp = got.stderr.matches("bad hello").count();
    assert!(
        (1..=5).contains(&tcp),
        "{tcp} lines for 100 junk connections:\n{}",
        got.stderr
    );
    assert!(
        (1..=5).contains(&udp),
        "{udp} lines for 100 bad hellos:\n{}",
        got.stderr
    );
}

/// Waits for `child` at most `limit`; kills it (and fails) past that.
fn wait_child(
    child: &mut std::process::Child,
    what: &str,
    limit: Duration,
) -> std::process::ExitStatus {
    let t = std::time::Instant::now();
    loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            return st;
        }
        if t.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A closed stderr (`2>&1 | head` that ended, a dropped ssh session) is no
/// crash: the logs, the final summaries and the error line all write to it,
/// and each binary still exits with its own status (Rust's `eprintln!`
/// panics there: exit 101).
#[test]
fn a_closed_stderr_does_not_turn_a_run_into_a_crash() {
    let dir = TempDir::new("closed-stderr");
    let out = dir.join("out");
    let (path, img) = images(&dir, &[(64, 48)]).remove(0);
    // started with stdin empty and stderr a pipe nobody reads
    let spawn = |cmd: &mut Command| {
        let w = {
            use std::os::fd::{FromRawFd, OwnedFd};
            let mut fds = [0; 2];
            // SAFETY: pipe2 writes two new descriptors into `fds` (std::io::pipe
            // needs Rust 1.87; Cargo.toml's rust-version is older)
            let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
            assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
            // SAFETY: both are new and owned by nothing else
            let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
            drop(r);
            w
        };
        cmd.env_remove("RUST_LOG")
            .stdin(std::process::Stdio::null())
            .stderr(w)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", show(cmd)))
    };
    let addr = closed_port();
    let mut recv = spawn(
        Command::new(bin("bitmask-recv"))
            .args([
                "--listen", &addr, "--count", "1", "--format", "raw", "--out",
            ])
            .arg(&out),
    );
    // The sender retries its connection until the receiver listens.
    let mut send = spawn(
        Command::new(bin("bitmask-send"))
            .args(["--to", &addr, "--no-drop"])
            .arg(&path),
    );
    let s = wait_child(&mut send, "bitmask-send", Duration::from_secs(30));
    let r = wait_child(&mut recv, "bitmask-recv", Duration::from_secs(30));
    assert!(s.success(), "bitmask-send with a closed stderr: {s}");
    assert!(r.success(), "bitmask-recv with a closed stderr: {r}");
    let files = list(&out);
    assert_eq!(files.len(), 1, "one frame on disk: {files:?}");
    assert!(
        read(&out.join(&files[0])) == expected_mask(&img, &LUMA128),
        "the frame on disk differs from the mask"
    );
    // The error path: a missing image, exit 1 (not 101).
    let mut bad = spawn(
        Command::new(bin("bitmask-send"))
            .args(["--to", &closed_port()])
            .arg(dir.join("missing.png")),
    );
    let b = wait_child(&mut bad, "bitmask-send", Duration::from_secs(30));
    assert_eq!(
        b.code(),
        Some(1),
        "a missing image with a closed stderr: {b}"
    );
}

#[test]
fn a_udp_batch_to_a_port_that_refuses_datagrams_exits_1_and_a_live_run_goes_on() {
    let dir = TempDir::new("e2e-udp-refused");
    let files: Vec<PathBuf> = images(&dir, &[(16, 8), (16, 8), (16, 8)])
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    let addr = closed_port();
    // a batch: every frame went to a port where nobody listens
    let f = run(Command::new(bin("bitmask-send"))
        .args(["--to", &addr, "--transport", "udp"])
        .args(&files));
    assert_eq!(f.status.code(), Some(1), "{}", f.stderr);
    assert!(
        f.stderr.contains("refuses datagrams")
            && f.stderr.contains("refused by the receiver's host")
            && f.stderr.contains("did not arrive"),
        "{}",
        f.stderr
    );
    assert_one_line_error(&f, "bitmask-send", "refused them");
    assert_eq!(summary_count(&f.stderr, "sent"), 3, "{}", f.stderr);
    // (unpaced: it says that a slower receiver would lose frames)
    assert!(f.stderr.contains("without --fps or --rate"), "{}", f.stderr);
    // the last frame alone refused (the receiver took two and ended): its
    // refusal comes back after it, and still counts (2 s after the second
    // frame: the receiver has ended by then, however busy the machine)
    let recv = start_receiver(&["--out", dir.join("two").to_str().unwrap(), "--count", "2"]);
    let f = run(Command::new(bin("bitmask-send"))
        .args(["--to", &recv.addr, "--transport", "udp", "--fps", "0.5"])
        .args(&files));
    assert_eq!(f.status.code(), Some(1), "{}", f.stderr);
    assert_one_line_error(
        &f,
        "bitmask-send",
        "at least 1 of 3 frame(s) did not arrive",
    );
    // a live source (a camera command) goes on and ends as before: exit 0
    let f = run(Command::new(bin("bitmask-send")).args([
        "--to",
        &addr,
        "--transport",
        "udp",
        "--input-format",
        "gray8",
        "--size",
        "16x8",
        "--input-command",
        "head -c 384 /dev/zero",
    ]));
    assert!(f.status.success(), "{}", f.stderr);
    assert!(f.stderr.contains("refuses datagrams"), "{}", f.stderr);
}

#[test]
fn udp_only_options_with_tcp_are_usage_errors_and_no_drop_over_udp_says_what_it_does() {
    let dir = TempDir::new("e2e-udp-only");
    let good = images(&dir, &[(7, 3)]).remove(0).0;
    for (flag, v) in [("--mtu", "1400"), ("--rate", "10")] {
        // (the default transport, and tcp named)
        for transport in [&[][..], &["--transport", "tcp"][..]] {
            let f = run(Command::new(bin("bitmask-send"))
                .args(["--to", "127.0.0.1:1", flag, v])
                .args(transport)
                .arg(&good));
            assert_usage_error(&f, flag);
            assert!(f.stderr.contains("--transport udp"), "{}", f.stderr);
        }
    }
    // An --mtu too small for UDP to an IPv6 address (its headers are longer):
    // an error at once, not a receiver retried for ever, for a camera too
    for input in [
        &[
            "--input-command",
            "cat /dev/zero",
            "--input-format",
            "gray8",
            "--size",
            "16x8",
        ][..],
        &[good.to_str().unwrap()][..],
    ] {
        let f = run(Command::new(bin("bitmask-send"))
            .args(["--to", "[::1]:1", "--transport", "udp", "--mtu", "130"])
            .args(input));
        assert_one_line_error(
            &f,
            "bitmask-send",
            "--mtu 130 is too small for UDP to [::1]:1 (minimum 140 for an IPv6 address)",
        );
        // (at once: not a receiver tried again first)
        assert!(!f.stderr.contains("cannot reach receiver"), "{}", f.stderr);
    }
    // --no-drop keeps a meaning over UDP (nothing dropped in the sender),
    // and the run says which
    let recv = start_receiver(&["--out", dir.join("out").to_str().unwrap()]);
    let f = run(Command::new(bin("bitmask-send"))
        .args(["--to", &recv.addr, "--transport", "udp", "--no-drop"])
        .args(["--mtu", "1400", "--rate", "10"])
        .arg(&good));
    assert_ok("--no-drop over udp", &f);
    assert!(
        f.stderr
            .contains("--no-drop with --transport udp: no frame is dropped in the sender"),
        "{}",
        f.stderr
    );
    assert!(
        !f.stderr.contains("without --fps or --rate"),
        "{}",
        f.stderr
    );
}

#[test]
fn the_senders_help_names_udp_and_what_loop_takes() {
    let f = run(Command::new(bin("bitmask-send")).arg("--help"));
    assert!(f.status.success(), "{}", f.stderr);
    // (clap rewraps the text: compare it with single spaces)
    let help = String::from_utf8_lossy(&f.stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        !help.contains("All frames share one TCP connection."),
        "{help}"
    );
    assert!(
        help.contains("or as UDP datagrams with --transport udp"),
        "{help}"
    );
    assert!(
        help.contains("(image files only: a raw --input-format stream cannot be looped)"),
        "{help}"
    );
    assert!(
        help.contains("With --transport udp only the first half holds"),
        "{help}"
    );
    assert!(help.contains("that the receiver's host refused"), "{help}");
}
