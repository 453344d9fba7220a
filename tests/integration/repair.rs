//! The repair against the lab over TCP on loopback: `wsus-reset lab` in one process, `apply`,
//! `resume`, `verify` and `plan --online` in others, as an operator runs them. What each test
//! checks is what the lab's state file says the servers hold, call by call.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

pub(crate) const PASSWORD: &str = "s3cret-Lab-Pw";
const PASSWORD_VAR: &str = "WSUS_RESET_TEST_PW";

/// hq (top) -> r1 (autonomous) -> r1a (replica); hq -> r2 (replica) -> r2a (replica), r2b.
pub(crate) const TOPOLOGY: &str = "\
version: 1
defaults:
  sql:
    auth: { method: sql, user: wsus_repair, password_env: WSUS_RESET_TEST_PW }
servers:
  - name: hq
    sql: { host: sql-hq.test.example }
  - name: r1
    upstream: hq
    sql: { host: sql-r1.test.example }
  - name: r1a
    upstream: r1
    mode: replica
    sql: { host: sql-r1a.test.example, instance: WSUS }
  - name: r2
    upstream: hq
    mode: replica
    sql: { host: sql-r2.test.example }
  - name: r2a
    upstream: r2
    mode: replica
    sql: { host: sql-r2a.test.example }
  - name: r2b
    upstream: r2
    sql: { host: sql-r2b.test.example }
";

const REPLICAS: &[&str] = &["r1a", "r2", "r2a"];

/// A `wsus-reset lab` process serving the test hierarchy, and a scratch directory.
pub(crate) struct LabProcess {
    child: Child,
    pub(crate) addr: String,
    /// The web service's address, when the lab was started with `--api-listen`.
    pub(crate) api: Option<String>,
    dir: tempfile::TempDir,
    /// Arguments added to `wsus-reset lab`, kept for a restart.
    extra: Vec<String>,
}

impl Drop for LabProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl LabProcess {
    pub(crate) fn start(seed: &str, faults: &str, latency_ms: u64) -> LabProcess {
        Self::start_with(TOPOLOGY, seed, faults, latency_ms)
    }

    pub(crate) fn start_with(
        topology: &str,
        seed: &str,
        faults: &str,
        latency_ms: u64,
    ) -> LabProcess {
        Self::start_extra(topology, seed, faults, latency_ms, &[])
    }

    /// A lab with a throwaway authority's certificate for every host; the authority is `tls/ca.pem`
    /// in the scratch directory. It emulates SQL Server 2022, the first release with TDS 8.0
    /// (`encrypt: strict`); `rehearse` covers TLS against the default, 2005.
    pub(crate) fn start_tls(topology: &str, seed: &str) -> LabProcess {
        Self::start_extra(
            topology,
            seed,
            "faults: []\n",
            0,
            // SQL Server 2022 on Windows Server 2022: every encryption level, TLS 1.2 and 1.3.
            &[
                "--tls-generate",
                "tls",
                "--sql-version",
                "2022",
                "--windows",
                "2022",
            ],
        )
    }

    pub(crate) fn start_extra(
        topology: &str,
        seed: &str,
        faults: &str,
        latency_ms: u64,
        extra: &[&str],
    ) -> LabProcess {
        let dir = tempfile::tempdir().expect("a scratch directory");
        std::fs::write(dir.path().join("hierarchy.yaml"), topology).expect("topology written");
        std::fs::write(dir.path().join("faults.yaml"), faults).expect("faults written");
        let extra: Vec<String> = extra.iter().map(ToString::to_string).collect();
        let (child, addr, api) = spawn_lab(dir.path(), seed, latency_ms, &extra);
        LabProcess {
            child,
            addr,
            api,
            dir,
            extra,
        }
    }

    /// Kills the lab with SIGKILL and starts a new one on the same state file.
    pub(crate) fn kill_and_restart(self) -> LabProcess {
        self.kill_and_restart_with(0)
    }

    /// As [`Self::kill_and_restart`], the new lab adding `latency_ms` to every round trip.
    pub(crate) fn kill_and_restart_with(mut self, latency_ms: u64) -> LabProcess {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let (child, addr, api) = spawn_lab(self.dir.path(), "healthy", latency_ms, &self.extra);
        self.child = child;
        self.addr = addr;
        self.api = api;
        self
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `wsus-reset ARGS --connect-via ADDR [--api-via ADDR2]`, in the scratch directory.
    pub(crate) fn command(&self, args: &[&str]) -> Command {
        let mut cmd = self.direct(args);
        cmd.args(["--connect-via", &self.addr]);
        if let Some(api) = &self.api {
            cmd.args(["--api-via", api]);
        }
        cmd
    }

    /// `wsus-reset ARGS`, in the scratch directory, each server reached at its own address.
    pub(crate) fn direct(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wsus-reset"));
        cmd.args(args)
            .env(PASSWORD_VAR, PASSWORD)
            .env_remove("RUST_LOG")
            .current_dir(self.dir.path())
            .stdin(Stdio::null());
        cmd
    }

    pub(crate) fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("wsus-reset runs")
    }

    pub(crate) fn apply(&self, state_dir: &str) -> Output {
        self.run(&["apply", "hierarchy.yaml", "--yes", "--state-dir", state_dir])
    }

    /// Every emulated server, as the lab's state file has it.
    pub(crate) fn servers(&self) -> serde_json::Map<String, Value> {
        let text = std::fs::read_to_string(self.path("lab-state.json")).unwrap_or_default();
        match serde_json::from_str::<Value>(&text) {
            Ok(Value::Object(mut state)) => match state.remove("servers") {
                Some(Value::Object(servers)) => servers,
                _ => panic!("the lab state has no servers: {text}"),
            },
            _ => panic!("the lab state is not JSON: {text}"),
        }
    }
}

/// `wsus-reset lab` in `dir` on a free loopback port; returns once it says where it listens
/// (and where its web service listens, when `extra` asks for it).
fn spawn_lab(
    dir: &std::path::Path,
    seed: &str,
    latency_ms: u64,
    extra: &[String],
) -> (Child, String, Option<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wsus-reset"))
        .args([
            "lab",
            "hierarchy.yaml",
            "--listen",
            "127.0.0.1:0",
            "--seed",
            seed,
            "--state",
            "lab-state.json",
            "--faults",
            "faults.yaml",
            "--latency",
            &latency_ms.to_string(),
            "--user",
            "wsus_repair",
            "--password-env",
            PASSWORD_VAR,
            "--windows-user",
            "CORP\\wsus_repair",
            "--windows-password-env",
            PASSWORD_VAR,
        ])
        .args(extra)
        .env(PASSWORD_VAR, PASSWORD)
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the lab starts");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout piped")).lines();
    let mut line = || lines.next().and_then(Result::ok).unwrap_or_default();
    let first = line();
    let addr = first
        .strip_prefix("listening on ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("unexpected first line from the lab: {first:?}"))
        .to_string();
    let api = extra.iter().any(|a| a == "--api-listen").then(|| {
        let second = line();
        second
            .strip_prefix("api listening on ")
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("unexpected second line from the lab: {second:?}"))
            .to_string()
    });
    (child, addr, api)
}

pub(crate) fn text(output: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The procedures a server received, in order, with the replica flag written for
/// `set-replica-mode`; only calls that took effect (not the lab's own replica synchronizations).
pub(crate) fn calls(server: &Value) -> Vec<String> {
    server["calls"]
        .as_array()
        .expect("calls")
        .iter()
        .filter(|c| c["params"]["ok"] != Value::Bool(false) && c["procedure"] != "replica-sync")
        .map(|c| match c["procedure"].as_str().expect("procedure") {
            "set-replica-mode" => format!("set-replica-mode={}", c["params"]["@P1"]),
            other => other.to_string(),
        })
        .collect()
}

pub(crate) fn assert_all_repaired(servers: &serde_json::Map<String, Value>) {
    for name in servers.keys() {
        assert_repaired(servers, name);
    }
}

pub(crate) fn assert_repaired(servers: &serde_json::Map<String, Value>, name: &str) {
    let s = &servers[name];
    assert_eq!(
        s["client_sync_ok"], true,
        "{name}: clients cannot sync: {s}"
    );
    if s["update_present"] == true {
        assert_eq!(s["update_declined"], true, "{name}: not declined: {s}");
    }
    assert_eq!(
        s["replica_mode"],
        REPLICAS.contains(&name),
        "{name} is not back in its declared mode: {s}"
    );
}

pub(crate) const REPLICA_CALLS: &[&str] = &[
    "set-replica-mode=false",
    "spDeclineUpdate",
    "spDeployUpdate",
    "spDeclineUpdate",
    "set-replica-mode=true",
];
const AUTONOMOUS_CALLS: &[&str] = &["spDeclineUpdate", "spDeployUpdate", "spDeclineUpdate"];

#[test]
fn apply_repairs_a_broken_hierarchy_in_the_documented_call_order_and_verify_proves_it() {
    let lab = LabProcess::start("broken", "faults: []\n", 0);
    let before = lab.run(&["verify", "hierarchy.yaml"]);
    assert_eq!(before.status.code(), Some(1), "{}", text(&before));
    assert!(text(&before).contains("BROKEN"), "{}", text(&before));

    let out = lab.apply("state");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let servers = lab.servers();
    for (name, server) in &servers {
        assert_repaired(&servers, name);
        let expected = if REPLICAS.contains(&name.as_str()) {
            REPLICA_CALLS
        } else {
            AUTONOMOUS_CALLS
        };
        assert_eq!(calls(server), expected, "{name}");
        let deploy = &server["calls"][if REPLICAS.contains(&name.as_str()) {
            2
        } else {
            1
        }];
        assert_eq!(deploy["params"]["@actionID"], 2, "detect only");
        assert_eq!(
            deploy["params"]["@revisionNumber"], 101,
            "the latest revision"
        );
        assert_eq!(deploy["params"]["@failIfReplica"], true);
    }

    let after = lab.run(&["verify", "hierarchy.yaml"]);
    assert_eq!(after.status.code(), Some(0), "{}", text(&after));
    assert!(
        String::from_utf8_lossy(&after.stdout).contains("6 of 6 servers verified"),
        "{}",
        text(&after)
    );
}

#[test]
fn a_second_apply_changes_nothing_with_the_same_or_a_new_state_dir() {
    let lab = LabProcess::start("broken", "faults: []\n", 0);
    assert_eq!(lab.apply("state").status.code(), Some(0));
    let first = lab.servers();
    let again = lab.apply("state");
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    assert!(text(&again).contains("already done"), "{}", text(&again));
    let fresh = lab.apply("other-state");
    assert_eq!(fresh.status.code(), Some(0), "{}", text(&fresh));
    assert!(
        text(&fresh).contains("already consistent, no change"),
        "{}",
        text(&fresh)
    );
    assert_eq!(lab.servers(), first, "no call reached any server");
}

#[test]
fn mixed_and_healthy_hierarchies_end_repaired_and_healthy_ones_untouched() {
    for seed in ["mixed", "healthy"] {
        let lab = LabProcess::start(seed, "faults: []\n", 0);
        let out = lab.apply("state");
        assert_eq!(out.status.code(), Some(0), "{seed}: {}", text(&out));
        let servers = lab.servers();
        assert_all_repaired(&servers);
        if seed == "healthy" {
            assert!(
                servers.values().all(|s| calls(s).is_empty()),
                "a healthy server was changed"
            );
        }
        let verify = lab.run(&["verify", "hierarchy.yaml"]);
        assert_eq!(verify.status.code(), Some(0), "{seed}: {}", text(&verify));
    }
}

#[test]
fn dropped_connections_before_and_after_each_mutation_are_retried_and_nothing_is_doubled() {
    // On the replica r2 every mutation loses its connection once: before it reaches the server
    // for some, after it took effect for others.
    let faults = "\
faults:
  - { server: r2, target: set-replica-mode, nth: 1, drop: after }
  - { server: r2, target: spDeclineUpdate, nth: 1, drop: before }
  - { server: r2, target: spDeployUpdate, nth: 1, drop: after }
  - { server: r2, target: spDeclineUpdate, nth: 3, drop: after }
  - { server: r2, target: set-replica-mode, nth: 2, drop: before }
  - { server: hq, target: spDeployUpdate, nth: 1, drop: before }
  - { server: r1, target: spDeclineUpdate, nth: 1, drop: after }
";
    let lab = LabProcess::start("broken", faults, 0);
    let out = lab.apply("state");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("retry"), "{}", text(&out));
    let servers = lab.servers();
    assert_all_repaired(&servers);
    assert_eq!(calls(&servers["r2"]), REPLICA_CALLS, "each change once");
    assert_eq!(calls(&servers["hq"]), AUTONOMOUS_CALLS);
    assert_eq!(calls(&servers["r1"]), AUTONOMOUS_CALLS);
}

#[test]
fn a_deadlock_is_retried() {
    let lab = LabProcess::start(
        "broken",
        "faults:\n  - { server: r2a, target: spDeployUpdate, nth: 1, error: 1205 }\n",
        0,
    );
    let out = lab.apply("state");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("SQL error 1205"), "{}", text(&out));
    let servers = lab.servers();
    assert_repaired(&servers, "r2a");
    assert_eq!(calls(&servers["r2a"]), REPLICA_CALLS);
}

#[test]
fn an_unreachable_server_fails_its_subtree_is_skipped_and_the_rest_is_repaired() {
    let lab = LabProcess::start(
        "broken",
        "faults:\n  - { server: r1, unreachable: true }\n",
        0,
    );
    let out = lab.apply("state");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("skipped") && text(&out).contains("upstream r1 failed"),
        "{}",
        text(&out)
    );
    let servers = lab.servers();
    for name in ["hq", "r2", "r2a", "r2b"] {
        assert_repaired(&servers, name);
    }
    for name in ["r1", "r1a"] {
        assert!(calls(&servers[name]).is_empty(), "{name} was touched");
        assert_eq!(servers[name]["client_sync_ok"], false);
    }
}

#[test]
fn a_replica_whose_approval_fails_is_switched_back_and_its_subtree_skipped() {
    // 547: a constraint violation, permanent.
    let lab = LabProcess::start(
        "broken",
        "faults:\n  - { server: r2, target: spDeployUpdate, error: 547 }\n",
        0,
    );
    let out = lab.apply("state");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let servers = lab.servers();
    assert_eq!(servers["r2"]["replica_mode"], true, "replica mode restored");
    assert_eq!(
        calls(&servers["r2"]),
        [
            "set-replica-mode=false",
            "spDeclineUpdate",
            "set-replica-mode=true"
        ]
    );
    for name in ["r2a", "r2b"] {
        assert!(calls(&servers[name]).is_empty(), "{name} was touched");
    }
    for name in ["hq", "r1", "r1a"] {
        assert_repaired(&servers, name);
    }
}

/// Returns once the run's journal holds `records` records or `apply` has exited (bounded: 20 s).
/// Every journal in a state directory's `runs`, as one text (empty when there is none yet).
pub(crate) fn journal_text(runs: &std::path::Path) -> String {
    std::fs::read_dir(runs)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect()
}

pub(crate) fn wait_for_journal_records(runs: &std::path::Path, records: usize, apply: &mut Child) {
    for _ in 0..10_000 {
        let lines = std::fs::read_dir(runs)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| std::fs::read(e.path()).unwrap_or_default())
            .map(|bytes| bytes.iter().filter(|b| **b == b'\n').count())
            .sum::<usize>();
        if lines >= records || matches!(apply.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn apply_killed_at_any_moment_is_finished_by_resume() {
    // Each kill lands after a different number of journal records (from the run's first record
    // to deep into the leaves), so the crash comes before, between and after changes; 3 ms per
    // round trip keeps the run going meanwhile.
    let mut resumed = 0;
    for (k, records) in [1usize, 5, 12, 25, 40, 55].into_iter().enumerate() {
        let lab = LabProcess::start("broken", "faults: []\n", 3);
        let mut apply = lab
            .command(&["apply", "hierarchy.yaml", "--yes", "--state-dir", "state"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("apply starts");
        wait_for_journal_records(&lab.path("state/runs"), records, &mut apply);
        let _ = apply.kill(); // SIGKILL
        let _ = apply.wait();

        // One resume finishes the run (or, killed before its first journal record, there is
        // nothing to resume and a new apply does it all).
        let out = lab.run(&["resume", "--state-dir", "state"]);
        let said = text(&out);
        match out.status.code() {
            Some(0) => resumed += usize::from(said.contains("resuming run")),
            Some(2) if said.contains("no unfinished run") => {
                let fresh = lab.apply("state");
                assert_eq!(fresh.status.code(), Some(0), "case {k}: {}", text(&fresh));
            }
            _ => panic!("case {k} (kill after {records} records): {said}"),
        }
        let servers = lab.servers();
        for (name, server) in &servers {
            assert_repaired(&servers, name);
            let c = calls(server);
            assert_eq!(
                c.iter().filter(|p| *p == "spDeployUpdate").count(),
                1,
                "case {k}: {name} approved more than once: {c:?}"
            );
        }
        let verify = lab.run(&["verify", "hierarchy.yaml"]);
        assert_eq!(verify.status.code(), Some(0), "case {k}: {}", text(&verify));
    }
    assert!(resumed >= 4, "only {resumed} of 6 kills interrupted a run");
}

#[test]
fn a_saved_plan_is_refused_when_the_servers_or_the_topology_changed() {
    let lab = LabProcess::start("broken", "faults: []\n", 0);
    let plan = lab.run(&["plan", "hierarchy.yaml", "--online", "--out", "plan.json"]);
    assert_eq!(plan.status.code(), Some(0), "{}", text(&plan));
    assert!(
        text(&plan).contains(": BROKEN: stale approval"),
        "{}",
        text(&plan)
    );

    // Someone repairs hq by other means after the review.
    let elsewhere = lab.run(&[
        "apply",
        "hierarchy.yaml",
        "--yes",
        "--only",
        "hq",
        "--state-dir",
        "elsewhere",
    ]);
    assert_eq!(elsewhere.status.code(), Some(0), "{}", text(&elsewhere));
    let snapshot = lab.servers();
    let out = lab.run(&["apply", "plan.json", "--yes", "--state-dir", "state"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("apply would not do what the saved plan says: hq steps")
            && text(&out).contains("hq observed state"),
        "{}",
        text(&out)
    );
    assert_eq!(lab.servers(), snapshot, "nothing changed");

    // A fresh plan is accepted; then the topology file changes under it.
    let plan = lab.run(&["plan", "hierarchy.yaml", "--online", "--out", "plan.json"]);
    assert_eq!(plan.status.code(), Some(0), "{}", text(&plan));
    let mut edited = TOPOLOGY.to_string();
    edited.push_str("# reviewed\n");
    std::fs::write(lab.path("hierarchy.yaml"), edited).expect("edit");
    let out = lab.run(&["apply", "plan.json", "--yes", "--state-dir", "state"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("changed since the plan was made"),
        "{}",
        text(&out)
    );
    std::fs::write(lab.path("hierarchy.yaml"), TOPOLOGY).expect("restore");
    let out = lab.run(&["apply", "plan.json", "--yes", "--state-dir", "state"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[test]
fn two_operators_with_two_state_dirs_cannot_run_at_once() {
    // 10 ms per round trip keeps the first run busy long after the second asks for the lock.
    let lab = LabProcess::start("broken", "faults: []\n", 10);
    let spawn = |dir: &str| {
        lab.command(&["apply", "hierarchy.yaml", "--yes", "--state-dir", dir])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("apply starts")
    };
    let (a, b) = (spawn("state-a"), spawn("state-b"));
    let outputs = [
        a.wait_with_output().expect("a"),
        b.wait_with_output().expect("b"),
    ];
    let mut codes: Vec<i32> = outputs
        .iter()
        .map(|o| o.status.code().unwrap_or(-1))
        .collect();
    codes.sort_unstable();
    assert_eq!(
        codes,
        [0, 3],
        "{}\n{}",
        text(&outputs[0]),
        text(&outputs[1])
    );
    let refused = outputs
        .iter()
        .find(|o| o.status.code() == Some(3))
        .map(text)
        .unwrap_or_default();
    assert!(
        refused.contains("hierarchy lock on top server hq"),
        "{refused}"
    );
    let servers = lab.servers();
    for (name, server) in &servers {
        assert_repaired(&servers, name);
        assert_eq!(
            calls(server)
                .iter()
                .filter(|c| *c == "spDeployUpdate")
                .count(),
            1
        );
    }
}

#[test]
fn without_yes_off_a_terminal_apply_refuses_and_changes_nothing() {
    let lab = LabProcess::start("broken", "faults: []\n", 0);
    let out = lab.run(&["apply", "hierarchy.yaml", "--state-dir", "state"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("without --yes"), "{}", text(&out));
    assert!(lab.servers().values().all(|s| calls(s).is_empty()));
}

#[test]
fn the_password_appears_in_no_output_and_no_journal_and_a_wrong_one_is_refused() {
    let lab = LabProcess::start("broken", "faults: []\n", 0);
    let out = lab.run(&[
        "apply",
        "hierarchy.yaml",
        "--yes",
        "--json",
        "--state-dir",
        "state",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!text(&out).contains(PASSWORD));
    for entry in std::fs::read_dir(lab.path("state/runs")).expect("journals") {
        let journal = std::fs::read(entry.expect("entry").path()).expect("journal");
        assert!(!String::from_utf8_lossy(&journal).contains(PASSWORD));
    }
    // --json: one event per line, the run's last event says how it ended.
    let events: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is a JSON event"))
        .collect();
    let last = events.last().expect("events");
    assert_eq!(last["event"], "run-finished");
    assert_eq!(last["outcome"], "succeeded");
    assert_eq!(last["succeeded"], 6);

    let wrong = lab
        .command(&["verify", "hierarchy.yaml"])
        .env(PASSWORD_VAR, "not-it")
        .output()
        .expect("runs");
    assert_eq!(wrong.status.code(), Some(1), "{}", text(&wrong));
    assert!(text(&wrong).contains("18456"), "{}", text(&wrong));
    assert!(!text(&wrong).contains("not-it"));
}

#[test]
fn the_lab_writes_its_state_and_exits_0_on_sigterm() {
    let mut lab = LabProcess::start("broken", "faults: []\n", 0);
    let pid = lab.child.id().to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let exited = lab.child.wait().expect("the lab exits");
    assert_eq!(exited.code(), Some(0));
    let servers = lab.servers();
    assert_eq!(servers.len(), 6);
    assert_eq!(servers["r2"]["replica_mode"], true);
}

#[test]
fn rehearse_runs_the_whole_repair_on_the_example_hierarchy() {
    for seed in ["broken", "mixed", "healthy"] {
        let out = Command::new(env!("CARGO_BIN_EXE_wsus-reset"))
            .args(["rehearse", "examples/contoso.yaml", "--seed", seed])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("rehearse runs");
        assert_eq!(out.status.code(), Some(0), "{seed}: {}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("13 of 13 servers verified; clients of 13 of 13 servers can sync"),
            "{seed}: {stdout}"
        );
    }
}

#[test]
fn the_lab_state_survives_a_sigkill_of_the_lab_and_is_loaded_again() {
    let lab = LabProcess::start("broken", "faults: []\n", 0);
    assert_eq!(lab.apply("state").status.code(), Some(0));
    let before = lab.servers();
    // The restart's seed (healthy) is ignored: the state file wins.
    let lab = lab.kill_and_restart();
    assert_eq!(lab.servers(), before, "the file is whole after SIGKILL");
    let verify = lab.run(&["verify", "hierarchy.yaml"]);
    assert_eq!(verify.status.code(), Some(0), "{}", text(&verify));
    assert_eq!(calls(&lab.servers()["r2"]), REPLICA_CALLS);
}

#[test]
fn an_interrupt_restores_every_switched_replica_exits_4_and_resume_finishes() {
    // 20 ms per round trip: the run is mid-flight when the interrupt comes.
    let lab = LabProcess::start("broken", "faults: []\n", 20);
    let mut apply = lab
        .command(&["apply", "hierarchy.yaml", "--yes", "--state-dir", "state"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("apply starts");
    // Once r2 (a replica) has been switched: its intent and outcome are in the journal.
    wait_for_journal_records(&lab.path("state/runs"), 12, &mut apply);
    let status = Command::new("kill")
        .args(["-INT", &apply.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let out = apply.wait_with_output().expect("apply ends");
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(text(&out).contains("wsus-reset resume"), "{}", text(&out));
    let servers = lab.servers();
    for name in REPLICAS {
        assert_eq!(
            servers[*name]["replica_mode"],
            true,
            "{name} was left autonomous: {}",
            text(&out)
        );
    }
    assert!(
        servers.values().any(|s| !calls(s).is_empty()),
        "the interrupt came before any change: nothing was tested"
    );
    assert!(
        servers.values().any(|s| s["client_sync_ok"] == false),
        "the run had already finished: nothing was tested"
    );

    let resumed = lab.run(&["resume", "--state-dir", "state"]);
    assert_eq!(resumed.status.code(), Some(0), "{}", text(&resumed));
    let servers = lab.servers();
    assert_all_repaired(&servers);
}

#[test]
fn diagnose_with_the_topology_sets_log_and_database_evidence_side_by_side() {
    let lab = LabProcess::start("broken", "faults: []\n", 0);
    // r2's log, as its web service wrote it; 8022 is the lab's RevisionID of r2's latest revision.
    std::fs::create_dir_all(lab.path("logs/r2")).expect("dir");
    std::fs::write(
        lab.path("logs/r2/SoftwareDistribution.log"),
        "2009-03-27 10:55:29.190 UTC Error w3wp.12 ClientImplementation.SyncUpdates System.ArgumentException: Item has already been added. Key in dictionary: '8022'  Key being added: '8022'\n\
         at Microsoft.UpdateServices.Internal.ClientImplementation.GetSyncInfo(DataAccess dataAccess)\n\
         2009-03-27 10:55:29.193 UTC Warning w3wp.12 SoapUtilities.CreateException ThrowException: actor = http://sql-r2.test.example/ClientWebService/client.asmx, ID=c0a7445f-b989-43fa-ac20-11f8ca65fa8c, ErrorCode=InternalServerError, Message=, Client=?\n",
    )
    .expect("log");
    let out = lab.run(&[
        "diagnose",
        "--topology",
        "hierarchy.yaml",
        "--server-log",
        "logs",
        "--format",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let r2 = report["database"]
        .as_array()
        .expect("database evidence")
        .iter()
        .find(|e| e["server"] == "r2")
        .expect("r2");
    assert_eq!(r2["needs_repair"], true);
    assert_eq!(r2["keys"], serde_json::json!([["8022", ["RevisionID"]]]));
    assert_eq!(
        report["repair_command"],
        "wsus-reset plan hierarchy.yaml --online --only hq --with-downstream && wsus-reset apply hierarchy.yaml --only hq --with-downstream"
    );
    // diagnose is read-only.
    assert!(lab.servers().values().all(|s| calls(s).is_empty()));

    // After the repair, the database side is clean; the old log still shows the old fault.
    assert_eq!(lab.apply("state").status.code(), Some(0));
    let after = lab.run(&[
        "diagnose",
        "--topology",
        "hierarchy.yaml",
        "--format",
        "json",
    ]);
    assert_eq!(after.status.code(), Some(0), "{}", text(&after));
}

#[test]
fn a_windows_login_logs_in_over_ntlm_and_a_wrong_password_fails_that_server_only() {
    // r2 logs in with a Windows account (NTLM through sspi-rs), the others with the SQL login.
    let topology = TOPOLOGY.replace(
        "    mode: replica\n    sql: { host: sql-r2.test.example }",
        "    mode: replica\n    sql:\n      host: sql-r2.test.example\n      auth: { method: windows, user: 'CORP\\wsus_repair', password_env: WSUS_RESET_WINDOWS_PW }",
    );
    assert_ne!(
        topology, TOPOLOGY,
        "the test hierarchy changed: update this test"
    );
    let lab = LabProcess::start_with(&topology, "broken", "faults: []\n", 0);
    let wrong = lab
        .command(&["apply", "hierarchy.yaml", "--yes", "--state-dir", "wrong"])
        .env("WSUS_RESET_WINDOWS_PW", "not-the-password")
        .output()
        .expect("runs");
    assert_eq!(wrong.status.code(), Some(1), "{}", text(&wrong));
    assert!(
        text(&wrong).contains("18456") && text(&wrong).contains("CORP\\wsus_repair"),
        "{}",
        text(&wrong)
    );
    assert!(!text(&wrong).contains("not-the-password"));
    assert!(calls(&lab.servers()["r2"]).is_empty());

    let right = lab
        .command(&["apply", "hierarchy.yaml", "--yes", "--state-dir", "right"])
        .env("WSUS_RESET_WINDOWS_PW", PASSWORD)
        .output()
        .expect("runs");
    assert_eq!(right.status.code(), Some(0), "{}", text(&right));
    let servers = lab.servers();
    assert_all_repaired(&servers);
    assert_eq!(calls(&servers["r2"]), REPLICA_CALLS);
}

/// A plan edited by hand is refused with what it says shown escaped and cut, in the tool's own
/// words (issue 24: a 10,187-character value with ESC came back whole, and `Some("top")`).
#[test]
fn a_hand_edited_plan_is_refused_with_its_values_escaped_and_cut() {
    let lab = LabProcess::start("broken", "faults: []\n", 0);
    let plan = lab.run(&["plan", "hierarchy.yaml", "--out", "plan.json"]);
    assert_eq!(plan.status.code(), Some(0), "{}", text(&plan));
    let mut saved: Value =
        serde_json::from_str(&std::fs::read_to_string(lab.path("plan.json")).expect("plan"))
            .expect("JSON");
    let edited = format!("top\u{1b}]0;x\u{7}{}", "y".repeat(10_000));
    saved["servers"][1]["upstream"] = Value::String(edited);
    std::fs::write(lab.path("plan.json"), saved.to_string()).expect("written");
    let out = lab.run(&["apply", "plan.json", "--yes", "--state-dir", "state"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("upstream: the plan says top\\u{1b}]0;x\\u{7}"),
        "{said}"
    );
    assert!(said.contains("more characters)"), "{said}");
    assert!(said.len() < 2_000, "{} bytes: {said}", said.len());
    assert!(
        !said.contains('\u{1b}') && !said.contains("Some("),
        "{said}"
    );
    assert!(lab.servers().values().all(|s| calls(s).is_empty()));
}
