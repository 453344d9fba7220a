//! The port between the repair and a WSUS server: what the repair asks of a server, whichever
//! way it is reached. Two adapters: its SUSDB over TDS ([`crate::db`], wrapped here) and its
//! administration web service ([`crate::api::ApiSession`], which implements the port itself).
//! The steps, their observations (`took_effect`), the journal's facts and the verdicts are
//! written against [`WsusServer`] only.

use std::future::Future;

use topology::{Server, Transport};

use crate::api::{self, ApiSession};
use crate::connect::{ConnectOptions, connect};
use crate::db::{self, Connection, DbError, Downstream, Observed};

/// A WSUS server as the repair talks to it.
pub trait WsusServer: Send {
    /// What makes this server unsafe to change, in words, read before any change; empty when
    /// none. Over SQL: procedures and tables that differ from what this build sends and reads.
    /// Over the web service: a user without the WSUS administrator role.
    fn refusals(&mut self) -> impl Future<Output = Result<Vec<String>, DbError>> + Send;

    /// The read-only probe: configuration, the update's revisions, its approvals.
    fn probe(&mut self, update: &str) -> impl Future<Output = Result<Observed, DbError>> + Send;

    /// Sets replica mode and returns what the server then holds.
    fn set_replica_mode(
        &mut self,
        replica: bool,
    ) -> impl Future<Output = Result<bool, DbError>> + Send;

    /// Declines the update, failing on a replica.
    fn decline(
        &mut self,
        update: &str,
        admin: &str,
    ) -> impl Future<Output = Result<(), DbError>> + Send;

    /// Approves `revision` as "not approved / detect only" for All Computers, no deadline.
    fn approve_detect_only(
        &mut self,
        update: &str,
        revision: i32,
        admin: &str,
    ) -> impl Future<Output = Result<(), DbError>> + Send;

    /// The server's own id and its downstream-server table (read-only; discovery).
    fn downstream(&mut self) -> impl Future<Output = Result<Downstream, DbError>> + Send;
}

impl WsusServer for Connection {
    async fn refusals(&mut self) -> Result<Vec<String>, DbError> {
        db::signature_differences(self).await
    }

    async fn probe(&mut self, update: &str) -> Result<Observed, DbError> {
        db::probe(self, update).await
    }

    async fn set_replica_mode(&mut self, replica: bool) -> Result<bool, DbError> {
        db::set_replica_mode(self, replica).await
    }

    async fn decline(&mut self, update: &str, admin: &str) -> Result<(), DbError> {
        db::decline(self, update, admin).await
    }

    async fn approve_detect_only(
        &mut self,
        update: &str,
        revision: i32,
        admin: &str,
    ) -> Result<(), DbError> {
        db::approve_detect_only(self, update, revision, admin).await
    }

    async fn downstream(&mut self) -> Result<Downstream, DbError> {
        db::downstream(self).await
    }
}

/// One server's session, over the transport its topology entry chose.
#[derive(Debug)]
pub enum Session {
    Sql(Box<Connection>),
    Api(Box<ApiSession>),
}

impl Session {
    /// The SUSDB connection, for what only SQL can read (`diagnose`'s key placement).
    pub fn sql(&mut self) -> Option<&mut Connection> {
        match self {
            Session::Sql(c) => Some(c),
            Session::Api(_) => None,
        }
    }
}

/// Opens `server` the way its topology entry says, within the connect timeout.
pub async fn open(server: &Server, options: &ConnectOptions) -> Result<Session, DbError> {
    Ok(match server.transport {
        Transport::Sql => Session::Sql(Box::new(connect(server, options).await?)),
        Transport::Api => Session::Api(Box::new(api::open(server, options).await?)),
    })
}

impl WsusServer for Session {
    async fn refusals(&mut self) -> Result<Vec<String>, DbError> {
        match self {
            Session::Sql(c) => c.refusals().await,
            Session::Api(a) => a.refusals().await,
        }
    }

    async fn probe(&mut self, update: &str) -> Result<Observed, DbError> {
        match self {
            Session::Sql(c) => WsusServer::probe(&mut **c, update).await,
            Session::Api(a) => WsusServer::probe(&mut **a, update).await,
        }
    }

    async fn set_replica_mode(&mut self, replica: bool) -> Result<bool, DbError> {
        match self {
            Session::Sql(c) => WsusServer::set_replica_mode(&mut **c, replica).await,
            Session::Api(a) => WsusServer::set_replica_mode(&mut **a, replica).await,
        }
    }

    async fn decline(&mut self, update: &str, admin: &str) -> Result<(), DbError> {
        match self {
            Session::Sql(c) => WsusServer::decline(&mut **c, update, admin).await,
            Session::Api(a) => WsusServer::decline(&mut **a, update, admin).await,
        }
    }

    async fn approve_detect_only(
        &mut self,
        update: &str,
        revision: i32,
        admin: &str,
    ) -> Result<(), DbError> {
        match self {
            Session::Sql(c) => {
                WsusServer::approve_detect_only(&mut **c, update, revision, admin).await
            }
            Session::Api(a) => {
                WsusServer::approve_detect_only(&mut **a, update, revision, admin).await
            }
        }
    }

    async fn downstream(&mut self) -> Result<Downstream, DbError> {
        match self {
            Session::Sql(c) => WsusServer::downstream(&mut **c).await,
            Session::Api(a) => WsusServer::downstream(&mut **a).await,
        }
    }
}
