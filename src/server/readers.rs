//! Read-only work on connections of their own, off the async runtime.
//!
//! A few threads, each owning one connection and a queue of its own.
//! Every request reads the database at least once (its identity at
//! authentication, its snapshot), so a read is the commonest trip off the
//! runtime. tokio's blocking pool made each of them a task handed to a
//! thread woken for it, which then went back to sleep: two wake-ups, a
//! spawned task and a mutex round trip per read, about a tenth of an
//! issuance's CPU under load. A thread that finds more reads queued when it
//! finishes one takes the next without sleeping.
//!
//! Several threads, not one: a read that waits on the disk (a cold page of
//! a large database) holds up only its own thread, because each read goes
//! to the thread with the fewest reads queued or running. (One queue shared
//! by all the threads, behind a mutex, cost a second wake-up per read: the
//! threads took turns waiting on the lock.)
//!
//! The read on every issuance's path, the snapshot of the requester's
//! device, is a few key lookups in small, hot tables, a few microseconds:
//! less than the two thread switches of a trip to a reader thread, which
//! were a tenth of an issuance's CPU under load. [`Readers::run_here`]
//! runs such a read on the calling thread instead, on a connection of its
//! own that never waits for a lock: a read that finds the database locked
//! (a recovery after a crash, an operator's exclusive lock) is handed to
//! the reader threads, which wait for it, so that the async runtime is
//! never held up by a lock. What it can still wait for: a cold page on a
//! slow disk, on these tables only, and SQLite's own retries while another
//! process holds the WAL's read locks through a recovery after a crash (up
//! to about ten seconds, after which the read goes to the reader threads).
//!
//! The identity lookup at authentication stays on the reader threads: a
//! burst of logins made SQLite allocate on the runtime's threads, between
//! the connections' own state, and 1,000 idle connections then held 0.9 MB
//! more.

use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::oneshot;

use crate::store::{self, StoreError};

/// A read: runs on a reader thread's connection, or is told there is none,
/// and takes itself off that thread's load (the second argument).
type Job = Box<dyn FnOnce(Result<&mut Connection, &StoreError>, &AtomicUsize) + Send>;

/// Reader threads: one per core, at least two, at most eight.
fn thread_count() -> usize {
    let cores = thread::available_parallelism().map_or(1, |n| n.get());
    cores.clamp(2, 8)
}

/// One reader thread's queue, how many reads it holds (queued or
/// running), and whether its thread is known to be gone.
struct Lane {
    jobs: mpsc::Sender<Job>,
    load: Arc<AtomicUsize>,
    dead: AtomicBool,
}

/// The most idle connections kept for [`Readers::run_here`]: one per
/// thread that runs such reads at once (the runtime's workers).
const MAX_HERE: usize = 16;

/// A handle to the reader threads. Cloning it is cheap; the threads stop
/// when the last handle is dropped.
#[derive(Clone)]
pub struct Readers {
    lanes: Arc<Vec<Lane>>,
    path: Arc<PathBuf>,
    /// Idle connections for [`Readers::run_here`].
    here: Arc<Mutex<Vec<Connection>>>,
}

impl Readers {
    /// Starts the reader threads on `path`. Each opens its connection when
    /// it starts, and again after a read found none: a database that cannot
    /// be opened fails the reads that need it, with the reason, not the
    /// start.
    pub fn new(path: &Path) -> Readers {
        let mut lanes = Vec::new();
        for i in 0..thread_count() {
            let (jobs, queue) = mpsc::channel::<Job>();
            let load = Arc::new(AtomicUsize::new(0));
            let (path, held) = (path.to_path_buf(), load.clone());
            let started = thread::Builder::new()
                .name(format!("jitca-reader-{i}"))
                .spawn(move || serve(&path, &queue, &held));
            match started {
                Ok(_) => lanes.push(Lane {
                    jobs,
                    load,
                    dead: AtomicBool::new(false),
                }),
                // The threads already started carry the reads; with none,
                // every read fails with "a database read did not finish".
                Err(e) => tracing::error!(error = %e, "cannot start a database reader thread"),
            }
        }
        Readers {
            lanes: Arc::new(lanes),
            path: Arc::new(path.to_path_buf()),
            here: Arc::default(),
        }
    }

    /// Runs `f` on the calling thread, on a connection that does not wait
    /// for locks: for the short reads on a request's path (see the module
    /// docs). If the database is locked, `f` runs on a reader thread
    /// instead, which waits as every reader does.
    pub async fn run_here<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Fn(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let idle = self.here.lock().ok().and_then(|mut idle| idle.pop());
        let conn = match idle {
            Some(conn) => Ok(conn),
            None => store::connect_waiting(&self.path, Duration::ZERO),
        };
        let Ok(mut conn) = conn else {
            // The reader threads report why the database cannot be opened.
            return self.run(f).await;
        };
        let out = f(&mut conn);
        if let Ok(mut idle) = self.here.lock()
            && idle.len() < MAX_HERE
        {
            idle.push(conn);
        }
        match out {
            Err(e) if e.is_locked() => self.run(f).await,
            out => out,
        }
    }

    /// Runs `f` on a reader connection, on the reader thread with the
    /// fewest reads in hand.
    pub async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let gone = || StoreError::invalid("a database read did not finish: see the daemon log");
        let (reply, answer) = oneshot::channel();
        let mut job: Job = Box::new(move |conn, load| {
            let out = match conn {
                Ok(conn) => f(conn),
                Err(e) => Err(StoreError::invalid(e.to_string())),
            };
            // Done before the caller hears, so that its next read sees it.
            load.fetch_sub(1, Ordering::Relaxed);
            let _ = reply.send(out);
        });
        loop {
            // A thread that died (a panic outside its read's catch) would
            // stay the least loaded for good: its queue refuses the read,
            // which goes to the next thread, and the dead one gets no more.
            let lane = self
                .lanes
                .iter()
                .filter(|lane| !lane.dead.load(Ordering::Relaxed))
                .min_by_key(|lane| lane.load.load(Ordering::Relaxed))
                .ok_or_else(gone)?;
            lane.load.fetch_add(1, Ordering::Relaxed);
            match lane.jobs.send(job) {
                Ok(()) => break,
                Err(mpsc::SendError(back)) => {
                    lane.load.fetch_sub(1, Ordering::Relaxed);
                    lane.dead.store(true, Ordering::Relaxed);
                    tracing::error!("a database reader thread is gone; its reads go to the others");
                    job = back;
                }
            }
        }
        answer.await.map_err(|_| gone())?
    }
}

/// One reader thread: runs the reads of its queue until every handle is
/// gone.
fn serve(path: &Path, queue: &mpsc::Receiver<Job>, load: &AtomicUsize) {
    let mut conn = store::connect(path);
    while let Ok(job) = queue.recv() {
        if conn.is_err() {
            conn = store::connect(path);
        }
        // A read that panics (a bug) fails alone: its caller hears that it
        // did not finish, and the connection it may have left inside a
        // transaction is replaced.
        let ran = panic::catch_unwind(AssertUnwindSafe(|| match &mut conn {
            Ok(c) => job(Ok(c), load),
            Err(e) => job(Err(e), load),
        }));
        if ran.is_err() {
            load.fetch_sub(1, Ordering::Relaxed);
            tracing::error!("a database read panicked; its connection is reopened");
            conn = store::connect(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reader threads on a fresh database (kept while the directory is).
    fn readers() -> (tempfile::TempDir, Readers) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        store::open(&path).unwrap();
        (dir, Readers::new(&path))
    }

    #[tokio::test]
    async fn a_read_here_runs_on_the_calling_thread_and_keeps_its_connection() {
        let (_dir, readers) = readers();
        let caller = thread::current().id();
        let read = |i: i64| {
            readers.run_here(move |c| {
                let v: i64 = c.query_row("SELECT ?1", [i], |r| r.get(0))?;
                Ok((v, thread::current().id()))
            })
        };
        // The first connection may not open at once: the reader threads
        // open theirs at the same moment, and one of them recovers the
        // WAL's index. Such a read goes to the reader threads, as a locked
        // one does, and the next one opens the connection.
        let mut tries = 0;
        while read(-1).await.unwrap().1 != caller {
            tries += 1;
            assert!(tries < 50, "no read ever ran on the calling thread");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for i in 0..3 {
            assert_eq!(read(i).await.unwrap(), (i, caller));
        }
        assert_eq!(
            readers.here.lock().unwrap().len(),
            1,
            "one connection, reused"
        );
    }

    #[tokio::test]
    async fn a_read_here_never_waits_for_a_lock_and_a_locked_one_goes_to_a_reader_thread() {
        let (_dir, readers) = readers();
        let caller = thread::current().id();
        let (waits, on) = readers
            .run_here(move |c| {
                let waits: i64 = c.pragma_query_value(None, "busy_timeout", |r| r.get(0))?;
                if thread::current().id() == caller {
                    // What SQLite says when another connection holds a lock.
                    let busy = rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY);
                    return Err(rusqlite::Error::SqliteFailure(busy, None).into());
                }
                Ok((waits, thread::current().id()))
            })
            .await
            .unwrap();
        assert_ne!(on, caller, "the locked read went to a reader thread");
        assert!(waits > 0, "where it may wait for the lock");
        // (The first read on the caller's thread may have found no
        // connection there yet: see the test above.)
        let here = loop {
            let (waits, on) = readers
                .run_here(|c| {
                    let waits: i64 = c.pragma_query_value(None, "busy_timeout", |r| r.get(0))?;
                    Ok((waits, thread::current().id()))
                })
                .await
                .unwrap();
            if on == caller {
                break waits;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert_eq!(
            here, 0,
            "a read on the caller's thread never waits for a lock"
        );
    }

    #[tokio::test]
    async fn reads_run_on_every_thread_and_a_failed_read_leaves_the_rest() {
        let (_dir, readers) = readers();
        let mut tasks = Vec::new();
        for i in 0..64 {
            let r = readers.clone();
            tasks.push(tokio::spawn(async move {
                r.run(move |c| {
                    if i % 8 == 0 {
                        return Err(StoreError::invalid("refused"));
                    }
                    let v: i64 = c.query_row("SELECT ?1 + 1", [i], |r| r.get(0))?;
                    Ok(v)
                })
                .await
            }));
        }
        let mut ok = 0;
        for (i, t) in tasks.into_iter().enumerate() {
            match t.await.unwrap() {
                Ok(v) => {
                    assert_eq!(v, i as i64 + 1);
                    ok += 1;
                }
                Err(e) => assert_eq!(e.to_string(), "refused"),
            }
        }
        assert_eq!(ok, 56);
    }

    #[tokio::test]
    async fn a_read_stuck_on_one_thread_does_not_hold_up_the_others() {
        let (_dir, readers) = readers();
        // A read that waits (as on a cold disk) until it is let go.
        let (release, stuck) = std::sync::mpsc::channel::<()>();
        let slow = {
            let r = readers.clone();
            tokio::spawn(async move {
                r.run(move |_| {
                    let _ = stuck.recv();
                    Ok(())
                })
                .await
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        for i in 0..20 {
            let v = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                readers.run(move |c| Ok(c.query_row("SELECT ?1", [i], |r| r.get::<_, i64>(0))?)),
            )
            .await
            .expect("a read queued behind the stuck one");
            assert_eq!(v.unwrap(), i);
        }
        assert!(!slow.is_finished());
        release.send(()).unwrap();
        slow.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_database_that_cannot_be_opened_fails_each_read_with_its_reason() {
        let dir = tempfile::tempdir().unwrap();
        // A directory is not a database file.
        let readers = Readers::new(dir.path());
        let err = readers.run(|_| Ok(())).await.unwrap_err();
        assert!(
            err.to_string().contains("cannot open database"),
            "unexpected error: {err}"
        );
    }

    #[tokio::test]
    async fn a_reader_thread_that_died_gets_no_more_reads() {
        // A panic outside the read's own catch kills its thread (as a log
        // line that cannot be written does, in the daemon): here the
        // panic's payload panics again when the thread drops it.
        struct PanicsWhenDropped;
        impl Drop for PanicsWhenDropped {
            fn drop(&mut self) {
                panic!("the payload of a panic panics too");
            }
        }
        let (_dir, readers) = readers();
        let r: Result<(), StoreError> = readers.run(|_| panic::panic_any(PanicsWhenDropped)).await;
        assert!(r.is_err());
        // Wait until that thread (the first: every load was zero) is gone,
        // without giving it a read: a probe that runs nothing is refused
        // once its queue is closed.
        let mut tries = 0;
        while readers.lanes[0].jobs.send(Box::new(|_, _| {})).is_ok() {
            tries += 1;
            assert!(tries < 500, "the reader thread did not die");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        // Each read, one after another, goes to the least loaded thread:
        // with every load at zero, the first, whose thread is gone.
        let read = |i: i64| {
            readers.run(move |c| Ok(c.query_row("SELECT ?1", [i], |r| r.get::<_, i64>(0))?))
        };
        for i in 0..thread_count() as i64 * 4 {
            assert_eq!(
                read(i).await.ok(),
                Some(i),
                "read {i} went to the dead thread"
            );
        }
    }

    #[tokio::test]
    async fn a_panicking_read_fails_alone_and_the_threads_carry_on() {
        let (_dir, readers) = readers();
        for _ in 0..thread_count() * 2 {
            let r: Result<(), StoreError> = readers.run(|_| panic!("a bug in a read")).await;
            assert!(r.is_err());
        }
        let v: i64 = readers
            .run(|c| Ok(c.query_row("SELECT 7", [], |r| r.get(0))?))
            .await
            .unwrap();
        assert_eq!(v, 7);
    }
}
