//! Who may connect, and how much one client may hold: the client allow-list and open
//! connections per client IP, both checked once per connection when it is accepted. One client
//! opening thousands of connections must not starve the others of file descriptors; the excess
//! is refused at once with a short 503 instead of waiting in the accept queue.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Open connections per client IP.
#[derive(Debug)]
pub struct PerClient {
    max: Option<usize>,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One admitted connection; its client's count goes down when it is dropped.
#[derive(Debug)]
pub struct Admitted {
    owner: Arc<PerClient>,
    ip: IpAddr,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self.owner.lock();
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

impl PerClient {
    /// At most `max` connections per IP (`None`: no limit).
    pub fn new(max: Option<usize>) -> Arc<PerClient> {
        Arc::new(PerClient {
            max,
            open: Mutex::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Admits a connection from `ip`, or `None` when it already has the most allowed.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Admitted> {
        let mut open = self.lock();
        let n = open.entry(ip).or_insert(0);
        if self.max.is_some_and(|max| *n >= max) {
            return None;
        }
        *n += 1;
        Some(Admitted {
            owner: self.clone(),
            ip,
        })
    }

    /// Connections open now.
    pub fn total(&self) -> usize {
        self.lock().values().sum()
    }
}

/// Why a connection is refused as soon as it is accepted.
#[derive(Debug, Clone, Copy)]
pub enum Refusal {
    /// The client already holds the most connections allowed.
    TooMany,
    /// The client is not in `--allowed-clients`.
    NotAllowed,
}

/// Answers a refused connection with a one-line plain-text status and closes it, spending at
/// most a second on the answer and another draining what the client still sends. Over TLS
/// (`tls`), the connection is just closed.
pub async fn refuse(mut stream: TcpStream, why: Refusal, tls: bool) {
    if tls {
        return;
    }
    let (status, extra, message) = match why {
        Refusal::TooMany => (
            StatusCode::SERVICE_UNAVAILABLE,
            "retry-after: 1\r\n",
            "too many open connections from this address",
        ),
        Refusal::NotAllowed => (
            StatusCode::FORBIDDEN,
            "",
            "this address may not use the proxy (--allowed-clients)",
        ),
    };
    let page = super::driver::refusal(status, extra, message);
    // The request is read (and the rest drained after the answer) so that closing does not
    // reset the connection before the client has read why.
    let answered = tokio::time::timeout(Duration::from_secs(1), async {
        let mut buf = [0u8; 4096];
        let _ = stream.read(&mut buf).await;
        stream.write_all(&page).await
    })
    .await;
    if let Ok(Ok(())) = answered {
        super::driver::linger(&stream, Duration::from_secs(1)).await;
    }
}

/// Raises the soft limit on open files to the hard limit, as Go programs do at start: the
/// common soft limit of 1,024 is far too few for a proxy. Returns (before, after).
pub fn raise_open_files_limit() -> Option<(u64, u64)> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let current = limit.current?;
    // An unlimited hard limit is still bounded by the kernel's nr_open.
    let target = limit.maximum.unwrap_or(1 << 20);
    if current >= target {
        return Some((current, current));
    }
    let raised = Rlimit {
        current: Some(target),
        maximum: limit.maximum,
    };
    setrlimit(Resource::Nofile, raised).ok()?;
    Some((current, target))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_counted_per_ip_and_released() {
        let limits = PerClient::new(Some(2));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let first = limits.admit(a).unwrap();
        let _second = limits.admit(a).unwrap();
        assert!(limits.admit(a).is_none());
        let _other = limits.admit(b).unwrap();
        drop(first);
        let _third = limits.admit(a).unwrap();
        assert_eq!(limits.total(), 3);
        assert!(PerClient::new(None).admit(a).is_some());
    }

    #[test]
    fn the_open_files_limit_is_raised_to_the_hard_limit() {
        let (_, after) = raise_open_files_limit().unwrap();
        let now = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        assert_eq!(now.current, Some(after));
    }
}
