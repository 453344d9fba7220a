//! The client web service's two cookies: the authorization cookie SimpleAuth issues and the
//! cookie `GetCookie` and `SyncUpdates` issue. Their contents are implementation-specific and
//! opaque to the client (MS-WUSP 2.2.3.4, 2.2.3.5: client ID, target groups, expiry, protocol
//! version, the server's identity); a server "SHOULD return an InvalidCookie error if passed a
//! Cookie that a client obtained from another server". The lab signs them (HMAC-MD5 with a key
//! of the lab's run) rather than encrypting them: what a client must not do, change or move
//! them, is refused all the same.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};

type HmacMd5 = Hmac<md5::Md5>;

/// What a cookie says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Contents {
    /// `auth` (SimpleAuth's) or `sync` (`GetCookie`'s).
    pub(crate) kind: String,
    pub(crate) server: String,
    pub(crate) client_id: String,
    /// The client's group besides All Computers.
    pub(crate) group_id: String,
    /// Seconds since the Unix epoch.
    pub(crate) expires: i64,
    /// The server's configuration change number when the cookie was issued (ConfigChanged).
    pub(crate) config: i64,
    /// The client's `protocolVersion` (`GetCookie`).
    #[serde(default)]
    pub(crate) protocol: String,
}

/// Why a cookie was refused: the ErrorCode to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Not one of this lab's, changed, or another server's.
    Invalid,
    Expired,
}

#[derive(Debug)]
pub(crate) struct Sealer {
    key: [u8; 32],
}

impl Sealer {
    pub(crate) fn new() -> Sealer {
        let mut key = [0u8; 32];
        key.iter_mut().for_each(|b| *b = fastrand::u8(..));
        Sealer { key }
    }

    /// The MAC of `data`; empty (a cookie that never opens) should HMAC refuse the key, which it
    /// does not for any length.
    fn mac(&self, data: &[u8]) -> Vec<u8> {
        let Ok(mut mac) = HmacMd5::new_from_slice(&self.key) else {
            return Vec::new();
        };
        mac.update(data);
        mac.finalize().into_bytes().to_vec()
    }

    /// The cookie's bytes, base64 as `CookieData`/`EncryptedData` carry them.
    pub(crate) fn seal(&self, contents: &Contents) -> String {
        let json = serde_json::to_vec(contents).unwrap_or_default();
        let mut data = self.mac(&json);
        data.extend_from_slice(&json);
        base64::engine::general_purpose::STANDARD.encode(data)
    }

    /// The cookie `text` holds when this lab issued it for `server` as `kind` and it has not
    /// expired at `now`.
    pub(crate) fn open(
        &self,
        text: &str,
        kind: &str,
        server: &str,
        now: i64,
    ) -> Result<Contents, Refused> {
        let compact: String = text.split_whitespace().collect();
        let data = base64::engine::general_purpose::STANDARD
            .decode(compact)
            .map_err(|_| Refused::Invalid)?;
        if data.len() < 16 {
            return Err(Refused::Invalid);
        }
        let (mac, json) = data.split_at(16);
        let mut check = HmacMd5::new_from_slice(&self.key).map_err(|_| Refused::Invalid)?;
        check.update(json);
        check.verify_slice(mac).map_err(|_| Refused::Invalid)?;
        let contents: Contents = serde_json::from_slice(json).map_err(|_| Refused::Invalid)?;
        if contents.kind != kind || !contents.server.eq_ignore_ascii_case(server) {
            return Err(Refused::Invalid);
        }
        if contents.expires <= now {
            return Err(Refused::Expired);
        }
        Ok(contents)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contents() -> Contents {
        Contents {
            kind: "sync".into(),
            server: "wsus-hq".into(),
            client_id: "0c1e57a1-0000-4000-8000-000000000001".into(),
            group_id: susdb::groups::UNASSIGNED_COMPUTERS.into(),
            expires: 1_000,
            config: 1,
            protocol: "1.0".into(),
        }
    }

    #[test]
    fn a_cookie_opens_only_where_and_when_it_was_issued_for() {
        let sealer = Sealer::new();
        let text = sealer.seal(&contents());
        assert_eq!(sealer.open(&text, "sync", "WSUS-HQ", 999), Ok(contents()));
        assert_eq!(
            sealer.open(&text, "sync", "wsus-hq", 1_000),
            Err(Refused::Expired)
        );
        assert_eq!(
            sealer.open(&text, "sync", "wsus-emea", 0),
            Err(Refused::Invalid)
        );
        assert_eq!(
            sealer.open(&text, "auth", "wsus-hq", 0),
            Err(Refused::Invalid)
        );
        assert_eq!(
            Sealer::new().open(&text, "sync", "wsus-hq", 0),
            Err(Refused::Invalid),
            "another lab's key"
        );
        let mut bytes = base64::engine::general_purpose::STANDARD
            .decode(&text)
            .unwrap_or_default();
        if let Some(last) = bytes.last_mut() {
            *last ^= 1;
        }
        let changed = base64::engine::general_purpose::STANDARD.encode(bytes);
        assert_eq!(
            sealer.open(&changed, "sync", "wsus-hq", 0),
            Err(Refused::Invalid)
        );
    }
}
