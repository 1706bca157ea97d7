//! Identity lookup by key, and the snapshot a decision is based on.

use std::net::IpAddr;

use rusqlite::{Connection, OptionalExtension};

use std::collections::BTreeMap;

use super::parse_status;
use crate::model::{
    AttrValue, ConnectionSnapshot, DeviceSnapshot, PostureAttr, Snapshot, Status, UserSnapshot,
};
use crate::store::StoreError;

/// Who a key belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user_id: i64,
    pub user: String,
    pub user_status: Status,
    pub device_id: i64,
    pub device: String,
    pub device_status: Status,
}

impl Identity {
    /// Why this identity may not authenticate, or `None` when it may.
    pub fn refusal(&self) -> Option<String> {
        if self.user_status != Status::Active {
            return Some(format!(
                "user {} is suspended: ask an operator to run `jitca user resume {}`",
                self.user, self.user
            ));
        }
        if self.device_status != Status::Active {
            return Some(format!(
                "device {} of user {} is disabled: enrol a new key with `jitca device add`",
                self.device, self.user
            ));
        }
        None
    }
}

/// Checks, inside the caller's write transaction, that the device with id
/// `device_id` and its user are still active, and returns the user's id.
/// The decision was taken on a snapshot read before the transaction began;
/// a suspension or a disabling that committed since must win, or its
/// revocation would miss what is issued now.
pub fn still_active(conn: &Connection, device_id: i64) -> Result<i64, StoreError> {
    let row: Option<(i64, String, String, String, String)> = conn
        .prepare_cached(
            "SELECT u.id, u.name, u.status, d.name, d.status
             FROM devices d JOIN users u ON u.id = d.user_id WHERE d.id = ?1",
        )?
        .query_row([device_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .optional()?;
    match row {
        Some((uid, _, u, _, d)) if u == "active" && d == "active" => Ok(uid),
        Some((_, user, u, _, _)) if u != "active" => Err(StoreError::Refused(format!(
            "user {user} was suspended while the request was being decided"
        ))),
        Some((_, _, _, device, _)) => Err(StoreError::Refused(format!(
            "device {device} was disabled while the request was being decided"
        ))),
        None => Err(StoreError::invalid(
            "the device was removed while the request was being decided",
        )),
    }
}

/// The enrolled device (and its user) whose key has this fingerprint.
pub fn identity_by_fingerprint(
    conn: &Connection,
    fingerprint: &str,
) -> Result<Option<Identity>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT u.id, u.name, u.status, d.id, d.name, d.status
         FROM devices d JOIN users u ON u.id = d.user_id WHERE d.fingerprint = ?1",
    )?;
    let id = stmt
        .query_row([fingerprint], |r| {
            Ok(Identity {
                user_id: r.get(0)?,
                user: r.get(1)?,
                user_status: parse_status(&r.get::<_, String>(2)?),
                device_id: r.get(3)?,
                device: r.get(4)?,
                device_status: parse_status(&r.get::<_, String>(5)?),
            })
        })
        .optional()?;
    Ok(id)
}

/// The snapshot's query. Each row: its part (0 the device and its user, 1 a
/// group, 2 a user attribute, 3 a posture attribute), then that part's
/// columns.
const SNAPSHOT: &str = "
    SELECT 0, u.name, u.status, d.name, d.fingerprint, d.key_type, d.status
      FROM devices d JOIN users u ON u.id = d.user_id WHERE d.id = ?1
    UNION ALL
    SELECT 1, g.grp, NULL, NULL, NULL, NULL, NULL
      FROM devices d JOIN user_groups g ON g.user_id = d.user_id WHERE d.id = ?1
    UNION ALL
    SELECT 2, a.attr, a.value, NULL, NULL, NULL, NULL
      FROM devices d JOIN user_attributes a ON a.user_id = d.user_id WHERE d.id = ?1
    UNION ALL
    SELECT 3, p.attr, p.value, p.reported_at, NULL, NULL, NULL
      FROM posture p WHERE p.device_id = ?1";

/// Takes the snapshot of a device, its user and the connection, as they are
/// now. Read by one statement, so that the parts agree with each other (a
/// statement reads one state of the database) and the read costs one
/// query on the request path instead of one per part.
pub fn take_snapshot(
    conn: &mut Connection,
    device_id: i64,
    peer: IpAddr,
    at: i64,
    policy_sha256: &str,
) -> Result<Snapshot, StoreError> {
    let mut stmt = conn.prepare_cached(SNAPSHOT)?;
    let mut rows = stmt.query([device_id])?;
    let mut found = None;
    let (mut groups, mut attributes, mut posture) = (Vec::new(), BTreeMap::new(), BTreeMap::new());
    while let Some(r) = rows.next()? {
        match r.get::<_, i64>(0)? {
            0 => {
                found = Some((
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, String>(6)?,
                ))
            }
            1 => groups.push(r.get::<_, String>(1)?),
            2 => {
                if let Some(value) = AttrValue::from_stored(&r.get::<_, String>(2)?) {
                    attributes.insert(r.get::<_, String>(1)?, value);
                }
            }
            _ => {
                if let Some(value) = AttrValue::from_stored(&r.get::<_, String>(2)?) {
                    let reported_at = r.get(3)?;
                    posture.insert(r.get::<_, String>(1)?, PostureAttr { value, reported_at });
                }
            }
        }
    }
    let (user, ustatus, device, fingerprint, key_type, dstatus) = found.ok_or_else(|| {
        StoreError::invalid("the device was removed while the request was running")
    })?;
    groups.sort_unstable();
    Ok(Snapshot {
        user: UserSnapshot {
            name: user,
            status: parse_status(&ustatus),
            groups,
            attributes,
        },
        device: DeviceSnapshot {
            name: device,
            fingerprint,
            key_type,
            status: parse_status(&dstatus),
            posture,
        },
        connection: ConnectionSnapshot { peer, at },
        policy_sha256: policy_sha256.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::db;
    use super::super::*;
    use super::*;
    use crate::model::AttrValue;

    /// Enrols a device of `user` with key fingerprint `fp`.
    fn enrol(conn: &Connection, user: &str, device: &str, fp: &str) {
        let key = NewDevice {
            fingerprint: fp,
            key_type: "ssh-ed25519",
            public_key: "k",
            label: "l",
        };
        add_device(conn, user, device, &key, 1).unwrap();
    }

    #[test]
    fn snapshot_holds_groups_attributes_and_posture() {
        let (_d, mut conn) = db();
        add_user(&conn, "alice", &["dba".into()], 1).unwrap();
        set_user_attributes(
            &conn,
            "alice",
            &[("team".into(), AttrValue::Text("db".into()))],
            1,
        )
        .unwrap();
        enrol(&conn, "alice", "mbp", "SHA256:f");
        set_posture(
            &conn,
            "mbp",
            &[("disk_encrypted".into(), AttrValue::Bool(true))],
            5,
        )
        .unwrap();
        let id = identity_by_fingerprint(&conn, "SHA256:f").unwrap().unwrap();
        assert_eq!(id.refusal(), None);
        let s = take_snapshot(
            &mut conn,
            id.device_id,
            "127.0.0.1".parse().unwrap(),
            9,
            "abc",
        )
        .unwrap();
        assert_eq!(s.user.groups, vec!["dba"]);
        assert_eq!(s.user.attributes["team"], AttrValue::Text("db".into()));
        assert_eq!(s.device.posture["disk_encrypted"].reported_at, 5);
        assert_eq!(s.policy_sha256, "abc");
        assert_eq!(still_active(&conn, id.device_id).unwrap(), id.user_id);
        set_user_status(&conn, "alice", Status::Inactive, 10).unwrap();
        assert!(
            matches!(
                still_active(&conn, id.device_id),
                Err(StoreError::Refused(_))
            ),
            "a suspension wins inside the write"
        );
        let id = identity_by_fingerprint(&conn, "SHA256:f").unwrap().unwrap();
        assert!(id.refusal().unwrap().contains("suspended"));
    }

    #[test]
    fn snapshot_sorts_groups_and_reads_by_key_lookups_only() {
        let (_d, mut conn) = db();
        add_user(&conn, "bob", &["ops".into(), "dba".into(), "dev".into()], 1).unwrap();
        enrol(&conn, "bob", "bob-mbp", "SHA256:b");
        set_posture(
            &conn,
            "bob-mbp",
            &[
                ("os_version".into(), AttrValue::Text("14.6".into())),
                ("disk_encrypted".into(), AttrValue::Bool(true)),
            ],
            5,
        )
        .unwrap();
        let id = identity_by_fingerprint(&conn, "SHA256:b").unwrap().unwrap();
        let peer = "127.0.0.1".parse().unwrap();
        let s = take_snapshot(&mut conn, id.device_id, peer, 9, "abc").unwrap();
        assert_eq!(s.user.groups, ["dba", "dev", "ops"]);
        assert!(s.user.attributes.is_empty());
        assert_eq!(s.device.posture.len(), 2);
        assert_eq!(s.device.name, "bob-mbp");

        let err = take_snapshot(&mut conn, id.device_id + 100, peer, 9, "abc").unwrap_err();
        assert!(err.to_string().contains("removed"), "{err}");

        // The one statement is on the request path: no part of it may scan.
        let steps = crate::store::query_plan(&conn, SNAPSHOT);
        assert!(steps.iter().all(|s| !s.contains("SCAN")), "{steps:?}");
    }
}
