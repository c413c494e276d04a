//! The development PKI behind `tern pki` and `tern demo`, and the tests: a
//! self-signed ECDSA P-256 CA (`DevCa`) that issues coordinator transport
//! certificates and admin client certificates (`IssuedCert`), every one with
//! an explicit validity period. It owns certificate profiles (SANs, key
//! usages, EKUs, CA flag) and writing key files with mode 0600. It must not
//! be used as a production CA (no revocation, no audit, keys in plain
//! files) and must never print a key: `Debug` is written by hand.

use std::fmt;
use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::CertificateDer;
use tern_core::Thumbprint;
use time::OffsetDateTime;

use super::peer::{is_valid_admin_name, ADMIN_URI_PREFIX};
use super::{thumbprint_of_der, TlsError};

/// How far a new CA's `not_before` is set in the past, so that machines
/// with slightly slow clocks accept it at once.
const CA_BACKDATE: time::Duration = time::Duration::minutes(5);

/// A development certificate authority: its certificate and signing key.
pub struct DevCa {
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
    thumbprint: Thumbprint,
}

impl DevCa {
    /// A new self-signed CA named `common_name`, valid from a few minutes
    /// ago until `validity` from now. Path length 0: it signs leaves only.
    pub fn generate(common_name: &str, validity: Duration) -> Result<DevCa, TlsError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(gen_err("CA key"))?;
        let now = OffsetDateTime::now_utc();
        let not_after = time::Duration::try_from(validity)
            .ok()
            .and_then(|v| now.checked_add(v))
            .ok_or_else(|| TlsError::Generate {
                what: "CA certificate",
                detail: format!("validity {validity:?} is out of range"),
            })?;
        let mut params = CertificateParams::default();
        params.not_before = now - CA_BACKDATE;
        params.not_after = not_after;
        params.distinguished_name = common_name_dn(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params
            .self_signed(&key)
            .map_err(gen_err("CA certificate"))?;
        let cert_der = cert.der().clone();
        Ok(DevCa {
            thumbprint: thumbprint_of_der(&cert_der),
            cert_pem: cert.pem(),
            cert_der,
            issuer: Issuer::new(params, key),
        })
    }

    /// Re-uses an existing CA (e.g. one written by [`DevCa::write`]) to
    /// issue more certificates. The key must belong to the certificate and
    /// the certificate must be a CA.
    pub fn load(cert_pem: &Path, key_pem: &Path) -> Result<DevCa, TlsError> {
        let cert_text = fs::read_to_string(cert_pem)
            .map_err(|e| TlsError::read("CA certificate", cert_pem, e))?;
        let key_text = fs::read_to_string(key_pem)
            .map_err(|e| TlsError::read("CA private key", key_pem, e))?;
        let cert_origin = cert_pem.display().to_string();
        let key_origin = key_pem.display().to_string();

        use rustls::pki_types::pem::PemObject;
        let cert_der =
            CertificateDer::from_pem_slice(cert_text.as_bytes()).map_err(|e| match e {
                rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoCertificate {
                    path: cert_origin.clone(),
                },
                e => TlsError::Parse {
                    what: "CA certificate",
                    path: cert_origin.clone(),
                    detail: e.to_string(),
                },
            })?;
        let (_, parsed) =
            x509_parser::parse_x509_certificate(&cert_der).map_err(|e| TlsError::Parse {
                what: "CA certificate",
                path: cert_origin.clone(),
                detail: e.to_string(),
            })?;
        let is_ca = matches!(parsed.basic_constraints(), Ok(Some(bc)) if bc.value.ca);
        if !is_ca {
            return Err(TlsError::Parse {
                what: "CA certificate",
                path: cert_origin,
                detail: "not a CA certificate (basicConstraints CA:TRUE missing)".to_string(),
            });
        }
        if !key_text.contains("PRIVATE KEY-----") {
            return Err(TlsError::NoPrivateKey { path: key_origin });
        }
        // Key errors by category only: never echo key material.
        let key = KeyPair::from_pem(&key_text).map_err(|_| TlsError::Parse {
            what: "CA private key",
            path: key_origin.clone(),
            detail: "not a PKCS#8 key this build can use (ECDSA P-256 expected)".to_string(),
        })?;
        if key.subject_public_key_info() != parsed.public_key().raw {
            return Err(TlsError::KeyMismatch {
                cert: cert_origin,
                key: key_origin,
            });
        }
        let issuer = Issuer::from_ca_cert_der(&cert_der, key).map_err(|e| TlsError::Parse {
            what: "CA certificate",
            path: cert_origin,
            detail: e.to_string(),
        })?;
        let cert_der = cert_der.into_owned();
        Ok(DevCa {
            thumbprint: thumbprint_of_der(&cert_der),
            cert_pem: pem_of(&cert_der),
            cert_der,
            issuer,
        })
    }

    /// Writes `dir/ca.pem` and `dir/ca.key` (mode 0600), creating `dir`.
    pub fn write(&self, dir: &Path) -> Result<(), TlsError> {
        fs::create_dir_all(dir).map_err(|e| TlsError::write("directory", dir, e))?;
        write_public(&dir.join("ca.pem"), &self.cert_pem)?;
        write_secret(&dir.join("ca.key"), &self.issuer.key().serialize_pem())
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> String {
        self.cert_pem.clone()
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// SHA-256 of the CA certificate.
    pub fn thumbprint(&self) -> Thumbprint {
        self.thumbprint
    }

    /// A coordinator transport certificate: CN `name`, SANs `dns` and `ips`,
    /// EKU serverAuth + clientAuth, KU digitalSignature + keyEncipherment,
    /// not a CA, valid from `not_before` to `not_after`.
    pub fn issue_node(
        &self,
        name: &str,
        dns: &[String],
        ips: &[IpAddr],
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<IssuedCert, TlsError> {
        let mut sans = Vec::with_capacity(dns.len() + ips.len());
        for d in dns {
            let ia5 = d.clone().try_into().map_err(|_| TlsError::Generate {
                what: "node certificate",
                detail: format!("DNS name {d:?} is not ASCII"),
            })?;
            sans.push(SanType::DnsName(ia5));
        }
        sans.extend(ips.iter().copied().map(SanType::IpAddress));
        let mut params = leaf_params(name, not_before, not_after, "node certificate")?;
        params.subject_alt_names = sans;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.sign(params, "node certificate")
    }

    /// A renewal of a coordinator certificate: same common name and SANs
    /// as `current`'s leaf, the same lifetime, backdated by an hour (or a
    /// twentieth of a shorter lifetime) for clock skew, with a new key. The built-in issuer of pin
    /// rotation.
    pub fn renew_node(
        &self,
        current: &super::Identity,
        now: OffsetDateTime,
    ) -> Result<IssuedCert, TlsError> {
        let what = "renewed node certificate";
        let leaf = current.chain().first().ok_or(TlsError::Generate {
            what,
            detail: "the current certificate has no leaf".into(),
        })?;
        let (_, cert) =
            x509_parser::parse_x509_certificate(leaf).map_err(|e| TlsError::Generate {
                what,
                detail: format!("the current certificate does not parse: {e}"),
            })?;
        let name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .unwrap_or_default()
            .to_string();
        let mut dns = Vec::new();
        let mut ips = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for n in &san.value.general_names {
                match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => dns.push(d.to_string()),
                    x509_parser::extensions::GeneralName::IPAddress(b) => match b.len() {
                        4 => ips.push(IpAddr::from(<[u8; 4]>::try_from(*b).unwrap_or_default())),
                        16 => ips.push(IpAddr::from(<[u8; 16]>::try_from(*b).unwrap_or_default())),
                        _ => {}
                    },
                    _ => {}
                }
            }
        }
        let life = current
            .not_after()
            .duration_since(current.not_before())
            .unwrap_or(Duration::from_secs(90 * 86_400));
        // Backdated for clock skew: an hour, or a twentieth of a short
        // lifetime.
        let skew = (life / 20).min(Duration::from_secs(3600));
        let not_before = now
            - time::Duration::try_from(skew).map_err(|e| TlsError::Generate {
                what,
                detail: format!("skew: {e}"),
            })?;
        let not_after = not_before
            + time::Duration::try_from(life).map_err(|e| TlsError::Generate {
                what,
                detail: format!("lifetime: {e}"),
            })?;
        self.issue_node(&name, &dns, &ips, not_before, not_after)
    }

    /// An admin client certificate: CN `name`, URI SAN
    /// `urn:tern:admin:<name>`, EKU clientAuth, KU digitalSignature, not a
    /// CA. `name` must match `[a-zA-Z0-9._-]{1,64}`.
    pub fn issue_admin(
        &self,
        name: &str,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<IssuedCert, TlsError> {
        if !is_valid_admin_name(name) {
            return Err(TlsError::AdminName(name.to_string()));
        }
        let uri = format!("{ADMIN_URI_PREFIX}{name}");
        let uri = uri
            .try_into()
            .map_err(|_| TlsError::AdminName(name.to_string()))?;
        let mut params = leaf_params(name, not_before, not_after, "admin certificate")?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params, "admin certificate")
    }

    fn sign(&self, params: CertificateParams, what: &'static str) -> Result<IssuedCert, TlsError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(gen_err(what))?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(gen_err(what))?;
        Ok(IssuedCert {
            thumbprint: thumbprint_of_der(cert.der()),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

impl fmt::Debug for DevCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevCa")
            .field("thumbprint", &self.thumbprint.short())
            .field("key", &"<redacted>")
            .finish()
    }
}

/// A certificate and its new private key, both PEM.
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
    /// SHA-256 over the certificate's DER.
    pub thumbprint: Thumbprint,
}

impl IssuedCert {
    /// Writes `dir/<name>.pem` and `dir/<name>.key` (mode 0600), creating `dir`.
    pub fn write(&self, dir: &Path, name: &str) -> Result<(), TlsError> {
        fs::create_dir_all(dir).map_err(|e| TlsError::write("directory", dir, e))?;
        write_public(&dir.join(format!("{name}.pem")), &self.cert_pem)?;
        write_secret(&dir.join(format!("{name}.key")), &self.key_pem)
    }
}

impl IssuedCert {
    /// Replaces the files at `cert` and `key`: the key first (mode 0600),
    /// each written beside its target and renamed over it, so a reader
    /// never sees half a file.
    pub fn replace_files(&self, cert: &Path, key: &Path) -> Result<(), TlsError> {
        let tmp_key = key.with_extension("key.tmp");
        write_secret(&tmp_key, &self.key_pem)?;
        fs::rename(&tmp_key, key).map_err(|e| TlsError::write("private key", key, e))?;
        let tmp_cert = cert.with_extension("pem.tmp");
        write_public(&tmp_cert, &self.cert_pem)?;
        fs::rename(&tmp_cert, cert).map_err(|e| TlsError::write("certificate", cert, e))
    }
}

impl fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCert")
            .field("thumbprint", &self.thumbprint.short())
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

fn leaf_params(
    name: &str,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    what: &'static str,
) -> Result<CertificateParams, TlsError> {
    if name.is_empty() {
        return Err(TlsError::Generate {
            what,
            detail: "empty name".to_string(),
        });
    }
    if not_before >= not_after {
        return Err(TlsError::Generate {
            what,
            detail: "not_before must be earlier than not_after".to_string(),
        });
    }
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name_dn(name);
    params.not_before = not_before;
    params.not_after = not_after;
    params.is_ca = IsCa::ExplicitNoCa;
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

fn common_name_dn(name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn
}

fn gen_err(what: &'static str) -> impl Fn(rcgen::Error) -> TlsError {
    move |e| TlsError::Generate {
        what,
        detail: e.to_string(),
    }
}

fn pem_of(der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new("CERTIFICATE", der),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

fn write_public(path: &Path, contents: &str) -> Result<(), TlsError> {
    fs::write(path, contents).map_err(|e| TlsError::write("certificate", path, e))
}

/// Writes a key file readable by its owner only (0600 on Unix), also when
/// the file already existed with wider permissions.
fn write_secret(path: &Path, contents: &str) -> Result<(), TlsError> {
    let err = |e| TlsError::write("private key", path, e);
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        options.mode(0o600);
        let mut file = options.open(path).map_err(err)?;
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(err)?;
        file.write_all(contents.as_bytes()).map_err(err)?;
        file.sync_all().map_err(err)
    }
    #[cfg(not(unix))]
    {
        let mut file = options.open(path).map_err(err)?;
        file.write_all(contents.as_bytes()).map_err(err)?;
        file.sync_all().map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{CaBundle, Identity};
    use rustls::pki_types::UnixTime;
    use x509_parser::extensions::GeneralName;

    fn window() -> (OffsetDateTime, OffsetDateTime) {
        // Whole seconds: X.509 times have no sub-second part.
        let now = OffsetDateTime::from_unix_timestamp(OffsetDateTime::now_utc().unix_timestamp())
            .expect("now");
        (
            now - time::Duration::minutes(1),
            now + time::Duration::days(30),
        )
    }

    /// Whether `leaf` chains to `ca` for client authentication (webpki).
    fn chains_to(ca: &DevCa, leaf: &IssuedCert) -> bool {
        let roots = CaBundle::from_pem(&ca.cert_pem())
            .expect("bundle")
            .root_store()
            .expect("roots");
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots,
            std::sync::Arc::new(crate::tls::provider()),
        )
        .build()
        .expect("verifier");
        let identity = Identity::from_pem(&leaf.cert_pem, &leaf.key_pem).expect("identity");
        verifier
            .verify_client_cert(&identity.chain()[0], &[], UnixTime::now())
            .is_ok()
    }

    // Property: a node certificate carries exactly the requested SANs,
    // EKU serverAuth+clientAuth, is not a CA, has the requested validity,
    // and its thumbprint is SHA-256 of its DER; the CA is a path-length-0 CA
    // with an explicit (not year-4096) expiry.
    #[test]
    fn node_cert_profile() {
        let ca = DevCa::generate("Tern test CA", Duration::from_secs(86_400)).expect("CA");
        let (nb, na) = window();
        let ips: Vec<IpAddr> = vec!["127.0.0.2".parse().expect("ip"), "::1".parse().expect("ip")];
        let node = ca
            .issue_node("eu-west", &["tern-eu.example".to_string()], &ips, nb, na)
            .expect("issue");
        let identity = Identity::from_pem(&node.cert_pem, &node.key_pem).expect("identity");
        let der = &identity.chain()[0];
        assert_eq!(node.thumbprint, thumbprint_of_der(der));
        assert_eq!(identity.thumbprint(), node.thumbprint);

        let (_, cert) = x509_parser::parse_x509_certificate(der).expect("parse");
        assert_eq!(cert.validity().not_before.timestamp(), nb.unix_timestamp());
        assert_eq!(cert.validity().not_after.timestamp(), na.unix_timestamp());
        let cn = cert.subject().iter_common_name().next().expect("CN");
        assert_eq!(cn.as_str().expect("utf8"), "eu-west");
        let san = cert
            .subject_alternative_name()
            .expect("san")
            .expect("san present");
        let mut dns = Vec::new();
        let mut got_ips = Vec::new();
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => dns.push(d.to_string()),
                GeneralName::IPAddress(b) => got_ips.push(b.to_vec()),
                other => panic!("unexpected SAN {other:?}"),
            }
        }
        assert_eq!(dns, vec!["tern-eu.example"]);
        assert_eq!(
            got_ips,
            vec![
                vec![127, 0, 0, 2],
                [0u8; 15].iter().copied().chain([1]).collect()
            ]
        );
        let eku = cert
            .extended_key_usage()
            .expect("eku")
            .expect("eku present");
        assert!(
            eku.value.server_auth && eku.value.client_auth,
            "EKU {:?}",
            eku.value
        );
        let bc = cert.basic_constraints().expect("bc");
        assert!(bc.is_none_or(|bc| !bc.value.ca), "node cert is a CA");
        let ku = cert.key_usage().expect("ku").expect("ku present");
        assert!(ku.value.digital_signature() && !ku.value.key_cert_sign());

        let (_, ca_cert) = x509_parser::parse_x509_certificate(ca.cert_der()).expect("parse CA");
        let bc = ca_cert
            .basic_constraints()
            .expect("bc")
            .expect("bc present");
        assert!(bc.value.ca && bc.value.path_len_constraint == Some(0));
        let ca_life =
            ca_cert.validity().not_after.timestamp() - OffsetDateTime::now_utc().unix_timestamp();
        assert!(
            (86_000..=86_400).contains(&ca_life),
            "CA lifetime {ca_life}s"
        );
        assert!(chains_to(&ca, &node));
    }

    // Property: an admin certificate carries the URI SAN
    // urn:tern:admin:<name> and EKU clientAuth only; bad names are refused.
    #[test]
    fn admin_cert_profile() {
        let ca = DevCa::generate("Tern test CA", Duration::from_secs(3600)).expect("CA");
        let (nb, na) = window();
        let admin = ca.issue_admin("alice.ops", nb, na).expect("issue");
        let identity = Identity::from_pem(&admin.cert_pem, &admin.key_pem).expect("identity");
        assert_eq!(
            crate::tls::peer::admin_name_of(&identity.chain()[0]),
            Ok(Some("alice.ops".to_string()))
        );
        let (_, cert) = x509_parser::parse_x509_certificate(&identity.chain()[0]).expect("parse");
        let eku = cert
            .extended_key_usage()
            .expect("eku")
            .expect("eku present");
        assert!(eku.value.client_auth && !eku.value.server_auth);
        assert!(chains_to(&ca, &admin));
        for bad in ["", "a b", "x/y", &"a".repeat(65)] {
            assert!(
                matches!(ca.issue_admin(bad, nb, na), Err(TlsError::AdminName(_))),
                "{bad:?} accepted"
            );
        }
        assert!(
            ca.issue_admin("bob", na, nb).is_err(),
            "inverted validity accepted"
        );
    }

    // Property: a CA written to disk and loaded back is the same CA (same
    // certificate PEM and thumbprint) and issues certificates that chain to
    // the original; the key file is 0600; a mismatched key is refused.
    #[test]
    fn ca_write_load_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = DevCa::generate("Tern test CA", Duration::from_secs(3600)).expect("CA");
        ca.write(dir.path()).expect("write");
        let loaded =
            DevCa::load(&dir.path().join("ca.pem"), &dir.path().join("ca.key")).expect("load");
        assert_eq!(loaded.cert_pem(), ca.cert_pem());
        assert_eq!(loaded.thumbprint(), ca.thumbprint());
        let (nb, na) = window();
        let node = loaded.issue_node("n2", &[], &[], nb, na).expect("issue");
        assert!(
            chains_to(&ca, &node),
            "cert from the loaded CA does not chain to the original"
        );
        node.write(dir.path(), "n2").expect("write node");
        assert!(Identity::load(&dir.path().join("n2.pem"), &dir.path().join("n2.key")).is_ok());

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for key in ["ca.key", "n2.key"] {
                let mode = fs::metadata(dir.path().join(key))
                    .expect("stat")
                    .permissions()
                    .mode();
                assert_eq!(mode & 0o777, 0o600, "{key} mode {mode:o}");
            }
        }

        let other = DevCa::generate("other", Duration::from_secs(3600)).expect("CA");
        let other_dir = tempfile::tempdir().expect("tempdir");
        other.write(other_dir.path()).expect("write");
        let err = DevCa::load(&dir.path().join("ca.pem"), &other_dir.path().join("ca.key"))
            .expect_err("mismatched key accepted");
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
        let err = DevCa::load(&dir.path().join("n2.pem"), &dir.path().join("n2.key"))
            .expect_err("leaf accepted as CA");
        assert!(err.to_string().contains("not a CA"), "{err}");
    }

    // Property: Debug output of everything holding a key shows neither the
    // PEM key nor any base64 line of it.
    #[test]
    fn debug_never_prints_keys() {
        let ca = DevCa::generate("Tern test CA", Duration::from_secs(3600)).expect("CA");
        let (nb, na) = window();
        let node = ca.issue_node("n1", &[], &[], nb, na).expect("issue");
        let identity = Identity::from_pem(&node.cert_pem, &node.key_pem).expect("identity");
        let ca_key = ca.issuer.key().serialize_pem();
        for (what, debug, key) in [
            ("DevCa", format!("{ca:?} {ca:#?}"), &ca_key),
            ("IssuedCert", format!("{node:?} {node:#?}"), &node.key_pem),
            (
                "Identity",
                format!("{identity:?} {identity:#?}"),
                &node.key_pem,
            ),
        ] {
            assert!(
                !debug.contains("PRIVATE KEY"),
                "{what} Debug shows a key: {debug}"
            );
            for line in key.lines().filter(|l| !l.starts_with("-----")) {
                assert!(!debug.contains(line), "{what} Debug shows key bytes");
            }
            let hex_key = hex::encode(key.as_bytes());
            assert!(
                !debug.contains(&hex_key[..32]),
                "{what} Debug shows key hex"
            );
        }
    }

    // Property: a loaded CA prints the same PEM as the generated one.
    #[test]
    fn pem_encoder_matches_rcgen() {
        let ca = DevCa::generate("x", Duration::from_secs(60)).expect("CA");
        assert_eq!(
            pem_of(ca.cert_der()).replace("\r\n", "\n"),
            ca.cert_pem().replace("\r\n", "\n")
        );
    }
}
