//! The hierarchy lock: `sp_getapplock` owned by the session on the top server of every tree a run
//! touches, held for the whole run, so two operators on two machines cannot repair one hierarchy
//! at once. SQL Server releases it when the connection closes, even if this process is killed.
//!
//! That is also its weakness: a connection a firewall drops for idling takes the lock with it,
//! while the run goes on. So the lock is watched ([`HierarchyLock::watch`]): at an interval well
//! under idle timeouts each lock connection asks whether it still holds the lock
//! (`APPLOCK_MODE`, which also keeps it busy); a lock found lost is taken again at once on a new
//! connection; one that cannot be taken again stops the run from starting any further server.
//! Besides the interval, every server asks for a check before its first change
//! ([`LockCheck::fresh`]): it starts only on a check begun no earlier than itself, so a lost lock
//! is noticed before the next server, not an interval later. Servers that start while a check
//! runs share the next one: one round of queries serves every server started in that moment.
//!
//! A top server reached through its web service has no such lock: ApiRemoting30 offers no lock
//! operation, and the tool creates no server-side object to stand in for one. Its tree takes the
//! strongest lock it offers instead: the applock of the first server of the tree, in execution
//! order, reached through SQL ([`lock_server`]), which every run of the same topology picks
//! alike, so two operators on two machines exclude each other there too. A tree with no server
//! reached through SQL is guarded by the state directory's lock only (one run per state
//! directory) and by the probe, which refuses a replica another run left switched to autonomous;
//! [`HierarchyLock::unlocked_api`] names those tops so the run says so.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use topology::{Selection, ServerId, Topology};

use crate::reach::port::ServerError;
use crate::reach::settings::ConnectOptions;
use crate::reach::sql as db;
use crate::reach::sql::connect::{Connection, connect};

/// The held locks; dropping this closes the connections, which releases them.
#[derive(Debug)]
pub struct HierarchyLock {
    pub locked: HashSet<String>,
    /// Top servers that could not be reached: nothing below them will be changed.
    pub unreachable: Vec<(String, String)>,
    /// Top servers reached through their web service whose tree has no server reached through
    /// SQL: no lock to take, their trees run under the state directory's lock only.
    pub unlocked_api: Vec<String>,
    /// Top servers reached through their web service whose lock is taken on a server below
    /// them reached through SQL: (top, that server).
    pub locked_below: Vec<(String, String)>,
    /// By top server: the lock's connection, to the top or to [`lock_server`]'s choice.
    connections: Vec<(String, Connection)>,
    /// By top server: the server its lock is taken on.
    lock_servers: HashMap<String, String>,
}

/// The server whose applock stands for `top`'s tree: the top itself when it is reached through
/// SQL, otherwise the first server of its tree (execution order: by level, then name) that is;
/// `None` when none is.
pub fn lock_server(topology: &Topology, top: ServerId) -> Option<ServerId> {
    topology
        .subtree(top)
        .into_iter()
        .find(|&id| topology.server(id).transport == topology::Transport::Sql)
}

/// The top servers whose lock this process holds right now, shared with the workflow, which
/// starts no server whose top is missing from it.
pub type Held = Arc<Mutex<HashSet<String>>>;

/// A watched lock: the watch runs until this is dropped, which closes the connections.
#[derive(Debug)]
pub struct WatchedLock {
    pub held: Held,
    /// Why a lock was lost for good (the run was stopped), by top server.
    pub lost: Arc<Mutex<Vec<(String, String)>>>,
    /// Locks lost and taken again, by top server, for the report.
    pub retaken: Arc<Mutex<Vec<(String, String)>>>,
    /// Asks for a check now ([`LockCheck::fresh`]).
    pub check: LockCheck,
    task: tokio::task::JoinHandle<()>,
}

/// What the workflow sees of a watched lock: which tops are held, a check on demand, and which
/// locks were lost and taken again.
#[derive(Debug, Clone)]
pub struct LockView {
    pub held: Held,
    pub check: LockCheck,
    pub retaken: Arc<Mutex<Vec<(String, String)>>>,
}

impl WatchedLock {
    pub fn view(&self) -> LockView {
        LockView {
            held: Arc::clone(&self.held),
            check: self.check.clone(),
            retaken: Arc::clone(&self.retaken),
        }
    }
}

/// A way to have the held locks checked now, shared with the workflow.
#[derive(Debug, Clone)]
pub struct LockCheck {
    request: Arc<tokio::sync::Notify>,
    /// When the last completed round of checks began; `None` once nothing is watched.
    checked: tokio::sync::watch::Receiver<Option<Instant>>,
}

impl LockCheck {
    /// Returns once a round of checks begun at or after `since` has completed (at once when no
    /// lock is watched): `held` then says what that round found.
    pub async fn fresh(&self, since: Instant) {
        let mut checked = self.checked.clone();
        loop {
            match *checked.borrow_and_update() {
                Some(at) if at < since => {}
                _ => return,
            }
            self.request.notify_one();
            if checked.changed().await.is_err() {
                return;
            }
        }
    }
}

impl Drop for WatchedLock {
    fn drop(&mut self) {
        // The connections live in the task: aborting it closes them, releasing the locks.
        self.task.abort();
    }
}

/// Tries to take the lock on `server` on a new connection, retrying transient errors (a
/// deadlock, a dropped connection) as every other call is: `Ok(None)` when another session
/// holds it.
async fn take(
    server: &topology::Server,
    options: &ConnectOptions,
) -> Result<Option<Connection>, ServerError> {
    let mut last = None;
    for attempt in 0..3u32 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
        }
        let tried = async {
            let mut c = connect(server, options).await?;
            let granted = db::try_applock(&mut c).await?;
            Ok::<_, ServerError>(granted.then_some(c))
        };
        match tried.await {
            Ok(granted) => return Ok(granted),
            Err(e) if e.transient => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| ServerError::transient("the lock could not be taken")))
}

#[derive(Debug, thiserror::Error)]
#[error(
    "another wsus-reset run holds the hierarchy lock on top server {top}{on} (sp_getapplock `{resource}`): wait for it to finish",
    on = if server == top { String::new() } else { format!(", taken on {server}") },
    resource = susdb::procs::APPLOCK_RESOURCE
)]
pub struct LockRefused {
    /// The tree's top server.
    pub top: String,
    /// The server the lock is taken on: the top, or [`lock_server`]'s choice below it.
    pub server: String,
}

/// Each selected server's top server, by name.
pub fn tops_of(topology: &Topology, selection: &Selection) -> HashMap<String, String> {
    selection
        .servers
        .iter()
        .map(|&id| {
            (
                topology.server(id).name.clone(),
                topology.server(topology.top_of(id)).name.clone(),
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
            unlocked_api: Vec::new(),
            locked_below: Vec::new(),
            connections: Vec::new(),
            lock_servers: HashMap::new(),
        };
        for name in tops {
            let Some(id) = topology.find(&name) else {
                continue;
            };
            let Some(on) = lock_server(topology, id) else {
                lock.locked.insert(name.clone());
                lock.unlocked_api.push(name);
                continue;
            };
            let on_name = topology.server(on).name.clone();
            match take(topology.server(on), options).await {
                Ok(Some(c)) => {
                    lock.locked.insert(name.clone());
                    if on != id {
                        lock.locked_below.push((name.clone(), on_name.clone()));
                    }
                    lock.lock_servers.insert(name.clone(), on_name);
                    lock.connections.push((name, c));
                }
                Ok(None) => {
                    return Err(LockRefused {
                        top: name,
                        server: on_name,
                    });
                }
                Err(e) => lock.unreachable.push((name, e.message)),
            }
        }
        Ok(lock)
    }

    /// Watches the held locks every `interval` until dropped. A lock found lost (its
    /// connection failed, or `APPLOCK_MODE` says `NoLock`) is taken again at once; one that
    /// cannot be taken again is removed from `held` and `stop` is cancelled: no new server starts,
    /// steps in flight finish and compensate.
    pub fn watch(
        self,
        topology: &Topology,
        options: &ConnectOptions,
        interval: Duration,
        stop: CancellationToken,
    ) -> WatchedLock {
        let held: Held = Arc::new(Mutex::new(self.locked.clone()));
        let lost = Arc::new(Mutex::new(Vec::new()));
        let retaken = Arc::new(Mutex::new(Vec::new()));
        let servers: HashMap<String, topology::Server> = self
            .connections
            .iter()
            .filter_map(|(top, _)| {
                let on = self.lock_servers.get(top).unwrap_or(top);
                topology
                    .find(on)
                    .map(|id| (top.clone(), topology.server(id).clone()))
            })
            .collect();
        let (held_w, lost_w, retaken_w, options) = (
            Arc::clone(&held),
            Arc::clone(&lost),
            Arc::clone(&retaken),
            options.clone(),
        );
        let mut connections = self.connections;
        let request = Arc::new(tokio::sync::Notify::new());
        let (checked_tx, checked) =
            tokio::sync::watch::channel((!connections.is_empty()).then(|| {
                let now = Instant::now();
                now.checked_sub(Duration::from_secs(1)).unwrap_or(now)
            }));
        let asked = Arc::clone(&request);
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            while !connections.is_empty() {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = asked.notified() => {}
                }
                let began = Instant::now();
                let mut kept = Vec::with_capacity(connections.len());
                for (name, mut c) in connections {
                    let check =
                        tokio::time::timeout(options.command_timeout, db::applock_held(&mut c))
                            .await;
                    let why = match check {
                        Ok(Ok(true)) => {
                            kept.push((name, c));
                            continue;
                        }
                        Ok(Ok(false)) => "the server no longer reports it held".to_string(),
                        Ok(Err(e)) => e.message,
                        Err(_) => {
                            format!("no answer within {} s", options.command_timeout.as_secs())
                        }
                    };
                    drop(c);
                    let again = match servers.get(&name) {
                        Some(server) => take(server, &options).await,
                        None => Err(ServerError::permanent("unknown top server")),
                    };
                    match again {
                        Ok(Some(c)) => {
                            tracing::warn!(top = %name, reason = %why, "hierarchy lock lost and taken again");
                            lock_of(&retaken_w).push((name.clone(), why));
                            kept.push((name, c));
                        }
                        refused => {
                            let reason = match refused {
                                Ok(_) => format!("{why}; another session holds it now"),
                                Err(e) => format!("{why}; taking it again failed: {}", e.message),
                            };
                            lock_of(&held_w).remove(&name);
                            lock_of(&lost_w).push((name, reason));
                            stop.cancel();
                        }
                    }
                }
                connections = kept;
                let _ = checked_tx.send(Some(began));
            }
            // Nothing left to watch: every waiting server reads `held` as it is.
            let _ = checked_tx.send(None);
        });
        WatchedLock {
            held,
            lost,
            retaken,
            check: LockCheck { request, checked },
            task,
        }
    }
}

fn lock_of<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
