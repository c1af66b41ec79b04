//! Process-local counts per job (reads by status, refreshes, refresh lag, served ages), kept
//! only when a client is built with
//! [`fleet_stats`](crate::CachebackBuilder::fleet_stats), for a publisher to add up across a
//! fleet. Counting is a relaxed atomic add on one of a few cache-line-sized stripes (a stripe
//! per thread, round robin), so threads reading the same job do not contend on one counter.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// The served-age buckets' upper bounds (the last bucket has none).
pub(crate) const AGE_BOUNDS: [Duration; 5] = [
    Duration::from_secs(1),
    Duration::from_secs(10),
    Duration::from_secs(60),
    Duration::from_secs(600),
    Duration::from_secs(3600),
];

/// Number of served-age buckets.
pub(crate) const AGE_BUCKETS: usize = AGE_BOUNDS.len() + 1;

/// What is counted, in the order of [`Counts::values`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Count {
    Hit,
    Stale,
    Miss,
    RefreshOk,
    RefreshFailed,
    LagMillis,
    LagSamples,
}

const COUNTS: usize = 7;
const SLOTS: usize = COUNTS + AGE_BUCKETS;
const STRIPES: usize = 8;

#[repr(align(64))]
#[derive(Default)]
struct Stripe([AtomicU64; SLOTS]);

/// One job's counts in this process.
#[derive(Default)]
pub(crate) struct Tally {
    stripes: [Stripe; STRIPES],
}

impl std::fmt::Debug for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Tally").field(&self.snapshot()).finish()
    }
}

static NEXT_STRIPE: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static STRIPE: usize = NEXT_STRIPE.fetch_add(1, Ordering::Relaxed) % STRIPES;
}

/// A snapshot of a [`Tally`]: totals since the process started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Counts {
    pub(crate) counts: [u64; COUNTS],
    pub(crate) ages: [u64; AGE_BUCKETS],
}

fn age_bucket(age: Duration) -> usize {
    AGE_BOUNDS
        .iter()
        .position(|bound| age < *bound)
        .unwrap_or(AGE_BOUNDS.len())
}

impl Tally {
    #[inline]
    fn add(&self, slot: usize, n: u64) {
        let stripe = STRIPE.try_with(|s| *s).unwrap_or(0);
        self.stripes[stripe].0[slot].fetch_add(n, Ordering::Relaxed);
    }

    /// Counts one read answered `count` ([`Count::Hit`], [`Count::Stale`]) whose value was
    /// `age` old.
    #[inline]
    pub(crate) fn served(&self, count: Count, age: Duration) {
        self.add(count as usize, 1);
        self.add(COUNTS + age_bucket(age), 1);
    }

    /// Counts one event without an age (a miss, a refresh).
    #[inline]
    pub(crate) fn count(&self, count: Count) {
        self.add(count as usize, 1);
    }

    /// Counts a refresh request that waited `lag` in the queue.
    pub(crate) fn lag(&self, lag: Duration) {
        let ms = u64::try_from(lag.as_millis()).unwrap_or(u64::MAX);
        self.add(Count::LagMillis as usize, ms);
        self.add(Count::LagSamples as usize, 1);
    }

    /// The totals so far.
    pub(crate) fn snapshot(&self) -> Counts {
        let mut slots = [0u64; SLOTS];
        for stripe in &self.stripes {
            for (sum, slot) in slots.iter_mut().zip(&stripe.0) {
                *sum = sum.wrapping_add(slot.load(Ordering::Relaxed));
            }
        }
        let mut counts = Counts::default();
        counts.counts.copy_from_slice(&slots[..COUNTS]);
        counts.ages.copy_from_slice(&slots[COUNTS..]);
        counts
    }
}

impl Counts {
    /// What was counted since `earlier`. A count below its earlier value means the tally was
    /// replaced (the job registered again): all of it is new.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))] // read by `fleet_stats`
    pub(crate) fn since(&self, earlier: &Counts) -> Counts {
        let mut delta = Counts::default();
        for (d, (now, then)) in delta
            .counts
            .iter_mut()
            .zip(self.counts.iter().zip(&earlier.counts))
        {
            *d = if now >= then { now - then } else { *now };
        }
        for (d, (now, then)) in delta
            .ages
            .iter_mut()
            .zip(self.ages.iter().zip(&earlier.ages))
        {
            *d = if now >= then { now - then } else { *now };
        }
        delta
    }

    #[cfg_attr(not(feature = "redis"), allow(dead_code))] // read by `fleet_stats`
    pub(crate) fn get(&self, count: Count) -> u64 {
        self.counts[count as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up_across_threads_and_ages_land_in_their_bucket() {
        let tally = std::sync::Arc::new(Tally::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let tally = std::sync::Arc::clone(&tally);
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        tally.served(Count::Hit, Duration::from_millis(500));
                    }
                    tally.served(Count::Stale, Duration::from_secs(30));
                    tally.count(Count::Miss);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        tally.lag(Duration::from_millis(250));
        let counts = tally.snapshot();
        assert_eq!(counts.get(Count::Hit), 4000);
        assert_eq!(counts.get(Count::Stale), 4);
        assert_eq!(counts.get(Count::Miss), 4);
        assert_eq!(counts.get(Count::LagMillis), 250);
        assert_eq!(counts.get(Count::LagSamples), 1);
        assert_eq!(counts.ages, [4000, 0, 4, 0, 0, 0]);
        let later = {
            tally.count(Count::RefreshOk);
            tally.snapshot()
        };
        let delta = later.since(&counts);
        assert_eq!(delta.get(Count::RefreshOk), 1);
        assert_eq!(delta.get(Count::Hit), 0);
    }

    #[test]
    fn age_buckets_have_their_bounds() {
        assert_eq!(age_bucket(Duration::ZERO), 0);
        assert_eq!(age_bucket(Duration::from_secs(1)), 1);
        assert_eq!(age_bucket(Duration::from_secs(59)), 2);
        assert_eq!(age_bucket(Duration::from_secs(3600)), 5);
    }
}
