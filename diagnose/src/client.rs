//! A client's WindowsUpdate.log: every `SyncUpdates failure, error = 0x8024400E`, with the lines
//! of the same thread that belong to it (the server URL before; `ErrorCode:` and the fault `ID:`
//! after), and whether a detection succeeded after the last failure.
//!
//! Line format (susdb.md 6): `Date Time PID TID Component Text`, separated by tabs or spaces;
//! times are the client's local time.

use std::collections::HashMap;

use serde::Serialize;

use crate::input;

/// The lines the client scanner looks for; the lines after a failure (its `ErrorCode:` and `ID:`)
/// it asks for by number instead of by marker.
pub const MARKERS: &[&str] = &[
    "Server URL = ",
    "SyncUpdates failure, error = 0x8024400",
    "* Found ",
];

/// How many lines after a failure may hold its fault details (six in the documented form, plus
/// room for other threads' lines in between).
const FAILURE_DETAIL_LINES: usize = 24;

/// The text of a `WARNING:` line after the word and its indentation (`WARNING:     ID:...`).
fn warning(text: &[u8]) -> Option<&[u8]> {
    text.strip_prefix(b"WARNING:").map(<[u8]>::trim_ascii_start)
}

/// One 0x8024400E detection failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    /// `Date Time` as logged (client local time).
    pub time: String,
    pub server_url: Option<String>,
    /// The SOAP fault's ID, which the server logs too.
    pub id: Option<String>,
    pub error_code: Option<String>,
}

/// Everything one client log says about the fault.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ClientLog {
    pub client: String,
    pub failures: Vec<Failure>,
    /// A detection succeeded after the last failure.
    pub recovered: bool,
}

#[derive(Debug, Default)]
struct Thread {
    server_url: Option<String>,
    /// The failure whose `ID:` line has not come yet.
    open: Option<usize>,
}

/// The scanner for one file; feed it the marker lines in order.
#[derive(Debug, Default)]
pub struct Scanner {
    log: ClientLog,
    threads: HashMap<Vec<u8>, Thread>,
}

/// `Date Time PID TID Component` and the text after them.
fn split(line: &[u8]) -> Option<([&[u8]; 5], &[u8])> {
    let mut fields: [&[u8]; 5] = [&[]; 5];
    let mut rest = line;
    for field in &mut fields {
        let start = rest.iter().position(|b| !b.is_ascii_whitespace())?;
        rest = &rest[start..];
        let end = rest
            .iter()
            .position(u8::is_ascii_whitespace)
            .unwrap_or(rest.len());
        *field = &rest[..end];
        rest = &rest[end..];
    }
    let start = rest
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(rest.len());
    Some((fields, &rest[start..]))
}

fn after<'a>(text: &'a [u8], marker: &str) -> Option<&'a [u8]> {
    let m = marker.as_bytes();
    text.windows(m.len())
        .position(|w| w.eq_ignore_ascii_case(m))
        .map(|i| &text[i + m.len()..])
}

impl Scanner {
    pub fn new(client: String) -> Self {
        Scanner {
            log: ClientLog {
                client,
                ..ClientLog::default()
            },
            threads: HashMap::new(),
        }
    }

    /// Takes one line; returns how many of the following lines it wants to see too.
    pub fn line(&mut self, line: &[u8]) -> usize {
        let Some(([date, time, _pid, tid, component], text)) = split(line) else {
            return 0;
        };
        if let Some(url) = after(text, "Server URL = ") {
            let thread = self.threads.entry(tid.to_vec()).or_default();
            thread.server_url = Some(input::text(url));
        } else if let Some(rest) = after(text, "SyncUpdates failure, error = ") {
            if !rest
                .get(..10)
                .is_some_and(|code| code.eq_ignore_ascii_case(b"0x8024400E"))
            {
                return 0;
            }
            let thread = self.threads.entry(tid.to_vec()).or_default();
            self.log.failures.push(Failure {
                time: format!("{} {}", input::text(date), input::text(time)),
                server_url: thread.server_url.clone(),
                id: None,
                error_code: None,
            });
            thread.open = Some(self.log.failures.len() - 1);
            self.log.recovered = false;
            return FAILURE_DETAIL_LINES;
        } else if let Some(id) = warning(text).and_then(|w| w.strip_prefix(b"ID:")) {
            if let Some(i) = self.threads.get_mut(tid).and_then(|t| t.open.take()) {
                self.log.failures[i].id = Some(input::text(id).to_ascii_lowercase());
            }
        } else if let Some(code) = warning(text).and_then(|w| w.strip_prefix(b"ErrorCode:")) {
            if let Some(i) = self.threads.get(tid).and_then(|t| t.open) {
                self.log.failures[i].error_code = Some(input::text(code));
            }
        } else if component.eq_ignore_ascii_case(b"Agent")
            && after(text, "* Found ").is_some_and(|r| after(r, " updates").is_some())
            && let Some(last) = self.log.failures.last()
        {
            // `Agent  * Found N updates and M categories in search`: a detection completed. It
            // counts for the failing server unless its thread was talking to another one (a
            // second update service, such as Microsoft Update).
            let same_server = match (
                self.threads.get(tid).and_then(|t| t.server_url.as_deref()),
                last.server_url.as_deref(),
            ) {
                (Some(here), Some(failed)) => crate::host_key(here) == crate::host_key(failed),
                _ => true,
            };
            if same_server {
                self.log.recovered = true;
            }
        }
        0
    }

    pub fn finish(self) -> ClientLog {
        self.log
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(text: &str) -> ClientLog {
        crate::scan_client("pc".into(), text.as_bytes()).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_failure_takes_the_server_url_and_fault_id_of_its_own_thread() {
        let log = scan(
            "2009-03-27\t11:55:29:100\t788\tee4\tPT\t+ ServiceId = {3DA2}, Server URL = http://wsus-a/ClientWebService/client.asmx\n\
             2009-03-27\t11:55:29:150\t788\t111\tPT\t+ ServiceId = {3DA2}, Server URL = http://other/ClientWebService/client.asmx\n\
             2009-03-27\t11:55:29:193\t788\tee4\tPT\tWARNING: SyncUpdates failure, error = 0x8024400E, soap client error = 7\n\
             2009-03-27\t11:55:29:194\t788\t111\tPT\tWARNING: ID:ffffffff-0000-0000-0000-000000000000\n\
             2009-03-27\t11:55:29:195\t788\tee4\tPT\tWARNING: ErrorCode:InternalServerError(5)\n\
             2009-03-27\t11:55:29:196\t788\tee4\tPT\tWARNING: ID:C0A7445F-B989-43FA-AC20-11F8CA65FA8C\n",
        );
        assert_eq!(
            log.failures,
            [Failure {
                time: "2009-03-27 11:55:29:193".into(),
                server_url: Some("http://wsus-a/ClientWebService/client.asmx".into()),
                id: Some("c0a7445f-b989-43fa-ac20-11f8ca65fa8c".into()),
                error_code: Some("InternalServerError(5)".into()),
            }]
        );
        assert!(!log.recovered);
    }

    #[test]
    fn a_later_detection_recovers_and_a_recurring_fault_undoes_it() {
        let ok = "2009-03-28 09:00:00:000 788 ee4 Agent   * Found 0 updates and 70 categories in search\n";
        let fail =
            "2009-03-29 09:00:00:000 788 ee4 PT WARNING: SyncUpdates failure, error = 0x8024400E\n";
        assert!(scan(&format!("{fail}{ok}")).recovered);
        assert!(!scan(&format!("{fail}{ok}{fail}")).recovered);
        assert!(!scan(ok).recovered, "no failure, nothing to recover from");
    }
}
