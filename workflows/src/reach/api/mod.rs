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
//! The session and the port are here; the envelopes in [`soap`], the login in [`auth`], the rows
//! read into the port's types in [`rows`]. These names are written here, apart from the lab's
//! (`susdb-lab`'s `api/`), so that the client and the lab cannot be wrong together by sharing one
//! list.
//!
//! One HTTP/1.1 connection per session: NTLM authenticates a connection, not a request (MS-NLMP;
//! IIS keeps the authentication for the connection's later requests).

mod auth;
mod contract;
mod rows;
pub(crate) mod soap;

use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine as _;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Request, StatusCode};
use tokio::net::TcpStream;
use topology::{ApiTarget, Server};

use crate::reach::port::Negotiated;
use crate::reach::port::{Approval, Downstream, Observed, ServerError, UpdateState, WsusServer};
use crate::reach::settings::ConnectOptions;
use crate::reach::tls::{HandshakeError, Policy, Retry, Trust, too_old};
use auth::{Login, login_for};
use contract::Contract;
use rows::{RevisionRow, revision_id};
use soap::{Element, NS, PATH, fault_message, parse_xml, request_xml, transient_fault};

/// `GetCurrentUserRole` of an account with no WSUS role: the one number a public source gives
/// (W3 refuses 0 with "hace falta ser administrador local o de «Administradores WSUS»"). The
/// other members of UpdateServerUserRole (Administrator, Reporter; aa354557) have no published
/// numbers, so no other number is refused: the role is shown in the plan, and a reporter's
/// first change is refused by the server itself (403) before anything changed.
const ROLE_NONE: i64 = 0;

/// "Not approved", which on the wire is 2 (W3: with 3 the server creates a block); the same value
/// as SUSDB's `ActionID` for detect-only.
const ACTION_NOT_APPROVED: i32 = susdb::action::DETECT_ONLY;

/// "No deadline": the two-argument IUpdate.Approve passes `DateTime.MaxValue` (W4:
/// `Approve(action, group)` calls the four-argument form with `DateTime.MaxValue, true`, and
/// IUpdate.Approve's page, ms747134, documents the deadline as optional), and .NET's
/// XmlSerializer writes that value as `9999-12-31T23:59:59.9999999` (an xs:dateTime with its
/// seven tick digits). MS-WSUSSS's deployments use the same value ("9999-12-31 ... 23:59:59.9999999").
const NO_DEADLINE: &str = "9999-12-31T23:59:59.9999999";

/// A response larger than this is not an answer to anything the repair asks.
const MAX_RESPONSE: usize = 16 * 1024 * 1024;

/// The connection: plaintext, or TLS validated as the topology says.
trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

/// Says a refused handshake in topology terms: a certificate refused, a site that answers plain
/// HTTP.
async fn tls_refused(
    origin: &str,
    api: &ApiTarget,
    via: Option<SocketAddr>,
    error: HandshakeError,
) -> ServerError {
    match error {
        HandshakeError::Certificate(text) => ServerError::permanent(format!(
            "TLS to {origin}: the server's certificate was rejected ({text}): name the authority \
             that issued it in `api.ca_file`, or reach the server by a name its certificate \
             holds; `trust_cert: true` skips validation (only on a network you trust)"
        )),
        HandshakeError::Settings(text) => {
            ServerError::permanent(format!("TLS to {origin}: {text}"))
        }
        HandshakeError::Failed(text) => {
            if let Ok(mut tcp) = connect_to(via, api).await
                && answers_plain_http(&mut tcp, &api.host).await
            {
                return ServerError::permanent(format!(
                    "{origin} answers plain HTTP, not TLS: its web site has no SSL binding (a \
                     WSUS 3.0 site has none unless an administrator added one). Reach it as the \
                     WSUS console does: `api.tls: false` (port 8530 on the WSUS web site, 80 on \
                     the default web site)"
                ));
            }
            ServerError::transient(format!("TLS to {origin}: {text}"))
        }
    }
}

/// A TCP connection to `api`'s web site, or to `--api-via`.
async fn connect_to(via: Option<SocketAddr>, api: &ApiTarget) -> std::io::Result<TcpStream> {
    let tcp = match via {
        Some(addr) => TcpStream::connect(addr).await,
        None => TcpStream::connect((api.host.as_str(), api.port)).await,
    }?;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

/// Whether the server on `tcp` answers an HTTP request (a `HEAD /`, which changes nothing).
async fn answers_plain_http(tcp: &mut TcpStream, host: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request = format!("HEAD / HTTP/1.0\r\nHost: {host}\r\n\r\n");
    let mut first = [0u8; 5];
    let asked = async {
        tcp.write_all(request.as_bytes()).await?;
        tcp.read_exact(&mut first).await
    };
    matches!(
        tokio::time::timeout(std::time::Duration::from_secs(5), asked).await,
        Ok(Ok(_))
    ) && &first == b"HTTP/"
}

/// A WSUS server's administration web service, over one authenticated connection.
pub struct ApiSession {
    http: Http,
    server: String,
    /// The account the session authenticated as (`DOMAIN\\user`): the `adminName` of its changes.
    user: String,
    /// `GetCurrentUserRole`, asked on the request that completed the login.
    role: i64,
    /// The server's WSDL, read before any change ([`contract`]).
    contract: Option<Arc<Contract>>,
    /// `GetServerVersion`, read once per session.
    version: Option<String>,
    /// The configuration row as last read, every element: written back whole with one change.
    row: Option<Vec<Element>>,
}

/// What the synthetic client's computer record cleanup sends (`verify --client`).
const COMPUTERS: &[(&str, &[&str])] = &[
    ("ExecuteSPGetComputerTargetByName", &["name"]),
    ("ExecuteSPDeleteComputer", &["id"]),
];

impl ApiSession {
    /// The computer records `dns_name` names on this server, each row's cells as text; refused,
    /// naming what is missing, when the server's WSDL lacks the operations the cleanup uses.
    pub async fn computers_named(
        &mut self,
        dns_name: &str,
    ) -> Result<Vec<Vec<String>>, ServerError> {
        let lacking = self.contract().await?.lacks(&self.server, COMPUTERS);
        if !lacking.is_empty() {
            return Err(ServerError::permanent(lacking.join("; ")));
        }
        let response = self
            .call(
                "ExecuteSPGetComputerTargetByName",
                &[Element::text("name", dns_name)],
            )
            .await?;
        Ok(rows::computers(&response))
    }

    /// Deletes the computer record `id` (IComputerTarget.Delete, ms745937: it "requires WSUS
    /// Administrator privileges").
    pub async fn delete_computer(&mut self, id: &str) -> Result<(), ServerError> {
        self.call("ExecuteSPDeleteComputer", &[Element::text("id", id)])
            .await
            .map(drop)
    }
}

impl std::fmt::Debug for ApiSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiSession")
            .field("server", &self.server)
            .field("origin", &self.http.origin)
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

/// One HTTP/1.1 connection to a WSUS web site, plaintext or TLS as the topology says: what the
/// administration session logs in on, and what the client web services are asked on.
pub(crate) struct Http {
    pub(crate) sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    /// `http(s)://host:port`, for messages.
    pub(crate) origin: String,
    /// The `Host` header: the topology's `api.host` (with the port when not the scheme's).
    pub(crate) host: String,
    /// The topology asks for HTTPS, but `--api-via` sends this connection to a loopback lab in
    /// plain HTTP (no `--connect-via-ca`).
    pub(crate) lab_plaintext: bool,
    /// What the HTTPS handshake settled on; `None` over plain HTTP.
    pub(crate) tls: Option<Negotiated>,
}

impl Http {
    /// Opens a connection to `api`'s web site (without the connect timeout: the caller's).
    pub(crate) async fn connect(
        api: &ApiTarget,
        options: &ConnectOptions,
    ) -> Result<Http, ServerError> {
        let (via, tls) = route(api, options);
        let scheme = if tls { "https" } else { "http" };
        let origin = format!("{scheme}://{}:{}", api.host, api.port);
        let tcp = connect_to(via, api).await.map_err(|e| match via {
            Some(addr) => {
                ServerError::transient(format!("cannot connect to {addr} (--api-via): {e}"))
            }
            None if tls && e.kind() == std::io::ErrorKind::ConnectionRefused => {
                ServerError::permanent(format!(
                    "cannot connect to {origin}: {e}. A WSUS 3.0 web site has no HTTPS unless an \
                     administrator added it: reach it as the WSUS console does, `api.tls: false` \
                     (port 8530 on the WSUS web site, 80 on the default web site)"
                ))
            }
            None => ServerError::transient(format!("cannot connect to {origin}: {e}")),
        })?;
        let mut negotiated = None;
        let stream: Box<dyn Stream> = if tls {
            let lab_ca = via.and(options.connect_via_ca.as_deref());
            let policy = Policy {
                trust: Trust::of(lab_ca, api.trust_cert, api.ca_file.as_deref()),
                min: api.tls_min,
            };
            let alpn: &[&[u8]] = &[b"http/1.1"];
            let mut attempt = policy.connect(&api.host, tcp, alpn).await;
            if let Err(HandshakeError::Failed(text)) = &attempt {
                let fresh = connect_to(via, api).await;
                attempt = match fresh {
                    Ok(fresh) => match policy.after_failure(&api.host, fresh, alpn).await {
                        Retry::Older(offered) => {
                            return Err(ServerError::permanent(format!(
                                "TLS: {}",
                                too_old(&offered, api.tls_min, "api")
                            )));
                        }
                        Retry::OpenSsl => match connect_to(via, api).await {
                            Ok(again) => policy.connect_openssl(&api.host, again, alpn).await,
                            Err(_) => Err(HandshakeError::Failed(text.clone())),
                        },
                        Retry::No => Err(HandshakeError::Failed(text.clone())),
                    },
                    Err(_) => Err(HandshakeError::Failed(text.clone())),
                };
            }
            match attempt {
                Ok((stream, settled)) => {
                    negotiated = Some(settled);
                    Box::new(stream)
                }
                Err(e) => return Err(tls_refused(&origin, api, via, e).await),
            }
        } else {
            Box::new(tcp)
        };
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| ServerError::transient(format!("{origin}: {e}")))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "web service connection ended");
            }
        });
        let default_port = if tls { 443 } else { 80 };
        Ok(Http {
            sender,
            host: if api.port == default_port {
                api.host.clone()
            } else {
                format!("{}:{}", api.host, api.port)
            },
            origin,
            lab_plaintext: api.tls && !tls,
            tls: negotiated,
        })
    }

    /// POSTs a SOAP 1.1 request to `path` and reads the answer whole (at most 16 MiB).
    pub(crate) async fn post(
        &mut self,
        path: &str,
        soap_action: &str,
        body: Vec<u8>,
        authorization: Option<String>,
    ) -> Result<hyper::Response<Bytes>, ServerError> {
        let mut request = Request::post(path)
            .header(hyper::header::HOST, &self.host)
            .header(hyper::header::CONTENT_TYPE, "text/xml; charset=utf-8")
            .header("SOAPAction", format!("\"{soap_action}\""));
        if let Some(value) = authorization {
            request = request.header(hyper::header::AUTHORIZATION, value);
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| ServerError::permanent(e.to_string()))?;
        let lost = |e: hyper::Error| ServerError::transient(format!("connection lost: {e}"));
        self.sender.ready().await.map_err(lost)?;
        let response = self.sender.send_request(request).await.map_err(lost)?;
        let (parts, body) = response.into_parts();
        let body = http_body_util::Limited::new(body, MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| ServerError::transient(format!("the answer could not be read: {e}")))?
            .to_bytes();
        Ok(hyper::Response::from_parts(parts, body))
    }
}

/// Opens a connection to `server`'s web service and logs in, within the connect timeout.
pub async fn open(server: &Server, options: &ConnectOptions) -> Result<ApiSession, ServerError> {
    let api = server
        .api
        .as_ref()
        .ok_or_else(|| ServerError::permanent(format!("{} has no `api`", server.name)))?;
    let (user, login) =
        login_for(api, options).map_err(|e| ServerError::permanent(e.to_string()))?;
    let origin = format!(
        "{}://{}:{}",
        if route(api, options).1 {
            "https"
        } else {
            "http"
        },
        api.host,
        api.port
    );
    let attempt = async {
        let http = Http::connect(api, options).await?;
        let mut session = ApiSession {
            http,
            server: server.name.clone(),
            user,
            role: 0,
            contract: None,
            version: None,
            row: None,
        };
        session.role = session.log_in(login).await?;
        Ok::<_, ServerError>(session)
    };
    tokio::time::timeout(options.connect_timeout, attempt)
        .await
        .map_err(|_| ServerError::timeout("connecting", options.connect_timeout))?
        .map_err(|e| ServerError {
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
    ) -> Result<Answer, ServerError> {
        let response = self
            .http
            .post(
                PATH,
                &format!("{NS}/{operation}"),
                body.to_vec(),
                authorization,
            )
            .await?;
        let offers = response
            .headers()
            .get_all(hyper::header::WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_string)
            .collect::<Vec<_>>();
        let status = response.status();
        let body = response.into_body();
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
    async fn log_in(&mut self, mut login: Login) -> Result<i64, ServerError> {
        const OPERATION: &str = "GetCurrentUserRole";
        let body = request_xml(OPERATION, &[]);
        let token = |scheme: &str, t: &[u8]| {
            format!(
                "{scheme} {}",
                base64::engine::general_purpose::STANDARD.encode(t)
            )
        };
        let failed = |e: String| ServerError::permanent(format!("NTLM: {e}"));
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
                return Err(ServerError::permanent(
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
            ServerError::permanent(format!(
                "GetCurrentUserRole answered `{text}`, not a number"
            ))
        })
    }

    /// The `{operation}Response` element of an answer, or the error it says.
    fn answer(&self, operation: &str, answer: Answer) -> Result<Element, ServerError> {
        match answer.status {
            StatusCode::UNAUTHORIZED => {
                return Err(ServerError::permanent(format!(
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
                let fix = if self.http.lab_plaintext {
                    "give --connect-via-ca with the lab's authority (a loopback lab without it \
                     is reached in plain HTTP)"
                } else {
                    "set `api.tls: true` and the port of the site's HTTPS binding (8531 or 443)"
                };
                return Err(ServerError::permanent(format!(
                    "{} requires HTTPS (HTTP 403.4, SSL is required): {fix}",
                    self.http.origin
                )));
            }
            // IIS and WSUS refuse before the operation runs: nothing was changed.
            StatusCode::FORBIDDEN => {
                return Err(ServerError::permanent(format!(
                    "{} is not a WSUS administrator on {}; nothing was changed (HTTP 403 to \
                     {operation}, GetCurrentUserRole answered {}): add the account to the WSUS \
                     Administrators group of that server",
                    self.user, self.server, self.role
                )));
            }
            StatusCode::BAD_GATEWAY
            | StatusCode::SERVICE_UNAVAILABLE
            | StatusCode::GATEWAY_TIMEOUT
            | StatusCode::REQUEST_TIMEOUT => {
                return Err(ServerError::transient(format!(
                    "{operation}: HTTP {} from {}",
                    answer.status, self.http.origin
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
            ServerError::permanent(format!(
                "{operation}: HTTP {} from {}, {why}: {}",
                answer.status,
                self.http.origin,
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
            return Err(ServerError {
                transient,
                code: None,
                message: format!("{operation}: {message}"),
            });
        }
        if !answer.status.is_success() {
            return Err(ServerError::permanent(format!(
                "{operation}: HTTP {} from {}",
                answer.status, self.http.origin
            )));
        }
        body.child(&format!("{operation}Response"))
            .cloned()
            .ok_or_else(|| ServerError::permanent(format!("{operation}: no {operation}Response")))
    }

    async fn call(&mut self, operation: &str, params: &[Element]) -> Result<Element, ServerError> {
        let body = request_xml(operation, params);
        let answer = self.send(operation, &body, None).await?;
        self.answer(operation, answer)
    }

    /// The server's WSDL (`GET ...asmx?WSDL` on the authenticated connection), parsed.
    async fn contract(&mut self) -> Result<Arc<Contract>, ServerError> {
        if let Some(known) = &self.contract {
            return Ok(Arc::clone(known));
        }
        let request = Request::get(format!("{PATH}?WSDL"))
            .header(hyper::header::HOST, &self.http.host)
            .body(Full::new(Bytes::new()))
            .map_err(|e| ServerError::permanent(e.to_string()))?;
        let lost = |e: hyper::Error| ServerError::transient(format!("connection lost: {e}"));
        self.http.sender.ready().await.map_err(lost)?;
        let response = self.http.sender.send_request(request).await.map_err(lost)?;
        let status = response.status();
        let body = http_body_util::Limited::new(response.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| ServerError::transient(format!("the WSDL could not be read: {e}")))?
            .to_bytes();
        if !status.is_success() {
            return Err(ServerError::permanent(format!(
                "{}{PATH}?WSDL answered HTTP {status}: its contract cannot be checked, so \
                 nothing is sent to it",
                self.http.origin
            )));
        }
        let contract = Contract::shared(&body)
            .map_err(|e| ServerError::permanent(format!("{}{PATH}?WSDL: {e}", self.http.origin)))?;
        self.contract = Some(Arc::clone(&contract));
        Ok(contract)
    }

    async fn configuration(&mut self) -> Result<Vec<Element>, ServerError> {
        let response = self.call("ExecuteSPGetConfiguration", &[]).await?;
        let row = response
            .path(&["ExecuteSPGetConfigurationResult", "Configuration"])
            .ok_or_else(|| {
                ServerError::permanent("ExecuteSPGetConfiguration: no Configuration row")
            })?
            .children
            .clone();
        self.row = Some(row.clone());
        Ok(row)
    }

    /// An `int` answer (`{operation}Result`).
    async fn int(&mut self, operation: &str, params: &[Element]) -> Result<i32, ServerError> {
        let response = self.call(operation, params).await?;
        let text = response
            .child(&format!("{operation}Result"))
            .map(|r| r.text.trim().to_string())
            .unwrap_or_default();
        text.parse().map_err(|_| {
            ServerError::permanent(format!("{operation} answered `{text}`, not a number"))
        })
    }

    /// Each revision of the update: in one call where the server has `ExecuteSPGetRevisions`,
    /// otherwise as the 3.0 API reads them ([`contract::REVISIONS_ONE_BY_ONE`]): the latest
    /// number, then each earlier one until there is none (0, or a number not below the last;
    /// at most 1,000 steps), each revision's own row.
    async fn revisions(&mut self, update: &str) -> Result<Vec<RevisionRow>, ServerError> {
        let culture = || Element::text("preferredCulture", "en");
        let id = || Element::text("updateId", update.to_ascii_lowercase());
        let contract = self.contract().await?;
        if contract.has(contract::REVISIONS.0) {
            let response = self.call(contract::REVISIONS.0, &[culture(), id()]).await?;
            return rows::revisions(&response, contract::REVISIONS.0);
        }
        let mut numbers = Vec::new();
        let mut number = self
            .int("ExecuteSPGetLatestRevisionNumberForUpdate", &[id()])
            .await?;
        while number > 0 && numbers.len() < 1_000 {
            numbers.push(number);
            let previous = self
                .int(
                    "ExecuteSPGetPreviousRevision",
                    &[id(), Element::text("revisionNumber", number.to_string())],
                )
                .await?;
            if previous >= number {
                break;
            }
            number = previous;
        }
        let mut found = Vec::new();
        for number in numbers {
            let response = self
                .call(
                    "ExecuteSPGetUpdateById",
                    &[culture(), revision_id("id", update, number)],
                )
                .await?;
            found.extend(rows::revisions(&response, "ExecuteSPGetUpdateById")?);
        }
        Ok(found)
    }

    /// The live approvals of one revision ([`rows::approvals`]).
    async fn approvals(
        &mut self,
        update: &str,
        revision: i32,
    ) -> Result<Vec<Approval>, ServerError> {
        let response = self
            .call(
                "ExecuteSPGetDeploymentsByUpdate1",
                &[revision_id("id", update, revision)],
            )
            .await?;
        rows::approvals(&response, revision)
    }

    /// `GetServerVersion`, once per session; `None` where the server has no such operation.
    async fn server_version(&mut self) -> Result<Option<String>, ServerError> {
        if self.version.is_none() && self.contract().await?.has("GetServerVersion") {
            let response = self.call("GetServerVersion", &[]).await?;
            self.version = response
                .child("GetServerVersionResult")
                .map(|r| r.text.trim().to_string())
                .filter(|v| !v.is_empty());
        }
        Ok(self.version.clone())
    }

    /// The lists `ExecuteSPSetConfiguration` takes beside the row, as this server declares them.
    /// `listTrue`/`listFalse` and `ussListTrue`/`ussListFalse` come in pairs, which reads as
    /// changes (languages to turn on, to turn off [I]: a list of the whole state would need one
    /// list, not two), so empty pairs change nothing; W3 sends them empty to a 10.0 server.
    /// `programKeys` is one list, which may be the whole new state: it is sent back as
    /// `ExecuteSPGetProgramKeys` reads it, or left out (the WSDL makes it optional,
    /// `minOccurs="0"`) where the server cannot read it back.
    async fn configuration_lists(&mut self) -> Result<Vec<Element>, ServerError> {
        let contract = self.contract().await?;
        let op = "ExecuteSPSetConfiguration";
        let mut lists: Vec<Element> = ["listTrue", "listFalse", "ussListTrue", "ussListFalse"]
            .into_iter()
            .filter(|name| contract.takes(op, name))
            .map(|name| Element::with(name, Vec::new()))
            .collect();
        if contract.takes(op, "programKeys") && contract.has("ExecuteSPGetProgramKeys") {
            let response = self.call("ExecuteSPGetProgramKeys", &[]).await?;
            let keys = rows::program_keys(&response)?
                .into_iter()
                .map(|(key, description)| {
                    Element::with(
                        "ProgramKey",
                        vec![
                            Element::text("Key", key),
                            Element::text("Description", description),
                        ],
                    )
                })
                .collect();
            lists.push(Element::with("programKeys", keys));
        }
        Ok(lists)
    }
}

impl WsusServer for ApiSession {
    /// Before any change: the server's WSDL has every operation and parameter the repair sends
    /// ([`contract`]), and the account has a role (GetCurrentUserRole other than 0, W3).
    async fn refusals(&mut self) -> Result<Vec<String>, ServerError> {
        let mut refusals = Vec::new();
        if self.role == ROLE_NONE {
            refusals.push(format!(
                "{} has no WSUS role on {} (GetCurrentUserRole answered 0): add the account to \
                 the WSUS Administrators group of that server",
                self.user, self.server
            ));
        }
        let contract = self.contract().await?;
        refusals.extend(contract.lacks(&self.server, contract::REPAIR));
        if contract
            .lacks(&self.server, &[contract::REVISIONS])
            .is_empty()
        {
            return Ok(refusals);
        }
        let one_by_one = contract.lacks(&self.server, contract::REVISIONS_ONE_BY_ONE);
        if !one_by_one.is_empty() {
            refusals.push(format!(
                "{} has no ExecuteSPGetRevisions, nor what the 3.0 API reads revisions with \
                 ({}): the update's revisions cannot be read",
                self.server,
                one_by_one.join("; ")
            ));
        }
        Ok(refusals)
    }

    /// What the probe reads: the server's version, the configuration row, the update's
    /// revisions (with their licence and publication state), and the approvals of each revision.
    async fn probe(&mut self, update: &str) -> Result<Observed, ServerError> {
        let wsus_version = self.server_version().await?;
        let row = self.configuration().await?;
        let field = |name: &str| {
            row.iter()
                .find(|e| e.name == name)
                .filter(|e| !e.nil)
                .map(|e| e.text.trim().to_string())
        };
        let flag = |name: &str| -> Result<bool, ServerError> {
            match field(name).as_deref() {
                Some("true" | "1") => Ok(true),
                Some("false" | "0") => Ok(false),
                _ => Err(ServerError::permanent(format!(
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
            let mut approvals = Vec::new();
            for row in &revisions {
                approvals.extend(self.approvals(update, row.revision.number).await?);
            }
            Some(UpdateState {
                declined: revisions.iter().any(|r| r.declined),
                licence: revisions.iter().find_map(|r| r.licence.clone()),
                expired: revisions.iter().any(|r| r.expired && r.revision.latest),
                revisions: revisions.into_iter().map(|r| r.revision).collect(),
                approvals,
            })
        };
        Ok(Observed {
            tls: self.http.tls.clone(),
            sql_version: String::new(),
            schema_version: None,
            wsus_version,
            role: Some(self.role),
            replica,
            upstream_server,
            upstream_port,
            sync_from_microsoft_update,
            update,
        })
    }

    /// `ExecuteSPSetConfiguration` with the row as last read and `ReplicaMode` changed (and the
    /// lists of [`ApiSession::configuration_lists`]), then the row read again: what the server
    /// then holds.
    async fn set_replica_mode(&mut self, replica: bool) -> Result<bool, ServerError> {
        let lists = self.configuration_lists().await?;
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
            return Err(ServerError::permanent(
                "the configuration row has no ReplicaMode: this is not a WSUS 3.0 web service",
            ));
        }
        let mut params = vec![Element::with("row", row)];
        params.extend(lists);
        self.call("ExecuteSPSetConfiguration", &params).await?;
        let read = self.configuration().await?;
        read.iter()
            .find(|e| e.name == "ReplicaMode")
            .map(|e| matches!(e.text.trim(), "true" | "1"))
            .ok_or_else(|| ServerError::permanent("ReplicaMode could not be read back"))
    }

    /// `ExecuteSPDeclineUpdate` (IUpdate.Decline, W4), refused on a replica. `adminName` is the
    /// account the session authenticated as: what the API sends (W4:
    /// `UpdateServer.GetCurrentUserName()`), in MS-WSUSAR's `domain\username` form (W5).
    async fn decline(&mut self, update: &str, _admin: &str) -> Result<(), ServerError> {
        let admin = self.user.clone();
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

    /// `ExecuteSPDeployUpdate1`: "not approved" for All Computers on `revision`, no deadline,
    /// by the authenticated account (IUpdate.Approve, W4; see [`NO_DEADLINE`] and
    /// [`ApiSession::decline`]).
    async fn approve_detect_only(
        &mut self,
        update: &str,
        revision: i32,
        _admin: &str,
    ) -> Result<(), ServerError> {
        // ExecuteSPDeployUpdate1 has no failIfReplica (W1), unlike ExecuteSPDeclineUpdate and
        // SUSDB's spDeployUpdate: the mode is read first, so that an approval never lands on a
        // server that is (again) a replica, whose next sync would copy over it, whatever the
        // journal says of the switch before it (a resumed run, an administrator's change).
        let row = self.configuration().await?;
        if row
            .iter()
            .any(|e| e.name == "ReplicaMode" && matches!(e.text.trim(), "true" | "1"))
        {
            return Err(ServerError::permanent(format!(
                "{} is in replica mode: no approval is sent to a replica (ExecuteSPDeployUpdate1 \
                 has no failIfReplica); nothing was changed by this step",
                self.server
            )));
        }
        let admin = self.user.clone();
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

    /// `ExecuteSPAcceptEula` (IUpdate.AcceptLicenseAgreement, W4), after checking the server
    /// has it.
    async fn accept_licence(
        &mut self,
        update: &str,
        revision: i32,
        licence: &str,
    ) -> Result<(), ServerError> {
        let lacking = self
            .contract()
            .await?
            .lacks(&self.server, &[contract::ACCEPT_LICENCE]);
        if !lacking.is_empty() {
            return Err(ServerError::permanent(format!(
                "{}: the licence cannot be accepted through the web service",
                lacking.join("; ")
            )));
        }
        let admin = self.user.clone();
        self.call(
            "ExecuteSPAcceptEula",
            &[
                Element::text("eulaId", licence.to_ascii_lowercase()),
                Element::text("adminName", admin),
                revision_id("updateId", update, revision),
            ],
        )
        .await
        .map(drop)
    }

    /// The account changes are made as.
    fn account(&self) -> Option<&str> {
        Some(&self.user)
    }

    /// `ExecuteSPGetAllDownstreamServers` from this server (the empty GUID), nested children
    /// included ([`rows::downstream`]). The server's own id is the configuration row's
    /// `ServerId` (one more call).
    async fn downstream(&mut self) -> Result<Downstream, ServerError> {
        let response = self
            .call(
                "ExecuteSPGetAllDownstreamServers",
                &[
                    Element::text("parentServerId", rows::EMPTY_GUID),
                    Element::text("includeNestedChildren", "true"),
                ],
            )
            .await?;
        let registered = rows::downstream(&response)?;
        let row = match &self.row {
            Some(row) => row.clone(),
            None => self.configuration().await?,
        };
        let server_id = row
            .iter()
            .find(|e| e.name == "ServerId")
            .map(|e| e.text.trim().to_ascii_lowercase())
            .ok_or_else(|| ServerError::permanent("the configuration row has no ServerId"))?;
        Ok(Downstream {
            server_id,
            registered,
        })
    }
}
