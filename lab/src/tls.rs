//! TLS on the lab's side of TDS (MS-TDS 2.2.6.5, 3.3.5.1 and TDS 8.0), so a client's encryption
//! settings and certificate validation run end to end against it.
//!
//! TDS 7.x negotiates encryption in PRELOGIN and then carries the TLS handshake *inside* PRELOGIN
//! packets; once the handshake is done, TLS records flow bare on the socket. With ENCRYPT_OFF only
//! the LOGIN7 message is encrypted and the connection goes back to plaintext after it. TDS 8.0
//! ("strict") starts TLS on the bare socket before anything else, with ALPN `tds/8.0`.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use openssl::error::ErrorStack;
use openssl::pkey::{PKey, Private};
use openssl::ssl::{
    AlpnError, Ssl, SslContext, SslContextBuilder, SslMethod, SslOptions, SslSessionCacheMode,
    SslVersion, select_next_proto,
};
use openssl::x509::X509;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_openssl::SslStream;

use crate::platform::{Tls, TlsProfile};
use crate::sql::tds::packet;

const HEADER: usize = 8;
/// Handshake flights are cut into packets of at most this size, as SQL Server's default.
const PACKET: usize = 4096;

/// The lab's certificates and their private key, all PEM.
#[derive(Clone)]
pub struct Identity {
    /// The chain served when the client names no host listed in `by_name` (or no host at all,
    /// as a client of an IP address does).
    pub cert_chain_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    /// Chains for the same key, each for one host name (lower case), chosen by the name the client
    /// asks for (SNI), as each production server has its own certificate.
    pub by_name: Vec<(String, Vec<u8>)>,
}

impl std::fmt::Debug for Identity {
    // Never print the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("names", &self.by_name.len())
            .finish_non_exhaustive()
    }
}

/// One certificate cannot name many more hosts: its size passes what TLS carries in one message.
const MAX_NAMES_IN_ONE_CERTIFICATE: usize = 1000;

impl Identity {
    /// A throwaway certificate authority, and certificates it signs for `hosts` (DNS names or IP
    /// addresses): one per DNS name, and one naming every IP address (a client of an address
    /// sends no name to choose by). Returns the identity and the authority's certificate (PEM) for
    /// the clients to trust; certificate validation then runs exactly as against production.
    pub fn generate(hosts: &[String]) -> Result<(Identity, String), TlsError> {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let failed = |e: rcgen::Error| TlsError::Generate(e.to_string());
        // The servers' key is RSA: the certificates of WSUS 3.0 hosts are RSA, and Schannel on
        // Windows Server 2003 and 2008 offers only RSA cipher suites with TLS 1.0. The throwaway
        // authority signs with ECDSA (P-256), which every client here verifies: signing a
        // thousand certificates with RSA added a second to every rehearsal.
        let ca_key = KeyPair::generate().map_err(failed)?;
        let mut ca = CertificateParams::default();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "susdb-lab throwaway CA");
        let ca = rcgen::CertifiedIssuer::self_signed(ca, ca_key).map_err(failed)?;
        // rcgen's ring backend signs with an RSA key but cannot make one: OpenSSL, which the lab
        // serves TLS with anyway, generates it.
        let rsa = openssl::rsa::Rsa::generate(2048)
            .and_then(PKey::from_rsa)
            .and_then(|k| k.private_key_to_pem_pkcs8())
            .map_err(|e| TlsError::Generate(e.to_string()))?;
        let rsa = String::from_utf8_lossy(&rsa);
        let key = KeyPair::from_pem_and_sign_algo(&rsa, &rcgen::PKCS_RSA_SHA256).map_err(failed)?;
        let certificate = |names: Vec<String>| -> Result<Vec<u8>, TlsError> {
            let mut params = CertificateParams::new(names).map_err(failed)?;
            params
                .distinguished_name
                .push(DnType::CommonName, "susdb-lab");
            Ok(params
                .signed_by(&key, &ca)
                .map_err(failed)?
                .pem()
                .into_bytes())
        };
        let (addresses, names): (Vec<&String>, Vec<&String>) = hosts
            .iter()
            .partition(|h| h.parse::<std::net::IpAddr>().is_ok());
        if addresses.len() > MAX_NAMES_IN_ONE_CERTIFICATE {
            return Err(TlsError::Generate(format!(
                "{} servers are reached by IP address, and one certificate names at most {MAX_NAMES_IN_ONE_CERTIFICATE} of them: give them DNS names in `sql.host`",
                addresses.len()
            )));
        }
        let default = if addresses.is_empty() {
            vec!["susdb-lab".to_string()]
        } else {
            addresses.into_iter().cloned().collect()
        };
        let identity = Identity {
            cert_chain_pem: certificate(default)?,
            key_pem: key.serialize_pem().into_bytes(),
            by_name: names
                .into_iter()
                .map(|name| Ok((name.to_ascii_lowercase(), certificate(vec![name.clone()])?)))
                .collect::<Result<_, TlsError>>()?,
        };
        Ok((identity, ca.pem()))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot generate a certificate: {0}")]
    Generate(String),
    #[error("the TLS certificate: {0}")]
    Certificate(String),
    #[error("the TLS private key: {0}")]
    Key(String),
    #[error("the TLS certificate and key do not go together: {0}")]
    Config(String),
}

/// What the lab serves TLS for: TDS 7.x (TLS inside PRELOGIN), TDS 8.0 (TLS first, ALPN
/// `tds/8.0`), HTTPS for the administration web service (ALPN `http/1.1` when asked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Tds7,
    Strict,
    Https,
}

/// The lab's TLS, with OpenSSL: the maintained library that still serves TLS 1.0 and 1.1,
/// which every WSUS 3.0 host speaks (rustls never implemented them). Each connection gets the
/// certificate of the host it names (SNI) and the versions and cipher suites of that host's
/// platform ([`crate::platform`]).
pub struct Acceptors {
    tds7: SslContext,
    strict: SslContext,
    https: SslContext,
    key: PKey<Private>,
    default: X509,
    by_name: HashMap<String, X509>,
}

impl std::fmt::Debug for Acceptors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acceptors").finish_non_exhaustive()
    }
}

/// What a handshake settled on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// The host the client named (SNI), lower case.
    pub server_name: Option<String>,
    /// `TLSv1`, `TLSv1.2`, ... as OpenSSL names them.
    pub version: String,
    pub cipher: String,
}

fn openssl_version(v: Tls) -> SslVersion {
    match v {
        Tls::V1_0 => SslVersion::TLS1,
        Tls::V1_1 => SslVersion::TLS1_1,
        Tls::V1_2 => SslVersion::TLS1_2,
        Tls::V1_3 => SslVersion::TLS1_3,
    }
}

fn certificate(pem: &[u8]) -> Result<X509, TlsError> {
    X509::stack_from_pem(pem)
        .map_err(|e| TlsError::Certificate(e.to_string()))?
        .into_iter()
        .next()
        .ok_or_else(|| TlsError::Certificate("no CERTIFICATE block in the PEM".into()))
}

impl Acceptors {
    pub fn new(identity: &Identity) -> Result<Acceptors, TlsError> {
        let key = PKey::private_key_from_pem(&identity.key_pem)
            .map_err(|e| TlsError::Key(e.to_string()))?;
        let default = certificate(&identity.cert_chain_pem)?;
        let matches = default
            .public_key()
            .map_err(|e| TlsError::Certificate(e.to_string()))?
            .public_eq(&key);
        if !matches {
            return Err(TlsError::Config(
                "the private key is not the certificate's".into(),
            ));
        }
        let by_name = identity
            .by_name
            .iter()
            .map(|(name, pem)| Ok((name.to_ascii_lowercase(), certificate(pem)?)))
            .collect::<Result<_, TlsError>>()?;
        let context = |alpn: Option<&'static [u8]>| -> Result<SslContext, TlsError> {
            let failed = |e: ErrorStack| TlsError::Config(e.to_string());
            let mut builder = SslContextBuilder::new(SslMethod::tls_server()).map_err(failed)?;
            // The lab resumes no sessions, as it keeps none.
            // Schannel chooses the cipher suite by its own order of preference.
            builder.set_options(SslOptions::NO_TICKET | SslOptions::CIPHER_SERVER_PREFERENCE);
            builder.set_session_cache_mode(SslSessionCacheMode::OFF);
            if let Some(alpn) = alpn {
                builder.set_alpn_select_callback(move |_, offered| {
                    select_next_proto(alpn, offered).ok_or(AlpnError::NOACK)
                });
            }
            Ok(builder.build())
        };
        Ok(Acceptors {
            tds7: context(None)?,
            strict: context(Some(b"\x07tds/8.0"))?,
            // IIS speaks HTTP/1.1 to SOAP clients; the lab's web service serves nothing else.
            https: context(Some(b"\x08http/1.1"))?,
            key,
            default,
            by_name,
        })
    }

    /// Completes the server side of a handshake on `stream`, whose ClientHello was read
    /// ([`client_hello`]), with the TLS `profile` of the host it names and that host's
    /// certificate.
    pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        kind: Kind,
        hello: ClientHello,
        stream: S,
        profile: TlsProfile,
    ) -> io::Result<(SslStream<Rewind<S>>, Negotiated)> {
        let ClientHello { record, name } = hello;
        let context = match kind {
            Kind::Tds7 => &self.tds7,
            Kind::Strict => &self.strict,
            Kind::Https => &self.https,
        };
        let certificate = name
            .as_ref()
            .and_then(|n| self.by_name.get(n))
            .unwrap_or(&self.default);
        let configured = (|| -> Result<Ssl, ErrorStack> {
            let mut ssl = Ssl::new(context)?;
            ssl.set_certificate(certificate)?;
            ssl.set_private_key(&self.key)?;
            // Level 0 allows TLS 1.0 and 1.1 and SHA-1, which OpenSSL 3 refuses above it.
            ssl.set_security_level(0);
            ssl.set_min_proto_version(Some(openssl_version(profile.min)))?;
            ssl.set_max_proto_version(Some(openssl_version(profile.max)))?;
            ssl.set_cipher_list(&format!("{}:@SECLEVEL=0", profile.ciphers))?;
            Ok(ssl)
        })()
        .map_err(io::Error::other)?;
        let mut tls =
            SslStream::new(configured, Rewind::new(record, stream)).map_err(io::Error::other)?;
        Pin::new(&mut tls).accept().await.map_err(|e| {
            io::Error::new(
                io::ErrorKind::ConnectionAborted,
                format!("TLS handshake: {e}"),
            )
        })?;
        let negotiated = Negotiated {
            server_name: name,
            version: tls.ssl().version_str().to_string(),
            cipher: tls
                .ssl()
                .current_cipher()
                .map_or_else(String::new, |c| c.name().to_string()),
        };
        Ok((tls, negotiated))
    }
}

/// A client's first TLS record, read whole, and the host it names (SNI), lower case.
#[derive(Debug, Clone)]
pub struct ClientHello {
    record: Vec<u8>,
    pub name: Option<String>,
}

/// Reads a client's ClientHello from `stream`, to choose what to answer it with.
pub async fn client_hello<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<ClientHello> {
    let record = read_client_hello(stream).await?;
    let name = server_name(&record).map(|n| n.to_ascii_lowercase());
    Ok(ClientHello { record, name })
}

async fn read_client_hello<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut record = vec![0u8; 5];
    stream.read_exact(&mut record).await?;
    if record[0] != 22 {
        return Err(invalid("not a TLS handshake"));
    }
    let length = usize::from(u16::from_be_bytes([record[3], record[4]]));
    record.resize(5 + length, 0);
    stream.read_exact(&mut record[5..]).await?;
    Ok(record)
}

/// The host name a ClientHello asks for (the `server_name` extension, RFC 6066 section 3), if
/// it names one. Anything malformed gives `None`.
fn server_name(record: &[u8]) -> Option<String> {
    let take = |at: &mut usize, n: usize| -> Option<&[u8]> {
        let part = record.get(*at..at.checked_add(n)?)?;
        *at += n;
        Some(part)
    };
    let byte = |at: &mut usize| take(at, 1).map(|b| usize::from(b[0]));
    let short = |at: &mut usize| take(at, 2).map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])));
    // The record header (5); a ClientHello (type 1), its length (3), version (2), random (32).
    let mut at = 5;
    if byte(&mut at)? != 1 {
        return None;
    }
    at += 3 + 2 + 32;
    let session = byte(&mut at)?;
    take(&mut at, session)?;
    let suites = short(&mut at)?;
    take(&mut at, suites)?;
    let compression = byte(&mut at)?;
    take(&mut at, compression)?;
    let end = short(&mut at)? + at;
    while at + 4 <= end {
        let kind = short(&mut at)?;
        let length = short(&mut at)?;
        let mut data = at;
        take(&mut at, length)?;
        if kind == 0 {
            let _list = short(&mut data)?;
            if byte(&mut data)? != 0 {
                return None;
            }
            let name = short(&mut data)?;
            return String::from_utf8(take(&mut data, name)?.to_vec()).ok();
        }
    }
    None
}

/// A stream that first gives back bytes already read from it (the ClientHello, read to choose
/// the certificate), then reads on.
#[derive(Debug)]
pub struct Rewind<S> {
    prefix: Vec<u8>,
    at: usize,
    inner: S,
}

impl<S> Rewind<S> {
    fn new(prefix: Vec<u8>, inner: S) -> Self {
        Rewind {
            prefix,
            at: 0,
            inner,
        }
    }

    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.at < this.prefix.len() {
            let n = (this.prefix.len() - this.at).min(buf.remaining());
            buf.put_slice(&this.prefix[this.at..this.at + n]);
            this.at += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// The socket under a TDS 7.x TLS handshake: what TLS writes goes out in PRELOGIN packets and
/// what comes in PRELOGIN packets is given to TLS; after [`PreloginFramed::handshake_done`],
/// bytes pass through untouched.
#[derive(Debug)]
pub struct PreloginFramed<S> {
    /// `None` once taken back ([`PreloginFramed::take`]).
    inner: Option<S>,
    framing: bool,
    header: [u8; HEADER],
    header_read: usize,
    /// Bytes of the current incoming packet's payload still to hand to TLS.
    payload_left: usize,
    /// Outgoing TLS bytes waiting for a flush, and the packets made of them being written.
    pending: Vec<u8>,
    out: Vec<u8>,
    written: usize,
}

impl<S> PreloginFramed<S> {
    pub fn new(inner: S) -> Self {
        PreloginFramed {
            inner: Some(inner),
            framing: true,
            header: [0; HEADER],
            header_read: 0,
            payload_left: 0,
            pending: Vec::new(),
            out: Vec::new(),
            written: 0,
        }
    }

    pub fn handshake_done(&mut self) {
        self.framing = false;
    }

    /// The socket back, for a connection that leaves TLS (TDS 7.x with ENCRYPT_OFF after its
    /// LOGIN7); the TLS session over it is dropped unused.
    pub fn take(&mut self) -> Option<S> {
        self.inner.take()
    }
}

fn taken() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the socket left TLS")
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

impl<S: AsyncRead + Unpin> AsyncRead for PreloginFramed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.framing {
            return Pin::new(this.inner.as_mut().ok_or_else(taken)?).poll_read(cx, buf);
        }
        while this.payload_left == 0 {
            while this.header_read < HEADER {
                let mut rest = ReadBuf::new(&mut this.header[this.header_read..]);
                ready!(Pin::new(this.inner.as_mut().ok_or_else(taken)?).poll_read(cx, &mut rest))?;
                if rest.filled().is_empty() {
                    return Poll::Ready(Ok(())); // end of stream
                }
                this.header_read += rest.filled().len();
            }
            this.header_read = 0;
            if this.header[0] != packet::PRELOGIN {
                return Poll::Ready(Err(invalid(
                    "expected a PRELOGIN packet during the TLS handshake",
                )));
            }
            let length = usize::from(u16::from_be_bytes([this.header[2], this.header[3]]));
            this.payload_left = length
                .checked_sub(HEADER)
                .ok_or_else(|| invalid("PRELOGIN packet shorter than its header"))?;
        }
        let want = this.payload_left.min(buf.remaining());
        let mut part = ReadBuf::new(buf.initialize_unfilled_to(want));
        ready!(Pin::new(this.inner.as_mut().ok_or_else(taken)?).poll_read(cx, &mut part))?;
        let got = part.filled().len();
        if got == 0 {
            return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
        }
        buf.advance(got);
        this.payload_left -= got;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for PreloginFramed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if !this.framing && this.out.is_empty() && this.pending.is_empty() {
            return Pin::new(this.inner.as_mut().ok_or_else(taken)?).poll_write(cx, data);
        }
        this.pending.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.out.is_empty() && !this.pending.is_empty() {
            // One TLS flight, as one PRELOGIN message.
            let chunks: Vec<&[u8]> = this.pending.chunks(PACKET - HEADER).collect();
            for (i, chunk) in chunks.iter().enumerate() {
                let length = u16::try_from(chunk.len() + HEADER).unwrap_or(u16::MAX);
                let last = i + 1 == chunks.len();
                this.out.push(packet::PRELOGIN);
                this.out.push(u8::from(last));
                this.out.extend_from_slice(&length.to_be_bytes());
                this.out
                    .extend_from_slice(&[0, 0, u8::try_from((i + 1) % 256).unwrap_or(0), 0]);
                this.out.extend_from_slice(chunk);
            }
            this.pending.clear();
            this.written = 0;
        }
        while this.written < this.out.len() {
            let n = ready!(
                Pin::new(this.inner.as_mut().ok_or_else(taken)?)
                    .poll_write(cx, &this.out[this.written..])
            )?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            this.written += n;
        }
        this.out.clear();
        Pin::new(this.inner.as_mut().ok_or_else(taken)?).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_flush(cx))?;
        Pin::new(self.get_mut().inner.as_mut().ok_or_else(taken)?).poll_shutdown(cx)
    }
}
