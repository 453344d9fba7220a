//! Which SQL Server the lab claims to be, and what follows from it: the version it reports
//! (PRELOGIN, LOGINACK, `SERVERPROPERTY`, `@@VERSION`), the TDS version it negotiates, and what
//! it refuses because that SQL Server did not know it yet.
//!
//! Sources:
//! - TDS versions: MS-TDS 2.2.6.4 (LOGIN7 `TDSVersion`) and 2.2.7.14 (LOGINACK `TDSVersion`:
//!   `0x72090002` SQL Server 2005, `0x730A0003` 2008, `0x730B0003` 2008 R2, `0x74000004` 2012 and
//!   later). The server answers with the lower of its own version and the client's.
//! - Types: MS-TDS 2.2.5.4.3 marks `DATEN`, `TIMEN`, `DATETIME2N`, `DATETIMEOFFSETN` (0x28 to
//!   0x2B) as TDS 7.3 types. A server that does not know a parameter's type answers error 8009
//!   "The incoming tabular data stream (TDS) remote procedure call (RPC) protocol stream is
//!   incorrect. Parameter 1 ("@Parameter1"): Data type 0x2B is unknown." (reported verbatim from
//!   a server in minus5/gofreetds#4, and for 0x3D in tediousjs/tedious#29). tiberius's own docs:
//!   "If wanting to use Tiberius with SQL Server version 2005, one must disable the `tds73`
//!   feature".
//! - Product versions: the last service pack of each release, as `SERVERPROPERTY('ProductVersion')`
//!   reports it; 2005 is SP3 (`9.00.4035.00`), what WSUS 3.0 SP2 installs as SSEE.
//! - TDS 8.0 (`encrypt: strict`, TLS before PRELOGIN) exists from SQL Server 2022 on ("TDS 8.0
//!   ... SQL Server 2022 (16.x)", learn.microsoft.com, "TDS 8.0" overview).

use std::fmt;
use std::str::FromStr;

/// A SQL Server release the lab can emulate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum SqlVersion {
    /// SQL Server 2005 (SSEE as WSUS 3.0 installs it): the default, the harshest.
    #[default]
    V2005,
    V2008,
    V2008R2,
    V2012,
    V2014,
    V2016,
    V2022,
}

/// TDS 7.2, the newest SQL Server 2005 speaks.
pub const TDS_72: u32 = 0x7209_0002;
/// TDS 7.3 (SQL Server 2008): the first with the date and time types of 0x28 to 0x2B.
pub const TDS_73: u32 = 0x730A_0003;

impl SqlVersion {
    pub const ALL: [SqlVersion; 7] = [
        SqlVersion::V2005,
        SqlVersion::V2008,
        SqlVersion::V2008R2,
        SqlVersion::V2012,
        SqlVersion::V2014,
        SqlVersion::V2016,
        SqlVersion::V2022,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SqlVersion::V2005 => "2005",
            SqlVersion::V2008 => "2008",
            SqlVersion::V2008R2 => "2008r2",
            SqlVersion::V2012 => "2012",
            SqlVersion::V2014 => "2014",
            SqlVersion::V2016 => "2016",
            SqlVersion::V2022 => "2022",
        }
    }

    /// `SERVERPROPERTY('ProductVersion')`.
    pub fn product_version(self) -> &'static str {
        match self {
            SqlVersion::V2005 => "9.00.4035.00",
            SqlVersion::V2008 => "10.0.6000.29",
            SqlVersion::V2008R2 => "10.50.6000.34",
            SqlVersion::V2012 => "11.0.7001.0",
            SqlVersion::V2014 => "12.0.6024.0",
            SqlVersion::V2016 => "13.0.6300.2",
            SqlVersion::V2022 => "16.0.1000.6",
        }
    }

    /// `SERVERPROPERTY('Edition')`: WSUS installs its own database engine on 2005 (SSEE); later
    /// releases stand for a SQL Server the administrator installed.
    pub fn edition(self) -> &'static str {
        match self {
            SqlVersion::V2005 => "Windows Internal Database",
            _ => "Standard Edition (64-bit)",
        }
    }

    /// `@@VERSION`, in the layout SQL Server uses (release, version, build date, copyright,
    /// edition and operating system on separate lines).
    pub fn at_at_version(self) -> String {
        let (release, built, copyright, os) = match self {
            SqlVersion::V2005 => (
                "2005",
                "Nov 24 2008 13:01:59",
                "1988-2005",
                "Windows NT 5.2 (Build 3790: Service Pack 2)",
            ),
            SqlVersion::V2008 => (
                "2008 (SP4)",
                "Sep 16 2014 17:32:12",
                "1988-2008",
                "Windows NT 6.1 <X64> (Build 7601: Service Pack 1)",
            ),
            SqlVersion::V2008R2 => (
                "2008 R2 (SP3)",
                "Jun 28 2015 08:42:37",
                "Microsoft Corporation",
                "Windows NT 6.1 <X64> (Build 7601: Service Pack 1)",
            ),
            SqlVersion::V2012 => (
                "2012 (SP4)",
                "Oct 19 2017 15:33:32",
                "Microsoft Corporation",
                "Windows NT 6.3 <X64> (Build 9600: )",
            ),
            SqlVersion::V2014 => (
                "2014 (SP3)",
                "Jun 13 2019 10:11:05",
                "Microsoft Corporation",
                "Windows NT 6.3 <X64> (Build 9600: )",
            ),
            SqlVersion::V2016 => (
                "2016 (SP3)",
                "Sep 15 2021 21:35:26",
                "Microsoft Corporation",
                "Windows Server 2016 Standard 10.0 <X64> (Build 14393: )",
            ),
            SqlVersion::V2022 => (
                "2022 (RTM)",
                "Oct  8 2022 05:58:25",
                "Microsoft Corporation",
                "Windows Server 2022 Standard 10.0 <X64> (Build 20348: )",
            ),
        };
        let arch = if self == SqlVersion::V2005 {
            "(Intel X86)"
        } else {
            "(X64)"
        };
        format!(
            "Microsoft SQL Server {release} - {} {arch} \n\t{built} \n\tCopyright (c) {copyright}\n\t{} on {os}\n",
            self.product_version(),
            self.edition()
        )
    }

    /// The newest TDS version this release speaks (LOGINACK).
    pub fn tds(self) -> u32 {
        match self {
            SqlVersion::V2005 => TDS_72,
            SqlVersion::V2008 => TDS_73,
            SqlVersion::V2008R2 => 0x730B_0003,
            _ => 0x7400_0004,
        }
    }

    /// The TDS version of a session: the lower of the client's (LOGIN7) and the server's.
    pub fn negotiate(self, client: u32) -> u32 {
        // TDS version numbers grow with the protocol (0x71000001 < 0x72090002 < ... < 0x74000004).
        self.tds().min(client)
    }

    /// Whether TDS 8.0 (TLS before PRELOGIN, `encrypt: strict`) is served.
    pub fn strict(self) -> bool {
        self == SqlVersion::V2022
    }

    /// Major, minor and build of the product version, for PRELOGIN `VERSION` and LOGINACK.
    pub fn version_parts(self) -> (u8, u8, u16) {
        let mut parts = self
            .product_version()
            .split('.')
            .map(|p| p.parse::<u16>().unwrap_or(0));
        let major = parts.next().unwrap_or(0);
        let minor = parts.next().unwrap_or(0);
        let build = parts.next().unwrap_or(0);
        (
            u8::try_from(major).unwrap_or(0),
            u8::try_from(minor).unwrap_or(0),
            build,
        )
    }
}

/// Whether a parameter type (its TYPE_INFO's first byte) exists only from TDS 7.3 on.
pub fn tds73_type(type_byte: u8) -> bool {
    (0x28..=0x2B).contains(&type_byte)
}

impl fmt::Display for SqlVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SqlVersion {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let wanted = text.trim().to_ascii_lowercase().replace([' ', '-'], "");
        SqlVersion::ALL
            .into_iter()
            .find(|v| v.name() == wanted)
            .ok_or_else(|| {
                format!(
                    "unknown SQL Server version `{text}`: one of {}",
                    SqlVersion::ALL.map(SqlVersion::name).join(", ")
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_release_reports_its_own_version_and_tds() {
        assert_eq!(SqlVersion::default(), SqlVersion::V2005);
        assert_eq!(SqlVersion::V2005.version_parts(), (9, 0, 4035));
        assert_eq!(SqlVersion::V2008R2.version_parts(), (10, 50, 6000));
        assert_eq!(SqlVersion::V2005.tds(), TDS_72);
        assert_eq!(SqlVersion::V2008.tds() >> 24, 0x73);
        assert_eq!(SqlVersion::V2016.tds(), 0x7400_0004);
        // tiberius asks for 7.4; SQL Server 2005 answers 7.2.
        assert_eq!(SqlVersion::V2005.negotiate(0x7400_0004), TDS_72);
        // tedious asking for 7.2 from a 2016 server gets 7.2.
        assert_eq!(SqlVersion::V2016.negotiate(TDS_72), TDS_72);
        assert!(
            SqlVersion::V2005
                .at_at_version()
                .starts_with("Microsoft SQL Server 2005 - 9.00.4035.00 (Intel X86)")
        );
        assert!(!SqlVersion::V2016.strict() && SqlVersion::V2022.strict());
    }

    #[test]
    fn names_parse_as_the_command_line_gives_them() {
        assert_eq!("2008R2".parse(), Ok(SqlVersion::V2008R2));
        assert_eq!("2008 r2".parse(), Ok(SqlVersion::V2008R2));
        let err = "2000".parse::<SqlVersion>().unwrap_err();
        assert!(err.contains("2005, 2008, 2008r2"), "{err}");
        assert!(tds73_type(0x2A) && !tds73_type(0x24));
    }
}
