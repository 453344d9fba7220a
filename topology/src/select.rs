//! Which servers a command walks: `--only NAME`, `--with-downstream`, `--allow-partial`.

use std::fmt::Write as _;

use crate::graph::Topology;
use crate::model::ServerId;
use crate::schema::suggest;

/// What the operator asked for on the command line.
#[derive(Debug, Clone, Default)]
pub struct SelectOptions {
    /// Server names; empty means every server.
    pub only: Vec<String>,
    /// Add each named server's whole subtree.
    pub with_downstream: bool,
    /// Accept servers whose upstream is not selected (the top-down guarantee is then broken).
    pub allow_partial: bool,
}

/// The servers to walk, in execution order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    pub servers: Vec<ServerId>,
    /// Selected servers whose upstream is not selected: only with `--allow-partial`.
    pub partial: Vec<ServerId>,
}

impl Selection {
    pub fn is_partial(&self, id: ServerId) -> bool {
        self.partial.binary_search(&id).is_ok()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SelectError {
    #[error("no server named `{name}` in the topology{}", .suggestion.as_ref().map(|s| format!(": did you mean `{s}`?")).unwrap_or_default())]
    Unknown {
        name: String,
        suggestion: Option<String>,
    },
    #[error("{}", upstream_message(.missing))]
    UpstreamNotSelected {
        /// (selected server, its upstream that is not selected)
        missing: Vec<(String, String)>,
    },
}

fn upstream_message(missing: &[(String, String)]) -> String {
    let mut text = String::from(
        "the selection breaks the top-down order: these servers are selected without their upstream:",
    );
    for (server, upstream) in missing {
        let _ = write!(text, "\n  {server} (upstream {upstream})");
    }
    text.push_str(
        "\nselect the upstream servers too, or pass --allow-partial if they were already repaired",
    );
    text
}

impl Topology {
    /// Resolves a selection. Every server when `only` is empty.
    pub fn select(&self, options: &SelectOptions) -> Result<Selection, SelectError> {
        if options.only.is_empty() {
            return Ok(Selection {
                servers: self.ids().collect(),
                partial: Vec::new(),
            });
        }
        let mut chosen = vec![false; self.servers().len()];
        for name in &options.only {
            let Some(id) = self.find(name) else {
                let names = self.servers().iter().map(|s| s.name.as_str());
                return Err(SelectError::Unknown {
                    name: name.clone(),
                    suggestion: suggest(name, names).map(str::to_string),
                });
            };
            if options.with_downstream {
                for below in self.subtree(id) {
                    chosen[below.0] = true;
                }
            } else {
                chosen[id.0] = true;
            }
        }
        let servers: Vec<ServerId> = self.ids().filter(|id| chosen[id.0]).collect();
        let partial: Vec<ServerId> = servers
            .iter()
            .copied()
            .filter(|&id| self.upstream(id).is_some_and(|up| !chosen[up.0]))
            .collect();
        if !partial.is_empty() && !options.allow_partial {
            let missing = partial
                .iter()
                .map(|&id| {
                    let s = self.server(id);
                    (s.name.clone(), s.upstream.clone().unwrap_or_default())
                })
                .collect();
            return Err(SelectError::UpstreamNotSelected { missing });
        }
        Ok(Selection { servers, partial })
    }
}
