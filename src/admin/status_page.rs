//! `GET /`: a status page for people. Plain HTML with inline CSS, no script and no external
//! asset, readable on a phone, refreshing itself every 10 seconds.

use std::fmt::Write;

use crate::server::AppState;
use crate::telemetry::metrics::DistroLabel;
use crate::telemetry::traffic::Totals;
use crate::units::human_duration as duration;
use crate::units::human_size as human;
use crate::unix_now;

/// Escapes text for HTML (request targets come from clients).
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

const STYLE: &str = r#"
:root{--bg:#f6f7f9;--card:#fff;--fg:#1d2330;--muted:#677085;--line:#e3e6ec;--ok:#1f8a4c;--bad:#c0392b;--accent:#3b5bdb}
@media (prefers-color-scheme:dark){:root{--bg:#12151c;--card:#1b2030;--fg:#e8ebf2;--muted:#9aa3b5;--line:#2a3145;--accent:#7b93ff}}
*{box-sizing:border-box}body{margin:0;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;background:var(--bg);color:var(--fg)}
main{max-width:1100px;margin:0 auto;padding:16px}
header{display:flex;flex-wrap:wrap;align-items:baseline;gap:8px 16px;margin-bottom:16px}
h1{font-size:22px;margin:0}h2{font-size:16px;margin:24px 0 8px}.muted{color:var(--muted)}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(160px,1fr));gap:12px}
.card{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:12px 14px}
.card .label{color:var(--muted);font-size:13px}.card .value{font-size:24px;font-weight:600;margin-top:2px}
.bar{height:8px;border-radius:4px;background:var(--line);overflow:hidden;margin-top:8px}.bar>span{display:block;height:100%;background:var(--accent)}
.table{overflow-x:auto;background:var(--card);border:1px solid var(--line);border-radius:10px}
table{border-collapse:collapse;width:100%;font-size:14px}th,td{text-align:left;padding:7px 10px;border-bottom:1px solid var(--line);white-space:nowrap}
th{color:var(--muted);font-weight:500}tr:last-child td{border-bottom:0}td.path{white-space:normal;word-break:break-all;min-width:220px}
.ok{color:var(--ok)}.bad{color:var(--bad)}code{font-size:13px}
.setup{display:grid;grid-template-columns:repeat(auto-fit,minmax(300px,1fr));gap:12px}
pre{margin:6px 0 0;padding:8px;background:var(--bg);border-radius:6px;font-size:12.5px;white-space:pre-wrap;word-break:break-all}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(320px,1fr));gap:12px}
svg{display:block;width:100%;height:160px;margin-top:8px;background:var(--bg);border-radius:6px}
.cache,.key-cache{fill:var(--ok);color:var(--ok)}.upstream,.key-upstream{fill:var(--accent);color:var(--accent)}.midline{stroke:var(--line)}
.legend{display:flex;flex-wrap:wrap;gap:4px 12px;margin-top:6px;font-size:13px}.legend i{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:4px}
.axis{display:flex;justify-content:space-between;font-size:12px}
"#;

/// Gives the traffic history the counters as they are now; returns the bytes served from the
/// cache and fetched from mirrors since start.
pub fn sample_traffic(state: &AppState) -> (u64, u64) {
    let metrics = state.cache.metrics();
    let (cache_bytes, upstream_bytes) = (
        metrics.bytes_from_cache.get(),
        metrics.bytes_from_upstream.get(),
    );
    let requests = state
        .reloader
        .registry
        .load()
        .repos()
        .iter()
        .map(|repo| {
            let label = DistroLabel {
                distro: repo.id.clone(),
            };
            let n = metrics.cache_hits.get_or_create(&label).get()
                + metrics.cache_misses.get_or_create(&label).get();
            (repo.id.clone(), n)
        })
        .collect();
    let totals = Totals {
        requests,
        all_requests: state.requests.load(std::sync::atomic::Ordering::Relaxed),
        cache_bytes,
        upstream_bytes,
    };
    state.traffic.sample(totals, unix_now());
    (cache_bytes, upstream_bytes)
}

/// The address clients should use: `host` as the browser sent it (Host header or the
/// absolute-form authority) when it is a plain `name[:port]`, else a placeholder.
fn client_address(state: &AppState, host: Option<&str>) -> String {
    let plain = |h: &&str| {
        !h.is_empty()
            && h.len() <= 255
            && h.chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-:[]_".contains(c))
    };
    match host.filter(plain) {
        Some(h) if h.contains(':') && !h.ends_with(']') => h.to_string(),
        Some(h) => format!("{h}:{}", state.port),
        None => format!("apt-proxy-host:{}", state.port),
    }
}

/// Copy-paste set-up for each client, using `address`.
fn setup_section(page: &mut String, address: &str, tls: bool) {
    let scheme = if tls { "https" } else { "http" };
    let url = esc(&format!("{scheme}://{address}"));
    let _ = write!(
        page,
        r#"<h2>Set up a client</h2><div class="setup">
<div class="card"><div class="label">APT, as a proxy (sources stay as they are)</div><pre id="setup-apt-proxy">echo 'Acquire::http::Proxy "{url}/";' | sudo tee /etc/apt/apt.conf.d/01apt-proxy</pre></div>
<div class="card"><div class="label">APT, path form (in sources.list)</div><pre id="setup-apt-path">deb {url}/debian bookworm main
deb {url}/ubuntu noble main</pre></div>
<div class="card"><div class="label">DNF / YUM</div><pre id="setup-dnf">echo 'proxy={url}/' | sudo tee -a /etc/dnf/dnf.conf   # yum: /etc/yum.conf</pre></div>
<div class="card"><div class="label">APK (Alpine)</div><pre id="setup-apk">sed -i 's#^https\?://[^/]*/alpine/#{url}/alpine/#' /etc/apk/repositories</pre></div>
<div class="card"><div class="label">Docker builds</div><pre id="setup-docker">docker build --build-arg http_proxy={url} .</pre></div>
</div>"#
    );
}

/// Colours for the repos in the request chart, in order.
const PALETTE: &[&str] = &[
    "#3b5bdb", "#1f8a4c", "#e67700", "#ae3ec9", "#0c8599", "#c2255c", "#5c940d", "#868e96",
];

/// The traffic charts: requests per five minutes by repo, and bytes from cache and mirrors.
fn charts_section(page: &mut String, state: &AppState, now: u64) {
    use crate::telemetry::traffic::{BUCKET_SECS, BUCKETS};
    let history = state.traffic.history(now);
    // Repos in the order they first appear, for stable colours.
    let mut repos: Vec<&str> = Vec::new();
    for b in &history {
        for (r, _) in &b.requests {
            if !repos.contains(&r.as_str()) {
                repos.push(r);
            }
        }
    }
    let label = |repo: &str| {
        if repo == "-" {
            "other (pages, API, probes)".to_string()
        } else {
            repo.to_string()
        }
    };
    let colour = |repo: &str| {
        let i = repos.iter().position(|r| *r == repo).unwrap_or(0);
        PALETTE[i % PALETTE.len()]
    };
    let (w, h) = (720.0_f64, 160.0_f64);
    let slot = w / BUCKETS as f64;
    let hours = BUCKETS as u64 * BUCKET_SECS / 3600;
    page.push_str(r#"<h2>Traffic, last hours</h2><div class="charts">"#);

    // Requests, stacked by repo.
    let max_requests = history
        .iter()
        .map(|b| b.requests.iter().map(|(_, n)| n).sum::<u64>())
        .max()
        .unwrap_or(0)
        .max(1);
    let _ = write!(
        page,
        r#"<div class="card"><div class="label">Requests per 5 minutes, by repository (peak {max_requests})</div><svg id="chart-requests" viewBox="0 0 {w} {h}" preserveAspectRatio="none" role="img" aria-label="requests per 5 minutes over the last {hours} hours">"#
    );
    for (i, b) in history.iter().enumerate() {
        let mut y = h;
        for (repo, n) in &b.requests {
            let bar = *n as f64 / max_requests as f64 * (h - 4.0);
            y -= bar;
            let _ = write!(
                page,
                r#"<rect class="b" x="{x:.1}" y="{y:.1}" width="{bw:.1}" height="{bar:.1}" fill="{c}"><title>{repo}: {n}</title></rect>"#,
                x = i as f64 * slot + 0.5,
                bw = (slot - 1.0).max(0.5),
                c = colour(repo),
                repo = esc(&label(repo)),
            );
        }
    }
    page.push_str(r#"</svg><div class="legend muted">"#);
    for repo in &repos {
        let _ = write!(
            page,
            r#"<span><i style="background:{}"></i>{}</span>"#,
            colour(repo),
            esc(&label(repo))
        );
    }
    if repos.is_empty() {
        page.push_str("no requests yet");
    }
    let _ = write!(
        page,
        r#"</div><div class="axis muted"><span>{hours} h ago</span><span>now</span></div></div>"#
    );

    // Bytes: from the cache above the line, from mirrors below it.
    let max_bytes = history
        .iter()
        .map(|b| b.cache_bytes.max(b.upstream_bytes))
        .max()
        .unwrap_or(0)
        .max(1);
    let mid = h / 2.0;
    let _ = write!(
        page,
        r#"<div class="card"><div class="label">Bytes per 5 minutes: <span class="key-cache">served from cache</span> above, <span class="key-upstream">fetched from mirrors</span> below (peak {peak})</div><svg id="chart-bytes" viewBox="0 0 {w} {h}" preserveAspectRatio="none" role="img" aria-label="bytes served from cache and fetched from mirrors over the last {hours} hours"><line x1="0" y1="{mid}" x2="{w}" y2="{mid}" class="midline"/>"#,
        peak = human(max_bytes),
    );
    for (i, b) in history.iter().enumerate() {
        let x = i as f64 * slot + 0.5;
        let bw = (slot - 1.0).max(0.5);
        if b.cache_bytes > 0 {
            let bar = b.cache_bytes as f64 / max_bytes as f64 * (mid - 2.0);
            let _ = write!(
                page,
                r#"<rect class="b cache" x="{x:.1}" y="{y:.1}" width="{bw:.1}" height="{bar:.1}"><title>from cache: {v}</title></rect>"#,
                y = mid - bar,
                v = human(b.cache_bytes),
            );
        }
        if b.upstream_bytes > 0 {
            let bar = b.upstream_bytes as f64 / max_bytes as f64 * (mid - 2.0);
            let _ = write!(
                page,
                r#"<rect class="b upstream" x="{x:.1}" y="{mid}" width="{bw:.1}" height="{bar:.1}"><title>from mirrors: {v}</title></rect>"#,
                v = human(b.upstream_bytes),
            );
        }
    }
    let _ = write!(
        page,
        r#"</svg><div class="axis muted"><span>{hours} h ago</span><span>now</span></div></div></div>"#
    );
}

/// Renders the page; `host` is the address the browser used.
pub fn render(state: &AppState, host: Option<&str>) -> String {
    let (from_cache, from_upstream) = sample_traffic(state);
    let stats = state.cache.stats();
    let total_served = from_cache + from_upstream;
    let saved_pct = if total_served == 0 {
        0.0
    } else {
        from_cache as f64 * 100.0 / total_served as f64
    };
    let hit_pct = stats.hit_rate * 100.0;
    let uptime = state.started.elapsed().as_secs();
    let now = unix_now();

    let mut page = String::with_capacity(16 * 1024);
    let _ = write!(
        page,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1"><meta http-equiv="refresh" content="10"><title>apt-proxy</title><style>{STYLE}</style></head><body><main>
<header><h1>apt-proxy</h1><span class="muted">version {version} · up <span id="uptime">{uptime}</span> · {requests} requests · cache index {index}</span></header>
<section class="cards">
<div class="card"><div class="label">Cache size</div><div class="value" id="cache-size">{size}</div><div class="muted"><span id="items">{items}</span> files, {stale} due for a check</div></div>
<div class="card"><div class="label">Hit rate</div><div class="value" id="hit-rate">{hit_pct:.1}%</div><div class="muted">hits <span id="hits">{hits}</span> · misses <span id="misses">{misses}</span></div><div class="bar"><span style="width:{hit_pct:.1}%"></span></div></div>
<div class="card"><div class="label">Served from cache</div><div class="value" id="bytes-cache">{cache_h}</div><div class="muted">bandwidth saved: <span id="saved">{saved_pct:.1}%</span> of {served_h}</div><div class="bar"><span style="width:{saved_pct:.1}%"></span></div></div>
<div class="card"><div class="label">Fetched from mirrors</div><div class="value" id="bytes-upstream">{upstream_h}</div><div class="muted">since start</div></div>
</section>
"#,
        version = esc(crate::VERSION),
        uptime = duration(uptime),
        requests = state.requests.load(std::sync::atomic::Ordering::Relaxed),
        index = if state.cache.index_loaded() {
            "loaded"
        } else {
            "loading"
        },
        size = esc(&stats.total_size_human),
        items = stats.item_count,
        stale = stats.stale_count,
        hits = stats.hit_count,
        misses = stats.miss_count,
        cache_h = human(from_cache),
        upstream_h = human(from_upstream),
        served_h = human(total_served),
    );

    setup_section(&mut page, &client_address(state, host), state.tls);
    charts_section(&mut page, state, now);

    let health = state.cache.mirror_health();
    page.push_str(r#"<h2>Distributions</h2><div class="table"><table><tr><th>Path</th><th>Distribution</th><th>Mirror</th><th>Mirror status</th></tr>"#);
    // One registry for both tables, even if a reload lands meanwhile.
    let registry = state.reloader.registry.load();
    for repo in registry.repos() {
        let status = match health.get(&repo.id) {
            Some(h) if h.ok => format!(
                r#"<span class="ok">ok</span> <span class="muted">{} ago</span>"#,
                duration(now.saturating_sub(h.at))
            ),
            Some(h) => format!(
                r#"<span class="bad">{}</span> <span class="muted">{} ago</span>"#,
                esc(h.error.as_deref().unwrap_or("error")),
                duration(now.saturating_sub(h.at))
            ),
            None => r#"<span class="muted">not used yet</span>"#.to_string(),
        };
        let _ = write!(
            page,
            r#"<tr class="repo"><td><code>/{id}/</code></td><td>{name}</td><td><code>{mirror}</code>{pinned}</td><td>{status}</td></tr>"#,
            id = esc(&repo.id),
            name = esc(&repo.distro_name),
            mirror = esc(repo.mirror_set.current().base.as_str()),
            pinned = if repo.pinned() {
                r#" <span class="muted">(pinned)</span>"#
            } else {
                ""
            },
        );
    }
    page.push_str("</table></div>");
    mirrors_table(&mut page, registry.repos(), now);

    page.push_str(r#"<h2>Recent requests</h2><div class="table"><table><tr><th>When</th><th>Request</th><th>Status</th><th>Cache</th><th>Size</th><th>Time</th></tr>"#);
    let recent = state.activity.snapshot();
    if recent.is_empty() {
        page.push_str(r#"<tr><td colspan="6" class="muted">No requests yet.</td></tr>"#);
    }
    for a in recent {
        let class = if a.status >= 400 { "bad" } else { "" };
        let _ = write!(
            page,
            r#"<tr class="activity"><td class="muted">{ago} ago</td><td class="path">{method} {target}</td><td class="{class}">{status}</td><td>{cache}</td><td>{size}</td><td>{ms:.1} ms</td></tr>"#,
            ago = duration(now.saturating_sub(a.at)),
            method = esc(a.method.as_str()),
            target = esc(&a.target),
            status = a.status,
            cache = esc(&a.cache),
            size = a.bytes.map(human).unwrap_or_else(|| "-".into()),
            ms = a.ms,
        );
    }
    page.push_str(r#"</table></div><p class="muted">Refreshes every 10 seconds · <a href="/metrics">metrics</a> · <a href="/healthz">health</a></p></main></body></html>"#);
    page
}

/// Each repo's mirrors in the order requests try them, with health and the last benchmark.
fn mirrors_table(page: &mut String, repos: &[std::sync::Arc<crate::distro::Repo>], now: u64) {
    page.push_str(r#"<h2>Mirrors</h2><div class="table"><table><tr><th>Path</th><th>#</th><th>Mirror</th><th>Health</th><th>Speed</th><th>Latency</th></tr>"#);
    for repo in repos {
        let view = repo.mirror_set.view();
        let ranking = match (&view.last_benchmark, view.benchmarking, view.pinned) {
            (_, _, true) => "pinned, in the order given".to_string(),
            (_, true, _) => "benchmark running".to_string(),
            (Some(r), _, _) => match (r.finished_at, &r.error) {
                (_, Some(e)) => format!("last benchmark: {e}"),
                (Some(at), None) => format!(
                    "ranked {} ago ({} probed, {} left out)",
                    duration(now.saturating_sub(at)),
                    r.probed,
                    r.dropped.len()
                ),
                (None, None) => String::new(),
            },
            (None, false, false) if repo.mirror_set.is_benchmarked() => {
                "not benchmarked yet".to_string()
            }
            (None, false, false) => "configuration order".to_string(),
        };
        for m in &view.mirrors {
            let error = esc(m.last_error.as_deref().unwrap_or(""));
            let health = match (m.state, m.demoted_for_secs) {
                ("demoted", Some(secs)) => format!(
                    r#"<span class="bad">demoted {}</span> <span class="muted">{error}</span>"#,
                    duration(secs)
                ),
                ("recovering", _) => format!(
                    r#"<span class="bad">recovering</span> <span class="muted">{error}</span>"#
                ),
                _ if m.last_success.is_some() => r#"<span class="ok">ok</span>"#.into(),
                _ => r#"<span class="muted">not used yet</span>"#.into(),
            };
            let (speed, latency) = match &m.measure {
                Some(x) => (
                    format!("{}/s", human(x.bytes_per_sec)),
                    format!("{} ms", x.latency_ms),
                ),
                None => ("-".into(), "-".into()),
            };
            let _ = write!(
                page,
                r#"<tr class="mirror"><td><code>/{id}/</code>{note}</td><td>{rank}</td><td><code>{url}</code></td><td>{health}</td><td>{speed}</td><td>{latency}</td></tr>"#,
                id = esc(&repo.id),
                note = if m.rank == 1 {
                    format!(r#" <span class="muted">{}</span>"#, esc(&ranking))
                } else {
                    String::new()
                },
                rank = m.rank,
                url = esc(&m.url),
            );
        }
    }
    page.push_str("</table></div>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_and_durations() {
        assert_eq!(
            esc("<a href='x'>&\"</a>"),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&lt;/a&gt;"
        );
        assert_eq!(duration(59), "59s");
        assert_eq!(duration(3661), "1h 1m");
        assert_eq!(duration(90_000), "1d 1h");
    }
}
