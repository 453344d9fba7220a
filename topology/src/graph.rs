//! The validated hierarchy as a petgraph graph, upstream -> downstream, in execution order.

use std::collections::HashMap;

use petgraph::Direction;
use petgraph::graph::{DiGraph, NodeIndex};

use crate::model::{Mode, Server, ServerId};
use crate::validate::CheckedTopology;

/// A validated WSUS hierarchy.
///
/// Invariants: `servers` is in execution order (depth, then name ignoring case, then name), so
/// every server comes after its upstream; node `i` of `graph` is `ServerId(i)`; there is no cycle.
#[derive(Debug, Clone)]
pub struct Topology {
    source: String,
    /// The file's canonical absolute path, when it was loaded from a file.
    path: Option<std::path::PathBuf>,
    fingerprint: String,
    update: String,
    servers: Vec<Server>,
    graph: DiGraph<ServerId, ()>,
    by_name: HashMap<String, ServerId>,
}

/// The counts `validate` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub servers: usize,
    pub levels: u32,
    pub replicas: usize,
    pub tops: usize,
}

impl Topology {
    pub(crate) fn build(
        source: String,
        fingerprint: String,
        checked: CheckedTopology,
        line_of: impl Fn(usize) -> usize,
    ) -> Topology {
        let CheckedTopology { update, servers } = checked;
        let n = servers.len();
        // Depths top-down without recursion: a chain of 100,000 servers must not blow the stack.
        let mut children: Vec<Vec<usize>> = vec![Vec::new(); n];
        let mut depth = vec![0u32; n];
        let mut queue: Vec<usize> = Vec::with_capacity(n);
        for (i, s) in servers.iter().enumerate() {
            match s.upstream {
                Some(up) => children[up].push(i),
                None => queue.push(i),
            }
        }
        let mut head = 0;
        while let Some(&i) = queue.get(head) {
            head += 1;
            for &c in &children[i] {
                depth[c] = depth[i] + 1;
                queue.push(c);
            }
        }
        let mut order: Vec<usize> = (0..n).collect();
        let keys: Vec<String> = servers.iter().map(|s| name_key(&s.name)).collect();
        order.sort_unstable_by(|&a, &b| {
            (depth[a], &keys[a], &servers[a].name).cmp(&(depth[b], &keys[b], &servers[b].name))
        });
        let mut position = vec![0usize; n];
        for (pos, &i) in order.iter().enumerate() {
            position[i] = pos;
        }

        let mut graph = DiGraph::with_capacity(n, n);
        for pos in 0..n {
            graph.add_node(ServerId(pos));
        }
        let names: Vec<String> = servers.iter().map(|s| s.name.clone()).collect();
        let mut by_name = HashMap::with_capacity(n);
        let mut ordered = Vec::with_capacity(n);
        let mut servers: Vec<Option<_>> = servers.into_iter().map(Some).collect();
        for (pos, &i) in order.iter().enumerate() {
            let Some(s) = servers[i].take() else { continue };
            if let Some(up) = s.upstream {
                graph.add_edge(NodeIndex::new(position[up]), NodeIndex::new(pos), ());
            }
            by_name.insert(keys[i].clone(), ServerId(pos));
            ordered.push(Server {
                upstream: s.upstream.map(|up| names[up].clone()),
                name: s.name,
                mode: s.mode,
                depth: depth[i],
                sql: s.sql,
                api: s.api,
                transport: s.transport,
                line: line_of(s.span.start),
            });
        }
        Topology {
            source,
            path: None,
            fingerprint,
            update,
            servers: ordered,
            graph,
            by_name,
        }
    }

    /// The topology file's path as given.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Where the file is, for what outlives this process (a plan, a journal): its canonical
    /// absolute path when it was loaded from a file, so `resume` and `apply PLAN.json` work from
    /// any directory; the name it was given otherwise.
    pub fn location(&self) -> String {
        self.path
            .as_ref()
            .map_or_else(|| self.source.clone(), |p| p.display().to_string())
    }

    /// Records the file's canonical path and resolves the relative paths the file holds
    /// (`password_file`, `ca_file`) against the file's own directory, as the README documents.
    pub fn locate(&mut self, path: std::path::PathBuf) {
        if let Some(dir) = path.parent() {
            for server in &mut self.servers {
                if let Some(sql) = &mut server.sql {
                    relative_to(dir, &mut sql.ca_file, &mut sql.auth);
                }
                if let Some(api) = &mut server.api {
                    relative_to(dir, &mut api.ca_file, &mut api.auth);
                }
            }
        }
        self.path = Some(path);
    }

    /// `sha256:<hex>` of the file's bytes: a plan or a journal made from other bytes is refused.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The UpdateID to repair, upper case.
    pub fn update(&self) -> &str {
        &self.update
    }

    /// Every server, in execution order.
    pub fn servers(&self) -> &[Server] {
        &self.servers
    }

    pub fn server(&self, id: ServerId) -> &Server {
        &self.servers[id.0]
    }

    pub fn ids(&self) -> impl Iterator<Item = ServerId> + use<> {
        (0..self.servers.len()).map(ServerId)
    }

    /// The server of that name, ignoring case.
    pub fn find(&self, name: &str) -> Option<ServerId> {
        self.by_name.get(&name_key(name)).copied()
    }

    /// The graph: node `i` is `ServerId(i)`, edges go upstream -> downstream.
    pub fn graph(&self) -> &DiGraph<ServerId, ()> {
        &self.graph
    }

    pub fn upstream(&self, id: ServerId) -> Option<ServerId> {
        self.graph
            .neighbors_directed(NodeIndex::new(id.0), Direction::Incoming)
            .next()
            .map(|n| ServerId(n.index()))
    }

    /// Direct downstream servers, in execution order.
    pub fn downstream(&self, id: ServerId) -> Vec<ServerId> {
        let mut ids: Vec<ServerId> = self
            .graph
            .neighbors_directed(NodeIndex::new(id.0), Direction::Outgoing)
            .map(|n| ServerId(n.index()))
            .collect();
        ids.sort_unstable();
        ids
    }

    /// `id` and everything below it, in execution order.
    pub fn subtree(&self, id: ServerId) -> Vec<ServerId> {
        let mut found = vec![id];
        let mut head = 0;
        while let Some(&at) = found.get(head) {
            head += 1;
            found.extend(
                self.graph
                    .neighbors_directed(NodeIndex::new(at.0), Direction::Outgoing)
                    .map(|n| ServerId(n.index())),
            );
        }
        found.sort_unstable();
        found
    }

    /// The top server of `id`'s tree (`id` itself for a top server).
    pub fn top_of(&self, mut id: ServerId) -> ServerId {
        while let Some(up) = self.upstream(id) {
            id = up;
        }
        id
    }

    /// Top servers, in execution order.
    pub fn tops(&self) -> impl Iterator<Item = ServerId> + '_ {
        self.ids().take_while(|&id| self.server(id).depth == 0)
    }

    pub fn stats(&self) -> Stats {
        Stats {
            servers: self.servers.len(),
            levels: self.servers.last().map_or(0, |s| s.depth + 1),
            replicas: self
                .servers
                .iter()
                .filter(|s| s.mode == Mode::Replica)
                .count(),
            tops: self.tops().count(),
        }
    }
}

/// A relative `ca_file` or `password_file` taken from `dir`, the topology file's directory.
fn relative_to(
    dir: &std::path::Path,
    ca_file: &mut Option<std::path::PathBuf>,
    auth: &mut crate::model::Auth,
) {
    if let Some(ca) = ca_file.as_mut().filter(|ca| ca.is_relative()) {
        *ca = dir.join(&*ca);
    }
    if let crate::model::Auth::Sql { password, .. } | crate::model::Auth::Windows { password, .. } =
        auth
        && let crate::model::SecretSource::File(file) = password
        && file.is_relative()
    {
        *file = dir.join(&*file);
    }
}

/// How server names compare: DNS names, so ignoring case and a trailing dot (`wsus-a.` is the
/// absolute form of `wsus-a`, one server).
pub(crate) fn name_key(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}
