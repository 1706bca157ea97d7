//! Unit tests of the request path: durability of issuance, and the CA key
//! that signs after a change made by another process.

use std::path::Path;

use russh::keys::Certificate;

use super::*;
use crate::inventory::identity_by_fingerprint;

/// A daemon state over a fresh database with one requester, alice, whose
/// device key is returned with her identity.
fn setup(dir: &Path) -> (State, PublicKey, Identity) {
    let (state, key, fp) = crate::server::testutil::state_with_alice(dir, "i.db");
    let conn = crate::store::connect(&dir.join("i.db")).unwrap();
    let who = identity_by_fingerprint(&conn, &fp).unwrap().unwrap();
    (state, key.public_key().clone(), who)
}

/// Certificate rows and `issued` audit records in the database.
fn stored(dir: &Path) -> (i64, i64) {
    let conn = crate::store::connect(&dir.join("i.db")).unwrap();
    let count = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap();
    (
        count("SELECT COUNT(*) FROM certificates"),
        count("SELECT COUNT(*) FROM audit WHERE kind = 'issued'"),
    )
}

async fn ask(state: &State, key: &PublicKey, who: &Identity) -> Result<Reply, RequestError> {
    let peer = "127.0.0.1".parse().unwrap();
    request(state, who, key, peer, "shell", RequestParams::default()).await
}

#[tokio::test]
async fn no_certificate_leaves_when_the_commit_of_its_audit_record_fails() {
    let dir = tempfile::tempdir().unwrap();
    let (state, key, who) = setup(dir.path());
    assert!(matches!(
        ask(&state, &key, &who).await,
        Ok(Reply::Issued(_))
    ));
    assert_eq!(stored(dir.path()), (1, 1));

    // A deferred constraint that every new audit record breaks: the
    // certificate is signed and its rows are written, and only the COMMIT
    // of the transaction holding them fails.
    let conn = crate::store::connect(&dir.path().join("i.db")).unwrap();
    conn.execute_batch(
        "CREATE TABLE veto (user_id INTEGER REFERENCES users(id) DEFERRABLE INITIALLY DEFERRED);
         CREATE TRIGGER veto_audit AFTER INSERT ON audit BEGIN INSERT INTO veto VALUES (-1); END;",
    )
    .unwrap();
    match ask(&state, &key, &who).await {
        Err(RequestError::Internal(e)) => {
            assert!(e.to_string().contains("commit failed"), "{e}")
        }
        Ok(Reply::Issued(i)) => panic!("a certificate left without its audit record: {}", i.line),
        other => panic!("expected an internal error, got {other:?}"),
    }
    assert_eq!(
        stored(dir.path()),
        (1, 1),
        "nothing of the failed issuance was kept"
    );
}

#[tokio::test]
async fn a_ca_key_revoked_by_another_process_never_signs_the_next_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (state, key, who) = setup(dir.path());
    let Ok(Reply::Issued(first)) = ask(&state, &key, &who).await else {
        panic!("the first request was not issued");
    };
    let signer = |line: &str| {
        let cert = Certificate::from_openssh(line).unwrap();
        cert.signature_key()
            .fingerprint(HashAlg::Sha256)
            .to_string()
    };
    let old = signer(&first.line);

    // `jitca ca revoke` from another shell: a fresh key is active at once.
    let mut conn = crate::store::connect(&dir.path().join("i.db")).unwrap();
    let keys = dir.path().join("ca-keys");
    crate::store::write(&mut conn, |c| {
        registry::revoke_key(c, &keys, &old, Some("test"), now_unix())
    })
    .unwrap();
    let new = registry::active(&conn).unwrap().unwrap().fingerprint;
    assert_ne!(new, old);

    let Ok(Reply::Issued(second)) = ask(&state, &key, &who).await else {
        panic!("the request after the revocation was not issued");
    };
    assert_eq!(signer(&second.line), new, "signed with the revoked key");
    assert!(second.serial > first.serial);
}
