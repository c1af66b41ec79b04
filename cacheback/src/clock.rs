//! Wall-clock time, injectable for tests.
//!
//! Freshness is decided on wall-clock time because entries are shared between processes (a web
//! process writes, another reads): every process must agree on when an entry turns stale.
//! In-process timing (fetch timeouts, backoff sleeps) uses `tokio::time` instead, so tests can
//! drive it with `tokio::time::pause()`.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A point in wall-clock time: milliseconds since the Unix epoch.
///
/// Milliseconds are what every store can hold (Redis `PX`, memcached, JSON), and they are fine
/// enough for cache lifetimes.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The Unix epoch.
    pub const EPOCH: Timestamp = Timestamp(0);
    /// The latest representable instant.
    pub const MAX: Timestamp = Timestamp(u64::MAX);

    /// A timestamp from milliseconds since the Unix epoch.
    pub const fn from_millis(millis: u64) -> Self {
        Timestamp(millis)
    }

    /// Milliseconds since the Unix epoch.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// `self + d`, saturating at [`Timestamp::MAX`].
    #[must_use]
    pub fn saturating_add(self, d: Duration) -> Self {
        Timestamp(self.0.saturating_add(duration_millis(d)))
    }

    /// `self - d`, saturating at the epoch.
    #[must_use]
    pub fn saturating_sub(self, d: Duration) -> Self {
        Timestamp(self.0.saturating_sub(duration_millis(d)))
    }

    /// How long after `earlier` this is; zero if it is not later.
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }

    /// The current system time, to within a few milliseconds.
    ///
    /// On Linux this is the kernel's coarse real-time clock: it advances once per scheduler
    /// tick (1–4 ms) and is read for a fraction of what a precise read costs, which matters
    /// because every read of a cache entry asks for the time. Freshness, claims and backoff are
    /// decided in milliseconds against windows of seconds, so a value is at most a tick late
    /// to turn stale. Elsewhere it is [`SystemTime::now`].
    #[inline]
    pub fn now() -> Self {
        Timestamp(system_millis())
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({}ms)", self.0)
    }
}

/// RFC 3339 in UTC with milliseconds (`2026-11-30T05:04:20.123Z`).
impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Past the year 9999 RFC 3339 has no form: say the raw milliseconds instead.
        const YEAR_10000_MS: u64 = 253_402_300_800_000;
        if self.0 >= YEAR_10000_MS {
            return write!(f, "{}ms after the epoch", self.0);
        }
        write!(
            f,
            "{}",
            humantime::format_rfc3339_millis(SystemTime::from(*self))
        )
    }
}

impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Self {
        Timestamp(duration_millis(
            t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO),
        ))
    }
}

impl From<Timestamp> for SystemTime {
    fn from(t: Timestamp) -> Self {
        UNIX_EPOCH + Duration::from_millis(t.0)
    }
}

/// Milliseconds since the Unix epoch, from the coarse real-time clock.
#[cfg(any(target_os = "linux", target_os = "android"))]
#[inline]
fn system_millis() -> u64 {
    use rustix::time::{ClockId, clock_gettime};
    let t = clock_gettime(ClockId::RealtimeCoarse);
    let secs = u64::try_from(t.tv_sec).unwrap_or(0);
    let millis = u64::try_from(t.tv_nsec).unwrap_or(0) / 1_000_000;
    secs.saturating_mul(1_000).saturating_add(millis)
}

/// Milliseconds since the Unix epoch.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn system_millis() -> u64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    duration_millis(since_epoch)
}

pub(crate) fn duration_millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A source of wall-clock time.
///
/// The default is [`SystemClock`]; tests use [`TestClock`] to move time by hand.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// The current time.
    fn now(&self) -> Timestamp;
}

/// The operating system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// A clock that only moves when told to. Clones share one time.
///
/// ```
/// use cacheback::clock::{Clock, TestClock};
/// use std::time::Duration;
///
/// let clock = TestClock::new();
/// let t0 = clock.now();
/// clock.advance(Duration::from_secs(5));
/// assert_eq!(clock.now().since(t0), Duration::from_secs(5));
/// ```
#[derive(Debug, Clone)]
pub struct TestClock {
    millis: Arc<AtomicU64>,
}

impl TestClock {
    /// A clock frozen at an arbitrary fixed instant (2024-01-01T00:00:00Z), so tests are
    /// reproducible.
    pub fn new() -> Self {
        Self::at(Timestamp::from_millis(1_704_067_200_000))
    }

    /// A clock frozen at `t`.
    pub fn at(t: Timestamp) -> Self {
        TestClock {
            millis: Arc::new(AtomicU64::new(t.as_millis())),
        }
    }

    /// Moves time forward by `d`.
    pub fn advance(&self, d: Duration) {
        self.millis.fetch_add(duration_millis(d), Ordering::SeqCst);
    }

    /// Sets the time to `t` (which may be earlier: a clock step, as NTP can cause).
    pub fn set(&self, t: Timestamp) {
        self.millis.store(t.as_millis(), Ordering::SeqCst);
    }
}

impl Default for TestClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TestClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.millis.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates() {
        let t = Timestamp::from_millis(10);
        assert_eq!(t.saturating_sub(Duration::from_secs(1)), Timestamp::EPOCH);
        assert_eq!(
            Timestamp::MAX.saturating_add(Duration::from_secs(1)),
            Timestamp::MAX
        );
        assert_eq!(t.since(Timestamp::from_millis(20)), Duration::ZERO);
        assert_eq!(
            Timestamp::from_millis(1500).since(t),
            Duration::from_millis(1490)
        );
    }

    #[test]
    fn system_time_round_trips() {
        let t = Timestamp::from_millis(1_700_000_000_123);
        assert_eq!(Timestamp::from(SystemTime::from(t)), t);
        assert!(Timestamp::now() > Timestamp::from_millis(1_600_000_000_000));
    }

    #[test]
    fn now_is_the_system_time_to_within_a_tick() {
        let precise = || duration_millis(SystemTime::now().duration_since(UNIX_EPOCH).unwrap());
        let before = precise();
        let now = Timestamp::now().as_millis();
        let after = precise();
        // The coarse clock is the time of the last tick: never ahead, at most a tick behind
        // (50 ms leaves room for a preempted test thread).
        assert!(now <= after, "{now} is ahead of {after}");
        assert!(
            now + 50 >= before,
            "{now} is more than 50 ms behind {before}"
        );
    }
}
