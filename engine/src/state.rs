//! The state directory: one run at a time (an OS file lock), and the journals of its runs.
//!
//! Layout: `<dir>/lock` (locked while a run is in progress; holds who holds it) and
//! `<dir>/runs/<run id>.journal`, run ids sorting in time order.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::journal::{self, JournalError, Replay};

/// Who holds the lock of a state directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub pid: u32,
    pub host: String,
    pub started_at: String,
    pub run_id: String,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pid {} on {}, started {}, run {}",
            self.pid, self.host, self.started_at, self.run_id
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("another run holds the lock on {dir}: {}", .holder.as_ref().map_or("holder unknown".to_string(), ToString::to_string))]
    Locked {
        dir: PathBuf,
        holder: Option<Holder>,
    },
    #[error("cannot use state directory {dir}: {source}")]
    Io {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Journal(#[from] JournalError),
}

/// A locked state directory. The lock is the OS's: it goes when this value is dropped or the
/// process dies, however it dies.
#[derive(Debug)]
pub struct StateDir {
    dir: PathBuf,
    _lock: File,
}

impl StateDir {
    /// Takes the lock, or says who has it.
    pub fn lock(dir: &Path, run_id: &str) -> Result<StateDir, StateError> {
        let io = |source| StateError::Io {
            dir: dir.into(),
            source,
        };
        std::fs::create_dir_all(dir.join("runs")).map_err(io)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join("lock"))
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StateError::Locked {
                    dir: dir.into(),
                    holder: read_holder(&mut file),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        let holder = Holder {
            pid: std::process::id(),
            host: gethostname::gethostname().to_string_lossy().into_owned(),
            started_at: journal::now(),
            run_id: run_id.to_string(),
        };
        let text = serde_json::to_string(&holder).unwrap_or_default();
        file.set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(text.as_bytes()))
            .and_then(|()| file.sync_data())
            .map_err(io)?;
        Ok(StateDir {
            dir: dir.into(),
            _lock: file,
        })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    pub fn journal_path(&self, run_id: &str) -> PathBuf {
        self.dir.join("runs").join(format!("{run_id}.journal"))
    }

    /// Every run's journal, oldest first. A journal an operator set aside as corrupt
    /// (`RUN.journal.corrupt`, as the corruption error says) is read for what still decodes, as
    /// a run that ended: never resumed, but the switches back it shows owed are still owed.
    pub fn runs(&self) -> Result<Vec<(PathBuf, Replay)>, StateError> {
        let io = |source| StateError::Io {
            dir: self.dir.clone(),
            source,
        };
        let mut paths: Vec<PathBuf> = std::fs::read_dir(self.dir.join("runs"))
            .map_err(io)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                name.ends_with(".journal") || name.ends_with(".journal.corrupt")
            })
            .collect();
        paths.sort();
        paths
            .into_iter()
            .map(|p| {
                let set_aside = p.extension().is_some_and(|e| e == "corrupt");
                let replay = if set_aside {
                    let mut replay = Replay::from_records(&journal::read_lenient(&p)?);
                    replay.set_aside = true;
                    replay
                } else {
                    Replay::from_records(&journal::read(&p)?)
                };
                Ok((p, replay))
            })
            .collect()
    }

    /// The newest run, if it did not finish (a journal set aside as corrupt is never resumed).
    pub fn unfinished(&self) -> Result<Option<(PathBuf, Replay)>, StateError> {
        Ok(self
            .runs()?
            .into_iter()
            .rfind(|(_, r)| !r.set_aside)
            .filter(|(_, r)| r.is_unfinished()))
    }
}

/// Who holds the lock. The holder writes its record just after taking the lock, so a process
/// that loses a close race may look before it is there: look again for a moment (bounded).
fn read_holder(file: &mut File) -> Option<Holder> {
    for _ in 0..50 {
        let mut text = String::new();
        if file.seek(SeekFrom::Start(0)).is_ok()
            && file.read_to_string(&mut text).is_ok()
            && let Ok(holder) = serde_json::from_str(&text)
        {
            return Some(holder);
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    None
}

/// A new run id: UTC time to the millisecond, then the pid, so ids sort in time order.
pub fn new_run_id() -> String {
    format!(
        "{}-{}",
        chrono::Utc::now().format("%Y%m%dT%H%M%S%3fZ"),
        std::process::id()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_naming_the_holder_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = StateDir::lock(dir.path(), "run-1").unwrap();
        match StateDir::lock(dir.path(), "run-2") {
            Err(StateError::Locked {
                holder: Some(h), ..
            }) => {
                assert_eq!(h.run_id, "run-1");
                assert_eq!(h.pid, std::process::id());
            }
            other => panic!("expected the lock to be refused, got {other:?}"),
        }
        drop(first);
        StateDir::lock(dir.path(), "run-3").unwrap();
    }
}
