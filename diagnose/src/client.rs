//! A client's WindowsUpdate.log: every failure of the KB 954960 kind, with the lines of the same
//! thread that belong to it, and whether a detection succeeded after the last failure.
//!
//! Line format (susdb.md 6): `Date Time PID TID Component Text`, separated by tabs or spaces;
//! times are the client's local time, dates as each Windows writes them (`2009-03-27`,
//! `2021/07/13`, `2018.10.21`). The failure comes in two forms:
//!
//! - Windows XP to 7: `PT WARNING: SyncUpdates failure, error = 0x8024400E`, then `WARNING:
//!   ErrorCode:InternalServerError(5)` and `WARNING: ID:<guid>` on the same thread;
//! - Windows 8 and later (Windows 8/8.1 `WS WARNING: Soap fault info:`, often with 0x80244007;
//!   Windows 10/11 and Server 2016+ as `Get-WindowsUpdateLog` writes it): the SOAP fault's detail
//!   on one line, `<detail><ErrorCode>InternalServerError</ErrorCode><Message>...</Message>
//!   <ID><guid></ID><Method>...SyncUpdates</Method></detail>`.
//!
//! The server is the `Server URL = ` of the failure's thread (`PT` or `ProtocolTalker`), or else
//! the last one the log printed before it. A later `* Found N updates` or `SyncUpdates round
//! trips: N` against the same server is a detection that succeeded.

use std::collections::HashMap;

use serde::Serialize;

use crate::input;

/// The lines the client scanner looks for in a log of Windows XP to 8.1 (a tab after the date):
/// the server, the failure in the old form, the fault's detail (Windows 8 and 8.1), a completed
/// detection. The lines after a failure (its `ErrorCode:` and `ID:`) it asks for by number.
pub const MARKERS: &[&str] = &[
    "Server URL = ",
    "SyncUpdates failure, error = 0x8024400",
    "categories in search",
    "<detail>",
];

/// The same for the text `Get-WindowsUpdateLog` writes (Windows 10 and later, Server 2016 and
/// later: a space after the date): the server, the fault's detail, a completed sync.
pub const MODERN_MARKERS: &[&str] = &["Server URL = ", "<detail>", "SyncUpdates round trips"];

/// The markers for a log whose text begins with `start`: `Get-WindowsUpdateLog` writes the
/// fraction of a second after a dot (`2020/11/22 12:46:43.8754246`), the older form after a colon
/// (`2009-03-27<TAB>11:55:29:193`).
pub fn markers_for(start: &[u8]) -> &'static [&'static str] {
    let start = start.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(start);
    let first_line = start.split(|b| *b == b'\n').next().unwrap_or_default();
    let modern = first_line.len() > 20
        && first_line[..4].iter().all(u8::is_ascii_digit)
        && first_line[19] == b'.';
    if modern { MODERN_MARKERS } else { MARKERS }
}

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
    /// The failure a `<detail>` line just reported, which a `SyncUpdates failure` line of the
    /// same moment on this thread repeats (Windows 8 may log both).
    from_detail: Option<usize>,
}

/// The scanner for one file; feed it the marker lines in order.
#[derive(Debug, Default)]
pub struct Scanner {
    log: ClientLog,
    threads: HashMap<Vec<u8>, Thread>,
    /// The last `Server URL` of any thread, for a failure whose thread named none.
    last_url: Option<String>,
}

/// The text of `<name>...</name>` in a line.
fn tag(text: &[u8], name: &str) -> Option<String> {
    let open = after(text, &format!("<{name}>"))?;
    let close = format!("</{name}>");
    let end = memchr::memmem::find(open, close.as_bytes())?;
    Some(input::text(&open[..end]).trim_matches('"').to_string())
}

/// `HH:MM:SS` of a logged time, to tell whether two lines were written at the same moment.
fn second(time: &str) -> &str {
    time.get(..8).unwrap_or(time)
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

/// The text after `marker` in a line. Exact case, as the markers that delivered the line are
/// searched (and as Windows writes them), with memchr's searcher rather than a byte-by-byte
/// comparison of every window: every delivered line is tried against several markers.
fn after<'a>(text: &'a [u8], marker: &str) -> Option<&'a [u8]> {
    memchr::memmem::find(text, marker.as_bytes()).map(|i| &text[i + marker.len()..])
}

impl Scanner {
    pub fn new(client: String) -> Self {
        Scanner {
            log: ClientLog {
                client,
                ..ClientLog::default()
            },
            threads: HashMap::new(),
            last_url: None,
        }
    }

    /// The server of a failure on `tid`: its thread's, or the log's last.
    fn server_of(&self, tid: &[u8]) -> Option<String> {
        self.threads
            .get(tid)
            .and_then(|t| t.server_url.clone())
            .or_else(|| self.last_url.clone())
    }

    /// A detection completed on `tid`: it counts for the failing server unless its thread was
    /// talking to another one (a second update service, such as Microsoft Update).
    fn succeeded(&mut self, tid: &[u8]) {
        let Some(last) = self.log.failures.last() else {
            return;
        };
        let same_server = match (
            self.threads.get(tid).and_then(|t| t.server_url.as_deref()),
            last.server_url.as_deref(),
        ) {
            (Some(here), Some(failed)) => {
                crate::host::host_key(here) == crate::host::host_key(failed)
            }
            _ => true,
        };
        if same_server {
            self.log.recovered = true;
        }
    }

    /// Takes one line; returns how many of the following lines it wants to see too.
    pub fn line(&mut self, line: &[u8]) -> usize {
        let Some(([date, time, _pid, tid, component], text)) = split(line) else {
            return 0;
        };
        let time = format!("{} {}", input::text(date), input::text(time));
        if let Some(url) = after(text, "Server URL = ") {
            let url = input::text(url).trim_matches('"').to_string();
            self.threads.entry(tid.to_vec()).or_default().server_url = Some(url.clone());
            self.last_url = Some(url);
        } else if let Some(rest) = after(text, "SyncUpdates failure, error = ") {
            if !rest
                .get(..10)
                .is_some_and(|code| code.eq_ignore_ascii_case(b"0x8024400E"))
            {
                return 0;
            }
            let server_url = self.server_of(tid);
            let thread = self.threads.entry(tid.to_vec()).or_default();
            // Windows 8 may log the fault's detail, then this line, for one failure.
            if let Some(i) = thread.from_detail.take()
                && second(&self.log.failures[i].time) == second(&time)
            {
                return 0;
            }
            self.log.failures.push(Failure {
                time,
                server_url,
                id: None,
                error_code: None,
            });
            thread.open = Some(self.log.failures.len() - 1);
            self.log.recovered = false;
            return FAILURE_DETAIL_LINES;
        } else if let Some(detail) = after(text, "<detail>") {
            let from_sync = tag(detail, "Method").is_some_and(|m| m.ends_with("SyncUpdates"));
            let code = tag(detail, "ErrorCode");
            // Only the fault of this kind: other SyncUpdates faults (ConfigChanged, CookieExpired)
            // are the protocol's own signals, and the client recovers from them.
            if !from_sync
                || !code
                    .as_deref()
                    .is_some_and(|c| c.eq_ignore_ascii_case("InternalServerError"))
            {
                return 0;
            }
            let id = tag(detail, "ID").map(|id| id.to_ascii_lowercase());
            let server_url = self.server_of(tid);
            let thread = self.threads.entry(tid.to_vec()).or_default();
            // The older form's failure line came first on this thread: this is its detail.
            if let Some(i) = thread.open.take() {
                let f = &mut self.log.failures[i];
                f.id = f.id.take().or(id);
                f.error_code = f.error_code.take().or(code);
                return 0;
            }
            self.log.failures.push(Failure {
                time,
                server_url,
                id,
                error_code: code,
            });
            thread.from_detail = Some(self.log.failures.len() - 1);
            self.log.recovered = false;
        } else if let Some(id) = warning(text).and_then(|w| w.strip_prefix(b"ID:")) {
            if let Some(i) = self.threads.get_mut(tid).and_then(|t| t.open.take()) {
                self.log.failures[i].id = Some(input::text(id).to_ascii_lowercase());
            }
        } else if let Some(code) = warning(text).and_then(|w| w.strip_prefix(b"ErrorCode:")) {
            if let Some(i) = self.threads.get(tid).and_then(|t| t.open) {
                self.log.failures[i].error_code = Some(input::text(code));
            }
        } else if (component.eq_ignore_ascii_case(b"Agent")
            && after(text, "* Found ").is_some_and(|r| after(r, " updates").is_some()))
            || after(text, "SyncUpdates round trips").is_some()
        {
            self.succeeded(tid);
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
    fn each_log_is_searched_for_the_markers_of_its_format() {
        assert_eq!(
            markers_for(b"2020/11/22 12:46:42.1023805 8668  6864  Agent  Added service\r\n"),
            MODERN_MARKERS
        );
        assert_eq!(
            markers_for(b"\xEF\xBB\xBF2024-04-11 13:03:35.3762132 9704"),
            MODERN_MARKERS
        );
        assert_eq!(
            markers_for(b"2018.10.21 12:08:49.8046643 1276 3628 Shared"),
            MODERN_MARKERS
        );
        assert_eq!(
            markers_for(b"2009-03-27\t11:55:29:193\t 788\tee4\tPT\t"),
            MARKERS
        );
        assert_eq!(markers_for(b"2009-03-29 09:00:00:000 788 ee4 PT"), MARKERS);
        assert_eq!(markers_for(b""), MARKERS);
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
