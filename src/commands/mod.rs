//! One module per command, so the binary reads like its `--help`. Each command parses nothing
//! (clap did), calls the library crates, prints through [`crate::emit`] and `report`, and returns
//! an exit code. What several commands share lives here: the runtime, connection options and
//! their pre-flight checks, selection, interrupts, and the engine run with its lock and report.

pub mod apply;
pub mod diagnose;
pub mod diff;
pub mod discover;
pub mod docs;
pub mod export_sql;
pub mod graph;
pub mod lab;
pub mod plan;
pub mod rehearse;
pub mod resume;
pub mod validate;
pub mod verify;

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use engine::{
    Engine, EngineError, Interrupts, RunOptions, RunOutcome, RunReport, ServerStatus,
    state::StateError,
};
use susdb_lab::{Lab, LabConfig, faults::Faults, model::Seed};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use topology::{SelectOptions, Selection, Topology};
use workflows::reach::ConnectOptions;
use workflows::reach::sql::applock::{HierarchyLock, tops_of};
use workflows::survey::survey;
use workflows::{Plan, Repair};

use crate::cli::{ConnArgs, LabSeed, RunArgs, SelectArgs};
use crate::report;
use crate::{Failure, emit, exit};

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::BadInput(format!("error: cannot start the async runtime: {e}")))
}

fn connect_options(conn: &ConnArgs) -> Result<ConnectOptions, Failure> {
    if conn.connect_via_ca.is_some() && conn.connect_via.is_none() && conn.api_via.is_none() {
        return Err(Failure::BadInput(
            "error: --connect-via-ca names the authority of a lab: give it with --connect-via or --api-via (a production server's authority goes in the topology's `ca_file`)".into(),
        ));
    }
    if let Some(ca) = &conn.connect_via_ca
        && let Err(e) = std::fs::metadata(ca)
    {
        return Err(Failure::BadInput(format!(
            "error: --connect-via-ca {}: {e}",
            ca.display()
        )));
    }
    Ok(ConnectOptions {
        connect_via: conn.connect_via,
        connect_via_ca: conn.connect_via_ca.clone(),
        connect_timeout: Duration::from_secs(conn.connect_timeout.max(1)),
        command_timeout: Duration::from_secs(conn.command_timeout.max(1)),
        lab_login: None,
        api_via: conn.api_via,
        lab_windows_login: None,
    })
}

/// The connection options for the selected servers, after the checks that need no network:
/// every password source must resolve (else exit 2 listing them all, before any server is
/// touched), and a warning says when `--connect-via` sends servers that ask for TLS to a lab in
/// plaintext.
fn connect_for(
    topology: &Topology,
    selection: &Selection,
    conn: &ConnArgs,
) -> Result<ConnectOptions, Failure> {
    let options = connect_options(conn)?;
    let servers = || selection.servers.iter().map(|&id| topology.server(id));
    // A lab rehearsal that sent one transport to the lab and the other to production would
    // change production servers: each transport in use must go to the lab, or neither.
    let over = |t: topology::Transport| servers().filter(|s| s.transport == t).count();
    let (sql, api) = (
        over(topology::Transport::Sql),
        over(topology::Transport::Api),
    );
    let lab_flag = match (conn.connect_via, conn.api_via) {
        (Some(_), None) if api > 0 => Some(("--connect-via", "--api-via", api, "web service")),
        (None, Some(_)) if sql > 0 => Some(("--api-via", "--connect-via", sql, "SUSDB")),
        _ => None,
    };
    if let Some((given, missing, count, what)) = lab_flag {
        return Err(Failure::BadInput(format!(
            "error: {given} sends connections to a lab, but {count} selected server(s) are reached through their {what}, which would still be reached at their own addresses: add {missing} ADDR (the lab's other listener)"
        )));
    }
    let missing = workflows::reach::missing_secrets(servers(), &options);
    if !missing.is_empty() {
        let mut text = format!(
            "error: {} password source(s) cannot be read; nothing was sent to any server:",
            missing.len()
        );
        for (problem, names) in &missing {
            let shown: Vec<&str> = names.iter().take(5).map(String::as_str).collect();
            let more = names.len() - shown.len();
            text.push_str(&format!(
                "\n  - {problem} (servers: {}{})",
                shown.join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            ));
        }
        return Err(Failure::BadInput(text));
    }
    if let Some(via) = conn.connect_via
        && via.ip().is_loopback()
        && conn.connect_via_ca.is_none()
    {
        let encrypted = servers()
            .filter_map(|s| s.via_sql())
            .filter(|sql| sql.pipe.is_none() && sql.encrypt != topology::Encrypt::DangerPlaintext)
            .count();
        if encrypted > 0 {
            report::say(&format!(
                "warning: --connect-via {via}: {encrypted} server(s) whose `encrypt` asks for TLS are reached in plaintext (a lab on loopback); add --connect-via-ca with the authority of `lab --tls-generate` to keep their encryption"
            ));
        }
    }
    // Plaintext towards production: say what crosses the network readable.
    if conn.connect_via.is_none() {
        let plain: Vec<&topology::Server> = servers()
            .filter(|s| {
                s.via_sql().is_some_and(|sql| {
                    sql.pipe.is_none() && sql.encrypt == topology::Encrypt::DangerPlaintext
                })
            })
            .collect();
        let (with_sql_login, with_windows): (Vec<&topology::Server>, Vec<&topology::Server>) =
            plain.into_iter().partition(|s| {
                s.via_sql()
                    .is_some_and(|sql| matches!(sql.auth, topology::Auth::Sql { .. }))
            });
        let names = |list: &[&topology::Server]| {
            list.iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        if !with_sql_login.is_empty() {
            report::say(&format!(
                "warning: `encrypt: danger-plaintext` with a SQL login ({}): the login's password \
                 crosses the network readable (TDS only obfuscates it), and so does every query \
                 and answer; use `tls_min: \"1.0\"` with `encrypt: required` for a server that \
                 speaks only TLS 1.0",
                names(&with_sql_login)
            ));
        }
        if !with_windows.is_empty() {
            report::say(&format!(
                "warning: `encrypt: danger-plaintext` with Windows authentication ({}): NTLM never \
                 sends the password, but its exchange can be recorded and attacked offline, and \
                 every query and answer (server names, approvals) crosses the network readable",
                names(&with_windows)
            ));
        }
    }
    if let Some(via) = conn.api_via
        && via.ip().is_loopback()
        && conn.connect_via_ca.is_none()
    {
        let encrypted = servers()
            .filter_map(|s| s.via_api())
            .filter(|a| a.tls)
            .count();
        if encrypted > 0 {
            report::say(&format!(
                "warning: --api-via {via}: {encrypted} server(s) whose `api.tls` asks for HTTPS are reached over plain HTTP (a lab on loopback); add --connect-via-ca with the authority of `lab --tls-generate` to keep their encryption"
            ));
        }
    }
    Ok(options)
}

/// One line when the top servers have registered downstream servers the file lacks: they would
/// never be repaired, and nothing else would say so.
async fn say_unlisted(topology: &Topology, options: &ConnectOptions) {
    let unlisted = workflows::discover::unlisted(topology, options).await;
    if unlisted.count > 0 {
        report::say(&format!(
            "note: {} registered downstream server(s) are not in the topology: wsus-reset diff {}",
            unlisted.count,
            topology.source()
        ));
    }
    for (top, why) in &unlisted.unread {
        report::say(&format!(
            "note: the downstream-server table of top server {top} could not be read ({}): \
             servers it registered and the topology lacks are not counted; wsus-reset diff {} \
             names them once it can be read",
            report::printable(why, 300),
            topology.source()
        ));
    }
}

pub(crate) fn select(topology: &Topology, select: SelectArgs) -> Result<Selection, Failure> {
    topology
        .select(&select.into())
        .map_err(|e| Failure::BadInput(format!("error: {e}")))
}

fn select_all(topology: &Topology) -> Result<Selection, Failure> {
    select(
        topology,
        SelectArgs {
            only: Vec::new(),
            with_downstream: false,
            allow_partial: false,
        },
    )
}

/// The exact command that finishes an unfinished run: `resume` with the state directory and the
/// connection options this run was given.
fn resume_command(run: &RunArgs, conn: &ConnArgs) -> String {
    fn quoted(text: &str) -> String {
        if !text.is_empty()
            && text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./:=@,+%".contains(c))
        {
            text.to_string()
        } else {
            format!("'{}'", text.replace('\'', "'\\''"))
        }
    }
    let mut command = "wsus-reset resume".to_string();
    if run.state_dir != Path::new(crate::cli::DEFAULT_STATE_DIR) {
        command.push_str(" --state-dir ");
        command.push_str(&quoted(&run.state_dir.to_string_lossy()));
    }
    if let Some(via) = conn.connect_via {
        command.push_str(&format!(" --connect-via {via}"));
    }
    if let Some(via) = conn.api_via {
        command.push_str(&format!(" --api-via {via}"));
    }
    if let Some(ca) = &conn.connect_via_ca {
        command.push_str(" --connect-via-ca ");
        command.push_str(&quoted(&ca.to_string_lossy()));
    }
    command
}

/// Ctrl-C or SIGTERM once: stop starting servers, let steps in flight finish, run compensations.
/// Twice: stop at once (the journal tells `resume` what to finish).
fn interrupts(resume: String) -> Interrupts {
    let interrupts = Interrupts::default();
    let (stop, abort) = (interrupts.stop.clone(), interrupts.abort.clone());
    let mut signals = Signals::watch();
    tokio::spawn(async move {
        for n in 0..2 {
            if !signals.recv().await {
                return;
            }
            if n == 0 {
                report::say(&format!(
                    "interrupt: no new server starts; steps in flight finish and every replica is \
                     restored. Interrupt again to stop at once (then `{resume}`)."
                ));
                stop.cancel();
            } else {
                report::say(&format!(
                    "second interrupt: stopping now; finish with `{resume}`"
                ));
                abort.cancel();
            }
        }
    });
    interrupts
}

/// SIGINT and SIGTERM (Ctrl-C on Windows), watched from the moment this is made: one that comes
/// before the first [`Signals::recv`] is kept for it, rather than killing the process as the
/// default action would. Make it before saying "listening" or starting any change.
struct Signals {
    #[cfg(unix)]
    watched: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
    #[cfg(windows)]
    watched: Option<tokio::signal::windows::CtrlC>,
}

impl Signals {
    /// Must run inside the Tokio runtime.
    fn watch() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let watched = signal(SignalKind::interrupt())
                .and_then(|int| Ok((int, signal(SignalKind::terminate())?)))
                .ok();
            Signals { watched }
        }
        #[cfg(windows)]
        {
            Signals {
                watched: tokio::signal::windows::ctrl_c().ok(),
            }
        }
    }

    /// The next signal; false if signals cannot be watched (then this never returns true).
    async fn recv(&mut self) -> bool {
        #[cfg(unix)]
        {
            let Some((int, term)) = &mut self.watched else {
                return false;
            };
            tokio::select! {
                got = int.recv() => got.is_some(),
                got = term.recv() => got.is_some(),
            }
        }
        #[cfg(windows)]
        {
            match &mut self.watched {
                Some(ctrl_c) => ctrl_c.recv().await.is_some(),
                None => false,
            }
        }
    }
}

/// The operator's name for WSUS's own audit columns (`@adminName`): the account running the tool,
/// `DOMAIN\user` on Windows.
fn admin_name() -> String {
    format!("wsus-reset ({})", os_account())
}

/// The OS account this process runs as, as `whoami` says it. Windows: `USERDOMAIN\USERNAME`;
/// elsewhere `USER` or `LOGNAME`, then `id -un`, then the numeric user id.
fn os_account() -> String {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    if cfg!(windows) {
        return match (var("USERDOMAIN"), var("USERNAME")) {
            (Some(domain), Some(user)) => format!("{domain}\\{user}"),
            (None, Some(user)) => user,
            _ => "unknown Windows account".into(),
        };
    }
    if let Some(user) = var("USER").or_else(|| var("LOGNAME")) {
        return user;
    }
    let id = |arg: &str| {
        std::process::Command::new("id")
            .arg(arg)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .filter(|s| !s.is_empty())
    };
    id("-un")
        .or_else(|| id("-u").map(|uid| format!("uid {uid}")))
        .unwrap_or_else(|| "unknown account".into())
}

/// Takes the hierarchy lock, runs the engine with the repair workflow, reports as it goes.
async fn run_engine(
    topology: Arc<Topology>,
    selection: Selection,
    run: &RunArgs,
    options: ConnectOptions,
    resume: bool,
    resume_with: String,
) -> Result<RunReport, Failure> {
    let lock = HierarchyLock::acquire(&topology, &selection, &options)
        .await
        .map_err(|e| Failure::Exit(exit::LOCKED, format!("error: {e}")))?;
    for (top, why) in &lock.unreachable {
        report::say(&format!(
            "warning: cannot take the hierarchy lock on top server {top} ({why}): no server of its tree will be changed (each stops at its probe, reported FAILED)"
        ));
    }
    for (top, on) in &lock.locked_below {
        report::say(&format!(
            "note: top server {top} is reached through its web service, which has no lock: its tree's lock is taken on {on}, the first server of the tree reached through SQL"
        ));
    }
    if !lock.unlocked_api.is_empty() {
        report::say(&format!(
            "note: top server(s) {} and every server below them are reached through the web service, which has no lock: their trees are guarded by this state directory's lock only, so run wsus-reset for them from one machine",
            lock.unlocked_api.join(", ")
        ));
    }
    let interrupts = interrupts(resume_with.clone());
    let watched = lock.watch(
        &topology,
        &options,
        Duration::from_millis(run.lock_check_ms),
        interrupts.stop.clone(),
    );
    let tops = Arc::new(tops_of(&topology, &selection));
    let repair = Repair {
        update: topology.update().to_string(),
        connect: options,
        admin: admin_name(),
        lock: Some(watched.view()),
        tops: Arc::clone(&tops),
        accept_licence: run.accept_eula,
    };
    let engine_options = RunOptions {
        parallel: usize::from(run.parallel),
        max_failures: run.max_failures,
        state_dir: run.state_dir.clone(),
        new_run: run.new_run,
        ..RunOptions::default()
    };
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let reporter = report::spawn(rx, run.json, selection.servers.len());
    let engine = Engine::new(repair, Arc::clone(&topology), engine_options).with_events(tx);
    let result = if resume {
        engine.resume(interrupts).await
    } else {
        engine.apply(&selection, interrupts).await
    };
    let _ = reporter.await;
    for (top, why) in watched
        .retaken
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
    {
        report::say(&format!(
            "note: the hierarchy lock on top server {top} was lost ({why}) and taken again at once"
        ));
    }
    for (top, why) in watched
        .lost
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
    {
        report::say(&format!(
            "error: lost the hierarchy lock on top server {top} ({why}): no further server was started, steps in flight finished and compensated"
        ));
    }
    // A lock lost and taken again leaves a window in which another run may have changed the
    // tree: a server of it that the probe found already repaired may be that run's work, so the
    // run does not say it succeeded.
    let retaken_tops: Vec<String> = watched
        .retaken
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .map(|(top, _)| top.clone())
        .collect();
    drop(watched);
    let mut report = result.map_err(|e| engine_failure(e, &resume_with))?;
    if !retaken_tops.is_empty() {
        let found_done: Vec<&str> = report
            .servers
            .iter()
            .filter(|s| tops.get(&s.name).is_some_and(|t| retaken_tops.contains(t)))
            .filter(|s| {
                s.notes
                    .iter()
                    .any(|n| n.contains("already declined and consistent"))
            })
            .map(|s| s.name.as_str())
            .collect();
        if !found_done.is_empty() && report.outcome == RunOutcome::Succeeded {
            report::say(&format!(
                "error: the hierarchy lock was lost and taken again during the run, and {} found \
                 already repaired: another run may have changed them meanwhile; check with \
                 `wsus-reset verify` and the other run's journal",
                found_done.join(", ")
            ));
            report.outcome = RunOutcome::Failed;
        }
    }
    Ok(report)
}

/// An engine error as an exit code and text; `resume` is the exact command that finishes an
/// unfinished run.
fn engine_failure(e: EngineError, resume: &str) -> Failure {
    match e {
        EngineError::State(StateError::Locked { .. }) => {
            Failure::Exit(exit::LOCKED, format!("error: {e}"))
        }
        EngineError::Unfinished { .. } => Failure::Exit(
            exit::UNFINISHED,
            format!(
                "error: {e}
to finish it: {resume}"
            ),
        ),
        other => Failure::BadInput(format!("error: {other}")),
    }
}

fn finish(
    report: &RunReport,
    run: &RunArgs,
    conn: &ConnArgs,
    out: &mut impl Write,
) -> Result<u8, Failure> {
    if !run.json {
        crate::emit(out, &report::summary_table(report, true))?;
    }
    Ok(match report.outcome {
        RunOutcome::Succeeded => exit::OK,
        RunOutcome::Failed => exit::FAILED,
        RunOutcome::Unfinished => {
            let owed: Vec<&str> = report
                .servers
                .iter()
                .filter(|s| matches!(s.status, ServerStatus::CompensationFailed { .. }))
                .map(|s| s.name.as_str())
                .collect();
            let why = if owed.is_empty() {
                "the run is unfinished".to_string()
            } else {
                format!(
                    "the run is unfinished: {} not switched back yet ({} owed)",
                    owed.join(", "),
                    if owed.len() == 1 {
                        "a restore is"
                    } else {
                        "restores are"
                    }
                )
            };
            report::say(&format!(
                "{why}; finish it with: {}",
                resume_command(run, conn)
            ));
            exit::UNFINISHED
        }
    })
}

fn seed(seed: LabSeed) -> Seed {
    match seed {
        LabSeed::Broken => Seed::Broken,
        LabSeed::Healthy => Seed::Healthy,
        LabSeed::Mixed => Seed::Mixed,
        LabSeed::SeveralLatest => Seed::SeveralLatest,
    }
}

/// Binds a listener, and says the address it got (port 0 picks one): only loopback unless told
/// otherwise, since the lab is a stand-in that accepts a made-up login and, without a
/// certificate, speaks plaintext.
async fn bind(
    addr: std::net::SocketAddr,
    any: bool,
) -> Result<(TcpListener, std::net::SocketAddr), Failure> {
    if !addr.ip().is_loopback() && !any {
        return Err(Failure::BadInput(format!(
            "error: {addr} is not a loopback address, and the lab is a stand-in for tests (plaintext without a certificate): use 127.0.0.1, or add --listen-any"
        )));
    }
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| Failure::BadInput(format!("error: cannot listen on {addr}: {e}")))?;
    let bound = listener
        .local_addr()
        .map_err(|e| Failure::BadInput(format!("error: {e}")))?;
    Ok((listener, bound))
}

/// A throwaway authority and a certificate for each host of `topology` (as its clients will
/// validate it); the authority goes to `dir/ca.pem`, which is returned.
fn generate_identity(
    topology: &Topology,
    dir: &Path,
) -> Result<(susdb_lab::tls::Identity, PathBuf), Failure> {
    let mut hosts: Vec<String> = topology
        .servers()
        .iter()
        // A server's name too: hand-made clients of the web service reach it by that.
        .flat_map(|s| {
            let sql = s.sql.as_ref().and_then(|sql| sql.host.as_ref());
            let api = s.api.as_ref().map(|api| &api.host);
            sql.into_iter()
                .chain(api)
                .chain(std::iter::once(&s.name))
                .cloned()
        })
        .collect();
    hosts.sort_unstable();
    hosts.dedup();
    let (identity, ca) = susdb_lab::tls::Identity::generate(&hosts)
        .map_err(|e| Failure::BadInput(format!("error: {e}")))?;
    let path = dir.join("ca.pem");
    std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&path, ca))
        .map_err(|e| Failure::BadInput(format!("error: cannot write {}: {e}", path.display())))?;
    Ok((identity, path))
}

impl LabSeed {
    fn name(self) -> &'static str {
        match self {
            LabSeed::Broken => "broken",
            LabSeed::Healthy => "healthy",
            LabSeed::Mixed => "mixed",
            LabSeed::SeveralLatest => "several-latest",
        }
    }
}
