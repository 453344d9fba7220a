//! What one server offers a Windows Update client, and when its `SyncUpdates` throws the KB
//! 954960 fault: the revisions around the Office 2003 SP1 update, their prerequisite graph, the
//! deployments a client's target groups see, and the server's computation of what is new, out
//! of scope and truncated (MS-WUSP 3.1.1, 3.1.5.7). Pure: it may not touch HTTP or the state file.
//!
//! Sources and what is made up:
//! - The Microsoft company category `56309036-4C77-4DD9-951A-99EE9C246A94` is the root a real
//!   WS2025 server sent a client first (CaddyGlow/wsus-rs `docs/fixtures/wsus-m0-native/scan/
//!   000006/response.body`, with the core fragment's form). The Office family and the Office 2003
//!   product are the IDs public admin scripts use (`shared/docs/wsus-client-protocol.md` Q2).
//! - D359F493's prerequisites are not public: here the Office 2003 product and an "Office 2003
//!   installed" detectoid (made-up ID), which is what an Office 2003 SP1 update needs in
//!   substance. A client that does not claim them never has the update in scope.
//! - A second Office 2003 update (made-up ID), not approved (a PreDeploymentCheck deployment for
//!   All Computers, as every unapproved update has): it keeps the Office 2003 categories in a
//!   client's scope after D359F493 is declined, as the other Office 2003 updates of a real
//!   server do. Without it a repaired server would offer nothing Office at all.
//! - Which dictionary key collides in `GetSyncInfo` is open question 1: two approvals of two
//!   revisions of one update share only the update's local ID, so the lab logs that.
//! - Whether the fault needs the client in the group of the colliding approvals, or fires for
//!   any client, is open question 2: the lab takes the case that makes a scan prove less, only
//!   the groups the client is in (All Computers and its own).
//! - Revision IDs are local to each server (MS-WUSP 3.1.1): the update's local ID plus a small
//!   offset, next to its own revisions'.

use std::collections::BTreeSet;

use quick_xml::events::{BytesEnd, BytesStart, Event};
use susdb::{KB954960_UPDATE_ID, groups, target_group_type};

use crate::model::ServerDb;

pub(crate) const MICROSOFT: &str = "56309036-4C77-4DD9-951A-99EE9C246A94";
pub(crate) const OFFICE: &str = "477B856E-65C4-4473-B621-A8B230BB70D9";
pub(crate) const OFFICE_2003: &str = "1403F223-A63F-F572-82BA-C92391218055";
/// Made up: "Office 2003 is installed".
pub(crate) const OFFICE_2003_DETECTOID: &str = "0FF1CE03-D7EC-4A11-B000-000000000003";
/// Made up: another Office 2003 update, never approved.
pub(crate) const OFFICE_2003_OTHER: &str = "0FF1CE03-0A7E-4B00-B000-000000000005";

/// `/Update/Properties/@UpdateType` (MS-WUSP 3.1.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A category, with its `CategoryType`.
    Category(&'static str),
    Detectoid,
    Software,
}

#[derive(Debug, Clone)]
struct Entry {
    revision_id: i32,
    update_id: &'static str,
    revision_number: i32,
    kind: Kind,
    /// Conjunctive normal form: every clause needs one of its updates installed.
    prerequisites: Vec<Vec<&'static str>>,
}

/// A deployment as `UpdateInfo.Deployment` carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Deployment {
    pub(crate) id: i32,
    /// `DeploymentAction`.
    pub(crate) action: &'static str,
    pub(crate) is_assigned: bool,
    pub(crate) last_change: String,
}

/// One revision sent to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Offer {
    pub(crate) revision_id: i32,
    pub(crate) deployment: Deployment,
    pub(crate) is_leaf: bool,
    /// The core fragment (MS-WUSP 3.1.1.1): what a client reads the update's identity and type
    /// from.
    pub(crate) xml: String,
}

/// What `SyncUpdates` answers, short of its cookie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Sync {
    Answer {
        new_updates: Vec<Offer>,
        out_of_scope: Vec<i32>,
        truncated: bool,
    },
    /// `GetSyncInfo`'s `Hashtable.Add` threw: two approvals of the update on one group.
    DuplicateKey { key: i32 },
}

/// A client's request, as the server reads it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scan<'a> {
    pub(crate) installed_non_leaf: &'a [i32],
    pub(crate) other_cached: &'a [i32],
    /// The group besides All Computers the client is in (a group ID).
    pub(crate) group_id: &'a str,
    /// The server has hotfix 954960 or SP2: it keeps one approval per update and never throws.
    pub(crate) fixed: bool,
    /// `NewUpdates` per answer at most (WSUS: 200, MS-WUSP note 55).
    pub(crate) page: usize,
}

fn entries(db: &ServerDb) -> Vec<Entry> {
    let base = db.local_update_id;
    let office = vec![vec![OFFICE_2003], vec![OFFICE_2003_DETECTOID]];
    let mut all = vec![
        Entry {
            revision_id: base + 3,
            update_id: MICROSOFT,
            revision_number: 101,
            kind: Kind::Category("Company"),
            prerequisites: Vec::new(),
        },
        Entry {
            revision_id: base + 4,
            update_id: OFFICE,
            revision_number: 101,
            kind: Kind::Category("ProductFamily"),
            prerequisites: vec![vec![MICROSOFT]],
        },
        Entry {
            revision_id: base + 5,
            update_id: OFFICE_2003,
            revision_number: 101,
            kind: Kind::Category("Product"),
            prerequisites: vec![vec![OFFICE]],
        },
        Entry {
            revision_id: base + 6,
            update_id: OFFICE_2003_DETECTOID,
            revision_number: 100,
            kind: Kind::Detectoid,
            prerequisites: Vec::new(),
        },
        Entry {
            revision_id: base + 7,
            update_id: OFFICE_2003_OTHER,
            revision_number: 100,
            kind: Kind::Software,
            prerequisites: office.clone(),
        },
    ];
    if db.update_present {
        all.extend(db.revisions.iter().map(|r| Entry {
            revision_id: r.revision_id,
            update_id: KB954960_UPDATE_ID,
            revision_number: r.revision_number,
            kind: Kind::Software,
            prerequisites: office.clone(),
        }));
    }
    all
}

/// The dependency-free time every lab deployment was last changed at: the model keeps none.
const LAST_CHANGE: &str = "2008-07-08";

fn action_name(action_id: i32) -> &'static str {
    match action_id {
        susdb::action::INSTALL => "Install",
        susdb::action::UNINSTALL => "Uninstall",
        susdb::action::BLOCK => "Block",
        // "Not approved" (detect only): evaluated and reported, not offered.
        _ => "PreDeploymentCheck",
    }
}

/// The core fragment of `entry`, written by an XML writer.
fn core_xml(entry: &Entry) -> String {
    let mut w = quick_xml::Writer::new(Vec::new());
    let written = (|| -> std::io::Result<()> {
        let mut identity = BytesStart::new("UpdateIdentity");
        identity.push_attribute(("UpdateID", entry.update_id));
        identity.push_attribute(("RevisionNumber", entry.revision_number.to_string().as_str()));
        w.write_event(Event::Empty(identity))?;
        let kind = match entry.kind {
            Kind::Category(_) => "Category",
            Kind::Detectoid => "Detectoid",
            Kind::Software => "Software",
        };
        let mut properties = BytesStart::new("Properties");
        properties.push_attribute(("UpdateType", kind));
        w.write_event(Event::Empty(properties))?;
        if !entry.prerequisites.is_empty() {
            w.write_event(Event::Start(BytesStart::new("Relationships")))?;
            w.write_event(Event::Start(BytesStart::new("Prerequisites")))?;
            for clause in &entry.prerequisites {
                let any = clause.len() > 1;
                if any {
                    w.write_event(Event::Start(BytesStart::new("AtLeastOne")))?;
                }
                for update in clause {
                    let mut id = BytesStart::new("UpdateIdentity");
                    id.push_attribute(("UpdateID", *update));
                    w.write_event(Event::Empty(id))?;
                }
                if any {
                    w.write_event(Event::End(BytesEnd::new("AtLeastOne")))?;
                }
            }
            w.write_event(Event::End(BytesEnd::new("Prerequisites")))?;
            w.write_event(Event::End(BytesEnd::new("Relationships")))?;
        }
        if let Kind::Category(category) = entry.kind {
            let mut data = BytesStart::new("HandlerSpecificData");
            data.push_attribute(("type", "Category"));
            w.write_event(Event::Start(data))?;
            let mut info = BytesStart::new("CategoryInformation");
            info.push_attribute(("CategoryType", category));
            w.write_event(Event::Empty(info))?;
            w.write_event(Event::End(BytesEnd::new("HandlerSpecificData")))?;
        }
        Ok(())
    })();
    debug_assert!(written.is_ok(), "writing to a Vec does not fail");
    String::from_utf8_lossy(&w.into_inner()).into_owned()
}

/// `SyncUpdates` on `db` for `scan` (MS-WUSP 3.1.5.7): the revisions deployed to the client's
/// groups with their prerequisites, those whose prerequisites its installed non-leaf revisions
/// satisfy, less what it has cached; one revision per update.
pub(crate) fn sync(db: &ServerDb, scan: &Scan) -> Sync {
    let entries = entries(db);
    let in_group = |group: &str| {
        group.eq_ignore_ascii_case(groups::ALL_COMPUTERS)
            || group.eq_ignore_ascii_case(scan.group_id)
    };
    // The update's live approvals that reach this client.
    let approvals: Vec<&crate::model::Deployment> = db
        .deployments
        .iter()
        .filter(|d| d.target_group_type_id == target_group_type::COMPUTER)
        .filter(|d| in_group(&d.target_group_id))
        .collect();
    let installed: BTreeSet<i32> = scan.installed_non_leaf.iter().copied().collect();
    let installed_updates: BTreeSet<&str> = entries
        .iter()
        .filter(|e| installed.contains(&e.revision_id))
        .map(|e| e.update_id)
        .collect();
    let satisfied = |e: &Entry| {
        e.prerequisites
            .iter()
            .all(|clause| clause.iter().any(|u| installed_updates.contains(u)))
    };
    // Deployed software: the update's latest approved revision, and the unapproved companion.
    let mut deployed: Vec<(&Entry, Deployment)> = Vec::new();
    let update_revisions: Vec<&Entry> = entries
        .iter()
        .filter(|e| e.update_id == KB954960_UPDATE_ID)
        .collect();
    let mut update_approvals: Vec<(&Entry, &crate::model::Deployment)> = approvals
        .iter()
        .filter_map(|d| {
            let entry = update_revisions
                .iter()
                .find(|e| e.revision_id == d.revision_id)?;
            Some((*entry, *d))
        })
        .collect();
    update_approvals.sort_by_key(|(e, _)| std::cmp::Reverse(e.revision_number));
    if let Some((entry, _)) = update_approvals.first()
        && satisfied(entry)
    {
        // GetSyncInfo adds one deployment per update and group to its table: a second approval
        // of the update on the same group is the duplicate key of KB 954960.
        let mut seen: Vec<&str> = Vec::new();
        for (_, d) in &update_approvals {
            let group = d.target_group_id.as_str();
            if seen.iter().any(|g| g.eq_ignore_ascii_case(group)) && !scan.fixed {
                return Sync::DuplicateKey {
                    key: db.local_update_id,
                };
            }
            seen.push(group);
        }
    }
    if let Some((entry, d)) = update_approvals.first() {
        deployed.push((
            entry,
            Deployment {
                id: d.deployment_id,
                action: action_name(d.action_id),
                is_assigned: d.is_assigned,
                last_change: LAST_CHANGE.into(),
            },
        ));
    }
    if let Some(other) = entries.iter().find(|e| e.update_id == OFFICE_2003_OTHER) {
        deployed.push((
            other,
            Deployment {
                id: db.local_update_id + 499,
                action: "PreDeploymentCheck",
                is_assigned: true,
                last_change: LAST_CHANGE.into(),
            },
        ));
    }
    // The deployed revisions with their prerequisites, transitively (by update ID: the latest
    // revision of each, MS-WUSP 3.1.1 Prerequisite Table).
    let mut needed: Vec<(&Entry, Deployment)> = deployed.clone();
    let mut wanted: Vec<&str> = deployed
        .iter()
        .flat_map(|(e, _)| e.prerequisites.iter().flatten().copied())
        .collect();
    while let Some(update) = wanted.pop() {
        if needed.iter().any(|(e, _)| e.update_id == update) {
            continue;
        }
        if let Some(entry) = entries.iter().find(|e| e.update_id == update) {
            wanted.extend(entry.prerequisites.iter().flatten().copied());
            needed.push((
                entry,
                Deployment {
                    // Dependencies carry the Evaluate action (MS-WUSP 3.1.5.7) and no
                    // deployment of their own: the ID is made up.
                    id: 0,
                    action: "Evaluate",
                    is_assigned: true,
                    last_change: LAST_CHANGE.into(),
                },
            ));
        }
    }
    needed.retain(|(e, _)| satisfied(e));
    let is_leaf = |e: &Entry| {
        !entries.iter().any(|other| {
            other
                .prerequisites
                .iter()
                .flatten()
                .any(|u| *u == e.update_id)
        })
    };
    let cached: BTreeSet<i32> = installed.iter().chain(scan.other_cached).copied().collect();
    let mut new_updates: Vec<Offer> = needed
        .iter()
        .filter(|(e, _)| !cached.contains(&e.revision_id))
        .map(|(e, d)| Offer {
            revision_id: e.revision_id,
            deployment: d.clone(),
            is_leaf: is_leaf(e),
            xml: core_xml(e),
        })
        .collect();
    // Roots and other non-leaf revisions first, as a client needs them to go on.
    new_updates.sort_by_key(|o| (o.is_leaf, o.revision_id));
    let truncated = new_updates.len() > scan.page;
    new_updates.truncate(scan.page);
    let out_of_scope = cached
        .into_iter()
        .filter(|id| !needed.iter().any(|(e, _)| e.revision_id == *id))
        .collect();
    Sync::Answer {
        new_updates,
        out_of_scope,
        truncated,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Seed;

    fn scan<'a>(installed: &'a [i32], fixed: bool) -> Scan<'a> {
        Scan {
            installed_non_leaf: installed,
            other_cached: &[],
            group_id: groups::UNASSIGNED_COMPUTERS,
            fixed,
            page: 200,
        }
    }

    fn ids(sync: &Sync) -> Vec<i32> {
        match sync {
            Sync::Answer { new_updates, .. } => new_updates.iter().map(|o| o.revision_id).collect(),
            Sync::DuplicateKey { .. } => panic!("{sync:?}"),
        }
    }

    /// The client's loop (MS-WUSP 3.1.5.7): claim every non-leaf revision received, cache the
    /// others, and ask again until nothing new comes.
    fn scan_to_the_end(db: &ServerDb, fixed: bool) -> (Vec<i32>, Option<Sync>) {
        let (mut installed, mut other, mut seen) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..10 {
            let mut request = scan(&installed, fixed);
            request.other_cached = &other;
            let answer = sync(db, &request);
            let Sync::Answer { new_updates, .. } = &answer else {
                return (seen, Some(answer));
            };
            if new_updates.is_empty() {
                return (seen, None);
            }
            for offer in new_updates {
                seen.push(offer.revision_id);
                if offer.is_leaf {
                    other.push(offer.revision_id);
                } else {
                    installed.push(offer.revision_id);
                }
            }
        }
        panic!("the scan did not end");
    }

    #[test]
    fn a_client_claiming_nothing_gets_the_roots_only() {
        let db = ServerDb::seeded(Seed::Broken, 0, false, None, false);
        let base = db.local_update_id;
        assert_eq!(ids(&sync(&db, &scan(&[], false))), [base + 3, base + 6]);
    }

    #[test]
    fn the_broken_update_throws_once_its_prerequisites_are_claimed() {
        let db = ServerDb::seeded(Seed::Broken, 2, false, None, false);
        let (seen, end) = scan_to_the_end(&db, false);
        let base = db.local_update_id;
        assert_eq!(seen, [base + 3, base + 6, base + 4, base + 5]);
        assert_eq!(
            end,
            Some(Sync::DuplicateKey {
                key: db.local_update_id
            })
        );
    }

    #[test]
    fn a_fixed_server_sends_the_latest_revision_alone() {
        let db = ServerDb::seeded(Seed::Broken, 0, false, None, false);
        let (seen, end) = scan_to_the_end(&db, true);
        assert_eq!(end, None);
        let latest = db
            .revisions
            .iter()
            .find(|r| r.is_latest)
            .map(|r| r.revision_id);
        assert!(seen.contains(&latest.unwrap_or_default()));
        assert!(
            !seen.contains(&db.revisions[0].revision_id),
            "one revision per update"
        );
    }

    #[test]
    fn a_declined_update_is_out_of_scope_while_office_2003_stays_in() {
        let db = ServerDb::seeded(Seed::Healthy, 0, false, None, false);
        let (seen, end) = scan_to_the_end(&db, false);
        assert_eq!(end, None);
        let base = db.local_update_id;
        assert!(seen.contains(&(base + 5)) && seen.contains(&(base + 7)));
        assert!(!seen.contains(&(base + 1)) && !seen.contains(&(base + 2)));
    }

    #[test]
    fn approvals_for_a_group_the_client_is_not_in_do_not_reach_it() {
        let mut db = ServerDb::seeded(Seed::Broken, 0, false, None, false);
        for d in &mut db.deployments {
            d.target_group_id = "5F7A8C1E-0000-4000-8000-00000000C0DE".into();
        }
        let (_, end) = scan_to_the_end(&db, false);
        assert_eq!(end, None);
    }

    #[test]
    fn pages_are_truncated_and_cached_revisions_not_sent_again() {
        let db = ServerDb::seeded(Seed::Healthy, 0, false, None, false);
        let base = db.local_update_id;
        let mut first = scan(&[], false);
        first.page = 1;
        let Sync::Answer {
            new_updates,
            truncated,
            ..
        } = sync(&db, &first)
        else {
            panic!("no answer");
        };
        assert_eq!((new_updates.len(), truncated), (1, true));
        let installed = [base + 3, base + 6, base + 4, base + 5];
        let cached = [base + 7, 4242];
        let mut again = scan(&installed, false);
        again.other_cached = &cached;
        let Sync::Answer {
            new_updates,
            out_of_scope,
            truncated,
        } = sync(&db, &again)
        else {
            panic!("no answer");
        };
        assert!(new_updates.is_empty() && !truncated);
        assert_eq!(out_of_scope, [4242]);
    }

    #[test]
    fn the_core_fragment_names_the_update_its_type_and_prerequisites() {
        let db = ServerDb::seeded(Seed::Broken, 0, false, None, false);
        let update = entries(&db)
            .into_iter()
            .find(|e| e.update_id == KB954960_UPDATE_ID)
            .map(|e| core_xml(&e))
            .unwrap_or_default();
        assert!(update.starts_with(&format!(
            "<UpdateIdentity UpdateID=\"{KB954960_UPDATE_ID}\" RevisionNumber=\"100\"/><Properties UpdateType=\"Software\"/>"
        )));
        assert!(update.contains(&format!("<UpdateIdentity UpdateID=\"{OFFICE_2003}\"/>")));
    }
}
