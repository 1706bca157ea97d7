//! The approval workflow over real `ssh` (issue 3): a request for an
//! approval role waits, approvers from the role's groups decide it from
//! devices that pass the approver posture, the requester collects the
//! certificate, and denial, expiry and a posture change end it without one.
//! A fetch after the certificate expired sends nothing, and a waiter is told
//! each approver once however their approvals sort.
//!
//! Users (see `common::approvals::Team`): alice requests (group `dba`), bob
//! and carol approve (`dba-leads`), dave belongs to neither.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use common::approvals::{
    APPROVAL_POLICY, Team, all_text, assert_audit_intact, certificates_for, count_kind, exit,
    pending_id, policy_with_notify, records_for, request_ids, write_script,
};
use common::daemon::{Daemon, SSH_TIMEOUT, ca_command_with, ssh_ca};
use common::sshd::Sshd;
use common::waiting::{WAIT_TIMEOUT, Waiting};
use common::{Env, assert_success, current_user, describe, now_unix, run, stderr};

/// Fails unless OUT exited with CODE and TEXT (stdout and stderr) holds every
/// one of WORDS.
fn assert_reply(out: &Output, code: i32, words: &[&str], what: &str) {
    let text = all_text(out);
    assert!(
        out.status.code() == Some(code) && words.iter().all(|w| text.contains(w)),
        "{what}: expected exit {code} and a reply holding {words:?}\n{}",
        describe(out)
    );
}

/// Starts `request ROLE --wait` as alice in the background and waits until
/// the CA has named the pending request on stderr; returns it and the id.
fn waiting_request(team: &Team, daemon: &Daemon, command: &str) -> (Waiting, String) {
    let mut waiter = Waiting::spawn(daemon, &team.alice.private, command);
    let text = waiter.wait_for_stderr("the pending request's id", Duration::from_secs(20), |s| {
        !request_ids(s).is_empty()
    });
    let id = request_ids(&text)[0].clone();
    (waiter, id)
}

#[test]
fn approval_test_policies_pass_policy_check() {
    let env = Env::with_policy(APPROVAL_POLICY);
    let policy = env.policy.to_string_lossy().into_owned();
    env.jitca_ok(&["policy", "check", &policy]);

    let script = write_script(&env, "notify.sh", "cat > /dev/null");
    let with_notify = env.write("notify-policy.toml", policy_with_notify(&script));
    env.jitca_ok(&["policy", "check", &with_notify.to_string_lossy()]);

    let brief = Env::with_policy(&format!("{APPROVAL_POLICY}{BRIEF_ROLE}"));
    brief.jitca_ok(&["policy", "check", &brief.policy.to_string_lossy()]);
}

#[test]
fn request_ids_are_found_only_standing_alone() {
    let text = "pending: request r-abcdefgh23 for role db\nwait: fetch r-abcdefgh23 --wait\n";
    assert_eq!(request_ids(text), ["r-abcdefgh23"]);
    assert_eq!(request_ids("(r-aaaaaaaaaa)"), ["r-aaaaaaaaaa"]);
    for not_an_id in [
        "r-abcdefgh2",
        "r-abcdefgh234",
        "xr-abcdefgh23",
        "r-abcdefgh18",
    ] {
        assert!(request_ids(not_an_id).is_empty(), "{not_an_id}");
    }
}

#[test]
fn approval_role_request_is_pending_with_its_id_on_stderr_and_listed_for_approvers() {
    let team = Team::new();
    let daemon = Daemon::start(&team.env);

    let out = ssh_ca(&daemon, &team.alice.private, "request db --reason INC-1");
    let err = daemon.expect_refusal(&out, exit::PENDING);
    let id = pending_id(&out);
    for word in ["pending", "role db", "dba-leads", "bob", "carol"] {
        assert!(
            err.contains(word),
            "the pending reply does not name {word:?}:\n{err}"
        );
    }

    let out = ssh_ca(&daemon, &team.bob.private, "pending");
    assert_reply(&out, exit::OK, &[&id, "alice", "db"], "bob's pending list");

    let out = ssh_ca(&daemon, &team.alice.private, &format!("fetch {id}"));
    daemon.expect_refusal(&out, exit::PENDING);

    let records = records_for(&team.env, &id);
    assert_eq!(count_kind(&records, "request-pending"), 1, "{records:#?}");
    assert_eq!(count_kind(&records, "issued"), 0, "{records:#?}");
    assert_audit_intact(&team.env);
}

#[test]
fn waiting_request_receives_a_certificate_once_approved_that_logs_in_to_sshd() {
    let team = Team::new();
    let daemon = Daemon::start(&team.env);
    let sshd = Sshd::start(&team.env, &team.env.trusted_ca_file(), &[]);

    let (waiter, id) = waiting_request(&team, &daemon, "request db --reason INC-2 --wait");
    let out = ssh_ca(&daemon, &team.bob.private, &format!("approve {id}"));
    assert_reply(&out, exit::OK, &[&id], "bob's approval");

    let out = waiter.finish(WAIT_TIMEOUT);
    let (cert_path, cert) = daemon.save_cert(&team.env, &out);
    let login = sshd.login(&team.alice.private, &cert_path, current_user(), "id -un");
    sshd.expect_login(&login, current_user());
    assert!(
        cert.key_id.contains("alice") && cert.key_id.contains(&cert.serial.to_string()),
        "key id {:?} does not name alice and serial {}",
        cert.key_id,
        cert.serial
    );

    assert_eq!(certificates_for(&team.env, &id), 1);
    let records = records_for(&team.env, &id);
    for kind in ["request-pending", "approval", "request-approved", "issued"] {
        assert_eq!(count_kind(&records, kind), 1, "{kind} in {records:#?}");
    }
    assert_audit_intact(&team.env);
}

#[test]
fn approval_is_refused_for_the_requester_an_outsider_and_an_approver_on_a_failing_device() {
    // alice is an approver too here, so that only "own request" stops her.
    let team = Team::in_env(Env::with_policy(APPROVAL_POLICY), &["dba", "dba-leads"]);
    team.env
        .set_posture("carol-laptop", &["disk_encrypted=false", "os_family=linux"]);
    let daemon = Daemon::start(&team.env);

    let out = ssh_ca(&daemon, &team.alice.private, "request db --reason INC-3");
    daemon.expect_refusal(&out, exit::PENDING);
    let id = pending_id(&out);

    let out = ssh_ca(&daemon, &team.alice.private, &format!("approve {id}"));
    assert_reply(
        &out,
        exit::DENIED,
        &["own request"],
        "alice approving her own request",
    );
    let out = ssh_ca(&daemon, &team.dave.private, &format!("approve {id}"));
    assert_reply(
        &out,
        exit::DENIED,
        &["not in any approver group", "dba-leads"],
        "dave approving without an approver group",
    );
    let out = ssh_ca(&daemon, &team.carol.private, &format!("approve {id}"));
    assert_reply(
        &out,
        exit::DENIED,
        &["disk_encrypted", "false"],
        "carol approving from an unencrypted device",
    );

    // Her own request is not hers to decide, so it is not in her list.
    let out = ssh_ca(&daemon, &team.alice.private, "pending");
    assert!(
        out.status.success() && !all_text(&out).contains(&id),
        "alice's pending list shows her own request\n{}",
        describe(&out)
    );
    // Someone else's request is as good as unknown.
    let out = ssh_ca(&daemon, &team.dave.private, &format!("fetch {id}"));
    daemon.expect_refusal(&out, exit::USAGE);

    let out = ssh_ca(&daemon, &team.alice.private, &format!("fetch {id}"));
    daemon.expect_refusal(&out, exit::PENDING);
    let approvals = team.env.db_query_i64(&format!(
        "SELECT COUNT(*) FROM approvals WHERE request_id = '{id}'"
    ));
    assert_eq!(approvals, 0, "a refused approval was stored");
    let records = records_for(&team.env, &id);
    assert_eq!(count_kind(&records, "approval"), 0, "{records:#?}");
    assert_audit_intact(&team.env);
}

#[test]
fn two_approvals_are_needed_and_a_repeated_approval_counts_once() {
    let team = Team::new();
    let daemon = Daemon::start(&team.env);
    let fetch = |id: &str| ssh_ca(&daemon, &team.alice.private, &format!("fetch {id}"));

    let out = ssh_ca(
        &daemon,
        &team.alice.private,
        "request db-two --reason INC-4",
    );
    daemon.expect_refusal(&out, exit::PENDING);
    let id = pending_id(&out);

    let out = ssh_ca(&daemon, &team.bob.private, &format!("approve {id}"));
    assert_reply(&out, exit::OK, &["1 of 2"], "bob's first approval");
    daemon.expect_refusal(&fetch(&id), exit::PENDING);

    let out = ssh_ca(&daemon, &team.bob.private, &format!("approve {id}"));
    assert_reply(&out, exit::OK, &["counts once"], "bob's second approval");
    daemon.expect_refusal(&fetch(&id), exit::PENDING);

    let out = ssh_ca(&daemon, &team.carol.private, &format!("approve {id}"));
    assert_reply(&out, exit::OK, &[&id], "carol's approval");
    let (_, first) = daemon.save_cert(&team.env, &fetch(&id));
    let (_, again) = daemon.save_cert(&team.env, &fetch(&id));
    assert_eq!(
        first.serial, again.serial,
        "fetching an issued request again must return the same certificate"
    );

    assert_eq!(certificates_for(&team.env, &id), 1);
    let records = records_for(&team.env, &id);
    assert_eq!(count_kind(&records, "approval"), 2, "{records:#?}");
    assert_eq!(count_kind(&records, "request-approved"), 1, "{records:#?}");
    assert_eq!(count_kind(&records, "issued"), 1, "{records:#?}");
    assert_audit_intact(&team.env);
}

#[test]
fn denial_ends_a_waiting_request_with_the_approvers_reason() {
    let team = Team::new();
    let daemon = Daemon::start(&team.env);
    let reason = "change freeze until friday";

    let (waiter, id) = waiting_request(&team, &daemon, "request db --reason INC-5 --wait");
    let out = ssh_ca(
        &daemon,
        &team.bob.private,
        &format!("deny {id} --reason '{reason}'"),
    );
    assert_reply(&out, exit::OK, &[], "bob's denial");

    let out = waiter.finish(WAIT_TIMEOUT);
    let err = daemon.expect_refusal(&out, exit::DENIED);
    assert!(
        err.contains("denied by bob") && err.contains(reason),
        "the waiting requester is not told bob's reason:\n{err}"
    );

    let out = ssh_ca(&daemon, &team.alice.private, &format!("fetch {id}"));
    daemon.expect_refusal(&out, exit::DENIED);
    let out = ssh_ca(&daemon, &team.carol.private, &format!("approve {id}"));
    assert_reply(&out, exit::DENIED, &[], "approving a denied request");

    assert_eq!(certificates_for(&team.env, &id), 0);
    let records = records_for(&team.env, &id);
    assert_eq!(count_kind(&records, "approval-denied"), 1, "{records:#?}");
    assert_eq!(count_kind(&records, "request-approved"), 0, "{records:#?}");
    assert_audit_intact(&team.env);
}

#[test]
fn undecided_request_expires_and_cannot_be_approved_afterwards() {
    let team = Team::new();
    let daemon = Daemon::start(&team.env);

    let started = Instant::now();
    let (waiter, id) = waiting_request(&team, &daemon, "request db-quick --reason INC-6 --wait");
    let out = waiter.finish(WAIT_TIMEOUT);
    let err = daemon.expect_refusal(&out, exit::EXPIRED);
    assert!(err.contains("expired"), "{}", describe(&out));
    // Deadlines are whole unix seconds, so expiry may come up to 1 s early.
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "the request expired after {:?}, well before its 3 s timeout",
        started.elapsed()
    );

    let out = ssh_ca(&daemon, &team.alice.private, &format!("fetch {id}"));
    daemon.expect_refusal(&out, exit::EXPIRED);
    let out = ssh_ca(&daemon, &team.bob.private, &format!("approve {id}"));
    assert_reply(&out, exit::EXPIRED, &[], "approving an expired request");

    assert_eq!(certificates_for(&team.env, &id), 0);
    let records = records_for(&team.env, &id);
    assert_eq!(count_kind(&records, "request-expired"), 1, "{records:#?}");
    assert_eq!(count_kind(&records, "approval"), 0, "{records:#?}");
    assert_audit_intact(&team.env);
}

#[test]
fn posture_failing_between_approval_and_fetch_yields_no_certificate() {
    let team = Team::new();
    let daemon = Daemon::start(&team.env);

    let out = ssh_ca(&daemon, &team.alice.private, "request db --reason INC-7");
    daemon.expect_refusal(&out, exit::PENDING);
    let id = pending_id(&out);
    let out = ssh_ca(&daemon, &team.bob.private, &format!("approve {id}"));
    assert_reply(&out, exit::OK, &[&id], "bob's approval");

    team.env
        .set_posture("alice-laptop", &["disk_encrypted=false", "os_family=linux"]);
    let out = ssh_ca(&daemon, &team.alice.private, &format!("fetch {id}"));
    daemon.expect_refusal(&out, exit::DENIED);
    assert!(
        stderr(&out).contains("disk_encrypted"),
        "the refused fetch does not name the failed rule\n{}",
        describe(&out)
    );

    assert_eq!(certificates_for(&team.env, &id), 0);
    let records = records_for(&team.env, &id);
    assert_eq!(count_kind(&records, "denied"), 1, "{records:#?}");
    assert_eq!(count_kind(&records, "issued"), 0, "{records:#?}");
    assert_audit_intact(&team.env);
}

/// A role like `db` whose certificates last 2 s: the shortest ttl that
/// still leaves a whole second between an approval and the fetch it opens
/// (the fetch window of an approved request is its ttl).
const BRIEF_ROLE: &str = r#"
[role.db-brief]
groups = ["dba"]
principals = ["@ME@"]
ttl = "2s"
posture = "laptop"
approval = { count = 1, approvers = ["dba-leads"], timeout = "10m" }
"#;

#[test]
fn fetch_of_an_issued_request_whose_certificate_expired_exits_5_without_a_certificate() {
    let env = Env::with_policy(&format!("{APPROVAL_POLICY}{BRIEF_ROLE}"));
    let team = Team::in_env(env, &["dba"]);
    let daemon = Daemon::start(&team.env);

    // Waiting, the requester is issued the certificate inside the CA as
    // soon as bob approves, well within the 2 s fetch window.
    let (waiter, id) = waiting_request(&team, &daemon, "request db-brief --reason INC-11 --wait");
    let out = ssh_ca(&daemon, &team.bob.private, &format!("approve {id}"));
    assert_reply(&out, exit::OK, &[&id], "bob's approval");
    let (_, cert) = daemon.save_cert(&team.env, &waiter.finish(WAIT_TIMEOUT));
    assert!(
        cert.valid_to - now_unix() <= 2,
        "the certificate is valid until {}, beyond the role's 2 s ttl",
        cert.valid_to
    );

    // Real expiry, not an edited row: valid_before is the first second in
    // which a certificate is no longer valid (PROTOCOL.certkeys).
    while now_unix() < cert.valid_to {
        std::thread::sleep(Duration::from_millis(100));
    }
    for command in [format!("fetch {id}"), format!("fetch {id} --wait")] {
        let out = ssh_ca(&daemon, &team.alice.private, &command);
        let err = daemon.expect_refusal(&out, exit::EXPIRED);
        let said = format!("the certificate of request {id} has expired; make a new request");
        assert!(
            err.contains(&said) && !err.contains("-cert-v01@openssh.com"),
            "`{command}` after expiry must say {said:?} and send no certificate\n{}",
            describe(&out)
        );
    }

    assert_eq!(certificates_for(&team.env, &id), 1);
    let records = records_for(&team.env, &id);
    assert_eq!(count_kind(&records, "issued"), 1, "{records:#?}");
    assert_audit_intact(&team.env);
}

/// An `ssh` connection to the CA kept open as OpenSSH's control master, so
/// that each command sent over it skips the key exchange and takes a few
/// milliseconds; the master is told to exit on drop.
struct Mux<'a> {
    daemon: &'a Daemon,
    key: PathBuf,
    control: String,
}

impl<'a> Mux<'a> {
    /// Opens the master connection with KEY; its socket is NAME in ENV.
    fn open(env: &Env, daemon: &'a Daemon, key: &Path, name: &str) -> Mux<'a> {
        let mux = Mux {
            daemon,
            key: key.to_path_buf(),
            control: format!("ControlPath={}", env.path(name).display()),
        };
        let out = mux.ssh(
            &["-o", "ControlMaster=yes", "-o", "ControlPersist=120"],
            "whoami",
        );
        assert_success(&out, "opening an ssh control master to the CA");
        mux
    }

    fn ssh(&self, options: &[&str], command: &str) -> Output {
        let mut all = vec!["-o", self.control.as_str()];
        all.extend_from_slice(options);
        run(
            &mut ca_command_with(self.daemon, &self.key, None, &all, command),
            SSH_TIMEOUT,
        )
    }

    /// Runs COMMAND over the open connection.
    fn run(&self, command: &str) -> Output {
        self.ssh(&["-o", "ControlMaster=no"], command)
    }
}

impl Drop for Mux<'_> {
    fn drop(&mut self) {
        // Not through `run`, which panics on a timeout: a panic in drop
        // while a failing test unwinds would hide its message.
        let options = ["-o", self.control.as_str(), "-O", "exit"];
        let _ = ca_command_with(self.daemon, &self.key, None, &options, "whoami")
            .stdin(std::process::Stdio::null())
            .output();
    }
}

/// Sleeps until just after the next whole unix second.
fn sleep_to_the_start_of_a_second() {
    let into = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_millis())
        .unwrap_or(0);
    std::thread::sleep(Duration::from_millis(u64::from(1010 - into)));
}

/// One round of the test below: alice waits for a `db-two` request, carol
/// approves, and once alice has been told, bob approves. Fails unless the
/// waiter names each approver once and gets a certificate; returns whether
/// both approvals were stored with the same second.
fn two_quick_approvals(team: &Team, daemon: &Daemon, bob: &Mux, carol: &Mux) -> bool {
    let (mut waiter, id) = waiting_request(team, daemon, "request db-two --reason INC-12 --wait");
    let approve = format!("approve {id}");
    sleep_to_the_start_of_a_second();
    let out = carol.run(&approve);
    assert_reply(&out, exit::OK, &["1 of 2"], "carol's approval");
    waiter.wait_for_stderr("carol named as approver", WAIT_TIMEOUT, |s| {
        s.contains("approved by carol")
    });
    let out = bob.run(&approve);
    assert_reply(&out, exit::OK, &["now approved"], "bob's approval");

    let out = waiter.finish(WAIT_TIMEOUT);
    daemon.expect_cert(&out);
    let err = stderr(&out);
    let told: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("approved by"))
        .collect();
    assert_eq!(
        told,
        ["approved by carol (1 of 2)", "approved by bob (2 of 2)"],
        "the waiter must name each approver once, in the order they approved\n{}",
        describe(&out)
    );
    let seconds = team.env.db_query_i64(&format!(
        "SELECT COUNT(DISTINCT at) FROM approvals WHERE request_id = '{id}'"
    ));
    seconds == 1
}

/// Approvals are listed by second, then by approver name, so bob's approval
/// in the second of carol's sorts before hers: a waiter counting lines by
/// position would name carol twice and bob never.
#[test]
fn waiter_names_both_approvers_once_each_when_they_approve_in_the_same_second() {
    let team = Team::new();
    let daemon = Daemon::start(&team.env);
    let bob = Mux::open(&team.env, &daemon, &team.bob.private, "bob.mux");
    let carol = Mux::open(&team.env, &daemon, &team.carol.private, "carol.mux");

    // Each round checks the progress lines; only a round whose approvals
    // share a second exercises the ordering, so repeat until one does.
    let rounds = 5;
    let same_second = (0..rounds).any(|_| two_quick_approvals(&team, &daemon, &bob, &carol));
    assert!(
        same_second,
        "in {rounds} rounds the two approvals never landed in one second, so the case this test is for was not reached"
    );
    assert_audit_intact(&team.env);
}

#[test]
fn pending_reply_names_as_able_to_approve_only_approvers_whose_device_passes_the_approver_posture()
{
    let team = Team::new();
    // carol is in dba-leads, but her only device fails `approver-laptop`.
    team.env
        .set_posture("carol-laptop", &["disk_encrypted=false", "os_family=linux"]);
    let daemon = Daemon::start(&team.env);

    let out = ssh_ca(&daemon, &team.alice.private, "request db --reason INC-1");
    let err = daemon.expect_refusal(&out, exit::PENDING);
    let line = err
        .lines()
        .find(|l| l.starts_with("pending: can approve:"))
        .unwrap_or_else(|| panic!("no can-approve line:\n{err}"));
    assert_eq!(
        line,
        "pending: can approve: bob; not now (no device passing the approver rules): carol"
    );

    // And when nobody's device passes, nobody is named as able.
    team.env
        .set_posture("bob-laptop", &["disk_encrypted=false", "os_family=linux"]);
    let out = ssh_ca(&daemon, &team.alice.private, "request db --reason INC-2");
    let err = daemon.expect_refusal(&out, exit::PENDING);
    assert!(
        err.contains(
            "pending: can approve: nobody now (no device passing the approver rules): bob, carol"
        ),
        "{err}"
    );
}
