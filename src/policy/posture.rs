//! The posture rules of an evaluation: a report is present, and each
//! requirement of the role's profile holds for a value reported recently
//! enough. User attributes have no report time and are not aged.

use std::time::Duration;

use super::PostureProfile;
use super::compare::{Verdict, type_name};
use super::duration;
use super::evaluate::RuleResult;
use super::requirement::{Requirement, Subject};
use crate::model::{AttrValue, PostureAttr, Snapshot};

/// Appends the rules of `profile`, checked against `snapshot`, to `rules`;
/// `skew` is how far in the future a report may be dated (the CA's backdate).
pub fn posture_rules(
    profile: &PostureProfile,
    snapshot: &Snapshot,
    skew: Duration,
    rules: &mut Vec<RuleResult>,
) {
    let name = &profile.name;
    let posture = &snapshot.device.posture;
    rules.push(RuleResult {
        rule: format!("posture {name}: posture report present"),
        passed: !posture.is_empty(),
        seen: match posture.len() {
            0 => "no posture attributes".to_string(),
            n => format!("{n} attributes reported"),
        },
    });

    for (req, rule) in profile.require.iter().zip(&profile.rules) {
        let (passed, seen) = match req.subject {
            Subject::Device => device_check(
                req,
                posture.get(&req.attr),
                snapshot.connection.at,
                profile.max_report_age,
                skew,
            ),
            Subject::User => match snapshot.user.attributes.get(&req.attr) {
                Some(value) => verdict(req, value),
                None => (false, "not set".to_string()),
            },
        };
        rules.push(RuleResult {
            rule: rule.clone(),
            passed,
            seen,
        });
    }
}

/// Checks a device attribute and its age: a report older than `max_age`,
/// or dated further in the future than the clock skew allowance, fails.
fn device_check(
    req: &Requirement,
    attr: Option<&PostureAttr>,
    now: i64,
    max_age: Duration,
    skew: Duration,
) -> (bool, String) {
    let Some(attr) = attr else {
        return (false, "not reported".to_string());
    };
    let age = now.saturating_sub(attr.reported_at);
    if age < 0 {
        let ahead = age.unsigned_abs();
        if ahead > skew.as_secs() {
            let seen = format!(
                "{}, reported {} in the future",
                attr.value,
                duration::format_secs(ahead)
            );
            return (false, seen);
        }
    }
    let age = duration::format_secs(age.max(0).unsigned_abs());
    if attr.reported_at < now.saturating_sub(i64::try_from(max_age.as_secs()).unwrap_or(i64::MAX)) {
        let seen = format!(
            "{}, reported {age} ago (max {})",
            attr.value,
            duration::format(max_age)
        );
        return (false, seen);
    }
    let (passed, seen) = verdict(req, &attr.value);
    (passed, format!("{seen}, reported {age} ago"))
}

fn verdict(req: &Requirement, value: &AttrValue) -> (bool, String) {
    match req.check(value) {
        Verdict::Pass => (true, value.to_string()),
        Verdict::Fail => (false, value.to_string()),
        Verdict::CannotCompare => (
            false,
            format!(
                "{value} (cannot compare {} with {})",
                type_name(value),
                req.value
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000;
    const DAY: Duration = Duration::from_secs(86_400);
    const SKEW: Duration = Duration::from_secs(120);

    fn check(req: &str, value: AttrValue, age: i64) -> (bool, String) {
        check_at(req, value, NOW - age)
    }

    fn check_at(req: &str, value: AttrValue, reported_at: i64) -> (bool, String) {
        let req = Requirement::parse(req).unwrap();
        let attr = PostureAttr { value, reported_at };
        device_check(&req, Some(&attr), NOW, DAY, SKEW)
    }

    #[test]
    fn a_fresh_value_is_checked_and_its_age_shown() {
        let got = check("device.v >= 14.5", AttrValue::Text("14.10".into()), 7200);
        assert_eq!(got, (true, "\"14.10\", reported 2h ago".to_string()));
        let got = check("device.v >= 14.5", AttrValue::Text("14.4".into()), 59);
        assert_eq!(got, (false, "\"14.4\", reported 59s ago".to_string()));
    }

    #[test]
    fn a_stale_value_fails_even_when_it_would_pass() {
        let got = check("device.b == true", AttrValue::Bool(true), 26 * 3600 + 180);
        assert_eq!(
            got,
            (false, "true, reported 26h 3m ago (max 24h)".to_string())
        );
        let got = check("device.b == true", AttrValue::Bool(true), 86_400);
        assert!(got.0, "exactly max_report_age old still counts: {got:?}");
        let got = check_at("device.b == true", AttrValue::Bool(true), i64::MIN);
        assert!(!got.0);
    }

    #[test]
    fn a_report_from_the_future_fails_beyond_the_skew_allowance() {
        assert!(check("device.b == true", AttrValue::Bool(true), -60).0);
        let got = check("device.b == true", AttrValue::Bool(true), -600);
        assert_eq!(got, (false, "true, reported 10m in the future".to_string()));
        let got = check_at("device.b == true", AttrValue::Bool(true), i64::MAX);
        assert!(!got.0);
    }

    #[test]
    fn missing_and_mismatched_values_fail() {
        let req = Requirement::parse("device.b == true").unwrap();
        let got = device_check(&req, None, NOW, DAY, SKEW);
        assert_eq!(got, (false, "not reported".to_string()));
        let got = check("device.b == true", AttrValue::Int(1), 10);
        assert_eq!(
            got,
            (
                false,
                "1 (cannot compare an integer with true), reported 10s ago".to_string()
            )
        );
    }
}
