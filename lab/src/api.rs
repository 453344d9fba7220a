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

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use quick_xml::events::{BytesDecl, BytesEnd, BytesStart, BytesText, Event};
use quick_xml::{Reader, Writer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::faults::Drop;
use crate::model::{Call, ServerDb, SqlError};
use crate::{Lab, LabError, lock};

pub const NS: &str = "http://www.microsoft.com/SoftwareDistribution/Server/ApiRemotingWebService";
pub const PATH: &str = "/ApiRemoting30/WebService.asmx";

/// ASP.NET's default request limit (`httpRuntime maxRequestLength`, 4096 KB), which an
/// ApiRemoting30 site does not raise: a larger body is refused before it is parsed.
const MAX_BODY: usize = 4096 * 1024;

/// The version a WSUS 3.0 SP2 server reports (3.0 RTM `3.0.6000.374`, SP1 `3.1.6001.65`:
/// MS-WSUSSS note 13).
pub(crate) const SERVER_VERSION: &str = "3.2.7600.226";

/// `GetCurrentUserRole` for an administrator. The enum's numbers are not public [I]; a public
/// client treats 0 as "no role" (W3).
const ROLE_ADMINISTRATOR: i32 = 1;

/// The operations served (also the names faults target them by).
pub const OPERATIONS: &[&str] = &[
    "GetServerVersion",
    "GetCurrentUserRole",
    "GetDatabaseConfiguration",
    "ExecuteSPGetRevisions",
    "ExecuteSPGetUpdateById",
    "ExecuteSPGetConfiguration",
    "ExecuteSPSetConfiguration",
    "ExecuteSPDeclineUpdate",
    "ExecuteSPDeployUpdate1",
    "ExecuteSPGetDeploymentsByUpdate1",
    "ExecuteSPGetAllDownstreamServers",
];

/// The configuration row's elements the lab serves, in the order of the real server's WSDL
/// (`ConfigurationTableRow`, W1); a row written back must hold each it was served.
/// `UpstreamServerName` is `minOccurs="0"`: absent for a server that syncs from Microsoft Update,
/// as .NET's serializer omits a null string.
const ROW: &[&str] = &[
    "configurationChangeNumber",
    "LastConfigChange",
    "ServerId",
    "SyncToMU",
    "UpstreamServerName",
    "ServerPortNumber",
    "UpstreamServerUseSsl",
    "AutoRefreshDeployments",
    "DoDetailedRollup",
    "ReplicaMode",
];

/// A request's parameters: an element's text, or the children of a structured one (`id`,
/// `row`), by local name.
#[derive(Debug, Default, PartialEq)]
struct Params {
    values: BTreeMap<String, String>,
    nested: BTreeMap<String, BTreeMap<String, String>>,
}

/// The operation of a SOAP 1.1 request body and its parameters.
fn parse_request(body: &[u8]) -> Result<(String, Params), String> {
    let mut reader = Reader::from_reader(body);
    reader.config_mut().trim_text(false);
    let mut path: Vec<String> = Vec::new();
    let mut operation: Option<(String, usize)> = None;
    let mut params = Params::default();
    // The text of the element being read: text and entity references come as separate events.
    let mut text = String::new();
    let mut buf = Vec::new();
    let bad = |e: &dyn std::fmt::Display| format!("the request is not XML: {e}");
    loop {
        let event = reader.read_event_into(&mut buf).map_err(|e| bad(&e))?;
        let (name, closes) = match event {
            Event::Start(e) => {
                text.clear();
                let name = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                if operation.is_none() && path.last().is_some_and(|p| p == "Body") {
                    operation = Some((name.clone(), path.len() + 1));
                }
                path.push(name);
                buf.clear();
                continue;
            }
            Event::Empty(e) => (
                String::from_utf8_lossy(e.local_name().as_ref()).into_owned(),
                false,
            ),
            Event::Text(t) => {
                text.push_str(&t.decode().map_err(|e| bad(&e))?);
                buf.clear();
                continue;
            }
            Event::GeneralRef(r) => {
                let entity = format!("&{};", r.decode().map_err(|e| bad(&e))?);
                text.push_str(&quick_xml::escape::unescape(&entity).map_err(|e| bad(&e))?);
                buf.clear();
                continue;
            }
            Event::End(_) => (path.last().cloned().unwrap_or_default(), true),
            Event::Eof => break,
            _ => {
                buf.clear();
                continue;
            }
        };
        if operation.is_none() && !closes && path.last().is_some_and(|p| p == "Body") {
            operation = Some((name, path.len() + 1));
        } else if let Some((_, depth)) = &operation {
            // The depth of the element that ends here, below the operation's.
            let level = if closes { path.len() } else { path.len() + 1 };
            match level.checked_sub(*depth) {
                Some(1) => {
                    params.values.insert(name, std::mem::take(&mut text));
                }
                Some(2) => {
                    let parent = path[path.len() - if closes { 2 } else { 1 }].clone();
                    params
                        .nested
                        .entry(parent)
                        .or_default()
                        .insert(name, std::mem::take(&mut text));
                }
                _ => text.clear(),
            }
        }
        if closes {
            path.pop();
        }
        buf.clear();
    }
    operation
        .map(|(name, _)| (name, params))
        .ok_or_else(|| "no operation in the SOAP body".into())
}

/// A value for the response, typed for `xsi:type` where it stands in an `anyType` cell.
#[derive(Debug, Clone)]
enum Cell {
    Text(String),
    Int(i64),
    Bool(bool),
    Guid(String),
    DateTime(String),
    Null,
}

fn cell_text(cell: &Cell) -> (Option<&'static str>, String) {
    match cell {
        Cell::Text(t) => (Some("xsd:string"), t.clone()),
        Cell::Int(n) => (Some("xsd:int"), n.to_string()),
        Cell::Bool(b) => (Some("xsd:boolean"), b.to_string()),
        Cell::Guid(g) => (Some("s1:guid"), g.to_ascii_lowercase()),
        Cell::DateTime(d) => (Some("xsd:dateTime"), d.clone()),
        Cell::Null => (None, String::new()),
    }
}

/// What an operation answers inside `<{op}Response>`.
#[derive(Debug)]
enum Answer {
    Empty,
    /// `<{op}Result>` holding text.
    Scalar(String),
    /// `<{op}Result><Configuration>` with the row's elements.
    Configuration(Vec<(&'static str, String)>),
    /// `<{op}Result>` holding one `GenericReadableRow`'s values.
    Row(Vec<Cell>),
    /// `<{op}Result>` holding `GenericReadableRow`s.
    Rows(Vec<Vec<Cell>>),
    /// Elements directly in the response (no `Result` element).
    Fields(Vec<(&'static str, String)>),
    /// `<{op}Result>` as `CompleteUpdates`, its `minimalProperties` rows.
    Complete(Vec<Vec<Cell>>),
}

type XmlWriter = Writer<Vec<u8>>;

fn text_element(w: &mut XmlWriter, name: &str, text: &str) -> std::io::Result<()> {
    w.write_event(Event::Start(BytesStart::new(name)))?;
    w.write_event(Event::Text(BytesText::new(text)))?;
    w.write_event(Event::End(BytesEnd::new(name)))
}

fn row_values(w: &mut XmlWriter, cells: &[Cell]) -> std::io::Result<()> {
    w.write_event(Event::Start(BytesStart::new("Values")))?;
    for cell in cells {
        let (ty, text) = cell_text(cell);
        let mut start = BytesStart::new("anyType");
        match ty {
            Some(ty) => {
                start.push_attribute(("xsi:type", ty));
                w.write_event(Event::Start(start))?;
                w.write_event(Event::Text(BytesText::new(&text)))?;
            }
            None => {
                start.push_attribute(("xsi:nil", "true"));
                w.write_event(Event::Start(start))?;
            }
        }
        w.write_event(Event::End(BytesEnd::new("anyType")))?;
    }
    w.write_event(Event::End(BytesEnd::new("Values")))
}

fn readable_rows(w: &mut XmlWriter, rows: &[Vec<Cell>]) -> std::io::Result<()> {
    for cells in rows {
        w.write_event(Event::Start(BytesStart::new("GenericReadableRow")))?;
        row_values(w, cells)?;
        w.write_event(Event::End(BytesEnd::new("GenericReadableRow")))?;
    }
    Ok(())
}

/// The SOAP 1.1 envelope around `body`, written by an XML writer (every text escaped).
fn envelope(body: impl FnOnce(&mut XmlWriter) -> std::io::Result<()>) -> Vec<u8> {
    let mut w = Writer::new(Vec::new());
    let written = (|| {
        w.write_event(Event::Decl(BytesDecl::new("1.0", Some("utf-8"), None)))?;
        let mut env = BytesStart::new("soap:Envelope");
        env.push_attribute(("xmlns:soap", "http://schemas.xmlsoap.org/soap/envelope/"));
        env.push_attribute(("xmlns:xsi", "http://www.w3.org/2001/XMLSchema-instance"));
        env.push_attribute(("xmlns:xsd", "http://www.w3.org/2001/XMLSchema"));
        env.push_attribute(("xmlns:s1", "http://microsoft.com/wsdl/types/"));
        w.write_event(Event::Start(env))?;
        w.write_event(Event::Start(BytesStart::new("soap:Body")))?;
        body(&mut w)?;
        w.write_event(Event::End(BytesEnd::new("soap:Body")))?;
        w.write_event(Event::End(BytesEnd::new("soap:Envelope")))
    })();
    debug_assert!(written.is_ok(), "writing to a Vec does not fail");
    w.into_inner()
}

fn answer_xml(operation: &str, answer: &Answer) -> Vec<u8> {
    envelope(|w| {
        let mut response = BytesStart::new(format!("{operation}Response"));
        response.push_attribute(("xmlns", NS));
        w.write_event(Event::Start(response))?;
        let result = format!("{operation}Result");
        match answer {
            Answer::Empty => {}
            Answer::Scalar(text) => text_element(w, &result, text)?,
            Answer::Configuration(row) => {
                w.write_event(Event::Start(BytesStart::new(result.as_str())))?;
                w.write_event(Event::Start(BytesStart::new("Configuration")))?;
                for (name, value) in row {
                    text_element(w, name, value)?;
                }
                w.write_event(Event::End(BytesEnd::new("Configuration")))?;
                w.write_event(Event::End(BytesEnd::new(result.as_str())))?;
            }
            Answer::Row(cells) => {
                w.write_event(Event::Start(BytesStart::new(result.as_str())))?;
                row_values(w, cells)?;
                w.write_event(Event::End(BytesEnd::new(result.as_str())))?;
            }
            Answer::Rows(rows) => {
                w.write_event(Event::Start(BytesStart::new(result.as_str())))?;
                readable_rows(w, rows)?;
                w.write_event(Event::End(BytesEnd::new(result.as_str())))?;
            }
            Answer::Fields(fields) => {
                for (name, value) in fields {
                    text_element(w, name, value)?;
                }
            }
            Answer::Complete(rows) => {
                w.write_event(Event::Start(BytesStart::new(result.as_str())))?;
                w.write_event(Event::Start(BytesStart::new("minimalProperties")))?;
                readable_rows(w, rows)?;
                w.write_event(Event::End(BytesEnd::new("minimalProperties")))?;
                w.write_event(Event::End(BytesEnd::new(result.as_str())))?;
            }
        }
        w.write_event(Event::End(BytesEnd::new(format!("{operation}Response"))))
    })
}

/// A SOAP fault as ASMX sends one: the .NET exception chain in `faultstring`, the useful message
/// after the last `--->`.
fn fault_xml(client_error: bool, exception: &str, message: &str) -> Vec<u8> {
    envelope(|w| {
        w.write_event(Event::Start(BytesStart::new("soap:Fault")))?;
        text_element(
            w,
            "faultcode",
            if client_error {
                "soap:Client"
            } else {
                "soap:Server"
            },
        )?;
        text_element(
            w,
            "faultstring",
            &format!(
                "System.Web.Services.Protocols.SoapException: Server was unable to process request. ---> {exception}: {message}"
            ),
        )?;
        w.write_event(Event::Start(BytesStart::new("detail")))?;
        w.write_event(Event::End(BytesEnd::new("detail")))?;
        w.write_event(Event::End(BytesEnd::new("soap:Fault")))
    })
}

/// The WSDL of the operations served, with `address` as the service's location.
pub fn wsdl(address: &str) -> String {
    let mut operations = String::new();
    let mut port_type = String::from("  <wsdl:portType name=\"ApiRemotingSoap\">\n");
    let mut binding = String::from(
        "  <wsdl:binding name=\"ApiRemotingSoap\" type=\"tns:ApiRemotingSoap\">\n    <soap:binding transport=\"http://schemas.xmlsoap.org/soap/http\" />\n",
    );
    for op in OPERATIONS {
        operations.push_str(&format!(
            "  <wsdl:message name=\"{op}SoapIn\">\n    <wsdl:part name=\"parameters\" element=\"tns:{op}\" />\n  </wsdl:message>\n  <wsdl:message name=\"{op}SoapOut\">\n    <wsdl:part name=\"parameters\" element=\"tns:{op}Response\" />\n  </wsdl:message>\n"
        ));
        port_type.push_str(&format!(
            "    <wsdl:operation name=\"{op}\">\n      <wsdl:input message=\"tns:{op}SoapIn\" />\n      <wsdl:output message=\"tns:{op}SoapOut\" />\n    </wsdl:operation>\n"
        ));
        binding.push_str(&format!(
            "    <wsdl:operation name=\"{op}\">\n      <soap:operation soapAction=\"{NS}/{op}\" style=\"document\" />\n      <wsdl:input>\n        <soap:body use=\"literal\" />\n      </wsdl:input>\n      <wsdl:output>\n        <soap:body use=\"literal\" />\n      </wsdl:output>\n    </wsdl:operation>\n"
        ));
    }
    port_type.push_str("  </wsdl:portType>\n");
    binding.push_str("  </wsdl:binding>\n");
    let address = quick_xml::escape::escape(address);
    include_str!("api.wsdl")
        .replace("OPERATIONS\n", &format!("{operations}{port_type}{binding}"))
        .replace("\"ADDRESS\"", &format!("\"{address}\""))
}

/// A stable server GUID from the server's name (the model keeps none): FNV-1a, 128 bits.
pub(crate) fn server_id(name: &str) -> String {
    let mut hash: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    for byte in name.to_ascii_lowercase().bytes() {
        hash ^= u128::from(byte);
        hash = hash.wrapping_mul(0x0000_0000_0100_0000_0000_0000_0000_013B);
    }
    let hex = format!("{hash:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// An operation's failure: (client's mistake, .NET exception type, message).
type Refusal = (bool, &'static str, String);

fn refusal_of(e: &SqlError) -> Refusal {
    let exception = if e.message.contains("replica") {
        "System.InvalidOperationException"
    } else {
        "System.Data.SqlClient.SqlException"
    };
    (false, exception, e.message.clone())
}

fn required<'p>(params: &'p Params, name: &str) -> Result<&'p str, Refusal> {
    params.values.get(name).map(String::as_str).ok_or_else(|| {
        (
            true,
            "System.ArgumentNullException",
            format!("Value cannot be null.\nParameter name: {name}"),
        )
    })
}

fn boolean(params: &Params, name: &str) -> Result<bool, Refusal> {
    match required(params, name)? {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        other => Err((
            true,
            "System.FormatException",
            format!("`{other}` is not a valid value for Boolean ({name})."),
        )),
    }
}

/// Runs one operation on `db`; `Some` call to record when it is a change.
fn operate(
    server: &str,
    db: &mut ServerDb,
    operation: &str,
    params: &Params,
) -> Result<(Answer, Option<Call>), Refusal> {
    let call = |ok: bool, entries: &[(&str, serde_json::Value)]| {
        let mut map: serde_json::Map<String, serde_json::Value> = entries
            .iter()
            .map(|(k, v)| ((*k).to_string(), v.clone()))
            .collect();
        map.insert("ok".into(), ok.into());
        Call {
            procedure: operation.to_string(),
            params: map,
        }
    };
    match operation {
        "GetServerVersion" => Ok((Answer::Scalar(SERVER_VERSION.into()), None)),
        "GetCurrentUserRole" => Ok((Answer::Scalar(ROLE_ADMINISTRATOR.to_string()), None)),
        // WSUS 3.0's own database engine (SSEE): what tells, remotely, that SQL cannot reach it.
        "GetDatabaseConfiguration" => Ok((
            Answer::Fields(vec![
                (
                    "serverName",
                    format!("{}\\MICROSOFT##SSEE", server.to_ascii_uppercase()),
                ),
                ("databaseName", "SUSDB".into()),
                ("wmsdeInstanceName", "MICROSOFT##SSEE".into()),
            ]),
            None,
        )),
        "ExecuteSPGetRevisions" => {
            let update = required(params, "updateId")?;
            Ok((Answer::Complete(revision_rows(db, update, None)), None))
        }
        "ExecuteSPGetUpdateById" => {
            let id = params.nested.get("id").cloned().unwrap_or_default();
            let update = id.get("UpdateId").cloned().unwrap_or_default();
            let revision = id.get("RevisionNumber").and_then(|r| r.parse().ok());
            Ok((
                Answer::Complete(revision_rows(db, &update, Some(revision.unwrap_or(-1)))),
                None,
            ))
        }
        "ExecuteSPGetConfiguration" => Ok((Answer::Configuration(row_of(server, db)), None)),
        "ExecuteSPSetConfiguration" => {
            let row = params.nested.get("row").ok_or_else(|| {
                (
                    true,
                    "System.ArgumentNullException",
                    "Value cannot be null.\nParameter name: row".to_string(),
                )
            })?;
            // Harsher than known: the whole row read must come back, and it must be the row as
            // it is now. `configurationChangeNumber` reads as a change counter [I]: a row read
            // before another write is refused, as optimistic concurrency would.
            let served = row_of(server, db);
            if let Some((missing, _)) = served.iter().find(|(e, _)| !row.contains_key(*e)) {
                return Err((
                    true,
                    "System.ArgumentException",
                    format!("The configuration row lacks {missing}: write back every element read"),
                ));
            }
            let current = db.config_change_number.to_string();
            if row.get("configurationChangeNumber") != Some(&current) {
                return Err((
                    false,
                    "System.InvalidOperationException",
                    format!(
                        "The configuration was changed since it was read (configurationChangeNumber {current}): read it again"
                    ),
                ));
            }
            let replica = match row.get("ReplicaMode").map(String::as_str) {
                Some("true" | "1") => true,
                Some("false" | "0") => false,
                other => {
                    return Err((
                        true,
                        "System.FormatException",
                        format!(
                            "`{}` is not a valid value for Boolean (ReplicaMode).",
                            other.unwrap_or_default()
                        ),
                    ));
                }
            };
            db.set_replica_mode(replica);
            db.config_change_number += 1;
            Ok((
                Answer::Empty,
                Some(call(true, &[("ReplicaMode", replica.into())])),
            ))
        }
        "ExecuteSPDeclineUpdate" => {
            let update = required(params, "updateId")?.to_ascii_uppercase();
            let admin = params.values.get("adminName").cloned().unwrap_or_default();
            let fail_if_replica = boolean(params, "failIfReplica")?;
            let result = db.decline(&update, &admin, fail_if_replica);
            let record = call(
                result.is_ok(),
                &[
                    ("updateId", update.clone().into()),
                    ("adminName", admin.into()),
                    ("failIfReplica", fail_if_replica.into()),
                ],
            );
            match result {
                Ok(()) => Ok((Answer::Empty, Some(record))),
                Err(e) => {
                    db.calls.push(record);
                    Err(refusal_of(&e))
                }
            }
        }
        "ExecuteSPDeployUpdate1" => {
            let id = params.nested.get("updateId").ok_or_else(|| {
                (
                    true,
                    "System.ArgumentNullException",
                    "Value cannot be null.\nParameter name: updateId".to_string(),
                )
            })?;
            let update = id
                .get("UpdateId")
                .cloned()
                .unwrap_or_default()
                .to_ascii_uppercase();
            let revision: i32 = id
                .get("RevisionNumber")
                .and_then(|r| r.parse().ok())
                .unwrap_or(-1);
            let action: i32 = required(params, "deploymentAction")?.parse().unwrap_or(-1);
            let group = required(params, "targetGroupId")?.to_ascii_uppercase();
            let deadline = required(params, "deadline")?.to_string();
            let admin = params.values.get("adminName").cloned().unwrap_or_default();
            let assigned = boolean(params, "isAssigned")?;
            // The API refuses approval changes on a replica (IUpdate.Approve); the operation has
            // no failIfReplica of its own: refused, the harsher case.
            let result = db.deploy(&update, revision, action, &group, &admin, true);
            let record = call(
                result.is_ok(),
                &[
                    ("updateId", update.clone().into()),
                    ("revisionNumber", revision.into()),
                    ("deploymentAction", action.into()),
                    ("targetGroupId", group.clone().into()),
                    ("deadline", deadline.into()),
                    ("adminName", admin.clone().into()),
                    ("isAssigned", assigned.into()),
                ],
            );
            match result {
                Ok(()) => {
                    let row = db
                        .deployments
                        .last()
                        .map(|d| deployment_row(db, d))
                        .unwrap_or_default();
                    Ok((Answer::Row(row), Some(record)))
                }
                Err(e) => {
                    db.calls.push(record);
                    Err(refusal_of(&e))
                }
            }
        }
        "ExecuteSPGetDeploymentsByUpdate1" => {
            let id = params.nested.get("id").cloned().unwrap_or_default();
            let update = id.get("UpdateId").cloned().unwrap_or_default();
            let revision: i32 = id
                .get("RevisionNumber")
                .and_then(|r| r.parse().ok())
                .unwrap_or(-1);
            let present =
                db.update_present && update.eq_ignore_ascii_case(susdb::KB954960_UPDATE_ID);
            let revision_id = db
                .revisions
                .iter()
                .find(|r| r.revision_number == revision)
                .map(|r| r.revision_id);
            let rows = match (present, revision_id) {
                (true, Some(rid)) => db
                    .deployments
                    .iter()
                    .filter(|d| d.revision_id == rid)
                    .map(|d| deployment_row(db, d))
                    .collect(),
                _ => Vec::new(),
            };
            Ok((Answer::Rows(rows), None))
        }
        other => Err((
            true,
            "System.InvalidOperationException",
            format!("the lab does not serve the operation {other}"),
        )),
    }
}

const EMPTY_GUID: &str = "00000000-0000-0000-0000-000000000000";

/// `ExecuteSPGetAllDownstreamServers(parentServerId, includeNestedChildren)`: the server's
/// downstream-server table as rows of name, id, last sync, parent id, last rollup, version,
/// replica (W3 `name: r[0], id: r[1], lastSync: r[2], parentId: r[3], lastRollup: r[4], version:
/// r[5], replica: r[6]`; W2 agrees). The empty GUID asks from the server itself; a direct child's
/// parent is the empty GUID (MS-WSUSSS 3.2.4.5: the sender's own entry has ParentServerId
/// 00000000-…, and the table's owner is not in its own table).
fn downstream_rows(lab: &Lab, server: &str, params: &Params) -> Result<Vec<Vec<Cell>>, Refusal> {
    let from = required(params, "parentServerId")?.to_ascii_lowercase();
    let nested = boolean(params, "includeNestedChildren")?;
    let table = {
        let inner = lock(&lab.shared.inner);
        lab.registered(&inner.servers, server)
    };
    let parent_of = |r: &crate::Registered| r.parent.clone().unwrap_or_else(|| EMPTY_GUID.into());
    let mut wanted: Vec<String> = vec![from];
    let mut rows = Vec::new();
    let mut level: Vec<&crate::Registered> = table
        .iter()
        .filter(|r| wanted.contains(&parent_of(r)))
        .collect();
    while !level.is_empty() {
        rows.extend(level.iter().map(|r| {
            vec![
                Cell::Text(r.name.clone()),
                Cell::Guid(r.id.clone()),
                Cell::DateTime(r.last_sync.clone()),
                Cell::Guid(parent_of(r)),
                Cell::DateTime(r.last_sync.clone()),
                Cell::Text(r.version.clone()),
                Cell::Bool(r.replica),
            ]
        }));
        if !nested {
            break;
        }
        wanted = level.iter().map(|r| r.id.clone()).collect();
        level = table
            .iter()
            .filter(|r| wanted.contains(&parent_of(r)))
            .collect();
    }
    Ok(rows)
}

/// The configuration row as the lab serves it (see [`ROW`]).
fn row_of(server: &str, db: &ServerDb) -> Vec<(&'static str, String)> {
    let mut row = vec![
        (
            "configurationChangeNumber",
            db.config_change_number.to_string(),
        ),
        ("LastConfigChange", "2009-03-27T10:55:29".into()),
        ("ServerId", server_id(server)),
        ("SyncToMU", db.upstream_server_name.is_none().to_string()),
    ];
    if let Some(upstream) = &db.upstream_server_name {
        row.push(("UpstreamServerName", upstream.clone()));
    }
    row.extend([
        ("ServerPortNumber", db.upstream_port.to_string()),
        ("UpstreamServerUseSsl", "false".into()),
        ("AutoRefreshDeployments", "true".into()),
        ("DoDetailedRollup", "false".into()),
        ("ReplicaMode", db.replica_mode.to_string()),
    ]);
    debug_assert!(row.iter().all(|(name, _)| ROW.contains(name)));
    row
}

/// The update's revisions as `minimalProperties` rows (W4 and W3 agree on the indexes used: 0
/// UpdateId, 1 RevisionNumber, 18 IsApproved, 22 IsDeclined, 23 HasStaleUpdateApprovals, 24
/// IsLatestRevision, 29 the title; the others, not modelled, are null), of one revision when
/// `only` names it.
fn revision_rows(db: &ServerDb, update: &str, only: Option<i32>) -> Vec<Vec<Cell>> {
    if !db.update_present || !update.eq_ignore_ascii_case(susdb::KB954960_UPDATE_ID) {
        return Vec::new();
    }
    let computer = |d: &&crate::model::Deployment| {
        d.target_group_type_id == susdb::target_group_type::COMPUTER
    };
    let latest: Vec<i32> = db
        .revisions
        .iter()
        .filter(|r| r.is_latest)
        .map(|r| r.revision_id)
        .collect();
    let stale = db
        .deployments
        .iter()
        .filter(computer)
        .any(|d| !latest.contains(&d.revision_id) && d.action_id <= susdb::action::UNINSTALL);
    db.revisions
        .iter()
        .filter(|r| only.is_none_or(|n| n == r.revision_number))
        .map(|r| {
            let approved = db
                .deployments
                .iter()
                .filter(computer)
                .any(|d| d.revision_id == r.revision_id);
            let mut row = vec![Cell::Null; 30];
            row[0] = Cell::Guid(susdb::KB954960_UPDATE_ID.into());
            row[1] = Cell::Int(i64::from(r.revision_number));
            row[18] = Cell::Bool(approved);
            row[22] = Cell::Bool(db.update_declined);
            row[23] = Cell::Bool(stale);
            row[24] = Cell::Bool(r.is_latest);
            row[29] = Cell::Text(susdb::KB954960_UPDATE_TITLE.into());
            row
        })
        .collect()
}

/// A deployment as the API's rows give it (W4 `UmUpdateApproval`, W3 agree): 0 creation time,
/// 1 state, 2 action, 3 go-live time, 4 deadline, 5 admin name, 6 deployment GUID, 7 is
/// assigned, 8 UpdateId, 9 RevisionNumber, 10 TargetGroupId.
fn deployment_row(db: &ServerDb, d: &crate::model::Deployment) -> Vec<Cell> {
    let revision = db
        .revisions
        .iter()
        .find(|r| r.revision_id == d.revision_id)
        .map_or(0, |r| r.revision_number);
    vec![
        Cell::DateTime("2009-03-27T10:55:29".into()),
        Cell::Int(0),
        Cell::Int(i64::from(d.action_id)),
        Cell::DateTime("2009-03-27T10:55:29".into()),
        Cell::Null,
        Cell::Text(d.admin_name.clone()),
        Cell::Guid(format!("00000000-0000-0000-0000-{:012x}", d.deployment_id)),
        Cell::Bool(d.is_assigned),
        Cell::Guid(susdb::KB954960_UPDATE_ID.into()),
        Cell::Int(i64::from(revision)),
        Cell::Guid(d.target_group_id.clone()),
    ]
}

/// How a connection reached the lab's web service.
#[derive(Debug, Clone)]
enum Scheme {
    /// The lab has no certificate: every server over plain HTTP.
    Http,
    /// Plain HTTP to a lab that has a certificate.
    HttpBesideHttps,
    /// TLS, with the name the client asked for.
    Https { sni: Option<String> },
}

/// The NTLM state of one HTTP connection (the handshake is per connection).
#[derive(Debug, Default)]
struct NtlmState {
    challenge: Option<[u8; 8]>,
    user: Option<String>,
}

fn respond(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, v);
    }
    response
}

fn unauthorized(token: Option<(&str, String)>, negotiate_only: bool) -> Response<Full<Bytes>> {
    let mut response = respond(
        StatusCode::UNAUTHORIZED,
        "text/plain",
        b"401 Unauthorized".to_vec(),
    );
    // Without a token, both schemes IIS's Windows authentication offers by default, Negotiate
    // first (wsus-web-services.md 1.2 [I]); a challenge goes back under the scheme the client
    // used (SPNEGO takes a raw NTLM token).
    let values = match token {
        None if negotiate_only => vec!["Negotiate".to_string()],
        None => vec!["Negotiate".to_string(), "NTLM".to_string()],
        Some((scheme, t)) => vec![format!("{scheme} {t}")],
    };
    for value in values {
        if let Ok(v) = hyper::header::HeaderValue::from_str(&value) {
            response
                .headers_mut()
                .append(hyper::header::WWW_AUTHENTICATE, v);
        }
    }
    response
}

/// `None` when the request may go on; otherwise the response that answers it (a 401 with a
/// challenge, or a refusal). NTLM as IIS does it for Windows authentication: NEGOTIATE in, a
/// CHALLENGE out on a 401, AUTHENTICATE in on the same connection (MS-NLMP).
fn authenticate(
    lab: &Lab,
    server: &str,
    state: &Mutex<NtlmState>,
    header: Option<&str>,
) -> Option<Response<Full<Bytes>>> {
    let (account, password) = lab.shared.config.windows_login.as_ref()?;
    let reporters = &lab.shared.config.api_reporters;
    let mut state = lock(state);
    if let Some(user) = &state.user {
        // Authenticated, but only the administrator may use the API (W3: 403 "the user has no
        // permission to administer this WSUS server").
        return (!user.eq_ignore_ascii_case(account)).then(|| {
            respond(
                StatusCode::FORBIDDEN,
                "text/plain",
                format!("403 Forbidden: {user} is not a WSUS administrator on {server}")
                    .into_bytes(),
            )
        });
    }
    let negotiate_only = lab.shared.config.api_negotiate_only;
    let scheme = if header.is_some_and(|h| h.starts_with("Negotiate ")) {
        "Negotiate"
    } else {
        "NTLM"
    };
    // A site whose NTLM provider was removed takes no `NTLM` scheme, only NTLM inside `Negotiate`.
    let header = header.filter(|_| !(negotiate_only && scheme == "NTLM"));
    let token = header
        .and_then(|h| {
            h.strip_prefix("NTLM ")
                .or_else(|| h.strip_prefix("Negotiate "))
        })
        .and_then(|t| {
            base64::engine::general_purpose::STANDARD
                .decode(t.trim())
                .ok()
        });
    let Some(token) = token else {
        return Some(unauthorized(None, negotiate_only));
    };
    let kind = token
        .get(8..12)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    match kind {
        Some(1) => {
            let mut challenge = [0u8; 8];
            fastrand::fill(&mut challenge);
            let (domain, _) = account.split_once('\\').unwrap_or(("LAB", account));
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            let filetime = (now.as_secs() + 11_644_473_600) * 10_000_000;
            let message = crate::ntlm::challenge(challenge, domain, server, filetime);
            state.challenge = Some(challenge);
            Some(unauthorized(
                Some((
                    scheme,
                    base64::engine::general_purpose::STANDARD.encode(message),
                )),
                negotiate_only,
            ))
        }
        Some(3) => {
            let proven = match (crate::ntlm::Authenticate::parse(&token), state.challenge) {
                (Ok(auth), Some(challenge)) => {
                    let who = auth.who();
                    let known = who.eq_ignore_ascii_case(account)
                        || reporters.iter().any(|r| r.eq_ignore_ascii_case(&who));
                    (known && auth.proves(password, challenge)).then_some(who)
                }
                _ => None,
            };
            match proven {
                Some(who) if who.eq_ignore_ascii_case(account) => {
                    state.user = Some(who);
                    None
                }
                Some(who) => {
                    let refused = respond(
                        StatusCode::FORBIDDEN,
                        "text/plain",
                        format!("403 Forbidden: {who} is not a WSUS administrator on {server}")
                            .into_bytes(),
                    );
                    state.user = Some(who);
                    Some(refused)
                }
                None => Some(unauthorized(None, negotiate_only)),
            }
        }
        _ => Some(unauthorized(None, negotiate_only)),
    }
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
                let https = lab.shared.tls.as_ref().map(|a| a.https.clone());
                // With a certificate the lab serves each server as its topology entry says:
                // HTTPS for `api.tls` (the default), HTTP for `tls: false`. The first byte tells
                // a TLS ClientHello (22) from an HTTP request line.
                let mut first = [0u8; 1];
                let tls = https.is_some()
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
                let served = match https {
                    Some(https) if tls => match https.accept(stream).await {
                        Ok(tls) => {
                            let sni = tls.get_ref().1.server_name().map(str::to_string);
                            serve_http(tls, service(Scheme::Https { sni })).await
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "api TLS handshake failed");
                            return;
                        }
                    },
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
    fn api_tls(&self, server: &str) -> bool {
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
    fn route_host(&self, host: &str) -> Option<String> {
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

    async fn api_request(
        &self,
        request: Request<Incoming>,
        state: &Mutex<NtlmState>,
        scheme: Scheme,
    ) -> Response<Full<Bytes>> {
        // The body is read before anything is answered: a 401 sent while a POST body is still
        // unread leaves the kept-alive connection mid-request, and NTLM needs that connection.
        let (parts, body) = request.into_parts();
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
        if request.uri().path() != PATH {
            return respond(StatusCode::NOT_FOUND, "text/plain", b"not found".to_vec());
        }
        if self.shared.config.faults.unreachable(&server) {
            return respond(StatusCode::SERVICE_UNAVAILABLE, "text/plain", Vec::new());
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
                wsdl(&address).into_bytes(),
            );
        }
        if request.method() != hyper::Method::POST {
            return respond(StatusCode::METHOD_NOT_ALLOWED, "text/plain", Vec::new());
        }
        let (operation, params) = match parse_request(&body) {
            Ok(parsed) => parsed,
            Err(e) => {
                return respond(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/xml; charset=utf-8",
                    fault_xml(true, "System.Xml.XmlException", &e),
                );
            }
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
                    crate::injected_error(number).1,
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
                Some(db) => match operate(&server, db, &operation, &params) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_body_gives_its_operation_and_parameters() {
        let body = br#"<?xml version="1.0"?><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body><ExecuteSPDeployUpdate1 xmlns="http://www.microsoft.com/SoftwareDistribution/Server/ApiRemotingWebService"><updateId><UpdateId>d359f493-0aad-43fa-af5c-6763326cd98f</UpdateId><RevisionNumber>101</RevisionNumber></updateId><deploymentAction>2</deploymentAction><adminName>CORP\op &amp; co</adminName><isAssigned>true</isAssigned></ExecuteSPDeployUpdate1></soap:Body></soap:Envelope>"#;
        let (op, params) = parse_request(body).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(op, "ExecuteSPDeployUpdate1");
        assert_eq!(params.values["deploymentAction"], "2");
        assert_eq!(params.values["adminName"], "CORP\\op & co");
        assert_eq!(params.nested["updateId"]["RevisionNumber"], "101");
    }

    #[test]
    fn answers_and_faults_are_escaped_xml() {
        let xml = String::from_utf8(answer_xml(
            "GetServerVersion",
            &Answer::Scalar("a<b".into()),
        ))
        .unwrap_or_default();
        assert!(
            xml.contains("<GetServerVersionResult>a&lt;b</GetServerVersionResult>"),
            "{xml}"
        );
        let fault =
            String::from_utf8(fault_xml(false, "System.X", "replica & <co>")).unwrap_or_default();
        assert!(
            fault.contains("---&gt; System.X: replica &amp; &lt;co&gt;"),
            "{fault}"
        );
        let wsdl = wsdl("http://wsus-hq/ApiRemoting30/WebService.asmx?a=1&b=2");
        assert!(
            wsdl.contains("location=\"http://wsus-hq/ApiRemoting30/WebService.asmx?a=1&amp;b=2\"")
        );
        assert_eq!(
            wsdl.matches("<wsdl:operation name=\"ExecuteSPDeclineUpdate\">")
                .count(),
            2
        );
    }
}
