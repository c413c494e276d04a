//! The `tern` command line: server, admin CLI, development PKI and demo in
//! one binary (in the manner of `consul` and `vault`). Parsing lives here;
//! each subcommand family has its own file. The admin commands speak the
//! gRPC admin API and are configured through `TERN_ADDR`, `TERN_CACERT`,
//! `TERN_CLIENT_CERT` and `TERN_CLIENT_KEY` (or the matching flags).

mod admin;
mod agents;
mod demo;
mod drill;
mod pki;
mod rotate;
mod standin;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{Config, Overrides};

#[derive(Debug, Parser)]
#[command(
    name = "tern",
    version,
    about = "Tern: federation-aware failover coordinator for Ampora regions"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Output {
    #[default]
    Text,
    Json,
}

/// How the admin CLI reaches a coordinator.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Coordinator gRPC address, host:port or https://host:port
    #[arg(long, env = "TERN_ADDR", global = true)]
    pub addr: Option<String>,
    /// CA bundle that the coordinator's certificate chains to
    #[arg(long = "ca-cert", env = "TERN_CACERT", global = true)]
    pub ca_cert: Option<PathBuf>,
    /// Administrator client certificate (PEM)
    #[arg(long = "client-cert", env = "TERN_CLIENT_CERT", global = true)]
    pub client_cert: Option<PathBuf>,
    /// Administrator client key (PEM)
    #[arg(long = "client-key", env = "TERN_CLIENT_KEY", global = true)]
    pub client_key: Option<PathBuf>,
    /// Output format
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Text, global = true)]
    pub output: Output,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Run a coordinator.
    Serve {
        /// TOML configuration file (see README: Configuration)
        #[arg(long, short = 'c', env = "TERN_CONFIG")]
        config: Option<PathBuf>,
        #[command(flatten)]
        overrides: Overrides,
        /// Validate the configuration and exit
        #[arg(long)]
        check: bool,
    },
    /// Show the cluster: leader, term, indexes and every member.
    Status {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Add or remove coordinators.
    Members {
        #[command(subcommand)]
        cmd: MembersCmd,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Operator notes: small replicated key/value annotations.
    Notes {
        #[command(subcommand)]
        cmd: NotesCmd,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The audit trail of applied commands.
    Audit {
        /// Show at most this many records (newest last)
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Region health: state, since, epoch, and what each observer sees.
    Regions {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Pause automation: states are still computed and shown, nothing acts.
    Pause {
        /// Why (recorded in the audit trail)
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Resume automation.
    Resume {
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    #[command(flatten)]
    Fleet(agents::FleetCmd),
    /// Pin rotations: status, start, approve, advance, rollback, exclude,
    /// approval policy.
    Rotate {
        #[command(subcommand)]
        cmd: rotate::RotateCmd,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Disaster-recovery drill: take REGION out (drain, or an outage of its
    /// stand-in), time every step, restore it, record the timings in the
    /// audit trail.
    Drill(drill::DrillArgs),
    /// Development PKI: a CA, coordinator and admin certificates.
    Pki {
        #[command(subcommand)]
        cmd: pki::PkiCmd,
    },
    /// Run a local three-region federation on 127.0.0.x until Ctrl-C;
    /// `tern demo outage|restore REGION` acts on a running demo.
    Demo {
        /// Where to keep the PKI, configurations, data and logs
        #[arg(long, default_value = "tern-demo", global = true)]
        dir: PathBuf,
        #[command(subcommand)]
        action: Option<demo::DemoAction>,
    },
    /// Run or steer the reference region stand-in (a test double of one
    /// region's Ampora control plane).
    StandIn {
        #[command(subcommand)]
        cmd: standin::StandInCmd,
    },
}

#[derive(Debug, Subcommand)]
pub enum MembersCmd {
    /// Pin a new coordinator, add it as a learner, wait until it has caught
    /// up, then make it a voter.
    Add {
        #[arg(long)]
        node_id: u64,
        #[arg(long)]
        region: String,
        /// host:port of its gRPC listener
        #[arg(long)]
        address: String,
        /// SHA-256 thumbprint of its transport certificate (hex)
        #[arg(long)]
        thumbprint: String,
        /// region or witness
        #[arg(long, default_value = "region")]
        role: String,
        /// Keep it a learner (no vote)
        #[arg(long)]
        learner: bool,
        /// The region's control plane URL (https://host:port); omit for a witness
        #[arg(long)]
        control_plane: Option<String>,
        /// Idempotency key (default: a new random id)
        #[arg(long)]
        request_id: Option<String>,
    },
    /// Remove a coordinator from Raft's membership, then unpin it.
    Remove {
        #[arg(long)]
        node_id: u64,
        #[arg(long)]
        request_id: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum NotesCmd {
    /// Set a note.
    Put {
        key: String,
        value: String,
        #[arg(long)]
        request_id: Option<String>,
    },
    /// List notes.
    List {
        #[arg(long, default_value = "")]
        prefix: String,
    },
}

/// A reader that went away (`tern status | head`) ends the command
/// quietly, as it would for any Unix tool, instead of with a panic message.
fn exit_quietly_on_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.contains("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info);
    }));
}

/// Runs the parsed command line. Returns the process exit code.
pub fn main() -> i32 {
    exit_quietly_on_broken_pipe();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return 1;
        }
    };
    let result = rt.block_on(dispatch(cli));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Cmd::Serve {
            config,
            overrides,
            check,
        } => {
            crate::telemetry::init();
            let cfg = match Config::load(config.as_deref(), &overrides) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return Ok(2);
                }
            };
            if check {
                println!("configuration is valid");
                return Ok(0);
            }
            let (grpc, http) = crate::node::bind(&cfg).await?;
            crate::node::run(cfg, grpc, http, shutdown_signal()).await?;
            Ok(0)
        }
        Cmd::Status { client } => admin::status(&client).await,
        Cmd::Members { cmd, client } => admin::members(&client, cmd).await,
        Cmd::Notes { cmd, client } => admin::notes(&client, cmd).await,
        Cmd::Audit { limit, client } => admin::audit(&client, limit).await,
        Cmd::Regions { client } => admin::regions(&client).await,
        Cmd::Pause { reason, client } => admin::pause(&client, true, reason).await,
        Cmd::Resume { reason, client } => admin::pause(&client, false, reason).await,
        Cmd::Fleet(cmd) => agents::run(cmd).await,
        Cmd::Drill(args) => drill::run(args).await,
        Cmd::Rotate { cmd, client } => rotate::run(&client, cmd).await,
        Cmd::Pki { cmd } => pki::run(cmd),
        Cmd::Demo { dir, action: None } => {
            crate::telemetry::init_quiet();
            demo::run(&dir).await
        }
        Cmd::Demo {
            dir,
            action: Some(a),
        } => demo::action(&dir, a).await,
        Cmd::StandIn { cmd } => standin::run(cmd).await,
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
