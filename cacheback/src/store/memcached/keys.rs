//! memcached key names: a cacheback key's text as it is when memcached accepts it, hashed when
//! it does not.
//!
//! memcached keys are at most 250 bytes with no whitespace or control characters. A key built
//! by cacheback (validated prefix and job name) is at most 226 bytes of printable ASCII, so its
//! text is used verbatim and stays readable in `stats cachedump` or a proxy's logs. A [`Key`]
//! assembled by hand may be longer or hold other bytes: its text is then replaced by
//! `#<xxh3-128 of the text, 32 hex digits>:<the first printable bytes>`. No verbatim name starts
//! with `#` (a text that does is hashed too), so a hashed name never equals a verbatim one.

use std::fmt::Write as _;

use xxhash_rust::xxh3::xxh3_128;

use crate::key::Key;

/// memcached's longest key, in bytes.
pub(super) const MAX_KEY_LEN: usize = 250;

/// What marks a hashed name; never the first byte of a verbatim one.
const HASHED: char = '#';

/// Suffix of a key's control record (its claim and failure state).
const CONTROL_SUFFIX: &str = ":c";

/// The memcached key of `key`'s entry.
pub(super) fn entry_key(key: Key<'_>) -> String {
    safe(key.text())
}

/// The memcached key of `key`'s control record: its claim and its failure state, in one item
/// so that one compare-and-swap covers both. An entry's text ends with a hex digit, never with
/// this suffix, so the two never collide.
pub(super) fn control_key(key: Key<'_>) -> String {
    let mut text = key.text();
    text.push_str(CONTROL_SUFFIX);
    safe(text)
}

/// `text` when memcached accepts it as a key, else its hashed form.
fn safe(text: String) -> String {
    let verbatim = text.len() <= MAX_KEY_LEN
        && !text.starts_with(HASHED)
        && text.bytes().all(|b| b.is_ascii_graphic());
    if verbatim {
        return text;
    }
    let mut name = String::with_capacity(MAX_KEY_LEN);
    // Writing to a String cannot fail.
    let _ = write!(name, "{HASHED}{:032x}:", xxh3_128(text.as_bytes()));
    // A readable hint of what the key was; the digest alone makes the name unique.
    let room = MAX_KEY_LEN - name.len();
    name.extend(
        text.chars()
            .filter(char::is_ascii_graphic)
            .take_while(|c| *c != HASHED)
            .take(room),
    );
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    use proptest::prelude::*;

    use crate::key::{MAX_JOB_NAME_LEN, MAX_PREFIX_LEN};

    fn acceptable(name: &str) -> bool {
        name.len() <= MAX_KEY_LEN && name.bytes().all(|b| b.is_ascii_graphic())
    }

    #[test]
    fn keys_cacheback_builds_are_kept_verbatim() {
        let key = Key::new("app", "my_crate::tweets", 0xabc);
        assert_eq!(entry_key(key), key.to_string());
        assert_eq!(control_key(key), format!("{key}:c"));
        // The longest valid key, with its suffix, still fits.
        let (prefix, job) = ("p".repeat(MAX_PREFIX_LEN), ":".repeat(MAX_JOB_NAME_LEN));
        let longest = Key::new(&prefix, &job, u128::MAX);
        assert_eq!(control_key(longest), format!("{longest}:c"));
        assert!(acceptable(&control_key(longest)));
    }

    #[test]
    fn long_keys_are_hashed_and_stay_distinct() {
        let job = "j".repeat(300);
        let (a, b) = (Key::new("app", &job, 1), Key::new("app", &job, 2));
        let name = entry_key(a);
        assert!(acceptable(&name), "{name}");
        assert!(name.starts_with('#'), "{name}");
        assert_eq!(name.len(), MAX_KEY_LEN);
        assert!(name[34..].starts_with("app:jjj"), "a readable hint: {name}");
        assert_ne!(entry_key(a), entry_key(b));
        assert_ne!(entry_key(a), control_key(a));
        // Stable: the same key always maps to the same name (it is shared by processes).
        assert_eq!(entry_key(a), entry_key(Key::new("app", &job, 1)));
        assert_eq!(
            &name[..34],
            format!("#{:032x}:", xxh3_128(a.to_string().as_bytes()))
        );
    }

    #[test]
    fn spaces_controls_and_other_bytes_are_hashed() {
        for job in ["with space", "tab\there", "new\nline", "del\u{7f}", "ünï"] {
            let name = entry_key(Key::new("app", job, 7));
            assert!(acceptable(&name), "{job:?} -> {name:?}");
            assert!(name.starts_with('#'), "{job:?} -> {name:?}");
        }
        // A `#` inside is fine; at the start it would look like a hashed name.
        assert_eq!(
            entry_key(Key::new("app", "#x", 7)),
            "app:#x:".to_owned() + &"0".repeat(31) + "7"
        );
        let name = entry_key(Key::new("#hash", "job", 7));
        assert!(name.starts_with('#') && name.len() == 34, "{name}");
    }

    proptest! {
        #[test]
        fn every_key_maps_to_an_acceptable_name(prefix in any::<String>(), job in any::<String>(), d in any::<u128>()) {
            let key = Key::new(&prefix, &job, d);
            for name in [entry_key(key), control_key(key)] {
                prop_assert!(acceptable(&name), "{:?}", name);
            }
        }

        #[test]
        fn distinct_texts_map_to_distinct_names(a in "[ -~]{0,300}", b in "[ -~]{0,300}") {
            prop_assume!(a != b);
            prop_assert_ne!(safe(a), safe(b));
        }
    }
}
