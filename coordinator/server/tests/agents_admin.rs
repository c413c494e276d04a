//! The operator surface for agents, through the admin gRPC API of an
//! in-process three-region cluster (real openraft, SQLite, mutual TLS on
//! 127.0.0.x): region overrides (drain, undrain, failover, failback) with
//! epoch fencing and audit, the plan preview, and the agent registry.
//! Agents themselves need shims; tests with agents live in `tests/`.

use std::time::Duration;

use anyhow::{bail, Context};
use tern_coordinator::config::RaftTuning;
use tern_coordinator::local_cluster::LocalCluster;
use tern_proto::v1 as pb;
use tern_proto::v1::admin_client::AdminClient;
use tonic::transport::Channel;

type Admin = AdminClient<Channel>;

async fn start(base_ip: u8) -> anyhow::Result<(tempfile::TempDir, LocalCluster, usize)> {
    let dir = tempfile::tempdir()?;
    let cluster = LocalCluster::start(dir.path(), 3, base_ip, RaftTuning::default()).await?;
    let leader = cluster
        .wait_ready(Duration::from_secs(60))
        .await
        .context("cluster ready")?;
    Ok((dir, cluster, leader))
}

async fn plan(c: &mut Admin, region: &str) -> anyhow::Result<pb::PlanRegionResponse> {
    Ok(c.plan_region(pb::PlanRegionRequest {
        region: region.into(),
        limit: 0,
        after: String::new(),
    })
    .await?
    .into_inner())
}

fn mode_req(
    region: &str,
    action: pb::RegionModeAction,
    expect_epoch: Option<u64>,
) -> pb::SetRegionModeRequest {
    pb::SetRegionModeRequest {
        region: region.into(),
        action: action as i32,
        expect_epoch,
        request_id: String::new(),
    }
}

async fn set_mode(
    c: &mut Admin,
    region: &str,
    action: pb::RegionModeAction,
    expect_epoch: Option<u64>,
) -> Result<pb::SetRegionModeResponse, tonic::Status> {
    c.set_region_mode(mode_req(region, action, expect_epoch))
        .await
        .map(|r| r.into_inner())
}

fn refused(
    r: Result<pb::SetRegionModeResponse, tonic::Status>,
    what: &str,
) -> anyhow::Result<tonic::Status> {
    match r {
        Ok(ok) => bail!("{what}: expected a refusal, got {ok:?}"),
        Err(s) => Ok(s),
    }
}

// Property: an administrator's drain, sent to a follower, is forwarded,
// committed and audited with the administrator as actor, and bumps the
// epoch; a failover with a stale expected epoch is refused with a message
// naming both epochs and changes nothing; failover and failback without an
// expected epoch are refused as invalid; undrain returns the region to
// auto; a manual failover and failback with the right epochs round-trip;
// unknown regions are refused with a clear message.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn region_overrides_are_fenced_and_audited() -> anyhow::Result<()> {
    let (_dir, cluster, leader) = start(71).await?;
    let follower = (leader + 1) % cluster.nodes.len();
    let mut lead = cluster.admin(leader)?;
    let mut foll = cluster.admin(follower)?;

    let before = plan(&mut lead, "eu").await?;
    assert_eq!(before.mode, "auto");

    // Drain through a follower.
    let drained = set_mode(&mut foll, "eu", pb::RegionModeAction::Drain, None).await?;
    assert!(
        drained.epoch > before.epoch,
        "drain bumps the epoch: {} -> {}",
        before.epoch,
        drained.epoch
    );
    assert_eq!(drained.mode, "drained");
    assert!(
        drained.summary.contains("auto -> drained"),
        "summary: {:?}",
        drained.summary
    );
    let audit = lead
        .audit(pb::AuditRequest {
            limit: 1000,
            after_index: 0,
        })
        .await?
        .into_inner();
    let rec = audit
        .records
        .iter()
        .rev()
        .find(|a| a.kind == "set_region_mode")
        .context("an audit record of the drain")?;
    assert_eq!(
        rec.actor, "admin:bench",
        "the audit names the administrator"
    );
    assert_eq!(rec.epoch, drained.epoch);
    assert_eq!(rec.log_index, drained.log_index);

    // Failover with a stale epoch: refused, nothing changes.
    let stale = drained.epoch - 1;
    let s = refused(
        set_mode(&mut lead, "eu", pb::RegionModeAction::Failover, Some(stale)).await,
        "stale failover",
    )?;
    assert_eq!(s.code(), tonic::Code::FailedPrecondition, "{s:?}");
    assert!(
        s.message().contains("stale")
            && s.message().contains(&format!("expected epoch {stale}"))
            && s.message().contains(&drained.epoch.to_string()),
        "the message names both epochs: {}",
        s.message()
    );
    let after = plan(&mut lead, "eu").await?;
    assert_eq!(
        (after.mode.as_str(), after.epoch),
        ("drained", drained.epoch),
        "a refused failover changes nothing"
    );

    // Failover and failback need an expected epoch.
    for action in [
        pb::RegionModeAction::Failover,
        pb::RegionModeAction::Failback,
    ] {
        let s = refused(
            set_mode(&mut lead, "eu", action, None).await,
            "no expect_epoch",
        )?;
        assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s:?}");
        assert!(s.message().contains("expect_epoch"), "{}", s.message());
    }

    // Undrain: back to auto.
    let undrained = set_mode(
        &mut lead,
        "eu",
        pb::RegionModeAction::Undrain,
        Some(drained.epoch),
    )
    .await?;
    assert_eq!(undrained.mode, "auto");
    assert!(undrained.epoch > drained.epoch);
    // Undraining again is a conflict, not a silent success.
    let s = refused(
        set_mode(&mut lead, "eu", pb::RegionModeAction::Undrain, None).await,
        "second undrain",
    )?;
    assert_eq!(s.code(), tonic::Code::AlreadyExists, "{s:?}");

    // A manual failover and failback with the epochs just seen.
    let seen = plan(&mut lead, "us").await?.epoch;
    let over = set_mode(&mut lead, "us", pb::RegionModeAction::Failover, Some(seen)).await?;
    assert_eq!(over.mode, "failed_over");
    assert_eq!(plan(&mut lead, "us").await?.mode, "failed_over");
    let back = set_mode(
        &mut lead,
        "us",
        pb::RegionModeAction::Failback,
        Some(over.epoch),
    )
    .await?;
    assert_eq!(back.mode, "auto");
    assert!(back.epoch > over.epoch);

    // Unknown and malformed regions.
    let s = refused(
        set_mode(&mut lead, "mars", pb::RegionModeAction::Drain, None).await,
        "unknown region",
    )?;
    assert_eq!(s.code(), tonic::Code::InvalidArgument);
    assert!(
        s.message().contains("unknown region") && s.message().contains("eu"),
        "{}",
        s.message()
    );
    let s = refused(
        set_mode(&mut lead, "", pb::RegionModeAction::Drain, None).await,
        "empty region",
    )?;
    assert_eq!(s.code(), tonic::Code::InvalidArgument);
    let s = lead
        .plan_region(pb::PlanRegionRequest {
            region: "mars".into(),
            limit: 0,
            after: String::new(),
        })
        .await
        .err()
        .context("plan of an unknown region refused")?;
    assert_eq!(s.code(), tonic::Code::InvalidArgument);

    cluster.shutdown().await;
    Ok(())
}

// Property: on an empty registry, ListAgents and AgentSummary answer empty
// (no error), the plan preview of a region has no agents and no rejects,
// and bad filters (unknown state, unknown region) are refused with a
// message naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn empty_registry_answers_empty() -> anyhow::Result<()> {
    let (_dir, cluster, leader) = start(76).await?;
    let mut c = cluster.admin(leader)?;

    let list = c
        .list_agents(pb::ListAgentsRequest::default())
        .await?
        .into_inner();
    assert!(list.agents.is_empty() && list.next_after.is_empty());
    let summary = c
        .agent_summary(pb::AgentSummaryRequest {})
        .await?
        .into_inner();
    assert!(summary.counts.is_empty());
    assert_eq!(summary.total, 0);

    let p = plan(&mut c, "ap").await?;
    assert_eq!((p.total, p.rejected_total, p.covered), (0, 0, 0));
    assert!(p.agents.is_empty());
    assert_eq!(p.state, "healthy");

    let filtered = c
        .list_agents(pb::ListAgentsRequest {
            home_region: "eu".into(),
            state: "stranded".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert!(filtered.agents.is_empty());

    let s = c
        .list_agents(pb::ListAgentsRequest {
            state: "lost".into(),
            ..Default::default()
        })
        .await
        .err()
        .context("bad state refused")?;
    assert_eq!(s.code(), tonic::Code::InvalidArgument);
    assert!(
        s.message().contains("state") && s.message().contains("stranded"),
        "{}",
        s.message()
    );
    let s = c
        .list_agents(pb::ListAgentsRequest {
            serving_region: "mars".into(),
            ..Default::default()
        })
        .await
        .err()
        .context("unknown region refused")?;
    assert_eq!(s.code(), tonic::Code::InvalidArgument);
    assert!(s.message().contains("serving_region"), "{}", s.message());

    cluster.shutdown().await;
    Ok(())
}
