//! The live view (`bitmask-recv --http`), seen through headless Chromium on
//! loopback: the page loads, its mask image changes where the sender's masks
//! change, its numbers agree with `/stats.json` and with the receiver's own
//! summary, and bad requests get 4xx without hurting the server.
//!
//! `UPDATE_DOCS=1 cargo test -p bitmask-tests --test http_view` also saves the
//! screenshot taken while a sender streams as `docs/img/live-view.png` (the
//! README's picture).

use bitmask_tests::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const W: u32 = 320;
const H: u32 = 240;
const WINDOW: (u32, u32) = (900, 520);

/// Chromium's binary, or None (after [`skip`]) when it is not installed.
fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("BITMASK_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    for p in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if Path::new(p).exists() {
            return Some(PathBuf::from(p));
        }
    }
    skip("chromium is not installed (as root: apt-get install -y chromium; `cargo xtask ci` does it)");
    None
}

/// Runs headless Chromium on `url` with a fresh profile and `extra` arguments.
fn chrome(browser: &Path, dir: &TempDir, tag: &str, url: &str, extra: &[&str]) -> Finished {
    chrome_sized(browser, dir, tag, url, WINDOW, extra)
}

fn chrome_sized(
    browser: &Path,
    dir: &TempDir,
    tag: &str,
    url: &str,
    window: (u32, u32),
    extra: &[&str],
) -> Finished {
    let profile = dir.join(&format!("profile-{tag}"));
    let out = run(Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--window-size={},{}", window.0, window.1))
        .args(extra)
        .arg(url));
    assert!(
        out.status.success(),
        "chromium failed: {}\n{}",
        out.status,
        out.stderr
    );
    out
}

fn screenshot(browser: &Path, dir: &TempDir, tag: &str, url: &str) -> (PathBuf, image::RgbImage) {
    screenshot_sized(browser, dir, tag, url, WINDOW)
}

fn screenshot_sized(
    browser: &Path,
    dir: &TempDir,
    tag: &str,
    url: &str,
    window: (u32, u32),
) -> (PathBuf, image::RgbImage) {
    let path = dir.join(&format!("{tag}.png"));
    chrome_sized(
        browser,
        dir,
        tag,
        url,
        window,
        &[
            "--virtual-time-budget=3000",
            &format!("--screenshot={}", path.display()),
        ],
    );
    let img = image::open(&path)
        .unwrap_or_else(|e| panic!("screenshot {}: {e}", path.display()))
        .to_rgb8();
    (path, img)
}

/// One raw HTTP/1.1 exchange: returns (status, head, body).
fn http(addr: &str, request: &[u8]) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).expect("connect to the live view");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(request).unwrap();
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(&resp)));
    let head = String::from_utf8_lossy(&resp[..split]).into_owned();
    let status = head
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    (status, head, resp[split + 4..].to_vec())
}

fn get(addr: &str, path: &str) -> (u16, String, Vec<u8>) {
    http(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes(),
    )
}

fn stats(addr: &str) -> serde_json::Value {
    let (st, _, body) = get(addr, "/stats.json");
    assert_eq!(st, 200);
    serde_json::from_slice(&body).expect("/stats.json is JSON")
}

fn sender<'a>(s: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    s["senders"]
        .as_array()
        .expect("senders array")
        .iter()
        .find(|x| x["name"] == name)
        .unwrap_or_else(|| panic!("no sender {name:?} in {s}"))
}

/// Polls /stats.json until `pred` holds for sender `name` (20 s at most).
fn wait_stats(addr: &str, name: &str, what: &str, pred: impl Fn(&serde_json::Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = stats(addr);
        let ok = s["senders"]
            .as_array()
            .and_then(|a| a.iter().find(|x| x["name"] == name))
            .is_some_and(&pred);
        if ok {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {s}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A white disc of radius `r` centred at (cx, cy) on black.
fn disc(cx: i32, cy: i32, r: i32) -> image::DynamicImage {
    image::DynamicImage::ImageLuma8(image::GrayImage::from_fn(W, H, |x, y| {
        let (dx, dy) = (x as i32 - cx, y as i32 - cy);
        image::Luma([if dx * dx + dy * dy <= r * r { 255 } else { 0 }])
    }))
}

/// Frame `i` of a small moving scene: two discs, a wavy horizon.
fn scene(i: u32) -> image::DynamicImage {
    let t = i as f64;
    image::DynamicImage::ImageLuma8(image::GrayImage::from_fn(W, H, |x, y| {
        let (x, y) = (x as f64, y as f64);
        let d1 = (x - 60.0 - 16.0 * t).powi(2) + (y - 70.0).powi(2) <= 34.0f64.powi(2);
        let d2 = (x - 250.0).powi(2) + (y - 50.0 - 6.0 * t).powi(2) <= 22.0f64.powi(2);
        let ground = y > 175.0 + 14.0 * (x / 28.0 + t / 2.0).sin();
        image::Luma([if d1 || d2 || ground { 255 } else { 0 }])
    }))
}

/// Bounding box (x0, y0, x1, y1 inclusive) of the pure-white pixels: only the
/// mask's 1 bits are drawn pure white (the page's text is at most #e6e6e8).
fn white_bbox(img: &image::RgbImage) -> Option<(u32, u32, u32, u32)> {
    let mut b: Option<(u32, u32, u32, u32)> = None;
    for (x, y, p) in img.enumerate_pixels() {
        if p.0 == [255, 255, 255] {
            b = Some(match b {
                None => (x, y, x, y),
                Some((x0, y0, x1, y1)) => (x0.min(x), y0.min(y), x1.max(x), y1.max(y)),
            });
        }
    }
    b
}

/// The text of the element marked `data-k="key"` in the card of sender `name`.
fn dom_value(dom: &str, name: &str, key: &str) -> String {
    let main = dom
        .find("id=\"senders\"")
        .expect("the senders list in the DOM");
    let card = dom[main..]
        .find(&format!("data-name=\"{name}\""))
        .unwrap_or_else(|| panic!("no card for {name:?} in the DOM:\n{dom}"))
        + main;
    let at = dom[card..]
        .find(&format!("data-k=\"{key}\""))
        .unwrap_or_else(|| panic!("no {key} in the card"))
        + card;
    let start = dom[at..].find('>').unwrap() + at + 1;
    let end = dom[start..].find('<').unwrap() + start;
    dom[start..end].trim().to_string()
}

/// The numbers of the receiver's summary line for sender `name`:
/// `bitmask-recv: NAME: N frames (L lost, C corrupt, I incomplete), F fps,
/// M Mbit/s, ratio R, latency p50 A ms p99 B ms`, in that order.
fn summary_numbers(stderr: &str, name: &str) -> Vec<f64> {
    let prefix = format!("bitmask-recv: {name}: ");
    let line = stderr
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no summary line for {name:?} in:\n{stderr}"));
    line.replace("p50", "")
        .replace("p99", "")
        .split(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-'))
        .filter(|s| !s.is_empty() && *s != "." && *s != "-")
        .map(|s| s.parse().unwrap_or(f64::NAN))
        .collect()
}

/// `a` and `b` agree to the coarser of their printed precisions (`unit`).
fn close(what: &str, a: f64, b: f64, unit: f64) {
    assert!(
        (a - b).abs() <= unit / 2.0 + 1e-9,
        "{what}: {a} vs {b} (printed to {unit})"
    );
}

fn json_u64(v: &serde_json::Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} is not a count in {v}"))
}

fn send(addr: &str, name: &str, image: &Path, count: u64) {
    let out = run(Command::new(bin("bitmask-send")).args([
        "--to",
        addr,
        "--name",
        name,
        "--loop",
        "--no-drop",
        "--count",
        &count.to_string(),
        image.to_str().unwrap(),
    ]));
    assert!(out.status.success(), "bitmask-send: {}", out.stderr);
}

#[test]
fn live_view_in_headless_chromium() {
    let Some(browser) = chromium() else { return };
    let dir = TempDir::new("http-view");
    let (n1, n2) = (30u64, 30u64);
    // (the receiver runs until SIGTERM, which makes it print its summary)
    // Disc on the left, then the same disc on the right.
    let (a, b) = (dir.join("a.png"), dir.join("b.png"));
    save_image(&disc(90, 120, 60), &a);
    save_image(&disc(230, 120, 60), &b);
    let out = dir.join("out");
    let mut recv = start_receiver(&[
        "--out",
        out.to_str().unwrap(),
        "--http",
        "127.0.0.1:0",
        "--http-fps",
        "20",
    ]);
    let line = recv
        .proc
        .wait_for_stderr("live view at http://", Duration::from_secs(20));
    let web = line
        .split("http://")
        .nth(1)
        .and_then(|s| s.split('/').next())
        .expect("address in the live-view log line")
        .to_string();
    let url = format!("http://{web}/");

    // Before any sender: the page and the JSON work, the image does not exist yet.
    assert_eq!(get(&web, "/").0, 200);
    assert_eq!(stats(&web)["senders"].as_array().map(Vec::len), Some(0));
    assert_eq!(get(&web, "/latest.png").0, 404);

    send(&recv.addr, "cam", &a, n1);
    wait_stats(&web, "cam", "the first stream", |x| {
        x["frames"] == n1 && x["state"] == "disconnected" && !x["shown_sequence"].is_null()
    });
    let (_, shot1) = screenshot(&browser, &dir, "shot1", &url);

    send(&recv.addr, "cam", &b, n2);
    wait_stats(&web, "cam", "the second stream", |x| {
        x["frames"] == n1 + n2 && x["state"] == "disconnected"
    });
    let (_, shot2) = screenshot(&browser, &dir, "shot2", &url);

    // The image changed exactly where the masks differ: the disc moved right by
    // 140 mask pixels, so its white box moved by 140 * (displayed / mask scale).
    let b1 = white_bbox(&shot1).expect("a white disc in the first screenshot");
    let b2 = white_bbox(&shot2).expect("a white disc in the second screenshot");
    let (w1, w2) = (b1.2 - b1.0 + 1, b2.2 - b2.0 + 1);
    assert!(
        w1.abs_diff(w2) <= 1 && w1 > 20,
        "disc widths {b1:?} vs {b2:?}"
    );
    assert!(
        b1.1.abs_diff(b2.1) <= 1 && b1.3.abs_diff(b2.3) <= 1,
        "{b1:?} vs {b2:?}"
    );
    let scale = w1 as f64 / 121.0; // the disc is 121 mask pixels wide
    let moved = b2.0 as f64 - b1.0 as f64;
    assert!(
        (moved - 140.0 * scale).abs() <= 2.0 + scale,
        "disc moved {moved} px on the page, expected {:.1}",
        140.0 * scale
    );
    let differs = |x: u32, y: u32| shot1.get_pixel(x, y) != shot2.get_pixel(x, y);
    let (cx1, cy1) = ((b1.0 + b1.2) / 2, (b1.1 + b1.3) / 2);
    let (cx2, cy2) = ((b2.0 + b2.2) / 2, (b2.1 + b2.3) / 2);
    assert!(
        differs(cx1, cy1) && differs(cx2, cy2),
        "disc centres unchanged"
    );
    // and not where both masks are black: midway between the discs
    let mid = (b1.2 + b2.0) / 2;
    assert!(!differs(mid, cy1), "pixel between the discs changed");

    // The page's numbers agree with /stats.json (the stream has ended, so they hold still).
    let dom = chrome(
        &browser,
        &dir,
        "dom",
        &url,
        &["--virtual-time-budget=3000", "--dump-dom"],
    );
    let dom = String::from_utf8_lossy(&dom.stdout).into_owned();
    let s = stats(&web);
    let cam = sender(&s, "cam");
    for key in ["frames", "lost", "corrupt"] {
        assert_eq!(
            dom_value(&dom, "cam", key),
            cam[key].to_string(),
            "{key} on the page vs /stats.json"
        );
    }
    assert_eq!(dom_value(&dom, "cam", "state"), "disconnected");
    assert_eq!(dom_value(&dom, "cam", "size"), format!("{W}×{H}"));
    assert_eq!(
        (cam["width"].as_u64(), cam["height"].as_u64()),
        (Some(W as u64), Some(H as u64))
    );
    let ratio: f64 = dom_value(&dom, "cam", "ratio")
        .parse()
        .expect("ratio is a number");
    let (mask, wire) = (json_u64(cam, "mask_bytes"), json_u64(cam, "wire_bytes"));
    assert_eq!(mask, (n1 + n2) * (W as u64 / 8) * H as u64, "mask bytes");
    close(
        "ratio (page/bytes)",
        ratio,
        mask as f64 / wire as f64,
        0.001,
    );

    // HTTP edge cases; the server survives all of them.
    assert_eq!(get(&web, "/nope").0, 404);
    assert_eq!(get(&web, "/latest.png?sender=ghost").0, 404);
    let (st, head, _) = http(
        &web,
        b"POST /stats.json HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
    );
    assert_eq!(st, 405, "{head}");
    assert_eq!(http(&web, b"\x16\x03\x01\x02\x00garbage\r\n\r\n").0, 400);
    {
        // a client that connects and says nothing holds one worker, not the view
        let _idle = TcpStream::connect(&web).unwrap();
        assert_eq!(get(&web, "/latest.png?sender=cam").0, 200);
    }
    let (st, head, png) = get(&web, "/latest.png?sender=cam");
    assert_eq!(st, 200);
    assert!(head.contains("image/png"), "{head}");
    let shown = image::load_from_memory(&png).expect("a PNG").to_luma8();
    assert_eq!(shown.dimensions(), (W, H));
    assert_eq!(
        shown.get_pixel(230, 120).0,
        [255],
        "newest mask: disc on the right"
    );
    assert_eq!(shown.get_pixel(90, 120).0, [0]);

    // Live: another sender streams a moving scene at 20 fps; meanwhile its card
    // says connected, with a frame rate, a plot and a mask (the README's picture).
    let scene_dir = dir.join("scene");
    std::fs::create_dir_all(&scene_dir).unwrap();
    for i in 0..12 {
        save_image(&scene(i), &scene_dir.join(format!("s{i:02}.png")));
    }
    let live = Proc::spawn(Command::new(bin("bitmask-send")).args([
        "--to",
        &recv.addr,
        "--name",
        "yard",
        "--fps",
        "20",
        "--loop",
        "--count",
        "600",
        scene_dir.to_str().unwrap(),
    ]));
    wait_stats(&web, "yard", "the live stream", |x| {
        x["state"] == "connected"
            && x["fps"].as_f64().unwrap_or(0.0) > 0.0
            && x["history"]["fps"].as_array().map_or(0, Vec::len) >= 3
    });
    let live_dom = chrome(
        &browser,
        &dir,
        "live-dom",
        &url,
        &["--virtual-time-budget=2000", "--dump-dom"],
    );
    let live_dom = String::from_utf8_lossy(&live_dom.stdout).into_owned();
    assert_eq!(dom_value(&live_dom, "yard", "state"), "connected");
    let fps_now: f64 = dom_value(&live_dom, "yard", "fps")
        .parse()
        .expect("fps on the page is a number");
    assert!(fps_now > 0.0, "a live stream shows a frame rate");
    assert_eq!(dom_value(&live_dom, "cam", "state"), "disconnected");
    let (path3, shot3) = screenshot_sized(&browser, &dir, "live", &url, (900, 960));
    assert!(white_bbox(&shot3).is_some(), "the live masks are drawn");
    if std::env::var_os("UPDATE_DOCS").is_some() {
        let dest = root().join("docs/img/live-view.png");
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(&path3, &dest).unwrap();
        eprintln!("saved {}", dest.display());
    }
    drop(live); // killed: the receiver sees the connection break, and goes on

    // SIGTERM ends the receiver cleanly; its summary agrees with the view.
    let dom_num = |k: &str| -> f64 {
        let v = dom_value(&dom, "cam", k);
        v.parse()
            .unwrap_or_else(|_| panic!("{k} on the page is {v:?}, not a number"))
    };
    let term = Command::new("kill")
        .args(["-TERM", &recv.proc.id().to_string()])
        .status()
        .expect("run kill");
    assert!(term.success());
    let fin = recv.proc.wait(LIMIT);
    assert!(fin.status.success(), "bitmask-recv: {}", fin.stderr);
    let sum = summary_numbers(&fin.stderr, "cam");
    assert!(sum.len() >= 9, "summary numbers {sum:?}");
    let json = |k: &str| cam[k].as_f64().unwrap_or(f64::NAN);
    for (i, k) in ["frames", "lost", "corrupt", "incomplete"]
        .iter()
        .enumerate()
    {
        assert_eq!(sum[i], json(k), "{k}: summary vs /stats.json");
        assert_eq!(sum[i], dom_num(k), "{k}: summary vs page");
    }
    close("avg fps (summary/page)", sum[4], dom_num("avg_fps"), 0.1);
    close(
        "avg fps (page/json)",
        dom_num("avg_fps"),
        json("avg_fps"),
        0.1,
    );
    close(
        "avg Mbit/s (summary/page)",
        sum[5],
        dom_num("avg_mbps"),
        0.1,
    );
    close("ratio (summary/page)", sum[6], ratio, 0.01);
    close("ratio (page/json)", ratio, json("ratio"), 0.001);
    close(
        "latency p50 (summary/page)",
        sum[7],
        dom_num("total_latency_p50_ms"),
        0.1,
    );
    close(
        "latency p99 (summary/page)",
        sum[8],
        dom_num("total_latency_p99_ms"),
        0.1,
    );
    close(
        "latency p50 (page/json)",
        dom_num("total_latency_p50_ms"),
        json("total_latency_p50_ms"),
        0.01,
    );
}
