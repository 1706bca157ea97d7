//! The values that flow along the request path: attribute values, names, and
//! the snapshot a decision is based on.
//!
//! A [`Snapshot`] is taken once per request and never changes afterwards: the
//! policy is evaluated against it, and the audit record stores it verbatim, so
//! an auditor sees exactly what the decision saw.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// One attribute value of a user or a device.
///
/// Values keep the form they were given in: `true`/`false` are booleans,
/// whole numbers are integers, `14.5` given as a JSON number is a float, and
/// everything else (including dotted versions typed on the command line, such
/// as `14.10`) is text, so that a version never loses a trailing zero.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AttrValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
}

impl AttrValue {
    /// Types a value given as `ATTR=VALUE` on the command line.
    pub fn parse_cli(raw: &str) -> AttrValue {
        match raw {
            "true" => return AttrValue::Bool(true),
            "false" => return AttrValue::Bool(false),
            _ => {}
        }
        if let Ok(n) = raw.parse::<i64>() {
            let leading_zero = raw.len() > 1 && raw.starts_with('0');
            if !raw.starts_with('+') && !leading_zero {
                return AttrValue::Int(n);
            }
        }
        AttrValue::Text(raw.to_string())
    }

    /// Converts a JSON value from a posture report; `None` for arrays, objects
    /// and null, which are not attribute values.
    pub fn from_json(value: &serde_json::Value) -> Option<AttrValue> {
        match value {
            serde_json::Value::Bool(b) => Some(AttrValue::Bool(*b)),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => Some(AttrValue::Int(i)),
                None => n.as_f64().filter(|f| f.is_finite()).map(AttrValue::Float),
            },
            serde_json::Value::String(s) => Some(AttrValue::Text(s.clone())),
            _ => None,
        }
    }

    /// The JSON text stored in SQLite for this value.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "null".to_string())
    }

    /// Reads back a value stored by [`AttrValue::to_json`].
    pub fn from_stored(text: &str) -> Option<AttrValue> {
        serde_json::from_str::<serde_json::Value>(text)
            .ok()
            .as_ref()
            .and_then(AttrValue::from_json)
    }
}

impl fmt::Display for AttrValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttrValue::Bool(b) => write!(f, "{b}"),
            AttrValue::Int(i) => write!(f, "{i}"),
            AttrValue::Float(x) => write!(f, "{x}"),
            AttrValue::Text(s) => write!(f, "{s:?}"),
        }
    }
}

/// Whether a user or a device may be used at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Active,
    /// A suspended user or a disabled device.
    Inactive,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Inactive => "inactive",
        }
    }
}

// The snapshot's fields are declared in alphabetical order: audit records
// hold them as canonical JSON (keys sorted), written straight from these
// structs (see `audit::chain::canonical_of`, which checks it in tests).

/// A device attribute together with the time it was reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PostureAttr {
    /// Unix seconds.
    pub reported_at: i64,
    pub value: AttrValue,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserSnapshot {
    pub attributes: BTreeMap<String, AttrValue>,
    /// Sorted, without duplicates.
    pub groups: Vec<String>,
    pub name: String,
    pub status: Status,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceSnapshot {
    /// `SHA256:...` fingerprint of the enrolled key.
    pub fingerprint: String,
    /// The key's algorithm name, e.g. `ssh-ed25519`.
    pub key_type: String,
    pub name: String,
    pub posture: BTreeMap<String, PostureAttr>,
    pub status: Status,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectionSnapshot {
    /// Unix seconds: the moment the snapshot was taken.
    pub at: i64,
    pub peer: IpAddr,
}

/// Everything a decision is based on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub connection: ConnectionSnapshot,
    pub device: DeviceSnapshot,
    /// Hex sha256 of the policy file the decision was evaluated against.
    pub policy_sha256: String,
    pub user: UserSnapshot,
}

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{what} name {name:?} is not valid: use 1 to 64 of a-z, A-Z, 0-9, '.', '_', '-', starting with a letter or digit"
)]
pub struct BadName {
    pub what: &'static str,
    pub name: String,
}

/// Checks a user, group, device or role name. Names end up in key ids and
/// audit records, so they are kept to a character set that needs no quoting.
pub fn check_name(what: &'static str, name: &str) -> Result<(), BadName> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(BadName {
            what,
            name: name.to_string(),
        })
    }
}

/// True if and only if `c` is a control character or an invisible
/// formatting character (zero-width spaces and joiners, bidirectional
/// overrides and isolates, the byte-order mark): characters that let text
/// read differently from what it holds.
pub fn is_hidden_char(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}'
            | '\u{17B4}' | '\u{17B5}' | '\u{180B}'..='\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{3164}' | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}' | '\u{FFA0}'
            | '\u{FFF9}'..='\u{FFFB}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0000}'..='\u{E0FFF}')
}

/// Unix seconds now.
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_values_are_typed() {
        assert_eq!(AttrValue::parse_cli("true"), AttrValue::Bool(true));
        assert_eq!(AttrValue::parse_cli("42"), AttrValue::Int(42));
        assert_eq!(
            AttrValue::parse_cli("14.10"),
            AttrValue::Text("14.10".into())
        );
        assert_eq!(AttrValue::parse_cli("007"), AttrValue::Text("007".into()));
        assert_eq!(
            AttrValue::parse_cli("macos"),
            AttrValue::Text("macos".into())
        );
    }

    #[test]
    fn stored_values_round_trip() {
        for v in [
            AttrValue::Bool(false),
            AttrValue::Int(-3),
            AttrValue::Float(14.5),
            AttrValue::Text("14.10".into()),
        ] {
            assert_eq!(AttrValue::from_stored(&v.to_json()), Some(v));
        }
    }

    #[test]
    fn hidden_characters_are_recognised() {
        for c in [
            '\u{202E}',
            '\u{200B}',
            '\u{FEFF}',
            '\u{1b}',
            '\n',
            '\u{E0041}',
            '\u{2028}',
            '\u{FE0F}',
            '\u{3164}',
            '\u{2065}',
        ] {
            assert!(is_hidden_char(c), "{c:?}");
        }
        for c in ['a', 'é', '-', ' ', '日'] {
            assert!(!is_hidden_char(c), "{c:?}");
        }
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("user", "alice").is_ok());
        assert!(check_name("device", "alice-mbp.2").is_ok());
        for bad in ["", "-x", "a b", "a/b", "a,b", &"x".repeat(65)] {
            assert!(check_name("user", bad).is_err(), "{bad:?}");
        }
    }
}
