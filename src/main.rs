//! The `apt-proxy` binary: parse the command line, start the server, run until a signal.
//! `--check-config` and `--health-check` are one-shot modes that start no server.

use std::process::ExitCode;

use apt_proxy::config::{Config, cli::Cli};
use apt_proxy::server::Server;

/// glibc gives each thread that allocates its own arena (up to 8 per core), and freed memory
/// stays in the arena of the thread that freed it: the runtime's worker and the blocking
/// pool's readers made the peak resident memory under load about 40 MiB. Two arenas keep it
/// near 23 MiB at the same throughput (bench/hits.sh). An operator's own `MALLOC_ARENA_MAX`
/// is left to glibc.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn limit_malloc_arenas() {
    const M_ARENA_MAX: std::ffi::c_int = -8;
    unsafe extern "C" {
        fn mallopt(param: std::ffi::c_int, value: std::ffi::c_int) -> std::ffi::c_int;
    }
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; it is called before the runtime
        // starts any thread.
        unsafe {
            mallopt(M_ARENA_MAX, 2);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}

fn main() -> ExitCode {
    let cli = Cli::parse_args();
    let (check_config, health_check) = (cli.check_config, cli.health_check);
    let env = |name: &str| std::env::var(name).ok();
    let home = std::env::var_os("HOME").map(std::path::PathBuf::from);
    let config = match Config::resolve(cli, &env, home.as_deref()) {
        Ok(resolved) => resolved,
        Err(e) if check_config || health_check => {
            eprintln!("apt-proxy: configuration error: {e}");
            return ExitCode::from(1);
        }
        Err(e) => {
            eprintln!("apt-proxy: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    if check_config {
        return check(&config);
    }
    limit_malloc_arenas();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("apt-proxy: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    if health_check {
        return match runtime.block_on(apt_proxy::admin::health::probe(&config)) {
            Ok(url) => {
                println!("{url}: alive");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("apt-proxy: health check failed: {e}");
                ExitCode::from(1)
            }
        };
    }
    if let Some(warning) = apt_proxy::telemetry::logging::init(config.debug) {
        tracing::warn!("{warning}");
    }
    if let Some(path) = &config.config_file {
        tracing::info!("loaded configuration file {}", path.display());
    }
    for warning in &config.file_warnings {
        tracing::warn!("{warning}");
    }
    let code = match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let e = apt_proxy::upstream::error_chain(e.as_ref());
            tracing::error!("{e}");
            eprintln!("apt-proxy: {e}");
            ExitCode::from(2)
        }
    };
    apt_proxy::telemetry::logging::flush();
    code
}

/// `--check-config`: the resolved settings and the repos they serve on stdout, exit 0; or the
/// problems (ignored keys included) on stderr, exit 1.
fn check(config: &Config) -> ExitCode {
    use std::io::Write;
    let repos = match apt_proxy::server::preflight(config) {
        Ok(repos) => repos,
        Err(e) => {
            eprintln!("apt-proxy: configuration error: {e}");
            return ExitCode::from(1);
        }
    };
    // A key the server would ignore at start-up fails the check: it is a typo or a setting
    // that does nothing.
    for warning in &config.file_warnings {
        eprintln!("apt-proxy: configuration warning: {warning}");
    }
    let problems = config.check_problems();
    for problem in &problems {
        eprintln!("apt-proxy: configuration error: {problem}");
    }
    if !problems.is_empty() || !config.file_warnings.is_empty() {
        return ExitCode::from(1);
    }
    let mut text = String::new();
    for note in config.check_notes() {
        text.push_str(&format!("# note: {note}\n"));
    }
    text.push_str(&config.report());
    text.push_str("repos served:\n");
    for line in repos {
        text.push_str(&format!("  {line}\n"));
    }
    text.push_str("configuration OK\n");
    // A closed pipe (`--check-config | head`) is not an error of the configuration.
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
    ExitCode::SUCCESS
}
async fn run(config: Config) -> anyhow::Result<()> {
    let listen = format!("{}:{}", config.host, config.port);
    let protocol = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    tracing::info!(version = apt_proxy::VERSION, listen = %listen, protocol, "starting apt-proxy");
    match apt_proxy::server::limits::raise_open_files_limit() {
        Some((before, after)) if after > before => {
            tracing::info!(before, after, "raised the open files limit")
        }
        Some(_) => {}
        None => tracing::warn!("could not raise the open files limit"),
    }
    let server = Server::bind(&config).await?;
    let addrs = server.local_addrs();
    let also: Vec<String> = addrs.iter().skip(1).map(|a| a.to_string()).collect();
    if also.is_empty() {
        tracing::info!(listen = %addrs[0], protocol = server.protocol(), "proxy listening on {}", addrs[0]);
    } else {
        tracing::info!(listen = %addrs[0], also = %also.join(" "), protocol = server.protocol(), "proxy listening on {} and {}", addrs[0], also.join(" and "));
    }
    let reloader = server.reloader();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::hangup()) {
            Ok(mut hup) => {
                while hup.recv().await.is_some() {
                    tracing::info!("SIGHUP received");
                    reloader.request();
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGHUP; use POST /api/mirrors/refresh to reload")
            }
        }
    });
    server.run(shutdown_signal()).await;
    Ok(())
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops the server");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        _ = term.recv() => tracing::info!("SIGTERM received"),
    }
}
