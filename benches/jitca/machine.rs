//! The description of the machine the numbers were measured on.

use std::process::Command;

use crate::stats::Table;

/// First line of `/proc/cpuinfo` whose key is `key`, its value trimmed.
fn cpuinfo(key: &str) -> Option<String> {
    let text = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim().to_string())
}

/// `MemTotal` from `/proc/meminfo`, in GiB.
fn memory() -> Option<String> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(format!("{:.1} GiB", kb as f64 / (1024.0 * 1024.0)))
}

fn os() -> Option<String> {
    let text = std::fs::read_to_string("/etc/os-release").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
}

/// What `ssh -V` prints (on stderr).
fn openssh() -> Option<String> {
    let out = Command::new(crate::SSH).arg("-V").output().ok()?;
    let text = String::from_utf8_lossy(&out.stderr).trim().to_string();
    (!text.is_empty()).then_some(text)
}

/// The 1, 5 and 15 minute load averages: other work on the machine.
pub fn load_average() -> Option<String> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    Some(
        text.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    )
}

fn git_head() -> Option<String> {
    let out = Command::new("git")
        .args([
            "-C",
            env!("CARGO_MANIFEST_DIR"),
            "rev-parse",
            "--short",
            "HEAD",
        ])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !text.is_empty()).then_some(text)
}

/// Prints the machine, the software and the mode of this run.
pub fn print(smoke: bool) {
    let unknown = || "unknown".to_string();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get().to_string())
        .unwrap_or_else(|_| unknown());
    let mut t = Table::new("Machine", &["what", "value"]);
    let mut add = |k: &str, v: String| t.row(vec![k.to_string(), v]);
    add("CPU", cpuinfo("model name").unwrap_or_else(unknown));
    add("cores (available to this process)", cores);
    add("memory", memory().unwrap_or_else(unknown));
    add(
        "kernel",
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| unknown()),
    );
    add("OS", os().unwrap_or_else(unknown));
    add("OpenSSH", openssh().unwrap_or_else(unknown));
    add("SQLite (bundled)", rusqlite::version().to_string());
    add(
        "load average at start",
        load_average().unwrap_or_else(unknown),
    );
    add(
        "jitca",
        format!(
            "{} at {}",
            env!("CARGO_PKG_VERSION"),
            git_head().unwrap_or_else(unknown)
        ),
    );
    add(
        "mode",
        if smoke {
            "smoke pass: tiny counts, numbers not meaningful".into()
        } else {
            "full run".into()
        },
    );
    t.print();
}
