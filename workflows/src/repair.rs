//! The KB 954960 repair as an engine [`Workflow`]: each step of [`crate::kb954960`] run over a
//! server's session (its SUSDB or its web service, through the [`WsusServer`] port), and how each
//! mutation is observed for retries and resume.

use std::future::Future;
use std::sync::Arc;

use engine::{StepContext, StepError, StepOutput, StepSpec, Workflow};
use topology::{Mode, Server};

use crate::kb954960::{Step, steps_for};
use crate::reach::sql::applock::LockView;
use crate::reach::{self, ConnectOptions, Observed, ServerError, Session, UpdateState, WsusServer};

/// The facts the probe journals before the first change: what undo and resume rely on.
pub mod facts {
    /// `"replica"` or `"autonomous"`: the mode before the repair switched anything.
    pub const ORIGINAL_MODE: &str = "original_mode";
    /// The update's latest revision number, which the approval is written on.
    pub const LATEST_REVISION: &str = "latest_revision";
    /// The probe's verdict in words.
    pub const OBSERVED: &str = "observed";
    /// The id of the update's licence agreement, to accept before the approval
    /// (`--accept-eula`).
    pub const LICENCE: &str = "licence";
}

const NOT_DECLINED: &str = "not declined";

/// How a probe's observation compares with the topology and the repair's goal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The update is not on the server: nothing to do.
    NotPresent,
    /// Declined, no approvals, consistent: nothing to do.
    Repaired,
    /// Needs decline -> approve -> decline; the reasons, in words.
    NeedsRepair(Vec<String>),
}

impl Verdict {
    pub fn of(observed: &Observed) -> Verdict {
        match &observed.update {
            None => Verdict::NotPresent,
            Some(state) if state.repaired() => Verdict::Repaired,
            Some(state) => {
                let mut reasons = state.problems();
                if !state.declined {
                    reasons.push(NOT_DECLINED.into());
                }
                if reasons.is_empty() {
                    reasons.push(format!(
                        "{} live approval(s) on a declined update",
                        state.computer_approvals().count()
                    ));
                }
                Verdict::NeedsRepair(reasons)
            }
        }
    }

    /// The verdict on `observed` in words, with what is odd but not the repair's to change
    /// ([`crate::reach::UpdateState::notes`]).
    pub fn describe(observed: &Observed) -> String {
        let mut text = Verdict::of(observed).summary();
        for note in observed.update.iter().flat_map(|u| u.notes()) {
            text.push_str("; ");
            text.push_str(&note);
        }
        text
    }

    pub fn summary(&self) -> String {
        match self {
            Verdict::NotPresent => "update not present".into(),
            Verdict::Repaired => "declined and consistent".into(),
            Verdict::NeedsRepair(reasons) if reasons.len() == 1 && reasons[0] == NOT_DECLINED => {
                "consistent but not declined".into()
            }
            Verdict::NeedsRepair(reasons) => format!("BROKEN: {}", reasons.join(", ")),
        }
    }
}

/// Differences between what the topology declares and what the server says, in words.
/// `mid_repair`: our journal says this run switched the replica to autonomous, so an autonomous
/// reading is expected.
pub fn mismatches(server: &Server, observed: &Observed, mid_repair: bool) -> Vec<String> {
    let mut out = Vec::new();
    let observed_mode = if observed.replica {
        Mode::Replica
    } else {
        Mode::Autonomous
    };
    let expected_switched = mid_repair && server.mode == Mode::Replica;
    if observed_mode != server.mode && !expected_switched {
        out.push(format!(
            "mode: the topology says {}, the server says {observed_mode}",
            server.mode
        ));
    }
    match (&server.upstream, &observed.upstream_server) {
        (None, Some(actual)) if !observed.sync_from_microsoft_update => out.push(format!(
            "upstream: the topology says none (a top server syncing from Microsoft Update), the \
             server syncs from {actual}"
        )),
        (Some(declared), None) => out.push(format!(
            "upstream: the topology says {declared}, the server syncs from Microsoft Update"
        )),
        (Some(declared), Some(actual)) if !same_host(declared, actual) => out.push(format!(
            "upstream: the topology says {declared}, the server says {actual}"
        )),
        _ => {}
    }
    out
}

/// WSUS stores the upstream as typed in the console: a short name or a full DNS name.
fn same_host(a: &str, b: &str) -> bool {
    let (a, b) = (a.to_ascii_lowercase(), b.to_ascii_lowercase());
    a == b || a.split('.').next() == b.split('.').next() && (a.contains('.') != b.contains('.'))
}

/// The KB 954960 repair, over whichever transport each server's topology entry chose.
#[derive(Debug, Clone)]
pub struct Repair {
    pub update: String,
    pub connect: ConnectOptions,
    /// Written to the approvals' `@adminName` (the operator, for WSUS's own audit).
    pub admin: String,
    /// The hierarchy locks this process holds, watched: a server whose top is not held refuses
    /// to start, and each server waits for a check of its top's lock begun no earlier than its
    /// own start: two operators never repair one hierarchy at once.
    pub lock: Option<LockView>,
    /// The server's top server, by name (for the applock check).
    pub tops: Arc<std::collections::HashMap<String, String>>,
    /// `--accept-eula`: accept the update's licence where WSUS requires it before the approval
    /// (a change the plan shows); without it such a server is refused before any change.
    pub accept_licence: bool,
}

fn to_step_error(e: ServerError) -> StepError {
    if e.transient {
        StepError::transient(e.message)
    } else {
        StepError::permanent(e.message)
    }
}

async fn timed<T>(
    limit: std::time::Duration,
    what: &str,
    f: impl Future<Output = Result<T, ServerError>>,
) -> Result<T, StepError> {
    match tokio::time::timeout(limit, f).await {
        Ok(result) => result.map_err(to_step_error),
        Err(_) => Err(to_step_error(ServerError::timeout(what, limit))),
    }
}

fn step_of(spec: &StepSpec) -> Result<Step, StepError> {
    Step::parse(&spec.name)
        .ok_or_else(|| StepError::permanent(format!("unknown step `{}`", spec.name)))
}

/// Why WSUS would refuse the repair's approval on a server in `state`, in words an operator can
/// act on; `None` when it would not. Read over the web service only (the SQL probe has neither
/// flag).
pub fn approval_refusal(state: &UpdateState, accept_licence: bool) -> Option<String> {
    if state.expired {
        return Some(
            "the update is expired there (PublicationState 1) and WSUS refuses to approve an \
             expired update, so its approve step cannot run: decline it by hand in the console"
                .into(),
        );
    }
    (state.licence.is_some() && !accept_licence).then(|| {
        "the update's licence agreement is not accepted there, and WSUS refuses an approval \
         until it is: give --accept-eula to accept it before the approval (the plan shows it), \
         or accept it in the WSUS console"
            .into()
    })
}

impl Repair {
    /// Who the server records the changes under: the web service's authenticated account, or
    /// the `admin` text written over SQL.
    fn author<'a>(&'a self, c: &'a Session) -> &'a str {
        c.account().unwrap_or(&self.admin)
    }

    async fn probe(&self, c: &mut Session) -> Result<Observed, StepError> {
        timed(
            self.connect.command_timeout,
            "the probe",
            c.probe(&self.update),
        )
        .await
    }

    /// Before the server's first change: its top's lock, as a check begun no earlier than now
    /// found it. `Ok(Some(note))` when that lock was lost and taken again during the run (said
    /// in the server's journal record and the summary: another run may have changed servers of
    /// its tree meanwhile).
    async fn lock_check(&self, server: &Server) -> Result<Option<String>, StepError> {
        let Some(lock) = &self.lock else {
            return Ok(None);
        };
        lock.check.fresh(std::time::Instant::now()).await;
        let top = self.tops.get(&server.name).unwrap_or(&server.name);
        let held = lock
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(top);
        if !held {
            return Err(StepError::permanent(format!(
                "the hierarchy lock (sp_getapplock on top server {top}) is not held: nothing is changed below a top server this run could not lock, or lost the lock of"
            )));
        }
        let retaken = lock
            .retaken
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .any(|(t, _)| t == top);
        Ok(retaken.then(|| {
            format!(
                "the hierarchy lock on {top} was lost and taken again during this run: another \
                 run may have changed servers of its tree meanwhile"
            )
        }))
    }
}

impl Workflow for Repair {
    type Session = Session;

    fn steps(&self, server: &Server) -> Vec<StepSpec> {
        let steps = steps_for(server.mode);
        let switch = steps.iter().position(|s| *s == Step::SwitchToAutonomous);
        steps
            .iter()
            .map(|step| match (step, step.compensates(), switch) {
                (_, Some(_), Some(undoes)) => StepSpec::compensate(step.as_str(), undoes),
                _ if step.mutates() => StepSpec::mutate(step.as_str()),
                _ => StepSpec::read(step.as_str()),
            })
            .collect()
    }

    async fn open(&self, server: &Server) -> Result<Session, StepError> {
        reach::open(server, &self.connect)
            .await
            .map_err(to_step_error)
    }

    async fn run(
        &self,
        c: &mut Session,
        server: &Server,
        spec: &StepSpec,
        context: &StepContext,
    ) -> Result<StepOutput, StepError> {
        let limit = self.connect.command_timeout;
        match step_of(spec)? {
            Step::Probe => {
                let lock_note = self.lock_check(server).await?;
                let differences = timed(limit, "the pre-flight read", c.refusals()).await?;
                if !differences.is_empty() {
                    return Err(StepError::permanent(format!(
                        "nothing changed: {}",
                        differences.join("; ")
                    )));
                }
                let observed = self.probe(c).await?;
                // Under way in this attempt (a resumed one): the server may be switched, or found
                // declined by this attempt's own first decline, and the procedure goes on.
                let mid_repair = context.changed;
                let wrong = mismatches(server, &observed, mid_repair);
                if !wrong.is_empty() {
                    return Err(StepError::permanent(format!(
                        "the server disagrees with the topology, nothing changed: {}",
                        wrong.join("; ")
                    )));
                }
                let verdict = Verdict::of(&observed);
                let mut output = StepOutput::note(format!("was {}", Verdict::describe(&observed)));
                match (&verdict, &observed.update) {
                    (Verdict::NotPresent, _) => {
                        output.note = Some("update not present: left alone".into());
                        output.finish = true;
                    }
                    (Verdict::Repaired, _) if !mid_repair => {
                        output.note = Some("already declined and consistent: no change".into());
                        output.finish = true;
                    }
                    (_, Some(state)) => {
                        let latest = state.latest_revision().ok_or_else(|| {
                            StepError::permanent(
                                "no revision of the update is flagged latest: repair by hand (susdb.md 5)",
                            )
                        })?;
                        if let Some(refusal) = approval_refusal(state, self.accept_licence) {
                            return Err(StepError::permanent(format!(
                                "nothing changed: {refusal}"
                            )));
                        }
                        if let Some(licence) =
                            state.licence.as_ref().filter(|_| self.accept_licence)
                        {
                            output = output.with_fact(facts::LICENCE, licence.as_str());
                        }
                        if !mid_repair {
                            output = output.with_fact(facts::ORIGINAL_MODE, server.mode.as_str());
                        }
                        output = output
                            .with_fact(facts::LATEST_REVISION, latest)
                            .with_fact(facts::OBSERVED, verdict.summary());
                    }
                    (_, None) => {}
                }
                if let Some(lock_note) = lock_note {
                    output.note = Some(match output.note.take() {
                        Some(note) => format!("{note}; {lock_note}"),
                        None => lock_note,
                    });
                }
                Ok(output)
            }
            Step::SwitchToAutonomous | Step::RestoreReplica => {
                let replica = step_of(spec)? == Step::RestoreReplica;
                let now = timed(limit, spec.name.as_str(), c.set_replica_mode(replica)).await?;
                if now == replica {
                    Ok(StepOutput::default())
                } else {
                    Err(StepError::permanent(format!(
                        "ReplicaMode reads back {} after setting it to {}",
                        u8::from(now),
                        u8::from(replica)
                    )))
                }
            }
            Step::Decline => {
                timed(limit, "the decline", c.decline(&self.update, &self.admin)).await?;
                Ok(StepOutput::note(format!("as {}", self.author(c))))
            }
            Step::Approve => {
                let revision = context
                    .facts
                    .get(facts::LATEST_REVISION)
                    .and_then(serde_json::Value::as_i64)
                    .and_then(|n| i32::try_from(n).ok())
                    .ok_or_else(|| StepError::permanent("the probe recorded no latest revision"))?;
                let licence = context
                    .facts
                    .get(facts::LICENCE)
                    .and_then(serde_json::Value::as_str);
                if let Some(licence) = licence {
                    timed(
                        limit,
                        "accepting the licence",
                        c.accept_licence(&self.update, revision, licence),
                    )
                    .await?;
                }
                timed(
                    limit,
                    "the approval",
                    c.approve_detect_only(&self.update, revision, &self.admin),
                )
                .await?;
                let accepted = if licence.is_some() {
                    ", its licence accepted first (--accept-eula)"
                } else {
                    ""
                };
                Ok(StepOutput::note(format!(
                    "revision {revision}{accepted}, as {}",
                    self.author(c)
                )))
            }
            Step::Verify => {
                let observed = self.probe(c).await?;
                let mut wrong = mismatches(server, &observed, false);
                if let Verdict::NeedsRepair(reasons) = Verdict::of(&observed) {
                    wrong.extend(reasons);
                }
                if wrong.is_empty() {
                    Ok(StepOutput::default())
                } else {
                    Err(StepError::permanent(format!(
                        "verify failed: {}",
                        wrong.join("; ")
                    )))
                }
            }
        }
    }

    async fn took_effect(
        &self,
        c: &mut Session,
        _server: &Server,
        spec: &StepSpec,
        context: &StepContext,
    ) -> Result<bool, StepError> {
        let step = step_of(spec)?;
        if !step.mutates() {
            return Ok(false);
        }
        let observed = self.probe(c).await?;
        Ok(match step {
            Step::SwitchToAutonomous => !observed.replica,
            Step::RestoreReplica => observed.replica,
            Step::Decline => observed
                .update
                .as_ref()
                .is_none_or(|u| u.declined && u.computer_approvals().next().is_none()),
            Step::Approve => {
                let revision = context
                    .facts
                    .get(facts::LATEST_REVISION)
                    .and_then(serde_json::Value::as_i64)
                    .and_then(|n| i32::try_from(n).ok());
                match (&observed.update, revision) {
                    (Some(u), Some(rev)) => !u.declined && reach::detect_only_approval_live(u, rev),
                    _ => false,
                }
            }
            Step::Probe | Step::Verify => false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reach::{Approval, Revision, UpdateState};

    const ALL: &str = susdb::groups::ALL_COMPUTERS;

    fn observed(replica: bool, upstream: Option<&str>, update: Option<UpdateState>) -> Observed {
        Observed {
            tls: None,
            sql_version: "9.00.4035.00".into(),
            schema_version: Some(926),
            wsus_version: None,
            role: None,
            replica,
            upstream_server: upstream.map(str::to_string),
            upstream_port: Some(8530),
            sync_from_microsoft_update: upstream.is_none(),
            update,
        }
    }

    fn approval(id: i32, revision: i32) -> Approval {
        Approval {
            deployment_id: id,
            revision,
            target_group: ALL.into(),
            target_group_type: 0,
            action: susdb::action::INSTALL,
        }
    }

    fn update(declined: bool, approvals: Vec<Approval>) -> UpdateState {
        UpdateState {
            revisions: vec![
                Revision {
                    number: 100,
                    latest: false,
                },
                Revision {
                    number: 101,
                    latest: true,
                },
            ],
            declined,
            approvals,
            licence: None,
            expired: false,
        }
    }

    fn server(mode: Mode, upstream: Option<&str>) -> Server {
        let yaml = match upstream {
            None => "version: 1\nservers:\n  - name: hq\n    sql: { host: h }\n".to_string(),
            Some(up) => format!(
                "version: 1\nservers:\n  - name: {up}\n    sql: {{ host: h }}\n  - name: s\n    upstream: {up}\n    mode: {mode}\n    sql: {{ host: s }}\n"
            ),
        };
        let t = topology::Topology::from_bytes("t.yaml", yaml.as_bytes())
            .unwrap_or_else(|e| panic!("{e:?}"));
        t.servers()
            .last()
            .cloned()
            .unwrap_or_else(|| panic!("a server"))
    }

    #[test]
    fn the_kb954960_state_is_broken_for_both_documented_reasons() {
        let state = update(false, vec![approval(1, 100), approval(2, 101)]);
        let Verdict::NeedsRepair(reasons) = Verdict::of(&observed(false, None, Some(state))) else {
            panic!("not broken");
        };
        assert_eq!(
            reasons,
            [
                "stale approval on old revision 100",
                "duplicate live approvals for All Computers",
                "not declined"
            ]
        );
    }

    #[test]
    fn declined_without_approvals_is_repaired_and_absent_is_left_alone() {
        let state = update(true, Vec::new());
        assert_eq!(
            Verdict::of(&observed(false, None, Some(state))),
            Verdict::Repaired
        );
        assert_eq!(
            Verdict::of(&observed(false, None, None)),
            Verdict::NotPresent
        );
        let approved = update(false, vec![approval(3, 101)]);
        assert_eq!(
            Verdict::of(&observed(false, None, Some(approved))).summary(),
            "consistent but not declined"
        );
    }

    #[test]
    fn a_server_disagreeing_with_the_topology_is_named_with_both_values() {
        let replica = server(Mode::Replica, Some("wsus-hq"));
        assert!(
            mismatches(
                &replica,
                &observed(true, Some("WSUS-HQ.corp.example"), None),
                false
            )
            .is_empty()
        );
        assert_eq!(
            mismatches(&replica, &observed(false, Some("wsus-hq"), None), false),
            ["mode: the topology says replica, the server says autonomous"]
        );
        // Our own switch, journaled, explains an autonomous reading.
        assert!(mismatches(&replica, &observed(false, Some("wsus-hq"), None), true).is_empty());
        assert_eq!(
            mismatches(&replica, &observed(true, Some("wsus-other"), None), false),
            ["upstream: the topology says wsus-hq, the server says wsus-other"]
        );
        let top = server(Mode::Autonomous, None);
        assert!(mismatches(&top, &observed(false, None, None), false).is_empty());
    }
}
