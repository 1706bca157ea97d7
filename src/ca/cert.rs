//! The certificate builder: turns a checked grant into a signed OpenSSH user
//! certificate (PROTOCOL.certkeys).
//!
//! Everything the builder is given is checked again here, whoever checked it
//! before: the signing step is the last place a bad serial, an empty
//! principal list or an unbounded validity window can be stopped.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rand::Rng;
use russh::keys::ssh_key::certificate::{Builder, CertType};
use russh::keys::{Certificate, PublicKey};

use super::algorithm::check_algorithm;
use super::keys::CaKey;
use super::options::{OptionError, check_critical_options, check_extensions, check_principals};

/// The nonce length: PROTOCOL.certkeys asks for a CA-provided random value
/// so that signatures cannot be chosen by the subject.
const NONCE_BYTES: usize = 32;

/// The longest key id accepted, in bytes.
const MAX_KEY_ID_BYTES: usize = 512;

/// The latest `valid_before` emitted. OpenSSH keeps times as signed 64-bit
/// values, and `u64::MAX` means "forever", which jitca never issues.
const LATEST: u64 = i64::MAX as u64;

/// What to certify, already decided by policy.
#[derive(Debug, Clone)]
pub struct CertRequest<'a> {
    /// The enrolled device key the certificate is for.
    pub subject: &'a PublicKey,
    /// Unique and never 0 (see [`CertError::ZeroSerial`]).
    pub serial: u64,
    /// Built with [`key_id`].
    pub key_id: String,
    /// From the role, never from the requester.
    pub principals: &'a [String],
    /// Unix seconds; from [`validity`].
    pub valid_after: u64,
    /// Unix seconds; later than `valid_after`, at most `i64::MAX`.
    pub valid_before: u64,
    /// Only `force-command`, `source-address` and `verify-required`.
    pub critical_options: &'a BTreeMap<String, String>,
    /// Flag extensions such as `permit-pty`.
    pub extensions: &'a BTreeSet<String>,
}

/// Why a certificate was not issued.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error(
        "serial 0 means \"not numbered\" and would make revocation by serial hit the wrong certificates: allocate serials from 1"
    )]
    ZeroSerial,

    #[error(
        "key id {key_id:?} is not safe: use 1 to 512 of A-Z a-z 0-9 . _ : -, as key_id() builds"
    )]
    BadKeyId { key_id: String },

    #[error(transparent)]
    Option(#[from] OptionError),

    #[error(
        "validity window from {valid_after} to {valid_before} is empty or reversed: valid_before must be later than valid_after"
    )]
    EmptyWindow { valid_after: u64, valid_before: u64 },

    #[error(
        "valid_before {valid_before} is beyond {LATEST}: certificates never last forever; use a finite TTL"
    )]
    BeyondLatest { valid_before: u64 },

    #[error(
        "a TTL under one second issues a certificate that is never valid: give a TTL of at least 1s"
    )]
    ZeroTtl,

    #[error(
        "a TTL of {ttl_secs}s from {now} ends beyond {LATEST}: certificates never last forever; give a shorter TTL"
    )]
    TtlTooLong { now: u64, ttl_secs: u64 },

    #[error("the subject key cannot be certified: {reason}")]
    Subject { reason: String },

    #[error("signing with CA key {fingerprint} failed: {detail}")]
    Sign { fingerprint: String, detail: String },

    #[error("cannot encode certificate {key_id:?} as an OpenSSH line: {detail}")]
    Encode { key_id: String, detail: String },
}

/// Builds the key id `jitca:USER:DEVICE:ROLE:SERIAL`, which `sshd` logs for
/// every login, so a log line leads to the audit record.
///
/// The names are already restricted by [`crate::model::check_name`] to
/// `A-Z a-z 0-9 . _ -`, so the id needs no quoting and `:` separates fields
/// unambiguously. Key ids are unique because serials are (the serial is the
/// certificates table's key, and the last field of the id): the database
/// keeps no index of its own on them.
pub fn key_id(user: &str, device: &str, role: &str, serial: u64) -> String {
    format!("jitca:{user}:{device}:{role}:{serial}")
}

/// Computes a validity window: `valid_after = now - backdate` (never below
/// 0), `valid_before = now + ttl`.
///
/// Sub-second parts are dropped. Refuses a TTL under one second and a
/// window ending beyond `i64::MAX` (PROTOCOL.certkeys reserves the all-ones
/// value for "forever").
pub fn validity(now: u64, backdate: Duration, ttl: Duration) -> Result<(u64, u64), CertError> {
    let ttl_secs = ttl.as_secs();
    if ttl_secs == 0 {
        return Err(CertError::ZeroTtl);
    }
    let valid_before = now
        .checked_add(ttl_secs)
        .filter(|&before| before <= LATEST)
        .ok_or(CertError::TtlTooLong { now, ttl_secs })?;
    let valid_after = now.saturating_sub(backdate.as_secs());
    Ok((valid_after, valid_before))
}

/// Signs a user certificate for `req.subject` with `ca`.
///
/// Checks, whatever was checked before: serial not 0, a safe key id,
/// principals (non-empty, at most 256, each safe), only known critical
/// options with well-formed values, known extensions, a non-empty window
/// ending by `i64::MAX`, and a subject that is an accepted plain key, not a
/// certificate. Critical options and extensions are emitted sorted by name
/// and without duplicates, as PROTOCOL.certkeys requires (the maps are
/// ordered bytewise); flag extensions carry empty data. An RSA CA signs with
/// `rsa-sha2-512`.
pub fn sign_certificate(ca: &CaKey, req: &CertRequest) -> Result<Certificate, CertError> {
    if req.serial == 0 {
        return Err(CertError::ZeroSerial);
    }
    if !key_id_is_safe(&req.key_id) {
        return Err(CertError::BadKeyId {
            key_id: req.key_id.clone(),
        });
    }
    check_principals(req.principals)?;
    check_critical_options(req.critical_options)?;
    check_extensions(req.extensions)?;
    if req.valid_before <= req.valid_after {
        return Err(CertError::EmptyWindow {
            valid_after: req.valid_after,
            valid_before: req.valid_before,
        });
    }
    if req.valid_before > LATEST {
        return Err(CertError::BeyondLatest {
            valid_before: req.valid_before,
        });
    }
    check_algorithm(req.subject.key_data()).map_err(|refusal| CertError::Subject {
        reason: refusal.to_string(),
    })?;

    let sign_err = |detail: String| CertError::Sign {
        fingerprint: ca.fingerprint().to_string(),
        detail,
    };
    let mut nonce = [0u8; NONCE_BYTES];
    rand::rng().fill_bytes(&mut nonce);

    let mut builder = Builder::new(
        nonce.to_vec(),
        req.subject.key_data().clone(),
        req.valid_after,
        req.valid_before,
    )
    .map_err(|e| sign_err(e.to_string()))?;
    build(&mut builder, req).map_err(|e| sign_err(e.to_string()))?;

    let cert = builder
        .sign(&ca.signer())
        .map_err(|e| sign_err(e.to_string()))?;
    // Fail closed: a certificate whose signature does not verify never
    // leaves. One faulty RSA-CRT signature gives the key away (Boneh,
    // DeMillo, Lipton), so RSA and ECDSA signatures are checked here. An
    // Ed25519 signature is not: its known fault attacks need the same
    // message signed twice, and no message is, since every certificate
    // carries a fresh random nonce (and a unique serial); the signing key
    // itself was checked against the key's public half when it was loaded
    // (`ed25519_signing_key`). The check would cost as much as the signature.
    if !ca.signer().is_ed25519() {
        cert.verify_signature()
            .map_err(|e| sign_err(format!("the new signature does not verify: {e}")))?;
    }
    Ok(cert)
}

/// Fills in everything after the key and window.
fn build(builder: &mut Builder, req: &CertRequest) -> Result<(), russh::keys::ssh_key::Error> {
    builder
        .serial(req.serial)?
        .key_id(req.key_id.clone())?
        .cert_type(CertType::User)?
        .comment(req.key_id.clone())?;
    for principal in req.principals {
        builder.valid_principal(principal.clone())?;
    }
    for (name, value) in req.critical_options {
        builder.critical_option(name.clone(), value.clone())?;
    }
    for name in req.extensions {
        builder.extension(name.clone(), String::new())?;
    }
    Ok(())
}

/// The certificate as one OpenSSH line, `TYPE BASE64 KEYID`, without a line
/// ending: what a requester saves as `id_ed25519-cert.pub`.
pub fn certificate_line(cert: &Certificate) -> Result<String, CertError> {
    let line = cert.to_openssh().map_err(|e| CertError::Encode {
        key_id: cert.key_id().to_string(),
        detail: e.to_string(),
    })?;
    Ok(line.trim_end().to_string())
}

/// True if and only if `id` is 1 to [`MAX_KEY_ID_BYTES`] of
/// `A-Z a-z 0-9 . _ : -`.
fn key_id_is_safe(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_KEY_ID_BYTES
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::keys::{CaAlgorithm, generate_ca_key, load_ca_key};
    use crate::ca::subject::read_subject_key;
    use crate::ca::testutil::{fixture, keygen_list, section, ssh_keygen, utc};
    use std::path::Path;

    const SUBJECTS: &[&str] = &["ed25519", "ecdsa-p384", "ecdsa-p521", "rsa-3072"];

    fn subject(name: &str) -> PublicKey {
        read_subject_key(&fixture(&format!("{name}.pub")))
            .expect("fixture accepted")
            .key
    }

    fn ed25519_ca(dir: &Path) -> CaKey {
        generate_ca_key(dir, "ca-ed", CaAlgorithm::Ed25519).expect("generate ed25519 CA")
    }

    /// An RSA CA made by OpenSSH itself (generating 4096-bit RSA in a debug
    /// build takes too long for a unit test).
    fn rsa_ca(dir: &Path) -> CaKey {
        let path = dir.join("ca-rsa");
        let status = ssh_keygen()
            .args([
                "-q",
                "-t",
                "rsa",
                "-b",
                "3072",
                "-N",
                "",
                "-C",
                "test rsa ca",
                "-f",
            ])
            .arg(&path)
            .status()
            .expect("run ssh-keygen");
        assert!(status.success());
        load_ca_key(&path).expect("load RSA CA")
    }

    struct Fields {
        principals: Vec<String>,
        options: BTreeMap<String, String>,
        extensions: BTreeSet<String>,
    }

    fn fields() -> Fields {
        Fields {
            principals: vec!["postgres".to_string(), "dba".to_string()],
            options: BTreeMap::from([
                ("force-command".to_string(), "/usr/bin/psql -X".to_string()),
                ("source-address".to_string(), "10.20.0.0/16".to_string()),
                ("verify-required".to_string(), String::new()),
            ]),
            extensions: [
                "permit-pty",
                "permit-agent-forwarding",
                "permit-X11-forwarding",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        }
    }

    fn request<'a>(subject: &'a PublicKey, f: &'a Fields, serial: u64) -> CertRequest<'a> {
        let (valid_after, valid_before) = validity(
            1_700_000_000,
            Duration::from_secs(120),
            Duration::from_secs(900),
        )
        .expect("window");
        CertRequest {
            subject,
            serial,
            key_id: key_id("alice", "alice-mbp", "prod-db", serial),
            principals: &f.principals,
            valid_after,
            valid_before,
            critical_options: &f.options,
            extensions: &f.extensions,
        }
    }

    fn check_listing(text: &str, ca: &CaKey, subject: &PublicKey, req: &CertRequest) {
        let cert_type = subject.algorithm().to_certificate_type();
        assert!(
            text.contains(&format!("Type: {cert_type} user certificate")),
            "{text}"
        );
        let subject_fp = subject
            .fingerprint(russh::keys::HashAlg::Sha256)
            .to_string();
        assert!(text.contains(&subject_fp), "{text}");
        assert!(
            text.contains(&format!("Key ID: \"{}\"", req.key_id)),
            "{text}"
        );
        assert!(
            text.contains(&format!("Serial: {}\n", req.serial)),
            "{text}"
        );
        let valid = format!(
            "Valid: from {} to {}",
            utc(req.valid_after),
            utc(req.valid_before)
        );
        assert!(text.contains(&valid), "want {valid}: {text}");

        let signing = text
            .lines()
            .find(|l| l.trim_start().starts_with("Signing CA:"))
            .expect("signing CA line");
        assert!(signing.contains(ca.fingerprint()), "{signing}");
        if ca.algorithm() == "ssh-rsa" {
            assert!(signing.ends_with("(using rsa-sha2-512)"), "{signing}");
        }

        assert_eq!(section(text, "Principals:"), ["postgres", "dba"], "{text}");
        assert_eq!(
            section(text, "Critical Options:"),
            [
                "force-command /usr/bin/psql -X",
                "source-address 10.20.0.0/16",
                "verify-required"
            ],
            "{text}"
        );
        assert_eq!(
            section(text, "Extensions:"),
            [
                "permit-X11-forwarding",
                "permit-agent-forwarding",
                "permit-pty"
            ],
            "{text}"
        );
    }

    #[test]
    fn ed25519_ca_certificates_parse_in_ssh_keygen_for_every_subject_kind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = ed25519_ca(dir.path());
        let f = fields();
        for (i, name) in SUBJECTS.iter().enumerate() {
            let key = subject(name);
            let req = request(&key, &f, 100 + i as u64);
            let cert = sign_certificate(&ca, &req).expect(name);
            check_listing(&keygen_list(dir.path(), &cert), &ca, &key, &req);
        }
    }

    #[test]
    fn rsa_ca_signs_with_rsa_sha2_512_for_every_subject_kind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = rsa_ca(dir.path());
        let f = fields();
        for (i, name) in SUBJECTS.iter().enumerate() {
            let key = subject(name);
            let req = request(&key, &f, 200 + i as u64);
            let cert = sign_certificate(&ca, &req).expect(name);
            assert_eq!(cert.signature().algorithm().as_str(), "rsa-sha2-512");
            check_listing(&keygen_list(dir.path(), &cert), &ca, &key, &req);
        }
    }

    #[test]
    fn fido_subject_certificate_parses_in_ssh_keygen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = ed25519_ca(dir.path());
        let line = crate::ca::testutil::sk_ed25519_line();
        let key = crate::ca::subject::parse_subject_key("sk.pub", line.as_bytes())
            .expect("sk key")
            .key;
        let f = fields();
        let req = request(&key, &f, 300);
        let cert = sign_certificate(&ca, &req).expect("sign");
        check_listing(&keygen_list(dir.path(), &cert), &ca, &key, &req);
    }

    #[test]
    #[ignore = "generating RSA-4096 takes 10 s or more in a debug build; run with --ignored"]
    fn generated_rsa_4096_ca_signs_with_rsa_sha2_512() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = generate_ca_key(dir.path(), "ca-rsa", CaAlgorithm::Rsa4096).expect("generate");
        let out = ssh_keygen()
            .arg("-l")
            .arg("-f")
            .arg(dir.path().join("ca-rsa"))
            .output()
            .expect("run ssh-keygen");
        let listed = String::from_utf8_lossy(&out.stdout);
        assert!(
            listed.starts_with("4096 ") && listed.contains(ca.fingerprint()),
            "{listed}"
        );

        let key = subject("ed25519");
        let f = fields();
        let req = request(&key, &f, 400);
        let cert = sign_certificate(&ca, &req).expect("sign");
        check_listing(&keygen_list(dir.path(), &cert), &ca, &key, &req);
    }

    #[test]
    fn certificate_fields_match_the_request() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = ed25519_ca(dir.path());
        let key = subject("ed25519");
        let f = fields();
        let req = request(&key, &f, 42);
        let cert = sign_certificate(&ca, &req).expect("sign");
        assert_eq!(cert.serial(), 42);
        assert_eq!(cert.cert_type(), CertType::User);
        assert_eq!(cert.key_id(), "jitca:alice:alice-mbp:prod-db:42");
        assert_eq!(cert.valid_after(), 1_700_000_000 - 120);
        assert_eq!(cert.valid_before(), 1_700_000_000 + 900);
        assert_eq!(cert.public_key(), key.key_data());
        assert!(cert.extensions().values().all(String::is_empty));
        assert!(cert.nonce().len() >= 16);

        let again = sign_certificate(&ca, &req).expect("sign again");
        assert_ne!(cert.nonce(), again.nonce(), "nonces must be random");
        // Ed25519 signatures are not checked inline: check them here.
        cert.verify_signature().expect("the signature verifies");
        again
            .verify_signature()
            .expect("the second signature verifies");
    }

    /// The refusal for the standard request after `edit`.
    fn refused_with(f: &Fields, edit: impl FnOnce(&mut CertRequest)) -> CertError {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = ed25519_ca(dir.path());
        let key = subject("ed25519");
        let mut req = request(&key, f, 1);
        edit(&mut req);
        sign_certificate(&ca, &req).expect_err("must be refused")
    }

    /// The refusal for the standard request with `edit` made to its fields.
    fn refused(edit: impl FnOnce(&mut Fields)) -> CertError {
        let mut f = fields();
        edit(&mut f);
        refused_with(&f, |_| {})
    }

    #[test]
    fn serial_zero_is_refused() {
        let err = refused_with(&fields(), |r| r.serial = 0);
        assert!(matches!(err, CertError::ZeroSerial), "{err}");
    }

    #[test]
    fn bad_principals_options_and_extensions_are_refused() {
        use OptionError as E;
        let err = refused(|f| f.principals.clear());
        assert!(matches!(err, CertError::Option(E::NoPrincipals)), "{err}");
        for bad in ["a,b", "*", "ro?t", "!x", "a b", "a\u{1}"] {
            let err = refused(|f| f.principals = vec![bad.to_string()]);
            assert!(
                matches!(err, CertError::Option(E::UnsafePrincipal { .. })),
                "{err}"
            );
        }
        let err = refused(|f| f.principals = (0..257).map(|i| format!("u{i}")).collect());
        assert!(
            matches!(err, CertError::Option(E::TooManyPrincipals { .. })),
            "{err}"
        );

        let err = refused(|f| {
            f.options.insert("permit-pty".to_string(), String::new());
        });
        assert!(
            matches!(err, CertError::Option(E::UnknownCriticalOption { .. })),
            "{err}"
        );
        let err = refused(|f| {
            f.options
                .insert("source-address".to_string(), "10.0.0.0/8 ,x".to_string());
        });
        assert!(
            matches!(err, CertError::Option(E::BadSourceAddress { .. })),
            "{err}"
        );
        let err = refused(|f| {
            f.extensions.insert("permit-ptty".to_string());
        });
        assert!(
            matches!(err, CertError::Option(E::UnknownExtension { .. })),
            "{err}"
        );
    }

    #[test]
    fn empty_reversed_or_endless_windows_are_refused() {
        for (after, before) in [(10, 10), (11, 10)] {
            let err = refused_with(&fields(), |r| {
                (r.valid_after, r.valid_before) = (after, before)
            });
            assert!(matches!(err, CertError::EmptyWindow { .. }), "{err}");
        }
        for before in [u64::MAX, LATEST + 1] {
            let err = refused_with(&fields(), |r| r.valid_before = before);
            assert!(matches!(err, CertError::BeyondLatest { .. }), "{err}");
        }
    }

    #[test]
    fn a_certificate_as_subject_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = ed25519_ca(dir.path());
        let key = subject("ed25519");
        let f = fields();
        let cert = sign_certificate(&ca, &request(&key, &f, 1)).expect("sign");
        let as_key = PublicKey::new(
            russh::keys::ssh_key::public::KeyData::Certificate(Box::new(cert)),
            "",
        );
        let err = sign_certificate(&ca, &request(&as_key, &f, 2)).expect_err("cert subject");
        assert!(matches!(err, CertError::Subject { .. }), "{err}");
    }

    #[test]
    fn unsafe_key_id_is_refused() {
        for bad in ["", "a b", "a\"b", "a\nb"] {
            let err = refused_with(&fields(), |r| r.key_id = bad.to_string());
            assert!(matches!(err, CertError::BadKeyId { .. }), "{err}");
        }
    }

    #[test]
    fn key_id_names_user_device_role_and_serial() {
        assert_eq!(
            key_id("alice", "mbp-2", "prod-db", 17),
            "jitca:alice:mbp-2:prod-db:17"
        );
        assert!(key_id_is_safe(&key_id("a.b_c", "d-e", "f", u64::MAX)));
    }

    #[test]
    fn validity_backdates_and_adds_ttl() {
        let (after, before) =
            validity(1000, Duration::from_secs(120), Duration::from_secs(900)).expect("ok");
        assert_eq!((after, before), (880, 1900));
        let (after, _) =
            validity(60, Duration::from_secs(120), Duration::from_secs(1)).expect("saturates");
        assert_eq!(after, 0);
    }

    #[test]
    fn validity_refuses_zero_ttl_and_overflow() {
        assert!(matches!(
            validity(1000, Duration::ZERO, Duration::ZERO),
            Err(CertError::ZeroTtl)
        ));
        assert!(matches!(
            validity(1000, Duration::ZERO, Duration::from_millis(999)),
            Err(CertError::ZeroTtl)
        ));
        assert!(matches!(
            validity(u64::MAX - 5, Duration::ZERO, Duration::from_secs(10)),
            Err(CertError::TtlTooLong { .. })
        ));
        assert!(matches!(
            validity(LATEST - 5, Duration::ZERO, Duration::from_secs(10)),
            Err(CertError::TtlTooLong { .. })
        ));
        let (_, before) = validity(LATEST - 10, Duration::ZERO, Duration::from_secs(10))
            .expect("exactly i64::MAX");
        assert_eq!(before, LATEST);
    }
}
