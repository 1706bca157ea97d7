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

use super::duration;
use super::posture::posture_rules;
use super::{Approval, Policy, RequestParams, Role, SourceAddress};
use crate::model::{Snapshot, Status};

// A decision's fields are declared in alphabetical order: audit records
// hold them as canonical JSON (keys sorted), written straight from these
// structs (see `audit::chain::canonical_of`, which checks it in tests).

/// The result of evaluating one role.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub outcome: Outcome,
    pub role: String,
    /// Every rule checked, in evaluation order.
    pub rules: Vec<RuleResult>,
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
    pub passed: bool,
    /// The rule in words, e.g. `member of one of [dba]`.
    pub rule: String,
    /// The value actually seen, e.g. `groups [dev, ops]`.
    pub seen: String,
}

/// What the evaluation concluded.
#[derive(Debug, Clone)]
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
    #[serde(serialize_with = "duration::serialize")]
    pub backdate: Duration,
    /// PROTOCOL.certkeys critical options: `force-command` (the command),
    /// `source-address` (comma-separated CIDRs; for a role pinned to the peer,
    /// the peer as `127.0.0.1/32`), `verify-required` (empty).
    pub critical_options: BTreeMap<String, String>,
    /// Flag extensions, sorted bytewise.
    pub extensions: BTreeSet<String>,
    /// The role's principals, never the requester's.
    pub principals: Vec<String>,
    /// The granted TTL: requested or the role's default; never above the
    /// role's `max_ttl`, which validation keeps at or below the global cap.
    #[serde(serialize_with = "duration::serialize")]
    pub ttl: Duration,
}

/// An outcome is the grant's (or approval's) fields with its `result`
/// among them, keys in sorted order: `{"backdate": ..., "result":
/// "allow", "ttl": ...}`. Written field by field (no intermediate JSON
/// tree): an issuance encodes one for its audit record.
impl Serialize for Outcome {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        /// An allowed grant: [`Grant`]'s fields with `result` in its place.
        #[derive(Serialize)]
        struct Allowed<'a> {
            #[serde(serialize_with = "duration::serialize")]
            backdate: Duration,
            critical_options: &'a BTreeMap<String, String>,
            extensions: &'a BTreeSet<String>,
            principals: &'a [String],
            result: &'static str,
            #[serde(serialize_with = "duration::serialize")]
            ttl: Duration,
        }
        #[derive(Serialize)]
        struct Denied {
            result: &'static str,
        }
        #[derive(Serialize)]
        struct Waiting<'a> {
            approval: &'a Approval,
            grant: &'a Grant,
            result: &'static str,
        }
        match self {
            Outcome::Allow(grant) => Allowed {
                backdate: grant.backdate,
                critical_options: &grant.critical_options,
                extensions: &grant.extensions,
                principals: &grant.principals,
                result: "allow",
                ttl: grant.ttl,
            }
            .serialize(serializer),
            Outcome::Deny => Denied { result: "deny" }.serialize(serializer),
            Outcome::NeedsApproval { grant, approval } => Waiting {
                approval,
                grant,
                result: "needs-approval",
            }
            .serialize(serializer),
        }
    }
}

/// The rule of a role that requires a reason (`require_reason`, or a
/// break-glass role): the request must carry one.
pub const REASON_RULE: &str = "a reason is given";

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
            rule: REASON_RULE.to_string(),
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

/// Evaluates whether the caller in `snapshot` may decide a request for
/// `role` made by `requester`: an active user on an active device, not the
/// requester, in one of the role's approver groups, on a device that passes
/// the role's `approver_posture`. Every rule is evaluated and returned.
pub fn evaluate_approver(
    policy: &Policy,
    role: &Role,
    snapshot: &Snapshot,
    requester: &str,
) -> Vec<RuleResult> {
    let user = &snapshot.user;
    let mut rules = vec![
        status_rule("approver is active", user.status),
        status_rule("approver's device is active", snapshot.device.status),
        RuleResult {
            rule: "approver is not the requester".to_string(),
            passed: user.name != requester,
            seen: format!("approver {}, requester {requester}", user.name),
        },
    ];
    match &role.approval {
        Some(approval) => rules.push(RuleResult {
            rule: format!("approver in one of [{}]", approval.approvers.join(", ")),
            passed: approval.approvers.iter().any(|g| user.groups.contains(g)),
            seen: format!("groups [{}]", user.groups.join(", ")),
        }),
        None => rules.push(RuleResult {
            rule: format!("role {} takes approvals", role.name),
            passed: false,
            seen: "the role has no approval rule".to_string(),
        }),
    }
    if let Some(name) = &role.approver_posture {
        match policy.profile(name) {
            Some(profile) => posture_rules(profile, snapshot, policy.backdate(), &mut rules),
            None => rules.push(RuleResult {
                rule: format!("posture {name}: profile is defined"),
                passed: false,
                seen: "not in the policy".to_string(),
            }),
        }
    }
    rules
}

fn status_rule(rule: &str, status: Status) -> RuleResult {
    RuleResult {
        rule: rule.to_string(),
        passed: status == Status::Active,
        seen: status.as_str().to_string(),
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
mod tests {
    use super::*;
    use crate::model::{AttrValue, ConnectionSnapshot, DeviceSnapshot, PostureAttr, UserSnapshot};

    const NOW: i64 = 1_700_000_000;
    const HOUR: i64 = 3600;

    const POLICY: &str = r#"
[posture.managed-laptop]
max_report_age = "24h"
require = [
  "device.disk_encrypted == true",
  "device.os_family in [\"macos\", \"linux\"]",
  "device.os_version >= 14.5",
  "user.clearance >= 2",
]

[role.prod-db]
groups = ["dba", "sre"]
principals = ["postgres", "dbadmin"]
ttl = "15m"
max_ttl = "1h"
posture = "managed-laptop"
networks = ["10.20.0.0/16", "2001:db8::/32"]
source_address = "peer"
force_command = "/usr/bin/psql"
verify_required = true
extensions = ["permit-pty", "permit-X11-forwarding", "permit-agent-forwarding"]

[role.reviewed]
groups = ["dba"]
principals = ["postgres"]
ttl = "10m"
require_reason = true
source_address = ["192.0.2.0/24", "198.51.100.7"]
approval = { count = 2, approvers = ["leads"], timeout = "30m" }

[role.glass]
groups = ["dba"]
principals = ["root-equivalent"]
ttl = "5m"
break_glass = true
"#;

    fn policy() -> Policy {
        match Policy::parse("p.toml", POLICY) {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        }
    }

    fn attr(value: AttrValue, age: i64) -> PostureAttr {
        PostureAttr {
            value,
            reported_at: NOW - age,
        }
    }

    fn snapshot() -> Snapshot {
        let posture = [
            ("disk_encrypted", attr(AttrValue::Bool(true), HOUR)),
            ("os_family", attr(AttrValue::Text("macos".into()), HOUR)),
            (
                "os_version",
                attr(AttrValue::Text("14.10".into()), 2 * HOUR),
            ),
            ("mdm_enrolled", attr(AttrValue::Bool(true), HOUR)),
        ];
        Snapshot {
            user: UserSnapshot {
                name: "alice".into(),
                status: Status::Active,
                groups: vec!["dba".into(), "dev".into()],
                attributes: [("clearance".to_string(), AttrValue::Int(3))].into(),
            },
            device: DeviceSnapshot {
                name: "alice-mbp".into(),
                fingerprint: "SHA256:test".into(),
                key_type: "ssh-ed25519".into(),
                status: Status::Active,
                posture: posture
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
            },
            connection: ConnectionSnapshot {
                peer: "10.20.1.5".parse().unwrap(),
                at: NOW,
            },
            policy_sha256: String::new(),
        }
    }

    fn decide(role: &str, snapshot: &Snapshot, request: &RequestParams) -> Decision {
        policy().evaluate(role, snapshot, request).unwrap()
    }

    fn no_request() -> RequestParams {
        RequestParams::default()
    }

    /// Evaluates prod-db after `change`, expecting exactly one failed rule.
    fn only_failure(change: impl FnOnce(&mut Snapshot, &mut RequestParams)) -> RuleResult {
        let (mut snap, mut request) = (snapshot(), no_request());
        change(&mut snap, &mut request);
        let decision = decide("prod-db", &snap, &request);
        assert!(matches!(decision.outcome, Outcome::Deny));
        let failed: Vec<RuleResult> = decision.failed().cloned().collect();
        assert_eq!(failed.len(), 1, "{failed:#?}");
        assert_eq!(decision.rules.len(), 10, "every rule is still evaluated");
        failed[0].clone()
    }

    fn rule(rule: &str, seen: &str) -> RuleResult {
        RuleResult {
            rule: rule.to_string(),
            passed: false,
            seen: seen.to_string(),
        }
    }

    #[test]
    fn a_passing_request_is_allowed_with_the_full_grant() {
        let decision = decide("prod-db", &snapshot(), &no_request());
        let names: Vec<&str> = decision.rules.iter().map(|r| r.rule.as_str()).collect();
        assert_eq!(
            names,
            [
                "user is active",
                "device is active",
                "member of one of [dba, sre]",
                "peer address in [10.20.0.0/16, 2001:db8::/32]",
                "posture managed-laptop: posture report present",
                "posture managed-laptop: device.disk_encrypted == true",
                "posture managed-laptop: device.os_family in [\"macos\", \"linux\"]",
                "posture managed-laptop: device.os_version >= 14.5",
                "posture managed-laptop: user.clearance >= 2",
                "ttl 15m <= role max 1h",
            ]
        );
        assert!(decision.failed().next().is_none(), "{:#?}", decision.rules);
        assert_eq!(decision.rules[2].seen, "groups [dba, dev]");
        assert_eq!(decision.rules[3].seen, "10.20.1.5");
        assert_eq!(decision.rules[7].seen, "\"14.10\", reported 2h ago");
        assert_eq!(decision.rules[9].seen, "role default 15m, role max 1h");
        let Outcome::Allow(grant) = decision.outcome else {
            panic!("{:?}", decision.outcome);
        };
        assert_eq!(grant.principals, ["postgres", "dbadmin"]);
        assert_eq!(grant.ttl, Duration::from_secs(900));
        assert_eq!(grant.backdate, Duration::from_secs(120));
        let options: Vec<(&str, &str)> = grant
            .critical_options
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            options,
            [
                ("force-command", "/usr/bin/psql"),
                ("source-address", "10.20.1.5/32"),
                ("verify-required", ""),
            ]
        );
        let extensions: Vec<&str> = grant.extensions.iter().map(String::as_str).collect();
        assert_eq!(
            extensions,
            [
                "permit-X11-forwarding",
                "permit-agent-forwarding",
                "permit-pty"
            ]
        );
    }

    #[test]
    fn a_requested_ttl_is_granted_in_whole_seconds() {
        let request = RequestParams {
            ttl: Some(Duration::from_millis(1_800_900)),
            reason: None,
        };
        let decision = decide("prod-db", &snapshot(), &request);
        assert_eq!(decision.rules[9].seen, "requested 30m, role max 1h");
        let Outcome::Allow(grant) = decision.outcome else {
            panic!("{:?}", decision.outcome);
        };
        assert_eq!(grant.ttl, Duration::from_secs(1800));
    }

    #[test]
    fn each_failed_rule_denies_with_the_value_seen() {
        let cases: Vec<(RuleResult, RuleResult)> = vec![
            (
                only_failure(|s, _| s.user.status = Status::Inactive),
                rule("user is active", "inactive"),
            ),
            (
                only_failure(|s, _| s.device.status = Status::Inactive),
                rule("device is active", "inactive"),
            ),
            (
                only_failure(|s, _| s.user.groups = vec!["dev".into(), "ops".into()]),
                rule("member of one of [dba, sre]", "groups [dev, ops]"),
            ),
            (
                only_failure(|s, _| s.connection.peer = "127.0.0.1".parse().unwrap()),
                rule("peer address in [10.20.0.0/16, 2001:db8::/32]", "127.0.0.1"),
            ),
            (
                only_failure(|s, _| {
                    s.device
                        .posture
                        .get_mut("disk_encrypted")
                        .unwrap()
                        .reported_at = NOW - 26 * HOUR - 180
                }),
                rule(
                    "posture managed-laptop: device.disk_encrypted == true",
                    "true, reported 26h 3m ago (max 24h)",
                ),
            ),
            (
                only_failure(|s, _| drop(s.device.posture.remove("os_family"))),
                rule(
                    "posture managed-laptop: device.os_family in [\"macos\", \"linux\"]",
                    "not reported",
                ),
            ),
            (
                only_failure(|s, _| {
                    s.device.posture.get_mut("os_version").unwrap().value =
                        AttrValue::Text("14.4.1".into())
                }),
                rule(
                    "posture managed-laptop: device.os_version >= 14.5",
                    "\"14.4.1\", reported 2h ago",
                ),
            ),
            (
                only_failure(|s, _| {
                    s.device.posture.get_mut("disk_encrypted").unwrap().value =
                        AttrValue::Text("yes".into())
                }),
                rule(
                    "posture managed-laptop: device.disk_encrypted == true",
                    "\"yes\" (cannot compare text with true), reported 1h ago",
                ),
            ),
            (
                only_failure(|s, _| drop(s.user.attributes.remove("clearance"))),
                rule("posture managed-laptop: user.clearance >= 2", "not set"),
            ),
            (
                only_failure(|_, r| r.ttl = Some(Duration::from_secs(7200))),
                rule("ttl 2h <= role max 1h", "requested 2h, role max 1h"),
            ),
            (
                only_failure(|_, r| r.ttl = Some(Duration::from_millis(400))),
                rule("ttl 0s > 0", "requested 0s, role max 1h"),
            ),
        ];
        for (got, want) in cases {
            assert_eq!(got, want);
        }
    }

    #[test]
    fn a_device_without_posture_fails_every_posture_rule() {
        let mut snap = snapshot();
        snap.device.posture.clear();
        let decision = decide("prod-db", &snap, &no_request());
        let failed: Vec<&str> = decision.failed().map(|r| r.rule.as_str()).collect();
        assert_eq!(failed.len(), 4, "{failed:?}");
        assert_eq!(failed[0], "posture managed-laptop: posture report present");
        assert_eq!(decision.rules[4].seen, "no posture attributes");
    }

    #[test]
    fn many_failures_are_all_reported() {
        let mut snap = snapshot();
        snap.user.status = Status::Inactive;
        snap.device.status = Status::Inactive;
        snap.user.groups.clear();
        snap.connection.peer = "192.0.2.1".parse().unwrap();
        let request = RequestParams {
            ttl: Some(Duration::from_secs(86_400)),
            reason: None,
        };
        let decision = decide("prod-db", &snap, &request);
        assert_eq!(decision.failed().count(), 5);
        assert_eq!(decision.rules[2].seen, "groups []");
    }

    #[test]
    fn source_address_peer_uses_the_canonical_peer_address() {
        let mut snap = snapshot();
        for (peer, want) in [
            ("2001:db8::7", "2001:db8::7/128"),
            ("::ffff:10.20.3.4", "10.20.3.4/32"),
        ] {
            snap.connection.peer = peer.parse().unwrap();
            let decision = decide("prod-db", &snap, &no_request());
            let Outcome::Allow(grant) = decision.outcome else {
                panic!("{peer}: {:#?}", decision.rules);
            };
            assert_eq!(grant.critical_options["source-address"], want);
        }
    }

    #[test]
    fn an_approval_role_needs_approval_and_a_reason() {
        let with_reason = RequestParams {
            ttl: None,
            reason: Some("INC-42".into()),
        };
        let decision = decide("reviewed", &snapshot(), &with_reason);
        let last = decision.rules.last().unwrap();
        assert_eq!(
            (last.rule.as_str(), last.seen.as_str()),
            ("a reason is given", "\"INC-42\"")
        );
        let Outcome::NeedsApproval { grant, approval } = decision.outcome else {
            panic!("{:?}", decision.outcome);
        };
        assert_eq!(
            grant.critical_options["source-address"],
            "192.0.2.0/24,198.51.100.7/32"
        );
        assert_eq!(approval.count, 2);

        let blank = RequestParams {
            ttl: None,
            reason: Some("  ".into()),
        };
        let decision = decide("reviewed", &snapshot(), &blank);
        assert!(matches!(decision.outcome, Outcome::Deny));
        let failed: Vec<RuleResult> = decision.failed().cloned().collect();
        assert_eq!(failed, [rule("a reason is given", "none given")]);
    }

    #[test]
    fn approvers_must_be_in_a_group_not_the_requester_and_on_a_passing_device() {
        let policy = policy();
        let role = policy.role("reviewed").unwrap();
        let mut approver = snapshot();
        approver.user.name = "bob".into();
        approver.user.groups = vec!["leads".into()];
        let rules = evaluate_approver(&policy, role, &approver, "alice");
        assert!(rules.iter().all(|r| r.passed), "{rules:?}");

        let own = evaluate_approver(&policy, role, &approver, "bob");
        let failed: Vec<_> = own
            .iter()
            .filter(|r| !r.passed)
            .map(|r| r.rule.as_str())
            .collect();
        assert_eq!(failed, ["approver is not the requester"]);

        approver.user.groups = vec!["dba".into()];
        let outsider = evaluate_approver(&policy, role, &approver, "alice");
        let failed: Vec<_> = outsider
            .iter()
            .filter(|r| !r.passed)
            .map(|r| r.rule.as_str())
            .collect();
        assert_eq!(failed, ["approver in one of [leads]"]);
    }

    #[test]
    fn break_glass_requires_a_reason() {
        let decision = decide("glass", &snapshot(), &no_request());
        let failed: Vec<&str> = decision.failed().map(|r| r.rule.as_str()).collect();
        assert_eq!(failed, ["a reason is given"]);
    }

    #[test]
    fn an_unknown_role_lists_the_known_ones() {
        let err = policy()
            .evaluate("nope", &snapshot(), &no_request())
            .unwrap_err();
        assert_eq!(err.known, ["glass", "prod-db", "reviewed"]);
    }

    #[test]
    fn decisions_serialize_with_a_result_tag_and_readable_durations() {
        let decision = decide("prod-db", &snapshot(), &no_request());
        let json = serde_json::to_value(&decision).unwrap();
        assert_eq!(json["outcome"]["result"], "allow");
        assert_eq!(json["outcome"]["ttl"], "15m");
        assert_eq!(json["outcome"]["backdate"], "2m");
        assert_eq!(json["rules"][0]["rule"], "user is active");
        let with_reason = RequestParams {
            ttl: None,
            reason: Some("x".into()),
        };
        let json = serde_json::to_value(decide("reviewed", &snapshot(), &with_reason)).unwrap();
        assert_eq!(json["outcome"]["result"], "needs-approval");
        assert_eq!(json["outcome"]["approval"]["timeout"], "30m");
        let json = serde_json::to_value(decide("glass", &snapshot(), &no_request())).unwrap();
        assert_eq!(json["outcome"], serde_json::json!({ "result": "deny" }));
        // Written straight, each outcome is already canonical (keys sorted).
        for (role, request) in [
            ("prod-db", no_request()),
            ("reviewed", with_reason),
            ("glass", no_request()),
        ] {
            let outcome = decide(role, &snapshot(), &request).outcome;
            let text = serde_json::to_string(&outcome).unwrap();
            let sorted = crate::audit::chain::canonical(&serde_json::to_value(&outcome).unwrap());
            assert_eq!(text, sorted, "{role}");
        }
    }
}
