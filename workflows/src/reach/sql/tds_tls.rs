//! TLS for TDS, made by this tool rather than by tiberius, so that SQL connections follow the
//! one TLS policy of [`crate::reach::tls`]: TLS 1.0 where a server's `tls_min` allows it (SQL
//! Server 2005 speaks nothing newer), and the version and cipher suite negotiated reported.
//!
//! Why a proxy: tiberius chooses its TLS library when it is compiled (rustls here), builds its
//! connector itself and offers no way to pass one in or to read back what was negotiated; rustls
//! has no TLS 1.0. So tiberius is told to speak plaintext (`EncryptionLevel::NotSupported`) and
//! talks to one end of an in-memory pipe; a task on the other end carries its bytes to the
//! server and does what tiberius would have done, per MS-TDS:
//! - TDS 7.x: tiberius's PRELOGIN goes out asking for encryption (`ENCRYPT_REQ` for `encrypt:
//!   required`, `ENCRYPT_OFF` for `off`, as tiberius itself asks, MS-TDS 2.2.6.5); the TLS
//!   handshake is carried inside PRELOGIN packets (3.3.5.1 step 2); the server's PRELOGIN
//!   answer reaches tiberius saying `ENCRYPT_NOT_SUP`, so it logs in over the pipe. With both
//!   sides at `ENCRYPT_OFF` only the LOGIN7 message is encrypted and the connection carries on
//!   in plaintext after it, as tiberius does.
//! - TDS 8.0 (`encrypt: strict`): TLS on the bare socket before anything else, ALPN `tds/8.0`.
//!
//! It may not look into anything but the PRELOGIN messages and the end of LOGIN7.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};
use tokio::net::TcpStream;

use crate::reach::port::{Negotiated, ServerError};
use crate::reach::tls::{HandshakeError, Policy, Retry, TlsStream, too_old};

const PRELOGIN: u8 = 0x12;
const HEADER: usize = 8;
/// PRELOGIN option tokens and ENCRYPTION values (MS-TDS 2.2.6.5).
const OPTION_ENCRYPTION: u8 = 0x01;
const OPTION_END: u8 = 0xFF;
const ENCRYPT_OFF: u8 = 0x00;
const ENCRYPT_ON: u8 = 0x01;
const ENCRYPT_NOT_SUP: u8 = 0x02;
const ENCRYPT_REQ: u8 = 0x03;
/// A TLS flight is sent in PRELOGIN packets of at most this size (SQL Server's default).
const PACKET: usize = 4096;
/// What one TDS message may weigh here: PRELOGIN and LOGIN7 are small.
const MAX_MESSAGE: usize = 1024 * 1024;

/// How a connection is encrypted, from the server's `encrypt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// `off`: the login only, unless the server requires more.
    Login,
    /// `required`: everything.
    Required,
    /// `strict`: TDS 8.0.
    Strict,
}

/// What the handshake settled on, or why the connection was ended, for `connect` to report
/// (tiberius only sees the pipe close).
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub tls: Option<Negotiated>,
    pub error: Option<ServerError>,
}

/// Starts the proxy for `tcp` and returns tiberius's end of the pipe.
pub(crate) fn start(
    tcp: TcpStream,
    mode: Mode,
    policy: Policy,
    host: String,
) -> (DuplexStream, Arc<Mutex<Outcome>>) {
    let (tiberius, proxy) = tokio::io::duplex(64 * 1024);
    let outcome = Arc::new(Mutex::new(Outcome::default()));
    let shared = Arc::clone(&outcome);
    tokio::spawn(async move {
        let settings = Settings { mode, policy, host };
        if let Err(e) = settings.run(tcp, proxy, &shared).await {
            let mut outcome = shared
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            outcome.error.get_or_insert(e);
        }
    });
    (tiberius, outcome)
}

struct Settings {
    mode: Mode,
    policy: Policy,
    host: String,
}

impl Settings {
    async fn run(
        &self,
        tcp: TcpStream,
        mut client: DuplexStream,
        outcome: &Mutex<Outcome>,
    ) -> Result<(), ServerError> {
        let lost = |e: io::Error| ServerError::transient(format!("connection lost: {e}"));
        if self.mode == Mode::Strict {
            let (mut tls, negotiated) = self.handshake(tcp, &[b"tds/8.0"], None).await?;
            record(outcome, negotiated);
            let prelogin = read_message(&mut client).await.map_err(lost)?;
            tls.write_all(&with_encryption(prelogin, ENCRYPT_REQ)?)
                .await
                .map_err(lost)?;
            tls.flush().await.map_err(lost)?;
            let answer = read_message(&mut tls).await.map_err(lost)?;
            client
                .write_all(&with_encryption(answer, ENCRYPT_NOT_SUP)?)
                .await
                .map_err(lost)?;
            tokio::io::copy_bidirectional(&mut client, &mut tls)
                .await
                .map_err(lost)?;
            return Ok(());
        }
        let mut tcp = tcp;
        let asked = if self.mode == Mode::Login {
            ENCRYPT_OFF
        } else {
            ENCRYPT_REQ
        };
        let prelogin = with_encryption(read_message(&mut client).await.map_err(lost)?, asked)?;
        tcp.write_all(&prelogin).await.map_err(lost)?;
        let answer = read_message(&mut tcp).await.map_err(lost)?;
        let login_only = match (asked, encryption_of(&answer)?) {
            (ENCRYPT_OFF, ENCRYPT_OFF) => true,
            (_, ENCRYPT_ON | ENCRYPT_REQ) => false,
            (ENCRYPT_OFF, _) => {
                return Err(ServerError::permanent(
                    "the server offers no encryption, and the login would cross the network \
                     readable: give SQL Server a certificate, or `encrypt: danger-plaintext` on a \
                     network you trust",
                ));
            }
            _ => {
                return Err(ServerError::permanent(
                    "the server does not offer the encryption the topology asks for (`encrypt`): \
                     give SQL Server a certificate, or lower `encrypt` to `off` (only the login \
                     encrypted)",
                ));
            }
        };
        let (mut tls, negotiated) = self.handshake(tcp, &[], Some(&prelogin)).await?;
        record(outcome, negotiated);
        tls.get_mut().framing = false;
        client
            .write_all(&with_encryption(answer, ENCRYPT_NOT_SUP)?)
            .await
            .map_err(lost)?;
        if !login_only {
            tokio::io::copy_bidirectional(&mut client, &mut tls)
                .await
                .map_err(lost)?;
            return Ok(());
        }
        // ENCRYPT_OFF: LOGIN7 through TLS, then everything in plaintext on the bare socket
        // (the TLS session is left without a close_notify, as SQL Server expects).
        let login = read_message(&mut client).await.map_err(lost)?;
        tls.write_all(&login).await.map_err(lost)?;
        tls.flush().await.map_err(lost)?;
        let mut bare = tls
            .get_mut()
            .inner
            .take()
            .ok_or_else(|| ServerError::transient("connection lost after the login"))?;
        tokio::io::copy_bidirectional(&mut client, &mut bare)
            .await
            .map_err(lost)?;
        Ok(())
    }

    /// The handshake on `tcp` (inside PRELOGIN packets after `prelogin` when it is given), said
    /// in topology terms when it fails. After a failure the server is asked which TLS it speaks
    /// over a fresh connection: too old for `tls_min` is said so; new enough with cipher suites
    /// rustls lacks gets one more try through OpenSSL.
    async fn handshake(
        &self,
        tcp: TcpStream,
        alpn: &[&[u8]],
        prelogin: Option<&[u8]>,
    ) -> Result<(TlsStream<Framed>, Negotiated), ServerError> {
        let peer = tcp.peer_addr().ok();
        let framed = prelogin.is_some();
        let failed = match self
            .policy
            .connect(&self.host, Framed::new(tcp, framed), alpn)
            .await
        {
            Ok(done) => return Ok(done),
            Err(HandshakeError::Failed(text)) => text,
            Err(other) => return Err(refusal(other)),
        };
        let transient = || ServerError::transient(format!("TLS: {failed}"));
        let Some(fresh) = reopen(peer, prelogin).await else {
            return Err(transient());
        };
        match self.policy.after_failure(&self.host, fresh, alpn).await {
            Retry::Older(offered) => Err(ServerError::permanent(format!(
                "TLS: {}",
                too_old(&offered, self.policy.min, "sql")
            ))),
            Retry::OpenSsl => {
                let again = reopen(peer, prelogin).await.ok_or_else(transient)?;
                self.policy
                    .connect_openssl(&self.host, again, alpn)
                    .await
                    .map_err(refusal)
            }
            Retry::No => Err(transient()),
        }
    }
}

/// A refused handshake in topology terms.
fn refusal(error: HandshakeError) -> ServerError {
    match error {
        HandshakeError::Certificate(text) => ServerError::permanent(format!(
            "TLS: the server's certificate was rejected ({text}): name the authority that issued \
             it in `ca_file`, or reach the server by a name its certificate holds; `trust_cert: \
             true` skips validation (only on a network you trust)"
        )),
        HandshakeError::Settings(text) => ServerError::permanent(format!("TLS: {text}")),
        HandshakeError::Failed(text) => ServerError::transient(format!("TLS: {text}")),
    }
}

/// A new connection to `peer`, as far as the start of its TLS handshake: after the same
/// PRELOGIN exchange when there is one.
async fn reopen(peer: Option<std::net::SocketAddr>, prelogin: Option<&[u8]>) -> Option<Framed> {
    let mut tcp = TcpStream::connect(peer?).await.ok()?;
    tcp.set_nodelay(true).ok()?;
    if let Some(prelogin) = prelogin {
        tcp.write_all(prelogin).await.ok()?;
        read_message(&mut tcp).await.ok()?;
    }
    Some(Framed::new(tcp, prelogin.is_some()))
}

fn record(outcome: &Mutex<Outcome>, negotiated: Negotiated) {
    outcome
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .tls = Some(negotiated);
}

/// Reads one TDS message (its packets up to the one marked end-of-message), headers included.
async fn read_message<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<Vec<u8>> {
    let mut message = Vec::new();
    loop {
        let mut header = [0u8; HEADER];
        stream.read_exact(&mut header).await?;
        let length = usize::from(u16::from_be_bytes([header[2], header[3]]));
        if length < HEADER || message.len() + length > MAX_MESSAGE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a TDS packet of impossible length",
            ));
        }
        let at = message.len();
        message.extend_from_slice(&header);
        message.resize(at + length, 0);
        stream.read_exact(&mut message[at + HEADER..]).await?;
        if header[1] & 0x01 != 0 {
            return Ok(message);
        }
    }
}

/// Where the ENCRYPTION option's byte is in a single-packet PRELOGIN message.
fn encryption_at(message: &[u8]) -> Option<usize> {
    let payload = message.get(HEADER..)?;
    let mut at = 0;
    while let Some(&token) = payload.get(at) {
        if token == OPTION_END {
            return None;
        }
        let option = payload.get(at..at + 5)?;
        if token == OPTION_ENCRYPTION {
            let offset = usize::from(u16::from_be_bytes([option[1], option[2]]));
            return (offset < payload.len()).then_some(HEADER + offset);
        }
        at += 5;
    }
    None
}

fn not_prelogin() -> ServerError {
    ServerError::permanent("the server's PRELOGIN has no ENCRYPTION option: is this SQL Server?")
}

fn encryption_of(message: &[u8]) -> Result<u8, ServerError> {
    if message.first() != Some(&0x04) && message.first() != Some(&PRELOGIN) {
        return Err(not_prelogin());
    }
    encryption_at(message)
        .and_then(|at| message.get(at).copied())
        .ok_or_else(not_prelogin)
}

fn with_encryption(mut message: Vec<u8>, value: u8) -> Result<Vec<u8>, ServerError> {
    let at = encryption_at(&message).ok_or_else(not_prelogin)?;
    message[at] = value;
    Ok(message)
}

/// The socket under TLS: while `framing`, what TLS writes goes out as PRELOGIN packets (one
/// message per flight, cut at [`PACKET`]) and what comes in PRELOGIN packets is handed to TLS;
/// then bytes pass bare. `inner` is taken back when the connection leaves TLS.
pub(crate) struct Framed {
    inner: Option<TcpStream>,
    framing: bool,
    /// The incoming packet's header as far as read, and its payload still to hand over.
    header: [u8; HEADER],
    header_read: usize,
    payload_left: usize,
    /// A flight being collected, and the packets made of it being written.
    flight: Vec<u8>,
    packets: Vec<u8>,
    sent: usize,
}

impl std::fmt::Debug for Framed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Framed")
            .field("framing", &self.framing)
            .finish_non_exhaustive()
    }
}

impl Framed {
    fn new(tcp: TcpStream, framing: bool) -> Self {
        Framed {
            inner: Some(tcp),
            framing,
            header: [0; HEADER],
            header_read: 0,
            payload_left: 0,
            flight: Vec::new(),
            packets: Vec::new(),
            sent: 0,
        }
    }

    fn socket(&mut self) -> io::Result<Pin<&mut TcpStream>> {
        self.inner
            .as_mut()
            .map(Pin::new)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "the socket left TLS"))
    }
}

impl AsyncRead for Framed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.framing {
            return this.socket()?.poll_read(cx, buf);
        }
        while this.payload_left == 0 {
            while this.header_read < HEADER {
                let mut rest = [0u8; HEADER];
                let want = HEADER - this.header_read;
                let mut part = ReadBuf::new(&mut rest[..want]);
                ready!(this.socket()?.poll_read(cx, &mut part))?;
                let got = part.filled().len();
                if got == 0 {
                    return Poll::Ready(Ok(()));
                }
                this.header[this.header_read..this.header_read + got].copy_from_slice(&rest[..got]);
                this.header_read += got;
            }
            this.header_read = 0;
            if this.header[0] != PRELOGIN && this.header[0] != 0x04 {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the server answered the TLS handshake with something else than PRELOGIN",
                )));
            }
            let length = usize::from(u16::from_be_bytes([this.header[2], this.header[3]]));
            this.payload_left = length.saturating_sub(HEADER);
        }
        let want = this.payload_left.min(buf.remaining());
        let mut part = ReadBuf::new(buf.initialize_unfilled_to(want));
        ready!(this.socket()?.poll_read(cx, &mut part))?;
        let got = part.filled().len();
        if got == 0 {
            return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
        }
        buf.advance(got);
        this.payload_left -= got;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Framed {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.framing {
            this.flight.extend_from_slice(data);
            return Poll::Ready(Ok(data.len()));
        }
        if !this.packets.is_empty() || !this.flight.is_empty() {
            ready!(Pin::new(&mut *this).poll_flush(cx))?;
        }
        this.socket()?.poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.packets.is_empty() && !this.flight.is_empty() {
            let count = this.flight.len().div_ceil(PACKET - HEADER);
            for (i, chunk) in this.flight.chunks(PACKET - HEADER).enumerate() {
                let length = u16::try_from(chunk.len() + HEADER).unwrap_or(u16::MAX);
                let status = u8::from(i + 1 == count);
                let id = u8::try_from((i + 1) % 256).unwrap_or(0);
                this.packets.extend_from_slice(&[PRELOGIN, status]);
                this.packets.extend_from_slice(&length.to_be_bytes());
                this.packets.extend_from_slice(&[0, 0, id, 0]);
                this.packets.extend_from_slice(chunk);
            }
            this.flight.clear();
            this.sent = 0;
        }
        while this.sent < this.packets.len() {
            let at = this.sent;
            let packets = std::mem::take(&mut this.packets);
            let written = this.socket()?.poll_write(cx, &packets[at..]);
            this.packets = packets;
            let n = ready!(written)?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            this.sent += n;
        }
        this.packets.clear();
        this.socket()?.poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_flush(cx))?;
        self.get_mut().socket()?.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal PRELOGIN (VERSION, ENCRYPTION, end).
    fn prelogin_asking(encryption: u8) -> Vec<u8> {
        let payload = [
            0x00,
            0x00,
            0x0B,
            0x00,
            0x06, // VERSION at 11, 6 bytes
            OPTION_ENCRYPTION,
            0x00,
            0x11,
            0x00,
            0x01, // ENCRYPTION at 17, 1 byte
            OPTION_END,
            0,
            0,
            0,
            0,
            0,
            0,
            encryption,
        ];
        let mut message = vec![PRELOGIN, 0x01, 0, 0, 0, 0, 1, 0];
        message.extend_from_slice(&payload);
        let length = u16::try_from(message.len()).unwrap_or(u16::MAX);
        message[2..4].copy_from_slice(&length.to_be_bytes());
        message
    }

    #[test]
    fn the_encryption_option_is_found_and_rewritten_in_a_prelogin() {
        let message = prelogin_asking(ENCRYPT_OFF);
        assert_eq!(encryption_of(&message).ok(), Some(ENCRYPT_OFF));
        let rewritten = with_encryption(message, ENCRYPT_REQ).unwrap_or_default();
        assert_eq!(encryption_of(&rewritten).ok(), Some(ENCRYPT_REQ));
        // Anything that is not a PRELOGIN with an ENCRYPTION option is refused, not guessed.
        assert!(encryption_of(&[0x04, 1, 0, 9, 0, 0, 1, 0, OPTION_END]).is_err());
        assert!(with_encryption(vec![0x12, 1, 0, 8, 0, 0, 1, 0], 0).is_err());
    }
}
