//! `verify FILE`: the read-only proof, and with `--client` the clients' side of it.

use workflows::scan::probes::{Probe, Probes};
use workflows::scan::{ClientCheck, Identity, Removal};

use super::*;
use crate::cli::ClientArgs;

/// What `--client` found: each server's check, and the records of earlier runs it removed (or
/// could not).
pub(crate) struct Clients {
    identity: Identity,
    checks: Vec<ClientCheck>,
    leftovers: Vec<(Probe, Removal)>,
}

impl Clients {
    pub(crate) fn ok(&self) -> bool {
        let removed = |r: &Removal| !matches!(r, Removal::Left { .. });
        self.checks
            .iter()
            .all(|c| c.verdict.ok() && c.removal.as_ref().is_none_or(removed))
            && self.leftovers.iter().all(|(_, r)| removed(r))
    }
}

/// `verify`: the survey, judged; with `--client`, a synthetic client's scan of each server.
pub(crate) fn run(
    file: &Path,
    select_args: SelectArgs,
    conn: &ConnArgs,
    json: bool,
    client: &ClientArgs,
    out: &mut impl Write,
) -> Result<u8, Failure> {
    let topology = Topology::load(file)?;
    // Read-only: order does not matter, so a server may be verified without its upstream.
    let selection = select(
        &topology,
        SelectArgs {
            allow_partial: true,
            ..select_args
        },
    )?;
    let options = connect_for(&topology, &selection, conn)?;
    let rt = runtime()?;
    let surveyed = rt.block_on(survey(&topology, &selection, &options, conn.probe_parallel));
    let clients = if client.client {
        Some(scan_clients(
            &topology, &selection, conn, &options, client, &rt,
        )?)
    } else {
        None
    };
    let text = if json {
        let mut entries = serde_json::to_value(&surveyed)
            .map_err(|e| Failure::BadInput(format!("error: {e}")))?;
        if let (Some(clients), Some(entries)) = (&clients, entries.as_array_mut()) {
            for entry in entries {
                let name = entry["server"].as_str().unwrap_or_default().to_string();
                let check = clients.checks.iter().find(|c| c.server == name);
                let leftovers: Vec<serde_json::Value> = clients
                    .leftovers
                    .iter()
                    .filter(|(p, _)| p.server == name)
                    .map(|(p, r)| serde_json::json!({ "probe": p, "removal": r }))
                    .collect();
                entry["client"] = serde_json::json!({
                    "dns_name": clients.identity.dns_name,
                    "client_id": clients.identity.client_id,
                    "check": check,
                    "leftovers": leftovers,
                });
            }
        }
        let mut text = serde_json::to_string_pretty(&entries)
            .map_err(|e| Failure::BadInput(format!("error: {e}")))?;
        text.push('\n');
        text
    } else {
        let mut text = report::survey_table(&surveyed);
        if let Some(clients) = &clients {
            text.push_str(&client_table(clients));
        }
        text
    };
    crate::emit(out, &text)?;
    let ok = surveyed.iter().all(|s| s.ok) && clients.as_ref().is_none_or(Clients::ok);
    Ok(if ok { exit::OK } else { exit::FAILED })
}

/// `--client`: the records earlier runs left removed first, then every selected server scanned
/// and its record removed, at most `--probe-parallel` at once.
fn scan_clients(
    topology: &Topology,
    selection: &Selection,
    conn: &ConnArgs,
    options: &ConnectOptions,
    args: &ClientArgs,
    rt: &tokio::runtime::Runtime,
) -> Result<Clients, Failure> {
    let scanned = selection
        .servers
        .iter()
        .filter(|&&id| topology.server(id).api.is_some())
        .count();
    // The scan goes to each server's web site whatever its transport: a lab for SQL alone would
    // send it to production.
    if conn.connect_via.is_some() && conn.api_via.is_none() && scanned > 0 {
        return Err(Failure::BadInput(format!(
            "error: --client scans the web site of {scanned} server(s), and --connect-via sends \
             only SQL to a lab: add --api-via ADDR (the lab's web-service listener), or the \
             scan would reach the servers' own web sites"
        )));
    }
    run_clients(
        topology,
        selection,
        options,
        args.client_group.clone(),
        &args.state_dir,
        conn.probe_parallel,
        rt,
    )
}

/// The client checks of `selection` (what `verify --client` and `rehearse` run), the probes kept
/// in `state_dir`.
pub(crate) fn run_clients(
    topology: &Topology,
    selection: &Selection,
    options: &ConnectOptions,
    group: Option<String>,
    state_dir: &Path,
    parallel: usize,
    rt: &tokio::runtime::Runtime,
) -> Result<Clients, Failure> {
    let servers: Vec<&topology::Server> = selection
        .servers
        .iter()
        .map(|&id| topology.server(id))
        .collect();
    let scanned = servers.iter().filter(|s| s.api.is_some()).count();
    let probes = Probes::open(state_dir).map_err(|e| Failure::BadInput(format!("error: {e}")))?;
    let identity = Identity::fresh(group);
    let group = identity
        .group
        .as_deref()
        .map_or("Unassigned Computers".to_string(), |g| format!("group {g}"));
    // Said before anything is sent: what the scan leaves, and where it is recorded meanwhile.
    let _ = writeln!(
        std::io::stderr(),
        "verify --client: scanning {scanned} server(s) as computer {} (client ID {}, in All \
         Computers and {group}); each record is deleted after its scan and, until then, listed \
         in {}. No events are reported.",
        identity.dns_name,
        identity.client_id,
        state_dir.join(Probes::FILE).display()
    );
    let leftovers = rt.block_on(workflows::scan::remove_leftovers(
        &servers, &probes, options,
    ));
    let checks = rt.block_on(workflows::scan::check_all(
        &servers, &identity, &probes, options, parallel,
    ));
    Ok(Clients {
        identity,
        checks,
        leftovers,
    })
}

pub(crate) fn client_table(clients: &Clients) -> String {
    let width = clients
        .checks
        .iter()
        .map(|c| c.server.len())
        .max()
        .unwrap_or(6)
        .max(6);
    let mut out = format!(
        "\nClient scans as {} (client ID {}):\n{:<width$}  {:<3}  SCAN\n",
        clients.identity.dns_name, clients.identity.client_id, "SERVER", "OK"
    );
    let probe = |server: &str| Probe {
        server: server.to_string(),
        client_id: clients.identity.client_id.clone(),
        dns_name: clients.identity.dns_name.clone(),
        since: String::new(),
        left: None,
    };
    for check in &clients.checks {
        let mut line = check.describe.clone();
        if let Some(removal) = &check.removal {
            line.push_str("; ");
            line.push_str(&removal.describe(&probe(&check.server)));
        }
        let ok = check.verdict.ok() && !matches!(check.removal, Some(Removal::Left { .. }));
        out.push_str(&format!(
            "{:<width$}  {:<3}  {line}\n",
            check.server,
            if ok { "yes" } else { "NO" }
        ));
    }
    for (probe, removal) in &clients.leftovers {
        out.push_str(&format!(
            "left by the run of {} on {}: {}\n",
            probe.since,
            probe.server,
            removal.describe(probe)
        ));
    }
    out
}
