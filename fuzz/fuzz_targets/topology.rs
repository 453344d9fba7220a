//! Any bytes given as a topology file: loading must never panic, and whatever loads must hold the
//! graph's invariants (every server after its upstream) and render without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use topology::Topology;

fuzz_target!(|data: &[u8]| {
    match Topology::from_bytes("fuzz.yaml", data) {
        Ok(topology) => {
            for id in topology.ids() {
                if let Some(up) = topology.upstream(id) {
                    assert!(up < id, "a server before its upstream");
                }
            }
            let _ = (topology.render_tree(), topology.render_dot(), topology.render_mermaid());
        }
        Err(topology::LoadError::Invalid(invalid)) => {
            let _ = invalid.render();
        }
        Err(_) => {}
    }
});
