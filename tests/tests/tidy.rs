//! Tidy checks on the repository itself (in the spirit of rust-analyzer's):
//! the docs' links lead somewhere, the options the docs tell people to type
//! exist, and the tooling stays plain Rust.

use bitmask_tests::*;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

/// README.md and every Markdown file under docs/.
fn markdown_files() -> Vec<PathBuf> {
    let root = root();
    let mut v = vec![root.join("README.md")];
    let mut dirs = vec![root.join("docs")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "md") {
                v.push(p);
            }
        }
    }
    v.sort();
    v
}

/// Text outside fenced code blocks, with inline code spans removed.
fn prose(text: &str) -> String {
    let mut out = String::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            let mut inside = false;
            for part in line.split('`') {
                if !inside {
                    out.push_str(part);
                }
                inside = !inside;
            }
            out.push('\n');
        }
    }
    out
}

/// GitHub's anchor of a heading: lower case, punctuation dropped, blanks to `-`.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(text: &str) -> BTreeSet<String> {
    let mut fenced = false;
    let mut set = BTreeSet::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if !fenced && line.starts_with('#') {
            set.insert(slug(line.trim_start_matches('#')));
        }
    }
    set
}

/// The `](target)` parts of Markdown links in `text`.
fn link_targets(text: &str) -> Vec<String> {
    let mut v = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("](") {
        rest = &rest[i + 2..];
        if let Some(j) = rest.find(')') {
            v.push(rest[..j].to_string());
            rest = &rest[j..];
        }
    }
    v
}

#[test]
fn doc_links_lead_to_files_and_headings_that_exist() {
    let mut bad = Vec::new();
    let mut checked = 0;
    for md in markdown_files() {
        let text = std::fs::read_to_string(&md).unwrap();
        for target in link_targets(&prose(&text)) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue; // no network here
            }
            let (path, anchor) = match target.split_once('#') {
                Some((p, a)) => (p, Some(a)),
                None => (target.as_str(), None),
            };
            let file = if path.is_empty() {
                md.clone()
            } else {
                md.parent().unwrap().join(path)
            };
            checked += 1;
            if !file.exists() {
                bad.push(format!("{}: {target}: no such file", md.display()));
                continue;
            }
            if let Some(a) = anchor {
                let body = std::fs::read_to_string(&file).unwrap_or_default();
                if !anchors(&body).contains(a) {
                    bad.push(format!(
                        "{}: {target}: no heading with anchor #{a} in {}",
                        md.display(),
                        file.display()
                    ));
                }
            }
        }
    }
    assert!(
        checked > 10,
        "only {checked} links found: is the parser broken?"
    );
    assert!(bad.is_empty(), "broken doc links:\n{}", bad.join("\n"));
}

/// The long options a program's `--help` lists.
fn help_options(bin_name: &str) -> BTreeSet<String> {
    let out = run(Command::new(bin(bin_name)).arg("--help"));
    assert!(out.status.success(), "{bin_name} --help: {}", out.stderr);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut set = BTreeSet::new();
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with('-') {
            for w in t.split([' ', ',', '=', '<']) {
                if let Some(o) = w.strip_prefix("--") {
                    if !o.is_empty() {
                        set.insert(o.to_string());
                    }
                }
            }
        }
    }
    assert!(
        set.contains("help"),
        "{bin_name}: no options parsed from\n{text}"
    );
    set
}

/// `s` with quoted parts (an `--input-command` or `--exec` command line,
/// whose options are another program's) blanked out.
fn unquoted(s: &str) -> String {
    let mut quote = None;
    s.chars()
        .map(|c| match (quote, c) {
            (None, '\'' | '"') => {
                quote = Some(c);
                ' '
            }
            (Some(q), c) if c == q => {
                quote = None;
                ' '
            }
            (Some(_), _) => ' ',
            (None, c) => c,
        })
        .collect()
}

#[test]
fn options_in_doc_command_lines_exist() {
    // Every `bitmask-send ...` / `bitmask-recv ...` command line in the
    // docs (code blocks and inline code, continuation lines joined) uses
    // only options its --help lists.
    let known = [
        ("bitmask-send", help_options("bitmask-send")),
        ("bitmask-recv", help_options("bitmask-recv")),
    ];
    let mut bad = Vec::new();
    let mut checked = 0;
    for md in markdown_files()
        .into_iter()
        .chain([root().join("deploy.example.toml")])
    {
        let text = std::fs::read_to_string(&md).unwrap().replace("\\\n", " ");
        for line in text.lines() {
            // a command line may hold a pipe: judge each stage by its program
            for stage in line.split('|') {
                for (name, opts) in &known {
                    let Some(i) = stage.find(name) else { continue };
                    // the program name as a word (a path ending in it counts)
                    let mut after = &stage[i + name.len()..];
                    if !(after.is_empty() || after.starts_with(' ')) {
                        continue;
                    }
                    // up to the next program named on the line (prose may name both)
                    for (other, _) in &known {
                        if let Some(j) = after.find(other) {
                            after = &after[..j];
                        }
                    }
                    for w in unquoted(after).split(|c: char| c.is_whitespace() || c == '`') {
                        let w = w.trim_matches(|c: char| "\"',;:.)(".contains(c));
                        let Some(o) = w.strip_prefix("--") else {
                            continue;
                        };
                        let o = o.split('=').next().unwrap_or(o);
                        if o.is_empty() || !o.chars().all(|c| c.is_ascii_lowercase() || c == '-') {
                            continue;
                        }
                        checked += 1;
                        if !opts.contains(o) {
                            bad.push(format!(
                                "{}: {name} --{o}: not in its --help ({line})",
                                md.display()
                            ));
                        }
                    }
                }
            }
        }
    }
    assert!(
        checked > 20,
        "only {checked} options found in the docs: is the scan broken?"
    );
    assert!(
        bad.is_empty(),
        "options the docs use but the programs lack:\n{}",
        bad.join("\n")
    );
}

#[test]
fn tooling_is_rust_not_shell_scripts() {
    // xtask is plain Rust; the one shell file is the CI entry point, which
    // only calls `cargo xtask ci`.
    let out = run(Command::new("git")
        .args(["ls-files", "*.sh", "*.bash"])
        .current_dir(root()));
    if !out.status.success() {
        skip(&format!(
            "git ls-files failed (not a git checkout? a checkout another user owns needs `git \
             config --global --add safe.directory {}`): {}",
            root().display(),
            out.stderr.trim()
        ));
        return;
    }
    let files = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        files.trim().is_empty(),
        "shell scripts in the repo:\n{files}"
    );
    // nor build products committed by mistake (Python's byte code, once)
    let built = run(Command::new("git")
        .args(["ls-files", "*.pyc", "*/__pycache__/*", "*.o", "*.so"])
        .current_dir(root()));
    let built = String::from_utf8_lossy(&built.stdout).into_owned();
    assert!(
        built.trim().is_empty(),
        "build products in the repo:\n{built}"
    );
    let ci = std::fs::read_to_string(root().join(".ci/run")).expect(".ci/run");
    let commands: Vec<&str> = ci
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with("set "))
        .collect();
    // (exactly: not `cargo xtask ci || true`, nor with CI= emptied)
    let runs_ci = |l: &&str| *l == "exec cargo xtask ci" || *l == "cargo xtask ci";
    assert!(
        commands
            .iter()
            .all(|l| runs_ci(l) || *l == r#"cd "$(dirname "$0")/..""#)
            && commands.iter().filter(|l| runs_ci(l)).count() == 1,
        ".ci/run should only run `cargo xtask ci`: {commands:?}"
    );
}

/// The binaries write to stderr with `say!` (which ignores a closed
/// stderr), never `eprintln!`/`println!`, which panic there: a finished run
/// piped into `| head` would end as a crash (exit 101).
#[test]
fn binaries_do_not_print_with_macros_that_panic() {
    let mut found = Vec::new();
    let mut files = Vec::new();
    let mut dirs = vec![
        root().join("crates/sender/src"),
        root().join("crates/receiver/src"),
    ];
    while let Some(dir) = dirs.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                files.push(p);
            }
        }
    }
    assert!(files.len() > 10, "{files:?}");
    for p in files {
        // A submodule its parent declares for the tests only may print.
        let parent = p.parent().unwrap().with_extension("rs");
        let stem = p.file_stem().unwrap().to_str().unwrap();
        if std::fs::read_to_string(&parent)
            .is_ok_and(|t| t.contains(&format!("#[cfg(test)]\nmod {stem};")))
        {
            continue;
        }
        {
            let text = std::fs::read_to_string(&p).unwrap();
            // Unit tests at the end of a file may print.
            let code = text.split("#[cfg(test)]\nmod tests").next().unwrap_or("");
            for (i, line) in code.lines().enumerate() {
                let l = line.trim_start();
                if l.starts_with("//") {
                    continue;
                }
                // also matches eprint!( and eprintln!(
                if l.contains("print!(") || l.contains("println!(") {
                    found.push(format!("{}:{}: {}", p.display(), i + 1, l));
                }
            }
        }
    }
    assert!(found.is_empty(), "use say! instead:\n{}", found.join("\n"));
}

/// Every package of the workspace states the workspace's `rust-version`,
/// which `cargo xtask msrv` (part of `cargo xtask ci`) checks by building
/// with that Rust: a package without it would promise nothing, and one
/// with its own number would be checked against the wrong Rust.
#[test]
fn every_package_states_the_checked_rust_version() {
    let mut manifests = vec![
        root().join("xtask/Cargo.toml"),
        root().join("tests/Cargo.toml"),
    ];
    for e in std::fs::read_dir(root().join("crates")).expect("crates/") {
        let p = e.expect("crates/ entry").path().join("Cargo.toml");
        if p.is_file() {
            manifests.push(p);
        }
    }
    assert!(manifests.len() >= 7, "packages found: {manifests:?}");
    let root_toml = std::fs::read_to_string(root().join("Cargo.toml")).expect("Cargo.toml");
    assert!(
        root_toml
            .lines()
            .any(|l| l.trim().starts_with("rust-version = \"")),
        "Cargo.toml has no [workspace.package] rust-version"
    );
    let wrong: Vec<String> = manifests
        .iter()
        .filter(|p| {
            let text = std::fs::read_to_string(p).expect("manifest");
            !text
                .lines()
                .any(|l| l.trim() == "rust-version.workspace = true")
        })
        .map(|p| p.display().to_string())
        .collect();
    assert!(
        wrong.is_empty(),
        "without `rust-version.workspace = true`: {wrong:?}"
    );
}
