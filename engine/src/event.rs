//! The typed event stream from the engine to its reporters (human progress, summary, NDJSON).

use std::time::Duration;

use serde::Serialize;

/// Everything a reporter can see of a run. Serialized as one JSON object per line for `--json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    RunStarted {
        run_id: String,
        servers: usize,
        parallel: usize,
        resumed: bool,
    },
    ServerStarted {
        server: String,
    },
    StepStarted {
        server: String,
        step: String,
        attempt: u32,
    },
    StepDone {
        server: String,
        step: String,
        /// `ran`, or `already-done` when observation showed it had taken effect.
        how: StepHow,
        note: Option<String>,
        #[serde(with = "millis")]
        duration: Duration,
    },
    Retrying {
        server: String,
        step: String,
        attempt: u32,
        error: String,
        #[serde(with = "millis")]
        delay: Duration,
    },
    ServerFinished {
        server: String,
        result: ServerResult,
        steps_done: usize,
        #[serde(with = "millis")]
        duration: Duration,
        note: Option<String>,
    },
    ServerFailed {
        server: String,
        step: String,
        error: String,
    },
    Compensated {
        server: String,
        step: String,
    },
    ServerSkipped {
        server: String,
        reason: String,
    },
    RunFinished {
        run_id: String,
        outcome: RunOutcome,
        succeeded: usize,
        failed: usize,
        skipped: usize,
        not_started: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepHow {
    Ran,
    AlreadyDone,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServerResult {
    Succeeded,
    Failed,
    /// Stopped by an interrupt after its compensations ran: `resume` runs it again.
    Interrupted,
    /// A compensation failed on every try: the server is left changed (a replica still
    /// autonomous). The run is not finished: `resume` tries the compensation again, then the
    /// server's whole workflow.
    CompensationPending,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunOutcome {
    /// Every selected server succeeded.
    Succeeded,
    /// Some server failed or was skipped; the run is over.
    Failed,
    /// Interrupted or crashed, or a compensation is still owed: `resume` finishes it.
    Unfinished,
}

mod millis {
    use std::time::Duration;

    use serde::Serializer;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}
