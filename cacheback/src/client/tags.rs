//! `invalidate_tag` and `delete_tag`: every entry carrying a tag, in constant work.

use crate::client::Cacheback;
use crate::error::{Error, Result};
use crate::store::TagStates;
use crate::tags::{TagAction, validate_tag};

impl Cacheback {
    /// Soft invalidation of every entry carrying `tag` (see [`Job::tags`](crate::Job::tags)),
    /// of every job under this client's prefix, across the fleet: each reads as Stale from
    /// now on (it keeps being served while one refresh replaces it, exactly as after
    /// [`JobHandle::invalidate`](crate::JobHandle::invalidate)), until a value fetched after
    /// this call is stored.
    ///
    /// Constant work, whatever the number of entries: the store bumps one counter and one
    /// record (one script on Redis, announced to the fleet). Nothing is scanned and nothing
    /// is enqueued now: an entry is judged, and its refresh claimed, when it is next read.
    /// A value whose fetch began before this call is never stored Fresh after it. (In front
    /// of a remote store, the first tagged value a process fetches for a job, before it has
    /// seen that job's values carry tags, records the highest tag clock the process knew: it
    /// may read Stale, and be refreshed, once more than needed. Every later fetch reads the
    /// clock first.)
    ///
    /// Who sees it when: this process at once; another process with a
    /// [near cache](crate::CachebackBuilder::near_cache) as soon as the announcement arrives
    /// (milliseconds), and in any case (an announcement lost, or a process without a near
    /// cache) within its [`tag_check_interval`](crate::CachebackBuilder::tag_check_interval).
    ///
    /// Errors with [`Error::InvalidTag`] for a tag that is not 1 to 128 bytes of printable
    /// ASCII other than `{` and `}`, and with [`Error::Store`] if the store cannot be reached
    /// or keeps no tags (memcached).
    ///
    /// ```
    /// # use cacheback::{Cacheback, Job, Status, Tags};
    /// # struct Profile;
    /// # impl Job for Profile {
    /// #     type Args = u64;
    /// #     type Value = String;
    /// #     type Error = std::io::Error;
    /// #     fn name(&self) -> &str { "profile" }
    /// #     async fn fetch(&self, id: u64) -> Result<String, std::io::Error> { Ok(format!("user {id}")) }
    /// #     fn tags(&self, id: &u64, _: &String) -> Tags { Tags::new().with(format!("user:{id}")) }
    /// # }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> cacheback::Result<()> {
    /// let cache = Cacheback::builder().build()?;
    /// let profiles = cache.job(Profile); // tags each value with `user:<id>`
    /// profiles.get(7).await?;
    ///
    /// cache.invalidate_tag("user:7").await?;
    /// let read = profiles.get_with_status(7).await?;
    /// assert_eq!(read.status, Status::Stale); // served, and refreshed once
    /// # Ok(())
    /// # }
    /// ```
    pub async fn invalidate_tag(&self, tag: &str) -> Result<()> {
        self.bump_tag(tag, TagAction::Invalidate).await
    }

    /// Hard invalidation of every entry carrying `tag`, of every job under this client's
    /// prefix, across the fleet: each reads as missing from now on (a read fetches, or
    /// answers without a value, as for a deleted key), until a value fetched after this call
    /// is stored. Constant work and visibility as [`invalidate_tag`](Self::invalidate_tag);
    /// the same errors.
    pub async fn delete_tag(&self, tag: &str) -> Result<()> {
        self.bump_tag(tag, TagAction::Delete).await
    }

    async fn bump_tag(&self, tag: &str, action: TagAction) -> Result<()> {
        validate_tag(tag).map_err(|message| Error::InvalidTag { message })?;
        let core = self.core();
        let state = core.store.bump_tag(&core.prefix, tag, action).await?;
        // This process sees its own bump at once, announcement or not.
        let read = TagStates::new(state.invalidated, vec![state]);
        core.tags.learn(&[tag], &read, core.now());
        Ok(())
    }
}
