//! The checks on what a role puts into a certificate: principals,
//! extensions and the `force-command` value.
//!
//! PROTOCOL.certkeys: "As a special case, a zero-length "valid principals"
//! field means the certificate is valid for any principal of the specified
//! type." An empty list is therefore refused where the list is validated, and
//! each principal is kept to text that `sshd` can only match literally: its
//! `AuthorizedPrincipals` and `from=` handling split lists on commas and treat
//! `*`, `?` and `!` as pattern characters.

/// The most principals one role may hold.
pub const MAX_PRINCIPALS: usize = 256;

/// The longest principal, in bytes.
pub const MAX_PRINCIPAL_LEN: usize = 256;

/// The standard OpenSSH certificate extensions (PROTOCOL.certkeys,
/// "Extensions").
pub(crate) const STANDARD_EXTENSIONS: [&str; 6] = [
    "no-touch-required",
    "permit-X11-forwarding",
    "permit-agent-forwarding",
    "permit-port-forwarding",
    "permit-pty",
    "permit-user-rc",
];

/// Why a principal was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrincipalError {
    #[error("a principal is empty: give a login name such as \"postgres\"")]
    Empty,
    #[error(
        "principal starting {start:?} is {len} bytes long: the limit is {MAX_PRINCIPAL_LEN} bytes"
    )]
    TooLong { start: String, len: usize },
    #[error(
        "principal {principal:?} contains {found}: use a plain login name without commas, wildcards (*, ?, !), whitespace or control characters"
    )]
    Forbidden { principal: String, found: String },
}

/// Checks one certificate principal: non-empty, at most
/// [`MAX_PRINCIPAL_LEN`] bytes, with no comma, `*`, `?`, `!`, whitespace or
/// control character. The certificate builder re-checks every principal
/// with this before signing.
pub fn check_principal(p: &str) -> Result<(), PrincipalError> {
    if p.is_empty() {
        return Err(PrincipalError::Empty);
    }
    if p.len() > MAX_PRINCIPAL_LEN {
        return Err(PrincipalError::TooLong {
            start: p.chars().take(32).collect(),
            len: p.len(),
        });
    }
    if let Some(c) = p
        .chars()
        .find(|c| matches!(c, ',' | '*' | '?' | '!') || c.is_whitespace() || c.is_control())
    {
        let found = match c {
            ',' => "a comma".to_string(),
            '*' | '?' | '!' => format!("the wildcard {c:?}"),
            c if c.is_whitespace() => format!("whitespace {c:?}"),
            c => format!("the control character {c:?}"),
        };
        return Err(PrincipalError::Forbidden {
            principal: p.to_string(),
            found,
        });
    }
    Ok(())
}

/// Checks an extension name: a standard one, or a custom `name@domain`
/// (PROTOCOL.certkeys: "Custom options should append the originating
/// author or organisation's domain name") made of `A-Z a-z 0-9 . _ -`.
pub(crate) fn check_extension(name: &str) -> Result<(), String> {
    if STANDARD_EXTENSIONS.contains(&name) {
        return Ok(());
    }
    let safe = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    };
    match name.split_once('@') {
        Some((local, domain)) if name.len() <= 128 && safe(local) && safe(domain) => Ok(()),
        _ => Err(format!(
            "unknown extension {name:?}: use one of {} or a custom name@domain",
            STANDARD_EXTENSIONS.join(", ")
        )),
    }
}

/// Checks a `force-command` value: non-empty, no control characters (a
/// newline would end the command `sshd` runs), at most 4096 bytes.
pub(crate) fn check_force_command(cmd: &str) -> Result<(), String> {
    if cmd.trim().is_empty() {
        return Err(
            "force_command is empty: give the command to run, e.g. \"/usr/bin/psql\"".into(),
        );
    }
    if cmd.len() > 4096 {
        return Err(format!(
            "force_command is {} bytes long: the limit is 4096",
            cmd.len()
        ));
    }
    if let Some(c) = cmd.chars().find(|c| c.is_control()) {
        return Err(format!(
            "force_command contains the control character {c:?}: remove it"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_principals_pass() {
        for ok in [
            "postgres",
            "deploy",
            "ops",
            "a.b-c_d",
            "root@db1",
            "ünïcode",
        ] {
            assert_eq!(check_principal(ok), Ok(()), "{ok:?}");
        }
        assert_eq!(check_principal(&"x".repeat(256)), Ok(()));
    }

    #[test]
    fn unsafe_principals_are_refused() {
        assert_eq!(check_principal(""), Err(PrincipalError::Empty));
        assert!(matches!(
            check_principal(&"x".repeat(257)),
            Err(PrincipalError::TooLong { len: 257, .. })
        ));
        for bad in [
            "a,b", "*", "ro?t", "!root", "a b", "a\tb", "a\nb", "a\u{7f}", "a\u{a0}b", "\u{0}",
        ] {
            assert!(
                matches!(check_principal(bad), Err(PrincipalError::Forbidden { .. })),
                "{bad:?}"
            );
        }
        let msg = check_principal("a,b").unwrap_err().to_string();
        assert!(msg.contains("a comma"), "{msg}");
    }

    #[test]
    fn extensions_are_standard_or_namespaced() {
        for ok in STANDARD_EXTENSIONS {
            assert_eq!(check_extension(ok), Ok(()));
        }
        assert_eq!(check_extension("my-ext@example.com"), Ok(()));
        for bad in [
            "permit-pty2",
            "",
            "@x",
            "x@",
            "a@b@c",
            "a b@c",
            "PERMIT-PTY",
        ] {
            assert!(check_extension(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn force_commands_without_control_characters_pass() {
        assert_eq!(check_force_command("/usr/bin/psql -d app"), Ok(()));
        assert!(check_force_command("").is_err());
        assert!(check_force_command("  ").is_err());
        assert!(check_force_command("/bin/true\n/bin/false").is_err());
        assert!(check_force_command(&"x".repeat(4097)).is_err());
    }
}
