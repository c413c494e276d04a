//! The status page in a real browser: a three-region federation (stand-ins
//! and `tern serve` processes, see `support/federation.rs`), one
//! coordinator's `/status` opened in headless Chromium (Debian's
//! `/usr/bin/chromium`, or `TERN_CHROMIUM`), driven over the DevTools
//! protocol. The page is read through its DOM (`data-region` /
//! `data-state` hooks), never by reloading it.
//!
//! Screenshots before and after the outage, and once stale, are written
//! to `target/status-page/` (paths printed).
//!
//! `scripts/test` installs Chromium when it is missing; without it this
//! test fails and says so (it does not skip).

mod support;

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use headless_chrome::protocol::cdp::types::Event;
use headless_chrome::protocol::cdp::{Emulation, Network, Page};
use headless_chrome::{Browser, LaunchOptions, Tab};
use support::federation::{Federation, FederationConfig};
use tern_tests::{wait_until, Check, Harness};

/// Where Chromium is looked for unless `TERN_CHROMIUM` names another one.
const DEFAULT_CHROMIUM: &str = "/usr/bin/chromium";

/// Bound for the page to show something the federation already is.
const SHOW: Duration = Duration::from_secs(30);

/// Browser window (width, height) in CSS pixels.
const WINDOW: (u32, u32) = (1280, 1000);

/// The Chromium binary, or a failure that says how to get one.
fn chromium() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("TERN_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CHROMIUM));
    if path.is_file() {
        return Ok(path);
    }
    bail!(
        "Chromium not found at {}: the status page test needs a headless Chromium. \
         `scripts/test` installs Debian's `chromium` package when it is missing \
         (as root: apt-get install chromium fonts-dejavu-core); or set TERN_CHROMIUM \
         to a Chromium or Chrome binary",
        path.display()
    )
}

/// `target/status-page/`, next to the `target/<profile>/` the test runs from.
fn screenshot_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let target = exe
        .ancestors()
        .find(|p| p.file_name().is_some_and(|n| n == "deps"))
        .and_then(|deps| deps.parent())
        .and_then(|profile| profile.parent())
        .ok_or_else(|| anyhow!("cannot find the target directory above {}", exe.display()))?;
    let dir = target.join("status-page");
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Whether this process runs as root (Chromium's sandbox refuses root).
fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Starts headless Chromium on a DevTools port it picks itself (port 0).
fn launch(h: &Harness) -> anyhow::Result<Browser> {
    let path = chromium()?;
    let args: Vec<&OsStr> = [
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-domain-reliability",
        "--no-default-browser-check",
        "--no-proxy-server",
        "--hide-scrollbars",
        "--mute-audio",
        "--lang=en-US",
    ]
    .iter()
    .map(OsStr::new)
    .collect();
    let options = LaunchOptions {
        headless: true,
        sandbox: !running_as_root(),
        enable_gpu: false,
        window_size: Some(WINDOW),
        port: Some(0),
        path: Some(path.clone()),
        user_data_dir: Some(h.path("chromium-profile")),
        idle_browser_timeout: Duration::from_secs(300),
        args,
        ..LaunchOptions::default()
    };
    Browser::new(options).with_context(|| format!("starting {}", path.display()))
}

/// Evaluates `expr` (which must produce a string) in the page.
fn eval_string(tab: &Tab, expr: &str) -> anyhow::Result<String> {
    let r = tab
        .evaluate(expr, false)
        .with_context(|| format!("evaluating {expr}"))?;
    match r.value {
        Some(serde_json::Value::String(s)) => Ok(s),
        other => bail!("{expr} gave {other:?}"),
    }
}

/// (region, data-state) of every row of the page's regions table.
fn page_regions(tab: &Tab) -> anyhow::Result<Vec<(String, String)>> {
    let json = eval_string(
        tab,
        "JSON.stringify(Array.from(document.querySelectorAll('#regions tr[data-region]'))\
         .map(function (r) { return [r.dataset.region, r.dataset.state]; }))",
    )?;
    Ok(serde_json::from_str(&json)?)
}

/// The refresh indicator's state: `live`, `stale` or `static`.
fn refresh_state(tab: &Tab) -> anyhow::Result<String> {
    eval_string(tab, "document.getElementById('refresh').dataset.refresh")
}

/// A PNG of the whole page: the viewport is stretched to the document's
/// height for the capture, then restored.
fn save_png(tab: &Tab, path: &PathBuf) -> anyhow::Result<()> {
    let height: u32 = eval_string(tab, "String(document.documentElement.scrollHeight)")?
        .parse()
        .context("document height")?;
    tab.call_method(Emulation::SetDeviceMetricsOverride {
        width: WINDOW.0,
        height: height.clamp(WINDOW.1, 4000),
        device_scale_factor: 1.0,
        mobile: false,
        scale: None,
        screen_width: None,
        screen_height: None,
        position_x: None,
        position_y: None,
        dont_set_visible_size: None,
        screen_orientation: None,
        viewport: None,
        display_feature: None,
        device_posture: None,
    })?;
    let png = tab.capture_screenshot(Page::CaptureScreenshotFormatOption::Png, None, None, true);
    tab.call_method(Emulation::ClearDeviceMetricsOverride(None))?;
    let png = png?;
    std::fs::write(path, &png)?;
    eprintln!(
        "[status_page] screenshot {} ({} KB)",
        path.display(),
        png.len() / 1024
    );
    Ok(())
}

/// A plain HTTP/1.1 GET: status code, header block (lower-cased), body.
fn get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String, String)> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("no header block in {text:?}"))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("no HTTP status in {head:?}"))?;
    Ok((code, head.to_ascii_lowercase(), body.to_string()))
}

// Property: the status page served by a coordinator shows, in a real
// browser, every region of a three-region federation as healthy; it loads
// nothing from any origin but that coordinator, and its inline style and
// script run under its own Content-Security-Policy (the style applies, the
// refresh script marks the page live). When one region's control plane
// goes down, the same page, without being reloaded (a marker set in the
// document survives), comes to show that region as unreachable by its own
// periodic refresh, while the other regions stay healthy. `/status.json`
// agrees and both endpoints send no-store, nosniff and the policy. When
// the coordinator behind the page dies, the page marks itself stale and
// keeps its last data. down_after is shortened to 3 s and the probe interval to 500 ms to keep
// the test short.
#[test]
fn status_page_follows_an_outage_without_reload() {
    Harness::run(
        "status_page",
        "status_page_follows_an_outage_without_reload",
        body,
    );
}

fn body(h: &Harness) -> anyhow::Result<()> {
    // Fail first, and clearly, when there is no browser.
    chromium()?;
    let shots = screenshot_dir()?;
    let fed = Federation::start(
        h,
        FederationConfig {
            probe_interval_ms: 500,
            probe_timeout_ms: Some(400),
            down_after_ms: 3_000,
            relays: false,
            ..FederationConfig::default()
        },
    )?;
    // Watch the page of a follower (its live view comes from the leader
    // over gRPC) and take down the third region's control plane.
    let leader = fed.wait_leader(SHOW)?;
    let viewer = (0..fed.len()).find(|i| *i != leader).unwrap_or(0);
    let down = (0..fed.len())
        .find(|i| *i != leader && *i != viewer)
        .unwrap_or(leader);
    let http = fed.nodes[viewer].http();
    let origin = format!("http://{http}");
    let url = format!("{origin}/status");
    eprintln!(
        "[status_page] leader {}, page of {} at {url}, outage of {}",
        fed.region(leader),
        fed.region(viewer),
        fed.region(down)
    );

    // The endpoints' headers and the JSON snapshot, outside the browser.
    for path in ["/status", "/status.json"] {
        let (code, head, _) = get(http, path)?;
        anyhow::ensure!(code == 200, "GET {path}: HTTP {code}");
        for want in [
            "cache-control: no-store",
            "x-content-type-options: nosniff",
            "content-security-policy: default-src 'none';",
        ] {
            anyhow::ensure!(head.contains(want), "GET {path}: no `{want}` in\n{head}");
        }
    }

    let browser = launch(h)?;
    let tab = browser.new_tab()?;
    // Every request the tab makes, from before the first navigation on.
    let requests: Arc<Mutex<Vec<String>>> = Arc::default();
    {
        let requests = requests.clone();
        tab.call_method(Network::Enable {
            max_total_buffer_size: None,
            max_resource_buffer_size: None,
            max_post_data_size: None,
            report_direct_socket_traffic: None,
            enable_durable_messages: None,
        })?;
        tab.add_event_listener(Arc::new(move |event: &Event| {
            if let Event::NetworkRequestWillBeSent(e) = event {
                if let Ok(mut r) = requests.lock() {
                    r.push(e.params.request.url.clone());
                }
            }
        }))?;
    }
    tab.navigate_to(&url)?.wait_until_navigated()?;

    let names: Vec<String> = (0..fed.len()).map(|i| fed.region(i).to_string()).collect();
    wait_until(
        "the page to show every region healthy, refreshing live",
        SHOW,
        Duration::from_millis(250),
        || -> anyhow::Result<Check<()>> {
            let rows = page_regions(&tab)?;
            let refresh = refresh_state(&tab)?;
            let all = rows.len() == names.len()
                && names
                    .iter()
                    .all(|n| rows.iter().any(|(r, s)| r == n && s == "healthy"));
            Ok(Check::ready_or(
                (all && refresh == "live").then_some(()),
                format!("rows {rows:?}, refresh {refresh}"),
            ))
        },
    )?;

    // The inline stylesheet applied (its hash is in the policy): a healthy
    // badge has its green background, not the default transparent one.
    let badge = eval_string(
        &tab,
        "getComputedStyle(document.querySelector('#regions .st-healthy')).backgroundColor",
    )?;
    anyhow::ensure!(
        badge == "rgb(233, 246, 236)",
        "the page's style did not apply (healthy badge background {badge})"
    );

    // Let at least one refresh go out (the first comes 2 s after load),
    // so that the origin check covers the script's requests too.
    wait_until(
        "the page's script to re-fetch /status",
        SHOW,
        Duration::from_millis(250),
        || -> anyhow::Result<Check<()>> {
            let r = requests.lock().map_err(|e| anyhow!("{e}"))?.clone();
            let n = r.iter().filter(|u| u.ends_with("/status")).count();
            Ok(Check::ready_or(
                (n >= 2).then_some(()),
                format!("requests {r:?}"),
            ))
        },
    )?;
    let mut seen: BTreeSet<String> = requests
        .lock()
        .map_err(|e| anyhow!("{e}"))?
        .iter()
        .cloned()
        .collect();
    let resources = eval_string(
        &tab,
        "JSON.stringify(performance.getEntriesByType('resource').map(function (e) { return e.name; }))",
    )?;
    seen.extend(serde_json::from_str::<Vec<String>>(&resources)?);
    let foreign: Vec<&String> = seen
        .iter()
        .filter(|u| !(u.as_str() == origin || u.starts_with(&format!("{origin}/"))))
        .collect();
    anyhow::ensure!(
        foreign.is_empty(),
        "the page requested other origins than {origin}: {foreign:?} (all: {seen:?})"
    );
    eprintln!(
        "[status_page] requests so far, all to {origin}: {:?}",
        seen.iter().collect::<Vec<_>>()
    );
    // No rotation was started: the page says so from the replicated state.
    let rotating = eval_string(
        &tab,
        "document.getElementById('rotation').dataset.inProgress",
    )?;
    anyhow::ensure!(
        rotating == "0",
        "rotations in progress on the page: {rotating}"
    );
    save_png(&tab, &shots.join("before.png"))?;

    // A marker in the document: a reload would drop it.
    eval_string(&tab, "window.ternMarker = 'kept'; window.ternMarker")?;
    let t0 = Instant::now();
    fed.plane_down(down)?;
    let target = fed.region(down).to_string();
    let rows = wait_until(
        &format!("the page to show {target} unreachable by itself"),
        Duration::from_millis(fed.config.down_after_ms) + Duration::from_secs(60),
        Duration::from_millis(250),
        || -> anyhow::Result<Check<Vec<(String, String)>>> {
            let rows = page_regions(&tab)?;
            let hit = rows.iter().any(|(r, s)| *r == target && s == "unreachable");
            Ok(Check::ready_or(
                hit.then(|| rows.clone()),
                format!("rows {rows:?}"),
            ))
        },
    )?;
    eprintln!(
        "[status_page] page shows {target} unreachable {:.1}s after its control plane went down",
        t0.elapsed().as_secs_f64()
    );
    anyhow::ensure!(
        eval_string(&tab, "String(window.ternMarker)")? == "kept",
        "the page was reloaded (the marker is gone)"
    );
    anyhow::ensure!(
        refresh_state(&tab)? == "live",
        "the refresh indicator is not live"
    );
    for (r, s) in &rows {
        anyhow::ensure!(
            *r == target || s == "healthy",
            "region {r} is {s} on the page during the outage of {target}: {rows:?}"
        );
    }
    // The matrix: the other regions' observers see the control plane down.
    let sees = eval_string(
        &tab,
        &format!(
            "JSON.stringify(Array.from(document.querySelectorAll('#matrix td[data-region=\"{target}\"]'))\
             .map(function (c) {{ return c.dataset.sees; }}).filter(function (s) {{ return s; }}))"
        ),
    )?;
    let sees: Vec<String> = serde_json::from_str(&sees)?;
    anyhow::ensure!(
        sees.iter().filter(|s| *s == "down").count() >= 2,
        "the matrix does not show {target} seen down by the other regions: {sees:?}"
    );
    save_png(&tab, &shots.join("after.png"))?;

    // The JSON snapshot agrees.
    let (_, _, json) = get(http, "/status.json")?;
    let v: serde_json::Value = serde_json::from_str(&json).context("parsing /status.json")?;
    let state = v["regions"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["region"] == target.as_str()))
        .map(|r| r["state"].clone());
    anyhow::ensure!(
        state == Some(serde_json::Value::from("unreachable")),
        "/status.json says {target} is {state:?}"
    );

    // The coordinator behind the page goes away: the page says it is stale
    // and keeps showing the last data it had.
    fed.kill(viewer);
    wait_until(
        "the page to mark itself stale",
        SHOW,
        Duration::from_millis(250),
        || -> anyhow::Result<Check<()>> {
            let refresh = refresh_state(&tab)?;
            Ok(Check::ready_or(
                (refresh == "stale").then_some(()),
                format!("refresh {refresh}"),
            ))
        },
    )?;
    let text = eval_string(&tab, "document.getElementById('refresh').textContent")?;
    anyhow::ensure!(text.starts_with("STALE"), "stale marker text: {text:?}");
    anyhow::ensure!(
        page_regions(&tab)? == rows,
        "the last data should stay on the page while stale"
    );
    save_png(&tab, &shots.join("stale.png"))?;
    Ok(())
}
