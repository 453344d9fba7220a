//! The SUSDB catalog the lab serves: the signature of every procedure the tool may call and the
//! columns of every table and view it reads, as public sources show them, in one table. RPC calls
//! are checked against it the way SQL Server checks them (unknown parameter 8145, parameter given
//! twice 8143, missing parameter 201, value that does not convert 8114, type clash 206), and the
//! probe's `sys.parameters` / `sys.columns` reads are answered from it.
//!
//! This table is the lab's own reading of the sources, written apart from the client's list of
//! what it sends (`susdb::procs::*_PARAMS`, `susdb::schema::COLUMNS`), so that a client that
//! drifts from the real signatures fails here first.
//!
//! Sources (short names as in `shared/docs/susdb-audit.md`):
//! - `spDeclineUpdate`: MS-guide (`EXEC spDeclineUpdate @updateID = @uid, @adminName = @userName,
//!   @failIfReplica = 1`); types from flamingkeys (`DECLARE @updateID uniqueidentifier; DECLARE
//!   @adminName nvarchar(385); DECLARE @failIfReplica bit`).
//! - `spDeployUpdate`: WSUSpendu and SharpWSUS (`exec spDeployUpdate @updateID='…',
//!   @revisionNumber=204, @actionID=0, @targetGroupID='…', @adminName=N'WUS Server',
//!   @isAssigned=1, @downloadPriority=1, @failIfReplica=0, @isReplica=0`; WSUSpendu runs against
//!   Windows Server 2008 SSEE). Types follow the columns they fill (EF-scaffold `TbDeployment`:
//!   `AdminName` max 385, `DownloadPriority` int, `IsAssigned` bit). `@deadline` appears only in a
//!   secondary source about modern WSUS (audit item 13): a WSUS 3.0 SUSDB is emulated without it,
//!   the harsher case (a client that sends it is refused with 8145).
//! - Defaults of the WSUS procedures are not public: every parameter is required here (harsher).
//! - `sp_getapplock` / `sp_releaseapplock`: sql-docs `sp-getapplock-transact-sql.md` (`@Resource`
//!   nvarchar(255), `@LockMode` varchar(32), `@LockOwner` varchar(32) = 'Transaction',
//!   `@LockTimeout` int, `@DbPrincipal` sysname = 'public').
//! - Columns: EF-scaffold `SUSDBContext.cs` (tbConfigurationA/C, tbSchemaVersion, tbUpdate,
//!   tbRevision, tbDeployment), MS-guide (`vwMinimalUpdate` `UpdateID`, `Declined`,
//!   `IsLatestRevision`, `IsSuperseded`).
//! - Error texts: SQL Server's `sys.messages` (8145 "%.*ls is not a parameter for procedure
//!   %.*ls.", 8143 "Parameter '%.*ls' was supplied multiple times.", 201 "Procedure or function
//!   '%.*ls' expects parameter '%.*ls', which was not supplied.", 8114 "Error converting data
//!   type %ls to %ls.", 206 "Operand type clash: %ls is incompatible with %ls").

use crate::model::SqlError;
use crate::sql::tds::{Param, Value};

/// A parameter's or column's declared SQL type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqlType {
    UniqueIdentifier,
    /// `nvarchar(n)`; `sysname` is `nvarchar(128)`.
    NVarChar(u16),
    VarChar(u16),
    Int,
    TinyInt,
    Bit,
    DateTime,
}

impl SqlType {
    pub fn name(self) -> &'static str {
        match self {
            SqlType::UniqueIdentifier => "uniqueidentifier",
            SqlType::NVarChar(_) => "nvarchar",
            SqlType::VarChar(_) => "varchar",
            SqlType::Int => "int",
            SqlType::TinyInt => "tinyint",
            SqlType::Bit => "bit",
            SqlType::DateTime => "datetime",
        }
    }
}

/// One procedure parameter: name, type, and whether it may be left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParamSig {
    pub name: &'static str,
    pub ty: SqlType,
    pub has_default: bool,
}

const fn required(name: &'static str, ty: SqlType) -> ParamSig {
    ParamSig {
        name,
        ty,
        has_default: false,
    }
}

const fn optional(name: &'static str, ty: SqlType) -> ParamSig {
    ParamSig {
        name,
        ty,
        has_default: true,
    }
}

/// The procedures the tool may call, by name without schema.
pub const PROCEDURES: &[(&str, &[ParamSig])] = &[
    (
        "spDeclineUpdate",
        &[
            required("@updateID", SqlType::UniqueIdentifier),
            required("@adminName", SqlType::NVarChar(385)),
            required("@failIfReplica", SqlType::Bit),
        ],
    ),
    (
        "spDeployUpdate",
        &[
            required("@updateID", SqlType::UniqueIdentifier),
            required("@revisionNumber", SqlType::Int),
            required("@actionID", SqlType::Int),
            required("@targetGroupID", SqlType::UniqueIdentifier),
            required("@adminName", SqlType::NVarChar(385)),
            required("@isAssigned", SqlType::Bit),
            required("@downloadPriority", SqlType::Int),
            required("@failIfReplica", SqlType::Bit),
            required("@isReplica", SqlType::Bit),
        ],
    ),
    (
        "sp_getapplock",
        &[
            required("@Resource", SqlType::NVarChar(255)),
            required("@LockMode", SqlType::VarChar(32)),
            optional("@LockOwner", SqlType::VarChar(32)),
            optional("@LockTimeout", SqlType::Int),
            optional("@DbPrincipal", SqlType::NVarChar(128)),
        ],
    ),
    (
        "sp_releaseapplock",
        &[
            required("@Resource", SqlType::NVarChar(255)),
            optional("@LockOwner", SqlType::VarChar(32)),
            optional("@DbPrincipal", SqlType::NVarChar(128)),
        ],
    ),
];

/// Columns of the tables and views the tool reads, by object name without schema.
pub const COLUMNS: &[(&str, &[&str])] = &[
    (
        "tbConfigurationA",
        &[
            "ConfigurationID",
            "SyncToMU",
            "UpstreamServerName",
            "ServerPortNumber",
            "UpstreamServerUseSSL",
            "LastConfigChange",
        ],
    ),
    ("tbConfigurationC", &["ConfigurationID", "ReplicaMode"]),
    (
        "tbSchemaVersion",
        &["ID", "ComponentName", "BuildNumber", "SchemaVersion"],
    ),
    (
        "tbUpdate",
        &[
            "LocalUpdateID",
            "UpdateID",
            "IsHidden",
            "LastUndeclinedTime",
        ],
    ),
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
            "AdminName",
            "IsAssigned",
            "DownloadPriority",
            "Deadline",
            "DeploymentTime",
            "Priority",
            "DeploymentStatus",
        ],
    ),
    (
        "vwMinimalUpdate",
        &["UpdateID", "Declined", "IsLatestRevision", "IsSuperseded"],
    ),
];

/// A procedure's signature, by name with or without `dbo.`, ignoring case.
pub fn procedure(name: &str) -> Option<(&'static str, &'static [ParamSig])> {
    let bare = name.trim_start_matches("dbo.").trim_start_matches("[dbo].");
    PROCEDURES
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(bare))
        .copied()
}

/// The SQL type a parameter arrived as, named as SQL Server names it in error messages.
fn wire_type(type_info: &[u8]) -> &'static str {
    match type_info {
        [0x26, 1, ..] | [0x30, ..] => "tinyint",
        [0x26, 2, ..] | [0x34, ..] => "smallint",
        [0x26, 8, ..] | [0x7F, ..] => "bigint",
        [0x26, ..] | [0x38, ..] => "int",
        [0x32 | 0x68, ..] => "bit",
        [0x24, ..] => "uniqueidentifier",
        [0xE7, ..] => "nvarchar",
        [0xEF, ..] => "nchar",
        [0xA7, ..] => "varchar",
        [0xAF, ..] => "char",
        [0xA5, ..] => "varbinary",
        [0xAD, ..] => "binary",
        [0x3A, ..] => "smalldatetime",
        [0x3D | 0x6F, ..] => "datetime",
        [0x3B, ..] => "real",
        [0x3E | 0x6D, ..] => "float",
        [0x6A, ..] => "decimal",
        [0x6C, ..] => "numeric",
        [0x28, ..] => "date",
        [0x29, ..] => "time",
        [0x2A, ..] => "datetime2",
        [0x2B, ..] => "datetimeoffset",
        [0x3C | 0x6E | 0x7A, ..] => "money",
        _ => "sql_variant",
    }
}

fn error(number: i32, message: String) -> SqlError {
    SqlError {
        number,
        class: 16,
        message,
    }
}

/// SQL Server's implicit conversion of a parameter value to the declared type.
fn convert(param: &Param, to: SqlType) -> Result<Value, SqlError> {
    let from = wire_type(&param.type_info);
    let not_convertible = || {
        error(
            8114,
            format!("Error converting data type {from} to {}.", to.name()),
        )
    };
    let clash = || {
        error(
            206,
            format!(
                "Operand type clash: {from} is incompatible with {}",
                to.name()
            ),
        )
    };
    let value = &param.value;
    if *value == Value::Null {
        return Ok(Value::Null);
    }
    match to {
        SqlType::Int | SqlType::TinyInt => {
            let (low, high) = if to == SqlType::Int {
                (i64::from(i32::MIN), i64::from(i32::MAX))
            } else {
                (0, 255)
            };
            let n = match value {
                Value::Int(n) => *n,
                Value::Bit(b) => i64::from(*b),
                Value::Text(t) => t.trim().parse::<i64>().map_err(|_| not_convertible())?,
                _ => return Err(clash()),
            };
            if (low..=high).contains(&n) {
                Ok(Value::Int(n))
            } else {
                Err(error(
                    8115,
                    format!(
                        "Arithmetic overflow error converting expression to data type {}.",
                        to.name()
                    ),
                ))
            }
        }
        SqlType::Bit => match value {
            Value::Bit(b) => Ok(Value::Bit(*b)),
            Value::Int(n) => Ok(Value::Bit(*n != 0)),
            Value::Text(t) => match t.trim().to_ascii_uppercase().as_str() {
                "1" | "TRUE" => Ok(Value::Bit(true)),
                "0" | "FALSE" => Ok(Value::Bit(false)),
                _ => Err(not_convertible()),
            },
            _ => Err(clash()),
        },
        SqlType::UniqueIdentifier => match value {
            Value::Guid(g) => Ok(Value::Guid(g.clone())),
            Value::Text(t) => {
                let t = t.trim().trim_start_matches('{').trim_end_matches('}');
                let shape = t.len() == 36
                    && t.char_indices().all(|(i, c)| {
                        if [8, 13, 18, 23].contains(&i) {
                            c == '-'
                        } else {
                            c.is_ascii_hexdigit()
                        }
                    });
                if shape {
                    Ok(Value::Guid(t.to_ascii_uppercase()))
                } else {
                    Err(not_convertible())
                }
            }
            _ => Err(clash()),
        },
        SqlType::NVarChar(max) | SqlType::VarChar(max) => {
            let text = match value {
                Value::Text(t) | Value::Guid(t) => t.clone(),
                Value::Int(n) => n.to_string(),
                Value::Bit(b) => u8::from(*b).to_string(),
                _ => return Err(clash()),
            };
            // A stored procedure's string parameter keeps its declared length: longer values are
            // cut, without an error (SQL Server's documented behaviour for parameters).
            Ok(Value::Text(text.chars().take(usize::from(max)).collect()))
        }
        SqlType::DateTime => match value {
            Value::Temporal(_) if matches!(param.type_info.first(), Some(0x3D | 0x6F | 0x3A)) => {
                Ok(value.clone())
            }
            Value::Text(_) => Ok(value.clone()),
            _ => Err(clash()),
        },
    }
}

/// Binds an RPC's parameters to `procedure`'s signature, as SQL Server does before running it:
/// the values converted to the declared types, in the signature's order (`None`: not given, with a
/// default). `without` lists parameters a fault removed from this server's signature.
pub fn bind(
    procedure: &str,
    signature: &[ParamSig],
    params: &[Param],
    without: &[String],
) -> Result<Vec<(&'static str, Option<Value>)>, SqlError> {
    let present = |sig: &&ParamSig| !without.iter().any(|w| w.eq_ignore_ascii_case(sig.name));
    let mut bound: Vec<(&'static str, Option<Value>)> = Vec::new();
    for param in params {
        let Some(sig) = signature
            .iter()
            .filter(present)
            .find(|s| s.name.eq_ignore_ascii_case(&param.name))
        else {
            return Err(error(
                8145,
                format!(
                    "{} is not a parameter for procedure {procedure}.",
                    param.name
                ),
            ));
        };
        if bound.iter().any(|(name, _)| *name == sig.name) {
            return Err(error(
                8143,
                format!("Parameter '{}' was supplied multiple times.", param.name),
            ));
        }
        bound.push((sig.name, Some(convert(param, sig.ty)?)));
    }
    let mut ordered = Vec::new();
    for sig in signature.iter().filter(present) {
        match bound.iter().position(|(name, _)| *name == sig.name) {
            Some(at) => ordered.push(bound.swap_remove(at)),
            None if sig.has_default => ordered.push((sig.name, None)),
            None => {
                return Err(error(
                    201,
                    format!(
                        "Procedure or function '{procedure}' expects parameter '{}', which was not supplied.",
                        sig.name
                    ),
                ));
            }
        }
    }
    Ok(ordered)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param(name: &str, type_info: &[u8], value: Value) -> Param {
        Param {
            name: name.into(),
            output: false,
            type_info: type_info.to_vec(),
            value,
        }
    }

    const GUID: &str = "D359F493-0AAD-43FA-AF5C-6763326CD98F";

    fn decline_params() -> Vec<Param> {
        vec![
            param("@updateID", &[0x24, 16], Value::Guid(GUID.into())),
            param("@adminName", &[0xE7], Value::Text("op".into())),
            param("@failIfReplica", &[0x68, 1], Value::Bit(true)),
        ]
    }

    fn decline() -> (&'static str, &'static [ParamSig]) {
        procedure("dbo.spDeclineUpdate").unwrap_or_else(|| panic!("in the table"))
    }

    #[test]
    fn a_call_as_the_public_scripts_make_it_binds() {
        let (name, sig) = decline();
        let bound = bind(name, sig, &decline_params(), &[]).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(bound.len(), 3);
        assert_eq!(bound[2], ("@failIfReplica", Some(Value::Bit(true))));
    }

    #[test]
    fn what_sql_server_refuses_is_refused_with_its_error_number() {
        let (name, sig) = decline();
        let mut extra = decline_params();
        extra.push(param("@deadline", &[0x6F, 8], Value::Null));
        let e = bind(name, sig, &extra, &[]).unwrap_err();
        assert_eq!(
            (e.number, e.message.as_str()),
            (
                8145,
                "@deadline is not a parameter for procedure spDeclineUpdate."
            )
        );

        let missing = &decline_params()[..2];
        let e = bind(name, sig, missing, &[]).unwrap_err();
        assert_eq!(e.number, 201);
        assert!(e.message.contains("'@failIfReplica'"), "{}", e.message);

        let mut wrong = decline_params();
        wrong[0] = param("@updateID", &[0xE7], Value::Text("not a guid".into()));
        let e = bind(name, sig, &wrong, &[]).unwrap_err();
        assert_eq!(
            (e.number, e.message.as_str()),
            (
                8114,
                "Error converting data type nvarchar to uniqueidentifier."
            )
        );

        let mut clash = decline_params();
        clash[0] = param("@updateID", &[0x26, 4], Value::Int(7));
        assert_eq!(bind(name, sig, &clash, &[]).unwrap_err().number, 206);

        let mut twice = decline_params();
        twice.push(param("@UPDATEID", &[0x24, 16], Value::Guid(GUID.into())));
        assert_eq!(bind(name, sig, &twice, &[]).unwrap_err().number, 8143);
    }

    #[test]
    fn a_parameter_removed_by_a_fault_is_unknown_and_defaults_fill_the_rest() {
        let (name, sig) = decline();
        let e = bind(name, sig, &decline_params(), &["@failIfReplica".into()]).unwrap_err();
        assert_eq!(e.number, 8145);
        let (name, sig) = procedure("sp_getapplock").unwrap_or_else(|| panic!("in the table"));
        let bound = bind(
            name,
            sig,
            &[
                param("@Resource", &[0xE7], Value::Text("r".into())),
                param("@LockMode", &[0xE7], Value::Text("Exclusive".into())),
            ],
            &[],
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(bound[2], ("@LockOwner", None));
    }

    #[test]
    fn every_column_and_parameter_the_client_uses_exists_in_the_lab_catalog() {
        for (object, columns) in susdb::schema::COLUMNS {
            let known = COLUMNS
                .iter()
                .find(|(o, _)| o == object)
                .unwrap_or_else(|| panic!("{object} not in the lab catalog"))
                .1;
            for column in *columns {
                assert!(known.contains(column), "{object}.{column}");
            }
        }
        for (proc_name, params) in susdb::procs::SIGNATURES {
            let (_, sig) = procedure(proc_name).unwrap_or_else(|| panic!("{proc_name}"));
            for (param, ty) in *params {
                let found = sig
                    .iter()
                    .find(|s| s.name == *param)
                    .unwrap_or_else(|| panic!("{proc_name} {param}"));
                assert_eq!(found.ty.name(), *ty, "{proc_name} {param}");
            }
        }
    }
}
