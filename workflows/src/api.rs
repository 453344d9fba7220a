//! A WSUS server reached the way the WSUS console reaches it: its administration web service
//! (ApiRemoting30, MS-WSUSAR), SOAP 1.1 over HTTP or HTTPS with Windows authentication.
//!
//! Sources (`shared/docs/wsus-web-services.md`; the WSDL a real server serves is
//! `shared/data/wsus/ApiRemoting30-ws2022.wsdl`): the path, namespace, quoted SOAPAction and
//! document/literal bodies with qualified children (W1, W3); the operations and their element
//! names and types (W1); `ExecuteSPSetConfiguration` as a read-modify-write of the whole
//! configuration row, every element echoed as read (W3); `ExecuteSPDeclineUpdate` and
//! `ExecuteSPDeployUpdate1` as the API's Decline and Approve send them, "not approved" (detect
//! only) as deployment action 2 and the console's no-deadline value (W3, W4); the row layouts of
//! `minimalProperties` and of deployments (W3 and W4 agree); a fault's useful message after the
//! last `--->` (W3); 403 for a user outside the WSUS Administrators role (W3).
//!
//! These names are written here, apart from the lab's (`susdb-lab`'s `api.rs`), so that the
//! client and the lab cannot be wrong together by sharing one list.
//!
//! One HTTP/1.1 connection per session: NTLM authenticates a connection, not a request (MS-NLMP;
//! IIS keeps the authentication for the connection's later requests).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Request, StatusCode};
use quick_xml::events::{BytesDecl, BytesEnd, BytesStart, BytesText, Event};
use tokio::net::TcpStream;
use topology::{ApiTarget, Auth, Server};

use crate::connect::{ConnectOptions, SettingsError, read_secret};
use crate::db::{Approval, DbError, Downstream, Observed, Registered, Revision, UpdateState};
use crate::reach::WsusServer;

const NS: &str = "http://www.microsoft.com/SoftwareDistribution/Server/ApiRemotingWebService";
const PATH: &str = "/ApiRemoting30/WebService.asmx";
const SOAP_NS: &str = "http://schemas.xmlsoap.org/soap/envelope/";
const XSI_NS: &str = "http://www.w3.org/2001/XMLSchema-instance";

/// `GetCurrentUserRole` of a WSUS administrator. The enum's numbers are not public (its members
/// are Administrator, Reporter, Unauthorized: UpdateServerUserRole, aa354557); a public client
/// treats 0 as no role (W3). Harsher than known: anything but 1 is refused before any change.
const ROLE_ADMINISTRATOR: i64 = 1;

/// "Not approved", which on the wire is 2 (W3: with 3 the server creates a block); the same value
/// as SUSDB's `ActionID` for detect-only.
const ACTION_NOT_APPROVED: i32 = susdb::action::DETECT_ONLY;

/// The deadline the Windows console sends for "no deadline" (W3).
const NO_DEADLINE: &str = "9999-12-31T23:59:59.997";

/// A response larger than this is not an answer to anything the repair asks.
const MAX_RESPONSE: usize = 16 * 1024 * 1024;

/// An element of a request or of a parsed response.
#[derive(Debug, Clone, PartialEq)]
pub struct Element {
    pub name: String,
    /// `xsi:nil="true"`.
    pub nil: bool,
    pub text: String,
    pub children: Vec<Element>,
}

impl Element {
    fn text(name: &str, text: impl Into<String>) -> Element {
        Element {
            name: name.into(),
            nil: false,
            text: text.into(),
            children: Vec::new(),
        }
    }

    fn with(name: &str, children: Vec<Element>) -> Element {
        Element {
            name: name.into(),
            nil: false,
            text: String::new(),
            children,
        }
    }

    fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    fn path(&self, names: &[&str]) -> Option<&Element> {
        names.iter().try_fold(self, |at, name| at.child(name))
    }
}

/// The SOAP 1.1 request for `operation`, written by an XML writer (every text escaped).
fn request_xml(operation: &str, params: &[Element]) -> Vec<u8> {
    fn write(w: &mut quick_xml::Writer<Vec<u8>>, e: &Element) -> std::io::Result<()> {
        let mut start = BytesStart::new(e.name.as_str());
        if e.nil {
            start.push_attribute(("xsi:nil", "true"));
            return w.write_event(Event::Empty(start));
        }
        w.write_event(Event::Start(start))?;
        if e.children.is_empty() {
            w.write_event(Event::Text(BytesText::new(&e.text)))?;
        }
        for c in &e.children {
            write(w, c)?;
        }
        w.write_event(Event::End(BytesEnd::new(e.name.as_str())))
    }
    let mut w = quick_xml::Writer::new(Vec::new());
    let written = (|| {
        w.write_event(Event::Decl(BytesDecl::new("1.0", Some("utf-8"), None)))?;
        let mut env = BytesStart::new("soap:Envelope");
        env.push_attribute(("xmlns:soap", SOAP_NS));
        env.push_attribute(("xmlns:xsi", XSI_NS));
        w.write_event(Event::Start(env))?;
        w.write_event(Event::Start(BytesStart::new("soap:Body")))?;
        let mut op = BytesStart::new(operation);
        op.push_attribute(("xmlns", NS));
        w.write_event(Event::Start(op))?;
        for p in params {
            write(&mut w, p)?;
        }
        w.write_event(Event::End(BytesEnd::new(operation)))?;
        w.write_event(Event::End(BytesEnd::new("soap:Body")))?;
        w.write_event(Event::End(BytesEnd::new("soap:Envelope")))
    })();
    debug_assert!(written.is_ok(), "writing to a Vec does not fail");
    w.into_inner()
}

/// The whole document as a tree of elements by local name (responses are small).
fn parse_xml(body: &[u8]) -> Result<Element, String> {
    let mut reader = quick_xml::Reader::from_reader(body);
    let mut stack = vec![Element::with("#document", Vec::new())];
    let mut buf = Vec::new();
    let element = |e: &BytesStart<'_>| Element {
        name: String::from_utf8_lossy(e.local_name().as_ref()).into_owned(),
        nil: e.attributes().flatten().any(|a| {
            a.key.local_name().as_ref() == b"nil" && matches!(a.value.as_ref(), b"true" | b"1")
        }),
        text: String::new(),
        children: Vec::new(),
    };
    loop {
        let event = reader
            .read_event_into(&mut buf)
            .map_err(|e| format!("the answer is not XML: {e}"))?;
        match event {
            Event::Start(e) => stack.push(element(&e)),
            Event::Empty(e) => {
                let done = element(&e);
                if let Some(parent) = stack.last_mut() {
                    parent.children.push(done);
                }
            }
            Event::Text(t) => {
                let text = t
                    .decode()
                    .map_err(|e| format!("the answer is not XML: {e}"))?;
                if let Some(at) = stack.last_mut() {
                    at.text.push_str(&text);
                }
            }
            Event::GeneralRef(r) => {
                let entity = format!("&{};", r.decode().map_err(|e| e.to_string())?);
                let text = quick_xml::escape::unescape(&entity).map_err(|e| e.to_string())?;
                if let Some(at) = stack.last_mut() {
                    at.text.push_str(&text);
                }
            }
            Event::CData(c) => {
                if let Some(at) = stack.last_mut() {
                    at.text.push_str(&String::from_utf8_lossy(&c));
                }
            }
            Event::End(_) => {
                let done = stack.pop().ok_or("unbalanced XML")?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(done),
                    None => return Err("unbalanced XML".into()),
                }
            }
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    match stack.pop() {
        Some(doc) if stack.is_empty() => Ok(doc),
        _ => Err("the answer ends inside an element".into()),
    }
}

/// The useful part of a SOAP fault: the .NET message after the last `--->` (W3).
fn fault_message(fault: &Element) -> String {
    let text = fault
        .child("faultstring")
        .map_or("", |f| f.text.trim())
        .to_string();
    let useful = text.rsplit("--->").next().unwrap_or(&text).trim();
    // `System.Data.SqlClient.SqlException: message` -> `message (SqlException)`.
    match useful.split_once(": ") {
        Some((exception, message))
            if exception.starts_with("System.") && !exception.contains(' ') =>
        {
            let short = exception.rsplit('.').next().unwrap_or(exception);
            format!("{} ({short})", message.trim())
        }
        _ => useful.to_string(),
    }
}

/// SQL Server's own words for the errors worth another try (1205 deadlock victim, -2 timeout,
/// 1222 lock timeout), as a web service passes them on inside a fault.
fn transient_fault(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("deadlock") || m.contains("timeout expired") || m.contains("lock request time out")
}

/// The connection: plaintext, or TLS validated as the topology says.
trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

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

/// The TLS client configuration: the lab's authority (`--connect-via-ca`), or the server's
/// `ca_file`, or the operating system's roots and the compiled-in ones; `trust_cert` skips
/// validation.
fn tls_config(target: &ApiTarget, lab_ca: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let mut config = match (lab_ca, &target.ca_file) {
        (Some(ca), _) => builder
            .with_root_certificates(roots_from(ca)?)
            .with_no_client_auth(),
        _ if target.trust_cert => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(TrustAny(provider)))
            .with_no_client_auth(),
        (None, Some(ca)) => builder
            .with_root_certificates(roots_from(ca)?)
            .with_no_client_auth(),
        (None, None) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            // An enterprise CA that signed a WSUS certificate is in the OS store, not in the
            // compiled-in one; certificates the store cannot parse are skipped.
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Says a failed TLS handshake in topology terms.
fn tls_failure(origin: &str, e: &std::io::Error) -> DbError {
    let text = e.to_string();
    if text.contains("certificate") || text.contains("Certificate") {
        DbError::permanent(format!(
            "TLS to {origin}: the server's certificate was rejected ({text}): name the authority \
             that issued it in `api.ca_file`, or reach the server by a name its certificate \
             holds; `trust_cert: true` skips validation (only on a network you trust)"
        ))
    } else {
        DbError::transient(format!("TLS to {origin}: {text}"))
    }
}

/// The NTLM exchange of one connection (MS-NLMP through sspi-rs, the library tiberius uses).
struct Ntlm {
    context: sspi::Ntlm,
    credentials: Option<sspi::AuthIdentityBuffers>,
    spn: String,
}

impl Ntlm {
    fn new(account: &str, password: String, host: &str) -> Result<Ntlm, String> {
        use sspi::{AuthIdentity, CredentialUse, Sspi, Username};
        let (domain, user) = match account.split_once('\\') {
            Some((domain, user)) => (Some(domain), user),
            None => (None, account),
        };
        let username = Username::new(user, domain).map_err(|e| format!("`{account}`: {e}"))?;
        let identity = AuthIdentity {
            username,
            password: password.into(),
        };
        let mut context = sspi::Ntlm::new();
        let acquired = context
            .acquire_credentials_handle()
            .with_credential_use(CredentialUse::Outbound)
            .with_auth_data(&identity)
            .execute(&mut context)
            .map_err(|e| e.to_string())?;
        Ok(Ntlm {
            context,
            credentials: acquired.credentials_handle,
            spn: format!("HTTP/{host}"),
        })
    }

    /// The next token: NEGOTIATE for `None`, AUTHENTICATE for the server's CHALLENGE.
    fn step(&mut self, challenge: Option<&[u8]>) -> Result<Vec<u8>, String> {
        use sspi::{
            BufferType, ClientRequestFlags, DataRepresentation, SecurityBuffer, Sspi, SspiImpl,
        };
        let mut input = vec![SecurityBuffer::new(
            challenge.map(<[u8]>::to_vec).unwrap_or_default(),
            BufferType::Token,
        )];
        let mut output = vec![SecurityBuffer::new(Vec::new(), BufferType::Token)];
        let mut builder = self
            .context
            .initialize_security_context()
            .with_credentials_handle(&mut self.credentials)
            .with_context_requirements(ClientRequestFlags::ALLOCATE_MEMORY)
            .with_target_data_representation(DataRepresentation::Native)
            .with_target_name(&self.spn)
            .with_input(&mut input)
            .with_output(&mut output);
        SspiImpl::initialize_security_context_impl(&mut self.context, &mut builder)
            .and_then(|mut r| r.resolve_to_result())
            .map_err(|e| e.to_string())?;
        Ok(std::mem::take(&mut output[0].buffer))
    }
}

/// The process's own Windows identity over SSPI (Windows only, as for SQL).
#[cfg(windows)]
struct Integrated(winauth::windows::NtlmSspi);

#[cfg(windows)]
impl Integrated {
    fn new(host: &str) -> Result<Integrated, String> {
        winauth::windows::NtlmSspiBuilder::new()
            .target_spn(&format!("HTTP/{host}"))
            .build()
            .map(Integrated)
            .map_err(|e| e.to_string())
    }

    fn step(&mut self, challenge: Option<&[u8]>) -> Result<Vec<u8>, String> {
        use winauth::NextBytes;
        self.0
            .next_bytes(challenge)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "SSPI produced no token".to_string())
    }
}

/// How this session proves who it is.
enum Login {
    Password(Box<Ntlm>),
    #[cfg(windows)]
    Integrated(Integrated),
}

impl Login {
    fn step(&mut self, challenge: Option<&[u8]>) -> Result<Vec<u8>, String> {
        match self {
            Login::Password(ntlm) => ntlm.step(challenge),
            #[cfg(windows)]
            Login::Integrated(sspi) => sspi.step(challenge),
        }
    }
}

fn login_for(api: &ApiTarget, options: &ConnectOptions) -> Result<(String, Login), SettingsError> {
    if let Some((user, password)) = &options.lab_windows_login {
        let ntlm = Ntlm::new(user, password.clone(), &api.host).map_err(SettingsError::Ntlm)?;
        return Ok((user.clone(), Login::Password(Box::new(ntlm))));
    }
    match &api.auth {
        Auth::Windows { user, password } | Auth::Sql { user, password } => {
            let password = read_secret(user, password)?;
            let ntlm = Ntlm::new(user, password, &api.host).map_err(SettingsError::Ntlm)?;
            Ok((user.clone(), Login::Password(Box::new(ntlm))))
        }
        #[cfg(windows)]
        Auth::Integrated => Ok((
            "the Windows identity of this process".into(),
            Login::Integrated(Integrated::new(&api.host).map_err(SettingsError::Ntlm)?),
        )),
        #[cfg(not(windows))]
        Auth::Integrated => Err(SettingsError::ApiAuthUnavailable),
    }
}

/// A WSUS server's administration web service, over one authenticated connection.
pub struct ApiSession {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    server: String,
    origin: String,
    /// The `Host` header: the topology's `api.host` (with the port when not the scheme's).
    host: String,
    user: String,
    /// `GetCurrentUserRole`, asked on the request that completed the login.
    role: i64,
    /// The configuration row as last read, every element: written back whole with one change.
    row: Option<Vec<Element>>,
    /// The topology asks for HTTPS, but `--api-via` sends this session to a loopback lab in
    /// plain HTTP (no `--connect-via-ca`).
    lab_plaintext: bool,
}

impl std::fmt::Debug for ApiSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiSession")
            .field("server", &self.server)
            .field("origin", &self.origin)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// The address, scheme and trust for `api`: `--api-via` sends the connection to a lab while
/// the request still names the server; a loopback lab without its authority is plaintext, as
/// for SQL.
fn route(api: &ApiTarget, options: &ConnectOptions) -> (Option<SocketAddr>, bool) {
    let via = options.api_via;
    let lab_plaintext =
        via.is_some_and(|a| a.ip().is_loopback()) && options.connect_via_ca.is_none();
    (via, api.tls && !lab_plaintext)
}

/// Opens a connection to `server`'s web service and logs in, within the connect timeout.
pub async fn open(server: &Server, options: &ConnectOptions) -> Result<ApiSession, DbError> {
    let api = server
        .api
        .as_ref()
        .ok_or_else(|| DbError::permanent(format!("{} has no `api`", server.name)))?;
    let (user, login) = login_for(api, options).map_err(|e| DbError::permanent(e.to_string()))?;
    let (via, tls) = route(api, options);
    let scheme = if tls { "https" } else { "http" };
    let origin = format!("{scheme}://{}:{}", api.host, api.port);
    let attempt = async {
        let tcp = match via {
            Some(addr) => TcpStream::connect(addr).await.map_err(|e| {
                DbError::transient(format!("cannot connect to {addr} (--api-via): {e}"))
            })?,
            None => TcpStream::connect((api.host.as_str(), api.port))
                .await
                .map_err(|e| DbError::transient(format!("cannot connect to {origin}: {e}")))?,
        };
        tcp.set_nodelay(true)
            .map_err(|e| DbError::transient(e.to_string()))?;
        let stream: Box<dyn Stream> = if tls {
            let lab_ca = via.and(options.connect_via_ca.as_deref());
            let config = tls_config(api, lab_ca).map_err(DbError::permanent)?;
            let name = rustls::pki_types::ServerName::try_from(api.host.clone())
                .map_err(|e| DbError::permanent(format!("`api.host` {}: {e}", api.host)))?;
            let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
            Box::new(
                connector
                    .connect(name, tcp)
                    .await
                    .map_err(|e| tls_failure(&origin, &e))?,
            )
        } else {
            Box::new(tcp)
        };
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| DbError::transient(format!("{origin}: {e}")))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "web service connection ended");
            }
        });
        let default_port = if tls { 443 } else { 80 };
        let mut session = ApiSession {
            sender,
            server: server.name.clone(),
            host: if api.port == default_port {
                api.host.clone()
            } else {
                format!("{}:{}", api.host, api.port)
            },
            origin: origin.clone(),
            user,
            role: 0,
            row: None,
            lab_plaintext: api.tls && !tls,
        };
        session.role = session.log_in(login).await?;
        Ok::<_, DbError>(session)
    };
    tokio::time::timeout(options.connect_timeout, attempt)
        .await
        .map_err(|_| DbError::timeout("connecting", options.connect_timeout))?
        .map_err(|e| DbError {
            message: format!("login to {origin}: {}", e.message),
            ..e
        })
}

/// An HTTP answer, its body read whole.
struct Answer {
    status: StatusCode,
    /// An NTLM CHALLENGE, and the scheme it came under (`NTLM`, or `Negotiate` carrying NTLM).
    challenge: Option<(&'static str, Vec<u8>)>,
    /// The schemes `WWW-Authenticate` offers.
    offers: Vec<String>,
    body: Bytes,
}

impl ApiSession {
    async fn send(
        &mut self,
        operation: &str,
        body: &[u8],
        authorization: Option<String>,
    ) -> Result<Answer, DbError> {
        let mut request = Request::post(PATH)
            .header(hyper::header::HOST, &self.host)
            .header(hyper::header::CONTENT_TYPE, "text/xml; charset=utf-8")
            .header("SOAPAction", format!("\"{NS}/{operation}\""));
        if let Some(value) = authorization {
            request = request.header(hyper::header::AUTHORIZATION, value);
        }
        let request = request
            .body(Full::new(Bytes::copy_from_slice(body)))
            .map_err(|e| DbError::permanent(e.to_string()))?;
        let lost = |e: hyper::Error| DbError::transient(format!("connection lost: {e}"));
        self.sender.ready().await.map_err(lost)?;
        let response = self.sender.send_request(request).await.map_err(lost)?;
        let offers = response
            .headers()
            .get_all(hyper::header::WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_string)
            .collect::<Vec<_>>();
        let status = response.status();
        let body = http_body_util::Limited::new(response.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| DbError::transient(format!("the answer could not be read: {e}")))?
            .to_bytes();
        let challenge = offers.iter().find_map(|v| {
            let (scheme, token) = ["NTLM", "Negotiate"]
                .into_iter()
                .find_map(|scheme| Some((scheme, v.strip_prefix(scheme)?.strip_prefix(' ')?)))?;
            let token = base64::engine::general_purpose::STANDARD
                .decode(token.trim())
                .ok()?;
            Some((scheme, token))
        });
        let offers = offers
            .iter()
            .filter_map(|v| v.split_whitespace().next().map(str::to_string))
            .collect();
        Ok(Answer {
            status,
            challenge,
            offers,
            body,
        })
    }

    /// NTLM on this connection (NEGOTIATE, the server's CHALLENGE on a 401, AUTHENTICATE),
    /// the last leg carrying `GetCurrentUserRole`: the login costs two exchanges and answers
    /// the role. NTLM is offered first; a site that offers only `Negotiate` gets the same NTLM
    /// tokens under that scheme (SPNEGO takes a raw NTLM token; Kerberos is not spoken). A
    /// server that asks for no authentication answers the first request.
    async fn log_in(&mut self, mut login: Login) -> Result<i64, DbError> {
        const OPERATION: &str = "GetCurrentUserRole";
        let body = request_xml(OPERATION, &[]);
        let token = |scheme: &str, t: &[u8]| {
            format!(
                "{scheme} {}",
                base64::engine::general_purpose::STANDARD.encode(t)
            )
        };
        let failed = |e: String| DbError::permanent(format!("NTLM: {e}"));
        let negotiate = login.step(None).map_err(failed)?;
        let mut first = self
            .send(OPERATION, &body, Some(token("NTLM", &negotiate)))
            .await?;
        let negotiate_only = first.offers.iter().any(|o| o == "Negotiate")
            && !first.offers.iter().any(|o| o == "NTLM");
        if first.status == StatusCode::UNAUTHORIZED && first.challenge.is_none() && negotiate_only {
            first = self
                .send(OPERATION, &body, Some(token("Negotiate", &negotiate)))
                .await?;
        }
        let answer = match (first.status, first.challenge) {
            (StatusCode::UNAUTHORIZED, Some((scheme, challenge))) => {
                let authenticate = login.step(Some(&challenge)).map_err(failed)?;
                self.send(OPERATION, &body, Some(token(scheme, &authenticate)))
                    .await?
            }
            (StatusCode::UNAUTHORIZED, None) if first.offers.is_empty() => {
                return Err(DbError::permanent(
                    "the web service offers no Windows authentication (WWW-Authenticate): \
                     enable it on the ApiRemoting30 virtual directory",
                ));
            }
            (status, challenge) => Answer {
                status,
                challenge,
                offers: first.offers,
                body: first.body,
            },
        };
        let response = self.answer(OPERATION, answer)?;
        let text = response
            .child("GetCurrentUserRoleResult")
            .map(|r| r.text.trim().to_string())
            .unwrap_or_default();
        text.parse::<i64>().map_err(|_| {
            DbError::permanent(format!(
                "GetCurrentUserRole answered `{text}`, not a number"
            ))
        })
    }

    /// The `{operation}Response` element of an answer, or the error it says.
    fn answer(&self, operation: &str, answer: Answer) -> Result<Element, DbError> {
        match answer.status {
            StatusCode::UNAUTHORIZED => {
                return Err(DbError::permanent(format!(
                    "login failed for {} (HTTP 401): check the account and its password",
                    self.user
                )));
            }
            // IIS's 403.4: the site requires SSL, and this request came over plain HTTP.
            StatusCode::FORBIDDEN
                if String::from_utf8_lossy(&answer.body)
                    .to_ascii_lowercase()
                    .contains("ssl is required") =>
            {
                let fix = if self.lab_plaintext {
                    "give --connect-via-ca with the lab's authority (a loopback lab without it \
                     is reached in plain HTTP)"
                } else {
                    "set `api.tls: true` and the port of the site's HTTPS binding (8531 or 443)"
                };
                return Err(DbError::permanent(format!(
                    "{} requires HTTPS (HTTP 403.4, SSL is required): {fix}",
                    self.origin
                )));
            }
            StatusCode::FORBIDDEN => {
                return Err(DbError::permanent(format!(
                    "{} is not a WSUS administrator on {} (HTTP 403): add the account to the \
                     WSUS Administrators group of that server",
                    self.user, self.server
                )));
            }
            StatusCode::BAD_GATEWAY
            | StatusCode::SERVICE_UNAVAILABLE
            | StatusCode::GATEWAY_TIMEOUT
            | StatusCode::REQUEST_TIMEOUT => {
                return Err(DbError::transient(format!(
                    "{operation}: HTTP {} from {}",
                    answer.status, self.origin
                )));
            }
            _ => {}
        }
        // A fault is read from the body whatever the status (ASMX sends it with 500).
        let not_soap = |why: &str| {
            let shown: String = String::from_utf8_lossy(&answer.body)
                .chars()
                .take(200)
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            DbError::permanent(format!(
                "{operation}: HTTP {} from {}, {why}: {}",
                answer.status,
                self.origin,
                shown.trim()
            ))
        };
        let document = parse_xml(&answer.body).map_err(|e| not_soap(&e))?;
        let body = document
            .path(&["Envelope", "Body"])
            .ok_or_else(|| not_soap("not a SOAP answer"))?;
        if let Some(fault) = body.child("Fault") {
            let message = fault_message(fault);
            let transient = transient_fault(&message);
            return Err(DbError {
                transient,
                code: None,
                message: format!("{operation}: {message}"),
            });
        }
        if !answer.status.is_success() {
            return Err(DbError::permanent(format!(
                "{operation}: HTTP {} from {}",
                answer.status, self.origin
            )));
        }
        body.child(&format!("{operation}Response"))
            .cloned()
            .ok_or_else(|| DbError::permanent(format!("{operation}: no {operation}Response")))
    }

    async fn call(&mut self, operation: &str, params: &[Element]) -> Result<Element, DbError> {
        let body = request_xml(operation, params);
        let answer = self.send(operation, &body, None).await?;
        self.answer(operation, answer)
    }

    async fn configuration(&mut self) -> Result<Vec<Element>, DbError> {
        let response = self.call("ExecuteSPGetConfiguration", &[]).await?;
        let row = response
            .path(&["ExecuteSPGetConfigurationResult", "Configuration"])
            .ok_or_else(|| DbError::permanent("ExecuteSPGetConfiguration: no Configuration row"))?
            .children
            .clone();
        self.row = Some(row.clone());
        Ok(row)
    }

    /// `ExecuteSPGetRevisions`: each revision (`minimalProperties` index 1) with whether it is
    /// latest (24) and whether the update is declined (22).
    async fn revisions(&mut self, update: &str) -> Result<Vec<(Revision, bool)>, DbError> {
        let response = self
            .call(
                "ExecuteSPGetRevisions",
                &[
                    Element::text("preferredCulture", "en"),
                    Element::text("updateId", update.to_ascii_lowercase()),
                ],
            )
            .await?;
        let Some(rows) = response.path(&["ExecuteSPGetRevisionsResult", "minimalProperties"])
        else {
            return Ok(Vec::new());
        };
        rows.children
            .iter()
            .map(|row| {
                let cells = cells(row);
                let number = cell_int(&cells, 1)
                    .ok_or_else(|| bad_row("ExecuteSPGetRevisions", "RevisionNumber (1)"))?;
                Ok((
                    Revision {
                        number,
                        latest: cell_bool(&cells, 24).unwrap_or(false),
                    },
                    cell_bool(&cells, 22).unwrap_or(false),
                ))
            })
            .collect()
    }

    /// `ExecuteSPGetDeploymentsByUpdate1`: the live approvals of one revision (row: 2 action,
    /// 9 RevisionNumber, 10 TargetGroupId).
    async fn approvals(&mut self, update: &str, revision: i32) -> Result<Vec<Approval>, DbError> {
        let response = self
            .call(
                "ExecuteSPGetDeploymentsByUpdate1",
                &[revision_id("id", update, revision)],
            )
            .await?;
        let Some(rows) = response.child("ExecuteSPGetDeploymentsByUpdate1Result") else {
            return Ok(Vec::new());
        };
        rows.children
            .iter()
            .map(|row| {
                let what = "ExecuteSPGetDeploymentsByUpdate1";
                let cells = cells(row);
                let target_group = cells
                    .get(10)
                    .filter(|c| !c.nil)
                    .map(|c| c.text.trim().to_ascii_uppercase())
                    .ok_or_else(|| bad_row(what, "TargetGroupId (10)"))?;
                Ok(Approval {
                    // The web service's rows carry a deployment GUID, not SUSDB's number.
                    deployment_id: 0,
                    revision: cell_int(&cells, 9).unwrap_or(revision),
                    // The rows have no TargetGroupTypeID: the Downstream Servers group is the
                    // one group of type 1 (susdb.md).
                    target_group_type: if target_group == susdb::groups::DOWNSTREAM_SERVERS {
                        susdb::target_group_type::DOWNSTREAM_SERVER
                    } else {
                        susdb::target_group_type::COMPUTER
                    },
                    target_group,
                    action: cell_int(&cells, 2).ok_or_else(|| bad_row(what, "action (2)"))?,
                })
            })
            .collect()
    }
}

impl WsusServer for ApiSession {
    /// Refuses, before any change, a user without the administrator role (asked on the
    /// request that completed the login).
    async fn refusals(&mut self) -> Result<Vec<String>, DbError> {
        Ok(if self.role == ROLE_ADMINISTRATOR {
            Vec::new()
        } else {
            vec![format!(
                "{} is not a WSUS administrator on {} (GetCurrentUserRole answered {}, not \
                 Administrator): add the account to the WSUS Administrators group of that server",
                self.user, self.server, self.role
            )]
        })
    }

    /// What the probe reads: the configuration row, the update's revisions, and the approvals
    /// of each revision.
    async fn probe(&mut self, update: &str) -> Result<Observed, DbError> {
        let row = self.configuration().await?;
        let field = |name: &str| {
            row.iter()
                .find(|e| e.name == name)
                .filter(|e| !e.nil)
                .map(|e| e.text.trim().to_string())
        };
        let flag = |name: &str| -> Result<bool, DbError> {
            match field(name).as_deref() {
                Some("true" | "1") => Ok(true),
                Some("false" | "0") => Ok(false),
                _ => Err(DbError::permanent(format!(
                    "the configuration row has no usable {name}"
                ))),
            }
        };
        let replica = flag("ReplicaMode")?;
        let sync_from_microsoft_update = flag("SyncToMU")?;
        let upstream_server = field("UpstreamServerName").filter(|s| !s.is_empty());
        let upstream_port = field("ServerPortNumber").and_then(|p| p.parse().ok());
        let revisions = self.revisions(update).await?;
        let update = if revisions.is_empty() {
            None
        } else {
            let declined = revisions.iter().any(|(_, declined)| *declined);
            let mut approvals = Vec::new();
            for (revision, _) in &revisions {
                approvals.extend(self.approvals(update, revision.number).await?);
            }
            Some(UpdateState {
                revisions: revisions.into_iter().map(|(r, _)| r).collect(),
                declined,
                approvals,
            })
        };
        Ok(Observed {
            sql_version: String::new(),
            schema_version: None,
            replica,
            upstream_server,
            upstream_port,
            sync_from_microsoft_update,
            update,
        })
    }

    /// `ExecuteSPSetConfiguration` with the row as last read and `ReplicaMode` changed, then the
    /// row read again: what the server then holds.
    async fn set_replica_mode(&mut self, replica: bool) -> Result<bool, DbError> {
        let row = match self.row.take() {
            Some(row) => row,
            None => self.configuration().await?,
        };
        let mut changed = false;
        let row: Vec<Element> = row
            .into_iter()
            .map(|mut e| {
                if e.name == "ReplicaMode" {
                    e.text = replica.to_string();
                    e.nil = false;
                    changed = true;
                }
                e
            })
            .collect();
        if !changed {
            return Err(DbError::permanent(
                "the configuration row has no ReplicaMode: this is not a WSUS 3.0 web service",
            ));
        }
        let empty = |name: &str| Element::with(name, Vec::new());
        self.call(
            "ExecuteSPSetConfiguration",
            &[
                Element::with("row", row),
                empty("listTrue"),
                empty("listFalse"),
                empty("ussListTrue"),
                empty("ussListFalse"),
                empty("programKeys"),
            ],
        )
        .await?;
        let read = self.configuration().await?;
        read.iter()
            .find(|e| e.name == "ReplicaMode")
            .map(|e| matches!(e.text.trim(), "true" | "1"))
            .ok_or_else(|| DbError::permanent("ReplicaMode could not be read back"))
    }

    /// `ExecuteSPDeclineUpdate` (IUpdate.Decline, W4), refused on a replica.
    async fn decline(&mut self, update: &str, admin: &str) -> Result<(), DbError> {
        self.call(
            "ExecuteSPDeclineUpdate",
            &[
                Element::text("updateId", update.to_ascii_lowercase()),
                Element::text("adminName", admin),
                Element::text("failIfReplica", "true"),
            ],
        )
        .await
        .map(drop)
    }

    /// `ExecuteSPDeployUpdate1`: "not approved" for All Computers on `revision`, no deadline
    /// (IUpdate.Approve, W4; the values W3 sends).
    async fn approve_detect_only(
        &mut self,
        update: &str,
        revision: i32,
        admin: &str,
    ) -> Result<(), DbError> {
        self.call(
            "ExecuteSPDeployUpdate1",
            &[
                revision_id("updateId", update, revision),
                Element::text("deploymentAction", ACTION_NOT_APPROVED.to_string()),
                Element::text(
                    "targetGroupId",
                    susdb::groups::ALL_COMPUTERS.to_ascii_lowercase(),
                ),
                Element::text("deadline", NO_DEADLINE),
                Element::text("adminName", admin),
                Element::text("isAssigned", "true"),
            ],
        )
        .await
        .map(drop)
    }

    /// `ExecuteSPGetAllDownstreamServers` from this server (the empty GUID), nested children
    /// included: rows of name, id, last sync, parent id, last rollup, version, replica (W3, W2
    /// agree); a direct child's parent is the empty GUID. The server's own id is the
    /// configuration row's `ServerId` (one more call).
    async fn downstream(&mut self) -> Result<Downstream, DbError> {
        const EMPTY: &str = "00000000-0000-0000-0000-000000000000";
        let what = "ExecuteSPGetAllDownstreamServers";
        let response = self
            .call(
                what,
                &[
                    Element::text("parentServerId", EMPTY),
                    Element::text("includeNestedChildren", "true"),
                ],
            )
            .await?;
        let rows = response
            .child("ExecuteSPGetAllDownstreamServersResult")
            .map(|r| r.children.as_slice())
            .unwrap_or_default();
        let text = |cells: &[&Element], i: usize| {
            cells
                .get(i)
                .filter(|c| !c.nil)
                .map(|c| c.text.trim().to_string())
                .filter(|t| !t.is_empty())
        };
        let registered = rows
            .iter()
            .map(|row| {
                let cells = cells(row);
                Ok(Registered {
                    name: text(&cells, 0).ok_or_else(|| bad_row(what, "name (0)"))?,
                    id: text(&cells, 1)
                        .ok_or_else(|| bad_row(what, "id (1)"))?
                        .to_ascii_lowercase(),
                    parent: text(&cells, 3)
                        .map(|p| p.to_ascii_lowercase())
                        .filter(|p| p != EMPTY),
                    last_sync: text(&cells, 2),
                    replica: cell_bool(&cells, 6).unwrap_or(false),
                    version: text(&cells, 5).unwrap_or_default(),
                })
            })
            .collect::<Result<Vec<_>, DbError>>()?;
        let row = match &self.row {
            Some(row) => row.clone(),
            None => self.configuration().await?,
        };
        let server_id = row
            .iter()
            .find(|e| e.name == "ServerId")
            .map(|e| e.text.trim().to_ascii_lowercase())
            .ok_or_else(|| DbError::permanent("the configuration row has no ServerId"))?;
        Ok(Downstream {
            server_id,
            registered,
        })
    }
}

/// An `UpdateRevisionId`: `UpdateId` and `RevisionNumber`.
fn revision_id(name: &str, update: &str, revision: i32) -> Element {
    Element::with(
        name,
        vec![
            Element::text("UpdateId", update.to_ascii_lowercase()),
            Element::text("RevisionNumber", revision.to_string()),
        ],
    )
}

/// A `GenericReadableRow`'s cells (`Values/anyType`).
fn cells(row: &Element) -> Vec<&Element> {
    row.child("Values")
        .map(|v| v.children.iter().collect())
        .unwrap_or_default()
}

fn cell_int(cells: &[&Element], i: usize) -> Option<i32> {
    cells.get(i).filter(|c| !c.nil)?.text.trim().parse().ok()
}

fn cell_bool(cells: &[&Element], i: usize) -> Option<bool> {
    match cells.get(i).filter(|c| !c.nil)?.text.trim() {
        "true" | "1" => Some(true),
        "false" | "0" => Some(false),
        _ => None,
    }
}

fn bad_row(operation: &str, cell: &str) -> DbError {
    DbError::permanent(format!(
        "{operation}: a row has no usable {cell}: is this a WSUS 3.0 web service?"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_escaped_qualified_soap() {
        let xml = request_xml(
            "ExecuteSPDeclineUpdate",
            &[
                Element::text("adminName", "CORP\\op <&> co"),
                Element {
                    nil: true,
                    ..Element::text("x", "")
                },
            ],
        );
        let text = String::from_utf8(xml).unwrap_or_default();
        assert!(
            text.contains(&format!("<ExecuteSPDeclineUpdate xmlns=\"{NS}\">")),
            "{text}"
        );
        assert!(
            text.contains("<adminName>CORP\\op &lt;&amp;&gt; co</adminName>"),
            "{text}"
        );
        assert!(text.contains("<x xsi:nil=\"true\"/>"), "{text}");
        let parsed = parse_xml(text.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        let op = parsed
            .path(&["Envelope", "Body", "ExecuteSPDeclineUpdate"])
            .unwrap_or_else(|| panic!("no operation"));
        assert_eq!(op.children[0].text, "CORP\\op <&> co");
        assert!(op.children[1].nil);
    }

    #[test]
    fn a_fault_says_the_message_after_the_last_arrow() {
        let body = br#"<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body><soap:Fault><faultcode>soap:Server</faultcode><faultstring>System.Web.Services.Protocols.SoapException: Server was unable to process request. ---> System.InvalidOperationException: You cannot decline an update on a replica server</faultstring></soap:Fault></soap:Body></soap:Envelope>"#;
        let doc = parse_xml(body).unwrap_or_else(|e| panic!("{e}"));
        let fault = doc
            .path(&["Envelope", "Body", "Fault"])
            .unwrap_or_else(|| panic!("no fault"));
        assert_eq!(
            fault_message(fault),
            "You cannot decline an update on a replica server (InvalidOperationException)"
        );
        assert!(transient_fault(
            "Transaction (Process ID 57) was deadlocked on lock resources with another process and has been chosen as the deadlock victim. Rerun the transaction. (SqlException)"
        ));
        assert!(!transient_fault("Value cannot be null."));
    }
}
