//! Enrolling device keys with `jitca device add`: the cases of
//! shared/cases/README.md. Every refusal exits 1 with an `error: ` message
//! and leaves the database exactly as it was.

mod common;

use std::time::{Duration, Instant};

use common::daemon::Daemon;
use common::sshd::Sshd;
use common::{
    Env, GOOD_POSTURE, KeyKind, STANDARD_POLICY, assert_exit, case_key, current_user, describe,
    standard_env, stderr,
};

/// An initialised environment with user `alice` and no devices.
fn env_with_alice() -> Env {
    let env = Env::with_policy(STANDARD_POLICY);
    env.init();
    env.jitca_ok(&["user", "add", "alice", "--group", "ops"]);
    env
}

/// Enrols the fixture FILE and checks the device is listed.
fn assert_enrols(file: &str) {
    let env = env_with_alice();
    let path = case_key(file);
    env.jitca_ok(&[
        "device",
        "add",
        "alice",
        &path.to_string_lossy(),
        "--name",
        "laptop",
    ]);
    let list = env.jitca_ok(&["device", "list"]);
    assert!(
        list.contains("laptop"),
        "device list lacks the device:\n{list}"
    );
}

/// Tries to enrol the fixture FILE; fails unless it is refused with every
/// one of MENTIONS (case-insensitive) in the message and nothing stored
/// changes. Returns how long the refusal took.
fn assert_refused(file: &str, mentions: &[&str]) -> Duration {
    let env = env_with_alice();
    let path = case_key(file);
    let before = env.db_snapshot();

    let started = Instant::now();
    let out = env.jitca(&[
        "device",
        "add",
        "alice",
        &path.to_string_lossy(),
        "--name",
        "laptop",
    ]);
    let took = started.elapsed();

    assert_exit(&out, 1, &format!("device add {file}"));
    let err = stderr(&out);
    assert!(err.starts_with("error: "), "{}", describe(&out));
    let lower = err.to_lowercase();
    for mention in mentions {
        assert!(
            lower.contains(&mention.to_lowercase()),
            "refusal of {file} does not mention {mention:?}:\n{err}"
        );
    }
    assert_eq!(
        before,
        env.db_snapshot(),
        "refusing {file} changed the database"
    );
    took
}

#[test]
fn ed25519_key_with_spaces_in_its_comment_enrols() {
    assert_enrols("ed25519.pub");
}

#[test]
fn ed25519_key_with_crlf_line_end_enrols() {
    assert_enrols("ed25519-crlf.pub");
}

#[test]
fn ecdsa_p384_key_enrols() {
    assert_enrols("ecdsa-p384.pub");
}

#[test]
fn ecdsa_p521_key_enrols() {
    assert_enrols("ecdsa-p521.pub");
}

#[test]
fn rsa_3072_key_enrols() {
    assert_enrols("rsa-3072.pub");
}

#[test]
fn rsa_1024_key_is_refused_naming_its_size_and_the_minimum() {
    assert_refused("rsa-1024.pub", &["1024", "2048"]);
}

#[test]
fn key_with_authorized_keys_options_is_refused() {
    assert_refused("ed25519-with-options.pub", &["option"]);
}

#[test]
fn certificate_is_refused_as_a_device_key() {
    assert_refused("a-certificate.pub", &["certificate"]);
}

#[test]
fn key_whose_type_word_disagrees_with_its_blob_is_refused() {
    assert_refused("type-mismatch.pub", &["ssh-rsa", "ssh-ed25519"]);
}

#[test]
fn key_with_bad_base64_is_refused_naming_the_file() {
    assert_refused("bad-base64.pub", &["bad-base64.pub"]);
}

#[test]
fn empty_key_file_is_refused_naming_the_file() {
    assert_refused("empty.pub", &["empty.pub"]);
}

#[test]
fn huge_key_file_is_refused_quickly() {
    let took = assert_refused("huge.pub", &["huge.pub"]);
    assert!(took < Duration::from_secs(5), "refusing took {took:?}");
}

#[test]
fn crlf_key_file_enrols_the_key_itself() {
    // The fixture's private half is not available: make a key, give its
    // public file a CRLF line end, and show the private key authenticates.
    let env = env_with_alice();
    let key = env.keygen("crlf_ed25519", KeyKind::Ed25519);
    let line = std::fs::read_to_string(&key.public).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(
        &key.public,
        format!("{} dev laptop key\r\n", line.trim_end()),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    env.add_device("alice", "laptop", &key);
    env.set_posture("laptop", GOOD_POSTURE);
    let daemon = Daemon::start(&env);

    daemon.request_cert(&env, &key.private, "request shell");
}

#[test]
fn certs_for_ecdsa_and_rsa_keys_log_in_to_sshd() {
    let (env, _) = standard_env();
    let kinds = [
        ("p384", KeyKind::EcdsaP384),
        ("p521", KeyKind::EcdsaP521),
        ("rsa3072", KeyKind::Rsa3072),
    ];
    let mut keys = Vec::new();
    for (name, kind) in kinds {
        let key = env.keygen(&format!("alice_{name}"), kind);
        let device = format!("alice-{name}");
        env.add_device("alice", &device, &key);
        env.set_posture(&device, GOOD_POSTURE);
        keys.push((kind, key));
    }
    let daemon = Daemon::start(&env);
    let sshd = Sshd::start(&env, &env.trusted_ca_file(), &[]);

    for (kind, key) in keys {
        let (cert_path, cert) = daemon.request_cert(&env, &key.private, "request shell");
        assert!(
            cert.cert_type.starts_with(kind.cert_type()),
            "{kind:?}: certificate type {:?}",
            cert.cert_type
        );
        let out = sshd.login(&key.private, &cert_path, current_user(), "id -un");
        sshd.expect_login(&out, current_user());
    }
}
