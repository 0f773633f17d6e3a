//! Typed configuration errors that point at the offending line, column and field.
//!
//! Invariants: every error carries the file it came from and a 1-based line and column (0 when the
//! source has no position, e.g. the file could not be read); the `Display` form is the compiler-style
//! `FILE:LINE:COL: field: message` that `flipgate check` prints and reload logs carry.

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
        write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.col)?;
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

/// Maps byte offsets of one source text to line and column, and collects errors against it.
pub struct Sink<'a> {
    file: &'a Path,
    text: &'a str,
    /// Problems found so far.
    pub errors: Vec<ConfigError>,
}

impl<'a> Sink<'a> {
    pub fn new(file: &'a Path, text: &'a str) -> Self {
        Sink {
            file,
            text,
            errors: Vec::new(),
        }
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
        let (line, col) = self.line_col(span.start);
        self.errors.push(ConfigError {
            file: self.file.to_path_buf(),
            line,
            col,
            field: field.into(),
            message: message.into(),
        });
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}
