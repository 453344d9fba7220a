//! Opening a tiberius connection to one server's SUSDB from its topology entry: address, named
//! instance, encryption, certificate trust, credentials read from the environment or a file.

use std::path::PathBuf;

use tiberius::{AuthMethod, Client, Config, EncryptionLevel, SqlBrowser};
use tokio::net::TcpStream;
use tokio_util::compat::{Compat, TokioAsyncWriteCompatExt};
use topology::{Auth, Encrypt, Server, SqlTarget};

use crate::reach::port::Negotiated;
use crate::reach::port::ServerError;
use crate::reach::settings::{ConnectOptions, SettingsError, read_secret};
use crate::reach::sql::tds_tls::{self, Mode};
use crate::reach::tls::{Policy, Trust};

/// What a connection runs over: TCP, or on Windows a local named pipe (WID, SSEE).
pub trait Transport:
    tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + std::fmt::Debug
{
}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + std::fmt::Debug> Transport
    for T
{
}

/// A connection to one server's SUSDB.
pub type Connection = Client<Compat<Box<dyn Transport>>>;

/// The tiberius configuration for `server`. Reading the password is deferred to here, so a
/// secret lives only as long as a connection attempt.
pub fn config(server: &Server, options: &ConnectOptions) -> Result<Config, SettingsError> {
    let sql = server
        .via_sql()
        .ok_or_else(|| SettingsError::NoSql(server.name.clone()))?;
    let via_pipe = sql.pipe.is_some() && options.connect_via.is_none();
    if via_pipe && !cfg!(windows) {
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
    // tiberius speaks plaintext: the TLS proxy ([`super::tds_tls`]) encrypts as the server's
    // `encrypt` asks ([`tls_for`]).
    config.encryption(EncryptionLevel::NotSupported);
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
        Auth::Windows { user, password } => {
            // NTLM: through sspi-rs on Unix, through winauth on Windows; `user` is `DOMAIN\\user`.
            let password = read_secret(user, password)?;
            config.authentication(AuthMethod::windows(user, password));
        }
        // The process's own Windows identity (SSPI).
        #[cfg(windows)]
        Auth::Integrated => config.authentication(AuthMethod::Integrated),
        #[cfg(not(windows))]
        Auth::Integrated => return Err(SettingsError::AuthUnavailable("integrated")),
    }
    Ok(config)
}

/// How the proxy encrypts the connection to `server`, if it does: the mode from `encrypt`, and
/// the TLS policy from `tls_min`, `trust_cert`, `ca_file` and a lab's authority.
fn tls_for(
    sql: &SqlTarget,
    options: &ConnectOptions,
) -> Result<Option<(Mode, Policy)>, SettingsError> {
    let mode = match encryption(sql, options)? {
        EncryptionLevel::NotSupported => return Ok(None),
        EncryptionLevel::Off => Mode::Login,
        EncryptionLevel::Strict => Mode::Strict,
        _ => Mode::Required,
    };
    let policy = Policy {
        trust: Trust::of(
            lab_ca(sql, options).map(PathBuf::as_path),
            sql.trust_cert,
            sql.ca_file.as_deref(),
        ),
        min: sql.tls_min,
    };
    Ok(Some((mode, policy)))
}

/// The authority of a lab with a certificate, when this server is reached through it (a
/// server given as a local pipe stays plaintext, as it would be on its own machine).
fn lab_ca<'a>(sql: &SqlTarget, options: &'a ConnectOptions) -> Option<&'a PathBuf> {
    options
        .connect_via_ca
        .as_ref()
        .filter(|_| sql.pipe.is_none())
}

/// The encryption a connection asks for: the server's `encrypt`, except towards a plaintext
/// lab on loopback (no `connect_via_ca`) and over a local pipe.
fn encryption(sql: &SqlTarget, options: &ConnectOptions) -> Result<EncryptionLevel, SettingsError> {
    // A loopback socket or a local pipe never leaves the machine, and WID has no certificate a
    // client could validate; a lab given a certificate (and its authority here) encrypts as
    // production does.
    let via_pipe = sql.pipe.is_some() && options.connect_via.is_none();
    let lab_tls = lab_ca(sql, options).is_some();
    let loopback = options.connect_via.map(|a| a.ip().is_loopback());
    Ok(match sql.encrypt {
        _ if via_pipe || (loopback == Some(true) && !lab_tls) => EncryptionLevel::NotSupported,
        Encrypt::DangerPlaintext => match options.connect_via {
            Some(addr) if loopback == Some(false) => {
                return Err(SettingsError::PlaintextOffLoopback(addr));
            }
            _ => EncryptionLevel::NotSupported,
        },
        Encrypt::Required => EncryptionLevel::Required,
        Encrypt::Strict => EncryptionLevel::Strict,
        Encrypt::Off => EncryptionLevel::Off,
    })
}

/// The TCP connection: to `--connect-via`, through SQL Browser for a named instance, or to
/// host:port.
async fn tcp(
    sql: &SqlTarget,
    config: &Config,
    options: &ConnectOptions,
) -> Result<TcpStream, ServerError> {
    let tcp = match options.connect_via {
        Some(addr) => TcpStream::connect(addr).await.map_err(|e| {
            ServerError::transient(format!("cannot connect to {addr} (--connect-via): {e}"))
        })?,
        None if sql.instance.is_some() => TcpStream::connect_named(config).await?,
        None => TcpStream::connect(config.get_addr()).await.map_err(|e| {
            ServerError::transient(format!("cannot connect to {}: {e}", config.get_addr()))
        })?,
    };
    tcp.set_nodelay(true)
        .map_err(|e| ServerError::transient(e.to_string()))?;
    Ok(tcp)
}

/// A local named pipe (`\\.\pipe\MICROSOFT##WID\tsql\query`), waiting a little while every
/// instance of it is busy.
#[cfg(windows)]
async fn pipe(name: &str) -> Result<Box<dyn Transport>, ServerError> {
    use tokio::net::windows::named_pipe::ClientOptions;
    const ERROR_PIPE_BUSY: i32 = 231;
    for _ in 0..50 {
        match ClientOptions::new().open(name) {
            Ok(pipe) => return Ok(Box::new(pipe)),
            Err(e) if e.raw_os_error() == Some(ERROR_PIPE_BUSY) => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(e) => {
                return Err(ServerError::transient(format!(
                    "cannot open pipe {name}: {e}"
                )));
            }
        }
    }
    Err(ServerError::transient(format!("pipe {name} stayed busy")))
}

/// Opens and logs in, within the connect timeout.
pub async fn connect(server: &Server, options: &ConnectOptions) -> Result<Connection, ServerError> {
    Ok(connect_tls(server, options).await?.0)
}

/// [`connect`], and what its TLS settled on (`None` without TLS).
pub async fn connect_tls(
    server: &Server,
    options: &ConnectOptions,
) -> Result<(Connection, Option<Negotiated>), ServerError> {
    let settings = |e: SettingsError| ServerError::permanent(e.to_string());
    let config = config(server, options).map_err(settings)?;
    let sql = server.via_sql().ok_or_else(|| {
        ServerError::permanent(SettingsError::NoSql(server.name.clone()).to_string())
    })?;
    let tls = tls_for(sql, options).map_err(settings)?;
    let attempt = async {
        #[cfg(windows)]
        if let (Some(name), None) = (&sql.pipe, options.connect_via) {
            let stream = pipe(name).await?;
            return Ok((Client::connect(config, stream.compat_write()).await?, None));
        }
        let tcp = tcp(sql, &config, options).await?;
        let Some((mode, policy)) = tls else {
            let stream: Box<dyn Transport> = Box::new(tcp);
            return Ok((Client::connect(config, stream.compat_write()).await?, None));
        };
        let host = sql.host.clone().unwrap_or_default();
        let (pipe, outcome) = tds_tls::start(tcp, mode, policy, host);
        let stream: Box<dyn Transport> = Box::new(pipe);
        let connected = Client::connect(config, stream.compat_write()).await;
        let mut outcome = outcome
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match (connected, outcome.error.take()) {
            // The proxy's reason, when it ended the connection: tiberius saw only the pipe close.
            (Err(_), Some(reason)) => Err(reason),
            (Err(e), None) => Err(ServerError::from(e)),
            (Ok(client), _) => Ok((client, outcome.tls.take())),
        }
    };
    tokio::time::timeout(options.connect_timeout, attempt)
        .await
        .map_err(|_| ServerError::timeout("connecting", options.connect_timeout))?
        .map_err(|e| ServerError {
            message: format!("login to {}: {}", describe(sql), e.message),
            ..e
        })
}

/// `host\instance:port/database`, for messages.
pub fn describe(sql: &SqlTarget) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn server(sql: &str) -> Server {
        let yaml = format!("version: 1\nservers:\n  - name: wsus-a\n    sql: {sql}\n");
        let t = topology::Topology::from_bytes("t.yaml", yaml.as_bytes())
            .unwrap_or_else(|e| panic!("{e:?}"));
        t.servers()[0].clone()
    }

    #[test]
    fn a_loopback_lab_gets_plaintext_unless_its_authority_is_given_and_never_plaintext_elsewhere() {
        let via = |addr: &str, ca: bool| ConnectOptions {
            connect_via: Some(addr.parse().unwrap_or_else(|e| panic!("{e}"))),
            connect_via_ca: ca.then(|| PathBuf::from("ca.pem")),
            ..ConnectOptions::default()
        };
        let level = |sql: &str, options: &ConnectOptions| {
            let s = server(sql);
            encryption(s.sql.as_ref().unwrap_or_else(|| panic!("sql")), options)
                .map_err(|e| e.to_string())
        };
        let required = "{ host: h }";
        let plain = "{ host: h, encrypt: danger-plaintext }";
        let strict = "{ host: h, encrypt: strict }";
        use EncryptionLevel::{NotSupported, Required, Strict};
        let direct = ConnectOptions::default();
        assert_eq!(level(required, &direct), Ok(Required));
        assert_eq!(level(plain, &direct), Ok(NotSupported));
        assert_eq!(
            level(required, &via("127.0.0.1:1433", false)),
            Ok(NotSupported)
        );
        assert_eq!(level(required, &via("127.0.0.1:1433", true)), Ok(Required));
        assert_eq!(level(strict, &via("[::1]:1433", true)), Ok(Strict));
        assert_eq!(level(plain, &via("127.0.0.1:1433", true)), Ok(NotSupported));
        assert_eq!(level(required, &via("10.0.0.5:1433", false)), Ok(Required));
        assert!(level(plain, &via("10.0.0.5:1433", true)).is_err());
    }

    #[test]
    fn a_missing_password_variable_is_named_and_nothing_else_is_said() {
        let s = server(
            "{ host: h, auth: { method: sql, user: u, password_env: WSUS_RESET_SURELY_UNSET_VAR } }",
        );
        let e = config(&s, &ConnectOptions::default())
            .map(|_| ())
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "the password for `u` comes from environment variable WSUS_RESET_SURELY_UNSET_VAR, which is not set: export it before running"
        );
    }

    #[cfg(not(windows))]
    #[test]
    fn windows_only_settings_are_refused_off_windows_with_the_way_out() {
        let pipe = server(
            r"{ pipe: '\\.\pipe\MICROSOFT##WID\tsql\query', auth: { method: sql, user: u, password_env: PATH } }",
        );
        let e = config(&pipe, &ConnectOptions::default())
            .map(|_| ())
            .unwrap_err();
        assert!(e.to_string().contains("export-sql"), "{e}");
        let integrated = server("{ host: h, auth: { method: integrated } }");
        let e = config(&integrated, &ConnectOptions::default())
            .map(|_| ())
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("only when wsus-reset runs on Windows"),
            "{e}"
        );
    }
}
