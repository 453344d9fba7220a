//! The steps of the KB 954960 repair on one server, and what each changes in SUSDB.

use std::fmt;

use serde::{Deserialize, Serialize};
use topology::Mode;

pub use susdb::KB954960_UPDATE_TITLE;

/// One step of the repair on one server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    Probe,
    SwitchToAutonomous,
    Decline,
    Approve,
    RestoreReplica,
    Verify,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Probe => "probe",
            Step::SwitchToAutonomous => "switch-to-autonomous",
            Step::Decline => "decline",
            Step::Approve => "approve",
            Step::RestoreReplica => "restore-replica",
            Step::Verify => "verify",
        }
    }

    pub fn parse(name: &str) -> Option<Step> {
        [
            Step::Probe,
            Step::SwitchToAutonomous,
            Step::Decline,
            Step::Approve,
            Step::RestoreReplica,
            Step::Verify,
        ]
        .into_iter()
        .find(|s| s.as_str() == name)
    }

    /// Whether the step writes to SUSDB.
    pub fn mutates(self) -> bool {
        !matches!(self, Step::Probe | Step::Verify)
    }

    /// A compensation runs whenever the step it undoes ran, even after a failure.
    pub fn compensates(self) -> Option<Step> {
        (self == Step::RestoreReplica).then_some(Step::SwitchToAutonomous)
    }

    /// What the step does to the database, for plans and change-board documents.
    pub fn effect(self) -> &'static str {
        match self {
            Step::Probe => {
                "read-only: the procedures' parameters and the tables' columns (sys.parameters, \
                 sys.columns), SQL Server and SUSDB versions, ReplicaMode, upstream server name, \
                 the update's revisions, approvals and declined state; stops the server if its \
                 schema is not the one wsus-reset knows or it disagrees with the topology"
            }
            Step::SwitchToAutonomous => {
                "records the original mode in the journal, then sets tbConfigurationC.ReplicaMode \
                 = 0 and reads it back (the running WSUS service keeps its cached setting)"
            }
            Step::Decline => {
                "spDeclineUpdate @failIfReplica = 1: every live approval of every revision \
                 (tbDeployment) moves to tbDeadDeployment"
            }
            Step::Approve => {
                "spDeployUpdate @actionID = 2 (detect only), All Computers, the highest revision \
                 flagged latest, @isAssigned = 1, @failIfReplica = 1, no @deadline: writes one \
                 tbDeployment row"
            }
            Step::RestoreReplica => {
                "sets tbConfigurationC.ReplicaMode = 1 and reads it back; runs whenever \
                 switch-to-autonomous ran, even after a failure"
            }
            Step::Verify => {
                "read-only: the update is declined, no computer-group approval remains \
                 (TargetGroupTypeID 0; WSUS keeps the Downstream Servers group's own), and the \
                 mode equals the original"
            }
        }
    }
    /// What this step does to a server reached through its web service (ApiRemoting30).
    pub fn api_effect(self) -> &'static str {
        match self {
            Step::Probe => {
                "read-only: GetCurrentUserRole at login (stops the server on 0, no role), the \
                 server's WSDL (stops the server if it lacks an operation or parameter the repair \
                 sends), GetServerVersion, ExecuteSPGetConfiguration (ReplicaMode, upstream), \
                 the update's revisions (ExecuteSPGetRevisions, or one by one where the server \
                 lacks it) with their licence and expiry, ExecuteSPGetDeploymentsByUpdate1 for \
                 each revision; stops the server if it disagrees with the topology, or if WSUS \
                 would refuse the approval (expired, or a licence not accepted without \
                 --accept-eula)"
            }
            Step::SwitchToAutonomous => {
                "records the original mode in the journal, then ExecuteSPSetConfiguration with \
                 the configuration row as read and ReplicaMode false (the language lists empty, \
                 the product keys as ExecuteSPGetProgramKeys reads them), and reads it back"
            }
            Step::Decline => {
                "ExecuteSPDeclineUpdate, failIfReplica true, adminName the authenticated account \
                 (IUpdate.Decline)"
            }
            Step::Approve => {
                "ExecuteSPDeployUpdate1: the highest revision flagged latest, action 2 (not \
                 approved / detect only), All Computers, DateTime.MaxValue as the deadline (what \
                 the API's Approve sends), isAssigned true, adminName the authenticated account \
                 (IUpdate.Approve); with --accept-eula, ExecuteSPAcceptEula first where the \
                 licence is not yet accepted"
            }
            Step::RestoreReplica => {
                "ExecuteSPSetConfiguration with ReplicaMode true, read back; runs whenever \
                 switch-to-autonomous ran, even after a failure"
            }
            Step::Verify => {
                "read-only: as the probe; the update is declined, no computer-group approval \
                 remains, and the mode equals the original"
            }
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The ordered steps for a server in `mode`: decline -> approve -> decline, wrapped in the switch to
/// autonomous and back for a replica (which refuses approval changes otherwise).
pub fn steps_for(mode: Mode) -> Vec<Step> {
    match mode {
        Mode::Autonomous => vec![
            Step::Probe,
            Step::Decline,
            Step::Approve,
            Step::Decline,
            Step::Verify,
        ],
        Mode::Replica => vec![
            Step::Probe,
            Step::SwitchToAutonomous,
            Step::Decline,
            Step::Approve,
            Step::Decline,
            Step::RestoreReplica,
            Step::Verify,
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_is_switched_to_autonomous_and_back_around_the_approval_changes() {
        let names: Vec<&str> = steps_for(Mode::Replica)
            .into_iter()
            .map(Step::as_str)
            .collect();
        assert_eq!(
            names,
            [
                "probe",
                "switch-to-autonomous",
                "decline",
                "approve",
                "decline",
                "restore-replica",
                "verify"
            ]
        );
    }

    #[test]
    fn an_autonomous_server_keeps_its_mode() {
        let steps = steps_for(Mode::Autonomous);
        assert!(!steps.contains(&Step::SwitchToAutonomous));
        assert!(!steps.contains(&Step::RestoreReplica));
        assert_eq!(steps.iter().filter(|s| **s == Step::Decline).count(), 2);
    }

    #[test]
    fn only_restore_replica_is_a_compensation() {
        for step in steps_for(Mode::Replica) {
            let expected = (step == Step::RestoreReplica).then_some(Step::SwitchToAutonomous);
            assert_eq!(step.compensates(), expected);
        }
    }
}
