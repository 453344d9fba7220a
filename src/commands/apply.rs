//! `apply FILE|PLAN.json`: the repair, top-down, journaled; a saved plan is the contract.

use super::*;

/// What `apply` was given: a topology, or a saved plan and the topology it names.
struct ApplyInput {
    topology: Arc<Topology>,
    selection: Selection,
    plan: Option<Plan>,
}

fn apply_input(input: &Path, select_args: SelectArgs) -> Result<ApplyInput, Failure> {
    let is_plan = input.extension().is_some_and(|e| e == "json");
    if !is_plan {
        let topology = Topology::load(input)?;
        let selection = select(&topology, select_args)?;
        return Ok(ApplyInput {
            topology: Arc::new(topology),
            selection,
            plan: None,
        });
    }
    if !select_args.only.is_empty() {
        return Err(Failure::BadInput(
            "error: a saved plan already says which servers run: drop --only, or give the topology file instead".into(),
        ));
    }
    // A plan of 100,000 servers with what each was observed to hold is a few tens of MiB.
    let bytes = topology::read_input(input, 256 << 20)
        .map_err(|e| Failure::BadInput(format!("error: {e}")))?;
    let plan: Plan = serde_json::from_slice(&bytes).map_err(|e| {
        Failure::BadInput(format!(
            "error: {} is not a plan saved by `wsus-reset plan --out`: {e}",
            input.display()
        ))
    })?;
    if plan.plan_version != workflows::PLAN_VERSION {
        return Err(Failure::BadInput(format!(
            "error: {} is plan version {}, this wsus-reset reads version {}: make the plan again",
            input.display(),
            plan.plan_version,
            workflows::PLAN_VERSION
        )));
    }
    let topology = Topology::load(Path::new(&plan.topology))?;
    if topology.fingerprint() != plan.fingerprint {
        return Err(Failure::BadInput(format!(
            "error: the topology {} changed since the plan was made ({} then, {} now): review a new plan",
            plan.topology,
            plan.fingerprint,
            topology.fingerprint()
        )));
    }
    let partial = plan.servers.iter().any(|s| s.upstream_not_selected);
    let selection = topology
        .select(&SelectOptions {
            only: plan.servers.iter().map(|s| s.name.clone()).collect(),
            with_downstream: false,
            allow_partial: partial,
        })
        .map_err(|e| Failure::BadInput(format!("error: the saved plan: {e}")))?;
    Ok(ApplyInput {
        topology: Arc::new(topology),
        selection,
        plan: Some(plan),
    })
}

/// Asks on a terminal; refuses elsewhere.
fn confirm(plan: &Plan) -> Result<(), Failure> {
    let servers = plan.servers.len();
    let changes: usize = plan
        .servers
        .iter()
        .map(|s| s.steps.iter().filter(|step| step.mutates()).count())
        .sum();
    let summary = format!(
        "About to repair {servers} server(s) of {} ({changes} database changes in all; `wsus-reset plan` shows each).",
        plan.topology
    );
    if !std::io::stdin().is_terminal() {
        return Err(Failure::BadInput(format!(
            "{summary}\nerror: refusing to change servers without --yes when not on a terminal"
        )));
    }
    report::say(&format!("{summary}\nProceed? [y/N] "));
    let mut answer = String::new();
    let _ = std::io::stdin().read_line(&mut answer);
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        Err(Failure::Exit(
            exit::BAD_INPUT,
            "not confirmed: nothing changed".into(),
        ))
    }
}

pub(crate) fn run(
    input: &Path,
    yes: bool,
    select_args: SelectArgs,
    run: &RunArgs,
    conn: &ConnArgs,
    out: &mut impl Write,
) -> Result<u8, Failure> {
    let ApplyInput {
        topology,
        selection,
        plan,
    } = apply_input(input, select_args)?;
    let options = connect_for(&topology, &selection, conn)?;
    let rt = runtime()?;
    rt.block_on(say_unlisted(&topology, &options));
    if let Some(plan) = &plan {
        // The saved plan is the contract: nobody reviewed a server it could not vouch for, and
        // apply does exactly what it says or nothing.
        let unready = plan.unready();
        if !unready.is_empty() {
            return Err(Failure::BadInput(format!(
                "error: the plan could not vouch for {}: UNREACHABLE or WILL FAIL when it was made, so nobody reviewed their state. Make a new plan once they are reachable, or leave them out (`plan --online --only ...`)",
                unready.join(", ")
            )));
        }
        let expected = if plan.is_online() {
            let now = rt.block_on(survey(&topology, &selection, &options, conn.probe_parallel));
            Plan::online(&topology, &selection, &now, run.accept_eula)
        } else {
            Plan {
                accept_eula: run.accept_eula,
                ..Plan::offline(&topology, &selection)
            }
        };
        let differences = plan.differences(&expected);
        if !differences.is_empty() {
            let shown: Vec<&str> = differences.iter().take(10).map(String::as_str).collect();
            return Err(Failure::BadInput(format!(
                "error: apply would not do what the saved plan says: {}{}. Review a new plan (`wsus-reset plan --online --out ...`).",
                shown.join("; "),
                if differences.len() > shown.len() {
                    format!("; and {} more", differences.len() - shown.len())
                } else {
                    String::new()
                }
            )));
        }
    }
    if !yes {
        confirm(
            &plan
                .clone()
                .unwrap_or_else(|| Plan::offline(&topology, &selection)),
        )?;
    }
    let report = rt.block_on(run_engine(
        Arc::clone(&topology),
        selection,
        run,
        options,
        false,
        resume_command(run, conn),
    ))?;
    finish(&report, run, conn, out)
}
