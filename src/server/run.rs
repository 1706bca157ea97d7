//! Runs one parsed command for an authenticated caller and renders its reply.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::Duration;

use russh::keys::PublicKey;

use super::State;
use super::approve;
use super::commands::{Command, ago, exit, human, write_rules};
use super::issue::{self, Issued, Pending, Reply, RequestError};
use crate::inventory::Identity;
use crate::model::now_unix;
use crate::policy::{Decision, Outcome, REASON_RULE, RequestParams};
use crate::store::StoreError;

/// What goes back over the channel.
pub struct Output {
    pub stdout: Vec<u8>,
    pub stderr: String,
    pub status: u32,
}

impl Output {
    pub fn stdout(text: impl Into<Vec<u8>>, status: u32) -> Output {
        Output {
            stdout: text.into(),
            stderr: String::new(),
            status,
        }
    }

    pub fn stderr(text: String, status: u32) -> Output {
        Output {
            stdout: Vec::new(),
            stderr: text,
            status,
        }
    }
}

/// Where a long-running command sends progress lines (stderr) while it runs.
pub struct Progress(pub tokio::sync::mpsc::UnboundedSender<String>);

impl Progress {
    /// Sends one line; lost silently when the client has gone.
    pub fn line(&self, text: String) {
        let _ = self.0.send(text);
    }

    /// True if and only if the client can no longer be reached.
    pub fn closed(&self) -> bool {
        self.0.is_closed()
    }
}

pub async fn run_command(
    state: &State,
    who: &Identity,
    key: &PublicKey,
    peer: IpAddr,
    cmd: Command,
    progress: &Progress,
) -> Output {
    match cmd {
        Command::Request {
            role,
            ttl,
            reason,
            wait,
        } => {
            if let Err(wait) = state.requests.take(who.device_id) {
                let fingerprint = key.fingerprint(russh::keys::HashAlg::Sha256).to_string();
                state.record_request_limited(who, peer, &fingerprint).await;
                tracing::warn!(user = %who.user, device = %who.device, "request refused: rate limit");
                return Output::stderr(
                    format!(
                        "too many requests from device {}: at most {} a minute; try again in {}s\n",
                        who.device,
                        state.requests.per_minute(),
                        wait.as_secs().max(1)
                    ),
                    exit::LIMITED,
                );
            }
            let params = RequestParams { ttl, reason };
            match issue::request(state, who, key, peer, &role, params).await {
                Ok(Reply::Issued(i)) => issued_output(&i, &role),
                Ok(Reply::Denied(d)) => Output::stderr(denial(&d), exit::DENIED),
                Ok(Reply::Pending(p)) => {
                    let text = pending_output(state, who, &p).await;
                    if wait {
                        progress.line(text);
                        approve::wait_for(state, who, key, peer, &p.id, progress).await
                    } else {
                        Output::stderr(text, exit::PENDING)
                    }
                }
                Err(e) => request_error(e),
            }
        }
        Command::Fetch { id, wait } => {
            approve::fetch(state, who, key, peer, &id, wait, progress).await
        }
        Command::Status => approve::status(state, who).await,
        Command::Krl { raw } => krl(state, raw).await,
        Command::Pending => approve::pending(state, who, peer).await,
        Command::Show { id } => approve::show(state, who, peer, &id).await,
        Command::Approve { id, comment } => {
            approve::decide(state, who, peer, &id, true, comment).await
        }
        Command::Deny { id, reason } => {
            approve::decide(state, who, peer, &id, false, Some(reason)).await
        }
        Command::Whoami => match issue::snapshot(state, who, peer).await {
            Ok((policy, snap)) => {
                let mut out = String::new();
                let now = snap.connection.at;
                let _ = writeln!(
                    out,
                    "user:    {} ({})",
                    snap.user.name,
                    snap.user.status.as_str()
                );
                let _ = writeln!(out, "groups:  {}", list_or_none(&snap.user.groups));
                for (k, v) in &snap.user.attributes {
                    let _ = writeln!(out, "  user.{k} = {v}");
                }
                let _ = writeln!(
                    out,
                    "device:  {} ({}), {} {}",
                    snap.device.name,
                    snap.device.status.as_str(),
                    snap.device.key_type,
                    snap.device.fingerprint
                );
                if snap.device.posture.is_empty() {
                    let _ = writeln!(out, "posture: no report");
                } else {
                    let _ = writeln!(out, "posture:");
                    for (k, p) in &snap.device.posture {
                        let _ = writeln!(
                            out,
                            "  device.{k} = {} (reported {})",
                            p.value,
                            ago(now, p.reported_at)
                        );
                    }
                }
                let _ = writeln!(out, "peer:    {}", snap.connection.peer);
                let _ = writeln!(out, "policy:  sha256 {}", snap.policy_sha256);
                let _ = writeln!(out, "roles (what a request now would get):");
                for role in policy.roles() {
                    let plain = policy.evaluate(&role.name, &snap, &RequestParams::default());
                    let verdict = match plain {
                        // Only the reason is missing: say what one would get.
                        Ok(d)
                            if d.failed().all(|r| r.rule == REASON_RULE)
                                && d.failed().count() > 0 =>
                        {
                            let with = RequestParams {
                                ttl: None,
                                reason: Some("given".into()),
                            };
                            match policy.evaluate(&role.name, &snap, &with) {
                                Ok(d) => format!("{} with a --reason", verdict(&d)),
                                Err(e) => e.to_string(),
                            }
                        }
                        Ok(d) => verdict(&d),
                        Err(e) => e.to_string(),
                    };
                    let _ = writeln!(out, "  {:<20} {verdict}", role.name);
                }
                Output::stdout(out, exit::OK)
            }
            Err(e) => request_error(RequestError::Internal(e)),
        },
        Command::Explain { role, ttl, reason } => match issue::snapshot(state, who, peer).await {
            Ok((policy, snap)) => {
                // Exactly the request that `request ROLE` with these options
                // would make: a role that needs a reason fails without one.
                let params = RequestParams { ttl, reason };
                match policy.evaluate(&role, &snap, &params) {
                    Ok(d) => {
                        let mut out =
                            format!("role {}: a request now would be {}\n", d.role, verdict(&d));
                        write_rules(&mut out, &d.rules, "  FAIL  ");
                        if let Outcome::Allow(g) | Outcome::NeedsApproval { grant: g, .. } =
                            &d.outcome
                        {
                            let _ = writeln!(
                                out,
                                "grant:   principals {}, ttl {}, extensions {}",
                                g.principals.join(", "),
                                human(g.ttl),
                                list_or_none(&g.extensions.iter().cloned().collect::<Vec<_>>())
                            );
                            for (k, v) in &g.critical_options {
                                let _ = writeln!(out, "  critical option {k} {v}");
                            }
                        }
                        Output::stdout(out, exit::OK)
                    }
                    Err(e) => Output::stderr(format!("error: {e}\n"), exit::USAGE),
                }
            }
            Err(e) => request_error(RequestError::Internal(e)),
        },
    }
}

pub fn rfc3339(unix: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(unix)).to_string()
}

/// `krl`: the current KRL, base64 on one line or raw bytes.
async fn krl(state: &State, raw: bool) -> Output {
    let skew = state.policy().backdate();
    let spec = state
        .readers
        .run(move |conn| crate::ca::revocation::krl_spec(conn, now_unix(), skew))
        .await;
    let bytes = match spec.map(|s| crate::ca::krl::encode(&s)) {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            return request_error(RequestError::Internal(StoreError::invalid(e.to_string())));
        }
        Err(e) => return request_error(RequestError::Internal(e)),
    };
    if raw {
        Output::stdout(bytes, exit::OK)
    } else {
        use base64::Engine as _;
        let line = base64::engine::general_purpose::STANDARD.encode(bytes);
        Output::stdout(format!("{line}\n"), exit::OK)
    }
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "(none)".into()
    } else {
        items.join(", ")
    }
}

fn verdict(d: &Decision) -> String {
    let failed = d.failed().count();
    match &d.outcome {
        Outcome::Allow(_) => "issued".into(),
        Outcome::NeedsApproval { .. } => "held for approval".into(),
        Outcome::Deny => format!("denied ({failed} of {} rules fail)", d.rules.len()),
    }
}

/// The reply that carries a certificate.
pub fn issued_output(i: &Issued, role: &str) -> Output {
    let again = if i.again {
        " (issued before; sent again)"
    } else {
        ""
    };
    Output {
        stdout: format!("{}\n", i.line).into_bytes(),
        stderr: format!(
            "issued certificate serial {}{again} for {} ({role}), valid for {}: from {} to {}\nkey id {}\n",
            i.serial,
            i.principals.join(", "),
            human(Duration::from_secs(
                i.valid_before.saturating_sub(now_unix().max(0) as u64)
            )),
            rfc3339(i.valid_after),
            rfc3339(i.valid_before),
            i.key_id
        ),
        status: exit::OK,
    }
}

/// Who can approve a request for `role` by `requester` now: the active
/// members of `groups` with an active device that passes every approver
/// rule (the role's `approver_posture` among them), and the members who
/// have none.
fn approvers_now(
    conn: &mut rusqlite::Connection,
    policy: &crate::policy::Policy,
    role: &str,
    groups: &[String],
    requester: &Identity,
) -> Result<(Vec<String>, Vec<String>), crate::store::StoreError> {
    let sha = policy.sha256().to_string();
    // The approver rules do not look at the connection: any address does.
    let loopback = IpAddr::from([127, 0, 0, 1]);
    let (mut able, mut unable) = (Vec::new(), Vec::new());
    for member in crate::inventory::active_members(conn, groups, requester.user_id)? {
        let mut passes = false;
        for device in crate::inventory::active_devices_of(conn, &member)? {
            let snap = crate::inventory::take_snapshot(conn, device, loopback, now_unix(), &sha)?;
            let rules = policy
                .evaluate_approver(role, &snap, &requester.user)
                .unwrap_or_default();
            if !rules.is_empty() && rules.iter().all(|r| r.passed) {
                passes = true;
                break;
            }
        }
        if passes {
            able.push(member)
        } else {
            unable.push(member)
        }
    }
    Ok((able, unable))
}

/// What a requester is told when the request waits for approvers.
async fn pending_output(state: &State, who: &Identity, p: &Pending) -> String {
    let (groups, role, requester) = (p.groups.clone(), p.role.clone(), who.clone());
    let policy = state.policy();
    let (approvers, unable) = state
        .readers
        .run(move |conn| approvers_now(conn, &policy, &role, &groups, &requester))
        .await
        .unwrap_or_default();
    let now = now_unix();
    let can = match (approvers.is_empty(), unable.is_empty()) {
        (true, true) => "nobody yet: ask an operator to fill the approver groups".to_string(),
        (false, true) => approvers.join(", "),
        (true, false) => format!(
            "nobody now (no device passing the approver rules): {}",
            unable.join(", ")
        ),
        (false, false) => format!(
            "{}; not now (no device passing the approver rules): {}",
            approvers.join(", "),
            unable.join(", ")
        ),
    };
    format!(
        "pending: request {} for role {} needs {} approval(s) from [{}]\npending: can approve: {}\npending: expires at {} (in {})\npending: wait with: fetch {} --wait\n",
        p.id,
        p.role,
        p.needed,
        p.groups.join(", "),
        can,
        rfc3339(p.deadline.max(0) as u64),
        human(Duration::from_secs(
            p.deadline.saturating_sub(now).max(0) as u64
        )),
        p.id
    )
}

/// The stderr text of a denial: every failed rule with the value seen.
pub fn denial(d: &Decision) -> String {
    let mut out = format!("denied: request for role {} refused\n", d.role);
    for r in d.failed() {
        let _ = writeln!(out, "denied: {}: saw {}", r.rule, r.seen);
    }
    out
}

pub fn request_error(e: RequestError) -> Output {
    match e {
        RequestError::UnknownRole(e) => Output::stderr(format!("error: {e}\n"), exit::USAGE),
        RequestError::Internal(StoreError::Refused(why)) => {
            Output::stderr(format!("denied: {why}; nothing was issued\n"), exit::DENIED)
        }
        RequestError::Internal(e) => {
            // The details (file paths, database errors) are for the
            // operator's log, not for whoever is connected.
            let reference = crate::approval::new_id().replacen("r-", "e-", 1);
            tracing::error!(error = %e, %reference, "request failed");
            Output::stderr(
                format!(
                    "error: internal error, nothing was issued; the CA's log has the details under {reference}\n"
                ),
                exit::INTERNAL,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::testutil::state_with_alice;

    /// `whoami` or `explain ...` as alice, from loopback, under a policy
    /// whose role `fix` needs a reason.
    async fn ask(line: &str) -> Output {
        let dir = tempfile::tempdir().unwrap();
        let (state, key, fp) = state_with_alice(dir.path(), "run.db");
        std::fs::write(
            &state.policy_path,
            "[role.fix]\ngroups = [\"ops\"]\nprincipals = [\"ops\"]\nttl = \"5m\"\nrequire_reason = true\n",
        )
        .unwrap();
        state.reload_policy();
        let conn = crate::store::connect(&dir.path().join("run.db")).unwrap();
        let who = crate::inventory::identity_by_fingerprint(&conn, &fp)
            .unwrap()
            .unwrap();
        let super::super::commands::Parsed::Run(cmd) =
            super::super::commands::parse(line.as_bytes())
        else {
            panic!("{line} does not parse");
        };
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let peer = "127.0.0.1".parse().unwrap();
        run_command(&state, &who, key.public_key(), peer, cmd, &Progress(tx)).await
    }

    fn text(out: &Output) -> String {
        String::from_utf8_lossy(&out.stdout).into_owned() + &out.stderr
    }

    #[tokio::test]
    async fn explain_without_a_reason_says_a_role_that_needs_one_would_be_denied() {
        // It used to evaluate with the reason "explain" and promise a
        // certificate that `request` then refused.
        let out = text(&ask("explain fix").await);
        assert!(out.contains("would be denied"), "{out}");
        assert!(out.contains("a reason is given"), "{out}");
        let out = text(&ask("explain fix --reason INC-7").await);
        assert!(out.contains("would be issued"), "{out}");
    }

    #[tokio::test]
    async fn whoami_says_a_role_that_needs_a_reason_is_issued_with_one() {
        let out = text(&ask("whoami").await);
        let line = out
            .lines()
            .find(|l| l.trim_start().starts_with("fix "))
            .unwrap();
        assert!(line.ends_with("issued with a --reason"), "{out}");
    }
}
