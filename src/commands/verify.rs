//! `verify FILE`: the read-only proof.

use super::*;

/// `verify`: the survey, judged.
pub(crate) fn run(
    file: &Path,
    select_args: SelectArgs,
    conn: &ConnArgs,
    json: bool,
    out: &mut impl Write,
) -> Result<u8, Failure> {
    let topology = Topology::load(file)?;
    // Read-only: order does not matter, so a server may be verified without its upstream.
    let selection = select(
        &topology,
        SelectArgs {
            allow_partial: true,
            ..select_args
        },
    )?;
    let options = connect_for(&topology, &selection, conn)?;
    let surveyed =
        runtime()?.block_on(survey(&topology, &selection, &options, conn.probe_parallel));
    let text = if json {
        let mut text = serde_json::to_string_pretty(&surveyed)
            .map_err(|e| Failure::BadInput(format!("error: {e}")))?;
        text.push('\n');
        text
    } else {
        report::survey_table(&surveyed)
    };
    crate::emit(out, &text)?;
    Ok(if surveyed.iter().all(|s| s.ok) {
        exit::OK
    } else {
        exit::FAILED
    })
}
