//! The result sets the lab answers with, built from one server's model: the probe's four, the
//! catalog read, and the session statements every driver sends.

use crate::catalog;
use crate::faults::Faults;
use crate::model::{ServerDb, SqlError};
use crate::sql::reply::{Cell, ColType, ResultSet};
use crate::version::SqlVersion;

/// `tbSchemaVersion.SchemaVersion` the lab reports (the real WSUS 3.0 value is an open question,
/// susdb.md section 7).
pub(crate) const SCHEMA_VERSION: i32 = 926;

/// The two result sets of `susdb::sql::SIGNATURES`, from the lab's catalog less what faults
/// removed on this server.
pub(crate) fn signatures(faults: &Faults, server: &str) -> Vec<ResultSet> {
    let text = |s: &str| Cell::Text(s.to_string());
    let mut params = ResultSet {
        columns: vec![
            ("ObjectName".into(), ColType::NVarChar),
            ("ParameterName".into(), ColType::NVarChar),
            ("TypeName".into(), ColType::NVarChar),
        ],
        rows: Vec::new(),
    };
    for (name, signature) in catalog::PROCEDURES {
        if !["spDeclineUpdate", "spDeployUpdate"].contains(name) {
            continue;
        }
        let without = faults.removed(server, name);
        for p in *signature {
            if !without.iter().any(|w| w.eq_ignore_ascii_case(p.name)) {
                params
                    .rows
                    .push(vec![text(name), text(p.name), text(p.ty.name())]);
            }
        }
    }
    let mut columns = ResultSet {
        columns: vec![
            ("ObjectName".into(), ColType::NVarChar),
            ("ColumnName".into(), ColType::NVarChar),
        ],
        rows: Vec::new(),
    };
    for (object, names) in catalog::COLUMNS {
        let without = faults.removed(server, object);
        for column in *names {
            if !without.iter().any(|w| w.eq_ignore_ascii_case(column)) {
                columns.rows.push(vec![text(object), text(column)]);
            }
        }
    }
    vec![params, columns]
}

/// What every client may send besides the contract: the session `SET` options drivers send at
/// connect (tedious, the .NET and JDBC drivers; SQL Server docs "SET Statements"), and the
/// version queries (`@@VERSION`, `SERVERPROPERTY('ProductVersion' | 'ProductLevel' | 'Edition' |
/// 'MachineName')`) that tools send to learn whom they talk to. `None`: not one of these.
pub(crate) fn session_statement(
    text: &str,
    version: SqlVersion,
) -> Option<Result<Vec<Option<ResultSet>>, SqlError>> {
    const SET_OPTIONS: &[&str] = &[
        "TEXTSIZE",
        "QUOTED_IDENTIFIER",
        "ARITHABORT",
        "NUMERIC_ROUNDABORT",
        "ANSI_WARNINGS",
        "ANSI_PADDING",
        "ANSI_NULLS",
        "ANSI_NULL_DFLT_ON",
        "CONCAT_NULL_YIELDS_NULL",
        "CURSOR_CLOSE_ON_COMMIT",
        "IMPLICIT_TRANSACTIONS",
        "LANGUAGE",
        "DATEFORMAT",
        "DATEFIRST",
        "TRANSACTION",
        "NOCOUNT",
        "XACT_ABORT",
        "LOCK_TIMEOUT",
        "DEADLOCK_PRIORITY",
    ];
    let statements: Vec<&str> = text
        .split(['\n', ';'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let upper: Vec<String> = statements.iter().map(|s| s.to_ascii_uppercase()).collect();
    if !upper.is_empty() && upper.iter().all(|s| s.starts_with("SET ")) {
        for statement in &upper {
            let option = statement[4..].split_whitespace().next().unwrap_or_default();
            if !SET_OPTIONS.contains(&option) {
                return Some(Err(SqlError {
                    number: 195,
                    class: 15,
                    message: format!("'{option}' is not a recognized SET option."),
                }));
            }
        }
        return Some(Ok(Vec::new()));
    }
    let [one] = upper.as_slice() else {
        return None;
    };
    let one = one.replace(' ', "");
    let nvarchar = |name: &str, value: String| {
        Some(Ok(vec![Some(ResultSet {
            columns: vec![(name.to_string(), ColType::NVarChar)],
            rows: vec![vec![Cell::Text(value)]],
        })]))
    };
    // The column's name: the alias after the last closing parenthesis, if any.
    let statement = statements[0];
    let tail = statement
        .rsplit_once(')')
        .map_or(statement, |(_, rest)| rest);
    let alias = tail
        .to_ascii_uppercase()
        .find(" AS ")
        .map_or(String::new(), |at| {
            tail[at + 4..].trim().trim_matches(['[', ']']).to_string()
        });
    if one == "SELECT@@VERSION" || one.starts_with("SELECT@@VERSIONAS") {
        return nvarchar(&alias, version.at_at_version());
    }
    for (property, value) in [
        ("PRODUCTVERSION", version.product_version().to_string()),
        ("PRODUCTLEVEL", "SP3".to_string()),
        ("EDITION", version.edition().to_string()),
        ("MACHINENAME", "WSUS".to_string()),
    ] {
        let plain = format!("SELECTSERVERPROPERTY('{property}')");
        let cast = format!("SELECTCAST(SERVERPROPERTY('{property}')ASNVARCHAR(128))");
        if one == plain || one.starts_with(&format!("{plain}AS")) || one.starts_with(&cast) {
            return nvarchar(&alias, value);
        }
    }
    None
}

/// The four result sets of `susdb::sql::PROBE`.
pub(crate) fn probe(db: &ServerDb, update: &str, version: SqlVersion) -> Vec<ResultSet> {
    let present = db.update_present && update == susdb::KB954960_UPDATE_ID;
    let config = ResultSet {
        columns: vec![
            ("ProductVersion".into(), ColType::NVarChar),
            ("SchemaVersion".into(), ColType::Int),
            ("ReplicaMode".into(), ColType::Bit),
            ("UpstreamServerName".into(), ColType::NVarChar),
            ("ServerPortNumber".into(), ColType::Int),
            ("SyncToMU".into(), ColType::Bit),
        ],
        rows: vec![vec![
            Cell::Text(version.product_version().into()),
            Cell::Int(SCHEMA_VERSION),
            Cell::Bit(db.replica_mode),
            db.upstream_server_name
                .clone()
                .map_or(Cell::Null, Cell::Text),
            Cell::Int(db.upstream_port),
            Cell::Bit(db.upstream_server_name.is_none()),
        ]],
    };
    let revisions = ResultSet {
        columns: vec![
            ("RevisionID".into(), ColType::Int),
            ("RevisionNumber".into(), ColType::Int),
            ("IsLatestRevision".into(), ColType::Bit),
        ],
        rows: if present {
            db.revisions
                .iter()
                .map(|r| {
                    vec![
                        Cell::Int(r.revision_id),
                        Cell::Int(r.revision_number),
                        Cell::Bit(r.is_latest),
                    ]
                })
                .collect()
        } else {
            Vec::new()
        },
    };
    let declined = ResultSet {
        columns: vec![("Declined".into(), ColType::Bit)],
        rows: if present {
            vec![vec![Cell::Bit(db.update_declined)]]
        } else {
            Vec::new()
        },
    };
    let number_of = |revision_id: i32| {
        db.revisions
            .iter()
            .find(|r| r.revision_id == revision_id)
            .map_or(0, |r| r.revision_number)
    };
    let deployments = ResultSet {
        columns: vec![
            ("DeploymentID".into(), ColType::Int),
            ("RevisionNumber".into(), ColType::Int),
            ("TargetGroupID".into(), ColType::Guid),
            ("TargetGroupTypeID".into(), ColType::Int),
            ("ActionID".into(), ColType::Int),
        ],
        rows: if present {
            db.deployments
                .iter()
                .map(|d| {
                    vec![
                        Cell::Int(d.deployment_id),
                        Cell::Int(number_of(d.revision_id)),
                        Cell::Guid(d.target_group_id.clone()),
                        Cell::Int(d.target_group_type_id),
                        Cell::Int(d.action_id),
                    ]
                })
                .collect()
        } else {
            Vec::new()
        },
    };
    vec![config, revisions, declined, deployments]
}
