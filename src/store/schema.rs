//! Embedded, versioned schema migrations.
//!
//! Each entry of [`MIGRATIONS`] moves the database from version `i` to
//! `i + 1` (`PRAGMA user_version`). Migrations are applied in one
//! transaction each and are never edited once released: a change is a new
//! entry.

/// The migrations, in order. Version N of the schema is the state after the
/// first N entries.
pub const MIGRATIONS: &[&str] = &[
    // 1: inventory, CA keys, certificates, the audit chain.
    r#"
    CREATE TABLE users (
        id          INTEGER PRIMARY KEY,
        name        TEXT NOT NULL UNIQUE,
        status      TEXT NOT NULL CHECK (status IN ('active', 'inactive')),
        created_at  INTEGER NOT NULL
    );
    CREATE TABLE user_groups (
        user_id     INTEGER NOT NULL REFERENCES users(id),
        grp         TEXT NOT NULL,
        PRIMARY KEY (user_id, grp)
    ) WITHOUT ROWID;
    CREATE INDEX user_groups_by_group ON user_groups(grp);
    CREATE TABLE user_attributes (
        user_id     INTEGER NOT NULL REFERENCES users(id),
        attr        TEXT NOT NULL,
        value       TEXT NOT NULL,
        PRIMARY KEY (user_id, attr)
    ) WITHOUT ROWID;
    CREATE TABLE devices (
        id          INTEGER PRIMARY KEY,
        name        TEXT NOT NULL UNIQUE,
        user_id     INTEGER NOT NULL REFERENCES users(id),
        fingerprint TEXT NOT NULL UNIQUE,
        key_type    TEXT NOT NULL,
        public_key  TEXT NOT NULL,
        label       TEXT NOT NULL,
        status      TEXT NOT NULL CHECK (status IN ('active', 'inactive')),
        created_at  INTEGER NOT NULL
    );
    CREATE INDEX devices_by_user ON devices(user_id);
    CREATE TABLE posture (
        device_id   INTEGER NOT NULL REFERENCES devices(id),
        attr        TEXT NOT NULL,
        value       TEXT NOT NULL,
        reported_at INTEGER NOT NULL,
        PRIMARY KEY (device_id, attr)
    ) WITHOUT ROWID;
    CREATE TABLE ca_keys (
        id          INTEGER PRIMARY KEY,
        fingerprint TEXT NOT NULL UNIQUE,
        algorithm   TEXT NOT NULL,
        public_key  TEXT NOT NULL,
        file        TEXT NOT NULL,
        state       TEXT NOT NULL
                    CHECK (state IN ('next', 'active', 'retiring', 'retired', 'revoked')),
        created_at  INTEGER NOT NULL,
        activated_at INTEGER,
        retired_at  INTEGER
    );
    CREATE UNIQUE INDEX ca_keys_one_active ON ca_keys(state) WHERE state = 'active';
    CREATE TABLE certificates (
        serial      INTEGER PRIMARY KEY CHECK (serial > 0),
        key_id      TEXT NOT NULL UNIQUE,
        user_id     INTEGER NOT NULL REFERENCES users(id),
        device_id   INTEGER NOT NULL REFERENCES devices(id),
        role        TEXT NOT NULL,
        ca_key_id   INTEGER NOT NULL REFERENCES ca_keys(id),
        principals  TEXT NOT NULL,
        valid_after INTEGER NOT NULL,
        valid_before INTEGER NOT NULL,
        issued_at   INTEGER NOT NULL,
        request_id  TEXT,
        audit_seq   INTEGER NOT NULL,
        revoked_at  INTEGER,
        revoke_reason TEXT
    );
    CREATE INDEX certificates_by_user ON certificates(user_id);
    CREATE INDEX certificates_by_device ON certificates(device_id);
    CREATE TABLE audit (
        seq         INTEGER PRIMARY KEY,
        at          INTEGER NOT NULL,
        kind        TEXT NOT NULL,
        user        TEXT,
        device      TEXT,
        role        TEXT,
        request_id  TEXT,
        body        TEXT NOT NULL,
        prev_hash   TEXT NOT NULL,
        hash        TEXT NOT NULL
    );
    CREATE INDEX audit_by_user ON audit(user, seq);
    CREATE INDEX audit_by_at ON audit(at);
    CREATE TRIGGER audit_append_only_update BEFORE UPDATE ON audit
        BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;
    CREATE TRIGGER audit_append_only_delete BEFORE DELETE ON audit
        BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;
    "#,
    // 2: approvals: pending requests, each approver's verdict, and the
    // certificate text so that a delivered certificate can be sent again.
    r#"
    CREATE TABLE requests (
        id          TEXT PRIMARY KEY,
        user_id     INTEGER NOT NULL REFERENCES users(id),
        device_id   INTEGER NOT NULL REFERENCES devices(id),
        role        TEXT NOT NULL,
        reason      TEXT,
        ttl_secs    INTEGER,
        needed      INTEGER NOT NULL CHECK (needed >= 1),
        state       TEXT NOT NULL
                    CHECK (state IN ('pending', 'approved', 'denied', 'expired', 'issued')),
        created_at  INTEGER NOT NULL,
        deadline    INTEGER NOT NULL,
        decided_at  INTEGER,
        outcome     TEXT,
        serial      INTEGER,
        snapshot    TEXT NOT NULL
    );
    CREATE INDEX requests_by_state ON requests(state, deadline);
    CREATE INDEX requests_by_user ON requests(user_id, created_at);
    CREATE TABLE approvals (
        request_id  TEXT NOT NULL REFERENCES requests(id),
        approver_id INTEGER NOT NULL REFERENCES users(id),
        device_id   INTEGER NOT NULL REFERENCES devices(id),
        verdict     TEXT NOT NULL CHECK (verdict IN ('approve', 'deny')),
        comment     TEXT,
        at          INTEGER NOT NULL,
        PRIMARY KEY (request_id, approver_id)
    ) WITHOUT ROWID;
    ALTER TABLE certificates ADD COLUMN certificate TEXT;
    CREATE INDEX certificates_by_request ON certificates(request_id);
    "#,
    // 3: counters that must never go back, whatever is pruned: the last
    // certificate serial handed out.
    r#"
    CREATE TABLE counters (
        name        TEXT PRIMARY KEY,
        value       INTEGER NOT NULL
    );
    INSERT INTO counters (name, value) SELECT 'serial', COALESCE(MAX(serial), 0) FROM certificates;
    "#,
    // 4: when each CA key's last certificate expires, found without reading
    // every certificate: the active key's row (with this value) is read
    // whenever the daemon looks its signing key up, `ca list` reads it for
    // every key, and rotation for every retiring key.
    r#"
    CREATE INDEX certificates_by_ca_key ON certificates(ca_key_id, valid_before);
    "#,
    // 5: certificates indexed for what is asked of them. Every question
    // about a user's or a device's certificates is about the live ones
    // (revoke, `status`, the KRL), and certificates live minutes: an index
    // by expiry finds them, and each issuance adds to it near its end. The
    // indexes by user, by device and on the key id (unique already: it
    // ends with the serial) each took a page of their own per requester
    // in every commit, most of what an issuance wrote. The index by
    // request holds only certificates issued after approval. SQLite cannot
    // drop the key id's UNIQUE constraint, so the table is copied.
    r#"
    CREATE TABLE certificates_v5 (
        serial      INTEGER PRIMARY KEY CHECK (serial > 0),
        key_id      TEXT NOT NULL,
        user_id     INTEGER NOT NULL REFERENCES users(id),
        device_id   INTEGER NOT NULL REFERENCES devices(id),
        role        TEXT NOT NULL,
        ca_key_id   INTEGER NOT NULL REFERENCES ca_keys(id),
        principals  TEXT NOT NULL,
        valid_after INTEGER NOT NULL,
        valid_before INTEGER NOT NULL,
        issued_at   INTEGER NOT NULL,
        request_id  TEXT,
        audit_seq   INTEGER NOT NULL,
        revoked_at  INTEGER,
        revoke_reason TEXT,
        certificate TEXT
    );
    INSERT INTO certificates_v5 (serial, key_id, user_id, device_id, role, ca_key_id, principals,
                                 valid_after, valid_before, issued_at, request_id, audit_seq,
                                 revoked_at, revoke_reason, certificate)
        SELECT serial, key_id, user_id, device_id, role, ca_key_id, principals,
               valid_after, valid_before, issued_at, request_id, audit_seq,
               revoked_at, revoke_reason, certificate
        FROM certificates;
    DROP TABLE certificates;
    ALTER TABLE certificates_v5 RENAME TO certificates;
    CREATE INDEX certificates_by_expiry ON certificates(valid_before);
    CREATE INDEX certificates_by_ca_key ON certificates(ca_key_id, valid_before);
    CREATE INDEX certificates_by_request ON certificates(request_id) WHERE request_id IS NOT NULL;
    "#,
    // 6: no audit index by user. No query used it (`audit list` filtered
    // with `?1 IS NULL OR user = ?1`, which SQLite answers by reading every
    // record), and each issuance paid a page write for it: every user's
    // records sit in a leaf of their own, so a commit of N decisions by N
    // users rewrote N leaves of it.
    r#"
    DROP INDEX audit_by_user;
    "#,
    // 7: record format 2 (see `audit::body`): the body stored compressed,
    // the chain hashing its digest. The records written before keep
    // format 1 and still verify as they are.
    r#"
    ALTER TABLE audit ADD COLUMN format INTEGER NOT NULL DEFAULT 1;
    "#,
];
