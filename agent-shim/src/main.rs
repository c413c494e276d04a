//! `tern-shim`: the agent shim's binary. `run` keeps one agent's session
//! with the coordinators (the shim beside a real agent); `fleet` simulates
//! many agents in one process; `hook-test` checks a deployment's redirect
//! wiring; `tracker show` reads a tracker state file. It parses flags,
//! installs logging, prints the seed and calls the library; it holds no
//! logic of its own and never prints a token or a key.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tern_agent_shim::fleet::{self, FleetConfig};
use tern_agent_shim::{
    load, ApplyStatus, CommandHook, CommandSpec, ConfigRef, Directive, DirectiveKind, FileFormat,
    FileHook, LeafSource, PemSource, RateLimit, RedirectHook, Session, ShimConfig, Timing,
    TrackerState,
};

/// The sample directive's token: not a secret, it only shows where the token
/// lands.
const SAMPLE_TOKEN: &str = "tern-hook-test-sample-token";

#[derive(Debug, Parser)]
#[command(name = "tern-shim", version, about = "The Tern agent shim")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the shim beside one agent: register it with the coordinators,
    /// follow their directives through a redirect hook, verify and report.
    /// Stops on SIGINT or SIGTERM.
    Run(Box<RunArgs>),
    /// Simulate a fleet of agents in one process, each with its own
    /// identity issued by the home region's agent CA, registration and
    /// directive stream; writes a status file (and an events file).
    Fleet(Box<FleetArgs>),
    /// Apply a sample directive through the file hook: writes the directive
    /// file and runs the reload command, to check a deployment's wiring.
    HookTest(HookTestArgs),
    /// Inspect the directive tracker's state file.
    Tracker {
        #[command(subcommand)]
        command: TrackerCmd,
    },
}

#[derive(Debug, clap::Args)]
struct HookTestArgs {
    /// The directive file to write (replaced atomically, mode 0600).
    #[arg(long)]
    file: PathBuf,
    /// The directive file's format.
    #[arg(long, value_enum, default_value_t = Format::Json)]
    format: Format,
    /// Target region of the sample directive.
    #[arg(long, default_value = "hook-test")]
    target_region: String,
    /// Endpoint of the sample directive.
    #[arg(long, default_value = "wss://hook-test.invalid/v1/opamp")]
    endpoint: String,
    /// The reload command's timeout, ms.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
    /// Reload command run after the write: program and arguments, no shell.
    /// Must come last: everything after it belongs to the command.
    #[arg(long, num_args = 1.., allow_hyphen_values = true, value_name = "ARGV")]
    reload: Vec<String>,
}

/// What both `run` and `fleet` register for an agent, and how they reach
/// coordinators and regions.
#[derive(Debug, clap::Args)]
struct CommonArgs {
    /// The home region.
    #[arg(long = "home", value_name = "REGION")]
    home: String,
    /// The agent's tenant in its home region.
    #[arg(long, default_value = "default")]
    tenant: String,
    /// Content hash of the agent's assigned configuration.
    #[arg(long)]
    config_hash: String,
    /// Id of the agent's assigned configuration.
    #[arg(long, default_value = "")]
    config_id: String,
    /// Published version of the agent's assigned configuration.
    #[arg(long, default_value_t = 0)]
    config_version: u64,
    /// OpAMP capabilities the agent advertises (comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "AcceptsOpAMPConnectionSettings"
    )]
    capabilities: Vec<String>,
    /// Regions the agent may be served from (comma-separated; empty: any).
    #[arg(long, value_delimiter = ',')]
    allowed_regions: Vec<String>,
    /// CA bundle (PEM) of the coordinators' server certificates.
    #[arg(long, value_name = "PEM")]
    coordinator_ca: PathBuf,
    /// CA bundle (PEM) of the regions' HTTPS server certificates.
    #[arg(long, value_name = "PEM")]
    region_ca: PathBuf,
    /// Coordinator gRPC addresses, host:port, home region's first
    /// (comma-separated).
    #[arg(long, value_delimiter = ',', required = true, value_name = "ADDR")]
    coordinators: Vec<String>,
    /// Seed of every random choice (jitter, backoff); random if absent.
    /// Printed at start.
    #[arg(long)]
    seed: Option<u64>,
    #[command(flatten)]
    timing: TimingArgs,
}

/// Timing (all in ms).
#[derive(Debug, clap::Args)]
struct TimingArgs {
    /// Reconnect backoff: first ceiling.
    #[arg(long, default_value_t = 500)]
    reconnect_base_ms: u64,
    /// Reconnect backoff: largest ceiling.
    #[arg(long, default_value_t = 30_000)]
    reconnect_cap_ms: u64,
    /// Retry of a failed directive: first ceiling.
    #[arg(long, default_value_t = 1_000)]
    retry_base_ms: u64,
    /// Retry of a failed directive: largest ceiling.
    #[arg(long, default_value_t = 60_000)]
    retry_cap_ms: u64,
    /// A directive is applied after a random delay in [0, this].
    #[arg(long, default_value_t = 2_000)]
    apply_jitter_ms: u64,
    /// Redirects per target region and process: bucket size.
    #[arg(long, default_value_t = 20)]
    rate_burst: u32,
    /// Redirects per target region and process: tokens per period.
    #[arg(long, default_value_t = 20)]
    rate_tokens: u32,
    /// Redirects per target region and process: the period.
    #[arg(long, default_value_t = 1_000)]
    rate_per_ms: u64,
    /// TCP + TLS connect timeout to a coordinator.
    #[arg(long, default_value_t = 5_000)]
    connect_timeout_ms: u64,
    /// Timeout of ListCoordinators, Report and opening Watch.
    #[arg(long, default_value_t = 10_000)]
    rpc_timeout_ms: u64,
    /// Timeout of Register.
    #[arg(long, default_value_t = 15_000)]
    register_timeout_ms: u64,
    /// How long the redirect hook may take.
    #[arg(long, default_value_t = 120_000)]
    hook_timeout_ms: u64,
    /// How long the agent has to show up attached at the target.
    #[arg(long, default_value_t = 60_000)]
    verify_deadline_ms: u64,
    /// Interval between attachment checks.
    #[arg(long, default_value_t = 500)]
    verify_poll_ms: u64,
    /// Interval between reads of the leaf files (renewal detection).
    #[arg(long, default_value_t = 5_000)]
    leaf_poll_ms: u64,
    /// HTTP/2 keep-alive interval on the coordinator connection.
    #[arg(long, default_value_t = 10_000)]
    keepalive_interval_ms: u64,
    /// HTTP/2 keep-alive timeout.
    #[arg(long, default_value_t = 20_000)]
    keepalive_timeout_ms: u64,
    /// Timeout of one HTTPS request to a region.
    #[arg(long, default_value_t = 5_000)]
    region_request_timeout_ms: u64,
}

impl TimingArgs {
    fn timing(&self) -> anyhow::Result<Timing> {
        Ok(Timing {
            reconnect_base_ms: self.reconnect_base_ms,
            reconnect_cap_ms: self.reconnect_cap_ms,
            retry_base_ms: self.retry_base_ms,
            retry_cap_ms: self.retry_cap_ms,
            apply_jitter_ms: self.apply_jitter_ms,
            rate_limit: RateLimit::new(self.rate_burst, self.rate_tokens, self.rate_per_ms)
                .context("invalid --rate-burst/--rate-tokens/--rate-per-ms")?,
            connect_timeout_ms: self.connect_timeout_ms,
            rpc_timeout_ms: self.rpc_timeout_ms,
            register_timeout_ms: self.register_timeout_ms,
            hook_timeout_ms: self.hook_timeout_ms,
            verify_deadline_ms: self.verify_deadline_ms,
            verify_poll_ms: self.verify_poll_ms,
            leaf_poll_ms: self.leaf_poll_ms,
            keepalive_interval_ms: self.keepalive_interval_ms,
            keepalive_timeout_ms: self.keepalive_timeout_ms,
            region_request_timeout_ms: self.region_request_timeout_ms,
        })
    }
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// The agent's id, as coordinators and regions know it.
    #[arg(long)]
    agent_id: String,
    /// The agent's leaf certificate (PEM, leaf first); re-read every
    /// --leaf-poll-ms: a renewed leaf is registered again.
    #[arg(long, value_name = "PEM")]
    leaf_cert: PathBuf,
    /// The agent's private key (PEM).
    #[arg(long, value_name = "PEM")]
    leaf_key: PathBuf,
    /// Directory for tracker.json (epoch fence, current directive; mode
    /// 0600) and coordinators.json (fallback list). Without it, nothing
    /// survives a restart.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    #[command(flatten)]
    common: CommonArgs,
    /// Redirect hook: write the directive to this file (atomically, mode
    /// 0600), then run --reload if given.
    #[arg(long, value_name = "PATH", conflicts_with = "hook_command")]
    hook_file: Option<PathBuf>,
    /// Format of --hook-file.
    #[arg(long, value_enum, default_value_t = Format::Json)]
    hook_format: Format,
    /// Timeout of the reload or hook command, ms.
    #[arg(long, default_value_t = 30_000)]
    command_timeout_ms: u64,
    /// Redirect hook: run this command (argv, no shell) with the directive
    /// in TERN_* environment variables. Must come last: everything after
    /// it belongs to the command.
    #[arg(
        long,
        num_args = 1..,
        allow_hyphen_values = true,
        value_name = "ARGV",
        conflicts_with = "reload"
    )]
    hook_command: Vec<String>,
    /// With --hook-file: the reload command run after each write (argv, no
    /// shell). Must come last.
    #[arg(long, num_args = 1.., allow_hyphen_values = true, value_name = "ARGV")]
    reload: Vec<String>,
}

#[derive(Debug, clap::Args)]
struct FleetArgs {
    /// How many agents to simulate.
    #[arg(long)]
    agents: usize,
    /// The home region's endpoint base URL (https://host:port), where each
    /// agent attaches at start.
    #[arg(long, value_name = "URL")]
    home_base_url: String,
    /// The home region's agent CA certificate (PEM): issues the agents'
    /// leaves.
    #[arg(long, value_name = "PEM")]
    agent_ca_cert: PathBuf,
    /// The agent CA's private key (PKCS#8 PEM).
    #[arg(long, value_name = "PEM")]
    agent_ca_key: PathBuf,
    /// Agent ids are <prefix><index, 5 digits>; default sim-<home>-.
    #[arg(long)]
    id_prefix: Option<String>,
    /// Validity of the issued leaves, days.
    #[arg(long, default_value_t = 365)]
    leaf_validity_days: u64,
    /// Initial connects are spread uniformly over [0, this] ms; default 5
    /// ms per agent, at most 60 000.
    #[arg(long)]
    connect_spread_ms: Option<u64>,
    /// Status file: JSON counts, replaced atomically every
    /// --status-interval-ms.
    #[arg(long, value_name = "PATH")]
    status_file: PathBuf,
    /// Events file: JSON lines (appended).
    #[arg(long, value_name = "PATH")]
    events_file: Option<PathBuf>,
    /// Interval between status file updates, ms.
    #[arg(long, default_value_t = 500)]
    status_interval_ms: u64,
    /// Stop after this long (ms) instead of waiting for SIGINT/SIGTERM.
    #[arg(long)]
    run_for_ms: Option<u64>,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    /// One JSON object.
    Json,
    /// KEY=value lines (systemd EnvironmentFile, POSIX shell).
    Env,
}

#[derive(Debug, Subcommand)]
enum TrackerCmd {
    /// Print the tracker's state: serving region, fence, current directive
    /// (never its token).
    Show {
        /// The tracker's state file.
        #[arg(long)]
        state: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A fleet's sessions would log a few lines per agent at info: only
    // their warnings by default.
    let default_level = match cli.command {
        Cmd::Run(_) => "info",
        Cmd::Fleet(_) => "info,tern_agent_shim::session=warn",
        _ => "warn",
    };
    install_logging(default_level);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tern-shim: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn install_logging(default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Cmd::Run(args) => run_agent(*args),
        Cmd::Fleet(args) => run_fleet(*args),
        Cmd::HookTest(args) => hook_test(args),
        Cmd::Tracker {
            command: TrackerCmd::Show { state, json },
        } => tracker_show(&state, json),
    }
}

fn hook_test(args: HookTestArgs) -> anyhow::Result<()> {
    let now_ms = u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .context("system clock before 1970")?
            .as_millis(),
    )
    .context("system clock out of range")?;
    let directive = Directive {
        epoch: 1,
        agent_id: "hook-test".to_string(),
        kind: DirectiveKind::Redirect,
        target_region: args.target_region,
        endpoint: args.endpoint,
        base_url: String::new(),
        token: SAMPLE_TOKEN.to_string(),
        issued_at_ms: now_ms,
        expires_at_ms: now_ms.saturating_add(3_600_000),
    };
    let format = match args.format {
        Format::Json => FileFormat::Json,
        Format::Env => FileFormat::Env,
    };
    let mut hook = FileHook::new(&args.file, format);
    if !args.reload.is_empty() {
        hook = hook.with_reload(CommandSpec::new(
            args.reload,
            Duration::from_millis(args.timeout_ms),
        ));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let report = runtime
        .block_on(hook.apply(&directive))
        .context("the file hook failed")?;
    let format_name = match args.format {
        Format::Json => "json",
        Format::Env => "env",
    };
    println!("wrote {} ({format_name} format)", args.file.display());
    match report.command {
        None => println!("no reload command"),
        Some(run) => {
            println!(
                "reload command exited with code {} after {} ms",
                run.exit_code.map_or("none".to_string(), |c| c.to_string()),
                run.elapsed.as_millis()
            );
            if !run.stderr_tail.is_empty() {
                println!("reload stderr (tail):\n{}", run.stderr_tail.trim_end());
            }
        }
    }
    Ok(())
}

/// The seed given, or one from the clock and the process id; printed.
fn seed_of(given: Option<u64>) -> u64 {
    let seed = given.unwrap_or_else(|| {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        (nanos as u64) ^ (u64::from(std::process::id()) << 32)
    });
    eprintln!("tern-shim: seed {seed} (reproduce with --seed {seed})");
    seed
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Resolves on SIGINT or SIGTERM.
async fn signalled() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("stopping");
}

fn config_ref(common: &CommonArgs) -> ConfigRef {
    ConfigRef {
        id: common.config_id.clone(),
        version: common.config_version,
        content_hash: common.config_hash.clone(),
    }
}

fn non_empty(list: &[String]) -> Vec<String> {
    list.iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn run_agent(args: RunArgs) -> anyhow::Result<()> {
    let seed = seed_of(args.common.seed);
    let command_timeout = Duration::from_millis(args.command_timeout_ms);
    let hook: Arc<dyn RedirectHook> = match (&args.hook_file, args.hook_command.is_empty()) {
        (Some(file), true) => {
            let format = match args.hook_format {
                Format::Json => FileFormat::Json,
                Format::Env => FileFormat::Env,
            };
            let mut hook = FileHook::new(file, format);
            if !args.reload.is_empty() {
                hook = hook.with_reload(CommandSpec::new(args.reload.clone(), command_timeout));
            }
            Arc::new(hook)
        }
        (None, false) => Arc::new(CommandHook::new(CommandSpec::new(
            args.hook_command.clone(),
            command_timeout,
        ))),
        (None, true) => {
            anyhow::bail!("a redirect hook is needed: --hook-file PATH or --hook-command ARGV...")
        }
        (Some(_), false) => anyhow::bail!("--hook-file and --hook-command exclude each other"),
    };
    if !args.reload.is_empty() && args.hook_file.is_none() {
        anyhow::bail!("--reload needs --hook-file");
    }
    let common = &args.common;
    let config = ShimConfig {
        agent_id: args.agent_id.clone(),
        home_region: common.home.clone(),
        tenant: common.tenant.clone(),
        config: config_ref(common),
        capabilities: non_empty(&common.capabilities),
        allowed_regions: non_empty(&common.allowed_regions),
        leaf: LeafSource::Files {
            cert: args.leaf_cert.clone(),
            key: args.leaf_key.clone(),
        },
        coordinator_ca: PemSource::File(common.coordinator_ca.clone()),
        region_ca: PemSource::File(common.region_ca.clone()),
        coordinators: non_empty(&common.coordinators),
        state_dir: args.state_dir.clone(),
        timing: common.timing.timing()?,
        seed,
    };
    config.validate()?;
    runtime()?.block_on(async move {
        Session::new(config, hook)
            .run(signalled())
            .await
            .context("the session could not start")
    })
}

fn run_fleet(args: FleetArgs) -> anyhow::Result<()> {
    let seed = seed_of(args.common.seed);
    let common = &args.common;
    let read = |path: &PathBuf, what: &str| {
        std::fs::read_to_string(path)
            .with_context(|| format!("reading the {what} {}", path.display()))
    };
    let config = FleetConfig {
        agents: args.agents,
        home_region: common.home.clone(),
        home_base_url: args.home_base_url.clone(),
        agent_ca_cert_pem: read(&args.agent_ca_cert, "agent CA certificate")?,
        agent_ca_key_pem: read(&args.agent_ca_key, "agent CA key")?,
        coordinator_ca: PemSource::File(common.coordinator_ca.clone()),
        region_ca: PemSource::File(common.region_ca.clone()),
        coordinators: non_empty(&common.coordinators),
        tenant: common.tenant.clone(),
        config: config_ref(common),
        capabilities: non_empty(&common.capabilities),
        allowed_regions: non_empty(&common.allowed_regions),
        id_prefix: args
            .id_prefix
            .clone()
            .unwrap_or_else(|| format!("sim-{}-", common.home)),
        seed,
        leaf_validity: Duration::from_secs(args.leaf_validity_days.saturating_mul(86_400)),
        connect_spread_ms: args
            .connect_spread_ms
            .unwrap_or_else(|| FleetConfig::default_spread_ms(args.agents)),
        status_file: Some(args.status_file.clone()),
        events_file: args.events_file.clone(),
        status_interval_ms: args.status_interval_ms,
        timing: common.timing.timing()?,
    };
    config.validate()?;
    let run_for = args.run_for_ms.map(Duration::from_millis);
    let status = runtime()?.block_on(async move {
        let stop = async move {
            match run_for {
                Some(d) => tokio::select! {
                    () = tokio::time::sleep(d) => {}
                    () = signalled() => {}
                },
                None => signalled().await,
            }
        };
        fleet::run(config, stop).await
    })?;
    println!(
        "fleet stopped: {} agents, {} registered, serving {:?}, newest epoch {:?}",
        status.agents, status.registered, status.serving, status.newest_epoch
    );
    Ok(())
}

fn tracker_show(path: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let tracker =
        load(path)?.with_context(|| format!("no tracker state file at {}", path.display()))?;
    let state = tracker.state();
    if json {
        println!("{:#}", state_json(&state));
    } else {
        print!("{}", state_text(&state));
    }
    Ok(())
}

/// The state as JSON, without the token.
fn state_json(state: &TrackerState) -> serde_json::Value {
    let current = state.current.as_ref().map(|c| {
        let (status, reason) = status_parts(&c.status);
        serde_json::json!({
            "epoch": c.directive.epoch,
            "kind": c.directive.kind.as_str(),
            "target_region": c.directive.target_region,
            "endpoint": c.directive.endpoint,
            "base_url": c.directive.base_url,
            "issued_at_ms": c.directive.issued_at_ms,
            "expires_at_ms": c.directive.expires_at_ms,
            "status": status,
            "reason": reason,
        })
    });
    serde_json::json!({
        "agent_id": state.agent_id,
        "serving_region": state.serving_region,
        "serving_epoch": state.serving_epoch,
        "newest_seen": state.newest_seen,
        "current": current,
        "conflicts": state.conflicts,
    })
}

fn status_parts(status: &ApplyStatus) -> (&'static str, Option<&str>) {
    match status {
        ApplyStatus::Pending => ("pending", None),
        ApplyStatus::Attached => ("attached", None),
        ApplyStatus::Failed { reason } => ("failed", Some(reason.as_str())),
    }
}

fn state_text(state: &TrackerState) -> String {
    let serving = match (&state.serving_region, state.serving_epoch) {
        (Some(region), Some(epoch)) => format!("{region} (epoch {epoch})"),
        _ => "home (no directive applied)".to_string(),
    };
    let newest = state
        .newest_seen
        .map_or("none".to_string(), |e| e.to_string());
    let mut out = format!(
        "agent:          {}\nserving region: {serving}\nnewest epoch:   {newest}\n",
        state.agent_id
    );
    match &state.current {
        None => out.push_str("current:        none\n"),
        Some(c) => {
            let d = &c.directive;
            let (status, reason) = status_parts(&c.status);
            out.push_str(&format!(
                "current:        epoch {} {} -> {} at {}\nstatus:         {status}{}\n\
                 issued/expires: {} / {} (ms since epoch)\n",
                d.epoch,
                d.kind,
                d.target_region,
                d.endpoint,
                reason.map_or(String::new(), |r| format!(": {r}")),
                d.issued_at_ms,
                d.expires_at_ms,
            ));
        }
    }
    out.push_str(&format!("conflicts:      {}\n", state.conflicts));
    out
}
