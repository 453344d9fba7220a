//! The commands that talk to servers: `plan --online`, `apply`, `resume`, `verify`, `rehearse`
//! and `lab`. Each builds its runtime here, calls the library crates, and returns an exit code.

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
use workflows::applock::{HierarchyLock, tops_of};
use workflows::connect::ConnectOptions;
use workflows::survey::survey;
use workflows::{Plan, Repair};

use crate::cli::{ConnArgs, LabSeed, RunArgs, SelectArgs};
use crate::report;
use crate::{Failure, exit};

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::BadInput(format!("error: cannot start the async runtime: {e}")))
}

fn connect_options(conn: &ConnArgs) -> Result<ConnectOptions, Failure> {
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
    let missing = workflows::connect::missing_secrets(servers(), &options);
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
            .filter(|s| s.sql.pipe.is_none() && s.sql.encrypt != topology::Encrypt::DangerPlaintext)
            .count();
        if encrypted > 0 {
            report::say(&format!(
                "warning: --connect-via {via}: {encrypted} server(s) whose `encrypt` asks for TLS are reached in plaintext (a lab on loopback); add --connect-via-ca with the authority of `lab --tls-generate` to keep their encryption"
            ));
        }
    }
    Ok(options)
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
    tokio::spawn(async move {
        for n in 0..2 {
            if !wait_for_signal().await {
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

/// Waits for SIGINT or SIGTERM; false if signals cannot be watched.
async fn wait_for_signal() -> bool {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return false;
        };
        tokio::select! {
            _ = int.recv() => true,
            _ = term.recv() => true,
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await.is_ok()
    }
}

/// `plan FILE --online`: the read-only probe of every selected server, then the plan.
pub fn plan_online(
    topology: &Topology,
    selection: &Selection,
    conn: &ConnArgs,
) -> Result<Plan, Failure> {
    let options = connect_for(topology, selection, conn)?;
    let surveyed = runtime()?.block_on(survey(topology, selection, &options, conn.probe_parallel));
    Ok(Plan::online(topology, selection, &surveyed))
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

/// What `apply` was given: a topology, or a saved plan and the topology it names.
struct ApplyInput {
    topology: Arc<Topology>,
    selection: Selection,
    plan: Option<Plan>,
}

fn apply_input(input: &Path, select_args: SelectArgs) -> Result<ApplyInput, Failure> {
    let is_plan = input.extension().is_some_and(|e| e == "json");
    if !is_plan {
        let topology = Topology::load(input)?;
        let selection = select(&topology, select_args)?;
        return Ok(ApplyInput {
            topology: Arc::new(topology),
            selection,
            plan: None,
        });
    }
    if !select_args.only.is_empty() {
        return Err(Failure::BadInput(
            "error: a saved plan already says which servers run: drop --only, or give the topology file instead".into(),
        ));
    }
    // A plan of 100,000 servers with what each was observed to hold is a few tens of MiB.
    let bytes = topology::read_input(input, 256 << 20)
        .map_err(|e| Failure::BadInput(format!("error: {e}")))?;
    let plan: Plan = serde_json::from_slice(&bytes).map_err(|e| {
        Failure::BadInput(format!(
            "error: {} is not a plan saved by `wsus-reset plan --out`: {e}",
            input.display()
        ))
    })?;
    if plan.plan_version != workflows::PLAN_VERSION {
        return Err(Failure::BadInput(format!(
            "error: {} is plan version {}, this wsus-reset reads version {}: make the plan again",
            input.display(),
            plan.plan_version,
            workflows::PLAN_VERSION
        )));
    }
    let topology = Topology::load(Path::new(&plan.topology))?;
    if topology.fingerprint() != plan.fingerprint {
        return Err(Failure::BadInput(format!(
            "error: the topology {} changed since the plan was made ({} then, {} now): review a new plan",
            plan.topology,
            plan.fingerprint,
            topology.fingerprint()
        )));
    }
    let partial = plan.servers.iter().any(|s| s.upstream_not_selected);
    let selection = topology
        .select(&SelectOptions {
            only: plan.servers.iter().map(|s| s.name.clone()).collect(),
            with_downstream: false,
            allow_partial: partial,
        })
        .map_err(|e| Failure::BadInput(format!("error: the saved plan: {e}")))?;
    Ok(ApplyInput {
        topology: Arc::new(topology),
        selection,
        plan: Some(plan),
    })
}

/// Asks on a terminal; refuses elsewhere.
fn confirm(plan: &Plan) -> Result<(), Failure> {
    let servers = plan.servers.len();
    let changes: usize = plan
        .servers
        .iter()
        .map(|s| s.steps.iter().filter(|step| step.mutates()).count())
        .sum();
    let summary = format!(
        "About to repair {servers} server(s) of {} ({changes} database changes in all; `wsus-reset plan` shows each).",
        plan.topology
    );
    if !std::io::stdin().is_terminal() {
        return Err(Failure::BadInput(format!(
            "{summary}\nerror: refusing to change servers without --yes when not on a terminal"
        )));
    }
    report::say(&format!("{summary}\nProceed? [y/N] "));
    let mut answer = String::new();
    let _ = std::io::stdin().read_line(&mut answer);
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        Err(Failure::Exit(
            exit::BAD_INPUT,
            "not confirmed: nothing changed".into(),
        ))
    }
}

pub fn apply(
    input: &Path,
    yes: bool,
    select_args: SelectArgs,
    run: &RunArgs,
    conn: &ConnArgs,
    out: &mut impl Write,
) -> Result<u8, Failure> {
    let ApplyInput {
        topology,
        selection,
        plan,
    } = apply_input(input, select_args)?;
    let options = connect_for(&topology, &selection, conn)?;
    let rt = runtime()?;
    if let Some(plan) = &plan {
        // The saved plan is the contract: nobody reviewed a server it could not vouch for, and
        // apply does exactly what it says or nothing.
        let unready = plan.unready();
        if !unready.is_empty() {
            return Err(Failure::BadInput(format!(
                "error: the plan could not vouch for {}: UNREACHABLE or WILL FAIL when it was made, so nobody reviewed their state. Make a new plan once they are reachable, or leave them out (`plan --online --only ...`)",
                unready.join(", ")
            )));
        }
        let expected = if plan.is_online() {
            let now = rt.block_on(survey(&topology, &selection, &options, conn.probe_parallel));
            Plan::online(&topology, &selection, &now)
        } else {
            Plan::offline(&topology, &selection)
        };
        let differences = plan.differences(&expected);
        if !differences.is_empty() {
            let shown: Vec<&str> = differences.iter().take(10).map(String::as_str).collect();
            return Err(Failure::BadInput(format!(
                "error: apply would not do what the saved plan says: {}{}. Review a new plan (`wsus-reset plan --online --out ...`).",
                shown.join("; "),
                if differences.len() > shown.len() {
                    format!("; and {} more", differences.len() - shown.len())
                } else {
                    String::new()
                }
            )));
        }
    }
    if !yes {
        confirm(
            &plan
                .clone()
                .unwrap_or_else(|| Plan::offline(&topology, &selection)),
        )?;
    }
    let report = rt.block_on(run_engine(
        Arc::clone(&topology),
        selection,
        run,
        options,
        false,
        resume_command(run, conn),
    ))?;
    finish(&report, run, conn, out)
}

pub fn resume(run: &RunArgs, conn: &ConnArgs, out: &mut impl Write) -> Result<u8, Failure> {
    let pending = engine::pending_run(&run.state_dir)
        .map_err(|e| engine_failure(e, &resume_command(run, conn)))?;
    let Some(replay) = pending else {
        return Err(Failure::BadInput(format!(
            "error: there is no unfinished run in {} to resume",
            run.state_dir.display()
        )));
    };
    let topology = Arc::new(Topology::load(Path::new(&replay.topology))?);
    let ids = replay
        .servers
        .iter()
        .filter_map(|name| topology.find(name))
        .collect();
    let selection = Selection {
        servers: ids,
        partial: Vec::new(),
    };
    let options = connect_for(&topology, &selection, conn)?;
    let rt = runtime()?;
    let report = rt.block_on(run_engine(
        topology,
        selection,
        run,
        options,
        true,
        resume_command(run, conn),
    ))?;
    finish(&report, run, conn, out)
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
    let interrupts = interrupts(resume_with.clone());
    let watched = lock.watch(
        &topology,
        &options,
        Duration::from_millis(run.lock_check_ms),
        interrupts.stop.clone(),
    );
    let repair = Repair {
        update: topology.update().to_string(),
        connect: options,
        admin: admin_name(),
        locked_tops: Some(Arc::clone(&watched.held)),
        tops: Arc::new(tops_of(&topology, &selection)),
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
    drop(watched);
    result.map_err(|e| engine_failure(e, &resume_with))
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

/// `verify`: the survey, judged.
pub fn verify(
    file: &Path,
    select_args: SelectArgs,
    conn: &ConnArgs,
    json: bool,
    out: &mut impl Write,
) -> Result<u8, Failure> {
    let topology = Topology::load(file)?;
    // Read-only: order does not matter, so a server may be verified without its upstream.
    let selection = select(
        &topology,
        SelectArgs {
            allow_partial: true,
            ..select_args
        },
    )?;
    let options = connect_for(&topology, &selection, conn)?;
    let surveyed =
        runtime()?.block_on(survey(&topology, &selection, &options, conn.probe_parallel));
    let text = if json {
        let mut text = serde_json::to_string_pretty(&surveyed)
            .map_err(|e| Failure::BadInput(format!("error: {e}")))?;
        text.push('\n');
        text
    } else {
        report::survey_table(&surveyed)
    };
    crate::emit(out, &text)?;
    Ok(if surveyed.iter().all(|s| s.ok) {
        exit::OK
    } else {
        exit::FAILED
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

/// Binds a listener: only loopback unless told otherwise, since the lab is a stand-in that accepts
/// a made-up login and, without a certificate, speaks plaintext.
async fn bind(addr: std::net::SocketAddr, any: bool) -> Result<TcpListener, Failure> {
    if !addr.ip().is_loopback() && !any {
        return Err(Failure::BadInput(format!(
            "error: {addr} is not a loopback address, and the lab is a stand-in for tests (plaintext without a certificate): use 127.0.0.1, or add --listen-any"
        )));
    }
    TcpListener::bind(addr)
        .await
        .map_err(|e| Failure::BadInput(format!("error: cannot listen on {addr}: {e}")))
}

/// The `lab` command's options.
#[derive(Debug)]
pub struct LabOptions {
    pub listen: std::net::SocketAddr,
    pub listen_any: bool,
    /// A local named pipe to serve instead of TCP (Windows).
    pub listen_pipe: Option<String>,
    pub tls: LabTls,
    pub seed: LabSeed,
    pub sql_version: susdb_lab::version::SqlVersion,
    pub replica_sync_ms: Option<u64>,
    pub state: Option<PathBuf>,
    pub faults: Option<PathBuf>,
    pub latency: u64,
    /// SQL login: user, and the variable holding its password.
    pub login: Option<(String, String)>,
    /// Windows account (`DOMAIN\user`), and the variable holding its password.
    pub windows_login: Option<(String, String)>,
}

/// What the lab encrypts with.
#[derive(Debug)]
pub enum LabTls {
    /// Plaintext.
    None,
    /// A certificate chain and its key, PEM files.
    Files { cert: PathBuf, key: PathBuf },
    /// A throwaway authority, written to DIR/ca.pem, and a certificate for every host.
    Generate(PathBuf),
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
        .filter_map(|s| s.sql.host.clone())
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

fn read_identity(cert: &Path, key: &Path) -> Result<susdb_lab::tls::Identity, Failure> {
    let read = |path: &Path| {
        std::fs::read(path)
            .map_err(|e| Failure::BadInput(format!("error: cannot read {}: {e}", path.display())))
    };
    Ok(susdb_lab::tls::Identity {
        cert_chain_pem: read(cert)?,
        key_pem: read(key)?,
        by_name: Vec::new(),
    })
}

fn secret_from_env(who: &str, var: &str) -> Result<String, Failure> {
    std::env::var(var).map_err(|_| {
        Failure::BadInput(format!(
            "error: the password of {who} comes from environment variable {var}, which is not set"
        ))
    })
}

/// `lab`: serves until SIGINT or SIGTERM, then writes the state and exits 0.
pub fn lab(file: &Path, options: LabOptions, out: &mut impl Write) -> Result<u8, Failure> {
    let LabOptions {
        listen,
        listen_any,
        listen_pipe,
        tls,
        seed: lab_seed,
        sql_version,
        replica_sync_ms,
        state,
        faults,
        latency,
        login,
        windows_login,
    } = options;
    let topology = Topology::load(file)?;
    let credentials = login
        .map(|(user, var)| secret_from_env(&user, &var).map(|p| (user, p)))
        .transpose()?;
    let windows_login = windows_login
        .map(|(user, var)| secret_from_env(&user, &var).map(|p| (user, p)))
        .transpose()?;
    let faults = match faults {
        None => Faults::default(),
        Some(path) => {
            let faults =
                Faults::load(&path).map_err(|e| Failure::BadInput(format!("error: {e}")))?;
            let names: Vec<&str> = topology.servers().iter().map(|s| s.name.as_str()).collect();
            faults
                .validate(&path.display().to_string(), &names)
                .map_err(|e| Failure::BadInput(format!("error: {e}")))?;
            faults
        }
    };
    let (tls, trust) = match tls {
        LabTls::None => (None, String::new()),
        LabTls::Files { cert, key } => (
            Some(read_identity(&cert, &key)?),
            format!("; TLS with {}", cert.display()),
        ),
        LabTls::Generate(dir) => {
            let (identity, ca) = generate_identity(&topology, &dir)?;
            let trust = format!(
                "; TLS: clients trust {} (--connect-via-ca, or `ca_file`)",
                ca.display()
            );
            (Some(identity), trust)
        }
    };
    let lab = Lab::new(
        &topology,
        LabConfig {
            seed: seed(lab_seed),
            latency: Duration::from_millis(latency),
            faults,
            credentials,
            windows_login,
            state_file: state,
            tls,
            sql_version,
            replica_sync: replica_sync_ms.map(Duration::from_millis),
        },
    )
    .map_err(|e| Failure::BadInput(format!("error: {e}")))?;
    let rt = runtime()?;
    rt.block_on(async {
        let stop = CancellationToken::new();
        let servers = topology.servers().len();
        let mut serving = match listen_pipe {
            #[cfg(windows)]
            Some(name) => {
                crate::emit(out, &format!("listening on pipe {name} ({servers} servers)\n"))?;
                let (lab, stop) = (lab.clone(), stop.clone());
                tokio::spawn(async move { lab.serve_pipe(&name, stop).await })
            }
            #[cfg(not(windows))]
            Some(_) => {
                return Err(Failure::BadInput(
                    "error: --listen-pipe works only on Windows; here, listen on a loopback address (--listen)".into(),
                ));
            }
            None => {
                let listener = bind(listen, listen_any).await?;
                let addr = listener
                    .local_addr()
                    .map_err(|e| Failure::BadInput(format!("error: {e}")))?;
                crate::emit(
                    out,
                    &format!(
                        "listening on {addr} ({servers} servers; connect with --connect-via {addr}{trust})\n"
                    ),
                )?;
                let (lab, stop) = (lab.clone(), stop.clone());
                tokio::spawn(async move { lab.serve(listener, stop).await })
            }
        };
        // Until a signal, or until serving fails by itself (a pipe that cannot be created).
        let result = tokio::select! {
            _ = wait_for_signal() => {
                stop.cancel();
                serving.await
            }
            result = &mut serving => result,
        };
        match result {
            Ok(Ok(())) => Ok(exit::OK),
            Ok(Err(e)) => Err(Failure::BadInput(format!("error: {e}"))),
            Err(e) => Err(Failure::BadInput(format!("error: the lab stopped: {e}"))),
        }
    })
}

/// `rehearse`: the lab in-process on a free loopback port, then plan --online, apply, verify
/// through tiberius, and a report of before and after.
pub fn rehearse(
    file: &Path,
    lab_seed: LabSeed,
    parallel: u16,
    latency: u64,
    state_dir: Option<PathBuf>,
    json: bool,
    out: &mut impl Write,
) -> Result<u8, Failure> {
    let topology = Arc::new(Topology::load(file)?);
    // The lab checks one made-up SQL login, and every server logs in with it.
    let login = (
        "wsus_rehearsal".to_string(),
        format!("rehearsal-{:016x}", fastrand::u64(..)),
    );
    let temp = tempfile::tempdir()
        .map_err(|e| Failure::BadInput(format!("error: temporary directory: {e}")))?;
    // Encrypted as each server's `encrypt` says, its certificate validated against its host
    // name: the production TLS path, with a throwaway authority in place of the real one.
    let (identity, ca) = generate_identity(&topology, temp.path())?;
    let lab = Lab::new(
        &topology,
        LabConfig {
            seed: seed(lab_seed),
            latency: Duration::from_millis(latency),
            credentials: Some(login.clone()),
            tls: Some(identity),
            ..LabConfig::default()
        },
    )
    .map_err(|e| Failure::BadInput(format!("error: {e}")))?;
    // Without --state-dir the journal lives (and dies) in the temporary directory: not named.
    let keep_journal = state_dir.is_some();
    let state_dir = state_dir.unwrap_or_else(|| temp.path().join("state"));
    let rt = runtime()?;
    let (addr, stop) = rt.block_on(async {
        let listener = bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0)), false).await?;
        let addr = listener
            .local_addr()
            .map_err(|e| Failure::BadInput(format!("error: {e}")))?;
        let stop = CancellationToken::new();
        let serving = lab.clone();
        let token = stop.clone();
        tokio::spawn(async move { serving.serve(listener, token).await });
        Ok::<_, Failure>((addr, stop))
    })?;
    let options = ConnectOptions {
        connect_via: Some(addr),
        connect_via_ca: Some(ca),
        lab_login: Some(login),
        ..ConnectOptions::default()
    };
    let selection = select_all(&topology)?;
    let before_lab = lab.snapshot();
    let before = rt.block_on(survey(&topology, &selection, &options, 16));
    let plan = Plan::online(&topology, &selection, &before);
    if !json {
        crate::emit(
            out,
            &format!(
                "Rehearsal: lab on {addr} (SQL Server {}, TLS as each server's `encrypt` says, certificates from a throwaway authority), seed {}, {} servers\n\n== Online plan (read-only probe) ==\n{}\n== Apply ==\n",
                susdb_lab::version::SqlVersion::default().product_version(),
                lab_seed.name(),
                topology.servers().len(),
                plan.render_text()
            ),
        )?;
    }
    let run = RunArgs {
        parallel,
        max_failures: None,
        state_dir,
        json,
        new_run: false,
        lock_check_ms: 30_000,
    };
    let report = rt.block_on(run_engine(
        Arc::clone(&topology),
        selection.clone(),
        &run,
        options.clone(),
        false,
        "wsus-reset rehearse (the lab is gone with this process)".into(),
    ))?;
    let after = rt.block_on(survey(&topology, &selection, &options, 16));
    let after_lab = lab.snapshot();
    stop.cancel();
    if !json {
        crate::emit(out, &report::summary_table(&report, keep_journal))?;
        crate::emit(
            out,
            &format!(
                "\n== Verify ==\n{}",
                report::rehearsal_table(&before, &after, &before_lab, &after_lab)
            ),
        )?;
    }
    let verified = after.iter().all(|s| s.ok);
    Ok(match (report.outcome, verified) {
        (RunOutcome::Succeeded, true) => exit::OK,
        (RunOutcome::Unfinished, _) => exit::UNFINISHED,
        _ => exit::FAILED,
    })
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

/// What SUSDB says of one server, beside the log evidence.
#[derive(Debug, serde::Serialize)]
struct DbEvidence {
    server: String,
    /// The host name the logs use for it.
    host: String,
    state: String,
    needs_repair: bool,
    /// Each logged dictionary key, and which objects carry it as their ID on this server.
    keys: Vec<(String, Vec<String>)>,
}

/// Which objects of `server` carry each logged dictionary key as their ID, over one connection.
async fn place_keys(
    server: &topology::Server,
    options: &ConnectOptions,
    logged: &[String],
) -> Vec<(String, Vec<String>)> {
    let mut connection = workflows::connect::connect(server, options).await;
    let mut keys = Vec::new();
    for key in logged {
        let objects = match (key.parse::<i32>(), &mut connection) {
            (Err(_), _) => vec!["not a number".to_string()],
            (Ok(number), Ok(c)) => workflows::db::key_objects(c, number)
                .await
                .unwrap_or_else(|e| vec![format!("cannot ask: {}", e.message)]),
            (Ok(_), Err(e)) => vec![format!("cannot ask: {}", e.message)],
        };
        keys.push((key.clone(), objects));
    }
    keys
}

/// `diagnose`: the logs, and with a topology the databases, side by side.
pub fn diagnose(
    client_logs: &[PathBuf],
    server_logs: &[PathBuf],
    topology_file: Option<&Path>,
    format: crate::cli::PlanFormat,
    conn: &ConnArgs,
    out: &mut impl Write,
) -> Result<u8, Failure> {
    use crate::cli::PlanFormat;
    use diagnose::{Diagnosis, host_key};

    if client_logs.is_empty() && server_logs.is_empty() && topology_file.is_none() {
        return Err(Failure::BadInput(
            "error: nothing to diagnose: give --client-log PATH, --server-log PATH and/or --topology FILE".into(),
        ));
    }
    let topology = topology_file.map(Topology::load).transpose()?;
    let diagnosis = Diagnosis::run(client_logs, server_logs);
    // A log path that matches nothing is a typo, not "no evidence": refuse it, naming it.
    let unmatched: Vec<String> = diagnosis
        .skipped
        .iter()
        .filter(|s| s.matched_nothing)
        .map(|s| s.path.display().to_string())
        .collect();
    if !unmatched.is_empty() {
        return Err(Failure::BadInput(format!(
            "error: no log file matches {}: check the path (a file, a directory, or a quoted glob)",
            unmatched.join(", ")
        )));
    }
    let logs_given = !client_logs.is_empty() || !server_logs.is_empty();
    if logs_given && diagnosis.client_logs + diagnosis.server_logs == 0 {
        let why: Vec<String> = diagnosis
            .skipped
            .iter()
            .map(|s| format!("{}: {}", s.path.display(), s.reason))
            .collect();
        return Err(Failure::BadInput(format!(
            "error: no log could be read ({})",
            why.join("; ")
        )));
    }
    let mut evidence = Vec::new();
    // The top of each broken server's tree: repairing those trees is top-down, and `apply` leaves
    // the consistent servers in them alone.
    let mut tops = std::collections::BTreeSet::new();
    let mut any_broken = false;
    if let Some(topology) = &topology {
        let selection = select_all(topology)?;
        let top_of = tops_of(topology, &selection);
        let options = connect_for(topology, &selection, conn)?;
        let rt = runtime()?;
        let surveyed = rt.block_on(survey(topology, &selection, &options, conn.probe_parallel));
        for (found, &id) in surveyed.iter().zip(&selection.servers) {
            let server = topology.server(id);
            let host = server.sql.host.as_deref().map(host_key).unwrap_or_default();
            let aliases = [host_key(&server.name), host.clone()];
            let logged = diagnosis
                .servers
                .iter()
                .find(|v| aliases.contains(&v.server));
            let logged_keys = logged.map(|v| v.keys.as_slice()).unwrap_or_default();
            let keys = if logged_keys.is_empty() {
                Vec::new()
            } else {
                rt.block_on(place_keys(server, &options, logged_keys))
            };
            let log_broken = logged.is_some_and(|v| v.verdict == diagnose::Verdict::Broken);
            if log_broken || found.needs_repair {
                any_broken = true;
                tops.extend(top_of.get(&server.name).cloned());
            }
            evidence.push(DbEvidence {
                server: server.name.clone(),
                host: aliases[0].clone(),
                state: match &found.error {
                    Some(e) => format!("UNREACHABLE: {e}"),
                    None => found.verdict.clone(),
                },
                needs_repair: found.needs_repair,
                keys,
            });
        }
    }
    let file = topology_file.map(|p| p.display().to_string());
    let command = if topology.is_some() {
        let tops: Vec<String> = tops.into_iter().collect();
        any_broken.then(|| diagnose::repair_command(file.as_deref(), &tops))
    } else {
        (!diagnosis.broken().is_empty()).then(|| diagnose::repair_command(None, &[]))
    };
    let text = match format {
        PlanFormat::Json => {
            let mut text = serde_json::to_string_pretty(&serde_json::json!({
                "logs": diagnosis,
                "database": evidence,
                "repair_command": command,
            }))
            .map_err(|e| Failure::BadInput(format!("error: {e}")))?;
            text.push('\n');
            text
        }
        PlanFormat::Text | PlanFormat::Markdown => {
            let mut text = if format == PlanFormat::Text {
                diagnosis.render_text(command.as_deref())
            } else {
                diagnosis.render_markdown(command.as_deref())
            };
            if !evidence.is_empty() {
                text.push_str("\nDatabase evidence (read-only probe):\n");
                for e in &evidence {
                    text.push_str(&format!("  {}: {}\n", e.server, e.state));
                    for (key, objects) in &e.keys {
                        text.push_str(&format!(
                            "    logged key {key} is {} on this server\n",
                            if objects.is_empty() {
                                "no LocalUpdateID, RevisionID or DeploymentID".to_string()
                            } else {
                                objects.join(" and ")
                            }
                        ));
                    }
                }
            }
            text
        }
    };
    crate::emit(out, &text)?;
    let all_unreachable =
        !evidence.is_empty() && evidence.iter().all(|e| e.state.starts_with("UNREACHABLE"));
    if all_unreachable && !logs_given {
        return Err(Failure::Exit(
            exit::FAILED,
            "error: no server of the topology could be probed and no log was given: there is no evidence either way".into(),
        ));
    }
    Ok(
        if diagnosis.alarming() || evidence.iter().any(|e| e.needs_repair) {
            exit::FAILED
        } else {
            exit::OK
        },
    )
}
