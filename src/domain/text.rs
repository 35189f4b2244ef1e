//! Text that came from outside (a publisher, TapTalk, a dead letter): which
//! characters may be stored and shown as they are, and how to show text
//! that holds others.
//!
//! Control characters (C0, DEL, C1) drive terminals: an escape sequence in a
//! header can clear an operator's screen and print a line of its own.
//! Unicode's invisible format characters do quieter harm: U+202E (right-to-left
//! override) reverses what follows, U+200B (zero-width space) makes two
//! different ids look the same. Neither belongs in an id, a ticket or a line
//! an operator reads. [`is_unsafe`] names them all; [`printable`] writes any
//! text so that it shows what it holds, one line, with those characters as
//! `\u{…}` escapes.

use std::fmt::Write;

/// Whether `c` must not be stored in an id or a credential nor shown raw:
/// a control character (general category Cc), an invisible format character
/// (Cf) or a line or paragraph separator (Zl, Zp).
pub fn is_unsafe(c: char) -> bool {
    c.is_control() || is_format(c) || matches!(c, '\u{2028}' | '\u{2029}')
}

/// Unicode's general category Cf (format), as of Unicode 15.1.
fn is_format(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{0600}'..='\u{0605}'
            | '\u{061C}'
            | '\u{06DD}'
            | '\u{070F}'
            | '\u{0890}'..='\u{0891}'
            | '\u{08E2}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{206F}'
            | '\u{FEFF}'
            | '\u{FFF9}'..='\u{FFFB}'
            | '\u{110BD}'
            | '\u{110CD}'
            | '\u{13430}'..='\u{1343F}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0001}'
            | '\u{E0020}'..='\u{E007F}'
    )
}

/// `text` as one line that shows what it holds: every [`is_unsafe`]
/// character, and the backslash that starts an escape, written as an escape
/// (`\u{1b}`, `\\`), at most `max_chars` characters of it, then `…`.
pub fn printable(text: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max_chars.saturating_mul(4)));
    for (shown, c) in text.chars().enumerate() {
        if shown >= max_chars {
            out.push('…');
            break;
        }
        match c {
            '\\' => out.push_str("\\\\"),
            c if is_unsafe(c) => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out
}

/// JSON text (as `serde_json` writes it) with every [`is_unsafe`] character
/// that it leaves raw (it escapes only C0 controls, `"` and `\`) written as a
/// `\uXXXX` escape, so that JSON printed to a terminal cannot drive it. Still
/// the same JSON: such characters only occur inside strings.
pub fn json_printable(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if is_unsafe(c) && !c.is_ascii() || c == '\u{7f}' {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                let _ = write!(out, "\\u{:04x}", unit);
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_and_invisible_formats_are_unsafe() {
        for c in [
            '\u{0}',
            '\n',
            '\u{1b}',
            '\u{7f}',
            '\u{9b}',
            '\u{200b}',
            '\u{202e}',
            '\u{2066}',
            '\u{feff}',
            '\u{2028}',
            '\u{e0041}',
            '\u{ad}',
        ] {
            assert!(is_unsafe(c), "{:x}", u32::from(c));
        }
        for c in ['a', 'é', 'ß', '中', '😀', ' ', '-', '\u{a0}'] {
            assert!(!is_unsafe(c), "{c}");
        }
    }

    #[test]
    fn printable_text_shows_escapes_instead_of_running_them() {
        let hostile = "ok\u{1b}[2J\u{1b}[HALL CLEAR\r\n\u{202e}txet";
        let shown = printable(hostile, 200);
        assert_eq!(
            shown,
            "ok\\u{1b}[2J\\u{1b}[HALL CLEAR\\u{d}\\u{a}\\u{202e}txet"
        );
        assert!(!shown.chars().any(is_unsafe));
        assert_eq!(
            printable("a\\u{1b}", 10),
            "a\\\\u{1b}",
            "a backslash is escaped too"
        );
        assert_eq!(printable("abcdef", 3), "abc…");
    }

    #[test]
    fn json_stays_json_but_loses_raw_unsafe_characters() {
        let json = serde_json::json!({"e": "a\u{9b}2J\u{202e}b\u{7f}😀\n"}).to_string();
        let shown = json_printable(&json);
        assert!(!shown.chars().any(is_unsafe), "{shown}");
        let back: serde_json::Value = serde_json::from_str(&shown).expect("still JSON");
        assert_eq!(back["e"], "a\u{9b}2J\u{202e}b\u{7f}😀\n");
    }
}
