//! The tool's central promise under the failures that used to break it: a replica left
//! autonomous always has a way back through the tool, and the exit code says so.

use crate::repair::{LabProcess, assert_all_repaired, calls, journal_text, text};

/// r2's restore never reaches the server: calls 2 to 7 of set-replica-mode are dropped (its
/// restore in place, three tries, then as a compensation, three more).
const R2_RESTORE_NEVER_ARRIVES: &str = "faults:\n  - { server: r2, target: set-replica-mode, nth: 2, drop: before }\n  - { server: r2, target: set-replica-mode, nth: 3, drop: before }\n  - { server: r2, target: set-replica-mode, nth: 4, drop: before }\n  - { server: r2, target: set-replica-mode, nth: 5, drop: before }\n  - { server: r2, target: set-replica-mode, nth: 6, drop: before }\n  - { server: r2, target: set-replica-mode, nth: 7, drop: before }\n";

#[test]
fn a_replica_whose_restore_fails_keeps_the_run_unfinished_until_resume_switches_it_back() {
    // r2's restore never reaches the server: calls 2 to 7 of set-replica-mode are dropped (its
    // restore in place, three tries, then as a compensation, three more).
    let faults = R2_RESTORE_NEVER_ARRIVES;
    let lab = LabProcess::start("broken", faults, 0);
    let out = lab.apply("state");
    assert_eq!(out.status.code(), Some(4), "unfinished: {}", text(&out));
    let hint = format!(
        "finish it with: wsus-reset resume --state-dir state --connect-via {}",
        lab.addr
    );
    assert!(text(&out).contains(&hint), "{}", text(&out));
    assert!(
        text(&out).contains("r2 not switched back yet"),
        "{}",
        text(&out)
    );
    assert_eq!(
        lab.servers()["r2"]["replica_mode"],
        false,
        "r2 left autonomous"
    );

    // A new apply is refused, with the same way out.
    let again = lab.apply("state");
    assert_eq!(again.status.code(), Some(4), "{}", text(&again));
    assert!(
        text(&again).contains("to finish it: wsus-reset resume --state-dir state --connect-via"),
        "{}",
        text(&again)
    );

    // The server is reachable again: resume switches it back, repairs it and its subtree.
    std::fs::write(lab.path("faults.yaml"), "faults: []\n").expect("faults cleared");
    let lab = lab.kill_and_restart();
    let resumed = lab.run(&["resume", "--state-dir", "state"]);
    assert_eq!(resumed.status.code(), Some(0), "{}", text(&resumed));
    let servers = lab.servers();
    assert_all_repaired(&servers);
    let r2 = calls(&servers["r2"]);
    assert_eq!(
        r2[..5],
        [
            "set-replica-mode=false",
            "spDeclineUpdate",
            "spDeployUpdate",
            "spDeclineUpdate",
            "set-replica-mode=true"
        ]
    );
    // Its decline, approve and decline were done: once switched back it is found repaired and
    // in its mode, and not repaired again (a new attempt starts from its probe).
    assert_eq!(r2.len(), 5, "repaired again after its switch back: {r2:?}");
    for below in ["r2a", "r2b"] {
        assert!(
            !calls(&servers[below]).is_empty(),
            "{below} was not repaired"
        );
    }
}

#[test]
fn plans_journals_and_password_files_do_not_depend_on_the_working_directory() {
    // The password in a file named relative to the topology file, not to where the tool runs.
    let topology = crate::repair::TOPOLOGY.replace(
        "password_env: WSUS_RESET_TEST_PW",
        "password_file: secrets/sql.pw",
    );
    let faults = R2_RESTORE_NEVER_ARRIVES;
    let lab = LabProcess::start_with(&topology, "broken", faults, 0);
    std::fs::create_dir_all(lab.path("secrets")).expect("dir");
    std::fs::write(lab.path("secrets/sql.pw"), crate::repair::PASSWORD).expect("written");
    for dir in ["elsewhere", "other"] {
        std::fs::create_dir_all(lab.path(dir)).expect("dir");
    }
    let plan = lab.run(&["plan", "hierarchy.yaml", "--online", "--out", "plan.json"]);
    assert_eq!(plan.status.code(), Some(0), "{}", text(&plan));

    // From another directory: the saved plan names its topology by absolute path.
    let applied = lab
        .command(&["apply", "../plan.json", "--yes", "--state-dir", "../state"])
        .current_dir(lab.path("elsewhere"))
        .output()
        .expect("runs");
    assert_eq!(
        applied.status.code(),
        Some(4),
        "r2 left unfinished: {}",
        text(&applied)
    );

    // From a third directory: the journal names its topology by absolute path too.
    std::fs::write(lab.path("faults.yaml"), "faults: []\n").expect("faults cleared");
    let lab = lab.kill_and_restart();
    let resumed = lab
        .command(&["resume", "--state-dir", "../state"])
        .current_dir(lab.path("other"))
        .output()
        .expect("runs");
    assert_eq!(resumed.status.code(), Some(0), "{}", text(&resumed));
    assert_all_repaired(&lab.servers());
}

/// The saved plan's JSON, edited by `edit`, written back.
fn edit_plan(lab: &LabProcess, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = lab.path("plan.json");
    let mut plan: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("plan")).expect("JSON");
    edit(&mut plan);
    std::fs::write(&path, serde_json::to_string_pretty(&plan).expect("JSON")).expect("written");
}

#[test]
fn a_saved_plan_is_the_contract_apply_does_what_it_says_or_nothing() {
    let lab = LabProcess::start("broken", "faults: []\n", 0);
    let make_plan = || {
        let plan = lab.run(&["plan", "hierarchy.yaml", "--online", "--out", "plan.json"]);
        assert_eq!(plan.status.code(), Some(0), "{}", text(&plan));
    };
    let apply = || lab.run(&["apply", "plan.json", "--yes", "--state-dir", "state"]);
    let untouched = lab.servers();

    // A server's steps cut down to its probe.
    make_plan();
    edit_plan(&lab, |plan| {
        plan["servers"][1]["steps"] = serde_json::json!(["probe"])
    });
    let out = apply();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains(
            "r1 steps: the plan says probe, now probe -> decline -> approve -> decline -> verify"
        ),
        "{}",
        text(&out)
    );
    // The observed state removed (which used to skip the drift check).
    make_plan();
    edit_plan(&lab, |plan| {
        for server in plan["servers"].as_array_mut().expect("servers") {
            server.as_object_mut().expect("server").remove("observed");
        }
    });
    let out = apply();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("hq observed state"), "{}", text(&out));
    // Another mode or update.
    make_plan();
    edit_plan(&lab, |plan| {
        plan["servers"][0]["mode"] = serde_json::json!("replica")
    });
    assert_eq!(apply().status.code(), Some(2));
    make_plan();
    edit_plan(&lab, |plan| {
        plan["update"] = serde_json::json!("00000000-0000-0000-0000-000000000000");
    });
    assert_eq!(apply().status.code(), Some(2));
    assert_eq!(lab.servers(), untouched, "nothing changed");

    // The plan as written is applied.
    make_plan();
    let out = apply();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_all_repaired(&lab.servers());
}

#[test]
fn a_plan_with_an_unreachable_server_exits_1_and_is_refused_by_apply() {
    let lab = LabProcess::start(
        "broken",
        "faults:\n  - { server: r2b, unreachable: true }\n",
        0,
    );
    let plan = lab.run(&["plan", "hierarchy.yaml", "--online", "--out", "plan.json"]);
    assert_eq!(plan.status.code(), Some(1), "{}", text(&plan));
    assert!(
        text(&plan).contains("could not be vouched for: r2b"),
        "{}",
        text(&plan)
    );
    let out = lab.run(&["apply", "plan.json", "--yes", "--state-dir", "state"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("the plan could not vouch for r2b"),
        "{}",
        text(&out)
    );
    assert!(
        lab.servers().values().all(|s| calls(s).is_empty()),
        "nothing changed"
    );
}

#[test]
fn a_missing_password_source_stops_every_command_before_any_server_is_touched() {
    let topology = crate::repair::TOPOLOGY.replacen(
        "    sql: { host: sql-r2a.test.example }",
        "    sql: { host: sql-r2a.test.example, auth: { method: sql, user: u2, password_file: missing.pw } }",
        1,
    );
    let lab = LabProcess::start_with(&topology, "broken", "faults: []\n", 0);
    for args in [
        &["apply", "hierarchy.yaml", "--yes", "--state-dir", "state"][..],
        &["plan", "hierarchy.yaml", "--online"][..],
        &["verify", "hierarchy.yaml"][..],
    ] {
        let out = lab
            .command(args)
            .env_remove("WSUS_RESET_TEST_PW")
            .output()
            .expect("runs");
        let said = text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {said}");
        assert!(
            said.contains("2 password source(s) cannot be read; nothing was sent"),
            "{said}"
        );
        assert!(
            said.contains("environment variable WSUS_RESET_TEST_PW, which is not set")
                && said.contains("servers: hq, r1, r2, r1a, r2b"),
            "{said}"
        );
        assert!(
            said.contains("`password_file` given for `u2`") && said.contains("(servers: r2a)"),
            "{said}"
        );
        assert!(
            !said.contains("UNREACHABLE"),
            "one line per problem, not per server: {said}"
        );
    }
    assert!(lab.servers().values().all(|s| calls(s).is_empty()));
}

#[test]
fn verify_is_read_only_takes_any_server_alone_and_says_what_it_sees() {
    let lab = LabProcess::start("broken", "faults: []\n", 0);
    let out = lab.run(&["verify", "hierarchy.yaml", "--only", "r2a"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains("r2a") && said.contains("not declined"),
        "{said}"
    );
    assert!(
        !said.contains("will be"),
        "verify describes, it does not promise: {said}"
    );
}

#[test]
fn a_dropped_lock_connection_is_noticed_and_the_lock_taken_again() {
    // The first check of hq's lock finds its connection gone (a firewall's idle timeout).
    let faults = "faults:\n  - { server: hq, target: applock-held, nth: 1, drop: before }\n";
    let lab = LabProcess::start("broken", faults, 10);
    let out = lab.run(&[
        "apply",
        "hierarchy.yaml",
        "--yes",
        "--state-dir",
        "state",
        "--lock-check-ms",
        "20",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("the hierarchy lock on top server hq was lost")
            && text(&out).contains("taken again at once"),
        "{}",
        text(&out)
    );
    assert_all_repaired(&lab.servers());
}

#[test]
fn a_lock_that_cannot_be_taken_again_stops_the_run_before_any_further_server() {
    // The check finds the connection gone, and the lock cannot be taken again.
    let faults = "faults:\n  - { server: hq, target: applock-held, nth: 1, drop: before }\n  - { server: hq, target: sp_getapplock, nth: 2, error: 50000 }\n";
    let lab = LabProcess::start("broken", faults, 30);
    let out = lab.run(&[
        "apply",
        "hierarchy.yaml",
        "--yes",
        "--state-dir",
        "state",
        "--lock-check-ms",
        "20",
    ]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(
        text(&out).contains("lost the hierarchy lock on top server hq"),
        "{}",
        text(&out)
    );
    let servers = lab.servers();
    let untouched = servers.values().filter(|s| calls(s).is_empty()).count();
    assert!(
        untouched > 0,
        "servers kept starting after the lock was lost"
    );
    for name in ["r1a", "r2", "r2a"] {
        assert_eq!(
            servers[name]["replica_mode"], true,
            "{name} left autonomous"
        );
    }
}

#[test]
fn redirected_output_has_no_escape_codes_and_debug_logs_show_the_tools_own_spans() {
    let lab = LabProcess::start("broken", "faults: []\n", 0);
    let out = lab
        .command(&[
            "apply",
            "hierarchy.yaml",
            "--yes",
            "--state-dir",
            "state",
            "--only",
            "hq",
        ])
        .env("RUST_LOG", "debug")
        .env_remove("USER")
        .env_remove("LOGNAME")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let said = text(&out);
    assert!(
        !said.contains('\u{1b}'),
        "an escape code in redirected output"
    );
    for span in ["run{", "server{", "step{"] {
        assert!(said.contains(span), "no `{span}` span in the debug log");
    }
    // The summary's note is a few words; the whole probe verdict is in --json and the journal.
    assert!(said.contains("repaired (was broken)"), "{said}");
    assert!(!said.contains("  probe: was BROKEN"), "{said}");
    // Without USER or LOGNAME, WSUS's audit column still names the OS account.
    let admin = lab.servers()["hq"]["calls"][0]["params"]["@adminName"]
        .as_str()
        .expect("admin name")
        .to_string();
    assert!(
        admin.starts_with("wsus-reset (") && !admin.contains("unknown"),
        "{admin}"
    );
}

#[test]
fn the_warnings_say_what_happens() {
    // hq cannot be reached for its lock: its tree is not changed, and the words say so.
    let lab = LabProcess::start(
        "broken",
        "faults:\n  - { server: hq, unreachable: true }\n",
        0,
    );
    let out = lab.apply("state");
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("cannot take the hierarchy lock on top server hq")
            && said.contains("no server of its tree will be changed"),
        "{said}"
    );
    assert!(
        lab.servers().values().all(|s| calls(s).is_empty()),
        "{said}"
    );
    // --connect-via to a loopback lab without its authority: the TLS the servers ask for is not
    // used, and one line says so.
    assert_eq!(
        said.matches("are reached in plaintext (a lab on loopback)")
            .count(),
        1,
        "{said}"
    );
}

/// A resume killed just after it began a finished server's new attempt: the next resume finds
/// the server repaired and in its mode, and changes nothing more on it (issue 24: it used to
/// decline, approve and decline again, switching a replica to autonomous once more).
#[test]
fn a_resume_killed_as_it_starts_a_servers_new_attempt_does_not_make_the_next_repair_it_again() {
    let faults = R2_RESTORE_NEVER_ARRIVES;
    let lab = LabProcess::start("broken", faults, 0);
    let out = lab.apply("state");
    assert_eq!(out.status.code(), Some(4), "unfinished: {}", text(&out));
    let runs = lab.path("state/runs");
    let journal = || journal_text(&runs);
    // r2's new attempt begun by the resume: its `server-started` after the `resumed` record.
    let begun = |text: &str| {
        text.split("\"record\":\"resumed\"")
            .nth(1)
            .is_some_and(|after| after.contains("\"record\":\"server-started\",\"server\":\"r2\""))
    };

    // 300 ms per round trip: the resume is killed once it has begun r2's new attempt, long
    // before that attempt's probe answers.
    std::fs::write(lab.path("faults.yaml"), "faults: []\n").expect("faults cleared");
    let lab = lab.kill_and_restart_with(300);
    let mut resume = lab
        .command(&["resume", "--state-dir", "state"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("resume starts");
    for _ in 0..10_000 {
        if begun(&journal()) || matches!(resume.try_wait(), Ok(Some(_))) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let _ = resume.kill();
    let _ = resume.wait();
    let after_kill = journal();
    assert!(
        begun(&after_kill),
        "the resume never began r2's new attempt: {after_kill}"
    );
    let tail = after_kill
        .split("\"record\":\"server-started\",\"server\":\"r2\"")
        .last()
        .unwrap_or_default();
    assert!(
        !tail.contains("\"server\":\"r2\""),
        "the kill came after r2's new attempt did more: {after_kill}"
    );

    let resumed = lab.run(&["resume", "--state-dir", "state"]);
    assert_eq!(resumed.status.code(), Some(0), "{}", text(&resumed));
    let servers = lab.servers();
    assert_all_repaired(&servers);
    assert_eq!(
        calls(&servers["r2"]),
        [
            "set-replica-mode=false",
            "spDeclineUpdate",
            "spDeployUpdate",
            "spDeclineUpdate",
            "set-replica-mode=true"
        ],
        "r2 was repaired again"
    );
}

/// The lock is checked before each server's first change, not only every `--lock-check-ms`:
/// with the interval out of reach, a lock lost while the second server ran stops the run
/// before the third changes anything (issue 24: a run that lost its lock went on for 30 s).
#[test]
fn a_lost_lock_is_noticed_before_the_next_server_not_an_interval_later() {
    // The third check (the third server's) finds the lock's connection gone, and the lock
    // cannot be taken again.
    let faults = "faults:\n  - { server: hq, target: applock-held, nth: 3, drop: before }\n  - { server: hq, target: sp_getapplock, nth: 2, error: 50000 }\n";
    let lab = LabProcess::start("broken", faults, 5);
    let out = lab.run(&[
        "apply",
        "hierarchy.yaml",
        "--yes",
        "--state-dir",
        "state",
        "--parallel",
        "1",
        "--lock-check-ms",
        "600000",
    ]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(
        text(&out).contains("lost the hierarchy lock on top server hq"),
        "{}",
        text(&out)
    );
    let servers = lab.servers();
    let changed: Vec<&String> = servers
        .iter()
        .filter(|(_, s)| !calls(s).is_empty())
        .map(|(name, _)| name)
        .collect();
    assert_eq!(changed.len(), 2, "changed after the loss: {changed:?}");
    for name in ["r1a", "r2", "r2a"] {
        assert_eq!(
            servers[name]["replica_mode"], true,
            "{name} left autonomous"
        );
    }
}

/// A journal damaged in its middle (not the torn tail of a crash) blocks `resume` and `apply`
/// with the way forward named; set aside as told, what is readable of it still switches back the
/// replica it shows switched (issue 24: nothing said how to go on).
#[test]
fn a_journal_corrupt_in_its_middle_names_the_way_forward_and_its_switch_back_is_kept() {
    let faults = R2_RESTORE_NEVER_ARRIVES;
    let lab = LabProcess::start("broken", faults, 0);
    let out = lab.apply("state");
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert_eq!(lab.servers()["r2"]["replica_mode"], false);
    // Damage the run's second record (its checksum no longer matches).
    let runs = lab.path("state/runs");
    let journal = std::fs::read_dir(&runs)
        .expect("runs")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "journal"))
        .expect("a journal");
    let original = std::fs::read_to_string(&journal).expect("journal");
    let damaged: String = original
        .lines()
        .enumerate()
        .map(|(i, line)| {
            if i == 1 {
                format!("{}\n", line.replacen("server", "sxrver", 1))
            } else {
                format!("{line}\n")
            }
        })
        .collect();
    std::fs::write(&journal, damaged).expect("damaged");

    std::fs::write(lab.path("faults.yaml"), "faults: []\n").expect("faults cleared");
    let lab = lab.kill_and_restart();
    let shown = format!(
        "state/runs/{}",
        journal
            .file_name()
            .and_then(|n| n.to_str())
            .expect("a name")
    );
    for args in [
        vec!["resume", "--state-dir", "state"],
        vec!["apply", "hierarchy.yaml", "--yes", "--state-dir", "state"],
        vec![
            "apply",
            "hierarchy.yaml",
            "--yes",
            "--state-dir",
            "state",
            "--new-run",
        ],
    ] {
        let refused = lab.run(&args);
        assert_eq!(
            refused.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&refused)
        );
        assert!(
            text(&refused).contains("is corrupt at line 2")
                && text(&refused).contains(&format!("mv '{shown}' '{shown}.corrupt'")),
            "{args:?}: {}",
            text(&refused)
        );
    }
    // The way forward, as told: the next apply switches r2 back first, then repairs what is left.
    std::fs::rename(&journal, lab.path(&format!("{shown}.corrupt"))).expect("set aside");
    let out = lab.apply("state");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let servers = lab.servers();
    assert_all_repaired(&servers);
    assert_eq!(servers["r2"]["replica_mode"], true);
    assert_eq!(
        calls(&servers["r2"]).last().map(String::as_str),
        Some("set-replica-mode=true")
    );
}
