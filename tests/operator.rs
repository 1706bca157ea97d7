//! The operator's commands on the CA host: `init`, exit statuses and error
//! messages, and posture import, which is all or nothing.

mod common;

use std::time::{Duration, SystemTime};

use common::{Env, KeyKind, STANDARD_POLICY, assert_exit, describe, stderr};

#[test]
fn init_is_idempotent_and_keeps_the_ca_key() {
    let env = Env::with_policy(STANDARD_POLICY);
    env.init();
    let trusted = env.jitca_ok(&["ca", "trusted"]);
    env.init();
    assert_eq!(trusted, env.jitca_ok(&["ca", "trusted"]));
    assert!(
        trusted.lines().filter(|l| l.starts_with("ssh-")).count() >= 1,
        "{trusted}"
    );
}

#[test]
fn init_prints_the_sshd_config_lines_for_target_hosts() {
    let env = Env::with_policy(STANDARD_POLICY);
    let out = env.jitca_ok(&["init"]);
    assert!(out.contains("TrustedUserCAKeys"), "{out}");
}

#[test]
fn ca_private_key_is_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::with_policy(STANDARD_POLICY);
    env.init();
    let entries = std::fs::read_dir(&env.ca_keys).unwrap_or_else(|e| panic!("{e}"));
    let mut private_keys = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("user-ca-") && !name.ends_with(".pub") {
            let mode = entry
                .metadata()
                .map(|m| m.permissions().mode())
                .unwrap_or(0);
            assert_eq!(mode & 0o077, 0, "{name} has mode {mode:o}");
            private_keys += 1;
        }
    }
    assert!(private_keys >= 1, "no user-ca-* private key in ca-keys/");
}

#[test]
fn usage_error_exits_2() {
    let env = Env::with_policy(STANDARD_POLICY);
    env.jitca_exit(&["no-such-subcommand"], 2);
    env.jitca_exit(&["user", "add"], 2);
}

#[test]
fn error_exits_1_with_an_error_prefix() {
    let env = Env::with_policy(STANDARD_POLICY);
    env.init();
    let out = env.jitca_exit(&["user", "show", "nobody-here"], 1);
    assert!(stderr(&out).starts_with("error: "), "{}", describe(&out));
    assert!(stderr(&out).contains("nobody-here"), "{}", describe(&out));
}

#[test]
fn posture_import_with_a_bad_line_names_it_and_changes_nothing() {
    let env = Env::with_policy(STANDARD_POLICY);
    env.init();
    let key = env.keygen("alice_ed25519", KeyKind::Ed25519);
    env.enrol("alice", &["ops"], "alice-laptop", &key);
    let before = env.db_snapshot();

    let now = common::now_unix();
    let lines = [
        format!(
            r#"{{"device": "alice-laptop", "reported_at": {now}, "attributes": {{"disk_encrypted": true}}}}"#
        ),
        r#"{"device": "alice-laptop", "reported_at": "yesterday", "attributes": {"os_family": "linux"}}"#
            .to_string(),
    ];
    let file = env.write("bad.jsonl", lines.join("\n") + "\n");
    let out = env.jitca_exit(&["posture", "import", &file.to_string_lossy()], 1);
    let err = stderr(&out);
    assert!(
        err.starts_with("error: ") && (err.contains("line 2") || err.contains(":2:")),
        "the error does not name line 2\n{}",
        describe(&out)
    );
    assert_eq!(before, env.db_snapshot(), "a failed import changed the db");
}

#[test]
fn posture_import_accepts_rfc3339_and_unix_seconds() {
    let env = Env::with_policy(STANDARD_POLICY);
    env.init();
    let key = env.keygen("alice_ed25519", KeyKind::Ed25519);
    env.enrol("alice", &["ops"], "alice-laptop", &key);

    let hour_ago = SystemTime::now() - Duration::from_secs(3600);
    let rfc3339 = humantime::format_rfc3339_seconds(hour_ago).to_string();
    let now = common::now_unix();
    let text = format!(
        "{{\"device\": \"alice-laptop\", \"reported_at\": \"{rfc3339}\", \"attributes\": {{\"os_family\": \"linux\"}}}}\n\
         {{\"device\": \"alice-laptop\", \"reported_at\": {now}, \"attributes\": {{\"disk_encrypted\": true}}}}\n"
    );
    let file = env.write("good.jsonl", text);
    env.jitca_ok(&["posture", "import", &file.to_string_lossy()]);

    let shown = env.jitca_ok(&["posture", "show", "alice-laptop"]);
    assert!(
        shown.contains("os_family") && shown.contains("disk_encrypted"),
        "{shown}"
    );
}

#[test]
fn posture_import_for_an_unknown_device_fails() {
    let env = Env::with_policy(STANDARD_POLICY);
    env.init();
    let before = env.db_snapshot();
    let now = common::now_unix();
    let file = env.write(
        "unknown.jsonl",
        format!(r#"{{"device": "ghost", "reported_at": {now}, "attributes": {{"x": 1}}}}"#),
    );
    let out = env.jitca(&["posture", "import", &file.to_string_lossy()]);
    assert_exit(&out, 1, "posture import for an unknown device");
    assert!(stderr(&out).contains("ghost"), "{}", describe(&out));
    assert_eq!(before, env.db_snapshot());
}
