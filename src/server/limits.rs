//! Rate limits on what a peer can make the daemon write.
//!
//! Refusals at authentication are audited, but a peer retrying one key
//! must not grow the audit log without bound: the same key refused from the
//! same peer for the same reason is recorded at most once a minute (the next
//! record says how many were folded into it), and at most 20 refusals a
//! second are recorded in all.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A refusal of one key from one peer is audited at most once per this interval.
const PER_KEY_INTERVAL: Duration = Duration::from_secs(60);
/// At most this many refusals are audited per second, all peers together.
const GLOBAL_PER_SECOND: u32 = 20;
/// Entries kept before old ones are pruned.
const MAX_ENTRIES: usize = 10_000;

/// Whether to write an audit record for a refusal.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    /// Write it; `suppressed` refusals of this key and peer were dropped since the last one.
    Record {
        suppressed: u64,
    },
    Drop,
}

#[derive(Default)]
pub struct RefusalLimiter {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    seen: HashMap<(IpAddr, String), (Instant, u64)>,
    window: Option<Instant>,
    in_window: u32,
}

impl RefusalLimiter {
    /// Whether to audit a refusal of the key `fingerprint` from `peer` for
    /// `reason`. A refusal for a new reason is never folded into an old one.
    pub fn admit(&self, peer: IpAddr, fingerprint: &str, reason: &str) -> Admit {
        self.admit_at(peer, &format!("{fingerprint} {reason}"), Instant::now())
    }

    fn admit_at(&self, peer: IpAddr, fingerprint: &str, now: Instant) -> Admit {
        let Ok(mut inner) = self.inner.lock() else {
            return Admit::Drop;
        };
        let key = (peer, fingerprint.to_string());
        if let Some((last, dropped)) = inner.seen.get_mut(&key) {
            if now.duration_since(*last) < PER_KEY_INTERVAL {
                *dropped += 1;
                return Admit::Drop;
            }
        }
        match inner.window {
            Some(start) if now.duration_since(start) < Duration::from_secs(1) => {
                if inner.in_window >= GLOBAL_PER_SECOND {
                    return Admit::Drop;
                }
                inner.in_window += 1;
            }
            _ => {
                inner.window = Some(now);
                inner.in_window = 1;
            }
        }
        if inner.seen.len() >= MAX_ENTRIES {
            inner
                .seen
                .retain(|_, (t, _)| now.duration_since(*t) < PER_KEY_INTERVAL);
            if inner.seen.len() >= MAX_ENTRIES {
                inner.seen.clear();
            }
        }
        let suppressed = inner
            .seen
            .insert(key, (now, 0))
            .map(|(_, d)| d)
            .unwrap_or(0);
        Admit::Record { suppressed }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_record_per_key_and_peer_per_interval() {
        let l = RefusalLimiter::default();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let t0 = Instant::now();
        assert_eq!(l.admit_at(ip, "k", t0), Admit::Record { suppressed: 0 });
        assert_eq!(
            l.admit_at(ip, "k", t0 + Duration::from_secs(1)),
            Admit::Drop
        );
        assert_eq!(l.admit_at(ip, "other", t0), Admit::Record { suppressed: 0 });
        assert_eq!(
            l.admit_at(ip, "k", t0 + PER_KEY_INTERVAL + Duration::from_secs(1)),
            Admit::Record { suppressed: 1 }
        );
    }

    #[test]
    fn a_flood_is_capped_globally() {
        let l = RefusalLimiter::default();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let t0 = Instant::now();
        let recorded = (0..100)
            .filter(|i| matches!(l.admit_at(ip, &format!("k{i}"), t0), Admit::Record { .. }))
            .count();
        assert_eq!(recorded, GLOBAL_PER_SECOND as usize);
    }
}
