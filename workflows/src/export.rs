//! `export-sql`: the repair of one server as a reviewed T-SQL script, for WID and SSEE databases
//! that accept only local named-pipe connections (run with `sqlcmd` on the server itself).
//!
//! The script does what the workflow does, in the same order, with the same checks: it refuses
//! to run on another machine or on a server whose mode or upstream disagrees with the topology,
//! restores replica mode if a step fails, and ends with the verify check. The only values taken
//! from the topology are the server's name and upstream, written as escaped N'' literals.

use std::fmt::Write as _;

use susdb::{action, groups, procs};
use topology::{Mode, Server, Topology};

/// An N'...' literal: quotes doubled, so no text can end the literal.
fn literal(text: &str) -> String {
    format!("N'{}'", text.replace('\'', "''"))
}

/// Text for a `--` comment: no line break (which would end the comment and start a T-SQL line)
/// and no other control character gets through; each is written as `\u{..}`. Every value the
/// script takes from outside that is not an [`literal`] goes through here.
fn comment(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{85}') {
                format!("\\u{{{:x}}}", u32::from(c))
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// The machine name SQL Server reports is the host's short name.
fn machine_name(server: &Server) -> String {
    server
        .name
        .split('.')
        .next()
        .unwrap_or(&server.name)
        .to_ascii_uppercase()
}

/// The file name for the `index`-th server of the execution order: sorting the names gives the
/// order to run them in.
pub fn file_name(index: usize, server: &Server) -> String {
    let safe: String = server
        .name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{:04}-{safe}.sql", index + 1)
}

/// The script for `server`, to be saved as `file`.
pub fn script(topology: &Topology, server: &Server, file: &str) -> String {
    let replica = server.mode == Mode::Replica;
    let upstream = server.upstream.as_deref().unwrap_or("");
    let update = topology.update();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "-- wsus-reset export-sql: the KB 954960 repair of WSUS server {} ({}).\n\
         -- Topology {} ({}).\n\
         -- Run it on that server, against its SUSDB, for example (WID):\n\
         --   sqlcmd -S np:\\\\.\\pipe\\MICROSOFT##WID\\tsql\\query -b -i \"{file}\"\n\
         -- or (SSEE, WSUS 3.0 on Windows Server 2003/2008):\n\
         --   sqlcmd -S np:\\\\.\\pipe\\MSSQL$MICROSOFT##SSEE\\sql\\query -b -i \"{file}\"",
        comment(&server.name),
        server.mode,
        comment(topology.source()),
        topology.fingerprint(),
        file = comment(file),
    );
    match &server.upstream {
        Some(up) => {
            let _ = writeln!(
                s,
                "-- Run it only after the script of its upstream server {} succeeded: a replica copies its\n\
                 -- approvals from its upstream.",
                comment(up)
            );
        }
        None => {
            let _ = writeln!(s, "-- A top server: run it before any server below it.");
        }
    }
    let _ = writeln!(
        s,
        "-- Every step prints what it did; any error stops the script{}.\n",
        if replica {
            " after restoring replica mode"
        } else {
            ""
        }
    );
    // SQL Server 2005 syntax throughout (SSEE, WSUS 3.0's default database): DECLARE without an
    // initial value, then SET or SELECT (susdb-audit.md item 34).
    let _ = writeln!(
        s,
        "SET NOCOUNT ON;\nSET XACT_ABORT ON;\nUSE [SUSDB];\n\n\
         DECLARE @expectedMachine nvarchar(128), @expectedUpstream nvarchar(256), @expectedReplica bit;\n\
         DECLARE @updateID uniqueidentifier, @allComputers uniqueidentifier, @admin nvarchar(256);\n\
         SET @expectedMachine = {machine};\n\
         SET @expectedUpstream = {upstream};\n\
         SET @expectedReplica = {replica};\n\
         SET @updateID = '{update}';\n\
         SET @allComputers = '{all}';\n\
         SET @admin = N'wsus-reset export-sql (' + SUSER_SNAME() + N')';\n",
        machine = literal(&machine_name(server)),
        upstream = literal(upstream),
        replica = u8::from(replica),
        all = groups::ALL_COMPUTERS,
    );
    let _ = writeln!(
        s,
        "-- Guard: the right machine, the mode and upstream the topology declares (the probe's check).\n\
         IF UPPER(CAST(SERVERPROPERTY('MachineName') AS nvarchar(128))) <> @expectedMachine\n\
         BEGIN RAISERROR(N'wrong server: this script is for %s, this is %s', 16, 1, @expectedMachine, @@SERVERNAME); RETURN; END;\n\
         DECLARE @replica bit, @upstream nvarchar(256), @syncFromMU bit;\n\
         SELECT TOP (1) @replica = CAST(c.ReplicaMode AS bit) FROM dbo.tbConfigurationC AS c;\n\
         SELECT TOP (1) @upstream = ISNULL(a.UpstreamServerName, N''), @syncFromMU = CAST(a.SyncToMU AS bit)\n\
         \x20  FROM dbo.tbConfigurationA AS a;\n\
         IF @replica <> @expectedReplica\n\
         BEGIN RAISERROR(N'the server''s ReplicaMode differs from the topology: nothing changed', 16, 1); RETURN; END;\n\
         IF @expectedUpstream = N'' AND @syncFromMU = 0 AND @upstream <> N''\n\
         BEGIN RAISERROR(N'the topology says top server, the server syncs from %s: nothing changed', 16, 1, @upstream); RETURN; END;\n\
         -- WSUS keeps the upstream as typed in the console: compare the first DNS labels.\n\
         IF @expectedUpstream <> N'' AND UPPER(LEFT(@upstream, CHARINDEX(N'.', @upstream + N'.') - 1))\n\
         \x20  <> UPPER(LEFT(@expectedUpstream, CHARINDEX(N'.', @expectedUpstream + N'.') - 1))\n\
         BEGIN RAISERROR(N'the server syncs from %s, the topology says %s: nothing changed', 16, 1, @upstream, @expectedUpstream); RETURN; END;\n"
    );
    let _ = writeln!(
        s,
        "-- Probe: the latest revision (the highest flagged latest, as the tool approves); a server\n\
         -- without the update is left alone.\n\
         DECLARE @latest int;\n\
         SELECT @latest = MAX(r.RevisionNumber) FROM dbo.tbUpdate AS u\n\
         \x20  JOIN dbo.tbRevision AS r ON r.LocalUpdateID = u.LocalUpdateID\n\
         \x20  WHERE u.UpdateID = @updateID AND r.IsLatestRevision = 1;\n\
         IF @latest IS NULL BEGIN PRINT N'update not present: nothing to do'; RETURN; END;\n"
    );
    let switch = if replica {
        "    UPDATE dbo.tbConfigurationC SET ReplicaMode = 0;\n    PRINT N'switch-to-autonomous: ReplicaMode = 0';\n"
    } else {
        ""
    };
    let restore = "UPDATE dbo.tbConfigurationC SET ReplicaMode = 1;";
    let decline = format!(
        "    EXEC dbo.{} {} = @updateID, {} = @admin, {} = 1;\n    PRINT N'decline: done';\n",
        procs::DECLINE_UPDATE.trim_start_matches("dbo."),
        procs::UPDATE_ID,
        procs::ADMIN_NAME,
        procs::FAIL_IF_REPLICA
    );
    let _ = writeln!(
        s,
        "BEGIN TRY\n{switch}{decline}    EXEC dbo.{deploy} {uid} = @updateID, {rev} = @latest, {act} = {detect}, {grp} = @allComputers,\n\
         \x20       {adm} = @admin, {assigned} = 1, {prio} = 1, {fail} = 1, {isrep} = 0;\n\
         \x20   PRINT N'approve: detect only, All Computers, revision ' + CAST(@latest AS nvarchar(12));\n\
         {decline}END TRY\n\
         BEGIN CATCH\n\
         \x20   DECLARE @error nvarchar(2048);\n\
         \x20   SET @error = ERROR_MESSAGE();\n\
         \x20   -- Under XACT_ABORT a failed procedure can leave its transaction uncommittable, and no\n\
         \x20   -- write (the restore below) runs until it is rolled back (XACT_STATE, SQL Server 2005).\n\
         \x20   IF XACT_STATE() <> 0 ROLLBACK TRANSACTION;\n{undo}\
         \x20   RAISERROR(N'the repair failed: %s', 16, 1, @error);\n\
         \x20   RETURN;\n\
         END CATCH;\n",
        deploy = procs::DEPLOY_UPDATE.trim_start_matches("dbo."),
        uid = procs::UPDATE_ID,
        rev = procs::REVISION_NUMBER,
        act = procs::ACTION_ID,
        detect = action::DETECT_ONLY,
        grp = procs::TARGET_GROUP_ID,
        adm = procs::ADMIN_NAME,
        assigned = procs::IS_ASSIGNED,
        prio = procs::DOWNLOAD_PRIORITY,
        fail = procs::FAIL_IF_REPLICA,
        isrep = procs::IS_REPLICA,
        undo = if replica {
            format!(
                "    {restore}\n    PRINT N'restore-replica: ReplicaMode = 1 (after the failure)';\n"
            )
        } else {
            String::new()
        },
    );
    if replica {
        let _ = writeln!(s, "{restore}\nPRINT N'restore-replica: ReplicaMode = 1';\n");
    }
    let _ = writeln!(
        s,
        "-- Verify: declined, no computer-group approval left (TargetGroupTypeID 0: WSUS keeps the\n\
         -- Downstream Servers group's own), the declared mode.\n\
         IF EXISTS (SELECT 1 FROM dbo.tbUpdate AS u JOIN dbo.tbRevision AS r ON r.LocalUpdateID = u.LocalUpdateID\n\
         \x20          JOIN dbo.tbDeployment AS d ON d.RevisionID = r.RevisionID\n\
         \x20          WHERE u.UpdateID = @updateID AND d.TargetGroupTypeID = 0)\n\
         \x20  OR NOT EXISTS (SELECT 1 FROM dbo.vwMinimalUpdate AS m WHERE m.UpdateID = @updateID AND CAST(m.Declined AS bit) = 1)\n\
         \x20  OR (SELECT TOP (1) CAST(c.ReplicaMode AS bit) FROM dbo.tbConfigurationC AS c) <> @expectedReplica\n\
         BEGIN RAISERROR(N'verify failed: see the state with wsus-reset verify', 16, 1); RETURN; END;\n\
         PRINT N'verify: declined and consistent';"
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topology(yaml: &str) -> Topology {
        Topology::from_bytes("t.yaml", yaml.as_bytes()).unwrap_or_else(|e| panic!("{e:?}"))
    }

    const HIERARCHY: &str = "version: 1\nservers:\n  - name: wsus-hq.corp.example\n    sql: { host: a }\n  - name: wsus-branch_2\n    upstream: wsus-hq.corp.example\n    mode: replica\n    sql: { host: b }\n";

    #[test]
    fn a_replica_script_switches_repairs_restores_and_verifies_in_order() {
        let t = topology(HIERARCHY);
        let server = &t.servers()[1];
        let text = script(&t, server, &file_name(1, server));
        let order = [
            "SERVERPROPERTY('MachineName')",
            "SET ReplicaMode = 0",
            "EXEC dbo.spDeclineUpdate",
            "EXEC dbo.spDeployUpdate",
            "EXEC dbo.spDeclineUpdate",
            "END TRY",
            "SET ReplicaMode = 1",
            "verify: declined",
        ];
        let mut at = 0;
        for needle in order {
            let found = text[at..]
                .find(needle)
                .unwrap_or_else(|| panic!("`{needle}` missing after byte {at}:\n{text}"));
            at += found + needle.len();
        }
        // The catch block restores replica mode too.
        let catch = &text[text.find("BEGIN CATCH").unwrap_or(0)..];
        assert!(catch.contains("SET ReplicaMode = 1"), "{catch}");
        // The restore in the catch block runs after a doomed transaction is rolled back.
        let rollback = catch.find("IF XACT_STATE() <> 0 ROLLBACK TRANSACTION;");
        assert!(
            rollback.is_some_and(|at| at < catch.find("SET ReplicaMode = 1").unwrap_or(0)),
            "{catch}"
        );
        assert!(
            text.contains("SET @expectedMachine = N'WSUS-BRANCH_2';"),
            "{text}"
        );
        // Names are DNS names, but a quote could still never end a literal.
        assert_eq!(literal("o'brien"), "N'o''brien'");
        assert!(text.contains("SET @expectedUpstream = N'wsus-hq.corp.example';"));
    }

    #[test]
    fn a_line_break_in_the_topology_path_cannot_start_a_t_sql_line() {
        let hostile = "h.yaml\r\nDROP TABLE dbo.tbDeployment; --\u{2028}x";
        let t =
            Topology::from_bytes(hostile, HIERARCHY.as_bytes()).unwrap_or_else(|e| panic!("{e:?}"));
        let text = script(&t, &t.servers()[0], "0001-x.sql");
        for line in text.lines() {
            assert!(
                !line.trim_start().starts_with("DROP"),
                "a value began a line: {line}"
            );
        }
        assert!(text.contains("h.yaml\\u{d}\\u{a}DROP TABLE"), "{text}");
    }

    #[test]
    fn every_script_compiles_on_sql_server_2005_and_sends_no_deadline() {
        let t = topology(HIERARCHY);
        for (index, server) in t.servers().iter().enumerate() {
            let text = script(&t, server, &file_name(index, server));
            assert_eq!(
                susdb::sql2005::violations(&text),
                Vec::<String>::new(),
                "{text}"
            );
            assert!(!text.to_ascii_lowercase().contains("@deadline"), "{text}");
        }
    }

    #[test]
    fn an_autonomous_script_never_touches_replica_mode() {
        let t = topology(HIERARCHY);
        let text = script(&t, &t.servers()[0], "0001-wsus-hq.sql");
        assert!(!text.contains("SET ReplicaMode"), "{text}");
        assert!(
            text.contains("N'WSUS-HQ'"),
            "the machine name is the host's short name"
        );
        assert!(text.contains("A top server"));
        assert!(text.contains("-i \"0001-wsus-hq.sql\""), "{text}");
    }
}
