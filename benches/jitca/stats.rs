//! Latency summaries and the plain-text tables the benchmark prints.

use std::fmt::Write as _;
use std::time::Duration;

/// What one measured run did: how many operations, over how long, and how
/// long each took.
#[derive(Debug, Clone)]
pub struct Summary {
    pub count: usize,
    pub errors: usize,
    pub wall: Duration,
    pub p50: Duration,
    pub p99: Duration,
    /// CPU time the whole process used during the run, when measured.
    pub cpu: Option<Duration>,
}

impl Summary {
    /// Summarises per-operation latencies measured over `wall`.
    pub fn new(mut latencies: Vec<Duration>, errors: usize, wall: Duration) -> Summary {
        latencies.sort_unstable();
        Summary {
            count: latencies.len(),
            errors,
            wall,
            p50: percentile(&latencies, 50.0),
            p99: percentile(&latencies, 99.0),
            cpu: None,
        }
    }

    /// The same, with the process CPU time used since `cpu_before`.
    pub fn with_cpu(mut self, cpu_before: Duration) -> Summary {
        self.cpu = Some(process_cpu().saturating_sub(cpu_before));
        self
    }

    /// Process CPU time per completed operation, when measured.
    pub fn cpu_per_op(&self) -> Option<Duration> {
        let cpu = self.cpu?;
        (self.count > 0).then(|| cpu / self.count as u32)
    }

    /// Completed operations per second of wall time.
    pub fn per_sec(&self) -> f64 {
        let secs = self.wall.as_secs_f64();
        if secs > 0.0 {
            self.count as f64 / secs
        } else {
            0.0
        }
    }

    /// Wall time per completed operation: the inverse of [`Summary::per_sec`].
    pub fn per_op(&self) -> Duration {
        if self.count == 0 {
            return Duration::ZERO;
        }
        self.wall / self.count as u32
    }
}

/// CPU time this process (all its threads) has used so far.
pub fn process_cpu() -> Duration {
    cpu_of("self", false)
}

/// What this process has written so far through `write` and `pwrite`
/// calls, from `/proc/self/io` (zero where it cannot be read).
#[derive(Debug, Clone, Copy, Default)]
pub struct Writes {
    pub bytes: u64,
    pub calls: u64,
}

impl Writes {
    /// What was written since `before`.
    pub fn since(self, before: Writes) -> Writes {
        Writes {
            bytes: self.bytes.saturating_sub(before.bytes),
            calls: self.calls.saturating_sub(before.calls),
        }
    }
}

/// This process's [`Writes`] so far.
pub fn process_writes() -> Writes {
    let io = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    let field = |name: &str| {
        io.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    Writes {
        bytes: field("wchar:"),
        calls: field("syscw:"),
    }
}

/// CPU time used by process `pid` (`self` for this one), from
/// `/proc/PID/stat`: user and system time, in clock ticks of 10 ms; with
/// `children`, also that of the children it has reaped (sshd's
/// per-connection processes).
pub fn cpu_of(pid: &str, children: bool) -> Duration {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Duration::ZERO;
    };
    // Fields after the command name (which may hold spaces) start at field 3.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return Duration::ZERO;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime, stime, cutime, cstime are fields 14 to 17, so 11 to 14 here.
    let mut total = ticks(11) + ticks(12);
    if children {
        total += ticks(13) + ticks(14);
    }
    Duration::from_millis(total * 10)
}

/// The nearest-rank percentile `p` (0 to 100) of sorted values.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A duration in the unit that keeps three significant digits readable.
pub fn dur(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns < 10_000 {
        format!("{ns} ns")
    } else if ns < 10_000_000 {
        format!("{:.1} µs", ns as f64 / 1e3)
    } else if ns < 10_000_000_000 {
        format!("{:.2} ms", ns as f64 / 1e6)
    } else {
        format!("{:.2} s", ns as f64 / 1e9)
    }
}

/// A rate with a thousands separator, e.g. `12,345/s`.
pub fn rate(per_sec: f64) -> String {
    if per_sec < 100.0 {
        return format!("{per_sec:.1}/s");
    }
    format!("{}/s", thousands(per_sec.round() as u64))
}

/// An integer with commas between groups of three digits.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A table with a title, printed with aligned columns (and pasteable as
/// Markdown: the columns are separated by `|`).
pub struct Table {
    title: String,
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
    notes: Vec<String>,
}

impl Table {
    pub fn new(title: &str, headers: &[&str]) -> Table {
        Table {
            title: title.to_string(),
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// A line printed under the table.
    pub fn note(&mut self, text: impl Into<String>) {
        self.notes.push(text.into());
    }

    /// The table as text: a `### title` line, a Markdown table, its notes.
    pub fn render(&self) -> String {
        let columns = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate().take(columns) {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let line = |cells: &[String]| {
            let mut s = String::from("|");
            for (i, width) in widths.iter().enumerate() {
                let cell = cells.get(i).map(String::as_str).unwrap_or("");
                let pad = width.saturating_sub(cell.chars().count());
                // Numbers read best right-aligned; the first column is a label.
                if i == 0 {
                    let _ = write!(s, " {cell}{} |", " ".repeat(pad));
                } else {
                    let _ = write!(s, " {}{cell} |", " ".repeat(pad));
                }
            }
            s.push('\n');
            s
        };
        let mut out = format!("\n### {}\n\n", self.title);
        out.push_str(&line(&self.headers));
        out.push('|');
        for (i, width) in widths.iter().enumerate() {
            let dashes = "-".repeat(*width);
            if i == 0 {
                let _ = write!(out, "-{dashes}-|");
            } else {
                let _ = write!(out, "-{dashes}:|");
            }
        }
        out.push('\n');
        for row in &self.rows {
            out.push_str(&line(row));
        }
        for note in &self.notes {
            let _ = write!(out, "\n{note}");
        }
        if !self.notes.is_empty() {
            out.push('\n');
        }
        out
    }

    pub fn print(&self) {
        print!("{}", self.render());
    }
}
