//! `krill keys new|show|new-pool`, and the keys every other command signs,
//! seals and opens with (`--key`, `--pool-public-key`, their defaults).

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::args::KeysCommand;
use crate::trust::{default_key_path, BoxPublicKey, Credentials, Identity, PoolKey};

/// Where `scripts/up` puts the local pool's public key, read when
/// `--pool-public-key` is not given.
pub fn default_pool_public_path() -> PathBuf {
    default_key_path().with_file_name("pool.pub")
}

fn default_name() -> String {
    let user = std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "user".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let name: String = format!("{user}@{host}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._@-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(crate::trust::keys::MAX_NAME_LEN)
        .collect();
    name.trim_end_matches('@').to_string()
}

/// Runs a `krill keys` subcommand.
pub fn run(cmd: KeysCommand, key: Option<PathBuf>) -> anyhow::Result<u8> {
    match cmd {
        KeysCommand::New { out, name } => {
            let path = out.or(key).unwrap_or_else(default_key_path);
            let id = Identity::generate(&name.unwrap_or_else(default_name))?;
            id.save(&path)?;
            eprintln!(
                "krill: wrote {} (keep it secret); add this line to the workers' trusted-keys file:",
                path.display()
            );
            println!("{}", id.public_line());
            Ok(0)
        }
        KeysCommand::Show => {
            let path = key.unwrap_or_else(default_key_path);
            let id = Identity::load(&path)?;
            println!("{}", id.public_line());
            eprintln!(
                "krill: {} (reply key for sealed outputs: {})",
                path.display(),
                id.reply_public().to_b64()
            );
            Ok(0)
        }
        KeysCommand::NewPool { out } => {
            let k = PoolKey::generate();
            let public = k.save(&out)?;
            eprintln!(
                "krill: wrote {} (workers: --pool-key) and {} (submitters: --pool-public-key)",
                out.display(),
                public.display()
            );
            println!("{}", k.public().to_b64());
            Ok(0)
        }
    }
}

/// The signing identity: `--key` (which must exist), else the default key
/// file when it exists, else none (unsigned).
pub fn identity(key: Option<&Path>) -> anyhow::Result<Option<Identity>> {
    match key {
        Some(path) => Ok(Some(
            Identity::load(path).with_context(|| "loading --key / KRILL_KEY")?,
        )),
        None => {
            let path = default_key_path();
            if path.exists() {
                Ok(Some(Identity::load(&path)?))
            } else {
                Ok(None)
            }
        }
    }
}

/// What this invocation signs and seals with.
pub fn credentials(key: Option<&Path>, pool_public: Option<&str>) -> anyhow::Result<Credentials> {
    let pool_public = match pool_public {
        Some(arg) => Some(
            BoxPublicKey::from_file_or_b64(arg)
                .context("--pool-public-key / KRILL_POOL_PUBLIC_KEY")?,
        ),
        None => {
            let path = default_pool_public_path();
            if path.exists() {
                Some(BoxPublicKey::from_file_or_b64(&path.to_string_lossy())?)
            } else {
                None
            }
        }
    };
    Ok(Credentials::new(identity(key)?, pool_public))
}
