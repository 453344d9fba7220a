//! A TDS connection from its first packet to its requests: PRELOGIN (and TLS as SQL Server does
//! it), LOGIN7 with a SQL login or NTLM, then the request loop. What a request does is
//! `execute`'s.

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::faults::Drop;
use crate::faults::injected_error;
use crate::sql::execute::{Request, Session, state_error};
use crate::sql::reply::{Reply, done};
use crate::sql::tds::{self, Message, packet};
use crate::{Inner, Lab, lock, ntlm};

impl Lab {
    /// PRELOGIN where the transport settles encryption, whatever the client asks: on inside TDS
    /// 8.0's TLS, not supported over a local pipe.
    pub(crate) async fn prelogin<R, W>(
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
    pub(crate) async fn login<R, W>(
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
        // The server's own release (PRELOGIN, before the client named it, had the lab's).
        let version = self.platform(&server).sql;
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
    pub(crate) async fn windows_login(
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

    pub(crate) async fn serve_requests(
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
}
