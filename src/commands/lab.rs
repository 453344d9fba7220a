//! `lab FILE`: emulated WSUS servers for rehearsals and tests.

use super::*;

/// The `lab` command's options.
#[derive(Debug)]
pub struct LabOptions {
    pub listen: std::net::SocketAddr,
    pub listen_any: bool,
    /// A local named pipe to serve instead of TCP (Windows).
    pub listen_pipe: Option<String>,
    pub tls: LabTls,
    pub seed: LabSeed,
    /// Also serve each server's administration web service (ApiRemoting30) here.
    pub api_listen: Option<std::net::SocketAddr>,
    pub platform: crate::cli::PlatformArgs,
    pub replica_sync_ms: Option<u64>,
    pub state: Option<PathBuf>,
    pub faults: Option<PathBuf>,
    pub latency: u64,
    /// SQL login: user, and the variable holding its password.
    pub login: Option<(String, String)>,
    /// Windows account (`DOMAIN\user`), and the variable holding its password.
    pub windows_login: Option<(String, String)>,
    /// Web-service accounts without the administrator role.
    pub api_reporters: Vec<String>,
    pub api_roles: susdb_lab::wsus::ApiRoles,
    /// `NAME[@UPSTREAM]`: registered downstream servers the lab does not serve.
    pub stale: Vec<String>,
    /// The web service offers only `Negotiate`.
    pub api_negotiate_only: bool,
    /// Where each server's SoftwareDistribution.log is written.
    pub server_log: Option<PathBuf>,
    /// `NewUpdates` per SyncUpdates answer at most.
    pub client_page: Option<u64>,
}

/// What the lab encrypts with.
#[derive(Debug)]
pub enum LabTls {
    /// Plaintext.
    None,
    /// A certificate chain and its key, PEM files.
    Files { cert: PathBuf, key: PathBuf },
    /// A throwaway authority, written to DIR/ca.pem, and a certificate for every host.
    Generate(PathBuf),
}

fn read_identity(cert: &Path, key: &Path) -> Result<susdb_lab::tls::Identity, Failure> {
    let read = |path: &Path| {
        std::fs::read(path)
            .map_err(|e| Failure::BadInput(format!("error: cannot read {}: {e}", path.display())))
    };
    Ok(susdb_lab::tls::Identity {
        cert_chain_pem: read(cert)?,
        key_pem: read(key)?,
        by_name: Vec::new(),
    })
}

fn secret_from_env(who: &str, var: &str) -> Result<String, Failure> {
    std::env::var(var).map_err(|_| {
        Failure::BadInput(format!(
            "error: the password of {who} comes from environment variable {var}, which is not set"
        ))
    })
}

/// `lab`: serves until SIGINT or SIGTERM, then writes the state and exits 0.
pub(crate) fn run(file: &Path, options: LabOptions, out: &mut impl Write) -> Result<u8, Failure> {
    let LabOptions {
        listen,
        listen_any,
        listen_pipe,
        tls,
        seed: lab_seed,
        api_listen,
        platform,
        replica_sync_ms,
        state,
        faults,
        latency,
        login,
        windows_login,
        api_reporters,
        api_roles,
        stale,
        api_negotiate_only,
        server_log,
        client_page,
    } = options;
    let topology = Topology::load(file)?;
    // A stale entry names a server the lab does not serve, under one it does.
    let stale = stale
        .into_iter()
        .map(|entry| {
            let (name, upstream) = match entry.split_once('@') {
                Some((name, upstream)) => (name.to_string(), Some(upstream.to_string())),
                None => (entry.clone(), None),
            };
            // tbDownstreamServerTarget.AccountName is nvarchar(255) (susdb-audit.md, H2): a real
            // table cannot hold a longer name.
            if name.chars().count() > 255 {
                return Err(Failure::BadInput(format!(
                    "error: --stale: a registered name holds at most 255 characters \
                     (tbDownstreamServerTarget.AccountName is nvarchar(255)); this one has {}",
                    name.chars().count()
                )));
            }
            // Exactly a server's name: `ra.` beside `ra` is a second registration of it.
            if topology
                .servers()
                .iter()
                .any(|s| s.name.eq_ignore_ascii_case(&name))
            {
                return Err(Failure::BadInput(format!(
                    "error: --stale {entry}: {name} is a server of {}; a stale entry names one the lab does not serve",
                    file.display()
                )));
            }
            if let Some(up) = &upstream
                && topology.find(up).is_none()
            {
                return Err(Failure::BadInput(format!(
                    "error: --stale {entry}: {up} is not a server of {}",
                    file.display()
                )));
            }
            Ok((name, upstream))
        })
        .collect::<Result<Vec<_>, Failure>>()?;
    let credentials = login
        .map(|(user, var)| secret_from_env(&user, &var).map(|p| (user, p)))
        .transpose()?;
    let windows_login = windows_login
        .map(|(user, var)| secret_from_env(&user, &var).map(|p| (user, p)))
        .transpose()?;
    let faults = match faults {
        None => Faults::default(),
        Some(path) => {
            let faults =
                Faults::load(&path).map_err(|e| Failure::BadInput(format!("error: {e}")))?;
            let names: Vec<&str> = topology.servers().iter().map(|s| s.name.as_str()).collect();
            faults
                .validate(&path.display().to_string(), &names)
                .map_err(|e| Failure::BadInput(format!("error: {e}")))?;
            faults
        }
    };
    let (tls, trust) = match tls {
        LabTls::None => (None, String::new()),
        LabTls::Files { cert, key } => (
            Some(read_identity(&cert, &key)?),
            format!("; TLS with {}", cert.display()),
        ),
        LabTls::Generate(dir) => {
            let (identity, ca) = generate_identity(&topology, &dir)?;
            let trust = format!(
                "; TLS: clients trust {} (--connect-via-ca, or `ca_file`)",
                ca.display()
            );
            (Some(identity), trust)
        }
    };
    let https = tls.is_some();
    let lab = Lab::new(
        &topology,
        LabConfig {
            seed: seed(lab_seed),
            latency: Duration::from_millis(latency),
            faults,
            credentials,
            windows_login,
            api_reporters,
            api_roles,
            state_file: state,
            tls,
            sql_version: platform.sql_version,
            windows: platform.windows,
            platforms: known_platforms(&topology, platform.platforms.clone())?,
            wsus_version: wsus_version(&platform),
            wsus_versions: known_wsus_versions(&topology, &platform)?,
            replica_sync: replica_sync_ms.map(Duration::from_millis),
            stale,
            api_negotiate_only,
            server_log,
            client_page: client_page.and_then(|n| usize::try_from(n).ok()),
        },
    )
    .map_err(|e| Failure::BadInput(format!("error: {e}")))?;
    let rt = runtime()?;
    rt.block_on(async {
        let mut signals = Signals::watch();
        let stop = CancellationToken::new();
        let servers = topology.servers().len();
        let mut serving = match listen_pipe {
            #[cfg(windows)]
            Some(name) => {
                crate::emit(out, &format!("listening on pipe {name} ({servers} servers)\n"))?;
                let (lab, stop) = (lab.clone(), stop.clone());
                tokio::spawn(async move { lab.serve_pipe(&name, stop).await })
            }
            #[cfg(not(windows))]
            Some(_) => {
                return Err(Failure::BadInput(
                    "error: --listen-pipe works only on Windows; here, listen on a loopback address (--listen)".into(),
                ));
            }
            None => {
                let (listener, addr) = bind(listen, listen_any).await?;
                crate::emit(
                    out,
                    &format!(
                        "listening on {addr} ({servers} servers; connect with --connect-via {addr}{trust})\n"
                    ),
                )?;
                let (lab, stop) = (lab.clone(), stop.clone());
                tokio::spawn(async move { lab.serve(listener, stop).await })
            }
        };
        if let Some(api) = api_listen {
            let (listener, addr) = bind(api, listen_any).await?;
            crate::emit(
                out,
                &format!(
                    "api listening on {addr} (the administration web service over {}, routed by Host)\n",
                    if https { "HTTPS" } else { "HTTP" }
                ),
            )?;
            let (lab, stop) = (lab.clone(), stop.clone());
            tokio::spawn(async move {
                if let Err(e) = lab.serve_api(listener, stop).await {
                    report::say(&format!("error: the lab's web service stopped: {e}"));
                }
            });
        }
        // Until a signal, or until serving fails by itself (a pipe that cannot be created).
        let result = tokio::select! {
            _ = signals.recv() => {
                stop.cancel();
                serving.await
            }
            result = &mut serving => result,
        };
        match result {
            Ok(Ok(())) => Ok(exit::OK),
            Ok(Err(e)) => Err(Failure::BadInput(format!("error: {e}"))),
            Err(e) => Err(Failure::BadInput(format!("error: the lab stopped: {e}"))),
        }
    })
}

/// The lab-wide `--wsus-version` (the last one without a name), or 3.0 SP2.
pub(crate) fn wsus_version(platform: &crate::cli::PlatformArgs) -> susdb_lab::wsus::WsusVersion {
    platform
        .wsus_versions
        .iter()
        .rev()
        .find(|(name, _)| name.is_none())
        .map(|(_, v)| *v)
        .unwrap_or_default()
}

/// `--wsus-version NAME=VERSION` entries, each naming a server of the topology.
pub(crate) fn known_wsus_versions(
    topology: &Topology,
    platform: &crate::cli::PlatformArgs,
) -> Result<Vec<(String, susdb_lab::wsus::WsusVersion)>, Failure> {
    platform
        .wsus_versions
        .iter()
        .filter_map(|(name, v)| name.clone().map(|n| (n, *v)))
        .map(|(name, v)| {
            if topology.find(&name).is_none() {
                return Err(Failure::BadInput(format!(
                    "error: --wsus-version {name}=...: the topology has no server named `{name}`"
                )));
            }
            Ok((name, v))
        })
        .collect()
}

/// `--platform` entries, each naming a server of the topology.
pub(crate) fn known_platforms(
    topology: &topology::Topology,
    platforms: Vec<(
        String,
        susdb_lab::platform::Windows,
        Option<susdb_lab::version::SqlVersion>,
    )>,
) -> Result<
    Vec<(
        String,
        susdb_lab::platform::Windows,
        Option<susdb_lab::version::SqlVersion>,
    )>,
    Failure,
> {
    for (name, _, _) in &platforms {
        if topology.find(name).is_none() {
            return Err(Failure::BadInput(format!(
                "error: --platform {name}=...: the topology has no server named `{name}`"
            )));
        }
    }
    Ok(platforms)
}
