//! Reporters: the engine's typed event stream as progress lines on stderr (a progress bar on a
//! terminal) or as JSON lines on stdout (`--json`), and the tables printed at the end.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write};

use engine::{Event, RunReport, ServerResult, ServerStatus};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use susdb_lab::StateFile;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::JoinHandle;
use workflows::survey::Surveyed;

/// A line for the operator, on stderr (stdout carries results).
pub fn say(text: &str) {
    let _ = writeln!(std::io::stderr(), "{text}");
}

/// Consumes the events until the engine drops its sender.
pub fn spawn(mut events: UnboundedReceiver<Event>, json: bool, total: usize) -> JoinHandle<()> {
    tokio::spawn(async move {
        if json {
            let mut stdout = std::io::stdout();
            while let Some(event) = events.recv().await {
                if let Ok(line) = serde_json::to_string(&event) {
                    let _ = writeln!(stdout, "{line}");
                }
            }
            let _ = stdout.flush();
            return;
        }
        // On a terminal: a bar for the run and a line per server in flight; elsewhere plain lines.
        let bars = std::io::stderr().is_terminal().then(|| {
            let multi = MultiProgress::new();
            let bar = multi.add(ProgressBar::new(u64::try_from(total).unwrap_or(u64::MAX)));
            if let Ok(style) =
                ProgressStyle::with_template("{bar:30} {pos}/{len} servers  {elapsed}")
            {
                bar.set_style(style);
            }
            (multi, bar)
        });
        let bar = bars.as_ref().map(|(_, bar)| bar.clone());
        let mut active: HashMap<String, ProgressBar> = HashMap::new();
        let print = |text: String| match &bar {
            Some(bar) => bar.println(text),
            None => say(&text),
        };
        while let Some(event) = events.recv().await {
            match event {
                Event::RunStarted {
                    run_id,
                    servers,
                    parallel,
                    resumed,
                } => print(format!(
                    "{} run {run_id}: {servers} servers, {parallel} at a time",
                    if resumed { "resuming" } else { "starting" }
                )),
                // A success's notes are in the summary table; a failure's reason was just said.
                Event::ServerFinished {
                    server,
                    result,
                    duration,
                    ..
                } => {
                    if let (Some((multi, _)), Some(line)) = (&bars, active.remove(&server)) {
                        line.finish_and_clear();
                        multi.remove(&line);
                    }
                    if let Some(bar) = &bar {
                        bar.inc(1);
                    }
                    let result = match result {
                        ServerResult::Succeeded => "ok",
                        ServerResult::Failed => "FAILED",
                        ServerResult::Interrupted => "interrupted",
                        ServerResult::CompensationPending => "NOT UNDONE",
                    };
                    print(format!(
                        "{result:<11} {server}  {} ms",
                        duration.as_millis()
                    ));
                }
                Event::ServerFailed {
                    server,
                    step,
                    error,
                } => print(format!("error       {server} at {step}: {error}")),
                Event::Retrying {
                    server,
                    step,
                    attempt,
                    error,
                    delay,
                } => print(format!(
                    "retry       {server} {step} (attempt {attempt} failed: {error}); again in {} ms",
                    delay.as_millis()
                )),
                Event::Compensated { server, step } => {
                    print(format!(
                        "undone      {server}: {step} ran after the failure"
                    ));
                }
                Event::ServerSkipped { server, reason } => {
                    if let Some(bar) = &bar {
                        bar.inc(1);
                    }
                    print(format!("skipped     {server}: {reason}"));
                }
                Event::StepStarted { server, step, .. } => {
                    if let Some(bar) = &bar {
                        bar.set_message(format!("{server}: {step}"));
                    }
                }
                Event::ServerStarted { .. }
                | Event::StepDone { .. }
                | Event::RunFinished { .. } => {}
            }
        }
        if let Some((multi, bar)) = bars {
            bar.finish_and_clear();
            let _ = multi.clear();
        }
    })
}

fn status_words(status: &ServerStatus) -> (String, Option<String>) {
    match status {
        ServerStatus::Succeeded => ("ok".into(), None),
        ServerStatus::AlreadyDone => ("already done".into(), None),
        ServerStatus::Failed { step, error } => {
            ("FAILED".into(), Some(format!("at {step}: {error}")))
        }
        ServerStatus::Skipped { upstream } => (
            "skipped".into(),
            Some(format!("upstream {upstream} failed")),
        ),
        ServerStatus::Interrupted => ("interrupted".into(), None),
        ServerStatus::CompensationFailed { step, error } => (
            "NOT UNDONE".into(),
            Some(format!("{step} still owed: {error}")),
        ),
        ServerStatus::NotStarted => ("not started".into(), None),
    }
}

/// The width of a SERVER column.
pub use workflows::text::{markdown_cell, printable};

fn name_width<'a>(names: impl Iterator<Item = &'a str>) -> usize {
    names.map(str::len).max().unwrap_or(0).max("SERVER".len())
}

/// The end-of-run table: one line per server, then the outcome and where the journal is.
/// The run's table: a line per server, its NOTE in a few words (the whole story of each step is
/// in `--json` and the journal). `journal`: whether to name the journal (not for a rehearsal,
/// whose journal goes with its temporary directory).
pub fn summary_table(report: &RunReport, journal: bool) -> String {
    let width = name_width(report.servers.iter().map(|s| s.name.as_str()));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<width$}  {:<12}  {:>5}  {:>8}  NOTE",
        "SERVER", "RESULT", "STEPS", "TIME"
    );
    for s in &report.servers {
        let (result, _) = status_words(&s.status);
        let _ = writeln!(
            out,
            "{:<width$}  {result:<12}  {:>5}  {:>6} ms  {}",
            s.name,
            s.steps_done,
            s.duration.as_millis(),
            short_note(&s.status, &s.notes)
        );
    }
    let _ = write!(out, "\nrun {}: {:?}", report.run_id, report.outcome);
    if journal {
        let _ = write!(out, "; journal {}", report.journal.display());
    }
    out.push('\n');
    out
}

/// What happened to a server, in a few words.
fn short_note(status: &ServerStatus, notes: &[String]) -> String {
    let said = |text: &str| notes.iter().any(|n| n.contains(text));
    match status {
        ServerStatus::Succeeded if said("no change") => "already consistent, no change".into(),
        ServerStatus::Succeeded if said("left alone") => "update not present".into(),
        ServerStatus::Succeeded if said("was BROKEN") => "repaired (was broken)".into(),
        ServerStatus::Succeeded => "repaired".into(),
        ServerStatus::AlreadyDone => "done in an earlier run, still repaired".into(),
        ServerStatus::Failed { step, error } => format!("at {step}: {}", first_clause(error)),
        ServerStatus::CompensationFailed { step, .. } => {
            format!("{step} still owed: run the resume command below")
        }
        ServerStatus::Skipped { upstream } => format!("upstream {upstream} failed"),
        ServerStatus::Interrupted => "interrupted; resume finishes it".into(),
        ServerStatus::NotStarted => String::new(),
    }
}

/// The first line of an error, at most 80 characters.
fn first_clause(error: &str) -> String {
    let clause = error.split(['\n']).next().unwrap_or(error);
    let mut short: String = clause.chars().take(80).collect();
    if clause.chars().count() > 80 {
        short.push_str("...");
    }
    short
}

/// `verify`'s table.
pub fn survey_table(surveyed: &[Surveyed]) -> String {
    let width = name_width(surveyed.iter().map(|s| s.server.as_str()));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<width$}  {:<6}  {:<10}  {:<12}  {:<14}  STATE",
        "SERVER", "OK", "MODE", "TLS", "WSUS"
    );
    for s in surveyed {
        let mode = match &s.observed {
            Some(o) if o.replica => "replica",
            Some(_) => "autonomous",
            None => "-",
        };
        let mut state = s.verdict.clone();
        if let Some(error) = &s.error {
            let _ = write!(state, ": {error}");
        }
        for m in &s.mismatches {
            let _ = write!(state, "; {m}");
        }
        let tls = match s.observed.as_ref().and_then(|o| o.tls.as_ref()) {
            Some(t) if t.weak() => format!("{} weak", t.version),
            Some(t) => t.version.clone(),
            None if s.observed.is_some() => "none".into(),
            None => "-".into(),
        };
        let wsus = s
            .observed
            .as_ref()
            .and_then(|o| o.wsus_version.as_deref())
            .unwrap_or("-");
        let _ = writeln!(
            out,
            "{:<width$}  {:<6}  {mode:<10}  {tls:<12}  {wsus:<14}  {state}",
            s.server,
            if s.ok { "yes" } else { "NO" }
        );
    }
    let needs: Vec<String> = surveyed
        .iter()
        .filter(|s| s.hotfix.needs_hotfix == Some(true))
        .map(|s| format!("{} ({})", s.server, s.hotfix.advice))
        .collect();
    let advices: Vec<_> = surveyed.iter().map(|s| s.hotfix.clone()).collect();
    let _ = writeln!(out, "\n{}", workflows::hotfix::summary(&advices));
    for line in needs {
        let _ = writeln!(out, "  {line}");
    }
    let weak: Vec<&str> = surveyed
        .iter()
        .filter(|s| {
            s.observed
                .as_ref()
                .and_then(|o| o.tls.as_ref())
                .is_some_and(|t| t.weak())
        })
        .map(|s| s.server.as_str())
        .collect();
    if !weak.is_empty() {
        let _ = writeln!(
            out,
            "\n{} server(s) reached over TLS 1.0 or 1.1, deprecated (RFC 8996) and accepted only \
             because their `tls_min` allows it: {}",
            weak.len(),
            weak.join(", ")
        );
    }
    let bad = surveyed.iter().filter(|s| !s.ok).count();
    let _ = writeln!(
        out,
        "\n{} of {} servers verified{}",
        surveyed.len() - bad,
        surveyed.len(),
        if bad == 0 {
            ""
        } else {
            "; the others need attention"
        }
    );
    out
}

/// `rehearse`'s proof: each server before and after, and whether the lab says its clients can
/// sync (the emulated GetSyncInfo).
pub fn rehearsal_table(
    before: &[Surveyed],
    after: &[Surveyed],
    before_lab: &StateFile,
    after_lab: &StateFile,
) -> String {
    let width = name_width(before.iter().map(|s| s.server.as_str()));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<width$}  {:<11}  {:<11}  {:<5}  BEFORE -> AFTER",
        "SERVER", "SYNC BEFORE", "SYNC AFTER", "CALLS"
    );
    let sync = |lab: &StateFile, name: &str| match lab.servers.get(name) {
        Some(db) if db.client_sync_ok => "ok",
        Some(_) => "0x8024400E",
        None => "-",
    };
    for (b, a) in before.iter().zip(after) {
        let calls = after_lab
            .servers
            .get(&a.server)
            .map_or(0, |db| db.calls.len())
            - before_lab
                .servers
                .get(&b.server)
                .map_or(0, |db| db.calls.len());
        let _ = writeln!(
            out,
            "{:<width$}  {:<11}  {:<11}  {calls:<5}  {} -> {}",
            a.server,
            sync(before_lab, &b.server),
            sync(after_lab, &a.server),
            b.verdict,
            a.verdict
        );
    }
    let ok = after.iter().filter(|s| s.ok).count();
    let syncing = after_lab
        .servers
        .values()
        .filter(|db| db.client_sync_ok)
        .count();
    let _ = writeln!(
        out,
        "\n{ok} of {} servers verified; clients of {syncing} of {} servers can sync",
        after.len(),
        after_lab.servers.len()
    );
    out
}
