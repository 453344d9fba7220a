//! The offline commands as an operator uses them: validate, graph, plan.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

const CONTOSO: &str = "examples/contoso.yaml";

/// Runs the binary from the workspace root, so paths in messages are stable.
fn wsus_reset(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wsus-reset"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("RUST_LOG")
        .output()
        .expect("the wsus-reset binary runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).expect("stdout is UTF-8")
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).expect("stderr is UTF-8")
}

#[test]
fn validate_summarizes_a_good_file() {
    let out = wsus_reset(&["validate", CONTOSO]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "ok: 13 servers, 4 levels, 8 replicas, 1 top servers\n"
    );
}

/// Each `tests/fixtures/invalid/*.yaml` is refused with exit 2 and exactly the messages in its
/// snapshot: position, field path, caret and fix for every mistake in the file.
#[test]
fn invalid_files_are_refused_with_every_error_located() {
    insta::glob!(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"),
        "invalid/*.yaml",
        |path| {
            let relative = path
                .strip_prefix(env!("CARGO_MANIFEST_DIR"))
                .expect("fixture under the workspace")
                .to_str()
                .expect("UTF-8 path");
            let out = wsus_reset(&["validate", relative]);
            assert_eq!(out.status.code(), Some(2), "{relative} must be refused");
            assert!(stdout(&out).is_empty());
            insta::assert_snapshot!(stderr(&out));
        }
    );
}

#[test]
fn an_inline_password_is_never_echoed() {
    let out = wsus_reset(&["validate", "tests/fixtures/invalid/inline-password.yaml"]);
    let text = stderr(&out);
    assert!(text.contains("inline passwords are refused"), "{text}");
    assert!(!text.contains("Winter2008"), "the password leaked: {text}");
}

#[test]
fn a_password_under_a_misspelt_key_or_in_place_of_a_variable_name_is_never_echoed() {
    let out = wsus_reset(&["validate", "tests/fixtures/invalid/secret-misplaced.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    let text = stderr(&out);
    assert!(text.contains("unknown field `pasword`"), "{text}");
    assert!(
        text.contains("the value of `password_env` is not an environment variable name"),
        "{text}"
    );
    for secret in ["Winter2008", "Summer", "2009"] {
        assert!(!text.contains(secret), "the password leaked: {text}");
    }
}

#[test]
fn a_huge_name_gives_a_short_error() {
    let dir = tempfile::tempdir().expect("scratch");
    let name = "x".repeat(5_000_000);
    let path = dir.path().join("huge.yaml");
    std::fs::write(
        &path,
        format!(
            "version: 1\nservers:\n  - name: a\n    upstream: {name}\n    sql: {{ host: h }}\n"
        ),
    )
    .expect("written");
    let out = wsus_reset(&["validate", path.to_str().expect("UTF-8")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        out.stderr.len() < 4_000,
        "{} bytes of stderr",
        out.stderr.len()
    );
    assert!(
        stderr(&out).contains("(5000000 characters)"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_path_that_is_not_a_regular_file_is_refused_at_once() {
    for (path, kind) in [
        ("/dev/zero", "a device, pipe or socket"),
        ("tests", "a directory"),
    ] {
        let out = wsus_reset(&["validate", path]);
        assert_eq!(out.status.code(), Some(2), "{path}");
        assert!(
            stderr(&out).contains(&format!("is not a regular file ({kind})")),
            "{}",
            stderr(&out)
        );
    }
    let dir = tempfile::tempdir().expect("scratch");
    let fifo = dir.path().join("fifo.yaml");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo runs");
    assert!(made.success());
    let out = wsus_reset(&["validate", fifo.to_str().expect("UTF-8")]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a FIFO is refused without waiting for a writer"
    );
}

#[test]
fn a_missing_file_is_bad_input() {
    let out = wsus_reset(&["validate", "no/such/file.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("cannot read topology file no/such/file.yaml"));
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(wsus_reset(&["validate"]).status.code(), Some(2));
    assert_eq!(wsus_reset(&["frobnicate"]).status.code(), Some(2));
    let out = wsus_reset(&["graph", CONTOSO, "--format", "png"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("tree, dot, mermaid"),
        "{}",
        stderr(&out)
    );
    // A named pipe is Windows's; here the lab says what to use instead, and does not start.
    let out = wsus_reset(&["lab", CONTOSO, "--listen-pipe", r"\\.\pipe\sql\query"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("only on Windows"), "{}", stderr(&out));
    let out = wsus_reset(&[
        "lab",
        CONTOSO,
        "--listen-pipe",
        "p",
        "--tls-generate",
        "tls",
    ]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a pipe is plaintext: no certificate"
    );
}

#[test]
fn graph_tree_marks_replicas() {
    let out = wsus_reset(&["graph", CONTOSO]);
    assert_eq!(out.status.code(), Some(0));
    insta::assert_snapshot!(stdout(&out));
}

#[test]
fn graph_mermaid() {
    let out = wsus_reset(&["graph", CONTOSO, "--format", "mermaid"]);
    assert_eq!(out.status.code(), Some(0));
    insta::assert_snapshot!(stdout(&out));
}

/// The DOT output is accepted by Graphviz itself (installed by the README's test command).
#[test]
fn graph_dot_is_valid_graphviz() {
    let out = wsus_reset(&["graph", CONTOSO, "--format", "dot"]);
    assert_eq!(out.status.code(), Some(0));
    let dot = stdout(&out);
    insta::assert_snapshot!(dot);
    let mut child = Command::new("dot")
        .args(["-Tsvg", "-o", "/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("Graphviz `dot` is installed (run the README's test command)");
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(dot.as_bytes())
        .expect("write to dot");
    let result = child.wait_with_output().expect("dot finishes");
    assert!(
        result.status.success(),
        "dot rejected the graph: {}",
        String::from_utf8_lossy(&result.stderr)
    );
}

fn plan_json(args: &[&str]) -> Value {
    let out = wsus_reset(args);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    serde_json::from_str(&stdout(&out)).expect("the plan is JSON")
}

fn names(plan: &Value) -> Vec<&str> {
    plan["servers"]
        .as_array()
        .expect("servers")
        .iter()
        .map(|s| s["name"].as_str().expect("name"))
        .collect()
}

#[test]
fn plan_json_lists_servers_top_down_with_their_steps() {
    let plan = plan_json(&["plan", CONTOSO, "--format", "json"]);
    assert_eq!(plan["plan_version"], 1);
    // The absolute path, so that `apply plan.json` works from any directory.
    let expected = std::fs::canonicalize(Path::new(env!("CARGO_MANIFEST_DIR")).join(CONTOSO))
        .expect("the example exists");
    assert_eq!(plan["topology"], expected.display().to_string());
    assert_eq!(plan["update"], "D359F493-0AAD-43FA-AF5C-6763326CD98F");
    let bytes = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join(CONTOSO)).unwrap();
    assert_eq!(plan["fingerprint"], topology::fingerprint(&bytes));

    let servers = plan["servers"].as_array().unwrap();
    assert_eq!(servers.len(), 13);
    // Every server after its upstream; depth never decreases (ties by depth, then name).
    for (i, s) in servers.iter().enumerate() {
        if let Some(up) = s["upstream"].as_str() {
            let at = servers.iter().position(|o| o["name"] == up).unwrap();
            assert!(at < i, "{} planned before its upstream {up}", s["name"]);
        }
    }
    let depths: Vec<u64> = servers
        .iter()
        .map(|s| s["depth"].as_u64().unwrap())
        .collect();
    assert!(depths.windows(2).all(|w| w[0] <= w[1]), "{depths:?}");

    let hq = &servers[0];
    assert_eq!(hq["name"], "wsus-hq");
    assert_eq!(hq["upstream"], Value::Null);
    assert_eq!(
        hq["steps"],
        serde_json::json!(["probe", "decline", "approve", "decline", "verify"])
    );
    let apac = servers.iter().find(|s| s["name"] == "wsus-apac").unwrap();
    assert_eq!(apac["mode"], "replica");
    assert_eq!(
        apac["steps"],
        serde_json::json!([
            "probe",
            "switch-to-autonomous",
            "decline",
            "approve",
            "decline",
            "restore-replica",
            "verify"
        ])
    );
}

#[test]
fn plan_out_writes_the_json_plan_to_a_file() {
    let dir = std::env::temp_dir().join(format!("wsus-reset-plan-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("plan.json");
    let out = wsus_reset(&["plan", CONTOSO, "--out", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("Plan for examples/contoso.yaml"));
    let written: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(written, plan_json(&["plan", CONTOSO, "--format", "json"]));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn plan_text_shows_every_server_in_order() {
    let out = wsus_reset(&["plan", CONTOSO]);
    assert_eq!(out.status.code(), Some(0));
    insta::assert_snapshot!(stdout(&out));
}

#[test]
fn plan_markdown_is_a_review_document() {
    let out = wsus_reset(&["plan", CONTOSO, "--format", "markdown"]);
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    for needle in [
        "# KB 954960 repair plan",
        "D359F493-0AAD-43FA-AF5C-6763326CD98F",
        "Office 2003 Service Pack 1",
        "### Level 0",
        "### Level 3",
        "| `approve` | spDeployUpdate @actionID = 2",
        "## How a failure is contained and undone",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
}

#[test]
fn only_selects_one_server_and_with_downstream_adds_its_subtree() {
    let plan = plan_json(&["plan", CONTOSO, "--format", "json", "--only", "wsus-hq"]);
    assert_eq!(names(&plan), ["wsus-hq"]);

    let plan = plan_json(&[
        "plan",
        CONTOSO,
        "--format",
        "json",
        "--only",
        "WSUS-EMEA",
        "--only",
        "wsus-hq",
        "--with-downstream",
    ]);
    assert_eq!(names(&plan).len(), 13, "wsus-hq's subtree is everything");

    let plan = plan_json(&[
        "plan",
        CONTOSO,
        "--format",
        "json",
        "--only",
        "wsus-oslo",
        "--with-downstream",
        "--allow-partial",
    ]);
    assert_eq!(names(&plan), ["wsus-oslo", "wsus-bergen"]);
    assert_eq!(plan["servers"][0]["upstream_not_selected"], true);
    assert_eq!(plan["servers"][1].get("upstream_not_selected"), None);
}

#[test]
fn selecting_a_server_without_its_upstream_is_refused_unless_allowed() {
    let out = wsus_reset(&["plan", CONTOSO, "--only", "wsus-lyon"]);
    assert_eq!(out.status.code(), Some(2));
    let text = stderr(&out);
    assert!(text.contains("wsus-lyon (upstream wsus-paris)"), "{text}");
    assert!(text.contains("--allow-partial"), "{text}");

    let out = wsus_reset(&["plan", CONTOSO, "--only", "wsus-lyon", "--allow-partial"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        stdout(&out).contains("WARNING: THE TOP-DOWN ORDER IS NOT GUARANTEED"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn an_unknown_server_name_suggests_the_closest() {
    let out = wsus_reset(&["plan", CONTOSO, "--only", "wsus-londn"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out)
            .contains("no server named `wsus-londn` in the topology: did you mean `wsus-london`?"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn export_sql_writes_one_guarded_script_per_server_named_in_execution_order() {
    let dir = tempfile::tempdir().expect("scratch");
    let out_dir = dir.path().join("scripts");
    let out = wsus_reset(&[
        "export-sql",
        CONTOSO,
        "--out",
        out_dir.to_str().expect("UTF-8 path"),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let mut files: Vec<String> = std::fs::read_dir(&out_dir)
        .expect("scripts written")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let plan: Value =
        serde_json::from_str(&stdout(&wsus_reset(&["plan", CONTOSO, "--format", "json"])))
            .expect("JSON plan");
    let order: Vec<String> = plan["servers"]
        .as_array()
        .expect("servers")
        .iter()
        .enumerate()
        .map(|(i, s)| format!("{:04}-{}.sql", i + 1, s["name"].as_str().expect("name")))
        .collect();
    assert_eq!(files, order, "sorted file names give the execution order");
    for (file, server) in files
        .iter()
        .zip(plan["servers"].as_array().expect("servers"))
    {
        let text = std::fs::read_to_string(out_dir.join(file)).expect("script");
        let machine = server["name"].as_str().expect("name").to_ascii_uppercase();
        assert!(
            text.contains(&format!("SET @expectedMachine = N'{machine}';")),
            "{file} is not guarded against the wrong machine"
        );
        assert_eq!(
            susdb::sql2005::violations(&text),
            Vec::<String>::new(),
            "{file} would not compile on SQL Server 2005 (SSEE)"
        );
        let replica = server["mode"] == "replica";
        assert_eq!(text.contains("SET ReplicaMode = 0"), replica, "{file}");
    }
}

#[test]
fn shell_completions_are_generated_and_bash_reads_them() {
    for shell in ["bash", "zsh", "fish", "powershell"] {
        let out = wsus_reset(&["completions", shell]);
        assert_eq!(out.status.code(), Some(0), "{shell}");
        assert!(
            stdout(&out).contains("rehearse"),
            "{shell}: every command is completed"
        );
    }
    let dir = tempfile::tempdir().expect("scratch");
    let script = dir.path().join("wsus-reset.bash");
    std::fs::write(&script, wsus_reset(&["completions", "bash"]).stdout).expect("written");
    let checked = std::process::Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .expect("bash runs");
    assert!(
        checked.status.success(),
        "{}",
        String::from_utf8_lossy(&checked.stderr)
    );
    // Sourced, it completes the commands.
    let completed = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {}; COMP_WORDS=(wsus-reset re); COMP_CWORD=1; _wsus__reset wsus-reset re wsus-reset; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            script.display()
        ))
        .output()
        .expect("bash runs");
    let words = String::from_utf8_lossy(&completed.stdout);
    assert!(
        words.contains("rehearse") && words.contains("resume"),
        "{words}"
    );
}

#[test]
fn the_manual_page_renders_with_man() {
    let dir = tempfile::tempdir().expect("scratch");
    let out = wsus_reset(&["man", "--dir", dir.path().to_str().expect("UTF-8")]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    for page in [
        "wsus-reset.1",
        "wsus-reset-apply.1",
        "wsus-reset-rehearse.1",
    ] {
        let rendered = std::process::Command::new("man")
            .arg("-l")
            .arg(dir.path().join(page))
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "100")
            .output()
            .expect("man runs");
        let text = String::from_utf8_lossy(&rendered.stdout);
        assert!(
            rendered.status.success(),
            "{page}: {}",
            String::from_utf8_lossy(&rendered.stderr)
        );
        assert!(
            text.contains("NAME") && text.contains("SYNOPSIS"),
            "{page}: {text}"
        );
    }
    let apply = wsus_reset(&["man", "apply"]);
    assert!(
        stdout(&apply).contains("lock\\-check\\-ms"),
        "{}",
        stdout(&apply)
    );
}

#[test]
fn a_lab_authority_without_a_lab_address_is_refused_before_anything_is_sent() {
    let out = wsus_reset(&[
        "verify",
        "examples/contoso.yaml",
        "--connect-via-ca",
        "Cargo.toml",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("give it with --connect-via or --api-via"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Windows habits: a topology saved by PowerShell 5 (`>` or `Out-File`: UTF-16LE with a byte
/// order mark) with CRLF line ends and Windows paths (a password file on `C:`, an authority on a
/// UNC share, unquoted and single-quoted as YAML takes them) validates and plans exactly as the
/// same file in UTF-8 with LF does.
#[test]
fn a_topology_saved_by_powershell_with_windows_paths_plans_as_the_utf8_file_does() {
    let text = "version: 1\n\
        defaults:\n  sql:\n    encrypt: required\n    ca_file: '\\\\wsus-hq\\c$\\certs\\contoso-ca.pem'\n\
        \x20   auth: { method: sql, user: wsus_repair, password_file: C:\\secrets\\wsus.pw }\n\
        servers:\n  - name: wsus-hq\n    sql: { host: sql-hq.contoso.example }\n\
        \x20 - name: wsus-paris\n    upstream: wsus-hq\n    mode: replica\n\
        \x20   sql: { host: sql-paris.contoso.example }\n";
    let dir = tempfile::tempdir().expect("a temporary directory");
    let utf8 = dir.path().join("utf8.yaml");
    let powershell = dir.path().join("powershell.yaml");
    std::fs::write(&utf8, text).expect("written");
    let saved = crate::diagnose::utf16le_with_bom(&crate::diagnose::crlf(text));
    std::fs::write(&powershell, saved).expect("written");

    let plans: Vec<Value> = [&utf8, &powershell]
        .iter()
        .map(|path| {
            let path = path.to_str().expect("UTF-8 path");
            let out = wsus_reset(&["validate", path]);
            assert_eq!(out.status.code(), Some(0), "{path}: {}", stderr(&out));
            assert_eq!(
                stdout(&out),
                "ok: 2 servers, 2 levels, 1 replicas, 1 top servers\n"
            );
            plan_json(&["plan", path, "--format", "json"])["servers"].clone()
        })
        .collect();
    assert_eq!(plans[0], plans[1]);
    assert_eq!(
        names(&serde_json::json!({ "servers": plans[1] })),
        ["wsus-hq", "wsus-paris"]
    );
}

/// The tool's own text is ASCII (`->`, `...`), so that it reads right in cmd.exe and PowerShell
/// whatever the console's code page: PowerShell 5 decodes a program's redirected output with the
/// OEM code page, which turns UTF-8 arrows and ellipses into mojibake. (The tree's box drawing is
/// ASCII on Windows only; scripts/windows-check.sh checks it under Wine.)
#[test]
fn the_tools_own_text_is_ascii() {
    let runs: [&[&str]; 7] = [
        &["validate", CONTOSO],
        &["plan", CONTOSO],
        &["plan", CONTOSO, "--format", "markdown"],
        &["graph", CONTOSO, "--format", "dot"],
        &["graph", CONTOSO, "--format", "mermaid"],
        &["validate", "tests/fixtures/invalid/many-errors.yaml"],
        &["validate", "tests/fixtures/invalid/no-servers.yaml"],
    ];
    for args in runs {
        let out = wsus_reset(args);
        for (stream, bytes) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
            let text = String::from_utf8_lossy(bytes);
            let other: Vec<char> = text.chars().filter(|c| !c.is_ascii()).collect();
            assert!(other.is_empty(), "{args:?} {stream} has {other:?}:\n{text}");
        }
    }
}
