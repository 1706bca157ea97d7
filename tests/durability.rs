//! No audit record, no certificate: when the transaction that would hold a
//! certificate's audit record cannot be written, no certificate leaves.

mod common;

use common::daemon::{Daemon, ssh_ca};
use common::{describe, standard_env, stderr, stdout};

#[test]
fn no_certificate_leaves_when_its_audit_record_cannot_be_written() {
    let (env, key) = standard_env();
    let daemon = Daemon::start(&env);
    // Every attempt to store an issuance record fails, as a full disk would.
    env.sqlite3(
        "CREATE TRIGGER refuse_issued BEFORE INSERT ON audit WHEN NEW.kind = 'issued' \
         BEGIN SELECT RAISE(ABORT, 'simulated write failure'); END;",
    );

    let out = ssh_ca(&daemon, &key.private, "request shell");
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        stdout(&out).is_empty(),
        "a certificate left without its audit record\n{}",
        describe(&out)
    );
    assert!(
        stderr(&out).contains("nothing was issued"),
        "{}",
        describe(&out)
    );
    assert_eq!(env.db_query_i64("SELECT COUNT(*) FROM certificates"), 0);

    // Once records can be written again, issuance resumes. The failed
    // attempt left no certificate and no issuance record behind (its serial
    // may stay unused: serials are reserved in blocks, and gaps are harmless).
    assert_eq!(
        env.db_query_i64("SELECT COUNT(*) FROM audit WHERE kind = 'issued'"),
        0
    );
    env.sqlite3("DROP TRIGGER refuse_issued;");
    let (_, cert) = daemon.request_cert(&env, &key.private, "request shell");
    assert!(cert.serial > 0);
    assert_eq!(env.db_query_i64("SELECT COUNT(*) FROM certificates"), 1);
    env.jitca_ok(&["audit", "verify"]);
}

#[test]
fn no_certificate_leaves_when_the_database_is_locked_past_the_busy_timeout() {
    let (env, key) = standard_env();
    let daemon = Daemon::start(&env);
    // Another connection holds the write lock longer than the writer waits.
    let db = env.db.clone();
    let (locked, is_locked) = std::sync::mpsc::channel();
    let holder = std::thread::spawn(move || {
        let conn = rusqlite::Connection::open(db).unwrap();
        conn.execute_batch("BEGIN EXCLUSIVE;").unwrap();
        locked.send(()).unwrap();
        std::thread::sleep(std::time::Duration::from_secs(13));
        conn.execute_batch("COMMIT;").unwrap();
    });
    is_locked.recv().unwrap();

    let out = ssh_ca(&daemon, &key.private, "request shell");
    holder.join().unwrap();
    assert_ne!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        stdout(&out).is_empty(),
        "a certificate left without a durable audit record\n{}",
        describe(&out)
    );
    assert_eq!(env.db_query_i64("SELECT COUNT(*) FROM certificates"), 0);
}
