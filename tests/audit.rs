//! The audit log: every decision recorded, and the hash chain that
//! `jitca audit verify` walks, which must notice a record changed or removed
//! behind its back.

mod common;

use common::daemon::{Daemon, ssh_ca};
use common::{Env, KeyPair, assert_exit, describe, names_audit_record, standard_env, stdout};

/// An environment whose audit log holds inventory changes, one issued and
/// one denied request (the daemon is stopped again, so the database is
/// quiet). Returns the seq of the `issued` record.
fn env_with_history() -> (Env, KeyPair, i64) {
    let (env, key) = standard_env();
    {
        let daemon = Daemon::start(&env);
        daemon.expect_cert(&ssh_ca(
            &daemon,
            &key.private,
            "request shell --reason INC-7",
        ));
        daemon.expect_refusal(&ssh_ca(&daemon, &key.private, "request shell --ttl 9h"), 3);
    }
    let issued = env.db_query_i64("SELECT min(seq) FROM audit WHERE kind = 'issued'");
    (env, key, issued)
}

#[test]
fn issued_and_denied_requests_are_audited() {
    let (env, _, _) = env_with_history();
    let records = env.audit_records();
    for kind in ["issued", "denied"] {
        assert!(
            records.iter().any(|r| {
                r.get("kind").and_then(|k| k.as_str()) == Some(kind)
                    && r.to_string().contains("alice-laptop")
                    && r.to_string().contains("shell")
            }),
            "no {kind} record for alice-laptop and role shell in {records:#?}"
        );
    }
}

#[test]
fn audit_verify_passes_after_a_run_counting_every_record() {
    let (env, _, _) = env_with_history();
    let count = env.db_query_i64("SELECT count(*) FROM audit");
    assert!(count >= 4, "only {count} audit records after a run");

    let out = env.jitca_ok(&["audit", "verify"]);
    assert!(
        out.contains(&format!("audit chain ok: {count} records")),
        "unexpected audit verify output:\n{out}"
    );
}

#[test]
fn audit_verify_names_the_record_whose_body_was_changed() {
    let (env, _, issued) = env_with_history();
    let last = env.db_query_i64("SELECT max(seq) FROM audit");
    assert!(
        issued < last,
        "the issued record should not be the last one"
    );

    // The table refuses updates; an intruder drops the trigger first, and
    // rewrites the (compressed) body to name someone else.
    let conn = rusqlite::Connection::open(&env.db).unwrap();
    let stored: Vec<u8> = conn
        .query_row("SELECT body FROM audit WHERE seq = ?1", [issued], |r| {
            r.get(0)
        })
        .unwrap();
    let text = jitca::audit::body::open(&stored).unwrap();
    assert!(
        text.contains("alice"),
        "the issued record's body does not name alice"
    );
    let forged = jitca::audit::Sealed::of(&text.replace("alice", "mallory"));
    conn.execute_batch("DROP TRIGGER audit_append_only_update;")
        .unwrap();
    conn.execute(
        "UPDATE audit SET body = ?1 WHERE seq = ?2",
        rusqlite::params![forged.stored, issued],
    )
    .unwrap();
    drop(conn);
    let out = env.jitca_exit(&["audit", "verify"], 1);
    let text = format!("{}{}", stdout(&out), common::stderr(&out));
    assert!(
        names_audit_record(&text, issued),
        "audit verify does not name audit record {issued}\n{}",
        describe(&out)
    );
}

#[test]
fn audit_verify_fails_when_a_record_is_deleted() {
    let (env, _, issued) = env_with_history();
    env.sqlite3(&format!(
        "DROP TRIGGER audit_append_only_delete; DELETE FROM audit WHERE seq = {issued};"
    ));
    assert_eq!(
        env.db_query_i64(&format!("SELECT count(*) FROM audit WHERE seq = {issued}")),
        0
    );

    let out = env.jitca(&["audit", "verify"]);
    assert_exit(&out, 1, "audit verify after a deletion");
    let text = format!("{}{}", stdout(&out), common::stderr(&out));
    assert!(text.contains("audit record"), "{}", describe(&out));
}

#[test]
fn audit_rows_refuse_plain_updates_and_deletes() {
    let (env, _, issued) = env_with_history();
    let conn = rusqlite::Connection::open(&env.db).unwrap();
    let update = conn.execute("UPDATE audit SET kind = 'x' WHERE seq = ?1", [issued]);
    let delete = conn.execute("DELETE FROM audit WHERE seq = ?1", [issued]);
    assert!(update.is_err() && delete.is_err(), "{update:?} {delete:?}");
    env.jitca_ok(&["audit", "verify"]);
}

#[test]
fn audit_show_prints_the_issued_record() {
    let (env, _, issued) = env_with_history();
    let out = env.jitca_ok(&["audit", "show", &issued.to_string()]);
    assert!(
        out.contains("issued") && out.contains("alice-laptop"),
        "audit show {issued}:\n{out}"
    );
}

#[test]
fn audit_list_into_a_reader_that_stops_early_ends_quietly() {
    // `jitca audit list | head`: once head has its lines and exits, the
    // next write fails with a broken pipe. That ended in a panic.
    let (env, _) = standard_env();
    let conn = rusqlite::Connection::open(&env.db).unwrap();
    conn.execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000)
         INSERT INTO audit (at, kind, user, body, prev_hash, hash)
         SELECT 1700000000 + i, 'denied', 'alice', '{\"i\":' || i || '}', '', '' FROM n",
        [],
    )
    .unwrap();
    drop(conn);
    for json in [false, true] {
        let mut cmd = env.jitca_command();
        cmd.args(["audit", "list"]);
        if json {
            cmd.arg("--json");
        }
        let mut child = cmd
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = String::new();
        {
            use std::io::BufRead;
            let mut lines = std::io::BufReader::new(child.stdout.take().unwrap());
            lines.read_line(&mut first).unwrap();
        } // the read end closes here, with thousands of lines unread
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!first.is_empty(), "no first line");
        assert!(out.status.success(), "exit {:?}: {stderr}", out.status);
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}
