//! Hosts that follow jitca's revocations and key rotations (issue 4): a
//! real `sshd` whose `RevokedKeys` is a KRL written by jitca and whose
//! `TrustedUserCAKeys` is the output of `jitca ca trusted`, both refreshed
//! when the test says; `ssh-keygen -Q` verdicts; `jitca ca list` read back;
//! and a reader for the parts of a KRL (PROTOCOL.krl) the tests look at.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::sshd::Sshd;
use super::{COMMAND_TIMEOUT, Env, SSH_KEYGEN, current_user, describe, run, stdout};

/// PROTOCOL.krl §1: the first eight bytes of every KRL.
pub const KRL_MAGIC: &[u8; 8] = b"SSHKRL\n\0";

/// PROTOCOL.krl §1: `krl_version` and `generated_date`, the two `uint64`
/// fields after the magic and the `uint32` format version. They change
/// from one second to the next, whatever is revoked.
const HEADER_TIMES: Range<usize> = 12..28;

static HOSTS: AtomicUsize = AtomicUsize::new(0);
static REPLACED: AtomicUsize = AtomicUsize::new(0);

/// `ssh-keygen -Q -f KRL FILE...` (certificates or public keys): for each
/// file, in order, whether the KRL revokes it. Fails the test if
/// `ssh-keygen` cannot read the KRL or a file.
pub fn revoked_by(krl: &Path, files: &[&Path]) -> Vec<bool> {
    let mut cmd = Command::new(SSH_KEYGEN);
    cmd.arg("-Q").arg("-f").arg(krl).args(files);
    let out = run(&mut cmd, COMMAND_TIMEOUT);
    // 0: nothing revoked, 1: something revoked, anything else: an error.
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "ssh-keygen -Q cannot check against {}\n{}",
        krl.display(),
        describe(&out)
    );
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.len(),
        files.len(),
        "ssh-keygen -Q printed one line per file?\n{}",
        describe(&out)
    );
    files
        .iter()
        .zip(&lines)
        .map(|(file, line)| {
            let shown = file.display().to_string();
            assert!(
                line.starts_with(&shown),
                "ssh-keygen -Q line {line:?} is not about {shown}"
            );
            if line.ends_with(": REVOKED") {
                true
            } else if line.ends_with(": ok") {
                false
            } else {
                panic!("unexpected ssh-keygen -Q line {line:?}")
            }
        })
        .collect()
}

/// Fails the test, naming every wrong verdict, unless `ssh-keygen -Q`
/// reports each of REVOKED revoked by the KRL and none of NOT_REVOKED.
pub fn assert_krl_verdicts(krl: &Path, revoked: &[&Path], not_revoked: &[&Path]) {
    let all: Vec<&Path> = revoked.iter().chain(not_revoked).copied().collect();
    let verdicts = revoked_by(krl, &all);
    let mut wrong = Vec::new();
    for (i, (file, is_revoked)) in all.iter().zip(&verdicts).enumerate() {
        let should = i < revoked.len();
        if *is_revoked != should {
            let (want, got) = if should {
                ("revoked", "ok")
            } else {
                ("ok", "REVOKED")
            };
            wrong.push(format!(
                "{}: want {want}, ssh-keygen says {got}",
                file.display()
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "the KRL {} is wrong for {} of {} files:\n{}\n{}",
        krl.display(),
        wrong.len(),
        all.len(),
        wrong.join("\n"),
        krl_listing(krl)
    );
}

/// `ssh-keygen -Q -l -f KRL`: what OpenSSH reads in the KRL, for failure
/// messages.
pub fn krl_listing(krl: &Path) -> String {
    let out = run(
        Command::new(SSH_KEYGEN)
            .arg("-Q")
            .arg("-l")
            .arg("-f")
            .arg(krl),
        COMMAND_TIMEOUT,
    );
    format!("--- ssh-keygen -Q -l ---\n{}", describe(&out))
}

/// `jitca krl --out PATH`; fails the test unless it succeeds and leaves a
/// file that starts like a KRL.
pub fn write_krl(env: &Env, path: &Path) {
    let target = path.to_string_lossy();
    env.jitca_ok(&["krl", "--out", &target]);
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {target}: {e}"));
    assert!(
        bytes.starts_with(KRL_MAGIC),
        "jitca krl --out {target} wrote no KRL ({} bytes)",
        bytes.len()
    );
}

/// Replaces the file at PATH with CONTENTS the way a careful host
/// administrator does (a temporary file in the same directory, renamed over
/// it), so a concurrent `sshd` never reads half of it.
pub fn replace_file(path: &Path, contents: &[u8]) {
    let n = REPLACED.fetch_add(1, Ordering::Relaxed);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| panic!("{} names no file", path.display()));
    let temp = path.with_file_name(format!(".{name}.{n}.tmp"));
    std::fs::write(&temp, contents)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", temp.display()));
    std::fs::rename(&temp, path).unwrap_or_else(|e| {
        panic!(
            "cannot rename {} over {}: {e}",
            temp.display(),
            path.display()
        )
    });
}

/// Waits until the file at PATH exists and holds bytes other than OLD (any
/// bytes when OLD is `None`); returns them and how long it took. Fails the
/// test after `timeout`.
pub fn wait_for_change(path: &Path, old: Option<&[u8]>, timeout: Duration) -> (Vec<u8>, Duration) {
    let start = Instant::now();
    loop {
        if let Ok(bytes) = std::fs::read(path)
            && old != Some(bytes.as_slice())
        {
            return (bytes, start.elapsed());
        }
        assert!(
            start.elapsed() < timeout,
            "{} did not change within {timeout:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// KRL with its version and generation date zeroed, for comparing two KRLs
/// made at different moments from the same revocations.
pub fn without_times(krl: &[u8]) -> Vec<u8> {
    let mut bytes = krl.to_vec();
    if bytes.len() >= HEADER_TIMES.end {
        bytes[HEADER_TIMES].fill(0);
    }
    bytes
}

/// A host as an operator sets it up: a real `sshd` trusting `jitca ca
/// trusted` and refusing what the KRL at `krl` revokes (absolute paths).
pub struct Host {
    pub sshd: Sshd,
    /// The `TrustedUserCAKeys` file.
    pub trusted: PathBuf,
    /// The `RevokedKeys` file.
    pub krl: PathBuf,
}

impl Host {
    /// A host whose KRL is written now with `jitca krl --out`, and again
    /// each time the test calls [`Host::refresh_krl`].
    pub fn start(env: &Env) -> Host {
        Host::start_with_args(env, &[])
    }

    /// Like [`Host::start`], with more command-line arguments for `sshd`.
    pub fn start_with_args(env: &Env, sshd_args: &[&str]) -> Host {
        let dir = host_dir(env);
        let krl = dir.join("revoked.krl");
        write_krl(env, &krl);
        Host::on_krl(env, &dir, krl, sshd_args)
    }

    /// A host reading the KRL someone else keeps at KRL (a daemon started
    /// with `--krl KRL`); waits, bounded, for that file to appear.
    pub fn start_on_krl(env: &Env, krl: &Path) -> Host {
        let dir = host_dir(env);
        wait_for_change(krl, None, Duration::from_secs(20));
        Host::on_krl(env, &dir, absolute(krl), &[])
    }

    fn on_krl(env: &Env, dir: &Path, krl: PathBuf, sshd_args: &[&str]) -> Host {
        let trusted = dir.join("trusted-user-ca-keys.pub");
        std::fs::write(&trusted, trusted_text(env))
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", trusted.display()));
        let revoked_keys = format!("RevokedKeys {}", krl.display());
        let sshd = Sshd::start_with_args(env, &trusted, &[&revoked_keys], sshd_args);
        Host { sshd, trusted, krl }
    }

    /// Rewrites the host's KRL with `jitca krl --out`.
    pub fn refresh_krl(&self, env: &Env) {
        write_krl(env, &self.krl);
    }

    /// Replaces the host's trusted CA file with `jitca ca trusted`.
    pub fn refresh_trusted(&self, env: &Env) {
        replace_file(&self.trusted, trusted_text(env).as_bytes());
    }

    /// Logs in as the current user with KEY and CERT, running `id -un`.
    pub fn login(&self, key: &Path, cert: &Path) -> Output {
        self.sshd.login(key, cert, current_user(), "id -un")
    }

    /// Fails the test (with `sshd`'s log) unless KEY and CERT log in.
    pub fn expect_login(&self, key: &Path, cert: &Path, what: &str) {
        let out = self.login(key, cert);
        assert!(
            out.status.success() && stdout(&out).trim() == current_user(),
            "{what}: expected a login\n{}\n{}",
            describe(&out),
            self.sshd.log_text()
        );
    }

    /// Fails the test unless `sshd` refuses KEY and CERT and logs LOG_SAYS
    /// while doing so (only lines logged from this attempt on count).
    pub fn expect_refused(&self, key: &Path, cert: &Path, log_says: &str, what: &str) {
        let before = self.sshd.log().len();
        let out = self.login(key, cert);
        // The log line is written before the refusal reaches the client,
        // but give a slow machine a moment.
        let deadline = Instant::now() + Duration::from_secs(3);
        let logged = loop {
            let log = self.sshd.log();
            let fresh = log.get(before..).unwrap_or_default().contains(log_says);
            if fresh || Instant::now() >= deadline {
                break fresh;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(
            out.status.code() == Some(255) && out.stdout.is_empty() && logged,
            "{what}: expected sshd to refuse the login, logging {log_says:?}\n{}\n{}",
            describe(&out),
            self.sshd.log_text()
        );
    }
}

fn host_dir(env: &Env) -> PathBuf {
    let n = HOSTS.fetch_add(1, Ordering::Relaxed);
    let dir = absolute(&env.path(&format!("host-{n}")));
    std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|e| panic!("cannot resolve {}: {e}", path.display()))
}

/// `jitca ca trusted`, checked to hold at least one key.
fn trusted_text(env: &Env) -> String {
    let text = env.jitca_ok(&["ca", "trusted"]);
    assert!(
        text.lines().any(|l| l.starts_with("ssh-")),
        "jitca ca trusted printed no public key line:\n{text}"
    );
    text
}

/// The `SHA256:...` fingerprint of every key in a file of public keys (such
/// as a trusted CA file), in order, from `ssh-keygen -l`.
pub fn fingerprints_in(file: &Path) -> Vec<String> {
    let out = run(
        Command::new(SSH_KEYGEN).arg("-l").arg("-f").arg(file),
        COMMAND_TIMEOUT,
    );
    assert!(
        out.status.success(),
        "ssh-keygen -l cannot read {}\n{}",
        file.display(),
        describe(&out)
    );
    stdout(&out)
        .lines()
        .map(|line| {
            line.split_whitespace()
                .nth(1)
                .filter(|f| f.starts_with("SHA256:"))
                .unwrap_or_else(|| panic!("no fingerprint in ssh-keygen -l line {line:?}"))
                .to_string()
        })
        .collect()
}

/// The fingerprints of the keys `jitca ca trusted` prints now.
pub fn trusted_fingerprints(env: &Env) -> Vec<String> {
    let file = env.write("trusted-now.pub", trusted_text(env));
    fingerprints_in(&file)
}

/// The fingerprint in a certificate's `Signing CA` field
/// (`ED25519 SHA256:... (using ssh-ed25519)`).
pub fn signing_ca(info: &super::cert::CertInfo) -> String {
    info.signing_ca
        .split_whitespace()
        .find(|w| w.starts_with("SHA256:"))
        .unwrap_or_else(|| panic!("no fingerprint in Signing CA {:?}", info.signing_ca))
        .to_string()
}

/// One line of `jitca ca list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaKeyLine {
    pub state: String,
    pub fingerprint: String,
    /// Unix seconds.
    pub created: i64,
}

/// `jitca ca list`, oldest key first.
pub fn ca_list(env: &Env) -> Vec<CaKeyLine> {
    let text = env.jitca_ok(&["ca", "list"]);
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let created = words
                .iter()
                .position(|w| *w == "created")
                .and_then(|i| words.get(i + 1))
                .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .unwrap_or_else(|| panic!("no creation time in ca list line {line:?}"));
            match words[..] {
                [state, fingerprint, ..] if fingerprint.starts_with("SHA256:") => CaKeyLine {
                    state: state.to_string(),
                    fingerprint: fingerprint.to_string(),
                    created: created.as_secs() as i64,
                },
                _ => panic!("unexpected ca list line {line:?}"),
            }
        })
        .collect()
}

/// The one key `jitca ca list` shows in STATE; fails the test unless there
/// is exactly one.
pub fn only_key_in(env: &Env, state: &str) -> CaKeyLine {
    let keys = ca_list(env);
    let found: Vec<&CaKeyLine> = keys.iter().filter(|k| k.state == state).collect();
    assert!(
        found.len() == 1,
        "expected exactly one {state} CA key, ca list shows {keys:#?}"
    );
    found[0].clone()
}

/// Makes the CA's next serial `value + 1`, as if it had handed out that many
/// certificates already (the serial counter only goes up, so VALUE must be
/// above every serial issued so far).
pub fn skip_serials_to(env: &Env, value: u64) {
    env.db_execute(
        "INSERT INTO counters (name, value) VALUES ('serial', ?1)
         ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        [value as i64],
    );
}

/// What a KRL holds, as far as the tests look.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KrlContents {
    pub comment: String,
    /// One per certificate section: the CA's `SHA256:` fingerprint and the
    /// kinds of its subsections in order (`list`, `range`, `bitmap`,
    /// `key-id`).
    pub ca_sections: Vec<(String, Vec<&'static str>)>,
    /// The `SHA256:` fingerprints of the keys revoked outright.
    pub revoked_keys: Vec<String>,
    /// Any other section types met.
    pub other_sections: Vec<u8>,
}

/// Reads a KRL far enough to list its sections (PROTOCOL.krl §1–§4).
pub fn parse_krl(bytes: &[u8]) -> Result<KrlContents, String> {
    let mut r = Reader { bytes, at: 0 };
    if r.take(8)? != KRL_MAGIC {
        return Err("no KRL magic".into());
    }
    let format = r.u32()?;
    if format != 1 {
        return Err(format!("KRL format version {format}"));
    }
    r.take(24)?; // krl_version, generated_date, flags
    r.string()?; // reserved
    let mut krl = KrlContents {
        comment: String::from_utf8_lossy(r.string()?).into_owned(),
        ..KrlContents::default()
    };
    while !r.done() {
        let kind = r.u8()?;
        let mut section = Reader {
            bytes: r.string()?,
            at: 0,
        };
        match kind {
            1 => {
                let ca = fingerprint_of(section.string()?);
                section.string()?; // reserved
                let mut kinds = Vec::new();
                while !section.done() {
                    let sub = section.u8()?;
                    section.string()?;
                    kinds.push(match sub {
                        0x20 => "list",
                        0x21 => "range",
                        0x22 => "bitmap",
                        0x23 => "key-id",
                        other => return Err(format!("certificate subsection {other:#x}")),
                    });
                }
                krl.ca_sections.push((ca, kinds));
            }
            5 => {
                while !section.done() {
                    let hash = section.string()?;
                    krl.revoked_keys.push(sha256_text(hash));
                }
            }
            other => krl.other_sections.push(other),
        }
    }
    Ok(krl)
}

/// `SHA256:` and the unpadded base64 of the SHA-256 of BLOB, as OpenSSH
/// prints a key's fingerprint.
fn fingerprint_of(blob: &[u8]) -> String {
    use sha2::Digest as _;
    sha256_text(&sha2::Sha256::digest(blob))
}

fn sha256_text(hash: &[u8]) -> String {
    use base64::Engine as _;
    format!(
        "SHA256:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(hash)
    )
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn done(&self) -> bool {
        self.at >= self.bytes.len()
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| format!("truncated at byte {} (wanted {n} more)", self.at))?;
        let taken = &self.bytes[self.at..end];
        self.at = end;
        Ok(taken)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn string(&mut self) -> Result<&'a [u8], String> {
        let len = self.u32()? as usize;
        self.take(len)
    }
}
