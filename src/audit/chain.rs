//! The canonical encoding of an audit record and the hash chain over it.
//!
//! A record's hash is SHA-256 over a domain tag followed by every stored
//! field, each as a big-endian u64 length and its bytes, the previous
//! record's hash among them. Length prefixes make the encoding unambiguous
//! whatever a field contains; the body is canonical JSON (object keys
//! sorted, no insignificant whitespace), so the same record always hashes
//! the same way. Changing, inserting or removing any row breaks the chain
//! at that row.
//!
//! Two record formats share the chain. Format 1 (records written before
//! jitca stored bodies compressed) hashes the body text itself, under the
//! tag `jitca-audit-v1`; format 2 hashes the text's SHA-256 in its place,
//! under `jitca-audit-v2` (see [`super::body`]). The tag ties each hash to
//! its format, so a record cannot be passed off as the other one.
//!
//! Limits: the chain is not keyed. It shows any change to a record that is
//! not followed by rewriting every later record, but someone with write
//! access to the database file can rewrite a record and recompute the rest
//! of the chain, and removing records from the end leaves a shorter chain
//! that still verifies. Both change the head: `jitca audit verify` prints it
//! (last sequence number and hash) so that an operator or a timer can keep
//! it somewhere the database's writers cannot reach, and compare.

use sha2::{Digest, Sha256};

/// The `prev_hash` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

const DOMAIN_V1: &[u8] = b"jitca-audit-v1";
const DOMAIN_V2: &[u8] = b"jitca-audit-v2";

/// What of the body the hash covers: the text (format 1) or its SHA-256
/// (format 2).
#[derive(Debug, Clone, Copy)]
pub enum BodyHash<'a> {
    Text(&'a str),
    Digest(&'a [u8; 32]),
}

/// The fields of a record that the hash covers.
pub struct Fields<'a> {
    pub seq: i64,
    pub at: i64,
    pub kind: &'a str,
    pub user: Option<&'a str>,
    pub device: Option<&'a str>,
    pub role: Option<&'a str>,
    pub request_id: Option<&'a str>,
    pub body: BodyHash<'a>,
    pub prev_hash: &'a str,
}

/// The hex SHA-256 hash of a record.
pub fn hash(f: &Fields) -> String {
    let mut h = Sha256::new();
    let mut field = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    };
    field(match f.body {
        BodyHash::Text(_) => DOMAIN_V1,
        BodyHash::Digest(_) => DOMAIN_V2,
    });
    field(&f.seq.to_be_bytes());
    field(&f.at.to_be_bytes());
    field(f.kind.as_bytes());
    // An absent field and an empty one must differ.
    for opt in [f.user, f.device, f.role, f.request_id] {
        match opt {
            None => field(b"\x00"),
            Some(s) => field(&[b"\x01", s.as_bytes()].concat()),
        }
    }
    field(match f.body {
        BodyHash::Text(text) => text.as_bytes(),
        BodyHash::Digest(digest) => digest,
    });
    field(f.prev_hash.as_bytes());
    hex::encode(h.finalize())
}

/// Canonical JSON text of a body: `serde_json::Value` keeps object keys in a
/// sorted map, and `to_string` writes no whitespace.
pub fn canonical(body: &serde_json::Value) -> String {
    serde_json::to_string(body).unwrap_or_else(|_| "null".into())
}

/// [`canonical`] of `body`, written straight from it, without building the
/// `serde_json::Value` tree first (on the issuance path that tree cost more
/// than the signature). `body` and every struct in it must declare their
/// fields in alphabetical order and keep maps in sorted maps; debug builds,
/// and so every test that writes such a record, check that the text is
/// the canonical one.
pub fn canonical_of<T: serde::Serialize>(body: &T) -> String {
    // An issuance's body is about 2 KB: one allocation instead of the
    // doublings from serde_json's 128 bytes.
    let mut out = Vec::with_capacity(4096);
    let text = match serde_json::to_writer(&mut out, body) {
        // serde_json writes UTF-8 only.
        Ok(()) => String::from_utf8(out).unwrap_or_else(|_| "null".into()),
        Err(_) => "null".into(),
    };
    debug_assert_eq!(
        text,
        serde_json::to_value(body).map_or_else(|_| "null".into(), |v| canonical(&v)),
        "an audit body whose fields are not in alphabetical order"
    );
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields<'a>(body: &'a str, user: Option<&'a str>) -> Fields<'a> {
        Fields {
            seq: 1,
            at: 2,
            kind: "issued",
            user,
            device: None,
            role: None,
            request_id: None,
            body: BodyHash::Text(body),
            prev_hash: GENESIS,
        }
    }

    #[test]
    fn every_field_changes_the_hash() {
        let base = hash(&fields("{}", Some("alice")));
        assert_ne!(base, hash(&fields("{ }", Some("alice"))));
        assert_ne!(base, hash(&fields("{}", Some("alicf"))));
        assert_ne!(base, hash(&fields("{}", None)));
        assert_ne!(hash(&fields("{}", None)), hash(&fields("{}", Some(""))));
    }

    #[test]
    fn the_two_formats_hash_differently_for_the_same_record() {
        let text = "{}";
        let digest = super::super::body::digest(text);
        let mut v2 = fields(text, Some("alice"));
        v2.body = BodyHash::Digest(&digest);
        assert_ne!(hash(&fields(text, Some("alice"))), hash(&v2));
    }

    #[test]
    fn canonical_json_sorts_keys() {
        let v: serde_json::Value = serde_json::from_str(r#"{"b":1,"a":{"d":2,"c":3}}"#).unwrap();
        assert_eq!(canonical(&v), r#"{"a":{"c":3,"d":2},"b":1}"#);
    }
}
