//! The task that runs one server: its steps in order with journaling (intent before each
//! change, outcome after), retries of transient errors observed for effect first, and
//! compensations after a failure or an interrupt. The dispatcher that starts these tasks is
//! [`crate::run`]; this module knows nothing of the others.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Map;
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

use topology::Server;
use tracing::{Instrument, info_span};

use crate::event::{Event, ServerResult, StepHow};
use crate::journal::{self, Journal, Record, ServerProgress, StepResult, StepState};
use crate::retry::RetryPolicy;
use crate::workflow::{ErrorKind, StepContext, StepError, StepKind, StepSpec, Workflow};

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

/// What every server task shares.
pub(crate) struct Shared<W: Workflow> {
    pub(crate) workflow: Arc<W>,
    pub(crate) journal: Journal,
    pub(crate) events: Option<UnboundedSender<Event>>,
    pub(crate) retry: RetryPolicy,
    pub(crate) stop: CancellationToken,
    pub(crate) journal_failed: AtomicBool,
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
pub(crate) async fn run_server<W: Workflow>(
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
            changed: false,
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

    /// Whether a journal shows a compensation begun out of its turn (its intent open, or its
    /// outcome written) while a mutation between the step it undoes and itself never took
    /// effect. Only an interrupt or a failure runs a compensation early, so that attempt is over
    /// even when the record saying so was never written (a second interrupt stops the run before
    /// it); continuing it would send the remaining steps to a server the compensation has put, or
    /// may have put, back.
    fn compensating_out_of_turn(&self, done: &[bool], open: &[bool]) -> bool {
        self.steps.iter().enumerate().any(|(c, spec)| {
            let StepKind::Compensate { undoes } = spec.kind else {
                return false;
            };
            (open[c] || done[c]) && (undoes + 1..c).any(|j| self.steps[j].mutates() && !done[j])
        })
    }

    /// Runs every compensation whose step ran and which has not run since. A step whose effect
    /// is unknown (its intent journaled, its answer lost, and no later read could tell) is
    /// observed first: a switch that took effect is undone like one that answered; one that
    /// cannot be observed leaves the run unfinished, for `resume` to observe again.
    async fn compensate(&mut self) -> Result<(), ServerStatus> {
        for c in 0..self.steps.len() {
            let StepKind::Compensate { undoes } = self.steps[c].kind else {
                continue;
            };
            if self.context.done[c] {
                continue;
            }
            if !self.context.done.get(undoes).copied().unwrap_or(false) {
                if !self.open.get(undoes).copied().unwrap_or(false) {
                    continue;
                }
                match self.observe(undoes).await {
                    Ok(false) => continue,
                    Ok(true) => {}
                    Err(e) => {
                        let message = format!(
                            "whether `{}` took effect is unknown ({}): `{}` did not run, and the \
                             run stays unfinished until `resume` reads the server again",
                            self.steps[undoes].name, e.message, self.steps[c].name
                        );
                        self.notes.push(message.clone());
                        return Err(ServerStatus::CompensationFailed {
                            step: self.steps[c].name.clone(),
                            error: message,
                        });
                    }
                }
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

    /// Reads whether step `i`, whose outcome is unknown, took effect (retried as a step is, on a
    /// new connection each time). When it did, the journal says so before anything undoes it.
    async fn observe(&mut self, i: usize) -> Result<bool, StepError> {
        let spec = self.steps[i].clone();
        let mut attempt = 1u32;
        loop {
            self.session = None;
            let workflow = &*self.shared.workflow;
            let seen = async {
                let session = open_session(&mut self.session, workflow, &self.server).await?;
                workflow
                    .took_effect(session, &self.server, &spec, &self.context)
                    .await
            }
            .await;
            match seen {
                Ok(took) => {
                    if took {
                        self.shared
                            .record(Record::Outcome {
                                server: self.server.name.clone(),
                                step: i,
                                name: spec.name.clone(),
                                result: StepResult::AlreadyDone,
                                note: Some("took effect, though its answer was lost".into()),
                                error: None,
                                at: journal::now(),
                            })
                            .await?;
                        self.context.done[i] = true;
                        self.notes.push(format!(
                            "{}: took effect, though its answer was lost",
                            spec.name
                        ));
                    }
                    self.open[i] = false;
                    return Ok(took);
                }
                Err(e)
                    if e.kind == ErrorKind::Transient && attempt < self.shared.retry.attempts =>
                {
                    tokio::time::sleep(self.shared.retry.delay(attempt, &mut self.rng)).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
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
            self.context.changed = self
                .steps
                .iter()
                .enumerate()
                .any(|(j, s)| s.mutates() && (self.context.done[j] || self.open[j]));
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
                // A mutation that failed on the connection, not on the server's refusal, may have
                // taken effect: its intent stays open (no outcome), for [`Self::compensate`] and
                // `resume` to observe.
                Err(e) if mutates && e.kind == ErrorKind::Transient => {
                    self.open[i] = true;
                    return Err(e);
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
