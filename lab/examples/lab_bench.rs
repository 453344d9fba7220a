//! One lab serving 1,000 emulated servers to 64 concurrent tiberius clients: round trips per
//! second and p50/p99 latency of the probe (four result sets, one parameter). Figures in
//! BENCHMARKS.md.
//!
//!     cargo run --release --example gen_hierarchy -- 1000 4 > /tmp/h1000.yaml
//!     cargo run --release -p susdb-lab --example lab_bench -- /tmp/h1000.yaml 64 10
//!
//! Arguments: the topology, the number of clients, the seconds to run. The lab runs on its own
//! runtime thread, as in its own process; the clients share the other core.

#![allow(clippy::print_stdout, reason = "a benchmark prints its figures")]

use std::path::Path;
use std::time::{Duration, Instant};

use susdb::{KB954960_UPDATE_ID, sql};
use susdb_lab::{Lab, LabConfig};
use tiberius::{AuthMethod, Client, Config, EncryptionLevel, Uuid};
use tokio::net::TcpStream;
use tokio_util::compat::TokioAsyncWriteCompatExt;
use tokio_util::sync::CancellationToken;
use topology::Topology;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [path, clients, seconds] = args.as_slice() else {
        return Err("usage: lab_bench TOPOLOGY CLIENTS SECONDS".into());
    };
    let topology = Topology::load(Path::new(path))?;
    let clients: usize = clients.parse()?;
    let run_for = Duration::from_secs(seconds.parse()?);
    let lab = Lab::new(&topology, LabConfig::default())?;
    let stop = CancellationToken::new();

    // The lab: its own single-threaded runtime on its own thread.
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    let serving = {
        let (lab, stop) = (lab.clone(), stop.clone());
        std::thread::spawn(move || -> Result<(), String> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async move {
                let listener =
                    tokio::net::TcpListener::from_std(listener).map_err(|e| e.to_string())?;
                lab.serve(listener, stop).await.map_err(|e| e.to_string())
            })
        })
    };

    let hosts: Vec<String> = topology
        .servers()
        .iter()
        .filter_map(|s| s.sql.as_ref()?.host.clone())
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut latencies: Vec<Duration> = rt.block_on(async {
        let deadline = Instant::now() + run_for;
        let tasks: Vec<_> = (0..clients)
            .map(|k| {
                let hosts = hosts.clone();
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    let update = Uuid::parse_str(KB954960_UPDATE_ID).unwrap_or_default();
                    let mut round = k;
                    while Instant::now() < deadline {
                        // Each client walks the servers, a fresh connection per server, as the
                        // repair does, and probes it 7 times (a replica's round trips).
                        let host = &hosts[round % hosts.len()];
                        round += clients;
                        let mut config = Config::new();
                        config.host(host);
                        config.authentication(AuthMethod::sql_server("bench", "bench"));
                        config.encryption(EncryptionLevel::NotSupported);
                        let Ok(tcp) = TcpStream::connect(addr).await else {
                            break;
                        };
                        let _ = tcp.set_nodelay(true);
                        let Ok(mut client) = Client::connect(config, tcp.compat_write()).await
                        else {
                            break;
                        };
                        for _ in 0..7 {
                            let t = Instant::now();
                            let ok = match client.query(sql::PROBE, &[&update]).await {
                                Ok(stream) => stream.into_results().await.is_ok(),
                                Err(_) => false,
                            };
                            if !ok {
                                return seen;
                            }
                            seen.push(t.elapsed());
                        }
                    }
                    seen
                })
            })
            .collect();
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await.unwrap_or_default());
        }
        all
    });
    stop.cancel();
    let _ = serving.join();
    latencies.sort_unstable();
    let n = latencies.len();
    if n == 0 {
        return Err("no round trip completed".into());
    }
    let at = |q: f64| latencies[((n as f64 * q) as usize).min(n - 1)];
    println!(
        "{} servers, {clients} clients, {} s: {n} probes, {:.0} round trips/s, p50 {} µs, p99 {} µs",
        topology.servers().len(),
        run_for.as_secs(),
        n as f64 / run_for.as_secs_f64(),
        at(0.50).as_micros(),
        at(0.99).as_micros()
    );
    Ok(())
}
