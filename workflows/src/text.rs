//! Text a server sent, made safe to show: a registered name, an error message, a value read back
//! from a hand-edited plan. None of it is trusted to be printable.

/// Text a server sent (a registered name, an error) made safe to print: control characters (C0,
/// DEL, C1 such as ESC, BEL and the CSI/OSC introducers) and the bidirectional overrides shown as
/// `\u{..}` escapes, so that none reaches the terminal as a command; at most `max` characters,
/// then `...` and how many more.
pub fn printable(text: &str, max: usize) -> String {
    let mut out = String::new();
    for (n, c) in text.chars().enumerate() {
        if n == max {
            let rest = text.chars().count() - max;
            out.push_str(&format!("... ({rest} more characters)"));
            break;
        }
        if c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}') {
            out.push_str(&c.escape_unicode().to_string());
        } else {
            out.push(c);
        }
    }
    out
}

/// [`printable`] for a Markdown table's cell: `|` escaped too.
pub fn markdown_cell(text: &str, max: usize) -> String {
    printable(text, max).replace('|', "\\|")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_from_a_server_reaches_no_terminal_as_a_command_and_is_cut() {
        let hostile = "ra\u{1b}]0;pwned\u{7}\u{1b}[2J|x\u{202e}";
        let shown = printable(hostile, 200);
        assert!(!shown.chars().any(char::is_control), "{shown}");
        assert!(shown.contains("\\u{1b}]0;pwned\\u{7}"), "{shown}");
        assert!(!markdown_cell(hostile, 200).contains("J|x"));
        assert_eq!(markdown_cell("a|b", 10), "a\\|b");
        let long = "x".repeat(40_000);
        assert_eq!(
            printable(&long, 100),
            format!("{}... (39900 more characters)", "x".repeat(100))
        );
    }
}
