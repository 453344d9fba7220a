//! `discover SEED --out FILE`: the hierarchy as the servers know it, written as a topology.

use super::*;
use workflows::discover::{Discovery, Seed, discover, extended_topology};

/// `discover`: the read-only walk, then the seed with every server it lacks appended.
pub(crate) fn run(
    seed: &Path,
    out_path: &Path,
    transport: Option<topology::Transport>,
    conn: &ConnArgs,
    out: &mut impl Write,
) -> Result<u8, Failure> {
    let topology = Topology::load(seed)?;
    if out_path.exists() {
        return Err(Failure::BadInput(format!(
            "error: --out {} exists: give a new file name (discover never overwrites)",
            out_path.display()
        )));
    }
    let seed_text = read_text(seed)?;
    let same_dir = |p: &Path| {
        std::fs::canonicalize(p)
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
    };
    let relative_files = seed_text.contains("_file:")
        && same_dir(seed) != out_path.parent().and_then(|d| same_dir(&d.join(".")));
    let seed_file = seed_of(seed, seed_text)?;
    let selection = select_all(&topology)?;
    let options = connect_for(&topology, &selection, conn)?;
    let discovery = runtime()?.block_on(discover(
        &topology,
        &seed_file,
        &options,
        conn.probe_parallel,
        transport,
    ));
    let transport = transport
        .or_else(|| topology.servers().first().map(|s| s.transport))
        .unwrap_or(topology::Transport::Sql);
    let text = extended_topology(
        &seed_file,
        &seed.display().to_string(),
        &discovery,
        transport,
        &engine::journal::now(),
    );
    // What is written must be a topology this tool takes.
    if let Err(e) = Topology::from_bytes(&out_path.display().to_string(), text.as_bytes()) {
        let (Failure::BadInput(why) | Failure::Exit(_, why)) = Failure::from(e);
        return Err(Failure::BadInput(format!(
            "error: the discovered topology does not validate, nothing written:\n{why}"
        )));
    }
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(out_path)
        .and_then(|mut f| f.write_all(text.as_bytes()));
    if let Err(e) = written {
        return Err(Failure::BadInput(format!(
            "error: cannot write {}: {e}",
            out_path.display()
        )));
    }
    if relative_files {
        report::say(&format!(
            "note: relative `password_file` and `ca_file` paths are taken from {}'s directory, not {}'s",
            out_path.display(),
            seed.display()
        ));
    }
    crate::emit(out, &table(&discovery, out_path))?;
    Ok(if discovery.servers.iter().any(|f| f.error.is_some()) {
        exit::FAILED
    } else {
        exit::OK
    })
}

/// The found servers for a terminal: names and errors as the servers sent them, made printable
/// ([`report::printable`]): a registered name is whatever a server recorded.
fn table(discovery: &Discovery, out_path: &Path) -> String {
    let name = |n: &str| crate::report::printable(n, 120);
    let width = discovery
        .servers
        .iter()
        .map(|f| name(&f.name).chars().count())
        .max()
        .unwrap_or(6)
        .max(6);
    let mut text = format!(
        "{:<width$}  {:<width$}  {:<10}  FOUND\n",
        "SERVER", "UPSTREAM", "MODE"
    );
    for f in &discovery.servers {
        let found = match (&f.error, f.in_file) {
            (Some(e), _) => format!("UNREACHABLE: {}", crate::report::printable(e, 400)),
            (None, true) => "in the seed".to_string(),
            (None, false) => format!("NEW: {}", f.verdict().unwrap_or_default()),
        };
        text.push_str(&format!(
            "{:<width$}  {:<width$}  {:<10}  {found}\n",
            name(&f.name),
            name(f.upstream.as_deref().unwrap_or("-")),
            f.mode().as_str(),
        ));
    }
    let new = discovery.servers.iter().filter(|f| !f.in_file).count();
    text.push_str(&format!(
        "\n{} servers in {} levels, {new} not in the seed; wrote {}\n",
        discovery.servers.len(),
        discovery.levels,
        out_path.display()
    ));
    text
}

/// A topology file's text as `Topology::load` reads it: UTF-8, or UTF-16 with a byte order mark
/// (what PowerShell 5's `>` writes); what it appends is written as UTF-8.
pub(crate) fn read_text(path: &Path) -> Result<String, Failure> {
    let bytes = std::fs::read(path)
        .map_err(|e| Failure::BadInput(format!("error: {}: {e}", path.display())))?;
    topology::decode_text(&bytes).ok_or_else(|| {
        Failure::BadInput(format!(
            "error: {} is not text: save it as UTF-8 (or UTF-16 with a byte order mark)",
            path.display()
        ))
    })
}

/// The file as a seed found servers can be appended to.
pub(crate) fn seed_of(path: &Path, text: String) -> Result<Seed, Failure> {
    let canonical = std::fs::canonicalize(path)
        .map_err(|e| Failure::BadInput(format!("error: {}: {e}", path.display())))?;
    Seed::new(text, canonical)
        .map_err(|e| Failure::BadInput(format!("error: {}: {e}", path.display())))
}
