//! The database: one `tweets` table, a few rows to start with, and the two queries the
//! service makes. Plain `sqlx` at run time (no compile-time checked queries, so the example
//! builds without a database).

use serde::{Deserialize, Serialize};
use sqlx::PgPool;

/// One row of `tweets`, as the JSON endpoint shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Tweet {
    pub(crate) id: i64,
    pub(crate) body: String,
}

/// Creates the table and writes a first tweet for alice and bob.
pub(crate) async fn migrate(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query(
        "CREATE TABLE tweets (
            id BIGSERIAL PRIMARY KEY,
            username TEXT NOT NULL,
            body TEXT NOT NULL
        )",
    )
    .execute(pool)
    .await?;
    sqlx::query("CREATE INDEX tweets_by_user ON tweets (username, id)")
        .execute(pool)
        .await?;
    for user in ["alice", "bob"] {
        insert(pool, user, &format!("hello, I am {user}")).await?;
    }
    Ok(())
}

/// A user's latest tweets, newest first: the slow query the cache stands in front of.
pub(crate) async fn latest(pool: &PgPool, user: &str) -> Result<Vec<Tweet>, sqlx::Error> {
    let rows: Vec<(i64, String)> =
        sqlx::query_as("SELECT id, body FROM tweets WHERE username = $1 ORDER BY id DESC LIMIT 20")
            .bind(user)
            .fetch_all(pool)
            .await?;
    Ok(rows
        .into_iter()
        .map(|(id, body)| Tweet { id, body })
        .collect())
}

/// Writes a tweet; returns its id.
pub(crate) async fn insert(pool: &PgPool, user: &str, body: &str) -> Result<i64, sqlx::Error> {
    let (id,): (i64,) =
        sqlx::query_as("INSERT INTO tweets (username, body) VALUES ($1, $2) RETURNING id")
            .bind(user)
            .bind(body)
            .fetch_one(pool)
            .await?;
    Ok(id)
}
