//! Decisions that arrive at the same moment (issue 3): two `ssh` commands
//! started back to back, so the daemon handles them concurrently. Whatever
//! the interleaving, a request is decided once, the audit log agrees with
//! the outcome, and at most one certificate is stored for it.

mod common;

use std::process::Output;

use common::approvals::{
    Team, assert_audit_intact, certificates_for, count_kind, exit, pending_id, records_for,
};
use common::daemon::{Daemon, ssh_ca};
use common::describe;
use common::waiting::{WAIT_TIMEOUT, Waiting};

/// Runs two commands at once (KEY, COMMAND each) and returns both outputs.
fn at_once(
    daemon: &Daemon,
    a: (&std::path::Path, &str),
    b: (&std::path::Path, &str),
) -> [Output; 2] {
    let first = Waiting::spawn(daemon, a.0, a.1);
    let second = Waiting::spawn(daemon, b.0, b.1);
    [first.finish(WAIT_TIMEOUT), second.finish(WAIT_TIMEOUT)]
}

/// alice asks for ROLE; returns the pending request's id.
fn pending_request(team: &Team, daemon: &Daemon, role: &str) -> String {
    let out = ssh_ca(
        daemon,
        &team.alice.private,
        &format!("request {role} --reason INC-8"),
    );
    daemon.expect_refusal(&out, exit::PENDING);
    pending_id(&out)
}

#[test]
fn simultaneous_approvals_of_a_two_approval_request_approve_it_once() {
    let team = Team::new();
    let daemon = Daemon::start(&team.env);
    let id = pending_request(&team, &daemon, "db-two");

    let approve = format!("approve {id}");
    let outs = at_once(
        &daemon,
        (&team.bob.private, &approve),
        (&team.carol.private, &approve),
    );
    for out in &outs {
        assert_eq!(out.status.code(), Some(exit::OK), "{}", describe(out));
    }

    let records = records_for(&team.env, &id);
    assert_eq!(count_kind(&records, "approval"), 2, "{records:#?}");
    assert_eq!(count_kind(&records, "request-approved"), 1, "{records:#?}");
    let out = ssh_ca(&daemon, &team.alice.private, &format!("fetch {id}"));
    daemon.expect_cert(&out);
    assert_eq!(certificates_for(&team.env, &id), 1);
    assert_audit_intact(&team.env);
}

#[test]
fn simultaneous_approve_and_deny_end_in_one_consistent_state() {
    let team = Team::new();
    let daemon = Daemon::start(&team.env);
    let id = pending_request(&team, &daemon, "db");

    let [approved, denied] = at_once(
        &daemon,
        (&team.bob.private, &format!("approve {id}")),
        (
            &team.carol.private,
            &format!("deny {id} --reason 'not now'"),
        ),
    );
    for out in [&approved, &denied] {
        assert!(
            matches!(out.status.code(), Some(exit::OK | exit::DENIED)),
            "a decision racing another must succeed or be refused\n{}",
            describe(out)
        );
    }

    let records = records_for(&team.env, &id);
    let was_approved = count_kind(&records, "request-approved");
    let was_denied = count_kind(&records, "approval-denied");
    assert_eq!(
        was_approved + was_denied,
        1,
        "exactly one of request-approved / approval-denied must be audited: {records:#?}"
    );

    let out = ssh_ca(&daemon, &team.alice.private, &format!("fetch {id}"));
    if was_approved == 1 {
        daemon.expect_cert(&out);
        assert_eq!(certificates_for(&team.env, &id), 1);
    } else {
        daemon.expect_refusal(&out, exit::DENIED);
        assert_eq!(certificates_for(&team.env, &id), 0);
    }
    assert_audit_intact(&team.env);
}

#[test]
fn simultaneous_fetches_store_at_most_one_certificate() {
    let team = Team::new();
    let daemon = Daemon::start(&team.env);
    let id = pending_request(&team, &daemon, "db");
    let out = ssh_ca(&daemon, &team.bob.private, &format!("approve {id}"));
    assert_eq!(out.status.code(), Some(exit::OK), "{}", describe(&out));

    let fetch = format!("fetch {id}");
    let outs = at_once(
        &daemon,
        (&team.alice.private, &fetch),
        (&team.alice.private, &fetch),
    );
    let serials: Vec<u64> = outs
        .iter()
        .filter(|out| out.status.success())
        .map(|out| daemon.save_cert(&team.env, out).1.serial)
        .collect();
    assert!(
        !serials.is_empty(),
        "neither fetch of an approved request got a certificate\n{}\n{}",
        describe(&outs[0]),
        describe(&outs[1])
    );
    assert!(
        serials.iter().all(|s| *s == serials[0]),
        "two certificates for one request: serials {serials:?}"
    );
    for out in outs.iter().filter(|out| !out.status.success()) {
        assert!(out.stdout.is_empty(), "{}", describe(out));
    }

    assert_eq!(certificates_for(&team.env, &id), 1);
    let records = records_for(&team.env, &id);
    assert_eq!(count_kind(&records, "issued"), 1, "{records:#?}");
    assert_audit_intact(&team.env);
}
