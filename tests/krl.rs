//! The KRL file itself (issue 4, PROTOCOL.krl): serials encoded as lists,
//! ranges and bitmaps that `ssh-keygen -Q` and `sshd` read exactly as
//! meant; the daemon keeping its `--krl` file current; rewrites that never
//! show `sshd` half a file; and the KRL served over ssh.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::approvals::assert_audit_intact;
use common::cert::CertInfo;
use common::daemon::{Daemon, ssh_ca};
use common::krl::{
    Host, KRL_MAGIC, assert_krl_verdicts, only_key_in, parse_krl, skip_serials_to, wait_for_change,
    without_times, write_krl,
};
use common::revoking::{Issued, REVOKED_BY_FILE, as_paths, cert_paths, revoke, two_users};
use common::{Env, describe};

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
    // Alternate the two devices: serials are the CA's, not the device's.
    let mut n = 0;
    let mut issue = |daemon: &Daemon, count: usize| -> Vec<Issued> {
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
    // The daemon reserves serials in blocks, so the counter is moved with no
    // daemon running; each new daemon starts after it.
    let from = |value: u64| {
        skip_serials_to(&env, value);
        Daemon::start(&env)
    };

    // Four stretches of serials far apart, so that each is encoded on its own:
    // an isolated serial, a long run, a dense block with gaps (beyond 32
    // bits), and another isolated serial far away.
    let start = issue(&Daemon::start(&env), 2);
    let first = start[0].1.serial;
    consecutive_from(&start, first);
    let run = issue(&from(1_000), 29);
    consecutive_from(&run, 1_001);
    let dense = issue(&from(5_000_000_000), 10);
    consecutive_from(&dense, 5_000_000_001);
    let tail = issue(&from(5_000_100_000), 2);
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

    let revoked_paths = cert_paths(&revoked);
    let kept_paths = cert_paths(&kept);
    let mut kept_refs = as_paths(&kept_paths);
    // No device was disabled: the device keys themselves are not revoked.
    kept_refs.extend([alice.public.as_path(), bob.public.as_path()]);
    assert_krl_verdicts(&krl, &as_paths(&revoked_paths), &kept_refs);

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
    let doomed_paths = cert_paths(&doomed.iter().collect::<Vec<_>>());
    assert_krl_verdicts(&host.krl, &as_paths(&doomed_paths), &[&bob_cert]);
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
