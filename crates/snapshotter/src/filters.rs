//! containerd's filter language, as sent in `filters` of
//! `containerd.services.snapshots.v1.Snapshots/List` (and the other
//! containerd list APIs; package `github.com/containerd/containerd/v2/pkg/filters`).
//!
//! Clients (`ctr snapshots ls`, the CRI plugin, nerdctl, the garbage
//! collector's tooling) build these strings for containerd, not for us, so
//! anything containerd accepts must be accepted here with the same meaning.
//!
//! # Grammar
//!
//! ```text
//! request   := filter*                      any filter may match (OR)
//! filter    := "" | selector ("," selector)*   all selectors must match (AND)
//! selector  := fieldpath [operator value]
//! fieldpath := field ("." field)*
//! field     := [A-Za-z0-9_-]+ | "double-quoted"
//! operator  := "==" | "!=" | "~="
//! value     := "double-quoted" | bare
//!            | /regexp/ | |regexp|          (only after ~=)
//! bare      := a non-empty run of characters other than ',', white space
//!              and control characters; it may not start with '.', '=',
//!              '!', '~', '"', '/' or '|'
//! ```
//!
//! Quoted strings take Go's escapes: `\a \b \f \n \r \t \v \\`, `\` followed
//! by the string's own delimiter, octal `\ooo`, `\xhh`, `\uhhhh` and
//! `\Uhhhhhhhh`. Anything else after a backslash is an error, including
//! inside `/regexp/` (write `/a\\.b/` for the pattern `a\.b`), exactly as in
//! containerd. A raw newline inside quotes is an error.
//!
//! # Semantics (containerd's, deliberately)
//!
//! * `path` matches when the adaptor reports the field present.
//! * `path==v` matches when the field is present and equal to `v`.
//! * `path!=v` matches when the field's value differs from `v`, where an
//!   absent field has the value `""`: `labels.x!=""` is false for a missing
//!   label, `labels.x!=y` is true.
//! * `path~=re` matches when `re` (RE2-like syntax, unanchored) finds a match
//!   in the value, again `""` for an absent field.
//! * An empty request, or any empty string in it, matches everything.
//!
//! # Where this differs from containerd
//!
//! Only by accepting more or rejecting earlier, never by changing what a
//! filter that both accept means:
//!
//! * White space is skipped between any two tokens, including before `,`
//!   and `.` and at the end (containerd's scanner only skips it before some
//!   tokens, so it rejects `name==a ,x` and `labels .x`).
//! * `~=` patterns are compiled while parsing, and a bad pattern is an
//!   error; containerd compiles lazily and treats a bad pattern as "never
//!   matches".
//! * Patterns are bounded (see [`MAX_REGEXES`]) so a hostile request cannot
//!   make us allocate without limit. No legitimate client comes close.
//! * Bare values may contain Unicode format and private-use characters,
//!   which containerd's "graphic" test refuses; Rust has no such class.
//! * Escapes that spell invalid UTF-8 (`"\xff"`) are rejected: every value we
//!   could compare against is UTF-8, so such a value could never match.

use std::fmt;

use regex::{Regex, RegexBuilder};

/// Compiled-program budget for one `~=` pattern. The `regex` crate's default
/// (10 MiB) lets a 10-byte pattern such as `\w{100}` claim 8 MiB and tens of
/// milliseconds to build. Typical filters (`^sha256:`, `[0-9a-f]{64}`) need
/// under 10 KiB; 1 MiB still admits Unicode `\w{20}`.
const REGEX_SIZE_LIMIT: usize = 1024 * 1024;

/// Lazy-DFA cache budget for one `~=` pattern, for the same reason; when the
/// cache fills the engine falls back to slower but still linear-time search.
const REGEX_DFA_SIZE_LIMIT: usize = 1024 * 1024;

/// Most `~=` selectors one request may carry. With the per-pattern limits
/// above this caps what a single `List` call can make us build at tens of
/// MiB, whatever its size; real requests carry one or two.
pub const MAX_REGEXES: usize = 16;

/// Longest excerpt of the input quoted back in an error, so that a
/// multi-megabyte filter does not produce a multi-megabyte message.
const NEAR_CHARS: usize = 24;

/// Access to an object's fields by path: containerd's `filters.Adaptor`.
///
/// `None` means absent, `Some("")` present but empty; the difference only
/// matters to the bare `path` (presence) selector and to `==`.
///
/// containerd's snapshot adaptor, which callers should mirror so that the
/// same filter selects the same snapshots:
///
/// * `["name"]`, `["parent"]`: always present, possibly `""`.
/// * `["kind"]`: `"view"`, `"active"` or `"committed"`.
/// * `["labels", k1, k2, ...]`: the label whose key is `k1.k2...` (the path
///   joined with `.`), present iff the key exists, even with an empty value;
///   absent for every path when there are no labels at all.
/// * anything else: absent.
pub trait Fields {
    /// The value at `path`, or `None` if the object has no such field.
    fn field(&self, path: &[String]) -> Option<String>;
}

/// A parsed request: a disjunction of conjunctions of selectors.
#[derive(Debug, Clone)]
pub struct Filter {
    /// One entry per input string; empty means "no filters", which matches
    /// everything, as does an empty conjunction.
    any: Vec<Vec<Selector>>,
}

#[derive(Debug, Clone)]
struct Selector {
    path: Vec<String>,
    test: Test,
}

#[derive(Debug, Clone)]
enum Test {
    Present,
    Equal(String),
    NotEqual(String),
    Matches(Regex),
}

/// The comparison operators, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    /// `==`
    Equal,
    /// `!=`
    NotEqual,
    /// `~=`
    Matches,
}

impl fmt::Display for Operator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Operator::Equal => "==",
            Operator::NotEqual => "!=",
            Operator::Matches => "~=",
        })
    }
}

/// Why a filter string was rejected, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid filter #{index}: {kind} at byte {position} ({})", Near(.near))]
pub struct FilterError {
    /// Which string of the request (0-based).
    pub index: usize,
    /// Byte offset into that string.
    pub position: usize,
    /// What is wrong there.
    pub kind: FilterErrorKind,
    /// A short excerpt of the input from `position` on.
    pub near: String,
}

/// The specific syntax or limit violation behind a [`FilterError`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FilterErrorKind {
    /// A field name (or quoted field) was required: at the start of a
    /// selector, after `,` or after `.`.
    #[error("expected a field name or a \"quoted\" field, found {}", Found(.found))]
    ExpectedField {
        /// What was there instead.
        found: Option<char>,
    },
    /// A field path is followed by something that is neither an operator,
    /// `,`, `.` nor the end.
    #[error("expected an operator (==, != or ~=), ',' or the end, found {found:?}")]
    ExpectedOperator {
        /// What was there instead.
        found: char,
    },
    /// A run of `=`, `!` and `~` that is not one of the three operators,
    /// e.g. `name=foo` or `name===foo` (at most 24 characters of it).
    #[error(
        "unsupported operator {0:?}; use ==, != or ~= (and quote values starting with =, ! or ~)"
    )]
    UnsupportedOperator(String),
    /// An operator with nothing (or only `,`) after it.
    #[error("missing value after {op}")]
    MissingValue {
        /// The operator that wanted a value.
        op: Operator,
    },
    /// A bare value starting with a character the tokenizer gives another
    /// meaning (`.`, an operator character) or that cannot appear in a bare
    /// value at all (control characters).
    #[error("a bare value cannot start with {0:?}; quote it with \"...\"")]
    BadValueStart(char),
    /// `/.../` or `|...|` outside a `~=` value.
    #[error("{0}...{0} quoting is only allowed for ~= regular expressions; use \"...\"")]
    AltQuoteNotAllowed(char),
    /// A quoted string runs into the end of the input or a raw newline.
    #[error("unterminated {0}-quoted string")]
    UnterminatedQuote(char),
    /// A backslash escape that Go string syntax does not define, or a
    /// numeric escape out of range.
    #[error("invalid escape sequence in quoted string")]
    InvalidEscape,
    /// Escapes in a quoted string spell bytes that are not UTF-8.
    #[error("quoted string escapes do not form valid UTF-8")]
    InvalidUtf8,
    /// A NUL character anywhere in the filter.
    #[error("NUL character in filter")]
    Nul,
    /// Something other than `,` or the end after a complete selector.
    #[error("unexpected {0:?}, expected ',' or the end of the filter")]
    UnexpectedInput(char),
    /// A `~=` pattern the regex engine rejected (syntax or size).
    #[error("invalid regular expression: {0}")]
    BadRegex(String),
    /// More than [`MAX_REGEXES`] `~=` selectors across the request.
    #[error("too many ~= selectors (at most {MAX_REGEXES} per request)")]
    TooManyRegexes,
}

/// Renders "what was found" for messages: a quoted character or "the end".
struct Found<'a>(&'a Option<char>);

impl fmt::Display for Found<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self.0 {
            Some(c) => write!(f, "{c:?}"),
            None => f.write_str("the end of the filter"),
        }
    }
}

/// Renders the excerpt in [`FilterError`]'s message.
struct Near<'a>(&'a str);

impl fmt::Display for Near<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("at the end")
        } else {
            write!(f, "near {:?}", self.0)
        }
    }
}

impl FilterError {
    fn new(index: usize, input: &str, position: usize, kind: FilterErrorKind) -> Self {
        let near = input
            .get(position..)
            .unwrap_or_default()
            .chars()
            .take(NEAR_CHARS)
            .collect();
        FilterError {
            index,
            position,
            kind,
            near,
        }
    }
}

/// Parses the `filters` of a request.
///
/// The result matches an object when any string matches (an empty list, or
/// an empty string, matches everything); within a string, every
/// comma-separated selector must match. See the module documentation for the
/// syntax.
pub fn parse(filters: &[String]) -> Result<Filter, FilterError> {
    let mut regexes = 0;
    let any = filters
        .iter()
        .enumerate()
        .map(|(index, input)| {
            parse_one(input, &mut regexes)
                .map_err(|(position, kind)| FilterError::new(index, input, position, kind))
        })
        .collect::<Result<_, _>>()?;
    Ok(Filter { any })
}

impl Filter {
    /// Whether the object behind `fields` is selected.
    pub fn matches<F: Fields + ?Sized>(&self, fields: &F) -> bool {
        self.any.is_empty()
            || self
                .any
                .iter()
                .any(|all| all.iter().all(|selector| selector.matches(fields)))
    }
}

impl Selector {
    fn matches<F: Fields + ?Sized>(&self, fields: &F) -> bool {
        let value = fields.field(&self.path);
        match &self.test {
            Test::Present => value.is_some(),
            Test::Equal(want) => value.as_deref() == Some(want.as_str()),
            // containerd compares the zero value for an absent field, so
            // `!=` and `~=` see "" rather than failing outright.
            Test::NotEqual(want) => value.as_deref().unwrap_or_default() != want,
            Test::Matches(re) => re.is_match(value.as_deref().unwrap_or_default()),
        }
    }
}

/// A parse failure before it is tied to an input string: byte offset and
/// reason.
type Failure = (usize, FilterErrorKind);

fn parse_one(input: &str, regexes: &mut usize) -> Result<Vec<Selector>, Failure> {
    // containerd special-cases exactly "" (not white space) as "everything".
    if input.is_empty() {
        return Ok(Vec::new());
    }
    // Checked once up front rather than in every token rule; containerd's
    // scanner refuses NUL wherever it appears, quoted or not.
    if let Some(at) = input.find('\0') {
        return Err((at, FilterErrorKind::Nul));
    }
    let mut parser = Parser {
        input,
        pos: 0,
        regexes,
    };
    let mut selectors = Vec::new();
    loop {
        selectors.push(parser.selector()?);
        parser.skip_ws();
        match parser.peek() {
            None => return Ok(selectors),
            Some(',') => {
                parser.bump();
            }
            Some(c) => return Err((parser.pos, FilterErrorKind::UnexpectedInput(c))),
        }
    }
}

/// Recursive-descent parser over one filter string. `pos` only ever advances
/// by whole characters, so it is always a char boundary.
struct Parser<'a> {
    input: &'a str,
    pos: usize,
    /// `~=` selectors compiled so far in the whole request.
    regexes: &'a mut usize,
}

/// Characters of an unquoted field name. containerd added `-` so that
/// `labels.my-label` works unquoted.
fn is_field_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// Characters of a bare value: containerd takes "graphic or punctuation,
/// not space, not ','". Rust has no Unicode "graphic" class; excluding
/// control characters and white space is the same for everything a client
/// sends in practice, and only accepts more otherwise.
fn is_value_char(c: char) -> bool {
    c != ',' && !c.is_whitespace() && !c.is_control()
}

impl Parser<'_> {
    fn peek(&self) -> Option<char> {
        self.input.get(self.pos..)?.chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.bump();
        }
    }

    fn take_while(&mut self, pred: impl Fn(char) -> bool) -> &str {
        let start = self.pos;
        while self.peek().is_some_and(&pred) {
            self.bump();
        }
        self.input.get(start..self.pos).unwrap_or_default()
    }

    fn selector(&mut self) -> Result<Selector, Failure> {
        let path = self.fieldpath()?;
        self.skip_ws();
        let op_at = self.pos;
        let op = match self.peek() {
            None | Some(',') => {
                return Ok(Selector {
                    path,
                    test: Test::Present,
                });
            }
            Some(found) => match self.take_while(|c| matches!(c, '=' | '!' | '~')) {
                "==" => Operator::Equal,
                "!=" => Operator::NotEqual,
                "~=" => Operator::Matches,
                "" => return Err((op_at, FilterErrorKind::ExpectedOperator { found })),
                // Capped like `near`: the run could be the whole input.
                other => {
                    let shown = other.chars().take(NEAR_CHARS).collect();
                    return Err((op_at, FilterErrorKind::UnsupportedOperator(shown)));
                }
            },
        };
        self.skip_ws();
        let value_at = self.pos;
        let value = self.value(op)?;
        let test = match op {
            Operator::Equal => Test::Equal(value),
            Operator::NotEqual => Test::NotEqual(value),
            Operator::Matches => Test::Matches(self.compile(&value, value_at)?),
        };
        Ok(Selector { path, test })
    }

    fn fieldpath(&mut self) -> Result<Vec<String>, Failure> {
        let mut path = vec![self.field()?];
        loop {
            self.skip_ws();
            if self.peek() != Some('.') {
                return Ok(path);
            }
            self.bump();
            path.push(self.field()?);
        }
    }

    fn field(&mut self) -> Result<String, Failure> {
        self.skip_ws();
        match self.peek() {
            Some('"') => self.quoted('"'),
            Some(q @ ('/' | '|')) => Err((self.pos, FilterErrorKind::AltQuoteNotAllowed(q))),
            Some(c) if is_field_char(c) => Ok(self.take_while(is_field_char).to_owned()),
            found => Err((self.pos, FilterErrorKind::ExpectedField { found })),
        }
    }

    fn value(&mut self, op: Operator) -> Result<String, Failure> {
        let at = self.pos;
        match self.peek() {
            None | Some(',') => Err((at, FilterErrorKind::MissingValue { op })),
            Some('"') => self.quoted('"'),
            // containerd's scanner treats `/` and `|` as quotes everywhere
            // and only the parser then refuses them outside `~=`, so even
            // `name==/x/y` is an error there; keep that rather than guess.
            Some(q @ ('/' | '|')) if op == Operator::Matches => self.quoted(q),
            Some(q @ ('/' | '|')) => Err((at, FilterErrorKind::AltQuoteNotAllowed(q))),
            // These start another token in containerd's scanner (field
            // separator, operator), so they cannot begin a bare value.
            Some(c @ ('.' | '=' | '!' | '~')) => Err((at, FilterErrorKind::BadValueStart(c))),
            Some(c) if is_value_char(c) => Ok(self.take_while(is_value_char).to_owned()),
            Some(c) => Err((at, FilterErrorKind::BadValueStart(c))),
        }
    }

    /// A string delimited by `delim` (at `self.pos`) with Go escapes.
    /// Decodes to bytes first because `\x` and octal escapes are bytes and a
    /// sequence of them may form one UTF-8 character (`"\xc3\xa9"` is `é`).
    fn quoted(&mut self, delim: char) -> Result<String, Failure> {
        let open = self.pos;
        self.bump();
        let mut out = Vec::new();
        loop {
            let at = self.pos;
            match self.bump() {
                None | Some('\n') => return Err((open, FilterErrorKind::UnterminatedQuote(delim))),
                Some(c) if c == delim => break,
                Some('\\') => self.escape(delim, open, at, &mut out)?,
                Some(c) => push_char(&mut out, c),
            }
        }
        String::from_utf8(out).map_err(|_| (open, FilterErrorKind::InvalidUtf8))
    }

    /// One escape, the backslash (at `at`) already consumed.
    fn escape(
        &mut self,
        delim: char,
        open: usize,
        at: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), Failure> {
        let invalid = (at, FilterErrorKind::InvalidEscape);
        let Some(c) = self.bump() else {
            return Err((open, FilterErrorKind::UnterminatedQuote(delim)));
        };
        match c {
            'a' => out.push(0x07),
            'b' => out.push(0x08),
            'f' => out.push(0x0c),
            'n' => out.push(b'\n'),
            'r' => out.push(b'\r'),
            't' => out.push(b'\t'),
            'v' => out.push(0x0b),
            '\\' => out.push(b'\\'),
            // Only the string's own delimiter may be escaped: `\'` in
            // "..." or `\"` in /.../ is an error in Go and containerd.
            c if c == delim => push_char(out, c),
            '0'..='7' => {
                let first = c.to_digit(8).unwrap_or_default();
                let rest = self.digits(2, 8).ok_or(invalid.clone())?;
                let value = (first << 6) | rest;
                out.push(u8::try_from(value).map_err(|_| invalid)?);
            }
            'x' => {
                let value = self.digits(2, 16).ok_or(invalid.clone())?;
                out.push(u8::try_from(value).map_err(|_| invalid)?);
            }
            'u' | 'U' => {
                let n = if c == 'u' { 4 } else { 8 };
                let value = self.digits(n, 16).ok_or(invalid.clone())?;
                // Rejects surrogates and values past U+10FFFF.
                push_char(out, char::from_u32(value).ok_or(invalid)?);
            }
            _ => return Err(invalid),
        }
        Ok(())
    }

    /// Exactly `n` digits in `radix`, as a number. At most 8 hex digits, so
    /// it fits in a u32.
    fn digits(&mut self, n: usize, radix: u32) -> Option<u32> {
        let mut value = 0u32;
        for _ in 0..n {
            let digit = self.peek()?.to_digit(radix)?;
            self.bump();
            value = value.checked_mul(radix)?.checked_add(digit)?;
        }
        Some(value)
    }

    fn compile(&mut self, pattern: &str, at: usize) -> Result<Regex, Failure> {
        if *self.regexes >= MAX_REGEXES {
            return Err((at, FilterErrorKind::TooManyRegexes));
        }
        *self.regexes += 1;
        RegexBuilder::new(pattern)
            .size_limit(REGEX_SIZE_LIMIT)
            .dfa_size_limit(REGEX_DFA_SIZE_LIMIT)
            .build()
            .map_err(|e| (at, FilterErrorKind::BadRegex(regex_reason(&e))))
    }
}

/// The regex crate renders syntax errors over several lines (pattern, caret,
/// reason); our message already says where the pattern starts, so keep just
/// the reason (without its full stop, as our message goes on) so the error
/// stays one line in logs and gRPC statuses.
fn regex_reason(e: &regex::Error) -> String {
    let full = e.to_string();
    let last = full.lines().rev().map(str::trim).find(|l| !l.is_empty());
    last.map_or(full.as_str(), |l| {
        l.trim_start_matches("error: ").trim_end_matches('.')
    })
    .to_owned()
}

fn push_char(out: &mut Vec<u8>, c: char) {
    out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    /// A snapshot as containerd's snapshot adaptor sees it.
    struct Info {
        name: &'static str,
        parent: &'static str,
        kind: &'static str,
        labels: BTreeMap<&'static str, &'static str>,
    }

    impl Fields for Info {
        fn field(&self, path: &[String]) -> Option<String> {
            match path.first()?.as_str() {
                "name" => Some(self.name.to_owned()),
                "parent" => Some(self.parent.to_owned()),
                "kind" => Some(self.kind.to_owned()),
                "labels" if !self.labels.is_empty() => self
                    .labels
                    .get(path[1..].join(".").as_str())
                    .map(|v| (*v).to_owned()),
                _ => None,
            }
        }
    }

    fn fixtures() -> Vec<Info> {
        vec![
            Info {
                name: "sha256:aaa",
                parent: "",
                kind: "committed",
                labels: BTreeMap::from([
                    ("containerd.io/gc.root", "2024-01-01"),
                    ("containerd.io/snapshot.ref", "sha256:abc"),
                    ("foo", "bar"),
                ]),
            },
            Info {
                name: "sha256:bbb",
                parent: "sha256:aaa",
                kind: "committed",
                labels: BTreeMap::from([("foo", ""), ("a.b", "dotted")]),
            },
            Info {
                name: "default/7/ctr",
                parent: "sha256:bbb",
                kind: "active",
                labels: BTreeMap::from([("with,comma", "x,y"), ("quote\"d", "tab\there")]),
            },
            Info {
                name: "view-1",
                parent: "sha256:bbb",
                kind: "view",
                labels: BTreeMap::new(),
            },
        ]
    }

    /// Names of the fixtures the filter list selects.
    fn select(filters: &[&str]) -> Vec<&'static str> {
        let owned: Vec<String> = filters.iter().map(|s| (*s).to_owned()).collect();
        let filter = parse(&owned).unwrap_or_else(|e| panic!("{filters:?}: {e}"));
        fixtures()
            .into_iter()
            .filter(|info| filter.matches(info))
            .map(|info| info.name)
            .collect()
    }

    const ALL: &[&str] = &["sha256:aaa", "sha256:bbb", "default/7/ctr", "view-1"];

    #[test]
    fn matching_table() {
        let cases: &[(&[&str], &[&str])] = &[
            // Empty request and empty strings select everything.
            (&[], ALL),
            (&[""], ALL),
            (&["", "name==nothing"], ALL),
            // Equality and the docs' basic examples.
            (&["name==sha256:aaa"], &["sha256:aaa"]),
            (&["name==foo"], &[]),
            (&["kind==committed"], &["sha256:aaa", "sha256:bbb"]),
            (&["kind==view"], &["view-1"]),
            (&["kind==committed,parent==sha256:aaa"], &["sha256:bbb"]),
            (&["parent==sha256:bbb,kind==active"], &["default/7/ctr"]),
            // Bare values carry '/', ':' and '-'; only ',' (and space) end them.
            (&["name==default/7/ctr"], &["default/7/ctr"]),
            (&["name==view-1"], &["view-1"]),
            // Presence: a label with an empty value is present.
            (&["labels.foo"], &["sha256:aaa", "sha256:bbb"]),
            (&["labels.foo==bar"], &["sha256:aaa"]),
            (&["labels.foo==\"\""], &["sha256:bbb"]),
            (&["labels.\"containerd.io/gc.root\""], &["sha256:aaa"]),
            (
                &["labels.\"containerd.io/snapshot.ref\"==sha256:abc"],
                &["sha256:aaa"],
            ),
            // Unquoted dotted paths reach dotted keys through the adaptor.
            (&["labels.a.b==dotted"], &["sha256:bbb"]),
            (&["labels.\"a.b\"==dotted"], &["sha256:bbb"]),
            // name/parent are always present in containerd's adaptor.
            (&["parent"], ALL),
            (&["nosuchfield"], &[]),
            // != treats an absent field as "".
            (
                &["name!=sha256:aaa"],
                &["sha256:bbb", "default/7/ctr", "view-1"],
            ),
            (
                &["labels.foo!=bar"],
                &["sha256:bbb", "default/7/ctr", "view-1"],
            ),
            (&["labels.foo!=\"\""], &["sha256:aaa"]),
            (&["kind!=committed,kind!=view"], &["default/7/ctr"]),
            // Regular expressions, bare and alt-quoted, unanchored.
            (&["name~=^sha256:"], &["sha256:aaa", "sha256:bbb"]),
            (&["name~=b"], &["sha256:bbb"]),
            (&["name~=/^view-[0-9]+$/"], &["view-1"]),
            (&[r"name~=|^(view\|default)|"], &["default/7/ctr", "view-1"]),
            (&["name~=\"^sha256:a+$\""], &["sha256:aaa"]),
            (&[r"name~=/^sha256\\:/"], &["sha256:aaa", "sha256:bbb"]),
            (&[r"name~=/\//"], &["default/7/ctr"]),
            (
                &["labels.foo~=^$"],
                &["sha256:bbb", "default/7/ctr", "view-1"],
            ),
            // OR across strings, AND within.
            (
                &["name==sha256:aaa", "kind==view"],
                &["sha256:aaa", "view-1"],
            ),
            (
                &["kind==active", "kind==view,name==nope"],
                &["default/7/ctr"],
            ),
            (&["name==x", "name==y"], &[]),
            // Quoted values may hold commas, quotes and escapes.
            (&["labels.\"with,comma\"==\"x,y\""], &["default/7/ctr"]),
            (&[r#"labels."quote\"d"=="tab\there""#], &["default/7/ctr"]),
            (&[r#"labels."quote\"d"=="tab\x09here""#], &["default/7/ctr"]),
            (&[r#"labels."quote\"d"=="tab\011here""#], &["default/7/ctr"]),
            (
                &[r#"labels."quote\"d"=="tab\u0009here""#],
                &["default/7/ctr"],
            ),
            (
                &[r#"labels."quote\"d"=="tab\U00000009here""#],
                &["default/7/ctr"],
            ),
            (&[r#""name"=="sha256:aaa""#], &["sha256:aaa"]),
            // Bare values may contain quote and operator characters after
            // the first.
            (&["name==a\"b=c"], &[]),
            // White space around operators, separators and at the ends.
            (&["name == sha256:aaa"], &["sha256:aaa"]),
            (
                &["  kind==committed , parent==sha256:aaa  "],
                &["sha256:bbb"],
            ),
            (&["labels . foo"], &["sha256:aaa", "sha256:bbb"]),
            (
                &["labels.foo\t,\tkind==committed"],
                &["sha256:aaa", "sha256:bbb"],
            ),
            // Field names may contain '-' and '_' and start with digits.
            (&["labels.my-label_2"], &[]),
        ];
        for (filters, want) in cases {
            assert_eq!(select(filters), *want, "{filters:?}");
        }
    }

    #[test]
    fn decoded_values() {
        // Checks decoding directly, independent of the fixtures.
        let cases: &[(&str, &str)] = &[
            (r#"x=="a\"b""#, "a\"b"),
            (r#"x=="a\\b""#, "a\\b"),
            (r#"x=="\a\b\f\n\r\t\v""#, "\u{7}\u{8}\u{c}\n\r\t\u{b}"),
            (r#"x=="\xc3\xa9""#, "é"),
            (r#"x=="\303\251""#, "é"),
            (r#"x=="\u00e9\U0001F600""#, "é\u{1F600}"),
            ("x==\"é,ü\"", "é,ü"),
            ("x==é", "é"),
            ("x==\"\"", ""),
            ("x==a=b!c~d", "a=b!c~d"),
            ("x==a.b", "a.b"),
        ];
        for (input, want) in cases {
            let filter = parse(&[(*input).to_owned()]).unwrap();
            let Test::Equal(got) = &filter.any[0][0].test else {
                panic!("{input}: not an equality");
            };
            assert_eq!(got, want, "{input}");
        }
        let filter = parse(&[r"x~=/a\/b\\d/".to_owned()]).unwrap();
        let Test::Matches(re) = &filter.any[0][0].test else {
            panic!("not a regex");
        };
        assert_eq!(re.as_str(), r"a/b\d");
    }

    #[test]
    fn error_table() {
        use FilterErrorKind as K;
        let cases: &[(&str, usize, K)] = &[
            (" ", 1, K::ExpectedField { found: None }),
            ("==foo", 0, K::ExpectedField { found: Some('=') }),
            (",", 0, K::ExpectedField { found: Some(',') }),
            ("name==a,", 8, K::ExpectedField { found: None }),
            ("name==a,,b", 8, K::ExpectedField { found: Some(',') }),
            ("labels.", 7, K::ExpectedField { found: None }),
            ("labels..x", 7, K::ExpectedField { found: Some('.') }),
            (".name", 0, K::ExpectedField { found: Some('.') }),
            ("labels./x/", 7, K::AltQuoteNotAllowed('/')),
            ("name foo", 5, K::ExpectedOperator { found: 'f' }),
            ("labels.\"a\"b", 10, K::ExpectedOperator { found: 'b' }),
            ("name=foo", 4, K::UnsupportedOperator("=".into())),
            ("name===foo", 4, K::UnsupportedOperator("===".into())),
            ("name!foo", 4, K::UnsupportedOperator("!".into())),
            ("name=~foo", 4, K::UnsupportedOperator("=~".into())),
            (
                "name==",
                6,
                K::MissingValue {
                    op: Operator::Equal,
                },
            ),
            (
                "name!= ",
                7,
                K::MissingValue {
                    op: Operator::NotEqual,
                },
            ),
            (
                "name~=,x",
                6,
                K::MissingValue {
                    op: Operator::Matches,
                },
            ),
            ("name==.x", 6, K::BadValueStart('.')),
            ("name==\u{1}", 6, K::BadValueStart('\u{1}')),
            ("name==/x/", 6, K::AltQuoteNotAllowed('/')),
            ("name!=|x|", 6, K::AltQuoteNotAllowed('|')),
            ("name==\"abc", 6, K::UnterminatedQuote('"')),
            ("name==\"ab\ncd\"", 6, K::UnterminatedQuote('"')),
            ("name==\"abc\\", 6, K::UnterminatedQuote('"')),
            ("name~=/abc", 6, K::UnterminatedQuote('/')),
            ("labels.\"abc", 7, K::UnterminatedQuote('"')),
            (r#"name=="a\qb""#, 8, K::InvalidEscape),
            (r#"name=="a\'b""#, 8, K::InvalidEscape),
            (r"name~=/\d/", 7, K::InvalidEscape),
            (r#"name~=/\"/"#, 7, K::InvalidEscape),
            (r#"name=="\x4""#, 7, K::InvalidEscape),
            (r#"name=="\400""#, 7, K::InvalidEscape),
            (r#"name=="\ud800""#, 7, K::InvalidEscape),
            (r#"name=="\U00110000""#, 7, K::InvalidEscape),
            (r#"name=="\xff""#, 6, K::InvalidUtf8),
            ("name==a\0", 7, K::Nul),
            ("name==a b", 8, K::UnexpectedInput('b')),
            ("name==\"a\"b", 9, K::UnexpectedInput('b')),
        ];
        for (input, position, kind) in cases {
            let err = parse(&[(*input).to_owned()]).unwrap_err();
            assert_eq!(
                (err.position, &err.kind),
                (*position, kind),
                "{input:?}: {err}"
            );
            assert_eq!(err.index, 0);
        }

        for input in ["name~=(", "name~=/[z-a]/", r"name~=\w{500}{500}"] {
            let err = parse(&[input.to_owned()]).unwrap_err();
            assert!(matches!(err.kind, K::BadRegex(_)), "{input}: {err}");
            assert!(!err.to_string().contains('\n'), "{err}");
            assert_eq!(err.position, 6);
        }
        // The size budget still admits modest Unicode classes.
        assert!(parse(&[r"name~=^\w{20}$".to_owned()]).is_ok());
    }

    #[test]
    fn error_reports_which_string_and_context() {
        let filters = ["name==ok".to_owned(), "kind==x,labels.\"open".to_owned()];
        let err = parse(&filters).unwrap_err();
        assert_eq!((err.index, err.position), (1, 15));
        assert_eq!(err.near, "\"open");
        assert_eq!(
            err.to_string(),
            "invalid filter #1: unterminated \"-quoted string at byte 15 (near \"\\\"open\")"
        );

        let err = parse(&["name==".to_owned()]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid filter #0: missing value after == at byte 6 (at the end)"
        );

        // The excerpt is bounded however long the input is.
        let long = format!("name foo{}", "x".repeat(10_000));
        let err = parse(&[long]).unwrap_err();
        assert_eq!(err.near.chars().count(), NEAR_CHARS);
    }

    #[test]
    fn regex_count_is_bounded_per_request() {
        let one = "name~=^a".to_owned();
        assert!(parse(&vec![one.clone(); MAX_REGEXES]).is_ok());
        let err = parse(&vec![one; MAX_REGEXES + 1]).unwrap_err();
        assert_eq!(err.kind, FilterErrorKind::TooManyRegexes);
        assert_eq!(err.index, MAX_REGEXES);

        let within_one = vec!["name~=a"; MAX_REGEXES + 1].join(",");
        let err = parse(&[within_one]).unwrap_err();
        assert_eq!(err.kind, FilterErrorKind::TooManyRegexes);
    }

    #[test]
    fn works_through_dyn_fields() {
        let filter = parse(&["kind==view".to_owned()]).unwrap();
        let info: &dyn Fields = &fixtures()[3];
        assert!(filter.matches(info));
    }

    /// Go-syntax quoting of an arbitrary string, for the round-trip property.
    fn go_quote(s: &str) -> String {
        let mut out = String::from("\"");
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                c if c.is_control() => {
                    out.push_str(&format!("\\U{:08x}", u32::from(c)));
                }
                c => out.push(c),
            }
        }
        out.push('"');
        out
    }

    struct Labels(BTreeMap<String, String>);

    impl Fields for Labels {
        fn field(&self, path: &[String]) -> Option<String> {
            match path {
                [labels, key] if labels == "labels" => self.0.get(key).cloned(),
                _ => None,
            }
        }
    }

    proptest! {
        #[test]
        fn parse_never_panics(input in any::<String>()) {
            if let Ok(filter) = parse(&[input]) {
                filter.matches(&fixtures()[0]);
            }
        }

        #[test]
        fn parse_never_panics_on_grammar_soup(
            inputs in proptest::collection::vec(
                r#"[a-z0-9_.,=!~"/|\\ \txuU\n-]{0,32}"#, 0..4)
        ) {
            if let Ok(filter) = parse(&inputs) {
                for info in fixtures() {
                    filter.matches(&info);
                }
            }
        }

        #[test]
        fn quoted_key_and_value_round_trip(
            key in any::<String>(), value in any::<String>(), other in any::<String>()
        ) {
            prop_assume!(other != value);
            let filter = format!("labels.{}=={}", go_quote(&key), go_quote(&value));
            let parsed = parse(&[filter]).unwrap();
            let hit = Labels(BTreeMap::from([(key.clone(), value)]));
            let miss = Labels(BTreeMap::from([(key, other)]));
            prop_assert!(parsed.matches(&hit));
            prop_assert!(!parsed.matches(&miss));
        }
    }
}
