//! Reaching a WSUS server: the port the repair talks to ([`port`]: [`WsusServer`], what it reads
//! and its errors) and its two adapters, the server's SUSDB over TDS ([`sql`]) and its
//! administration web service ([`api`]), with what they share: one TLS policy ([`tls`]) and the
//! run's connection settings ([`settings`]). [`open`] picks the adapter a server's topology entry
//! chose; the steps, their observations (`took_effect`), the journal's facts and the verdicts are
//! written against [`WsusServer`] only.
//!
//! The adapters import the port, never each other nor this module, so a change to one transport
//! stays in its folder.

pub mod api;
pub mod port;
pub mod settings;
pub mod sql;
pub mod tls;

pub use port::{
    Approval, Downstream, Negotiated, Observed, Registered, Revision, ServerError, UpdateState,
    WsusServer, detect_only_approval_live, group_name,
};
pub use settings::{ConnectOptions, SettingsError, missing_secrets};

use topology::{Server, Transport};

use api::ApiSession;
use sql::Connection;

/// One server's session, over the transport its topology entry chose.
#[derive(Debug)]
pub enum Session {
    /// The SUSDB connection, and what its TLS settled on (tiberius cannot say).
    Sql(Box<Connection>, Option<Negotiated>),
    Api(Box<ApiSession>),
}

impl Session {
    /// The SUSDB connection, for what only SQL can read (`diagnose`'s key placement).
    pub fn sql(&mut self) -> Option<&mut Connection> {
        match self {
            Session::Sql(c, _) => Some(c),
            Session::Api(_) => None,
        }
    }
}

/// Opens `server` the way its topology entry says, within the connect timeout.
pub async fn open(server: &Server, options: &ConnectOptions) -> Result<Session, ServerError> {
    Ok(match server.transport {
        Transport::Sql => {
            let (connection, tls) = sql::connect_tls(server, options).await?;
            Session::Sql(Box::new(connection), tls)
        }
        Transport::Api => Session::Api(Box::new(api::open(server, options).await?)),
    })
}

impl WsusServer for Session {
    async fn refusals(&mut self) -> Result<Vec<String>, ServerError> {
        match self {
            Session::Sql(c, _) => c.refusals().await,
            Session::Api(a) => a.refusals().await,
        }
    }

    async fn probe(&mut self, update: &str) -> Result<Observed, ServerError> {
        match self {
            Session::Sql(c, tls) => Ok(Observed {
                tls: tls.clone(),
                ..WsusServer::probe(&mut **c, update).await?
            }),
            Session::Api(a) => WsusServer::probe(&mut **a, update).await,
        }
    }

    async fn set_replica_mode(&mut self, replica: bool) -> Result<bool, ServerError> {
        match self {
            Session::Sql(c, _) => WsusServer::set_replica_mode(&mut **c, replica).await,
            Session::Api(a) => WsusServer::set_replica_mode(&mut **a, replica).await,
        }
    }

    async fn decline(&mut self, update: &str, admin: &str) -> Result<(), ServerError> {
        match self {
            Session::Sql(c, _) => WsusServer::decline(&mut **c, update, admin).await,
            Session::Api(a) => WsusServer::decline(&mut **a, update, admin).await,
        }
    }

    async fn approve_detect_only(
        &mut self,
        update: &str,
        revision: i32,
        admin: &str,
    ) -> Result<(), ServerError> {
        match self {
            Session::Sql(c, _) => {
                WsusServer::approve_detect_only(&mut **c, update, revision, admin).await
            }
            Session::Api(a) => {
                WsusServer::approve_detect_only(&mut **a, update, revision, admin).await
            }
        }
    }

    async fn accept_licence(
        &mut self,
        update: &str,
        revision: i32,
        licence: &str,
    ) -> Result<(), ServerError> {
        match self {
            Session::Sql(c, _) => {
                WsusServer::accept_licence(&mut **c, update, revision, licence).await
            }
            Session::Api(a) => {
                WsusServer::accept_licence(&mut **a, update, revision, licence).await
            }
        }
    }

    fn account(&self) -> Option<&str> {
        match self {
            Session::Sql(c, _) => WsusServer::account(&**c),
            Session::Api(a) => WsusServer::account(&**a),
        }
    }

    async fn downstream(&mut self) -> Result<Downstream, ServerError> {
        match self {
            Session::Sql(c, _) => WsusServer::downstream(&mut **c).await,
            Session::Api(a) => WsusServer::downstream(&mut **a).await,
        }
    }
}
