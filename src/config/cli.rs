//! Command-line flags, each with its `APT_PROXY_*` environment variable (clap derive).
//!
//! Flag names follow the interface we keep; Go-style single-dash long flags (`-port=3142`) are
//! accepted as well as `--port=3142`, because users' scripts are written both ways.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{ArgAction, CommandFactory, Parser};

use crate::distro::Mode;

/// A caching proxy for APT, YUM/DNF and APK package managers.
#[derive(Debug, Parser)]
#[command(name = "apt-proxy", version, about, long_about = None)]
pub struct Cli {
    /// Network interface to bind to
    #[arg(
        long,
        env = "APT_PROXY_HOST",
        default_value = "0.0.0.0",
        help_heading = "Server"
    )]
    pub host: String,

    /// Port to listen on
    #[arg(
        long,
        env = "APT_PROXY_PORT",
        default_value_t = 3142,
        help_heading = "Server"
    )]
    pub port: u16,

    /// Distributions to serve
    #[arg(
        long,
        env = "APT_PROXY_MODE",
        value_enum,
        default_value = "all",
        help_heading = "Server"
    )]
    pub mode: Mode,

    /// Enable verbose debug logging
    #[arg(long, env = "APT_PROXY_DEBUG", action = ArgAction::Set, num_args = 0..=1,
          default_value_t = false, default_missing_value = "true", help_heading = "Server")]
    pub debug: bool,

    /// Directory to store cached packages
    #[arg(
        long,
        env = "APT_PROXY_CACHEDIR",
        default_value = "./.aptcache",
        help_heading = "Cache"
    )]
    pub cachedir: PathBuf,

    /// Ubuntu mirror URL or shortcut (cn:tsinghua, ...)
    #[arg(long, env = "APT_PROXY_UBUNTU", help_heading = "Mirrors")]
    pub ubuntu: Option<String>,

    /// Ubuntu Ports mirror URL or shortcut
    #[arg(
        long = "ubuntu-ports",
        env = "APT_PROXY_UBUNTU_PORTS",
        help_heading = "Mirrors"
    )]
    pub ubuntu_ports: Option<String>,

    /// Debian mirror URL or shortcut (debian-security is taken from the same mirror)
    #[arg(long, env = "APT_PROXY_DEBIAN", help_heading = "Mirrors")]
    pub debian: Option<String>,

    /// CentOS mirror URL or shortcut
    #[arg(long, env = "APT_PROXY_CENTOS", help_heading = "Mirrors")]
    pub centos: Option<String>,

    /// Alpine mirror URL or shortcut
    #[arg(long, env = "APT_PROXY_ALPINE", help_heading = "Mirrors")]
    pub alpine: Option<String>,

    /// Enable HTTP keep-alive to upstream mirrors
    #[arg(long = "upstream-keep-alive", env = "APT_PROXY_UPSTREAM_KEEP_ALIVE", action = ArgAction::Set,
          num_args = 0..=1, default_value_t = true, default_missing_value = "true", help_heading = "Mirrors")]
    pub upstream_keep_alive: bool,
}

impl Cli {
    /// Parses the process arguments, accepting Go-style `-flag` spellings.
    pub fn parse_args() -> Cli {
        Cli::parse_from(normalize_args(std::env::args_os()))
    }
}

/// Rewrites `-name[=value]` to `--name[=value]` when `name` is one of our long flags, so that
/// command lines written for the Go program keep working. Short flags (`-h`, `-V`) are left alone.
pub fn normalize_args(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let command = Cli::command();
    let longs: Vec<&str> = command
        .get_arguments()
        .filter_map(|a| a.get_long())
        .chain(["help", "version"])
        .collect();
    let mut out = Vec::new();
    let mut rest_are_values = false;
    for arg in args {
        let rewritten = match arg.to_str() {
            Some("--") => {
                rest_are_values = true;
                None
            }
            Some(text) if !rest_are_values && text.starts_with('-') && !text.starts_with("--") => {
                let name = text[1..].split('=').next().unwrap_or_default();
                longs
                    .contains(&name)
                    .then(|| OsString::from(format!("-{text}")))
            }
            _ => None,
        };
        out.push(rewritten.unwrap_or(arg));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        let argv = std::iter::once("apt-proxy")
            .chain(args.iter().copied())
            .map(OsString::from);
        Cli::try_parse_from(normalize_args(argv)).unwrap()
    }

    #[test]
    fn go_style_flags() {
        let cli = parse(&[
            "-port=8080",
            "-host",
            "127.0.0.1",
            "-debug",
            "--ubuntu-ports=cn:ustc",
            "-upstream-keep-alive=false",
        ]);
        assert_eq!(cli.port, 8080);
        assert_eq!(cli.host, "127.0.0.1");
        assert!(cli.debug);
        assert_eq!(cli.ubuntu_ports.as_deref(), Some("cn:ustc"));
        assert!(!cli.upstream_keep_alive);
    }

    #[test]
    fn defaults() {
        let cli = parse(&[]);
        assert_eq!(
            (cli.host.as_str(), cli.port, cli.mode),
            ("0.0.0.0", 3142, Mode::All)
        );
        assert_eq!(cli.cachedir, PathBuf::from("./.aptcache"));
        assert!(cli.upstream_keep_alive && !cli.debug);
    }

    #[test]
    fn cli_contract() {
        Cli::command().debug_assert();
    }
}
