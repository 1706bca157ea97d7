//! Regression tests for faults an adversarial review found: each is named
//! for what it checks, and each drives the real daemon.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::daemon::{Daemon, ca_command_with, ssh_ca};
use common::{KeyKind, describe, run, standard_env, stderr};

/// Opens a TCP connection and sends an SSH identification string, as a
/// client that then never authenticates.
fn half_open(port: u16) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.write_all(b"SSH-2.0-idle_client\r\n").unwrap();
    s
}

/// [`half_open`], retried until the server answers with its banner, so
/// that the connection is known to hold a slot (a slot still held by a
/// connection that is closing would refuse it at first).
fn held_open(port: u16) -> TcpStream {
    for _ in 0..50 {
        let mut s = half_open(port);
        let mut banner = [0u8; 8];
        if s.read_exact(&mut banner).is_ok() && &banner == b"SSH-2.0-" {
            return s;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the daemon never accepted a connection");
}

/// True if and only if the server closed `s` within `within`.
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    while start.elapsed() < within {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
    false
}

#[test]
fn a_client_that_never_authenticates_is_closed_after_the_login_grace() {
    let (env, _) = standard_env();
    let daemon = Daemon::start_with(&env, &["--login-grace", "2s"]);
    let mut idle = half_open(daemon.port);
    assert!(
        closed_within(&mut idle, Duration::from_secs(12)),
        "an unauthenticated connection outlived a 2s login grace\n{}",
        daemon.log_text()
    );
}

#[test]
fn one_peer_cannot_hold_more_than_its_share_of_connections() {
    let (env, key) = standard_env();
    let daemon = Daemon::start_with(&env, &["--max-per-peer", "2"]);
    let _a = held_open(daemon.port);
    let _b = held_open(daemon.port);
    let out = ssh_ca(&daemon, &key.private, "whoami");
    assert!(
        !out.status.success(),
        "a third connection from one peer was served\n{}",
        describe(&out)
    );
    drop((_a, _b));
    std::thread::sleep(Duration::from_millis(500));
    let out = ssh_ca(&daemon, &key.private, "whoami");
    assert!(
        out.status.success(),
        "the peer's slots were not given back\n{}",
        describe(&out)
    );
}

#[test]
fn a_connection_runs_more_commands_than_its_channel_limit_one_after_another() {
    let (env, key) = standard_env();
    let daemon = Daemon::start(&env);
    let control = format!("ControlPath={}", env.path("mux").display());
    let mux = |extra: &[&str]| {
        let mut options = vec!["-o", control.as_str()];
        options.extend_from_slice(extra);
        run(
            &mut ca_command_with(&daemon, &key.private, None, &options, "whoami"),
            Duration::from_secs(60),
        )
    };
    let first = mux(&["-o", "ControlMaster=yes", "-o", "ControlPersist=30"]);
    assert!(first.status.success(), "{}", describe(&first));
    for i in 0..6 {
        let out = mux(&["-o", "ControlMaster=no"]);
        assert!(
            out.status.success(),
            "command {} on one connection failed\n{}",
            i + 2,
            describe(&out)
        );
    }
    let _ = mux(&["-O", "exit"]);
}

#[test]
fn a_subsystem_request_is_refused_at_once_rather_than_left_hanging() {
    let (env, key) = standard_env();
    let daemon = Daemon::start(&env);
    let mut c = ca_command_with(&daemon, &key.private, None, &["-s"], "sftp");
    let started = Instant::now();
    let out = run(&mut c, Duration::from_secs(30));
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the subsystem request hung"
    );
}

#[test]
fn an_ssh_rsa_sha1_signature_is_refused_and_audited() {
    let (env, _) = standard_env();
    let rsa = env.keygen("bob_rsa", KeyKind::Rsa3072);
    env.enrol("bob", &["ops"], "bob-laptop", &rsa);
    env.set_posture("bob-laptop", common::GOOD_POSTURE);
    let daemon = Daemon::start(&env);

    let options = ["-o", "PubkeyAcceptedAlgorithms=ssh-rsa"];
    let mut sha1 = ca_command_with(&daemon, &rsa.private, None, &options, "whoami");
    let out = run(&mut sha1, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(255), "{}", describe(&out));
    let refused = env.audit_records_where(&["--kind", "auth-refused"]);
    assert!(
        refused.iter().any(|r| r["body"]["reason"]
            .as_str()
            .is_some_and(|s| s.contains("ssh-rsa"))),
        "no auth-refused record names ssh-rsa: {refused:?}"
    );

    // The same key with a SHA-2 signature is fine.
    let out = ssh_ca(&daemon, &rsa.private, "whoami");
    assert!(out.status.success(), "{}", describe(&out));
}

#[test]
fn a_certificate_offered_for_authentication_is_refused_and_audited() {
    let (env, key) = standard_env();
    let daemon = Daemon::start(&env);
    let (cert, _) = daemon.request_cert(&env, &key.private, "request shell");

    let option = format!("CertificateFile={}", cert.display());
    let mut with_cert = ca_command_with(&daemon, &key.private, None, &["-o", &option], "whoami");
    let out = run(&mut with_cert, Duration::from_secs(60));
    // ssh falls back to the plain key, which is enrolled.
    assert!(out.status.success(), "{}", describe(&out));
    let refused = env.audit_records_where(&["--kind", "auth-refused"]);
    assert!(
        refused.iter().any(|r| r["body"]["reason"]
            .as_str()
            .is_some_and(|s| s.contains("certificate"))),
        "the certificate login attempt was not audited: {refused:?}"
    );
}

#[test]
fn serve_on_a_port_in_use_creates_nothing() {
    let env = common::Env::with_policy(common::STANDARD_POLICY);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = env.jitca(&["serve", "--listen", &addr]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(stderr(&out).contains("cannot listen"), "{}", describe(&out));
    assert!(
        !env.db.exists(),
        "serve created a database before failing to listen"
    );
}

#[test]
fn a_huge_since_span_lists_from_the_beginning_instead_of_panicking() {
    let (env, _) = standard_env();
    for span in ["9223372036854775808s", "18446744073709551615s"] {
        let out = env.jitca(&["audit", "list", "--since", span]);
        assert!(out.status.success(), "{span}: {}", describe(&out));
        assert!(!common::stdout(&out).is_empty(), "{span}: listed nothing");
    }
}

#[test]
fn serve_refuses_to_start_when_its_krl_file_cannot_be_written() {
    let env = common::Env::with_policy(common::STANDARD_POLICY);
    let bad = env.path("no-such-dir/jitca.krl");
    let out = env.jitca(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--krl",
        &bad.to_string_lossy(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        stderr(&out).contains("cannot write the KRL"),
        "{}",
        describe(&out)
    );
}

#[test]
fn serve_restores_its_krl_file_when_it_is_deleted() {
    let (env, _) = standard_env();
    let krl = env.path("jitca.krl");
    let _daemon = Daemon::start_with(&env, &["--krl", &krl.to_string_lossy()]);
    assert!(krl.exists(), "serve did not write its KRL at start");
    std::fs::remove_file(&krl).unwrap();
    let start = Instant::now();
    while !krl.exists() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        krl.exists(),
        "a deleted KRL was not written again: sshd would refuse every login"
    );
}

#[test]
fn a_connection_opened_before_a_suspension_cannot_run_commands_after_it() {
    let (env, key) = standard_env();
    let daemon = Daemon::start(&env);
    let control = format!("ControlPath={}", env.path("mux").display());
    let mux = |extra: &[&str], command: &str| {
        let mut options = vec!["-o", control.as_str()];
        options.extend_from_slice(extra);
        run(
            &mut ca_command_with(&daemon, &key.private, None, &options, command),
            Duration::from_secs(60),
        )
    };
    let first = mux(
        &["-o", "ControlMaster=yes", "-o", "ControlPersist=30"],
        "whoami",
    );
    assert!(first.status.success(), "{}", describe(&first));
    env.jitca_ok(&["user", "suspend", "alice"]);
    let out = mux(&["-o", "ControlMaster=no"], "whoami");
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    assert!(stderr(&out).contains("suspended"), "{}", describe(&out));
    let _ = mux(&["-O", "exit"], "whoami");
}

#[test]
fn a_device_past_its_request_allowance_is_refused_with_exit_6_and_audited_once() {
    let (env, key) = standard_env();
    let bob = env.keygen("bob_ed25519", KeyKind::Ed25519);
    env.enrol("bob", &["ops"], "bob-laptop", &bob);
    env.set_posture("bob-laptop", common::GOOD_POSTURE);
    let daemon = Daemon::start_with(&env, &["--max-requests-per-minute", "2"]);

    for _ in 0..2 {
        daemon.request_cert(&env, &key.private, "request shell");
    }
    let records_before = env.db_query_i64("SELECT COUNT(*) FROM audit");
    for _ in 0..3 {
        let out = ssh_ca(&daemon, &key.private, "request shell");
        assert_eq!(out.status.code(), Some(6), "{}", describe(&out));
        let text = stderr(&out);
        assert!(
            text.contains("too many requests from device alice-laptop")
                && text.contains("at most 2 a minute"),
            "{text}"
        );
        assert!(out.stdout.is_empty(), "no certificate: {}", describe(&out));
    }
    // Refusals are folded: one record for the three, and no decision.
    assert_eq!(
        env.db_query_i64("SELECT COUNT(*) FROM audit") - records_before,
        1
    );
    assert_eq!(
        env.db_query_i64(
            "SELECT COUNT(*) FROM audit WHERE kind = 'request-limited' AND device = 'alice-laptop'"
        ),
        1
    );
    assert_eq!(env.db_query_i64("SELECT COUNT(*) FROM certificates"), 2);
    // Other devices keep their own allowance, and commands that write no
    // decision are not counted.
    daemon.request_cert(&env, &bob.private, "request shell");
    let out = ssh_ca(&daemon, &key.private, "whoami");
    assert!(out.status.success(), "{}", describe(&out));
}

/// Kills the daemon a test started by hand when the test ends.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn serve_keeps_issuing_when_its_log_cannot_be_written() {
    // The daemon's log on a full disk: `/dev/full` refuses every write
    // with "no space left on device". A log line that cannot be written is
    // lost; it must not panic the thread or the session that logged it.
    let (env, key) = standard_env();
    let port = common::net::free_port();
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("open /dev/full");
    let mut daemon = Killed(
        env.jitca_command()
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(full)
            .spawn()
            .expect("start jitca serve"),
    );
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let up = common::net::wait_for_ssh_banner(addr, Duration::from_secs(30), || {
        daemon.0.try_wait().ok().flatten().map(|s| s.to_string())
    });
    assert!(up.is_ok(), "serve with a full log did not come up: {up:?}");
    let mut ssh = std::process::Command::new(common::SSH);
    ssh.arg("-i")
        .arg(&key.private)
        .args(common::daemon::client_options())
        .args(["-p", &port.to_string(), "-l", "requester", "127.0.0.1"])
        .arg("request shell");
    let out = run(&mut ssh, common::daemon::SSH_TIMEOUT);
    assert!(
        out.status.success() && common::stdout(&out).contains("-cert-v01@openssh.com "),
        "no certificate while the log could not be written\n{}",
        describe(&out)
    );
}
