//! `cargo xtask dist`: the Raspberry Pi builds, their architecture checks, and the
//! proofs under qemu-user (`cargo xtask qemu`).
//!
//! * `target/dist/armv6/` — ARM1176JZF-S (Pi 1, Pi Zero/Zero W): ARMv6KZ, VFPv2, no NEON,
//!   no Thumb-2. Fully static (musl, built with zig); std is rebuilt for the CPU with
//!   `-Zbuild-std` because rustup has no ARMv6 musl std. No Debian armhf object is ever
//!   linked in (they are ARMv7 code and SIGILL on an ARM1176).
//! * `target/dist/armv7/` — Cortex-A7 (Pi 2; runs on Pi 3/4/5 with a 32-bit userland):
//!   NEON + VFPv4, dynamically linked against glibc <= 2.28 (Raspberry Pi OS Buster and
//!   newer), linked by zig against glibc 2.28 stubs.
//! * `target/dist/host/` — this machine.
//! * `target/dist/SHA256SUMS` — `cd target/dist && sha256sum -c SHA256SUMS`.
//!
//! Cross builds use their own target dirs (`target/cross*`), so they neither block on nor
//! invalidate the host build; everything is cached and a no-change rebuild takes seconds.

use crate::util::{have, root, run, show};
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The two binaries shipped to the Pis.
pub const BINS: &[&str] = &["bitmask-send", "bitmask-recv"];
/// The cargo profile of the shipped binaries (root Cargo.toml: LTO, strip, panic=abort).
pub const PROFILE: &str = "dist";
/// The glibc floor of the ARMv7 build (Raspberry Pi OS 10 "Buster" ships 2.28).
pub const GLIBC_FLOOR: (u32, u32) = (2, 28);

/// A Raspberry Pi build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Arch {
    /// ARM1176JZF-S: Pi 1 A/B/A+/B+, Pi Zero, Pi Zero W.
    V6,
    /// Cortex-A7 and newer in 32-bit mode: Pi 2, Pi 3, Pi 4, Pi Zero 2 W.
    V7,
}

impl Arch {
    pub const ALL: [Arch; 2] = [Arch::V6, Arch::V7];

    pub fn parse(s: &str) -> Result<Arch> {
        match s {
            "armv6" | "v6" | "arm1176" => Ok(Arch::V6),
            "armv7" | "v7" | "cortex-a7" => Ok(Arch::V7),
            _ => bail!("unknown build {s:?}: use armv6 (Pi 1/Zero) or armv7 (Pi 2/3/4)"),
        }
    }
    /// Directory name under `target/dist`.
    pub fn name(self) -> &'static str {
        match self {
            Arch::V6 => "armv6",
            Arch::V7 => "armv7",
        }
    }
    /// The rustc target triple.
    pub fn triple(self) -> &'static str {
        match self {
            Arch::V6 => "arm-unknown-linux-musleabihf",
            Arch::V7 => "armv7-unknown-linux-gnueabihf",
        }
    }
    /// The triple given to cargo-zigbuild (with the glibc version to link against).
    fn zig_triple(self) -> &'static str {
        match self {
            Arch::V6 => "arm-unknown-linux-musleabihf",
            Arch::V7 => "armv7-unknown-linux-gnueabihf.2.28",
        }
    }
    pub fn rustflags(self) -> &'static str {
        match self {
            // link-self-contained=no: zig supplies musl's crt objects and libc, built for
            // the target CPU (rustc's self-contained ones are not shipped for this target).
            // `--cfg bitmask_armv6`: bitmask-core's ARMv6 media-instruction
            // kernels (ARMv6 and later: both builds).
            Arch::V6 => "-C target-cpu=arm1176jzf-s -C link-self-contained=no --cfg bitmask_armv6",
            // The Pi 2's Cortex-A7 has NEON and VFPv4 with 32 D registers; the armv7
            // target default leaves NEON off, so turn it on (rustc warns it is unstable).
            // `--cfg bitmask_neon`: bitmask-core's NEON-shaped loops (see its kernels.rs).
            Arch::V7 => {
                "-C target-cpu=cortex-a7 -C target-feature=+neon,+vfp4,+d32 --cfg bitmask_neon \
                 --cfg bitmask_armv6"
            }
        }
    }
    /// Whether std has to be rebuilt (no prebuilt std from rustup).
    fn build_std(self) -> bool {
        matches!(self, Arch::V6)
    }
    /// `qemu-arm -cpu` of the Pi this build is for.
    pub fn qemu_cpu(self) -> &'static str {
        match self {
            Arch::V6 => "arm1176",
            Arch::V7 => "cortex-a7",
        }
    }
    /// `qemu-arm ... ` prefix that runs this build on this machine as on its Pi.
    pub fn qemu_prefix(self) -> Vec<String> {
        self.qemu_prefix_on(self.qemu_cpu())
    }
    /// Like [`Arch::qemu_prefix`] on another CPU model.
    pub fn qemu_prefix_on(self, cpu: &str) -> Vec<String> {
        let mut v = vec!["qemu-arm".to_string(), "-cpu".into(), cpu.into()];
        if self == Arch::V7 {
            // dynamic glibc build: the loader and libc come from Debian's armhf cross libc
            v.extend(["-L".into(), ARMHF_SYSROOT.into()]);
        }
        v
    }
    /// Where cargo leaves this build's binaries for `profile`.
    pub fn out_dir(self, profile: &str) -> PathBuf {
        self.cross_dir().join(self.triple()).join(profile)
    }
    /// `target/dist/<name>`.
    pub fn dist_dir(self) -> PathBuf {
        dist_dir().join(self.name())
    }
    /// Each ARM build has its own target dir, so the two can build at the same time.
    pub fn cross_dir(self) -> PathBuf {
        match self {
            Arch::V6 => cross_dir(),
            Arch::V7 => root().join("target/cross-armv7"),
        }
    }
    /// The unit tests' target dir: apart from the dist build's, so the two
    /// build at the same time too (the ARMv6 std is built for each profile).
    pub fn test_dir(self) -> PathBuf {
        match self {
            Arch::V6 => root().join("target/cross-test"),
            Arch::V7 => root().join("target/cross-armv7-test"),
        }
    }
    pub fn env_key(self) -> String {
        self.triple().to_uppercase().replace('-', "_")
    }
}

/// Versions known to work together here (one on PATH is used only at these).
const CARGO_ZIGBUILD: &str = "cargo-zigbuild==0.24.1";
const ZIGLANG: &str = "ziglang==0.17.1";

/// Debian's armhf glibc (package libc6-armhf-cross), used only to *run* the ARMv7 build
/// under qemu. It is ARMv7 code and never linked into anything.
pub const ARMHF_SYSROOT: &str = "/usr/arm-linux-gnueabihf";

/// Where `cargo xtask dist` puts the finished binaries (`armv6/`, `armv7/`, `host/`).
pub fn dist_dir() -> PathBuf {
    root().join("target/dist")
}
/// The cross builds' cargo target directory.
pub fn cross_dir() -> PathBuf {
    root().join("target/cross")
}

// ---------------------------------------------------------------------------------------
// Tools

/// What the cross builds need, found or installed.
pub struct Tools {
    /// Directory holding the `zig` executable, prepended to PATH.
    zig_dir: Option<PathBuf>,
    /// The `cargo-zigbuild` to run: on PATH, or from PyPI in target/zig-venv.
    zigbuild: PathBuf,
}

fn is_root() -> bool {
    crate::util::output(Command::new("id").arg("-u"))
        .map(|s| s.trim() == "0")
        .unwrap_or(false)
}

/// Installs Debian packages when running as root, else fails with the exact command.
pub fn apt_install(pkgs: &[&str], why: &str) -> Result<()> {
    if is_root() && have("apt-get") {
        eprintln!("xtask: installing {pkgs:?} ({why})");
        // (another apt-get's dpkg lock is waited for; its package lists' lock
        // is not: `cargo xtask ci` runs one apt-get at a time)
        let lock = ["-o", "DPkg::Lock::Timeout=600"];
        let mut c = Command::new("apt-get");
        c.args(lock)
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(pkgs);
        c.env("DEBIAN_FRONTEND", "noninteractive");
        if run(&mut c).is_err() {
            // a fresh machine has no package lists yet
            run(Command::new("apt-get").args(lock).args(["update", "-q"]))?;
            run(&mut c)?;
        }
        return Ok(());
    }
    bail!(
        "{why}: install it with `sudo apt-get install {}`",
        pkgs.join(" ")
    )
}

fn ensure_prog(prog: &str, pkg: &str, why: &str) -> Result<()> {
    if !have(prog) {
        apt_install(&[pkg], &format!("{prog} is missing ({why})"))?;
    }
    Ok(())
}

/// The Debian packages of the proofs under qemu that are missing, each with
/// what it is for: qemu-arm, readelf, and (for the ARMv7 build) Debian's
/// armhf libc to run it.
pub fn qemu_missing() -> Vec<(&'static str, &'static str)> {
    let mut need = Vec::new();
    if !have("qemu-arm") {
        need.push(("qemu-user", "runs the ARM builds as on the Pis"));
    }
    if !have("readelf") {
        need.push(("binutils", "checks the ARM builds' architecture"));
    }
    if !Path::new(ARMHF_SYSROOT)
        .join("lib/ld-linux-armhf.so.3")
        .exists()
    {
        need.push((
            "libc6-armhf-cross",
            "the ARMv7 build's glibc, to run it under qemu-arm",
        ));
    }
    need
}

/// Installs `need` (package, what it is for) in one apt-get when running
/// as root, else fails with the exact command; nothing when it is empty.
pub fn install_missing(need: &[(&str, &str)]) -> Result<()> {
    if need.is_empty() {
        return Ok(());
    }
    let pkgs: Vec<&str> = need.iter().map(|(p, _)| *p).collect();
    let why: Vec<String> = need.iter().map(|(p, w)| format!("{p}: {w}")).collect();
    apt_install(&pkgs, &format!("missing ({})", why.join("; ")))
}

/// qemu-arm, readelf, and (for the ARMv7 build) Debian's armhf libc to run it.
pub fn ensure_qemu() -> Result<()> {
    install_missing(&qemu_missing())
}

/// Installs or checks rustup targets/components, cargo-zigbuild and zig.
pub fn ensure_tools() -> Result<Tools> {
    // the rustup downloads beside the PyPI ones
    std::thread::scope(|sc| {
        let rust = sc.spawn(|| -> Result<()> {
            // (started by `cargo xtask ci`, which installs binutils meanwhile
            // in its one apt-get: two at once could fail on apt's locks; the
            // first build's architecture check says so if it is missing still)
            if std::env::var_os(BACKGROUND_OF).is_none() {
                ensure_prog("readelf", "binutils", "checks the ARM builds' architecture")?;
            }
            crate::util::ensure_target(None, Arch::V7.triple())?;
            crate::util::ensure_components(
                &["rust-src"],
                "the ARMv6 build (its std is built from source)",
            )
        });
        let pypi = tools_from_pypi();
        rust.join().expect("rustup thread")?;
        let (zig_dir, zigbuild) = pypi?;
        Ok(Tools { zig_dir, zigbuild })
    })
}

/// zig and cargo-zigbuild from PATH, else from PyPI into their own venv
/// under target/: `ziglang`, and cargo-zigbuild's prebuilt wheel (a
/// download of seconds; `cargo install` compiles it for minutes, and the
/// CI run's ARM builds wait for it). Returns the directory to put first on
/// PATH for zig (None: zig is on PATH) and the cargo-zigbuild to run.
fn tools_from_pypi() -> Result<(Option<PathBuf>, PathBuf)> {
    // (one on PATH is used only at the pinned version: another zig or
    // cargo-zigbuild may not link these builds, and says so obscurely)
    let pinned = |prog: &str, arg: &str, pin: &str| {
        let want = pin.split("==").nth(1).unwrap_or(pin);
        have(prog)
            && crate::util::output(Command::new(prog).arg(arg))
                .is_ok_and(|v| v.split_whitespace().any(|w| w == want))
    };
    let need_zig = !pinned("zig", "version", ZIGLANG);
    let need_zigbuild = !pinned("cargo-zigbuild", "--version", CARGO_ZIGBUILD);
    if !need_zig && !need_zigbuild {
        return Ok((None, PathBuf::from("cargo-zigbuild")));
    }
    let venv = root().join("target/zig-venv");
    let py = venv.join("bin/python");
    let zigbuild = venv.join("bin/cargo-zigbuild");
    let zig_dir = |py: &Path| -> Option<PathBuf> {
        let out = Command::new(py)
            .args([
                "-c",
                "import ziglang, os; print(os.path.dirname(ziglang.__file__))",
            ])
            .stderr(Stdio::null())
            .output()
            .ok()?;
        let d = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        (out.status.success() && d.join("zig").exists()).then_some(d)
    };
    // written after a pip install that succeeded, with the pins it installed:
    // a venv that pip left half done (a run stopped), or made for older
    // pins, is installed into again
    let marker = venv.join("bitmask-pins");
    let pins = format!("{ZIGLANG} {CARGO_ZIGBUILD}\n");
    let ready = |py: &Path| {
        std::fs::read_to_string(&marker).is_ok_and(|m| m == pins)
            && (!need_zig || zig_dir(py).is_some())
            && (!need_zigbuild || zigbuild.exists())
    };
    let fix = format!(
        "fix: {} -m pip install {ZIGLANG} {CARGO_ZIGBUILD} (or put zig and cargo-zigbuild \
         on PATH: `cargo install --locked {}`)",
        py.display(),
        CARGO_ZIGBUILD.replace("==", "@")
    );
    let no_python = "zig or cargo-zigbuild is missing and there is no python3 to get them from \
                     PyPI: install python3 and python3-venv, or put both on PATH";
    if !crate::util::venv_possible() && std::env::var_os(BACKGROUND_OF).is_some() {
        // Started by `cargo xtask ci`, whose apt-get beside this installs
        // python3-venv on a fresh machine: waited for (10 min at most).
        eprintln!("xtask: python3 cannot make a venv yet: waiting for cargo xtask ci's apt-get");
        let t = std::time::Instant::now();
        while !crate::util::venv_possible() && t.elapsed() < Duration::from_secs(600) {
            std::thread::sleep(Duration::from_secs(2));
        }
    }
    let py = crate::util::ensure_venv(&venv, no_python)?;
    if !ready(&py) {
        // (cargo-zigbuild's wheel requires ziglang: both pinned, in one pip)
        let _ = std::fs::remove_file(&marker);
        run(Command::new(&py).args(["-m", "pip", "install", "-q", ZIGLANG, CARGO_ZIGBUILD]))
            .context(fix.clone())?;
        std::fs::write(&marker, &pins)
            .with_context(|| format!("cannot write {}", marker.display()))?;
    }
    let dir = if need_zig {
        Some(zig_dir(&py).with_context(|| {
            format!("ziglang installed but its zig executable was not found; {fix}")
        })?)
    } else {
        None
    };
    if need_zigbuild && !zigbuild.exists() {
        bail!(
            "pip installed cargo-zigbuild but {} is missing; {fix}",
            zigbuild.display()
        );
    }
    Ok((
        dir,
        if need_zigbuild {
            zigbuild
        } else {
            PathBuf::from("cargo-zigbuild")
        },
    ))
}

impl Tools {
    /// `cargo-zigbuild <sub>` with the environment of the cross builds.
    pub fn cargo(&self, sub: &str) -> Command {
        let mut c = Command::new(&self.zigbuild);
        c.arg(sub).current_dir(root());
        if let Some(d) = &self.zig_dir {
            let path = std::env::var_os("PATH").unwrap_or_default();
            let mut dirs = vec![d.clone()];
            dirs.extend(std::env::split_paths(&path));
            c.env("PATH", std::env::join_paths(dirs).unwrap());
        }
        // cargo-zigbuild writes its compiler wrappers (which name the zig to run) under
        // ~/.cache/cargo-zigbuild/VERSION, one copy per machine: two checkouts then ran
        // each other's zig, and removing one checkout's target/ broke the other's build.
        if std::env::var_os("CARGO_ZIGBUILD_CACHE_DIR").is_none() {
            c.env(
                "CARGO_ZIGBUILD_CACHE_DIR",
                root().join("target/zigbuild-cache"),
            );
        }
        // -Zbuild-std on stable, for the ARMv6 std (set for every cross build so that the
        // builds share one fingerprint and their caches).
        c.env("RUSTC_BOOTSTRAP", "1");
        c.env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS");
        for a in Arch::ALL {
            c.env(
                format!("CARGO_TARGET_{}_RUSTFLAGS", a.env_key()),
                a.rustflags(),
            );
            c.env(
                format!("CARGO_TARGET_{}_RUNNER", a.env_key()),
                a.qemu_prefix().join(" "),
            );
        }
        c
    }

    /// Adds `--target` (and -Zbuild-std for ARMv6) to a cross cargo command.
    pub fn target_args(c: &mut Command, arch: Arch, test: bool) {
        c.args(["--target", arch.zig_triple()]);
        c.arg("--target-dir").arg(if test {
            arch.test_dir()
        } else {
            arch.cross_dir()
        });
        if arch.build_std() {
            c.arg(if test {
                "-Zbuild-std"
            } else {
                "-Zbuild-std=std,panic_abort"
            });
        }
    }

    /// Builds the two binaries for `arch` in `profile`; returns cargo's output dir.
    pub fn build_bins(&self, arch: Arch, profile: &str) -> Result<PathBuf> {
        let mut c = self.cargo("zigbuild");
        Self::target_args(&mut c, arch, false);
        c.args([
            "--profile",
            profile,
            "-p",
            "bitmask-sender",
            "-p",
            "bitmask-receiver",
        ]);
        let t = Instant::now();
        run(&mut c).with_context(|| format!("the {} build failed", arch.name()))?;
        eprintln!(
            "xtask: {} build ({profile}) took {:.1} s",
            arch.name(),
            t.elapsed().as_secs_f64()
        );
        Ok(arch.out_dir(profile))
    }
}

// ---------------------------------------------------------------------------------------
// Architecture checks

/// What `readelf` says about an ARM binary.
#[derive(Debug, Default)]
pub struct ElfFacts {
    pub cpu_arch: String,
    pub thumb: String,
    pub fp: String,
    pub simd: String,
    pub hard_float: bool,
    pub interp: Option<String>,
    pub needed: Vec<String>,
    pub glibc_max: Option<(u32, u32)>,
}

fn readelf(args: &[&str], file: &Path) -> Result<String> {
    crate::util::output(Command::new("readelf").args(args).arg(file))
}

/// What `readelf` says of an ARM binary (CPU architecture, interpreter, glibc symbols).
pub fn elf_facts(file: &Path) -> Result<ElfFacts> {
    let mut f = ElfFacts::default();
    let attr = readelf(&["-A"], file)?;
    for l in attr.lines() {
        let l = l.trim();
        let val = |k: &str| l.strip_prefix(k).map(|v| v.trim().to_string());
        if let Some(v) = val("Tag_CPU_arch:") {
            f.cpu_arch = v;
        } else if let Some(v) = val("Tag_THUMB_ISA_use:") {
            f.thumb = v;
        } else if let Some(v) = val("Tag_FP_arch:") {
            f.fp = v;
        } else if let Some(v) = val("Tag_Advanced_SIMD_arch:") {
            f.simd = v;
        }
    }
    let hdr = readelf(&["-hW"], file)?;
    if !hdr
        .lines()
        .any(|l| l.contains("Machine:") && l.contains("ARM"))
    {
        bail!("{} is not an ARM executable", file.display());
    }
    f.hard_float = hdr.contains("hard-float ABI");
    let ph = readelf(&["-lW"], file)?;
    f.interp = ph
        .lines()
        .find_map(|l| l.split("[Requesting program interpreter: ").nth(1))
        .map(|s| s.trim_end_matches(']').to_string());
    let dynamic = readelf(&["-dW"], file)?;
    f.needed = dynamic
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| {
            l.split('[')
                .nth(1)
                .map(|s| s.trim_end_matches(']').to_string())
        })
        .collect();
    let vers = readelf(&["-VW"], file)?;
    for tok in vers.split(|c: char| c.is_whitespace()) {
        if let Some(v) = tok.strip_prefix("GLIBC_") {
            let mut it = v.split('.').map(|x| x.parse::<u32>().ok());
            if let (Some(Some(a)), Some(Some(b))) = (it.next(), it.next()) {
                f.glibc_max = f.glibc_max.max(Some((a, b)));
            }
        }
    }
    Ok(f)
}

/// Fails unless `file` is a valid build for `arch`; returns a one-line summary.
pub fn check_arch(file: &Path, arch: Arch) -> Result<String> {
    let f = elf_facts(file)?;
    let name = file.display();
    if !f.hard_float {
        bail!("{name}: not a hard-float (armhf) binary; Raspberry Pi OS is armhf");
    }
    match arch {
        Arch::V6 => {
            // ARM1176JZF-S is ARMv6KZ: v6, v6K and v6KZ code runs on it; v6T2 (Thumb-2) or v7 does not.
            if !matches!(f.cpu_arch.as_str(), "v6" | "v6K" | "v6KZ") {
                bail!(
                    "{name}: Tag_CPU_arch is {:?}, expected v6 or v6KZ: this would SIGILL on a Pi 1/Zero",
                    f.cpu_arch
                );
            }
            if f.thumb.contains("Thumb-2") {
                bail!(
                    "{name}: Tag_THUMB_ISA_use is {:?}: Thumb-2 does not exist on an ARM1176",
                    f.thumb
                );
            }
            if !f.simd.is_empty() {
                bail!(
                    "{name}: uses Advanced SIMD ({}): no NEON on an ARM1176",
                    f.simd
                );
            }
            if f.interp.is_some() || !f.needed.is_empty() {
                bail!(
                    "{name}: not static (interpreter {:?}, needs {:?}): the ARMv6 build must be fully static",
                    f.interp,
                    f.needed
                );
            }
            Ok(format!(
                "Tag_CPU_arch {}, Thumb {}, FP {}, no NEON, static",
                f.cpu_arch,
                if f.thumb.is_empty() { "none" } else { &f.thumb },
                f.fp
            ))
        }
        Arch::V7 => {
            if !f.cpu_arch.starts_with("v7") {
                bail!("{name}: Tag_CPU_arch is {:?}, expected v7", f.cpu_arch);
            }
            let link = match (&f.interp, f.glibc_max) {
                (None, _) if f.needed.is_empty() => "static".to_string(),
                (Some(i), Some(g)) => {
                    if g > GLIBC_FLOOR {
                        bail!(
                            "{name}: needs GLIBC_{}.{}, newer than {}.{} (Raspberry Pi OS Buster): it would not start there",
                            g.0, g.1, GLIBC_FLOOR.0, GLIBC_FLOOR.1
                        );
                    }
                    if i != "/lib/ld-linux-armhf.so.3" {
                        bail!("{name}: interpreter {i}, expected /lib/ld-linux-armhf.so.3");
                    }
                    format!("glibc >= {}.{} ({})", g.0, g.1, f.needed.join(" "))
                }
                _ => bail!("{name}: dynamic but without glibc symbol versions: cannot check the glibc floor"),
            };
            Ok(format!(
                "Tag_CPU_arch {}, Thumb {}, FP {}, SIMD {}, {link}",
                f.cpu_arch,
                f.thumb,
                f.fp,
                if f.simd.is_empty() { "none" } else { &f.simd }
            ))
        }
    }
}

/// The linker keeps one set of build attributes for the whole binary, so also check every
/// C library a build script compiled (e.g. zstd, built by zig cc) object by object.
pub fn check_c_libs(out_dir: &Path) -> Result<usize> {
    let mut n = 0;
    let Ok(builds) = std::fs::read_dir(out_dir.join("build")) else {
        return Ok(0);
    };
    for b in builds.flatten() {
        let Ok(files) = std::fs::read_dir(b.path().join("out")) else {
            continue;
        };
        for f in files.flatten() {
            let p = f.path();
            if p.extension().is_some_and(|e| e == "a" || e == "o") {
                let attr = readelf(&["-A"], &p)?;
                for l in attr.lines() {
                    if let Some(v) = l.trim().strip_prefix("Tag_CPU_arch:") {
                        if !matches!(
                            v.trim(),
                            "v6" | "v6K" | "v6KZ" | "v5TE" | "v5TEJ" | "v4T" | "v4"
                        ) {
                            bail!(
                                "{}: an object is Tag_CPU_arch {}: not ARMv6 code",
                                p.display(),
                                v.trim()
                            );
                        }
                    }
                    if l.contains("Thumb-2") {
                        bail!("{}: an object uses Thumb-2", p.display());
                    }
                }
                n += 1;
            }
        }
    }
    Ok(n)
}

// ---------------------------------------------------------------------------------------
// `cargo xtask dist`

const DIST_HELP: &str = "\
cargo xtask dist [--no-host] [--only armv6|armv7] [--profile NAME]

Builds bitmask-send and bitmask-recv for the Pis into target/dist/armv6 (Pi 1/Zero,
static musl, ARM1176) and target/dist/armv7 (Pi 2/3/4 32-bit, Cortex-A7 + NEON,
glibc >= 2.28), plus target/dist/host, checks every ARM binary with readelf
(CPU architecture, Thumb-2, NEON, static / glibc floor), writes target/dist/SHA256SUMS
and prints the sizes. Profile `dist` (root Cargo.toml): fat LTO, 1 codegen unit,
panic=abort, stripped. Installs missing tools (rustup target/rust-src; zig and cargo-zigbuild
from PyPI into target/zig-venv unless on PATH at the pinned versions; binutils) or says how.
Proofs under qemu: `cargo xtask qemu`.
";

/// `cargo xtask dist`: the Pi builds, checked.
pub fn run_dist(args: &[String]) -> Result<()> {
    let mut host = true;
    let mut only: Option<Arch> = None;
    let mut profile = PROFILE.to_string();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--no-host" => host = false,
            "--only" => {
                only = Some(Arch::parse(
                    it.next().context("--only needs armv6 or armv7")?,
                )?)
            }
            "--profile" => profile = it.next().context("--profile needs a name")?.clone(),
            "-h" | "--help" => {
                print!("{DIST_HELP}");
                return Ok(());
            }
            o => bail!("unknown dist option {o:?}\n\n{DIST_HELP}"),
        }
    }
    let archs: Vec<Arch> = match only {
        Some(a) => vec![a],
        None => Arch::ALL.to_vec(),
    };
    let tools = ensure_tools()?;
    let summary = build_dist(&tools, &archs, host && only.is_none(), &profile)?;
    println!("{summary}");
    Ok(())
}

/// Builds, checks and copies into target/dist; returns a table of the results.
pub fn build_dist(tools: &Tools, archs: &[Arch], host: bool, profile: &str) -> Result<String> {
    let mut rows: Vec<(String, u64, String)> = Vec::new();
    let mut copy = |from: &Path, sub: &str, check: Option<Arch>| -> Result<()> {
        let dir = dist_dir().join(sub);
        std::fs::create_dir_all(&dir)?;
        for b in BINS {
            let src = from.join(b);
            let note = match check {
                Some(a) => check_arch(&src, a)
                    .with_context(|| format!("architecture check of the {sub} build failed"))?,
                None => "host".into(),
            };
            let dst = dir.join(b);
            let tmp = dir.join(format!(".{b}.tmp"));
            std::fs::copy(&src, &tmp).with_context(|| format!("copy {}", src.display()))?;
            std::fs::rename(&tmp, &dst)?;
            rows.push((format!("{sub}/{b}"), std::fs::metadata(&dst)?.len(), note));
        }
        Ok(())
    };
    // the ARM builds have separate target dirs: build them side by side (std's long serial
    // crates leave a core idle otherwise)
    let outs: Vec<Result<PathBuf>> = std::thread::scope(|sc| {
        let hs: Vec<_> = archs
            .iter()
            .map(|&a| sc.spawn(move || tools.build_bins(a, profile)))
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("build thread"))
            .collect()
    });
    for (&a, out) in archs.iter().zip(outs) {
        let out = out?;
        if a == Arch::V6 {
            check_c_libs(&out)?;
        }
        copy(&out, a.name(), Some(a))?;
    }
    if host {
        let mut c = crate::util::cargo();
        c.args([
            "build",
            "--profile",
            profile,
            "-p",
            "bitmask-sender",
            "-p",
            "bitmask-receiver",
        ]);
        // its own target dir: sharing the ARMv6 one (same host proc-macros, different
        // environment) would rebuild those every time
        let dir = root().join("target/cross-host");
        c.arg("--target-dir").arg(&dir);
        run(&mut c)?;
        copy(&dir.join(profile), "host", None)?;
    }
    write_sums()?;
    let mut s = format!("target/dist (profile {profile}):\n");
    for (n, size, note) in &rows {
        s.push_str(&format!(
            "  {n:<22} {:>8.1} KiB  {note}\n",
            *size as f64 / 1024.0
        ));
    }
    s.push_str("  SHA256SUMS: cd target/dist && sha256sum -c SHA256SUMS\n");
    Ok(s)
}

/// The SHA-256 of a file, in hex.
pub fn sha256_file(p: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let mut f = std::fs::File::open(p).with_context(|| format!("open {}", p.display()))?;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// target/dist/SHA256SUMS over every binary present under target/dist/{armv6,armv7,host}.
fn write_sums() -> Result<()> {
    let mut lines = BTreeMap::new();
    for sub in ["armv6", "armv7", "host"] {
        for b in BINS {
            let p = dist_dir().join(sub).join(b);
            if p.exists() {
                lines.insert(format!("{sub}/{b}"), sha256_file(&p)?);
            }
        }
    }
    let text: String = lines.iter().map(|(n, h)| format!("{h}  {n}\n")).collect();
    std::fs::write(dist_dir().join("SHA256SUMS"), text)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// `cargo xtask qemu`: the proofs on the CPUs

const QEMU_HELP: &str = "\
cargo xtask qemu [--no-build] [all|unit|e2e|sigill|deploy|build]...

Proves the Pi builds on emulated Pi CPUs (qemu-user):
  unit    the library unit tests (bitmask-core, bitmask-wire, bitmask-codec) built for
          ARMv6 and run under `qemu-arm -cpu arm1176`, built for ARMv7 and run under
          `qemu-arm -cpu cortex-a7`, optimised as shipped (vectorised loops, NEON
          on ARMv7, exist only there) with overflow checks and debug assertions
  e2e     target/dist: an ARMv6 receiver and an ARMv7 sender under qemu on loopback stream
          test images; the masks must equal the host build's bit for bit
  deploy  two sshd on loopback ports stand in for two Pis (run_prefix qemu-arm): `xtask
          deploy` streams, masks are checked, Ctrl-C leaves no process; error cases
  sigill  test of the test: the ARMv7 build under -cpu arm1176 must die of SIGILL
  all     dist (ARM builds, checked) + all of the above (the CI step)
  build   only build what the others run (the ARM dist builds and the unit tests'
          binaries), run nothing: `cargo xtask ci` does this in the background
";

/// `cargo xtask qemu`: the proofs under qemu-user.
pub fn run_qemu(args: &[String]) -> Result<()> {
    let no_build = args.iter().any(|a| a == "--no-build");
    let args: Vec<String> = args
        .iter()
        .filter(|a| *a != "--no-build")
        .cloned()
        .collect();
    let what: Vec<&str> = if args.is_empty() {
        vec!["all"]
    } else {
        args.iter().map(|s| s.as_str()).collect()
    };
    for w in &what {
        if matches!(*w, "-h" | "--help") {
            print!("{QEMU_HELP}");
            return Ok(());
        }
        if !matches!(*w, "all" | "unit" | "e2e" | "sigill" | "deploy" | "build") {
            bail!("unknown qemu check {w:?}\n\n{QEMU_HELP}");
        }
    }
    if let Ok(parent) = std::env::var(BACKGROUND_OF) {
        watch_parent(&parent)?;
    }
    let tools = ensure_tools()?;
    let all = what.contains(&"all");
    let build_only = what.contains(&"build");
    if !build_only || what.len() > 1 {
        // (the builds alone need no qemu: `cargo xtask ci` installs it
        // beside them, and apt runs one at a time)
        ensure_qemu()?;
    }
    let dist_needed = !no_build
        && (all
            || build_only
            || what
                .iter()
                .any(|w| matches!(*w, "e2e" | "sigill" | "deploy")));
    let unit_needed = all || build_only || what.contains(&"unit");
    // The dist builds and the unit tests' builds side by side (four target
    // dirs): each has long serial stretches (std's crates, the final LTO)
    // that leave a core idle when run one after the other.
    let (dist, units) = std::thread::scope(|sc| {
        let tools = &tools;
        let units = sc.spawn(move || -> Result<()> {
            if unit_needed {
                for a in Arch::ALL {
                    unit_tests(tools, a, false)?;
                }
            }
            Ok(())
        });
        let dist = if dist_needed {
            build_dist(tools, &Arch::ALL, false, PROFILE).map(Some)
        } else {
            Ok(None)
        };
        (dist, units.join().expect("unit-test build thread"))
    });
    if let Some(table) = dist? {
        eprint!("{table}");
    }
    units?;
    if all || what.contains(&"unit") {
        // both at once (separate target dirs); each reports its own result
        let rs: Vec<Result<()>> = std::thread::scope(|sc| {
            let hs: Vec<_> = Arch::ALL
                .iter()
                .map(|&a| {
                    let tools = &tools;
                    sc.spawn(move || unit_tests(tools, a, true))
                })
                .collect();
            hs.into_iter()
                .map(|h| h.join().expect("test thread"))
                .collect()
        });
        for r in rs {
            r?;
        }
    }
    if build_only && !all {
        return Ok(());
    }
    if all || what.contains(&"sigill") {
        sigill_check()?;
    }
    if all || what.contains(&"e2e") {
        e2e()?;
    }
    if all || what.contains(&"deploy") {
        crate::deploy::self_test()?;
    }
    Ok(())
}

/// The crates whose unit tests run under qemu.
pub fn lib_crates() -> Vec<&'static str> {
    let mut v = vec!["bitmask-core", "bitmask-wire"];
    if root().join("crates/codec/Cargo.toml").exists() {
        v.push("bitmask-codec");
    }
    v
}

/// The cargo profile of the unit tests under qemu (root Cargo.toml):
/// optimised like the shipped code, with overflow checks and debug
/// assertions. One build and run per CPU (a debug build and run, then an
/// optimised one for the vectorised kernels, took about twice as long).
pub const QEMU_TEST_PROFILE: &str = "qemu-test";

/// The library crates' unit tests, built for `arch` and run under qemu-user
/// (only built when `run_them` is false).
pub fn unit_tests(tools: &Tools, arch: Arch, run_them: bool) -> Result<()> {
    let crates = lib_crates();
    let mut c = tools.cargo("test");
    Tools::target_args(&mut c, arch, true);
    for p in &crates {
        c.args(["-p", p]);
    }
    c.args(["--lib", "--profile", QEMU_TEST_PROFILE]);
    if !run_them {
        c.arg("--no-run");
        return run(&mut c)
            .with_context(|| format!("the unit tests' build for {} failed", arch.name()));
    }
    let t = Instant::now();
    run(&mut c).with_context(|| {
        format!(
            "unit tests of the {} build under `{}` failed",
            arch.name(),
            arch.qemu_prefix().join(" ")
        )
    })?;
    eprintln!(
        "xtask: unit tests {crates:?} ({QEMU_TEST_PROFILE}: optimised, overflow checks, \
         debug assertions) passed as {} under {} in {:.0} s",
        arch.name(),
        arch.qemu_prefix().join(" "),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The ARMv7 build must not run on an ARM1176: qemu must report SIGILL.
pub fn sigill_check() -> Result<()> {
    let v7 = Arch::V7.dist_dir().join("bitmask-send");
    let mut c = Command::new("qemu-arm");
    c.args(Arch::V7.qemu_prefix_on("arm1176").iter().skip(1))
        .arg(&v7)
        .arg("--help");
    c.stdout(Stdio::null()).stderr(Stdio::null());
    eprintln!("$ {}   (must die of SIGILL)", show(&c));
    let st = c.status()?;
    use std::os::unix::process::ExitStatusExt;
    match st.signal() {
        Some(4) => eprintln!("xtask: ok: the ARMv7 build dies of SIGILL on an emulated ARM1176, so the armv6 proofs are real"),
        _ => bail!("the ARMv7 build under -cpu arm1176 ended with {st}, not SIGILL: the emulated CPU does not enforce ARMv6, so the ARMv6 proofs prove nothing"),
    }
    // and the ARMv6 build on the same CPU model starts
    let v6 = Arch::V6.dist_dir().join("bitmask-send");
    let mut c = Command::new("qemu-arm");
    c.args(["-cpu", "arm1176"])
        .arg(&v6)
        .arg("--help")
        .stdout(Stdio::null());
    run(&mut c).context("the ARMv6 build does not run on an emulated ARM1176")?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// End-to-end: ARMv6 receiver + ARMv7 sender under qemu vs the host build

/// Writes the e2e test images (PGM and PPM, deterministic) into `dir`; returns the count.
pub fn write_test_images(dir: &Path) -> Result<usize> {
    std::fs::create_dir_all(dir)?;
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let sizes: &[(usize, usize, bool)] = &[
        (1024, 768, false),
        (1024, 768, true),
        (640, 480, true),
        (333, 97, true),
        (97, 33, false),
        (9, 3, true),
        (1, 1, false),
    ];
    for (i, &(w, h, rgb)) in sizes.iter().enumerate() {
        let ch = if rgb { 3 } else { 1 };
        let mut px = Vec::with_capacity(w * h * ch);
        for y in 0..h {
            for x in 0..w {
                // a lit blob on a gradient, plus noise: bimodal so Otsu has work to do
                let dx = x as i64 - (w / 2) as i64;
                let dy = y as i64 - (h / 3) as i64;
                let blob = if dx * dx + dy * dy < ((w.min(h) / 3) as i64).pow(2) {
                    140
                } else {
                    0
                };
                for c in 0..ch {
                    let base = (x * 60 / w.max(1) + y * 40 / h.max(1) + c * 20) as u64;
                    let v = base + blob + (rnd() % 48);
                    px.push(v.min(255) as u8);
                }
            }
        }
        let (magic, ext) = if rgb { ("P6", "ppm") } else { ("P5", "pgm") };
        let mut data = format!("{magic}\n{w} {h}\n255\n").into_bytes();
        data.extend_from_slice(&px);
        std::fs::write(dir.join(format!("img{i:02}.{ext}")), data)?;
    }
    Ok(sizes.len())
}

/// Runs a receiver and a sender (each with an optional command prefix) and returns
/// the output directory.
pub fn stream_pair(
    recv: (&[String], &Path),
    send: (&[String], &Path),
    images: &Path,
    n: usize,
    out: &Path,
    send_args: &[&str],
) -> Result<()> {
    let _ = std::fs::remove_dir_all(out);
    std::fs::create_dir_all(out)?;
    let mk = |prefix: &[String], bin: &Path| {
        let mut c = match prefix.split_first() {
            Some((p, rest)) => {
                let mut c = Command::new(p);
                c.args(rest).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        c.env("RUST_LOG", "info");
        c
    };
    let mut rc = mk(recv.0, recv.1);
    rc.args([
        "--listen",
        "127.0.0.1:0",
        "--format",
        "raw",
        "--count",
        &n.to_string(),
    ])
    .arg("--out")
    .arg(out);
    rc.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    eprintln!("$ {}", show(&rc));
    let mut r = rc.spawn().context("cannot start the receiver")?;
    let (addr, rlog) =
        crate::util::wait_listening(&mut r, "the receiver", Duration::from_secs(60), None)?;
    let mut sc = mk(send.0, send.1);
    sc.args(["--to", &addr]).args(send_args).arg(images);
    sc.stdin(Stdio::null());
    eprintln!("$ {}", show(&sc));
    let so = sc.output().context("cannot start the sender")?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let rst = loop {
        if let Some(st) = r.try_wait()? {
            break st;
        }
        if Instant::now() > deadline {
            let _ = r.kill();
            bail!("the receiver did not exit after {n} frames");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let rlog = rlog.join().unwrap_or_default();
    if !so.status.success() || !rst.success() {
        bail!(
            "stream failed: sender {} receiver {rst}\nsender log:\n{}\nreceiver log:\n{rlog}",
            so.status,
            String::from_utf8_lossy(&so.stderr)
        );
    }
    Ok(())
}

/// Every file of `a` equals the file of the same name in `b`, and there are `n` of them.
pub fn compare_dirs(a: &Path, b: &Path, n: usize) -> Result<usize> {
    let list = |d: &Path| -> Result<Vec<String>> {
        let mut v: Vec<String> = std::fs::read_dir(d)?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        Ok(v)
    };
    let (la, lb) = (list(a)?, list(b)?);
    if la != lb {
        bail!(
            "{} holds {la:?} but {} holds {lb:?}",
            a.display(),
            b.display()
        );
    }
    if la.len() < n {
        bail!(
            "{} holds {} files, expected at least {n}",
            a.display(),
            la.len()
        );
    }
    let mut bytes = 0;
    for f in &la {
        let (x, y) = (std::fs::read(a.join(f))?, std::fs::read(b.join(f))?);
        if x != y {
            bail!(
                "{f}: {} and {} differ",
                a.join(f).display(),
                b.join(f).display()
            );
        }
        bytes += x.len();
    }
    Ok(bytes)
}

/// The ARM binaries end to end under qemu: their masks equal the host build's.
pub fn e2e() -> Result<()> {
    // the reference: the host build (debug: the masks do not depend on the profile)
    let host = crate::util::build_bins(false)?;
    let dir = root().join("target/qemu-e2e");
    let images = dir.join("images");
    let n = write_test_images(&images)?;
    let v6 = Arch::V6.dist_dir();
    let v7 = Arch::V7.dist_dir();
    let runs: &[(&str, &[&str])] = &[
        ("luma-otsu", &["--channel", "luma", "--threshold", "otsu"]),
        (
            "blue-100-invert",
            &["--channel", "blue", "--threshold", "100", "--invert"],
        ),
    ];
    for (name, args) in runs {
        let t = Instant::now();
        let want = dir.join(format!("{name}-host"));
        stream_pair(
            (&[], &host.join("bitmask-recv")),
            (&[], &host.join("bitmask-send")),
            &images,
            n,
            &want,
            args,
        )?;
        let got = dir.join(format!("{name}-armv6recv-armv7send"));
        stream_pair(
            (&Arch::V6.qemu_prefix(), &v6.join("bitmask-recv")),
            (&Arch::V7.qemu_prefix(), &v7.join("bitmask-send")),
            &images,
            n,
            &got,
            args,
        )?;
        let bytes = compare_dirs(&got, &want, n)?;
        eprintln!(
            "xtask: e2e {name}: ARMv6 receiver (qemu arm1176) + ARMv7 sender (qemu cortex-a7): {n} masks, {bytes} B, equal to the host build's bit for bit ({:.1} s)",
            t.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// Set in the environment of a job started by [`Background::start`]: the
/// pid of the `cargo xtask ci` that waits for it.
const BACKGROUND_OF: &str = "XTASK_BACKGROUND_OF";

/// Stops this process's group (itself, cargo, rustc) within half a second of
/// the process `parent` ending without waiting for it: a failed or
/// interrupted `cargo xtask ci` leaves no build running.
fn watch_parent(parent: &str) -> Result<()> {
    let parent: i32 = parent
        .parse()
        .with_context(|| format!("{BACKGROUND_OF}={parent:?} is not a pid"))?;
    // SAFETY: getppid and kill have no memory-safety preconditions.
    if unsafe { libc::getppid() } != parent {
        bail!("{BACKGROUND_OF}={parent}, but this process's parent is another one");
    }
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_millis(500));
        // SAFETY: as above; kill(0, ..) signals this process's own group,
        // which `Background::start` made apart from the terminal's.
        if unsafe { libc::getppid() } != parent {
            unsafe { libc::kill(0, libc::SIGTERM) };
            std::process::exit(1);
        }
    });
    Ok(())
}

/// What `cargo xtask ci` runs in the background (`cargo xtask ci-background JOB`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Job {
    /// `cargo xtask qemu build`: the ARM builds, started right after
    /// rustfmt so that they use the cores the host steps leave idle.
    PiBuilds,
    /// `cargo xtask msrv`, let go once the Pi builds are done, beside the
    /// Pi proofs (which mostly wait on qemu, ssh and timers). Its process
    /// starts with the Pi builds' and waits for a line on its stdin
    /// ([`Background::go`]): by then the xtask binary may have been rebuilt
    /// by a step of the run (`cargo build --workspace`), and a new process
    /// could no longer be made from it.
    Msrv,
}

impl Job {
    const ALL: [Job; 2] = [Job::PiBuilds, Job::Msrv];

    /// Its argument to `cargo xtask ci-background`.
    fn arg(self) -> &'static str {
        match self {
            Job::PiBuilds => "pi-builds",
            Job::Msrv => "msrv",
        }
    }

    /// What it is, for messages.
    fn what(self) -> &'static str {
        match self {
            Job::PiBuilds => "the Pi builds",
            Job::Msrv => "the MSRV check",
        }
    }

    /// Its log.
    pub fn log(self) -> PathBuf {
        root().join(match self {
            Job::PiBuilds => "target/ci-pi-build.log",
            Job::Msrv => "target/ci-msrv.log",
        })
    }
}

/// A [`Job`] running in the background at the lowest CPU priority, its
/// output in its own log ([`Job::log`]).
pub struct Background {
    job: Job,
    child: std::process::Child,
    started: Instant,
    /// A job that waits to be let go ([`Job::Msrv`]): its stdin.
    gate: Option<std::process::ChildStdin>,
}

impl Background {
    /// Starts `job`. The builds install no Debian package (`cargo xtask qemu
    /// build` leaves qemu and binutils to the caller, which installs them
    /// meanwhile: only one apt-get may run at a time).
    pub fn start(job: Job) -> Result<Background> {
        use std::os::unix::process::CommandExt;
        let log = job.log();
        std::fs::create_dir_all(root().join("target"))?;
        let f = std::fs::File::create(&log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let mut c = Command::new(std::env::current_exe()?);
        let gated = job == Job::Msrv;
        c.args(["ci-background", job.arg()])
            .env(BACKGROUND_OF, std::process::id().to_string())
            .current_dir(root())
            .stdin(if gated { Stdio::piped() } else { Stdio::null() })
            .stdout(f.try_clone()?)
            .stderr(f)
            // its own group: stopped as one (see watch_parent); the terminal's
            // Ctrl-C stops `cargo xtask ci`, and the group follows it
            .process_group(0);
        // SAFETY: setpriority is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            c.pre_exec(|| {
                if libc::setpriority(libc::PRIO_PROCESS, 0, 19) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = c.spawn().with_context(|| {
            format!(
                "cannot start `cargo xtask ci-background {}` in the background",
                job.arg()
            )
        })?;
        eprintln!(
            "xtask: {} {} in the background at nice 19 (pid {}); log: {}",
            job.what(),
            if gated { "waits" } else { "started" },
            child.id(),
            log.display()
        );
        let gate = if gated { child.stdin.take() } else { None };
        Ok(Background {
            job,
            child,
            started: Instant::now(),
            gate,
        })
    }

    /// Lets a waiting job ([`Job::Msrv`]) go.
    pub fn go(&mut self) -> Result<()> {
        use std::io::Write;
        if let Some(mut gate) = self.gate.take() {
            gate.write_all(b"go\n").with_context(|| {
                format!(
                    "{}, waiting in the background, has ended (log: {})",
                    self.job.what(),
                    self.job.log().display()
                )
            })?;
            self.started = Instant::now();
            eprintln!("xtask: {} started in the background", self.job.what());
        }
        Ok(())
    }

    /// Fails now if the job has already failed (a missing tool, say), so
    /// that `cargo xtask ci` says so at its next step, not minutes later at
    /// the step that waits for it.
    pub fn check(&mut self) -> Result<()> {
        match self.child.try_wait()? {
            Some(st) if !st.success() => Err(self.failure(st)),
            _ => Ok(()),
        }
    }

    /// Waits for the job (letting it go first if it waits); on failure, the
    /// error carries its log's first error (or its end).
    pub fn wait(mut self) -> Result<()> {
        self.go()?;
        let st = self.child.wait()?;
        if !st.success() {
            return Err(self.failure(st));
        }
        eprintln!(
            "xtask: {}, run in the background, done {:.0} s after it started (log: {})",
            self.job.what(),
            self.started.elapsed().as_secs_f64(),
            self.job.log().display()
        );
        Ok(())
    }

    /// The error of a job that ended with `st`: its log's first error (or
    /// its end).
    fn failure(&self, st: std::process::ExitStatus) -> anyhow::Error {
        let secs = self.started.elapsed().as_secs_f64();
        let log = self.job.log();
        {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            // The first error (builds running beside the failed one went on
            // writing below it: cargo's, this xtask's own, pip's), else the
            // log's end.
            let from = lines
                .iter()
                .position(|l| {
                    l.starts_with("error")
                        || l.starts_with("xtask: error")
                        || l.starts_with("ERROR")
                })
                .unwrap_or(lines.len().saturating_sub(40));
            // 60 lines from there, and the log's last 3 when it goes on
            let end = lines.len().min(from + 60);
            let mut shown = lines[from..end].join("\n");
            if end < lines.len() {
                let tail = lines.len().saturating_sub(3).max(end);
                shown = format!("{shown}\n...\n{}", lines[tail..].join("\n"));
            }
            anyhow::anyhow!(
                "{}, run in the background, failed ({st}) after {secs:.0} s; from {} (line {}):\n{shown}",
                self.job.what(),
                log.display(),
                from + 1
            )
        }
    }
}

/// `cargo xtask ci-background JOB`: what [`Background`] runs.
pub fn run_background(args: &[String]) -> Result<()> {
    let arg = args.first().map(String::as_str).unwrap_or("");
    let Some(job) = Job::ALL.into_iter().find(|j| j.arg() == arg) else {
        let known: Vec<&str> = Job::ALL.iter().map(|j| j.arg()).collect();
        bail!("cargo xtask ci-background: unknown job {arg:?} (known: {known:?})");
    };
    match job {
        // (run_qemu watches its parent itself: it also runs on its own)
        Job::PiBuilds => run_qemu(&["build".to_string()]),
        Job::Msrv => {
            if let Ok(parent) = std::env::var(BACKGROUND_OF) {
                watch_parent(&parent)?;
                // started by `cargo xtask ci`: wait to be let go
                let mut line = String::new();
                std::io::stdin().read_line(&mut line)?;
                if line.trim() != "go" {
                    bail!("not let go by `cargo xtask ci` (it ended first)");
                }
            }
            crate::msrv::check()
        }
    }
}

/// The CI step: ARM dist builds with their checks, unit tests under qemu, SIGILL
/// test-of-the-test, e2e. A missing tool fails (it is installed when possible).
/// `background`: the builds started by [`Background::start`], waited for first.
/// Once they are done, `msrv` (waiting in the background) is let go, to run
/// beside the proofs; the caller waits for it.
pub fn ci_step(background: Option<Background>, msrv: &mut Background) -> Result<()> {
    let t = Instant::now();
    if let Some(b) = background {
        b.wait()?;
    }
    msrv.go()?;
    run_qemu(&["all".to_string()])?;
    eprintln!(
        "xtask: Pi builds proven under qemu in {:.0} s",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
