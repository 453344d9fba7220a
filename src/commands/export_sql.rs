//! `export-sql FILE --out DIR`: the repair of each server as a reviewed T-SQL script, for
//! databases only a local named pipe reaches.

use super::*;

pub(crate) fn run(
    file: &Path,
    dir: &Path,
    select_args: SelectArgs,
    out: &mut impl Write,
) -> Result<u8, Failure> {
    let topology = Topology::load(file)?;
    let selection = select(&topology, select_args)?;
    std::fs::create_dir_all(dir)
        .map_err(|e| Failure::BadInput(format!("error: cannot create {}: {e}", dir.display())))?;
    let mut listing = String::new();
    for (index, &id) in selection.servers.iter().enumerate() {
        let server = topology.server(id);
        let name = workflows::export::file_name(index, server);
        let path = dir.join(&name);
        crate::write_atomically(&path, &workflows::export::script(&topology, server, &name))?;
        listing.push_str(&format!("{}\n", path.display()));
    }
    listing.push_str(&format!(
        "{} scripts; run them in this order, each on its own server, each only after its upstream's succeeded\n",
        selection.servers.len()
    ));
    emit(out, &listing)?;
    Ok(exit::OK)
}
