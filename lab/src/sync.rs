//! Synchronization between the emulated servers: replicas taking their upstream's approvals and
//! declines (MS-WSUSSS 3.2.4.3), and the downstream-server tables that synchronization fills
//! (MS-WSUSSS 3.1.1), read by both listeners. It speaks no protocol and holds no lock: the caller
//! passes the servers' models.

use std::collections::{BTreeMap, HashMap};

use topology::Topology;

use crate::model::{Call, SERVER_VERSION, ServerDb, server_id};

/// One entry of an upstream server's downstream-server table (`tbDownstreamServerTarget`;
/// MS-WSUSSS 3.1.1: a DSS registers at its first synchronization and its upstream learns its
/// subtree from its rollups, parents first; entries stay until an administrator deletes them).
#[derive(Debug, Clone, PartialEq)]
pub struct Registered {
    /// The server's DNS name as it registered (`AccountName`).
    pub name: String,
    /// Its `ServerId` (`AccountServerID`).
    pub id: String,
    /// The `ServerId` of the server it synchronizes from, when that is not the table's owner.
    pub parent: Option<String>,
    /// `LastSyncTime`, ISO 8601.
    pub last_sync: String,
    pub replica: bool,
    pub version: String,
}

/// When a served server last synchronized: an hour ago; a stale entry: 400 days ago (for
/// `diff --stale-days`). ISO 8601 in UTC, as `CONVERT(nvarchar(30), …, 126)` writes it.
fn sync_time(days_ago: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    civil(now.saturating_sub(days_ago * 86_400 + 3_600))
}

/// Unix seconds as an ISO 8601 UTC date-time.
fn civil(t: u64) -> String {
    let (days, secs) = (t / 86_400, t % 86_400);
    // Civil date from days since 1970-01-01 (proleptic Gregorian).
    let z = i64::try_from(days).unwrap_or(0) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        secs / 3_600,
        secs % 3_600 / 60,
        secs % 60
    )
}

/// The hierarchy's shape, as synchronization needs it: fixed when the lab starts.
#[derive(Debug)]
pub(crate) struct Hierarchy {
    /// Each server and its upstream, in execution order (replica synchronization goes top-down).
    order: Vec<(String, Option<String>)>,
    /// Each server's downstream servers (indexes into `order`), by lower-case name.
    children: HashMap<String, Vec<usize>>,
    /// The DNS name each server registered with: its web service's host, where it has one.
    dns: HashMap<String, String>,
    /// Registered downstream servers the lab does not serve, each with the server whose table
    /// holds it (`None`: the first top server).
    stale: Vec<(String, Option<String>)>,
}

impl Hierarchy {
    pub(crate) fn new(topology: &Topology, stale: Vec<(String, Option<String>)>) -> Hierarchy {
        let mut children: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, s) in topology.servers().iter().enumerate() {
            if let Some(up) = &s.upstream {
                children.entry(up.to_ascii_lowercase()).or_default().push(i);
            }
        }
        Hierarchy {
            order: topology
                .servers()
                .iter()
                .map(|s| (s.name.clone(), s.upstream.clone()))
                .collect(),
            children,
            dns: topology
                .servers()
                .iter()
                .filter_map(|s| Some((s.name.clone(), s.api.as_ref()?.host.to_ascii_lowercase())))
                .collect(),
            stale,
        }
    }

    /// The downstream-server table of `server`: every server below it, its direct children
    /// without a parent, the others with their upstream's id, in the order rollups bring them
    /// (parents first), and the stale entries of its subtree.
    pub(crate) fn registered(
        &self,
        servers: &BTreeMap<String, ServerDb>,
        server: &str,
    ) -> Vec<Registered> {
        let order = &self.order;
        let key = |n: &str| n.to_ascii_lowercase();
        let mut below: Vec<(String, String)> = Vec::new();
        let mut frontier = vec![key(server)];
        while !frontier.is_empty() {
            let mut next = Vec::new();
            for parent in &frontier {
                for &i in self.children.get(parent).into_iter().flatten() {
                    let name = &order[i].0;
                    below.push((name.clone(), parent.clone()));
                    next.push(key(name));
                }
            }
            frontier = next;
        }
        let top = order
            .iter()
            .find(|(_, up)| up.is_none())
            .map(|(n, _)| key(n));
        let parent_id = |parent: &str| (parent != key(server)).then(|| server_id(parent));
        let mut table: Vec<Registered> = below
            .iter()
            .map(|(name, parent)| Registered {
                name: self.dns.get(name).cloned().unwrap_or_else(|| name.clone()),
                id: server_id(name),
                parent: parent_id(parent),
                last_sync: sync_time(0),
                replica: servers.get(name).is_some_and(|db| db.replica_mode),
                version: SERVER_VERSION.into(),
            })
            .collect();
        let in_subtree =
            |n: &str| key(n) == key(server) || below.iter().any(|(b, _)| key(b) == key(n));
        for (name, upstream) in &self.stale {
            let Some(upstream) = upstream.clone().map(|u| key(&u)).or_else(|| top.clone()) else {
                continue;
            };
            if in_subtree(&upstream) {
                table.push(Registered {
                    name: name.clone(),
                    id: server_id(name),
                    parent: parent_id(&upstream),
                    last_sync: sync_time(400),
                    replica: false,
                    version: SERVER_VERSION.into(),
                });
            }
        }
        table
    }

    /// One synchronization of every replica from its upstream, top-down (MS-WSUSSS 3.2.4.3;
    /// [`ServerDb::sync_from`]). A server switched to autonomous does not synchronize. Each sync
    /// is recorded in the server's `calls` as `replica-sync`. Whether any server synchronized.
    pub(crate) fn sync_replicas(&self, servers: &mut BTreeMap<String, ServerDb>) -> bool {
        let mut synced = false;
        for (name, upstream) in &self.order {
            let Some(upstream) = upstream else { continue };
            if !servers.get(name).is_some_and(|db| db.replica_mode) {
                continue;
            }
            let Some(mut db) = servers.remove(name) else {
                continue;
            };
            if let Some(up) = servers.get(upstream) {
                let changed = db.sync_from(up);
                let mut params = serde_json::Map::new();
                params.insert("from".into(), upstream.clone().into());
                params.insert("changed".into(), changed.into());
                db.calls.push(Call {
                    procedure: "replica-sync".into(),
                    params,
                });
                synced = true;
            }
            servers.insert(name.clone(), db);
        }
        synced
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_times_are_iso_dates_in_utc() {
        assert_eq!(civil(1_796_169_600), "2026-12-02T00:00:00");
        assert_eq!(civil(951_782_400 + 3_661), "2000-02-29T01:01:01");
        assert_eq!(civil(0), "1970-01-01T00:00:00");
    }
}
