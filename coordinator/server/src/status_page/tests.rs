use super::*;

const T0: u64 = 1_767_225_600_000; // 2026-01-01 00:00:00 UTC

fn member(id: u64, region: &str, voting: pb::Voting, contact: i64, lag: i64) -> pb::MemberStatus {
    pb::MemberStatus {
        node_id: id,
        region: region.into(),
        role: pb::MemberRole::Region as i32,
        voting: voting as i32,
        address: format!("127.0.0.{id}:7400"),
        thumbprints: vec![format!("{id:02}").repeat(32)],
        last_contact_ms: contact,
        replication_lag: lag,
        matched_index: None,
        control_plane: String::new(),
    }
}

fn observer(id: u64, region: &str, sees: &str) -> pb::RegionObserverView {
    pb::RegionObserverView {
        observer: id,
        observer_region: region.into(),
        sees: sees.into(),
        since_ms: if sees == "silent" { 0 } else { T0 },
        report_age_ms: if sees == "silent" { 0 } else { 400 },
    }
}

fn region(name: &str, state: &str, observers: Vec<pb::RegionObserverView>) -> pb::RegionStatus {
    pb::RegionStatus {
        region: name.into(),
        state: state.into(),
        since_ms: if state == "healthy" { 0 } else { T0 - 12_000 },
        epoch: 7,
        computed: state.into(),
        observers,
        coordinator_reporting: state != "unreachable",
        control_plane: format!("https://{name}.example:443"),
        trust_bundle_sha256: String::new(),
        mode: "auto".into(),
    }
}

fn count(home: &str, serving: &str, state: &str, n: u64) -> pb::AgentCount {
    pb::AgentCount {
        home_region: home.into(),
        serving_region: serving.into(),
        state: state.into(),
        count: n,
    }
}

fn rotation(id: u64, subject: &str, phase: &str, waiting: &[&str]) -> pb::RotationInfo {
    pb::RotationInfo {
        id,
        subject: subject.into(),
        phase: phase.into(),
        phase_since_ms: T0 - 60_000,
        old_thumbprint: "aa".repeat(32),
        new_thumbprint: "bb".repeat(32),
        trusted: vec![],
        presented: String::new(),
        waiting_for: waiting.iter().map(|w| w.to_string()).collect(),
        excluded: vec![],
        policy: "auto".into(),
        proposed_by: "admin:ops".into(),
        approved_by: String::new(),
        started_at_ms: T0 - 120_000,
        history: vec!["1 admin:ops: started".into()],
    }
}

/// Rotations as `admin::rotation::status` answers them: newest first.
fn rotations(list: Vec<pb::RotationInfo>) -> pb::RotationStatusResponse {
    pb::RotationStatusResponse {
        rotations: list,
        transport_policy: "auto".into(),
        federation_policy: "four-eyes".into(),
        epoch: 9,
        node_id: 2,
        presenting: "cc".repeat(32),
        presenting_not_after_ms: T0 + 90 * 86_400_000,
    }
}

/// Three regions eu, us, ap; eu unreachable (us and ap see it down), this
/// coordinator is us and leads; eu's agents partly moved.
fn fixture(summary: &str) -> Snapshot {
    let status = pb::StatusResponse {
        node_id: 2,
        region: "us".into(),
        leader_id: Some(2),
        leader_region: "us".into(),
        leader_address: "127.0.0.2:7400".into(),
        term: 4,
        commit_index: 120,
        applied_index: 119,
        last_log_index: 120,
        epoch: 9,
        members: vec![
            member(1, "eu", pb::Voting::Voter, 15_000, 30),
            member(2, "us", pb::Voting::Voter, 0, 0),
            member(3, "ap", pb::Voting::Learner, -1, -1),
        ],
        server_state: "Leader".into(),
        snapshot_index: 0,
        purged_index: 0,
    };
    let regions = pb::RegionsResponse {
        regions: vec![
            region(
                "ap",
                "healthy",
                vec![observer(1, "eu", "silent"), observer(2, "us", "up")],
            ),
            region(
                "eu",
                "unreachable",
                vec![observer(2, "us", "down"), observer(3, "ap", "down")],
            ),
            region(
                "us",
                "healthy",
                vec![observer(1, "eu", "silent"), observer(3, "ap", "up")],
            ),
        ],
        frozen: false,
        paused: false,
        quorum_ok: true,
        epoch: 9,
        live_view: true,
    };
    let agents = pb::AgentSummaryResponse {
        counts: vec![
            count("ap", "ap", "home", 10),
            count("eu", "", "redirected", 1),
            count("eu", "", "stranded", 2),
            count("eu", "eu", "redirected", 3),
            count("eu", "us", "redirected", 5),
            count("eu", "us", "returning", 4),
            count("us", "us", "home", 6),
        ],
        total: 31,
        epoch: 9,
    };
    let audit = vec![AuditRow {
        seq: 42,
        log_index: 118,
        at_ms: T0,
        epoch: 9,
        actor: "admin:<b>ops</b>".into(),
        kind: "set_paused".into(),
        summary: summary.into(),
    }];
    let rot = rotations(vec![
        rotation(2, "transport:3", "presenting", &["node:1"]),
        rotation(1, "federation:eu", "completed", &[]),
    ]);
    Snapshot::assemble(status, regions, agents, rot, audit, T0 + 5_000)
}

// Property: the escape function neutralizes every character that could
// open a tag, close an attribute or start an entity, and leaves other text
// (including non-ASCII) alone.
#[test]
fn escape_neutralizes_markup() {
    assert_eq!(
        escape(r#"<script>alert("x") & 'y'</script>"#),
        "&lt;script&gt;alert(&quot;x&quot;) &amp; &#39;y&#39;&lt;/script&gt;"
    );
    assert_eq!(escape("eu-west Zürich 1"), "eu-west Zürich 1");
}

// Property: a `<script>` in an audit summary (or markup in an actor) is
// shown as text: the rendered page holds exactly one script element, its
// own, and the hostile text appears escaped.
#[test]
fn state_strings_are_escaped_in_the_page() {
    let hostile = r#"automation paused: <script>alert("pwned")</script>"#;
    let page = render_page(&fixture(hostile));
    assert_eq!(
        page.matches("<script").count(),
        1,
        "only the page's own script"
    );
    assert!(!page.contains("alert(\"pwned\")"), "raw summary leaked");
    assert!(page.contains("&lt;script&gt;alert(&quot;pwned&quot;)&lt;/script&gt;"));
    assert!(page.contains("admin:&lt;b&gt;ops&lt;/b&gt;"));
    assert!(!page.contains("<b>ops</b>"));
}

// Property: every region has a row carrying its name and committed state
// in data attributes and its state as visible text with a state class, and
// the mode and epoch are shown.
#[test]
fn every_region_row_shows_its_state() {
    let page = render_page(&fixture("x"));
    for (name, state) in [("ap", "healthy"), ("eu", "unreachable"), ("us", "healthy")] {
        let row = format!("<tr data-region=\"{name}\" data-state=\"{state}\" data-mode=\"auto\">");
        assert!(page.contains(&row), "no row {row}");
    }
    assert!(page.contains("<span class=\"st st-unreachable\">unreachable</span>"));
    assert!(
        page.contains("(17 s ago)"),
        "since is shown relative to the snapshot"
    );
}

// Property: the "who sees whom" matrix has one row per observer and one
// cell per region, with what that observer sees (up / down / silent), and
// an empty cell where it does not observe that region (its own).
#[test]
fn matrix_shows_who_sees_whom() {
    let page = render_page(&fixture("x"));
    assert_eq!(page.matches("<tr data-observer=").count(), 3);
    for (obs, reg, sees) in [
        ("us", "eu", "down"),
        ("ap", "eu", "down"),
        ("eu", "us", "silent"),
        ("us", "ap", "up"),
        ("ap", "us", "up"),
        ("us", "us", ""),
    ] {
        let row_start = page
            .find(&format!("<tr data-observer=\"{obs}\""))
            .expect("observer row");
        let row = &page[row_start..row_start + page[row_start..].find("</tr>").expect("end")];
        let cell = format!("<td data-region=\"{reg}\" data-sees=\"{sees}\">");
        assert!(row.contains(&cell), "row {obs} lacks {cell}: {row}");
    }
}

// Property: the agent counts per home region are summed honestly from
// (home, serving, state): served at home / elsewhere / not reported add up
// to the region's agents; handovers in progress are the redirected agents
// not yet reported away from home plus the returning ones; a region hosts
// the agents of others reported attached to it.
#[test]
fn agent_rows_are_derived_from_the_counts() {
    let s = fixture("x");
    let eu = s
        .agents
        .regions
        .iter()
        .find(|r| r.region == "eu")
        .expect("eu row");
    assert_eq!(
        eu,
        &AgentRegionRow {
            region: "eu".into(),
            home_total: 15,
            serving_home: 3,
            serving_elsewhere: 9,
            not_reported: 3,
            redirected: 9,
            stranded: 2,
            returning: 4,
            handovers_in_progress: 1 + 3 + 4,
            hosting: 0,
        }
    );
    let us = s
        .agents
        .regions
        .iter()
        .find(|r| r.region == "us")
        .expect("us");
    assert_eq!((us.home_total, us.serving_home, us.hosting), (6, 6, 9));
    let names: Vec<&str> = s.agents.regions.iter().map(|r| r.region.as_str()).collect();
    assert_eq!(names, ["ap", "eu", "us"]);
    assert_eq!(s.agents.total, 31);
}

// Property: the JSON object has the documented shape (the keys operators'
// scripts rely on) and unknown values are null rather than -1.
#[test]
fn json_shape_is_the_documented_one() {
    let v = serde_json::to_value(fixture("x")).expect("serializes");
    let keys = |v: &serde_json::Value| -> Vec<String> {
        let mut k: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(
        keys(&v),
        [
            "agents",
            "audit",
            "coordinator",
            "federation",
            "generated_at_ms",
            "members",
            "regions",
            "rotation",
            "version"
        ]
    );
    assert_eq!(v["version"], 1);
    assert_eq!(
        keys(&v["coordinator"]),
        ["node_id", "region", "server_state"]
    );
    assert_eq!(
        keys(&v["federation"]),
        [
            "applied_index",
            "commit_index",
            "epoch",
            "frozen",
            "leader_id",
            "leader_region",
            "live_view",
            "paused",
            "quorum_ok",
            "term"
        ]
    );
    assert_eq!(
        keys(&v["regions"][0]),
        [
            "computed",
            "coordinator_reporting",
            "epoch",
            "mode",
            "observers",
            "region",
            "since_ms",
            "state"
        ]
    );
    assert_eq!(
        keys(&v["regions"][0]["observers"][0]),
        ["observer_id", "observer_region", "report_age_ms", "sees"]
    );
    assert_eq!(
        keys(&v["members"][0]),
        [
            "address",
            "is_leader",
            "is_self",
            "last_contact_ms",
            "node_id",
            "region",
            "replication_lag",
            "role",
            "thumbprints",
            "voting"
        ]
    );
    assert_eq!(keys(&v["agents"]), ["regions", "total"]);
    assert_eq!(
        keys(&v["agents"]["regions"][0]),
        [
            "handovers_in_progress",
            "home_total",
            "hosting",
            "not_reported",
            "redirected",
            "region",
            "returning",
            "serving_elsewhere",
            "serving_home",
            "stranded"
        ]
    );
    assert_eq!(
        keys(&v["rotation"]),
        [
            "federation_policy",
            "in_progress",
            "presenting",
            "rotations",
            "transport_policy"
        ]
    );
    assert_eq!(
        keys(&v["rotation"]["presenting"]),
        ["node_id", "not_after_ms", "thumbprint"]
    );
    assert_eq!(
        keys(&v["rotation"]["rotations"][0]),
        [
            "approved_by",
            "excluded",
            "id",
            "in_progress",
            "new_thumbprint",
            "old_thumbprint",
            "phase",
            "phase_since_ms",
            "policy",
            "proposed_by",
            "started_at_ms",
            "subject",
            "waiting_for"
        ]
    );
    assert_eq!(
        keys(&v["audit"][0]),
        [
            "actor",
            "at_ms",
            "epoch",
            "kind",
            "log_index",
            "seq",
            "summary"
        ]
    );
    // Values: the healthy region never changed (null since); the silent
    // observer has no report age; unknown contact and lag are null.
    assert_eq!(v["regions"][0]["since_ms"], serde_json::Value::Null);
    assert_eq!(
        v["regions"][0]["observers"][0]["report_age_ms"],
        serde_json::Value::Null
    );
    assert_eq!(v["regions"][1]["state"], "unreachable");
    assert_eq!(v["members"][2]["last_contact_ms"], serde_json::Value::Null);
    assert_eq!(v["members"][2]["voting"], "learner");
    assert_eq!(v["members"][1]["is_self"], true);
    assert_eq!(v["federation"]["leader_region"], "us");
    assert_eq!(v["rotation"]["in_progress"], 1);
}

// Property: the page loads nothing from anywhere: no src/href attribute,
// no CSS url() or @import; its policy allows only its own inline style and
// script (by hash) and requests to its own origin.
#[test]
fn page_is_self_contained_and_policy_is_restrictive() {
    let page = render_page(&fixture("x"));
    for needle in ["src=", "href=", "url(", "@import", "http://", "https://"] {
        assert!(!page.contains(needle), "the page contains {needle:?}");
    }
    let csp = content_security_policy();
    assert!(csp.starts_with("default-src 'none';"), "{csp}");
    assert!(csp.contains("connect-src 'self'"), "{csp}");
    assert!(
        csp.contains(&csp_hash(CSS)) && csp.contains(&csp_hash(JS)),
        "{csp}"
    );
    assert!(!csp.contains("unsafe"), "{csp}");
    // The hashed texts are exactly the inline ones.
    assert!(page.contains(&format!("<style>{CSS}</style>")));
    assert!(page.contains(&format!("<script>{JS}</script>")));
}

// Property: the state banners say frozen, paused and a missing live view.
#[test]
fn banners_are_honest() {
    let mut s = fixture("x");
    let ok = render_page(&s);
    assert!(ok.contains("data-banner=\"ok\""));
    s.federation.frozen = true;
    s.federation.paused = true;
    s.federation.live_view = false;
    s.federation.leader_id = None;
    s.federation.leader_region = None;
    let bad = render_page(&s);
    for b in ["frozen", "paused", "no-live-view"] {
        assert!(
            bad.contains(&format!("data-banner=\"{b}\"")),
            "no {b} banner"
        );
    }
    assert!(!bad.contains("data-banner=\"ok\""));
    assert!(bad.contains("none known"));
}

// Property: a large federation (5 regions, 20 audit records with long
// summaries) still renders a page under 30 KB.
#[test]
fn page_stays_small() {
    let mut s = fixture(&"x".repeat(200));
    let names = ["eu", "us", "ap", "sa", "af"];
    s.regions = names
        .iter()
        .map(|n| RegionRow {
            region: (*n).into(),
            state: "healthy".into(),
            since_ms: Some(T0),
            epoch: 3,
            mode: "auto".into(),
            computed: Some("healthy".into()),
            coordinator_reporting: true,
            observers: names
                .iter()
                .enumerate()
                .filter(|(_, o)| *o != n)
                .map(|(i, o)| ObserverCell {
                    observer_id: i as u64 + 1,
                    observer_region: (*o).into(),
                    sees: "up".into(),
                    report_age_ms: Some(300),
                })
                .collect(),
        })
        .collect();
    s.audit = (0..AUDIT_SHOWN as u64)
        .map(|i| AuditRow {
            seq: i,
            log_index: i,
            at_ms: T0,
            epoch: i,
            actor: "tern".into(),
            kind: "region_transition".into(),
            summary: "y".repeat(200),
        })
        .collect();
    let page = render_page(&s);
    assert!(page.len() < 30 * 1024, "page is {} bytes", page.len());
}

// Property: both answers carry no-store, nosniff, the restrictive policy
// and the given content type, whatever the handler set before.
#[test]
fn responses_carry_the_security_headers() {
    let r = with_headers(
        "text/html; charset=utf-8",
        render_page(&fixture("x")).into_response(),
    );
    let h = r.headers();
    let get = |k: header::HeaderName| h.get(k).and_then(|v| v.to_str().ok()).unwrap_or("");
    assert_eq!(get(header::CONTENT_TYPE), "text/html; charset=utf-8");
    assert_eq!(get(header::CACHE_CONTROL), "no-store");
    assert_eq!(get(header::X_CONTENT_TYPE_OPTIONS), "nosniff");
    assert_eq!(
        get(header::CONTENT_SECURITY_POLICY),
        content_security_policy()
    );
    let j = with_headers("application/json", Json(fixture("x")).into_response());
    assert_eq!(
        j.headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    assert!(j.headers().contains_key(header::CONTENT_SECURITY_POLICY));
}

// Property: "in progress" follows the core's rule (`Phase::is_finished`)
// for every phase as the API spells it, and an unknown phase is shown as
// in progress rather than hidden.
#[test]
fn rotation_phases_follow_the_core() {
    use tern_core::Phase;
    for p in Phase::ALL {
        assert_eq!(
            phase_finished(p.as_str()),
            p.is_finished(),
            "{}",
            p.as_str()
        );
    }
    assert!(!phase_finished("something_new"));
}

// Property: the rotation section lists the rotations in progress first
// (with phase, pin and whom they wait for), then at most FINISHED_SHOWN
// finished ones, counts those in progress, and says "No rotation in
// progress" when there is none.
#[test]
fn rotations_in_progress_come_first() {
    let page = render_page(&fixture("x"));
    assert!(page.contains(
        "<p id=\"rotation\" data-in-progress=\"1\"><strong>1 rotation in progress.</strong>"
    ));
    let running = page
        .find("<tr data-rotation=\"2\" data-phase=\"presenting\" data-in-progress=\"true\">")
        .expect("running row");
    let done = page
        .find("<tr data-rotation=\"1\" data-phase=\"completed\" data-in-progress=\"false\">")
        .expect("finished row");
    assert!(running < done);
    assert!(page.contains("<td>node:1</td>"), "whom it waits for");
    assert!(
        page.contains("(in 89 d)"),
        "certificate validity, whole days left"
    );

    let many: Vec<pb::RotationInfo> = (1..=9)
        .rev()
        .map(|id| rotation(id, "transport:1", "completed", &[]))
        .chain([rotation(10, "transport:2", "staged", &["owner"])])
        .collect();
    let v = rotation_view(rotations(many));
    assert_eq!(v.in_progress, 1);
    let ids: Vec<u64> = v.rotations.iter().map(|r| r.id).collect();
    assert_eq!(ids, [10, 9, 8, 7, 6, 5]);

    let mut s = fixture("x");
    s.rotation = rotation_view(rotations(vec![]));
    let page = render_page(&s);
    assert!(page.contains("<strong>No rotation in progress.</strong>"));
    assert!(!page.contains("id=\"rotations\""));
}
