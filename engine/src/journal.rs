//! The write-ahead journal of a run: one checksummed JSON record per line, each flushed to disk
//! (fsync) before the engine goes on. It is also the audit log: who ran what, where, when, and
//! with which result. It never holds a secret: records carry names, steps, facts the workflow
//! chose to journal, and error messages.
//!
//! Line format: `<crc32 of the JSON, 8 hex digits> <JSON>\n`. A crash can leave the last line torn
//! (no newline, or a bad checksum): it is ignored. A bad line followed by good ones is corruption.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::oneshot;

use crate::event::{RunOutcome, ServerResult};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "kebab-case")]
pub enum Record {
    RunStarted {
        run_id: String,
        topology: String,
        fingerprint: String,
        /// The selected servers, in execution order: what `resume` walks.
        servers: Vec<String>,
        #[serde(flatten)]
        who: Who,
    },
    Resumed {
        #[serde(flatten)]
        who: Who,
    },
    /// A server begins an attempt (1 for its first; a resumed server that had failed or been
    /// interrupted starts the next one, from its first step).
    ServerStarted {
        server: String,
        attempt: u32,
        at: String,
    },
    /// What is needed to undo or resume (e.g. the original mode), written before the next
    /// mutation is sent.
    Facts {
        server: String,
        facts: Map<String, Value>,
        at: String,
    },
    /// A mutation is about to be sent.
    Intent {
        server: String,
        step: usize,
        name: String,
        attempt: u32,
        at: String,
    },
    Outcome {
        server: String,
        step: usize,
        name: String,
        result: StepResult,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        at: String,
    },
    ServerFinished {
        server: String,
        result: ServerResult,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note: Option<String>,
        at: String,
    },
    RunFinished {
        outcome: RunOutcome,
        at: String,
    },
}

impl Record {
    /// Whether `append` waits for this record to be on disk: an intent, before its mutation is
    /// sent, and the start and end of a run. Other records are held by the writer and written,
    /// in order, with the next such record (or after a millisecond of quiet), so the facts a
    /// mutation depends on are on disk before its intent returns; a lost outcome or finish is
    /// recovered by observation on resume, as a crash between a mutation and its outcome always
    /// was.
    pub fn needs_sync(&self) -> bool {
        matches!(
            self,
            Record::Intent { .. } | Record::RunStarted { .. } | Record::RunFinished { .. }
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepResult {
    Done,
    /// Observation showed the step had already taken effect (after a lost connection, or on resume).
    AlreadyDone,
    Failed,
}

/// The audit fields of a run start or resume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Who {
    pub operator: String,
    pub host: String,
    pub pid: u32,
    pub at: String,
}

impl Who {
    pub fn now() -> Who {
        Who {
            operator: std::env::var("USER")
                .or_else(|_| std::env::var("USERNAME"))
                .unwrap_or_else(|_| "unknown".into()),
            host: gethostname::gethostname().to_string_lossy().into_owned(),
            pid: std::process::id(),
            at: now(),
        }
    }
}

/// The current time, RFC 3339 in UTC with milliseconds.
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot write journal {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read journal {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "journal {path} is corrupt at line {line}: {reason}; it was changed by hand or the disk is failing. To go on, move it aside: `mv '{path}' '{path}.corrupt'`; the next `apply` then reads what is readable of it as an earlier run's, and switches back first any replica it shows switched and never switched back",
        path = path.display()
    )]
    Corrupt {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("the journal writer has stopped")]
    Closed,
}

/// Appends `record` as one journal line: `crc32-hex json\n`.
fn encode_into(record: &Record, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(b"00000000 ");
    // Serializing this enum into memory cannot fail: every field is a string, number, map or
    // enum.
    let _ = serde_json::to_writer(&mut *out, record);
    let crc = crc32fast::hash(&out[start + 9..]);
    // Eight hex digits fill the eight placeholder bytes exactly.
    let _ = write!(&mut out[start..start + 8], "{crc:08x}");
    out.push(b'\n');
}

fn decode(line: &str) -> Result<Record, String> {
    let (crc, json) = line.split_once(' ').ok_or("no checksum")?;
    let expected = u32::from_str_radix(crc, 16).map_err(|_| "bad checksum field")?;
    if crc32fast::hash(json.as_bytes()) != expected {
        return Err("checksum mismatch".into());
    }
    serde_json::from_str(json).map_err(|e| e.to_string())
}

/// Reads a journal, ignoring a torn last record.
pub fn read(path: &Path) -> Result<Vec<Record>, JournalError> {
    read_valid(path).map(|(records, _)| records)
}

/// Every record of a journal that still decodes, the bad lines skipped: what is readable of a
/// journal set aside as corrupt (`*.journal.corrupt`), kept for the switches back it shows owed.
pub fn read_lenient(path: &Path) -> Result<Vec<Record>, JournalError> {
    let bytes = std::fs::read(path).map_err(|source| JournalError::Read {
        path: path.into(),
        source,
    })?;
    Ok(bytes
        .split(|b| *b == b'\n')
        .filter_map(|line| std::str::from_utf8(line).ok())
        .filter(|line| !line.is_empty())
        .filter_map(|line| decode(line).ok())
        .collect())
}

/// The records, and the length of the file up to the end of the last good one.
fn read_valid(path: &Path) -> Result<(Vec<Record>, u64), JournalError> {
    let file = File::open(path).map_err(|source| JournalError::Read {
        path: path.into(),
        source,
    })?;
    let mut reader = BufReader::new(file);
    let mut records = Vec::new();
    let mut bad: Option<(usize, String)> = None;
    let mut buf = Vec::new();
    let (mut line_no, mut valid_len) = (0, 0u64);
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(|source| JournalError::Read {
                path: path.into(),
                source,
            })?;
        if n == 0 {
            break;
        }
        line_no += 1;
        if let Some((line, reason)) = bad.take() {
            // Something follows a bad record: it was not the torn tail of a crash.
            return Err(JournalError::Corrupt {
                path: path.into(),
                line,
                reason,
            });
        }
        if buf.last() != Some(&b'\n') {
            break; // torn: the crash came before the newline
        }
        let parsed = std::str::from_utf8(&buf[..buf.len() - 1])
            .map_err(|e| e.to_string())
            .and_then(decode);
        match parsed {
            Ok(record) => {
                records.push(record);
                valid_len += n as u64;
            }
            Err(reason) => bad = Some((line_no, reason)),
        }
    }
    Ok((records, valid_len))
}

/// A record (`None`: only a request to sync), and whom to tell once it is on disk (`None`: nobody
/// waits, see [`Record::needs_sync`]).
type Pending = (Option<Record>, Option<oneshot::Sender<Result<(), String>>>);

/// Called after each record is on disk, with the count written so far. Tests use it to kill the
/// process at a chosen journal boundary; it could also feed a replication of the audit log.
pub type DurableHook = Box<dyn Fn(u64, &Record) + Send>;

/// Appends records from any task. A writer thread batches records into one write and one fsync
/// (group commit), so hundreds of servers in flight do not queue behind one fsync each; an
/// `append` of a record that [needs it](Record::needs_sync) returns only once the record, and
/// every record before it, is on disk.
#[derive(Debug, Clone)]
pub struct Journal {
    path: PathBuf,
    tx: std_mpsc::Sender<Pending>,
    /// Set by the writer after a failed write: later appends fail at once.
    failed: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Journal {
    /// Opens `path` for appending (creating it), and starts the writer thread.
    pub fn open(path: &Path, hook: Option<DurableHook>) -> Result<Journal, JournalError> {
        let write_err = |source| JournalError::Write {
            path: path.into(),
            source,
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(write_err)?;
        // A torn tail left by a crash was never acknowledged to anyone: cut it off, so the next
        // record does not land behind it (which would read as corruption).
        let (_, valid_len) = read_valid(path)?;
        if file.metadata().map_err(write_err)?.len() > valid_len {
            file.set_len(valid_len)
                .and_then(|()| file.sync_data())
                .map_err(write_err)?;
        }
        if let Some(dir) = path.parent() {
            sync_dir(dir);
        }
        let (tx, rx) = std_mpsc::channel::<Pending>();
        let thread_path = path.to_path_buf();
        let failed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer_failed = std::sync::Arc::clone(&failed);
        std::thread::Builder::new()
            .name("journal".into())
            .spawn(move || writer(file, rx, hook, &thread_path, &writer_failed))
            .map_err(write_err)?;
        Ok(Journal {
            path: path.to_path_buf(),
            tx,
            failed,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `record`; returns once it is on disk if it [needs to be](Record::needs_sync).
    pub async fn append(&self, record: Record) -> Result<(), JournalError> {
        if self.failed.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(JournalError::Write {
                path: self.path.clone(),
                source: std::io::Error::other("an earlier write to the journal failed"),
            });
        }
        if !record.needs_sync() {
            return self
                .tx
                .send((Some(record), None))
                .map_err(|_| JournalError::Closed);
        }
        self.wait_on_disk(Some(record)).await
    }

    /// Returns once every record appended so far is on disk.
    pub async fn sync(&self) -> Result<(), JournalError> {
        self.wait_on_disk(None).await
    }

    async fn wait_on_disk(&self, record: Option<Record>) -> Result<(), JournalError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send((record, Some(done)))
            .map_err(|_| JournalError::Closed)?;
        match wait.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(JournalError::Write {
                path: self.path.clone(),
                source: std::io::Error::other(message),
            }),
            Err(_) => Err(JournalError::Closed),
        }
    }
}

fn writer(
    mut file: File,
    rx: std_mpsc::Receiver<Pending>,
    hook: Option<DurableHook>,
    path: &Path,
    failed_flag: &std::sync::atomic::AtomicBool,
) {
    /// How long records nobody waits for may sit unwritten when nothing else comes.
    const QUIET: std::time::Duration = std::time::Duration::from_millis(1);
    let mut written = 0u64;
    let mut failed: Option<String> = None;
    let mut held: Vec<Pending> = Vec::new();
    let mut bytes = Vec::new();
    loop {
        // Gather: block for the next record, or wait a moment while some are held.
        let (next, quiet) = if held.is_empty() {
            (rx.recv().ok(), false)
        } else {
            match rx.recv_timeout(QUIET) {
                Ok(p) => (Some(p), false),
                Err(_) => (None, true), // quiet, or every sender gone
            }
        };
        if next.is_none() && held.is_empty() {
            return; // every sender gone, nothing held
        }
        held.extend(next);
        held.extend(rx.try_iter());
        let sync = held.iter().any(|(_, done)| done.is_some());
        if !sync && !quiet && held.len() < 1024 {
            continue;
        }
        let batch = std::mem::take(&mut held);
        let result = match &failed {
            // After a failed write the file's tail is unknown: refuse everything after it.
            Some(message) => Err(message.clone()),
            None => {
                bytes.clear();
                for record in batch.iter().filter_map(|(record, _)| record.as_ref()) {
                    encode_into(record, &mut bytes);
                }
                file.write_all(&bytes)
                    .and_then(|()| if sync { file.sync_data() } else { Ok(()) })
                    .map_err(|e| {
                        let message = format!("{}: {e}", path.display());
                        failed = Some(message.clone());
                        failed_flag.store(true, std::sync::atomic::Ordering::SeqCst);
                        message
                    })
            }
        };
        for (record, done) in batch {
            if let (Ok(()), Some(record)) = (&result, &record) {
                written += 1;
                if let Some(hook) = &hook {
                    hook(written, record);
                }
            }
            if let Some(done) = done {
                let _ = done.send(result.clone());
            }
        }
    }
}

/// Makes a new file's directory entry durable (a no-op where directories cannot be opened).
pub(crate) fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    }) {
        let _ = d.sync_all();
    }
}

/// What a journal says about each server, replayed in order.
#[derive(Debug, Clone, Default)]
pub struct Replay {
    pub run_id: String,
    pub topology: String,
    pub fingerprint: String,
    pub servers: Vec<String>,
    pub finished: Option<RunOutcome>,
    pub progress: HashMap<String, ServerProgress>,
    /// Read from a journal set aside as corrupt: only what still decoded, never resumed, and
    /// no proof that a server is done.
    pub set_aside: bool,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServerProgress {
    pub attempt: u32,
    pub facts: Map<String, Value>,
    /// Indexed by step; absent = not started.
    pub steps: HashMap<usize, StepState>,
    pub finished: Option<ServerResult>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepState {
    /// An intent without an outcome: the mutation may or may not have taken effect.
    Open,
    Done,
    Failed,
}

impl ServerProgress {
    pub fn is_done(&self, step: usize) -> bool {
        self.steps.get(&step) == Some(&StepState::Done)
    }

    /// The attempt ended (a step failed, or the server finished other than succeeded).
    pub fn attempt_over(&self) -> bool {
        matches!(
            self.finished,
            Some(
                ServerResult::Failed
                    | ServerResult::Interrupted
                    | ServerResult::CompensationPending
            )
        ) || self.steps.values().any(|s| *s == StepState::Failed)
    }
}

impl Replay {
    pub fn from_records(records: &[Record]) -> Replay {
        let mut r = Replay::default();
        for record in records {
            match record {
                Record::RunStarted {
                    run_id,
                    topology,
                    fingerprint,
                    servers,
                    ..
                } => {
                    r.run_id.clone_from(run_id);
                    r.topology.clone_from(topology);
                    r.fingerprint.clone_from(fingerprint);
                    r.servers.clone_from(servers);
                }
                Record::Resumed { .. } => r.finished = None,
                Record::ServerStarted {
                    server, attempt, ..
                } => {
                    let p = r.progress.entry(server.clone()).or_default();
                    p.attempt = *attempt;
                    p.steps.clear();
                    p.finished = None;
                }
                Record::Facts { server, facts, .. } => {
                    let p = r.progress.entry(server.clone()).or_default();
                    p.facts
                        .extend(facts.iter().map(|(k, v)| (k.clone(), v.clone())));
                }
                Record::Intent { server, step, .. } => {
                    r.progress
                        .entry(server.clone())
                        .or_default()
                        .steps
                        .insert(*step, StepState::Open);
                }
                Record::Outcome {
                    server,
                    step,
                    result,
                    ..
                } => {
                    let state = match result {
                        StepResult::Done | StepResult::AlreadyDone => StepState::Done,
                        StepResult::Failed => StepState::Failed,
                    };
                    r.progress
                        .entry(server.clone())
                        .or_default()
                        .steps
                        .insert(*step, state);
                }
                Record::ServerFinished { server, result, .. } => {
                    r.progress.entry(server.clone()).or_default().finished = Some(*result);
                }
                Record::RunFinished { outcome, .. } => r.finished = Some(*outcome),
            }
        }
        r
    }

    /// Whether `resume` has work to do.
    /// A run that began (its first record is on disk) and did not end. A journal killed before
    /// its first record was durable holds no change: every mutation comes after that record.
    pub fn is_unfinished(&self) -> bool {
        !self.run_id.is_empty() && matches!(self.finished, None | Some(RunOutcome::Unfinished))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Record> {
        vec![
            Record::RunStarted {
                run_id: "r1".into(),
                topology: "t.yaml".into(),
                fingerprint: "sha256:00".into(),
                servers: vec!["a".into(), "b".into()],
                who: Who {
                    operator: "op".into(),
                    host: "h".into(),
                    pid: 1,
                    at: "t0".into(),
                },
            },
            Record::ServerStarted {
                server: "a".into(),
                attempt: 1,
                at: "t1".into(),
            },
            Record::Facts {
                server: "a".into(),
                facts: [("original_mode".to_string(), Value::from("replica"))]
                    .into_iter()
                    .collect(),
                at: "t2".into(),
            },
            Record::Intent {
                server: "a".into(),
                step: 1,
                name: "switch".into(),
                attempt: 1,
                at: "t3".into(),
            },
            Record::Outcome {
                server: "a".into(),
                step: 1,
                name: "switch".into(),
                result: StepResult::Done,
                note: None,
                error: None,
                at: "t4".into(),
            },
            Record::Intent {
                server: "a".into(),
                step: 2,
                name: "decline".into(),
                attempt: 1,
                at: "t5".into(),
            },
        ]
    }

    fn write_all(path: &Path, records: &[Record]) -> Vec<u8> {
        let mut bytes = Vec::new();
        for record in records {
            encode_into(record, &mut bytes);
        }
        std::fs::write(path, &bytes).unwrap();
        bytes
    }

    #[test]
    fn a_journal_cut_at_any_byte_loads_as_its_complete_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let records = sample();
        let bytes = write_all(&path, &records);
        let ends: Vec<usize> = bytes
            .iter()
            .enumerate()
            .filter(|(_, b)| **b == b'\n')
            .map(|(i, _)| i + 1)
            .collect();
        for cut in 0..=bytes.len() {
            std::fs::write(&path, &bytes[..cut]).unwrap();
            let loaded = read(&path).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
            let complete = ends.iter().filter(|&&end| end <= cut).count();
            assert_eq!(loaded, records[..complete], "cut at {cut}");
        }
    }

    #[test]
    fn a_damaged_record_in_the_middle_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let mut bytes = write_all(&path, &sample());
        let at = bytes.iter().position(|b| *b == b'\n').unwrap() + 20;
        bytes[at] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            read(&path),
            Err(JournalError::Corrupt { line: 2, .. })
        ));
    }

    #[test]
    fn replay_tracks_steps_facts_and_open_intents() {
        let replay = Replay::from_records(&sample());
        assert!(replay.is_unfinished());
        let a = &replay.progress["a"];
        assert_eq!(a.attempt, 1);
        assert!(a.is_done(1));
        assert_eq!(a.steps[&2], StepState::Open);
        assert_eq!(a.facts["original_mode"], "replica");
        assert!(!a.attempt_over());
    }

    #[tokio::test]
    async fn appends_are_durable_and_survive_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let records = sample();
        let journal = Journal::open(&path, None).unwrap();
        for r in &records[..3] {
            journal.append(r.clone()).await.unwrap();
        }
        journal.sync().await.unwrap();
        drop(journal);
        // A crash in the middle of a record, then a new writer appends after it.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"0badc0de {\"record\":").unwrap();
        drop(f);
        let journal = Journal::open(&path, None).unwrap();
        journal.append(records[3].clone()).await.unwrap();
        drop(journal);
        assert_eq!(read(&path).unwrap(), records[..4]);
    }

    #[test]
    fn a_journal_killed_before_its_first_record_is_not_an_unfinished_run() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        std::fs::write(&path, b"0badc0de {\"record\":\"run-sta").unwrap();
        let replay = Replay::from_records(&read(&path).unwrap());
        assert!(!replay.is_unfinished());
        assert!(Replay::from_records(&sample()).is_unfinished());
    }

    #[tokio::test]
    async fn an_intent_returns_only_with_every_earlier_record_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let records = sample();
        let journal = Journal::open(&path, None).unwrap();
        let intent = records
            .iter()
            .position(|r| matches!(r, Record::Intent { .. }))
            .unwrap();
        assert!(records[..intent].iter().any(|r| !r.needs_sync()));
        for r in &records[..=intent] {
            journal.append(r.clone()).await.unwrap();
        }
        // No waiting and no dropping the journal: the intent's return is the guarantee.
        assert_eq!(read(&path).unwrap(), records[..=intent]);
    }
}
