//! `diagnose` on a corpus built from the fixtures in `tests/fixtures/logs` the way real corpora
//! come: CRLF endings, UTF-16LE with a BOM, gzip, a truncated last line, and a file that cannot be
//! read.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/logs");

fn fixture(path: &str) -> String {
    std::fs::read_to_string(Path::new(FIXTURES).join(path)).expect("fixture")
}

pub(crate) fn crlf(text: &str) -> String {
    text.replace('\n', "\r\n")
}

/// As PowerShell 5's `>` and `Out-File` save text (with [`crlf`] line ends for a whole file).
pub(crate) fn utf16le_with_bom(text: &str) -> Vec<u8> {
    let mut bytes = vec![0xFF, 0xFE];
    for unit in text.encode_utf16() {
        bytes.extend_from_slice(&unit.to_le_bytes());
    }
    bytes
}

fn gzip(text: &str) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(text.as_bytes()).expect("gzip");
    encoder.finish().expect("gzip")
}

/// The corpus: clients under `clients/`, server logs under `servers/<name>/`.
fn corpus() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("scratch");
    let root = dir.path();
    let write = |path: &str, bytes: &[u8]| {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("dir");
        std::fs::write(path, bytes).expect("write");
    };
    write(
        "clients/PC-001/WindowsUpdate.log",
        crlf(&fixture("clients/PC-001.log")).as_bytes(),
    );
    write(
        "clients/PC-002/WindowsUpdate.log",
        &utf16le_with_bom(&crlf(&fixture("clients/PC-002.log"))),
    );
    write(
        "clients/PC-003.log.gz",
        &gzip(&fixture("clients/PC-003.log")),
    );
    for pc in ["PC-004", "PC-005", "PC-006"] {
        write(
            &format!("clients/{pc}.log"),
            fixture(&format!("clients/{pc}.log")).as_bytes(),
        );
    }
    // A gzip header and then garbage: reported and skipped.
    write(
        "clients/PC-007.log.gz",
        &[0x1F, 0x8B, 8, 0, 0, 0, 0, 0, 0, 3, 0xFF, 0xFF],
    );
    for server in ["wsus-emea", "wsus-paris", "wsus-tokyo"] {
        let path = format!("servers/{server}/SoftwareDistribution.log");
        write(&path, crlf(&fixture(&path)).as_bytes());
    }
    dir
}

fn diagnose(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wsus-reset"))
        .arg("diagnose")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("wsus-reset runs")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn each_server_gets_its_verdict_from_the_evidence_on_both_sides() {
    let dir = corpus();
    let out = diagnose(
        dir.path(),
        &[
            "--client-log",
            "clients",
            "--server-log",
            "servers/*/SoftwareDistribution.log",
            "--format",
            "json",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let logs = &report["logs"];
    assert_eq!(logs["client_logs"], 6, "7 files, one unreadable");
    assert_eq!(logs["server_logs"], 3);
    let skipped = logs["skipped"].as_array().expect("skipped");
    assert_eq!(skipped.len(), 1);
    assert!(
        skipped[0]["path"]
            .as_str()
            .expect("path")
            .ends_with("PC-007.log.gz")
    );

    let verdicts: Vec<(String, String)> = logs["servers"]
        .as_array()
        .expect("servers")
        .iter()
        .map(|s| {
            (
                s["server"].as_str().expect("name").to_string(),
                s["verdict"].as_str().expect("verdict").to_string(),
            )
        })
        .collect();
    assert_eq!(
        verdicts,
        [
            // Keyed by the whole host (and a port other than the default); the client that
            // named wsus-emea by its bare name counts for the one host of that name.
            (
                "wsus-emea.corp.example:8530".to_string(),
                "broken".to_string()
            ),
            ("wsus-paris:8530".into(), "broken".into()),
            ("wsus-lyon".into(), "suspect".into()),
            ("wsus-tokyo".into(), "other-cause".into()),
        ],
        "hq's client failed with another error (0x80244010): not listed"
    );
    let emea = &logs["servers"][0];
    assert_eq!(emea["keys"], serde_json::json!(["8862"]));
    assert_eq!(emea["kb954960_faults"], 2);
    assert_eq!(emea["first"], "2009-03-27 10:55:29.193");
    let clients = emea["clients"].as_array().expect("clients");
    let names: Vec<&str> = clients
        .iter()
        .map(|c| c["client"].as_str().expect("name"))
        .collect();
    // PC-001 is CRLF; PC-002 is UTF-16LE with interleaved threads: both tied by their fault IDs.
    assert_eq!(names, ["PC-001", "PC-002"]);
    assert!(
        clients.iter().all(|c| c["confirmed_ids"] == 1),
        "{clients:?}"
    );
    assert_eq!(
        clients[0]["recovered"], true,
        "PC-001 detected fine the next day"
    );
    assert_eq!(
        clients[1]["recovered"], false,
        "PC-002's later success was a detection against Microsoft Update, on another thread"
    );
    assert_eq!(
        clients[1]["fault_ids"],
        serde_json::json!(["5d0f3b55-7a7e-4c5e-9a6e-0a1b2c3d4e5f"])
    );
    // PC-003 is gzip with a truncated last line.
    assert_eq!(logs["servers"][1]["clients"][0]["client"], "PC-003");
    // PC-005 had succeeded before the fault came back.
    assert_eq!(logs["servers"][2]["clients"][0]["recovered"], false);
    assert!(
        report["repair_command"]
            .as_str()
            .is_some_and(|c| c.contains("wsus-reset apply")),
        "{report}"
    );
}

#[test]
fn the_text_report_names_the_broken_servers_and_the_command_and_clean_logs_exit_0() {
    let dir = corpus();
    let out = diagnose(
        dir.path(),
        &["--client-log", "clients", "--server-log", "servers"],
    );
    assert_eq!(out.status.code(), Some(1));
    let said = text(&out);
    assert!(said.contains("wsus-emea: BROKEN"), "{said}");
    assert!(said.contains("dictionary keys 8862"), "{said}");
    assert!(said.contains("wsus-lyon: SUSPECT"), "{said}");
    assert!(
        said.contains("skipped") && said.contains("PC-007.log.gz"),
        "{said}"
    );
    assert!(
        said.contains("2 broken, 1 suspect, 1 other cause"),
        "{said}"
    );
    // Each side keeps its own clock, labelled: the client logged 11:55 local for the fault the
    // server logged at 10:55 UTC.
    assert!(
        said.contains("client PC-001: 0x8024400E 1 time(s), 2009-03-27 11:55:29:193 (local time)"),
        "{said}"
    );
    assert!(
        said.contains("2009-03-27 10:55:29.193 to 2009-03-27 12:10:00.300 UTC"),
        "{said}"
    );

    let clean = diagnose(dir.path(), &["--client-log", "clients/PC-006.log"]);
    assert_eq!(clean.status.code(), Some(0), "{}", text(&clean));
    let nothing = diagnose(dir.path(), &[]);
    assert_eq!(nothing.status.code(), Some(2));
}

#[test]
fn a_log_path_that_matches_nothing_is_bad_input_naming_it() {
    let dir = corpus();
    let out = diagnose(
        dir.path(),
        &["--client-log", "clients", "--client-log", "client/PC-9*"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("no log file matches client/PC-9*"),
        "{}",
        text(&out)
    );
    // Only unreadable files: nothing to judge from, also bad input.
    std::fs::write(dir.path().join("broken.gz"), [0x1F, 0x8B, 1, 2, 3]).expect("written");
    let out = diagnose(dir.path(), &["--client-log", "broken.gz"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("no log could be read"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_glob_matching_directories_walks_them() {
    let dir = corpus();
    // clients/PC-001 and clients/PC-002 are directories holding WindowsUpdate.log.
    let out = diagnose(
        dir.path(),
        &["--client-log", "clients/PC-00[12]", "--format", "json"],
    );
    let logs: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(logs["logs"]["client_logs"], 2, "{}", text(&out));
}

#[test]
fn a_topology_whose_servers_all_cannot_be_probed_gives_no_evidence_and_exit_1() {
    let dir = corpus();
    std::fs::write(
        dir.path().join("h.yaml"),
        "version: 1\nservers:\n  - name: hq\n    sql: { host: sql-hq.test.example, encrypt: danger-plaintext, auth: { method: sql, user: u, password_env: WSUS_RESET_TEST_PW } }\n",
    )
    .expect("written");
    let out = Command::new(env!("CARGO_BIN_EXE_wsus-reset"))
        .args([
            "diagnose",
            "--topology",
            "h.yaml",
            "--connect-via",
            "127.0.0.1:1",
            "--connect-timeout",
            "5",
        ])
        .env("WSUS_RESET_TEST_PW", "x")
        .current_dir(dir.path())
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("no server of the topology could be probed"),
        "{}",
        text(&out)
    );
}

/// The real Windows 10/11 and Server 2016 logs in `shared/data/reallogs` (sources in its README).
fn reallogs() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data/reallogs/case-05-win10-formats-clean/clients")
}

#[test]
fn real_windows_10_and_server_2016_logs_without_the_fault_are_read_and_judged_clean() {
    let dir = tempfile::tempdir().expect("scratch");
    let clients = reallogs();
    let out = diagnose(
        dir.path(),
        &[
            "--client-log",
            clients.to_str().expect("UTF-8"),
            "--format",
            "json",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    // UTF-8, UTF-8 with a BOM, UTF-16LE and gzip, dates 2018.10.21, 2020/11/22, 2024-04-11.
    assert_eq!(report["logs"]["client_logs"], 5, "{}", text(&out));
    assert!(
        report["logs"]["skipped"]
            .as_array()
            .is_none_or(Vec::is_empty)
    );
    // PC-RAJA's SyncUpdates fault is `ConfigChanged`, from which it recovers: not this fault.
    assert_eq!(
        report["logs"]["servers"],
        serde_json::json!([]),
        "{}",
        text(&out)
    );
}

#[test]
fn the_modern_fault_detail_is_read_and_tied_to_the_server_log_by_its_id() {
    // PC-RAJA's real log, its SyncUpdates fault turned into this one (InternalServerError) and
    // its Microsoft Update URL into a WSUS server's; the server log shows the same fault ID.
    let real = std::fs::read_to_string(reallogs().join("PC-RAJA/WindowsUpdate.log")).expect("log");
    let faulty = real
        .replace(
            "<ErrorCode>ConfigChanged</ErrorCode>",
            "<ErrorCode>InternalServerError</ErrorCode>",
        )
        .replace(
            "https://fe2cr.update.microsoft.com/v6/",
            "http://wsus-emea.corp.example:8530/",
        );
    assert_ne!(faulty, real);
    // Windows 8.1: the fault's detail after `Soap fault info:`, then 0x80244007, from the
    // server named in an earlier thread only.
    let windows8 = "\
2015-06-11\t10:33:10:100\t 900\t1aa0\tPT\t  + ServiceId = {3DA21691-E39D-4DA6-8A4B-B43877BCB1B7}, Server URL = http://wsus-emea.corp.example:8530/ClientWebService/client.asmx
2015-06-11\t10:33:19:418\t 900\t1f0c\tWS\tWARNING: Nws Failure: errorCode=0x803d0000
2015-06-11\t10:33:19:418\t 900\t1f0c\tWS\tWARNING: The body of the received message contained a fault.
2015-06-11\t10:33:19:418\t 900\t1f0c\tWS\tWARNING: Soap fault info:
2015-06-11\t10:33:19:418\t 900\t1f0c\tWS\tWARNING:   detail:<detail><ErrorCode>InternalServerError</ErrorCode><Message></Message><ID>0a1b2c3d-0000-4000-8000-00000000e8e8</ID><Method>\"http://www.microsoft.com/SoftwareDistribution/Server/ClientWebService/SyncUpdates\"</Method></detail>
2015-06-11\t10:33:19:418\t 900\t1f0c\tWS\tWARNING: MapToSusHResult mapped Nws error 0x803d0000 to 0x80244007
2015-06-11\t10:33:19:418\t 900\t1f0c\tPT\tWARNING: PTError: 0x80244007
2015-06-11\t10:33:19:418\t 900\t1f0c\tPT\tWARNING: SyncUpdates_WithRecovery failed.: 0x80244007
";
    // A failure in a log that never names its server.
    let nameless = "2009-03-27\t11:55:29:193\t788\tee4\tPT\tWARNING: SyncUpdates failure, error = 0x8024400E, soap client error = 7\n";
    let server = "\
2020-11-22 11:46:56.020 UTC Error w3wp.12 ClientImplementation.SyncUpdates System.ArgumentException: Item has already been added. Key in dictionary: '8862'  Key being added: '8862'
at System.Collections.Hashtable.Insert(Object key, Object nvalue, Boolean add)
at Microsoft.UpdateServices.Internal.ClientImplementation.GetSyncInfo(DataAccess dataAccess, Hashtable stateTable, Hashtable deploymentTable, Boolean haveGroupsChanged, Boolean doChunking)
2020-11-22 11:46:56.022 UTC Warning w3wp.12 SoapUtilities.CreateException ThrowException: actor = http://wsus-emea.corp.example:8530/ClientWebService/client.asmx, ID=1aa87b66-9bd6-42c1-975e-b24fa422f7e5, ErrorCode=InternalServerError, Message=, Client=?
";
    let dir = tempfile::tempdir().expect("scratch");
    let write = |path: &str, text: &str| {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("dir");
        std::fs::write(path, text).expect("written");
    };
    write("clients/PC-RAJA/WindowsUpdate.log", &faulty);
    write("clients/PC-W81/WindowsUpdate.log", windows8);
    write("clients/PC-NONAME/WindowsUpdate.log", nameless);
    write("servers/wsus-emea/SoftwareDistribution.log", server);
    let out = diagnose(
        dir.path(),
        &[
            "--client-log",
            "clients",
            "--server-log",
            "servers",
            "--format",
            "json",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let servers = report["logs"]["servers"].as_array().expect("servers");
    assert_eq!(servers.len(), 1, "{}", text(&out));
    assert_eq!(servers[0]["server"], "wsus-emea.corp.example:8530");
    assert_eq!(servers[0]["verdict"], "broken");
    let clients: Vec<(&str, &Value)> = servers[0]["clients"]
        .as_array()
        .expect("clients")
        .iter()
        .map(|c| (c["client"].as_str().expect("name"), &c["confirmed_ids"]))
        .collect();
    assert_eq!(
        clients,
        [
            ("PC-RAJA", &serde_json::json!(1)),
            ("PC-W81", &serde_json::json!(0))
        ],
        "PC-RAJA's fault ID is in the server log; PC-W81 takes the server its log named last"
    );
    let unknown = report["logs"]["server_unknown"]
        .as_array()
        .expect("server unknown");
    assert_eq!(unknown[0]["client"], "PC-NONAME");
    // In text, the server is shown by its short name and the nameless client apart.
    let out = diagnose(
        dir.path(),
        &["--client-log", "clients", "--server-log", "servers"],
    );
    let said = text(&out);
    assert!(said.contains("\nwsus-emea: BROKEN"), "{said}");
    assert!(
        said.contains("server unknown") && !said.contains("(unknown server)"),
        "{said}"
    );
}

#[test]
fn servers_are_told_apart_by_their_whole_host() {
    let client = |url: &str, id: &str| {
        format!(
            "2009-03-27\t11:55:29:002\t788\tee4\tPT\t  + ServiceId = {{3DA2}}, Server URL = {url}\n\
             2009-03-27\t11:55:29:193\t788\tee4\tPT\tWARNING: SyncUpdates failure, error = 0x8024400E\n\
             2009-03-27\t11:55:29:196\t788\tee4\tPT\tWARNING: ID:{id}\n"
        )
    };
    let dir = tempfile::tempdir().expect("scratch");
    for (name, url, id) in [
        (
            "PC-E",
            "http://wsus.emea.contoso.com/ClientWebService/client.asmx",
            "e0000000-0000-4000-8000-000000000001",
        ),
        (
            "PC-A",
            "http://wsus.apac.contoso.com/ClientWebService/client.asmx",
            "a0000000-0000-4000-8000-000000000002",
        ),
        (
            "PC-IP",
            "http://192.168.178.143:8530/ClientWebService/client.asmx",
            "c0000000-0000-4000-8000-000000000003",
        ),
    ] {
        std::fs::write(dir.path().join(format!("{name}.log")), client(url, id)).expect("written");
    }
    let out = diagnose(
        dir.path(),
        &["--client-log", "PC-*.log", "--format", "json"],
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let mut servers: Vec<&str> = report["logs"]["servers"]
        .as_array()
        .expect("servers")
        .iter()
        .map(|s| s["server"].as_str().expect("name"))
        .collect();
    servers.sort_unstable();
    assert_eq!(
        servers,
        [
            "192.168.178.143:8530",
            "wsus.apac.contoso.com",
            "wsus.emea.contoso.com"
        ],
        "not `192`, and not one `wsus` for two servers"
    );
}
