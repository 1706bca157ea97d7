//! Helpers shared by the `ca` unit tests: fixture paths, running the real
//! `ssh-keygen`, and reading its `-L` listing.

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use russh::keys::Certificate;

use super::cert::certificate_line;

const SSH_KEYGEN: &str = "/usr/bin/ssh-keygen";

/// A key fixture from `tests/data/keys`.
pub(crate) fn fixture(name: &str) -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/keys")).join(name)
}

/// The real OpenSSH `ssh-keygen`, or a failure saying how to get it.
pub(crate) fn ssh_keygen() -> Command {
    assert!(
        Path::new(SSH_KEYGEN).exists(),
        "{SSH_KEYGEN} not found: install openssh-client to run these tests"
    );
    Command::new(SSH_KEYGEN)
}

/// An SSH `string`: a 32-bit big-endian length, then the bytes.
pub(crate) fn ssh_string(bytes: &[u8]) -> Vec<u8> {
    let mut out = (bytes.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(bytes);
    out
}

/// An `sk-ssh-ed25519@openssh.com` key line (PROTOCOL.u2f) built around the
/// Ed25519 fixture's public key; no hardware token needed.
pub(crate) fn sk_ed25519_line() -> String {
    let plain = std::fs::read_to_string(fixture("ed25519.pub")).expect("read");
    let blob = BASE64
        .decode(plain.split(' ').nth(1).expect("b64"))
        .expect("b64");
    let point = &blob[blob.len() - 32..];
    let mut sk = ssh_string(b"sk-ssh-ed25519@openssh.com");
    sk.extend(ssh_string(point));
    sk.extend(ssh_string(b"ssh:"));
    format!("sk-ssh-ed25519@openssh.com {} token", BASE64.encode(sk))
}

/// `ssh-keygen -L` of the certificate, times shown in UTC.
pub(crate) fn keygen_list(dir: &Path, cert: &Certificate) -> String {
    let path = dir.join("id-cert.pub");
    let line = certificate_line(cert).expect("line");
    assert!(!line.contains('\n'));
    std::fs::write(&path, format!("{line}\n")).expect("write cert");
    let out = ssh_keygen()
        .env("TZ", "UTC")
        .arg("-L")
        .arg("-f")
        .arg(&path)
        .output()
        .expect("run ssh-keygen");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "ssh-keygen -L refused the certificate: {}{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// The indented lines under `heading` in `ssh-keygen -L` output.
pub(crate) fn section<'t>(text: &'t str, heading: &str) -> Vec<&'t str> {
    text.lines()
        .skip_while(|l| l.trim() != heading)
        .skip(1)
        .take_while(|l| l.starts_with("                "))
        .map(str::trim)
        .collect()
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SS` in UTC, as `ssh-keygen -L` prints.
pub(crate) fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formatting_matches_known_dates() {
        assert_eq!(utc(0), "1970-01-01T00:00:00");
        assert_eq!(utc(1_704_067_200), "2024-01-01T00:00:00");
        assert_eq!(utc(951_782_400 + 3661), "2000-02-29T01:01:01");
    }
}
