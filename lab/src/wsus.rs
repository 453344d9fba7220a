//! Which WSUS release each emulated server runs, and who may do what on its web service.
//!
//! Build numbers, as `GetServerVersion` reports them:
//! - 3.0 RTM `3.0.6000.374` and 3.0 SP1 `3.1.6001.65`: MS-WSUSSS 17.0, product behavior note 13
//!   ("If the update server is using WSUS 3.0 RTM, the value is "3.0.6000.374". If ... WSUS 3.0
//!   SP1, the value is "3.1.6001.65"", `shared/docs/wsus-web-services.md` 1.3).
//! - 3.0 SP2 `3.2.7600.226`: the SP2 release's build as widely reported (and named by issue 22);
//!   no Microsoft page at hand states it, so a client must not depend on the last part.
//! - 3.0 SP1 with hotfix 954960: KB 954960 names the hotfix by the *file* version of
//!   `Microsoft.UpdateServices.WebServices.Client.dll` (3.1.6001.66 installed, .65 not). Whether
//!   `GetServerVersion` changes with it is not public; the lab emulates the harsher case: it
//!   still answers `3.1.6001.65`, so a client cannot tell the hotfix from its absence.

use std::fmt;
use std::str::FromStr;

/// A WSUS 3.0 release the lab can emulate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WsusVersion {
    V30,
    V30Sp1,
    /// 3.0 SP1 with hotfix 954960 installed.
    V30Sp1Hotfix,
    /// 3.0 SP2: the last release of WSUS 3.0, and what the lab emulates unless told otherwise.
    #[default]
    V30Sp2,
}

impl WsusVersion {
    pub const ALL: [WsusVersion; 4] = [
        WsusVersion::V30,
        WsusVersion::V30Sp1,
        WsusVersion::V30Sp1Hotfix,
        WsusVersion::V30Sp2,
    ];

    pub fn name(self) -> &'static str {
        match self {
            WsusVersion::V30 => "3.0",
            WsusVersion::V30Sp1 => "3.0sp1",
            WsusVersion::V30Sp1Hotfix => "3.0sp1-954960",
            WsusVersion::V30Sp2 => "3.0sp2",
        }
    }

    /// What `GetServerVersion` answers (see the module's sources).
    pub fn build(self) -> &'static str {
        match self {
            WsusVersion::V30 => "3.0.6000.374",
            WsusVersion::V30Sp1 | WsusVersion::V30Sp1Hotfix => "3.1.6001.65",
            WsusVersion::V30Sp2 => "3.2.7600.226",
        }
    }
}

impl WsusVersion {
    /// The `ProtocolVersion` its client web service reports in `GetConfig` (MS-WUSP product
    /// behavior note 12: WSUS 3.0 `3.0`, 3.0 SP1 `3.1`, 3.0 SP2 `3.2`).
    pub fn client_protocol(self) -> &'static str {
        match self {
            WsusVersion::V30 => "3.0",
            WsusVersion::V30Sp1 | WsusVersion::V30Sp1Hotfix => "3.1",
            WsusVersion::V30Sp2 => "3.2",
        }
    }

    /// Whether its client web service has the fix of KB 954960: the hotfix, or SP2, which
    /// includes it (KB 954960, Resolution; `workflows::hotfix` gives the same advice).
    pub fn client_fixed(self) -> bool {
        matches!(self, WsusVersion::V30Sp1Hotfix | WsusVersion::V30Sp2)
    }
}

impl fmt::Display for WsusVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for WsusVersion {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let wanted = text.trim().to_ascii_lowercase().replace(' ', "");
        WsusVersion::ALL
            .into_iter()
            .find(|v| v.name() == wanted)
            .ok_or_else(|| {
                format!(
                    "unknown WSUS version `{text}`: one of {}",
                    WsusVersion::ALL.map(WsusVersion::name).join(", ")
                )
            })
    }
}

/// `--wsus-version`: `VERSION` for every server, or `NAME=VERSION` for one.
pub fn parse_server_version(text: &str) -> Result<(Option<String>, WsusVersion), String> {
    match text.split_once('=') {
        Some((name, version)) if !name.trim().is_empty() => {
            Ok((Some(name.trim().to_string()), version.parse()?))
        }
        Some(_) => Err(format!("`{text}`: give VERSION or NAME=VERSION")),
        None => Ok((None, text.parse()?)),
    }
}

/// The numbers `GetCurrentUserRole` answers. `UpdateServerUserRole`'s members (Administrator,
/// Reporter, Unauthorized; learn.microsoft.com aa354557) have no published numbers, so the lab
/// takes them from its command line (`--api-roles admin=N,reporter=M`) and tests give numbers a
/// client could not have guessed. The defaults are made up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiRoles {
    pub admin: i32,
    pub reporter: i32,
}

impl Default for ApiRoles {
    fn default() -> Self {
        ApiRoles {
            admin: 1,
            reporter: 2,
        }
    }
}

impl FromStr for ApiRoles {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut roles = ApiRoles::default();
        for part in text.split(',') {
            let (role, number) = part
                .split_once('=')
                .ok_or_else(|| format!("`{part}`: give admin=N,reporter=M"))?;
            let number: i32 = number
                .trim()
                .parse()
                .map_err(|_| format!("`{part}`: the role number must be an integer"))?;
            match role.trim() {
                "admin" => roles.admin = number,
                "reporter" => roles.reporter = number,
                other => return Err(format!("unknown role `{other}`: admin or reporter")),
            }
        }
        if roles.admin == roles.reporter {
            return Err(format!(
                "`{text}`: the administrator and the reporter need different numbers"
            ));
        }
        Ok(roles)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_for_all_servers_or_one() {
        assert_eq!(
            parse_server_version("3.0sp1"),
            Ok((None, WsusVersion::V30Sp1))
        );
        assert_eq!(
            parse_server_version("wsus-lyon=3.0sp1-954960"),
            Ok((Some("wsus-lyon".into()), WsusVersion::V30Sp1Hotfix))
        );
        assert!(
            parse_server_version("a=3.1")
                .unwrap_err()
                .contains("3.0sp2")
        );
        assert_eq!(WsusVersion::default().build(), "3.2.7600.226");
    }

    #[test]
    fn role_numbers_are_taken_as_given_and_must_differ() {
        assert_eq!(
            "admin=7,reporter=3".parse(),
            Ok(ApiRoles {
                admin: 7,
                reporter: 3
            })
        );
        assert!("admin=2".parse::<ApiRoles>().is_err());
        assert!("boss=1".parse::<ApiRoles>().is_err());
    }
}
