//! Read-only work on connections of their own, off the async runtime.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::Connection;

use crate::store::{self, StoreError};

/// Idle reader connections are kept up to this many.
const MAX_IDLE: usize = 16;

/// A small pool of reader connections.
#[derive(Clone)]
pub struct Readers {
    path: PathBuf,
    idle: Arc<Mutex<Vec<Connection>>>,
}

impl Readers {
    pub fn new(path: &Path) -> Readers {
        Readers {
            path: path.to_path_buf(),
            idle: Arc::default(),
        }
    }

    /// Runs `f` on a reader connection in the blocking thread pool.
    pub async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let pool = self.clone();
        tokio::task::spawn_blocking(move || {
            let taken = pool.idle.lock().ok().and_then(|mut v| v.pop());
            let mut conn = match taken {
                Some(c) => c,
                None => store::connect(&pool.path)?,
            };
            let out = f(&mut conn);
            if let Ok(mut idle) = pool.idle.lock() {
                if idle.len() < MAX_IDLE {
                    idle.push(conn);
                }
            }
            out
        })
        .await
        .map_err(|e| StoreError::invalid(format!("a database read did not finish: {e}")))?
    }
}
