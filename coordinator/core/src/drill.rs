//! The record of a disaster-recovery drill (`tern drill REGION`): how a
//! region was taken out, each step the drill waited for and when it was
//! seen, and how it ended. The drill measures; the replicated state only
//! keeps what was measured in the audit trail (it changes nothing else).

use serde::{Deserialize, Serialize};

use crate::ids::RegionName;

/// Most steps one drill record holds.
pub const MAX_DRILL_STEPS: usize = 32;
/// Longest step name, method or outcome, in bytes.
pub const MAX_DRILL_LABEL: usize = 64;
/// Longest free-text detail of a drill (why it failed), in bytes.
pub const MAX_DRILL_DETAIL: usize = 1024;

/// One step of a drill: when the drill saw it, counted from the drill's
/// start, and how long it took after the step before it. A step that was
/// not reached (the drill failed or was aborted before) is absent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrillStep {
    /// e.g. `decision`, `handover`, `agents_attached`, `hand_back`,
    /// `agents_home`.
    pub name: String,
    /// Since the drill started, ms.
    pub at_ms: u64,
    /// Since the previous step (or the start), ms.
    pub took_ms: u64,
}

/// What a drill measured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrillRecord {
    pub region: RegionName,
    /// How the region was taken out: `drain` or `outage`.
    pub method: String,
    /// `completed`, `failed` or `aborted`.
    pub outcome: String,
    /// When the drill started, by the clock of the machine that ran it
    /// (Unix ms).
    pub started_at_ms: u64,
    /// Start to end (the region restored and its agents home, or the
    /// failure), ms.
    pub total_ms: u64,
    /// Agents of the region when the drill started.
    pub agents: u64,
    pub steps: Vec<DrillStep>,
    /// Why it failed or was aborted; empty when it completed.
    #[serde(default)]
    pub detail: String,
}

impl DrillRecord {
    /// Checks sizes and names (what can be checked without the state).
    pub fn validate(&self) -> Result<(), String> {
        if self.steps.len() > MAX_DRILL_STEPS {
            return Err(format!(
                "a drill record holds at most {MAX_DRILL_STEPS} steps"
            ));
        }
        let label = |what: &str, s: &str| {
            if s.is_empty() || s.len() > MAX_DRILL_LABEL {
                Err(format!("{what} must be 1-{MAX_DRILL_LABEL} bytes"))
            } else if !s
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                Err(format!("{what} {s:?}: letters, digits, '_' and '-' only"))
            } else {
                Ok(())
            }
        };
        label("method", &self.method)?;
        label("outcome", &self.outcome)?;
        for s in &self.steps {
            label("step name", &s.name)?;
            if s.at_ms > self.total_ms {
                return Err(format!(
                    "step {} at {} ms is after the drill's end ({} ms)",
                    s.name, s.at_ms, self.total_ms
                ));
            }
        }
        if self.steps.windows(2).any(|w| w[1].at_ms < w[0].at_ms) {
            return Err("steps must be in the order they were seen".into());
        }
        if self.detail.len() > MAX_DRILL_DETAIL {
            return Err(format!("detail must be at most {MAX_DRILL_DETAIL} bytes"));
        }
        Ok(())
    }

    /// One line for the audit trail, e.g. `drill of eu (drain) completed in
    /// 21.4 s: decision 0.1 s, agents_attached 4.2 s, ...`.
    pub fn summary(&self) -> String {
        let steps: Vec<String> = self
            .steps
            .iter()
            .map(|s| format!("{} +{}", s.name, seconds(s.took_ms)))
            .collect();
        let mut line = format!(
            "drill of {} ({}, {} agents) {} in {}",
            self.region,
            self.method,
            self.agents,
            self.outcome,
            seconds(self.total_ms)
        );
        if !steps.is_empty() {
            line.push_str(": ");
            line.push_str(&steps.join(", "));
        }
        if !self.detail.is_empty() {
            line.push_str(" - ");
            line.push_str(&self.detail);
        }
        line
    }
}

/// Seconds to the nearest tenth, as `tern drill` prints them.
fn seconds(ms: u64) -> String {
    format!("{:.1} s", ms as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> DrillRecord {
        DrillRecord {
            region: RegionName::try_from("eu".to_string()).expect("region"),
            method: "drain".into(),
            outcome: "completed".into(),
            started_at_ms: 1_700_000_000_000,
            total_ms: 21_400,
            agents: 60,
            steps: vec![
                DrillStep {
                    name: "decision".into(),
                    at_ms: 120,
                    took_ms: 120,
                },
                DrillStep {
                    name: "agents_home".into(),
                    at_ms: 21_400,
                    took_ms: 21_280,
                },
            ],
            detail: String::new(),
        }
    }

    /// A well-formed record passes and its summary names the region, the
    /// method, the outcome, the total and every step with its duration.
    #[test]
    fn summary_names_every_step() {
        let r = record();
        r.validate().expect("valid");
        assert_eq!(
            r.summary(),
            "drill of eu (drain, 60 agents) completed in 21.4 s: decision +0.1 s, agents_home +21.3 s"
        );
    }

    /// Out-of-order steps, steps after the end, odd labels and oversized
    /// details are refused, each with a message naming what is wrong.
    #[test]
    fn malformed_records_are_refused() {
        let mut r = record();
        r.steps.swap(0, 1);
        assert!(r.validate().expect_err("order").contains("order"));
        let mut r = record();
        r.total_ms = 100;
        assert!(r
            .validate()
            .expect_err("end")
            .contains("after the drill's end"));
        let mut r = record();
        r.method = "drain; rm -rf".into();
        assert!(r.validate().expect_err("label").contains("method"));
        let mut r = record();
        r.steps[0].name = String::new();
        assert!(r.validate().expect_err("empty").contains("step name"));
        let mut r = record();
        r.detail = "x".repeat(MAX_DRILL_DETAIL + 1);
        assert!(r.validate().expect_err("detail").contains("detail"));
        let mut r = record();
        r.steps = (0..=MAX_DRILL_STEPS as u64)
            .map(|i| DrillStep {
                name: format!("s{i}"),
                at_ms: i,
                took_ms: 1,
            })
            .collect();
        assert!(r.validate().expect_err("steps").contains("at most"));
    }
}
