//! Regression tests for what a connection may leave running after its
//! client has gone: each is named for what it checks, and each drives the
//! real daemon with the real `ssh` client.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::approvals::Team;
use common::daemon::{Daemon, ca_command_with};
use common::{describe, run};

/// What the daemon logs when a waiting requester is found gone.
const WENT_AWAY: &str = "the waiting client went away";

#[test]
fn a_wait_ends_when_its_channel_closes_on_a_connection_that_stays_open() {
    let team = Team::new();
    let daemon = Daemon::start(&team.env);
    let key = &team.alice.private;
    let control = format!("ControlPath={}", team.env.path("mux").display());
    let options = |extra: &[&str]| {
        let mut all = vec!["-o".to_string(), control.clone()];
        all.extend(extra.iter().map(|s| s.to_string()));
        all
    };
    // A master connection that outlives the commands run over it, as with
    // a requester's ControlMaster.
    let master = options(&["-o", "ControlMaster=yes", "-o", "ControlPersist=60"]);
    let master: Vec<&str> = master.iter().map(String::as_str).collect();
    let first = run(
        &mut ca_command_with(&daemon, key, None, &master, "whoami"),
        Duration::from_secs(60),
    );
    assert!(first.status.success(), "{}", describe(&first));

    let client = options(&["-o", "ControlMaster=no"]);
    let client: Vec<&str> = client.iter().map(String::as_str).collect();
    let mut waiting = ca_command_with(&daemon, key, None, &client, "request db --wait")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start ssh");
    // Until the request is pending and its requester waits on it.
    let deadline = Instant::now() + Duration::from_secs(20);
    while team.env.db_query_i64("SELECT count(*) FROM requests") == 0 {
        assert!(Instant::now() < deadline, "no request was made");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));
    assert!(!daemon.log_text().contains(WENT_AWAY));

    // The requester gives up: its channel closes, the connection stays.
    let _ = waiting.kill();
    let _ = waiting.wait();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !daemon.log_text().contains(WENT_AWAY) {
        assert!(
            Instant::now() < deadline,
            "the daemon still waits for a client whose channel closed\n{}",
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = run(
        &mut ca_command_with(&daemon, key, None, &client_exit(&control), "whoami"),
        Duration::from_secs(30),
    );
}

/// The options that tell the master connection to exit.
fn client_exit(control: &str) -> [&str; 4] {
    ["-o", control, "-O", "exit"]
}
