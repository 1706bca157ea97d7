//! Revocation and the KRL (issue 4), checked the way hosts see them:
//! `ssh-keygen -Q` against the KRL jitca writes, and a real `sshd` whose
//! `RevokedKeys` is that KRL (PROTOCOL.krl). Revoking by serial, request,
//! user and device; suspending a user and disabling a device; the daemon
//! keeping the KRL file current; rewrites that never show `sshd` half a
//! file; and the KRL served over ssh.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::approvals::{Team, assert_audit_intact, exit, pending_id};
use common::cert::CertInfo;
use common::daemon::{Daemon, ssh_ca};
use common::krl::{
    Host, KRL_MAGIC, assert_krl_verdicts, only_key_in, parse_krl, skip_serials_to, wait_for_change,
    without_times, write_krl,
};
use common::{Env, GOOD_POSTURE, KeyKind, KeyPair, describe, now_unix, standard_env, stderr};

/// A certificate file jitca issued, and what `ssh-keygen -L` read in it.
type Issued = (PathBuf, CertInfo);

/// What `sshd` logs when the KRL revokes a key or certificate.
const REVOKED_BY_FILE: &str = "revoked by file";

/// The standard environment with a second user, bob (group `ops`, device
/// `bob-laptop`), whose posture passes too.
fn two_users() -> (Env, KeyPair, KeyPair) {
    let (env, alice) = standard_env();
    let bob = env.keygen("bob_ed25519", KeyKind::Ed25519);
    env.enrol("bob", &["ops"], "bob-laptop", &bob);
    env.set_posture("bob-laptop", GOOD_POSTURE);
    (env, alice, bob)
}

/// `jitca revoke ARGS...`; fails unless it succeeds and names every one of
/// SERIALS; returns its output.
fn revoke(env: &Env, args: &[&str], serials: &[u64]) -> String {
    let mut all = vec!["revoke"];
    all.extend_from_slice(args);
    let out = env.jitca_ok(&all);
    for serial in serials {
        assert!(
            out.split(|c: char| !c.is_ascii_digit())
                .any(|w| w == serial.to_string()),
            "jitca {} does not name serial {serial}:\n{out}",
            all.join(" ")
        );
    }
    out
}

/// The serials of the `revoked` audit records, in order.
fn audited_revocations(env: &Env) -> Vec<Vec<u64>> {
    env.audit_records_where(&["--kind", "revoked"])
        .iter()
        .map(|r| {
            r.pointer("/body/serials")
                .and_then(|s| s.as_array())
                .map(|a| a.iter().filter_map(|v| v.as_u64()).collect())
                .unwrap_or_else(|| panic!("revoked record without serials: {r:#}"))
        })
        .collect()
}

fn paths(certs: &[&Issued]) -> Vec<PathBuf> {
    certs.iter().map(|(p, _)| p.clone()).collect()
}

fn refs(paths: &[PathBuf]) -> Vec<&Path> {
    paths.iter().map(PathBuf::as_path).collect()
}

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

/// `serve --krl FILE` follows every kind of change, not only revoked
/// serials: a disabled device's key, then a revoked CA key.
#[test]
fn daemon_krl_file_follows_a_disabled_device_and_a_revoked_ca_key() {
    let (env, alice, bob) = two_users();
    let krl = std::path::absolute(env.path("daemon.krl")).unwrap_or_else(|e| panic!("{e}"));
    let daemon = Daemon::start_with(&env, &["--krl", &krl.to_string_lossy()]);
    let (first, _) = wait_for_change(&krl, None, Duration::from_secs(20));
    let (alice_cert, _) = daemon.request_cert(&env, &alice.private, "request shell");

    env.jitca_ok(&["device", "disable", "bob-laptop"]);
    let (second, _) = wait_for_change(&krl, Some(&first), Duration::from_secs(15));
    let listed = parse_krl(&second).unwrap_or_else(|e| panic!("the daemon's KRL: {e}"));
    assert_eq!(listed.revoked_keys, [bob.fingerprint()], "{listed:?}");
    assert_krl_verdicts(&krl, &[&bob.public], &[&alice_cert, &alice.public]);

    let ca = only_key_in(&env, "active");
    env.jitca_ok(&["ca", "revoke", &ca.fingerprint]);
    let (third, _) = wait_for_change(&krl, Some(&second), Duration::from_secs(15));
    let listed = parse_krl(&third).unwrap_or_else(|e| panic!("the daemon's KRL: {e}"));
    assert!(
        listed.revoked_keys.contains(&ca.fingerprint),
        "the revoked CA key is listed: {listed:?}"
    );
    assert_krl_verdicts(&krl, &[&bob.public, &alice_cert], &[&alice.public]);
    assert_audit_intact(&env);
}

#[test]
fn krl_revokes_exactly_the_revoked_serials_across_singles_a_long_run_and_a_dense_block() {
    let (env, alice, bob) = two_users();
    let daemon = Daemon::start(&env);
    // Alternate the two devices: serials are the CA's, not the device's.
    let mut n = 0;
    let mut issue = |count: usize| -> Vec<Issued> {
        (0..count)
            .map(|_| {
                n += 1;
                let key = if n % 2 == 0 { &alice } else { &bob };
                daemon.request_cert(&env, &key.private, "request shell")
            })
            .collect()
    };
    let consecutive_from = |certs: &[Issued], first: u64| {
        let serials: Vec<u64> = certs.iter().map(|(_, c)| c.serial).collect();
        let wanted: Vec<u64> = (first..first + certs.len() as u64).collect();
        assert_eq!(serials, wanted, "serials should follow each other");
    };

    // Four stretches of serials far apart, so that each is encoded on its own:
    // an isolated serial, a long run, a dense block with gaps (beyond 32
    // bits), and another isolated serial far away.
    let start = issue(2);
    let first = start[0].1.serial;
    consecutive_from(&start, first);
    skip_serials_to(&env, 1_000);
    let run = issue(29);
    consecutive_from(&run, 1_001);
    skip_serials_to(&env, 5_000_000_000);
    let dense = issue(10);
    consecutive_from(&dense, 5_000_000_001);
    skip_serials_to(&env, 5_000_100_000);
    let tail = issue(2);
    consecutive_from(&tail, 5_000_100_001);

    // Which of each stretch to revoke, by index.
    let chosen: [(&[Issued], &[usize]); 4] = [
        (&start, &[1]),
        (&run, &(0..28).collect::<Vec<_>>()),
        (&dense, &[0, 1, 3, 4, 6, 8, 9]),
        (&tail, &[0]),
    ];
    let (mut revoked, mut kept): (Vec<&Issued>, Vec<&Issued>) = (Vec::new(), Vec::new());
    for (certs, revoke_these) in chosen {
        for (i, cert) in certs.iter().enumerate() {
            if revoke_these.contains(&i) {
                revoked.push(cert);
            } else {
                kept.push(cert);
            }
        }
    }
    for (_, cert) in &revoked {
        let serial = cert.serial.to_string();
        revoke(&env, &["--serial", &serial], &[cert.serial]);
    }

    let krl = env.path("revoked.krl");
    write_krl(&env, &krl);
    let bytes = std::fs::read(&krl).unwrap_or_else(|e| panic!("cannot read the KRL: {e}"));
    let listed = parse_krl(&bytes).unwrap_or_else(|e| panic!("jitca's KRL: {e}"));
    assert_eq!(listed.ca_sections.len(), 1, "{listed:?}");
    let kinds = &listed.ca_sections[0].1;
    for kind in ["list", "range", "bitmap"] {
        assert!(
            kinds.contains(&kind),
            "expected a {kind} subsection among {kinds:?}: the test no longer covers every kind"
        );
    }

    let revoked_paths = paths(&revoked);
    let kept_paths = paths(&kept);
    let mut kept_refs = refs(&kept_paths);
    // No device was disabled: the device keys themselves are not revoked.
    kept_refs.extend([alice.public.as_path(), bob.public.as_path()]);
    assert_krl_verdicts(&krl, &refs(&revoked_paths), &kept_refs);

    // sshd reads the same KRL: a revoked serial of the dense block is
    // refused, a serial in one of its gaps logs in.
    let host = Host::start(&env);
    let key_of = |info: &CertInfo| {
        if info.key_id.contains("alice") {
            &alice
        } else {
            &bob
        }
    };
    let (gap_cert, gap) = &dense[2];
    let (hit_cert, hit) = &dense[3];
    host.expect_login(&key_of(gap).private, gap_cert, "a serial in a gap");
    host.expect_refused(
        &key_of(hit).private,
        hit_cert,
        REVOKED_BY_FILE,
        "a revoked serial of the dense block",
    );
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

    let out = env.jitca_exit(&["revoke", "--request", "r-aaaaaaaaaa"], 1);
    assert!(
        stderr(&out).contains("r-aaaaaaaaaa"),
        "an unknown request is named\n{}",
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

#[test]
fn krl_rewrites_never_show_sshd_a_partial_file() {
    let (env, alice, bob) = two_users();
    let daemon = Daemon::start(&env);
    let host = Host::start(&env);
    let (bob_cert, _) = daemon.request_cert(&env, &bob.private, "request shell");
    let doomed: Vec<Issued> = (0..2)
        .map(|_| daemon.request_cert(&env, &alice.private, "request shell"))
        .collect();

    const LOGINS: usize = 15;
    const MAX_REWRITES: usize = 2_000;
    let done = AtomicBool::new(false);
    let (rewrites, reads, torn) = std::thread::scope(|s| {
        let writer = s.spawn(|| {
            let mut rewrites = 0;
            while rewrites < MAX_REWRITES && !(done.load(Ordering::Relaxed) && rewrites > 30) {
                // A revocation or two in between, so the content changes too.
                if let Some(i) = [10, 25].iter().position(|&at| at == rewrites) {
                    let serial = doomed[i].1.serial.to_string();
                    env.jitca_ok(&["revoke", "--serial", &serial]);
                }
                host.refresh_krl(&env);
                rewrites += 1;
            }
            rewrites
        });
        let reader = s.spawn(|| {
            let (mut reads, mut torn) = (0usize, Vec::new());
            while !done.load(Ordering::Relaxed) {
                match std::fs::read(&host.krl) {
                    Ok(bytes) if parse_krl(&bytes).is_ok() => {}
                    Ok(bytes) => {
                        torn.push(format!("{} bytes: {:?}", bytes.len(), parse_krl(&bytes)))
                    }
                    Err(e) => torn.push(format!("cannot read: {e}")),
                }
                reads += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
            (reads, torn)
        });
        let mut refused = Vec::new();
        for i in 0..LOGINS {
            let out = host.login(&bob.private, &bob_cert);
            if !out.status.success() {
                refused.push(format!("login {i}:\n{}", describe(&out)));
            }
        }
        done.store(true, Ordering::Relaxed);
        assert!(
            refused.is_empty(),
            "sshd refused a certificate nobody revoked while the KRL was rewritten:\n{}\n{}",
            refused.join("\n"),
            host.sshd.log_text()
        );
        let rewrites = writer
            .join()
            .unwrap_or_else(|_| panic!("the KRL writer failed"));
        let (reads, torn) = reader
            .join()
            .unwrap_or_else(|_| panic!("the KRL reader failed"));
        (rewrites, reads, torn)
    });

    assert!(
        torn.is_empty(),
        "{} of {reads} reads saw an incomplete KRL during {rewrites} rewrites:\n{}",
        torn.len(),
        torn[..torn.len().min(10)].join("\n")
    );
    assert!(rewrites > 30, "only {rewrites} rewrites happened");
    assert!(
        !host
            .sshd
            .log()
            .contains("Error checking authentication key"),
        "sshd could not read the KRL at some point\n{}",
        host.sshd.log_text()
    );
    let doomed_paths = paths(&doomed.iter().collect::<Vec<_>>());
    assert_krl_verdicts(&host.krl, &refs(&doomed_paths), &[&bob_cert]);
    assert_audit_intact(&env);
}

#[test]
fn krl_over_ssh_is_base64_of_the_krl_jitca_writes_and_ssh_keygen_reads_it() {
    let (env, alice, bob) = two_users();
    let daemon = Daemon::start(&env);
    let (revoked_cert, revoked) = daemon.request_cert(&env, &alice.private, "request shell");
    let (kept_cert, _) = daemon.request_cert(&env, &alice.private, "request shell");
    env.jitca_ok(&["device", "disable", "bob-laptop"]);
    let serial = revoked.serial.to_string();
    revoke(&env, &["--serial", &serial], &[revoked.serial]);

    let out = ssh_ca(&daemon, &alice.private, "krl");
    assert!(out.status.success(), "krl over ssh\n{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = text
        .strip_suffix('\n')
        .filter(|l| !l.contains(['\n', '\r']))
        .unwrap_or_else(|| panic!("krl over ssh is not one line: {text:?}"));
    let decoded = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .decode(line)
            .unwrap_or_else(|e| panic!("krl over ssh is not base64 ({e}): {line:?}"))
    };
    let raw = ssh_ca(&daemon, &alice.private, "krl --raw");
    assert!(
        raw.status.success(),
        "krl --raw over ssh\n{}",
        describe(&raw)
    );
    let local = env.jitca(&["krl"]);
    assert!(local.status.success(), "jitca krl\n{}", describe(&local));

    assert!(decoded.starts_with(KRL_MAGIC), "{decoded:?}");
    assert_eq!(
        without_times(&decoded),
        without_times(&local.stdout),
        "krl over ssh and jitca krl differ in more than the version and date"
    );
    assert_eq!(
        without_times(&raw.stdout),
        without_times(&local.stdout),
        "krl --raw over ssh and jitca krl differ in more than the version and date"
    );

    let file = env.write("from-ssh.krl", &decoded);
    assert_krl_verdicts(
        &file,
        &[&revoked_cert, &bob.public],
        &[&kept_cert, &alice.public],
    );
    assert_audit_intact(&env);
}

/// The harness's wait for a KRL file gives up in time rather than hang.
#[test]
fn waiting_for_a_krl_that_never_appears_fails_in_time() {
    let env = Env::new();
    let missing = env.path("never.krl");
    let start = Instant::now();
    let result = std::panic::catch_unwind(|| {
        wait_for_change(&missing, None, Duration::from_millis(300));
    });
    assert!(result.is_err(), "waiting for a missing file must fail");
    assert!(start.elapsed() < Duration::from_secs(5));
}
