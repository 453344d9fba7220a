//! Windows authentication as IIS does it for the web service: 401 offering `Negotiate` and
//! `NTLM`, the NTLM exchange on one connection (the lab's verifier, [`crate::ntlm`]), and the
//! account that proved itself.

use std::sync::Mutex;

use base64::Engine as _;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Response, StatusCode};

use crate::api::soap::respond;
use crate::{Lab, lock};

/// How a connection reached the lab's web service.
#[derive(Debug, Clone)]
pub(crate) enum Scheme {
    /// The lab has no certificate: every server over plain HTTP.
    Http,
    /// Plain HTTP to a lab that has a certificate.
    HttpBesideHttps,
    /// TLS, with the name the client asked for.
    Https { sni: Option<String> },
}

/// The NTLM state of one HTTP connection (the handshake is per connection).
#[derive(Debug, Default)]
pub(crate) struct NtlmState {
    pub(crate) challenge: Option<[u8; 8]>,
    pub(crate) user: Option<String>,
}

pub(crate) fn unauthorized(
    token: Option<(&str, String)>,
    negotiate_only: bool,
) -> Response<Full<Bytes>> {
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

/// Whether the account a connection proved is the lab's WSUS administrator (any caller is, on a
/// lab without Windows logins); otherwise it is a reporter.
pub(crate) fn is_admin(lab: &Lab, state: &Mutex<NtlmState>) -> bool {
    match &lab.shared.config.windows_login {
        None => true,
        Some((account, _)) => lock(state)
            .user
            .as_deref()
            .is_some_and(|u| u.eq_ignore_ascii_case(account)),
    }
}

/// `None` when the request may go on; otherwise the response that answers it (a 401 with a
/// challenge). NTLM as IIS does it for Windows authentication: NEGOTIATE in, a
/// CHALLENGE out on a 401, AUTHENTICATE in on the same connection (MS-NLMP).
pub(crate) fn authenticate(
    lab: &Lab,
    server: &str,
    state: &Mutex<NtlmState>,
    header: Option<&str>,
) -> Option<Response<Full<Bytes>>> {
    let (account, password) = lab.shared.config.windows_login.as_ref()?;
    let reporters = &lab.shared.config.api_reporters;
    let mut state = lock(state);
    if state.user.is_some() {
        return None;
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
                Some(who) => {
                    state.user = Some(who);
                    None
                }
                None => Some(unauthorized(None, negotiate_only)),
            }
        }
        _ => Some(unauthorized(None, negotiate_only)),
    }
}
