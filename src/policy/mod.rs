//! The access policy: `policy.toml` loaded in two stages, and evaluated
//! against a [`Snapshot`].
//!
//! Stage one ([`raw`]) reads the TOML into serde structs that keep the byte
//! span of every value, collecting every syntax, type and unknown-key error it
//! meets. Stage two ([`validate`]) turns those structs into a [`Policy`] whose
//! fields can only hold checked values: durations within their caps, safe
//! principals, parsed networks and requirements, posture profiles that exist.
//! Every problem found in either stage becomes one [`Diagnostic`] naming the
//! file and line; a file with any problem yields no `Policy` at all.
//!
//! [`Policy::evaluate`] then checks one role against a snapshot and returns a
//! [`Decision`] holding every rule, passed or failed, with the value it saw.

mod compare;
mod duration;
mod evaluate;
mod fields;
mod posture;
pub(crate) mod principal;
mod raw;
mod requirement;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::model::Snapshot;

pub use evaluate::{Decision, Grant, Outcome, REASON_RULE, RuleResult};

use requirement::Requirement;

/// The largest policy file read; a policy is a few kilobytes of text.
const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// A validated policy. It is only built by [`Policy::load`] or
/// [`Policy::parse`], so every value in it has passed validation.
#[derive(Debug, Clone)]
pub struct Policy {
    sha256: String,
    backdate: Duration,
    max_ttl: Duration,
    publish_ahead: Duration,
    rotate_every: Duration,
    roles: BTreeMap<String, Role>,
    profiles: BTreeMap<String, PostureProfile>,
    notify: Option<Vec<String>>,
    warnings: Vec<String>,
}

/// One `[role.NAME]` table, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Role {
    pub name: String,
    pub description: Option<String>,
    /// Requester groups; the requester must be in at least one. Non-empty.
    pub groups: Vec<String>,
    /// Certificate principals: non-empty, at most [`MAX_PRINCIPALS`], each
    /// passing [`check_principal`], no duplicates.
    pub principals: Vec<String>,
    /// The TTL granted when the request names none. Above zero.
    pub ttl: Duration,
    /// The largest TTL a request may ask for: `ttl <= max_ttl <= [ca].max_ttl`.
    pub max_ttl: Duration,
    /// The name of a posture profile that exists in the same policy.
    pub posture: Option<String>,
    /// Networks the requester's peer address must be in (empty: any).
    pub networks: Vec<ipnet::IpNet>,
    pub source_address: Option<SourceAddress>,
    pub force_command: Option<String>,
    pub verify_required: bool,
    /// Certificate extensions, sorted bytewise and without duplicates.
    pub extensions: Vec<String>,
    pub approval: Option<Approval>,
    /// The posture profile an approver's device must pass; it exists.
    pub approver_posture: Option<String>,
    pub require_reason: bool,
    pub break_glass: bool,
}

/// The `source-address` critical option a role puts in its certificates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceAddress {
    /// The requester's own peer address, as a single-host network.
    Peer,
    /// A fixed, non-empty list of networks (bare addresses become /32 or /128).
    Fixed(Vec<ipnet::IpNet>),
}

/// A role's approval requirement (fields in alphabetical order, as audit
/// records hold them: see `audit::chain::canonical_of`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Approval {
    /// Groups approvers are drawn from; non-empty.
    pub approvers: Vec<String>,
    /// How many distinct approvers are needed; at least 1.
    pub count: u32,
    /// How long a request waits for its approvals; above zero.
    #[serde(serialize_with = "duration::serialize")]
    pub timeout: Duration,
}

/// A posture profile: how fresh a report must be, and what it must say.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PostureProfile {
    pub(crate) name: String,
    pub(crate) max_report_age: Duration,
    pub(crate) require: Vec<Requirement>,
    /// Each requirement as its rule reads in a decision, `posture NAME:
    /// REQUIREMENT`, written once here rather than at every evaluation.
    pub(crate) rules: Vec<String>,
}

impl PostureProfile {
    pub(crate) fn new(name: String, max_report_age: Duration, require: Vec<Requirement>) -> Self {
        let rules = require
            .iter()
            .map(|r| format!("posture {name}: {r}"))
            .collect();
        PostureProfile {
            name,
            max_report_age,
            require,
            rules,
        }
    }
}

/// What the requester asked for besides the role.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestParams {
    /// The requested TTL; the role's default when `None`.
    pub ttl: Option<Duration>,
    /// Free text, e.g. a ticket number.
    pub reason: Option<String>,
}

/// A role name that the policy does not define.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {role:?}: {}", known_roles(.known))]
pub struct UnknownRole {
    pub role: String,
    /// Every role the policy defines, sorted.
    pub known: Vec<String>,
}

fn known_roles(known: &[String]) -> String {
    if known.is_empty() {
        "no roles are defined in the policy".to_string()
    } else {
        format!("known roles are {}", known.join(", "))
    }
}

/// Everything wrong with a policy file, one entry per problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", render_diagnostics(.diagnostics))]
pub struct PolicyError {
    pub diagnostics: Vec<Diagnostic>,
}

fn render_diagnostics(diagnostics: &[Diagnostic]) -> String {
    let lines: Vec<String> = diagnostics.iter().map(Diagnostic::to_string).collect();
    lines.join("\n")
}

/// One problem in a policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    /// 1-based; `None` when the problem is not tied to a line (e.g. unreadable).
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.file, line, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

impl Policy {
    /// Reads and validates a file; `sha256` is hex sha256 of the file's exact bytes.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let file = path.display().to_string();
        let whole = |message: String| PolicyError {
            diagnostics: vec![Diagnostic {
                file: file.clone(),
                line: None,
                message,
            }],
        };

        let size = std::fs::metadata(path)
            .map_err(|e| whole(format!("cannot read the policy file: {e}")))?
            .len();
        if size > MAX_FILE_BYTES {
            return Err(whole(format!(
                "the policy file is {size} bytes: the limit is {MAX_FILE_BYTES}; is this the right file?"
            )));
        }
        let bytes =
            std::fs::read(path).map_err(|e| whole(format!("cannot read the policy file: {e}")))?;
        let text = String::from_utf8(bytes).map_err(|e| {
            whole(format!(
                "the policy file is not UTF-8 (first bad byte at offset {}): save it as UTF-8",
                e.utf8_error().valid_up_to()
            ))
        })?;
        Policy::parse(&file, &text)
    }

    /// Validates text; `file` is the name used in messages.
    pub fn parse(file: &str, text: &str) -> Result<Policy, PolicyError> {
        let mut ctx = raw::Ctx::new(file, text);
        let document = raw::read(&mut ctx);
        validate::build(ctx, document, hex::encode(Sha256::digest(text.as_bytes())))
    }

    /// Hex sha256 of the policy file's exact bytes.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// How far `valid_after` is set before the issue time (`[ca].backdate`).
    pub fn backdate(&self) -> Duration {
        self.backdate
    }

    /// The global TTL cap (`[ca].max_ttl`); every role's `max_ttl` is at most this.
    pub fn max_ttl(&self) -> Duration {
        self.max_ttl
    }

    /// How long a new CA key is published before it starts signing.
    pub fn publish_ahead(&self) -> Duration {
        self.publish_ahead
    }

    /// How long a CA key signs before a rotation replaces it.
    pub fn rotate_every(&self) -> Duration {
        self.rotate_every
    }

    /// The role named `name`, if the policy defines it.
    pub fn role(&self, name: &str) -> Option<&Role> {
        self.roles.get(name)
    }

    /// Every role, sorted by name.
    pub fn roles(&self) -> impl Iterator<Item = &Role> {
        self.roles.values()
    }

    /// The notification program and its arguments (`notify`), if configured.
    pub fn notify(&self) -> Option<&[String]> {
        self.notify.as_deref()
    }

    /// Hints about a valid policy that may still not do what was meant, each
    /// as "FILE:LINE: text".
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Evaluates one role against `snapshot`; never panics. The time of the
    /// evaluation is `snapshot.connection.at` (unix seconds): posture report
    /// ages are measured from it. Every rule is evaluated and recorded, see
    /// [`Decision`]; an `Err` only for a role the policy does not define.
    pub fn evaluate(
        &self,
        role: &str,
        snapshot: &Snapshot,
        request: &RequestParams,
    ) -> Result<Decision, UnknownRole> {
        let Some(found) = self.roles.get(role) else {
            return Err(UnknownRole {
                role: role.to_string(),
                known: self.roles.keys().cloned().collect(),
            });
        };
        Ok(evaluate::evaluate(self, found, snapshot, request))
    }

    /// Evaluates whether the caller in `snapshot` may approve or deny a
    /// request for `role` made by `requester`; see [`evaluate::evaluate_approver`].
    pub fn evaluate_approver(
        &self,
        role: &str,
        snapshot: &Snapshot,
        requester: &str,
    ) -> Result<Vec<RuleResult>, UnknownRole> {
        let Some(found) = self.roles.get(role) else {
            return Err(UnknownRole {
                role: role.to_string(),
                known: self.roles.keys().cloned().collect(),
            });
        };
        Ok(evaluate::evaluate_approver(
            self, found, snapshot, requester,
        ))
    }

    fn profile(&self, name: &str) -> Option<&PostureProfile> {
        self.profiles.get(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_role_lists_known_roles() {
        let err = UnknownRole {
            role: "x".into(),
            known: vec!["a".into(), "b".into()],
        };
        assert_eq!(err.to_string(), "unknown role \"x\": known roles are a, b");
        let err = UnknownRole {
            role: "x".into(),
            known: vec![],
        };
        assert_eq!(
            err.to_string(),
            "unknown role \"x\": no roles are defined in the policy"
        );
    }

    #[test]
    fn policy_error_prints_one_line_per_diagnostic() {
        let err = PolicyError {
            diagnostics: vec![
                Diagnostic {
                    file: "p.toml".into(),
                    line: Some(3),
                    message: "bad".into(),
                },
                Diagnostic {
                    file: "p.toml".into(),
                    line: None,
                    message: "worse".into(),
                },
            ],
        };
        assert_eq!(err.to_string(), "p.toml:3: bad\np.toml: worse");
    }

    #[test]
    fn load_hashes_the_exact_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.toml");
        let text = "[ca]\nmax_ttl = \"1h\"\n";
        std::fs::write(&path, text).unwrap();
        let policy = Policy::load(&path).unwrap();
        assert_eq!(
            policy.sha256(),
            hex::encode(Sha256::digest(text.as_bytes()))
        );
        assert_eq!(policy.max_ttl(), Duration::from_secs(3600));
        assert_eq!(policy.backdate(), Duration::from_secs(120));
    }

    #[test]
    fn load_reports_missing_and_non_utf8_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.toml");
        let err = Policy::load(&path).unwrap_err();
        assert_eq!(err.diagnostics[0].line, None);
        assert!(err.to_string().contains("cannot read"), "{err}");

        std::fs::write(&path, b"[ca]\n\xff\n").unwrap();
        let err = Policy::load(&path).unwrap_err();
        assert!(err.to_string().contains("not UTF-8"), "{err}");
    }

    #[test]
    fn shipped_policy_parses_without_errors_or_warnings() {
        let text = include_str!("../../policy.toml");
        let policy = match Policy::parse("policy.toml", text) {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        };
        assert!(policy.warnings().is_empty(), "{:?}", policy.warnings());
        let names: Vec<&str> = policy.roles().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "emergency",
                "ops-shell",
                "prod-db",
                "prod-db-admin",
                "web-deploy"
            ]
        );
        let admin = policy.role("prod-db-admin").unwrap();
        assert_eq!(admin.approval.as_ref().map(|a| a.count), Some(1));
        assert!(admin.require_reason);
        assert!(policy.role("emergency").unwrap().break_glass);
        let db = policy.role("prod-db").unwrap();
        assert_eq!(db.source_address, Some(SourceAddress::Peer));
        assert_eq!(db.posture.as_deref(), Some("managed-laptop"));
        let web = policy.role("web-deploy").unwrap();
        assert!(web.force_command.is_some());
        assert!(!web.extensions.iter().any(|e| e == "permit-pty"));
    }
}
