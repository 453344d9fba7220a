//! `diagnose`: the fault's evidence in client and server logs, and in SUSDB with a topology.

use super::*;

/// What SUSDB says of one server, beside the log evidence.
#[derive(Debug, serde::Serialize)]
struct DbEvidence {
    server: String,
    /// The host name the logs use for it.
    host: String,
    state: String,
    needs_repair: bool,
    /// Each logged dictionary key, and which objects carry it as their ID on this server.
    keys: Vec<(String, Vec<String>)>,
}

/// Which objects of `server` carry each logged dictionary key as their ID, over one connection.
async fn place_keys(
    server: &topology::Server,
    options: &ConnectOptions,
    logged: &[String],
) -> Vec<(String, Vec<String>)> {
    if server.transport == topology::Transport::Api {
        // The keys are SUSDB's local IDs, which no web-service operation exposes.
        let why =
            "not asked: reached through its web service, which does not expose SUSDB's local IDs";
        return logged
            .iter()
            .map(|k| (k.clone(), vec![why.to_string()]))
            .collect();
    }
    let mut connection = workflows::reach::sql::connect(server, options).await;
    let mut keys = Vec::new();
    for key in logged {
        let objects = match (key.parse::<i32>(), &mut connection) {
            (Err(_), _) => vec!["not a number".to_string()],
            (Ok(number), Ok(c)) => workflows::reach::sql::key_objects(c, number)
                .await
                .unwrap_or_else(|e| vec![format!("cannot ask: {}", e.message)]),
            (Ok(_), Err(e)) => vec![format!("cannot ask: {}", e.message)],
        };
        keys.push((key.clone(), objects));
    }
    keys
}

/// The synthetic client's scans in `path` (`verify --client --format json`), one client per server
/// scanned, each fault (the retry's and the first) a failure with its ID.
fn scanned_clients(path: &Path) -> Result<Vec<::diagnose::ClientLog>, Failure> {
    use ::diagnose::client::Failure as Logged;
    let bad = |why: String| {
        Failure::BadInput(format!(
            "error: --client-scan {}: {why}: give the output of `verify --client --format json`",
            path.display()
        ))
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let entries: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("not JSON ({e})")))?;
    let entries = entries.as_array().ok_or_else(|| bad("not a list".into()))?;
    let mut clients = Vec::new();
    for entry in entries {
        let client = &entry["client"];
        let check = &client["check"];
        if check.is_null() {
            return Err(bad("a server without `client` (was --client given?)".into()));
        }
        let failures = ["first_fault", "fault"]
            .iter()
            .filter_map(|key| check.get(*key).filter(|f| f.is_object()))
            .map(|f| Logged {
                time: check["time"].as_str().unwrap_or_default().to_string(),
                server_url: check["url"].as_str().map(str::to_string),
                id: f["id"].as_str().map(str::to_string),
                error_code: f["error_code"].as_str().map(str::to_string),
            })
            .collect();
        clients.push(::diagnose::ClientLog {
            client: format!(
                "{} (verify --client, {})",
                client["dns_name"].as_str().unwrap_or_default(),
                entry["server"].as_str().unwrap_or_default()
            ),
            failures,
            recovered: check["verdict"] == "can-scan",
        });
    }
    Ok(clients)
}

/// `diagnose`: the logs, and with a topology the databases, side by side.
pub(crate) fn run(
    client_logs: &[PathBuf],
    server_logs: &[PathBuf],
    client_scans: &[PathBuf],
    topology_file: Option<&Path>,
    format: crate::cli::PlanFormat,
    conn: &ConnArgs,
    out: &mut impl Write,
) -> Result<u8, Failure> {
    use crate::cli::PlanFormat;
    use ::diagnose::{Diagnosis, host_key, names_host};

    if client_logs.is_empty()
        && server_logs.is_empty()
        && client_scans.is_empty()
        && topology_file.is_none()
    {
        return Err(Failure::BadInput(
            "error: nothing to diagnose: give --client-log PATH, --server-log PATH, --client-scan FILE and/or --topology FILE".into(),
        ));
    }
    let topology = topology_file.map(Topology::load).transpose()?;
    let scans = client_scans
        .iter()
        .map(|path| scanned_clients(path))
        .collect::<Result<Vec<_>, Failure>>()?
        .into_iter()
        .flatten()
        .collect();
    let diagnosis = Diagnosis::run_with(client_logs, server_logs, scans);
    // A log path that matches nothing is a typo, not "no evidence": refuse it, naming it.
    let unmatched: Vec<String> = diagnosis
        .skipped
        .iter()
        .filter(|s| s.matched_nothing)
        .map(|s| s.path.display().to_string())
        .collect();
    if !unmatched.is_empty() {
        return Err(Failure::BadInput(format!(
            "error: no log file matches {}: check the path (a file, a directory, or a quoted glob)",
            unmatched.join(", ")
        )));
    }
    let logs_given = !client_logs.is_empty() || !server_logs.is_empty() || !client_scans.is_empty();
    if logs_given && diagnosis.client_logs + diagnosis.server_logs == 0 {
        let why: Vec<String> = diagnosis
            .skipped
            .iter()
            .map(|s| format!("{}: {}", s.path.display(), s.reason))
            .collect();
        return Err(Failure::BadInput(format!(
            "error: no log could be read ({})",
            why.join("; ")
        )));
    }
    let mut evidence = Vec::new();
    // The top of each broken server's tree: repairing those trees is top-down, and `apply` leaves
    // the consistent servers in them alone.
    let mut tops = std::collections::BTreeSet::new();
    let mut any_broken = false;
    if let Some(topology) = &topology {
        let selection = select_all(topology)?;
        let top_of = tops_of(topology, &selection);
        let options = connect_for(topology, &selection, conn)?;
        let rt = runtime()?;
        let surveyed = rt.block_on(survey(topology, &selection, &options, conn.probe_parallel));
        for (found, &id) in surveyed.iter().zip(&selection.servers) {
            let server = topology.server(id);
            // The logs name a server by the host its clients use: the WSUS server's name, or
            // (where WSUS and its SQL Server share a machine) the SQL host, or its web service's.
            let aliases: Vec<&str> = std::iter::once(server.name.as_str())
                .chain(server.sql.as_ref().and_then(|sql| sql.host.as_deref()))
                .chain(server.api.as_ref().map(|api| api.host.as_str()))
                .collect();
            let logged = diagnosis
                .servers
                .iter()
                .find(|v| aliases.iter().any(|a| names_host(a, &v.server)));
            let logged_keys = logged.map(|v| v.keys.as_slice()).unwrap_or_default();
            let keys = if logged_keys.is_empty() {
                Vec::new()
            } else {
                rt.block_on(place_keys(server, &options, logged_keys))
            };
            let log_broken = logged.is_some_and(|v| v.verdict == ::diagnose::Verdict::Broken);
            if log_broken || found.needs_repair {
                any_broken = true;
                tops.extend(top_of.get(&server.name).cloned());
            }
            evidence.push(DbEvidence {
                server: server.name.clone(),
                host: logged.map_or_else(|| host_key(&server.name), |v| v.server.clone()),
                state: match &found.error {
                    Some(e) => format!("UNREACHABLE: {e}"),
                    None => found.verdict.clone(),
                },
                needs_repair: found.needs_repair,
                keys,
            });
        }
    }
    let file = topology_file.map(|p| p.display().to_string());
    let command = if topology.is_some() {
        let tops: Vec<String> = tops.into_iter().collect();
        any_broken.then(|| ::diagnose::repair_command(file.as_deref(), &tops))
    } else {
        (!diagnosis.broken().is_empty()).then(|| ::diagnose::repair_command(None, &[]))
    };
    let text = match format {
        PlanFormat::Json => {
            let mut text = serde_json::to_string_pretty(&serde_json::json!({
                "logs": diagnosis,
                "database": evidence,
                "repair_command": command,
            }))
            .map_err(|e| Failure::BadInput(format!("error: {e}")))?;
            text.push('\n');
            text
        }
        PlanFormat::Text | PlanFormat::Markdown => {
            let mut text = if format == PlanFormat::Text {
                diagnosis.render_text(command.as_deref())
            } else {
                diagnosis.render_markdown(command.as_deref())
            };
            if !evidence.is_empty() {
                text.push_str("\nDatabase evidence (read-only probe):\n");
                for e in &evidence {
                    text.push_str(&format!("  {}: {}\n", e.server, e.state));
                    for (key, objects) in &e.keys {
                        text.push_str(&format!(
                            "    logged key {key} is {} on this server\n",
                            if objects.is_empty() {
                                "no LocalUpdateID, RevisionID or DeploymentID".to_string()
                            } else {
                                objects.join(" and ")
                            }
                        ));
                    }
                }
            }
            text
        }
    };
    crate::emit(out, &text)?;
    let all_unreachable =
        !evidence.is_empty() && evidence.iter().all(|e| e.state.starts_with("UNREACHABLE"));
    if all_unreachable && !logs_given {
        return Err(Failure::Exit(
            exit::FAILED,
            "error: no server of the topology could be probed and no log was given: there is no evidence either way".into(),
        ));
    }
    Ok(
        if diagnosis.alarming() || evidence.iter().any(|e| e.needs_repair) {
            exit::FAILED
        } else {
            exit::OK
        },
    )
}
