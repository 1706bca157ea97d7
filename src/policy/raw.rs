//! Stage one of loading a policy: TOML text into serde structs that keep the
//! span of each value, so stage two can name the line of every problem.
//!
//! The document is parsed once into a spanned tree; each table (`[ca]`, each
//! `[posture.X]`, each `[role.X]`) is then deserialized on its own, so one
//! bad table does not hide the problems of the next. Within a table, a key
//! that serde refuses (unknown, or of the wrong type) is reported and taken
//! out, and the table is read again, so every bad key is named. A table with
//! any such error is not validated further.

use std::fmt;
use std::ops::Range;

use serde::Deserialize;
use serde::de::{self, DeserializeOwned, Deserializer, SeqAccess, Visitor};
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use super::Diagnostic;

/// Collects the diagnostics and warnings of one load.
pub struct Ctx<'a> {
    file: &'a str,
    text: &'a str,
    /// Byte offset of the start of each line, for line numbers in
    /// logarithmic time (a file with thousands of errors stays fast).
    line_starts: Vec<usize>,
    pub diagnostics: Vec<Diagnostic>,
    pub warnings: Vec<String>,
}

impl<'a> Ctx<'a> {
    /// A context for `text`, read from `file` (the name used in messages).
    pub fn new(file: &'a str, text: &'a str) -> Ctx<'a> {
        let line_starts = std::iter::once(0)
            .chain(
                text.bytes()
                    .enumerate()
                    .filter(|(_, b)| *b == b'\n')
                    .map(|(i, _)| i + 1),
            )
            .collect();
        Ctx {
            file,
            text,
            line_starts,
            diagnostics: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// The 1-based line holding byte `offset`.
    pub fn line(&self, offset: usize) -> usize {
        match self.line_starts.binary_search(&offset) {
            Ok(i) => i + 1,
            Err(i) => i,
        }
    }

    /// Records an error at the line of `span`.
    pub fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        let line = Some(self.line(span.start));
        self.diagnostics.push(Diagnostic {
            file: self.file.to_string(),
            line,
            message: message.into(),
        });
    }

    /// Records a warning at the line of `span`.
    pub fn warn(&mut self, span: Range<usize>, message: impl fmt::Display) {
        let line = self.line(span.start);
        self.warnings
            .push(format!("{}:{line}: {message}", self.file));
    }

    /// The number of errors so far; compare before and after a check.
    pub fn error_count(&self) -> usize {
        self.diagnostics.len()
    }
}

/// A string with the span of its value.
pub type SpannedStr = Spanned<String>;

/// A list of strings, spanned as a whole and per entry.
pub type StrList = Spanned<Vec<SpannedStr>>;

/// `[ca]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCa {
    pub backdate: Option<SpannedStr>,
    pub max_ttl: Option<SpannedStr>,
    pub publish_ahead: Option<SpannedStr>,
    pub rotate_every: Option<SpannedStr>,
}

/// `[posture.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProfile {
    pub max_report_age: Option<SpannedStr>,
    pub require: Option<StrList>,
}

/// `[role.NAME]`. Every key is optional here; stage two says which are required.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRole {
    pub description: Option<String>,
    pub groups: Option<StrList>,
    pub principals: Option<StrList>,
    pub ttl: Option<SpannedStr>,
    pub max_ttl: Option<SpannedStr>,
    pub posture: Option<SpannedStr>,
    pub networks: Option<StrList>,
    pub source_address: Option<Spanned<RawSourceAddress>>,
    pub force_command: Option<SpannedStr>,
    pub verify_required: Option<bool>,
    pub extensions: Option<StrList>,
    pub approval: Option<Spanned<RawApproval>>,
    pub approver_posture: Option<SpannedStr>,
    pub require_reason: Option<bool>,
    pub break_glass: Option<Spanned<bool>>,
}

/// A role's `approval = { count, approvers, timeout }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApproval {
    pub count: Option<Spanned<i64>>,
    pub approvers: Option<StrList>,
    pub timeout: Option<SpannedStr>,
}

/// `source_address`: a word (only `"peer"` is valid) or a list of entries.
#[derive(Debug)]
pub enum RawSourceAddress {
    Word(String),
    List(Vec<SpannedStr>),
}

impl<'de> Deserialize<'de> for RawSourceAddress {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct WordOrList;

        impl<'de> Visitor<'de> for WordOrList {
            type Value = RawSourceAddress;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"peer\" or a list of addresses and CIDRs")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(RawSourceAddress::Word(v.to_string()))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = seq.next_element::<SpannedStr>()? {
                    entries.push(entry);
                }
                Ok(RawSourceAddress::List(entries))
            }
        }

        deserializer.deserialize_any(WordOrList)
    }
}

/// A named table; `raw` is `None` when its keys had errors already reported.
#[derive(Debug)]
pub struct Named<T> {
    pub name: SpannedStr,
    pub raw: Option<T>,
}

/// The whole file after stage one.
#[derive(Debug, Default)]
pub struct RawDocument {
    /// `None` when `[ca]` is absent or had errors (then defaults apply).
    pub ca: Option<RawCa>,
    pub profiles: Vec<Named<RawProfile>>,
    pub roles: Vec<Named<RawRole>>,
    pub notify: Option<StrList>,
}

/// Parses the text, recording every problem in `ctx`.
pub fn read(ctx: &mut Ctx<'_>) -> RawDocument {
    let text = ctx.text;
    let mut doc = RawDocument::default();
    let root = match DeTable::parse(text) {
        Ok(root) => root,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            ctx.error(span, format!("TOML syntax error: {}", e.message().trim()));
            return doc;
        }
    };

    for (key, value) in root.into_inner() {
        let span = key.span();
        match key.get_ref().as_ref() {
            "ca" => doc.ca = table(ctx, "[ca]", value),
            "posture" => doc.profiles = named_tables(ctx, "posture", value),
            "role" => doc.roles = named_tables(ctx, "role", value),
            "notify" => doc.notify = untabled(ctx, "notify", value),
            other => ctx.error(
                span,
                format!(
                    "unknown key {other:?} at the top level: expected [ca], [posture.NAME], [role.NAME] or notify"
                ),
            ),
        }
    }
    doc
}

/// Reads `[KIND.NAME]` tables, each on its own.
fn named_tables<T: DeserializeOwned>(
    ctx: &mut Ctx<'_>,
    kind: &str,
    value: Spanned<DeValue<'_>>,
) -> Vec<Named<T>> {
    let span = value.span();
    let DeValue::Table(tables) = value.into_inner() else {
        ctx.error(
            span,
            format!("{kind} must be a set of tables, e.g. [{kind}.NAME]"),
        );
        return Vec::new();
    };
    tables
        .into_iter()
        .map(|(name, body)| {
            let name = Spanned::new(name.span(), name.into_inner().into_owned());
            let what = format!("[{kind}.{}]", name.get_ref());
            let raw = if body.get_ref().is_table() {
                table(ctx, &what, body)
            } else {
                ctx.error(
                    name.span(),
                    format!("{what} must be a table of keys, not a single value"),
                );
                None
            };
            Named { name, raw }
        })
        .collect()
}

/// Deserializes a value that is not a table of keys (e.g. `notify`).
fn untabled<T: DeserializeOwned>(
    ctx: &mut Ctx<'_>,
    what: &str,
    value: Spanned<DeValue<'_>>,
) -> Option<T> {
    match T::deserialize(ValueDeserializer::from(value.clone())) {
        Ok(v) => Some(v),
        Err(e) => {
            let span = e.span().unwrap_or(value.span());
            ctx.error(span, format!("{what}: {}", e.message()));
            None
        }
    }
}

/// How many refused keys one table reports before giving up on it; each
/// retry re-reads the table, so this bounds the work on a garbled file.
const MAX_TABLE_ERRORS: usize = 20;

/// Deserializes one table, reporting every key serde refuses (up to
/// [`MAX_TABLE_ERRORS`]).
fn table<T: DeserializeOwned>(
    ctx: &mut Ctx<'_>,
    what: &str,
    value: Spanned<DeValue<'_>>,
) -> Option<T> {
    let whole = value.span();
    let DeValue::Table(mut entries) = value.into_inner() else {
        ctx.error(whole, format!("{what} must be a table"));
        return None;
    };
    let mut failed = 0;
    loop {
        if failed == MAX_TABLE_ERRORS {
            ctx.error(
                whole,
                format!("{what}: more than {MAX_TABLE_ERRORS} bad keys; fix these first"),
            );
            return None;
        }
        let attempt = Spanned::new(whole.clone(), DeValue::Table(entries.clone()));
        let err = match T::deserialize(ValueDeserializer::from(attempt)) {
            Ok(v) if failed == 0 => return Some(v),
            Ok(_) => return None,
            Err(e) => e,
        };
        failed += 1;
        let span = err.span().unwrap_or(whole.clone());

        // Find the key the error is about, so it can be named and taken out.
        let culprit = entries
            .iter()
            .find(|(k, v)| contains(&k.span(), &span) || contains(&v.span(), &span))
            .map(|(k, _)| k.clone());
        match culprit {
            Some(key) => {
                let name = key.get_ref().to_string();
                let message = err.message();
                if message.starts_with("unknown field") {
                    ctx.error(span, format!("{what}: {message}"));
                } else {
                    ctx.error(span, format!("{what}: key {name:?}: {message}"));
                }
                entries.remove(name.as_str());
            }
            None => {
                ctx.error(span, format!("{what}: {}", err.message()));
                return None;
            }
        }
    }
}

fn contains(outer: &Range<usize>, inner: &Range<usize>) -> bool {
    outer.start <= inner.start && inner.end <= outer.end && outer.start < outer.end
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_text(text: &str) -> (RawDocument, Vec<Diagnostic>) {
        let mut ctx = Ctx::new("p.toml", text);
        let doc = read(&mut ctx);
        (doc, ctx.diagnostics)
    }

    #[test]
    fn every_unknown_key_of_a_table_is_named_with_its_line() {
        let (doc, diags) = read_text("[role.a]\nttl = \"5m\"\nbogus = 1\nother = 2\n");
        let lines: Vec<_> = diags.iter().map(|d| d.line).collect();
        assert_eq!(lines, [Some(3), Some(4)], "{diags:?}");
        assert!(diags[0].message.contains("`bogus`"), "{}", diags[0].message);
        assert!(diags[1].message.contains("`other`"), "{}", diags[1].message);
        assert!(doc.roles[0].raw.is_none());
    }

    #[test]
    fn wrong_types_name_the_key() {
        let (_, diags) = read_text("[ca]\nmax_ttl = 5\n");
        assert_eq!(diags.len(), 1);
        assert_eq!(diags[0].line, Some(2));
        assert!(
            diags[0].message.contains("\"max_ttl\""),
            "{}",
            diags[0].message
        );
    }

    #[test]
    fn syntax_errors_name_their_line() {
        let (_, diags) = read_text("[ca]\nmax_ttl = \"1h\"\n[role.x\n");
        assert_eq!(diags.len(), 1);
        assert_eq!(diags[0].line, Some(3));
        assert!(diags[0].message.starts_with("TOML syntax error"));
    }

    #[test]
    fn unknown_top_level_keys_are_errors() {
        let (_, diags) = read_text("\n[roles.a]\nttl = \"1m\"\n");
        assert_eq!(diags.len(), 1);
        assert_eq!(diags[0].line, Some(2));
        assert!(diags[0].message.contains("\"roles\""));
    }

    #[test]
    fn nested_approval_errors_point_inside_the_table() {
        let text = "[role.a]\nttl = \"5m\"\napproval = { count = 1, who = [\"x\"] }\n";
        let (_, diags) = read_text(text);
        assert_eq!(diags.len(), 1, "{diags:?}");
        assert_eq!(diags[0].line, Some(3));
        assert!(diags[0].message.contains("`who`"), "{}", diags[0].message);
    }

    #[test]
    fn source_address_takes_a_word_or_a_list() {
        let text =
            "[role.a]\nsource_address = \"peer\"\n[role.b]\nsource_address = [\"10.0.0.1\"]\n";
        let (doc, diags) = read_text(text);
        assert!(diags.is_empty(), "{diags:?}");
        let a = doc.roles[0].raw.as_ref().unwrap();
        assert!(matches!(
            a.source_address.as_ref().unwrap().get_ref(),
            RawSourceAddress::Word(w) if w == "peer"
        ));
        let b = doc.roles[1].raw.as_ref().unwrap();
        assert!(matches!(
            b.source_address.as_ref().unwrap().get_ref(),
            RawSourceAddress::List(l) if l.len() == 1
        ));
    }

    #[test]
    fn deep_nesting_is_a_syntax_error_not_a_crash() {
        let deep = vec!["a"; 100_000].join(".");
        for text in [
            format!("a = {}", "[".repeat(100_000)),
            format!("a = {}", "{ b = ".repeat(100_000)),
            format!("{deep} = 1"),
            format!("[role.{deep}]"),
        ] {
            let (_, diags) = read_text(&text);
            assert_eq!(diags.len(), 1);
            assert!(diags[0].message.starts_with("TOML syntax error"));
        }
    }

    #[test]
    fn a_table_with_many_bad_keys_stops_after_the_cap() {
        let keys: String = (0..100).map(|i| format!("k{i} = 1\n")).collect();
        let (_, diags) = read_text(&format!("[ca]\n{keys}"));
        assert_eq!(diags.len(), MAX_TABLE_ERRORS + 1);
        assert!(diags[MAX_TABLE_ERRORS].message.contains("fix these first"));
    }
}
