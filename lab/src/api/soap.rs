//! SOAP 1.1 as an ASP.NET web service speaks it: a request's operation and parameters read by
//! local name, answers and faults written by an XML writer (every text escaped), rows as
//! `GenericReadableRow`s of typed `anyType` cells.

use std::collections::BTreeMap;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Response, StatusCode};
use quick_xml::events::{BytesDecl, BytesEnd, BytesStart, BytesText, Event};
use quick_xml::{Reader, Writer};

use crate::api::wsdl::NS;

/// A request's parameters: an element's text, or the children of a structured one (`id`,
/// `row`), by local name.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Params {
    pub(crate) values: BTreeMap<String, String>,
    pub(crate) nested: BTreeMap<String, BTreeMap<String, String>>,
    /// The items of an array parameter (`programKeys` of `ProgramKey`s), each its children.
    pub(crate) lists: BTreeMap<String, Vec<BTreeMap<String, String>>>,
}

impl Params {
    /// Forgets `name`, as a server whose operation lacks that parameter never reads it: an
    /// ASP.NET service's XmlSerializer skips elements it does not know.
    pub(crate) fn remove(&mut self, name: &str) {
        self.values.remove(name);
        self.nested.remove(name);
        self.lists.remove(name);
    }
}

/// The operation of a SOAP 1.1 request body and its parameters.
pub(crate) fn parse_request(body: &[u8]) -> Result<(String, Params), String> {
    let mut reader = Reader::from_reader(body);
    reader.config_mut().trim_text(false);
    let mut path: Vec<String> = Vec::new();
    let mut operation: Option<(String, usize)> = None;
    let mut params = Params::default();
    // The children of an array's item being read.
    let mut item: BTreeMap<String, String> = BTreeMap::new();
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
                    if item.is_empty() {
                        params
                            .nested
                            .entry(parent)
                            .or_default()
                            .insert(name, std::mem::take(&mut text));
                    } else {
                        params
                            .lists
                            .entry(parent)
                            .or_default()
                            .push(std::mem::take(&mut item));
                        text.clear();
                    }
                }
                Some(3) => {
                    item.insert(name, std::mem::take(&mut text));
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
pub(crate) enum Cell {
    Text(String),
    Int(i64),
    Bool(bool),
    Guid(String),
    DateTime(String),
    Null,
}

pub(crate) fn cell_text(cell: &Cell) -> (Option<&'static str>, String) {
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
pub(crate) enum Answer {
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
    /// `<{op}Result>` holding result sets, each an `ArrayOfGenericReadableRow`.
    RowSets(Vec<Vec<Vec<Cell>>>),
}

pub(crate) type XmlWriter = Writer<Vec<u8>>;

pub(crate) fn text_element(w: &mut XmlWriter, name: &str, text: &str) -> std::io::Result<()> {
    w.write_event(Event::Start(BytesStart::new(name)))?;
    w.write_event(Event::Text(BytesText::new(text)))?;
    w.write_event(Event::End(BytesEnd::new(name)))
}

pub(crate) fn row_values(w: &mut XmlWriter, cells: &[Cell]) -> std::io::Result<()> {
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

pub(crate) fn readable_rows(w: &mut XmlWriter, rows: &[Vec<Cell>]) -> std::io::Result<()> {
    for cells in rows {
        w.write_event(Event::Start(BytesStart::new("GenericReadableRow")))?;
        row_values(w, cells)?;
        w.write_event(Event::End(BytesEnd::new("GenericReadableRow")))?;
    }
    Ok(())
}

/// The SOAP 1.1 envelope around `body`, written by an XML writer (every text escaped).
pub(crate) fn envelope(body: impl FnOnce(&mut XmlWriter) -> std::io::Result<()>) -> Vec<u8> {
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

pub(crate) fn answer_xml(operation: &str, answer: &Answer) -> Vec<u8> {
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
            Answer::RowSets(sets) => {
                w.write_event(Event::Start(BytesStart::new(result.as_str())))?;
                for rows in sets {
                    w.write_event(Event::Start(BytesStart::new("ArrayOfGenericReadableRow")))?;
                    readable_rows(w, rows)?;
                    w.write_event(Event::End(BytesEnd::new("ArrayOfGenericReadableRow")))?;
                }
                w.write_event(Event::End(BytesEnd::new(result.as_str())))?;
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
pub(crate) fn fault_xml(client_error: bool, exception: &str, message: &str) -> Vec<u8> {
    fault(
        client_error,
        &format!(
            "System.Web.Services.Protocols.SoapException: Server was unable to process request. ---> {exception}: {message}"
        ),
    )
}

/// The fault System.Web.Services answers for a SOAPAction the service does not have: a
/// `SoapException` of its own, not one wrapped around the operation's.
pub(crate) fn unknown_action_xml(action: &str) -> Vec<u8> {
    fault(
        true,
        &format!(
            "System.Web.Services.Protocols.SoapException: Server did not recognize the value of HTTP Header SOAPAction: {action}."
        ),
    )
}

/// A SOAP 1.1 fault: `soap:Client` for the caller's mistake, `soap:Server` otherwise.
fn fault(client_error: bool, faultstring: &str) -> Vec<u8> {
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
        text_element(w, "faultstring", faultstring)?;
        w.write_event(Event::Start(BytesStart::new("detail")))?;
        w.write_event(Event::End(BytesEnd::new("detail")))?;
        w.write_event(Event::End(BytesEnd::new("soap:Fault")))
    })
}

pub(crate) fn respond(
    status: StatusCode,
    content_type: &str,
    body: Vec<u8>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, v);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::wsdl::wsdl;

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
    fn an_array_parameter_gives_its_items_and_an_empty_one_is_present() {
        let body = br#"<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body><ExecuteSPSetConfiguration xmlns="http://www.microsoft.com/SoftwareDistribution/Server/ApiRemotingWebService"><row><ReplicaMode>true</ReplicaMode></row><listTrue /><programKeys><ProgramKey><Key>4f7a1c52-0d3e-4b8a-9e61-2a5c7d9b0e11</Key><Description>A</Description></ProgramKey><ProgramKey><Key>9b2e6d14-7a0c-4f35-b8d2-61e0c3a5f7d2</Key></ProgramKey></programKeys></ExecuteSPSetConfiguration></soap:Body></soap:Envelope>"#;
        let (_, params) = parse_request(body).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(params.nested["row"]["ReplicaMode"], "true");
        assert!(params.values.contains_key("listTrue"));
        assert!(params.values.contains_key("programKeys"));
        let keys = &params.lists["programKeys"];
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0]["Description"], "A");
        assert_eq!(keys[1]["Key"], "9b2e6d14-7a0c-4f35-b8d2-61e0c3a5f7d2");
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
        let wsdl = wsdl(
            "http://wsus-hq/ApiRemoting30/WebService.asmx?a=1&b=2",
            "wsus-hq",
            &crate::faults::Faults::default(),
        );
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
