//! The daemon's own SSH host key: created on first start, loaded after.
//!
//! The file is `DIR/host_ed25519`, an unencrypted OpenSSH private key, mode
//! 0600, held to the same rules as a CA key file.

use std::path::Path;

use russh::keys::ssh_key::LineEnding;
use russh::keys::{Algorithm, PrivateKey};

use super::files::{WriteNewError, ensure_private_dir, write_new};
use super::keys::{CaAlgorithm, KeyFileError, load_private_key, random_key, write_error};

/// The host key's file name inside the daemon's key directory.
pub const HOST_KEY_FILE: &str = "host_ed25519";

/// Loads the daemon's SSH host key from `DIR/host_ed25519`, or creates it
/// (mode 0600, `DIR` mode 0700 if missing) when there is none. Returns the
/// key and whether it was created now.
///
/// An existing file is held to the same rules as a CA key and must be
/// Ed25519. If another process creates the file at the same moment, its key
/// is loaded rather than replaced.
pub fn load_or_create_host_key(dir: &Path) -> Result<(PrivateKey, bool), KeyFileError> {
    let path = dir.join(HOST_KEY_FILE);
    if path.symlink_metadata().is_ok() {
        return Ok((load_host_key(&path)?, false));
    }

    ensure_private_dir(dir).map_err(|error| KeyFileError::CreateDir {
        path: dir.to_path_buf(),
        error,
    })?;
    let mut key = random_key(CaAlgorithm::Ed25519)?;
    key.set_comment("jitca-host");
    let pem = key
        .to_openssh(LineEnding::LF)
        .map_err(|e| KeyFileError::Generate {
            algorithm: "ed25519",
            detail: format!("cannot encode the private key: {e}"),
        })?;
    match write_new(dir, HOST_KEY_FILE, pem.as_bytes(), 0o600) {
        Ok(_) => Ok((key, true)),
        Err(WriteNewError::Exists(_)) => Ok((load_host_key(&path)?, false)),
        Err(e) => Err(write_error(e)),
    }
}

/// Loads an existing host key file, which must be Ed25519.
fn load_host_key(path: &Path) -> Result<PrivateKey, KeyFileError> {
    let key = load_private_key(path)?;
    if key.algorithm() != Algorithm::Ed25519 {
        return Err(KeyFileError::Unsupported {
            path: path.to_path_buf(),
            algorithm: key.algorithm().as_str().to_string(),
            hint: "the host key file must hold an ed25519 key; move it aside and jitca creates one",
        });
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use russh::keys::HashAlg;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).expect("stat").permissions().mode() & 0o777
    }

    #[test]
    fn host_key_is_created_once_then_loaded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let keys = dir.path().join("state");
        let (first, created) = load_or_create_host_key(&keys).expect("create");
        assert!(created);
        assert_eq!(first.algorithm(), Algorithm::Ed25519);
        assert_eq!(mode_of(&keys.join(HOST_KEY_FILE)), 0o600);

        let (second, created) = load_or_create_host_key(&keys).expect("load");
        assert!(!created);
        assert_eq!(
            first.fingerprint(HashAlg::Sha256),
            second.fingerprint(HashAlg::Sha256)
        );

        fs::set_permissions(keys.join(HOST_KEY_FILE), fs::Permissions::from_mode(0o644))
            .expect("chmod");
        assert!(matches!(
            load_or_create_host_key(&keys),
            Err(KeyFileError::Permissions { .. })
        ));
    }

    #[test]
    fn host_key_that_is_not_ed25519_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let status = crate::ca::testutil::ssh_keygen()
            .args(["-q", "-t", "ecdsa", "-N", "", "-f"])
            .arg(dir.path().join(HOST_KEY_FILE))
            .status()
            .expect("run ssh-keygen");
        assert!(status.success());
        let err = load_or_create_host_key(dir.path()).expect_err("ecdsa host key");
        assert!(matches!(err, KeyFileError::Unsupported { .. }), "{err}");
    }
}
