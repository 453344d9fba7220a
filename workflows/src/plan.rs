//! The repair plan: per server, in execution order, the steps that will run. It is what a change
//! board reviews and what `apply` may be given back, so its JSON form is a stable contract
//! (`plan_version`).

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use topology::{KB954960_UPDATE_ID, Mode, Selection, Topology};

use crate::kb954960::{KB954960_UPDATE_TITLE, Step, steps_for};
use crate::reach::Observed;
use crate::survey::Surveyed;

pub const PLAN_VERSION: u32 = 1;

/// How an online plan's verdict begins for a server that could not be probed, or that its
/// probe would refuse.
const UNREACHABLE: &str = "UNREACHABLE";
const WILL_FAIL: &str = "WILL FAIL";

/// How `server` is reached, in words for the plan's reviewers.
fn via(server: &topology::Server) -> String {
    match (server.via_sql(), server.via_api()) {
        (Some(sql), _) => format!("SUSDB {}", crate::reach::sql::connect::describe(sql)),
        (_, Some(api)) => format!("web service {}", api.origin()),
        (None, None) => String::new(),
    }
}

/// A path for people: relative to the working directory when it lies below it (the plan keeps
/// the absolute path, for `apply` from any directory).
fn shown_path(path: &str) -> String {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| {
            std::path::Path::new(path)
                .strip_prefix(cwd)
                .ok()
                .map(|p| p.display().to_string())
        })
        .unwrap_or_else(|| path.to_string())
}

/// What keeps a second operator out of each selected tree ([`crate::reach::sql::applock`]).
fn locks(topology: &Topology, selection: &Selection) -> Vec<String> {
    let mut tops: Vec<topology::ServerId> = selection
        .servers
        .iter()
        .map(|&id| topology.top_of(id))
        .collect();
    tops.sort_unstable();
    tops.dedup();
    tops.into_iter()
        .map(|top| {
            let name = &topology.server(top).name;
            match crate::reach::sql::applock::lock_server(topology, top) {
                Some(on) if on == top => {
                    format!("{name}: sp_getapplock on {name}, held for the whole run")
                }
                Some(on) => format!(
                    "{name}: reached through its web service, which has no lock; sp_getapplock on \
                     {}, the first server of its tree reached through SQL, held for the whole run",
                    topology.server(on).name
                ),
                None => format!(
                    "{name}: every server of its tree is reached through the web service, which \
                     has no lock: only this state directory's lock; run wsus-reset for this tree \
                     from one machine and one state directory"
                ),
            }
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub plan_version: u32,
    /// The topology file's canonical absolute path (`apply PLAN.json` works from any directory).
    pub topology: String,
    /// `sha256:<hex>` of the topology file's bytes.
    pub fingerprint: String,
    pub update: String,
    /// `--accept-eula`: where WSUS requires the update's licence accepted before the approval,
    /// the repair accepts it (ExecuteSPAcceptEula) just before; otherwise such a server is
    /// refused at its probe.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub accept_eula: bool,
    /// What keeps a second operator out of each tree, in words, by top server.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub locks: Vec<String>,
    /// In execution order.
    pub servers: Vec<PlannedServer>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedServer {
    pub name: String,
    pub upstream: Option<String>,
    pub mode: Mode,
    pub depth: u32,
    /// How the server is reached: `SUSDB host:port/database` or `web service https://host:port`.
    #[serde(default)]
    pub via: String,
    pub steps: Vec<Step>,
    /// Selected without its upstream (`--allow-partial`): the top-down guarantee does not hold.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub upstream_not_selected: bool,
    /// What `plan --online` read from the server; `apply` refuses a saved plan when the server
    /// no longer reads the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed: Option<Observed>,
    /// The online verdict in words, and why the steps differ from the offline plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
    /// Online: whether the server still needs the KB's hotfix or SP2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hotfix: Option<String>,
}

impl Plan {
    /// The plan made from the topology alone, before anything is asked of a server.
    pub fn offline(topology: &Topology, selection: &Selection) -> Plan {
        let servers = selection
            .servers
            .iter()
            .map(|&id| {
                let server = topology.server(id);
                PlannedServer {
                    name: server.name.clone(),
                    upstream: server.upstream.clone(),
                    mode: server.mode,
                    depth: server.depth,
                    via: via(server),
                    steps: steps_for(server.mode),
                    upstream_not_selected: selection.is_partial(id),
                    observed: None,
                    verdict: None,
                    hotfix: None,
                }
            })
            .collect();
        Plan {
            plan_version: PLAN_VERSION,
            topology: topology.location(),
            fingerprint: topology.fingerprint().to_string(),
            update: topology.update().to_string(),
            accept_eula: false,
            locks: locks(topology, selection),
            servers,
        }
    }

    /// The plan after a read-only probe of every selected server (`surveyed`, in selection
    /// order): servers without the update, already repaired, or disagreeing with the topology get
    /// only the probe; an unreachable server keeps its full steps (it is retried at apply time).
    /// With `accept_eula`, a licence WSUS requires accepted is accepted before the approval;
    /// without, such a server (and one where the update is expired) will fail at its probe.
    pub fn online(
        topology: &Topology,
        selection: &Selection,
        surveyed: &[Surveyed],
        accept_eula: bool,
    ) -> Plan {
        let mut plan = Plan::offline(topology, selection);
        plan.accept_eula = accept_eula;
        for (planned, found) in plan.servers.iter_mut().zip(surveyed) {
            planned.observed = found.observed.clone();
            planned.hotfix = Some(found.hotfix.advice.clone());
            let update = found
                .observed
                .as_ref()
                .and_then(|o| o.update.as_ref())
                .filter(|_| found.needs_repair);
            let refusal = update.and_then(|u| crate::repair::approval_refusal(u, accept_eula));
            let licence_note = update
                .filter(|u| u.licence.is_some() && accept_eula)
                .map(|_| {
                    "; its licence agreement, not yet accepted, is accepted just before the \
                     approval (ExecuteSPAcceptEula, --accept-eula)"
                })
                .unwrap_or_default();
            planned.verdict = Some(match (&found.error, found.mismatches.is_empty()) {
                (None, true) if refusal.is_some() => format!(
                    "{WILL_FAIL} at probe, nothing changed: {}",
                    refusal.clone().unwrap_or_default()
                ),
                (Some(error), _) => format!("{UNREACHABLE}: {error}"),
                (None, false) => format!(
                    "{WILL_FAIL} at probe, nothing changed: {}",
                    found.mismatches.join("; ")
                ),
                (None, true) => match &found.observed {
                    Some(o) => {
                        format!(
                            "{}, {}: {}",
                            if o.replica { "replica" } else { "autonomous" },
                            if o.sql_version.is_empty() {
                                "through its web service".to_string()
                            } else {
                                format!("SQL Server {}", o.sql_version)
                            },
                            found.verdict
                        ) + licence_note
                    }
                    None => found.verdict.clone(),
                },
            });
            if refusal.is_some() {
                planned.steps = vec![Step::Probe];
            }
            if !found.mismatches.is_empty() || (found.observed.is_some() && !found.needs_repair) {
                planned.steps = vec![Step::Probe];
            }
        }
        plan
    }

    /// The servers an online plan could not vouch for: unreachable, or refused at their probe
    /// (`plan --online` exits 1 for them, and `apply` refuses such a saved plan).
    pub fn unready(&self) -> Vec<&str> {
        self.servers
            .iter()
            .filter(|s| {
                s.verdict
                    .as_deref()
                    .is_some_and(|v| v.starts_with(UNREACHABLE) || v.starts_with(WILL_FAIL))
            })
            .map(|s| s.name.as_str())
            .collect()
    }

    /// Where this (saved) plan differs from `expected`, the plan made again now from the same
    /// topology and selection (and, for an online plan, a new probe of every server), in words;
    /// empty when `apply` would do exactly what this plan says.
    pub fn differences(&self, expected: &Plan) -> Vec<String> {
        let mut out = Vec::new();
        // A saved plan may have been edited by hand: what it says is shown escaped and cut.
        let mut field = |what: &str, saved: String, now: String| {
            if saved != now {
                out.push(format!(
                    "{}: the plan says {}, now {}",
                    crate::text::printable(what, 160),
                    crate::text::printable(&saved, 120),
                    crate::text::printable(&now, 120)
                ));
            }
        };
        let upstream = |s: &PlannedServer| {
            s.upstream
                .clone()
                .unwrap_or_else(|| "none (a top server)".into())
        };
        field("update", self.update.clone(), expected.update.clone());
        field(
            "--accept-eula",
            self.accept_eula.to_string(),
            expected.accept_eula.to_string(),
        );
        field("topology", self.topology.clone(), expected.topology.clone());
        let names = |p: &Plan| {
            p.servers
                .iter()
                .map(|s| s.name.clone())
                .collect::<Vec<_>>()
                .join(", ")
        };
        if self.servers.len() != expected.servers.len()
            || self
                .servers
                .iter()
                .zip(&expected.servers)
                .any(|(a, b)| a.name != b.name)
        {
            field("servers", names(self), names(expected));
            return out;
        }
        for (saved, now) in self.servers.iter().zip(&expected.servers) {
            let name = &saved.name;
            let steps = |s: &PlannedServer| {
                s.steps
                    .iter()
                    .map(|st| st.as_str())
                    .collect::<Vec<_>>()
                    .join(" -> ")
            };
            field(&format!("{name} steps"), steps(saved), steps(now));
            field(
                &format!("{name} mode"),
                saved.mode.to_string(),
                now.mode.to_string(),
            );
            field(&format!("{name} upstream"), upstream(saved), upstream(now));
            field(
                &format!("{name} reached"),
                saved.via.clone(),
                now.via.clone(),
            );
            if saved.observed != now.observed {
                field(
                    &format!("{name} observed state"),
                    "what it read then".into(),
                    "the server reads otherwise (or the plan's observation was edited)".into(),
                );
            }
        }
        out
    }

    pub fn is_online(&self) -> bool {
        self.servers.iter().any(|s| s.verdict.is_some())
    }

    fn update_title(&self) -> &'static str {
        if self.update == KB954960_UPDATE_ID {
            KB954960_UPDATE_TITLE
        } else {
            "title not known offline"
        }
    }

    fn counts(&self) -> Counts {
        let mut c = Counts::default();
        for s in &self.servers {
            c.servers += 1;
            c.replicas += usize::from(s.mode == Mode::Replica);
            c.tops += usize::from(s.upstream.is_none());
            c.levels = c.levels.max(s.depth + 1);
            c.mutations += s.steps.iter().filter(|step| step.mutates()).count();
        }
        c
    }

    fn partial_warning(&self) -> Option<String> {
        let partial: Vec<String> = self
            .servers
            .iter()
            .filter(|s| s.upstream_not_selected)
            .map(|s| {
                format!(
                    "{} (upstream {})",
                    s.name,
                    s.upstream.as_deref().unwrap_or("-")
                )
            })
            .collect();
        (!partial.is_empty()).then(|| {
            format!(
                "WARNING: THE TOP-DOWN ORDER IS NOT GUARANTEED for {} server(s) selected without \
                 their upstream (--allow-partial): {}. Repair their upstream servers first, or \
                 their approvals may be copied back broken.",
                partial.len(),
                partial.join(", ")
            )
        })
    }

    /// Online: how many servers still need the KB's hotfix or SP2 ([`crate::hotfix::summary`]).
    pub fn hotfix_summary(&self) -> Option<String> {
        let advices: Vec<crate::hotfix::Advice> = self
            .servers
            .iter()
            .filter(|s| s.hotfix.is_some())
            .map(|s| {
                crate::hotfix::advice(s.observed.as_ref().and_then(|o| o.wsus_version.as_deref()))
            })
            .collect();
        (!advices.is_empty()).then(|| crate::hotfix::summary(&advices))
    }

    /// The plan for a terminal.
    pub fn render_text(&self) -> String {
        let c = self.counts();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Plan for {} ({})",
            shown_path(&self.topology),
            self.fingerprint
        );
        let _ = writeln!(out, "Update {} ({})", self.update, self.update_title());
        let _ = writeln!(
            out,
            "{} servers, {} levels, {} replicas, {} top servers; {} changes in all. Each server \
             starts only after its upstream succeeded.",
            c.servers, c.levels, c.replicas, c.tops, c.mutations
        );
        if let Some(warning) = self.partial_warning() {
            let _ = writeln!(out, "\n{warning}");
        }
        if !self.locks.is_empty() {
            let _ = writeln!(out, "Hierarchy locks:");
            for lock in &self.locks {
                let _ = writeln!(out, "  {lock}");
            }
        }
        out.push('\n');
        let width = self.servers.iter().map(|s| s.name.len()).max().unwrap_or(0);
        for (i, s) in self.servers.iter().enumerate() {
            let upstream = match &s.upstream {
                None => "top server".to_string(),
                Some(up) => format!("upstream {up}"),
            };
            let flag = if s.upstream_not_selected {
                "  ! upstream not selected"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "{:>4}. {:<width$}  depth {}  {:<10}  {upstream}{flag}",
                i + 1,
                s.name,
                s.depth,
                s.mode.as_str(),
            );
            if !s.via.is_empty() {
                let _ = writeln!(out, "      via {}", s.via);
            }
            if let Some(tls) = s.observed.as_ref().and_then(|o| o.tls.as_ref()) {
                let _ = writeln!(out, "      TLS: {tls}");
            }
            if let Some(role) = s.observed.as_ref().and_then(|o| o.role) {
                let _ = writeln!(
                    out,
                    "      GetCurrentUserRole: {role} (its meaning is not public: the server \
                     refuses a non-administrator's first change, before anything changes)"
                );
            }
            if let Some(hotfix) = &s.hotfix {
                let _ = writeln!(out, "      WSUS {hotfix}");
            }
            if let Some(verdict) = &s.verdict {
                let _ = writeln!(out, "      observed: {verdict}");
            }
            let steps: Vec<&str> = s.steps.iter().map(|step| step.as_str()).collect();
            let _ = writeln!(out, "      {}", steps.join(" -> "));
        }
        if let Some(line) = self.hotfix_summary() {
            let _ = writeln!(out, "\n{line}");
        }
        if self.accept_eula {
            let _ = writeln!(
                out,
                "--accept-eula: a licence agreement WSUS requires is accepted before the approval."
            );
        }
        if c.replicas > 0 {
            let _ = writeln!(
                out,
                "\nrestore-replica runs whenever switch-to-autonomous ran, even after a failure."
            );
        }
        out
    }

    /// A review document for a change board.
    pub fn render_markdown(&self) -> String {
        let c = self.counts();
        let mut out = String::new();
        let _ = writeln!(out, "# KB 954960 repair plan\n");
        if let Some(warning) = self.partial_warning() {
            let _ = writeln!(out, "> **{warning}**\n");
        }
        let _ = writeln!(out, "| | |\n|---|---|");
        let _ = writeln!(out, "| Topology | `{}` |", shown_path(&self.topology));
        let _ = writeln!(out, "| Fingerprint | `{}` |", self.fingerprint);
        let _ = writeln!(
            out,
            "| Update | `{}` ({}) |",
            self.update,
            self.update_title()
        );
        let _ = writeln!(out, "| Servers | {} |", c.servers);
        let _ = writeln!(out, "| Levels | {} |", c.levels);
        let _ = writeln!(out, "| Replicas | {} |", c.replicas);
        let _ = writeln!(out, "| Top servers | {} |", c.tops);
        let _ = writeln!(out, "| Database changes | {} |", c.mutations);
        if let Some(line) = self.hotfix_summary() {
            let _ = writeln!(out, "| Hotfix | {line} |");
        }
        if self.accept_eula {
            let _ = writeln!(
                out,
                "| --accept-eula | a licence WSUS requires is accepted before the approval |"
            );
        }
        out.push('\n');

        if !self.locks.is_empty() {
            let _ = writeln!(out, "## Hierarchy locks\n");
            for lock in &self.locks {
                let _ = writeln!(out, "- {lock}");
            }
            out.push('\n');
        }
        let _ = writeln!(out, "## Order\n");
        let _ = writeln!(
            out,
            "Servers run top-down: a server starts only after its upstream finished successfully, \
             because a replica copies its approvals from its upstream. Within a level, servers \
             run in parallel.\n"
        );
        let mut level_start = 0;
        while level_start < self.servers.len() {
            let depth = self.servers[level_start].depth;
            let level_end = self.servers[level_start..]
                .iter()
                .position(|s| s.depth != depth)
                .map_or(self.servers.len(), |k| level_start + k);
            let _ = writeln!(out, "### Level {depth}\n");
            let _ = writeln!(
                out,
                "| # | Server | Upstream | Mode | Reached through | Steps |\n|---|---|---|---|---|---|"
            );
            for (k, s) in self.servers[level_start..level_end].iter().enumerate() {
                let steps: Vec<&str> = s.steps.iter().map(|step| step.as_str()).collect();
                let upstream = match (&s.upstream, s.upstream_not_selected) {
                    (None, _) => "(top server)".to_string(),
                    (Some(up), false) => up.clone(),
                    (Some(up), true) => format!("{up} **(not selected)**"),
                };
                let observed = s
                    .verdict
                    .as_ref()
                    .map(|v| format!("<br>observed: {v}"))
                    .unwrap_or_default();
                let tls = s
                    .observed
                    .as_ref()
                    .and_then(|o| o.tls.as_ref())
                    .map(|t| {
                        let weak = if t.weak() { " **(weak)**" } else { "" };
                        format!("<br>{}, {}{weak}", t.version, t.cipher)
                    })
                    .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "| {} | {} | {upstream} | {} | {}{tls} | {}{observed} |",
                    level_start + k + 1,
                    s.name,
                    s.mode,
                    s.via,
                    steps.join(" -> ")
                );
            }
            out.push('\n');
            level_start = level_end;
        }

        let _ = writeln!(out, "## What each step changes\n");
        let _ = writeln!(
            out,
            "| Step | Through the SUSDB | Through the web service |\n|---|---|---|"
        );
        let mut listed = Vec::new();
        for step in steps_for(Mode::Replica) {
            if !listed.contains(&step) {
                listed.push(step);
                let _ = writeln!(
                    out,
                    "| `{step}` | {} | {} |",
                    step.effect(),
                    step.api_effect()
                );
            }
        }
        out.push('\n');

        let _ = writeln!(out, "## How a failure is contained and undone\n");
        for line in [
            "A step that fails with a transient error (lost connection, timeout, deadlock) is retried with capped exponential backoff; a permanent error fails the server.",
            "A failed server's `restore-replica` still runs if it was switched to autonomous, so no replica is left autonomous.",
            "The failed server's whole downstream subtree is skipped and reported `skipped: upstream <name> failed`; other branches go on.",
            "Every change is written to a write-ahead journal (intent before, outcome after, flushed to disk) before it is sent; after a crash or Ctrl-C, `wsus-reset resume` observes each unfinished server and completes its steps or its compensation.",
            "The end state of every server is declined with no approvals, which is where the manual KB 954960 workaround also ends; nothing else is changed.",
        ] {
            let _ = writeln!(out, "- {line}");
        }
        out
    }
}

#[derive(Debug, Default)]
struct Counts {
    servers: usize,
    levels: u32,
    replicas: usize,
    tops: usize,
    mutations: usize,
}
