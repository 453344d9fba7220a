//! Discovering the hierarchy from the servers: `discover` from a partial file finds what the lab
//! serves, through either transport, and what it writes validates, plans and repairs; `diff`
//! names exactly what the file lacks, what is stale and what disagrees.

use serde_json::Value;

use crate::repair::{LabProcess, TOPOLOGY, assert_all_repaired, text};
use crate::web_service::MIXED;

/// `topology` with only its `defaults` and its top server `hq`.
fn only_the_top(topology: &str) -> String {
    let cut = topology.find("  - name: r1\n").expect("r1 follows hq");
    topology[..cut].to_string()
}

/// `diff --format json`'s differences as `kind server`, in its order.
fn differences(out: &std::process::Output) -> Vec<String> {
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    report["differences"]
        .as_array()
        .expect("differences")
        .iter()
        .map(|d| {
            format!(
                "{} {}",
                d["kind"].as_str().unwrap_or_default(),
                d["server"].as_str().unwrap_or_default()
            )
        })
        .collect()
}

/// Each server's upstream and mode as `name upstream mode`, sorted, from a topology file.
fn shape(lab: &LabProcess, file: &str) -> Vec<String> {
    let out = lab
        .direct(&["graph", file, "--format", "mermaid"])
        .output()
        .expect("graph runs");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let mut edges: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("-->"))
        .map(|l| l.trim().to_string())
        .collect();
    edges.sort();
    edges
}

#[test]
fn discover_from_the_top_alone_finds_every_server_over_sql_and_its_file_plans_and_repairs() {
    let lab = LabProcess::start_with(TOPOLOGY, "broken", "faults: []\n", 0);
    std::fs::write(lab.path("seed.yaml"), only_the_top(TOPOLOGY)).expect("seed");
    // Planning from the partial file says, in one line, that it lacks servers.
    let plan = lab.run(&["plan", "seed.yaml", "--online"]);
    assert_eq!(plan.status.code(), Some(0), "{}", text(&plan));
    assert!(
        text(&plan).contains(
            "note: 5 registered downstream server(s) are not in the topology: wsus-reset diff seed.yaml"
        ),
        "{}",
        text(&plan)
    );
    let out = lab.run(&["discover", "seed.yaml", "--out", "found.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("6 servers in 3 levels, 5 not in the seed"),
        "{}",
        text(&out)
    );
    let found = std::fs::read_to_string(lab.path("found.yaml")).expect("written");
    assert!(
        found.starts_with("# Discovered by wsus-reset discover on "),
        "{found}"
    );
    // The same tree as the file the lab serves: upstreams and modes.
    assert_eq!(shape(&lab, "found.yaml"), shape(&lab, "hierarchy.yaml"));
    let validate = lab
        .direct(&["validate", "found.yaml"])
        .output()
        .expect("runs");
    assert_eq!(
        String::from_utf8_lossy(&validate.stdout),
        "ok: 6 servers, 3 levels, 3 replicas, 1 top servers\n"
    );
    let apply = lab.run(&["apply", "found.yaml", "--yes", "--state-dir", "state"]);
    assert_eq!(apply.status.code(), Some(0), "{}", text(&apply));
    assert!(
        !text(&apply).contains("not in the topology"),
        "{}",
        text(&apply)
    );
    assert_all_repaired(&lab.servers());
    // A second discovery writes nothing over the first.
    let again = lab.run(&["discover", "seed.yaml", "--out", "found.yaml"]);
    assert_eq!(again.status.code(), Some(2), "{}", text(&again));
}

#[test]
fn discover_over_the_web_service_finds_wid_servers_the_sql_walk_cannot_read() {
    let lab = LabProcess::start_extra(
        MIXED,
        "broken",
        "faults: []\n",
        0,
        &["--api-listen", "127.0.0.1:0"],
    );
    std::fs::write(lab.path("seed.yaml"), only_the_top(MIXED)).expect("seed");
    // Through SQL, the servers the lab serves only through their web service (WID) cannot be
    // read, but are still written, from their upstream's table.
    let sql = lab.run(&["discover", "seed.yaml", "--out", "sql.yaml"]);
    assert_eq!(sql.status.code(), Some(1), "{}", text(&sql));
    let written = std::fs::read_to_string(lab.path("sql.yaml")).expect("written");
    assert!(written.contains("# UNREACHABLE at discovery"), "{written}");
    assert!(
        written
            .contains("- name: r1a.test.example\n    upstream: r1.test.example\n    mode: replica"),
        "{written}"
    );
    let api = lab.run(&[
        "discover",
        "seed.yaml",
        "--out",
        "api.yaml",
        "--transport",
        "api",
    ]);
    assert_eq!(api.status.code(), Some(0), "{}", text(&api));
    let validate = lab
        .direct(&["validate", "api.yaml"])
        .output()
        .expect("runs");
    assert_eq!(
        String::from_utf8_lossy(&validate.stdout),
        "ok: 6 servers, 3 levels, 3 replicas, 1 top servers\n"
    );
    let plan = lab.run(&["plan", "api.yaml", "--online"]);
    assert_eq!(plan.status.code(), Some(0), "{}", text(&plan));
    let apply = lab.run(&["apply", "api.yaml", "--yes", "--state-dir", "state"]);
    assert_eq!(apply.status.code(), Some(0), "{}", text(&apply));
    assert_all_repaired(&lab.servers());
}

#[test]
fn diff_names_exactly_the_missing_stale_unregistered_and_disagreeing_servers() {
    let exact = LabProcess::start_with(TOPOLOGY, "broken", "faults: []\n", 0);
    let agrees = exact.run(&["diff", "hierarchy.yaml"]);
    assert_eq!(agrees.status.code(), Some(0), "{}", text(&agrees));
    assert!(
        text(&agrees).contains("agrees with the servers"),
        "{}",
        text(&agrees)
    );
    // The lab's r2 also still registers `gone`, decommissioned long ago and never deleted.
    let lab = LabProcess::start_extra(
        TOPOLOGY,
        "broken",
        "faults: []\n",
        0,
        &["--stale", "gone@r2"],
    );
    // The operator's file: r2b forgotten, r1a written autonomous, r9 long gone.
    let file = TOPOLOGY
        .replace(
            "  - name: r2b\n    upstream: r2\n    sql: { host: sql-r2b.test.example }\n",
            "  - name: r9\n    upstream: r1\n    sql: { host: sql-r9.test.example }\n",
        )
        .replace(
            "  - name: r1a\n    upstream: r1\n    mode: replica\n",
            "  - name: r1a\n    upstream: r1\n",
        );
    std::fs::write(lab.path("operator.yaml"), file).expect("written");
    let out = lab.run(&["diff", "operator.yaml", "--format", "json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let mut found = differences(&out);
    found.sort();
    assert_eq!(
        found,
        [
            "disagrees r1a",
            "missing gone",
            "missing r2b",
            "stale gone",
            "unreachable gone",
            "unregistered r9",
        ],
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("mode: the topology says autonomous, the server says replica"),
        "{said}"
    );
    assert!(said.contains("would stay broken"), "{said}");
    // Read-only: nothing was changed anywhere.
    for (name, server) in lab.servers() {
        assert!(
            crate::repair::calls(&server).is_empty(),
            "{name} was changed"
        );
    }
}

/// A registered name is whatever a server recorded: one carrying terminal commands (an OSC
/// title, BEL, a clear-screen CSI) and a Markdown pipe reaches neither the terminal nor the table
/// as such, in `discover`'s table or `diff`'s text and Markdown (issue 24).
#[test]
fn hostile_registered_names_are_printed_escaped_in_discover_and_diff() {
    let hostile = "evil\u{1b}]0;pwned\u{7}\u{1b}[2J|x";
    let lab = LabProcess::start_extra(
        TOPOLOGY,
        "broken",
        "faults: []\n",
        0,
        &["--stale", &format!("{hostile}@r2")],
    );
    let discovered = lab.run(&["discover", "hierarchy.yaml", "--out", "found.yaml"]);
    let diff_text = lab.run(&["diff", "hierarchy.yaml"]);
    let diff_markdown = lab.run(&["diff", "hierarchy.yaml", "--format", "markdown"]);
    for (what, out) in [
        ("discover", &discovered),
        ("diff", &diff_text),
        ("diff --format markdown", &diff_markdown),
    ] {
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            said.contains("evil"),
            "{what} does not name the server: {}",
            text(out)
        );
        assert!(
            !said.contains('\u{1b}') && !said.contains('\u{7}'),
            "{what} printed a terminal command: {said:?}"
        );
        assert!(said.contains("\\u{1b}]0;pwned\\u{7}"), "{what}: {said:?}");
    }
    let markdown = String::from_utf8_lossy(&diff_markdown.stdout);
    assert!(markdown.contains("[2J\\|x"), "{markdown}");
}

/// A seed saved by PowerShell 5 (`>` or `Out-File`: UTF-16LE with a byte order mark, CRLF) is
/// read as `validate` reads it, and what `discover` writes validates and holds every server
/// (issue 24: it was refused as not UTF-8).
#[test]
fn discover_and_diff_read_a_seed_saved_as_utf16_by_powershell() {
    let lab = LabProcess::start_with(TOPOLOGY, "broken", "faults: []\n", 0);
    let bytes = crate::diagnose::utf16le_with_bom(&crate::diagnose::crlf(&only_the_top(TOPOLOGY)));
    std::fs::write(lab.path("seed.yaml"), bytes).expect("seed");
    let out = lab.run(&["discover", "seed.yaml", "--out", "found.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(shape(&lab, "found.yaml").len(), 5, "{}", text(&out));
    let diff = lab.run(&["diff", "seed.yaml"]);
    assert_eq!(diff.status.code(), Some(1), "{}", text(&diff));
    assert!(text(&diff).contains("MISSING"), "{}", text(&diff));
}

/// `plan --online` counts the registered servers the file lacks from each top server's table; a
/// table that cannot be read is said, not counted as empty (issue 24: the note was dropped).
/// And the lab holds no registered name a real table could not: AccountName is nvarchar(255).
#[test]
fn an_unreadable_downstream_table_is_said_and_the_lab_refuses_names_no_table_holds() {
    let faults = "faults:\n  - { server: hq, target: downstream-servers, error: 1205 }\n";
    let lab = LabProcess::start_extra(TOPOLOGY, "broken", faults, 0, &["--stale", "gone@r2"]);
    let plan = lab.run(&["plan", "hierarchy.yaml", "--online"]);
    assert!(
        text(&plan).contains("the downstream-server table of top server hq could not be read"),
        "{}",
        text(&plan)
    );
    let long = "a".repeat(256);
    let refused = lab
        .direct(&["lab", "hierarchy.yaml", "--stale", &format!("{long}@hq")])
        .output()
        .expect("runs");
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
    assert!(
        text(&refused).contains("a registered name holds at most 255 characters"),
        "{}",
        text(&refused)
    );
}

/// A stale second registration of a live server (`r2b.` beside `r2b`, an old entry never
/// deleted) is reported as itself, and the live server is not called stale (issue 24: the stale
/// entry was merged into the live one and reported STALE).
#[test]
fn a_second_registration_of_a_live_server_is_reported_as_itself() {
    let lab = LabProcess::start_extra(
        TOPOLOGY,
        "broken",
        "faults: []\n",
        0,
        &["--stale", "r2b.@r2"],
    );
    let out = lab.run(&["diff", "hierarchy.yaml", "--format", "json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let found = differences(&out);
    assert_eq!(
        found,
        ["stale r2b."],
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("a second registration of r2b in r2's table"),
        "{said}"
    );
}
