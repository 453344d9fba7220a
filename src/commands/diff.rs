//! `diff FILE`: the topology file against what the servers say of their hierarchy.

use super::*;
use workflows::discover::{Difference, differences, discover};

use crate::cli::PlanFormat;

/// `diff`: the read-only walk, compared with the file.
pub(crate) fn run(
    file: &Path,
    stale_days: u32,
    format: PlanFormat,
    conn: &ConnArgs,
    out: &mut impl Write,
) -> Result<u8, Failure> {
    let topology = Topology::load(file)?;
    let text = super::discover::read_text(file)?;
    let seed = super::discover::seed_of(file, text)?;
    let selection = select_all(&topology)?;
    let options = connect_for(&topology, &selection, conn)?;
    let discovery = runtime()?.block_on(discover(
        &topology,
        &seed,
        &options,
        conn.probe_parallel,
        None,
    ));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let found = differences(&topology, &discovery, stale_days, now);
    let shown = file.display().to_string();
    let text = match format {
        PlanFormat::Json => {
            let mut text = serde_json::to_string_pretty(&serde_json::json!({
                "topology": shown,
                "servers_found": discovery.servers.len(),
                "levels": discovery.levels,
                "differences": found,
            }))
            .map_err(|e| Failure::BadInput(format!("error: {e}")))?;
            text.push('\n');
            text
        }
        PlanFormat::Markdown => markdown(&shown, &found, discovery.servers.len()),
        PlanFormat::Text => plain(&shown, &found, discovery.servers.len()),
    };
    crate::emit(out, &text)?;
    Ok(if found.is_empty() {
        exit::OK
    } else {
        exit::FAILED
    })
}

fn kind(d: &Difference) -> String {
    serde_json::to_value(&d.kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_ascii_uppercase))
        .unwrap_or_default()
}

fn plain(file: &str, found: &[Difference], servers: usize) -> String {
    if found.is_empty() {
        return format!(
            "{file} agrees with the servers: {servers} servers found from its top servers, none missing, none stale, none disagreeing\n"
        );
    }
    let name = |n: &str| crate::report::printable(n, 120);
    let width = found
        .iter()
        .map(|d| name(&d.server).chars().count())
        .max()
        .unwrap_or(6)
        .max(6);
    let mut text = format!(
        "{} difference(s) between {file} and the servers:\n",
        found.len()
    );
    for d in found {
        text.push_str(&format!(
            "  {:<12}  {:<width$}  {}\n",
            kind(d),
            name(&d.server),
            crate::report::printable(&d.evidence, 600)
        ));
    }
    text
}

fn markdown(file: &str, found: &[Difference], servers: usize) -> String {
    let mut text =
        format!("# `{file}` against the servers\n\n{servers} servers found from its top servers; ");
    if found.is_empty() {
        text.push_str("the file agrees with them.\n");
        return text;
    }
    text.push_str(&format!(
        "{} difference(s).\n\n| | Server | Evidence |\n|---|---|---|\n",
        found.len()
    ));
    for d in found {
        text.push_str(&format!(
            "| {} | {} | {} |\n",
            kind(d),
            crate::report::markdown_cell(&d.server, 120),
            crate::report::markdown_cell(&d.evidence, 600)
        ));
    }
    text
}
