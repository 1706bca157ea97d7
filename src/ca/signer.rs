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

/// What signs certificates for one CA key.
pub enum CaSigner {
    /// Ed25519, with the signing key built once.
    Ed25519 {
        key: ed25519_dalek::SigningKey,
        public: KeyData,
    },
    /// Any other algorithm, through ssh-key.
    Other(PrivateKey),
}

impl CaSigner {
    /// Prepares `key` for signing. Fails if an Ed25519 key's public half
    /// does not belong to its private half.
    pub fn new(key: PrivateKey) -> Result<CaSigner, String> {
        let Some(pair) = key.key_data().ed25519() else {
            return Ok(CaSigner::Other(key));
        };
        let signing = ed25519_dalek::SigningKey::try_from(pair)
            .map_err(|e| format!("its public half does not match its private half: {e}"))?;
        Ok(CaSigner::Ed25519 {
            key: signing,
            public: key.public_key().key_data().clone(),
        })
    }
}

impl CaSigner {
    /// Whether this is an Ed25519 key.
    pub fn is_ed25519(&self) -> bool {
        matches!(self, CaSigner::Ed25519 { .. })
    }
}

impl signature::Signer<Signature> for CaSigner {
    fn try_sign(&self, message: &[u8]) -> Result<Signature, signature::Error> {
        match self {
            CaSigner::Ed25519 { key, .. } => {
                let raw = signature::Signer::<ed25519_dalek::Signature>::try_sign(key, message)?;
                Signature::new(Algorithm::Ed25519, raw.to_bytes().to_vec())
                    .map_err(|_| signature::Error::new())
            }
            CaSigner::Other(key) => key.try_sign(message),
        }
    }
}

impl From<&CaSigner> for KeyData {
    fn from(signer: &CaSigner) -> KeyData {
        match signer {
            CaSigner::Ed25519 { public, .. } => public.clone(),
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
        let signer = CaSigner::new(key.clone()).unwrap();
        assert!(matches!(signer, CaSigner::Ed25519 { .. }));
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
        let err = CaSigner::new(mixed).err().expect("must be refused");
        assert!(err.contains("does not match"), "{err}");
    }
}
