//! What the engine knows of a workflow: a list of steps per server and how to run and observe them.

use std::future::Future;

use serde_json::{Map, Value};
use topology::Server;

/// One step of a server's workflow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepSpec {
    /// Recorded in the journal and shown in reports, e.g. `decline`.
    pub name: String,
    pub kind: StepKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    /// Changes nothing: safe to run again at any time.
    Read,
    /// Changes the server: journaled with an intent before and an outcome after.
    Mutate,
    /// Undoes step `undoes` (an index in the same list). It runs in its place in the list, and
    /// also, out of turn, whenever step `undoes` ran and the server then fails or is interrupted.
    Compensate { undoes: usize },
}

impl StepSpec {
    pub fn read(name: impl Into<String>) -> Self {
        StepSpec {
            name: name.into(),
            kind: StepKind::Read,
        }
    }

    pub fn mutate(name: impl Into<String>) -> Self {
        StepSpec {
            name: name.into(),
            kind: StepKind::Mutate,
        }
    }

    pub fn compensate(name: impl Into<String>, undoes: usize) -> Self {
        StepSpec {
            name: name.into(),
            kind: StepKind::Compensate { undoes },
        }
    }

    pub fn mutates(&self) -> bool {
        !matches!(self.kind, StepKind::Read)
    }
}

/// What a step learned or decided.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepOutput {
    /// A short human note for reports ("already declined", "update not present").
    pub note: Option<String>,
    /// Facts to journal before the server's next mutation: what is needed to undo or resume
    /// (e.g. the server's original mode). Never a secret.
    pub facts: Map<String, Value>,
    /// Stop this server here, successfully (e.g. the update is not present): later steps are
    /// not run, and its downstream servers go on.
    pub finish: bool,
}

impl StepOutput {
    pub fn note(note: impl Into<String>) -> Self {
        StepOutput {
            note: Some(note.into()),
            ..Self::default()
        }
    }

    pub fn with_fact(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.facts.insert(key.to_string(), value.into());
        self
    }
}

/// What the engine tells a step about the server's run so far.
#[derive(Debug, Clone, Default)]
pub struct StepContext {
    /// Every fact journaled for this server, in this run and the runs it resumes.
    pub facts: Map<String, Value>,
    /// Which steps of the list have taken effect.
    pub done: Vec<bool>,
    /// 1 for the first try of this step.
    pub attempt: u32,
    /// A mutating step of this attempt took effect, or may have (its intent is journaled
    /// without an outcome): the attempt is under way, and a step that finds the work done must
    /// not take that for "nothing to do" (a later step, such as a switch back, may be owed).
    /// False at the start of every attempt, including one a killed run had only begun.
    pub changed: bool,
}

/// Whether an error is worth another try.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// Connection lost, timeout, deadlock: retried, after reconnecting.
    Transient,
    /// Anything else: the server fails.
    Permanent,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct StepError {
    pub kind: ErrorKind,
    pub message: String,
}

impl StepError {
    pub fn transient(message: impl Into<String>) -> Self {
        StepError {
            kind: ErrorKind::Transient,
            message: message.into(),
        }
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        StepError {
            kind: ErrorKind::Permanent,
            message: message.into(),
        }
    }
}

/// A per-server workflow. The engine calls it; it never calls the engine.
///
/// Every mutating step must be observable: [`Workflow::took_effect`] decides from freshly
/// observed state (plus the context) whether the step already happened. The engine asks it after
/// a transient error of a mutation (the connection may have dropped after the server applied it)
/// and when resuming a step whose intent was journaled without an outcome. That is what makes a
/// retry or a resume apply each step exactly once.
pub trait Workflow: Send + Sync + 'static {
    /// A connection to one server, reused across its steps and reopened after a transient error.
    type Session: Send + 'static;

    /// The ordered steps for `server`.
    fn steps(&self, server: &Server) -> Vec<StepSpec>;

    fn open(
        &self,
        server: &Server,
    ) -> impl Future<Output = Result<Self::Session, StepError>> + Send;

    fn run(
        &self,
        session: &mut Self::Session,
        server: &Server,
        step: &StepSpec,
        context: &StepContext,
    ) -> impl Future<Output = Result<StepOutput, StepError>> + Send;

    fn took_effect(
        &self,
        session: &mut Self::Session,
        server: &Server,
        step: &StepSpec,
        context: &StepContext,
    ) -> impl Future<Output = Result<bool, StepError>> + Send;
}
