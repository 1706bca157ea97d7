//! Issuing a certificate to an enrolled requester whose posture passes, and
//! what a real `sshd` makes of it: the principals, validity window,
//! extensions and key id the policy asks for (PROTOCOL.certkeys fields read
//! back with `ssh-keygen -L`), and expiry.

mod common;

use std::time::Duration;

use common::daemon::Daemon;
use common::sshd::Sshd;
use common::{current_user, now_unix, standard_env};

/// The `shell` role of the standard policy: backdate 2m, ttl 15m.
const BACKDATE: i64 = 120;
const SHELL_TTL: i64 = 15 * 60;

/// Slack for seconds that tick between reading the clock and signing.
const SLACK: i64 = 3;

/// The parts of a key id between separators that cannot occur in names.
fn key_id_parts(key_id: &str) -> Vec<&str> {
    key_id
        .split(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        .collect()
}

#[test]
fn issued_cert_carries_the_role_principals_validity_extensions_and_key_id() {
    let (env, key) = standard_env();
    let daemon = Daemon::start(&env);

    let before = now_unix();
    let (_, cert) = daemon.request_cert(&env, &key.private, "request shell --reason INC-1");
    let after = now_unix();

    assert_eq!(
        cert.cert_type,
        "ssh-ed25519-cert-v01@openssh.com user certificate"
    );
    let mut principals = cert.principals.clone();
    principals.sort();
    let mut wanted = vec![current_user().to_string(), "ops-extra".to_string()];
    wanted.sort();
    assert_eq!(principals, wanted, "principals must be exactly the role's");
    assert!(
        (before - BACKDATE - SLACK..=after - BACKDATE + SLACK).contains(&cert.valid_from),
        "valid from {} is not now - 2m (requested between {before} and {after})",
        cert.valid_from
    );
    assert!(
        (before + SHELL_TTL - SLACK..=after + SHELL_TTL + SLACK).contains(&cert.valid_to),
        "valid to {} is not now + 15m (requested between {before} and {after})",
        cert.valid_to
    );
    assert_eq!(
        cert.extensions,
        ["permit-agent-forwarding", "permit-pty"],
        "extensions must be the role's, sorted"
    );
    assert!(cert.critical_options.is_empty(), "{cert:?}");

    assert_ne!(cert.serial, 0);
    let parts = key_id_parts(&cert.key_id);
    let serial = cert.serial.to_string();
    for wanted in ["alice", "alice-laptop", "shell", serial.as_str()] {
        assert!(
            parts.contains(&wanted),
            "key id {:?} does not name {wanted:?}",
            cert.key_id
        );
    }
}

#[test]
fn each_issued_cert_gets_its_own_serial_and_key_id() {
    let (env, key) = standard_env();
    let daemon = Daemon::start(&env);

    let (_, first) = daemon.request_cert(&env, &key.private, "request shell");
    let (_, second) = daemon.request_cert(&env, &key.private, "request shell");
    assert_ne!(first.serial, second.serial);
    assert_ne!(first.key_id, second.key_id);
    assert!(first.serial != 0 && second.serial != 0);
}

#[test]
fn issued_cert_logs_in_to_sshd_as_a_listed_principal() {
    let (env, key) = standard_env();
    let daemon = Daemon::start(&env);
    let sshd = Sshd::start(&env, &env.trusted_ca_file(), &[]);

    let (cert_path, cert) = daemon.request_cert(&env, &key.private, "request shell");
    let out = sshd.login(&key.private, &cert_path, current_user(), "id -un");
    sshd.expect_login(&out, current_user());
    assert!(
        sshd.log()
            .contains(&format!("ID {} (serial {})", cert.key_id, cert.serial)),
        "sshd did not log the key id and serial"
    );
}

#[test]
fn issued_cert_is_refused_by_sshd_for_a_login_name_not_among_its_principals() {
    let (env, key) = standard_env();
    let daemon = Daemon::start(&env);
    let sshd = Sshd::start(&env, &env.trusted_ca_file(), &[]);

    let (cert_path, _) = daemon.request_cert(&env, &key.private, "request shell");
    // `nobody` exists on every Debian system and is not a principal.
    let out = sshd.login(&key.private, &cert_path, "nobody", "id -un");
    sshd.expect_refused(&out, "name is not a listed principal");
}

#[test]
fn cert_stops_logging_in_once_it_expires() {
    let (env, key) = standard_env();
    let daemon = Daemon::start(&env);
    let sshd = Sshd::start(&env, &env.trusted_ca_file(), &[]);

    // Short enough to wait out, long enough for one login on a busy machine.
    let before = now_unix();
    let (cert_path, cert) = daemon.request_cert(&env, &key.private, "request shell --ttl 10s");
    let after = now_unix();
    assert!(
        (before + 10 - SLACK..=after + 10 + SLACK).contains(&cert.valid_to),
        "valid to {} is not now + 10s (requested between {before} and {after})",
        cert.valid_to
    );

    let out = sshd.login(&key.private, &cert_path, current_user(), "id -un");
    sshd.expect_login(&out, current_user());

    let wait = cert.valid_to + 2 - now_unix();
    assert!(
        wait <= 30,
        "certificate valid {wait} s more: not a short cert"
    );
    if wait > 0 {
        std::thread::sleep(Duration::from_secs(wait as u64));
    }
    let out = sshd.login(&key.private, &cert_path, current_user(), "id -un");
    sshd.expect_refused(&out, "Certificate invalid: expired");
}
