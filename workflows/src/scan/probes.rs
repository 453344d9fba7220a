//! The synthetic client's computer records not yet removed: `STATE_DIR/client-probes.json`.
//! A probe is written (and on disk) before the client first names itself to a server, and
//! removed once the server's record is gone, so a run that dies in between leaves the exact
//! name behind for the next `verify --client` to remove first, or for an operator to remove by
//! hand. The file is rewritten whole through a temporary file and a rename.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// One computer record the client may have left on a server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    pub server: String,
    pub client_id: String,
    pub dns_name: String,
    /// When the client first named itself there (UTC).
    pub since: String,
    /// Set when a run could not remove the record: why, and how to remove it by hand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub left: Option<Left>,
}

/// Why a run left a record, and the step that removes it by hand.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Left {
    pub reason: String,
    pub manual_step: String,
    /// When the run gave up on it (UTC).
    pub at: String,
}

impl Probe {
    /// How to remove the record by hand, on the WSUS server, with the WSUS 3.0 API (no WSUS
    /// cmdlets before Windows Server 2012).
    pub fn manual_step(&self) -> String {
        format!(
            "on {}: WSUS console, Computers > All Computers, {} > Delete; or in PowerShell: \
             [void][reflection.assembly]::LoadWithPartialName('Microsoft.UpdateServices.Administration'); \
             [Microsoft.UpdateServices.Administration.AdminProxy]::GetUpdateServer().GetComputerTargetByName('{}').Delete()",
            self.server, self.dns_name, self.dns_name
        )
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ProbesError {
    path: String,
    message: String,
}

/// The probes of one state directory.
#[derive(Debug)]
pub struct Probes {
    path: PathBuf,
    entries: Mutex<Vec<Probe>>,
}

impl Probes {
    pub const FILE: &'static str = "client-probes.json";

    /// The probes recorded under `state_dir` (none when the file does not exist).
    pub fn open(state_dir: &Path) -> Result<Probes, ProbesError> {
        let path = state_dir.join(Self::FILE);
        let fail = |message: String| ProbesError {
            path: path.display().to_string(),
            message,
        };
        let entries = match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| {
                fail(format!(
                    "not a probe record ({e}): it lists computer records `verify --client` left \
                     on servers; fix or remove it"
                ))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(fail(e.to_string())),
        };
        Ok(Probes {
            path,
            entries: Mutex::new(entries),
        })
    }

    pub fn pending(&self) -> Vec<Probe> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Probe>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records `probe`, on disk before this returns.
    pub fn add(&self, probe: Probe) -> Result<(), ProbesError> {
        let mut entries = self.lock();
        if !entries
            .iter()
            .any(|p| p.server == probe.server && p.client_id == probe.client_id)
        {
            entries.push(probe);
        }
        self.write(&entries)
    }

    /// Notes on the probe of `client_id` on `server` why this run left its record, with the
    /// step that removes it by hand; on disk before this returns.
    pub fn mark_left(
        &self,
        server: &str,
        client_id: &str,
        reason: &str,
    ) -> Result<(), ProbesError> {
        let mut entries = self.lock();
        for p in entries
            .iter_mut()
            .filter(|p| p.server == server && p.client_id == client_id)
        {
            p.left = Some(Left {
                reason: reason.to_string(),
                manual_step: p.manual_step(),
                at: chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string(),
            });
        }
        self.write(&entries)
    }

    /// Forgets the probe of `client_id` on `server`, on disk before this returns.
    pub fn remove(&self, server: &str, client_id: &str) -> Result<(), ProbesError> {
        let mut entries = self.lock();
        entries.retain(|p| !(p.server == server && p.client_id == client_id));
        self.write(&entries)
    }

    fn write(&self, entries: &[Probe]) -> Result<(), ProbesError> {
        let fail = |e: std::io::Error| ProbesError {
            path: self.path.display().to_string(),
            message: e.to_string(),
        };
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(fail)?;
        }
        let text = serde_json::to_string_pretty(entries).unwrap_or_default();
        let temporary = self.path.with_extension("json.tmp");
        {
            // Closed before the rename, which Windows refuses for a file still open elsewhere.
            let mut file = std::fs::File::create(&temporary).map_err(fail)?;
            file.write_all(text.as_bytes()).map_err(fail)?;
            file.sync_all().map_err(fail)?;
        }
        std::fs::rename(&temporary, &self.path).map_err(fail)?;
        // The rename itself is durable once the directory is (not on Windows, where a directory
        // cannot be opened as a file and NTFS journals the rename).
        #[cfg(unix)]
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(fail)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(server: &str) -> Probe {
        Probe {
            server: server.into(),
            client_id: "0c1e57a1-0000-4000-8000-000000000001".into(),
            dns_name: "wsus-reset-probe-0c1e57a1.invalid".into(),
            since: "2026-12-05T00:00:00Z".into(),
            left: None,
        }
    }

    #[test]
    fn probes_survive_the_process_until_removed() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let state = dir.path().join("state");
        let probes = Probes::open(&state).unwrap_or_else(|e| panic!("{e}"));
        assert!(probes.pending().is_empty());
        probes
            .add(probe("wsus-hq"))
            .unwrap_or_else(|e| panic!("{e}"));
        probes
            .add(probe("wsus-emea"))
            .unwrap_or_else(|e| panic!("{e}"));
        probes
            .remove("wsus-hq", "0c1e57a1-0000-4000-8000-000000000001")
            .unwrap_or_else(|e| panic!("{e}"));
        let again = Probes::open(&state).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(again.pending(), [probe("wsus-emea")]);
        assert!(
            probe("wsus-emea")
                .manual_step()
                .contains("GetComputerTargetByName('wsus-reset-probe-0c1e57a1.invalid').Delete()")
        );
    }

    #[test]
    fn a_damaged_record_is_refused_not_forgotten() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.path().join(Probes::FILE), "{not json")
            .unwrap_or_else(|e| panic!("{e}"));
        let error = Probes::open(dir.path()).map(drop).unwrap_err().to_string();
        assert!(
            error.contains("client-probes.json") && error.contains("fix or remove it"),
            "{error}"
        );
    }
}
