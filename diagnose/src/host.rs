//! The key a WSUS server is known by across client logs, server logs and the topology: its whole
//! host, lower case.

/// The key of the WSUS server a URL or a name stands for: its whole host, lower case (an IP
/// address whole), with the port when it is not the scheme's default.
/// `http://WSUS-A.corp:8530/ClientWebService/client.asmx` is `wsus-a.corp:8530`;
/// `https://wsus-a.corp/...` is `wsus-a.corp`; a bare name is itself.
pub fn host_key(url_or_name: &str) -> String {
    let trimmed = url_or_name.trim().trim_matches(['"', '\'']);
    let (scheme, rest) = trimmed
        .split_once("://")
        .map_or(("", trimmed), |(scheme, rest)| (scheme, rest));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    // An IPv6 literal keeps its brackets; a port follows the last colon outside them.
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((addr, tail)) => (format!("[{addr}]"), tail.strip_prefix(':')),
            None => (authority.to_string(), None),
        },
        None => match authority.rsplit_once(':') {
            Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) && !p.is_empty() => {
                (h.to_string(), Some(p))
            }
            _ => (authority.to_string(), None),
        },
    };
    let default = match scheme.to_ascii_lowercase().as_str() {
        "http" => Some("80"),
        "https" => Some("443"),
        _ => None,
    };
    let host = host.to_ascii_lowercase();
    match port {
        Some(p) if Some(p) != default => format!("{host}:{p}"),
        _ => host,
    }
}
