//! Runs one parsed command for an authenticated caller and renders its reply.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::Duration;

use russh::keys::PublicKey;

use super::State;
use super::commands::{Command, ago, exit, human, write_rules};
use super::issue::{self, Reply, RequestError};
use crate::inventory::Identity;
use crate::model::now_unix;
use crate::policy::{Decision, Outcome, RequestParams};

/// What goes back over the channel.
pub struct Output {
    pub stdout: String,
    pub stderr: String,
    pub status: u32,
}

impl Output {
    pub fn stdout(text: String, status: u32) -> Output {
        Output {
            stdout: text,
            stderr: String::new(),
            status,
        }
    }

    pub fn stderr(text: String, status: u32) -> Output {
        Output {
            stdout: String::new(),
            stderr: text,
            status,
        }
    }
}

pub async fn run_command(
    state: &State,
    who: &Identity,
    key: &PublicKey,
    peer: IpAddr,
    cmd: Command,
) -> Output {
    match cmd {
        Command::Request { role, ttl, reason } => {
            let params = RequestParams { ttl, reason };
            match issue::request(state, who, key, peer, &role, params).await {
                Ok(Reply::Issued(i)) => Output {
                    stdout: format!("{}\n", i.line),
                    stderr: format!(
                        "issued certificate serial {} for {} ({role}), valid for {}: from {} to {}\nkey id {}\n",
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
                },
                Ok(Reply::Denied(d)) => Output::stderr(denial(&d), exit::DENIED),
                Err(e) => request_error(e),
            }
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
                let _ = writeln!(out, "roles:");
                let params = RequestParams {
                    ttl: None,
                    reason: Some("explain".into()),
                };
                for role in policy.roles() {
                    let verdict = match policy.evaluate(&role.name, &snap, &params) {
                        Ok(d) => verdict(&d),
                        Err(e) => e.to_string(),
                    };
                    let _ = writeln!(out, "  {:<20} {verdict}", role.name);
                }
                Output::stdout(out, exit::OK)
            }
            Err(e) => request_error(RequestError::Internal(e)),
        },
        Command::Explain { role } => match issue::snapshot(state, who, peer).await {
            Ok((policy, snap)) => {
                let params = RequestParams {
                    ttl: None,
                    reason: Some("explain".into()),
                };
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

fn rfc3339(unix: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(unix)).to_string()
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

/// The stderr text of a denial: every failed rule with the value seen.
fn denial(d: &Decision) -> String {
    let mut out = format!("denied: request for role {} refused\n", d.role);
    if let Outcome::NeedsApproval { approval, .. } = &d.outcome {
        let _ = writeln!(
            out,
            "denied: role {} needs approval by {} of [{}], and this jitca does not run approvals",
            d.role,
            approval.count,
            approval.approvers.join(", ")
        );
    }
    for r in d.failed() {
        let _ = writeln!(out, "denied: {}: saw {}", r.rule, r.seen);
    }
    out
}

fn request_error(e: RequestError) -> Output {
    match e {
        RequestError::UnknownRole(e) => Output::stderr(format!("error: {e}\n"), exit::USAGE),
        RequestError::Internal(e) => {
            tracing::error!(error = %e, "request failed");
            Output::stderr(
                format!("error: internal error, nothing was issued: {e}\n"),
                exit::INTERNAL,
            )
        }
    }
}
