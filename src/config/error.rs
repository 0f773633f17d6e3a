//! Typed configuration errors that point at the offending line, column and field.
//!
//! Invariants: every error carries the file it came from and a 1-based line and column (0 when the
//! source has no position, e.g. the file could not be read); the `Display` form is the compiler-style
//! `FILE:LINE:COL: field: message` that `flipgate check` prints and reload logs carry. Errors are
//! bounded whatever the file holds: one line each (control characters are escaped), a field of at
//! most `MAX_FIELD_CHARS` and a message of at most `MAX_MESSAGE_CHARS` characters, quoted values
//! clipped to `MAX_QUOTE_CHARS`, and at most `MAX_ERRORS` errors per file plus one line counting the
//! rest. A 50 MB string in the file therefore costs a few hundred bytes of error text in the log,
//! in `flipgate check`'s output and in the admin API, never 50 MB.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One problem found in a route file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file, so an operator with several files knows which one to open.
    pub file: PathBuf,
    /// 1-based line; 0 when unknown.
    pub line: usize,
    /// 1-based column; 0 when unknown.
    pub col: usize,
    /// Dotted path of the field (`routes[chatbot].canary.percent`), empty for whole-file errors.
    pub field: String,
    /// What is wrong, in words an operator can act on.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Line 0: about the file as a whole (unreadable, too big, no routes), not a place in it.
        match self.line {
            0 => write!(f, "{}: ", self.file.display())?,
            _ => write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.col)?,
        }
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in one file; validation reports them all at once so a fix takes one edit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl ConfigErrors {
    /// The first error, for one-line summaries (logs, metrics, the admin API).
    pub fn first(&self) -> &ConfigError {
        &self.0[0]
    }
}

/// Longest quoted snippet (a value, a name from the file) an error message carries, in characters.
pub const MAX_QUOTE_CHARS: usize = 200;
/// Longest field path an error carries, in characters (it holds route and target names).
pub const MAX_FIELD_CHARS: usize = 300;
/// Longest message an error carries, in characters.
pub const MAX_MESSAGE_CHARS: usize = 1000;
/// Errors reported per file; the rest are counted in one last line. Fixing twenty problems at once
/// is already more than one edit; a generated file with 100,000 bad hosts must not print 100,000.
pub const MAX_ERRORS: usize = 20;

/// `s` as an error may show it: at most `max` characters, with control characters escaped (so an
/// error stays one line) and, when cut, an ellipsis and the full length in bytes.
pub fn clip(s: &str, max: usize) -> Cow<'_, str> {
    if s.len() <= max && !s.chars().any(char::is_control) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(max.min(s.len()) + 32);
    for (n, c) in s.chars().enumerate() {
        if n == max {
            out.push_str(&format!("… ({} bytes)", s.len()));
            return Cow::Owned(out);
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// A value from the file as a message quotes it: clipped to `MAX_QUOTE_CHARS`.
pub fn quote(s: &str) -> Cow<'_, str> {
    clip(s, MAX_QUOTE_CHARS)
}

/// Maps byte offsets of one source text to line and column, and collects errors against it.
pub struct Sink<'a> {
    file: &'a Path,
    text: &'a str,
    /// The first `MAX_ERRORS` problems found.
    errors: Vec<ConfigError>,
    /// Every problem found, including those not kept.
    count: usize,
}

impl<'a> Sink<'a> {
    pub fn new(file: &'a Path, text: &'a str) -> Self {
        Sink {
            file,
            text,
            errors: Vec::new(),
            count: 0,
        }
    }

    /// How many problems were found so far (kept or only counted).
    pub fn count(&self) -> usize {
        self.count
    }

    /// The errors found, with a last line counting those beyond `MAX_ERRORS`.
    pub fn finish(mut self) -> ConfigErrors {
        if self.count > self.errors.len() {
            self.errors.push(ConfigError {
                file: self.file.to_path_buf(),
                line: 0,
                col: 0,
                field: String::new(),
                message: format!(
                    "{} more errors not shown (only the first {MAX_ERRORS} are reported)",
                    self.count - self.errors.len()
                ),
            });
        }
        ConfigErrors(self.errors)
    }

    /// 1-based (line, column) of a byte offset; columns count characters, as editors do.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..floor_char_boundary(self.text, offset)];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        (line, before[line_start..].chars().count() + 1)
    }

    /// Records an error at `span` (a byte range from `toml::Spanned`).
    pub fn push(
        &mut self,
        span: Range<usize>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.count += 1;
        if self.errors.len() == MAX_ERRORS {
            return;
        }
        let (line, col) = self.line_col(span.start);
        let (field, message) = (field.into(), message.into());
        self.errors.push(ConfigError {
            file: self.file.to_path_buf(),
            line,
            col,
            field: clip(&field, MAX_FIELD_CHARS).into_owned(),
            message: clip(&message, MAX_MESSAGE_CHARS).into_owned(),
        });
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}
