//! Shared by the revocation, KRL and rotation tests (issue 4): more
//! enrolled users, `jitca revoke` with its reply checked, the serials the
//! audit log records as revoked, and what `sshd` logs for a revoked key.

use std::path::{Path, PathBuf};

use super::cert::CertInfo;
use super::{Env, GOOD_POSTURE, KeyKind, KeyPair, standard_env};

/// A certificate file jitca issued, and what `ssh-keygen -L` read in it.
pub type Issued = (PathBuf, CertInfo);

/// What `sshd` logs when the KRL revokes a key or certificate.
pub const REVOKED_BY_FILE: &str = "revoked by file";

/// The standard environment with a second user, bob (group `ops`, device
/// `bob-laptop`), whose posture passes too.
pub fn two_users() -> (Env, KeyPair, KeyPair) {
    let (env, alice) = standard_env();
    let bob = member(&env, "bob");
    (env, alice, bob)
}

/// Enrols USER (group `ops`) with an Ed25519 device `USER-laptop` whose
/// posture passes.
pub fn member(env: &Env, user: &str) -> KeyPair {
    let key = env.keygen(&format!("{user}_ed25519"), KeyKind::Ed25519);
    let device = format!("{user}-laptop");
    env.enrol(user, &["ops"], &device, &key);
    env.set_posture(&device, GOOD_POSTURE);
    key
}

/// `jitca revoke ARGS...`; fails unless it succeeds and names every one of
/// SERIALS; returns its output.
pub fn revoke(env: &Env, args: &[&str], serials: &[u64]) -> String {
    let mut all = vec!["revoke"];
    all.extend_from_slice(args);
    let out = env.jitca_ok(&all);
    for serial in serials {
        assert!(
            out.split(|c: char| !c.is_ascii_digit())
                .any(|w| w == serial.to_string()),
            "jitca {} does not name serial {serial}:\n{out}",
            all.join(" ")
        );
    }
    out
}

/// The serials of the `revoked` audit records, in order.
pub fn audited_revocations(env: &Env) -> Vec<Vec<u64>> {
    env.audit_records_where(&["--kind", "revoked"])
        .iter()
        .map(|r| {
            r.pointer("/body/serials")
                .and_then(|s| s.as_array())
                .map(|a| a.iter().filter_map(|v| v.as_u64()).collect())
                .unwrap_or_else(|| panic!("revoked record without serials: {r:#}"))
        })
        .collect()
}

/// The certificate files of CERTS.
pub fn cert_paths(certs: &[&Issued]) -> Vec<PathBuf> {
    certs.iter().map(|(p, _)| p.clone()).collect()
}

/// PATHS borrowed as `&Path`, for [`super::krl::assert_krl_verdicts`].
pub fn as_paths(paths: &[PathBuf]) -> Vec<&Path> {
    paths.iter().map(PathBuf::as_path).collect()
}
