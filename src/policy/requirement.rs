//! Posture requirements: one comparison such as `device.os_version >= 14.5`,
//! its parser, and how an attribute value is compared with its literal.
//!
//! Grammar: `device.ATTR` or `user.ATTR` (ATTR is `[A-Za-z0-9_.-]+`), one of
//! `==`, `!=`, `>=`, `>`, `<=`, `<`, `in`, then a value: `true`/`false`, an
//! integer, a float (with a sign or an exponent, e.g. `-1.5`, `2e3`), a bare
//! dotted version (`14.5`, `14.10.2`), a `"basic"` or `'literal'` string,
//! or after `in` a non-empty list `[v, v, ...]`. Whitespace may surround
//! every token.

use std::cmp::Ordering;
use std::fmt;

use crate::model::AttrValue;

/// Whose attribute a requirement reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject {
    Device,
    User,
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Ge,
    Gt,
    Le,
    Lt,
    In,
}

/// The right-hand side of a requirement.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Bool(bool),
    Int(i64),
    Float(f64),
    /// Digits separated by dots, at least one dot: `14.5`, `14.10.2`.
    Version(String),
    Text(String),
    /// Only after `in`; never empty, never nested.
    List(Vec<Literal>),
}

/// One parsed requirement.
#[derive(Debug, Clone, PartialEq)]
pub struct Requirement {
    pub subject: Subject,
    pub attr: String,
    pub op: Op,
    pub value: Literal,
}

/// The outcome of checking a present attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail,
    /// The attribute's type cannot be compared this way with the literal
    /// (e.g. ordering booleans, or text against a number); the rule fails.
    CannotCompare,
}

/// Why a requirement string does not parse; `column` is 1-based, in characters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at column {column}: {problem}")]
pub struct RequirementError {
    pub column: usize,
    pub problem: String,
}

const VALUE_HINT: &str =
    "expected a value: true, false, a number, a version like 14.5, or a \"string\"";

impl Requirement {
    /// Parses one requirement; see the module docs for the grammar.
    pub fn parse(text: &str) -> Result<Requirement, RequirementError> {
        let mut p = Parser {
            chars: text.chars().collect(),
            pos: 0,
        };
        p.skip_ws();
        let start = p.pos;
        let word = p.take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        let (subject, attr) = match word.split_once('.') {
            Some(("device", attr)) if !attr.is_empty() => (Subject::Device, attr.to_string()),
            Some(("user", attr)) if !attr.is_empty() => (Subject::User, attr.to_string()),
            _ => {
                return Err(p.error_at(
                    start,
                    "expected device.ATTR or user.ATTR, e.g. device.disk_encrypted",
                ));
            }
        };

        p.skip_ws();
        let op = p.op()?;
        p.skip_ws();
        let value = if op == Op::In {
            p.list()?
        } else if p.peek() == Some('[') {
            return Err(p.error_here("a list is only allowed after `in`"));
        } else {
            p.scalar()?
        };
        p.skip_ws();
        if p.pos < p.chars.len() {
            return Err(p.error_here("unexpected text after the value"));
        }
        Ok(Requirement {
            subject,
            attr,
            op,
            value,
        })
    }

    /// Checks a present attribute value against this requirement.
    ///
    /// Operands are compared in this order of precedence:
    /// - both made of digits and dots (a text like `"14.10"`, a non-negative
    ///   number, or a version literal): as dotted versions, part by part as
    ///   integers, missing parts counting as 0 (`14.10 > 14.9`, `14 < 14.5`,
    ///   `14.5 == 14.5.0`);
    /// - both numbers: numerically (`3 == 3.0`);
    /// - text and a string literal: bytewise;
    /// - two booleans: `==` and `!=` only.
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

fn is_dotted(s: &str) -> bool {
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
        Literal::Float(f) if f.is_finite() => dotted_number(f.to_string()),
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

struct Parser {
    chars: Vec<char>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.pos += 1;
        }
    }

    fn take_while(&mut self, keep: impl Fn(char) -> bool) -> String {
        let start = self.pos;
        while self.peek().is_some_and(&keep) {
            self.pos += 1;
        }
        self.chars[start..self.pos].iter().collect()
    }

    fn error_at(&self, pos: usize, problem: &str) -> RequirementError {
        RequirementError {
            column: pos + 1,
            problem: problem.to_string(),
        }
    }

    fn error_here(&self, problem: &str) -> RequirementError {
        self.error_at(self.pos, problem)
    }

    fn op(&mut self) -> Result<Op, RequirementError> {
        let two: String = self.chars.iter().skip(self.pos).take(2).collect();
        let (op, len) = match two.as_str() {
            "==" => (Op::Eq, 2),
            "!=" => (Op::Ne, 2),
            ">=" => (Op::Ge, 2),
            "<=" => (Op::Le, 2),
            "in" => (Op::In, 2),
            _ if two.starts_with('>') => (Op::Gt, 1),
            _ if two.starts_with('<') => (Op::Lt, 1),
            _ => {
                return Err(self.error_here("expected an operator: ==, !=, >=, >, <=, < or in"));
            }
        };
        self.pos += len;
        if op == Op::In && self.peek().is_some_and(|c| !c.is_whitespace() && c != '[') {
            return Err(self.error_at(
                self.pos - 2,
                "expected an operator: ==, !=, >=, >, <=, < or in",
            ));
        }
        Ok(op)
    }

    fn list(&mut self) -> Result<Literal, RequirementError> {
        if self.peek() != Some('[') {
            return Err(self.error_here("`in` needs a list, e.g. [\"macos\", \"linux\"]"));
        }
        self.pos += 1;
        let mut items = Vec::new();
        loop {
            self.skip_ws();
            if self.peek() == Some(']') {
                if items.is_empty() {
                    return Err(self.error_here("the list is empty: it would never match"));
                }
                self.pos += 1;
                return Ok(Literal::List(items));
            }
            if self.peek() == Some('[') {
                return Err(self.error_here("lists cannot be nested"));
            }
            items.push(self.scalar()?);
            self.skip_ws();
            match self.peek() {
                Some(',') => self.pos += 1,
                Some(']') => {}
                None => return Err(self.error_here("the list is not closed: add ]")),
                Some(_) => return Err(self.error_here("expected , or ] in the list")),
            }
        }
    }

    fn scalar(&mut self) -> Result<Literal, RequirementError> {
        match self.peek() {
            Some('"') => self.basic_string(),
            Some('\'') => self.literal_string(),
            None => Err(self.error_here(VALUE_HINT)),
            Some(_) => self.bare(),
        }
    }

    fn literal_string(&mut self) -> Result<Literal, RequirementError> {
        let start = self.pos;
        self.pos += 1;
        let text = self.take_while(|c| c != '\'' && c != '\n');
        if self.peek() != Some('\'') {
            return Err(self.error_at(start, "the string is not closed: add '"));
        }
        self.pos += 1;
        Ok(Literal::Text(text))
    }

    fn basic_string(&mut self) -> Result<Literal, RequirementError> {
        let start = self.pos;
        self.pos += 1;
        let mut text = String::new();
        loop {
            let Some(c) = self.peek() else {
                return Err(self.error_at(start, "the string is not closed: add \""));
            };
            self.pos += 1;
            match c {
                '"' => return Ok(Literal::Text(text)),
                '\\' => text.push(self.escape()?),
                c if c.is_control() && c != '\t' => {
                    return Err(self.error_at(
                        self.pos - 1,
                        "control characters must be escaped inside a string",
                    ));
                }
                c => text.push(c),
            }
        }
    }

    fn escape(&mut self) -> Result<char, RequirementError> {
        let at = self.pos - 1;
        let c = self.peek();
        self.pos += 1;
        let digits = match c {
            Some('"') => return Ok('"'),
            Some('\\') => return Ok('\\'),
            Some('n') => return Ok('\n'),
            Some('t') => return Ok('\t'),
            Some('r') => return Ok('\r'),
            Some('b') => return Ok('\u{8}'),
            Some('f') => return Ok('\u{c}'),
            Some('u') => 4,
            Some('U') => 8,
            _ => return Err(self.error_at(at, "unknown escape: use \\\" \\\\ \\n \\t or \\uXXXX")),
        };
        let hex: String = self.chars.iter().skip(self.pos).take(digits).collect();
        self.pos += hex.chars().count();
        u32::from_str_radix(&hex, 16)
            .ok()
            .filter(|_| hex.len() == digits && hex.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(char::from_u32)
            .ok_or_else(|| self.error_at(at, "bad unicode escape: use \\uXXXX with hex digits"))
    }

    fn bare(&mut self) -> Result<Literal, RequirementError> {
        let start = self.pos;
        let word = self.take_while(|c| !c.is_whitespace() && c != ',' && c != ']' && c != '[');
        match word.as_str() {
            "true" => return Ok(Literal::Bool(true)),
            "false" => return Ok(Literal::Bool(false)),
            "" => return Err(self.error_at(start, VALUE_HINT)),
            _ => {}
        }
        if word.contains('.') && is_dotted(&word) {
            return Ok(Literal::Version(word));
        }
        let unsigned = word.strip_prefix(['+', '-']).unwrap_or(&word);
        if !unsigned.is_empty() && unsigned.bytes().all(|b| b.is_ascii_digit()) {
            if unsigned.len() > 1 && unsigned.starts_with('0') {
                return Err(self.error_at(start, "integers cannot have leading zeros"));
            }
            return word
                .parse::<i64>()
                .map(Literal::Int)
                .map_err(|_| self.error_at(start, "the integer is out of range"));
        }
        let numeric = unsigned.starts_with(|c: char| c.is_ascii_digit())
            && word
                .bytes()
                .all(|b| b.is_ascii_digit() || matches!(b, b'+' | b'-' | b'.' | b'e' | b'E'));
        match word.parse::<f64>() {
            Ok(f) if numeric && f.is_finite() => Ok(Literal::Float(f)),
            _ => Err(self.error_at(start, VALUE_HINT)),
        }
    }
}

impl fmt::Display for Literal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Literal::Bool(b) => write!(f, "{b}"),
            Literal::Int(i) => write!(f, "{i}"),
            Literal::Float(x) => write!(f, "{x:?}"),
            Literal::Version(v) => f.write_str(v),
            Literal::Text(s) => write!(f, "{s:?}"),
            Literal::List(items) => {
                let parts: Vec<String> = items.iter().map(Literal::to_string).collect();
                write!(f, "[{}]", parts.join(", "))
            }
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let subject = match self.subject {
            Subject::Device => "device",
            Subject::User => "user",
        };
        let op = match self.op {
            Op::Eq => "==",
            Op::Ne => "!=",
            Op::Ge => ">=",
            Op::Gt => ">",
            Op::Le => "<=",
            Op::Lt => "<",
            Op::In => "in",
        };
        write!(f, "{subject}.{} {op} {}", self.attr, self.value)
    }
}
