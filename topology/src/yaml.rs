//! A YAML document as a tree whose every node knows where it came from.
//!
//! serde deserializers stop at the first error and forget positions, but the topology file must be
//! checked whole, with every mistake pointing at `file:line:column`. So the text is read once by the
//! `saphyr-parser` event parser into this small spanned tree, and `schema` reads the tree.
//!
//! Deliberately unsupported, each with a clear error: several documents in one file, and anchors or
//! aliases (an alias can expand exponentially, and `defaults` already covers shared settings).

use saphyr_parser::{Event, Parser, ScalarStyle, ScanError};

/// A byte range in the source text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub fn new(start: usize, end: usize) -> Self {
        Span { start, end }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum NodeKind {
    /// A scalar as written. `plain` is false for quoted and block scalars: `"1"` is a string, `1` a number.
    Scalar {
        value: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    /// Keys in the order written; duplicate keys are refused while building.
    Map(Vec<(Node, Node)>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub kind: NodeKind,
    pub span: Span,
}

impl Node {
    /// A plain `~`, `null`, `Null`, `NULL` or empty scalar: YAML's null.
    pub fn is_null(&self) -> bool {
        matches!(&self.kind, NodeKind::Scalar { value, plain: true }
            if matches!(value.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    /// What the node is, for "expected X, found Y" messages.
    pub fn describe(&self) -> String {
        match &self.kind {
            _ if self.is_null() => "nothing (null)".into(),
            NodeKind::Scalar { value, plain: true } => format!("`{value}`"),
            NodeKind::Scalar {
                value,
                plain: false,
            } => format!("the quoted string \"{value}\""),
            NodeKind::Seq(_) => "a list".into(),
            NodeKind::Map(_) => "a mapping".into(),
        }
    }
}

/// Why the text is not a YAML document this tool reads.
#[derive(Debug, Clone, PartialEq)]
pub struct YamlError {
    pub message: String,
    pub span: Span,
    pub help: Option<String>,
    /// Where the first of two duplicate keys stands.
    pub first: Option<Span>,
}

/// Converts the parser's character positions into byte offsets.
struct Offsets<'a> {
    text: &'a str,
    /// Byte offset of each character, built only for non-ASCII text (ASCII maps one to one).
    char_starts: Option<Vec<usize>>,
}

impl<'a> Offsets<'a> {
    fn new(text: &'a str) -> Self {
        let char_starts =
            (!text.is_ascii()).then(|| text.char_indices().map(|(byte, _)| byte).collect());
        Offsets { text, char_starts }
    }

    fn byte(&self, char_index: usize) -> usize {
        match &self.char_starts {
            None => char_index.min(self.text.len()),
            Some(starts) => starts.get(char_index).copied().unwrap_or(self.text.len()),
        }
    }

    fn span(&self, span: saphyr_parser::Span) -> Span {
        Span::new(self.byte(span.start.index()), self.byte(span.end.index()))
    }
}

enum Frame {
    /// A sequence being built; the `usize` counts items handed to the streaming callback instead.
    Seq(Span, Vec<Node>, usize),
    /// A mapping being built; `pending` holds a key waiting for its value.
    Map(Span, Vec<(Node, Node)>, Option<Node>),
}

/// Parses `text` into one spanned tree. `Ok(None)` means the file holds no document at all.
pub fn parse(text: &str) -> Result<Option<Node>, YamlError> {
    parse_streaming(text, "", |_, _| {})
}

/// Like [`parse`], but each item of the list under the top-level key `key` is handed to
/// `on_item(index, item)` as soon as it is complete and not kept in the tree, so a file with
/// 100,000 servers never holds them all as nodes at once. That list stays empty in the tree.
pub fn parse_streaming(
    text: &str,
    key: &str,
    mut on_item: impl FnMut(usize, Node),
) -> Result<Option<Node>, YamlError> {
    let offsets = Offsets::new(text);
    let scan_error = |e: ScanError| {
        let at = offsets.byte(e.marker().index());
        YamlError {
            message: format!("invalid YAML: {}", e.info()),
            span: Span::new(at, at),
            help: Some(
                if e.info().contains("unknown escape character") {
                    // A Windows path in double quotes: `"C:\secrets\wsus.pw"`.
                    "in double quotes a backslash starts an escape: write a Windows path \
                     unquoted or in single quotes ('C:\\secrets\\wsus.pw'), or double each \
                     backslash"
                } else {
                    "check the indentation and quoting around this spot"
                }
                .into(),
            ),
            first: None,
        }
    };
    let mut stack: Vec<Frame> = Vec::new();
    let mut root: Option<Node> = None;
    let mut documents = 0usize;

    for event in Parser::new_from_str(text) {
        let (event, raw_span) = event.map_err(scan_error)?;
        let span = offsets.span(raw_span);
        let node = match event {
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    return Err(YamlError {
                        message: "a second YAML document starts here".into(),
                        span,
                        help: Some(
                            "a topology file holds exactly one document: remove the extra `---`"
                                .into(),
                        ),
                        first: None,
                    });
                }
                continue;
            }
            Event::Alias(_) => return Err(anchor_error(span)),
            Event::Scalar(_, _, anchor, _)
            | Event::SequenceStart(anchor, _)
            | Event::MappingStart(anchor, _)
                if anchor != 0 =>
            {
                return Err(anchor_error(span));
            }
            Event::Scalar(value, style, _, _) => Node {
                kind: NodeKind::Scalar {
                    value: value.into_owned(),
                    plain: style == ScalarStyle::Plain,
                },
                span,
            },
            Event::SequenceStart(..) => {
                stack.push(Frame::Seq(span, Vec::new(), 0));
                continue;
            }
            Event::MappingStart(..) => {
                stack.push(Frame::Map(span, Vec::new(), None));
                continue;
            }
            Event::SequenceEnd | Event::MappingEnd => match stack.pop() {
                Some(Frame::Seq(start, items, _)) => Node {
                    kind: NodeKind::Seq(items),
                    span: Span::new(start.start, span.end.max(start.end)),
                },
                Some(Frame::Map(start, entries, _)) => Node {
                    kind: NodeKind::Map(entries),
                    span: Span::new(start.start, span.end.max(start.end)),
                },
                None => continue,
            },
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => continue,
        };
        let streamed = stack.len() == 2
            && matches!(&stack[0], Frame::Map(_, _, Some(Node { kind: NodeKind::Scalar { value, .. }, .. }))
                if value == key);
        match stack.last_mut() {
            None => root = Some(node),
            Some(Frame::Seq(_, _, count)) if streamed => {
                on_item(*count, node);
                *count += 1;
            }
            Some(Frame::Seq(_, items, _)) => items.push(node),
            Some(Frame::Map(_, entries, pending)) => match pending.take() {
                None => {
                    if let NodeKind::Scalar { value, .. } = &node.kind
                        && let Some((first, _)) = entries.iter().find(|(k, _)| {
                            matches!(&k.kind, NodeKind::Scalar { value: v, .. } if v == value)
                        })
                    {
                        return Err(YamlError {
                            message: format!("duplicate key `{value}`"),
                            span: node.span,
                            help: Some("keep only one of them".into()),
                            first: Some(first.span),
                        });
                    }
                    *pending = Some(node);
                }
                Some(key) => entries.push((key, node)),
            },
        }
    }
    Ok(root)
}

fn anchor_error(span: Span) -> YamlError {
    YamlError {
        message: "YAML anchors and aliases are not supported".into(),
        span,
        help: Some("write the value out, or put shared SQL settings under `defaults.sql`".into()),
        first: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scalar(node: &Node) -> &str {
        match &node.kind {
            NodeKind::Scalar { value, .. } => value,
            other => panic!("not a scalar: {other:?}"),
        }
    }

    #[test]
    fn spans_are_byte_offsets_of_the_source() {
        let text = "a: 1\nbé: [x, \"y\"]\n";
        let root = parse(text).unwrap().unwrap();
        let NodeKind::Map(entries) = &root.kind else {
            panic!()
        };
        let (key, value) = &entries[1];
        assert_eq!(&text[key.span.start..key.span.end], "bé");
        let NodeKind::Seq(items) = &value.kind else {
            panic!()
        };
        assert_eq!(&text[items[0].span.start..items[0].span.end], "x");
        assert_eq!(scalar(&items[1]), "y");
        assert!(matches!(
            items[1].kind,
            NodeKind::Scalar { plain: false, .. }
        ));
    }

    #[test]
    fn streamed_items_are_handed_over_in_order_and_not_kept() {
        let text = "servers:\n  - a\n  - [b]\nother: [c]\n";
        let mut seen = Vec::new();
        let root = parse_streaming(text, "servers", |i, node| seen.push((i, node)))
            .unwrap()
            .unwrap();
        assert_eq!(seen.len(), 2);
        assert_eq!((seen[0].0, scalar(&seen[0].1)), (0, "a"));
        assert!(matches!(&seen[1].1.kind, NodeKind::Seq(items) if items.len() == 1));
        let NodeKind::Map(entries) = &root.kind else {
            panic!()
        };
        assert!(matches!(&entries[0].1.kind, NodeKind::Seq(items) if items.is_empty()));
        assert!(matches!(&entries[1].1.kind, NodeKind::Seq(items) if items.len() == 1));
    }

    #[test]
    fn empty_text_has_no_document() {
        assert_eq!(parse("").unwrap(), None);
        assert_eq!(parse("# only a comment\n").unwrap(), None);
    }

    #[test]
    fn duplicate_keys_are_refused() {
        let err = parse("a: 1\nb: 2\na: 3\n").unwrap_err();
        assert_eq!(err.message, "duplicate key `a`");
        assert_eq!(err.span.start, 10);
    }

    #[test]
    fn aliases_and_second_documents_are_refused() {
        assert!(
            parse("a: &x 1\nb: *x\n")
                .unwrap_err()
                .message
                .contains("anchors")
        );
        assert!(
            parse("a: 1\n---\nb: 2\n")
                .unwrap_err()
                .message
                .contains("second YAML document")
        );
    }

    #[test]
    fn syntax_errors_carry_a_position() {
        let err = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(err.message.starts_with("invalid YAML"), "{}", err.message);
    }
}
