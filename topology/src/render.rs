//! Drawings of the hierarchy: an indented tree, Graphviz DOT and Mermaid.
//!
//! Server names are validated DNS names (letters, digits, `-`, `.`, `_`), so they need no escaping
//! in any of these formats.

use std::fmt::Write as _;

use crate::graph::Topology;
use crate::model::{Mode, ServerId};

impl Topology {
    /// An indented tree, top servers first, replicas marked `[replica]`.
    pub fn render_tree(&self) -> String {
        let mut out = String::new();
        // (server, prefix for its children, connector before its name); explicit stack, no recursion.
        let mut stack: Vec<(ServerId, String, &str)> = self
            .tops()
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .map(|id| (id, String::new(), ""))
            .collect();
        while let Some((id, prefix, connector)) = stack.pop() {
            let server = self.server(id);
            let mark = if server.mode == Mode::Replica {
                " [replica]"
            } else {
                ""
            };
            let _ = writeln!(out, "{prefix}{connector}{}{mark}", server.name);
            let child_prefix = match connector {
                "" => prefix.clone(),
                "├── " => format!("{prefix}│   "),
                _ => format!("{prefix}    "),
            };
            let children = self.downstream(id);
            let last = children.len().saturating_sub(1);
            for (k, &child) in children.iter().enumerate().rev() {
                let connector = if k == last {
                    "└── "
                } else {
                    "├── "
                };
                stack.push((child, child_prefix.clone(), connector));
            }
        }
        out
    }

    /// A Graphviz digraph; replicas are drawn dashed.
    pub fn render_dot(&self) -> String {
        let mut out = String::from(
            "digraph wsus {\n  rankdir=TB;\n  node [shape=box, fontname=\"Helvetica\"];\n",
        );
        for server in self.servers() {
            match server.mode {
                Mode::Replica => {
                    let _ = writeln!(
                        out,
                        "  \"{0}\" [style=dashed, label=\"{0}\\nreplica\"];",
                        server.name
                    );
                }
                Mode::Autonomous => {
                    let _ = writeln!(out, "  \"{}\";", server.name);
                }
            }
        }
        for server in self.servers() {
            if let Some(up) = &server.upstream {
                let _ = writeln!(out, "  \"{up}\" -> \"{}\";", server.name);
            }
        }
        out.push_str("}\n");
        out
    }

    /// A Mermaid flowchart (renders in GitHub markdown); replicas are rounded.
    pub fn render_mermaid(&self) -> String {
        let mut out = String::from("flowchart TD\n");
        for (i, server) in self.servers().iter().enumerate() {
            match server.mode {
                Mode::Replica => {
                    let _ = writeln!(out, "  s{i}([\"{} (replica)\"])", server.name);
                }
                Mode::Autonomous => {
                    let _ = writeln!(out, "  s{i}[\"{}\"]", server.name);
                }
            }
        }
        for id in self.ids() {
            if let Some(up) = self.upstream(id) {
                let _ = writeln!(out, "  s{} --> s{}", up.0, id.0);
            }
        }
        out
    }
}
