//! How a record's body is stored: its canonical JSON text, LZ4-compressed.
//!
//! A body is about 2 KB of JSON, mostly the snapshot and the decision's
//! rules, and it compresses to about half. Stored as text, an issuance
//! record did not fit twice on a 4 KB page, so every issuance wrote a page
//! of its own to the WAL, and again when the WAL was copied back; stored
//! compressed, three share a page, and the log takes a third of the disk.
//!
//! The hash chain does not hash the stored bytes but the text's SHA-256
//! (record format 2, see [`super::chain`]): the text is what the record
//! says, and the chain's hash then covers a few hundred bytes (the digest
//! and the record's short fields) instead of the whole body.
//!
//! Stored form: an LZ4 block (the format of the `lz4` command's frames,
//! without the frame) preceded by the text's length as a little-endian
//! u32. `jitca audit show`, `list --json` and `verify` decode it.

use sha2::{Digest, Sha256};

/// How much larger than its compressed form a text can be: LZ4 encodes at
/// best about 255 bytes of a repeated run per input byte. A stored length
/// beyond that cannot be real, and is refused before anything is
/// allocated for it: a tampered length must not make a reader allocate
/// gigabytes. (No fixed cap: a revocation of every live certificate lists
/// every serial, megabytes of them on a large deployment.)
const MAX_EXPANSION: usize = 255;

/// A body ready to append: what the chain hashes and what is stored.
#[derive(Debug, Clone)]
pub struct Sealed {
    /// SHA-256 of the canonical JSON text.
    pub digest: [u8; 32],
    /// The text, compressed (see the module docs).
    pub stored: Vec<u8>,
}

impl Sealed {
    /// Seals the canonical JSON text of a body.
    pub fn of(text: &str) -> Sealed {
        Sealed {
            digest: digest(text),
            stored: lz4_flex::block::compress_prepend_size(text.as_bytes()),
        }
    }
}

/// The text of a stored body, or why it cannot be read (a record altered
/// by hand, or not written by jitca).
pub fn open(stored: &[u8]) -> Result<String, String> {
    let Some((size, block)) = stored.split_first_chunk::<4>() else {
        return Err("the stored body is shorter than its length prefix".into());
    };
    let size = u32::from_le_bytes(*size) as usize;
    let most = block.len().saturating_mul(MAX_EXPANSION).saturating_add(64);
    if size > most {
        return Err(format!(
            "the stored body claims {size} bytes, more than its {} compressed bytes can hold",
            block.len()
        ));
    }
    let text = lz4_flex::block::decompress(block, size)
        .map_err(|e| format!("the stored body does not decompress: {e}"))?;
    if text.len() != size {
        return Err("the stored body decompresses to another length than it claims".into());
    }
    String::from_utf8(text).map_err(|_| "the stored body is not UTF-8 text".into())
}

/// SHA-256 of a body text, as format 2 of the chain hashes it.
pub fn digest(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_body_opens_to_its_text_and_takes_less_room() {
        let text = r#"{"decision":{"rules":[{"passed":true,"rule":"posture managed-laptop: device.disk_encrypted == true","seen":"true, reported 5s ago"},{"passed":true,"rule":"posture managed-laptop: device.mdm_enrolled == true","seen":"true, reported 5s ago"}]}}"#;
        let sealed = Sealed::of(text);
        assert_eq!(open(&sealed.stored).unwrap(), text);
        assert_eq!(sealed.digest, digest(text));
        assert!(sealed.stored.len() < text.len(), "{}", sealed.stored.len());
    }

    #[test]
    fn a_body_over_a_mebibyte_opens() {
        // A revocation of 160,000 live certificates lists every serial: a
        // body of more than 1 MiB, which a fixed cap refused to read back.
        let serials: Vec<String> = (1..200_000).map(|n| n.to_string()).collect();
        let text = format!("{{\"serials\":[{}]}}", serials.join(","));
        assert!(text.len() > 1 << 20);
        assert_eq!(open(&Sealed::of(&text).stored).unwrap(), text);
        let zeros = "0".repeat(3 << 20);
        assert_eq!(open(&Sealed::of(&zeros).stored).unwrap(), zeros);
    }

    #[test]
    fn a_damaged_body_is_refused_without_allocating_what_it_claims() {
        let mut stored = Sealed::of("{\"a\":1}").stored;
        let huge = u32::MAX.to_le_bytes();
        let mut claims_too_much = stored.clone();
        claims_too_much[..4].copy_from_slice(&huge);
        assert!(open(&claims_too_much).unwrap_err().contains("claims"));
        assert!(open(&stored[..2]).is_err());
        let last = stored.len() - 1;
        stored[last] ^= 0xff;
        stored.truncate(last - 1);
        assert!(open(&stored).is_err());
        assert!(open(&[9, 0, 0, 0, 0xff, 0xff]).is_err());
    }
}
