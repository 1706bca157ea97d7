//! Requests that must not yield a certificate: each ends with nothing on
//! stdout, the exit status of the contract, and the reason on stderr.

mod common;

use std::time::{Duration, Instant, SystemTime};

use common::daemon::{Daemon, ssh_ca};
use common::{
    Env, GOOD_POSTURE, KeyKind, STANDARD_POLICY, denied_lines, describe, standard_env, stderr,
};

/// Exit status of a request the policy denies.
const DENIED: i32 = 3;
/// Exit status of a usage error.
const USAGE: i32 = 2;
/// Exit status of `ssh` when authentication fails or the server disconnects.
const SSH_REFUSED: i32 = 255;

/// Fails unless some `denied:` line holds every one of WORDS.
fn assert_denied_line(stderr: &str, words: &[&str]) {
    assert!(
        denied_lines(stderr)
            .iter()
            .any(|l| words.iter().all(|w| l.contains(w))),
        "no `denied:` line holding {words:?} in:\n{stderr}"
    );
}

#[test]
fn failed_posture_rule_is_denied_naming_the_rule_and_the_value_seen() {
    let (env, key) = standard_env();
    env.set_posture("alice-laptop", &["disk_encrypted=false"]);
    let daemon = Daemon::start(&env);

    let out = ssh_ca(&daemon, &key.private, "request shell");
    let err = daemon.expect_refusal(&out, DENIED);
    assert_denied_line(&err, &["disk_encrypted", "false"]);
}

#[test]
fn stale_posture_report_is_denied_naming_its_age() {
    let env = Env::with_policy(STANDARD_POLICY);
    env.init();
    let key = env.keygen("alice_ed25519", KeyKind::Ed25519);
    env.enrol("alice", &["ops"], "alice-laptop", &key);
    let two_days_ago = SystemTime::now() - Duration::from_secs(2 * 24 * 3600);
    let report = serde_json::json!({
        "device": "alice-laptop",
        "reported_at": humantime::format_rfc3339_seconds(two_days_ago).to_string(),
        "attributes": {"disk_encrypted": true, "os_family": "linux"},
    });
    let file = env.write("stale.jsonl", format!("{report}\n"));
    env.jitca_ok(&["posture", "import", &file.to_string_lossy()]);
    let daemon = Daemon::start(&env);

    let out = ssh_ca(&daemon, &key.private, "request shell");
    let err = daemon.expect_refusal(&out, DENIED);
    assert_denied_line(&err, &["disk_encrypted", "ago"]);
}

#[test]
fn user_not_in_the_role_group_is_denied_naming_the_group() {
    let env = Env::with_policy(STANDARD_POLICY);
    env.init();
    let key = env.keygen("bob_ed25519", KeyKind::Ed25519);
    env.enrol("bob", &["dev"], "bob-laptop", &key);
    env.set_posture("bob-laptop", GOOD_POSTURE);
    let daemon = Daemon::start(&env);

    let out = ssh_ca(&daemon, &key.private, "request shell");
    let err = daemon.expect_refusal(&out, DENIED);
    assert_denied_line(&err, &["ops"]);
}

#[test]
fn ttl_above_the_role_maximum_is_denied() {
    let (env, key) = standard_env();
    let daemon = Daemon::start(&env);

    let out = ssh_ca(&daemon, &key.private, "request shell --ttl 2h");
    let err = daemon.expect_refusal(&out, DENIED);
    assert_denied_line(&err, &["ttl"]);
}

#[test]
fn unknown_role_is_a_usage_error_naming_the_role() {
    let (env, key) = standard_env();
    let daemon = Daemon::start(&env);

    let out = ssh_ca(&daemon, &key.private, "request no-such-role");
    let err = daemon.expect_refusal(&out, USAGE);
    assert!(err.contains("no-such-role"), "{}", describe(&out));
    // A request for a role that does not exist is a decision too.
    let denied = env.audit_records_where(&["--kind", "denied"]);
    assert!(
        denied
            .iter()
            .any(|r| r["body"]["decision"]["role"] == "no-such-role"),
        "the unknown-role request was not audited: {denied:?}"
    );
}

#[test]
fn unknown_command_is_a_usage_error() {
    let (env, key) = standard_env();
    let daemon = Daemon::start(&env);

    let out = ssh_ca(&daemon, &key.private, "frobnicate shell");
    daemon.expect_refusal(&out, USAGE);
}

#[test]
fn suspended_user_is_refused_at_authentication_until_resumed() {
    let (env, key) = standard_env();
    let daemon = Daemon::start(&env);
    env.jitca_ok(&["user", "suspend", "alice"]);

    let out = ssh_ca(&daemon, &key.private, "request shell");
    let err = daemon.expect_refusal(&out, SSH_REFUSED);
    assert!(
        err.contains("alice") && err.contains("suspended"),
        "ssh's stderr does not say alice is suspended\n{}",
        describe(&out)
    );

    env.jitca_ok(&["user", "resume", "alice"]);
    let out = ssh_ca(&daemon, &key.private, "request shell");
    daemon.expect_cert(&out);
}

#[test]
fn disabled_device_is_refused_at_authentication() {
    let (env, key) = standard_env();
    let daemon = Daemon::start(&env);
    env.jitca_ok(&["device", "disable", "alice-laptop"]);

    let out = ssh_ca(&daemon, &key.private, "request shell");
    let err = daemon.expect_refusal(&out, SSH_REFUSED);
    assert!(
        err.contains("alice-laptop") && err.contains("disabled"),
        "ssh's stderr does not say the device is disabled\n{}",
        describe(&out)
    );
}

#[test]
fn unknown_key_is_refused_at_authentication_and_audited_with_its_fingerprint() {
    let (env, _) = standard_env();
    let stranger = env.keygen("stranger_ed25519", KeyKind::Ed25519);
    let daemon = Daemon::start(&env);

    let out = ssh_ca(&daemon, &stranger.private, "request shell");
    let err = daemon.expect_refusal(&out, SSH_REFUSED);
    assert!(err.contains("Permission denied"), "{}", describe(&out));

    // The record may land a moment after the client gave up.
    let fingerprint = stranger.fingerprint();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let records = env.audit_records();
        let found = records.iter().any(|r| {
            let text = r.to_string();
            r.get("kind").and_then(|k| k.as_str()) == Some("auth-refused")
                && text.contains(&fingerprint)
        });
        if found {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no auth-refused audit record with {fingerprint} in {records:#?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn denied_request_leaves_stderr_naming_every_failed_rule() {
    let env = Env::with_policy(STANDARD_POLICY);
    env.init();
    let key = env.keygen("bob_ed25519", KeyKind::Ed25519);
    env.enrol("bob", &["dev"], "bob-laptop", &key);
    env.set_posture("bob-laptop", &["disk_encrypted=false", "os_family=linux"]);
    let daemon = Daemon::start(&env);

    let out = ssh_ca(&daemon, &key.private, "request shell --ttl 2h");
    let err = daemon.expect_refusal(&out, DENIED);
    let lines = denied_lines(&err);
    assert!(
        lines.len() >= 3,
        "expected 3 failed rules:\n{}",
        stderr(&out)
    );
    assert_denied_line(&err, &["ops"]);
    assert_denied_line(&err, &["disk_encrypted", "false"]);
    assert_denied_line(&err, &["ttl"]);
}
