//! Errors in a topology file, each pointing at the spot in the source, and their rendering.

use codespan_reporting::diagnostic::{Diagnostic as Report, Label};
use codespan_reporting::files::SimpleFile;
use codespan_reporting::term::{self, Chars, Config};

use crate::yaml::Span;

/// One mistake in a topology file.
#[derive(Debug, Clone, PartialEq)]
pub struct Diagnostic {
    /// What is wrong, as a lowercase sentence fragment.
    pub message: String,
    /// Where: the caret goes under this range.
    pub span: Span,
    /// The field path, e.g. `servers[3].upstream`; empty for the document itself.
    pub path: String,
    /// How to fix it.
    pub help: Option<String>,
    /// Other places that explain the error (e.g. the first of two duplicate names).
    pub related: Vec<(Span, String)>,
}

impl Diagnostic {
    pub fn new(message: impl Into<String>, span: Span, path: impl Into<String>) -> Self {
        Diagnostic {
            message: message.into(),
            span,
            path: path.into(),
            help: None,
            related: Vec::new(),
        }
    }

    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    pub fn related(mut self, span: Span, note: impl Into<String>) -> Self {
        self.related.push((span, note.into()));
        self
    }
}

/// Renders diagnostics the way compilers do: `error: …`, `--> file:line:column`, the source line
/// and a caret under the spot, then the field path and the fix.
///
/// `source` must already be redacted (see [`redact_passwords`]): it is printed as is.
pub fn render(file_name: &str, source: &str, diagnostics: &[Diagnostic]) -> String {
    let file = SimpleFile::new(file_name, source);
    let config = Config {
        chars: Chars::ascii(),
        ..Config::default()
    };
    let mut out = String::new();
    for diagnostic in diagnostics {
        let clamp = |span: Span| {
            let start = floor_char_boundary(source, span.start.min(source.len()));
            let end = floor_char_boundary(source, span.end.clamp(start, source.len()));
            start..end
        };
        // A caret under one line reads better than a bracket around a whole mapping.
        let primary = clamp(diagnostic.span);
        let first_line_end = source[primary.clone()]
            .find('\n')
            .map_or(primary.end, |k| primary.start + k);
        let mut labels = vec![Label::primary((), primary.start..first_line_end)];
        labels.extend(
            diagnostic
                .related
                .iter()
                .map(|(span, note)| Label::secondary((), clamp(*span)).with_message(note)),
        );
        let mut notes = Vec::new();
        if !diagnostic.path.is_empty() {
            notes.push(format!("field: {}", diagnostic.path));
        }
        if let Some(help) = &diagnostic.help {
            notes.push(format!("help: {help}"));
        }
        let report = Report::error()
            .with_message(&diagnostic.message)
            .with_labels(labels)
            .with_notes(notes);
        match term::emit_into_string(&config, &file, &report) {
            Ok(text) => out.push_str(&text),
            // Only reachable with a span outside the file, which `clamp` prevents; keep the message.
            Err(_) => out.push_str(&format!("error: {}\n", diagnostic.message)),
        }
    }
    out
}

fn floor_char_boundary(text: &str, mut index: usize) -> usize {
    while !text.is_char_boundary(index) {
        index -= 1;
    }
    index
}

/// Masks the value of every `password:` key with `*`, keeping every byte offset unchanged, so that
/// no error message can echo a secret someone wrote inline. It works on lines rather than on the
/// parsed tree because a file with a YAML syntax error has no tree.
pub fn redact_passwords(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    for line in source.split_inclusive('\n') {
        match password_value_start(line) {
            None => out.push_str(line),
            Some(start) => {
                out.push_str(&line[..start]);
                let rest = &line[start..];
                let body = rest.trim_end_matches(['\n', '\r']);
                // One `*` per byte keeps the offsets of everything after the line intact.
                out.extend(body.bytes().map(|b| if b == b' ' { ' ' } else { '*' }));
                out.push_str(&rest[body.len()..]);
            }
        }
    }
    out
}

/// Where the value of a `password` key begins on this line, if the line has one.
fn password_value_start(line: &str) -> Option<usize> {
    let lower = line.to_ascii_lowercase();
    let mut from = 0;
    while let Some(found) = lower[from..].find("password") {
        let at = from + found;
        let before_ok = lower[..at]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'));
        let after = &lower[at + "password".len()..];
        let after_key = after.trim_start_matches(['"', '\'']).trim_start();
        if before_ok && after_key.starts_with(':') {
            return Some(line.len() - after_key.len() + 1);
        }
        from = at + "password".len();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_password_values_are_masked_in_place() {
        let text = "auth:\n  user: u\n  password: hunter2\n  password_env: PW\n";
        let redacted = redact_passwords(text);
        assert_eq!(redacted.len(), text.len());
        assert!(!redacted.contains("hunter2"));
        assert!(redacted.contains("password: *******\n"));
        assert!(redacted.contains("password_env: PW"));
    }

    #[test]
    fn flow_style_and_quoted_keys_are_masked() {
        let redacted = redact_passwords("auth: {user: u, \"Password\": 's3cr3t'}\r\n");
        assert!(!redacted.contains("s3cr3t"));
        assert!(redacted.ends_with("\r\n"));
    }

    #[test]
    fn rendering_points_at_line_and_column() {
        let source = "version: 1\nservers:\n  - name: a\n    upstrem: b\n";
        let at = source.find("upstrem").unwrap();
        let diagnostic = Diagnostic::new(
            "unknown field `upstrem`",
            Span::new(at, at + 7),
            "servers[0].upstrem",
        )
        .help("did you mean `upstream`?");
        let text = render("t.yaml", source, &[diagnostic]);
        assert!(text.contains("error: unknown field `upstrem`"), "{text}");
        assert!(text.contains("t.yaml:4:5"), "{text}");
        assert!(text.contains("^^^^^^^"), "{text}");
        assert!(text.contains("field: servers[0].upstrem"), "{text}");
        assert!(text.contains("help: did you mean `upstream`?"), "{text}");
    }
}
