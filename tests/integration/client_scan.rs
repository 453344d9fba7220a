//! `verify --client`: a synthetic Windows Update client scans each server's client web service
//! in the lab (which throws the KB 954960 fault as a WSUS 3.0 SP1 server would), before and
//! after the repair, and leaves no computer record behind, even after a run that could not
//! remove one.

use serde_json::Value;

use crate::repair::{LabProcess, text};
use crate::web_service::MIXED;

/// The mixed hierarchy on WSUS 3.0 SP1 without the hotfix, its web services (the client's
/// too) served, in `seed`, with `faults` and more lab arguments. hq and r2 have no `api`: no web
/// site to scan.
fn sp1_lab(seed: &str, faults: &str, extra: &[&str]) -> LabProcess {
    let mut args = vec!["--api-listen", "127.0.0.1:0", "--wsus-version", "3.0sp1"];
    args.extend_from_slice(extra);
    LabProcess::start_extra(MIXED, seed, faults, 0, &args)
}

/// A broken [`sp1_lab`] but r2b on SP2; server logs under `logs/`.
fn lab(faults: &str) -> LabProcess {
    sp1_lab(
        "broken",
        faults,
        &["--server-log", "logs", "--wsus-version", "r2b=3.0sp2"],
    )
}

/// `verify --client --format json`: the exit code and each server's client check, by name.
fn verify_client(lab: &LabProcess) -> (Option<i32>, serde_json::Map<String, Value>) {
    let out = lab.run(&["verify", "hierarchy.yaml", "--client", "--format", "json"]);
    std::fs::write(lab.path("scan.json"), &out.stdout).expect("scan saved");
    let entries: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(&out)));
    let checks = entries
        .as_array()
        .expect("an array")
        .iter()
        .map(|e| {
            (
                e["server"].as_str().expect("a name").to_string(),
                e["client"].clone(),
            )
        })
        .collect();
    (out.status.code(), checks)
}

/// `apply`, then `verify --client`: every server with a web site scanned can scan; each
/// server's client check, by name.
fn repair_and_scan(lab: &LabProcess) -> serde_json::Map<String, Value> {
    let applied = lab.apply("state");
    assert_eq!(applied.status.code(), Some(0), "{}", text(&applied));
    let (code, checks) = verify_client(lab);
    assert_eq!(code, Some(0), "{checks:?}");
    for server in ["r1", "r1a", "r2a"] {
        let check = &checks[server]["check"];
        assert_eq!(check["verdict"], "can-scan", "{server}: {check}");
    }
    checks
}

/// The probes `verify --client` keeps on record in the lab's scratch directory.
fn probes_on_record(lab: &LabProcess) -> Value {
    let text = std::fs::read_to_string(lab.path(".wsus-reset/client-probes.json"))
        .expect("the probe record");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn assert_no_computer_left(lab: &LabProcess) {
    let left = computers_left(lab);
    assert!(left.is_empty(), "{left:?}");
}

fn computers_left(lab: &LabProcess) -> Vec<(String, Value)> {
    lab.servers()
        .into_iter()
        .filter_map(|(name, db)| {
            db.get("computers")
                .filter(|c| c.as_array().is_some_and(|a| !a.is_empty()))
                .map(|c| (name, c.clone()))
        })
        .collect()
}

#[test]
fn the_client_scan_fails_each_broken_server_with_the_fault_and_passes_after_the_repair() {
    let lab = lab("faults: []\n");
    let (code, checks) = verify_client(&lab);
    assert_eq!(code, Some(1), "{checks:?}");
    let log = |server: &str| {
        std::fs::read_to_string(lab.path(&format!("logs/{server}/SoftwareDistribution.log")))
            .unwrap_or_default()
    };
    for server in ["r1", "r1a", "r2a"] {
        let check = &checks[server]["check"];
        assert_eq!(check["verdict"], "fault", "{server}: {check}");
        // The fault on the retry too, each with its own ID, both in the server's log right
        // after the ArgumentException of GetSyncInfo: what diagnose ties a client's fault to.
        for fault in [&check["fault"], &check["first_fault"]] {
            assert_eq!(fault["error_code"], "InternalServerError");
            let id = fault["id"].as_str().expect("an ID");
            let log = log(server);
            let at = log
                .find(&format!("ID={id}, ErrorCode=InternalServerError"))
                .unwrap_or_else(|| panic!("{server}: {id} not in the log: {log}"));
            assert!(
                log[..at].contains("Item has already been added. Key in dictionary:"),
                "{log}"
            );
        }
        assert_eq!(
            checks[server]["check"]["removal"]["record"], "removed",
            "{server}"
        );
    }
    // SP2 has the fix: it is not scanned (nothing registered there).
    assert_eq!(checks["r2b"]["check"]["verdict"], "fixed");
    assert!(checks["r2b"]["check"].get("removal").is_none());
    for server in ["hq", "r2"] {
        assert_eq!(checks[server]["check"]["verdict"], "skipped", "{server}");
    }
    // diagnose ties the synthetic client's faults to the server logs by their IDs, as a real
    // client's.
    let diagnosed = lab.run(&[
        "diagnose",
        "--client-scan",
        "scan.json",
        "--server-log",
        "logs",
    ]);
    let said = text(&diagnosed);
    for server in ["r1", "r1a", "r2a"] {
        assert!(said.contains(&format!("\n{server}: BROKEN\n")), "{said}");
        assert!(
            said.contains(&format!(
                "(verify --client, {server}): 0x8024400E 2 time(s)"
            )),
            "{said}"
        );
    }
    assert_eq!(
        said.matches("2 confirmed by the server log").count(),
        3,
        "{said}"
    );
    assert_no_computer_left(&lab);

    let checks = repair_and_scan(&lab);
    for server in ["r1", "r1a", "r2a"] {
        let check = &checks[server]["check"];
        // Declined by the repair: never offered, while Office 2003 was claimed.
        assert_eq!(check["update_in_scope"], false);
        assert!(
            check["describe"].as_str().is_some_and(
                |d| d.starts_with("clients can scan (5 round trips; Office 2003 claimed")
            ),
            "{check}"
        );
    }
    assert_no_computer_left(&lab);
}

#[test]
fn a_server_that_sends_one_update_per_page_is_scanned_to_the_end() {
    // Every SyncUpdates answer holds one update and says Truncated: the client pages on.
    let lab = sp1_lab("broken", "faults: []\n", &["--client-page", "1"]);
    let (code, checks) = verify_client(&lab);
    assert_eq!(code, Some(1), "{checks:?}");
    for server in ["r1", "r1a", "r2a"] {
        assert_eq!(checks[server]["check"]["verdict"], "fault", "{server}");
    }
    let checks = repair_and_scan(&lab);
    for server in ["r1", "r1a", "r2a"] {
        let check = &checks[server]["check"];
        // 5 round trips when the answers are not paged.
        let trips = check["round_trips"].as_u64().expect("round trips");
        assert!(trips > 5, "{server}: {check}");
    }
    assert_no_computer_left(&lab);
}

#[test]
fn a_client_told_to_start_over_starts_over_and_says_so() {
    // On a repaired SP1 hierarchy, r1's second SyncUpdates says the cookie expired; r1a's say the
    // configuration changed, every time.
    let lab = sp1_lab(
        "healthy",
        "faults:\n  - { server: r1, target: SyncUpdates, nth: 2, client_error: CookieExpired }\n  \
         - { server: r1a, target: SyncUpdates, client_error: ConfigChanged }\n",
        &[],
    );
    let (code, checks) = verify_client(&lab);
    assert_eq!(code, Some(1), "{checks:?}");
    let r1 = &checks["r1"]["check"];
    assert_eq!(r1["verdict"], "can-scan", "{r1}");
    assert_eq!(
        r1["started_over"],
        serde_json::json!(["CookieExpired"]),
        "{r1}"
    );
    // Two SyncUpdates before the cookie expired, five in the new conversation.
    assert_eq!(r1["round_trips"], 7, "{r1}");
    assert!(
        r1["describe"]
            .as_str()
            .is_some_and(|d| d.contains("; started over after CookieExpired)")),
        "{r1}"
    );
    let r1a = &checks["r1a"]["check"];
    assert_eq!(r1a["verdict"], "error", "{r1a}");
    assert!(
        r1a["message"].as_str().is_some_and(|m| m.contains(
            "(after starting over 3 time(s): ConfigChanged, ConfigChanged, ConfigChanged)"
        )),
        "{r1a}"
    );
    assert_eq!(checks["r2a"]["check"]["verdict"], "can-scan");
    assert_no_computer_left(&lab);
}

#[test]
fn a_record_a_run_could_not_remove_is_named_with_its_manual_step_and_removed_by_the_next_run() {
    // r1a's web service lacks the deletion: the record stays, the probe with it.
    let mut lab = lab("faults:\n  - { server: r1a, operation: ExecuteSPDeleteComputer }\n");
    let out = lab.run(&["verify", "hierarchy.yaml", "--client"]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    let name = said
        .split_whitespace()
        .find(|w| w.starts_with("wsus-reset-probe-") && w.ends_with(".invalid"))
        .expect("the probe's name")
        .to_string();
    assert!(
        said.contains(&format!(
            "computer {name} LEFT on the server (r1a has no ExecuteSPDeleteComputer); remove it on r1a:"
        )),
        "{said}"
    );
    assert!(
        said.contains(&format!("GetComputerTargetByName('{name}').Delete()")),
        "{said}"
    );
    let left = computers_left(&lab);
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].0, "r1a");
    // The record says why it is there and how to remove it by hand.
    let probes = probes_on_record(&lab);
    assert_eq!(probes[0]["server"], "r1a");
    assert_eq!(probes[0]["dns_name"], name.as_str());
    assert_eq!(
        probes[0]["left"]["reason"], "r1a has no ExecuteSPDeleteComputer",
        "{probes}"
    );
    assert!(
        probes[0]["left"]["manual_step"]
            .as_str()
            .is_some_and(|s| s.contains(&format!("GetComputerTargetByName('{name}').Delete()"))),
        "{probes}"
    );

    // The server gets the operation back; the next run removes the leftover first.
    std::fs::write(lab.path("faults.yaml"), "faults: []\n").expect("faults");
    lab = lab.kill_and_restart();
    let out = lab.run(&["verify", "hierarchy.yaml", "--client"]);
    let said = text(&out);
    assert!(
        said.contains(&format!("on r1a: computer {name} removed")),
        "{said}"
    );
    assert_no_computer_left(&lab);
    assert_eq!(probes_on_record(&lab), serde_json::json!([]));
}

#[test]
fn a_client_scan_through_a_lab_for_sql_alone_is_refused_before_anything_is_sent() {
    // r2b reached through SQL, its web site known: the scan would go to that web site.
    let lab = LabProcess::start_extra(
        &MIXED.replace("transport: api", "transport: sql"),
        "broken",
        "faults: []\n",
        0,
        &["--api-listen", "127.0.0.1:0"],
    );
    let out = lab
        .direct(&[
            "verify",
            "hierarchy.yaml",
            "--only",
            "r2b",
            "--client",
            "--connect-via",
            &lab.addr,
        ])
        .output()
        .expect("runs");
    let said = text(&out);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(said.contains("add --api-via ADDR"), "{said}");
    assert!(
        !lab.path(".wsus-reset").exists(),
        "nothing recorded, nothing sent"
    );
}

#[test]
fn a_scan_killed_after_it_registered_leaves_its_probes_for_the_next_run_to_remove() {
    // Each request waits 150 ms: the scans are under way when the run is killed.
    let lab = LabProcess::start_extra(
        MIXED,
        "broken",
        "faults: []\n",
        150,
        &["--api-listen", "127.0.0.1:0", "--wsus-version", "3.0sp1"],
    );
    let mut run = lab
        .command(&["verify", "hierarchy.yaml", "--client"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("verify starts");
    let registered = (0..200).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(50));
        !computers_left(&lab).is_empty()
    });
    let _ = run.kill();
    let _ = run.wait();
    assert!(registered, "no computer was ever registered");
    let left = computers_left(&lab);
    assert!(
        !left.is_empty(),
        "the kill came after every record was removed"
    );
    // Every record on a server is a probe on record: written before the client named itself.
    let probes = probes_on_record(&lab);
    for (server, computers) in &left {
        let id = &computers[0]["id"];
        assert!(
            probes
                .as_array()
                .expect("a list")
                .iter()
                .any(|p| &p["server"] == server && &p["client_id"] == id),
            "{server}'s record {id} is not in {probes}"
        );
    }
    let out = lab.run(&["verify", "hierarchy.yaml", "--client"]);
    let said = text(&out);
    for (server, _) in &left {
        assert!(said.contains(&format!("on {server}: computer ")), "{said}");
    }
    assert_no_computer_left(&lab);
    assert_eq!(probes_on_record(&lab), serde_json::json!([]));
}
