//! The append-only, hash-chained audit log.
//!
//! Every decision (issued, denied, refused at authentication) and every
//! inventory change is one record. Records are written inside the same
//! transaction as the change they describe, so there is never a certificate
//! without its record. Audit records are not log lines: they live in the
//! database, and `jitca audit` reads them.

pub mod body;
pub mod chain;

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use crate::store::StoreError;
pub use body::Sealed;

/// The format new records are written in (the `format` column): the body
/// stored compressed, the chain hashing its digest. Format 1, the body as
/// text hashed whole, is still read and verified.
pub const FORMAT: i64 = 2;

/// A record about to be appended.
#[derive(Debug, Clone, Default)]
pub struct Event {
    pub kind: String,
    pub user: Option<String>,
    pub device: Option<String>,
    pub role: Option<String>,
    pub request_id: Option<String>,
    pub body: serde_json::Value,
}

impl Event {
    pub fn new(kind: &str, body: serde_json::Value) -> Event {
        Event {
            kind: kind.to_string(),
            body,
            ..Event::default()
        }
    }

    pub fn user(mut self, user: &str) -> Event {
        self.user = Some(user.to_string());
        self
    }

    pub fn device(mut self, device: &str) -> Event {
        self.device = Some(device.to_string());
        self
    }

    pub fn role(mut self, role: &str) -> Event {
        self.role = Some(role.to_string());
        self
    }
}

/// A stored record.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    pub seq: i64,
    pub at: i64,
    pub kind: String,
    pub user: Option<String>,
    pub device: Option<String>,
    pub role: Option<String>,
    pub request_id: Option<String>,
    pub body: serde_json::Value,
    pub prev_hash: String,
    pub hash: String,
}

/// Appends `event` at time `at` inside the caller's transaction and returns
/// its sequence number. The caller's transaction must hold the write lock
/// (`BEGIN IMMEDIATE`), so the chain's head cannot move underneath it.
pub fn append(conn: &Connection, at: i64, event: &Event) -> Result<i64, StoreError> {
    append_sealed(conn, at, event, &Sealed::of(&chain::canonical(&event.body)))
}

/// [`append`] with the record's body already sealed (`event.body` itself is
/// not read): an issuance encodes its body from typed records, without a
/// JSON tree.
pub fn append_sealed(
    conn: &Connection,
    at: i64,
    event: &Event,
    body: &Sealed,
) -> Result<i64, StoreError> {
    // Cached statements: the daemon's writer appends for every decision.
    let head: Option<(i64, String)> = conn
        .prepare_cached("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let (seq, prev_hash) = match head {
        Some((seq, hash)) => (seq + 1, hash),
        None => (1, chain::GENESIS.to_string()),
    };
    let hash = chain::hash(&chain::Fields {
        seq,
        at,
        kind: &event.kind,
        user: event.user.as_deref(),
        device: event.device.as_deref(),
        role: event.role.as_deref(),
        request_id: event.request_id.as_deref(),
        body: chain::BodyHash::Digest(&body.digest),
        prev_hash: &prev_hash,
    });
    conn.prepare_cached(
        "INSERT INTO audit (seq, at, kind, user, device, role, request_id, body, prev_hash, hash,
                            format)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?
    .execute(params![
        seq,
        at,
        event.kind,
        event.user,
        event.device,
        event.role,
        event.request_id,
        body.stored,
        prev_hash,
        hash,
        FORMAT
    ])?;
    Ok(seq)
}

/// Which records `list` returns.
#[derive(Debug, Default)]
pub struct Filter {
    pub user: Option<String>,
    pub since: Option<i64>,
    pub kind: Option<String>,
    /// Only records flagged as uses of a break-glass role.
    pub break_glass: bool,
}

const COLUMNS: &str =
    "seq, at, kind, user, device, role, request_id, body, prev_hash, hash, format";

/// The text of the body in column 7 of a row, by the record's format
/// (column 10); `Err` names what is wrong with it.
fn body_text(r: &rusqlite::Row) -> rusqlite::Result<Result<String, String>> {
    use rusqlite::types::ValueRef;
    let ValueRef::Integer(format) = r.get_ref(10)? else {
        return Ok(Err(
            "its format is not a number: the record was altered".into()
        ));
    };
    Ok(match (format, r.get_ref(7)?) {
        (1, ValueRef::Text(t)) => {
            String::from_utf8(t.to_vec()).map_err(|_| "the body is not UTF-8 text".into())
        }
        (FORMAT, ValueRef::Blob(b)) => body::open(b),
        (1 | FORMAT, _) => Err(format!(
            "the body is not stored as format {format} stores it: the record was altered"
        )),
        _ => Err(format!("unknown record format {format}")),
    })
}

fn record(r: &rusqlite::Row) -> rusqlite::Result<Record> {
    let body = match body_text(r)? {
        Ok(text) => serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
        // Listed as it is found; `audit verify` names the record.
        Err(problem) => serde_json::Value::String(format!("(unreadable body: {problem})")),
    };
    Ok(Record {
        seq: r.get(0)?,
        at: r.get(1)?,
        kind: r.get(2)?,
        user: r.get(3)?,
        device: r.get(4)?,
        role: r.get(5)?,
        request_id: r.get(6)?,
        body,
        prev_hash: r.get(8)?,
        hash: r.get(9)?,
    })
}

/// Records matching `filter`, oldest first (see [`for_each`]).
pub fn list(conn: &Connection, filter: &Filter) -> Result<Vec<Record>, StoreError> {
    let mut out = Vec::new();
    for_each(conn, filter, |r| {
        out.push(r);
        Ok::<_, StoreError>(())
    })?;
    Ok(out)
}

/// Calls `each` with every record matching `filter`, oldest first, one
/// record in memory at a time (the log grows by a record per decision).
///
/// With `since`, the records are found through the index by time and come
/// in order of time, then sequence; without it, the whole log is read in
/// sequence order. Only the filters given are in the query, so that
/// SQLite can use that index: a filter written as `(?1 IS NULL OR ...)`
/// makes it read every record whatever is asked. There is no index by
/// user: it cost each issuance a page write of its own (one leaf per
/// user in every commit), so `user` is checked on the records read.
pub fn for_each<E: From<StoreError>>(
    conn: &Connection,
    filter: &Filter,
    mut each: impl FnMut(Record) -> Result<(), E>,
) -> Result<(), E> {
    let (sql, args) = query(filter);
    let mut stmt = conn.prepare(&sql).map_err(StoreError::from)?;
    let mut rows = stmt
        .query(rusqlite::params_from_iter(args))
        .map_err(StoreError::from)?;
    while let Some(row) = rows.next().map_err(StoreError::from)? {
        let record = record(row).map_err(StoreError::from)?;
        // The flag is in the (compressed) body: checked once decoded.
        if filter.break_glass && record.body.get("break_glass") != Some(&true.into()) {
            continue;
        }
        each(record)?;
    }
    Ok(())
}

/// The query of [`for_each`] and its parameters: only the filters given.
fn query(filter: &Filter) -> (String, Vec<rusqlite::types::Value>) {
    let mut sql = format!("SELECT {COLUMNS} FROM audit WHERE 1");
    let mut args: Vec<rusqlite::types::Value> = Vec::new();
    let mut bind = |sql: &mut String, clause: &str, value: rusqlite::types::Value| {
        args.push(value);
        sql.push_str(&clause.replace('?', &format!("?{}", args.len())));
    };
    if let Some(since) = filter.since {
        bind(&mut sql, " AND at >= ?", since.into());
    }
    if let Some(user) = &filter.user {
        bind(&mut sql, " AND user = ?", user.clone().into());
    }
    if let Some(kind) = &filter.kind {
        bind(&mut sql, " AND kind = ?", kind.clone().into());
    }
    if filter.break_glass {
        // Only issuances are flagged; the flag itself is checked on each.
        sql.push_str(" AND kind = 'issued'");
    }
    sql.push_str(if filter.since.is_some() {
        " ORDER BY at, seq"
    } else {
        " ORDER BY seq"
    });
    (sql, args)
}

/// One record by sequence number.
pub fn get(conn: &Connection, seq: i64) -> Result<Option<Record>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM audit WHERE seq = ?1");
    Ok(conn.query_row(&sql, [seq], record).optional()?)
}

/// The outcome of walking the chain.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every record matches; `head` is the last record's (seq, hash).
    Intact {
        records: u64,
        head: Option<(i64, String)>,
    },
    /// The first record that does not match, and why.
    Broken { seq: i64, problem: String },
}

/// Walks the whole chain from the first record.
pub fn verify(conn: &Connection) -> Result<Verdict, StoreError> {
    let mut stmt = conn.prepare(&format!("SELECT {COLUMNS} FROM audit ORDER BY seq"))?;
    let mut rows = stmt.query([])?;
    let mut expected_seq = 1;
    let mut prev = chain::GENESIS.to_string();
    let mut count = 0u64;
    while let Some(row) = rows.next()? {
        let seq: i64 = row.get(0)?;
        // A column of the wrong type is tampering too: name the record.
        let text = |i: usize| -> Result<Option<String>, ()> {
            match row.get_ref(i).map_err(|_| ())? {
                rusqlite::types::ValueRef::Null => Ok(None),
                rusqlite::types::ValueRef::Text(t) => std::str::from_utf8(t)
                    .map(|s| Some(s.to_string()))
                    .map_err(|_| ()),
                _ => Err(()),
            }
        };
        let fields = (|| -> Result<_, ()> {
            let need = |v: Option<String>| v.ok_or(());
            Ok((
                row.get::<_, i64>(10).map_err(|_| ())?,
                need(text(8)?)?,
                need(text(9)?)?,
                text(3)?,
                text(4)?,
                text(5)?,
                text(6)?,
                need(text(2)?)?,
                row.get::<_, i64>(1).map_err(|_| ())?,
            ))
        })();
        let Ok((format, prev_hash, stored, user, device, role, request_id, kind, at)) = fields
        else {
            return Ok(Verdict::Broken {
                seq,
                problem: "a field holds a value of the wrong type: the record was altered".into(),
            });
        };
        let body = match body_text(row)? {
            Ok(body) => body,
            Err(problem) => return Ok(Verdict::Broken { seq, problem }),
        };
        let digest;
        let body = if format == 1 {
            chain::BodyHash::Text(&body)
        } else {
            digest = body::digest(&body);
            chain::BodyHash::Digest(&digest)
        };
        if seq != expected_seq {
            return Ok(Verdict::Broken {
                seq,
                problem: format!(
                    "expected record {expected_seq} next, found {seq}: records were removed"
                ),
            });
        }
        if prev_hash != prev {
            return Ok(Verdict::Broken {
                seq,
                problem: "its prev_hash does not match the hash of the record before it".into(),
            });
        }
        let computed = chain::hash(&chain::Fields {
            seq,
            at,
            kind: &kind,
            user: user.as_deref(),
            device: device.as_deref(),
            role: role.as_deref(),
            request_id: request_id.as_deref(),
            body,
            prev_hash: &prev_hash,
        });
        if computed != stored {
            return Ok(Verdict::Broken {
                seq,
                problem: "its contents do not match its hash: the record was altered".into(),
            });
        }
        prev = stored;
        expected_seq += 1;
        count += 1;
    }
    let head = (count > 0).then(|| (expected_seq - 1, prev));
    Ok(Verdict::Intact {
        records: count,
        head,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn db() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let (conn, _) = crate::store::open(&dir.path().join("a.db")).unwrap();
        (dir, conn)
    }

    fn fill(conn: &Connection, n: i64) {
        for i in 0..n {
            let ev = Event::new("denied", json!({"i": i})).user("alice");
            append(conn, 100 + i, &ev).unwrap();
        }
    }

    /// Appends a record as format 1 wrote it: the body as text, hashed
    /// whole (the `format` column left at its default).
    fn append_format_1(conn: &Connection, at: i64, body: &str) {
        let (seq, prev): (i64, String) = conn
            .query_row(
                "SELECT COALESCE(MAX(seq), 0) + 1, COALESCE((SELECT hash FROM audit ORDER BY seq DESC LIMIT 1), ?1) FROM audit",
                [chain::GENESIS],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        let hash = chain::hash(&chain::Fields {
            seq,
            at,
            kind: "denied",
            user: Some("alice"),
            device: None,
            role: None,
            request_id: None,
            body: chain::BodyHash::Text(body),
            prev_hash: &prev,
        });
        conn.execute(
            "INSERT INTO audit (seq, at, kind, user, body, prev_hash, hash)
             VALUES (?1, ?2, 'denied', 'alice', ?3, ?4, ?5)",
            params![seq, at, body, prev, hash],
        )
        .unwrap();
    }

    #[test]
    fn records_of_format_1_still_verify_and_read_and_the_chain_goes_on_after_them() {
        let (_d, conn) = db();
        append_format_1(&conn, 100, r#"{"i":0}"#);
        append_format_1(&conn, 101, r#"{"i":1}"#);
        fill(&conn, 2);
        let formats: Vec<i64> = conn
            .prepare("SELECT format FROM audit ORDER BY seq")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(formats, [1, 1, FORMAT, FORMAT]);
        assert!(matches!(
            verify(&conn).unwrap(),
            Verdict::Intact { records: 4, .. }
        ));
        let bodies: Vec<serde_json::Value> = list(&conn, &Filter::default())
            .unwrap()
            .into_iter()
            .map(|r| r.body)
            .collect();
        assert_eq!(
            bodies,
            [
                json!({"i": 0}),
                json!({"i": 1}),
                json!({"i": 0}),
                json!({"i": 1})
            ]
        );
    }

    #[test]
    fn a_record_over_a_mebibyte_is_read_back_and_verifies() {
        // A revocation of 160,000 live certificates wrote such a record,
        // and verify then called it tampered.
        let (_d, conn) = db();
        fill(&conn, 1);
        let serials: Vec<u64> = (1..200_000).collect();
        append(
            &conn,
            200,
            &Event::new("revoked", json!({ "serials": serials })),
        )
        .unwrap();
        fill(&conn, 1);
        assert!(matches!(
            verify(&conn).unwrap(),
            Verdict::Intact { records: 3, .. }
        ));
        let r = get(&conn, 2).unwrap().unwrap();
        assert_eq!(r.body["serials"].as_array().map(Vec::len), Some(199_999));
    }

    #[test]
    fn a_format_that_is_not_a_number_is_listed_as_unreadable_and_named_by_verify() {
        let (_d, conn) = db();
        fill(&conn, 3);
        conn.execute_batch(
            "DROP TRIGGER audit_append_only_update;
             UPDATE audit SET format = 'abc' WHERE seq = 2;",
        )
        .unwrap();
        let listed = list(&conn, &Filter::default()).unwrap();
        assert_eq!(listed.len(), 3, "the listing goes on past it");
        assert!(listed[1].body.as_str().unwrap().contains("unreadable body"));
        assert!(matches!(
            verify(&conn).unwrap(),
            Verdict::Broken { seq: 2, .. }
        ));
    }

    #[test]
    fn a_record_passed_off_as_the_other_format_is_named() {
        let (_d, conn) = db();
        fill(&conn, 3);
        // Record 2's very text, stored as format 1 stores it, hash untouched.
        conn.execute_batch("DROP TRIGGER audit_append_only_update;")
            .unwrap();
        conn.execute(
            "UPDATE audit SET body = ?1, format = 1 WHERE seq = 2",
            [r#"{"i":1}"#],
        )
        .unwrap();
        assert!(matches!(
            verify(&conn).unwrap(),
            Verdict::Broken { seq: 2, .. }
        ));
    }

    #[test]
    fn a_body_claiming_more_than_a_record_may_hold_is_named_not_read() {
        let (_d, conn) = db();
        fill(&conn, 2);
        conn.execute_batch(
            "DROP TRIGGER audit_append_only_update;
             UPDATE audit SET body = x'ffffffff00' WHERE seq = 2;",
        )
        .unwrap();
        match verify(&conn).unwrap() {
            Verdict::Broken { seq: 2, problem } => assert!(problem.contains("claims"), "{problem}"),
            v => panic!("{v:?}"),
        }
        // Listing still shows it, saying what is wrong with it.
        let r = get(&conn, 2).unwrap().unwrap();
        assert!(
            r.body.as_str().unwrap().contains("unreadable body"),
            "{:?}",
            r.body
        );
    }

    #[test]
    fn break_glass_records_can_be_listed_alone() {
        let (_d, conn) = db();
        fill(&conn, 2);
        append(
            &conn,
            300,
            &Event::new("issued", json!({"break_glass": true})),
        )
        .unwrap();
        let only = list(
            &conn,
            &Filter {
                break_glass: true,
                ..Filter::default()
            },
        )
        .unwrap();
        assert_eq!(only.iter().map(|r| r.seq).collect::<Vec<_>>(), [3]);
    }

    #[test]
    fn listing_applies_every_filter_given_oldest_first() {
        let (_d, conn) = db();
        for (at, kind, user) in [
            (100, "denied", "alice"),
            (200, "issued", "bob"),
            (300, "issued", "alice"),
            (400, "denied", "alice"),
            (500, "issued", "alice"),
        ] {
            append(&conn, at, &Event::new(kind, json!({})).user(user)).unwrap();
        }
        let seqs = |filter: Filter| -> Vec<i64> {
            list(&conn, &filter)
                .unwrap()
                .iter()
                .map(|r| r.seq)
                .collect()
        };
        assert_eq!(seqs(Filter::default()), [1, 2, 3, 4, 5]);
        assert_eq!(
            seqs(Filter {
                user: Some("alice".into()),
                ..Filter::default()
            }),
            [1, 3, 4, 5]
        );
        assert_eq!(
            seqs(Filter {
                user: Some("alice".into()),
                since: Some(300),
                kind: Some("issued".into()),
                ..Filter::default()
            }),
            [3, 5]
        );
    }

    #[test]
    fn listing_since_a_time_reads_only_that_span_through_the_index_by_time() {
        let (_d, conn) = db();
        let filter = Filter {
            since: Some(1),
            user: Some("alice".into()),
            kind: Some("issued".into()),
            ..Filter::default()
        };
        let steps = crate::store::query_plan(&conn, &query(&filter).0);
        assert!(
            steps
                .iter()
                .any(|s| s.contains("USING INDEX audit_by_at (at>?)")),
            "{steps:?}"
        );
        assert!(
            !steps.iter().any(|s| s.contains("TEMP B-TREE")),
            "the index gives the order: nothing to sort ({steps:?})"
        );
    }

    #[test]
    fn appending_writes_no_index_by_user() {
        // Each commit rewrote one leaf of such an index per user in it,
        // most of what an issuance wrote, for a query that did not use it.
        let (_d, conn) = db();
        assert_eq!(crate::store::indexes_of(&conn, "audit"), ["audit_by_at"]);
    }

    #[test]
    fn an_untouched_chain_verifies() {
        let (_d, conn) = db();
        fill(&conn, 5);
        match verify(&conn).unwrap() {
            Verdict::Intact { records, head } => {
                assert_eq!(records, 5);
                assert_eq!(head.unwrap().0, 5);
            }
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn an_altered_body_names_that_record() {
        let (_d, conn) = db();
        fill(&conn, 5);
        conn.execute_batch(
            "DROP TRIGGER audit_append_only_update;
             UPDATE audit SET body = '{\"i\":99}' WHERE seq = 3;",
        )
        .unwrap();
        assert!(matches!(
            verify(&conn).unwrap(),
            Verdict::Broken { seq: 3, .. }
        ));
    }

    #[test]
    fn a_body_of_the_wrong_type_names_its_record_instead_of_failing() {
        let (_d, conn) = db();
        fill(&conn, 3);
        conn.execute_batch(
            "DROP TRIGGER audit_append_only_update;
             UPDATE audit SET body = x'00ff' WHERE seq = 2;",
        )
        .unwrap();
        assert!(matches!(
            verify(&conn).unwrap(),
            Verdict::Broken { seq: 2, .. }
        ));
    }

    #[test]
    fn a_removed_record_is_found() {
        let (_d, conn) = db();
        fill(&conn, 5);
        conn.execute_batch(
            "DROP TRIGGER audit_append_only_delete; DELETE FROM audit WHERE seq = 2;",
        )
        .unwrap();
        assert!(matches!(
            verify(&conn).unwrap(),
            Verdict::Broken { seq: 3, .. }
        ));
    }

    #[test]
    fn a_rehashed_record_still_breaks_the_next_link() {
        let (_d, conn) = db();
        fill(&conn, 3);
        // Recompute record 2's own hash after altering it: record 3 still
        // points at the old hash.
        let r = get(&conn, 2).unwrap().unwrap();
        let body = Sealed::of(r#"{"i":42}"#);
        let h = chain::hash(&chain::Fields {
            seq: 2,
            at: r.at,
            kind: &r.kind,
            user: r.user.as_deref(),
            device: None,
            role: None,
            request_id: None,
            body: chain::BodyHash::Digest(&body.digest),
            prev_hash: &r.prev_hash,
        });
        conn.execute_batch("DROP TRIGGER audit_append_only_update;")
            .unwrap();
        conn.execute(
            "UPDATE audit SET body = ?1, hash = ?2 WHERE seq = 2",
            params![body.stored, h],
        )
        .unwrap();
        assert!(matches!(
            verify(&conn).unwrap(),
            Verdict::Broken { seq: 3, .. }
        ));
    }
}
