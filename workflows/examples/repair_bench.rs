//! The whole repair against an in-process lab, timed: makespan against its lower bound
//! max(critical path, total work / N), and round trips per server (probe and verify included,
//! the login excluded; over the web service the login's last leg carries GetCurrentUserRole and
//! counts). Figures in BENCHMARKS.md. The lab serves both transports; each server is reached the
//! way its topology entry says.
//!
//!     cargo run --release --example gen_hierarchy -- 1000 4 > /tmp/h1000.yaml
//!     cargo run --release -p workflows --example repair_bench -- /tmp/h1000.yaml 2 8 64 256
//!     cargo run --release --example gen_hierarchy -- 1000 4 api > /tmp/h1000api.yaml
//!     cargo run --release -p workflows --example repair_bench -- /tmp/h1000api.yaml 2 64
//!
//! Arguments: the topology, the lab's latency per round trip in ms, optionally `lock` (the run
//! takes and watches the hierarchy lock as `apply` does, each server waiting for a check of it
//! before its first change), then one or more `--parallel` values, each run side by side on a
//! fresh lab.

#![allow(clippy::print_stdout, reason = "a benchmark prints its figures")]

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use engine::{Engine, Interrupts, RunOptions, RunOutcome};
use susdb_lab::{Lab, LabConfig, model::Seed};
use tokio_util::sync::CancellationToken;
use topology::{SelectOptions, Topology};
use workflows::Repair;
use workflows::reach::ConnectOptions;
use workflows::reach::sql::applock::{HierarchyLock, tops_of};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [path, latency, parallels @ ..] = args.as_slice() else {
        return Err("usage: repair_bench TOPOLOGY LATENCY_MS [lock] PARALLEL...".into());
    };
    let (locked, parallels) = match parallels {
        [first, rest @ ..] if first == "lock" => (true, rest),
        all => (false, all),
    };
    let topology = Arc::new(Topology::load(Path::new(path))?);
    let latency = Duration::from_millis(latency.parse()?);
    let selection = topology.select(&SelectOptions::default())?;
    let login = ("wsus_repair".to_string(), "bench-only".to_string());
    let windows_login = ("BENCH\\wsus_repair".to_string(), "bench-only".to_string());
    println!(
        "{} servers, {} levels, {} ms per round trip",
        topology.servers().len(),
        topology.stats().levels,
        latency.as_millis()
    );
    println!("parallel  makespan  critical  work/N   bound  ratio  round trips/server (mean, max)");
    for parallel in parallels {
        let parallel: usize = parallel.parse()?;
        let lab = Lab::new(
            &topology,
            LabConfig {
                seed: Seed::Broken,
                latency,
                credentials: Some(login.clone()),
                windows_login: Some(windows_login.clone()),
                ..LabConfig::default()
            },
        )?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let serving = lab.clone();
        let token = stop.clone();
        let server = tokio::spawn(async move { serving.serve(listener, token).await });
        let api_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let api_addr = api_listener.local_addr()?;
        let (serving, token) = (lab.clone(), stop.clone());
        tokio::spawn(async move { serving.serve_api(api_listener, token).await });
        let state = tempfile::tempdir()?;
        let connect = ConnectOptions {
            connect_via: Some(addr),
            lab_login: Some(login.clone()),
            api_via: Some(api_addr),
            lab_windows_login: Some(windows_login.clone()),
            ..ConnectOptions::default()
        };
        let watched = if locked {
            let lock = HierarchyLock::acquire(&topology, &selection, &connect)
                .await
                .map_err(|e| e.to_string())?;
            Some(lock.watch(
                &topology,
                &connect,
                Duration::from_secs(30),
                CancellationToken::new(),
            ))
        } else {
            None
        };
        let repair = Repair {
            update: topology.update().to_string(),
            connect,
            admin: "bench".into(),
            lock: watched.as_ref().map(|w| w.view()),
            tops: Arc::new(tops_of(&topology, &selection)),
            accept_licence: false,
        };
        let options = RunOptions {
            parallel,
            state_dir: state.path().join("state"),
            ..RunOptions::default()
        };
        let started = Instant::now();
        let report = Engine::new(repair, Arc::clone(&topology), options)
            .apply(&selection, Interrupts::default())
            .await?;
        let makespan = started.elapsed();
        drop(watched);
        stop.cancel();
        let _ = server.await;
        if report.outcome != RunOutcome::Succeeded {
            return Err(format!("the run did not succeed: {:?}", report.outcome).into());
        }
        let healthy = lab
            .snapshot()
            .servers
            .values()
            .filter(|s| s.client_sync_ok)
            .count();
        if healthy != topology.servers().len() {
            return Err(format!("only {healthy} servers repaired").into());
        }

        // Lower bound from the servers' own times: work / N, and the longest upstream chain
        // (execution order puts every upstream before its downstream servers).
        let durations: HashMap<&str, Duration> = report
            .servers
            .iter()
            .map(|s| (s.name.as_str(), s.duration))
            .collect();
        let mut chain = vec![Duration::ZERO; topology.servers().len()];
        for id in topology.ids() {
            let own = durations
                .get(topology.server(id).name.as_str())
                .copied()
                .unwrap_or_default();
            chain[id.0] = own
                + topology
                    .upstream(id)
                    .map_or(Duration::ZERO, |up| chain[up.0]);
        }
        let critical = chain.iter().max().copied().unwrap_or_default();
        let work: Duration = durations.values().sum();
        let per_slot = work / u32::try_from(parallel)?;
        let bound = critical.max(per_slot);
        let trips = lab.round_trips();
        let mean = f64::from(trips.values().sum::<u32>()) / trips.len().max(1) as f64;
        let max = trips.values().max().copied().unwrap_or(0);
        println!(
            "{parallel:>8}  {:>6} ms  {:>5} ms  {:>5} ms  {:>3} ms  {:.3}  {mean:.2}, {max}",
            makespan.as_millis(),
            critical.as_millis(),
            per_slot.as_millis(),
            bound.as_millis(),
            makespan.as_secs_f64() / bound.as_secs_f64(),
        );
    }
    Ok(())
}
