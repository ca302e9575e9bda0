//! Structured logs on stdout: `APT_PROXY_LOG_LEVEL` (legacy `LOG_LEVEL`), `--debug` forces
//! debug; `APT_PROXY_LOG_FORMAT` (legacy `LOG_FORMAT`) json, console, or auto (console on a TTY).

use std::io::IsTerminal;

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
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_target(false);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
    warning
}
