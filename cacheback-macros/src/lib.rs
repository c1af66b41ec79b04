//! The `#[cacheback]` attribute macro. Use it through the `cacheback` crate
//! (`cacheback::cacheback`, feature `macros`, on by default); the generated code refers to
//! `::cacheback` only, so this crate is never a direct dependency.

mod args;
mod duration;
mod expand;

use proc_macro::TokenStream;

/// Caches an `async fn`: every call is answered from the cache while refreshes run in the
/// background. The Rust form of django-cacheback's `@cacheback` decorator.
///
/// ```text
/// use cacheback::cacheback;
///
/// /// The user's tweets (doc comments and other attributes stay on the cached fn).
/// #[cacheback(lifetime = "30s", stale_if_error = "1h")]
/// pub async fn user_tweets(user: String) -> Result<Vec<Tweet>, TwitterError> {
///     twitter::timeline(&user).await // the slow call, now run on a miss or in a refresh
/// }
///
/// let tweets: Arc<Vec<Tweet>> = user_tweets("bob".into()).await?;
///
/// // The job behind the fn, for everything else; its methods take the fn's argument.
/// user_tweets::job().invalidate("bob".to_owned()).await?;
/// user_tweets::job().set("bob".to_owned(), vec![]).await?;
/// ```
///
/// The `cacheback` crate's `tests/macros.rs` is a compiled, running version of these examples.
///
/// # What the fn becomes
///
/// The fn keeps its name, visibility, parameters (except [`#[dep]`](#dependencies) ones) and
/// attributes, but now reads through the cache and returns:
///
/// | `fetch_on_miss` | the cached fn returns |
/// |---|---|
/// | `true` (default) | `cacheback::Result<Arc<V>>`: a miss fetches (once per key however many callers wait) |
/// | `false` | `cacheback::Result<Option<Arc<V>>>`: a miss returns `None` at once and queues a refresh |
///
/// where `V` is the value type, taken from the original return type:
///
/// | the fn returns | value `V` | the job's error |
/// |---|---|---|
/// | `Result<V, E>` (any path ending in `Result`, two type arguments) | `V` | `E`, which must implement `Into<cacheback::BoxError> + Send + 'static` |
/// | any other type `T` | `T` | none (`Infallible`) |
/// | nothing | `()` | none |
///
/// A failed fetch surfaces as `Err(cacheback::Error::Fetch { .. })` with the fn's error as its
/// `source()`. A one-argument alias such as `anyhow::Result<T>` or `io::Result<T>` is rejected:
/// write `Result<T, anyhow::Error>` so that the macro can see the error type.
///
/// Next to the fn, a module of the same name holds `job()`, the
/// `cacheback::JobHandle` of the fn's job, for `set`, `invalidate`, `refresh`,
/// `refresh_async`, `delete`, `peek`, `get_with_status` and `refresh_many`. Its methods take
/// the fn's arguments, which make the key, in the form of the job's `Args`:
///
/// | the fn's parameters | `Args` | for example |
/// |---|---|---|
/// | none | `()` | `job().refresh(())` |
/// | one, `id: u64` | `u64`, the argument itself | `job().invalidate(42)` |
/// | several, `year: u16, region: String` | a tuple, `(u16, String)` | `job().peek((2024, "emea".to_owned()))` |
///
/// ```text
/// #[cacheback]
/// async fn report(year: u16, region: String) -> Result<Report, sqlx::Error> { ... }
///
/// report::job().refresh((2024, "emea".to_owned())).await?;     // warm one key now
/// let peek = report::job().peek((2024, "emea".to_owned())).await?;
/// ```
///
/// The args are hashed into the stored key, so changing a fn's parameters changes its keys.
///
/// # Dependencies
///
/// A fetch often needs something that is not what it is about: a database pool, an HTTP
/// client. Mark such a parameter `#[dep]` and take it by shared reference:
///
/// ```text
/// #[cacheback(lifetime = "5m")]
/// pub async fn user(#[dep] db: &PgPool, id: u64) -> Result<User, sqlx::Error> {
///     sqlx::query_as("select * from users where id = $1").bind(id as i64).fetch_one(db).await
/// }
///
/// // At start-up, in every process that calls `user` or runs its refreshes (web and worker):
/// user::init(pool.clone())?;
///
/// let bob = user(42).await?;            // the cached fn takes the key arguments only
/// user::job()?.invalidate(42).await?;   // and so do the job's methods
/// ```
///
/// - A dependency is not part of the key: the cached fn and the job's methods leave it out
///   (`user(42)`, not `user(&pool, 42)`), and its type needs no serde, `Clone` or `Debug`, only
///   `Send + Sync + 'static`.
/// - `user::init(pool)` gives the `PgPool`, by value, to the fn's job and registers the job with
///   its client (the one of `client = ...`, evaluated then). The job owns it and lends `&PgPool`
///   to every fetch, a miss in this process as well as a refresh in a worker; a worker runs the
///   fetch with what its own process gave to `init`, so a worker process calls `init` too.
///   Several `#[dep]` parameters, anywhere in the signature, are given to `init` in order.
/// - `init` returns the job's handle, once per process: a second call is an
///   `Err(cacheback::Error::Config)`, since what it was given would never be used.
/// - Until `init` ran, the cached fn and `job()` (which returns a `cacheback::Result` for such a
///   fn) answer `Err(cacheback::Error::Config)` with a message naming the fn and the call to
///   make; neither panics.
///
/// The marker sits on the parameter, rather than in a list in the attribute, so that the
/// signature says where it is read which parameters make the key and which are lent, and the
/// body keeps an ordinary `&PgPool`. The dependency lives in the job registered with the client,
/// not in a static of yours, because that registration is the one step every process (web or
/// worker) must take anyway for the job to run there.
///
/// # Arguments
///
/// All optional. Durations are strings of a number and a unit (`ms`, `s`, `m`, `h`, `d`), or
/// several of them added up: `"500ms"`, `"30s"`, `"10m"`, `"1h"`, `"1d"`, `"1h30m"`. They are
/// checked while your crate compiles.
///
/// | argument | example | default | meaning |
/// |---|---|---|---|
/// | `name` | `name = "tweets.by_user"` | `"<module path>::<fn name>"` | the job's stable name, shared by web processes and workers; set it if the fn may move between modules |
/// | `lifetime` | `lifetime = "30s"` | 10 min | how long a fetched value is Fresh |
/// | `stale_ttl` | `stale_ttl = "1d"` | 1 day | how long past its lifetime a stale value may still be served |
/// | `refresh_timeout` | `refresh_timeout = "1m"` | 60 s | how long one refresh holds the key's claim |
/// | `fetch_timeout` | `fetch_timeout = "10s"` | 30 s | a fetch that takes longer fails |
/// | `stale_threshold` | `stale_threshold = "5m"` | none | values stale by more than this are fetched synchronously instead of served |
/// | `stale_if_error` | `stale_if_error = "1h"` | none | after a failed refresh, keep serving the old value this much longer |
/// | `fetch_on_miss` | `fetch_on_miss = false` | `true` | whether a miss fetches synchronously (see above) |
/// | `fleet_coalescing` | `fleet_coalescing = true` | `false` | on a store shared by a fleet, one synchronous fetch per key across the fleet: other processes wait for its write |
/// | `early_refresh` | `early_refresh = 1.0` | off | XFetch `beta`: Fresh reads may refresh early, more eagerly for larger values |
/// | `jitter` | `jitter = 0.1` | 0 | shorten each lifetime by up to this fraction (0.0 to 1.0) to spread expiries |
/// | `queue` | `queue = "reports"` | `"default"` | the queue this job's refreshes go to |
/// | `schema_version` | `schema_version = 2` | 0 | bump it when the value's encoding changes; older entries read as misses |
/// | `tags` | `tags = ["user:{user}"]` | none | the tags of each value, for `invalidate_tag` and `delete_tag` (see [Tags](#tags)) |
/// | `client` | `client = crate::cache()` | the global client | the `Cacheback` client to register with: any expression of type `Cacheback`, `&Cacheback`, `&'static Cacheback` or `Arc<Cacheback>`, evaluated once, on the first call |
///
/// These map one to one onto `cacheback::Policy`, whose docs describe them in full. The global
/// client is the one installed with `cacheback::set_global(client)` at start-up; if none was,
/// `cacheback::global()` builds a private in-memory one with an in-process worker, on the first
/// call's Tokio runtime, and logs a warning that says so: such a client shares nothing with the
/// other processes of a fleet. Install a configured client with `set_global`, or pass
/// `client = ...` (a Redis store, a test clock, ...):
///
/// ```text
/// static CACHE: OnceLock<Cacheback> = OnceLock::new();
///
/// fn cache() -> &'static Cacheback {
///     CACHE.get_or_init(|| Cacheback::builder().store(redis_store()).build().expect("cache"))
/// }
///
/// #[cacheback(client = cache(), lifetime = "5m", fetch_on_miss = false)]
/// pub async fn exchange_rate(from: Currency, to: Currency) -> Result<f64, RatesError> { ... }
/// ```
///
/// Workers find the job by name: a worker process must register the same job with its client,
/// which calling `exchange_rate::job()` once at start-up does (`init` for a fn with
/// dependencies).
///
/// # Tags
///
/// `tags = ...` gives each value its tags, so that `invalidate_tag` and `delete_tag` on the
/// client reach every entry about one thing at once. Two forms:
///
/// ```text
/// // Format strings over the key arguments, each a `format!` that sees them by name:
/// #[cacheback(tags = ["user:{user}", "orders"])]
/// async fn orders_page(user: u64, page: u32) -> Result<Vec<Order>, DbError> { ... }
///
/// // A fn (or a closure that captures nothing) given each key argument and the value by
/// // reference, returning `cacheback::Tags`; for tags that depend on the value:
/// fn order_tags(id: &u64, order: &Order) -> cacheback::Tags {
///     cacheback::Tags::new().with(format!("order:{id}")).with(format!("customer:{}", order.customer))
/// }
/// #[cacheback(tags = order_tags)]
/// async fn order(id: u64) -> Result<Order, DbError> { ... }
///
/// // Every page of user 42, and every order of customer 7, served stale and refreshed once:
/// orders_page::job().client().invalidate_tag("user:42").await?;
/// order::job().client().invalidate_tag("customer:7").await?;
/// ```
///
/// A tag is printable ASCII without whitespace, `{` or `}`, at most 128 bytes; an entry has at
/// most 32. The literal text of each format string is checked while your crate compiles; a
/// tag that turns out invalid once its arguments are filled in is refused when the value is
/// written (that value is not cached, and the read that fetched it says so).
///
/// # Requirements
///
/// Checked at compile time, each with a message that says what to change:
///
/// - the fn is an `async fn` declared at module level (not a method, not inside a function
///   body: the generated module refers to its siblings through `super::`);
/// - it is not generic and takes no `impl Trait`;
/// - each parameter is a plain `name: Type`, and every type is owned (`String`, not `&str`):
///   arguments are hashed into the key and sent to workers, so they are `Serialize +
///   DeserializeOwned + Clone + Send + Sync + 'static`; so is the value (without `Clone`);
/// - a `#[dep]` parameter is `&T`, without a lifetime, not `&mut T`, where `T` is a sized,
///   concrete type without borrows (for a trait object, `&Arc<dyn Trait>`) that is `Send +
///   Sync + 'static`;
/// - the body is `Send` (workers run it on any thread).
///
/// `#[cfg(...)]` attributes apply to everything generated; `allow`, `warn`, `deny` and `forbid`
/// apply to both the cached fn and the original body, `expect` to the body only; other
/// attributes (docs, `#[deprecated]`, `#[tracing::instrument]`, ...) stay on the cached fn.
#[proc_macro_attribute]
pub fn cacheback(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand::expand(attr.into(), item.into()).into()
}
