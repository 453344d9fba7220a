//! What a logged-in TDS session's requests do: the statements and procedures of the `susdb`
//! contract (checked against the catalog as SQL Server checks them), the session-owned
//! application locks, and faults where they are injected. Nothing outside the contract is
//! answered.

use crate::model::{Call, SqlError};
use crate::sql::reply::{Cell, ColType, Reply, ResultSet, done};
use crate::sql::results::{probe, session_statement, signatures};
use crate::sql::tds::{self, Message, Param, Rpc, Value, packet};
use std::time::Duration;

use crate::{Lab, LabError, catalog, lock, version};

/// One logged-in connection.
#[derive(Debug)]
pub(crate) struct Session<'a> {
    pub(crate) server: &'a str,
    pub(crate) connection: u64,
    /// The TDS version of the session (LOGINACK): the lower of the client's and the server's.
    pub(crate) tds_version: u32,
}

/// A parsed request message.
#[derive(Debug)]
pub(crate) enum Request {
    Batch(String),
    Rpc(Rpc),
    /// A transaction-manager request type (5 begin, 7 commit, 8 rollback).
    Transaction(u16),
}

impl Request {
    pub(crate) fn parse(message: &Message) -> Result<Request, tds::ProtocolError> {
        match message.kind {
            packet::SQL_BATCH => Ok(Request::Batch(tds::parse_batch(&message.payload)?)),
            packet::RPC => Ok(Request::Rpc(tds::parse_rpc(&message.payload)?)),
            packet::TRANSACTION_MANAGER => {
                let total = message
                    .payload
                    .get(..4)
                    .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
                let at = usize::try_from(total).unwrap_or(usize::MAX);
                let kind = message
                    .payload
                    .get(at..at + 2)
                    .map_or(0, |b| u16::from_le_bytes([b[0], b[1]]));
                Ok(Request::Transaction(kind))
            }
            other => Err(tds::ProtocolError::Malformed(format!(
                "unexpected packet type 0x{other:02X}"
            ))),
        }
    }

    /// The name faults use for this request.
    pub(crate) fn target(&self) -> String {
        let statement = |text: &str| {
            let text = text.trim();
            if text == susdb::sql::PROBE {
                "probe".to_string()
            } else if text == susdb::sql::SET_REPLICA_MODE {
                "set-replica-mode".to_string()
            } else if text == susdb::sql::KEY_OBJECT {
                "key-object".to_string()
            } else if text == susdb::sql::DOWNSTREAM_SERVERS {
                "downstream-servers".to_string()
            } else if text == susdb::sql::SIGNATURES {
                "signatures".to_string()
            } else if text == susdb::sql::APPLOCK_HELD {
                "applock-held".to_string()
            } else {
                "batch".to_string()
            }
        };
        match self {
            Request::Batch(text) => statement(text),
            Request::Rpc(rpc) if rpc.procedure == "sp_executesql" => rpc
                .params
                .first()
                .and_then(|p| p.value.as_str())
                .map_or_else(|| "batch".into(), statement),
            Request::Rpc(rpc) => rpc.procedure.trim_start_matches("dbo.").to_string(),
            Request::Transaction(_) => "transaction".into(),
        }
    }
}

impl Lab {
    pub(crate) async fn execute(&self, session: &Session<'_>, request: &Request) -> Reply {
        let (server, connection) = (session.server, session.connection);
        let mut reply = Reply::default();
        match request {
            Request::Transaction(kind) => {
                // Begin (5): a new descriptor; commit (7) / rollback (8): it ends. The lab applies
                // every change at once, so a transaction only has to look right on the wire.
                let descriptor = 1u64.to_le_bytes();
                match kind {
                    5 => reply.env_change_bytes(8, &descriptor, &[]),
                    7 => reply.env_change_bytes(9, &[], &descriptor),
                    8 => reply.env_change_bytes(10, &[], &descriptor),
                    _ => {}
                }
                reply.done(done::FINAL, None);
            }
            Request::Batch(text) => match self.statement(server, connection, text, &[]) {
                Ok(sets) if sets.is_empty() => reply.done(done::FINAL, None),
                Ok(sets) => {
                    for (k, set) in sets.iter().enumerate() {
                        if let Some(set) = set {
                            reply.result_set(set);
                        }
                        let more = if k + 1 < sets.len() {
                            done::MORE
                        } else {
                            done::FINAL
                        };
                        reply.done(more, Some(set.as_ref().map_or(1, |s| s.rows.len() as u64)));
                    }
                }
                Err(e) => {
                    reply.error(e.number, e.class, &e.message, server, "");
                    reply.done(done::ERROR, None);
                }
            },
            Request::Rpc(rpc) => {
                let procedure = rpc
                    .procedure
                    .trim_start_matches("dbo.")
                    .trim_start_matches("[dbo].");
                if let Some(e) = unknown_type(rpc, session.tds_version) {
                    reply.error(e.number, e.class, &e.message, server, "");
                    reply.done(done::ERROR, None);
                    return reply;
                }
                let result = match procedure.to_ascii_lowercase().as_str() {
                    "sp_executesql" => self
                        .sp_executesql(server, connection, rpc)
                        .map(|sets| (sets, 0)),
                    "spdeclineupdate" | "spdeployupdate" => self
                        .procedure(server, procedure, &rpc.params)
                        .map(|()| (Vec::new(), 0)),
                    "sp_getapplock" => self
                        .get_applock(server, connection, &rpc.params)
                        .await
                        .map(|s| (Vec::new(), s)),
                    "sp_releaseapplock" => self
                        .release_applock(server, connection, &rpc.params)
                        .map(|s| (Vec::new(), s)),
                    _ => Err(SqlError {
                        number: 2812,
                        class: 16,
                        message: format!("Could not find stored procedure '{}'.", rpc.procedure),
                    }),
                };
                match result {
                    Ok((sets, status)) => {
                        for set in &sets {
                            match set {
                                Some(set) => {
                                    reply.result_set(set);
                                    reply.done_in_proc(done::MORE, Some(set.rows.len() as u64));
                                }
                                None => reply.done_in_proc(done::MORE, Some(1)),
                            }
                        }
                        for (ordinal, param) in
                            rpc.params.iter().enumerate().filter(|(_, p)| p.output)
                        {
                            reply.return_value(
                                u16::try_from(ordinal).unwrap_or(0),
                                param,
                                &param.value,
                            );
                        }
                        reply.return_status(status);
                        reply.done_proc(done::FINAL);
                    }
                    Err(e) => {
                        reply.error(e.number, e.class, &e.message, server, procedure);
                        reply.return_status(-6);
                        reply.done_proc(done::ERROR);
                    }
                }
            }
        }
        reply
    }

    pub(crate) fn sp_executesql(
        &self,
        server: &str,
        connection: u64,
        rpc: &Rpc,
    ) -> Result<Vec<Option<ResultSet>>, SqlError> {
        let text = rpc
            .params
            .first()
            .and_then(|p| p.value.as_str())
            .ok_or_else(|| SqlError {
                number: 8144,
                class: 16,
                message: "Procedure or function sp_executesql has too many arguments specified."
                    .into(),
            })?;
        // @P1.. follow @stmt and @params.
        let args: Vec<&Value> = rpc.params.iter().skip(2).map(|p| &p.value).collect();
        self.statement(server, connection, text, &args)
    }

    /// Runs one of the contract's statements. `None` in the result: a statement without rows
    /// (an UPDATE), counted as one row affected.
    pub(crate) fn statement(
        &self,
        server: &str,
        connection: u64,
        text: &str,
        args: &[&Value],
    ) -> Result<Vec<Option<ResultSet>>, SqlError> {
        let arg = |i: usize| args.get(i).copied().unwrap_or(&Value::Null);
        let mut inner = lock(&self.shared.inner);
        let text_trimmed = text.trim();
        if text_trimmed == susdb::sql::APPLOCK_HELD {
            let resource = arg(0).as_str().unwrap_or_default().to_string();
            let held = inner.applocks.get(&(server.to_string(), resource)) == Some(&connection);
            return Ok(vec![Some(ResultSet {
                columns: vec![("Mode".into(), ColType::NVarChar)],
                rows: vec![vec![Cell::Text(
                    if held { "Exclusive" } else { "NoLock" }.into(),
                )]],
            })]);
        }
        let db = inner.servers.get_mut(server).ok_or_else(|| SqlError {
            number: 4060,
            class: 11,
            message: "Cannot open database \"SUSDB\".".into(),
        })?;
        let faults = &self.shared.config.faults;
        if text_trimmed == susdb::sql::PROBE {
            // SQL Server compiles the whole batch first: a column the probe names and this
            // server lacks fails it before any row (error 207).
            for (object, _) in catalog::COLUMNS {
                if let Some(column) = faults.removed(server, object).into_iter().next() {
                    return Err(SqlError {
                        number: 207,
                        class: 16,
                        message: format!("Invalid column name '{column}'."),
                    });
                }
            }
            let update = arg(0).as_str().unwrap_or_default().to_ascii_uppercase();
            return Ok(probe(db, &update, self.platform(server).sql)
                .into_iter()
                .map(Some)
                .collect());
        }
        if text_trimmed == susdb::sql::SIGNATURES {
            return Ok(signatures(faults, server).into_iter().map(Some).collect());
        }
        if text_trimmed == susdb::sql::SET_REPLICA_MODE {
            let replica = arg(0).as_bool().ok_or_else(|| SqlError {
                number: 8178,
                class: 16,
                message:
                    "The parameterized query expects the parameter '@P1', which was not supplied."
                        .into(),
            })?;
            db.set_replica_mode(replica);
            let mut params = serde_json::Map::new();
            params.insert("@P1".into(), replica.into());
            db.calls.push(Call {
                procedure: "set-replica-mode".into(),
                params,
            });
            let mode = ResultSet {
                columns: vec![("ReplicaMode".into(), ColType::Bit)],
                rows: vec![vec![Cell::Bit(db.replica_mode)]],
            };
            return Ok(vec![None, Some(mode)]);
        }
        if text_trimmed == susdb::sql::DOWNSTREAM_SERVERS {
            // `tbDownstreamServerTarget` joined to itself for the parent's id (columns: the EF
            // scaffold H2 of wsus-web-services.md; NULL parent for a direct child, 3.3 there),
            // `LastSyncTime` as `CONVERT(…, 126)` writes it.
            let table = self.shared.hierarchy.registered(&inner.servers, server);
            let rows = table
                .into_iter()
                .map(|r| {
                    vec![
                        Cell::Text(r.name),
                        Cell::Guid(r.id),
                        Cell::Text(r.last_sync),
                        r.parent.map_or(Cell::Null, Cell::Guid),
                        Cell::Bit(r.replica),
                        Cell::Text(r.version),
                    ]
                })
                .collect();
            return Ok(vec![
                Some(ResultSet {
                    columns: vec![("ServerId".into(), ColType::Guid)],
                    rows: vec![vec![Cell::Guid(crate::model::server_id(server))]],
                }),
                Some(ResultSet {
                    columns: vec![
                        ("AccountName".into(), ColType::NVarChar),
                        ("AccountServerID".into(), ColType::Guid),
                        ("LastSyncTime".into(), ColType::NVarChar),
                        ("ParentServerID".into(), ColType::Guid),
                        ("IsReplica".into(), ColType::Bit),
                        ("Version".into(), ColType::NVarChar),
                    ],
                    rows,
                }),
            ]);
        }
        if text_trimmed == susdb::sql::KEY_OBJECT {
            let key = arg(0).as_i64().unwrap_or(i64::MIN);
            let mut rows = Vec::new();
            if db.update_present && i64::from(db.local_update_id) == key {
                rows.push(vec![Cell::Text("LocalUpdateID".into())]);
            }
            if db.revisions.iter().any(|r| i64::from(r.revision_id) == key) {
                rows.push(vec![Cell::Text("RevisionID".into())]);
            }
            if db
                .deployments
                .iter()
                .any(|d| i64::from(d.deployment_id) == key)
            {
                rows.push(vec![Cell::Text("DeploymentID".into())]);
            }
            return Ok(vec![Some(ResultSet {
                columns: vec![("Kind".into(), ColType::NVarChar)],
                rows,
            })]);
        }
        if let Some(answer) = session_statement(text_trimmed, self.platform(server).sql) {
            return answer;
        }
        let first_line = text_trimmed.lines().next().unwrap_or_default();
        Err(SqlError {
            number: 50000,
            class: 16,
            message: format!("statement not supported by the lab: {first_line}"),
        })
    }

    pub(crate) fn procedure(
        &self,
        server: &str,
        procedure: &str,
        params: &[Param],
    ) -> Result<(), SqlError> {
        let (name, signature) = catalog::procedure(procedure).ok_or_else(|| SqlError {
            number: 2812,
            class: 16,
            message: format!("Could not find stored procedure '{procedure}'."),
        })?;
        let without = self.shared.config.faults.removed(server, name);
        let bound = catalog::bind(name, signature, params, &without)?;
        let get = |wanted: &str| {
            bound
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(wanted))
                .and_then(|(_, v)| v.as_ref())
        };
        let text = |name: &str| {
            get(name)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let update = text(susdb::procs::UPDATE_ID);
        let admin = text(susdb::procs::ADMIN_NAME);
        let fail_if_replica = get(susdb::procs::FAIL_IF_REPLICA)
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let mut inner = lock(&self.shared.inner);
        let db = inner.servers.get_mut(server).ok_or_else(|| SqlError {
            number: 4060,
            class: 11,
            message: "Cannot open database \"SUSDB\".".into(),
        })?;
        let params_json: serde_json::Map<String, serde_json::Value> = params
            .iter()
            .map(|p| (p.name.clone(), p.value.to_json()))
            .collect();
        let result = if name == "spDeclineUpdate" {
            db.decline(&update, &admin, fail_if_replica)
        } else {
            let int = |name: &str| {
                get(name)
                    .and_then(Value::as_i64)
                    .and_then(|n| i32::try_from(n).ok())
                    .unwrap_or(-1)
            };
            let revision = int(susdb::procs::REVISION_NUMBER);
            let action = int(susdb::procs::ACTION_ID);
            let group = text(susdb::procs::TARGET_GROUP_ID);
            db.deploy(&update, revision, action, &group, &admin, fail_if_replica)
        };
        let mut call = Call {
            procedure: procedure.to_string(),
            params: params_json,
        };
        call.params.insert("ok".into(), result.is_ok().into());
        db.calls.push(call);
        result
    }

    pub(crate) async fn get_applock(
        &self,
        server: &str,
        connection: u64,
        params: &[Param],
    ) -> Result<i32, SqlError> {
        check_system_call("sp_getapplock", params)?;
        let get = |name: &str| {
            params
                .iter()
                .find(|p| p.name.eq_ignore_ascii_case(name))
                .map(|p| &p.value)
        };
        let resource = get(susdb::procs::RESOURCE)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let timeout_ms = get(susdb::procs::LOCK_TIMEOUT)
            .and_then(Value::as_i64)
            .unwrap_or(-1);
        // A negative timeout waits forever on SQL Server; the lab caps it so nothing hangs.
        let timeout =
            Duration::from_millis(u64::try_from(timeout_ms).unwrap_or(30_000).min(30_000));
        let key = (server.to_string(), resource);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            {
                let mut inner = lock(&self.shared.inner);
                match inner.applocks.get(&key) {
                    None => {
                        inner.applocks.insert(key, connection);
                        return Ok(0);
                    }
                    Some(owner) if *owner == connection => return Ok(0),
                    Some(_) => {}
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(-1);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub(crate) fn release_applock(
        &self,
        server: &str,
        connection: u64,
        params: &[Param],
    ) -> Result<i32, SqlError> {
        check_system_call("sp_releaseapplock", params)?;
        let resource = params
            .iter()
            .find(|p| p.name.eq_ignore_ascii_case(susdb::procs::RESOURCE))
            .and_then(|p| p.value.as_str())
            .unwrap_or_default()
            .to_string();
        let mut inner = lock(&self.shared.inner);
        let key = (server.to_string(), resource.clone());
        if inner.applocks.get(&key) == Some(&connection) {
            inner.applocks.remove(&key);
            Ok(0)
        } else {
            Err(SqlError {
                number: 1223,
                class: 16,
                message: format!(
                    "Cannot release the application lock (Database Principal: 'public', Resource: '{resource}') because it is not currently held."
                ),
            })
        }
    }
}

/// A parameter of a type the session's TDS version does not have (the date and time types of
/// TDS 7.3 on SQL Server 2005), refused as SQL Server refuses an unknown type ([`version`]).
pub(crate) fn unknown_type(rpc: &Rpc, tds_version: u32) -> Option<SqlError> {
    if tds_version >= version::TDS_73 {
        return None;
    }
    let (ordinal, param) = rpc
        .params
        .iter()
        .enumerate()
        .find(|(_, p)| p.type_info.first().is_some_and(|t| version::tds73_type(*t)))?;
    Some(SqlError {
        number: 8009,
        class: 16,
        message: format!(
            "The incoming tabular data stream (TDS) remote procedure call (RPC) protocol stream is incorrect. Parameter {} (\"{}\"): Data type 0x{:02X} is unknown.",
            ordinal + 1,
            param.name,
            param.type_info[0]
        ),
    })
}

/// A system procedure's parameters checked against its signature (the lab's catalog).
pub(crate) fn check_system_call(name: &str, params: &[Param]) -> Result<(), SqlError> {
    if let Some((name, signature)) = catalog::procedure(name) {
        catalog::bind(name, signature, params, &[])?;
    }
    Ok(())
}

pub(crate) fn state_error(e: LabError) -> SqlError {
    SqlError {
        number: 3013,
        class: 16,
        message: format!("the lab could not save its state: {e}"),
    }
}
