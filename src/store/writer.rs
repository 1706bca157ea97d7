//! The daemon's single writer thread, with group commit.
//!
//! Serial numbers and the audit chain need one order, so every write of the
//! daemon runs on one connection owned by one thread. Jobs queue on a
//! channel; the thread takes every job that is waiting (up to
//! [`MAX_BATCH`]), runs each inside its own savepoint of one transaction,
//! commits once, and only then answers each job. A job's result therefore
//! never reaches its caller before the commit that holds its writes is
//! durable, and a failed commit turns every result of the batch into an
//! error: nothing is reported as written that was not.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;

use rusqlite::Connection;
use tokio::sync::oneshot;

use super::StoreError;

/// The most jobs committed together.
pub const MAX_BATCH: usize = 256;

/// What a finished job does once the batch's commit is known.
type Completion = Box<dyn FnOnce(Result<(), String>) + Send>;
/// A job: runs on the writer's connection, says whether it succeeded, and
/// hands back what to do after the commit.
type Job = Box<dyn FnOnce(&Connection) -> (bool, Completion) + Send>;

/// A handle to the writer thread. Cloning it is cheap; the thread stops
/// when the last handle is dropped.
#[derive(Clone)]
pub struct Writer {
    jobs: mpsc::Sender<Job>,
}

impl Writer {
    /// Opens a connection to `path` and starts the writer thread on it.
    pub fn spawn(path: &Path) -> Result<Writer, StoreError> {
        let mut conn = super::connect(path)?;
        // Checkpoints run on a thread of their own (see `checkpoint`). The
        // WAL starts over every 8,000 pages or so, about 32 MB: issuance
        // rewrites the same few pages batch after batch (the tails of the
        // audit and certificate tables and of their indexes), and a longer
        // WAL lets a checkpoint copy each of them once. It is kept at most
        // at 64 MB on disk.
        super::checkpoint::hand_off(&mut conn, path)?;
        conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
        let file = OpenedFile::of(path)?;
        let (jobs, queue) = mpsc::channel::<Job>();
        thread::Builder::new()
            .name("jitca-writer".into())
            .spawn(move || run(conn, queue, &file))
            .map_err(|e| StoreError::invalid(format!("cannot start the writer thread: {e}")))?;
        Ok(Writer { jobs })
    }

    /// Runs `f` in the writer's transaction and returns its result once the
    /// transaction has committed. If `f` fails, its writes are rolled back
    /// and the rest of the batch is unaffected.
    pub async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let result = f(conn);
            let ok = result.is_ok();
            let completion: Completion = Box::new(move |commit| {
                let out = match commit {
                    Ok(()) => result,
                    Err(e) => Err(StoreError::invalid(format!(
                        "the database commit failed, nothing was stored: {e}"
                    ))),
                };
                let _ = reply.send(out);
            });
            (ok, completion)
        });
        self.jobs.send(job).map_err(|_| StoreError::WriterGone)?;
        answer.await.map_err(|_| StoreError::WriterGone)?
    }
}

fn run(conn: Connection, queue: mpsc::Receiver<Job>, file: &OpenedFile) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        commit_batch(&conn, batch, file);
    }
}

/// The database file the writer opened, to notice it being removed or
/// replaced under the running daemon: its connection would go on writing
/// to the old file, which is gone with every record in it at the next
/// start.
struct OpenedFile {
    path: PathBuf,
    id: (u64, u64),
}

impl OpenedFile {
    fn of(path: &Path) -> Result<OpenedFile, StoreError> {
        let id = Self::id(path)
            .map_err(|e| StoreError::invalid(format!("cannot read {}: {e}", path.display())))?;
        Ok(OpenedFile {
            path: path.to_path_buf(),
            id,
        })
    }

    /// The file's device and inode numbers.
    fn id(path: &Path) -> std::io::Result<(u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path)?;
        Ok((meta.dev(), meta.ino()))
    }

    /// Fails when the path no longer names the file that was opened.
    fn check(&self) -> Result<(), String> {
        match Self::id(&self.path) {
            Ok(id) if id == self.id => Ok(()),
            _ => Err(format!(
                "the database file {} was removed or replaced while jitca ran: restart jitca serve",
                self.path.display()
            )),
        }
    }
}

fn commit_batch(conn: &Connection, batch: Vec<Job>, file: &OpenedFile) {
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        let message = e.to_string();
        // Dropping the jobs unrun closes their reply channels: each caller
        // gets an error, and nothing was written.
        tracing::error!(error = %message, jobs = batch.len(), "cannot begin a write transaction");
        return;
    }

    let mut completions = Vec::with_capacity(batch.len());
    for job in batch {
        let savepoint = cached(conn, "SAVEPOINT job");
        let (ok, completion) = job(conn);
        let end = match (savepoint.is_ok(), ok) {
            (true, true) => cached(conn, "RELEASE job"),
            (true, false) => conn.execute_batch("ROLLBACK TO job; RELEASE job"),
            (false, _) => savepoint,
        };
        let ok = ok && end.is_ok();
        completions.push((ok, completion));
    }

    // Fail closed: a commit to a file that is no longer the database would
    // report records written that no one will ever read.
    let commit = file
        .check()
        .and_then(|()| conn.execute_batch("COMMIT").map_err(|e| e.to_string()));
    if let Err(e) = &commit {
        tracing::error!(error = %e, "the batch was not committed");
        let _ = conn.execute_batch("ROLLBACK");
    }
    for (ok, completion) in completions {
        // A job that failed carries its own error; the commit result only
        // matters for the ones that succeeded.
        completion(if ok { commit.clone() } else { Ok(()) });
    }
}

/// Runs one statement that every job runs, compiled once.
fn cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(path: &Path) -> i64 {
        let conn = super::super::connect(path).unwrap();
        conn.query_row("SELECT COUNT(*) FROM users", [], |r| r.get(0))
            .unwrap()
    }

    #[tokio::test]
    async fn results_arrive_after_commit_and_failed_jobs_roll_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        super::super::open(&path).unwrap();
        let writer = Writer::spawn(&path).unwrap();

        let mut tasks = Vec::new();
        for i in 0..50 {
            let w = writer.clone();
            tasks.push(tokio::spawn(async move {
                w.run(move |c| {
                    c.execute(
                        "INSERT INTO users (name, status, created_at) VALUES (?1, 'active', 0)",
                        [format!("u{i}")],
                    )?;
                    if i % 10 == 0 {
                        return Err(StoreError::invalid("refused"));
                    }
                    Ok(i)
                })
                .await
            }));
        }
        let mut ok = 0;
        for t in tasks {
            if t.await.unwrap().is_ok() {
                ok += 1;
                // Visible from another connection: the commit has happened.
            }
        }
        assert_eq!(ok, 45);
        assert_eq!(count(&path), 45);
    }

    #[tokio::test]
    async fn a_failed_commit_is_reported_to_every_job() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        super::super::open(&path).unwrap();
        let writer = Writer::spawn(&path).unwrap();
        // A deferred foreign key violation only shows at COMMIT.
        let r = writer
            .run(|c| {
                c.execute_batch("PRAGMA defer_foreign_keys = ON")?;
                c.execute(
                    "INSERT INTO user_groups (user_id, grp) VALUES (999, 'g')",
                    [],
                )?;
                Ok(())
            })
            .await;
        assert!(r.is_err(), "a commit that fails must not report success");
        let conn = super::super::connect(&path).unwrap();
        let n: i64 = conn
            .query_row("SELECT COUNT(*) FROM user_groups", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0);
    }

    #[tokio::test]
    async fn nothing_is_reported_written_once_the_database_file_is_removed_or_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        super::super::open(&path).unwrap();
        let writer = Writer::spawn(&path).unwrap();
        let add = |name: &'static str| {
            let w = writer.clone();
            async move {
                w.run(move |c| {
                    c.execute(
                        "INSERT INTO users (name, status, created_at) VALUES (?1, 'active', 0)",
                        [name],
                    )?;
                    Ok(())
                })
                .await
            }
        };
        add("before").await.unwrap();

        // Moved away: the writer's connection still has the old file open.
        let moved = dir.path().join("moved.db");
        std::fs::rename(&path, &moved).unwrap();
        let err = add("moved").await.unwrap_err().to_string();
        assert!(err.contains("was removed or replaced"), "{err}");
        // Back in place, it is the database again, without what was refused.
        std::fs::rename(&moved, &path).unwrap();
        add("back").await.unwrap();
        let names = {
            let conn = super::super::connect(&path).unwrap();
            let mut stmt = conn.prepare("SELECT name FROM users ORDER BY id").unwrap();
            let rows = stmt.query_map([], |r| r.get::<_, String>(0)).unwrap();
            rows.collect::<Result<Vec<_>, _>>().unwrap()
        };
        assert_eq!(names, ["before", "back"]);

        // Replaced by another database at the same path (its WAL with it).
        for suffix in ["", "-wal", "-shm"] {
            let from = dir.path().join(format!("w.db{suffix}"));
            if from.exists() {
                std::fs::rename(&from, dir.path().join(format!("old.db{suffix}"))).unwrap();
            }
        }
        super::super::open(&path).unwrap();
        let err = add("replaced").await.unwrap_err().to_string();
        assert!(err.contains("restart jitca serve"), "{err}");
        assert_eq!(count(&path), 0);
    }
}
