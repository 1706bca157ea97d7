//! A requester that stays connected: `ssh ... request ROLE --wait` (or
//! `fetch ID --wait`) running in the background while the test acts as an
//! approver, its output gathered as it arrives and collected at the end
//! under a bounded timeout.
//!
//! Spawning two of them back to back is also how the race tests send two
//! commands "at the same moment".

use std::io::Read;
use std::path::Path;
use std::process::{Child, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::daemon::{Daemon, ca_command};
use super::describe;

/// How long a waiting command may take unless a test says otherwise.
pub const WAIT_TIMEOUT: Duration = Duration::from_secs(40);

/// A background `ssh` to the CA; killed on drop if still running.
pub struct Waiting {
    shown: String,
    child: Child,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
}

impl Waiting {
    /// Starts `ssh ... 127.0.0.1 COMMAND` with KEY against the daemon and
    /// returns at once.
    pub fn spawn(daemon: &Daemon, key: &Path, command: &str) -> Waiting {
        let mut cmd = ca_command(daemon, key, None, command);
        let shown = format!("{cmd:?}");
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {shown}: {e}"));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            gather(child.stdout.take(), Arc::clone(&stdout)),
            gather(child.stderr.take(), Arc::clone(&stderr)),
        ];
        Waiting {
            shown,
            child,
            stdout,
            stderr,
            readers,
        }
    }

    /// What the command has printed on stderr so far.
    pub fn stderr_so_far(&self) -> String {
        text_of(&self.stderr)
    }

    /// Waits until stderr so far satisfies `ready` and returns it; fails the
    /// test (with the output) if the command ends first or `timeout` passes.
    /// `what` says what was awaited, for the failure message.
    pub fn wait_for_stderr(
        &mut self,
        what: &str,
        timeout: Duration,
        ready: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.stderr_so_far();
            if ready(&text) {
                return text;
            }
            let exited = matches!(self.child.try_wait(), Ok(Some(_)));
            if exited || Instant::now() >= deadline {
                // Output may still be on its way from a command that just ended.
                std::thread::sleep(Duration::from_millis(200));
                let text = self.stderr_so_far();
                if ready(&text) {
                    return text;
                }
                let why = if exited {
                    "it ended first".to_string()
                } else {
                    format!("not within {timeout:?}")
                };
                panic!(
                    "waiting for {what} from {} ({why})\n--- stdout ---\n{}\n--- stderr ---\n{text}",
                    self.shown,
                    text_of(&self.stdout)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the command to end and returns its output; kills it and
    /// fails the test if it runs longer than `timeout`.
    pub fn finish(mut self, timeout: Duration) -> Output {
        let deadline = Instant::now() + timeout;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Ok(None) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    let out = self.collect(std::process::ExitStatus::default());
                    panic!(
                        "{} still running after {timeout:?}; killed\n{}",
                        self.shown,
                        describe(&out)
                    );
                }
                Err(e) => panic!("cannot wait for {}: {e}", self.shown),
            }
        };
        self.collect(status)
    }

    fn collect(&mut self, status: std::process::ExitStatus) -> Output {
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        Output {
            status,
            stdout: bytes_of(&self.stdout),
            stderr: bytes_of(&self.stderr),
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Copies a pipe into a shared buffer as data arrives.
fn gather<R: Read + Send + 'static>(pipe: Option<R>, into: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let Some(mut pipe) = pipe else { return };
        let mut chunk = [0u8; 4096];
        loop {
            match pipe.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => match into.lock() {
                    Ok(mut buf) => buf.extend_from_slice(&chunk[..n]),
                    Err(_) => break,
                },
            }
        }
    })
}

fn bytes_of(buf: &Mutex<Vec<u8>>) -> Vec<u8> {
    buf.lock().map(|b| b.clone()).unwrap_or_default()
}

fn text_of(buf: &Mutex<Vec<u8>>) -> String {
    String::from_utf8_lossy(&bytes_of(buf)).into_owned()
}
