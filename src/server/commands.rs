//! The commands a requester can send over SSH, and their replies.
//!
//! The exec request's command line is split into words without any shell
//! (quotes and backslashes honoured, nothing expanded), capped in size, and
//! parsed with clap. Anything unknown gets a usage message and exit status
//! [`exit::USAGE`].

use std::fmt::Write as _;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// Exit statuses sent back to `ssh`.
pub mod exit {
    /// A certificate was issued, or the command succeeded.
    pub const OK: u32 = 0;
    /// Something failed inside jitca; nothing was issued.
    pub const INTERNAL: u32 = 1;
    /// The command line was not understood, or named an unknown role.
    pub const USAGE: u32 = 2;
    /// The policy, or an approver, refused the request.
    pub const DENIED: u32 = 3;
    /// The request waits for approval; nothing was issued yet.
    pub const PENDING: u32 = 4;
    /// The request expired before it was decided or fetched.
    pub const EXPIRED: u32 = 5;
    /// The device made too many requests; nothing was decided.
    pub const LIMITED: u32 = 6;
}

/// The longest command line accepted, in bytes.
pub const MAX_COMMAND_BYTES: usize = 4096;
/// The longest `--reason` accepted, in characters.
pub const MAX_REASON_CHARS: usize = 500;

#[derive(Debug, Parser)]
#[command(
    name = "jitca",
    no_binary_name = true,
    disable_version_flag = true,
    color = clap::ColorChoice::Never,
    about = "jitca: just-in-time SSH certificates. Run these as `ssh -p PORT CA-HOST COMMAND`.",
    after_help = "Exit status: 0 issued/ok, 1 internal error, 2 usage error, 3 denied, 4 pending approval, 5 expired, 6 too many requests."
)]
pub struct Remote {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Ask for a certificate for ROLE, issued for the key you connected with
    Request {
        /// The role, as named in the CA's policy
        role: String,
        /// How long the certificate should live (e.g. 15m); at most the role's max_ttl
        #[arg(long, value_parser = parse_ttl)]
        ttl: Option<Duration>,
        /// Why you need access (e.g. a ticket); recorded in the audit log
        #[arg(long, value_parser = parse_reason)]
        reason: Option<String>,
        /// If the role needs approval, stay connected until it is decided
        #[arg(long)]
        wait: bool,
    },
    /// Get the certificate of your approved request ID
    Fetch {
        /// The request id (r-...)
        id: String,
        /// Stay connected until the request is decided
        #[arg(long)]
        wait: bool,
    },
    /// Your requests and live certificates
    Status,
    /// Requests you may approve or deny
    Pending,
    /// One request in full
    Show {
        /// The request id (r-...)
        id: String,
    },
    /// Approve request ID
    Approve {
        /// The request id (r-...)
        id: String,
        /// A note for the audit log
        #[arg(long, value_parser = parse_reason)]
        comment: Option<String>,
    },
    /// Deny request ID; one denial ends it
    Deny {
        /// The request id (r-...)
        id: String,
        /// Why, shown to the requester
        #[arg(long, required = true, value_parser = parse_reason)]
        reason: String,
    },
    /// Show what the CA knows about you and your device
    Whoami,
    /// Print the current key revocation list (base64 on one line; --raw for the binary file)
    Krl {
        /// Write the binary KRL instead of base64
        #[arg(long)]
        raw: bool,
    },
    /// Show, rule by rule, whether a request for ROLE would pass (issues nothing)
    Explain {
        /// The role, as named in the CA's policy
        role: String,
        /// Explain a request asking for this TTL
        #[arg(long, value_parser = parse_ttl)]
        ttl: Option<Duration>,
        /// Explain a request giving a reason (some roles require one)
        #[arg(long, value_parser = parse_reason)]
        reason: Option<String>,
    },
}

fn parse_ttl(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|_| {
        format!("{s:?} is not a duration: give a number with a unit, such as 90s, 15m or 1h")
    })
}

fn parse_reason(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        return Err("the reason is empty: say why you need access".into());
    }
    if s.chars().count() > MAX_REASON_CHARS {
        return Err(format!(
            "the reason is longer than {MAX_REASON_CHARS} characters"
        ));
    }
    if s.chars().any(crate::model::is_hidden_char) {
        return Err(
            "the text contains control or invisible formatting characters: remove them".into(),
        );
    }
    Ok(s.to_string())
}

/// What a command line turned out to be.
pub enum Parsed {
    Run(Command),
    /// Help was asked for: print it and succeed.
    Help(String),
    /// The line was not understood: print the message and fail with USAGE.
    Usage(String),
}

/// Splits and parses one exec request.
pub fn parse(raw: &[u8]) -> Parsed {
    if raw.len() > MAX_COMMAND_BYTES {
        return Parsed::Usage(format!(
            "error: the command is {} bytes long, over the {MAX_COMMAND_BYTES}-byte limit\n",
            raw.len()
        ));
    }
    let Ok(line) = std::str::from_utf8(raw) else {
        return Parsed::Usage("error: the command is not valid UTF-8\n".into());
    };
    if line
        .chars()
        .any(|c| c.is_control() && c != '\t' && c != '\n')
    {
        return Parsed::Usage("error: the command contains control characters\n".into());
    }
    let words = match shell_words::split(line) {
        Ok(w) => w,
        Err(_) => {
            return Parsed::Usage(
                "error: the command has an unmatched quote: close it or escape it with \\\n".into(),
            );
        }
    };
    if words.is_empty() || words.first().is_some_and(|w| w == "help") && words.len() == 1 {
        return Parsed::Help(help());
    }
    match Remote::try_parse_from(&words) {
        Ok(r) => Parsed::Run(r.command),
        Err(e) => match e.kind() {
            clap::error::ErrorKind::DisplayHelp
            | clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                Parsed::Help(e.render().to_string())
            }
            clap::error::ErrorKind::UnknownArgument
                if words.iter().any(|w| w == "--reason" || w == "--comment") =>
            {
                // `ssh host request r --reason two words` reaches us as
                // three words after --reason: ssh joins its arguments with
                // spaces, and the quotes were the local shell's.
                Parsed::Usage(format!(
                    "{}a reason or comment of several words needs quotes that reach jitca: \
                     ssh ... \"request ROLE --reason 'disk full on db1'\"\n",
                    e.render()
                ))
            }
            _ => Parsed::Usage(e.render().to_string()),
        },
    }
}

/// The top-level help text.
pub fn help() -> String {
    use clap::CommandFactory;
    Remote::command().render_help().to_string()
}

/// Renders a duration the way messages show it.
pub fn human(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// Renders "N ago" for a unix time relative to `now`.
pub fn ago(now: i64, then: i64) -> String {
    let secs = now.saturating_sub(then);
    if secs < 0 {
        return "in the future".into();
    }
    format!("{} ago", human(Duration::from_secs(secs as u64)))
}

/// Appends one line per rule: `  pass`/`  FAIL` with the rule and the value seen.
pub fn write_rules(out: &mut String, rules: &[crate::policy::RuleResult], prefix_failed: &str) {
    for r in rules {
        let mark = if r.passed { "  pass  " } else { prefix_failed };
        let _ = writeln!(out, "{mark}{}: saw {}", r.rule, r.seen);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(s: &str) -> Command {
        match parse(s.as_bytes()) {
            Parsed::Run(c) => c,
            Parsed::Help(h) | Parsed::Usage(h) => panic!("{s}: {h}"),
        }
    }

    #[test]
    fn request_takes_quoted_reason_and_ttl() {
        match run("request prod-db --ttl 15m --reason 'INC-42: disk full'") {
            Command::Request {
                role, ttl, reason, ..
            } => {
                assert_eq!(role, "prod-db");
                assert_eq!(ttl, Some(Duration::from_secs(900)));
                assert_eq!(reason.as_deref(), Some("INC-42: disk full"));
            }
            c => panic!("{c:?}"),
        }
    }

    #[test]
    fn unknown_and_malformed_input_is_a_usage_error() {
        for bad in [
            "frobnicate",
            "request",
            "request a b",
            "request r --ttl soon",
            "request r --reason ''",
            "request r --reason 'a\u{202e}b'",
            "request r --reason 'zero\u{200b}width'",
            "request 'unterminated",
            "whoami\u{7}",
        ] {
            assert!(matches!(parse(bad.as_bytes()), Parsed::Usage(_)), "{bad}");
        }
        assert!(matches!(parse(&[0xff, 0xfe]), Parsed::Usage(_)));
        assert!(matches!(
            parse(&vec![b'a'; MAX_COMMAND_BYTES + 1]),
            Parsed::Usage(_)
        ));
    }

    #[test]
    fn a_reason_of_several_unquoted_words_is_refused_saying_how_to_quote_it() {
        let Parsed::Usage(message) = parse(b"request prod-db --reason INC-42: fix orders") else {
            panic!("several words after --reason must be a usage error");
        };
        assert!(message.contains("needs quotes"), "{message}");
        assert!(message.contains("'disk full on db1'"), "{message}");
        let Parsed::Usage(message) = parse(b"whoami extra") else {
            panic!("an extra word must be a usage error");
        };
        assert!(!message.contains("needs quotes"), "{message}");
    }

    #[test]
    fn empty_line_and_help_print_help() {
        assert!(matches!(parse(b""), Parsed::Help(_)));
        assert!(matches!(parse(b"help"), Parsed::Help(_)));
        assert!(matches!(parse(b"--help"), Parsed::Help(_)));
        assert!(matches!(parse(b"request --help"), Parsed::Help(_)));
    }
}
