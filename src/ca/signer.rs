//! The signing half of a CA key, prepared once when the key is loaded.
//!
//! ssh-key signs with an Ed25519 key by rebuilding the `ed25519-dalek`
//! signing key from its seed at every signature, and checks the rebuilt
//! public half against the stored one: a base-point multiplication and a
//! point decompression, about as much work again as the signature itself.
//! A CA signs thousands of certificates with one key, so the Ed25519
//! signing key is built (and checked against the public half in the file)
//! once, here, and kept; it is wiped from memory when the key is dropped.
//! RSA and ECDSA keys sign through ssh-key as they are.

use russh::keys::ssh_key::public::KeyData;
use russh::keys::ssh_key::{Algorithm, Signature};
use russh::keys::{PrivateKey, signature};

/// Builds the Ed25519 signing key of `key`, once; `None` for the other
/// algorithms. Fails if the key's public half does not belong to its
/// private half.
pub fn ed25519_signing_key(key: &PrivateKey) -> Result<Option<ed25519_dalek::SigningKey>, String> {
    let Some(pair) = key.key_data().ed25519() else {
        return Ok(None);
    };
    ed25519_dalek::SigningKey::try_from(pair)
        .map(Some)
        .map_err(|e| format!("its public half does not match its private half: {e}"))
}

/// What signs certificates for one CA key: a view of the key, holding no
/// key material of its own.
pub enum CaSigner<'a> {
    /// Ed25519, with the signing key built once, and the public half.
    Ed25519 {
        key: &'a ed25519_dalek::SigningKey,
        public: &'a KeyData,
    },
    /// Any other algorithm, through ssh-key.
    Other(&'a PrivateKey),
}

impl CaSigner<'_> {
    /// Whether this is an Ed25519 key.
    pub fn is_ed25519(&self) -> bool {
        matches!(self, CaSigner::Ed25519 { .. })
    }
}

impl signature::Signer<Signature> for CaSigner<'_> {
    fn try_sign(&self, message: &[u8]) -> Result<Signature, signature::Error> {
        match self {
            CaSigner::Ed25519 { key, .. } => {
                let raw = signature::Signer::<ed25519_dalek::Signature>::try_sign(*key, message)?;
                Signature::new(Algorithm::Ed25519, raw.to_bytes().to_vec())
                    .map_err(|_| signature::Error::new())
            }
            CaSigner::Other(key) => key.try_sign(message),
        }
    }
}

impl From<&CaSigner<'_>> for KeyData {
    fn from(signer: &CaSigner<'_>) -> KeyData {
        match signer {
            CaSigner::Ed25519 { public, .. } => (*public).clone(),
            CaSigner::Other(key) => key.public_key().key_data().clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use signature::{Signer, Verifier};

    #[test]
    fn ed25519_signatures_are_those_ssh_key_makes_and_verify() {
        let key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap();
        let signing = ed25519_signing_key(&key).unwrap().expect("an ed25519 key");
        let signer = CaSigner::Ed25519 {
            key: &signing,
            public: key.public_key().key_data(),
        };
        let message = b"certificate to be signed";
        let ours = signer.try_sign(message).unwrap();
        // Ed25519 is deterministic: the same key and message give the same
        // signature, whichever way the signing key was built.
        assert_eq!(ours, key.try_sign(message).unwrap());
        Verifier::verify(key.public_key().key_data(), message, &ours).unwrap();
        assert_eq!(KeyData::from(&signer), *key.public_key().key_data());
    }

    #[test]
    fn an_ed25519_key_whose_public_half_is_not_its_own_is_refused() {
        let key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap();
        let other = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap();
        let mut pair = key.key_data().ed25519().unwrap().clone();
        pair.public = other.key_data().ed25519().unwrap().public;
        let mixed = PrivateKey::new(pair.into(), "mixed").unwrap();
        let err = ed25519_signing_key(&mixed).expect_err("must be refused");
        assert!(err.contains("does not match"), "{err}");
    }
}
