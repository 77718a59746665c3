//! `cargo xtask netbed` and `cargo xtask bench link`: two hosts on this
//! machine (network namespaces joined by veth), shaped like the Pis' links,
//! and the streaming tests of issue 5 run across them.
//!
//! Profiles:
//! - `ethernet`: sender ns <-veth-> receiver ns, `tbf rate 100mbit` on both
//!   ends (a Pi 2's 100BASE-TX: ~94 Mbit/s of TCP payload).
//! - `wifi`: sender ns <-veth-> middle ns <-veth-> receiver ns, `tbf rate
//!   20mbit` on both host ends; in the middle a user-space impairment proxy
//!   (this file: AF_PACKET sockets bridging the two veths) adds delay,
//!   jitter and loss, since this kernel has no netem.
//!
//! Every namespace is named `bmk<pid>-<n><role>` and deleted by a drop guard
//! (and stale ones of dead runs at the next start). Traffic never leaves
//! these namespaces.

use crate::util::{build_bins, root, sender_counter};
use anyhow::{bail, ensure, Context, Result};
use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

const RECV_IP: &str = "10.77.0.1";
const SEND_IP: &str = "10.77.0.2";
const PORT: u16 = 5000;
const W: usize = 1024;
const H: usize = 768;
const MASK_LEN: usize = W / 8 * H;
const WIRE_LEN: usize = MASK_LEN + 40;
const IMAGES: usize = 24;

// ------------------------------------------------------------------ shell helpers

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn tc(ns: &str, args: &[&str]) -> Result<()> {
    let mut full = vec!["netns", "exec", ns, "tc"];
    full.extend_from_slice(args);
    ip(&full)
}

/// Why the test bed cannot run here, or None when it can.
pub fn unavailable() -> Option<String> {
    if !crate::util::have("ip") || !crate::util::have("tc") {
        return Some("`ip` and `tc` (iproute2) are not on PATH".into());
    }
    let probe = format!("bmk{}-probe", std::process::id());
    match ip(&["netns", "add", &probe]) {
        Ok(()) => {
            let _ = ip(&["netns", "del", &probe]);
            None
        }
        Err(e) => Some(format!(
            "cannot create a network namespace (needs root with CAP_NET_ADMIN): {e:#}"
        )),
    }
}

/// Deletes `bmk<pid>-*` namespaces whose process is gone (a killed run).
fn clean_stale() {
    let Ok(list) = crate::util::output(Command::new("ip").args(["netns", "list"])) else {
        return;
    };
    for line in list.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix("bmk") else {
            continue;
        };
        let pid: Option<u32> = rest.split('-').next().and_then(|p| p.parse().ok());
        if let Some(pid) = pid {
            if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
                eprintln!("netbed: removing stale namespace {name}");
                let _ = ip(&["netns", "del", name]);
            }
        }
    }
}

/// Runs `f` on a new thread inside network namespace `ns`.
fn in_ns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> JoinHandle<Result<T>> {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = fs::File::open(&path).with_context(|| format!("opening {path}"))?;
        // SAFETY: setns on an open namespace fd; affects only this thread.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns({path}): {}", std::io::Error::last_os_error());
        }
        f()
    })
}

// ------------------------------------------------------------------ the bed

/// Link shapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    /// 100 Mbit/s both ways, no impairment.
    Ethernet,
    /// 20 Mbit/s, delay, jitter and loss from the proxy.
    Wifi,
}

impl Profile {
    fn rate_mbit(self) -> u32 {
        match self {
            Profile::Ethernet => 100,
            Profile::Wifi => 20,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Profile::Ethernet => "ethernet 100 Mbit/s",
            Profile::Wifi => "wifi 20 Mbit/s, 8±4 ms, 0.5% loss",
        }
    }
}

/// Wi-Fi-like impairment, each direction.
#[derive(Clone, Copy, Debug)]
pub struct Impair {
    /// One-way delay.
    pub delay: Duration,
    /// Uniform jitter, +- this (order is kept, as on one Wi-Fi link).
    pub jitter: Duration,
    /// Probability a packet is dropped.
    pub loss: f64,
}

const WIFI: Impair = Impair {
    delay: Duration::from_millis(8),
    jitter: Duration::from_millis(4),
    loss: 0.005,
};

static BEDS: AtomicUsize = AtomicUsize::new(0);

/// Two (or three) namespaces and their links; all removed on drop.
pub struct Bed {
    /// Sender namespace.
    pub s: String,
    /// Receiver namespace.
    pub r: String,
    m: Option<String>,
    proxy: Option<Proxy>,
}

impl Bed {
    /// Builds the namespaces for `profile`.
    pub fn new(profile: Profile) -> Result<Bed> {
        let n = BEDS.fetch_add(1, Ordering::Relaxed);
        let base = format!("bmk{}-{n}", std::process::id());
        let mut bed = Bed {
            s: format!("{base}s"),
            r: format!("{base}r"),
            m: None,
            proxy: None,
        };
        ip(&["netns", "add", &bed.s])?;
        ip(&["netns", "add", &bed.r])?;
        let rate = format!("{}mbit", profile.rate_mbit());
        match profile {
            Profile::Ethernet => {
                ip(&[
                    "link", "add", "name", "s0", "netns", &bed.s, "type", "veth", "peer", "name",
                    "r0", "netns", &bed.r,
                ])?;
            }
            Profile::Wifi => {
                let m = format!("{base}m");
                ip(&["netns", "add", &m])?;
                bed.m = Some(m.clone());
                ip(&[
                    "link", "add", "name", "s0", "netns", &bed.s, "type", "veth", "peer", "name",
                    "ms", "netns", &m,
                ])?;
                ip(&[
                    "link", "add", "name", "r0", "netns", &bed.r, "type", "veth", "peer", "name",
                    "mr", "netns", &m,
                ])?;
                for dev in ["ms", "mr"] {
                    // no IP here: the kernel must not answer; the proxy bridges frames
                    ip(&["-n", &m, "link", "set", dev, "gso_max_segs", "1"])?;
                    ip(&["-n", &m, "link", "set", dev, "up"])?;
                }
                ip(&["-n", &m, "link", "set", "lo", "up"])?;
            }
        }
        for (ns, dev, addr) in [(&bed.s, "s0", SEND_IP), (&bed.r, "r0", RECV_IP)] {
            // one segment per packet, so a bridged frame never exceeds the MTU
            ip(&["-n", ns, "link", "set", dev, "gso_max_segs", "1"])?;
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            tc(
                ns,
                &[
                    "qdisc", "add", "dev", dev, "root", "tbf", "rate", &rate, "burst", "16kb",
                    "latency", "25ms",
                ],
            )?;
        }
        if let Some(m) = &bed.m {
            // Packets leave a veth with their checksums left to "hardware";
            // bridged through user space they must carry real ones.
            tx_checksum_off(&bed.s, "s0")?;
            tx_checksum_off(&bed.r, "r0")?;
            bed.proxy = Some(Proxy::start(m, "ms", "mr", WIFI)?);
        }
        Ok(bed)
    }

    /// `ip link set r0 down|up` in the receiver's namespace (a cable pulled).
    pub fn receiver_link(&self, up: bool) -> Result<()> {
        ip(&[
            "-n",
            &self.r,
            "link",
            "set",
            "r0",
            if up { "up" } else { "down" },
        ])
    }

    /// A command run inside namespace `ns`.
    pub fn cmd(ns: &str, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).arg(program);
        c.env_remove("RUST_LOG");
        c
    }

    /// Plain bulk TCP for `secs`: the link's payload capacity, Mbit/s.
    pub fn bulk_tcp(&self, secs: f64) -> Result<f64> {
        let rx = in_ns(&self.r, move || {
            let l = TcpListener::bind((RECV_IP, PORT + 1))?;
            let (mut s, _) = l.accept()?;
            let mut buf = vec![0u8; 1 << 20];
            let (mut total, mut first, mut last) = (0u64, None, Instant::now());
            let (mut warm_bytes, mut warm_at) = (0u64, None);
            loop {
                let n = s.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                let now = Instant::now();
                let t0 = *first.get_or_insert(now);
                total += n as u64;
                last = now;
                if warm_at.is_none() && now - t0 > Duration::from_millis(500) {
                    warm_at = Some(now);
                    warm_bytes = total;
                }
            }
            let start = warm_at.context("bulk transfer shorter than 0.5 s")?;
            Ok((total - warm_bytes) as f64 * 8.0 / (last - start).as_secs_f64() / 1e6)
        });
        std::thread::sleep(Duration::from_millis(200));
        let tx = in_ns(&self.s, move || {
            let mut s = TcpStream::connect((RECV_IP, PORT + 1))?;
            let buf = vec![0x5au8; 1 << 20];
            let t = Instant::now();
            while t.elapsed().as_secs_f64() < secs {
                s.write_all(&buf)?;
            }
            Ok(())
        });
        tx.join()
            .map_err(|_| anyhow::anyhow!("bulk sender panicked"))??;
        rx.join()
            .map_err(|_| anyhow::anyhow!("bulk receiver panicked"))?
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        if let Some(p) = self.proxy.take() {
            p.stop();
        }
        for ns in [Some(&self.s), Some(&self.r), self.m.as_ref()]
            .into_iter()
            .flatten()
        {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("netbed: cleanup of {ns} failed: {e:#}");
            }
        }
    }
}

// ------------------------------------------------------------------ impairment proxy

/// `ethtool -K DEV tx off` (ethtool is not installed here): the kernel then
/// computes checksums in software, which also turns TSO off.
fn tx_checksum_off(ns: &str, dev: &str) -> Result<()> {
    let dev = dev.to_string();
    in_ns(ns, move || {
        #[repr(C)]
        struct EthtoolValue {
            cmd: u32,
            data: u32,
        }
        const ETHTOOL_STXCSUM: u32 = 0x17;
        let mut v = EthtoolValue {
            cmd: ETHTOOL_STXCSUM,
            data: 0,
        };
        // SAFETY: an ioctl on a socket we own, with a zeroed ifreq naming the
        // device and pointing at a live ethtool_value.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
            if fd < 0 {
                bail!("socket: {}", std::io::Error::last_os_error());
            }
            let mut ifr: libc::ifreq = std::mem::zeroed();
            for (i, b) in dev.bytes().take(libc::IFNAMSIZ - 1).enumerate() {
                ifr.ifr_name[i] = b as libc::c_char;
            }
            ifr.ifr_ifru.ifru_data = &mut v as *mut EthtoolValue as *mut libc::c_char;
            let r = libc::ioctl(fd, libc::SIOCETHTOOL, &mut ifr);
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            if r != 0 {
                bail!("turning tx checksum offload off on {dev}: {err}");
            }
        }
        Ok(())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("ethtool thread panicked"))?
}

/// A user-space bridge between two interfaces of one namespace, forwarding
/// every Ethernet frame after a delay (with jitter, order kept) or dropping
/// it with probability `loss`.
struct Proxy {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Result<()>>>,
}

fn packet_socket(dev: &str) -> Result<i32> {
    let cdev = std::ffi::CString::new(dev)?;
    // SAFETY: plain libc calls with valid arguments; the fd is owned by the caller.
    unsafe {
        let proto = (libc::ETH_P_ALL as u16).to_be();
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, proto as i32);
        if fd < 0 {
            bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
        }
        let idx = libc::if_nametoindex(cdev.as_ptr());
        if idx == 0 {
            bail!("no interface {dev}");
        }
        let mut sa: libc::sockaddr_ll = std::mem::zeroed();
        sa.sll_family = libc::AF_PACKET as u16;
        sa.sll_protocol = proto;
        sa.sll_ifindex = idx as i32;
        if libc::bind(
            fd,
            &sa as *const libc::sockaddr_ll as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        ) != 0
        {
            bail!(
                "bind AF_PACKET to {dev}: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(fd)
    }
}

impl Proxy {
    fn start(ns: &str, a: &str, b: &str, imp: Impair) -> Result<Proxy> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for (seed, (from, to)) in [(a, b), (b, a)].into_iter().enumerate() {
            let (from, to, stop) = (from.to_string(), to.to_string(), stop.clone());
            threads.push(in_ns(ns, move || {
                let rx = packet_socket(&from)?;
                let tx = packet_socket(&to)?;
                let r = forward(rx, tx, imp, &stop, 0x9e37_79b9 + seed as u64);
                // SAFETY: closing fds this thread opened.
                unsafe {
                    libc::close(rx);
                    libc::close(tx);
                }
                r
            }));
        }
        Ok(Proxy { stop, threads })
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            match t.join() {
                Ok(Err(e)) => eprintln!("netbed: proxy: {e:#}"),
                Err(_) => eprintln!("netbed: proxy thread panicked"),
                Ok(Ok(())) => {}
            }
        }
    }
}

fn forward(rx: i32, tx: i32, imp: Impair, stop: &AtomicBool, mut seed: u64) -> Result<()> {
    let mut rng = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut line: std::collections::VecDeque<(Instant, Vec<u8>)> = Default::default();
    let mut spare: Vec<Vec<u8>> = Vec::new();
    let mut last_release = Instant::now();
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        while line.front().is_some_and(|(t, _)| *t <= now) {
            let (_, pkt) = line.pop_front().unwrap();
            // SAFETY: sending a buffer we own on a bound packet socket.
            unsafe { libc::send(tx, pkt.as_ptr() as *const libc::c_void, pkt.len(), 0) };
            spare.push(pkt);
        }
        let wait_ms = line
            .front()
            .map(|(t, _)| t.saturating_duration_since(now).as_millis() as i32)
            .unwrap_or(20)
            .clamp(0, 20);
        let mut pfd = libc::pollfd {
            fd: rx,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut pfd, 1, wait_ms) };
        if ready <= 0 {
            continue;
        }
        loop {
            // SAFETY: recvfrom into our buffer and a zeroed sockaddr_ll.
            let (n, kind) = unsafe {
                let mut sa: libc::sockaddr_ll = std::mem::zeroed();
                let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
                let n = libc::recvfrom(
                    rx,
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    libc::MSG_DONTWAIT,
                    &mut sa as *mut libc::sockaddr_ll as *mut libc::sockaddr,
                    &mut len,
                );
                (n, sa.sll_pkttype)
            };
            if n <= 0 {
                break;
            }
            if kind == libc::PACKET_OUTGOING {
                continue; // our own transmission on this interface
            }
            if rng() < imp.loss {
                continue;
            }
            let j = (rng() * 2.0 - 1.0) * imp.jitter.as_secs_f64();
            let d = Duration::from_secs_f64((imp.delay.as_secs_f64() + j).max(0.0));
            let at = (Instant::now() + d).max(last_release);
            last_release = at;
            let mut pkt = spare.pop().unwrap_or_default();
            pkt.clear();
            pkt.extend_from_slice(&buf[..n as usize]);
            line.push_back((at, pkt));
        }
    }
    Ok(())
}

// ------------------------------------------------------------------ processes

struct Proc {
    child: Child,
    log: PathBuf,
    what: String,
}

impl Proc {
    fn spawn(mut cmd: Command, log: PathBuf, what: &str) -> Result<Proc> {
        let f = fs::File::create(&log)?;
        cmd.stderr(f).stdin(Stdio::null());
        let child = cmd.spawn().with_context(|| format!("starting {what}"))?;
        Ok(Proc {
            child,
            log,
            what: what.into(),
        })
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_log(&mut self, needle: &str, limit: Duration) -> Result<()> {
        let t = Instant::now();
        while t.elapsed() < limit {
            if self.log().contains(needle) {
                return Ok(());
            }
            if let Some(st) = self.child.try_wait()? {
                bail!(
                    "{} exited ({st}) before logging {needle:?}:\n{}",
                    self.what,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!(
            "{} did not log {needle:?} within {limit:?}:\n{}",
            self.what,
            self.log()
        )
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    fn wait(&mut self, limit: Duration) -> Result<std::process::ExitStatus> {
        crate::demo::wait_timeout(&mut self.child, limit)
            .with_context(|| format!("{} hung; log:\n{}", self.what, self.log()))
    }

    /// SIGTERM (the receiver then writes its final stats) and wait.
    fn stop(&mut self) -> Result<()> {
        self.signal(libc::SIGTERM);
        let st = self.wait(Duration::from_secs(10))?;
        ensure!(
            st.success() || st.code().is_none(),
            "{} ended with {st}:\n{}",
            self.what,
            self.log()
        );
        Ok(())
    }

    fn rss_kb(&self) -> Option<u64> {
        let s = fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        s.lines()
            .find(|l| l.starts_with("VmRSS:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Binaries, inputs and expected masks, shared by all tests of a run.
pub struct Kit {
    bin: PathBuf,
    input: PathBuf,
    expected: Vec<Vec<u8>>,
    work: PathBuf,
    codec_flag: bool,
}

impl Kit {
    /// Builds the binaries (release, or the dev profile, whose hot
    /// libraries are optimised too: see the workspace Cargo.toml) and the
    /// sample images (1024x768, blue >= 170).
    pub fn new(release: bool) -> Result<Kit> {
        let bin = build_bins(release)?;
        let work = root().join("target/netbed");
        let input = work.join("in");
        crate::samples::scene(&input, IMAGES)?;
        let mut expected = Vec::new();
        for i in 0..IMAGES {
            let p = input.join(format!("scene-{i:03}.png"));
            let (_, _, rgb) = crate::samples::read_rgb_png(&p)?;
            let view = bitmask_core::ImageRef::new(&rgb, W, H, bitmask_core::PixelFormat::Rgb8)?;
            let mut bits = vec![0u8; MASK_LEN];
            let params = bitmask_core::Params {
                channel: bitmask_core::Channel::Blue,
                threshold: 170,
                invert: false,
            };
            bitmask_core::threshold_pack(&view, &params, &mut bits)?;
            expected.push(bits);
        }
        let help = Command::new(bin.join("bitmask-send"))
            .arg("--help")
            .output()?;
        let codec_flag = String::from_utf8_lossy(&help.stdout).contains("--codec");
        Ok(Kit {
            bin,
            input,
            expected,
            work,
            codec_flag,
        })
    }

    fn dir(&self, name: &str) -> Result<PathBuf> {
        let d = self.work.join(name);
        if d.exists() {
            fs::remove_dir_all(&d)?;
        }
        fs::create_dir_all(&d)?;
        Ok(d)
    }

    fn receiver(&self, bed: &Bed, dir: &Path, tag: &str, extra: &[&str]) -> Result<Proc> {
        let mut c = Bed::cmd(&bed.r, &self.bin.join("bitmask-recv"));
        c.args(["--listen", &format!("{RECV_IP}:{PORT}"), "--stats-json"])
            .arg(dir.join(format!("{tag}-stats.json")))
            .args(extra)
            .stdout(Stdio::null());
        let mut p = Proc::spawn(
            c,
            dir.join(format!("{tag}.log")),
            &format!("receiver {tag}"),
        )?;
        p.wait_log("listening on", Duration::from_secs(10))?;
        Ok(p)
    }

    fn sender(&self, bed: &Bed, dir: &Path, tag: &str, extra: &[&str]) -> Result<Proc> {
        let mut c = Bed::cmd(&bed.s, &self.bin.join("bitmask-send"));
        c.args([
            "--to",
            &format!("{RECV_IP}:{PORT}"),
            "--name",
            tag,
            "--channel",
            "blue",
            "--threshold",
            "170",
            "--loop",
        ])
        .args(extra);
        // the tests check raw frames unless told otherwise
        if self.codec_flag && !extra.contains(&"--codec") {
            c.args(["--codec", "raw"]);
        }
        c.arg(&self.input).stdout(Stdio::null());
        Proc::spawn(c, dir.join(format!("{tag}.log")), &format!("sender {tag}"))
    }

    /// Checks every `frame-*.raw` in `dir` bit for bit; returns their sequence numbers.
    fn verify(&self, dir: &Path) -> Result<BTreeSet<u64>> {
        let mut seqs = BTreeSet::new();
        for e in fs::read_dir(dir)? {
            let p = e?.path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let Some(num) = name
                .strip_prefix("frame-")
                .and_then(|n| n.strip_suffix(".raw"))
            else {
                continue;
            };
            let seq: u64 = num.parse().with_context(|| format!("file name {name}"))?;
            let data = fs::read(&p)?;
            ensure!(
                data == self.expected[(seq % IMAGES as u64) as usize],
                "{} is not bit-exact (frame {seq} = image {})",
                p.display(),
                seq % IMAGES as u64
            );
            seqs.insert(seq);
        }
        Ok(seqs)
    }
}

/// Frames of `dir` written from `skip` after the first until the last:
/// (fps, Mbit/s of wire bytes) by file modification times.
fn file_rate(dir: &Path, skip: Duration) -> Result<(f64, f64, usize)> {
    let mut times: Vec<SystemTime> = Vec::new();
    for e in fs::read_dir(dir)? {
        let e = e?;
        if e.file_name().to_string_lossy().starts_with("frame-") {
            times.push(e.metadata()?.modified()?);
        }
    }
    times.sort();
    ensure!(times.len() > 10, "only {} frames written", times.len());
    let from = times[0] + skip;
    let window: Vec<_> = times.iter().filter(|t| **t >= from).collect();
    ensure!(window.len() > 10, "too few frames after the warm-up");
    let secs = window[window.len() - 1]
        .duration_since(*window[0])?
        .as_secs_f64();
    let fps = (window.len() - 1) as f64 / secs;
    Ok((fps, fps * WIRE_LEN as f64 * 8.0 / 1e6, times.len()))
}

fn count_frames(dir: &Path) -> usize {
    fs::read_dir(dir)
        .map(|d| {
            d.filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().starts_with("frame-"))
            })
            .count()
        })
        .unwrap_or(0)
}

/// Waits until `dir` holds more than `n` frames; returns how long it took.
fn wait_more_frames(dir: &Path, n: usize, limit: Duration) -> Option<Duration> {
    let t = Instant::now();
    while t.elapsed() < limit {
        if count_frames(dir) > n {
            return Some(t.elapsed());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// A number from the receiver's `--stats-json` for sender `name` (tiny
/// field scan: the file is ours and flat).
fn stat(json: &str, name: &str, key: &str) -> Option<f64> {
    let start = json.find(&format!("{{\"name\": \"{name}\""))?;
    let obj = &json[start..json[start..].find('}')? + start];
    let k = format!("\"{key}\": ");
    let v = &obj[obj.find(&k)? + k.len()..];
    let end = v.find([',', '}']).unwrap_or(v.len());
    v[..end].trim().parse().ok()
}

fn top_number(json: &str, key: &str) -> Option<f64> {
    let k = format!("\"{key}\": ");
    let v = &json[json.find(&k)? + k.len()..];
    let end = v.find([',', '}', '\n']).unwrap_or(v.len());
    v[..end].trim().parse().ok()
}

// ------------------------------------------------------------------ the tests

/// Durations of a run (CI shortens the slow-receiver test).
#[derive(Clone, Copy)]
pub struct Timing {
    slow_secs: u64,
}

fn t1_throughput(kit: &Kit) -> Result<String> {
    let bed = Bed::new(Profile::Ethernet)?;
    let bulk = bed.bulk_tcp(3.0)?;
    let dir = kit.dir("t1")?;
    let out = dir.join("out");
    let mut recv = kit.receiver(&bed, &dir, "recv", &["--out", out.to_str().unwrap()])?;
    let mut send = kit.sender(&bed, &dir, "cam", &["--fps", "150", "--count", "900"])?;
    let st = send.wait(Duration::from_secs(60))?;
    ensure!(st.success(), "sender failed ({st}):\n{}", send.log());
    std::thread::sleep(Duration::from_millis(300));
    recv.stop()?;
    let seqs = kit.verify(&out)?;
    let (fps, mbps, n) = file_rate(&out, Duration::from_secs(1))?;
    let ratio = mbps / bulk;
    let msg = format!(
        "bulk TCP {bulk:.1} Mbit/s; bitmask raw 1024x768: {fps:.1} fps = {mbps:.1} Mbit/s \
         ({:.1}% of bulk); {n} frames written, all bit-exact ({} distinct)",
        ratio * 100.0,
        seqs.len()
    );
    ensure!(ratio >= 0.95, "throughput below 95% of bulk TCP: {msg}");
    Ok(msg)
}

/// A receiver streamed to (`sender` args) is killed after 100 frames and a
/// second one started 2 s later, writing to `out1` and `out2` of `dir`:
/// returns the sender and the second receiver, both still running.
fn receiver_killed_and_restarted(
    kit: &Kit,
    bed: &Bed,
    dir: &Path,
    sender: &[&str],
) -> Result<(Proc, Proc)> {
    let (out1, out2) = (dir.join("out1"), dir.join("out2"));
    let mut recv = kit.receiver(bed, dir, "recv1", &["--out", out1.to_str().unwrap()])?;
    let send = kit.sender(bed, dir, "cam", sender)?;
    ensure!(
        wait_more_frames(&out1, 100, Duration::from_secs(15)).is_some(),
        "no frames before the kill:\n{}",
        send.log()
    );
    recv.signal(libc::SIGKILL);
    recv.wait(Duration::from_secs(5))?;
    std::thread::sleep(Duration::from_secs(2));
    let recv2 = kit.receiver(bed, dir, "recv2", &["--out", out2.to_str().unwrap()])?;
    Ok((send, recv2))
}

fn t2_receiver_restart(kit: &Kit) -> Result<String> {
    let bed = Bed::new(Profile::Ethernet)?;
    let dir = kit.dir("t2")?;
    let (out1, out2) = (dir.join("out1"), dir.join("out2"));
    let (mut send, mut recv2) =
        receiver_killed_and_restarted(kit, &bed, &dir, &["--fps", "50", "--count", "450"])?;
    let resumed = wait_more_frames(&out2, 0, Duration::from_secs(5))
        .with_context(|| format!("sender did not resume within 5 s:\n{}", send.log()))?;
    let st = send.wait(Duration::from_secs(30))?;
    ensure!(st.success(), "sender failed ({st}):\n{}", send.log());
    std::thread::sleep(Duration::from_millis(300));
    recv2.stop()?;
    let a = kit.verify(&out1)?;
    let b = kit.verify(&out2)?;
    let json = fs::read_to_string(dir.join("recv2-stats.json"))?;
    let lost2 = stat(&json, "cam", "lost").context("lost in stats")? as u64;
    let (lo, hi) = (*b.first().unwrap(), *b.last().unwrap());
    let gaps2 = (hi - lo + 1) - b.len() as u64;
    ensure!(
        lost2 == gaps2,
        "receiver 2 counted {lost2} lost, its files show {gaps2} gaps"
    );
    let all: BTreeSet<u64> = a.union(&b).copied().collect();
    let captured = sender_counter(&send.log(), "captured").unwrap_or(0);
    let missing = captured - all.len() as u64;
    let dropped = sender_counter(&send.log(), "dropped").unwrap_or(0)
        + sender_counter(&send.log(), "failed").unwrap_or(0);
    // frames in flight at the kill: written, not confirmed (some may have
    // been written by receiver 1 just before it died)
    let unconfirmed = sender_counter(&send.log(), "unconfirmed").unwrap_or(0);
    let confirmed = sender_counter(&send.log(), "confirmed")
        .with_context(|| format!("no confirmed count:\n{}", send.log()))?;
    ensure!(
        resumed <= Duration::from_secs(1),
        "sender resumed {:.2} s after the receiver came back (limit 1 s)",
        resumed.as_secs_f64()
    );
    ensure!(
        dropped <= missing && missing <= dropped + unconfirmed,
        "accounting: {missing} frames never written, sender counted {dropped} dropped/failed \
         and {unconfirmed} unconfirmed"
    );
    ensure!(
        confirmed <= all.len() as u64,
        "sender says {confirmed} confirmed, only {} written",
        all.len()
    );
    Ok(format!(
        "resumed {:.0} ms after the restart; {} + {} frames written, all bit-exact; \
         {missing} of {captured} never written = {dropped} dropped/failed by the sender + {} of \
         the {unconfirmed} it counted unconfirmed at the kill; {confirmed} confirmed; receiver 2 \
         counted {lost2} lost = its gaps",
        resumed.as_secs_f64() * 1000.0,
        a.len(),
        b.len(),
        missing - dropped
    ))
}

/// As `restart`, with `--no-drop`: every frame must be written, the ones
/// the killed receiver had not confirmed sent again to the new one.
fn t2b_receiver_restart_no_drop(kit: &Kit) -> Result<String> {
    let bed = Bed::new(Profile::Ethernet)?;
    let dir = kit.dir("t2b")?;
    let (out1, out2) = (dir.join("out1"), dir.join("out2"));
    let n = 450u64;
    let count = n.to_string();
    let (mut send, mut recv2) = receiver_killed_and_restarted(
        kit,
        &bed,
        &dir,
        &["--fps", "50", "--count", &count, "--no-drop"],
    )?;
    let st = send.wait(Duration::from_secs(60))?;
    ensure!(st.success(), "sender failed ({st}):\n{}", send.log());
    std::thread::sleep(Duration::from_millis(300));
    recv2.stop()?;
    let a = kit.verify(&out1)?;
    let b = kit.verify(&out2)?;
    let all: BTreeSet<u64> = a.union(&b).copied().collect();
    let missing: Vec<u64> = (0..n).filter(|s| !all.contains(s)).collect();
    ensure!(
        missing.is_empty(),
        "{} frame(s) never written: {:?}...\n{}",
        missing.len(),
        &missing[..missing.len().min(10)],
        send.log()
    );
    let confirmed = sender_counter(&send.log(), "confirmed")
        .with_context(|| format!("no confirmed count:\n{}", send.log()))?;
    ensure!(
        confirmed == n,
        "sender confirmed {confirmed} of {n}:\n{}",
        send.log()
    );
    let twice = a.intersection(&b).count();
    Ok(format!(
        "receiver down 2 s under a --no-drop sender: {} + {} frames written, all bit-exact, \
         all {n} present ({twice} by both receivers: written by the first, not confirmed before \
         the kill); sender: {confirmed} confirmed",
        a.len(),
        b.len()
    ))
}

fn t3_link_down(kit: &Kit) -> Result<String> {
    let bed = Bed::new(Profile::Ethernet)?;
    let dir = kit.dir("t3")?;
    let out = dir.join("out");
    let mut recv = kit.receiver(&bed, &dir, "recv", &["--out", out.to_str().unwrap()])?;
    let mut send = kit.sender(&bed, &dir, "cam", &["--fps", "50", "--count", "450"])?;
    ensure!(
        wait_more_frames(&out, 100, Duration::from_secs(15)).is_some(),
        "no frames before the link went down"
    );
    bed.receiver_link(false)?;
    std::thread::sleep(Duration::from_secs(3));
    let before = count_frames(&out);
    bed.receiver_link(true)?;
    let resumed = wait_more_frames(&out, before, Duration::from_secs(10)).with_context(|| {
        format!(
            "no frame within 10 s of the link coming back:\n{}",
            send.log()
        )
    })?;
    let st = send.wait(Duration::from_secs(30))?;
    ensure!(st.success(), "sender failed ({st}):\n{}", send.log());
    std::thread::sleep(Duration::from_millis(300));
    recv.stop()?;
    let seqs = kit.verify(&out)?;
    let json = fs::read_to_string(dir.join("recv-stats.json"))?;
    let lost = stat(&json, "cam", "lost").context("lost in stats")? as u64;
    let (lo, hi) = (*seqs.first().unwrap(), *seqs.last().unwrap());
    let gaps = (hi - lo + 1) - seqs.len() as u64;
    ensure!(
        lost == gaps,
        "receiver counted {lost} lost, its files show {gaps} gaps"
    );
    let dropped = sender_counter(&send.log(), "dropped").unwrap_or(0)
        + sender_counter(&send.log(), "failed").unwrap_or(0);
    ensure!(
        resumed <= Duration::from_secs(1),
        "frames resumed {:.2} s after the link came back (limit 1 s)",
        resumed.as_secs_f64()
    );
    Ok(format!(
        "frames resumed {:.0} ms after link up; {} frames written, all bit-exact; receiver counted \
         {lost} lost (= gaps in its files), sender counted {dropped} dropped/failed",
        resumed.as_secs_f64() * 1000.0,
        seqs.len()
    ))
}

fn t4_slow_receiver(kit: &Kit, secs: u64) -> Result<String> {
    let bed = Bed::new(Profile::Ethernet)?;
    let dir = kit.dir("t4")?;
    // The receiver writes to a pipe that is read at 20 frames/s: a slow consumer.
    let mut c = Bed::cmd(&bed.r, &kit.bin.join("bitmask-recv"));
    c.args([
        "--listen",
        &format!("{RECV_IP}:{PORT}"),
        "--out",
        "-",
        "--stats-json",
    ])
    .arg(dir.join("recv-stats.json"))
    .stdout(Stdio::piped());
    let mut recv = Proc::spawn(c, dir.join("recv.log"), "receiver")?;
    recv.wait_log("listening on", Duration::from_secs(10))?;
    let mut pipe = recv.child.stdout.take().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let st2 = stop.clone();
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; MASK_LEN];
        let mut n = 0u64;
        let t = Instant::now();
        while !st2.load(Ordering::Relaxed) {
            if pipe.read_exact(&mut buf).is_err() {
                break;
            }
            n += 1;
            let due = t + Duration::from_millis(50) * n as u32;
            if let Some(d) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
        }
        // keep draining so the receiver can finish
        let _ = std::io::copy(&mut pipe, &mut std::io::sink());
        n
    });
    let count = (secs * 60).to_string();
    let mut send = kit.sender(&bed, &dir, "cam", &["--fps", "60", "--count", &count])?;
    let t0 = Instant::now();
    let mut rss = Vec::new();
    while send.child.try_wait()?.is_none() && t0.elapsed() < Duration::from_secs(secs + 30) {
        if let Some(kb) = send.rss_kb() {
            rss.push((t0.elapsed().as_secs_f64(), kb));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let st = send.wait(Duration::from_secs(10))?;
    ensure!(st.success(), "sender failed ({st}):\n{}", send.log());
    stop.store(true, Ordering::Relaxed);
    recv.stop()?;
    let consumed = reader.join().unwrap_or(0);
    let json = fs::read_to_string(dir.join("recv-stats.json"))?;
    let p99 = stat(&json, "cam", "total_latency_p99_ms").context("p99 in stats")?;
    let p50 = stat(&json, "cam", "total_latency_p50_ms").context("p50 in stats")?;
    let dropped = sender_counter(&send.log(), "dropped").unwrap_or(0);
    let reconnects = sender_counter(&send.log(), "reconnects")
        .with_context(|| format!("no reconnects count:\n{}", send.log()))?;
    // flat: RSS after the first quarter never grows by more than 1 MiB over
    // its first value there (it may fall: the input is freed as soon as the
    // capture ends, while the last frames still go out)
    let settled: Vec<u64> = rss
        .iter()
        .filter(|(t, _)| *t >= secs as f64 / 4.0)
        .map(|(_, kb)| *kb)
        .collect();
    ensure!(settled.len() > 4, "too few RSS samples");
    let (lo, hi) = (settled[0], *settled.iter().max().unwrap());
    let msg = format!(
        "{secs} s at 60 fps into a 20 fps consumer: {consumed} frames consumed, sender dropped \
         {dropped}, reconnected {reconnects} times; sender RSS {lo} KiB after the first quarter, \
         {hi} KiB at most; latency p50 {p50:.0} ms, p99 {p99:.0} ms"
    );
    ensure!(reconnects == 0, "a slow receiver is not a lost link: {msg}");
    ensure!(hi - lo <= 1024, "sender memory grew: {msg}");
    ensure!(
        dropped > 0,
        "nothing was dropped, so the test did not slow anything: {msg}"
    );
    ensure!(p99 <= 1000.0, "p99 latency above 1 s: {msg}");
    Ok(msg)
}

/// The receiver's output stalls for 5 s (its stdout reader pauses) under a
/// live 30 fps sender: the sender's writes (or, with a window that opens a
/// little at a time, its confirmations) stall with the receiver's host
/// still answering, so it waits instead of reconnecting, and the stream
/// goes on when the output does.
fn t4b_stalled_output(kit: &Kit) -> Result<String> {
    const PAUSE: Duration = Duration::from_secs(5);
    let bed = Bed::new(Profile::Ethernet)?;
    let dir = kit.dir("t4b")?;
    let mut c = Bed::cmd(&bed.r, &kit.bin.join("bitmask-recv"));
    c.args(["--listen", &format!("{RECV_IP}:{PORT}"), "--out", "-"])
        .stdout(Stdio::piped());
    let mut recv = Proc::spawn(c, dir.join("recv.log"), "receiver")?;
    recv.wait_log("listening on", Duration::from_secs(10))?;
    let mut pipe = recv.child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; MASK_LEN];
        let (mut n, mut after) = (0u64, 0u64);
        while pipe.read_exact(&mut buf).is_ok() {
            n += 1;
            if n == 60 {
                std::thread::sleep(PAUSE);
            } else if n > 60 {
                after += 1;
            }
        }
        (n, after)
    });
    let mut send = kit.sender(&bed, &dir, "cam", &["--fps", "30", "--count", "450"])?;
    let st = send.wait(Duration::from_secs(40))?;
    ensure!(st.success(), "sender failed ({st}):\n{}", send.log());
    recv.stop()?;
    let (consumed, after) = reader.join().unwrap_or((0, 0));
    let log = send.log();
    let reconnects = sender_counter(&log, "reconnects")
        .with_context(|| format!("no reconnects count:\n{log}"))?;
    let dropped = sender_counter(&log, "dropped").unwrap_or(0);
    let msg = format!(
        "output paused {} s after 60 frames under a 30 fps sender: {consumed} frames consumed \
         ({after} after the pause), sender dropped {dropped}, reconnected {reconnects} times",
        PAUSE.as_secs()
    );
    // (the write waits when the window stays closed, "has taken only"
    // when the write that filled it got part of a frame in; where the
    // kernel packs the stalled queue and opens it a little at a time,
    // the wait for confirmations may say it instead)
    ensure!(
        log.contains("has taken no data for")
            || log.contains("has taken only")
            || log.contains("has confirmed no frame for"),
        "the sender never waited for the receiver, so the test tested nothing: {msg}\n{log}"
    );
    ensure!(
        reconnects == 0,
        "a slow receiver is not a lost link: {msg}\n{log}"
    );
    ensure!(
        after >= 100,
        "the stream did not go on after the pause: {msg}\n{log}"
    );
    Ok(msg)
}

fn t5_hostile_peers(kit: &Kit) -> Result<String> {
    let bed = Bed::new(Profile::Ethernet)?;
    let dir = kit.dir("t5")?;
    let out = dir.join("out");
    let mut recv = kit.receiver(
        &bed,
        &dir,
        "recv",
        &[
            "--out",
            out.to_str().unwrap(),
            "--per-sender",
            "--timeout",
            "2",
        ],
    )?;
    let mut send = kit.sender(
        &bed,
        &dir,
        "good",
        &["--fps", "50", "--count", "300", "--no-drop"],
    )?;
    let attacks = in_ns(&bed.s, || {
        let to: SocketAddr = format!("{RECV_IP}:{PORT}").parse()?;
        let mut results = Vec::new();
        std::thread::sleep(Duration::from_millis(500));
        // 1. garbage
        let mut g = TcpStream::connect(to)?;
        let mut seed = 1u64;
        let junk: Vec<u8> = (0..64 << 10)
            .map(|_| {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                (seed >> 56) as u8
            })
            .collect();
        let _ = g.write_all(&junk);
        results.push(("garbage", closed_within(&mut g, Duration::from_secs(5))));
        // 2. a header claiming a 4 GB frame
        let mut o = TcpStream::connect(to)?;
        let mut h = [0u8; 40];
        h[0..4].copy_from_slice(b"BMSK");
        h[4] = 1;
        h[8..12].copy_from_slice(&65535u32.to_le_bytes());
        h[12..16].copy_from_slice(&65535u32.to_le_bytes());
        h[32..36].copy_from_slice(&u32::MAX.to_le_bytes());
        let _ = o.write_all(&h);
        results.push(("4 GB header", closed_within(&mut o, Duration::from_secs(5))));
        // 3. half a frame, then silence
        let mut half = TcpStream::connect(to)?;
        let mut h = [0u8; 40];
        h[0..4].copy_from_slice(b"BMSK");
        h[4] = 1;
        h[8..12].copy_from_slice(&1024u32.to_le_bytes());
        h[12..16].copy_from_slice(&768u32.to_le_bytes());
        h[32..36].copy_from_slice(&(MASK_LEN as u32).to_le_bytes());
        half.write_all(&h)?;
        half.write_all(&vec![0u8; MASK_LEN / 2])?;
        results.push((
            "half frame",
            closed_within(&mut half, Duration::from_secs(6)),
        ));
        // 4. slow-loris: a byte every 300 ms
        let mut sl = TcpStream::connect(to)?;
        sl.set_read_timeout(Some(Duration::from_millis(300)))?;
        let t = Instant::now();
        let mut closed = None;
        for b in b"BMHI\x01\x00\x04\x00slow".iter().chain(h.iter()).cycle() {
            if sl.write_all(&[*b]).is_err() {
                closed = Some(t.elapsed());
                break;
            }
            let mut one = [0u8; 1];
            match sl.read(&mut one) {
                Ok(0) => {
                    closed = Some(t.elapsed());
                    break;
                }
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => {
                    closed = Some(t.elapsed());
                    break;
                }
                Ok(_) => {}
            }
            if t.elapsed() > Duration::from_secs(8) {
                break;
            }
        }
        results.push(("slow-loris", closed));
        // 5. UDP garbage on the same port
        let u = UdpSocket::bind("0.0.0.0:0")?;
        for i in 0..200u32 {
            let _ = u.send_to(&junk[(i as usize * 100) % 60000..][..1200], to);
        }
        Ok(results)
    });
    let results = attacks
        .join()
        .map_err(|_| anyhow::anyhow!("attack thread panicked"))??;
    let st = send.wait(Duration::from_secs(30))?;
    ensure!(st.success(), "good sender failed ({st}):\n{}", send.log());
    std::thread::sleep(Duration::from_millis(300));
    ensure!(
        recv.child.try_wait()?.is_none(),
        "the receiver died:\n{}",
        recv.log()
    );
    recv.stop()?;
    let seqs = kit.verify(&out.join("good"))?;
    let json = fs::read_to_string(dir.join("recv-stats.json"))?;
    let lost = stat(&json, "good", "lost").context("lost")? as u64;
    let corrupt = stat(&json, "good", "corrupt").context("corrupt")? as u64;
    let dropped = sender_counter(&send.log(), "dropped").unwrap_or(0);
    let mut summary = Vec::new();
    for (what, closed) in &results {
        let c = closed.with_context(|| format!("{what} peer was not disconnected"))?;
        summary.push(format!("{what} closed after {:.1} s", c.as_secs_f64()));
    }
    ensure!(
        seqs.len() == 300 && lost == 0 && corrupt == 0 && dropped == 0,
        "good stream harmed: {} of 300 frames, lost {lost}, corrupt {corrupt}, sender dropped {dropped}",
        seqs.len()
    );
    Ok(format!(
        "good sender: 300/300 frames bit-exact, 0 lost, 0 corrupt; {}; 200 junk datagrams ignored",
        summary.join(", ")
    ))
}

/// Reads until the peer closes (or resets); how long that took, None if not within `limit`.
fn closed_within(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let t = Instant::now();
    let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
    let mut buf = [0u8; 256];
    while t.elapsed() < limit {
        match s.read(&mut buf) {
            Ok(0) => return Some(t.elapsed()),
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return Some(t.elapsed()),
        }
    }
    None
}

/// A test: its name, its lane and its body. Lane 0 runs first, alone (the
/// throughput test measures the link); then the other lanes run side by
/// side, each one test after another, each test in namespaces of its own.
/// The tests of lane 2 mostly wait on a slow consumer, so they run beside
/// the others without taking their CPU (this step's time: 82 s one after
/// another, about 50 s in lanes).
type Test = (&'static str, u8, fn(&Kit, Timing) -> Result<String>);

const TESTS: &[Test] = &[
    ("throughput", 0, |k, _| t1_throughput(k)),
    ("restart", 1, |k, _| t2_receiver_restart(k)),
    ("restart-nodrop", 1, |k, _| t2b_receiver_restart_no_drop(k)),
    ("linkdown", 1, |k, _| t3_link_down(k)),
    ("hostile", 1, |k, _| t5_hostile_peers(k)),
    ("slow", 2, |k, t| t4_slow_receiver(k, t.slow_secs)),
    ("stall", 2, |k, _| t4b_stalled_output(k)),
];

/// Runs the named tests (all when empty); fails if any fails.
fn run_tests(names: &[String], timing: Timing, release: bool) -> Result<()> {
    if let Some(why) = unavailable() {
        // (a failure, here and in `cargo xtask ci` with or without CI=true:
        // a run that skipped them did not test the link)
        bail!(
            "the two-host streaming tests cannot run here: {why}; they need root with \
             CAP_NET_ADMIN (ip netns, tc)"
        );
    }
    clean_stale();
    let kit = Kit::new(release)?;
    let chosen: Vec<&Test> = TESTS
        .iter()
        .filter(|t| names.is_empty() || names.iter().any(|n| n == t.0))
        .collect();
    let run_lane = |lane: Vec<&Test>| -> Vec<&'static str> {
        let mut failed = Vec::new();
        for (name, _, f) in lane {
            let t = Instant::now();
            eprintln!("netbed: {name} ...");
            match f(&kit, timing) {
                Ok(msg) => eprintln!(
                    "netbed: {name}: ok in {:.1} s: {msg}",
                    t.elapsed().as_secs_f64()
                ),
                Err(e) => {
                    eprintln!("netbed: {name}: FAILED: {e:#}");
                    failed.push(*name);
                }
            }
        }
        failed
    };
    let mut failed = run_lane(chosen.iter().copied().filter(|t| t.1 == 0).collect());
    let lanes: BTreeSet<u8> = chosen.iter().map(|t| t.1).filter(|&l| l > 0).collect();
    std::thread::scope(|sc| {
        let hs: Vec<_> = lanes
            .into_iter()
            .map(|l| {
                let lane: Vec<&Test> = chosen.iter().copied().filter(|t| t.1 == l).collect();
                sc.spawn(|| run_lane(lane))
            })
            .collect();
        for h in hs {
            failed.extend(h.join().expect("netbed lane"));
        }
    });
    ensure!(failed.is_empty(), "netbed tests failed: {failed:?}");
    Ok(())
}

/// `cargo xtask netbed [TEST...] [--slow-secs N]`.
pub fn run(args: &[String]) -> Result<()> {
    let mut names = Vec::new();
    let mut timing = Timing { slow_secs: 30 };
    let mut release = true;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--slow-secs" => {
                timing.slow_secs = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .context("--slow-secs N")?
            }
            "--dev" => release = false,
            "-h" | "--help" => {
                println!(
                    "cargo xtask netbed [{}] [--slow-secs N] [--dev]\n\
                     two-host streaming tests over network namespaces (root needed);\n\
                     --dev: with the dev-profile binaries, as `cargo xtask ci` runs them",
                    TESTS.iter().map(|t| t.0).collect::<Vec<_>>().join("|")
                );
                return Ok(());
            }
            t if TESTS.iter().any(|x| x.0 == t) => names.push(t.to_string()),
            other => bail!("unknown netbed argument {other:?} (see cargo xtask netbed --help)"),
        }
    }
    run_tests(&names, timing, release)
}

/// The CI step: every test, the slow receiver for 15 s instead of 30.
pub fn ci_step() -> Result<()> {
    // The dev build the CI's test step made (one build less than release).
    run_tests(&[], Timing { slow_secs: 15 }, false)
}

// ------------------------------------------------------------------ bench link

/// `cargo xtask bench link [--secs N] [--codec C]...`: fps, Mbit/s and
/// latency for TCP and UDP, raw and compressed, on both profiles.
pub fn bench_link(args: &[String]) -> Result<()> {
    let mut secs = 5u64;
    let mut codecs: Vec<String> = Vec::new();
    let mut profiles = vec![Profile::Ethernet, Profile::Wifi];
    let mut fps: Option<String> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--secs" => secs = it.next().and_then(|v| v.parse().ok()).context("--secs N")?,
            "--fps" => fps = Some(it.next().context("--fps N")?.clone()),
            "--codec" => codecs.push(it.next().context("--codec NAME")?.clone()),
            "--profile" => {
                profiles = match it.next().map(String::as_str) {
                    Some("ethernet") => vec![Profile::Ethernet],
                    Some("wifi") => vec![Profile::Wifi],
                    other => bail!("--profile ethernet|wifi, not {other:?}"),
                }
            }
            other => bail!(
                "unknown argument {other:?}: cargo xtask bench link [--secs N] [--codec C]..."
            ),
        }
    }
    if let Some(why) = unavailable() {
        bail!("bench link needs network namespaces: {why}");
    }
    clean_stale();
    let kit = Kit::new(true)?;
    let mut runs: Vec<Option<String>> = vec![None];
    if kit.codec_flag {
        if codecs.is_empty() {
            codecs.push("auto".into());
        }
        runs.extend(codecs.into_iter().map(Some));
    } else if !codecs.is_empty() {
        eprintln!("bench link: this bitmask-send has no --codec yet: raw only");
    }
    let mut rows = Vec::new();
    for &profile in &profiles {
        let bed = Bed::new(profile)?;
        let bulk = bed.bulk_tcp(3.0)?;
        let limit_fps = bulk * 1e6 / 8.0 / WIRE_LEN as f64;
        rows.push(format!(
            "| {} | bulk TCP (baseline) | - | {:.1} | {bulk:.1} | - | - | - |",
            profile.name(),
            limit_fps
        ));
        for transport in ["tcp", "udp"] {
            for codec in &runs {
                let tag = format!(
                    "{}-{transport}-{}",
                    if profile == Profile::Ethernet {
                        "eth"
                    } else {
                        "wifi"
                    },
                    codec.as_deref().unwrap_or("raw")
                );
                let dir = kit.dir(&format!("bench/{tag}"))?;
                let mut recv = kit.receiver(&bed, &dir, "recv", &["--out", "-"])?;
                let mut extra: Vec<String> = vec![
                    "--transport".into(),
                    transport.into(),
                    "--count".into(),
                    "1000000".into(),
                ];
                if let Some(c) = codec {
                    extra.extend(["--codec".into(), c.clone()]);
                }
                if let Some(f) = &fps {
                    extra.extend(["--fps".into(), f.clone()]);
                }
                let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
                let mut send = kit.sender(&bed, &dir, "cam", &extra)?;
                // the first two seconds (image decoding, slow start) are not measured
                let jpath = dir.join("recv-stats.json");
                let json_at = |p: &Path| fs::read_to_string(p).unwrap_or_default();
                std::thread::sleep(Duration::from_secs(2));
                let j0 = json_at(&jpath);
                // per-second latency over the window: median of p50s, worst p99
                let (mut p50s, mut p99s) = (Vec::new(), Vec::new());
                for _ in 0..secs {
                    std::thread::sleep(Duration::from_secs(1));
                    let j = json_at(&jpath);
                    if let Some(v) = stat(&j, "cam", "latency_p50_ms") {
                        p50s.push(v);
                    }
                    if let Some(v) = stat(&j, "cam", "latency_p99_ms") {
                        p99s.push(v);
                    }
                }
                p50s.sort_by(f64::total_cmp);
                let p50 = p50s.get(p50s.len() / 2).copied();
                let p99 = p99s.iter().copied().reduce(f64::max);
                let j1 = json_at(&jpath);
                send.signal(libc::SIGKILL);
                let _ = send.wait(Duration::from_secs(5));
                recv.stop()?;
                let get = |j: &str, k: &str| stat(j, "cam", k).unwrap_or(0.0);
                let when = |j: &str| top_number(j, "time_unix_ms").unwrap_or(0.0) / 1000.0;
                let span = (when(&j1) - when(&j0)).max(0.1);
                let fps = (get(&j1, "received") - get(&j0, "received")) / span;
                let mbps = (get(&j1, "wire_bytes") - get(&j0, "wire_bytes")) * 8.0 / 1e6 / span;
                // gaps in the sequence: incomplete and undecodable frames included
                let lost = get(&j1, "lost") - get(&j0, "lost");
                let sent = get(&j1, "last_sequence") - get(&j0, "last_sequence");
                let row = format!(
                    "| {} | {transport} | {} | {fps:.1} | {mbps:.1} | {} | {} | {:.1}% |",
                    profile.name(),
                    codec.as_deref().unwrap_or("raw"),
                    fmt_ms(p50),
                    fmt_ms(p99),
                    if sent > 0.0 { lost * 100.0 / sent } else { 0.0 },
                );
                eprintln!("{row}");
                rows.push(row);
            }
        }
        rows.push(format!(
            "| {} | link limit (tbf rate) | - | {:.1} | {}.0 | - | - | - |",
            profile.name(),
            profile.rate_mbit() as f64 * 1e6 / 8.0 / WIRE_LEN as f64,
            profile.rate_mbit()
        ));
    }
    println!(
        "\n`cargo xtask bench link {}` (1024x768 masks of the sample scene; receiver \
         writing to a pipe; fps and Mbit/s of received wire bytes over {secs} s after 2 s of \
         warm-up; latency = capture to written, median of per-second p50, worst per-second \
         p99; lost = frames of the window never written: sequence gaps, incomplete UDP \
         frames, undecodable deltas after a loss, UDP frames passed over with the output \
         behind)\n",
        args.join(" ")
    );
    println!(
        "| profile | transport | codec | fps | Mbit/s | latency p50 ms | latency p99 ms | lost |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
    Ok(())
}

fn fmt_ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.1}"))
}
