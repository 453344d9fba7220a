//! The walk: a dispatcher that starts each server once its upstream succeeded, at most `parallel`
//! at a time, and a task per server that runs its steps with journaling, retries and
//! compensation.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Map;
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info_span};

use topology::{Selection, Server, ServerId, Topology};

use crate::event::{Event, RunOutcome, ServerResult, StepHow};
use crate::journal::{
    self, DurableHook, Journal, JournalError, Record, Replay, ServerProgress, StepResult,
    StepState, Who,
};
use crate::retry::RetryPolicy;
use crate::state::{StateDir, StateError, new_run_id};
use crate::workflow::{ErrorKind, StepContext, StepError, StepKind, StepSpec, Workflow};

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

#[derive(Debug, Clone, PartialEq)]
pub struct ServerReport {
    pub name: String,
    pub status: ServerStatus,
    pub steps_done: usize,
    pub duration: Duration,
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerStatus {
    Succeeded,
    /// Proven done by an earlier finished run: nothing was repeated.
    AlreadyDone,
    Failed {
        step: String,
        error: String,
    },
    Skipped {
        upstream: String,
    },
    Interrupted,
    /// A compensation failed on every try: the server is left as the step it undoes changed it,
    /// and the run is unfinished until `resume` completes the compensation.
    CompensationFailed {
        step: String,
        error: String,
    },
    NotStarted,
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
                } else if p.finished == Some(ServerResult::Succeeded) && !self.options.new_run {
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

/// What every server task shares.
struct Shared<W: Workflow> {
    workflow: Arc<W>,
    journal: Journal,
    events: Option<UnboundedSender<Event>>,
    retry: RetryPolicy,
    stop: CancellationToken,
    journal_failed: AtomicBool,
}

impl<W: Workflow> Shared<W> {
    fn emit(&self, event: Event) {
        if let Some(events) = &self.events {
            let _ = events.send(event);
        }
    }

    /// A journal failure fails the server and stops new servers: no mutation is sent that the
    /// journal could not record.
    async fn record(&self, record: Record) -> Result<(), StepError> {
        self.journal.append(record).await.map_err(|e| {
            self.journal_failed.store(true, Ordering::SeqCst);
            StepError::permanent(format!("journal: {e}"))
        })
    }
}

/// One server's run: its steps in order, each retried on transient errors, compensations after a
/// failure or an interrupt.
struct ServerRun<'a, W: Workflow> {
    shared: &'a Shared<W>,
    server: Server,
    steps: Vec<StepSpec>,
    session: Option<W::Session>,
    context: StepContext,
    /// Steps whose intent is journaled without an outcome (from a crashed run).
    open: Vec<bool>,
    attempt: u32,
    rng: fastrand::Rng,
    notes: Vec<String>,
    /// Mutations this process sent (not those observed to have taken effect before).
    changed: usize,
}

/// `recheck`: the run that proved this server done; it runs again, and is reported as already
/// done when its workflow finished it without a change (its probe found it repaired).
async fn run_server<W: Workflow>(
    shared: Arc<Shared<W>>,
    server: Server,
    prior: Option<ServerProgress>,
    recheck: Option<String>,
    seed: u64,
) -> ServerReport {
    let started = Instant::now();
    let steps = shared.workflow.steps(&server);
    shared.emit(Event::ServerStarted {
        server: server.name.clone(),
    });
    let mut run = ServerRun {
        shared: &shared,
        context: StepContext {
            facts: Map::new(),
            done: vec![false; steps.len()],
            attempt: 0,
        },
        open: vec![false; steps.len()],
        server,
        steps,
        session: None,
        attempt: 1,
        rng: fastrand::Rng::with_seed(seed),
        notes: Vec::new(),
        changed: 0,
    };
    let mut status = run.go(prior).await;
    if let Some(earlier) = &recheck
        && status == ServerStatus::Succeeded
        && run.changed == 0
    {
        status = ServerStatus::AlreadyDone;
        run.notes.insert(
            0,
            format!("done in run {earlier}, checked again: no change"),
        );
    }
    let steps_done = run.context.done.iter().filter(|d| **d).count();
    let result = match &status {
        ServerStatus::Succeeded | ServerStatus::AlreadyDone => Some(ServerResult::Succeeded),
        ServerStatus::Failed { .. } => Some(ServerResult::Failed),
        ServerStatus::Interrupted => Some(ServerResult::Interrupted),
        ServerStatus::CompensationFailed { .. } => Some(ServerResult::CompensationPending),
        _ => None,
    };
    let note = (!run.notes.is_empty()).then(|| run.notes.join("; "));
    // The server's time includes its last journal record: the downstream waits for it too.
    let mut duration = started.elapsed();
    if let Some(result) = result {
        let _ = shared
            .record(Record::ServerFinished {
                server: run.server.name.clone(),
                result,
                note: note.clone(),
                at: journal::now(),
            })
            .await;
        duration = started.elapsed();
        shared.emit(Event::ServerFinished {
            server: run.server.name.clone(),
            result,
            steps_done,
            duration,
            note,
        });
    }
    ServerReport {
        name: run.server.name,
        status,
        steps_done,
        duration,
        notes: run.notes,
    }
}

impl<W: Workflow> ServerRun<'_, W> {
    async fn go(&mut self, prior: Option<ServerProgress>) -> ServerStatus {
        if let Some(p) = prior {
            self.context.facts = p.facts.clone();
            self.attempt = p.attempt.max(1);
            let restored: Vec<bool> = (0..self.steps.len()).map(|i| p.is_done(i)).collect();
            let open: Vec<bool> = (0..self.steps.len())
                .map(|i| p.steps.get(&i) == Some(&StepState::Open))
                .collect();
            if p.attempt_over() || self.compensating_out_of_turn(&restored, &open) {
                // The earlier attempt failed or was interrupted: finish its compensations (one
                // whose outcome was lost is observed first), then start over from the first step
                // (every step is safe to repeat after a decline), with the server in its real
                // state.
                self.context.done = restored;
                self.open = open;
                if let Err(status) = self.compensate().await {
                    return status;
                }
                self.attempt += 1;
                self.context.done = vec![false; self.steps.len()];
                self.open = vec![false; self.steps.len()];
            } else {
                self.open = open;
                self.context.done = restored;
                if p.attempt > 0 {
                    // Continue the same attempt.
                    return self.walk_steps(false).await;
                }
            }
        }
        self.walk_steps(true).await
    }

    async fn walk_steps(&mut self, fresh_attempt: bool) -> ServerStatus {
        if fresh_attempt
            && let Err(e) = self
                .shared
                .record(Record::ServerStarted {
                    server: self.server.name.clone(),
                    attempt: self.attempt,
                    at: journal::now(),
                })
                .await
        {
            return ServerStatus::Failed {
                step: "start".into(),
                error: e.message,
            };
        }
        for i in 0..self.steps.len() {
            if self.context.done[i] {
                continue;
            }
            if self.shared.stop.is_cancelled() {
                self.notes.push("interrupted".into());
                return match self.compensate().await {
                    Ok(()) => ServerStatus::Interrupted,
                    Err(status) => status,
                };
            }
            match self.step(i).await {
                Ok(finish) => {
                    self.context.done[i] = true;
                    if finish {
                        break;
                    }
                }
                Err(e) => {
                    let name = self.steps[i].name.clone();
                    self.shared.emit(Event::ServerFailed {
                        server: self.server.name.clone(),
                        step: name.clone(),
                        error: e.message.clone(),
                    });
                    if let Err(status) = self.compensate().await {
                        return status;
                    }
                    return ServerStatus::Failed {
                        step: name,
                        error: e.message,
                    };
                }
            }
        }
        match self.compensate().await {
            Ok(()) => ServerStatus::Succeeded,
            Err(status) => status,
        }
    }

    /// Whether a journal shows a compensation in flight out of its turn: its intent is open while
    /// a mutation between the step it undoes and itself never took effect. Only an interrupt or a
    /// failure runs a compensation early, so that attempt is over; continuing it would send the
    /// remaining steps to a server the compensation may already have put back.
    fn compensating_out_of_turn(&self, done: &[bool], open: &[bool]) -> bool {
        self.steps.iter().enumerate().any(|(c, spec)| {
            let StepKind::Compensate { undoes } = spec.kind else {
                return false;
            };
            open[c] && (undoes + 1..c).any(|j| self.steps[j].mutates() && !done[j])
        })
    }

    /// Runs every compensation whose step ran and which has not run since.
    async fn compensate(&mut self) -> Result<(), ServerStatus> {
        for c in 0..self.steps.len() {
            let StepKind::Compensate { undoes } = self.steps[c].kind else {
                continue;
            };
            if !self.context.done.get(undoes).copied().unwrap_or(false) || self.context.done[c] {
                continue;
            }
            match self.step(c).await {
                Ok(_) => {
                    self.context.done[c] = true;
                    self.shared.emit(Event::Compensated {
                        server: self.server.name.clone(),
                        step: self.steps[c].name.clone(),
                    });
                }
                Err(e) => {
                    let message = format!(
                        "compensation `{}` FAILED: {}; the server is left as `{}` changed it, \
                         and the run stays unfinished until `resume` completes it",
                        self.steps[c].name, e.message, self.steps[undoes].name
                    );
                    self.notes.push(message.clone());
                    return Err(ServerStatus::CompensationFailed {
                        step: self.steps[c].name.clone(),
                        error: message,
                    });
                }
            }
        }
        Ok(())
    }

    /// One step, with retries. `Ok(true)`: the workflow asked to finish the server here.
    async fn step(&mut self, i: usize) -> Result<bool, StepError> {
        let spec = self.steps[i].clone();
        let name = self.server.name.clone();
        let mutates = spec.mutates();
        let mut attempt = 1u32;
        let mut check_first = self.open[i];
        loop {
            let started = Instant::now();
            self.context.attempt = attempt;
            let span = info_span!("step", name = %spec.name, attempt);
            let result: Result<(StepHow, crate::workflow::StepOutput), StepError> = async {
                if check_first {
                    let workflow = &*self.shared.workflow;
                    let session = open_session(&mut self.session, workflow, &self.server).await?;
                    if workflow
                        .took_effect(session, &self.server, &spec, &self.context)
                        .await?
                    {
                        return Ok((StepHow::AlreadyDone, crate::workflow::StepOutput::default()));
                    }
                }
                if mutates {
                    self.shared
                        .record(Record::Intent {
                            server: name.clone(),
                            step: i,
                            name: spec.name.clone(),
                            attempt,
                            at: journal::now(),
                        })
                        .await?;
                }
                self.shared.emit(Event::StepStarted {
                    server: name.clone(),
                    step: spec.name.clone(),
                    attempt,
                });
                let workflow = &*self.shared.workflow;
                let session = open_session(&mut self.session, workflow, &self.server).await?;
                if mutates {
                    self.changed += 1;
                }
                let output = workflow
                    .run(session, &self.server, &spec, &self.context)
                    .await?;
                Ok((StepHow::Ran, output))
            }
            .instrument(span)
            .await;

            match result {
                Ok((how, output)) => {
                    if !output.facts.is_empty() {
                        self.shared
                            .record(Record::Facts {
                                server: name.clone(),
                                facts: output.facts.clone(),
                                at: journal::now(),
                            })
                            .await?;
                        self.context.facts.extend(output.facts);
                    }
                    if mutates || how == StepHow::AlreadyDone {
                        self.shared
                            .record(Record::Outcome {
                                server: name.clone(),
                                step: i,
                                name: spec.name.clone(),
                                result: if how == StepHow::Ran {
                                    StepResult::Done
                                } else {
                                    StepResult::AlreadyDone
                                },
                                note: output.note.clone(),
                                error: None,
                                at: journal::now(),
                            })
                            .await?;
                    }
                    if let Some(note) = &output.note {
                        self.notes.push(format!("{}: {note}", spec.name));
                    }
                    self.shared.emit(Event::StepDone {
                        server: name.clone(),
                        step: spec.name.clone(),
                        how,
                        note: output.note,
                        duration: started.elapsed(),
                    });
                    self.open[i] = false;
                    return Ok(output.finish);
                }
                Err(e)
                    if e.kind == ErrorKind::Transient && attempt < self.shared.retry.attempts =>
                {
                    let delay = self.shared.retry.delay(attempt, &mut self.rng);
                    tracing::warn!(server = %name, step = %spec.name, attempt, error = %e.message, "retrying");
                    self.shared.emit(Event::Retrying {
                        server: name.clone(),
                        step: spec.name.clone(),
                        attempt,
                        error: e.message.clone(),
                        delay,
                    });
                    // The connection may be what failed: open a new one for the next try.
                    self.session = None;
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                    // A mutation may have taken effect before the error reached us.
                    check_first = mutates;
                }
                Err(e) => {
                    if mutates {
                        let _ = self
                            .shared
                            .record(Record::Outcome {
                                server: name.clone(),
                                step: i,
                                name: spec.name.clone(),
                                result: StepResult::Failed,
                                note: None,
                                error: Some(e.message.clone()),
                                at: journal::now(),
                            })
                            .await;
                    }
                    return Err(e);
                }
            }
        }
    }
}

/// The server's connection, opened on first use and after a transient error dropped it.
async fn open_session<'s, W: Workflow>(
    slot: &'s mut Option<W::Session>,
    workflow: &W,
    server: &Server,
) -> Result<&'s mut W::Session, StepError> {
    if slot.is_none() {
        *slot = Some(workflow.open(server).await?);
    }
    slot.as_mut()
        .ok_or_else(|| StepError::permanent("no session"))
}
