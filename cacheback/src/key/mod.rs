//! Key derivation: `prefix : job name : xxh3-128(canonical encoding of args)`, the hash seeded
//! per job with xxh3-64 of the prefix and job name.
//!
//! The job's args are never put into a store key verbatim (they may be user-controlled and of any
//! size); they are serialized with a private canonical encoding and hashed. That encoding is
//! defined byte for byte in [`canonical`], because it is part of the on-store format: a change to
//! it silently changes every key, so it is pinned by golden tests.
//!
//! This file holds [`Key`], its text form and the length limits of each part; the rest has one
//! file per part:
//!
//! - [`validate`]: the rules for prefixes and job names, checked once at set-up.
//! - [`canonical`]: the canonical encoding of args, a serde `Serializer`, and its format.
//! - [`digest`](mod@digest): a job's seed, and the digest of its encoded args.
//! - [`error`]: [`KeyError`], why a key could not be derived.
//!
//! # Key text
//!
//! A key's text is `{prefix}:{job}:{digest}` with the digest as exactly 32 lowercase hex digits.
//! Prefixes are limited to [`MAX_PREFIX_LEN`] bytes of `[A-Za-z0-9_.-]` (no `:`), job names to
//! [`MAX_JOB_NAME_LEN`] bytes of printable ASCII other than `{` and `}` (`:` is allowed, as in
//! `my_crate::user_tweets`). So the text parses back unambiguously (the prefix ends at the first
//! `:`, the digest is the last 32 characters), is at most 64 + 1 + 128 + 1 + 32 = 226 bytes and
//! contains no whitespace or control characters: safe as a memcached key (< 250 bytes) and free
//! of Redis Cluster hash tags, which the Redis store adds itself.

mod canonical;
mod digest;
mod error;
mod validate;

use std::fmt;

pub(crate) use canonical::canonical_encode;
pub(crate) use digest::{digest, digest_seeded, job_seed};
pub(crate) use error::KeyError;
pub(crate) use validate::{validate_job_name, validate_prefix};

/// Longest accepted prefix, in bytes.
pub(crate) const MAX_PREFIX_LEN: usize = 64;

/// Longest accepted job name, in bytes.
pub(crate) const MAX_JOB_NAME_LEN: usize = 128;

/// Longest accepted canonical encoding of a job's args, in bytes (1 MiB).
pub(crate) const MAX_ARGS_LEN: usize = 1 << 20;

/// A store key: `prefix`, job name and the 128-bit digest of the job's canonically encoded args.
///
/// Its [`Display`](fmt::Display) form is the key text used by the stores:
/// `{prefix}:{job}:{digest}`, the digest written as exactly 32 lowercase hex digits. Keys built by
/// cacheback have a validated prefix and job name, which makes that text at most 226 bytes of
/// printable ASCII; [`Key::new`] itself does not validate.
///
/// # Example
///
/// ```
/// use cacheback::store::Key;
///
/// let key = Key::new("myapp", "my_crate::user_tweets", 0x0123_4567_89ab_cdef_0000_0000_0000_002a);
/// assert_eq!(key.prefix(), "myapp");
/// assert_eq!(key.job(), "my_crate::user_tweets");
/// assert_eq!(
///     key.to_string(),
///     "myapp:my_crate::user_tweets:0123456789abcdef000000000000002a",
/// );
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Key<'a> {
    prefix: &'a str,
    job: &'a str,
    digest: u128,
}

impl<'a> Key<'a> {
    /// Assembles a key from its parts, without validating them.
    pub fn new(prefix: &'a str, job: &'a str, digest: u128) -> Self {
        Self {
            prefix,
            job,
            digest,
        }
    }

    /// The application prefix that isolates this application's keys from others in one store.
    pub fn prefix(&self) -> &'a str {
        self.prefix
    }

    /// The job name.
    pub fn job(&self) -> &'a str {
        self.job
    }

    /// The xxh3-128 digest of the prefix, the job name and the canonically encoded args.
    pub fn digest(&self) -> u128 {
        self.digest
    }

    /// Reads a key back from its text (`{prefix}:{job}:{digest}`, as [`Display`](fmt::Display)
    /// writes it, e.g. from a log line or [`JobHandle::key`](crate::JobHandle::key)), or says
    /// why it is not one. A Redis key name is accepted too: the braces of its hash tag
    /// (`{myapp:job:…}`) are dropped.
    ///
    /// ```
    /// use cacheback::store::Key;
    ///
    /// let text = "myapp:my_crate::user_tweets:0123456789abcdef000000000000002a";
    /// let key = Key::parse(text).unwrap();
    /// assert_eq!((key.prefix(), key.job()), ("myapp", "my_crate::user_tweets"));
    /// assert_eq!(key.to_string(), text);
    /// assert!(Key::parse("myapp:no-digest").is_err());
    /// ```
    pub fn parse(text: &'a str) -> Result<Key<'a>, String> {
        let text = text
            .strip_prefix('{')
            .and_then(|t| t.strip_suffix('}'))
            .unwrap_or(text);
        let bad = |why: &str| {
            format!("`{text}` is not a key ({{prefix}}:{{job}}:{{32 hex digits}}): {why}")
        };
        let (prefix, rest) = text.split_once(':').ok_or_else(|| bad("no `:`"))?;
        let (job, hex) = rest.rsplit_once(':').ok_or_else(|| bad("no job name"))?;
        validate_prefix(prefix).map_err(|e| bad(&e.to_string()))?;
        validate_job_name(job).map_err(|e| bad(&e.to_string()))?;
        if hex.len() != 32
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(bad("the digest is not 32 lowercase hex digits"));
        }
        let digest = u128::from_str_radix(hex, 16).map_err(|e| bad(&e.to_string()))?;
        Ok(Key::new(prefix, job, digest))
    }
}

impl Key<'_> {
    /// The digest as 32 lowercase hex digits.
    fn hex(&self) -> [u8; 32] {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut hex = [0u8; 32];
        for (pair, byte) in hex.chunks_exact_mut(2).zip(self.digest.to_be_bytes()) {
            pair[0] = HEX[usize::from(byte >> 4)];
            pair[1] = HEX[usize::from(byte & 0xf)];
        }
        hex
    }

    /// The length of the key's text.
    pub(crate) fn text_len(&self) -> usize {
        self.prefix.len() + self.job.len() + 34
    }

    /// Appends the key's text to `out`, written by hand: this runs on every refresh request
    /// and every Redis command, where `format!` of the 32 hex digits costs about as much as
    /// the rest of the key handling together.
    pub(crate) fn write_text(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.prefix.as_bytes());
        out.push(b':');
        out.extend_from_slice(self.job.as_bytes());
        out.push(b':');
        out.extend_from_slice(&self.hex());
    }

    /// The key's text (as `to_string` gives it) in one allocation of exactly its length.
    pub(crate) fn text(&self) -> String {
        let mut out = Vec::with_capacity(self.text_len());
        self.write_text(&mut out);
        // Prefixes, job names and hex digits are ASCII (checked when the job is set up).
        String::from_utf8(out)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    }
}

impl fmt::Display for Key<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex = self.hex();
        // Hex digits are ASCII.
        let hex = std::str::from_utf8(&hex).map_err(|_| fmt::Error)?;
        f.write_str(self.prefix)?;
        f.write_str(":")?;
        f.write_str(self.job)?;
        f.write_str(":")?;
        f.write_str(hex)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use proptest::prelude::*;

    #[test]
    fn display_format_parses_back() {
        let job = "my_crate::user_tweets";
        let d = digest("myapp", job, &("alice", 20u32)).unwrap();
        let text = Key::new("myapp", job, d).to_string();
        assert_eq!(text.len(), "myapp".len() + 1 + job.len() + 1 + 32);
        assert!(text.bytes().all(|b| b.is_ascii_graphic()));

        let (prefix, rest) = text.split_once(':').unwrap();
        let (job_part, hex_part) = rest.split_at(rest.len() - 32);
        let job_part = job_part.strip_suffix(':').unwrap();
        assert_eq!((prefix, job_part), ("myapp", job));
        assert!(
            hex_part
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
        assert_eq!(u128::from_str_radix(hex_part, 16).unwrap(), d);

        // Leading zeros are kept so the digest is always the last 32 characters.
        assert_eq!(
            Key::new("p", "j", 1).to_string(),
            "p:j:00000000000000000000000000000001"
        );
        assert_eq!(
            Key::new("p", "j", u128::MAX).to_string(),
            format!("p:j:{}", "f".repeat(32))
        );
        for key in [Key::new("myapp", job, d), Key::new("p", "a:b:c", 1)] {
            let text = key.to_string();
            assert_eq!(
                text,
                format!("{}:{}:{:032x}", key.prefix, key.job, key.digest)
            );
            assert_eq!(key.text(), text, "the allocation-exact text is the same");
            assert_eq!(key.text().capacity(), key.text_len());
            assert_eq!(Key::parse(&text), Ok(key));
            assert_eq!(Key::parse(&format!("{{{text}}}")), Ok(key));
        }
        for bad in [
            "",
            "p",
            "p:j",
            "p:j:00",
            "p:j:0000000000000000000000000000000G",
            "a b:j:00000000000000000000000000000001",
        ] {
            assert!(Key::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn longest_valid_key_is_memcached_safe() {
        let prefix = "p".repeat(MAX_PREFIX_LEN);
        let job = ":".repeat(MAX_JOB_NAME_LEN);
        validate_prefix(&prefix).unwrap();
        validate_job_name(&job).unwrap();
        let text = Key::new(&prefix, &job, u128::MAX).to_string();
        assert_eq!(text.len(), 226);
        assert!(text.len() < 250);
    }

    #[test]
    fn key_accessors() {
        let key = Key::new("a", "b", 3);
        assert_eq!((key.prefix(), key.job(), key.digest()), ("a", "b", 3));
    }

    proptest! {
        #[test]
        fn valid_names_make_parseable_keys(prefix in "[A-Za-z0-9_.-]{1,64}",
                                           job in "[!-z|~]{1,128}",
                                           d in any::<u128>()) {
            prop_assert_eq!(validate_prefix(&prefix), Ok(()));
            prop_assert_eq!(validate_job_name(&job), Ok(()));
            let text = Key::new(&prefix, &job, d).to_string();
            prop_assert!(text.len() <= 226);
            let memcached_safe = text.bytes().all(|b| b.is_ascii_graphic() && !b"{}".contains(&b));
            prop_assert!(memcached_safe);
            let (p, rest) = text.split_once(':').unwrap();
            let (j, h) = rest.split_at(rest.len() - 32);
            prop_assert_eq!(p, prefix.as_str());
            prop_assert_eq!(j.strip_suffix(':'), Some(job.as_str()));
            prop_assert_eq!(u128::from_str_radix(h, 16).unwrap(), d);
        }
    }
}
