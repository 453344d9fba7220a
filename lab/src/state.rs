//! The lab's state file: the whole model as JSON, loaded at start, written atomically, and made
//! durable by group commit (a change's reply waits for a write that holds it; changes made
//! meanwhile share it). It holds no model: the caller gives it the encoded state to write.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;

use crate::error::LabError;
use crate::model::{ServerDb, StateFile, lock};

/// Where the state file's group commit stands: changes are numbered as they ask to be durable.
#[derive(Debug, Default)]
struct Commit {
    /// The newest change that asked.
    requested: u64,
    /// Every change up to this one is on disk (or its write failed, see `failed`).
    durable: u64,
    /// A write is under way.
    writing: bool,
    /// The last failed write: the changes it covered (from, to) and why.
    failed: Option<(u64, u64, String)>,
}

/// The state file of a lab, if it has one, and its group commit.
#[derive(Debug)]
pub(crate) struct StateWriter {
    path: Option<PathBuf>,
    /// One writer at a time, each writing the state as it is when its turn comes: the file
    /// always ends with the newest state.
    saving: Mutex<()>,
    commit: Mutex<Commit>,
    committed: tokio::sync::Notify,
}

impl StateWriter {
    pub(crate) fn new(path: Option<PathBuf>) -> StateWriter {
        StateWriter {
            path,
            saving: Mutex::new(()),
            commit: Mutex::new(Commit::default()),
            committed: tokio::sync::Notify::new(),
        }
    }

    /// The state saved at `path`, when the file exists.
    pub(crate) fn load(&self) -> Result<Option<StateFile>, LabError> {
        let Some(path) = self.path.as_ref().filter(|p| p.exists()) else {
            return Ok(None);
        };
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| LabError::ReadState {
            path: shown.clone(),
            source,
        })?;
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|source| LabError::BadState {
                path: shown,
                source,
            })
    }

    /// Writes the state file, if one is configured, whole or not at all: `encode` is called
    /// under the writer's turn, so the newest state is the last written. Compact JSON encoded
    /// under the model's lock, without a copy of the model, takes well under what a copy did.
    pub(crate) fn save(
        &self,
        encode: impl FnOnce() -> serde_json::Result<Vec<u8>>,
    ) -> Result<(), LabError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let _writing = lock(&self.saving);
        let shown = path.display().to_string();
        let text = encode().map_err(|e| LabError::WriteState {
            path: shown.clone(),
            source: std::io::Error::other(e),
        })?;
        write_atomically(path, &text).map_err(|source| LabError::WriteState {
            path: shown,
            source,
        })
    }

    /// Makes every change made so far durable, writing the state file at most once for all the
    /// changes that ask meanwhile (group commit, as the engine's journal does): the first to ask
    /// writes with `save` (on a blocking thread), the others wait for a write that began after
    /// their change. Without a state file, nothing to do.
    pub(crate) async fn persist(
        &self,
        save: impl FnOnce() -> Result<(), LabError> + Send + 'static,
    ) -> Result<(), LabError> {
        if self.path.is_none() {
            return Ok(());
        }
        let mut save = Some(save);
        let mine = {
            let mut commit = lock(&self.commit);
            commit.requested += 1;
            commit.requested
        };
        loop {
            let notified = self.committed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let job = {
                let mut commit = lock(&self.commit);
                if commit.durable >= mine {
                    return match &commit.failed {
                        Some((from, to, why)) if (*from..=*to).contains(&mine) => {
                            Err(LabError::WriteState {
                                path: self
                                    .path
                                    .as_ref()
                                    .map(|p| p.display().to_string())
                                    .unwrap_or_default(),
                                source: std::io::Error::other(why.clone()),
                            })
                        }
                        _ => Ok(()),
                    };
                }
                // A request writes at most once: its change is durable after its write.
                match save.take() {
                    Some(save) if !commit.writing => {
                        commit.writing = true;
                        Some((commit.durable, commit.requested, save))
                    }
                    unused => {
                        save = unused;
                        None
                    }
                }
            };
            let Some((before, target, save)) = job else {
                notified.await;
                continue;
            };
            // The request may be dropped while it writes (its client went away): the turn is
            // then given back, or every later change would wait for a write nobody finishes.
            let mut turn = Turn {
                writer: self,
                done: false,
            };
            // Every change numbered up to `target` was made before the state is encoded.
            let written = tokio::task::spawn_blocking(save).await.unwrap_or_else(|e| {
                Err(LabError::WriteState {
                    path: String::new(),
                    source: std::io::Error::other(e.to_string()),
                })
            });
            {
                let mut commit = lock(&self.commit);
                commit.durable = target;
                commit.writing = false;
                if let Err(e) = written {
                    commit.failed = Some((before + 1, target, e.to_string()));
                }
            }
            turn.done = true;
            self.committed.notify_waiters();
        }
    }
}

/// The writer's turn, given back if the request holding it is dropped mid-write.
struct Turn<'a> {
    writer: &'a StateWriter,
    done: bool,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        if !self.done {
            lock(&self.writer.commit).writing = false;
            self.writer.committed.notify_waiters();
        }
    }
}

/// The servers' models encoded as the state file holds them ([`StateFile`]), borrowed.
pub(crate) fn encode(servers: &BTreeMap<String, ServerDb>) -> serde_json::Result<Vec<u8>> {
    #[derive(Serialize)]
    struct StateFileRef<'a> {
        servers: &'a BTreeMap<String, ServerDb>,
    }
    serde_json::to_vec(&StateFileRef { servers })
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .map_or("state".into(), |n| n.to_string_lossy())
    ));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_request_dropped_while_it_writes_does_not_stop_later_changes() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let writer = Arc::new(StateWriter::new(Some(dir.path().join("state.json"))));
        let (started, has_started) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let first = tokio::spawn({
            let writer = Arc::clone(&writer);
            async move {
                writer
                    .persist(move || {
                        let _ = started.send(());
                        let _ = released.recv();
                        Ok(())
                    })
                    .await
            }
        });
        tokio::task::spawn_blocking(move || has_started.recv())
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|e| panic!("{e}"));
        // The client whose change is being written goes away (its connection dropped).
        first.abort();
        let _ = first.await;
        let _ = release.send(());
        let later = tokio::time::timeout(Duration::from_secs(10), writer.persist(|| Ok(()))).await;
        assert!(
            matches!(later, Ok(Ok(()))),
            "a later change was not made durable: {later:?}"
        );
    }
}
