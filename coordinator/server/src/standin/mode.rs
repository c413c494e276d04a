//! The stand-in's fault modes (`Mode`) and their wire form on the control
//! API (`ModeRequest` in, `ModeReport` out). A mode says how the region
//! endpoints behave: normally (`up`), not at all (`down`), with 503
//! (`unavailable`) or late (`slow`). It owns the validation of a requested
//! mode; it must not act on one (the listener and the request layer do).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Longest delay `slow` accepts, ms (ten minutes).
pub const MAX_DELAY_MS: u64 = 600_000;

/// How the region endpoints behave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Every endpoint answers normally.
    #[default]
    Up,
    /// The HTTPS listener is closed and every live connection dropped, as
    /// if the process were gone; connecting is refused. Leaving `down`
    /// listens again on the same address.
    Down,
    /// Every region endpoint answers 503.
    Unavailable,
    /// Every region endpoint answers normally after `delay`.
    Slow { delay: Duration },
}

impl Mode {
    /// The mode's name on the wire.
    pub fn name(&self) -> ModeName {
        match self {
            Mode::Up => ModeName::Up,
            Mode::Down => ModeName::Down,
            Mode::Unavailable => ModeName::Unavailable,
            Mode::Slow { .. } => ModeName::Slow,
        }
    }

    /// The delay of `slow`, ms; `None` for the other modes.
    pub fn delay_ms(&self) -> Option<u64> {
        match self {
            Mode::Slow { delay } => Some(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX)),
            _ => None,
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.delay_ms() {
            Some(ms) => write!(f, "{} ({ms} ms)", self.name().as_str()),
            None => f.write_str(self.name().as_str()),
        }
    }
}

/// A mode's name: `up`, `down`, `unavailable` or `slow`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ModeName {
    Up,
    Down,
    Unavailable,
    Slow,
}

impl ModeName {
    pub fn as_str(&self) -> &'static str {
        match self {
            ModeName::Up => "up",
            ModeName::Down => "down",
            ModeName::Unavailable => "unavailable",
            ModeName::Slow => "slow",
        }
    }
}

/// Body of `POST /_standin/mode`: `{"mode": "slow", "delay_ms": 300}`.
/// `delay_ms` is required with `slow` and ignored otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModeRequest {
    pub mode: ModeName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
}

impl TryFrom<ModeRequest> for Mode {
    type Error = String;
    fn try_from(r: ModeRequest) -> Result<Mode, String> {
        Ok(match r.mode {
            ModeName::Up => Mode::Up,
            ModeName::Down => Mode::Down,
            ModeName::Unavailable => Mode::Unavailable,
            ModeName::Slow => {
                let ms = r
                    .delay_ms
                    .ok_or_else(|| "delay_ms is required with mode slow".to_string())?;
                if ms > MAX_DELAY_MS {
                    return Err(format!(
                        "delay_ms must be at most {MAX_DELAY_MS} (got {ms})"
                    ));
                }
                Mode::Slow {
                    delay: Duration::from_millis(ms),
                }
            }
        })
    }
}

impl From<Mode> for ModeRequest {
    fn from(m: Mode) -> ModeRequest {
        ModeRequest {
            mode: m.name(),
            delay_ms: m.delay_ms(),
        }
    }
}

/// Answer of `GET` and `POST /_standin/mode`: the mode in force and
/// whether the HTTPS listener is open (it is closed in `down`, and stays
/// closed if listening again failed, see `error`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModeReport {
    pub mode: ModeName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    /// Whether the HTTPS listener accepts connections now.
    pub listening: bool,
    /// The HTTPS address (the same in every mode).
    pub https: String,
    /// Why the listener could not be opened again, if it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl ModeReport {
    /// The mode this report describes. A report with an invalid delay
    /// (which a stand-in never writes) reads as `slow` with that delay
    /// capped at [`MAX_DELAY_MS`].
    pub fn mode(&self) -> Mode {
        match self.mode {
            ModeName::Up => Mode::Up,
            ModeName::Down => Mode::Down,
            ModeName::Unavailable => Mode::Unavailable,
            ModeName::Slow => Mode::Slow {
                delay: Duration::from_millis(self.delay_ms.unwrap_or(0).min(MAX_DELAY_MS)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Property: the wire form round-trips every mode, and `slow` needs a
    // delay within bounds.
    #[test]
    fn request_round_trip_and_validation() {
        for m in [
            Mode::Up,
            Mode::Down,
            Mode::Unavailable,
            Mode::Slow {
                delay: Duration::from_millis(300),
            },
        ] {
            let json = serde_json::to_string(&ModeRequest::from(m)).expect("json");
            let back: ModeRequest = serde_json::from_str(&json).expect("parse");
            assert_eq!(Mode::try_from(back), Ok(m), "{json}");
        }
        let slow: ModeRequest = serde_json::from_str(r#"{"mode":"slow"}"#).expect("parse");
        assert!(Mode::try_from(slow).is_err());
        let too_slow = ModeRequest {
            mode: ModeName::Slow,
            delay_ms: Some(MAX_DELAY_MS + 1),
        };
        assert!(Mode::try_from(too_slow).is_err());
        assert!(serde_json::from_str::<ModeRequest>(r#"{"mode":"sideways"}"#).is_err());
        assert!(serde_json::from_str::<ModeRequest>(r#"{"mode":"up","x":1}"#).is_err());
    }

    // Property: `up` with a delay ignores the delay.
    #[test]
    fn delay_is_ignored_outside_slow() {
        let r = ModeRequest {
            mode: ModeName::Up,
            delay_ms: Some(5),
        };
        assert_eq!(Mode::try_from(r), Ok(Mode::Up));
    }
}
