//! `wsus-reset`: the binary. It parses the command line, calls the library crates, prints, and maps
//! every outcome to a documented exit code. It is the only place that writes to the terminal.

mod cli;
mod commands;
mod report;

// The loader allocates many small strings and nodes; mimalloc makes a 100,000-server file load
// markedly faster than the system allocator (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use topology::LoadError;

use cli::{Cli, Command};

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
        Command::Validate { file } => commands::validate::run(&file, out),
        Command::Graph { file, format } => commands::graph::run(&file, format, out),
        Command::Plan {
            file,
            format,
            out: plan_file,
            online,
            accept_eula,
            select,
            conn,
        } => commands::plan::run(
            &file,
            format,
            plan_file.as_deref(),
            commands::plan::Making {
                online,
                accept_eula,
            },
            select,
            &conn,
            out,
        ),
        Command::Apply {
            input,
            yes,
            select,
            run,
            conn,
        } => commands::apply::run(&input, yes, select, &run, &conn, out),
        Command::Resume { run, conn } => commands::resume::run(&run, &conn, out),
        Command::Verify {
            file,
            select,
            conn,
            format,
            json,
            client,
        } => {
            let json = json || format == cli::ReportFormat::Json;
            commands::verify::run(&file, select, &conn, json, &client, out)
        }
        Command::Discover {
            seed,
            out: path,
            transport,
            conn,
        } => commands::discover::run(&seed, &path, transport.map(Into::into), &conn, out),
        Command::Diff {
            file,
            stale_days,
            format,
            conn,
        } => commands::diff::run(&file, stale_days, format, &conn, out),
        Command::ExportSql {
            file,
            out: dir,
            select,
        } => commands::export_sql::run(&file, &dir, select, out),
        Command::Diagnose {
            client_logs,
            server_logs,
            client_scans,
            topology,
            format,
            conn,
        } => commands::diagnose::run(
            &client_logs,
            &server_logs,
            &client_scans,
            topology.as_deref(),
            format,
            &conn,
            out,
        ),
        Command::Rehearse { file, options } => commands::rehearse::run(&file, options, out),
        Command::Lab {
            file,
            listen,
            listen_any,
            api_listen,
            listen_pipe,
            tls_cert,
            tls_key,
            tls_generate,
            seed,
            platform,
            replica_sync_ms,
            state,
            faults,
            latency,
            user,
            password_env,
            windows_user,
            windows_password_env,
            api_reporter,
            api_roles,
            api_negotiate_only,
            stale,
            server_log,
            client_page,
        } => commands::lab::run(
            &file,
            commands::lab::LabOptions {
                listen,
                listen_any,
                listen_pipe,
                tls: match (tls_cert.zip(tls_key), tls_generate) {
                    (Some((cert, key)), _) => commands::lab::LabTls::Files { cert, key },
                    (None, Some(dir)) => commands::lab::LabTls::Generate(dir),
                    (None, None) => commands::lab::LabTls::None,
                },
                seed,
                api_listen,
                platform,
                replica_sync_ms,
                state,
                faults,
                latency,
                login: user.zip(password_env),
                windows_login: windows_user.zip(windows_password_env),
                api_reporters: api_reporter,
                api_roles,
                api_negotiate_only,
                stale,
                server_log,
                client_page,
            },
            out,
        ),
        Command::Completions { shell } => commands::docs::completions(shell, out),
        Command::Man { command, dir } => commands::docs::man(command, dir, out),
    }
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
pub(crate) fn write_atomically(path: &Path, text: &str) -> Result<(), Failure> {
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
