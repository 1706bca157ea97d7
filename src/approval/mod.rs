//! Requests that wait for approval, and the approvers' verdicts.
//!
//! A request moves `pending` → `approved` → `issued`, or ends `denied` or
//! `expired`. Each change runs in a write transaction (the daemon's single
//! writer), re-reads the row it changes and appends its audit record, so two
//! approvers, an approval racing a denial, or two fetches racing each other
//! always end in one consistent state. `deadline` is the end of the current
//! state: the decision timeout while pending, the fetch window once
//! approved. A row past its deadline is expired the first time anything
//! touches it, and by the daemon's sweeper.

use rand::RngExt;
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use serde_json::json;

use crate::audit::{self, Event};
use crate::store::StoreError;

/// The state of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Pending,
    Approved,
    Denied,
    Expired,
    Issued,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Approved => "approved",
            State::Denied => "denied",
            State::Expired => "expired",
            State::Issued => "issued",
        }
    }

    fn parse(s: &str) -> State {
        match s {
            "pending" => State::Pending,
            "approved" => State::Approved,
            "denied" => State::Denied,
            "issued" => State::Issued,
            _ => State::Expired,
        }
    }
}

/// A stored request.
#[derive(Debug, Clone, Serialize)]
pub struct Request {
    pub id: String,
    pub user_id: i64,
    pub user: String,
    pub device_id: i64,
    pub device: String,
    pub role: String,
    pub reason: Option<String>,
    pub ttl_secs: Option<u64>,
    pub needed: u32,
    pub state: State,
    pub created_at: i64,
    pub deadline: i64,
    pub decided_at: Option<i64>,
    /// Why it was denied or expired.
    pub outcome: Option<String>,
    pub serial: Option<u64>,
    /// The requester's snapshot when the request was made.
    pub snapshot: serde_json::Value,
}

/// One approver's verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub approver: String,
    pub device: String,
    pub approve: bool,
    pub comment: Option<String>,
    pub at: i64,
}

/// Requests one user may have pending or approved-but-unfetched at once.
pub const MAX_OPEN_PER_USER: i64 = 20;

const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// A fresh request id: `r-` and 10 base32 characters (50 random bits).
pub fn new_id() -> String {
    let mut rng = rand::rng();
    let tail: String = (0..10)
        .map(|_| ALPHABET[rng.random_range(0..32)] as char)
        .collect();
    format!("r-{tail}")
}

/// True if and only if `id` has the shape of a request id.
pub fn is_id(id: &str) -> bool {
    id.len() == 12 && id.starts_with("r-") && id.bytes().skip(2).all(|b| ALPHABET.contains(&b))
}

const COLUMNS: &str = "r.id, r.user_id, u.name, r.device_id, d.name, r.role, r.reason, r.ttl_secs,
    r.needed, r.state, r.created_at, r.deadline, r.decided_at, r.outcome, r.serial, r.snapshot";
const FROM: &str =
    "FROM requests r JOIN users u ON u.id = r.user_id JOIN devices d ON d.id = r.device_id";

fn row(r: &rusqlite::Row) -> rusqlite::Result<Request> {
    let snapshot: String = r.get(15)?;
    Ok(Request {
        id: r.get(0)?,
        user_id: r.get(1)?,
        user: r.get(2)?,
        device_id: r.get(3)?,
        device: r.get(4)?,
        role: r.get(5)?,
        reason: r.get(6)?,
        ttl_secs: r.get::<_, Option<i64>>(7)?.map(|t| t.max(0) as u64),
        needed: r.get::<_, i64>(8)?.clamp(1, u32::MAX as i64) as u32,
        state: State::parse(&r.get::<_, String>(9)?),
        created_at: r.get(10)?,
        deadline: r.get(11)?,
        decided_at: r.get(12)?,
        outcome: r.get(13)?,
        serial: r.get::<_, Option<i64>>(14)?.map(|s| s as u64),
        snapshot: serde_json::from_str(&snapshot).unwrap_or(serde_json::Value::Null),
    })
}

/// What a new pending request holds.
pub struct NewRequest<'a> {
    pub user_id: i64,
    pub user: &'a str,
    pub device_id: i64,
    pub device: &'a str,
    pub role: &'a str,
    pub reason: Option<&'a str>,
    pub ttl_secs: Option<u64>,
    pub needed: u32,
    pub deadline: i64,
    /// The audit body: snapshot, decision, request parameters.
    pub body: serde_json::Value,
}

/// Stores a pending request and its audit record; returns its id.
pub fn create(conn: &Connection, new: &NewRequest, now: i64) -> Result<String, StoreError> {
    let open: i64 = conn.query_row(
        "SELECT COUNT(*) FROM requests WHERE user_id = ?1 AND state IN ('pending', 'approved')",
        [new.user_id],
        |r| r.get(0),
    )?;
    if open >= MAX_OPEN_PER_USER {
        return Err(StoreError::Refused(format!(
            "{} has {open} open requests, the most one user may have: fetch or let them expire first",
            new.user
        )));
    }
    let id = new_id();
    let snapshot = audit::chain::canonical(&new.body["snapshot"]);
    conn.execute(
        "INSERT INTO requests (id, user_id, device_id, role, reason, ttl_secs, needed, state,
                               created_at, deadline, snapshot)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'pending', ?8, ?9, ?10)",
        params![
            id,
            new.user_id,
            new.device_id,
            new.role,
            new.reason,
            new.ttl_secs.map(|t| t as i64),
            new.needed,
            now,
            new.deadline,
            snapshot
        ],
    )?;
    let mut event = Event::new("request-pending", new.body.clone())
        .user(new.user)
        .device(new.device)
        .role(new.role);
    event.request_id = Some(id.clone());
    audit::append(conn, now, &event)?;
    Ok(id)
}

/// One request by id.
pub fn load(conn: &Connection, id: &str) -> Result<Option<Request>, StoreError> {
    let sql = format!("SELECT {COLUMNS} {FROM} WHERE r.id = ?1");
    Ok(conn.prepare_cached(&sql)?.query_row([id], row).optional()?)
}

/// Pending requests, oldest first.
pub fn pending(conn: &Connection) -> Result<Vec<Request>, StoreError> {
    let sql =
        format!("SELECT {COLUMNS} {FROM} WHERE r.state = 'pending' ORDER BY r.created_at, r.id");
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map([], row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// A user's requests, newest first, at most `limit`.
pub fn of_user(conn: &Connection, user_id: i64, limit: i64) -> Result<Vec<Request>, StoreError> {
    let sql = format!(
        "SELECT {COLUMNS} {FROM} WHERE r.user_id = ?1 ORDER BY r.created_at DESC, r.id LIMIT ?2"
    );
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map(params![user_id, limit], row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The verdicts given on a request, in order.
pub fn verdicts(conn: &Connection, id: &str) -> Result<Vec<Verdict>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT u.name, d.name, a.verdict, a.comment, a.at FROM approvals a
         JOIN users u ON u.id = a.approver_id JOIN devices d ON d.id = a.device_id
         WHERE a.request_id = ?1 ORDER BY a.at, u.name",
    )?;
    let rows = stmt.query_map([id], |r| {
        Ok(Verdict {
            approver: r.get(0)?,
            device: r.get(1)?,
            approve: r.get::<_, String>(2)? == "approve",
            comment: r.get(3)?,
            at: r.get(4)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn event(kind: &str, req: &Request, body: serde_json::Value) -> Event {
    let mut e = Event::new(kind, body)
        .user(&req.user)
        .device(&req.device)
        .role(&req.role);
    e.request_id = Some(req.id.clone());
    e
}

/// Expires `req` if its deadline has passed; returns true when it did.
/// Runs inside a write transaction.
pub fn expire_if_due(conn: &Connection, req: &mut Request, now: i64) -> Result<bool, StoreError> {
    if !matches!(req.state, State::Pending | State::Approved) || req.deadline > now {
        return Ok(false);
    }
    let why = match req.state {
        State::Pending => "not decided before its timeout",
        _ => "approved but not fetched within the role's ttl",
    };
    let changed = conn.execute(
        "UPDATE requests SET state = 'expired', decided_at = ?2, outcome = ?3
         WHERE id = ?1 AND state IN ('pending', 'approved')",
        params![req.id, now, why],
    )?;
    if changed == 0 {
        return Ok(false);
    }
    let from = req.state.as_str();
    audit::append(
        conn,
        now,
        &event(
            "request-expired",
            req,
            json!({"from": from, "why": why, "deadline": req.deadline}),
        ),
    )?;
    req.state = State::Expired;
    req.decided_at = Some(now);
    req.outcome = Some(why.to_string());
    Ok(true)
}

/// Expires every request past its deadline; returns the ones it expired.
pub fn expire_due(conn: &Connection, now: i64) -> Result<Vec<Request>, StoreError> {
    let sql = format!(
        "SELECT {COLUMNS} {FROM} WHERE r.state IN ('pending', 'approved') AND r.deadline <= ?1"
    );
    let due: Vec<Request> = {
        let mut stmt = conn.prepare_cached(&sql)?;
        let rows = stmt.query_map([now], row)?;
        rows.collect::<Result<_, _>>()?
    };
    let mut expired = Vec::new();
    for mut req in due {
        if expire_if_due(conn, &mut req, now)? {
            expired.push(req);
        }
    }
    Ok(expired)
}

/// An approver's decision about to be recorded.
pub struct Decide<'a> {
    pub approver_id: i64,
    pub approver: &'a str,
    pub device_id: i64,
    pub approve: bool,
    /// The approver's comment, or the reason of a denial.
    pub text: Option<&'a str>,
    /// The approver's snapshot and the rules they passed, for the audit record.
    pub body: serde_json::Value,
    /// How long the requester has to fetch the certificate once approved.
    pub fetch_window: i64,
}

/// What recording a verdict did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decided {
    /// The approval counts; `have` of `needed` so far.
    Counted { have: u32, needed: u32 },
    /// This approver had already approved; it still counts once.
    AlreadyCounted { have: u32, needed: u32 },
    /// This approval completed the count: the request is approved.
    Approved,
    /// The denial ended the request.
    Denied,
    /// The request was not pending any more.
    NotPending(State),
}

/// Records an approval or a denial. The request is re-read inside the
/// transaction, so whatever raced this call has already been applied.
pub fn decide(conn: &Connection, id: &str, d: &Decide, now: i64) -> Result<Decided, StoreError> {
    let Some(mut req) = load(conn, id)? else {
        return Err(StoreError::invalid(format!("there is no request {id}")));
    };
    expire_if_due(conn, &mut req, now)?;
    if req.state != State::Pending {
        return Ok(Decided::NotPending(req.state));
    }
    // The approver was checked on a snapshot; a suspension since then wins.
    crate::inventory::still_active(conn, d.device_id)?;
    let have = |conn: &Connection| -> Result<u32, StoreError> {
        let n: i64 = conn.query_row(
            "SELECT COUNT(*) FROM approvals WHERE request_id = ?1 AND verdict = 'approve'",
            [id],
            |r| r.get(0),
        )?;
        Ok(n as u32)
    };
    let previous: Option<String> = conn
        .query_row(
            "SELECT verdict FROM approvals WHERE request_id = ?1 AND approver_id = ?2",
            params![id, d.approver_id],
            |r| r.get(0),
        )
        .optional()?;
    if d.approve && previous.is_some() {
        return Ok(Decided::AlreadyCounted {
            have: have(conn)?,
            needed: req.needed,
        });
    }
    conn.execute(
        "INSERT INTO approvals (request_id, approver_id, device_id, verdict, comment, at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (request_id, approver_id) DO UPDATE SET
             verdict = excluded.verdict, comment = excluded.comment, at = excluded.at,
             device_id = excluded.device_id",
        params![
            id,
            d.approver_id,
            d.device_id,
            if d.approve { "approve" } else { "deny" },
            d.text,
            now
        ],
    )?;
    let mut body = d.body.clone();
    body["approver"] = json!(d.approver);
    body["comment"] = json!(d.text);

    if !d.approve {
        let why = format!("denied by {}: {}", d.approver, d.text.unwrap_or(""));
        conn.execute(
            "UPDATE requests SET state = 'denied', decided_at = ?2, outcome = ?3 WHERE id = ?1",
            params![id, now, why],
        )?;
        audit::append(conn, now, &event("approval-denied", &req, body))?;
        return Ok(Decided::Denied);
    }

    audit::append(conn, now, &event("approval", &req, body))?;
    let count = have(conn)?;
    if count < req.needed {
        return Ok(Decided::Counted {
            have: count,
            needed: req.needed,
        });
    }
    conn.execute(
        "UPDATE requests SET state = 'approved', decided_at = ?2, deadline = ?3 WHERE id = ?1",
        params![id, now, now.saturating_add(d.fetch_window)],
    )?;
    let approvers: Vec<String> = verdicts(conn, id)?
        .into_iter()
        .filter(|v| v.approve)
        .map(|v| v.approver)
        .collect();
    audit::append(
        conn,
        now,
        &event(
            "request-approved",
            &req,
            json!({"approvers": approvers, "fetch_deadline": now.saturating_add(d.fetch_window)}),
        ),
    )?;
    Ok(Decided::Approved)
}

/// Marks an approved request issued with the certificate `serial`.
pub fn mark_issued(conn: &Connection, id: &str, serial: u64, now: i64) -> Result<(), StoreError> {
    let n = conn.execute(
        "UPDATE requests SET state = 'issued', serial = ?2, decided_at = COALESCE(decided_at, ?3)
         WHERE id = ?1 AND state = 'approved'",
        params![id, serial as i64, now],
    )?;
    if n != 1 {
        return Err(StoreError::invalid(format!(
            "request {id} is no longer approved"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
