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
    /// @isAssigned, @downloadPriority, @failIfReplica, @isReplica, @deadline` [V] H (names);
    /// defaults [I].
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
    pub const DEADLINE: &str = "@deadline";

    pub const RESOURCE: &str = "@Resource";
    pub const LOCK_MODE: &str = "@LockMode";
    pub const LOCK_OWNER: &str = "@LockOwner";
    pub const LOCK_TIMEOUT: &str = "@LockTimeout";
    /// The applock resource: one per hierarchy, named after the tool.
    pub const APPLOCK_RESOURCE: &str = "wsus-reset/kb954960";
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
    ///    uniqueidentifier, `ActionID` int (`tbDeployment`, susdb.md 2 and 5).
    ///
    /// The consistency verdict (susdb.md 5: several latest revisions, an approval on a revision
    /// that is not the latest, two live approvals for one target group) is computed from sets 2
    /// and 4 by the client, so the probe stays one read.
    pub const PROBE: &str = "\
SELECT CAST(SERVERPROPERTY('ProductVersion') AS nvarchar(128)) AS ProductVersion, \
(SELECT TOP (1) s.SchemaVersion FROM dbo.tbSchemaVersion AS s ORDER BY s.ID DESC) AS SchemaVersion, \
c.ReplicaMode, a.UpstreamServerName, a.ServerPortNumber, a.SyncToMU \
FROM dbo.tbConfigurationA AS a CROSS JOIN dbo.tbConfigurationC AS c; \
SELECT r.RevisionID, r.RevisionNumber, r.IsLatestRevision FROM dbo.tbUpdate AS u \
JOIN dbo.tbRevision AS r ON r.LocalUpdateID = u.LocalUpdateID WHERE u.UpdateID = @P1 ORDER BY r.RevisionNumber; \
SELECT TOP (1) m.Declined FROM dbo.vwMinimalUpdate AS m WHERE m.UpdateID = @P1 ORDER BY m.IsLatestRevision DESC; \
SELECT d.DeploymentID, r.RevisionNumber, d.TargetGroupID, d.ActionID FROM dbo.tbUpdate AS u \
JOIN dbo.tbRevision AS r ON r.LocalUpdateID = u.LocalUpdateID \
JOIN dbo.tbDeployment AS d ON d.RevisionID = r.RevisionID WHERE u.UpdateID = @P1 ORDER BY d.DeploymentID";

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

    /// The SQL Server version alone, without parameters: a connectivity check any client
    /// (`sqlcmd`, FreeTDS `tsql`) can send as a plain batch.
    pub const SERVER_VERSION: &str =
        "SELECT CAST(SERVERPROPERTY('ProductVersion') AS nvarchar(128)) AS ProductVersion";

    /// Every statement the tool may send: the lab answers these and nothing else.
    pub const ALL: &[&str] = &[PROBE, SET_REPLICA_MODE, KEY_OBJECT, SERVER_VERSION];
}
