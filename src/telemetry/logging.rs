//! Structured logs on stdout: `APT_PROXY_LOG_LEVEL` (legacy `LOG_LEVEL`), `--debug` forces
//! debug; `APT_PROXY_LOG_FORMAT` (legacy `LOG_FORMAT`) json, console, or auto (console on a TTY).
//!
//! Lines are buffered and written out every 100 ms (and at exit, see [`flush`]): one write per
//! request line cost a quarter of the small-file throughput. A crash loses at most the last
//! 100 ms of lines.

use std::fmt::Write as _;
use std::io::{BufWriter, IsTerminal, Write};
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::level_filters::LevelFilter;

fn env_either(name: &str, legacy: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .or_else(|| std::env::var(legacy).ok().filter(|v| !v.is_empty()))
}

/// Installs the global subscriber. Returns a warning to log when a variable had a bad value.
pub fn init(debug: bool) -> Option<String> {
    let mut warning = None;
    let level = if debug {
        LevelFilter::DEBUG
    } else {
        match env_either("APT_PROXY_LOG_LEVEL", "LOG_LEVEL")
            .map(|v| v.to_ascii_lowercase())
            .as_deref()
        {
            None | Some("info") => LevelFilter::INFO,
            Some("debug") => LevelFilter::DEBUG,
            Some("warn") | Some("warning") => LevelFilter::WARN,
            Some("error") => LevelFilter::ERROR,
            Some(other) => {
                warning = Some(format!(
                    "APT_PROXY_LOG_LEVEL={other:?} is not one of debug, info, warn, error; using info"
                ));
                LevelFilter::INFO
            }
        }
    };
    // A terminal gets colours, and `auto` gives it the console format.
    let ansi = std::io::stdout().is_terminal();
    let format = env_either("APT_PROXY_LOG_FORMAT", "LOG_FORMAT").map(|v| v.to_ascii_lowercase());
    let json = match format.as_deref() {
        Some("json") => true,
        Some("console") => false,
        None | Some("auto") => !ansi,
        Some(other) => {
            warning = Some(format!(
                "APT_PROXY_LOG_FORMAT={other:?} is not one of json, console, auto; using auto"
            ));
            !ansi
        }
    };
    std::thread::Builder::new()
        .name("log-flush".into())
        .spawn(|| {
            loop {
                std::thread::sleep(std::time::Duration::from_millis(100));
                flush();
            }
        })
        .ok();
    if level >= LevelFilter::INFO && !ansi {
        let _ = FAST_ACCESS.set(if json {
            AccessFormat::Json
        } else {
            AccessFormat::Console
        });
    }
    tracing_subscriber::fmt()
        .with_writer(BufferedStdout)
        .with_max_level(level)
        .event_format(GoFormat {
            format: if json {
                AccessFormat::Json
            } else {
                AccessFormat::Console
            },
            ansi,
        })
        .init();
    warning
}

/// Lines in the shape the Go program writes, so that its users' parsers keep working:
/// console `2024/01/15 10:30:00 INF message key=value …` (UTC), JSON
/// `{"level":"info","time":"2024-01-15T10:30:00.123Z","message":"…","key":value,…}`.
struct GoFormat {
    format: AccessFormat,
    /// Colour the level (console on a terminal).
    ansi: bool,
}

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for GoFormat
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let level = *event.metadata().level();
        let mut line = String::with_capacity(128);
        let mut head = Head {
            format: self.format,
            level,
            ansi: self.ansi,
            message: &fields.message,
        };
        head.write(&mut line, SystemTime::now());
        for (name, value) in &fields.pairs {
            match value {
                Value::Text(text) => field(&mut line, self.format, name, text, false),
                Value::Bare(text) => field(&mut line, self.format, name, text, true),
            }
        }
        end(&mut line, self.format);
        writer.write_str(&line)
    }
}

/// A field's value as the line shows it: JSON numbers and booleans stay bare.
enum Value {
    Text(String),
    Bare(String),
}

/// An event's message and other fields, in the order given.
#[derive(Default)]
struct Fields {
    message: String,
    pairs: Vec<(&'static str, Value)>,
}

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, f: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        // `%x` fields arrive here wrapped so that Debug is their Display.
        let text = format!("{value:?}");
        if f.name() == "message" {
            self.message = text;
        } else {
            self.pairs.push((f.name(), Value::Text(text)));
        }
    }
    fn record_str(&mut self, f: &tracing::field::Field, value: &str) {
        if f.name() == "message" {
            self.message = value.to_string();
        } else {
            self.pairs.push((f.name(), Value::Text(value.to_string())));
        }
    }
    fn record_error(
        &mut self,
        f: &tracing::field::Field,
        value: &(dyn std::error::Error + 'static),
    ) {
        self.pairs
            .push((f.name(), Value::Text(crate::upstream::error_chain(value))));
    }
    fn record_u64(&mut self, f: &tracing::field::Field, value: u64) {
        self.pairs.push((f.name(), Value::Bare(value.to_string())));
    }
    fn record_i64(&mut self, f: &tracing::field::Field, value: i64) {
        self.pairs.push((f.name(), Value::Bare(value.to_string())));
    }
    fn record_bool(&mut self, f: &tracing::field::Field, value: bool) {
        self.pairs.push((f.name(), Value::Bare(value.to_string())));
    }
    fn record_f64(&mut self, f: &tracing::field::Field, value: f64) {
        let text = if value.is_finite() {
            format!("{value:?}")
        } else {
            "null".to_string()
        };
        self.pairs.push((f.name(), Value::Bare(text)));
    }
}

/// The start of a line: time, level and message.
struct Head<'a> {
    format: AccessFormat,
    level: tracing::Level,
    ansi: bool,
    message: &'a str,
}

impl Head<'_> {
    fn write(&mut self, out: &mut String, now: SystemTime) {
        match self.format {
            AccessFormat::Json => {
                let level = match self.level {
                    tracing::Level::ERROR => "error",
                    tracing::Level::WARN => "warn",
                    tracing::Level::INFO => "info",
                    tracing::Level::DEBUG => "debug",
                    tracing::Level::TRACE => "trace",
                };
                out.push_str("{\"level\":\"");
                out.push_str(level);
                out.push_str("\",\"time\":\"");
                timestamp(out, now, Clock::Rfc3339);
                out.push_str("\",\"message\":\"");
                json_escape(out, self.message);
                out.push('"');
            }
            AccessFormat::Console => {
                timestamp(out, now, Clock::Console);
                let (level, colour) = match self.level {
                    tracing::Level::ERROR => ("ERR", "31"),
                    tracing::Level::WARN => ("WRN", "33"),
                    tracing::Level::INFO => ("INF", "32"),
                    tracing::Level::DEBUG => ("DBG", "36"),
                    tracing::Level::TRACE => ("TRC", "35"),
                };
                if self.ansi {
                    let _ = write!(out, " \x1b[{colour}m{level}\x1b[0m ");
                } else {
                    out.push(' ');
                    out.push_str(level);
                    out.push(' ');
                }
                out.push_str(self.message);
            }
        }
    }
}

/// Appends ` key=value` (console; the value quoted when it holds a space, a quote or `=`, or
/// is empty) or `,"key":value` (JSON; a `bare` value, a number or a boolean, unquoted).
fn field(out: &mut String, format: AccessFormat, name: &str, value: &str, bare: bool) {
    match format {
        AccessFormat::Json => {
            out.push_str(",\"");
            out.push_str(name);
            out.push_str("\":");
            if bare {
                out.push_str(value);
            } else {
                out.push('"');
                json_escape(out, value);
                out.push('"');
            }
        }
        AccessFormat::Console => {
            out.push(' ');
            out.push_str(name);
            out.push('=');
            if !bare && (value.is_empty() || value.contains([' ', '"', '=', '\n', '\t'])) {
                out.push('"');
                json_escape(out, value);
                out.push('"');
            } else {
                out.push_str(value);
            }
        }
    }
}

/// Appends a number field.
fn number(out: &mut String, format: AccessFormat, name: &str, value: u64) {
    field(out, format, name, itoa::Buffer::new().format(value), true);
}

/// Appends an address field (a JSON string, bare on the console; it needs no escaping).
fn address(out: &mut String, format: AccessFormat, name: &str, ip: IpAddr) {
    let json = format == AccessFormat::Json;
    if json {
        out.push_str(",\"");
        out.push_str(name);
        out.push_str("\":\"");
    } else {
        out.push(' ');
        out.push_str(name);
        out.push('=');
    }
    match ip {
        IpAddr::V4(v4) => {
            let mut digits = itoa::Buffer::new();
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                out.push_str(digits.format(octet));
            }
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
    if json {
        out.push('"');
    }
}

/// Closes a line.
fn end(out: &mut String, format: AccessFormat) {
    if format == AccessFormat::Json {
        out.push('}');
    }
    out.push('\n');
}

static BUFFER: Mutex<Option<BufWriter<std::io::Stdout>>> = Mutex::new(None);

/// Writes buffered log lines to stdout now.
pub fn flush() {
    if let Some(w) = BUFFER
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .as_mut()
    {
        let _ = w.flush();
    }
}

/// The subscriber's writer: appends to the shared buffer.
struct BufferedStdout;

/// One log line being written, under the buffer's lock.
pub struct BufferedLine<'a>(MutexGuard<'a, Option<BufWriter<std::io::Stdout>>>);

impl Write for BufferedLine<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .get_or_insert_with(|| BufWriter::with_capacity(64 * 1024, std::io::stdout()))
            .write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for BufferedStdout {
    type Writer = BufferedLine<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        buffered_line()
    }
}

/// The shared buffer, locked for one line.
fn buffered_line() -> BufferedLine<'static> {
    BufferedLine(BUFFER.lock().unwrap_or_else(PoisonError::into_inner))
}

/// How [`access`] writes its lines itself; unset: through tracing (not initialised by [`init`],
/// the access log below the level, or colours on a terminal).
static FAST_ACCESS: OnceLock<AccessFormat> = OnceLock::new();

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AccessFormat {
    Json,
    Console,
}

/// One request, as the access log records it.
#[derive(Debug)]
pub struct Access<'a> {
    pub request_id: u64,
    pub method: &'a str,
    pub uri: &'a str,
    pub repo: &'a str,
    pub client: IpAddr,
    pub status: u16,
    pub cache: &'a str,
    pub size: Option<u64>,
    pub ms: f64,
}

/// Logs a request at INFO. The line is the one tracing's formatter would write (same fields,
/// same order, same shape), formatted here directly: the generic formatter cost a sixth of the
/// small-file throughput.
pub fn access(a: &Access<'_>) {
    match FAST_ACCESS.get() {
        Some(&format) => {
            let mut line = String::with_capacity(256);
            format_access(&mut line, format, SystemTime::now(), a);
            let _ = buffered_line().write_all(line.as_bytes());
        }
        None => tracing::info!(
            request_id = a.request_id,
            method = %a.method,
            uri = %a.uri,
            repo = a.repo,
            client = %a.client,
            status = a.status,
            cache = a.cache,
            size = a.size,
            ms = a.ms,
            "request"
        ),
    }
}

fn format_access(out: &mut String, format: AccessFormat, now: SystemTime, a: &Access<'_>) {
    Head {
        format,
        level: tracing::Level::INFO,
        ansi: false,
        message: "request",
    }
    .write(out, now);
    number(out, format, "request_id", a.request_id);
    for (name, value) in [("method", a.method), ("uri", a.uri), ("repo", a.repo)] {
        field(out, format, name, value, false);
    }
    address(out, format, "client", a.client);
    number(out, format, "status", u64::from(a.status));
    field(out, format, "cache", a.cache, false);
    if let Some(size) = a.size {
        number(out, format, "size", size);
    }
    out.push_str(match format {
        AccessFormat::Json => ",\"ms\":",
        AccessFormat::Console => " ms=",
    });
    write_ms(out, a.ms);
    end(out, format);
}

/// How a line's time is written, always in UTC.
#[derive(Clone, Copy)]
enum Clock {
    /// `2024-01-15T10:30:00.123Z`
    Rfc3339,
    /// `2024/01/15 10:30:00`, the Go program's console format.
    Console,
}

fn timestamp(out: &mut String, now: SystemTime, clock: Clock) {
    thread_local! {
        /// The last second written by this thread, and how: most lines share their second.
        static LAST: std::cell::RefCell<(u64, u8, String)> =
            const { std::cell::RefCell::new((u64::MAX, 0, String::new())) };
    }
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let cached = LAST.try_with(|cell| {
        let Ok(mut cell) = cell.try_borrow_mut() else {
            return false;
        };
        let (last, how, text) = &mut *cell;
        if *last != secs || *how != clock as u8 {
            text.clear();
            date_time(text, secs, clock);
            (*last, *how) = (secs, clock as u8);
        }
        out.push_str(text);
        true
    });
    if cached != Ok(true) {
        // A thread being torn down has no cache left.
        date_time(out, secs, clock);
    }
    if let Clock::Rfc3339 = clock {
        let ms = since.subsec_millis();
        out.push('.');
        for d in [ms / 100, ms / 10 % 10, ms % 10] {
            out.push(char::from(b'0' + d as u8));
        }
        out.push('Z');
    }
}

/// `secs` since the epoch as the date and time of day (to the second) in `clock`'s form.
fn date_time(out: &mut String, secs: u64, clock: Clock) {
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    let _ = match clock {
        Clock::Rfc3339 => write!(out, "{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}"),
        Clock::Console => write!(out, "{year:04}/{month:02}/{day:02} {h:02}:{m:02}:{s:02}"),
    };
}

fn json_escape(out: &mut String, text: &str) {
    // Most values need no escape: one pass without an early exit (which the compiler can
    // vectorize) finds that out.
    let plain = text.bytes().fold(true, |plain, b| {
        plain & (b >= 0x20) & (b != b'"') & (b != b'\\')
    });
    if plain {
        out.push_str(text);
        return;
    }
    // Runs of characters that need no escape are copied whole (every character that does is
    // ASCII, so the runs end on character boundaries).
    let mut from = 0;
    for (i, b) in text.bytes().enumerate() {
        let escaped = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            b if b < 0x20 => "",
            _ => continue,
        };
        out.push_str(&text[from..i]);
        from = i + 1;
        if escaped.is_empty() {
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.push_str(escaped);
        }
    }
    out.push_str(&text[from..]);
}

/// A duration in milliseconds, rounded to the microsecond, written as `{:?}` writes an `f64`
/// already on that grid (`0.008`, `12.5`, `3.0`; the caller rounds) without formatting a
/// float.
fn write_ms(out: &mut String, ms: f64) {
    let us = (ms * 1000.0).round() as u64;
    let (whole, frac) = (us / 1000, us % 1000);
    out.push_str(itoa::Buffer::new().format(whole));
    out.push('.');
    // Three digits, trailing zeros dropped (one kept).
    let digits = [frac / 100, frac / 10 % 10, frac % 10];
    let keep = if frac % 100 == 0 {
        1
    } else if frac % 10 == 0 {
        2
    } else {
        3
    };
    for d in &digits[..keep] {
        out.push(char::from(b'0' + *d as u8));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn sample(size: Option<u64>) -> Access<'static> {
        Access {
            request_id: 7,
            method: "GET",
            uri: "/debian/pool/a \"b\\c\u{1}.deb",
            repo: "debian",
            client: "127.0.0.1".parse().unwrap(),
            status: 200,
            cache: "HIT",
            size,
            ms: 1.0,
        }
    }

    #[test]
    fn durations_and_escapes_are_written_as_before() {
        for ms in [
            0.0,
            0.008,
            0.05,
            0.1,
            0.123,
            1.0,
            3.5,
            12.25,
            1234.567,
            86_400_000.001,
        ] {
            let mut out = String::new();
            write_ms(&mut out, ms);
            let rounded = (ms * 1000.0_f64).round() / 1000.0;
            assert_eq!(out, format!("{rounded:?}"), "{ms}");
        }
        for text in ["plain", "a \"b\\c\u{1}\n\r\t.deb", "é/ü\u{1f}ß\"", ""] {
            let mut out = String::from("\"");
            json_escape(&mut out, text);
            out.push('"');
            assert_eq!(serde_json::from_str::<String>(&out).unwrap(), text);
            assert!(!out[1..out.len() - 1].bytes().any(|b| b < 0x20));
        }
        let mut out = String::new();
        json_escape(&mut out, "a\u{1b}\u{7f}é");
        assert_eq!(out, "a\\u001b\u{7f}é");
    }

    #[test]
    fn access_lines_have_the_go_programs_shape() {
        let at = UNIX_EPOCH + Duration::from_micros(1_704_535_200_123_456);
        let mut json = String::new();
        format_access(&mut json, AccessFormat::Json, at, &sample(Some(6)));
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["time"], "2024-01-06T10:00:00.123Z");
        assert_eq!(
            (v["level"].as_str(), v["message"].as_str()),
            (Some("info"), Some("request"))
        );
        assert_eq!(v["uri"], "/debian/pool/a \"b\\c\u{1}.deb");
        assert_eq!(v["request_id"], 7);
        assert_eq!(v["client"], "127.0.0.1");
        assert_eq!(
            (v["status"].as_u64(), v["size"].as_u64()),
            (Some(200), Some(6))
        );
        assert!(v["ms"].is_f64() && v["ms"] == 1.0);
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys.len(), 12);
        assert!(json.starts_with("{\"level\":\"info\",\"time\":"), "{json}");
        let mut line = String::new();
        format_access(&mut line, AccessFormat::Json, at, &sample(None));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert!(v.get("size").is_none());
        // Addresses and milliseconds as Display writes them.
        let early = UNIX_EPOCH + Duration::from_micros(1_704_535_200_007_000);
        for client in [
            "10.200.3.45",
            "0.0.0.0",
            "::1",
            "2001:db8::5:0:1",
            "::ffff:10.0.0.1",
        ] {
            let ip: IpAddr = client.parse().unwrap();
            let mut line = String::new();
            let a = Access {
                client: ip,
                ..sample(None)
            };
            format_access(&mut line, AccessFormat::Json, early, &a);
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            assert_eq!(v["client"], ip.to_string(), "{line}");
            assert_eq!(v["time"], "2024-01-06T10:00:00.007Z");
            let mut line = String::new();
            format_access(&mut line, AccessFormat::Console, early, &a);
            assert!(line.contains(&format!(" client={ip} ")), "{line}");
        }

        let mut console = String::new();
        let plain = Access {
            uri: "/x",
            ..sample(Some(6))
        };
        format_access(&mut console, AccessFormat::Console, at, &plain);
        assert_eq!(
            console,
            "2024/01/06 10:00:00 INF request request_id=7 method=GET uri=/x repo=debian client=127.0.0.1 status=200 cache=HIT size=6 ms=1.0\n"
        );
        let mut quoted = String::new();
        format_access(
            &mut quoted,
            AccessFormat::Console,
            at,
            &Access {
                cache: "",
                ..sample(None)
            },
        );
        assert!(
            quoted.contains(" uri=\"/debian/pool/a \\\"b\\\\c\\u0001.deb\" ")
                && quoted.contains(" cache=\"\" "),
            "{quoted}"
        );
        // Dates across month, year and leap-day boundaries.
        for (secs, want, console) in [
            (0, "1970-01-01T00:00:00.000Z", "1970/01/01 00:00:00"),
            (
                951_782_400,
                "2000-02-29T00:00:00.000Z",
                "2000/02/29 00:00:00",
            ),
            (
                1_798_761_599,
                "2026-12-31T23:59:59.000Z",
                "2026/12/31 23:59:59",
            ),
        ] {
            let at = UNIX_EPOCH + Duration::from_secs(secs);
            let (mut t, mut c) = (String::new(), String::new());
            timestamp(&mut t, at, Clock::Rfc3339);
            timestamp(&mut c, at, Clock::Console);
            assert_eq!((t.as_str(), c.as_str()), (want, console));
        }
        // The same second again (from the thread's last second), then the next one.
        for (at, want) in [
            (1_798_761_599_123, "2026-12-31T23:59:59.123Z"),
            (1_798_761_599_999, "2026-12-31T23:59:59.999Z"),
            (1_798_761_600_000, "2027-01-01T00:00:00.000Z"),
        ] {
            let mut t = String::new();
            timestamp(
                &mut t,
                UNIX_EPOCH + Duration::from_millis(at),
                Clock::Rfc3339,
            );
            assert_eq!(t, want);
        }
    }

    /// Events through the subscriber come out in the same shapes, fields in order, with no
    /// Rust debug formatting of strings and an error chain said once.
    #[test]
    fn events_have_the_go_programs_shape() {
        use tracing_subscriber::fmt::MakeWriter;
        #[derive(Clone, Default)]
        struct Capture(std::sync::Arc<Mutex<Vec<u8>>>);
        impl Write for Capture {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        impl<'a> MakeWriter<'a> for Capture {
            type Writer = Capture;
            fn make_writer(&'a self) -> Capture {
                self.clone()
            }
        }
        #[derive(Debug, thiserror::Error)]
        #[error("cannot listen on 0.0.0.0:80: {0}")]
        struct Bind(#[source] std::io::Error);
        for format in [AccessFormat::Console, AccessFormat::Json] {
            let capture = Capture::default();
            let subscriber = tracing_subscriber::fmt()
                .with_writer(capture.clone())
                .event_format(GoFormat {
                    format,
                    ansi: false,
                })
                .finish();
            tracing::subscriber::with_default(subscriber, || {
                let e = Bind(std::io::Error::from(std::io::ErrorKind::AddrInUse));
                tracing::info!(version = "1.0.0", listen = %"0.0.0.0:3142", protocol = "http", "starting apt-proxy");
                tracing::warn!(
                    error = &e as &(dyn std::error::Error + 'static),
                    retry = true,
                    n = 3u64,
                    "bind failed"
                );
            });
            let text = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
            let lines: Vec<&str> = text.lines().collect();
            match format {
                AccessFormat::Console => {
                    assert_eq!(
                        &lines[0][19..],
                        " INF starting apt-proxy version=1.0.0 listen=0.0.0.0:3142 protocol=http"
                    );
                    assert_eq!(
                        &lines[1][19..],
                        " WRN bind failed error=\"cannot listen on 0.0.0.0:80: address in use\" retry=true n=3"
                    );
                }
                AccessFormat::Json => {
                    let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
                    assert_eq!(
                        (v["level"].as_str(), v["message"].as_str()),
                        (Some("info"), Some("starting apt-proxy"))
                    );
                    assert_eq!(v["listen"], "0.0.0.0:3142");
                    let v: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
                    assert_eq!(v["level"], "warn");
                    assert_eq!(v["error"], "cannot listen on 0.0.0.0:80: address in use");
                    assert_eq!(
                        (v["retry"].as_bool(), v["n"].as_u64()),
                        (Some(true), Some(3))
                    );
                }
            }
        }
    }
}
