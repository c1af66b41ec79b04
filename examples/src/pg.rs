//! A throwaway PostgreSQL database for the `service` example and its tests: created on the
//! server at `$CACHEBACK_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`,
//! trust auth) as `cb_<name>_<random>`, dropped when the [`Database`] is dropped.
//!
//! Without a reachable server, [`Database::create`] skips with a loud message (`None`),
//! unless `CACHEBACK_REQUIRE_POSTGRES=1`, where it panics: CI must not skip.

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection};

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A database of its own, dropped with this value.
#[derive(Debug)]
pub struct Database {
    /// A pool of connections to it.
    pub pool: PgPool,
    name: String,
    admin: PgConnectOptions,
}

fn admin_url() -> String {
    std::env::var("CACHEBACK_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

impl Database {
    /// Creates `cb_<name>_<random>` and connects a pool to it; `None` (after saying so on
    /// stderr) when no server answers and `CACHEBACK_REQUIRE_POSTGRES` is not `1`.
    pub async fn create(name: &str) -> Option<Database> {
        match Self::try_create(name).await {
            Ok(db) => Some(db),
            Err(e) if std::env::var("CACHEBACK_REQUIRE_POSTGRES").as_deref() == Ok("1") => {
                panic!("CACHEBACK_REQUIRE_POSTGRES=1 but PostgreSQL is not usable: {e}")
            }
            Err(e) => {
                eprintln!(
                    "\n*** SKIPPED: no usable PostgreSQL at {} ({e}); set CACHEBACK_POSTGRES_URL, \
                     or CACHEBACK_REQUIRE_POSTGRES=1 to make this a failure ***\n",
                    admin_url()
                );
                None
            }
        }
    }

    async fn try_create(name: &str) -> Result<Database, sqlx::Error> {
        if !name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
            return Err(sqlx::Error::Configuration(
                format!("database name `{name}`: lowercase letters and `_` only").into(),
            ));
        }
        let admin: PgConnectOptions = admin_url().parse()?;
        let name = format!("cb_{name}_{:08x}", fastrand::u32(..));
        let mut conn = admin.connect().await?;
        // The name is ours: `cb_`, the caller's lowercase word, hex digits.
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await?;
        conn.close().await?;
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .connect_with(admin.clone().database(&name))
            .await?;
        Ok(Database { pool, name, admin })
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        // Drop runs outside async code: a thread of its own, with a runtime of its own.
        let (admin, name) = (self.admin.clone(), self.name.clone());
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let mut conn = admin.connect().await?;
                sqlx::query(AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .execute(&mut conn)
                .await?;
                conn.close().await
            })?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop database {}: {dropped:?}", self.name);
        }
    }
}
