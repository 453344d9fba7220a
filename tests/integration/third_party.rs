//! The lab through three independent TDS clients, FreeTDS `tsql`, python-tds and Node's tedious
//! (asking for TDS 7.2), so it is not only tiberius that finds it a SQL Server 2005.
//! `scripts/test.sh` installs them and sets `WSUS_RESET_THIRD_PARTY=required`; elsewhere a
//! missing client skips its test, saying so.

use std::io::{BufRead, Write};
use std::process::{Command, Stdio};

use crate::repair::{LabProcess, PASSWORD, calls, text};
use susdb_lab::api::NS;

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

/// zeep drives the lab's administration web service: through NTLM (requests-ntlm), with the
/// lab's own WSDL and with the WSDL a real WSUS serves (`shared/data/wsus`), so the lab's answers
/// are checked against a real server's schema.
const ZEEP: &str = r#"
import sys
import requests
from requests_ntlm import HttpNtlmAuth
from zeep import Client, Settings
from zeep.transports import Transport

port, user, password, wsdl_path = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
address = f"http://127.0.0.1:{port}/ApiRemoting30/WebService.asmx"
ns = "http://www.microsoft.com/SoftwareDistribution/Server/ApiRemotingWebService"
update = "d359f493-0aad-43fa-af5c-6763326cd98f"

def session(host, auth=True, account=None):
    s = requests.Session()
    s.headers["Host"] = host
    if auth:
        s.auth = HttpNtlmAuth(account or user, password)
    return s

def service(host, wsdl, account=None):
    client = Client(wsdl, transport=Transport(session=session(host, account=account)), settings=Settings(strict=False))
    return client.create_service(f"{{{ns}}}ApiRemotingSoap", address)

r = session("wsus-b", auth=False).post(address, data=b"<x/>")
print("anonymous", r.status_code, r.headers.get("WWW-Authenticate"))
r = requests.Session()
r.headers["Host"] = "wsus-b"
r.auth = HttpNtlmAuth(user, "wrong")
print("wrong password", r.get(f"{address}?WSDL").status_code)
r = requests.Session()
r.headers["Host"] = "wsus-b"
r.auth = HttpNtlmAuth("CORP\\reporter", password)
print("reporter", r.get(f"{address}?WSDL").status_code)
reporter = service("wsus-hq", wsdl_path, account="CORP\\reporter")
print("reporter role", reporter.GetCurrentUserRole())
decline = (f'<?xml version="1.0" encoding="utf-8"?><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">'
    f'<soap:Body><ExecuteSPDeclineUpdate xmlns="{ns}"><updateId>{update}</updateId><adminName>x</adminName>'
    f'<failIfReplica>true</failIfReplica></ExecuteSPDeclineUpdate></soap:Body></soap:Envelope>')
r = session("wsus-hq", account="CORP\\reporter").post(address, data=decline.encode(), headers={
    "Content-Type": "text/xml; charset=utf-8", "SOAPAction": f'"{ns}/ExecuteSPDeclineUpdate"'})
print("reporter change", r.status_code)
print("version", service("wsus-b", f"{address}?WSDL").GetServerVersion())
replica = service("wsus-b", wsdl_path)
config = replica.ExecuteSPGetConfiguration()
print("replica", config.Configuration.ReplicaMode, "upstream", config.Configuration.UpstreamServerName)
try:
    replica.ExecuteSPDeclineUpdate(updateId=update, adminName="CORP\\zeep", failIfReplica=True)
    print("declined on a replica")
except Exception as e:
    print("refused", str(e).split("--->")[-1].strip())
hq = service("wsus-hq", wsdl_path)
database = hq.GetDatabaseConfiguration()
print("database", database.databaseName, database.wmsdeInstanceName)
revisions = hq.ExecuteSPGetRevisions(preferredCulture="en", updateId=update).minimalProperties.GenericReadableRow
print("revisions", [(r.Values.anyType[1], r.Values.anyType[24], r.Values.anyType[22]) for r in revisions])
one = hq.ExecuteSPGetUpdateById(preferredCulture="en", id={"UpdateId": update, "RevisionNumber": 101})
print("title", one.minimalProperties.GenericReadableRow[0].Values.anyType[29])
hq.ExecuteSPDeclineUpdate(updateId=update, adminName="CORP\\zeep", failIfReplica=True)
rows = hq.ExecuteSPGetDeploymentsByUpdate1(id={"UpdateId": update, "RevisionNumber": 101})
print("rows after decline", len(rows or []))
empty = "00000000-0000-0000-0000-000000000000"
below = hq.ExecuteSPGetAllDownstreamServers(parentServerId=empty, includeNestedChildren=True) or []
print("downstream", [(r.Values.anyType[0], str(r.Values.anyType[3]), r.Values.anyType[6]) for r in below])
"#;

/// A lab of `dir/h.yaml` serving its web service with NTLM for `CORP\\wsus_repair` (and
/// `CORP\\reporter` without the administrator role); returns it and the web service's address.
fn api_lab(dir: &std::path::Path, extra: &[&str]) -> (std::process::Child, String) {
    let mut lab = Command::new(env!("CARGO_BIN_EXE_wsus-reset"))
        .args([
            "lab",
            "h.yaml",
            "--listen",
            "127.0.0.1:0",
            "--api-listen",
            "127.0.0.1:0",
            "--state",
            "state.json",
            "--windows-user",
            "CORP\\wsus_repair",
            "--windows-password-env",
            "WSUS_RESET_TEST_PW",
            "--api-reporter",
            "CORP\\reporter",
        ])
        .args(extra)
        .env("WSUS_RESET_TEST_PW", PASSWORD)
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the lab starts");
    let mut lines = std::io::BufReader::new(lab.stdout.take().expect("stdout")).lines();
    let api = loop {
        let line = lines.next().expect("a line").expect("text");
        if let Some(rest) = line.strip_prefix("api listening on ") {
            break rest.split_whitespace().next().expect("ADDR").to_string();
        }
    };
    (lab, api)
}

#[test]
fn curl_reaches_the_labs_web_service_over_validated_https_with_ntlm() {
    if !available("curl", Command::new("curl").arg("--version")) {
        return;
    }
    let dir = tempfile::tempdir().expect("scratch");
    std::fs::write(
        dir.path().join("h.yaml"),
        "version: 1\nservers:\n  - name: wsus-hq\n    sql: { host: sql-hq.test.example }\n",
    )
    .expect("topology");
    let (mut lab, api) = api_lab(dir.path(), &["--tls-generate", "tls"]);
    let port = api.rsplit(':').next().expect("port").to_string();
    let url = format!("https://wsus-hq:{port}/ApiRemoting30/WebService.asmx");
    // The lab's site is a Windows Server 2008 R2 one, as installed: TLS 1.0 only. curl allows
    // it as an old client would (OpenSSL's security level 0); one asking for TLS 1.2 at least
    // is refused.
    let curl_tls = |tls: &[&str], args: &[&str]| {
        Command::new("curl")
            .args(["-sS", "--max-time", "20", "--resolve"])
            .arg(format!("wsus-hq:{port}:127.0.0.1"))
            .args(tls)
            .args(args)
            .current_dir(dir.path())
            .output()
            .expect("curl runs")
    };
    let curl = |args: &[&str]| curl_tls(&["--tlsv1.0", "--ciphers", "DEFAULT:@SECLEVEL=0"], args);
    let tls12 = curl_tls(
        &["--tlsv1.2"],
        &["--cacert", "tls/ca.pem", &format!("{url}?WSDL")],
    );
    assert!(
        !tls12.status.success(),
        "a TLS 1.2 client reached a 2008 R2 site: {}",
        String::from_utf8_lossy(&tls12.stdout)
    );
    let user = format!("CORP\\wsus_repair:{PASSWORD}");
    let untrusted = curl(&["--ntlm", "-u", &user, &format!("{url}?WSDL")]);
    let plain = curl(&[
        "--ntlm",
        "-u",
        &user,
        &format!("http://wsus-hq:{port}/ApiRemoting30/WebService.asmx?WSDL"),
    ]);
    let wsdl = curl(&[
        "--cacert",
        "tls/ca.pem",
        "--ntlm",
        "-u",
        &user,
        &format!("{url}?WSDL"),
    ]);
    let envelope = format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><soap:Envelope xmlns:soap=\"http://schemas.xmlsoap.org/soap/envelope/\"><soap:Body><GetServerVersion xmlns=\"{NS}\"/></soap:Body></soap:Envelope>"
    );
    let version = curl(&[
        "--cacert",
        "tls/ca.pem",
        "--ntlm",
        "-u",
        &user,
        "-H",
        "Content-Type: text/xml; charset=utf-8",
        "-H",
        &format!("SOAPAction: \"{NS}/GetServerVersion\""),
        "--data-binary",
        &envelope,
        &url,
    ]);
    // Over ASP.NET's default 4 MiB request limit: refused, the connection still answered.
    std::fs::write(dir.path().join("big.xml"), vec![b' '; 5 << 20]).expect("big body");
    let too_large = curl(&[
        "--cacert",
        "tls/ca.pem",
        "--ntlm",
        "-u",
        &user,
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--data-binary",
        "@big.xml",
        &url,
    ]);
    let _ = lab.kill();
    let _ = lab.wait();
    assert_eq!(
        String::from_utf8_lossy(&too_large.stdout),
        "413",
        "{}",
        text(&too_large)
    );
    // Plain HTTP to a site that requires SSL: IIS's 403.4 (see lab/src/api/mod.rs).
    assert!(
        String::from_utf8_lossy(&plain.stdout).contains("403.4 Forbidden: SSL is required"),
        "{}",
        text(&plain)
    );
    // curl's 60: the certificate is not signed by an authority the client trusts.
    assert_eq!(untrusted.status.code(), Some(60), "{}", text(&untrusted));
    assert_eq!(wsdl.status.code(), Some(0), "{}", text(&wsdl));
    // The WSDL gives the address the client reached, scheme included.
    assert!(
        String::from_utf8_lossy(&wsdl.stdout).contains(&format!("location=\"{url}\"")),
        "{}",
        text(&wsdl)
    );
    assert_eq!(version.status.code(), Some(0), "{}", text(&version));
    assert!(
        String::from_utf8_lossy(&version.stdout)
            .contains("<GetServerVersionResult>3.2.7600.226</GetServerVersionResult>"),
        "{}",
        text(&version)
    );
}

#[test]
fn zeep_drives_the_labs_web_service_through_ntlm_with_a_real_servers_wsdl() {
    if !available(
        "zeep and requests-ntlm",
        Command::new("python3").args(["-c", "import zeep, requests_ntlm"]),
    ) {
        return;
    }
    let dir = tempfile::tempdir().expect("scratch");
    std::fs::write(
        dir.path().join("h.yaml"),
        "version: 1\nservers:\n  - name: wsus-hq\n    sql: { host: sql-hq.test.example }\n  - name: wsus-b\n    upstream: wsus-hq\n    mode: replica\n    sql: { host: sql-b.test.example }\n",
    )
    .expect("topology");
    let (mut lab, api) = api_lab(dir.path(), &[]);
    let real_wsdl = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data/wsus/ApiRemoting30-ws2022.wsdl");
    let out = Command::new("python3")
        .args([
            "-c",
            ZEEP,
            api.rsplit(':').next().expect("port"),
            "CORP\\wsus_repair",
            PASSWORD,
            real_wsdl.to_str().expect("UTF-8"),
        ])
        .output()
        .expect("python3 runs");
    let _ = lab.kill();
    let _ = lab.wait();
    let said = text(&out);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(said.contains("anonymous 401 Negotiate, NTLM"), "{said}");
    assert!(said.contains("wrong password 401"), "{said}");
    // The console's read-only role: its reads are answered, its change refused (403).
    assert!(said.contains("reporter 200"), "{said}");
    assert!(said.contains("reporter role 2"), "{said}");
    assert!(said.contains("reporter change 403"), "{said}");
    assert!(said.contains("version 3.2.7600.226"), "{said}");
    assert!(said.contains("replica True upstream wsus-hq"), "{said}");
    assert!(
        said.contains("refused System.InvalidOperationException: This server is a replica server."),
        "{said}"
    );
    assert!(said.contains("database SUSDB MICROSOFT##SSEE"), "{said}");
    // Revision, IsLatestRevision, IsDeclined of each revision, as typed cells.
    assert!(
        said.contains("revisions [(100, False, False), (101, True, False)]"),
        "{said}"
    );
    assert!(said.contains("title Office 2003 Service Pack 1"), "{said}");
    // hq keeps only the Downstream Servers group's approval after the decline.
    assert!(said.contains("rows after decline 1"), "{said}");
    // hq's downstream-server table: wsus-b, its direct child (the empty GUID as parent), a replica.
    assert!(
        said.contains("downstream [('wsus-b', '00000000-0000-0000-0000-000000000000', True)]"),
        "{said}"
    );
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("state.json")).expect("state"),
    )
    .expect("JSON");
    let calls: Vec<(&str, &serde_json::Value)> = state["servers"]["wsus-hq"]["calls"]
        .as_array()
        .expect("calls")
        .iter()
        .map(|c| {
            (
                c["procedure"].as_str().expect("name"),
                &c["params"]["adminName"],
            )
        })
        .collect();
    assert_eq!(
        calls,
        [("ExecuteSPDeclineUpdate", &serde_json::json!("CORP\\zeep"))]
    );
    assert_eq!(state["servers"]["wsus-hq"]["update_declined"], true);
}

/// zeep as a Windows Update client of the lab's client web services, with the WSDLs of the
/// protocol's specification (MS-WUSP, `shared/data/wsus`), not the lab's: GetConfig,
/// GetAuthorizationCookie, GetCookie, RegisterComputer and SyncUpdates, claiming every non-leaf
/// revision it receives until nothing new comes or the server faults.
const ZEEP_CLIENT: &str = r#"
import sys, datetime
import requests
from zeep import Client, Settings
from zeep.exceptions import Fault
from zeep.transports import Transport

port, wsdl_dir, host, client_id = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
base = f"http://127.0.0.1:{port}"
ns = "http://www.microsoft.com/SoftwareDistribution/Server/ClientWebService"
auth_ns = "http://www.microsoft.com/SoftwareDistribution/Server/SimpleAuthWebService"

def service(wsdl, binding, path):
    s = requests.Session()
    s.headers["Host"] = host
    client = Client(f"{wsdl_dir}/{wsdl}", transport=Transport(session=s), settings=Settings(strict=False))
    return client.create_service(binding, base + path)

cws = service("ClientWebService-MS-WUSP.wsdl", f"{{{ns}}}ClientSoap", "/ClientWebService/client.asmx")
auth = service("SimpleAuth-MS-WUSP.wsdl", f"{{{auth_ns}}}SimpleAuthSoap", "/SimpleAuthWebService/SimpleAuth.asmx")

def code(fault):
    detail = {e.tag.split("}")[-1]: (e.text or "") for e in fault.detail} if fault.detail is not None else {}
    return detail.get("ErrorCode"), detail.get("ID"), detail.get("Method")

config = cws.GetConfig(protocolVersion="1.0")
props = {p.Name: p.Value for p in config.Properties.ConfigurationProperty}
print("config", config.IsRegistrationRequired, props["ProtocolVersion"], config.AuthInfo.AuthPlugInInfo[0].ServiceUrl)
issued = auth.GetAuthorizationCookie(clientId=client_id, targetGroupName=None, dnsName="zeep-probe.test.example")
print("plugin", issued.PlugInId)
# The client web service's own AuthorizationCookie type: passed as SimpleAuth's object, zeep would
# write its elements in SimpleAuth's namespace, which the server's XmlSerializer does not read.
cookie_data = {"PlugInId": issued.PlugInId, "CookieData": issued.CookieData}
now = datetime.datetime.now(datetime.timezone.utc)
try:
    cws.GetCookie(authCookies={"AuthorizationCookie": [cookie_data]}, oldCookie=None,
                  lastChange=datetime.datetime(2001, 1, 1, tzinfo=datetime.timezone.utc), currentTime=now, protocolVersion="1.0")
except Fault as f:
    print("stale lastChange", code(f)[0])
cookie = cws.GetCookie(authCookies={"AuthorizationCookie": [cookie_data]}, oldCookie=None,
                       lastChange=config.LastChange, currentTime=now, protocolVersion="1.0")
params = lambda installed, other: {"ExpressQuery": False, "InstalledNonLeafUpdateIDs": {"int": installed},
                                   "OtherCachedUpdateIDs": {"int": other}, "SkipSoftwareSync": False}
try:
    cws.SyncUpdates(cookie=cookie, parameters=params([], []))
except Fault as f:
    print("unregistered", code(f)[0])
info = {"DnsName": "zeep-probe.test.example", "OSMajorVersion": 5, "OSMinorVersion": 1, "OSBuildNumber": 2600,
        "OSServicePackMajorNumber": 3, "OSServicePackMinorNumber": 0, "OSLocale": "en-US",
        "BiosReleaseDate": datetime.datetime(2008, 1, 1), "ProcessorArchitecture": "X86", "SuiteMask": 256,
        "OldProductType": 1, "NewProductType": 1, "SystemMetrics": 0, "ClientVersionMajorNumber": 7,
        "ClientVersionMinorNumber": 2, "ClientVersionBuildNumber": 6001, "ClientVersionQfeNumber": 788}
cws.RegisterComputer(cookie=cookie, computerInfo=info)
installed, other, trips = [], [], 0
while trips < 20:
    trips += 1
    try:
        result = cws.SyncUpdates(cookie=cookie, parameters=params(installed, other))
    except Fault as f:
        print("fault", trips, *code(f))
        break
    cookie = result.NewCookie
    updates = result.NewUpdates.UpdateInfo if result.NewUpdates else []
    print("page", trips, len(updates), result.Truncated, [(u.ID, u.IsLeaf, u.Deployment.Action) for u in updates])
    if not updates:
        print("done", trips)
        break
    for u in updates:
        (other if u.IsLeaf else installed).append(u.ID)
        if "D359F493" in u.Xml.upper():
            print("in scope", u.ID)
"#;

#[test]
fn zeep_scans_the_labs_client_web_service_with_the_specifications_wsdls() {
    if !available("zeep", Command::new("python3").args(["-c", "import zeep"])) {
        return;
    }
    let dir = tempfile::tempdir().expect("scratch");
    std::fs::write(
        dir.path().join("h.yaml"),
        "version: 1\nservers:\n  - name: wsus-hq\n    sql: { host: sql-hq.test.example }\n  - name: wsus-b\n    upstream: wsus-hq\n    mode: replica\n    sql: { host: sql-b.test.example }\n",
    )
    .expect("topology");
    // wsus-b runs SP1 without the hotfix, wsus-hq SP1 with it; both hold the broken approvals.
    let (mut lab, api) = api_lab(
        dir.path(),
        &[
            "--wsus-version",
            "wsus-b=3.0sp1",
            "--wsus-version",
            "wsus-hq=3.0sp1-954960",
            "--server-log",
            "logs",
            "--client-page",
            "2",
        ],
    );
    let wsdls = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/wsus");
    let scan = |host: &str, client_id: &str| {
        let out = Command::new("python3")
            .args([
                "-c",
                ZEEP_CLIENT,
                api.rsplit(':').next().expect("port"),
                wsdls.to_str().expect("UTF-8"),
                host,
                client_id,
            ])
            .output()
            .expect("python3 runs");
        let said = text(&out);
        assert_eq!(out.status.code(), Some(0), "{said}");
        said
    };
    let broken = scan("wsus-b", "0c1e57a1-0000-4000-8000-00000000e001");
    let fixed = scan("wsus-hq", "0c1e57a1-0000-4000-8000-00000000e002");
    let _ = lab.kill();
    let _ = lab.wait();
    // WSUS 3.0 SP1 speaks server protocol 3.1 and requires registration.
    assert!(
        broken.contains("config True 3.1 SimpleAuthWebService/SimpleAuth.asmx"),
        "{broken}"
    );
    assert!(
        broken.contains("stale lastChange ConfigChanged"),
        "{broken}"
    );
    assert!(
        broken.contains("unregistered RegistrationRequired"),
        "{broken}"
    );
    // Two roots on a page of two, then the Office family, then the Office 2003 product; with
    // the product and its detectoid claimed, the update comes into scope and GetSyncInfo throws.
    assert!(broken.contains("page 1 2 False"), "{broken}");
    assert!(broken.contains("page 3 1 False"), "{broken}");
    let fault = broken
        .lines()
        .find_map(|l| l.strip_prefix("fault 4 InternalServerError "))
        .unwrap_or_else(|| panic!("no fault: {broken}"));
    let id = fault.split_whitespace().next().expect("ID");
    assert!(
        fault.ends_with(
            "\"http://www.microsoft.com/SoftwareDistribution/Server/ClientWebService/SyncUpdates\""
        ),
        "{fault}"
    );
    let log = std::fs::read_to_string(dir.path().join("logs/wsus-b/SoftwareDistribution.log"))
        .expect("wsus-b's server log");
    let thrown = log
        .lines()
        .position(|l| l.contains(&format!("ID={id}, ErrorCode=InternalServerError")))
        .unwrap_or_else(|| panic!("{id} not logged: {log}"));
    assert!(
        log.lines()
            .take(thrown)
            .any(|l| l.contains("Item has already been added. Key in dictionary: '8010'")),
        "{log}"
    );
    // The hotfix server sends the update's latest revision alone, and the scan ends.
    assert!(fixed.contains("in scope 8002"), "{fixed}");
    assert!(
        fixed.contains(
            "page 4 2 False [(8002, True, 'Install'), (8007, True, 'PreDeploymentCheck')]"
        ),
        "{fixed}"
    );
    assert!(fixed.contains("done 5"), "{fixed}");
    assert!(!fixed.contains("fault"), "{fixed}");
    // Both computers are on record, registered, as a real server keeps them.
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("state.json")).expect("state"),
    )
    .expect("JSON");
    for (server, id) in [
        ("wsus-b", "0c1e57a1-0000-4000-8000-00000000e001"),
        ("wsus-hq", "0c1e57a1-0000-4000-8000-00000000e002"),
    ] {
        let computers = &state["servers"][server]["computers"];
        assert_eq!(computers[0]["id"], id, "{computers}");
        assert_eq!(computers[0]["registered"], true, "{computers}");
        assert_eq!(computers[0]["dns_name"], "zeep-probe.test.example");
    }
}

/// python-tds (pyOpenSSL underneath) over TLS to a SQL Server 2005 lab: its own default, a TLS
/// 1.2 context, is refused; a context that allows TLS 1.0, as an old client's, negotiates it,
/// the certificate validated against the lab's authority.
const PYTHON_TLS: &str = r#"
import sys, pytds, pytds.tls, OpenSSL.SSL
port, password, cafile, old = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4] == "old"
if old:
    def create_context(cafile):
        ctx = OpenSSL.SSL.Context(OpenSSL.SSL.TLS_METHOD)
        ctx.set_min_proto_version(OpenSSL.SSL.TLS1_VERSION)
        ctx.set_cipher_list(b"DEFAULT:@SECLEVEL=0")
        ctx.set_verify(OpenSSL.SSL.VERIFY_PEER, lambda conn, cert, err, depth, ok: ok)
        ctx.load_verify_locations(cafile)
        return ctx
    pytds.tls.create_context = create_context
seen = {}
real_channel = pytds.tls.establish_channel
def establish_channel(tds_sock):
    real_channel(tds_sock)
    conn = tds_sock.conn.sock._tls_conn
    seen["version"], seen["cipher"] = conn.get_protocol_version_name(), conn.get_cipher_name()
pytds.tls.establish_channel = establish_channel
try:
    with pytds.connect(server="localhost", port=port, user="wsus_repair", password=password,
                       database="SUSDB", autocommit=True, cafile=cafile) as conn:
        with conn.cursor() as cur:
            cur.execute("SELECT @@VERSION")
            print("connected", seen.get("version"), seen.get("cipher"))
except Exception as e:
    print("refused", type(e).__name__, e)
"#;

#[test]
fn python_tds_negotiates_tls_1_0_with_sql_server_2005_and_a_tls_1_2_client_is_refused() {
    if !available(
        "python-tds with pyOpenSSL",
        Command::new("python3").args(["-c", "import pytds, OpenSSL"]),
    ) {
        return;
    }
    let lab = LabProcess::start_extra(
        LOCAL,
        "broken",
        "faults: []\n",
        0,
        &["--tls-generate", "tls"],
    );
    let ca = lab.path("tls/ca.pem");
    let run = |context: &str| {
        let out = Command::new("python3")
            .args(["-c", PYTHON_TLS, &port(&lab), PASSWORD])
            .arg(&ca)
            .arg(context)
            .output()
            .expect("python3 runs");
        text(&out)
    };
    let modern = run("default");
    assert!(modern.contains("refused"), "{modern}");
    let old = run("old");
    assert!(old.contains("connected TLSv1 "), "{old}");
}

#[test]
fn openssl_s_client_meets_a_2008_sites_tls_1_0_and_is_refused_tls_1_2() {
    if !available("openssl", Command::new("openssl").arg("version")) {
        return;
    }
    let dir = tempfile::tempdir().expect("scratch");
    std::fs::write(
        dir.path().join("h.yaml"),
        "version: 1\nservers:\n  - name: wsus-hq\n    api: { host: wsus-hq.test.example }\n  - name: wsus-new\n    upstream: wsus-hq\n    api: { host: wsus-new.test.example }\n",
    )
    .expect("topology");
    let (mut lab, api) = api_lab(
        dir.path(),
        &[
            "--tls-generate",
            "tls",
            "--windows",
            "2008",
            "--platform",
            "wsus-new=2016",
        ],
    );
    let s_client = |host: &str, version: &str| {
        let out = Command::new("openssl")
            .args(["s_client", "-connect", &api, "-servername", host, version])
            .args(["-cipher", "DEFAULT:@SECLEVEL=0", "-CAfile", "tls/ca.pem"])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .output()
            .expect("openssl runs");
        text(&out)
    };
    let old_10 = s_client("wsus-hq.test.example", "-tls1");
    let old_12 = s_client("wsus-hq.test.example", "-tls1_2");
    let new_12 = s_client("wsus-new.test.example", "-tls1_2");
    let _ = lab.kill();
    let _ = lab.wait();
    assert!(
        old_10.contains("Protocol  : TLSv1\n") && old_10.contains("Verify return code: 0 (ok)"),
        "{old_10}"
    );
    assert!(old_12.contains("Cipher is (NONE)"), "{old_12}");
    assert!(new_12.contains("Protocol  : TLSv1.2"), "{new_12}");
}
