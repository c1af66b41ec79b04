//! A key's control record: its refresh claim and its failure state in one memcached item, as
//! text, and the expiry times memcached is given.
//!
//! The record is `1 <claim> <failure>`: `<claim>` is `-` or `<32-hex token>:<until ms>`,
//! `<failure>` is `-` or `<failures>:<retry_after ms>:<forget_at ms>`; times are the callers'
//! (milliseconds since the epoch). One item for both, so that one compare-and-swap changes the
//! claim and the failure state together, as the Redis scripts do over two keys.

use std::time::Duration;

use crate::clock::Timestamp;
use crate::store::ClaimToken;

const VERSION: &str = "1";
const NONE: &str = "-";

/// A recorded run of failed refreshes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Failures {
    pub(super) count: u32,
    pub(super) retry_after: Timestamp,
    pub(super) forget_at: Timestamp,
}

/// What the control record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Record {
    pub(super) claim: Option<(ClaimToken, Timestamp)>,
    pub(super) failures: Option<Failures>,
}

impl Record {
    /// Reads a record; text that is not one (corruption, another program) reads as an empty
    /// record, which the next compare-and-swap overwrites.
    pub(super) fn parse(bytes: &[u8]) -> Record {
        Self::try_parse(bytes).unwrap_or_default()
    }

    fn try_parse(bytes: &[u8]) -> Option<Record> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut parts = text.split(' ');
        let (Some(VERSION), Some(claim), Some(failures), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        let claim = match claim {
            NONE => None,
            claim => {
                let (token, until) = claim.split_once(':')?;
                let token = u128::from_str_radix(token, 16).ok()?;
                Some((ClaimToken::from_u128(token), millis(until)?))
            }
        };
        let failures = match failures {
            NONE => None,
            failures => {
                let mut f = failures.split(':');
                let (Some(count), Some(retry), Some(forget), None) =
                    (f.next(), f.next(), f.next(), f.next())
                else {
                    return None;
                };
                Some(Failures {
                    count: count.parse().ok()?,
                    retry_after: millis(retry)?,
                    forget_at: millis(forget)?,
                })
            }
        };
        Some(Record { claim, failures })
    }

    /// The record as text.
    pub(super) fn encode(&self) -> Vec<u8> {
        let claim = match self.claim {
            Some((token, until)) => format!("{token}:{}", until.as_millis()),
            None => NONE.to_owned(),
        };
        let failures = match self.failures {
            Some(f) => format!(
                "{}:{}:{}",
                f.count,
                f.retry_after.as_millis(),
                f.forget_at.as_millis()
            ),
            None => NONE.to_owned(),
        };
        format!("{VERSION} {claim} {failures}").into_bytes()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.claim.is_none() && self.failures.is_none()
    }

    /// The claim, if it is still held at `now`.
    pub(super) fn live_claim(&self, now: Timestamp) -> Option<(ClaimToken, Timestamp)> {
        self.claim.filter(|(_, until)| *until > now)
    }

    /// The failure state, unless it was forgotten by `now`.
    pub(super) fn remembered_failures(&self, now: Timestamp) -> Option<Failures> {
        self.failures.filter(|f| f.forget_at > now)
    }
}

fn millis(text: &str) -> Option<Timestamp> {
    text.parse().ok().map(Timestamp::from_millis)
}

/// memcached's exptime for an item kept `ttl`: whole seconds, rounded up (0 would mean
/// "never"). memcached reads more than 30 days as an absolute Unix time, so longer TTLs are
/// written as 0: no expiry, the item goes when memory is needed.
pub(super) fn exptime(ttl: Duration) -> u64 {
    const THIRTY_DAYS: u64 = 30 * 24 * 3600;
    let secs = ttl
        .as_secs()
        .saturating_add(u64::from(ttl.subsec_nanos() > 0));
    match secs.max(1) {
        secs if secs > THIRTY_DAYS => 0,
        secs => secs,
    }
}

/// The longer of two exptimes, where 0 (never) is the longest.
pub(super) fn longer(a: u64, b: u64) -> u64 {
    if a == 0 || b == 0 { 0 } else { a.max(b) }
}

#[cfg(test)]
mod tests {
    use super::*;

    use proptest::prelude::*;

    #[test]
    fn records_are_pinned_text() {
        let token = ClaimToken::from_u128(0xabc);
        let record = Record {
            claim: Some((token, Timestamp::from_millis(1234))),
            failures: Some(Failures {
                count: 2,
                retry_after: Timestamp::from_millis(50),
                forget_at: Timestamp::from_millis(900),
            }),
        };
        let text = String::from_utf8(record.encode()).unwrap();
        assert_eq!(text, format!("1 {}:1234 2:50:900", "0".repeat(29) + "abc"));
        assert_eq!(Record::parse(text.as_bytes()), record);
        assert_eq!(Record::default().encode(), b"1 - -");
        assert!(Record::parse(b"1 - -").is_empty());
    }

    #[test]
    fn claims_and_failures_end() {
        let token = ClaimToken::from_u128(1);
        let record = Record {
            claim: Some((token, Timestamp::from_millis(100))),
            failures: Some(Failures {
                count: 1,
                retry_after: Timestamp::from_millis(50),
                forget_at: Timestamp::from_millis(200),
            }),
        };
        let at = Timestamp::from_millis;
        assert!(record.live_claim(at(99)).is_some());
        assert!(record.live_claim(at(100)).is_none(), "ends at `until`");
        assert!(record.remembered_failures(at(199)).is_some());
        assert!(record.remembered_failures(at(200)).is_none());
    }

    #[test]
    fn garbage_reads_as_an_empty_record() {
        for garbage in [
            &b""[..],
            b"nonsense",
            b"2 - -",
            b"1 - - -",
            b"1 xyz:1 -",
            b"1 - 1:2",
            b"1 - 1:2:3:4",
            b"1 - -1:2:3",
            b"\xff\xfe",
        ] {
            assert!(Record::parse(garbage).is_empty(), "{garbage:?}");
        }
    }

    #[test]
    fn exptimes_are_whole_seconds_under_thirty_days() {
        assert_eq!(exptime(Duration::ZERO), 1);
        assert_eq!(exptime(Duration::from_millis(1)), 1);
        assert_eq!(exptime(Duration::from_millis(1001)), 2);
        assert_eq!(exptime(Duration::from_secs(30 * 24 * 3600)), 2_592_000);
        assert_eq!(exptime(Duration::from_secs(30 * 24 * 3600 + 1)), 0);
        assert_eq!(exptime(Duration::MAX), 0);
        assert_eq!(longer(5, 7), 7);
        assert_eq!(longer(0, 7), 0);
        assert_eq!(longer(7, 0), 0);
    }

    proptest! {
        #[test]
        fn records_round_trip(token: Option<(u128, u64)>, failures: Option<(u32, u64, u64)>) {
            let record = Record {
                claim: token.map(|(t, u)| (ClaimToken::from_u128(t), Timestamp::from_millis(u))),
                failures: failures.map(|(count, r, f)| Failures {
                    count,
                    retry_after: Timestamp::from_millis(r),
                    forget_at: Timestamp::from_millis(f),
                }),
            };
            prop_assert_eq!(Record::parse(&record.encode()), record);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = Record::parse(&bytes);
        }
    }
}
