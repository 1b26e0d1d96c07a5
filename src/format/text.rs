//! Rules every encoder applies to a value before its own escaping (formats.md §0).
//!
//! Order matters: neutralise control characters, trim, then truncate on the *unescaped* value
//! (CEF lengths are characters of the unescaped value, rule 5), and only then escape. Truncation
//! therefore can never cut an escape sequence, and it cuts on `char` boundaries, never inside a
//! UTF-8 sequence.

use std::borrow::Cow;

/// Appended to a value that was cut, so an analyst sees that it was.
pub const TRUNCATION_MARK: char = '…';

/// Replaces control characters that no receiver treats well. CR and LF are kept: each encoder
/// escapes or replaces them itself. TAB and the Unicode line/paragraph separators become a space
/// (rsyslog turns TAB into `#011`, formats.md §6); any other C0 or C1 control and DEL become
/// U+FFFD, so that an analyst can see that something was there.
pub fn neutralize(s: &str) -> Cow<'_, str> {
    // Fast path on bytes: every character replaced below is a C0 byte, DEL, or starts with 0xC2
    // (U+0080-U+009F) or 0xE2 (U+2028, U+2029).
    if printable_ascii(s.as_bytes())
        || !s
            .bytes()
            .any(|b| (b < 0x20 && b != b'\n' && b != b'\r') || b == 0x7f || b == 0xc2 || b == 0xe2)
    {
        return Cow::Borrowed(s);
    }
    if !s.chars().any(needs_neutralizing) {
        return Cow::Borrowed(s);
    }
    Cow::Owned(
        s.chars()
            .map(|c| match c {
                '\t' | '\u{2028}' | '\u{2029}' | '\u{85}' => ' ',
                c if needs_neutralizing(c) => '\u{FFFD}',
                c => c,
            })
            .collect(),
    )
}

/// Whether every byte is in 0x20..=0x7E, eight bytes at a time (most values are): then nothing
/// needs neutralising.
fn printable_ascii(b: &[u8]) -> bool {
    const ONES: u64 = u64::MAX / 255;
    const HIGH: u64 = ONES * 0x80;
    let mut chunks = b.chunks_exact(8);
    for c in &mut chunks {
        let x = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        // A byte below 0x20 (the classic "has less than" test), or one of 0x7F..=0xFF (its high
        // bit set, or set once 1 is added). False alarms only make the caller look closer.
        let low = x.wrapping_sub(ONES * 0x20) & !x & HIGH;
        let high = (x | x.wrapping_add(ONES)) & HIGH;
        if low | high != 0 {
            return false;
        }
    }
    chunks
        .remainder()
        .iter()
        .all(|&c| (0x20..0x7f).contains(&c))
}

/// Index of the first byte of `hay` that is one of `needles`, eight bytes at a time (most values
/// hold none, so the escapers copy them whole).
pub fn find_any<const N: usize>(hay: &[u8], needles: [u8; N]) -> Option<usize> {
    const ONES: u64 = u64::MAX / 255;
    const HIGH: u64 = ONES * 0x80;
    let mut chunks = hay.chunks_exact(8);
    let mut base = 0;
    for c in &mut chunks {
        let x = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        // A zero byte of `x ^ needle` (the classic "has zero byte" test). Only bytes above a
        // real match can be flagged falsely, so the lowest flag is always a real match.
        let mut hits = 0;
        for n in needles {
            let y = x ^ (ONES * u64::from(n));
            hits |= y.wrapping_sub(ONES) & !y & HIGH;
        }
        if hits != 0 {
            return Some(base + hits.trailing_zeros() as usize / 8);
        }
        base += 8;
    }
    let rest = chunks.remainder();
    rest.iter()
        .position(|b| needles.contains(b))
        .map(|i| base + i)
}

/// Appends `v` to `out` with every byte of `needles` replaced by `rep(byte)`; the runs in between
/// are copied whole.
pub fn write_replacing<'r, const N: usize>(
    out: &mut Vec<u8>,
    v: &[u8],
    needles: [u8; N],
    rep: impl Fn(u8) -> &'r [u8],
) {
    let mut rest = v;
    while let Some(i) = find_any(rest, needles) {
        out.extend_from_slice(&rest[..i]);
        out.extend_from_slice(rep(rest[i]));
        rest = &rest[i + 1..];
    }
    out.extend_from_slice(rest);
}

fn needs_neutralizing(c: char) -> bool {
    (c.is_control() && c != '\n' && c != '\r') || c == '\u{2028}' || c == '\u{2029}'
}

/// Neutralised and trimmed of leading and trailing white space (CEF rule 4: no leading or
/// trailing spaces in values). Returns `None` for a value that is then empty (rule 4: no key with
/// an empty value).
pub fn clean(s: &str) -> Option<Cow<'_, str>> {
    // Fast path: printable ASCII that neither starts nor ends with a space has nothing to trim
    // or neutralise (most values).
    let graphic = |b: Option<&u8>| b.is_some_and(u8::is_ascii_graphic);
    if graphic(s.as_bytes().first())
        && graphic(s.as_bytes().last())
        && printable_ascii(s.as_bytes())
    {
        return Some(Cow::Borrowed(s));
    }
    clean_slow(s)
}

fn clean_slow(s: &str) -> Option<Cow<'_, str>> {
    let trimmed = s.trim();
    if trimmed.is_empty() {
        return None;
    }
    match neutralize(trimmed) {
        Cow::Borrowed(b) => Some(Cow::Borrowed(b)),
        Cow::Owned(o) => {
            let t = o.trim();
            if t.is_empty() {
                None
            } else if t.len() == o.len() {
                Some(Cow::Owned(o))
            } else {
                Some(Cow::Owned(t.to_string()))
            }
        }
    }
}

/// Cuts `s` to at most `max_chars` characters, the last of which is [`TRUNCATION_MARK`].
/// Returns whether it cut.
pub fn truncate_chars(s: &mut Cow<'_, str>, max_chars: usize) -> bool {
    if max_chars == 0 {
        return false;
    }
    // Fast path: a byte length within the limit means a char count within it too.
    if s.len() <= max_chars {
        return false;
    }
    let Some((cut, _)) = s.char_indices().nth(max_chars - 1) else {
        return false; // fewer chars than max_chars
    };
    if s[cut..].chars().count() <= 1 {
        return false; // exactly max_chars
    }
    let mut out = String::with_capacity(cut + TRUNCATION_MARK.len_utf8());
    out.push_str(s[..cut].trim_end());
    out.push(TRUNCATION_MARK);
    *s = Cow::Owned(out);
    true
}

/// Cuts `s` so that `escaped_len` of the result (with the mark) is at most `max_bytes`.
/// Returns false when even one character and the mark do not fit.
pub fn truncate_to_escaped_bytes(
    s: &mut Cow<'_, str>,
    max_bytes: usize,
    escaped_len: impl Fn(char) -> usize,
) -> bool {
    let mark = escaped_len(TRUNCATION_MARK);
    if max_bytes <= mark {
        return false;
    }
    let budget = max_bytes - mark;
    let mut used = 0;
    let mut cut = 0;
    for (i, c) in s.char_indices() {
        let n = escaped_len(c);
        if used + n > budget {
            break;
        }
        used += n;
        cut = i + c.len_utf8();
    }
    if cut == 0 {
        return false;
    }
    let mut out = String::with_capacity(cut + 3);
    out.push_str(&s[..cut]);
    out.push(TRUNCATION_MARK);
    *s = Cow::Owned(out);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neutralize_table() {
        let cases: &[(&str, &str)] = &[
            ("plain", "plain"),
            ("a\tb", "a b"),
            ("a\u{0}b", "a\u{FFFD}b"),
            ("a\u{7f}b\u{9b}c", "a\u{FFFD}b\u{FFFD}c"),
            ("keep\r\nnewlines", "keep\r\nnewlines"),
            ("sep\u{2028}par\u{2029}nel\u{85}", "sep par nel "),
            ("bell\u{7}", "bell\u{FFFD}"),
        ];
        for (input, want) in cases {
            assert_eq!(neutralize(input), *want, "{input:?}");
        }
    }

    #[test]
    fn clean_trims_and_drops_empty() {
        assert_eq!(clean("  x y  ").as_deref(), Some("x y"));
        assert_eq!(clean(" \t \u{2028} "), None);
        assert_eq!(clean(""), None);
        assert_eq!(clean("\tx\t").as_deref(), Some("x"));
    }

    #[test]
    fn truncate_counts_chars_not_bytes() {
        let cases: &[(&str, usize, &str, bool)] = &[
            ("abcdef", 6, "abcdef", false),
            ("abcdefg", 6, "abcde…", true),
            ("日本語のテキスト", 5, "日本語の…", true),
            ("日本語の", 4, "日本語の", false),
            ("ab cdefg", 4, "ab…", true),
            ("😀😀😀😀", 3, "😀😀…", true),
        ];
        for (input, max, want, cut) in cases {
            let mut v = Cow::Borrowed(*input);
            assert_eq!(truncate_chars(&mut v, *max), *cut, "{input}");
            assert_eq!(v, *want);
            assert!(v.chars().count() <= *max);
        }
    }

    proptest::proptest! {
        // Printable ASCII (with and without spaces at the ends) and anything else.
        #[test]
        fn clean_fast_path_changes_nothing(s in "[ -~]{0,20}|.{0,20}") {
            proptest::prop_assert_eq!(clean(&s), clean_slow(&s));
        }

        // Word-at-a-time search finds what a byte-by-byte search finds.
        #[test]
        fn find_any_is_position(hay in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40)) {
            let needles = [b'\\', b'=', b'\n', 0x80];
            let want = hay.iter().position(|b| needles.contains(b));
            proptest::prop_assert_eq!(find_any(&hay, needles), want);
        }
    }

    #[test]
    fn truncate_to_bytes_never_splits_an_escape() {
        // '=' escapes to two bytes in a CEF extension.
        let esc = |c: char| if c == '=' { 2 } else { c.len_utf8() };
        let mut v = Cow::Borrowed("a=b=c=d");
        assert!(truncate_to_escaped_bytes(&mut v, 7, esc));
        // "a=" costs 3, "b" 1, mark 3: "a=b" + "…" = 7 bytes escaped.
        assert_eq!(v, "a=b…");
        let mut v = Cow::Borrowed("==");
        assert!(!truncate_to_escaped_bytes(&mut v, 4, esc));
    }
}
