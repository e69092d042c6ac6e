//! Showing untrusted bytes (keys, owners) in one-line messages.

use core::fmt::Write;

enum Piece {
    Char(char),
    Byte(u8),
}

/// `bytes` as one line of text for a denial reason or a log: printable
/// UTF-8 as is, control characters escaped (`\n`, `\u{7f}`), invalid UTF-8 as
/// `\xNN`, cut after `max_chars` characters with `...`.
pub fn show(bytes: &[u8], max_chars: usize) -> String {
    let mut out = String::new();
    let mut n = 0;
    for chunk in bytes.utf8_chunks() {
        let pieces = chunk
            .valid()
            .chars()
            .map(Piece::Char)
            .chain(chunk.invalid().iter().map(|&b| Piece::Byte(b)));
        for piece in pieces {
            if n == max_chars {
                out.push_str("...");
                return out;
            }
            n += 1;
            match piece {
                Piece::Char(c) if c.is_control() => out.extend(c.escape_default()),
                Piece::Char(c) => out.push(c),
                Piece::Byte(b) => {
                    let _ = write!(out, "\\x{b:02x}");
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::show;

    #[test]
    fn printable_text_is_kept() {
        assert_eq!(show(b"orders:42", 64), "orders:42");
        assert_eq!(show("clé".as_bytes(), 64), "clé");
    }

    #[test]
    fn control_and_invalid_bytes_are_escaped() {
        assert_eq!(show(b"a\r\nb", 64), "a\\r\\nb");
        assert_eq!(show(b"x\xff\xfey", 64), "x\\xff\\xfey");
    }

    #[test]
    fn long_text_is_cut() {
        assert_eq!(show(b"abcdef", 3), "abc...");
        assert_eq!(show(b"\xff\xff\xff\xff", 2), "\\xff\\xff...");
        assert_eq!(show(b"abc", 3), "abc");
    }
}
