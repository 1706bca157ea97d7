//! CA key files: generating them without ever replacing an existing file,
//! and loading them only when nobody else can read or change them.
//!
//! Key files are OpenSSH private keys (`-----BEGIN OPENSSH PRIVATE KEY-----`),
//! unencrypted, mode 0600, like `sshd`'s host keys. A file that group or
//! others can read or write is refused, as `sshd` does.

use std::fmt;
use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use russh::keys::ssh_key::LineEnding;
use russh::keys::ssh_key::private::{KeypairData, RsaKeypair};
use russh::keys::{Algorithm, HashAlg, PrivateKey};

use super::algorithm::{MIN_RSA_BITS, rsa_bits};
use super::files::{
    CappedReadError, WriteNewError, ensure_private_dir, read_capped_file, write_new,
};
use super::signer::{CaSigner, ed25519_signing_key};
use crate::model::{BadName, check_name};

/// The largest key file read: a 16384-bit RSA private key is about 12 KiB.
const MAX_PRIVATE_KEY_BYTES: u64 = 64 * 1024;

/// The size of a generated RSA CA key.
const RSA_CA_BITS: usize = 4096;

/// The algorithm of a new CA key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CaAlgorithm {
    /// Ed25519: small, fast, and what hosts should trust by default.
    #[default]
    Ed25519,
    /// RSA with a 4096-bit modulus, for hosts that cannot verify Ed25519. It
    /// signs with `rsa-sha2-512`.
    Rsa4096,
}

impl CaAlgorithm {
    /// The name used on the command line: `ed25519` or `rsa-4096`.
    pub fn as_str(self) -> &'static str {
        match self {
            CaAlgorithm::Ed25519 => "ed25519",
            CaAlgorithm::Rsa4096 => "rsa-4096",
        }
    }
}

impl fmt::Display for CaAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A CA algorithm name that is not `ed25519` or `rsa-4096`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown CA key algorithm {0:?}: use ed25519 (the default) or rsa-4096")]
pub struct UnknownCaAlgorithm(pub String);

impl FromStr for CaAlgorithm {
    type Err = UnknownCaAlgorithm;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ed25519" => Ok(CaAlgorithm::Ed25519),
            "rsa-4096" => Ok(CaAlgorithm::Rsa4096),
            other => Err(UnknownCaAlgorithm(other.to_string())),
        }
    }
}

/// Why a key file could not be generated or loaded. Every message names the
/// file.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error(transparent)]
    BadName(#[from] BadName),

    #[error("cannot create key directory {path}: {error}")]
    CreateDir {
        path: PathBuf,
        error: std::io::Error,
    },

    #[error(
        "key file {path} already exists: jitca never overwrites a key; choose another name or move the old file aside"
    )]
    Exists { path: PathBuf },

    #[error("cannot write key file {path}: {error}")]
    Write {
        path: PathBuf,
        error: std::io::Error,
    },

    #[error("cannot read key file {path}: {error}; check the path and its permissions")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },

    #[error("{path} is not a regular file: give the path of the private key file")]
    NotAFile { path: PathBuf },

    #[error(
        "key file {path} is larger than {cap} bytes, so it is not an OpenSSH private key: check the path"
    )]
    TooLarge { path: PathBuf, cap: u64 },

    #[error(
        "key file {path} has mode {mode:04o}, so group or others can read or write it: run `chmod 600 {path}`"
    )]
    Permissions { path: PathBuf, mode: u32 },

    #[error(
        "key file {path} is encrypted with a passphrase, which jitca cannot enter: remove it with `ssh-keygen -p -N '' -f {path}` and keep the file mode 0600"
    )]
    Encrypted { path: PathBuf },

    #[error("{path} holds a certificate, not a private key: give the private key file")]
    Certificate { path: PathBuf },

    #[error(
        "{path} holds a public key, not a private key: give the private key file (without .pub)"
    )]
    PublicKey { path: PathBuf },

    #[error(
        "{path} is not an OpenSSH private key ({detail}): give a key written by jitca or `ssh-keygen`"
    )]
    Parse { path: PathBuf, detail: String },

    #[error("key in {path} is {algorithm}, which jitca cannot use here: {hint}")]
    Unsupported {
        path: PathBuf,
        algorithm: String,
        hint: &'static str,
    },

    #[error("RSA key in {path} has {bits} bits, below the minimum of {min}: generate a new CA key")]
    RsaTooSmall { path: PathBuf, bits: u32, min: u32 },

    #[error("cannot generate a {algorithm} key: {detail}")]
    Generate {
        algorithm: &'static str,
        detail: String,
    },
}

/// A CA private key, ready to sign.
///
/// Its `Debug` output shows the algorithm and fingerprint only, never key
/// material.
pub struct CaKey {
    key: PrivateKey,
    /// The Ed25519 signing key, built once (`None` for other algorithms).
    ed25519: Option<ed25519_dalek::SigningKey>,
    fingerprint: String,
    public_line: String,
}

impl CaKey {
    /// Wraps a loaded or generated key, computing what is shown about it.
    fn new(path: &Path, key: PrivateKey) -> Result<CaKey, KeyFileError> {
        let public_line = key
            .public_key()
            .to_openssh()
            .map_err(|e| KeyFileError::Parse {
                path: path.to_path_buf(),
                detail: format!("its public half cannot be encoded: {e}"),
            })?;
        let ed25519 = ed25519_signing_key(&key).map_err(|detail| KeyFileError::Parse {
            path: path.to_path_buf(),
            detail,
        })?;
        Ok(CaKey {
            fingerprint: key.fingerprint(HashAlg::Sha256).to_string(),
            public_line,
            ed25519,
            key,
        })
    }

    /// The `SHA256:...` fingerprint of the public half.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The public half as one OpenSSH line, `TYPE BASE64 COMMENT`, as hosts
    /// put it in `TrustedUserCAKeys`.
    pub fn public_openssh(&self) -> &str {
        &self.public_line
    }

    /// The algorithm name, e.g. `ssh-ed25519` or `ssh-rsa`.
    pub fn algorithm(&self) -> String {
        self.key.algorithm().as_str().to_string()
    }

    /// What signs with this key.
    pub fn signer(&self) -> CaSigner<'_> {
        match &self.ed25519 {
            Some(key) => CaSigner::Ed25519 {
                key,
                public: self.key.public_key().key_data(),
            },
            None => CaSigner::Other(&self.key),
        }
    }
}

impl fmt::Debug for CaKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaKey")
            .field("algorithm", &self.algorithm())
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// Generates a CA key and writes it to `DIR/NAME` (private, mode 0600) and
/// `DIR/NAME.pub` (mode 0644), with the comment `jitca-ca NAME`.
///
/// `DIR` is created with mode 0700 if missing. Neither file is ever
/// overwritten: if either name exists, nothing is written and the error names
/// it. The private file is complete and fsynced before it appears.
pub fn generate_ca_key(
    dir: &Path,
    name: &str,
    algorithm: CaAlgorithm,
) -> Result<CaKey, KeyFileError> {
    check_name("CA key", name)?;
    let pub_name = format!("{name}.pub");
    for taken in [dir.join(name), dir.join(&pub_name)] {
        if taken.symlink_metadata().is_ok() {
            return Err(KeyFileError::Exists { path: taken });
        }
    }
    ensure_private_dir(dir).map_err(|error| KeyFileError::CreateDir {
        path: dir.to_path_buf(),
        error,
    })?;

    let mut key = random_key(algorithm)?;
    key.set_comment(format!("jitca-ca {name}"));
    let path = dir.join(name);
    let ca = CaKey::new(&path, key)?;

    let pem = ca
        .key
        .to_openssh(LineEnding::LF)
        .map_err(|e| KeyFileError::Generate {
            algorithm: algorithm.as_str(),
            detail: format!("cannot encode the private key: {e}"),
        })?;
    write_new(dir, name, pem.as_bytes(), 0o600).map_err(write_error)?;

    let public = format!("{}\n", ca.public_line);
    if let Err(e) = write_new(dir, &pub_name, public.as_bytes(), 0o644) {
        // Do not leave a private key without its public half: it was created
        // just now by this call, so removing it loses nothing.
        let _ = std::fs::remove_file(&path);
        return Err(write_error(e));
    }
    Ok(ca)
}

/// Loads a CA key from an OpenSSH private key file.
///
/// Refuses a file that group or others can read or write (as `sshd` refuses
/// such a host key), an encrypted key, a public key or a certificate, and
/// keys jitca does not sign with (DSA, FIDO, RSA under 2048 bits).
pub fn load_ca_key(path: &Path) -> Result<CaKey, KeyFileError> {
    let key = load_private_key(path)?;
    let unsupported = |algorithm: String| KeyFileError::Unsupported {
        path: path.to_path_buf(),
        algorithm,
        hint: "use an ed25519 CA key (or rsa, ecdsa)",
    };
    match key.key_data() {
        KeypairData::Ed25519(_) | KeypairData::Ecdsa(_) => {}
        KeypairData::Rsa(rsa) => {
            let bits = rsa_bits(rsa.public());
            if bits < MIN_RSA_BITS {
                return Err(KeyFileError::RsaTooSmall {
                    path: path.to_path_buf(),
                    bits,
                    min: MIN_RSA_BITS,
                });
            }
        }
        _ => return Err(unsupported(key.algorithm().as_str().to_string())),
    }
    CaKey::new(path, key)
}

/// Opens, checks and parses an unencrypted OpenSSH private key file.
pub(crate) fn load_private_key(path: &Path) -> Result<PrivateKey, KeyFileError> {
    let read_err = |error| KeyFileError::Read {
        path: path.to_path_buf(),
        error,
    };
    let file = File::open(path).map_err(read_err)?;

    // Check the file that was opened, not the name, so a swap between the
    // check and the read cannot slip a different file in.
    let meta = file.metadata().map_err(read_err)?;
    if !meta.is_file() {
        return Err(KeyFileError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::Permissions {
            path: path.to_path_buf(),
            mode,
        });
    }

    let bytes = read_capped_file(&file, MAX_PRIVATE_KEY_BYTES).map_err(|e| match e {
        CappedReadError::Io(error) => read_err(error),
        CappedReadError::TooLarge { .. } => KeyFileError::TooLarge {
            path: path.to_path_buf(),
            cap: MAX_PRIVATE_KEY_BYTES,
        },
    })?;
    let key = PrivateKey::from_openssh(&bytes).map_err(|e| not_a_private_key(path, &bytes, e))?;
    if key.is_encrypted() {
        return Err(KeyFileError::Encrypted {
            path: path.to_path_buf(),
        });
    }
    Ok(key)
}

/// Explains why a file did not parse as a private key, recognising the
/// common mix-ups: a `.pub` file or a certificate given instead.
fn not_a_private_key(
    path: &Path,
    bytes: &[u8],
    error: russh::keys::ssh_key::Error,
) -> KeyFileError {
    let text = String::from_utf8_lossy(bytes);
    let first_word = text.split_whitespace().next().unwrap_or("");
    let path = path.to_path_buf();
    if first_word.ends_with("-cert-v01@openssh.com") {
        KeyFileError::Certificate { path }
    } else if first_word.starts_with("ssh-")
        || first_word.starts_with("ecdsa-")
        || first_word.starts_with("sk-")
    {
        KeyFileError::PublicKey { path }
    } else {
        KeyFileError::Parse {
            path,
            detail: error.to_string(),
        }
    }
}

/// Generates a fresh key from the thread's CSPRNG (`rand::rng()` satisfies
/// ssh-key's `CryptoRng` bound directly).
pub(crate) fn random_key(algorithm: CaAlgorithm) -> Result<PrivateKey, KeyFileError> {
    let mut rng = rand::rng();
    let generated = match algorithm {
        CaAlgorithm::Ed25519 => PrivateKey::random(&mut rng, Algorithm::Ed25519),
        CaAlgorithm::Rsa4096 => RsaKeypair::random(&mut rng, RSA_CA_BITS)
            .and_then(|pair| PrivateKey::new(KeypairData::from(pair), "")),
    };
    generated.map_err(|e| KeyFileError::Generate {
        algorithm: algorithm.as_str(),
        detail: e.to_string(),
    })
}

/// Maps a failed exclusive write to the key file error naming the file.
pub(crate) fn write_error(e: WriteNewError) -> KeyFileError {
    match e {
        WriteNewError::Exists(path) => KeyFileError::Exists { path },
        WriteNewError::Io { path, error } => KeyFileError::Write { path, error },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::testutil::{fixture, ssh_keygen};
    use std::fs;

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).expect("stat").permissions().mode() & 0o777
    }

    #[test]
    fn generate_writes_private_0600_and_public_0644() {
        let dir = tempfile::tempdir().expect("tempdir");
        let keys = dir.path().join("ca-keys");
        let ca = generate_ca_key(&keys, "ca-1", CaAlgorithm::default()).expect("generate");
        assert_eq!(mode_of(&keys), 0o700);
        assert_eq!(mode_of(&keys.join("ca-1")), 0o600);
        assert_eq!(mode_of(&keys.join("ca-1.pub")), 0o644);
        assert_eq!(ca.algorithm(), "ssh-ed25519");
        assert!(ca.public_openssh().starts_with("ssh-ed25519 AAAA"));
        assert!(ca.public_openssh().ends_with(" jitca-ca ca-1"));
        let public = fs::read_to_string(keys.join("ca-1.pub")).expect("read pub");
        assert_eq!(public, format!("{}\n", ca.public_openssh()));

        let loaded = load_ca_key(&keys.join("ca-1")).expect("load");
        assert_eq!(loaded.fingerprint(), ca.fingerprint());
        assert!(ca.fingerprint().starts_with("SHA256:"));
    }

    #[test]
    fn generated_key_matches_ssh_keygen_fingerprint() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = generate_ca_key(dir.path(), "ca", CaAlgorithm::Ed25519).expect("generate");
        let out = ssh_keygen()
            .arg("-l")
            .arg("-f")
            .arg(dir.path().join("ca"))
            .output()
            .expect("run ssh-keygen");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(ca.fingerprint()), "{text}");
    }

    #[test]
    fn generate_never_overwrites_an_existing_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = generate_ca_key(dir.path(), "ca", CaAlgorithm::Ed25519).expect("first");
        let before = fs::read(dir.path().join("ca")).expect("read");
        let err = generate_ca_key(dir.path(), "ca", CaAlgorithm::Ed25519).expect_err("second");
        assert!(matches!(err, KeyFileError::Exists { .. }), "{err}");
        assert!(err.to_string().contains("ca"), "{err}");
        assert_eq!(fs::read(dir.path().join("ca")).expect("read"), before);
        assert_eq!(
            load_ca_key(&dir.path().join("ca"))
                .expect("load")
                .fingerprint(),
            first.fingerprint()
        );

        // A stray public file alone also blocks, and nothing is written.
        fs::write(dir.path().join("other.pub"), "x").expect("write");
        let err = generate_ca_key(dir.path(), "other", CaAlgorithm::Ed25519).expect_err("pub");
        assert!(matches!(err, KeyFileError::Exists { .. }), "{err}");
        assert!(!dir.path().join("other").exists());
    }

    #[test]
    fn generate_refuses_a_name_that_is_a_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in ["../ca", "a/b", ".hidden", ""] {
            let err = generate_ca_key(dir.path(), name, CaAlgorithm::Ed25519).expect_err(name);
            assert!(matches!(err, KeyFileError::BadName(_)), "{name}: {err}");
        }
    }

    #[test]
    fn load_refuses_a_key_readable_by_others_naming_mode_and_fix() {
        let dir = tempfile::tempdir().expect("tempdir");
        generate_ca_key(dir.path(), "ca", CaAlgorithm::Ed25519).expect("generate");
        let path = dir.path().join("ca");
        for mode in [0o644, 0o640, 0o602] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
            let err = load_ca_key(&path).expect_err("loose mode");
            let msg = err.to_string();
            assert!(matches!(err, KeyFileError::Permissions { .. }), "{msg}");
            assert!(msg.contains(&format!("{mode:04o}")), "{msg}");
            assert!(
                msg.contains(&format!("chmod 600 {}", path.display())),
                "{msg}"
            );
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).expect("chmod");
        load_ca_key(&path).expect("0400 is fine");
    }

    #[test]
    fn debug_output_shows_no_key_material() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = generate_ca_key(dir.path(), "ca", CaAlgorithm::Ed25519).expect("generate");
        let shown = format!("{ca:?} {ca:#?}");
        assert!(shown.contains(ca.fingerprint()), "{shown}");
        assert!(shown.contains("ssh-ed25519"), "{shown}");

        let pem = fs::read_to_string(dir.path().join("ca")).expect("read");
        for line in pem.lines().filter(|l| !l.starts_with("-----")) {
            for chunk in line.as_bytes().chunks(12).filter(|c| c.len() == 12) {
                let chunk = std::str::from_utf8(chunk).expect("ascii");
                assert!(!shown.contains(chunk), "Debug leaks {chunk}: {shown}");
            }
        }
        let public_b64 = ca.public_openssh().split(' ').nth(1).expect("b64");
        assert!(!shown.contains(public_b64));
    }

    #[test]
    fn load_refuses_encrypted_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("enc");
        let status = ssh_keygen()
            .args(["-q", "-t", "ed25519", "-N", "secret-pass", "-f"])
            .arg(&path)
            .status()
            .expect("run ssh-keygen");
        assert!(status.success());
        let err = load_ca_key(&path).expect_err("encrypted");
        assert!(matches!(err, KeyFileError::Encrypted { .. }), "{err}");
        assert!(err.to_string().contains("encrypted"), "{err}");
    }

    #[test]
    fn load_refuses_public_keys_and_certificates() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, want_cert) in [("a-certificate.pub", true), ("ed25519.pub", false)] {
            let path = dir.path().join(name);
            fs::copy(fixture(name), &path).expect("copy");
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod");
            let err = load_ca_key(&path).expect_err(name);
            if want_cert {
                assert!(matches!(err, KeyFileError::Certificate { .. }), "{err}");
            } else {
                assert!(matches!(err, KeyFileError::PublicKey { .. }), "{err}");
            }
        }
    }

    #[test]
    fn load_refuses_garbage_and_directories() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("junk");
        fs::write(&path, "not a key\n").expect("write");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod");
        assert!(matches!(
            load_ca_key(&path),
            Err(KeyFileError::Parse { .. })
        ));

        let sub = dir.path().join("d");
        fs::create_dir(&sub).expect("mkdir");
        fs::set_permissions(&sub, fs::Permissions::from_mode(0o700)).expect("chmod");
        assert!(matches!(
            load_ca_key(&sub),
            Err(KeyFileError::NotAFile { .. })
        ));
        assert!(matches!(
            load_ca_key(&dir.path().join("missing")),
            Err(KeyFileError::Read { .. })
        ));
    }

    #[test]
    fn load_accepts_rsa_2048_and_refuses_rsa_1024() {
        let dir = tempfile::tempdir().expect("tempdir");
        for bits in ["2048", "1024"] {
            let path = dir.path().join(format!("rsa{bits}"));
            let status = ssh_keygen()
                .args(["-q", "-t", "rsa", "-b", bits, "-N", "", "-f"])
                .arg(&path)
                .status()
                .expect("run ssh-keygen");
            assert!(status.success());
            match (bits, load_ca_key(&path)) {
                ("2048", Ok(ca)) => assert_eq!(ca.algorithm(), "ssh-rsa"),
                ("1024", Err(KeyFileError::RsaTooSmall { bits: 1024, .. })) => {}
                (bits, other) => panic!("rsa {bits}: unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn ca_algorithm_names_round_trip() {
        for alg in [CaAlgorithm::Ed25519, CaAlgorithm::Rsa4096] {
            assert_eq!(alg.as_str().parse::<CaAlgorithm>(), Ok(alg));
        }
        assert!("dsa".parse::<CaAlgorithm>().is_err());
        assert_eq!(CaAlgorithm::default(), CaAlgorithm::Ed25519);
    }
}
