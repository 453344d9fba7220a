//! The generic runtime that walks a topology top-down and runs a workflow on each server.
//!
//! A tour:
//! - [`Workflow`] is all the engine knows of the job: the steps of a server, how to run one, and
//!   how to observe whether a mutation already took effect. It never names tiberius or WSUS.
//! - [`Engine::apply`] and [`Engine::resume`] walk the graph: a server starts as soon as its
//!   upstream succeeded, at most `parallel` at a time, the longest remaining chain first. A failed
//!   server runs its compensations and its subtree is skipped; other branches go on.
//! - [`journal`] is the write-ahead journal (checksummed records, fsync before every mutation,
//!   group commit) that makes a resume exact; [`state`] is the state directory and its OS lock.
//! - [`Event`] is the typed stream to reporters; `tracing` spans `run` > `server` > `step` are for
//!   diagnostics only.

mod event;
pub mod journal;
mod retry;
mod run;
mod server;
pub mod state;
mod workflow;

pub use event::{Event, RunOutcome, ServerResult, StepHow};
pub use retry::RetryPolicy;
pub use run::{Engine, EngineError, Interrupts, RunOptions, RunReport, pending_run};
pub use server::{ServerReport, ServerStatus};
pub use workflow::{ErrorKind, StepContext, StepError, StepKind, StepOutput, StepSpec, Workflow};
