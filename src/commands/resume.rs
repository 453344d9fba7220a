//! `resume`: finishes the newest unfinished run of a state directory.

use super::*;

pub(crate) fn run(run: &RunArgs, conn: &ConnArgs, out: &mut impl Write) -> Result<u8, Failure> {
    let pending = engine::pending_run(&run.state_dir)
        .map_err(|e| engine_failure(e, &resume_command(run, conn)))?;
    let Some(replay) = pending else {
        return Err(Failure::BadInput(format!(
            "error: there is no unfinished run in {} to resume",
            run.state_dir.display()
        )));
    };
    let topology = Arc::new(Topology::load(Path::new(&replay.topology))?);
    let ids = replay
        .servers
        .iter()
        .filter_map(|name| topology.find(name))
        .collect();
    let selection = Selection {
        servers: ids,
        partial: Vec::new(),
    };
    let options = connect_for(&topology, &selection, conn)?;
    let rt = runtime()?;
    let report = rt.block_on(run_engine(
        topology,
        selection,
        run,
        options,
        true,
        resume_command(run, conn),
    ))?;
    finish(&report, run, conn, out)
}
