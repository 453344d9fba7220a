//! SOAP 1.1 as the web service speaks it: requests written by an XML writer (every text
//! escaped), answers parsed into a small tree by local name, faults read for the .NET message
//! they carry (W1, W3 in `shared/docs/wsus-web-services.md`).

use quick_xml::events::{BytesDecl, BytesEnd, BytesStart, BytesText, Event};

pub(super) const NS: &str =
    "http://www.microsoft.com/SoftwareDistribution/Server/ApiRemotingWebService";
pub(super) const PATH: &str = "/ApiRemoting30/WebService.asmx";
const SOAP_NS: &str = "http://schemas.xmlsoap.org/soap/envelope/";
const XSI_NS: &str = "http://www.w3.org/2001/XMLSchema-instance";

/// An element of a request or of a parsed response.
#[derive(Debug, Clone, PartialEq)]
pub struct Element {
    pub name: String,
    /// `xsi:nil="true"`.
    pub nil: bool,
    pub text: String,
    pub children: Vec<Element>,
    /// The attributes of a parsed element, by local name (`type` of `xsi:type`, `name`).
    pub attributes: Vec<(String, String)>,
}

impl Element {
    pub(crate) fn text(name: &str, text: impl Into<String>) -> Element {
        Element {
            name: name.into(),
            nil: false,
            text: text.into(),
            children: Vec::new(),
            attributes: Vec::new(),
        }
    }

    pub(crate) fn with(name: &str, children: Vec<Element>) -> Element {
        Element {
            name: name.into(),
            nil: false,
            text: String::new(),
            children,
            attributes: Vec::new(),
        }
    }

    /// An attribute's value by local name.
    pub(crate) fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    pub(crate) fn path(&self, names: &[&str]) -> Option<&Element> {
        names.iter().try_fold(self, |at, name| at.child(name))
    }
}

/// The SOAP 1.1 request for `operation`, written by an XML writer (every text escaped).
pub(super) fn request_xml(operation: &str, params: &[Element]) -> Vec<u8> {
    request_in(NS, operation, params)
}

/// The SOAP 1.1 request for `operation` of the service whose namespace is `ns`, its children
/// qualified by that default namespace (document/literal, `elementFormDefault="qualified"`).
pub(crate) fn request_in(ns: &str, operation: &str, params: &[Element]) -> Vec<u8> {
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
        op.push_attribute(("xmlns", ns));
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
pub(crate) fn parse_xml(body: &[u8]) -> Result<Element, String> {
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
        attributes: e
            .attributes()
            .flatten()
            .map(|a| {
                (
                    String::from_utf8_lossy(a.key.local_name().as_ref()).into_owned(),
                    String::from_utf8_lossy(&a.value).into_owned(),
                )
            })
            .collect(),
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
pub(super) fn fault_message(fault: &Element) -> String {
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
pub(super) fn transient_fault(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("deadlock") || m.contains("timeout expired") || m.contains("lock request time out")
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
