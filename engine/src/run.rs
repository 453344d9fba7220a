//! The walk: the engine's entry points (apply, resume) and the dispatcher that starts each
//! server once its upstream succeeded, at most `parallel` at a time. Each server runs as a task
//! of its own ([`crate::server`]).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info_span};

use topology::{Selection, ServerId, Topology};

use crate::event::{Event, RunOutcome, ServerResult};
use crate::journal::{
    self, DurableHook, Journal, JournalError, Record, Replay, ServerProgress, Who,
};
use crate::retry::RetryPolicy;
use crate::server::{ServerReport, ServerStatus, Shared, run_server};
use crate::state::{StateDir, StateError, new_run_id};
use crate::workflow::{StepKind, StepSpec, Workflow};

/// How a run behaves.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Servers in flight at most (default 8).
    pub parallel: usize,
    /// Stop starting servers after this many failures.
    pub max_failures: Option<usize>,
    pub retry: RetryPolicy,
    /// Where the lock and the journals live (default `.wsus-reset`).
    pub state_dir: PathBuf,
    /// Ignore what earlier finished runs proved done.
    pub new_run: bool,
    /// Seed for the retry jitter; `None` seeds from the clock.
    pub seed: Option<u64>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            parallel: 8,
            max_failures: None,
            retry: RetryPolicy::default(),
            state_dir: PathBuf::from(".wsus-reset"),
            new_run: false,
            seed: None,
        }
    }
}

/// Interrupts: the first (`stop`) stops starting servers, lets steps in flight finish and runs
/// compensations; the second (`abort`) stops at once.
#[derive(Debug, Clone, Default)]
pub struct Interrupts {
    pub stop: CancellationToken,
    pub abort: CancellationToken,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(
        "run {run_id} in {dir} did not finish: finish it with `wsus-reset resume` (or inspect {journal})"
    )]
    Unfinished {
        run_id: String,
        dir: PathBuf,
        journal: PathBuf,
    },
    #[error("there is no unfinished run in {dir} to resume")]
    NothingToResume { dir: PathBuf },
    #[error(
        "the topology changed since run {run_id} began ({expected} then, {actual} now): restore the file it was run with, or start a new run"
    )]
    TopologyChanged {
        run_id: String,
        expected: String,
        actual: String,
    },
    #[error("run {run_id} names server `{server}`, which the topology no longer has")]
    UnknownServer { run_id: String, server: String },
}

/// How each server ended, and how the run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct RunReport {
    pub run_id: String,
    pub journal: PathBuf,
    pub outcome: RunOutcome,
    /// Per selected server, in execution order.
    pub servers: Vec<ServerReport>,
    /// The second interrupt stopped the run at once: these servers had steps in flight.
    pub aborted: Vec<String>,
}

/// Runs a workflow over a topology.
pub struct Engine<W: Workflow> {
    workflow: Arc<W>,
    topology: Arc<Topology>,
    options: RunOptions,
    events: Option<UnboundedSender<Event>>,
    hook: Option<DurableHook>,
}

impl<W: Workflow> std::fmt::Debug for Engine<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl<W: Workflow> Engine<W> {
    pub fn new(workflow: W, topology: Arc<Topology>, options: RunOptions) -> Self {
        Engine {
            workflow: Arc::new(workflow),
            topology,
            options,
            events: None,
            hook: None,
        }
    }

    /// Sends every [`Event`] of the run there.
    pub fn with_events(mut self, events: UnboundedSender<Event>) -> Self {
        self.events = Some(events);
        self
    }

    /// Called after each journal record is on disk (see [`DurableHook`]).
    pub fn with_durable_hook(mut self, hook: DurableHook) -> Self {
        self.hook = Some(hook);
        self
    }

    /// Starts a new run over `selection`. Refused while an unfinished run is in the state dir.
    /// Servers that an earlier finished run of the same topology proved done are not repeated,
    /// unless `new_run`.
    pub async fn apply(
        self,
        selection: &Selection,
        interrupts: Interrupts,
    ) -> Result<RunReport, EngineError> {
        let run_id = new_run_id();
        let state = StateDir::lock(&self.options.state_dir, &run_id)?;
        if let Some((journal, replay)) = state.unfinished()? {
            return Err(EngineError::Unfinished {
                run_id: replay.run_id,
                dir: state.path().into(),
                journal,
            });
        }
        let mut proven = HashMap::new();
        // What earlier finished runs of this topology left each server in, the newest run that
        // touched a server deciding: proven done, or owing a compensation (a switch never
        // undone, from a run that ended before unfinished runs kept such a server open). The
        // journal is the proof: such a server's compensation runs first in this run.
        let mut owed: HashMap<String, ServerProgress> = HashMap::new();
        for (_, replay) in state.runs()? {
            if replay.fingerprint != self.topology.fingerprint() {
                continue;
            }
            for (name, p) in replay.progress {
                let owes = self.topology.find(&name).is_some_and(|id| {
                    owes_compensation(&self.workflow.steps(self.topology.server(id)), &p)
                });
                proven.remove(&name);
                owed.remove(&name);
                if owes {
                    owed.insert(name, p);
                } else if p.finished == Some(ServerResult::Succeeded)
                    && !self.options.new_run
                    && !replay.set_aside
                {
                    proven.insert(name, replay.run_id.clone());
                }
            }
        }
        let path = state.journal_path(&run_id);
        let journal = Journal::open(&path, self.hook)?;
        let servers: Vec<String> = selection
            .servers
            .iter()
            .map(|&id| self.topology.server(id).name.clone())
            .collect();
        journal
            .append(Record::RunStarted {
                run_id: run_id.clone(),
                topology: self.topology.location(),
                fingerprint: self.topology.fingerprint().to_string(),
                servers,
                who: Who::now(),
            })
            .await?;
        let walk = Walk {
            workflow: self.workflow,
            topology: self.topology,
            options: self.options,
            events: self.events,
            journal,
            run_id,
            resumed: false,
        };
        walk.run(&selection.servers, owed, proven, interrupts, state)
            .await
    }

    /// Finishes the newest unfinished run in the state dir, with the topology it began with.
    pub async fn resume(self, interrupts: Interrupts) -> Result<RunReport, EngineError> {
        let state = StateDir::lock(&self.options.state_dir, "resume")?;
        let Some((path, replay)) = state.unfinished()? else {
            return Err(EngineError::NothingToResume {
                dir: state.path().into(),
            });
        };
        if replay.fingerprint != self.topology.fingerprint() {
            return Err(EngineError::TopologyChanged {
                run_id: replay.run_id,
                expected: replay.fingerprint,
                actual: self.topology.fingerprint().to_string(),
            });
        }
        let mut ids = Vec::with_capacity(replay.servers.len());
        for name in &replay.servers {
            ids.push(
                self.topology
                    .find(name)
                    .ok_or_else(|| EngineError::UnknownServer {
                        run_id: replay.run_id.clone(),
                        server: name.clone(),
                    })?,
            );
        }
        let journal = Journal::open(&path, self.hook)?;
        journal.append(Record::Resumed { who: Who::now() }).await?;
        let Replay {
            run_id,
            mut progress,
            ..
        } = replay;
        // Servers that finished before the crash are done; the rest resume from the journal.
        let proven: HashMap<String, String> = progress
            .iter()
            .filter(|(_, p)| p.finished == Some(ServerResult::Succeeded))
            .map(|(name, _)| (name.clone(), run_id.clone()))
            .collect();
        progress.retain(|name, _| !proven.contains_key(name));
        let walk = Walk {
            workflow: self.workflow,
            topology: self.topology,
            options: self.options,
            events: self.events,
            journal,
            run_id,
            resumed: true,
        };
        walk.run(&ids, progress, proven, interrupts, state).await
    }
}

/// Whether a server's progress shows a compensation owed: the step it undoes took effect, and
/// the compensation never did.
fn owes_compensation(steps: &[StepSpec], p: &ServerProgress) -> bool {
    steps.iter().enumerate().any(|(c, spec)| match spec.kind {
        StepKind::Compensate { undoes } => p.is_done(undoes) && !p.is_done(c),
        _ => false,
    })
}

/// Reads what a state dir says without locking it: the newest unfinished run, if any.
pub fn pending_run(state_dir: &std::path::Path) -> Result<Option<Replay>, EngineError> {
    let runs = state_dir.join("runs");
    if !runs.is_dir() {
        return Ok(None);
    }
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&runs)
        .map_err(|source| StateError::Io {
            dir: state_dir.into(),
            source,
        })?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "journal"))
        .collect();
    paths.sort();
    match paths.pop() {
        None => Ok(None),
        Some(p) => {
            Ok(Some(Replay::from_records(&journal::read(&p)?)).filter(Replay::is_unfinished))
        }
    }
}

struct Walk<W: Workflow> {
    workflow: Arc<W>,
    topology: Arc<Topology>,
    options: RunOptions,
    events: Option<UnboundedSender<Event>>,
    journal: Journal,
    run_id: String,
    resumed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Waiting,
    Running,
    Finished,
}

impl<W: Workflow> Walk<W> {
    fn emit(&self, event: Event) {
        if let Some(events) = &self.events {
            let _ = events.send(event);
        }
    }

    async fn run(
        self,
        ids: &[ServerId],
        mut progress: HashMap<String, ServerProgress>,
        proven: HashMap<String, String>,
        interrupts: Interrupts,
        state: StateDir,
    ) -> Result<RunReport, EngineError> {
        let span = info_span!("run", id = %self.run_id);
        let _keep_lock = state;
        let topology = Arc::clone(&self.topology);
        let n = topology.servers().len();
        let parallel = self.options.parallel.max(1);
        self.emit(Event::RunStarted {
            run_id: self.run_id.clone(),
            servers: ids.len(),
            parallel,
            resumed: self.resumed,
        });

        // Index by ServerId; `selected[i]` is the position in `ids`.
        let mut selected: Vec<Option<usize>> = vec![None; n];
        for (k, id) in ids.iter().enumerate() {
            selected[id.0] = Some(k);
        }
        // Priority: the longest chain of selected servers below (critical-path first), then the
        // execution order. Computed bottom-up over the execution order, without recursion.
        let mut height = vec![0u32; n];
        for id in ids.iter().rev() {
            if let Some(up) = topology.upstream(*id)
                && selected[up.0].is_some()
            {
                height[up.0] = height[up.0].max(height[id.0] + 1);
            }
        }
        let mut reports: Vec<ServerReport> = ids
            .iter()
            .map(|id| ServerReport {
                name: topology.server(*id).name.clone(),
                status: ServerStatus::NotStarted,
                steps_done: 0,
                duration: Duration::ZERO,
                notes: Vec::new(),
            })
            .collect();
        let mut slots = vec![Slot::Waiting; ids.len()];
        let mut ready: BinaryHeap<(u32, Reverse<usize>)> = BinaryHeap::new();
        for id in ids {
            let upstream_selected = topology
                .upstream(*id)
                .is_some_and(|up| selected[up.0].is_some());
            if !upstream_selected {
                ready.push((height[id.0], Reverse(id.0)));
            }
        }

        let shared = Arc::new(Shared {
            workflow: Arc::clone(&self.workflow),
            journal: self.journal.clone(),
            events: self.events.clone(),
            retry: self.options.retry,
            stop: interrupts.stop.clone(),
            journal_failed: AtomicBool::new(false),
        });
        let mut rng = self
            .options
            .seed
            .map_or_else(fastrand::Rng::new, fastrand::Rng::with_seed);
        let mut tasks: JoinSet<(usize, ServerReport)> = JoinSet::new();
        let mut running: HashMap<tokio::task::Id, usize> = HashMap::new();
        let mut failures = 0usize;
        let mut aborted = Vec::new();

        loop {
            let launching_stopped = interrupts.stop.is_cancelled()
                || shared.journal_failed.load(Ordering::SeqCst)
                || self.options.max_failures.is_some_and(|max| failures >= max);
            while running.len() < parallel && !launching_stopped {
                let Some((_, Reverse(i))) = ready.pop() else {
                    break;
                };
                let k = selected[i].unwrap_or_default();
                let server = topology.server(ServerId(i)).clone();
                slots[k] = Slot::Running;
                let prior = progress.remove(&server.name);
                // Done in an earlier run: checked again (its read steps decide), not assumed.
                let recheck = proven.get(&server.name).cloned();
                let shared = Arc::clone(&shared);
                let seed = rng.u64(..);
                let span = info_span!(parent: &span, "server", name = %server.name);
                let handle = tasks.spawn(
                    async move { (k, run_server(shared, server, prior, recheck, seed).await) }
                        .instrument(span),
                );
                running.insert(handle.id(), i);
            }
            if running.is_empty() {
                break;
            }
            tokio::select! {
                biased;
                () = interrupts.abort.cancelled() => {
                    aborted = running.values().map(|&i| topology.server(ServerId(i)).name.clone()).collect();
                    tasks.abort_all();
                    for &i in running.values() {
                        if let Some(k) = selected[i] {
                            reports[k].status = ServerStatus::Interrupted;
                            reports[k].notes.push("aborted by a second interrupt: see the journal".into());
                        }
                    }
                    running.clear();
                    break;
                }
                joined = tasks.join_next_with_id() => {
                    let Some(joined) = joined else { break };
                    let (id, (k, report)) = match joined {
                        Ok((id, value)) => (id, value),
                        Err(e) => {
                            // A panic in a workflow: the server is failed, the run goes on.
                            let id = e.id();
                            let i = running.get(&id).copied().unwrap_or_default();
                            let k = selected[i].unwrap_or_default();
                            let name = topology.server(ServerId(i)).name.clone();
                            (id, (k, ServerReport {
                                name,
                                status: ServerStatus::Failed { step: "?".into(), error: format!("the workflow task died: {e}") },
                                steps_done: 0,
                                duration: Duration::ZERO,
                                notes: Vec::new(),
                            }))
                        }
                    };
                    let Some(i) = running.remove(&id) else { continue };
                    slots[k] = Slot::Finished;
                    match &report.status {
                        ServerStatus::Succeeded | ServerStatus::AlreadyDone => push_children(&topology, ServerId(i), &selected, &height, &mut ready),
                        ServerStatus::Failed { .. } | ServerStatus::CompensationFailed { .. } => {
                            failures += 1;
                            self.skip_subtree(ServerId(i), &selected, &mut slots, &mut reports);
                        }
                        _ => {}
                    }
                    reports[k] = report;
                }
            }
        }

        let interrupted = interrupts.stop.is_cancelled() || interrupts.abort.is_cancelled();
        let owed = |s: &ServerStatus| {
            matches!(
                s,
                ServerStatus::Interrupted | ServerStatus::CompensationFailed { .. }
            )
        };
        let outcome = if interrupted || reports.iter().any(|r| owed(&r.status)) {
            RunOutcome::Unfinished
        } else if reports.iter().all(|r| {
            matches!(
                r.status,
                ServerStatus::Succeeded | ServerStatus::AlreadyDone
            )
        }) {
            RunOutcome::Succeeded
        } else {
            RunOutcome::Failed
        };
        if interrupts.abort.is_cancelled() {
            // What the finished steps recorded goes to disk; the open ones stay open for resume.
            self.journal.sync().await?;
        } else {
            self.journal
                .append(Record::RunFinished {
                    outcome,
                    at: journal::now(),
                })
                .await?;
        }
        let count = |f: fn(&ServerStatus) -> bool| reports.iter().filter(|r| f(&r.status)).count();
        self.emit(Event::RunFinished {
            run_id: self.run_id.clone(),
            outcome,
            succeeded: count(|s| matches!(s, ServerStatus::Succeeded | ServerStatus::AlreadyDone)),
            failed: count(|s| {
                matches!(
                    s,
                    ServerStatus::Failed { .. } | ServerStatus::CompensationFailed { .. }
                )
            }),
            skipped: count(|s| matches!(s, ServerStatus::Skipped { .. })),
            not_started: count(|s| {
                matches!(s, ServerStatus::NotStarted | ServerStatus::Interrupted)
            }),
        });
        Ok(RunReport {
            run_id: self.run_id,
            journal: self.journal.path().to_path_buf(),
            outcome,
            servers: reports,
            aborted,
        })
    }

    fn skip_subtree(
        &self,
        failed: ServerId,
        selected: &[Option<usize>],
        slots: &mut [Slot],
        reports: &mut [ServerReport],
    ) {
        let upstream = self.topology.server(failed).name.clone();
        for below in self.topology.subtree(failed).into_iter().skip(1) {
            let Some(k) = selected[below.0] else { continue };
            if slots[k] != Slot::Waiting {
                continue;
            }
            slots[k] = Slot::Finished;
            reports[k].status = ServerStatus::Skipped {
                upstream: upstream.clone(),
            };
            self.emit(Event::ServerSkipped {
                server: reports[k].name.clone(),
                reason: format!("upstream {upstream} failed"),
            });
        }
    }
}

fn push_children(
    topology: &Topology,
    id: ServerId,
    selected: &[Option<usize>],
    height: &[u32],
    ready: &mut BinaryHeap<(u32, Reverse<usize>)>,
) {
    for child in topology.downstream(id) {
        if selected[child.0].is_some() {
            ready.push((height[child.0], Reverse(child.0)));
        }
    }
}
