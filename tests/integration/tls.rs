//! Encrypted connections end to end: `wsus-reset lab --tls-generate` holds a certificate from a
//! throwaway authority, and the client validates it exactly as it would a production server's.

use crate::repair::{
    LabProcess, REPLICA_CALLS, TOPOLOGY, assert_all_repaired, assert_repaired, calls, text,
};

/// A self-signed certificate for `host`, a name the lab's certificates hold: trusted by nobody
/// but itself. Written to the lab's directory; returns its file name.
pub(crate) fn impostor_ca(lab: &LabProcess, host: &str) -> String {
    let impostor =
        rcgen::generate_simple_self_signed(vec![host.to_string()]).expect("a certificate");
    std::fs::write(lab.path("impostor.pem"), impostor.cert.pem()).expect("written");
    "impostor.pem".to_string()
}

#[test]
fn a_hierarchy_with_every_encryption_level_is_repaired_and_a_foreign_authority_changes_nothing() {
    // hq, r1a, r2, r2a: `required` (the default); r1: TDS 8.0 `strict`; r2b: `off` (login only).
    let topology = TOPOLOGY
        .replace(
            "sql: { host: sql-r1.test.example }",
            "sql: { host: sql-r1.test.example, encrypt: strict }",
        )
        .replace(
            "sql: { host: sql-r2b.test.example }",
            "sql: { host: sql-r2b.test.example, encrypt: off }",
        );
    assert_eq!(
        topology.matches("encrypt:").count(),
        2,
        "the test hierarchy changed: update this test"
    );
    let lab = LabProcess::start_tls(&topology, "broken");
    let impostor = impostor_ca(&lab, "sql-hq.test.example");

    let refused = lab
        .command(&[
            "apply",
            "hierarchy.yaml",
            "--yes",
            "--state-dir",
            "refused",
            "--connect-via-ca",
            &impostor,
        ])
        .output()
        .expect("runs");
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(
        text(&refused).contains("certificate was rejected (UnknownIssuer)"),
        "the refusal names the certificate: {}",
        text(&refused)
    );
    let servers = lab.servers();
    for (name, server) in &servers {
        assert!(calls(server).is_empty(), "{name} was changed: {server}");
    }

    let applied = lab
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
    assert_eq!(applied.status.code(), Some(0), "{}", text(&applied));
    let servers = lab.servers();
    assert_all_repaired(&servers);
    assert_eq!(calls(&servers["r2"]), REPLICA_CALLS);
    let verified = lab
        .command(&["verify", "hierarchy.yaml", "--connect-via-ca", "tls/ca.pem"])
        .output()
        .expect("runs");
    assert_eq!(verified.status.code(), Some(0), "{}", text(&verified));
}

#[test]
fn without_connect_via_the_topology_ca_file_decides_whom_to_trust() {
    // The lab serves the server by its host name; the client reaches it at host:port with no
    // --connect-via, as it would reach production.
    let hierarchy = "\
version: 1
defaults:
  sql:
    auth: { method: sql, user: wsus_repair, password_env: WSUS_RESET_TEST_PW }
servers:
  - name: hq
    sql: { host: localhost }
";
    let lab = LabProcess::start_tls(hierarchy, "broken");
    let port = lab.addr.rsplit(':').next().expect("a port");
    let impostor = impostor_ca(&lab, "sql-hq.test.example");
    let topology = |trust: &str| {
        hierarchy.replace(
            "sql: { host: localhost }",
            &format!("sql: {{ host: localhost, port: {port}, {trust} }}"),
        )
    };
    let apply = |name: &str, trust: &str| {
        std::fs::write(lab.path(name), topology(trust)).expect("written");
        let state_dir = format!("{name}.state");
        lab.direct(&["apply", name, "--yes", "--state-dir", &state_dir])
            .output()
            .expect("runs")
    };

    let impostor_trust = format!("ca_file: {impostor}");
    let refused = apply("impostor.yaml", &impostor_trust);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(
        text(&refused).contains("certificate was rejected (UnknownIssuer)"),
        "{}",
        text(&refused)
    );
    assert!(calls(&lab.servers()["hq"]).is_empty());

    // The right authority, but a name the certificate does not hold.
    std::fs::write(
        lab.path("by-address.yaml"),
        topology("ca_file: tls/ca.pem").replace("host: localhost", "host: 127.0.0.1"),
    )
    .expect("written");
    let misnamed = lab
        .direct(&["apply", "by-address.yaml", "--yes", "--state-dir", "a"])
        .output()
        .expect("runs");
    assert_eq!(misnamed.status.code(), Some(1), "{}", text(&misnamed));
    assert!(
        text(&misnamed).contains("certificate was rejected (")
            && text(&misnamed).contains("127.0.0.1"),
        "{}",
        text(&misnamed)
    );
    assert!(calls(&lab.servers()["hq"]).is_empty());

    let applied = apply("trusted.yaml", "ca_file: tls/ca.pem");
    assert_eq!(applied.status.code(), Some(0), "{}", text(&applied));
    assert_repaired(&lab.servers(), "hq");
}
