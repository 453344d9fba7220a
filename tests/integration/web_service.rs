//! A hierarchy mixing servers reached through their SUSDB and servers reached through their
//! administration web service (as WID servers are), against one lab serving both: planned online,
//! repaired, interrupted and resumed, verified. What each test checks is what the lab's state
//! file says the servers hold, and which transport each call came over.

use std::process::{Command, Stdio};

use serde_json::Value;

use crate::repair::{LabProcess, assert_all_repaired, calls, text};

/// The test hierarchy of `repair.rs` (same names, same replicas), with r1, r1a and r2a reached
/// through their web service and r2b giving both ways and choosing the web service.
pub(crate) const MIXED: &str = "\
version: 1
defaults:
  sql:
    auth: { method: sql, user: wsus_repair, password_env: WSUS_RESET_TEST_PW }
  api:
    port: 8530
    tls: false
    auth: { method: windows, user: 'CORP\\wsus_repair', password_env: WSUS_RESET_TEST_PW }
servers:
  - name: hq
    sql: { host: sql-hq.test.example }
  - name: r1
    upstream: hq
    api: { host: r1.test.example }
  - name: r1a
    upstream: r1
    mode: replica
    api: { host: r1a.test.example }
  - name: r2
    upstream: hq
    mode: replica
    sql: { host: sql-r2.test.example }
  - name: r2a
    upstream: r2
    mode: replica
    api: { host: r2a.test.example }
  - name: r2b
    upstream: r2
    transport: api
    sql: { host: sql-r2b.test.example }
    api: { host: r2b.test.example }
";

const API_SERVERS: &[&str] = &["r1", "r1a", "r2a", "r2b"];

fn mixed_lab(seed: &str, faults: &str, latency_ms: u64) -> LabProcess {
    LabProcess::start_extra(
        MIXED,
        seed,
        faults,
        latency_ms,
        &[
            "--api-listen",
            "127.0.0.1:0",
            "--api-reporter",
            "CORP\\reporter",
        ],
    )
}

/// Only the web service's operations on an API server, only procedures on a SQL server.
fn assert_each_server_used_its_own_transport(servers: &serde_json::Map<String, Value>) {
    for (name, server) in servers {
        for call in calls(server) {
            let over_api = call.starts_with("ExecuteSP");
            assert_eq!(
                over_api,
                API_SERVERS.contains(&name.as_str()),
                "{name} got {call} over the wrong transport"
            );
        }
    }
}

const API_REPLICA_CALLS: &[&str] = &[
    "ExecuteSPSetConfiguration",
    "ExecuteSPDeclineUpdate",
    "ExecuteSPDeployUpdate1",
    "ExecuteSPDeclineUpdate",
    "ExecuteSPSetConfiguration",
];

#[test]
fn a_mixed_hierarchy_is_planned_online_repaired_and_verified_over_both_transports() {
    let lab = mixed_lab("broken", "faults: []\n", 0);
    let plan = lab.run(&["plan", "hierarchy.yaml", "--online", "--out", "plan.json"]);
    assert_eq!(plan.status.code(), Some(0), "{}", text(&plan));
    let said = text(&plan);
    assert_eq!(
        said.matches("through its web service: BROKEN").count(),
        4,
        "{said}"
    );
    assert_eq!(
        said.matches("SQL Server 9.00.4035.00: BROKEN").count(),
        2,
        "{said}"
    );
    let before = lab.run(&["verify", "hierarchy.yaml"]);
    assert_eq!(before.status.code(), Some(1), "{}", text(&before));

    let out = lab.run(&["apply", "plan.json", "--yes", "--state-dir", "state"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let servers = lab.servers();
    assert_all_repaired(&servers);
    assert_each_server_used_its_own_transport(&servers);
    assert_eq!(calls(&servers["r1a"]), API_REPLICA_CALLS);
    // The replica switch echoed the whole row and wrote ReplicaMode false, then true.
    let switches: Vec<&Value> = servers["r2a"]["calls"]
        .as_array()
        .expect("calls")
        .iter()
        .filter(|c| c["procedure"] == "ExecuteSPSetConfiguration")
        .map(|c| &c["params"]["ReplicaMode"])
        .collect();
    assert_eq!(switches, [&Value::Bool(false), &Value::Bool(true)]);
    // The approval went on the latest revision, "not approved", All Computers, no deadline.
    let approve = servers["r1"]["calls"]
        .as_array()
        .expect("calls")
        .iter()
        .find(|c| c["procedure"] == "ExecuteSPDeployUpdate1")
        .expect("r1 was approved");
    assert_eq!(approve["params"]["deploymentAction"], 2, "{approve}");
    assert_eq!(approve["params"]["deadline"], "9999-12-31T23:59:59.9999999");
    assert_eq!(
        approve["params"]["targetGroupId"],
        "A0A08746-4DBE-4A37-9ADF-9E7652C0B421"
    );

    let verify = lab.run(&["verify", "hierarchy.yaml"]);
    assert_eq!(verify.status.code(), Some(0), "{}", text(&verify));
    // The NTLM password is in no output and no journal.
    for said in [&plan, &out, &before, &verify] {
        assert!(
            !text(said).contains(crate::repair::PASSWORD),
            "{}",
            text(said)
        );
    }
    for entry in std::fs::read_dir(lab.path("state/runs")).expect("journals") {
        let journal = std::fs::read(entry.expect("entry").path()).expect("read");
        assert!(!String::from_utf8_lossy(&journal).contains(crate::repair::PASSWORD));
    }
}

#[test]
fn a_mixed_run_killed_or_interrupted_is_finished_by_resume_with_every_replica_switched_back() {
    for (k, (signal, records)) in [("-KILL", 14usize), ("-INT", 14), ("-KILL", 30)]
        .into_iter()
        .enumerate()
    {
        let lab = mixed_lab("broken", "faults: []\n", 15);
        let mut apply = lab
            .command(&["apply", "hierarchy.yaml", "--yes", "--state-dir", "state"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("apply starts");
        crate::repair::wait_for_journal_records(&lab.path("state/runs"), records, &mut apply);
        let status = Command::new("kill")
            .args([signal, &apply.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
        let out = apply.wait_with_output().expect("apply ends");
        let servers = lab.servers();
        assert!(
            servers.values().any(|s| !calls(s).is_empty()),
            "case {k}: the signal came before any change: nothing was tested"
        );
        if signal == "-INT" {
            // Ctrl-C: steps in flight finish, every switched replica is switched back, exit 4.
            assert_eq!(out.status.code(), Some(4), "case {k}: {}", text(&out));
            assert!(text(&out).contains("--api-via"), "case {k}: {}", text(&out));
            for name in ["r1a", "r2", "r2a"] {
                assert_eq!(
                    servers[name]["replica_mode"], true,
                    "case {k}: {name} left autonomous"
                );
            }
        }
        let resumed = lab.run(&["resume", "--state-dir", "state"]);
        assert_eq!(
            resumed.status.code(),
            Some(0),
            "case {k}: {}",
            text(&resumed)
        );
        assert!(
            text(&resumed).contains("resuming run"),
            "case {k}: {}",
            text(&resumed)
        );
        let servers = lab.servers();
        assert_all_repaired(&servers);
        assert_each_server_used_its_own_transport(&servers);
        for (name, server) in &servers {
            let approvals = calls(server)
                .iter()
                .filter(|c| {
                    c.starts_with("spDeployUpdate") || c.starts_with("ExecuteSPDeployUpdate")
                })
                .count();
            assert_eq!(approvals, 1, "case {k}: {name} approved {approvals} times");
        }
        let verify = lab.run(&["verify", "hierarchy.yaml"]);
        assert_eq!(verify.status.code(), Some(0), "case {k}: {}", text(&verify));
    }
}

#[test]
fn lost_answers_and_deadlocks_over_the_web_service_are_retried_without_doing_anything_twice() {
    let faults = "\
faults:
  - { server: r1a, target: ExecuteSPDeclineUpdate, nth: 1, drop: after }
  - { server: r1a, target: ExecuteSPSetConfiguration, nth: 2, drop: before }
  - { server: r2a, target: ExecuteSPDeployUpdate1, nth: 1, error: 1205 }
";
    let lab = mixed_lab("broken", faults, 0);
    let out = lab.apply("state");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let servers = lab.servers();
    assert_all_repaired(&servers);
    assert_eq!(calls(&servers["r1a"]), API_REPLICA_CALLS);
    assert_eq!(calls(&servers["r2a"]), API_REPLICA_CALLS);
}

#[test]
fn a_user_outside_the_wsus_administrators_or_a_wrong_password_changes_nothing_and_says_so() {
    let lab = mixed_lab("broken", "faults: []\n", 0);
    let reporter = MIXED.replace(
        "api: { host: r1.test.example }",
        "api: { host: r1.test.example, auth: { method: windows, user: 'CORP\\reporter', password_env: WSUS_RESET_TEST_PW } }",
    );
    std::fs::write(lab.path("reporter.yaml"), reporter).expect("written");
    let out = lab.run(&["apply", "reporter.yaml", "--yes", "--state-dir", "state"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("CORP\\reporter is not a WSUS administrator on r1"),
        "{}",
        text(&out)
    );
    // r1 and its subtree untouched, the rest repaired.
    let servers = lab.servers();
    for name in ["r1", "r1a"] {
        assert!(calls(&servers[name]).is_empty(), "{name} was changed");
    }
    for name in ["hq", "r2", "r2a", "r2b"] {
        crate::repair::assert_repaired(&servers, name);
    }

    let mut wrong = lab.command(&["verify", "hierarchy.yaml", "--only", "r1"]);
    let out = wrong
        .env("WSUS_RESET_TEST_PW", "not-the-password")
        .output()
        .expect("runs");
    assert!(
        text(&out).contains("login failed for CORP\\wsus_repair (HTTP 401)"),
        "{}",
        text(&out)
    );
}

#[test]
fn https_web_services_are_validated_against_the_authority_given_and_plain_http_to_them_is_named() {
    // r1 and r2b over HTTPS (the default `tls`), the others over plain HTTP, as each site is bound.
    let topology = MIXED
        .replace(
            "api: { host: r1.test.example }",
            "api: { host: r1.test.example, tls: true, port: 8531 }",
        )
        .replace(
            "api: { host: r2b.test.example }",
            "api: { host: r2b.test.example, tls: true }",
        );
    let lab = LabProcess::start_extra(
        &topology,
        "broken",
        "faults: []\n",
        0,
        // Windows Server 2016 with SQL Server 2016 (TLS 1.2): this test is about whom to trust.
        &[
            "--api-listen",
            "127.0.0.1:0",
            "--tls-generate",
            "tls",
            "--windows",
            "2016",
            "--sql-version",
            "2016",
        ],
    );
    let impostor = crate::tls::impostor_ca(&lab, "r1.test.example");
    let verify = |ca: Option<&str>| {
        let mut args = vec!["verify", "hierarchy.yaml", "--only", "r1"];
        if let Some(ca) = ca {
            args.extend(["--connect-via-ca", ca]);
        }
        lab.command(&args).output().expect("runs")
    };
    // Without the lab's authority a loopback lab is reached in plaintext: the HTTPS-only site
    // says so, and the message says what to change.
    let plain = verify(None);
    assert!(
        text(&plain).contains("http://r1.test.example:8531 requires HTTPS (HTTP 403.4")
            && text(&plain).contains("give --connect-via-ca"),
        "{}",
        text(&plain)
    );
    let foreign = verify(Some(&impostor));
    assert!(
        text(&foreign).contains("certificate was rejected")
            && text(&foreign).contains("api.ca_file"),
        "{}",
        text(&foreign)
    );
    let out = lab
        .command(&[
            "apply",
            "hierarchy.yaml",
            "--yes",
            "--state-dir",
            "state",
            "--connect-via-ca",
            "tls/ca.pem",
        ])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let servers = lab.servers();
    assert_all_repaired(&servers);
    assert_each_server_used_its_own_transport(&servers);
}

#[test]
fn a_site_offering_only_negotiate_is_logged_in_to_with_ntlm_inside_it() {
    let lab = LabProcess::start_extra(
        MIXED,
        "broken",
        "faults: []\n",
        0,
        &["--api-listen", "127.0.0.1:0", "--api-negotiate-only"],
    );
    let out = lab.apply("state");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let servers = lab.servers();
    assert_all_repaired(&servers);
    assert_eq!(calls(&servers["r1a"]), API_REPLICA_CALLS);
}

/// A switch whose answer was lost, and after it the reads that could tell: the replica must not
/// be left autonomous. Faults on both transports: the switch takes effect and its answer is
/// dropped, then the next logins are dropped (issue 24).
#[test]
fn a_switch_that_took_effect_with_its_answer_lost_is_observed_and_undone_on_both_transports() {
    // The retries' logins fail, the observation after them succeeds: undone in the same run.
    let faults = "\
faults:
  - { server: r1a, target: ExecuteSPSetConfiguration, nth: 1, drop: after }
  - { server: r1a, target: GetCurrentUserRole, nth: 2, drop: before }
  - { server: r1a, target: GetCurrentUserRole, nth: 3, drop: before }
  - { server: r2, target: set-replica-mode, nth: 1, drop: after }
  - { server: r2, target: login, nth: 2, drop: before }
  - { server: r2, target: login, nth: 3, drop: before }
";
    let lab = mixed_lab("broken", faults, 0);
    let out = lab.apply("state");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("undone      r1a: restore-replica ran after the failure"),
        "{}",
        text(&out)
    );
    let journal = crate::repair::journal_text(&lab.path("state/runs"));
    assert_eq!(
        journal
            .matches(
                "\"result\":\"already-done\",\"note\":\"took effect, though its answer was lost\""
            )
            .count(),
        2,
        "{journal}"
    );
    let servers = lab.servers();
    for name in ["r1a", "r2"] {
        assert_eq!(
            servers[name]["replica_mode"],
            true,
            "{name} was left autonomous: {}",
            text(&out)
        );
    }
    // The next apply of the same state directory finishes them.
    let again = lab.apply("state");
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    assert_all_repaired(&lab.servers());

    // The observation fails too: the run is unfinished (exit 4), and resume finishes it.
    let faults = "\
faults:
  - { server: r1a, target: ExecuteSPSetConfiguration, nth: 1, drop: after }
  - { server: r1a, target: GetCurrentUserRole, nth: 2, drop: before }
  - { server: r1a, target: GetCurrentUserRole, nth: 3, drop: before }
  - { server: r1a, target: GetCurrentUserRole, nth: 4, drop: before }
  - { server: r1a, target: GetCurrentUserRole, nth: 5, drop: before }
  - { server: r1a, target: GetCurrentUserRole, nth: 6, drop: before }
";
    let lab = mixed_lab("broken", faults, 0);
    let out = lab.apply("state");
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(
        text(&out).contains("the run is unfinished: r1a not switched back yet"),
        "{}",
        text(&out)
    );
    let resumed = lab.run(&["resume", "--state-dir", "state"]);
    assert_eq!(resumed.status.code(), Some(0), "{}", text(&resumed));
    let servers = lab.servers();
    assert_all_repaired(&servers);
    let verify = lab.run(&["verify", "hierarchy.yaml"]);
    assert_eq!(verify.status.code(), Some(0), "{}", text(&verify));
}

/// An apply killed after r1a's first decline; an administrator then puts r1a back in replica
/// mode; `resume` must not send it an approval, whatever the journal says of its switch:
/// `ExecuteSPDeployUpdate1` has no failIfReplica, so the mode is read first (issue 24).
#[test]
fn resume_reads_a_servers_mode_before_approving_whatever_the_journal_says() {
    let lab = mixed_lab("broken", "faults: []\n", 300);
    let runs = lab.path("state/runs");
    let journal = || crate::repair::journal_text(&runs);
    let declined = "\"server\":\"r1a\",\"step\":2,\"name\":\"decline\",\"result\":\"done\"";
    let mut apply = lab
        .command(&[
            "apply",
            "hierarchy.yaml",
            "--yes",
            "--state-dir",
            "state",
            "--only",
            "r1a",
            "--allow-partial",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("apply starts");
    for _ in 0..20_000 {
        if journal().contains(declined) || matches!(apply.try_wait(), Ok(Some(_))) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let _ = apply.kill();
    let _ = apply.wait();
    assert!(journal().contains(declined), "{}", journal());
    assert_eq!(
        calls(&lab.servers()["r1a"]),
        ["ExecuteSPSetConfiguration", "ExecuteSPDeclineUpdate"],
        "the kill did not land between the decline and the approval"
    );

    // The administrator's change: r1a is a replica again.
    // (A lab writes its state only after a change, and none comes now; SIGKILL writes nothing.)
    let state = lab.path("lab-state.json");
    let mut held: Value =
        serde_json::from_str(&std::fs::read_to_string(&state).expect("state")).expect("JSON");
    held["servers"]["r1a"]["replica_mode"] = Value::Bool(true);
    std::fs::write(&state, held.to_string()).expect("state written");
    let lab = lab.kill_and_restart_with(0);
    assert_eq!(lab.servers()["r1a"]["replica_mode"], true);

    let resumed = lab.run(&["resume", "--state-dir", "state"]);
    assert!(
        text(&resumed).contains("r1a is in replica mode: no approval is sent to a replica"),
        "{}",
        text(&resumed)
    );
    let servers = lab.servers();
    let sent: Vec<&str> = servers["r1a"]["calls"]
        .as_array()
        .expect("calls")
        .iter()
        .filter_map(|c| c["procedure"].as_str())
        .collect();
    assert!(
        !sent.contains(&"ExecuteSPDeployUpdate1"),
        "an approval was sent to a replica: {sent:?}"
    );
    assert_eq!(servers["r1a"]["replica_mode"], true);
}

/// A hierarchy whose top is reached through its web service takes its lock on the first server
/// below reached through SQL: a second operator's run (its own state directory) is refused
/// while the first holds it (issue 24: two runs changed the same servers in 7 of 14 rounds).
#[test]
fn a_tree_under_a_web_service_top_is_locked_on_its_first_sql_server() {
    let topology = MIXED.replace(
        "  - name: hq\n    sql: { host: sql-hq.test.example }\n",
        "  - name: hq\n    api: { host: hq.test.example }\n",
    );
    let lab = LabProcess::start_extra(
        &topology,
        "broken",
        "faults: []\n",
        100,
        &["--api-listen", "127.0.0.1:0"],
    );
    let plan = lab.run(&["plan", "hierarchy.yaml"]);
    assert!(
        text(&plan).contains(
            "hq: reached through its web service, which has no lock; sp_getapplock on r2, the first server of its tree reached through SQL"
        ),
        "{}",
        text(&plan)
    );
    let mut first = lab
        .command(&["apply", "hierarchy.yaml", "--yes", "--state-dir", "a"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the first run starts");
    crate::repair::wait_for_journal_records(&lab.path("a/runs"), 2, &mut first);
    let second = lab.run(&["apply", "hierarchy.yaml", "--yes", "--state-dir", "b"]);
    assert_eq!(second.status.code(), Some(3), "{}", text(&second));
    assert!(
        text(&second).contains("holds the hierarchy lock on top server hq, taken on r2"),
        "{}",
        text(&second)
    );
    let first = first.wait_with_output().expect("the first run ends");
    assert_eq!(first.status.code(), Some(0), "{}", text(&first));
    assert!(
        text(&first).contains("its tree's lock is taken on r2"),
        "{}",
        text(&first)
    );
    assert_all_repaired(&lab.servers());
}
