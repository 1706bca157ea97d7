//! Users, groups, devices and posture, as stored in SQLite.
//!
//! Every function here takes a connection that is already inside a write
//! transaction (for changes) or any connection (for reads). Each change also
//! appends its audit record, so an operator's change and its record commit
//! together. Anything refused is refused before the first write.

mod devices;
mod snapshot;

pub use devices::*;
pub use snapshot::*;

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use serde_json::json;

use crate::audit::{self, Event};
use crate::model::{AttrValue, Status, check_name};
use crate::store::StoreError;

/// Who made an operator change, for the audit record.
pub fn operator() -> String {
    match std::env::var("SUDO_USER").or_else(|_| std::env::var("USER")) {
        Ok(u) if !u.is_empty() => format!("operator:{u}"),
        _ => "operator".to_string(),
    }
}

fn bad(e: impl std::fmt::Display) -> StoreError {
    StoreError::invalid(e.to_string())
}

/// The id and status of a user, or an error naming the user and the fix.
pub fn user_id(conn: &Connection, name: &str) -> Result<(i64, Status), StoreError> {
    conn.query_row(
        "SELECT id, status FROM users WHERE name = ?1",
        [name],
        |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)),
    )
    .optional()?
    .map(|(id, s)| (id, parse_status(&s)))
    .ok_or_else(|| {
        StoreError::invalid(format!(
            "no user named {name:?}: see `jitca user list`, or add one with `jitca user add {name}`"
        ))
    })
}

pub(crate) fn parse_status(s: &str) -> Status {
    if s == "active" {
        Status::Active
    } else {
        Status::Inactive
    }
}

/// Adds a user with its first groups.
pub fn add_user(
    conn: &Connection,
    name: &str,
    groups: &[String],
    now: i64,
) -> Result<(), StoreError> {
    check_name("user", name).map_err(bad)?;
    for g in groups {
        check_name("group", g).map_err(bad)?;
    }
    let exists: bool = conn.query_row(
        "SELECT EXISTS(SELECT 1 FROM users WHERE name = ?1)",
        [name],
        |r| r.get(0),
    )?;
    if exists {
        return Err(StoreError::invalid(format!(
            "user {name:?} already exists: see `jitca user show {name}`"
        )));
    }
    conn.execute(
        "INSERT INTO users (name, status, created_at) VALUES (?1, 'active', ?2)",
        params![name, now],
    )?;
    let id = conn.last_insert_rowid();
    let mut sorted: Vec<&String> = groups.iter().collect();
    sorted.sort();
    sorted.dedup();
    for g in &sorted {
        conn.execute(
            "INSERT INTO user_groups (user_id, grp) VALUES (?1, ?2)",
            params![id, g],
        )?;
    }
    audit::append(
        conn,
        now,
        &Event::new("user-added", json!({"actor": operator(), "groups": sorted})).user(name),
    )?;
    Ok(())
}

/// Suspends or resumes a user. Suspending also revokes the user's live
/// certificates. Returns `None` when the user already had that status, else
/// the serials revoked.
pub fn set_user_status(
    conn: &Connection,
    name: &str,
    status: Status,
    now: i64,
) -> Result<Option<Vec<u64>>, StoreError> {
    let (id, old) = user_id(conn, name)?;
    if old == status {
        return Ok(None);
    }
    conn.execute(
        "UPDATE users SET status = ?1 WHERE id = ?2",
        params![status.as_str(), id],
    )?;
    let kind = match status {
        Status::Active => "user-resumed",
        Status::Inactive => "user-suspended",
    };
    audit::append(
        conn,
        now,
        &Event::new(kind, json!({"actor": operator()})).user(name),
    )?;
    if status == Status::Active {
        return Ok(Some(Vec::new()));
    }
    let target = crate::ca::revocation::Target::User(name.to_string());
    crate::ca::revocation::cancel_requests(conn, &target, Some("user suspended"), now)?;
    crate::ca::revocation::revoke(conn, &target, Some("user suspended"), now).map(Some)
}

/// Sets user attributes.
pub fn set_user_attributes(
    conn: &Connection,
    name: &str,
    attrs: &[(String, AttrValue)],
    now: i64,
) -> Result<(), StoreError> {
    let (id, _) = user_id(conn, name)?;
    for (k, _) in attrs {
        check_attr(k)?;
    }
    let mut changed = BTreeMap::new();
    for (k, v) in attrs {
        conn.execute(
            "INSERT INTO user_attributes (user_id, attr, value) VALUES (?1, ?2, ?3)
             ON CONFLICT (user_id, attr) DO UPDATE SET value = excluded.value",
            params![id, k, v.to_json()],
        )?;
        changed.insert(k.clone(), v.clone());
    }
    audit::append(
        conn,
        now,
        &Event::new(
            "user-attributes-set",
            json!({"actor": operator(), "attributes": changed}),
        )
        .user(name),
    )?;
    Ok(())
}

/// Checks an attribute name: the same characters a policy may name.
pub fn check_attr(name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::invalid(format!(
            "attribute name {name:?} is not valid: use 1 to 64 of a-z, A-Z, 0-9, '_', '.', '-'"
        )))
    }
}

/// The most attributes one report, `posture set` or `user set` may carry.
pub const MAX_ATTRIBUTES: usize = 256;
/// The longest text attribute value, in bytes.
pub const MAX_VALUE_BYTES: usize = 1024;

/// Checks an attribute value: text of at most [`MAX_VALUE_BYTES`], with no
/// control or invisible formatting characters (they would hide in audit
/// records and terminals).
pub fn check_value(name: &str, value: &AttrValue) -> Result<(), StoreError> {
    let AttrValue::Text(t) = value else {
        return Ok(());
    };
    if t.len() > MAX_VALUE_BYTES {
        return Err(StoreError::invalid(format!(
            "attribute {name} is {} bytes long: the limit is {MAX_VALUE_BYTES}",
            t.len()
        )));
    }
    if let Some(c) = t.chars().find(|c| crate::model::is_hidden_char(*c)) {
        return Err(StoreError::invalid(format!(
            "attribute {name} contains the character {c:?}: remove it"
        )));
    }
    Ok(())
}

/// Splits `ATTR=VALUE` arguments, refusing the whole list on the first bad one.
pub fn parse_assignments(args: &[String]) -> Result<Vec<(String, AttrValue)>, StoreError> {
    if args.len() > MAX_ATTRIBUTES {
        return Err(StoreError::invalid(format!(
            "{} attributes at once: the limit is {MAX_ATTRIBUTES}",
            args.len()
        )));
    }
    if args.is_empty() {
        return Err(StoreError::invalid(
            "no attributes given: pass ATTR=VALUE, e.g. disk_encrypted=true",
        ));
    }
    args.iter()
        .map(|a| {
            let (k, v) = a.split_once('=').ok_or_else(|| {
                StoreError::invalid(format!("{a:?} is not ATTR=VALUE: e.g. disk_encrypted=true"))
            })?;
            check_attr(k)?;
            let value = AttrValue::parse_cli(v);
            check_value(k, &value)?;
            Ok((k.to_string(), value))
        })
        .collect()
}

/// Adds a user to a group, or removes them. Returns false when nothing changed.
pub fn set_membership(
    conn: &Connection,
    group: &str,
    user: &str,
    member: bool,
    now: i64,
) -> Result<bool, StoreError> {
    check_name("group", group).map_err(bad)?;
    let (id, _) = user_id(conn, user)?;
    let n = if member {
        conn.execute(
            "INSERT OR IGNORE INTO user_groups (user_id, grp) VALUES (?1, ?2)",
            params![id, group],
        )?
    } else {
        conn.execute(
            "DELETE FROM user_groups WHERE user_id = ?1 AND grp = ?2",
            params![id, group],
        )?
    };
    if n == 0 {
        return Ok(false);
    }
    let kind = if member {
        "group-member-added"
    } else {
        "group-member-removed"
    };
    audit::append(
        conn,
        now,
        &Event::new(kind, json!({"actor": operator(), "group": group})).user(user),
    )?;
    Ok(true)
}

/// Names of the active users in any of `groups`, except `except_user`, sorted.
pub fn active_members(
    conn: &Connection,
    groups: &[String],
    except_user: i64,
) -> Result<Vec<String>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT DISTINCT u.name FROM users u JOIN user_groups g ON g.user_id = u.id
         WHERE g.grp = ?1 AND u.status = 'active' AND u.id != ?2",
    )?;
    let mut names = std::collections::BTreeSet::new();
    for g in groups {
        for n in stmt.query_map(params![g, except_user], |r| r.get::<_, String>(0))? {
            names.insert(n?);
        }
    }
    Ok(names.into_iter().collect())
}

/// The ids of the active devices of the active user `user`.
pub fn active_devices_of(conn: &Connection, user: &str) -> Result<Vec<i64>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT d.id FROM devices d JOIN users u ON u.id = d.user_id
         WHERE u.name = ?1 AND u.status = 'active' AND d.status = 'active' ORDER BY d.id",
    )?;
    let ids = stmt.query_map([user], |r| r.get(0))?;
    Ok(ids.collect::<Result<_, _>>()?)
}

/// A user as `user list` and `user show` print it.
#[derive(Debug, Serialize)]
pub struct UserInfo {
    pub name: String,
    pub status: Status,
    pub groups: Vec<String>,
    pub attributes: BTreeMap<String, AttrValue>,
    pub devices: Vec<String>,
}

/// Every user, by name.
pub fn list_users(conn: &Connection) -> Result<Vec<UserInfo>, StoreError> {
    let mut stmt = conn.prepare("SELECT name FROM users ORDER BY name")?;
    let names: Vec<String> = stmt
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    names.iter().map(|n| show_user(conn, n)).collect()
}

/// One user with groups, attributes and device names.
pub fn show_user(conn: &Connection, name: &str) -> Result<UserInfo, StoreError> {
    let (id, status) = user_id(conn, name)?;
    let strings = |sql: &str| -> Result<Vec<String>, StoreError> {
        let mut stmt = conn.prepare(sql)?;
        let v = stmt
            .query_map([id], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(v)
    };
    Ok(UserInfo {
        name: name.to_string(),
        status,
        groups: strings("SELECT grp FROM user_groups WHERE user_id = ?1 ORDER BY grp")?,
        attributes: user_attributes(conn, id)?,
        devices: strings("SELECT name FROM devices WHERE user_id = ?1 ORDER BY name")?,
    })
}

pub(crate) fn user_attributes(
    conn: &Connection,
    id: i64,
) -> Result<BTreeMap<String, AttrValue>, StoreError> {
    let mut stmt =
        conn.prepare_cached("SELECT attr, value FROM user_attributes WHERE user_id = ?1")?;
    let rows = stmt.query_map([id], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
    })?;
    let mut out = BTreeMap::new();
    for row in rows {
        let (k, v) = row?;
        if let Some(v) = AttrValue::from_stored(&v) {
            out.insert(k, v);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn db() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let (conn, _) = crate::store::open(&dir.path().join("i.db")).unwrap();
        (dir, conn)
    }

    #[test]
    fn users_are_added_once_with_sorted_groups() {
        let (_d, conn) = db();
        add_user(
            &conn,
            "alice",
            &["ops".into(), "dba".into(), "ops".into()],
            1,
        )
        .unwrap();
        let u = show_user(&conn, "alice").unwrap();
        assert_eq!(u.groups, vec!["dba", "ops"]);
        assert!(add_user(&conn, "alice", &[], 2).is_err());
        assert!(add_user(&conn, "bad name", &[], 2).is_err());
    }

    #[test]
    fn suspend_is_audited_once() {
        let (_d, conn) = db();
        add_user(&conn, "alice", &[], 1).unwrap();
        assert_eq!(
            set_user_status(&conn, "alice", Status::Inactive, 2).unwrap(),
            Some(vec![])
        );
        assert_eq!(
            set_user_status(&conn, "alice", Status::Inactive, 3).unwrap(),
            None
        );
        let n: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM audit WHERE kind = 'user-suspended'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 1);
    }

    #[test]
    fn bad_assignments_refuse_the_whole_list() {
        assert!(parse_assignments(&["a=1".into(), "b".into()]).is_err());
        assert!(parse_assignments(&["a b=1".into()]).is_err());
        assert!(parse_assignments(&[]).is_err());
        let v = parse_assignments(&["disk_encrypted=true".into()]).unwrap();
        assert_eq!(v[0].1, AttrValue::Bool(true));
    }
}
