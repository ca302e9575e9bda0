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
    let builder = tracing_subscriber::fmt()
        .with_writer(BufferedStdout)
        .with_max_level(level)
        .with_target(false)
        .with_ansi(ansi);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
    warning
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
    match format {
        AccessFormat::Json => {
            out.push_str("{\"timestamp\":\"");
            timestamp(out, now);
            out.push_str("\",\"level\":\"INFO\",\"message\":\"request\",\"request_id\":");
            let _ = write!(out, "{}", a.request_id);
            for (name, value) in [("method", a.method), ("uri", a.uri), ("repo", a.repo)] {
                let _ = write!(out, ",\"{name}\":\"");
                json_escape(out, value);
                out.push('"');
            }
            let _ = write!(
                out,
                ",\"client\":\"{}\",\"status\":{},\"cache\":\"",
                a.client, a.status
            );
            json_escape(out, a.cache);
            out.push('"');
            if let Some(size) = a.size {
                let _ = write!(out, ",\"size\":{size}");
            }
            let _ = write!(out, ",\"ms\":{:?}}}", a.ms);
        }
        AccessFormat::Console => {
            timestamp(out, now);
            let _ = write!(
                out,
                "  INFO request request_id={} method={} uri={} repo={:?} client={} status={} cache={:?}",
                a.request_id, a.method, a.uri, a.repo, a.client, a.status, a.cache
            );
            if let Some(size) = a.size {
                let _ = write!(out, " size={size}");
            }
            let _ = write!(out, " ms={:?}", a.ms);
        }
    }
    out.push('\n');
}

/// RFC 3339 UTC with microseconds, as tracing's formatter writes it.
fn timestamp(out: &mut String, now: SystemTime) {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
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
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_micros()
    );
}

fn json_escape(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
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
    fn access_lines_have_the_formatters_shape() {
        let at = UNIX_EPOCH + Duration::from_micros(1_704_535_200_123_456);
        let mut json = String::new();
        format_access(&mut json, AccessFormat::Json, at, &sample(Some(6)));
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["timestamp"], "2024-01-06T10:00:00.123456Z");
        assert_eq!(
            (v["level"].as_str(), v["message"].as_str()),
            (Some("INFO"), Some("request"))
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
        let mut line = String::new();
        format_access(&mut line, AccessFormat::Json, at, &sample(None));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert!(v.get("size").is_none());

        let mut console = String::new();
        let plain = Access {
            uri: "/x",
            ..sample(Some(6))
        };
        format_access(&mut console, AccessFormat::Console, at, &plain);
        assert_eq!(
            console,
            "2024-01-06T10:00:00.123456Z  INFO request request_id=7 method=GET uri=/x repo=\"debian\" client=127.0.0.1 status=200 cache=\"HIT\" size=6 ms=1.0\n"
        );
        // Dates across month, year and leap-day boundaries.
        for (secs, want) in [
            (0, "1970-01-01T00:00:00.000000Z"),
            (951_782_400, "2000-02-29T00:00:00.000000Z"),
            (1_798_761_599, "2026-12-31T23:59:59.000000Z"),
        ] {
            let mut t = String::new();
            timestamp(&mut t, UNIX_EPOCH + Duration::from_secs(secs));
            assert_eq!(t, want);
        }
    }
}
