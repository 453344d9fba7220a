//! Injected faults, from a YAML file:
//!
//! ```yaml
//! faults:
//!   - server: wsus-emea        # optional: every server
//!     target: spDeployUpdate   # a procedure, a statement (probe, set-replica-mode, key-object, downstream-servers), a web-service operation, or login
//!     nth: 1                   # optional: every call; otherwise the n-th call (1-based) of that target
//!     latency_ms: 500          # optional: extra delay before answering
//!     drop: after              # optional: close the connection before or after the call takes effect
//!     error: 1205              # optional: answer with this SQL Server error (1205 deadlock, -2 timeout)
//!   - server: wsus-tokyo
//!     unreachable: true        # every connection to it is closed at login
//!   - server: wsus-oslo
//!     signature: spDeployUpdate   # a procedure or a table/view of the lab's catalog
//!     without: "@isReplica"       # ... as if this parameter or column did not exist there
//!   - server: wsus-paris
//!     operation: ExecuteSPGetRevisions   # a web-service operation this server does not have
//!   - server: wsus-rome
//!     operation: ExecuteSPDeclineUpdate
//!     without: failIfReplica             # ... or has without this parameter
//!   - server: wsus-kyiv
//!     licence: not-accepted    # the update's licence agreement was never accepted there
//!   - server: wsus-lima
//!     expired: true            # the update is expired there (PublicationState 1)
//!   - server: wsus-oslo
//!     target: SyncUpdates      # a client web service operation (MS-WUSP) ...
//!     nth: 2
//!     client_error: CookieExpired   # ... answered with this ErrorCode's fault instead
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
    /// With `without`, a parameter of this web-service operation; alone, the operation: absent
    /// from this server's WSDL, and its calls refused as ASP.NET refuses an unknown SOAPAction.
    pub operation: Option<String>,
    pub without: Option<String>,
    pub licence: Option<Licence>,
    #[serde(default)]
    pub expired: bool,
    /// With `target` a client web service operation: its answer is this MS-WUSP fault (what the
    /// server asks of a client: start over, register again; or its InternalServerError).
    pub client_error: Option<crate::wusp::ErrorCode>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Licence {
    NotAccepted,
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
    pub client_error: Option<crate::wusp::ErrorCode>,
}

#[derive(Debug, thiserror::Error)]
pub enum FaultsError {
    #[error("faults file: {0}")]
    Read(#[from] topology::InputError),
    #[error("faults file {path}: {source}")]
    Parse {
        path: String,
        source: serde_yaml::Error,
    },
    #[error("faults file {path}: fault {index} {problem}")]
    Invalid {
        path: String,
        /// 1-based, in file order.
        index: usize,
        problem: String,
    },
}

impl Faults {
    pub fn load(path: &Path) -> Result<Faults, FaultsError> {
        let shown = path.display().to_string();
        let bytes = topology::read_input(path, 16 << 20)?;
        serde_yaml::from_slice(&bytes).map_err(|source| FaultsError::Parse {
            path: shown,
            source,
        })
    }

    /// Every target a fault can name: the statements of the `susdb` contract by their short
    /// names, the procedures the tool calls, a login, a transaction request.
    pub const TARGETS: &'static [&'static str] = &[
        "login",
        "probe",
        "signatures",
        "set-replica-mode",
        "key-object",
        "applock-held",
        "downstream-servers",
        "batch",
        "transaction",
        "spDeclineUpdate",
        "spDeployUpdate",
        "sp_getapplock",
        "sp_releaseapplock",
        "sp_executesql",
    ];

    /// Refuses a faults file that would inject nothing, or not where it says: a test must never
    /// pass because its fault missed. `servers` are the lab's server names.
    pub fn validate(&self, path: &str, servers: &[&str]) -> Result<(), FaultsError> {
        for (k, f) in self.faults.iter().enumerate() {
            let invalid = |problem: String| FaultsError::Invalid {
                path: path.to_string(),
                index: k + 1,
                problem,
            };
            if let Some(server) = &f.server
                && !servers.iter().any(|s| s.eq_ignore_ascii_case(server))
            {
                return Err(invalid(format!(
                    "names server `{server}`, which the lab does not serve"
                )));
            }
            if let Some(target) = &f.target
                && !Self::TARGETS
                    .iter()
                    .chain(crate::api::wsdl::OPERATIONS)
                    .chain(crate::wusp::OPERATIONS)
                    .any(|t| t.eq_ignore_ascii_case(target))
            {
                return Err(invalid(format!(
                    "has target `{target}`: one of {}, a web service operation ({}) or a client \
                     web service operation ({})",
                    Self::TARGETS.join(", "),
                    crate::api::wsdl::OPERATIONS.join(", "),
                    crate::wusp::OPERATIONS.join(", ")
                )));
            }
            let client_target = f.target.as_deref().is_some_and(|target| {
                crate::wusp::OPERATIONS
                    .iter()
                    .any(|t| t.eq_ignore_ascii_case(target))
            });
            if client_target && f.error.is_some() {
                return Err(invalid(
                    "has `error` (a SQL Server error) on a client web service operation: give \
                     `client_error`, the ErrorCode that service answers with"
                        .into(),
                ));
            }
            if f.client_error.is_some() && !client_target {
                return Err(invalid(format!(
                    "has `client_error` without a client web service operation as its target \
                     ({})",
                    crate::wusp::OPERATIONS.join(", ")
                )));
            }
            if f.nth == Some(0) {
                return Err(invalid("has `nth: 0`: calls are counted from 1".into()));
            }
            match (&f.signature, &f.operation, &f.without) {
                (Some(object), None, Some(name)) => {
                    let known = crate::catalog::procedure(object)
                        .map(|(_, sig)| sig.iter().any(|p| p.name.eq_ignore_ascii_case(name)))
                        .or_else(|| {
                            crate::catalog::COLUMNS
                                .iter()
                                .find(|(o, _)| {
                                    o.eq_ignore_ascii_case(object.trim_start_matches("dbo."))
                                })
                                .map(|(_, columns)| {
                                    columns.iter().any(|c| c.eq_ignore_ascii_case(name))
                                })
                        });
                    match known {
                        None => {
                            return Err(invalid(format!(
                                "alters `{object}`, which is not in the lab's catalog"
                            )));
                        }
                        Some(false) => {
                            return Err(invalid(format!(
                                "removes `{name}`, which `{object}` does not have"
                            )));
                        }
                        Some(true) => {}
                    }
                }
                (None, Some(operation), without) => {
                    let Some(params) = crate::api::wsdl::parameters(operation) else {
                        return Err(invalid(format!(
                            "removes `{operation}`, which the lab's web service does not serve ({})",
                            crate::api::wsdl::OPERATIONS.join(", ")
                        )));
                    };
                    if let Some(name) = without
                        && !params.iter().any(|p| p == name)
                    {
                        return Err(invalid(format!(
                            "removes `{name}`, which `{operation}` does not have ({})",
                            params.join(", ")
                        )));
                    }
                }
                (None, None, None) => {}
                _ => {
                    return Err(invalid(
                        "needs `signature` (a procedure, table or view) and `without`, or \
                         `operation` with or without `without`"
                            .into(),
                    ));
                }
            }
            let does_something = f.unreachable
                || f.signature.is_some()
                || f.operation.is_some()
                || f.licence.is_some()
                || f.expired
                || f.latency_ms.is_some_and(|ms| ms > 0)
                || f.drop.is_some()
                || f.error.is_some()
                || f.client_error.is_some();
            if !does_something {
                return Err(invalid(
                    "does nothing: give `latency_ms`, `drop`, `error`, `client_error`, \
                     `unreachable`, `signature`, `operation`, `licence` or `expired`"
                        .into(),
                ));
            }
        }
        Ok(())
    }

    pub fn unreachable(&self, server: &str) -> bool {
        self.faults
            .iter()
            .any(|f| f.unreachable && matches(f.server.as_deref(), server))
    }

    /// Whether `operation` is absent from `server`'s web service.
    pub fn operation_removed(&self, server: &str, operation: &str) -> bool {
        self.faults.iter().any(|f| {
            f.without.is_none()
                && f.signature.is_none()
                && matches(f.server.as_deref(), server)
                && f.operation
                    .as_deref()
                    .is_some_and(|o| o.eq_ignore_ascii_case(operation))
        })
    }

    /// The parameters of web-service `operation` that faults remove on `server`.
    pub fn parameters_removed(&self, server: &str, operation: &str) -> Vec<String> {
        self.faults
            .iter()
            .filter(|f| matches(f.server.as_deref(), server))
            .filter(|f| {
                f.operation
                    .as_deref()
                    .is_some_and(|o| o.eq_ignore_ascii_case(operation))
            })
            .filter_map(|f| f.without.clone())
            .collect()
    }

    /// Whether the update's licence on `server` was never accepted.
    pub fn licence_not_accepted(&self, server: &str) -> bool {
        self.faults
            .iter()
            .any(|f| f.licence.is_some() && matches(f.server.as_deref(), server))
    }

    /// Whether the update is expired on `server`.
    pub fn expired(&self, server: &str) -> bool {
        self.faults
            .iter()
            .any(|f| f.expired && matches(f.server.as_deref(), server))
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
        for ((server, target), n) in &self.calls {
            if target != "login" {
                *out.entry(server.clone()).or_default() += n;
            }
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
                || f.operation.is_some()
                || f.licence.is_some()
                || f.expired
                || !matches(f.server.as_deref(), server)
                || !matches(f.target.as_deref(), target)
                || f.nth.is_some_and(|nth| nth != n)
            {
                continue;
            }
            action.latency += Duration::from_millis(f.latency_ms.unwrap_or(0));
            action.drop = action.drop.or(f.drop);
            action.error = action.error.or(f.error);
            action.client_error = action.client_error.or(f.client_error);
        }
        action
    }
}

/// An injected SQL Server error's severity and text: SQL Server's own words for 1205 (deadlock
/// victim) and -2 (timeout), which a web service passes on inside its fault.
pub(crate) fn injected_error(number: i32) -> (u8, &'static str) {
    match number {
        1205 => (
            13,
            "Transaction (Process ID 57) was deadlocked on lock resources with another process and has been chosen as the deadlock victim. Rerun the transaction.",
        ),
        -2 => (
            11,
            "Timeout expired. The timeout period elapsed prior to completion of the operation or the server is not responding.",
        ),
        _ => (16, "Injected error."),
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

    #[test]
    fn a_fault_that_would_inject_nothing_or_miss_is_refused_naming_it() {
        let check = |yaml: &str| {
            serde_yaml::from_str::<Faults>(yaml)
                .unwrap()
                .validate("f.yaml", &["hq", "emea"])
                .map_err(|e| e.to_string())
        };
        assert_eq!(
            check("faults:\n  - { server: emea, target: probe, error: 1205 }\n"),
            Ok(())
        );
        let e = check("faults:\n  - { server: nowhere, drop: after }\n").unwrap_err();
        assert!(e.contains("fault 1 names server `nowhere`"), "{e}");
        let e = check("faults:\n  - { error: 1205 }\n  - { target: spDeploy, error: 1 }\n")
            .unwrap_err();
        assert!(e.contains("fault 2 has target `spDeploy`"), "{e}");
        let e = check("faults:\n  - { target: probe, nth: 0, error: 1 }\n").unwrap_err();
        assert!(e.contains("nth: 0"), "{e}");
        let e = check("faults:\n  - { server: hq, target: probe }\n").unwrap_err();
        assert!(e.contains("does nothing"), "{e}");
        let e =
            check("faults:\n  - { signature: spDeployUpdate, without: \"@nope\" }\n").unwrap_err();
        assert!(e.contains("does not have"), "{e}");
        assert_eq!(
            check("faults:\n  - { server: hq, target: login, latency_ms: 5 }\n"),
            Ok(())
        );
        assert_eq!(
            check("faults:\n  - { target: SyncUpdates, nth: 2, client_error: CookieExpired }\n"),
            Ok(())
        );
        let e = check("faults:\n  - { target: probe, client_error: CookieExpired }\n").unwrap_err();
        assert!(
            e.contains("`client_error` without a client web service"),
            "{e}"
        );
        let e = check("faults:\n  - { target: GetCookie, error: 1205 }\n").unwrap_err();
        assert!(e.contains("give `client_error`"), "{e}");
        assert!(
            serde_yaml::from_str::<Faults>("faults:\n  - { client_error: Tired }\n").is_err(),
            "an ErrorCode the lab does not throw"
        );
    }
}
