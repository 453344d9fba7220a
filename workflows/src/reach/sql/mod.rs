//! The SUSDB adapter: a WSUS server reached through its database over TDS (tiberius), every
//! SQL call `wsus-reset` makes. The texts, procedure names and parameter names come from the
//! `susdb` contract crate (each with its source in susdb.md); here they are sent always with
//! bound parameters: no SQL text is ever assembled from input. Opening the connection is
//! [`connect`]; the hierarchy lock, which only SQL Server offers, is [`applock`].

pub mod applock;
pub mod connect;
mod tds_tls;

pub use connect::{Connection, Transport, connect, connect_tls};

use susdb::{action, groups, procs, schema, sql};
use tiberius::{Command, Row, Uuid};

use crate::reach::port::{
    Approval, Downstream, Observed, Registered, Revision, ServerError, UpdateState, WsusServer,
};

/// SQL Server errors worth another try: deadlock victim (1205), timeout (-2), lock request timeout
/// (1222), database in transition or failover (40613, 4060 is not: a wrong database name), and
/// the transport errors of a dropped connection (233, 10053, 10054).
const TRANSIENT_CODES: &[i64] = &[1205, -2, 1222, 40613, 233, 10053, 10054];

impl From<tiberius::error::Error> for ServerError {
    fn from(e: tiberius::error::Error) -> Self {
        use tiberius::error::Error as E;
        match &e {
            E::Server(token) => {
                let code = token.code();
                ServerError {
                    // The wire carries the number as u32; -2 arrives as its two's complement.
                    transient: TRANSIENT_CODES.contains(&i64::from(code as i32)),
                    code: Some(code),
                    message: format!(
                        "SQL error {} (severity {}): {}",
                        code as i32,
                        token.class(),
                        token.message()
                    ),
                }
            }
            E::Protocol(text) if text.contains("requested encryption level") => {
                ServerError::permanent(
                    "the server does not offer the encryption the topology asks for (`encrypt`): give \
                 SQL Server a certificate, or lower `encrypt` to `off` (only the login encrypted)",
                )
            }
            E::Tls(text) if text.contains("certificate was rejected") => {
                // tiberius's advice names its own API; say it in topology terms.
                let reason = text
                    .split_once("handshake: ")
                    .map_or(text.as_ref(), |(_, rest)| rest);
                let reason = reason
                    .split_once(". ")
                    .map_or(reason, |(first, _)| first)
                    .trim_end_matches('.');
                ServerError::permanent(format!(
                    "TLS: the server's certificate was rejected ({reason}): name the authority \
                     that issued it in `ca_file`, or reach the server by a name its certificate \
                     holds; `trust_cert: true` skips validation (only on a network you trust)"
                ))
            }
            E::Io { .. } | E::Protocol(_) => {
                ServerError::transient(format!("connection lost: {e}"))
            }
            _ => ServerError {
                transient: false,
                code: None,
                message: e.to_string(),
            },
        }
    }
}

fn uuid(text: &str) -> Result<Uuid, ServerError> {
    Uuid::parse_str(text).map_err(|e| ServerError::permanent(format!("bad GUID {text}: {e}")))
}

fn missing(column: &str) -> ServerError {
    ServerError::permanent(format!(
        "the probe's answer has no usable `{column}` column: is this a WSUS 3.0 SUSDB?"
    ))
}

fn get<'a, T: tiberius::FromSql<'a>>(row: &'a Row, column: &str) -> Result<Option<T>, ServerError> {
    row.try_get::<T, _>(column).map_err(|_| missing(column))
}

/// The read-only probe: one round trip, four result sets (`susdb::sql::PROBE`).
pub async fn probe(c: &mut Connection, update: &str) -> Result<Observed, ServerError> {
    let sets = c
        .query(sql::PROBE, &[&uuid(update)?])
        .await?
        .into_results()
        .await?;
    let [config, revisions, declined, approvals] = sets.as_slice() else {
        return Err(ServerError::permanent(format!(
            "the probe returned {} result sets, expected 4: is this a WSUS 3.0 SUSDB?",
            sets.len()
        )));
    };
    let config = config.first().ok_or_else(|| {
        ServerError::permanent("tbConfigurationA/C are empty: is this a WSUS 3.0 SUSDB?")
    })?;
    let revisions = revisions
        .iter()
        .map(|row| {
            Ok(Revision {
                number: get::<i32>(row, "RevisionNumber")?
                    .ok_or_else(|| missing("RevisionNumber"))?,
                latest: get::<bool>(row, "IsLatestRevision")?.unwrap_or(false),
            })
        })
        .collect::<Result<Vec<_>, ServerError>>()?;
    let update = if revisions.is_empty() {
        None
    } else {
        let declined = match declined.first() {
            Some(row) => get::<bool>(row, "Declined")?.unwrap_or(false),
            None => false,
        };
        let approvals = approvals
            .iter()
            .map(|row| {
                Ok(Approval {
                    deployment_id: get::<i32>(row, "DeploymentID")?
                        .ok_or_else(|| missing("DeploymentID"))?,
                    revision: get::<i32>(row, "RevisionNumber")?
                        .ok_or_else(|| missing("RevisionNumber"))?,
                    target_group: get::<Uuid>(row, "TargetGroupID")?
                        .ok_or_else(|| missing("TargetGroupID"))?
                        .to_string()
                        .to_ascii_uppercase(),
                    target_group_type: get::<i32>(row, "TargetGroupTypeID")?
                        .ok_or_else(|| missing("TargetGroupTypeID"))?,
                    action: get::<i32>(row, "ActionID")?.ok_or_else(|| missing("ActionID"))?,
                })
            })
            .collect::<Result<Vec<_>, ServerError>>()?;
        Some(UpdateState {
            revisions,
            declined,
            approvals,
            licence: None,
            expired: false,
        })
    };
    Ok(Observed {
        tls: None,
        sql_version: get::<&str>(config, "ProductVersion")?
            .unwrap_or_default()
            .to_string(),
        schema_version: get::<i32>(config, "SchemaVersion")?,
        wsus_version: None,
        role: None,
        replica: get::<bool>(config, "ReplicaMode")?.ok_or_else(|| missing("ReplicaMode"))?,
        upstream_server: get::<&str>(config, "UpstreamServerName")?
            .map(str::to_string)
            .filter(|s| !s.is_empty()),
        upstream_port: get::<i32>(config, "ServerPortNumber")?,
        sync_from_microsoft_update: get::<bool>(config, "SyncToMU")?.unwrap_or(false),
        update,
    })
}

/// Sets `tbConfigurationC.ReplicaMode` and returns what the database then holds
/// (`susdb::sql::SET_REPLICA_MODE`: the update and the read back in one round trip).
pub async fn set_replica_mode(c: &mut Connection, replica: bool) -> Result<bool, ServerError> {
    let sets = c
        .query(sql::SET_REPLICA_MODE, &[&replica])
        .await?
        .into_results()
        .await?;
    sets.last()
        .and_then(|set| set.first())
        .and_then(|row| row.try_get::<bool, _>(0).ok().flatten())
        .ok_or_else(|| ServerError::permanent("ReplicaMode could not be read back"))
}

/// Runs a procedure call; its return status must be 0.
async fn exec_checked(
    c: &mut Connection,
    cmd: Command<'_>,
    procedure: &str,
) -> Result<(), ServerError> {
    let code = cmd
        .exec(c)
        .await?
        .into_command_result()
        .await?
        .return_code();
    check_return(procedure, code)
}

fn check_return(procedure: &str, code: u32) -> Result<(), ServerError> {
    if code == 0 {
        Ok(())
    } else {
        Err(ServerError {
            transient: false,
            code: None,
            message: format!("{procedure} returned {}", code as i32),
        })
    }
}

/// `spDeclineUpdate`: retires every live approval of every revision (susdb.md section 3).
pub async fn decline(c: &mut Connection, update: &str, admin: &str) -> Result<(), ServerError> {
    let mut cmd = Command::new(procs::DECLINE_UPDATE);
    cmd.bind_param(procs::UPDATE_ID, uuid(update)?);
    cmd.bind_param(procs::ADMIN_NAME, admin.to_string());
    cmd.bind_param(procs::FAIL_IF_REPLICA, true);
    exec_checked(c, cmd, procs::DECLINE_UPDATE).await
}

/// `spDeployUpdate` with "not approved / detect only" for All Computers on `revision`, which is
/// what the WSUS console writes for Approve with no change (susdb.md section 3).
pub async fn approve_detect_only(
    c: &mut Connection,
    update: &str,
    revision: i32,
    admin: &str,
) -> Result<(), ServerError> {
    let mut cmd = Command::new(procs::DEPLOY_UPDATE);
    cmd.bind_param(procs::UPDATE_ID, uuid(update)?);
    cmd.bind_param(procs::REVISION_NUMBER, revision);
    cmd.bind_param(procs::ACTION_ID, action::DETECT_ONLY);
    cmd.bind_param(procs::TARGET_GROUP_ID, uuid(groups::ALL_COMPUTERS)?);
    cmd.bind_param(procs::ADMIN_NAME, admin.to_string());
    cmd.bind_param(procs::IS_ASSIGNED, true);
    cmd.bind_param(procs::DOWNLOAD_PRIORITY, 1i32);
    cmd.bind_param(procs::FAIL_IF_REPLICA, true);
    cmd.bind_param(procs::IS_REPLICA, false);
    exec_checked(c, cmd, procs::DEPLOY_UPDATE).await
}

/// Where this server's procedures and tables differ from what this build sends and reads
/// (`susdb::sql::SIGNATURES` against `susdb::procs::SIGNATURES` and `susdb::schema::COLUMNS`), in
/// words; empty when they match. Read-only, one round trip.
pub async fn signature_differences(c: &mut Connection) -> Result<Vec<String>, ServerError> {
    let sets = c
        .simple_query(sql::SIGNATURES)
        .await?
        .into_results()
        .await?;
    let [params, columns] = sets.as_slice() else {
        return Err(ServerError::permanent(format!(
            "the catalog read returned {} result sets, expected 2",
            sets.len()
        )));
    };
    let text = |row: &Row, column: &str| -> Result<String, ServerError> {
        Ok(get::<&str>(row, column)?.unwrap_or_default().to_string())
    };
    let mut found_params = Vec::new();
    for row in params {
        found_params.push((
            text(row, "ObjectName")?,
            text(row, "ParameterName")?,
            text(row, "TypeName")?,
        ));
    }
    let mut found_columns = Vec::new();
    for row in columns {
        found_columns.push((text(row, "ObjectName")?, text(row, "ColumnName")?));
    }
    Ok(compare_signatures(&found_params, &found_columns))
}

const UNKNOWN_SCHEMA: &str = "this SUSDB is not the schema wsus-reset knows";

/// The differences between the catalog rows a server gave and what this build uses.
fn compare_signatures(
    params: &[(String, String, String)],
    columns: &[(String, String)],
) -> Vec<String> {
    let mut out = Vec::new();
    for (procedure, expected) in procs::SIGNATURES {
        let has: Vec<&(String, String, String)> = params
            .iter()
            .filter(|(p, _, _)| p.eq_ignore_ascii_case(procedure))
            .collect();
        if has.is_empty() {
            out.push(format!("{procedure} does not exist: {UNKNOWN_SCHEMA}"));
            continue;
        }
        for (name, ty) in *expected {
            match has.iter().find(|(_, n, _)| n.eq_ignore_ascii_case(name)) {
                None => out.push(format!(
                    "{procedure} has no parameter {name}: {UNKNOWN_SCHEMA}"
                )),
                Some((_, _, actual)) if !actual.eq_ignore_ascii_case(ty) => out.push(format!(
                    "{procedure} declares {name} as {actual}, wsus-reset sends {ty}: {UNKNOWN_SCHEMA}"
                )),
                Some(_) => {}
            }
        }
    }
    for (object, expected) in schema::COLUMNS {
        for column in *expected {
            let present = columns
                .iter()
                .any(|(o, c)| o.eq_ignore_ascii_case(object) && c.eq_ignore_ascii_case(column));
            if !present {
                out.push(format!("{object} has no column {column}: {UNKNOWN_SCHEMA}"));
            }
        }
    }
    out
}

/// The downstream-server table (`susdb::sql::DOWNSTREAM_SERVERS`), read-only, one round trip.
pub async fn downstream(c: &mut Connection) -> Result<Downstream, ServerError> {
    let sets = c
        .simple_query(sql::DOWNSTREAM_SERVERS)
        .await?
        .into_results()
        .await?;
    let [own, table] = sets.as_slice() else {
        return Err(ServerError::permanent(format!(
            "the downstream-server read returned {} result sets, expected 2",
            sets.len()
        )));
    };
    let guid = |row: &Row, column: &str| -> Result<Option<String>, ServerError> {
        Ok(get::<Uuid>(row, column)?.map(|u| u.to_string().to_ascii_lowercase()))
    };
    let server_id = own
        .first()
        .map(|row| guid(row, "ServerId"))
        .transpose()?
        .flatten()
        .ok_or_else(|| missing("ServerId"))?;
    let registered = table
        .iter()
        .map(|row| {
            Ok(Registered {
                name: get::<&str>(row, "AccountName")?
                    .ok_or_else(|| missing("AccountName"))?
                    .to_string(),
                id: guid(row, "AccountServerID")?.ok_or_else(|| missing("AccountServerID"))?,
                parent: guid(row, "ParentServerID")?,
                last_sync: get::<&str>(row, "LastSyncTime")?.map(str::to_string),
                replica: get::<bool>(row, "IsReplica")?.unwrap_or(false),
                version: get::<&str>(row, "Version")?.unwrap_or_default().to_string(),
            })
        })
        .collect::<Result<Vec<_>, ServerError>>()?;
    Ok(Downstream {
        server_id,
        registered,
    })
}

/// `sp_getapplock` owned by the session, without waiting: `Ok(false)` when another session holds
/// it. The lock goes when the connection closes, however the process ends.
pub async fn try_applock(c: &mut Connection) -> Result<bool, ServerError> {
    let mut cmd = Command::new(procs::GET_APPLOCK);
    cmd.bind_param(procs::RESOURCE, procs::APPLOCK_RESOURCE);
    cmd.bind_param(procs::LOCK_MODE, "Exclusive");
    cmd.bind_param(procs::LOCK_OWNER, "Session");
    cmd.bind_param(procs::LOCK_TIMEOUT, 0i32);
    let code = cmd
        .exec(c)
        .await?
        .into_command_result()
        .await?
        .return_code() as i32;
    // 0 granted, 1 granted after waiting; -1 timeout, -2 cancelled, -3 deadlock, -999 error.
    Ok(code >= 0)
}

/// Whether this session still holds the hierarchy applock (`susdb::sql::APPLOCK_HELD`).
pub async fn applock_held(c: &mut Connection) -> Result<bool, ServerError> {
    let row = c
        .query(sql::APPLOCK_HELD, &[&procs::APPLOCK_RESOURCE])
        .await?
        .into_row()
        .await?;
    Ok(row
        .as_ref()
        .and_then(|r| r.try_get::<&str, _>("Mode").ok().flatten())
        .is_some_and(|mode| mode.eq_ignore_ascii_case("Exclusive")))
}

/// Which objects carry `key` as their local ID on this server (`susdb::sql::KEY_OBJECT`): the
/// dictionary key a SoftwareDistribution.log names is one of them.
pub async fn key_objects(c: &mut Connection, key: i32) -> Result<Vec<String>, ServerError> {
    let rows = c
        .query(sql::KEY_OBJECT, &[&key])
        .await?
        .into_first_result()
        .await?;
    Ok(rows
        .iter()
        .filter_map(|row| row.try_get::<&str, _>(0).ok().flatten().map(str::to_string))
        .collect())
}

impl WsusServer for Connection {
    async fn refusals(&mut self) -> Result<Vec<String>, ServerError> {
        signature_differences(self).await
    }

    async fn probe(&mut self, update: &str) -> Result<Observed, ServerError> {
        probe(self, update).await
    }

    async fn set_replica_mode(&mut self, replica: bool) -> Result<bool, ServerError> {
        set_replica_mode(self, replica).await
    }

    async fn decline(&mut self, update: &str, admin: &str) -> Result<(), ServerError> {
        decline(self, update, admin).await
    }

    async fn approve_detect_only(
        &mut self,
        update: &str,
        revision: i32,
        admin: &str,
    ) -> Result<(), ServerError> {
        approve_detect_only(self, update, revision, admin).await
    }

    /// SUSDB's procedures take no licence step of their own: the API's refusal of an
    /// unaccepted licence is not known to exist below it, and none is sent over SQL.
    async fn accept_licence(
        &mut self,
        _update: &str,
        _revision: i32,
        _licence: &str,
    ) -> Result<(), ServerError> {
        Err(ServerError::permanent(
            "accepting a licence is done through the web service (ExecuteSPAcceptEula), not over SQL",
        ))
    }

    async fn downstream(&mut self) -> Result<Downstream, ServerError> {
        downstream(self).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encryption_refusals_are_permanent_and_say_what_to_change_in_the_topology() {
        // The texts tiberius 0.13 uses.
        let refused = ServerError::from(tiberius::error::Error::Protocol(
            "Server does not allow the requested encryption level.".into(),
        ));
        assert!(!refused.transient);
        assert!(refused.message.contains("`encrypt`"), "{refused}");
        let rejected = ServerError::from(tiberius::error::Error::Tls(
            "the server's certificate was rejected during the TLS handshake: UnknownIssuer. To connect anyway you can: (1) trust ..."
                .into(),
        ));
        assert!(!rejected.transient);
        assert_eq!(
            rejected.message,
            "TLS: the server's certificate was rejected (UnknownIssuer): name the authority that issued it in `ca_file`, or reach the server by a name its certificate holds; `trust_cert: true` skips validation (only on a network you trust)"
        );
    }
}
