//! The Windows an emulated server runs on, and the TLS it therefore speaks: the protocol versions
//! and cipher suites its Schannel enables by default, for the web site (IIS) and, bounded by the
//! SQL Server release, for TDS.
//!
//! Sources:
//! - Protocols Schannel enables by default, per Windows (learn.microsoft.com, "Protocols in
//!   TLS/SSL (Schannel SSP)" and "TLS/SSL Settings"): Server 2003 and 2008, SSL 3.0 and TLS 1.0
//!   (2008 SP2 gets TLS 1.1/1.2 only through KB4019276, off until enabled); 2008 R2 has TLS 1.1
//!   and 1.2 but leaves them off on the server side; 2012 to 2019 enable TLS 1.0 to 1.2; 2022
//!   adds TLS 1.3.
//! - Cipher suites, per Windows (learn.microsoft.com, "Cipher Suites in TLS/SSL (Schannel SSP)"):
//!   2003 offers RC4 and 3DES with RSA key exchange (AES only with KB948963); 2008 and 2008 R2
//!   add AES-CBC with RSA and ECDHE; 2012 R2 on add the TLS 1.2 AES-GCM and SHA-256/384 suites;
//!   2022 adds the TLS 1.3 suites. The lab serves them with OpenSSL, whose builds (Debian's
//!   3.0 here) have neither RC4 nor 3DES cipher suites: a 2003 host is emulated with KB948963
//!   (AES with RSA key exchange, the update that brought AES to Schannel on 2003). A 2003 host
//!   without it offers only RC4 and 3DES, which no current OpenSSL or rustls client speaks: the
//!   tool cannot reach it over TLS at all (the README says so).
//! - SQL Server and TLS 1.2 (KB3135244, "TLS 1.2 support for Microsoft SQL Server"): 2005 never
//!   got it; 2008 and 2008 R2 only from builds 10.0.6547 and 10.50.6542 on, newer than the last
//!   service packs the lab reports (10.0.6000.29, 10.50.6000.34, [`SqlVersion::product_version`]),
//!   so those speak TLS 1.0 here; 2012 SP4 and 2014 SP3 have it. TLS 1.3 on TDS only through
//!   TDS 8.0 (SQL Server 2022, "TDS 8.0" overview).

use std::fmt;
use std::str::FromStr;

use crate::version::SqlVersion;

/// A Windows Server release the lab can emulate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Windows {
    V2003,
    V2008,
    /// Windows Server 2008 R2: what a WSUS 3.0 SP2 server most often runs on (the last Windows
    /// WSUS 3.0 installs on; 2012 and later bring WSUS 4 and newer as a server role). The default.
    #[default]
    V2008R2,
    /// Windows Server 2008 R2 whose administrator enabled TLS 1.1 and 1.2 for the server side
    /// (the `SCHANNEL\Protocols` registry keys): AES-CBC suites only, no AES-GCM with RSA.
    V2008R2Tls12,
    V2012,
    V2016,
    V2019,
    V2022,
}

/// A TLS protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tls {
    V1_0,
    V1_1,
    V1_2,
    V1_3,
}

impl Tls {
    pub fn name(self) -> &'static str {
        match self {
            Tls::V1_0 => "TLS 1.0",
            Tls::V1_1 => "TLS 1.1",
            Tls::V1_2 => "TLS 1.2",
            Tls::V1_3 => "TLS 1.3",
        }
    }
}

/// What a server's TLS accepts: the versions, from `min` to `max`, and the cipher suites, in
/// OpenSSL's names (TLS 1.2 and below; TLS 1.3 uses OpenSSL's default suites, which are
/// Windows's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsProfile {
    pub min: Tls,
    pub max: Tls,
    pub ciphers: &'static str,
}

/// AES-CBC with SHA-1, ECDHE and RSA key exchange: Windows Server 2008 and 2008 R2 (their 3DES
/// and RC4 suites are left out: OpenSSL 3 serves neither).
const CBC_SHA1: &str = "ECDHE-RSA-AES256-SHA:ECDHE-RSA-AES128-SHA:AES256-SHA:AES128-SHA";
/// 2008 R2 with TLS 1.2 enabled: its TLS 1.2 suites for an RSA certificate are AES-CBC with
/// SHA-256, before those of [`CBC_SHA1`].
const CBC_SHA2: &str = "AES128-SHA256:AES256-SHA256:AES128-SHA:AES256-SHA:\
    ECDHE-RSA-AES128-SHA:ECDHE-RSA-AES256-SHA";
/// 2012 R2 to 2022: the TLS 1.2 suites first, then those of 2008 R2.
const TLS12: &str = "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256:\
    ECDHE-RSA-AES256-SHA384:ECDHE-RSA-AES128-SHA256:AES256-GCM-SHA384:AES128-GCM-SHA256:\
    AES256-SHA256:AES128-SHA256:ECDHE-RSA-AES256-SHA:ECDHE-RSA-AES128-SHA:AES256-SHA:\
    AES128-SHA";

impl Windows {
    pub const ALL: [Windows; 8] = [
        Windows::V2003,
        Windows::V2008,
        Windows::V2008R2,
        Windows::V2008R2Tls12,
        Windows::V2012,
        Windows::V2016,
        Windows::V2019,
        Windows::V2022,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Windows::V2003 => "2003",
            Windows::V2008 => "2008",
            Windows::V2008R2 => "2008r2",
            Windows::V2008R2Tls12 => "2008r2-tls12",
            Windows::V2012 => "2012",
            Windows::V2016 => "2016",
            Windows::V2019 => "2019",
            Windows::V2022 => "2022",
        }
    }

    /// The TLS its web sites (IIS, through Schannel) accept by default.
    pub fn https(self) -> TlsProfile {
        match self {
            Windows::V2003 => TlsProfile {
                min: Tls::V1_0,
                max: Tls::V1_0,
                ciphers: "AES256-SHA:AES128-SHA",
            },
            Windows::V2008 | Windows::V2008R2 => TlsProfile {
                min: Tls::V1_0,
                max: Tls::V1_0,
                ciphers: CBC_SHA1,
            },
            Windows::V2008R2Tls12 => TlsProfile {
                min: Tls::V1_0,
                max: Tls::V1_2,
                ciphers: CBC_SHA2,
            },
            Windows::V2012 | Windows::V2016 | Windows::V2019 => TlsProfile {
                min: Tls::V1_0,
                max: Tls::V1_2,
                ciphers: TLS12,
            },
            Windows::V2022 => TlsProfile {
                min: Tls::V1_0,
                max: Tls::V1_3,
                ciphers: TLS12,
            },
        }
    }

    /// The TLS a SQL Server of release `sql` on this Windows accepts on TDS 7.x (inside
    /// PRELOGIN): Schannel's, at most what the release supports, never TLS 1.3 (TDS 8.0 only).
    pub fn tds(self, sql: SqlVersion) -> TlsProfile {
        let os = self.https();
        let release = match sql {
            SqlVersion::V2005 | SqlVersion::V2008 | SqlVersion::V2008R2 => Tls::V1_0,
            _ => Tls::V1_2,
        };
        let max = os.max.min(release).min(Tls::V1_2);
        TlsProfile {
            max,
            ciphers: if max < Tls::V1_2 && (os.ciphers == TLS12 || os.ciphers == CBC_SHA2) {
                CBC_SHA1
            } else {
                os.ciphers
            },
            ..os
        }
    }

    /// TDS 8.0 (`encrypt: strict`): TLS before PRELOGIN, 1.2 or 1.3 (SQL Server 2022 only).
    pub fn strict(self) -> TlsProfile {
        TlsProfile {
            min: Tls::V1_2,
            ..self.https()
        }
    }
}

/// The platform of one emulated server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Platform {
    pub windows: Windows,
    pub sql: SqlVersion,
}

impl fmt::Display for Windows {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Windows {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let wanted = text.trim().to_ascii_lowercase().replace(' ', "");
        Windows::ALL
            .into_iter()
            .find(|v| v.name() == wanted || v.name().replace('-', "") == wanted.replace('-', ""))
            .ok_or_else(|| {
                format!(
                    "unknown Windows Server version `{text}`: one of {}",
                    Windows::ALL.map(Windows::name).join(", ")
                )
            })
    }
}

/// `NAME=WINDOWS[/SQL]` (`wsus-lyon=2003/2005`, `wsus-tokyo=2016`): one server's platform, as
/// `lab --platform` gives it. The SQL release left out is the lab's.
pub fn parse_server_platform(text: &str) -> Result<(String, Windows, Option<SqlVersion>), String> {
    let (name, platform) = text
        .split_once('=')
        .filter(|(name, _)| !name.trim().is_empty())
        .ok_or_else(|| {
            format!("`{text}`: give NAME=WINDOWS or NAME=WINDOWS/SQL, e.g. wsus-lyon=2008/2005")
        })?;
    let (windows, sql) = match platform.split_once('/') {
        Some((w, s)) => (w.parse()?, Some(s.parse()?)),
        None => (platform.parse()?, None),
    };
    Ok((name.trim().to_string(), windows, sql))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wsus_30_host_speaks_tls_10_and_a_modern_one_12() {
        assert_eq!(Windows::default(), Windows::V2008R2);
        let old = Windows::V2008R2.tds(SqlVersion::V2005);
        assert_eq!((old.min, old.max), (Tls::V1_0, Tls::V1_0));
        assert_eq!(Windows::V2008.https().max, Tls::V1_0);
        // SQL Server 2005 on a modern Windows is still TLS 1.0; 2016 on 2016 is 1.2.
        assert_eq!(Windows::V2016.tds(SqlVersion::V2005).max, Tls::V1_0);
        assert_eq!(Windows::V2016.tds(SqlVersion::V2016).max, Tls::V1_2);
        // TLS 1.3 on TDS only through TDS 8.0.
        assert_eq!(Windows::V2022.tds(SqlVersion::V2022).max, Tls::V1_2);
        assert_eq!(Windows::V2022.strict().max, Tls::V1_3);
        assert_eq!(Windows::V2003.https().ciphers, "AES256-SHA:AES128-SHA");
    }

    #[test]
    fn server_platforms_parse_as_the_command_line_gives_them() {
        assert_eq!(
            parse_server_platform("wsus-lyon=2008/2005"),
            Ok(("wsus-lyon".into(), Windows::V2008, Some(SqlVersion::V2005)))
        );
        assert_eq!(
            parse_server_platform("a=2008 R2"),
            Ok(("a".into(), Windows::V2008R2, None))
        );
        let e = parse_server_platform("a=2000").unwrap_err();
        assert!(e.contains("2003, 2008, 2008r2"), "{e}");
        assert!(parse_server_platform("=2008").is_err());
    }
}
