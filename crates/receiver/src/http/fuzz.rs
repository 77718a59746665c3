//! Deterministic randomized hostile-input tests of the live view's request
//! head handling: [`Pending::next`] (the accept thread), [`serve_one`] (a
//! worker) and [`route`], over loopback sockets.
//!
//! Valid request heads are generated, then truncated, byte-flipped, given
//! garbage, NULs, bare LFs, too many or too long headers, odd methods,
//! paths and percent-encodings; or the head is random bytes. Each goes
//! through the same steps as in the receiver, and the answer must be the
//! documented one, worked out here independently of the code under test
//! (only the parse itself is `httparse`'s, as the module documents): a
//! whole head is routed (200, 404, 405 with `Allow`, 400 for a bad
//! percent-encoding); a malformed one is 400; more than 32 headers or a
//! head of [`MAX_HEAD`] bytes and still not complete, 431; a head cut
//! short by the client's close gets no answer. Every answer is one
//! well-formed response: a status line, `Content-Length` equal to the body
//! sent (none for `HEAD`), `Connection: close`.

use super::*;
use crate::test_rng::Rng;

/// The one sender the view knows, with one frame shown.
const SENDER: &str = "cam one";

/// A view's shared state without its threads: one sender with a 10x2 mask.
fn shared() -> Shared {
    let stats = StatsRegistry::new();
    crate::stats::lock(&stats.sender(SENDER)).connected("127.0.0.1:1", "tcp");
    let slot = Arc::new(Slot::new());
    copy(
        &mut lock(&slot.latest),
        &Header::new(10, 2, 0, 0, 4),
        &[0xff, 0xc0, 0, 0],
    );
    slot.last_frame_ns.store(1, Relaxed);
    let mut slots = BTreeMap::new();
    slots.insert(SENDER.to_string(), slot);
    Shared {
        epoch: Instant::now(),
        interval_ns: 1_000_000,
        http_fps: 1000.0,
        stats,
        slots: RwLock::new(slots),
        requests: AtomicU64::new(0),
        pngs: AtomicU64::new(0),
        busy: AtomicU64::new(0),
    }
}

/// What the view must answer to a client that sends `bytes` and then
/// closes its side: a status and whether the response is a head alone (a
/// whole `HEAD` request, whatever its status), or nothing (a head cut short).
fn expected(bytes: &[u8]) -> Option<(u16, bool)> {
    // The head is read 2048 bytes at a time and parsed after each read,
    // until it is whole, malformed or MAX_HEAD long.
    let mut len = 0;
    let status = loop {
        len = (len + 2048).min(bytes.len());
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&bytes[..len]) {
            Ok(httparse::Status::Complete(_)) => {
                let method = req.method.unwrap();
                return Some((routed(method, req.path.unwrap()), method == "HEAD"));
            }
            Ok(httparse::Status::Partial) if len >= MAX_HEAD => break 431,
            Ok(httparse::Status::Partial) if len == bytes.len() => return None,
            Ok(httparse::Status::Partial) => {}
            Err(httparse::Error::TooManyHeaders) => break 431,
            Err(_) => break 400,
        }
    };
    Some((status, false))
}

/// The status of a whole request, from the module's documentation.
fn routed(method: &str, target: &str) -> u16 {
    // (the absolute form: what follows the authority, "/" when nothing does)
    let lower = target.to_ascii_lowercase();
    let target = match ["http://", "https://"]
        .iter()
        .find(|p| lower.starts_with(*p))
    {
        Some(p) => {
            let rest = &target[p.len()..];
            match rest.find(['/', '?']) {
                Some(i) if rest[i..].starts_with('?') => format!("/{}", &rest[i..]),
                Some(i) => rest[i..].to_string(),
                None => "/".to_string(),
            }
        }
        None => target.to_string(),
    };
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let pages = [
        "/",
        "/index.html",
        "/app.js",
        "/style.css",
        "/stats.json",
        "/latest.png",
    ];
    if !pages.contains(&path) {
        return 404;
    }
    if method != "GET" && method != "HEAD" {
        return 405;
    }
    if path != "/latest.png" {
        return 200;
    }
    let mut sender = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let Some(v) = strict_percent_decode(v) else {
            return 400;
        };
        if k == "sender" {
            sender = Some(v);
        }
    }
    match sender {
        Some(s) if s != SENDER => 404,
        _ => 200,
    }
}

/// `%XX` (two hex digits) and `+`, as RFC 3986 / HTML forms have them.
fn strict_percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b.get(i + 1..i + 3)?;
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return None;
                }
                let v = (hex[0] as char).to_digit(16)? * 16 + (hex[1] as char).to_digit(16)?;
                out.push(v as u8);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// A request head, valid or nearly so.
fn request(rng: &mut Rng) -> Vec<u8> {
    let method = rng.pick(&[
        "GET", "GET", "GET", "GET", "HEAD", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "get",
        "CONNECT", "TRACE", "G\tET",
    ]);
    let path = match rng.below(5) {
        0 | 4 => rng
            .pick(&["/", "/index.html", "/app.js", "/style.css", "/stats.json"])
            .to_string(),
        1 => {
            let q = rng.pick(&[
                "",
                "sender=cam+one",
                "sender=cam%20one",
                "sender=%63am+one",
                "t=123&sender=cam+one",
                "sender=ghost",
                "sender=",
                "sender",
                "sender=%zz",
                "sender=%",
                "sender=%4",
                "sender=%+5",
                "sender=%-5",
                "sender=%C3%A9",
                "sender=%C3",
                "sender=%00",
                "&&&=&sender=cam+one&",
                "sender=a&sender=cam+one",
                "sender=cam+one&sender=a",
                "x=%zz&sender=cam+one",
            ]);
            format!("/latest.png?{q}")
        }
        2 => rng
            .pick(&[
                "/nope",
                "/../etc/passwd",
                "*",
                "http://x/",
                "HTTP://x:8080/stats.json",
                "http://x?y",
                "http://x",
                "https://[::1]:1/latest.png?sender=cam+one",
                "http:/x/",
                "//",
                "/index.html/",
                "/stats.json?x=1",
                "/%2e%2e/",
                "/\u{e9}",
                "/latest.png#frag",
            ])
            .to_string(),
        _ => format!("/{}", "a".repeat(rng.below(10_000) as usize)), // 404, or too long
    };
    let version = if rng.pct(5) {
        rng.pick(&["HTTP/2.0", "HTTP/1.1 ", "HTTP/1", "http/1.1"])
    } else {
        rng.pick(&["HTTP/1.1", "HTTP/1.0"])
    };
    let nl = if rng.pct(90) { "\r\n" } else { "\n" };
    let mut head = format!("{method} {path} {version}{nl}");
    let n_headers = match rng.below(4) {
        0 => 0,
        1 => rng.below(5),
        2 => 30 + rng.below(6), // around the limit of 32
        _ => rng.below(50),
    };
    for i in 0..n_headers {
        let name = if rng.pct(3) {
            rng.pick(&["Bad Name", "", "X:Y", "\u{e9}"])
        } else {
            rng.pick(&["Host", "Accept", "X-A", "User-Agent", "Cookie"])
        };
        let value = if rng.pct(5) {
            "v".repeat(rng.below(9000) as usize)
        } else {
            format!("value-{i}")
        };
        head.push_str(&format!("{name}: {value}{nl}"));
    }
    head.push_str(nl);
    if rng.pct(10) {
        head.push_str("a request body nobody reads");
    }
    head.into_bytes()
}

/// A hostile version of `head`.
fn mutate(rng: &mut Rng, mut b: Vec<u8>) -> Vec<u8> {
    for _ in 0..1 + rng.below(3) {
        match rng.below(9) {
            0 => {
                let n = rng.below(b.len() as u64 + 1) as usize;
                b.truncate(n);
            }
            1 if !b.is_empty() => {
                let i = rng.below(b.len() as u64) as usize;
                b[i] ^= 1 << rng.below(8);
            }
            2 if !b.is_empty() => {
                let i = rng.below(b.len() as u64) as usize;
                b[i] = rng.next() as u8;
            }
            3 => {
                let i = rng.below(b.len() as u64 + 1) as usize;
                let n = rng.below(16) as usize;
                let junk = rng.bytes(n);
                b.splice(i..i, junk);
            }
            4 => {
                let i = rng.below(b.len() as u64 + 1) as usize;
                b.insert(
                    i,
                    [0u8, b'\r', b'\n', b' ', b':', 0x80][rng.below(6) as usize],
                );
            }
            // a stretch repeated (a doubled header line, say)
            5 if b.len() > 2 => {
                let i = rng.below(b.len() as u64 - 1) as usize;
                let j = i + 1 + rng.below((b.len() - i - 1) as u64) as usize;
                let again = b[i..j].to_vec();
                b.splice(j..j, again);
            }
            6 => {
                let n = rng.below(3000) as usize;
                b = rng.bytes(n);
            }
            7 => {
                // the head never ends
                while let Some(p) = b.windows(2).position(|w| w == b"\n\n" || w == b"\n\r") {
                    b.truncate(p + 1);
                }
                let pad = format!("X-Pad: {}\r\n", "p".repeat(rng.below(12_000) as usize));
                b.extend_from_slice(pad.as_bytes());
            }
            _ => {}
        }
    }
    b
}

/// A loopback listener and a client connection that has sent `bytes` and
/// closed its side; returns (client, server side).
fn connected(l: &TcpListener, bytes: &[u8]) -> (TcpStream, TcpStream) {
    let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    c.write_all(bytes).unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let (s, _) = l.accept().unwrap();
    (c, s)
}

/// The response a client got, checked for form (`head_only`: no body
/// after its head): its status (None: no response at all).
fn answer(mut c: TcpStream, head_only: bool, input: &[u8]) -> Option<(u16, bool)> {
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut resp = Vec::new();
    c.read_to_end(&mut resp).unwrap();
    if resp.is_empty() {
        return None;
    }
    let show = || String::from_utf8_lossy(input).into_owned();
    let end = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head for {:?}", show()));
    let head = std::str::from_utf8(&resp[..end]).expect("an ASCII response head");
    let body = &resp[end + 4..];
    let status: u16 = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("status line {head:?}"));
    assert!(
        head.starts_with(&format!("HTTP/1.1 {status} {}\r\n", reason(status))),
        "{head:?}"
    );
    assert!(head.contains("\r\nConnection: close"), "{head:?}");
    let len: usize = head
        .split("\r\n")
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no Content-Length in {head:?}"));
    if head_only {
        assert!(body.is_empty(), "a body for HEAD");
    } else {
        assert_eq!(body.len(), len, "Content-Length of {head:?}");
    }
    assert_eq!(
        head.contains("\r\nAllow: GET, HEAD"),
        status == 405,
        "{head:?}"
    );
    Some((status, head_only))
}

/// Whether the answer to `bytes` is a head alone.
fn head_only(bytes: &[u8]) -> bool {
    expected(bytes).is_some_and(|e| e.1)
}

/// Random and mutated heads through the accept thread's reading
/// (`Pending::next`), then a worker (`serve_one`), as the view serves them;
/// and half of them straight to a worker, which reads the head itself.
#[test]
fn hostile_request_heads_get_the_documented_answers() {
    let t = Instant::now();
    let shared = shared();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut rng = Rng(7);
    let mut tally = BTreeMap::new();
    for round in 0..1500 {
        let mut bytes = request(&mut rng);
        if rng.pct(60) {
            bytes = mutate(&mut rng, bytes);
        }
        let want = expected(&bytes);
        let (c, s) = connected(&l, &bytes);
        let via_accept = round % 2 == 0;
        if via_accept {
            s.set_nonblocking(true).unwrap();
            let mut p = Pending {
                stream: s,
                accepted: Instant::now(),
                head: Vec::new(),
            };
            // (everything was sent before: it is all there, then the end)
            let next = loop {
                match p.next(true) {
                    Next::Wait => std::thread::sleep(Duration::from_micros(100)),
                    n => break n,
                }
            };
            assert!(
                p.head.len() < MAX_HEAD + 2048,
                "head buffer of {} B",
                p.head.len()
            );
            match next {
                Next::Serve => {
                    p.stream.set_nonblocking(false).unwrap();
                    serve_one(p.stream, p.accepted, &shared, &mut p.head).unwrap();
                }
                Next::Drop => drop(p),
                n => panic!("{n:?} for {:?}", String::from_utf8_lossy(&bytes)),
            }
        } else {
            serve_one(s, Instant::now(), &shared, &mut Vec::new()).unwrap();
        }
        let got = answer(c, head_only(&bytes), &bytes);
        assert_eq!(
            got,
            want,
            "round {round} ({}): {:?}",
            if via_accept {
                "accept thread"
            } else {
                "worker"
            },
            String::from_utf8_lossy(&bytes[..bytes.len().min(300)])
        );
        *tally.entry(got.map(|g| g.0)).or_insert(0) += 1;
    }
    eprintln!("http heads: {tally:?} in {:?}", t.elapsed());
    for status in [None, Some(200), Some(400), Some(404), Some(405), Some(431)] {
        assert!(tally.contains_key(&status), "no case answered {status:?}");
    }
}

/// Past the head deadline, a worker answers 408 at once to a head still
/// incomplete, and still serves one that is whole; the accept thread says
/// `Late` (its 408) without reading further.
#[test]
fn heads_past_their_deadline_are_answered_408_without_waiting() {
    let shared = shared();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let long_ago = Instant::now()
        .checked_sub(HEAD_DEADLINE + Duration::from_millis(10))
        .unwrap();
    let mut rng = Rng(11);
    for _ in 0..100 {
        let whole = request(&mut rng);
        let cut = rng.below(whole.len() as u64) as usize;
        for (bytes, prefill) in [(&whole[..], false), (&whole[..cut], rng.pct(50))] {
            let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
            c.write_all(bytes).unwrap();
            // A head cut short: the client keeps its side open (it is
            // slow, not gone). Else it closes it, so that the worker's
            // drain after its answer ends at once.
            let cut_short = expected(bytes).is_none();
            if !cut_short {
                c.shutdown(Shutdown::Write).unwrap();
            }
            let (s, _) = l.accept().unwrap();
            let mut head = Vec::new();
            if prefill {
                s.set_nonblocking(true).unwrap();
                let mut p = Pending {
                    stream: s.try_clone().unwrap(),
                    accepted: long_ago,
                    head: Vec::new(),
                };
                let n = p.next(true);
                assert!(matches!(n, Next::Late | Next::Serve), "{n:?}");
                head = p.head;
                s.set_nonblocking(false).unwrap();
            }
            let t = Instant::now();
            serve_one(s, long_ago, &shared, &mut head).unwrap();
            assert!(
                t.elapsed() < Duration::from_millis(500),
                "{:?}",
                t.elapsed()
            );
            if cut_short {
                c.shutdown(Shutdown::Write).unwrap();
            }
            let got = answer(c, head_only(bytes), bytes);
            let want = expected(bytes).or(Some((408, false)));
            assert_eq!(got, want, "{:?}", String::from_utf8_lossy(bytes));
        }
    }
}

/// The running view (accept thread, queue, workers), fed hostile heads one
/// after the other: each gets its documented answer, and afterwards the
/// view still serves.
#[test]
fn the_running_view_answers_hostile_heads() {
    let reg = StatsRegistry::new();
    let v = View::start("127.0.0.1:0", 1000.0, reg).unwrap();
    let mut feed = v.feed(SENDER);
    feed.publish(&Header::new(10, 2, 0, 0, 4), &[0xff, 0xc0, 0, 0]);
    let a = v.local_addr();
    let mut rng = Rng(99);
    for round in 0..300 {
        let mut bytes = request(&mut rng);
        if rng.pct(70) {
            bytes = mutate(&mut rng, bytes);
        }
        let mut c = TcpStream::connect(a).unwrap();
        // (the view may answer, and close, before all of a long head is in)
        let _ = c.write_all(&bytes);
        let _ = c.shutdown(Shutdown::Write);
        let got = answer(c, head_only(&bytes), &bytes);
        assert_eq!(
            got,
            expected(&bytes),
            "round {round}: {:?}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(300)])
        );
    }
    let mut c = TcpStream::connect(a).unwrap();
    c.write_all(b"GET /latest.png HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(answer(c, false, b""), Some((200, false)));
}

/// `percent_decode` read the two characters after `%` with
/// `u8::from_str_radix`, which takes a leading `+` sign: `%+5` was decoded
/// as the byte 0x05 instead of being refused as a bad percent-encoding
/// (400), so `/latest.png?sender=%+5` was answered 404 "unknown sender".
#[test]
fn a_sign_is_no_hex_digit_in_a_percent_encoding() {
    assert_eq!(percent_decode("%+5"), None);
    assert_eq!(percent_decode("a%+Fb"), None);
    let shared = shared();
    assert_eq!(route(&shared, "GET", "/latest.png?sender=%+5").status, 400);
}
