//! Crashes and races between processes. This test binary re-runs itself as the child process
//! (selected by `ENGINE_CRASH_CHILD`), so it has its own `main` instead of the test harness.
//!
//! - The crash matrix: a child applies the walk and is killed with SIGKILL right after journal
//!   record k, for every k of a whole run, and right after each mutation took effect but before the
//!   engine heard of it; then `resume` must end with every step effective exactly once and every
//!   replica switched back.
//! - The interrupted compensation: at every journal record k a first interrupt (Ctrl-C) arrives;
//!   then, at the next intent (the compensation or the next mutation about to be sent), a second
//!   interrupt or a SIGKILL, or a SIGKILL right after a restore took effect. `resume` must end with
//!   every server repaired and in its declared mode, no approval change ever sent to a replica.
//! - The lock race: two processes start on one state directory at once; exactly one runs.

#![allow(clippy::unwrap_used, clippy::print_stdout, reason = "test program")]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use engine::{Engine, EngineError, Interrupts, RunOptions, RunOutcome, state::StateError};
use support::{Fake, Fault, FaultKind, Shared, Store, small};
use topology::{Mode, SelectOptions, Topology};

fn options(state: &Path, parallel: usize) -> RunOptions {
    RunOptions {
        parallel,
        state_dir: state.to_path_buf(),
        seed: Some(3),
        ..RunOptions::default()
    }
}

fn fake_in(dir: &Path) -> Fake {
    let effects = dir.join("effects");
    std::fs::create_dir_all(&effects).unwrap();
    Fake::new(Store::Dir(effects))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn apply(
    fake: Fake,
    t: &Arc<Topology>,
    opts: RunOptions,
    hook: Option<engine::journal::DurableHook>,
) -> Result<engine::RunReport, EngineError> {
    apply_interrupted(fake, t, opts, hook, Interrupts::default()).await
}

async fn apply_interrupted(
    fake: Fake,
    t: &Arc<Topology>,
    opts: RunOptions,
    hook: Option<engine::journal::DurableHook>,
    interrupts: Interrupts,
) -> Result<engine::RunReport, EngineError> {
    let selection = t.select(&SelectOptions::default()).unwrap();
    let mut engine = Engine::new(Shared(Arc::new(fake)), Arc::clone(t), opts);
    if let Some(hook) = hook {
        engine = engine.with_durable_hook(hook);
    }
    engine.apply(&selection, interrupts).await
}

/// What follows the first interrupt, in the interrupted-compensation matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Then {
    /// Nothing: the run stops by itself after its compensations.
    Nothing,
    /// A second interrupt at the next intent: stop at once.
    Abort,
    /// SIGKILL at the next intent, before its mutation is sent.
    Kill,
    /// SIGKILL right after a replica's restore took effect, before the engine hears of it.
    KillAfterRestore,
}

impl Then {
    const ALL: [Then; 4] = [
        Then::Nothing,
        Then::Abort,
        Then::Kill,
        Then::KillAfterRestore,
    ];

    fn name(self) -> &'static str {
        match self {
            Then::Nothing => "nothing",
            Then::Abort => "a second interrupt",
            Then::Kill => "SIGKILL",
            Then::KillAfterRestore => "SIGKILL after a restore took effect",
        }
    }
}

/// The child: apply, dying where told.
fn child(mode: &str) -> ! {
    let dir = PathBuf::from(std::env::var("ENGINE_CRASH_DIR").unwrap());
    let t = small();
    let rt = runtime();
    let code = match mode {
        "kill-at-record" => {
            let k: u64 = std::env::var("ENGINE_CRASH_AT").unwrap().parse().unwrap();
            let hook: engine::journal::DurableHook = Box::new(move |written, _| {
                if written == k {
                    support::die();
                }
            });
            rt.block_on(apply(
                fake_in(&dir),
                &t,
                options(&dir.join("state"), 2),
                Some(hook),
            ))
            .map(|_| 0)
            .unwrap_or(1)
        }
        "kill-after-effect" => {
            let server = std::env::var("ENGINE_CRASH_SERVER").unwrap();
            let step = std::env::var("ENGINE_CRASH_STEP").unwrap();
            let mut fake = fake_in(&dir);
            fake.faults.push(Fault {
                server,
                step,
                nth: 1,
                what: FaultKind::DieAfterEffect,
            });
            rt.block_on(apply(fake, &t, options(&dir.join("state"), 2), None))
                .map(|_| 0)
                .unwrap_or(1)
        }
        "interrupt-at-record" => {
            let k: u64 = std::env::var("ENGINE_CRASH_AT").unwrap().parse().unwrap();
            let then = Then::ALL[std::env::var("ENGINE_CRASH_THEN")
                .unwrap()
                .parse::<usize>()
                .unwrap()];
            let interrupts = Interrupts::default();
            let (stop, abort) = (interrupts.stop.clone(), interrupts.abort.clone());
            let hook: engine::journal::DurableHook = Box::new(move |written, record| {
                if written == k {
                    stop.cancel();
                } else if written > k && matches!(record, engine::journal::Record::Intent { .. }) {
                    match then {
                        Then::Abort => abort.cancel(),
                        Then::Kill => support::die(),
                        Then::Nothing | Then::KillAfterRestore => {}
                    }
                }
            });
            let mut fake = fake_in(&dir);
            if then == Then::KillAfterRestore {
                for s in t.servers().iter().filter(|s| s.mode == Mode::Replica) {
                    fake.faults.push(Fault {
                        server: s.name.clone(),
                        step: "restore".into(),
                        nth: 1,
                        what: FaultKind::DieAfterEffect,
                    });
                }
            }
            rt.block_on(apply_interrupted(
                fake,
                &t,
                options(&dir.join("state"), 2),
                Some(hook),
                interrupts,
            ))
            .map(|_| 0)
            .unwrap_or(1)
        }
        "race" => {
            // Start together: both children sleep until the instant the parent chose.
            let start: u128 = std::env::var("ENGINE_CRASH_START")
                .unwrap()
                .parse()
                .unwrap();
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_millis();
            std::thread::sleep(Duration::from_millis(
                u64::try_from(start.saturating_sub(now)).unwrap(),
            ));
            let mut fake = fake_in(&dir);
            fake.latency = Duration::from_millis(100);
            match rt.block_on(apply(fake, &t, options(&dir.join("state"), 8), None)) {
                Ok(r) if r.outcome == RunOutcome::Succeeded => 0,
                Err(EngineError::State(StateError::Locked {
                    holder: Some(h), ..
                })) => {
                    println!("locked by pid {}", h.pid);
                    3
                }
                other => {
                    println!("unexpected: {other:?}");
                    1
                }
            }
        }
        other => panic!("unknown child mode {other}"),
    };
    std::process::exit(code)
}

fn spawn(mode: &str, dir: &Path, env: &[(&str, String)]) -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.env("ENGINE_CRASH_CHILD", mode)
        .env("ENGINE_CRASH_DIR", dir);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

#[cfg(unix)]
fn killed(status: ExitStatus) -> bool {
    use std::os::unix::process::ExitStatusExt;
    status.signal() == Some(9)
}

/// `taskkill /F` ([`support::die`] on Windows) ends a process with exit code 1.
#[cfg(not(unix))]
fn killed(status: ExitStatus) -> bool {
    status.code() == Some(1)
}

/// After the crash: resume (if the run did not finish) and check exactly-once.
fn resume_and_check(dir: &Path, label: &str) -> Result<(), String> {
    let t = small();
    let rt = runtime();
    let result = rt.block_on(
        Engine::new(
            Shared(Arc::new(fake_in(dir))),
            Arc::clone(&t),
            options(&dir.join("state"), 2),
        )
        .resume(Interrupts::default()),
    );
    match result {
        Ok(r) if r.outcome == RunOutcome::Succeeded => {}
        Err(EngineError::NothingToResume { .. }) => {}
        other => return Err(format!("{label}: resume ended with {other:?}")),
    }
    let fake = fake_in(dir);
    for s in t.servers() {
        let expected: Vec<usize> = match s.mode {
            Mode::Replica => vec![1, 2, 3, 4, 5],
            Mode::Autonomous => vec![1, 2, 3],
        };
        let effects = fake.store.effects(&s.name);
        if effects != expected {
            return Err(format!(
                "{label}: {} has effects {effects:?}, expected each step once: {expected:?}",
                s.name
            ));
        }
    }
    Ok(())
}

/// After an interrupted compensation: `resume` until the run is finished, then every server is
/// repaired and in its declared mode. Steps may repeat (an interrupted attempt starts over), but a
/// refused call (an approval change sent to a replica) fails the server and so the check.
fn resume_and_check_state(dir: &Path, label: &str) -> Result<(), String> {
    let t = small();
    let rt = runtime();
    let mut tries = 0;
    while tries < 100 {
        tries += 1;
        let result = rt.block_on(
            Engine::new(
                Shared(Arc::new(fake_in(dir))),
                Arc::clone(&t),
                options(&dir.join("state"), 2),
            )
            .resume(Interrupts::default()),
        );
        match result {
            // Two replicas dying at once: the second `kill` helper may hold the killed child's
            // lock for a moment between its fork and its exec.
            Err(EngineError::State(StateError::Locked { .. })) => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(r) if r.outcome == RunOutcome::Unfinished && tries < 100 => {}
            Ok(r) if r.outcome == RunOutcome::Succeeded => break,
            Err(EngineError::NothingToResume { .. }) => break,
            other => return Err(format!("{label}: resume ended with {other:?}")),
        }
    }
    let fake = fake_in(dir);
    for s in t.servers() {
        let state = fake.state(s);
        let repaired = state.declined && !state.detect_only;
        if state.replica != (s.mode == Mode::Replica) || !repaired {
            return Err(format!(
                "{label}: {} ends {state:?} after effects {:?}",
                s.name,
                fake.store.effects(&s.name)
            ));
        }
    }
    Ok(())
}

fn interrupted_compensation_matrix(records: u64) -> Vec<(String, Result<(), String>)> {
    let mut results = Vec::new();
    for (t, then) in Then::ALL.iter().enumerate() {
        for k in 1..=records {
            let dir = tempfile::tempdir().unwrap();
            let status = spawn(
                "interrupt-at-record",
                dir.path(),
                &[
                    ("ENGINE_CRASH_AT", k.to_string()),
                    ("ENGINE_CRASH_THEN", t.to_string()),
                ],
            )
            .status()
            .unwrap();
            let label = format!(
                "interrupted after journal record {k}/{records}, then {}",
                then.name()
            );
            // The child exits by itself (0: the run ended, unfinished) or was killed.
            let result = if status.success() || killed(status) {
                resume_and_check_state(dir.path(), &label)
            } else {
                Err(format!("{label}: child ended with {status}"))
            };
            results.push((label, result));
        }
    }
    results
}

fn crash_matrix() -> Vec<(String, Result<(), String>)> {
    // Count the records of a whole run.
    let probe = tempfile::tempdir().unwrap();
    let count = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = Arc::clone(&count);
    let hook: engine::journal::DurableHook =
        Box::new(move |written, _| counter.store(written, std::sync::atomic::Ordering::SeqCst));
    runtime()
        .block_on(apply(
            fake_in(probe.path()),
            &small(),
            options(&probe.path().join("state"), 2),
            Some(hook),
        ))
        .unwrap();
    let records = count.load(std::sync::atomic::Ordering::SeqCst);
    assert!(records > 50, "a whole run wrote only {records} records");

    let mut results = Vec::new();
    for k in 1..=records {
        let dir = tempfile::tempdir().unwrap();
        let status = spawn(
            "kill-at-record",
            dir.path(),
            &[("ENGINE_CRASH_AT", k.to_string())],
        )
        .status()
        .unwrap();
        let label = format!("killed after journal record {k}/{records}");
        let result = if killed(status) {
            resume_and_check(dir.path(), &label)
        } else {
            Err(format!("{label}: child was not killed: {status}"))
        };
        results.push((label, result));
    }
    let t = small();
    for s in t.servers() {
        for step in support::steps(s.mode).iter().filter(|st| st.mutates()) {
            let dir = tempfile::tempdir().unwrap();
            let env = [
                ("ENGINE_CRASH_SERVER", s.name.clone()),
                ("ENGINE_CRASH_STEP", step.name.clone()),
            ];
            let status = spawn("kill-after-effect", dir.path(), &env)
                .status()
                .unwrap();
            let label = format!("killed after {} took effect on {}", step.name, s.name);
            let result = if killed(status) {
                resume_and_check(dir.path(), &label)
            } else {
                Err(format!("{label}: child was not killed: {status}"))
            };
            results.push((label, result));
        }
    }
    results.extend(interrupted_compensation_matrix(records));
    results
}

fn lock_race() -> (String, Result<(), String>) {
    let dir = tempfile::tempdir().unwrap();
    let start = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
        + 700;
    let children: Vec<_> = (0..2)
        .map(|_| {
            spawn(
                "race",
                dir.path(),
                &[("ENGINE_CRASH_START", start.to_string())],
            )
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    let pids: Vec<u32> = children.iter().map(std::process::Child::id).collect();
    let outputs: Vec<_> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let mut codes: Vec<i32> = outputs
        .iter()
        .map(|o| o.status.code().unwrap_or(-1))
        .collect();
    let loser = outputs.iter().position(|o| o.status.code() == Some(3));
    codes.sort_unstable();
    let label = "two processes start at once on one state dir".to_string();
    let result = if codes != [0, 3] {
        Err(format!(
            "exit codes {codes:?}, expected one run (0) and one refusal (3)"
        ))
    } else {
        let loser = loser.unwrap_or_default();
        let said = String::from_utf8_lossy(&outputs[loser].stdout).to_string();
        let winner = pids[1 - loser];
        if said.contains(&format!("locked by pid {winner}")) {
            Ok(())
        } else {
            Err(format!(
                "the refusal did not name the holder {winner}: {said}"
            ))
        }
    };
    (label, result)
}

fn main() {
    if let Ok(mode) = std::env::var("ENGINE_CRASH_CHILD") {
        child(&mode);
    }
    let mut results = crash_matrix();
    results.push(lock_race());
    let failed: Vec<&(String, Result<(), String>)> =
        results.iter().filter(|(_, r)| r.is_err()).collect();
    for (label, result) in &results {
        match result {
            Ok(()) => println!("ok: {label}"),
            Err(e) => println!("FAILED: {e}"),
        }
    }
    println!(
        "crash: {} passed, {} failed",
        results.len() - failed.len(),
        failed.len()
    );
    if !failed.is_empty() {
        std::process::exit(1);
    }
}
