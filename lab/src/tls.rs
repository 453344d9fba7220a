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
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::crypto::aws_lc_rs::sign::any_supported_type;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{ServerConfig, SupportedProtocolVersion, version};

use crate::sql::tds::packet;

/// The ALPN protocol a TDS 8.0 client asks for.
const TDS_ALPN: &[u8] = b"tds/8.0";
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
        let ca_key = KeyPair::generate().map_err(failed)?;
        let mut ca = CertificateParams::default();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "susdb-lab throwaway CA");
        let ca = rcgen::CertifiedIssuer::self_signed(ca, ca_key).map_err(failed)?;
        let key = KeyPair::generate().map_err(failed)?;
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

/// The acceptors a lab with a certificate needs: TDS 7.x (TLS inside PRELOGIN), TDS 8.0, and
/// HTTPS for the administration web service.
#[derive(Clone)]
pub struct Acceptors {
    pub tds7: TlsAcceptor,
    pub strict: TlsAcceptor,
    pub https: TlsAcceptor,
}

impl std::fmt::Debug for Acceptors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acceptors").finish_non_exhaustive()
    }
}

/// Picks the certificate by the host name the client asks for.
#[derive(Debug)]
struct ByName {
    default: Arc<CertifiedKey>,
    names: HashMap<String, Arc<CertifiedKey>>,
}

impl ResolvesServerCert for ByName {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let named = hello
            .server_name()
            .and_then(|name| self.names.get(&name.to_ascii_lowercase()));
        Some(Arc::clone(named.unwrap_or(&self.default)))
    }
}

fn chain(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Certificate(e.to_string()))?;
    if chain.is_empty() {
        return Err(TlsError::Certificate(
            "no CERTIFICATE block in the PEM".into(),
        ));
    }
    Ok(chain)
}

impl Acceptors {
    pub fn new(identity: &Identity) -> Result<Acceptors, TlsError> {
        let key = PrivateKeyDer::from_pem_slice(&identity.key_pem)
            .map_err(|e| TlsError::Key(e.to_string()))?;
        let signing = any_supported_type(&key).map_err(|e| TlsError::Key(e.to_string()))?;
        let certified = |pem: &[u8]| -> Result<Arc<CertifiedKey>, TlsError> {
            let certified = CertifiedKey::new(chain(pem)?, Arc::clone(&signing));
            certified
                .keys_match()
                .map_err(|e| TlsError::Config(e.to_string()))?;
            Ok(Arc::new(certified))
        };
        let resolver = Arc::new(ByName {
            default: certified(&identity.cert_chain_pem)?,
            names: identity
                .by_name
                .iter()
                .map(|(name, pem)| Ok((name.to_ascii_lowercase(), certified(pem)?)))
                .collect::<Result<_, TlsError>>()?,
        });
        let config = |alpn: Option<&[u8]>| -> TlsAcceptor {
            // TLS 1.2 inside PRELOGIN, as SQL Server does: with TLS 1.3, tiberius's last
            // handshake flight reached the lab without its PRELOGIN framing. TDS 8.0 and HTTPS
            // have no framing and take TLS 1.3.
            let versions: &[&SupportedProtocolVersion] = if alpn.is_some() {
                &[&version::TLS13, &version::TLS12]
            } else {
                &[&version::TLS12]
            };
            let mut config = ServerConfig::builder_with_protocol_versions(versions)
                .with_no_client_auth()
                .with_cert_resolver(resolver.clone());
            // The lab resumes no sessions.
            config.send_tls13_tickets = 0;
            config.alpn_protocols = alpn.into_iter().map(<[u8]>::to_vec).collect();
            TlsAcceptor::from(Arc::new(config))
        };
        Ok(Acceptors {
            tds7: config(None),
            strict: config(Some(TDS_ALPN)),
            // IIS speaks HTTP/1.1 to SOAP clients; the lab's web service serves nothing else.
            https: config(Some(b"http/1.1")),
        })
    }
}

/// The socket under a TDS 7.x TLS handshake: what TLS writes goes out in PRELOGIN packets and
/// what comes in PRELOGIN packets is given to TLS; after [`PreloginFramed::handshake_done`],
/// bytes pass through untouched.
#[derive(Debug)]
pub struct PreloginFramed<S> {
    inner: S,
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
            inner,
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

    pub fn into_inner(self) -> S {
        self.inner
    }
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
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        while this.payload_left == 0 {
            while this.header_read < HEADER {
                let mut rest = ReadBuf::new(&mut this.header[this.header_read..]);
                ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rest))?;
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
        ready!(Pin::new(&mut this.inner).poll_read(cx, &mut part))?;
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
            return Pin::new(&mut this.inner).poll_write(cx, data);
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
            let n = ready!(Pin::new(&mut this.inner).poll_write(cx, &this.out[this.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            this.written += n;
        }
        this.out.clear();
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_flush(cx))?;
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
