//! `cargo xtask deploy`: copy the Pi builds to two Raspberry Pis over SSH and run them.
//!
//! Uses the system `ssh`/`scp` (keys, agent, ~/.ssh/config all work as usual; no
//! passwords anywhere). See docs/DEPLOY.md and deploy.example.toml.

use crate::dist::{self, sha256_file, Arch};
use crate::util::{root, sender_counter};
use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const HELP: &str = "\
cargo xtask deploy [OPTIONS]

Builds the Pi binaries (cargo xtask dist), checks each Pi (`uname -m`, free space),
copies the binary over scp and verifies its SHA-256 on the Pi, starts the receiver,
waits until it listens, starts the sender, and streams both logs prefixed by host.
Ctrl-C stops both remote processes (and nothing is left running on the Pis).
Exit status 0 when both sides ended well (or were stopped by Ctrl-C).

Options:
  --config FILE          deploy.toml to use (default: ./deploy.toml in the repo root,
                         then ~/.config/bitmask/deploy.toml); see deploy.example.toml
  --receiver [USER@]HOST[:PORT]   override receiver.host/user/port
  --sender [USER@]HOST[:PORT]     override sender.host/user/port
  --key FILE             SSH private key for both Pis
  --set ROLE.FIELD=VALUE override any field (ROLE: receiver, sender, defaults); list
                         fields (args, run_prefix, ssh_options, accept_machines) are
                         split on whitespace, e.g. --set sender.args=\"--fps 5 /home/pi/in\"
  --dry-run              print every command it would run, run nothing
  --no-build             use target/dist as it is
  --install-service      install systemd units (Restart=always) on both Pis, enable
                         and start them (receiver first), instead of streaming here
  --uninstall            stop, disable and remove those units
  --timeout SECS         how long to wait for the receiver to listen (default 60)
";

// ---------------------------------------------------------------------------------------
// Configuration

/// One Pi's settings in the deploy file (`[receiver]`, `[sender]` or
/// `[defaults]`; docs/DEPLOY.md lists them).
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct PiConf {
    /// SSH host name or address.
    pub host: Option<String>,
    /// SSH user.
    pub user: Option<String>,
    /// SSH port.
    pub port: Option<u16>,
    /// SSH private key file.
    pub key: Option<String>,
    /// Which build to copy: armv6 or armv7.
    pub build: Option<String>,
    /// Install directory on the Pi.
    pub dir: Option<String>,
    /// Put before the binary on the command line (e.g. `nice -n -5`).
    pub run_prefix: Option<String>,
    /// The binary's own arguments.
    pub args: Option<Vec<String>>,
    /// Extra `ssh -o` options.
    pub ssh_options: Option<Vec<String>>,
    /// `uname -m` values accepted for this Pi.
    pub accept_machines: Option<Vec<String>>,
    /// receiver: `--listen` address
    pub listen: Option<String>,
    /// sender: `--to` address (default: receiver host + the port the receiver listens on)
    pub to: Option<String>,
    /// where `--install-service` puts the systemd units (default /etc/systemd/system)
    pub unit_dir: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ConfFile {
    #[serde(default)]
    pub defaults: PiConf,
    #[serde(default)]
    pub receiver: PiConf,
    #[serde(default)]
    pub sender: PiConf,
}

impl PiConf {
    fn or(self, d: &PiConf) -> PiConf {
        macro_rules! m { ($($f:ident),*) => { PiConf { $($f: self.$f.or_else(|| d.$f.clone()),)* } } }
        m!(
            host,
            user,
            port,
            key,
            build,
            dir,
            run_prefix,
            args,
            ssh_options,
            accept_machines,
            listen,
            to,
            unit_dir
        )
    }
    fn set(&mut self, field: &str, v: &str) -> Result<()> {
        let list = || v.split_whitespace().map(String::from).collect::<Vec<_>>();
        let s = || Some(v.to_string());
        match field {
            "host" => self.host = s(),
            "user" => self.user = s(),
            "port" => self.port = Some(v.parse().context("port must be a number")?),
            "key" if v.is_empty() => bail!("key: give a private key file, e.g. ~/.ssh/id_ed25519"),
            "key" => self.key = s(),
            "build" => self.build = s(),
            "dir" => self.dir = s(),
            "run_prefix" => self.run_prefix = s(),
            "args" => self.args = Some(list()),
            "ssh_options" => self.ssh_options = Some(list()),
            "accept_machines" => self.accept_machines = Some(list()),
            "listen" => self.listen = s(),
            "to" => self.to = s(),
            "unit_dir" => self.unit_dir = s(),
            _ => bail!(
                "unknown field {field:?} (the fields: host, user, port, key, build, dir, \
                 run_prefix, args, ssh_options, accept_machines, listen, to, unit_dir)"
            ),
        }
        Ok(())
    }
    fn set_target(&mut self, t: &str) -> Result<()> {
        let (user, rest) = match t.split_once('@') {
            Some((u, r)) => (Some(u.to_string()), r),
            None => (None, t),
        };
        let (host, port) = if let Some(inner) = rest.strip_prefix('[') {
            // [IPv6]:PORT or [IPv6]
            let (h, after) = inner
                .split_once(']')
                .with_context(|| format!("{t:?}: `[` without `]`"))?;
            let port = match after {
                "" => None,
                a => Some(
                    a.strip_prefix(':')
                        .and_then(|p| p.parse().ok())
                        .with_context(|| format!("{t:?}: bad port after `]`"))?,
                ),
            };
            (h.to_string(), port)
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) if !h.contains(':') => (
                    h.to_string(),
                    Some(p.parse().ok().filter(|p: &u16| *p > 0).with_context(|| {
                        format!("{t:?}: the port {p:?} is not a number 1..=65535")
                    })?),
                ),
                // (a bare IPv6 address: no port)
                _ => (rest.to_string(), None),
            }
        };
        if host.is_empty() {
            bail!("{t:?}: no host name or address (e.g. pi@10.0.0.7 or pi@receiver-pi:22)");
        }
        self.host = Some(host);
        if user.is_some() {
            self.user = user;
        }
        if port.is_some() {
            self.port = port;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Receiver,
    Sender,
}

impl Role {
    fn bin(self) -> &'static str {
        match self {
            Role::Receiver => "bitmask-recv",
            Role::Sender => "bitmask-send",
        }
    }
    fn tag(self) -> &'static str {
        match self {
            Role::Receiver => "recv",
            Role::Sender => "send",
        }
    }
}

/// A resolved Pi.
#[derive(Debug, Clone)]
struct Pi {
    role: Role,
    host: String,
    user: Option<String>,
    port: u16,
    key: Option<String>,
    arch: Arch,
    dir: String,
    prefix: Vec<String>,
    args: Vec<String>,
    ssh_options: Vec<String>,
    accept: Vec<String>,
    unit_dir: String,
    listen: String,
    to: Option<String>,
    /// The Pi's clock minus this machine's, seconds (from the preflight).
    clock_offset: Option<f64>,
    /// KiB free in the install directory (from the preflight).
    avail_kib: Option<u64>,
}

impl Pi {
    fn resolve(role: Role, c: PiConf) -> Result<Pi> {
        let name = match role {
            Role::Receiver => "receiver",
            Role::Sender => "sender",
        };
        let host = c.host.with_context(|| {
            format!("no {name}.host: set it in deploy.toml or pass --{name} HOST")
        })?;
        // an IPv6 address may be written in brackets, as in a URL: ssh wants it bare
        let host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(bare) => bare.to_string(),
            None => host,
        };
        let build = c
            .build
            .with_context(|| format!("no {name}.build: armv6 (Pi 1/Zero) or armv7 (Pi 2/3/4)"))?;
        let mut dir = c.dir.unwrap_or_else(|| "bitmask".into());
        if let Some(d) = dir.strip_prefix("~/") {
            dir = d.to_string();
        }
        // scp before OpenSSH 9 (Ubuntu 22.04, Debian 11) hands the remote
        // path to the Pi's shell: one with spaces or shell characters would
        // fail there with a puzzling message
        if let Some(c) = dir.chars().find(|&c| !install_dir_char(c)) {
            bail!(
                "{name}.dir {dir:?}: {c:?} is not allowed in the install directory (ASCII \
                 letters, digits and / . _ - + , @ only: scp before OpenSSH 9 hands the path \
                 to the Pi's shell)"
            );
        }
        if dir.is_empty() {
            bail!("{name}.dir is empty");
        }
        let key = c.key.map(|k| match k.strip_prefix("~/") {
            Some(rest) => std::env::var("HOME")
                .map(|h| format!("{h}/{rest}"))
                .unwrap_or(k),
            None => k,
        });
        Ok(Pi {
            role,
            host,
            user: c.user,
            port: c.port.unwrap_or(22),
            key,
            arch: Arch::parse(&build)?,
            dir,
            prefix: c
                .run_prefix
                .unwrap_or_default()
                .split_whitespace()
                .map(String::from)
                .collect(),
            args: c.args.unwrap_or_default(),
            ssh_options: c.ssh_options.unwrap_or_default(),
            accept: c.accept_machines.unwrap_or_default(),
            unit_dir: c.unit_dir.unwrap_or_else(|| "/etc/systemd/system".into()),
            listen: match c.listen {
                None => "0.0.0.0:5000".into(),
                // (bitmask-recv's own rule, said before anything runs)
                Some(l) => match l.rsplit_once(':') {
                    Some((h, p))
                        if !h.is_empty()
                            && p.parse::<u16>().is_ok()
                            && (!h.contains(':') || h.starts_with('[') && h.ends_with(']')) =>
                    {
                        l
                    }
                    _ => bail!(
                        "receiver.listen {l:?}: give HOST:PORT, e.g. 0.0.0.0:5000 (an IPv6 \
                         address in brackets: [::]:5000)"
                    ),
                },
            },
            to: c.to,
            clock_offset: None,
            avail_kib: None,
        })
    }
    fn dest(&self) -> String {
        self.dest_of(&self.host)
    }
    /// `[USER@]HOST` with `host` (the host, maybe in brackets).
    fn dest_of(&self, host: &str) -> String {
        match &self.user {
            Some(u) => format!("{u}@{host}"),
            None => host.to_string(),
        }
    }
    /// The host as in `HOST:PORT` or scp's `HOST:PATH`: an IPv6 address in
    /// brackets.
    fn host_in_address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        }
    }
    fn label(&self) -> String {
        format!("{} {}", self.role.tag(), self.host_label())
    }
    fn host_label(&self) -> String {
        if self.port == 22 {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
    fn common_opts(&self) -> Vec<String> {
        // The user's options first: ssh keeps the first value it is given
        // for each option, so theirs (ConnectTimeout=30, say) win.
        let mut v: Vec<String> = self.ssh_options.clone();
        v.extend(
            [
                "-o",
                "BatchMode=yes",
                "-o",
                "ConnectTimeout=10",
                "-o",
                "ServerAliveInterval=5",
                "-o",
                "ServerAliveCountMax=3",
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        if let Some(k) = &self.key {
            v.extend([
                "-i".into(),
                k.clone(),
                "-o".into(),
                "IdentitiesOnly=yes".into(),
            ]);
        }
        v
    }
    fn ssh(&self, tty: bool, remote: &str) -> Command {
        let mut c = Command::new("ssh");
        c.args(self.common_opts())
            .args(["-p", &self.port.to_string()]);
        if tty {
            // a pty: if the connection drops, the Pi's kernel hangs up the remote process
            c.arg("-tt");
        }
        c.arg(self.dest()).arg(remote);
        c
    }
    fn scp(&self, local: &Path, remote_path: &str) -> Command {
        let mut c = Command::new("scp");
        c.arg("-q")
            .args(self.common_opts())
            .args(["-P", &self.port.to_string()]);
        // (scp reads `HOST:PATH` up to the first colon)
        let dest = self.dest_of(&self.host_in_address());
        c.arg(local).arg(format!("{dest}:{remote_path}"));
        c
    }
    fn bin_path(&self) -> String {
        format!("{}/{}", self.dir, self.role.bin())
    }
    /// The pid file of this run's session (named by this xtask's pid: a
    /// second deploy to the same Pi must not remove the first one's, or
    /// the first could no longer stop its process).
    fn pid_file(&self) -> String {
        format!(
            "{}/{}.{}.pid",
            self.dir,
            self.role.bin(),
            std::process::id()
        )
    }
    fn unit(&self) -> String {
        format!("{}.service", self.role.bin())
    }
}

/// Quotes for a POSIX shell.
pub fn q(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:@,+%".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

fn qv(v: &[String]) -> String {
    v.iter().map(|s| q(s)).collect::<Vec<_>>().join(" ")
}

fn find_config(explicit: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p);
    }
    let mut tried = vec![root().join("deploy.toml")];
    if let Some(h) = std::env::var_os("HOME") {
        tried.push(PathBuf::from(h).join(".config/bitmask/deploy.toml"));
    }
    for p in &tried {
        if p.exists() {
            return Ok(p.clone());
        }
    }
    bail!(
        "no deploy config: tried {}. Copy deploy.example.toml to deploy.toml and fill in your Pis (docs/DEPLOY.md)",
        tried
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

// ---------------------------------------------------------------------------------------
// Running commands (or printing them)

struct Ctx {
    dry: bool,
}

impl Ctx {
    /// Runs `c` and returns (status, stdout, stderr); in a dry run prints it and returns success.
    fn exec(&self, c: &mut Command) -> Result<(bool, String, String)> {
        if self.dry {
            println!("[dry-run] {}", show_sh(c));
            return Ok((true, String::new(), String::new()));
        }
        let o = c
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot run {}", c.get_program().to_string_lossy()))?;
        Ok((
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        ))
    }
}

/// A command line as a shell would take it.
fn show_sh(c: &Command) -> String {
    let mut v = vec![c.get_program().to_string_lossy().into_owned()];
    v.extend(c.get_args().map(|a| a.to_string_lossy().into_owned()));
    qv(&v)
}

/// Turns an ssh/scp failure into a clear error.
fn ssh_error(pi: &Pi, what: &str, stderr: &str) -> anyhow::Error {
    let e = stderr.trim();
    let host = pi.host_label();
    let has = |s: &str| e.contains(s);
    if has("Could not resolve") || has("Name or service not known") {
        let mdns = if pi.host.ends_with(".local") {
            " (a NAME.local name needs mDNS on this machine: avahi-daemon and libnss-mdns)"
        } else {
            ""
        };
        anyhow::anyhow!(
            "{host}: the name does not resolve ({e}){mdns}: check its spelling, or give the Pi's \
             IP address (your router's list of devices shows it, or `hostname -I` on the Pi)"
        )
    } else if has("Connection refused")
        || has("No route to host")
        || has("timed out")
        || has("Network is unreachable")
        || has("Connection closed by") && !has("Permission denied")
    {
        anyhow::anyhow!(
            "{host} is unreachable ({e}): is the Pi powered, on the network, with SSH enabled (Raspberry Pi Imager: \"Enable SSH\"), and is the port right?"
        )
    } else if (has("Permission denied") || has("Too many authentication failures"))
        && pi.key.as_deref().is_some_and(|k| !expand_home(k).exists())
    {
        let k = pi.key.as_deref().unwrap_or_default();
        anyhow::anyhow!(
            "{host} refused the login of {} ({e}): the key file {k} does not exist: fix `key` in \
             deploy.toml (or --key), or make one with `ssh-keygen -t ed25519 -f {k}` and copy it \
             with `ssh-copy-id -i {k}.pub -p {} {}`",
            pi.dest(),
            pi.port,
            pi.dest()
        )
    } else if (has("Permission denied") || has("Too many authentication failures"))
        && pi.key.is_none()
        && std::env::var_os("SSH_AUTH_SOCK").is_none()
        && [
            "id_ed25519",
            "id_ecdsa",
            "id_rsa",
            "id_ed25519_sk",
            "id_ecdsa_sk",
            "id_dsa",
        ]
        .iter()
        .all(|k| !expand_home(&format!("~/.ssh/{k}")).exists())
    {
        anyhow::anyhow!(
            "{host} refused the login of {} ({e}): no `key` is set, no ssh agent runs and \
             ~/.ssh holds none of ssh's default keys: if you have no key, make one with \
             `ssh-keygen -t ed25519` and copy it with `ssh-copy-id -i ~/.ssh/id_ed25519.pub -p \
             {} {}`; a key elsewhere goes in `key` in deploy.toml",
            pi.dest(),
            pi.port,
            pi.dest()
        )
    } else if has("Permission denied") || has("Too many authentication failures") {
        anyhow::anyhow!(
            "{host} refused the login of {} ({e}): copy your key with `ssh-copy-id -i {}.pub -p {} {}` and check user/key in deploy.toml",
            pi.dest(),
            pi.key.as_deref().unwrap_or("~/.ssh/id_ed25519"),
            pi.port,
            pi.dest()
        )
    } else if has("REMOTE HOST IDENTIFICATION HAS CHANGED") {
        anyhow::anyhow!(
            "{host}: its host key CHANGED ({e}): if you re-flashed its SD card, forget the old key \
             with `ssh-keygen -R {}` (`ssh-keygen -R '[{}]:{}'` for a port other than 22) and \
             connect once with `ssh -p {} {}` to accept the new one; otherwise someone may be \
             in between",
            pi.host,
            pi.host,
            pi.port,
            pi.port,
            pi.dest()
        )
    } else if has("Host key verification failed") {
        anyhow::anyhow!(
            "{host}: host key unknown or changed ({e}): connect once with `ssh -p {} {}` to check and accept it",
            pi.port,
            pi.dest()
        )
    } else if has("No space left") {
        anyhow::anyhow!("{host}: disk full while {what} ({e}): free some space on the Pi's SD card")
    } else {
        anyhow::anyhow!("{host}: {what} failed: {e}")
    }
}

// ---------------------------------------------------------------------------------------
// Steps

/// `uname -m`, 32-bit userland, install dir, free space; returns the absolute install dir.
fn preflight(ctx: &Ctx, pi: &mut Pi) -> Result<()> {
    // ssh only warns about a key file it cannot read, and logs in with
    // another key if it can: the configured key would then not be the one used
    if let Some(k) = pi.key.as_deref().filter(|k| !expand_home(k).is_file()) {
        let why = format!(
            "{}: the key file {k} does not exist: fix `key` in deploy.toml (or --key), or make \
             one with `ssh-keygen -t ed25519 -f {k}` and copy it with `ssh-copy-id -i {k}.pub -p {} {}`",
            pi.label(),
            pi.port,
            pi.dest()
        );
        // (a dry run goes on, so that it shows the whole plan)
        if !ctx.dry {
            bail!(why);
        }
        eprintln!("warning (a real run stops here): {why}");
    }
    // One `key=value` line each, read by key (a login script that prints
    // something cannot shift them); a directory that cannot be made or
    // entered ends the script (no `dir=`).
    let script = format!(
        "echo machine=$(uname -m); echo bits=$(getconf LONG_BIT); mkdir -p {d} && cd {d} || exit 6; printf 'dir=%s\\n' \"$(pwd)\"; echo df=$(df -Pk . | tail -n 1); command -v sha256sum >/dev/null && echo sha256sum=ok; echo clock=$(date +%s.%N)",
        d = q(&pi.dir)
    );
    let (ok, out, err) = ctx.exec(&mut pi.ssh(false, &script))?;
    if ctx.dry {
        return Ok(());
    }
    // `date` ran just before ssh returned: compare with the time here now
    let here = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let value = |key: &str| {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
    };
    pi.clock_offset = value("clock")
        .and_then(|v| v.parse::<f64>().ok())
        .map(|t| t - here);
    if value("machine").is_some() && value("dir").is_none() {
        // the login worked; the install directory did not
        let why = if err.contains("No space left") || err.contains("Read-only file system") {
            ": disk full or read-only"
        } else {
            ""
        };
        bail!(
            "{}: cannot create or enter the install directory {} ({}){why}: fix `dir` in \
             deploy.toml, or free the disk",
            pi.host_label(),
            pi.dir,
            err.trim()
        );
    }
    if !ok {
        return Err(ssh_error(pi, "the check", &err));
    }
    let machine = value("machine").unwrap_or("");
    let bits = value("bits").unwrap_or("");
    let ok_arch = match (pi.arch, machine) {
        (_, m) if pi.accept.iter().any(|a| a == m) => true,
        (Arch::V6, "armv6l" | "armv7l" | "armv8l") => true,
        (Arch::V7, "armv7l" | "armv8l") => true,
        (Arch::V6, "aarch64") => true, // static: runs on a 64-bit kernel with 32-bit support
        (Arch::V7, "aarch64") if bits == "32" => true,
        _ => false,
    };
    if !ok_arch {
        let hint = match machine {
            "armv6l" => "this is a Pi 1/Zero (ARMv6): use build = \"armv6\"".to_string(),
            "aarch64" => "a 64-bit userland: the armv7 build needs 32-bit (armhf) Raspberry Pi OS; use build = \"armv6\" (static) instead".to_string(),
            m => format!("{m} is not a Raspberry Pi CPU (if the ARM code runs under emulation via run_prefix, list it in accept_machines)"),
        };
        bail!("{}: wrong architecture: `uname -m` says {machine:?} ({bits}-bit userland) but the {} build was chosen: {hint}", pi.host_label(), pi.arch.name());
    }
    if pi.arch == Arch::V6
        && (matches!(machine, "armv7l" | "armv8l") || (machine == "aarch64" && bits == "32"))
    {
        eprintln!(
            "deploy: {}: note: this Pi ({machine}, {bits}-bit) also runs build = \"armv7\", \
             which is faster there (NEON); \"armv6\" works too",
            pi.label()
        );
    }
    if value("sha256sum") != Some("ok") {
        bail!(
            "{}: no sha256sum on the Pi (coreutils): cannot verify the copy",
            pi.host_label()
        );
    }
    if let Some(abs) = value("dir") {
        pi.dir = abs.to_string();
    }
    pi.avail_kib = value("df").and_then(|df| df.split_whitespace().nth(3)?.parse().ok());
    eprintln!(
        "deploy: {}: {machine}, {bits}-bit userland, install dir {}",
        pi.label(),
        pi.dir
    );
    Ok(())
}

/// Room for the built binary (twice its size, plus 1 MiB) in the install
/// directory, by the free space the preflight found.
fn check_space(pi: &Pi) -> Result<()> {
    let Ok(m) = std::fs::metadata(pi.arch.dist_dir().join(pi.role.bin())) else {
        return Ok(());
    };
    let need_kib = m.len() / 1024 * 2 + 1024;
    match pi.avail_kib {
        Some(avail) if avail < need_kib => bail!(
            "{}: disk full: {avail} KiB free in {}, {need_kib} KiB needed",
            pi.host_label(),
            pi.dir,
        ),
        _ => Ok(()),
    }
}

/// Copies the binary unless the Pi already has it, then verifies its SHA-256 on the Pi.
fn install(ctx: &Ctx, pi: &Pi) -> Result<()> {
    let local = pi.arch.dist_dir().join(pi.role.bin());
    let want = if ctx.dry {
        "<sha256 of the local file>".to_string()
    } else {
        sha256_file(&local)?
    };
    let bin = pi.bin_path();
    let have = format!("sha256sum {} 2>/dev/null | cut -d' ' -f1", q(&bin));
    let (ok, out, _) = ctx.exec(&mut pi.ssh(false, &have))?;
    if ok && !ctx.dry && out.trim() == want {
        eprintln!(
            "deploy: {}: {bin} is up to date (sha256 {})",
            pi.label(),
            &want[..16]
        );
        return probe(ctx, pi, &bin, None);
    }
    let part = format!("{}/.{}.part", pi.dir, pi.role.bin());
    let (ok, _, err) = ctx.exec(&mut pi.scp(&local, &part))?;
    if !ok {
        let _ = ctx.exec(&mut pi.ssh(false, &format!("rm -f {}", q(&part))));
        return Err(ssh_error(pi, "copying the binary", &err));
    }
    let verify = format!(
        "h=$(sha256sum {p} | cut -d' ' -f1); if [ \"$h\" = {w} ]; then chmod 755 {p}; else echo \"checksum mismatch: $h\" >&2; rm -f {p}; exit 3; fi",
        p = q(&part),
        w = q(&want)
    );
    let (ok, _, err) = ctx.exec(&mut pi.ssh(false, &verify))?;
    if !ok {
        if err.contains("checksum mismatch") {
            bail!(
                "{}: the copied {} has the wrong SHA-256 ({}), expected {want}: copy corrupted or disk full",
                pi.host_label(),
                pi.role.bin(),
                err.trim()
            );
        }
        return Err(ssh_error(pi, "verifying the copy", &err));
    }
    if !ctx.dry {
        eprintln!(
            "deploy: {}: copied {} ({} KiB), sha256 {} verified on the Pi",
            pi.label(),
            bin,
            std::fs::metadata(&local)?.len() / 1024,
            &want[..16]
        );
    }
    // tried before it replaces the binary there (a service may run that one)
    probe(ctx, pi, &part, Some(&bin))
}

/// Runs `path`'s `--version` on the Pi (through `run_prefix`), so that a
/// build the Pi's CPU or system cannot run is told now, with what to
/// change, not as a crash of the started program. With `install_as`, the
/// file (a fresh copy) then replaces that binary, or is removed if it failed.
fn probe(ctx: &Ctx, pi: &Pi, path: &str, install_as: Option<&str>) -> Result<()> {
    let after = match install_as {
        Some(b) => format!(
            " if [ $rc = 0 ]; then mv -f {p} {b} || exit 3; else rm -f {p}; fi;",
            p = q(path),
            b = q(b)
        ),
        None => String::new(),
    };
    // (no core file: qemu-user writes one for a SIGILL)
    let line = format!(
        "ulimit -c 0; {} --version; rc=$?; echo rc=$rc;{after}",
        exec_line_of(pi, path, &[])
    );
    let (ok, out, err) = ctx.exec(&mut pi.ssh(false, &line))?;
    if ctx.dry {
        return Ok(());
    }
    if !ok {
        return Err(ssh_error(pi, "trying the binary", &err));
    }
    let rc = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("rc="))
        .and_then(|v| v.parse::<i32>().ok());
    let why = match rc {
        Some(0) => return Ok(()),
        _ => probe_failure(pi, rc, &err),
    };
    bail!(
        "{}: {} does not run there{}: {why}: {}",
        pi.host_label(),
        pi.bin_path(),
        if install_as.is_some() {
            " (the copy was removed; the binary there is unchanged)"
        } else {
            ""
        },
        err.trim()
    );
}

/// Why `--version` through `run_prefix` ended with `rc` (not 0), in words,
/// with what to change.
fn probe_failure(pi: &Pi, rc: Option<i32>, err: &str) -> String {
    if err.contains("password is required") {
        return "run_prefix's sudo asks for a password (see DEPLOY.md, step 5)".into();
    }
    const V6: &str = "build = \"armv6\"";
    match rc {
        Some(132) => format!(
            "it dies with SIGILL: the {} build uses instructions this Pi's CPU lacks (a Pi 1 \
             or Zero needs {V6})",
            pi.arch.name()
        ),
        Some(126) => "the system cannot execute it (the install dir's file system is \
                      mounted noexec, or it is not a program for this kernel)"
            .into(),
        Some(127) => {
            let prefix = pi.prefix.first().map_or(String::new(), |p| {
                format!("the run_prefix program `{p}`, or ")
            });
            format!(
                "the system cannot start it ({prefix}its loader or a library is missing: the \
                 armv7 build needs a 32-bit Raspberry Pi OS with glibc 2.28 or newer; {V6} \
                 is static and runs on any)"
            )
        }
        Some(c) => format!("`--version` exited {c}"),
        None => "no exit status came back".into(),
    }
}

/// A remote path for the shell, valid from any working directory: relative install
/// dirs (only left so in a dry run; a real run resolves them first) are under $HOME.
fn rpath(pi: &Pi, p: &str) -> String {
    if pi.dir.starts_with('/') {
        q(p)
    } else {
        format!("\"$HOME\"/{}", q(p))
    }
}

fn exec_line(pi: &Pi, extra: &[String]) -> String {
    exec_line_of(pi, &pi.bin_path(), extra)
}

/// [`exec_line`] for the program at `path`.
fn exec_line_of(pi: &Pi, path: &str, extra: &[String]) -> String {
    let mut s = qv(&pi.prefix);
    if !s.is_empty() {
        s.push(' ');
    }
    s.push_str(&rpath(pi, path));
    if !extra.is_empty() {
        s.push(' ');
        s.push_str(&qv(extra));
    }
    s
}

fn receiver_args(pi: &Pi) -> Vec<String> {
    let mut v = vec!["--listen".to_string(), pi.listen.clone()];
    v.extend(pi.args.iter().cloned());
    v
}

fn sender_args(pi: &Pi, to: &str) -> Vec<String> {
    let mut v = vec!["--to".to_string(), to.to_string()];
    v.extend(pi.args.iter().cloned());
    v
}

/// The remote command of a streaming session: records the pid, execs the binary,
/// removes the pid file and returns the binary's status.
fn session_script(pi: &Pi, args: &[String]) -> String {
    use std::io::IsTerminal;
    // the remote side always sees a pty: colour the logs only if ours is a terminal
    let style = if std::io::stdout().is_terminal() {
        "auto"
    } else {
        "never"
    };
    // clap colours its errors by the pty it sees: NO_COLOR too
    let no_color = if style == "never" { " NO_COLOR=1" } else { "" };
    // pid files of earlier runs whose process is gone (xtask killed before
    // the remote shell could remove them) are removed first
    format!(
        "export RUST_LOG=\"${{RUST_LOG:-info}}\" RUST_LOG_STYLE={style}{no_color}; cd {d} || exit 1; \
         for f in {bin}.*.pid; do [ -f \"$f\" ] && ! [ -d \"/proc/$(cat \"$f\")\" ] && rm -f \"$f\"; done; \
         sh -c 'p=$1; shift; echo $$ > \"$p\"; exec \"$@\"' sh {pf} {cmd} </dev/null 2>&1; rc=$?; rm -f {pf}; exit $rc",
        d = rpath(pi, &pi.dir),
        bin = pi.role.bin(),
        pf = rpath(pi, &pi.pid_file()),
        cmd = exec_line(pi, args)
    )
}

/// Stops the binary of `pi` and waits until it is gone: SIGTERM; after 12 s
/// (past the 10 s the receiver gives its `--exec` program to finish after
/// the last frame) SIGTERM again (both binaries end at once on a second
/// signal; the receiver then kills its `--exec` program's process group);
/// after 15 s SIGKILL to the process groups of its children (an `--exec` or
/// `--input-command` program) and to it. Plain POSIX sh (dash, busybox):
/// no `pgrep`. Every kill has `--` before its pids: procps' kill (what `sudo
/// kill` runs) reads `-9 -1234` as a signal to pid -1, every process.
fn stop_remote(ctx: &Ctx, pi: &Pi) -> Result<()> {
    let script = format!(
        "pf={pf}; [ -f \"$pf\" ] || exit 0; pid=$(cat \"$pf\"); case $pid in ''|*[!0-9]*) exit 0;; esac; \
         [ -d /proc/$pid ] || exit 0; K=kill; kill -0 \"$pid\" 2>/dev/null || K='sudo -n kill'; \
         $K -s TERM -- \"$pid\" 2>/dev/null || {{ [ -d /proc/$pid ] || exit 0; echo \"cannot signal process $pid (started through a run_prefix sudo? stopping it needs passwordless sudo)\" >&2; exit 5; }}; i=0; \
         while [ -d /proc/$pid ]; do i=$((i+1)); \
         if [ $i -eq 120 ]; then $K -s TERM -- \"$pid\" 2>/dev/null; echo again; fi; \
         if [ $i -eq 150 ]; then for c in $(grep -l \"^PPid:[[:space:]]*$pid\\$\" /proc/[0-9]*/status 2>/dev/null | cut -d/ -f3); do [ \"$c\" -gt 1 ] || continue; $K -s KILL -- \"-$c\" 2>/dev/null; $K -s KILL -- \"$c\" 2>/dev/null; done; $K -s KILL -- \"$pid\" 2>/dev/null; echo killed; fi; \
         if [ $i -ge 180 ]; then exit 4; fi; sleep 0.1; done",
        pf = q(&pi.pid_file())
    );
    let (ok, out, err) = ctx.exec(&mut pi.ssh(false, &script))?;
    if !ok {
        return Err(ssh_error(pi, "stopping the process", &err));
    }
    if out.contains("killed") {
        eprintln!(
            "deploy: {}: did not stop on SIGTERM within 12 s nor on a second SIGTERM within 3 s: \
             killed, with the programs it started",
            pi.label()
        );
    } else if out.contains("again") {
        eprintln!(
            "deploy: {}: did not stop on SIGTERM within 12 s: sent a second one (it then stops at once)",
            pi.label()
        );
    }
    Ok(())
}

enum Ev {
    Line(Role, String),
    Exit(Role, ExitStatus),
}

struct Session {
    child: Child,
    done: Option<ExitStatus>,
}

fn start_session(pi: &Pi, args: &[String], tx: mpsc::Sender<Ev>) -> Result<Session> {
    let mut c = pi.ssh(true, &session_script(pi, args));
    // own process group: the terminal's Ctrl-C reaches only xtask, which stops the Pis in order
    c.process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // if xtask itself dies (kill -9, closed terminal), ssh goes with it: the pty hangup
    // then stops the remote process, so nothing is left on the Pi
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        c.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    eprintln!("deploy: {}: $ {}", pi.label(), exec_line(pi, args));
    let mut child = c.spawn().context("cannot start ssh")?;
    for r in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let tx = tx.clone();
        let role = pi.role;
        std::thread::spawn(move || {
            for line in BufReader::new(r).lines().map_while(Result::ok) {
                let l = line.trim_end_matches('\r').to_string();
                if l.starts_with("Connection to ") && l.ends_with(" closed.") {
                    continue;
                }
                if tx.send(Ev::Line(role, l)).is_err() {
                    break;
                }
            }
        });
    }
    Ok(Session { child, done: None })
}

static INTERRUPTS: AtomicUsize = AtomicUsize::new(0);

fn parse_args(args: &[String]) -> Result<(Opts, ConfFile)> {
    let mut o = Opts::default();
    let mut config = None;
    let mut sets: Vec<(String, String)> = Vec::new();
    let mut it = args.iter();
    let next = |it: &mut std::slice::Iter<String>, n: &str| {
        it.next()
            .cloned()
            .with_context(|| format!("{n} needs a value"))
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--config" => config = Some(PathBuf::from(next(&mut it, a)?)),
            "--receiver" => sets.push(("receiver.@".into(), next(&mut it, a)?)),
            "--sender" => sets.push(("sender.@".into(), next(&mut it, a)?)),
            "--key" => {
                // both Pis: a `key` one of them sets in deploy.toml must not win
                let k = next(&mut it, a)?;
                for role in ["defaults", "receiver", "sender"] {
                    sets.push((format!("{role}.key"), k.clone()));
                }
            }
            "--set" => {
                let kv = next(&mut it, a)?;
                let (k, v) = kv.split_once('=').context("--set ROLE.FIELD=VALUE")?;
                sets.push((k.to_string(), v.to_string()));
            }
            "--dry-run" => o.dry = true,
            "--no-build" => o.no_build = true,
            "--install-service" => o.install = true,
            "--uninstall" => o.uninstall = true,
            "--timeout" => {
                let v = next(&mut it, a)?;
                let secs: f64 = v
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && *s > 0.0 && *s <= 86400.0)
                    .with_context(|| format!("--timeout {v:?}: give seconds, more than 0"))?;
                o.timeout = Duration::from_secs_f64(secs);
            }
            "-h" | "--help" => {
                print!("{HELP}");
                std::process::exit(0);
            }
            other => bail!("unknown deploy option {other:?}\n\n{HELP}"),
        }
    }
    if o.install && o.uninstall {
        bail!("--install-service and --uninstall exclude each other");
    }
    let path = find_config(config)?;
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let mut cf: ConfFile = toml::from_str(&text)
        .with_context(|| format!("{} is not a valid deploy config", path.display()))?;
    eprintln!("deploy: config {}", path.display());
    for (k, v) in sets {
        let (role, field) = k
            .split_once('.')
            .with_context(|| format!("--set {k}: expected ROLE.FIELD"))?;
        let conf = match role {
            "receiver" => &mut cf.receiver,
            "sender" => &mut cf.sender,
            "defaults" => &mut cf.defaults,
            _ => bail!("--set {k}: ROLE is receiver, sender or defaults"),
        };
        if field == "@" {
            conf.set_target(&v)?;
        } else {
            conf.set(field, &v).with_context(|| format!("--set {k}"))?;
        }
    }
    Ok((o, cf))
}

#[derive(Default)]
struct Opts {
    dry: bool,
    no_build: bool,
    install: bool,
    uninstall: bool,
    timeout: Duration,
}

/// `cargo xtask deploy [...]`: build, copy and start (or install, stop, uninstall) on the Pis.
pub fn run(args: &[String]) -> Result<()> {
    let (mut o, cf) = parse_args(args)?;
    if o.timeout.is_zero() {
        o.timeout = Duration::from_secs(60);
    }
    let mut recv = Pi::resolve(Role::Receiver, cf.receiver.clone().or(&cf.defaults))?;
    let mut send = Pi::resolve(Role::Sender, cf.sender.clone().or(&cf.defaults))?;
    let ctx = Ctx { dry: o.dry };
    if o.install && recv.listen.rsplit(':').next() == Some("0") {
        // before a build and a copy for nothing
        bail!(
            "a service needs a fixed port: set receiver.listen to a port other than 0 (now {:?})",
            recv.listen
        );
    }

    // 1. check each Pi (its CPU and userland before a build for the wrong one)
    for pi in [&mut recv, &mut send] {
        preflight(&ctx, pi)?;
    }
    if !o.uninstall {
        receiver_resolves(&ctx, &recv, &send)?;
    }

    // 2. build
    let mut archs = vec![recv.arch, send.arch];
    archs.sort();
    archs.dedup();
    if o.uninstall {
        // nothing to build or copy
    } else if o.no_build {
        for pi in [&recv, &send] {
            let p = pi.arch.dist_dir().join(pi.role.bin());
            if !p.exists() && !o.dry {
                bail!(
                    "{} missing: run `cargo xtask dist` or drop --no-build",
                    p.display()
                );
            }
        }
    } else if o.dry {
        for a in &archs {
            println!(
                "[dry-run] cargo xtask dist --only {} (builds and checks target/dist/{}/)",
                a.name(),
                a.name()
            );
        }
    } else {
        let tools = dist::ensure_tools()?;
        eprint!(
            "{}",
            dist::build_dist(&tools, &archs, false, dist::PROFILE)?
        );
    }

    // 3. copy
    if !o.uninstall {
        for pi in [&recv, &send] {
            if !o.dry {
                check_space(pi)?;
            }
            install(&ctx, pi)?;
        }
    }

    if !o.uninstall {
        if let Some(w) = clock_warning(&recv, &send) {
            eprintln!("deploy: warning: {w}");
        }
    }
    if o.install || o.uninstall {
        return services(&ctx, &recv, &send, o.install);
    }
    stream(&ctx, &recv, &send, o.timeout)
}

/// Two Pis' clocks more than this apart (seconds) make the receiver's latency
/// numbers meaningless (it stops measuring them, see its stats).
const CLOCK_SKEW: f64 = 1.0;

/// A warning when the two Pis' clocks (as seen from here) are far apart.
fn clock_warning(recv: &Pi, send: &Pi) -> Option<String> {
    let d = send.clock_offset? - recv.clock_offset?;
    (d.abs() > CLOCK_SKEW).then(|| {
        format!(
            "the clocks of {} and {} are {:.1} s apart (the sender's {}): the receiver cannot \
             measure latency until they agree; sync them (docs/DEPLOY.md, \"Clocks\")",
            send.host_label(),
            recv.host_label(),
            d.abs(),
            if d > 0.0 { "ahead" } else { "behind" }
        )
    })
}

/// Whether the sender Pi resolves the receiver's name as its `--to` will
/// name it (the same lookup the sender makes: a `.local` name across Wi-Fi
/// and Ethernet needs multicast, which some access points block): a
/// sender service that cannot would retry for good, and the install would
/// look fine.
fn receiver_resolves(ctx: &Ctx, recv: &Pi, send: &Pi) -> Result<()> {
    let to = sender_to(recv, send, "1");
    // (the sender's own rules for --to: HOST:PORT, an IPv6 address in
    // brackets)
    let host = match to.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok_and(|p| p > 0) && !h.is_empty() => h,
        _ => bail!("sender.to {to:?}: give HOST:PORT, e.g. to = \"10.0.0.7:5000\""),
    };
    let host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6,
        None if host.contains(':') => {
            bail!("sender.to {to:?}: an IPv6 address goes in brackets, e.g. [fe80::1]:5000")
        }
        None => host,
    };
    let script = format!("getent ahosts -- {} >/dev/null; echo resolved=$?", q(host));
    let (ok, out, err) = ctx.exec(&mut send.ssh(false, &script))?;
    let status = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("resolved="))
        .unwrap_or("");
    if ctx.dry || status == "0" {
        return Ok(());
    }
    if !ok {
        return Err(ssh_error(send, "the name check", &err));
    }
    if status != "2" {
        // (not "not found": getent missing, say)
        bail!(
            "{}: checking the receiver's name {host:?} there failed (`getent ahosts` exit \
             status {status}): set `to` in [sender] to the receiver's address",
            send.label()
        );
    }
    bail!(
        "{}: the sender Pi cannot resolve the receiver's name {host:?} (`getent ahosts {host}` \
         there finds no address): set `to` in [sender] to the receiver's address, e.g. \
         to = \"10.0.0.7:5000\", or make the name resolve there",
        send.label()
    )
}

/// A warning when `to` (the sender's `HOST:PORT`) names another port than
/// the one the receiver listens on.
fn port_mismatch(to: &str, port: &str) -> Option<String> {
    let to_port = to.rsplit_once(':')?.1;
    (to_port != port).then(|| {
        format!(
            "`to` in [sender] is {to}, but the receiver listens on port {port}: the sender \
             reaches it only through something that forwards the port (leave `to` out to send \
             to the receiver's own address)"
        )
    })
}

/// The `captured N` and `sent N frames` counts of a `bitmask-send:
/// captured ...` summary.
fn summary_counts(line: &str) -> Option<(u64, u64)> {
    Some((
        sender_counter(line, "captured")?,
        sender_counter(line, "sent")?,
    ))
}

/// The sender's `--to`, given the port the receiver listens on.
fn sender_to(recv: &Pi, send: &Pi, port: &str) -> String {
    send.to
        .clone()
        .unwrap_or_else(|| format!("{}:{port}", recv.host_in_address()))
}

fn stream(ctx: &Ctx, recv: &Pi, send: &Pi, timeout: Duration) -> Result<()> {
    if ctx.dry {
        let to = sender_to(recv, send, "<port from the receiver's `listening on` line>");
        println!(
            "[dry-run] {}",
            show_sh(&recv.ssh(true, &session_script(recv, &receiver_args(recv))))
        );
        println!("[dry-run] (wait for `listening on ADDR` in the receiver's log)");
        println!(
            "[dry-run] {}",
            show_sh(&send.ssh(true, &session_script(send, &sender_args(send, &to))))
        );
        println!(
            "[dry-run] on Ctrl-C: {}",
            show_sh(&send.ssh(false, &format!("kill -TERM $(cat {})", q(&send.pid_file()))))
        );
        println!(
            "[dry-run] on Ctrl-C: {}",
            show_sh(&recv.ssh(false, &format!("kill -TERM $(cat {})", q(&recv.pid_file()))))
        );
        return Ok(());
    }
    let _ = ctrlc::set_handler(|| {
        let n = INTERRUPTS.fetch_add(1, Ordering::SeqCst);
        if n == 0 {
            eprintln!("\ndeploy: Ctrl-C: stopping the sender, then the receiver (Ctrl-C again to hang up at once)");
        }
    });
    let (tx, rx) = mpsc::channel::<Ev>();
    let pis = [recv, send];
    let mut sessions: Vec<Option<Session>> = vec![None, None];
    let idx = |r: Role| if r == Role::Receiver { 0 } else { 1 };
    sessions[0] = Some(start_session(recv, &receiver_args(recv), tx.clone())?);
    let watch = |s: &mut Session, role: Role, tx: &mpsc::Sender<Ev>| -> Result<()> {
        if s.done.is_none() {
            if let Some(st) = s.child.try_wait()? {
                s.done = Some(st);
                let _ = tx.send(Ev::Exit(role, st));
            }
        }
        Ok(())
    };
    let t0 = Instant::now();
    let mut stopping = false;
    let mut stop_sent = [false, false];
    // the sender's last summary line
    let mut sender_summary: Option<String> = None;
    let mut failed: Vec<String> = Vec::new();
    let mut listening = false;
    let mut in_use = false;
    let mut ended_early = false;
    let mut last_int = 0;
    loop {
        for (i, r) in [Role::Receiver, Role::Sender].into_iter().enumerate() {
            if let Some(s) = sessions[i].as_mut() {
                watch(s, r, &tx)?;
            }
        }
        let ev = rx.recv_timeout(Duration::from_millis(100));
        // nothing waiting: every line and exit so far is handled
        let idle = matches!(ev, Err(mpsc::RecvTimeoutError::Timeout));
        match ev {
            Ok(Ev::Line(role, l)) => {
                println!("[{}] {l}", pis[idx(role)].label());
                if role == Role::Sender && l.trim_start().starts_with("bitmask-send: captured") {
                    sender_summary = Some(l.trim().to_string());
                }
                if role == Role::Receiver
                    && (l.contains("Address in use") || l.contains("Address already in use"))
                {
                    in_use = true;
                }
                if role == Role::Receiver && !listening {
                    if let Some(addr) = l.split("listening on ").nth(1) {
                        listening = true;
                        let addr = addr.split_whitespace().next().unwrap_or("");
                        let port = addr.rsplit(':').next().unwrap_or("").to_string();
                        let to = sender_to(recv, send, &port);
                        if let Some(w) = port_mismatch(&to, &port) {
                            eprintln!("deploy: warning: {w}");
                        }
                        eprintln!(
                            "deploy: receiver listens on {addr} after {:.1} s; starting the sender -> {to}",
                            t0.elapsed().as_secs_f64()
                        );
                        if !stopping {
                            sessions[1] =
                                Some(start_session(send, &sender_args(send, &to), tx.clone())?);
                        }
                    }
                }
            }
            Ok(Ev::Exit(role, st)) => {
                let pi = pis[idx(role)];
                let code = st.code();
                // (a second Ctrl-C kills the local ssh clients: their end is ours)
                let hung = INTERRUPTS.load(Ordering::SeqCst) > 1 && code.is_none();
                let by_us = stop_sent[idx(role)]
                    && (hung || matches!(code, Some(0) | Some(129) | Some(130) | Some(143)));
                if st.success() || by_us {
                    eprintln!(
                        "deploy: {}: ended ({})",
                        pi.label(),
                        if st.success() {
                            "status 0".into()
                        } else if hung {
                            "hung up by the second Ctrl-C: the Pi ends the program".into()
                        } else {
                            format!("stopped, {st}")
                        }
                    );
                } else {
                    let why = if code == Some(255) {
                        "exit status 255: the ssh connection failed or was lost, or the program \
                         exited 255 (its last lines are above)"
                            .to_string()
                    } else {
                        format!("{st}")
                    };
                    eprintln!("deploy: {}: FAILED ({why})", pi.label());
                    failed.push(format!("{} ({why})", pi.label()));
                }
                // one side ended: the other has nothing left to do
                let other = 1 - idx(role);
                if let Some(s) = sessions[other].as_ref() {
                    if s.done.is_none() && !stop_sent[other] {
                        let ok = st.success() || by_us;
                        // a sender that finished well: let the receiver run on (it may have --count)
                        if !(role == Role::Sender && ok) {
                            stop_sent[other] = true;
                            stop_remote(ctx, pis[other])?;
                        } else {
                            eprintln!("deploy: the sender finished; the receiver runs on (Ctrl-C stops it)");
                        }
                    }
                }
                if role == Role::Receiver && sessions[1].is_none() && !listening && !stopping {
                    // said after the loop: its last lines may still be on their way
                    ended_early = true;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => unreachable!(),
        }
        let ints = INTERRUPTS.load(Ordering::SeqCst);
        if ints > last_int {
            last_int = ints;
            if ints == 1 {
                stopping = true;
                // the sender first (its last frames reach the receiver), then the
                // receiver; a second Ctrl-C meanwhile hangs up at once
                let todo: Vec<usize> = [1, 0]
                    .into_iter()
                    .filter(|&i| {
                        sessions[i].as_ref().is_some_and(|s| s.done.is_none()) && !stop_sent[i]
                    })
                    .collect();
                for &i in &todo {
                    stop_sent[i] = true;
                }
                let stops: Vec<&Pi> = todo.iter().map(|&i| pis[i]).collect();
                std::thread::scope(|sc| {
                    let h = sc.spawn(|| {
                        for pi in stops {
                            if INTERRUPTS.load(Ordering::SeqCst) > 1 {
                                break; // hung up instead
                            }
                            if let Err(e) = stop_remote(ctx, pi) {
                                // (the second Ctrl-C reaches this ssh too)
                                if INTERRUPTS.load(Ordering::SeqCst) <= 1 {
                                    eprintln!("deploy: {e:#}");
                                }
                            }
                        }
                    });
                    while !h.is_finished() {
                        if INTERRUPTS.load(Ordering::SeqCst) > 1 {
                            for s in sessions.iter_mut().flatten() {
                                let _ = s.child.kill();
                            }
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(50));
                    }
                });
            } else {
                // hang up: the pty hangup makes the Pis' kernels stop the processes
                for s in sessions.iter_mut().flatten() {
                    let _ = s.child.kill();
                }
                stop_sent = [true, true];
            }
        }
        if !listening
            && !stopping
            && t0.elapsed() > timeout
            && sessions[0].as_ref().is_some_and(|s| s.done.is_none())
        {
            failed.push(format!(
                "the receiver did not log `listening on` within {timeout:?}"
            ));
            stopping = true;
            stop_sent[0] = true;
            stop_remote(ctx, recv)?;
        }
        let all_done = sessions
            .iter()
            .all(|s| s.as_ref().is_none_or(|s| s.done.is_some()));
        // (the exits come after the last log lines: each is judged above
        // before the loop ends, after a stop too)
        if all_done && idle && (listening || sessions[0].as_ref().is_some_and(|s| s.done.is_some()))
        {
            break;
        }
    }
    if ended_early {
        failed.push(if in_use {
            "receiver ended before it listened: \"Address (already) in use\" means something \
             listens on that port already: the bitmask-recv service, which `cargo xtask \
             deploy --uninstall` or `sudo systemctl stop bitmask-recv` stops, or a receiver \
             still running from a deploy whose connection broke (the Pi ends it only once \
             sshd notices, which can take long): `pkill -x bitmask-recv` on the Pi ends it \
             (and `pkill -x bitmask-send` on the sender Pi, whose camera it may still hold)"
                .into()
        } else {
            "receiver ended before it listened (its log is above)".into()
        });
    }
    // (both ended well, frames captured and not one sent: a `to` nobody
    // listens at; a stop before the camera gave a frame is no failure)
    let counts = sender_summary.as_deref().and_then(summary_counts);
    if let (Some(s), Some((captured, 0)), true) = (&sender_summary, counts, failed.is_empty()) {
        if captured > 0 {
            failed.push(format!(
                "the sender sent none of the {captured} frames it captured ({s}): its log \
                 above says why (e.g. a `to` in [sender] at which no receiver listens)"
            ));
        } else {
            eprintln!("deploy: note: the sender captured no frame before it ended");
        }
    }
    if failed.is_empty() {
        eprintln!("deploy: both sides ended well");
        Ok(())
    } else {
        bail!("deploy failed: {}", failed.join("; "))
    }
}

// ---------------------------------------------------------------------------------------
// systemd units

/// Stands for the SSH login user in a unit's `User=` until the Pi fills it in.
const LOGIN_USER: &str = "@LOGIN_USER@";

/// `--log-every` of the installed services, seconds.
const SERVICE_LOG_EVERY: u32 = 60;

fn unit_text(pi: &Pi, args: &[String]) -> String {
    let what = match pi.role {
        Role::Receiver => "receiver",
        Role::Sender => "sender",
    };
    let mut v = pi.prefix.clone();
    v.push(pi.bin_path());
    // a service runs for weeks: a log line a minute, not a second (the
    // journal on an SD card), unless the args say otherwise
    if !args.iter().any(|a| a.starts_with("--log-every")) {
        v.extend(["--log-every".to_string(), SERVICE_LOG_EVERY.to_string()]);
    }
    v.extend(args.iter().cloned());
    let exec = v
        .iter()
        .map(|a| systemd_word(a))
        .collect::<Vec<_>>()
        .join(" ");
    // Without `user` (a login user from ~/.ssh/config), the login user:
    // filled in on the Pi (`LOGIN_USER`), else the service would run as root.
    let user = format!("User={}\n", pi.user.as_deref().unwrap_or(LOGIN_USER));
    format!(
        "# written by `cargo xtask deploy --install-service`; removed by `--uninstall`
[Unit]
Description=bitmask {what}
Wants=network-online.target
After=network-online.target

[Service]
{user}WorkingDirectory={dir}
Environment=RUST_LOG=info
ExecStart={exec}
Restart=always
RestartSec=2
# SIGTERM to bitmask only: it ends an --exec child itself, after the last frame
KillMode=mixed

[Install]
WantedBy=multi-user.target
",
        dir = pi.dir
    )
}

/// One word of a unit's `ExecStart=`: systemd expands `$VAR` and `%x`
/// specifiers and takes C escapes inside quotes, so `$`, `%` and `\` are
/// doubled; a word with blanks or quotes is double-quoted (a camera
/// command for `--input-command` is one such word).
fn systemd_word(a: &str) -> String {
    let mut w = String::new();
    for c in a.chars() {
        match c {
            '\\' => w.push_str("\\\\"),
            '$' => w.push_str("$$"),
            '%' => w.push_str("%%"),
            '"' => w.push_str("\\\""),
            '\n' => w.push_str("\\n"),
            '\t' => w.push_str("\\t"),
            // other control characters as C escapes (a raw newline would end the line)
            c if c.is_control() => {
                for b in c.encode_utf8(&mut [0; 4]).bytes() {
                    w.push_str(&format!("\\x{b:02x}"));
                }
            }
            c => w.push(c),
        }
    }
    if w.is_empty() || a.contains([' ', '"', '\'', ';']) || a.chars().any(char::is_control) {
        format!("\"{w}\"")
    } else {
        w
    }
}

/// Seconds a freshly started unit must stay up, unrestarted, to count as
/// installed (a unit whose program exits at once is restarted every 2 s).
const SERVICE_SETTLE_SECS: u32 = 3;
/// Seconds more the sender's unit is given to say in its journal that it
/// connected to the receiver (not a failure: said, with where to look).
const SERVICE_CONNECT_SECS: u32 = 15;

const SUDO: &str = "if [ \"$(id -u)\" = 0 ]; then S=; else S='sudo -n'; fi; command -v systemctl >/dev/null || { echo 'no systemctl: --install-service needs systemd (Raspberry Pi OS has it)' >&2; exit 5; }; ";

fn services(ctx: &Ctx, recv: &Pi, send: &Pi, install: bool) -> Result<()> {
    let order: [&Pi; 2] = if install { [recv, send] } else { [send, recv] };
    // (a port 0 was refused in `run`, before the build)
    let port = recv.listen.rsplit(':').next().unwrap_or("0");
    for pi in order {
        let unit = pi.unit();
        let script = if install {
            let args = match pi.role {
                Role::Receiver => receiver_args(pi),
                Role::Sender => sender_args(pi, &sender_to(recv, send, port)),
            };
            let text = unit_text(pi, &args);
            if ctx.dry {
                println!(
                    "[dry-run] unit {}/{unit} on {}{}:\n{text}",
                    pi.unit_dir,
                    pi.host_label(),
                    if pi.dir.starts_with('/') {
                        ""
                    } else {
                        " (paths relative to the login user's home here; the install writes them absolute)"
                    }
                );
            }
            // The sender's journal, once it is up: has it connected to the
            // receiver? (A name that resolves but a port no one listens on,
            // a firewall: the unit stays up, reconnecting for good.)
            // (UDP's "connect" sends nothing: there the journal cannot
            // tell. The login user reads the journal (group adm on
            // Raspberry Pi OS); root's try comes second.)
            let udp = args
                .windows(2)
                .any(|w| w[0] == "--transport" && w[1] == "udp")
                || args.iter().any(|a| a == "--transport=udp");
            let connected = match pi.role {
                Role::Receiver => String::new(),
                Role::Sender if udp => " && echo udp".to_string(),
                Role::Sender => format!(
                    " && {{ i=0; while [ $i -lt {wait} ]; do if {{ journalctl -u {unit} --since @$t0 -o cat --no-pager 2>/dev/null || $S journalctl -u {unit} --since @$t0 -o cat --no-pager 2>/dev/null; }} | grep -q 'state: connected to'; then echo connected; exit 0; fi; i=$((i+1)); sleep 1; done; echo not-connected; }}",
                    wait = SERVICE_CONNECT_SECS
                ),
            };
            format!(
                "{SUDO}printf '%s' {t} | sed \"s/^User={LOGIN_USER}$/User=$(id -un)/\" | $S tee {ud}/{unit} >/dev/null && $S systemctl daemon-reload && $S systemctl enable {unit} && t0=$(date +%s) && $S systemctl restart {unit} && sleep {settle} && {{ st=$(systemctl is-active {unit}); n=$(systemctl show -p NRestarts --value {unit}); if [ \"$st\" = active ] && [ \"${{n:-0}}\" = 0 ]; then echo active; else echo \"service-failed: $st, restarted ${{n:-0}} times\" >&2; ($S journalctl -u {unit} -n 20 --no-pager 2>/dev/null || journalctl -u {unit} -n 20 --no-pager 2>/dev/null) >&2; $S systemctl disable --now {unit} >/dev/null 2>&1; exit 7; fi; }}{connected}",
                settle = SERVICE_SETTLE_SECS,
                ud = q(&pi.unit_dir),
                t = q(&text)
            )
        } else {
            format!(
                "{SUDO}$S systemctl disable --now {unit} 2>/dev/null; $S rm -f {ud}/{unit} && $S systemctl daemon-reload && echo removed",
                ud = q(&pi.unit_dir)
            )
        };
        let (ok, out, err) = ctx.exec(&mut pi.ssh(false, &script))?;
        if !ok {
            if let Some(at) = err.find("service-failed: ") {
                bail!(
                    "{}: {unit} was installed but does not stay up {SERVICE_SETTLE_SECS} s after \
                     its start ({}), so it was stopped and disabled again; its journal's last \
                     lines:\n{}\n(check its arguments in deploy.toml, then `journalctl -u \
                     {unit}` on the Pi)",
                    pi.host_label(),
                    err[at + 16..].lines().next().unwrap_or("").trim(),
                    err[at..].lines().skip(1).collect::<Vec<_>>().join("\n")
                );
            }
            if err.contains("no systemctl") {
                bail!(
                    "{}: no systemctl: --install-service needs systemd (Raspberry Pi OS has it)",
                    pi.host_label()
                );
            }
            if err.contains("sudo") {
                bail!(
                    "{}: needs root or passwordless sudo for systemd units ({})",
                    pi.host_label(),
                    err.trim()
                );
            }
            return Err(ssh_error(
                pi,
                if install {
                    "installing the service"
                } else {
                    "removing the service"
                },
                &err,
            ));
        }
        if !ctx.dry {
            let said: Vec<&str> = out.split_whitespace().collect();
            eprintln!(
                "deploy: {}: {unit} {}",
                pi.label(),
                if install {
                    format!(
                        "enabled and {}",
                        match said[..] {
                            [state, "connected"] => format!("{state}, connected to the receiver"),
                            [state, "udp"] => format!(
                                "{state} (over UDP the install cannot tell whether its \
                                 datagrams reach the receiver: `journalctl -u bitmask-recv` \
                                 on {} says)",
                                recv.host_label()
                            ),
                            [state, "not-connected"] => format!(
                                "{state}, but NOT CONNECTED to the receiver after \
                                 {SERVICE_CONNECT_SECS} s: check `journalctl -u {unit}` on \
                                 {}, the receiver's address and port (--to), a firewall \
                                 between the Pis, and that bitmask-recv.service is up",
                                pi.host_label()
                            ),
                            _ => out.trim().to_string(),
                        }
                    )
                } else {
                    "removed".into()
                }
            );
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The deploy test: two sshd instances on loopback ports stand in for the two Pis; the
// "Pis" run the ARM builds through `run_prefix = "qemu-arm -cpu ..."`.

struct Sshd {
    child: Child,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn keygen(path: &Path) -> Result<()> {
    if !path.exists() {
        crate::util::run(
            Command::new("ssh-keygen")
                .args([
                    "-q",
                    "-t",
                    "ed25519",
                    "-N",
                    "",
                    "-C",
                    "bitmask-deploy-test",
                    "-f",
                ])
                .arg(path),
        )?;
    }
    Ok(())
}

fn start_sshd(dir: &Path, authorized: &Path) -> Result<(Sshd, u16)> {
    std::fs::create_dir_all(dir)?;
    let hostkey = dir.join("ssh_host_ed25519_key");
    keygen(&hostkey)?;
    let port = free_port()?;
    let cfg = dir.join("sshd_config");
    std::fs::write(
        &cfg,
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {hk}\nPidFile {pid}\nAuthorizedKeysFile {ak}\n\
PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n\
PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\nSubsystem sftp internal-sftp\nLogLevel VERBOSE\n\
SetEnv PATH={fakebin}:/usr/local/bin:/usr/bin:/bin\n",
            fakebin = dir.parent().unwrap().join("fakebin").display(),
            hk = hostkey.display(),
            pid = dir.join("sshd.pid").display(),
            ak = authorized.display()
        ),
    )?;
    let sshd = crate::deps::SSHD
        .into_iter()
        .find(|p| Path::new(p).exists());
    let sshd = match sshd {
        Some(s) => s,
        None => {
            dist::apt_install(
                &["openssh-server"],
                "the deploy test runs two sshd instances",
            )?;
            "/usr/sbin/sshd"
        }
    };
    if !Path::new("/run/sshd").exists() {
        // Debian's sshd wants its privilege separation directory
        let _ = std::fs::create_dir_all("/run/sshd");
    }
    let log = std::fs::File::create(dir.join("sshd.log"))?;
    let child = Command::new(sshd)
        .arg("-D")
        .arg("-e")
        .arg("-f")
        .arg(&cfg)
        .stderr(log)
        .stdout(Stdio::null())
        .spawn()
        .context("cannot start sshd")?;
    let s = Sshd { child };
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if t.elapsed() > Duration::from_secs(10) {
            bail!(
                "sshd on port {port} did not start: {}",
                std::fs::read_to_string(dir.join("sshd.log")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((s, port))
}

/// Processes whose command line mentions `needle` (but not sshd's own).
/// Waits (at most 120 s) until `ready` says so while the deploy `child`
/// (logging to `log`) runs; else kills it and fails with `what` and its log.
fn await_deploy(
    child: &mut Child,
    log: &Path,
    what: &str,
    mut ready: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let t = Instant::now();
    while !ready()? {
        if t.elapsed() > Duration::from_secs(120) || child.try_wait()?.is_some() {
            let _ = child.kill();
            bail!("{what}; its log:\n{}", std::fs::read_to_string(log)?);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

fn procs_with(needle: &str) -> Vec<String> {
    let mut v = Vec::new();
    let me = std::process::id().to_string();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) || name == me {
            continue;
        }
        if let Ok(c) = std::fs::read(e.path().join("cmdline")) {
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            if c.contains(needle) && !c.contains("sshd") {
                v.push(format!("{name}: {c}"));
            }
        }
    }
    v
}

/// Runs `xtask deploy ARGS` as a child; returns (status, stderr+stdout).
fn deploy_child(args: &[&str]) -> Result<(Child, PathBuf)> {
    let exe = std::env::current_exe()?;
    // rebuilt while running: /proc/self/exe says "... (deleted)"; the new build is at the path
    let exe = match exe.to_str().and_then(|e| e.strip_suffix(" (deleted)")) {
        Some(e) => PathBuf::from(e),
        None => exe,
    };
    static N: AtomicUsize = AtomicUsize::new(0);
    let log = self_test_dir().join(format!("deploy-{}.log", N.fetch_add(1, Ordering::SeqCst)));
    let f =
        std::fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
    let mut c = Command::new(exe);
    c.arg("deploy")
        .args(args)
        .stdout(f.try_clone()?)
        .stderr(f)
        .stdin(Stdio::null());
    eprintln!("$ xtask deploy {}", args.join(" "));
    Ok((c.spawn()?, log))
}

fn wait_child(c: &mut Child, limit: Duration) -> Result<ExitStatus> {
    let t = Instant::now();
    loop {
        if let Some(st) = c.try_wait()? {
            return Ok(st);
        }
        if t.elapsed() > limit {
            let _ = c.kill();
            bail!("deploy did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn deploy_expect(args: &[&str], ok: bool, needle: &str) -> Result<String> {
    let (mut c, log) = deploy_child(args)?;
    let st = wait_child(&mut c, Duration::from_secs(300))?;
    let text = std::fs::read_to_string(&log)?;
    if st.success() != ok || !text.contains(needle) {
        bail!(
            "`xtask deploy {}` ended with {st}; expected {} and the text {needle:?}; its output:\n{text}",
            args.join(" "),
            if ok { "success" } else { "failure" }
        );
    }
    Ok(text)
}

/// Whether `c` may be in an install directory's path (see the check in
/// the config's reading).
fn install_dir_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "/._-+,@".contains(c)
}

/// The deploy self-test's directory: its install directories are under
/// it, so it must pass the install directory check (and sshd_config and
/// ssh's options split their values at spaces): a checkout whose path has
/// spaces runs it under the temporary directory instead, one per checkout.
fn self_test_dir() -> PathBuf {
    let in_target = root().join("target/deploy-test");
    if in_target
        .to_str()
        .is_some_and(|p| p.chars().all(install_dir_char))
    {
        return in_target;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in root().as_os_str().as_encoded_bytes() {
        h = (h ^ *b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    std::env::temp_dir().join(format!("bitmask-deploy-test-{h:016x}"))
}

/// The deploy self-test: two local sshd instances stand in for the Pis.
pub fn self_test() -> Result<()> {
    let t0 = Instant::now();
    let base = self_test_dir();
    std::fs::create_dir_all(&base)?;
    if !base.starts_with(root()) {
        // Under the shared temporary directory, its name known: it must be
        // this user's alone (it holds the stand-in Pis' authorized keys and
        // the programs on their PATH).
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let m = std::fs::symlink_metadata(&base)?;
        // SAFETY: geteuid(2) cannot fail and touches no memory.
        #[allow(unsafe_code)]
        let me = unsafe { libc::geteuid() };
        if !m.is_dir() || m.uid() != me {
            bail!(
                "{} is not a directory of this user's: remove it, or run the deploy test from a \
                 checkout whose path has no spaces",
                base.display()
            );
        }
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o700))?;
    }
    for d in ["pi-zero", "pi2", "ref", "ref-loop"] {
        let _ = std::fs::remove_dir_all(base.join(d));
    }
    let client = base.join("client_key");
    keygen(&client)?;
    let fakebin = base.join("fakebin");
    std::fs::create_dir_all(&fakebin)?;
    let fake = fakebin.join("systemctl");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\n# stand-in for systemctl in the deploy test (with {fail}: a unit that keeps failing)\necho \"$*\" >> {log}\nif [ -e {fail} ]; then [ \"$1\" = is-active ] && echo activating; [ \"$1\" = show ] && echo 4; exit 0; fi\n[ \"$1\" = is-active ] && echo active\nexit 0\n",
            log = base.join("systemctl.log").display(),
            fail = base.join("systemctl-fail").display()
        ),
    )?;
    // and for journalctl: the sender's unit connected (with {silent}: it did not)
    let fake_journal = fakebin.join("journalctl");
    std::fs::write(
        &fake_journal,
        format!(
            "#!/bin/sh\n# stand-in for journalctl in the deploy test: asked for the sender's unit since a time\ncase \"$*\" in *'-u bitmask-send.service --since @'[0-9]*) ;; *' -n 20 --no-pager') exit 0;; *) echo \"unexpected: journalctl $*\" >&2; exit 1;; esac\n[ -e {silent} ] || echo 'state: connected to 127.0.0.1:5555 over tcp; resuming at frame 0'\nexit 0\n",
            silent = base.join("journalctl-silent").display()
        ),
    )?;
    // and for date: the sender "Pi" (working in pi2/) is an hour behind, for the clock check
    let fake_date = fakebin.join("date");
    std::fs::write(
        &fake_date,
        "#!/bin/sh
# stand-in for date in the deploy test: the sender \"Pi\" is an hour behind
case \"$PWD\" in */pi2/*) if [ \"$1\" = +%s.%N ]; then /bin/date +%s.%N | awk '{ printf \"%.3f\\n\", $1 - 3600 }'; exit; fi;; esac
exec /bin/date \"$@\"
",
    )?;
    {
        use std::os::unix::fs::PermissionsExt;
        for f in [&fake, &fake_journal, &fake_date] {
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o755))?;
        }
    }
    let stranger = base.join("stranger_key");
    keygen(&stranger)?;
    let authorized = base.join("authorized_keys");
    std::fs::copy(base.join("client_key.pub"), &authorized)?;
    let (_a, port_a) = start_sshd(&base.join("sshd-pi-zero"), &authorized)?;
    let (_b, port_b) = start_sshd(&base.join("sshd-pi2"), &authorized)?;
    let mut kh = String::new();
    for (d, p) in [("sshd-pi-zero", port_a), ("sshd-pi2", port_b)] {
        let pubkey = std::fs::read_to_string(base.join(d).join("ssh_host_ed25519_key.pub"))?;
        let mut it = pubkey.split_whitespace();
        kh.push_str(&format!(
            "[127.0.0.1]:{p} {} {}\n",
            it.next().unwrap_or(""),
            it.next().unwrap_or("")
        ));
    }
    std::fs::write(base.join("known_hosts"), kh)?;
    let images = base.join("images");
    let n = dist::write_test_images(&images)?;
    let user = crate::util::output(Command::new("id").arg("-un"))?
        .trim()
        .to_string();
    // (what `uname -m` says on the stand-in Pis: this machine)
    let host_machine = crate::util::output(Command::new("uname").arg("-m"))?
        .trim()
        .to_string();
    let b = base.display();
    let conf = |recv_args: &str, send_args: &str, accept: bool| {
        format!(
            r#"# generated by `cargo xtask qemu deploy`: two sshd on loopback stand in for the Pis
[defaults]
user = "{user}"
key = "{b}/client_key"
ssh_options = ["-F", "/dev/null", "-o", "UserKnownHostsFile={b}/known_hosts", "-o", "StrictHostKeyChecking=yes"]
{accept}

[receiver]
host = "127.0.0.1"
port = {port_a}
build = "armv6"
dir = "{b}/pi-zero/bitmask"
run_prefix = "qemu-arm -cpu arm1176"
listen = "127.0.0.1:0"
args = [{recv_args}]

[sender]
host = "127.0.0.1"
port = {port_b}
build = "armv7"
dir = "{b}/pi2/bitmask"
run_prefix = "qemu-arm -cpu cortex-a7 -L {sysroot}"
args = [{send_args}]
"#,
            accept = if accept {
                format!(
                    "# the \"Pis\" are this machine running the ARM builds in qemu-user\n\
                     accept_machines = [\"{host_machine}\"]"
                )
            } else {
                String::new()
            },
            sysroot = dist::ARMHF_SYSROOT,
        )
    };
    let masks = format!("{b}/pi-zero/masks");
    let send_args = format!(r#""--channel", "luma", "--threshold", "otsu", "{b}/images""#);
    let c1 = base.join("deploy.toml");
    std::fs::write(
        &c1,
        conf(
            &format!(r#""--out", "{masks}", "--format", "raw", "--count", "{n}""#),
            &send_args,
            true,
        ),
    )?;
    let c1s = c1.to_str().unwrap();

    // 1. stream a finite set; both sides end by themselves
    let out = deploy_expect(
        &["--config", c1s, "--no-build"],
        true,
        "both sides ended well",
    )?;
    for needle in [
        "verified on the Pi",
        "s apart (the sender's behind)",
        "[recv 127.0.0.1:",
        "[send 127.0.0.1:",
        "listening on",
    ] {
        if !out.contains(needle) {
            bail!("deploy output lacks {needle:?}:\n{out}");
        }
    }
    let host = crate::util::build_bins(false)?;
    let want = base.join("ref");
    dist::stream_pair(
        (&[], &host.join("bitmask-recv")),
        (&[], &host.join("bitmask-send")),
        &images,
        n,
        &want,
        &["--channel", "luma", "--threshold", "otsu"],
    )?;
    let bytes = dist::compare_dirs(Path::new(&masks), &want, n)?;
    eprintln!(
        "deploy test: {n} masks ({bytes} B) streamed Pi2(armv7) -> PiZero(armv6) over deploy equal the host build's"
    );
    let left = procs_with(&format!("{b}/pi"));
    if !left.is_empty() {
        bail!("processes left on the \"Pis\" after the run: {left:?}");
    }

    // 2. second run: the binaries are up to date and not copied again; a camera-like
    //    sender (`--input-command`, a producer that never ends, its command line marked
    //    with the Pi's dir so the leftover check sees it) until Ctrl-C
    let c2 = base.join("deploy-loop.toml");
    let masks2 = format!("{b}/pi-zero/masks-loop");
    let camera_args = format!(
        r#""--input-format", "gray8", "--size", "64x48", "--threshold", "100", "--input-command", "while :; do head -c 3072 /dev/urandom; sleep 0.25; done # {b}/pi2/camera""#
    );
    std::fs::write(
        &c2,
        conf(
            &format!(r#""--out", "{masks2}", "--format", "raw""#),
            &camera_args,
            true,
        ),
    )?;
    let (mut child, log) = deploy_child(&["--config", c2.to_str().unwrap(), "--no-build"])?;
    let dir2 = masks2.as_str();
    let frames = |n| move || Ok(std::fs::read_dir(dir2).map(|d| d.count()).unwrap_or(0) >= n);
    await_deploy(
        &mut child,
        &log,
        "the --loop deploy did not deliver 3 frames",
        frames(3),
    )?;
    let running = procs_with(&format!("{b}/pi"));
    if running.len() < 3 || !running.iter().any(|p| p.contains("/pi2/camera")) {
        bail!("expected the remote receiver, sender and its camera command running, found {running:?}");
    }
    crate::util::run(Command::new("kill").args(["-INT", &child.id().to_string()]))?;
    let st = wait_child(&mut child, Duration::from_secs(60))?;
    let text = std::fs::read_to_string(&log)?;
    if !st.success() || !text.contains("is up to date") {
        bail!("Ctrl-C run ended with {st} (or re-copied the binaries); its log:\n{text}");
    }
    std::thread::sleep(Duration::from_millis(500));
    let left = procs_with(&format!("{b}/pi"));
    if !left.is_empty() {
        bail!("processes left on the \"Pis\" after Ctrl-C: {left:?}\n{text}");
    }
    // 2b. xtask killed outright (kill -9): ssh dies with it, the ptys hang up, the Pis'
    //     kernels stop the processes
    let _ = std::fs::remove_dir_all(&masks2);
    let (mut child, log) = deploy_child(&["--config", c2.to_str().unwrap(), "--no-build"])?;
    await_deploy(
        &mut child,
        &log,
        "the --loop deploy did not deliver 2 frames",
        frames(2),
    )?;
    child.kill()?;
    child.wait()?;
    let t = Instant::now();
    loop {
        let left = procs_with(&format!("{b}/pi"));
        if left.is_empty() {
            break;
        }
        if t.elapsed() > Duration::from_secs(15) {
            bail!("processes left on the \"Pis\" 15 s after xtask was killed: {left:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("deploy test: xtask killed with SIGKILL: the remote processes ended by themselves in {:.1} s", t.elapsed().as_secs_f64());
    // 2c. a receiver that cannot stop on the first SIGTERM (its --exec program ignores
    //     SIGTERM and reads nothing): it ends, and nothing of its program outlives it, and
    //     the run counts as failed (the receiver exits 1)
    let c4 = base.join("deploy-stuck.toml");
    let stuck_exec = format!("trap '' TERM; while :; do sleep 1; done # {b}/pi-zero/stuck");
    std::fs::write(
        &c4,
        conf(
            &format!(r#""--format", "raw", "--exec", "{stuck_exec}""#),
            &camera_args,
            true,
        ),
    )?;
    let (mut child, log) = deploy_child(&["--config", c4.to_str().unwrap(), "--no-build"])?;
    await_deploy(
        &mut child,
        &log,
        "the --exec deploy did not start both sides",
        || {
            Ok(!procs_with(&format!("{b}/pi-zero/stuck")).is_empty()
                && std::fs::read_to_string(&log)?.contains("[send "))
        },
    )?;
    std::thread::sleep(Duration::from_secs(2));
    crate::util::run(Command::new("kill").args(["-INT", &child.id().to_string()]))?;
    let st = wait_child(&mut child, Duration::from_secs(60))?;
    let text = std::fs::read_to_string(&log)?;
    // (the receiver gives up on its program itself after 10 s, killing it,
    // before the second SIGTERM at 12 s)
    if st.success() || !text.contains("FAILED") {
        bail!("Ctrl-C of a receiver stuck on its --exec program ended with {st}; its log:\n{text}");
    }
    std::thread::sleep(Duration::from_millis(500));
    let left = procs_with(&format!("{b}/pi"));
    if !left.is_empty() {
        bail!("processes left on the \"Pis\" after stopping a stuck receiver: {left:?}\n{text}");
    }
    eprintln!(
        "deploy test: a receiver stuck on an --exec program that ignores SIGTERM stopped, with its program, reported as failed"
    );
    eprintln!(
        "deploy test: Ctrl-C stopped the remote receiver, sender and camera command ({} processes were running), none left, exit 0",
        running.len()
    );

    // 3. clear errors
    let dead = free_port()?.to_string();
    deploy_expect(
        &[
            "--config",
            c1s,
            "--no-build",
            "--receiver",
            &format!("127.0.0.1:{dead}"),
        ],
        false,
        "unreachable",
    )?;
    deploy_expect(
        &[
            "--config",
            c1s,
            "--no-build",
            "--key",
            stranger.to_str().unwrap(),
        ],
        false,
        "refused the login",
    )?;
    deploy_expect(
        &[
            "--config",
            c1s,
            "--no-build",
            "--key",
            &format!("{b}/no-such-key"),
        ],
        false,
        "no-such-key does not exist",
    )?;
    let c3 = base.join("deploy-noaccept.toml");
    std::fs::write(&c3, conf("", "", false))?;
    deploy_expect(
        &["--config", c3.to_str().unwrap(), "--no-build"],
        false,
        "wrong architecture",
    )?;
    // A receiver name the sender Pi cannot resolve: said before anything
    // is copied or started (a sender service would retry for good)
    deploy_expect(
        &[
            "--config",
            c1s,
            "--no-build",
            "--set",
            "sender.to=no-such-receiver.invalid:5000",
        ],
        false,
        "cannot resolve the receiver's name \"no-such-receiver.invalid\"",
    )?;
    // A `to` at another port than the receiver's: said when the receiver
    // listens (the batch sender then gives up, which fails the run)
    deploy_expect(
        &[
            "--config",
            c1s,
            "--no-build",
            "--set",
            "sender.to=127.0.0.1:1",
        ],
        false,
        "`to` in [sender] is 127.0.0.1:1, but the receiver listens on port",
    )?;
    // An install directory that cannot be made (a file in its path)
    deploy_expect(
        &[
            "--config",
            c1s,
            "--no-build",
            "--set",
            "receiver.dir=/dev/null/bitmask",
        ],
        false,
        "cannot create or enter the install directory /dev/null/bitmask",
    )?;
    // The armv7 build on a Pi 1's CPU (which `uname -m` would have caught:
    // here the machine check is out of the way): the copied binary is tried
    // before anything starts, and its SIGILL is told as such.
    let v7_on_v6 = format!(
        "receiver.run_prefix=qemu-arm -cpu arm1176 -L {}",
        dist::ARMHF_SYSROOT
    );
    deploy_expect(
        &[
            "--config",
            c1s,
            "--no-build",
            "--set",
            "receiver.build=armv7",
            "--set",
            &v7_on_v6,
        ],
        false,
        "dies with SIGILL: the armv7 build uses instructions this Pi's CPU lacks",
    )?;
    let dry = deploy_expect(
        &[
            "--config",
            c1s,
            "--no-build",
            "--dry-run",
            "--set",
            "receiver.dir=/nonexistent/bitmask",
        ],
        true,
        "[dry-run] scp",
    )?;
    if Path::new("/nonexistent").exists() || !dry.contains("[dry-run] ssh") {
        bail!("--dry-run ran something or printed no ssh command:\n{dry}");
    }
    // an install directory scp would hand to the shell split: refused
    deploy_expect(
        &[
            "--config",
            c1s,
            "--no-build",
            "--dry-run",
            "--set",
            "receiver.dir=my masks",
        ],
        false,
        "receiver.dir \"my masks\": ' ' is not allowed in the install directory",
    )?;
    let svc = deploy_expect(
        &[
            "--config",
            c1s,
            "--no-build",
            "--dry-run",
            "--install-service",
            "--set",
            "receiver.listen=0.0.0.0:5555",
        ],
        true,
        "Restart=always",
    )?;
    // restart, not enable --now: a running service takes the new binary and arguments
    if !svc.contains("systemctl enable bitmask-recv.service")
        || !svc.contains("systemctl restart bitmask-recv.service")
    {
        bail!("--install-service --dry-run shows no systemctl enable and restart:\n{svc}");
    }
    eprintln!("deploy test: unreachable host, refused key, wrong architecture, a receiver name the sender cannot resolve, an install dir that cannot be made, a build that dies of SIGILL, --dry-run and --install-service --dry-run behave");

    // 4. --install-service / --uninstall for real, against a stand-in systemctl (the
    //    "Pis" here have no systemd) that logs its calls; units go to <base>/systemd
    let units = base.join("systemd");
    std::fs::create_dir_all(&units)?;
    let calls = base.join("systemctl.log");
    let _ = std::fs::remove_file(&calls);
    // the sender a camera sender: its command, one argument with blanks, `;`, `$`
    // and `%`, must reach the unit as one word that systemd leaves alone
    let c4 = base.join("deploy-service.toml");
    std::fs::write(
        &c4,
        conf(
            &format!(r#""--out", "{masks}", "--format", "raw""#),
            r#""--input-format", "gray8", "--size", "64x48", "--input-command", "cam -o - ; echo $HOME 100%""#,
            true,
        ),
    )?;
    let svc_args = [
        "--config",
        c4.to_str().unwrap(),
        "--no-build",
        "--set",
        "receiver.listen=127.0.0.1:5555",
        "--set",
        &format!("defaults.unit_dir={}", units.display()),
    ];
    let mut a = svc_args.to_vec();
    a.push("--install-service");
    // a unit whose program does not stay up: told, with its restarts, and disabled again
    let fail = base.join("systemctl-fail");
    std::fs::write(&fail, "")?;
    let failed = deploy_expect(&a, false, "does not stay up 3 s after its start (activating, restarted 4 times), so it was stopped and disabled again");
    std::fs::remove_file(&fail)?;
    failed?;
    if !std::fs::read_to_string(&calls)?.contains("disable --now bitmask-recv.service") {
        bail!("a unit that did not stay up was not disabled again");
    }
    let _ = std::fs::remove_file(&calls);
    // a sender whose journal never says it connected: installed, and told
    let silent = base.join("journalctl-silent");
    std::fs::write(&silent, "")?;
    let quiet = deploy_expect(
        &a,
        true,
        "bitmask-send.service enabled and active, but NOT CONNECTED to the receiver after 15 s",
    );
    std::fs::remove_file(&silent)?;
    quiet?;
    let _ = std::fs::remove_file(&calls);
    deploy_expect(
        &a,
        true,
        "bitmask-send.service enabled and active, connected to the receiver",
    )?;
    let recv_unit = std::fs::read_to_string(units.join("bitmask-recv.service"))?;
    let send_unit = std::fs::read_to_string(units.join("bitmask-send.service"))?;
    let log = std::fs::read_to_string(&calls)?;
    let (r, s) = (
        log.find("restart bitmask-recv"),
        log.find("restart bitmask-send"),
    );
    if !recv_unit.contains("Restart=always")
        || !recv_unit.contains("\nUser=")
        || recv_unit.contains(LOGIN_USER)
        || !recv_unit.contains("qemu-arm -cpu arm1176")
        || !send_unit.contains("--to 127.0.0.1:5555")
        || !recv_unit.contains("bitmask-recv --log-every 60 ")
        || !send_unit.contains("bitmask-send --log-every 60 ")
        || !send_unit.contains(r#" --input-command "cam -o - ; echo $$HOME 100%%""#)
        || !matches!((r, s), (Some(r), Some(s)) if r < s)
    {
        bail!(
            "--install-service wrote unexpected units or calls:\n{recv_unit}\n{send_unit}\n{log}"
        );
    }
    let mut a = svc_args.to_vec();
    a.push("--uninstall");
    deploy_expect(&a, true, "removed")?;
    let log = std::fs::read_to_string(&calls)?;
    if units.join("bitmask-recv.service").exists()
        || units.join("bitmask-send.service").exists()
        || !log.contains("disable --now bitmask-recv")
    {
        bail!("--uninstall left units behind or did not disable them:\n{log}");
    }
    eprintln!("deploy test: --install-service told and disabled a unit that did not stay up, told of a sender that did not connect, wrote and enabled both units (receiver first), --uninstall removed them");
    eprintln!("deploy test: passed in {:.0} s", t0.elapsed().as_secs_f64());
    Ok(())
}

/// `~/x` as `$HOME/x`; other paths as they are.
fn expand_home(p: &str) -> std::path::PathBuf {
    match (p.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => std::path::Path::new(&home).join(rest),
        _ => std::path::PathBuf::from(p),
    }
}

#[cfg(test)]
mod tests {
    use super::{
        clock_warning, port_mismatch, probe_failure, summary_counts, systemd_word, Pi, PiConf, Role,
    };

    #[test]
    fn a_sender_that_sent_nothing_or_to_another_port_is_told() {
        let s = "bitmask-send: captured 40, sent 0 frames, 0 bytes in 4.00 s: 0.0 fps, \
                 0.0 Mbit/s; confirmed -; dropped 40, failed 0, reconnects 0";
        assert_eq!(summary_counts(s), Some((40, 0)));
        let s = "bitmask-send: captured 40 (and 2 skipped for --fps), sent 38 frames, 90 bytes";
        assert_eq!(summary_counts(s), Some((40, 38)));
        assert_eq!(summary_counts("bitmask-send: stopping"), None);
        assert!(port_mismatch("10.0.0.3:5000", "5000").is_none());
        assert!(port_mismatch("[fe80::1%eth0]:5000", "5000").is_none());
        let w = port_mismatch("10.0.0.3:5999", "5000").unwrap();
        assert!(
            w.contains("10.0.0.3:5999") && w.contains("port 5000"),
            "{w}"
        );
    }

    #[test]
    fn clocks_far_apart_are_a_warning() {
        let pi = |role, host: &str, off: Option<f64>| {
            let mut p = Pi::resolve(
                role,
                PiConf {
                    host: Some(host.into()),
                    build: Some("armv6".into()),
                    ..Default::default()
                },
            )
            .unwrap();
            p.clock_offset = off;
            p
        };
        let r = pi(Role::Receiver, "pizero", Some(0.2));
        let near = pi(Role::Sender, "pi2", Some(-0.5));
        assert_eq!(clock_warning(&r, &near), None);
        let w = clock_warning(&r, &pi(Role::Sender, "pi2", Some(-3600.3))).unwrap();
        assert!(
            w.contains("pi2 and pizero are 3600.5 s apart (the sender's behind)"),
            "{w}"
        );
        assert_eq!(clock_warning(&r, &pi(Role::Sender, "pi2", None)), None);
    }

    #[test]
    fn a_listen_address_the_receiver_would_refuse_is_refused_first() {
        let conf = |listen: &str| PiConf {
            host: Some("pizero".into()),
            build: Some("armv6".into()),
            listen: Some(listen.into()),
            ..Default::default()
        };
        for bad in ["5000x", "5000", ":5000", "host:port", "::1:5000"] {
            let e = Pi::resolve(Role::Receiver, conf(bad))
                .unwrap_err()
                .to_string();
            assert!(e.contains(&format!("receiver.listen {bad:?}")), "{e}");
        }
        let p = Pi::resolve(Role::Receiver, conf("0.0.0.0:5555")).unwrap();
        assert_eq!(p.listen, "0.0.0.0:5555");
        let p = Pi::resolve(Role::Receiver, conf("[::]:5555")).unwrap();
        assert_eq!(p.listen, "[::]:5555");
    }

    #[test]
    fn targets_with_ipv6_addresses_and_ports() {
        let t = |s: &str| {
            let mut c = PiConf::default();
            c.set_target(s)
                .map(|_| (c.user, c.host.unwrap_or_default(), c.port))
        };
        let pi = Some("pi".to_string());
        assert_eq!(
            t("pi@10.0.0.7:2222").unwrap(),
            (pi.clone(), "10.0.0.7".into(), Some(2222))
        );
        assert_eq!(
            t("pizero.local").unwrap(),
            (None, "pizero.local".into(), None)
        );
        assert_eq!(
            t("pi@[fe80::1%eth0]:22").unwrap(),
            (pi.clone(), "fe80::1%eth0".into(), Some(22))
        );
        assert_eq!(t("[fe80::1]").unwrap(), (None, "fe80::1".into(), None));
        assert_eq!(t("pi@fe80::1").unwrap(), (pi, "fe80::1".into(), None));
        assert!(t("[fe80::1").is_err());
        assert!(t("[fe80::1]x").is_err());
        // said with the value, not left for a later field to trip on
        let e = t("pi@:22").unwrap_err().to_string();
        assert!(e.contains("\"pi@:22\": no host name"), "{e}");
        assert!(t("[]:22").is_err());
        let e = t("pi@host:abc").unwrap_err().to_string();
        assert!(e.contains("the port \"abc\" is not a number"), "{e}");
        // scp's HOST:PATH takes an IPv6 host in brackets
        let mut p = Pi::resolve(
            Role::Receiver,
            PiConf {
                host: Some("fe80::1%eth0".into()),
                user: Some("pi".into()),
                build: Some("armv6".into()),
                ..Default::default()
            },
        )
        .unwrap();
        let args = |p: &Pi| -> Vec<String> {
            p.scp(std::path::Path::new("/x"), "/home/pi/b")
                .get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect()
        };
        assert_eq!(args(&p).last().unwrap(), "pi@[fe80::1%eth0]:/home/pi/b");
        p.host = "pizero.local".into();
        assert_eq!(args(&p).last().unwrap(), "pi@pizero.local:/home/pi/b");
    }

    #[test]
    fn a_binary_that_does_not_run_is_told_why() {
        let pi = |prefix: Option<&str>| {
            Pi::resolve(
                Role::Receiver,
                PiConf {
                    host: Some("pizero".into()),
                    build: Some("armv7".into()),
                    run_prefix: prefix.map(Into::into),
                    ..Default::default()
                },
            )
            .unwrap()
        };
        let plain = pi(None);
        let why = probe_failure(&plain, Some(132), "");
        assert!(
            why.contains("SIGILL: the armv7 build") && why.contains("build = \"armv6\""),
            "{why}"
        );
        let why = probe_failure(&plain, Some(127), "");
        assert!(
            why.starts_with("the system cannot start it (its loader"),
            "{why}"
        );
        let why = probe_failure(&pi(Some("chrt -f 10")), Some(127), "");
        assert!(
            why.contains("the run_prefix program `chrt`, or its loader"),
            "{why}"
        );
        assert!(probe_failure(&plain, Some(126), "").contains("noexec"));
        let why = probe_failure(&pi(Some("sudo")), Some(1), "sudo: a password is required");
        assert!(why.contains("asks for a password"), "{why}");
        assert_eq!(probe_failure(&plain, Some(3), ""), "`--version` exited 3");
    }

    #[test]
    fn systemd_words_keep_their_text() {
        assert_eq!(systemd_word("--fps"), "--fps");
        assert_eq!(systemd_word(""), "\"\"");
        assert_eq!(
            systemd_word("rpicam-vid -t 0 -o -"),
            "\"rpicam-vid -t 0 -o -\""
        );
        // systemd expands $VAR and %x and takes C escapes: doubled
        assert_eq!(systemd_word("a$B%c\\d"), "a$$B%%c\\\\d");
        assert_eq!(systemd_word("say \"hi\"; x"), "\"say \\\"hi\\\"; x\"");
        // a newline would end the ExecStart line; other controls as C escapes
        assert_eq!(systemd_word("a\nb\tc"), "\"a\\nb\\tc\"");
        assert_eq!(systemd_word("a\u{85}"), "\"a\\xc2\\x85\"");
    }
}
