//! `plan FILE`: the reviewable top-down plan; with `--online`, from a read-only probe of every
//! server.

use super::*;
use crate::cli::PlanFormat;

/// What the plan is made from: the topology alone or a probe of every server, and whether it
/// accepts licences (`--accept-eula`).
pub(crate) struct Making {
    pub online: bool,
    pub accept_eula: bool,
}

pub(crate) fn run(
    file: &Path,
    format: PlanFormat,
    plan_file: Option<&Path>,
    Making {
        online,
        accept_eula,
    }: Making,
    select_args: SelectArgs,
    conn: &ConnArgs,
    out: &mut impl Write,
) -> Result<u8, Failure> {
    let topology = Topology::load(file)?;
    let selection = select(&topology, select_args)?;
    let plan = if online {
        plan_online(&topology, &selection, conn, accept_eula)?
    } else {
        Plan {
            accept_eula,
            ..Plan::offline(&topology, &selection)
        }
    };
    if let Some(path) = plan_file {
        crate::write_atomically(path, &plan_json(&plan)?)?;
    }
    let text = match format {
        PlanFormat::Text => plan.render_text(),
        PlanFormat::Json => plan_json(&plan)?,
        PlanFormat::Markdown => plan.render_markdown(),
    };
    emit(out, &text)?;
    let unready = plan.unready();
    if !unready.is_empty() {
        return Err(Failure::Exit(
            exit::FAILED,
            format!(
                "{} server(s) could not be vouched for: {} (UNREACHABLE or WILL FAIL above); `apply` refuses this plan until they are fixed or left out with --only",
                unready.len(),
                unready.join(", ")
            ),
        ));
    }
    Ok(exit::OK)
}

fn plan_json(plan: &Plan) -> Result<String, Failure> {
    let mut text = serde_json::to_string_pretty(plan)
        .map_err(|e| Failure::BadInput(format!("error: cannot encode the plan: {e}")))?;
    text.push('\n');
    Ok(text)
}

/// `plan FILE --online`: the read-only probe of every selected server, then the plan.
fn plan_online(
    topology: &Topology,
    selection: &Selection,
    conn: &ConnArgs,
    accept_eula: bool,
) -> Result<Plan, Failure> {
    let options = connect_for(topology, selection, conn)?;
    let surveyed = runtime()?.block_on(async {
        say_unlisted(topology, &options).await;
        survey(topology, selection, &options, conn.probe_parallel).await
    });
    Ok(Plan::online(topology, selection, &surveyed, accept_eula))
}
