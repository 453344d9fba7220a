//! The lab: emulated WSUS 3.0 servers for rehearsals and tests of the real client paths, each
//! reachable as production reaches it: its SUSDB over TDS (tiberius), as strict as the SQL Server
//! release it claims to be ([`version`]; SQL Server 2005, TDS 7.2, by default), and its
//! administration web service (ApiRemoting30, SOAP over HTTP or HTTPS), both answering from one
//! model per server.
//!
//! A tour:
//! - this file: [`Lab`], the shared model of every server, routing a connection to the server it
//!   names, and the lifecycle (construction from a topology, the accept loop);
//! - [`model`]: one server's SUSDB (revisions, approvals, replica flag) and the semantics of
//!   `spDeclineUpdate` / `spDeployUpdate`, including when a client's sync would fail;
//! - [`sql`]: the TDS listener and pipe, the login, the statements and procedures of the `susdb`
//!   contract, and the protocol itself ([`sql::tds`], [`sql::reply`]);
//! - [`api`]: the web-service listener routed by `Host`, SOAP, the WSDL, the operations, Windows
//!   authentication;
//! - [`catalog`]: the procedures' signatures and the tables' columns as public sources show
//!   them; RPC calls are checked against it as SQL Server checks them;
//! - [`version`]: the SQL Server release emulated and what follows from it;
//! - [`faults`]: injected latency, dropped connections, server errors, unreachable servers,
//!   altered signatures;
//! - [`state`]: the state file and its group commit; [`sync`]: replica synchronization and the
//!   downstream-server tables;
//! - [`tls`], [`ntlm`]: what both listeners share to encrypt and to authenticate.
//!
//! Given a certificate ([`tls`]), the lab encrypts as SQL Server does (TDS 7.x TLS inside
//! PRELOGIN, login-only encryption, TDS 8.0 strict) and serves HTTPS; without one it answers
//! ENCRYPT_NOT_SUP and speaks plaintext, which is why it listens on loopback.

pub mod api;
pub mod catalog;
pub mod error;
pub mod faults;
pub mod model;
pub mod ntlm;
pub mod platform;
pub mod sql;
pub mod state;
pub mod sync;
pub mod tls;
pub mod version;
pub mod wsus;
pub mod wusp;

pub use error::LabError;
pub use model::StateFile;
pub use sync::Registered;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use faults::{Counter, Faults};
use model::{Seed, ServerDb, lock};
use platform::Platform;
use state::StateWriter;
use sync::Hierarchy;
use topology::Topology;
use version::SqlVersion;

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
    /// Windows accounts (with the same password) in the console's read-only role (WSUS
    /// Reporters): their reads are answered, their changes refused with 403.
    pub api_reporters: Vec<String>,
    /// The web service offers only `Negotiate` (a site whose NTLM provider was removed), taking
    /// NTLM tokens inside it as SPNEGO does.
    pub api_negotiate_only: bool,
    /// What `GetCurrentUserRole` answers the administrator and a reporter.
    pub api_roles: wsus::ApiRoles,
    /// The WSUS release every server runs unless `wsus_versions` says otherwise.
    pub wsus_version: wsus::WsusVersion,
    /// Servers on another WSUS release than the lab's (`--wsus-version NAME=VERSION`).
    pub wsus_versions: Vec<(String, wsus::WsusVersion)>,
    /// The whole state as JSON, written atomically after every mutation and loaded at start.
    pub state_file: Option<PathBuf>,
    /// The certificate and key to encrypt with; plaintext only without one.
    pub tls: Option<tls::Identity>,
    /// The SQL Server release emulated (SQL Server 2005 by default, as WSUS 3.0 installs it).
    pub sql_version: SqlVersion,
    /// The Windows every server runs on unless `platforms` says otherwise: its Schannel decides
    /// the TLS each transport accepts (Windows Server 2008 R2 by default, [`platform::Windows`]).
    pub windows: platform::Windows,
    /// Servers on another platform than the lab's: name, Windows, and SQL Server release when
    /// not the lab's (`lab --platform NAME=WINDOWS[/SQL]`).
    pub platforms: Vec<(String, platform::Windows, Option<SqlVersion>)>,
    /// How often each replica synchronizes from its upstream; never when `None`.
    pub replica_sync: Option<Duration>,
    /// Registered downstream servers the lab does not serve (decommissioned, never deleted):
    /// each name, and the server whose table holds it (`None`: the first top server).
    pub stale: Vec<(String, Option<String>)>,
    /// Where each server's SoftwareDistribution.log is written (`DIR/NAME/`), when set: the
    /// client web service's faults, as a real server logs them.
    pub server_log: Option<PathBuf>,
    /// `NewUpdates` per `SyncUpdates` answer at most: WSUS's 200 (MS-WUSP note 55) unless set.
    pub client_page: Option<usize>,
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
    platform: Platform,
    wsus: wsus::WsusVersion,
}

#[derive(Debug)]
struct Inner {
    servers: BTreeMap<String, ServerDb>,
    /// (server, resource) -> the connection holding the application lock.
    applocks: HashMap<(String, String), u64>,
    counter: Counter,
}

#[derive(Debug)]
struct Shared {
    config: LabConfig,
    routes: Vec<Route>,
    inner: Mutex<Inner>,
    /// The state file and its group commit.
    state: StateWriter,
    hierarchy: Hierarchy,
    next_connection: AtomicU64,
    tls: Option<tls::Acceptors>,
    /// Signs the client web service's cookies.
    cookies: wusp::cookie::Sealer,
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
        let state = StateWriter::new(config.state_file.clone());
        if let Some(saved) = state.load()? {
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
                    wsus: config
                        .wsus_versions
                        .iter()
                        .rev()
                        .find(|(name, _)| name.eq_ignore_ascii_case(&s.name))
                        .map_or(config.wsus_version, |(_, v)| *v),
                    platform: config
                        .platforms
                        .iter()
                        .rev()
                        .find(|(name, _, _)| name.eq_ignore_ascii_case(&s.name))
                        .map_or(
                            Platform {
                                windows: config.windows,
                                sql: config.sql_version,
                            },
                            |(_, windows, sql)| Platform {
                                windows: *windows,
                                sql: sql.unwrap_or(config.sql_version),
                            },
                        ),
                }
            })
            .collect();
        let tls = config.tls.as_ref().map(tls::Acceptors::new).transpose()?;
        let hierarchy = Hierarchy::new(topology, config.stale.clone());
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
                state,
                hierarchy,
                next_connection: AtomicU64::new(1),
                cookies: wusp::cookie::Sealer::new(),
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
    pub fn save(&self) -> Result<(), LabError> {
        self.shared
            .state
            .save(|| state::encode(&lock(&self.shared.inner).servers))
    }

    /// Makes every change made so far durable (the state file's group commit).
    async fn persist(&self) -> Result<(), LabError> {
        let lab = self.clone();
        self.shared.state.persist(move || lab.save()).await
    }

    /// One synchronization of every replica from its upstream ([`Hierarchy::sync_replicas`]),
    /// made durable.
    pub async fn sync_replicas(&self) -> Result<(), LabError> {
        let synced = self
            .shared
            .hierarchy
            .sync_replicas(&mut lock(&self.shared.inner).servers);
        if synced {
            self.persist().await?;
        }
        Ok(())
    }

    /// Round trips (requests after login) received per server, by lower-case name.
    pub fn round_trips(&self) -> HashMap<String, u32> {
        lock(&self.shared.inner).counter.per_server()
    }

    /// The platform of `server` (the lab's, for a name it does not serve).
    pub(crate) fn platform(&self, server: &str) -> Platform {
        self.shared
            .routes
            .iter()
            .find(|r| r.name == server)
            .map_or_else(|| self.lab_platform(), |r| r.platform)
    }

    /// The WSUS release `server` runs.
    pub(crate) fn wsus_version(&self, server: &str) -> wsus::WsusVersion {
        self.shared
            .routes
            .iter()
            .find(|r| r.name == server)
            .map_or(self.shared.config.wsus_version, |r| r.wsus)
    }

    fn lab_platform(&self) -> Platform {
        Platform {
            windows: self.shared.config.windows,
            sql: self.shared.config.sql_version,
        }
    }

    /// The platform of the server a TLS client names (SNI): by its SUSDB's host on TDS, by its
    /// web service's host on HTTPS; the lab's for a name it does not know or none.
    pub(crate) fn platform_named(&self, name: Option<&str>, web: bool) -> Platform {
        let Some(name) = name else {
            return self.lab_platform();
        };
        self.shared
            .routes
            .iter()
            .find(|r| {
                let host = if web { &r.api_host } else { &r.host };
                host.as_deref()
                    .is_some_and(|h| h.eq_ignore_ascii_case(name))
            })
            .map_or_else(|| self.lab_platform(), |r| r.platform)
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
