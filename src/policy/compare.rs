//! How a requirement compares an attribute value with its literal.

use std::cmp::Ordering;

use super::requirement::{Literal, Op, Requirement};
use crate::model::AttrValue;

/// The outcome of checking a present attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail,
    /// The attribute's type cannot be compared this way with the literal
    /// (e.g. ordering booleans, or text against a number); the rule fails.
    CannotCompare,
}

impl Requirement {
    /// Checks a present attribute value against this requirement.
    ///
    /// Operands are compared in this order of precedence:
    /// - both made of digits and dots (a text like `"14.10"`, a non-negative
    ///   number, or a literal written so: `14.5`, `14`, `"14.10"`): as dotted
    ///   versions, part by part as integers, missing parts counting as 0
    ///   (`14.10 > 14.9`, `14 < 14.5`, `14.5 == 14.5.0`);
    /// - both numbers: numerically (`3 == 3.0`);
    /// - text and a string literal: bytewise;
    /// - two booleans: `==` and `!=` only.
    ///
    /// Known limit: a float attribute against a plain literal is compared as
    /// a version, so `0.25 >= 0.5` holds (25 > 5). To compare a fractional
    /// metric numerically, write the literal as a float with an exponent,
    /// e.g. `device.battery >= 5e-1`.
    ///
    /// Any other pairing, including `!=` across types, is
    /// [`Verdict::CannotCompare`]: a value of the wrong type never passes.
    /// `in` passes when the value equals any element of the list.
    pub fn check(&self, value: &AttrValue) -> Verdict {
        let is_bool = matches!(value, AttrValue::Bool(_));
        match (&self.op, &self.value) {
            (Op::In, Literal::List(items)) => {
                let found: Vec<Option<Ordering>> =
                    items.iter().map(|item| compare(value, item)).collect();
                if found.contains(&Some(Ordering::Equal)) {
                    Verdict::Pass
                } else if found.iter().all(Option::is_none) {
                    Verdict::CannotCompare
                } else {
                    Verdict::Fail
                }
            }
            (Op::In, _) => Verdict::CannotCompare,
            (op, literal) => {
                let ordering = matches!(op, Op::Ge | Op::Gt | Op::Le | Op::Lt);
                let Some(cmp) = compare(value, literal).filter(|_| !(ordering && is_bool)) else {
                    return Verdict::CannotCompare;
                };
                let pass = match op {
                    Op::Eq => cmp.is_eq(),
                    Op::Ne => cmp.is_ne(),
                    Op::Ge => cmp.is_ge(),
                    Op::Gt => cmp.is_gt(),
                    Op::Le => cmp.is_le(),
                    Op::Lt => cmp.is_lt(),
                    Op::In => false,
                };
                if pass { Verdict::Pass } else { Verdict::Fail }
            }
        }
    }
}

/// Orders an attribute value against a scalar literal, `None` when the two
/// cannot be compared (see [`Requirement::check`]).
fn compare(value: &AttrValue, literal: &Literal) -> Option<Ordering> {
    if let (Some(a), Some(b)) = (dotted_value(value), dotted_literal(literal)) {
        return Some(version_cmp(&a, &b));
    }
    match (value, literal) {
        (AttrValue::Int(a), Literal::Int(b)) => Some(a.cmp(b)),
        (AttrValue::Int(a), Literal::Float(b)) => (*a as f64).partial_cmp(b),
        (AttrValue::Float(a), Literal::Int(b)) => a.partial_cmp(&(*b as f64)),
        (AttrValue::Float(a), Literal::Float(b)) => a.partial_cmp(b),
        (AttrValue::Text(a), Literal::Text(b)) => Some(a.as_bytes().cmp(b.as_bytes())),
        (AttrValue::Bool(a), Literal::Bool(b)) => Some(a.cmp(b)),
        _ => None,
    }
}

/// True if and only if `s` is digits separated by single dots, e.g. `14.10.2`.
pub fn is_dotted(s: &str) -> bool {
    !s.is_empty()
        && s.split('.')
            .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))
}

fn dotted_number(text: String) -> Option<String> {
    is_dotted(&text).then_some(text)
}

fn dotted_value(value: &AttrValue) -> Option<String> {
    match value {
        AttrValue::Text(s) => dotted_number(s.clone()),
        AttrValue::Int(i) => dotted_number(i.to_string()),
        AttrValue::Float(f) if f.is_finite() => dotted_number(f.to_string()),
        _ => None,
    }
}

fn dotted_literal(literal: &Literal) -> Option<String> {
    match literal {
        Literal::Version(s) | Literal::Text(s) => dotted_number(s.clone()),
        Literal::Int(i) => dotted_number(i.to_string()),
        // A float literal is written with a sign or an exponent (a plain
        // `0.5` is a version), so it is never digits and dots as written.
        _ => None,
    }
}

/// Compares two dotted versions part by part as integers of any length.
fn version_cmp(a: &str, b: &str) -> Ordering {
    let mut left = a.split('.');
    let mut right = b.split('.');
    loop {
        match (left.next(), right.next()) {
            (None, None) => return Ordering::Equal,
            (l, r) => {
                let l = l.unwrap_or("0").trim_start_matches('0');
                let r = r.unwrap_or("0").trim_start_matches('0');
                let ord = l.len().cmp(&r.len()).then_with(|| l.cmp(r));
                if ord.is_ne() {
                    return ord;
                }
            }
        }
    }
}

/// A short name for a value's type, for "cannot compare" notes.
pub fn type_name(value: &AttrValue) -> &'static str {
    match value {
        AttrValue::Bool(_) => "a boolean",
        AttrValue::Int(_) => "an integer",
        AttrValue::Float(_) => "a float",
        AttrValue::Text(_) => "text",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(text: &str) -> Requirement {
        match Requirement::parse(text) {
            Ok(r) => r,
            Err(e) => panic!("{text:?}: {e}"),
        }
    }

    fn check(text: &str, value: AttrValue) -> Verdict {
        req(text).check(&value)
    }

    fn text(s: &str) -> AttrValue {
        AttrValue::Text(s.to_string())
    }

    #[test]
    fn every_operator_compares() {
        use AttrValue::Int;
        assert_eq!(check("user.n == 3", Int(3)), Verdict::Pass);
        assert_eq!(check("user.n == 3", Int(4)), Verdict::Fail);
        assert_eq!(check("user.n != 3", Int(4)), Verdict::Pass);
        assert_eq!(check("user.n != 3", Int(3)), Verdict::Fail);
        assert_eq!(check("user.n >= 3", Int(3)), Verdict::Pass);
        assert_eq!(check("user.n >= 3", Int(2)), Verdict::Fail);
        assert_eq!(check("user.n > 3", Int(4)), Verdict::Pass);
        assert_eq!(check("user.n > 3", Int(3)), Verdict::Fail);
        assert_eq!(check("user.n <= 3", Int(3)), Verdict::Pass);
        assert_eq!(check("user.n <= 3", Int(4)), Verdict::Fail);
        assert_eq!(check("user.n < 3", Int(2)), Verdict::Pass);
        assert_eq!(check("user.n < 3", Int(3)), Verdict::Fail);
        assert_eq!(check("user.n < -1", Int(-2)), Verdict::Pass);
        assert_eq!(
            check("user.b == true", AttrValue::Bool(true)),
            Verdict::Pass
        );
        assert_eq!(
            check("user.b != true", AttrValue::Bool(false)),
            Verdict::Pass
        );
        assert_eq!(check("user.s == \"x\"", text("x")), Verdict::Pass);
        assert_eq!(check("user.s < \"b\"", text("a")), Verdict::Pass);
        assert_eq!(check("user.s > \"b\"", text("B")), Verdict::Fail);
    }

    #[test]
    fn versions_compare_part_by_part() {
        assert_eq!(check("device.v > 14.9", text("14.10")), Verdict::Pass);
        assert_eq!(check("device.v >= 14.5", text("14.10")), Verdict::Pass);
        assert_eq!(check("device.v >= 14.5", text("14")), Verdict::Fail);
        assert_eq!(check("device.v < 14.5", AttrValue::Int(14)), Verdict::Pass);
        assert_eq!(check("device.v == 14.5", text("14.5.0")), Verdict::Pass);
        assert_eq!(check("device.v == 14.5", text("14.5")), Verdict::Pass);
        assert_eq!(
            check("device.v >= 14.5", AttrValue::Float(14.5)),
            Verdict::Pass
        );
        assert_eq!(check("device.v >= 14.5", text("14.4.99")), Verdict::Fail);
        assert_eq!(check("device.v >= \"14.5\"", text("14.10")), Verdict::Pass);
        assert_eq!(check("device.v >= 14", text("14.0.1")), Verdict::Pass);
        assert_eq!(
            check(
                "device.v > 1.99999999999999999999",
                text("1.100000000000000000000")
            ),
            Verdict::Pass
        );
    }

    #[test]
    fn numbers_compare_across_int_and_float() {
        assert_eq!(check("user.n == 3", AttrValue::Float(3.0)), Verdict::Pass);
        assert_eq!(check("user.n == 3e0", AttrValue::Int(3)), Verdict::Pass);
        assert_eq!(check("user.n > -0.5", AttrValue::Int(0)), Verdict::Pass);
        assert_eq!(
            check("user.n < -0.5", AttrValue::Float(-1.0)),
            Verdict::Pass
        );
        assert_eq!(
            check("user.n >= 5e-1", AttrValue::Float(0.25)),
            Verdict::Fail
        );
        assert_eq!(
            check("user.n >= 5e-1", AttrValue::Float(0.75)),
            Verdict::Pass
        );
        assert_eq!(check("user.n < 1e1", AttrValue::Float(9.5)), Verdict::Pass);
        // The documented limit: a plain literal compares as a version.
        assert_eq!(
            check("user.n >= 0.5", AttrValue::Float(0.25)),
            Verdict::Pass
        );
    }

    #[test]
    fn in_matches_any_element() {
        let r = r#"device.os_family in ["macos", "linux"]"#;
        assert_eq!(check(r, text("linux")), Verdict::Pass);
        assert_eq!(check(r, text("windows")), Verdict::Fail);
        assert_eq!(check(r, AttrValue::Int(1)), Verdict::CannotCompare);
        assert_eq!(check("device.v in [14.5, 15]", text("15.0")), Verdict::Pass);
        assert_eq!(
            check("device.v in [true, 2]", AttrValue::Int(2)),
            Verdict::Pass
        );
    }

    #[test]
    fn mismatched_types_cannot_compare() {
        let cases = [
            ("device.b > false", AttrValue::Bool(true)),
            ("device.b == true", text("true")),
            ("device.b != true", text("yes")),
            ("device.b == true", AttrValue::Int(1)),
            ("device.v >= 14.5", text("fourteen")),
            ("device.v >= 14.5", AttrValue::Bool(true)),
            ("device.s == \"x\"", AttrValue::Int(1)),
            ("device.n < -1", text("abc")),
        ];
        for (r, value) in cases {
            assert_eq!(
                check(r, value.clone()),
                Verdict::CannotCompare,
                "{r} {value:?}"
            );
        }
    }
}
