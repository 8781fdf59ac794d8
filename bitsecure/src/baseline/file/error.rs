//! [`BaselineError`], the one error of reading, checking and writing a baseline file, and where
//! in the text a problem is: 1-based line and column of a byte offset, the TOML parser's errors
//! mapped to them.
//!
//! Error values and their messages only: what is checked is in `validate`, no I/O here.

use std::{io, path::PathBuf};

/// Errors reading, validating and writing baseline files. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum BaselineError {
    /// The file cannot be read.
    #[error("{origin}: cannot read the baseline file: {error}")]
    Read {
        /// The file.
        origin: String,
        /// What the system said.
        error: io::Error,
    },
    /// The file is larger than [`MAX_FILE_BYTES`](super::MAX_FILE_BYTES).
    #[error(
        "{origin}: the file is {size} bytes, more than the {limit} bytes a baseline file may \
         have: is it the right file?"
    )]
    TooLarge {
        /// The file.
        origin: String,
        /// Its size (at least), in bytes.
        size: u64,
        /// [`MAX_FILE_BYTES`](super::MAX_FILE_BYTES).
        limit: u64,
    },
    /// The file is not UTF-8 text.
    #[error(
        "{origin}, line {line}: not UTF-8 text (invalid byte at offset {offset}); a baseline \
         file must be UTF-8 TOML"
    )]
    NotUtf8 {
        /// The file.
        origin: String,
        /// Line of the first invalid byte (1-based).
        line: usize,
        /// Offset of the first invalid byte in the file.
        offset: usize,
    },
    /// Corrupt TOML, an unknown key, a missing key or a value of the wrong type.
    #[error("{origin}{}: {message}", at(.line, .column))]
    Toml {
        /// The file.
        origin: String,
        /// Line of the problem (1-based), when known.
        line: Option<usize>,
        /// Column of the problem (1-based, in characters), when known.
        column: Option<usize>,
        /// The parser's message.
        message: String,
    },
    /// The file was written by a newer BitSecure.
    #[error(
        "{origin}: written by a newer BitSecure (format {found}, this one reads up to \
         {supported}): upgrade BitSecure to use this baseline"
    )]
    NewerFormat {
        /// The file.
        origin: String,
        /// Its `format_version`.
        found: i64,
        /// [`FORMAT_VERSION`](crate::baseline::model::FORMAT_VERSION).
        supported: u32,
    },
    /// `format_version` is missing or not a valid version.
    #[error("{origin}{}: {problem}", at(.line, &None))]
    Version {
        /// The file.
        origin: String,
        /// Line of `format_version`, when present.
        line: Option<usize>,
        /// What is wrong.
        problem: String,
    },
    /// A value of `[recording]` is invalid.
    #[error("{origin}{}: [recording]: {problem}", at(.line, &None))]
    Recording {
        /// The file.
        origin: String,
        /// Line of the value, when known.
        line: Option<usize>,
        /// What is wrong.
        problem: String,
    },
    /// A value of a rule is invalid.
    #[error("{origin}{}: rule {index} ({rule}): {problem}", at(.line, &None))]
    Rule {
        /// The file.
        origin: String,
        /// Line of the value (or of the rule), when known.
        line: Option<usize>,
        /// Position of the rule in the file, 1 = the first `[[rule]]`.
        index: usize,
        /// [`Rule::describe`](crate::baseline::model::Rule::describe).
        rule: String,
        /// What is wrong.
        problem: String,
    },
    /// A value of a `[[packet_socket]]` table is invalid, or two say the same.
    #[error("{origin}{}: packet_socket {index}: {problem}", at(.line, &None))]
    PacketSocket {
        /// The file.
        origin: String,
        /// Line of the value (or of the table), when known.
        line: Option<usize>,
        /// Position of the table in the file, 1 = the first `[[packet_socket]]`.
        index: usize,
        /// What is wrong.
        problem: String,
    },
    /// Two rules of a file have the same identity.
    #[error(
        "{origin}{}: rule {index} ({rule}) has the same process, remote, port, protocol and app \
         as rule {first}: merge them",
        at(.line, &None)
    )]
    DuplicateRule {
        /// The file.
        origin: String,
        /// Line of the second rule, when known.
        line: Option<usize>,
        /// Position of the second rule (1-based).
        index: usize,
        /// Position of the first rule (1-based).
        first: usize,
        /// [`Rule::describe`](crate::baseline::model::Rule::describe) of the second rule.
        rule: String,
    },
    /// [`append_rules`](super::append_rules) was asked to add a rule whose identity is already in
    /// the file.
    #[error(
        "{origin}: rule {rule} is already in the baseline (rule {existing}): not adding it twice"
    )]
    AlreadyPresent {
        /// The file.
        origin: String,
        /// [`Rule::describe`](crate::baseline::model::Rule::describe) of the rule to add.
        rule: String,
        /// Position of the rule already there (1-based; counting the rules being added).
        existing: usize,
    },
    /// [`append_rules`](super::append_rules) cannot edit the file.
    #[error("{origin}: cannot add rules: {problem}")]
    Edit {
        /// The file.
        origin: String,
        /// Why.
        problem: String,
    },
    /// [`append_rules`](super::append_rules) would have produced an invalid file (a bug): nothing
    /// was changed.
    #[error(
        "{origin}: refusing to add the rules, the result would not be a valid baseline: {error}"
    )]
    EditInvalid {
        /// The file.
        origin: String,
        /// What is wrong with the result.
        error: Box<BaselineError>,
    },
    /// Writing failed; the previous version of the file is intact.
    #[error("{}: cannot {action}: {error}", .path.display())]
    Write {
        /// The file being written.
        path: PathBuf,
        /// The step that failed.
        action: String,
        /// What the system said.
        error: io::Error,
    },
}

/// `, line L, column C` (or less when unknown), for error messages.
fn at(line: &Option<usize>, column: &Option<usize>) -> String {
    match (line, column) {
        (Some(line), Some(column)) => format!(", line {line}, column {column}"),
        (Some(line), None) => format!(", line {line}"),
        (None, _) => String::new(),
    }
}

/// A TOML parser error, placed at its line and column of `text`.
pub(super) fn toml_error(text: &str, origin: &str, error: &toml::de::Error) -> BaselineError {
    match error.span() {
        Some(span) => {
            let (line, column) = line_column(text, span.start);
            BaselineError::Toml {
                origin: origin.to_owned(),
                line: Some(line),
                column: Some(column),
                message: error.message().trim_end().to_owned(),
            }
        }
        // Without a span, the full text is the best there is (it names the line if known).
        None => BaselineError::Toml {
            origin: origin.to_owned(),
            line: None,
            column: None,
            message: error.to_string().trim_end().to_owned(),
        },
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub(super) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.as_bytes().get(..offset).unwrap_or_default();
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |newline| newline + 1);
    let column = text
        .get(line_start..offset)
        .map_or(offset - line_start, |s| s.chars().count())
        + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use crate::baseline::{
        file::BaselineError,
        test_support::{parse_error, with_rule},
    };

    #[test]
    fn an_unknown_field_is_named_with_its_line() {
        let text = with_rule(
            "process = \"xmrig\"\nremote = \"*\"\nprotocol = \"tcp\"\ncolour = \"red\"\n",
        );
        let error = parse_error(&text);
        assert!(
            matches!(&error, BaselineError::Toml { line: Some(7), column: Some(1), message, .. }
                if message.contains("unknown field `colour`")),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(
            message.starts_with("test.toml, line 7, column 1: unknown field `colour`"),
            "{message}"
        );

        // In a nested table too.
        let text = with_rule(
            "process = \"x\"\nremote = \"*\"\nprotocol = \"tcp\"\n[rule.normal]\n\
             sent_bytes_per_second = { mean = 1.0, p95 = 1.0, max = 1.0, median = 1.0 }\n",
        );
        let message = parse_error(&text).to_string();
        assert!(message.contains("line 8"), "{message}");
        assert!(message.contains("unknown field `median`"), "{message}");
    }

    #[test]
    fn a_wrong_type_is_named_with_its_line() {
        let text =
            with_rule("process = \"xmrig\"\nremote = \"*\"\nport = \"3333\"\nprotocol = \"tcp\"\n");
        let error = parse_error(&text);
        assert!(
            matches!(error, BaselineError::Toml { line: Some(6), .. }),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(
            message.starts_with("test.toml, line 6, column 8: invalid type"),
            "{message}"
        );

        // A port out of range is a type error too.
        let text =
            with_rule("process = \"xmrig\"\nremote = \"*\"\nport = 70000\nprotocol = \"tcp\"\n");
        assert!(matches!(
            parse_error(&text),
            BaselineError::Toml { line: Some(6), .. }
        ));

        // A missing key names the table it is missing from.
        let text = with_rule("process = \"xmrig\"\nprotocol = \"tcp\"\n");
        let message = parse_error(&text).to_string();
        assert!(
            message.contains("line 3") && message.contains("missing field `remote`"),
            "{message}"
        );
    }

    #[test]
    fn corrupt_toml_is_named_with_its_line() {
        let error = parse_error("format_version = 1\n\n[[rule]\nprocess = \"x\"\n");
        assert!(
            matches!(error, BaselineError::Toml { line: Some(3), .. }),
            "{error:?}"
        );
        assert!(
            error.to_string().starts_with("test.toml, line 3"),
            "{error}"
        );

        let error = parse_error("format_version = 1\nhost = \"unterminated\n");
        assert!(
            matches!(error, BaselineError::Toml { line: Some(2), .. }),
            "{error:?}"
        );
    }
}
