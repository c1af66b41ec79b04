//! One entry as the commands show it (`cacheback entry`, the admin `inspect`): windows, age,
//! generation, size, the key's claim and failure state, and (when the job is known) the value.

use cacheback::Freshness;
use cacheback::clock::Timestamp;
use cacheback::store::{ClaimState, EntryMeta};
use serde::Serialize;

use crate::output::{Table, millis, relative, span, time};

/// An entry, as `--json` prints it.
#[derive(Debug, Serialize)]
pub(crate) struct EntryView {
    pub(crate) key: String,
    /// `fresh`, `stale`, `expired` or `deleted`.
    pub(crate) state: &'static str,
    pub(crate) generation: u64,
    pub(crate) fetched_at: String,
    pub(crate) age_ms: u64,
    pub(crate) fresh_until: String,
    pub(crate) stale_until: String,
    pub(crate) fetch_duration_ms: u64,
    pub(crate) schema_version: u32,
    pub(crate) size: u32,
    pub(crate) claim: Option<ClaimView>,
    pub(crate) failures: u32,
    pub(crate) retry_after: Option<String>,
    /// The value as JSON (admin `inspect` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) value: Option<serde_json::Value>,
    /// Why the value did not decode, if it did not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) decode_error: Option<String>,
    #[serde(skip)]
    times: Times,
}

/// The claim holder and until when it holds the claim.
#[derive(Debug, Serialize)]
pub(crate) struct ClaimView {
    /// The holder's token (the refresh request carrying it owns the claim).
    pub(crate) token: String,
    pub(crate) until: String,
}

#[derive(Debug)]
struct Times {
    meta: EntryMeta,
    claim: ClaimState,
    now: Timestamp,
}

impl EntryView {
    pub(crate) fn new(
        key: String,
        meta: EntryMeta,
        deleted: bool,
        claim: ClaimState,
        now: Timestamp,
    ) -> Self {
        let state = if deleted {
            "deleted"
        } else {
            match meta.freshness(now) {
                Freshness::Fresh => "fresh",
                Freshness::Stale => "stale",
                _ => "expired",
            }
        };
        EntryView {
            key,
            state,
            generation: meta.generation,
            fetched_at: time(meta.fetched_at),
            age_ms: millis(now.since(meta.fetched_at)),
            fresh_until: time(meta.fresh_until),
            stale_until: time(meta.stale_until),
            fetch_duration_ms: millis(meta.fetch_duration),
            schema_version: meta.schema_version,
            size: meta.size,
            claim: claim.claim.map(|(token, until)| ClaimView {
                token: token.to_string(),
                until: time(until),
            }),
            failures: claim.failures,
            retry_after: claim.retry_after.map(time),
            value: None,
            decode_error: None,
            times: Times { meta, claim, now },
        }
    }

    /// The two-column table for people.
    pub(crate) fn render(&self) -> String {
        let Times { meta, claim, now } = &self.times;
        let now = *now;
        let at = |t: Timestamp| format!("{} ({})", time(t), relative(t, now));
        let mut table = Table::new(&["FIELD", "VALUE"]);
        let mut field = |name: &str, value: String| table.row(vec![name.to_owned(), value]);
        field("key", self.key.clone());
        field("state", self.state.to_owned());
        field("generation", meta.generation.to_string());
        field("fetched at", at(meta.fetched_at));
        field("fresh until", at(meta.fresh_until));
        field("stale until", at(meta.stale_until));
        field("fetch took", span(meta.fetch_duration));
        field("size", format!("{} bytes", meta.size));
        field("schema version", meta.schema_version.to_string());
        field(
            "claim",
            match claim.claim {
                Some((token, until)) => format!("held by {token} until {}", relative(until, now)),
                None => "none".to_owned(),
            },
        );
        field("failures", claim.failures.to_string());
        if let Some(retry) = claim.retry_after {
            field("retry after", at(retry));
        }
        if let Some(value) = &self.value {
            field("value", value.to_string());
        }
        if let Some(error) = &self.decode_error {
            field("decode error", error.clone());
        }
        table.render()
    }
}
