//! `vfarm`: virtual nodes on demand for grid and HPC sites.
//!
//! `main` parses arguments, runs one command and turns its result into an exit code; errors
//! print their whole chain on stderr (and, with `--output json`, a JSON error document on
//! stdout so programs always get one document).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[cfg(test)]
mod help_tests;

mod cmd;
mod ctx;
mod doctor;
#[cfg(test)]
mod routes_tests;

use ctx::{default_data_dir, Ctx, OutputFormat};

/// The help section of the options every command takes, so each command's own options
/// stand apart from them.
pub(crate) const GLOBAL: &str = "Global options";

/// Options only a client of a remote service uses: `vfarm serve --help` does not offer them.
const CLIENT_ONLY: [&str; 5] = ["server", "token_file", "cert", "key", "ca"];

/// The command line as parsed and as documented (help, man pages, completions).
fn command() -> clap::Command {
    use clap::CommandFactory;
    let mut cmd = Cli::command();
    // Global options reach the subcommands when the command is built; only then can the
    // server's help leave out the client's options.
    cmd.build();
    // `mut_args` keeps the built argument order that clap's lookup index relies on.
    cmd.mut_subcommand("serve", |s| {
        s.mut_args(|a| {
            let client = CLIENT_ONLY.contains(&a.get_id().as_str());
            a.hide(client)
        })
    })
}

#[derive(Parser)]
#[command(
    name = "vfarm",
    version,
    about = "Virtual nodes on demand: build OS images, run them as VMs or containers, run jobs in disposable environments",
    long_about = None,
    propagate_version = true
)]
struct Cli {
    /// Where images, instances and the state database live.
    /// Default: /var/lib/vfarm for root, else $XDG_DATA_HOME/vfarm.
    #[arg(long, global = true, env = "VFARM_DATA_DIR", value_name = "DIR", help_heading = GLOBAL)]
    data_dir: Option<PathBuf>,

    /// Output format: a table for people, or one JSON document on stdout for programs.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "table",
        env = "VFARM_OUTPUT",
        help_heading = GLOBAL
    )]
    output: OutputFormat,

    /// Keep the state in PostgreSQL (postgres://USER:PASSWORD@HOST/DB) instead of SQLite in
    /// the data dir; several control services may share one. The schema is
    /// VFARM_DATABASE_SCHEMA (default `vfarm`; `per-data-dir` gives each data dir its own).
    #[arg(
        long,
        global = true,
        env = "VFARM_DATABASE",
        value_name = "URL",
        hide_env_values = true,
        help_heading = GLOBAL
    )]
    database: Option<String>,

    /// More detail on stderr (repeat for debug logs).
    #[arg(short, long, global = true, action = clap::ArgAction::Count, help_heading = GLOBAL)]
    verbose: u8,

    #[command(flatten)]
    remote: cmd::remote::RemoteArgs,

    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Build, list, inspect, convert, import and remove OS images.
    #[command(subcommand)]
    Image(cmd::image::ImageCmd),
    /// Create, start, stop, pause, resume, exec into, list and destroy instances.
    #[command(subcommand)]
    Instance(cmd::instance::InstanceCmd),
    /// Snapshot an instance's filesystem, list, revert and remove snapshots.
    #[command(subcommand)]
    Snapshot(cmd::instance::SnapshotCmd),
    /// A VM's checkpoints (made by `instance checkpoint`): ls, rm.
    #[command(subcommand)]
    Checkpoint(cmd::instance::CheckpointCmd),
    /// Run a command in a fresh instance, stream its output, exit with its status, destroy it.
    Run(cmd::instance::RunArgs),
    /// Signed HEPiX image lists: create, sign, verify, publish.
    #[command(subcommand)]
    Imagelist(cmd::imagelist::ImagelistCmd),
    /// Subscriptions to signed image lists: add, ls, show, update, rm, revoke.
    #[command(subcommand)]
    Subscription(cmd::imagelist::SubscriptionCmd),
    /// The image cache filled by subscriptions: ls, show, expire, verify.
    #[command(subcommand)]
    Cache(cmd::imagelist::CacheCmd),
    /// Run the HTTP service: REST API, image downloads, OS-Farm one-URL orders.
    Serve(cmd::serve::ServeArgs),
    /// Batch jobs in disposable instances: submit (flags or JSDL), ls, show, cancel, wait,
    /// logs, output; dispatched by `vfarm serve`.
    Job(cmd::job::JobArgs),
    /// Benchmarks: `overhead` measures native vs OCI vs VM on the same workloads.
    #[command(subcommand)]
    Bench(cmd::bench::BenchCmd),
    /// Bearer tokens for the HTTP API: create (shown once), ls, revoke.
    #[command(subcommand)]
    Token(cmd::token::TokenCmd),
    /// The site CA: init, show, issue-host, issue-user, revoke, crl.
    #[command(subcommand)]
    Ca(cmd::ca::CaCmd),
    /// Several hosts: the physical host inventory (add with a join token, ls, show, drain,
    /// undrain, rm).
    #[command(subcommand)]
    Host(cmd::host::HostCmd),
    /// The site's instance networks (serve.toml `[[networks]]`): ls, show, up, down.
    #[command(subcommand)]
    Network(cmd::network::NetworkCmd),
    /// Virtual grids: a whole site of instances in roles from one file, up and down together
    /// (up, ls, show, down, extend).
    #[command(subcommand)]
    Grid(cmd::grid::GridCmd),
    /// Run this machine as a node of a control service (joins once with a token, then
    /// serves instances over mutual TLS and reports by heartbeat).
    Node(cmd::node::NodeArgs),
    /// Who you are to the service (--server, e.g. unix:/run/vfarm.sock) or here: user, how
    /// identified, whether an admin.
    Whoami,
    /// What this machine can run, measured: oci, qemu (KVM or TCG), image builds, Slurm, the
    /// database; each failure with the command that fixes it. Exit 0 when the core works (the
    /// database opens and oci or qemu runs instances), 1 otherwise.
    Doctor,
    /// Print a shell completion script: `vfarm completions bash > /etc/bash_completion.d/vfarm`.
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write man pages (vfarm.1 and one per subcommand) into DIR.
    Man {
        /// The directory the pages go to (made if missing).
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    use clap::FromArgMatches;
    let cli = Cli::from_arg_matches(&command().get_matches()).unwrap_or_else(|e| e.exit());
    // A service logs what it does (requests, dispatches, its configuration) by default; a
    // command only its warnings.
    let (service, json_log) = match &cli.command {
        Command::Serve(a) => (true, a.log_format == cmd::serve::LogFormat::Json),
        Command::Node(_) => (true, false),
        _ => (false, false),
    };
    init_tracing(cli.verbose + u8::from(service), json_log);
    if let Some(url) = &cli.database {
        // Every store this process opens (threads, reconcilers) and every runner it starts
        // reads the same setting.
        std::env::set_var("VFARM_DATABASE", url);
    }
    let ctx = Ctx::new(
        cli.data_dir.clone().unwrap_or_else(default_data_dir),
        cli.output,
        cli.verbose,
    );
    let remote = cli.remote.server.is_some();
    let result = match cli.command {
        Command::Instance(c) if remote => cmd::remote::run_instance(&ctx, &cli.remote, c),
        Command::Snapshot(c) if remote => cmd::remote::run_snapshot(&ctx, &cli.remote, c),
        Command::Image(c) if remote => cmd::remote::run_image(&ctx, &cli.remote, c),
        Command::Token(c) if remote => cmd::remote_lists::run_token(&ctx, &cli.remote, c),
        Command::Imagelist(c) if remote => cmd::remote_lists::run_imagelist(&ctx, &cli.remote, c),
        Command::Subscription(c) if remote => {
            cmd::remote_lists::run_subscription(&ctx, &cli.remote, c)
        }
        Command::Cache(c) if remote => cmd::remote_lists::run_cache(&ctx, &cli.remote, c),
        Command::Job(a) if remote => cmd::remote_job::run_job(&ctx, &cli.remote, a),
        Command::Network(c) if remote => cmd::network::run_remote(&ctx, &cli.remote, c),
        Command::Grid(c) if remote => cmd::grid::run_remote(&ctx, &cli.remote, c),
        Command::Checkpoint(_) if remote => Err(anyhow::anyhow!(
            "--server does not reach checkpoints yet: run `vfarm checkpoint` on the service's \
             host (or unset VFARM_SERVER)"
        )),
        Command::Run(_) if remote => Err(anyhow::anyhow!(
            "--server works with `image`, `instance`, `snapshot` and `job` commands; for a \
             disposable run on the service use `vfarm --server URL job submit` (or unset \
             VFARM_SERVER)"
        )),
        Command::Image(c) => cmd::image::run(&ctx, c),
        Command::Instance(c) => cmd::instance::run_instance(&ctx, c),
        Command::Snapshot(c) => cmd::instance::run_snapshot(&ctx, c),
        Command::Run(a) => cmd::instance::run_run(&ctx, a),
        Command::Checkpoint(c) => cmd::instance::run_checkpoint(&ctx, c),
        Command::Imagelist(c) => cmd::imagelist::run_imagelist(&ctx, c),
        Command::Subscription(c) => cmd::imagelist::run_subscription(&ctx, c),
        Command::Cache(c) => cmd::imagelist::run_cache(&ctx, c),
        Command::Serve(a) => cmd::serve::run(&ctx, a),
        Command::Job(a) => cmd::job::run(&ctx, a),
        Command::Bench(c) => cmd::bench::run(&ctx, c),
        Command::Token(c) => cmd::token::run(&ctx, c),
        Command::Ca(c) => cmd::ca::run(&ctx, c),
        Command::Host(c) => cmd::host::run(&ctx, c),
        Command::Network(c) => cmd::network::run(&ctx, c),
        Command::Grid(c) => cmd::grid::run(&ctx, c),
        Command::Node(a) => cmd::node::run(&ctx, a),
        Command::Doctor => doctor::run(&ctx),
        Command::Whoami => cmd::remote::run_whoami(&ctx, &cli.remote),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut command(), "vfarm", &mut std::io::stdout());
            Ok(0)
        }
        Command::Man { dir } => write_man_pages(&command(), &dir).map(|n| {
            println!("wrote {n} man pages to {}", dir.display());
            0
        }),
    };
    match result {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(err) => {
            cmd::report_error(&ctx, &err);
            ExitCode::from(cmd::exit_code(&err))
        }
    }
}

/// `vfarm.1`, `vfarm-instance.1`, `vfarm-instance-create.1` …: one page per command.
fn write_man_pages(cmd: &clap::Command, dir: &std::path::Path) -> anyhow::Result<usize> {
    use anyhow::Context;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    fn walk(
        cmd: clap::Command,
        name: String,
        dir: &std::path::Path,
        n: &mut usize,
    ) -> anyhow::Result<()> {
        // clap names are &'static str without its `string` feature; a one-shot command can
        // afford to leak a few short names.
        let cmd = cmd.name(&*Box::leak(name.clone().into_boxed_str()));
        let mut buf = Vec::new();
        clap_mangen::Man::new(cmd.clone()).render(&mut buf)?;
        std::fs::write(dir.join(format!("{name}.1")), buf)?;
        *n += 1;
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            walk(sub.clone(), format!("{name}-{}", sub.get_name()), dir, n)?;
        }
        Ok(())
    }
    let mut n = 0;
    let mut cmd = cmd.clone();
    cmd.build();
    walk(cmd, "vfarm".into(), dir, &mut n)?;
    Ok(n)
}

fn init_tracing(verbose: u8, json: bool) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("VFARM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let json = json || std::env::var("VFARM_LOG_FORMAT").is_ok_and(|v| v == "json");
    // Colours only for a terminal: a log file or journal gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
