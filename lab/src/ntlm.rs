//! The server's half of NTLM (MS-NLMP), enough for a Windows login (`auth.method: windows`) to the
//! lab: a CHALLENGE for the client's NEGOTIATE, then the NTLMv2 response of its AUTHENTICATE
//! checked against the configured account's password (MS-NLMP 3.3.2). Message integrity (MIC)
//! and session security are not checked: the lab needs to know who logged in, not to seal.
//!
//! Why not sspi-rs's server side (`Ntlm::accept_security_context`, sspi 0.18.9, which the client
//! uses)? Read in its source (`ntlm/messages/server/complete_authenticate.rs`), it proves the
//! password only through the MIC: it never compares the NTProofStr, so an AUTHENTICATE without a
//! MIC is accepted whatever its password, and the user name on the wire is not compared with
//! the allowed identity, so an unknown user with a known password logs in. The lab must refuse
//! both (a wrong password is error 18456 / HTTP 401 in the tests), so it keeps this verifier.

use hmac::{Hmac, Mac};
use md4::{Digest, Md4};

type HmacMd5 = Hmac<md5::Md5>;

const SIGNATURE: &[u8; 8] = b"NTLMSSP\0";
const NEGOTIATE_UNICODE: u32 = 0x0000_0001;
const REQUEST_TARGET: u32 = 0x0000_0004;
const NEGOTIATE_NTLM: u32 = 0x0000_0200;
const NEGOTIATE_ALWAYS_SIGN: u32 = 0x0000_8000;
const TARGET_TYPE_DOMAIN: u32 = 0x0001_0000;
const NEGOTIATE_EXTENDED_SESSIONSECURITY: u32 = 0x0008_0000;
const NEGOTIATE_TARGET_INFO: u32 = 0x0080_0000;
const NEGOTIATE_VERSION: u32 = 0x0200_0000;
const NEGOTIATE_128: u32 = 0x2000_0000;
const NEGOTIATE_KEY_EXCH: u32 = 0x4000_0000;
const NEGOTIATE_56: u32 = 0x8000_0000;

fn utf16le(text: &str) -> Vec<u8> {
    text.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

/// The CHALLENGE message (MS-NLMP 2.2.1.2) for `domain`, with `server_challenge`.
pub fn challenge(
    server_challenge: [u8; 8],
    domain: &str,
    computer: &str,
    timestamp: u64,
) -> Vec<u8> {
    let target_name = utf16le(domain);
    let mut target_info = Vec::new();
    let mut av = |id: u16, value: &[u8]| {
        target_info.extend_from_slice(&id.to_le_bytes());
        target_info.extend_from_slice(&u16::try_from(value.len()).unwrap_or(0).to_le_bytes());
        target_info.extend_from_slice(value);
    };
    av(2, &utf16le(domain)); // MsvAvNbDomainName
    av(1, &utf16le(computer)); // MsvAvNbComputerName
    av(4, &utf16le(&domain.to_ascii_lowercase())); // MsvAvDnsDomainName
    av(3, &utf16le(&computer.to_ascii_lowercase())); // MsvAvDnsComputerName
    av(7, &timestamp.to_le_bytes()); // MsvAvTimestamp
    av(0, &[]); // MsvAvEOL
    let flags = NEGOTIATE_UNICODE
        | REQUEST_TARGET
        | NEGOTIATE_NTLM
        | NEGOTIATE_ALWAYS_SIGN
        | TARGET_TYPE_DOMAIN
        | NEGOTIATE_EXTENDED_SESSIONSECURITY
        | NEGOTIATE_TARGET_INFO
        | NEGOTIATE_VERSION
        | NEGOTIATE_128
        | NEGOTIATE_KEY_EXCH
        | NEGOTIATE_56;
    let header = 56usize;
    let name_offset = header;
    let info_offset = header + target_name.len();
    let field = |len: usize, offset: usize| -> Vec<u8> {
        let len = u16::try_from(len).unwrap_or(0).to_le_bytes();
        let mut f = Vec::with_capacity(8);
        f.extend_from_slice(&len);
        f.extend_from_slice(&len);
        f.extend_from_slice(&u32::try_from(offset).unwrap_or(0).to_le_bytes());
        f
    };
    let mut m = Vec::with_capacity(header + target_name.len() + target_info.len());
    m.extend_from_slice(SIGNATURE);
    m.extend_from_slice(&2u32.to_le_bytes());
    m.extend(field(target_name.len(), name_offset));
    m.extend_from_slice(&flags.to_le_bytes());
    m.extend_from_slice(&server_challenge);
    m.extend_from_slice(&[0; 8]);
    m.extend(field(target_info.len(), info_offset));
    // Version: Windows Server 2008 R2 (6.1 build 7601), NTLM revision 15.
    m.extend_from_slice(&[6, 1, 0xB1, 0x1D, 0, 0, 0, 15]);
    m.extend_from_slice(&target_name);
    m.extend_from_slice(&target_info);
    m
}

/// Who an AUTHENTICATE message (MS-NLMP 2.2.1.3) is from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticate {
    pub domain: String,
    pub user: String,
    nt_response: Vec<u8>,
}

impl Authenticate {
    pub fn parse(message: &[u8]) -> Result<Authenticate, String> {
        if message.len() < 64 || &message[..8] != SIGNATURE {
            return Err("not an NTLM message".into());
        }
        if message[8..12] != 3u32.to_le_bytes() {
            return Err("not an NTLM AUTHENTICATE message".into());
        }
        let field = |at: usize| -> Result<&[u8], String> {
            let len = usize::from(u16::from_le_bytes([message[at], message[at + 1]]));
            let offset = usize::try_from(u32::from_le_bytes([
                message[at + 4],
                message[at + 5],
                message[at + 6],
                message[at + 7],
            ]))
            .map_err(|e| e.to_string())?;
            message
                .get(offset..offset + len)
                .ok_or_else(|| "an AUTHENTICATE field points outside the message".to_string())
        };
        let flags = u32::from_le_bytes([message[60], message[61], message[62], message[63]]);
        let text = |bytes: &[u8]| -> String {
            if flags & NEGOTIATE_UNICODE != 0 {
                let units: Vec<u16> = bytes
                    .chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]))
                    .collect();
                String::from_utf16_lossy(&units)
            } else {
                String::from_utf8_lossy(bytes).into_owned()
            }
        };
        Ok(Authenticate {
            nt_response: field(20)?.to_vec(),
            domain: text(field(28)?),
            user: text(field(36)?),
        })
    }

    /// `DOMAIN\user`, as the login is named in messages.
    pub fn who(&self) -> String {
        if self.domain.is_empty() {
            self.user.clone()
        } else {
            format!("{}\\{}", self.domain, self.user)
        }
    }

    /// Whether the NTLMv2 response proves `password` for this user (MS-NLMP 3.3.2):
    /// NTProofStr = HMAC-MD5(NTOWFv2, server challenge ‖ blob), NTOWFv2 =
    /// HMAC-MD5(MD4(UTF-16LE(password)), UTF-16LE(UPPER(user) ‖ domain)).
    pub fn proves(&self, password: &str, server_challenge: [u8; 8]) -> bool {
        if self.nt_response.len() <= 16 {
            return false; // NTLMv1 or anonymous: refused
        }
        let key = Md4::digest(utf16le(password));
        let Ok(mut mac) = HmacMd5::new_from_slice(&key) else {
            return false;
        };
        mac.update(&utf16le(&self.user.to_uppercase()));
        mac.update(&utf16le(&self.domain));
        let ntowf = mac.finalize().into_bytes();
        let (proof, blob) = self.nt_response.split_at(16);
        let Ok(mut mac) = HmacMd5::new_from_slice(&ntowf) else {
            return false;
        };
        mac.update(&server_challenge);
        mac.update(blob);
        mac.verify_slice(proof).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// MS-NLMP 4.2.4: the NTLMv2 example (user "User", domain "Domain", password "Password",
    /// server challenge 0123456789abcdef).
    #[test]
    fn the_ms_nlmp_ntlmv2_example_verifies() {
        let server_challenge = [0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef];
        // NTProofStr from 4.2.4.2.2, then the blob (temp) from 4.2.4.1.3 as the example builds it.
        let proof = [
            0x68, 0xcd, 0x0a, 0xb8, 0x51, 0xe5, 0x1c, 0x96, 0xaa, 0xbc, 0x92, 0x7b, 0xeb, 0xef,
            0x6a, 0x1c,
        ];
        let mut blob = vec![1, 1, 0, 0, 0, 0, 0, 0];
        blob.extend_from_slice(&[0; 8]); // time
        blob.extend_from_slice(&[0xaa; 8]); // client challenge
        blob.extend_from_slice(&[0; 4]);
        // AV pairs: NbDomainName "Domain", NbComputerName "Server", EOL.
        for (id, value) in [(2u16, "Domain"), (1, "Server")] {
            let v = utf16le(value);
            blob.extend_from_slice(&id.to_le_bytes());
            blob.extend_from_slice(&u16::try_from(v.len()).unwrap_or(0).to_le_bytes());
            blob.extend_from_slice(&v);
        }
        blob.extend_from_slice(&[0; 4]);
        blob.extend_from_slice(&[0; 4]);
        let mut nt_response = proof.to_vec();
        nt_response.extend_from_slice(&blob);
        let auth = Authenticate {
            domain: "Domain".into(),
            user: "User".into(),
            nt_response,
        };
        assert!(auth.proves("Password", server_challenge));
        assert!(!auth.proves("password", server_challenge));
        assert!(!auth.proves("Password", [0; 8]));
    }

    #[test]
    fn a_challenge_carries_the_server_challenge_and_target_info() {
        let m = challenge([7; 8], "LAB", "SQL-HQ", 0);
        assert_eq!(&m[..8], SIGNATURE);
        assert_eq!(&m[24..32], &[7; 8]);
        let info_len = usize::from(u16::from_le_bytes([m[40], m[41]]));
        let info_offset =
            usize::try_from(u32::from_le_bytes([m[44], m[45], m[46], m[47]])).unwrap_or(usize::MAX);
        assert_eq!(m.len(), info_offset + info_len);
    }
}
