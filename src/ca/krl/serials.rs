//! Revoked serials packed into the subsections of one KRL certificate
//! section (PROTOCOL.krl §2.1–2.3): lists for isolated serials, ranges for
//! long runs, bitmaps for dense stretches with gaps.
//!
//! The choice is made by encoded size and is exact: a dynamic program over
//! the runs of consecutive serials finds the smallest sequence of
//! subsections, in time linear in the number of runs.

use std::collections::VecDeque;
use std::ops::Range;

use super::{KrlError, Writer};

/// PROTOCOL.krl §2: the certificate subsection types jitca emits.
const KRL_SECTION_CERT_SERIAL_LIST: u8 = 0x20;
const KRL_SECTION_CERT_SERIAL_RANGE: u8 = 0x21;
const KRL_SECTION_CERT_SERIAL_BITMAP: u8 = 0x22;

/// The widest bitmap OpenSSH reads back. PROTOCOL.krl §2.3 stores the bitmap
/// as an `mpint`, and OpenSSH refuses one longer than 2048 bytes
/// (`SSHBUF_MAX_BIGNUM`) after its leading zero: 16384 bits. A wider bitmap
/// makes the whole KRL unreadable, so `sshd` would refuse every key.
/// (OpenSSH 9.2's own `ssh-keygen -k` does not keep to this: given every
/// other serial below 100,000 it writes a KRL that it then refuses to read,
/// "bignum is too large".)
pub(super) const MAX_BITMAP_BITS: u64 = 16_384;

/// Every subsection's cost before its payload: a type byte and the
/// `uint32` length of its data string.
const SUBSECTION: i128 = 1 + 4;
/// One `uint64` serial in a list (PROTOCOL.krl §2.1).
const LIST_ENTRY: i128 = 8;
/// A range: `serial_min` and `serial_max` (PROTOCOL.krl §2.2).
const RANGE: i128 = SUBSECTION + 16;
/// A bitmap (PROTOCOL.krl §2.3) before its bits: `serial_offset`, the
/// `mpint` length, and one byte that every `nbits / 8 + 1` rounding adds.
/// An mpint of `nbits` bits (the top one set) takes `nbits / 8 + 1` bytes
/// either way: `ceil(nbits / 8)`, or one more for the zero byte that keeps
/// it positive when the top bit fills its byte.
const BITMAP_BASE: i128 = SUBSECTION + 8 + 4 + 1;

/// Consecutive revoked serials, both ends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    lo: u64,
    hi: u64,
}

impl Run {
    fn len(self) -> i128 {
        i128::from(self.hi - self.lo) + 1
    }
}

/// One planned subsection, over indices into the runs.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Subsection {
    List(Range<usize>),
    Range(usize),
    Bitmap(Range<usize>),
}

/// The serial subsections of a certificate section, one after another:
/// `serials` sorted, deduplicated and without 0 (which OpenSSH never
/// matches and refuses to read in a KRL). Empty when nothing is left.
pub(super) fn encode(serials: &[u64]) -> Result<Vec<u8>, KrlError> {
    let runs = runs(serials);
    let mut out = Writer::default();
    for subsection in plan(&runs).0 {
        let mut data = Writer::default();
        let kind = match subsection {
            Subsection::List(span) => {
                for run in &runs[span] {
                    for serial in run.lo..=run.hi {
                        data.u64(serial);
                    }
                }
                KRL_SECTION_CERT_SERIAL_LIST
            }
            Subsection::Range(i) => {
                // PROTOCOL.krl §2.2: serial_min <= serial <= serial_max.
                data.u64(runs[i].lo);
                data.u64(runs[i].hi);
                KRL_SECTION_CERT_SERIAL_RANGE
            }
            Subsection::Bitmap(span) => {
                let group = &runs[span];
                data.u64(group[0].lo);
                data.string(&bitmap(group))?;
                KRL_SECTION_CERT_SERIAL_BITMAP
            }
        };
        out.u8(kind);
        out.string(&data.0)?;
    }
    Ok(out.0)
}

/// The runs of consecutive serials in `serials`, in order, without 0.
fn runs(serials: &[u64]) -> Vec<Run> {
    let mut sorted: Vec<u64> = serials.iter().copied().filter(|&s| s != 0).collect();
    sorted.sort_unstable();
    sorted.dedup();
    let mut runs: Vec<Run> = Vec::new();
    for serial in sorted {
        match runs.last_mut() {
            Some(run) if run.hi.checked_add(1) == Some(serial) => run.hi = serial,
            _ => runs.push(Run {
                lo: serial,
                hi: serial,
            }),
        }
    }
    runs
}

/// PROTOCOL.krl §2.3: bit N of the big-endian `mpint` revokes serial
/// `group[0].lo + N`. The planner keeps the width within
/// [`MAX_BITMAP_BITS`]; the top bit is always set, so the mpint is minimal,
/// with a leading zero byte exactly when that bit would read as a sign.
fn bitmap(group: &[Run]) -> Vec<u8> {
    let (Some(first), Some(last)) = (group.first(), group.last()) else {
        return Vec::new();
    };
    let width = (last.hi - first.lo) as usize + 1;
    let len = width / 8 + 1;
    let mut bytes = vec![0u8; len];
    for run in group {
        for serial in run.lo..=run.hi {
            let bit = (serial - first.lo) as usize;
            bytes[len - 1 - bit / 8] |= 1 << (bit % 8);
        }
    }
    bytes
}

/// How the cheapest encoding of the first `j` runs ends.
#[derive(Debug, Clone, Copy)]
enum Last {
    Nothing,
    List,
    Range,
    Bitmap { first: usize },
}

/// The smallest sequence of subsections for `runs`, and its size in bytes.
///
/// `best[j]` is the cheapest encoding of `runs[..j]`; `open[j]` the
/// cheapest that ends in a list still open to more serials (a list's cost
/// is additive, so it is carried as a second state). A bitmap from run `i`
/// to run `j - 1` costs `best[i] + BITMAP_BASE + (end - lo_i) / 8`, where
/// `end` is one past its last serial; with `lo_i = 8a + r` and
/// `end = 8h + s` that is `best[i] - a + h + BITMAP_BASE - [r > s]`. So for
/// each residue `r` a sliding-window minimum of `best[i] - a`, over the
/// starts no more than [`MAX_BITMAP_BITS`] before `end`, gives the best
/// bitmap ending at each run.
fn plan(runs: &[Run]) -> (Vec<Subsection>, i128) {
    let n = runs.len();
    let mut best: Vec<(i128, Last)> = vec![(0, Last::Nothing); n + 1];
    // (cost, whether the list was already open before this run)
    let mut open: Vec<(i128, bool)> = vec![(0, false); n + 1];
    let mut starts: [VecDeque<(usize, i128)>; 8] = Default::default();

    for j in 1..=n {
        let run = runs[j - 1];

        let fresh = best[j - 1].0 + SUBSECTION;
        let (list_before, continued) = if j > 1 && open[j - 1].0 <= fresh {
            (open[j - 1].0, true)
        } else {
            (fresh, false)
        };
        open[j] = (list_before + LIST_ENTRY * run.len(), continued);
        let mut choice = (open[j].0, Last::List);

        let range = best[j - 1].0 + RANGE;
        if range < choice.0 {
            choice = (range, Last::Range);
        }

        let key = best[j - 1].0 - i128::from(run.lo / 8);
        let window = &mut starts[(run.lo % 8) as usize];
        while window.back().is_some_and(|&(_, k)| k >= key) {
            window.pop_back();
        }
        window.push_back((j - 1, key));
        let end = u128::from(run.hi) + 1;
        for (residue, window) in starts.iter_mut().enumerate() {
            while window
                .front()
                .is_some_and(|&(i, _)| u128::from(runs[i].lo) + u128::from(MAX_BITMAP_BITS) < end)
            {
                window.pop_front();
            }
            if let Some(&(first, key)) = window.front() {
                let borrow = i128::from(residue as u128 > end % 8);
                let cost = key + (end / 8) as i128 - borrow + BITMAP_BASE;
                if cost < choice.0 {
                    choice = (cost, Last::Bitmap { first });
                }
            }
        }
        best[j] = choice;
    }

    let mut subsections = Vec::new();
    let mut j = n;
    while j > 0 {
        match best[j].1 {
            Last::Nothing => break,
            Last::Range => {
                subsections.push(Subsection::Range(j - 1));
                j -= 1;
            }
            Last::Bitmap { first } => {
                subsections.push(Subsection::Bitmap(first..j));
                j = first;
            }
            Last::List => {
                let mut k = j;
                while k > 1 && open[k].1 {
                    k -= 1;
                }
                subsections.push(Subsection::List(k - 1..j));
                j = k - 1;
            }
        }
    }
    subsections.reverse();
    (subsections, best[n].0)
}

/// Revoked serials that need every subsection kind: isolated serials, the
/// run 100..=200, and 1000..1100 without the multiples of 7.
#[cfg(test)]
pub(super) fn revoked_mix() -> Vec<u64> {
    let mut serials = vec![5];
    serials.extend(100..=200);
    serials.extend((1000..1100).filter(|s| s % 7 != 0));
    serials.extend([50_000, 77_777, u64::MAX]);
    serials
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The subsection types in `encode(serials)`, in order.
    fn kinds(serials: &[u64]) -> Vec<u8> {
        let bytes = encode(serials).expect("encode");
        let mut kinds = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            kinds.push(bytes[at]);
            let len = u32::from_be_bytes(bytes[at + 1..at + 5].try_into().expect("len"));
            at += 5 + len as usize;
        }
        assert_eq!(at, bytes.len(), "subsections must fill the output exactly");
        kinds
    }

    /// A reproducible stream of pseudo-random numbers (xorshift64).
    fn pseudo_random(seed: u64) -> impl FnMut() -> u64 {
        let mut state = seed;
        move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        }
    }

    /// The same optimum by a plain quadratic search over every grouping.
    fn quadratic_best(runs: &[Run]) -> i128 {
        let n = runs.len();
        let mut best = vec![i128::MAX; n + 1];
        best[0] = 0;
        for j in 1..=n {
            best[j] = best[j - 1] + RANGE;
            let mut listed = 0;
            for i in (0..j).rev() {
                listed += runs[i].len();
                best[j] = best[j].min(best[i] + SUBSECTION + LIST_ENTRY * listed);
                let width = runs[j - 1].hi - runs[i].lo + 1;
                if width <= MAX_BITMAP_BITS {
                    let bytes = i128::from(width / 8 + 1);
                    best[j] = best[j].min(best[i] + SUBSECTION + 8 + 4 + bytes);
                }
            }
        }
        best[n]
    }

    #[test]
    fn zero_duplicates_and_order_are_normalised() {
        assert!(encode(&[0, 0]).expect("encode").is_empty());
        assert_eq!(
            encode(&[900, 0, 5, 900, 5]).expect("a"),
            encode(&[5, 900]).expect("b")
        );
        assert_eq!(kinds(&[5, 900]), vec![KRL_SECTION_CERT_SERIAL_LIST]);
    }

    #[test]
    fn ten_thousand_contiguous_serials_are_one_range() {
        let serials: Vec<u64> = (1..=10_000).collect();
        let bytes = encode(&serials).expect("encode");
        let mut expected = vec![KRL_SECTION_CERT_SERIAL_RANGE, 0, 0, 0, 16];
        expected.extend_from_slice(&1u64.to_be_bytes());
        expected.extend_from_slice(&10_000u64.to_be_bytes());
        assert_eq!(bytes, expected);
    }

    #[test]
    fn dense_block_with_gaps_is_a_bitmap_smaller_than_a_list() {
        let serials: Vec<u64> = (1000..1100).filter(|s| s % 7 != 0).collect();
        let bytes = encode(&serials).expect("encode");
        assert_eq!(kinds(&serials), vec![KRL_SECTION_CERT_SERIAL_BITMAP]);
        let as_list = 5 + 8 * serials.len();
        assert!(bytes.len() * 10 < as_list, "{} vs {as_list}", bytes.len());
    }

    #[test]
    fn bitmap_sets_bit_n_for_offset_plus_n_with_a_sign_byte_when_needed() {
        // Bits 0 and 7: one byte 0x81 would read as negative, so 00 81.
        let bytes = bitmap(&[Run { lo: 10, hi: 10 }, Run { lo: 17, hi: 17 }]);
        assert_eq!(bytes, vec![0x00, 0x81]);
        // Bits 0, 1 and 8: 01 03, no sign byte.
        let bytes = bitmap(&[Run { lo: 10, hi: 11 }, Run { lo: 18, hi: 18 }]);
        assert_eq!(bytes, vec![0x01, 0x03]);
    }

    #[test]
    fn two_close_serials_are_cheaper_as_a_bitmap_than_a_list() {
        // 18 bytes for a one-byte bitmap against 21 for a list of two.
        assert_eq!(kinds(&[5, 9]), vec![KRL_SECTION_CERT_SERIAL_BITMAP]);
        assert_eq!(encode(&[5, 9]).expect("encode").len(), 18);
    }

    #[test]
    fn mixed_input_uses_each_subsection_kind() {
        assert_eq!(
            kinds(&revoked_mix()),
            vec![
                KRL_SECTION_CERT_SERIAL_LIST,
                KRL_SECTION_CERT_SERIAL_RANGE,
                KRL_SECTION_CERT_SERIAL_BITMAP,
                KRL_SECTION_CERT_SERIAL_LIST,
            ]
        );
    }

    #[test]
    fn bitmaps_never_exceed_what_openssh_reads() {
        // Every other serial over 100,000: as dense as it gets, and far
        // wider than one bitmap may be.
        let serials: Vec<u64> = (1..100_000).step_by(2).collect();
        let runs = runs(&serials);
        let (subsections, _) = plan(&runs);
        assert!(subsections.len() > 1);
        for subsection in &subsections {
            let Subsection::Bitmap(span) = subsection else {
                panic!("expected only bitmaps, got {subsection:?}");
            };
            let width = runs[span.end - 1].hi - runs[span.start].lo + 1;
            assert!(width <= MAX_BITMAP_BITS, "width {width}");
        }
    }

    #[test]
    fn planned_cost_is_the_encoded_size() {
        let mut next = pseudo_random(0x5eed);
        for round in 0..200 {
            let count = (next() % 300) as usize;
            let spread = [50, 500, 5_000, 100_000][round % 4];
            let serials: Vec<u64> = (0..count).map(|_| next() % spread).collect();
            let (_, cost) = plan(&runs(&serials));
            let bytes = encode(&serials).expect("encode");
            assert_eq!(cost, bytes.len() as i128, "round {round}");
        }
    }

    #[test]
    fn planner_matches_a_quadratic_search_over_all_groupings() {
        let mut next = pseudo_random(0xbadc0ffee);
        for round in 0..300 {
            let count = (next() % 120) as usize;
            let spread = [40, 400, 4_000, 40_000][round % 4];
            let serials: Vec<u64> = (0..count).map(|_| 1 + next() % spread).collect();
            let runs = runs(&serials);
            assert_eq!(plan(&runs).1, quadratic_best(&runs), "round {round}");
        }
    }

    #[test]
    fn largest_serials_do_not_overflow() {
        let serials = [1, u64::MAX];
        assert_eq!(kinds(&serials), vec![KRL_SECTION_CERT_SERIAL_LIST]);
        let serials = [u64::MAX - 9, u64::MAX];
        assert_eq!(kinds(&serials), vec![KRL_SECTION_CERT_SERIAL_BITMAP]);
        let serials: Vec<u64> = (u64::MAX - 100..=u64::MAX).collect();
        assert_eq!(kinds(&serials), vec![KRL_SECTION_CERT_SERIAL_RANGE]);
    }
}
