//! Reading certificates the way a host administrator does: `ssh-keygen -L`,
//! parsed into fields the tests compare with the policy.

use std::path::Path;
use std::process::Command;

use super::{COMMAND_TIMEOUT, SSH_KEYGEN, describe, run, stdout};

/// Runs `ssh-keygen -L -f CERT` (with `TZ=UTC`, so the validity times read
/// back as UTC) and returns its output; fails the test if it cannot parse
/// the certificate.
pub fn keygen_l(cert: &Path) -> String {
    let out = run(
        Command::new(SSH_KEYGEN)
            .env("TZ", "UTC")
            .arg("-L")
            .arg("-f")
            .arg(cert),
        COMMAND_TIMEOUT,
    );
    assert!(
        out.status.success(),
        "ssh-keygen -L cannot read {}\n{}",
        cert.display(),
        describe(&out)
    );
    stdout(&out)
}

/// The fields of `ssh-keygen -L` output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// e.g. `ssh-ed25519-cert-v01@openssh.com user certificate`.
    pub cert_type: String,
    /// e.g. `ED25519 SHA256:... (using ssh-ed25519)`.
    pub signing_ca: String,
    pub key_id: String,
    pub serial: u64,
    /// Unix seconds.
    pub valid_from: i64,
    /// Unix seconds.
    pub valid_to: i64,
    pub principals: Vec<String>,
    /// `(name, value)`, value empty for flags; in the order printed.
    pub critical_options: Vec<(String, String)>,
    /// In the order printed.
    pub extensions: Vec<String>,
}

impl CertInfo {
    /// Reads the certificate at CERT with `ssh-keygen -L`.
    pub fn read(cert: &Path) -> CertInfo {
        let text = keygen_l(cert);
        CertInfo::parse(&text).unwrap_or_else(|e| panic!("{e}\nssh-keygen -L printed:\n{text}"))
    }

    /// Parses `ssh-keygen -L` output printed with `TZ=UTC`.
    pub fn parse(text: &str) -> Result<CertInfo, String> {
        let mut info = CertInfo {
            cert_type: String::new(),
            signing_ca: String::new(),
            key_id: String::new(),
            serial: 0,
            valid_from: 0,
            valid_to: 0,
            principals: Vec::new(),
            critical_options: Vec::new(),
            extensions: Vec::new(),
        };
        let mut seen_valid = false;
        let mut section = "";
        // The first line names the file; fields are indented by 8 spaces,
        // list items of Principals/Critical Options/Extensions by 16.
        for line in text.lines().skip(1) {
            let indent = line.len() - line.trim_start().len();
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            if indent > 8 {
                match section {
                    "Principals" => info.principals.push(line.to_string()),
                    "Critical Options" => {
                        let (name, value) = line.split_once(' ').unwrap_or((line, ""));
                        info.critical_options
                            .push((name.to_string(), value.trim().to_string()));
                    }
                    "Extensions" => info.extensions.push(line.to_string()),
                    other => return Err(format!("list item {line:?} under {other:?}")),
                }
                continue;
            }
            let (field, value) = line
                .split_once(':')
                .ok_or_else(|| format!("unexpected line {line:?}"))?;
            let value = value.trim();
            section = match field {
                "Principals" | "Critical Options" | "Extensions" => {
                    if !(value.is_empty() || value == "(none)") {
                        return Err(format!("unexpected {field}: {value:?}"));
                    }
                    field
                }
                _ => "",
            };
            match field {
                "Type" => info.cert_type = value.to_string(),
                "Signing CA" => info.signing_ca = value.to_string(),
                "Key ID" => info.key_id = value.trim_matches('"').to_string(),
                "Serial" => {
                    info.serial = value
                        .parse()
                        .map_err(|e| format!("serial {value:?}: {e}"))?;
                }
                "Valid" => {
                    let (from, to) = parse_validity(value)?;
                    info.valid_from = from;
                    info.valid_to = to;
                    seen_valid = true;
                }
                _ => {}
            }
        }
        if !seen_valid || info.cert_type.is_empty() {
            return Err("no Type or Valid line in ssh-keygen -L output".to_string());
        }
        Ok(info)
    }

    /// The value of critical option NAME, if present.
    pub fn critical_option(&self, name: &str) -> Option<&str> {
        self.critical_options
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `from 2026-01-02T03:04:05 to 2026-01-02T03:19:05` → unix seconds. Any
/// open-ended form (`forever`, `after ...`, `before ...`) is an error: jitca
/// must never emit one.
fn parse_validity(value: &str) -> Result<(i64, i64), String> {
    let rest = value
        .strip_prefix("from ")
        .ok_or_else(|| format!("validity is not bounded on both ends: {value:?}"))?;
    let (from, to) = rest
        .split_once(" to ")
        .ok_or_else(|| format!("validity has no end: {value:?}"))?;
    Ok((utc_seconds(from)?, utc_seconds(to)?))
}

fn utc_seconds(text: &str) -> Result<i64, String> {
    let time = humantime::parse_rfc3339_weak(text).map_err(|e| format!("time {text:?}: {e}"))?;
    time.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .map_err(|e| format!("time {text:?} before 1970: {e}"))
}
