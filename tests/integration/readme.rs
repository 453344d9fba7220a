//! The README's examples, run: every `console` block's commands with their shown output, and
//! every `wsus-reset` command of its `sh` blocks, so the README cannot drift from the tool.
//!
//! They run in a scratch directory holding the repository's `examples/` and `tests/fixtures/`,
//! with `hierarchy.yaml` a copy of the example hierarchy, `HOME` there too, and `wsus-reset` on
//! `PATH`. Commands of `sh` blocks that talk to servers (`plan --online`, `apply`, `resume`,
//! `verify`, `diagnose --topology`) without a `--connect-via` of their own are sent to a lab
//! serving the example hierarchy (`--connect-via` added): production hosts are not reachable
//! here. `cargo run --release --` is `wsus-reset`; other `cargo` lines and `bash scripts/test.sh`
//! (this very suite) are not run. A trailing `# exit N` gives the expected exit code (default 0).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

const README: &str = include_str!("../../README.md");
const LAB_PASSWORD: &str = "lab-only-password";

struct Block {
    lang: String,
    line: usize,
    lines: Vec<String>,
}

fn blocks() -> Vec<Block> {
    let mut out = Vec::new();
    let mut current: Option<Block> = None;
    for (i, line) in README.lines().enumerate() {
        match (&mut current, line.strip_prefix("```")) {
            (None, Some(lang)) => {
                current = Some(Block {
                    lang: lang.trim().to_string(),
                    line: i + 1,
                    lines: Vec::new(),
                });
            }
            (Some(_), Some(_)) => out.extend(current.take()),
            (Some(block), None) => block.lines.push(line.to_string()),
            (None, None) => {}
        }
    }
    out
}

/// A scratch directory laid out as the README's commands expect.
fn scratch() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("scratch");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    copy_tree(&root.join("examples"), &dir.path().join("examples"));
    copy_tree(
        &root.join("tests/fixtures"),
        &dir.path().join("tests/fixtures"),
    );
    std::fs::copy(
        root.join("examples/contoso.yaml"),
        dir.path().join("hierarchy.yaml"),
    )
    .expect("hierarchy");
    // `hierarchy.yaml` names its password file relative to itself, as examples/contoso.yaml does.
    copy_tree(&root.join("examples/secrets"), &dir.path().join("secrets"));
    dir
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("dir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_wsus-reset"))
        .parent()
        .expect("bin dir")
        .to_path_buf()
}

fn shell(dir: &Path, script: &str) -> std::process::Output {
    let path = format!(
        "{}:{}",
        bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    Command::new("bash")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .env("PATH", path)
        .env("HOME", dir)
        .env("WSUS_SQL_PASSWORD", LAB_PASSWORD)
        .env("WSUS_ADMIN_PASSWORD", LAB_PASSWORD)
        .env("MANPAGER", "cat")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("bash runs")
}

/// The expected exit code from a trailing `# exit N`.
fn expected_exit(command: &str) -> i32 {
    command
        .rsplit_once("# exit ")
        .and_then(|(_, rest)| {
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

#[test]
fn every_console_block_prints_what_the_readme_shows() {
    let dir = scratch();
    let mut ran = 0;
    for block in blocks().iter().filter(|b| b.lang == "console") {
        let mut steps: Vec<(String, Vec<String>)> = Vec::new();
        for line in &block.lines {
            match line.strip_prefix("$ ") {
                Some(command) => steps.push((command.to_string(), Vec::new())),
                None => {
                    if let Some((_, expected)) = steps.last_mut() {
                        expected.push(line.clone());
                    }
                }
            }
        }
        for (command, expected) in steps {
            let out = shell(dir.path(), &format!("{{ {command}\n}} 2>&1"));
            let said = String::from_utf8_lossy(&out.stdout).into_owned();
            assert_eq!(
                out.status.code(),
                Some(expected_exit(&command)),
                "README line {}: `{command}`:\n{said}",
                block.line
            );
            // Every shown line, in order; `...` stands for lines left out.
            let mut rest = said.as_str();
            for line in expected.iter().filter(|l| l.trim() != "...") {
                match rest.find(line.as_str()) {
                    Some(at) => rest = &rest[at + line.len()..],
                    None => panic!(
                        "README line {}: `{command}` did not print `{line}` (in order); it printed:\n{said}",
                        block.line
                    ),
                }
            }
            ran += 1;
        }
    }
    assert!(ran >= 8, "only {ran} console commands found");
}

/// A lab serving the example hierarchy, for the commands that talk to servers.
struct Lab {
    child: Child,
    addr: String,
    /// Its web service, for the hierarchy's servers reached through `api`.
    api: String,
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn lab(dir: &Path) -> Lab {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wsus-reset"))
        .args([
            "lab",
            "hierarchy.yaml",
            "--listen",
            "127.0.0.1:0",
            "--api-listen",
            "127.0.0.1:0",
            "--windows-user",
            "CONTOSO\\svc-wsus-repair",
            "--windows-password-env",
            "WSUS_SQL_PASSWORD",
        ])
        .env("WSUS_SQL_PASSWORD", LAB_PASSWORD)
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the lab starts");
    let (addr, api) = lab_addresses(&mut child, true);
    Lab {
        child,
        addr,
        api: api.expect("the lab's web service"),
    }
}

/// Where a `wsus-reset lab` child listens, and where its web service does when it has one.
fn lab_addresses(child: &mut Child, want_api: bool) -> (String, Option<String>) {
    use std::io::BufRead;
    let mut lines = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut addr = None;
    let mut api = None;
    // The lab prints `listening on`, then `api listening on` when asked for it, then nothing.
    while let Some(Ok(line)) = lines.next() {
        let word = |rest: &str| rest.split_whitespace().next().map(str::to_string);
        if let Some(rest) = line.strip_prefix("api listening on ") {
            api = word(rest);
        } else if let Some(rest) = line.strip_prefix("listening on ") {
            addr = word(rest);
        }
        if addr.is_some() && (api.is_some() || !want_api) {
            break;
        }
    }
    (addr.expect("the lab says where it listens"), api)
}

/// The `sh` blocks' lines as commands: continuations joined.
fn commands(block: &Block) -> Vec<String> {
    let mut out = Vec::new();
    let mut pending = String::new();
    for line in &block.lines {
        match line.trim_end().strip_suffix('\\') {
            Some(start) => {
                pending.push_str(start);
                pending.push(' ');
            }
            None => {
                pending.push_str(line);
                out.push(std::mem::take(&mut pending));
            }
        }
    }
    out
}

fn talks_to_servers(command: &str) -> bool {
    let words: Vec<&str> = command.split_whitespace().collect();
    let sub = words
        .iter()
        .skip_while(|w| **w != "wsus-reset")
        .nth(1)
        .copied()
        .unwrap_or_default();
    matches!(sub, "apply" | "resume" | "verify" | "discover" | "diff")
        || (sub == "plan" && words.contains(&"--online"))
        || (sub == "diagnose" && words.contains(&"--topology"))
}

#[test]
fn every_wsus_reset_command_of_the_sh_blocks_runs() {
    let mut ran = 0;
    for block in blocks().iter().filter(|b| b.lang == "sh") {
        // Each block is a session of its own, with its own scratch directory and lab.
        let dir = scratch();
        let lab = lab(dir.path());
        let mut background: Vec<Child> = Vec::new();
        let mut replace: Vec<(String, String)> = Vec::new();
        for command in commands(block) {
            let mut command = command.replace("cargo run --release --", "wsus-reset");
            let trimmed = command.trim();
            if trimmed.is_empty()
                || trimmed.starts_with("cargo ")
                || trimmed.starts_with("bash scripts/test.sh")
            {
                continue;
            }
            if let Some(rest) = trimmed.strip_prefix("export ") {
                // `export NAME=...`: the test environment already holds the lab's password.
                assert!(rest.contains('='), "README line {}: {command}", block.line);
                continue;
            }
            for (from, to) in &replace {
                command = command.replace(from.as_str(), to.as_str());
            }
            if let Some(started) = command.trim().strip_suffix('&') {
                // A lab the block starts itself: on a free port, then its address everywhere the
                // block names the documented one.
                let documented = started
                    .split_whitespace()
                    .skip_while(|w| *w != "--listen")
                    .nth(1)
                    .expect("--listen ADDR")
                    .to_string();
                let documented_api = started
                    .split_whitespace()
                    .skip_while(|w| *w != "--api-listen")
                    .nth(1)
                    .map(str::to_string);
                let mut child = Command::new("bash")
                    .arg("-c")
                    .arg(format!(
                        "exec {}",
                        started
                            .replace(documented.as_str(), "127.0.0.1:0")
                            .replace(documented_api.as_deref().unwrap_or("\0"), "127.0.0.1:0")
                    ))
                    .current_dir(dir.path())
                    .env(
                        "PATH",
                        format!(
                            "{}:{}",
                            bin_dir().display(),
                            std::env::var("PATH").unwrap_or_default()
                        ),
                    )
                    .env("WSUS_SQL_PASSWORD", LAB_PASSWORD)
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("the block's lab starts");
                let (addr, api) = lab_addresses(&mut child, documented_api.is_some());
                replace.push((documented, addr));
                if let (Some(documented_api), Some(api)) = (documented_api, api) {
                    replace.push((documented_api, api));
                }
                background.push(child);
                ran += 1;
                continue;
            }
            if talks_to_servers(&command) && !command.contains("--connect-via") {
                let (head, comment) = command
                    .split_once("  #")
                    .map_or((command.as_str(), ""), |(h, c)| (h, c));
                let (head, redirect) = head
                    .split_once(" > ")
                    .map_or((head.to_string(), String::new()), |(h, r)| {
                        (h.to_string(), format!(" > {r}"))
                    });
                command = format!(
                    "{} --connect-via {} --api-via {}{redirect}  #{comment}",
                    head.trim_end(),
                    lab.addr,
                    lab.api
                );
            }
            // A fresh directory has no topology yet: `discover` writes it.
            if let Some(written) = command
                .split_whitespace()
                .skip_while(|w| *w != "--out")
                .nth(1)
                .filter(|_| command.contains("wsus-reset discover"))
            {
                let _ = std::fs::remove_file(dir.path().join(written));
            }
            let out = shell(dir.path(), &command);
            assert_eq!(
                out.status.code(),
                Some(expected_exit(&command)),
                "README block at line {}: `{command}`:\n{}{}",
                block.line,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            ran += 1;
        }
        for mut child in background {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
    assert!(ran >= 15, "only {ran} sh commands found");
}
