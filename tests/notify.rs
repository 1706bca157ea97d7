//! The notifier (issue 3): the program named by the policy's `notify` gets
//! one JSON event on stdin for each step of the approval workflow, and
//! however it behaves (hanging, failing) it never holds up a request.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::approvals::{
    Team, assert_audit_intact, exit, json_values, pending_id, policy_with_notify, write_script,
};
use common::daemon::{Daemon, ssh_ca};
use common::{Env, describe, now_unix};

/// How long events may take to reach the notifier's file.
const DELIVERY: Duration = Duration::from_secs(15);
/// Well under the notifier's 10 s limit: a request that waited for the
/// notifier would take longer than this.
const NOT_DELAYED: Duration = Duration::from_secs(6);

/// A team whose policy runs a notifier script with BODY.
fn team_with_notifier(body: &str) -> Team {
    let env = Env::new();
    let script = write_script(&env, "notify.sh", body);
    env.write_policy(&policy_with_notify(&script));
    Team::in_env(env, &["dba"])
}

/// alice asks for ROLE (an approval role); returns the pending id.
fn pending_request(team: &Team, daemon: &Daemon, role: &str) -> String {
    let out = ssh_ca(
        daemon,
        &team.alice.private,
        &format!("request {role} --reason INC-10"),
    );
    daemon.expect_refusal(&out, exit::PENDING);
    pending_id(&out)
}

/// The events in FILE with this `event` name and (if given) request id.
fn matching<'a>(
    events: &'a [serde_json::Value],
    event: &str,
    id: Option<&str>,
) -> Vec<&'a serde_json::Value> {
    events
        .iter()
        .filter(|e| e["event"] == event && id.is_none_or(|id| e["request_id"] == id))
        .collect()
}

/// Waits until FILE holds an event for each of WANTED; returns all events.
fn await_events(file: &Path, wanted: &[(&str, Option<&str>)]) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + DELIVERY;
    loop {
        let events = json_values(file);
        if wanted
            .iter()
            .all(|(event, id)| !matching(&events, event, *id).is_empty())
        {
            return events;
        }
        assert!(
            Instant::now() < deadline,
            "after {DELIVERY:?} the notifier has not had all of {wanted:?}; it got {events:#?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn notifier_gets_one_json_event_per_step_with_the_right_name() {
    let env = Env::new();
    let file = env.path("events.json");
    let script = write_script(&env, "notify.sh", &format!("cat >> '{}'", file.display()));
    env.write_policy(&policy_with_notify(&script));
    let team = Team::in_env(env, &["dba"]);
    let daemon = Daemon::start(&team.env);
    let started = now_unix();

    // First, so that its 3 s run out while the others are decided.
    let quick = pending_request(&team, &daemon, "db-quick");
    let quick_made = Instant::now();

    let approved = pending_request(&team, &daemon, "db");
    let out = ssh_ca(&daemon, &team.bob.private, &format!("approve {approved}"));
    assert_eq!(out.status.code(), Some(exit::OK), "{}", describe(&out));

    let denied = pending_request(&team, &daemon, "db");
    let out = ssh_ca(
        &daemon,
        &team.bob.private,
        &format!("deny {denied} --reason 'not today'"),
    );
    assert_eq!(out.status.code(), Some(exit::OK), "{}", describe(&out));

    let out = ssh_ca(
        &daemon,
        &team.alice.private,
        "request glass --reason INC-11",
    );
    daemon.expect_cert(&out);

    // 3 s, and 1 s more for deadlines kept in whole seconds, and a margin.
    let left = Duration::from_secs(5).saturating_sub(quick_made.elapsed());
    std::thread::sleep(left);
    let out = ssh_ca(&daemon, &team.alice.private, &format!("fetch {quick}"));
    daemon.expect_refusal(&out, exit::EXPIRED);

    let wanted = [
        ("pending", Some(quick.as_str())),
        ("pending", Some(approved.as_str())),
        ("pending", Some(denied.as_str())),
        ("approved", Some(approved.as_str())),
        ("denied", Some(denied.as_str())),
        ("expired", Some(quick.as_str())),
        ("break-glass", None),
    ];
    let events = await_events(&file, &wanted);
    for (event, id) in wanted {
        let found = matching(&events, event, id);
        assert_eq!(
            found.len(),
            1,
            "{event} {id:?} not exactly once: {events:#?}"
        );
        let e = found[0];
        if matches!(event, "approved" | "denied") {
            // `user` may name the approver here; the requester must be named somewhere.
            assert!(
                e.to_string().contains("alice"),
                "{event} names no requester: {e:#}"
            );
        } else {
            assert_eq!(e["user"], "alice", "{e:#}");
            assert_eq!(e["device"], "alice-laptop", "{e:#}");
        }
        let at = e["at"].as_i64().unwrap_or(0);
        assert!(
            (started - 5..=now_unix() + 5).contains(&at),
            "event time {at} is not during the test: {e:#}"
        );
    }
    for (event, id, role) in [
        ("pending", Some(quick.as_str()), "db-quick"),
        ("approved", Some(approved.as_str()), "db"),
        ("break-glass", None, "glass"),
    ] {
        assert_eq!(matching(&events, event, id)[0]["role"], role, "{events:#?}");
    }
    assert_audit_intact(&team.env);
}

/// Requests go through at full speed while the notifier misbehaves.
fn requests_are_not_delayed_by_a_notifier(body: &str) {
    let team = team_with_notifier(body);
    let daemon = Daemon::start(&team.env);

    for command in [
        "request glass --reason INC-12",
        "request db --reason INC-13",
        "request glass --reason INC-14",
    ] {
        let started = Instant::now();
        let out = ssh_ca(&daemon, &team.alice.private, command);
        let took = started.elapsed();
        if command.starts_with("request glass") {
            daemon.expect_cert(&out);
        } else {
            daemon.expect_refusal(&out, exit::PENDING);
        }
        assert!(
            took < NOT_DELAYED,
            "`{command}` took {took:?} with notifier {body:?}\n{}",
            daemon.log_text()
        );
    }
    assert_audit_intact(&team.env);
}

#[test]
fn hanging_notifier_does_not_delay_issuance() {
    requests_are_not_delayed_by_a_notifier("exec sleep 60");
}

#[test]
fn failing_notifier_does_not_delay_or_stop_issuance() {
    requests_are_not_delayed_by_a_notifier("cat > /dev/null\nexit 1");
}
