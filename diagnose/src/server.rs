//! A WSUS server's SoftwareDistribution.log: the `ArgumentException: Item has already been added`
//! raised inside `GetSyncInfo` (the KB 954960 fault), and the `ThrowException` line of the same
//! thread that carries the SOAP fault ID the client logged.
//!
//! Line format (susdb.md 6): `<Date> <Time> UTC <Level> <process>.<thread> <Class.Method> <text>`,
//! stack frames on the following lines starting with `at `; times in UTC.

use std::collections::{BTreeSet, HashMap};

use serde::Serialize;

use crate::input;

/// The lines the server scanner looks for; the stack after an ArgumentException it asks for by
/// number instead.
pub const MARKERS: &[&str] = &[
    "ArgumentException: Item has already been added",
    "ThrowException: actor = ",
];

/// Stack frames read after an ArgumentException to find `GetSyncInfo` (it is the third frame in
/// the documented stack).
const STACK_LINES: usize = 24;

/// A SOAP fault the server threw, with its cause when it was the KB 954960 one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fault {
    /// `Date Time` as logged (UTC).
    pub time: String,
    pub id: String,
    /// The web service URL (`actor`) the fault was thrown from.
    pub actor: String,
    /// The duplicate dictionary key, when the fault is the KB 954960 one.
    pub key: Option<String>,
}

impl Fault {
    pub fn is_kb954960(&self) -> bool {
        self.key.is_some()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ServerLog {
    /// From the file's path.
    pub name: String,
    pub faults: Vec<Fault>,
    /// ArgumentExceptions inside GetSyncInfo (with or without a ThrowException line after).
    pub dictionary_errors: usize,
    pub keys: BTreeSet<String>,
    /// The first and last fault time (UTC).
    pub first: Option<String>,
    pub last: Option<String>,
}

#[derive(Debug)]
struct Pending {
    key: String,
    in_get_sync_info: bool,
}

#[derive(Debug, Default)]
pub struct Scanner {
    log: ServerLog,
    pending: HashMap<Vec<u8>, Pending>,
    /// The thread of the last ArgumentException: the stack frames after it are its own, even
    /// when another thread's entry got written in between.
    last_thread: Option<Vec<u8>>,
}

fn find(text: &[u8], marker: &str) -> Option<usize> {
    memchr::memmem::find(text, marker.as_bytes())
}

fn between<'a>(text: &'a [u8], open: &str, close: u8) -> Option<&'a [u8]> {
    let start = find(text, open)? + open.len();
    let rest = &text[start..];
    let end = rest.iter().position(|b| *b == close).unwrap_or(rest.len());
    Some(&rest[..end])
}

impl Scanner {
    pub fn new(name: String) -> Self {
        Scanner {
            log: ServerLog {
                name,
                ..ServerLog::default()
            },
            ..Scanner::default()
        }
    }

    fn seen(&mut self, time: &str) {
        if self.log.first.as_deref().is_none_or(|f| time < f) {
            self.log.first = Some(time.to_string());
        }
        if self.log.last.as_deref().is_none_or(|l| time > l) {
            self.log.last = Some(time.to_string());
        }
    }

    /// Takes one line; returns how many of the following lines it wants to see too.
    pub fn line(&mut self, line: &[u8]) -> usize {
        let trimmed = line.trim_ascii_start();
        if trimmed.starts_with(b"at ") {
            if find(trimmed, "GetSyncInfo").is_some()
                && let Some(p) = self
                    .last_thread
                    .as_ref()
                    .and_then(|t| self.pending.get_mut(t))
            {
                p.in_get_sync_info = true;
            }
            return 0;
        }
        let mut fields = trimmed
            .split(|b| b.is_ascii_whitespace())
            .filter(|f| !f.is_empty());
        let (Some(date), Some(time), Some(_utc), Some(_level), Some(process_thread)) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            return 0;
        };
        let thread = process_thread.to_vec();
        let when = format!("{} {}", input::text(date), input::text(time));
        if find(trimmed, "ArgumentException: Item has already been added").is_some() {
            self.last_thread = Some(thread.clone());
            let key = between(trimmed, "Key in dictionary: '", b'\'')
                .or_else(|| between(trimmed, "Key being added: '", b'\''))
                .map(input::text)
                .unwrap_or_default();
            self.pending.insert(
                thread,
                Pending {
                    key,
                    // The stack usually follows; a one-line form names it inline.
                    in_get_sync_info: find(trimmed, "GetSyncInfo").is_some(),
                },
            );
            return STACK_LINES;
        } else if find(trimmed, "ThrowException: actor = ").is_some() {
            let actor = between(trimmed, "actor = ", b',')
                .map(input::text)
                .unwrap_or_default();
            let Some(id) =
                between(trimmed, "ID=", b',').map(|id| input::text(id).to_ascii_lowercase())
            else {
                return 0;
            };
            let key = self
                .pending
                .remove(&thread)
                .filter(|p| p.in_get_sync_info)
                .map(|p| p.key);
            if key.is_some() {
                self.seen(&when);
            }
            self.log.faults.push(Fault {
                time: when,
                id,
                actor,
                key,
            });
        }
        0
    }

    pub fn finish(mut self) -> ServerLog {
        // A dictionary error whose ThrowException line never came (a truncated log) still counts.
        let dangling: Vec<String> = self
            .pending
            .drain()
            .filter(|(_, p)| p.in_get_sync_info)
            .map(|(_, p)| p.key)
            .collect();
        let counted = self.log.faults.iter().filter(|f| f.is_kb954960()).count();
        self.log.dictionary_errors = counted + dangling.len();
        self.log.keys = self
            .log
            .faults
            .iter()
            .filter_map(|f| f.key.clone())
            .chain(dangling)
            .collect();
        self.log
    }
}

#[cfg(test)]
mod tests {
    const FAULT: &str = "\
2009-03-27 10:55:29.193 UTC Error w3wp.12 ClientImplementation.SyncUpdates System.ArgumentException: Item has already been added. Key in dictionary: '8862'  Key being added: '8862'
2009-03-27 10:55:29.195 UTC Info w3wp.9 ClientImplementation.GetCookie unrelated line of another thread
at System.Collections.Hashtable.Insert(Object key, Object nvalue, Boolean add)
at Microsoft.UpdateServices.Internal.ClientImplementation.GetSyncInfo(DataAccess dataAccess, Hashtable stateTable)
2009-03-27 10:55:29.201 UTC Warning w3wp.12 SoapUtilities.CreateException ThrowException: actor = http://wsusebc/ClientWebService/client.asmx, ID=C0A7445F-B989-43FA-AC20-11F8CA65FA8C, ErrorCode=InternalServerError, Message=, Client=?
2009-03-27 11:00:00.000 UTC Warning w3wp.7 SoapUtilities.CreateException ThrowException: actor = http://wsusebc/ClientWebService/client.asmx, ID=11111111-2222-3333-4444-555555555555, ErrorCode=InternalServerError, Message=, Client=?
";

    #[test]
    fn a_dictionary_error_in_get_sync_info_ties_its_key_to_the_fault_id() {
        // Through the real path: only marker lines reach the scanner.
        let log = crate::scan_server("wsusebc".into(), FAULT.as_bytes())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(log.faults.len(), 2);
        assert_eq!(log.faults[0].id, "c0a7445f-b989-43fa-ac20-11f8ca65fa8c");
        assert_eq!(log.faults[0].key.as_deref(), Some("8862"));
        assert_eq!(
            log.faults[0].actor,
            "http://wsusebc/ClientWebService/client.asmx"
        );
        assert!(
            !log.faults[1].is_kb954960(),
            "a fault without the dictionary error"
        );
        assert_eq!(log.keys.iter().collect::<Vec<_>>(), ["8862"]);
        assert_eq!(log.first.as_deref(), Some("2009-03-27 10:55:29.201"));
    }
}
