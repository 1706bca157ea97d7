//! Posture requirements: one comparison such as `device.os_version >= 14.5`,
//! its parser, and how an attribute value is compared with its literal.
//!
//! Grammar: `device.ATTR` or `user.ATTR` (ATTR is `[A-Za-z0-9_.-]+`), one of
//! `==`, `!=`, `>=`, `>`, `<=`, `<`, `in`, then a value: `true`/`false`, an
//! integer, a float (with a sign or an exponent, e.g. `-1.5`, `2e3`), a bare
//! dotted version (`14.5`, `14.10.2`), a `"basic"` or `'literal'` string,
//! or after `in` a non-empty list `[v, v, ...]`. Whitespace may surround
//! every token.

use std::fmt;

use super::compare::is_dotted;

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
        match word.parse::<f64>() {
            Ok(f) if is_float(unsigned) && f.is_finite() => Ok(Literal::Float(f)),
            _ => Err(self.error_at(start, VALUE_HINT)),
        }
    }
}

/// True if and only if `s` (without its sign) is a TOML float: digits, then
/// `.digits`, an exponent `e[+-]digits`, or both.
fn is_float(s: &str) -> bool {
    fn digits(s: &str) -> usize {
        s.bytes().take_while(u8::is_ascii_digit).count()
    }
    let int = digits(s);
    let mut rest = &s[int..];
    let mut shaped = false;
    if let Some(frac) = rest.strip_prefix('.') {
        let n = digits(frac);
        if n == 0 {
            return false;
        }
        rest = &frac[n..];
        shaped = true;
    }
    if let Some(exp) = rest.strip_prefix(['e', 'E']) {
        let exp = exp.strip_prefix(['+', '-']).unwrap_or(exp);
        let n = digits(exp);
        if n == 0 {
            return false;
        }
        rest = &exp[n..];
        shaped = true;
    }
    int > 0 && shaped && rest.is_empty()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::AttrValue;

    fn req(text: &str) -> Requirement {
        match Requirement::parse(text) {
            Ok(r) => r,
            Err(e) => panic!("{text:?}: {e}"),
        }
    }

    #[test]
    fn parses_each_value_form_with_any_spacing() {
        let r = req("  device.os_version>=14.10.2 ");
        assert_eq!(
            (r.subject, r.attr.as_str(), r.op),
            (Subject::Device, "os_version", Op::Ge)
        );
        assert_eq!(r.value, Literal::Version("14.10.2".into()));
        assert_eq!(req("user.x == true").value, Literal::Bool(true));
        assert_eq!(req("user.x==-3").value, Literal::Int(-3));
        assert_eq!(req("user.x == 2e3").value, Literal::Float(2000.0));
        assert_eq!(req("user.x == -1.5").value, Literal::Float(-1.5));
        assert_eq!(req("user.x == 'a\\b'").value, Literal::Text("a\\b".into()));
        assert_eq!(
            req(r#"user.x == "a\"\u00e9""#).value,
            Literal::Text("a\"é".into())
        );
        assert_eq!(req("device.a.b-c_d != 1").attr, "a.b-c_d");
        let list = req(r#"device.os_family in [ "macos" ,"linux", ]"#);
        assert_eq!(
            list.value,
            Literal::List(vec![
                Literal::Text("macos".into()),
                Literal::Text("linux".into())
            ])
        );
    }

    #[test]
    fn displays_in_normal_form() {
        assert_eq!(
            req(r#"device.os_family in ["macos","linux"]"#).to_string(),
            r#"device.os_family in ["macos", "linux"]"#
        );
        assert_eq!(req("user.n<2").to_string(), "user.n < 2");
        assert_eq!(req("device.v >= 14.5").to_string(), "device.v >= 14.5");
    }

    #[test]
    fn parse_errors_say_where() {
        let cases = [
            ("", 1),
            ("host.x == 1", 1),
            ("device. == 1", 1),
            ("device.x = 1", 10),
            ("device.x == ", 13),
            ("device.x == tru", 13),
            ("device.x == 1 2", 15),
            ("device.x == [1]", 13),
            ("device.x in 1", 13),
            ("device.x in []", 14),
            ("device.x in [1", 15),
            ("device.x in [1 2]", 16),
            ("device.x in [[1]]", 14),
            ("device.x inside [1]", 10),
            ("device.x == \"open", 13),
            ("device.x == \"bad\\q\"", 17),
            ("device.x == \"\\u12\"", 14),
            ("device.x == 007", 13),
            ("device.x == 99999999999999999999", 13),
            ("device.x == 1e999", 13),
            ("device.x == nan", 13),
            ("device.x == inf", 13),
            ("device.x == 14.", 13),
        ];
        for (input, column) in cases {
            match Requirement::parse(input) {
                Ok(r) => panic!("{input:?} parsed as {r:?}"),
                Err(e) => assert_eq!(e.column, column, "{input:?}: {e}"),
            }
        }
        let e = Requirement::parse("device.x = 1").unwrap_err();
        assert_eq!(
            e.to_string(),
            "at column 10: expected an operator: ==, !=, >=, >, <=, < or in"
        );
    }

    #[test]
    fn garbage_never_panics_the_parser() {
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let alphabet: Vec<char> = "device.user.x_=!<>in[]\"'\\,0123456789.eE+-u tf\u{e9}\u{0}\n"
            .chars()
            .collect();
        let seeds = [
            "device.os_version >= 14.5",
            r#"device.f in ["a", "b"]"#,
            "user.x == \"\\u00e9\"",
        ];
        for i in 0..600 {
            let s: String = if i % 2 == 0 {
                let len = (next() % 40) as usize;
                (0..len)
                    .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                    .collect()
            } else {
                let mut chars: Vec<char> = seeds[i % seeds.len()].chars().collect();
                for _ in 0..1 + next() % 4 {
                    let at = (next() % chars.len() as u64) as usize;
                    match next() % 3 {
                        0 => drop(chars.remove(at)),
                        1 => chars.insert(at, alphabet[(next() % alphabet.len() as u64) as usize]),
                        _ => chars.truncate(at),
                    }
                    if chars.is_empty() {
                        chars.push('x');
                    }
                }
                chars.into_iter().collect()
            };
            if let Ok(r) = Requirement::parse(&s) {
                for value in [
                    AttrValue::Bool(true),
                    AttrValue::Int(-1),
                    AttrValue::Float(1.5),
                    AttrValue::Text(s.clone()),
                ] {
                    let _ = r.check(&value);
                }
                assert_eq!(
                    Requirement::parse(&r.to_string()).map(|p| p.op),
                    Ok(r.op),
                    "{s:?}"
                );
            }
        }
    }
}
