//! `tern stand-in`: run the reference region stand-in (`serve`), change a
//! running stand-in's fault mode (`mode`), show its mode and counters
//! (`status`), and make a federation secret with its hash (`secret`).
//! Parsing and printing only: the stand-in itself is `crate::standin`.
//! It must never print a key; `secret` prints the secret it generates once,
//! on stdout, for the operator to hand over.

use std::path::PathBuf;

use clap::Subcommand;

use super::Output;
use crate::standin::{
    self, generate_secret, ControlClient, Mode, ModeName, ModeReport, SecretHash, StandInConfig,
    StandInOverrides, StandInStatus,
};

#[derive(Debug, Subcommand)]
pub enum StandInCmd {
    /// Serve a region stand-in until Ctrl-C or SIGTERM.
    Serve {
        /// TOML configuration file (see docs/integration-contract.md)
        #[arg(long, short = 'c')]
        config: Option<PathBuf>,
        #[command(flatten)]
        overrides: Box<StandInOverrides>,
        /// Validate the configuration (and load its certificate files) and exit
        #[arg(long)]
        check: bool,
    },
    /// Set a running stand-in's fault mode; returns once it holds.
    Mode {
        /// The stand-in's control address, ip:port
        #[arg(long)]
        control: String,
        /// up: normal; down: stop listening, cut connections; unavailable:
        /// 503 everywhere; slow: answer after --delay-ms
        #[arg(value_enum)]
        mode: ModeName,
        /// Delay of `slow`, ms (required with slow)
        #[arg(long)]
        delay_ms: Option<u64>,
        /// Output format
        #[arg(long, short = 'o', value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Show a running stand-in's mode and request counters.
    Status {
        /// The stand-in's control address, ip:port
        #[arg(long)]
        control: String,
        /// Output format
        #[arg(long, short = 'o', value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Generate a federation secret (32 random bytes, hex) and its SHA-256,
    /// the value a stand-in's `federation.peers[].inbound_secret_sha256` holds.
    Secret,
}

/// Runs a `tern stand-in` command; returns the exit code (2: bad
/// configuration or request).
pub async fn run(cmd: StandInCmd) -> anyhow::Result<i32> {
    match cmd {
        StandInCmd::Serve {
            config,
            overrides,
            check,
        } => serve(config, *overrides, check).await,
        StandInCmd::Mode {
            control,
            mode,
            delay_ms,
            output,
        } => {
            let request = standin::ModeRequest { mode, delay_ms };
            let mode = match Mode::try_from(request) {
                Ok(m) => m,
                Err(e) => {
                    eprintln!("error: {e}");
                    return Ok(2);
                }
            };
            let report = ControlClient::new(control).set_mode(mode).await?;
            print_mode(&report, output)?;
            Ok(0)
        }
        StandInCmd::Status { control, output } => {
            let status = ControlClient::new(control).status().await?;
            print_status(&status, output)?;
            Ok(0)
        }
        StandInCmd::Secret => {
            let secret = generate_secret();
            println!("secret: {}", hex::encode(secret));
            println!("sha256: {}", SecretHash::of(&secret).to_hex());
            Ok(0)
        }
    }
}

async fn serve(
    config: Option<PathBuf>,
    overrides: StandInOverrides,
    check: bool,
) -> anyhow::Result<i32> {
    crate::telemetry::init();
    let cfg = match StandInConfig::load(config.as_deref(), &overrides) {
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
    let (https, control) = standin::bind(&cfg).await?;
    standin::run(cfg, https, control, super::shutdown_signal()).await?;
    Ok(0)
}

fn print_mode(report: &ModeReport, output: Output) -> anyhow::Result<()> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(report)?),
        Output::Text => {
            let listening = if report.listening {
                "listening"
            } else {
                "not listening"
            };
            println!("mode {} ({listening} on {})", report.mode(), report.https);
            if let Some(e) = &report.error {
                println!("error: {e}");
            }
        }
    }
    Ok(())
}

fn print_status(status: &StandInStatus, output: Output) -> anyhow::Result<()> {
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(status)?);
        return Ok(());
    }
    println!("region    {}", status.region);
    print_mode(&status.mode, Output::Text)?;
    let c = &status.stats.connections;
    println!(
        "connections accepted {}, handshakes failed {}, cut by down {}",
        c.accepted, c.handshake_failed, c.dropped_by_down
    );
    println!("requests:");
    for (endpoint, n) in &status.stats.requests {
        println!("  {endpoint:<28} {n}");
    }
    println!("responses:");
    for (code, n) in &status.stats.responses {
        println!("  {code:<28} {n}");
    }
    Ok(())
}
