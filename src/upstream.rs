//! The HTTP(S) client that talks to mirrors.
//!
//! Connect and idle-read timeouts, but no total-transfer timeout: a 2 GB package on a slow
//! link must finish. Redirects are followed a few times, never to an internal address the
//! operator did not configure ([`policy`]). TLS is rustls on the ring provider.

pub mod policy;

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{
    HeaderMap, HeaderValue, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, RANGE, USER_AGENT,
};
use url::Url;

use crate::config::Tuning;
use policy::{AddressPolicy, GuardedResolver};

/// Why a mirror could not be used.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("mirror timed out")]
    Timeout { detail: String },
    #[error("cannot connect to mirror")]
    Connect { detail: String },
    #[error("mirror transfer failed")]
    Transfer { detail: String },
    /// A redirect or a resolved address that the address policy refuses.
    #[error("mirror sent the proxy to an address it does not fetch from")]
    Refused { detail: String },
    #[error("upstream client set-up failed: {0}")]
    Setup(String),
}

impl UpstreamError {
    /// Classifies a request or body error, keeping the whole chain for the log.
    pub fn from_reqwest(e: &reqwest::Error) -> UpstreamError {
        // The whole chain, for the operator's log; clients get only the short Display text.
        let detail = error_chain(e);
        if policy::refusal(e).is_some() {
            UpstreamError::Refused { detail }
        } else if e.is_timeout() {
            UpstreamError::Timeout { detail }
        } else if e.is_connect() {
            UpstreamError::Connect { detail }
        } else {
            UpstreamError::Transfer { detail }
        }
    }
}

/// An error with all its causes, `: `-separated, each once: a cause whose text the message
/// already holds (`{source}` in the message and `#[source]`) is not repeated.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

/// Validators of a stale copy, sent to revalidate it.
#[derive(Debug, Default, Clone)]
pub struct Validators {
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

/// What to ask a mirror for a path: GET (or HEAD), conditional on a stale copy's validators,
/// for a byte range (only if the file is still the one `if_range` names).
#[derive(Debug, Default, Clone, Copy)]
pub struct Ask<'a> {
    pub head: bool,
    pub validators: Option<&'a Validators>,
    /// A `Range` header value, e.g. `bytes=100-`.
    pub range: Option<&'a str>,
    pub if_range: Option<&'a str>,
}

impl Ask<'_> {
    /// The method, for metrics.
    pub fn method(&self) -> &'static str {
        if self.head { "HEAD" } else { "GET" }
    }
}

/// A shared client to every mirror.
#[derive(Debug, Clone)]
pub struct Upstream {
    client: reqwest::Client,
    head_timeout: Duration,
}

impl Upstream {
    /// Builds the client. `keep_alive: false` closes each connection after its request.
    /// Redirects and resolved names are checked against `policy`.
    pub fn new(
        keep_alive: bool,
        tuning: &Tuning,
        policy: &Arc<AddressPolicy>,
    ) -> Result<Upstream, UpstreamError> {
        // Several servers in one process (tests) share the provider; only the first install counts.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut headers = HeaderMap::new();
        headers.insert(
            USER_AGENT,
            HeaderValue::from_static(concat!("apt-proxy/", env!("CARGO_PKG_VERSION"))),
        );
        let mut builder = reqwest::Client::builder()
            .default_headers(headers)
            .connect_timeout(tuning.connect_timeout)
            .read_timeout(tuning.read_timeout)
            .redirect(policy.redirects())
            .dns_resolver(GuardedResolver(policy.clone()))
            .tcp_nodelay(true)
            .no_proxy();
        builder = if keep_alive {
            builder
                .pool_idle_timeout(Duration::from_secs(90))
                .pool_max_idle_per_host(16)
        } else {
            builder.pool_max_idle_per_host(0)
        };
        let client = builder
            .build()
            .map_err(|e| UpstreamError::Setup(e.to_string()))?;
        Ok(Upstream {
            client,
            head_timeout: tuning.head_timeout,
        })
    }

    /// Sends `ask` for `url`. Any status is returned; only failures to get a response are
    /// errors.
    pub async fn send(&self, url: Url, ask: &Ask<'_>) -> Result<reqwest::Response, UpstreamError> {
        let mut request = if ask.head {
            self.client.head(url)
        } else {
            self.client.get(url)
        };
        let validators = ask.validators.map_or((None, None), |v| {
            (v.etag.as_deref(), v.last_modified.as_deref())
        });
        for (name, value) in [
            (RANGE, ask.range),
            (IF_RANGE, ask.if_range),
            (IF_NONE_MATCH, validators.0),
            (IF_MODIFIED_SINCE, validators.1),
        ] {
            if let Some(v) = value.and_then(|v| HeaderValue::from_str(v).ok()) {
                request = request.header(name, v);
            }
        }
        self.timed(request).await
    }

    async fn timed(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, UpstreamError> {
        match tokio::time::timeout(self.head_timeout, request.send()).await {
            Ok(result) => result.map_err(|e| UpstreamError::from_reqwest(&e)),
            Err(_) => Err(UpstreamError::Timeout {
                detail: format!("no response head within {:?}", self.head_timeout),
            }),
        }
    }
}
