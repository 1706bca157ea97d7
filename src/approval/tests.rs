//! Unit tests of the request state machine.

use super::*;
use crate::inventory::{NewDevice, add_device, add_user};

fn db() -> (tempfile::TempDir, Connection) {
    let dir = tempfile::tempdir().unwrap();
    let (conn, _) = crate::store::open(&dir.path().join("r.db")).unwrap();
    for (user, fp) in [
        ("alice", "SHA256:a"),
        ("bob", "SHA256:b"),
        ("carol", "SHA256:c"),
    ] {
        add_user(&conn, user, &[], 1).unwrap();
        let key = NewDevice {
            fingerprint: fp,
            key_type: "ssh-ed25519",
            public_key: "k",
            label: "",
        };
        add_device(&conn, user, &format!("{user}-laptop"), &key, 1).unwrap();
    }
    (dir, conn)
}

fn id_of(conn: &Connection, user: &str) -> (i64, i64) {
    conn.query_row(
        "SELECT u.id, d.id FROM users u JOIN devices d ON d.user_id = u.id WHERE u.name = ?1",
        [user],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .unwrap()
}

fn request(conn: &Connection, needed: u32, deadline: i64) -> String {
    let (uid, did) = id_of(conn, "alice");
    let new = NewRequest {
        user_id: uid,
        user: "alice",
        device_id: did,
        device: "alice-laptop",
        role: "prod",
        reason: Some("INC-1"),
        ttl_secs: None,
        needed,
        deadline,
        body: json!({"snapshot": {"user": "alice"}}),
    };
    create(conn, &new, 100).unwrap()
}

fn verdict(conn: &Connection, id: &str, who: &str, approve: bool, now: i64) -> Decided {
    let (uid, did) = id_of(conn, who);
    let d = Decide {
        approver_id: uid,
        approver: who,
        device_id: did,
        approve,
        text: Some("ok"),
        body: json!({}),
        fetch_window: 900,
    };
    decide(conn, id, &d, now).unwrap()
}

#[test]
fn ids_are_short_base32_and_distinct() {
    let a = new_id();
    assert!(is_id(&a), "{a}");
    assert_ne!(a, new_id());
    assert!(!is_id("r-ABCDEFGHIJ") && !is_id("r-abc") && !is_id("x-abcdefghij"));
}

#[test]
fn two_approvals_are_needed_and_the_same_approver_counts_once() {
    let (_d, conn) = db();
    let id = request(&conn, 2, 1000);
    assert_eq!(
        verdict(&conn, &id, "bob", true, 110),
        Decided::Counted { have: 1, needed: 2 }
    );
    assert_eq!(
        verdict(&conn, &id, "bob", true, 111),
        Decided::AlreadyCounted { have: 1, needed: 2 }
    );
    assert_eq!(load(&conn, &id).unwrap().unwrap().state, State::Pending);
    assert_eq!(verdict(&conn, &id, "carol", true, 112), Decided::Approved);
    let req = load(&conn, &id).unwrap().unwrap();
    assert_eq!(req.state, State::Approved);
    assert_eq!(req.deadline, 112 + 900);
}

#[test]
fn one_denial_ends_the_request() {
    let (_d, conn) = db();
    let id = request(&conn, 2, 1000);
    verdict(&conn, &id, "bob", true, 110);
    assert_eq!(verdict(&conn, &id, "carol", false, 111), Decided::Denied);
    assert_eq!(
        verdict(&conn, &id, "carol", true, 112),
        Decided::NotPending(State::Denied)
    );
    let req = load(&conn, &id).unwrap().unwrap();
    assert_eq!(req.outcome.as_deref(), Some("denied by carol: ok"));
}

#[test]
fn an_undecided_request_expires_and_cannot_be_approved_after() {
    let (_d, conn) = db();
    let id = request(&conn, 1, 200);
    assert_eq!(
        verdict(&conn, &id, "bob", true, 200),
        Decided::NotPending(State::Expired)
    );
    let kinds: Vec<String> = audit::list(&conn, &Default::default())
        .unwrap()
        .into_iter()
        .filter(|r| r.request_id.as_deref() == Some(&id))
        .map(|r| r.kind)
        .collect();
    assert_eq!(kinds, ["request-pending", "request-expired"]);
}

#[test]
fn the_sweeper_expires_pending_and_unfetched_requests_once() {
    let (_d, conn) = db();
    let pending = request(&conn, 1, 200);
    let approved = request(&conn, 1, 5000);
    verdict(&conn, &approved, "bob", true, 150);
    assert!(expire_due(&conn, 199).unwrap().is_empty());
    let first: Vec<String> = expire_due(&conn, 150 + 900)
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(first.len(), 2, "{first:?}");
    assert!(first.contains(&pending) && first.contains(&approved));
    assert!(expire_due(&conn, 5000).unwrap().is_empty());
}

#[test]
fn only_an_approved_request_can_be_marked_issued() {
    let (_d, conn) = db();
    let id = request(&conn, 1, 1000);
    assert!(mark_issued(&conn, &id, 7, 120).is_err());
    verdict(&conn, &id, "bob", true, 120);
    mark_issued(&conn, &id, 7, 121).unwrap();
    assert!(mark_issued(&conn, &id, 8, 122).is_err());
    assert_eq!(load(&conn, &id).unwrap().unwrap().serial, Some(7));
}
