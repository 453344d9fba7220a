//! The port: what the repair asks of a WSUS server and what it reads back, in the repair's own
//! words, whichever way the server is reached. The adapters (`sql`, `api`) implement
//! [`WsusServer`] and build these types; this module imports neither of them.

use std::future::Future;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use susdb::{action, groups, target_group_type};

/// A WSUS server as the repair talks to it.
pub trait WsusServer: Send {
    /// What makes this server unsafe to change, in words, read before any change; empty when
    /// none. Over SQL: procedures and tables that differ from what this build sends and reads.
    /// Over the web service: a user without the WSUS administrator role.
    fn refusals(&mut self) -> impl Future<Output = Result<Vec<String>, ServerError>> + Send;

    /// The read-only probe: configuration, the update's revisions, its approvals.
    fn probe(&mut self, update: &str)
    -> impl Future<Output = Result<Observed, ServerError>> + Send;

    /// Sets replica mode and returns what the server then holds.
    fn set_replica_mode(
        &mut self,
        replica: bool,
    ) -> impl Future<Output = Result<bool, ServerError>> + Send;

    /// Declines the update, failing on a replica.
    fn decline(
        &mut self,
        update: &str,
        admin: &str,
    ) -> impl Future<Output = Result<(), ServerError>> + Send;

    /// Approves `revision` as "not approved / detect only" for All Computers, no deadline.
    fn approve_detect_only(
        &mut self,
        update: &str,
        revision: i32,
        admin: &str,
    ) -> impl Future<Output = Result<(), ServerError>> + Send;

    /// Accepts the update's licence agreement `licence` (its id, as the probe read it), which
    /// WSUS requires before an approval of an update that has one.
    fn accept_licence(
        &mut self,
        update: &str,
        revision: i32,
        licence: &str,
    ) -> impl Future<Output = Result<(), ServerError>> + Send;

    /// The account the server records changes under, when the transport decides it (the web
    /// service's authenticated account); `None` where the caller's `admin` text is written.
    fn account(&self) -> Option<&str> {
        None
    }

    /// The server's own id and its downstream-server table (read-only; discovery).
    fn downstream(&mut self) -> impl Future<Output = Result<Downstream, ServerError>> + Send;
}

/// A failed call to a server (its SUSDB or its web service), already sorted into worth-retrying
/// or not.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ServerError {
    pub transient: bool,
    /// The SQL Server error number, when the server sent one.
    pub code: Option<u32>,
    pub message: String,
}

impl ServerError {
    pub fn permanent(message: impl Into<String>) -> Self {
        ServerError {
            transient: false,
            code: None,
            message: message.into(),
        }
    }

    /// Worth another try: the connection, not the request, failed.
    pub fn transient(message: impl Into<String>) -> Self {
        ServerError {
            transient: true,
            code: None,
            message: message.into(),
        }
    }

    pub fn timeout(what: &str, after: Duration) -> Self {
        ServerError::transient(format!("{what} timed out after {} ms", after.as_millis()))
    }
}

/// One revision of the update (`tbRevision`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revision {
    pub number: i32,
    pub latest: bool,
}

/// One live approval (`tbDeployment`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    pub deployment_id: i32,
    pub revision: i32,
    pub target_group: String,
    /// `TargetGroupTypeID`: 0 a computer group (what clients see), 1 the Downstream Servers
    /// group (`susdb::target_group_type`).
    #[serde(default)]
    pub target_group_type: i32,
    pub action: i32,
}

impl Approval {
    /// An approval for a computer target group: what GetSyncInfo reads, and what the fault and
    /// the repair are about.
    pub fn for_computers(&self) -> bool {
        self.target_group_type == target_group_type::COMPUTER
    }
}

/// What the probe reads: the server's configuration, the update's revisions and approvals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observed {
    /// The SQL Server's version; empty for a server read through its web service.
    pub sql_version: String,
    pub schema_version: Option<i32>,
    /// The WSUS build the server reports (`GetServerVersion`); `None` over SQL, where SUSDB
    /// keeps no documented record of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wsus_version: Option<String>,
    /// `GetCurrentUserRole` over the web service: a number whose meaning is not public.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<i64>,
    pub replica: bool,
    pub upstream_server: Option<String>,
    pub upstream_port: Option<i32>,
    pub sync_from_microsoft_update: bool,
    /// `None`: the update is not on this server.
    pub update: Option<UpdateState>,
    /// What the connection's TLS settled on; `None` without TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Negotiated>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateState {
    pub revisions: Vec<Revision>,
    pub declined: bool,
    pub approvals: Vec<Approval>,
    /// The id of the update's licence agreement while its acceptance is still required (an
    /// approval is refused until then: IUpdate.RequiresLicenseAgreementAcceptance, ms751998).
    /// Read over the web service only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub licence: Option<String>,
    /// The latest revision is expired (PublicationState 1): WSUS refuses to approve it. Read
    /// over the web service only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub expired: bool,
}

impl UpdateState {
    /// The revision the approval goes on: the highest `RevisionNumber` flagged latest (WSUS
    /// should flag one; when several are, the newest is the one clients are offered).
    pub fn latest_revision(&self) -> Option<i32> {
        self.revisions
            .iter()
            .filter(|r| r.latest)
            .map(|r| r.number)
            .max()
    }

    /// The approvals for computer target groups (`TargetGroupTypeID` 0).
    pub fn computer_approvals(&self) -> impl Iterator<Item = &Approval> {
        self.approvals.iter().filter(|a| a.for_computers())
    }

    /// The inconsistencies of susdb.md section 5 among computer-group approvals, in words;
    /// empty when consistent.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let latest = self.latest_revision();
        let stale: Vec<i32> = self
            .computer_approvals()
            .filter(|a| Some(a.revision) != latest)
            .map(|a| a.revision)
            .collect();
        if !stale.is_empty() {
            problems.push(format!("stale approval on old revision {}", join(&stale)));
        }
        let mut seen: Vec<&str> = Vec::new();
        let mut doubled: Vec<&str> = Vec::new();
        for a in self.computer_approvals() {
            if seen.contains(&a.target_group.as_str()) {
                if !doubled.contains(&a.target_group.as_str()) {
                    doubled.push(&a.target_group);
                }
            } else {
                seen.push(&a.target_group);
            }
        }
        for group in doubled {
            problems.push(format!(
                "duplicate live approvals for {}",
                group_name(group)
            ));
        }
        problems
    }

    /// What is odd on this server but neither caused by nor repaired by the tool, in words:
    /// several revisions flagged latest (susdb.md 5), and approvals WSUS keeps for its
    /// downstream servers (`TargetGroupTypeID` other than 0), which a decline may leave.
    pub fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        let flagged: Vec<i32> = self
            .revisions
            .iter()
            .filter(|r| r.latest)
            .map(|r| r.number)
            .collect();
        if flagged.len() > 1 {
            notes.push(format!(
                "{} revisions flagged latest ({}): the highest, {}, is the one approved",
                flagged.len(),
                join(&flagged),
                flagged.iter().max().copied().unwrap_or_default()
            ));
        }
        let downstream = self.approvals.iter().filter(|a| !a.for_computers()).count();
        if downstream > 0 {
            notes.push(format!(
                "{downstream} approval(s) for downstream servers (TargetGroupTypeID other than 0) \
                 left as WSUS keeps them"
            ));
        }
        notes
    }

    /// The end state of the repair: declined, with no computer-group approval left.
    pub fn repaired(&self) -> bool {
        self.declined && self.computer_approvals().next().is_none()
    }
}

fn join(numbers: &[i32]) -> String {
    numbers
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A built-in target group's name, or its GUID.
pub fn group_name(id: &str) -> String {
    let id_upper = id.to_ascii_uppercase();
    match id_upper.as_str() {
        groups::ALL_COMPUTERS => "All Computers".into(),
        groups::UNASSIGNED_COMPUTERS => "Unassigned Computers".into(),
        groups::DOWNSTREAM_SERVERS => "Downstream Servers".into(),
        _ => id.into(),
    }
}

/// Whether the approval of [`approve_detect_only`] is live on `revision`.
pub fn detect_only_approval_live(state: &UpdateState, revision: i32) -> bool {
    state.computer_approvals().any(|a| {
        a.revision == revision
            && a.action == action::DETECT_ONLY
            && a.target_group.eq_ignore_ascii_case(groups::ALL_COMPUTERS)
    })
}

/// One entry of a server's downstream-server table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registered {
    /// The DNS name it registered with.
    pub name: String,
    /// Its `ServerId`, lower case.
    pub id: String,
    /// The `ServerId` of the server it synchronizes from, when that is not the table's owner.
    pub parent: Option<String>,
    /// When it last synchronized, ISO 8601 as the server gave it.
    pub last_sync: Option<String>,
    pub replica: bool,
    pub version: String,
}

/// A server's own id and its downstream-server table.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Downstream {
    pub server_id: String,
    pub registered: Vec<Registered>,
}

/// What a TLS connection settled on: shown per server in the plan and in `verify`, and kept in
/// the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Negotiated {
    /// `TLS 1.0` ... `TLS 1.3`.
    pub version: String,
    /// The cipher suite's IANA name (`TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA`).
    pub cipher: String,
}

impl Negotiated {
    /// TLS 1.0 and 1.1: deprecated (RFC 8996), accepted only because the topology asked.
    pub fn weak(&self) -> bool {
        matches!(self.version.as_str(), "TLS 1.0" | "TLS 1.1")
    }
}

impl std::fmt::Display for Negotiated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}, {}", self.version, self.cipher)?;
        if self.weak() {
            f.write_str(" (weak: deprecated since RFC 8996)")?;
        }
        Ok(())
    }
}
