//! Small helpers shared by the tasks: running commands, finding the repo, the Python venv.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Prints and runs `cmd`, failing with its status when it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("$ {}", show(cmd));
    let st = cmd
        .status()
        .with_context(|| format!("could not start {}", show(cmd)))?;
    if !st.success() {
        bail!("{} failed: {st}", show(cmd));
    }
    Ok(())
}

/// Runs `cmd` and returns its stdout, failing when it fails.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("could not start {}", show(cmd)))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}\n{}",
            show(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A command line as text, for logs.
pub fn show(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// `cargo` with the same toolchain as this xtask.
/// A count of the last `bitmask-send: captured ...` summary line in
/// `log` (the number after the word `what`).
pub fn sender_counter(log: &str, what: &str) -> Option<u64> {
    // "bitmask-send: captured C, sent S frames, ...; confirmed K[, unconfirmed U]; dropped D,
    // failed F, reconnects R" ("confirmed " is found before "unconfirmed ")
    let line = log
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with("bitmask-send: "))?;
    let key = format!("{what} ");
    let v = &line[line.find(&key)? + key.len()..];
    v.split([',', ' ', ';']).next()?.parse().ok()
}

pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

/// Whether a program is on PATH.
pub fn have(prog: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {prog} >/dev/null 2>&1")])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Whether an executable file `prog` is on PATH, or in /sbin or
/// /usr/sbin (where Debian puts `tc`, off a user's PATH): unlike [`have`],
/// not a shell builtin (`kill`), which a program cannot run.
pub fn have_program(prog: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/sbin"), PathBuf::from("/usr/sbin")])
        .map(|d| d.join(prog))
        .any(|p| {
            std::fs::metadata(&p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// `rustc --version` of rustup's toolchain `name` (`nightly`, `1.85.0`),
/// installed with the minimal profile when missing.
pub fn ensure_toolchain(name: &str) -> Result<String> {
    let version = || output(Command::new("rustup").args(["run", name, "rustc", "--version"]));
    if let Ok(v) = version() {
        return Ok(v.trim().to_string());
    }
    run(Command::new("rustup").args(["toolchain", "install", name, "--profile", "minimal"]))
        .with_context(|| format!("fix: rustup toolchain install {name} --profile minimal"))?;
    Ok(version()?.trim().to_string())
}

/// Adds rustup target `triple` to `toolchain` (else the current one) when missing.
pub fn ensure_target(toolchain: Option<&str>, triple: &str) -> Result<()> {
    let (mut list, mut add) = (Command::new("rustup"), Command::new("rustup"));
    list.args(["target", "list", "--installed"]);
    add.args(["target", "add"]);
    if let Some(t) = toolchain {
        list.args(["--toolchain", t]);
        add.args(["--toolchain", t]);
    }
    let installed = output(&mut list)
        .context("rustup not found: the builds need rustup (https://rustup.rs)")?;
    if !installed.lines().any(|l| l.trim() == triple) {
        add.arg(triple);
        let fix = show(&add);
        run(&mut add).with_context(|| format!("fix: {fix}"))?;
    }
    Ok(())
}

/// Python packages the tests and benchmarks need, installed into `target/venv`.
pub const PY_PACKAGES: &[&str] = &["numpy", "pillow"];

/// The versions installed: the tests compare with numpy, Pillow and
/// scikit-image bit for bit (Otsu's threshold, `convert('L')`), so CI on
/// a clean clone gets the versions they were checked against, not
/// whatever PyPI has that day. (A venv that already imports a package is
/// used as it is.)
const PY_PINS: &[(&str, &str)] = &[
    ("numpy", "2.4.6"),
    ("pillow", "13.0.0"),
    ("scikit-image", "0.26.0"),
];

/// Whether python3 can make a venv with pip (Debian's python3 without
/// python3-venv has no ensurepip).
pub fn venv_possible() -> bool {
    succeeds(Command::new("python3").args(["-c", "import ensurepip, venv"]))
}

/// Whether `c` runs and exits 0, its output dropped.
fn succeeds(c: &mut Command) -> bool {
    c.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The python of the venv `venv`, which is made (again: `--clear`) when
/// it has no python with a working pip: a venv made where ensurepip is
/// missing (Debian without python3-venv) has a python but no pip, and a
/// python upgraded or removed under it leaves a dangling link. `no_python`
/// is the error when there is no python3 to make it with.
pub fn ensure_venv(venv: &Path, no_python: &str) -> Result<PathBuf> {
    let py = venv.join("bin/python");
    if succeeds(Command::new(&py).args(["-m", "pip", "--version"])) {
        return Ok(py);
    }
    let sys = ["python3", "python"]
        .into_iter()
        .find(|p| have(p))
        .with_context(|| no_python.to_string())?;
    if venv.exists() {
        eprintln!(
            "xtask: {} has no working pip: making it again",
            venv.display()
        );
    }
    run(Command::new(sys).args(["-m", "venv", "--clear"]).arg(venv)).with_context(|| {
        format!(
            "could not create the venv {} (Debian: apt-get install python3-venv; the next \
             run makes it again)",
            venv.display()
        )
    })?;
    Ok(py)
}

/// Adds the rustup components `names` (rustfmt, clippy, rust-src) to the
/// current toolchain when missing; `why` says what needs them.
pub fn ensure_components(names: &[&str], why: &str) -> Result<()> {
    let installed = output(Command::new("rustup").args(["component", "list", "--installed"]))
        .with_context(|| format!("rustup not found: {why} need rustup (https://rustup.rs)"))?;
    let missing: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| {
            !installed
                .lines()
                .any(|l| l.trim() == *n || l.starts_with(&format!("{n}-")))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut add = Command::new("rustup");
    add.args(["component", "add"]).args(&missing);
    let fix = show(&add);
    run(&mut add).with_context(|| format!("fix: {fix} ({why})"))
}

/// The venv's python, created and filled with [`PY_PACKAGES`] (plus `extra`) when missing.
pub fn venv_python(extra: &[&str]) -> Result<PathBuf> {
    let venv = root().join("target/venv");
    let py = ensure_venv(
        &venv,
        "no python3 on PATH: install it (Debian: apt-get install python3 python3-venv)",
    )?;
    let mut want: Vec<&str> = PY_PACKAGES.to_vec();
    want.extend_from_slice(extra);
    let missing: Vec<&str> = want
        .iter()
        .copied()
        .filter(|m| {
            let module = match *m {
                "pillow" => "PIL",
                "scikit-image" => "skimage",
                other => other,
            };
            !Command::new(&py)
                .args(["-c", &format!("import {module}")])
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        })
        .collect();
    if !missing.is_empty() {
        let pinned: Vec<String> = missing
            .iter()
            .map(|m| {
                PY_PINS
                    .iter()
                    .find(|(name, _)| name == m)
                    .map_or(m.to_string(), |(name, v)| format!("{name}=={v}"))
            })
            .collect();
        let pip = |pkgs: &[String]| {
            run(Command::new(&py)
                .args(["-m", "pip", "install", "-q"])
                .args(pkgs))
        };
        if pip(&pinned).is_ok() {
            return Ok(py);
        }
        // (numpy 2.4 needs Python 3.11 or newer, say: the newest versions
        // this Python takes are better than no comparison at all)
        eprintln!(
            "xtask: pip could not install {pinned:?}; trying the newest versions this \
             Python takes instead"
        );
        pip(&missing.iter().map(|m| m.to_string()).collect::<Vec<_>>()).with_context(|| {
            format!(
                "pip could not install {missing:?}; install them by hand into {}",
                venv.display()
            )
        })?;
    }
    Ok(py)
}

/// Builds the two binaries (`profile`: "debug" or "release") and returns their directory.
///
/// With the whole workspace's dependency features (`--workspace`, the two
/// binaries picked out), as `cargo build --workspace` and the tests'
/// `bitmask_tests::bin` build them: the one build serves all three.
pub fn build_bins(release: bool) -> Result<PathBuf> {
    let mut c = cargo();
    c.args([
        "build",
        "--workspace",
        "--bin",
        "bitmask-send",
        "--bin",
        "bitmask-recv",
    ]);
    if release {
        c.arg("--release");
    }
    run(&mut c)?;
    Ok(target_dir()?.join(if release { "release" } else { "debug" }))
}

/// Cargo's target directory for this workspace (`CARGO_TARGET_DIR`,
/// `build.target-dir` or `<repo>/target`), as `cargo metadata` says.
pub fn target_dir() -> Result<PathBuf> {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    if let Some(d) = DIR.get() {
        return Ok(d.clone());
    }
    let json = output(cargo().args(["metadata", "--format-version", "1", "--no-deps"]))?;
    let v: serde_json::Value = serde_json::from_str(&json).context("cargo metadata's output")?;
    let d = PathBuf::from(
        v["target_directory"]
            .as_str()
            .context("no target_directory in cargo metadata's output")?,
    );
    Ok(DIR.get_or_init(|| d).clone())
}

/// Replaces (or appends) the `heading` section (`## ...`) of docs/BENCHMARKS.md
/// with `table`, leaving every other section alone.
pub fn write_bench_section(heading: &str, table: &str) -> Result<()> {
    let path = root().join("docs/BENCHMARKS.md");
    let old = std::fs::read_to_string(&path).unwrap_or_else(|_| "# Benchmarks\n".into());
    std::fs::write(&path, replace_section(&old, heading, table))?;
    eprintln!("xtask: wrote the `{heading}` section of {}", path.display());
    Ok(())
}

/// `old` with its `heading` section's body replaced by `table` (appended when absent).
fn replace_section(old: &str, heading: &str, table: &str) -> String {
    let body = format!("{heading}\n\n{table}");
    match old.find(&format!("\n{heading}\n")) {
        Some(i) => {
            let start = i + 1;
            let after = &old[start + heading.len()..];
            let end = after
                .find("\n## ")
                .map(|j| start + heading.len() + j + 1)
                .unwrap_or(old.len());
            let mut s = old[..start].to_string();
            s.push_str(&body);
            if end < old.len() {
                s.push('\n');
                s.push_str(&old[end..]);
            }
            s
        }
        None => format!("{}\n\n{body}", old.trim_end()),
    }
}

/// Scans the piped stderr of `child` for `listening on ADDR` and returns the
/// address with a thread that collects the rest of the log (joined when the
/// child has exited); each line is also printed with `echo` in front when
/// given. A child that does not say it within `timeout` is killed and its
/// log is the error.
pub fn wait_listening(
    child: &mut std::process::Child,
    what: &str,
    timeout: std::time::Duration,
    echo: Option<&'static str>,
) -> Result<(String, std::thread::JoinHandle<String>)> {
    use std::io::{BufRead, BufReader};
    let err = child.stderr.take().context("stderr not piped")?;
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let h = std::thread::spawn(move || {
        let mut log = String::new();
        let mut sent = false;
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if let Some(prefix) = echo {
                eprintln!("{prefix}{line}");
            }
            if !sent {
                if let Some(addr) = line.split("listening on ").nth(1) {
                    let addr = addr.split_whitespace().next().unwrap_or("").to_string();
                    let _ = tx.send(addr);
                    sent = true;
                }
            }
            log.push_str(&line);
            log.push('\n');
        }
        log
    });
    match rx.recv_timeout(timeout) {
        Ok(a) => Ok((a, h)),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            let log = h.join().unwrap_or_default();
            bail!("{what} did not log `listening on ADDR` within {timeout:?}; its log:\n{log}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::replace_section;

    #[test]
    fn bench_sections_are_replaced_in_place_or_appended() {
        let doc = "# B\n\n## A\n\nold a\n\n## C\n\nc\n";
        assert_eq!(
            replace_section(doc, "## A", "new a\n"),
            "# B\n\n## A\n\nnew a\n\n## C\n\nc\n"
        );
        assert_eq!(
            replace_section(doc, "## C", "new c\n"),
            "# B\n\n## A\n\nold a\n\n## C\n\nnew c\n"
        );
        assert_eq!(
            replace_section(doc, "## D", "d\n"),
            "# B\n\n## A\n\nold a\n\n## C\n\nc\n\n## D\n\nd\n"
        );
    }
}
