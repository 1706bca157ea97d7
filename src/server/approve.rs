//! The approval workflow over SSH: fetching and waiting (the requester),
//! `pending`, `show`, `approve` and `deny` (the approvers), and `status`.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use russh::keys::PublicKey;
use serde_json::json;

use super::State;
use super::commands::{ago, exit, human};
use super::issue::{self, Reply, RequestError, snapshot};
use super::run::{Output, Progress, denial, issued_output, request_error, rfc3339};
use crate::approval::{self, Decide, Decided, Request};
use crate::audit::Event;
use crate::inventory::Identity;
use crate::model::now_unix;
use crate::store::StoreError;

/// How often a waiting requester is told that the wait goes on; the line
/// also shows whether the client is still there.
const HEARTBEAT: Duration = Duration::from_secs(20);
/// How often a waiting requester looks at the request when nothing woke it.
const POLL: Duration = Duration::from_secs(1);

fn internal(e: StoreError) -> Output {
    request_error(RequestError::Internal(e))
}

fn usage(text: String) -> Output {
    Output::stderr(format!("error: {text}\n"), exit::USAGE)
}

/// Reads a request and expires it first if its deadline has passed.
async fn refresh(
    state: &State,
    id: &str,
) -> Result<Option<(Request, Vec<approval::Verdict>)>, StoreError> {
    let key = id.to_string();
    let found = state
        .readers
        .run(move |conn| {
            let Some(req) = approval::load(conn, &key)? else {
                return Ok(None);
            };
            let verdicts = approval::verdicts(conn, &key)?;
            Ok(Some((req, verdicts)))
        })
        .await?;
    let Some((req, verdicts)) = found else {
        return Ok(None);
    };
    let now = now_unix();
    if !matches!(
        req.state,
        approval::State::Pending | approval::State::Approved
    ) || req.deadline > now
    {
        return Ok(Some((req, verdicts)));
    }
    let key = id.to_string();
    let (req, expired) = state
        .writer
        .run(move |conn| {
            let mut req = approval::load(conn, &key)?
                .ok_or_else(|| StoreError::invalid(format!("request {key} disappeared")))?;
            let expired = approval::expire_if_due(conn, &mut req, now)?;
            Ok((req, expired))
        })
        .await?;
    if expired {
        announce_expired(state, &req);
    }
    Ok(Some((req, verdicts)))
}

/// Tells waiters and the notifier that a request expired.
pub fn announce_expired(state: &State, req: &Request) {
    tracing::info!(request = %req.id, user = %req.user, role = %req.role, "request expired");
    state.notify(json!({
        "event": "expired", "request_id": req.id, "role": req.role, "user": req.user,
        "device": req.device, "why": req.outcome, "at": now_unix(),
    }));
    state.changes.notify_waiters();
}

/// Refuses anything that is not shaped like a request id.
fn check_id(id: &str) -> Result<(), Output> {
    if approval::is_id(id) {
        Ok(())
    } else {
        Err(usage(format!(
            "{id:?} is not a request id: ids look like r-abcdefgh23"
        )))
    }
}

/// Reads the caller's own request, or says why not.
async fn own_request(
    state: &State,
    who: &Identity,
    id: &str,
) -> Result<(Request, Vec<approval::Verdict>), Output> {
    check_id(id)?;
    match refresh(state, id).await {
        Ok(Some((req, v))) if req.user_id == who.user_id => {
            if req.device_id != who.device_id {
                return Err(usage(format!(
                    "request {id} was made from device {}: fetch it from there, the certificate is for that device's key",
                    req.device
                )));
            }
            Ok((req, v))
        }
        Ok(_) => Err(usage(format!("you have no request {id}: see `status`"))),
        Err(e) => Err(internal(e)),
    }
}

fn pending_text(req: &Request, have: usize) -> String {
    let now = now_unix();
    format!(
        "pending: request {} for role {} has {have} of {} approval(s)\npending: expires at {} (in {})\npending: wait with: fetch {} --wait\n",
        req.id,
        req.role,
        req.needed,
        rfc3339(req.deadline.max(0) as u64),
        human(Duration::from_secs(
            req.deadline.saturating_sub(now).max(0) as u64
        )),
        req.id
    )
}

/// The reply for a request that is over without a certificate.
fn ended(req: &Request) -> Option<Output> {
    let why = req.outcome.clone().unwrap_or_default();
    match req.state {
        approval::State::Denied => Some(Output::stderr(
            format!("denied: request {} for role {}: {why}\n", req.id, req.role),
            exit::DENIED,
        )),
        approval::State::Expired => Some(Output::stderr(
            format!("expired: request {} for role {}: {why}\n", req.id, req.role),
            exit::EXPIRED,
        )),
        _ => None,
    }
}

/// `fetch ID [--wait]`.
pub async fn fetch(
    state: &State,
    who: &Identity,
    key: &PublicKey,
    peer: IpAddr,
    id: &str,
    wait: bool,
    progress: &Progress,
) -> Output {
    let (req, verdicts) = match own_request(state, who, id).await {
        Ok(r) => r,
        Err(out) => return out,
    };
    if req.state == approval::State::Pending {
        if wait {
            return wait_for(state, who, key, peer, id, progress).await;
        }
        let have = verdicts.iter().filter(|v| v.approve).count();
        return Output::stderr(pending_text(&req, have), exit::PENDING);
    }
    if let Some(out) = ended(&req) {
        return out;
    }
    if req.state == approval::State::Issued {
        let key = req.id.clone();
        let now = now_unix();
        let found = state
            .readers
            .run(move |conn| {
                let row: (i64, i64) = conn.query_row(
                    "SELECT COUNT(revoked_at), COALESCE(MAX(valid_before), 0) FROM certificates WHERE request_id = ?1",
                    [&key],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?;
                Ok(row)
            })
            .await;
        match found {
            Ok((revoked, _)) if revoked > 0 => {
                return Output::stderr(
                    format!(
                        "denied: the certificate of request {} was revoked; make a new request\n",
                        req.id
                    ),
                    exit::DENIED,
                );
            }
            Ok((_, until)) if until <= now => {
                return Output::stderr(
                    format!(
                        "expired: the certificate of request {} has expired; make a new request\n",
                        req.id
                    ),
                    exit::EXPIRED,
                );
            }
            Ok(_) => {}
            Err(e) => return internal(e),
        }
    }
    match issue::issue_approved(state, who, key, peer, &req).await {
        Ok(Reply::Issued(i)) => issued_output(&i, &req.role),
        Ok(Reply::Denied(d)) => Output::stderr(denial(&d), exit::DENIED),
        Ok(Reply::Pending(_)) => Output::stderr(pending_text(&req, 0), exit::PENDING),
        Err(RequestError::Internal(e)) => {
            // The request may have expired or been issued by a racing fetch.
            match refresh(state, id).await {
                Ok(Some((req, _))) => ended(&req).unwrap_or_else(|| internal(e)),
                _ => internal(e),
            }
        }
        Err(e) => request_error(e),
    }
}

/// Waits until request `id` is decided; then fetches it or says why not.
pub async fn wait_for(
    state: &State,
    who: &Identity,
    key: &PublicKey,
    peer: IpAddr,
    id: &str,
    progress: &Progress,
) -> Output {
    let mut told = std::collections::BTreeSet::new();
    let mut beat = Instant::now();
    loop {
        let woken = state.changes.notified();
        let (req, verdicts) = match refresh(state, id).await {
            Ok(Some(found)) => found,
            Ok(None) => return usage(format!("request {id} disappeared")),
            Err(e) => return internal(e),
        };
        // By name, not by position: two approvals in one second may sort
        // either way.
        let approvals: Vec<&approval::Verdict> = verdicts.iter().filter(|v| v.approve).collect();
        for v in &approvals {
            if told.insert(v.approver.clone()) {
                let note = v
                    .comment
                    .as_deref()
                    .map(|c| format!(": {c}"))
                    .unwrap_or_default();
                progress.line(format!(
                    "approved by {} ({} of {}){note}\n",
                    v.approver,
                    told.len(),
                    req.needed
                ));
            }
        }
        if req.state != approval::State::Pending {
            return Box::pin(fetch(state, who, key, peer, id, false, progress)).await;
        }
        if beat.elapsed() >= HEARTBEAT {
            let left = req.deadline.saturating_sub(now_unix()).max(0) as u64;
            progress.line(format!(
                "waiting: request {id}: {} of {} approval(s), expires in {}\n",
                told.len(),
                req.needed,
                human(Duration::from_secs(left))
            ));
            beat = Instant::now();
        }
        if progress.closed() {
            tracing::info!(request = %id, "the waiting client went away");
            return Output::stderr(String::new(), exit::PENDING);
        }
        tokio::select! {
            _ = woken => {}
            _ = tokio::time::sleep(POLL) => {}
        }
    }
}

/// Whether the caller may see a request: its requester, or anyone in one of
/// the role's approver groups.
fn may_see(state: &State, who_groups: &[String], who: &str, req: &Request) -> bool {
    if req.user == who {
        return true;
    }
    let policy = state.policy();
    policy
        .role(&req.role)
        .and_then(|r| r.approval.as_ref())
        .is_some_and(|a| a.approvers.iter().any(|g| who_groups.contains(g)))
}

/// A one-line summary of the posture a request was made with.
fn posture_summary(req: &Request, now: i64) -> String {
    let Some(posture) = req.snapshot["device"]["posture"].as_object() else {
        return "no posture report".into();
    };
    if posture.is_empty() {
        return "no posture report".into();
    }
    posture
        .iter()
        .map(|(k, p)| {
            let at = p["reported_at"].as_i64().unwrap_or(0);
            format!("{k}={} ({})", p["value"], ago(now, at))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `pending`: the requests this caller may decide.
pub async fn pending(state: &State, who: &Identity, peer: IpAddr) -> Output {
    let (policy, snap) = match snapshot(state, who, peer).await {
        Ok(s) => s,
        Err(e) => return internal(e),
    };
    let list = match state
        .readers
        .run(|conn| {
            let mut out = Vec::new();
            for req in approval::pending(conn)? {
                let v = approval::verdicts(conn, &req.id)?;
                out.push((req, v));
            }
            Ok(out)
        })
        .await
    {
        Ok(l) => l,
        Err(e) => return internal(e),
    };
    let now = now_unix();
    let mut out = String::new();
    for (req, verdicts) in &list {
        if req.deadline <= now || req.user == who.user {
            continue;
        }
        if !may_see(state, &snap.user.groups, &who.user, req) {
            continue;
        }
        let Ok(rules) = policy.evaluate_approver(&req.role, &snap, &req.user) else {
            continue;
        };
        let have = verdicts.iter().filter(|v| v.approve).count();
        let _ = writeln!(
            out,
            "{}  {} on {}  role {}  {} of {} approval(s)  asked {}  expires in {}",
            req.id,
            req.user,
            req.device,
            req.role,
            have,
            req.needed,
            ago(now, req.created_at),
            human(Duration::from_secs((req.deadline - now).max(0) as u64))
        );
        let _ = writeln!(
            out,
            "    reason:  {}",
            req.reason.as_deref().unwrap_or("(none given)")
        );
        let _ = writeln!(out, "    posture: {}", posture_summary(req, now));
        for r in rules.iter().filter(|r| !r.passed) {
            let _ = writeln!(
                out,
                "    you cannot decide it from here: {}: saw {}",
                r.rule, r.seen
            );
        }
    }
    if out.is_empty() {
        out.push_str("no requests wait for you\n");
    }
    Output::stdout(out, exit::OK)
}

/// `show ID`.
pub async fn show(state: &State, who: &Identity, peer: IpAddr, id: &str) -> Output {
    if let Err(out) = check_id(id) {
        return out;
    }
    let (_, snap) = match snapshot(state, who, peer).await {
        Ok(s) => s,
        Err(e) => return internal(e),
    };
    let (req, verdicts) = match refresh(state, id).await {
        Ok(Some(found)) if may_see(state, &snap.user.groups, &who.user, &found.0) => found,
        Ok(_) => return usage(format!("there is no request {id} you may see")),
        Err(e) => return internal(e),
    };
    let now = now_unix();
    let mut out = String::new();
    let _ = writeln!(out, "request:   {}", req.id);
    let _ = writeln!(
        out,
        "state:     {}{}",
        req.state.as_str(),
        req.outcome
            .as_deref()
            .map(|o| format!(" ({o})"))
            .unwrap_or_default()
    );
    let _ = writeln!(out, "requester: {} on device {}", req.user, req.device);
    let _ = writeln!(out, "role:      {}", req.role);
    let _ = writeln!(
        out,
        "reason:    {}",
        req.reason.as_deref().unwrap_or("(none given)")
    );
    let _ = writeln!(
        out,
        "asked:     {} ({})",
        rfc3339(req.created_at.max(0) as u64),
        ago(now, req.created_at)
    );
    let _ = writeln!(out, "deadline:  {}", rfc3339(req.deadline.max(0) as u64));
    let _ = writeln!(
        out,
        "approvals: {} of {}",
        verdicts.iter().filter(|v| v.approve).count(),
        req.needed
    );
    for v in &verdicts {
        let _ = writeln!(
            out,
            "  {} by {} on {} {}{}",
            if v.approve { "approved" } else { "denied" },
            v.approver,
            v.device,
            ago(now, v.at),
            v.comment
                .as_deref()
                .map(|c| format!(": {c}"))
                .unwrap_or_default()
        );
    }
    let groups = req.snapshot["user"]["groups"]
        .as_array()
        .map(|g| {
            g.iter()
                .filter_map(|x| x.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    let _ = writeln!(out, "groups:    {groups}");
    let _ = writeln!(out, "posture:   {}", posture_summary(&req, now));
    let _ = writeln!(
        out,
        "peer:      {}",
        req.snapshot["connection"]["peer"].as_str().unwrap_or("?")
    );
    if let Some(serial) = req.serial {
        let _ = writeln!(out, "issued:    serial {serial}");
    }
    Output::stdout(out, exit::OK)
}

/// `approve ID` and `deny ID`.
pub async fn decide(
    state: &State,
    who: &Identity,
    peer: IpAddr,
    id: &str,
    approve: bool,
    text: Option<String>,
) -> Output {
    if let Err(out) = check_id(id) {
        return out;
    }
    let (policy, snap) = match snapshot(state, who, peer).await {
        Ok(s) => s,
        Err(e) => return internal(e),
    };
    let req = match refresh(state, id).await {
        // Anyone who holds the id learns why they may not decide it; the
        // rules below refuse every caller outside the approver groups.
        Ok(Some((req, _))) => req,
        Ok(None) => return usage(format!("there is no request {id}")),
        Err(e) => return internal(e),
    };
    let rules = match policy.evaluate_approver(&req.role, &snap, &req.user) {
        Ok(r) => r,
        Err(e) => return Output::stderr(format!("refused: {e}\n"), exit::DENIED),
    };
    if rules.iter().any(|r| !r.passed) {
        return refuse(state, who, &req, rules, approve).await;
    }
    if let Some(out) = not_pending(&req, approve) {
        return out;
    }

    let fetch_window = req
        .ttl_secs
        .or_else(|| policy.role(&req.role).map(|r| r.ttl.as_secs()))
        .unwrap_or(0) as i64;
    let body = json!({"approver_snapshot": snap, "rules": rules});
    let (uid, did, name) = (who.user_id, who.device_id, who.user.clone());
    let key = id.to_string();
    let decided = state
        .writer
        .run(move |conn| {
            let d = Decide {
                approver_id: uid,
                approver: &name,
                device_id: did,
                approve,
                text: text.as_deref(),
                body,
                fetch_window,
            };
            approval::decide(conn, &key, &d, now_unix())
        })
        .await;
    let decided = match decided {
        Ok(d) => d,
        Err(e) => return internal(e),
    };
    state.changes.notify_waiters();
    let event = |kind: &str| {
        json!({
            "event": kind, "request_id": req.id, "role": req.role, "user": req.user,
            "device": req.device, "by": who.user, "at": now_unix(),
        })
    };
    tracing::info!(request = %req.id, approver = %who.user, approve, outcome = ?decided, "verdict");
    match decided {
        Decided::Counted { have, needed } => Output::stdout(
            format!(
                "approved {}: {have} of {needed} approval(s); it waits for more\n",
                req.id
            ),
            exit::OK,
        ),
        Decided::AlreadyCounted { have, needed } => Output::stdout(
            format!(
                "already approved {} by you; it counts once ({have} of {needed})\n",
                req.id
            ),
            exit::OK,
        ),
        Decided::Approved => {
            state.notify(event("approved"));
            Output::stdout(
                format!(
                    "request {} is now approved; {} can fetch the certificate\n",
                    req.id, req.user
                ),
                exit::OK,
            )
        }
        Decided::Denied => {
            state.notify(event("denied"));
            Output::stdout(
                format!("denied request {} of {}\n", req.id, req.user),
                exit::OK,
            )
        }
        Decided::NotPending(s) => {
            let mut req = req;
            req.state = s;
            not_pending(&req, approve).unwrap_or_else(|| {
                Output::stderr(
                    format!("request {} is {}\n", req.id, s.as_str()),
                    exit::DENIED,
                )
            })
        }
    }
}

/// The reply to a verdict on a request that is no longer pending.
fn not_pending(req: &Request, approve: bool) -> Option<Output> {
    match req.state {
        approval::State::Pending => None,
        approval::State::Approved | approval::State::Issued if approve => Some(Output::stdout(
            format!("request {} is already approved\n", req.id),
            exit::OK,
        )),
        approval::State::Approved | approval::State::Issued => Some(Output::stderr(
            format!(
                "refused: request {} is already approved, a denial cannot undo it; an operator can: jitca revoke --request {}\n",
                req.id, req.id
            ),
            exit::DENIED,
        )),
        approval::State::Denied => Some(Output::stderr(
            format!("refused: request {} was already denied\n", req.id),
            exit::DENIED,
        )),
        approval::State::Expired => Some(Output::stderr(
            format!(
                "expired: request {} expired; it can no longer be decided\n",
                req.id
            ),
            exit::EXPIRED,
        )),
    }
}

/// Refuses a verdict the caller may not give, and audits the attempt.
async fn refuse(
    state: &State,
    who: &Identity,
    req: &Request,
    rules: Vec<crate::policy::RuleResult>,
    approve: bool,
) -> Output {
    let mut out = String::new();
    let failed = |prefix: &str| {
        rules
            .iter()
            .any(|r| !r.passed && r.rule.starts_with(prefix))
    };
    if failed("approver is not the requester") {
        let _ = writeln!(
            out,
            "refused: you cannot approve or deny your own request {}",
            req.id
        );
    } else if failed("approver in one of") {
        let groups = state
            .policy()
            .role(&req.role)
            .and_then(|r| r.approval.as_ref())
            .map(|a| a.approvers.join(", "))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "refused: you are not in any approver group [{groups}] of role {}",
            req.role
        );
    } else {
        let _ = writeln!(out, "refused: you may not decide request {}", req.id);
    }
    for r in rules.iter().filter(|r| !r.passed) {
        let _ = writeln!(out, "refused: {}: saw {}", r.rule, r.seen);
    }
    let mut event = Event::new(
        "approval-refused",
        json!({"approver": who.user, "approver_device": who.device, "approve": approve, "rules": rules}),
    )
    .user(&req.user)
    .device(&req.device)
    .role(&req.role);
    event.request_id = Some(req.id.clone());
    if let Err(e) = state.append(now_unix(), event).await {
        return internal(e);
    }
    Output::stderr(out, exit::DENIED)
}

/// A user's live certificates (`?1` the user's id, `?2` the time now),
/// found through the index by expiry (named: SQLite would rather read the
/// whole table in serial order than sort what the index finds).
const LIVE_OF_USER: &str = "SELECT c.serial, c.role, c.valid_before, d.name, c.request_id
     FROM certificates c INDEXED BY certificates_by_expiry JOIN devices d ON d.id = c.device_id
     WHERE c.user_id = ?1 AND c.valid_before > ?2 AND c.revoked_at IS NULL
     ORDER BY c.serial";

/// `status`: the caller's requests and live certificates.
pub async fn status(state: &State, who: &Identity) -> Output {
    let uid = who.user_id;
    let now = now_unix();
    let found = state
        .readers
        .run(move |conn| {
            let requests = approval::of_user(conn, uid, 20)?;
            let mut stmt = conn.prepare(LIVE_OF_USER)?;
            let certs = stmt
                .query_map(rusqlite::params![uid, now], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, Option<String>>(4)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok((requests, certs))
        })
        .await;
    let (requests, certs) = match found {
        Ok(f) => f,
        Err(e) => return internal(e),
    };
    let mut out = String::from("requests:\n");
    if requests.is_empty() {
        out.push_str("  (none)\n");
    }
    for r in &requests {
        let when = match r.state {
            approval::State::Pending | approval::State::Approved => {
                format!("until {}", rfc3339(r.deadline.max(0) as u64))
            }
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "  {}  {:<9} role {}  asked {}  {when}",
            r.id,
            r.state.as_str(),
            r.role,
            ago(now, r.created_at)
        );
    }
    out.push_str("certificates:\n");
    if certs.is_empty() {
        out.push_str("  (none live)\n");
    }
    for (serial, role, until, device, rid) in certs {
        let _ = writeln!(
            out,
            "  serial {serial}  role {role}  device {device}  expires in {}{}",
            human(Duration::from_secs((until - now).max(0) as u64)),
            rid.map(|r| format!("  request {r}")).unwrap_or_default()
        );
    }
    Output::stdout(out, exit::OK)
}

#[cfg(test)]
mod tests {
    #[test]
    fn status_finds_live_certificates_by_expiry_without_reading_every_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let (conn, _) = crate::store::open(&dir.path().join("p.db")).unwrap();
        let steps = crate::store::query_plan(&conn, super::LIVE_OF_USER);
        assert!(
            steps.iter().any(|s| s.contains("certificates_by_expiry")),
            "{steps:?}"
        );
        assert!(!steps.iter().any(|s| s.starts_with("SCAN c")), "{steps:?}");
    }
}
