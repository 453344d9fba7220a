//! One TLS policy for both transports ([`Policy`]): which certificates a server may present,
//! decided once from its topology entry (`trust_cert`, `ca_file`) and the run's lab authority
//! (`--connect-via-ca`), and the oldest version it may speak (`tls_min`). The handshake is made
//! here for both adapters: through rustls for TLS 1.2 and newer (the default), through OpenSSL
//! when `tls_min` allows TLS 1.0 or 1.1, which rustls never implemented and which WSUS 3.0
//! hosts speak. What it settled on ([`Negotiated`]) is reported per server.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use topology::TlsMin;

use crate::reach::port::Negotiated;

/// Whose certificates a connection accepts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Trust {
    /// A lab with a certificate, validated against the lab's own authority alone: no OS root
    /// signs a lab's certificate, so the OS store is not read.
    Lab(PathBuf),
    /// `trust_cert: true`: any certificate, the handshake still signed by the key it holds.
    Any,
    /// `ca_file`: the authority that issued the server's certificate.
    Authority(PathBuf),
    /// The operating system's roots and the compiled-in ones (an enterprise CA that signed a
    /// WSUS certificate lives in the OS store).
    System,
}

impl Trust {
    /// The policy for a server: a lab's authority first (a rehearsal validates as production
    /// would, against the lab), then `trust_cert`, then `ca_file`, else the system's roots.
    pub fn of(lab_ca: Option<&Path>, trust_cert: bool, ca_file: Option<&Path>) -> Trust {
        match (lab_ca, ca_file) {
            (Some(ca), _) => Trust::Lab(ca.to_path_buf()),
            _ if trust_cert => Trust::Any,
            (None, Some(ca)) => Trust::Authority(ca.to_path_buf()),
            (None, None) => Trust::System,
        }
    }

    /// The rustls client configuration for this policy, offering `alpn` (empty: none).
    pub fn rustls_config(&self, alpn: &[&[u8]]) -> Result<rustls::ClientConfig, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let mut config = match self {
            Trust::Lab(ca) | Trust::Authority(ca) => builder
                .with_root_certificates(roots_from(ca)?)
                .with_no_client_auth(),
            Trust::Any => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(TrustAny(provider)))
                .with_no_client_auth(),
            Trust::System => {
                let mut roots = rustls::RootCertStore::empty();
                roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
                // Certificates the store cannot parse are skipped.
                roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
                builder.with_root_certificates(roots).with_no_client_auth()
            }
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(config)
    }
}

/// A certificate verifier that accepts any certificate (`trust_cert: true`), still checking
/// that the handshake is signed by the key the certificate holds.
#[derive(Debug)]
struct TrustAny(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for TrustAny {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn roots_from(path: &Path) -> Result<rustls::RootCertStore, String> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let certificates = rustls::pki_types::CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    for certificate in certificates {
        let certificate = certificate.map_err(|e| format!("{} is not PEM: {e}", path.display()))?;
        roots
            .add(certificate)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("{} holds no certificate", path.display()));
    }
    Ok(roots)
}

/// How one connection's TLS is made: whose certificates it accepts, and the oldest version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub trust: Trust,
    pub min: TlsMin,
}

/// A client TLS stream, through rustls (TLS 1.2 and newer, the default) or OpenSSL (the
/// versions rustls never implemented, for a server whose `tls_min` allows them).
#[derive(Debug)]
pub enum TlsStream<S> {
    Rustls(Box<tokio_rustls::client::TlsStream<S>>),
    OpenSsl(Box<tokio_openssl::SslStream<S>>),
}

impl<S> TlsStream<S> {
    /// The stream under TLS.
    pub fn get_mut(&mut self) -> &mut S {
        match self {
            TlsStream::Rustls(s) => s.get_mut().0,
            TlsStream::OpenSsl(s) => s.get_mut(),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            TlsStream::Rustls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            TlsStream::OpenSsl(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            TlsStream::Rustls(s) => Pin::new(s.as_mut()).poll_write(cx, data),
            TlsStream::OpenSsl(s) => Pin::new(s.as_mut()).poll_write(cx, data),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            TlsStream::Rustls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            TlsStream::OpenSsl(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            TlsStream::Rustls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            TlsStream::OpenSsl(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// What follows a failed handshake ([`Policy::after_failure`]).
#[derive(Debug)]
pub enum Retry {
    /// The server speaks only this, older than `tls_min` allows.
    Older(Negotiated),
    /// Once more, through OpenSSL.
    OpenSsl,
    /// Nothing: report the failure.
    No,
}

/// Why a handshake failed, sorted for the message the operator reads.
#[derive(Debug)]
pub enum HandshakeError {
    /// The server's certificate was refused (the reason).
    Certificate(String),
    /// The settings could not be made (a CA file that cannot be read, a bad host name).
    Settings(String),
    /// Anything else: the server refused or broke off the handshake.
    Failed(String),
}

impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandshakeError::Certificate(e)
            | HandshakeError::Settings(e)
            | HandshakeError::Failed(e) => f.write_str(e),
        }
    }
}

impl Policy {
    /// The handshake on `stream` as client of `host` (SNI and the name the certificate must
    /// hold), offering `alpn` (empty: none).
    pub async fn connect<S: AsyncRead + AsyncWrite + Unpin + Send>(
        &self,
        host: &str,
        stream: S,
        alpn: &[&[u8]],
    ) -> Result<(TlsStream<S>, Negotiated), HandshakeError> {
        if self.min >= TlsMin::V1_2 {
            self.rustls(host, stream, alpn).await
        } else {
            self.openssl(host, stream, alpn, true).await
        }
    }

    async fn rustls<S: AsyncRead + AsyncWrite + Unpin + Send>(
        &self,
        host: &str,
        stream: S,
        alpn: &[&[u8]],
    ) -> Result<(TlsStream<S>, Negotiated), HandshakeError> {
        let config = self.rustls_shared(alpn)?;
        let name = rustls::pki_types::ServerName::try_from(host.to_string())
            .map_err(|e| HandshakeError::Settings(format!("`{host}` is not a host name: {e}")))?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, stream)
            .await
            .map_err(|e| {
                let text = e.to_string();
                if let Some(reason) = text.strip_prefix("invalid peer certificate: ") {
                    HandshakeError::Certificate(reason.to_string())
                } else if text.to_ascii_lowercase().contains("certificate") {
                    HandshakeError::Certificate(text)
                } else {
                    HandshakeError::Failed(text)
                }
            })?;
        let connection = tls.get_ref().1;
        let negotiated = Negotiated {
            version: match connection.protocol_version() {
                Some(rustls::ProtocolVersion::TLSv1_3) => "TLS 1.3".into(),
                _ => "TLS 1.2".into(),
            },
            cipher: connection
                .negotiated_cipher_suite()
                .map_or_else(String::new, |s| format!("{:?}", s.suite())),
        };
        Ok((TlsStream::Rustls(Box::new(tls)), negotiated))
    }

    /// Through OpenSSL, from `self.min` on. `validate: false` only to learn which version a
    /// server speaks after a refused handshake (nothing is sent over it).
    async fn openssl<S: AsyncRead + AsyncWrite + Unpin + Send>(
        &self,
        host: &str,
        stream: S,
        alpn: &[&[u8]],
        validate: bool,
    ) -> Result<(TlsStream<S>, Negotiated), HandshakeError> {
        use openssl::ssl::SslVersion;
        let settings = |e: openssl::error::ErrorStack| HandshakeError::Settings(e.to_string());
        let verify = validate && self.trust != Trust::Any;
        let connector = self.openssl_connector(alpn, verify)?;
        let ssl = connector
            .configure()
            .map_err(settings)?
            .verify_hostname(verify)
            .into_ssl(host)
            .map_err(settings)?;
        let mut tls = tokio_openssl::SslStream::new(ssl, stream).map_err(settings)?;
        if let Err(e) = Pin::new(&mut tls).connect().await {
            let verified = tls.ssl().verify_result();
            return Err(if verified != openssl::x509::X509VerifyResult::OK {
                HandshakeError::Certificate(verified.error_string().to_string())
            } else {
                HandshakeError::Failed(e.to_string())
            });
        }
        let negotiated = Negotiated {
            version: match tls.ssl().version2() {
                Some(SslVersion::TLS1) => "TLS 1.0",
                Some(SslVersion::TLS1_1) => "TLS 1.1",
                Some(SslVersion::TLS1_3) => "TLS 1.3",
                _ => "TLS 1.2",
            }
            .into(),
            cipher: tls.ssl().current_cipher().map_or_else(String::new, |c| {
                c.standard_name().unwrap_or(c.name()).to_string()
            }),
        };
        Ok((TlsStream::OpenSsl(Box::new(tls)), negotiated))
    }

    /// The rustls configuration for this trust, built once per run and shared (with the system's
    /// store, building it reads every certificate of the OS store again).
    fn rustls_shared(&self, alpn: &[&[u8]]) -> Result<Arc<rustls::ClientConfig>, HandshakeError> {
        type Key = (Trust, Vec<Vec<u8>>);
        static BUILT: OnceLock<Mutex<HashMap<Key, Arc<rustls::ClientConfig>>>> = OnceLock::new();
        let key = (
            self.trust.clone(),
            alpn.iter().map(|p| p.to_vec()).collect(),
        );
        let built = BUILT.get_or_init(Mutex::default);
        let mut built = built
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(config) = built.get(&key) {
            return Ok(Arc::clone(config));
        }
        let config = Arc::new(
            self.trust
                .rustls_config(alpn)
                .map_err(HandshakeError::Settings)?,
        );
        built.insert(key, Arc::clone(&config));
        Ok(config)
    }

    /// The OpenSSL connector for this policy, built once per run and shared: building one
    /// reads the authority (or the system's store) again, which cost some 50 ms of CPU per
    /// connection (BENCHMARKS.md).
    fn openssl_connector(
        &self,
        alpn: &[&[u8]],
        verify: bool,
    ) -> Result<openssl::ssl::SslConnector, HandshakeError> {
        use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode, SslVersion};
        type Key = (Trust, TlsMin, Vec<Vec<u8>>, bool);
        static BUILT: OnceLock<Mutex<HashMap<Key, SslConnector>>> = OnceLock::new();
        let key = (
            self.trust.clone(),
            self.min,
            alpn.iter().map(|p| p.to_vec()).collect(),
            verify,
        );
        let built = BUILT.get_or_init(Mutex::default);
        if let Some(connector) = built
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&key)
        {
            return Ok(connector.clone());
        }
        let settings = |e: openssl::error::ErrorStack| HandshakeError::Settings(e.to_string());
        let mut builder = SslConnector::builder(SslMethod::tls_client()).map_err(settings)?;
        // Security level 0 is what lets OpenSSL 3 speak TLS 1.0 and 1.1 and accept the SHA-1
        // signatures of their handshakes; the certificate is still validated below.
        builder.set_security_level(0);
        builder
            .set_cipher_list("DEFAULT:@SECLEVEL=0")
            .map_err(settings)?;
        builder
            .set_min_proto_version(Some(match self.min {
                TlsMin::V1_0 => SslVersion::TLS1,
                TlsMin::V1_1 => SslVersion::TLS1_1,
                TlsMin::V1_2 => SslVersion::TLS1_2,
            }))
            .map_err(settings)?;
        match &self.trust {
            Trust::Lab(ca) | Trust::Authority(ca) if verify => builder
                .set_ca_file(ca)
                .map_err(|e| HandshakeError::Settings(format!("{}: {e}", ca.display())))?,
            Trust::System if verify => builder.set_default_verify_paths().map_err(settings)?,
            _ => builder.set_verify(SslVerifyMode::NONE),
        }
        if !alpn.is_empty() {
            let wire: Vec<u8> = alpn
                .iter()
                .flat_map(|p| {
                    std::iter::once(u8::try_from(p.len()).unwrap_or(0)).chain(p.iter().copied())
                })
                .collect();
            builder.set_alpn_protos(&wire).map_err(settings)?;
        }
        let connector = builder.build();
        built
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key, connector.clone());
        Ok(connector)
    }

    /// The handshake through OpenSSL whatever the version: for a server that speaks a version
    /// this policy allows but only with cipher suites rustls lacks ([`Policy::after_failure`]).
    /// The certificate is validated as by [`Policy::connect`].
    pub async fn connect_openssl<S: AsyncRead + AsyncWrite + Unpin + Send>(
        &self,
        host: &str,
        stream: S,
        alpn: &[&[u8]],
    ) -> Result<(TlsStream<S>, Negotiated), HandshakeError> {
        self.openssl(host, stream, alpn, true).await
    }

    /// What to do after [`Policy::connect`] failed (not on the certificate): ask the server,
    /// over the fresh connection `stream`, which TLS it speaks. Older than `min`: refuse, saying
    /// so. As new as `min` allows, while rustls made the first try: the server's cipher suites
    /// are ones rustls does not implement (Windows Server 2008 R2 with TLS 1.2 enabled offers
    /// AES-CBC only), so try once more through OpenSSL.
    pub async fn after_failure<S: AsyncRead + AsyncWrite + Unpin + Send>(
        &self,
        host: &str,
        stream: S,
        alpn: &[&[u8]],
    ) -> Retry {
        match Policy::offered(host, stream, alpn).await {
            Some(offered) if below(&offered, self.min) => Retry::Older(offered),
            Some(_) if self.min >= TlsMin::V1_2 => Retry::OpenSsl,
            _ => Retry::No,
        }
    }

    /// After a refused handshake: which version the server speaks, learned over a fresh
    /// connection `stream` with TLS 1.0 allowed and nothing validated or sent. `None` when that
    /// fails too.
    pub async fn offered<S: AsyncRead + AsyncWrite + Unpin + Send>(
        host: &str,
        stream: S,
        alpn: &[&[u8]],
    ) -> Option<Negotiated> {
        let probe = Policy {
            trust: Trust::Any,
            min: TlsMin::V1_0,
        };
        probe
            .openssl(host, stream, alpn, false)
            .await
            .ok()
            .map(|(_, negotiated)| negotiated)
    }
}

/// Whether `offered` is older than `min` allows.
pub fn below(offered: &Negotiated, min: TlsMin) -> bool {
    let rank = |v: &str| match v {
        "TLS 1.0" => 0,
        "TLS 1.1" => 1,
        _ => 2,
    };
    rank(&offered.version) < rank(&format!("TLS {}", min.name()))
}

/// What to tell the operator when a server speaks only TLS older than `min` allows: which
/// version, why, and the way forward. `section` is `sql` or `api`.
pub fn too_old(offered: &Negotiated, min: TlsMin, section: &str) -> String {
    let way = if section == "api" {
        "or reach the web service over plain HTTP as the WSUS console does (`api.tls: false`, \
         port 8530 on the WSUS web site, 80 on the default web site)"
    } else {
        "or run the repair on the server itself with `wsus-reset export-sql`"
    };
    format!(
        "the server speaks at most {} and this run accepts TLS {} or newer (SQL Server 2005 and \
         Windows Server 2003, 2008 and 2008 R2 as installed stop at TLS 1.0). To accept it, add \
         `tls_min: \"{}\"` under this server's `{section}` (or `defaults.{section}`): the \
         certificate is still validated; {way}",
        offered.version,
        min.name(),
        offered.version.trim_start_matches("TLS "),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lab_authority_comes_first_then_trust_cert_then_ca_file() {
        let lab = Path::new("/lab/ca.pem");
        let ca = Path::new("/corp/root.pem");
        assert_eq!(Trust::of(Some(lab), true, Some(ca)), Trust::Lab(lab.into()));
        assert_eq!(Trust::of(None, true, Some(ca)), Trust::Any);
        assert_eq!(
            Trust::of(None, false, Some(ca)),
            Trust::Authority(ca.into())
        );
        assert_eq!(Trust::of(None, false, None), Trust::System);
    }

    #[test]
    fn an_authority_file_that_holds_no_certificate_is_named() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap_or_else(|e| panic!("{e}"));
        let e = Trust::Authority(empty.clone())
            .rustls_config(&[])
            .err()
            .unwrap_or_default();
        assert_eq!(e, format!("{} holds no certificate", empty.display()));
    }
}
