//! Proves the harness against real OpenSSH alone, without jitca: a CA made
//! with `ssh-keygen`, certificates signed with `ssh-keygen -s`, a throwaway
//! `sshd` that trusts the CA. If these fail, the other integration tests
//! cannot be trusted either.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::cert::CertInfo;
use common::sshd::Sshd;
use common::{
    COMMAND_TIMEOUT, Env, KeyKind, KeyPair, SSH_KEYGEN, assert_success, current_user, now_unix, run,
};

/// Signs KEY with CA the way an operator would by hand; returns the
/// certificate path (`KEY-cert.pub`).
fn sign(ca: &KeyPair, key: &KeyPair, id: &str, principals: &str, options: &[&str]) -> PathBuf {
    let mut cmd = Command::new(SSH_KEYGEN);
    cmd.arg("-q")
        .arg("-s")
        .arg(&ca.private)
        .args(["-I", id, "-n", principals, "-V", "-5m:+1h", "-z", "42"]);
    for option in options {
        cmd.args(["-O", option]);
    }
    cmd.arg(&key.public);
    assert_success(&run(&mut cmd, COMMAND_TIMEOUT), "ssh-keygen -s");
    let cert = key.private.with_file_name(format!(
        "{}-cert.pub",
        key.private
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));
    assert!(cert.is_file(), "ssh-keygen -s wrote no {}", cert.display());
    cert
}

/// A CA, a user key and an `sshd` trusting the CA.
fn ca_and_sshd(env: &Env) -> (KeyPair, KeyPair, Sshd) {
    let ca = env.keygen("ca", KeyKind::Ed25519);
    let user = env.keygen("user", KeyKind::Ed25519);
    let sshd = Sshd::start(env, &ca.public, &[]);
    (ca, user, sshd)
}

#[test]
fn require_tools_finds_openssh() {
    common::require_tools();
}

#[test]
fn sshd_accepts_a_certificate_from_the_trusted_ca_and_runs_the_command() {
    let env = Env::new();
    let (ca, user, sshd) = ca_and_sshd(&env);
    let cert = sign(&ca, &user, "selftest", current_user(), &[]);

    let out = sshd.login(&user.private, &cert, current_user(), "echo hi");
    sshd.expect_login(&out, "hi");
    assert!(
        sshd.log()
            .contains("Accepted certificate ID \"selftest\" (serial 42)"),
        "sshd did not log the accepted certificate"
    );
}

#[test]
fn sshd_refuses_a_certificate_without_the_login_name_among_its_principals() {
    let env = Env::new();
    let (ca, user, sshd) = ca_and_sshd(&env);
    let cert = sign(&ca, &user, "selftest", "somebody-else", &[]);

    let out = sshd.login(&user.private, &cert, current_user(), "echo hi");
    sshd.expect_refused(&out, "name is not a listed principal");
}

#[test]
fn sshd_refuses_a_certificate_from_an_untrusted_ca() {
    let env = Env::new();
    let (_ca, user, sshd) = ca_and_sshd(&env);
    let other_ca = env.keygen("other-ca", KeyKind::Ed25519);
    let cert = sign(&other_ca, &user, "selftest", current_user(), &[]);

    let out = sshd.login(&user.private, &cert, current_user(), "echo hi");
    sshd.expect_refused(&out, "Failed publickey");
}

#[test]
fn login_from_binds_the_client_to_the_given_loopback_address() {
    let env = Env::new();
    let (ca, user, sshd) = ca_and_sshd(&env);
    let cert = sign(
        &ca,
        &user,
        "pinned",
        current_user(),
        &["source-address=127.0.0.2/32"],
    );

    let out = sshd.login_from("127.0.0.2", &user.private, &cert, current_user(), "echo hi");
    sshd.expect_login(&out, "hi");
    let out = sshd.login(&user.private, &cert, current_user(), "echo hi");
    sshd.expect_refused(&out, "not from a permitted source address (127.0.0.1)");
}

#[test]
fn cert_info_reads_every_field_of_ssh_keygen_output() {
    let env = Env::new();
    let ca = env.keygen("ca", KeyKind::Ed25519);
    let user = env.keygen("user", KeyKind::Ed25519);
    let before = now_unix();
    let cert = sign(
        &ca,
        &user,
        "jitca:alice:laptop:shell:42",
        "root,ops",
        &[
            "clear",
            "force-command=/usr/bin/true",
            "source-address=127.0.0.2/32",
            "permit-pty",
        ],
    );
    let after = now_unix();

    let info = CertInfo::read(&cert);
    assert_eq!(
        info.cert_type,
        "ssh-ed25519-cert-v01@openssh.com user certificate"
    );
    assert!(info.signing_ca.contains("(using ssh-ed25519)"), "{info:?}");
    assert_eq!(info.key_id, "jitca:alice:laptop:shell:42");
    assert_eq!(info.serial, 42);
    assert!(
        (before - 300 - 1..=after - 300 + 1).contains(&info.valid_from),
        "{info:?} signed between {before} and {after}"
    );
    assert_eq!(info.valid_to - info.valid_from, 3900);
    assert_eq!(info.principals, ["root", "ops"]);
    assert_eq!(info.critical_option("force-command"), Some("/usr/bin/true"));
    assert_eq!(info.critical_option("source-address"), Some("127.0.0.2/32"));
    assert_eq!(info.extensions, ["permit-pty"]);
}

#[test]
fn cert_info_refuses_an_unbounded_validity() {
    let text = "cert.pub:
        Type: ssh-ed25519-cert-v01@openssh.com user certificate
        Key ID: \"x\"
        Serial: 1
        Valid: forever
        Principals: 
                root
";
    assert!(CertInfo::parse(text).is_err());
    let after_only = text.replace("forever", "after 2026-01-02T03:04:05");
    assert!(CertInfo::parse(&after_only).is_err());
    let bounded = text.replace("forever", "from 2026-01-02T03:04:05 to 2026-01-02T03:19:05");
    let info = CertInfo::parse(&bounded).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(info.valid_to - info.valid_from, 900);
    assert_eq!(info.valid_from % 86400, 3 * 3600 + 4 * 60 + 5);
}

#[test]
fn keygen_makes_every_key_kind_the_tests_use() {
    let env = Env::new();
    for (name, kind, word) in [
        ("k-ed25519", KeyKind::Ed25519, "(ED25519)"),
        ("k-p384", KeyKind::EcdsaP384, "(ECDSA)"),
        ("k-p521", KeyKind::EcdsaP521, "(ECDSA)"),
        ("k-rsa", KeyKind::Rsa3072, "(RSA)"),
    ] {
        let key = env.keygen(name, kind);
        assert!(key.private.is_file() && key.public.is_file(), "{key:?}");
        let out = run(
            Command::new(SSH_KEYGEN)
                .arg("-l")
                .arg("-f")
                .arg(&key.public),
            COMMAND_TIMEOUT,
        );
        let text = common::stdout(&out);
        assert!(text.trim_end().ends_with(word), "{name}: {text}");
        assert!(key.fingerprint().starts_with("SHA256:"));
    }
}

#[test]
fn db_snapshot_sees_a_changed_row() {
    let env = Env::new();
    let conn = rusqlite::Connection::open(&env.db).unwrap_or_else(|e| panic!("{e}"));
    conn.execute_batch("CREATE TABLE t(a TEXT); INSERT INTO t VALUES ('x');")
        .unwrap_or_else(|e| panic!("{e}"));
    drop(conn);

    let before = env.db_snapshot();
    assert_eq!(before, env.db_snapshot());
    env.db_execute("UPDATE t SET a = 'y'", []);
    assert_ne!(before, env.db_snapshot());
}

#[test]
fn run_kills_a_command_that_overruns_its_timeout() {
    let started = std::time::Instant::now();
    let result = std::panic::catch_unwind(|| {
        run(Command::new("sleep").arg("30"), Duration::from_millis(300))
    });
    assert!(result.is_err(), "a 30 s sleep finished within 300 ms");
    assert!(started.elapsed() < Duration::from_secs(10));
}
