//! The region's handover signing key (Ed25519): generated on first start
//! into `<data_dir>/handover-key.pk8` (mode 0600) and re-used afterwards.
//! Its public part is committed (`SetRegionInfo`) so that every region can
//! check what this region signs. The private key never leaves this module:
//! no `Debug` of it, no logging.

use std::fmt;
use std::path::Path;

use anyhow::Context;
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};

/// File name of the key in the data directory.
pub const KEY_FILE: &str = "handover-key.pk8";

/// The loaded key pair.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    key_id: String,
}

impl SigningKey {
    /// Loads the key from `data_dir`, creating it on first start.
    pub fn load_or_create(data_dir: &Path) -> anyhow::Result<SigningKey> {
        let path = data_dir.join(KEY_FILE);
        let der = if path.exists() {
            std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?
        } else {
            let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
                .map_err(|_| anyhow::anyhow!("generating the handover signing key"))?;
            write_private(&path, doc.as_ref())?;
            doc.as_ref().to_vec()
        };
        let pair = Ed25519KeyPair::from_pkcs8(&der)
            .map_err(|e| anyhow::anyhow!("{}: not an Ed25519 PKCS#8 key: {e}", path.display()))?;
        let key_id = tern_core::handover_key_id(pair.public_key().as_ref());
        Ok(SigningKey { pair, key_id })
    }

    pub fn pair(&self) -> &Ed25519KeyPair {
        &self.pair
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The public key, lowercase hex.
    pub fn public_hex(&self) -> String {
        hex::encode(self.pair.public_key().as_ref())
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
