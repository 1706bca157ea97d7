//! The request path, independent of the SSH transport:
//! identity → snapshot → decision → issuance → audit.
//!
//! A certificate is signed and its row and audit record are written in one
//! job of the single writer; the job's result, and so the certificate, only
//! comes back once the transaction that holds the audit record has
//! committed. No audit record, no certificate.

use std::net::IpAddr;
use std::sync::Arc;

use rusqlite::{Connection, params};
use russh::keys::{HashAlg, PublicKey};
use serde_json::json;

use super::State;
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

/// Handles `request ROLE`: decides, and signs when the policy allows.
pub async fn request(
    state: &State,
    who: &Identity,
    subject: &PublicKey,
    peer: IpAddr,
    role: &str,
    params: RequestParams,
) -> Result<Reply, RequestError> {
    let (policy, snap) = snapshot(state, who, peer).await?;
    let decision = policy.evaluate(role, &snap, &params)?;
    let grant = match &decision.outcome {
        Outcome::Allow(grant) => grant.clone(),
        Outcome::Deny | Outcome::NeedsApproval { .. } => {
            record_denial(state, snap, decision.clone(), params).await?;
            return Ok(Reply::Denied(decision));
        }
    };

    let signers = state.signers.clone();
    let subject = subject.clone();
    let issued = state
        .writer
        .run(move |conn| issue(conn, &signers, &subject, snap, decision, grant, params))
        .await?;
    tracing::info!(
        user = %who.user, device = %who.device, role, serial = issued.serial,
        key_id = %issued.key_id, "issued"
    );
    Ok(Reply::Issued(issued))
}

async fn record_denial(
    state: &State,
    snap: Snapshot,
    decision: Decision,
    params: RequestParams,
) -> Result<(), StoreError> {
    let failed: Vec<&str> = decision.failed().map(|r| r.rule.as_str()).collect();
    tracing::info!(
        user = %snap.user.name, device = %snap.device.name, role = %decision.role,
        failed = ?failed, "denied"
    );
    let event = Event::new(
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

/// Next serial: one more than the highest ever issued. Runs in the writer's
/// transaction, so two issuances can never draw the same number.
fn next_serial(conn: &Connection) -> Result<u64, StoreError> {
    let max: i64 = conn
        .prepare_cached("SELECT COALESCE(MAX(serial), 0) FROM certificates")?
        .query_row([], |r| r.get(0))?;
    u64::try_from(max)
        .ok()
        .and_then(|m| m.checked_add(1))
        .filter(|s| *s <= i64::MAX as u64)
        .ok_or_else(|| StoreError::invalid("certificate serials are exhausted"))
}

/// Signs and records one certificate; runs inside the writer's transaction.
fn issue(
    conn: &Connection,
    signers: &Signers,
    subject: &PublicKey,
    snap: Snapshot,
    decision: Decision,
    grant: Grant,
    params: RequestParams,
) -> Result<Issued, StoreError> {
    let (ca_id, ca) = signers.active(conn)?;
    let serial = next_serial(conn)?;
    let id = key_id(&snap.user.name, &snap.device.name, &decision.role, serial);
    // The validity window starts now, at issuance, not when the snapshot was taken.
    let now = now_unix();
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
    let event = Event::new(
        "issued",
        json!({
            "snapshot": snap,
            "decision": decision,
            "request": request_json(&params),
            "certificate": certificate,
        }),
    )
    .user(&snap.user.name)
    .device(&snap.device.name)
    .role(&decision.role);
    let seq = audit::append(conn, now, &event)?;
    let principals = serde_json::to_string(&grant.principals).unwrap_or_default();
    let inserted = conn.prepare_cached(
        "INSERT INTO certificates (serial, key_id, user_id, device_id, role, ca_key_id, principals,
                                   valid_after, valid_before, issued_at, audit_seq)
         SELECT ?1, ?2, d.user_id, d.id, ?3, ?4, ?5, ?6, ?7, ?8, ?9 FROM devices d WHERE d.name = ?10",
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
        snap.device.name
    ])?;
    if inserted != 1 {
        return Err(StoreError::invalid(format!(
            "device {} was removed while its certificate was being issued",
            snap.device.name
        )));
    }
    Ok(Issued {
        line,
        serial,
        key_id: id,
        valid_after,
        valid_before,
        principals: grant.principals,
    })
}
