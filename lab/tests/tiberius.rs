//! The lab through the real client path: tiberius over TCP on loopback.

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on the first unexpected error"
)]

use std::sync::Arc;
use std::time::Duration;

use susdb::{KB954960_UPDATE_ID, groups, procs, sql};
use susdb_lab::LabConfig;
use susdb_lab::faults::Faults;
use susdb_lab::model::Seed;
use tiberius::{AuthMethod, Client, Command, Config, EncryptionLevel, Uuid};
use tokio::net::TcpStream;
use tokio_util::compat::{Compat, TokioAsyncWriteCompatExt};

mod support;
use support::{Running, start};

fn with_login() -> LabConfig {
    LabConfig {
        credentials: Some(("wsus_repair".into(), "s3cret!".into())),
        ..LabConfig::default()
    }
}

async fn connect_as(
    r: &Running,
    host: &str,
    instance: Option<&str>,
    password: &str,
) -> tiberius::Result<Client<Compat<TcpStream>>> {
    let mut config = Config::new();
    config.host(host);
    config.port(r.addr.port());
    if let Some(instance) = instance {
        config.instance_name(instance);
    }
    config.database("SUSDB");
    config.authentication(AuthMethod::sql_server("wsus_repair", password));
    config.encryption(EncryptionLevel::NotSupported);
    // The TCP address differs from the name sent in LOGIN7: that is how one listener serves many.
    let tcp = TcpStream::connect(r.addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    Client::connect(config, tcp.compat_write()).await
}

async fn connect(r: &Running, host: &str) -> Client<Compat<TcpStream>> {
    connect_as(r, host, None, "s3cret!").await.unwrap()
}

fn update() -> Uuid {
    Uuid::parse_str(KB954960_UPDATE_ID).unwrap()
}

#[tokio::test]
async fn login_routes_by_host_and_checks_the_password() {
    let r = start(with_login()).await;
    let mut hq = connect(&r, "sql-hq.lab.example").await;
    let row = hq
        .simple_query(sql::SERVER_VERSION)
        .await
        .unwrap()
        .into_row()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.try_get::<&str, _>(0).unwrap(), Some("9.00.4035.00"));

    let err = connect_as(&r, "sql-hq.lab.example", None, "wrong")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(18456), "{err}");

    let err = connect_as(&r, "sql-nowhere.example", None, "s3cret!")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(18456));
    assert!(err.to_string().contains("sql-nowhere.example"), "{err}");
}

#[tokio::test]
async fn the_probe_returns_four_result_sets() {
    let r = start(LabConfig {
        seed: Seed::Broken,
        ..with_login()
    })
    .await;
    let mut c = connect_as(&r, "sql-branch.lab.example", Some("WSUS"), "s3cret!")
        .await
        .unwrap();
    let sets = c
        .query(sql::PROBE, &[&update()])
        .await
        .unwrap()
        .into_results()
        .await
        .unwrap();
    assert_eq!(sets.len(), 4);
    let config = &sets[0][0];
    assert_eq!(
        config.try_get::<bool, _>("ReplicaMode").unwrap(),
        Some(true)
    );
    assert_eq!(
        config.try_get::<&str, _>("UpstreamServerName").unwrap(),
        Some("wsus-hq")
    );
    let latest: Vec<(i32, bool)> = sets[1]
        .iter()
        .map(|row| {
            (
                row.try_get::<i32, _>("RevisionNumber").unwrap().unwrap(),
                row.try_get::<bool, _>("IsLatestRevision").unwrap().unwrap(),
            )
        })
        .collect();
    assert_eq!(latest, [(100, false), (101, true)]);
    assert_eq!(
        sets[2][0].try_get::<bool, _>("Declined").unwrap(),
        Some(false)
    );
    // The KB 954960 state: two live approvals for All Computers, one on the old revision.
    let groups_seen: Vec<Uuid> = sets[3]
        .iter()
        .map(|row| row.try_get::<Uuid, _>("TargetGroupID").unwrap().unwrap())
        .collect();
    assert_eq!(
        groups_seen,
        vec![Uuid::parse_str(groups::ALL_COMPUTERS).unwrap(); 2]
    );
    assert!(!r.lab.snapshot().servers["wsus-branch"].client_sync_ok);
}

async fn decline(
    c: &mut Client<Compat<TcpStream>>,
    fail_if_replica: bool,
) -> tiberius::Result<u32> {
    let mut cmd = Command::new(procs::DECLINE_UPDATE);
    cmd.bind_param(procs::UPDATE_ID, update());
    cmd.bind_param(procs::ADMIN_NAME, "CONTOSO\\operator");
    cmd.bind_param(procs::FAIL_IF_REPLICA, fail_if_replica);
    Ok(cmd
        .exec(c)
        .await?
        .into_command_result()
        .await?
        .return_code())
}

/// `spDeployUpdate` as the repair calls it: detect only, All Computers, revision 101.
fn approve_command() -> Command<'static> {
    let mut cmd = Command::new(procs::DEPLOY_UPDATE);
    cmd.bind_param(procs::UPDATE_ID, update());
    cmd.bind_param(procs::REVISION_NUMBER, 101i32);
    cmd.bind_param(procs::ACTION_ID, susdb::action::DETECT_ONLY);
    cmd.bind_param(
        procs::TARGET_GROUP_ID,
        Uuid::parse_str(groups::ALL_COMPUTERS).unwrap(),
    );
    cmd.bind_param(procs::ADMIN_NAME, "CONTOSO\\operator");
    cmd.bind_param(procs::IS_ASSIGNED, true);
    cmd.bind_param(procs::DOWNLOAD_PRIORITY, 1i32);
    cmd.bind_param(procs::FAIL_IF_REPLICA, true);
    cmd.bind_param(procs::IS_REPLICA, false);
    cmd
}

async fn approve(c: &mut Client<Compat<TcpStream>>) -> tiberius::Result<u32> {
    Ok(approve_command()
        .exec(c)
        .await?
        .into_command_result()
        .await?
        .return_code())
}

#[tokio::test]
async fn decline_approve_decline_repairs_a_server_and_every_call_is_recorded() {
    let r = start(with_login()).await;
    let mut c = connect(&r, "sql-hq.lab.example").await;
    assert_eq!(decline(&mut c, true).await.unwrap(), 0);
    assert_eq!(approve(&mut c).await.unwrap(), 0);
    let mid = r.lab.snapshot().servers["wsus-hq"].clone();
    let computer_rows = |db: &susdb_lab::model::ServerDb| {
        db.deployments
            .iter()
            .filter(|d| d.target_group_type_id == 0)
            .count()
    };
    assert!(!mid.update_declined && mid.client_sync_ok && computer_rows(&mid) == 1);
    assert_eq!(decline(&mut c, true).await.unwrap(), 0);
    let db = r.lab.snapshot().servers["wsus-hq"].clone();
    assert!(db.update_declined && db.client_sync_ok && computer_rows(&db) == 0);
    let calls: Vec<&str> = db.calls.iter().map(|c| c.procedure.as_str()).collect();
    assert_eq!(
        calls,
        ["spDeclineUpdate", "spDeployUpdate", "spDeclineUpdate"]
    );
    let deploy = &db.calls[1].params;
    assert_eq!(deploy["@actionID"], 2);
    assert_eq!(deploy["@targetGroupID"], groups::ALL_COMPUTERS);
    assert!(!deploy.contains_key("@deadline"));
}

/// The approve call as wsus-reset sent it before it was checked against SQL Server 2005, with a
/// `@deadline`: tiberius (`tds73`) sends a `NaiveDateTime` as `datetime2`, and `None` as the NULL
/// type (0x1F).
async fn approve_with_deadline(
    c: &mut Client<Compat<TcpStream>>,
    deadline: Option<tiberius::time::chrono::NaiveDateTime>,
) -> tiberius::error::Error {
    let mut cmd = approve_command();
    cmd.bind_param("@deadline", deadline);
    refusal(cmd, c).await
}

#[tokio::test]
async fn sql_server_2005_refuses_a_tds_7_3_type_and_every_version_an_unknown_parameter() {
    // SQL Server 2005 speaks TDS 7.2: a datetime2 (0x2A) parameter is an unknown type.
    let r = start(with_login()).await;
    let mut c = connect(&r, "sql-hq.lab.example").await;
    let no_deadline = tiberius::time::chrono::NaiveDate::from_ymd_opt(9999, 12, 31)
        .and_then(|d| d.and_hms_opt(23, 59, 59));
    let e = approve_with_deadline(&mut c, no_deadline).await;
    assert_eq!(e.code(), Some(8009), "{e}");
    assert!(
        e.to_string()
            .contains("Parameter 10 (\"@deadline\"): Data type 0x2A is unknown"),
        "{e}"
    );
    // A NULL travels as the NULL type, which 2005 knows; but a WSUS 3.0 spDeployUpdate has no
    // @deadline (only modern WSUS is shown with one), on any SQL Server release.
    let e = approve_with_deadline(&mut c, None).await;
    assert_eq!(e.code(), Some(8145), "{e}");
    let r = start(LabConfig {
        sql_version: "2016".parse().unwrap(),
        ..with_login()
    })
    .await;
    let mut c = connect(&r, "sql-hq.lab.example").await;
    let e = approve_with_deadline(&mut c, no_deadline).await;
    assert_eq!(e.code(), Some(8145), "{e}");
    assert!(
        e.to_string()
            .contains("@deadline is not a parameter for procedure spDeployUpdate."),
        "{e}"
    );
    // Nothing happened on either server.
    assert!(r.lab.snapshot().servers["wsus-hq"].calls.is_empty());
}

/// The error a call ends with, whether tiberius reports it at once or in the result stream.
async fn refusal(cmd: Command<'_>, c: &mut Client<Compat<TcpStream>>) -> tiberius::error::Error {
    match cmd.exec(c).await {
        Ok(stream) => stream.into_command_result().await.unwrap_err(),
        Err(e) => e,
    }
}

#[tokio::test]
async fn a_missing_parameter_or_a_value_that_does_not_convert_is_refused_as_sql_server_does() {
    let r = start(with_login()).await;
    let mut c = connect(&r, "sql-hq.lab.example").await;
    let mut cmd = Command::new(procs::DECLINE_UPDATE);
    cmd.bind_param(procs::UPDATE_ID, update());
    cmd.bind_param(procs::ADMIN_NAME, "op");
    let e = refusal(cmd, &mut c).await;
    assert_eq!(e.code(), Some(201), "{e}");
    let mut cmd = Command::new(procs::DECLINE_UPDATE);
    cmd.bind_param(procs::UPDATE_ID, "not a GUID");
    cmd.bind_param(procs::ADMIN_NAME, "op");
    cmd.bind_param(procs::FAIL_IF_REPLICA, true);
    let e = refusal(cmd, &mut c).await;
    assert_eq!(e.code(), Some(8114), "{e}");
    assert!(
        e.to_string()
            .contains("Error converting data type nvarchar to uniqueidentifier"),
        "{e}"
    );
    assert!(r.lab.snapshot().servers["wsus-hq"].calls.is_empty());
}

#[tokio::test]
async fn the_lab_reports_the_sql_server_it_emulates_and_accepts_session_options() {
    for (version, expected) in [("2005", "9.00.4035.00"), ("2008r2", "10.50.6000.34")] {
        let r = start(LabConfig {
            sql_version: version.parse().unwrap(),
            ..with_login()
        })
        .await;
        let mut c = connect(&r, "sql-hq.lab.example").await;
        c.simple_query("SET TEXTSIZE 2147483647\nSET QUOTED_IDENTIFIER ON\nSET ANSI_NULLS ON")
            .await
            .unwrap()
            .into_results()
            .await
            .unwrap();
        let row = c
            .simple_query("SELECT @@VERSION")
            .await
            .unwrap()
            .into_row()
            .await
            .unwrap()
            .unwrap();
        let text: &str = row.get(0).unwrap();
        assert!(text.contains(expected), "{text}");
        let row = c
            .simple_query(sql::SERVER_VERSION)
            .await
            .unwrap()
            .into_row()
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.get::<&str, _>("ProductVersion"), Some(expected));
        let e = match c.simple_query("SET NO_SUCH_OPTION ON").await {
            Ok(stream) => stream.into_results().await.unwrap_err(),
            Err(e) => e,
        };
        assert_eq!(e.code(), Some(195), "{e}");
    }
}

#[tokio::test]
async fn a_replica_refuses_approval_changes_until_switched() {
    let r = start(with_login()).await;
    let mut c = connect_as(&r, "sql-branch.lab.example", Some("WSUS"), "s3cret!")
        .await
        .unwrap();
    let err = decline(&mut c, true).await.unwrap_err();
    assert_eq!(err.code(), Some(50000));
    assert!(err.to_string().contains("replica"), "{err}");

    let set = c
        .query(sql::SET_REPLICA_MODE, &[&false])
        .await
        .unwrap()
        .into_results()
        .await
        .unwrap();
    assert_eq!(
        set.last().unwrap()[0].try_get::<bool, _>(0).unwrap(),
        Some(false)
    );
    assert_eq!(decline(&mut c, true).await.unwrap(), 0);
    c.execute(sql::SET_REPLICA_MODE, &[&true]).await.unwrap();
    let db = r.lab.snapshot().servers["wsus-branch"].clone();
    assert!(db.replica_mode && db.update_declined);
    let calls: Vec<&str> = db.calls.iter().map(|c| c.procedure.as_str()).collect();
    assert_eq!(
        calls,
        [
            "spDeclineUpdate",
            "set-replica-mode",
            "spDeclineUpdate",
            "set-replica-mode"
        ]
    );
    assert_eq!(db.calls[0].params["ok"], false);
}

/// The error a batch ends with (tiberius reports it from the call or from reading the results).
async fn batch_error(c: &mut Client<Compat<TcpStream>>, text: &str) -> tiberius::error::Error {
    match c.simple_query(text).await {
        Err(e) => e,
        Ok(stream) => stream.into_results().await.unwrap_err(),
    }
}

#[tokio::test]
async fn unknown_statements_and_procedures_get_real_looking_errors() {
    let r = start(with_login()).await;
    let mut c = connect(&r, "sql-hq.lab.example").await;
    let err = batch_error(&mut c, "SELECT * FROM dbo.tbComputerTarget\nWHERE 1 = 1").await;
    assert_eq!(err.code(), Some(50000));
    assert!(
        err.to_string()
            .contains("statement not supported by the lab: SELECT * FROM dbo.tbComputerTarget'"),
        "only the first line: {err}"
    );
    let err = Command::new("dbo.spDropEverything")
        .exec(&mut c)
        .await
        .unwrap()
        .into_command_result()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(2812));
    // The connection is still usable after errors.
    c.simple_query(sql::SERVER_VERSION)
        .await
        .unwrap()
        .into_results()
        .await
        .unwrap();
}

#[tokio::test]
async fn multi_packet_requests_and_replies() {
    let r = start(with_login()).await;
    let mut c = connect(&r, "sql-hq.lab.example").await;
    // A 5,000-character statement takes several packets; its error message echoes the first line
    // back, which takes several packets too.
    let long = format!("SELECT '{}'", "x".repeat(5000));
    let err = batch_error(&mut c, &long).await;
    assert!(
        err.to_string().contains(&"x".repeat(4500)),
        "{}",
        err.to_string().len()
    );
    // A long nvarchar parameter (PLP when over 4,000 bytes) through an RPC.
    let admin = "A".repeat(3000);
    let mut cmd = Command::new(procs::DECLINE_UPDATE);
    cmd.bind_param(procs::UPDATE_ID, update());
    cmd.bind_param(procs::ADMIN_NAME, admin.as_str());
    cmd.bind_param(procs::FAIL_IF_REPLICA, true);
    cmd.exec(&mut c)
        .await
        .unwrap()
        .into_command_result()
        .await
        .unwrap();
    assert_eq!(
        r.lab.snapshot().servers["wsus-hq"].calls[0].params["@adminName"],
        admin.as_str()
    );
}

#[tokio::test]
async fn output_parameters_and_return_status() {
    let r = start(with_login()).await;
    let mut c = connect(&r, "sql-hq.lab.example").await;
    // sp_executesql passes an OUTPUT parameter through unchanged when the statement sets none.
    let mut cmd = Command::new("sp_executesql");
    cmd.bind_param("@stmt", sql::SERVER_VERSION);
    cmd.bind_param("@params", "@echo int OUTPUT");
    cmd.bind_out_param("@echo", 41i32);
    let result = cmd
        .exec(&mut c)
        .await
        .unwrap()
        .into_command_result()
        .await
        .unwrap();
    assert_eq!(result.return_code(), 0);
    assert_eq!(result.try_return_value::<i32>("@echo").unwrap(), Some(41));
}

async fn applock(c: &mut Client<Compat<TcpStream>>, timeout_ms: i32) -> i32 {
    let mut cmd = Command::new(procs::GET_APPLOCK);
    cmd.bind_param(procs::RESOURCE, procs::APPLOCK_RESOURCE);
    cmd.bind_param(procs::LOCK_MODE, "Exclusive");
    cmd.bind_param(procs::LOCK_OWNER, "Session");
    cmd.bind_param(procs::LOCK_TIMEOUT, timeout_ms);
    let code = cmd
        .exec(c)
        .await
        .unwrap()
        .into_command_result()
        .await
        .unwrap()
        .return_code();
    i32::from_ne_bytes(code.to_ne_bytes())
}

#[tokio::test]
async fn an_applock_is_exclusive_and_released_when_its_session_drops() {
    let r = start(with_login()).await;
    let mut first = connect(&r, "sql-hq.lab.example").await;
    let mut second = connect(&r, "sql-hq.lab.example").await;
    assert_eq!(applock(&mut first, 0).await, 0);
    assert_eq!(
        applock(&mut second, 0).await,
        -1,
        "held by the first session"
    );
    assert_eq!(
        applock(&mut second, 50).await,
        -1,
        "still held after waiting"
    );
    // Another server's lock is another lock.
    let mut branch = connect_as(&r, "sql-branch.lab.example", Some("WSUS"), "s3cret!")
        .await
        .unwrap();
    assert_eq!(applock(&mut branch, 0).await, 0);
    drop(first);
    let mut code = -1;
    for _ in 0..100 {
        code = applock(&mut second, 0).await;
        if code == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(code, 0, "the lock went with the dropped connection");
}

#[tokio::test]
async fn a_slow_call_can_be_cancelled_and_takes_no_effect() {
    let r = start(LabConfig {
        latency: Duration::from_millis(400),
        ..with_login()
    })
    .await;
    let mut c = connect(&r, "sql-hq.lab.example").await;
    let pending = tokio::time::timeout(Duration::from_millis(100), decline(&mut c, true)).await;
    assert!(pending.is_err(), "the call should still be waiting");
    c.cancel_query().await.unwrap();
    // The attention is acknowledged and the session goes on.
    let row = c
        .simple_query(sql::SERVER_VERSION)
        .await
        .unwrap()
        .into_row()
        .await
        .unwrap();
    assert!(row.is_some());
    assert!(
        r.lab.snapshot().servers["wsus-hq"].calls.is_empty(),
        "a cancelled call took effect"
    );
}

#[tokio::test]
async fn transactions_are_accepted() {
    let r = start(with_login()).await;
    let mut c = connect(&r, "sql-hq.lab.example").await;
    c.begin_transaction().await.unwrap();
    c.commit_transaction().await.unwrap();
}

#[tokio::test]
async fn injected_faults_hit_the_nth_call() {
    let faults: Faults = serde_yaml::from_str(
        "faults:\n  - server: wsus-hq\n    target: spDeclineUpdate\n    nth: 1\n    error: 1205\n  - server: wsus-hq\n    target: spDeclineUpdate\n    nth: 2\n    drop: after\n",
    )
    .unwrap();
    let r = start(LabConfig {
        faults,
        ..with_login()
    })
    .await;
    let mut c = connect(&r, "sql-hq.lab.example").await;
    let err = decline(&mut c, true).await.unwrap_err();
    assert!(err.is_deadlock(), "{err}");
    assert!(
        decline(&mut c, true).await.is_err(),
        "the connection drops after the call"
    );
    let db = r.lab.snapshot().servers["wsus-hq"].clone();
    assert!(db.update_declined, "the dropped call took effect");
    let mut again = connect(&r, "sql-hq.lab.example").await;
    assert_eq!(decline(&mut again, true).await.unwrap(), 0);
}

#[tokio::test]
async fn an_unreachable_server_closes_every_connection() {
    let faults: Faults =
        serde_yaml::from_str("faults:\n  - server: wsus-branch\n    unreachable: true\n").unwrap();
    let r = start(LabConfig {
        faults,
        ..with_login()
    })
    .await;
    assert!(
        connect_as(&r, "sql-branch.lab.example", Some("WSUS"), "s3cret!")
            .await
            .is_err()
    );
    connect(&r, "sql-hq.lab.example").await;
}

#[tokio::test]
async fn a_hundred_concurrent_connections() {
    let r = Arc::new(start(with_login()).await);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..100 {
        let r = Arc::clone(&r);
        tasks.spawn(async move {
            let host = if i % 2 == 0 {
                "sql-hq.lab.example"
            } else {
                "sql-branch.lab.example"
            };
            let instance = (i % 2 == 1).then_some("WSUS");
            let mut c = connect_as(&r, host, instance, "s3cret!").await.unwrap();
            let sets = c
                .query(sql::PROBE, &[&update()])
                .await
                .unwrap()
                .into_results()
                .await
                .unwrap();
            sets.len()
        });
    }
    let mut done = 0;
    while let Some(n) = tasks.join_next().await {
        assert_eq!(n.unwrap(), 4);
        done += 1;
    }
    assert_eq!(done, 100);
}

#[tokio::test]
async fn the_state_file_is_written_after_every_mutation_and_loaded_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("lab.json");
    let config = LabConfig {
        state_file: Some(state.clone()),
        ..with_login()
    };
    {
        let r = start(config.clone()).await;
        let mut c = connect(&r, "sql-hq.lab.example").await;
        decline(&mut c, true).await.unwrap();
        // Written before the reply: read it while the lab still runs.
        let saved: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
        let hq = &saved["servers"]["wsus-hq"];
        assert_eq!(hq["update_declined"], true);
        assert_eq!(hq["client_sync_ok"], true);
        assert_eq!(hq["replica_mode"], false);
        assert_eq!(hq["update_present"], true);
        assert_eq!(hq["calls"][0]["procedure"], "spDeclineUpdate");
        assert_eq!(saved["servers"]["wsus-branch"]["client_sync_ok"], false);
    }
    let r = start(config).await;
    assert!(
        r.lab.snapshot().servers["wsus-hq"].update_declined,
        "the state was not loaded"
    );
}

async fn windows_login(r: &Running, account: &str, password: &str) -> tiberius::Result<()> {
    let mut config = Config::new();
    config.host("sql-hq.lab.example");
    config.port(r.addr.port());
    config.authentication(AuthMethod::windows(account, password));
    config.encryption(EncryptionLevel::NotSupported);
    let tcp = TcpStream::connect(r.addr).await.unwrap();
    let mut client = Client::connect(config, tcp.compat_write()).await?;
    client
        .simple_query(sql::SERVER_VERSION)
        .await?
        .into_row()
        .await?;
    Ok(())
}

#[tokio::test]
async fn windows_logins_are_checked_by_ntlm_and_refused_where_not_configured() {
    let plain = start(with_login()).await;
    let err = windows_login(&plain, "CORP\\repair", "pw")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(18452), "{err}");

    let r = start(LabConfig {
        windows_login: Some(("CORP\\repair".into(), "Corr3ct!".into())),
        ..with_login()
    })
    .await;
    windows_login(&r, "CORP\\repair", "Corr3ct!").await.unwrap();
    let err = windows_login(&r, "CORP\\repair", "wrong")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(18456), "{err}");
    assert!(err.to_string().contains("CORP\\repair"), "{err}");
    let err = windows_login(&r, "CORP\\someone", "Corr3ct!")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(18456), "{err}");
}
