//! CA key rotation and CA key revocation (issue 4), with a real `sshd`
//! whose `TrustedUserCAKeys` is `jitca ca trusted` and whose `RevokedKeys`
//! is jitca's KRL: a next key is published ahead, then signs while the old
//! one is still trusted, and is dropped once its certificates have expired;
//! a compromised key is revoked outright and a fresh one signs at once.

mod common;

use std::time::Duration;

use common::approvals::assert_audit_intact;
use common::cert::CertInfo;
use common::daemon::Daemon;
use common::krl::{
    Host, assert_krl_verdicts, ca_list, only_key_in, parse_krl, signing_ca, trusted_fingerprints,
};
use common::revoking::{REVOKED_BY_FILE, member};
use common::{Env, STANDARD_POLICY, describe, now_unix, stderr, stdout};

/// Seconds a next key is published before it signs, and how long a key
/// signs before the next one is due: short, so the test can wait them out.
const PUBLISH_AHEAD: i64 = 4;
const ROTATE_EVERY: i64 = 8;

/// A request for a certificate short enough to wait out, long enough to
/// outlive the overlap of two keys on a busy machine.
const SHORT: &str = "request shell --ttl 15s";

/// [`STANDARD_POLICY`] with `[ca] publish_ahead` and `rotate_every` set.
fn rotation_policy(publish_ahead: i64, rotate_every: i64) -> String {
    let anchor = "max_ttl = \"8h\"\n";
    assert!(
        STANDARD_POLICY.contains(anchor),
        "the standard policy changed"
    );
    STANDARD_POLICY.replacen(
        anchor,
        &format!(
            "{anchor}publish_ahead = \"{publish_ahead}s\"\nrotate_every = \"{rotate_every}s\"\n"
        ),
        1,
    )
}

/// `jitca ca rotate`; returns its lines.
fn rotate(env: &Env) -> Vec<String> {
    env.jitca_ok(&["ca", "rotate"])
        .lines()
        .map(str::to_string)
        .collect()
}

/// Sleeps until the wall clock reads at least unix second AT.
fn sleep_until(at: i64) {
    let wait = at - now_unix();
    assert!(
        wait <= 30,
        "asked to wait {wait} s: the test's clock is off"
    );
    if wait > 0 {
        std::thread::sleep(Duration::from_secs(wait as u64));
    }
}

/// Fails unless exactly one of LINES names FINGERPRINT and holds CHANGE.
fn assert_change(lines: &[String], fingerprint: &str, change: &str) {
    let found = lines
        .iter()
        .filter(|l| l.contains(fingerprint) && l.contains(change))
        .count();
    assert_eq!(
        found, 1,
        "expected one line with {fingerprint} and {change:?} from ca rotate:\n{lines:#?}"
    );
}

fn state_of(env: &Env, fingerprint: &str) -> String {
    ca_list(env)
        .into_iter()
        .find(|k| k.fingerprint == fingerprint)
        .map(|k| k.state)
        .unwrap_or_else(|| panic!("ca list does not show {fingerprint}"))
}

#[test]
fn rotation_publishes_a_next_key_promotes_it_without_a_restart_and_retires_the_old_one() {
    let env = Env::with_policy(&rotation_policy(PUBLISH_AHEAD, ROTATE_EVERY));
    env.init();
    let old = only_key_in(&env, "active");
    assert_eq!(
        rotate(&env),
        ["nothing to do: no key is due to change"],
        "a key just created is not due (ca list: {:?})",
        ca_list(&env)
    );
    let alice = member(&env, "alice");
    let bob = member(&env, "bob");
    let daemon = Daemon::start(&env);
    // Hosts trust the CA and read its KRL; this one also says at DEBUG2 why
    // it does not trust a certificate's CA.
    let host = Host::start_with_args(&env, &["-o", "LogLevel=DEBUG2"]);

    // rotate_every - publish_ahead after the key started signing, a next
    // key is published; a second run right after changes nothing.
    sleep_until(old.created + ROTATE_EVERY - PUBLISH_AHEAD + 1);
    let lines = rotate(&env);
    let next = only_key_in(&env, "next");
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert_change(&lines, &next.fingerprint, "created as next");
    assert_eq!(
        rotate(&env),
        ["nothing to do: no key is due to change"],
        "a second run right after (ca list: {:?})",
        ca_list(&env)
    );
    assert_eq!(
        trusted_fingerprints(&env),
        [old.fingerprint.clone(), next.fingerprint.clone()],
        "the next key is published beside the active one"
    );
    host.refresh_trusted(&env);

    // Until it is promoted, the old key signs; its certificates are short.
    let (old_cert, old_info) = daemon.request_cert(&env, &alice.private, SHORT);
    assert_eq!(signing_ca(&old_info), old.fingerprint);
    let (old_doomed, old_doomed_info) = daemon.request_cert(&env, &alice.private, SHORT);
    host.expect_login(
        &alice.private,
        &old_cert,
        "a certificate from the active key",
    );

    // publish_ahead later, the next key signs and the old one retires.
    sleep_until(next.created + PUBLISH_AHEAD + 1);
    let lines = rotate(&env);
    assert_change(&lines, &old.fingerprint, "active -> retiring");
    assert_change(&lines, &next.fingerprint, "next -> active");
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert_eq!(state_of(&env, &old.fingerprint), "retiring");
    assert_eq!(state_of(&env, &next.fingerprint), "active");

    // The daemon, never restarted, signs with the new key at once; during
    // the overlap both keys' certificates log in.
    let (new_cert, new_info) = daemon.request_cert(&env, &bob.private, SHORT);
    assert_eq!(
        signing_ca(&new_info),
        next.fingerprint,
        "the running daemon signs with the promoted key"
    );
    host.expect_login(&bob.private, &new_cert, "a certificate from the new key");
    host.expect_login(
        &alice.private,
        &old_cert,
        "the old key's certificate, in the overlap",
    );
    let trusted = trusted_fingerprints(&env);
    assert!(
        trusted.contains(&old.fingerprint) && trusted.contains(&next.fingerprint),
        "a retiring key stays published: {trusted:?}"
    );

    // Revoking in the overlap: the KRL gets a certificate section per key.
    let (new_doomed, new_doomed_info) = daemon.request_cert(&env, &bob.private, SHORT);
    for info in [&old_doomed_info, &new_doomed_info] {
        env.jitca_ok(&["revoke", "--serial", &info.serial.to_string()]);
    }
    host.refresh_krl(&env);
    let bytes = std::fs::read(&host.krl).unwrap_or_else(|e| panic!("cannot read the KRL: {e}"));
    let listed = parse_krl(&bytes).unwrap_or_else(|e| panic!("jitca's KRL: {e}"));
    let mut sections: Vec<&String> = listed.ca_sections.iter().map(|(ca, _)| ca).collect();
    sections.sort();
    let mut wanted = vec![&old.fingerprint, &next.fingerprint];
    wanted.sort();
    assert_eq!(
        sections, wanted,
        "one certificate section per CA key: {listed:?}"
    );
    assert_krl_verdicts(
        &host.krl,
        &[&old_doomed, &new_doomed],
        &[&old_cert, &new_cert],
    );
    host.expect_refused(
        &alice.private,
        &old_doomed,
        REVOKED_BY_FILE,
        "a revoked certificate of the retiring key",
    );

    // Once the old key's last certificate has expired, rotate retires it
    // (and may publish the key after next: the new one is due by now).
    sleep_until(old_info.valid_to.max(old_doomed_info.valid_to) + 1);
    let lines = rotate(&env);
    assert_change(&lines, &old.fingerprint, "retiring -> retired");
    assert_eq!(state_of(&env, &old.fingerprint), "retired");
    let trusted = trusted_fingerprints(&env);
    assert!(
        !trusted.contains(&old.fingerprint) && trusted.contains(&next.fingerprint),
        "a retired key is no longer published: {trusted:?}"
    );

    // Before the host refreshes, sshd still trusts the old CA and refuses
    // the certificate only because it has expired; afterwards it does not
    // trust its CA at all.
    host.expect_refused(
        &alice.private,
        &old_cert,
        "Certificate invalid: expired",
        "the old certificate, old CA still trusted",
    );
    host.refresh_trusted(&env);
    host.expect_refused(
        &alice.private,
        &old_cert,
        "is not listed in",
        "the old certificate once its CA is no longer trusted",
    );
    let (fresh_cert, _) = daemon.request_cert(&env, &bob.private, "request shell");
    host.expect_login(&bob.private, &fresh_cert, "a certificate after the refresh");

    let kinds: Vec<String> = env
        .audit_records()
        .iter()
        .filter_map(|r| r.get("kind").and_then(|k| k.as_str()).map(str::to_string))
        .collect();
    for kind in [
        "ca-key-created",
        "ca-key-activated",
        "ca-key-retiring",
        "ca-key-retired",
    ] {
        assert!(
            kinds.iter().any(|k| k == kind),
            "no {kind} record: {kinds:?}"
        );
    }
    assert_audit_intact(&env);
}

#[test]
fn revoking_the_active_ca_key_refuses_everything_it_signed_and_a_fresh_key_signs() {
    let env = Env::with_policy(STANDARD_POLICY);
    env.init();
    let alice = member(&env, "alice");
    let bob = member(&env, "bob");
    let daemon = Daemon::start(&env);
    let host = Host::start(&env);
    let old = only_key_in(&env, "active");

    let (alice_cert, _) = daemon.request_cert(&env, &alice.private, "request shell");
    let (bob_cert, _) = daemon.request_cert(&env, &bob.private, "request shell");
    host.expect_login(
        &alice.private,
        &alice_cert,
        "alice before the CA revocation",
    );
    host.expect_login(&bob.private, &bob_cert, "bob before the CA revocation");

    let out = env.jitca_ok(&["ca", "revoke", &old.fingerprint, "--reason", "key leaked"]);
    let fresh = only_key_in(&env, "active");
    assert_ne!(fresh.fingerprint, old.fingerprint);
    assert!(
        out.contains(&old.fingerprint) && out.contains(&fresh.fingerprint),
        "ca revoke names the revoked key and the one that signs now:\n{out}"
    );
    assert_eq!(state_of(&env, &old.fingerprint), "revoked");
    assert_eq!(
        trusted_fingerprints(&env),
        std::slice::from_ref(&fresh.fingerprint),
        "a revoked key is no longer published"
    );

    // A host that refreshes only its KRL refuses the old key's certificates
    // already: the KRL lists the CA key itself.
    host.refresh_krl(&env);
    let bytes = std::fs::read(&host.krl).unwrap_or_else(|e| panic!("cannot read the KRL: {e}"));
    let listed = parse_krl(&bytes).unwrap_or_else(|e| panic!("jitca's KRL: {e}"));
    assert!(
        listed.revoked_keys.contains(&old.fingerprint),
        "the revoked CA key is in the KRL: {listed:?}"
    );
    assert_krl_verdicts(&host.krl, &[&alice_cert, &bob_cert], &[]);
    host.expect_refused(
        &alice.private,
        &alice_cert,
        REVOKED_BY_FILE,
        "alice's certificate from the revoked CA",
    );
    host.expect_refused(
        &bob.private,
        &bob_cert,
        REVOKED_BY_FILE,
        "bob's certificate from the revoked CA",
    );

    // The running daemon signs with the fresh key; once hosts trust it, its
    // certificates log in and the old ones stay out.
    let (new_cert, new_info) = daemon.request_cert(&env, &alice.private, "request shell");
    assert_eq!(signing_ca(&new_info), fresh.fingerprint);
    host.refresh_trusted(&env);
    host.expect_login(
        &alice.private,
        &new_cert,
        "a certificate from the fresh key",
    );
    host.expect_refused(
        &bob.private,
        &bob_cert,
        REVOKED_BY_FILE,
        "bob's old certificate after the refresh",
    );
    assert_krl_verdicts(&host.krl, &[&alice_cert, &bob_cert], &[&new_cert]);

    let again = env.jitca_ok(&["ca", "revoke", &old.fingerprint]);
    assert!(again.contains("already revoked"), "{again}");
    assert_audit_intact(&env);
}

/// Timers on two hosts (or a timer and an operator) may run `ca rotate`
/// at the same moment: one next key comes of it, and both runs succeed.
#[test]
fn two_rotations_at_once_publish_one_next_key() {
    // Due one second after the key was created; the next key it makes
    // would not be promoted for three more.
    let env = Env::with_policy(&rotation_policy(3, 4));
    env.init();
    let active = only_key_in(&env, "active");
    sleep_until(active.created + 2);

    let outputs: Vec<std::process::Output> = std::thread::scope(|s| {
        let runs: Vec<_> = (0..2)
            .map(|_| s.spawn(|| env.jitca(&["ca", "rotate"])))
            .collect();
        runs.into_iter()
            .map(|r| {
                r.join()
                    .unwrap_or_else(|_| panic!("a rotation thread failed"))
            })
            .collect()
    });
    for out in &outputs {
        assert!(
            out.status.success(),
            "a concurrent ca rotate failed\n{}",
            describe(out)
        );
    }
    let created = outputs
        .iter()
        .flat_map(|o| stdout(o).lines().map(str::to_string).collect::<Vec<_>>())
        .filter(|l| l.contains("created as next"))
        .count();
    assert_eq!(
        created,
        1,
        "{:#?}",
        outputs.iter().map(describe).collect::<Vec<_>>()
    );
    only_key_in(&env, "next");
    assert_audit_intact(&env);
}

#[test]
fn revoking_an_unknown_ca_key_fails_naming_it_and_changes_nothing() {
    let env = Env::with_policy(STANDARD_POLICY);
    env.init();
    let before = env.db_snapshot();
    let unknown = "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let out = env.jitca_exit(&["ca", "revoke", unknown], 1);
    assert!(
        stderr(&out).contains(unknown),
        "the unknown fingerprint is named\n{}",
        describe(&out)
    );
    assert_eq!(env.db_snapshot(), before);
}

#[test]
fn policy_whose_publish_ahead_is_not_shorter_than_rotate_every_is_refused() {
    let env = Env::with_policy(&rotation_policy(8, 8));
    let policy = env.policy.to_string_lossy().into_owned();
    let out = env.jitca_exit(&["policy", "check", &policy], 1);
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        text.contains("publish_ahead") && text.contains("rotate_every"),
        "the error names both keys\n{}",
        describe(&out)
    );
    env.write_policy(&rotation_policy(PUBLISH_AHEAD, ROTATE_EVERY));
    env.jitca_ok(&["policy", "check", &policy]);
}

/// The helpers read `ssh-keygen -L`'s Signing CA field.
#[test]
fn signing_ca_is_read_from_the_certificate() {
    let text = "cert.pub:\n        Type: ssh-ed25519-cert-v01@openssh.com user certificate\n        Public key: ED25519-CERT SHA256:subject\n        Signing CA: ED25519 SHA256:theca (using ssh-ed25519)\n        Key ID: \"k\"\n        Serial: 7\n        Valid: from 2026-01-02T03:04:05 to 2026-01-02T03:19:05\n        Principals: \n                root\n        Critical Options: (none)\n        Extensions: (none)\n";
    let info = CertInfo::parse(text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(signing_ca(&info), "SHA256:theca");
}
