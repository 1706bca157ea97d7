//! Rate limits on what a peer can make the daemon write.
//!
//! Refusals at authentication are audited, but a peer retrying keys must not
//! grow the audit log without bound. The same key refused from the same peer
//! for the same reason is recorded at most once a minute (the next record
//! says how many were folded into it). Refusals of keys that are not
//! enrolled — anyone can offer any public key — are also capped at 20 a
//! second in all; the next record says how many the cap dropped. Refusals
//! of enrolled keys (a suspended user, a disabled device) are never dropped
//! by that cap, so a flood of strangers cannot hide them.
//!
//! Requests are limited too: every `request` writes an audit record with a
//! full snapshot (about 2 KB), so one enrolled device asking in a loop
//! could grow the log by megabytes a minute. Each device may make
//! `--max-requests-per-minute` of them in a burst, the allowance coming
//! back evenly over the minute (a token bucket).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A refusal of one key from one peer for one reason is audited at most once per this interval.
const PER_KEY_INTERVAL: Duration = Duration::from_secs(60);
/// At most this many refusals of unknown keys are audited per second, all peers together.
const GLOBAL_PER_SECOND: u32 = 20;
/// Entries kept before old ones are pruned.
const MAX_ENTRIES: usize = 10_000;

/// Whether to write an audit record for a refusal.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    /// Write it. `repeats`: refusals of this key, peer and reason folded
    /// into this one since the last record; `dropped`: refusals of unknown
    /// keys the global cap dropped since the last record that said so.
    Record {
        repeats: u64,
        dropped: u64,
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
    dropped: u64,
}

impl RefusalLimiter {
    /// Whether to audit a refusal of the key `fingerprint` from `peer` for
    /// `reason`; `enrolled` when the key belongs to a known device.
    pub fn admit(&self, peer: IpAddr, fingerprint: &str, reason: &str, enrolled: bool) -> Admit {
        self.admit_at(
            peer,
            &format!("{fingerprint} {reason}"),
            enrolled,
            Instant::now(),
        )
    }

    fn admit_at(&self, peer: IpAddr, key: &str, enrolled: bool, now: Instant) -> Admit {
        let Ok(mut inner) = self.inner.lock() else {
            return Admit::Drop;
        };
        let key = (peer, key.to_string());
        if let Some((last, repeats)) = inner.seen.get_mut(&key) {
            if now.duration_since(*last) < PER_KEY_INTERVAL {
                *repeats += 1;
                return Admit::Drop;
            }
        }
        if !enrolled {
            match inner.window {
                Some(start) if now.duration_since(start) < Duration::from_secs(1) => {
                    if inner.in_window >= GLOBAL_PER_SECOND {
                        inner.dropped += 1;
                        return Admit::Drop;
                    }
                    inner.in_window += 1;
                }
                _ => {
                    inner.window = Some(now);
                    inner.in_window = 1;
                }
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
        let repeats = inner
            .seen
            .insert(key, (now, 0))
            .map(|(_, d)| d)
            .unwrap_or(0);
        let dropped = std::mem::take(&mut inner.dropped);
        Admit::Record { repeats, dropped }
    }
}

/// Devices whose request allowance is tracked before full ones are pruned.
const MAX_DEVICES: usize = 100_000;

/// The request allowance of each device; see the module's documentation.
pub struct RequestLimiter {
    /// Requests a device may make per minute, and in one burst; 0: no limit.
    per_minute: u32,
    buckets: Mutex<HashMap<i64, Bucket>>,
}

/// What is left of one device's allowance, as of `at`.
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RequestLimiter {
    /// At most `per_minute` requests a minute per device; 0 lifts the limit.
    pub fn new(per_minute: u32) -> RequestLimiter {
        RequestLimiter {
            per_minute,
            buckets: Mutex::default(),
        }
    }

    /// The limit, per device and minute (0: none).
    pub fn per_minute(&self) -> u32 {
        self.per_minute
    }

    /// Takes one request from `device`'s allowance, or says how long until
    /// one is back.
    pub fn take(&self, device: i64) -> Result<(), Duration> {
        self.take_at(device, Instant::now())
    }

    fn take_at(&self, device: i64, now: Instant) -> Result<(), Duration> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let full = f64::from(self.per_minute);
        let per_second = full / 60.0;
        let Ok(mut buckets) = self.buckets.lock() else {
            return Ok(());
        };
        if buckets.len() >= MAX_DEVICES && !buckets.contains_key(&device) {
            // A full bucket is the same as none.
            buckets.retain(|_, b| {
                b.tokens + now.duration_since(b.at).as_secs_f64() * per_second < full
            });
        }
        let bucket = buckets.entry(device).or_insert(Bucket {
            tokens: full,
            at: now,
        });
        let elapsed = now.duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * per_second).min(full);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / per_second))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip() -> IpAddr {
        "127.0.0.1".parse().unwrap()
    }

    #[test]
    fn one_record_per_key_peer_and_reason_per_interval() {
        let l = RefusalLimiter::default();
        let t0 = Instant::now();
        assert_eq!(
            l.admit_at(ip(), "k a", false, t0),
            Admit::Record {
                repeats: 0,
                dropped: 0
            }
        );
        assert_eq!(
            l.admit_at(ip(), "k a", false, t0 + Duration::from_secs(1)),
            Admit::Drop
        );
        assert_eq!(
            l.admit_at(ip(), "k b", false, t0),
            Admit::Record {
                repeats: 0,
                dropped: 0
            }
        );
        assert_eq!(
            l.admit_at(
                ip(),
                "k a",
                false,
                t0 + PER_KEY_INTERVAL + Duration::from_secs(1)
            ),
            Admit::Record {
                repeats: 1,
                dropped: 0
            }
        );
    }

    #[test]
    fn a_flood_of_unknown_keys_is_capped_and_counted() {
        let l = RefusalLimiter::default();
        let t0 = Instant::now();
        let recorded = (0..100)
            .filter(|i| {
                matches!(
                    l.admit_at(ip(), &format!("k{i}"), false, t0),
                    Admit::Record { .. }
                )
            })
            .count();
        assert_eq!(recorded, GLOBAL_PER_SECOND as usize);
        let later = t0 + Duration::from_secs(2);
        assert_eq!(
            l.admit_at(ip(), "new", false, later),
            Admit::Record {
                repeats: 0,
                dropped: 80
            }
        );
    }

    #[test]
    fn a_flood_cannot_hide_an_enrolled_key() {
        let l = RefusalLimiter::default();
        let t0 = Instant::now();
        for i in 0..100 {
            l.admit_at(ip(), &format!("k{i}"), false, t0);
        }
        assert!(matches!(
            l.admit_at(ip(), "bob disabled", true, t0),
            Admit::Record { .. }
        ));
    }

    #[test]
    fn each_device_gets_its_burst_then_one_request_per_share_of_the_minute() {
        let l = RequestLimiter::new(6);
        let t0 = Instant::now();
        for _ in 0..6 {
            assert_eq!(l.take_at(1, t0), Ok(()));
        }
        let wait = l.take_at(1, t0).unwrap_err();
        assert_eq!(wait.as_secs(), 10, "one request comes back every 10 s");
        // Another device has its own allowance.
        assert_eq!(l.take_at(2, t0), Ok(()));
        assert!(l.take_at(1, t0 + Duration::from_secs(9)).is_err());
        assert_eq!(l.take_at(1, t0 + Duration::from_secs(10)), Ok(()));
        assert!(l.take_at(1, t0 + Duration::from_secs(11)).is_err());
        // A long pause refills the burst, never beyond it.
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..6 {
            assert_eq!(l.take_at(1, later), Ok(()));
        }
        assert!(l.take_at(1, later).is_err());
    }

    #[test]
    fn a_limit_of_zero_lets_every_request_through() {
        let l = RequestLimiter::new(0);
        let t0 = Instant::now();
        assert!((0..10_000).all(|_| l.take_at(1, t0).is_ok()));
    }
}
