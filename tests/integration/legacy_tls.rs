//! The servers WSUS 3.0 runs on: SQL Server 2005 and Windows Server 2008 R2 speak TLS 1.0 only.
//! The default client refuses them with the way forward and changes nothing; with `tls_min:
//! "1.0"` the whole repair runs over TLS 1.0 on both transports, and the plan says so.

use std::process::{Command, Stdio};

use crate::repair::{LabProcess, assert_all_repaired, calls, text};
use crate::web_service::MIXED;

/// MIXED with HTTPS sites on 8531 for every server reached through the web service, and the
/// given `tls_min` lines under `defaults.sql` and `defaults.api` (none: the default, TLS 1.2).
fn https_mixed(tls_min: Option<&str>) -> String {
    let tls_min = tls_min.map_or(String::new(), |v| format!("\n    tls_min: \"{v}\""));
    MIXED
        .replace(
            "    auth: { method: sql, user: wsus_repair, password_env: WSUS_RESET_TEST_PW }",
            &format!(
                "    auth: {{ method: sql, user: wsus_repair, password_env: WSUS_RESET_TEST_PW }}{tls_min}"
            ),
        )
        .replace(
            "    port: 8530\n    tls: false",
            &format!("    port: 8531\n    tls: true{tls_min}"),
        )
}

/// A lab of WSUS 3.0 hosts as installed (Windows Server 2008 R2, SQL Server 2005: the lab's
/// defaults), with certificates, serving both transports; `extra` lab arguments.
fn wsus30_lab(topology: &str, extra: &[&str]) -> LabProcess {
    let mut args = vec!["--api-listen", "127.0.0.1:0", "--tls-generate", "tls"];
    args.extend_from_slice(extra);
    LabProcess::start_extra(topology, "broken", "faults: []\n", 0, &args)
}

fn with_ca(lab: &LabProcess, args: &[&str]) -> Command {
    let mut all = args.to_vec();
    all.extend(["--connect-via-ca", "tls/ca.pem"]);
    lab.command(&all)
}

#[test]
fn the_default_client_refuses_tls_1_0_servers_with_the_way_forward_and_changes_nothing() {
    let lab = wsus30_lab(&https_mixed(None), &[]);
    let plan = with_ca(&lab, &["plan", "hierarchy.yaml", "--online"])
        .output()
        .expect("runs");
    assert_eq!(plan.status.code(), Some(1), "{}", text(&plan));
    let out = text(&plan);
    // Over SQL (SQL Server 2005) and over the web service (IIS on 2008 R2): which version,
    // why, and what to change.
    for expected in [
        "speaks at most TLS 1.0 and this run accepts TLS 1.2 or newer",
        "SQL Server 2005 and Windows Server 2003, 2008 and 2008 R2 as installed stop at TLS 1.0",
        "add `tls_min: \"1.0\"` under this server's `sql` (or `defaults.sql`)",
        "add `tls_min: \"1.0\"` under this server's `api` (or `defaults.api`)",
        "`api.tls: false`, port 8530",
        "wsus-reset export-sql",
    ] {
        assert!(out.contains(expected), "{expected}: {out}");
    }
    let applied = with_ca(
        &lab,
        &["apply", "hierarchy.yaml", "--yes", "--state-dir", "s"],
    )
    .output()
    .expect("runs");
    assert_eq!(applied.status.code(), Some(1), "{}", text(&applied));
    for (name, server) in &lab.servers() {
        assert!(calls(server).is_empty(), "{name} was changed: {server}");
    }
}

#[test]
fn with_tls_min_1_0_both_transports_plan_apply_survive_a_kill_and_verify_over_tls_1_0() {
    let lab = wsus30_lab(&https_mixed(Some("1.0")), &[]);
    let plan = with_ca(&lab, &["plan", "hierarchy.yaml", "--online"])
        .output()
        .expect("runs");
    assert_eq!(plan.status.code(), Some(0), "{}", text(&plan));
    let out = text(&plan);
    assert_eq!(
        out.matches("TLS: TLS 1.0, TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA (weak")
            .count(),
        6,
        "every server, both transports, names its version and cipher: {out}"
    );
    // The JSON plan carries them too.
    let json = with_ca(
        &lab,
        &["plan", "hierarchy.yaml", "--online", "--format", "json"],
    )
    .output()
    .expect("runs");
    let plan: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON");
    assert_eq!(
        plan["servers"][0]["observed"]["tls"]["version"], "TLS 1.0",
        "{plan}"
    );

    // Killed once changes have begun, then resumed: replicas included, each approved once.
    let mut apply = with_ca(
        &lab,
        &["apply", "hierarchy.yaml", "--yes", "--state-dir", "state"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("apply starts");
    crate::repair::wait_for_journal_records(&lab.path("state/runs"), 14, &mut apply);
    let _ = apply.kill();
    let _ = apply.wait();
    let resumed = with_ca(&lab, &["resume", "--state-dir", "state"])
        .output()
        .expect("runs");
    assert_eq!(resumed.status.code(), Some(0), "{}", text(&resumed));
    let servers = lab.servers();
    assert_all_repaired(&servers);
    for (name, server) in &servers {
        let approvals = calls(server)
            .iter()
            .filter(|c| c.starts_with("spDeployUpdate") || c.starts_with("ExecuteSPDeployUpdate"))
            .count();
        assert_eq!(approvals, 1, "{name} approved {approvals} times");
    }
    let verify = with_ca(&lab, &["verify", "hierarchy.yaml"])
        .output()
        .expect("runs");
    assert_eq!(verify.status.code(), Some(0), "{}", text(&verify));
    assert!(
        text(&verify).contains("6 server(s) reached over TLS 1.0 or 1.1"),
        "{}",
        text(&verify)
    );
}

#[test]
fn a_2008_r2_host_with_tls_1_2_enabled_negotiates_1_2_without_tls_min() {
    // hq: SQL Server 2012 on that Windows; r1: its web site. Both offer TLS 1.2 with AES-CBC
    // suites only, which rustls lacks: the client goes on through OpenSSL, validated, at 1.2.
    let lab = wsus30_lab(
        &https_mixed(None),
        &[
            "--platform",
            "hq=2008r2-tls12/2012",
            "--platform",
            "r1=2008r2-tls12",
        ],
    );
    let plan = with_ca(
        &lab,
        &[
            "plan",
            "hierarchy.yaml",
            "--online",
            "--only",
            "hq",
            "--only",
            "r1",
        ],
    )
    .output()
    .expect("runs");
    let out = text(&plan);
    assert_eq!(plan.status.code(), Some(0), "{out}");
    assert_eq!(
        out.matches("TLS: TLS 1.2, TLS_RSA_WITH_AES_128_CBC_SHA256")
            .count(),
        2,
        "{out}"
    );
    assert!(!out.contains("weak"), "{out}");
}

#[test]
fn a_site_without_ssl_is_named_and_the_console_way_works() {
    // The lab's site for r1 is plain HTTP (as installed); a topology that asks HTTPS of it hears
    // http.sys answer its ClientHello, and is told to use plain HTTP.
    let lab = wsus30_lab(MIXED, &[]);
    std::fs::write(
        lab.path("https.yaml"),
        https_mixed(Some("1.0")).replace("port: 8531", "port: 8530"),
    )
    .expect("written");
    let plan = with_ca(
        &lab,
        &[
            "plan",
            "https.yaml",
            "--online",
            "--only",
            "r1",
            "--allow-partial",
        ],
    )
    .output()
    .expect("runs");
    assert_eq!(plan.status.code(), Some(1), "{}", text(&plan));
    assert!(
        text(&plan).contains("answers plain HTTP, not TLS")
            && text(&plan).contains("`api.tls: false`"),
        "{}",
        text(&plan)
    );
    // As the console reaches it: plain HTTP on 8530, NTLM; the SUSDBs over TLS 1.0.
    std::fs::write(
        lab.path("console.yaml"),
        MIXED.replace(
            "    auth: { method: sql, user: wsus_repair, password_env: WSUS_RESET_TEST_PW }",
            "    auth: { method: sql, user: wsus_repair, password_env: WSUS_RESET_TEST_PW }\n    tls_min: \"1.0\"",
        ),
    )
    .expect("written");
    let applied = with_ca(
        &lab,
        &["apply", "console.yaml", "--yes", "--state-dir", "p"],
    )
    .output()
    .expect("runs");
    assert_eq!(applied.status.code(), Some(0), "{}", text(&applied));
    assert_all_repaired(&lab.servers());
}

#[test]
fn the_wsus30_example_rehearses_as_written() {
    let out = Command::new(env!("CARGO_BIN_EXE_wsus-reset"))
        .args(["rehearse", "examples/wsus30.yaml"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = text(&out);
    assert!(out.contains("6 of 6 servers verified"), "{out}");
    assert_eq!(
        out.matches("TLS: TLS 1.0").count(),
        3,
        "the three SQL Server 2005 SUSDBs over TLS 1.0: {out}"
    );
    assert!(
        out.contains("via web service http://wsus-north-1.fabrikam.example:8530"),
        "{out}"
    );
}
