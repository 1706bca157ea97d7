//! Revocation (issue 4), checked the way hosts see it: `ssh-keygen -Q`
//! against the KRL jitca writes, and a real `sshd` whose `RevokedKeys` is
//! that KRL (PROTOCOL.krl). Revoking by serial, request, user and device;
//! suspending a user and disabling a device; what revocation leaves alone.

mod common;

use std::path::Path;
use std::time::Duration;

use common::approvals::{Team, assert_audit_intact, exit, pending_id};
use common::daemon::{Daemon, ssh_ca};
use common::krl::{Host, assert_krl_verdicts, only_key_in, parse_krl, wait_for_change, write_krl};
use common::revoking::{REVOKED_BY_FILE, audited_revocations, revoke, two_users};
use common::{GOOD_POSTURE, KeyKind, describe, now_unix, standard_env, stderr};

#[test]
fn revoked_cert_is_refused_by_sshd_once_the_daemon_rewrites_its_krl_and_others_still_log_in() {
    let (env, alice, bob) = two_users();
    let krl = std::path::absolute(env.path("daemon.krl")).unwrap_or_else(|e| panic!("{e}"));
    let daemon = Daemon::start_with(&env, &["--krl", &krl.to_string_lossy()]);
    let host = Host::start_on_krl(&env, &krl);

    let (a_cert, a) = daemon.request_cert(&env, &alice.private, "request shell");
    let (b_cert, _) = daemon.request_cert(&env, &bob.private, "request shell");
    host.expect_login(&alice.private, &a_cert, "alice before the revocation");
    host.expect_login(&bob.private, &b_cert, "bob before the revocation");

    let before = std::fs::read(&krl).unwrap_or_else(|e| panic!("cannot read the KRL: {e}"));
    let listed = parse_krl(&before).unwrap_or_else(|e| panic!("the daemon's first KRL: {e}"));
    assert!(
        listed.ca_sections.is_empty() && listed.revoked_keys.is_empty(),
        "nothing is revoked yet, the KRL lists {listed:?}"
    );

    revoke(
        &env,
        &["--serial", &a.serial.to_string()],
        std::slice::from_ref(&a.serial),
    );
    let (after, took) = wait_for_change(&krl, Some(&before), Duration::from_secs(15));
    assert!(
        took <= Duration::from_secs(8),
        "the daemon took {took:?} to rewrite its KRL (it promises about 2 s)\n{}",
        daemon.log_text()
    );
    let listed = parse_krl(&after).unwrap_or_else(|e| panic!("the daemon's new KRL: {e}"));
    let active = only_key_in(&env, "active");
    assert_eq!(
        listed
            .ca_sections
            .iter()
            .map(|(ca, _)| ca)
            .collect::<Vec<_>>(),
        [&active.fingerprint],
        "one certificate section, for the signing CA: {listed:?}"
    );

    host.expect_refused(
        &alice.private,
        &a_cert,
        REVOKED_BY_FILE,
        "alice's revoked certificate",
    );
    host.expect_login(&bob.private, &b_cert, "bob after alice's revocation");
    assert_krl_verdicts(&krl, &[&a_cert], &[&b_cert]);

    assert_eq!(audited_revocations(&env), [vec![a.serial]]);
    assert_audit_intact(&env);
}

#[test]
fn revoking_by_device_or_user_revokes_only_their_live_certs_and_the_device_keeps_working() {
    let (env, alice, bob) = two_users();
    let desktop = env.keygen("alice_desktop", KeyKind::EcdsaP384);
    env.add_device("alice", "alice-desktop", &desktop);
    env.set_posture("alice-desktop", GOOD_POSTURE);
    let daemon = Daemon::start(&env);

    let laptop_1 = daemon.request_cert(&env, &alice.private, "request shell");
    let desktop_1 = daemon.request_cert(&env, &desktop.private, "request shell");
    let bob_1 = daemon.request_cert(&env, &bob.private, "request shell");

    revoke(&env, &["--device", "alice-desktop"], &[desktop_1.1.serial]);
    let krl = env.path("revoked.krl");
    write_krl(&env, &krl);
    assert_krl_verdicts(
        &krl,
        &[&desktop_1.0],
        &[&laptop_1.0, &bob_1.0, &desktop.public],
    );

    // Revoking a device's certificates does not disable the device.
    let desktop_2 = daemon.request_cert(&env, &desktop.private, "request shell");
    let out = revoke(
        &env,
        &["--user", "alice"],
        &[laptop_1.1.serial, desktop_2.1.serial],
    );
    assert!(
        !out.contains(&format!("serial {}", desktop_1.1.serial))
            && !out.contains(&format!(", {}", desktop_1.1.serial)),
        "an already revoked certificate is not revoked again:\n{out}"
    );
    write_krl(&env, &krl);
    assert_krl_verdicts(
        &krl,
        &[&desktop_1.0, &laptop_1.0, &desktop_2.0],
        &[&bob_1.0, &alice.public, &desktop.public],
    );

    let out = env.jitca_ok(&["revoke", "--user", "alice"]);
    assert!(
        out.contains("nothing to revoke"),
        "revoking alice again finds nothing live:\n{out}"
    );
    assert_eq!(
        audited_revocations(&env),
        [
            vec![desktop_1.1.serial],
            vec![laptop_1.1.serial, desktop_2.1.serial]
        ]
    );
    assert_audit_intact(&env);
}

#[test]
fn revoking_by_request_revokes_the_certificate_of_that_approved_request() {
    let team = Team::new();
    let env = &team.env;
    let daemon = Daemon::start(env);

    let out = ssh_ca(&daemon, &team.alice.private, "request db --reason INC-7");
    daemon.expect_refusal(&out, exit::PENDING);
    let id = pending_id(&out);
    let out = ssh_ca(&daemon, &team.bob.private, &format!("approve {id}"));
    assert!(out.status.success(), "bob's approval\n{}", describe(&out));
    let approved = daemon.save_cert(
        env,
        &ssh_ca(&daemon, &team.alice.private, &format!("fetch {id}")),
    );
    let other = daemon.request_cert(
        env,
        &team.alice.private,
        "request glass --reason INC-8-outage",
    );

    revoke(env, &["--request", &id], &[approved.1.serial]);
    let krl = env.path("revoked.krl");
    write_krl(env, &krl);
    assert_krl_verdicts(&krl, &[&approved.0], &[&other.0]);

    // Fetching the request again does not hand back the revoked certificate.
    let out = ssh_ca(&daemon, &team.alice.private, &format!("fetch {id}"));
    assert_eq!(out.status.code(), Some(exit::DENIED), "{}", describe(&out));
    assert!(common::stdout(&out).is_empty(), "{}", describe(&out));
    assert!(stderr(&out).contains("revoked"), "{}", describe(&out));

    let out = env.jitca_exit(&["revoke", "--request", "r-aaaaaaaaaa"], 1);
    assert!(
        stderr(&out).contains("r-aaaaaaaaaa"),
        "an unknown request is named\n{}",
        describe(&out)
    );
    assert_audit_intact(env);
}

#[test]
fn revoking_an_approved_request_before_its_fetch_cancels_it() {
    let team = Team::new();
    let env = &team.env;
    let daemon = Daemon::start(env);
    let out = ssh_ca(&daemon, &team.alice.private, "request db --reason INC-9");
    daemon.expect_refusal(&out, exit::PENDING);
    let id = pending_id(&out);
    let out = ssh_ca(&daemon, &team.bob.private, &format!("approve {id}"));
    assert!(out.status.success(), "{}", describe(&out));

    let said = env.jitca_ok(&["revoke", "--request", &id, "--reason", "wrong ticket"]);
    assert!(said.contains("cancelled 1 open request"), "{said}");
    let out = ssh_ca(&daemon, &team.alice.private, &format!("fetch {id}"));
    assert_eq!(out.status.code(), Some(exit::DENIED), "{}", describe(&out));
    assert!(common::stdout(&out).is_empty(), "{}", describe(&out));
    assert!(
        stderr(&out).contains("cancelled by an operator"),
        "{}",
        describe(&out)
    );
    assert_audit_intact(env);
}

/// The contract: `jitca revoke TARGET [--reason TEXT]`, the reason kept in
/// the audit record.
#[test]
fn revoke_accepts_a_reason_beside_its_target_and_audits_it() {
    let (env, alice) = standard_env();
    let daemon = Daemon::start(&env);
    let (_, cert) = daemon.request_cert(&env, &alice.private, "request shell");

    let serial = cert.serial.to_string();
    let out = env.jitca(&["revoke", "--serial", &serial, "--reason", "laptop stolen"]);
    assert!(
        out.status.success(),
        "jitca revoke --serial N --reason TEXT is refused\n{}",
        describe(&out)
    );
    let records = env.audit_records_where(&["--kind", "revoked"]);
    assert!(
        records.len() == 1
            && records[0].pointer("/body/reason").and_then(|r| r.as_str()) == Some("laptop stolen"),
        "the revocation's reason is audited: {records:#?}"
    );
    assert_audit_intact(&env);
}

#[test]
fn revoking_an_unknown_serial_fails_naming_it_and_changes_nothing() {
    let (env, _) = standard_env();
    let before = env.db_snapshot();
    let out = env.jitca_exit(&["revoke", "--serial", "987654"], 1);
    assert!(
        stderr(&out).contains("987654"),
        "the unknown serial is named\n{}",
        describe(&out)
    );
    assert_eq!(
        env.db_snapshot(),
        before,
        "a failed revocation changes nothing"
    );
}

#[test]
fn a_revoked_cert_leaves_the_krl_once_it_has_expired() {
    let (env, alice) = standard_env();
    // A revoked certificate stays listed for `backdate` past its expiry
    // (hosts' clocks may lag); with none it leaves at once.
    env.write_policy(&common::STANDARD_POLICY.replace("backdate = \"2m\"", "backdate = \"0s\""));
    let daemon = Daemon::start(&env);
    let (cert_path, cert) = daemon.request_cert(&env, &alice.private, "request shell --ttl 4s");
    let serial = cert.serial.to_string();
    revoke(&env, &["--serial", &serial], &[cert.serial]);

    let krl = env.path("revoked.krl");
    write_krl(&env, &krl);
    assert_krl_verdicts(&krl, &[&cert_path], &[]);

    let wait = cert.valid_to + 1 - now_unix();
    assert!(
        wait <= 10,
        "certificate valid {wait} s more: not a short cert"
    );
    if wait > 0 {
        std::thread::sleep(Duration::from_secs(wait as u64));
    }
    write_krl(&env, &krl);
    let bytes = std::fs::read(&krl).unwrap_or_else(|e| panic!("cannot read the KRL: {e}"));
    let listed = parse_krl(&bytes).unwrap_or_else(|e| panic!("jitca's KRL: {e}"));
    assert!(
        listed.ca_sections.is_empty(),
        "an expired certificate needs no KRL entry: {listed:?}"
    );
    let out = env.jitca_ok(&["revoke", "--serial", &serial]);
    assert!(out.contains("nothing to revoke"), "{out}");
    assert_audit_intact(&env);
}

#[test]
fn suspending_a_user_and_disabling_a_device_revoke_their_certs_and_the_device_key() {
    let (env, alice, bob) = two_users();
    // The device to disable holds an RSA key: its KRL entry is the SHA256
    // of a key blob other than Ed25519's.
    let desktop = env.keygen("alice_desktop", KeyKind::Rsa3072);
    env.add_device("alice", "alice-desktop", &desktop);
    env.set_posture("alice-desktop", GOOD_POSTURE);
    let daemon = Daemon::start(&env);
    let host = Host::start(&env);

    let (laptop_cert, laptop) = daemon.request_cert(&env, &alice.private, "request shell");
    let (desktop_cert, desktop_info) = daemon.request_cert(&env, &desktop.private, "request shell");
    let (bob_cert, _) = daemon.request_cert(&env, &bob.private, "request shell");

    let out = env.jitca_ok(&["device", "disable", "alice-desktop"]);
    assert!(
        out.contains(&format!("serial {}", desktop_info.serial)),
        "disabling the device names the serial it revoked:\n{out}"
    );
    host.refresh_krl(&env);
    assert_krl_verdicts(
        &host.krl,
        &[&desktop_cert, &desktop.public],
        &[&laptop_cert, &alice.public, &bob_cert],
    );
    host.expect_refused(
        &desktop.private,
        &desktop_cert,
        REVOKED_BY_FILE,
        "the disabled device's certificate",
    );
    host.expect_login(&alice.private, &laptop_cert, "alice's other device");

    let out = env.jitca_ok(&["user", "suspend", "alice"]);
    assert!(
        out.contains(&format!("serial {}", laptop.serial)),
        "suspending alice names the serial it revoked:\n{out}"
    );
    host.refresh_krl(&env);
    let revoked: [&Path; 3] = [&desktop_cert, &desktop.public, &laptop_cert];
    assert_krl_verdicts(&host.krl, &revoked, &[&bob_cert]);
    host.expect_refused(
        &alice.private,
        &laptop_cert,
        REVOKED_BY_FILE,
        "the suspended user's certificate",
    );
    host.expect_login(&bob.private, &bob_cert, "another user's certificate");

    // Resuming the user does not bring the revoked certificates back.
    env.jitca_ok(&["user", "resume", "alice"]);
    host.refresh_krl(&env);
    assert_krl_verdicts(&host.krl, &revoked, &[&bob_cert]);
    assert_eq!(
        audited_revocations(&env),
        [vec![desktop_info.serial], vec![laptop.serial]]
    );
    assert_audit_intact(&env);
}
