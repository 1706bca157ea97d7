//! The targets of issue 5, checked against this run's numbers.

use crate::stats::{Table, dur, rate};

/// One target: what was measured against what was required.
pub struct Check {
    pub target: &'static str,
    pub measured: String,
    pub required: String,
    /// Measured over required, oriented so that at least 1.0 passes.
    pub ratio: f64,
}

impl Check {
    /// A target on a quantity that must be at least `required`.
    pub fn at_least(target: &'static str, measured: f64, required: f64, unit: &str) -> Check {
        Check {
            target,
            measured: format!("{measured:.2}{unit}"),
            required: format!(">= {required:.2}{unit}"),
            ratio: if required > 0.0 {
                measured / required
            } else {
                0.0
            },
        }
    }

    /// A target on a quantity that must be at most `required`.
    pub fn at_most(target: &'static str, measured: f64, required: f64, unit: &str) -> Check {
        Check {
            target,
            measured: format!("{measured:.2}{unit}"),
            required: format!("<= {required:.2}{unit}"),
            ratio: if measured > 0.0 {
                required / measured
            } else {
                f64::INFINITY
            },
        }
    }

    /// Certificates per second, at least `required`.
    pub fn rate_at_least(target: &'static str, measured: f64, required: f64) -> Check {
        let mut c = Check::at_least(target, measured, required, "");
        c.measured = rate(measured);
        c.required = format!(">= {}", rate(required));
        c
    }

    /// A latency, at most `required`.
    pub fn latency_at_most(
        target: &'static str,
        measured: std::time::Duration,
        required: std::time::Duration,
    ) -> Check {
        let mut c = Check::at_most(target, measured.as_secs_f64(), required.as_secs_f64(), "");
        c.measured = dur(measured);
        c.required = format!("<= {}", dur(required));
        c
    }

    pub fn passed(&self) -> bool {
        self.ratio >= 1.0
    }
}

/// Prints the targets table; returns how many were missed.
pub fn print(checks: &[Check], smoke: bool) -> usize {
    let mut t = Table::new(
        "Targets (issue 5)",
        &["target", "measured", "required", "margin", "verdict"],
    );
    let mut missed = 0;
    for c in checks {
        let verdict = if c.passed() { "PASS" } else { "MISS" };
        if !c.passed() {
            missed += 1;
        }
        t.row(vec![
            c.target.to_string(),
            c.measured.clone(),
            c.required.clone(),
            format!("{:.2}x", c.ratio),
            verdict.to_string(),
        ]);
    }
    t.note(
        "margin: how far the measured value is on the right side of the target (>= 1.00x passes; \
         0.80x means 20% short).",
    );
    if smoke {
        t.note("smoke pass: the counts are too small for these verdicts to mean anything.");
    }
    t.print();
    missed
}
