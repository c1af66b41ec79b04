//! Runtime behaviour of the `#[cacheback]` attribute (its compile errors are tested in the
//! `cacheback-macros` crate, `tests/ui.rs`).
//!
//! A client's in-process worker runs on the Tokio runtime that built it, and every
//! `#[tokio::test]` has its own runtime. So each test has its own `#[cacheback]` fns: those that
//! need background refreshes get a client with a worker, built lazily (the `client = ...`
//! expression runs on the first call, inside that test's runtime); the others get a client
//! without a worker, which any runtime can use.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};
use std::time::Duration;

use cacheback::clock::TestClock;
use cacheback::{Cacheback, Error, Policy, Status, cacheback};
use serde::{Deserialize, Serialize};

/// A client with no background worker, usable from any test.
fn client_without_worker() -> Cacheback {
    Cacheback::builder()
        .clock(TestClock::new())
        .in_process_worker(false)
        .build()
        .expect("client")
}

/// A client whose in-process worker runs on the runtime of the caller.
fn client_with_worker(clock: &TestClock) -> Cacheback {
    Cacheback::builder()
        .clock(clock.clone())
        .build()
        .expect("client")
}

/// Reads until the value appears, letting paused Tokio time run the worker in between.
async fn until_some<T, Fut>(mut read: impl FnMut() -> Fut) -> T
where
    Fut: Future<Output = Option<T>>,
{
    for _ in 0..100 {
        if let Some(value) = read().await {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the value never appeared");
}

// --- The example from the macro's docs, compiled and run. ---

/// A tweet, as the slow API returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tweet {
    /// Who wrote it.
    pub author: String,
    /// What it says.
    pub text: String,
}

/// What the slow API fails with.
#[derive(Debug)]
pub struct TwitterError;

impl std::fmt::Display for TwitterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("twitter is down")
    }
}

impl std::error::Error for TwitterError {}

static TWEET_CLOCK: LazyLock<TestClock> = LazyLock::new(TestClock::new);
static TWEET_FETCHES: AtomicUsize = AtomicUsize::new(0);

/// The user's tweets: served from cache, refreshed in the background.
#[cacheback(
    lifetime = "30s",
    fetch_on_miss = false,
    client = client_with_worker(&TWEET_CLOCK)
)]
pub async fn user_tweets(user: String) -> Result<Vec<Tweet>, TwitterError> {
    let n = TWEET_FETCHES.fetch_add(1, Ordering::SeqCst) + 1;
    Ok(vec![Tweet {
        text: format!("post number {n}"),
        author: user,
    }])
}

/// The args of `user_tweets::job()`'s methods: a one-parameter fn's job takes the parameter
/// itself.
fn bob() -> String {
    "bob".to_owned()
}

#[tokio::test(start_paused = true)]
async fn without_fetch_on_miss_a_miss_is_none_until_the_worker_fetched() {
    let first: Option<Arc<Vec<Tweet>>> = user_tweets("bob".into()).await.unwrap();
    assert_eq!(first, None);
    let tweets = until_some(|| async { user_tweets("bob".into()).await.unwrap() }).await;
    assert_eq!(tweets[0].text, "post number 1");
    assert_eq!(tweets[0].author, "bob");
    assert_eq!(TWEET_FETCHES.load(Ordering::SeqCst), 1);

    // `set` stores without fetching.
    let manual = vec![Tweet {
        author: "bob".into(),
        text: "set by hand".into(),
    }];
    user_tweets::job().set(bob(), manual.clone()).await.unwrap();
    let read = user_tweets("bob".into()).await.unwrap().unwrap();
    assert_eq!(*read, manual);
    assert_eq!(TWEET_FETCHES.load(Ordering::SeqCst), 1);

    // `invalidate` keeps serving the old value while one refresh runs.
    assert!(user_tweets::job().invalidate(bob()).await.unwrap());
    let lookup = user_tweets::job().get_with_status(bob()).await.unwrap();
    assert_eq!(lookup.status, Status::Stale);
    assert_eq!(*lookup.value.unwrap(), manual);
    let refreshed = until_some(|| async {
        let value = user_tweets("bob".into()).await.unwrap()?;
        (*value != manual).then_some(value)
    })
    .await;
    assert_eq!(refreshed[0].text, "post number 2");
    assert_eq!(TWEET_FETCHES.load(Ordering::SeqCst), 2);

    // Past its 30 s lifetime the value is stale, and served as such.
    TWEET_CLOCK.advance(Duration::from_secs(31));
    let lookup = user_tweets::job().get_with_status(bob()).await.unwrap();
    assert_eq!(lookup.status, Status::Stale);

    // `delete` removes the value: the next read is a miss again.
    user_tweets::job().delete(bob()).await.unwrap();
    assert!(user_tweets::job().peek(bob()).await.unwrap().is_none());
    assert_eq!(user_tweets("bob".into()).await.unwrap(), None);
}

// --- fetch_on_miss (the default): a miss fetches once, then hits. ---

static SQUARES: AtomicUsize = AtomicUsize::new(0);

#[cacheback(client = client_without_worker())]
async fn square(n: u64) -> Result<u64, std::io::Error> {
    SQUARES.fetch_add(1, Ordering::SeqCst);
    Ok(n * n)
}

#[tokio::test(start_paused = true)]
async fn a_miss_fetches_once_then_hits() {
    let value: Arc<u64> = square(3).await.unwrap();
    assert_eq!(*value, 9);
    assert_eq!(*square(3).await.unwrap(), 9);
    assert_eq!(SQUARES.load(Ordering::SeqCst), 1);
    let lookup = square::job().get_with_status(3).await.unwrap();
    assert_eq!(lookup.status, Status::Hit);

    // Other args are another key, fetched on their own.
    assert_eq!(*square(4).await.unwrap(), 16);
    assert_eq!(SQUARES.load(Ordering::SeqCst), 2);
    let job = square::job();
    assert_ne!(job.key(&3).unwrap(), job.key(&4).unwrap());
}

// --- Functions that cannot fail, and functions that do. ---

static GREETINGS: AtomicUsize = AtomicUsize::new(0);

#[cacheback(client = client_without_worker(), name = "tests.greeting")]
async fn greeting(name: String, excited: bool) -> String {
    GREETINGS.fetch_add(1, Ordering::SeqCst);
    format!("hello {name}{}", if excited { "!" } else { "" })
}

#[tokio::test(start_paused = true)]
async fn a_fn_without_result_caches_its_return_value() {
    assert_eq!(*greeting("ann".into(), true).await.unwrap(), "hello ann!");
    assert_eq!(*greeting("ann".into(), false).await.unwrap(), "hello ann");
    assert_eq!(*greeting("ann".into(), true).await.unwrap(), "hello ann!");
    assert_eq!(GREETINGS.load(Ordering::SeqCst), 2);
    assert_eq!(greeting::job().name(), "tests.greeting");
}

#[cacheback(client = client_without_worker())]
async fn always_fails() -> Result<u32, TwitterError> {
    Err(TwitterError)
}

#[tokio::test(start_paused = true)]
async fn a_failed_fetch_is_a_fetch_error_with_its_source() {
    match always_fails().await {
        Err(Error::Fetch { job, source }) => {
            assert_eq!(&*job, always_fails::job().name());
            assert_eq!(source.to_string(), "twitter is down");
        }
        other => panic!("expected a fetch error, got {other:?}"),
    }
    // Nothing was stored; a fn without parameters has `()` as its args.
    assert!(always_fails::job().peek(()).await.unwrap().is_none());
}

// --- Names, visibility, policy and clients. ---

mod nested {
    use super::client_without_worker;
    use cacheback::cacheback;

    /// Public, in a nested module.
    #[cacheback(client = client_without_worker())]
    pub async fn answer() -> u32 {
        42
    }
}

static STATIC_CLIENT: OnceLock<Cacheback> = OnceLock::new();

fn static_client() -> &'static Cacheback {
    STATIC_CLIENT.get_or_init(client_without_worker)
}

#[cacheback(
    name = "tests.everything",
    lifetime = "1h30m",
    stale_ttl = "2d",
    refresh_timeout = "90s",
    fetch_timeout = "500ms",
    stale_threshold = "10m",
    stale_if_error = "1h",
    fetch_on_miss = true,
    fleet_coalescing = true,
    early_refresh = 1.5,
    jitter = 0.25,
    queue = "reports",
    schema_version = 3,
    client = static_client()
)]
pub(crate) async fn everything(
    a: u32,
    b: String,
    mut c: Vec<u8>,
) -> Result<(u32, String, usize), std::io::Error> {
    c.push(0);
    Ok((a, b, c.len()))
}

#[tokio::test(start_paused = true)]
async fn the_name_defaults_to_the_module_path() {
    assert_eq!(square::job().name(), "macros::square");
    assert_eq!(
        square::job().name(),
        concat!(module_path!(), "::", "square")
    );
    assert_eq!(nested::answer::job().name(), "macros::nested::answer");
    assert_eq!(*nested::answer().await.unwrap(), 42);
}

#[tokio::test(start_paused = true)]
async fn every_argument_reaches_the_policy() {
    let expected = Policy::default()
        .lifetime(Duration::from_secs(5400))
        .stale_ttl(Duration::from_secs(2 * 86_400))
        .refresh_timeout(Duration::from_secs(90))
        .fetch_timeout(Duration::from_millis(500))
        .stale_threshold(Duration::from_secs(600))
        .stale_if_error(Duration::from_secs(3600))
        .fetch_on_miss(true)
        .fleet_coalescing(true)
        .early_refresh(1.5)
        .jitter(0.25)
        .queue("reports")
        .schema_version(3);
    assert_eq!(everything::job().policy(), &expected);
    assert_eq!(everything::job().name(), "tests.everything");
    let value = everything(7, "x".into(), vec![1, 2]).await.unwrap();
    assert_eq!(*value, (7, "x".to_owned(), 3));
    // The job was registered with the `&'static Cacheback` the expression returned.
    assert!(
        static_client()
            .job_names()
            .iter()
            .any(|name| &**name == "tests.everything")
    );
}

#[cacheback]
async fn on_the_global_client() -> String {
    "global".to_owned()
}

/// Log lines captured by a test's own subscriber.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn without_client_the_global_client_is_used_and_its_default_is_loud() {
    // The only test here on the global client, so its first use happens below, on this thread.
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    assert_eq!(*on_the_global_client().await.unwrap(), "global");
    let name = on_the_global_client::job().name().to_owned();
    assert!(
        cacheback::__private::global()
            .job_names()
            .iter()
            .any(|n| **n == *name)
    );

    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let warnings: Vec<&str> = logs.lines().filter(|l| l.contains("WARN")).collect();
    assert_eq!(
        warnings.len(),
        1,
        "one warning, however often it is used: {logs}"
    );
    for says in [
        "cacheback::global",
        "private in-memory client",
        "cacheback::set_global(client)",
        "client = ...",
    ] {
        assert!(warnings[0].contains(says), "{says:?} missing from {logs}");
    }
}

#[cacheback(client = client_without_worker())]
async fn cube(n: u64) -> u64 {
    n * n * n
}

#[tokio::test(start_paused = true)]
async fn cached_fns_are_send() {
    // Handlers in axum and friends need `Send` futures.
    let task = tokio::spawn(cube(3));
    assert_eq!(*task.await.unwrap().unwrap(), 27);
}

#[tokio::test(start_paused = true)]
async fn a_fetching_read_has_a_value_whatever_the_policy_says() {
    // The generated code of a fn that expects a value reads with `get`, which fetches a miss
    // even when the job's policy says `fetch_on_miss = false`: there is no value-less answer.
    let client = client_without_worker();
    let handle = client.job(cacheback::job_fn(
        "tests.no_fetch_on_miss",
        Policy::default().fetch_on_miss(false),
        |n: u32| async move { Ok::<_, std::io::Error>(n) },
    ));
    let value = cacheback::__private::get_fetched(&handle, 1).await.unwrap();
    assert_eq!(*value, 1);
    assert_eq!(handle.get_cached(2).await.unwrap(), None);
}

// --- Dependencies: lent to the body by the job, never part of the key. ---

/// A stand-in for a database pool: not serializable, not part of any key, counts its queries.
#[derive(Debug)]
pub struct FakePool {
    name: &'static str,
    queries: AtomicUsize,
}

impl FakePool {
    fn new(name: &'static str) -> Arc<FakePool> {
        Arc::new(FakePool {
            name,
            queries: AtomicUsize::new(0),
        })
    }

    fn query(&self, id: u64) -> String {
        let n = self.queries.fetch_add(1, Ordering::SeqCst) + 1;
        format!("user {id} from {} (query {n})", self.name)
    }

    fn queries(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }
}

static USER_CLOCK: LazyLock<TestClock> = LazyLock::new(TestClock::new);

#[cacheback(client = client_with_worker(&USER_CLOCK))]
async fn user(#[dep] db: &Arc<FakePool>, id: u64) -> Result<String, std::io::Error> {
    Ok(db.query(id))
}

#[tokio::test(start_paused = true)]
async fn a_dependency_is_given_once_and_lent_to_every_fetch() {
    // Before `init`, reads and `job()` say what to call instead of panicking.
    for error in [user(1).await.unwrap_err(), user::job().unwrap_err()] {
        let Error::Config { message } = &error else {
            panic!("expected a config error, got {error:?}");
        };
        assert!(message.contains("fn `user`"), "{message}");
        assert!(message.contains("call `user::init(db)`"), "{message}");
    }

    let pool = FakePool::new("primary");
    let handle = user::init(Arc::clone(&pool)).unwrap();
    assert_eq!(*user(1).await.unwrap(), "user 1 from primary (query 1)");
    assert_eq!(*user(1).await.unwrap(), "user 1 from primary (query 1)");
    assert_eq!(pool.queries(), 1);

    // The key holds the one key argument only, and `job()` takes it without a tuple.
    let job = user::job().unwrap();
    assert_eq!(job.key(&1).unwrap(), handle.key(&1).unwrap());
    assert_eq!(job.get_with_status(1).await.unwrap().status, Status::Hit);

    // The worker's refresh borrows the same pool: the dependency lives in the registered job.
    assert!(job.invalidate(1).await.unwrap());
    let refreshed = until_some(|| async {
        let value = user(1).await.unwrap();
        value.contains("query 2").then_some(value)
    })
    .await;
    assert_eq!(*refreshed, "user 1 from primary (query 2)");
    assert_eq!(pool.queries(), 2);

    // A second `init` is refused: its pool would never be used.
    let error = user::init(FakePool::new("replica")).unwrap_err();
    assert!(matches!(&error, Error::Config { message } if message.contains("called again")));
    assert_eq!(*user(2).await.unwrap(), "user 2 from primary (query 3)");
}

/// Several dependencies, between key arguments, on a fn that cannot fail.
#[cacheback(client = client_without_worker())]
async fn signed(
    #[dep] db: &Arc<FakePool>,
    id: u64,
    #[dep] signature: &String,
    loud: bool,
) -> String {
    let text = format!("{} {signature}", db.query(id));
    if loud { text.to_uppercase() } else { text }
}

/// Dependencies only: the job's args are `()`.
#[cacheback(client = client_without_worker(), fetch_on_miss = false)]
async fn pool_name(#[dep] db: &Arc<FakePool>) -> String {
    db.name.to_owned()
}

#[tokio::test(start_paused = true)]
async fn dependencies_anywhere_leave_the_other_arguments_as_the_key() {
    let pool = FakePool::new("db");
    signed::init(Arc::clone(&pool), "-- ann".to_owned()).unwrap();
    assert_eq!(
        *signed(7, false).await.unwrap(),
        "user 7 from db (query 1) -- ann"
    );
    assert_eq!(
        *signed(7, true).await.unwrap(),
        "USER 7 FROM DB (QUERY 2) -- ANN"
    );
    let refreshed = signed::job().unwrap().refresh((7, false)).await.unwrap();
    assert_eq!(*refreshed, "user 7 from db (query 3) -- ann");
    assert_eq!(pool.queries(), 3);

    let handle = pool_name::init(pool).unwrap();
    assert_eq!(pool_name().await.unwrap(), None);
    assert_eq!(*handle.refresh(()).await.unwrap(), "db");
    assert_eq!(*pool_name().await.unwrap().unwrap(), "db");
}

// --- tags = ...: from format strings over the key arguments, or from a fn. ---

static TAGGED_FETCHES: AtomicUsize = AtomicUsize::new(0);

/// One page of a user's orders, tagged with the user (format strings see the key arguments).
#[cacheback(client = client_without_worker(), tags = ["user:{user}", "orders", "page:{user}:{page}"])]
async fn orders_page(user: u64, page: u32) -> Vec<String> {
    TAGGED_FETCHES.fetch_add(1, Ordering::SeqCst);
    vec![format!("order of {user} on page {page}")]
}

/// An order, tagged from its value (a closure that captures nothing is given the key argument
/// and the value by reference).
#[cacheback(
    client = client_without_worker(),
    tags = |id, order| cacheback::Tags::new().with(format!("order:{id}")).with(format!("customer:{}", order.1))
)]
async fn order(id: u64) -> (String, u64) {
    (format!("order {id}"), id % 2)
}

/// The same, with a named fn.
fn invoice_tags(id: &u64, total: &u64) -> cacheback::Tags {
    cacheback::Tags::new().with(format!("invoice:{id}:{}", total / 100))
}

#[cacheback(client = client_without_worker(), tags = invoice_tags)]
async fn invoice(id: u64) -> u64 {
    id * 150
}

#[tokio::test(start_paused = true)]
async fn tags_from_format_strings_and_fns_reach_the_entries() {
    use cacheback::Job as _;

    let job = orders_page::job();
    assert_eq!(
        job.job().tags(&(7, 2), &vec![]).iter().collect::<Vec<_>>(),
        ["user:7", "orders", "page:7:2"]
    );
    orders_page(7, 1).await.unwrap();
    orders_page(7, 2).await.unwrap();
    orders_page(8, 1).await.unwrap();
    assert_eq!(TAGGED_FETCHES.load(Ordering::SeqCst), 3);
    // Every page of user 7, and nothing else, is gone at once.
    job.client().delete_tag("user:7").await.unwrap();
    for (user, page, kept) in [(7, 1, false), (7, 2, false), (8, 1, true)] {
        let peeked = job.peek((user, page)).await.unwrap();
        assert_eq!(peeked.is_some(), kept, "user {user} page {page}");
    }
    orders_page(7, 1).await.unwrap();
    assert_eq!(TAGGED_FETCHES.load(Ordering::SeqCst), 4);

    let order_job = order::job();
    assert_eq!(
        order_job
            .job()
            .tags(&3, &("order 3".to_owned(), 1))
            .iter()
            .collect::<Vec<_>>(),
        ["order:3", "customer:1"]
    );
    order(3).await.unwrap();
    order(4).await.unwrap();
    order_job
        .client()
        .invalidate_tag("customer:1")
        .await
        .unwrap();
    let stale = order_job.get_with_status(3).await.unwrap();
    assert_eq!(stale.status, Status::Stale, "order 3 is customer 1's");
    let fresh = order_job.get_with_status(4).await.unwrap();
    assert_eq!(fresh.status, Status::Hit, "order 4 is customer 0's");

    assert_eq!(
        invoice::job()
            .job()
            .tags(&2, &300)
            .iter()
            .collect::<Vec<_>>(),
        ["invoice:2:3"]
    );
}
