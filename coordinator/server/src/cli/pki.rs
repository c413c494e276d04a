//! `tern pki`: a development PKI (a CA, coordinator and administrator
//! certificates) for demos, tests and first steps. Production users bring
//! their own certificates (cert-manager, files); Tern only needs PEM files
//! and the SHA-256 thumbprints this command prints.

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Subcommand;
use time::{Duration, OffsetDateTime};

use crate::tls::{pki::DevCa, thumbprint_of_der};

#[derive(Debug, Subcommand)]
pub enum PkiCmd {
    /// Create a CA: DIR/ca.pem and DIR/ca.key.
    Init {
        #[arg(long)]
        dir: PathBuf,
        /// Validity in days
        #[arg(long, default_value_t = 3650)]
        days: i64,
        #[arg(long, default_value = "Tern development CA")]
        name: String,
    },
    /// Issue a coordinator transport certificate: DIR/NAME.pem, DIR/NAME.key.
    Node {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        name: String,
        /// IP address SANs (repeatable)
        #[arg(long = "ip")]
        ips: Vec<IpAddr>,
        /// DNS name SANs (repeatable)
        #[arg(long = "dns")]
        dns: Vec<String>,
        /// Validity in days from now (ignored when --not-after is given)
        #[arg(long, default_value_t = 90)]
        days: i64,
        /// Start of validity, RFC 3339 (default: now minus one hour)
        #[arg(long)]
        not_before: Option<String>,
        /// End of validity, RFC 3339
        #[arg(long)]
        not_after: Option<String>,
    },
    /// Issue an administrator client certificate: DIR/NAME.pem, DIR/NAME.key.
    Admin {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        name: String,
        #[arg(long, default_value_t = 30)]
        days: i64,
        #[arg(long)]
        not_before: Option<String>,
        #[arg(long)]
        not_after: Option<String>,
    },
    /// Print the SHA-256 thumbprint of a PEM certificate.
    Thumbprint { file: PathBuf },
}

fn validity(
    days: i64,
    not_before: &Option<String>,
    not_after: &Option<String>,
) -> anyhow::Result<(OffsetDateTime, OffsetDateTime)> {
    let parse = |s: &str, flag: &str| {
        OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
            .with_context(|| format!("{flag}: {s:?} is not an RFC 3339 time"))
    };
    let now = OffsetDateTime::now_utc();
    let nb = match not_before {
        Some(s) => parse(s, "--not-before")?,
        None => now - Duration::hours(1),
    };
    let na = match not_after {
        Some(s) => parse(s, "--not-after")?,
        None => now + Duration::days(days),
    };
    if na <= nb {
        bail!("the certificate would end before it starts (--not-after <= --not-before)");
    }
    Ok((nb, na))
}

pub fn run(cmd: PkiCmd) -> anyhow::Result<i32> {
    crate::tls::install_crypto_provider();
    match cmd {
        PkiCmd::Init { dir, days, name } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let ca = DevCa::generate(
                &name,
                std::time::Duration::from_secs(days.max(1) as u64 * 86_400),
            )?;
            ca.write(&dir)?;
            println!("CA written to {}/ca.pem (key: ca.key)", dir.display());
        }
        PkiCmd::Node {
            dir,
            name,
            ips,
            dns,
            days,
            not_before,
            not_after,
        } => {
            let ca = DevCa::load(&dir.join("ca.pem"), &dir.join("ca.key"))?;
            let (nb, na) = validity(days, &not_before, &not_after)?;
            let cert = ca.issue_node(&name, &dns, &ips, nb, na)?;
            cert.write(&dir, &name)?;
            println!("{}", cert.thumbprint);
        }
        PkiCmd::Admin {
            dir,
            name,
            days,
            not_before,
            not_after,
        } => {
            let ca = DevCa::load(&dir.join("ca.pem"), &dir.join("ca.key"))?;
            let (nb, na) = validity(days, &not_before, &not_after)?;
            let cert = ca.issue_admin(&name, nb, na)?;
            cert.write(&dir, &name)?;
            println!("{}", cert.thumbprint);
        }
        PkiCmd::Thumbprint { file } => {
            use rustls_pki_types::pem::PemObject;
            let der = rustls_pki_types::CertificateDer::from_pem_file(&file)
                .with_context(|| format!("reading a PEM certificate from {}", file.display()))?;
            println!("{}", thumbprint_of_der(&der));
        }
    }
    Ok(0)
}
