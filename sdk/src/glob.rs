//! Redis-style glob matching (`*`, `?`, `[abc]`, `[^a-z]`, `\x`), binary-safe.
//!
//! Used by the host for `LOCK.POLICY LOAD ... KEYS glob` and `LOCK.LIST MATCH`,
//! and by policies such as `key-pattern`, so that a glob means the same thing
//! everywhere. The matcher runs in O(pattern × subject) time in the worst case
//! (no exponential backtracking): only the most recent `*` is ever revisited.

/// Does `subject` match the glob `pattern`?
pub fn glob_match(pattern: &[u8], subject: &[u8]) -> bool {
    let (mut p, mut s) = (0usize, 0usize);
    // Where to resume after the most recent `*`: (pattern index after the star,
    // subject index the star currently extends to).
    let mut star: Option<(usize, usize)> = None;
    while s < subject.len() {
        if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    while p < pattern.len() && pattern[p] == b'*' {
                        p += 1;
                    }
                    if p == pattern.len() {
                        return true;
                    }
                    star = Some((p, s));
                    continue;
                }
                b'?' => {
                    p += 1;
                    s += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, next)) = class_match(pattern, p, subject[s]) {
                        if matched {
                            p = next;
                            s += 1;
                            continue;
                        }
                    } else if subject[s] == b'[' {
                        // An unterminated class matches a literal '['.
                        p += 1;
                        s += 1;
                        continue;
                    }
                }
                b'\\' if p + 1 < pattern.len() => {
                    if pattern[p + 1] == subject[s] {
                        p += 2;
                        s += 1;
                        continue;
                    }
                }
                c => {
                    if c == subject[s] {
                        p += 1;
                        s += 1;
                        continue;
                    }
                }
            }
        }
        // Mismatch: let the last star swallow one more byte, or fail.
        match star {
            Some((sp, ss)) => {
                p = sp;
                s = ss + 1;
                star = Some((sp, ss + 1));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Matches byte `c` against the class starting at `pattern[open] == b'['`.
/// Returns whether it matched and the index after the closing `]`, or `None`
/// when the class is not terminated.
fn class_match(pattern: &[u8], open: usize, c: u8) -> Option<(bool, usize)> {
    let mut i = open + 1;
    let negate = pattern.get(i) == Some(&b'^');
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let b = *pattern.get(i)?;
        if b == b']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        if b == b'\\' && i + 1 < pattern.len() {
            matched |= pattern[i + 1] == c;
            i += 2;
        } else if i + 2 < pattern.len() && pattern[i + 1] == b'-' && pattern[i + 2] != b']' {
            let (lo, hi) = if b <= pattern[i + 2] {
                (b, pattern[i + 2])
            } else {
                (pattern[i + 2], b)
            };
            matched |= lo <= c && c <= hi;
            i += 3;
        } else {
            matched |= b == c;
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::glob_match as m;

    #[test]
    fn literals_and_wildcards() {
        assert!(m(b"", b""));
        assert!(!m(b"", b"a"));
        assert!(m(b"*", b""));
        assert!(m(b"*", b"anything"));
        assert!(m(b"orders:*", b"orders:1"));
        assert!(!m(b"orders:*", b"order:1"));
        assert!(m(b"a?c", b"abc"));
        assert!(!m(b"a?c", b"ac"));
        assert!(m(b"*a*b*c*", b"xxaxxbxxcxx"));
        assert!(!m(b"*a*b*c*", b"xxaxxcxxbxx"));
        assert!(m(b"a*", b"a"));
        assert!(m(b"**a", b"ba"));
    }

    #[test]
    fn classes() {
        assert!(m(b"[abc]x", b"bx"));
        assert!(!m(b"[abc]x", b"dx"));
        assert!(m(b"[^abc]x", b"dx"));
        assert!(!m(b"[^abc]x", b"ax"));
        assert!(m(b"[a-c]", b"b"));
        assert!(m(b"[c-a]", b"b"));
        assert!(!m(b"[a-c]", b"d"));
        assert!(m(b"[]]", b"]"));
        assert!(m(b"[\\]]", b"]"));
        assert!(m(b"[", b"["));
    }

    #[test]
    fn escapes_and_binary() {
        assert!(m(b"a\\*", b"a*"));
        assert!(!m(b"a\\*", b"ab"));
        assert!(m(b"\x00*\xff", b"\x00zz\xff"));
    }

    #[test]
    fn pathological_patterns_stay_linearish() {
        let subject = [b'a'; 4096];
        let mut pattern = b"*a".repeat(64);
        pattern.extend_from_slice(b"b");
        assert!(!m(&pattern, &subject));
    }
}
