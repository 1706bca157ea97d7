//! Test set-up shared by the server's unit tests: a fresh database with one
//! enrolled requester and a daemon state over it.

use std::path::Path;

use russh::keys::{Algorithm, HashAlg, PrivateKey};

use super::State;
use crate::ca::registry;
use crate::inventory::{NewDevice, add_device, add_user};
use crate::policy::Policy;

/// The one role the tests ask for: group `ops`, principal `ops`, 5 minutes.
pub const POLICY: &str = "[role.shell]\ngroups = [\"ops\"]\nprincipals = [\"ops\"]\nttl = \"5m\"\n";

/// Creates `DIR/NAME` with an active CA key in `DIR/ca-keys`, enrols alice
/// (group `ops`) with a new Ed25519 key on device `alice-laptop`, writes
/// [`POLICY`] to `DIR/policy.toml`, and returns a daemon state over them
/// with alice's private key and fingerprint.
pub fn state_with_alice(dir: &Path, name: &str) -> (State, PrivateKey, String) {
    let db = dir.join(name);
    let keys = dir.join("ca-keys");
    let (mut conn, _) = crate::store::open(&db).unwrap();
    let key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap();
    let public = key.public_key();
    let fp = public.fingerprint(HashAlg::Sha256).to_string();
    let line = public.to_openssh().unwrap();
    crate::store::write(&mut conn, |c| {
        registry::ensure_active(c, &keys, 1)?;
        add_user(c, "alice", &["ops".into()], 1)?;
        let device = NewDevice {
            fingerprint: &fp,
            key_type: "ssh-ed25519",
            public_key: &line,
            label: "",
        };
        add_device(c, "alice", "alice-laptop", &device, 1)
    })
    .unwrap();
    let policy_path = dir.join("policy.toml");
    std::fs::write(&policy_path, POLICY).unwrap();
    let policy = Policy::load(&policy_path).unwrap();
    let state = State::new(&db, &keys, &policy_path, policy).unwrap();
    (state, key, fp)
}
