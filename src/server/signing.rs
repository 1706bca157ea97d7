//! What signing needs outside the writer's transaction: serial numbers
//! reserved in blocks, and the CA key last seen active.
//!
//! Signing (an Ed25519 signature and the check of it) is the costliest step
//! of an issuance. Done inside a job of the single writer, it ran on one
//! core for every request of the daemon. So a certificate is signed before
//! its writer job, on the requester's own task, with a serial from a block
//! reserved beforehand and with the key last seen active; the writer job
//! then checks, under the write lock, that this key is still the active one
//! (a rotation or an emergency revocation committed by another process
//! makes it sign again with the new key) before it stores the certificate
//! and its audit record. The certificate still leaves only after that
//! commit.
//!
//! Serials stay unique, non-zero and increasing from one block to the next
//! (PROTOCOL.certkeys leaves their meaning to the CA; a KRL revokes by
//! serial, so two certificates with one serial must never exist). A block
//! is reserved by moving the `serial` counter to its end in a committed
//! transaction, so a restart, or another daemon, carries on after it. The
//! serials of a block left unused at a restart are skipped, never reused.

use std::ops::Range;
use std::sync::{Arc, Mutex};

use rusqlite::Connection;

use super::Readers;
use crate::ca::keys::CaKey;
use crate::ca::registry::Signers;
use crate::store::StoreError;
use crate::store::writer::Writer;

/// Serials reserved by one writer job.
pub const SERIAL_BLOCK: u64 = 256;

/// The serial block in use and the CA key last seen active.
#[derive(Default)]
pub struct Issuer {
    serials: tokio::sync::Mutex<Range<u64>>,
    key: Mutex<Option<(i64, Arc<CaKey>)>>,
}

impl Issuer {
    /// The next serial: from the current block, or from a new block that a
    /// writer job reserves (and commits) first.
    pub async fn serial(&self, writer: &Writer) -> Result<u64, StoreError> {
        let mut block = self.serials.lock().await;
        if block.is_empty() {
            let first = writer
                .run(|conn| reserve_serials(conn, SERIAL_BLOCK))
                .await?;
            *block = first..first + SERIAL_BLOCK;
        }
        let serial = block.start;
        block.start += 1;
        Ok(serial)
    }

    /// The CA key last seen active, with its row id; read from the database
    /// (on a reader connection) when none was seen yet.
    pub async fn key(
        &self,
        readers: &Readers,
        signers: &Signers,
    ) -> Result<(i64, Arc<CaKey>), StoreError> {
        if let Some(seen) = self.key.lock().ok().and_then(|k| k.clone()) {
            return Ok(seen);
        }
        let signers = signers.clone();
        let seen = readers.run(move |conn| signers.active(conn)).await?;
        if let Ok(mut slot) = self.key.lock() {
            *slot = Some(seen.clone());
        }
        Ok(seen)
    }

    /// Forgets the key last seen active: the writer found another one active.
    pub fn forget_key(&self) {
        if let Ok(mut slot) = self.key.lock() {
            *slot = None;
        }
    }
}

/// Reserves `count` serials after every serial handed out so far and
/// returns the first. The counter only goes up (pruning old certificate
/// rows cannot make a serial come back); runs in the writer's transaction,
/// so two reservations never overlap.
pub fn reserve_serials(conn: &Connection, count: u64) -> Result<u64, StoreError> {
    let count = count.max(1);
    let (counter, max): (i64, i64) = conn
        .prepare_cached(
            "SELECT (SELECT COALESCE(MAX(value), 0) FROM counters WHERE name = 'serial'),
                    (SELECT COALESCE(MAX(serial), 0) FROM certificates)",
        )?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let first = u64::try_from(counter.max(max))
        .ok()
        .and_then(|m| m.checked_add(1))
        .filter(|first| {
            first
                .checked_add(count - 1)
                .is_some_and(|last| last <= i64::MAX as u64)
        })
        .ok_or_else(|| StoreError::invalid("certificate serials are exhausted"))?;
    conn.prepare_cached(
        "INSERT INTO counters (name, value) VALUES ('serial', ?1)
         ON CONFLICT (name) DO UPDATE SET value = excluded.value",
    )?
    .execute([(first + count - 1) as i64])?;
    Ok(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_never_come_back_after_certificate_rows_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let (conn, _) = crate::store::open(&dir.path().join("s.db")).unwrap();
        assert_eq!(reserve_serials(&conn, 1).unwrap(), 1);
        assert_eq!(reserve_serials(&conn, 1).unwrap(), 2);
        // Pruning every certificate row must not restart the numbering.
        conn.execute("DELETE FROM certificates", []).unwrap();
        assert_eq!(reserve_serials(&conn, 1).unwrap(), 3);
    }

    #[test]
    fn blocks_follow_each_other_without_overlap() {
        let dir = tempfile::tempdir().unwrap();
        let (conn, _) = crate::store::open(&dir.path().join("s.db")).unwrap();
        assert_eq!(reserve_serials(&conn, 256).unwrap(), 1);
        assert_eq!(reserve_serials(&conn, 256).unwrap(), 257);
        let counter: i64 = conn
            .query_row(
                "SELECT value FROM counters WHERE name = 'serial'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(counter, 512, "the counter holds the last serial reserved");
    }

    #[test]
    fn a_block_past_the_largest_serial_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (conn, _) = crate::store::open(&dir.path().join("s.db")).unwrap();
        conn.execute(
            "INSERT INTO counters (name, value) VALUES ('serial', ?1)
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            [i64::MAX - 10],
        )
        .unwrap();
        assert!(reserve_serials(&conn, 256).is_err());
        assert_eq!(reserve_serials(&conn, 10).unwrap(), (i64::MAX - 9) as u64);
    }

    #[tokio::test]
    async fn serials_come_from_one_block_until_it_is_used_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        crate::store::open(&path).unwrap();
        let writer = Writer::spawn(&path).unwrap();
        let issuer = Issuer::default();
        let mut seen = Vec::new();
        for _ in 0..SERIAL_BLOCK + 2 {
            seen.push(issuer.serial(&writer).await.unwrap());
        }
        let expected: Vec<u64> = (1..=SERIAL_BLOCK + 2).collect();
        assert_eq!(seen, expected);
        // A second daemon (or a restart) starts after the reserved blocks.
        let other = Issuer::default();
        assert_eq!(other.serial(&writer).await.unwrap(), 2 * SERIAL_BLOCK + 1);
    }
}
