//! Revoking certificates, and what the KRL must list.
//!
//! A revocation marks live certificates revoked (`certificates.revoked_at`)
//! and appends one audit record naming them. Certificates that have already
//! expired need no revocation: `sshd` refuses them anyway, and the KRL stays
//! small because it lists only the live ones. The KRL itself is built from
//! the database each time ([`krl_spec`]): revoked live serials per CA key,
//! the keys of disabled devices, and CA keys revoked outright.

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension, params};
use russh::keys::PublicKey;
use serde_json::json;

use super::krl::KrlSpec;
use crate::audit::{self, Event};
use crate::store::StoreError;

/// What to revoke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Serial(u64),
    Request(String),
    User(String),
    Device(String),
    /// Every certificate signed by this CA key (by `ca_keys.id`).
    CaKey(i64),
}

impl Target {
    fn describe(&self) -> String {
        match self {
            Target::Serial(s) => format!("serial {s}"),
            Target::Request(r) => format!("request {r}"),
            Target::User(u) => format!("user {u}"),
            Target::Device(d) => format!("device {d}"),
            Target::CaKey(id) => format!("CA key {id}"),
        }
    }
}

/// Marks every live certificate matching `target` revoked and audits it.
/// Returns the serials revoked now (none when all were expired or revoked
/// already). An unknown serial, request, user or device is an error.
pub fn revoke(
    conn: &Connection,
    target: &Target,
    reason: Option<&str>,
    now: i64,
) -> Result<Vec<u64>, StoreError> {
    check_exists(conn, target)?;
    let (sql, arg) = live_query(target);
    let live: Vec<(i64, String, String)> = {
        let mut stmt = conn.prepare(&sql)?;
        let rows = stmt.query_map(params![arg, now], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        rows.collect::<Result<_, _>>()?
    };
    if live.is_empty() {
        return Ok(Vec::new());
    }
    let mut stmt = conn.prepare_cached(
        "UPDATE certificates SET revoked_at = ?2, revoke_reason = ?3 WHERE serial = ?1 AND revoked_at IS NULL",
    )?;
    for (serial, _, _) in &live {
        stmt.execute(params![serial, now, reason])?;
    }
    let serials: Vec<u64> = live.iter().map(|(s, _, _)| *s as u64).collect();
    let mut event = Event::new(
        "revoked",
        json!({"target": target.describe(), "serials": serials, "reason": reason,
               "actor": crate::inventory::operator()}),
    );
    // Name the user and device when the revocation concerns one of each.
    let users: std::collections::BTreeSet<&str> = live.iter().map(|(_, u, _)| u.as_str()).collect();
    let devices: std::collections::BTreeSet<&str> =
        live.iter().map(|(_, _, d)| d.as_str()).collect();
    if let [user] = users.into_iter().collect::<Vec<_>>()[..] {
        event = event.user(user);
    }
    if let [device] = devices.into_iter().collect::<Vec<_>>()[..] {
        event = event.device(device);
    }
    if let Target::Request(r) = target {
        event.request_id = Some(r.clone());
    }
    audit::append(conn, now, &event)?;
    Ok(serials)
}

/// The query for the live, unrevoked certificates `target` names, and its
/// first parameter (the second is the time now). Live certificates are
/// found through the index by expiry: they are the few at its end.
fn live_query(target: &Target) -> (String, rusqlite::types::Value) {
    // Without statistics SQLite would rather read the whole table in serial
    // order than sort what the index by expiry finds: it is named.
    const BY_EXPIRY: &str = "INDEXED BY certificates_by_expiry";
    let (index, filter, arg): (&str, &str, rusqlite::types::Value) = match target {
        Target::Serial(s) => ("", "c.serial = ?1", (*s as i64).into()),
        Target::Request(r) => ("", "c.request_id = ?1", r.clone().into()),
        Target::User(u) => (
            BY_EXPIRY,
            "c.user_id = (SELECT id FROM users WHERE name = ?1)",
            u.clone().into(),
        ),
        Target::Device(d) => (
            BY_EXPIRY,
            "c.device_id = (SELECT id FROM devices WHERE name = ?1)",
            d.clone().into(),
        ),
        Target::CaKey(id) => ("", "c.ca_key_id = ?1", (*id).into()),
    };
    let sql = format!(
        "SELECT c.serial, u.name, d.name FROM certificates c {index}
         JOIN users u ON u.id = c.user_id JOIN devices d ON d.id = c.device_id
         WHERE {filter} AND c.revoked_at IS NULL AND c.valid_before > ?2 ORDER BY c.serial"
    );
    (sql, arg)
}

fn check_exists(conn: &Connection, target: &Target) -> Result<(), StoreError> {
    let (sql, arg, what): (&str, rusqlite::types::Value, String) = match target {
        Target::Serial(s) => (
            "SELECT 1 FROM certificates WHERE serial = ?1",
            (*s as i64).into(),
            format!("no certificate has serial {s}: see `jitca audit list --kind issued`"),
        ),
        Target::Request(r) => (
            "SELECT 1 FROM requests WHERE id = ?1",
            r.clone().into(),
            format!("there is no request {r}"),
        ),
        Target::User(u) => (
            "SELECT 1 FROM users WHERE name = ?1",
            u.clone().into(),
            format!("no user named {u:?}: see `jitca user list`"),
        ),
        Target::Device(d) => (
            "SELECT 1 FROM devices WHERE name = ?1",
            d.clone().into(),
            format!("no device named {d:?}: see `jitca device list`"),
        ),
        Target::CaKey(_) => return Ok(()),
    };
    let found: Option<i64> = conn.query_row(sql, [arg], |r| r.get(0)).optional()?;
    found.map(|_| ()).ok_or_else(|| StoreError::invalid(what))
}

fn parse_key(line: &str) -> Result<PublicKey, StoreError> {
    PublicKey::from_openssh(line.trim()).map_err(|e| {
        StoreError::invalid(format!(
            "a stored public key does not parse ({e}): the database is damaged"
        ))
    })
}

/// The revoked certificates still live (`?1` the time now, `?2` the clock
/// skew allowed), with their CA keys; found through the index by expiry
/// (named: see [`live_query`]).
const REVOKED_LIVE: &str = "SELECT k.id, k.public_key, c.serial
     FROM certificates c INDEXED BY certificates_by_expiry JOIN ca_keys k ON k.id = c.ca_key_id
     WHERE c.revoked_at IS NOT NULL AND c.valid_before > ?1 - ?2 AND k.state != 'revoked'
     ORDER BY k.id, c.serial";

/// What the KRL must hold now: the revoked, still-live serials of each CA
/// key, the keys of disabled devices, and the CA keys revoked outright.
///
/// A revoked certificate stays listed for `skew` past its expiry (the
/// policy's `backdate`): a host whose clock runs that far behind the CA's
/// still accepts it until then.
pub fn krl_spec(
    conn: &Connection,
    now: i64,
    skew: std::time::Duration,
) -> Result<KrlSpec, StoreError> {
    let skew = i64::try_from(skew.as_secs()).unwrap_or(i64::MAX);
    let mut by_ca: BTreeMap<i64, (String, Vec<u64>)> = BTreeMap::new();
    {
        let mut stmt = conn.prepare(REVOKED_LIVE)?;
        let rows = stmt.query_map([now, skew], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?;
        for row in rows {
            let (id, key, serial) = row?;
            by_ca
                .entry(id)
                .or_insert_with(|| (key, Vec::new()))
                .1
                .push(serial as u64);
        }
    }
    let mut ca_serials = Vec::new();
    for (_, (key, serials)) in by_ca {
        ca_serials.push((parse_key(&key)?, serials));
    }
    let strings = |sql: &str| -> Result<Vec<String>, StoreError> {
        let mut stmt = conn.prepare(sql)?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    };
    let keys = strings("SELECT public_key FROM devices WHERE status = 'inactive' ORDER BY id")?
        .iter()
        .map(|k| parse_key(k))
        .collect::<Result<_, _>>()?;
    let revoked_cas =
        strings("SELECT public_key FROM ca_keys WHERE state = 'revoked' ORDER BY id")?
            .iter()
            .map(|k| parse_key(k))
            .collect::<Result<_, _>>()?;
    Ok(KrlSpec {
        version: now.max(0) as u64,
        generated_date: now.max(0) as u64,
        comment: "jitca".to_string(),
        ca_serials,
        keys,
        revoked_cas,
    })
}

/// Cancels the requests matching `target` that are still pending or
/// approved but not fetched, so that no certificate comes of them later.
/// Returns their ids; each cancellation is audited. Serial and CA-key
/// targets match no request.
pub fn cancel_requests(
    conn: &Connection,
    target: &Target,
    reason: Option<&str>,
    now: i64,
) -> Result<Vec<String>, StoreError> {
    let (filter, arg): (&str, rusqlite::types::Value) = match target {
        Target::Request(r) => ("r.id = ?1", r.clone().into()),
        Target::User(u) => (
            "r.user_id = (SELECT id FROM users WHERE name = ?1)",
            u.clone().into(),
        ),
        Target::Device(d) => (
            "r.device_id = (SELECT id FROM devices WHERE name = ?1)",
            d.clone().into(),
        ),
        Target::Serial(_) | Target::CaKey(_) => return Ok(Vec::new()),
    };
    let sql = format!(
        "SELECT r.id, u.name, d.name, r.role, r.state FROM requests r
         JOIN users u ON u.id = r.user_id JOIN devices d ON d.id = r.device_id
         WHERE {filter} AND r.state IN ('pending', 'approved') ORDER BY r.id"
    );
    let open: Vec<(String, String, String, String, String)> = {
        let mut stmt = conn.prepare(&sql)?;
        let rows = stmt.query_map([arg], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?;
        rows.collect::<Result<_, _>>()?
    };
    let why = format!(
        "cancelled by an operator{}",
        reason.map(|r| format!(": {r}")).unwrap_or_default()
    );
    for (id, user, device, role, state) in &open {
        conn.execute(
            "UPDATE requests SET state = 'denied', decided_at = ?2, outcome = ?3 WHERE id = ?1",
            params![id, now, why],
        )?;
        let mut event = Event::new(
            "request-cancelled",
            json!({"from": state, "reason": reason, "target": target.describe(), "actor": crate::inventory::operator()}),
        )
        .user(user)
        .device(device)
        .role(role);
        event.request_id = Some(id.clone());
        audit::append(conn, now, &event)?;
    }
    Ok(open.into_iter().map(|(id, ..)| id).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revocations_and_the_krl_find_live_certificates_without_reading_every_certificate() {
        // Certificates live minutes and the table keeps every one ever
        // issued: each of these must go to the few live ones by an index.
        let dir = tempfile::tempdir().unwrap();
        let (conn, _) = crate::store::open(&dir.path().join("p.db")).unwrap();
        let queries = [
            (
                live_query(&Target::User("alice".into())).0,
                "certificates_by_expiry",
            ),
            (
                live_query(&Target::Device("mbp".into())).0,
                "certificates_by_expiry",
            ),
            (
                live_query(&Target::Request("r-1".into())).0,
                "certificates_by_request",
            ),
            (live_query(&Target::CaKey(1)).0, "certificates_by_ca_key"),
            (live_query(&Target::Serial(7)).0, "INTEGER PRIMARY KEY"),
            (REVOKED_LIVE.to_string(), "certificates_by_expiry"),
        ];
        for (sql, index) in queries {
            let steps = crate::store::query_plan(&conn, &sql);
            assert!(steps.iter().any(|s| s.contains(index)), "{sql}: {steps:?}");
            assert!(
                !steps.iter().any(|s| s.starts_with("SCAN c")),
                "{sql}: {steps:?}"
            );
        }
    }
}
