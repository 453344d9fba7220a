//! The server side of TDS 7.2 to 7.4 (MS-TDS), as the emulated release speaks it: packets, and
//! the requests a client sends (PRELOGIN, LOGIN7, SQL batches, RPC). The answers are [`super::reply`].
//! Only what a SQL Server client needs to talk to the lab; references are the MS-TDS section
//! numbers.

use std::fmt;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Packet types (2.2.3.1.1).
pub mod packet {
    pub const SQL_BATCH: u8 = 0x01;
    pub const RPC: u8 = 0x03;
    pub const REPLY: u8 = 0x04;
    pub const ATTENTION: u8 = 0x06;
    pub const TRANSACTION_MANAGER: u8 = 0x0E;
    pub const LOGIN7: u8 = 0x10;
    pub const SSPI: u8 = 0x11;
    pub const PRELOGIN: u8 = 0x12;
}

const HEADER: usize = 8;
const EOM: u8 = 0x01;
/// No request the lab serves is anywhere near this; a larger one is a broken or hostile client.
const MAX_MESSAGE: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed TDS: {0}")]
    Malformed(String),
}

fn malformed(what: impl Into<String>) -> ProtocolError {
    ProtocolError::Malformed(what.into())
}

/// One request: the packets up to end-of-message, joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub kind: u8,
    pub payload: Vec<u8>,
}

/// Reads one message; `Ok(None)` when the client closed the connection between messages.
pub async fn read_message<R: AsyncRead + Unpin>(
    r: &mut R,
) -> Result<Option<Message>, ProtocolError> {
    let mut payload = Vec::new();
    let mut kind = None;
    loop {
        let mut header = [0u8; HEADER];
        match r.read_exact(&mut header).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && kind.is_none() => {
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        }
        let length = usize::from(u16::from_be_bytes([header[2], header[3]]));
        if length < HEADER {
            return Err(malformed(format!("packet length {length}")));
        }
        if kind.is_some_and(|k| k != header[0]) && header[0] != packet::ATTENTION {
            return Err(malformed("packet type changed inside a message"));
        }
        kind.get_or_insert(header[0]);
        let start = payload.len();
        payload.resize(start + length - HEADER, 0);
        r.read_exact(&mut payload[start..]).await?;
        if payload.len() > MAX_MESSAGE {
            return Err(malformed("message too large"));
        }
        if header[1] & EOM != 0 {
            return Ok(Some(Message {
                kind: kind.unwrap_or(header[0]),
                payload,
            }));
        }
    }
}

/// Writes a reply as packets of at most `packet_size` bytes, the last one flagged end-of-message.
pub async fn write_message<W: AsyncWrite + Unpin>(
    w: &mut W,
    kind: u8,
    payload: &[u8],
    packet_size: usize,
) -> Result<(), ProtocolError> {
    let body = packet_size.clamp(512, 32767) - HEADER;
    let chunks: Vec<&[u8]> = if payload.is_empty() {
        vec![&[]]
    } else {
        payload.chunks(body).collect()
    };
    let mut out = Vec::with_capacity(payload.len() + HEADER * chunks.len());
    for (i, chunk) in chunks.iter().enumerate() {
        let last = i + 1 == chunks.len();
        let length =
            u16::try_from(chunk.len() + HEADER).map_err(|_| malformed("packet too long"))?;
        out.push(kind);
        out.push(if last { EOM } else { 0 });
        out.extend_from_slice(&length.to_be_bytes());
        out.extend_from_slice(&[0, 0]); // SPID
        out.push(u8::try_from((i + 1) % 256).unwrap_or(0)); // PacketID
        out.push(0); // Window
        out.extend_from_slice(chunk);
    }
    w.write_all(&out).await?;
    w.flush().await?;
    Ok(())
}

/// A little-endian reader over a payload that fails instead of panicking.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Cursor { buf, pos: 0 }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtocolError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| malformed("truncated"))?;
        let slice = &self.buf[self.pos..end];
        self.pos = end;
        Ok(slice)
    }

    fn u8(&mut self) -> Result<u8, ProtocolError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, ProtocolError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, ProtocolError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, ProtocolError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn utf16(&mut self, chars: usize) -> Result<String, ProtocolError> {
        utf16(self.take(chars * 2)?)
    }

    fn at_end(&self) -> bool {
        self.pos >= self.buf.len()
    }
}

fn utf16(bytes: &[u8]) -> Result<String, ProtocolError> {
    let units: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    String::from_utf16(&units).map_err(|_| malformed("invalid UTF-16"))
}

// ---------------------------------------------------------------------------------------------
// PRELOGIN (2.2.6.5)

/// What the lab reads from the client's PRELOGIN.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Prelogin {
    /// ENCRYPT_OFF 0, ON 1, NOT_SUP 2, REQ 3.
    pub encryption: u8,
    /// INSTOPT: the named instance the client asked for ("" for none or MSSQLServer).
    pub instance: String,
}

pub fn parse_prelogin(payload: &[u8]) -> Result<Prelogin, ProtocolError> {
    let mut c = Cursor::new(payload);
    let mut out = Prelogin {
        encryption: 0x02,
        instance: String::new(),
    };
    loop {
        let token = c.u8()?;
        if token == 0xFF {
            return Ok(out);
        }
        let b = c.take(4)?;
        let offset = usize::from(u16::from_be_bytes([b[0], b[1]]));
        let length = usize::from(u16::from_be_bytes([b[2], b[3]]));
        let value = payload
            .get(offset..offset + length)
            .ok_or_else(|| malformed("PRELOGIN option offset"))?;
        match token {
            0x01 if length >= 1 => out.encryption = value[0],
            0x02 => {
                let name = value.split(|b| *b == 0).next().unwrap_or_default();
                out.instance = String::from_utf8_lossy(name).into_owned();
            }
            _ => {}
        }
    }
}

/// PRELOGIN ENCRYPTION values.
pub mod encrypt {
    /// Only LOGIN7 is encrypted.
    pub const OFF: u8 = 0x00;
    pub const ON: u8 = 0x01;
    pub const NOT_SUP: u8 = 0x02;
}

/// The PRELOGIN reply: version (major, minor, build), `encryption`, no instance, no thread id,
/// no MARS.
pub fn prelogin_reply(encryption: u8, version: (u8, u8, u16)) -> Vec<u8> {
    let (major, minor, build) = version;
    let [build_hi, build_lo] = build.to_be_bytes();
    // (token, data); offsets are computed after the option table (5 bytes per option + 0xFF).
    let options: [(u8, &[u8]); 5] = [
        (0x00, &[major, minor, build_hi, build_lo, 0, 0]), // VERSION, sub-build 0
        (0x01, &[encryption]),                             // ENCRYPTION
        (0x02, &[0x00]),                                   // INSTOPT: empty, accepted
        (0x03, &[]),                                       // THREADID
        (0x04, &[0x00]),                                   // MARS off
    ];
    let mut table = Vec::new();
    let mut data = Vec::new();
    let mut offset = options.len() * 5 + 1;
    for (token, value) in options {
        table.push(token);
        table.extend_from_slice(&u16::try_from(offset).unwrap_or(0).to_be_bytes());
        table.extend_from_slice(&u16::try_from(value.len()).unwrap_or(0).to_be_bytes());
        data.extend_from_slice(value);
        offset += value.len();
    }
    table.push(0xFF);
    table.extend_from_slice(&data);
    table
}

// ---------------------------------------------------------------------------------------------
// LOGIN7 (2.2.6.4)

/// What the lab reads from LOGIN7. The password is deobfuscated only to be compared.
pub struct Login {
    /// The newest TDS version the client speaks (`0x74000004` for 7.4).
    pub tds_version: u32,
    pub packet_size: u32,
    pub user: String,
    pub password: String,
    /// `Config::host` in tiberius: which emulated server the client asked for.
    pub server: String,
    pub database: String,
    pub app: String,
    /// The client asked for integrated (SSPI/NTLM) authentication.
    pub integrated: bool,
    pub sspi: Vec<u8>,
}

impl fmt::Debug for Login {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Login")
            .field("user", &self.user)
            .field("server", &self.server)
            .field("database", &self.database)
            .finish_non_exhaustive()
    }
}

pub fn parse_login(payload: &[u8]) -> Result<Login, ProtocolError> {
    let mut c = Cursor::new(payload);
    let _length = c.u32()?;
    let tds_version = c.u32()?;
    let packet_size = c.u32()?;
    c.take(12)?; // client version, pid, connection id
    let _flags1 = c.u8()?;
    let flags2 = c.u8()?;
    c.take(10)?; // type flags, flags3, timezone, lcid
    let field = |c: &mut Cursor<'_>| -> Result<(usize, usize), ProtocolError> {
        Ok((usize::from(c.u16()?), usize::from(c.u16()?)))
    };
    let host = field(&mut c)?;
    let user = field(&mut c)?;
    let password = field(&mut c)?;
    let app = field(&mut c)?;
    let server = field(&mut c)?;
    let _extension = field(&mut c)?;
    let _library = field(&mut c)?;
    let _language = field(&mut c)?;
    let database = field(&mut c)?;
    c.take(6)?; // client id
    let sspi = field(&mut c)?;
    let text = |(offset, chars): (usize, usize)| -> Result<String, ProtocolError> {
        let bytes = payload
            .get(offset..offset + chars * 2)
            .ok_or_else(|| malformed("LOGIN7 offset"))?;
        utf16(bytes)
    };
    let _ = text(host)?;
    let password = {
        let (offset, chars) = password;
        let bytes = payload
            .get(offset..offset + chars * 2)
            .ok_or_else(|| malformed("LOGIN7 password"))?;
        let plain: Vec<u8> = bytes.iter().map(|b| (b ^ 0xA5).rotate_left(4)).collect();
        utf16(&plain)?
    };
    let sspi_bytes = payload
        .get(sspi.0..sspi.0 + sspi.1)
        .map(<[u8]>::to_vec)
        .unwrap_or_default();
    Ok(Login {
        tds_version,
        packet_size,
        user: text(user)?,
        password,
        server: text(server)?,
        database: text(database)?,
        app: text(app)?,
        integrated: flags2 & 0x80 != 0,
        sspi: sspi_bytes,
    })
}

// ---------------------------------------------------------------------------------------------
// Requests (2.2.6.6, 2.2.6.7, 2.2.6.9)

fn skip_all_headers(c: &mut Cursor<'_>) -> Result<(), ProtocolError> {
    let total = usize::try_from(c.u32()?).map_err(|_| malformed("ALL_HEADERS"))?;
    c.take(
        total
            .checked_sub(4)
            .ok_or_else(|| malformed("ALL_HEADERS length"))?,
    )?;
    Ok(())
}

/// A SQL batch's text.
pub fn parse_batch(payload: &[u8]) -> Result<String, ProtocolError> {
    let mut c = Cursor::new(payload);
    skip_all_headers(&mut c)?;
    utf16(&payload[c.pos..])
}

/// A parameter value, as far as the lab needs to tell them apart.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Bit(bool),
    Float(f64),
    /// Upper-case canonical form.
    Guid(String),
    Text(String),
    Bytes(Vec<u8>),
    /// Date and time types, kept as their wire bytes (the lab records them, never computes on them).
    Temporal(Vec<u8>),
    Decimal(Vec<u8>),
}

impl Value {
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(v) => Some(*v),
            Value::Bit(b) => Some(i64::from(*b)),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bit(b) => Some(*b),
            Value::Int(v) => Some(*v != 0),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Text(s) | Value::Guid(s) => Some(s),
            _ => None,
        }
    }

    /// For the lab's call log (JSON).
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Null => serde_json::Value::Null,
            Value::Int(v) => (*v).into(),
            Value::Bit(b) => (*b).into(),
            Value::Float(f) => (*f).into(),
            Value::Guid(s) | Value::Text(s) => s.clone().into(),
            Value::Bytes(b) | Value::Temporal(b) | Value::Decimal(b) => b
                .iter()
                .map(|x| format!("{x:02x}"))
                .collect::<String>()
                .into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    pub name: String,
    pub output: bool,
    /// The declared type (TYPE_INFO), echoed back for an OUTPUT parameter.
    pub type_info: Vec<u8>,
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rpc {
    /// The procedure name, or `sp_executesql` for ProcID 10.
    pub procedure: String,
    pub params: Vec<Param>,
}

/// GUIDs on the wire: the first three groups little-endian (2.2.5.5.1.5 / uniqueidentifier).
pub fn guid_from_wire(b: &[u8]) -> String {
    format!(
        "{:02X}{:02X}{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}{:02X}{:02X}{:02X}{:02X}",
        b[3],
        b[2],
        b[1],
        b[0],
        b[5],
        b[4],
        b[7],
        b[6],
        b[8],
        b[9],
        b[10],
        b[11],
        b[12],
        b[13],
        b[14],
        b[15]
    )
}

pub fn guid_to_wire(guid: &str) -> Option<[u8; 16]> {
    let hex: String = guid.chars().filter(char::is_ascii_hexdigit).collect();
    if hex.len() != 32 {
        return None;
    }
    let mut b = [0u8; 16];
    for (i, byte) in b.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[i * 2..i * 2 + 2], 16).ok()?;
    }
    b[..4].reverse();
    b[4..6].reverse();
    b[6..8].reverse();
    Some(b)
}

fn read_plp(c: &mut Cursor<'_>) -> Result<Option<Vec<u8>>, ProtocolError> {
    let total = c.u64()?;
    if total == u64::MAX {
        return Ok(None);
    }
    let mut out = Vec::new();
    loop {
        let chunk = usize::try_from(c.u32()?).map_err(|_| malformed("PLP chunk"))?;
        if chunk == 0 {
            return Ok(Some(out));
        }
        out.extend_from_slice(c.take(chunk)?);
        if out.len() > MAX_MESSAGE {
            return Err(malformed("PLP value too large"));
        }
    }
}

/// Reads TYPE_INFO and the value that follows it (2.2.5.4, 2.2.5.5).
fn read_typed_value(c: &mut Cursor<'_>) -> Result<(Vec<u8>, Value), ProtocolError> {
    let start = c.pos;
    let ty = c.u8()?;
    let int = |bytes: &[u8]| -> i64 {
        match bytes.len() {
            1 => i64::from(bytes[0]),
            2 => i64::from(i16::from_le_bytes([bytes[0], bytes[1]])),
            4 => i64::from(i32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])),
            _ => {
                let mut a = [0u8; 8];
                a[..bytes.len().min(8)].copy_from_slice(&bytes[..bytes.len().min(8)]);
                i64::from_le_bytes(a)
            }
        }
    };
    match ty {
        0x1F => Ok((vec![ty], Value::Null)),
        // Fixed-length: INT1, BIT, INT2, INT4, DATETIM4, FLT4, MONEY, DATETIME, FLT8, MONEY4, INT8
        0x30 | 0x32 | 0x34 | 0x38 | 0x3A | 0x3B | 0x3C | 0x3D | 0x3E | 0x7A | 0x7F => {
            let len = match ty {
                0x30 | 0x32 => 1,
                0x34 => 2,
                0x38 | 0x3A | 0x3B | 0x7A => 4,
                _ => 8,
            };
            let type_info = c.buf[start..c.pos].to_vec();
            let bytes = c.take(len)?;
            let v = match ty {
                0x32 => Value::Bit(bytes[0] != 0),
                0x3E => Value::Float(f64::from_le_bytes(
                    bytes.try_into().map_err(|_| malformed("FLT8"))?,
                )),
                0x3D | 0x3A => Value::Temporal(bytes.to_vec()),
                _ => Value::Int(int(bytes)),
            };
            Ok((type_info, v))
        }
        // INTN, BITN, FLTN, GUID, DATETIMN, MONEYN: u8 max length; value u8 length.
        0x26 | 0x68 | 0x6D | 0x24 | 0x6F | 0x6E => {
            c.u8()?;
            let type_info = c.buf[start..c.pos].to_vec();
            let len = usize::from(c.u8()?);
            if len == 0 {
                return Ok((type_info, Value::Null));
            }
            let bytes = c.take(len)?;
            let v = match ty {
                0x26 => Value::Int(int(bytes)),
                0x68 => Value::Bit(bytes[0] != 0),
                0x6D if len == 4 => Value::Float(f64::from(f32::from_le_bytes(
                    bytes.try_into().map_err(|_| malformed("FLTN"))?,
                ))),
                0x6D => Value::Float(f64::from_le_bytes(
                    bytes.try_into().map_err(|_| malformed("FLTN"))?,
                )),
                0x24 if len == 16 => Value::Guid(guid_from_wire(bytes)),
                0x24 => return Err(malformed("GUID length")),
                _ => Value::Temporal(bytes.to_vec()),
            };
            Ok((type_info, v))
        }
        // DATEN: no type info beyond the type; TIMEN, DATETIME2N, DATETIMEOFFSETN: a scale.
        0x28..=0x2B => {
            if ty != 0x28 {
                c.u8()?;
            }
            let type_info = c.buf[start..c.pos].to_vec();
            let len = usize::from(c.u8()?);
            let v = if len == 0 {
                Value::Null
            } else {
                Value::Temporal(c.take(len)?.to_vec())
            };
            Ok((type_info, v))
        }
        // DECIMALN, NUMERICN: length, precision, scale.
        0x6A | 0x6C => {
            c.take(3)?;
            let type_info = c.buf[start..c.pos].to_vec();
            let len = usize::from(c.u8()?);
            let v = if len == 0 {
                Value::Null
            } else {
                Value::Decimal(c.take(len)?.to_vec())
            };
            Ok((type_info, v))
        }
        // BIGVARBINARY, BIGBINARY: u16 max length (0xFFFF = PLP).
        0xA5 | 0xAD => {
            let max = c.u16()?;
            let type_info = c.buf[start..c.pos].to_vec();
            let bytes = if max == 0xFFFF {
                read_plp(c)?
            } else {
                let len = c.u16()?;
                if len == 0xFFFF {
                    None
                } else {
                    Some(c.take(usize::from(len))?.to_vec())
                }
            };
            Ok((type_info, bytes.map_or(Value::Null, Value::Bytes)))
        }
        // NVARCHAR, NCHAR, BIGVARCHAR, BIGCHAR: u16 max length, 5-byte collation.
        0xE7 | 0xEF | 0xA7 | 0xAF => {
            let max = c.u16()?;
            c.take(5)?;
            let type_info = c.buf[start..c.pos].to_vec();
            let bytes = if max == 0xFFFF {
                read_plp(c)?
            } else {
                let len = c.u16()?;
                if len == 0xFFFF {
                    None
                } else {
                    Some(c.take(usize::from(len))?.to_vec())
                }
            };
            let v = match bytes {
                None => Value::Null,
                Some(b) if ty == 0xE7 || ty == 0xEF => Value::Text(utf16(&b)?),
                Some(b) => Value::Text(String::from_utf8_lossy(&b).into_owned()),
            };
            Ok((type_info, v))
        }
        other => Err(malformed(format!(
            "unsupported parameter type 0x{other:02X}"
        ))),
    }
}

/// An RPC request (2.2.6.6): by procedure name, or by ProcID (10 = `sp_executesql`).
pub fn parse_rpc(payload: &[u8]) -> Result<Rpc, ProtocolError> {
    let mut c = Cursor::new(payload);
    skip_all_headers(&mut c)?;
    let name_len = c.u16()?;
    let procedure = if name_len == 0xFFFF {
        match c.u16()? {
            10 => "sp_executesql".to_string(),
            12 => "sp_prepexec".to_string(),
            id => return Err(malformed(format!("unsupported ProcID {id}"))),
        }
    } else {
        c.utf16(usize::from(name_len))?
    };
    let _flags = c.u16()?;
    let mut params = Vec::new();
    while !c.at_end() {
        let name_chars = usize::from(c.u8()?);
        let name = c.utf16(name_chars)?;
        let status = c.u8()?;
        let (type_info, value) = read_typed_value(&mut c)?;
        params.push(Param {
            name,
            output: status & 0x01 != 0,
            type_info,
            value,
        });
    }
    Ok(Rpc { procedure, params })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guids_round_trip_through_the_wire_order() {
        let guid = "D359F493-0AAD-43FA-AF5C-6763326CD98F";
        let wire = guid_to_wire(guid).unwrap();
        assert_eq!(wire[0], 0x93, "first group is little-endian");
        assert_eq!(guid_from_wire(&wire), guid);
    }

    #[test]
    fn malformed_requests_are_errors_not_panics() {
        for payload in [
            &[][..],
            &[1, 0, 0][..],
            &[22, 0, 0, 0, 1, 2][..],
            &[4, 0, 0, 0, 0xFF, 0xFF, 0x0A][..],
        ] {
            assert!(parse_rpc(payload).is_err());
            assert!(parse_login(payload).is_err());
        }
    }

    #[tokio::test]
    async fn long_replies_are_split_into_packets_and_joined_again() {
        let payload: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let mut wire = Vec::new();
        write_message(&mut wire, packet::REPLY, &payload, 512)
            .await
            .unwrap();
        assert_eq!(wire.len(), payload.len() + 8 * payload.len().div_ceil(504));
        let message = read_message(&mut wire.as_slice()).await.unwrap().unwrap();
        assert_eq!(
            message,
            Message {
                kind: packet::REPLY,
                payload
            }
        );
    }
}
