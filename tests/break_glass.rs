//! Break-glass roles (issue 3): no approver to wait for, but never without a
//! stated reason, and every issuance flagged in the audit log so that it can
//! be reviewed afterwards with `jitca audit list --break-glass`.

mod common;

use std::time::{Duration, Instant};

use common::approvals::{Team, assert_audit_intact, exit};
use common::daemon::{Daemon, ssh_ca};
use common::describe;

/// A break-glass request is one connection, not a wait for anyone.
const AT_ONCE: Duration = Duration::from_secs(6);

#[test]
fn break_glass_request_without_a_reason_is_refused_naming_the_reason_rule() {
    let team = Team::new();
    let daemon = Daemon::start(&team.env);

    let out = ssh_ca(&daemon, &team.alice.private, "request glass");
    let err = daemon.expect_refusal(&out, exit::DENIED);
    assert!(
        err.to_lowercase().contains("reason"),
        "the refusal does not name the reason rule\n{}",
        describe(&out)
    );
    assert!(
        team.env.audit_records_where(&["--break-glass"]).is_empty(),
        "a refused break-glass request is listed as a break-glass issuance"
    );
}

#[test]
fn break_glass_request_with_a_reason_is_issued_at_once_and_flagged_in_the_audit() {
    let team = Team::new();
    let daemon = Daemon::start(&team.env);
    // Something else in the log that the filter must leave out.
    daemon.expect_refusal(
        &ssh_ca(&daemon, &team.alice.private, "request glass"),
        exit::DENIED,
    );

    let started = Instant::now();
    let out = ssh_ca(
        &daemon,
        &team.alice.private,
        "request glass --reason 'INC-9: primary down'",
    );
    let took = started.elapsed();
    let (_, cert) = daemon.save_cert(&team.env, &out);
    assert!(took < AT_ONCE, "break-glass issuance took {took:?}");

    let listed = team.env.audit_records_where(&["--break-glass"]);
    assert_eq!(listed.len(), 1, "{listed:#?}");
    let record = &listed[0];
    assert_eq!(record["kind"], "issued", "{record:#?}");
    assert_eq!(record["role"], "glass", "{record:#?}");
    assert_eq!(record["user"], "alice", "{record:#?}");
    assert_eq!(record["body"]["break_glass"], true, "{record:#?}");
    assert!(
        record.to_string().contains(&cert.serial.to_string()),
        "the flagged record does not name serial {}: {record:#}",
        cert.serial
    );
    assert!(
        record.to_string().contains("INC-9: primary down"),
        "the flagged record does not keep the reason: {record:#}"
    );
    assert_audit_intact(&team.env);
}
