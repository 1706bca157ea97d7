//! Subject keys: the public keys enrolled as devices, which certificates are
//! issued for.
//!
//! An enrolment file must hold exactly one plain OpenSSH public key line
//! (`TYPE BASE64 [COMMENT]`). Anything that would mean something other than
//! what a certificate can carry is refused with one message naming the file
//! and the fix: `authorized_keys` options, certificates, a type word that
//! disagrees with the key inside, weak or unknown algorithms.

use std::fs::File;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use russh::keys::{HashAlg, PublicKey};

use super::algorithm::{
    ACCEPTED_ALGORITHMS, ACCEPTED_HINT, AlgorithmRefusal, CERT_SUFFIX, MIN_RSA_BITS,
    check_algorithm,
};
use super::files::{CappedReadError, read_capped_file};

/// The largest enrolment file read: a 16384-bit RSA key line fits easily.
pub const MAX_KEY_FILE_BYTES: u64 = 16 * 1024;

/// A parsed, accepted subject key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectKey {
    /// The key, with its comment stripped.
    pub key: PublicKey,
    /// The comment from the key line, kept only as a label; empty if none.
    pub comment: String,
}

impl SubjectKey {
    /// The `SHA256:...` fingerprint, as `ssh-keygen -l` prints it.
    pub fn fingerprint(&self) -> String {
        self.key.fingerprint(HashAlg::Sha256).to_string()
    }

    /// The algorithm name, e.g. `ssh-ed25519`.
    pub fn algorithm(&self) -> String {
        self.key.algorithm().as_str().to_string()
    }

    /// The key line without a comment: `TYPE BASE64`.
    ///
    /// Re-encoding a key that was decoded cannot fail in practice; if it ever
    /// did, the result would be empty rather than a wrong key.
    pub fn openssh(&self) -> String {
        self.key.to_openssh().unwrap_or_default()
    }
}

/// Why an enrolment key was refused. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum SubjectKeyError {
    #[error("cannot read public key file {file}: {error}; check the path and its permissions")]
    Read { file: String, error: std::io::Error },

    #[error(
        "public key file {file} is {size} bytes, over the limit of {cap}: give the .pub file that holds one key line"
    )]
    TooLarge { file: String, size: u64, cap: u64 },

    #[error(
        "public key input {file} is longer than the limit of {cap} bytes: give the .pub file that holds one key line"
    )]
    TooLongStream { file: String, cap: u64 },

    #[error(
        "public key file {file} is not text: give the .pub file, one line such as `ssh-ed25519 AAAA... comment`"
    )]
    NotText { file: String },

    #[error(
        "cannot parse public key file {file}: it holds no key; give the .pub file, one line such as `ssh-ed25519 AAAA... comment`"
    )]
    Empty { file: String },

    #[error(
        "{file} is a private key: never hand it over; enrol its public half, the .pub file beside it"
    )]
    PrivateKey { file: String },

    #[error(
        "public key file {file} holds {count} key lines: enrol one key per device, one per file"
    )]
    SeveralKeys { file: String, count: usize },

    #[error(
        "public key line in {file} contains a control character: copy the .pub file again as plain text"
    )]
    ControlCharacter { file: String },

    #[error(
        "public key line in {file} starts with authorized_keys options {options:?}: options would silently not carry into a certificate; remove them and put restrictions in the role's policy"
    )]
    Options { file: String, options: String },

    #[error(
        "cannot parse public key file {file}: the line starts with {word:?}, not a key type; expected a line such as `ssh-ed25519 AAAA... comment`"
    )]
    NoKeyType { file: String, word: String },

    #[error(
        "{file} holds a certificate ({kind}), not a key: a certificate is not a key that can be certified; enrol the plain public key instead"
    )]
    Certificate { file: String, kind: String },

    #[error(
        "cannot parse public key file {file}: the key is not valid base64; copy the .pub file again unchanged"
    )]
    BadBase64 { file: String },

    #[error("cannot parse public key file {file}: {detail}; copy the .pub file again unchanged")]
    Malformed { file: String, detail: String },

    #[error(
        "public key line in {file} says {word:?} but the key inside is {inner:?}: the line was edited or pieced together; copy the .pub file again unchanged"
    )]
    TypeMismatch {
        file: String,
        word: String,
        inner: String,
    },

    #[error("key type {algorithm} in {file} is not accepted: {hint}")]
    Unsupported {
        file: String,
        algorithm: String,
        hint: &'static str,
    },

    #[error(
        "RSA key in {file} has {bits} bits, below the minimum of {min}: generate a new key, e.g. `ssh-keygen -t ed25519`"
    )]
    RsaTooSmall { file: String, bits: u32, min: u32 },
}

/// Reads and parses an enrolment file. Files over [`MAX_KEY_FILE_BYTES`] are
/// refused from their size before being read, and at most that many bytes
/// (plus one) are ever read, so a pipe or growing file is capped too.
pub fn read_subject_key(path: &Path) -> Result<SubjectKey, SubjectKeyError> {
    let file_name = path.display().to_string();
    let read_err = |error| SubjectKeyError::Read {
        file: file_name.clone(),
        error,
    };

    let file = File::open(path).map_err(read_err)?;
    let bytes = read_capped_file(&file, MAX_KEY_FILE_BYTES).map_err(|e| match e {
        CappedReadError::Io(error) => read_err(error),
        CappedReadError::TooLarge { size: Some(size) } => SubjectKeyError::TooLarge {
            file: file_name.clone(),
            size,
            cap: MAX_KEY_FILE_BYTES,
        },
        CappedReadError::TooLarge { size: None } => SubjectKeyError::TooLongStream {
            file: file_name.clone(),
            cap: MAX_KEY_FILE_BYTES,
        },
    })?;
    parse_subject_key(&file_name, &bytes)
}

/// Parses the contents of an enrolment file; `source` names it in messages.
///
/// Blank lines and `#` comment lines are ignored; exactly one key line must
/// remain. Line endings (LF or CRLF) and surrounding blanks are not part of
/// the key.
pub fn parse_subject_key(source: &str, bytes: &[u8]) -> Result<SubjectKey, SubjectKeyError> {
    let file = || source.to_string();
    if bytes.len() as u64 > MAX_KEY_FILE_BYTES {
        return Err(SubjectKeyError::TooLarge {
            file: file(),
            size: bytes.len() as u64,
            cap: MAX_KEY_FILE_BYTES,
        });
    }
    let text = std::str::from_utf8(bytes).map_err(|_| SubjectKeyError::NotText { file: file() })?;
    if text.trim_start().starts_with("-----BEGIN") && text.contains("PRIVATE KEY-----") {
        return Err(SubjectKeyError::PrivateKey { file: file() });
    }

    let lines: Vec<&str> = text
        .split('\n')
        .map(|l| l.trim_matches(|c| matches!(c, ' ' | '\t' | '\r')))
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let line = match lines.as_slice() {
        [] => return Err(SubjectKeyError::Empty { file: file() }),
        [one] => *one,
        many => {
            return Err(SubjectKeyError::SeveralKeys {
                file: file(),
                count: many.len(),
            });
        }
    };
    if line.chars().any(|c| c.is_control() && c != '\t') {
        return Err(SubjectKeyError::ControlCharacter { file: file() });
    }
    parse_key_line(source, line)
}

/// Parses one non-blank key line.
fn parse_key_line(source: &str, line: &str) -> Result<SubjectKey, SubjectKeyError> {
    let file = || source.to_string();
    let (word, rest) = split_word(line);

    // An authorized_keys line may start with options; sshd skips them to
    // find the key. A certificate cannot carry them, so say so instead of
    // dropping them.
    if !looks_like_key_type(word) {
        let mut remaining = rest;
        while !remaining.is_empty() {
            let (next, after) = split_word(remaining);
            if looks_like_key_type(next) {
                let options = line[..line.len() - remaining.len()].trim_end();
                return Err(SubjectKeyError::Options {
                    file: file(),
                    options: options.chars().take(80).collect(),
                });
            }
            remaining = after;
        }
        return Err(SubjectKeyError::NoKeyType {
            file: file(),
            word: word.chars().take(40).collect(),
        });
    }
    if word.ends_with(CERT_SUFFIX) {
        return Err(SubjectKeyError::Certificate {
            file: file(),
            kind: word.to_string(),
        });
    }

    let (data, comment) = split_word(rest);
    if data.is_empty() {
        return Err(SubjectKeyError::Malformed {
            file: file(),
            detail: format!("no key data follows the type word {word:?}"),
        });
    }
    let blob = BASE64
        .decode(data)
        .map_err(|_| SubjectKeyError::BadBase64 { file: file() })?;

    // The blob starts with its own type name (RFC 4253 section 6.6); the
    // word in front of it must agree.
    let inner = inner_type(&blob).ok_or_else(|| SubjectKeyError::Malformed {
        file: file(),
        detail: "the key data is truncated before its type name".to_string(),
    })?;
    if inner.ends_with(CERT_SUFFIX) {
        return Err(SubjectKeyError::Certificate {
            file: file(),
            kind: inner,
        });
    }
    if inner != word {
        return Err(SubjectKeyError::TypeMismatch {
            file: file(),
            word: word.to_string(),
            inner,
        });
    }
    if !ACCEPTED_ALGORITHMS.contains(&word) {
        return Err(SubjectKeyError::Unsupported {
            file: file(),
            algorithm: word.to_string(),
            hint: ACCEPTED_HINT,
        });
    }

    let key = PublicKey::from_bytes(&blob).map_err(|e| SubjectKeyError::Malformed {
        file: file(),
        detail: format!("the {word} key data is invalid ({e})"),
    })?;
    check_algorithm(key.key_data()).map_err(|refusal| match refusal {
        AlgorithmRefusal::Certificate(kind) => SubjectKeyError::Certificate { file: file(), kind },
        AlgorithmRefusal::Unsupported(algorithm) => SubjectKeyError::Unsupported {
            file: file(),
            algorithm,
            hint: ACCEPTED_HINT,
        },
        AlgorithmRefusal::RsaTooSmall(bits) => SubjectKeyError::RsaTooSmall {
            file: file(),
            bits,
            min: MIN_RSA_BITS,
        },
    })?;

    Ok(SubjectKey {
        key,
        comment: comment.to_string(),
    })
}

/// Splits off the first blank-separated word; the rest has its leading
/// blanks removed.
fn split_word(s: &str) -> (&str, &str) {
    match s.find([' ', '\t']) {
        Some(i) => (&s[..i], s[i..].trim_start_matches([' ', '\t'])),
        None => (s, ""),
    }
}

/// True if and only if `word` has the shape of an SSH key type name, known
/// or not (`ssh-...`, `ecdsa-...`, `sk-...`, or `...@openssh.com`).
fn looks_like_key_type(word: &str) -> bool {
    !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'@'))
        && (word.starts_with("ssh-")
            || word.starts_with("ecdsa-")
            || word.starts_with("sk-")
            || word.ends_with("@openssh.com"))
}

/// The type name at the start of a key blob (an SSH `string`), if it has one
/// that is text.
fn inner_type(blob: &[u8]) -> Option<String> {
    let len_bytes: [u8; 4] = blob.get(..4)?.try_into().ok()?;
    let len = usize::try_from(u32::from_be_bytes(len_bytes)).ok()?;
    let name = blob.get(4..4usize.checked_add(len)?)?;
    String::from_utf8(name.to_vec()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_private_key_is_refused_as_such() {
        let pem = b"-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n";
        let e = parse_subject_key("id_ed25519", pem).unwrap_err();
        assert!(matches!(e, SubjectKeyError::PrivateKey { .. }), "{e}");
        assert!(e.to_string().contains(".pub"), "{e}");
    }
    use crate::ca::testutil::{fixture, sk_ed25519_line, ssh_keygen, ssh_string};

    fn refusal(name: &str) -> (SubjectKeyError, String) {
        let err = read_subject_key(&fixture(name)).expect_err(name);
        let msg = err.to_string();
        assert!(msg.contains(name), "message does not name the file: {msg}");
        (err, msg)
    }

    #[test]
    fn ed25519_is_accepted_and_its_comment_kept_as_a_label() {
        let key = read_subject_key(&fixture("ed25519.pub")).expect("accepted");
        assert_eq!(key.comment, "dev laptop key");
        assert_eq!(key.algorithm(), "ssh-ed25519");
        assert_eq!(
            key.fingerprint(),
            "SHA256:5dzJ6Cg2gkFVMXhS4GvqS4GnhxqmoKBWOje4BQCNNOM"
        );
        assert_eq!(
            key.openssh(),
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBpqvfvYLaVmBWI+KnBB371awpA3Jec/B9d93bs+mjWo"
        );
        assert!(key.key.comment().is_empty());
    }

    #[test]
    fn crlf_line_ending_is_not_part_of_the_key() {
        let plain = read_subject_key(&fixture("ed25519.pub")).expect("plain");
        let crlf = read_subject_key(&fixture("ed25519-crlf.pub")).expect("crlf");
        assert_eq!(plain, crlf);
    }

    #[test]
    fn ecdsa_and_rsa_3072_are_accepted() {
        for (name, alg, fp) in [
            (
                "ecdsa-p384.pub",
                "ecdsa-sha2-nistp384",
                "SHA256:PfRiggyu7l5HGhzNwjPqzBgS8Gp9fHqLdMoxJCRh0P4",
            ),
            (
                "ecdsa-p521.pub",
                "ecdsa-sha2-nistp521",
                "SHA256:rek28/VSgpuitaQCrAgj5to4HTRuuOZRIb3awk2u6zI",
            ),
            (
                "rsa-3072.pub",
                "ssh-rsa",
                "SHA256:3uaS/ScHTPVY7WP6UJ2dznJeDzvMx4QXgnuDmcsZ+b0",
            ),
        ] {
            let key = read_subject_key(&fixture(name)).expect(name);
            assert_eq!(key.algorithm(), alg);
            assert_eq!(key.fingerprint(), fp);
        }
    }

    #[test]
    fn rsa_1024_is_refused_naming_size_and_minimum() {
        let (err, msg) = refusal("rsa-1024.pub");
        assert!(matches!(
            err,
            SubjectKeyError::RsaTooSmall { bits: 1024, .. }
        ));
        assert!(msg.contains("1024 bits") && msg.contains("2048"), "{msg}");
    }

    #[test]
    fn authorized_keys_options_are_refused() {
        let (err, msg) = refusal("ed25519-with-options.pub");
        assert!(matches!(err, SubjectKeyError::Options { .. }));
        assert!(
            msg.contains("would silently not carry into a certificate"),
            "{msg}"
        );
        for line in [
            "no-pty ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBpqvfvYLaVmBWI+KnBB371awpA3Jec/B9d93bs+mjWo",
            "no-pty,command=\"id\" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBpqvfvYLaVmBWI+KnBB371awpA3Jec/B9d93bs+mjWo x",
            "restrict sk-ssh-ed25519@openssh.com AAAA",
        ] {
            let err = parse_subject_key("t.pub", line.as_bytes()).expect_err(line);
            assert!(
                matches!(err, SubjectKeyError::Options { .. }),
                "{line}: {err}"
            );
        }
    }

    #[test]
    fn certificate_is_refused() {
        let (err, msg) = refusal("a-certificate.pub");
        assert!(matches!(err, SubjectKeyError::Certificate { .. }));
        assert!(msg.contains("not a key that can be certified"), "{msg}");
    }

    #[test]
    fn certificate_blob_behind_a_plain_type_word_is_refused() {
        let cert = std::fs::read_to_string(fixture("a-certificate.pub")).expect("read");
        let (_, rest) = split_word(cert.trim());
        let line = format!("ssh-ed25519 {rest}");
        let err = parse_subject_key("t.pub", line.as_bytes()).expect_err("cert");
        assert!(matches!(err, SubjectKeyError::Certificate { .. }), "{err}");
    }

    #[test]
    fn type_word_disagreeing_with_the_key_is_refused_naming_both() {
        let (err, msg) = refusal("type-mismatch.pub");
        assert!(matches!(err, SubjectKeyError::TypeMismatch { .. }));
        assert!(
            msg.contains("ssh-rsa") && msg.contains("ssh-ed25519"),
            "{msg}"
        );
    }

    #[test]
    fn bad_base64_is_a_parse_error_naming_the_file() {
        let (err, msg) = refusal("bad-base64.pub");
        assert!(matches!(err, SubjectKeyError::BadBase64 { .. }));
        assert!(msg.starts_with("cannot parse public key file"), "{msg}");
    }

    #[test]
    fn empty_and_blank_files_are_parse_errors_naming_the_file() {
        let (err, msg) = refusal("empty.pub");
        assert!(matches!(err, SubjectKeyError::Empty { .. }));
        assert!(msg.starts_with("cannot parse public key file"), "{msg}");
        for blank in ["", "   \n\r\n\t\n", "# only a comment\n\n"] {
            let err = parse_subject_key("blank.pub", blank.as_bytes()).expect_err(blank);
            assert!(matches!(err, SubjectKeyError::Empty { .. }), "{blank:?}");
        }
    }

    #[test]
    fn huge_file_is_refused_for_its_size_before_reading() {
        let (err, msg) = refusal("huge.pub");
        assert!(
            matches!(
                err,
                SubjectKeyError::TooLarge {
                    size: 400012,
                    cap: 16384,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(msg.contains("400012") && msg.contains("16384"), "{msg}");
        let big = vec![b'A'; 20_000];
        assert!(matches!(
            parse_subject_key("big.pub", &big),
            Err(SubjectKeyError::TooLarge { .. })
        ));
    }

    #[test]
    fn comments_and_blank_lines_around_one_key_are_ignored() {
        let text = "# laptop\n\n  ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBpqvfvYLaVmBWI+KnBB371awpA3Jec/B9d93bs+mjWo  a  b \r\n\n";
        let key = parse_subject_key("t.pub", text.as_bytes()).expect("accepted");
        assert_eq!(key.comment, "a  b");
    }

    #[test]
    fn two_key_lines_are_refused() {
        let one = std::fs::read_to_string(fixture("ed25519.pub")).expect("read");
        let two = format!("{one}{one}");
        let err = parse_subject_key("two.pub", two.as_bytes()).expect_err("two");
        assert!(matches!(err, SubjectKeyError::SeveralKeys { count: 2, .. }));
    }

    #[test]
    fn dsa_and_unknown_types_are_refused_by_name() {
        // A DSA blob only needs its type name for the refusal.
        let blob = BASE64.encode(b"\x00\x00\x00\x07ssh-dss\x00\x00\x00\x01\x01");
        let err =
            parse_subject_key("dsa.pub", format!("ssh-dss {blob}").as_bytes()).expect_err("dsa");
        assert!(err.to_string().contains("ssh-dss"), "{err}");
        assert!(matches!(err, SubjectKeyError::Unsupported { .. }));

        let blob = BASE64.encode(b"\x00\x00\x00\x07ssh-foo");
        let err =
            parse_subject_key("x.pub", format!("ssh-foo {blob}").as_bytes()).expect_err("unknown");
        assert!(err.to_string().contains("ssh-foo"), "{err}");
    }

    #[test]
    fn line_without_a_key_type_is_a_parse_error() {
        let err = parse_subject_key("x.pub", b"hello world").expect_err("no type");
        assert!(matches!(err, SubjectKeyError::NoKeyType { .. }), "{err}");
        let err = parse_subject_key("x.pub", b"ssh-ed25519").expect_err("no data");
        assert!(matches!(err, SubjectKeyError::Malformed { .. }), "{err}");
    }

    #[test]
    fn control_characters_and_non_text_are_refused() {
        let line = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBpqvfvYLaVmBWI+KnBB371awpA3Jec/B9d93bs+mjWo a\x1b[2Jb";
        assert!(matches!(
            parse_subject_key("t.pub", line.as_bytes()),
            Err(SubjectKeyError::ControlCharacter { .. })
        ));
        assert!(matches!(
            parse_subject_key("t.pub", b"ssh-ed25519 \xff\xfe"),
            Err(SubjectKeyError::NotText { .. })
        ));
    }

    #[test]
    fn truncated_key_data_is_refused() {
        // Valid base64 of an ed25519 blob cut short.
        let err = parse_subject_key("t.pub", b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBpq")
            .expect_err("truncated");
        assert!(
            matches!(
                err,
                SubjectKeyError::Malformed { .. } | SubjectKeyError::BadBase64 { .. }
            ),
            "{err}"
        );
    }

    #[test]
    fn fido_and_p256_keys_are_accepted() {
        let key = parse_subject_key("sk.pub", sk_ed25519_line().as_bytes()).expect("sk-ed25519");
        assert_eq!(key.algorithm(), "sk-ssh-ed25519@openssh.com");
        assert_eq!(key.comment, "token");

        // A P-256 key from ssh-keygen, and the same point as a FIDO key.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("p256");
        let status = ssh_keygen()
            .args(["-q", "-t", "ecdsa", "-b", "256", "-N", "", "-f"])
            .arg(&path)
            .status()
            .expect("run ssh-keygen");
        assert!(status.success());
        let p256 = read_subject_key(&path.with_extension("pub")).expect("p256");
        assert_eq!(p256.algorithm(), "ecdsa-sha2-nistp256");

        let blob = BASE64
            .decode(p256.openssh().split(' ').nth(1).expect("b64"))
            .expect("b64");
        let name_len = 4 + "ecdsa-sha2-nistp256".len();
        let mut sk = ssh_string(b"sk-ecdsa-sha2-nistp256@openssh.com");
        sk.extend_from_slice(&blob[name_len..]);
        sk.extend(ssh_string(b"ssh:"));
        let line = format!("sk-ecdsa-sha2-nistp256@openssh.com {}", BASE64.encode(sk));
        let key = parse_subject_key("sk.pub", line.as_bytes()).expect("sk-ecdsa");
        assert_eq!(key.algorithm(), "sk-ecdsa-sha2-nistp256@openssh.com");
        assert_eq!(key.comment, "");
    }
}
