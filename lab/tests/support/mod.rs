//! The lab on a free loopback port, for the tests of this crate.

#![allow(
    clippy::unwrap_used,
    dead_code,
    reason = "test support: fails loudly; each test binary uses part of it"
)]

use std::net::SocketAddr;

use susdb_lab::{Lab, LabConfig};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use topology::Topology;

pub const TOPOLOGY: &str = "\
version: 1
servers:
  - name: wsus-hq
    sql: { host: sql-hq.lab.example }
  - name: wsus-branch
    upstream: wsus-hq
    mode: replica
    sql: { host: sql-branch.lab.example, instance: WSUS }
";

/// A serving lab; it stops when dropped.
pub struct Running {
    pub addr: SocketAddr,
    pub lab: Lab,
    stop: CancellationToken,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub async fn start(config: LabConfig) -> Running {
    let topology = Topology::from_bytes("lab.yaml", TOPOLOGY.as_bytes()).unwrap();
    let lab = Lab::new(&topology, config).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let serving = lab.clone();
    let token = stop.clone();
    tokio::spawn(async move { serving.serve(listener, token).await });
    Running { addr, lab, stop }
}
