//! `validate FILE`: every mistake in a topology file, or its summary.

use super::*;

pub(crate) fn run(file: &Path, out: &mut impl Write) -> Result<u8, Failure> {
    let topology = Topology::load(file)?;
    let s = topology.stats();
    emit(
        out,
        &format!(
            "ok: {} servers, {} levels, {} replicas, {} top servers\n",
            s.servers, s.levels, s.replicas, s.tops
        ),
    )?;
    Ok(exit::OK)
}
