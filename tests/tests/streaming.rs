//! Streaming behaviour on loopback (issue 5): several senders at once,
//! `--per-sender` layout, `--stats-json`, TCP and UDP, reconnect after a
//! receiver restart, a sender that waits for a missing receiver, hostile
//! peers beside a good sender. The two-host tests over a shaped link are in
//! `cargo xtask netbed`.

use bitmask_tests::*;
use bitmask_wire::{encode_frame, Header, Hello, CODEC_RAW};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const W: u32 = 64;
const H: u32 = 48;

/// Three noise images in `dir`; returns their expected masks (luma >= 128).
fn inputs(dir: &Path) -> Vec<Vec<u8>> {
    three_inputs(dir, W, H, 40, noise_image)
}

fn sender(to: &str, name: &str, input: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(bin("bitmask-send"));
    c.args(["--to", to, "--name", name, "--loop"])
        .args(extra)
        .arg(input);
    c
}

/// Every frame-NNNNNN.raw in `dir` equals the mask of image NNNNNN % 3; returns the sequence numbers.
fn check_frames(dir: &Path, expected: &[Vec<u8>]) -> Vec<u64> {
    let mut seqs = Vec::new();
    for name in list(dir) {
        let Some(n) = name
            .strip_prefix("frame-")
            .and_then(|n| n.strip_suffix(".raw"))
        else {
            continue;
        };
        let seq: u64 = n.parse().unwrap();
        assert_eq!(
            read(&dir.join(&name)),
            expected[(seq % 3) as usize],
            "{} differs from the mask of image {}",
            dir.join(&name).display(),
            seq % 3
        );
        seqs.push(seq);
    }
    seqs.sort();
    seqs
}

#[test]
fn two_senders_tcp_and_udp_get_their_own_directories_and_stats() {
    let tmp = TempDir::new("streaming-multi");
    let expected = inputs(&tmp.join("in"));
    let out = tmp.join("out");
    let json = tmp.join("stats.json");
    let mut recv = start_receiver(&[
        "--out",
        out.to_str().unwrap(),
        "--per-sender",
        "--stats-json",
        json.to_str().unwrap(),
        "--count",
        "24",
    ]);
    let input = tmp.join("in");
    let mut a = Proc::spawn(&mut sender(
        &recv.addr,
        "cam-a",
        &input,
        &["--count", "12", "--fps", "40", "--no-drop"],
    ));
    let mut b = Proc::spawn(&mut sender(
        &recv.addr,
        "cam-b",
        &input,
        // (--no-drop: a sender slowed by a loaded machine must not drop
        // frames as a live source does, which this test would take for loss)
        &[
            "--count",
            "12",
            "--fps",
            "40",
            "--transport",
            "udp",
            "--no-drop",
        ],
    ));
    let fa = a.wait(LIMIT);
    let fb = b.wait(LIMIT);
    assert!(fa.status.success(), "tcp sender: {}", fa.stderr);
    assert!(fb.status.success(), "udp sender: {}", fb.stderr);
    let fr = recv.proc.wait(LIMIT);
    assert!(fr.status.success(), "receiver: {}", fr.stderr);
    let all: Vec<u64> = (0..12).collect();
    assert_eq!(check_frames(&out.join("cam-a"), &expected), all);
    assert_eq!(check_frames(&out.join("cam-b"), &expected), all);
    assert!(
        list(&out).iter().all(|n| !n.starts_with("frame-")),
        "--per-sender must not write into DIR itself: {:?}",
        list(&out)
    );
    let j = std::fs::read_to_string(&json).unwrap();
    for name in ["cam-a", "cam-b"] {
        assert_eq!(stat(&j, name, "received"), 12.0, "{j}");
        assert_eq!(stat(&j, name, "lost"), 0.0, "{j}");
        assert_eq!(stat(&j, name, "corrupt"), 0.0, "{j}");
        // (capture to written, through a debug receiver: tens of µs at
        // least, above the 0.01 ms it is given in)
        assert!(stat(&j, name, "total_latency_p99_ms") > 0.0, "{j}");
        assert!(stat(&j, name, "compression_ratio") > 0.0, "{j}");
    }
    assert!(j.contains("\"transport\": \"udp\""), "{j}");
    assert!(
        fr.stderr.contains("cam-a: 12 frames (0 lost"),
        "final summary per sender expected: {}",
        fr.stderr
    );
}

#[test]
fn a_per_sender_out_directory_deleted_while_running_is_made_again() {
    // `rm -rf DIR` under a running --per-sender receiver: a stream that
    // stays connected writes into DIR/<name>/ again (its frames all failed
    // until it reconnected).
    let tmp = TempDir::new("stream-rmrf");
    let expected = inputs(&tmp.join("in"));
    let out = tmp.join("out");
    let mut r = start_receiver(&["--per-sender", "--out", out.to_str().unwrap()]);
    let mut s = Proc::spawn(&mut sender(
        &r.addr,
        "cam",
        &tmp.join("in"),
        &["--fps", "20", "--count", "60"],
    ));
    wait_for_file(&out.join("cam").join("frame-000005.raw"), "frame 5");
    // (moved away first: a frame renamed into it meanwhile cannot make the
    // removal fail)
    let gone = tmp.join("out.gone");
    std::fs::rename(&out, &gone).unwrap();
    std::fs::remove_dir_all(&gone).unwrap();
    let f = s.wait(LIMIT);
    assert!(f.status.success(), "{}", f.stderr);
    let log = r.proc.terminate(LIMIT).stderr;
    assert!(
        log.contains("is gone (deleted while running?): opening it again"),
        "{log}"
    );
    let seqs = check_frames(&out.join("cam"), &expected);
    // at most the frame being written at the deletion is lost
    assert!(seqs.len() >= 50, "{seqs:?}\n{log}");
    assert_eq!(seqs.last(), Some(&59), "{log}");
}

#[test]
fn keep_bounds_each_directory_across_restarts() {
    // --keep 5 --per-sender: 20 frames leave the newest 5; a restarted
    // receiver counts the files the first one left (oldest first) and a
    // restarted sender's 10 frames leave only its own newest 5; files that
    // are not frame files of this format stay.
    let tmp = TempDir::new("stream-keep");
    let expected = inputs(&tmp.join("in"));
    let out = tmp.join("out");
    let cam = out.join("cam");
    let run = |frames: &str| {
        let mut r = start_receiver(&[
            "--per-sender",
            "--out",
            out.to_str().unwrap(),
            "--keep",
            "5",
            "--count",
            frames,
        ]);
        let f = Proc::spawn(&mut sender(
            &r.addr,
            "cam",
            &tmp.join("in"),
            // (20 fps: the listing of what the directory held, a thread
            // the first frame starts, is done long before the last one)
            &["--fps", "20", "--count", frames, "--no-drop"],
        ))
        .wait(LIMIT);
        assert!(f.status.success(), "sender: {}", f.stderr);
        let fr = r.proc.wait(LIMIT);
        assert!(fr.status.success(), "receiver: {}", fr.stderr);
        fr.stderr
    };
    let log = run("20");
    assert_eq!(check_frames(&cam, &expected), [15, 16, 17, 18, 19], "{log}");
    std::fs::write(cam.join("notes.txt"), b"mine").unwrap();
    std::fs::write(cam.join("frame-000001.png"), b"another format").unwrap();
    let log = run("10");
    assert_eq!(check_frames(&cam, &expected), [5, 6, 7, 8, 9], "{log}");
    let mut left = list(&cam);
    left.retain(|n| !n.ends_with(".raw"));
    assert_eq!(left, ["frame-000001.png", "notes.txt"], "{log}");
}

#[test]
fn a_slow_udp_sender_keeps_its_stream_and_its_reference_frame() {
    // A frame every 4 s over UDP, delta-coded, to a receiver whose
    // --timeout is 1 s: the sender's hellos (every second, frames or not)
    // keep its stream open there, and with it the decoder's reference
    // frame; a stream closed between frames made every delta frame corrupt.
    let tmp = TempDir::new("streaming-udp-slow");
    let input = tmp.join("in");
    std::fs::create_dir_all(&input).unwrap();
    let img = image::DynamicImage::ImageRgb8(scene_image(W, H, 5));
    save_image(&img, &input.join("still.png"));
    let out = tmp.join("out");
    let json = tmp.join("stats.json");
    let mut recv = start_receiver(&[
        "--out",
        out.to_str().unwrap(),
        "--format",
        "raw",
        "--stats-json",
        json.to_str().unwrap(),
        "--timeout",
        "1",
        "--count",
        "3",
    ]);
    let mut s = Proc::spawn(&mut sender(
        &recv.addr,
        "timelapse",
        &input,
        &[
            "--transport",
            "udp",
            "--fps",
            "0.25",
            "--count",
            "3",
            "--codec",
            "bilevel",
            "--keyframe-interval",
            "30",
        ],
    ));
    let fs = s.wait(LIMIT);
    assert!(fs.status.success(), "sender: {}", fs.stderr);
    let fr = recv.proc.wait(LIMIT);
    assert!(fr.status.success(), "receiver: {}", fr.stderr);
    let j = std::fs::read_to_string(&json).unwrap();
    assert_eq!(stat(&j, "timelapse", "received"), 3.0, "{j}\n{}", fr.stderr);
    assert_eq!(stat(&j, "timelapse", "corrupt"), 0.0, "{j}\n{}", fr.stderr);
    assert!(!fr.stderr.contains("silent, closed"), "{}", fr.stderr);
    let mask = expected_mask(
        &img,
        &bitmask_core::Params {
            channel: bitmask_core::Channel::Luma,
            threshold: 128,
            invert: false,
        },
    );
    for q in 0..3 {
        assert_eq!(
            read(&out.join(format!("frame-{q:06}.raw"))),
            mask,
            "frame {q}"
        );
    }
}

#[test]
fn a_udp_receiver_whose_output_is_slow_passes_frames_over_and_stays_current() {
    // Over UDP nothing slows the sender down: a receiver whose --exec
    // program takes 0.2 s a frame fell behind without bound (its socket's
    // buffer holds megabytes: many seconds of frames), counting nothing.
    // Frames whose datagrams waited in the socket over 200 ms (the
    // kernel's arrival time) are decoded, not written, counted as behind.
    let tmp = TempDir::new("streaming-udp-behind");
    let consumer = tmp.join("slow.py");
    std::fs::write(
        &consumer,
        "import sys, time\nwhile sys.stdin.buffer.read(38400):\n    time.sleep(0.2)\n",
    )
    .unwrap();
    let json = tmp.join("stats.json");
    let mut recv = start_receiver(&[
        "--exec",
        &format!("exec python3 {}", consumer.display()),
        "--stats-json",
        json.to_str().unwrap(),
    ]);
    // a 30 fps camera, 4 s: 640x480 gray8 frames (38,400 B masks)
    let n = 120;
    let camera = paced_camera(640, 480, n as u32, 30);
    let s = run(Command::new(bin("bitmask-send"))
        .args(["--to", &recv.addr, "--name", "cam", "--transport", "udp"])
        .args(["--input-format", "gray8", "--size", "640x480"])
        .args(["--input-command", &camera]));
    assert!(s.status.success(), "sender: {}", s.stderr);
    // (a live camera: a sender slowed by a loaded machine may drop a few
    // from its queue; numbered at capture, they are gaps, `lost`, there)
    let sent = summary_count(&s.stderr, "sent");
    assert_eq!(
        sent + summary_count(&s.stderr, "dropped"),
        n,
        "{}",
        s.stderr
    );
    assert!(sent >= n * 3 / 4, "{}", s.stderr);
    // every frame captured accounted for once the receiver has read the socket
    let counted = |j: &str| {
        ["received", "behind", "lost", "incomplete"]
            .iter()
            .map(|k| stat(j, "cam", k))
            .sum::<f64>()
    };
    let t = Instant::now();
    while std::fs::read_to_string(&json).map_or(true, |j| counted(&j) < n as f64)
        && t.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    let fr = recv.proc.terminate(LIMIT);
    let j = std::fs::read_to_string(&json).unwrap();
    assert_eq!(counted(&j), n as f64, "{j}\n{}", fr.stderr);
    assert!(stat(&j, "cam", "behind") > 0.0, "{j}\n{}", fr.stderr);
    // (written at the consumer's pace, about 5 a second: a misread arrival
    // time would pass nearly all over)
    assert!(stat(&j, "cam", "received") >= 10.0, "{j}\n{}", fr.stderr);
    assert_eq!(stat(&j, "cam", "corrupt"), 0.0, "{j}\n{}", fr.stderr);
    // (without: about 3 s after 4 s of frames)
    let p99 = stat(&j, "cam", "total_latency_p99_ms");
    assert!(p99 < 1500.0, "latency p99 {p99} ms\n{j}\n{}", fr.stderr);
    assert!(fr.stderr.contains("passed over"), "{}", fr.stderr);
}

#[test]
fn a_udp_stream_its_sender_ends_closes_at_once() {
    // The sender ends its stream with an end datagram: the receiver closes
    // it then, not after --timeout (30 s here) of silence.
    let tmp = TempDir::new("streaming-udp-end");
    let input = tmp.join("in");
    inputs(&input);
    let json = tmp.join("stats.json");
    let mut recv = start_receiver(&[
        "--out",
        tmp.join("out").to_str().unwrap(),
        "--stats-json",
        json.to_str().unwrap(),
        "--timeout",
        "30",
    ]);
    let fs = Proc::spawn(&mut sender(
        &recv.addr,
        "brief",
        &input,
        &["--count", "3", "--transport", "udp", "--rate", "50"],
    ))
    .wait(LIMIT);
    assert!(fs.status.success(), "sender: {}", fs.stderr);
    let connected = |j: &str| -> Option<bool> {
        let v: serde_json::Value = serde_json::from_str(j).ok()?;
        v["senders"]
            .as_array()?
            .iter()
            .find(|s| s["name"] == "brief")?["connected"]
            .as_bool()
    };
    let t = Instant::now();
    let mut last = String::new();
    while t.elapsed() < Duration::from_secs(10) {
        last = std::fs::read_to_string(&json).unwrap_or_default();
        if connected(&last) == Some(false) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let fr = recv.proc.terminate(LIMIT);
    assert_eq!(connected(&last), Some(false), "{last}\n{}", fr.stderr);
    assert_eq!(stat(&last, "brief", "received"), 3.0, "{last}");
    assert_eq!(stat(&last, "brief", "lost"), 0.0, "{last}");
    assert!(
        fr.stderr
            .contains("ended by its sender (its frames: below 3)"),
        "{}",
        fr.stderr
    );
}

#[test]
fn sender_waits_for_a_missing_receiver_then_streams() {
    let tmp = TempDir::new("streaming-wait");
    let expected = inputs(&tmp.join("in"));
    let addr = closed_port();
    let s = Proc::spawn(&mut sender(
        &addr,
        "patient",
        &tmp.join("in"),
        &["--fps", "20", "--count", "200"],
    ));
    s.wait_for_stderr("cannot reach receiver", Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(1500));
    let out = tmp.join("out");
    let mut recv = five_frames_at(&addr, &out);
    assert_eq!(recv.addr, addr);
    let fr = recv.proc.wait(LIMIT);
    assert!(fr.status.success(), "receiver: {}", fr.stderr);
    let seqs = check_frames(&out, &expected);
    assert_eq!(seqs.len(), 5, "{seqs:?}");
    assert!(
        seqs[0] > 0,
        "frames captured while nobody listened are dropped, not queued: {seqs:?}"
    );
    s.wait_for_stderr("state: connected to", Duration::from_secs(5));
}

#[test]
fn a_udp_sender_sends_key_frames_while_its_receiver_refuses_datagrams() {
    // The receiver restarts: the sender's datagrams are refused meanwhile,
    // and the restarted one drops frames until the stream's hello (each
    // second). Deltas after it were undecodable until the next scheduled
    // key frame (here 200 frames: 10 s); the frames after a refusal are
    // key frames, so the first frame the new receiver keeps decodes.
    let tmp = TempDir::new("streaming-udp-keys");
    // a disc moving 2 px a frame: deltas are far smaller than key frames
    let dir = tmp.join("in");
    std::fs::create_dir_all(&dir).unwrap();
    for k in 0..20i64 {
        image::GrayImage::from_fn(320, 240, |x, y| {
            let (dx, dy) = (x as i64 - 100 - 2 * k, y as i64 - 120);
            image::Luma([if dx * dx + dy * dy < 60 * 60 { 255 } else { 0 }])
        })
        .save(dir.join(format!("f{k:02}.png")))
        .unwrap();
    }
    let addr = closed_port();
    let s = Proc::spawn(&mut sender(
        &addr,
        "keys",
        &dir,
        &[
            "--transport",
            "udp",
            "--fps",
            "20",
            "--codec",
            "bilevel",
            "--keyframe-interval",
            "200",
        ],
    ));
    // refused from the start: no receiver yet
    s.wait_for_stderr("refuses datagrams", Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(300));
    let out = tmp.join("out");
    let mut recv = five_frames_at(&addr, &out);
    let fr = recv.proc.wait(Duration::from_secs(8));
    assert!(fr.status.success(), "receiver: {}", fr.stderr);
    assert!(
        fr.stderr.contains(" 0 corrupt"),
        "every frame after the hello decodes: {}",
        fr.stderr
    );
    assert_eq!(list(&out).len(), 5, "{}", fr.stderr);
}

/// A receiver that comes up late at `addr`, writing 5 frames to `out`.
fn five_frames_at(addr: &str, out: &Path) -> Listening {
    start_listening(Command::new(bin("bitmask-recv")).args([
        "--listen",
        addr,
        "--out",
        out.to_str().unwrap(),
        "--count",
        "5",
    ]))
}

#[test]
fn an_endless_loop_of_images_waits_for_its_receiver() {
    // `--loop` without `--count` runs until interrupted: image files are a
    // batch, but one that never ends must not give up on a receiver away
    // for more than 10 s (a batch does: it exited 1 in a soak test).
    let tmp = TempDir::new("streaming-endless");
    let expected = inputs(&tmp.join("in"));
    let addr = closed_port();
    let mut s = Proc::spawn(&mut sender(&addr, "looped", &tmp.join("in"), &[]));
    let line = s.wait_for_stderr("cannot reach receiver", Duration::from_secs(20));
    assert!(!line.contains("gives up"), "{line}");
    std::thread::sleep(Duration::from_secs(11));
    let out = tmp.join("out");
    let mut recv = five_frames_at(&addr, &out);
    let fr = recv.proc.wait(LIMIT);
    assert!(
        fr.status.success(),
        "receiver: {}\nsender: {}",
        fr.stderr,
        s.stderr()
    );
    assert_eq!(check_frames(&out, &expected), (0..5).collect::<Vec<u64>>());
    unsafe_free_sigterm(s.id());
    let fs = s.wait(LIMIT);
    assert!(fs.status.success(), "{}\n{}", fs.status, fs.stderr);
}

#[test]
fn sender_resumes_after_the_receiver_restarts() {
    let tmp = TempDir::new("streaming-restart");
    let expected = inputs(&tmp.join("in"));
    let addr = closed_port();
    let (out1, out2) = (tmp.join("out1"), tmp.join("out2"));
    let recv_args = |out: &Path| {
        let mut c = Command::new(bin("bitmask-recv"));
        c.args(["--listen", &addr, "--out", out.to_str().unwrap()]);
        c
    };
    let r1 = start_listening(&mut recv_args(&out1));
    let s = Proc::spawn(&mut sender(
        &addr,
        "cam",
        &tmp.join("in"),
        &["--fps", "40", "--count", "400"],
    ));
    let t = Instant::now();
    while list(&out1).len() < 10 {
        assert!(t.elapsed() < LIMIT, "no frames: {}", s.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(r1); // killed (SIGKILL) and reaped
    std::thread::sleep(Duration::from_millis(1000));
    let mut c = recv_args(&out2);
    c.args(["--count", "10"]);
    let mut r2 = start_listening(&mut c);
    let f2 = r2.proc.wait(LIMIT);
    assert!(f2.status.success(), "receiver 2: {}", f2.stderr);
    let a = check_frames(&out1, &expected);
    let b = check_frames(&out2, &expected);
    assert_eq!(b.len(), 10);
    assert!(
        a.last() < b.first(),
        "numbering goes on across the restart: {a:?} {b:?}"
    );
    // Noticed before a frame is written (the receiver's end of stream), or
    // by a write that fails.
    let log = s.wait_for_stderr("reconnecting", Duration::from_secs(5));
    assert!(
        log.contains("state: receiver") || log.contains("state: connection to"),
        "{log}"
    );
    s.wait_for_stderr(
        "without a receiver; resuming at frame",
        Duration::from_secs(5),
    );
}

fn frame_bytes(seq: u64, payload: &[u8]) -> Vec<u8> {
    let h = Header::new(W, H, seq, CODEC_RAW, payload.len() as u32);
    let mut v = Vec::new();
    encode_frame(&h, payload, &mut v);
    v
}

/// Reads until the receiver closes the connection; true if within `limit`.
fn closed_by_peer(s: &mut TcpStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let t = Instant::now();
    let mut buf = [0u8; 64];
    while t.elapsed() < limit {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return true,
        }
    }
    false
}

#[test]
fn hostile_peers_cost_one_connection_each_and_spare_the_good_stream() {
    let tmp = TempDir::new("streaming-hostile");
    let expected = inputs(&tmp.join("in"));
    let out = tmp.join("out");
    let json = tmp.join("stats.json");
    let mut recv = start_receiver(&[
        "--out",
        out.to_str().unwrap(),
        "--per-sender",
        "--timeout",
        "1.5",
        "--max-size",
        "640x480",
        "--stats-json",
        json.to_str().unwrap(),
    ]);
    let addr = recv.addr.clone();
    let mut good = Proc::spawn(&mut sender(
        &addr,
        "good",
        &tmp.join("in"),
        &["--count", "60", "--fps", "30", "--no-drop"],
    ));
    // garbage
    let mut g = TcpStream::connect(&addr).unwrap();
    let _ = g.write_all(&noise(4096, 9));
    // (said before the half-frame peer's silence, which shares its
    // one-line-a-second throttle, can come first)
    recv.proc.wait_for_stderr("bad magic", LIMIT);
    // a header claiming a 4 GB frame
    let mut big = TcpStream::connect(&addr).unwrap();
    let mut h = frame_bytes(0, &vec![0u8; (W / 8 * H) as usize])[..40].to_vec();
    h[8..12].copy_from_slice(&100_000u32.to_le_bytes());
    h[12..16].copy_from_slice(&100_000u32.to_le_bytes());
    h[32..36].copy_from_slice(&u32::MAX.to_le_bytes());
    big.write_all(&h).unwrap();
    // half a frame, then silence
    let mut half = TcpStream::connect(&addr).unwrap();
    let f = frame_bytes(0, &vec![0xaau8; (W / 8 * H) as usize]);
    half.write_all(&f[..f.len() / 2]).unwrap();
    // a damaged frame then a good one, under its own name
    let mut crc = TcpStream::connect(&addr).unwrap();
    crc.write_all(&Hello::new("crc").unwrap().encode()).unwrap();
    let mut bad = frame_bytes(0, &expected[0]);
    bad[100] ^= 1;
    crc.write_all(&bad).unwrap();
    crc.write_all(&frame_bytes(1, &expected[1])).unwrap();
    // slow-loris: a byte every 200 ms
    let mut slow = TcpStream::connect(&addr).unwrap();
    slow.set_write_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let trickle = std::thread::spawn(move || {
        let t = Instant::now();
        for b in f.iter().cycle() {
            if slow.write_all(&[*b]).is_err() {
                return Some(t.elapsed());
            }
            let mut one = [0u8; 1];
            slow.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            if let Ok(0) = slow.read(&mut one) {
                return Some(t.elapsed());
            }
            if t.elapsed() > Duration::from_secs(30) {
                return None;
            }
        }
        None
    });
    assert!(
        closed_by_peer(&mut g, Duration::from_secs(5)),
        "garbage peer kept"
    );
    assert!(
        closed_by_peer(&mut big, Duration::from_secs(5)),
        "4 GB header peer kept"
    );
    assert!(
        closed_by_peer(&mut half, Duration::from_secs(5)),
        "half-frame peer kept"
    );
    let slow_closed = trickle.join().unwrap();
    assert!(
        slow_closed.is_some_and(|t| t < Duration::from_secs(8)),
        "slow-loris peer kept: {slow_closed:?}"
    );
    drop(crc);
    let fg = good.wait(LIMIT);
    assert!(fg.status.success(), "good sender: {}", fg.stderr);
    // (the stats file is refreshed every second: until it has them all)
    let t = Instant::now();
    let j = loop {
        let j = std::fs::read_to_string(&json).unwrap_or_default();
        let done = serde_json::from_str::<serde_json::Value>(&j).is_ok()
            && j.contains("\"good\"")
            && stat(&j, "good", "received") >= 60.0;
        if done || t.elapsed() > Duration::from_secs(20) {
            break j;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let seqs = check_frames(&out.join("good"), &expected);
    assert_eq!(seqs, (0..60).collect::<Vec<u64>>());
    assert_eq!(stat(&j, "good", "lost"), 0.0, "{j}");
    assert_eq!(stat(&j, "good", "corrupt"), 0.0, "{j}");
    assert_eq!(stat(&j, "crc", "corrupt"), 1.0, "{j}");
    assert_eq!(stat(&j, "crc", "received"), 1.0, "{j}");
    assert_eq!(check_frames(&out.join("crc"), &expected), vec![1]);
    // (waited for: the slow-loris peer is closed last, just after its line,
    // which the test's reader of the receiver's stderr may not have yet)
    recv.proc.wait_for_stderr("slow peer", LIMIT);
    // still serving
    let mut again = Proc::spawn(&mut sender(
        &addr,
        "late",
        &tmp.join("in"),
        &["--count", "3", "--no-drop"],
    ));
    assert!(again.wait(LIMIT).status.success());
    // (its frames may still be in the receiver's socket when the sender ends)
    recv.proc
        .wait_for_stderr("sender \"late\" closed the stream", LIMIT);
    unsafe_free_sigterm(recv.proc.id());
    let fr = recv.proc.wait(LIMIT);
    assert!(
        fr.status.success(),
        "SIGTERM ends the receiver cleanly: {}",
        fr.stderr
    );
    assert!(
        fr.stderr.contains("bitmask-recv: late: 3 frames"),
        "{}",
        fr.stderr
    );
}

/// Sends `signal` (given a pid) to sender `s`, then to `recv`: each must
/// end with status 0, the sender with its summary. Returns the receiver's
/// run.
fn stop_both_cleanly(s: &mut Proc, recv: &mut Proc, signal: impl Fn(u32)) -> Finished {
    signal(s.id());
    let fs = s.wait(LIMIT);
    assert!(fs.status.success(), "sender: {}\n{}", fs.status, fs.stderr);
    assert!(
        fs.stderr.contains("bitmask-send: captured"),
        "{}",
        fs.stderr
    );
    signal(recv.id());
    let fr = recv.wait(LIMIT);
    assert!(
        fr.status.success(),
        "receiver: {}\n{}",
        fr.status,
        fr.stderr
    );
    fr
}

#[test]
fn a_stop_signalled_twice_at_once_is_one_stop() {
    // timeout(1) sends SIGTERM to the process and then to its process
    // group: two signals microseconds apart. Both programs took the second
    // for "exit now" (the receiver exited 1 without its summary, the
    // sender died by the signal, status 143, without its summary).
    let tmp = TempDir::new("stop-twice-at-once");
    inputs(&tmp.join("in"));
    let mut recv = start_receiver(&["--out", tmp.join("out").to_str().unwrap()]);
    let mut s = Proc::spawn(&mut sender(
        &recv.addr,
        "cam",
        &tmp.join("in"),
        &["--fps", "20"],
    ));
    recv.proc.wait_for_stderr("stream from \"cam\"", LIMIT);
    std::thread::sleep(Duration::from_millis(500));
    let twice = |pid: u32| {
        let st = Command::new("sh")
            .args(["-c", "kill -TERM $1; kill -TERM $1", "sh", &pid.to_string()])
            .status()
            .expect("sh");
        assert!(st.success());
    };
    let fr = stop_both_cleanly(&mut s, &mut recv.proc, twice);
    assert!(fr.stderr.contains("bitmask-recv: cam: "), "{}", fr.stderr);
    assert!(!fr.stderr.contains("exiting now"), "{}", fr.stderr);
}

#[test]
fn a_second_stop_signal_ends_the_sender_at_once() {
    // Its input blocked (a FIFO nobody opens): the first signal starts
    // the stop, which would end with the summary and status 0 after 3 s; a
    // second one, past the half second that counts as the same stop, ends
    // it as the signal's default action does.
    let tmp = TempDir::new("stop-second");
    let recv = start_receiver(&["--out", tmp.join("out").to_str().unwrap()]);
    let fifo = tmp.join("camera");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    // (a test thread held up past the 3 s stop by a busy machine tries
    // again, three times at most, rather than take the finished stop for
    // a first signal that ended it)
    for attempt in 1..=3 {
        let mut c = Command::new(bin("bitmask-send"));
        c.args([
            "--to",
            &recv.addr,
            "--input-format",
            "gray8",
            "--size",
            "8x8",
        ])
        .arg(&fifo);
        let mut s = Proc::spawn(&mut c);
        // (its handler in place: else the default action would end it on
        // the first signal, which looks the same)
        wait_handles_sigterm(s.id());
        std::thread::sleep(Duration::from_millis(500)); // blocked opening the FIFO
                                                        // (the clock read before the signal: a stall after it makes the
                                                        // test's time longer, never shorter, than the sender's)
        let first = Instant::now();
        unsafe_free_sigterm(s.id());
        std::thread::sleep(Duration::from_millis(800));
        let running = s.running();
        let late = |at: Duration| at > Duration::from_millis(2500) && attempt < 3;
        if !running && late(first.elapsed()) {
            eprintln!(
                "attempt {attempt}: the test thread came back {:?} after the first signal, \
                 past the stop's 3 s: again",
                first.elapsed()
            );
            continue;
        }
        assert!(running, "the first signal ended it: {}", s.stderr());
        unsafe_free_sigterm(s.id());
        let second = first.elapsed();
        let fs = s.wait(LIMIT);
        use std::os::unix::process::ExitStatusExt;
        if fs.status.success() && late(second) {
            eprintln!(
                "attempt {attempt}: the second signal came {second:?} after the first: again"
            );
            continue;
        }
        assert_eq!(fs.status.signal(), Some(15), "{}\n{}", fs.status, fs.stderr);
        return;
    }
}

#[test]
fn a_second_stop_signal_ends_a_sender_whose_stderr_nobody_reads() {
    // Its stderr a full pipe (a stalled log collector): every thread that
    // logs blocks, the stop's own last words too. The second signal must
    // still end it (it only counted the signal, once the handler no longer
    // reset itself).
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let tmp = TempDir::new("stop-blocked-stderr");
    inputs(&tmp.join("in"));
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two new descriptors into `fds`
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: both are new and owned by nothing else
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let chunk = [b'x'; 4096];
    // SAFETY: writes from a live buffer to an owned descriptor
    while unsafe { libc::write(w.as_raw_fd(), chunk.as_ptr().cast(), chunk.len()) } > 0 {}
    // SAFETY: fcntl on an owned descriptor: blocking again, and full
    unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETFL, 0) };
    let mut child = Command::new(bin("bitmask-send"))
        .args(["--to", &closed_port(), "--loop", "--fps", "5"])
        .arg(tmp.join("in"))
        .stdin(std::process::Stdio::null())
        .stderr(w)
        .spawn()
        .unwrap();
    wait_handles_sigterm(child.id());
    std::thread::sleep(Duration::from_millis(500));
    unsafe_free_sigterm(child.id());
    // past the 3 s grace, in the 1 s its last words are given (blocked on
    // the full stderr): as soon as their thread is there (a fixed sleep
    // missed that second on a busy machine)
    let t = Instant::now();
    while !thread_names(child.id()).iter().any(|n| n == "last words") {
        assert!(
            child.try_wait().unwrap().is_none(),
            "it ended before its last words: {:?}",
            child.try_wait()
        );
        assert!(t.elapsed() < LIMIT, "no last words");
        std::thread::sleep(Duration::from_millis(5));
    }
    // (kill(2) itself, not kill(1): no fork in that second)
    // SAFETY: a signal to our own child, still unreaped (try_wait: None)
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    let t = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if t.elapsed() > Duration::from_secs(10) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the sender did not end on its second signal");
    };
    drop(r);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(15), "{status}");
}

/// The names of process `pid`'s threads (`/proc/PID/task/*/comm`).
fn thread_names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("comm")).ok())
        .map(|n| n.trim_end().to_string())
        .collect()
}

/// Waits (up to 20 s) until process `pid` catches SIGTERM: its handler is
/// in place (`SigCgt` in /proc/PID/status, bit 14).
fn wait_handles_sigterm(pid: u32) {
    let t = Instant::now();
    loop {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let caught = status
            .lines()
            .find_map(|l| l.strip_prefix("SigCgt:"))
            .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
            .unwrap_or(0);
        if caught & (1 << (15 - 1)) != 0 {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "process {pid} never caught SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `kill -TERM pid` without unsafe code in the test.
fn unsafe_free_sigterm(pid: u32) {
    let st = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill(1)");
    assert!(st.success());
}

#[test]
fn a_hangup_stops_both_sides_cleanly_unless_ignored() {
    // The ssh session a sender or receiver was started from goes away: a
    // clean stop with the summary (the default action killed both without
    // one, and the receiver's --exec program in its own group kept
    // running). Under nohup a hangup is ignored, as it asks.
    use std::os::unix::process::CommandExt;
    let tmp = TempDir::new("hangup");
    inputs(&tmp.join("in"));
    let hup = |pid: u32| {
        let st = Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    };
    // (SIGHUP's disposition as given, default or ignored: whatever this
    // test runs under, e.g. nohup)
    let with_hup = |cmd: &mut Command, ignored: bool| {
        // SAFETY: signal(2) in the child before exec: async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                libc::signal(
                    libc::SIGHUP,
                    if ignored {
                        libc::SIG_IGN
                    } else {
                        libc::SIG_DFL
                    },
                );
                Ok(())
            });
        }
    };
    let out = tmp.join("out");
    let mut cmd = Command::new(bin("bitmask-recv"));
    cmd.args(["--listen", "127.0.0.1:0", "--out"]).arg(&out);
    with_hup(&mut cmd, false);
    let mut recv = start_listening(&mut cmd);
    let mut cmd = sender(&recv.addr, "cam", &tmp.join("in"), &["--fps", "20"]);
    with_hup(&mut cmd, false);
    let mut s = Proc::spawn(&mut cmd);
    recv.proc.wait_for_stderr("stream from \"cam\"", LIMIT);
    let fr = stop_both_cleanly(&mut s, &mut recv.proc, hup);
    assert!(fr.stderr.contains("stopping: signal 1"), "{}", fr.stderr);
    assert!(fr.stderr.contains("bitmask-recv: total:"), "{}", fr.stderr);
    // under nohup (SIGHUP ignored): still running after a hangup
    let mut cmd = Command::new(bin("bitmask-recv"));
    cmd.args(["--listen", "127.0.0.1:0", "--out"]).arg(&out);
    with_hup(&mut cmd, true);
    let mut recv = start_listening(&mut cmd);
    hup(recv.proc.id());
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        recv.proc.running(),
        "a receiver under nohup ended at a hangup"
    );
    let fr = recv.proc.terminate(LIMIT);
    assert!(fr.status.success(), "{}", fr.stderr);
}

#[test]
fn sigterm_with_an_exec_consumer_ends_cleanly() {
    // The --exec child's watcher thread must not take SIGTERM itself (it did:
    // the receiver died with status 143, no summary, the child orphaned).
    let tmp = TempDir::new("exec-sigterm");
    let expected = inputs(&tmp.join("in"));
    let out = tmp.join("consumer.raw");
    let consumer = format!("cat > {}", sh_quote(&out));
    let mut recv = start_receiver(&["--exec", &consumer]);
    let mut s = Proc::spawn(&mut sender(
        &recv.addr,
        "cam",
        &tmp.join("in"),
        &["--count", "6", "--no-drop"],
    ));
    assert!(s.wait(LIMIT).status.success());
    recv.proc.wait_for_stderr("cam: 6 frames", LIMIT);
    unsafe_free_sigterm(recv.proc.id());
    let fr = recv.proc.wait(LIMIT);
    assert!(fr.status.success(), "SIGTERM with --exec: {}", fr.stderr);
    assert!(fr.stderr.contains("stopping: signal 15"), "{}", fr.stderr);
    assert!(fr.stderr.contains("exited cleanly"), "{}", fr.stderr);
    let want: Vec<u8> = (0..6).flat_map(|i| expected[i % 3].clone()).collect();
    assert_eq!(read(&out), want, "the consumer got every mask");
}

#[test]
fn an_exec_consumer_cut_short_at_count_is_an_error_not_a_clean_stop() {
    // At --count the receiver closes the program's stdin and gives it 10 s
    // to finish. One that needed more (12 s) was ended by the stop's own
    // timer (started when the stop began) and taken for one "stopped with
    // the receiver": exit 0, its work cut short without a word. (This one
    // needs 60 s: the receiver ends it at 10 s however late it runs.)
    let tmp = TempDir::new("exec-count-slow");
    inputs(&tmp.join("in"));
    let done = tmp.join("DONE");
    let consumer = format!("cat > /dev/null; sleep 60; touch {}", sh_quote(&done));
    let mut recv = start_receiver(&["--exec", &consumer, "--count", "1"]);
    let mut s = Proc::spawn(&mut sender(
        &recv.addr,
        "cam",
        &tmp.join("in"),
        &["--count", "1"],
    ));
    assert!(s.wait(LIMIT).status.success());
    let fr = recv.proc.wait(LIMIT);
    assert!(!fr.status.success(), "{}", fr.stderr);
    assert!(
        fr.stderr
            .contains("had not exited 10 s after its stdin was closed"),
        "{}",
        fr.stderr
    );
    assert!(!done.exists());
}

#[test]
fn ctrl_c_or_a_stopped_service_with_an_exec_consumer_ends_cleanly() {
    use std::os::unix::process::CommandExt;
    let tmp = TempDir::new("exec-group-signals");
    inputs(&tmp.join("in"));
    // Ctrl-C at a terminal: SIGINT to the receiver's whole process group
    // (the child has a group of its own, and ends at the end of its input).
    // A stopped systemd service (KillMode=control-group): SIGTERM to the
    // receiver and to the child at once.
    for case in ["group", "both"] {
        let out = tmp.join(&format!("consumer-{case}.raw"));
        let consumer = format!("exec cat > {}", sh_quote(&out));
        let mut cmd = Command::new(bin("bitmask-recv"));
        cmd.args(["--listen", "127.0.0.1:0", "--exec", &consumer])
            .process_group(0);
        let mut recv = start_listening(&mut cmd);
        let child = recv.proc.wait_for_stderr("--exec: started", LIMIT);
        let child_pid = child
            .rsplit("(pid ")
            .next()
            .and_then(|s| s.trim_end_matches(')').parse::<u32>().ok())
            .unwrap_or_else(|| panic!("no pid in {child:?}"));
        // The child leads a process group of its own (field 5 of its stat).
        let stat = std::fs::read_to_string(format!("/proc/{child_pid}/stat")).unwrap();
        let pgrp = stat.rsplit(')').next().unwrap().split_whitespace().nth(2);
        assert_eq!(pgrp, Some(child_pid.to_string().as_str()), "{stat}");
        let mut s = Proc::spawn(&mut sender(
            &recv.addr,
            "cam",
            &tmp.join("in"),
            &["--count", "3", "--no-drop"],
        ));
        assert!(s.wait(LIMIT).status.success());
        recv.proc.wait_for_stderr("cam: 3 frames", LIMIT);
        let pid = recv.proc.id().to_string();
        let kill = |args: &[String]| Command::new("kill").args(args).output().unwrap();
        if case == "group" {
            let k = kill(&["-INT".into(), "--".into(), format!("-{pid}")]);
            assert!(k.status.success(), "{}", String::from_utf8_lossy(&k.stderr));
        } else {
            // The receiver, then at once the child (which may be gone
            // already: the receiver's stop can end and reap it first).
            let k = kill(&["-TERM".into(), pid]);
            assert!(k.status.success(), "{}", String::from_utf8_lossy(&k.stderr));
            let k = kill(&["-TERM".into(), child_pid.to_string()]);
            let err = String::from_utf8_lossy(&k.stderr);
            assert!(
                k.status.success() || err.contains("No such process"),
                "{err}"
            );
        }
        let fr = recv.proc.wait(LIMIT);
        assert!(fr.status.success(), "{case}: {}\n{}", fr.status, fr.stderr);
        assert!(
            fr.stderr.contains("bitmask-recv: cam: 3 frames"),
            "{case}: {}",
            fr.stderr
        );
    }
}

/// A receiver whose `--exec` child ignores SIGTERM and never reads: the
/// pipe fills and a connection thread blocks in its write, holding the
/// output, so a stop cannot finish. Returns it, stalled.
fn receiver_with_a_stuck_child(tag: &str) -> (Listening, Proc, TempDir) {
    stalled_exec_receiver(tag, "trap '' TERM INT; exec sleep 600")
}

/// A receiver (in a process group of its own) whose `--exec` CMD never
/// reads, fed by a `--no-drop` sender until the pipe is full and the stream
/// stalls. Returns both, and their directory (its `stats.json` is the
/// receiver's `--stats-json`).
fn stalled_exec_receiver(tag: &str, cmd: &str) -> (Listening, Proc, TempDir) {
    use std::os::unix::process::CommandExt;
    let tmp = TempDir::new(tag);
    inputs(&tmp.join("in"));
    let recv = start_listening(
        Command::new(bin("bitmask-recv"))
            .args(["--listen", "127.0.0.1:0", "--exec", cmd, "--stats-json"])
            .arg(tmp.join("stats.json"))
            .process_group(0),
    );
    let s = Proc::spawn(&mut sender(
        &recv.addr,
        "cam",
        &tmp.join("in"),
        &["--count", "100000", "--no-drop"],
    ));
    recv.proc
        .wait_for_stderr(" 0.0 fps", Duration::from_secs(30));
    (recv, s, tmp)
}

/// Whether process `pid` is gone (or a zombie) within 5 s (a signal is
/// delivered asynchronously).
fn gone(pid: &str) -> bool {
    let t = Instant::now();
    loop {
        let dead = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map_or(true, |st| st.split_whitespace().nth(2) == Some("Z"));
        if dead || t.elapsed() > Duration::from_secs(5) {
            return dead;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_second_signal_ends_a_stop_that_cannot_finish() {
    let (mut recv, _s, tmp) = receiver_with_a_stuck_child("stop-twice");
    let st = Command::new("kill")
        .args(["-TERM", &recv.proc.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    recv.proc
        .wait_for_stderr("stopping: signal", Duration::from_secs(5));
    // (a signal within 0.5 s of the first is the same stop, counted from
    // when the receiver's signal thread took the first, normally before
    // the line above: 1.5 s leaves room for that thread running late)
    std::thread::sleep(Duration::from_millis(1500));
    let t = Instant::now();
    let signalled = std::time::SystemTime::now();
    let st = Command::new("kill")
        .args(["-INT", &recv.proc.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let fr = recv.proc.wait(LIMIT);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(!fr.status.success(), "{}", fr.stderr);
    assert!(
        fr.stderr.contains("while stopping: exiting now"),
        "{}",
        fr.stderr
    );
    assert_child_gone(&fr.stderr);
    // the summary and the stats file, even so (neither was written)
    assert!(
        fr.stderr.contains("bitmask-recv: total:"),
        "the summary: {}",
        fr.stderr
    );
    let json = tmp.join("stats.json");
    // (the last write before was at the first signal, 1.5 s before the
    // second, or earlier; file times lag the clock by a tick)
    let written = std::fs::metadata(&json).unwrap().modified().unwrap();
    assert!(
        written + Duration::from_millis(300) >= signalled,
        "{json:?} not written at the exit"
    );
}

#[test]
fn a_stop_that_cannot_finish_ends_by_itself() {
    let (mut recv, _s, _tmp) = receiver_with_a_stuck_child("stop-stuck");
    let t = Instant::now();
    let fr = recv.proc.terminate(LIMIT);
    let took = t.elapsed();
    assert!(
        took >= Duration::from_secs(14) && took < Duration::from_secs(25),
        "{took:?}: {}",
        fr.stderr
    );
    assert!(!fr.status.success(), "{}", fr.stderr);
    assert!(
        fr.stderr.contains("still stopping after 3 s"),
        "{}",
        fr.stderr
    );
    assert!(
        fr.stderr.contains("exiting now, without them"),
        "{}",
        fr.stderr
    );
    assert_child_gone(&fr.stderr);
}

/// The `--exec` child the receiver sent SIGKILL (its log says which) is gone.
fn assert_child_gone(stderr: &str) {
    let pid = child_pid(stderr);
    assert!(gone(&pid), "--exec child {pid} left running:\n{stderr}");
}

/// The `--exec` child's pid, from the receiver's SIGKILL line.
fn child_pid(stderr: &str) -> String {
    let line = stderr
        .lines()
        .find(|l| l.contains("sending its process group SIGKILL"))
        .unwrap_or_else(|| panic!("no SIGKILL line:\n{stderr}"));
    line.split("(pid ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .unwrap()
        .to_string()
}

#[test]
fn a_stop_ends_an_exec_child_that_no_longer_reads() {
    // The child never reads: the pipe fills and a connection thread blocks
    // in its write, holding the output. Ctrl-C must still end the receiver
    // (it hung: the child, in its own group, got no signal).
    let (mut recv, _s, _tmp) = stalled_exec_receiver("exec-stuck", "exec sleep 600");
    let st = Command::new("kill")
        .args(["-INT", "--", &format!("-{}", recv.proc.id())])
        .status()
        .unwrap();
    assert!(st.success());
    let fr = recv.proc.wait(LIMIT);
    assert!(
        fr.stderr.contains("sending its process group SIGTERM"),
        "{}",
        fr.stderr
    );
    assert!(
        fr.stderr.contains("bitmask-recv: total:"),
        "the summary: {}",
        fr.stderr
    );
}

#[test]
fn a_receiver_that_closes_at_once_is_not_redialled_in_a_loop() {
    // It accepts and closes every connection (as one does whose slots are
    // all taken): the sender backs off as after a failed connect, although
    // each connect succeeds and its writes land in the kernel.
    let tmp = TempDir::new("redial");
    inputs(&tmp.join("in"));
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let accepts = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepts.clone();
    std::thread::spawn(move || {
        for c in l.incoming() {
            drop(c);
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let s = Proc::spawn(&mut sender(
        &addr,
        "cam",
        &tmp.join("in"),
        &["--count", "1000", "--fps", "30", "--no-drop"],
    ));
    // (counted from its first connection: its start-up varies)
    let t = Instant::now();
    let first = loop {
        let n = accepts.load(std::sync::atomic::Ordering::SeqCst);
        if n > 0 {
            break n;
        }
        assert!(t.elapsed() < LIMIT, "the sender never connected");
        std::thread::sleep(Duration::from_millis(10));
    };
    std::thread::sleep(Duration::from_secs(3));
    let n = accepts.load(std::sync::atomic::Ordering::SeqCst) - first;
    drop(s);
    // 50 ms doubling up to --retry-max 0.5 s: about 7 more in 3 s (a
    // hundred and more without a backoff).
    assert!((1..=20).contains(&n), "{n} more connections in 3 s");
}

/// A receiver (`--out -` and `extra`, shell words) whose stdout reader
/// takes 10 bytes and goes away, fed by a live sender from `tmp`'s
/// images; its shell says `receiver exit N`. Returns it, finished.
fn closed_stdout_receiver(tmp: &TempDir, extra: &str) -> Finished {
    inputs(&tmp.join("in"));
    let script = format!(
        "{{ '{}' --listen 127.0.0.1:0 --out - {extra}; echo \"receiver exit $?\" >&2; }} \
         | head -c 10 >/dev/null",
        bin("bitmask-recv").display()
    );
    let mut recv = start_listening(Command::new("sh").args(["-c", &script]));
    let _s = Proc::spawn(&mut sender(
        &recv.addr,
        "cam",
        &tmp.join("in"),
        &["--fps", "50"],
    ));
    recv.proc.wait(LIMIT)
}

#[test]
fn a_closed_stdout_stops_the_receiver_with_an_error() {
    let tmp = TempDir::new("stdout-closed");
    let fr = closed_stdout_receiver(&tmp, "");
    assert!(fr.stderr.contains("receiver exit 1"), "{}", fr.stderr);
    assert!(
        fr.stderr.contains("stdout was closed"),
        "one clear line, not an error per frame forever: {}",
        fr.stderr
    );
}

#[test]
fn a_closed_stdout_still_ends_the_exec_program() {
    // --out - and --exec: the stdout reader goes away. The receiver stops
    // with an error, and ends its --exec program on the way out (it left
    // one that ignores SIGTERM running for good).
    let tmp = TempDir::new("stdout-closed-exec");
    let pid = tmp.join("pid");
    let consumer = format!(
        "echo $$ > {}; trap '' TERM; cat > /dev/null; exec sleep 600",
        sh_quote(&pid)
    );
    let fr = closed_stdout_receiver(&tmp, &format!("--exec {}", sh_quote(Path::new(&consumer))));
    assert!(fr.stderr.contains("receiver exit 1"), "{}", fr.stderr);
    let pid = std::fs::read_to_string(&pid).unwrap().trim().to_string();
    assert!(
        gone(&pid),
        "--exec program {pid} outlived the receiver: {}",
        fr.stderr
    );
}

#[test]
fn idle_connections_cannot_lock_senders_out() {
    let tmp = TempDir::new("idle-slots");
    let expected = inputs(&tmp.join("in"));
    let out = tmp.join("out");
    // Silent sockets would hold their slots for --timeout (120 s), longer
    // than the sender may take here (LIMIT).
    let recv = start_receiver(&[
        "--out",
        out.to_str().unwrap(),
        "--max-senders",
        "2",
        "--timeout",
        "120",
    ]);
    // Every slot taken by sockets that say nothing, and more waiting.
    let idle: Vec<TcpStream> = (0..6)
        .filter_map(|_| TcpStream::connect(&recv.addr).ok())
        .collect();
    assert!(!idle.is_empty());
    let mut s = Proc::spawn(&mut sender(
        &recv.addr,
        "cam",
        &tmp.join("in"),
        &["--count", "5", "--no-drop"],
    ));
    let f = s.wait(LIMIT);
    assert!(f.status.success(), "{}", f.stderr);
    recv.proc.wait_for_stderr("cam: 5 frames", LIMIT);
    assert_eq!(check_frames(&out, &expected), vec![0, 1, 2, 3, 4]);
    drop(idle);
    // (The log says so, at most once a second.)
    recv.proc.wait_for_stderr("--max-senders 2", LIMIT);
}

#[test]
fn a_slow_sender_keeps_its_connection() {
    // Frames further apart than --timeout (a time-lapse): none is lost, no
    // reconnect (the receiver used to drop the silent connection, and the
    // next frame went into it and was lost).
    let tmp = TempDir::new("slow-sender");
    let expected = inputs(&tmp.join("in"));
    let out = tmp.join("out");
    let recv = start_receiver(&["--out", out.to_str().unwrap(), "--timeout", "1"]);
    let mut s = Proc::spawn(&mut sender(
        &recv.addr,
        "slow",
        &tmp.join("in"),
        &["--fps", "0.5", "--count", "3"],
    ));
    let f = s.wait(LIMIT);
    assert!(f.status.success(), "{}", f.stderr);
    assert!(f.stderr.contains("failed 0, reconnects 0"), "{}", f.stderr);
    recv.proc.wait_for_stderr("slow: 3 frames (0 lost", LIMIT);
    assert_eq!(check_frames(&out, &expected), vec![0, 1, 2]);
}

#[test]
fn a_restarted_sender_overwrites_nothing() {
    let tmp = TempDir::new("restarted-sender");
    let expected = inputs(&tmp.join("in"));
    let out = tmp.join("out");
    let latest = tmp.join("latest.png");
    let recv = start_receiver(&[
        "--out",
        out.to_str().unwrap(),
        "--latest",
        latest.to_str().unwrap(),
    ]);
    for run in 0..2 {
        let mut s = Proc::spawn(&mut sender(
            &recv.addr,
            "cam",
            &tmp.join("in"),
            &["--count", "3", "--no-drop"],
        ));
        let f = s.wait(LIMIT);
        assert!(f.status.success(), "run {run}: {}", f.stderr);
    }
    recv.proc.wait_for_stderr("cam: 6 frames", LIMIT);
    let mut names = list(&out);
    names.sort();
    assert_eq!(
        names,
        [
            "frame-000000.1.raw",
            "frame-000000.raw",
            "frame-000001.1.raw",
            "frame-000001.raw",
            "frame-000002.1.raw",
            "frame-000002.raw"
        ]
    );
    for n in &names {
        let seq: usize = n[6..12].parse().unwrap();
        assert_eq!(read(&out.join(n)), expected[seq % 3], "{n}");
    }
    recv.proc.wait_for_stderr("no mask is overwritten", LIMIT);
    // --latest follows its extension: a PNG, although --format is raw.
    let png = image::open(&latest).expect("--latest latest.png is a PNG");
    assert_eq!((png.width(), png.height()), (W, H));
}

#[test]
fn a_sender_silent_between_frames_yields_its_slot_when_all_are_taken() {
    let tmp = TempDir::new("idle-yields");
    let expected = inputs(&tmp.join("in"));
    let out = tmp.join("out");
    let recv = start_receiver(&[
        "--out",
        out.to_str().unwrap(),
        "--per-sender",
        "--max-senders",
        "1",
        "--timeout",
        "1",
    ]);
    // "slow" sends a frame, then nothing for 10 s (time for "cam" to
    // start and take the slot on a loaded machine).
    let mut slow = Proc::spawn(&mut sender(
        &recv.addr,
        "slow",
        &tmp.join("in"),
        &["--fps", "0.1", "--count", "2", "--no-drop"],
    ));
    // (its first frame handled, not only its hello: silent from there)
    wait_for_file(&out.join("slow/frame-000000.raw"), "slow's first frame");
    std::thread::sleep(Duration::from_millis(1500));
    // The only slot is slow's, silent for over --timeout: "cam" gets it.
    let mut cam = Proc::spawn(&mut sender(
        &recv.addr,
        "cam",
        &tmp.join("in"),
        &["--count", "5", "--no-drop"],
    ));
    let f = cam.wait(LIMIT);
    assert!(f.status.success(), "{}", f.stderr);
    // ... and slow, back for its second frame, loses nothing.
    let f = slow.wait(LIMIT);
    assert!(f.status.success(), "{}", f.stderr);
    recv.proc.wait_for_stderr("slow: 2 frames", LIMIT);
    assert_eq!(
        check_frames(&out.join("cam"), &expected),
        vec![0, 1, 2, 3, 4]
    );
    assert_eq!(check_frames(&out.join("slow"), &expected), vec![0, 1]);
    recv.proc.wait_for_stderr("between frames", LIMIT);
}

#[test]
fn a_stopped_sender_sends_what_it_has_and_says_so() {
    // systemctl stop / deploy's Ctrl-C: SIGTERM ends the input like its end.
    let tmp = TempDir::new("sender-sigterm");
    let expected = inputs(&tmp.join("in"));
    let out = tmp.join("out");
    let recv = start_receiver(&["--out", out.to_str().unwrap()]);
    let mut s = Proc::spawn(&mut sender(
        &recv.addr,
        "cam",
        &tmp.join("in"),
        &["--fps", "20"],
    ));
    recv.proc.wait_for_stderr("cam: ", LIMIT);
    unsafe_free_sigterm(s.id());
    let f = s.wait(LIMIT);
    assert!(f.status.success(), "SIGTERM: {}\n{}", f.status, f.stderr);
    assert!(f.stderr.contains("stopping: signal 15"), "{}", f.stderr);
    let sent: u64 = f
        .stderr
        .rsplit("sent ")
        .next()
        .and_then(|r| r.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no summary: {}", f.stderr));
    assert!(sent > 0, "{}", f.stderr);
    // Every frame its final summary says it sent is written. (A live
    // source on a busy machine may drop one while the link lags, counted:
    // the latest frame wins. The numbers written are then the sent ones
    // among those captured.)
    let t = Instant::now();
    while check_frames(&out, &expected).len() < sent as usize && t.elapsed() < LIMIT {
        std::thread::sleep(Duration::from_millis(50));
    }
    let dropped = summary_count(&f.stderr, "dropped");
    let written = check_frames(&out, &expected);
    assert_eq!(written.len() as u64, sent, "{written:?}\n{}", f.stderr);
    assert!(
        written.iter().all(|&q| q < sent + dropped),
        "{written:?}\n{}",
        f.stderr
    );
}

#[test]
fn ctrl_c_exits_130_from_a_batch_cut_short_and_0_from_an_endless_loop() {
    // A script must tell a batch that Ctrl-C cut short (it exited 0, as if
    // every image had been sent) from one that finished; an endless --loop
    // has no other end than a signal.
    let tmp = TempDir::new("sender-sigint");
    inputs(&tmp.join("in"));
    let recv = start_receiver(&["--out", tmp.join("out").to_str().unwrap()]);
    let mut slides = Command::new(bin("bitmask-send"));
    slides
        .args(["--to", &recv.addr, "--name", "slides", "--fps", "0.5"])
        .arg(tmp.join("in"));
    let with_loop = |name: &str, extra: &[&str]| sender(&recv.addr, name, &tmp.join("in"), extra);
    for (name, mut command, code) in [
        ("batch", with_loop("batch", &["--count", "100000000"]), 130),
        ("endless", with_loop("endless", &[]), 0),
        // image files paced by --fps end by themselves too (a plain
        // slideshow, and a counted loop); a paced endless loop does not
        ("slides", slides, 130),
        (
            "paced",
            with_loop("paced", &["--count", "100000000", "--fps", "50"]),
            130,
        ),
        (
            "paced-endless",
            with_loop("paced-endless", &["--fps", "50"]),
            0,
        ),
    ] {
        let mut s = Proc::spawn(&mut command);
        recv.proc
            .wait_for_stderr(&format!("stream from \"{name}\""), LIMIT);
        std::thread::sleep(Duration::from_millis(300));
        let st = Command::new("kill")
            .args(["-INT", &s.id().to_string()])
            .status()
            .expect("kill(1)");
        assert!(st.success());
        let f = s.wait(LIMIT);
        assert_eq!(
            f.status.code(),
            Some(code),
            "{name}: {}\n{}",
            f.status,
            f.stderr
        );
        assert!(
            f.stderr.contains("bitmask-send: captured"),
            "{name}: no summary\n{}",
            f.stderr
        );
        assert_eq!(
            f.stderr
                .contains("signal 2 stopped the batch before all of its input was read"),
            code != 0,
            "{name}: {}",
            f.stderr
        );
    }
}

#[test]
fn a_sender_stopped_without_a_receiver_counts_every_frame() {
    // No receiver: the stop cannot send what is queued, and the watchdog
    // ends the process after 3 s. Its summary must still account for every
    // frame captured (the queued ones were in no count).
    let tmp = TempDir::new("sender-stop-unreachable");
    inputs(&tmp.join("in"));
    let mut s = Proc::spawn(&mut sender(
        &closed_port(),
        "cam",
        &tmp.join("in"),
        &["--fps", "30"],
    ));
    s.wait_for_stderr("cannot reach receiver", LIMIT);
    // (until it has captured a few, by its progress line: a sleep here
    // counts time, and a busy machine captures less in it)
    wait_until_captured(&s, 6);
    unsafe_free_sigterm(s.id());
    let f = s.wait(LIMIT);
    assert!(f.stderr.contains("did not end within"), "{}", f.stderr);
    let num = |what: &str| summary_count(&f.stderr, what);
    assert!(num("captured") > 5, "{}", f.stderr);
    assert_eq!(num("captured"), num("dropped"), "{}", f.stderr);
    assert_eq!(num("sent"), 0, "{}", f.stderr);
}

/// Waits until sender `s` says in a progress line (INFO, every second by
/// default) that it has captured `n` frames or more.
fn wait_until_captured(s: &Proc, n: u64) {
    s.wait_for_stderr_lines(
        &format!("progress with {n} or more captured"),
        1,
        |l| l.contains("INFO") && number_after(l, "captured ").is_some_and(|c| c >= n as f64),
        LIMIT,
    );
}

/// Eight images in `tmp/in`: more than the sender's queue holds.
fn eight_images(tmp: &TempDir) -> std::path::PathBuf {
    let dir = tmp.join("in");
    inputs(&dir);
    for i in 3..8 {
        std::fs::copy(dir.join("in-0.png"), dir.join(format!("in-{i}.png"))).unwrap();
    }
    dir
}

#[test]
fn a_batch_gives_up_on_an_unreachable_receiver() {
    // More images than the queue holds: the input cannot end while the
    // receiver is away, yet a batch must not wait for ever (it did).
    let tmp = TempDir::new("batch-unreachable");
    let dir = eight_images(&tmp);
    let t = Instant::now();
    let f = run(Command::new(bin("bitmask-send"))
        .args(["--to", &closed_port()])
        .arg(&dir));
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    assert!(!f.status.success(), "{}", f.stderr);
    assert!(f.stderr.contains("giving up on the batch"), "{}", f.stderr);
    let num = |what: &str| summary_count(&f.stderr, what);
    assert_eq!(num("captured"), num("dropped"), "{}", f.stderr);
    // the images never read are named too
    let not_read = format!("({} of 8 inputs not read)", 8 - num("captured"));
    assert!(f.stderr.contains(&not_read), "{not_read}: {}", f.stderr);
}

#[test]
fn a_batch_gives_up_on_a_peer_that_takes_nothing() {
    // A peer that accepts and ends every connection (no bitmask receiver):
    // the connects succeed, so the rule for an unreachable receiver never
    // applied, and a batch longer than the queue went round for ever.
    let tmp = TempDir::new("batch-accept-close");
    let dir = eight_images(&tmp);
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for c in l.incoming() {
            drop(c);
        }
    });
    // (an endless --loop too: it waits for a receiver it cannot reach, not
    // for one that takes nothing)
    for extra in [&[][..], &["--loop"][..]] {
        let t = Instant::now();
        let f = run(Command::new(bin("bitmask-send"))
            .args(["--to", &addr])
            .args(extra)
            .arg(&dir));
        assert!(t.elapsed() < Duration::from_secs(40), "{:?}", t.elapsed());
        assert!(!f.status.success(), "{extra:?}: {}", f.stderr);
        // (whether the input could end meanwhile, the frames going round in
        // the sender's list to send again, depends on timing: either rule
        // may end it)
        assert!(
            f.stderr.contains("giving up on the batch")
                || f.stderr.contains("input ended and the receiver"),
            "{extra:?}: {}",
            f.stderr
        );
    }
}

#[test]
fn a_udp_frame_too_large_for_the_mtu_fails_the_batch_at_once() {
    // A frame too large for UDP at this --mtu (65,601 datagrams of 64 B,
    // more than 65,535): its send fails whatever the link. It was taken
    // for a lost link, and sent again on a new one (a new stream at the
    // receiver each time), for ever; a batch now says so and fails.
    // (A batch whose every send fails for another reason gives up after
    // 10 s: the sender's unit test a_batch_whose_every_send_fails_gives_up.)
    let tmp = TempDir::new("udp-send-fails");
    let rec = tmp.join("rec.gray8");
    std::fs::File::create(&rec)
        .unwrap()
        .set_len(8192 * 4100)
        .unwrap();
    let t = Instant::now();
    let f = run(Command::new(bin("bitmask-send"))
        .args(["--to", &closed_port(), "--transport", "udp", "--mtu", "120"])
        .args(["--codec", "raw", "--no-drop", "--input-format", "gray8"])
        .args(["--size", "8192x4100"])
        .arg(&rec));
    assert!(t.elapsed() < Duration::from_secs(9), "{:?}", t.elapsed());
    assert!(!f.status.success(), "{}", f.stderr);
    assert!(
        f.stderr.contains(
            "frame 0 not sent: a frame of 4198440 B needs 65601 datagrams at this --mtu \
             (at most 65535): raise --mtu"
        ) && f
            .stderr
            .contains("1 frame(s) too large for UDP at --mtu 120 were not sent"),
        "{}",
        f.stderr
    );
    // one link: a new one would be no better
    assert_eq!(
        f.stderr.matches("state: connected to").count(),
        1,
        "{}",
        f.stderr
    );
    assert!(!f.stderr.contains("lost while sending"), "{}", f.stderr);
}

#[test]
fn a_recorded_raw_file_is_a_batch_sent_whole() {
    // A raw file (not a pipe) is not a live camera: no frame is dropped
    // when the sender outruns the link, named or on stdin.
    let tmp = TempDir::new("raw-file-batch");
    let (w, h, n) = (320usize, 240usize, 40usize);
    let frames: Vec<u8> = noise(w * h * n, 7);
    let rec = tmp.join("rec.gray8");
    std::fs::write(&rec, &frames).unwrap();
    for on_stdin in [false, true] {
        let out = tmp.join(&format!("out-{on_stdin}"));
        let mut recv = start_receiver(&["--out", out.to_str().unwrap()]);
        let args = format!("--to {} --input-format gray8 --size 320x240", recv.addr);
        let f = if on_stdin {
            // (the test library gives its children /dev/null as stdin)
            run(Command::new("sh").arg("-c").arg(format!(
                "exec {} {args} - < {}",
                sh_quote(&bin("bitmask-send")),
                sh_quote(&rec)
            )))
        } else {
            run(Command::new(bin("bitmask-send"))
                .args(args.split(' '))
                .arg(&rec))
        };
        assert!(f.status.success(), "{}", f.stderr);
        assert!(
            f.stderr.contains(&format!("captured {n}, sent {n} frames")),
            "{}",
            f.stderr
        );
        assert!(f.stderr.contains("dropped 0"), "{}", f.stderr);
        let got = recv.proc.terminate(LIMIT);
        assert!(
            got.stderr.contains(&format!("{n} frames")),
            "{}",
            got.stderr
        );
        assert_eq!(std::fs::read_dir(&out).unwrap().count(), n);
    }
}

#[test]
fn a_stopped_receiver_reports_what_it_wrote() {
    // Stopped while a sender streams: its summary, its stats file and its
    // output directory must agree (frames handled after the stats file was
    // written made them differ by up to 8).
    let tmp = TempDir::new("recv-stop-numbers");
    inputs(&tmp.join("in"));
    let out = tmp.join("out");
    let stats = tmp.join("stats.json");
    for round in 0..3 {
        let _ = std::fs::remove_dir_all(&out);
        let mut recv = start_receiver(&[
            "--out",
            out.to_str().unwrap(),
            "--stats-json",
            stats.to_str().unwrap(),
        ]);
        let _s = Proc::spawn(&mut sender(
            &recv.addr,
            "cam",
            &tmp.join("in"),
            &["--count", "100000", "--codec", "raw"],
        ));
        recv.proc.wait_for_stderr("cam: ", LIMIT);
        let f = recv.proc.terminate(LIMIT);
        let total: u64 = f
            .stderr
            .split("bitmask-recv: total: ")
            .nth(1)
            .and_then(|r| r.split(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no total: {}", f.stderr));
        let json = std::fs::read_to_string(&stats).unwrap();
        let files = std::fs::read_dir(&out).unwrap().count() as u64;
        assert_eq!(
            stat(&json, "cam", "received") as u64,
            total,
            "round {round}: {json}"
        );
        assert_eq!(files, total, "round {round}: {}", f.stderr);
    }
}

#[test]
fn a_live_sender_ahead_of_a_slow_receiver_drops_frames_instead_of_queueing_them() {
    // The receiver's --exec program takes 1 mask a second, the camera makes
    // 15. Compressed masks are small: without a bound on the frames in
    // flight, hundreds wait in the sockets' buffers and latency grows for
    // as long as it runs. With it, the sender's queue drops the surplus.
    let tmp = TempDir::new("sender-live-window");
    // (it ends at the end of its input: dd alone succeeds on an empty read)
    let consumer = "while [ \"$(dd bs=76800 count=1 iflag=fullblock status=none | wc -c)\" \
                    -eq 76800 ]; do sleep 1; done";
    let mut recv = start_receiver(&["--format", "gray8", "--exec", consumer]);
    // a gray8 320x240 "camera" at 15 fps: frames of zeros (tiny payloads)
    let camera = "while :; do head -c 76800 /dev/zero; sleep 0.066; done";
    let mut s = Proc::spawn(Command::new(bin("bitmask-send")).args([
        "--to",
        &recv.addr,
        "--name",
        "cam",
        "--input-format",
        "gray8",
        "--size",
        "320x240",
        "--input-command",
        camera,
    ]));
    // (until it has captured 90, about 6 s: counted by the sender, as a
    // loaded machine runs the shell camera slower)
    let t = Instant::now();
    wait_until_captured(&s, 90);
    let f = s.terminate(LIMIT);
    let took = t.elapsed().as_secs_f64();
    let captured = summary_count(&f.stderr, "captured");
    let dropped = summary_count(&f.stderr, "dropped");
    // Most are dropped (none were before: all 90 or more were kept): what
    // is not dropped is at most what the consumer took meanwhile (a mask a
    // second, about 6), the 8 frames in flight and a few in the pipe and
    // queue, however long a busy machine took to capture 90.
    let kept = captured.saturating_sub(dropped) as f64;
    assert!(
        captured >= 90 && kept <= took + 24.0,
        "captured {captured}, dropped {dropped} in {took:.1} s:\n{}",
        f.stderr
    );
    recv.proc.terminate(LIMIT);
    let _ = tmp;
}

#[test]
fn log_every_spaces_the_progress_lines_and_rates_cover_the_interval() {
    // A service that runs for weeks logs a line a minute, not a second.
    let tmp = TempDir::new("log-every");
    inputs(&tmp.join("in"));
    let out = tmp.join("out");
    let mut recv = start_receiver(&["--log-every", "3", "--out", out.to_str().unwrap()]);
    let mut s = Proc::spawn(&mut sender(
        &recv.addr,
        "cam",
        &tmp.join("in"),
        &["--fps", "20", "--log-every", "3"],
    ));
    // Two lines each, 3 s apart (a line a second: 1 s); waited for, and
    // judged by their own time stamps and numbers, not by how many came
    // in a time the test measures (a busy machine stretches that).
    let progress = s.wait_for_stderr_lines(
        "progress",
        2,
        |l| l.contains("INFO") && l.contains("captured "),
        LIMIT,
    );
    let lines = recv.proc.wait_for_stderr_lines(
        "cam's rates",
        2,
        |l| l.contains("INFO") && l.contains("cam: ") && l.contains(" fps"),
        LIMIT,
    );
    s.terminate(LIMIT);
    recv.proc.terminate(LIMIT);
    assert!(log_gap(&progress[0], &progress[1]) >= 2.9, "{progress:?}");
    assert!(log_gap(&lines[0], &lines[1]) >= 2.5, "{lines:?}");
    // The sender's rates are over the 3 s since its line before: frames
    // sent in between over that time (not since the start, nor the last
    // second).
    let num = |l: &str, before: &str| -> f64 {
        number_after(l, before).unwrap_or_else(|| panic!("no number after {before:?} in {l}"))
    };
    let win = num(&progress[1], "last ");
    assert!(win >= 2.9, "{}", progress[1]);
    let sent = num(&progress[1], ", sent ") - num(&progress[0], ", sent ");
    let fps = num(&progress[1], " s ");
    assert!(
        (fps - sent / win).abs() <= 0.05 * fps + 0.1,
        "{sent} frames in {win} s: {}",
        progress[1]
    );
    // The receiver's too: its frames since its line before over the time
    // between the two lines (3 s of frames over one second would be 3x).
    let got = num(&lines[1], "cam: ") - num(&lines[0], "cam: ");
    let fps = num(&lines[1], "), ");
    let per_s = got / log_gap(&lines[0], &lines[1]);
    assert!(got > 0.0, "{lines:?}");
    assert!(
        (fps - per_s).abs() <= 0.25 * per_s + 1.0,
        "{got} frames between {lines:?}"
    );
}
