//! The web service as a WSUS 3.0 server serves it (issue 22): its contract read live before any
//! change, the administrator left to the server to decide, revisions read the 3.0 way where the
//! server lacks the one-call operation, what the console writes (deadline, adminName, the
//! configuration's lists), the licence and expiry of the update, and each server's version with
//! the hotfix advice. Every check reads the lab's state file or the tool's own output.

use serde_json::Value;

use crate::repair::{LabProcess, assert_repaired, calls, text};
use crate::web_service::MIXED;

fn lab(faults: &str, extra: &[&str]) -> LabProcess {
    let mut args = vec!["--api-listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    LabProcess::start_extra(MIXED, "broken", faults, 0, &args)
}

/// The parameters of `server`'s calls to `operation`, in order.
fn sent(servers: &serde_json::Map<String, Value>, server: &str, operation: &str) -> Vec<Value> {
    servers[server]["calls"]
        .as_array()
        .expect("calls")
        .iter()
        .filter(|c| c["procedure"] == operation)
        .map(|c| c["params"].clone())
        .collect()
}

#[test]
fn role_numbers_are_the_servers_own_and_a_reporters_first_change_is_refused_by_the_server() {
    // Numbers no client could have guessed: the old client refused anything but 1.
    let lab = lab(
        "faults: []\n",
        &[
            "--api-roles",
            "admin=7,reporter=3",
            "--api-reporter",
            "CORP\\reporter",
        ],
    );
    let plan = lab.run(&["plan", "hierarchy.yaml", "--online"]);
    assert_eq!(plan.status.code(), Some(0), "{}", text(&plan));
    assert!(
        text(&plan).contains("GetCurrentUserRole: 7"),
        "{}",
        text(&plan)
    );

    // A reporter on the replica r1a: its reads pass, its first change (the switch) is refused.
    let reporter = MIXED.replace(
        "api: { host: r1a.test.example }",
        "api: { host: r1a.test.example, auth: { method: windows, user: 'CORP\\reporter', password_env: WSUS_RESET_TEST_PW } }",
    );
    std::fs::write(lab.path("reporter.yaml"), reporter).expect("written");
    let out = lab.run(&["apply", "reporter.yaml", "--yes", "--state-dir", "state"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out)
            .contains("CORP\\reporter is not a WSUS administrator on r1a; nothing was changed"),
        "{}",
        text(&out)
    );
    let servers = lab.servers();
    assert!(calls(&servers["r1a"]).is_empty(), "r1a was changed");
    assert_eq!(servers["r1a"]["replica_mode"], Value::Bool(true));
    for name in ["hq", "r1", "r2", "r2a", "r2b"] {
        assert_repaired(&servers, name);
    }
}

#[test]
fn a_server_lacking_an_operation_or_a_parameter_the_repair_sends_is_refused_naming_it() {
    let faults = "\
faults:
  - { server: r1, operation: ExecuteSPDeclineUpdate, without: failIfReplica }
  - { server: r2a, operation: ExecuteSPDeployUpdate1 }
";
    let lab = lab(faults, &[]);
    let out = lab.apply("state");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let shown = text(&out);
    assert!(
        shown.contains("r1's ExecuteSPDeclineUpdate has no parameter failIfReplica"),
        "{shown}"
    );
    assert!(
        shown.contains("r2a has no ExecuteSPDeployUpdate1"),
        "{shown}"
    );
    let servers = lab.servers();
    for name in ["r1", "r1a", "r2a"] {
        assert!(calls(&servers[name]).is_empty(), "{name} was changed");
    }
    assert_eq!(servers["r2a"]["replica_mode"], Value::Bool(true));
    for name in ["hq", "r2", "r2b"] {
        assert_repaired(&servers, name);
    }
    // The lab refuses the operation it lacks as ASP.NET refuses an unknown SOAPAction.
    let verify = lab.run(&["verify", "hierarchy.yaml", "--only", "r2a"]);
    assert!(
        text(&verify).contains("r2a has no ExecuteSPDeployUpdate1"),
        "{}",
        text(&verify)
    );
}

#[test]
fn revisions_are_read_the_3_0_way_where_the_server_has_no_execute_sp_get_revisions() {
    let faults = "\
faults:
  - { server: r1a, operation: ExecuteSPGetRevisions }
  - { server: r2a, operation: ExecuteSPGetRevisions }
  - { server: r2a, operation: ExecuteSPGetPreviousRevision }
";
    let lab = lab(faults, &[]);
    let out = lab.apply("state");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let shown = text(&out);
    assert!(
        shown.contains("r2a has no ExecuteSPGetRevisions, nor what the 3.0 API reads revisions with (r2a has no ExecuteSPGetPreviousRevision)"),
        "{shown}"
    );
    let servers = lab.servers();
    assert!(calls(&servers["r2a"]).is_empty(), "r2a was changed");
    for name in ["hq", "r1", "r1a", "r2", "r2b"] {
        assert_repaired(&servers, name);
    }
    // The approval went on the latest revision, found without ExecuteSPGetRevisions.
    let approved = sent(&servers, "r1a", "ExecuteSPDeployUpdate1");
    assert_eq!(approved.len(), 1);
    assert_eq!(approved[0]["revisionNumber"], 101);
}

#[test]
fn the_web_service_writes_the_consoles_deadline_the_accounts_name_and_keeps_the_program_keys() {
    let lab = lab("faults: []\n", &[]);
    let keys_before = lab.servers()["r1a"]["program_keys"].clone();
    assert_eq!(
        keys_before.as_array().map(Vec::len),
        Some(2),
        "{keys_before}"
    );
    let out = lab.apply("state");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let servers = lab.servers();
    let approve = &sent(&servers, "r1a", "ExecuteSPDeployUpdate1")[0];
    assert_eq!(approve["deadline"], "9999-12-31T23:59:59.9999999");
    assert_eq!(approve["adminName"], "CORP\\wsus_repair");
    for decline in sent(&servers, "r1a", "ExecuteSPDeclineUpdate") {
        assert_eq!(decline["adminName"], "CORP\\wsus_repair");
    }
    // Two configuration writes (the switch and its undo) left the product keys as they were.
    assert_eq!(sent(&servers, "r1a", "ExecuteSPSetConfiguration").len(), 2);
    assert_eq!(servers["r1a"]["program_keys"], keys_before);
    // The journal says who made each change.
    let journal = crate::repair::journal_text(&lab.path("state/runs"));
    assert!(journal.contains("as CORP\\\\wsus_repair"), "{journal}");
}

#[test]
fn a_licence_not_accepted_or_an_expired_update_is_refused_before_any_change_unless_asked() {
    let faults = "\
faults:
  - { server: r1a, licence: not-accepted }
  - { server: r2a, expired: true }
";
    let lab = lab(faults, &[]);
    let plan = lab.run(&["plan", "hierarchy.yaml", "--online"]);
    assert_eq!(plan.status.code(), Some(1), "{}", text(&plan));
    let shown = text(&plan);
    assert!(
        shown.contains("licence agreement is not accepted there"),
        "{shown}"
    );
    assert!(shown.contains("give --accept-eula"), "{shown}");
    assert!(shown.contains("the update is expired there"), "{shown}");

    let out = lab.apply("state");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let servers = lab.servers();
    for name in ["r1a", "r2a"] {
        assert!(calls(&servers[name]).is_empty(), "{name} was changed");
    }

    // Asked for: the plan says it, and the licence is accepted just before the approval.
    let plan = lab.run(&[
        "plan",
        "hierarchy.yaml",
        "--online",
        "--accept-eula",
        "--only",
        "r1a",
        "--allow-partial",
    ]);
    assert!(
        text(&plan)
            .contains("accepted just before the approval (ExecuteSPAcceptEula, --accept-eula)"),
        "{}",
        text(&plan)
    );
    let out = lab.run(&[
        "apply",
        "hierarchy.yaml",
        "--yes",
        "--accept-eula",
        "--state-dir",
        "state2",
        "--only",
        "r1a",
        "--allow-partial",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let servers = lab.servers();
    assert_repaired(&servers, "r1a");
    let order = calls(&servers["r1a"]);
    let accept = order.iter().position(|c| c == "ExecuteSPAcceptEula");
    let approve = order.iter().position(|c| c == "ExecuteSPDeployUpdate1");
    assert!(accept.is_some() && accept < approve, "{order:?}");
}

#[test]
fn plan_and_verify_show_each_servers_wsus_version_and_whether_it_needs_the_hotfix() {
    let lab = lab(
        "faults: []\n",
        &["--wsus-version", "3.0sp1", "--wsus-version", "r1=3.0sp2"],
    );
    let plan = lab.run(&["plan", "hierarchy.yaml", "--online"]);
    let shown = text(&plan);
    assert!(
        shown.contains("WSUS 3.2.7600.226: WSUS 3.0 SP2: has the fix"),
        "{shown}"
    );
    assert!(
        shown.contains("WSUS 3.1.6001.65: WSUS 3.0 SP1: install hotfix 954960 or SP2"),
        "{shown}"
    );
    assert!(shown.contains("WSUS version unknown over SQL"), "{shown}");
    // r1a, r2a, r2b are SP1 (r1 is SP2); hq and r2 are reached over SQL.
    assert!(
        shown.contains("hotfix 954960 or SP2: 3 of 6 server(s) still need it, 2 unknown"),
        "{shown}"
    );
    let verify = lab.run(&["verify", "hierarchy.yaml", "--json"]);
    let surveyed: Value = serde_json::from_slice(&verify.stdout).expect("JSON");
    let r1a = surveyed
        .as_array()
        .and_then(|all| all.iter().find(|s| s["server"] == "r1a"))
        .expect("r1a verified");
    assert_eq!(r1a["observed"]["wsus_version"], "3.1.6001.65");
    assert_eq!(r1a["hotfix"]["needs_hotfix"], true);
    let table = text(&lab.run(&["verify", "hierarchy.yaml"]));
    assert!(table.contains("3 of 6 server(s) still need it"), "{table}");
}
