//! The read-only survey: the probe on many servers at once, bounded, for `plan --online` and
//! `verify`, over each server's transport. It sends nothing but the probe (and its pre-flight
//! reads).

use futures_util::stream::{self, StreamExt};
use serde::Serialize;
use topology::{Selection, Topology};

use crate::reach::{self, ConnectOptions, Observed, ServerError, WsusServer};
use crate::repair::{Verdict, mismatches};

/// One server as the survey found it.
#[derive(Debug, Clone, Serialize)]
pub struct Surveyed {
    pub server: String,
    /// What the probe read; `None` when the server could not be read (see `error`).
    pub observed: Option<Observed>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Where the server disagrees with the topology.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mismatches: Vec<String>,
    /// The verdict in words: `update not present`, `declined and consistent`, `BROKEN: ...`.
    pub verdict: String,
    /// Declined and consistent (or without the update), and as the topology declares it.
    pub ok: bool,
    /// The repair would change this server.
    pub needs_repair: bool,
    /// Whether it still needs the KB's hotfix or SP2, from the version it reports.
    pub hotfix: crate::hotfix::Advice,
}

/// Probes every selected server, at most `parallel` at once; the answer is in selection order.
pub async fn survey(
    topology: &Topology,
    selection: &Selection,
    options: &ConnectOptions,
    parallel: usize,
) -> Vec<Surveyed> {
    let update = topology.update().to_string();
    let jobs = selection.servers.iter().map(|&id| {
        let server = topology.server(id).clone();
        let update = update.clone();
        async move {
            let read = async {
                let mut c = reach::open(&server, options).await?;
                let limit = options.command_timeout;
                let differences = tokio::time::timeout(limit, c.refusals())
                    .await
                    .map_err(|_| ServerError::timeout("the pre-flight read", limit))??;
                if !differences.is_empty() {
                    return Ok(Err(differences));
                }
                let observed = tokio::time::timeout(limit, c.probe(&update))
                    .await
                    .map_err(|_| ServerError::timeout("the probe", limit))??;
                Ok::<_, ServerError>(Ok(observed))
            };
            match read.await {
                // Signatures that differ: the probe is not even tried (it may not compile there).
                Ok(Err(differences)) => Surveyed {
                    hotfix: crate::hotfix::advice(None),
                    server: server.name,
                    observed: None,
                    error: None,
                    mismatches: differences,
                    verdict: "SCHEMA DIFFERS".into(),
                    ok: false,
                    needs_repair: false,
                },
                Ok(Ok(observed)) => {
                    let wrong = mismatches(&server, &observed, false);
                    let verdict = Verdict::of(&observed);
                    let needs_repair = matches!(verdict, Verdict::NeedsRepair(_));
                    Surveyed {
                        hotfix: crate::hotfix::advice(observed.wsus_version.as_deref()),
                        server: server.name,
                        ok: wrong.is_empty() && !needs_repair,
                        needs_repair,
                        verdict: Verdict::describe(&observed),
                        mismatches: wrong,
                        error: None,
                        observed: Some(observed),
                    }
                }
                Err(e) => Surveyed {
                    hotfix: crate::hotfix::advice(None),
                    server: server.name,
                    observed: None,
                    error: Some(e.message),
                    mismatches: Vec::new(),
                    verdict: "UNREACHABLE".into(),
                    ok: false,
                    needs_repair: false,
                },
            }
        }
    });
    stream::iter(jobs)
        .buffered(parallel.max(1))
        .collect::<Vec<_>>()
        .await
}
