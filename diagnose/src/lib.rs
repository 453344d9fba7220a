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
mod host;
pub mod input;
pub mod server;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::io::BufRead;
use std::path::PathBuf;

use rayon::prelude::*;
use serde::Serialize;

pub use client::ClientLog;
pub use host::host_key;
pub use input::Skipped;
pub use server::ServerLog;

/// Scans one client log, with the markers of its format (one search pass over the file per
/// marker, so a log is not searched for lines its Windows never writes).
pub fn scan_client(name: String, mut reader: impl BufRead) -> std::io::Result<ClientLog> {
    let mut scanner = client::Scanner::new(name);
    let markers = client::markers_for(reader.fill_buf()?);
    input::for_each_matching_line(reader, &input::Markers::new(markers), |line| {
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
    /// Clients failing with the fault whose log never named the server they talk to.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub server_unknown: Vec<AffectedClient>,
}

/// The host of a key without its port.
fn without_port(key: &str) -> &str {
    if key.starts_with('[') {
        return key.split_once(']').map_or(key, |(h, _)| &key[..=h.len()]);
    }
    key.rsplit_once(':')
        .filter(|(_, p)| p.chars().all(|c| c.is_ascii_digit()))
        .map_or(key, |(h, _)| h)
}

fn is_ip(host: &str) -> bool {
    host.starts_with('[') || host.parse::<std::net::IpAddr>().is_ok()
}

/// Whether a name (a server log's file or directory name, a topology's server name or host)
/// stands for the server of `key`: the same host, or a bare name (no dot) that is the host's
/// first label. Whether that short form is unambiguous is the caller's to judge.
pub fn names_host(name: &str, key: &str) -> bool {
    let name = host_key(name);
    let (name, host) = (without_port(&name), without_port(key));
    name == host || (!name.contains('.') && !is_ip(host) && host.split('.').next() == Some(name))
}

/// The shortest unambiguous way to show each key: the first label of a host name (without its
/// domain and port) when no other key shares it, the whole key otherwise (and always for an IP
/// address).
pub fn display_names(keys: &[&str]) -> Vec<String> {
    let first = |k: &str| {
        let host = without_port(k);
        host.split('.').next().unwrap_or(host).to_string()
    };
    keys.iter()
        .map(|k| {
            let short = first(k);
            let alone = keys.iter().filter(|other| first(other) == short).count() == 1;
            if !is_ip(without_port(k)) && alone {
                short
            } else {
                (*k).to_string()
            }
        })
        .collect()
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
        Self::run_with(client_paths, server_paths, Vec::new())
    }

    /// As [`Diagnosis::run`], with client evidence that is not a log file (a synthetic
    /// client's scans, `verify --client`).
    pub fn run_with(
        client_paths: &[PathBuf],
        server_paths: &[PathBuf],
        extra_clients: Vec<ClientLog>,
    ) -> Diagnosis {
        let (client_files, mut skipped) = input::expand(client_paths);
        let (server_files, more) = input::expand(server_paths);
        skipped.extend(more);
        let (mut clients, more) = read_all(&client_files, scan_client);
        clients.extend(extra_clients);
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
        // Client failures by the host they talk to; those whose log never named a server apart.
        let mut clients_of: BTreeMap<String, Vec<AffectedClient>> = BTreeMap::new();
        let mut server_unknown = Vec::new();
        for c in clients {
            let mut by_host: BTreeMap<Option<String>, Vec<&client::Failure>> = BTreeMap::new();
            for f in &c.failures {
                let host = f.server_url.as_deref().map(host_key);
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
                let affected = AffectedClient {
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
                };
                match host {
                    Some(host) => clients_of.entry(host).or_default().push(affected),
                    None => server_unknown.push(affected),
                }
            }
        }
        // A client that named its server by a bare name (`http://wsus-emea/`) talks to the one
        // host other clients name in full whose first label it is; with several, it stays apart.
        let bare: Vec<String> = clients_of
            .keys()
            .filter(|k| !k.contains('.') && !k.starts_with('['))
            .cloned()
            .collect();
        for key in bare {
            let full: Vec<&String> = clients_of
                .keys()
                .filter(|host| host.contains('.') && names_host(&key, host))
                .collect();
            if let [host] = full.as_slice() {
                let host = (*host).clone();
                let moved = clients_of.remove(&key).unwrap_or_default();
                clients_of.entry(host).or_default().extend(moved);
            }
        }
        // A server log named by a bare name (its file or directory) stands for the one host its
        // clients use whose first label it is; with several such hosts it stays apart.
        let log_keys: Vec<String> = logs_of.keys().cloned().collect();
        for key in log_keys {
            if clients_of.contains_key(&key) {
                continue;
            }
            let hosts: Vec<&String> = clients_of
                .keys()
                .filter(|host| names_host(&key, host))
                .collect();
            if let [host] = hosts.as_slice() {
                let host = (*host).clone();
                let moved = logs_of.remove(&key).unwrap_or_default();
                let logs = logs_of.entry(host).or_default();
                // A log whose actors name the host both ways is already there.
                for log in moved {
                    if !logs.iter().any(|l| std::ptr::eq(*l, log)) {
                        logs.push(log);
                    }
                }
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
            server_unknown,
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
        let names = self.display_names();
        for (v, name) in self.servers.iter().zip(&names) {
            let _ = writeln!(out, "\n{name}: {}", v.verdict.as_str().to_uppercase());
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
                client_line(&mut out, c);
            }
        }
        if !self.server_unknown.is_empty() {
            let _ = writeln!(
                out,
                "\nserver unknown (the client's log names no server before the failure):"
            );
            for c in &self.server_unknown {
                client_line(&mut out, c);
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

    /// Each server as shown: the first label of its host where that is unambiguous.
    fn display_names(&self) -> Vec<String> {
        let keys: Vec<&str> = self.servers.iter().map(|v| v.server.as_str()).collect();
        display_names(&keys)
    }

    pub fn render_markdown(&self, command: Option<&str>) -> String {
        let mut out = String::from("# KB 954960 diagnosis\n\n");
        let _ = writeln!(
            out,
            "{} client logs, {} server logs read.\n\n| Server | Verdict | Affected clients | KB 954960 faults in its log | Keys |\n|---|---|---|---|---|",
            self.client_logs, self.server_logs
        );
        let names = self.display_names();
        for (v, name) in self.servers.iter().zip(&names) {
            let _ = writeln!(
                out,
                "| {name} | {} | {} | {} | {} |",
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
        if !self.server_unknown.is_empty() {
            let _ = writeln!(
                out,
                "\nFailing against a server their logs do not name: {}",
                self.server_unknown
                    .iter()
                    .map(|c| c.client.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
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

fn client_line(out: &mut String, c: &AffectedClient) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_is_keyed_by_its_whole_host_and_a_port_that_is_not_the_default() {
        assert_eq!(
            host_key("http://WSUS-A.corp.example:8530/ClientWebService/client.asmx"),
            "wsus-a.corp.example:8530"
        );
        assert_eq!(
            host_key("https://wsus-a.corp.example:443/x"),
            "wsus-a.corp.example"
        );
        assert_eq!(
            host_key("http://192.168.178.143/ClientWebService/client.asmx"),
            "192.168.178.143"
        );
        assert_eq!(host_key("http://[fe80::1]:8530/x"), "[fe80::1]:8530");
        assert_eq!(host_key("wsus-a"), "wsus-a");
        // Two servers that share a first label stay two.
        assert_ne!(
            host_key("http://wsus.emea.contoso.com/x"),
            host_key("http://wsus.apac.contoso.com/x")
        );
    }

    #[test]
    fn a_bare_name_stands_for_the_host_whose_first_label_it_is() {
        assert!(names_host("WSUS-A", "wsus-a.corp.example:8530"));
        assert!(names_host(
            "wsus-a.corp.example",
            "wsus-a.corp.example:8530"
        ));
        assert!(!names_host("wsus-a", "wsus-b.corp.example"));
        assert!(
            !names_host("192", "192.168.178.143"),
            "an IP address is whole"
        );
    }

    #[test]
    fn names_are_shortened_for_display_only_where_unambiguous() {
        assert_eq!(
            display_names(&[
                "wsus-a.corp.example",
                "wsus.emea.contoso.com",
                "wsus.apac.contoso.com",
                "10.0.0.5",
                "wsus-b.corp:8530"
            ]),
            [
                "wsus-a",
                "wsus.emea.contoso.com",
                "wsus.apac.contoso.com",
                "10.0.0.5",
                "wsus-b"
            ]
        );
    }
}
