//! The command line, declared with clap.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "wsus-reset",
    version,
    about = "Repairs the KB 954960 approval fault (Office 2003 SP1, client error 0x8024400E) across a WSUS hierarchy, top-down",
    after_help = "Exit codes: 0 ok; 1 the run failed on some server; 2 bad input or usage; \
                  3 another run holds the lock; 4 an unfinished run needs `wsus-reset resume`."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a topology file and report every mistake in it.
    Validate {
        /// The topology file (YAML).
        file: PathBuf,
    },
    /// Draw the hierarchy.
    Graph {
        /// The topology file (YAML).
        file: PathBuf,
        #[arg(long, value_enum, default_value_t = GraphFormat::Tree)]
        format: GraphFormat,
    },
    /// Print the top-down repair plan, without contacting any server.
    Plan {
        /// The topology file (YAML).
        file: PathBuf,
        #[arg(long, value_enum, default_value_t = PlanFormat::Text)]
        format: PlanFormat,
        /// Also write the plan as JSON to this file (for review, and for `apply` later).
        #[arg(long, value_name = "PLAN.json")]
        out: Option<PathBuf>,
        #[command(flatten)]
        select: SelectArgs,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GraphFormat {
    /// An indented tree; replicas are marked.
    Tree,
    /// Graphviz DOT.
    Dot,
    /// A Mermaid flowchart, for GitHub markdown.
    Mermaid,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PlanFormat {
    Text,
    Json,
    /// A review document for a change board.
    Markdown,
}

/// Which servers a walking command takes.
#[derive(Debug, Clone, Args)]
pub struct SelectArgs {
    /// Only this server (repeatable); default: every server.
    #[arg(long, value_name = "NAME")]
    pub only: Vec<String>,
    /// Add the whole downstream subtree of each `--only` server.
    #[arg(long, requires = "only")]
    pub with_downstream: bool,
    /// Accept servers selected without their upstream (breaks the top-down guarantee for them).
    #[arg(long, requires = "only")]
    pub allow_partial: bool,
}

impl From<SelectArgs> for topology::SelectOptions {
    fn from(args: SelectArgs) -> Self {
        topology::SelectOptions {
            only: args.only,
            with_downstream: args.with_downstream,
            allow_partial: args.allow_partial,
        }
    }
}
