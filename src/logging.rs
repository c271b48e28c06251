//! Logging: human-readable text, or JSON lines in the bot's log format.
//!
//! The JSON form follows Twi Bot Shard's monitoring guide ("Log Format") so
//! the bot's and the prober's logs land in the same pipeline: top-level
//! `timestamp` (RFC 3339, UTC), `level` (Python's names), `logger`,
//! `message`, `request_id`, then `probe`, `kind`, `outcome`,
//! `execution_time_ms` and any other field. tracing-subscriber's own JSON
//! formatter nests span fields and names things differently, hence this
//! small layer.

use std::io::{IsTerminal, Write};
use std::time::SystemTime;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber, span};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{EnvFilter, fmt};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Crates that log wire traffic (frames, headers) at debug and trace: the
/// prober's IDENTIFY frame and REST requests carry its token. They are
/// capped at info whatever the filter asks, so no level shows a token.
const WIRE_TARGETS: &[&str] = &[
    "tungstenite",
    "tokio_tungstenite",
    "hyper",
    "hyper_util",
    "h2",
    "reqwest",
    "rustls",
];

/// Whether a log line may be written at all (see [`WIRE_TARGETS`]).
fn allowed(meta: &tracing::Metadata<'_>) -> bool {
    *meta.level() <= Level::INFO
        || !WIRE_TARGETS.iter().any(|t| {
            meta.target()
                .strip_prefix(t)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
        })
}

/// Installs the global subscriber. Logs go to stderr; stdout is for results.
/// `filter` uses `RUST_LOG` syntax (e.g. `info`, `twi_probe=debug`); a
/// filter that does not parse is an error, never silently `info`.
pub fn init(format: LogFormat, filter: &str) -> Result<(), String> {
    let filter =
        EnvFilter::try_new(filter).map_err(|e| format!("invalid log level {filter:?}: {e}"))?;
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::filter::filter_fn(allowed));
    let result = match format {
        LogFormat::Text => registry
            .with(
                fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::stderr().is_terminal()),
            )
            .try_init(),
        LogFormat::Json => registry.with(JsonLayer).try_init(),
    };
    // Already initialised (e.g. twice in one test process): keep the first.
    let _ = result;
    Ok(())
}

/// Writes each event as one JSON object per line on stderr.
pub struct JsonLayer;

/// Span fields, kept in the span's extensions until it closes.
struct SpanFields(Map<String, Value>);

impl<S> Layer<S> for JsonLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        let mut fields = Map::new();
        attrs.record(&mut JsonVisitor(&mut fields));
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(SpanFields(fields));
        }
    }

    fn on_record(&self, id: &span::Id, values: &span::Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id)
            && let Some(fields) = span.extensions_mut().get_mut::<SpanFields>()
        {
            values.record(&mut JsonVisitor(&mut fields.0));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let line = event_to_json(event, &ctx);
        let mut out = std::io::stderr().lock();
        let _ = writeln!(out, "{line}");
    }
}

fn event_to_json<S>(event: &Event<'_>, ctx: &Context<'_, S>) -> Value
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let mut obj = Map::new();
    obj.insert(
        "timestamp".into(),
        humantime::format_rfc3339_millis(SystemTime::now())
            .to_string()
            .into(),
    );
    obj.insert(
        "level".into(),
        python_level(*event.metadata().level()).into(),
    );
    obj.insert("logger".into(), event.metadata().target().into());
    obj.insert("message".into(), Value::String(String::new()));
    // Fields of enclosing spans, outermost first, then the event's own.
    if let Some(scope) = ctx.event_scope(event) {
        for span in scope.from_root() {
            if let Some(fields) = span.extensions().get::<SpanFields>() {
                for (k, v) in &fields.0 {
                    obj.insert(k.clone(), v.clone());
                }
            }
        }
    }
    event.record(&mut JsonVisitor(&mut obj));
    Value::Object(obj)
}

/// The level names of Python's logging module, which the bot's logs use.
fn python_level(level: Level) -> &'static str {
    match level {
        Level::ERROR => "ERROR",
        Level::WARN => "WARNING",
        Level::INFO => "INFO",
        Level::DEBUG | Level::TRACE => "DEBUG",
    }
}

struct JsonVisitor<'a>(&'a mut Map<String, Value>);

impl Visit for JsonVisitor<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        let v = serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number);
        self.0.insert(field.name().into(), v);
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
}
