//! Proves the background-requester helper (`common::waiting`) against what
//! the daemon already does without approvals: output gathered while the
//! command runs, the full output and exit status collected at the end, and
//! a command that outlives its timeout killed with a clear failure.

mod common;

use std::time::{Duration, Instant};

use common::daemon::Daemon;
use common::standard_env;
use common::waiting::{WAIT_TIMEOUT, Waiting};

#[test]
fn waiting_collects_a_certificate_and_exit_status_at_the_end() {
    let (env, key) = standard_env();
    let daemon = Daemon::start(&env);

    let waiter = Waiting::spawn(&daemon, &key.private, "request shell");
    let out = waiter.finish(WAIT_TIMEOUT);
    daemon.save_cert(&env, &out);
}

#[test]
fn waiting_sees_stderr_as_it_arrives_and_keeps_it_in_the_output() {
    let (env, key) = standard_env();
    let daemon = Daemon::start(&env);

    let mut waiter = Waiting::spawn(&daemon, &key.private, "request shell --ttl 2h");
    let seen = waiter.wait_for_stderr("a denial", Duration::from_secs(20), |s| {
        s.contains("denied:")
    });
    assert!(seen.contains("ttl"), "{seen}");
    let out = waiter.finish(WAIT_TIMEOUT);
    let err = daemon.expect_refusal(&out, 3);
    assert!(
        err.contains(&seen),
        "final stderr lost what was seen:\n{err}"
    );
}

#[test]
fn waiting_past_its_timeout_fails_quickly_and_kills_the_command() {
    let (env, key) = standard_env();
    let daemon = Daemon::start(&env);

    let started = Instant::now();
    let waiter = Waiting::spawn(&daemon, &key.private, "request shell");
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        waiter.finish(Duration::from_millis(1))
    }));
    assert!(result.is_err(), "finish did not fail past its timeout");
    assert!(started.elapsed() < Duration::from_secs(10));
}
