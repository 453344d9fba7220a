//! The SUSDB contract: every SQL text, procedure name, parameter name and GUID that `wsus-reset`
//! sends to a WSUS database, in one place, each with its source in `shared/docs/susdb.md`.
//!
//! The workflow sends exactly these texts (always with parameters, never assembled from input),
//! and the lab answers exactly these texts, so the two cannot drift. Nobody here can run a real
//! SUSDB: one reading of `sp_helptext` on a real WSUS 3.0 server can confirm or correct each
//! constant below, and a read-only `plan --online` shows what the tool sees before it changes
//! anything.

/// The Office 2003 Service Pack 1 update of KB 954960 (susdb.md section 1).
pub const KB954960_UPDATE_ID: &str = "D359F493-0AAD-43FA-AF5C-6763326CD98F";
pub const KB954960_UPDATE_TITLE: &str = "Office 2003 Service Pack 1";

/// The built-in target groups, `dbo.tbTargetGroup` (susdb.md section 2) [V] H.
pub mod groups {
    pub const ALL_COMPUTERS: &str = "A0A08746-4DBE-4A37-9ADF-9E7652C0B421";
    pub const UNASSIGNED_COMPUTERS: &str = "B73CA6ED-5727-47F3-84DE-015E03F6A88A";
    pub const DOWNSTREAM_SERVERS: &str = "D374F42A-9BE2-4163-A0FA-3C86A401B7A7";
}

/// `tbDeployment.ActionID` (susdb.md section 2): 0 and 1 [V] H, 2 and 3 [V] M.
pub mod action {
    pub const INSTALL: i32 = 0;
    pub const UNINSTALL: i32 = 1;
    /// "Not approved" / detect only: what the Approve dialog writes with no change.
    pub const DETECT_ONLY: i32 = 2;
    pub const BLOCK: i32 = 3;
}

/// Stored procedures, called by name through RPC with named parameters (susdb.md section 3).
pub mod procs {
    /// `spDeclineUpdate @updateID, @adminName, @failIfReplica` [V] H: retires every live
    /// approval of every revision into `tbDeadDeployment`.
    pub const DECLINE_UPDATE: &str = "dbo.spDeclineUpdate";
    /// `spDeployUpdate @updateID, @revisionNumber, @actionID, @targetGroupID, @adminName,
    /// @isAssigned, @downloadPriority, @failIfReplica, @isReplica` [V] H (names, as WSUSpendu and
    /// SharpWSUS call it); defaults [I]. `@deadline` is not sent: only modern WSUS is shown with
    /// it, and it would travel as `datetime2`, a TDS 7.3 type SQL Server 2005 refuses
    /// (susdb-audit.md item 13).
    pub const DEPLOY_UPDATE: &str = "dbo.spDeployUpdate";
    /// Session-owned application lock held on each top server for the whole run.
    pub const GET_APPLOCK: &str = "sp_getapplock";
    pub const RELEASE_APPLOCK: &str = "sp_releaseapplock";

    pub const UPDATE_ID: &str = "@updateID";
    pub const ADMIN_NAME: &str = "@adminName";
    pub const FAIL_IF_REPLICA: &str = "@failIfReplica";
    pub const REVISION_NUMBER: &str = "@revisionNumber";
    pub const ACTION_ID: &str = "@actionID";
    pub const TARGET_GROUP_ID: &str = "@targetGroupID";
    pub const IS_ASSIGNED: &str = "@isAssigned";
    pub const DOWNLOAD_PRIORITY: &str = "@downloadPriority";
    pub const IS_REPLICA: &str = "@isReplica";

    pub const RESOURCE: &str = "@Resource";
    pub const LOCK_MODE: &str = "@LockMode";
    pub const LOCK_OWNER: &str = "@LockOwner";
    pub const LOCK_TIMEOUT: &str = "@LockTimeout";
    /// The applock resource: one per hierarchy, named after the tool.
    pub const APPLOCK_RESOURCE: &str = "wsus-reset/kb954960";

    /// Every parameter the tool binds, with the SQL type it sends, per WSUS procedure (name
    /// without schema). The probe checks them against the server's `sys.parameters`
    /// ([`crate::sql::SIGNATURES`]) before any change: a SUSDB whose procedures differ is refused.
    pub const SIGNATURES: &[(&str, &[(&str, &str)])] = &[
        (
            "spDeclineUpdate",
            &[
                (UPDATE_ID, "uniqueidentifier"),
                (ADMIN_NAME, "nvarchar"),
                (FAIL_IF_REPLICA, "bit"),
            ],
        ),
        (
            "spDeployUpdate",
            &[
                (UPDATE_ID, "uniqueidentifier"),
                (REVISION_NUMBER, "int"),
                (ACTION_ID, "int"),
                (TARGET_GROUP_ID, "uniqueidentifier"),
                (ADMIN_NAME, "nvarchar"),
                (IS_ASSIGNED, "bit"),
                (DOWNLOAD_PRIORITY, "int"),
                (FAIL_IF_REPLICA, "bit"),
                (IS_REPLICA, "bit"),
            ],
        ),
    ];
}

/// Every column the tool reads or writes, per table or view (name without schema): the probe
/// checks them against the server's `sys.columns` ([`sql::SIGNATURES`]) before any change.
pub mod schema {
    pub const COLUMNS: &[(&str, &[&str])] = &[
        (
            "tbConfigurationA",
            &["UpstreamServerName", "ServerPortNumber", "SyncToMU"],
        ),
        ("tbConfigurationC", &["ReplicaMode"]),
        ("tbSchemaVersion", &["ID", "SchemaVersion"]),
        ("tbUpdate", &["UpdateID", "LocalUpdateID"]),
        (
            "tbRevision",
            &[
                "RevisionID",
                "LocalUpdateID",
                "RevisionNumber",
                "IsLatestRevision",
            ],
        ),
        (
            "tbDeployment",
            &[
                "DeploymentID",
                "RevisionID",
                "TargetGroupID",
                "TargetGroupTypeID",
                "ActionID",
            ],
        ),
        (
            "vwMinimalUpdate",
            &["UpdateID", "Declined", "IsLatestRevision"],
        ),
    ];
}

/// `tbDeployment.TargetGroupTypeID` (susdb-audit.md item 9): 0 for computer target groups, the
/// approvals clients see through GetSyncInfo; other values (1: the Downstream Servers group) are
/// kept by WSUS for its downstream servers and are not what the fault is about.
pub mod target_group_type {
    pub const COMPUTER: i32 = 0;
    pub const DOWNSTREAM_SERVER: i32 = 1;
}

/// The error a replica raises for an approval change with `@failIfReplica = 1` [I] M: WSUS's
/// procedures raise a user error (50000) whose text names the replica mode.
pub const REPLICA_REFUSAL_ERROR: i32 = 50000;

/// Fixed, parameterized read and configuration statements, sent with `sp_executesql`
/// (tiberius `query`), parameters `@P1..`.
pub mod sql {
    /// The probe, one round trip, four result sets; `@P1` = the UpdateID (uniqueidentifier).
    ///
    /// 1. One row: `ProductVersion` nvarchar (SERVERPROPERTY, susdb.md 4), `SchemaVersion` int
    ///    (`tbSchemaVersion`, the newest row, susdb.md 4), `ReplicaMode` bit (`tbConfigurationC`,
    ///    susdb.md 3), `UpstreamServerName` nvarchar NULL, `ServerPortNumber` int, `SyncToMU` bit
    ///    (`tbConfigurationA`, susdb.md 3).
    /// 2. The update's revisions: `RevisionID` int, `RevisionNumber` int, `IsLatestRevision` bit
    ///    (`tbUpdate` / `tbRevision`, susdb.md 1).
    /// 3. Its declined flag as Microsoft's own view computes it: `Declined` bit
    ///    (`vwMinimalUpdate`, susdb.md 1: "read declined from a view; do not recompute it").
    /// 4. Its live approvals: `DeploymentID` int, `RevisionNumber` int, `TargetGroupID`
    ///    uniqueidentifier, `TargetGroupTypeID` int, `ActionID` int (`tbDeployment`, susdb.md 2
    ///    and 5; the type separates computer groups from the Downstream Servers group,
    ///    susdb-audit.md item 9).
    ///
    /// Flags are cast to `bit` and the group type to `int`: their types in WSUS 3.0's views are
    /// not public (susdb-audit.md item 24), and the casts make either answer read the same.
    /// Everything is SQL Server 2005 syntax (`TOP (n)`, `CROSS JOIN`, `CAST`).
    ///
    /// The consistency verdict (susdb.md 5: several latest revisions, an approval on a revision
    /// that is not the latest, two live approvals for one target group) is computed from sets 2
    /// and 4 by the client, so the probe stays one read.
    pub const PROBE: &str = "\
SELECT CAST(SERVERPROPERTY('ProductVersion') AS nvarchar(128)) AS ProductVersion, \
(SELECT TOP (1) s.SchemaVersion FROM dbo.tbSchemaVersion AS s ORDER BY s.ID DESC) AS SchemaVersion, \
CAST(c.ReplicaMode AS bit) AS ReplicaMode, a.UpstreamServerName, a.ServerPortNumber, CAST(a.SyncToMU AS bit) AS SyncToMU \
FROM dbo.tbConfigurationA AS a CROSS JOIN dbo.tbConfigurationC AS c; \
SELECT r.RevisionID, r.RevisionNumber, CAST(r.IsLatestRevision AS bit) AS IsLatestRevision FROM dbo.tbUpdate AS u \
JOIN dbo.tbRevision AS r ON r.LocalUpdateID = u.LocalUpdateID WHERE u.UpdateID = @P1 ORDER BY r.RevisionNumber; \
SELECT TOP (1) CAST(m.Declined AS bit) AS Declined FROM dbo.vwMinimalUpdate AS m WHERE m.UpdateID = @P1 ORDER BY m.IsLatestRevision DESC; \
SELECT d.DeploymentID, r.RevisionNumber, d.TargetGroupID, CAST(d.TargetGroupTypeID AS int) AS TargetGroupTypeID, d.ActionID FROM dbo.tbUpdate AS u \
JOIN dbo.tbRevision AS r ON r.LocalUpdateID = u.LocalUpdateID \
JOIN dbo.tbDeployment AS d ON d.RevisionID = r.RevisionID WHERE u.UpdateID = @P1 ORDER BY d.DeploymentID";

    /// The signatures this build relies on, read from the catalog before any change (no
    /// parameters; `sys.parameters`, `sys.columns`, `OBJECT_ID`, `OBJECT_NAME` and `TYPE_NAME`
    /// all exist from SQL Server 2005 on). Two result sets:
    ///
    /// 1. `ObjectName` nvarchar, `ParameterName` nvarchar, `TypeName` nvarchar: every parameter of
    ///    `spDeclineUpdate` and `spDeployUpdate` (compared with [`crate::procs::SIGNATURES`]).
    /// 2. `ObjectName` nvarchar, `ColumnName` nvarchar: every column of the tables and views the
    ///    tool reads (compared with [`crate::schema::COLUMNS`]).
    ///
    /// Sent on its own, before the probe: SQL Server compiles a whole batch first, so a missing
    /// column would fail the probe with error 207 before any of these rows could explain why.
    pub const SIGNATURES: &str = "\
SELECT CAST(OBJECT_NAME(p.object_id) AS nvarchar(128)) AS ObjectName, CAST(p.name AS nvarchar(128)) AS ParameterName, \
CAST(TYPE_NAME(p.user_type_id) AS nvarchar(128)) AS TypeName FROM sys.parameters AS p \
WHERE p.object_id IN (OBJECT_ID(N'dbo.spDeclineUpdate'), OBJECT_ID(N'dbo.spDeployUpdate')) ORDER BY p.object_id, p.parameter_id; \
SELECT CAST(OBJECT_NAME(c.object_id) AS nvarchar(128)) AS ObjectName, CAST(c.name AS nvarchar(128)) AS ColumnName FROM sys.columns AS c \
WHERE c.object_id IN (OBJECT_ID(N'dbo.tbConfigurationA'), OBJECT_ID(N'dbo.tbConfigurationC'), OBJECT_ID(N'dbo.tbSchemaVersion'), \
OBJECT_ID(N'dbo.tbUpdate'), OBJECT_ID(N'dbo.tbRevision'), OBJECT_ID(N'dbo.tbDeployment'), OBJECT_ID(N'dbo.vwMinimalUpdate')) \
ORDER BY c.object_id, c.column_id";

    /// Sets the replica flag and reads it back in the same round trip; `@P1` = bit
    /// (`tbConfigurationC.ReplicaMode`, susdb.md 3). This bypasses the running WSUS service's
    /// cached configuration [I] M; the procedures' `@failIfReplica` checks read the database.
    pub const SET_REPLICA_MODE: &str = "\
UPDATE dbo.tbConfigurationC SET ReplicaMode = @P1; \
SELECT c.ReplicaMode FROM dbo.tbConfigurationC AS c";

    /// Which object a logged dictionary key is on this server; `@P1` = the key (int)
    /// (susdb.md 5). One row per match: `Kind` nvarchar.
    pub const KEY_OBJECT: &str = "\
SELECT N'LocalUpdateID' AS Kind FROM dbo.tbUpdate WHERE LocalUpdateID = @P1 \
UNION ALL SELECT N'RevisionID' FROM dbo.tbRevision WHERE RevisionID = @P1 \
UNION ALL SELECT N'DeploymentID' FROM dbo.tbDeployment WHERE DeploymentID = @P1";

    /// Whether this session still holds the hierarchy applock; `@P1` = the resource (nvarchar).
    /// One row: `Mode` nvarchar, `Exclusive` while held, `NoLock` once lost. `APPLOCK_MODE`
    /// exists from SQL Server 2005 on (sql-docs `applock-mode-transact-sql.md`: "APPLOCK_MODE(
    /// 'database_principal', 'resource_name', 'lock_owner')"). The run's keep-alive: a
    /// connection that idles past a firewall's timeout is dropped, and the lock with it.
    pub const APPLOCK_HELD: &str =
        "SELECT CAST(APPLOCK_MODE('public', @P1, 'Session') AS nvarchar(32)) AS Mode";

    /// The SQL Server version alone, without parameters: a connectivity check any client
    /// (`sqlcmd`, FreeTDS `tsql`) can send as a plain batch.
    pub const SERVER_VERSION: &str =
        "SELECT CAST(SERVERPROPERTY('ProductVersion') AS nvarchar(128)) AS ProductVersion";

    /// This server's own id and its downstream-server table, for discovery (read-only, no
    /// parameters). Two result sets:
    ///
    /// 1. `ServerId` uniqueidentifier (`tbConfigurationA`).
    /// 2. One row per registered downstream server: `AccountName` nvarchar (its DNS name),
    ///    `AccountServerID` uniqueidentifier, `LastSyncTime` nvarchar (ISO 8601, style 126),
    ///    `ParentServerID` uniqueidentifier (NULL for a direct child of this server), `IsReplica`
    ///    bit, `Version` nvarchar.
    ///
    /// Columns: an EF Core scaffold of a modern SUSDB (wsus-web-services.md H2:
    /// `tbDownstreamServerTarget` with `AccountName`, `AccountServerID`, `LastSyncTime`,
    /// `ParentServerTargetID` → `TargetID`, `Version`, `IsReplica`) and MS-WSUSSS's DSS table
    /// (ServerID, FQDN, ParentServerID, LastSyncTime, Version, IsReplica, which WSUS 3.0's
    /// protocol 1.3 rollups carry). Not verified on a 3.0 SUSDB: a missing column fails the read
    /// (error 207), never the repair.
    pub const DOWNSTREAM_SERVERS: &str = "\
SELECT a.ServerId FROM dbo.tbConfigurationA AS a; \
SELECT d.AccountName, d.AccountServerID, CONVERT(nvarchar(30), d.LastSyncTime, 126) AS LastSyncTime, \
p.AccountServerID AS ParentServerID, CAST(d.IsReplica AS bit) AS IsReplica, CAST(d.Version AS nvarchar(64)) AS Version \
FROM dbo.tbDownstreamServerTarget AS d LEFT JOIN dbo.tbDownstreamServerTarget AS p ON p.TargetID = d.ParentServerTargetID \
ORDER BY d.AccountName";

    /// Every statement the tool may send: the lab answers these and nothing else.
    pub const ALL: &[&str] = &[
        PROBE,
        SIGNATURES,
        SET_REPLICA_MODE,
        KEY_OBJECT,
        SERVER_VERSION,
        DOWNSTREAM_SERVERS,
    ];
}

/// What SQL Server 2005 (9.00, SSEE: WSUS 3.0's default database) cannot compile: every SQL text
/// the tool sends or writes is checked against it in tests.
///
/// Sources: DECLARE (2005) has no initializer (learn.microsoft.com ms188927(v=sql.90)); the
/// compound operators `+=` and friends, `MERGE`, the `date`, `time`, `datetime2` and
/// `datetimeoffset` types and `SYSDATETIME` came with 2008; `THROW`, `IIF`, `CHOOSE`, `CONCAT`,
/// `FORMAT`, `TRY_CONVERT`/`TRY_CAST`/`TRY_PARSE`, `OFFSET … FETCH`, `LAG`/`LEAD`, `EOMONTH`,
/// `DATEFROMPARTS` and sequences with 2012; `STRING_AGG` with 2017 ("What's new" pages of each
/// release).
pub mod sql2005 {
    /// Words (functions, statements, types) that SQL Server 2005 does not know.
    const NEWER_WORDS: &[&str] = &[
        "THROW",
        "IIF",
        "CHOOSE",
        "CONCAT",
        "CONCAT_WS",
        "FORMAT",
        "TRY_CONVERT",
        "TRY_CAST",
        "TRY_PARSE",
        "PARSE",
        "OFFSET",
        "FETCH",
        "STRING_AGG",
        "STRING_SPLIT",
        "LAG",
        "LEAD",
        "EOMONTH",
        "DATEFROMPARTS",
        "SYSDATETIME",
        "SYSDATETIMEOFFSET",
        "DATETIME2",
        "DATETIMEOFFSET",
        "DATE",
        "TIME",
        "MERGE",
        "SEQUENCE",
        "READONLY",
    ];

    /// The text without comments and with string literals emptied, so that only code is judged.
    fn code_only(text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '-' if chars.peek() == Some(&'-') => {
                    for c in chars.by_ref() {
                        if c == '\n' {
                            out.push('\n');
                            break;
                        }
                    }
                }
                '/' if chars.peek() == Some(&'*') => {
                    chars.next();
                    let mut last = ' ';
                    for c in chars.by_ref() {
                        if last == '*' && c == '/' {
                            break;
                        }
                        last = c;
                    }
                    out.push(' ');
                }
                '\'' => {
                    // '' inside a literal is a quote; the literal ends at a lone quote.
                    loop {
                        match chars.next() {
                            Some('\'') if chars.peek() == Some(&'\'') => {
                                chars.next();
                            }
                            Some('\'') | None => break,
                            Some(_) => {}
                        }
                    }
                    out.push_str("''");
                }
                _ => out.push(c),
            }
        }
        out
    }

    /// Every construct of `text` that SQL Server 2005 lacks, in words; empty when it compiles
    /// there as far as these checks can tell.
    pub fn violations(text: &str) -> Vec<String> {
        let code = code_only(text).to_ascii_uppercase();
        let mut found = Vec::new();
        for op in ["+=", "-=", "*=", "/=", "%=", "&=", "|=", "^="] {
            if code.contains(op) {
                found.push(format!("compound assignment `{op}` (SQL Server 2008)"));
            }
        }
        let is_word = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '@' | '#' | '$');
        let words: Vec<&str> = code.split(|c: char| !is_word(c)).collect();
        for word in NEWER_WORDS {
            if words.contains(word) {
                found.push(format!("`{word}` (after SQL Server 2005)"));
            }
        }
        // DECLARE with an initial value: a DECLARE statement running up to its end (`;`, a new
        // line, or the next keyword at line start) that holds `=` outside parentheses.
        for statement in code.split([';', '\n']) {
            let statement = statement.trim_start();
            let Some(rest) = statement.strip_prefix("DECLARE") else {
                continue;
            };
            if !rest.starts_with(|c: char| c.is_whitespace()) {
                continue;
            }
            let mut depth = 0i32;
            for c in rest.chars() {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    '=' if depth == 0 => {
                        found.push(format!(
                            "`DECLARE … =` with an initial value (SQL Server 2008): {}",
                            statement.trim()
                        ));
                        break;
                    }
                    _ => {}
                }
            }
        }
        found
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn newer_syntax_is_found_and_2005_syntax_is_not() {
            assert!(violations("DECLARE @x int = 1;")[0].contains("DECLARE"));
            assert!(violations("SET @n += 1")[0].contains("+="));
            assert!(!violations("SELECT IIF(1 = 1, 1, 0)").is_empty());
            assert!(!violations("THROW 50000, N'x', 1;").is_empty());
            assert!(!violations("DECLARE @d datetime2;").is_empty());
            assert!(
                !violations("SELECT 1 ORDER BY 1 OFFSET 0 ROWS FETCH NEXT 1 ROWS ONLY").is_empty()
            );
            // Literals and comments are not code; 2005 forms pass.
            assert!(violations("-- DECLARE @x int = 1\nPRINT N'IIF(a) += THROW date';").is_empty());
            assert!(
                violations("DECLARE @x int, @y nvarchar(10);\nSET @x = 1;\nSELECT @y = N'a';")
                    .is_empty()
            );
            assert!(violations("SELECT TOP (1) CAST(x AS bit) FROM t CROSS JOIN u").is_empty());
        }

        #[test]
        fn every_statement_the_tool_sends_compiles_on_sql_server_2005() {
            for text in crate::sql::ALL {
                assert_eq!(violations(text), Vec::<String>::new(), "{text}");
            }
        }
    }
}
