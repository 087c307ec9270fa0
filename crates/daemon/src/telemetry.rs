//! Logging: an `EnvFilter` (`RUST_LOG`, default `info`), text or JSON
//! lines, always to stderr (stdout is for a command's output: `pubbot rules
//! export > rules.toml` must write rules only). ANSI colours only when
//! stderr is a terminal.
//!
//! One message, one span: ingest, decide and send each handle a message in
//! a span named `message` with its `trace_id` (at `debug`), so with
//! `RUST_LOG=debug,pubbot::push=info` and `log.format = "json"` every line
//! of a message's trip carries `"span":{"name":"message","trace_id":...}`
//! and one `jq 'select(.span.trace_id == "...")'` follows it from push to
//! reply. At `info` the spans are off and cost nothing.

use std::io::IsTerminal as _;

use crate::config::LogFormat;

/// Installs the global subscriber once; later calls do nothing.
pub(crate) fn init(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = match format {
        LogFormat::Json => json(filter, std::io::stderr).try_init(),
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_target(false)
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
    };
}

/// The JSON log lines `log.format = "json"` writes (to `writer`; stderr in
/// the daemon): one object per line, the event's fields flat, the message
/// span's fields under `span`.
pub fn json<W>(
    filter: tracing_subscriber::EnvFilter,
    writer: W,
) -> tracing_subscriber::fmt::SubscriberBuilder<
    tracing_subscriber::fmt::format::JsonFields,
    tracing_subscriber::fmt::format::Format<tracing_subscriber::fmt::format::Json>,
    tracing_subscriber::EnvFilter,
    W,
>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(false)
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(false)
}
