//! Refresh policy: the knobs of a job and the pure arithmetic that applies them.
//!
//! Everything here is a pure function of its inputs (time, counts, a random number drawn by the
//! caller), so it is property-tested without a runtime.

use std::borrow::Cow;
use std::time::Duration;

use crate::clock::Timestamp;

/// How a job's values age and how their refreshes behave. Every knob has a default; see each field.
///
/// ```
/// use cacheback::Policy;
/// use std::time::Duration;
///
/// let policy = Policy::default()
///     .lifetime(Duration::from_secs(30))
///     .fetch_on_miss(false)
///     .stale_if_error(Duration::from_secs(3600));
/// assert_eq!(policy.lifetime, Duration::from_secs(30));
/// assert_eq!(policy.refresh_timeout, Duration::from_secs(60));
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Policy {
    /// How long a fetched value is Fresh. Default: 10 minutes.
    pub lifetime: Duration,
    /// How long past `fresh_until` a stale value may still be served. Default: 1 day.
    pub stale_ttl: Duration,
    /// Claim TTL: within it no second refresh of a key is enqueued; after it a lost refresh is
    /// retried by the next reader. Default: 60 s.
    pub refresh_timeout: Duration,
    /// What [`JobHandle::get_with_status`](crate::JobHandle::get_with_status) (and a
    /// `#[cacheback]` fn) does on a miss: fetch synchronously (coalesced) when true; when false
    /// answer with no value at once and enqueue a refresh. Default: true.
    /// [`JobHandle::get`](crate::JobHandle::get) always fetches a miss and
    /// [`JobHandle::get_cached`](crate::JobHandle::get_cached) never does, whatever this says.
    pub fetch_on_miss: bool,
    /// If a value is stale by more than this, fetch synchronously instead of serving it.
    /// Default: none.
    pub stale_threshold: Option<Duration>,
    /// On refresh failure, keep serving the old value this much longer than `stale_ttl` allows.
    /// Default: none.
    pub stale_if_error: Option<Duration>,
    /// A fetch that takes longer fails. Default: 30 s.
    pub fetch_timeout: Duration,
    /// Backoff after failed refreshes. Default: 1 s doubling to 5 min, with jitter.
    pub retry_backoff: Backoff,
    /// Whether a failing synchronous fetch (a miss with `fetch_on_miss`, a value stale beyond
    /// `stale_threshold`) backs off like a failing refresh: the failure is recorded in the
    /// store (shared by the fleet on Redis), and until `retry_after` (per `retry_backoff`)
    /// reads of the key get [`Error::BackingOff`](crate::Error::BackingOff) (or their stale
    /// value) without calling the upstream. A burst of reads of a failing key then costs one
    /// upstream call per backoff window instead of one per read. Default: true.
    pub miss_backoff: bool,
    /// Whether a synchronous fetch (a miss with `fetch_on_miss`, a value stale beyond
    /// `stale_threshold`) on a store shared by a fleet (Redis, memcached) is made once per key
    /// across the fleet rather than once per process: the process that takes the key's claim
    /// fetches, and readers in other processes wait for its write (polling the store, at
    /// most `fetch_timeout`) instead of calling the upstream too. If the fetch fails, the
    /// waiters get [`Error::BackingOff`](crate::Error::BackingOff) under `miss_backoff`;
    /// without it one waiter takes the claim and tries in turn, so with an upstream that
    /// hangs a read can take up to twice `fetch_timeout`. A claim left by a crashed process
    /// expires after `fetch_timeout`. A claim held by a *refresh* also makes readers wait for
    /// that refresh, so this suits jobs whose refreshes run promptly. It costs one claim round trip per
    /// synchronous fetch (it replaces `miss_backoff`'s read of the key's failure state).
    /// No effect on the in-process memory store, where one fetch per key per process is
    /// already one per store, nor on [`get_many`](crate::JobHandle::get_many)'s batch
    /// fetches. Default: false.
    pub fleet_coalescing: bool,
    /// XFetch `beta`: when set, a Fresh read may trigger a refresh early. Default: off.
    pub early_refresh: Option<f64>,
    /// Spread `fresh_until` by up to this fraction of `lifetime` (0.0..=1.0). Default: 0.
    pub jitter: f64,
    /// Which queue (stream) this job's refreshes go to. Default: `"default"`.
    pub queue: Cow<'static, str>,
    /// Version of the value's schema; entries written under another version read as misses.
    /// Bump it when `Value`'s encoding changes. Default: 0.
    pub schema_version: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            lifetime: Duration::from_secs(600),
            stale_ttl: Duration::from_secs(86_400),
            refresh_timeout: Duration::from_secs(60),
            fetch_on_miss: true,
            stale_threshold: None,
            stale_if_error: None,
            fetch_timeout: Duration::from_secs(30),
            retry_backoff: Backoff::default(),
            miss_backoff: true,
            fleet_coalescing: false,
            early_refresh: None,
            jitter: 0.0,
            queue: Cow::Borrowed("default"),
            schema_version: 0,
        }
    }
}

macro_rules! setter {
    ($(#[$doc:meta])* $name:ident: $ty:ty) => {
        $(#[$doc])*
        #[must_use]
        pub fn $name(mut self, value: $ty) -> Self {
            self.$name = value;
            self
        }
    };
}

impl Policy {
    setter!(/// Sets [`Policy::lifetime`].
        lifetime: Duration);
    setter!(/// Sets [`Policy::stale_ttl`].
        stale_ttl: Duration);
    setter!(/// Sets [`Policy::refresh_timeout`].
        refresh_timeout: Duration);
    setter!(/// Sets [`Policy::fetch_on_miss`].
        fetch_on_miss: bool);
    setter!(/// Sets [`Policy::fetch_timeout`].
        fetch_timeout: Duration);
    setter!(/// Sets [`Policy::retry_backoff`].
        retry_backoff: Backoff);
    setter!(/// Sets [`Policy::miss_backoff`].
        miss_backoff: bool);
    setter!(/// Sets [`Policy::fleet_coalescing`].
        fleet_coalescing: bool);
    setter!(/// Sets [`Policy::schema_version`].
        schema_version: u32);

    /// Sets [`Policy::stale_threshold`].
    #[must_use]
    pub fn stale_threshold(mut self, value: Duration) -> Self {
        self.stale_threshold = Some(value);
        self
    }

    /// Sets [`Policy::stale_if_error`].
    #[must_use]
    pub fn stale_if_error(mut self, value: Duration) -> Self {
        self.stale_if_error = Some(value);
        self
    }

    /// Turns on XFetch early refresh with the given `beta` (1.0 is the paper's default; larger
    /// refreshes earlier).
    #[must_use]
    pub fn early_refresh(mut self, beta: f64) -> Self {
        self.early_refresh = Some(beta);
        self
    }

    /// Sets [`Policy::jitter`] (clamped to `0.0..=1.0` by [`Policy::validate`]).
    #[must_use]
    pub fn jitter(mut self, fraction: f64) -> Self {
        self.jitter = fraction;
        self
    }

    /// Sets [`Policy::queue`].
    #[must_use]
    pub fn queue(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.queue = name.into();
        self
    }

    /// Checks that the knobs make sense together.
    pub fn validate(&self) -> Result<(), String> {
        if self.lifetime.is_zero() {
            return Err("lifetime must be greater than zero".into());
        }
        if self.refresh_timeout.is_zero() {
            return Err("refresh_timeout must be greater than zero".into());
        }
        if self.fetch_timeout.is_zero() {
            return Err("fetch_timeout must be greater than zero".into());
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(format!(
                "jitter must be within 0.0..=1.0, got {}",
                self.jitter
            ));
        }
        if let Some(beta) = self.early_refresh
            && !(beta.is_finite() && beta > 0.0)
        {
            return Err(format!("early_refresh beta must be positive, got {beta}"));
        }
        if self.queue.is_empty() {
            return Err("queue name must not be empty".into());
        }
        self.retry_backoff.validate()
    }

    /// The freshness windows of a value fetched at `fetched_at`. `u` is a uniform random number
    /// in `[0, 1)` used for jitter: `fresh_until` is shortened by up to `jitter * lifetime`, never
    /// lengthened, so a jittered entry is never served fresh longer than `lifetime`.
    #[cfg(test)]
    pub(crate) fn windows(&self, fetched_at: Timestamp, u: f64) -> Windows {
        self.windows_of(self.lifespan(), fetched_at, u)
    }

    /// The policy's own [`Lifespan`]: `lifetime`, `stale_ttl` and `stale_if_error`.
    pub fn lifespan(&self) -> Lifespan {
        Lifespan {
            lifetime: self.lifetime,
            stale_ttl: self.stale_ttl,
            stale_if_error: self.stale_if_error,
        }
    }

    /// The windows of a value fetched at `fetched_at` that lives for `lifespan` (the policy's
    /// own, or the one its job gave the value), with the policy's jitter (see `windows`).
    pub(crate) fn windows_of(&self, lifespan: Lifespan, fetched_at: Timestamp, u: f64) -> Windows {
        let jitter = self.jitter.clamp(0.0, 1.0) * u.clamp(0.0, 1.0);
        let lifetime = lifespan.lifetime.mul_f64(1.0 - jitter);
        let fresh_until = fetched_at.saturating_add(lifetime);
        Windows {
            fresh_until,
            stale_until: fresh_until.saturating_add(lifespan.stale_ttl),
        }
    }

    /// Whether a value that turned stale at `fresh_until` is, at `now`, stale by more than
    /// [`Policy::stale_threshold`] (exactly at the threshold it is not).
    pub(crate) fn threshold_exceeded(&self, now: Timestamp, fresh_until: Timestamp) -> bool {
        match self.stale_threshold {
            Some(threshold) => now.since(fresh_until) > threshold,
            None => false,
        }
    }

    /// XFetch: the probability that a Fresh read at `now` triggers an early refresh,
    /// `exp(-(fresh_until - now) / (beta * fetch_duration))`. Zero when early refresh is off or
    /// the fetch duration is unknown (zero).
    pub(crate) fn early_refresh_probability(
        &self,
        now: Timestamp,
        fresh_until: Timestamp,
        fetch_duration: Duration,
    ) -> f64 {
        let Some(beta) = self.early_refresh else {
            return 0.0;
        };
        let scale = beta * fetch_duration.as_secs_f64();
        if scale <= 0.0 || !scale.is_finite() {
            return 0.0;
        }
        let remaining = fresh_until.since(now).as_secs_f64();
        (-remaining / scale).exp()
    }
}

/// How long one fetched value lives: Fresh for `lifetime`, then Stale for `stale_ttl`, and
/// while its refreshes fail, servable `stale_if_error` longer.
///
/// A job's values live for its [`Policy`]'s lifespan ([`Policy::lifespan`]) unless the job
/// gives each value its own with [`Job::lifespan`](crate::Job::lifespan): an HTTP response's
/// `Cache-Control`, a token's expiry.
///
/// ```
/// use cacheback::{Lifespan, Policy};
/// use std::time::Duration;
///
/// let short = Lifespan::new(Duration::from_secs(5), Duration::from_secs(60))
///     .with_stale_if_error(Duration::from_secs(600));
/// assert_eq!(short.stale_if_error, Some(Duration::from_secs(600)));
/// assert_eq!(Policy::default().lifespan().lifetime, Duration::from_secs(600));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Lifespan {
    /// How long the value is Fresh. Zero makes it Stale as soon as it is written.
    pub lifetime: Duration,
    /// How long past `lifetime` the value may be served stale (while one refresh runs).
    pub stale_ttl: Duration,
    /// When a refresh fails, how much longer than `stale_ttl` the value may still be served.
    pub stale_if_error: Option<Duration>,
}

impl Lifespan {
    /// Fresh for `lifetime`, then Stale for `stale_ttl`; no `stale_if_error`.
    pub fn new(lifetime: Duration, stale_ttl: Duration) -> Self {
        Lifespan {
            lifetime,
            stale_ttl,
            stale_if_error: None,
        }
    }

    /// Sets [`Lifespan::stale_if_error`].
    #[must_use]
    pub fn with_stale_if_error(mut self, extra: Duration) -> Self {
        self.stale_if_error = Some(extra);
        self
    }

    /// The `stale_until` that `stale_if_error` allows for an entry whose value turned stale at
    /// `fresh_until`, or `None` when `stale_if_error` is off.
    pub(crate) fn stale_if_error_until(&self, fresh_until: Timestamp) -> Option<Timestamp> {
        self.stale_if_error.map(|extra| {
            fresh_until
                .saturating_add(self.stale_ttl)
                .saturating_add(extra)
        })
    }
}

/// The time windows of one fetched value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Windows {
    /// The value is Fresh before this instant.
    pub fresh_until: Timestamp,
    /// The value is Stale (servable) before this instant, and expired from then on.
    pub stale_until: Timestamp,
}

/// The state of a key at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Freshness {
    /// `now < fresh_until`.
    Fresh,
    /// `fresh_until <= now < stale_until`.
    Stale,
    /// No servable value: `now >= stale_until`, or no entry at all.
    Expired,
}

impl Freshness {
    /// Classifies `now` against an entry's windows.
    pub(crate) fn at(now: Timestamp, fresh_until: Timestamp, stale_until: Timestamp) -> Self {
        if now < fresh_until {
            Freshness::Fresh
        } else if now < stale_until {
            Freshness::Stale
        } else {
            Freshness::Expired
        }
    }
}

/// Exponential backoff with jitter between failed refreshes.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct Backoff {
    /// Delay after the first failure.
    pub initial: Duration,
    /// The delay never grows past this.
    pub max: Duration,
    /// Growth factor per consecutive failure.
    pub multiplier: f64,
    /// When true, each delay is drawn uniformly from `[delay/2, delay]` so that a fleet of
    /// readers does not retry in lockstep.
    pub jitter: bool,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(300),
            multiplier: 2.0,
            jitter: true,
        }
    }
}

impl Backoff {
    /// A backoff from `initial` doubling up to `max`, with jitter.
    pub fn exponential(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max,
            ..Backoff::default()
        }
    }

    /// The same backoff without jitter (deterministic delays).
    #[must_use]
    pub fn without_jitter(mut self) -> Self {
        self.jitter = false;
        self
    }

    fn validate(&self) -> Result<(), String> {
        if self.max < self.initial {
            return Err("retry_backoff max must not be below initial".into());
        }
        if !(self.multiplier.is_finite() && self.multiplier >= 1.0) {
            return Err(format!(
                "retry_backoff multiplier must be at least 1.0, got {}",
                self.multiplier
            ));
        }
        Ok(())
    }

    /// The delay before retrying after `failures` consecutive failures (`failures >= 1`; 0 is
    /// treated as 1). `u` is a uniform random number in `[0, 1)`, used only with jitter.
    pub(crate) fn delay(&self, failures: u32, u: f64) -> Duration {
        let exponent = failures.saturating_sub(1).min(64);
        let factor = self.multiplier.max(1.0).powi(exponent as i32);
        let max = self.max.as_secs_f64();
        let base = (self.initial.as_secs_f64() * factor).min(max);
        let secs = if self.jitter {
            base * (0.5 + 0.5 * u.clamp(0.0, 1.0))
        } else {
            base
        };
        Duration::from_secs_f64(secs.clamp(0.0, max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const T0: Timestamp = Timestamp::from_millis(1_000_000);

    #[test]
    fn defaults_follow_the_spec() {
        let p = Policy::default();
        assert_eq!(p.lifetime, Duration::from_secs(600));
        assert_eq!(p.stale_ttl, Duration::from_secs(86_400));
        assert_eq!(p.refresh_timeout, Duration::from_secs(60));
        assert!(p.fetch_on_miss);
        assert_eq!(p.stale_threshold, None);
        assert_eq!(p.stale_if_error, None);
        assert_eq!(p.fetch_timeout, Duration::from_secs(30));
        assert_eq!(p.retry_backoff.initial, Duration::from_secs(1));
        assert_eq!(p.retry_backoff.max, Duration::from_secs(300));
        assert_eq!(p.early_refresh, None);
        assert_eq!(p.jitter, 0.0);
        assert_eq!(p.queue, "default");
        assert!(p.validate().is_ok());
    }

    #[test]
    fn invalid_policies_are_named() {
        assert!(
            Policy::default()
                .jitter(1.5)
                .validate()
                .unwrap_err()
                .contains("jitter")
        );
        assert!(
            Policy::default()
                .lifetime(Duration::ZERO)
                .validate()
                .unwrap_err()
                .contains("lifetime")
        );
        assert!(
            Policy::default()
                .early_refresh(-1.0)
                .validate()
                .unwrap_err()
                .contains("beta")
        );
    }

    #[test]
    fn threshold_is_strict() {
        let p = Policy::default().stale_threshold(Duration::from_secs(10));
        let fresh_until = T0;
        assert!(!p.threshold_exceeded(T0.saturating_add(Duration::from_secs(10)), fresh_until));
        assert!(p.threshold_exceeded(
            T0.saturating_add(Duration::from_millis(10_001)),
            fresh_until
        ));
        assert!(!Policy::default().threshold_exceeded(Timestamp::MAX, fresh_until));
    }

    #[test]
    fn backoff_doubles_to_the_cap() {
        let b = Backoff::default().without_jitter();
        let secs: Vec<u64> = (1..=12).map(|n| b.delay(n, 0.0).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        assert_eq!(b.delay(0, 0.0), Duration::from_secs(1));
        assert_eq!(b.delay(u32::MAX, 0.0), Duration::from_secs(300));
    }

    proptest! {
        #[test]
        fn windows_are_ordered_and_jitter_only_shortens(
            lifetime_ms in 1u64..10_000_000,
            stale_ms in 0u64..100_000_000,
            jitter in 0.0f64..=1.0,
            u in 0.0f64..1.0,
        ) {
            let p = Policy::default()
                .lifetime(Duration::from_millis(lifetime_ms))
                .stale_ttl(Duration::from_millis(stale_ms))
                .jitter(jitter);
            let w = p.windows(T0, u);
            prop_assert!(w.fresh_until <= T0.saturating_add(p.lifetime));
            prop_assert!(w.fresh_until >= T0.saturating_add(p.lifetime.mul_f64(1.0 - jitter)).saturating_sub(Duration::from_millis(1)));
            prop_assert_eq!(w.stale_until, w.fresh_until.saturating_add(p.stale_ttl));
        }

        #[test]
        fn a_values_own_lifespan_replaces_the_policys_windows(
            lifetime_ms in 0u64..10_000_000,
            stale_ms in 0u64..100_000_000,
            u in 0.0f64..1.0,
        ) {
            let p = Policy::default().lifetime(Duration::from_secs(600)).jitter(0.0);
            let own = Lifespan::new(Duration::from_millis(lifetime_ms), Duration::from_millis(stale_ms));
            let w = p.windows_of(own, T0, u);
            prop_assert_eq!(w.fresh_until, T0.saturating_add(own.lifetime));
            prop_assert_eq!(w.stale_until, w.fresh_until.saturating_add(own.stale_ttl));
            prop_assert_eq!(p.windows_of(p.lifespan(), T0, u), p.windows(T0, u));
        }

        #[test]
        fn freshness_partitions_time(fresh in 0u64..1000, extra in 0u64..1000, now in 0u64..3000) {
            let fu = Timestamp::from_millis(fresh);
            let su = Timestamp::from_millis(fresh + extra);
            let t = Timestamp::from_millis(now);
            let expected = if now < fresh { Freshness::Fresh } else if now < fresh + extra { Freshness::Stale } else { Freshness::Expired };
            prop_assert_eq!(Freshness::at(t, fu, su), expected);
        }

        #[test]
        fn backoff_stays_within_bounds(
            failures in 0u32..100,
            u in 0.0f64..1.0,
            initial_ms in 1u64..10_000,
            extra_ms in 0u64..1_000_000,
        ) {
            let b = Backoff::exponential(Duration::from_millis(initial_ms), Duration::from_millis(initial_ms + extra_ms));
            let d = b.delay(failures, u);
            let plain = b.without_jitter().delay(failures, u);
            prop_assert!(d <= b.max);
            prop_assert!(d <= plain);
            prop_assert!(d.as_secs_f64() >= plain.as_secs_f64() / 2.0 - 1e-9);
            // monotone without jitter
            prop_assert!(b.without_jitter().delay(failures + 1, u) >= plain);
        }

        #[test]
        fn early_refresh_probability_is_a_probability(
            remaining_ms in 0u64..1_000_000,
            fetch_ms in 0u64..100_000,
            beta in 0.01f64..10.0,
        ) {
            let p = Policy::default().early_refresh(beta);
            let fresh_until = T0.saturating_add(Duration::from_millis(remaining_ms));
            let prob = p.early_refresh_probability(T0, fresh_until, Duration::from_millis(fetch_ms));
            prop_assert!((0.0..=1.0).contains(&prob));
            if fetch_ms == 0 { prop_assert_eq!(prob, 0.0); }
            if remaining_ms == 0 && fetch_ms > 0 { prop_assert_eq!(prob, 1.0); }
            // further from expiry is never more likely
            let later = p.early_refresh_probability(T0, fresh_until.saturating_add(Duration::from_millis(1000)), Duration::from_millis(fetch_ms));
            prop_assert!(later <= prob);
            prop_assert_eq!(Policy::default().early_refresh_probability(T0, fresh_until, Duration::from_millis(fetch_ms)), 0.0);
        }
    }
}
