//! The official mirror lists shipped as data (`data/mirrors/*.list`, made by
//! `scripts/mirror-lists.sh`): a forward-proxy request naming any of these mirrors, under the
//! tree's path there, is served from the cache and the proxy's own mirrors, pinned or not.

const DEBIAN: &str = include_str!("../../data/mirrors/debian.list");
const UBUNTU: &str = include_str!("../../data/mirrors/ubuntu.list");
const UBUNTU_PORTS: &str = include_str!("../../data/mirrors/ubuntu-ports.list");

/// The listed `(host, path)` prefixes of built-in tree `tree` (path starts and ends with `/`).
/// A Debian mirror's `…/debian/` also carries `…/debian-security/`.
pub(super) fn shipped(tree: &str) -> Vec<(&'static str, String)> {
    let (list, sibling) = match tree {
        "debian" => (DEBIAN, None),
        "debian-security" => (DEBIAN, Some("debian-security")),
        "ubuntu" => (UBUNTU, None),
        "ubuntu-ports" => (UBUNTU_PORTS, None),
        _ => return Vec::new(),
    };
    list.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|line| {
            let (host, path) = line.split_once('/')?;
            let path = format!("/{path}");
            match sibling {
                None => Some((host, path)),
                Some(sibling) => {
                    let parent = path.strip_suffix("debian/")?;
                    Some((host, format!("{parent}{sibling}/")))
                }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_well_formed_and_large() {
        for (tree, at_least) in [
            ("debian", 400),
            ("debian-security", 300),
            ("ubuntu", 500),
            ("ubuntu-ports", 10),
        ] {
            let entries = shipped(tree);
            assert!(entries.len() >= at_least, "{tree}: {}", entries.len());
            for (host, path) in &entries {
                assert!(
                    !host.is_empty()
                        && host.chars().all(|c| c.is_ascii_lowercase()
                            || c.is_ascii_digit()
                            || ".-".contains(c)),
                    "{tree}: {host}"
                );
                assert!(
                    path.starts_with('/') && path.ends_with('/'),
                    "{tree}: {path}"
                );
            }
        }
        assert!(
            shipped("debian-security")
                .iter()
                .all(|(_, p)| p.ends_with("/debian-security/"))
        );
        assert!(shipped("alpine").is_empty());
    }
}
