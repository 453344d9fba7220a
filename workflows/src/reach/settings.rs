//! How a run reaches its servers, whichever the transport: the options every connection of a
//! run shares (lab redirections, timeouts), the settings errors an operator fixes, and the
//! password sources read only when a connection is made.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use topology::{Auth, SecretSource, Server};

/// How connections are made, for every server of a run.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Send every TCP connection here (a lab) while each login still names its own server.
    pub connect_via: Option<SocketAddr>,
    /// With `connect_via`: keep each server's encryption and trust this authority instead of
    /// the server's own (a lab with a certificate). Without it a loopback lab gets plaintext.
    pub connect_via_ca: Option<PathBuf>,
    pub connect_timeout: Duration,
    /// The limit for one command's round trip.
    pub command_timeout: Duration,
    /// Log every server in with this SQL login instead of its own `auth`: only `rehearse` sets
    /// it, for the lab it starts itself.
    pub lab_login: Option<(String, String)>,
    /// Send every web-service connection here (a lab) while each request still names its own
    /// server's `api.host`.
    pub api_via: Option<SocketAddr>,
    /// Log every web service in with this Windows account (`DOMAIN\user`) instead of its own
    /// `auth`: only `rehearse` sets it, for its lab.
    pub lab_windows_login: Option<(String, String)>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            connect_via: None,
            connect_via_ca: None,
            connect_timeout: Duration::from_secs(15),
            command_timeout: Duration::from_secs(60),
            lab_login: None,
            api_via: None,
            lab_windows_login: None,
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
    // The path is not shown: a password put where the path belongs must not be echoed.
    #[error(
        "cannot read the `password_file` given for `{user}`: {reason} (a relative path is taken from the topology file's directory)"
    )]
    PasswordFile {
        user: String,
        path: PathBuf,
        reason: String,
    },
    #[error(
        "`auth.method: {0}` works only when wsus-reset runs on Windows: use `method: sql` (a SQL login) or `method: windows` (NTLM with a user and a password source)"
    )]
    AuthUnavailable(&'static str),
    #[error(
        "`api.auth.method: integrated` works only when wsus-reset runs on Windows: use `method: windows` (NTLM with a user and a password source)"
    )]
    ApiAuthUnavailable,
    #[error("NTLM: {0}")]
    Ntlm(String),
    #[error("{0} is reached through its web service (`api`): it has no `sql` to connect to")]
    NoSql(String),
    #[error(
        "`sql.pipe` (a local named pipe) works only when wsus-reset runs on that Windows server itself: run it there, or use `export-sql` for this server"
    )]
    PipeUnavailable,
    #[error(
        "--connect-via {0} is not a loopback address, and the server's `encrypt` is `danger-plaintext`: plaintext is allowed to a lab on loopback only"
    )]
    PlaintextOffLoopback(SocketAddr),
}

/// Every password source of `servers` resolved before anything is sent (a variable set, a file
/// readable): the problems, each with the servers it stops. Nothing is connected to, and the
/// secrets read are dropped at once.
pub fn missing_secrets<'a>(
    servers: impl IntoIterator<Item = &'a Server>,
    options: &ConnectOptions,
) -> Vec<(String, Vec<String>)> {
    let mut problems: Vec<(String, Vec<String>)> = Vec::new();
    for server in servers {
        let auth = match (server.via_sql(), server.via_api()) {
            (Some(_), _) if options.lab_login.is_some() => continue,
            (_, Some(_)) if options.lab_windows_login.is_some() => continue,
            (Some(sql), _) => &sql.auth,
            (_, Some(api)) => &api.auth,
            (None, None) => continue,
        };
        let (Auth::Sql { user, password } | Auth::Windows { user, password }) = auth else {
            continue;
        };
        if let Err(e) = read_secret(user, password) {
            let text = e.to_string();
            match problems.iter_mut().find(|(p, _)| *p == text) {
                Some((_, names)) => names.push(server.name.clone()),
                None => problems.push((text, vec![server.name.clone()])),
            }
        }
    }
    problems
}

pub(crate) fn read_secret(user: &str, source: &SecretSource) -> Result<String, SettingsError> {
    match source {
        SecretSource::Env(var) => std::env::var(var).map_err(|_| SettingsError::MissingEnv {
            user: user.into(),
            var: var.clone(),
        }),
        // As Windows tools write it: PowerShell 5's `>` and Out-File write UTF-16LE with a BOM,
        // `Out-File -Encoding utf8` UTF-8 with a BOM, Notepad a CRLF line end. None of that is
        // part of the password.
        SecretSource::File(path) => std::fs::read(path)
            .map_err(|e| e.to_string())
            .and_then(|bytes| {
                topology::decode_text(&bytes)
                    .ok_or_else(|| "it is not UTF-8 or UTF-16 text (with or without a BOM)".into())
            })
            .map(|text| text.trim_end_matches(['\r', '\n']).to_string())
            .map_err(|reason| SettingsError::PasswordFile {
                user: user.into(),
                path: path.clone(),
                reason,
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utf16le_with_bom(text: &str) -> Vec<u8> {
        let mut bytes = vec![0xFF, 0xFE];
        bytes.extend(text.encode_utf16().flat_map(u16::to_le_bytes));
        bytes
    }

    #[test]
    fn a_password_file_written_by_windows_tools_reads_as_the_password() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let password = "s3cret-pässwörd";
        let written_by = [
            (
                "PowerShell 5 `>` or Out-File",
                utf16le_with_bom(&format!("{password}\r\n")),
            ),
            (
                "Out-File -Encoding utf8",
                [
                    &[0xEF, 0xBB, 0xBF][..],
                    format!("{password}\r\n").as_bytes(),
                ]
                .concat(),
            ),
            ("Notepad", format!("{password}\r\n").into_bytes()),
            ("printf", password.as_bytes().to_vec()),
        ];
        for (tool, bytes) in written_by {
            let path = dir.path().join("wsus.pw");
            std::fs::write(&path, bytes).expect("written");
            let read = read_secret("CORP\\u", &SecretSource::File(path));
            assert_eq!(read.as_deref(), Ok(password), "as written by {tool}");
        }
    }

    #[test]
    fn a_password_file_that_is_not_text_is_refused_with_the_reason() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("wsus.pw");
        std::fs::write(&path, [0xC3, 0x28, 0xFF]).expect("written");
        let error = read_secret("u", &SecretSource::File(path)).expect_err("refused");
        assert!(
            error.to_string().contains("not UTF-8 or UTF-16 text"),
            "{error}"
        );
    }
}
