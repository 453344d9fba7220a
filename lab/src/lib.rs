//! The SUSDB lab: emulated WSUS 3.0 databases behind one TDS listener, for rehearsals and tests
//! of the real client path (tiberius over TCP), as strict as the SQL Server release it claims to
//! be ([`version`]; SQL Server 2005, TDS 7.2, by default).
//!
//! A tour:
//! - [`tds`]: the protocol, server side (packets, PRELOGIN, LOGIN7, batches, RPC, reply tokens);
//! - [`model`]: one server's SUSDB (revisions, approvals, replica flag) and the semantics of
//!   `spDeclineUpdate` / `spDeployUpdate`, including when a client's sync would fail;
//! - [`catalog`]: the procedures' signatures and the tables' columns as public sources show
//!   them; RPC calls are checked against it as SQL Server checks them;
//! - [`version`]: the SQL Server release emulated and what follows from it;
//! - [`faults`]: injected latency, dropped connections, server errors, unreachable servers,
//!   altered signatures;
//! - [`Lab`]: routes each connection to the emulated server named in LOGIN7 (the `sql.host` of the
//!   topology, so one topology file describes production and lab), answers exactly the statements
//!   of the `susdb` contract, and keeps the whole state in a JSON file if asked.
//!
//! Given a certificate ([`tls`]), the lab encrypts as SQL Server does (TDS 7.x TLS inside
//! PRELOGIN, login-only encryption, TDS 8.0 strict); without one it answers ENCRYPT_NOT_SUP and
//! speaks plaintext, which is why it listens on loopback.

pub mod api;
pub mod catalog;
pub mod faults;
pub mod model;
pub mod ntlm;
pub mod tds;
pub mod tls;
pub mod version;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use faults::{Counter, Drop, Faults};
use model::{Call, Seed, ServerDb, SqlError};
use tds::{Cell, ColType, Message, Param, Reply, ResultSet, Rpc, Value, done, packet};
use topology::Topology;
use version::SqlVersion;

/// `tbSchemaVersion.SchemaVersion` the lab reports (the real WSUS 3.0 value is an open question,
/// susdb.md section 7).
const SCHEMA_VERSION: i32 = 926;

/// How the lab runs.
#[derive(Debug, Clone, Default)]
pub struct LabConfig {
    pub seed: Seed,
    /// Added to every round trip.
    pub latency: Duration,
    pub faults: Faults,
    /// When set, SQL logins must match (error 18456 otherwise).
    pub credentials: Option<(String, String)>,
    /// When set, Windows logins (NTLM) are accepted for this account, `DOMAIN\user`, with this
    /// password; otherwise a Windows login gets error 18452.
    pub windows_login: Option<(String, String)>,
    /// Windows accounts (with the same password) that log in to the web service but are not in
    /// the WSUS Administrators role: every operation answers them 403.
    pub api_reporters: Vec<String>,
    /// The web service offers only `Negotiate` (a site whose NTLM provider was removed), taking
    /// NTLM tokens inside it as SPNEGO does.
    pub api_negotiate_only: bool,
    /// The whole state as JSON, written atomically after every mutation and loaded at start.
    pub state_file: Option<PathBuf>,
    /// The certificate and key to encrypt with; plaintext only without one.
    pub tls: Option<tls::Identity>,
    /// The SQL Server release emulated (SQL Server 2005 by default, as WSUS 3.0 installs it).
    pub sql_version: SqlVersion,
    /// How often each replica synchronizes from its upstream; never when `None`.
    pub replica_sync: Option<Duration>,
    /// Registered downstream servers the lab does not serve (decommissioned, never deleted):
    /// each name, and the server whose table holds it (`None`: the first top server).
    pub stale: Vec<(String, Option<String>)>,
}

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

/// The lab's whole state, as written to `--state`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateFile {
    pub servers: BTreeMap<String, ServerDb>,
}

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("cannot read lab state {path}: {source}")]
    ReadState {
        path: String,
        source: std::io::Error,
    },
    #[error("lab state {path} is not a lab state file: {source}")]
    BadState {
        path: String,
        source: serde_json::Error,
    },
    #[error("cannot write lab state {path}: {source}")]
    WriteState {
        path: String,
        source: std::io::Error,
    },
    #[error("listener: {0}")]
    Listen(std::io::Error),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

/// Where a connection's LOGIN7 can lead: the server's name, found by host, instance and database.
#[derive(Debug, Clone)]
struct Route {
    name: String,
    /// Its SUSDB's host; `None` for a server the topology reaches only through its web service:
    /// its SUSDB is WID or SSEE, which take local named-pipe connections only (issue 13, and
    /// `sql.pipe` in the README), so no TDS login over TCP reaches it.
    host: Option<String>,
    /// The host its administration web service answers on (`api.host`).
    api_host: Option<String>,
    /// Its `api.tls`, when the topology reaches it through its web service.
    api_tls: Option<bool>,
    instance: String,
    database: String,
    pipe: Option<String>,
}

#[derive(Debug)]
struct Inner {
    servers: BTreeMap<String, ServerDb>,
    /// (server, resource) -> the connection holding the application lock.
    applocks: HashMap<(String, String), u64>,
    counter: Counter,
}

/// Where the state file's group commit stands: changes are numbered as they ask to be durable.
#[derive(Debug, Default)]
struct Commit {
    /// The newest change that asked.
    requested: u64,
    /// Every change up to this one is on disk (or its write failed, see `failed`).
    durable: u64,
    /// A write is under way.
    writing: bool,
    /// The last failed write: the changes it covered (from, to) and why.
    failed: Option<(u64, u64, String)>,
}

#[derive(Debug)]
struct Shared {
    config: LabConfig,
    routes: Vec<Route>,
    inner: Mutex<Inner>,
    saving: Mutex<()>,
    /// Group commit of the state file: see [`Lab::persist`].
    commit: Mutex<Commit>,
    committed: tokio::sync::Notify,
    /// Each server and its upstream, in execution order (replica synchronization goes top-down).
    order: Vec<(String, Option<String>)>,
    /// Each server's downstream servers (indexes into `order`), by lower-case name.
    children: HashMap<String, Vec<usize>>,
    next_connection: AtomicU64,
    tls: Option<tls::Acceptors>,
}

/// A running lab's handle: cheap to clone.
#[derive(Debug, Clone)]
pub struct Lab {
    shared: Arc<Shared>,
}

impl Lab {
    /// The lab for `topology`: each server seeded from the hierarchy (its mode and upstream), or
    /// taken from the state file when it exists.
    pub fn new(topology: &Topology, config: LabConfig) -> Result<Lab, LabError> {
        let mut servers = BTreeMap::new();
        let upstreams: std::collections::HashSet<String> = topology
            .servers()
            .iter()
            .filter_map(|s| s.upstream.as_deref().map(str::to_ascii_lowercase))
            .collect();
        for (index, server) in topology.servers().iter().enumerate() {
            let db = ServerDb::seeded(
                config.seed,
                index,
                server.mode == topology::Mode::Replica,
                server.upstream.clone(),
                upstreams.contains(&server.name.to_ascii_lowercase()),
            );
            servers.insert(server.name.clone(), db);
        }
        if let Some(path) = &config.state_file
            && path.exists()
        {
            let shown = path.display().to_string();
            let text = std::fs::read_to_string(path).map_err(|source| LabError::ReadState {
                path: shown.clone(),
                source,
            })?;
            let saved: StateFile =
                serde_json::from_str(&text).map_err(|source| LabError::BadState {
                    path: shown,
                    source,
                })?;
            for (name, db) in saved.servers {
                if servers.contains_key(&name) {
                    servers.insert(name, db);
                }
            }
        }
        let routes = topology
            .servers()
            .iter()
            .map(|s| {
                let sql = s.sql.as_ref();
                Route {
                    name: s.name.clone(),
                    host: sql.map(|sql| {
                        sql.host
                            .clone()
                            .unwrap_or_else(|| s.name.clone())
                            .to_ascii_lowercase()
                    }),
                    api_host: s.api.as_ref().map(|a| a.host.to_ascii_lowercase()),
                    api_tls: s.api.as_ref().map(|a| a.tls),
                    instance: sql
                        .and_then(|sql| sql.instance.clone())
                        .unwrap_or_default()
                        .to_ascii_lowercase(),
                    database: sql.map_or_else(String::new, |sql| sql.database.to_ascii_lowercase()),
                    pipe: sql.and_then(|sql| sql.pipe.clone()),
                }
            })
            .collect();
        let tls = config.tls.as_ref().map(tls::Acceptors::new).transpose()?;
        let lab = Lab {
            shared: Arc::new(Shared {
                tls,
                config,
                routes,
                inner: Mutex::new(Inner {
                    servers,
                    applocks: HashMap::new(),
                    counter: Counter::default(),
                }),
                saving: Mutex::new(()),
                commit: Mutex::new(Commit::default()),
                committed: tokio::sync::Notify::new(),
                order: topology
                    .servers()
                    .iter()
                    .map(|s| (s.name.clone(), s.upstream.clone()))
                    .collect(),
                children: {
                    let mut children: HashMap<String, Vec<usize>> = HashMap::new();
                    for (i, s) in topology.servers().iter().enumerate() {
                        if let Some(up) = &s.upstream {
                            children.entry(up.to_ascii_lowercase()).or_default().push(i);
                        }
                    }
                    children
                },
                next_connection: AtomicU64::new(1),
            }),
        };
        lab.save()?;
        Ok(lab)
    }

    /// The current state of every server.
    pub fn snapshot(&self) -> StateFile {
        StateFile {
            servers: lock(&self.shared.inner).servers.clone(),
        }
    }

    /// Writes the state file, if one is configured: whole or not at all.
    /// The downstream-server table of `server`: every server below it, its direct children
    /// without a parent, the others with their upstream's id, in the order rollups bring them
    /// (parents first), and the stale entries of its subtree.
    pub(crate) fn registered(
        &self,
        servers: &BTreeMap<String, ServerDb>,
        server: &str,
    ) -> Vec<Registered> {
        let order = &self.shared.order;
        let key = |n: &str| n.to_ascii_lowercase();
        let mut below: Vec<(String, String)> = Vec::new();
        let mut frontier = vec![key(server)];
        while !frontier.is_empty() {
            let mut next = Vec::new();
            for parent in &frontier {
                for &i in self.shared.children.get(parent).into_iter().flatten() {
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
        let parent_id = |parent: &str| (parent != key(server)).then(|| api::server_id(parent));
        // The DNS name each server registered with: its web service's host, else its name.
        let dns: HashMap<&str, &str> = self
            .shared
            .routes
            .iter()
            .filter_map(|r| Some((r.name.as_str(), r.api_host.as_deref()?)))
            .collect();
        let mut table: Vec<Registered> = below
            .iter()
            .map(|(name, parent)| Registered {
                name: dns
                    .get(name.as_str())
                    .map_or_else(|| name.clone(), |h| (*h).to_string()),
                id: api::server_id(name),
                parent: parent_id(parent),
                last_sync: sync_time(0),
                replica: servers.get(name).is_some_and(|db| db.replica_mode),
                version: api::SERVER_VERSION.into(),
            })
            .collect();
        let in_subtree =
            |n: &str| key(n) == key(server) || below.iter().any(|(b, _)| key(b) == key(n));
        for (name, upstream) in &self.shared.config.stale {
            let Some(upstream) = upstream.clone().map(|u| key(&u)).or_else(|| top.clone()) else {
                continue;
            };
            if in_subtree(&upstream) {
                table.push(Registered {
                    name: name.clone(),
                    id: api::server_id(name),
                    parent: parent_id(&upstream),
                    last_sync: sync_time(400),
                    replica: false,
                    version: api::SERVER_VERSION.into(),
                });
            }
        }
        table
    }

    /// Round trips (requests after login) received per server, by lower-case name.
    pub fn round_trips(&self) -> HashMap<String, u32> {
        lock(&self.shared.inner).counter.per_server()
    }

    pub fn save(&self) -> Result<(), LabError> {
        if self.shared.config.state_file.is_none() {
            return Ok(());
        }
        // One writer at a time, each writing the state as it is when its turn comes: the file
        // always ends with the newest state.
        let _writing = lock(&self.shared.saving);
        // Encoded under the model's lock, without a copy of it: compact JSON of a few hundred
        // servers takes well under the time a copy did.
        let encoded = {
            let inner = lock(&self.shared.inner);
            serde_json::to_vec(&StateFileRef {
                servers: &inner.servers,
            })
        };
        save_state(&self.shared.config, encoded)
    }

    /// Makes every change made so far durable, writing the state file at most once for all the
    /// changes that ask meanwhile (group commit, as the engine's journal does): the first to ask
    /// writes, the others wait for a write that began after their change. Without a state file,
    /// nothing to do.
    async fn persist(&self) -> Result<(), LabError> {
        if self.shared.config.state_file.is_none() {
            return Ok(());
        }
        let mine = {
            let mut commit = lock(&self.shared.commit);
            commit.requested += 1;
            commit.requested
        };
        loop {
            let notified = self.shared.committed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let target = {
                let mut commit = lock(&self.shared.commit);
                if commit.durable >= mine {
                    return match &commit.failed {
                        Some((from, to, why)) if (*from..=*to).contains(&mine) => {
                            Err(LabError::WriteState {
                                path: self
                                    .shared
                                    .config
                                    .state_file
                                    .as_ref()
                                    .map(|p| p.display().to_string())
                                    .unwrap_or_default(),
                                source: std::io::Error::other(why.clone()),
                            })
                        }
                        _ => Ok(()),
                    };
                }
                if commit.writing {
                    None
                } else {
                    commit.writing = true;
                    Some((commit.durable, commit.requested))
                }
            };
            let Some((before, target)) = target else {
                notified.await;
                continue;
            };
            // Every change numbered up to `target` was made before this snapshot is taken.
            let lab = self.clone();
            let written = tokio::task::spawn_blocking(move || lab.save())
                .await
                .unwrap_or_else(|e| {
                    Err(LabError::WriteState {
                        path: String::new(),
                        source: std::io::Error::other(e.to_string()),
                    })
                });
            {
                let mut commit = lock(&self.shared.commit);
                commit.durable = target;
                commit.writing = false;
                if let Err(e) = written {
                    commit.failed = Some((before + 1, target, e.to_string()));
                }
            }
            self.shared.committed.notify_waiters();
        }
    }

    /// One synchronization of every replica from its upstream, top-down (MS-WSUSSS 3.2.4.3;
    /// [`ServerDb::sync_from`]). A server switched to autonomous does not synchronize. Each sync
    /// is recorded in the server's `calls` as `replica-sync`.
    pub async fn sync_replicas(&self) -> Result<(), LabError> {
        let mut synced = false;
        {
            let mut inner = lock(&self.shared.inner);
            for (name, upstream) in &self.shared.order {
                let Some(upstream) = upstream else { continue };
                if !inner.servers.get(name).is_some_and(|db| db.replica_mode) {
                    continue;
                }
                let Some(mut db) = inner.servers.remove(name) else {
                    continue;
                };
                if let Some(up) = inner.servers.get(upstream) {
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
                inner.servers.insert(name.clone(), db);
            }
        }
        if synced {
            self.persist().await?;
        }
        Ok(())
    }

    /// Serves connections until `shutdown`, then writes the state.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), LabError> {
        if let Some(period) = self.shared.config.replica_sync {
            let (lab, stop) = (self.clone(), shutdown.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        () = stop.cancelled() => break,
                        _ = tick.tick() => {
                            if let Err(e) = lab.sync_replicas().await {
                                tracing::warn!(error = %e, "replica synchronization");
                            }
                        }
                    }
                }
            });
        }
        let lab = self.clone();
        accept_until(listener, shutdown, move |stream| {
            let _ = stream.set_nodelay(true);
            let lab = lab.clone();
            async move {
                if let Err(e) = lab.connection(stream).await {
                    tracing::debug!(error = %e, "connection ended");
                }
            }
        })
        .await?;
        self.save()
    }

    /// The one server of the topology reached through this local pipe, if exactly one is: a
    /// client of a local pipe names no host.
    fn route_pipe(&self, pipe: &str) -> Option<String> {
        let mut servers = self.shared.routes.iter().filter(|r| {
            r.pipe
                .as_deref()
                .is_some_and(|p| p.eq_ignore_ascii_case(pipe))
        });
        match (servers.next(), servers.next()) {
            (Some(one), None) => Some(one.name.clone()),
            _ => None,
        }
    }

    fn route(&self, host: &str, instance: &str, database: &str) -> Option<String> {
        let (host, instance, database) = (
            host.to_ascii_lowercase(),
            instance.to_ascii_lowercase(),
            database.to_ascii_lowercase(),
        );
        let by_host: Vec<&Route> = self
            .shared
            .routes
            .iter()
            .filter(|r| r.host.as_deref() == Some(host.as_str()))
            .collect();
        let pick = |candidates: Vec<&Route>| -> Option<String> {
            match candidates.as_slice() {
                [one] => Some(one.name.clone()),
                _ => None,
            }
        };
        if by_host.len() <= 1 {
            return pick(by_host).or_else(|| {
                // Also reachable by the WSUS server's own name, for hand-made clients.
                self.shared
                    .routes
                    .iter()
                    .find(|r| r.host.is_some() && r.name.eq_ignore_ascii_case(&host))
                    .map(|r| r.name.clone())
            });
        }
        let by_instance: Vec<&Route> = by_host
            .into_iter()
            .filter(|r| r.instance == instance)
            .collect();
        if by_instance.len() <= 1 {
            return pick(by_instance);
        }
        pick(
            by_instance
                .into_iter()
                .filter(|r| database.is_empty() || r.database == database)
                .collect(),
        )
    }

    async fn connection(self, stream: TcpStream) -> Result<(), tds::ProtocolError> {
        let id = self.shared.next_connection.fetch_add(1, Ordering::Relaxed);
        let result = self.session(stream, id).await;
        self.release(id);
        result
    }

    /// Session-owned application locks go with the connection, as on SQL Server.
    fn release(&self, connection: u64) {
        lock(&self.shared.inner)
            .applocks
            .retain(|_, owner| *owner != connection);
    }

    /// Serves a local named pipe (as WID and SSEE do) until `shutdown`, then writes the state.
    /// Plaintext, as on those servers: a pipe never leaves the machine.
    #[cfg(windows)]
    pub async fn serve_pipe(
        &self,
        name: &str,
        shutdown: CancellationToken,
    ) -> Result<(), LabError> {
        use tokio::net::windows::named_pipe::ServerOptions;
        let mut next = ServerOptions::new()
            .first_pipe_instance(true)
            .create(name)
            .map_err(LabError::Listen)?;
        let mut connections = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                connected = next.connect() => {
                    connected.map_err(LabError::Listen)?;
                    // A new instance for the next client before this one is served.
                    let fresh = ServerOptions::new().create(name).map_err(LabError::Listen)?;
                    let pipe = std::mem::replace(&mut next, fresh);
                    let (lab, stop, name) = (self.clone(), shutdown.clone(), name.to_string());
                    connections.spawn(async move {
                        let id = lab.shared.next_connection.fetch_add(1, Ordering::Relaxed);
                        let (rd, wr) = tokio::io::split(pipe);
                        tokio::select! {
                            () = stop.cancelled() => {}
                            result = lab.prelogin(rd, wr, tds::encrypt::NOT_SUP, id, Some(&name)) => {
                                if let Err(e) = result {
                                    tracing::debug!(error = %e, "pipe connection ended");
                                }
                            }
                        }
                        lab.release(id);
                    });
                }
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
        connections.shutdown().await;
        self.save()
    }

    async fn session(&self, stream: TcpStream, id: u64) -> Result<(), tds::ProtocolError> {
        let mut first = [0u8; 1];
        if stream.peek(&mut first).await? == 0 {
            return Ok(());
        }
        // A TLS record first (content type 22, handshake): a TDS 8.0 ("strict") client.
        if first[0] == 0x16 {
            let version = self.shared.config.sql_version;
            if !version.strict() {
                // Before SQL Server 2022 a TLS record where PRELOGIN belongs is a malformed
                // packet: the server closes the connection.
                return Err(tds::ProtocolError::Malformed(format!(
                    "a TDS 8.0 (strict) client, but SQL Server {version} has no TDS 8.0 (2022 on)"
                )));
            }
            let Some(acceptors) = &self.shared.tls else {
                return Err(tds::ProtocolError::Malformed(
                    "a TDS 8.0 (strict) client, but the lab has no certificate (--tls-cert)".into(),
                ));
            };
            let (rd, wr) = tokio::io::split(acceptors.strict.accept(stream).await?);
            return self.prelogin(rd, wr, tds::encrypt::ON, id, None).await;
        }
        let (mut rd, mut wr) = stream.into_split();
        let Some(first) = tds::read_message(&mut rd).await? else {
            return Ok(());
        };
        if first.kind != packet::PRELOGIN {
            return Err(tds::ProtocolError::Malformed("expected PRELOGIN".into()));
        }
        let prelogin = tds::parse_prelogin(&first.payload)?;
        // As SQL Server without ForceEncryption: the client's wish, if there is a certificate.
        let encryption = match (&self.shared.tls, prelogin.encryption) {
            (None, _) | (Some(_), tds::encrypt::NOT_SUP) => tds::encrypt::NOT_SUP,
            (Some(_), tds::encrypt::OFF) => tds::encrypt::OFF,
            (Some(_), _) => tds::encrypt::ON,
        };
        tds::write_message(
            &mut wr,
            packet::REPLY,
            &tds::prelogin_reply(encryption, self.shared.config.sql_version.version_parts()),
            4096,
        )
        .await?;
        let acceptor = match &self.shared.tls {
            Some(acceptors) if encryption != tds::encrypt::NOT_SUP => acceptors.tds7.clone(),
            _ => return self.login(rd, wr, &prelogin, None, id, None).await,
        };
        let stream = rd
            .reunite(wr)
            .map_err(|e| tds::ProtocolError::Malformed(e.to_string()))?;
        let mut tls = acceptor.accept(tls::PreloginFramed::new(stream)).await?;
        tls.get_mut().0.handshake_done();
        if encryption == tds::encrypt::ON {
            let (rd, wr) = tokio::io::split(tls);
            return self.login(rd, wr, &prelogin, None, id, None).await;
        }
        // ENCRYPT_OFF: only LOGIN7 is encrypted, everything after it is plaintext again.
        let login = tds::read_message(&mut tls).await?;
        let (framed, _) = tls.into_inner();
        let (rd, wr) = framed.into_inner().into_split();
        self.login(rd, wr, &prelogin, Some(login), id, None).await
    }

    /// PRELOGIN where the transport settles encryption, whatever the client asks: on inside TDS
    /// 8.0's TLS, not supported over a local pipe.
    async fn prelogin<R, W>(
        &self,
        mut rd: R,
        mut wr: W,
        encryption: u8,
        id: u64,
        pipe: Option<&str>,
    ) -> Result<(), tds::ProtocolError>
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send,
    {
        let Some(first) = tds::read_message(&mut rd).await? else {
            return Ok(());
        };
        if first.kind != packet::PRELOGIN {
            return Err(tds::ProtocolError::Malformed("expected PRELOGIN".into()));
        }
        let prelogin = tds::parse_prelogin(&first.payload)?;
        let reply = tds::prelogin_reply(encryption, self.shared.config.sql_version.version_parts());
        tds::write_message(&mut wr, packet::REPLY, &reply, 4096).await?;
        self.login(rd, wr, &prelogin, None, id, pipe).await
    }

    /// LOGIN7 (read here unless `login` already holds it), authentication, then the requests.
    async fn login<R, W>(
        &self,
        mut rd: R,
        mut wr: W,
        prelogin: &tds::Prelogin,
        login: Option<Option<Message>>,
        id: u64,
        pipe: Option<&str>,
    ) -> Result<(), tds::ProtocolError>
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send,
    {
        let login = match login {
            Some(login) => login,
            None => tds::read_message(&mut rd).await?,
        };
        let Some(login) = login else {
            return Ok(());
        };
        if login.kind != packet::LOGIN7 {
            return Err(tds::ProtocolError::Malformed(format!(
                "expected LOGIN7, got packet type {:#04x}",
                login.kind
            )));
        }
        let login = tds::parse_login(&login.payload)?;
        let packet_size = usize::try_from(login.packet_size)
            .unwrap_or(4096)
            .clamp(512, 32767);
        let database = if login.database.is_empty() {
            "SUSDB".to_string()
        } else {
            login.database.clone()
        };
        let mut reply = Reply::default();
        let by_pipe = pipe.and_then(|name| self.route_pipe(name));
        let Some(server) =
            by_pipe.or_else(|| self.route(&login.server, &prelogin.instance, &database))
        else {
            reply.error(
                18456,
                14,
                &format!(
                    "Login failed: the lab has no server '{}'{}.",
                    login.server,
                    if prelogin.instance.is_empty() {
                        String::new()
                    } else {
                        format!(" (instance '{}')", prelogin.instance)
                    }
                ),
                "lab",
                "",
            );
            reply.done(done::ERROR, None);
            tds::write_message(&mut wr, packet::REPLY, &reply.bytes, packet_size).await?;
            return Ok(());
        };
        if self.shared.config.faults.unreachable(&server) {
            // The closest a single listener gets to a refused connection: it closes at once.
            return Ok(());
        }
        let injected = {
            let mut inner = lock(&self.shared.inner);
            inner
                .counter
                .on_call(&self.shared.config.faults, &server, "login")
        };
        if !injected.latency.is_zero() {
            tokio::time::sleep(injected.latency).await;
        }
        if injected.drop.is_some() {
            return Ok(());
        }
        if let Some(number) = injected.error {
            reply.error(number, 14, "Login failed (an injected fault).", &server, "");
            reply.done(done::ERROR, None);
            tds::write_message(&mut wr, packet::REPLY, &reply.bytes, packet_size).await?;
            return Ok(());
        }
        let refused = if login.integrated {
            self.windows_login(&login, &server, &mut rd, &mut wr, packet_size)
                .await?
        } else {
            match &self.shared.config.credentials {
                Some((user, password))
                    if !login.user.eq_ignore_ascii_case(user) || login.password != *password =>
                {
                    Some((18456, format!("Login failed for user '{}'.", login.user)))
                }
                _ => None,
            }
        };
        if let Some((number, message)) = refused {
            reply.error(number, 14, &message, &server, "");
            reply.done(done::ERROR, None);
            tds::write_message(&mut wr, packet::REPLY, &reply.bytes, packet_size).await?;
            return Ok(());
        }
        let version = self.shared.config.sql_version;
        let tds_version = version.negotiate(login.tds_version);
        reply.login_ok(
            &database,
            &server,
            u32::try_from(packet_size).unwrap_or(4096),
            tds_version,
            version.version_parts(),
        );
        tds::write_message(&mut wr, packet::REPLY, &reply.bytes, packet_size).await?;

        // Requests are read by their own task, so an ATTENTION can interrupt a slow answer.
        let (tx, mut rx) = mpsc::channel::<Message>(8);
        let reader = tokio::spawn(async move {
            while let Ok(Some(message)) = tds::read_message(&mut rd).await {
                if tx.send(message).await.is_err() {
                    break;
                }
            }
        });
        let session = Session {
            server: &server,
            connection: id,
            tds_version,
        };
        let result = self
            .serve_requests(&session, &mut rx, &mut wr, packet_size)
            .await;
        reader.abort();
        let _ = wr.shutdown().await;
        result
    }

    /// The NTLM handshake of a Windows login: CHALLENGE out in an SSPI token, AUTHENTICATE in
    /// (as an SSPI packet, or as a LOGIN7-typed one as tiberius sends it). `Some` is the refusal.
    async fn windows_login(
        &self,
        login: &tds::Login,
        server: &str,
        rd: &mut (impl AsyncRead + Unpin),
        wr: &mut (impl AsyncWrite + Unpin),
        packet_size: usize,
    ) -> Result<Option<(i32, String)>, tds::ProtocolError> {
        let Some((account, password)) = &self.shared.config.windows_login else {
            return Ok(Some((
                18452,
                "Login failed. The login is from an untrusted domain and cannot be used with Windows authentication.".into(),
            )));
        };
        if login.sspi.is_empty() {
            return Ok(Some((
                18452,
                "Login failed: no SSPI data in the login.".into(),
            )));
        }
        let (domain, _) = account.split_once('\\').unwrap_or(("LAB", account));
        let mut server_challenge = [0u8; 8];
        fastrand::fill(&mut server_challenge);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        // FILETIME: 100 ns since 1601.
        let filetime = (now.as_secs() + 11_644_473_600) * 10_000_000;
        let challenge = ntlm::challenge(server_challenge, domain, server, filetime);
        let mut token = vec![0xED];
        token.extend_from_slice(&u16::try_from(challenge.len()).unwrap_or(0).to_le_bytes());
        token.extend_from_slice(&challenge);
        tds::write_message(wr, packet::REPLY, &token, packet_size).await?;
        let Some(answer) = tds::read_message(rd).await? else {
            return Ok(Some((
                18456,
                "Login failed: the client left during NTLM.".into(),
            )));
        };
        let auth = match ntlm::Authenticate::parse(&answer.payload) {
            Ok(auth) => auth,
            Err(e) => return Ok(Some((18456, format!("Login failed: {e}.")))),
        };
        let who = auth.who();
        Ok(
            if who.eq_ignore_ascii_case(account) && auth.proves(password, server_challenge) {
                None
            } else {
                Some((18456, format!("Login failed for user '{who}'.")))
            },
        )
    }

    async fn serve_requests(
        &self,
        session: &Session<'_>,
        rx: &mut mpsc::Receiver<Message>,
        wr: &mut (impl AsyncWrite + Unpin),
        packet_size: usize,
    ) -> Result<(), tds::ProtocolError> {
        let server = session.server;
        while let Some(message) = rx.recv().await {
            let mut reply = Reply::default();
            if message.kind == packet::ATTENTION {
                reply.done(done::ATTN, None);
                tds::write_message(wr, packet::REPLY, &reply.bytes, packet_size).await?;
                continue;
            }
            let request = match Request::parse(&message) {
                Ok(request) => request,
                Err(e) => {
                    reply.error(
                        8009,
                        16,
                        &format!("The incoming request could not be read: {e}"),
                        server,
                        "",
                    );
                    reply.done(done::ERROR, None);
                    tds::write_message(wr, packet::REPLY, &reply.bytes, packet_size).await?;
                    continue;
                }
            };
            let target = request.target();
            let action = {
                let mut inner = lock(&self.shared.inner);
                let Inner { counter, .. } = &mut *inner;
                counter.on_call(&self.shared.config.faults, server, &target)
            };
            let delay = self.shared.config.latency + action.latency;
            if !delay.is_zero() {
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    next = rx.recv() => match next {
                        Some(m) if m.kind == packet::ATTENTION => {
                            // Cancelled before it ran: nothing took effect.
                            reply.done(done::ATTN, None);
                            tds::write_message(wr, packet::REPLY, &reply.bytes, packet_size).await?;
                            continue;
                        }
                        _ => return Ok(()),
                    }
                }
            }
            if action.drop == Some(Drop::Before) {
                return Ok(());
            }
            if let Some(number) = action.error {
                let (class, text) = injected_error(number);
                reply.error(number, class, text, server, "");
                reply.done(done::ERROR, None);
                tds::write_message(wr, packet::REPLY, &reply.bytes, packet_size).await?;
                continue;
            }
            let mut reply = self.execute(session, &request).await;
            // A change's reply waits until the state file holds it.
            let changes = ["set-replica-mode", "spDeclineUpdate", "spDeployUpdate"];
            if changes.iter().any(|c| c.eq_ignore_ascii_case(&target))
                && let Err(e) = self.persist().await
            {
                let e = state_error(e);
                reply = Reply::default();
                reply.error(e.number, e.class, &e.message, server, "");
                reply.done(done::ERROR, None);
            }
            if action.drop == Some(Drop::After) {
                return Ok(());
            }
            tds::write_message(wr, packet::REPLY, &reply.bytes, packet_size).await?;
        }
        Ok(())
    }

    async fn execute(&self, session: &Session<'_>, request: &Request) -> Reply {
        let (server, connection) = (session.server, session.connection);
        let mut reply = Reply::default();
        match request {
            Request::Transaction(kind) => {
                // Begin (5): a new descriptor; commit (7) / rollback (8): it ends. The lab applies
                // every change at once, so a transaction only has to look right on the wire.
                let descriptor = 1u64.to_le_bytes();
                match kind {
                    5 => reply.env_change_bytes(8, &descriptor, &[]),
                    7 => reply.env_change_bytes(9, &[], &descriptor),
                    8 => reply.env_change_bytes(10, &[], &descriptor),
                    _ => {}
                }
                reply.done(done::FINAL, None);
            }
            Request::Batch(text) => match self.statement(server, connection, text, &[]) {
                Ok(sets) if sets.is_empty() => reply.done(done::FINAL, None),
                Ok(sets) => {
                    for (k, set) in sets.iter().enumerate() {
                        if let Some(set) = set {
                            reply.result_set(set);
                        }
                        let more = if k + 1 < sets.len() {
                            done::MORE
                        } else {
                            done::FINAL
                        };
                        reply.done(more, Some(set.as_ref().map_or(1, |s| s.rows.len() as u64)));
                    }
                }
                Err(e) => {
                    reply.error(e.number, e.class, &e.message, server, "");
                    reply.done(done::ERROR, None);
                }
            },
            Request::Rpc(rpc) => {
                let procedure = rpc
                    .procedure
                    .trim_start_matches("dbo.")
                    .trim_start_matches("[dbo].");
                if let Some(e) = unknown_type(rpc, session.tds_version) {
                    reply.error(e.number, e.class, &e.message, server, "");
                    reply.done(done::ERROR, None);
                    return reply;
                }
                let result = match procedure.to_ascii_lowercase().as_str() {
                    "sp_executesql" => self
                        .sp_executesql(server, connection, rpc)
                        .map(|sets| (sets, 0)),
                    "spdeclineupdate" | "spdeployupdate" => self
                        .procedure(server, procedure, &rpc.params)
                        .map(|()| (Vec::new(), 0)),
                    "sp_getapplock" => self
                        .get_applock(server, connection, &rpc.params)
                        .await
                        .map(|s| (Vec::new(), s)),
                    "sp_releaseapplock" => self
                        .release_applock(server, connection, &rpc.params)
                        .map(|s| (Vec::new(), s)),
                    _ => Err(SqlError {
                        number: 2812,
                        class: 16,
                        message: format!("Could not find stored procedure '{}'.", rpc.procedure),
                    }),
                };
                match result {
                    Ok((sets, status)) => {
                        for set in &sets {
                            match set {
                                Some(set) => {
                                    reply.result_set(set);
                                    reply.done_in_proc(done::MORE, Some(set.rows.len() as u64));
                                }
                                None => reply.done_in_proc(done::MORE, Some(1)),
                            }
                        }
                        for (ordinal, param) in
                            rpc.params.iter().enumerate().filter(|(_, p)| p.output)
                        {
                            reply.return_value(
                                u16::try_from(ordinal).unwrap_or(0),
                                param,
                                &param.value,
                            );
                        }
                        reply.return_status(status);
                        reply.done_proc(done::FINAL);
                    }
                    Err(e) => {
                        reply.error(e.number, e.class, &e.message, server, procedure);
                        reply.return_status(-6);
                        reply.done_proc(done::ERROR);
                    }
                }
            }
        }
        reply
    }

    fn sp_executesql(
        &self,
        server: &str,
        connection: u64,
        rpc: &Rpc,
    ) -> Result<Vec<Option<ResultSet>>, SqlError> {
        let text = rpc
            .params
            .first()
            .and_then(|p| p.value.as_str())
            .ok_or_else(|| SqlError {
                number: 8144,
                class: 16,
                message: "Procedure or function sp_executesql has too many arguments specified."
                    .into(),
            })?;
        // @P1.. follow @stmt and @params.
        let args: Vec<&Value> = rpc.params.iter().skip(2).map(|p| &p.value).collect();
        self.statement(server, connection, text, &args)
    }

    /// Runs one of the contract's statements. `None` in the result: a statement without rows
    /// (an UPDATE), counted as one row affected.
    fn statement(
        &self,
        server: &str,
        connection: u64,
        text: &str,
        args: &[&Value],
    ) -> Result<Vec<Option<ResultSet>>, SqlError> {
        let arg = |i: usize| args.get(i).copied().unwrap_or(&Value::Null);
        let mut inner = lock(&self.shared.inner);
        let text_trimmed = text.trim();
        if text_trimmed == susdb::sql::APPLOCK_HELD {
            let resource = arg(0).as_str().unwrap_or_default().to_string();
            let held = inner.applocks.get(&(server.to_string(), resource)) == Some(&connection);
            return Ok(vec![Some(ResultSet {
                columns: vec![("Mode".into(), ColType::NVarChar)],
                rows: vec![vec![Cell::Text(
                    if held { "Exclusive" } else { "NoLock" }.into(),
                )]],
            })]);
        }
        let db = inner.servers.get_mut(server).ok_or_else(|| SqlError {
            number: 4060,
            class: 11,
            message: "Cannot open database \"SUSDB\".".into(),
        })?;
        let faults = &self.shared.config.faults;
        if text_trimmed == susdb::sql::PROBE {
            // SQL Server compiles the whole batch first: a column the probe names and this
            // server lacks fails it before any row (error 207).
            for (object, _) in catalog::COLUMNS {
                if let Some(column) = faults.removed(server, object).into_iter().next() {
                    return Err(SqlError {
                        number: 207,
                        class: 16,
                        message: format!("Invalid column name '{column}'."),
                    });
                }
            }
            let update = arg(0).as_str().unwrap_or_default().to_ascii_uppercase();
            return Ok(probe(db, &update, self.shared.config.sql_version)
                .into_iter()
                .map(Some)
                .collect());
        }
        if text_trimmed == susdb::sql::SIGNATURES {
            return Ok(signatures(faults, server).into_iter().map(Some).collect());
        }
        if text_trimmed == susdb::sql::SET_REPLICA_MODE {
            let replica = arg(0).as_bool().ok_or_else(|| SqlError {
                number: 8178,
                class: 16,
                message:
                    "The parameterized query expects the parameter '@P1', which was not supplied."
                        .into(),
            })?;
            db.set_replica_mode(replica);
            let mut params = serde_json::Map::new();
            params.insert("@P1".into(), replica.into());
            db.calls.push(Call {
                procedure: "set-replica-mode".into(),
                params,
            });
            let mode = ResultSet {
                columns: vec![("ReplicaMode".into(), ColType::Bit)],
                rows: vec![vec![Cell::Bit(db.replica_mode)]],
            };
            return Ok(vec![None, Some(mode)]);
        }
        if text_trimmed == susdb::sql::DOWNSTREAM_SERVERS {
            // `tbDownstreamServerTarget` joined to itself for the parent's id (columns: the EF
            // scaffold H2 of wsus-web-services.md; NULL parent for a direct child, 3.3 there),
            // `LastSyncTime` as `CONVERT(…, 126)` writes it.
            let table = self.registered(&inner.servers, server);
            let rows = table
                .into_iter()
                .map(|r| {
                    vec![
                        Cell::Text(r.name),
                        Cell::Guid(r.id),
                        Cell::Text(r.last_sync),
                        r.parent.map_or(Cell::Null, Cell::Guid),
                        Cell::Bit(r.replica),
                        Cell::Text(r.version),
                    ]
                })
                .collect();
            return Ok(vec![
                Some(ResultSet {
                    columns: vec![("ServerId".into(), ColType::Guid)],
                    rows: vec![vec![Cell::Guid(api::server_id(server))]],
                }),
                Some(ResultSet {
                    columns: vec![
                        ("AccountName".into(), ColType::NVarChar),
                        ("AccountServerID".into(), ColType::Guid),
                        ("LastSyncTime".into(), ColType::NVarChar),
                        ("ParentServerID".into(), ColType::Guid),
                        ("IsReplica".into(), ColType::Bit),
                        ("Version".into(), ColType::NVarChar),
                    ],
                    rows,
                }),
            ]);
        }
        if text_trimmed == susdb::sql::KEY_OBJECT {
            let key = arg(0).as_i64().unwrap_or(i64::MIN);
            let mut rows = Vec::new();
            if db.update_present && i64::from(db.local_update_id) == key {
                rows.push(vec![Cell::Text("LocalUpdateID".into())]);
            }
            if db.revisions.iter().any(|r| i64::from(r.revision_id) == key) {
                rows.push(vec![Cell::Text("RevisionID".into())]);
            }
            if db
                .deployments
                .iter()
                .any(|d| i64::from(d.deployment_id) == key)
            {
                rows.push(vec![Cell::Text("DeploymentID".into())]);
            }
            return Ok(vec![Some(ResultSet {
                columns: vec![("Kind".into(), ColType::NVarChar)],
                rows,
            })]);
        }
        if let Some(answer) = session_statement(text_trimmed, self.shared.config.sql_version) {
            return answer;
        }
        let first_line = text_trimmed.lines().next().unwrap_or_default();
        Err(SqlError {
            number: 50000,
            class: 16,
            message: format!("statement not supported by the lab: {first_line}"),
        })
    }

    fn procedure(&self, server: &str, procedure: &str, params: &[Param]) -> Result<(), SqlError> {
        let (name, signature) = catalog::procedure(procedure).ok_or_else(|| SqlError {
            number: 2812,
            class: 16,
            message: format!("Could not find stored procedure '{procedure}'."),
        })?;
        let without = self.shared.config.faults.removed(server, name);
        let bound = catalog::bind(name, signature, params, &without)?;
        let get = |wanted: &str| {
            bound
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(wanted))
                .and_then(|(_, v)| v.as_ref())
        };
        let text = |name: &str| {
            get(name)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let update = text(susdb::procs::UPDATE_ID);
        let admin = text(susdb::procs::ADMIN_NAME);
        let fail_if_replica = get(susdb::procs::FAIL_IF_REPLICA)
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let mut inner = lock(&self.shared.inner);
        let db = inner.servers.get_mut(server).ok_or_else(|| SqlError {
            number: 4060,
            class: 11,
            message: "Cannot open database \"SUSDB\".".into(),
        })?;
        let params_json: serde_json::Map<String, serde_json::Value> = params
            .iter()
            .map(|p| (p.name.clone(), p.value.to_json()))
            .collect();
        let result = if name == "spDeclineUpdate" {
            db.decline(&update, &admin, fail_if_replica)
        } else {
            let int = |name: &str| {
                get(name)
                    .and_then(Value::as_i64)
                    .and_then(|n| i32::try_from(n).ok())
                    .unwrap_or(-1)
            };
            let revision = int(susdb::procs::REVISION_NUMBER);
            let action = int(susdb::procs::ACTION_ID);
            let group = text(susdb::procs::TARGET_GROUP_ID);
            db.deploy(&update, revision, action, &group, &admin, fail_if_replica)
        };
        let mut call = Call {
            procedure: procedure.to_string(),
            params: params_json,
        };
        call.params.insert("ok".into(), result.is_ok().into());
        db.calls.push(call);
        result
    }

    async fn get_applock(
        &self,
        server: &str,
        connection: u64,
        params: &[Param],
    ) -> Result<i32, SqlError> {
        check_system_call("sp_getapplock", params)?;
        let get = |name: &str| {
            params
                .iter()
                .find(|p| p.name.eq_ignore_ascii_case(name))
                .map(|p| &p.value)
        };
        let resource = get(susdb::procs::RESOURCE)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let timeout_ms = get(susdb::procs::LOCK_TIMEOUT)
            .and_then(Value::as_i64)
            .unwrap_or(-1);
        // A negative timeout waits forever on SQL Server; the lab caps it so nothing hangs.
        let timeout =
            Duration::from_millis(u64::try_from(timeout_ms).unwrap_or(30_000).min(30_000));
        let key = (server.to_string(), resource);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            {
                let mut inner = lock(&self.shared.inner);
                match inner.applocks.get(&key) {
                    None => {
                        inner.applocks.insert(key, connection);
                        return Ok(0);
                    }
                    Some(owner) if *owner == connection => return Ok(0),
                    Some(_) => {}
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(-1);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn release_applock(
        &self,
        server: &str,
        connection: u64,
        params: &[Param],
    ) -> Result<i32, SqlError> {
        check_system_call("sp_releaseapplock", params)?;
        let resource = params
            .iter()
            .find(|p| p.name.eq_ignore_ascii_case(susdb::procs::RESOURCE))
            .and_then(|p| p.value.as_str())
            .unwrap_or_default()
            .to_string();
        let mut inner = lock(&self.shared.inner);
        let key = (server.to_string(), resource.clone());
        if inner.applocks.get(&key) == Some(&connection) {
            inner.applocks.remove(&key);
            Ok(0)
        } else {
            Err(SqlError {
                number: 1223,
                class: 16,
                message: format!(
                    "Cannot release the application lock (Database Principal: 'public', Resource: '{resource}') because it is not currently held."
                ),
            })
        }
    }
}

/// Accepts connections until `shutdown`, each served by `serve` in a task of its own that the
/// shutdown also ends; returns when every such task has.
async fn accept_until<S, F>(
    listener: TcpListener,
    shutdown: CancellationToken,
    serve: S,
) -> Result<(), LabError>
where
    S: Fn(TcpStream) -> F,
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(pair) => pair,
                    // A client that vanished during accept; the listener itself is fine.
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionAborted => continue,
                    Err(e) => return Err(LabError::Listen(e)),
                };
                let stop = shutdown.clone();
                let serving = serve(stream);
                connections.spawn(async move {
                    tokio::select! {
                        () = stop.cancelled() => {}
                        () = serving => {}
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.shutdown().await;
    Ok(())
}

/// One logged-in connection.
#[derive(Debug)]
struct Session<'a> {
    server: &'a str,
    connection: u64,
    /// The TDS version of the session (LOGINACK): the lower of the client's and the server's.
    tds_version: u32,
}

/// A parameter of a type the session's TDS version does not have (the date and time types of
/// TDS 7.3 on SQL Server 2005), refused as SQL Server refuses an unknown type ([`version`]).
fn unknown_type(rpc: &Rpc, tds_version: u32) -> Option<SqlError> {
    if tds_version >= version::TDS_73 {
        return None;
    }
    let (ordinal, param) = rpc
        .params
        .iter()
        .enumerate()
        .find(|(_, p)| p.type_info.first().is_some_and(|t| version::tds73_type(*t)))?;
    Some(SqlError {
        number: 8009,
        class: 16,
        message: format!(
            "The incoming tabular data stream (TDS) remote procedure call (RPC) protocol stream is incorrect. Parameter {} (\"{}\"): Data type 0x{:02X} is unknown.",
            ordinal + 1,
            param.name,
            param.type_info[0]
        ),
    })
}

/// A system procedure's parameters checked against its signature (the lab's catalog).
fn check_system_call(name: &str, params: &[Param]) -> Result<(), SqlError> {
    if let Some((name, signature)) = catalog::procedure(name) {
        catalog::bind(name, signature, params, &[])?;
    }
    Ok(())
}

fn state_error(e: LabError) -> SqlError {
    SqlError {
        number: 3013,
        class: 16,
        message: format!("the lab could not save its state: {e}"),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave the model half-changed: every change is a
    // single call on `ServerDb`. Go on with the data.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// [`StateFile`] as it is written, borrowing the model.
#[derive(Serialize)]
struct StateFileRef<'a> {
    servers: &'a BTreeMap<String, ServerDb>,
}

fn save_state(
    config: &LabConfig,
    encoded: Result<Vec<u8>, serde_json::Error>,
) -> Result<(), LabError> {
    let Some(path) = &config.state_file else {
        return Ok(());
    };
    let shown = path.display().to_string();
    let text = encoded.map_err(|e| LabError::WriteState {
        path: shown.clone(),
        source: std::io::Error::other(e),
    })?;
    write_atomically(path, &text).map_err(|source| LabError::WriteState {
        path: shown,
        source,
    })
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .map_or("state".into(), |n| n.to_string_lossy())
    ));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// The two result sets of `susdb::sql::SIGNATURES`, from the lab's catalog less what faults
/// removed on this server.
fn signatures(faults: &Faults, server: &str) -> Vec<ResultSet> {
    let text = |s: &str| Cell::Text(s.to_string());
    let mut params = ResultSet {
        columns: vec![
            ("ObjectName".into(), ColType::NVarChar),
            ("ParameterName".into(), ColType::NVarChar),
            ("TypeName".into(), ColType::NVarChar),
        ],
        rows: Vec::new(),
    };
    for (name, signature) in catalog::PROCEDURES {
        if !["spDeclineUpdate", "spDeployUpdate"].contains(name) {
            continue;
        }
        let without = faults.removed(server, name);
        for p in *signature {
            if !without.iter().any(|w| w.eq_ignore_ascii_case(p.name)) {
                params
                    .rows
                    .push(vec![text(name), text(p.name), text(p.ty.name())]);
            }
        }
    }
    let mut columns = ResultSet {
        columns: vec![
            ("ObjectName".into(), ColType::NVarChar),
            ("ColumnName".into(), ColType::NVarChar),
        ],
        rows: Vec::new(),
    };
    for (object, names) in catalog::COLUMNS {
        let without = faults.removed(server, object);
        for column in *names {
            if !without.iter().any(|w| w.eq_ignore_ascii_case(column)) {
                columns.rows.push(vec![text(object), text(column)]);
            }
        }
    }
    vec![params, columns]
}

/// What every client may send besides the contract: the session `SET` options drivers send at
/// connect (tedious, the .NET and JDBC drivers; SQL Server docs "SET Statements"), and the
/// version queries (`@@VERSION`, `SERVERPROPERTY('ProductVersion' | 'ProductLevel' | 'Edition' |
/// 'MachineName')`) that tools send to learn whom they talk to. `None`: not one of these.
fn session_statement(
    text: &str,
    version: SqlVersion,
) -> Option<Result<Vec<Option<ResultSet>>, SqlError>> {
    const SET_OPTIONS: &[&str] = &[
        "TEXTSIZE",
        "QUOTED_IDENTIFIER",
        "ARITHABORT",
        "NUMERIC_ROUNDABORT",
        "ANSI_WARNINGS",
        "ANSI_PADDING",
        "ANSI_NULLS",
        "ANSI_NULL_DFLT_ON",
        "CONCAT_NULL_YIELDS_NULL",
        "CURSOR_CLOSE_ON_COMMIT",
        "IMPLICIT_TRANSACTIONS",
        "LANGUAGE",
        "DATEFORMAT",
        "DATEFIRST",
        "TRANSACTION",
        "NOCOUNT",
        "XACT_ABORT",
        "LOCK_TIMEOUT",
        "DEADLOCK_PRIORITY",
    ];
    let statements: Vec<&str> = text
        .split(['\n', ';'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let upper: Vec<String> = statements.iter().map(|s| s.to_ascii_uppercase()).collect();
    if !upper.is_empty() && upper.iter().all(|s| s.starts_with("SET ")) {
        for statement in &upper {
            let option = statement[4..].split_whitespace().next().unwrap_or_default();
            if !SET_OPTIONS.contains(&option) {
                return Some(Err(SqlError {
                    number: 195,
                    class: 15,
                    message: format!("'{option}' is not a recognized SET option."),
                }));
            }
        }
        return Some(Ok(Vec::new()));
    }
    let [one] = upper.as_slice() else {
        return None;
    };
    let one = one.replace(' ', "");
    let nvarchar = |name: &str, value: String| {
        Some(Ok(vec![Some(ResultSet {
            columns: vec![(name.to_string(), ColType::NVarChar)],
            rows: vec![vec![Cell::Text(value)]],
        })]))
    };
    // The column's name: the alias after the last closing parenthesis, if any.
    let statement = statements[0];
    let tail = statement
        .rsplit_once(')')
        .map_or(statement, |(_, rest)| rest);
    let alias = tail
        .to_ascii_uppercase()
        .find(" AS ")
        .map_or(String::new(), |at| {
            tail[at + 4..].trim().trim_matches(['[', ']']).to_string()
        });
    if one == "SELECT@@VERSION" || one.starts_with("SELECT@@VERSIONAS") {
        return nvarchar(&alias, version.at_at_version());
    }
    for (property, value) in [
        ("PRODUCTVERSION", version.product_version().to_string()),
        ("PRODUCTLEVEL", "SP3".to_string()),
        ("EDITION", version.edition().to_string()),
        ("MACHINENAME", "WSUS".to_string()),
    ] {
        let plain = format!("SELECTSERVERPROPERTY('{property}')");
        let cast = format!("SELECTCAST(SERVERPROPERTY('{property}')ASNVARCHAR(128))");
        if one == plain || one.starts_with(&format!("{plain}AS")) || one.starts_with(&cast) {
            return nvarchar(&alias, value);
        }
    }
    None
}

/// The four result sets of `susdb::sql::PROBE`.
fn probe(db: &ServerDb, update: &str, version: SqlVersion) -> Vec<ResultSet> {
    let present = db.update_present && update == susdb::KB954960_UPDATE_ID;
    let config = ResultSet {
        columns: vec![
            ("ProductVersion".into(), ColType::NVarChar),
            ("SchemaVersion".into(), ColType::Int),
            ("ReplicaMode".into(), ColType::Bit),
            ("UpstreamServerName".into(), ColType::NVarChar),
            ("ServerPortNumber".into(), ColType::Int),
            ("SyncToMU".into(), ColType::Bit),
        ],
        rows: vec![vec![
            Cell::Text(version.product_version().into()),
            Cell::Int(SCHEMA_VERSION),
            Cell::Bit(db.replica_mode),
            db.upstream_server_name
                .clone()
                .map_or(Cell::Null, Cell::Text),
            Cell::Int(db.upstream_port),
            Cell::Bit(db.upstream_server_name.is_none()),
        ]],
    };
    let revisions = ResultSet {
        columns: vec![
            ("RevisionID".into(), ColType::Int),
            ("RevisionNumber".into(), ColType::Int),
            ("IsLatestRevision".into(), ColType::Bit),
        ],
        rows: if present {
            db.revisions
                .iter()
                .map(|r| {
                    vec![
                        Cell::Int(r.revision_id),
                        Cell::Int(r.revision_number),
                        Cell::Bit(r.is_latest),
                    ]
                })
                .collect()
        } else {
            Vec::new()
        },
    };
    let declined = ResultSet {
        columns: vec![("Declined".into(), ColType::Bit)],
        rows: if present {
            vec![vec![Cell::Bit(db.update_declined)]]
        } else {
            Vec::new()
        },
    };
    let number_of = |revision_id: i32| {
        db.revisions
            .iter()
            .find(|r| r.revision_id == revision_id)
            .map_or(0, |r| r.revision_number)
    };
    let deployments = ResultSet {
        columns: vec![
            ("DeploymentID".into(), ColType::Int),
            ("RevisionNumber".into(), ColType::Int),
            ("TargetGroupID".into(), ColType::Guid),
            ("TargetGroupTypeID".into(), ColType::Int),
            ("ActionID".into(), ColType::Int),
        ],
        rows: if present {
            db.deployments
                .iter()
                .map(|d| {
                    vec![
                        Cell::Int(d.deployment_id),
                        Cell::Int(number_of(d.revision_id)),
                        Cell::Guid(d.target_group_id.clone()),
                        Cell::Int(d.target_group_type_id),
                        Cell::Int(d.action_id),
                    ]
                })
                .collect()
        } else {
            Vec::new()
        },
    };
    vec![config, revisions, declined, deployments]
}

/// A parsed request message.
#[derive(Debug)]
enum Request {
    Batch(String),
    Rpc(Rpc),
    /// A transaction-manager request type (5 begin, 7 commit, 8 rollback).
    Transaction(u16),
}

impl Request {
    fn parse(message: &Message) -> Result<Request, tds::ProtocolError> {
        match message.kind {
            packet::SQL_BATCH => Ok(Request::Batch(tds::parse_batch(&message.payload)?)),
            packet::RPC => Ok(Request::Rpc(tds::parse_rpc(&message.payload)?)),
            packet::TRANSACTION_MANAGER => {
                let total = message
                    .payload
                    .get(..4)
                    .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
                let at = usize::try_from(total).unwrap_or(usize::MAX);
                let kind = message
                    .payload
                    .get(at..at + 2)
                    .map_or(0, |b| u16::from_le_bytes([b[0], b[1]]));
                Ok(Request::Transaction(kind))
            }
            other => Err(tds::ProtocolError::Malformed(format!(
                "unexpected packet type 0x{other:02X}"
            ))),
        }
    }

    /// The name faults use for this request.
    fn target(&self) -> String {
        let statement = |text: &str| {
            let text = text.trim();
            if text == susdb::sql::PROBE {
                "probe".to_string()
            } else if text == susdb::sql::SET_REPLICA_MODE {
                "set-replica-mode".to_string()
            } else if text == susdb::sql::KEY_OBJECT {
                "key-object".to_string()
            } else if text == susdb::sql::DOWNSTREAM_SERVERS {
                "downstream-servers".to_string()
            } else if text == susdb::sql::SIGNATURES {
                "signatures".to_string()
            } else if text == susdb::sql::APPLOCK_HELD {
                "applock-held".to_string()
            } else {
                "batch".to_string()
            }
        };
        match self {
            Request::Batch(text) => statement(text),
            Request::Rpc(rpc) if rpc.procedure == "sp_executesql" => rpc
                .params
                .first()
                .and_then(|p| p.value.as_str())
                .map_or_else(|| "batch".into(), statement),
            Request::Rpc(rpc) => rpc.procedure.trim_start_matches("dbo.").to_string(),
            Request::Transaction(_) => "transaction".into(),
        }
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
    fn sync_times_are_iso_dates_in_utc() {
        assert_eq!(civil(1_796_169_600), "2026-12-02T00:00:00");
        assert_eq!(civil(951_782_400 + 3_661), "2000-02-29T01:01:01");
        assert_eq!(civil(0), "1970-01-01T00:00:00");
    }
}
