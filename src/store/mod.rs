//! SQLite storage: connection setup, migrations, and the single writer.
//!
//! The database runs in WAL mode with `synchronous=FULL`, so a committed
//! transaction survives a power cut. Every write goes through one connection
//! (the [`writer::Writer`] thread in the daemon, or a short-lived connection
//! in an operator command); SQLite's own lock orders writers from different
//! processes, and `BEGIN IMMEDIATE` makes each transaction take that lock
//! before it reads what it is about to change. Readers use connections of
//! their own.

mod checkpoint;
mod schema;
pub mod writer;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, TransactionBehavior};

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open database {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "database {path} has schema version {found}, newer than this jitca understands ({known}): upgrade jitca"
    )]
    TooNew {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("database error: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("{0}")]
    Invalid(String),
    /// A decision reversed inside the write transaction (the user was
    /// suspended meanwhile, say): a denial, not a fault.
    #[error("{0}")]
    Refused(String),
    #[error(
        "the database writer did not complete the write, nothing was stored: see the daemon log"
    )]
    WriterGone,
}

impl StoreError {
    /// An error for input that was refused before anything was written.
    pub fn invalid(message: impl Into<String>) -> StoreError {
        StoreError::Invalid(message.into())
    }

    /// True when SQLite refused because another connection holds a lock
    /// (`SQLITE_BUSY`, `SQLITE_LOCKED`, or `SQLITE_PROTOCOL`: the WAL's
    /// read locks stayed taken, as during another process's recovery):
    /// trying again later may succeed.
    pub fn is_locked(&self) -> bool {
        use rusqlite::ErrorCode::{DatabaseBusy, DatabaseLocked, FileLockingProtocolFailed};
        let StoreError::Sql(rusqlite::Error::SqliteFailure(e, _)) = self else {
            return false;
        };
        matches!(
            e.code,
            DatabaseBusy | DatabaseLocked | FileLockingProtocolFailed
        )
    }
}

/// How long a connection waits for another writer's lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens a connection with the pragmas every jitca connection uses.
pub fn connect(path: &Path) -> Result<Connection, StoreError> {
    connect_waiting(path, BUSY_TIMEOUT)
}

/// [`connect`], waiting at most `busy` for another connection's lock, from
/// the opening's own pragmas on.
pub fn connect_waiting(path: &Path, busy: Duration) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let open_err = |source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    };
    let conn = Connection::open_with_flags(path, flags).map_err(open_err)?;
    conn.busy_timeout(busy).map_err(open_err)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(open_err)?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(open_err)?;
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(open_err)?;
    // The bundled SQLite is built with STAT4, which re-prepares a cached
    // statement at every new binding of a parameter the planner looked at
    // (a join or ORDER BY on `?1`): on the request path that was one SQL
    // compilation per query. With the query planner stability guarantee, a
    // prepared statement keeps its plan, as it would without statistics.
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )
    .map_err(open_err)?;
    Ok(conn)
}

/// Opens the database, creating it and applying pending migrations.
///
/// Returns the connection and whether the database was created just now.
pub fn open(path: &Path) -> Result<(Connection, bool), StoreError> {
    if !path.exists() {
        create_private(path)?;
    }
    let mut conn = connect(path)?;
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let known = schema::MIGRATIONS.len() as i64;
    if version > known {
        return Err(StoreError::TooNew {
            path: path.to_path_buf(),
            found: version,
            known,
        });
    }
    for (i, sql) in schema::MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Another process may have migrated while this one waited for the lock.
        let now: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if now > i as i64 {
            continue;
        }
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok((conn, version == 0))
}

/// Creates an empty database file readable by its owner only: it holds the
/// audit log and who may reach what. SQLite gives its `-wal` and `-shm`
/// files the same mode.
fn create_private(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    let created = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path);
    match created {
        Ok(_) => Ok(()),
        // Another process created it first: fine, it is opened below.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(StoreError::invalid(format!(
            "cannot create database {}: {e}",
            path.display()
        ))),
    }
}

/// Runs `f` in one immediate transaction on `conn` and commits it.
///
/// Operator commands use this; the daemon uses [`writer::Writer`].
pub fn write<T>(
    conn: &mut Connection,
    f: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let out = f(&tx)?;
    tx.commit()?;
    Ok(out)
}

/// The plan SQLite picks for `sql`, one line per step (for tests that
/// check a query uses its index).
#[cfg(test)]
pub(crate) fn query_plan(conn: &Connection, sql: &str) -> Vec<String> {
    let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
    // Parameters left unbound are NULL: the plan does not depend on them.
    let mut rows = stmt.raw_query();
    let mut steps = Vec::new();
    while let Some(row) = rows.next().unwrap() {
        steps.push(row.get::<_, String>(3).unwrap());
    }
    steps
}

/// The indexes of `table`, by name (for tests that check what a write
/// maintains).
#[cfg(test)]
pub(crate) fn indexes_of(conn: &Connection, table: &str) -> Vec<String> {
    let mut stmt = conn
        .prepare(
            "SELECT name FROM sqlite_master WHERE tbl_name = ?1 AND type = 'index' ORDER BY name",
        )
        .unwrap();
    stmt.query_map([table], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_creates_then_reopens_at_the_same_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let (_, created) = open(&path).unwrap();
        assert!(created);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the database is created private");
        let (conn, created) = open(&path).unwrap();
        assert!(!created);
        let v: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, schema::MIGRATIONS.len() as i64);
        let mode: String = conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[test]
    fn cached_statements_are_not_prepared_again_for_each_binding() {
        let dir = tempfile::tempdir().unwrap();
        let (conn, _) = open(&dir.path().join("t.db")).unwrap();
        crate::inventory::add_user(&conn, "alice", &["ops".into()], 1).unwrap();
        for sql in [
            "SELECT u.id FROM devices d JOIN users u ON u.id = d.user_id WHERE d.id = ?1",
            "SELECT grp FROM user_groups WHERE user_id = ?1 ORDER BY grp",
        ] {
            for _ in 0..3 {
                let mut stmt = conn.prepare_cached(sql).unwrap();
                let mut rows = stmt.query([1]).unwrap();
                while rows.next().unwrap().is_some() {}
                drop(rows);
                let again = stmt.get_status(rusqlite::StatementStatus::RePrepare);
                assert_eq!(again, 0, "{sql} was prepared again");
            }
        }
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let (conn, _) = open(&path).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        assert!(matches!(open(&path), Err(StoreError::TooNew { .. })));
    }

    #[test]
    fn audit_rows_cannot_be_updated_or_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let (conn, _) = open(&dir.path().join("t.db")).unwrap();
        conn.execute(
            "INSERT INTO audit (at, kind, body, prev_hash, hash) VALUES (1, 'x', '{}', '', '')",
            [],
        )
        .unwrap();
        assert!(conn.execute("UPDATE audit SET kind = 'y'", []).is_err());
        assert!(conn.execute("DELETE FROM audit", []).is_err());
    }

    #[test]
    fn certificates_keep_every_row_and_lose_the_per_user_indexes_when_migrated_to_version_5() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v4.db");
        create_private(&path).unwrap();
        {
            // A database as version 4 left it, with one certificate.
            let conn = connect(&path).unwrap();
            for sql in &schema::MIGRATIONS[..4] {
                conn.execute_batch(sql).unwrap();
            }
            conn.pragma_update(None, "user_version", 4).unwrap();
            conn.execute_batch(
                "INSERT INTO users (id, name, status, created_at) VALUES (1, 'alice', 'active', 0);
                 INSERT INTO devices (id, name, user_id, fingerprint, key_type, public_key, label, status, created_at)
                     VALUES (1, 'mbp', 1, 'SHA256:f', 'ssh-ed25519', 'k', 'l', 'active', 0);
                 INSERT INTO ca_keys (id, fingerprint, algorithm, public_key, file, state, created_at)
                     VALUES (1, 'SHA256:c', 'ssh-ed25519', 'k', 'f', 'active', 0);
                 INSERT INTO certificates (serial, key_id, user_id, device_id, role, ca_key_id, principals,
                                           valid_after, valid_before, issued_at, request_id, audit_seq,
                                           revoked_at, revoke_reason, certificate)
                     VALUES (7, 'jitca:alice:mbp:db:7', 1, 1, 'db', 1, '[\"postgres\"]', 10, 20, 11,
                             'r-1', 3, 15, 'lost', 'ssh-ed25519-cert-v01@openssh.com AAAA');",
            )
            .unwrap();
        }
        let (conn, created) = open(&path).unwrap();
        assert!(!created);
        let row: (String, String, i64, Option<String>, Option<String>) = conn
            .query_row(
                "SELECT key_id, principals, valid_before, revoke_reason, certificate
                 FROM certificates WHERE serial = 7",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .unwrap();
        assert_eq!(
            row,
            (
                "jitca:alice:mbp:db:7".into(),
                "[\"postgres\"]".into(),
                20,
                Some("lost".into()),
                Some("ssh-ed25519-cert-v01@openssh.com AAAA".into())
            )
        );
        assert_eq!(
            indexes_of(&conn, "certificates"),
            [
                "certificates_by_ca_key",
                "certificates_by_expiry",
                "certificates_by_request"
            ]
        );
        // The copied rows still point at their user, device and CA key.
        let bad: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM pragma_foreign_key_check('certificates')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(bad, 0);
    }
}
