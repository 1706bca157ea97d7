//! The request path, independent of the SSH transport:
//! identity → snapshot → decision → issuance → audit.
//!
//! A certificate is signed and its row and audit record are written in one
//! job of the single writer; the job's result, and so the certificate, only
//! comes back once the transaction that holds the audit record has
//! committed. No audit record, no certificate.

use std::net::IpAddr;
use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, params};
use russh::keys::{HashAlg, PublicKey};
use serde_json::json;

use super::State;
use crate::approval::{self, NewRequest};
use crate::audit::{self, Event};
use crate::ca::cert::{CertRequest, certificate_line, key_id, sign_certificate, validity};
use crate::ca::registry::Signers;
use crate::inventory::{Identity, take_snapshot};
use crate::model::{Snapshot, now_unix};
use crate::policy::{Decision, Grant, Outcome, Policy, RequestParams, UnknownRole};
use crate::store::StoreError;

/// What became of a request.
#[derive(Debug)]
pub enum Reply {
    /// A certificate, as one OpenSSH line.
    Issued(Issued),
    /// Refused by policy; every rule is in the decision.
    Denied(Decision),
    /// Stored, waiting for approvers.
    Pending(Pending),
}

/// An issued certificate.
#[derive(Debug, Clone)]
pub struct Issued {
    pub line: String,
    pub serial: u64,
    pub key_id: String,
    pub valid_after: u64,
    pub valid_before: u64,
    pub principals: Vec<String>,
    /// True when this is a certificate issued earlier, sent again.
    pub again: bool,
}

/// A request now waiting for approval.
#[derive(Debug, Clone)]
pub struct Pending {
    pub id: String,
    pub role: String,
    pub needed: u32,
    pub groups: Vec<String>,
    pub deadline: i64,
}

/// Why a request could not be decided.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error(transparent)]
    UnknownRole(#[from] UnknownRole),
    #[error("internal error, nothing was issued: {0}")]
    Internal(#[from] StoreError),
}

/// Takes the snapshot of a caller's device as it is now.
pub async fn snapshot(
    state: &State,
    who: &Identity,
    peer: IpAddr,
) -> Result<(Arc<Policy>, Snapshot), StoreError> {
    let policy = state.policy();
    let device = who.device_id;
    let sha = policy.sha256().to_string();
    let snap = state
        .readers
        .run(move |conn| take_snapshot(conn, device, peer, now_unix(), &sha))
        .await?;
    Ok((policy, snap))
}

/// Handles `request ROLE`: decides; signs when the policy allows, stores a
/// pending request when the role needs approval.
pub async fn request(
    state: &State,
    who: &Identity,
    subject: &PublicKey,
    peer: IpAddr,
    role: &str,
    params: RequestParams,
) -> Result<Reply, RequestError> {
    let (policy, snap) = snapshot(state, who, peer).await?;
    let decision = match policy.evaluate(role, &snap, &params) {
        Ok(d) => d,
        Err(unknown) => {
            record_unknown_role(state, snap, role, &params).await?;
            return Err(unknown.into());
        }
    };
    let break_glass = policy.role(role).is_some_and(|r| r.break_glass);
    let grant = match &decision.outcome {
        Outcome::Allow(grant) => grant.clone(),
        Outcome::Deny => {
            record_denial(state, snap, decision.clone(), params, None).await?;
            return Ok(Reply::Denied(decision));
        }
        Outcome::NeedsApproval { approval, .. } => {
            let approval = approval.clone();
            let body = json!({
                "snapshot": snap,
                "decision": decision,
                "request": request_json(&params),
            });
            let now = now_unix();
            let deadline = now.saturating_add(approval.timeout.as_secs() as i64);
            let (uid, did) = (who.user_id, who.device_id);
            let (user, device, role_name) =
                (who.user.clone(), who.device.clone(), role.to_string());
            let reason = params.reason.clone();
            let ttl_secs = params.ttl.map(|t| t.as_secs());
            let needed = approval.count;
            let id = state
                .writer
                .run(move |conn| {
                    let new = NewRequest {
                        user_id: uid,
                        user: &user,
                        device_id: did,
                        device: &device,
                        role: &role_name,
                        reason: reason.as_deref(),
                        ttl_secs,
                        needed,
                        deadline,
                        body,
                    };
                    approval::create(conn, &new, now)
                })
                .await?;
            tracing::info!(user = %who.user, device = %who.device, role, request = %id, "pending approval");
            state.notify(json!({
                "event": "pending", "request_id": id, "role": role, "user": who.user,
                "device": who.device, "reason": params.reason, "approvers": approval.approvers,
                "needed": approval.count, "deadline": deadline, "at": now,
            }));
            return Ok(Reply::Pending(Pending {
                id,
                role: role.to_string(),
                needed: approval.count,
                groups: approval.approvers,
                deadline,
            }));
        }
    };

    let spec = Spec {
        snap,
        decision,
        grant,
        params,
        request_id: None,
        break_glass,
    };
    let issued = sign_in_writer(state, subject, spec).await?;
    tracing::info!(
        user = %who.user, device = %who.device, role, serial = issued.serial,
        key_id = %issued.key_id, break_glass, "issued"
    );
    if break_glass {
        state.notify(json!({
            "event": "break-glass", "role": role, "user": who.user, "device": who.device,
            "serial": issued.serial, "key_id": issued.key_id, "at": now_unix(),
        }));
    }
    Ok(Reply::Issued(issued))
}

/// Issues the certificate of an approved request, after checking the
/// requester's membership and posture again with a fresh snapshot. A
/// request already issued gets the same certificate again.
pub async fn issue_approved(
    state: &State,
    who: &Identity,
    subject: &PublicKey,
    peer: IpAddr,
    req: &approval::Request,
) -> Result<Reply, RequestError> {
    let (policy, snap) = snapshot(state, who, peer).await?;
    let params = RequestParams {
        ttl: req.ttl_secs.map(std::time::Duration::from_secs),
        reason: req.reason.clone(),
    };
    let mut decision = policy.evaluate(&req.role, &snap, &params)?;
    let grant = match &decision.outcome {
        Outcome::Allow(g) | Outcome::NeedsApproval { grant: g, .. } => g.clone(),
        Outcome::Deny => {
            record_denial(state, snap, decision.clone(), params, Some(req.id.clone())).await?;
            return Ok(Reply::Denied(decision));
        }
    };
    // The approvers have spoken: what is issued now is the grant itself.
    decision.outcome = Outcome::Allow(grant.clone());
    let spec = Spec {
        snap,
        decision,
        grant,
        params,
        request_id: Some(req.id.clone()),
        break_glass: false,
    };
    let issued = sign_in_writer(state, subject, spec).await?;
    if !issued.again {
        tracing::info!(
            user = %who.user, device = %who.device, role = %req.role, request = %req.id,
            serial = issued.serial, key_id = %issued.key_id, "issued after approval"
        );
    }
    Ok(Reply::Issued(issued))
}

async fn record_denial(
    state: &State,
    snap: Snapshot,
    decision: Decision,
    params: RequestParams,
    request_id: Option<String>,
) -> Result<(), StoreError> {
    let failed: Vec<&str> = decision.failed().map(|r| r.rule.as_str()).collect();
    tracing::info!(
        user = %snap.user.name, device = %snap.device.name, role = %decision.role,
        request = ?request_id, failed = ?failed, "denied"
    );
    let mut event = Event::new(
        "denied",
        json!({
            "snapshot": snap,
            "decision": decision,
            "request": request_json(&params),
        }),
    )
    .user(&snap.user.name)
    .device(&snap.device.name)
    .role(&decision.role);
    event.request_id = request_id;
    let at = snap.connection.at;
    state
        .writer
        .run(move |conn| audit::append(conn, at, &event).map(|_| ()))
        .await
}

/// Audits a request for a role the policy does not define: a decision too.
async fn record_unknown_role(
    state: &State,
    snap: Snapshot,
    role: &str,
    params: &RequestParams,
) -> Result<(), StoreError> {
    tracing::info!(user = %snap.user.name, device = %snap.device.name, role, "denied: unknown role");
    let event = Event::new(
        "denied",
        json!({
            "snapshot": snap,
            "decision": {"role": role, "rules": [{"rule": "role is defined in the policy", "passed": false, "seen": "not defined"}], "outcome": {"result": "deny"}},
            "request": request_json(params),
        }),
    )
    .user(&snap.user.name)
    .device(&snap.device.name);
    let at = snap.connection.at;
    state
        .writer
        .run(move |conn| audit::append(conn, at, &event).map(|_| ()))
        .await
}

fn request_json(params: &RequestParams) -> serde_json::Value {
    json!({
        "ttl": params.ttl.map(|t| humantime::format_duration(t).to_string()),
        "reason": params.reason,
    })
}

/// Everything one issuance is based on.
struct Spec {
    snap: Snapshot,
    decision: Decision,
    grant: Grant,
    params: RequestParams,
    request_id: Option<String>,
    break_glass: bool,
}

async fn sign_in_writer(
    state: &State,
    subject: &PublicKey,
    spec: Spec,
) -> Result<Issued, StoreError> {
    let signers = state.signers.clone();
    let subject = subject.clone();
    state
        .writer
        .run(move |conn| issue(conn, &signers, &subject, spec))
        .await
}

/// Next serial: one more than the last handed out, from a counter that only
/// goes up (pruning old certificate rows cannot make a serial come back, and
/// two certificates with one serial would make a KRL revoke the wrong one).
/// Runs in the writer's transaction, so two issuances never draw the same
/// number.
fn next_serial(conn: &Connection) -> Result<u64, StoreError> {
    let (counter, max): (i64, i64) = conn
        .prepare_cached(
            "SELECT (SELECT COALESCE(MAX(value), 0) FROM counters WHERE name = 'serial'),
                    (SELECT COALESCE(MAX(serial), 0) FROM certificates)",
        )?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let next = u64::try_from(counter.max(max))
        .ok()
        .and_then(|m| m.checked_add(1))
        .filter(|s| *s <= i64::MAX as u64)
        .ok_or_else(|| StoreError::invalid("certificate serials are exhausted"))?;
    conn.prepare_cached(
        "INSERT INTO counters (name, value) VALUES ('serial', ?1)
         ON CONFLICT (name) DO UPDATE SET value = excluded.value",
    )?
    .execute([next as i64])?;
    Ok(next)
}

/// The certificate already issued for a request, if any.
fn already_issued(conn: &Connection, request_id: &str) -> Result<Option<Issued>, StoreError> {
    let row = conn
        .prepare_cached(
            "SELECT serial, key_id, valid_after, valid_before, principals, certificate
             FROM certificates WHERE request_id = ?1",
        )?
        .query_row([request_id], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, Option<String>>(5)?,
            ))
        })
        .optional()?;
    Ok(
        row.map(|(serial, key_id, va, vb, principals, line)| Issued {
            line: line.unwrap_or_default(),
            serial: serial as u64,
            key_id,
            valid_after: va as u64,
            valid_before: vb as u64,
            principals: serde_json::from_str(&principals).unwrap_or_default(),
            again: true,
        }),
    )
}

/// Signs and records one certificate; runs inside the writer's transaction.
fn issue(
    conn: &Connection,
    signers: &Signers,
    subject: &PublicKey,
    spec: Spec,
) -> Result<Issued, StoreError> {
    let now = now_unix();
    if let Some(id) = &spec.request_id {
        // Re-read the request under the write lock: a racing fetch may have
        // issued it, or its window may have closed, since it was read.
        let Some(mut req) = approval::load(conn, id)? else {
            return Err(StoreError::invalid(format!("there is no request {id}")));
        };
        approval::expire_if_due(conn, &mut req, now)?;
        match req.state {
            approval::State::Approved => {}
            approval::State::Issued => {
                return already_issued(conn, id)?
                    .filter(|i| !i.line.is_empty())
                    .ok_or_else(|| {
                        StoreError::invalid(format!(
                            "request {id} was issued, but its certificate is gone"
                        ))
                    });
            }
            other => {
                return Err(StoreError::invalid(format!(
                    "request {id} is {}, not approved",
                    other.as_str()
                )));
            }
        }
    }

    crate::inventory::still_active(conn, &spec.snap.device.name)?;
    let Spec {
        snap,
        decision,
        grant,
        params,
        request_id,
        break_glass,
    } = spec;
    let (ca_id, ca) = signers.active(conn)?;
    let serial = next_serial(conn)?;
    let id = key_id(&snap.user.name, &snap.device.name, &decision.role, serial);
    // The validity window starts now, at issuance, not when the snapshot was taken.
    let (valid_after, valid_before) = validity(now as u64, grant.backdate, grant.ttl)
        .map_err(|e| StoreError::invalid(e.to_string()))?;
    let cert = sign_certificate(
        &ca,
        &CertRequest {
            subject,
            serial,
            key_id: id.clone(),
            principals: &grant.principals,
            valid_after,
            valid_before,
            critical_options: &grant.critical_options,
            extensions: &grant.extensions,
        },
    )
    .map_err(|e| StoreError::invalid(e.to_string()))?;
    let line = certificate_line(&cert).map_err(|e| StoreError::invalid(e.to_string()))?;

    let certificate = json!({
        "serial": serial,
        "key_id": id,
        "principals": grant.principals,
        "valid_after": valid_after,
        "valid_before": valid_before,
        "critical_options": grant.critical_options,
        "extensions": grant.extensions,
        "ca_fingerprint": ca.fingerprint(),
        "subject_fingerprint": subject.fingerprint(HashAlg::Sha256).to_string(),
    });
    let mut body = json!({
        "snapshot": snap,
        "decision": decision,
        "request": request_json(&params),
        "certificate": certificate,
    });
    if break_glass {
        body["break_glass"] = json!(true);
    }
    if let Some(rid) = &request_id {
        let approvers: Vec<String> = approval::verdicts(conn, rid)?
            .into_iter()
            .filter(|v| v.approve)
            .map(|v| v.approver)
            .collect();
        body["approvers"] = json!(approvers);
    }
    let mut event = Event::new("issued", body)
        .user(&snap.user.name)
        .device(&snap.device.name)
        .role(&decision.role);
    event.request_id = request_id.clone();
    let seq = audit::append(conn, now, &event)?;
    let principals = serde_json::to_string(&grant.principals).unwrap_or_default();
    let inserted = conn
        .prepare_cached(
            "INSERT INTO certificates (serial, key_id, user_id, device_id, role, ca_key_id, principals,
                                   valid_after, valid_before, issued_at, audit_seq, request_id,
                                   certificate)
         SELECT ?1, ?2, d.user_id, d.id, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?11, ?12
         FROM devices d WHERE d.name = ?10",
        )?
        .execute(params![
            serial as i64,
            id,
            decision.role,
            ca_id,
            principals,
            valid_after as i64,
            valid_before as i64,
            now,
            seq,
            snap.device.name,
            request_id,
            line
        ])?;
    if inserted != 1 {
        return Err(StoreError::invalid(format!(
            "device {} was removed while its certificate was being issued",
            snap.device.name
        )));
    }
    if let Some(rid) = &request_id {
        approval::mark_issued(conn, rid, serial, now)?;
    }
    Ok(Issued {
        line,
        serial,
        key_id: id,
        valid_after,
        valid_before,
        principals: grant.principals,
        again: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_never_come_back_after_certificate_rows_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let (conn, _) = crate::store::open(&dir.path().join("s.db")).unwrap();
        assert_eq!(next_serial(&conn).unwrap(), 1);
        assert_eq!(next_serial(&conn).unwrap(), 2);
        // Pruning every certificate row must not restart the numbering.
        conn.execute("DELETE FROM certificates", []).unwrap();
        assert_eq!(next_serial(&conn).unwrap(), 3);
    }
}
