//! Fixtures for the approval workflow (issue 3): a policy with approval and
//! break-glass roles, a team of four enrolled users, request ids picked out
//! of the CA's replies, the audit records of one request, and notifier
//! scripts.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use super::{Env, GOOD_POSTURE, KeyKind, KeyPair, describe, stderr, stdout};

/// Exit statuses of the contract (docs: contract of issue 3).
pub mod exit {
    /// Issued, or the command succeeded.
    pub const OK: i32 = 0;
    /// Usage error, or an unknown (or someone else's) request id.
    pub const USAGE: i32 = 2;
    /// Denied or refused.
    pub const DENIED: i32 = 3;
    /// Still waiting for approval.
    pub const PENDING: i32 = 4;
    /// The request expired undecided.
    pub const EXPIRED: i32 = 5;
}

/// The approval policy. `@ME@` is the login name on the test `sshd`.
///
/// - `db`: group `dba`, one approval from `dba-leads`, whose own device
///   must pass `approver-laptop`; decided within 10 minutes;
/// - `db-two`: the same with two approvals;
/// - `db-quick`: one approval within 3 seconds (for expiry);
/// - `glass`: break-glass, no approver, a reason required.
pub const APPROVAL_POLICY: &str = r#"
[ca]
backdate = "2m"
max_ttl = "8h"

[posture.laptop]
max_report_age = "24h"
require = [
  "device.disk_encrypted == true",
  "device.os_family in [\"macos\", \"linux\"]",
]

[posture.approver-laptop]
max_report_age = "24h"
require = ["device.disk_encrypted == true"]

[role.db]
groups = ["dba"]
principals = ["@ME@"]
ttl = "5m"
max_ttl = "1h"
posture = "laptop"
approver_posture = "approver-laptop"
approval = { count = 1, approvers = ["dba-leads"], timeout = "10m" }

[role.db-two]
groups = ["dba"]
principals = ["@ME@"]
ttl = "5m"
max_ttl = "1h"
posture = "laptop"
approver_posture = "approver-laptop"
approval = { count = 2, approvers = ["dba-leads"], timeout = "10m" }

[role.db-quick]
groups = ["dba"]
principals = ["@ME@"]
ttl = "5m"
max_ttl = "1h"
posture = "laptop"
approval = { count = 1, approvers = ["dba-leads"], timeout = "3s" }

[role.glass]
groups = ["dba"]
principals = ["@ME@"]
ttl = "5m"
max_ttl = "1h"
posture = "laptop"
break_glass = true
"#;

/// [`APPROVAL_POLICY`] with a top-level `notify = [PROGRAM]`.
pub fn policy_with_notify(program: &Path) -> String {
    let program = program.to_string_lossy();
    // A TOML basic string; the test paths hold no quote or backslash.
    assert!(
        !program.contains(['"', '\\']),
        "unexpected characters in {program}"
    );
    format!("notify = [\"{program}\"]\n{APPROVAL_POLICY}")
}

/// An initialised environment with four users, each with one Ed25519 device
/// (`NAME-laptop`) whose posture passes every profile:
/// alice (the requester, group `dba`), bob and carol (approvers, group
/// `dba-leads`), and dave (group `ops`, neither).
pub struct Team {
    pub env: Env,
    pub alice: KeyPair,
    pub bob: KeyPair,
    pub carol: KeyPair,
    pub dave: KeyPair,
}

impl Team {
    /// The team under [`APPROVAL_POLICY`].
    pub fn new() -> Team {
        Team::in_env(Env::with_policy(APPROVAL_POLICY), &["dba"])
    }

    /// The team in ENV, whose policy is already written; alice gets
    /// ALICE_GROUPS.
    pub fn in_env(env: Env, alice_groups: &[&str]) -> Team {
        env.init();
        let member = |name: &str, groups: &[&str]| {
            let key = env.keygen(&format!("{name}_ed25519"), KeyKind::Ed25519);
            let device = format!("{name}-laptop");
            env.enrol(name, groups, &device, &key);
            env.set_posture(&device, GOOD_POSTURE);
            key
        };
        let alice = member("alice", alice_groups);
        let bob = member("bob", &["dba-leads"]);
        let carol = member("carol", &["dba-leads"]);
        let dave = member("dave", &["ops"]);
        Team {
            env,
            alice,
            bob,
            carol,
            dave,
        }
    }
}

const ID_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz234567";

/// Every distinct request id (`r-` and 10 of `[a-z2-7]`, standing alone) in
/// TEXT, in order of first appearance.
pub fn request_ids(text: &str) -> Vec<String> {
    let bytes = text.as_bytes();
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
    let mut ids: Vec<String> = Vec::new();
    for (i, _) in text.match_indices("r-") {
        let tail = &bytes[i + 2..];
        let starts_alone = i == 0 || !word(bytes[i - 1]);
        let ends_alone = tail.get(10).is_none_or(|&b| !word(b));
        if starts_alone
            && ends_alone
            && tail.len() >= 10
            && tail[..10].iter().all(|b| ID_ALPHABET.contains(b))
        {
            let id = text[i..i + 12].to_string();
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
    }
    ids
}

/// The one request id a pending reply names on stderr; fails the test
/// unless there is exactly one.
pub fn pending_id(out: &Output) -> String {
    let ids = request_ids(&stderr(out));
    assert!(
        ids.len() == 1,
        "expected exactly one request id (r-[a-z2-7]{{10}}) on stderr, found {ids:?}\n{}",
        describe(out)
    );
    ids[0].clone()
}

/// Stdout and stderr together, for replies whose stream the contract leaves
/// open (approver commands).
pub fn all_text(out: &Output) -> String {
    format!("{}{}", stdout(out), stderr(out))
}

/// The audit records whose `request_id` is ID, oldest first.
pub fn records_for(env: &Env, id: &str) -> Vec<serde_json::Value> {
    env.audit_records()
        .into_iter()
        .filter(|r| r.get("request_id").and_then(|v| v.as_str()) == Some(id))
        .collect()
}

/// How many of RECORDS are of KIND.
pub fn count_kind(records: &[serde_json::Value], kind: &str) -> usize {
    records
        .iter()
        .filter(|r| r.get("kind").and_then(|k| k.as_str()) == Some(kind))
        .count()
}

/// How many certificate rows were stored for request ID.
pub fn certificates_for(env: &Env, id: &str) -> i64 {
    let conn = rusqlite::Connection::open(&env.db)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", env.db.display()));
    conn.query_row(
        "SELECT COUNT(*) FROM certificates WHERE request_id = ?1",
        [id],
        |row| row.get(0),
    )
    .unwrap_or_else(|e| panic!("cannot count certificates of {id}: {e}"))
}

/// Fails the test unless `jitca audit verify` passes.
pub fn assert_audit_intact(env: &Env) {
    let out = env.jitca_ok(&["audit", "verify"]);
    assert!(
        out.contains("audit chain ok"),
        "unexpected audit verify output:\n{out}"
    );
}

/// Writes an executable `#!/bin/sh` script NAME with BODY into the
/// environment and returns its absolute path.
pub fn write_script(env: &Env, name: &str, body: &str) -> PathBuf {
    let path = env.write(name, format!("#!/bin/sh\n{body}\n"));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("cannot chmod {}: {e}", path.display()));
    std::path::absolute(&path).unwrap_or_else(|e| panic!("cannot resolve {}: {e}", path.display()))
}

/// Every JSON value in the file at PATH (a missing file holds none),
/// whether they are one per line or run together; fails the test on text
/// that is not JSON.
pub fn json_values(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    serde_json::Deserializer::from_str(&text)
        .into_iter::<serde_json::Value>()
        .collect::<Result<Vec<_>, _>>()
        .unwrap_or_else(|e| {
            panic!(
                "{} holds text that is not JSON ({e}):\n{text}",
                path.display()
            )
        })
}
