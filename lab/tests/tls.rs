//! Encryption against the lab, through tiberius's own TLS and certificate validation: every
//! level a topology can ask for, what goes over the wire in each, and the refusals. Not on
//! Windows, where the lab's tests take tiberius without its TLS (lab/Cargo.toml).
#![cfg(not(windows))]
#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on the first unexpected error"
)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use susdb::sql;
use susdb_lab::LabConfig;
use susdb_lab::platform::Windows;
use susdb_lab::tls::Identity;
use susdb_lab::version::SqlVersion;
use tiberius::{AuthMethod, Client, Config, EncryptionLevel};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::compat::TokioAsyncWriteCompatExt;

mod support;
use support::Running;

const USER: &str = "wsus_repair";
const PASSWORD: &str = "s3cret!";

/// A serving lab, and the throwaway authority its certificates chain to, as a file for
/// `trust_cert_ca`.
struct Encrypted {
    lab: Running,
    ca_file: String,
    _dir: tempfile::TempDir,
}

/// The release these tests emulate: SQL Server 2022, the first with TDS 8.0 (`strict`), so that
/// every level a topology can ask for exists.
const RELEASE: SqlVersion = SqlVersion::V2022;

/// A lab whose certificates name only `sql-hq.lab.example`, or none at all.
async fn start(with_certificate: bool) -> Encrypted {
    start_naming(with_certificate.then(|| vec![HQ.to_string()])).await
}

/// A lab with certificates for `names`, or none.
async fn start_naming(names: Option<Vec<String>>) -> Encrypted {
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    let tls = names.map(|names| {
        let (identity, ca) = Identity::generate(&names).unwrap();
        std::fs::write(&ca_file, ca).unwrap();
        identity
    });
    let lab = support::start(LabConfig {
        credentials: Some((USER.into(), PASSWORD.into())),
        tls,
        sql_version: RELEASE,
        // Its Windows enables TLS 1.2 (and 1.3 for TDS 8.0), which tiberius's rustls needs.
        windows: Windows::V2022,
        ..LabConfig::default()
    })
    .await;
    Encrypted {
        lab,
        ca_file: ca_file.to_string_lossy().into_owned(),
        _dir: dir,
    }
}

fn config(host: &str, encryption: EncryptionLevel, ca_file: Option<&str>) -> Config {
    let mut config = Config::new();
    config.host(host);
    config.database("SUSDB");
    config.authentication(AuthMethod::sql_server(USER, PASSWORD));
    config.encryption(encryption);
    if let Some(ca) = ca_file {
        config.trust_cert_ca(ca);
    }
    config
}

/// Logs in through `to` and asks the server's version: the answer, or the error's text.
async fn version(to: SocketAddr, config: Config) -> Result<String, String> {
    let tcp = TcpStream::connect(to).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let mut client = Client::connect(config, tcp.compat_write())
        .await
        .map_err(|e| e.to_string())?;
    let row = client
        .simple_query(sql::SERVER_VERSION)
        .await
        .map_err(|e| e.to_string())?
        .into_row()
        .await
        .map_err(|e| e.to_string())?
        .unwrap();
    Ok(row.try_get::<&str, _>(0).unwrap().unwrap().to_string())
}

/// A loopback relay to `to` that keeps every byte the client sent: the wire, as an observer on
/// the network would see it. Each relayed connection ends when either side closes.
async fn tap(to: SocketAddr) -> (SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = TcpStream::connect(to).await.unwrap();
            let (mut client_rd, mut client_wr) = client.into_split();
            let (mut server_rd, mut server_wr) = server.into_split();
            let record = record.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16384];
                while let Ok(n) = client_rd.read(&mut buf).await {
                    if n == 0 || server_wr.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    record.lock().unwrap().extend_from_slice(&buf[..n]);
                }
                let _ = server_wr.shutdown().await;
            });
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut server_rd, &mut client_wr).await;
            });
        }
    });
    (addr, seen)
}

fn utf16(text: &str) -> Vec<u8> {
    text.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

const HQ: &str = "sql-hq.lab.example";

#[tokio::test]
async fn every_encryption_level_logs_in_with_the_certificate_validated() {
    let r = start(true).await;
    for level in [
        EncryptionLevel::Required,
        EncryptionLevel::On,
        EncryptionLevel::Off,
        EncryptionLevel::Strict,
        EncryptionLevel::NotSupported,
    ] {
        let answer = version(r.lab.addr, config(HQ, level, Some(&r.ca_file))).await;
        assert_eq!(
            answer.as_deref(),
            Ok(RELEASE.product_version()),
            "{level:?}"
        );
    }
}

#[tokio::test]
async fn an_observer_sees_nothing_of_an_encrypted_session_and_only_the_queries_of_login_only_encryption()
 {
    let r = start(true).await;
    let login_name = utf16(USER);
    let query = utf16(sql::SERVER_VERSION);
    for (level, login_visible, query_visible) in [
        (EncryptionLevel::NotSupported, true, true),
        (EncryptionLevel::Off, false, true),
        (EncryptionLevel::Required, false, false),
        (EncryptionLevel::Strict, false, false),
    ] {
        let (via, seen) = tap(r.lab.addr).await;
        version(via, config(HQ, level, Some(&r.ca_file)))
            .await
            .unwrap();
        let wire = seen.lock().unwrap().clone();
        assert_eq!(
            contains(&wire, &login_name),
            login_visible,
            "{level:?}: login"
        );
        assert_eq!(contains(&wire, &query), query_visible, "{level:?}: query");
    }
}

#[tokio::test]
async fn a_certificate_from_another_authority_or_for_another_name_is_refused() {
    let r = start(true).await;
    let other = start(true).await;
    for level in [EncryptionLevel::Required, EncryptionLevel::Strict] {
        let e = version(r.lab.addr, config(HQ, level, Some(&other.ca_file)))
            .await
            .unwrap_err();
        assert!(e.contains("certificate"), "{level:?}: {e}");
        // The lab's certificate names sql-hq only.
        let e = version(
            r.lab.addr,
            config("sql-branch.lab.example", level, Some(&r.ca_file)),
        )
        .await
        .unwrap_err();
        assert!(e.contains("certificate"), "{level:?}: {e}");
    }
    // Trusting blindly (`trust_cert`) gets through both.
    let mut blind = config("sql-branch.lab.example", EncryptionLevel::Required, None);
    blind.trust_cert();
    assert!(version(r.lab.addr, blind).await.is_ok());
}

/// SQL Server 2005 never got TLS 1.2 (KB3135244), on any Windows: a client that allows only TLS
/// 1.2 and newer (tiberius through rustls) is refused, in PRELOGIN and with TDS 8.0 alike.
#[tokio::test]
async fn sql_server_2005_speaks_only_tls_1_0_and_has_no_tds_8() {
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    let (identity, ca) = Identity::generate(&[HQ.to_string()]).unwrap();
    std::fs::write(&ca_file, ca).unwrap();
    let lab = support::start(LabConfig {
        credentials: Some((USER.into(), PASSWORD.into())),
        tls: Some(identity),
        // Even on a Windows whose Schannel speaks TLS 1.2.
        windows: Windows::V2016,
        ..LabConfig::default()
    })
    .await;
    let ca = ca_file.to_string_lossy();
    let required = version(lab.addr, config(HQ, EncryptionLevel::Required, Some(&ca))).await;
    let refused = required.unwrap_err();
    assert!(
        refused.contains("ProtocolVersion") || refused.contains("HandshakeFailure"),
        "{refused}"
    );
    let strict = version(lab.addr, config(HQ, EncryptionLevel::Strict, Some(&ca))).await;
    assert!(strict.is_err(), "{strict:?}");
}

#[tokio::test]
async fn without_a_certificate_the_lab_refuses_encryption_and_a_client_requiring_it_stops() {
    let r = start(false).await;
    let e = version(r.lab.addr, config(HQ, EncryptionLevel::Required, None))
        .await
        .unwrap_err();
    assert!(e.contains("encryption"), "{e}");
    let plain = version(r.lab.addr, config(HQ, EncryptionLevel::NotSupported, None)).await;
    assert_eq!(plain.as_deref(), Ok(RELEASE.product_version()));
}

#[tokio::test]
async fn thousands_of_hosts_each_get_a_certificate_of_their_own() {
    // One certificate naming 3,000 hosts would pass the size of a TLS handshake message.
    let mut names: Vec<String> = (0..3000)
        .map(|i| format!("sql-{i:04}.lab.example"))
        .collect();
    names.push(HQ.to_string());
    let r = start_naming(Some(names)).await;
    let answer = version(
        r.lab.addr,
        config(HQ, EncryptionLevel::Required, Some(&r.ca_file)),
    )
    .await;
    assert_eq!(answer.as_deref(), Ok(RELEASE.product_version()));
    // The lab has no server by that name, but the handshake got as far as the login.
    let e = version(
        r.lab.addr,
        config(
            "sql-2999.lab.example",
            EncryptionLevel::Strict,
            Some(&r.ca_file),
        ),
    )
    .await
    .unwrap_err();
    assert!(e.contains("18456") || e.contains("no server"), "{e}");
}

#[test]
fn more_hosts_by_address_than_one_certificate_holds_are_refused_with_the_way_out() {
    let addresses: Vec<String> = (0..1001)
        .map(|i| format!("10.0.{}.{}", i / 256, i % 256))
        .collect();
    let e = Identity::generate(&addresses).unwrap_err();
    assert!(e.to_string().contains("give them DNS names"), "{e}");
}

#[test]
fn a_certificate_that_is_not_pem_is_refused_with_what_is_wrong() {
    let e = susdb_lab::tls::Acceptors::new(&Identity {
        cert_chain_pem: b"not a certificate".to_vec(),
        key_pem: Identity::generate(&[]).unwrap().0.key_pem,
        by_name: Vec::new(),
    })
    .unwrap_err();
    assert!(e.to_string().contains("certificate"), "{e}");
}
