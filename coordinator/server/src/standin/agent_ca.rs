//! The stand-in region's agent CA: the CA whose certificates
//! `/pki/trust-bundle.pem` publishes, and that will issue agent leaf
//! certificates. It is either given as files or generated on first start
//! into `<data_dir>/agent-ca/` (written to a temporary directory, then
//! renamed, so a crash never leaves half a CA) and re-used afterwards.
//!
//! It reuses the development PKI (`tls::DevCa`): it must not build
//! certificates itself, and it never logs the key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tern_core::RegionName;

use super::config::AgentCaFiles;
use super::error::StandInError;
use crate::tls::DevCa;

/// Validity of a generated agent CA: ten years (agent leaves last one).
const GENERATED_VALIDITY: Duration = Duration::from_secs(10 * 365 * 86_400);
/// Directory under the data dir holding a generated agent CA.
const DIR: &str = "agent-ca";

/// Where a generated agent CA lives.
pub(crate) fn generated_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(DIR)
}

/// The agent CA: loaded from `files` if given; else from the data dir; else
/// generated there.
pub(crate) fn load_or_create(
    region: &RegionName,
    data_dir: &Path,
    files: Option<&AgentCaFiles>,
) -> Result<DevCa, StandInError> {
    if let Some(f) = files {
        return DevCa::load(&f.cert_file, &f.key_file).map_err(StandInError::AgentCa);
    }
    let dir = generated_dir(data_dir);
    if dir.exists() {
        return DevCa::load(&dir.join("ca.pem"), &dir.join("ca.key"))
            .map_err(StandInError::AgentCa);
    }
    std::fs::create_dir_all(data_dir).map_err(|source| StandInError::Io {
        what: "data directory",
        path: data_dir.to_path_buf(),
        source,
    })?;
    let ca = DevCa::generate(
        &format!("Tern stand-in agent CA ({region})"),
        GENERATED_VALIDITY,
    )
    .map_err(StandInError::AgentCa)?;
    let tmp = data_dir.join(format!("{DIR}.tmp-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|source| StandInError::Io {
            what: "temporary directory",
            path: tmp.clone(),
            source,
        })?;
    }
    ca.write(&tmp).map_err(StandInError::AgentCa)?;
    std::fs::rename(&tmp, &dir).map_err(|source| StandInError::Io {
        what: "agent CA directory",
        path: dir.clone(),
        source,
    })?;
    tracing::info!(
        thumbprint = %ca.thumbprint().short(),
        dir = %dir.display(),
        "agent CA generated"
    );
    Ok(ca)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Property: a generated agent CA is persisted and the same CA is
    // loaded on the next start; CA files given explicitly win.
    #[test]
    fn generated_once_then_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let region: RegionName = "eu".parse().expect("region");
        let data = dir.path().join("data");
        let first = load_or_create(&region, &data, None).expect("generate");
        let second = load_or_create(&region, &data, None).expect("load");
        assert_eq!(first.thumbprint(), second.thumbprint());
        assert!(generated_dir(&data).join("ca.key").exists());

        let other = DevCa::generate("given", Duration::from_secs(86_400)).expect("CA");
        let given_dir = dir.path().join("given");
        other.write(&given_dir).expect("write");
        let files = AgentCaFiles {
            cert_file: given_dir.join("ca.pem"),
            key_file: given_dir.join("ca.key"),
        };
        let loaded = load_or_create(&region, &data, Some(&files)).expect("given");
        assert_eq!(loaded.thumbprint(), other.thumbprint());
    }
}
