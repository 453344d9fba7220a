//! Properties of loading: random forests validate and order upstream first; any cycle is refused;
//! no input makes the loader panic.

use proptest::prelude::*;
use topology::{Mode, Topology};

/// A random forest: server `i` names an upstream among servers `0..i`, or none.
#[derive(Debug, Clone)]
struct Forest {
    upstream: Vec<Option<usize>>,
    replica: Vec<bool>,
    /// The order the servers are written in the file.
    file_order: Vec<usize>,
}

fn forest() -> impl Strategy<Value = Forest> {
    (1usize..60)
        .prop_flat_map(|n| {
            let upstreams: Vec<BoxedStrategy<Option<usize>>> = (0..n)
                .map(|i| {
                    if i == 0 {
                        Just(None).boxed()
                    } else {
                        prop_oneof![1 => Just(None), 4 => (0..i).prop_map(Some)].boxed()
                    }
                })
                .collect();
            let order = Just((0..n).collect::<Vec<_>>()).prop_shuffle();
            (upstreams, prop::collection::vec(any::<bool>(), n), order)
        })
        .prop_map(|(upstream, replica, file_order)| Forest {
            replica: replica
                .iter()
                .zip(&upstream)
                .map(|(&r, up)| r && up.is_some())
                .collect(),
            upstream,
            file_order,
        })
}

/// Names vary in case so that ordering and lookups are exercised ignoring case.
fn name(i: usize) -> String {
    if i.is_multiple_of(3) {
        format!("WSUS-{i:03}")
    } else {
        format!("wsus-{i:03}")
    }
}

fn yaml(f: &Forest) -> String {
    let mut text = String::from("version: 1\nservers:\n");
    for &i in &f.file_order {
        text.push_str(&format!(
            "  - name: {}\n    sql: {{ host: sql-{i} }}\n",
            name(i)
        ));
        if let Some(up) = f.upstream[i] {
            text.push_str(&format!("    upstream: {}\n", name(up).to_lowercase()));
        }
        if f.replica[i] {
            text.push_str("    mode: replica\n");
        }
    }
    text
}

proptest! {
    #[test]
    fn random_forests_validate_and_order_every_upstream_first(f in forest()) {
        let topology = Topology::from_bytes("forest.yaml", yaml(&f).as_bytes())
            .map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        let servers = topology.servers();
        prop_assert_eq!(servers.len(), f.upstream.len());
        for (pos, server) in servers.iter().enumerate() {
            let id = topology.find(&server.name).unwrap();
            prop_assert_eq!(id.0, pos);
            match topology.upstream(id) {
                None => prop_assert_eq!(server.depth, 0),
                Some(up) => {
                    prop_assert!(up.0 < pos, "{} before its upstream", server.name);
                    prop_assert_eq!(server.depth, topology.server(up).depth + 1);
                    prop_assert!(server.upstream.as_deref() == Some(topology.server(up).name.as_str()));
                }
            }
            let original: usize = server.name[5..].parse().unwrap();
            prop_assert_eq!(server.mode == Mode::Replica, f.replica[original]);
        }
        // Ties are broken by depth, then name ignoring case: the order does not depend on the file.
        let keys: Vec<(u32, String)> =
            servers.iter().map(|s| (s.depth, s.name.to_lowercase())).collect();
        prop_assert!(keys.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn any_cycle_is_refused_and_named(f in forest(), len in 2usize..6, start in 0usize..60) {
        let n = f.upstream.len();
        prop_assume!(n >= len);
        let mut f = f;
        // Close a cycle through `len` consecutive servers; none of them may stay a top replica.
        let members: Vec<usize> = (0..len).map(|k| (start + k) % n).collect();
        for (k, &m) in members.iter().enumerate() {
            f.upstream[m] = Some(members[(k + 1) % len]);
        }
        let err = Topology::from_bytes("cycle.yaml", yaml(&f).as_bytes()).unwrap_err();
        let topology::LoadError::Invalid(invalid) = err else { panic!("not a validation error") };
        let cycle = invalid
            .diagnostics
            .iter()
            .find(|d| d.message.starts_with("upstream cycle: "))
            .expect("a cycle diagnostic");
        for &m in &members {
            prop_assert!(cycle.message.contains(&name(m)), "{} lacks {}", cycle.message, name(m));
        }
        // `a -> b -> c -> a`: the walk ends where it started.
        let names: Vec<&str> = cycle.message["upstream cycle: ".len()..].split(" -> ").collect();
        prop_assert_eq!(names.first(), names.last());
        prop_assert_eq!(names.len(), len + 1);
    }

    #[test]
    fn no_input_makes_the_loader_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let _ = Topology::from_bytes("random.yaml", &bytes);
    }

    #[test]
    fn yaml_shaped_noise_never_panics(text in "(version: 1\n|servers:\n|  - |name: [a-c]\n|upstream: [a-c]\n|    |mode: (replica|x)\n|sql: \\{ host: h \\}\n|[{}\\[\\]:,'\"-]| )*") {
        let _ = Topology::from_bytes("noise.yaml", text.as_bytes());
    }
}

#[test]
fn a_long_chain_does_not_exhaust_the_stack() {
    let n = 20_000;
    let mut text = String::from("version: 1\nservers:\n  - name: s0\n    sql: { host: h }\n");
    for i in 1..n {
        text.push_str(&format!(
            "  - name: s{i}\n    upstream: s{}\n    sql: {{ host: h }}\n",
            i - 1
        ));
    }
    let topology = Topology::from_bytes("chain.yaml", text.as_bytes()).unwrap();
    assert_eq!(topology.stats().levels, n);
    // A line per server, and the note that the indentation stopped.
    assert_eq!(topology.render_tree().lines().count(), n as usize + 1);
    assert_eq!(
        topology.subtree(topology.find("s0").unwrap()).len(),
        n as usize
    );
}
