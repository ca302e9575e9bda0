//! apt-proxy: a caching proxy for APT, YUM/DNF and APK package managers.
//!
//! The crate is one binary with a thin `main.rs`; everything it does lives here so that the
//! integration tests can start the real server in-process on an ephemeral port.
//!
//! The request pipeline (see `docs/architecture.md`):
//! [`server`] accepts connections and hands each request to the handler, which asks [`route`]
//! which repository the URL belongs to, then [`cache`] answers from [`storage`] or fills the
//! entry from the mirror through [`upstream`], one download per file however many clients wait.
#![forbid(unsafe_code)]

pub mod admin;
pub mod cache;
pub mod config;
pub mod distro;
pub mod mirror;
pub mod route;
pub mod server;
pub mod storage;
pub mod telemetry;
#[doc(hidden)]
pub mod testkit;
pub mod units;
pub mod upstream;

/// The version string printed by `--version`, in logs and in the `X-Version` header.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The git commit the binary was built from (`unknown` outside a checkout).
pub const COMMIT: &str = env!("APT_PROXY_COMMIT");
/// When the commit the binary is built from was made (or `SOURCE_DATE_EPOCH`), RFC 3339 UTC.
pub const BUILD_DATE: &str = env!("APT_PROXY_BUILD_DATE");

/// Unix time in whole seconds.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
