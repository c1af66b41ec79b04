//! Tags: names a job gives its entries so that every entry about one thing (a user, a product)
//! can be invalidated or deleted at once, fleet-wide, in constant work at call time.
//!
//! Nothing is scanned. A store keeps, per prefix, a *tag clock* (a counter bumped by every
//! `invalidate_tag` and `delete_tag`) and, per tag, the clock values of its last invalidation
//! and deletion ([`TagState`]). An entry records its tags and the clock value read before its
//! value was fetched ([`EntryTags`]); a read compares the two: an entry older than one of its
//! tags' invalidations reads as Stale, older than a deletion as missing.

use std::fmt;
use std::sync::Arc;

use xxhash_rust::xxh3::xxh3_128;

/// The longest tag, in bytes.
pub const MAX_TAG_LEN: usize = 128;
/// The most tags one entry may carry.
pub const MAX_TAGS_PER_ENTRY: usize = 32;

/// The tags a job gives one of its values, from [`Job::tags`](crate::Job::tags).
///
/// A tag is 1 to 128 bytes of printable ASCII (`0x21..=0x7E`) other than `{` and `}`, such as
/// `user:42`; an entry carries at most 32. They are checked when the value is written: a value
/// with an invalid tag is not cached, and the read that fetched it says so (its status is
/// `Bypassed`, with the reason in the `CacheBypassed` event).
///
/// ```
/// use cacheback::Tags;
///
/// let tags = Tags::new().with("user:42").with(format!("org:{}", 7));
/// assert_eq!(tags.iter().collect::<Vec<_>>(), ["user:42", "org:7"]);
/// assert!(Tags::new().is_empty());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[must_use]
pub struct Tags(Vec<String>);

impl Tags {
    /// No tags: what an untagged job's values get.
    pub fn new() -> Self {
        Tags(Vec::new())
    }

    /// These tags and `tag` (a repeated tag is kept once).
    pub fn with(mut self, tag: impl Into<String>) -> Self {
        let tag = tag.into();
        if !self.0.contains(&tag) {
            self.0.push(tag);
        }
        self
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The tags, in the order given.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }

    /// The checked tags of an entry fetched when the tag clock read `since`, or `None` for no
    /// tags.
    pub(crate) fn into_entry_tags(self, since: u64) -> Result<Option<Arc<EntryTags>>, String> {
        if self.0.is_empty() {
            return Ok(None);
        }
        if self.0.len() > MAX_TAGS_PER_ENTRY {
            return Err(format!(
                "{} tags on one value, over the limit of {MAX_TAGS_PER_ENTRY}",
                self.0.len()
            ));
        }
        for tag in &self.0 {
            validate_tag(tag)?;
        }
        Ok(Some(Arc::new(EntryTags {
            since,
            names: self.0.into_iter().map(Arc::from).collect(),
        })))
    }
}

impl<S: Into<String>> FromIterator<S> for Tags {
    fn from_iter<I: IntoIterator<Item = S>>(iter: I) -> Self {
        iter.into_iter().fold(Tags::new(), Tags::with)
    }
}

/// Checks a tag: 1 to [`MAX_TAG_LEN`] bytes of printable ASCII other than `{` and `}`. The
/// error says why not.
pub(crate) fn validate_tag(tag: &str) -> Result<(), String> {
    if tag.is_empty() {
        return Err("a tag must not be empty".to_owned());
    }
    if tag.len() > MAX_TAG_LEN {
        return Err(format!(
            "tag `{}…` is {} bytes, over the limit of {MAX_TAG_LEN}",
            tag.chars().take(32).collect::<String>(),
            tag.len()
        ));
    }
    if let Some(c) = tag
        .chars()
        .find(|&c| !c.is_ascii_graphic() || c == '{' || c == '}')
    {
        return Err(format!(
            "tag {tag:?} contains {c:?}: tags are printable ASCII without spaces, `{{` or `}}`"
        ));
    }
    Ok(())
}

/// The tags of one stored entry, and the tag clock's value read before its value was fetched:
/// the entry is out of date once one of its tags was invalidated (or deleted) at a later
/// clock value.
#[derive(Clone, PartialEq, Eq)]
pub struct EntryTags {
    pub(crate) since: u64,
    pub(crate) names: Box<[Arc<str>]>,
}

impl EntryTags {
    /// Tags read back by a store: `names` must be valid tags (at most 32), else the reason.
    pub fn new(since: u64, names: Vec<String>) -> Result<Self, String> {
        match Tags(names).into_entry_tags(since)? {
            Some(tags) => Ok(Arc::unwrap_or_clone(tags)),
            None => Err("an entry's tags must not be empty".to_owned()),
        }
    }

    /// The tag clock's value before the value was fetched.
    pub fn since(&self) -> u64 {
        self.since
    }

    /// The tag names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(|n| &**n)
    }

    /// What the tags' current states make of the entry.
    pub(crate) fn verdict(&self, states: impl IntoIterator<Item = TagState>) -> Verdict {
        let mut verdict = Verdict::Current;
        for state in states {
            if state.deleted > self.since {
                return Verdict::Deleted;
            }
            if state.invalidated > self.since {
                verdict = Verdict::Stale;
            }
        }
        verdict
    }
}

impl fmt::Debug for EntryTags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EntryTags")
            .field("since", &self.since)
            .field("names", &self.names)
            .finish()
    }
}

/// What a store knows of one tag: the tag clock's values at its last invalidation and at its
/// last deletion (0: never).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct TagState {
    /// The clock value of the last `invalidate_tag` or `delete_tag` of the tag.
    pub invalidated: u64,
    /// The clock value of the last `delete_tag` of the tag.
    pub deleted: u64,
}

impl TagState {
    /// A tag invalidated at clock value `invalidated` and deleted at `deleted`.
    pub fn new(invalidated: u64, deleted: u64) -> Self {
        TagState {
            invalidated,
            deleted,
        }
    }

    /// The later of two states of a tag (states only move forward).
    pub(crate) fn max(self, other: TagState) -> TagState {
        TagState {
            invalidated: self.invalidated.max(other.invalidated),
            deleted: self.deleted.max(other.deleted),
        }
    }
}

/// What [`Store::bump_tag`](crate::store::Store::bump_tag) does to a tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TagAction {
    /// Its entries read as Stale and are refreshed.
    Invalidate,
    /// Its entries read as missing.
    Delete,
}

/// What a tagged entry is, given its tags' states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// As its windows say.
    Current,
    /// Stale (a tag was invalidated after its value was fetched).
    Stale,
    /// Missing (a tag was deleted after its value was fetched).
    Deleted,
}

/// The digest a tag is announced and tracked under.
pub(crate) fn tag_digest(tag: &str) -> u128 {
    xxh3_128(tag.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_checked() {
        assert!(validate_tag("user:42").is_ok());
        assert!(validate_tag("").unwrap_err().contains("empty"));
        assert!(validate_tag("a b").unwrap_err().contains("' '"));
        assert!(validate_tag("{x}").is_err());
        assert!(validate_tag("é").is_err());
        assert!(validate_tag(&"x".repeat(129)).unwrap_err().contains("129"));
        let many: Tags = (0..33).map(|i| format!("t{i}")).collect();
        assert!(many.into_entry_tags(1).unwrap_err().contains("33 tags"));
        assert_eq!(Tags::new().into_entry_tags(1), Ok(None));
        assert_eq!(Tags::new().with("a").with("a").iter().count(), 1);
    }

    #[test]
    fn the_latest_tag_event_after_the_fetch_decides() {
        let tags = EntryTags::new(5, vec!["a".into(), "b".into()]).unwrap();
        let s = TagState::new;
        assert_eq!(tags.verdict([s(5, 0), s(3, 3)]), Verdict::Current);
        assert_eq!(tags.verdict([s(6, 0), s(3, 3)]), Verdict::Stale);
        assert_eq!(tags.verdict([s(6, 0), s(7, 7)]), Verdict::Deleted);
        assert!(EntryTags::new(1, vec![]).is_err());
        assert_eq!(s(3, 1).max(s(2, 2)), s(3, 2));
    }
}
