//! One TLS policy for both transports: which certificates a server may present, decided once
//! from its topology entry (`trust_cert`, `ca_file`) and the run's lab authority
//! (`--connect-via-ca`), then applied to tiberius's TLS (SQL) and to rustls (the web service).
//! A change of trust (or, next, of protocol versions) is made here, not in each adapter.

use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Whose certificates a connection accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// A lab with a certificate, validated against the lab's own authority: no OS root signs a
    /// lab's certificate, so the OS store is not read (tiberius reads it again for every
    /// connection, which made a rehearsal of 1,000 servers ten times slower).
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

    /// Sets tiberius's trust to this policy (tiberius builds its TLS connector itself).
    pub fn configure_tiberius(&self, config: &mut tiberius::Config) {
        match self {
            Trust::Lab(ca) => {
                config.trust_webpki_roots();
                config.trust_cert_ca(ca.to_string_lossy());
            }
            Trust::Any => config.trust_cert(),
            Trust::Authority(ca) => config.trust_cert_ca(ca.to_string_lossy()),
            // tiberius's default: the OS store.
            Trust::System => {}
        }
    }

    /// The rustls client configuration for this policy, offering `alpn` (empty: none).
    pub fn rustls_config(&self, alpn: &[&[u8]]) -> Result<rustls::ClientConfig, String> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
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
