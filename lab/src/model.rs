//! The emulated SUSDB of one WSUS server: the KB 954960 update's revisions, its live and dead
//! approvals, the replica flag and the upstream name, with the semantics of the procedures the
//! tool calls (susdb.md sections 1 to 5).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use susdb::{KB954960_UPDATE_ID, groups};

/// How the lab fills each server's database at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Seed {
    /// Every server holds a stale approval on an older revision beside one on the latest: the
    /// KB 954960 state, client sync fails.
    #[default]
    Broken,
    /// Declined and consistent everywhere.
    Healthy,
    /// A deterministic variety: broken, declined and consistent, approved for install, absent.
    Mixed,
    /// Broken, and two revisions flagged `IsLatestRevision` (the anomaly susdb.md section 5
    /// names), each with an approval.
    SeveralLatest,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revision {
    pub revision_id: i32,
    pub revision_number: i32,
    pub is_latest: bool,
}

/// A row of `tbDeployment` (live) or `tbDeadDeployment` (retired).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    pub deployment_id: i32,
    pub revision_id: i32,
    pub target_group_id: String,
    /// `TargetGroupTypeID`: 0 a computer group, 1 the Downstream Servers group (susdb-audit.md
    /// item 9: WSUS's own SQL filters `TargetGroupTypeID = 0`, and its error texts speak of
    /// "Non DSS Target Group" deployments).
    #[serde(default)]
    pub target_group_type_id: i32,
    pub action_id: i32,
    pub is_assigned: bool,
    pub admin_name: String,
    /// For a retired row: who retired it (`AdminNameWhoDeleted`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_by: Option<String>,
}

/// A mutating call the server received, in order: what tests and rehearsals check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Call {
    pub procedure: String,
    pub params: serde_json::Map<String, serde_json::Value>,
}

/// A computer the client web service knows (`tbComputerTarget`; MS-WUSP 3.1.1, Client Table):
/// added by `GetAuthorizationCookie`, which "SHOULD persist the provided client information"
/// (MS-WUSP 3.1.5.3), registered by `RegisterComputer`, removed by `ExecuteSPDeleteComputer`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Computer {
    /// The ComputerID: the client's `clientId` (MS-WUSP 3.1.1 calls it "a suitable unique
    /// identifier"; whether WSUS 3.0 uses it is open question 6, the lab does).
    pub id: String,
    /// `dnsName` (`FullDomainName` in the console).
    pub dns_name: String,
    /// The target group the client asked for (client-side targeting), when it named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_group: Option<String>,
    /// The group its approvals come from besides All Computers.
    pub group_id: String,
    /// `RegisterComputer` was called.
    pub registered: bool,
    /// The last successful `SyncUpdates`, when one was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync: Option<String>,
}

/// One emulated server's database.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerDb {
    /// `tbConfigurationC.ReplicaMode`.
    pub replica_mode: bool,
    /// `tbConfigurationA.UpstreamServerName`; `None` for a server that syncs from Microsoft Update.
    pub upstream_server_name: Option<String>,
    pub upstream_port: i32,
    pub update_present: bool,
    /// What `vwMinimalUpdate.Declined` says.
    pub update_declined: bool,
    /// Whether a client's detection (GetSyncInfo) would succeed: computed, written for readers.
    #[serde(default)]
    pub client_sync_ok: bool,
    pub local_update_id: i32,
    pub revisions: Vec<Revision>,
    pub deployments: Vec<Deployment>,
    pub dead_deployments: Vec<Deployment>,
    pub next_deployment_id: i32,
    pub calls: Vec<Call>,
    /// `configurationChangeNumber` of the configuration row: counts the web service's writes.
    #[serde(default)]
    pub config_change_number: i64,
    /// The product keys the configuration holds (`ExecuteSPGetProgramKeys`), key and
    /// description; what `ExecuteSPSetConfiguration`'s `programKeys` writes.
    #[serde(default = "seeded_program_keys")]
    pub program_keys: Vec<(String, String)>,
    /// Who accepted the update's licence through `ExecuteSPAcceptEula`, when one did (a licence
    /// left unaccepted is a fault, `licence: not-accepted`).
    #[serde(default)]
    pub eula_accepted_by: Option<String>,
    /// The computers its client web service knows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub computers: Vec<Computer>,
}

/// Two made-up product keys (their real form is not public beyond the WSDL's `ProgramKey`: a
/// guid `Key` and a `Description`): what a write that wipes them would lose.
pub(crate) fn seeded_program_keys() -> Vec<(String, String)> {
    vec![
        (
            "4f7a1c52-0d3e-4b8a-9e61-2a5c7d9b0e11".into(),
            "lab product key A".into(),
        ),
        (
            "9b2e6d14-7a0c-4f35-b8d2-61e0c3a5f7d2".into(),
            "lab product key B".into(),
        ),
    ]
}

/// Why a procedure refused: a SQL Server error number and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlError {
    pub number: i32,
    pub class: u8,
    pub message: String,
}

impl SqlError {
    fn user(message: impl Into<String>) -> Self {
        SqlError {
            number: susdb::REPLICA_REFUSAL_ERROR,
            class: 16,
            message: message.into(),
        }
    }
}

impl ServerDb {
    /// The database of the `index`-th server (execution order) under `seed`. A server with
    /// downstream servers also holds an approval for the Downstream Servers group.
    pub fn seeded(
        seed: Seed,
        index: usize,
        replica: bool,
        upstream: Option<String>,
        has_downstream: bool,
    ) -> ServerDb {
        // Local ids differ per server, as on real servers (the logged dictionary key is local).
        let base = i32::try_from(index % 100_000).unwrap_or(0) * 10 + 8_000;
        let mut db = ServerDb {
            replica_mode: replica,
            upstream_server_name: upstream,
            upstream_port: 8530,
            update_present: true,
            update_declined: false,
            client_sync_ok: true,
            local_update_id: base,
            revisions: vec![
                Revision {
                    revision_id: base + 1,
                    revision_number: 100,
                    is_latest: false,
                },
                Revision {
                    revision_id: base + 2,
                    revision_number: 101,
                    is_latest: true,
                },
            ],
            deployments: Vec::new(),
            dead_deployments: Vec::new(),
            next_deployment_id: base + 500,
            calls: Vec::new(),
            config_change_number: 1,
            program_keys: seeded_program_keys(),
            eula_accepted_by: None,
            computers: Vec::new(),
        };
        let variant = match seed {
            Seed::Broken => 0,
            Seed::Healthy => 1,
            Seed::Mixed => index % 4,
            Seed::SeveralLatest => 4,
        };
        // An approval for install of All Computers on the revision with this local id.
        let approve = |db: &mut ServerDb, revision_id: i32| {
            db.push_deployment(
                revision_id,
                groups::ALL_COMPUTERS,
                susdb::action::INSTALL,
                "WSUS Server",
            );
        };
        match variant {
            0 => {
                // A stale approval on the old revision and one on the latest, same group.
                approve(&mut db, base + 1);
                approve(&mut db, base + 2);
            }
            1 => {
                approve(&mut db, base + 2);
                db.retire_all("WSUS Server");
                db.update_declined = true;
            }
            2 => approve(&mut db, base + 2),
            3 => {
                db.update_present = false;
                db.revisions.clear();
            }
            _ => {
                // Both revisions flagged latest, each approved.
                db.revisions[0].is_latest = true;
                approve(&mut db, base + 1);
                approve(&mut db, base + 2);
            }
        }
        if has_downstream && db.update_present {
            // WSUS keeps deployments for the Downstream Servers group on a server that has
            // downstream servers. Whether spDeclineUpdate retires them is not public: here they
            // survive it, the harsher case for a verdict that must ignore them.
            let latest = db
                .revisions
                .iter()
                .rev()
                .find(|r| r.is_latest)
                .map(|r| r.revision_id);
            if let Some(revision) = latest {
                db.deployments.push(Deployment {
                    deployment_id: db.next_deployment_id,
                    revision_id: revision,
                    target_group_id: groups::DOWNSTREAM_SERVERS.to_string(),
                    target_group_type_id: susdb::target_group_type::DOWNSTREAM_SERVER,
                    action_id: susdb::action::INSTALL,
                    is_assigned: true,
                    admin_name: "WSUS Server".into(),
                    deleted_by: None,
                });
                db.next_deployment_id += 1;
            }
        }
        db.refresh();
        db
    }

    fn push_deployment(&mut self, revision_id: i32, group: &str, action: i32, admin: &str) {
        self.deployments.push(Deployment {
            deployment_id: self.next_deployment_id,
            revision_id,
            target_group_id: group.to_string(),
            target_group_type_id: susdb::target_group_type::COMPUTER,
            action_id: action,
            is_assigned: true,
            admin_name: admin.to_string(),
            deleted_by: None,
        });
        self.next_deployment_id += 1;
    }

    /// Retires every computer-group approval (see [`ServerDb::seeded`] for the others).
    fn retire_all(&mut self, admin: &str) {
        let (computers, others): (Vec<Deployment>, Vec<Deployment>) = self
            .deployments
            .drain(..)
            .partition(|d| d.target_group_type_id == susdb::target_group_type::COMPUTER);
        self.deployments = others;
        for mut d in computers {
            d.deleted_by = Some(admin.to_string());
            self.dead_deployments.push(d);
        }
    }

    /// GetSyncInfo builds a table keyed per approval: two live approvals of the update for one
    /// target group (e.g. a stale one on an old revision and one on the latest) collide, and
    /// every client's detection fails with 0x8024400E.
    pub fn sync_would_succeed(&self) -> bool {
        let mut groups: Vec<&str> = self
            .deployments
            .iter()
            .filter(|d| d.target_group_type_id == susdb::target_group_type::COMPUTER)
            .map(|d| d.target_group_id.as_str())
            .collect();
        groups.sort_unstable();
        groups.windows(2).all(|w| w[0] != w[1])
    }

    pub fn refresh(&mut self) {
        self.client_sync_ok = self.sync_would_succeed();
    }

    fn check_update(&self, update_id: &str) -> Result<(), SqlError> {
        if !self.update_present || !update_id.eq_ignore_ascii_case(KB954960_UPDATE_ID) {
            return Err(SqlError::user(format!(
                "The update {update_id} does not exist."
            )));
        }
        Ok(())
    }

    fn check_replica(&self, fail_if_replica: bool) -> Result<(), SqlError> {
        if fail_if_replica && self.replica_mode {
            return Err(SqlError::user(
                "This server is a replica server. Approval changes are not allowed on a replica server.",
            ));
        }
        Ok(())
    }

    /// `spDeclineUpdate`: every live approval of every revision is retired.
    pub fn decline(
        &mut self,
        update_id: &str,
        admin: &str,
        fail_if_replica: bool,
    ) -> Result<(), SqlError> {
        self.check_update(update_id)?;
        self.check_replica(fail_if_replica)?;
        self.retire_all(admin);
        self.update_declined = true;
        self.refresh();
        Ok(())
    }

    /// `spDeployUpdate`: one approval on the given revision for the group. An approval of the same
    /// revision for the same group is replaced; one on another revision is not touched (which is
    /// how a stale approval survives a revision change).
    pub fn deploy(
        &mut self,
        update_id: &str,
        revision_number: i32,
        action_id: i32,
        group: &str,
        admin: &str,
        fail_if_replica: bool,
    ) -> Result<(), SqlError> {
        self.check_update(update_id)?;
        self.check_replica(fail_if_replica)?;
        let revision = self
            .revisions
            .iter()
            .find(|r| r.revision_number == revision_number)
            .ok_or_else(|| {
                SqlError::user(format!(
                    "Revision {revision_number} of update {update_id} does not exist."
                ))
            })?
            .revision_id;
        if !(0..=3).contains(&action_id) {
            return Err(SqlError::user(format!("Invalid action {action_id}.")));
        }
        let (same, other): (Vec<Deployment>, Vec<Deployment>) =
            self.deployments.drain(..).partition(|d| {
                d.revision_id == revision
                    && d.target_group_type_id == susdb::target_group_type::COMPUTER
                    && d.target_group_id.eq_ignore_ascii_case(group)
            });
        self.deployments = other;
        for mut d in same {
            d.deleted_by = Some(admin.to_string());
            self.dead_deployments.push(d);
        }
        self.push_deployment(revision, &group.to_ascii_uppercase(), action_id, admin);
        self.update_declined = false;
        self.refresh();
        Ok(())
    }

    pub fn set_replica_mode(&mut self, replica: bool) {
        self.replica_mode = replica;
    }

    /// A replica's synchronization from its upstream (MS-WSUSSS 3.2.4.3, Deployments
    /// Synchronization): the upstream's dead deployments are removed here, its deployments added
    /// or updated, and the updates it hides (declines) marked declined here. Revisions are
    /// matched by number (local ids differ per server); only computer-group deployments travel
    /// (the Downstream Servers group's rows are each server's own). Returns whether anything
    /// changed.
    pub fn sync_from(&mut self, upstream: &ServerDb) -> bool {
        if !upstream.update_present || !self.update_present {
            return false;
        }
        let number_of = |db: &ServerDb, id: i32| {
            db.revisions
                .iter()
                .find(|r| r.revision_id == id)
                .map(|r| r.revision_number)
        };
        let wanted: Vec<(i32, String, i32, bool)> = upstream
            .deployments
            .iter()
            .filter(|d| d.target_group_type_id == susdb::target_group_type::COMPUTER)
            .filter_map(|d| {
                let number = number_of(upstream, d.revision_id)?;
                let local = self
                    .revisions
                    .iter()
                    .find(|r| r.revision_number == number)?;
                Some((
                    local.revision_id,
                    d.target_group_id.to_ascii_uppercase(),
                    d.action_id,
                    d.is_assigned,
                ))
            })
            .collect();
        let before = (self.deployments.clone(), self.update_declined);
        let (computers, mut kept): (Vec<Deployment>, Vec<Deployment>) = self
            .deployments
            .drain(..)
            .partition(|d| d.target_group_type_id == susdb::target_group_type::COMPUTER);
        for d in computers {
            let key = (
                d.revision_id,
                d.target_group_id.to_ascii_uppercase(),
                d.action_id,
                d.is_assigned,
            );
            if wanted.contains(&key) {
                kept.push(d);
            } else {
                let mut dead = d;
                dead.deleted_by = Some("WSUS Server (replica synchronization)".into());
                self.dead_deployments.push(dead);
            }
        }
        self.deployments = kept;
        for (revision, group, action, assigned) in wanted {
            let present = self.deployments.iter().any(|d| {
                d.revision_id == revision
                    && d.target_group_id.eq_ignore_ascii_case(&group)
                    && d.action_id == action
                    && d.target_group_type_id == susdb::target_group_type::COMPUTER
            });
            if !present {
                self.push_deployment(
                    revision,
                    &group,
                    action,
                    "WSUS Server (replica synchronization)",
                );
                if let Some(d) = self.deployments.last_mut() {
                    d.is_assigned = assigned;
                }
            }
        }
        self.update_declined = upstream.update_declined;
        self.refresh();
        (self.deployments.clone(), self.update_declined) != before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPDATE: &str = KB954960_UPDATE_ID;

    #[test]
    fn the_broken_seed_fails_client_sync_and_the_repair_fixes_it() {
        let mut db = ServerDb::seeded(Seed::Broken, 3, false, None, false);
        assert!(!db.client_sync_ok);
        db.decline(UPDATE, "op", true).unwrap();
        assert!(db.client_sync_ok && db.update_declined && db.deployments.is_empty());
        db.deploy(
            UPDATE,
            101,
            susdb::action::DETECT_ONLY,
            groups::ALL_COMPUTERS,
            "op",
            true,
        )
        .unwrap();
        assert!(!db.update_declined && db.deployments.len() == 1);
        db.decline(UPDATE, "op", true).unwrap();
        assert!(db.client_sync_ok && db.update_declined && db.deployments.is_empty());
        assert_eq!(db.dead_deployments.len(), 3);
    }

    #[test]
    fn approving_the_latest_revision_alone_leaves_the_stale_approval() {
        let mut db = ServerDb::seeded(Seed::Broken, 0, false, None, false);
        db.deploy(
            UPDATE,
            101,
            susdb::action::DETECT_ONLY,
            groups::ALL_COMPUTERS,
            "op",
            true,
        )
        .unwrap();
        assert!(
            !db.client_sync_ok,
            "the stale approval on revision 100 is still live"
        );
    }

    #[test]
    fn a_replica_refuses_approval_changes_only_when_asked_to() {
        let mut db = ServerDb::seeded(Seed::Broken, 0, true, Some("up".into()), false);
        let err = db.decline(UPDATE, "op", true).unwrap_err();
        assert_eq!(err.number, 50000);
        assert!(err.message.contains("replica"));
        db.decline(UPDATE, "op", false).unwrap();
    }

    #[test]
    fn seeds_are_what_they_say() {
        let healthy = ServerDb::seeded(Seed::Healthy, 0, false, None, false);
        assert!(healthy.client_sync_ok && healthy.update_declined);
        let kinds: Vec<(bool, bool, bool)> = (0..4)
            .map(|i| {
                let db = ServerDb::seeded(Seed::Mixed, i, false, None, false);
                (db.update_present, db.update_declined, db.client_sync_ok)
            })
            .collect();
        assert_eq!(
            kinds,
            [
                (true, false, false),
                (true, true, true),
                (true, false, true),
                (false, false, true)
            ]
        );
    }

    #[test]
    fn downstream_server_approvals_survive_a_decline_and_do_not_break_client_sync() {
        let mut db = ServerDb::seeded(Seed::Broken, 0, false, None, true);
        assert_eq!(db.deployments.len(), 3);
        db.decline(UPDATE, "op", true).unwrap();
        assert!(db.client_sync_ok && db.update_declined);
        assert_eq!(db.deployments.len(), 1);
        assert_eq!(db.deployments[0].target_group_type_id, 1);
    }

    #[test]
    fn a_replica_takes_its_upstreams_approvals_and_declined_state_when_it_syncs() {
        let mut upstream = ServerDb::seeded(Seed::Broken, 0, false, None, true);
        let mut replica = ServerDb::seeded(Seed::Healthy, 1, true, Some("up".into()), false);
        assert!(replica.client_sync_ok);
        assert!(replica.sync_from(&upstream), "the broken state travels");
        assert!(!replica.client_sync_ok && !replica.update_declined);
        assert_eq!(replica.deployments.len(), 2, "computer approvals only");
        assert!(!replica.sync_from(&upstream), "nothing new the second time");
        upstream.decline(UPDATE, "op", false).unwrap();
        assert!(replica.sync_from(&upstream));
        assert!(
            replica.client_sync_ok && replica.update_declined && replica.deployments.is_empty()
        );
    }

    #[test]
    fn the_several_latest_seed_flags_two_revisions_latest() {
        let db = ServerDb::seeded(Seed::SeveralLatest, 0, false, None, false);
        assert_eq!(db.revisions.iter().filter(|r| r.is_latest).count(), 2);
        assert!(!db.client_sync_ok);
    }
}

/// The version a WSUS 3.0 SP2 server reports (3.0 RTM `3.0.6000.374`, SP1 `3.1.6001.65`:
/// MS-WSUSSS note 13).
pub(crate) const SERVER_VERSION: &str = "3.2.7600.226";

/// A stable server GUID from the server's name (the model keeps none): FNV-1a, 128 bits.
pub(crate) fn server_id(name: &str) -> String {
    let mut hash: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    for byte in name.to_ascii_lowercase().bytes() {
        hash ^= u128::from(byte);
        hash = hash.wrapping_mul(0x0000_0000_0100_0000_0000_0000_0000_013B);
    }
    guid(hash)
}

/// `n` written as a GUID (`8-4-4-4-12` lower-case hex digits).
pub(crate) fn guid(n: u128) -> String {
    let hex = format!("{n:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// The lab's whole state, as written to `--state`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateFile {
    pub servers: BTreeMap<String, ServerDb>,
}

/// The lock of the shared model. A panic while holding it cannot leave the model half-changed:
/// every change is a single call on [`ServerDb`]. Go on with the data.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
