//! The hierarchy lock: `sp_getapplock` owned by the session on the top server of every tree a run
//! touches, held for the whole run, so two operators on two machines cannot repair one hierarchy
//! at once. SQL Server releases it when the connection closes, even if this process is killed.

use std::collections::{BTreeSet, HashMap, HashSet};

use topology::{Selection, ServerId, Topology};

use crate::connect::{ConnectOptions, connect};
use crate::db::{self, Connection};

/// The held locks; dropping this closes the connections, which releases them.
#[derive(Debug)]
pub struct HierarchyLock {
    pub locked: HashSet<String>,
    /// Top servers that could not be reached: nothing below them will be changed.
    pub unreachable: Vec<(String, String)>,
    _connections: Vec<Connection>,
}

#[derive(Debug, thiserror::Error)]
#[error(
    "another wsus-reset run holds the hierarchy lock on top server {server} (sp_getapplock `{resource}`): wait for it to finish",
    resource = susdb::procs::APPLOCK_RESOURCE
)]
pub struct LockRefused {
    pub server: String,
}

/// Each selected server's top server, by name.
pub fn tops_of(topology: &Topology, selection: &Selection) -> HashMap<String, String> {
    selection
        .servers
        .iter()
        .map(|&id| {
            let mut top: ServerId = id;
            while let Some(up) = topology.upstream(top) {
                top = up;
            }
            (
                topology.server(id).name.clone(),
                topology.server(top).name.clone(),
            )
        })
        .collect()
}

impl HierarchyLock {
    /// Takes the lock on every top server the selection reaches. A refusal anywhere is an error;
    /// an unreachable top server is reported, and its tree is left alone by the workflow.
    pub async fn acquire(
        topology: &Topology,
        selection: &Selection,
        options: &ConnectOptions,
    ) -> Result<HierarchyLock, LockRefused> {
        let tops: BTreeSet<String> = tops_of(topology, selection).into_values().collect();
        let mut lock = HierarchyLock {
            locked: HashSet::new(),
            unreachable: Vec::new(),
            _connections: Vec::new(),
        };
        for name in tops {
            let Some(id) = topology.find(&name) else {
                continue;
            };
            let server = topology.server(id);
            let attempt = async {
                let mut c = connect(server, options).await?;
                let granted = db::try_applock(&mut c).await?;
                Ok::<_, db::DbError>((c, granted))
            };
            match attempt.await {
                Ok((c, true)) => {
                    lock.locked.insert(name);
                    lock._connections.push(c);
                }
                Ok((_, false)) => return Err(LockRefused { server: name }),
                Err(e) => lock.unreachable.push((name, e.message)),
            }
        }
        Ok(lock)
    }
}
