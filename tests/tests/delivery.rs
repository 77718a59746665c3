//! Confirmed delivery (PROTOCOL.md section 6, "Acknowledgements"): a
//! `--no-drop` sender writes again what the receiver did not confirm when a
//! connection breaks, the receiver skips what it had already handled, and
//! every frame arrives once; a receiver that sends no acknowledgements (an
//! older one) is still served.

use bitmask_tests::*;
use bitmask_wire::{FrameReader, Limits, ACK_LEN};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const W: u32 = 64;
const H: u32 = 48;

/// Three smooth scenes (so that the bilevel codec sends delta frames); their
/// masks at the sender's default threshold.
fn inputs(dir: &Path) -> Vec<Vec<u8>> {
    inputs_sized(dir, W, H)
}

/// As [`inputs`], `w` x `h`.
fn inputs_sized(dir: &Path, w: u32, h: u32) -> Vec<Vec<u8>> {
    three_inputs(dir, w, h, 7, scene_image)
}

/// The sequence numbers of the frames written in `dir` (each checked
/// against the mask of image `seq % 3`); a sequence written twice shows up
/// twice.
fn written(dir: &Path, expected: &[Vec<u8>]) -> Vec<u64> {
    let mut seqs = Vec::new();
    for name in list(dir) {
        let Some(rest) = name.strip_prefix("frame-") else {
            continue;
        };
        let seq: u64 = rest
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(
            read(&dir.join(&name)),
            expected[(seq % 3) as usize],
            "{name} is not the mask of image {}",
            seq % 3
        );
        seqs.push(seq);
    }
    seqs.sort();
    seqs
}

/// A receiver writing to `tmp`/out with `--stats-json` `tmp`/stats.json;
/// returns the two paths and the receiver.
fn receiver_with_stats(tmp: &TempDir) -> (std::path::PathBuf, std::path::PathBuf, Listening) {
    let (out, stats) = (tmp.join("out"), tmp.join("stats.json"));
    let r = start_receiver(&[
        "--out",
        out.to_str().unwrap(),
        "--stats-json",
        stats.to_str().unwrap(),
    ]);
    (out, stats, r)
}

/// A TCP proxy in front of `upstream`. Its first connection passes the
/// receiver's acknowledgements back only until `mute` bytes went upstream,
/// and is cut (both ways) once `cut` bytes did, in the middle of a frame;
/// later connections pass everything. Returns its address and its count of
/// connections.
fn flaky_proxy(upstream: String, mute: usize, cut: usize) -> (String, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let conns = Arc::new(AtomicUsize::new(0));
    let n = conns.clone();
    std::thread::spawn(move || {
        for down in l.incoming() {
            let Ok(down) = down else { return };
            let first = n.fetch_add(1, Relaxed) == 0;
            let up = TcpStream::connect(&upstream).unwrap();
            let forwarded = Arc::new(AtomicUsize::new(0));
            // receiver -> sender: the acknowledgements
            let (mut from, mut to, fwd) = (
                up.try_clone().unwrap(),
                down.try_clone().unwrap(),
                forwarded.clone(),
            );
            std::thread::spawn(move || {
                let mut b = [0u8; 4096];
                let mut passed = 0;
                while let Ok(k) = from.read(&mut b) {
                    if k == 0 {
                        let _ = to.shutdown(Shutdown::Write);
                        return;
                    }
                    // the first acknowledgement always passes: it shows
                    // that the receiver acknowledges
                    let pass = !first || passed < ACK_LEN || fwd.load(Relaxed) < mute;
                    if pass {
                        if to.write_all(&b[..k]).is_err() {
                            return;
                        }
                        passed += k;
                    }
                }
            });
            // sender -> receiver: the frames
            std::thread::spawn(move || {
                let (mut from, mut to) = (down, up);
                let mut b = [0u8; 997]; // odd, so that the cut falls inside a frame
                while let Ok(k) = from.read(&mut b) {
                    if k == 0 {
                        let _ = to.shutdown(Shutdown::Write);
                        return;
                    }
                    let done = forwarded.load(Relaxed);
                    let k = if first { k.min(cut - done) } else { k };
                    if to.write_all(&b[..k]).is_err() {
                        return;
                    }
                    forwarded.fetch_add(k, Relaxed);
                    if first && done + k >= cut {
                        let _ = to.shutdown(Shutdown::Both);
                        let _ = from.shutdown(Shutdown::Both);
                        return;
                    }
                }
            });
        }
    });
    (addr, conns)
}

#[test]
fn no_drop_sends_again_what_a_broken_connection_lost_and_nothing_twice() {
    let tmp = TempDir::new("delivery-cut");
    let expected = inputs(&tmp.join("in"));
    let (out, stats, mut r) = receiver_with_stats(&tmp);
    // Frames are about 200-400 B: acknowledgements stop after some 10
    // frames went through, the connection breaks after some 30.
    let (proxy, conns) = flaky_proxy(r.addr.clone(), 4_000, 10_000);
    let n = 120;
    let s = run(Command::new(bin("bitmask-send")).args([
        "--to",
        &proxy,
        "--name",
        "cam",
        "--no-drop",
        "--loop",
        "--count",
        &n.to_string(),
        "--codec",
        "bilevel",
        tmp.join("in").to_str().unwrap(),
    ]));
    assert!(s.status.success(), "sender: {}\n{}", s.status, s.stderr);
    assert!(conns.load(Relaxed) >= 2, "no reconnect:\n{}", s.stderr);
    assert!(
        s.stderr.contains(&format!("confirmed {n};")),
        "every frame confirmed:\n{}",
        s.stderr
    );
    assert!(
        s.stderr
            .contains("were not confirmed when the connection ended: they are sent again"),
        "{}",
        s.stderr
    );
    std::thread::sleep(Duration::from_millis(300));
    let rl = r.proc.terminate(LIMIT);
    // Frames the receiver wrote after the acknowledgements stopped: the
    // sender learns from the resumed connection's first acknowledgement not
    // to send them again (or, had they been sent, the receiver skips them).
    assert!(
        s.stderr
            .contains("of the frames not confirmed before: not sent again")
            || rl
                .stderr
                .contains("sent again were handled before and skipped"),
        "frames the receiver had written were not recognised:\nsender:\n{}\nreceiver:\n{}",
        s.stderr,
        rl.stderr
    );
    let seqs = written(&out, &expected);
    assert_eq!(
        seqs,
        (0..n).collect::<Vec<u64>>(),
        "every frame written once, bit-exact\nsender:\n{}\nreceiver:\n{}",
        s.stderr,
        rl.stderr
    );
    let json = std::fs::read_to_string(&stats).unwrap();
    assert_eq!(stat(&json, "cam", "lost"), 0.0, "{json}");
    assert_eq!(stat(&json, "cam", "received"), n as f64, "{json}");
    // Frames skipped as handled before are counted, as many as logged.
    let skipped: u64 = rl
        .stderr
        .lines()
        .filter_map(|l| l.split_once("resumed at frame ")?.1.split_once(" ("))
        .filter_map(|(_, rest)| rest.split(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(
        stat(&json, "cam", "resent"),
        skipped as f64,
        "{json}\nreceiver:\n{}",
        rl.stderr
    );
}

#[test]
fn no_drop_sends_again_to_a_restarted_receiver() {
    let tmp = TempDir::new("delivery-restart");
    let expected = inputs(&tmp.join("in"));
    let addr = closed_port();
    let out = tmp.join("out");
    let recv = || {
        let mut c = Command::new(bin("bitmask-recv"));
        c.args(["--listen", &addr, "--out", out.to_str().unwrap()]);
        start_listening(&mut c)
    };
    let r1 = recv();
    let n = 200u64;
    let mut s = Proc::spawn(Command::new(bin("bitmask-send")).args([
        "--to",
        &addr,
        "--name",
        "cam",
        "--no-drop",
        "--loop",
        "--fps",
        "100",
        "--count",
        &n.to_string(),
        tmp.join("in").to_str().unwrap(),
    ]));
    let t = Instant::now();
    while list(&out).len() < 30 {
        assert!(t.elapsed() < LIMIT, "no frames: {}", s.stderr());
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(r1); // SIGKILL: what it held unwritten is gone
    std::thread::sleep(Duration::from_millis(500));
    let mut r2 = recv();
    let f = s.wait(LIMIT);
    assert!(f.status.success(), "sender: {}\n{}", f.status, f.stderr);
    assert!(
        f.stderr.contains(&format!("confirmed {n};")),
        "{}",
        f.stderr
    );
    std::thread::sleep(Duration::from_millis(300));
    let r2l = r2.proc.terminate(LIMIT);
    // Frames written just before the kill, unconfirmed, come again: the
    // new receiver finds their files and does not write them twice.
    assert_eq!(
        written(&out, &expected),
        (0..n).collect::<Vec<u64>>(),
        "no frame lost across the restart, none written twice\nsender:\n{}\nreceiver 2:\n{}",
        f.stderr,
        r2l.stderr
    );
}

#[test]
fn image_files_at_fps_are_a_batch_every_frame_sent() {
    // --fps paces image files; it does not make them a camera (as files
    // repeated by --loop at --fps do). A receiver that comes up a second
    // late gets every frame (a live source drops the frames the link could
    // not take: this run said 'dropped 28' and exited 0, and one with no
    // receiver at all 'sent 0', exit 0).
    let tmp = TempDir::new("delivery-batch-fps");
    let expected = inputs(&tmp.join("in"));
    let addr = closed_port();
    let out = tmp.join("out");
    // (the three images ten times over)
    let n = 30u64;
    let mut s = Proc::spawn(
        Command::new(bin("bitmask-send"))
            .args(["--to", &addr, "--retry-max", "0.1", "--fps", "50"])
            .args(vec![tmp.join("in"); 10]),
    );
    std::thread::sleep(Duration::from_millis(1000));
    let mut c = Command::new(bin("bitmask-recv"));
    c.args(["--listen", &addr, "--out", out.to_str().unwrap()]);
    let mut r = start_listening(&mut c);
    let f = s.wait(LIMIT);
    assert!(f.status.success(), "sender: {}\n{}", f.status, f.stderr);
    assert_eq!(summary_count(&f.stderr, "dropped"), 0, "{}", f.stderr);
    std::thread::sleep(Duration::from_millis(300));
    let rl = r.proc.terminate(LIMIT);
    assert_eq!(
        written(&out, &expected),
        (0..n).collect::<Vec<u64>>(),
        "every frame written\nsender:\n{}\nreceiver:\n{}",
        f.stderr,
        rl.stderr
    );
}

#[test]
fn a_receiver_that_sends_no_acknowledgements_is_still_served() {
    // An older receiver: it reads the stream and never writes a byte.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let reader = std::thread::spawn(move || {
        let (c, _) = l.accept().unwrap();
        let mut r = FrameReader::new(c, Limits::default());
        let hello = r.read_hello().unwrap().expect("a hello");
        assert!(hello.wants_acks() && !hello.resumes(), "{hello:?}");
        let mut seqs = Vec::new();
        while let Some(f) = r.read_frame().unwrap() {
            seqs.push(f.header.sequence);
        }
        seqs
    });
    let tmp = TempDir::new("delivery-old");
    inputs(&tmp.join("in"));
    // more frames than a --no-drop sender keeps in flight unconfirmed
    let n = 150u64;
    let t = Instant::now();
    let s = run(Command::new(bin("bitmask-send")).args([
        "--to",
        &addr,
        "--no-drop",
        "--loop",
        "--count",
        &n.to_string(),
        tmp.join("in").to_str().unwrap(),
    ]));
    assert!(s.status.success(), "sender: {}\n{}", s.status, s.stderr);
    assert!(s.stderr.contains("confirmed -;"), "{}", s.stderr);
    assert!(
        s.stderr.contains("sends no acknowledgements"),
        "{}",
        s.stderr
    );
    // (not the 10 s a sender waits for a receiver that acknowledges)
    assert!(
        t.elapsed() < Duration::from_secs(9),
        "it waited {:?} for acknowledgements that never come",
        t.elapsed()
    );
    assert_eq!(reader.join().unwrap(), (0..n).collect::<Vec<u64>>());
}

#[test]
fn a_live_sender_does_not_wait_for_acknowledgements_that_never_come() {
    // An older receiver (it reads, never writes): a live sender's bound on
    // frames in flight must not hold its first frames for the 2 s it takes
    // to conclude that no acknowledgement comes.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    // (the sequence numbers of the frames, as they come)
    let seqs = Arc::new(Mutex::new(Vec::<u64>::new()));
    let g = seqs.clone();
    std::thread::spawn(move || {
        let (c, _) = l.accept().unwrap();
        let mut r = FrameReader::new(c, Limits::default());
        let _ = r.read_hello();
        while let Ok(Some(f)) = r.read_frame() {
            g.lock().unwrap().push(f.header.sequence);
        }
    });
    let tmp = TempDir::new("delivery-old-live");
    inputs(&tmp.join("in"));
    let mut s = Proc::spawn(Command::new(bin("bitmask-send")).args([
        "--to",
        &addr,
        "--loop",
        "--fps",
        "30",
        tmp.join("in").to_str().unwrap(),
    ]));
    // Held for 2 s after its first 8 frames, a live sender at 30 fps drops
    // most of what it captures meanwhile (the newest frame wins): the
    // numbers of the frames that come jump from 7 to about 60. Not held,
    // its frames come in order, a few dropped at most (its queue holds 2:
    // a busy machine may run its capture ahead of its network thread now
    // and then). Judged by the numbers, not by when the frames come: a
    // busy machine delays this test's reader, not the sender's numbering.
    let t = Instant::now();
    while seqs.lock().unwrap().len() < 30 {
        assert!(t.elapsed() < LIMIT, "frames: {:?}", seqs.lock().unwrap());
        std::thread::sleep(Duration::from_millis(20));
    }
    let f = s.terminate(LIMIT);
    let first: Vec<u64> = seqs.lock().unwrap()[..30].to_vec();
    // (20 frames: two thirds of a second)
    assert!(
        first[0] < 20 && first.windows(2).all(|w| w[0] < w[1] && w[1] - w[0] <= 20),
        "{first:?}\n{}",
        f.stderr
    );
}

#[test]
fn a_stalled_output_is_waited_for_not_reconnected() {
    // The output stalls for 3 s (three times the sender's --timeout). The
    // 9,600-byte masks of the 64 frames the sender keeps unconfirmed fit in
    // the socket buffers, so it is the wait for confirmations that stalls;
    // the receiver's host answers all along, so the sender waits for it
    // instead of taking it for a lost link. Every mask reaches the output
    // once, in order.
    let tmp = TempDir::new("delivery-stall");
    let expected = inputs_sized(&tmp.join("in"), 320, 240);
    let out = tmp.join("stream.raw");
    let mut r = start_receiver(&["--exec", &format!("sleep 3; cat > {}", sh_quote(&out))]);
    let s = send_150(&r.addr, &tmp.join("in"));
    let rl = r.proc.terminate(LIMIT);
    let why = format!("sender:\n{}\nreceiver:\n{}", s.stderr, rl.stderr);
    waited_not_reconnected(&s, &why);
    let bytes = read(&out);
    let len = expected[0].len();
    assert_eq!(
        bytes.len(),
        150 * len,
        "{} masks in the output for 150 frames\n{why}",
        bytes.len() as f64 / len as f64,
    );
    for (i, m) in bytes.chunks(len).enumerate() {
        assert_eq!(m, &expected[i % 3][..], "mask {i} of the output");
    }
}

#[test]
fn a_write_stalled_by_a_closed_window_is_waited_for_not_reconnected() {
    // A proxy with a small receive buffer stops reading for 3 s: the
    // sender's write makes no progress for three times its --timeout, but
    // the proxy's TCP answers the window probes, so the sender waits.
    waited_through("delivery-window", 3, Pause::Closed);
}

#[test]
fn a_stalled_receiver_whose_window_opens_a_little_at_a_time_is_waited_for_and_said() {
    // As above, but the window never stays closed for a whole --timeout
    // (seen on CI: the kernel packed the stalled reader's queue), so no
    // write fails with a timeout: the sender must still say that it waits.
    let (sender, why) = waited_through("delivery-trickle", 4, Pause::Trickle(4096));
    assert!(sender.contains("has confirmed no frame for"), "{why}");
}

/// A proxy pausing (`how`) for `secs` in front of a receiver: the sender
/// waits, saying so, and all 150 frames are written once. Returns the
/// sender's stderr and both logs.
fn waited_through(tag: &str, secs: u64, how: Pause) -> (String, String) {
    let (s, why) = through_a_pause(tag, secs, how);
    waited_not_reconnected(&s, &why);
    (s.stderr, why)
}

#[test]
fn a_receiver_stalled_past_the_limit_is_given_a_new_connection() {
    // The proxy stops reading for 16 s: past the 10 s a receiver whose host
    // answers is waited for, the sender gives the link up and sends on a
    // new one; everything is still written once.
    stalled_past_the_limit("delivery-window-long", 16, Pause::Closed);
}

#[test]
fn a_receiver_stalled_past_the_limit_behind_a_trickling_window_is_given_a_new_connection() {
    // As above, with a window that opens a little at a time, for 12 s: the
    // 10 s count from the last confirmation, not from when the window
    // filled (some 3 s into the pause at this rate: that would be 13 s).
    stalled_past_the_limit("delivery-trickle-long", 12, Pause::Trickle(8192));
}

/// A proxy pausing (`how`) for `secs` in front of a receiver: the sender
/// gives the link up and all 150 frames are written once.
fn stalled_past_the_limit(tag: &str, secs: u64, how: Pause) {
    let (s, why) = through_a_pause(tag, secs, how);
    assert!(s.status.success(), "{}: {why}", s.status);
    // (given up by the stalled write, or, if the socket buffers took more
    // frames first, by the wait for confirmations: see waited_not_reconnected)
    assert!(
        s.stderr.contains("the receiver took no data for 10 s")
            || s.stderr.contains("the receiver confirmed no frame for 1"),
        "{why}"
    );
    assert!(s.stderr.contains("reconnects 1"), "{why}");
    assert!(s.stderr.contains("confirmed 150;"), "{why}");
}

/// 150 raw 320x240 frames sent through a proxy pausing (`how`) for `secs`
/// after 20 to a receiver writing files: each written once, in order.
/// Returns the sender's run and both logs.
fn through_a_pause(tag: &str, secs: u64, how: Pause) -> (Finished, String) {
    let tmp = TempDir::new(tag);
    let expected = inputs_sized(&tmp.join("in"), 320, 240);
    let out = tmp.join("out");
    let mut r = start_receiver(&["--out", out.to_str().unwrap()]);
    let proxy = pausing_proxy(r.addr.clone(), AFTER_20, Duration::from_secs(secs), how);
    let s = send_150(&proxy, &tmp.join("in"));
    let rl = r.proc.terminate(LIMIT);
    let why = format!("sender:\n{}\nreceiver:\n{}", s.stderr, rl.stderr);
    assert_eq!(
        written(&out, &expected),
        (0..150).collect::<Vec<u64>>(),
        "{why}"
    );
    (s, why)
}

/// The hello and 20 raw 320x240 frames: a pause there falls between frames.
const AFTER_20: usize = 11 + 20 * (320 / 8 * 240 + 40);

/// Sends 150 raw 320x240 frames from the images in `dir` to `to`.
fn send_150(to: &str, dir: &Path) -> Finished {
    run(Command::new(bin("bitmask-send")).args([
        "--to",
        to,
        "--name",
        "cam",
        "--loop",
        "--count",
        "150",
        "--codec",
        "raw",
        dir.to_str().unwrap(),
    ]))
}

/// The sender waited for a slow receiver, saying so, and confirmed all 150
/// frames on one connection. (Which wait says it, the write's or the one
/// for confirmations, depends on how many frames the socket buffers took
/// first and on whether the kernel, packing the stalled reader's queue,
/// opens its window a little at a time; the first write of a frame that
/// fills the buffers gets some of it in, so the write's note is mostly
/// "has taken only"; the netbed `stall` test asserts the write's on a
/// real link.)
fn waited_not_reconnected(s: &Finished, why: &str) {
    assert!(s.status.success(), "{}: {why}", s.status);
    assert!(s.stderr.contains("confirmed 150;"), "{why}");
    assert!(
        s.stderr.contains("has taken no data for")
            || s.stderr.contains("has taken only")
            || s.stderr.contains("has confirmed no frame for"),
        "no waiting said: {why}"
    );
    assert!(s.stderr.contains("reconnects 0"), "{why}");
    assert!(!s.stderr.contains("sent again"), "{why}");
}

/// How a [`pausing_proxy`] pauses.
#[derive(Clone, Copy)]
enum Pause {
    /// It reads nothing: the sender's window closes.
    Closed,
    /// It goes on reading this many bytes every 50 ms but passes nothing
    /// on until the pause ends, as a kernel does that packs a stalled
    /// reader's receive queue: the window opens a little at a time, and
    /// no write waits a whole --timeout.
    Trickle(usize),
}

/// A TCP proxy in front of `upstream` whose listening socket has a small
/// receive buffer (so a sender's window closes soon) and which, on its
/// first connection, pauses (`how`) for `pause` once `after` bytes went
/// upstream (a frame boundary, say: the receiver then waits between two
/// frames, not inside one). Returns its address.
fn pausing_proxy(upstream: String, after: usize, pause: Duration, how: Pause) -> String {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(16 << 10).unwrap();
    sock.bind(
        &"127.0.0.1:0"
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into(),
    )
    .unwrap();
    sock.listen(8).unwrap();
    let l: TcpListener = sock.into();
    let addr = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let mut first = true;
        for down in l.incoming() {
            let Ok(down) = down else { return };
            let up = TcpStream::connect(&upstream).unwrap();
            let (mut from, mut to) = (up.try_clone().unwrap(), down.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut from, &mut to);
                let _ = to.shutdown(Shutdown::Write);
            });
            let pause_at = if first { after } else { usize::MAX };
            first = false;
            std::thread::spawn(move || {
                let (mut from, mut to) = (down, up);
                let mut b = [0u8; 8192];
                let mut passed = 0;
                while let Ok(k) = from.read(&mut b) {
                    // (the pause falls exactly at `after` bytes)
                    let split = if passed < pause_at && passed + k >= pause_at {
                        pause_at - passed
                    } else {
                        k
                    };
                    if k == 0 || to.write_all(&b[..split]).is_err() {
                        let _ = to.shutdown(Shutdown::Write);
                        return;
                    }
                    if split < k || passed + k == pause_at {
                        let mut held = b[split..k].to_vec();
                        match how {
                            Pause::Closed => std::thread::sleep(pause),
                            Pause::Trickle(step) => {
                                use std::io::ErrorKind::{Interrupted, TimedOut, WouldBlock};
                                let t = Instant::now();
                                // (a sender with nothing to write must not
                                // hold the pause past its end)
                                let _ = from.set_read_timeout(Some(Duration::from_millis(50)));
                                while t.elapsed() < pause {
                                    std::thread::sleep(Duration::from_millis(50));
                                    match from.read(&mut b[..step]) {
                                        Ok(n) if n > 0 => held.extend_from_slice(&b[..n]),
                                        Err(e)
                                            if matches!(
                                                e.kind(),
                                                WouldBlock | TimedOut | Interrupted
                                            ) => {}
                                        // the sender left: what it sent is
                                        // still held to the pause's end, as
                                        // a stalled receiver's kernel would
                                        _ => std::thread::sleep(pause.saturating_sub(t.elapsed())),
                                    }
                                }
                                let _ = from.set_read_timeout(None);
                                // (counted in `passed` as if read now)
                                passed += held.len() - (k - split);
                            }
                        }
                        if to.write_all(&held).is_err() {
                            return;
                        }
                    }
                    passed += k;
                }
            });
        }
    });
    addr
}

/// Sends the 64x48 test images round (`--loop`, with `extra`) to a
/// receiver that takes at most 32x32: it closes each connection at the
/// first frame, and says which option would take it. Returns the sender's
/// run, the receiver's output directory and the directory that holds both.
fn to_a_32x32_receiver(tag: &str, extra: &[&str]) -> (Finished, std::path::PathBuf, TempDir) {
    let tmp = TempDir::new(tag);
    inputs(&tmp.join("in"));
    let out = tmp.join("out");
    let r = start_receiver(&["--max-size", "32x32", "--out", out.to_str().unwrap()]);
    let s = run(Command::new(bin("bitmask-send"))
        .args(["--to", &r.addr, "--loop", "--retry-max", "0.1"])
        .args(extra)
        .arg(tmp.join("in")));
    r.proc.wait_for_stderr(
        "a 64x48 frame, larger than --max-size 32x32: give a larger --max-size",
        LIMIT,
    );
    (s, out, tmp)
}

#[test]
fn a_frame_the_receiver_refuses_is_given_up_after_five_connections() {
    // 64x48 frames to a receiver that takes at most 32x32: it closes each
    // connection at the first frame. A --no-drop sender must not send them
    // again for ever: each is given up after the receiver ended 5
    // connections at it.
    let (s, out, _tmp) = to_a_32x32_receiver("delivery-refused", &["--count", "3"]);
    assert!(!s.status.success(), "{}", s.stderr);
    for f in 0..3 {
        assert!(
            s.stderr.contains(&format!(
                "frame {f} given up: the receiver ended 5 connections at it"
            )),
            "{}",
            s.stderr
        );
    }
    assert!(
        s.stderr.contains("3 frame(s) never confirmed"),
        "{}",
        s.stderr
    );
    assert!(s.stderr.contains("dropped 3"), "{}", s.stderr);
    // each frame counted once: given up, so not unconfirmed too
    assert_eq!(summary_count(&s.stderr, "dropped"), 3, "{}", s.stderr);
    let last = s
        .stderr
        .lines()
        .rfind(|l| l.starts_with("bitmask-send:"))
        .unwrap();
    assert!(!last.contains("unconfirmed"), "{last}");
    assert!(list(&out).is_empty());
}

#[test]
fn a_live_sender_whose_frames_are_all_refused_says_so_and_fails() {
    // The same refusal under a live sender (a camera): frames are not sent
    // again, but a run in which the receiver confirmed nothing and ended
    // every connection must not end with exit 0 (it did, at INFO level).
    let tmp = TempDir::new("delivery-refused-live");
    let out = tmp.join("out");
    let r = start_receiver(&["--max-size", "32x32", "--out", out.to_str().unwrap()]);
    let s = run(Command::new(bin("bitmask-send"))
        .args(["--to", &r.addr, "--retry-max", "0.1"])
        .args(["--input-format", "gray8", "--size", "64x48", "--fps", "50"])
        .args(["--input-command", &paced_camera(64, 48, 60, 50)]));
    r.proc.wait_for_stderr(
        "a 64x48 frame, larger than --max-size 32x32: give a larger --max-size",
        LIMIT,
    );
    assert!(!s.status.success(), "{}", s.stderr);
    assert!(
        s.stderr.contains("connections in a row without confirming"),
        "{}",
        s.stderr
    );
    assert!(
        s.stderr.contains("confirmed none of the frames"),
        "{}",
        s.stderr
    );
    // A link every tenth of a second, all ended by the receiver: the first
    // two said, the rest by a reminder (at once, then after 30 s), not
    // three lines a link for as long as it lasts.
    let lost = s
        .stderr
        .lines()
        .filter(|l| l.contains("state: connection to") && l.contains("reconnecting"))
        .count();
    assert!(lost <= 3, "{lost} lines of lost links:\n{}", s.stderr);
    assert!(
        s.stderr
            .contains("connections since the receiver last confirmed a frame"),
        "{}",
        s.stderr
    );
    assert!(list(&out).is_empty());
}

/// Sends `frames` 5000x5000 gray8 frames (25 MB each, over a default
/// receiver's limit: it resets the connection at the header while the
/// sender still writes), with `extra` flags: from a file, or with `live`
/// from a camera stand-in at 20 fps.
fn send_5000x5000(tag: &str, frames: u32, live: bool, extra: &[&str]) -> Finished {
    let tmp = TempDir::new(tag);
    let r = start_receiver(&["--out", tmp.join("out").to_str().unwrap()]);
    let mut c = Command::new(bin("bitmask-send"));
    c.args(["--to", &r.addr])
        .args(extra)
        .args([
            "--codec",
            "raw",
            "--retry-max",
            "0.1",
            "--input-format",
            "gray8",
        ])
        .args(["--size", "5000x5000"]);
    if live {
        c.args(["--fps", "20", "--input-command"])
            .arg(paced_camera(5000, 5000, frames, 20));
    } else {
        let raw = tmp.join("big.gray");
        std::fs::write(&raw, vec![0u8; 5000 * 5000 * frames as usize]).unwrap();
        c.arg(&raw);
    }
    run(&mut c)
}

#[test]
fn a_live_sender_whose_writes_are_refused_says_so_and_fails() {
    // The same, live (a camera) and with frames big enough that the
    // refusal makes the write itself fail: those count as refusals too
    // (the run ended with exit 0, 'sent 0 ... failed 6').
    let s = send_5000x5000("delivery-refused-write-live", 3, true, &[]);
    assert!(!s.status.success(), "{}", s.stderr);
    assert!(
        s.stderr.contains("confirmed none of the frames"),
        "{}",
        s.stderr
    );
}

#[test]
fn a_frame_refused_while_it_is_written_is_given_up_too() {
    // A 5000x5000 frame (25 MB raw) is over the receiver's default limit:
    // it resets the connection at the header while the sender still writes.
    let s = send_5000x5000("delivery-refused-write", 1, false, &["--no-drop"]);
    assert!(!s.status.success(), "{}", s.stderr);
    assert!(
        s.stderr
            .contains("frame 0 given up: the receiver ended 5 connections at it"),
        "{}",
        s.stderr
    );
}

#[test]
fn an_unreachable_receiver_after_the_input_ended_is_an_error_naming_the_frames() {
    // live input (raw frames), nobody listening: after 10 s the sender
    // gives up, exits 1 and counts the frames as dropped
    let tmp = TempDir::new("delivery-unreachable");
    let raw = tmp.join("frames.gray");
    std::fs::write(&raw, noise(320 * 240 * 5, 3)).unwrap();
    let s = run(Command::new(bin("bitmask-send")).args([
        "--to",
        &closed_port(),
        "--input-format",
        "gray8",
        "--size",
        "320x240",
        "--queue",
        "8",
        raw.to_str().unwrap(),
    ]));
    assert!(!s.status.success(), "{}", s.stderr);
    assert!(
        s.stderr.contains("stayed unreachable for 10 s"),
        "{}",
        s.stderr
    );
    let line = s
        .stderr
        .lines()
        .find(|l| l.starts_with("bitmask-send: captured"))
        .unwrap_or_else(|| panic!("no summary:\n{}", s.stderr));
    assert!(
        line.starts_with("bitmask-send: captured 5, sent 0 frames") && line.contains("dropped 5"),
        "every frame accounted for: {line}"
    );
}

#[test]
fn a_stop_during_the_final_wait_ends_soon_and_counts_what_was_not_confirmed() {
    let tmp = TempDir::new("delivery-stop");
    inputs_sized(&tmp.join("in"), 320, 240);
    // an output that takes nothing for 20 s: nothing is confirmed
    let _r = start_receiver(&["--exec", "sleep 20; cat > /dev/null"]);
    let mut s = Proc::spawn(Command::new(bin("bitmask-send")).args([
        "--to",
        &_r.addr,
        "--loop",
        "--count",
        "20",
        "--codec",
        "raw",
        tmp.join("in").to_str().unwrap(),
    ]));
    s.wait_for_stderr("connected to", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    let f = s.terminate(LIMIT);
    // a batch cut short by SIGTERM: 128 + 15, so that a script can tell
    assert_eq!(
        f.status.code(),
        Some(143),
        "a stopped batch exits 143: {}\n{}",
        f.status,
        f.stderr
    );
    assert!(
        f.stderr.contains("signal 15 stopped the batch before"),
        "{}",
        f.stderr
    );
    assert!(
        t.elapsed() < Duration::from_secs(6),
        "took {:?}",
        t.elapsed()
    );
    let line = f
        .stderr
        .lines()
        .rev()
        .find(|l| l.starts_with("bitmask-send: "))
        .unwrap_or_else(|| panic!("no summary:\n{}", f.stderr));
    // the pipe to the program takes a few 9,600-byte masks (those are
    // confirmed); the others are unconfirmed, and every frame is one or
    // the other
    let count = |key: &str| -> u64 {
        line.split(key)
            .nth(1)
            .and_then(|v| v.split([';', ',']).next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {key:?} count: {line}"))
    };
    let (confirmed, unconfirmed) = (count("; confirmed "), count("unconfirmed "));
    assert!(unconfirmed >= 10, "{line}");
    assert_eq!(confirmed + unconfirmed, 20, "{line}");
}

/// "cam" (a batch of 20 frames) had every frame confirmed and gave none
/// up; "busy", started before it, ended well too.
fn all_20_confirmed_and_busy_done(cam: &Finished, busy: &mut Proc) {
    assert!(cam.status.success(), "cam: {}\n{}", cam.status, cam.stderr);
    assert!(!cam.stderr.contains("given up"), "{}", cam.stderr);
    assert!(cam.stderr.contains("confirmed 20;"), "{}", cam.stderr);
    let b = busy.wait(LIMIT);
    assert!(b.status.success(), "busy: {}", b.stderr);
}

#[test]
fn refusals_while_the_receiver_is_full_do_not_make_a_no_drop_sender_give_up() {
    // One slot, taken by another sender for about 3 s: the receiver refuses
    // "cam" at the door again and again. That is no reason to give frames up.
    let tmp = TempDir::new("delivery-full");
    inputs(&tmp.join("in"));
    let out = tmp.join("out");
    let mut r = start_receiver(&[
        "--max-senders",
        "1",
        "--per-sender",
        "--out",
        out.to_str().unwrap(),
    ]);
    let mut busy = Proc::spawn(Command::new(bin("bitmask-send")).args([
        "--to",
        &r.addr,
        "--name",
        "busy",
        "--loop",
        "--fps",
        "10",
        "--count",
        "30",
        tmp.join("in").to_str().unwrap(),
    ]));
    busy.wait_for_stderr("connected to", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(300));
    let cam = run(Command::new(bin("bitmask-send")).args([
        "--to",
        &r.addr,
        "--name",
        "cam",
        "--loop",
        "--count",
        "20",
        tmp.join("in").to_str().unwrap(),
    ]));
    all_20_confirmed_and_busy_done(&cam, &mut busy);
    r.proc.terminate(LIMIT);
    assert_eq!(list(&out.join("cam")).len(), 20);
}

/// 1024x768 images in `tmp`/in, and a `--per-sender` receiver writing to
/// `tmp`/out whose --max-memory (6 MiB) holds one stream of them, with
/// `extra` flags.
fn six_mib_receiver(tag: &str, extra: &[&str]) -> (TempDir, std::path::PathBuf, Listening) {
    let tmp = TempDir::new(tag);
    inputs_sized(&tmp.join("in"), 1024, 768);
    let out = tmp.join("out");
    let r = start_receiver(
        &[
            &[
                "--max-memory",
                "6",
                "--per-sender",
                "--out",
                out.to_str().unwrap(),
            ][..],
            extra,
        ]
        .concat(),
    );
    (tmp, out, r)
}

#[test]
fn a_sender_the_receiver_has_no_memory_for_yet_waits_and_loses_nothing() {
    // --max-memory 6 MiB holds one stream of 1024x768 frames (up to 3.4 MiB
    // each): "cam" waits while "busy" streams, and is served once busy's
    // stream ends and gives its memory back.
    let (tmp, out, mut r) = six_mib_receiver("delivery-memory", &[]);
    let send = |name: &str, extra: &[&str]| {
        let mut c = Command::new(bin("bitmask-send"));
        c.args(["--to", &r.addr, "--name", name, "--loop", "--count", "20"])
            .args(extra)
            .arg(tmp.join("in"));
        c
    };
    // (20 frames in 5 s: cam, a new debug process reading 1024x768
    // images, comes while busy streams, however busy the machine)
    let mut busy = Proc::spawn(&mut send("busy", &["--fps", "4"]));
    // (its first frame written: it holds its memory)
    wait_for_file(
        &out.join("busy").join("frame-000000.raw"),
        "busy's first frame",
    );
    let cam = run(&mut send("cam", &[]));
    all_20_confirmed_and_busy_done(&cam, &mut busy);
    let log = r.proc.terminate(LIMIT).stderr;
    assert!(
        log.contains(
            "cam: frame 0 waits for memory: a stream of 1024x768 frames needs up to 4 MiB, and 1 \
             stream(s) hold 4 MiB of the receiver's 6 MiB (--max-memory)"
        ),
        "{log}"
    );
    assert!(
        log.contains("cam: frame 0 taken: memory was given back"),
        "{log}"
    );
    assert_eq!(list(&out.join("cam")).len(), 20);
    assert_eq!(list(&out.join("busy")).len(), 20);
}

#[test]
fn a_connection_holding_memory_in_silence_makes_room_for_a_sender_that_streams() {
    // --max-memory 6 MiB: room for one stream of 1024x768 frames. A peer
    // sends one such frame, then nothing, its connection left open (a
    // paused camera, or a peer hoarding memory); "cam", started after it,
    // waits until the peer has been silent for --timeout (1 s), when the
    // peer's connection is closed to make room.
    use bitmask_wire::{encode_frame, Header, Hello, CODEC_RAW};
    let (tmp, out, mut r) = six_mib_receiver("delivery-memory-idle", &["--timeout", "1"]);
    let mut idle = TcpStream::connect(&r.addr).unwrap();
    let mut bytes = Hello::new("idle").unwrap().encode();
    let packed = vec![0u8; 128 * 768];
    encode_frame(
        &Header::new(1024, 768, 0, CODEC_RAW, packed.len() as u32),
        &packed,
        &mut bytes,
    );
    idle.write_all(&bytes).unwrap();
    wait_for_file(
        &out.join("idle").join("frame-000000.raw"),
        "the idle peer's frame",
    );
    let cam = run(Command::new(bin("bitmask-send"))
        .args(["--to", &r.addr, "--name", "cam", "--loop", "--count", "20"])
        .arg(tmp.join("in")));
    assert!(cam.status.success(), "cam: {}\n{}", cam.status, cam.stderr);
    assert!(cam.stderr.contains("confirmed 20;"), "{}", cam.stderr);
    let log = r.proc.terminate(LIMIT).stderr;
    assert!(
        log.contains("cam: frame 0 waits for memory: closed the connection from")
            && log.contains("between frames, to make room"),
        "{log}"
    );
    assert_eq!(list(&out.join("cam")).len(), 20);
    drop(idle);
}

#[test]
fn frames_too_large_for_all_of_max_memory_are_refused_with_the_numbers() {
    let tmp = TempDir::new("delivery-memory-never");
    inputs_sized(&tmp.join("in"), 1024, 768);
    let out = tmp.join("out");
    let mut r = start_receiver(&["--max-memory", "2", "--out", out.to_str().unwrap()]);
    let s = run(Command::new(bin("bitmask-send"))
        .args(["--to", &r.addr, "--retry-max", "0.1", "--count", "1"])
        .arg(tmp.join("in")));
    assert!(!s.status.success(), "{}", s.stderr);
    assert!(
        s.stderr
            .contains("frame 0 given up: the receiver ended 5 connections at it"),
        "{}",
        s.stderr
    );
    let log = r.proc.terminate(LIMIT).stderr;
    assert!(
        log.contains(
            "frame 0 refused: a stream of 1024x768 frames needs up to 4 MiB, more than the \
             receiver's 2 MiB (--max-memory); give a larger --max-memory"
        ),
        "{log}"
    );
    assert!(list(&out).is_empty());
}

/// Connects as sender `name` (acknowledgements wanted, `resume` as asked),
/// writes raw 16x1 frames `seqs`, and waits until the receiver acknowledged
/// up to `until`; returns the first acknowledgement (where the receiver's
/// record of handled frames ends).
fn raw_sender_connection(addr: &str, resume: bool, seqs: std::ops::Range<u64>, until: u64) -> u64 {
    sender_connection(addr, resume, &tagged_frames(seqs, 0x0f), until)
}

/// [`raw_sender_connection`] writing the wire frames `frames`.
fn sender_connection(addr: &str, resume: bool, frames: &[u8], until: u64) -> u64 {
    use bitmask_wire::{AckReader, Hello, HELLO_ACKS, HELLO_RESUME};
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    let flags = HELLO_ACKS | if resume { HELLO_RESUME } else { 0 };
    s.write_all(&Hello::new("cam").unwrap().with_flags(flags).encode())
        .unwrap();
    s.write_all(frames).unwrap();
    let mut acks = AckReader::default();
    let mut first = None;
    let mut b = [0u8; 64];
    loop {
        let n = s.read(&mut b).expect("acknowledgements");
        assert!(n > 0, "the receiver closed before acknowledging {until}");
        let mut rest = &b[..n];
        while !rest.is_empty() {
            let k = rest.len().min(ACK_LEN - acks.pending());
            if let Some(a) = acks.push(&rest[..k]).unwrap() {
                first.get_or_insert(a.next);
                if a.next >= until {
                    return first.unwrap();
                }
            }
            rest = &rest[k..];
        }
    }
}

#[test]
fn a_frame_sent_again_that_does_not_decode_is_still_one_handled_before() {
    // Frames 0..5 handled, then sent again in a form that does not decode
    // (a delta whose reference the new link never had, say): skipped as
    // handled before, not counted corrupt, and their numbers do not rewind
    // the count (they were taken for a new numbering).
    use bitmask_wire::{encode_frame, Header};
    let tmp = TempDir::new("delivery-resent-undecodable");
    let (_, stats, mut r) = receiver_with_stats(&tmp);
    assert_eq!(raw_sender_connection(&r.addr, false, 0..5, 5), 0);
    let mut frames = Vec::new();
    for q in 3..5 {
        // codec 1 (bilevel), a payload that is no bilevel frame
        encode_frame(&Header::new(16, 1, q, 1, 2), &[0xff, 0xff], &mut frames);
    }
    frames.extend(tagged_frames(5..8, 0x0f));
    assert_eq!(sender_connection(&r.addr, true, &frames, 8), 5);
    let rl = r.proc.terminate(LIMIT);
    let json = std::fs::read_to_string(&stats).unwrap();
    for (k, want) in [
        ("received", 8.0),
        ("resent", 2.0),
        ("corrupt", 0.0),
        ("lost", 0.0),
    ] {
        assert_eq!(stat(&json, "cam", k), want, "{k}: {json}\n{}", rl.stderr);
    }
}

/// A TCP proxy in front of `upstream` that flips one bit in the middle of
/// the payload of frame `nth` (counted from 0 on the connection) of its first
/// connection from sender `name`, and passes everything else.
fn damaging_proxy(upstream: String, name: &str, nth: usize) -> String {
    use bitmask_wire::{Header, Hello, HEADER_LEN};
    let hello_len = Hello::new(name).unwrap().encode().len();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for (i, down) in l.incoming().enumerate() {
            let Ok(down) = down else { return };
            let up = TcpStream::connect(&upstream).unwrap();
            let (mut from, mut to) = (up.try_clone().unwrap(), down.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut from, &mut to);
                let _ = to.shutdown(Shutdown::Write);
            });
            std::thread::spawn(move || {
                let (mut from, mut to) = (down, up);
                let mut seen = Vec::new(); // the connection's bytes so far
                let (mut next, mut frame, mut flip) = (hello_len, 0, None);
                let mut b = [0u8; 1000];
                while let Ok(k) = from.read(&mut b) {
                    if k == 0 {
                        let _ = to.shutdown(Shutdown::Write);
                        return;
                    }
                    let start = seen.len();
                    seen.extend_from_slice(&b[..k]);
                    while i == 0 && flip.is_none() && seen.len() >= next + HEADER_LEN {
                        let head: &[u8; HEADER_LEN] =
                            seen[next..][..HEADER_LEN].try_into().unwrap();
                        let (h, _) = Header::decode(head, &Limits::default()).unwrap();
                        if frame == nth {
                            flip = Some(next + HEADER_LEN + h.payload_len as usize / 2);
                        }
                        next += HEADER_LEN + h.payload_len as usize;
                        frame += 1;
                    }
                    if let Some(at) = flip.filter(|&at| (start..seen.len()).contains(&at)) {
                        b[at - start] ^= 0x10;
                    }
                    if to.write_all(&b[..k]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn a_frame_damaged_on_the_way_is_sent_again_and_nothing_is_lost() {
    // A bit flipped past TCP's checksum (a NIC or memory fault) in frame 5
    // of 40 (delta frames of the default codec: each refers to the one
    // before). The receiver closes the connection at it without
    // acknowledging it; the sender sends it again on a new connection, from
    // a key frame, and every frame is written once, right.
    let tmp = TempDir::new("delivery-damaged");
    let expected = inputs(&tmp.join("in"));
    let (out, stats, mut r) = receiver_with_stats(&tmp);
    let via = damaging_proxy(r.addr.clone(), "cam", 5);
    let s = run(Command::new(bin("bitmask-send"))
        .args(["--to", &via, "--name", "cam", "--loop", "--count", "40"])
        .arg(tmp.join("in")));
    assert!(s.status.success(), "{}", s.stderr);
    assert!(s.stderr.contains("confirmed 40;"), "{}", s.stderr);
    let rl = r.proc.terminate(LIMIT);
    assert_eq!(
        written(&out, &expected),
        (0..40).collect::<Vec<_>>(),
        "{}",
        rl.stderr
    );
    assert!(
        rl.stderr
            .contains("cam: a damaged frame (CRC mismatch on frame 5")
            && rl
                .stderr
                .contains("not acknowledged; connection closed, so that its sender sends it again"),
        "{}",
        rl.stderr
    );
    let json = std::fs::read_to_string(&stats).unwrap();
    // (counted when its fate is known: received, sent again)
    for (k, want) in [("received", 40.0), ("corrupt", 0.0), ("lost", 0.0)] {
        assert_eq!(stat(&json, "cam", k), want, "{k}: {json}\n{}", rl.stderr);
    }
}

#[test]
fn a_delta_frame_whose_reference_is_missing_is_not_acknowledged() {
    // Frames 0..3 handled, then a delta frame of a reference the receiver
    // does not hold (as after a frame lost before it): not acknowledged,
    // the connection closed; sent again on the next connection (as a key
    // frame), it is written.
    use bitmask_wire::{encode_frame, Header};
    let tmp = TempDir::new("delivery-no-reference");
    let out = tmp.join("out");
    let mut r = start_receiver(&["--out", out.to_str().unwrap()]);
    let mut frames = tagged_frames(0..3, 0x0f);
    // frame 3: a delta frame against a frame 1 the receiver never had
    let square = |x: usize| {
        let mut m = vec![0u8; 32 * 64];
        for row in 16..48 {
            m[row * 32 + x / 8..][..4].fill(0xff);
        }
        m
    };
    let mut enc = bitmask_codec::Encoder::new(bitmask_codec::Choice::Bilevel, 30);
    let (mut first, mut payload) = (Vec::new(), Vec::new());
    enc.encode(&square(64), 256, 64, 1, &mut first).unwrap();
    let f = enc.encode(&square(80), 256, 64, 3, &mut payload).unwrap();
    assert_eq!(f.flags, bitmask_codec::FLAG_DELTA);
    let mut h = Header::new(256, 64, 3, f.codec, payload.len() as u32);
    h.flags = f.flags;
    encode_frame(&h, &payload, &mut frames);
    // the connection: acknowledged up to 3, then closed at frame 3
    use bitmask_wire::{AckReader, Hello, HELLO_ACKS};
    let mut c = TcpStream::connect(&r.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(&Hello::new("cam").unwrap().with_flags(HELLO_ACKS).encode())
        .unwrap();
    c.write_all(&frames).unwrap();
    let mut acks = AckReader::default();
    let mut last = None;
    let mut b = [0u8; 64];
    loop {
        match c.read(&mut b) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                for chunk in b[..n].chunks(1) {
                    if let Some(a) = acks.push(chunk).unwrap() {
                        last = Some(a.next);
                    }
                }
            }
        }
    }
    assert_eq!(last, Some(3), "{}", r.proc.stderr());
    // sent again, on a resumed connection, whole
    assert_eq!(raw_sender_connection(&r.addr, true, 3..5, 5), 3);
    let rl = r.proc.terminate(LIMIT);
    assert!(
        rl.stderr.contains("cam: frame 3: ")
            && rl.stderr.contains("not acknowledged; connection closed"),
        "{}",
        rl.stderr
    );
    assert_eq!(list(&out).len(), 5, "{}", rl.stderr);
}

#[test]
fn frames_sent_again_after_a_reconnect_are_skipped_and_counted() {
    // A sender that resumes but sends everything again (one that does not
    // wait for the first acknowledgement): the receiver writes each frame
    // once and counts the repeats as `resent`.
    let tmp = TempDir::new("delivery-resent");
    let out = tmp.join("out");
    let stats = tmp.join("stats.json");
    let mut r = start_receiver(&[
        "--out",
        out.to_str().unwrap(),
        "--format",
        "raw",
        "--stats-json",
        stats.to_str().unwrap(),
    ]);
    assert_eq!(raw_sender_connection(&r.addr, false, 0..5, 5), 0);
    // the record says 5 were handled; frames 0..5 come again anyway
    assert_eq!(raw_sender_connection(&r.addr, true, 0..8, 8), 5);
    let rl = r.proc.terminate(LIMIT);
    let json = std::fs::read_to_string(&stats).unwrap();
    assert_eq!(stat(&json, "cam", "received"), 8.0, "{json}\n{}", rl.stderr);
    assert_eq!(stat(&json, "cam", "resent"), 5.0, "{json}\n{}", rl.stderr);
    assert_eq!(stat(&json, "cam", "lost"), 0.0, "{json}");
    let files = list(&out);
    assert_eq!(files.len(), 8, "each frame written once: {files:?}");
    for q in 0..8u8 {
        assert_eq!(read(&out.join(format!("frame-{q:06}.raw"))), [q, 0x0f]);
    }
    assert!(
        rl.stderr
            .contains("resumed at frame 5 (5 frame(s) sent again were handled before and skipped)"),
        "{}",
        rl.stderr
    );
    assert!(
        rl.stderr.contains("5 sent again and skipped"),
        "the summary counts them:\n{}",
        rl.stderr
    );
}

#[test]
fn frames_a_restarted_receiver_finds_on_disk_are_not_written_twice() {
    // The receiver wrote frames 0..5, confirmed 0 and 1, and was killed;
    // its successor on the same directory has no record of them, so the
    // resuming sender's repeats (2..5) are recognised by their files (same
    // name, same bytes, no older than the frame before's).
    let tmp = TempDir::new("delivery-on-disk");
    let out = tmp.join("out");
    let stats = tmp.join("stats.json");
    let recv = |extra: &[&str]| {
        let mut a = vec!["--out", out.to_str().unwrap(), "--format", "pbm"];
        a.extend_from_slice(extra);
        start_receiver(&a)
    };
    let sorted = || {
        let mut files = list(&out);
        files.sort();
        files
    };
    let r1 = recv(&[]);
    assert_eq!(raw_sender_connection(&r1.addr, false, 0..5, 5), 0);
    drop(r1); // SIGKILL
    let mut r2 = recv(&["--stats-json", stats.to_str().unwrap()]);
    // (its connection breaks after 2 and 3: the next goes on looking on
    // disk, where 4 is too)
    assert_eq!(raw_sender_connection(&r2.addr, true, 2..4, 4), 0);
    assert_eq!(raw_sender_connection(&r2.addr, true, 4..8, 8), 4);
    let rl = r2.proc.terminate(LIMIT);
    let want: Vec<String> = (0..8).map(|q| format!("frame-{q:06}.pbm")).collect();
    assert_eq!(sorted(), want, "{}", rl.stderr);
    let json = std::fs::read_to_string(&stats).unwrap();
    assert_eq!(stat(&json, "cam", "received"), 3.0, "{json}\n{}", rl.stderr);
    assert_eq!(stat(&json, "cam", "resent"), 3.0, "{json}\n{}", rl.stderr);
    // A sender that starts its numbering again at 0 (the same bytes: a
    // blank scene), after another restart: frame 0 cannot be vouched for
    // (no frame before it) and is written again, and so is every frame
    // after it: the files of 1.. are the earlier run's, not this one's
    // (they were taken as written, and lost).
    let r3 = recv(&[]);
    assert_eq!(raw_sender_connection(&r3.addr, true, 0..3, 3), 0);
    drop(r3);
    let mut want: Vec<String> = (0..8)
        .map(|q| format!("frame-{q:06}.pbm"))
        .chain((0..3).map(|q| format!("frame-{q:06}.1.pbm")))
        .collect();
    want.sort();
    assert_eq!(sorted(), want);
}

#[test]
fn two_senders_sharing_a_name_on_one_host_lose_no_frame() {
    // Two cameras on one host, both with the default name: their resumed
    // connections would find each other's record of handled frames, and
    // frames below it would be skipped as handled, and confirmed. Started
    // together their sequence numbers overlap, so a frame count alone
    // cannot tell; the record named in the acknowledgements can.
    let tmp = TempDir::new("delivery-shared-name");
    let (a_in, b_in) = (tmp.join("a"), tmp.join("b"));
    let a_masks = inputs(&a_in);
    let b_masks = three_inputs(&b_in, W, H, 11, scene_image);
    let out = tmp.join("out");
    let mut r = start_receiver(&["--out", out.to_str().unwrap(), "--format", "raw"]);
    let n = 60u64;
    let sender = |dir: &Path| {
        let mut c = Command::new(bin("bitmask-send"));
        c.args(["--to", &r.addr, "--name", "twin", "--no-drop", "--loop"])
            .args(["--fps", "20", "--count", &n.to_string()])
            .arg(dir)
            // (the host-wide name claim would part them before they connect,
            // as two_senders_of_one_name_on_one_host_are_parted_at_the_start
            // checks; this is the receiver-side check, for senders that
            // do not see each other's claims, e.g. in containers)
            .env("BITMASK_SEND_NO_NAME_CLAIM", "1");
        Proc::spawn(&mut c)
    };
    let (mut a, mut b) = (sender(&a_in), sender(&b_in));
    let (af, bf) = (a.wait(LIMIT * 3), b.wait(LIMIT * 3));
    let rl = r.proc.terminate(LIMIT);
    for (who, f) in [("a", &af), ("b", &bf)] {
        assert!(
            f.status.success() && f.stderr.contains(&format!("confirmed {n};")),
            "{who}: {}\n{}\nreceiver:\n{}",
            f.status,
            f.stderr,
            rl.stderr
        );
    }
    // every frame of each is on disk, bit-exact (one of each number under
    // a .N name)
    let mut found = [vec![false; n as usize], vec![false; n as usize]];
    for name in list(&out) {
        let Some(rest) = name.strip_prefix("frame-") else {
            continue;
        };
        let seq: usize = rest[..6].parse().unwrap();
        let bytes = read(&out.join(&name));
        for (k, masks) in [&a_masks, &b_masks].into_iter().enumerate() {
            if seq < n as usize && bytes == masks[seq % 3] {
                found[k][seq] = true;
            }
        }
    }
    for (who, f) in ["a", "b"].iter().zip(&found) {
        let missing: Vec<usize> = (0..n as usize).filter(|&q| !f[q]).collect();
        assert!(
            missing.is_empty(),
            "frames of {who} never written: {missing:?}\na:\n{}\nb:\n{}\nreceiver:\n{}",
            af.stderr,
            bf.stderr,
            rl.stderr
        );
    }
    // The first to find the other's record goes on under a name of its
    // own, so they stop ending each other's connections: a few reconnects
    // in all, not one per frame.
    let renamed: Vec<&Finished> = [&af, &bf]
        .into_iter()
        .filter(|f| f.stderr.contains("this one goes on as \"twin-pid"))
        .collect();
    assert_eq!(renamed.len(), 1, "a:\n{}\nb:\n{}", af.stderr, bf.stderr);
    let reconnects =
        summary_count(&af.stderr, "reconnects") + summary_count(&bf.stderr, "reconnects");
    assert!(
        reconnects <= 4,
        "{reconnects} reconnects\na:\n{}\nb:\n{}\nreceiver:\n{}",
        af.stderr,
        bf.stderr,
        rl.stderr
    );
}

#[test]
fn two_senders_of_one_name_on_one_host_are_parted_at_the_start() {
    // The running camera keeps its name, directory and connection; the
    // second sender of its name goes on as NAME-pidPID from its first
    // frame. Then, the first gone, a sender of that name keeps it.
    let tmp = TempDir::new("delivery-claim");
    let input = tmp.join("in");
    let masks = inputs(&input);
    let out = tmp.join("out");
    let mut r = start_receiver(&[
        "--out",
        out.to_str().unwrap(),
        "--per-sender",
        "--format",
        "raw",
    ]);
    let mut first = Proc::spawn(
        Command::new(bin("bitmask-send"))
            .args(["--to", &r.addr, "--name", "cam", "--loop", "--fps", "20"])
            .arg(&input),
    );
    let t = Instant::now();
    let written = || std::fs::read_dir(out.join("cam")).map_or(0, |d| d.count());
    while written() < 3 && t.elapsed() < LIMIT {
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = run(Command::new(bin("bitmask-send"))
        .args(["--to", &r.addr, "--name", "cam", "--count", "3"])
        .arg(&input));
    let ff = first.terminate(LIMIT);
    let third = run(Command::new(bin("bitmask-send"))
        .args(["--to", &r.addr, "--name", "cam", "--count", "1"])
        .arg(&input));
    let rl = r.proc.terminate(LIMIT);
    let why = format!(
        "first:\n{}\nsecond:\n{}\nthird:\n{}\nreceiver:\n{}",
        ff.stderr, second.stderr, third.stderr, rl.stderr
    );
    assert!(second.status.success(), "{why}");
    let own = second
        .stderr
        .split("this one goes on as \"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or_else(|| panic!("the second was not renamed: {why}"));
    assert!(own.starts_with("cam-pid"), "{own}: {why}");
    assert_eq!(list(&out.join(own)).len(), 3, "{why}");
    for (q, m) in masks.iter().enumerate() {
        assert_eq!(&read(&out.join(own).join(format!("frame-{q:06}.raw"))), m);
    }
    // the first was never disturbed: one connection, its name, and no
    // frame of the second in its directory (a frame file .1 would be one)
    assert!(ff.stderr.contains("reconnects 0"), "{why}");
    assert!(!ff.stderr.contains("goes on as"), "{why}");
    assert!(!third.stderr.contains("goes on as"), "{why}");
    assert!(
        list(&out.join("cam")).iter().any(|f| f.contains(".1.")),
        "the third sender's frame 0 beside the first's: {:?}\n{why}",
        list(&out.join("cam"))
    );
}

/// A TCP connection to `addr` from the local address `from` (any of
/// 127.0.0.0/8 is this host's, so a second "host" on loopback).
fn connect_from(from: &str, addr: &str) -> TcpStream {
    use socket2::{Domain, SockAddr, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let local: std::net::SocketAddr = format!("{from}:0").parse().unwrap();
    s.bind(&SockAddr::from(local)).unwrap();
    let to: std::net::SocketAddr = addr.parse().unwrap();
    s.connect(&SockAddr::from(to)).unwrap();
    s.into()
}

/// Raw 16x1 frames `seqs`, each payload `[seq, tag]`.
fn tagged_frames(seqs: std::ops::Range<u64>, tag: u8) -> Vec<u8> {
    use bitmask_wire::{encode_frame, Header, CODEC_RAW};
    let mut out = Vec::new();
    for q in seqs {
        encode_frame(
            &Header::new(16, 1, q, CODEC_RAW, 2),
            &[q as u8, tag],
            &mut out,
        );
    }
    out
}

#[test]
fn senders_on_two_hosts_sharing_a_name_are_kept_apart() {
    // Pis cloned from one SD card announce one host name. A connection from
    // the second host must not end the first one's (whose sender would then
    // connect again and end this one, and so on, giving up frames each
    // time), even while the first is quiet between frames (a time-lapse,
    // silent longer than --timeout): the first keeps the name, the second
    // is kept apart as name@ip, and each connection's frames all arrive.
    use bitmask_wire::Hello;
    let tmp = TempDir::new("delivery-two-hosts");
    let out = tmp.join("out");
    let stats = tmp.join("stats.json");
    let mut r = start_receiver(&[
        "--out",
        out.to_str().unwrap(),
        "--format",
        "raw",
        "--per-sender",
        "--timeout",
        "1",
        "--stats-json",
        stats.to_str().unwrap(),
    ]);
    let (first, second) = (out.join("twin"), out.join("twin@127.0.0.2"));
    let wait_files = |dir: &Path, n: usize, r: &Listening| {
        let t = Instant::now();
        while !(dir.is_dir() && list(dir).len() >= n) {
            assert!(
                t.elapsed() < LIMIT,
                "{} never held {n} files\nreceiver:\n{}",
                dir.display(),
                r.proc.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let hello = Hello::new("twin").unwrap().encode();
    let mut a = connect_from("127.0.0.1", &r.addr);
    a.write_all(&hello).unwrap();
    a.write_all(&tagged_frames(0..3, 0xaa)).unwrap();
    wait_files(&first, 3, &r);
    std::thread::sleep(Duration::from_millis(1500)); // quiet past --timeout
    let mut b = connect_from("127.0.0.2", &r.addr);
    b.write_all(&hello).unwrap();
    b.write_all(&tagged_frames(0..3, 0xbb)).unwrap();
    wait_files(&second, 3, &r);
    // A third host announcing the name the second is kept apart under is
    // not the second's stream: it does not end that connection, and its
    // frames are kept apart from the second's in turn.
    let third = out.join("twin@127.0.0.2@127.0.0.3");
    let mut c = connect_from("127.0.0.3", &r.addr);
    c.write_all(&Hello::new("twin@127.0.0.2").unwrap().encode())
        .unwrap();
    c.write_all(&tagged_frames(100..101, 0xcc)).unwrap();
    wait_files(&third, 1, &r);
    // the first host's connection is still read
    a.write_all(&tagged_frames(3..6, 0xaa)).unwrap();
    b.write_all(&tagged_frames(3..6, 0xbb)).unwrap();
    wait_files(&first, 6, &r);
    wait_files(&second, 6, &r);
    for s in [&a, &b, &c] {
        s.shutdown(Shutdown::Write).unwrap();
    }
    let rl = r.proc.terminate(LIMIT);
    assert_eq!(list(&third), ["frame-000100.raw"]);
    assert_eq!(read(&third.join("frame-000100.raw")), [100, 0xcc]);
    assert_eq!(list(&second).len(), 6, "{}", rl.stderr);
    for (dir, tag) in [(&first, 0xaa), (&second, 0xbb)] {
        for q in 0..6u8 {
            assert_eq!(
                read(&dir.join(format!("frame-{q:06}.raw"))),
                [q, tag],
                "{}\n{}",
                dir.display(),
                rl.stderr
            );
        }
    }
    let json = std::fs::read_to_string(&stats).unwrap();
    assert_eq!(stat(&json, "twin", "received"), 6.0, "{json}");
    assert_eq!(stat(&json, "twin", "lost"), 0.0, "{json}");
    assert_eq!(stat(&json, "twin@127.0.0.2", "received"), 6.0, "{json}");
    assert_eq!(
        stat(&json, "twin@127.0.0.2@127.0.0.3", "received"),
        1.0,
        "{json}"
    );
    assert!(
        rl.stderr.contains(
            "senders on two hosts share the name \"twin\" (127.0.0.1 and 127.0.0.2): frames \
             from 127.0.0.2 are kept apart as \"twin@127.0.0.2\""
        ),
        "{}",
        rl.stderr
    );
    assert!(!rl.stderr.contains("connected again"), "{}", rl.stderr);
}
