//! The reply tokens of TDS (MS-TDS 2.2.7) the lab answers with: result sets, return status and
//! values, errors, environment changes, LOGINACK, DONE. Written, never read.

use crate::sql::tds::{Param, Value, guid_to_wire};

pub mod done {
    pub const FINAL: u16 = 0x00;
    pub const MORE: u16 = 0x01;
    pub const ERROR: u16 = 0x02;
    pub const COUNT: u16 = 0x10;
    pub const ATTN: u16 = 0x20;
}

/// Column types the lab returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColType {
    Int,
    Bit,
    NVarChar,
    Guid,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    Int(i32),
    Bit(bool),
    Text(String),
    Guid(String),
}

/// A result set: columns and rows.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ResultSet {
    pub columns: Vec<(String, ColType)>,
    pub rows: Vec<Vec<Cell>>,
}

/// The collation of the lab's strings: Latin1_General_CI_AS.
const COLLATION: [u8; 5] = [0x09, 0x04, 0xD0, 0x00, 0x34];

/// Builds a token stream.
#[derive(Debug, Default)]
pub struct Reply {
    pub bytes: Vec<u8>,
}

impl Reply {
    fn token_with_len(&mut self, token: u8, body: &[u8]) {
        self.bytes.push(token);
        self.bytes
            .extend_from_slice(&u16::try_from(body.len()).unwrap_or(u16::MAX).to_le_bytes());
        self.bytes.extend_from_slice(body);
    }

    pub fn env_change_text(&mut self, kind: u8, new: &str, old: &str) {
        let mut body = vec![kind];
        put_b_varchar(&mut body, new);
        put_b_varchar(&mut body, old);
        self.token_with_len(0xE3, &body);
    }

    pub fn env_change_bytes(&mut self, kind: u8, new: &[u8], old: &[u8]) {
        let mut body = vec![kind];
        body.push(u8::try_from(new.len()).unwrap_or(0));
        body.extend_from_slice(new);
        body.push(u8::try_from(old.len()).unwrap_or(0));
        body.extend_from_slice(old);
        self.token_with_len(0xE3, &body);
    }

    fn message(
        &mut self,
        token: u8,
        number: i32,
        class: u8,
        text: &str,
        server: &str,
        procedure: &str,
    ) {
        let mut body = Vec::new();
        body.extend_from_slice(&number.to_le_bytes());
        body.push(1); // state
        body.push(class);
        put_us_varchar(&mut body, text);
        put_b_varchar(&mut body, server);
        put_b_varchar(&mut body, procedure);
        body.extend_from_slice(&1u32.to_le_bytes()); // line
        self.token_with_len(token, &body);
    }

    pub fn info(&mut self, number: i32, text: &str, server: &str) {
        self.message(0xAB, number, 0, text, server, "");
    }

    pub fn error(&mut self, number: i32, class: u8, text: &str, server: &str, procedure: &str) {
        self.message(0xAA, number, class, text, server, procedure);
    }

    /// LOGINACK (2.2.7.14): the session's TDS version and the server's product version.
    pub fn login_ack(&mut self, program: &str, tds: u32, version: (u8, u8, u16)) {
        let mut body = vec![0x01]; // SQL_TSQL
        body.extend_from_slice(&tds.to_be_bytes());
        put_b_varchar(&mut body, program);
        let (major, minor, build) = version;
        body.extend_from_slice(&[major, minor]);
        body.extend_from_slice(&build.to_be_bytes());
        self.token_with_len(0xAD, &body);
    }

    fn done_token(&mut self, token: u8, status: u16, rows: Option<u64>) {
        self.bytes.push(token);
        let status = status | if rows.is_some() { done::COUNT } else { 0 };
        self.bytes.extend_from_slice(&status.to_le_bytes());
        self.bytes.extend_from_slice(&0xC1u16.to_le_bytes()); // SELECT
        self.bytes
            .extend_from_slice(&rows.unwrap_or(0).to_le_bytes());
    }

    pub fn done(&mut self, status: u16, rows: Option<u64>) {
        self.done_token(0xFD, status, rows);
    }

    pub fn done_in_proc(&mut self, status: u16, rows: Option<u64>) {
        self.done_token(0xFF, status, rows);
    }

    pub fn done_proc(&mut self, status: u16) {
        self.done_token(0xFE, status, None);
    }

    pub fn return_status(&mut self, status: i32) {
        self.bytes.push(0x79);
        self.bytes.extend_from_slice(&status.to_le_bytes());
    }

    /// An OUTPUT parameter's value, typed as the client declared it.
    pub fn return_value(&mut self, ordinal: u16, param: &Param, value: &Value) {
        self.bytes.push(0xAC);
        self.bytes.extend_from_slice(&ordinal.to_le_bytes());
        put_b_varchar(&mut self.bytes, &param.name);
        self.bytes.push(0x01); // output parameter
        self.bytes.extend_from_slice(&0u32.to_le_bytes()); // user type
        self.bytes.extend_from_slice(&0x0001u16.to_le_bytes()); // flags: nullable
        self.bytes.extend_from_slice(&param.type_info);
        match (param.type_info.first(), value) {
            (_, Value::Null) => self.null_for(&param.type_info),
            (Some(0x26), Value::Int(v)) => {
                let max = param.type_info.get(1).copied().unwrap_or(4);
                self.bytes.push(max);
                self.bytes
                    .extend_from_slice(&v.to_le_bytes()[..usize::from(max).min(8)]);
            }
            (Some(0x68), Value::Bit(b)) => self.bytes.extend_from_slice(&[1, u8::from(*b)]),
            (Some(0xE7), Value::Text(s)) => {
                let mut b = Vec::new();
                put_utf16(&mut b, s);
                self.bytes
                    .extend_from_slice(&u16::try_from(b.len()).unwrap_or(0).to_le_bytes());
                self.bytes.extend_from_slice(&b);
            }
            _ => self.null_for(&param.type_info),
        }
    }

    fn null_for(&mut self, type_info: &[u8]) {
        match type_info.first() {
            Some(0xE7 | 0xEF | 0xA7 | 0xAF | 0xA5 | 0xAD) => {
                self.bytes.extend_from_slice(&0xFFFFu16.to_le_bytes())
            }
            Some(0x1F) | None => {}
            _ => self.bytes.push(0),
        }
    }

    pub fn result_set(&mut self, set: &ResultSet) {
        self.bytes.push(0x81);
        self.bytes
            .extend_from_slice(&u16::try_from(set.columns.len()).unwrap_or(0).to_le_bytes());
        for (name, ty) in &set.columns {
            self.bytes.extend_from_slice(&0u32.to_le_bytes()); // user type
            self.bytes.extend_from_slice(&0x0001u16.to_le_bytes()); // nullable
            match ty {
                ColType::Int => self.bytes.extend_from_slice(&[0x26, 4]),
                ColType::Bit => self.bytes.extend_from_slice(&[0x68, 1]),
                ColType::Guid => self.bytes.extend_from_slice(&[0x24, 16]),
                ColType::NVarChar => {
                    self.bytes.push(0xE7);
                    self.bytes.extend_from_slice(&8000u16.to_le_bytes());
                    self.bytes.extend_from_slice(&COLLATION);
                }
            }
            put_b_varchar(&mut self.bytes, name);
        }
        for row in &set.rows {
            self.bytes.push(0xD1);
            for (cell, (_, ty)) in row.iter().zip(&set.columns) {
                match (cell, ty) {
                    (Cell::Null, ColType::NVarChar) => {
                        self.bytes.extend_from_slice(&0xFFFFu16.to_le_bytes())
                    }
                    (Cell::Null, _) => self.bytes.push(0),
                    (Cell::Int(v), _) => {
                        self.bytes.push(4);
                        self.bytes.extend_from_slice(&v.to_le_bytes());
                    }
                    (Cell::Bit(b), _) => self.bytes.extend_from_slice(&[1, u8::from(*b)]),
                    (Cell::Guid(g), _) => {
                        self.bytes.push(16);
                        self.bytes
                            .extend_from_slice(&guid_to_wire(g).unwrap_or_default());
                    }
                    (Cell::Text(s), _) => {
                        let mut b = Vec::new();
                        put_utf16(&mut b, s);
                        self.bytes
                            .extend_from_slice(&u16::try_from(b.len()).unwrap_or(0).to_le_bytes());
                        self.bytes.extend_from_slice(&b);
                    }
                }
            }
        }
    }

    /// The login reply as SQL Server sends it (tiberius waits for the final DONE).
    pub fn login_ok(
        &mut self,
        database: &str,
        server: &str,
        packet_size: u32,
        tds: u32,
        version: (u8, u8, u16),
    ) {
        self.env_change_text(1, database, "master");
        self.info(
            5701,
            &format!("Changed database context to '{database}'."),
            server,
        );
        self.env_change_bytes(7, &COLLATION, &[]);
        self.env_change_text(2, "us_english", "");
        self.info(5703, "Changed language setting to us_english.", server);
        self.login_ack("Microsoft SQL Server", tds, version);
        let size = packet_size.to_string();
        self.env_change_text(4, &size, &size);
        self.done(done::FINAL, None);
    }
}

fn put_utf16(out: &mut Vec<u8>, text: &str) {
    for unit in text.encode_utf16() {
        out.extend_from_slice(&unit.to_le_bytes());
    }
}

/// A B_VARCHAR: a u8 count of UTF-16 units, then the units.
fn put_b_varchar(out: &mut Vec<u8>, text: &str) {
    let units: Vec<u16> = text.encode_utf16().take(255).collect();
    out.push(u8::try_from(units.len()).unwrap_or(u8::MAX));
    for unit in units {
        out.extend_from_slice(&unit.to_le_bytes());
    }
}

/// A US_VARCHAR: a u16 count of UTF-16 units, then the units.
fn put_us_varchar(out: &mut Vec<u8>, text: &str) {
    let units: Vec<u16> = text.encode_utf16().take(65535).collect();
    out.extend_from_slice(&u16::try_from(units.len()).unwrap_or(u16::MAX).to_le_bytes());
    for unit in units {
        out.extend_from_slice(&unit.to_le_bytes());
    }
}
