//! Checkpoints off the writer's path.
//!
//! In WAL mode a commit appends pages to the WAL, and a checkpoint copies
//! them back into the database file (and syncs it) so that the WAL can
//! start over. SQLite's automatic checkpoint runs inside the commit that
//! makes the WAL long enough: on the single writer thread, with every job
//! of that batch waiting for it (the longest stall an issuance saw, about
//! 25 ms at the 99th percentile under load, and a tenth of the writer's
//! time).
//!
//! Here a thread of its own, on its own connection, does that copying
//! while the writer goes on: the writer's commit wakes it when the WAL
//! reaches [`BACKGROUND_FROM`] pages. Such a checkpoint never waits for the
//! writer, but it cannot let the WAL start over while the writer keeps
//! appending: that needs a moment when every page has been copied and the
//! writer has not written since. So once the WAL reaches [`FINISH_AT`]
//! pages, the writer's commit checkpoints what is left itself, as
//! SQLite's automatic checkpoint did, and the next commit starts the WAL
//! over. Durability is unchanged: a commit is durable once its WAL pages
//! are synced, which the commit itself does.

use std::ffi::c_int;
use std::path::Path;
use std::sync::mpsc;
use std::thread;

use rusqlite::Connection;
use rusqlite::hooks::Wal;
use rusqlite::wal::CheckpointMode;

use super::StoreError;

/// The WAL size, in pages, at which a commit wakes the checkpoint thread.
pub const BACKGROUND_FROM: c_int = 6_000;

/// The WAL size, in pages, at which the writer's commit finishes the
/// checkpoint itself, so that the WAL starts over: about 32 MB.
pub const FINISH_AT: c_int = 8_000;

/// Starts the checkpoint thread for the database at `path` and hands the
/// checkpoints of `writer` (the writer's connection) to it.
pub fn hand_off(writer: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let conn = super::connect(path)?;
    // A wake-up never blocks the commit that sends it: one waits at most.
    let (wake, woken) = mpsc::sync_channel::<()>(1);
    thread::Builder::new()
        .name("jitca-checkpoint".into())
        .spawn(move || {
            while woken.recv().is_ok() {
                if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                    tracing::warn!(error = %e, "background checkpoint failed; the writer's will catch up");
                }
            }
        })
        .map_err(|e| StoreError::invalid(format!("cannot start the checkpoint thread: {e}")))?;
    // The thread is woken once per turn of the WAL: a checkpoint copies
    // each page once however often it was rewritten, so one long pass
    // costs less than many short ones.
    let mut woken_this_turn = false;
    writer.wal_hook(Some(move |wal: &mut Wal, pages: c_int| {
        if pages < BACKGROUND_FROM {
            woken_this_turn = false;
        } else if !woken_this_turn {
            woken_this_turn = true;
            let _ = wake.try_send(());
        }
        if pages >= FINISH_AT {
            // Busy while the thread's checkpoint runs: the next commit
            // tries again. Either way the commit itself has succeeded.
            if let Err(e) = wal.checkpoint_v2(CheckpointMode::PASSIVE) {
                tracing::debug!(error = %e, pages, "checkpoint deferred");
            }
        }
        Ok(())
    }))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::writer::Writer;

    /// The WAL's length in pages since it last started over, as another
    /// connection sees it.
    fn wal_pages(path: &Path) -> i64 {
        let conn = crate::store::connect(path).unwrap();
        // A NOOP checkpoint only reports.
        conn.query_row("PRAGMA wal_checkpoint(NOOP)", [], |r| r.get(1))
            .unwrap()
    }

    fn file_pages(path: &Path) -> u64 {
        std::fs::metadata(path).unwrap().len() / 4096
    }

    /// Commits `rows` rows of one page each, one commit per row.
    async fn write_rows(writer: &Writer, rows: usize) {
        for _ in 0..rows {
            writer
                .run(|c| {
                    c.execute("INSERT INTO t (b) VALUES (randomblob(3000))", [])?;
                    Ok(())
                })
                .await
                .unwrap();
        }
    }

    #[tokio::test]
    async fn checkpoints_run_beside_the_writer_and_the_wal_still_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let (conn, _) = crate::store::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE t (b BLOB)").unwrap();
        let writer = Writer::spawn(&path).unwrap();
        let before = file_pages(&path);

        // Past BACKGROUND_FROM, short of FINISH_AT: whatever reaches the
        // database file was copied by the checkpoint thread.
        let mut rows = 0;
        while wal_pages(&path) < BACKGROUND_FROM as i64 + 100 {
            assert!(
                rows < 4 * FINISH_AT as u64,
                "the WAL never reached {BACKGROUND_FROM} pages"
            );
            write_rows(&writer, 50).await;
            rows += 50;
        }
        assert!(wal_pages(&path) < FINISH_AT as i64);
        let mut copied = 0;
        for _ in 0..100 {
            copied = file_pages(&path) - before;
            if copied >= rows / 2 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert!(
            copied >= rows / 2,
            "the checkpoint thread copied {copied} pages of {rows} rows"
        );

        // Much more than FINISH_AT: the WAL starts over instead of growing.
        write_rows(&writer, FINISH_AT as usize * 2).await;
        let pages = wal_pages(&path);
        assert!(
            pages < FINISH_AT as i64 + 100,
            "the WAL grew to {pages} pages without starting over"
        );
    }
}
