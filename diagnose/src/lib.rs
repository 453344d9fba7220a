//! `diagnose`: finds the KB 954960 fault in client logs (WindowsUpdate.log) and WSUS server logs
//! (SoftwareDistribution.log), ties each client failure to its server through the SOAP fault ID
//! both sides log, and gives each WSUS server a verdict.
//!
//! A tour: [`input`] finds the files and reads any of them as lines (gzip, UTF-16 with a BOM,
//! ANSI, CRLF), keeping only lines that hold a marker; [`client`] and [`server`] turn those lines
//! into failures and faults; [`Diagnosis::correlate`] joins them; [`Diagnosis::render_text`] and
//! friends print them. Files are read in parallel, each as a stream: memory does not grow with
//! the size or number of files, only with the number of faults found.

pub mod client;
pub mod input;
pub mod server;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::io::BufRead;
use std::path::PathBuf;

use rayon::prelude::*;
use serde::Serialize;

pub use client::ClientLog;
pub use input::Skipped;
pub use server::ServerLog;

/// Scans one client log.
pub fn scan_client(name: String, reader: impl BufRead) -> std::io::Result<ClientLog> {
    let mut scanner = client::Scanner::new(name);
    input::for_each_matching_line(reader, &input::Markers::new(client::MARKERS), |line| {
        scanner.line(line)
    })?;
    Ok(scanner.finish())
}

/// Scans one server log.
pub fn scan_server(name: String, reader: impl BufRead) -> std::io::Result<ServerLog> {
    let mut scanner = server::Scanner::new(name);
    input::for_each_matching_line(reader, &input::Markers::new(server::MARKERS), |line| {
        scanner.line(line)
    })?;
    Ok(scanner.finish())
}

/// The command that repairs broken servers: `plan --online` to review, then `apply`, over the tree
/// of each top server in `tops` (or the whole hierarchy). `apply` leaves consistent servers
/// alone, so walking a broken server's whole tree from its top is both safe and top-down.
pub fn repair_command(topology: Option<&str>, tops: &[String]) -> String {
    let file = topology.unwrap_or("<topology.yaml>");
    let only: String = tops.iter().map(|t| format!(" --only {t}")).collect();
    let downstream = if tops.is_empty() {
        ""
    } else {
        " --with-downstream"
    };
    format!(
        "wsus-reset plan {file} --online{only}{downstream} && wsus-reset apply {file}{only}{downstream}"
    )
}

/// The verdict on one WSUS server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Its log shows the ArgumentException in GetSyncInfo (for its clients' fault IDs, or at all).
    Broken,
    /// Its clients fail with 0x8024400E, but no log of it was given.
    Suspect,
    /// Its clients fail with 0x8024400E, and its log shows another cause.
    OtherCause,
    Clean,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Broken => "broken",
            Verdict::Suspect => "suspect",
            Verdict::OtherCause => "other cause",
            Verdict::Clean => "clean",
        }
    }
}

/// One client's part in a server's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AffectedClient {
    pub client: String,
    pub failures: usize,
    pub first: String,
    pub last: String,
    pub fault_ids: Vec<String>,
    /// Fault IDs the server log shows as the KB 954960 fault.
    pub confirmed_ids: usize,
    pub recovered: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServerVerdict {
    /// The host of the server URL clients use, or the server log's name.
    pub server: String,
    pub verdict: Verdict,
    pub clients: Vec<AffectedClient>,
    /// The server logs read for it.
    pub logs: Vec<String>,
    pub kb954960_faults: usize,
    pub other_faults: usize,
    pub keys: Vec<String>,
    /// First and last KB 954960 fault in its log (UTC).
    pub first: Option<String>,
    pub last: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Diagnosis {
    pub client_logs: usize,
    pub server_logs: usize,
    pub skipped: Vec<Skipped>,
    pub servers: Vec<ServerVerdict>,
}

/// The host part of a URL or name, lower case, without port or domain:
/// `http://WSUS-A.corp:8530/ClientWebService/client.asmx` is `wsus-a`.
pub fn host_key(url_or_name: &str) -> String {
    let rest = url_or_name
        .split_once("://")
        .map_or(url_or_name, |(_, r)| r);
    let host = rest.split(['/', ':']).next().unwrap_or(rest);
    host.split('.').next().unwrap_or(host).to_ascii_lowercase()
}

fn read_all<T: Send>(
    files: &[PathBuf],
    scan: impl Fn(String, Box<dyn BufRead + Send>) -> std::io::Result<T> + Sync,
) -> (Vec<T>, Vec<Skipped>) {
    let results: Vec<Result<T, Skipped>> = files
        .par_iter()
        .map(|path| {
            let name = input::name_from_path(path);
            input::open(path)
                .and_then(|reader| scan(name, reader))
                .map_err(|e| Skipped {
                    path: path.clone(),
                    reason: e.to_string(),
                    matched_nothing: false,
                })
        })
        .collect();
    let mut ok = Vec::new();
    let mut skipped = Vec::new();
    for r in results {
        match r {
            Ok(v) => ok.push(v),
            Err(s) => skipped.push(s),
        }
    }
    (ok, skipped)
}

impl Diagnosis {
    /// Reads every log (files, directories, globs) and correlates them.
    pub fn run(client_paths: &[PathBuf], server_paths: &[PathBuf]) -> Diagnosis {
        let (client_files, mut skipped) = input::expand(client_paths);
        let (server_files, more) = input::expand(server_paths);
        skipped.extend(more);
        let (clients, more) = read_all(&client_files, scan_client);
        skipped.extend(more);
        let (servers, more) = read_all(&server_files, scan_server);
        skipped.extend(more);
        let mut d = Diagnosis::correlate(&clients, &servers);
        d.skipped = skipped;
        d
    }

    /// Joins client failures and server faults into a verdict per WSUS server.
    pub fn correlate(clients: &[ClientLog], servers: &[ServerLog]) -> Diagnosis {
        // Each server log stands for the hosts in its actors, or else for its own name.
        let mut logs_of: BTreeMap<String, Vec<&ServerLog>> = BTreeMap::new();
        let mut fault_by_id: HashMap<&str, &server::Fault> = HashMap::new();
        for log in servers {
            let mut hosts: BTreeSet<String> =
                log.faults.iter().map(|f| host_key(&f.actor)).collect();
            if hosts.is_empty() {
                hosts.insert(host_key(&log.name));
            }
            for host in hosts {
                logs_of.entry(host).or_default().push(log);
            }
            for f in &log.faults {
                fault_by_id.insert(&f.id, f);
            }
        }
        // Client failures by the host they talk to.
        let mut clients_of: BTreeMap<String, Vec<AffectedClient>> = BTreeMap::new();
        for c in clients {
            let mut by_host: BTreeMap<String, Vec<&client::Failure>> = BTreeMap::new();
            for f in &c.failures {
                let host = f
                    .server_url
                    .as_deref()
                    .map_or_else(|| "(unknown server)".to_string(), host_key);
                by_host.entry(host).or_default().push(f);
            }
            for (host, failures) in by_host {
                let fault_ids: Vec<String> = failures.iter().filter_map(|f| f.id.clone()).collect();
                let confirmed_ids = fault_ids
                    .iter()
                    .filter(|id| {
                        fault_by_id
                            .get(id.as_str())
                            .is_some_and(|f| f.is_kb954960())
                    })
                    .count();
                clients_of.entry(host).or_default().push(AffectedClient {
                    client: c.client.clone(),
                    failures: failures.len(),
                    first: failures
                        .iter()
                        .map(|f| f.time.clone())
                        .min()
                        .unwrap_or_default(),
                    last: failures
                        .iter()
                        .map(|f| f.time.clone())
                        .max()
                        .unwrap_or_default(),
                    fault_ids,
                    confirmed_ids,
                    recovered: c.recovered,
                });
            }
        }
        let hosts: BTreeSet<&String> = logs_of.keys().chain(clients_of.keys()).collect();
        let mut verdicts: Vec<ServerVerdict> = hosts
            .into_iter()
            .map(|host| {
                let logs = logs_of.get(host).cloned().unwrap_or_default();
                let affected = clients_of.get(host).cloned().unwrap_or_default();
                let faults = logs.iter().flat_map(|l| &l.faults);
                let kb954960_faults = faults.clone().filter(|f| f.is_kb954960()).count();
                let other_faults = faults.clone().filter(|f| !f.is_kb954960()).count();
                let dictionary_errors: usize = logs.iter().map(|l| l.dictionary_errors).sum();
                let confirmed: usize = affected.iter().map(|c| c.confirmed_ids).sum();
                let verdict = if confirmed > 0 || dictionary_errors > 0 {
                    Verdict::Broken
                } else if affected.is_empty() {
                    Verdict::Clean
                } else if logs.is_empty() {
                    Verdict::Suspect
                } else {
                    Verdict::OtherCause
                };
                ServerVerdict {
                    server: host.clone(),
                    verdict,
                    clients: affected,
                    logs: logs.iter().map(|l| l.name.clone()).collect(),
                    kb954960_faults,
                    other_faults,
                    keys: logs
                        .iter()
                        .flat_map(|l| l.keys.iter().cloned())
                        .collect::<BTreeSet<_>>()
                        .into_iter()
                        .collect(),
                    first: logs.iter().filter_map(|l| l.first.clone()).min(),
                    last: logs.iter().filter_map(|l| l.last.clone()).max(),
                }
            })
            .collect();
        verdicts.sort_by(|a, b| a.verdict.cmp(&b.verdict).then(a.server.cmp(&b.server)));
        Diagnosis {
            client_logs: clients.len(),
            server_logs: servers.len(),
            skipped: Vec::new(),
            servers: verdicts,
        }
    }

    pub fn broken(&self) -> Vec<&str> {
        self.servers
            .iter()
            .filter(|s| s.verdict == Verdict::Broken)
            .map(|s| s.server.as_str())
            .collect()
    }

    /// Whether anything is broken or suspect (exit 1).
    pub fn alarming(&self) -> bool {
        self.servers
            .iter()
            .any(|s| matches!(s.verdict, Verdict::Broken | Verdict::Suspect))
    }

    pub fn render_text(&self, command: Option<&str>) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Read {} client logs and {} server logs.",
            self.client_logs, self.server_logs
        );
        for s in &self.skipped {
            let _ = writeln!(out, "skipped {}: {}", s.path.display(), s.reason);
        }
        for v in &self.servers {
            let _ = writeln!(out, "\n{}: {}", v.server, v.verdict.as_str().to_uppercase());
            if !v.logs.is_empty() {
                let _ = writeln!(
                    out,
                    "  server log {}: {} KB 954960 faults{}{}, {} other faults",
                    v.logs.join(", "),
                    v.kb954960_faults,
                    if v.keys.is_empty() {
                        String::new()
                    } else {
                        format!(" (dictionary keys {})", v.keys.join(", "))
                    },
                    match (&v.first, &v.last) {
                        (Some(f), Some(l)) => format!(", {f} to {l} UTC"),
                        _ => String::new(),
                    },
                    v.other_faults
                );
            }
            for c in &v.clients {
                let _ = writeln!(
                    out,
                    "  client {}: 0x8024400E {} time(s), {} (local time), {} confirmed by the server log{}",
                    c.client,
                    c.failures,
                    if c.first == c.last {
                        c.first.clone()
                    } else {
                        format!("{} to {}", c.first, c.last)
                    },
                    c.confirmed_ids,
                    if c.recovered {
                        "; a later detection succeeded"
                    } else {
                        ""
                    }
                );
            }
        }
        let broken = self.broken();
        let suspect = self
            .servers
            .iter()
            .filter(|s| s.verdict == Verdict::Suspect)
            .count();
        let _ = writeln!(
            out,
            "\n{} broken, {suspect} suspect, {} other cause, {} clean.",
            broken.len(),
            self.servers
                .iter()
                .filter(|s| s.verdict == Verdict::OtherCause)
                .count(),
            self.servers
                .iter()
                .filter(|s| s.verdict == Verdict::Clean)
                .count(),
        );
        if let Some(command) = command {
            let _ = writeln!(
                out,
                "Repair the broken servers (top-down) with:\n  {command}"
            );
        }
        if suspect > 0 {
            let _ = writeln!(
                out,
                "For a suspect server, add its SoftwareDistribution.log (--server-log) to confirm."
            );
        }
        out
    }

    pub fn render_markdown(&self, command: Option<&str>) -> String {
        let mut out = String::from("# KB 954960 diagnosis\n\n");
        let _ = writeln!(
            out,
            "{} client logs, {} server logs read.\n\n| Server | Verdict | Affected clients | KB 954960 faults in its log | Keys |\n|---|---|---|---|---|",
            self.client_logs, self.server_logs
        );
        for v in &self.servers {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} |",
                v.server,
                v.verdict.as_str(),
                v.clients
                    .iter()
                    .map(|c| c.client.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                v.kb954960_faults,
                v.keys.join(", ")
            );
        }
        if let Some(command) = command {
            let _ = writeln!(out, "\nRepair:\n\n```sh\n{command}\n```");
        }
        if !self.skipped.is_empty() {
            let _ = writeln!(out, "\nSkipped files:\n");
            for s in &self.skipped {
                let _ = writeln!(out, "- `{}`: {}", s.path.display(), s.reason);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_compared_by_their_first_label_without_port() {
        assert_eq!(
            host_key("http://WSUS-A.corp.example:8530/ClientWebService/client.asmx"),
            "wsus-a"
        );
        assert_eq!(host_key("wsus-a"), "wsus-a");
    }
}
