//! The proof from the clients' side (`verify --client`): a synthetic Windows Update client scans
//! a server through its client web services (MS-WUSP), claiming installed every non-leaf revision
//! the server sends, until the Office 2003 SP1 update's prerequisites are claimed or nothing new
//! comes, and then its computer record is deleted again through the administration web service.
//!
//! Sources (`shared/docs/wsus-client-protocol.md`, MS-WUSP 38.0): the conversation GetConfig ->
//! GetAuthorizationCookie (SimpleAuth, at the `ServiceUrl` GetConfig names) -> GetCookie ->
//! RegisterComputer when `IsRegistrationRequired` -> SyncUpdates (3.1.5.2 to 3.1.5.7); the
//! fault's `detail` (2.2.2.4) and what each ErrorCode asks of a client; the server protocol per
//! WSUS release (note 12: 3.0, 3.1, 3.2 for SP2, which has the KB's fix); the KB's warning that
//! the first scan after the repair may still fail. The client speaks protocol 1.0, the WSUS 3.0
//! client's (note 11), and sends none of the elements newer servers take (`FilterCategoryIds`,
//! `NeedTwoGroupOutOfScopeUpdates`: server protocol 3.2). These names are written here, apart
//! from the lab's (`susdb-lab`'s `wusp/`), so that the two cannot be wrong together.
//!
//! What a scan proves: that this client, claiming what it was sent (Office 2003 among it), can
//! scan; not that SUSDB is consistent (`verify` proves that) nor that every group's clients can
//! (only the groups this client is in: All Computers and its own, `--client-group`).

pub mod probes;

use std::time::Duration;

use serde::Serialize;
use topology::Server;

use crate::reach::api::Http;
use crate::reach::api::soap::{Element, parse_xml, request_in};
use crate::reach::{ConnectOptions, ServerError};

const CLIENT_PATH: &str = "/ClientWebService/client.asmx";
const CLIENT_NS: &str = "http://www.microsoft.com/SoftwareDistribution/Server/ClientWebService";
const SIMPLE_AUTH_NS: &str =
    "http://www.microsoft.com/SoftwareDistribution/Server/SimpleAuthWebService";
/// The client protocol version sent (MS-WUSP note 11: the WSUS 3.0 client's).
const PROTOCOL: &str = "1.0";
/// The Office 2003 product category (public admin scripts; `wsus-client-protocol.md` Q2).
const OFFICE_2003: &str = "1403f223-a63f-f572-82ba-c92391218055";
/// At most this many `InstalledNonLeafUpdateIDs` (a WS2025 server refused 401).
const MAX_CLAIMED: usize = 400;
/// `SyncUpdates` round trips per scan at most: a server that keeps sending something new is
/// not scanned forever.
const MAX_SYNCS: usize = 200;
/// Restarts of the conversation the server may ask for (ConfigChanged, CookieExpired,
/// InvalidCookie) before the scan gives up.
const MAX_RESTARTS: usize = 3;

/// Who the synthetic client is: one computer name and client ID per run, never a real
/// machine's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Identity {
    /// A ClientIdString (MS-WUSP glossary: a-z, 0-9, hyphen): a fresh random GUID.
    pub client_id: String,
    /// `wsus-reset-probe-XXXXXXXX.invalid`: DNS-valid, and `.invalid` (RFC 2606) is no real host.
    pub dns_name: String,
    /// The target group asked for (client-side targeting), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

impl Identity {
    pub fn fresh(group: Option<String>) -> Identity {
        let n = fastrand::u128(..) & !(0xF000_u128 << 64) | (0x4000_u128 << 64);
        let n = n & !(0xC000_u128 << 48) | (0x8000_u128 << 48);
        let hex = format!("{n:032x}");
        Identity {
            client_id: format!(
                "{}-{}-{}-{}-{}",
                &hex[..8],
                &hex[8..12],
                &hex[12..16],
                &hex[16..20],
                &hex[20..]
            ),
            dns_name: format!("wsus-reset-probe-{}.invalid", &hex[..8]),
            group,
        }
    }
}

/// A fault the server sent (MS-WUSP 2.2.2.4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fault {
    pub error_code: String,
    pub id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
    pub method: String,
}

impl Fault {
    /// `Method: ErrorCode (message), ID=...`.
    fn words(&self) -> String {
        let message = if self.message.is_empty() {
            String::new()
        } else {
            format!(" ({})", self.message)
        };
        format!(
            "{}: {}{message}, ID={}",
            self.method.rsplit('/').next().unwrap_or_default(),
            self.error_code,
            self.id
        )
    }
}

/// One server's answer to the scan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "kebab-case")]
pub enum Verdict {
    /// The scan ended with the Office 2003 prerequisites claimed.
    CanScan {
        round_trips: usize,
        /// The Office 2003 SP1 update itself was offered (approved or not approved for this
        /// client's groups); a declined update never is.
        update_in_scope: bool,
        /// The first scan failed with this fault, the retry passed (KB 954960: "the first
        /// synchronization fails but subsequent ones succeed").
        #[serde(skip_serializing_if = "Option::is_none")]
        first_fault: Option<Fault>,
        /// The ErrorCodes with which the server asked the client to start over (ConfigChanged,
        /// CookieExpired, ...), which it did.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        started_over: Vec<String>,
    },
    /// `SyncUpdates` threw InternalServerError with the prerequisites claimed: the KB's fault
    /// (the server log shows "Item has already been added" with this ID), on the retry too.
    Fault {
        round_trips: usize,
        fault: Fault,
        first_fault: Fault,
    },
    /// The scan ended without Office 2003 in scope: nothing about this fault is shown.
    NotProven { round_trips: usize, reason: String },
    /// The server's client web service has the fix (server protocol 3.2: WSUS 3.0 SP2): a scan
    /// cannot show this fault, so none was made.
    Fixed { protocol: String },
    /// Not scanned.
    Skipped { reason: String },
    /// The scan could not be made.
    Error { message: String },
}

impl Verdict {
    /// Whether this server's clients are shown able to scan (or cannot meet the fault).
    pub fn ok(&self) -> bool {
        matches!(
            self,
            Verdict::CanScan { .. } | Verdict::Fixed { .. } | Verdict::Skipped { .. }
        )
    }

    pub fn describe(&self) -> String {
        match self {
            Verdict::CanScan {
                round_trips,
                update_in_scope,
                first_fault,
                started_over,
            } => {
                let scope = if *update_in_scope {
                    "the Office 2003 SP1 update in scope"
                } else {
                    "Office 2003 claimed; the SP1 update not offered (declined)"
                };
                let retry = first_fault.as_ref().map_or(String::new(), |f| {
                    format!(
                        "; passed on the retry, the first scan failed: {}, ID={}",
                        f.error_code, f.id
                    )
                });
                let over = if started_over.is_empty() {
                    String::new()
                } else {
                    format!("; started over after {}", started_over.join(", "))
                };
                format!("clients can scan ({round_trips} round trips; {scope}{over}{retry})")
            }
            Verdict::Fault {
                fault, first_fault, ..
            } => format!(
                "SyncUpdates fails: {}, ID={} (the KB 954960 fault; the first try: ID={})",
                fault.error_code, fault.id, first_fault.id
            ),
            Verdict::NotProven {
                round_trips,
                reason,
            } => format!("not proven: {reason} ({round_trips} round trips)"),
            Verdict::Fixed { protocol } => format!(
                "hotfix 954960 installed (server protocol {protocol}: WSUS 3.0 SP2 or later): a \
                 scan cannot show this fault"
            ),
            Verdict::Skipped { reason } => format!("not scanned: {reason}"),
            Verdict::Error { message } => format!("scan failed: {message}"),
        }
    }
}

/// What one scan found. `round_trips` counts every `SyncUpdates`, over the conversations the
/// server had the client start over (`started_over`: their ErrorCodes).
#[derive(Debug)]
enum Ended {
    Done {
        round_trips: usize,
        office_claimed: bool,
        update_in_scope: bool,
        started_over: Vec<String>,
    },
    Faulted {
        round_trips: usize,
        fault: Fault,
        /// The Office 2003 product was claimed when it came.
        office_claimed: bool,
        started_over: Vec<String>,
    },
    Fixed(String),
}

/// A client-web-service conversation on one connection.
struct Conversation<'a> {
    http: Http,
    identity: &'a Identity,
    timeout: Duration,
}

/// An answer: its operation's response element, or the fault the server sent.
enum Answered {
    Response(Element),
    Fault(Fault),
}

/// Why a step of the conversation got no answer: the server's fault, or no answer at all.
enum Stop {
    Fault(Fault),
    Failed(ServerError),
}

impl From<ServerError> for Stop {
    fn from(e: ServerError) -> Self {
        Stop::Failed(e)
    }
}

/// What authorization ends with.
enum Authorized {
    /// The cookie for `SyncUpdates` (registered, where the server requires it).
    Cookie(Element),
    /// The server protocol of a server with the fix: nothing more was sent.
    Fixed(String),
}

fn text_of(at: &Element, name: &str) -> String {
    at.child(name)
        .map(|c| c.text.trim().to_string())
        .unwrap_or_default()
}

impl Conversation<'_> {
    async fn call(
        &mut self,
        path: &str,
        ns: &str,
        operation: &str,
        params: &[Element],
    ) -> Result<Answered, ServerError> {
        let body = request_in(ns, operation, params);
        let action = format!("{ns}/{operation}");
        let sent = self.http.post(path, &action, body, None);
        let response = tokio::time::timeout(self.timeout, sent)
            .await
            .map_err(|_| ServerError::timeout(operation, self.timeout))??;
        let status = response.status();
        let origin = self.http.origin.clone();
        let document = parse_xml(response.body()).map_err(|e| {
            ServerError::permanent(format!(
                "{operation}: HTTP {status} from {origin}{path}: {e}"
            ))
        })?;
        let body = document.path(&["Envelope", "Body"]).ok_or_else(|| {
            ServerError::permanent(format!(
                "{operation}: HTTP {status} from {origin}{path}: not a SOAP answer (is this a \
                 WSUS web site?)"
            ))
        })?;
        // A fault is read from the body whatever the status: the KB's client log shows one
        // sent with HTTP 200, a newer server sends 500.
        if let Some(fault) = body.child("Fault") {
            let detail = fault.child("detail");
            let field = |name: &str| detail.map(|d| text_of(d, name)).unwrap_or_default();
            let error_code = field("ErrorCode");
            if error_code.is_empty() {
                return Err(ServerError::permanent(format!(
                    "{operation}: {}",
                    text_of(fault, "faultstring")
                )));
            }
            return Ok(Answered::Fault(Fault {
                error_code,
                id: field("ID"),
                message: field("Message"),
                method: field("Method").trim_matches('"').to_string(),
            }));
        }
        if !status.is_success() {
            return Err(ServerError::permanent(format!(
                "{operation}: HTTP {status} from {origin}{path}"
            )));
        }
        body.child(&format!("{operation}Response"))
            .cloned()
            .map(Answered::Response)
            .ok_or_else(|| ServerError::permanent(format!("{operation}: no {operation}Response")))
    }

    /// A response, or why there is none.
    async fn expect(
        &mut self,
        path: &str,
        ns: &str,
        operation: &str,
        params: &[Element],
    ) -> Result<Element, Stop> {
        match self.call(path, ns, operation, params).await? {
            Answered::Response(r) => Ok(r),
            Answered::Fault(f) => Err(Stop::Fault(f)),
        }
    }

    /// GetConfig to GetCookie, and RegisterComputer where the server requires it.
    async fn authorize(&mut self) -> Result<Authorized, Stop> {
        let config = self
            .expect(
                CLIENT_PATH,
                CLIENT_NS,
                "GetConfig",
                &[Element::text("protocolVersion", PROTOCOL)],
            )
            .await?;
        let result = config
            .child("GetConfigResult")
            .ok_or_else(|| ServerError::permanent("GetConfig: no GetConfigResult"))?;
        let property = |name: &str| {
            result
                .child("Properties")
                .into_iter()
                .flat_map(|p| p.children.iter())
                .find(|p| text_of(p, "Name") == name)
                .map(|p| text_of(p, "Value"))
        };
        let protocol = property("ProtocolVersion").unwrap_or_default();
        let version: Vec<u32> = protocol.split('.').map_while(|p| p.parse().ok()).collect();
        if version.as_slice() >= [3, 2].as_slice() {
            return Ok(Authorized::Fixed(protocol));
        }
        // SimpleAuth's URL, relative to the site's root (MS-WUSP 2.2.2.2.1).
        let service_url = result
            .path(&["AuthInfo", "AuthPlugInInfo"])
            .filter(|p| text_of(p, "PlugInID") == "SimpleTargeting")
            .map(|p| text_of(p, "ServiceUrl"))
            .unwrap_or_else(|| "SimpleAuthWebService/SimpleAuth.asmx".into());
        if service_url.contains("://") || service_url.contains("..") {
            return Err(Stop::Failed(ServerError::permanent(format!(
                "GetConfig names SimpleAuth at `{service_url}`, not a path on this site: refused"
            ))));
        }
        let auth_path = format!("/{}", service_url.trim_start_matches('/'));
        let mut params = vec![Element::text("clientId", &self.identity.client_id)];
        if let Some(group) = &self.identity.group {
            params.push(Element::text("targetGroupName", group));
        }
        params.push(Element::text("dnsName", &self.identity.dns_name));
        let auth = self
            .expect(
                &auth_path,
                SIMPLE_AUTH_NS,
                "GetAuthorizationCookie",
                &params,
            )
            .await?;
        let issued = auth
            .child("GetAuthorizationCookieResult")
            .ok_or_else(|| ServerError::permanent("GetAuthorizationCookie: no result"))?;
        let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
        let cookie = self
            .expect(
                CLIENT_PATH,
                CLIENT_NS,
                "GetCookie",
                &[
                    Element::with(
                        "authCookies",
                        vec![Element::with(
                            "AuthorizationCookie",
                            vec![
                                Element::text("PlugInId", text_of(issued, "PlugInId")),
                                Element::text("CookieData", text_of(issued, "CookieData")),
                            ],
                        )],
                    ),
                    Element::text("lastChange", text_of(result, "LastChange")),
                    Element::text("currentTime", now),
                    Element::text("protocolVersion", PROTOCOL),
                ],
            )
            .await?;
        let cookie = cookie
            .child("GetCookieResult")
            .ok_or_else(|| ServerError::permanent("GetCookie: no GetCookieResult"))?;
        let cookie = Element::with("cookie", cookie.children.clone());
        if text_of(result, "IsRegistrationRequired") == "true" {
            self.register(&cookie).await?;
        }
        Ok(Authorized::Cookie(cookie))
    }

    async fn register(&mut self, cookie: &Element) -> Result<(), Stop> {
        // A Windows XP SP3 client with the Windows Update Agent 7.2 (the era of Office 2003),
        // in the order of the WSDL's ComputerInfo sequence; no element Windows XP lacks
        // (MS-WUSP note 14).
        let info = [
            ("DnsName", self.identity.dns_name.as_str()),
            ("OSMajorVersion", "5"),
            ("OSMinorVersion", "1"),
            ("OSBuildNumber", "2600"),
            ("OSServicePackMajorNumber", "3"),
            ("OSServicePackMinorNumber", "0"),
            ("OSLocale", "en-US"),
            ("ComputerManufacturer", "wsus-reset"),
            ("ComputerModel", "synthetic client (verify --client)"),
            ("BiosReleaseDate", "2008-04-21T00:00:00"),
            ("ProcessorArchitecture", "X86"),
            ("SuiteMask", "256"),
            ("OldProductType", "1"),
            ("NewProductType", "1"),
            ("SystemMetrics", "0"),
            ("ClientVersionMajorNumber", "7"),
            ("ClientVersionMinorNumber", "2"),
            ("ClientVersionBuildNumber", "6001"),
            ("ClientVersionQfeNumber", "788"),
        ]
        .map(|(name, value)| Element::text(name, value));
        self.expect(
            CLIENT_PATH,
            CLIENT_NS,
            "RegisterComputer",
            &[cookie.clone(), Element::with("computerInfo", info.to_vec())],
        )
        .await
        .map(drop)
    }

    /// One scan: authorize, then SyncUpdates until nothing new comes.
    async fn scan(&mut self) -> Result<Ended, ServerError> {
        let mut started_over: Vec<String> = Vec::new();
        let mut round_trips = 0;
        'conversation: loop {
            let mut cookie = match self.authorize().await {
                Ok(Authorized::Cookie(cookie)) => cookie,
                Ok(Authorized::Fixed(protocol)) => return Ok(Ended::Fixed(protocol)),
                Err(Stop::Fault(fault)) => {
                    return Err(ServerError::permanent(format!(
                        "during authorization, {}",
                        fault.words()
                    )));
                }
                Err(Stop::Failed(e)) => return Err(e),
            };
            let (mut installed, mut cached): (Vec<String>, Vec<String>) = (Vec::new(), Vec::new());
            let (mut office_claimed, mut update_in_scope) = (false, false);
            let mut registered_again = false;
            for _ in 0..MAX_SYNCS {
                round_trips += 1;
                let ints = |name: &str, ids: &[String]| {
                    Element::with(
                        name,
                        ids.iter().map(|id| Element::text("int", id)).collect(),
                    )
                };
                let parameters = Element::with(
                    "parameters",
                    vec![
                        Element::text("ExpressQuery", "false"),
                        ints("InstalledNonLeafUpdateIDs", &installed),
                        ints("OtherCachedUpdateIDs", &cached),
                        Element::text("SkipSoftwareSync", "false"),
                    ],
                );
                let answer = self
                    .call(
                        CLIENT_PATH,
                        CLIENT_NS,
                        "SyncUpdates",
                        &[cookie.clone(), parameters],
                    )
                    .await?;
                let response = match answer {
                    Answered::Response(r) => r,
                    Answered::Fault(fault) => match fault.error_code.as_str() {
                        // What each ErrorCode asks of a client (MS-WUSP 2.2.2.4).
                        "RegistrationRequired" if !registered_again => {
                            registered_again = true;
                            match self.register(&cookie).await {
                                Ok(()) => continue,
                                Err(Stop::Fault(fault)) => {
                                    return Ok(Ended::Faulted {
                                        round_trips,
                                        fault,
                                        office_claimed,
                                        started_over,
                                    });
                                }
                                Err(Stop::Failed(e)) => return Err(e),
                            }
                        }
                        // 2.2.2.4 asks for GetConfig (not after CookieExpired), the two
                        // cookie calls, and RefreshCache after ServerChanged/InvalidCookie. The
                        // whole conversation again covers each, GetConfig being a SHOULD-not, and
                        // needs no RefreshCache: the cache it would renew is dropped.
                        "ConfigChanged" | "CookieExpired" | "InvalidCookie" | "ServerChanged"
                            if started_over.len() < MAX_RESTARTS =>
                        {
                            started_over.push(fault.error_code);
                            continue 'conversation;
                        }
                        _ => {
                            return Ok(Ended::Faulted {
                                round_trips,
                                fault,
                                office_claimed,
                                started_over,
                            });
                        }
                    },
                };
                let result = response
                    .child("SyncUpdatesResult")
                    .ok_or_else(|| ServerError::permanent("SyncUpdates: no SyncUpdatesResult"))?;
                if let Some(fresh) = result.child("NewCookie") {
                    cookie = Element::with("cookie", fresh.children.clone());
                }
                let offered: Vec<&Element> = result
                    .child("NewUpdates")
                    .map(|n| {
                        n.children
                            .iter()
                            .filter(|u| u.name == "UpdateInfo")
                            .collect()
                    })
                    .unwrap_or_default();
                if offered.is_empty() {
                    return Ok(Ended::Done {
                        round_trips,
                        office_claimed,
                        update_in_scope,
                        started_over,
                    });
                }
                for update in offered {
                    let id = text_of(update, "ID");
                    let core = parse_xml(text_of(update, "Xml").as_bytes()).ok();
                    let update_id = core
                        .as_ref()
                        .and_then(|c| c.child("UpdateIdentity"))
                        .and_then(|i| i.attribute("UpdateID"))
                        .unwrap_or_default()
                        .to_ascii_lowercase();
                    let leaf = text_of(update, "IsLeaf") == "true";
                    if update_id.eq_ignore_ascii_case(susdb::KB954960_UPDATE_ID) {
                        update_in_scope = true;
                    }
                    if !leaf && installed.len() < MAX_CLAIMED {
                        office_claimed |= update_id == OFFICE_2003;
                        installed.push(id);
                    } else {
                        cached.push(id);
                    }
                }
            }
            return Err(ServerError::permanent(format!(
                "the server was still sending new updates after {MAX_SYNCS} SyncUpdates"
            )));
        }
    }
}

/// One scan of `server` (connect, converse), within the timeouts.
async fn scan_once(
    server: &Server,
    identity: &Identity,
    options: &ConnectOptions,
) -> Result<Ended, ServerError> {
    let api = server
        .api
        .as_ref()
        .ok_or_else(|| ServerError::permanent("no `api`"))?;
    let http = tokio::time::timeout(options.connect_timeout, Http::connect(api, options))
        .await
        .map_err(|_| ServerError::timeout("connecting", options.connect_timeout))??;
    let mut conversation = Conversation {
        http,
        identity,
        timeout: options.command_timeout,
    };
    conversation.scan().await
}

/// Scans `server` as `identity`, once more after an InternalServerError (the KB's first scan
/// after the repair), and judges.
pub async fn scan(server: &Server, identity: &Identity, options: &ConnectOptions) -> Verdict {
    if server.api.is_none() {
        return Verdict::Skipped {
            reason: "no `api`: give the server its web site as `api` (with `transport: sql` \
                     to keep reaching its SUSDB); the scan and the removal of its record use it"
                .into(),
        };
    }
    let judge = |ended: Ended, first_fault: Option<Fault>| match (ended, first_fault) {
        (Ended::Fixed(protocol), _) => Verdict::Fixed { protocol },
        (
            Ended::Done {
                round_trips,
                office_claimed: true,
                update_in_scope,
                started_over,
            },
            first_fault,
        ) => Verdict::CanScan {
            round_trips,
            update_in_scope,
            first_fault,
            started_over,
        },
        (Ended::Done { round_trips, .. }, _) => Verdict::NotProven {
            round_trips,
            reason: "the Office 2003 product never came into scope, so the client could not \
                     claim what the fault needs (does the server sync Office 2003?)"
                .into(),
        },
        // InternalServerError twice, with the Office 2003 prerequisites claimed.
        (
            Ended::Faulted {
                round_trips,
                fault,
                office_claimed: true,
                ..
            },
            Some(first_fault),
        ) if fault.error_code == "InternalServerError" => Verdict::Fault {
            round_trips,
            fault,
            first_fault,
        },
        (
            Ended::Faulted {
                fault,
                started_over,
                ..
            },
            _,
        ) => Verdict::Error {
            message: if started_over.is_empty() {
                fault.words()
            } else {
                format!(
                    "{} (after starting over {} time(s): {})",
                    fault.words(),
                    started_over.len(),
                    started_over.join(", ")
                )
            },
        },
    };
    match scan_once(server, identity, options).await {
        Ok(Ended::Faulted { fault, .. }) if fault.error_code == "InternalServerError" => {
            match scan_once(server, identity, options).await {
                Ok(ended) => judge(ended, Some(fault)),
                Err(e) => Verdict::Error { message: e.message },
            }
        }
        Ok(ended) => judge(ended, None),
        Err(e) => Verdict::Error { message: e.message },
    }
}

/// What became of the synthetic client's computer record on a server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "record", rename_all = "kebab-case")]
pub enum Removal {
    /// Deleted, and read back gone.
    Removed,
    /// The server holds no record of that name with the client's ID (it never recorded one).
    NotFound,
    /// Still there, or not known: the probe stays in the state directory's record.
    Left { reason: String, manual_step: String },
}

impl Removal {
    pub fn describe(&self, probe: &probes::Probe) -> String {
        match self {
            Removal::Removed => format!("computer {} removed", probe.dns_name),
            Removal::NotFound => format!("no computer {} on record", probe.dns_name),
            Removal::Left {
                reason,
                manual_step,
            } => format!(
                "computer {} LEFT on the server ({reason}); remove it {manual_step}",
                probe.dns_name
            ),
        }
    }
}

/// Deletes `probe`'s computer record through `server`'s administration web service
/// (`ExecuteSPGetComputerTargetByName`, `ExecuteSPDeleteComputer`, both looked up in its WSDL
/// first) and reads it back.
pub async fn remove(server: &Server, probe: &probes::Probe, options: &ConnectOptions) -> Removal {
    let left = |reason: String| Removal::Left {
        reason,
        manual_step: probe.manual_step(),
    };
    let held = |rows: &[Vec<String>]| {
        rows.iter().any(|row| {
            row.iter()
                .any(|cell| cell.eq_ignore_ascii_case(&probe.client_id))
        })
    };
    let attempt = async {
        let mut session = crate::reach::api::open(server, options).await?;
        let rows = session.computers_named(&probe.dns_name).await?;
        if !held(&rows) {
            return Ok(Removal::NotFound);
        }
        // An error here may still have deleted it (a lost answer): the read-back decides.
        let deleted = session.delete_computer(&probe.client_id).await;
        let rows = session.computers_named(&probe.dns_name).await?;
        Ok::<_, ServerError>(match (held(&rows), deleted) {
            (false, _) => Removal::Removed,
            (true, Err(e)) => left(format!("ExecuteSPDeleteComputer: {}", e.message)),
            (true, Ok(())) => left("deleted, yet read back".into()),
        })
    };
    let limit = options.connect_timeout + options.command_timeout * 4;
    match tokio::time::timeout(limit, attempt).await {
        Ok(Ok(removal)) => removal,
        Ok(Err(e)) => left(e.message),
        Err(_) => left(format!("no answer within {} s", limit.as_secs())),
    }
}

/// One server's client check: the scan's verdict and what became of its computer record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClientCheck {
    pub server: String,
    /// The client web service scanned, as its server logs it (`actor`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// When the scan ended (local time, as a client log has it).
    pub time: String,
    #[serde(flatten)]
    pub verdict: Verdict,
    pub describe: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub removal: Option<Removal>,
}

/// Scans `server` as `identity` and removes the computer record again, the probe on record in
/// `probes` from before the client first names itself until the record is gone.
pub async fn check(
    server: &Server,
    identity: &Identity,
    probes: &probes::Probes,
    options: &ConnectOptions,
) -> ClientCheck {
    let finish = |verdict: Verdict, removal: Option<Removal>| ClientCheck {
        server: server.name.clone(),
        url: server
            .api
            .as_ref()
            .map(|api| format!("{}{CLIENT_PATH}", api.origin())),
        time: chrono::Local::now().format("%Y-%m-%d %H:%M:%S").to_string(),
        describe: verdict.describe(),
        verdict,
        removal,
    };
    if server.api.is_none() {
        return finish(scan(server, identity, options).await, None);
    }
    let probe = probes::Probe {
        server: server.name.clone(),
        client_id: identity.client_id.clone(),
        dns_name: identity.dns_name.clone(),
        since: chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        left: None,
    };
    if let Err(e) = probes.add(probe.clone()) {
        let message = format!("not scanned: the probe could not be recorded first ({e})");
        return finish(Verdict::Error { message }, None);
    }
    let verdict = scan(server, identity, options).await;
    // A server with the fix was asked GetConfig only: nothing was recorded there.
    let removal = match verdict {
        Verdict::Fixed { .. } => None,
        _ => Some(note_left(
            probes,
            remove(server, &probe, options).await,
            &probe,
        )),
    };
    if matches!(removal, None | Some(Removal::Removed | Removal::NotFound))
        && let Err(e) = probes.remove(&server.name, &identity.client_id)
    {
        let message = format!("the probe record could not be updated ({e})");
        return finish(
            verdict,
            Some(Removal::Left {
                reason: message,
                manual_step: probe.manual_step(),
            }),
        );
    }
    finish(verdict, removal)
}

/// A record left on its server is noted, with why and its manual step, on its probe.
fn note_left(probes: &probes::Probes, removal: Removal, probe: &probes::Probe) -> Removal {
    match removal {
        Removal::Left {
            reason,
            manual_step,
        } => {
            let reason = match probes.mark_left(&probe.server, &probe.client_id, &reason) {
                Ok(()) => reason,
                Err(e) => format!("{reason}; the probe record could not say so ({e})"),
            };
            Removal::Left {
                reason,
                manual_step,
            }
        }
        removal => removal,
    }
}

/// Removes the records an earlier run left (`probes` on record), for servers of `servers`; each
/// probe removed is forgotten. Those not in `servers` are left on record.
pub async fn remove_leftovers(
    servers: &[&Server],
    probes: &probes::Probes,
    options: &ConnectOptions,
) -> Vec<(probes::Probe, Removal)> {
    let mut done = Vec::new();
    for probe in probes.pending() {
        let Some(server) = servers
            .iter()
            .find(|s| s.name.eq_ignore_ascii_case(&probe.server))
        else {
            continue;
        };
        let removal = if server.api.is_some() {
            remove(server, &probe, options).await
        } else {
            Removal::Left {
                reason: "its `api` is no longer in the topology".into(),
                manual_step: probe.manual_step(),
            }
        };
        let removal = note_left(probes, removal, &probe);
        if matches!(removal, Removal::Removed | Removal::NotFound)
            && let Err(e) = probes.remove(&probe.server, &probe.client_id)
        {
            done.push((
                probe.clone(),
                Removal::Left {
                    reason: format!("the probe record could not be updated ({e})"),
                    manual_step: probe.manual_step(),
                },
            ));
            continue;
        }
        done.push((probe, removal));
    }
    done
}

/// [`check`] on every server of `servers`, at most `parallel` at once; in their order.
pub async fn check_all(
    servers: &[&Server],
    identity: &Identity,
    probes: &probes::Probes,
    options: &ConnectOptions,
    parallel: usize,
) -> Vec<ClientCheck> {
    use futures_util::stream::{self, StreamExt};
    stream::iter(
        servers
            .iter()
            .map(|server| check(server, identity, probes, options)),
    )
    .buffered(parallel.max(1))
    .collect()
    .await
}
