//! The CA keys the database knows, their states, and the key that signs.
//!
//! Key files live in the CA key directory; the `ca_keys` table records each
//! key's fingerprint, file name and state (next, active, retiring, retired,
//! revoked). Exactly one key is active at a time (a unique index enforces
//! it). The daemon looks the active key up inside every issuing
//! transaction, so a rotation committed by another process takes effect on
//! the next certificate without a restart; the loaded private keys are
//! cached by fingerprint.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, params};
use serde_json::json;

use super::keys::{CaAlgorithm, CaKey, generate_ca_key, load_ca_key};
use crate::audit::{self, Event};
use crate::store::StoreError;

/// A CA key as the `ca_keys` table holds it.
#[derive(Debug, Clone)]
pub struct CaKeyRow {
    pub id: i64,
    pub fingerprint: String,
    pub algorithm: String,
    pub file: String,
    pub state: String,
    pub created_at: i64,
}

fn row(r: &rusqlite::Row) -> rusqlite::Result<CaKeyRow> {
    Ok(CaKeyRow {
        id: r.get(0)?,
        fingerprint: r.get(1)?,
        algorithm: r.get(2)?,
        file: r.get(3)?,
        state: r.get(4)?,
        created_at: r.get(5)?,
    })
}

const COLUMNS: &str = "id, fingerprint, algorithm, file, state, created_at";

/// The active key's row, if there is one.
pub fn active(conn: &Connection) -> Result<Option<CaKeyRow>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM ca_keys WHERE state = 'active'");
    Ok(conn.prepare_cached(&sql)?.query_row([], row).optional()?)
}

/// Every key, oldest first.
pub fn list(conn: &Connection) -> Result<Vec<CaKeyRow>, StoreError> {
    let mut stmt = conn.prepare(&format!("SELECT {COLUMNS} FROM ca_keys ORDER BY id"))?;
    let rows = stmt.query_map([], row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The public keys hosts should trust: every key that is not retired or
/// revoked, one OpenSSH line each (the content of a `TrustedUserCAKeys` file).
pub fn trusted(conn: &Connection) -> Result<Vec<String>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT public_key FROM ca_keys WHERE state IN ('next', 'active', 'retiring') ORDER BY id",
    )?;
    let rows = stmt.query_map([], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Makes sure an active CA key exists: creates one in `dir` and records it
/// when the database has none. Returns the new key's fingerprint when one
/// was created. Runs inside the caller's write transaction.
pub fn ensure_active(
    conn: &Connection,
    dir: &Path,
    now: i64,
) -> Result<Option<String>, StoreError> {
    if active(conn)?.is_some() {
        return Ok(None);
    }
    let key = create(conn, dir, "active", now)?;
    Ok(Some(key.fingerprint().to_string()))
}

/// Generates a new key file in `dir` and records it with `state`.
pub fn create(conn: &Connection, dir: &Path, state: &str, now: i64) -> Result<CaKey, StoreError> {
    let name = unique_name(dir, now);
    let key = generate_ca_key(dir, &name, CaAlgorithm::Ed25519)
        .map_err(|e| StoreError::invalid(e.to_string()))?;
    conn.execute(
        "INSERT INTO ca_keys (fingerprint, algorithm, public_key, file, state, created_at, activated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, CASE WHEN ?5 = 'active' THEN ?6 END)",
        params![key.fingerprint(), key.algorithm(), key.public_openssh(), name, state, now],
    )?;
    audit::append(
        conn,
        now,
        &Event::new(
            "ca-key-created",
            json!({"fingerprint": key.fingerprint(), "algorithm": key.algorithm(), "file": name, "state": state}),
        ),
    )?;
    Ok(key)
}

/// A file name for a new key that no existing file has.
fn unique_name(dir: &Path, now: i64) -> String {
    let stamp = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(now.max(0) as u64),
    )
    .to_string()
    .replace([':', '-'], "");
    let base = format!("user-ca-{}", stamp.trim_end_matches('Z'));
    let mut name = base.clone();
    let mut n = 1;
    while dir.join(&name).exists() || dir.join(format!("{name}.pub")).exists() {
        n += 1;
        name = format!("{base}-{n}");
    }
    name
}

/// Loaded private keys by fingerprint, shared by the daemon's issuing jobs.
#[derive(Clone)]
pub struct Signers {
    dir: PathBuf,
    loaded: Arc<Mutex<HashMap<String, Arc<CaKey>>>>,
}

impl Signers {
    pub fn new(dir: &Path) -> Signers {
        Signers {
            dir: dir.to_path_buf(),
            loaded: Arc::default(),
        }
    }

    /// The active key, its row id, loaded from its file the first time.
    /// A key file whose fingerprint differs from the database's record is
    /// refused: signing with an unexpected key would issue certificates no
    /// host trusts, or worse, ones the audit log misattributes.
    pub fn active(&self, conn: &Connection) -> Result<(i64, Arc<CaKey>), StoreError> {
        let row = active(conn)?.ok_or_else(|| {
            StoreError::invalid("there is no active CA key: run `jitca init` or `jitca ca rotate`")
        })?;
        if let Some(key) = self.cached(&row.fingerprint) {
            return Ok((row.id, key));
        }
        let path = self.dir.join(&row.file);
        let key = load_ca_key(&path).map_err(|e| StoreError::invalid(e.to_string()))?;
        if key.fingerprint() != row.fingerprint {
            return Err(StoreError::invalid(format!(
                "CA key file {} has fingerprint {}, but the database records {}: restore the right file",
                path.display(),
                key.fingerprint(),
                row.fingerprint
            )));
        }
        let key = Arc::new(key);
        if let Ok(mut map) = self.loaded.lock() {
            map.insert(row.fingerprint.clone(), key.clone());
        }
        Ok((row.id, key))
    }

    fn cached(&self, fingerprint: &str) -> Option<Arc<CaKey>> {
        self.loaded.lock().ok()?.get(fingerprint).cloned()
    }
}
