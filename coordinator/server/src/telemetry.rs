//! Logging: `tracing` with an env filter (`TERN_LOG`, else `RUST_LOG`,
//! else `info` for Tern and `warn` for the libraries under it), as text or
//! as JSON lines (`TERN_LOG_FORMAT=json`).

use tracing_subscriber::EnvFilter;

const DEFAULT_FILTER: &str = "info,openraft=warn,sqlx=warn,h2=warn,hyper=warn,tower=warn";

/// Installs the global subscriber (once; later calls do nothing).
pub fn init() {
    let filter = std::env::var("TERN_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new(DEFAULT_FILTER));
    let json = std::env::var("TERN_LOG_FORMAT")
        .map(|v| v == "json")
        .unwrap_or(false);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Warnings only (for `tern demo`, whose own output is the interface).
pub fn init_quiet() {
    let filter = std::env::var("TERN_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter.unwrap_or_else(|| EnvFilter::new("warn")))
        .with_writer(std::io::stderr)
        .try_init();
}
