//! The client web services of every emulated server (MS-WUSP): SimpleAuth
//! (`/SimpleAuthWebService/SimpleAuth.asmx`) and the client web service
//! (`/ClientWebService/client.asmx`), on the web-service listener beside ApiRemoting30, routed by
//! `Host` as it is, anonymous as they are (captures in `shared/docs/wsus-client-protocol.md` Q3).
//!
//! Sources: MS-WUSP 38.0 (sections named where used; `shared/docs/wsus-client-protocol.md`), its
//! WSDLs (`shared/data/wsus/*-MS-WUSP.wsdl`), KB 954960 (the fault in both logs). Where the real
//! behaviour is open (the notes' open questions), the harsher case, said where it is taken:
//! - a fault is sent with HTTP 200, as the KB's client log shows it ("HTTP status code = 200";
//!   a WS2025 server sent 500): a client must read the body, not the status;
//! - `SyncUpdates` elements a WSUS 3.0/3.1 server lacks (`FilterCategoryIds`,
//!   `NeedTwoGroupOutOfScopeUpdates`, MS-WUSP 2.2.2.2.4: server protocol 3.2) are refused with
//!   InvalidParameters rather than ignored, and more than 400 `InstalledNonLeafUpdateIDs` too
//!   (what a WS2025 server refused, wsus-rs `session/config.rs`);
//! - `GetAuthorizationCookie` already records the computer (it "SHOULD persist the provided
//!   client information", 3.1.5.3), so a client that stops there still leaves a record;
//! - ConfigChanged is checked before RegistrationRequired (the order of 3.1.5.7's text);
//! - a ClientIdString with capitals is refused (the glossary allows "only the letters a-z").
//!
//! Computer records live in the model ([`crate::model::Computer`]) and the state file; the
//! administration web service reads and deletes them (`ExecuteSPGetComputerTargetByName`,
//! `ExecuteSPDeleteComputer`).

pub(crate) mod catalog;
pub(crate) mod cookie;

use std::io::Write as _;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Response, StatusCode};
use quick_xml::events::{BytesEnd, BytesStart, BytesText, Event};
use roxmltree::Node;

use crate::api::soap::{XmlWriter, envelope, respond, text_element, unknown_action_xml};
use crate::model::{Computer, ServerDb, lock};
use crate::{Lab, LabError};
use catalog::{Scan, Sync};
use cookie::{Contents, Refused};

pub const CLIENT_PATH: &str = "/ClientWebService/client.asmx";
pub const SIMPLE_AUTH_PATH: &str = "/SimpleAuthWebService/SimpleAuth.asmx";
pub const CLIENT_NS: &str = "http://www.microsoft.com/SoftwareDistribution/Server/ClientWebService";
pub const SIMPLE_AUTH_NS: &str =
    "http://www.microsoft.com/SoftwareDistribution/Server/SimpleAuthWebService";

/// How long a cookie lives. Not public for WSUS 3.0 (the spec's example shows days): an hour,
/// the shorter and so the harsher.
const COOKIE_SECONDS: i64 = 3600;

/// More `InstalledNonLeafUpdateIDs` than this are refused (see the module doc).
const MAX_INSTALLED_NON_LEAF: usize = 400;

/// The time `configurationChangeNumber` 0 stands for: `LastChange` is this plus one second per
/// change, so every write of the configuration moves it.
const CONFIG_EPOCH: i64 = 1_214_870_400; // 2008-07-01T00:00:00Z

/// The service a path names (IIS compares paths without case).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Service {
    SimpleAuth,
    Client,
}

/// The operations the lab serves (also what a fault's `target` may name): SimpleAuth's one, then
/// the client web service's. A real server has more (RefreshCache, GetExtendedUpdateInfo, ...),
/// which a scan does not need; the lab answers them as ASP.NET answers an operation a service
/// lacks.
pub(crate) const OPERATIONS: &[&str] = &[
    SIMPLE_AUTH_OPERATION,
    "GetConfig",
    "GetCookie",
    "RegisterComputer",
    "SyncUpdates",
];
const SIMPLE_AUTH_OPERATION: &str = "GetAuthorizationCookie";

fn served(service: Service, operation: &str) -> bool {
    match service {
        Service::SimpleAuth => operation == SIMPLE_AUTH_OPERATION,
        Service::Client => operation != SIMPLE_AUTH_OPERATION && OPERATIONS.contains(&operation),
    }
}

pub(crate) fn service(path: &str) -> Option<Service> {
    if path.eq_ignore_ascii_case(CLIENT_PATH) {
        Some(Service::Client)
    } else if path.eq_ignore_ascii_case(SIMPLE_AUTH_PATH) {
        Some(Service::SimpleAuth)
    } else {
        None
    }
}

/// MS-WUSP 2.2.2.4's ErrorCodes the lab throws (a faults file's `client_error` names one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub enum ErrorCode {
    InvalidCookie,
    ConfigChanged,
    RegistrationRequired,
    InternalServerError,
    CookieExpired,
    InvalidParameters,
    InvalidAuthorizationCookie,
}

impl ErrorCode {
    fn name(self) -> &'static str {
        match self {
            ErrorCode::InvalidCookie => "InvalidCookie",
            ErrorCode::ConfigChanged => "ConfigChanged",
            ErrorCode::RegistrationRequired => "RegistrationRequired",
            ErrorCode::InternalServerError => "InternalServerError",
            ErrorCode::CookieExpired => "CookieExpired",
            ErrorCode::InvalidParameters => "InvalidParameters",
            ErrorCode::InvalidAuthorizationCookie => "InvalidAuthorizationCookie",
        }
    }
}

/// An operation's fault: its ErrorCode and message.
#[derive(Debug)]
struct Thrown {
    code: ErrorCode,
    message: String,
    /// The KB 954960 fault: the duplicate dictionary key `GetSyncInfo` logged.
    duplicate_key: Option<i32>,
}

fn thrown(code: ErrorCode, message: impl Into<String>) -> Thrown {
    Thrown {
        code,
        message: message.into(),
        duplicate_key: None,
    }
}

fn refused(r: Refused) -> Thrown {
    match r {
        Refused::Invalid => thrown(ErrorCode::InvalidCookie, ""),
        Refused::Expired => thrown(ErrorCode::CookieExpired, ""),
    }
}

/// A fresh random GUID, as a fault's `ID` is (MS-WUSP 2.2.2.4).
fn fresh_id() -> String {
    let n = fastrand::u128(..) & !(0xF000_u128 << 64) | (0x4000_u128 << 64);
    crate::model::guid(n & !(0xC000_u128 << 48) | (0x8000_u128 << 48))
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn xml_time(seconds: i64) -> String {
    chrono::DateTime::from_timestamp(seconds, 0)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn last_change(db: &ServerDb) -> i64 {
    CONFIG_EPOCH + db.config_change_number
}

/// An `x.y` protocol version (MS-WUSP 3.1.5.2, 3.1.5.4).
fn two_part(version: &str) -> Option<(u32, u32)> {
    let (major, minor) = version.split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// A ClientIdString (MS-WUSP glossary): 1 to 255 of a-z, 0-9 and the hyphen.
fn is_client_id(id: &str) -> bool {
    (1..=255).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A DNS name (RFC 1035 2.3.1, with digits first allowed as RFC 1123 does).
fn is_dns_name(name: &str) -> bool {
    (1..=255).contains(&name.len())
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// A request's operation element and what is in it.
struct Request<'a, 'input> {
    operation: Node<'a, 'input>,
    ns: &'static str,
}

impl<'a, 'input> Request<'a, 'input> {
    fn child(&self, at: Node<'a, 'input>, name: &str) -> Option<Node<'a, 'input>> {
        at.children().find(|c| {
            c.is_element()
                && c.tag_name().name() == name
                && c.tag_name().namespace() == Some(self.ns)
        })
    }

    fn param(&self, name: &str) -> Option<Node<'a, 'input>> {
        self.child(self.operation, name)
    }

    /// An element's text; `None` when absent or `xsi:nil`.
    fn text(&self, at: Node<'a, 'input>, name: &str) -> Option<String> {
        let node = self.child(at, name)?;
        let nil = node.attributes().any(|a| {
            a.name() == "nil"
                && a.namespace() == Some("http://www.w3.org/2001/XMLSchema-instance")
                && matches!(a.value(), "true" | "1")
        });
        (!nil).then(|| node.text().unwrap_or_default().trim().to_string())
    }

    /// An `ArrayOfInt`'s values.
    fn ints(&self, at: Node<'a, 'input>, name: &str) -> Result<Vec<i32>, Thrown> {
        let Some(array) = self.child(at, name) else {
            return Ok(Vec::new());
        };
        array
            .children()
            .filter(|c| c.is_element() && c.tag_name().name() == "int")
            .map(|c| {
                c.text().unwrap_or_default().trim().parse().map_err(|_| {
                    thrown(ErrorCode::InvalidParameters, format!("{name}: not an int"))
                })
            })
            .collect()
    }
}

/// The answer to an operation: its response's children, written in order.
type Written = Box<dyn FnOnce(&mut XmlWriter) -> std::io::Result<()> + Send>;

impl Lab {
    /// A request to `server`'s SimpleAuth or client web service.
    pub(crate) async fn client_request(
        &self,
        server: &str,
        service: Service,
        actor: &str,
        soap_action: Option<&str>,
        post: bool,
        body: &[u8],
    ) -> Response<Full<Bytes>> {
        if !post {
            return respond(StatusCode::METHOD_NOT_ALLOWED, "text/plain", Vec::new());
        }
        let ns = match service {
            Service::Client => CLIENT_NS,
            Service::SimpleAuth => SIMPLE_AUTH_NS,
        };
        let text = String::from_utf8_lossy(body);
        let document = match roxmltree::Document::parse(&text) {
            Ok(d) => d,
            Err(e) => {
                return respond(
                    StatusCode::BAD_REQUEST,
                    "text/xml; charset=utf-8",
                    crate::api::soap::fault_xml(true, "System.Xml.XmlException", &e.to_string()),
                );
            }
        };
        let operation = document
            .root_element()
            .children()
            .find(|n| n.is_element() && n.tag_name().name() == "Body")
            .and_then(|b| b.children().find(|n| n.is_element()));
        let action = soap_action
            .unwrap_or_default()
            .trim_matches('"')
            .to_string();
        // ASP.NET dispatches on SOAPAction; the body's element must be that operation's, in the
        // service's namespace, or XmlSerializer reads none of it.
        let Some(operation) = operation.filter(|op| {
            op.tag_name().namespace() == Some(ns)
                && action == format!("{ns}/{}", op.tag_name().name())
                && served(service, op.tag_name().name())
        }) else {
            return respond(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/xml; charset=utf-8",
                unknown_action_xml(&action),
            );
        };
        let name = operation.tag_name().name().to_string();
        let request = Request { operation, ns };
        let injected =
            lock(&self.shared.inner)
                .counter
                .on_call(&self.shared.config.faults, server, &name);
        if !injected.latency.is_zero() {
            tokio::time::sleep(injected.latency).await;
        }
        if injected.drop == Some(crate::faults::Drop::Before) {
            return respond(StatusCode::BAD_GATEWAY, "text/plain", Vec::new());
        }
        let outcome = if let Some(code) = injected.client_error {
            Err(thrown(code, "injected by the lab's faults file"))
        } else {
            let mut inner = lock(&self.shared.inner);
            let Some(db) = inner.servers.get_mut(server) else {
                return respond(StatusCode::NOT_FOUND, "text/plain", Vec::new());
            };
            self.client_operation(server, db, service, &name, &request)
        };
        match outcome {
            Ok((written, changed)) => {
                if changed && let Err(e) = self.persist().await {
                    return respond(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "text/xml; charset=utf-8",
                        crate::api::soap::fault_xml(false, "System.IO.IOException", &e.to_string()),
                    );
                }
                if injected.drop == Some(crate::faults::Drop::After) {
                    return respond(StatusCode::BAD_GATEWAY, "text/plain", Vec::new());
                }
                let xml = envelope(|w| {
                    let mut response = BytesStart::new(format!("{name}Response"));
                    response.push_attribute(("xmlns", ns));
                    w.write_event(Event::Start(response))?;
                    written(w)?;
                    w.write_event(Event::End(BytesEnd::new(format!("{name}Response"))))
                });
                respond(StatusCode::OK, "text/xml; charset=utf-8", xml)
            }
            Err(t) => {
                let id = fresh_id();
                if let Err(e) = self.log_fault(server, actor, &id, &t) {
                    tracing::warn!(error = %e, server, "the server log could not be written");
                }
                let xml = fault_xml(actor, &format!("{ns}/{name}"), &id, &t);
                respond(StatusCode::OK, "text/xml; charset=utf-8", xml)
            }
        }
    }

    /// Runs one operation; the answer and whether the model changed.
    fn client_operation(
        &self,
        server: &str,
        db: &mut ServerDb,
        service: Service,
        operation: &str,
        r: &Request,
    ) -> Result<(Written, bool), Thrown> {
        let sealer = &self.shared.cookies;
        let now = now();
        match (service, operation) {
            (Service::Client, "GetConfig") => {
                let version = r.text(r.operation, "protocolVersion").unwrap_or_default();
                if two_part(&version).is_none() {
                    return Err(thrown(ErrorCode::InvalidParameters, "protocolVersion"));
                }
                let last = xml_time(last_change(db));
                let protocol = self.wsus_version(server).client_protocol();
                let share = format!("\\\\{server}\\UpdateServicesPackages");
                Ok((
                    Box::new(move |w: &mut XmlWriter| {
                        start(w, "GetConfigResult")?;
                        text_element(w, "LastChange", &last)?;
                        text_element(w, "IsRegistrationRequired", "true")?;
                        start(w, "AuthInfo")?;
                        start(w, "AuthPlugInInfo")?;
                        text_element(w, "PlugInID", "SimpleTargeting")?;
                        text_element(w, "ServiceUrl", "SimpleAuthWebService/SimpleAuth.asmx")?;
                        end(w, "AuthPlugInInfo")?;
                        end(w, "AuthInfo")?;
                        start(w, "Properties")?;
                        for (name, value) in [
                            ("MaxExtendedUpdatesPerRequest", "50"),
                            ("PackageServerShare", share.as_str()),
                            ("ProtocolVersion", protocol),
                            ("IsInventoryRequired", "0"),
                            ("ClientReportingLevel", "2"),
                        ] {
                            start(w, "ConfigurationProperty")?;
                            text_element(w, "Name", name)?;
                            text_element(w, "Value", value)?;
                            end(w, "ConfigurationProperty")?;
                        }
                        end(w, "Properties")?;
                        end(w, "GetConfigResult")
                    }),
                    false,
                ))
            }
            (Service::SimpleAuth, "GetAuthorizationCookie") => {
                // WSUS answers an invalid client ID or DNS name with InternalServerError
                // (MS-WUSP notes 50, 51).
                let client_id = r.text(r.operation, "clientId").unwrap_or_default();
                if !is_client_id(&client_id) {
                    return Err(thrown(ErrorCode::InternalServerError, "clientId"));
                }
                let dns_name = r.text(r.operation, "dnsName").unwrap_or_default();
                if !is_dns_name(&dns_name) {
                    return Err(thrown(ErrorCode::InternalServerError, "dnsName"));
                }
                let requested = r
                    .text(r.operation, "targetGroupName")
                    .filter(|g| !g.is_empty());
                // The lab's servers have no named groups: a computer goes to Unassigned
                // Computers whatever it asks for, as a WSUS server puts one that names a group
                // it does not have.
                let group_id = susdb::groups::UNASSIGNED_COMPUTERS.to_string();
                match db.computers.iter_mut().find(|c| c.id == client_id) {
                    Some(c) => {
                        c.dns_name = dns_name;
                        c.requested_group = requested;
                    }
                    None => db.computers.push(Computer {
                        id: client_id.clone(),
                        dns_name,
                        requested_group: requested,
                        group_id: group_id.clone(),
                        registered: false,
                        last_sync: None,
                    }),
                }
                let data = sealer.seal(&Contents {
                    kind: "auth".into(),
                    server: server.to_string(),
                    client_id,
                    group_id,
                    expires: now + COOKIE_SECONDS,
                    config: db.config_change_number,
                    protocol: String::new(),
                });
                Ok((
                    Box::new(move |w: &mut XmlWriter| {
                        start(w, "GetAuthorizationCookieResult")?;
                        text_element(w, "PlugInId", "SimpleTargeting")?;
                        text_element(w, "CookieData", &data)?;
                        end(w, "GetAuthorizationCookieResult")
                    }),
                    true,
                ))
            }
            (Service::Client, "GetCookie") => {
                let cookies: Vec<Node> = r
                    .param("authCookies")
                    .map(|a| {
                        a.children()
                            .filter(|c| {
                                c.is_element() && c.tag_name().name() == "AuthorizationCookie"
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let [auth] = cookies.as_slice() else {
                    return Err(thrown(ErrorCode::InvalidAuthorizationCookie, "authCookies"));
                };
                let data = r.text(*auth, "CookieData").unwrap_or_default();
                let contents = sealer
                    .open(&data, "auth", server, now)
                    .map_err(|_| thrown(ErrorCode::InvalidAuthorizationCookie, ""))?;
                if let Some(old) = r.param("oldCookie")
                    && let Some(data) = r.text(old, "EncryptedData")
                {
                    sealer
                        .open(&data, "sync", server, i64::MIN)
                        .map_err(refused)?;
                }
                let version = r.text(r.operation, "protocolVersion").unwrap_or_default();
                if two_part(&version).is_none() {
                    return Err(thrown(ErrorCode::InvalidParameters, "protocolVersion"));
                }
                let said = r
                    .text(r.operation, "lastChange")
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
                    .map(|t| t.timestamp());
                if said != Some(last_change(db)) {
                    return Err(thrown(ErrorCode::ConfigChanged, ""));
                }
                let expires = now + COOKIE_SECONDS;
                let data = sealer.seal(&Contents {
                    kind: "sync".into(),
                    expires,
                    config: db.config_change_number,
                    protocol: version,
                    ..contents
                });
                Ok((
                    Box::new(cookie_result("GetCookieResult", expires, data)),
                    false,
                ))
            }
            (Service::Client, "RegisterComputer") => {
                let contents = self.client_cookie(r, server, now)?;
                let info = r.param("computerInfo");
                let dns_name = info.and_then(|i| r.text(i, "DnsName"));
                match db.computers.iter_mut().find(|c| c.id == contents.client_id) {
                    Some(c) => {
                        c.registered = true;
                        if let Some(name) = dns_name {
                            c.dns_name = name;
                        }
                    }
                    None => db.computers.push(Computer {
                        id: contents.client_id.clone(),
                        dns_name: dns_name.unwrap_or_default(),
                        requested_group: None,
                        group_id: contents.group_id.clone(),
                        registered: true,
                        last_sync: None,
                    }),
                }
                Ok((Box::new(|_: &mut XmlWriter| Ok(())), true))
            }
            (Service::Client, "SyncUpdates") => {
                let contents = self.client_cookie(r, server, now)?;
                let parameters = r
                    .param("parameters")
                    .ok_or_else(|| thrown(ErrorCode::InvalidParameters, "parameters"))?;
                let server_protocol = two_part(self.wsus_version(server).client_protocol());
                for newer in ["FilterCategoryIds", "NeedTwoGroupOutOfScopeUpdates"] {
                    if r.child(parameters, newer).is_some() && server_protocol < Some((3, 2)) {
                        return Err(thrown(ErrorCode::InvalidParameters, newer));
                    }
                }
                let skip_software =
                    r.text(parameters, "SkipSoftwareSync").as_deref() == Some("true");
                if r.child(parameters, "SystemSpec").is_some() && !skip_software {
                    return Err(thrown(ErrorCode::InvalidParameters, "SystemSpec"));
                }
                let installed = r.ints(parameters, "InstalledNonLeafUpdateIDs")?;
                if installed.len() > MAX_INSTALLED_NON_LEAF {
                    return Err(thrown(
                        ErrorCode::InvalidParameters,
                        "InstalledNonLeafUpdateIDs",
                    ));
                }
                let other = r.ints(parameters, "OtherCachedUpdateIDs")?;
                if contents.config != db.config_change_number {
                    return Err(thrown(ErrorCode::ConfigChanged, ""));
                }
                let Some(computer) = db
                    .computers
                    .iter()
                    .position(|c| c.id == contents.client_id && c.registered)
                else {
                    return Err(thrown(ErrorCode::RegistrationRequired, ""));
                };
                let answer = if skip_software {
                    // The lab has no drivers.
                    Sync::Answer {
                        new_updates: Vec::new(),
                        out_of_scope: Vec::new(),
                        truncated: false,
                    }
                } else {
                    catalog::sync(
                        db,
                        &Scan {
                            installed_non_leaf: &installed,
                            other_cached: &other,
                            group_id: &contents.group_id,
                            fixed: self.wsus_version(server).client_fixed(),
                            page: self.shared.config.client_page.unwrap_or(200),
                        },
                    )
                };
                let (new_updates, out_of_scope, truncated) = match answer {
                    Sync::Answer {
                        new_updates,
                        out_of_scope,
                        truncated,
                    } => (new_updates, out_of_scope, truncated),
                    Sync::DuplicateKey { key } => {
                        return Err(Thrown {
                            code: ErrorCode::InternalServerError,
                            message: String::new(),
                            duplicate_key: Some(key),
                        });
                    }
                };
                if let Some(c) = db.computers.get_mut(computer) {
                    c.last_sync = Some(xml_time(now));
                }
                let expires = now + COOKIE_SECONDS;
                let cookie = sealer.seal(&Contents {
                    expires,
                    ..contents
                });
                Ok((
                    Box::new(move |w: &mut XmlWriter| {
                        start(w, "SyncUpdatesResult")?;
                        start(w, "NewUpdates")?;
                        for offer in &new_updates {
                            start(w, "UpdateInfo")?;
                            text_element(w, "ID", &offer.revision_id.to_string())?;
                            start(w, "Deployment")?;
                            let d = &offer.deployment;
                            text_element(w, "ID", &d.id.to_string())?;
                            text_element(w, "Action", d.action)?;
                            text_element(w, "IsAssigned", bool_text(d.is_assigned))?;
                            text_element(w, "LastChangeTime", &d.last_change)?;
                            end(w, "Deployment")?;
                            text_element(w, "IsLeaf", bool_text(offer.is_leaf))?;
                            text_element(w, "Xml", &offer.xml)?;
                            end(w, "UpdateInfo")?;
                        }
                        end(w, "NewUpdates")?;
                        start(w, "OutOfScopeRevisionIDs")?;
                        for id in &out_of_scope {
                            text_element(w, "int", &id.to_string())?;
                        }
                        end(w, "OutOfScopeRevisionIDs")?;
                        text_element(w, "Truncated", bool_text(truncated))?;
                        cookie_result("NewCookie", expires, cookie)(w)?;
                        end(w, "SyncUpdatesResult")
                    }),
                    true,
                ))
            }
            // `served` lets no other operation through.
            _ => Err(thrown(ErrorCode::InternalServerError, operation)),
        }
    }

    /// The session cookie of a request (`cookie`), valid for `server` now.
    fn client_cookie(&self, r: &Request, server: &str, now: i64) -> Result<Contents, Thrown> {
        let data = r
            .param("cookie")
            .and_then(|c| r.text(c, "EncryptedData"))
            .ok_or_else(|| thrown(ErrorCode::InvalidCookie, ""))?;
        self.shared
            .cookies
            .open(&data, "sync", server, now)
            .map_err(refused)
    }

    /// Appends the fault to `server`'s SoftwareDistribution.log under `--server-log`, as the KB
    /// shows it: for its fault the ArgumentException and its stack, then for every fault the
    /// `ThrowException` line with the ID the client gets.
    fn log_fault(&self, server: &str, actor: &str, id: &str, t: &Thrown) -> Result<(), LabError> {
        let Some(dir) = &self.shared.config.server_log else {
            return Ok(());
        };
        let dir = dir.join(server);
        let io = |source| LabError::WriteLog {
            path: dir.display().to_string(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(io)?;
        let stamp = chrono::Utc::now().format("%Y-%m-%d %H:%M:%S%.3f");
        let mut text = String::new();
        if let Some(key) = t.duplicate_key {
            text.push_str(&format!(
                "{stamp} UTC Error w3wp.12 ClientImplementation.SyncUpdates System.ArgumentException: Item has already been added. Key in dictionary: '{key}'  Key being added: '{key}'\r\n\
                 at System.Collections.Hashtable.Insert(Object key, Object nvalue, Boolean add)\r\n\
                 at System.Collections.Hashtable.Add(Object key, Object value)\r\n\
                 at Microsoft.UpdateServices.Internal.ClientImplementation.GetSyncInfo(DataAccess dataAccess, Hashtable stateTable, Hashtable deploymentTable, Boolean haveGroupsChanged, Boolean doChunking)\r\n\
                 at Microsoft.UpdateServices.Internal.ClientImplementation.SoftwareSync(DataAccess dataAccess, UnencryptedCookieData cookieData, Int32[] installedNonLeafUpdateIds, Int32[] leafUpdateIds, Boolean haveGroupsChanged, Boolean expressQuery)\r\n\
                 at Microsoft.UpdateServices.Internal.ClientImplementation.SyncUpdates(Cookie cookie, SyncUpdateParameters parameters)\r\n\
                 at Microsoft.UpdateServices.Internal.Client.SyncUpdates(Cookie cookie, SyncUpdateParameters parameters)\r\n"
            ));
        }
        text.push_str(&format!(
            "{stamp} UTC Warning w3wp.12 SoapUtilities.CreateException ThrowException: actor = {actor}, ID={id}, ErrorCode={}, Message={}, Client=?\r\n",
            t.code.name(),
            t.message
        ));
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("SoftwareDistribution.log"))
            .map_err(io)?;
        file.write_all(text.as_bytes()).map_err(io)
    }
}

fn bool_text(b: bool) -> &'static str {
    if b { "true" } else { "false" }
}

fn start(w: &mut XmlWriter, name: &str) -> std::io::Result<()> {
    w.write_event(Event::Start(BytesStart::new(name)))
}

fn end(w: &mut XmlWriter, name: &str) -> std::io::Result<()> {
    w.write_event(Event::End(BytesEnd::new(name)))
}

/// A `Cookie` element: its clear-text expiry and its data (MS-WUSP 2.2.3.5).
fn cookie_result(
    name: &'static str,
    expires: i64,
    data: String,
) -> impl FnOnce(&mut XmlWriter) -> std::io::Result<()> + Send {
    move |w| {
        start(w, name)?;
        text_element(w, "Expiration", &xml_time(expires))?;
        text_element(w, "EncryptedData", &data)?;
        end(w, name)
    }
}

/// The SOAP fault of MS-WUSP 2.2.2.4, as the spec's examples and the KB's client log show it:
/// `faultstring` "Fault occurred", the service's URL as `faultactor`, and `ErrorCode`,
/// `Message`, `ID`, `Method` (quoted) in `detail`.
fn fault_xml(actor: &str, method: &str, id: &str, t: &Thrown) -> Vec<u8> {
    envelope(|w| {
        start(w, "soap:Fault")?;
        text_element(w, "faultcode", "soap:Client")?;
        text_element(w, "faultstring", "Fault occurred")?;
        text_element(w, "faultactor", actor)?;
        start(w, "detail")?;
        text_element(w, "ErrorCode", t.code.name())?;
        if t.message.is_empty() {
            w.write_event(Event::Empty(BytesStart::new("Message")))?;
        } else {
            text_element(w, "Message", &t.message)?;
        }
        text_element(w, "ID", id)?;
        start(w, "Method")?;
        w.write_event(Event::Text(BytesText::new(&format!("\"{method}\""))))?;
        end(w, "Method")?;
        end(w, "detail")?;
        end(w, "soap:Fault")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_and_dns_names_are_checked_as_the_spec_defines_them() {
        assert!(is_client_id("0c1e57a1-0000-4000-8000-000000000001"));
        assert!(!is_client_id("0C1E57A1"), "a-z only");
        assert!(!is_client_id(""));
        assert!(is_dns_name("wsus-reset-probe.corp.example"));
        assert!(!is_dns_name("-bad.example") && !is_dns_name("a..b") && !is_dns_name("a b"));
        assert_eq!(two_part("1.0"), Some((1, 0)));
        assert_eq!(two_part("1"), None);
    }

    #[test]
    fn fault_ids_are_fresh_version_4_guids() {
        let (a, b) = (fresh_id(), fresh_id());
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"), "{a}");
    }
}
