//! Request URL -> repository and path inside it.
//!
//! Every URL form the proxy accepts goes through [`route`]: path-prefixed (`/debian/…`),
//! forward-proxy absolute URIs (`http://<mirror host>/debian/…`) and the apt-cacher-ng forms
//! (`/<host>/…`, `/HTTPS///<host>/…`, `http://HTTPS///<host>/…`). Anything that does not name a
//! known tree of a served distribution is refused: the proxy is never an open proxy, and the
//! host a client names is only used to pick the tree, never contacted.

use std::sync::Arc;

use http::Uri;
use percent_encoding::percent_decode_str;

use crate::distro::class::FileClass;
use crate::distro::{Registry, Repo};

/// Where a request goes: the repo and the path inside it, exactly as the client encoded it
/// (no leading `/`). The query string is dropped from packages and indexes (package managers
/// send none, and a query must not make a new cache entry, or a new download, of the same
/// file); it is kept on other files (a yum `mirrorlist?arch=…` answers by its query).
#[derive(Debug, Clone)]
pub struct RouteMatch {
    pub repo: Arc<Repo>,
    pub path: String,
}

/// Why a URL was refused. The message is safe to show to the client.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RouteError {
    #[error("no served distribution has the path prefix /{0}/")]
    UnknownPrefix(String),
    #[error("host {0} is not a known mirror of a served distribution")]
    ForeignHost(String),
    #[error("only http:// URIs can be proxied")]
    Scheme,
    #[error("path refused: {0}")]
    BadPath(&'static str),
    #[error("directory listings are not proxied")]
    Directory,
}

impl RouteError {
    /// The HTTP status for this refusal: 404 for names we do not have, 403 for what we refuse.
    pub fn status(&self) -> http::StatusCode {
        match self {
            RouteError::UnknownPrefix(_) | RouteError::Directory => http::StatusCode::NOT_FOUND,
            RouteError::ForeignHost(_) | RouteError::Scheme | RouteError::BadPath(_) => {
                http::StatusCode::FORBIDDEN
            }
        }
    }
}

/// Maps a request URI to a repo of `registry`.
pub fn route(registry: &Registry, uri: &Uri) -> Result<RouteMatch, RouteError> {
    let path_and_query = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let (repo, path) = match uri.authority() {
        Some(authority) => {
            if uri.scheme_str() != Some("http") {
                return Err(RouteError::Scheme);
            }
            match path_and_query.strip_prefix("///") {
                Some(rest) if authority.host().eq_ignore_ascii_case("https") => {
                    by_host_in_path(registry, rest)?
                }
                _ => {
                    let host = lowercase(authority.host());
                    registry
                        .by_host_path(&host, authority.port_u16(), path_and_query)
                        .ok_or_else(|| RouteError::ForeignHost(host.into_owned()))?
                }
            }
        }
        None => {
            let rest = path_and_query.strip_prefix('/').unwrap_or(path_and_query);
            if let Some(after) = rest.strip_prefix("HTTPS///") {
                by_host_in_path(registry, after)?
            } else {
                let (first, tail) = rest.split_once('/').unwrap_or((rest, ""));
                // The prefix id first: a url_pattern regex runs only when no id matches.
                if let Some(repo) = registry.by_id(first) {
                    (repo, tail)
                } else if let Some(found) = registry.by_pattern(path_and_query) {
                    found
                } else if first.contains('.') {
                    by_host_in_path(registry, rest)?
                } else {
                    return Err(RouteError::UnknownPrefix(first.chars().take(64).collect()));
                }
            }
        }
    };
    let path = match check_path(path)? {
        Some(query) if !answers_by_query(&path[..query]) => &path[..query],
        _ => path,
    };
    Ok(RouteMatch {
        repo: repo.clone(),
        path: path.to_string(),
    })
}

/// Whether a file's answer depends on its query string: yum's `mirrorlist` and `metalink`, and
/// files that are neither packages nor indexes.
fn answers_by_query(file: &str) -> bool {
    let name = file.rsplit('/').next().unwrap_or(file);
    matches!(name, "mirrorlist" | "metalink")
        || crate::distro::class::classify(file) == FileClass::Other
}

/// apt-cacher-ng style `<host>[:port]/<path>` carried inside the path.
fn by_host_in_path<'a>(
    registry: &'a Registry,
    text: &'a str,
) -> Result<(&'a Arc<Repo>, &'a str), RouteError> {
    let slash = text.find('/').ok_or(RouteError::Directory)?;
    let (hostport, path) = text.split_at(slash);
    let (host, port) = split_host_port(hostport).ok_or(RouteError::BadPath("malformed host"))?;
    let host = lowercase(host);
    registry
        .by_host_path(&host, port, path)
        .ok_or_else(|| RouteError::ForeignHost(host.into_owned()))
}

/// `host` in lower case, copied only when it has an upper-case letter.
fn lowercase(host: &str) -> std::borrow::Cow<'_, str> {
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(host.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(host)
    }
}

fn split_host_port(text: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if let Some(v6) = text.strip_prefix('[') {
        let (host, rest) = v6.split_once(']')?;
        (host, rest.strip_prefix(':'))
    } else {
        match text.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (text, None),
        }
    };
    if host.is_empty() {
        return None;
    }
    match port {
        Some(p) => Some((host, Some(p.parse().ok()?))),
        None => Some((host, None)),
    }
}

/// Refuses traversal and smuggling: `.`/`..` segments in any percent-encoding, encoded slashes
/// or backslashes, NUL, empty segments, and directory URLs.
/// Returns where the query string starts (its `?`), if there is one.
fn check_path(path: &str) -> Result<Option<usize>, RouteError> {
    // Byte loops: the paths are short, and `split` on a char costs more to set up per segment
    // than these cost in all.
    let bytes = path.as_bytes();
    let query = bytes.iter().position(|&b| b == b'?');
    let end = query.unwrap_or(bytes.len());
    if end == 0 || bytes[end - 1] == b'/' {
        return Err(RouteError::Directory);
    }
    let (mut start, mut escaped, mut raw_separator) = (0, false, false);
    for (i, &b) in bytes[..end].iter().enumerate() {
        match b {
            b'/' => {
                check_segment(&path[start..i], escaped, raw_separator)?;
                (start, escaped, raw_separator) = (i + 1, false, false);
            }
            b'%' => escaped = true,
            b'\\' | 0 => raw_separator = true,
            _ => {}
        }
    }
    check_segment(&path[start..end], escaped, raw_separator)?;
    Ok(query)
}

/// One segment of a path: not empty, not `.` or `..`, no separator, in any percent-encoding.
/// `escaped`: it holds a `%`; `raw_separator`: it holds a `\` or NUL as is.
fn check_segment(segment: &str, escaped: bool, raw_separator: bool) -> Result<(), RouteError> {
    if segment.is_empty() {
        return Err(RouteError::BadPath("empty path segment"));
    }
    // Most segments hold no escape: they are judged as they are.
    let decoded = if escaped {
        percent_decode_str(segment).decode_utf8_lossy()
    } else {
        std::borrow::Cow::Borrowed(segment)
    };
    if decoded == "." || decoded == ".." {
        return Err(RouteError::BadPath("dot segment"));
    }
    // Raw characters are in `decoded` too.
    if raw_separator || (escaped && decoded.contains(['/', '\\', '\0'])) {
        return Err(RouteError::BadPath("encoded separator"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distro::{MirrorPins, Mode};

    fn registry() -> Registry {
        let pins: MirrorPins = [(
            "debian".to_string(),
            "http://127.0.0.1:8080/debian/".to_string(),
        )]
        .into();
        Registry::builtin(Mode::All, &pins).unwrap()
    }

    #[test]
    fn path_checks_keep_their_order_and_skip_the_query() {
        // A directory is named as such before its segments are judged.
        assert_eq!(check_path("pool//x/"), Err(RouteError::Directory));
        assert_eq!(check_path("a/?x=1"), Err(RouteError::Directory));
        assert_eq!(check_path("?x=1"), Err(RouteError::Directory));
        assert_eq!(check_path(""), Err(RouteError::Directory));
        assert_eq!(
            check_path("pool//x"),
            Err(RouteError::BadPath("empty path segment"))
        );
        assert_eq!(
            check_path("/pool/x"),
            Err(RouteError::BadPath("empty path segment"))
        );
        assert_eq!(
            check_path("pool/../x"),
            Err(RouteError::BadPath("dot segment"))
        );
        assert_eq!(check_path(".."), Err(RouteError::BadPath("dot segment")));
        assert_eq!(
            check_path("pool/%2E"),
            Err(RouteError::BadPath("dot segment"))
        );
        for raw in ["pool/a\\b", "pool/a\0b", "pool/a%00b", "a%2F/x"] {
            assert_eq!(
                check_path(raw),
                Err(RouteError::BadPath("encoded separator")),
                "{raw}"
            );
        }
        // What follows `?` is not a path.
        assert_eq!(check_path("pool/x.deb?a=../b//c/"), Ok(Some(10)));
        assert_eq!(check_path("pool/x.deb"), Ok(None));
        assert_eq!(check_path("x"), Ok(None));
        assert_eq!(check_path("pool/%41.deb"), Ok(None));
    }

    fn ok(uri: &str) -> (String, String) {
        let m = route(&registry(), &uri.parse().unwrap()).unwrap_or_else(|e| panic!("{uri}: {e}"));
        (m.repo.id.clone(), m.path)
    }

    fn err(uri: &str) -> RouteError {
        route(&registry(), &uri.parse().unwrap()).expect_err(uri)
    }

    #[test]
    fn every_form_reaches_the_same_entry() {
        let want = ("debian".to_string(), "dists/stable/InRelease".to_string());
        for uri in [
            "/debian/dists/stable/InRelease",
            "http://ftp.debian.org/debian/dists/stable/InRelease",
            "http://127.0.0.1:8080/debian/dists/stable/InRelease",
            "/ftp.debian.org/debian/dists/stable/InRelease",
            "/HTTPS///ftp.debian.org/debian/dists/stable/InRelease",
            "http://HTTPS///ftp.debian.org/debian/dists/stable/InRelease",
            "/127.0.0.1:8080/debian/dists/stable/InRelease",
        ] {
            assert_eq!(ok(uri), want, "{uri}");
        }
    }

    #[test]
    fn security_is_its_own_tree() {
        assert_eq!(
            ok("/debian-security/dists/x/InRelease").0,
            "debian-security"
        );
        assert_eq!(
            ok("http://security.debian.org/debian-security/dists/x/InRelease").0,
            "debian-security"
        );
    }

    #[test]
    fn encoding_is_kept() {
        let (_, path) = ok("/debian/pool/main/e/erlang/erlang-doc_1%253a25.2.3_all.deb");
        assert_eq!(path, "pool/main/e/erlang/erlang-doc_1%253a25.2.3_all.deb");
        assert_eq!(
            ok("/centos/7/mirrorlist?arch=x86_64&repo=os").1,
            "7/mirrorlist?arch=x86_64&repo=os"
        );
        // Packages and indexes lose their query string.
        assert_eq!(
            ok("/debian/pool/main/a/a_1_all.deb?x=1").1,
            "pool/main/a/a_1_all.deb"
        );
        assert_eq!(
            ok("/debian/dists/stable/InRelease?nocache=2").1,
            "dists/stable/InRelease"
        );
    }

    #[test]
    fn refusals() {
        assert_eq!(
            err("/debian/../etc/passwd"),
            RouteError::BadPath("dot segment")
        );
        assert_eq!(
            err("/debian/pool/%2e%2e/x"),
            RouteError::BadPath("dot segment")
        );
        assert_eq!(
            err("/debian/pool/.%2E/x"),
            RouteError::BadPath("dot segment")
        );
        assert_eq!(
            err("/debian/pool/a%2fb"),
            RouteError::BadPath("encoded separator")
        );
        assert_eq!(
            err("/debian/pool/a%5cb"),
            RouteError::BadPath("encoded separator")
        );
        assert_eq!(
            err("/debian/pool//x"),
            RouteError::BadPath("empty path segment")
        );
        assert_eq!(err("/debian/pool/"), RouteError::Directory);
        assert_eq!(err("/fedora/x"), RouteError::UnknownPrefix("fedora".into()));
        assert_eq!(
            err("http://example.com/debian/x"),
            RouteError::ForeignHost("example.com".into())
        );
        assert_eq!(
            err("http://127.0.0.1/debian/x"),
            RouteError::ForeignHost("127.0.0.1".into())
        );
        assert_eq!(
            err("http://10.0.0.1:8080/debian/x"),
            RouteError::ForeignHost("10.0.0.1".into())
        );
        assert_eq!(
            err("http://ppa.launchpadcontent.net/ubuntu/x"),
            RouteError::ForeignHost("ppa.launchpadcontent.net".into())
        );
        assert_eq!(
            err("/example.com/debian/x"),
            RouteError::ForeignHost("example.com".into())
        );
        assert_eq!(err("https://ftp.debian.org/debian/x"), RouteError::Scheme);
    }
}
