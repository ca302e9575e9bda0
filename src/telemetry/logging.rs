//! Structured logs on stdout: `APT_PROXY_LOG_LEVEL` (legacy `LOG_LEVEL`), `--debug` forces
//! debug; `APT_PROXY_LOG_FORMAT` (legacy `LOG_FORMAT`) json, console, or auto (console on a TTY).
//!
//! Lines are buffered and written out every 100 ms (and at exit, see [`flush`]): one write per
//! request line cost a quarter of the small-file throughput. A crash loses at most the last
//! 100 ms of lines.

use std::io::{BufWriter, IsTerminal, Write};
use std::sync::{Mutex, MutexGuard, PoisonError};

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
    let format = env_either("APT_PROXY_LOG_FORMAT", "LOG_FORMAT").map(|v| v.to_ascii_lowercase());
    let json = match format.as_deref() {
        Some("json") => true,
        Some("console") => false,
        None | Some("auto") => !std::io::stdout().is_terminal(),
        Some(other) => {
            warning = Some(format!(
                "APT_PROXY_LOG_FORMAT={other:?} is not one of json, console, auto; using auto"
            ));
            !std::io::stdout().is_terminal()
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
    let builder = tracing_subscriber::fmt()
        .with_writer(BufferedStdout)
        .with_max_level(level)
        .with_target(false)
        .with_ansi(std::io::stdout().is_terminal());
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
        BufferedLine(BUFFER.lock().unwrap_or_else(PoisonError::into_inner))
    }
}
