//! Logs: one line per event, control characters escaped, every line of a
//! request carrying its peer address and request id, an access log line per
//! request (target `access`), text or JSON.
//!
//! Escaping is done in the writer, after formatting, so no field anywhere (a
//! decoded `%0A` in a path, a message quoting a header) can start a forged
//! line: every byte below 0x20 and 0x7f except the final newline becomes
//! `\xNN`.

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use serde::Deserialize;
use std::fmt;
use std::io::Write;
use std::net::SocketAddr;
use tracing::Instrument;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// Human-readable `key=value` lines (the default).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The peer of a connection (request extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// Response header carrying the request id.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Escape control characters of one formatted line (keeping a final `\n`).
pub fn escape_line(buf: &[u8]) -> Vec<u8> {
    let (body, nl) = match buf.strip_suffix(b"\n") {
        Some(b) => (b, true),
        None => (buf, false),
    };
    let mut out = Vec::with_capacity(buf.len() + 8);
    for &b in body {
        if b < 0x20 || b == 0x7f {
            let _ = write!(out, "\\x{b:02x}");
        } else {
            out.push(b);
        }
    }
    if nl {
        out.push(b'\n');
    }
    out
}

/// A writer escaping each event before it reaches stderr.
#[derive(Debug, Default, Clone, Copy)]
pub struct EscapingStderr;

impl Write for EscapingStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // The fmt layer writes each event with one write_all of the whole
        // line, so `buf` is a line.
        std::io::stderr().lock().write_all(&escape_line(buf))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for EscapingStderr {
    type Writer = EscapingStderr;
    fn make_writer(&'a self) -> Self::Writer {
        EscapingStderr
    }
}

/// JSON lines: `{"ts","level","target","span","fields"...}`.
#[derive(Debug, Default, Clone, Copy)]
pub struct JsonLines;

struct JsonVisitor(serde_json::Map<String, serde_json::Value>);

impl tracing::field::Visit for JsonVisitor {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        self.0.insert(
            field.name().to_owned(),
            serde_json::Value::String(format!("{value:?}")),
        );
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0
            .insert(field.name().to_owned(), serde_json::Value::from(value));
    }
    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.0
            .insert(field.name().to_owned(), serde_json::Value::from(value));
    }
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.0
            .insert(field.name().to_owned(), serde_json::Value::from(value));
    }
    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.0
            .insert(field.name().to_owned(), serde_json::Value::from(value));
    }
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut v = JsonVisitor(serde_json::Map::new());
        event.record(&mut v);
        let mut obj = serde_json::Map::new();
        obj.insert("ts".into(), serde_json::Value::from(crate::unix_now()));
        obj.insert("level".into(), meta.level().as_str().into());
        obj.insert("target".into(), meta.target().into());
        if let Some(scope) = ctx.event_scope() {
            let spans: Vec<String> = scope
                .from_root()
                .filter_map(|span| {
                    span.extensions()
                        .get::<FormattedFields<N>>()
                        .map(|f| format!("{}{{{}}}", span.name(), f.fields))
                })
                .collect();
            obj.insert("span".into(), spans.join(":").into());
        }
        for (k, val) in v.0 {
            obj.insert(k, val);
        }
        writeln!(writer, "{}", serde_json::Value::Object(obj))
    }
}

/// Install the global subscriber (binaries only).
pub fn init(format: LogFormat) {
    let builder = tracing_subscriber::fmt()
        .with_writer(EscapingStderr)
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.event_format(JsonLines).try_init(),
    };
}

/// Middleware: a request id, a span with peer and id around the request, and
/// one access-log line when the response head is ready.
pub async fn access_log(req: Request, next: Next) -> Response {
    let id = secureev_uptane::manifest::random_nonce()[..16].to_owned();
    let peer = req
        .extensions()
        .get::<PeerAddr>()
        .map(|p| p.0.to_string())
        .unwrap_or_else(|| "-".into());
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let span = tracing::info_span!("req", id = %id, peer = %peer);
    let started = std::time::Instant::now();
    let mut resp = next.run(req).instrument(span.clone()).await;
    let status = resp.status().as_u16();
    span.in_scope(|| {
        tracing::info!(
            target: "access",
            method = %method,
            path = %path,
            status,
            ms = started.elapsed().as_millis() as u64,
            "request"
        )
    });
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newline_in_a_field_cannot_start_a_line() {
        let line = b"INFO path=/x\nINFO forged admin login\x1b[2J\n";
        let out = escape_line(line);
        assert_eq!(
            out,
            b"INFO path=/x\\x0aINFO forged admin login\\x1b[2J\n".to_vec()
        );
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
    }
}
