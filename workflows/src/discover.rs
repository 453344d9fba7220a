//! Discovering the hierarchy from the servers themselves, read-only: every upstream server keeps
//! a table of its downstream servers (they register at their first synchronization and report
//! their subtrees, parents first; entries stay until an administrator deletes them: MS-WSUSSS
//! 3.1.1, note 12), and each server's configuration names its upstream and its mode.
//!
//! The walk goes level by level from the topology's top servers, every server of a level read at
//! once (bounded), so its time follows the hierarchy's depth, not its size. A server that cannot
//! be reached is still known from its upstream's table (which holds its whole subtree), so the
//! walk goes on below it.

use std::collections::{HashMap, HashSet};

use futures_util::stream::{self, StreamExt};
use serde::Serialize;
use topology::{Mode, Server, Topology, Transport};

use crate::reach::{
    self, ConnectOptions, Downstream, Observed, Registered, ServerError, WsusServer,
};
use crate::repair::{Verdict, mismatches};

/// One server the walk met.
#[derive(Debug, Clone, Serialize)]
pub struct Found {
    /// The topology's name for it, or the DNS name it registered with.
    pub name: String,
    pub upstream: Option<String>,
    pub depth: u32,
    /// Whether the topology file has it.
    pub in_file: bool,
    /// Its entry in its upstream's table (`None` for a top server): of several entries for one
    /// server (a name and its absolute form `ra.`, or the short and the qualified name), the
    /// most recently synchronized.
    pub registered: Option<Registered>,
    /// The other entries its upstream's table holds for it: older registrations never deleted.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub also_registered: Vec<Registered>,
    /// What it says of itself (configuration, the update's state); `None` when unreachable.
    pub observed: Option<Observed>,
    /// Why it could not be read.
    pub error: Option<String>,
    /// Its own id, from its own read or its upstream's table.
    #[serde(skip)]
    id: Option<String>,
}

impl Found {
    /// Replica or autonomous: what the server says, else what its upstream registered.
    pub fn mode(&self) -> Mode {
        let replica = self
            .observed
            .as_ref()
            .map(|o| o.replica)
            .or(self.registered.as_ref().map(|r| r.replica))
            .unwrap_or(false);
        if replica {
            Mode::Replica
        } else {
            Mode::Autonomous
        }
    }

    /// The verdict on the update, in words, when the server was read.
    pub fn verdict(&self) -> Option<String> {
        self.observed.as_ref().map(Verdict::describe)
    }
}

/// What the walk found, in the order met (top servers first, then level by level).
#[derive(Debug, Clone, Serialize)]
pub struct Discovery {
    pub servers: Vec<Found>,
    /// Round trips of the walk: one per level.
    pub levels: u32,
}

/// The topology file discovery starts from, as text: found servers are appended to its
/// `servers` list, so each is read through exactly the entry (its `defaults` merged in) that the
/// written file will give it.
#[derive(Debug)]
pub struct Seed {
    text: String,
    /// The file's canonical path: relative `password_file` and `ca_file` are taken from its
    /// directory.
    path: std::path::PathBuf,
    /// The indentation of its `servers` entries.
    pad: String,
}

impl Seed {
    /// `Err` says why found servers cannot be appended to this file.
    pub fn new(text: String, path: std::path::PathBuf) -> Result<Seed, String> {
        let lines: Vec<&str> = text.lines().collect();
        let start = lines
            .iter()
            .position(|l| l.starts_with("servers:"))
            .ok_or("the file has no top-level `servers:` line")?;
        if lines[start].trim_end() != "servers:" {
            return Err("write `servers` as a block list (`servers:` alone on its line, then `  - name: ...`)".into());
        }
        if lines[start + 1..]
            .iter()
            .any(|l| l.starts_with(|c: char| !c.is_whitespace() && c != '#' && c != '-'))
        {
            return Err(
                "write `servers:` last in the file, so found servers can be appended".into(),
            );
        }
        let indent = lines[start + 1..]
            .iter()
            .find_map(|l| {
                let trimmed = l.trim_start();
                trimmed.starts_with("- ").then(|| l.len() - trimmed.len())
            })
            .unwrap_or(2);
        Ok(Seed {
            text,
            path,
            pad: " ".repeat(indent),
        })
    }

    /// The entry of a found server: name, upstream, mode, and `sql` or `api` with its DNS name
    /// as the host (the rest from the file's `defaults`). `None` for a name that is not a DNS
    /// name (never written into YAML).
    fn entry(
        &self,
        name: &str,
        upstream: &str,
        mode: Mode,
        transport: Transport,
    ) -> Option<String> {
        if !plain_name(name) || !plain_name(upstream) {
            return None;
        }
        let pad = &self.pad;
        let mut text = format!("{pad}- name: {name}\n{pad}  upstream: {upstream}\n");
        if mode == Mode::Replica {
            text.push_str(&format!("{pad}  mode: replica\n"));
        }
        text.push_str(&format!("{pad}  {transport}: {{ host: {name} }}\n"));
        Some(text)
    }

    /// The file with `entries` appended, loaded as the written file will be: each found
    /// server as it will be given, `defaults` merged and relative paths resolved.
    fn with(&self, entries: &str) -> Result<Topology, String> {
        let mut text = self.text.clone();
        if !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(entries);
        let mut topology = Topology::from_bytes(&self.path.display().to_string(), text.as_bytes())
            .map_err(|e| match e {
                topology::LoadError::Invalid(invalid) => invalid.render(),
                other => other.to_string(),
            })?;
        topology.locate(self.path.clone());
        Ok(topology)
    }
}

/// The file's servers by every name a registered DNS name may match: a server's name, its SQL
/// or web-service host, or the same first label (WSUS keeps the name as the server registered
/// it: short or fully qualified). Lookups in constant time.
struct FileNames {
    /// Lower-case names and hosts.
    full: HashMap<String, usize>,
    /// The first label of a qualified name or host, matched by a short registered name.
    label_of_qualified: HashMap<String, usize>,
    /// A short name or host, matched by a qualified registered name's first label.
    short: HashMap<String, usize>,
}

impl FileNames {
    fn new(file: &[&Server]) -> FileNames {
        let mut index = FileNames {
            full: HashMap::new(),
            label_of_qualified: HashMap::new(),
            short: HashMap::new(),
        };
        for (i, server) in file.iter().enumerate() {
            let sql = server.sql.as_ref().and_then(|s| s.host.as_deref());
            let api = server.api.as_ref().map(|a| a.host.as_str());
            for name in std::iter::once(server.name.as_str()).chain(sql).chain(api) {
                let name = name.to_ascii_lowercase();
                match name.split_once('.') {
                    Some((label, _)) => {
                        index
                            .label_of_qualified
                            .entry(label.to_string())
                            .or_insert(i);
                    }
                    None => {
                        index.short.entry(name.clone()).or_insert(i);
                    }
                }
                index.full.entry(name).or_insert(i);
            }
        }
        index
    }

    fn find(&self, registered: &str) -> Option<usize> {
        let registered = registered.to_ascii_lowercase();
        self.full
            .get(&registered)
            .copied()
            .or_else(|| match registered.split_once('.') {
                Some((label, _)) => self.short.get(label).copied(),
                None => self.label_of_qualified.get(&registered).copied(),
            })
    }
}

/// Reads one server: what it says of itself, and its downstream-server table.
async fn read(
    server: &Server,
    update: &str,
    options: &ConnectOptions,
) -> Result<(Observed, Downstream), ServerError> {
    let limit = options.command_timeout;
    let timed = |what: &'static str| move |_| ServerError::timeout(what, limit);
    let mut session = reach::open(server, options).await?;
    let observed = tokio::time::timeout(limit, session.probe(update))
        .await
        .map_err(timed("the probe"))??;
    let table = tokio::time::timeout(limit, session.downstream())
        .await
        .map_err(timed("the downstream-server read"))??;
    Ok((observed, table))
}

/// Walks the hierarchy from `topology`'s top servers (`seed` is its text). Servers the file
/// lacks are read through the entry [`Seed::entry`] gives them: their top server's transport
/// unless `new_transport` says otherwise, their registered DNS name as the host.
pub async fn discover(
    topology: &Topology,
    seed: &Seed,
    options: &ConnectOptions,
    parallel: usize,
    new_transport: Option<Transport>,
) -> Discovery {
    let update = topology.update().to_string();
    let file: Vec<&Server> = topology.servers().iter().collect();
    let file_names = FileNames::new(&file);
    let mut found: Vec<Found> = Vec::new();
    // Each found server's index of the file server it is, and of its top.
    let mut file_index: Vec<Option<usize>> = Vec::new();
    let mut top_of: Vec<usize> = Vec::new();
    let mut level: Vec<usize> = Vec::new();
    for (i, server) in file.iter().enumerate() {
        if server.upstream.is_none() {
            level.push(found.len());
            top_of.push(found.len());
            file_index.push(Some(i));
            found.push(Found {
                name: server.name.clone(),
                upstream: None,
                depth: 0,
                in_file: true,
                registered: None,
                also_registered: Vec::new(),
                observed: None,
                error: None,
                id: None,
            });
        }
    }
    // Every table entry read, with the index of the server whose table held it.
    let mut entries: Vec<(usize, Registered)> = Vec::new();
    let mut levels = 0;
    while !level.is_empty() {
        levels += 1;
        // Every server found so far that the file lacks, as the written file will give it.
        let transport_of =
            |k: usize| new_transport.unwrap_or(file[file_index[top_of[k]].unwrap_or(0)].transport);
        let appended: String = (0..found.len())
            .filter(|&k| file_index[k].is_none())
            .filter_map(|k| {
                let f = &found[k];
                seed.entry(
                    &f.name,
                    f.upstream.as_deref().unwrap_or_default(),
                    f.mode(),
                    transport_of(k),
                )
            })
            .collect();
        let extended = seed.with(&appended);
        let jobs = level.iter().map(|&k| {
            let f = &found[k];
            let server = match (file_index[k], &extended) {
                (Some(i), _) => Ok(file[i].clone()),
                (None, Ok(extended)) => extended
                    .find(&f.name)
                    .map(|id| extended.server(id).clone())
                    .ok_or_else(|| format!("`{}` is not a DNS name", f.name)),
                (None, Err(e)) => Err(format!("the found servers' entries do not validate: {e}")),
            };
            let update = update.clone();
            async move {
                let read = match server {
                    Ok(server) => read(&server, &update, options).await,
                    Err(e) => Err(ServerError::permanent(e)),
                };
                (k, read)
            }
        });
        let results: Vec<_> = stream::iter(jobs).buffered(parallel.max(1)).collect().await;
        for (k, result) in results {
            match result {
                Ok((observed, table)) => {
                    found[k].observed = Some(observed);
                    found[k].id = Some(table.server_id);
                    entries.extend(table.registered.into_iter().map(|r| (k, r)));
                }
                Err(e) => found[k].error = Some(e.message),
            }
        }
        // The next level: each server's children, from its own table (no parent) or from any
        // table that names it as the parent (an unreachable server's subtree, from above).
        // Indexed, so a wide level costs its entries, not its entries times its servers.
        let mut direct: HashMap<usize, Vec<&Registered>> = HashMap::new();
        let mut by_parent: HashMap<&str, Vec<&Registered>> = HashMap::new();
        for (owner, r) in &entries {
            match &r.parent {
                None => direct.entry(*owner).or_default().push(r),
                Some(parent) => by_parent.entry(parent.as_str()).or_default().push(r),
            }
        }
        let mut known: HashSet<String> = found
            .iter()
            .flat_map(|f| [Some(f.name.to_ascii_lowercase()), f.id.clone()])
            .flatten()
            .collect();
        let mut next = Vec::new();
        let mut added: Vec<Found> = Vec::new();
        for &k in &level {
            let own = direct.get(&k).into_iter().flatten();
            let named = found[k]
                .id
                .as_deref()
                .and_then(|id| by_parent.get(id))
                .into_iter()
                .flatten();
            // One server may be registered more than once (`ra` and `ra.`, short and qualified):
            // its freshest entry is the server, the others older registrations of it.
            let mut children: Vec<&Registered> = own.chain(named).copied().collect();
            children.sort_by(|a, b| b.last_sync.cmp(&a.last_sync));
            let mut placed: HashMap<String, usize> = HashMap::new();
            for child in children {
                let in_file = file_names.find(&child.name);
                let key = in_file.map_or_else(
                    || {
                        let name = child.name.to_ascii_lowercase();
                        name.strip_suffix('.').unwrap_or(&name).to_string()
                    },
                    |i| format!("#{i}"),
                );
                if known.contains(&child.id) {
                    continue;
                }
                if let Some(&at) = placed.get(&key) {
                    added[at].also_registered.push(child.clone());
                    known.insert(child.id.clone());
                    continue;
                }
                if known.contains(&child.name.to_ascii_lowercase()) {
                    continue;
                }
                known.insert(child.name.to_ascii_lowercase());
                known.insert(child.id.clone());
                placed.insert(key, added.len());
                next.push(found.len() + added.len());
                top_of.push(top_of[k]);
                file_index.push(in_file);
                added.push(Found {
                    name: in_file.map_or_else(|| child.name.clone(), |i| file[i].name.clone()),
                    upstream: Some(found[k].name.clone()),
                    depth: found[k].depth + 1,
                    in_file: in_file.is_some(),
                    id: Some(child.id.clone()),
                    registered: Some((*child).clone()),
                    also_registered: Vec::new(),
                    observed: None,
                    error: None,
                });
            }
        }
        found.extend(added);
        level = next;
    }
    Discovery {
        servers: found,
        levels,
    }
}

/// How the file and the servers differ.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Registered downstream, absent from the file: never repaired.
    Missing,
    /// In the file, registered by no upstream that was read.
    Unregistered,
    /// Registered, but its last synchronization is older than the limit.
    Stale,
    /// Its upstream or mode disagrees with the file.
    Disagrees,
    /// It could not be read; what is known of it comes from its upstream's table.
    Unreachable,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Difference {
    pub kind: Kind,
    pub server: String,
    /// The evidence, in words.
    pub evidence: String,
}

/// Whole days from an ISO 8601 date-time (`2026-11-30T02:00:00[.fff]`) to `now` (Unix seconds);
/// `None` when it does not read as one.
fn age_days(when: &str, now: i64) -> Option<i64> {
    let date = when.get(..10)?;
    let mut parts = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, d) = (parts.next()??, parts.next()??, parts.next()??);
    // Days from 1970-01-01 (the civil-from-days inverse, proleptic Gregorian).
    let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(now.div_euclid(86_400) - days)
}

/// The differences between the file and what the servers say. `now`: Unix seconds.
pub fn differences(
    topology: &Topology,
    discovery: &Discovery,
    stale_days: u32,
    now: i64,
) -> Vec<Difference> {
    let mut out = Vec::new();
    let by_name = |name: &str| discovery.servers.iter().find(|f| f.name == name);
    for f in &discovery.servers {
        let upstream = f.upstream.as_deref().unwrap_or("?");
        if let Some(error) = &f.error {
            out.push(Difference {
                kind: Kind::Unreachable,
                server: f.name.clone(),
                evidence: format!("could not be read ({error})"),
            });
        }
        if !f.in_file {
            let below = f
                .upstream
                .as_deref()
                .and_then(by_name)
                .is_some_and(|u| !u.in_file);
            out.push(Difference {
                kind: Kind::Missing,
                server: f.name.clone(),
                evidence: format!(
                    "registered downstream of {upstream}{}, {}: not in the file, so it would stay broken",
                    if below { " (below a server the file lacks)" } else { "" },
                    f.mode()
                ),
            });
        }
        if let Some(r) = &f.registered
            && let Some(age) = r.last_sync.as_deref().and_then(|w| age_days(w, now))
            && age > i64::from(stale_days)
        {
            out.push(Difference {
                kind: Kind::Stale,
                server: f.name.clone(),
                evidence: format!(
                    "registered downstream of {upstream}, last synchronized {} ({age} days ago, over {stale_days}): decommissioned, or not synchronizing",
                    r.last_sync.as_deref().unwrap_or_default()
                ),
            });
        }
        for other in &f.also_registered {
            out.push(Difference {
                kind: Kind::Stale,
                server: other.name.clone(),
                evidence: format!(
                    "a second registration of {} in {upstream}'s table (id {}, last synchronized \
                     {}) beside the one it synchronizes with: an old entry never deleted; remove \
                     it from {upstream}'s downstream servers",
                    f.name,
                    other.id,
                    other.last_sync.as_deref().unwrap_or("never")
                ),
            });
        }
        if f.in_file
            && let Some(id) = topology.find(&f.name)
        {
            let server = topology.server(id);
            let mut wrong = Vec::new();
            if f.depth > 0 && server.upstream.as_deref() != f.upstream.as_deref() {
                wrong.push(format!(
                    "upstream: the file says {}, {upstream}'s table registers it",
                    server.upstream.as_deref().unwrap_or("none")
                ));
            }
            match &f.observed {
                Some(observed) => wrong.extend(mismatches(server, observed, false)),
                None => {
                    if let Some(r) = &f.registered
                        && r.replica != (server.mode == Mode::Replica)
                    {
                        wrong.push(format!(
                            "mode: the file says {}, {upstream}'s table says {}",
                            server.mode,
                            if r.replica { "replica" } else { "autonomous" }
                        ));
                    }
                }
            }
            if !wrong.is_empty() {
                out.push(Difference {
                    kind: Kind::Disagrees,
                    server: f.name.clone(),
                    evidence: wrong.join("; "),
                });
            }
        }
    }
    // File servers no table registered, under an upstream that was read.
    for server in topology.servers() {
        if server.upstream.is_none()
            || discovery
                .servers
                .iter()
                .any(|f| f.in_file && f.name == server.name)
        {
            continue;
        }
        let up = server.upstream.as_deref().unwrap_or_default();
        let evidence = match discovery.servers.iter().find(|f| f.name == up) {
            Some(u) if u.error.is_none() => format!(
                "the file puts it below {up}, whose table does not register it (nor does any table read): not synchronizing from it, or gone"
            ),
            Some(_) => format!("could not be checked: its upstream {up} could not be read"),
            None => format!("could not be checked: its upstream {up} was not found either"),
        };
        out.push(Difference {
            kind: Kind::Unregistered,
            server: server.name.clone(),
            evidence,
        });
    }
    out
}

/// What the top servers' downstream-server tables hold that the file lacks.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Unlisted {
    /// Registered servers (whole subtrees) the file does not name.
    pub count: usize,
    /// Top servers whose table could not be read, and why: their servers are not counted.
    pub unread: Vec<(String, String)>,
}

/// How many servers the top servers of `topology` have registered downstream (their whole
/// subtrees) that the file lacks: one read per top server, for the one-line notice of `plan
/// --online` and `apply`. A table that cannot be read is named with the reason, never counted as
/// empty.
pub async fn unlisted(topology: &Topology, options: &ConnectOptions) -> Unlisted {
    let file: Vec<&Server> = topology.servers().iter().collect();
    let file_names = &FileNames::new(&file);
    let tops = topology.servers().iter().filter(|s| s.upstream.is_none());
    let reads = tops.map(|top| async move {
        let read = async {
            let mut session = reach::open(top, options).await?;
            tokio::time::timeout(options.command_timeout, session.downstream())
                .await
                .map_err(|_| {
                    ServerError::timeout("the downstream-server read", options.command_timeout)
                })?
        };
        let counted = read.await.map(|table| {
            table
                .registered
                .iter()
                .filter(|r| file_names.find(&r.name).is_none())
                .count()
        });
        (top.name.clone(), counted)
    });
    let mut found = Unlisted::default();
    for (top, counted) in futures_util::future::join_all(reads).await {
        match counted {
            Ok(n) => found.count += n,
            Err(e) => found.unread.push((top, e.message)),
        }
    }
    found
}

/// `text` as a YAML comment's content: one line, no control characters.
fn comment(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect()
}

/// A DNS name safe to write unquoted in YAML.
fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
}

/// The seed file with every server it lacks appended to its `servers` list ([`Seed::entry`]),
/// each after a comment saying where it was found (or that it could not be read), under a
/// header saying when and from where. The seed's own entries are kept as written.
pub fn extended_topology(
    seed: &Seed,
    seed_name: &str,
    discovery: &Discovery,
    transport: Transport,
    when: &str,
) -> String {
    let found_new: Vec<&Found> = discovery.servers.iter().filter(|f| !f.in_file).collect();
    let mut out = format!(
        "# Discovered by wsus-reset discover on {when} from {} ({} server(s) found that it lacks);\n\
         # its own servers keep their entries. Review, then `wsus-reset plan` this file.\n",
        comment(seed_name),
        found_new.len(),
    );
    out.push_str(&seed.text);
    if !out.ends_with('\n') {
        out.push('\n');
    }
    let pad = &seed.pad;
    for f in found_new {
        let upstream = f.upstream.as_deref().unwrap_or_default();
        let Some(entry) = seed.entry(&f.name, upstream, f.mode(), transport) else {
            out.push_str(&format!(
                "{pad}# skipped: a server registered as `{}`, which is not a DNS name\n",
                comment(&f.name)
            ));
            continue;
        };
        match &f.error {
            Some(error) => out.push_str(&format!(
                "{pad}# UNREACHABLE at discovery ({}); known from {upstream}'s downstream-server table\n",
                comment(error)
            )),
            None => out.push_str(&format!(
                "{pad}# found in {upstream}'s downstream-server table; it says: {}\n",
                comment(&f.verdict().unwrap_or_default())
            )),
        }
        out.push_str(&entry);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_are_whole_days_from_an_iso_date() {
        // 2026-12-02T00:00:00Z.
        let now = 1_796_169_600;
        assert_eq!(age_days("2026-11-30T02:00:00", now), Some(2));
        assert_eq!(age_days("2025-01-15T02:00:00.000", now), Some(686));
        assert_eq!(age_days("garbage", now), None);
    }

    #[test]
    fn a_registered_name_is_matched_short_or_qualified() {
        let t = Topology::from_bytes(
            "t.yaml",
            b"version: 1\nservers:\n  - name: wsus-hq\n    sql: { host: sql-hq.corp.example }\n",
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        let file: Vec<&Server> = t.servers().iter().collect();
        let names = FileNames::new(&file);
        assert_eq!(names.find("WSUS-HQ.corp.example"), Some(0));
        assert_eq!(names.find("sql-hq.corp.example"), Some(0));
        assert_eq!(names.find("SQL-HQ"), Some(0));
        assert_eq!(names.find("wsus-hq2.corp.example"), None);
    }

    #[test]
    fn a_hostile_registered_name_is_never_written_as_yaml() {
        assert!(plain_name("wsus-paris.corp.example"));
        assert!(!plain_name("x\n  - name: evil"));
        assert!(!plain_name("a: b"));
        assert_eq!(comment("one\ntwo"), "one two");
    }
}
