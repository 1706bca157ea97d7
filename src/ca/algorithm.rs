//! Which key algorithms jitca certifies: the one rule shared by enrolment
//! (a device key is refused at the door) and signing (checked again before
//! a certificate is built).

use russh::keys::ssh_key::public::{KeyData, RsaPublicKey};

/// The smallest RSA modulus accepted, in bits.
pub const MIN_RSA_BITS: u32 = 2048;

/// The algorithms a subject key may use.
pub const ACCEPTED_ALGORITHMS: &[&str] = &[
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// The suffix of every certificate type name (PROTOCOL.certkeys).
pub(crate) const CERT_SUFFIX: &str = "-cert-v01@openssh.com";

/// What the accepted-algorithm list says, for messages.
pub(crate) const ACCEPTED_HINT: &str = "use ssh-ed25519 (recommended), ecdsa-sha2-nistp256/384/521, \
     ssh-rsa of at least 2048 bits, sk-ssh-ed25519@openssh.com or \
     sk-ecdsa-sha2-nistp256@openssh.com";

/// Why a key's algorithm cannot be certified, independent of any file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AlgorithmRefusal {
    Certificate(String),
    Unsupported(String),
    RsaTooSmall(u32),
}

impl std::fmt::Display for AlgorithmRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AlgorithmRefusal::Certificate(kind) => write!(
                f,
                "the key is a certificate ({kind}), which cannot itself be certified"
            ),
            AlgorithmRefusal::Unsupported(alg) => {
                write!(f, "key type {alg} is not accepted: {ACCEPTED_HINT}")
            }
            AlgorithmRefusal::RsaTooSmall(bits) => write!(
                f,
                "the RSA key has {bits} bits, below the minimum of {MIN_RSA_BITS}"
            ),
        }
    }
}

/// Checks that a decoded key is of a kind jitca certifies: one of
/// [`ACCEPTED_ALGORITHMS`], never a certificate, RSA of at least
/// [`MIN_RSA_BITS`].
pub(crate) fn check_algorithm(key: &KeyData) -> Result<(), AlgorithmRefusal> {
    let name = key.algorithm().as_str().to_string();
    if key.is_certificate() || name.ends_with(CERT_SUFFIX) {
        return Err(AlgorithmRefusal::Certificate(name));
    }
    if !ACCEPTED_ALGORITHMS.contains(&name.as_str()) {
        return Err(AlgorithmRefusal::Unsupported(name));
    }
    if let Some(rsa) = key.rsa() {
        let bits = rsa_bits(rsa);
        if bits < MIN_RSA_BITS {
            return Err(AlgorithmRefusal::RsaTooSmall(bits));
        }
    }
    Ok(())
}

/// The size of an RSA key's modulus in bits, counted exactly.
pub(crate) fn rsa_bits(key: &RsaPublicKey) -> u32 {
    modulus_bits(key.n().as_positive_bytes().unwrap_or_default())
}

/// The exact bit length of a big-endian unsigned integer, as OpenSSH counts
/// it (`BN_num_bits`), not rounded up to whole bytes.
fn modulus_bits(bytes: &[u8]) -> u32 {
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    let Some((first, rest)) = bytes[start..].split_first() else {
        return 0;
    };
    let bits = (rest.len() as u64) * 8 + u64::from(8 - first.leading_zeros());
    u32::try_from(bits).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::testutil::fixture;
    use russh::keys::{Certificate, PublicKey};

    fn key_data(name: &str) -> KeyData {
        let text = std::fs::read_to_string(fixture(name)).expect("read fixture");
        PublicKey::from_openssh(&text)
            .expect("fixture parses")
            .key_data()
            .clone()
    }

    #[test]
    fn accepted_kinds_pass_and_small_rsa_does_not() {
        for name in [
            "ed25519.pub",
            "ecdsa-p384.pub",
            "ecdsa-p521.pub",
            "rsa-3072.pub",
        ] {
            assert_eq!(check_algorithm(&key_data(name)), Ok(()), "{name}");
        }
        assert_eq!(
            check_algorithm(&key_data("rsa-1024.pub")),
            Err(AlgorithmRefusal::RsaTooSmall(1024))
        );
    }

    #[test]
    fn certificates_are_refused() {
        let text = std::fs::read_to_string(fixture("a-certificate.pub")).expect("read fixture");
        let cert = Certificate::from_openssh(&text).expect("fixture parses");
        let refusal = check_algorithm(&KeyData::Certificate(Box::new(cert))).expect_err("cert");
        assert!(
            matches!(refusal, AlgorithmRefusal::Certificate(_)),
            "{refusal}"
        );
    }

    #[test]
    fn modulus_bits_counts_exact_bits() {
        assert_eq!(modulus_bits(&[]), 0);
        assert_eq!(modulus_bits(&[0, 0]), 0);
        assert_eq!(modulus_bits(&[1]), 1);
        assert_eq!(modulus_bits(&[0x80, 0]), 16);
        assert_eq!(modulus_bits(&[0, 0x7f, 0xff]), 15);
    }
}
