//! Every operation the lab's web service answers, run on one server's model: the repair's
//! (identity, role, configuration and the replica switch, revisions, approvals, decline,
//! approve) and discovery's downstream-server table. Its sources are the module doc of
//! [`crate::api`]; it may not touch HTTP or authentication.

use crate::api::soap::{Answer, Cell, Params};
use crate::model::{Call, ServerDb, SqlError, server_id};
use crate::{Lab, lock};

/// Who calls, on which server, and what that server is (its release, its faults).
pub(crate) struct Caller<'a> {
    pub(crate) server: &'a str,
    /// What `GetCurrentUserRole` answers this caller (`--api-roles`).
    pub(crate) role: i32,
    /// What `GetServerVersion` answers ([`crate::wsus::WsusVersion::build`]).
    pub(crate) version: &'static str,
    /// The update has a licence agreement there that was never accepted (a fault).
    pub(crate) licence: bool,
    /// The update is expired there (a fault).
    pub(crate) expired: bool,
}

/// The update's licence agreement, where a fault gives it one: a made-up id.
pub(crate) const EULA_ID: &str = "5e5e0954-0960-4a11-b000-00000000e01a";

/// The operations that change a server: refused to a reporter with 403. A Reporter "is
/// authorized to view reports" only (UpdateServerUserRole, learn.microsoft.com aa354557), and
/// W3 reads a 403 as "no permission to administer this WSUS server". Whether a real server
/// answers a Reporter's change with HTTP 403 or with a SOAP fault is not public; either way it
/// refuses before anything changes, which is what the lab keeps.
pub(crate) const CHANGES: &[&str] = &[
    "ExecuteSPSetConfiguration",
    "ExecuteSPDeclineUpdate",
    "ExecuteSPDeployUpdate1",
    "ExecuteSPAcceptEula",
    "ExecuteSPDeleteComputer",
];

/// Whether `text` is an `xs:dateTime` as .NET's XmlSerializer reads it: at most seven fraction
/// digits (a tick is 100 ns), an optional zone. Anything else is a FormatException there.
fn is_datetime(text: &str) -> bool {
    let ticks = text
        .split_once('.')
        .is_none_or(|(_, rest)| rest.chars().take_while(char::is_ascii_digit).count() <= 7);
    ticks
        && (chrono::DateTime::parse_from_rfc3339(text).is_ok()
            || chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f").is_ok())
}

/// The configuration row's elements the lab serves, in the order of the real server's WSDL
/// (`ConfigurationTableRow`, W1); a row written back must hold each it was served.
/// `UpstreamServerName` is `minOccurs="0"`: absent for a server that syncs from Microsoft Update,
/// as .NET's serializer omits a null string.
pub(crate) const ROW: &[&str] = &[
    "configurationChangeNumber",
    "LastConfigChange",
    "ServerId",
    "SyncToMU",
    "UpstreamServerName",
    "ServerPortNumber",
    "UpstreamServerUseSsl",
    "AutoRefreshDeployments",
    "DoDetailedRollup",
    "ReplicaMode",
];

/// An operation's failure: (client's mistake, .NET exception type, message).
pub(crate) type Refusal = (bool, &'static str, String);

pub(crate) fn refusal_of(e: &SqlError) -> Refusal {
    let exception = if e.message.contains("replica") {
        "System.InvalidOperationException"
    } else {
        "System.Data.SqlClient.SqlException"
    };
    (false, exception, e.message.clone())
}

pub(crate) fn required<'p>(params: &'p Params, name: &str) -> Result<&'p str, Refusal> {
    params.values.get(name).map(String::as_str).ok_or_else(|| {
        (
            true,
            "System.ArgumentNullException",
            format!("Value cannot be null.\nParameter name: {name}"),
        )
    })
}

pub(crate) fn boolean(params: &Params, name: &str) -> Result<bool, Refusal> {
    match required(params, name)? {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        other => Err((
            true,
            "System.FormatException",
            format!("`{other}` is not a valid value for Boolean ({name})."),
        )),
    }
}

/// Runs one operation on `db`; `Some` call to record when it is a change.
pub(crate) fn operate(
    caller: &Caller,
    db: &mut ServerDb,
    operation: &str,
    params: &Params,
) -> Result<(Answer, Option<Call>), Refusal> {
    let server = caller.server;
    let call = |ok: bool, entries: &[(&str, serde_json::Value)]| {
        let mut map: serde_json::Map<String, serde_json::Value> = entries
            .iter()
            .map(|(k, v)| ((*k).to_string(), v.clone()))
            .collect();
        map.insert("ok".into(), ok.into());
        Call {
            procedure: operation.to_string(),
            params: map,
        }
    };
    match operation {
        "GetServerVersion" => Ok((Answer::Scalar(caller.version.into()), None)),
        "GetCurrentUserRole" => Ok((Answer::Scalar(caller.role.to_string()), None)),
        // WSUS 3.0's own database engine (SSEE): what tells, remotely, that SQL cannot reach it.
        "GetDatabaseConfiguration" => Ok((
            Answer::Fields(vec![
                (
                    "serverName",
                    format!("{}\\MICROSOFT##SSEE", server.to_ascii_uppercase()),
                ),
                ("databaseName", "SUSDB".into()),
                ("wmsdeInstanceName", "MICROSOFT##SSEE".into()),
            ]),
            None,
        )),
        "ExecuteSPGetRevisions" => {
            let update = required(params, "updateId")?;
            Ok((
                Answer::Complete(revision_rows(caller, db, update, None)),
                None,
            ))
        }
        // The highest revision number of the update, 0 for one the server does not have [I: the
        // real procedure's answer for an unknown update is not public].
        "ExecuteSPGetLatestRevisionNumberForUpdate" => {
            let update = required(params, "updateId")?;
            let latest = revision_numbers(db, update).into_iter().max().unwrap_or(0);
            Ok((Answer::Scalar(latest.to_string()), None))
        }
        // The revision before `revisionNumber`, 0 when there is none [I, as above].
        "ExecuteSPGetPreviousRevision" => {
            let update = required(params, "updateId")?;
            let number: i32 = required(params, "revisionNumber")?.parse().map_err(|_| {
                (
                    true,
                    "System.FormatException",
                    "Input string was not in a correct format.".to_string(),
                )
            })?;
            let previous = revision_numbers(db, update)
                .into_iter()
                .filter(|n| *n < number)
                .max()
                .unwrap_or(0);
            Ok((Answer::Scalar(previous.to_string()), None))
        }
        // Rows of key and description: the row layout is not public (the WSDL gives only
        // `ArrayOfGenericReadableRow`); made up after `ProgramKey`'s two elements.
        "ExecuteSPGetProgramKeys" => Ok((
            Answer::Rows(
                db.program_keys
                    .iter()
                    .map(|(key, description)| {
                        vec![Cell::Guid(key.clone()), Cell::Text(description.clone())]
                    })
                    .collect(),
            ),
            None,
        )),
        // IUpdate.AcceptLicenseAgreement (ms747124): WsusObjectNotFoundException when the update
        // has no licence agreement or it is not in the database; W4 calls this operation for it.
        "ExecuteSPAcceptEula" => {
            let eula = required(params, "eulaId")?.to_ascii_lowercase();
            let admin = params.values.get("adminName").cloned().unwrap_or_default();
            if !caller.licence || eula != EULA_ID {
                return Err((
                    false,
                    "Microsoft.UpdateServices.Administration.WsusObjectNotFoundException",
                    format!("The license agreement {eula} could not be found in the database."),
                ));
            }
            db.eula_accepted_by = Some(admin.clone());
            Ok((
                Answer::Empty,
                Some(call(
                    true,
                    &[("eulaId", eula.into()), ("adminName", admin.into())],
                )),
            ))
        }
        "ExecuteSPGetUpdateById" => {
            let id = params.nested.get("id").cloned().unwrap_or_default();
            let update = id.get("UpdateId").cloned().unwrap_or_default();
            let revision = id.get("RevisionNumber").and_then(|r| r.parse().ok());
            Ok((
                Answer::Complete(revision_rows(
                    caller,
                    db,
                    &update,
                    Some(revision.unwrap_or(-1)),
                )),
                None,
            ))
        }
        // The computers the client web service knows by this DNS name, as one result set. The
        // row layout is not public (the WSDL gives `ArrayOfArrayOfGenericReadableRow`): made up,
        // ComputerID first, then the name and the last sync; a client must find its ID in a row
        // rather than trust a column.
        "ExecuteSPGetComputerTargetByName" => {
            let name = required(params, "name")?;
            let rows = db
                .computers
                .iter()
                .filter(|c| c.dns_name.eq_ignore_ascii_case(name))
                .map(|c| {
                    vec![
                        Cell::Text(c.id.clone()),
                        Cell::Text(c.dns_name.clone()),
                        c.last_sync.clone().map_or(Cell::Null, Cell::DateTime),
                    ]
                })
                .collect();
            Ok((Answer::RowSets(vec![rows]), None))
        }
        // IComputerTarget.Delete (ms745937) "removes the client computer from the list of clients
        // known to WSUS". For an ID it does not know, harsher than known: refused, so a client
        // that deletes twice (a lost answer) must read back rather than trust the second answer.
        "ExecuteSPDeleteComputer" => {
            let id = required(params, "id")?.to_string();
            let before = db.computers.len();
            db.computers.retain(|c| !c.id.eq_ignore_ascii_case(&id));
            if db.computers.len() == before {
                return Err((
                    false,
                    "Microsoft.UpdateServices.Administration.WsusObjectNotFoundException",
                    format!("The computer {id} could not be found in the database."),
                ));
            }
            Ok((Answer::Empty, Some(call(true, &[("id", id.into())]))))
        }
        "ExecuteSPGetConfiguration" => Ok((Answer::Configuration(row_of(server, db)), None)),
        "ExecuteSPSetConfiguration" => {
            let row = params.nested.get("row").ok_or_else(|| {
                (
                    true,
                    "System.ArgumentNullException",
                    "Value cannot be null.\nParameter name: row".to_string(),
                )
            })?;
            // Harsher than known: the whole row read must come back, and it must be the row as
            // it is now. `configurationChangeNumber` reads as a change counter [I]: a row read
            // before another write is refused, as optimistic concurrency would.
            let served = row_of(server, db);
            if let Some((missing, _)) = served.iter().find(|(e, _)| !row.contains_key(*e)) {
                return Err((
                    true,
                    "System.ArgumentException",
                    format!("The configuration row lacks {missing}: write back every element read"),
                ));
            }
            let current = db.config_change_number.to_string();
            if row.get("configurationChangeNumber") != Some(&current) {
                return Err((
                    false,
                    "System.InvalidOperationException",
                    format!(
                        "The configuration was changed since it was read (configurationChangeNumber {current}): read it again"
                    ),
                ));
            }
            let replica = match row.get("ReplicaMode").map(String::as_str) {
                Some("true" | "1") => true,
                Some("false" | "0") => false,
                other => {
                    return Err((
                        true,
                        "System.FormatException",
                        format!(
                            "`{}` is not a valid value for Boolean (ReplicaMode).",
                            other.unwrap_or_default()
                        ),
                    ));
                }
            };
            db.set_replica_mode(replica);
            // An array sent is the new list, an absent one leaves the list as it is: the harsher
            // reading of `programKeys` (its semantics are not public), under which a client that
            // sends an empty list wipes the server's product keys.
            if params.values.contains_key("programKeys") {
                db.program_keys = params
                    .lists
                    .get("programKeys")
                    .into_iter()
                    .flatten()
                    .map(|k| {
                        (
                            k.get("Key")
                                .cloned()
                                .unwrap_or_default()
                                .to_ascii_lowercase(),
                            k.get("Description").cloned().unwrap_or_default(),
                        )
                    })
                    .collect();
            }
            db.config_change_number += 1;
            Ok((
                Answer::Empty,
                Some(call(true, &[("ReplicaMode", replica.into())])),
            ))
        }
        "ExecuteSPDeclineUpdate" => {
            let update = required(params, "updateId")?.to_ascii_uppercase();
            let admin = params.values.get("adminName").cloned().unwrap_or_default();
            let fail_if_replica = boolean(params, "failIfReplica")?;
            let result = db.decline(&update, &admin, fail_if_replica);
            let record = call(
                result.is_ok(),
                &[
                    ("updateId", update.clone().into()),
                    ("adminName", admin.into()),
                    ("failIfReplica", fail_if_replica.into()),
                ],
            );
            match result {
                Ok(()) => Ok((Answer::Empty, Some(record))),
                Err(e) => {
                    db.calls.push(record);
                    Err(refusal_of(&e))
                }
            }
        }
        "ExecuteSPDeployUpdate1" => {
            let id = params.nested.get("updateId").ok_or_else(|| {
                (
                    true,
                    "System.ArgumentNullException",
                    "Value cannot be null.\nParameter name: updateId".to_string(),
                )
            })?;
            let update = id
                .get("UpdateId")
                .cloned()
                .unwrap_or_default()
                .to_ascii_uppercase();
            let revision: i32 = id
                .get("RevisionNumber")
                .and_then(|r| r.parse().ok())
                .unwrap_or(-1);
            let action: i32 = required(params, "deploymentAction")?.parse().unwrap_or(-1);
            let group = required(params, "targetGroupId")?.to_ascii_uppercase();
            let deadline = required(params, "deadline")?.to_string();
            if !is_datetime(&deadline) {
                return Err((
                    true,
                    "System.FormatException",
                    format!("The string '{deadline}' is not a valid AllXsd value."),
                ));
            }
            let admin = params.values.get("adminName").cloned().unwrap_or_default();
            let assigned = boolean(params, "isAssigned")?;
            // IUpdate.RequiresLicenseAgreementAcceptance: "you must accept the license agreement
            // before deploying the update" (ms751998); an expired update cannot be approved. The
            // exception's words are made up; the lab refuses every action, the harsher case.
            if caller.licence && db.eula_accepted_by.is_none() {
                return Err((
                    false,
                    "System.InvalidOperationException",
                    "The license agreement for this update has not been accepted.".into(),
                ));
            }
            if caller.expired {
                return Err((
                    false,
                    "System.InvalidOperationException",
                    "The update has expired and cannot be approved.".into(),
                ));
            }
            // The API refuses approval changes on a replica (IUpdate.Approve); the operation has
            // no failIfReplica of its own: refused, the harsher case.
            let result = db.deploy(&update, revision, action, &group, &admin, true);
            let record = call(
                result.is_ok(),
                &[
                    ("updateId", update.clone().into()),
                    ("revisionNumber", revision.into()),
                    ("deploymentAction", action.into()),
                    ("targetGroupId", group.clone().into()),
                    ("deadline", deadline.into()),
                    ("adminName", admin.clone().into()),
                    ("isAssigned", assigned.into()),
                ],
            );
            match result {
                Ok(()) => {
                    let row = db
                        .deployments
                        .last()
                        .map(|d| deployment_row(db, d))
                        .unwrap_or_default();
                    Ok((Answer::Row(row), Some(record)))
                }
                Err(e) => {
                    db.calls.push(record);
                    Err(refusal_of(&e))
                }
            }
        }
        "ExecuteSPGetDeploymentsByUpdate1" => {
            let id = params.nested.get("id").cloned().unwrap_or_default();
            let update = id.get("UpdateId").cloned().unwrap_or_default();
            let revision: i32 = id
                .get("RevisionNumber")
                .and_then(|r| r.parse().ok())
                .unwrap_or(-1);
            let present =
                db.update_present && update.eq_ignore_ascii_case(susdb::KB954960_UPDATE_ID);
            let revision_id = db
                .revisions
                .iter()
                .find(|r| r.revision_number == revision)
                .map(|r| r.revision_id);
            let rows = match (present, revision_id) {
                (true, Some(rid)) => db
                    .deployments
                    .iter()
                    .filter(|d| d.revision_id == rid)
                    .map(|d| deployment_row(db, d))
                    .collect(),
                _ => Vec::new(),
            };
            Ok((Answer::Rows(rows), None))
        }
        other => Err((
            true,
            "System.InvalidOperationException",
            format!("the lab does not serve the operation {other}"),
        )),
    }
}

pub(crate) const EMPTY_GUID: &str = "00000000-0000-0000-0000-000000000000";

/// `ExecuteSPGetAllDownstreamServers(parentServerId, includeNestedChildren)`: the server's
/// downstream-server table as rows of name, id, last sync, parent id, last rollup, version,
/// replica (W3 `name: r[0], id: r[1], lastSync: r[2], parentId: r[3], lastRollup: r[4], version:
/// r[5], replica: r[6]`; W2 agrees). The empty GUID asks from the server itself; a direct child's
/// parent is the empty GUID (MS-WSUSSS 3.2.4.5: the sender's own entry has ParentServerId
/// 00000000-…, and the table's owner is not in its own table).
pub(crate) fn downstream_rows(
    lab: &Lab,
    server: &str,
    params: &Params,
) -> Result<Vec<Vec<Cell>>, Refusal> {
    let from = required(params, "parentServerId")?.to_ascii_lowercase();
    let nested = boolean(params, "includeNestedChildren")?;
    let table = {
        let inner = lock(&lab.shared.inner);
        lab.shared.hierarchy.registered(&inner.servers, server)
    };
    let parent_of = |r: &crate::Registered| r.parent.clone().unwrap_or_else(|| EMPTY_GUID.into());
    let mut wanted: Vec<String> = vec![from];
    let mut rows = Vec::new();
    let mut level: Vec<&crate::Registered> = table
        .iter()
        .filter(|r| wanted.contains(&parent_of(r)))
        .collect();
    while !level.is_empty() {
        rows.extend(level.iter().map(|r| {
            vec![
                Cell::Text(r.name.clone()),
                Cell::Guid(r.id.clone()),
                Cell::DateTime(r.last_sync.clone()),
                Cell::Guid(parent_of(r)),
                Cell::DateTime(r.last_sync.clone()),
                Cell::Text(r.version.clone()),
                Cell::Bool(r.replica),
            ]
        }));
        if !nested {
            break;
        }
        wanted = level.iter().map(|r| r.id.clone()).collect();
        level = table
            .iter()
            .filter(|r| wanted.contains(&parent_of(r)))
            .collect();
    }
    Ok(rows)
}

/// The configuration row as the lab serves it (see [`ROW`]).
pub(crate) fn row_of(server: &str, db: &ServerDb) -> Vec<(&'static str, String)> {
    let mut row = vec![
        (
            "configurationChangeNumber",
            db.config_change_number.to_string(),
        ),
        ("LastConfigChange", "2009-03-27T10:55:29".into()),
        ("ServerId", server_id(server)),
        ("SyncToMU", db.upstream_server_name.is_none().to_string()),
    ];
    if let Some(upstream) = &db.upstream_server_name {
        row.push(("UpstreamServerName", upstream.clone()));
    }
    row.extend([
        ("ServerPortNumber", db.upstream_port.to_string()),
        ("UpstreamServerUseSsl", "false".into()),
        ("AutoRefreshDeployments", "true".into()),
        ("DoDetailedRollup", "false".into()),
        ("ReplicaMode", db.replica_mode.to_string()),
    ]);
    debug_assert!(row.iter().all(|(name, _)| ROW.contains(name)));
    row
}

/// The revision numbers of `update` on this server.
fn revision_numbers(db: &ServerDb, update: &str) -> Vec<i32> {
    if !db.update_present || !update.eq_ignore_ascii_case(susdb::KB954960_UPDATE_ID) {
        return Vec::new();
    }
    db.revisions.iter().map(|r| r.revision_number).collect()
}

/// The update's revisions as `minimalProperties` rows (W4 and W3 agree on the indexes used: 0
/// UpdateId, 1 RevisionNumber, 18 IsApproved, 22 IsDeclined, 23 HasStaleUpdateApprovals, 24
/// IsLatestRevision, 29 the title; W4 alone: 16 PublicationState, 20 the licence's id, 21
/// RequiresLicenseAgreementAcceptance, 32 HasEarlierRevision; the others, not modelled, are
/// null), of one revision when `only` names it.
pub(crate) fn revision_rows(
    caller: &Caller,
    db: &ServerDb,
    update: &str,
    only: Option<i32>,
) -> Vec<Vec<Cell>> {
    if !db.update_present || !update.eq_ignore_ascii_case(susdb::KB954960_UPDATE_ID) {
        return Vec::new();
    }
    let computer = |d: &&crate::model::Deployment| {
        d.target_group_type_id == susdb::target_group_type::COMPUTER
    };
    let latest: Vec<i32> = db
        .revisions
        .iter()
        .filter(|r| r.is_latest)
        .map(|r| r.revision_id)
        .collect();
    let stale = db
        .deployments
        .iter()
        .filter(computer)
        .any(|d| !latest.contains(&d.revision_id) && d.action_id <= susdb::action::UNINSTALL);
    db.revisions
        .iter()
        .filter(|r| only.is_none_or(|n| n == r.revision_number))
        .map(|r| {
            let approved = db
                .deployments
                .iter()
                .filter(computer)
                .any(|d| d.revision_id == r.revision_id);
            let mut row = vec![Cell::Null; 37];
            row[0] = Cell::Guid(susdb::KB954960_UPDATE_ID.into());
            row[1] = Cell::Int(i64::from(r.revision_number));
            // PublicationState: 1 is expired (susdb.md 1, tbProperty).
            row[16] = Cell::Int(i64::from(caller.expired));
            row[20] = Cell::Guid(if caller.licence {
                EULA_ID.into()
            } else {
                EMPTY_GUID.into()
            });
            row[21] = Cell::Bool(caller.licence && db.eula_accepted_by.is_none());
            row[32] = Cell::Bool(
                db.revisions
                    .iter()
                    .any(|o| o.revision_number < r.revision_number),
            );
            row[18] = Cell::Bool(approved);
            row[22] = Cell::Bool(db.update_declined);
            row[23] = Cell::Bool(stale);
            row[24] = Cell::Bool(r.is_latest);
            row[29] = Cell::Text(susdb::KB954960_UPDATE_TITLE.into());
            row
        })
        .collect()
}

/// A deployment as the API's rows give it (W4 `UmUpdateApproval`, W3 agree): 0 creation time,
/// 1 state, 2 action, 3 go-live time, 4 deadline, 5 admin name, 6 deployment GUID, 7 is
/// assigned, 8 UpdateId, 9 RevisionNumber, 10 TargetGroupId.
pub(crate) fn deployment_row(db: &ServerDb, d: &crate::model::Deployment) -> Vec<Cell> {
    let revision = db
        .revisions
        .iter()
        .find(|r| r.revision_id == d.revision_id)
        .map_or(0, |r| r.revision_number);
    vec![
        Cell::DateTime("2009-03-27T10:55:29".into()),
        Cell::Int(0),
        Cell::Int(i64::from(d.action_id)),
        Cell::DateTime("2009-03-27T10:55:29".into()),
        Cell::Null,
        Cell::Text(d.admin_name.clone()),
        Cell::Guid(format!("00000000-0000-0000-0000-{:012x}", d.deployment_id)),
        Cell::Bool(d.is_assigned),
        Cell::Guid(susdb::KB954960_UPDATE_ID.into()),
        Cell::Int(i64::from(revision)),
        Cell::Guid(d.target_group_id.clone()),
    ]
}

#[cfg(test)]
mod tests {
    use super::is_datetime;

    #[test]
    fn a_deadline_is_read_as_xml_serializer_reads_a_datetime() {
        assert!(is_datetime("9999-12-31T23:59:59.9999999"));
        assert!(is_datetime("9999-12-31T23:59:59.997"));
        assert!(is_datetime("2009-03-27T10:55:29Z"));
        assert!(is_datetime("2009-03-27T10:55:29.5+02:00"));
        assert!(
            !is_datetime("9999-12-31T23:59:59.99999999"),
            "eight fraction digits"
        );
        assert!(!is_datetime("31/12/9999"));
        assert!(!is_datetime(""));
    }
}
