//! `tern-shim`: the agent shim's binary. For now it offers what is built:
//! checking a deployment's redirect wiring (`hook-test`) and reading a
//! tracker state file (`tracker show`). It parses, installs logging and calls
//! the library; it holds no logic of its own and never prints a token.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tern_agent_shim::{
    load, ApplyStatus, CommandSpec, Directive, DirectiveKind, FileFormat, FileHook, RedirectHook,
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
    install_logging();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tern-shim: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn install_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
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
