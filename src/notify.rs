//! The notifier: a program from the policy's `notify` list, run once per
//! event with the event as one JSON object on its standard input.
//!
//! It runs without a shell, in the background, under a time limit; a
//! notifier that fails, hangs or cannot be started is logged and never
//! delays or changes a decision. At most [`MAX_RUNNING`] run at once and
//! the rest wait their turn; beyond [`MAX_QUEUED`] waiting events, new ones
//! are dropped with a warning — except break-glass uses, which always wait.
//!
//! Limit: the time limit kills the notifier process itself, not processes
//! it started; a notifier script should `exec` its last command.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;
use tokio::sync::Semaphore;

/// How long one notifier run may take before it is killed.
pub const TIME_LIMIT: Duration = Duration::from_secs(10);
/// Notifier processes running at once, at most.
pub const MAX_RUNNING: usize = 8;
/// Events waiting for a free notifier, at most (break-glass uses excepted).
pub const MAX_QUEUED: usize = 1024;

/// Runs notifier programs.
#[derive(Clone)]
pub struct Notifier {
    running: Arc<Semaphore>,
    queued: Arc<AtomicUsize>,
}

impl Default for Notifier {
    fn default() -> Notifier {
        Notifier {
            running: Arc::new(Semaphore::new(MAX_RUNNING)),
            queued: Arc::default(),
        }
    }
}

impl Notifier {
    /// Starts `program` (program path and arguments) with `event` on stdin,
    /// and returns at once. Must be called from within the async runtime.
    pub fn send(&self, program: &[String], event: serde_json::Value) {
        let Some((path, args)) = program.split_first() else {
            return;
        };
        let kind = event["event"].as_str().unwrap_or("?").to_string();
        if self.queued.load(Ordering::Relaxed) >= MAX_QUEUED && kind != "break-glass" {
            tracing::warn!(event = %kind, max = MAX_QUEUED, "notifier backlog full; event dropped");
            return;
        }
        self.queued.fetch_add(1, Ordering::Relaxed);
        let running = self.running.clone();
        let queued = self.queued.clone();
        let mut cmd = Command::new(path);
        cmd.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        let mut line = serde_json::to_vec(&event).unwrap_or_default();
        line.push(b'\n');
        let path = path.clone();
        tokio::spawn(async move {
            let permit = running.acquire_owned().await;
            queued.fetch_sub(1, Ordering::Relaxed);
            let Ok(_permit) = permit else {
                return;
            };
            let run = async {
                let mut child = cmd.spawn()?;
                if let Some(mut stdin) = child.stdin.take() {
                    // A notifier that does not read its input must not block us.
                    let _ = stdin.write_all(&line).await;
                }
                child.wait().await
            };
            match tokio::time::timeout(TIME_LIMIT, run).await {
                Ok(Ok(status)) if status.success() => {
                    tracing::debug!(event = %kind, program = %path, "notified");
                }
                Ok(Ok(status)) => {
                    tracing::warn!(event = %kind, program = %path, %status, "notifier failed");
                }
                Ok(Err(e)) => {
                    tracing::warn!(event = %kind, program = %path, error = %e, "cannot run notifier");
                }
                Err(_) => {
                    tracing::warn!(event = %kind, program = %path, limit = ?TIME_LIMIT, "notifier timed out; killed");
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_break_glass_event_waits_for_a_busy_notifier_instead_of_being_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("events");
        let script = dir.path().join("slow.sh");
        std::fs::write(
            &script,
            format!("#!/bin/sh\nsleep 1\ncat >> {}\n", out.display()),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let n = Notifier::default();
        let program = [script.display().to_string()];
        for i in 0..MAX_RUNNING {
            n.send(&program, serde_json::json!({"event": "pending", "n": i}));
        }
        n.send(&program, serde_json::json!({"event": "break-glass"}));
        for _ in 0..100 {
            if std::fs::read_to_string(&out).is_ok_and(|s| s.contains("break-glass")) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the break-glass event never reached the notifier");
    }

    #[tokio::test]
    async fn the_event_arrives_on_stdin_and_a_hanging_notifier_does_not_block() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("events");
        let script = dir.path().join("n.sh");
        std::fs::write(&script, format!("#!/bin/sh\ncat >> {}\n", out.display())).unwrap();
        let hang = dir.path().join("hang.sh");
        std::fs::write(&hang, "#!/bin/sh\nsleep 60\n").unwrap();
        for p in [&script, &hang] {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let n = Notifier::default();
        let started = std::time::Instant::now();
        n.send(
            &[hang.display().to_string()],
            serde_json::json!({"event": "x"}),
        );
        n.send(
            &[script.display().to_string()],
            serde_json::json!({"event": "pending", "n": 1}),
        );
        assert!(started.elapsed() < Duration::from_secs(1));
        for _ in 0..100 {
            if std::fs::read_to_string(&out).is_ok_and(|s| s.ends_with('\n')) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let text = std::fs::read_to_string(&out).unwrap();
        let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(v["event"], "pending");
    }
}
