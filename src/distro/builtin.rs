//! The distributions apt-proxy knows without any configuration file.
//!
//! Host names here are the distributions' own official hosts (used to recognise forward-proxy
//! requests) and the public mirrors the `cn:` shortcuts of the interface we keep refer to.

/// One upstream tree of a distribution as written in the built-in table.
pub(super) struct RepoDef {
    /// Path prefix id, e.g. `debian-security`.
    pub id: &'static str,
    /// Path of this tree on a mirror, e.g. `/debian-security/`.
    pub mirror_path: &'static str,
    /// Host patterns (`*.example.org` matches every sub-domain) that clients name in
    /// forward-proxy requests for this tree; the tree lives under `mirror_path` there.
    pub official_hosts: &'static [&'static str],
    /// The default upstream when no mirror is pinned.
    pub default_upstream: &'static str,
    /// For a secondary tree: how to derive its mirror URL from the distribution's mirror URL
    /// (the last path segment is replaced by this one).
    pub sibling_of_mirror: Option<&'static str>,
}

/// A built-in distribution.
pub(super) struct DistroDef {
    pub id: &'static str,
    pub name: &'static str,
    /// Type number of the interface we keep.
    pub kind: u8,
    /// Path probed when benchmarking mirrors.
    pub benchmark_url: &'static str,
    /// List of geo-located mirrors, if the distribution publishes one.
    pub geo_mirror_api: Option<&'static str>,
    pub repos: &'static [RepoDef],
}

/// Public mirror hosts that carry every built-in distribution under `/<distro-id>/`; each gives
/// an automatic `cn:<name>` shortcut.
pub(super) const CN_MIRROR_HOSTS: &[&str] = &[
    "mirrors.tuna.tsinghua.edu.cn",
    "mirrors.ustc.edu.cn",
    "mirrors.163.com",
    "mirrors.aliyun.com",
    "repo.huaweicloud.com",
    "mirrors.cloud.tencent.com",
];

pub(super) const DISTROS: &[DistroDef] = &[
    DistroDef {
        id: "ubuntu",
        name: "Ubuntu",
        kind: 1,
        benchmark_url: "dists/noble/main/binary-amd64/Release",
        geo_mirror_api: Some("http://mirrors.ubuntu.com/mirrors.txt"),
        repos: &[RepoDef {
            id: "ubuntu",
            mirror_path: "/ubuntu/",
            official_hosts: &[
                "archive.ubuntu.com",
                "*.archive.ubuntu.com",
                "security.ubuntu.com",
            ],
            default_upstream: "http://archive.ubuntu.com/ubuntu/",
            sibling_of_mirror: None,
        }],
    },
    DistroDef {
        id: "ubuntu-ports",
        name: "Ubuntu Ports",
        kind: 2,
        benchmark_url: "dists/noble/main/binary-arm64/Release",
        geo_mirror_api: None,
        repos: &[RepoDef {
            id: "ubuntu-ports",
            mirror_path: "/ubuntu-ports/",
            official_hosts: &["ports.ubuntu.com", "*.ports.ubuntu.com"],
            default_upstream: "http://ports.ubuntu.com/ubuntu-ports/",
            sibling_of_mirror: None,
        }],
    },
    DistroDef {
        id: "debian",
        name: "Debian",
        kind: 3,
        benchmark_url: "dists/bookworm/main/binary-amd64/Release",
        geo_mirror_api: None,
        repos: &[
            RepoDef {
                id: "debian",
                mirror_path: "/debian/",
                official_hosts: &["*.debian.org"],
                default_upstream: "http://ftp.debian.org/debian/",
                sibling_of_mirror: None,
            },
            RepoDef {
                id: "debian-security",
                mirror_path: "/debian-security/",
                official_hosts: &["*.debian.org"],
                default_upstream: "http://security.debian.org/debian-security/",
                sibling_of_mirror: Some("debian-security"),
            },
        ],
    },
    DistroDef {
        id: "centos",
        name: "CentOS",
        kind: 4,
        benchmark_url: "7/os/x86_64/repodata/repomd.xml",
        geo_mirror_api: None,
        repos: &[RepoDef {
            id: "centos",
            mirror_path: "/centos/",
            official_hosts: &["mirror.centos.org", "vault.centos.org"],
            default_upstream: "http://mirror.centos.org/centos/",
            sibling_of_mirror: None,
        }],
    },
    DistroDef {
        id: "alpine",
        name: "Alpine Linux",
        kind: 5,
        benchmark_url: "latest-stable/main/x86_64/APKINDEX.tar.gz",
        geo_mirror_api: None,
        repos: &[RepoDef {
            id: "alpine",
            mirror_path: "/alpine/",
            official_hosts: &["*.alpinelinux.org"],
            default_upstream: "http://dl-cdn.alpinelinux.org/alpine/",
            sibling_of_mirror: None,
        }],
    },
];
