//! Which addresses the proxy may fetch from when the address did not come from its operator.
//!
//! The operator's mirrors (pins, distributions.yaml, the built-in lists and official hosts) are
//! trusted as written. Everything else the proxy is told to contact by a third party, a mirror's
//! redirect or a line of a geo mirror list, must not lead to this machine or its networks:
//! loopback, private (RFC 1918), carrier-grade NAT, link-local (169.254.0.0/16, where cloud
//! metadata services live), unique-local and unspecified addresses are refused, in any
//! spelling (the URL parser turns `2130706433` and `0x7f.1` into `127.0.0.1`), unless the
//! operator allow-lists them (`--allow-private-upstreams`).
//!
//! Two checks cover it: IP literals in a redirect target or a geo-list line are checked when the
//! URL is seen ([`AddressPolicy::check_url`]); host names are checked in the resolver, on the
//! addresses actually connected to ([`GuardedResolver`]), so a name that resolves to a public
//! address at one moment and to 127.0.0.1 at the next (DNS rebinding) cannot slip through.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use arc_swap::ArcSwap;
use ipnet::IpNet;
use url::{Host, Url};

/// Redirects followed per request, at most.
pub const MAX_REDIRECTS: usize = 5;

/// What the operator configured: origins (scheme, host, port) and host names that are exempt.
#[derive(Debug, Default)]
struct Trusted {
    origins: HashSet<(String, String, u16)>,
    names: HashSet<String>,
}

/// The address policy for upstream URLs the operator did not write.
#[derive(Debug, Default)]
pub struct AddressPolicy {
    /// Networks the operator allows even though they are internal.
    allow: Vec<IpNet>,
    trusted: ArcSwap<Trusted>,
}

/// Why an upstream URL was refused; found in reqwest's error chain to classify the failure.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// Whether `ip` is an address of this machine or of a network behind it.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                // 0.0.0.0/8 ("this network") and 100.64.0.0/10 (carrier-grade NAT).
                || a == 0
                || (a == 100 && (64..128).contains(&b))
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal(IpAddr::V4(v4));
            }
            let segments = v6.segments();
            // The deprecated IPv4-compatible form ::a.b.c.d.
            if segments[..6] == [0; 6] && !v6.is_loopback() && !v6.is_unspecified() {
                let [.., hi, lo] = segments;
                let v4 = std::net::Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
                return is_internal(IpAddr::V4(v4));
            }
            let first = segments[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (first & 0xffc0) == 0xfe80 // link-local fe80::/10
        }
    }
}

fn origin_of(url: &Url) -> Option<(String, String, u16)> {
    Some((
        url.scheme().to_string(),
        url.host_str()?.to_ascii_lowercase(),
        url.port_or_known_default()?,
    ))
}

impl AddressPolicy {
    /// A policy that allows the internal networks in `allow`.
    pub fn new(allow: Vec<IpNet>) -> AddressPolicy {
        AddressPolicy {
            allow,
            trusted: ArcSwap::default(),
        }
    }

    /// Sets the operator's mirror URLs (replacing the previous set, after a reload).
    pub fn set_trusted<'a>(&self, urls: impl IntoIterator<Item = &'a Url>) {
        let mut trusted = Trusted::default();
        for url in urls {
            if let Some(origin) = origin_of(url) {
                trusted.names.insert(origin.1.clone());
                trusted.origins.insert(origin);
            }
        }
        self.trusted.store(Arc::new(trusted));
    }

    /// Whether the operator allows connecting to `ip`.
    pub fn allows_ip(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        !is_internal(ip) || self.allow.iter().any(|net| net.contains(&ip))
    }

    /// Checks a URL the operator did not write (a redirect target, a geo-list line): http(s),
    /// and an IP literal must be allowed. Host names pass here and are checked when resolved.
    pub fn check_url(&self, url: &Url) -> Result<(), Refused> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Refused(format!("{}: not an http(s) URL", url.scheme())));
        }
        if let Some(origin) = origin_of(url)
            && self.trusted.load().origins.contains(&origin)
        {
            return Ok(());
        }
        let ip = match url.host() {
            Some(Host::Ipv4(v4)) => IpAddr::V4(v4),
            Some(Host::Ipv6(v6)) => IpAddr::V6(v6),
            Some(Host::Domain(_)) => return Ok(()),
            None => return Err(Refused("URL without a host".into())),
        };
        if self.allows_ip(ip) {
            Ok(())
        } else {
            Err(Refused(format!(
                "{ip} is an internal address (allow it with --allow-private-upstreams)"
            )))
        }
    }

    /// The addresses `host` resolved to (`found`) that the proxy may connect to: all of them
    /// for an operator's mirror host, else those [`AddressPolicy::allows_ip`] allows; refused
    /// when none is left of a non-empty list.
    pub fn connectable(
        &self,
        host: &str,
        found: Vec<SocketAddr>,
    ) -> Result<Vec<SocketAddr>, Refused> {
        if self.trusts_name(host) {
            return Ok(found);
        }
        let first = found.first().map(|a| a.ip());
        let allowed: Vec<SocketAddr> = found
            .into_iter()
            .filter(|a| self.allows_ip(a.ip()))
            .collect();
        match first {
            Some(first) if allowed.is_empty() => Err(Refused(format!(
                "{host} resolves to the internal address {first} (allow it with --allow-private-upstreams)"
            ))),
            _ => Ok(allowed),
        }
    }

    /// Whether `name` is the host of one of the operator's mirrors (resolved without checks).
    fn trusts_name(&self, name: &str) -> bool {
        self.trusted
            .load()
            .names
            .contains(&name.trim_end_matches('.').to_ascii_lowercase())
    }

    /// The redirect policy of the upstream clients: at most [`MAX_REDIRECTS`] hops, each to a
    /// URL that [`AddressPolicy::check_url`] accepts.
    pub fn redirects(self: &Arc<Self>) -> reqwest::redirect::Policy {
        let policy = self.clone();
        reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() > MAX_REDIRECTS {
                return attempt.error(Refused(format!("more than {MAX_REDIRECTS} redirects")));
            }
            match policy.check_url(attempt.url()) {
                Ok(()) => attempt.follow(),
                Err(refused) => {
                    let to = attempt.url().to_string();
                    attempt.error(Refused(format!("redirect to {to} refused: {refused}")))
                }
            }
        })
    }
}

/// A resolver that drops the addresses the policy refuses, for every name that is not one of
/// the operator's mirror hosts; a name left with no address fails to connect.
#[derive(Debug, Clone)]
pub struct GuardedResolver(pub Arc<AddressPolicy>);

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.0.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            match policy.connectable(&host, found) {
                Ok(allowed) => Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs),
                Err(refused) => Err(Box::new(refused) as Box<dyn std::error::Error + Send + Sync>),
            }
        })
    }
}

/// Whether an error's chain holds a policy refusal.
pub fn refusal<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a Refused> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = current {
        if let Some(r) = err.downcast_ref::<Refused>() {
            return Some(r);
        }
        current = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_in_every_spelling() {
        for internal in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "::10.0.0.1",
        ] {
            assert!(is_internal(internal.parse().unwrap()), "{internal}");
        }
        for public in ["8.8.8.8", "100.128.0.1", "2001:db8::1", "1.1.1.1"] {
            assert!(!is_internal(public.parse().unwrap()), "{public}");
        }
        let policy = AddressPolicy::new(vec!["192.168.0.0/16".parse().unwrap()]);
        for refused in [
            "http://127.0.0.1/x",
            "http://2130706433/x",
            "http://0x7f.1/x",
            "http://017700000001/x",
            "http://[::ffff:7f00:1]/x",
            "http://169.254.169.254/latest/meta-data/",
            "http://[fe80::1]/",
            "ftp://example.org/x",
        ] {
            let url = Url::parse(refused).unwrap();
            assert!(policy.check_url(&url).is_err(), "{refused}");
        }
        for allowed in [
            "http://192.168.1.10/debian/",
            "https://example.org/debian/",
            "http://localhost/x",
        ] {
            assert!(policy.check_url(&Url::parse(allowed).unwrap()).is_ok());
        }
        // A configured origin is exempt, exactly: not the same host on another port.
        let mirror = Url::parse("http://127.0.0.1:8080/debian/").unwrap();
        policy.set_trusted([&mirror]);
        assert!(
            policy
                .check_url(&Url::parse("http://127.0.0.1:8080/elsewhere").unwrap())
                .is_ok()
        );
        assert!(
            policy
                .check_url(&Url::parse("http://127.0.0.1:8081/x").unwrap())
                .is_err()
        );
    }

    #[tokio::test]
    async fn the_resolver_drops_internal_addresses_of_untrusted_names() {
        use reqwest::dns::Resolve;
        let policy = Arc::new(AddressPolicy::new(Vec::new()));
        let resolver = GuardedResolver(policy.clone());
        let err = resolver
            .resolve("localhost".parse().unwrap())
            .await
            .err()
            .expect("localhost refused");
        assert!(refusal(&*err).is_some(), "{err}");
        policy.set_trusted([&Url::parse("http://localhost:3142/debian/").unwrap()]);
        let addrs: Vec<_> = resolver
            .resolve("localhost".parse().unwrap())
            .await
            .unwrap()
            .collect();
        assert!(!addrs.is_empty());
    }
}
