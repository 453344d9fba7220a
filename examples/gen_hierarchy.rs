//! Writes a synthetic topology file: `N` servers over `L` levels, filled breadth-first with the
//! smallest fan-out that fits, every third server autonomous and the rest below the top replicas.
//! Used by the benchmarks in BENCHMARKS.md. A third argument, `api`, reaches every server through
//! its web service (`api`, plain HTTP) instead of its SUSDB.
//!
//!     cargo run --release --example gen_hierarchy -- 100000 5 > /tmp/big.yaml
//!     cargo run --release --example gen_hierarchy -- 1000 4 api > /tmp/h1000api.yaml

use std::io::{BufWriter, Write};

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(servers), Some(levels)) = (
        args.first().and_then(|a| a.parse::<usize>().ok()),
        args.get(1).and_then(|a| a.parse::<u32>().ok()),
    ) else {
        let mut err = std::io::stderr();
        writeln!(
            err,
            "usage: gen_hierarchy SERVERS LEVELS [api] > topology.yaml"
        )?;
        std::process::exit(2);
    };
    let fan_out = (1usize..)
        .find(|f| (0..levels).map(|k| f.saturating_pow(k)).sum::<usize>() >= servers)
        .unwrap_or(1);

    let mut out = BufWriter::new(std::io::stdout().lock());
    writeln!(
        out,
        "version: 1\ndefaults:\n  sql:\n    encrypt: danger-plaintext"
    )?;
    writeln!(
        out,
        "    auth: {{ method: sql, user: wsus_repair, password_env: WSUS_SQL_PASSWORD }}"
    )?;
    let api = args.get(2).is_some_and(|a| a == "api");
    if api {
        writeln!(out, "  api:\n    port: 8530\n    tls: false")?;
        writeln!(
            out,
            "    auth: {{ method: windows, user: 'BENCH\\wsus_repair', password_env: WSUS_ADMIN_PASSWORD }}"
        )?;
    }
    writeln!(out, "servers:")?;
    // Breadth-first: server i's upstream is (i - 1) / fan_out, so levels fill one after another.
    for i in 0..servers {
        writeln!(out, "  - name: wsus-{i:06}")?;
        if i > 0 {
            writeln!(out, "    upstream: wsus-{:06}", (i - 1) / fan_out)?;
            if i % 3 != 0 {
                writeln!(out, "    mode: replica")?;
            }
        }
        if api {
            writeln!(out, "    api: {{ host: wsus-{i:06}.bench.example }}")?;
        } else {
            writeln!(out, "    sql: {{ host: sql-{i:06}.bench.example }}")?;
        }
    }
    out.flush()
}
