//! `graph FILE`: the hierarchy drawn as a tree, Graphviz DOT or Mermaid.

use super::*;
use crate::cli::GraphFormat;

pub(crate) fn run(file: &Path, format: GraphFormat, out: &mut impl Write) -> Result<u8, Failure> {
    let topology = Topology::load(file)?;
    let text = match format {
        GraphFormat::Tree => topology.render_tree(),
        GraphFormat::Dot => topology.render_dot(),
        GraphFormat::Mermaid => topology.render_mermaid(),
    };
    emit(out, &text)?;
    Ok(exit::OK)
}
