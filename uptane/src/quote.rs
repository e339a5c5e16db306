//! Percent-encoding of role names and target paths, for URLs and file names.
//!
//! Role names and target paths come from signed metadata, but a repository
//! may still choose names such as `?`, `#`, `/x` or `../x`. They must neither
//! change the meaning of a URL nor escape the metadata or target directory.

/// Percent-encode `s` as Python's `urllib.parse.quote(s, safe="")` does: every
/// byte of its UTF-8 form except ASCII letters, digits and `_.-~` becomes
/// `%XX` (upper-case hex).
///
/// python-tuf's ngclient uses exactly this for delegated role names in
/// metadata URLs and local file names, and the conformance suite checks the
/// request it sees against `quote(role, "")`. The result never contains `/`,
/// so as a file name it cannot leave its directory; `.` and `..` are the only
/// names that need care, and callers always add a suffix (`.json`) or prefix.
///
/// ```
/// use secureev_uptane::quote::quote_component;
/// assert_eq!(quote_component("../delegated role"), "..%2Fdelegated%20role");
/// assert_eq!(quote_component("?#"), "%3F%23");
/// ```
pub fn quote_component(s: &str) -> String {
    quote_bytes(s, |b| {
        b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'~')
    })
}

/// Percent-encode a target path for use as a URL path: `/` separates
/// segments and stays; the other RFC 3986 `pchar` characters (unreserved,
/// sub-delimiters, `:` and `@`) stay; everything else, including `%`, `?`,
/// `#`, spaces and non-ASCII bytes, becomes `%XX`.
///
/// A server that decodes the request path (as a static file server does)
/// therefore sees exactly the target path.
///
/// ```
/// use secureev_uptane::quote::quote_path;
/// assert_eq!(quote_path("dir/a b?.txt"), "dir/a%20b%3F.txt");
/// ```
pub fn quote_path(s: &str) -> String {
    quote_bytes(s, |b| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b':'
                    | b'@'
                    | b'/'
            )
    })
}

fn quote_bytes(s: &str, keep: impl Fn(u8) -> bool) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if keep(b) {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn component_matches_python_quote_with_empty_safe() {
        // Expected values from CPython 3.11 `urllib.parse.quote(s, safe="")`.
        for (input, expected) in [
            ("targets", "targets"),
            ("?", "%3F"),
            ("#", "%23"),
            ("/delegatedrole", "%2Fdelegatedrole"),
            ("../delegatedrole", "..%2Fdelegatedrole"),
            ("a b+c%d", "a%20b%2Bc%25d"),
            ("rôle", "r%C3%B4le"),
            ("A-Z_a.z~0", "A-Z_a.z~0"),
            ("", ""),
        ] {
            assert_eq!(quote_component(input), expected, "{input:?}");
        }
    }

    #[test]
    fn component_never_contains_a_separator() {
        for s in ["/", "\\", "a/../b", "..\\..\\x", "\0"] {
            let q = quote_component(s);
            assert!(
                !q.contains('/') && !q.contains('\\') && !q.contains('\0'),
                "{q}"
            );
        }
    }

    #[test]
    fn path_keeps_slashes_and_encodes_url_syntax() {
        assert_eq!(
            quote_path("path/to/a/target_file.txt"),
            "path/to/a/target_file.txt"
        );
        assert_eq!(quote_path("a#b"), "a%23b");
        assert_eq!(quote_path("100%"), "100%25");
        assert_eq!(quote_path("ünï"), "%C3%BCn%C3%AF");
    }
}
