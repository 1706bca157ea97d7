//! Evaluating one role against a snapshot: every rule is checked, none is
//! skipped because an earlier one failed, and each result carries the value
//! that was seen, so a denial can list every reason at once.
//!
//! Rules, in order: user is active; device is active; group membership;
//! peer network (when the role lists networks); posture (when the role names
//! a profile: a report is present, then each requirement with its age
//! check); TTL; reason (when the role requires one or is break-glass).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use ipnet::IpNet;
use serde::Serialize;

use super::compare::{Verdict, type_name};
use super::duration;
use super::requirement::{Requirement, Subject};
use super::{Approval, Policy, PostureProfile, RequestParams, Role, SourceAddress};
use crate::model::{AttrValue, PostureAttr, Snapshot, Status};

/// The result of evaluating one role.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub role: String,
    /// Every rule checked, in evaluation order.
    pub rules: Vec<RuleResult>,
    pub outcome: Outcome,
}

impl Decision {
    /// The rules that failed, in evaluation order.
    pub fn failed(&self) -> impl Iterator<Item = &RuleResult> {
        self.rules.iter().filter(|r| !r.passed)
    }
}

/// One rule and what was seen when checking it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleResult {
    /// The rule in words, e.g. `member of one of [dba]`.
    pub rule: String,
    pub passed: bool,
    /// The value actually seen, e.g. `groups [dev, ops]`.
    pub seen: String,
}

/// What the evaluation concluded.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum Outcome {
    /// Every rule passed: issue a certificate with this grant.
    Allow(Grant),
    /// At least one rule failed; [`Decision::failed`] lists them.
    Deny,
    /// Every rule passed, and the role needs approval before issuing.
    NeedsApproval { grant: Grant, approval: Approval },
}

/// What a certificate issued for the decision contains.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Grant {
    /// The role's principals, never the requester's.
    pub principals: Vec<String>,
    /// The granted TTL: requested or the role's default; never above the
    /// role's `max_ttl`, which validation keeps at or below the global cap.
    #[serde(serialize_with = "duration::serialize")]
    pub ttl: Duration,
    #[serde(serialize_with = "duration::serialize")]
    pub backdate: Duration,
    /// PROTOCOL.certkeys critical options: `force-command` (the command),
    /// `source-address` (comma-separated CIDRs; for a role pinned to the peer,
    /// the peer as `127.0.0.1/32`), `verify-required` (empty).
    pub critical_options: BTreeMap<String, String>,
    /// Flag extensions, sorted bytewise.
    pub extensions: BTreeSet<String>,
}

/// Evaluates `role` (which belongs to `policy`) against `snapshot`.
pub fn evaluate(
    policy: &Policy,
    role: &Role,
    snapshot: &Snapshot,
    request: &RequestParams,
) -> Decision {
    let user = &snapshot.user;
    let peer = snapshot.connection.peer.to_canonical();
    let mut rules = vec![
        status_rule("user is active", user.status),
        status_rule("device is active", snapshot.device.status),
        RuleResult {
            rule: format!("member of one of [{}]", role.groups.join(", ")),
            passed: role.groups.iter().any(|g| user.groups.contains(g)),
            seen: format!("groups [{}]", user.groups.join(", ")),
        },
    ];

    if !role.networks.is_empty() {
        let nets: Vec<String> = role.networks.iter().map(IpNet::to_string).collect();
        rules.push(RuleResult {
            rule: format!("peer address in [{}]", nets.join(", ")),
            passed: role.networks.iter().any(|n| n.contains(&peer)),
            seen: peer.to_string(),
        });
    }

    if let Some(name) = &role.posture {
        match policy.profile(name) {
            Some(profile) => posture_rules(profile, snapshot, policy.backdate(), &mut rules),
            None => rules.push(RuleResult {
                rule: format!("posture {name}: profile is defined"),
                passed: false,
                seen: "not in the policy".to_string(),
            }),
        }
    }

    // Certificates count validity in whole seconds; a fraction is dropped.
    let ttl = request
        .ttl
        .map(|t| Duration::from_secs(t.as_secs()))
        .unwrap_or(role.ttl);
    let shown = duration::format(ttl);
    let max = duration::format(role.max_ttl);
    let source = if request.ttl.is_some() {
        "requested"
    } else {
        "role default"
    };
    rules.push(RuleResult {
        rule: if ttl.is_zero() {
            format!("ttl {shown} > 0")
        } else {
            format!("ttl {shown} <= role max {max}")
        },
        passed: !ttl.is_zero() && ttl <= role.max_ttl && ttl <= policy.max_ttl(),
        seen: format!("{source} {shown}, role max {max}"),
    });

    if role.require_reason || role.break_glass {
        let reason = request.reason.as_deref().map(str::trim).unwrap_or("");
        rules.push(RuleResult {
            rule: "a reason is given".to_string(),
            passed: !reason.is_empty(),
            seen: if reason.is_empty() {
                "none given".to_string()
            } else {
                format!("{reason:?}")
            },
        });
    }

    let outcome = if rules.iter().any(|r| !r.passed) {
        Outcome::Deny
    } else {
        let grant = grant(policy, role, peer, ttl);
        match &role.approval {
            Some(approval) => Outcome::NeedsApproval {
                grant,
                approval: approval.clone(),
            },
            None => Outcome::Allow(grant),
        }
    };
    Decision {
        role: role.name.clone(),
        rules,
        outcome,
    }
}

fn status_rule(rule: &str, status: Status) -> RuleResult {
    RuleResult {
        rule: rule.to_string(),
        passed: status == Status::Active,
        seen: status.as_str().to_string(),
    }
}

fn posture_rules(
    profile: &PostureProfile,
    snapshot: &Snapshot,
    skew: Duration,
    rules: &mut Vec<RuleResult>,
) {
    let name = &profile.name;
    let posture = &snapshot.device.posture;
    rules.push(RuleResult {
        rule: format!("posture {name}: posture report present"),
        passed: !posture.is_empty(),
        seen: match posture.len() {
            0 => "no posture attributes".to_string(),
            n => format!("{n} attributes reported"),
        },
    });

    for req in &profile.require {
        let (passed, seen) = match req.subject {
            Subject::Device => device_check(
                req,
                posture.get(&req.attr),
                snapshot.connection.at,
                profile.max_report_age,
                skew,
            ),
            Subject::User => match snapshot.user.attributes.get(&req.attr) {
                Some(value) => verdict(req, value),
                None => (false, "not set".to_string()),
            },
        };
        rules.push(RuleResult {
            rule: format!("posture {name}: {req}"),
            passed,
            seen,
        });
    }
}

/// Checks a device attribute and its age: a report older than `max_age`,
/// or dated further in the future than the clock skew allowance, fails.
fn device_check(
    req: &Requirement,
    attr: Option<&PostureAttr>,
    now: i64,
    max_age: Duration,
    skew: Duration,
) -> (bool, String) {
    let Some(attr) = attr else {
        return (false, "not reported".to_string());
    };
    let age = now.saturating_sub(attr.reported_at);
    if age < 0 {
        let ahead = age.unsigned_abs();
        if ahead > skew.as_secs() {
            let seen = format!(
                "{}, reported {} in the future",
                attr.value,
                duration::format_secs(ahead)
            );
            return (false, seen);
        }
    }
    let age = duration::format_secs(age.max(0).unsigned_abs());
    if attr.reported_at < now.saturating_sub(i64::try_from(max_age.as_secs()).unwrap_or(i64::MAX)) {
        let seen = format!(
            "{}, reported {age} ago (max {})",
            attr.value,
            duration::format(max_age)
        );
        return (false, seen);
    }
    let (passed, seen) = verdict(req, &attr.value);
    (passed, format!("{seen}, reported {age} ago"))
}

fn verdict(req: &Requirement, value: &AttrValue) -> (bool, String) {
    match req.check(value) {
        Verdict::Pass => (true, value.to_string()),
        Verdict::Fail => (false, value.to_string()),
        Verdict::CannotCompare => (
            false,
            format!(
                "{value} (cannot compare {} with {})",
                type_name(value),
                req.value
            ),
        ),
    }
}

fn grant(policy: &Policy, role: &Role, peer: std::net::IpAddr, ttl: Duration) -> Grant {
    let mut critical_options = BTreeMap::new();
    if let Some(cmd) = &role.force_command {
        critical_options.insert("force-command".to_string(), cmd.clone());
    }
    match &role.source_address {
        Some(SourceAddress::Peer) => {
            critical_options.insert("source-address".to_string(), IpNet::from(peer).to_string());
        }
        Some(SourceAddress::Fixed(nets)) => {
            let list: Vec<String> = nets.iter().map(IpNet::to_string).collect();
            critical_options.insert("source-address".to_string(), list.join(","));
        }
        None => {}
    }
    if role.verify_required {
        critical_options.insert("verify-required".to_string(), String::new());
    }
    Grant {
        principals: role.principals.clone(),
        ttl,
        backdate: policy.backdate(),
        critical_options,
        extensions: role.extensions.iter().cloned().collect(),
    }
}

#[cfg(test)]
mod tests {}
