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
    pub activated_at: Option<i64>,
    pub retired_at: Option<i64>,
    /// When the last certificate it signed expires (none signed: `None`).
    pub last_valid_before: Option<i64>,
}

fn row(r: &rusqlite::Row) -> rusqlite::Result<CaKeyRow> {
    Ok(CaKeyRow {
        id: r.get(0)?,
        fingerprint: r.get(1)?,
        algorithm: r.get(2)?,
        file: r.get(3)?,
        state: r.get(4)?,
        created_at: r.get(5)?,
        activated_at: r.get(6)?,
        retired_at: r.get(7)?,
        last_valid_before: r.get(8)?,
    })
}

const COLUMNS: &str =
    "id, fingerprint, algorithm, file, state, created_at, activated_at, retired_at,
    (SELECT MAX(valid_before) FROM certificates c WHERE c.ca_key_id = ca_keys.id)";

/// The active key's row, if there is one.
pub fn active(conn: &Connection) -> Result<Option<CaKeyRow>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM ca_keys WHERE state = 'active'");
    Ok(conn.prepare_cached(&sql)?.query_row([], row).optional()?)
}

/// The active key's row id, if there is one: what the issuing transaction
/// checks for every certificate, without the rest of the row.
pub fn active_id(conn: &Connection) -> Result<Option<i64>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT id FROM ca_keys WHERE state = 'active'")?
        .query_row([], |r| r.get(0))
        .optional()?)
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

fn set_state(conn: &Connection, id: i64, state: &str, now: i64) -> Result<(), StoreError> {
    let column = match state {
        "active" => "activated_at",
        _ => "retired_at",
    };
    conn.execute(
        &format!("UPDATE ca_keys SET state = ?2, {column} = ?3 WHERE id = ?1"),
        params![id, state, now],
    )?;
    Ok(())
}

/// A key's row id, fingerprint, creation time and activation time.
type KeyTimes = (i64, String, i64, Option<i64>);

fn by_state(conn: &Connection, state: &str) -> Result<Vec<KeyTimes>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, fingerprint, created_at, activated_at FROM ca_keys WHERE state = ?1 ORDER BY id",
    )?;
    let rows = stmt.query_map([state], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn audit_key(
    conn: &Connection,
    kind: &str,
    fingerprint: &str,
    now: i64,
    extra: serde_json::Value,
) -> Result<(), StoreError> {
    let mut body = json!({"fingerprint": fingerprint, "actor": crate::inventory::operator()});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    audit::append(conn, now, &Event::new(kind, body))?;
    Ok(())
}

/// Checks that key `id` loads from its file with the recorded fingerprint,
/// before it is made to sign: a key that cannot sign must not be promoted.
fn check_loads(
    conn: &Connection,
    dir: &Path,
    id: i64,
    fingerprint: &str,
) -> Result<(), StoreError> {
    let file: String =
        conn.query_row("SELECT file FROM ca_keys WHERE id = ?1", [id], |r| r.get(0))?;
    let path = dir.join(&file);
    let key = load_ca_key(&path).map_err(|e| {
        StoreError::invalid(format!(
            "the next CA key {fingerprint} cannot be made active: {e}"
        ))
    })?;
    if key.fingerprint() != fingerprint {
        return Err(StoreError::invalid(format!(
            "the next CA key file {} has fingerprint {}, but the database records {fingerprint}: restore the right file",
            path.display(),
            key.fingerprint()
        )));
    }
    Ok(())
}

/// Moves `next` to active and the active key to retiring.
fn promote(conn: &Connection, next: (i64, &str), now: i64) -> Result<Vec<String>, StoreError> {
    let mut changes = Vec::new();
    for (id, fp, _, _) in by_state(conn, "active")? {
        set_state(conn, id, "retiring", now)?;
        audit_key(conn, "ca-key-retiring", &fp, now, json!({}))?;
        changes.push(format!(
            "{fp}: active -> retiring (published until its last certificate expires)"
        ));
    }
    set_state(conn, next.0, "active", now)?;
    audit_key(conn, "ca-key-activated", next.1, now, json!({}))?;
    changes.push(format!("{}: next -> active (signs from now on)", next.1));
    Ok(changes)
}

/// One step of key rotation, safe to run from a timer: it does only what is
/// due, so a second run right after the first changes nothing.
///
/// - a retiring key whose certificates have all expired is retired;
/// - a next key published for at least `publish_ahead` becomes active, and
///   the active key retiring;
/// - when there is no next key and the active key has signed for
///   `rotate_every - publish_ahead`, a next key is created and published.
///
/// Returns one line per change.
pub fn rotate(
    conn: &Connection,
    dir: &Path,
    now: i64,
    publish_ahead: std::time::Duration,
    rotate_every: std::time::Duration,
) -> Result<Vec<String>, StoreError> {
    let mut changes = Vec::new();
    for (id, fp, _, _) in by_state(conn, "retiring")? {
        let last: Option<i64> = conn.query_row(
            "SELECT MAX(valid_before) FROM certificates WHERE ca_key_id = ?1",
            [id],
            |r| r.get(0),
        )?;
        if last.is_none_or(|t| t <= now) {
            set_state(conn, id, "retired", now)?;
            audit_key(
                conn,
                "ca-key-retired",
                &fp,
                now,
                json!({"last_valid_before": last}),
            )?;
            changes.push(format!("{fp}: retiring -> retired (its last certificate has expired; hosts may stop trusting it)"));
        }
    }

    let ahead = publish_ahead.as_secs() as i64;
    let next = by_state(conn, "next")?;
    if let Some((id, fp, created, _)) = next.first() {
        if created.saturating_add(ahead) <= now {
            check_loads(conn, dir, *id, fp)?;
            changes.extend(promote(conn, (*id, fp), now)?);
        }
        return Ok(changes);
    }

    let active = by_state(conn, "active")?;
    match active.first() {
        None => {
            let key = create(conn, dir, "active", now)?;
            changes.push(format!(
                "{}: created as active (there was no active key)",
                key.fingerprint()
            ));
        }
        Some((_, _, created, activated)) => {
            let since = activated.unwrap_or(*created);
            let due = since
                .saturating_add(rotate_every.as_secs() as i64)
                .saturating_sub(ahead);
            if due <= now {
                let key = create(conn, dir, "next", now)?;
                changes.push(format!(
                    "{}: created as next (published now; signs after {})",
                    key.fingerprint(),
                    humantime::format_duration(publish_ahead)
                ));
            }
        }
    }
    Ok(changes)
}

/// Revokes a compromised CA key: it is no longer trusted, everything it
/// signed is revoked (and listed in the KRL as a revoked CA), and if it was
/// signing, a fresh key takes over at once. Returns one line per change.
pub fn revoke_key(
    conn: &Connection,
    dir: &Path,
    fingerprint: &str,
    reason: Option<&str>,
    now: i64,
) -> Result<Vec<String>, StoreError> {
    let wanted = if fingerprint.starts_with("SHA256:") {
        fingerprint.to_string()
    } else {
        format!("SHA256:{fingerprint}")
    };
    let found: Option<(i64, String)> = conn
        .query_row(
            "SELECT id, state FROM ca_keys WHERE fingerprint = ?1",
            [&wanted],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let Some((id, state)) = found else {
        return Err(StoreError::invalid(format!(
            "no CA key has fingerprint {wanted}: see `jitca ca list`"
        )));
    };
    if state == "revoked" {
        return Ok(Vec::new());
    }
    set_state(conn, id, "revoked", now)?;
    let serials = super::revocation::revoke(
        conn,
        &super::revocation::Target::CaKey(id),
        Some("CA key revoked"),
        now,
    )?;
    audit_key(
        conn,
        "ca-key-revoked",
        &wanted,
        now,
        json!({"was": state, "reason": reason, "certificates": serials.len()}),
    )?;
    let mut changes = vec![format!(
        "{wanted}: {state} -> revoked ({} live certificate(s) revoked)",
        serials.len()
    )];
    if state == "active" {
        match by_state(conn, "next")?.first() {
            Some((next_id, next_fp, _, _)) if check_loads(conn, dir, *next_id, next_fp).is_ok() => {
                set_state(conn, *next_id, "active", now)?;
                audit_key(
                    conn,
                    "ca-key-activated",
                    next_fp,
                    now,
                    json!({"early": "the active key was revoked"}),
                )?;
                changes.push(format!("{next_fp}: next -> active at once"));
            }
            _ => {
                let key = create(conn, dir, "active", now)?;
                changes.push(format!("{}: created as active at once", key.fingerprint()));
            }
        }
    }
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rotation_never_promotes_a_next_key_whose_file_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("ca-keys");
        let (conn, _) = crate::store::open(&dir.path().join("r.db")).unwrap();
        ensure_active(&conn, &keys, 1000).unwrap();
        let (ahead, every) = (Duration::from_secs(10), Duration::from_secs(20));

        // Due for a next key at 1000 + 20 - 10.
        assert!(rotate(&conn, &keys, 1005, ahead, every).unwrap().is_empty());
        let created = rotate(&conn, &keys, 1010, ahead, every).unwrap();
        assert_eq!(created.len(), 1, "{created:?}");
        assert!(
            rotate(&conn, &keys, 1011, ahead, every).unwrap().is_empty(),
            "a second run changes nothing"
        );

        let next: String = conn
            .query_row("SELECT file FROM ca_keys WHERE state = 'next'", [], |r| {
                r.get(0)
            })
            .unwrap();
        std::fs::remove_file(keys.join(&next)).unwrap();
        let refused = rotate(&conn, &keys, 1020, ahead, every)
            .unwrap_err()
            .to_string();
        assert!(refused.contains("cannot be made active"), "{refused}");
        let active: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM ca_keys WHERE state = 'active' AND created_at = 1000",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(active, 1, "the old key keeps signing");
    }

    #[test]
    fn the_active_key_and_its_last_expiry_are_found_without_reading_every_certificate() {
        // The daemon loads the active key's row (with this value) whenever
        // it looks the signing key up, and `ca list` and rotation read it for
        // every key: a scan of the certificates once made each issuance
        // slower than the one before.
        let dir = tempfile::tempdir().unwrap();
        let (conn, _) = crate::store::open(&dir.path().join("p.db")).unwrap();
        let queries = [
            format!("SELECT {COLUMNS} FROM ca_keys WHERE state = 'active'"),
            "SELECT MAX(valid_before) FROM certificates WHERE ca_key_id = 1".to_string(),
        ];
        for sql in queries {
            let steps = crate::store::query_plan(&conn, &sql);
            assert!(
                steps.iter().any(|s| s.contains("certificates_by_ca_key")),
                "{sql}: {steps:?}"
            );
            assert!(
                !steps.iter().any(|s| s.starts_with("SCAN")),
                "{sql}: {steps:?}"
            );
        }
    }
}
