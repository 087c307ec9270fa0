//! Logging: an `EnvFilter` (`RUST_LOG`, default `info`), text or JSON
//! lines, always to stderr (stdout is for a command's output: `pubbot rules
//! export > rules.toml` must write rules only). ANSI colours only when
//! stderr is a terminal.

use std::io::IsTerminal as _;

use crate::config::LogFormat;

/// Installs the global subscriber once; later calls do nothing.
pub(crate) fn init(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
    };
}
