//! What a certificate may say besides its key and validity window:
//! principals, critical options and extensions (PROTOCOL.certkeys).
//!
//! Each check refuses rather than repairs: a value that would change meaning
//! on the verifying host (a wildcard principal, an unparsable
//! `source-address`, a misspelt extension) is an error for whoever wrote it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;

// One rule for what a principal, an extension name and a force-command may
// be: the policy validates a role with it at load time, and the builder
// checks every certificate with it again before signing.
use crate::policy::principal::{
    MAX_PRINCIPALS, STANDARD_EXTENSIONS, check_extension, check_force_command, check_principal,
};

/// The longest `source-address` entry `sshd` parses: an IPv6 address in text
/// plus `/128`.
const MAX_CIDR_ENTRY: usize = 46 + 3;

/// Why principals, options or extensions were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    #[error(
        "a certificate needs at least one principal: an empty list means any user to some verifiers, so jitca never emits one; give the role a principals list"
    )]
    NoPrincipals,

    #[error("{count} principals are more than the {max} one certificate may carry: split the role")]
    TooManyPrincipals { count: usize, max: usize },

    #[error(
        "principal {principal:?} is not safe: use 1 to 256 bytes without ',', '*', '?', '!', whitespace or control characters"
    )]
    UnsafePrincipal { principal: String },

    #[error("principal {principal:?} is listed twice: list each principal once")]
    DuplicatePrincipal { principal: String },

    #[error(
        "critical option {name:?} is not supported: use force-command, source-address or verify-required"
    )]
    UnknownCriticalOption { name: String },

    #[error("force-command must be a non-empty command without control characters, got {value:?}")]
    BadForceCommand { value: String },

    #[error("critical option {name} is a flag and takes no value, got {value:?}: leave it empty")]
    FlagWithValue { name: String, value: String },

    #[error(
        "source-address {value:?} is not a comma-separated list of IP addresses and networks: entry {entry:?} {problem}"
    )]
    BadSourceAddress {
        value: String,
        entry: String,
        problem: String,
    },

    #[error(
        "extension {name:?} is not known: use one of {}, or a vendor name of the form NAME@DOMAIN",
        STANDARD_EXTENSIONS.join(", ")
    )]
    UnknownExtension { name: String },
}

/// True if and only if `principal` passes [`check_principal`].
pub(crate) fn principal_is_safe(principal: &str) -> bool {
    check_principal(principal).is_ok()
}

/// Checks a certificate's principal list: non-empty (PROTOCOL.certkeys: an
/// empty "valid principals" field makes the certificate valid for any
/// principal), at most [`MAX_PRINCIPALS`], each safe, none twice.
pub(crate) fn check_principals(principals: &[String]) -> Result<(), OptionError> {
    if principals.is_empty() {
        return Err(OptionError::NoPrincipals);
    }
    if principals.len() > MAX_PRINCIPALS {
        return Err(OptionError::TooManyPrincipals {
            count: principals.len(),
            max: MAX_PRINCIPALS,
        });
    }
    let mut seen = BTreeSet::new();
    for principal in principals {
        if !principal_is_safe(principal) {
            return Err(OptionError::UnsafePrincipal {
                principal: principal.clone(),
            });
        }
        if !seen.insert(principal.as_str()) {
            return Err(OptionError::DuplicatePrincipal {
                principal: principal.clone(),
            });
        }
    }
    Ok(())
}

/// Checks critical options: only `force-command`, `source-address` and `verify-required`
/// (a verifier must refuse a certificate with a critical option it does not
/// recognise, PROTOCOL.certkeys), each with a value of the right shape.
pub(crate) fn check_critical_options(
    options: &BTreeMap<String, String>,
) -> Result<(), OptionError> {
    for (name, value) in options {
        match name.as_str() {
            "force-command" => {
                if check_force_command(value).is_err() {
                    return Err(OptionError::BadForceCommand {
                        value: value.clone(),
                    });
                }
            }
            "source-address" => check_source_address(value)?,
            "verify-required" => {
                if !value.is_empty() {
                    return Err(OptionError::FlagWithValue {
                        name: name.clone(),
                        value: value.clone(),
                    });
                }
            }
            _ => {
                return Err(OptionError::UnknownCriticalOption { name: name.clone() });
            }
        }
    }
    Ok(())
}

/// Checks a `source-address` value: a comma-separated list of IP addresses
/// and CIDR networks (PROTOCOL.certkeys), in the form `sshd` accepts. `sshd`
/// rejects the whole certificate when this does not parse, and also when a
/// network has bits set past its prefix (`10.1.2.3/16`), so both are refused
/// here.
pub fn check_source_address(value: &str) -> Result<(), OptionError> {
    let bad = |entry: &str, problem: String| OptionError::BadSourceAddress {
        value: value.to_string(),
        entry: entry.to_string(),
        problem,
    };
    for entry in value.split(',') {
        if entry.is_empty() {
            return Err(bad(entry, "is empty".to_string()));
        }
        if entry.len() > MAX_CIDR_ENTRY
            || !entry
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || matches!(b, b'.' | b':' | b'/'))
        {
            return Err(bad(
                entry,
                "is not an IP address or CIDR network".to_string(),
            ));
        }
        if entry.contains('/') {
            let net: IpNet = entry
                .parse()
                .map_err(|_| bad(entry, "is not an IP address or CIDR network".to_string()))?;
            if net.addr() != net.network() {
                return Err(bad(
                    entry,
                    format!("has host bits set past its prefix: write {}", net.trunc()),
                ));
            }
        } else if entry.parse::<IpAddr>().is_err() {
            return Err(bad(
                entry,
                "is not an IP address or CIDR network".to_string(),
            ));
        }
    }
    Ok(())
}

/// Checks extension names with [`check_extension`]: a standard one or a
/// vendor name `NAME@DOMAIN`. A misspelt extension would silently grant nothing, so it
/// is refused.
pub(crate) fn check_extensions(extensions: &BTreeSet<String>) -> Result<(), OptionError> {
    for name in extensions {
        if check_extension(name).is_err() {
            return Err(OptionError::UnknownExtension { name: name.clone() });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn safe_principals_pass() {
        for p in ["postgres", "root", "deploy-bot", "user@realm", "x.y_z", "é"] {
            assert!(principal_is_safe(p), "{p}");
        }
        assert!(principal_is_safe(&"a".repeat(256)));
    }

    #[test]
    fn principals_with_commas_wildcards_blanks_or_controls_are_unsafe() {
        for p in [
            "", "a,b", "*", "adm?n", "!root", "a b", "a\tb", "a\nb", "a\u{0}b", "a\u{7f}",
            "a\u{a0}b",
        ] {
            assert!(!principal_is_safe(p), "{p:?}");
        }
        assert!(!principal_is_safe(&"a".repeat(257)));
    }

    #[test]
    fn empty_principal_list_is_refused() {
        assert_eq!(check_principals(&[]), Err(OptionError::NoPrincipals));
    }

    #[test]
    fn more_than_256_principals_are_refused() {
        let many: Vec<String> = (0..257).map(|i| format!("u{i}")).collect();
        assert!(check_principals(&many[..256]).is_ok());
        assert!(matches!(
            check_principals(&many),
            Err(OptionError::TooManyPrincipals { count: 257, .. })
        ));
    }

    #[test]
    fn duplicate_and_unsafe_principals_in_a_list_are_refused() {
        assert!(matches!(
            check_principals(&strings(&["a", "b", "a"])),
            Err(OptionError::DuplicatePrincipal { .. })
        ));
        assert!(matches!(
            check_principals(&strings(&["a", "b*"])),
            Err(OptionError::UnsafePrincipal { .. })
        ));
    }

    #[test]
    fn only_known_critical_options_pass() {
        let mut opts = BTreeMap::new();
        opts.insert("force-command".to_string(), "/usr/bin/psql -X".to_string());
        opts.insert(
            "source-address".to_string(),
            "10.20.0.0/16,192.0.2.7".to_string(),
        );
        opts.insert("verify-required".to_string(), String::new());
        assert!(check_critical_options(&opts).is_ok());

        opts.insert("no-pty".to_string(), String::new());
        assert!(matches!(
            check_critical_options(&opts),
            Err(OptionError::UnknownCriticalOption { .. })
        ));
    }

    #[test]
    fn force_command_must_be_a_plain_non_empty_command() {
        for value in ["", "ls\nid", "a\u{0}"] {
            let opts = BTreeMap::from([("force-command".to_string(), value.to_string())]);
            assert!(matches!(
                check_critical_options(&opts),
                Err(OptionError::BadForceCommand { .. })
            ));
        }
    }

    #[test]
    fn verify_required_takes_no_value() {
        let opts = BTreeMap::from([("verify-required".to_string(), "yes".to_string())]);
        assert!(matches!(
            check_critical_options(&opts),
            Err(OptionError::FlagWithValue { .. })
        ));
    }

    #[test]
    fn source_address_accepts_ips_and_networks() {
        for ok in [
            "10.0.0.1",
            "10.20.0.0/16",
            "192.0.2.0/24,198.51.100.7",
            "2001:db8::/32",
            "::1",
            "0.0.0.0/0",
        ] {
            assert!(check_source_address(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn source_address_refuses_what_sshd_would_not_parse() {
        for bad in [
            "",
            "10.0.0.1,",
            ",10.0.0.1",
            "10.0.0.1, 10.0.0.2",
            "example.com",
            "10.0.0.0/33",
            "10.0.0.*",
            "fe80::1%eth0",
            "10.0.0.1/",
        ] {
            assert!(
                matches!(
                    check_source_address(bad),
                    Err(OptionError::BadSourceAddress { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn source_address_refuses_host_bits_past_the_prefix() {
        let err = check_source_address("10.20.1.5/16").expect_err("host bits");
        assert!(err.to_string().contains("10.20.0.0/16"), "{err}");
    }

    #[test]
    fn extensions_must_be_known_or_vendor_names() {
        let ok: BTreeSet<String> = ["permit-pty", "permit-X11-forwarding", "login@example.com"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert!(check_extensions(&ok).is_ok());
        for bad in ["permit-ptty", "", "@x", "a@", "a b@c"] {
            let set = BTreeSet::from([bad.to_string()]);
            assert!(check_extensions(&set).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn btree_order_puts_x11_before_agent_forwarding() {
        let set: BTreeSet<String> = ["permit-agent-forwarding", "permit-X11-forwarding"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let order: Vec<&str> = set.iter().map(String::as_str).collect();
        assert_eq!(order, ["permit-X11-forwarding", "permit-agent-forwarding"]);
    }
}
