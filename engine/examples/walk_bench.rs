//! Benchmark of the walk (BENCHMARKS.md): a synthetic hierarchy, steps that sleep for latencies
//! drawn from a fixed seed, the real engine (journal, lock, events) on a temporary state dir.
//!
//!     cargo run --release -p engine --example walk_bench -- [TOPS FANOUT LEVELS] [N...]
//!
//! For each N it reports the makespan, the lower bound max(critical path, total work / N) computed
//! from the step durations actually measured, and their ratio; beside them, from the same
//! durations, a tighter bound that counts the slots no schedule can fill while the hierarchy ramps
//! up (`ramp`), the makespan of an overhead-free engine with the same scheduling rule (`ideal`,
//! simulated), and the makespan of a level-by-level barrier schedule (run for real). Then the
//! engine's CPU time per server on a run whose steps do nothing.

#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    reason = "benchmark program"
)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use engine::{
    Engine, Interrupts, RunOptions, StepContext, StepError, StepOutput, StepSpec, Workflow,
};
use topology::{Mode, SelectOptions, Server, Topology};

// The allocator of the `wsus-reset` binary, which the engine runs in.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Sleepy {
    /// Per server, the latency of each step, drawn from the seed.
    latencies: HashMap<String, Vec<Duration>>,
}

fn steps(mode: Mode) -> Vec<StepSpec> {
    let mut s = vec![StepSpec::read("probe")];
    if mode == Mode::Replica {
        s.push(StepSpec::mutate("switch"));
    }
    s.extend([
        StepSpec::mutate("decline"),
        StepSpec::mutate("approve"),
        StepSpec::mutate("decline-again"),
    ]);
    if mode == Mode::Replica {
        s.push(StepSpec::compensate("restore", 1));
    }
    s.push(StepSpec::read("verify"));
    s
}

impl Workflow for Sleepy {
    type Session = ();

    fn steps(&self, server: &Server) -> Vec<StepSpec> {
        steps(server.mode)
    }

    async fn open(&self, _: &Server) -> Result<(), StepError> {
        Ok(())
    }

    async fn run(
        &self,
        _: &mut (),
        server: &Server,
        step: &StepSpec,
        _: &StepContext,
    ) -> Result<StepOutput, StepError> {
        // Without building the step list again: the fake should cost nothing beside the engine.
        let names: &[&str] = match server.mode {
            Mode::Replica => &[
                "probe",
                "switch",
                "decline",
                "approve",
                "decline-again",
                "restore",
                "verify",
            ],
            Mode::Autonomous => &["probe", "decline", "approve", "decline-again", "verify"],
        };
        let index = names.iter().position(|n| *n == step.name).unwrap();
        let latency = self.latencies[&server.name][index];
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        Ok(StepOutput::default())
    }

    async fn took_effect(
        &self,
        _: &mut (),
        _: &Server,
        _: &StepSpec,
        _: &StepContext,
    ) -> Result<bool, StepError> {
        Ok(false)
    }
}

fn hierarchy(tops: usize, fan_out: usize, levels: u32) -> Topology {
    let mut text = String::from("version: 1\nservers:\n");
    let mut level: Vec<String> = (0..tops).map(|i| format!("t{i}")).collect();
    for name in &level {
        text.push_str(&format!("  - name: {name}\n    sql: {{ host: h }}\n"));
    }
    for _ in 1..levels {
        let mut next = Vec::new();
        for parent in &level {
            for c in 0..fan_out {
                let name = format!("{parent}-{c}");
                let mode = if c % 2 == 0 { "replica" } else { "autonomous" };
                text.push_str(&format!("  - name: {name}\n    upstream: {parent}\n    mode: {mode}\n    sql: {{ host: h }}\n"));
                next.push(name);
            }
        }
        level = next;
    }
    Topology::from_bytes("bench.yaml", text.as_bytes()).unwrap()
}

fn draw_latencies(
    t: &Topology,
    seed: u64,
    min_ms: u64,
    max_ms: u64,
) -> HashMap<String, Vec<Duration>> {
    let mut rng = fastrand::Rng::with_seed(seed);
    t.servers()
        .iter()
        .map(|s| {
            let l = steps(s.mode)
                .iter()
                .map(|_| Duration::from_millis(rng.u64(min_ms..=max_ms)))
                .collect();
            (s.name.clone(), l)
        })
        .collect()
}

/// A lower bound that counts the slots no schedule can fill while the hierarchy ramps up: before
/// e_k, the earliest moment any server of depth k can start (its ancestors' durations summed),
/// only the servers above depth k can run, so at most that many of the N slots are busy.
fn ramp_bound(t: &Topology, duration: &dyn Fn(&str) -> Duration, parallel: usize) -> Duration {
    let n = t.servers().len();
    let mut start = vec![Duration::ZERO; n];
    let mut total = Duration::ZERO;
    let depth_max = t.ids().map(|id| t.server(id).depth).max().unwrap_or(0) as usize;
    let mut earliest = vec![Duration::MAX; depth_max + 1];
    let mut above = vec![0usize; depth_max + 2];
    let mut ids: Vec<topology::ServerId> = t.ids().collect();
    ids.sort_by_key(|id| t.server(*id).depth);
    for &id in &ids {
        let s = t.server(id);
        let d = duration(&s.name);
        total += d;
        start[id.0] = t
            .upstream(id)
            .map_or(Duration::ZERO, |u| start[u.0] + duration(&t.server(u).name));
        let k = s.depth as usize;
        earliest[k] = earliest[k].min(start[id.0]);
        above[k + 1] += 1;
    }
    let mut idle = Duration::ZERO; // slot-time no schedule can use
    let mut below = 0usize;
    for k in 1..=depth_max {
        below += above[k];
        let free = u32::try_from(parallel.saturating_sub(below)).unwrap();
        idle += (earliest[k] - earliest[k - 1]) * free;
    }
    (total + idle) / u32::try_from(parallel).unwrap()
}

/// The makespan of an engine without any overhead: the same rule as the engine (start a ready
/// server whenever fewer than `parallel` run, the one with the tallest subtree first), simulated
/// with the measured durations. What separates it from the lower bound is the shape (a few top
/// servers cannot fill many slots); what separates the real run from it is the engine.
fn ideal_makespan(t: &Topology, duration: &dyn Fn(&str) -> Duration, parallel: usize) -> Duration {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    let n = t.servers().len();
    let mut height = vec![0u32; n];
    let mut ids: Vec<topology::ServerId> = t.ids().collect();
    ids.sort_by_key(|id| Reverse(t.server(*id).depth));
    for &id in &ids {
        if let Some(up) = t.upstream(id) {
            height[up.0] = height[up.0].max(height[id.0] + 1);
        }
    }
    let mut ready: BinaryHeap<(u32, Reverse<usize>)> = t
        .ids()
        .filter(|&id| t.upstream(id).is_none())
        .map(|id| (height[id.0], Reverse(id.0)))
        .collect();
    let mut running: BinaryHeap<Reverse<(Duration, usize)>> = BinaryHeap::new();
    let mut now = Duration::ZERO;
    loop {
        while running.len() < parallel {
            let Some((_, Reverse(i))) = ready.pop() else {
                break;
            };
            let d = duration(&t.server(topology::ServerId(i)).name);
            running.push(Reverse((now + d, i)));
        }
        let Some(Reverse((end, i))) = running.pop() else {
            return now;
        };
        now = end;
        for child in t.downstream(topology::ServerId(i)) {
            ready.push((height[child.0], Reverse(child.0)));
        }
    }
}

/// The level-by-level barrier schedule, run for real with the same engine and latencies: each
/// level is a run of its own that starts when the previous level has entirely finished.
async fn barrier_makespan(t: &Arc<Topology>, levels: u32, parallel: usize) -> Duration {
    let mut total = Duration::ZERO;
    for depth in 0..levels {
        let servers: Vec<topology::ServerId> =
            t.ids().filter(|&id| t.server(id).depth == depth).collect();
        let partial = servers
            .iter()
            .copied()
            .filter(|&id| t.upstream(id).is_some())
            .collect();
        let workflow = Sleepy {
            latencies: draw_latencies(t, 42, 2, 8),
        };
        let (makespan, _) = run_selection(
            t,
            workflow,
            parallel,
            topology::Selection { servers, partial },
        )
        .await;
        total += makespan;
    }
    total
}

/// (user, system) CPU time of this process, in clock ticks (100 per second on Linux).
fn cpu_time() -> (Duration, Duration) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    // After the command name come state (field 3), then ppid (4) ... utime (14) and stime (15);
    // tpgid (8) is often -1, so fields are counted as words, not parsed as unsigned.
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |field: usize| {
        let n: u64 = fields
            .get(field - 3)
            .and_then(|f| f.parse().ok())
            .unwrap_or(0);
        Duration::from_millis(n * 10)
    };
    (ticks(14), ticks(15))
}

/// Runs the engine; returns the makespan and each server's duration as the engine reports it
/// (from its start to its last journal record, so journal waits count as the server's work).
async fn run_once(
    t: &Arc<Topology>,
    workflow: Sleepy,
    parallel: usize,
) -> (Duration, HashMap<String, Duration>) {
    run_selection(
        t,
        workflow,
        parallel,
        t.select(&SelectOptions::default()).unwrap(),
    )
    .await
}

async fn run_selection(
    t: &Arc<Topology>,
    workflow: Sleepy,
    parallel: usize,
    selection: topology::Selection,
) -> (Duration, HashMap<String, Duration>) {
    let state = tempfile::tempdir().unwrap();
    let options = RunOptions {
        parallel,
        state_dir: state.path().to_path_buf(),
        seed: Some(1),
        ..RunOptions::default()
    };
    let workflow = Arc::new(workflow);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let collector = tokio::spawn(async move {
        let mut durations = HashMap::new();
        while let Some(event) = rx.recv().await {
            if let engine::Event::ServerFinished {
                server, duration, ..
            } = event
            {
                durations.insert(server, duration);
            }
        }
        durations
    });
    let started = Instant::now();
    let report = Engine::new(Handle(Arc::clone(&workflow)), Arc::clone(t), options)
        .with_events(tx)
        .apply(&selection, Interrupts::default())
        .await
        .unwrap();
    let makespan = started.elapsed();
    assert_eq!(report.outcome, engine::RunOutcome::Succeeded);
    (makespan, collector.await.unwrap())
}

/// Lets the benchmark keep the workflow after the engine is done with it.
struct Handle(Arc<Sleepy>);

impl Workflow for Handle {
    type Session = ();
    fn steps(&self, server: &Server) -> Vec<StepSpec> {
        self.0.steps(server)
    }
    async fn open(&self, s: &Server) -> Result<(), StepError> {
        self.0.open(s).await
    }
    async fn run(
        &self,
        x: &mut (),
        s: &Server,
        st: &StepSpec,
        c: &StepContext,
    ) -> Result<StepOutput, StepError> {
        self.0.run(x, s, st, c).await
    }
    async fn took_effect(
        &self,
        x: &mut (),
        s: &Server,
        st: &StepSpec,
        c: &StepContext,
    ) -> Result<bool, StepError> {
        self.0.took_effect(x, s, st, c).await
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let (tops, fan_out, levels) = match args.as_slice() {
        [a, b, c, ..] => (*a, *b, u32::try_from(*c).unwrap()),
        _ => (10, 10, 4),
    };
    // `0` alone as N: only the CPU figure.
    let ns: Vec<usize> = if args.len() > 3 {
        args[3..].iter().copied().filter(|n| *n > 0).collect()
    } else {
        vec![8, 64, 512]
    };
    let t = Arc::new(hierarchy(tops, fan_out, levels));
    let n_servers = t.servers().len();
    println!(
        "hierarchy: {n_servers} servers, {tops} top servers, fan-out {fan_out}, {levels} levels; steps sleep 2..=8 ms (seed 42)"
    );
    println!(
        "{:>5} {:>12} {:>12} {:>7} {:>9} {:>9} {:>9} {:>14} {:>9}",
        "N",
        "makespan",
        "lower bound",
        "ratio",
        "ramp/lb",
        "ideal/lb",
        "run/ideal",
        "barrier sched",
        "barrier/lb"
    );
    for &n in &ns {
        let workflow = Sleepy {
            latencies: draw_latencies(&t, 42, 2, 8),
        };
        let (makespan, measured) = run_once(&t, workflow, n).await;
        let dur = |name: &str| measured.get(name).copied().unwrap_or_default();
        // Critical path over measured server durations, top-down in execution order.
        let mut finish: Vec<Duration> = vec![Duration::ZERO; n_servers];
        let mut total = Duration::ZERO;
        for id in t.ids() {
            let s = t.server(id);
            let d = dur(&s.name);
            total += d;
            finish[id.0] = t.upstream(id).map_or(Duration::ZERO, |u| finish[u.0]) + d;
        }
        let critical = finish.into_iter().max().unwrap_or_default();
        let lower = critical.max(total / u32::try_from(n).unwrap());
        let ideal = ideal_makespan(&t, &dur, n);
        let ramp = ramp_bound(&t, &dur, n);
        let barrier = barrier_makespan(&t, levels, n).await;
        let lb = lower.as_secs_f64();
        println!(
            "{n:>5} {:>10.3} s {:>10.3} s {:>7.3} {:>9.3} {:>9.3} {:>9.3} {:>12.3} s {:>9.3}",
            makespan.as_secs_f64(),
            lb,
            makespan.as_secs_f64() / lb,
            ramp.as_secs_f64() / lb,
            ideal.as_secs_f64() / lb,
            makespan.as_secs_f64() / ideal.as_secs_f64(),
            barrier.as_secs_f64(),
            barrier.as_secs_f64() / lb
        );
    }

    // Engine CPU per server: steps that do nothing, so what is left is the engine's own work
    // (scheduling, journal records and their fsyncs, events).
    let workflow = Sleepy {
        latencies: draw_latencies(&t, 42, 0, 0),
    };
    let (user0, sys0) = cpu_time();
    let (makespan, _) = run_once(&t, workflow, 64).await;
    let (user1, sys1) = cpu_time();
    let per = |d: Duration| d.as_secs_f64() * 1e6 / n_servers as f64;
    println!(
        "engine CPU: {:.1} µs per server: {:.1} µs user, {:.1} µs system (the journal's writes and \
         fsyncs, thread wake-ups) ({} servers, {:.2} s wall, N = 64, zero-latency steps)",
        per(user1 - user0 + sys1 - sys0),
        per(user1 - user0),
        per(sys1 - sys0),
        n_servers,
        makespan.as_secs_f64()
    );
}
