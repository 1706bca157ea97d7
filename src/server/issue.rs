//! The request path, independent of the SSH transport:
//! identity → snapshot → decision → issuance → audit.
//!
//! A certificate is signed on the requester's task (see [`super::signing`]),
//! then its row and audit record are written in one job of the single
//! writer; the job's result, and so the certificate, only comes back once
//! the transaction that holds the audit record has committed. No audit
//! record, no certificate.

use std::net::IpAddr;
use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, params};
use russh::keys::{HashAlg, PublicKey};
use serde::Serialize;
use serde_json::json;

use super::State;
use crate::approval::{self, NewRequest};
use crate::audit::{self, Event};
use crate::ca::cert::{CertRequest, certificate_line, key_id, sign_certificate, validity};
use crate::ca::registry;
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
        .run_here(move |conn| take_snapshot(conn, device, peer, now_unix(), &sha))
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
        device_id: who.device_id,
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
        device_id: who.device_id,
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
    state.append(snap.connection.at, event).await.map(drop)
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
    state.append(snap.connection.at, event).await.map(drop)
}

fn request_json(params: &RequestParams) -> serde_json::Value {
    json!(RequestRecord::of(params))
}

// The audit body of an issuance, written straight to canonical JSON by
// `audit::chain::canonical_of`: fields in alphabetical order.

/// What the requester asked for.
#[derive(Serialize)]
struct RequestRecord<'a> {
    reason: Option<&'a str>,
    ttl: Option<String>,
}

impl RequestRecord<'_> {
    fn of(params: &RequestParams) -> RequestRecord<'_> {
        RequestRecord {
            reason: params.reason.as_deref(),
            ttl: params
                .ttl
                .map(|t| humantime::format_duration(t).to_string()),
        }
    }
}

/// The certificate as issued.
#[derive(Serialize)]
struct CertificateRecord<'a> {
    ca_fingerprint: &'a str,
    critical_options: &'a std::collections::BTreeMap<String, String>,
    extensions: &'a std::collections::BTreeSet<String>,
    key_id: &'a str,
    principals: &'a [String],
    serial: u64,
    subject_fingerprint: &'a str,
    valid_after: u64,
    valid_before: u64,
}

/// An `issued` record's body.
#[derive(Serialize)]
struct IssuedRecord<'a> {
    /// Who approved, for a request that needed approval.
    #[serde(skip_serializing_if = "Option::is_none")]
    approvers: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    break_glass: Option<bool>,
    certificate: CertificateRecord<'a>,
    decision: &'a Decision,
    request: RequestRecord<'a>,
    snapshot: &'a Snapshot,
}

/// Everything one issuance is based on.
struct Spec {
    /// The requester's device: the certificate is for its key.
    device_id: i64,
    snap: Snapshot,
    decision: Decision,
    grant: Grant,
    params: RequestParams,
    request_id: Option<String>,
    break_glass: bool,
}

/// A certificate signed before its writer job, and what its records need.
struct Signed {
    ca_id: i64,
    serial: u64,
    key_id: String,
    valid_after: u64,
    valid_before: u64,
    line: String,
    /// When it was issued: its validity window starts from here.
    at: i64,
    /// The principals as stored in the certificate row (JSON).
    principals: String,
    ca_fingerprint: String,
    subject_fingerprint: String,
    /// The audit record's fields but its body.
    event: Event,
}

/// What an issuance's records were made from, handed back with the
/// result: the requester frees it (the snapshot, the decision, the grant's
/// maps, the body, the strings), not the single writer, whose time every
/// issuance waits on.
struct Spent(#[allow(dead_code)] Option<Box<Leftovers>>);

/// See [`Spent`]: the spec, the sealed body, the event, and the principals'
/// text and the two fingerprints.
type Leftovers = (Spec, audit::Sealed, Event, [String; 3]);

/// What the writer job made of a signed certificate.
enum Recorded {
    Issued(Issued, Spent),
    /// It was signed with a key that is no longer the active one: sign again.
    StaleKey(Box<Spec>),
}

/// Signs outside the writer (see [`super::signing`]), then stores the
/// certificate and its audit record in a writer job; the certificate comes
/// back only once that job's transaction has committed. Signs once more if
/// the active CA key changed in between.
async fn sign_in_writer(
    state: &State,
    subject: &PublicKey,
    spec: Spec,
) -> Result<Issued, StoreError> {
    let mut spec = spec;
    for _ in 0..2 {
        let signed = sign(state, subject, &spec).await?;
        match state
            .writer
            .run(move |conn| record(conn, spec, signed))
            .await?
        {
            // What the records were made from is freed here, not by the writer.
            Recorded::Issued(issued, _spent) => return Ok(issued),
            Recorded::StaleKey(back) => {
                state.issuer.forget_key();
                spec = *back;
            }
        }
    }
    Err(StoreError::invalid(
        "the active CA key changed twice during one issuance, nothing was issued: request again",
    ))
}

/// Signs the certificate `spec` grants, with a fresh serial and the CA key
/// last seen active. Nothing is stored, and nothing leaves, yet.
async fn sign(state: &State, subject: &PublicKey, spec: &Spec) -> Result<Signed, StoreError> {
    let (ca_id, ca) = state.issuer.key(&state.readers, &state.signers).await?;
    let serial = state.issuer.serial(&state.writer).await?;
    let at = now_unix();
    let id = key_id(
        &spec.snap.user.name,
        &spec.snap.device.name,
        &spec.decision.role,
        serial,
    );
    // The validity window starts now, at issuance, not when the snapshot was taken.
    let (valid_after, valid_before) = validity(at as u64, spec.grant.backdate, spec.grant.ttl)
        .map_err(|e| StoreError::invalid(e.to_string()))?;
    let cert = sign_certificate(
        &ca,
        &CertRequest {
            subject,
            serial,
            key_id: id.clone(),
            principals: &spec.grant.principals,
            valid_after,
            valid_before,
            critical_options: &spec.grant.critical_options,
            extensions: &spec.grant.extensions,
        },
    )
    .map_err(|e| StoreError::invalid(e.to_string()))?;
    let line = certificate_line(&cert).map_err(|e| StoreError::invalid(e.to_string()))?;

    let mut event = Event::new("issued", serde_json::Value::Null)
        .user(&spec.snap.user.name)
        .device(&spec.snap.device.name)
        .role(&spec.decision.role);
    event.request_id.clone_from(&spec.request_id);
    Ok(Signed {
        ca_id,
        serial,
        key_id: id,
        valid_after,
        valid_before,
        line,
        at,
        principals: serde_json::to_string(&spec.grant.principals).unwrap_or_default(),
        ca_fingerprint: ca.fingerprint().to_string(),
        subject_fingerprint: subject.fingerprint(HashAlg::Sha256).to_string(),
        event,
    })
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

/// Stores a signed certificate and its audit record; runs inside the
/// writer's transaction. Refuses a key that is no longer the active one.
fn record(conn: &Connection, mut spec: Spec, signed: Signed) -> Result<Recorded, StoreError> {
    if let Some(id) = &spec.request_id {
        // Re-read the request under the write lock: a racing fetch may have
        // issued it, or its window may have closed, since it was read.
        let Some(mut req) = approval::load(conn, id)? else {
            return Err(StoreError::invalid(format!("there is no request {id}")));
        };
        approval::expire_if_due(conn, &mut req, now_unix())?;
        match req.state {
            approval::State::Approved => {}
            approval::State::Issued => {
                return already_issued(conn, id)?
                    .filter(|i| !i.line.is_empty())
                    .map(|issued| Recorded::Issued(issued, Spent(None)))
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
    // Under the write lock: a rotation or a CA revocation committed since
    // the key was looked up makes this certificate be signed again.
    if registry::active_id(conn)? != Some(signed.ca_id) {
        return Ok(Recorded::StaleKey(Box::new(spec)));
    }

    let user_id = crate::inventory::still_active(conn, spec.device_id)?;
    let request_id = spec.request_id.as_deref();
    // The body is encoded, compressed and hashed here, in the job: the
    // requester's task is on every request's path, while the writer spends
    // most of its turn waiting for the commit's fsync (measured: 6% more
    // certificates a second than sealing on the requester's task).
    let approvers = match request_id {
        Some(rid) => Some(
            approval::verdicts(conn, rid)?
                .into_iter()
                .filter(|v| v.approve)
                .map(|v| v.approver)
                .collect(),
        ),
        None => None,
    };
    let body = audit::Sealed::of(&audit::chain::canonical_of(&IssuedRecord {
        approvers,
        break_glass: spec.break_glass.then_some(true),
        certificate: CertificateRecord {
            ca_fingerprint: &signed.ca_fingerprint,
            critical_options: &spec.grant.critical_options,
            extensions: &spec.grant.extensions,
            key_id: &signed.key_id,
            principals: &spec.grant.principals,
            serial: signed.serial,
            subject_fingerprint: &signed.subject_fingerprint,
            valid_after: signed.valid_after,
            valid_before: signed.valid_before,
        },
        decision: &spec.decision,
        request: RequestRecord::of(&spec.params),
        snapshot: &spec.snap,
    }));
    let seq = audit::append_sealed(conn, signed.at, &signed.event, &body)?;
    conn.prepare_cached(
        "INSERT INTO certificates (serial, key_id, user_id, device_id, role, ca_key_id, principals,
                                   valid_after, valid_before, issued_at, audit_seq, request_id,
                                   certificate)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
    )?
    .execute(params![
        signed.serial as i64,
        signed.key_id,
        user_id,
        spec.device_id,
        spec.decision.role,
        signed.ca_id,
        signed.principals,
        signed.valid_after as i64,
        signed.valid_before as i64,
        signed.at,
        seq,
        request_id,
        // Kept only where `fetch` may have to send it again: a request's.
        request_id.map(|_| &signed.line)
    ])?;
    if let Some(rid) = request_id {
        approval::mark_issued(conn, rid, signed.serial, signed.at)?;
    }
    let issued = Issued {
        line: signed.line,
        serial: signed.serial,
        key_id: signed.key_id,
        valid_after: signed.valid_after,
        valid_before: signed.valid_before,
        principals: std::mem::take(&mut spec.grant.principals),
        again: false,
    };
    let strings = [
        signed.principals,
        signed.ca_fingerprint,
        signed.subject_fingerprint,
    ];
    let spent = Box::new((spec, body, signed.event, strings));
    Ok(Recorded::Issued(issued, Spent(Some(spent))))
}

#[cfg(test)]
mod tests;
