//! The real binary killed with SIGKILL in mid-fill, and graceful shutdown: no torn entry is
//! ever served, and transfers in flight finish.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;

use crate::{Behavior, Origin, Proxy, cache_dir, data, x_cache};

/// The binary, started on a free port; killed when dropped.
pub struct Binary {
    pub child: Child,
    pub addr: String,
    /// Every log line printed so far.
    pub lines: Arc<Mutex<Vec<String>>>,
}

impl Binary {
    fn start(origin: &Origin, cache: &Path) -> Binary {
        Binary::start_with(
            cache,
            &["--mode", "debian", "--debian", &origin.base("debian")],
            &[],
        )
    }

    /// Starts the binary with its cache in `cache`, extra arguments and environment.
    pub fn start_with(cache: &Path, args: &[&str], env: &[(&str, &str)]) -> Binary {
        Binary::spawn(
            Command::new(env!("CARGO_BIN_EXE_apt-proxy")),
            cache,
            args,
            env,
        )
    }

    /// Starts the binary in a private mount namespace of its own, after `setup` (a shell
    /// script, run there as root) has mounted what the test needs: the mounts vanish with the
    /// process and are never seen outside it. Panics when the namespace cannot be made.
    pub fn start_in_namespace(
        setup: &str,
        cache: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Binary {
        let mut command = Command::new("unshare");
        command.args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &format!("set -e; {setup}; exec \"$0\" \"$@\""),
            env!("CARGO_BIN_EXE_apt-proxy"),
        ]);
        Binary::spawn(command, cache, args, env)
    }

    /// Runs `script` (sh) in the binary's mount namespace and returns its output.
    pub fn inside(&self, script: &str) -> String {
        let out = Command::new("nsenter")
            .args([
                "--target",
                &self.child.id().to_string(),
                "--mount",
                "sh",
                "-c",
                script,
            ])
            .output()
            .expect("nsenter runs");
        assert!(out.status.success(), "{script}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn spawn(mut command: Command, cache: &Path, args: &[&str], env: &[(&str, &str)]) -> Binary {
        if !args.contains(&"--host") {
            command.args(["--host", "127.0.0.1"]);
        }
        let mut child = command
            .args(["--port", "0"])
            .args(args)
            .arg("--cachedir")
            .arg(cache)
            .envs(env.iter().copied())
            .env("APT_PROXY_LOG_FORMAT", "json")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let log = lines.clone();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in stdout.lines().map_while(Result::ok) {
                if !sent && line.contains("proxy listening") {
                    let addr = line
                        .split("\"listen\":\"")
                        .nth(1)
                        .and_then(|r| r.split('"').next())
                        .unwrap_or_default()
                        .to_string();
                    sent = tx.send(addr).is_ok();
                }
                log.lock().unwrap().push(line);
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the binary reports its address");
        Binary { child, addr, lines }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{path}", self.addr)
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn sigkill_in_mid_fill_leaves_no_torn_entry() {
    let origin = Origin::start().await;
    let small = "/debian/pool/main/s/small.deb";
    let big = "/debian/pool/main/b/big.deb";
    let big_body = data(8 << 20, 7);
    origin.put(small, "small and complete");
    origin.put(big, big_body.clone());
    origin.set(
        big,
        Behavior::Slow {
            chunk: 64 << 10,
            delay: Duration::from_millis(20),
        },
    );
    let dir = cache_dir();
    let client = crate::client_builder().build().unwrap();

    let mut first = Binary::start(&origin, dir.path());
    assert_eq!(
        client
            .get(first.url(&small[1..]))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "small and complete"
    );
    // Several clients are reading the big file when the process dies.
    let mut streams = Vec::new();
    for _ in 0..3 {
        let r = client.get(first.url(&big[1..])).send().await.unwrap();
        let mut s = r.bytes_stream();
        s.next().await.unwrap().unwrap();
        streams.push(s);
    }
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    for mut s in streams {
        let mut failed = false;
        while let Some(chunk) = s.next().await {
            failed |= chunk.is_err();
        }
        assert!(failed, "a reader of a killed fill must see a cut transfer");
    }

    origin.set(big, Behavior::Normal);
    let second = Binary::start(&origin, dir.path());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("tmp")).unwrap().collect();
    assert!(
        leftovers.is_empty(),
        "temporary files survive a restart: {leftovers:?}"
    );
    let r = client.get(second.url(&small[1..])).send().await.unwrap();
    assert_eq!(x_cache(&r), "HIT");
    assert_eq!(r.text().await.unwrap(), "small and complete");
    let r = client.get(second.url(&big[1..])).send().await.unwrap();
    assert_eq!(x_cache(&r), "MISS");
    assert!(r.bytes().await.unwrap() == big_body);
    let r = client.get(second.url(&big[1..])).send().await.unwrap();
    assert_eq!(x_cache(&r), "HIT");
    assert!(r.bytes().await.unwrap() == big_body);
    assert_eq!(origin.hits(big), 2);
}

#[tokio::test]
async fn graceful_shutdown_lets_transfers_finish() {
    let origin = Origin::start().await;
    let path = "/debian/pool/main/g/graceful.deb";
    let body = data(1 << 20, 8);
    origin.put(path, body.clone());
    origin.set(
        path,
        Behavior::Slow {
            chunk: 64 << 10,
            delay: Duration::from_millis(20),
        },
    );
    let dir = cache_dir();
    let proxy = Proxy::start(&origin, dir.path(), |_| {}).await;
    let addr = proxy.addr;
    let r = proxy.get(&path[1..]).await;
    let mut stream = r.bytes_stream();
    let mut got = stream.next().await.unwrap().unwrap().to_vec();
    let stopping = tokio::spawn(proxy.stop());
    while let Some(chunk) = stream.next().await {
        got.extend_from_slice(&chunk.unwrap());
    }
    assert!(got == body, "the transfer in flight finished whole");
    stopping.await.unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no new connections after shutdown"
    );
}

#[test]
fn start_up_errors_name_what_is_wrong() {
    let dir = cache_dir();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_apt-proxy"))
            .args(["--host", "127.0.0.1", "--port", "0"])
            .arg("--cachedir")
            .arg(dir.path())
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&["--debian", "cn:nowhere"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cn:nowhere") && stderr.contains("debian"),
        "{stderr}"
    );

    let out = run(&["--mode", "fedora"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("fedora"));

    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_apt-proxy"))
        .args(["--host", "127.0.0.1", "--port", "0", "--cachedir"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not-a-dir"));
}

#[tokio::test]
async fn logging_follows_its_variables_and_leaves_probes_out() {
    let origin = Origin::start().await;
    origin.put("/debian/pool/l.deb", "logged");
    let dir = cache_dir();
    let client = crate::client_builder().build().unwrap();

    let proxy = Binary::start_with(
        &dir.path().join("c1"),
        &["--mode", "debian", "--debian", &origin.base("debian")],
        &[],
    );
    client
        .get(proxy.url("debian/pool/l.deb"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    client.get(proxy.url("healthz")).send().await.unwrap();
    client.get(proxy.url("_/ping")).send().await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let lines = proxy.lines.lock().unwrap().clone();
    let requests: Vec<serde_json::Value> = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == "request")
        .collect();
    assert_eq!(requests.len(), 1, "probes are not logged: {lines:?}");
    let r = &requests[0];
    assert_eq!(r["cache"], "MISS");
    assert_eq!(r["size"], 6);
    assert_eq!(r["status"], 200);
    assert_eq!(r["repo"], "debian");
    assert!(r["request_id"].is_u64() && r["ms"].is_f64(), "{r}");
    // The Go program's JSON field names.
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("{\"level\":\"info\",\"time\":\""))
    );
    assert!(
        lines
            .iter()
            .all(|l| !l.contains("Some(") && !l.contains("\"fields\"")),
        "{lines:?}"
    );
    drop(proxy);

    // --debug logs each request's headers, credentials hidden.
    let proxy = Binary::start_with(
        &dir.path().join("c3"),
        &[
            "--mode",
            "debian",
            "--debian",
            &origin.base("debian"),
            "--debug",
        ],
        &[],
    );
    client
        .get(proxy.url("debian/pool/l.deb"))
        .header("x-api-key", "key-secret")
        .header("authorization", "Bearer token-secret")
        .header("cookie", "session=cookie-secret")
        .header("user-agent", "Debian APT-HTTP/1.3 (2.6.1)")
        .send()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let lines = proxy.lines.lock().unwrap().clone();
    let headers: Vec<serde_json::Value> = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == "request headers" && v["level"] == "debug")
        .collect();
    assert_eq!(headers.len(), 1, "{lines:?}");
    let logged = headers[0]["headers"].as_str().unwrap();
    assert!(
        logged.contains("user-agent: Debian APT-HTTP/1.3 (2.6.1)")
            && logged.contains("x-api-key: [redacted]")
            && logged.contains("authorization: [redacted]")
            && logged.contains("cookie: [redacted]"),
        "{logged}"
    );
    assert!(
        lines.iter().all(|l| !l.contains("-secret")),
        "a credential reached the log: {lines:?}"
    );
    drop(proxy);

    // Legacy names apply when the new ones are unset; warn hides the access log (and the
    // start-up lines: the port is chosen here and probed).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_apt-proxy"))
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--mode",
            "debian",
            "--debian",
            &origin.base("debian"),
            "--cachedir",
        ])
        .arg(dir.path().join("c2"))
        .env("LOG_LEVEL", "warn")
        .env("APT_PROXY_LOG_FORMAT", "json")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut up = false;
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let served = if up {
        client
            .get(format!("http://127.0.0.1:{port}/debian/pool/l.deb"))
            .send()
            .await
            .ok()
    } else {
        None
    };
    let _ = child.kill();
    let output = child.wait_with_output().unwrap();
    assert!(
        up && served.is_some_and(|r| r.status() == 200),
        "the binary serves at warn level"
    );
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        !text.contains("\"message\":\"request\"") && !text.contains("starting apt-proxy"),
        "{text}"
    );

    // --debug forces debug whatever the level says; console format is not JSON.
    let mut child = Command::new(env!("CARGO_BIN_EXE_apt-proxy"))
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--debug",
            "--mode",
            "debian",
            "--debian",
            &origin.base("debian"),
            "--cachedir",
        ])
        .arg(dir.path().join("c3"))
        .env("APT_PROXY_LOG_LEVEL", "error")
        .env("APT_PROXY_LOG_FORMAT", "console")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let lines = Arc::new(Mutex::new(Vec::new()));
    let log = lines.clone();
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            log.lock().unwrap().push(line);
        }
    });
    let mut addr = None;
    for _ in 0..200 {
        addr = lines.lock().unwrap().iter().find_map(|l| {
            l.split("listen=")
                .nth(1)
                .filter(|_| l.contains("proxy listening"))
                .map(|r| r.split_whitespace().next().unwrap_or("").to_string())
        });
        if addr.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let addr = addr.expect("console log shows the address");
    client
        .get(format!("http://{addr}/debian/pool/l.deb"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let _ = child.kill();
    let _ = child.wait();
    let lines = lines.lock().unwrap().clone();
    assert!(
        lines.iter().all(|l| !l.trim_start().starts_with('{')),
        "console format: {lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.contains(" DBG ")),
        "--debug forces debug: {lines:?}"
    );
}

/// The access log's duration is the whole transfer's, not the time to the response head; a
/// client that hangs up mid-body is logged too.
#[tokio::test]
async fn the_access_log_times_the_whole_transfer() {
    let origin = Origin::start().await;
    origin.put("/debian/pool/slow.deb", data(5_000, 3));
    origin.set(
        "/debian/pool/slow.deb",
        Behavior::Slow {
            chunk: 1_000,
            delay: Duration::from_millis(150),
        },
    );
    origin.put("/debian/pool/left.deb", data(200_000, 4));
    origin.set("/debian/pool/left.deb", Behavior::Gated(1_000));
    let dir = cache_dir();
    let client = crate::client_builder().build().unwrap();
    let proxy = Binary::start_with(
        dir.path(),
        &["--mode", "debian", "--debian", &origin.base("debian")],
        &[],
    );
    let r = client
        .get(proxy.url("debian/pool/slow.deb"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap().len(), 5_000);
    let r = client
        .get(proxy.url("debian/pool/left.deb"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    drop(r);
    let requests = || -> Vec<serde_json::Value> {
        proxy
            .lines
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["message"] == "request")
            .collect()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while requests().len() < 2 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let requests = requests();
    let line = |name: &str| {
        requests
            .iter()
            .find(|r| r["uri"].as_str().unwrap_or_default().ends_with(name))
            .unwrap_or_else(|| panic!("no line for {name}: {requests:?}"))
            .clone()
    };
    // Four gaps of 150 ms between the five chunks.
    let slow = line("slow.deb");
    assert!(slow["ms"].as_f64().unwrap() >= 550.0, "{slow}");
    assert_eq!(line("left.deb")["status"], 200);
    origin.release();
}
