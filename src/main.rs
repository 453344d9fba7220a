//! `wsus-reset`: the binary. It parses the command line, calls the library crates, prints, and maps
//! every outcome to a documented exit code. It is the only place that writes to the terminal.

mod cli;
mod online;
mod report;

// The loader allocates many small strings and nodes; mimalloc makes a 100,000-server file load
// markedly faster than the system allocator (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use topology::{LoadError, Topology};
use workflows::Plan;

use cli::{Cli, Command, GraphFormat, PlanFormat};

/// Exit codes, documented in the README.
mod exit {
    pub const OK: u8 = 0;
    /// The run failed or was skipped on some server, or `verify` found one not repaired.
    pub const FAILED: u8 = 1;
    pub const BAD_INPUT: u8 = 2;
    /// Another run holds the state-directory lock or the hierarchy applock.
    pub const LOCKED: u8 = 3;
    /// An unfinished run needs `wsus-reset resume`.
    pub const UNFINISHED: u8 = 4;
}

/// A failure of a command, and the exit code it maps to.
#[derive(Debug)]
enum Failure {
    /// Bad input or usage (exit 2), with the full text to print.
    BadInput(String),
    /// Another exit code, with the text to print.
    Exit(u8, String),
}

impl From<LoadError> for Failure {
    fn from(error: LoadError) -> Self {
        match error {
            LoadError::Invalid(invalid) => {
                Failure::BadInput(format!("{}{}", invalid.render(), invalid.summary()))
            }
            other => Failure::BadInput(format!("error: {other}")),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Diagnostics only: `RUST_LOG=debug` shows the engine's run > server > step spans as they
    // open and close (with their times), and the events inside them. Colour only on a terminal
    // and without NO_COLOR (https://no-color.org).
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off")),
        )
        .with_span_events(
            tracing_subscriber::fmt::format::FmtSpan::NEW
                | tracing_subscriber::fmt::format::FmtSpan::CLOSE,
        )
        .with_ansi(colour)
        .with_writer(std::io::stderr)
        .init();
    let mut stdout = std::io::stdout();
    let (code, text) = match run(cli, &mut stdout) {
        Ok(code) => return ExitCode::from(code),
        Err(Failure::BadInput(text)) => (exit::BAD_INPUT, text),
        Err(Failure::Exit(code, text)) => (code, text),
    };
    let _ = writeln!(std::io::stderr(), "{}", text.trim_end());
    ExitCode::from(code)
}

fn run(cli: Cli, out: &mut impl Write) -> Result<u8, Failure> {
    match cli.command {
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "wsus-reset", &mut script);
            emit(out, &String::from_utf8_lossy(&script))?;
        }
        Command::Man { command, dir } => {
            let render = |cmd: clap::Command, title: String| {
                let mut page = Vec::new();
                // clap names a command with a `'static` string; the process prints and exits.
                let named: &'static str = Box::leak(title.clone().into_boxed_str());
                clap_mangen::Man::new(cmd.name(named))
                    .title(title)
                    .render(&mut page)
                    .map(|()| page)
                    .map_err(|e| Failure::BadInput(format!("error: cannot render the manual: {e}")))
            };
            let cli = Cli::command();
            let sub = |name: &str| {
                cli.find_subcommand(name).cloned().ok_or_else(|| {
                    Failure::BadInput(format!(
                        "error: no command `{name}`: one of {}",
                        cli.get_subcommands()
                            .map(|c| c.get_name())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                })
            };
            match (command, dir) {
                (Some(name), _) => {
                    let page = render(sub(&name)?, format!("wsus-reset-{name}"))?;
                    emit(out, &String::from_utf8_lossy(&page))?;
                }
                (None, Some(dir)) => {
                    let mut pages = vec![(
                        "wsus-reset".to_string(),
                        render(cli.clone(), "wsus-reset".into())?,
                    )];
                    for c in cli.get_subcommands() {
                        let title = format!("wsus-reset-{}", c.get_name());
                        pages.push((title.clone(), render(c.clone(), title)?));
                    }
                    std::fs::create_dir_all(&dir).map_err(|e| {
                        Failure::BadInput(format!("error: cannot create {}: {e}", dir.display()))
                    })?;
                    for (title, page) in &pages {
                        write_atomically(
                            &dir.join(format!("{title}.1")),
                            &String::from_utf8_lossy(page),
                        )?;
                    }
                    emit(
                        out,
                        &format!("wrote {} pages to {}\n", pages.len(), dir.display()),
                    )?;
                }
                (None, None) => {
                    let page = render(cli.clone(), "wsus-reset".into())?;
                    emit(out, &String::from_utf8_lossy(&page))?;
                }
            }
        }
        Command::Validate { file } => {
            let topology = Topology::load(&file)?;
            let s = topology.stats();
            emit(
                out,
                &format!(
                    "ok: {} servers, {} levels, {} replicas, {} top servers\n",
                    s.servers, s.levels, s.replicas, s.tops
                ),
            )?;
        }
        Command::Graph { file, format } => {
            let topology = Topology::load(&file)?;
            let text = match format {
                GraphFormat::Tree => topology.render_tree(),
                GraphFormat::Dot => topology.render_dot(),
                GraphFormat::Mermaid => topology.render_mermaid(),
            };
            emit(out, &text)?;
        }
        Command::Plan {
            file,
            format,
            out: plan_file,
            online,
            select,
            conn,
        } => {
            let topology = Topology::load(&file)?;
            let selection = online::select(&topology, select)?;
            let plan = if online {
                online::plan_online(&topology, &selection, &conn)?
            } else {
                Plan::offline(&topology, &selection)
            };
            if let Some(path) = plan_file {
                write_atomically(&path, &plan_json(&plan)?)?;
            }
            let text = match format {
                PlanFormat::Text => plan.render_text(),
                PlanFormat::Json => plan_json(&plan)?,
                PlanFormat::Markdown => plan.render_markdown(),
            };
            emit(out, &text)?;
            let unready = plan.unready();
            if !unready.is_empty() {
                return Err(Failure::Exit(
                    exit::FAILED,
                    format!(
                        "{} server(s) could not be vouched for: {} (UNREACHABLE or WILL FAIL above); `apply` refuses this plan until they are fixed or left out with --only",
                        unready.len(),
                        unready.join(", ")
                    ),
                ));
            }
        }
        Command::Apply {
            input,
            yes,
            select,
            run,
            conn,
        } => return online::apply(&input, yes, select, &run, &conn, out),
        Command::Resume { run, conn } => return online::resume(&run, &conn, out),
        Command::Verify {
            file,
            select,
            conn,
            json,
        } => return online::verify(&file, select, &conn, json, out),
        Command::ExportSql {
            file,
            out: dir,
            select,
        } => {
            let topology = Topology::load(&file)?;
            let selection = online::select(&topology, select)?;
            std::fs::create_dir_all(&dir).map_err(|e| {
                Failure::BadInput(format!("error: cannot create {}: {e}", dir.display()))
            })?;
            let mut listing = String::new();
            for (index, &id) in selection.servers.iter().enumerate() {
                let server = topology.server(id);
                let name = workflows::export::file_name(index, server);
                let path = dir.join(&name);
                write_atomically(&path, &workflows::export::script(&topology, server, &name))?;
                listing.push_str(&format!("{}\n", path.display()));
            }
            listing.push_str(&format!(
                "{} scripts; run them in this order, each on its own server, each only after its upstream's succeeded\n",
                selection.servers.len()
            ));
            emit(out, &listing)?;
        }
        Command::Diagnose {
            client_logs,
            server_logs,
            topology,
            format,
            conn,
        } => {
            return online::diagnose(
                &client_logs,
                &server_logs,
                topology.as_deref(),
                format,
                &conn,
                out,
            );
        }
        Command::Rehearse {
            file,
            seed,
            parallel,
            latency,
            state_dir,
            json,
        } => return online::rehearse(&file, seed, parallel, latency, state_dir, json, out),
        Command::Lab {
            file,
            listen,
            listen_any,
            listen_pipe,
            tls_cert,
            tls_key,
            tls_generate,
            seed,
            sql_version,
            replica_sync_ms,
            state,
            faults,
            latency,
            user,
            password_env,
            windows_user,
            windows_password_env,
        } => {
            return online::lab(
                &file,
                online::LabOptions {
                    listen,
                    listen_any,
                    listen_pipe,
                    tls: match (tls_cert.zip(tls_key), tls_generate) {
                        (Some((cert, key)), _) => online::LabTls::Files { cert, key },
                        (None, Some(dir)) => online::LabTls::Generate(dir),
                        (None, None) => online::LabTls::None,
                    },
                    seed,
                    sql_version,
                    replica_sync_ms,
                    state,
                    faults,
                    latency,
                    login: user.zip(password_env),
                    windows_login: windows_user.zip(windows_password_env),
                },
                out,
            );
        }
    }
    Ok(exit::OK)
}

fn plan_json(plan: &Plan) -> Result<String, Failure> {
    let mut text = serde_json::to_string_pretty(plan)
        .map_err(|e| Failure::BadInput(format!("error: cannot encode the plan: {e}")))?;
    text.push('\n');
    Ok(text)
}

/// Writes stdout; a closed pipe (`| head`) is not an error worth a message.
pub(crate) fn emit(out: &mut impl Write, text: &str) -> Result<(), Failure> {
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(Failure::BadInput(format!(
            "error: cannot write output: {e}"
        ))),
        _ => Ok(()),
    }
}

/// Writes a file whole or not at all: a temporary file beside it, then a rename.
fn write_atomically(path: &Path, text: &str) -> Result<(), Failure> {
    let fail = |e: std::io::Error| {
        Failure::BadInput(format!("error: cannot write {}: {e}", path.display()))
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().ok_or_else(|| {
        Failure::BadInput(format!("error: {} is not a file path", path.display()))
    })?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(text.as_bytes()).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(fail)
}
