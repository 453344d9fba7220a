//! Injected faults, from a YAML file:
//!
//! ```yaml
//! faults:
//!   - server: wsus-emea        # optional: every server
//!     target: spDeployUpdate   # a procedure, a statement (probe, set-replica-mode, key-object), or login
//!     nth: 1                   # optional: every call; otherwise the n-th call (1-based) of that target
//!     latency_ms: 500          # optional: extra delay before answering
//!     drop: after              # optional: close the connection before or after the call takes effect
//!     error: 1205              # optional: answer with this SQL Server error (1205 deadlock, -2 timeout)
//!   - server: wsus-tokyo
//!     unreachable: true        # every connection to it is closed at login
//!   - server: wsus-oslo
//!     signature: spDeployUpdate   # a procedure or a table/view of the lab's catalog
//!     without: "@isReplica"       # ... as if this parameter or column did not exist there
//! ```

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    #[serde(default)]
    pub faults: Vec<Fault>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    pub server: Option<String>,
    pub target: Option<String>,
    pub nth: Option<u32>,
    pub latency_ms: Option<u64>,
    pub drop: Option<Drop>,
    pub error: Option<i32>,
    #[serde(default)]
    pub unreachable: bool,
    /// With `without`: a procedure, table or view of this server's catalog that lacks a
    /// parameter or column (a SUSDB of another schema).
    pub signature: Option<String>,
    pub without: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Drop {
    Before,
    After,
}

/// What to do to one call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Action {
    pub latency: Duration,
    pub drop: Option<Drop>,
    pub error: Option<i32>,
}

#[derive(Debug, thiserror::Error)]
pub enum FaultsError {
    #[error("cannot read faults file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("faults file {path}: {source}")]
    Parse {
        path: String,
        source: serde_yaml::Error,
    },
}

impl Faults {
    pub fn load(path: &Path) -> Result<Faults, FaultsError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| FaultsError::Read {
            path: shown.clone(),
            source,
        })?;
        serde_yaml::from_str(&text).map_err(|source| FaultsError::Parse {
            path: shown,
            source,
        })
    }

    pub fn unreachable(&self, server: &str) -> bool {
        self.faults
            .iter()
            .any(|f| f.unreachable && matches(f.server.as_deref(), server))
    }

    /// The parameters or columns of `object` that faults remove on `server`.
    pub fn removed(&self, server: &str, object: &str) -> Vec<String> {
        self.faults
            .iter()
            .filter(|f| matches(f.server.as_deref(), server))
            .filter(|f| {
                f.signature
                    .as_deref()
                    .is_some_and(|o| o.trim_start_matches("dbo.").eq_ignore_ascii_case(object))
            })
            .filter_map(|f| f.without.clone())
            .collect()
    }
}

fn matches(filter: Option<&str>, value: &str) -> bool {
    filter.is_none_or(|f| f.eq_ignore_ascii_case(value))
}

/// Counts calls per (server, target) to apply `nth`.
#[derive(Debug, Default)]
pub struct Counter {
    calls: HashMap<(String, String), u32>,
}

impl Counter {
    /// Requests received per server (every statement and procedure; logins are not counted).
    pub fn per_server(&self) -> HashMap<String, u32> {
        let mut out = HashMap::new();
        for ((server, _), n) in &self.calls {
            *out.entry(server.clone()).or_default() += n;
        }
        out
    }

    /// Counts this call and returns what the faults say to do to it.
    pub fn on_call(&mut self, faults: &Faults, server: &str, target: &str) -> Action {
        let n = self
            .calls
            .entry((server.to_ascii_lowercase(), target.to_ascii_lowercase()))
            .or_default();
        *n += 1;
        let n = *n;
        let mut action = Action::default();
        for f in &faults.faults {
            if f.unreachable
                || f.signature.is_some()
                || !matches(f.server.as_deref(), server)
                || !matches(f.target.as_deref(), target)
                || f.nth.is_some_and(|nth| nth != n)
            {
                continue;
            }
            action.latency += Duration::from_millis(f.latency_ms.unwrap_or(0));
            action.drop = action.drop.or(f.drop);
            action.error = action.error.or(f.error);
        }
        action
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nth_call_of_a_target_on_a_server_is_hit() {
        let faults: Faults = serde_yaml::from_str(
            "faults:\n  - server: a\n    target: spDeployUpdate\n    nth: 2\n    drop: after\n  - target: probe\n    latency_ms: 5\n",
        )
        .unwrap();
        let mut counter = Counter::default();
        assert_eq!(
            counter.on_call(&faults, "a", "spDeployUpdate"),
            Action::default()
        );
        assert_eq!(
            counter.on_call(&faults, "A", "spdeployupdate").drop,
            Some(Drop::After)
        );
        assert_eq!(
            counter.on_call(&faults, "a", "spDeployUpdate"),
            Action::default()
        );
        assert_eq!(
            counter.on_call(&faults, "b", "probe").latency,
            Duration::from_millis(5)
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(serde_yaml::from_str::<Faults>("faults:\n  - sever: a\n").is_err());
    }
}
