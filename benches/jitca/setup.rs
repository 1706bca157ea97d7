//! Throwaway CA state for the benchmark, made the way `jitca init` and the
//! operator commands make it, in a temporary directory: a database, a CA
//! key, the daemon's host key, and enrolled requesters (one user and one
//! Ed25519 device each, in group `dba`, with a posture that passes the
//! shipped policy's `managed-laptop` profile).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use jitca::ca::host_key::load_or_create_host_key;
use jitca::inventory::{self, Identity, NewDevice};
use jitca::model::{AttrValue, now_unix};
use jitca::policy::Policy;
use jitca::server::State;
use jitca::{ca, store};
use russh::keys::{Algorithm, HashAlg, PrivateKey, PublicKey};

/// The role every benchmark request asks for: `prod-db` of the shipped
/// `policy.toml` (group, four posture requirements, source address pinned
/// to the peer, one extension).
pub const ROLE: &str = "prod-db";

/// The shipped policy file.
pub fn shipped_policy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("policy.toml")
}

/// One CA's files.
pub struct Ca {
    pub db: PathBuf,
    pub ca_keys: PathBuf,
    pub policy: PathBuf,
    pub requesters: Vec<Requester>,
}

/// An enrolled requester: the device key and who jitca says it is.
#[derive(Clone)]
pub struct Requester {
    pub key: Arc<PrivateKey>,
    pub public: PublicKey,
    pub identity: Identity,
}

impl Ca {
    /// The daemon state over this CA, as `jitca serve` builds it.
    pub fn state(&self) -> anyhow::Result<State> {
        let policy = Policy::load(&self.policy).map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(State::new(&self.db, &self.ca_keys, &self.policy, policy)?)
    }

    /// The active CA key's private key file (for `ssh-keygen -s`).
    pub fn ca_key_file(&self) -> anyhow::Result<PathBuf> {
        let (conn, _) = store::open(&self.db)?;
        let row = ca::registry::active(&conn)?.context("no active CA key")?;
        Ok(self.ca_keys.join(row.file))
    }

    /// Every requester's public key, one `authorized_keys` line each.
    pub fn authorized_keys(&self) -> anyhow::Result<String> {
        let mut out = String::new();
        for r in &self.requesters {
            out.push_str(&r.public.to_openssh()?);
            out.push('\n');
        }
        Ok(out)
    }
}

/// The posture every benchmark device reports: passes `managed-laptop`.
fn good_posture() -> Vec<(String, AttrValue)> {
    vec![
        ("disk_encrypted".into(), AttrValue::Bool(true)),
        ("os_family".into(), AttrValue::Text("linux".into())),
        ("os_version".into(), AttrValue::Text("14.6".into())),
        ("mdm_enrolled".into(), AttrValue::Bool(true)),
    ]
}

/// Creates `DIR/NAME/` holding a fresh CA with `requesters` enrolled
/// requesters, checked by `policy`.
pub fn create(dir: &Path, name: &str, policy: &Path, requesters: usize) -> anyhow::Result<Ca> {
    let root = dir.join(name);
    std::fs::create_dir_all(&root)?;
    let ca = Ca {
        db: root.join("jitca.db"),
        ca_keys: root.join("ca-keys"),
        policy: policy.to_path_buf(),
        requesters: Vec::new(),
    };
    let (mut conn, _) = store::open(&ca.db)?;
    let now = now_unix();
    store::write(&mut conn, |c| {
        ca::registry::ensure_active(c, &ca.ca_keys, now)
    })?;
    load_or_create_host_key(&ca.ca_keys)?;
    let ca = enrol(ca, &mut conn, name, requesters, now)?;
    Ok(ca)
}

/// Enrols `count` more requesters named after `prefix`.
fn enrol(
    mut ca: Ca,
    conn: &mut rusqlite::Connection,
    prefix: &str,
    count: usize,
    now: i64,
) -> anyhow::Result<Ca> {
    let mut keys = Vec::with_capacity(count);
    for _ in 0..count {
        let key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519)?;
        keys.push(key);
    }
    let posture = good_posture();
    let prefix = prefix.replace('_', "-");
    store::write(conn, |c| {
        for (i, key) in keys.iter().enumerate() {
            let user = format!("{prefix}-u{i:04}");
            let device = format!("{prefix}-d{i:04}");
            inventory::add_user(c, &user, &["dba".to_string()], now)?;
            let public = key
                .public_key()
                .to_openssh()
                .map_err(|e| store::StoreError::invalid(e.to_string()))?;
            let fingerprint = key.public_key().fingerprint(HashAlg::Sha256).to_string();
            let new = NewDevice {
                fingerprint: &fingerprint,
                key_type: "ssh-ed25519",
                public_key: &public,
                label: "benchmark device",
            };
            inventory::add_device(c, &user, &device, &new, now)?;
            inventory::set_posture(c, &device, &posture, now)?;
        }
        Ok(())
    })?;
    for key in keys {
        let fingerprint = key.public_key().fingerprint(HashAlg::Sha256).to_string();
        let identity = inventory::identity_by_fingerprint(conn, &fingerprint)?
            .context("an enrolled key was not found again")?;
        ca.requesters.push(Requester {
            public: key.public_key().clone(),
            key: Arc::new(key),
            identity,
        });
    }
    Ok(ca)
}
