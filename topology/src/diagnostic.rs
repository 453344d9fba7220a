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
    let shown = ShownSource::new(source);
    let source = shown.text.as_str();
    let file = SimpleFile::new(file_name, source);
    let config = Config {
        chars: Chars::ascii(),
        ..Config::default()
    };
    let mut out = String::new();
    for diagnostic in diagnostics {
        let clamp = |span: Span| {
            let (start, end) = (shown.map(span.start), shown.map(span.end));
            let start = floor_char_boundary(source, start.min(source.len()));
            let end = floor_char_boundary(source, end.clamp(start, source.len()));
            start..end
        };
        // A caret under one line reads better than a bracket around a whole mapping.
        let primary = clamp(diagnostic.span);
        let first_line_end = source[primary.clone()]
            .find('\n')
            .map_or(primary.end, |k| primary.start + k);
        let mut labels = vec![Label::primary((), primary.start..first_line_end)];
        labels.extend(diagnostic.related.iter().map(|(span, note)| {
            Label::secondary((), clamp(*span)).with_message(shorten_quoted(note))
        }));
        let mut notes = Vec::new();
        if !diagnostic.path.is_empty() {
            notes.push(format!("field: {}", shorten_quoted(&diagnostic.path)));
        }
        if let Some(help) = &diagnostic.help {
            notes.push(format!("help: {}", shorten_quoted(help)));
        }
        let report = Report::error()
            .with_message(shorten_quoted(&diagnostic.message))
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

/// The longest source line shown, and the longest quoted value in a message: a file with a
/// 50 MB name must not give 50 MB of error output per mention.
const SHOWN_LINE_BYTES: usize = 240;
const SHOWN_VALUE_CHARS: usize = 60;

/// The source as shown: every line cut to [`SHOWN_LINE_BYTES`] (with `...`), and how byte offsets
/// of the original map into it.
struct ShownSource {
    text: String,
    /// Per line: (its start in the original, its start in `text`, the bytes kept).
    lines: Vec<(usize, usize, usize)>,
}

impl ShownSource {
    fn new(source: &str) -> ShownSource {
        let mut text = String::with_capacity(source.len().min(1 << 20));
        let mut lines = Vec::new();
        let mut at = 0;
        for line in source.split_inclusive('\n') {
            let body = line.trim_end_matches(['\n', '\r']);
            let kept = if body.len() > SHOWN_LINE_BYTES {
                floor_char_boundary(body, SHOWN_LINE_BYTES)
            } else {
                line.len()
            };
            lines.push((at, text.len(), kept));
            text.push_str(&line[..kept]);
            if kept < line.len() {
                text.push_str("...\n");
            }
            at += line.len();
        }
        ShownSource { text, lines }
    }

    /// Where an offset of the original lands in the shown text (the end of a cut line for an
    /// offset in its cut part).
    fn map(&self, offset: usize) -> usize {
        let k = self.lines.partition_point(|&(start, _, _)| start <= offset);
        match k.checked_sub(1).and_then(|k| self.lines.get(k)) {
            Some(&(start, shown, kept)) => shown + (offset - start).min(kept),
            None => 0,
        }
    }
}

/// Every `quoted` value of a message cut to [`SHOWN_VALUE_CHARS`] characters, saying how long it
/// was.
pub fn shorten_quoted(text: &str) -> String {
    let parts: Vec<&str> = text.split('`').collect();
    // An odd number of parts: every backtick is paired.
    let paired = parts.len() % 2 == 1;
    let mut out = String::with_capacity(text.len().min(1024));
    for (i, part) in parts.iter().enumerate() {
        let inside = i % 2 == 1 && (paired || i + 1 < parts.len());
        if !inside {
            if i > 0 && i % 2 == 1 {
                out.push('`');
            }
            out.push_str(part);
            continue;
        }
        let chars = part.chars().count();
        if chars > SHOWN_VALUE_CHARS {
            out.push('`');
            out.extend(part.chars().take(SHOWN_VALUE_CHARS));
            out.push_str(&format!("...` ({chars} characters)"));
        } else {
            out.push('`');
            out.push_str(part);
            out.push('`');
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

/// Where the value of a secret-looking key begins on this line, if the line has one: any key
/// whose name holds `pass`, `pasw`, `psw`, `pwd` or `secret` (`password`, a misspelt `pasword`, `passwd`,
/// `password_env`, whose value may be the password itself put in the wrong place).
fn password_value_start(line: &str) -> Option<usize> {
    let lower = line.to_ascii_lowercase();
    let bytes = lower.as_bytes();
    for (colon, _) in lower.match_indices(':') {
        // The key: the word before the colon, past an optional closing quote.
        let mut end = colon;
        while end > 0 && matches!(bytes[end - 1], b'"' | b'\'' | b' ') {
            end -= 1;
        }
        let mut start = end;
        while start > 0
            && (bytes[start - 1].is_ascii_alphanumeric() || matches!(bytes[start - 1], b'_' | b'-'))
        {
            start -= 1;
        }
        let key = &lower[start..end];
        if ["pass", "pasw", "psw", "pwd", "secret"]
            .iter()
            .any(|w| key.contains(w))
        {
            return Some(colon + 1);
        }
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
        // The value of `password_env` may be the password put in the wrong place.
        assert!(redacted.contains("password_env: **\n"));
    }

    #[test]
    fn misspelt_secret_keys_are_masked_too() {
        for key in [
            "pasword",
            "passwd",
            "pwd",
            "secret",
            "db_pass",
            "Client-Secret",
        ] {
            let text = format!("auth: {{ user: u, {key}: hunter2 }}\n");
            let redacted = redact_passwords(&text);
            assert!(!redacted.contains("hunter2"), "{key}: {redacted}");
            assert_eq!(redacted.len(), text.len());
        }
        assert_eq!(redact_passwords("user: passive\n"), "user: passive\n");
    }

    #[test]
    fn a_huge_value_is_shown_cut_in_the_message_and_the_source_line() {
        let name = "a".repeat(100_000);
        let source = format!("servers:\n  - name: x\n    upstream: {name}\n");
        let at = source.find(&name).unwrap_or(0);
        let d = Diagnostic::new(
            format!("upstream `{name}` is not a server in this file"),
            Span {
                start: at,
                end: at + name.len(),
            },
            "servers[0].upstream",
        );
        let text = render("t.yaml", &source, &[d]);
        assert!(text.len() < 2_000, "{} bytes of output", text.len());
        assert!(
            text.contains("... (100000 characters)") || text.contains("...` (100000 characters)"),
            "{text}"
        );
        assert_eq!(
            shorten_quoted("a `b` c `d"),
            "a `b` c `d",
            "short and unpaired quotes are left alone"
        );
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
