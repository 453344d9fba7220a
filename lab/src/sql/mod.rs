//! The SQL Server side of the lab: one TDS listener (and on Windows a local named pipe, as WID)
//! for every emulated SUSDB, each connection routed to its server by the names in its LOGIN7.
//! [`tds`] and [`reply`] are the wire protocol; `session` the PRELOGIN, LOGIN7 and NTLM login;
//! `execute` the statements and procedures of the `susdb` contract; `results` the result sets
//! built from the model.

mod execute;
pub mod reply;
mod results;
mod session;
pub mod tds;

use std::sync::atomic::Ordering;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::sql::tds::packet;
use crate::{Lab, LabError, accept_until, lock, tls};

impl Lab {
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

    pub(crate) async fn connection(self, stream: TcpStream) -> Result<(), tds::ProtocolError> {
        let id = self.shared.next_connection.fetch_add(1, Ordering::Relaxed);
        let result = self.session(stream, id).await;
        self.release(id);
        result
    }

    /// Session-owned application locks go with the connection, as on SQL Server.
    pub(crate) fn release(&self, connection: u64) {
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

    pub(crate) async fn session(
        &self,
        stream: TcpStream,
        id: u64,
    ) -> Result<(), tds::ProtocolError> {
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
            let mut stream = stream;
            let hello = tls::client_hello(&mut stream).await?;
            let profile = self
                .platform_named(hello.name.as_deref(), false)
                .windows
                .strict();
            let (tls, _) = acceptors
                .accept(tls::Kind::Strict, hello, stream, profile)
                .await?;
            let (rd, wr) = tokio::io::split(tls);
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
        let acceptors = match &self.shared.tls {
            Some(acceptors) if encryption != tds::encrypt::NOT_SUP => acceptors,
            _ => return self.login(rd, wr, &prelogin, None, id, None).await,
        };
        let stream = rd
            .reunite(wr)
            .map_err(|e| tds::ProtocolError::Malformed(e.to_string()))?;
        // The TLS a client gets is its server's platform's, found by the host it names: PRELOGIN
        // names none, LOGIN7 comes after the handshake.
        let mut framed = tls::PreloginFramed::new(stream);
        let hello = tls::client_hello(&mut framed).await?;
        let platform = self.platform_named(hello.name.as_deref(), false);
        let profile = platform.windows.tds(platform.sql);
        let (mut tls, _) = acceptors
            .accept(tls::Kind::Tds7, hello, framed, profile)
            .await?;
        tls.get_mut().get_mut().handshake_done();
        if encryption == tds::encrypt::ON {
            let (rd, wr) = tokio::io::split(tls);
            return self.login(rd, wr, &prelogin, None, id, None).await;
        }
        // ENCRYPT_OFF: only LOGIN7 is encrypted, everything after it is plaintext again.
        let login = tds::read_message(&mut tls).await?;
        let stream = tls
            .get_mut()
            .get_mut()
            .take()
            .ok_or_else(|| tds::ProtocolError::Malformed("the socket left TLS".into()))?;
        let (rd, wr) = stream.into_split();
        self.login(rd, wr, &prelogin, Some(login), id, None).await
    }
}
