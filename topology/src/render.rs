//! Drawings of the hierarchy: an indented tree, Graphviz DOT and Mermaid.
//!
//! Server names are validated DNS names (letters, digits, `-`, `.`, `_`), so they need no escaping
//! in any of these formats.

use std::fmt::Write as _;

use crate::graph::Topology;
use crate::model::{Mode, ServerId};

/// The deepest level the tree indents: deeper servers are drawn at this indentation with their
/// depth written out, so the drawing of a very deep chain stays linear in size.
pub const TREE_MAX_INDENT: u32 = 32;

/// The tree's lines: box drawing, as `tree` draws, except on Windows. There the console of
/// Windows Server 2008 R2 shows box drawing only in some fonts, and PowerShell 5 decodes a
/// program's redirected output with the console's OEM code page, which turns UTF-8 box drawing
/// into mojibake; ASCII reads right everywhere. (The tool's other text is ASCII on every
/// platform; only names and values from the input can carry other characters.)
#[cfg(not(windows))]
const TREE: [&str; 3] = ["├── ", "└── ", "│   "];
#[cfg(windows)]
const TREE: [&str; 3] = ["|-- ", "`-- ", "|   "];
const TREE_BRANCH: &str = TREE[0];
const TREE_LAST: &str = TREE[1];
const TREE_PIPE: &str = TREE[2];

impl Topology {
    /// An indented tree, top servers first, replicas marked `[replica]`.
    pub fn render_tree(&self) -> String {
        let mut out = String::new();
        let mut flattened = false;
        // (server, prefix for its children, connector before its name, depth); explicit stack,
        // no recursion.
        let mut stack: Vec<(ServerId, String, &str, u32)> = self
            .tops()
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .map(|id| (id, String::new(), "", 0))
            .collect();
        while let Some((id, prefix, connector, depth)) = stack.pop() {
            let server = self.server(id);
            let mark = if server.mode == Mode::Replica {
                " [replica]"
            } else {
                ""
            };
            if depth > TREE_MAX_INDENT {
                flattened = true;
                let _ = writeln!(
                    out,
                    "{prefix}{connector}[depth {depth}] {}{mark}",
                    server.name
                );
            } else {
                let _ = writeln!(out, "{prefix}{connector}{}{mark}", server.name);
            }
            let child_prefix = match connector {
                _ if depth >= TREE_MAX_INDENT => prefix.clone(),
                "" => prefix.clone(),
                c if c == TREE_BRANCH => format!("{prefix}{TREE_PIPE}"),
                _ => format!("{prefix}    "),
            };
            let children = self.downstream(id);
            let last = children.len().saturating_sub(1);
            for (k, &child) in children.iter().enumerate().rev() {
                let connector = if k == last { TREE_LAST } else { TREE_BRANCH };
                stack.push((child, child_prefix.clone(), connector, depth + 1));
            }
        }
        if flattened {
            let _ = writeln!(
                out,
                "(indentation stops at depth {TREE_MAX_INDENT}: deeper servers show their depth)"
            );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_very_deep_chain_draws_in_linear_size() {
        let mut yaml = String::from("version: 1\nservers:\n  - name: s0\n    sql: { host: h0 }\n");
        let n = 2_000;
        for i in 1..n {
            yaml.push_str(&format!(
                "  - name: s{i}\n    upstream: s{}\n    sql: {{ host: h{i} }}\n",
                i - 1
            ));
        }
        let t =
            Topology::from_bytes("chain.yaml", yaml.as_bytes()).unwrap_or_else(|e| panic!("{e:?}"));
        let tree = t.render_tree();
        // Each line at most the capped indentation, a depth marker and a name.
        let widest = tree.lines().map(|l| l.chars().count()).max().unwrap_or(0);
        assert!(widest < 4 * (TREE_MAX_INDENT as usize) + 40, "{widest}");
        assert!(
            tree.contains("[depth 1999] s1999"),
            "the depth is written out"
        );
        assert!(tree.ends_with("deeper servers show their depth)\n"));
        // A shallow tree is drawn as before, without the note.
        let shallow = Topology::from_bytes(
            "t.yaml",
            b"version: 1\nservers:\n  - name: a\n    sql: { host: a }\n  - name: b\n    upstream: a\n    mode: replica\n    sql: { host: b }\n",
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(shallow.render_tree(), "a\n└── b [replica]\n");
    }
}
