//! The stand-in's configuration: the TOML file layer (`StandInFile`), the
//! flag layer on top of it (`StandInOverrides`, `tern stand-in serve
//! --...`), and the validated plain `StandInConfig` that [`super::start`]
//! runs on, with its federation peers (`FederationPeer`).
//!
//! This module reads files and nothing else: it does not bind sockets or
//! create the data directory. A bad configuration is reported with the name
//! of the field at fault (as written in the TOML file). It must never put
//! a secret or a key into an error message.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tern_core::{RegionName, Thumbprint};

use super::secret::SecretHash;
use crate::tls::{DevCa, Identity, TlsError};

/// A stand-in configuration problem, naming the field at fault: the same
/// error as the coordinator's configuration.
pub type StandInConfigError = crate::config::ConfigError;

use crate::config::invalid;

// ------------------------------------------------------------ file layer

/// The TOML file layer: every field optional so that flags can fill what
/// the file leaves out. Unknown fields are an error: a typo must not fall
/// back to a default silently.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StandInFile {
    /// `region`: the region this stand-in plays.
    pub region: Option<String>,
    /// `data_dir`: where the agent CA is kept.
    pub data_dir: Option<PathBuf>,
    /// `ready_file`: JSON written once listening.
    pub ready_file: Option<PathBuf>,
    #[serde(default)]
    pub listen: StandInFileListen,
    #[serde(default)]
    pub tls: StandInFileTls,
    /// `[agent_ca]`: optional CA files (both or neither).
    pub agent_ca: Option<StandInFileAgentCa>,
    #[serde(default)]
    pub federation: StandInFileFederation,
    #[serde(default)]
    pub handover: StandInFileHandover,
}

/// `[handover]`: Tern's handover contract.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StandInFileHandover {
    /// `handover.configs`: content hashes of the configurations the region
    /// holds (answered by `GET /tern/v1/configs`).
    #[serde(default)]
    pub configs: Vec<String>,
    /// `handover.coordinator_ca_file`: CA whose client certificates may
    /// make the coordinator's contract calls (install keys, mark moved).
    pub coordinator_ca_file: Option<PathBuf>,
}

/// `[listen]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StandInFileListen {
    /// `listen.https`: the region endpoints (TLS).
    pub https: Option<String>,
    /// `listen.control`: the control API (plain HTTP, loopback only).
    pub control: Option<String>,
}

/// `[tls]`: the server certificate the region endpoints present.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StandInFileTls {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

/// `[agent_ca]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StandInFileAgentCa {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

/// `[federation]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StandInFileFederation {
    /// `[[federation.peers]]`.
    #[serde(default)]
    pub peers: Vec<StandInFilePeer>,
}

/// One `[[federation.peers]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StandInFilePeer {
    pub name: String,
    #[serde(default)]
    pub pinned_thumbprints: Vec<String>,
    pub inbound_secret_sha256: String,
}

// ------------------------------------------------------------ flag layer

/// The flag layer of `tern stand-in serve`. Each `Some` replaces the
/// file's value. Relative paths given as flags are relative to the current
/// directory; relative paths in the file are relative to the file's
/// directory.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct StandInOverrides {
    /// Region this stand-in plays (a DNS label)
    #[arg(long)]
    pub region: Option<String>,
    /// HTTPS listen address ip:port of the region endpoints (port 0 picks one)
    #[arg(long)]
    pub listen: Option<String>,
    /// Control API listen address, loopback ip:port (port 0 picks one)
    #[arg(long)]
    pub control: Option<String>,
    /// Directory for the stand-in's state (the agent CA); created if missing
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// JSON file written once listening: region, https, control, pid
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
    /// Server certificate chain of the region endpoints (PEM)
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// Private key of the server certificate (PEM)
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
    /// Agent CA certificate (PEM); default: generated in the data dir
    #[arg(long)]
    pub agent_ca_cert: Option<PathBuf>,
    /// Agent CA private key (PEM); required with --agent-ca-cert
    #[arg(long)]
    pub agent_ca_key: Option<PathBuf>,
    /// Content hash of a configuration the region holds (repeatable; adds
    /// to the file's handover.configs)
    #[arg(long = "config-hash")]
    pub config_hashes: Vec<String>,
    /// CA (PEM) whose client certificates may make the coordinator's
    /// contract calls (install handover keys, mark agents moved)
    #[arg(long)]
    pub coordinator_ca: Option<PathBuf>,
}

// ------------------------------------------------------------ validated

/// An agent CA given as files rather than generated in the data dir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentCaFiles {
    /// The CA certificate (PEM); must be a CA (basicConstraints CA:TRUE).
    pub cert_file: PathBuf,
    /// Its private key (PKCS#8 PEM, ECDSA P-256).
    pub key_file: PathBuf,
}

/// One federation peer as this stand-in knows it: the two factors the
/// peer must present to `GET /api/federation/ping` for a green answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FederationPeer {
    /// The peer's name (a region name, DNS label); unique among the peers.
    /// Logged with every ping it makes.
    pub name: RegionName,
    /// SHA-256 thumbprints (over the whole DER) of the client certificates
    /// this peer may present. At least one; during a pin rotation both the
    /// old and the new thumbprint.
    pub pinned_thumbprints: BTreeSet<Thumbprint>,
    /// SHA-256 of the secret this peer presents (its outbound secret, our
    /// inbound one). The secret itself is never stored.
    pub inbound_secret_sha256: SecretHash,
}

/// The validated configuration of one stand-in.
#[derive(Debug, Clone)]
pub struct StandInConfig {
    /// The region this stand-in plays. Required; a DNS label. Appears as
    /// the `region` field of every log line, in the ready file and in the
    /// name of a generated agent CA.
    pub region: RegionName,
    /// Listener of the region endpoints (HTTPS). Required; ip:port, port 0
    /// picks a free port. The bound address stays the same across mode
    /// `down` and back.
    pub listen_https: SocketAddr,
    /// Listener of the control API (`/_standin/...`, plain HTTP, no
    /// authentication). Required; a loopback ip:port (127.0.0.0/8 or ::1);
    /// port 0 picks a free port.
    pub listen_control: SocketAddr,
    /// Server certificate chain (PEM) presented by the region endpoints.
    /// Required; must be valid now.
    pub tls_cert_file: PathBuf,
    /// Private key (PEM) of `tls_cert_file`. Required.
    pub tls_key_file: PathBuf,
    /// State directory: holds the generated agent CA (`agent-ca/ca.pem`,
    /// `agent-ca/ca.key`). Required; created if missing.
    pub data_dir: PathBuf,
    /// Agent CA given as files. Default: none, a CA is generated in
    /// `data_dir` on first start and re-used afterwards.
    pub agent_ca: Option<AgentCaFiles>,
    /// The federation peers `GET /api/federation/ping` recognises. Default:
    /// none (every ping is red).
    pub federation_peers: Vec<FederationPeer>,
    /// Content hashes of the configurations the region holds. Default:
    /// none.
    pub configs: BTreeSet<String>,
    /// CA whose client certificates may make the coordinator's contract
    /// calls. Default: none (those calls are refused).
    pub coordinator_ca_file: Option<PathBuf>,
    /// JSON file written (atomically) once both listeners are up: `region`,
    /// `https`, `control`, `pid`. Default: none.
    pub ready_file: Option<PathBuf>,
}

impl StandInConfig {
    /// Reads the file (if any), applies the overrides, validates, and checks
    /// that the certificate and key files load (errors name the field).
    pub fn load(
        path: Option<&Path>,
        overrides: &StandInOverrides,
    ) -> Result<StandInConfig, StandInConfigError> {
        let file = match path {
            Some(p) => {
                let text =
                    std::fs::read_to_string(p).map_err(|source| StandInConfigError::Read {
                        path: p.to_path_buf(),
                        source,
                    })?;
                toml::from_str::<StandInFile>(&text).map_err(|e| StandInConfigError::Parse {
                    path: p.to_path_buf(),
                    message: e.to_string(),
                })?
            }
            None => StandInFile::default(),
        };
        let config = StandInConfig::from_layers(file, overrides, path.and_then(Path::parent))?;
        config.check_files()?;
        Ok(config)
    }

    /// Merges the layers and validates; reads no file. Relative paths in
    /// the file are relative to `base` (the file's directory).
    pub fn from_layers(
        file: StandInFile,
        o: &StandInOverrides,
        base: Option<&Path>,
    ) -> Result<StandInConfig, StandInConfigError> {
        let rel = |p: PathBuf| -> PathBuf {
            match base {
                Some(b) if p.is_relative() => b.join(p),
                _ => p,
            }
        };
        let region = o
            .region
            .clone()
            .or(file.region)
            .ok_or(StandInConfigError::Missing { field: "region" })?;
        let region: RegionName = region
            .parse()
            .map_err(|e| invalid("region", format!("{e}")))?;
        let listen_https = socket_addr("listen.https", o.listen.clone().or(file.listen.https))?;
        let listen_control =
            socket_addr("listen.control", o.control.clone().or(file.listen.control))?;
        let tls_cert_file = o.tls_cert.clone().or(file.tls.cert_file.map(rel)).ok_or(
            StandInConfigError::Missing {
                field: "tls.cert_file",
            },
        )?;
        let tls_key_file = o.tls_key.clone().or(file.tls.key_file.map(rel)).ok_or(
            StandInConfigError::Missing {
                field: "tls.key_file",
            },
        )?;
        let data_dir = o
            .data_dir
            .clone()
            .or(file.data_dir.map(rel))
            .ok_or(StandInConfigError::Missing { field: "data_dir" })?;
        let (file_ca_cert, file_ca_key) = match file.agent_ca {
            Some(ca) => (ca.cert_file.map(rel), ca.key_file.map(rel)),
            None => (None, None),
        };
        let agent_ca = match (
            o.agent_ca_cert.clone().or(file_ca_cert),
            o.agent_ca_key.clone().or(file_ca_key),
        ) {
            (Some(cert_file), Some(key_file)) => Some(AgentCaFiles {
                cert_file,
                key_file,
            }),
            (None, None) => None,
            (Some(_), None) => {
                return Err(invalid(
                    "agent_ca.key_file",
                    "required when agent_ca.cert_file is set",
                ))
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "agent_ca.cert_file",
                    "required when agent_ca.key_file is set",
                ))
            }
        };
        let mut federation_peers = Vec::with_capacity(file.federation.peers.len());
        for (i, p) in file.federation.peers.iter().enumerate() {
            federation_peers.push(parse_peer(i, p)?);
        }
        let config = StandInConfig {
            region,
            listen_https,
            listen_control,
            tls_cert_file,
            tls_key_file,
            data_dir,
            agent_ca,
            federation_peers,
            configs: file
                .handover
                .configs
                .iter()
                .chain(o.config_hashes.iter())
                .cloned()
                .collect(),
            coordinator_ca_file: o
                .coordinator_ca
                .clone()
                .or(file.handover.coordinator_ca_file.map(rel)),
            ready_file: o.ready_file.clone().or(file.ready_file.map(rel)),
        };
        config.validate()?;
        Ok(config)
    }

    /// Cross-field rules: the control listener is on loopback and is not
    /// the HTTPS listener; peers are valid (see [`validate_peers`]).
    pub fn validate(&self) -> Result<(), StandInConfigError> {
        if !self.listen_control.ip().is_loopback() {
            return Err(invalid(
                "listen.control",
                format!(
                    "{} is not a loopback address: the control API has no authentication",
                    self.listen_control
                ),
            ));
        }
        if self.listen_control == self.listen_https && self.listen_https.port() != 0 {
            return Err(invalid(
                "listen.control",
                format!("must differ from listen.https ({})", self.listen_https),
            ));
        }
        validate_peers(&self.federation_peers)
    }

    /// Loads the server certificate and key, and the agent CA files if
    /// given, so that a bad file is reported by its field before anything
    /// is bound.
    pub fn check_files(&self) -> Result<(), StandInConfigError> {
        self.server_identity()?;
        if let Some(ca) = &self.agent_ca {
            DevCa::load(&ca.cert_file, &ca.key_file).map_err(|e| {
                let field = tls_field(&e, "agent_ca.cert_file", "agent_ca.key_file");
                invalid(field, e.to_string())
            })?;
        }
        Ok(())
    }

    /// The server identity of the region endpoints; errors name
    /// `tls.cert_file` or `tls.key_file`.
    pub(crate) fn server_identity(&self) -> Result<Identity, StandInConfigError> {
        Identity::load(&self.tls_cert_file, &self.tls_key_file).map_err(|e| {
            let field = tls_field(&e, "tls.cert_file", "tls.key_file");
            invalid(field, e.to_string())
        })
    }
}

/// Checks a peer list: names unique, at least one pin each. Also used when
/// peers are replaced at run time.
pub fn validate_peers(peers: &[FederationPeer]) -> Result<(), StandInConfigError> {
    let mut names = BTreeSet::new();
    for (i, p) in peers.iter().enumerate() {
        if !names.insert(p.name.clone()) {
            return Err(invalid(
                format!("federation.peers[{i}].name"),
                format!("peer {} appears more than once", p.name),
            ));
        }
        if p.pinned_thumbprints.is_empty() {
            return Err(invalid(
                format!("federation.peers[{i}].pinned_thumbprints"),
                "must hold at least one thumbprint",
            ));
        }
    }
    Ok(())
}

fn parse_peer(i: usize, p: &StandInFilePeer) -> Result<FederationPeer, StandInConfigError> {
    let f = |name: &str| format!("federation.peers[{i}].{name}");
    let name: RegionName = p
        .name
        .parse()
        .map_err(|e| invalid(f("name"), format!("{e}")))?;
    let mut pinned_thumbprints = BTreeSet::new();
    for (j, t) in p.pinned_thumbprints.iter().enumerate() {
        let tp: Thumbprint = t
            .parse()
            .map_err(|e| invalid(format!("{}[{j}]", f("pinned_thumbprints")), format!("{e}")))?;
        pinned_thumbprints.insert(tp);
    }
    // The message never echoes the value: it is a hash of a secret.
    let inbound_secret_sha256: SecretHash = p
        .inbound_secret_sha256
        .parse()
        .map_err(|e| invalid(f("inbound_secret_sha256"), format!("{e}")))?;
    Ok(FederationPeer {
        name,
        pinned_thumbprints,
        inbound_secret_sha256,
    })
}

fn socket_addr(
    field: &'static str,
    value: Option<String>,
) -> Result<SocketAddr, StandInConfigError> {
    let value = value.ok_or(StandInConfigError::Missing { field })?;
    value
        .parse()
        .map_err(|e| invalid(field, format!("{value:?} is not ip:port ({e})")))
}

/// Which of a certificate/key pair of fields a TLS loading error is about.
fn tls_field(e: &TlsError, cert_field: &'static str, key_field: &'static str) -> &'static str {
    match e {
        TlsError::Read { what, .. } | TlsError::Parse { what, .. } if what.contains("key") => {
            key_field
        }
        TlsError::NoPrivateKey { .. } | TlsError::KeyMismatch { .. } => key_field,
        _ => cert_field,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn base() -> String {
        format!(
            "region = \"eu\"\ndata_dir = \"data\"\n[listen]\nhttps = \"127.0.0.21:0\"\n\
             control = \"127.0.0.21:0\"\n[tls]\ncert_file = \"s.pem\"\nkey_file = \"s.key\"\n\
             [[federation.peers]]\nname = \"us\"\npinned_thumbprints = [\"{TP}\"]\n\
             inbound_secret_sha256 = \"{TP}\"\n"
        )
    }

    fn parse(text: &str, o: &StandInOverrides) -> Result<StandInConfig, StandInConfigError> {
        let file: StandInFile = toml::from_str(text).map_err(|e| StandInConfigError::Parse {
            path: PathBuf::from("t.toml"),
            message: e.to_string(),
        })?;
        StandInConfig::from_layers(file, o, Some(Path::new("/etc/standin")))
    }

    // Property: a complete file parses; relative paths are taken from the
    // file's directory; peers carry their pins and secret hash.
    #[test]
    fn base_file_parses() {
        let c = parse(&base(), &StandInOverrides::default()).expect("valid");
        assert_eq!(c.region.as_str(), "eu");
        assert_eq!(c.tls_cert_file, PathBuf::from("/etc/standin/s.pem"));
        assert_eq!(c.data_dir, PathBuf::from("/etc/standin/data"));
        assert_eq!(c.federation_peers.len(), 1);
        assert_eq!(c.federation_peers[0].pinned_thumbprints.len(), 1);
        assert!(c.agent_ca.is_none());
    }

    // Property: flags win over the file.
    #[test]
    fn flags_override_file() {
        let o = StandInOverrides {
            region: Some("us-east".into()),
            listen: Some("127.0.0.22:8443".into()),
            data_dir: Some(PathBuf::from("rel")),
            ..StandInOverrides::default()
        };
        let c = parse(&base(), &o).expect("valid");
        assert_eq!(c.region.as_str(), "us-east");
        assert_eq!(c.listen_https.to_string(), "127.0.0.22:8443");
        assert_eq!(c.data_dir, PathBuf::from("rel"));
    }

    // Property: each bad value is refused with an error naming its field.
    #[test]
    fn bad_values_name_the_field() {
        let b = base();
        let cases = [
            (b.replace("region = \"eu\"\n", ""), "region"),
            (b.replace("\"eu\"", "\"EU!\""), "region"),
            (b.replace("control = \"127.0.0.21:0\"", "control = \"10.1.2.3:0\""), "listen.control"),
            (b.replace("https = \"127.0.0.21:0\"", "https = \"nope\""), "listen.https"),
            (b.replace(&format!("[\"{TP}\"]"), "[\"abc\"]"), "federation.peers[0].pinned_thumbprints[0]"),
            (b.replace(&format!("[\"{TP}\"]"), "[]"), "federation.peers[0].pinned_thumbprints"),
            (b.replace(&format!("inbound_secret_sha256 = \"{TP}\""), "inbound_secret_sha256 = \"zz\""), "federation.peers[0].inbound_secret_sha256"),
            (format!("{b}[[federation.peers]]\nname = \"us\"\npinned_thumbprints = [\"{TP}\"]\ninbound_secret_sha256 = \"{TP}\"\n"), "federation.peers[1].name"),
            (format!("{b}[agent_ca]\ncert_file = \"ca.pem\"\n"), "agent_ca.key_file"),
        ];
        for (text, field) in cases {
            let e = parse(&text, &StandInOverrides::default()).expect_err(field);
            assert_eq!(e.field(), Some(field), "{e}");
            assert!(e.to_string().contains(field), "{e}");
        }
    }

    // Property: an unknown field is an error naming it (a typo does not
    // fall back to a default).
    #[test]
    fn unknown_field_is_refused() {
        let text = base().replace("data_dir", "datadir");
        let e = parse(&text, &StandInOverrides::default()).expect_err("unknown field");
        assert!(e.to_string().contains("datadir"), "{e}");
    }

    // Property: an error about a secret hash never echoes the value.
    #[test]
    fn secret_hash_errors_do_not_echo_the_value() {
        let text = base().replace(
            &format!("inbound_secret_sha256 = \"{TP}\""),
            "inbound_secret_sha256 = \"s3cr3t-value\"",
        );
        let e = parse(&text, &StandInOverrides::default()).expect_err("bad hash");
        assert!(!e.to_string().contains("s3cr3t"), "{e}");
    }
}
