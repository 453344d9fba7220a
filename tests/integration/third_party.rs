//! The lab through three independent TDS clients, FreeTDS `tsql`, python-tds and Node's tedious
//! (asking for TDS 7.2), so it is not only tiberius that finds it a SQL Server 2005.
//! `scripts/test.sh` installs them and sets `WSUS_RESET_THIRD_PARTY=required`; elsewhere a
//! missing client skips its test, saying so.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::repair::{LabProcess, PASSWORD, calls, text};

/// One server reached as `localhost`: both clients send the host they connect to as the
/// LOGIN7 server name, which is how the lab routes.
const LOCAL: &str = "\
version: 1
servers:
  - name: wsus-local
    sql: { host: localhost, auth: { method: sql, user: wsus_repair, password_env: WSUS_RESET_TEST_PW } }
";

#[allow(clippy::print_stderr, reason = "a skipped test says why")]
fn available(tool: &str, probe: &mut Command) -> bool {
    let found = probe
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert_ne!(
            std::env::var("WSUS_RESET_THIRD_PARTY").as_deref(),
            Ok("required"),
            "{tool} is required here but missing: run scripts/test.sh, which installs it"
        );
        eprintln!("skipped: {tool} is not installed (scripts/test.sh installs it)");
    }
    found
}

fn port(lab: &LabProcess) -> String {
    lab.addr.rsplit(':').next().unwrap_or_default().to_string()
}

#[test]
fn freetds_tsql_logs_in_runs_a_batch_and_sees_real_errors() {
    if !available("FreeTDS tsql", Command::new("tsql").arg("-C")) {
        return;
    }
    let lab = LabProcess::start_with(LOCAL, "broken", "faults: []\n", 0);
    let session = |password: &str| {
        let mut child = Command::new("tsql")
            .args([
                "-H",
                "localhost",
                "-p",
                &port(&lab),
                "-U",
                "wsus_repair",
                "-P",
                password,
            ])
            .env("TDSVER", "7.4")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tsql starts");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(
                format!("{}\ngo\nSELECT 1\ngo\nexit\n", susdb::sql::SERVER_VERSION).as_bytes(),
            )
            .expect("batch sent");
        child.wait_with_output().expect("tsql ends")
    };
    let out = session(PASSWORD);
    let said = text(&out);
    assert!(said.contains("9.00.4035.00"), "{said}");
    assert!(
        said.contains("statement not supported by the lab: SELECT 1"),
        "{said}"
    );
    let refused = text(&session("wrong"));
    assert!(
        refused.contains("18456") || refused.contains("Login failed"),
        "{refused}"
    );
}

const PYTHON: &str = r#"
import sys, uuid, pytds
port, password = int(sys.argv[1]), sys.argv[2]
with pytds.connect(server="localhost", port=port, user="wsus_repair", password=password,
                   database="SUSDB", autocommit=True) as conn:
    with conn.cursor() as cur:
        cur.execute(sys.argv[3])
        print("version", cur.fetchone()[0])
        cur.callproc("dbo.spDeclineUpdate", {
            "@updateID": uuid.UUID("D359F493-0AAD-43FA-AF5C-6763326CD98F"),
            "@adminName": "python-tds", "@failIfReplica": True})
        print("return", cur.return_value)
        try:
            cur.execute("SELECT 1")
        except pytds.Error as e:
            print("error", e)
"#;

#[test]
fn python_tds_runs_a_batch_and_calls_a_procedure_with_named_parameters() {
    if !available(
        "python-tds",
        Command::new("python3").args(["-c", "import pytds"]),
    ) {
        return;
    }
    let lab = LabProcess::start_with(LOCAL, "broken", "faults: []\n", 0);
    let out = Command::new("python3")
        .args([
            "-c",
            PYTHON,
            &port(&lab),
            PASSWORD,
            susdb::sql::SERVER_VERSION,
        ])
        .output()
        .expect("python3 runs");
    let said = text(&out);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(said.contains("version 9.00.4035.00"), "{said}");
    assert!(said.contains("return 0"), "{said}");
    assert!(
        said.contains("statement not supported by the lab: SELECT 1"),
        "{said}"
    );
    let servers = lab.servers();
    assert_eq!(calls(&servers["wsus-local"]), ["spDeclineUpdate"]);
    assert_eq!(servers["wsus-local"]["update_declined"], true);
    assert_eq!(
        servers["wsus-local"]["calls"][0]["params"]["@adminName"],
        "python-tds"
    );
}

/// tedious (Node.js) asking for TDS 7.2, as a SQL Server 2005 client would: it sends its session
/// `SET` options at connect, then a version query and a procedure call with typed parameters.
const NODE: &str = r#"
const { Connection, Request, TYPES } = require('tedious');
const [port, password] = process.argv.slice(1);
const connection = new Connection({
  server: 'localhost',
  authentication: { type: 'default', options: { userName: 'wsus_repair', password } },
  options: { port: Number(port), database: 'SUSDB', encrypt: false, tdsVersion: '7_2',
             connectTimeout: 10000, requestTimeout: 10000 },
});
const run = (sql) => new Promise((resolve, reject) => {
  const rows = [];
  const request = new Request(sql, (err) => (err ? reject(err) : resolve(rows)));
  request.on('row', (columns) => rows.push(columns.map((c) => c.value)));
  connection.execSql(request);
});
const call = (name, params) => new Promise((resolve, reject) => {
  let status;
  const request = new Request(name, (err) => (err ? reject(err) : resolve(status)));
  for (const [n, type, value] of params) request.addParameter(n, type, value);
  request.on('returnValue', () => {});
  request.on('doneProc', (_rowCount, _more, returnStatus) => { status = returnStatus; });
  connection.callProcedure(request);
});
connection.on('connect', async (err) => {
  if (err) { console.log('connect error', err.message); process.exit(1); }
  try {
    const [[version]] = await run('SELECT @@VERSION');
    console.log('version', version.split('\n')[0]);
    const decline = [
      ['updateID', TYPES.UniqueIdentifier, 'D359F493-0AAD-43FA-AF5C-6763326CD98F'],
      ['adminName', TYPES.NVarChar, 'tedious'],
      ['failIfReplica', TYPES.Bit, true],
    ];
    console.log('return', await call('dbo.spDeclineUpdate', decline));
    try {
      await call('dbo.spDeclineUpdate', [...decline, ['deadline', TYPES.DateTime, new Date()]]);
    } catch (e) {
      console.log('refused', e.number, e.message);
    }
  } catch (e) {
    console.log('error', e.number, e.message);
    process.exit(1);
  }
  connection.close();
});
connection.connect();
"#;

#[test]
fn tedious_asking_for_tds_7_2_sets_its_session_options_and_calls_a_procedure() {
    let node_path = std::env::var("WSUS_RESET_NODE_PATH").unwrap_or_default();
    if !available(
        "tedious (Node.js)",
        Command::new("node")
            .args(["-e", "require('tedious')"])
            .env("NODE_PATH", &node_path),
    ) {
        return;
    }
    let lab = LabProcess::start_with(LOCAL, "broken", "faults: []\n", 0);
    let out = Command::new("node")
        .args(["-e", NODE, &port(&lab), PASSWORD])
        .env("NODE_PATH", &node_path)
        .output()
        .expect("node runs");
    let said = text(&out);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(
        said.contains("version Microsoft SQL Server 2005 - 9.00.4035.00"),
        "{said}"
    );
    assert!(said.contains("return 0"), "{said}");
    assert!(
        said.contains("refused 8145 @deadline is not a parameter for procedure spDeclineUpdate."),
        "{said}"
    );
    let servers = lab.servers();
    assert_eq!(calls(&servers["wsus-local"]), ["spDeclineUpdate"]);
    assert_eq!(
        servers["wsus-local"]["calls"][0]["params"]["@adminName"],
        "tedious"
    );
}
