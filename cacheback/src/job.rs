//! Jobs: named, typed computations `Args -> Value` with a refresh policy.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::BoxError;
use crate::policy::{Lifespan, Policy};
use crate::tags::Tags;

/// A named, typed computation whose results cacheback caches and refreshes.
///
/// The Rust form of django-cacheback's `Job` class. Its [`name`](Job::name) is what web
/// processes and workers agree on: keep it stable across builds and deploys (never derive it
/// from a Rust type name).
///
/// ```
/// use cacheback::{Job, Policy};
/// use std::time::Duration;
///
/// struct UserTweets;
///
/// impl Job for UserTweets {
///     type Args = String;
///     type Value = Vec<String>;
///     type Error = std::io::Error;
///
///     fn name(&self) -> &str {
///         "user_tweets"
///     }
///
///     fn policy(&self) -> Policy {
///         Policy::default().lifetime(Duration::from_secs(30))
///     }
///
///     async fn fetch(&self, user: String) -> Result<Vec<String>, std::io::Error> {
///         Ok(vec![format!("hello from {user}")])
///     }
/// }
/// ```
pub trait Job: Send + Sync + 'static {
    /// The arguments that identify one cached value. They are hashed into the key and travel to
    /// workers encoded with the client's codec.
    type Args: Serialize + DeserializeOwned + Clone + Send + Sync + 'static;
    /// The cached value.
    type Value: Serialize + DeserializeOwned + Send + Sync + 'static;
    /// What `fetch` fails with.
    type Error: Into<BoxError> + Send + 'static;

    /// The job's stable name: printable ASCII without whitespace, `{` or `}`, at most 128 bytes.
    fn name(&self) -> &str;

    /// The refresh policy. Called once, when the job is registered with a client.
    fn policy(&self) -> Policy {
        Policy::default()
    }

    /// Computes the value for `args`: the slow call being cached.
    fn fetch(
        &self,
        args: Self::Args,
    ) -> impl Future<Output = Result<Self::Value, Self::Error>> + Send;

    /// Computes the values of many args in one call, for the misses of
    /// [`JobHandle::get_many`](crate::JobHandle::get_many) (with
    /// [`Policy::fetch_on_miss`]): override it when the upstream answers a list in one request
    /// (one SQL `WHERE id = ANY($1)`, one batch API call) instead of one per item.
    ///
    /// Returns one result per args, in the order given; a list of another length fails every
    /// key of the batch. The batch runs under one [`Policy::fetch_timeout`], and a panic fails
    /// all of it. Keys of the batch that another read of this process is fetching already are
    /// not asked for again, and reads of the batch's keys that come while it runs wait for it.
    /// By default each args is fetched with [`fetch`](Self::fetch), all at the same time.
    ///
    /// ```
    /// use cacheback::Job;
    ///
    /// struct Users;
    ///
    /// impl Job for Users {
    ///     type Args = u64;
    ///     type Value = String;
    ///     type Error = std::io::Error;
    ///
    ///     fn name(&self) -> &str {
    ///         "user"
    ///     }
    ///
    ///     async fn fetch(&self, id: u64) -> Result<String, std::io::Error> {
    ///         Ok(format!("user {id}"))
    ///     }
    ///
    ///     async fn fetch_many(&self, ids: Vec<u64>) -> Vec<Result<String, std::io::Error>> {
    ///         // One round trip to the upstream for the whole list.
    ///         ids.into_iter().map(|id| Ok(format!("user {id}"))).collect()
    ///     }
    /// }
    /// ```
    fn fetch_many(
        &self,
        args: Vec<Self::Args>,
    ) -> impl Future<Output = Vec<Result<Self::Value, Self::Error>>> + Send {
        futures_util::future::join_all(args.into_iter().map(|args| self.fetch(args)))
    }

    /// How long one fetched `value` lives: by default the policy's
    /// [`lifespan`](Policy::lifespan) for every value. Override it when the value says itself
    /// how long it may be served: an HTTP response's `Cache-Control`, a token's expiry. Called
    /// each time a fetched (or `set`) value is written, and when a failed refresh applies
    /// [`Lifespan::stale_if_error`]; the policy's jitter still applies to the lifetime.
    ///
    /// ```
    /// use cacheback::{Job, Lifespan, Policy};
    /// use std::time::Duration;
    ///
    /// struct Token;
    ///
    /// impl Job for Token {
    ///     type Args = String;
    ///     type Value = (String, u64); // the token and how long it is valid, in seconds
    ///     type Error = std::io::Error;
    ///
    ///     fn name(&self) -> &str {
    ///         "token"
    ///     }
    ///
    ///     async fn fetch(&self, user: String) -> Result<(String, u64), std::io::Error> {
    ///         Ok((format!("token-of-{user}"), 300))
    ///     }
    ///
    ///     fn lifespan(&self, value: &(String, u64), _policy: &Policy) -> Lifespan {
    ///         // Fresh for half its validity, then served while one refresh runs.
    ///         let valid = Duration::from_secs(value.1);
    ///         Lifespan::new(valid / 2, valid / 2)
    ///     }
    /// }
    /// ```
    fn lifespan(&self, value: &Self::Value, policy: &Policy) -> Lifespan {
        let _ = value;
        policy.lifespan()
    }

    /// The tags of one fetched (or `set`) value, from its args and/or the value itself: by
    /// default none. [`Cacheback::invalidate_tag`](crate::Cacheback::invalidate_tag) and
    /// [`delete_tag`](crate::Cacheback::delete_tag) act on every entry carrying a tag, of
    /// every job of the client's prefix. Called each time a value is written, so a refreshed
    /// value carries the tags of the new value. A value whose tags are invalid (see [`Tags`])
    /// is not cached.
    ///
    /// ```
    /// use cacheback::{Job, Tags};
    ///
    /// struct Order;
    ///
    /// impl Job for Order {
    ///     type Args = u64; // the order id
    ///     type Value = (u64, String); // its customer id and its summary
    ///     type Error = std::io::Error;
    ///
    ///     fn name(&self) -> &str {
    ///         "order"
    ///     }
    ///
    ///     async fn fetch(&self, id: u64) -> Result<(u64, String), std::io::Error> {
    ///         Ok((42, format!("order {id}")))
    ///     }
    ///
    ///     fn tags(&self, id: &u64, value: &(u64, String)) -> Tags {
    ///         // `invalidate_tag("customer:42")` then reaches every order of customer 42.
    ///         Tags::new().with(format!("order:{id}")).with(format!("customer:{}", value.0))
    ///     }
    /// }
    /// ```
    fn tags(&self, args: &Self::Args, value: &Self::Value) -> Tags {
        let _ = (args, value);
        Tags::new()
    }
}

/// A [`Job`] made from a name, a policy and an async closure. Build it with [`job_fn`].
pub struct FnJob<A, V, E, F> {
    name: String,
    policy: Policy,
    fetch: F,
    _types: PhantomData<fn(A) -> (V, E)>,
}

impl<A, V, E, F> fmt::Debug for FnJob<A, V, E, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FnJob")
            .field("name", &self.name)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// Makes a [`Job`] from an async closure.
///
/// ```
/// use cacheback::{Policy, job_fn};
/// use std::time::Duration;
///
/// let square = job_fn(
///     "square",
///     Policy::default().lifetime(Duration::from_secs(60)),
///     |n: u64| async move { Ok::<_, std::io::Error>(n * n) },
/// );
/// # let _ = square;
/// ```
pub fn job_fn<A, V, E, F, Fut>(
    name: impl Into<String>,
    policy: Policy,
    fetch: F,
) -> FnJob<A, V, E, F>
where
    F: Fn(A) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<V, E>> + Send,
{
    FnJob {
        name: name.into(),
        policy,
        fetch,
        _types: PhantomData,
    }
}

impl<A, V, E, F, Fut> Job for FnJob<A, V, E, F>
where
    A: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    E: Into<BoxError> + Send + 'static,
    F: Fn(A) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<V, E>> + Send,
{
    type Args = A;
    type Value = V;
    type Error = E;

    fn name(&self) -> &str {
        &self.name
    }

    fn policy(&self) -> Policy {
        self.policy.clone()
    }

    fn fetch(&self, args: A) -> impl Future<Output = Result<V, E>> + Send {
        (self.fetch)(args)
    }
}
