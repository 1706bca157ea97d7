//! The OpenSSH key revocation list (KRL) encoder, for `sshd`'s `RevokedKeys`.
//!
//! The format is OpenSSH's PROTOCOL.krl: a header, then one certificate
//! section per CA holding the revoked serials, then one section of SHA256
//! fingerprints for plain keys revoked outright (device keys, and CA keys
//! whose every certificate is to be refused). Serials are packed by
//! [`serials`], which picks lists, ranges and bitmaps by encoded size.
//!
//! A KRL that `sshd` cannot parse refuses every public-key login on its
//! host, so [`write_atomically`] never leaves a partial file behind.

mod serials;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use russh::keys::{HashAlg, PublicKey};

/// PROTOCOL.krl §1: the file starts with `uint64 KRL_MAGIC`, the bytes
/// "SSHKRL\n\0".
const KRL_MAGIC: [u8; 8] = *b"SSHKRL\n\0";

/// PROTOCOL.krl §1: `uint32 KRL_FORMAT_VERSION`; readers refuse any other.
const KRL_FORMAT_VERSION: u32 = 1;

/// PROTOCOL.krl §1: the section types jitca emits.
const KRL_SECTION_CERTIFICATES: u8 = 1;
const KRL_SECTION_FINGERPRINT_SHA256: u8 = 5;

/// What a KRL revokes, as the caller has gathered it.
#[derive(Debug, Clone, Default)]
pub struct KrlSpec {
    /// `krl_version`: must grow each time the KRL changes (unix time will do).
    pub version: u64,
    /// `generated_date`, in unix seconds.
    pub generated_date: u64,
    /// A free-text label shown by `ssh-keygen -Q -l`; must hold no NUL byte.
    pub comment: String,
    /// Per CA public key: the revoked serials of certificates it signed.
    /// Serial 0 is ignored (OpenSSH never matches it, and refuses a KRL
    /// that lists it); duplicates and repeated CA keys are merged.
    pub ca_serials: Vec<(PublicKey, Vec<u64>)>,
    /// Plain public keys revoked outright, such as a disabled device's key.
    /// OpenSSH compares the fingerprint of a certificate's plain key too, so
    /// this also revokes every certificate issued for the key.
    pub keys: Vec<PublicKey>,
    /// CA keys whose every certificate is revoked (a compromised CA). The CA
    /// key is listed like a revoked plain key: OpenSSH checks a
    /// certificate's signing key against the KRL as well as the certificate
    /// itself, and refuses the certificate when its CA is revoked.
    pub revoked_cas: Vec<PublicKey>,
}

/// Why a KRL could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum KrlError {
    /// PROTOCOL.krl §1: the comment is read as a C string.
    #[error(
        "the KRL comment holds a NUL byte at byte {offset}, which OpenSSH refuses to read; remove it"
    )]
    CommentHasNul {
        /// Where the first NUL byte is.
        offset: usize,
    },
    /// The CA key of a certificate section has no wire encoding.
    #[error(
        "cannot encode the {algorithm} CA public key for the KRL: {source}; check that CA's public key"
    )]
    CaKeyEncoding {
        /// The CA key's algorithm name.
        algorithm: String,
        /// What the encoder said.
        source: russh::keys::ssh_key::Error,
    },
    /// A section outgrew the 32-bit length of an SSH `string`.
    #[error(
        "a KRL section would be {bytes} bytes, more than an SSH string can hold; \
         revoke the CA key instead of its serials"
    )]
    SectionTooLarge {
        /// The section's size.
        bytes: usize,
    },
}

/// Encodes `spec` as an OpenSSH KRL (PROTOCOL.krl). The output depends only
/// on what is revoked, not on the order it was given in.
///
/// Known limit: the fingerprint section needs hosts running OpenSSH 7.9 or
/// later (where KRL SHA256 fingerprints arrived).
pub fn encode(spec: &KrlSpec) -> Result<Vec<u8>, KrlError> {
    let mut out = Writer::default();

    // PROTOCOL.krl §1: the header. No flags are defined, and "reserved" is
    // an extension field whose contents are ignored: both are left empty.
    if let Some(offset) = spec.comment.bytes().position(|b| b == 0) {
        return Err(KrlError::CommentHasNul { offset });
    }
    out.bytes(&KRL_MAGIC);
    out.u32(KRL_FORMAT_VERSION);
    out.u64(spec.version);
    out.u64(spec.generated_date);
    out.u64(0);
    out.string(&[])?;
    out.string(spec.comment.as_bytes())?;

    // PROTOCOL.krl §2: one certificate section per CA, keyed by the CA's
    // wire-format public key. A repeated CA key is merged into one section.
    let mut by_ca: BTreeMap<Vec<u8>, Vec<u64>> = BTreeMap::new();
    for (ca, revoked) in &spec.ca_serials {
        let blob = ca.to_bytes().map_err(|source| KrlError::CaKeyEncoding {
            algorithm: ca.algorithm().to_string(),
            source,
        })?;
        by_ca.entry(blob).or_default().extend_from_slice(revoked);
    }
    for (blob, revoked) in &by_ca {
        let subsections = serials::encode(revoked)?;
        if subsections.is_empty() {
            continue;
        }
        let mut section = Writer::default();
        section.string(blob)?;
        // PROTOCOL.krl §2: "a reserved field whose contents is currently
        // ignored" follows the CA key; empty, as OpenSSH writes it.
        section.string(&[])?;
        section.bytes(&subsections);
        out.u8(KRL_SECTION_CERTIFICATES);
        out.string(&section.0)?;
    }

    // PROTOCOL.krl §4: the SHA256 hash of each plain key blob, at least one
    // per section, "in numeric order, treating each hash as a big-endian
    // integer" — bytewise order for hashes of one length.
    let hashes: BTreeSet<Vec<u8>> = spec
        .keys
        .iter()
        .chain(&spec.revoked_cas)
        .map(|key| key.fingerprint(HashAlg::Sha256).as_bytes().to_vec())
        .collect();
    if !hashes.is_empty() {
        let mut section = Writer::default();
        for hash in &hashes {
            section.string(hash)?;
        }
        out.u8(KRL_SECTION_FINGERPRINT_SHA256);
        out.string(&section.0)?;
    }
    Ok(out.0)
}

/// Replaces the file at `path` with `bytes` so that a reader sees either the
/// old file or the new one, whole, and the new one survives a crash once
/// this returns: a fresh temporary file in the same directory (created
/// exclusively, mode 0644), written and synced, renamed over `path`, and
/// the directory synced.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} does not name a file; give a file path for the KRL",
                path.display()
            ),
        )
    })?;
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let (temp, mut file) = create_temp(dir, &name.to_string_lossy())?;

    let result = (|| {
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&temp, path)?;
        File::open(dir)?.sync_all()
    })();
    if let Err(error) = result {
        // After a failed rename the temporary file is still there; after a
        // failed directory sync it is already gone and this does nothing.
        let _ = fs::remove_file(&temp);
        return Err(io::Error::new(
            error.kind(),
            format!("cannot replace {}: {error}", path.display()),
        ));
    }
    Ok(())
}

/// Creates `.NAME.PID.N.tmp` in `dir`, never opening an existing file.
fn create_temp(dir: &Path, name: &str) -> io::Result<(PathBuf, File)> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    const ATTEMPTS: usize = 16;

    let mut last = None;
    for _ in 0..ATTEMPTS {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let temp = dir.join(format!(".{name}.{}.{n}.tmp", std::process::id()));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&temp)
        {
            Ok(file) => {
                // The umask may have narrowed the mode: `sshd` and the
                // operator's tools must be able to read the KRL.
                if let Err(error) = file.set_permissions(fs::Permissions::from_mode(0o644)) {
                    let _ = fs::remove_file(&temp);
                    return Err(io::Error::new(
                        error.kind(),
                        format!("cannot make {} readable: {error}", temp.display()),
                    ));
                }
                return Ok((temp, file));
            }
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => last = Some(error),
            Err(error) => {
                return Err(io::Error::new(
                    error.kind(),
                    format!("cannot create {}: {error}", temp.display()),
                ));
            }
        }
    }
    let error = last.unwrap_or_else(|| io::Error::from(io::ErrorKind::AlreadyExists));
    Err(io::Error::new(
        error.kind(),
        format!(
            "cannot create a temporary file beside {name} in {}: {error}; remove stale .{name}.*.tmp files",
            dir.display()
        ),
    ))
}

/// Big-endian SSH wire writes (RFC 4251 §5) into a byte vector.
#[derive(Debug, Default)]
struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }

    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }

    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }

    fn bytes(&mut self, v: &[u8]) {
        self.0.extend_from_slice(v);
    }

    /// An SSH `string`: a `uint32` length, then the bytes.
    fn string(&mut self, v: &[u8]) -> Result<(), KrlError> {
        let len =
            u32::try_from(v.len()).map_err(|_| KrlError::SectionTooLarge { bytes: v.len() })?;
        self.u32(len);
        self.bytes(v);
        Ok(())
    }
}

#[cfg(test)]
mod openssh_tests;

#[cfg(test)]
mod tests {
    use super::super::testutil::fixture;
    use super::*;

    /// A key fixture from `tests/data/keys`.
    fn key(name: &str) -> PublicKey {
        let line = fs::read_to_string(fixture(name)).expect("read fixture");
        PublicKey::from_openssh(line.trim()).expect("parse fixture")
    }

    const CA: &str = "ed25519.pub";

    #[test]
    fn header_follows_protocol_krl_section_1() {
        let spec = KrlSpec {
            version: 7,
            generated_date: 0x0102_0304,
            comment: "jitca".into(),
            ..KrlSpec::default()
        };
        let bytes = encode(&spec).expect("encode");
        let mut expected = b"SSHKRL\n\0".to_vec();
        expected.extend_from_slice(&1u32.to_be_bytes());
        expected.extend_from_slice(&7u64.to_be_bytes());
        expected.extend_from_slice(&0x0102_0304u64.to_be_bytes());
        expected.extend_from_slice(&0u64.to_be_bytes());
        expected.extend_from_slice(&0u32.to_be_bytes());
        expected.extend_from_slice(&5u32.to_be_bytes());
        expected.extend_from_slice(b"jitca");
        assert_eq!(bytes, expected);
    }

    #[test]
    fn certificate_section_holds_ca_blob_reserved_and_one_list() {
        let ca = key(CA);
        let blob = ca.to_bytes().expect("blob");
        let spec = KrlSpec {
            ca_serials: vec![(ca, vec![5])],
            ..KrlSpec::default()
        };
        let bytes = encode(&spec).expect("encode");
        let header = encode(&KrlSpec::default()).expect("encode").len();

        let mut inner = (blob.len() as u32).to_be_bytes().to_vec();
        inner.extend_from_slice(&blob);
        inner.extend_from_slice(&0u32.to_be_bytes());
        inner.push(0x20);
        inner.extend_from_slice(&8u32.to_be_bytes());
        inner.extend_from_slice(&5u64.to_be_bytes());
        let mut expected = vec![1];
        expected.extend_from_slice(&(inner.len() as u32).to_be_bytes());
        expected.extend_from_slice(&inner);
        assert_eq!(&bytes[header..], &expected[..]);
    }

    #[test]
    fn ca_with_only_serial_zero_gets_no_section() {
        let spec = KrlSpec {
            ca_serials: vec![(key(CA), vec![0, 0])],
            ..KrlSpec::default()
        };
        assert_eq!(
            encode(&spec).expect("encode"),
            encode(&KrlSpec::default()).expect("encode")
        );
    }

    #[test]
    fn repeated_ca_and_input_order_do_not_change_the_output() {
        let one = KrlSpec {
            ca_serials: vec![(key(CA), vec![3, 9, 4]), (key(CA), vec![5, 3])],
            ..KrlSpec::default()
        };
        let two = KrlSpec {
            ca_serials: vec![(key(CA), vec![9, 5, 4, 3])],
            ..KrlSpec::default()
        };
        assert_eq!(encode(&one).expect("one"), encode(&two).expect("two"));
    }

    #[test]
    fn fingerprints_are_sorted_and_deduplicated() {
        let other = "ecdsa-p384.pub";
        let spec = KrlSpec {
            keys: vec![key(other), key(CA), key(other)],
            revoked_cas: vec![key(CA)],
            ..KrlSpec::default()
        };
        let bytes = encode(&spec).expect("encode");
        let header = encode(&KrlSpec::default()).expect("encode").len();
        let section = &bytes[header..];
        assert_eq!(section[0], KRL_SECTION_FINGERPRINT_SHA256);
        assert_eq!(section.len(), 1 + 4 + 2 * (4 + 32));
        let first = &section[9..41];
        let second = &section[45..77];
        assert!(first < second, "hashes must be in numeric order");
    }

    #[test]
    fn comment_with_nul_is_refused() {
        let spec = KrlSpec {
            comment: "a\0b".into(),
            ..KrlSpec::default()
        };
        assert!(matches!(
            encode(&spec),
            Err(KrlError::CommentHasNul { offset: 1 })
        ));
    }

    #[test]
    fn write_atomically_replaces_the_file_with_mode_0644_and_no_leftovers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("revoked.krl");
        write_atomically(&path, b"first").expect("first write");
        write_atomically(&path, b"second").expect("second write");
        assert_eq!(fs::read(&path).expect("read"), b"second");
        let mode = fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        let names: Vec<_> = fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("revoked.krl")]);
    }

    #[test]
    fn write_atomically_into_a_missing_directory_fails_naming_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("missing").join("revoked.krl");
        let error = write_atomically(&path, b"x").expect_err("must fail");
        assert_eq!(error.kind(), io::ErrorKind::NotFound);
        assert!(error.to_string().contains("missing"), "{error}");
    }
}
