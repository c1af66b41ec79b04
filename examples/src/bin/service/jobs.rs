//! The database job: django-cacheback's `QuerySetJob` in Rust. The fetch is a `sqlx` query;
//! the handler that writes a row invalidates the job's key, so the next read serves the old
//! rows once while exactly one refresh reads the new ones.

use std::time::Duration;

use cacheback::{Job, Policy};
use sqlx::PgPool;

use crate::db::{self, Tweet};

/// A user's latest tweets, read from PostgreSQL. The pool is the job's own (a dependency, not
/// part of the key): every process that registers the job, web or worker, gives it one.
pub(crate) struct UserTweets {
    pub(crate) pool: PgPool,
}

impl Job for UserTweets {
    type Args = String;
    type Value = Vec<Tweet>;
    type Error = sqlx::Error;

    fn name(&self) -> &str {
        "user_tweets"
    }

    fn policy(&self) -> Policy {
        Policy::default()
            .lifetime(Duration::from_secs(30))
            .stale_ttl(Duration::from_secs(3600))
    }

    async fn fetch(&self, user: String) -> Result<Vec<Tweet>, sqlx::Error> {
        db::latest(&self.pool, &user).await
    }
}
