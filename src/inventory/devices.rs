//! Devices (enrolled keys) and their posture reports.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use serde_json::json;

use super::{MAX_ATTRIBUTES, bad, check_attr, check_value, operator, parse_status, user_id};
use crate::audit::{self, Event};
use crate::model::{AttrValue, PostureAttr, Status, check_name};
use crate::store::StoreError;

/// A key about to be enrolled, already checked by `ca::subject`.
pub struct NewDevice<'a> {
    pub fingerprint: &'a str,
    pub key_type: &'a str,
    pub public_key: &'a str,
    pub label: &'a str,
}

/// A device as `device list` prints it.
#[derive(Debug, Serialize)]
pub struct DeviceInfo {
    pub name: String,
    pub user: String,
    pub fingerprint: String,
    pub key_type: String,
    pub label: String,
    pub status: Status,
}

/// The id and status of a device, or an error naming it and the fix.
pub fn device_id(conn: &Connection, name: &str) -> Result<(i64, Status), StoreError> {
    conn.query_row("SELECT id, status FROM devices WHERE name = ?1", [name], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
    })
    .optional()?
    .map(|(id, s)| (id, parse_status(&s)))
    .ok_or_else(|| {
        StoreError::invalid(format!(
            "no device named {name:?}: see `jitca device list`, or enrol it with `jitca device add USER KEYFILE --name {name}`"
        ))
    })
}

/// Enrols a key as a device of `user`.
pub fn add_device(
    conn: &Connection,
    user: &str,
    name: &str,
    key: &NewDevice,
    now: i64,
) -> Result<(), StoreError> {
    check_name("device", name).map_err(bad)?;
    let (uid, _) = user_id(conn, user)?;
    let taken: Option<String> = conn
        .query_row("SELECT name FROM devices WHERE name = ?1", [name], |r| {
            r.get(0)
        })
        .optional()?;
    if taken.is_some() {
        return Err(StoreError::invalid(format!(
            "a device named {name:?} already exists: choose another --name"
        )));
    }
    let holder: Option<(String, String)> = conn
        .query_row(
            "SELECT d.name, u.name FROM devices d JOIN users u ON u.id = d.user_id WHERE d.fingerprint = ?1",
            [key.fingerprint],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    if let Some((d, u)) = holder {
        return Err(StoreError::invalid(format!(
            "key {} is already enrolled as device {d:?} of user {u:?}: one key is one device",
            key.fingerprint
        )));
    }
    conn.execute(
        "INSERT INTO devices (name, user_id, fingerprint, key_type, public_key, label, status, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'active', ?7)",
        params![name, uid, key.fingerprint, key.key_type, key.public_key, key.label, now],
    )?;
    audit::append(
        conn,
        now,
        &Event::new(
            "device-added",
            json!({"actor": operator(), "fingerprint": key.fingerprint, "key_type": key.key_type, "label": key.label}),
        )
        .user(user)
        .device(name),
    )?;
    Ok(())
}

/// Every device, by name.
pub fn list_devices(conn: &Connection) -> Result<Vec<DeviceInfo>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT d.name, u.name, d.fingerprint, d.key_type, d.label, d.status
         FROM devices d JOIN users u ON u.id = d.user_id ORDER BY d.name",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(DeviceInfo {
            name: r.get(0)?,
            user: r.get(1)?,
            fingerprint: r.get(2)?,
            key_type: r.get(3)?,
            label: r.get(4)?,
            status: parse_status(&r.get::<_, String>(5)?),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Disables a device for good and revokes its live certificates; its key
/// goes into the KRL. Returns `None` when it was already disabled, else the
/// serials revoked.
pub fn disable_device(
    conn: &Connection,
    name: &str,
    now: i64,
) -> Result<Option<Vec<u64>>, StoreError> {
    let (id, status) = device_id(conn, name)?;
    if status == Status::Inactive {
        return Ok(None);
    }
    conn.execute("UPDATE devices SET status = 'inactive' WHERE id = ?1", [id])?;
    let user: String = conn.query_row(
        "SELECT u.name FROM devices d JOIN users u ON u.id = d.user_id WHERE d.id = ?1",
        [id],
        |r| r.get(0),
    )?;
    audit::append(
        conn,
        now,
        &Event::new("device-disabled", json!({"actor": operator()}))
            .user(&user)
            .device(name),
    )?;
    let target = crate::ca::revocation::Target::Device(name.to_string());
    crate::ca::revocation::cancel_requests(conn, &target, Some("device disabled"), now)?;
    crate::ca::revocation::revoke(conn, &target, Some("device disabled"), now).map(Some)
}

/// Stores posture attributes reported at `reported_at`. An attribute already
/// stored with a newer report keeps its newer value; returns how many did.
fn store_posture(
    conn: &Connection,
    device: i64,
    attrs: &BTreeMap<String, AttrValue>,
    reported_at: i64,
) -> Result<usize, StoreError> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO posture (device_id, attr, value, reported_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (device_id, attr) DO UPDATE SET value = excluded.value, reported_at = excluded.reported_at
         WHERE excluded.reported_at >= posture.reported_at",
    )?;
    let mut kept = 0;
    for (k, v) in attrs {
        if stmt.execute(params![device, k, v.to_json(), reported_at])? == 0 {
            kept += 1;
        }
    }
    Ok(kept)
}

/// `posture set`: attributes reported now by the operator.
pub fn set_posture(
    conn: &Connection,
    device: &str,
    attrs: &[(String, AttrValue)],
    now: i64,
) -> Result<(), StoreError> {
    let (id, _) = device_id(conn, device)?;
    let map: BTreeMap<String, AttrValue> = attrs.iter().cloned().collect();
    store_posture(conn, id, &map, now)?;
    audit::append(
        conn,
        now,
        &Event::new(
            "posture-set",
            json!({"actor": operator(), "attributes": map, "reported_at": now}),
        )
        .device(device),
    )?;
    Ok(())
}

/// One device's posture, by attribute.
pub fn posture(
    conn: &Connection,
    device_id: i64,
) -> Result<BTreeMap<String, PostureAttr>, StoreError> {
    let mut stmt =
        conn.prepare_cached("SELECT attr, value, reported_at FROM posture WHERE device_id = ?1")?;
    let rows = stmt.query_map([device_id], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
        ))
    })?;
    let mut out = BTreeMap::new();
    for row in rows {
        let (k, v, at) = row?;
        if let Some(value) = AttrValue::from_stored(&v) {
            out.insert(
                k,
                PostureAttr {
                    value,
                    reported_at: at,
                },
            );
        }
    }
    Ok(out)
}

/// The largest posture import file accepted.
pub const MAX_IMPORT_BYTES: u64 = 64 << 20;
/// The longest line of a posture import.
const MAX_LINE_BYTES: usize = 1 << 20;
/// How far in the future a report time may lie (clock skew) before it is refused.
const MAX_FUTURE_SECS: i64 = 300;

/// One parsed line of a posture import.
pub struct Report {
    pub line: usize,
    pub device: String,
    pub reported_at: i64,
    pub attributes: BTreeMap<String, AttrValue>,
}

/// Reads and checks a whole posture import file. Nothing is stored: a bad
/// line refuses the file, naming the line.
pub fn read_import(path: &Path, now: i64) -> Result<Vec<Report>, StoreError> {
    let shown = path.display();
    let file = std::fs::File::open(path)
        .map_err(|e| StoreError::invalid(format!("cannot read posture file {shown}: {e}")))?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if len > MAX_IMPORT_BYTES {
        return Err(StoreError::invalid(format!(
            "posture file {shown} is {len} bytes, over the {MAX_IMPORT_BYTES}-byte limit: split it"
        )));
    }
    let mut reader = std::io::BufReader::new(std::io::Read::take(file, MAX_IMPORT_BYTES + 1));
    let mut reports = Vec::new();
    let mut buf = Vec::new();
    let mut line = 0;
    loop {
        buf.clear();
        line += 1;
        let n = std::io::Read::take(&mut reader, MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut buf)
            .map_err(|e| StoreError::invalid(format!("cannot read posture file {shown}: {e}")))?;
        if n == 0 {
            break;
        }
        let at = |msg: String| {
            StoreError::invalid(format!("{shown}:{line}: {msg}; nothing was imported"))
        };
        if buf.len() > MAX_LINE_BYTES {
            return Err(at(format!("line is longer than {MAX_LINE_BYTES} bytes")));
        }
        let text = std::str::from_utf8(&buf).map_err(|_| at("line is not UTF-8".into()))?;
        if text.trim().is_empty() {
            continue;
        }
        reports.push(parse_report(text, line, now).map_err(at)?);
    }
    Ok(reports)
}

/// One line of a posture import, as written. Duplicate keys are an error
/// (a line naming two devices must not update the last one silently).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReport {
    device: String,
    reported_at: serde_json::Value,
    attributes: serde_json::Map<String, serde_json::Value>,
}

fn parse_report(text: &str, line: usize, now: i64) -> Result<Report, String> {
    let raw: RawReport = serde_json::from_str(text).map_err(|e| {
        format!("not a posture report ({e}): expected {{\"device\": ..., \"reported_at\": ..., \"attributes\": {{...}}}}")
    })?;
    let device = raw.device.as_str();
    check_name("device", device).map_err(|e| e.to_string())?;
    let reported_at = match &raw.reported_at {
        serde_json::Value::Number(n) => n
            .as_i64()
            .ok_or("\"reported_at\" must be whole unix seconds")?,
        serde_json::Value::String(s) => parse_time(s)?,
        _ => {
            return Err("\"reported_at\" must be an RFC 3339 UTC time like 2026-12-04T10:00:00Z, or unix seconds".into());
        }
    };
    if reported_at > now + MAX_FUTURE_SECS {
        return Err(format!(
            "\"reported_at\" {} lies in the future: check the exporter's clock",
            raw.reported_at
        ));
    }
    // A report a little ahead (clock skew) counts as reported now: a time in
    // the future would otherwise outrank every later report.
    let reported_at = reported_at.min(now);
    if raw.attributes.len() > MAX_ATTRIBUTES {
        return Err(format!(
            "{} attributes in one report: the limit is {MAX_ATTRIBUTES}",
            raw.attributes.len()
        ));
    }
    let mut attributes = BTreeMap::new();
    for (k, v) in &raw.attributes {
        check_attr(k).map_err(|e| e.to_string())?;
        let value = AttrValue::from_json(v)
            .ok_or_else(|| format!("attribute {k:?} must be a boolean, number or string"))?;
        check_value(k, &value).map_err(|e| e.to_string())?;
        attributes.insert(k.clone(), value);
    }
    Ok(Report {
        line,
        device: device.to_string(),
        reported_at,
        attributes,
    })
}

/// Parses an RFC 3339 time in UTC to unix seconds.
pub fn parse_time(s: &str) -> Result<i64, String> {
    let t = humantime::parse_rfc3339(s).map_err(|e| {
        format!("time {s:?} is not an RFC 3339 UTC time (e.g. 2026-12-04T10:00:00Z): {e}")
    })?;
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .map_err(|_| format!("time {s:?} lies before 1970"))
}

/// What an import stored.
#[derive(Debug, PartialEq, Eq)]
pub struct Imported {
    pub reports: usize,
    /// Attributes left as they were because a newer report was stored.
    pub kept_newer: usize,
}

/// Stores checked reports; an unknown device refuses all of them.
pub fn import_posture(
    conn: &Connection,
    file: &str,
    reports: &[Report],
    now: i64,
) -> Result<Imported, StoreError> {
    let mut ids = Vec::with_capacity(reports.len());
    for r in reports {
        let (id, _) = device_id(conn, &r.device).map_err(|e| {
            StoreError::invalid(format!("{file}:{}: {e}; nothing was imported", r.line))
        })?;
        ids.push(id);
    }
    let mut kept_newer = 0;
    for (r, id) in reports.iter().zip(ids) {
        kept_newer += store_posture(conn, id, &r.attributes, r.reported_at)?;
    }
    let devices: std::collections::BTreeSet<&str> =
        reports.iter().map(|r| r.device.as_str()).collect();
    audit::append(
        conn,
        now,
        &Event::new(
            "posture-imported",
            json!({"actor": operator(), "file": file, "reports": reports.len(),
                   "kept_newer": kept_newer, "devices": devices}),
        ),
    )?;
    Ok(Imported {
        reports: reports.len(),
        kept_newer,
    })
}

#[cfg(test)]
mod tests {
    use super::super::add_user;
    use super::super::tests::db;
    use super::*;

    fn enrol(conn: &Connection) {
        add_user(conn, "alice", &[], 1).unwrap();
        let key = NewDevice {
            fingerprint: "SHA256:x",
            key_type: "ssh-ed25519",
            public_key: "k",
            label: "l",
        };
        add_device(conn, "alice", "mbp", &key, 1).unwrap();
    }

    #[test]
    fn one_key_is_one_device() {
        let (_d, conn) = db();
        enrol(&conn);
        let key = NewDevice {
            fingerprint: "SHA256:x",
            key_type: "ssh-ed25519",
            public_key: "k",
            label: "l",
        };
        let e = add_device(&conn, "alice", "other", &key, 2).unwrap_err();
        assert!(
            e.to_string().contains("already enrolled as device \"mbp\""),
            "{e}"
        );
    }

    #[test]
    fn an_older_report_does_not_overwrite_a_newer_one() {
        let (_d, conn) = db();
        enrol(&conn);
        let (id, _) = device_id(&conn, "mbp").unwrap();
        let v = |b| BTreeMap::from([("disk_encrypted".to_string(), AttrValue::Bool(b))]);
        assert_eq!(store_posture(&conn, id, &v(true), 100).unwrap(), 0);
        assert_eq!(
            store_posture(&conn, id, &v(false), 50).unwrap(),
            1,
            "the older value is reported as kept"
        );
        let p = posture(&conn, id).unwrap();
        assert_eq!(
            p["disk_encrypted"],
            PostureAttr {
                value: AttrValue::Bool(true),
                reported_at: 100
            }
        );
    }

    #[test]
    fn a_bad_import_line_names_its_number_and_imports_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.jsonl");
        std::fs::write(
            &path,
            "{\"device\":\"mbp\",\"reported_at\":\"2026-12-01T00:00:00Z\",\"attributes\":{\"a\":true}}\n\n{\"device\":\"mbp\",\"attributes\":{}}\n",
        )
        .unwrap();
        let e = read_import(&path, 1_800_000_000).err().unwrap().to_string();
        assert!(e.contains("p.jsonl:3:"), "{e}");
        assert!(e.contains("reported_at"), "{e}");
    }

    #[test]
    fn a_report_slightly_ahead_counts_as_now_and_cannot_outrank_later_ones() {
        let r = parse_report(
            r#"{"device":"d","reported_at":1200,"attributes":{"x":true}}"#,
            1,
            1000,
        )
        .unwrap();
        assert_eq!(r.reported_at, 1000);
    }

    #[test]
    fn a_report_with_a_duplicate_key_or_a_zoneless_time_is_refused() {
        let dup = r#"{"device":"a","reported_at":1,"attributes":{},"device":"b"}"#;
        assert!(
            parse_report(dup, 1, 1000)
                .err()
                .unwrap()
                .contains("duplicate field")
        );
        let zoneless = r#"{"device":"a","reported_at":"2026-12-04 10:00:00","attributes":{}}"#;
        assert!(parse_report(zoneless, 1, 2_000_000_000).is_err());
        let hidden =
            "{\"device\":\"a\",\"reported_at\":1,\"attributes\":{\"os\":\"mac\u{202e}os\"}}";
        assert!(parse_report(hidden, 1, 1000).is_err());
    }

    #[test]
    fn reports_from_the_future_are_refused() {
        assert!(
            parse_report(
                r#"{"device":"d","reported_at":2000,"attributes":{}}"#,
                1,
                1000
            )
            .is_err()
        );
        assert!(
            parse_report(
                r#"{"device":"d","reported_at":1000,"attributes":{"x":[1]}}"#,
                1,
                1000
            )
            .is_err()
        );
        assert!(
            parse_report(
                r#"{"device":"d","reported_at":1000,"attributes":{"x":1}}"#,
                1,
                1000
            )
            .is_ok()
        );
    }
}
