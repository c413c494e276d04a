//! HTML rendering of a [`Snapshot`]. Every string that comes from the state
//! (region names, actors, summaries, addresses) goes through [`escape`];
//! the fixed markup around it is written here. Stable hooks for scripts and
//! tests: `id`s on sections and tables, `data-region` / `data-state` on
//! region rows, `data-observer` / `data-region` / `data-sees` on the cells
//! of the "who sees whom" matrix, `data-node` on member rows.

use std::fmt::Write as _;

use super::{AgentRegionRow, MemberRow, RegionRow, Snapshot, CSS, JS};

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A state or word reduced to `[a-z0-9_-]`, for class names.
fn class_word(s: &str) -> String {
    s.chars()
        .map(|c| c.to_ascii_lowercase())
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .collect()
}

/// `2026-01-31 23:59:59 UTC` inside a `<time>` element.
fn utc(ms: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000);
    match t {
        Ok(t) => {
            let fmt =
                time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
            let iso =
                time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
            match (t.format(&fmt), t.format(&iso)) {
                (Ok(text), Ok(iso)) => format!("<time datetime=\"{iso}\">{text} UTC</time>"),
                _ => format!("{ms}"),
            }
        }
        Err(_) => format!("{ms}"),
    }
}

/// A duration in ms, briefly: `850 ms`, `12 s`, `4 min`, `3 h`, `2 d`.
fn duration(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..120_000 => format!("{} s", ms / 1_000),
        120_000..7_200_000 => format!("{} min", ms / 60_000),
        7_200_000..172_800_000 => format!("{} h", ms / 3_600_000),
        _ => format!("{} d", ms / 86_400_000),
    }
}

const DASH: &str = "<span class=\"na\">&mdash;</span>";

/// The whole page.
pub fn render_page(s: &Snapshot) -> String {
    let mut o = String::with_capacity(16 * 1024);
    let region = escape(&s.coordinator.region);
    let _ = write!(
        o,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>Tern status: {region}</title>\n\
         <noscript><meta http-equiv=\"refresh\" content=\"5\"></noscript>\n\
         <style>{CSS}</style>\n</head>\n<body>\n<header>\n\
         <h1>Tern status <span class=\"sub\">coordinator {region}</span></h1>\n\
         <p id=\"refresh\" data-refresh=\"static\">\
         <span id=\"refresh-text\">Reloads every 5 s (scripts are off).</span></p>\n\
         </header>\n"
    );
    render_main(&mut o, s);
    let _ = write!(o, "<script>{JS}</script>\n</body>\n</html>\n");
    o
}

/// `<main id="status">`: the part the page's script swaps on refresh.
fn render_main(o: &mut String, s: &Snapshot) {
    let _ = write!(
        o,
        "<main id=\"status\" data-generated-at=\"{}\" data-epoch=\"{}\">\n\
         <p class=\"meta\">Last updated {} by coordinator {} (node {}, {}).</p>\n",
        s.generated_at_ms,
        s.federation.epoch,
        utc(s.generated_at_ms),
        escape(&s.coordinator.region),
        s.coordinator.node_id,
        escape(&s.coordinator.server_state),
    );
    federation(o, s);
    regions(o, s);
    matrix(o, s);
    members(o, s);
    agents(o, s);
    rotation(o, s);
    audit(o, s);
    o.push_str("</main>\n");
}

fn federation(o: &mut String, s: &Snapshot) {
    let f = &s.federation;
    o.push_str("<section id=\"federation\">\n<h2>Federation</h2>\n<div id=\"banners\">\n");
    let mut banners: Vec<(&str, &str, &str)> = Vec::new();
    if f.frozen {
        banners.push((
            "frozen",
            "bad",
            "FROZEN: too many regions look down at once; no region is declared \
             unreachable until that clears.",
        ));
    }
    if f.paused {
        banners.push((
            "paused",
            "warn",
            "PAUSED: automation is off (tern resume); states are computed and \
             shown, but nothing fails over or is handed back.",
        ));
    }
    if !f.live_view {
        banners.push((
            "no-live-view",
            "warn",
            "NO LIVE VIEW: the leader's observations are not available (no \
             leader known, or it did not answer); committed states only.",
        ));
    } else if !f.quorum_ok {
        banners.push((
            "no-quorum",
            "bad",
            "NO QUORUM: the leader hears fresh reports from too few \
             coordinators to decide anything.",
        ));
    }
    if banners.is_empty() {
        banners.push((
            "ok",
            "ok",
            "Automation running; the leader hears a quorum of fresh reports.",
        ));
    }
    for (id, class, text) in banners {
        let _ = writeln!(
            o,
            "<p class=\"banner {class}\" data-banner=\"{id}\">{text}</p>"
        );
    }
    o.push_str("</div>\n<dl class=\"facts\">\n");
    let leader = match (&f.leader_region, f.leader_id) {
        (Some(r), Some(id)) => format!("{} (node {id})", escape(r)),
        (None, Some(id)) => format!("node {id}"),
        _ => "<strong class=\"bad-text\">none known</strong>".into(),
    };
    let facts = [
        (
            "self",
            "This coordinator serves",
            format!(
                "{} (node {}, {})",
                escape(&s.coordinator.region),
                s.coordinator.node_id,
                escape(&s.coordinator.server_state)
            ),
        ),
        ("leader", "Leader", leader),
        ("term", "Term", f.term.to_string()),
        ("epoch", "Epoch", f.epoch.to_string()),
        (
            "indexes",
            "Commit / applied index",
            format!("{} / {}", f.commit_index, f.applied_index),
        ),
        (
            "automation",
            "Automation",
            if f.paused { "paused" } else { "running" }.into(),
        ),
        (
            "frozen",
            "Frozen",
            if f.frozen { "yes" } else { "no" }.into(),
        ),
        (
            "quorum",
            "Quorum of fresh reports",
            if !f.live_view {
                "unknown".into()
            } else if f.quorum_ok {
                "yes".into()
            } else {
                "no".into()
            },
        ),
    ];
    for (id, label, value) in facts {
        let _ = writeln!(o, "<dt>{label}</dt><dd id=\"fact-{id}\">{value}</dd>");
    }
    o.push_str("</dl>\n</section>\n");
}

fn state_badge(state: &str) -> String {
    format!(
        "<span class=\"st st-{}\">{}</span>",
        class_word(state),
        escape(state)
    )
}

fn regions(o: &mut String, s: &Snapshot) {
    o.push_str(
        "<section id=\"regions-section\">\n<h2>Regions</h2>\n\
         <table id=\"regions\">\n<thead><tr><th scope=\"col\">Region</th>\
         <th scope=\"col\">State</th><th scope=\"col\">Computed now</th>\
         <th scope=\"col\">Mode</th><th scope=\"col\">Since</th>\
         <th scope=\"col\">Epoch</th><th scope=\"col\">Own coordinator</th></tr></thead>\n<tbody>\n",
    );
    if s.regions.is_empty() {
        o.push_str("<tr><td colspan=\"7\">No region is known yet.</td></tr>\n");
    }
    for r in &s.regions {
        region_row(o, r, s.generated_at_ms);
    }
    o.push_str("</tbody>\n</table>\n</section>\n");
}

fn region_row(o: &mut String, r: &RegionRow, now: u64) {
    let name = escape(&r.region);
    let since = match r.since_ms {
        Some(ms) => format!(
            "{} <span class=\"ago\">({} ago)</span>",
            utc(ms),
            duration(now.saturating_sub(ms))
        ),
        None => "<span class=\"na\">never changed</span>".into(),
    };
    let computed = match &r.computed {
        Some(c) => state_badge(c),
        None => DASH.into(),
    };
    let mode = if r.mode == "auto" {
        escape(&r.mode)
    } else {
        format!("<strong class=\"mode\">{}</strong>", escape(&r.mode))
    };
    let _ = writeln!(
        o,
        "<tr data-region=\"{name}\" data-state=\"{}\" data-mode=\"{}\">\
         <th scope=\"row\">{name}</th><td data-field=\"state\">{}</td>\
         <td data-field=\"computed\">{computed}</td><td data-field=\"mode\">{mode}</td>\
         <td>{since}</td><td>{}</td><td>{}</td></tr>",
        escape(&r.state),
        escape(&r.mode),
        state_badge(&r.state),
        r.epoch,
        if r.coordinator_reporting {
            "reporting"
        } else {
            "<strong class=\"bad-text\">not reporting</strong>"
        },
    );
}

/// Observer rows × region columns; a cell is what that observer sees of
/// that region's control plane.
fn matrix(o: &mut String, s: &Snapshot) {
    o.push_str("<section id=\"matrix-section\">\n<h2>Who sees whom</h2>\n");
    // Observers in the order of their node ids.
    let mut observers: Vec<(u64, &str)> = s
        .regions
        .iter()
        .flat_map(|r| r.observers.iter())
        .map(|c| (c.observer_id, c.observer_region.as_str()))
        .collect();
    observers.sort_unstable();
    observers.dedup();
    if observers.is_empty() {
        o.push_str(
            "<p id=\"matrix-empty\">No observations: the leader's live view is not \
             available.</p>\n</section>\n",
        );
        return;
    }
    o.push_str(
        "<p class=\"note\">Each row is a coordinator observing; each column a \
         region's control plane. A region is judged by the other regions only \
         (a witness observes all).</p>\n<table id=\"matrix\">\n<thead><tr>\
         <th scope=\"col\">Observer \\ region</th>",
    );
    for r in &s.regions {
        let _ = write!(o, "<th scope=\"col\">{}</th>", escape(&r.region));
    }
    o.push_str("</tr></thead>\n<tbody>\n");
    for (id, obs_region) in observers {
        let obs = escape(obs_region);
        let _ = write!(
            o,
            "<tr data-observer=\"{obs}\" data-node=\"{id}\"><th scope=\"row\">{obs} \
             <span class=\"ago\">(node {id})</span></th>"
        );
        for r in &s.regions {
            let name = escape(&r.region);
            match r.observers.iter().find(|c| c.observer_id == id) {
                Some(c) => {
                    let sees = escape(&c.sees);
                    let age = match c.report_age_ms {
                        Some(ms) => {
                            format!(" <span class=\"ago\">(report {} old)</span>", duration(ms))
                        }
                        None => String::new(),
                    };
                    let _ = write!(
                        o,
                        "<td data-region=\"{name}\" data-sees=\"{sees}\">\
                         <span class=\"sees sees-{}\">{sees}</span>{age}</td>",
                        class_word(&c.sees)
                    );
                }
                None => {
                    let _ = write!(o, "<td data-region=\"{name}\" data-sees=\"\">{DASH}</td>");
                }
            }
        }
        o.push_str("</tr>\n");
    }
    o.push_str("</tbody>\n</table>\n</section>\n");
}

fn members(o: &mut String, s: &Snapshot) {
    o.push_str(
        "<section id=\"members-section\">\n<h2>Coordinators</h2>\n\
         <table id=\"members\">\n<thead><tr><th scope=\"col\">Node</th>\
         <th scope=\"col\">Region</th><th scope=\"col\">Role</th>\
         <th scope=\"col\">Address</th><th scope=\"col\">Pinned thumbprint</th>\
         <th scope=\"col\">Last contact</th><th scope=\"col\">Replication lag</th></tr></thead>\n<tbody>\n",
    );
    for m in &s.members {
        member_row(o, m);
    }
    o.push_str(
        "</tbody>\n</table>\n<p class=\"note\">Last contact and lag are as seen \
         by the coordinator that answered; the lag is known on the leader only.</p>\n\
         </section>\n",
    );
}

fn member_row(o: &mut String, m: &MemberRow) {
    let mut role = escape(&m.role);
    if m.voting != "voter" {
        let _ = write!(role, ", {}", escape(&m.voting));
    }
    if m.is_leader {
        role.push_str(", <strong>leader</strong>");
    }
    let pins = if m.thumbprints.is_empty() {
        DASH.to_string()
    } else {
        m.thumbprints
            .iter()
            .map(|t| short_pin(t))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let contact = if m.is_self {
        "<span class=\"na\">this coordinator</span>".to_string()
    } else {
        match m.last_contact_ms {
            Some(ms) => format!("{} ago", duration(ms)),
            None => DASH.into(),
        }
    };
    let lag = match m.replication_lag {
        Some(n) => format!("{n} entries"),
        None => DASH.into(),
    };
    let _ = writeln!(
        o,
        "<tr data-node=\"{}\" data-region=\"{}\"><td>{}</td><td>{}</td><td>{role}</td>\
         <td><code>{}</code></td><td>{pins}</td><td>{contact}</td><td>{lag}</td></tr>",
        m.node_id,
        escape(&m.region),
        m.node_id,
        escape(&m.region),
        escape(&m.address),
    );
}

fn agents(o: &mut String, s: &Snapshot) {
    let _ = write!(
        o,
        "<section id=\"agents-section\">\n<h2>Agents <span class=\"sub\">{} registered</span></h2>\n\
         <table id=\"agents\">\n<thead><tr><th scope=\"col\">Home region</th>\
         <th scope=\"col\">Agents</th><th scope=\"col\">Served at home</th>\
         <th scope=\"col\">Served elsewhere</th><th scope=\"col\">Not reported</th>\
         <th scope=\"col\">Redirected</th><th scope=\"col\">Stranded</th>\
         <th scope=\"col\">Returning</th><th scope=\"col\">Handovers in progress</th>\
         <th scope=\"col\">Hosting for others</th></tr></thead>\n<tbody>\n",
        s.agents.total
    );
    if s.agents.regions.is_empty() {
        o.push_str("<tr><td colspan=\"10\">No agent is registered.</td></tr>\n");
    }
    for a in &s.agents.regions {
        agent_row(o, a);
    }
    o.push_str(
        "</tbody>\n</table>\n<p class=\"note\">\"Served\" is where an agent last \
         reported being attached. <em>Handovers in progress</em> counts the \
         agents whose move is not yet confirmed by their own report: redirected \
         to a standby but still last reported at home (or never), plus returning \
         (handed back, still attached to the standby until home accepts them). \
         <em>Stranded</em>: home declared unreachable with no standby for them.</p>\n\
         </section>\n",
    );
}

fn agent_row(o: &mut String, a: &AgentRegionRow) {
    let name = escape(&a.region);
    let cell = |field: &str, n: u64, alert: bool| {
        let class = if alert && n > 0 {
            " class=\"warn-text\""
        } else {
            ""
        };
        format!("<td data-field=\"{field}\"{class}>{n}</td>")
    };
    let _ = writeln!(
        o,
        "<tr data-region=\"{name}\"><th scope=\"row\">{name}</th>{}{}{}{}{}{}{}{}{}</tr>",
        cell("home_total", a.home_total, false),
        cell("serving_home", a.serving_home, false),
        cell("serving_elsewhere", a.serving_elsewhere, false),
        cell("not_reported", a.not_reported, false),
        cell("redirected", a.redirected, false),
        cell("stranded", a.stranded, true),
        cell("returning", a.returning, false),
        cell("handovers_in_progress", a.handovers_in_progress, true),
        cell("hosting", a.hosting, false),
    );
}

fn short_pin(t: &str) -> String {
    if t.is_empty() {
        return DASH.into();
    }
    let short: String = t.chars().take(12).collect();
    format!(
        "<code title=\"{}\">{}&hellip;</code>",
        escape(t),
        escape(&short)
    )
}

fn rotation(o: &mut String, s: &Snapshot) {
    let r = &s.rotation;
    let headline = match r.in_progress {
        0 => "No rotation in progress.".to_string(),
        1 => "1 rotation in progress.".to_string(),
        n => format!("{n} rotations in progress."),
    };
    let _ = write!(
        o,
        "<section id=\"rotation-section\">\n<h2>Pin rotations</h2>\n\
         <p id=\"rotation\" data-in-progress=\"{}\"><strong>{headline}</strong> \
         Approval policy: transport {}, federation {}.</p>\n",
        r.in_progress,
        escape(&r.transport_policy),
        escape(&r.federation_policy),
    );
    let validity = match r.presenting.not_after_ms {
        Some(ms) if ms <= s.generated_at_ms => {
            format!("<strong class=\"bad-text\">expired</strong> {}", utc(ms))
        }
        Some(ms) => format!(
            "valid until {} <span class=\"ago\">(in {})</span>",
            utc(ms),
            duration(ms - s.generated_at_ms)
        ),
        None => "validity unknown".into(),
    };
    let _ = writeln!(
        o,
        "<p class=\"meta\" id=\"presenting\">This coordinator (node {}) presents \
         the transport certificate {}, {validity}.</p>",
        r.presenting.node_id,
        short_pin(&r.presenting.thumbprint),
    );
    if r.rotations.is_empty() {
        o.push_str("</section>\n");
        return;
    }
    o.push_str(
        "<table id=\"rotations\">\n<thead><tr><th scope=\"col\">ID</th>\
         <th scope=\"col\">Pin</th><th scope=\"col\">Phase</th>\
         <th scope=\"col\">Since</th><th scope=\"col\">Old &rarr; new pin</th>\
         <th scope=\"col\">Waiting for</th><th scope=\"col\">Policy</th>\
         <th scope=\"col\">Proposed / approved by</th></tr></thead>\n<tbody>\n",
    );
    for x in &r.rotations {
        let badge = format!(
            "<span class=\"st st-{}\">{}</span>",
            if x.in_progress {
                "rotating".to_string()
            } else {
                class_word(&x.phase)
            },
            escape(&x.phase)
        );
        let mut waiting = if x.waiting_for.is_empty() {
            DASH.to_string()
        } else {
            escape(&x.waiting_for.join(", "))
        };
        if !x.excluded.is_empty() {
            let _ = write!(
                waiting,
                " <span class=\"ago\">(excluded: {})</span>",
                escape(&x.excluded.join("; "))
            );
        }
        let by = if x.approved_by.is_empty() {
            escape(&x.proposed_by)
        } else {
            format!("{} / {}", escape(&x.proposed_by), escape(&x.approved_by))
        };
        let _ = writeln!(
            o,
            "<tr data-rotation=\"{}\" data-phase=\"{}\" data-in-progress=\"{}\">\
             <td>{}</td><td>{}</td><td>{badge}</td><td>{}</td><td>{} &rarr; {}</td>\
             <td>{waiting}</td><td>{}</td><td>{by}</td></tr>",
            x.id,
            escape(&x.phase),
            x.in_progress,
            x.id,
            escape(&x.subject),
            utc(x.phase_since_ms),
            short_pin(&x.old_thumbprint),
            short_pin(&x.new_thumbprint),
            escape(&x.policy),
        );
    }
    o.push_str(
        "</tbody>\n</table>\n<p class=\"note\">Rotations in progress first, then \
         the last finished ones; each rotation's history: \
         <code>tern rotate status</code>.</p>\n</section>\n",
    );
}

fn audit(o: &mut String, s: &Snapshot) {
    o.push_str(
        "<section id=\"audit-section\">\n<h2>Recent audit events</h2>\n\
         <table id=\"audit\">\n<thead><tr><th scope=\"col\">Time</th>\
         <th scope=\"col\">Epoch</th><th scope=\"col\">Actor</th>\
         <th scope=\"col\">Kind</th><th scope=\"col\">Summary</th></tr></thead>\n<tbody>\n",
    );
    if s.audit.is_empty() {
        o.push_str("<tr><td colspan=\"5\">No audit record yet.</td></tr>\n");
    }
    for a in &s.audit {
        let _ = writeln!(
            o,
            "<tr data-seq=\"{}\" data-kind=\"{}\"><td>{}</td><td>{}</td><td>{}</td>\
             <td><code>{}</code></td><td>{}</td></tr>",
            a.seq,
            escape(&a.kind),
            utc(a.at_ms),
            a.epoch,
            escape(&a.actor),
            escape(&a.kind),
            escape(&a.summary),
        );
    }
    o.push_str(
        "</tbody>\n</table>\n<p class=\"note\">The newest first; the full trail \
         with each record's details: <code>tern audit</code>.</p>\n</section>\n",
    );
}
