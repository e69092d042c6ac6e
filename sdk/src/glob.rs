//! Redis glob matching (`*`, `?`, `[abc]`, `[^a-z]`, `\x`), binary-safe, with
//! the same answers as Redis's own matcher (`KEYS`, `SCAN ... MATCH`) but
//! one: a pattern of only `*`s matches the empty key too (Redis's matcher
//! says no, while `KEYS *` and `SCAN` treat `*` as every key), so that a
//! policy for `*` covers every lock.
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
                    let (matched, next) = class_match(pattern, p, subject[s]);
                    if matched {
                        p = next;
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

/// Matches byte `c` against the class whose `[` is at `pattern[open]`;
/// returns whether it matched and the index after the class. As Redis's
/// `stringmatchlen` does, quirks included, so that a glob selects the same
/// keys as Redis's own matcher (`KEYS`, `SCAN ... MATCH`): a `]` right after
/// `[` or `[^` closes an empty class; a range takes the two bytes around a
/// `-` whatever they are (`[a-]` is the range `]`..`a`, and the class goes
/// on after it, and compares C `char`s, signed on x86); a class left open
/// ends the pattern.
fn class_match(pattern: &[u8], open: usize, c: u8) -> (bool, usize) {
    let mut i = open + 1;
    let negate = pattern.get(i) == Some(&b'^');
    if negate {
        i += 1;
    }
    let mut matched = false;
    loop {
        match &pattern[i..] {
            [] => return (matched != negate, i),
            [b'\\', escaped, ..] => {
                matched |= *escaped == c;
                i += 2;
            }
            [b']', ..] => return (matched != negate, i + 1),
            [a, b'-', b, ..] => {
                // Redis compares C `char`s: signed on x86, so bytes from
                // 0x80 sort before 0x00 there.
                let [a, b, c] = [*a, *b, c].map(|x| x as core::ffi::c_char);
                matched |= (a.min(b)..=a.max(b)).contains(&c);
                i += 3;
            }
            [b, ..] => {
                matched |= *b == c;
                i += 1;
            }
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
        assert!(m(b"**", b""));
        assert!(!m(b"?*", b""));
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
        assert!(m(b"[\\]]", b"]"));
        assert!(m(b"[a\\-z]", b"-"));
    }

    /// Redis's own matcher's answers (`KEYS`, Redis 7.0 and Valkey 8.0).
    #[test]
    fn classes_as_redis_reads_them() {
        // `]` right after `[` closes an empty class.
        assert!(!m(b"[]]", b"]"));
        assert!(!m(b"[]a]", b"a"));
        assert!(!m(b"[^]]", b"x"));
        assert!(m(b"[^]]", b"x]"));
        // `[a-]` is the range `]`..`a`.
        assert!(!m(b"[a-]", b"-"));
        assert!(m(b"[a-]", b"]"));
        assert!(m(b"[a-]", b"_"));
        // A class left open ends the pattern.
        assert!(!m(b"[", b"["));
        assert!(!m(b"a[", b"a["));
        assert!(!m(b"*[", b"x["));
        assert!(m(b"[ab", b"b"));
        assert!(!m(b"[ab", b"bb"));
        assert!(m(b"[^", b"z"));
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
