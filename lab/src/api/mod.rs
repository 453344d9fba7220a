//! The WSUS administration web service (ApiRemoting30, MS-WSUSAR) of every emulated server, on
//! its own listener: SOAP 1.1 over HTTP, routed to a server by the request's `Host`, answering
//! from the same model as the TDS side (one state per server, whichever transport changed it).
//!
//! Sources (`shared/docs/wsus-web-services.md`): the endpoint, namespace, SOAPAction form,
//! document/literal bodies, element names and types as a real server's WSDL gives them (W1,
//! `shared/data/wsus/ApiRemoting30-ws2022.wsdl`); a fault's useful message after the last `--->`
//! of a .NET exception (W3); Windows authentication, 401 without it, 403 for a user without the
//! WSUS Administrators role (W2, W3); `ExecuteSPDeclineUpdate` and `ExecuteSPDeployUpdate1` as
//! the API's Decline and Approve call them (W4); a replica refuses approval changes (IUpdate.Decline:
//! "You cannot decline the update if the server is a replica WSUS server"). Where the real behaviour
//! is not public, the harsher case: `ExecuteSPSetConfiguration` refuses a row that does not echo
//! every element the lab serves, and `ExecuteSPDeployUpdate1` is refused on a replica.
//!
//! The operations served are those the repair needs (identity, role, configuration and the
//! replica switch, revisions, approvals, decline, approve) and discovery's
//! `ExecuteSPGetAllDownstreamServers` (row layout: W3 and W2 agree).

mod auth;
mod operations;
pub(crate) mod soap;
pub mod wsdl;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::faults::Drop;
use crate::{Lab, LabError, lock};
use auth::{NtlmState, Scheme, authenticate, is_admin};
use operations::{CHANGES, Caller, downstream_rows, operate};
use soap::{Answer, answer_xml, fault_xml, parse_request, respond, unknown_action_xml};
use wsdl::wsdl;
pub use wsdl::{NS, PATH};

/// ASP.NET's default request limit (`httpRuntime maxRequestLength`, 4096 KB), which an
/// ApiRemoting30 site does not raise: a larger body is refused before it is parsed.
const MAX_BODY: usize = 4096 * 1024;

/// The page http.sys answers on a plain HTTP binding to bytes that are not a request line (a
/// TLS ClientHello): its own 400 "Invalid Verb" page, with `Server: Microsoft-HTTPAPI/2.0`, and
/// the connection closed ([`http_sys_bad_request`]). http.sys, not IIS, answers it: such a
/// request never reaches the site (KB 820729, "Error logging in HTTP API", reason `Verb`). The
/// page's exact markup is not documented; the status, the reason and the close are what a
/// client sees.
const HTTP_SYS_400: &str = "<!DOCTYPE HTML PUBLIC \"-//W3C//DTD HTML 4.01//EN\"\"http://www.w3.org/TR/html4/strict.dtd\">\r\n<HTML><HEAD><TITLE>Bad Request</TITLE>\r\n<META HTTP-EQUIV=\"Content-Type\" Content-Type=\"text/html; charset=us-ascii\"></HEAD>\r\n<BODY><h2>Bad Request - Invalid Verb</h2>\r\n<hr><p>HTTP Error 400. The request verb is invalid.</p>\r\n</BODY></HTML>\r\n";

fn http_sys_bad_request() -> String {
    format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: text/html; charset=us-ascii\r\nServer: Microsoft-HTTPAPI/2.0\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{HTTP_SYS_400}",
        HTTP_SYS_400.len()
    )
}

async fn serve_http<S, Svc>(stream: S, service: Svc) -> hyper::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    Svc: hyper::service::HttpService<Incoming, ResBody = Full<Bytes>>,
{
    hyper::server::conn::http1::Builder::new()
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
        .await
}

impl Lab {
    /// Serves every server's administration web service until `shutdown` (the state is written
    /// by the TDS listener's end, or [`Lab::save`]).
    pub async fn serve_api(
        &self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), LabError> {
        let lab = self.clone();
        crate::accept_until(listener, shutdown, move |stream| {
            let lab = lab.clone();
            async move {
                let mut stream = stream;
                // With a certificate the lab serves each server as its topology entry says:
                // HTTPS for `api.tls` (the default), HTTP for `tls: false`. The first byte tells
                // a TLS ClientHello (22) from an HTTP request line.
                let mut first = [0u8; 1];
                let tls = lab.shared.tls.is_some()
                    && matches!(stream.peek(&mut first).await, Ok(1) if first[0] == 22);
                // NTLM authenticates a connection, not a request.
                let state = Arc::new(Mutex::new(NtlmState::default()));
                let service = |scheme: Scheme| {
                    let (lab, state) = (lab.clone(), Arc::clone(&state));
                    hyper::service::service_fn(move |request| {
                        let (lab, state, scheme) =
                            (lab.clone(), Arc::clone(&state), scheme.clone());
                        async move {
                            Ok::<_, Infallible>(lab.api_request(request, &state, scheme).await)
                        }
                    })
                };
                let served = match &lab.shared.tls {
                    Some(acceptors) if tls => {
                        let hello = match crate::tls::client_hello(&mut stream).await {
                            Ok(hello) => hello,
                            Err(e) => {
                                tracing::debug!(error = %e, "api: no ClientHello");
                                return;
                            }
                        };
                        let server = hello.name.as_deref().and_then(|n| lab.route_host(n));
                        if server.as_deref().is_some_and(|s| !lab.api_tls(s)) {
                            // A site bound to plain HTTP only: http.sys reads the ClientHello as
                            // a request line and answers its own 400 page.
                            let _ = stream.write_all(http_sys_bad_request().as_bytes()).await;
                            let _ = stream.shutdown().await;
                            return;
                        }
                        let profile = lab
                            .platform_named(hello.name.as_deref(), true)
                            .windows
                            .https();
                        match acceptors
                            .accept(crate::tls::Kind::Https, hello, stream, profile)
                            .await
                        {
                            Ok((tls, negotiated)) => {
                                let sni = negotiated.server_name;
                                serve_http(tls, service(Scheme::Https { sni })).await
                            }
                            Err(e) => {
                                tracing::debug!(error = %e, "api TLS handshake failed");
                                return;
                            }
                        }
                    }
                    Some(_) => serve_http(stream, service(Scheme::HttpBesideHttps)).await,
                    None => serve_http(stream, service(Scheme::Http)).await,
                };
                if let Err(e) = served {
                    tracing::debug!(error = %e, "api connection ended");
                }
            }
        })
        .await
    }

    /// Whether `server`'s web service requires HTTPS: its `api.tls`, or for a server the
    /// topology reaches through SQL, whether the lab has a certificate.
    pub(crate) fn api_tls(&self, server: &str) -> bool {
        self.shared
            .routes
            .iter()
            .find(|r| r.name == server)
            .and_then(|r| r.api_tls)
            .unwrap_or(true)
    }

    /// The server a request is for: the `Host` it names (without a port), as its `api.host`, or
    /// for a server the topology reaches through SQL (a hand-made client, a test), its name or
    /// SQL host.
    pub(crate) fn route_host(&self, host: &str) -> Option<String> {
        let host = host
            .rsplit_once(':')
            .filter(|(_, p)| p.chars().all(|c| c.is_ascii_digit()))
            .map_or(host, |(h, _)| h);
        self.shared
            .routes
            .iter()
            .find(|r| {
                r.api_host
                    .as_deref()
                    .is_some_and(|h| h.eq_ignore_ascii_case(host))
                    || r.api_host.is_none()
                        && (r.name.eq_ignore_ascii_case(host)
                            || r.host
                                .as_deref()
                                .is_some_and(|h| h.eq_ignore_ascii_case(host)))
            })
            .map(|r| r.name.clone())
    }

    pub(crate) async fn api_request(
        &self,
        request: Request<Incoming>,
        state: &Mutex<NtlmState>,
        scheme: Scheme,
    ) -> Response<Full<Bytes>> {
        // The body is read before anything is answered: a 401 sent while a POST body is still
        // unread leaves the kept-alive connection mid-request, and NTLM needs that connection.
        let (parts, body) = request.into_parts();
        // A declared length over the limit is refused from the headers, before `100 Continue`:
        // the client then sends no body (and hears the 413 rather than a reset mid-upload).
        let declared = parts
            .headers
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n > MAX_BODY) {
            return respond(
                StatusCode::PAYLOAD_TOO_LARGE,
                "text/plain",
                format!("the request body is over {MAX_BODY} bytes").into_bytes(),
            );
        }
        let body = match http_body_util::Limited::new(body, MAX_BODY).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) => {
                let status = if e.is::<http_body_util::LengthLimitError>() {
                    StatusCode::PAYLOAD_TOO_LARGE
                } else {
                    StatusCode::BAD_REQUEST
                };
                return respond(
                    status,
                    "text/plain",
                    format!("the request body could not be read: {e}").into_bytes(),
                );
            }
        };
        let request = Request::from_parts(parts, ());
        let host = request
            .headers()
            .get(hyper::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let Some(server) = self.route_host(&host) else {
            return respond(
                StatusCode::NOT_FOUND,
                "text/plain",
                format!("the lab serves no WSUS server named {host}").into_bytes(),
            );
        };
        // A site's binding decides its scheme. A server whose `api.tls` is true (the default)
        // requires SSL: IIS refuses plain HTTP to it with 403.4 (an SSL-only ApiRemoting30 gave
        // "HTTP error 403: Forbidden", DCourtel/Wsus_Package_Publisher#88). One whose `tls` is
        // false listens on a plain HTTP port, which does not speak TLS: the lab serves nothing
        // over the TLS connection (harsher than a handshake failure only in when it fails).
        let api_tls = self.api_tls(&server);
        match &scheme {
            Scheme::HttpBesideHttps if api_tls => {
                return respond(
                    StatusCode::FORBIDDEN,
                    "text/plain",
                    format!("403.4 Forbidden: SSL is required to view {host}{PATH}").into_bytes(),
                );
            }
            Scheme::Https { sni } if !api_tls => {
                return respond(
                    StatusCode::MISDIRECTED_REQUEST,
                    "text/plain",
                    format!(
                        "{} serves its web service over plain HTTP (`tls: false`)",
                        sni.as_deref().unwrap_or(&server)
                    )
                    .into_bytes(),
                );
            }
            _ => {}
        }
        let client_service = crate::wusp::service(request.uri().path());
        if request.uri().path() != PATH && client_service.is_none() {
            return respond(StatusCode::NOT_FOUND, "text/plain", b"not found".to_vec());
        }
        if self.shared.config.faults.unreachable(&server) {
            return respond(StatusCode::SERVICE_UNAVAILABLE, "text/plain", Vec::new());
        }
        // The client web services are anonymous: no Windows authentication on the way in.
        if let Some(service) = client_service {
            let scheme = if matches!(scheme, Scheme::Https { .. }) {
                "https"
            } else {
                "http"
            };
            let actor = format!("{scheme}://{host}{}", request.uri().path());
            let soap_action = request
                .headers()
                .get("SOAPAction")
                .and_then(|h| h.to_str().ok());
            let latency = self.shared.config.latency;
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            return self
                .client_request(
                    &server,
                    service,
                    &actor,
                    soap_action,
                    request.method() == hyper::Method::POST,
                    &body,
                )
                .await;
        }
        let authorization = request
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string);
        if let Some(refused) = authenticate(self, &server, state, authorization.as_deref()) {
            return refused;
        }
        if request.method() == hyper::Method::GET
            && request
                .uri()
                .query()
                .is_some_and(|q| q.eq_ignore_ascii_case("wsdl"))
        {
            let scheme = if matches!(scheme, Scheme::Https { .. }) {
                "https"
            } else {
                "http"
            };
            let address = format!("{scheme}://{host}{PATH}");
            return respond(
                StatusCode::OK,
                "text/xml; charset=utf-8",
                wsdl(&address, &server, &self.shared.config.faults).into_bytes(),
            );
        }
        if request.method() != hyper::Method::POST {
            return respond(StatusCode::METHOD_NOT_ALLOWED, "text/plain", Vec::new());
        }
        let (operation, mut params) = match parse_request(&body) {
            Ok(parsed) => parsed,
            Err(e) => {
                return respond(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/xml; charset=utf-8",
                    fault_xml(true, "System.Xml.XmlException", &e),
                );
            }
        };
        let faults = &self.shared.config.faults;
        // ASP.NET dispatches on SOAPAction: an operation the server lacks is refused as an
        // unknown action ("Server did not recognize the value of HTTP Header SOAPAction", the
        // message System.Web.Services gives), before anything runs.
        if faults.operation_removed(&server, &operation) {
            let soap_action = request
                .headers()
                .get("SOAPAction")
                .and_then(|h| h.to_str().ok())
                .unwrap_or_default()
                .trim_matches('"')
                .to_string();
            return respond(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/xml; charset=utf-8",
                unknown_action_xml(&soap_action),
            );
        }
        for name in faults.parameters_removed(&server, &operation) {
            params.remove(&name);
        }
        let admin = is_admin(self, state);
        if !admin && CHANGES.contains(&operation.as_str()) {
            let user = lock(state).user.clone().unwrap_or_default();
            return respond(
                StatusCode::FORBIDDEN,
                "text/plain",
                format!("403 Forbidden: {user} is not a WSUS administrator on {server}")
                    .into_bytes(),
            );
        }
        let roles = self.shared.config.api_roles;
        let caller = Caller {
            server: &server,
            role: if admin { roles.admin } else { roles.reporter },
            version: self.wsus_version(&server).build(),
            licence: faults.licence_not_accepted(&server),
            expired: faults.expired(&server),
        };
        let action = {
            let mut inner = lock(&self.shared.inner);
            inner
                .counter
                .on_call(&self.shared.config.faults, &server, &operation)
        };
        let delay = self.shared.config.latency + action.latency;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if action.drop == Some(Drop::Before) {
            return respond(StatusCode::BAD_GATEWAY, "text/plain", Vec::new());
        }
        if let Some(number) = action.error {
            return respond(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/xml; charset=utf-8",
                fault_xml(
                    false,
                    "System.Data.SqlClient.SqlException",
                    crate::faults::injected_error(number).1,
                ),
            );
        }
        if operation == "ExecuteSPGetAllDownstreamServers" {
            return match downstream_rows(self, &server, &params) {
                Ok(rows) => respond(
                    StatusCode::OK,
                    "text/xml; charset=utf-8",
                    answer_xml(&operation, &Answer::Rows(rows)),
                ),
                Err((client, exception, message)) => respond(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/xml; charset=utf-8",
                    fault_xml(client, exception, &message),
                ),
            };
        }
        let outcome = {
            let mut inner = lock(&self.shared.inner);
            match inner.servers.get_mut(&server) {
                Some(db) => match operate(&caller, db, &operation, &params) {
                    Ok((answer, call)) => {
                        let changed = call.is_some();
                        if let Some(call) = call {
                            db.calls.push(call);
                        }
                        db.refresh();
                        Ok((answer, changed))
                    }
                    Err(refusal) => Err((refusal, true)),
                },
                None => Err((
                    (
                        false,
                        "System.InvalidOperationException",
                        "no database".into(),
                    ),
                    false,
                )),
            }
        };
        let changed = match &outcome {
            Ok((_, changed)) => *changed,
            Err((_, recorded)) => *recorded && operation.starts_with("ExecuteSP"),
        };
        // A change is answered only once the state file holds it.
        if changed && let Err(e) = self.persist().await {
            return respond(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/xml; charset=utf-8",
                fault_xml(false, "System.IO.IOException", &e.to_string()),
            );
        }
        let response = match outcome {
            Ok((answer, _)) => respond(
                StatusCode::OK,
                "text/xml; charset=utf-8",
                answer_xml(&operation, &answer),
            ),
            Err(((client, exception, message), _)) => respond(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/xml; charset=utf-8",
                fault_xml(client, exception, &message),
            ),
        };
        if action.drop == Some(Drop::After) {
            return respond(StatusCode::BAD_GATEWAY, "text/plain", Vec::new());
        }
        response
    }
}
