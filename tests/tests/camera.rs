//! Live camera input and live output (issue 6), driven by a producer nobody
//! here wrote: Debian's `ffmpeg` generates a moving test pattern
//! (`testsrc2`) as raw video, piped into `bitmask-send --input-format ...`.
//!
//! Every mask the receiver hands out is compared bit for bit with a mask
//! computed here from ffmpeg's own raw bytes by plain scalar code (no
//! bitmask-core): `bit = value >= threshold`, MSB first, rows padded to bytes.
//!
//! The outputs are exercised while frames arrive: `--exec` with a consumer
//! that writes as it reads and one that dies, `--latest` under a reader
//! polling the file, and the documented Python reader
//! (docs/python/read_stream.py).

use bitmask_tests::*;
use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Whether ffmpeg runs; otherwise [`skip`] (a failure under CI, where
/// `cargo xtask ci` installs it).
fn have_ffmpeg() -> bool {
    let ok = Command::new("ffmpeg")
        .arg("-version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        skip("ffmpeg is not installed (Debian: apt-get install -y ffmpeg; `cargo xtask ci` does it as root)");
    }
    ok
}

/// The ffmpeg command line that writes `n` frames of testsrc2 as raw `pix_fmt`
/// to `dest` (`-` = stdout), through the video filter `vf` if given.
///
/// testsrc2 is drawn in RGB and converted by ffmpeg's swscale: asked for
/// yuv420p directly it rounds odd sizes down to even ones.
fn ffmpeg_args(size: &str, n: usize, pix_fmt: &str, vf: Option<&str>, dest: &str) -> String {
    let vf = vf.map(|f| format!("-vf {f} ")).unwrap_or_default();
    format!(
        "ffmpeg -nostdin -v error -f lavfi -i testsrc2=size={size}:rate=30,format=rgb24 -frames:v {n} {vf}-f rawvideo -pix_fmt {pix_fmt} -y {}",
        if dest == "-" { "-".to_string() } else { sh_quote(Path::new(dest)) }
    )
}

/// Runs ffmpeg once into a file and returns its bytes.
fn ffmpeg_file(dir: &TempDir, size: &str, n: usize, pix_fmt: &str, vf: Option<&str>) -> Vec<u8> {
    let path = dir.join(&format!("{pix_fmt}-{size}-{}.raw", vf.is_some()));
    let p = path.to_str().unwrap();
    let out = run(Command::new("sh").args(["-c", &ffmpeg_args(size, n, pix_fmt, vf, p)]));
    assert!(out.status.success(), "ffmpeg failed: {}", out.stderr);
    read(&path)
}

/// Bytes of one tightly packed ffmpeg frame.
fn tight_frame_len(pix_fmt: &str, w: usize, h: usize) -> usize {
    match pix_fmt {
        "gray" => w * h,
        "rgb24" | "bgr24" => 3 * w * h,
        "yuv420p" => w * h + 2 * w.div_ceil(2) * h.div_ceil(2),
        other => panic!("no layout for {other}"),
    }
}

/// Which value of a pixel the test thresholds.
#[derive(Clone, Copy)]
enum Pick {
    /// The first byte (gray, or the Y plane of yuv420p).
    Gray,
    /// Byte `i` of a 3-byte pixel.
    Byte(usize),
    /// Pillow's convert('L') of an RGB pixel at byte offsets r, g, b.
    Luma(usize, usize, usize),
}

/// The expected masks (wire layout) of ffmpeg's tight frames, by scalar code.
fn reference_masks(
    raw: &[u8],
    pix_fmt: &str,
    w: usize,
    h: usize,
    pick: Pick,
    threshold: u16,
) -> Vec<Vec<u8>> {
    let len = tight_frame_len(pix_fmt, w, h);
    assert_eq!(raw.len() % len, 0, "ffmpeg output is whole frames");
    let bpp = if matches!(pix_fmt, "rgb24" | "bgr24") {
        3
    } else {
        1
    };
    let stride = w.div_ceil(8);
    raw.chunks_exact(len)
        .map(|frame| {
            let mut out = vec![0u8; stride * h];
            for y in 0..h {
                for x in 0..w {
                    let p = &frame[(y * w + x) * bpp..][..bpp];
                    let v = match pick {
                        Pick::Gray => p[0] as u32,
                        Pick::Byte(i) => p[i] as u32,
                        Pick::Luma(r, g, b) => {
                            (19595 * p[r] as u32 + 38470 * p[g] as u32 + 7471 * p[b] as u32 + 32768)
                                >> 16
                        }
                    };
                    if v >= threshold as u32 {
                        out[y * stride + x / 8] |= 0x80 >> (x % 8);
                    }
                }
            }
            out
        })
        .collect()
}

/// Packed mask to one byte per pixel, 0/255, by scalar code.
fn to_gray8(mask: &[u8], w: usize, h: usize) -> Vec<u8> {
    let stride = w.div_ceil(8);
    let mut out = Vec::with_capacity(w * h);
    for y in 0..h {
        for x in 0..w {
            let bit = mask[y * stride + x / 8] & (0x80 >> (x % 8)) != 0;
            out.push(if bit { 255 } else { 0 });
        }
    }
    out
}

/// Asserts that `got` is exactly the masks `want`, back to back, naming the first wrong frame.
fn assert_stream(got: &[u8], want: &[Vec<u8>], what: &str) {
    let each = want[0].len();
    assert_eq!(
        got.len(),
        each * want.len(),
        "{what}: expected {} frames of {each} B, got {} B",
        want.len(),
        got.len()
    );
    for (i, (g, w)) in got.chunks_exact(each).zip(want).enumerate() {
        let wrong = g.iter().zip(w).filter(|(a, b)| a != b).count();
        assert!(
            wrong == 0,
            "{what}: frame {i} differs in {wrong} of {each} bytes"
        );
    }
}

/// One case of ffmpeg piped into the sender: what ffmpeg makes and what the sender is told.
struct Case<'a> {
    size: (usize, usize),
    frames: usize,
    pix_fmt: &'a str,
    /// ffmpeg video filter that pads the frame (stride / padded height cases).
    pad: Option<&'a str>,
    send_args: &'a [&'a str],
    pick: Pick,
    threshold: u16,
    /// Receiver output format (`raw` or `gray8`).
    recv_format: &'a str,
    /// The sender starts ffmpeg itself (`--input-command`) instead of reading a pipe.
    via_command: bool,
}

/// Pipes `ffmpeg ... | bitmask-send ... -` into `bitmask-recv --out -`, checks
/// every mask against the scalar reference of ffmpeg's unpadded frames.
fn pipe_case(c: &Case) {
    let dir = TempDir::new("camera");
    let (w, h) = c.size;
    let size = format!("{w}x{h}");
    // The reference: ffmpeg's tight frames of the same pattern (testsrc2 is
    // deterministic), thresholded here.
    let tight = ffmpeg_file(&dir, &size, c.frames, c.pix_fmt, None);
    let masks = reference_masks(&tight, c.pix_fmt, w, h, c.pick, c.threshold);
    assert!(
        masks.windows(2).any(|m| m[0] != m[1]),
        "the test pattern should move"
    );
    if let Some(pad) = c.pad {
        // The padded stream differs from the tight one, so a sender that
        // ignored --stride/--padded-height would fail below.
        let padded = ffmpeg_file(&dir, &size, c.frames, c.pix_fmt, Some(pad));
        assert_ne!(padded.len(), tight.len(), "padding changes the frame size");
    }
    let count = c.frames.to_string();
    let mut recv = start_receiver(&["--out", "-", "--format", c.recv_format, "--count", &count]);
    let ffmpeg = ffmpeg_args(&size, c.frames, c.pix_fmt, c.pad, "-");
    let (sent, send) = if c.via_command {
        let mut cmd = Command::new(bin("bitmask-send"));
        cmd.args(["--to", &recv.addr, "--no-drop", "--threshold"])
            .arg(c.threshold.to_string())
            .args(c.send_args)
            .args(["--input-command", &ffmpeg]);
        let shown = show(&cmd);
        (run(&mut cmd), shown)
    } else {
        let send = format!(
            "{ffmpeg} | {} --to {} --no-drop --threshold {} {} -",
            sh_quote(&bin("bitmask-send")),
            recv.addr,
            c.threshold,
            c.send_args.join(" ")
        );
        (run(Command::new("sh").args(["-c", &send])), send)
    };
    assert!(sent.status.success(), "{send}\n{}", sent.stderr);
    assert!(
        sent.stderr
            .contains(&format!("after {} whole frame(s)", c.frames)),
        "the sender should report a clean end of input: {}",
        sent.stderr
    );
    let got = recv.proc.wait(LIMIT);
    assert!(got.status.success(), "receiver: {}", got.stderr);
    let want: Vec<Vec<u8>> = if c.recv_format == "gray8" {
        masks.iter().map(|m| to_gray8(m, w, h)).collect()
    } else {
        masks
    };
    assert_stream(&got.stdout, &want, &format!("{} {size} {send}", c.pix_fmt));
}

#[test]
fn ffmpeg_gray8_stream_is_bit_exact() {
    if !have_ffmpeg() {
        return;
    }
    pipe_case(&Case {
        size: (160, 120),
        frames: 12,
        pix_fmt: "gray",
        pad: None,
        send_args: &["--input-format", "gray8", "--size", "160x120"],
        pick: Pick::Gray,
        threshold: 100,
        recv_format: "raw",
        via_command: false,
    });
}

#[test]
fn ffmpeg_yuv420_odd_size_uses_the_y_plane_bit_exact_as_gray8_output() {
    if !have_ffmpeg() {
        return;
    }
    yuv420_odd_size("gray8", false);
}

/// ffmpeg's yuv420p at an odd width and height (its chroma planes are
/// ceil(w/2) x ceil(h/2)) into the sender, by pipe or `--input-command`.
fn yuv420_odd_size(recv_format: &str, via_command: bool) {
    pipe_case(&Case {
        size: (157, 93),
        frames: 10,
        pix_fmt: "yuv420p",
        pad: None,
        send_args: &["--input-format", "yuv420", "--size", "157x93"],
        pick: Pick::Gray,
        threshold: 128,
        recv_format,
        via_command,
    });
}

#[test]
fn the_sender_runs_the_camera_command_itself_bit_exact() {
    if !have_ffmpeg() {
        return;
    }
    // `--input-command`: what a deploy.toml or a systemd unit uses instead of a shell pipe.
    yuv420_odd_size("raw", true);
}

/// `bitmask-send --input-format gray8 --size 64x48 --input-command CMD` to `addr`.
fn command_sender(addr: &str, cmd: &str) -> Command {
    let mut c = Command::new(bin("bitmask-send"));
    c.args(["--to", addr, "--input-format", "gray8", "--size", "64x48"])
        .args(["--input-command", cmd]);
    c
}

#[test]
fn an_input_command_that_fails_is_an_error_with_its_status() {
    // No receiver needed: the errors come before or without a connection.
    let cases = [
        // one whole frame, then a failure: the frame is read, the status reported
        ("head -c 3072 /dev/zero; exit 4", "failed: exit status 4"),
        // one frame, then its output closed while it hangs: stopped, and
        // not a success (a service manager would not restart it)
        (
            "head -c 3072 /dev/zero; exec >&-; exec sleep 30",
            "closed its output but did not exit, and had to be stopped",
        ),
        ("no-such-camera-tool -o -", "127: command not found"),
        ("   ", "--input-command is empty"),
    ];
    for (cmd, needle) in cases {
        let out = run(&mut command_sender(&closed_port(), cmd));
        assert_eq!(out.status.code(), Some(1), "{cmd:?}: {}", out.stderr);
        assert!(out.stderr.contains(needle), "{cmd:?}: {}", out.stderr);
    }
    // The command is the input: no INPUT beside it.
    let out = run(command_sender(&closed_port(), "true").arg("-"));
    assert!(!out.status.success());
    assert!(
        out.stderr.contains("drop the INPUT argument"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_camera_that_stops_delivering_is_said_to() {
    // A camera whose front end timed out: alive, writing nothing. The
    // sender waited without a word (its progress line comes with frames).
    // (It exits when the test says, not after a fixed time: a sender that
    // runs late says "11 s", or sees the exit first.)
    let tmp = TempDir::new("camera-silent");
    let mark = tmp.join("mark");
    let cmd = format!(
        "head -c 3072 /dev/zero; while [ ! -e {} ]; do sleep 0.1; done; exit 4",
        sh_quote(&mark)
    );
    let mut s = Proc::spawn(&mut command_sender(&closed_port(), &cmd));
    let line = s.wait_for_stderr("has written nothing for ", LIMIT);
    std::fs::write(&mark, b"").unwrap();
    let out = s.wait(LIMIT);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    let secs = number_after(&line, "has written nothing for ").unwrap_or_else(|| panic!("{line}"));
    assert!((10.0..20.0).contains(&secs), "{line}");
    assert!(line.contains(" s, after 3072 bytes"), "{line}");
    assert!(
        out.stderr.contains("failed: exit status 4"),
        "{}",
        out.stderr
    );
}

/// A 30 fps gray8 64x8 "camera" (256 frames) that writes its frame number
/// into each frame's first 8 pixels, MSB first.
const COUNTING_CAMERA: &str = "exec python3 -c 'import sys, time\n\
                  out, t0 = sys.stdout.buffer, time.time()\n\
                  for k in range(256):\n    \
                  row = bytes(255 if k >> (7 - i) & 1 else 0 for i in range(8))\n    \
                  out.write(row + bytes(64 * 8 - 8)); out.flush()\n    \
                  time.sleep(max(0, t0 + (k + 1) / 30 - time.time()))'";

#[test]
fn a_camera_faster_than_fps_is_read_as_it_comes_and_the_newest_frames_kept() {
    // A 30 fps "camera" writes its frame number into each frame's first 8
    // pixels; the sender keeps 5 a second. Reading at 5 frames a second
    // instead would fill the pipe, and each mask kept would be older than
    // the last (the masks held frames 0, 1, 2, ... 3.4 s behind).
    let tmp = TempDir::new("camera-fps");
    let out = tmp.join("out");
    let mut recv = start_receiver(&[
        "--out",
        out.to_str().unwrap(),
        "--format",
        "raw",
        "--count",
        "12",
    ]);
    let camera = COUNTING_CAMERA;
    let mut c = Command::new(bin("bitmask-send"));
    c.args([
        "--to",
        &recv.addr,
        "--input-format",
        "gray8",
        "--size",
        "64x8",
    ])
    .args(["--input-command", camera, "--fps", "5", "--count", "12"])
    .args(["--codec", "raw"]);
    let f = Proc::spawn(&mut c).wait(LIMIT);
    assert!(f.status.success(), "{}: {}", f.status, f.stderr);
    let r = recv.proc.wait(LIMIT);
    assert!(r.status.success(), "{}: {}", r.status, r.stderr);
    let mut names = list(&out);
    names.sort();
    // each mask's first byte is the camera's frame number
    let kept: Vec<u8> = names.iter().map(|n| read(&out.join(n))[0]).collect();
    assert_eq!(kept.len(), 12, "{names:?}\n{}", f.stderr);
    assert!(kept.windows(2).all(|w| w[0] < w[1]), "{kept:?}");
    // 12 masks at 5 a second span about 2.2 s: about 66 camera frames
    // (at least 40 on a loaded machine); read at --fps, frames 0-11.
    assert!(kept[11] - kept[0] >= 40, "{kept:?}\n{}", f.stderr);
    assert!(f.stderr.contains("one per 200 ms is kept"), "{}", f.stderr);
    // and the frames left are counted in the summary
    assert!(
        f.stderr.contains(" skipped for --fps), sent 12 frames"),
        "{}",
        f.stderr
    );
}

#[test]
fn a_camera_a_little_faster_than_fps_keeps_the_rate_asked_for() {
    // A 30 fps camera at --fps 20 keeps 2 frames of 3: its frame numbers
    // advance by 1.5 a mask. (The frame after the one due was kept, a
    // frame read and left first: 2.1-2.5 apart, 12-14 a second; the bound
    // leaves room for a loaded machine, whose camera delivers in bursts.)
    let tmp = TempDir::new("camera-fps-near");
    let out = tmp.join("out");
    let n = 40;
    let mut recv = start_receiver(&["--out", out.to_str().unwrap(), "--format", "raw"]);
    let camera = COUNTING_CAMERA;
    let f = Proc::spawn(
        Command::new(bin("bitmask-send"))
            .args(["--to", &recv.addr, "--input-format", "gray8"])
            .args(["--size", "64x8", "--input-command", camera])
            .args(["--fps", "20", "--count", &n.to_string(), "--codec", "raw"]),
    )
    .wait(LIMIT);
    assert!(f.status.success(), "{}: {}", f.status, f.stderr);
    recv.proc.wait_for_stderr("closed the stream", LIMIT);
    let r = recv.proc.terminate(LIMIT);
    assert!(r.status.success(), "{}: {}", r.status, r.stderr);
    // (frame number, camera frame) of each mask; a frame the sender's
    // queue dropped on a loaded machine leaves a gap, taken into account
    let mut kept: Vec<(usize, usize)> = list(&out)
        .iter()
        .map(|name| {
            let seq: usize = name["frame-".len().."frame-000000".len()].parse().unwrap();
            (seq, read(&out.join(name))[0] as usize)
        })
        .collect();
    kept.sort();
    assert!(kept.len() >= n - 4, "{kept:?}\n{}", f.stderr);
    assert!(kept.windows(2).all(|w| w[0].1 < w[1].1), "{kept:?}");
    // Camera frames per mask between masks kept one after the other, the
    // tenth most and least apart left out: a moment the machine was too
    // busy to run the sender (a burst of camera frames, one wide gap) does
    // not move it; the frame after the one due, taken every time, does.
    let mut per: Vec<f64> = kept
        .windows(2)
        .map(|w| (w[1].1 - w[0].1) as f64 / (w[1].0 - w[0].0) as f64)
        .collect();
    per.sort_by(f64::total_cmp);
    let cut = per.len() / 10;
    let mid = &per[cut..per.len() - cut];
    let per_mask = mid.iter().sum::<f64>() / mid.len() as f64;
    eprintln!("camera frames per mask kept: {per_mask:.2}");
    assert!(
        (1.3..=1.9).contains(&per_mask),
        "{per_mask:.2} camera frames per mask (1.5 at 20 of 30 fps): {kept:?}\n{}",
        f.stderr
    );
}

#[test]
fn stopping_the_sender_stops_its_input_command_at_once() {
    let tmp = TempDir::new("input-command-stop");
    let recv = start_receiver(&["--out", tmp.str()]);
    // A producer that never ends by itself, marked so it can be found afterwards.
    let mark = format!("bitmask-test-mark-{}", std::process::id());
    let cmd = format!("while :; do head -c 3072 /dev/zero; sleep 0.05; done # {mark}");
    let mut s = Proc::spawn(&mut command_sender(&recv.addr, &cmd));
    s.wait_for_stderr("connected to", LIMIT);
    std::thread::sleep(Duration::from_millis(300));
    assert!(Command::new("kill")
        .args(["-TERM", &s.id().to_string()])
        .status()
        .expect("kill(1)")
        .success());
    let f = s.wait(LIMIT);
    assert!(f.status.success(), "{}: {}", f.status, f.stderr);
    assert!(f.stderr.contains("` stopped ("), "{}", f.stderr);
    // The stop ended the input itself: not the 3 s watchdog's "exiting now".
    assert!(!f.stderr.contains("did not end within"), "{}", f.stderr);
    // Nothing of the command is left running.
    let left = run(Command::new("pgrep").args(["-f", &mark]));
    assert!(
        left.stdout.is_empty(),
        "still running: {:?}",
        String::from_utf8_lossy(&left.stdout)
    );
}

#[test]
fn ffmpeg_rgb24_and_bgr24_channels_are_bit_exact() {
    if !have_ffmpeg() {
        return;
    }
    // Blue is blue in both byte orders.
    for (pix_fmt, blue) in [("rgb24", 2), ("bgr24", 0)] {
        pipe_case(&Case {
            size: (96, 64),
            frames: 6,
            pix_fmt,
            pad: None,
            send_args: &[
                "--input-format",
                pix_fmt,
                "--size",
                "96x64",
                "--channel",
                "blue",
            ],
            pick: Pick::Byte(blue),
            threshold: 170,
            recv_format: "raw",
            via_command: false,
        });
    }
    // Luma (Pillow's convert('L')) from BGR bytes.
    pipe_case(&Case {
        size: (90, 50),
        frames: 5,
        pix_fmt: "bgr24",
        pad: None,
        send_args: &[
            "--input-format",
            "bgr24",
            "--size",
            "90x50",
            "--channel",
            "luma",
        ],
        pick: Pick::Luma(2, 1, 0),
        threshold: 120,
        recv_format: "raw",
        via_command: false,
    });
}

#[test]
fn padded_strides_and_heights_like_the_pi_camera_tools() {
    if !have_ffmpeg() {
        return;
    }
    // ffmpeg's pad filter lays frames out exactly as the Pi tools do: the
    // picture top-left, white padding right of each row and below the last
    // row, chroma planes padded to half the Y stride and height.
    // gray8 780 wide with rpicam-vid's stride 832.
    pipe_case(&Case {
        size: (780, 40),
        frames: 4,
        pix_fmt: "gray",
        pad: Some("pad=832:40:0:0:white"),
        send_args: &[
            "--input-format",
            "gray8",
            "--size",
            "780x40",
            "--stride",
            "832",
        ],
        pick: Pick::Gray,
        threshold: 128,
        recv_format: "raw",
        via_command: false,
    });
    // yuv420 780x590 as rpicam-vid: stride 832, plus a padded height.
    pipe_case(&Case {
        size: (780, 590),
        frames: 3,
        pix_fmt: "yuv420p",
        pad: Some("pad=832:592:0:0:white"),
        send_args: &[
            "--input-format",
            "yuv420",
            "--size",
            "780x590",
            "--stride",
            "832",
            "--padded-height",
            "592",
        ],
        pick: Pick::Gray,
        threshold: 128,
        recv_format: "raw",
        via_command: false,
    });
    // yuv420 100x75 as raspividyuv: width to a multiple of 32, height of 16.
    pipe_case(&Case {
        size: (100, 75),
        frames: 5,
        pix_fmt: "yuv420p",
        pad: Some("pad=128:80:0:0:white"),
        send_args: &[
            "--input-format",
            "yuv420",
            "--size",
            "100x75",
            "--stride",
            "128",
            "--padded-height",
            "80",
        ],
        pick: Pick::Gray,
        threshold: 90,
        recv_format: "raw",
        via_command: false,
    });
    // rgb24 with padded rows (3 * 50 = 150 -> 162 bytes) and height.
    pipe_case(&Case {
        size: (50, 30),
        frames: 4,
        pix_fmt: "rgb24",
        pad: Some("pad=54:32:0:0:white"),
        send_args: &[
            "--input-format",
            "rgb24",
            "--size",
            "50x30",
            "--stride",
            "162",
            "--padded-height",
            "32",
            "--channel",
            "red",
        ],
        pick: Pick::Byte(0),
        threshold: 128,
        recv_format: "raw",
        via_command: false,
    });
}

#[test]
fn truncated_last_frame_from_a_fifo_is_reported_and_earlier_frames_delivered() {
    if !have_ffmpeg() {
        return;
    }
    let dir = TempDir::new("camera-trunc");
    let (w, h) = (64, 48);
    let raw = ffmpeg_file(&dir, "64x48", 5, "gray", None);
    let frame = w * h;
    let masks = reference_masks(&raw, "gray", w, h, Pick::Gray, 128);
    // Four whole frames and 1000 bytes of the fifth, through a FIFO.
    let cut = dir.join("cut.raw");
    std::fs::write(&cut, &raw[..4 * frame + 1000]).unwrap();
    let fifo = dir.join("camera.fifo");
    let mk = run(Command::new("mkfifo").arg(&fifo));
    assert!(mk.status.success(), "mkfifo: {}", mk.stderr);
    let mut recv = start_receiver(&["--out", "-", "--count", "4"]);
    let mut writer = Proc::spawn(Command::new("sh").args([
        "-c",
        &format!("cat {} > {}", sh_quote(&cut), sh_quote(&fifo)),
    ]));
    let sent = run(Command::new(bin("bitmask-send")).args([
        "--to",
        &recv.addr,
        "--no-drop",
        "--input-format",
        "gray8",
        "--size",
        "64x48",
        fifo.to_str().unwrap(),
    ]));
    assert!(writer.wait(LIMIT).status.success());
    assert!(
        sent.status.success(),
        "the sender ends cleanly: {}",
        sent.stderr
    );
    assert!(
        sent.stderr
            .contains(&format!("middle of frame 4: got 1000 of {frame} bytes")),
        "the short read names the frame and the bytes: {}",
        sent.stderr
    );
    assert!(sent.stderr.contains("sent 4 frames"), "{}", sent.stderr);
    let got = recv.proc.wait(LIMIT);
    assert!(got.status.success(), "{}", got.stderr);
    assert_stream(&got.stdout, &masks[..4], "truncated stream");
}

#[test]
fn bad_raw_arguments_are_one_line_errors() {
    let cases: [(&[&str], &str); 4] = [
        (&["--input-format", "gray8", "-"], "--size"),
        (
            &[
                "--input-format",
                "rgb24",
                "--size",
                "100x10",
                "--stride",
                "200",
                "-",
            ],
            "--stride 200",
        ),
        (
            &[
                "--input-format",
                "gray8",
                "--size",
                "10x10",
                "--padded-height",
                "9",
                "-",
            ],
            "--padded-height 9",
        ),
        (
            &["--input-format", "gray8", "--size", "10x10", "a", "b"],
            "one stream",
        ),
    ];
    for (args, needle) in cases {
        let out = run(Command::new(bin("bitmask-send"))
            .args(["--to", &closed_port()])
            .args(args));
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(out.stderr.contains(needle), "{args:?}: {}", out.stderr);
    }
}

/// ffmpeg writing gray8 frames into a FIFO that `bitmask-send --fps FPS`
/// reads: two processes, both killed when dropped (the sender of a dead
/// receiver would otherwise keep reconnecting).
struct PacedSender {
    ffmpeg: Proc,
    sender: Proc,
}

fn paced_sender(dir: &TempDir, addr: &str, size: &str, frames: usize, fps: u32) -> PacedSender {
    let fifo = dir.join("frames.fifo");
    let mk = run(Command::new("mkfifo").arg(&fifo));
    assert!(mk.status.success(), "mkfifo: {}", mk.stderr);
    let fifo_s = fifo.to_str().unwrap();
    let ffmpeg = Proc::spawn(Command::new("sh").args([
        "-c",
        &format!("exec {}", ffmpeg_args(size, frames, "gray", None, fifo_s)),
    ]));
    let sender = Proc::spawn(Command::new(bin("bitmask-send")).args([
        "--to",
        addr,
        "--no-drop",
        "--fps",
        &fps.to_string(),
        "--input-format",
        "gray8",
        "--size",
        size,
        fifo_s,
    ]));
    PacedSender { ffmpeg, sender }
}

impl PacedSender {
    /// Waits for both; returns the sender's result after checking ffmpeg's.
    fn wait(&mut self) -> Finished {
        let f = self.ffmpeg.wait(LIMIT);
        assert!(f.status.success(), "ffmpeg: {}", f.stderr);
        self.sender.wait(LIMIT)
    }
}

#[test]
fn exec_consumer_reads_while_frames_arrive() {
    if !have_ffmpeg() {
        return;
    }
    let dir = TempDir::new("camera-exec");
    let (w, h, n) = (96, 72, 20);
    let raw = ffmpeg_file(&dir, "96x72", n, "gray", None);
    let want: Vec<Vec<u8>> = reference_masks(&raw, "gray", w, h, Pick::Gray, 128)
        .iter()
        .map(|m| to_gray8(m, w, h))
        .collect();
    let out = dir.join("consumer.gray");
    let consumer = format!("cat > {}", sh_quote(&out));
    let count = n.to_string();
    let mut recv = start_receiver(&["--exec", &consumer, "--format", "gray8", "--count", &count]);
    let mut sender = paced_sender(&dir, &recv.addr, "96x72", n, 10);
    // While the sender is still sending (2 s at 10 fps), the consumer's file grows.
    let start = Instant::now();
    let mut seen_while_sending = 0;
    while start.elapsed() < LIMIT {
        let len = std::fs::metadata(&out)
            .map(|m| m.len() as usize)
            .unwrap_or(0);
        if len >= w * h {
            seen_while_sending = len / (w * h);
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let s = sender.wait();
    assert!(s.status.success(), "{}", s.stderr);
    let r = recv.proc.wait(LIMIT);
    assert!(r.status.success(), "receiver: {}", r.stderr);
    assert!(
        (1..n).contains(&seen_while_sending),
        "the consumer should hold some but not all of the {n} frames while they arrive \
         (10 fps), it held {seen_while_sending}"
    );
    assert!(r.stderr.contains("exited cleanly"), "{}", r.stderr);
    assert_stream(&read(&out), &want, "--exec consumer");
}

#[test]
fn exec_consumer_that_dies_stops_the_receiver_with_a_message() {
    if !have_ffmpeg() {
        return;
    }
    let dir = TempDir::new("camera-exec-dies");
    let frame = 64 * 48;
    // Reads one gray8 frame, then dies with status 7.
    let consumer = format!("head -c {frame} > /dev/null; exit 7");
    let mut recv = start_receiver(&["--exec", &consumer, "--format", "gray8"]);
    let sender = paced_sender(&dir, &recv.addr, "64x48", 200, 20);
    let r = recv.proc.wait(LIMIT);
    assert_eq!(
        r.status.code(),
        Some(3),
        "receiver should exit 3: {}",
        r.stderr
    );
    assert!(
        r.stderr.contains("--exec child") && r.stderr.contains("exit status: 7"),
        "the message names the child and its status: {}",
        r.stderr
    );
    // It stops as at a signal: with its summary, the frame the child took
    // counted written.
    let total = r
        .stderr
        .split("bitmask-recv: total: ")
        .nth(1)
        .unwrap_or_else(|| panic!("no summary: {}", r.stderr));
    assert!(
        !total.starts_with("0 frames"),
        "the summary counts the frames received: {}",
        r.stderr
    );
    // The sender keeps trying to reconnect; dropping it ends it and ffmpeg.
    drop(sender);
}

#[test]
fn latest_file_is_never_partial_under_a_polling_reader() {
    if !have_ffmpeg() {
        return;
    }
    let dir = TempDir::new("camera-latest");
    let (w, h, n) = (160, 120, 30);
    let raw = ffmpeg_file(&dir, "160x120", n, "gray", None);
    let frames: Vec<Vec<u8>> = reference_masks(&raw, "gray", w, h, Pick::Gray, 128)
        .iter()
        .map(|m| to_gray8(m, w, h))
        .collect();
    let latest = dir.join("latest.gray");
    let count = n.to_string();
    let mut recv = start_receiver(&[
        "--latest",
        latest.to_str().unwrap(),
        "--format",
        "gray8",
        "--count",
        &count,
    ]);
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let done = done.clone();
        let latest = latest.clone();
        let frames = frames.clone();
        std::thread::spawn(move || {
            let (mut reads, mut seen) = (0usize, HashSet::new());
            while !done.load(Ordering::SeqCst) {
                if let Ok(data) = std::fs::read(&latest) {
                    reads += 1;
                    let i = frames.iter().position(|f| *f == data);
                    assert!(
                        i.is_some(),
                        "read {} B that are not one whole mask (of {} B)",
                        data.len(),
                        frames[0].len()
                    );
                    seen.insert(i.unwrap());
                }
                std::thread::yield_now();
            }
            (reads, seen.len())
        })
    };
    let mut sender = paced_sender(&dir, &recv.addr, "160x120", n, 30);
    let s = sender.wait();
    let r = recv.proc.wait(LIMIT);
    done.store(true, Ordering::SeqCst);
    let (reads, distinct) = reader.join().expect("the reader saw only whole masks");
    assert!(s.status.success(), "{}", s.stderr);
    assert!(r.status.success(), "{}", r.stderr);
    assert!(
        reads > n && distinct >= 3,
        "the reader should see the file change while frames arrive ({reads} reads, {distinct} masks)"
    );
    assert_eq!(read(&latest), frames[n - 1], "the newest mask stays");
    let leftovers: Vec<String> = list(dir.path())
        .into_iter()
        .filter(|f| f.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

#[test]
fn python_example_reads_gray8_and_raw_streams() {
    if !have_ffmpeg() {
        return;
    }
    let Some(py) = python() else { return };
    let dir = TempDir::new("camera-py");
    let (w, h, n) = (100, 60, 6);
    let raw = ffmpeg_file(&dir, "100x60", n, "gray", None);
    let masks = reference_masks(&raw, "gray", w, h, Pick::Gray, 128);
    let expected: String = masks
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let ones: u32 = m.iter().map(|b| b.count_ones()).sum();
            // (the CRC of the packed mask: where the pixels are, not only how many)
            let crc = bitmask_wire::crc(m, &[]);
            format!(
                "frame {i}: {ones} of {} pixels set (crc32 {crc:08x})\n",
                w * h
            )
        })
        .collect();
    let script = root().join("docs/python/read_stream.py");
    let count = n.to_string();
    // `bitmask-recv --out - --format gray8 | python3 read_stream.py WxH`
    let pipeline = format!(
        "{} --listen 127.0.0.1:0 --out - --format gray8 --count {n} | {} {} 100x60",
        sh_quote(&bin("bitmask-recv")),
        sh_quote(&py),
        sh_quote(&script)
    );
    let mut recv = start_listening(Command::new("sh").args(["-c", &pipeline]));
    let sent = run(Command::new("sh").args([
        "-c",
        &format!(
            "{} | {} --to {} --no-drop --input-format gray8 --size 100x60 -",
            ffmpeg_args("100x60", n, "gray", None, "-"),
            sh_quote(&bin("bitmask-send")),
            recv.addr
        ),
    ]));
    assert!(sent.status.success(), "{}", sent.stderr);
    let got = recv.proc.wait(LIMIT);
    assert!(got.status.success(), "{}", got.stderr);
    assert_eq!(String::from_utf8_lossy(&got.stdout), expected, "gray8 pipe");

    // The raw format through --exec: np.unpackbits.
    let consumer = format!("{} {} 100x60 --raw", sh_quote(&py), sh_quote(&script));
    let mut recv = start_receiver(&["--exec", &consumer, "--count", &count]);
    let sent = run(Command::new("sh").args([
        "-c",
        &format!(
            "{} | {} --to {} --no-drop --input-format gray8 --size 100x60 -",
            ffmpeg_args("100x60", n, "gray", None, "-"),
            sh_quote(&bin("bitmask-send")),
            recv.addr
        ),
    ]));
    assert!(sent.status.success(), "{}", sent.stderr);
    let got = recv.proc.wait(LIMIT);
    assert!(got.status.success(), "{}", got.stderr);
    // The child inherits the receiver's stdout.
    assert_eq!(String::from_utf8_lossy(&got.stdout), expected, "raw --exec");
}

#[test]
fn bad_output_arguments_are_one_line_errors() {
    let cases: [(&[&str], &str); 5] = [
        (
            &["--latest", "/tmp/x.jpg"],
            ".jpg is not a format the receiver writes",
        ),
        (
            &["--out", "-", "--format", "png"],
            "needs --format raw or gray8 (not png)",
        ),
        (
            &["--exec", "cat", "--format", "pbm"],
            "needs --format raw or gray8 (not pbm)",
        ),
        (
            &["--latest", "/nonexistent-dir/x.png"],
            "directory /nonexistent-dir does not exist",
        ),
        (&[], "nowhere to put the masks"),
    ];
    for (args, needle) in cases {
        let out = run(Command::new(bin("bitmask-recv"))
            .args(["--listen", "127.0.0.1:0"])
            .args(args));
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(out.stderr.contains(needle), "{args:?}: {}", out.stderr);
    }
    // A refused --latest or --exec leaves no --out directory behind (with
    // --per-sender too) ...
    let tmp = TempDir::new("camera-bad-latest");
    let out = tmp.join("out");
    let o = out.to_str().unwrap();
    let jpg = tmp.join("x.jpg");
    // (a --latest FILE in a directory that is missing is told once --out
    // is made: the directories made are removed again)
    let elsewhere = tmp.join("missing/latest.png");
    let deep = tmp.join("a/b/out");
    let d = deep.to_str().unwrap();
    let refused: [&[&str]; 5] = [
        &["--latest", jpg.to_str().unwrap()],
        &["--latest", elsewhere.to_str().unwrap()],
        &["--out", d, "--latest", elsewhere.to_str().unwrap()],
        &["--latest", jpg.to_str().unwrap(), "--per-sender"],
        &["--exec", "cat", "--format", "png"],
    ];
    for extra in refused {
        let mut c = Command::new(bin("bitmask-recv"));
        c.args(["--listen", "127.0.0.1:0"]);
        if !extra.contains(&"--out") {
            c.args(["--out", o]);
        }
        let f = run(c.args(extra));
        assert!(!f.status.success(), "{extra:?}: {}", f.stderr);
        assert!(!out.exists(), "{extra:?}: {} made", out.display());
        assert!(
            !tmp.join("a").exists(),
            "{extra:?}: {} made",
            deep.display()
        );
    }
    // ... and a --latest file in the --out directory it makes is taken.
    for extra in [&[][..], &["--per-sender"]] {
        let latest = out.join("latest.png");
        let mut r = start_receiver(
            &[
                &["--out", o, "--latest", latest.to_str().unwrap()][..],
                extra,
            ]
            .concat(),
        );
        let f = r.proc.terminate(LIMIT);
        assert!(f.status.success(), "{extra:?}: {}", f.stderr);
        std::fs::remove_dir_all(&out).unwrap();
    }
}

#[test]
fn a_recorded_file_that_is_not_whole_frames_is_warned_about_at_the_start() {
    // (no ffmpeg needed: any bytes are gray8 frames)
    let dir = TempDir::new("camera-misfit");
    let (w, h) = (64, 48);
    let frame = w * h;
    let rec = dir.join("rec.raw");
    std::fs::write(&rec, noise(4 * frame + 1000, 3)).unwrap();
    let mut recv = start_receiver(&["--out", dir.join("out").to_str().unwrap()]);
    let named = run(Command::new(bin("bitmask-send")).args([
        "--to",
        &recv.addr,
        "--input-format",
        "gray8",
        "--size",
        "64x48",
        rec.to_str().unwrap(),
    ]));
    // stdin redirected from the file: the same (fstat)
    let redirected = run(Command::new("sh").args([
        "-c",
        &format!(
            "exec {} --to {} --input-format gray8 --size 64x48 - < {}",
            sh_quote(&bin("bitmask-send")),
            recv.addr,
            sh_quote(&rec)
        ),
    ]));
    for (f, name) in [
        (&named, rec.display().to_string()),
        (&redirected, "stdin".into()),
    ] {
        assert!(f.status.success(), "{}", f.stderr);
        let warning = format!(
            "{name} is {} bytes, not a whole number of frames of {frame} bytes (gray8 64x48, \
             stride 64 B, 48 stored rows, {frame} B per frame): 4 whole frame(s) and 1000 \
             bytes over",
            4 * frame + 1000
        );
        let at = f
            .stderr
            .find(&warning)
            .unwrap_or_else(|| panic!("{}", f.stderr));
        // at once, before the first frame is sent
        assert!(
            f.stderr.find("state: connected").is_none_or(|c| at < c),
            "{}",
            f.stderr
        );
        assert!(
            f.stderr.contains(
                "a wrong --size, --stride or --padded-height shows as a part-frame at its end"
            ),
            "{}",
            f.stderr
        );
        assert!(!f.stderr.contains("if this happens at the first frame"));
    }
    // The same bytes through a pipe: a live producer that stopped inside a
    // frame (not a recording's layout) is what its end says.
    let piped = run(Command::new("sh").args([
        "-c",
        &format!(
            "cat {} | {} --to {} --input-format gray8 --size 64x48 -",
            sh_quote(&rec),
            sh_quote(&bin("bitmask-send")),
            recv.addr
        ),
    ]));
    assert!(piped.status.success(), "{}", piped.stderr);
    assert!(
        piped
            .stderr
            .contains("stdin ended in the middle of frame 4: got 1000 of 3072 bytes")
            && piped
                .stderr
                .contains("the program writing it stopped inside a frame: did it fail?")
            && !piped.stderr.contains("not a whole number of frames"),
        "{}",
        piped.stderr
    );
    recv.proc.terminate(LIMIT);
}
