//! The command line, declared with clap.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "wsus-reset",
    version,
    about = "Repairs the KB 954960 approval fault (Office 2003 SP1, client error 0x8024400E) across a WSUS hierarchy, top-down",
    after_help = "Exit codes: 0 ok; 1 the run failed on some server (or verify, plan --online, \
                  diagnose found one not ready); 2 bad input or usage, nothing changed; 3 another \
                  run holds the lock; 4 the run is unfinished: run the `wsus-reset resume` command \
                  it prints."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
#[expect(
    clippy::large_enum_variant,
    reason = "parsed once per process; boxing would only move the size"
)]
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
    /// Print the top-down repair plan; with --online, probe every server first (read-only).
    Plan {
        /// The topology file (YAML).
        file: PathBuf,
        #[arg(long, value_enum, default_value_t = PlanFormat::Text)]
        format: PlanFormat,
        /// Also write the plan as JSON to this file (for review, and for `apply` later).
        #[arg(long, value_name = "PLAN.json")]
        out: Option<PathBuf>,
        /// Probe every selected server (read-only) and plan from what it holds.
        #[arg(long)]
        online: bool,
        /// Plan to accept the update's licence agreement where WSUS requires it before the
        /// approval (ExecuteSPAcceptEula, over the web service); `apply` must say the same.
        #[arg(long)]
        accept_eula: bool,
        #[command(flatten)]
        select: SelectArgs,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Repair the selected servers, top-down, journaled.
    Apply {
        /// The topology file (YAML), or a plan saved with `plan --out` (refused if the topology
        /// or, for an online plan, a server's observed state changed since).
        input: PathBuf,
        /// Do not ask for confirmation (required when not on a terminal).
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        select: SelectArgs,
        #[command(flatten)]
        run: RunArgs,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Finish the unfinished run in the state directory, with the topology it began with.
    Resume {
        #[command(flatten)]
        run: RunArgs,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Prove the repair (read-only): exit 0 only if every selected server holds the update
    /// declined and consistent, or lacks it, and is in its declared mode.
    Verify {
        /// The topology file (YAML).
        file: PathBuf,
        #[command(flatten)]
        select: SelectArgs,
        #[command(flatten)]
        conn: ConnArgs,
        /// The report: the table, or one JSON document (each server's survey and, with
        /// `--client`, its client check).
        #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
        format: ReportFormat,
        /// Same as `--format json`.
        #[arg(long, conflicts_with = "format")]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Walk the hierarchy from the file's top servers (read-only: each server's downstream-server
    /// table and its own configuration, level by level) and write the file with every server it
    /// lacks appended.
    Discover {
        /// The seed topology: at least the top server(s), and the `defaults` for servers found.
        seed: PathBuf,
        /// Where to write the complete topology (refused if it exists).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// How found servers are reached; default: as their top server is.
        #[arg(long, value_enum)]
        transport: Option<TransportArg>,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Compare the file with what the servers say (read-only): servers registered downstream
    /// but missing from the file, servers no upstream registered or that stopped synchronizing,
    /// upstream and mode disagreements. Exit 0 when they agree, 1 when they differ.
    Diff {
        /// The topology file (YAML).
        file: PathBuf,
        /// A registered server whose last synchronization is older than this is reported.
        #[arg(long, default_value_t = 30, value_name = "N")]
        stale_days: u32,
        #[arg(long, value_enum, default_value_t = PlanFormat::Text)]
        format: PlanFormat,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Write the repair of each selected server as a reviewed T-SQL script, for WID/SSEE
    /// databases reached only locally (sqlcmd on the server).
    ExportSql {
        /// The topology file (YAML).
        file: PathBuf,
        /// The directory to write `NNNN-<server>.sql` into (created if missing); the number is the
        /// execution order.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        #[command(flatten)]
        select: SelectArgs,
    },
    /// Find the KB 954960 fault in client and server logs (and, with --topology, in SUSDB) and
    /// name the broken servers. Read-only.
    Diagnose {
        /// A client WindowsUpdate.log: a file, a directory (walked) or a glob; repeatable.
        #[arg(long = "client-log", value_name = "PATH")]
        client_logs: Vec<PathBuf>,
        /// A server SoftwareDistribution.log: a file, a directory or a glob; repeatable.
        #[arg(long = "server-log", value_name = "PATH")]
        server_logs: Vec<PathBuf>,
        /// What `verify --client --format json` wrote: the synthetic client's faults, tied to the
        /// server logs by their IDs as a real client's are; repeatable.
        #[arg(long = "client-scan", value_name = "FILE")]
        client_scans: Vec<PathBuf>,
        /// Also probe every server of this hierarchy (read-only) and place each logged key.
        #[arg(long, value_name = "FILE")]
        topology: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = PlanFormat::Text)]
        format: PlanFormat,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Rehearse the whole repair on an in-process lab copy of the hierarchy: online plan, apply,
    /// verify, through the real client path on loopback.
    Rehearse {
        /// The topology file (YAML).
        file: PathBuf,
        #[command(flatten)]
        options: RehearseArgs,
    },
    /// Serve emulated SUSDB databases for every server of a hierarchy (TDS on one port).
    Lab {
        /// The topology file (YAML).
        file: PathBuf,
        /// Address to listen on (port 0: any free port; the chosen one is printed).
        #[arg(long, default_value = "127.0.0.1:14330")]
        listen: SocketAddr,
        /// Allow a listen address that is not loopback.
        #[arg(long)]
        listen_any: bool,
        /// Also serve every server's administration web service (ApiRemoting30, SOAP over HTTP)
        /// here, each request routed to a server by its `Host` (the server's name or host).
        #[arg(long, value_name = "ADDR", conflicts_with = "listen_pipe")]
        api_listen: Option<SocketAddr>,
        /// Windows only: serve this local named pipe instead of TCP, as WID and SSEE do
        /// (`\\.\pipe\MICROSOFT##WID\tsql\query`); plaintext.
        #[arg(long, value_name = "NAME", conflicts_with_all = ["listen_any", "tls_cert", "tls_generate"])]
        listen_pipe: Option<String>,
        /// Encrypt with this certificate chain (PEM), as SQL Server does; plaintext without.
        #[arg(
            long,
            value_name = "FILE",
            requires = "tls_key",
            conflicts_with = "tls_generate"
        )]
        tls_cert: Option<PathBuf>,
        /// The certificate's private key (PEM).
        #[arg(long, value_name = "FILE", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Encrypt with a throwaway authority and a certificate for every host of the topology;
        /// the authority is written to DIR/ca.pem for clients to trust.
        #[arg(long, value_name = "DIR")]
        tls_generate: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = LabSeed::Broken)]
        seed: LabSeed,
        #[command(flatten)]
        platform: PlatformArgs,
        /// Every N milliseconds each server in replica mode synchronizes from its upstream (its
        /// declined state and approvals), as WSUS replicas do; off when not given.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        replica_sync_ms: Option<u64>,
        /// Keep the whole lab state in this JSON file (loaded at start, written after each change
        /// and at exit).
        #[arg(long)]
        state: Option<PathBuf>,
        /// Faults to inject (YAML).
        #[arg(long)]
        faults: Option<PathBuf>,
        /// Milliseconds added to every round trip.
        #[arg(long, default_value_t = 0)]
        latency: u64,
        /// Require this SQL login (with --password-env).
        #[arg(long, requires = "password_env")]
        user: Option<String>,
        /// The environment variable holding the login's password.
        #[arg(long, requires = "user")]
        password_env: Option<String>,
        /// Accept Windows logins (NTLM) for this account, `DOMAIN\\user` (with
        /// --windows-password-env).
        #[arg(long, requires = "windows_password_env", value_name = "DOMAIN\\USER")]
        windows_user: Option<String>,
        /// The environment variable holding the Windows account's password.
        #[arg(long, requires = "windows_user", value_name = "VAR")]
        windows_password_env: Option<String>,
        /// A Windows account (same password) in the console's read-only role (WSUS Reporters):
        /// its reads are answered, its changes refused with 403 (repeatable).
        #[arg(long, requires = "windows_user", value_name = "DOMAIN\\USER")]
        api_reporter: Vec<String>,
        /// The numbers GetCurrentUserRole answers the administrator and a reporter (the real
        /// enum's numbers are not public; the defaults, admin=1,reporter=2, are made up).
        #[arg(
            long,
            value_name = "admin=N,reporter=M",
            default_value = "admin=1,reporter=2"
        )]
        api_roles: susdb_lab::wsus::ApiRoles,
        /// The web service offers only `Negotiate`, as a site whose NTLM provider was removed
        /// (NTLM tokens are still taken inside it, as SPNEGO does).
        #[arg(long, requires = "windows_user")]
        api_negotiate_only: bool,
        /// A registered downstream server the lab does not serve (decommissioned, never deleted
        /// from its upstream's table), under UPSTREAM or the first top server (repeatable).
        #[arg(long, value_name = "NAME[@UPSTREAM]")]
        stale: Vec<String>,
        /// Write each server's SoftwareDistribution.log under DIR/NAME/, as a real server logs
        /// the client web service's faults (the KB 954960 one with its stack); `diagnose
        /// --server-log DIR` reads them.
        #[arg(long, value_name = "DIR")]
        server_log: Option<PathBuf>,
        /// At most N updates per SyncUpdates answer (WSUS: 200), so that clients page.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=200))]
        client_page: Option<u64>,
    },
    /// Print a shell completion script: bash, zsh, fish, powershell or elvish.
    ///
    /// bash: `wsus-reset completions bash > /etc/bash_completion.d/wsus-reset`;
    /// PowerShell: `wsus-reset completions powershell | Out-String | Invoke-Expression` (add it
    /// to `$PROFILE` to keep it).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), made from these same definitions: `wsus-reset man >
    /// wsus-reset.1; man -l wsus-reset.1`; `wsus-reset man apply` for one command's page, or
    /// `--dir DIR` to write every page (wsus-reset.1, wsus-reset-apply.1, ...) there.
    Man {
        /// One command's page instead of the main one.
        command: Option<String>,
        /// Write the main page and every command's page into this directory.
        #[arg(long, value_name = "DIR", conflicts_with = "command")]
        dir: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LabSeed {
    /// The KB 954960 state everywhere: client sync fails.
    Broken,
    /// Declined and consistent everywhere.
    Healthy,
    /// A deterministic variety.
    Mixed,
    /// Broken, with two revisions flagged latest.
    SeveralLatest,
}

/// How to reach the servers.
#[derive(Debug, Clone, Args)]
pub struct ConnArgs {
    /// Send every TCP connection to this address (a lab) while each login still names its own
    /// server; plaintext only to a loopback address.
    #[arg(long, value_name = "ADDR")]
    pub connect_via: Option<SocketAddr>,
    /// Send every web-service connection to this address (a lab) while each request still
    /// names its own server's `api.host`; plaintext only to a loopback address.
    #[arg(long, value_name = "ADDR")]
    pub api_via: Option<SocketAddr>,
    /// With --connect-via or --api-via: keep each server's TLS and validate the lab's
    /// certificate against this authority (the `ca.pem` of `lab --tls-generate`).
    #[arg(long, value_name = "FILE")]
    pub connect_via_ca: Option<PathBuf>,
    /// Seconds to wait for a connection and login.
    #[arg(long, default_value_t = 15, value_name = "SECONDS")]
    pub connect_timeout: u64,
    /// Seconds to wait for one command.
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    pub command_timeout: u64,
    /// Servers probed at once by read-only commands.
    #[arg(long = "probe-parallel", default_value_t = 16, value_name = "N")]
    pub probe_parallel: usize,
}

/// The synthetic Windows Update client of `verify --client`.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Also scan each server with `api` as a Windows Update client would (MS-WUSP), claiming
    /// Office 2003: the KB's own proof. It registers a computer, wsus-reset-probe-XXXXXXXX.invalid
    /// (a fresh client ID), and deletes it again through the administration web service.
    #[arg(long)]
    pub client: bool,
    /// The target group the client asks to join (client-side targeting); without it the
    /// server puts it in Unassigned Computers. Approvals reach it through All Computers and
    /// this group only.
    #[arg(long, value_name = "NAME", requires = "client")]
    pub client_group: Option<String>,
    /// Where the record of the client's computers not yet removed is kept
    /// (client-probes.json): the next `verify --client` removes what a killed run left.
    #[arg(long, default_value = DEFAULT_STATE_DIR, value_name = "DIR")]
    pub state_dir: PathBuf,
}

/// Where journals and the run lock live unless `--state-dir` says otherwise.
pub const DEFAULT_STATE_DIR: &str = ".wsus-reset";

/// How a changing run behaves.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Servers in flight at most.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..))]
    pub parallel: u16,
    /// Stop starting servers after this many failures.
    #[arg(long, value_name = "K")]
    pub max_failures: Option<usize>,
    /// Where the lock and the journals live.
    #[arg(long, default_value = DEFAULT_STATE_DIR, value_name = "DIR")]
    pub state_dir: PathBuf,
    /// Events as JSON lines on stdout instead of progress and the summary table.
    #[arg(long)]
    pub json: bool,
    /// Repeat servers that an earlier finished run in the state directory proved done.
    #[arg(long)]
    pub new_run: bool,
    /// Accept the update's licence agreement where WSUS requires it before the approval
    /// (ExecuteSPAcceptEula, over the web service); without it such a server is refused before
    /// any change.
    #[arg(long)]
    pub accept_eula: bool,
    /// How often each hierarchy lock's connection is checked (and kept from idling out); a lock
    /// found lost is taken again at once, or no further server starts.
    #[arg(long, default_value_t = 30_000, value_name = "MS", value_parser = clap::value_parser!(u64).range(10..))]
    pub lock_check_ms: u64,
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

/// A transport, as `--transport` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TransportArg {
    /// The SUSDB over TDS (`sql: { host: ... }`).
    Sql,
    /// The administration web service (`api: { host: ... }`).
    Api,
}

impl From<TransportArg> for topology::Transport {
    fn from(t: TransportArg) -> Self {
        match t {
            TransportArg::Sql => topology::Transport::Sql,
            TransportArg::Api => topology::Transport::Api,
        }
    }
}

/// How `verify` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    Text,
    Json,
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

/// The platform the lab emulates: what each server reports, and the TLS it accepts.
#[derive(Debug, Clone, clap::Args)]
pub struct PlatformArgs {
    /// The SQL Server release every server behaves as: what it reports, the TDS version and the
    /// TLS it speaks, what it refuses (2005: SSEE as WSUS 3.0 installs it, TLS 1.0 only; TDS 8.0
    /// `strict` only from 2022).
    #[arg(
        long,
        default_value = "2005",
        value_name = "2005|2008|2008r2|2012|2014|2016|2022"
    )]
    pub sql_version: susdb_lab::version::SqlVersion,
    /// The Windows Server every server runs on: its Schannel's default TLS versions and cipher
    /// suites, for the web site and (bounded by the SQL Server release) for TDS. 2008r2, what a
    /// WSUS 3.0 SP2 server most often runs on, speaks TLS 1.0 only (2008r2-tls12: with TLS 1.2
    /// enabled by its administrator); 2012 to 2019 up to 1.2, 2022 up to 1.3.
    #[arg(
        long,
        default_value = "2008r2",
        value_name = "2003|2008|2008r2|2008r2-tls12|2012|2016|2019|2022"
    )]
    pub windows: susdb_lab::platform::Windows,
    /// One server on another platform (repeatable): NAME=WINDOWS, or NAME=WINDOWS/SQL to give
    /// its SQL Server release too (`wsus-lyon=2008/2005`, `wsus-tokyo=2016/2016`).
    #[arg(long = "platform", value_name = "NAME=WINDOWS[/SQL]", value_parser = susdb_lab::platform::parse_server_platform)]
    pub platforms: Vec<(
        String,
        susdb_lab::platform::Windows,
        Option<susdb_lab::version::SqlVersion>,
    )>,
    /// The WSUS release the servers run (what GetServerVersion answers): VERSION for every
    /// server, NAME=VERSION for one (repeatable). 3.0sp2 by default; 3.0sp1-954960 is SP1 with
    /// the KB's hotfix, which reports the same version as SP1.
    #[arg(
        long = "wsus-version",
        value_name = "[NAME=]3.0|3.0sp1|3.0sp1-954960|3.0sp2",
        value_parser = susdb_lab::wsus::parse_server_version
    )]
    pub wsus_versions: Vec<(Option<String>, susdb_lab::wsus::WsusVersion)>,
}

/// How `rehearse` runs its lab and its repair.
#[derive(Debug, Clone, clap::Args)]
pub struct RehearseArgs {
    /// The state the lab starts in.
    #[arg(long, value_enum, default_value_t = LabSeed::Broken)]
    pub seed: LabSeed,
    /// Servers in flight at most.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..))]
    pub parallel: u16,
    /// Milliseconds added to every round trip in the lab.
    #[arg(long, default_value_t = 0)]
    pub latency: u64,
    /// Keep the journal here instead of a temporary directory.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Events as JSON lines on stdout instead of the report.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub platform: PlatformArgs,
}
