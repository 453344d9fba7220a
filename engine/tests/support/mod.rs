//! A fake workflow for the engine's tests: the shape of the KB 954960 repair (a replica is switched
//! to autonomous and back around three mutations), with effects kept in memory or in files (so a
//! killed process's effects survive for the resumed one), and scripted latency and faults.

#![allow(
    dead_code,
    reason = "each test binary uses a different part of the support code"
)]

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use engine::{StepContext, StepError, StepOutput, StepSpec, Workflow};
use topology::{Mode, Server, Topology};

/// A scripted fault: on the `nth` run (1-based) of `step` on `server`.
#[derive(Debug, Clone)]
pub struct Fault {
    pub server: String,
    pub step: String,
    pub nth: usize,
    pub what: FaultKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// A transient error before the step takes effect.
    TransientBefore,
    /// The step takes effect, then the connection drops (transient error).
    TransientAfter,
    Permanent,
    /// The process kills itself right after the effect, before the engine hears of it.
    DieAfterEffect,
}

/// Where effects are kept: per server, the indexes of the steps that took effect, in order.
#[derive(Debug)]
pub enum Store {
    Memory(Mutex<HashMap<String, Vec<usize>>>),
    /// One file per server, one line per effect, fsynced.
    Dir(PathBuf),
}

impl Store {
    pub fn effects(&self, server: &str) -> Vec<usize> {
        match self {
            Store::Memory(m) => m.lock().unwrap().get(server).cloned().unwrap_or_default(),
            Store::Dir(dir) => std::fs::read_to_string(dir.join(server))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.parse().ok())
                .collect(),
        }
    }

    fn apply(&self, server: &str, step: usize) {
        match self {
            Store::Memory(m) => m
                .lock()
                .unwrap()
                .entry(server.into())
                .or_default()
                .push(step),
            Store::Dir(dir) => {
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(dir.join(server))
                    .unwrap();
                // One write: an effect on a server is all or nothing, and `writeln!` may issue
                // the number and the newline as two writes, with a SIGKILL between them.
                f.write_all(format!("{step}\n").as_bytes()).unwrap();
                f.sync_data().unwrap();
            }
        }
    }
}

#[derive(Debug)]
pub struct Fake {
    pub store: Store,
    pub latency: Duration,
    pub faults: Vec<Fault>,
    /// Servers whose connection is refused.
    pub unreachable: Vec<String>,
    calls: Mutex<HashMap<(String, String), usize>>,
    in_flight: AtomicUsize,
    pub max_in_flight: AtomicUsize,
    /// (server, step, "start" | "end"), in the order they happened.
    pub log: Mutex<Vec<(String, String, &'static str)>>,
    /// When each try of a step started (tokio time), for backoff checks.
    pub tries: Mutex<Vec<(String, String, tokio::time::Instant)>>,
}

impl Fake {
    pub fn new(store: Store) -> Fake {
        Fake {
            store,
            latency: Duration::ZERO,
            faults: Vec::new(),
            unreachable: Vec::new(),
            calls: Mutex::default(),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            log: Mutex::default(),
            tries: Mutex::default(),
        }
    }

    pub fn memory() -> Fake {
        Fake::new(Store::Memory(Mutex::default()))
    }
}

/// The steps of the repair's shape; indexes: 0 probe, 1 switch, 2 decline, 3 approve, 4 decline,
/// 5 restore (undoes 1), 6 verify; an autonomous server has no switch or restore.
pub fn steps(mode: Mode) -> Vec<StepSpec> {
    match mode {
        Mode::Replica => vec![
            StepSpec::read("probe"),
            StepSpec::mutate("switch"),
            StepSpec::mutate("decline"),
            StepSpec::mutate("approve"),
            StepSpec::mutate("decline-again"),
            StepSpec::compensate("restore", 1),
            StepSpec::read("verify"),
        ],
        Mode::Autonomous => vec![
            StepSpec::read("probe"),
            StepSpec::mutate("decline"),
            StepSpec::mutate("approve"),
            StepSpec::mutate("decline-again"),
            StepSpec::read("verify"),
        ],
    }
}

/// A shared handle, so the test keeps access to the fake after the engine took it.
#[derive(Debug, Clone)]
pub struct Shared(pub Arc<Fake>);

/// A server as its effects left it: what the real workflow observes (replica flag, declined,
/// the detect-only approval), starting from the broken state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerState {
    pub replica: bool,
    pub declined: bool,
    pub detect_only: bool,
}

impl Fake {
    pub fn state(&self, server: &Server) -> ServerState {
        let steps = steps(server.mode);
        let mut state = ServerState {
            replica: server.mode == Mode::Replica,
            declined: false,
            detect_only: false,
        };
        for i in self.store.effects(&server.name) {
            match steps[i].name.as_str() {
                "switch" => state.replica = false,
                "restore" => state.replica = true,
                "approve" => {
                    state.declined = false;
                    state.detect_only = true;
                }
                _ => {
                    state.declined = true;
                    state.detect_only = false;
                }
            }
        }
        state
    }
}

impl Shared {
    fn index(server: &Server, step: &StepSpec) -> usize {
        steps(server.mode)
            .iter()
            .position(|s| s.name == step.name)
            .unwrap()
    }
}

impl Workflow for Shared {
    type Session = ();

    fn steps(&self, server: &Server) -> Vec<StepSpec> {
        steps(server.mode)
    }

    async fn open(&self, server: &Server) -> Result<(), StepError> {
        if self.0.unreachable.contains(&server.name) {
            return Err(StepError::permanent(format!(
                "{}: connection refused",
                server.name
            )));
        }
        Ok(())
    }

    async fn run(
        &self,
        _: &mut (),
        server: &Server,
        step: &StepSpec,
        context: &StepContext,
    ) -> Result<StepOutput, StepError> {
        let fake = &self.0;
        // As the repair's probe: a server found repaired before its repair began (no fact
        // journaled yet) is left alone; otherwise the probe journals that the repair began.
        if step.name == "probe" {
            let state = fake.state(server);
            let repaired = state.declined
                && !state.detect_only
                && state.replica == (server.mode == Mode::Replica);
            if repaired && !context.facts.contains_key("began") {
                return Ok(StepOutput {
                    note: Some("already repaired".into()),
                    finish: true,
                    ..StepOutput::default()
                });
            }
            return Ok(StepOutput::default().with_fact("began", true));
        }
        let now = fake.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        fake.max_in_flight.fetch_max(now, Ordering::SeqCst);
        fake.log
            .lock()
            .unwrap()
            .push((server.name.clone(), step.name.clone(), "start"));
        fake.tries.lock().unwrap().push((
            server.name.clone(),
            step.name.clone(),
            tokio::time::Instant::now(),
        ));
        let nth = {
            let mut calls = fake.calls.lock().unwrap();
            let n = calls
                .entry((server.name.clone(), step.name.clone()))
                .or_default();
            *n += 1;
            *n
        };
        if !fake.latency.is_zero() {
            tokio::time::sleep(fake.latency).await;
        }
        let fault = fake
            .faults
            .iter()
            .find(|f| f.server == server.name && f.step == step.name && f.nth == nth)
            .map(|f| f.what);
        let approval_change = matches!(step.name.as_str(), "decline" | "approve" | "decline-again");
        let result = match fault {
            Some(FaultKind::TransientBefore) => Err(StepError::transient("connection reset")),
            Some(FaultKind::Permanent) => Err(StepError::permanent("permission denied")),
            // As WSUS with @failIfReplica = 1: a replica refuses approval changes.
            _ if approval_change && fake.state(server).replica => Err(StepError::permanent(
                "this server is a replica: approval changes are refused",
            )),
            other => {
                if step.mutates() {
                    fake.store.apply(&server.name, Self::index(server, step));
                }
                match other {
                    Some(FaultKind::TransientAfter) => {
                        Err(StepError::transient("connection lost after the call"))
                    }
                    Some(FaultKind::DieAfterEffect) => die(),
                    _ => Ok(StepOutput::default()),
                }
            }
        };
        fake.log
            .lock()
            .unwrap()
            .push((server.name.clone(), step.name.clone(), "end"));
        fake.in_flight.fetch_sub(1, Ordering::SeqCst);
        result
    }

    async fn took_effect(
        &self,
        _: &mut (),
        server: &Server,
        step: &StepSpec,
        _context: &StepContext,
    ) -> Result<bool, StepError> {
        let state = self.0.state(server);
        Ok(match step.name.as_str() {
            "switch" => !state.replica,
            "restore" => state.replica,
            "approve" => state.detect_only && !state.declined,
            _ => state.declined,
        })
    }
}

/// SIGKILL to this very process: no destructor, no flush, like a power cut of the client.
pub fn die() -> ! {
    let pid = std::process::id().to_string();
    #[cfg(unix)]
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &pid])
        .status();
    #[cfg(not(unix))]
    let _ = std::process::Command::new("taskkill")
        .args(["/F", "/PID", &pid])
        .status();
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// A topology from `(name, upstream, replica)` triples.
pub fn topology(servers: &[(&str, Option<&str>, bool)]) -> Arc<Topology> {
    let mut text = String::from("version: 1\nservers:\n");
    for (name, upstream, replica) in servers {
        text.push_str(&format!(
            "  - name: {name}\n    sql: {{ host: {name}.example }}\n"
        ));
        if let Some(up) = upstream {
            text.push_str(&format!("    upstream: {up}\n"));
        }
        if *replica {
            text.push_str("    mode: replica\n");
        }
    }
    Arc::new(Topology::from_bytes("test.yaml", text.as_bytes()).expect("valid test topology"))
}

/// hq -> (emea [replica] -> (paris [replica], oslo), amer -> (seattle [replica]))
pub fn small() -> Arc<Topology> {
    topology(&[
        ("hq", None, false),
        ("emea", Some("hq"), true),
        ("amer", Some("hq"), false),
        ("paris", Some("emea"), true),
        ("oslo", Some("emea"), false),
        ("seattle", Some("amer"), true),
    ])
}
