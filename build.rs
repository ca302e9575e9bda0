//! Records the git commit the binary is built from and its date (`X-Build-Commit`,
//! `X-Build-Date`, `/version`). The date is `SOURCE_DATE_EPOCH` when set (reproducible builds),
//! else the commit's date, so that two builds of one commit carry the same bytes.

use std::process::Command;

fn main() {
    let commit = output("git", &["rev-parse", "--short=12", "HEAD"])
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=APT_PROXY_COMMIT={commit}");
    let date = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(epoch) => output(
            "date",
            &["-u", "-d", &format!("@{epoch}"), "+%Y-%m-%dT%H:%M:%SZ"],
        ),
        Err(_) => output(
            "git",
            &[
                "log",
                "-1",
                "--format=%cd",
                "--date=format-local:%Y-%m-%dT%H:%M:%SZ",
            ],
        ),
    };
    println!(
        "cargo:rustc-env=APT_PROXY_BUILD_DATE={}",
        date.unwrap_or_else(|| "unknown".to_string())
    );
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
}

/// The trimmed stdout of a command that succeeded (in UTC), or `None`.
fn output(program: &str, args: &[&str]) -> Option<String> {
    Command::new(program)
        .args(args)
        .env("TZ", "UTC")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}
