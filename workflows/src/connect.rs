//! Opening a tiberius connection to one server's SUSDB from its topology entry: address, named
//! instance, encryption, certificate trust, credentials read from the environment or a file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tiberius::{AuthMethod, Client, Config, EncryptionLevel, SqlBrowser};
use tokio::net::TcpStream;
use tokio_util::compat::TokioAsyncWriteCompatExt;
use topology::{Auth, Encrypt, SecretSource, Server};

use crate::db::{Connection, DbError};

/// How connections are made, for every server of a run.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Send every TCP connection here (a lab) while each login still names its own server.
    pub connect_via: Option<SocketAddr>,
    pub connect_timeout: Duration,
    /// The limit for one command's round trip.
    pub command_timeout: Duration,
    /// Log every server in with this SQL login instead of its own `auth`: only `rehearse` sets
    /// it, for the lab it starts itself (which has no Windows accounts).
    pub lab_login: Option<(String, String)>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            connect_via: None,
            connect_timeout: Duration::from_secs(15),
            command_timeout: Duration::from_secs(60),
            lab_login: None,
        }
    }
}

/// Why a connection's settings could not be made. These are the operator's to fix, never worth
/// a retry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    #[error(
        "the password for `{user}` comes from environment variable {var}, which is not set: export it before running"
    )]
    MissingEnv { user: String, var: String },
    #[error("cannot read the password file {path} for `{user}`: {reason}")]
    PasswordFile {
        user: String,
        path: PathBuf,
        reason: String,
    },
    #[error(
        "`auth.method: {0}` is not available in this build: use `method: sql` (a SQL login) or, except on Windows builds, `method: windows` (NTLM with a user and a password source)"
    )]
    AuthUnavailable(&'static str),
    #[error("`sql.pipe` (a local named pipe) works only when run on that Windows server itself")]
    PipeUnavailable,
    #[error(
        "--connect-via {0} is not a loopback address, and the server's `encrypt` is `danger-plaintext`: plaintext is allowed to a lab on loopback only"
    )]
    PlaintextOffLoopback(SocketAddr),
}

/// The tiberius configuration for `server`. Reading the password is deferred to here, so a
/// secret lives only as long as a connection attempt.
pub fn config(server: &Server, options: &ConnectOptions) -> Result<Config, SettingsError> {
    let sql = &server.sql;
    if sql.pipe.is_some() && sql.host.is_none() {
        return Err(SettingsError::PipeUnavailable);
    }
    let mut config = Config::new();
    config.host(sql.host.as_deref().unwrap_or_default());
    config.port(sql.port.unwrap_or(1433));
    if let Some(instance) = &sql.instance {
        config.instance_name(instance);
    }
    config.database(&sql.database);
    config.application_name("wsus-reset");
    let loopback_lab = options.connect_via.is_some_and(|a| a.ip().is_loopback());
    let encryption = match sql.encrypt {
        // The lab speaks plaintext; a loopback socket never leaves the machine.
        _ if loopback_lab => EncryptionLevel::NotSupported,
        Encrypt::DangerPlaintext => match options.connect_via {
            Some(addr) => return Err(SettingsError::PlaintextOffLoopback(addr)),
            None => EncryptionLevel::NotSupported,
        },
        Encrypt::Required => EncryptionLevel::Required,
        Encrypt::Strict => EncryptionLevel::Strict,
        Encrypt::Off => EncryptionLevel::Off,
    };
    config.encryption(encryption);
    if sql.trust_cert {
        config.trust_cert();
    } else if let Some(ca) = &sql.ca_file {
        config.trust_cert_ca(ca.to_string_lossy());
    }
    match &sql.auth {
        _ if options.lab_login.is_some() => {
            if let Some((user, password)) = &options.lab_login {
                config.authentication(AuthMethod::sql_server(user, password));
            }
        }
        Auth::Sql { user, password } => {
            let password = read_secret(user, password)?;
            config.authentication(AuthMethod::sql_server(user, password));
        }
        #[cfg(unix)]
        Auth::Windows { user, password } => {
            // NTLM through sspi-rs; `user` is `DOMAIN\\user`.
            let password = read_secret(user, password)?;
            config.authentication(AuthMethod::windows(user, password));
        }
        #[cfg(not(unix))]
        Auth::Windows { .. } => return Err(SettingsError::AuthUnavailable("windows")),
        Auth::Integrated => return Err(SettingsError::AuthUnavailable("integrated")),
    }
    Ok(config)
}

fn read_secret(user: &str, source: &SecretSource) -> Result<String, SettingsError> {
    match source {
        SecretSource::Env(var) => std::env::var(var).map_err(|_| SettingsError::MissingEnv {
            user: user.into(),
            var: var.clone(),
        }),
        SecretSource::File(path) => std::fs::read_to_string(path)
            .map(|text| text.trim_end_matches(['\r', '\n']).to_string())
            .map_err(|e| SettingsError::PasswordFile {
                user: user.into(),
                path: path.clone(),
                reason: e.to_string(),
            }),
    }
}

/// Opens and logs in, within the connect timeout.
pub async fn connect(server: &Server, options: &ConnectOptions) -> Result<Connection, DbError> {
    let config = config(server, options).map_err(|e| DbError::permanent(e.to_string()))?;
    let attempt = async {
        let tcp = match options.connect_via {
            Some(addr) => TcpStream::connect(addr).await.map_err(|e| DbError {
                transient: true,
                code: None,
                message: format!("cannot connect to {addr} (--connect-via): {e}"),
            })?,
            None if server.sql.instance.is_some() => TcpStream::connect_named(&config).await?,
            None => TcpStream::connect(config.get_addr())
                .await
                .map_err(|e| DbError {
                    transient: true,
                    code: None,
                    message: format!("cannot connect to {}: {e}", config.get_addr()),
                })?,
        };
        tcp.set_nodelay(true).map_err(|e| DbError {
            transient: true,
            code: None,
            message: e.to_string(),
        })?;
        Ok::<_, DbError>(Client::connect(config, tcp.compat_write()).await?)
    };
    tokio::time::timeout(options.connect_timeout, attempt)
        .await
        .map_err(|_| DbError::timeout("connecting", options.connect_timeout))?
        .map_err(|e| DbError {
            message: format!("login to {}: {}", describe(server), e.message),
            ..e
        })
}

/// `host\instance:port/database`, for messages.
pub fn describe(server: &Server) -> String {
    let sql = &server.sql;
    let mut text = sql
        .host
        .clone()
        .or_else(|| sql.pipe.clone())
        .unwrap_or_default();
    if let Some(instance) = &sql.instance {
        text.push('\\');
        text.push_str(instance);
    } else if let Some(port) = sql.port {
        text.push_str(&format!(":{port}"));
    }
    text.push('/');
    text.push_str(&sql.database);
    text
}
