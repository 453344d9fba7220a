//! The validated hierarchy: what every other crate works from.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The Office 2003 Service Pack 1 update of KB 954960: the default `update` of a topology file.
pub use susdb::KB954960_UPDATE_ID;

/// How a WSUS server takes its approvals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Copies approvals from its upstream; refuses approval changes until switched to autonomous.
    Replica,
    /// Keeps its own approvals.
    Autonomous,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Replica => "replica",
            Mode::Autonomous => "autonomous",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// TLS towards SQL Server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Encrypt {
    /// TLS after PRELOGIN, certificate validated (the default).
    Required,
    /// TDS 8.0: TLS before anything else.
    Strict,
    /// Only the login packet is encrypted.
    Off,
    /// No TLS at all: for a lab on loopback only.
    DangerPlaintext,
}

/// The oldest TLS version a connection accepts (`tls_min`). TLS 1.2 unless the topology says
/// otherwise: SQL Server 2005 and the Schannel of Windows Server 2003, 2008 and 2008 R2 (as
/// configured by default) speak at most TLS 1.0, so a WSUS 3.0 server often needs `"1.0"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize)]
pub enum TlsMin {
    #[serde(rename = "1.0")]
    V1_0,
    #[serde(rename = "1.1")]
    V1_1,
    #[default]
    #[serde(rename = "1.2")]
    V1_2,
}

impl TlsMin {
    /// As the topology writes it: `1.0`, `1.1`, `1.2`.
    pub fn name(self) -> &'static str {
        match self {
            TlsMin::V1_0 => "1.0",
            TlsMin::V1_1 => "1.1",
            TlsMin::V1_2 => "1.2",
        }
    }
}

/// Where a password is read from at run time. The topology never holds the password itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SecretSource {
    /// The name of an environment variable.
    Env(String),
    /// A file whose content (less a trailing newline) is the password.
    File(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum Auth {
    /// A SQL Server login.
    Sql {
        user: String,
        password: SecretSource,
    },
    /// NTLM with a Windows account (`DOMAIN\user`).
    Windows {
        user: String,
        password: SecretSource,
    },
    /// The Windows identity of the process (Windows only).
    Integrated,
}

/// How to reach one server's SUSDB.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SqlTarget {
    /// The SQL Server host; absent only when `pipe` is given.
    pub host: Option<String>,
    /// A local named pipe (WID or SSEE on Windows).
    pub pipe: Option<String>,
    /// A named instance, resolved through SQL Browser.
    pub instance: Option<String>,
    pub port: Option<u16>,
    pub database: String,
    pub encrypt: Encrypt,
    /// The oldest TLS version accepted.
    pub tls_min: TlsMin,
    pub trust_cert: bool,
    pub ca_file: Option<PathBuf>,
    pub auth: Auth,
}

/// How to reach one server's administration web service (ApiRemoting30), as the WSUS console
/// does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiTarget {
    pub host: String,
    /// 80 (HTTP) or 443 (HTTPS) unless given: WSUS 3.0's default web site; 8530/8531 on the
    /// custom one.
    pub port: u16,
    /// HTTPS, the certificate validated (the default).
    pub tls: bool,
    /// The oldest TLS version accepted over HTTPS.
    pub tls_min: TlsMin,
    pub trust_cert: bool,
    pub ca_file: Option<PathBuf>,
    /// `Windows` (NTLM with an account) or `Integrated`; never `Sql`.
    pub auth: Auth,
}

impl ApiTarget {
    /// `https://host:port`, for messages and the request line.
    pub fn origin(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}:{}", self.host, self.port)
    }
}

/// Which way a server is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// Its SUSDB over TDS (`sql`).
    Sql,
    /// Its administration web service (`api`).
    Api,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Sql => "sql",
            Transport::Api => "api",
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One WSUS server of the hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    pub name: String,
    /// The upstream server's name as written in the file; `None` for a top server.
    pub upstream: Option<String>,
    pub mode: Mode,
    /// Distance from the top server of its tree (0 for a top server).
    pub depth: u32,
    /// Its SUSDB, when the file says how to reach it.
    pub sql: Option<SqlTarget>,
    /// Its administration web service, when the file says how to reach it.
    pub api: Option<ApiTarget>,
    /// The way the repair reaches it: the one given, or `transport` when both are.
    pub transport: Transport,
    /// The 1-based line of the server's entry in the file, for messages about it.
    pub line: usize,
}

impl Server {
    /// The SUSDB this server is reached through, when its transport is `sql`.
    pub fn via_sql(&self) -> Option<&SqlTarget> {
        self.sql
            .as_ref()
            .filter(|_| self.transport == Transport::Sql)
    }

    /// The web service this server is reached through, when its transport is `api`.
    pub fn via_api(&self) -> Option<&ApiTarget> {
        self.api
            .as_ref()
            .filter(|_| self.transport == Transport::Api)
    }
}

/// Index of a server in [`crate::Topology::servers`], which is the execution order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServerId(pub usize);
